//! Counters held in the process: exact for one replica, freed when they no longer matter.
//!
//! This store is the reference for the algorithms (docs/algorithms.md); the Redis script
//! (`src/redis/check_and_count.lua`) has the same shape and the same names, and the
//! conformance suite and the differential test (`integration-tests/tests/differential.rs`)
//! hold both to the same answers. Each algorithm is one module with three steps:
//!
//! - `load`: a counter's stored state at `now`, as a `Sim` (reads only);
//! - `decide`: one op against a sim: the op's [`CounterState`] and the sim after it;
//! - `commit`: writes a sim back.
//!
//! A batch loads each counter once, decides its ops in order (ops sharing a counter see
//! each other's hits), then commits every sim, or none when an enforcing op is over (or on
//! a dry run). A blocked batch reports each counter as stored: the same `decide` with 0
//! hits on the sim as loaded.
//!
//! Bounded cost (docs/algorithms.md, "Bounded cost"): whatever an op's hits or limit, it
//! costs O(1) state and O(log n) time per counter (n: the admit times in a sliding
//! window); the store holds at most `max_counters` counters and refuses a new one past it
//! (a [`StoreError::Capacity`]) rather than evict a live one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::clock::Clock;
use super::store::{
    BatchOutcome, CounterOp, CounterState, CounterStore, MAX_EXACT, StoreError, StoreFuture,
};
use crate::config::Algorithm;
use crate::descriptor::CounterKey;

/// How often (at most) expired state is swept, in ms of the store's clock.
const SWEEP_INTERVAL_MS: u64 = 1_000;

/// Counters a store holds by default (`--memory-max-counters`).
pub const DEFAULT_MAX_COUNTERS: usize = 1_000_000;

/// Where one counter's state lives. The algorithm and the window length are part of it, so a
/// rule whose algorithm changes starts from fresh state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    /// A fixed window: (key, window ms). It holds the current window only: the next one
    /// takes its place.
    Fixed(CounterKey, u64),
    /// A sliding log: (key, window ms).
    Log(CounterKey, u64),
    /// A bucket: (key, window ms).
    Bucket(CounterKey, u64),
}

impl Slot {
    fn of(op: &CounterOp) -> Slot {
        let win = op.window_ms();
        match op.algorithm {
            Algorithm::FixedWindow => Slot::Fixed(op.key.clone(), win),
            Algorithm::SlidingWindow => Slot::Log(op.key.clone(), win),
            Algorithm::TokenBucket => Slot::Bucket(op.key.clone(), win),
        }
    }
}

/// A counter as one batch sees it while it is decided, before anything is written.
#[derive(Debug, Clone, Copy)]
enum Sim {
    Fixed(fixed::Sim),
    Log(sliding::Sim),
    Bucket(bucket::Sim),
}

impl Sim {
    /// True when committing it leaves state behind.
    fn holds_state(&self) -> bool {
        match self {
            Sim::Fixed(s) => s.holds_state(),
            Sim::Log(s) => s.holds_state(),
            Sim::Bucket(s) => s.holds_state(),
        }
    }
}

/// The in-memory [`CounterStore`]. One mutex makes a whole batch (check and count of all
/// of a request's counters) one atomic step; the critical section is a few hash lookups
/// and, for a sliding window, a binary search per counter.
#[derive(Debug)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    max_counters: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    counts: HashMap<Slot, fixed::Stored>,
    logs: HashMap<Slot, sliding::Log>,
    buckets: HashMap<Slot, bucket::Stored>,
    next_sweep_ms: u64,
}

