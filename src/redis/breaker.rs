//! A circuit breaker: after consecutive failures, calls fail at once (no waiting for a dead
//! Redis) until a probe sees Redis answer again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Consecutive failures that open the circuit.
pub const OPEN_AFTER: u32 = 3;

/// Counts consecutive failures; open at [`OPEN_AFTER`].
#[derive(Debug, Default)]
pub struct Breaker {
    failures: AtomicU32,
    last_error: Mutex<String>,
}

impl Breaker {
    /// True while calls should fail fast.
    pub fn is_open(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= OPEN_AFTER
    }

    /// A call (or probe) succeeded: close.
    pub fn success(&self) {
        if self.failures.swap(0, Ordering::Relaxed) >= OPEN_AFTER {
            tracing::info!("Redis answers again; circuit closed");
        }
    }

    /// A call failed; returns true when this failure opened the circuit.
    pub fn failure(&self, error: &str) -> bool {
        if let Ok(mut e) = self.last_error.lock() {
            error.clone_into(&mut e);
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n == OPEN_AFTER {
            tracing::warn!(
                error,
                "Redis failed {OPEN_AFTER} times in a row; circuit open"
            );
            return true;
        }
        false
    }

    /// The most recent failure, for `/readyz`.
    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_on_success() {
        let b = Breaker::default();
        assert!(!b.is_open());
        b.failure("x");
        b.success();
        for _ in 0..OPEN_AFTER - 1 {
            assert!(!b.failure("boom"));
        }
        assert!(!b.is_open());
        assert!(b.failure("boom"));
        assert!(b.is_open());
        assert_eq!(b.last_error(), "boom");
        b.success();
        assert!(!b.is_open());
    }
}
