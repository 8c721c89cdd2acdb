//! Counters held in the process: exact for one replica, freed when their window ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::clock::{Clock, window};
use super::store::{BatchOutcome, CounterOp, CounterState, CounterStore, StoreFuture};
use crate::descriptor::CounterKey;

/// How often (at most) expired windows are swept, in ms of the store's clock.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// A counter slot: one key in one window.
type Slot = (
    CounterKey,
    u64, /* window start ms */
    u64, /* window length ms */
);

/// The in-memory [`CounterStore`]. One mutex makes a whole batch (check and increment of all
/// of a request's counters) one atomic step; the critical section is a few hash lookups, so
/// the lock is held for well under a microsecond per counter.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counters: HashMap<Slot, u64>,
    next_sweep_ms: u64,
}

impl MemoryStore {
    /// An empty store reading time from `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// Number of live counter slots (expired ones are dropped at the next sweep).
    pub fn len(&self) -> usize {
        self.lock().counters.len()
    }

    /// True when no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (the map is only
        // written after every check), so the data is still consistent: keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The synchronous core of [`CounterStore::apply`].
    pub fn apply_now(&self, ops: &[CounterOp], dry_run: bool) -> BatchOutcome {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        if now >= state.next_sweep_ms {
            // A slot's key holds its window, so a slot whose window ended is never read again.
            state
                .counters
                .retain(|(_, start, len), _| start + len > now);
            state.next_sweep_ms = now + SWEEP_INTERVAL_MS;
        }

        // Pass 1: simulate the batch in order (ops may share a slot), deciding each op.
        let mut simulated: HashMap<Slot, u64> = HashMap::new();
        let mut states = Vec::with_capacity(ops.len());
        let mut slots = Vec::with_capacity(ops.len());
        let mut blocked = dry_run;
        for op in ops {
            let (start, end) = window(now, op.window_secs);
            let slot: Slot = (op.key.clone(), start, end - start);
            let before = *simulated
                .entry(slot.clone())
                .or_insert_with(|| state.counters.get(&slot).copied().unwrap_or(0));
            let over = !op.negative && (op.limit == 0 || before.saturating_add(op.hits) > op.limit);
            blocked |= over && op.enforce;
            let after = if op.negative {
                before.saturating_sub(op.hits)
            } else {
                before.saturating_add(op.hits)
            };
            simulated.insert(slot.clone(), after);
            states.push(CounterState {
                before,
                after,
                over,
                reset_ms: end - now,
            });
            slots.push(slot);
        }

        // Pass 2: commit all or nothing.
        if blocked {
            // Nothing is counted: report the stored count (the simulated `before` of a later
            // op sharing a slot included earlier ops' hits).
            for (s, slot) in states.iter_mut().zip(&slots) {
                let stored = state.counters.get(slot).copied().unwrap_or(0);
                s.before = stored;
                s.after = stored;
            }
        } else {
            for (slot, count) in simulated {
                if count == 0 {
                    state.counters.remove(&slot);
                } else {
                    state.counters.insert(slot, count);
                }
            }
        }
        BatchOutcome {
            now_ms: now,
            committed: !blocked,
            states,
        }
    }
}

impl CounterStore for MemoryStore {
    fn apply<'a>(&'a self, ops: &'a [CounterOp], dry_run: bool) -> StoreFuture<'a, BatchOutcome> {
        let outcome = self.apply_now(ops, dry_run);
        Box::pin(async move { Ok(outcome) })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::CounterScope;
    use crate::limiter::clock::ManualClock;

    fn op(name: &str, limit: u64, hits: u64) -> CounterOp {
        CounterOp {
            key: CounterKey::new("d", name, &CounterScope::Overall),
            window_secs: 60,
            limit,
            hits,
            negative: false,
            enforce: true,
        }
    }

    #[test]
    fn expired_windows_are_freed() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::new(clock.clone());
        for i in 0..100 {
            store.apply_now(&[op(&format!("k{i}"), 10, 1)], false);
        }
        assert_eq!(store.len(), 100);
        clock.advance_ms(60_000);
        store.apply_now(&[op("fresh", 10, 1)], false);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn concurrent_callers_get_exactly_the_limit() {
        let store = Arc::new(MemoryStore::new(Arc::new(ManualClock::new(0))));
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..500 {
                        // Two counters per request: the shared one and one per thread group.
                        let out =
                            store.apply_now(&[op("shared", 1000, 1), op("other", 5000, 1)], false);
                        if out.committed {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 1000);
        // Rejected requests consumed nothing on the second counter.
        let out = store.apply_now(&[op("other", 5000, 0)], false);
        assert_eq!(out.states[0].before, 1000);
    }
}