impl MemoryStore {
    /// An empty store reading time from `clock`, holding up to [`DEFAULT_MAX_COUNTERS`].
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryStore::with_max_counters(clock, DEFAULT_MAX_COUNTERS)
    }

    /// An empty store holding up to `max_counters` counters (`--memory-max-counters`).
    pub fn with_max_counters(clock: Arc<dyn Clock>, max_counters: usize) -> Self {
        MemoryStore {
            clock,
            max_counters,
            state: Mutex::new(State::default()),
        }
    }

    /// Number of counters held (expired ones are dropped at the next sweep, within a
    /// second).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-applied batch (state is only
        // written after every check), so the data is still consistent: keep serving.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The synchronous core of [`CounterStore::apply`].
    pub fn apply_now(&self, ops: &[CounterOp], dry_run: bool) -> Result<BatchOutcome, StoreError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        if now >= state.next_sweep_ms {
            state.sweep(now);
            state.next_sweep_ms = now + SWEEP_INTERVAL_MS;
        }

        // Decide every op in order: ops may share a counter, so each sees the sim the
        // earlier ones left.
        let mut loaded: HashMap<Slot, Sim> = HashMap::new();
        let mut sims: HashMap<Slot, Sim> = HashMap::new();
        let mut slots = Vec::with_capacity(ops.len());
        let mut states = Vec::with_capacity(ops.len());
        // Blocked by an enforcing non-quota op over its limit, or by every quota op being
        // over (a shadow one never is: it passed) (docs/envoy-compat.md §4).
        let mut over_rule = false;
        let (mut quotas, mut quotas_over) = (0_usize, 0_usize);
        for op in ops {
            let slot = Slot::of(op);
            let sim = match sims.get(&slot) {
                Some(sim) => *sim,
                None => {
                    let sim = state.load(&slot, op, now);
                    loaded.insert(slot.clone(), sim);
                    sim
                }
            };
            let (s, next) = state.decide(&slot, op, sim, now);
            if op.quota {
                quotas += 1;
                quotas_over += usize::from(s.over && op.enforce);
            } else if op.enforce {
                over_rule |= s.over;
            }
            sims.insert(slot.clone(), next);
            states.push(s);
            slots.push(slot);
        }
        let blocked = dry_run || over_rule || (quotas > 0 && quotas_over == quotas);

        // All or nothing, but a blocked batch still counts its quota ops (not a dry run):
        // they are decided again, alone and in order, from the counters as loaded.
        if blocked {
            let mut quota_sims: HashMap<Slot, Sim> = HashMap::new();
            for ((s, slot), op) in states.iter_mut().zip(&slots).zip(ops) {
                if op.quota && !dry_run {
                    let sim = quota_sims.get(slot).copied().unwrap_or(loaded[slot]);
                    let (decided, next) = state.decide(slot, op, sim, now);
                    quota_sims.insert(slot.clone(), next);
                    *s = decided;
                } else {
                    let (stored, _) = state.decide(slot, &check_only(op), loaded[slot], now);
                    *s = blocked_report(*s, stored);
                }
            }
            self.commit_all(&mut state, quota_sims, now)?;
        } else {
            self.commit_all(&mut state, sims, now)?;
        }
        Ok(BatchOutcome {
            now_ms: now,
            committed: !blocked,
            states,
        })
    }
}

impl MemoryStore {
    /// Writes `sims` back. A counter the store does not hold yet needs room; a full store
    /// refuses the request rather than evict a live counter.
    fn commit_all(
        &self,
        state: &mut State,
        sims: HashMap<Slot, Sim>,
        now: u64,
    ) -> Result<(), StoreError> {
        let new = sims
            .iter()
            .filter(|(slot, sim)| sim.holds_state() && !state.holds(slot))
            .count();
        if new > 0 && state.len() + new > self.max_counters {
            return Err(StoreError::Capacity(format!(
                "the request needs {new} new counter(s); the memory store holds {} of at \
                 most {} (--memory-max-counters)",
                state.len(),
                self.max_counters
            )));
        }
        for (slot, sim) in sims {
            state.commit(slot, sim, now);
        }
        Ok(())
    }
}

/// `op` with 0 hits: how the blocked report reads a counter.
fn check_only(op: &CounterOp) -> CounterOp {
    CounterOp {
        hits: 0,
        negative: false,
        ..op.clone()
    }
}

/// What a blocked batch reports for an op: its own verdict (over, and then the wait until
/// it fits), the rest as the counter is stored (nothing was counted; a later op sharing a
/// counter was decided with the earlier ops' hits).
fn blocked_report(decided: CounterState, stored: CounterState) -> CounterState {
    CounterState {
        before: stored.before,
        after: stored.before,
        over: decided.over,
        reset_ms: if decided.over {
            decided.reset_ms
        } else {
            stored.reset_ms
        },
        remaining: stored.remaining,
    }
}

impl State {
    fn len(&self) -> usize {
        self.counts.len() + self.logs.len() + self.buckets.len()
    }

    fn holds(&self, slot: &Slot) -> bool {
        match slot {
            Slot::Fixed(..) => self.counts.contains_key(slot),
            Slot::Log(..) => self.logs.contains_key(slot),
            Slot::Bucket(..) => self.buckets.contains_key(slot),
        }
    }

    /// Drops state that can no longer change an answer.
    fn sweep(&mut self, now: u64) {
        self.counts.retain(|slot, c| match slot {
            Slot::Fixed(_, win) => c.start.saturating_add(*win) > now,
            _ => false,
        });
        self.logs.retain(|slot, log| match slot {
            Slot::Log(_, win) => log.newest().is_some_and(|t| t.saturating_add(*win) > now),
            _ => false,
        });
        self.buckets.retain(|_, b| b.is_held_at(now));
    }

    fn load(&self, slot: &Slot, op: &CounterOp, now: u64) -> Sim {
        match slot {
            Slot::Fixed(_, win) => Sim::Fixed(fixed::load(self, slot, *win, now)),
            Slot::Log(_, win) => Sim::Log(sliding::load(self.logs.get(slot), *win, now)),
            Slot::Bucket(..) => Sim::Bucket(bucket::load(self, slot, op, now)),
        }
    }

