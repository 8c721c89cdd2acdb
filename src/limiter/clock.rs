//! Time, injected: the service reads a [`SystemClock`], tests move a [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, UTC.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the epoch.
    fn now_ms(&self) -> u64;
}

/// The host's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock reading `ms`.
    pub fn new(ms: u64) -> Self {
        ManualClock(AtomicU64::new(ms))
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set_ms(&self, ms: u64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The fixed window containing `now_ms`, aligned to the epoch: `(start_ms, end_ms)`.
pub fn window(now_ms: u64, window_secs: u64) -> (u64, u64) {
    let len = window_secs.max(1).saturating_mul(1000);
    let start = now_ms - now_ms % len;
    (start, start.saturating_add(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        assert_eq!(window(0, 60), (0, 60_000));
        assert_eq!(window(59_999, 60), (0, 60_000));
        assert_eq!(window(60_000, 60), (60_000, 120_000));
        assert_eq!(
            window(1_700_000_123_456, 3600),
            (1_699_999_200_000, 1_700_002_800_000)
        );
    }
}
