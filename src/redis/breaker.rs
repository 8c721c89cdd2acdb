//! A circuit breaker: after consecutive failures, calls fail at once (no waiting for a dead
//! Redis) until a probe sees Redis answer again.
//!
//! The failures must also last: the circuit opens on the [`OPEN_AFTER`]th consecutive failure
//! only once the first of them is at least one call deadline old. A dead Redis fails every
//! call for as long as it is dead, so the circuit opens one deadline later than on the count
//! alone. A blip fails a few calls at once and then answers: measured at saturation on two
//! cores, the calls in flight when Redis or its I/O thread waited ~15 ms for a core failed
//! together, and on the count alone they opened the circuit, which then failed every request
//! until the next probe, 100 ms later (about 1 000 calls at 10 000 per second, for one stall).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Consecutive failures that open the circuit.
pub const OPEN_AFTER: u32 = 3;

/// Counts consecutive failures; open at [`OPEN_AFTER`] of them spanning `min_streak`.
#[derive(Debug)]
pub struct Breaker {
    failures: AtomicU32,
    open: AtomicBool,
    /// When the current run of failures began.
    streak: Mutex<Option<Instant>>,
    /// How long a run must have lasted to open the circuit.
    min_streak: Duration,
    last_error: Mutex<String>,
    /// Wakes the prober when the circuit opens.
    opened: tokio::sync::Notify,
}

impl Breaker {
    /// A closed breaker whose runs of failures must last `min_streak` (the call deadline).
    pub fn new(min_streak: Duration) -> Self {
        Breaker {
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            streak: Mutex::new(None),
            min_streak,
            last_error: Mutex::new(String::new()),
            opened: tokio::sync::Notify::new(),
        }
    }

    /// True while calls should fail fast.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves when the circuit is open: at once if it is, else when it next opens.
    pub async fn opened(&self) {
        // Registered before the check, so an opening between the two is not missed.
        let notified = self.opened.notified();
        if self.is_open() {
            return;
        }
        notified.await;
    }

    /// A call (or probe) succeeded: close.
    pub fn success(&self) {
        // The common case, with nothing to reset, stays one load.
        if self.failures.load(Ordering::Relaxed) == 0 {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.streak.lock() {
            *s = None;
        }
        if self.open.swap(false, Ordering::Relaxed) {
            tracing::info!("Redis answers again; circuit closed");
        }
    }

    /// A call failed; returns true when this failure opened the circuit.
    pub fn failure(&self, error: &str) -> bool {
        self.failure_at(error, Instant::now())
    }

    fn failure_at(&self, error: &str, now: Instant) -> bool {
        if let Ok(mut e) = self.last_error.lock() {
            error.clone_into(&mut e);
        }
        let started = match self.streak.lock() {
            Ok(mut s) => *s.get_or_insert(now),
            Err(_) => now,
        };
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= OPEN_AFTER
            && now.saturating_duration_since(started) >= self.min_streak
            && !self.open.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                error,
                failures = n,
                "Redis failed {n} times in a row, for longer than a call deadline; circuit open"
            );
            self.opened.notify_one();
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

    const DEADLINE: Duration = Duration::from_millis(15);

    #[test]
    fn opens_after_consecutive_failures_lasting_a_deadline_and_closes_on_success() {
        let b = Breaker::new(DEADLINE);
        let t0 = Instant::now();
        assert!(!b.is_open());
        b.failure_at("x", t0);
        b.success();
        for _ in 0..OPEN_AFTER - 1 {
            assert!(!b.failure_at("boom", t0));
        }
        assert!(!b.is_open());
        // The count is reached, but within one deadline of the first failure: a blip.
        assert!(!b.failure_at("boom", t0 + DEADLINE / 2));
        assert!(!b.is_open());
        // Still failing a deadline later: open, once.
        assert!(b.failure_at("boom", t0 + DEADLINE));
        assert!(b.is_open());
        assert!(!b.failure_at("boom", t0 + DEADLINE * 2), "opened already");
        assert_eq!(b.last_error(), "boom");
        b.success();
        assert!(!b.is_open());
    }

    #[test]
    fn a_success_starts_the_run_again() {
        let b = Breaker::new(DEADLINE);
        let t0 = Instant::now();
        for _ in 0..OPEN_AFTER {
            b.failure_at("boom", t0);
        }
        b.success();
        // A new run: its own first failure is the one that must be a deadline old.
        for _ in 0..OPEN_AFTER {
            assert!(!b.failure_at("boom", t0 + DEADLINE * 2));
        }
        assert!(b.failure_at("boom", t0 + DEADLINE * 3));
    }

    #[tokio::test]
    async fn opening_wakes_whoever_waits_for_it() {
        let b = std::sync::Arc::new(Breaker::new(DEADLINE));
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "closed: nothing to wake for");
        let t0 = Instant::now();
        for i in 0..OPEN_AFTER {
            b.failure_at("boom", t0 + DEADLINE * i);
        }
        assert!(b.is_open());
        waiter.await.unwrap();
        // Open already: resolves at once.
        b.opened().await;
    }
}