    fn decide(&self, slot: &Slot, op: &CounterOp, sim: Sim, now: u64) -> (CounterState, Sim) {
        match sim {
            Sim::Fixed(sim) => {
                let (s, sim) = fixed::decide(op, sim);
                (s, Sim::Fixed(sim))
            }
            Sim::Log(sim) => {
                let (s, sim) = sliding::decide(op, sim, self.logs.get(slot), now);
                (s, Sim::Log(sim))
            }
            Sim::Bucket(sim) => {
                let (s, sim) = bucket::decide(op, sim);
                (s, Sim::Bucket(sim))
            }
        }
    }

    fn commit(&mut self, slot: Slot, sim: Sim, now: u64) {
        match sim {
            Sim::Fixed(sim) => fixed::commit(&mut self.counts, slot, sim),
            Sim::Log(sim) => sliding::commit(&mut self.logs, slot, sim),
            Sim::Bucket(sim) => bucket::commit(self, slot, sim, now),
        }
    }
}

/// Fixed window: one count per window, windows aligned to the epoch; a counter holds its
/// current window only, and is dropped when that window ends.
mod fixed {
    use std::collections::HashMap;

    use super::{CounterOp, CounterState, MAX_EXACT, Slot, State};

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Stored {
        /// The window's start, ms.
        pub(super) start: u64,
        count: u64,
    }

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Sim {
        /// The current window's start, ms.
        start: u64,
        /// The count as stored.
        stored: u64,
        /// The count after the batch's ops so far.
        count: u64,
        /// ms until the window ends.
        reset_ms: u64,
    }

    impl Sim {
        pub(super) fn holds_state(&self) -> bool {
            self.count > 0
        }
    }

    pub(super) fn load(state: &State, slot: &Slot, win: u64, now: u64) -> Sim {
        let start = now - now % win;
        // A count of an earlier window is no longer counted.
        let stored = state
            .counts
            .get(slot)
            .filter(|c| c.start == start)
            .map_or(0, |c| c.count);
        Sim {
            start,
            stored,
            count: stored,
            reset_ms: start.saturating_add(win) - now,
        }
    }

    pub(super) fn decide(op: &CounterOp, sim: Sim) -> (CounterState, Sim) {
        let (limit, hits, count) = (op.limit, op.hits, sim.count);
        let over = !op.negative && (limit == 0 || count.saturating_add(hits) > limit);
        let after = if op.negative {
            count.saturating_sub(hits)
        } else {
            // A shadow-mode count goes past its limit; it stops at 2^53 (as in Lua).
            count.saturating_add(hits).min(MAX_EXACT)
        };
        let state = CounterState {
            before: count,
            after,
            over,
            reset_ms: sim.reset_ms,
            remaining: limit.saturating_sub(after),
        };
        (
            state,
            Sim {
                count: after,
                ..sim
            },
        )
    }

    pub(super) fn commit(counts: &mut HashMap<Slot, Stored>, slot: Slot, sim: Sim) {
        if sim.count == sim.stored {
            return;
        }
        if sim.count == 0 {
            counts.remove(&slot);
        } else {
            counts.insert(
                slot,
                Stored {
                    start: sim.start,
                    count: sim.count,
                },
            );
        }
    }
}

/// Sliding window: a log of admit times, one entry per admit time with the hits admitted
/// then (never one per hit); a hit at t counts in (t, t + window].
///
/// Each entry keeps the running total of the hits logged up to and including it, so the
/// hits in the window are one subtraction, the k-th oldest hit is a binary search, expired
/// entries leave in one `drain`, and a give-back cuts the log at one entry (splitting it).
mod sliding {
    use std::collections::{HashMap, VecDeque};

    use super::{CounterOp, CounterState, Slot};

    /// One admit time: when, and the running total of hits logged up to and including it.
    /// Totals wrap (mod 2^64): only differences within one log are read, and they are far
    /// smaller (a log holds at most limit + 1 hits).
    #[derive(Debug, Clone, Copy)]
    struct Entry {
        at: u64,
        total: u64,
    }

    /// A stored log, oldest first.
    #[derive(Debug, Default)]
    pub(super) struct Log {
        entries: VecDeque<Entry>,
        /// The running total before the first entry.
        base: u64,
    }

    impl Log {
        /// The newest admit time.
        pub(super) fn newest(&self) -> Option<u64> {
            self.entries.back().map(|e| e.at)
        }

        /// Number of admit times held.
        #[cfg(test)]
        pub(super) fn entries_len(&self) -> usize {
            self.entries.len()
        }

        /// The running total before entry `i`.
        fn total_before(&self, i: usize) -> u64 {
            match i.checked_sub(1) {
                Some(j) => self.entries[j].total,
                None => self.base,
            }
        }

