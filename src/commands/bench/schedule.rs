//! The open loop's schedule and the timer that keeps it.
//!
//! Call i of the run is due `i / rate` seconds after the start and is sent on connection
//! `i % connections`, so each connection's thread sends every `connections`-th call and
//! the calls leave evenly spread, not in bursts. tokio's timers tick in milliseconds (ten
//! calls' worth at 10 000/s), so on Linux a thread waits for its next call on a timerfd of
//! its own, which wakes it within microseconds of the time asked.

use std::time::{Duration, Instant};

const NANOS_PER_SECOND: u128 = 1_000_000_000;

/// Calls the open loop schedules in `duration` at `rate` per second, rounded up.
pub(super) fn calls(duration: Duration, rate: u32) -> u64 {
    let nanos = duration.as_nanos() * u128::from(rate);
    u64::try_from(nanos.div_ceil(NANOS_PER_SECOND)).unwrap_or(u64::MAX)
}

/// How long after the start call `i` is due, at `rate` per second.
pub(super) fn due(i: u64, rate: u32) -> Duration {
    let nanos = u128::from(i) * NANOS_PER_SECOND / u128::from(rate.max(1));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Part `k` of `total` split over `parts` as evenly as whole numbers allow (the first
/// `total % parts` parts take one more).
pub(super) fn share(total: usize, parts: usize, k: usize) -> usize {
    let parts = parts.max(1);
    total / parts + usize::from(k < total % parts)
}

/// Waits for given instants.
#[derive(Debug)]
pub(super) struct Timer {
    #[cfg(target_os = "linux")]
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
    /// The instant the timerfd is set for, until it is read.
    #[cfg(target_os = "linux")]
    armed: Option<Instant>,
}

#[cfg(target_os = "linux")]
impl Timer {
    /// A timer on a timerfd of the monotonic clock (the clock `Instant` reads on Linux),
    /// registered with the current runtime.
    pub(super) fn new() -> std::io::Result<Self> {
        use rustix::time::{TimerfdClockId, TimerfdFlags, timerfd_create};
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // `with_interest` is deprecated because a `T: AsRawFd` need not own its fd, which
        // another owner could close while it is registered (tokio #8587). An `OwnedFd` is
        // the fd's one owner, so that cannot happen here; its replacement is `unsafe`, which
        // the crate forbids.
        #[allow(deprecated)]
        let fd = tokio::io::unix::AsyncFd::with_interest(fd, tokio::io::Interest::READABLE)?;
        Ok(Timer { fd, armed: None })
    }

    /// Returns at `at` (at once when it has passed). A wait given up before `at` (the
    /// future dropped) leaves the timer set, and the next wait for the same instant finds
    /// it so; a wait for another instant sets it anew.
    pub(super) async fn wait_until(&mut self, at: Instant) -> std::io::Result<()> {
        use futures_util::FutureExt;
        use rustix::io::Errno;
        use rustix::time::{Itimerspec, TimerfdTimerFlags, Timespec, timerfd_settime};
        if self.armed != Some(at) {
            let now = Instant::now();
            if at <= now {
                return Ok(());
            }
            // Relative to now: an all-zero value would disarm the timer, so a wait of
            // nothing returned above.
            let value = Timespec::try_from(at - now).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let spec = Itimerspec {
                it_interval: Timespec::default(),
                it_value: value,
            };
            // Setting the timer drops an expiration not read yet, but not the runtime's
            // note that the fd was readable: forgotten first, or the wait would start with
            // a read that finds nothing.
            if let Some(Ok(mut stale)) = self.fd.readable().now_or_never() {
                stale.clear_ready();
            }
            timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
            self.armed = Some(at);
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            let read = rustix::io::read(self.fd.get_ref(), &mut expirations[..]);
            // Unreadable until it expires again either way: forgetting the readiness now
            // saves the next wait a read that would only find nothing.
            ready.clear_ready();
            match read {
                Ok(_) => {
                    self.armed = None;
                    return Ok(());
                }
                // Setting the timer again cleared an expiration the runtime had seen.
                Err(Errno::AGAIN) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Timer {
    /// A timer on tokio's clock, to the millisecond.
    pub(super) fn new() -> std::io::Result<Self> {
        Ok(Timer {})
    }

    /// Returns at `at`, or up to a millisecond after.
    pub(super) async fn wait_until(&mut self, at: Instant) -> std::io::Result<()> {
        tokio::time::sleep_until(at.into()).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_the_rate_times_the_duration_rounded_up() {
        assert_eq!(calls(Duration::from_secs(2), 1000), 2000);
        assert_eq!(calls(Duration::from_millis(100), 10), 1);
        assert_eq!(calls(Duration::from_millis(150), 10), 2);
        assert_eq!(calls(Duration::from_secs(10), 10_000), 100_000);
        assert_eq!(calls(Duration::ZERO, 10_000), 0);
        // No overflow at the bounds of the flags.
        assert_eq!(
            calls(Duration::from_secs(86_400), u32::MAX),
            86_400 * u64::from(u32::MAX)
        );
    }

    #[test]
    fn calls_are_due_evenly_from_the_start() {
        assert_eq!(due(0, 10_000), Duration::ZERO);
        assert_eq!(due(1, 10_000), Duration::from_micros(100));
        assert_eq!(due(10_000, 10_000), Duration::from_secs(1));
        // A rate that does not divide a second: rounded down to the nanosecond, no drift.
        assert_eq!(due(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(due(3, 3), Duration::from_secs(1));
        assert_eq!(due(3_000_000, 3), Duration::from_secs(1_000_000));
        // The last call of a run is due before the run's end.
        let (d, rate) = (Duration::from_secs(2), 1000);
        assert!(due(calls(d, rate) - 1, rate) < d);
    }

    #[test]
    fn shares_add_up_and_differ_by_one_at_most() {
        for (total, parts) in [(64, 4), (10, 4), (3, 4), (0, 2), (1000, 7)] {
            let shares: Vec<_> = (0..parts).map(|k| share(total, parts, k)).collect();
            assert_eq!(shares.iter().sum::<usize>(), total, "{total} over {parts}");
            let (lo, hi) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(hi - lo <= 1, "{shares:?}");
        }
        assert_eq!(share(10, 4, 0), 3);
        assert_eq!(share(10, 4, 3), 2);
    }

    #[tokio::test]
    async fn the_timer_wakes_at_the_instant_asked_not_before() {
        let mut timer = Timer::new().unwrap();
        let start = Instant::now();
        for i in 1..=5u32 {
            let at = start + Duration::from_micros(300) * i;
            timer.wait_until(at).await.unwrap();
            assert!(Instant::now() >= at, "woke before call {i} was due");
        }
        // An instant in the past returns at once, and a wait given up keeps the timer set.
        timer.wait_until(start).await.unwrap();
        let at = Instant::now() + Duration::from_millis(2);
        let _ = tokio::time::timeout(Duration::from_micros(10), timer.wait_until(at)).await;
        timer.wait_until(at).await.unwrap();
        assert!(Instant::now() >= at);
    }
}
