//! Counters known to be full, answered without the store (docs/counter-store.md §6): under
//! an attack on one key, the shared store sees at most one call per replica per TTL for it.
//!
//! An entry answers until its window ends or its TTL (`--over-limit-cache-ttl`) passes,
//! whichever comes first, so quota freed elsewhere (another replica's give-back) is seen
//! within the TTL; a give-back through this replica drops the entry at once.
//!
//! Fixed windows only: a full fixed window stays full until it ends, whatever the hits of
//! the next request. A sliding log or a bucket frees room at its own pace, and how soon a
//! request fits there depends on its hits, so caching them could reject a request that fits.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::store::CounterOp;
use crate::config::Algorithm;
use crate::descriptor::CounterKey;

/// A counter: its key and window length.
type Key = (CounterKey, u64 /* window secs */);

/// A full counter: the limit it is full for (a reload that changes the limit finds no
/// entry and asks the store again), the local time (ms) its window ends, and the one it
/// stops answering (the window's end or the TTL, whichever comes first).
#[derive(Debug, Clone, Copy)]
struct Full {
    limit: u64,
    ends: u64,
    until: u64,
}

/// Bounded map of full counters.
#[derive(Debug)]
pub struct OverLimitCache {
    entries: Mutex<HashMap<Key, Full>>,
    capacity: usize,
    ttl_ms: u64,
}

impl OverLimitCache {
    /// A cache holding at most `capacity` counters, each for at most `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        OverLimitCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn key(op: &CounterOp) -> Key {
        (op.key.clone(), op.window_secs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Full>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// If `op` would take hits from a counter known to be full, the ms until its window ends.
    /// Never for a quota op: it counts its hits even when full, so only the store answers it
    /// (docs/envoy-compat.md "Quota mode").
    pub fn full_for(&self, op: &CounterOp, now_ms: u64) -> Option<u64> {
        if op.algorithm != Algorithm::FixedWindow
            || !op.enforce
            || op.quota
            || op.negative
            || op.hits == 0
        {
            return None;
        }
        self.lock()
            .get(&Self::key(op))
            .filter(|f| f.limit == op.limit && f.until > now_ms)
            .map(|f| f.ends - now_ms)
    }

    /// Remembers that `op`'s counter is full for `reset_ms` more (its window's end), for at
    /// most the TTL.
    pub fn remember(&self, op: &CounterOp, now_ms: u64, reset_ms: u64) {
        if op.algorithm != Algorithm::FixedWindow || self.ttl_ms == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity {
            entries.retain(|_, f| f.until > now_ms);
            if entries.len() >= self.capacity {
                return;
            }
        }
        let ends = now_ms.saturating_add(reset_ms);
        entries.insert(
            Self::key(op),
            Full {
                limit: op.limit,
                ends,
                until: ends.min(now_ms.saturating_add(self.ttl_ms)),
            },
        );
    }

    /// Forgets `op`'s counter: hits were given back to it through this replica.
    pub fn forget(&self, op: &CounterOp) {
        self.lock().remove(&Self::key(op));
    }

    /// Forgets everything (on reload).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::CounterScope;

    fn op(limit: u64) -> CounterOp {
        CounterOp {
            key: CounterKey::new("d", "e", &CounterScope::Overall),
            window_secs: 60,
            algorithm: Algorithm::FixedWindow,
            limit,
            capacity: limit,
            hits: 1,
            negative: false,
            enforce: true,
            quota: false,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn entries_expire_and_are_keyed_by_limit() {
        let c = OverLimitCache::new(10, MINUTE);
        c.remember(&op(5), 1_000, 500);
        assert_eq!(c.full_for(&op(5), 1_200), Some(300));
        assert_eq!(
            c.full_for(&op(6), 1_200),
            None,
            "a changed limit is a different entry"
        );
        assert_eq!(c.full_for(&op(5), 1_500), None, "the window ended");
        let check = CounterOp { hits: 0, ..op(5) };
        assert_eq!(
            c.full_for(&check, 1_200),
            None,
            "a check-only request asks the store"
        );
        let shadow = CounterOp {
            enforce: false,
            quota: false,
            ..op(5)
        };
        assert_eq!(c.full_for(&shadow, 1_200), None);
        let quota = CounterOp {
            quota: true,
            ..op(5)
        };
        assert_eq!(
            c.full_for(&quota, 1_200),
            None,
            "a quota op counts even when full: only the store answers it"
        );
    }

    #[test]
    fn capacity_is_bounded() {
        let c = OverLimitCache::new(2, MINUTE);
        for i in 0..5 {
            let op = CounterOp {
                key: CounterKey::new("d", &format!("e{i}"), &CounterScope::Overall),
                ..op(5)
            };
            c.remember(&op, 0, 1_000);
        }
        assert_eq!(c.len(), 2);
        // Expired entries make room.
        c.remember(&op(9), 2_000, 1_000);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_ttl_bounds_an_entry_and_a_give_back_drops_it() {
        let c = OverLimitCache::new(10, Duration::from_secs(1));
        // The window ends in 50 s; the entry answers for 1 s only, with the window's end.
        c.remember(&op(5), 1_000, 50_000);
        assert_eq!(c.full_for(&op(5), 1_999), Some(49_001));
        assert_eq!(c.full_for(&op(5), 2_000), None, "the TTL passed");
        // A window ending before the TTL ends the entry first.
        c.remember(&op(5), 10_000, 300);
        assert_eq!(c.full_for(&op(5), 10_299), Some(1));
        assert_eq!(c.full_for(&op(5), 10_300), None);
        c.remember(&op(5), 20_000, 50_000);
        c.forget(&CounterOp {
            negative: true,
            ..op(5)
        });
        assert_eq!(c.full_for(&op(5), 20_001), None, "given back");
        let off = OverLimitCache::new(10, Duration::ZERO);
        off.remember(&op(5), 0, 50_000);
        assert!(off.is_empty(), "a TTL of 0 caches nothing");
    }
}