        /// The index of the entry holding the `k`-th hit (1-based) counted from entry
        /// `from` (k must not exceed the hits from there on).
        fn find(&self, from: usize, k: u64) -> usize {
            let before = self.total_before(from);
            // Most often the first one (an admitted request's reset is its oldest hit).
            if self
                .entries
                .get(from)
                .is_some_and(|e| e.total.wrapping_sub(before) >= k)
            {
                return from;
            }
            let target = before.wrapping_sub(self.base) + k;
            self.entries
                .partition_point(|e| e.total.wrapping_sub(self.base) < target)
        }
    }

    /// The log as the batch sees it: `stored` hits in the window, from entry `cut` on (the
    /// ones before have left); of them the newest `pop` are to be removed, and `add` hits
    /// at `stamp` (now, or the newest admit time if the clock went back) to be logged.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Sim {
        cut: usize,
        stored: u64,
        pop: u64,
        add: u64,
        stamp: u64,
    }

    impl Sim {
        pub(super) fn holds_state(&self) -> bool {
            self.stored - self.pop + self.add > 0
        }
    }

    pub(super) fn load(log: Option<&Log>, win: u64, now: u64) -> Sim {
        let mut sim = Sim {
            cut: 0,
            stored: 0,
            pop: 0,
            add: 0,
            stamp: now,
        };
        let Some(log) = log else { return sim };
        // A hit at t counts in (t, t + window]: at t + window it has left.
        sim.cut = log
            .entries
            .partition_point(|e| e.at.saturating_add(win) <= now);
        if let Some(newest) = log.entries.back() {
            sim.stored = newest.total.wrapping_sub(log.total_before(sim.cut));
            sim.stamp = now.max(newest.at);
        }
        sim
    }

    pub(super) fn decide(
        op: &CounterOp,
        sim: Sim,
        log: Option<&Log>,
        now: u64,
    ) -> (CounterState, Sim) {
        let win = op.window_ms();
        let (limit, hits) = (op.limit, op.hits);
        let Sim {
            stored, pop, add, ..
        } = sim;
        let count = stored - pop + add;
        // The k-th oldest hit of the log as simulated (1-based): a kept stored one, or one
        // logged now.
        let kth = |k: u64, pop: u64| -> u64 {
            match log {
                Some(log) if k <= stored - pop => log.entries[log.find(sim.cut, k)].at,
                _ => sim.stamp,
            }
        };
        let leaves = |t: u64| t.saturating_add(win).saturating_sub(now);
        let over = !op.negative && (limit == 0 || count.saturating_add(hits) > limit);
        let (pop, add, after) = if op.negative {
            // The newest hits go first: those of this batch, then the stored ones.
            let from_new = hits.min(add);
            let from_stored = (hits - from_new).min(stored - pop);
            (
                pop + from_stored,
                add - from_new,
                count - from_new - from_stored,
            )
        } else {
            // A shadow-mode log counts past its limit, but one hit past it is enough to
            // stay over: the log never holds more than limit + 1 hits.
            let logged = if over {
                hits.min((limit + 1).saturating_sub(count))
            } else {
                hits
            };
            (pop, add + logged, count + logged)
        };
        let reset_ms = if over {
            if limit == 0 || hits > limit {
                // Never fits: the time until the log is empty.
                if count == 0 {
                    win
                } else {
                    leaves(kth(count, pop))
                }
            } else {
                // The oldest `count + hits - limit` hits must leave first.
                leaves(kth(count + hits - limit, pop))
            }
        } else if after == 0 {
            0
        } else {
            leaves(kth(1, pop))
        };
        let state = CounterState {
            before: count,
            after,
            over,
            reset_ms,
            remaining: limit.saturating_sub(after),
        };
        (state, Sim { pop, add, ..sim })
    }

    pub(super) fn commit(logs: &mut HashMap<Slot, Log>, slot: Slot, sim: Sim) {
        let Sim {
            cut,
            stored,
            pop,
            add,
            stamp,
        } = sim;
        if pop == 0 && add == 0 {
            return;
        }
        let log = logs.entry(slot.clone()).or_default();
        // Expired entries leave in one step, whatever their number.
        if cut > 0 {
            log.base = log.entries[cut - 1].total;
            log.entries.drain(..cut);
        }
        let keep = stored - pop;
        if pop > 0 {
            if keep == 0 {
                log.entries.clear();
            } else {
                // Cut after the entry holding the keep-th hit; it keeps its part up to it.
                let i = log.find(0, keep);
                log.entries.truncate(i + 1);
                log.entries[i].total = log.base.wrapping_add(keep);
            }
        }
        if add > 0 {
            let total = log
                .entries
                .back()
                .map_or(log.base, |e| e.total)
                .wrapping_add(add);
            match log.entries.back_mut() {
                // One entry per admit time.
                Some(e) if e.at == stamp => e.total = total,
                _ => log.entries.push_back(Entry { at: stamp, total }),
            }
        }
        if log.entries.is_empty() {
            logs.remove(&slot);
        }
    }
}

