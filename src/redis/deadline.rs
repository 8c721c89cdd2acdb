//! Deadlines on the Redis server's clock (docs/counter-store.md §10): a call the service has
//! answered as failed must never count later, when a stalled Redis gets round to it. So
//! every check-and-count call carries the moment, on the server's own clock (`TIME`, which
//! the script reads), after which it must change nothing.
//!
//! The service learns the offset between that clock and its own monotonic one from every
//! reply: the server read `now_ms` at some instant between sending and receiving, so
//! `now_ms − (local time at receipt)` is a lower bound on the offset, low by the reply's lag.
//! A deadline built on a lower bound is never later than the true one: a script can only
//! count if it started before the service gave up.
//!
//! Every bound is low, so the *largest* one is the tightest: the estimate is the largest
//! bound seen in the current and the previous second (the smallest, used before, made every
//! deadline early by the longest reply lag of the last two seconds, so under load calls on
//! time were refused as late). A reply is only observed when it came back within the call's
//! timeout, so an honest bound is at most `timeout` + 1 ms below the truth: a new bound lower
//! than the estimate by more than that means the server's clock stepped back, and the
//! estimate is reset to it at once. A smaller step back is forgotten within two seconds, when
//! the windows holding the older bounds have passed (meanwhile a deadline may be late by at
//! most that step, itself under the timeout). A step forward raises the bound at once.
//!
//! Before the first reply nothing is known: those calls carry no deadline. The readiness
//! probe runs the script every quarter second, so a ready service has an estimate.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one window of observations lasts; the estimate covers this and the previous.
const WINDOW: Duration = Duration::from_secs(1);

/// What the service knows of the Redis server's clock.
#[derive(Debug)]
pub struct ServerClock {
    origin: Instant,
    /// How far below the truth an honest bound can be (the call timeout + 1 ms of rounding).
    slack_ms: i64,
    bounds: Mutex<Bounds>,
}

#[derive(Debug)]
struct Bounds {
    /// Largest offset bound (server ms − local ms) seen since `started`.
    current: Option<i64>,
    /// Largest bound of the window before.
    previous: Option<i64>,
    started: Instant,
}

impl Bounds {
    fn estimate(&self) -> Option<i64> {
        match (self.current, self.previous) {
            (Some(c), Some(p)) => Some(c.max(p)),
            (Some(x), None) | (None, Some(x)) => Some(x),
            (None, None) => None,
        }
    }
}

impl ServerClock {
    /// A clock for calls that give up after `timeout` (replies later than that are never
    /// observed).
    pub fn new(timeout: Duration) -> Self {
        let origin = Instant::now();
        ServerClock {
            origin,
            slack_ms: i64::try_from(timeout.as_millis())
                .unwrap_or(i64::MAX)
                .saturating_add(1),
            bounds: Mutex::new(Bounds {
                current: None,
                previous: None,
                started: origin,
            }),
        }
    }

    /// The local monotonic clock, whole ms since this clock was made (rounded down).
    pub fn local_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Learns from a reply received within the timeout: the server's clock read `server_ms`
    /// before now.
    pub fn observe(&self, server_ms: u64) {
        // Rounded up, so the bound stays a lower bound.
        let received = self.local_ms() + 1;
        let bound = i64::try_from(server_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(received);
        let mut b = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
        if b.estimate()
            .is_some_and(|e| bound < e.saturating_sub(self.slack_ms))
        {
            // Lower than any honest bound can be: the server's clock stepped back.
            b.previous = None;
            b.current = Some(bound);
            b.started = Instant::now();
            return;
        }
        if b.started.elapsed() >= WINDOW {
            b.previous = b.current.take();
            b.started = Instant::now();
        }
        b.current = Some(b.current.map_or(bound, |c| c.max(bound)));
    }

    /// The deadline, in server ms, of a call started at local `started_ms` that the service
    /// gives up on after `timeout`; `None` before the first reply.
    pub fn deadline(&self, started_ms: i64, timeout: Duration) -> Option<u64> {
        let offset = self
            .bounds
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .estimate()?;
        let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        u64::try_from(started_ms.saturating_add(timeout).saturating_add(offset))
            .ok()
            .filter(|&d| d > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_millis(15);

    fn ms(v: i64) -> u64 {
        u64::try_from(v).unwrap()
    }

    #[test]
    fn no_deadline_before_a_reply_then_one_never_later_than_the_truth() {
        let clock = ServerClock::new(TIMEOUT);
        assert_eq!(clock.deadline(0, TIMEOUT), None);
        // The server runs 1 000 000 ms ahead; its reply was read before we received it.
        let local = clock.local_ms();
        clock.observe(ms(local) + 1_000_000);
        let deadline = clock.deadline(local, TIMEOUT).unwrap();
        let truth = ms(local) + 1_000_000 + 15;
        assert!(deadline <= truth, "{deadline} > {truth}");
        // A step back larger than the timeout (a bound no honest reply can give) is
        // followed at once.
        clock.observe(ms(clock.local_ms()) + 500_000);
        assert!(clock.deadline(local, TIMEOUT).unwrap() <= truth - 499_000);
    }

    #[test]
    fn the_largest_bound_wins_so_a_slow_reply_does_not_make_deadlines_early() {
        let clock = ServerClock::new(TIMEOUT);
        let local = clock.local_ms();
        // A reply that lagged 10 ms (the server read its clock 10 ms before we got it),
        // then a prompt one: the prompt one is the tighter bound.
        clock.observe(ms(local) + 1_000_000 - 10);
        let early = clock.deadline(local, TIMEOUT).unwrap();
        clock.observe(ms(clock.local_ms()) + 1_000_000);
        let tight = clock.deadline(local, TIMEOUT).unwrap();
        assert!(tight >= early + 9, "{tight} vs {early}");
        // A laggy reply after it (within the timeout) does not lower the estimate.
        clock.observe(ms(clock.local_ms()) + 1_000_000 - 14);
        assert_eq!(clock.deadline(local, TIMEOUT).unwrap(), tight);
        // Still never later than the truth.
        assert!(tight <= ms(clock.local_ms()) + 1_000_000 + 15 + 1);
    }

    #[test]
    fn a_step_forward_is_followed_at_once() {
        let clock = ServerClock::new(TIMEOUT);
        let local = clock.local_ms();
        clock.observe(ms(local) + 1_000_000);
        clock.observe(ms(clock.local_ms()) + 1_005_000);
        assert!(clock.deadline(local, TIMEOUT).unwrap() >= ms(local) + 1_005_000);
    }
}
