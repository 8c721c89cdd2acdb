//! Counters known to be full until their window ends, answered without the store
//! (counter-store.md §6): under an attack on one key, the shared store's load stays flat.
//!
//! Fixed windows only: a full fixed window stays full until it ends, whatever the hits of
//! the next request. A sliding log or a bucket frees room at its own pace, and how soon a
//! request fits there depends on its hits, so caching them could reject a request that fits.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use super::store::CounterOp;
use crate::config::Algorithm;
use crate::descriptor::CounterKey;

/// A full counter: its identity *and its limit*, so a reload that changes the limit finds
/// no entry and asks the store again.
type Key = (CounterKey, u64 /* window secs */, u64 /* limit */);

/// Bounded map of full counters to the local time (ms) their window ends.
#[derive(Debug)]
pub struct OverLimitCache {
    entries: Mutex<HashMap<Key, u64>>,
    capacity: usize,
}

impl OverLimitCache {
    /// A cache holding at most `capacity` counters.
    pub fn new(capacity: usize) -> Self {
        OverLimitCache {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn key(op: &CounterOp) -> Key {
        (op.key.clone(), op.window_secs, op.limit)
    }

    /// If `op` would take hits from a counter known to be full, the ms until its window ends.
    pub fn full_for(&self, op: &CounterOp, now_ms: u64) -> Option<u64> {
        if op.algorithm != Algorithm::FixedWindow || !op.enforce || op.negative || op.hits == 0 {
            return None;
        }
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&Self::key(op))
            .filter(|&&until| until > now_ms)
            .map(|until| until - now_ms)
    }

    /// Remembers that `op`'s counter is full for `reset_ms` more.
    pub fn remember(&self, op: &CounterOp, now_ms: u64, reset_ms: u64) {
        if op.algorithm != Algorithm::FixedWindow {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= self.capacity {
            entries.retain(|_, until| *until > now_ms);
            if entries.len() >= self.capacity {
                return;
            }
        }
        entries.insert(Self::key(op), now_ms + reset_ms);
    }

    /// Forgets everything (on reload).
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Number of entries, expired ones included.
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
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
        }
    }

    #[test]
    fn entries_expire_and_are_keyed_by_limit() {
        let c = OverLimitCache::new(10);
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
            ..op(5)
        };
        assert_eq!(c.full_for(&shadow, 1_200), None);
    }

    #[test]
    fn capacity_is_bounded() {
        let c = OverLimitCache::new(2);
        for limit in 0..5 {
            c.remember(&op(limit), 0, 1_000);
        }
        assert_eq!(c.len(), 2);
        // Expired entries make room.
        c.remember(&op(9), 2_000, 1_000);
        assert_eq!(c.len(), 1);
    }
}