/// Token bucket (GCRA). The state is `debt`: how far the theoretical arrival time is ahead of
/// `at`, in units of 1/`window ms` of a token: taking a token adds `window ms`, and each ms
/// drains `limit`. Integers keep it exact (the Redis script holds the same two numbers, and
/// [`CounterOp::bucket_capacity`] keeps them below 2^53 there).
mod bucket {
    use super::{CounterOp, CounterState, MAX_EXACT, Slot, State};

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Stored {
        debt: u64,
        at: u64,
        /// The expiry the Redis key gets: when the debt is paid off at the writer's
        /// limit (the bucket is full). The state is held through this ms, gone after it.
        until: u64,
    }

    impl Stored {
        /// Whether the state is still there at `now`: through `until` itself, as Redis
        /// keeps a key through the ms of its expiry. The sweep and the reads share it so
        /// that they cannot disagree on that ms.
        pub(super) fn is_held_at(&self, now: u64) -> bool {
            self.until >= now
        }
    }

    #[derive(Debug, Clone, Copy)]
    pub(super) struct Sim {
        /// The debt as stored, drained to now.
        stored: u64,
        /// The debt after the batch's ops so far.
        debt: u64,
        /// Tokens refilled per window: the drain per ms.
        limit: u64,
        /// The window, ms.
        win: u64,
    }

    impl Sim {
        pub(super) fn holds_state(&self) -> bool {
            self.debt > 0
        }
    }

    pub(super) fn load(state: &State, slot: &Slot, op: &CounterOp, now: u64) -> Sim {
        // Past `until` the state is gone, as a Redis key past its expiry. Redis keeps a key
        // through the ms of its expiry (it expires when the clock is *past* it), so the
        // state is still read at `now == until`. Under the writer's limit that changes
        // nothing (the debt is paid off by then), but a counter of the same key and window
        // with a lower limit still finds debt there, in Redis and so here too: the bucket's
        // state is the key's (docs/counter-store.md §4: "expires when the bucket is full
        // again"; docs/algorithms.md: a changed limit applies to the existing state).
        // Dropping it one ms early made a dry run read a full bucket where Redis read an
        // empty one, whenever it ran exactly at the expiry ms (likeliest in a coalesced call
        // right after the one that wrote it).
        let debt = state
            .buckets
            .get(slot)
            .filter(|b| b.is_held_at(now))
            .map_or(0, |b| drain(b.debt, now.saturating_sub(b.at), op.limit));
        Sim {
            stored: debt,
            debt,
            limit: op.limit,
            win: op.window_ms(),
        }
    }

    pub(super) fn decide(op: &CounterOp, sim: Sim) -> (CounterState, Sim) {
        let win = op.window_ms();
        let (limit, hits, cap, debt) = (op.limit, op.hits, op.bucket_capacity(), sim.debt);
        let cost = |n: u64| u128::from(n) * u128::from(win);
        let full = cost(cap);
        let tokens = |d: u64| {
            u64::try_from(full.saturating_sub(u128::from(d)) / u128::from(win)).unwrap_or(cap)
        };
        let over =
            !op.negative && (limit == 0 || hits > cap || u128::from(debt) + cost(hits) > full);
        let new_debt = if op.negative {
            u128::from(debt).saturating_sub(cost(hits))
        } else {
            u128::from(debt) + cost(hits)
        };
        // A shadow-mode bucket's debt goes past its capacity; it stops at 2^53 (as in Lua).
        let new_debt = u64::try_from(new_debt.min(MAX_EXACT.into())).unwrap_or(MAX_EXACT);
        let reset_ms = if limit == 0 {
            win
        } else if over && hits > cap {
            // Never fits: the time until the bucket is full.
            debt.div_ceil(limit)
        } else if over {
            let excess = u128::from(debt) + cost(hits) - full;
            u64::try_from(excess.div_ceil(u128::from(limit))).unwrap_or(u64::MAX)
        } else {
            next_token_ms(new_debt, cap, win, limit)
        };
        let state = CounterState {
            before: cap - tokens(debt).min(cap),
            after: cap - tokens(new_debt).min(cap),
            over,
            reset_ms,
            remaining: tokens(new_debt),
        };
        (
            state,
            Sim {
                debt: new_debt,
                ..sim
            },
        )
    }

    pub(super) fn commit(state: &mut State, slot: Slot, sim: Sim, now: u64) {
        if sim.debt == sim.stored {
            return;
        }
        if sim.debt == 0 {
            state.buckets.remove(&slot);
            return;
        }
        // A bucket that never refills (limit 0, where every request is over anyway) keeps
        // its debt for one window, so no state lives forever (the Redis key's expiry).
        let until = if sim.limit == 0 {
            now.saturating_add(sim.win)
        } else {
            now.saturating_add(sim.debt.div_ceil(sim.limit))
        };
        state.buckets.insert(
            slot,
            Stored {
                debt: sim.debt,
                at: now,
                until,
            },
        );
    }

    /// A bucket's debt after `elapsed_ms` of refill at `limit` per ms.
    fn drain(debt: u64, elapsed_ms: u64, limit: u64) -> u64 {
        let drained = u128::from(elapsed_ms) * u128::from(limit);
        u64::try_from(u128::from(debt).saturating_sub(drained)).unwrap_or(u64::MAX)
    }

    /// The ms until a bucket with `debt` holds one more whole token; 0 when it is full.
    fn next_token_ms(debt: u64, cap: u64, win: u64, limit: u64) -> u64 {
        let full = u128::from(cap) * u128::from(win);
        let debt = u128::from(debt);
        if debt == 0 || limit == 0 {
            return if debt == 0 { 0 } else { win };
        }
        let tokens = full.saturating_sub(debt) / u128::from(win);
        if tokens >= u128::from(cap) {
            return 0;
        }
        let target = (u128::from(cap) - tokens - 1) * u128::from(win);
        let wait = (debt - target).div_ceil(u128::from(limit));
        u64::try_from(wait).unwrap_or(u64::MAX)
    }
}

impl CounterStore for MemoryStore {
    fn apply<'a>(&'a self, ops: &'a [CounterOp], dry_run: bool) -> StoreFuture<'a, BatchOutcome> {
        let outcome = self.apply_now(ops, dry_run);
        Box::pin(async move { outcome })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn occupancy(&self) -> Option<(usize, usize)> {
        Some((self.len(), self.max_counters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::CounterScope;
    use crate::limiter::clock::ManualClock;
    use proptest::prelude::*;

    fn op(name: &str, limit: u64, hits: u64) -> CounterOp {
        CounterOp {
            key: CounterKey::new("d", name, &CounterScope::Overall),
            window_secs: 60,
            algorithm: Algorithm::FixedWindow,
            limit,
            capacity: limit,
            hits,
            negative: false,
            enforce: true,
            quota: false,
        }
    }

    #[test]
    fn expired_windows_are_freed() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::new(clock.clone());
        for i in 0..100 {
            store
                .apply_now(&[op(&format!("k{i}"), 10, 1)], false)
                .unwrap();
        }
        assert_eq!(store.len(), 100);
        clock.advance_ms(60_000);
        store.apply_now(&[op("fresh", 10, 1)], false).unwrap();
        assert_eq!(store.len(), 1);
    }

    fn log_op(limit: u64, hits: u64) -> CounterOp {
        CounterOp {
            algorithm: Algorithm::SlidingWindow,
            ..op("log", limit, hits)
        }
    }

    /// Entries of the one sliding log the store holds.
    fn log_entries(store: &MemoryStore) -> usize {
        let s = store.lock();
        s.logs.values().map(|l| l.entries_len()).sum()
    }

    #[test]
    fn a_sliding_log_holds_one_entry_per_admit_time_whatever_the_hits() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let max = u64::from(u32::MAX);
        // The request that once made the store allocate 34 GB: one entry.
        let out = store.apply_now(&[log_op(max, max)], false).unwrap();
        assert!(out.committed);
        assert_eq!((out.states[0].after, out.states[0].remaining), (max, 0));
        assert_eq!(log_entries(&store), 1);
        // Never fits: over at once, nothing written.
        let out = store.apply_now(&[log_op(max, max)], false).unwrap();
        assert!(!out.committed && out.states[0].over);
        assert_eq!(out.states[0].reset_ms, 60_000, "until the log is empty");
        assert_eq!(log_entries(&store), 1);
        // A shadow op past the limit logs one hit past it, in the same entry.
        let shadow = CounterOp {
            enforce: false,
            quota: false,
            ..log_op(max, max)
        };
        let out = store.apply_now(&[shadow], false).unwrap();
        assert_eq!(out.states[0].after, max + 1);
        assert_eq!(log_entries(&store), 1);
    }

    #[test]
    fn expired_entries_leave_in_one_step_and_give_backs_split_an_entry() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::new(clock.clone());
        for _ in 0..10_000 {
            clock.advance_ms(1);
            store.apply_now(&[log_op(1_000_000, 3)], false).unwrap();
        }
        assert_eq!(log_entries(&store), 10_000);
        // Past the window, one more admit drops all 10 000 expired entries at once.
        clock.advance_ms(60_000);
        let out = store.apply_now(&[log_op(1_000_000, 2)], false).unwrap();
        assert_eq!((out.states[0].before, out.states[0].after), (0, 2));
        assert_eq!(log_entries(&store), 1);
        // Three admit times of 2, 3 and 4 hits; giving back 5 takes the newest 4 and one of
        // the 3, leaving entries of 2 and 2.
        clock.advance_ms(1);
        store.apply_now(&[log_op(1_000_000, 3)], false).unwrap();
        clock.advance_ms(1);
        store.apply_now(&[log_op(1_000_000, 4)], false).unwrap();
        let back = CounterOp {
            negative: true,
            ..log_op(1_000_000, 5)
        };
        let out = store.apply_now(&[back], false).unwrap();
        assert_eq!((out.states[0].before, out.states[0].after), (9, 4));
        assert_eq!(log_entries(&store), 2);
        // The oldest hits leave at their own time: 2 of them 60 s after the first admit.
        clock.advance_ms(60_000 - 2);
        let out = store.apply_now(&[log_op(1_000_000, 0)], false).unwrap();
        assert_eq!(out.states[0].before, 2, "the split entry's 2 hits are left");
    }

    #[test]
    fn a_full_store_refuses_new_counters_and_evicts_none() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::with_max_counters(clock.clone(), 2);
        store.apply_now(&[op("a", 10, 1)], false).unwrap();
        store.apply_now(&[log_op(10, 1)], false).unwrap();
        let err = store.apply_now(&[op("c", 10, 1)], false).unwrap_err();
        assert!(matches!(err, StoreError::Capacity(_)), "{err}");
        assert_eq!(err.kind(), "capacity");
        // Held counters keep counting; a check or a rejected request needs no room.
        let out = store.apply_now(&[op("a", 10, 1)], false).unwrap();
        assert_eq!(out.states[0].after, 2);
        assert!(store.apply_now(&[op("c", 10, 0)], false).is_ok());
        assert!(store.apply_now(&[op("c", 0, 1)], false).is_ok());
        // A fixed window's next window takes its place: no new room needed.
        clock.advance_ms(60_000);
        let out = store.apply_now(&[op("a", 10, 1)], false).unwrap();
        assert_eq!(out.states[0].after, 1);
        // Expired state is swept, and makes room.
        clock.advance_ms(120_000);
        store.apply_now(&[op("c", 10, 1)], false).unwrap();
        assert_eq!(store.len(), 1);
    }

    /// A bucket's state lives as long as its Redis key would: through the ms of its expiry,
    /// gone after it. Only a counter of the same key and window with a lower limit than the
    /// writer's can tell (at the writer's limit the debt is paid off by then), and the
    /// differential test saw it do so on a real Redis.
    #[test]
    fn a_bucket_is_held_through_its_expiry_ms_as_a_redis_key_is() {
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        let store = MemoryStore::new(clock.clone());
        let bucket = |limit, hits| CounterOp {
            algorithm: Algorithm::TokenBucket,
            window_secs: 1,
            capacity: 4,
            ..op("b", limit, hits)
        };
        let fast = u64::from(u32::MAX);
        // Emptied at a limit that refills it within 1 ms: expiry 1 ms later.
        assert!(
            store
                .apply_now(&[bucket(fast, 4)], false)
                .unwrap()
                .committed
        );
        clock.advance_ms(1);
        // At limit 4, 1 ms pays back 4/1000 of a token: still empty, in that ms.
        let out = store.apply_now(&[bucket(4, 1)], true).unwrap();
        assert_eq!(
            (
                out.states[0].before,
                out.states[0].remaining,
                out.states[0].over
            ),
            (4, 0, true),
            "the state is still held at its expiry ms"
        );
        // Swept or not, it is gone the ms after.
        clock.advance_ms(1);
        let out = store.apply_now(&[bucket(4, 1)], true).unwrap();
        assert_eq!((out.states[0].before, out.states[0].remaining), (0, 4));
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
                        let out = store
                            .apply_now(&[op("shared", 1000, 1), op("other", 5000, 1)], false)
                            .unwrap();
                        if out.committed {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 1000);
        // Rejected requests consumed nothing on the second counter.
        let out = store.apply_now(&[op("other", 5000, 0)], false).unwrap();
        assert_eq!(out.states[0].before, 1000);
    }

    /// One arrival in a property test: after `gap` ms, `hits` taken (or given back).
    #[derive(Debug, Clone)]
    struct Arrival {
        gap: u64,
        hits: u64,
        negative: bool,
    }

    /// Random arrivals; with `negatives`, about one in ten gives hits back.
    fn arrivals(max_gap: u64, negatives: bool) -> impl Strategy<Value = Vec<Arrival>> {
        let p = if negatives { 0.1 } else { 0.0 };
        prop::collection::vec(
            (0..max_gap, 0u64..4, prop::bool::weighted(p)).prop_map(|(gap, hits, negative)| {
                Arrival {
                    gap,
                    hits,
                    negative,
                }
            }),
            1..120,
        )
    }

    fn strict_op(algorithm: Algorithm, window_secs: u64, limit: u64, capacity: u64) -> CounterOp {
        CounterOp {
            key: CounterKey::new("d", "p", &CounterScope::Overall),
            window_secs,
            algorithm,
            limit,
            capacity,
            hits: 0,
            negative: false,
            enforce: true,
            quota: false,
        }
    }

    /// Replays `arrivals` through the store; returns each decision with its time.
    fn replay(op: &CounterOp, arrivals: &[Arrival]) -> Vec<(u64, Arrival, CounterState, bool)> {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let store = MemoryStore::new(clock.clone());
        arrivals
            .iter()
            .map(|a| {
                clock.advance_ms(a.gap);
                let this = CounterOp {
                    hits: a.hits,
                    negative: a.negative,
                    ..op.clone()
                };
                let out = store.apply_now(&[this], false).unwrap();
                (out.now_ms, a.clone(), out.states[0], out.committed)
            })
            .collect()
    }

    proptest! {
        /// The sliding window against a plain log of every admitted hit: admitted if and
        /// only if it fits in (t - window, t], and never more than the limit in any interval
        /// of the window's length.
        #[test]
        fn sliding_window_matches_a_plain_log(
            window_secs in 1u64..5,
            limit in 1u64..8,
            arrivals in any::<bool>().prop_flat_map(|n| arrivals(2_500, n)),
        ) {
            let win = window_secs * 1000;
            let op = strict_op(Algorithm::SlidingWindow, window_secs, limit, limit);
            let mut log: Vec<u64> = Vec::new();
            for (t, a, s, committed) in replay(&op, &arrivals) {
                let live: Vec<u64> = log.iter().copied().filter(|&x| x + win > t).collect();
                let count = live.len() as u64;
                prop_assert_eq!(s.before, count);
                if a.negative {
                    prop_assert!(committed);
                    let drop = (a.hits as usize).min(live.len());
                    log.truncate(log.len() - drop);
                } else {
                    let fits = count + a.hits <= limit;
                    prop_assert_eq!(committed, fits, "at {} count {} hits {}", t, count, a.hits);
                    if fits {
                        log.extend(std::iter::repeat_n(t, a.hits as usize));
                        let live = count + a.hits;
                        prop_assert_eq!(s.remaining, limit - live);
                        let expected = if live == 0 {
                            0
                        } else {
                            log.iter().copied().find(|&x| x + win > t).unwrap() + win - t
                        };
                        prop_assert_eq!(s.reset_ms, expected);
                    } else if a.hits <= limit {
                        // Admitted exactly when the oldest count + hits - limit have left.
                        let k = (count + a.hits - limit) as usize;
                        prop_assert_eq!(s.reset_ms, live[k - 1] + win - t);
                    }
                }
            }
            // The guarantee itself: any interval of the window's length holds ≤ limit.
            for &start in &log {
                let within = log.iter().filter(|&&x| x >= start && x < start + win).count();
                prop_assert!(within as u64 <= limit, "{} hits in [{}, +{})", within, start, win);
            }
        }

        /// The bucket against a plain token count (tokens × window, refilled `limit` per ms up
        /// to the capacity): admitted if and only if its tokens are there, and over any
        /// interval, admitted ≤ burst + limit × t / window.
        #[test]
        fn token_bucket_matches_a_plain_token_count(
            window_secs in 1u64..20,
            limit in 1u64..8,
            capacity in 1u64..10,
            (negatives, arrivals) in any::<bool>().prop_flat_map(|n| (Just(n), arrivals(4_000, n))),
        ) {
            let win = window_secs * 1000;
            let full = capacity * win;
            let op = strict_op(Algorithm::TokenBucket, window_secs, limit, capacity);
            let (mut tokens, mut last) = (full, None::<u64>);
            let mut admitted: Vec<(u64, u64)> = Vec::new();
            for (t, a, s, committed) in replay(&op, &arrivals) {
                if let Some(l) = last {
                    tokens = (tokens + (t - l) * limit).min(full);
                }
                last = Some(t);
                prop_assert_eq!(s.before, capacity - tokens / win);
                if a.negative {
                    tokens = (tokens + a.hits * win).min(full);
                    prop_assert!(committed);
                } else {
                    let fits = a.hits * win <= tokens;
                    prop_assert_eq!(committed, fits, "at {} tokens {} hits {}", t, tokens, a.hits);
                    if fits {
                        tokens -= a.hits * win;
                        admitted.push((t, a.hits));
                        let expected = if tokens >= full {
                            0
                        } else {
                            ((tokens / win + 1) * win - tokens).div_ceil(limit)
                        };
                        prop_assert_eq!(s.reset_ms, expected);
                    } else if a.hits <= capacity {
                        prop_assert_eq!(s.reset_ms, (a.hits * win - tokens).div_ceil(limit));
                    }
                }
                prop_assert_eq!(s.remaining, tokens / win);
            }
            // The guarantee itself, on every interval between two admit times (given-back
            // tokens are taken again, so it holds for runs without give-backs).
            let checked = if negatives { &admitted[..0] } else { &admitted[..] };
            for (i, &(from, _)) in checked.iter().enumerate() {
                let mut sum = 0;
                for &(to, hits) in &checked[i..] {
                    sum += hits;
                    // sum ≤ capacity + limit × (to - from) / window, in integers.
                    prop_assert!(sum * win <= full + limit * (to - from),
                        "{} hits in [{}, {}]", sum, from, to);
                }
            }
        }
    }
}
