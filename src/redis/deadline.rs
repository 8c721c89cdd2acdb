//! Deadlines on the Redis server's clock (docs/counter-store.md §10): a call the service has
//! answered as failed must never count later, when a stalled Redis gets round to it. So
//! every check-and-count call carries the moment, on the server's own clock (`TIME`, which
//! the script reads), after which it must change nothing.
//!
//! The service learns the offset between that clock and its own monotonic one from every
//! reply: the server read `now_ms` at some instant between sending and receiving, so
//! `now_ms − (local time at receipt)` is a lower bound on the offset. A deadline built on a
//! lower bound is never later than the true one: a script can only count if it started
//! before the service gave up. The estimate is the smallest bound seen in the current and
//! the previous second: a clock that steps back is followed at once (a smaller bound), one
//! that steps forward within two seconds (meanwhile calls are refused as late, never
//! counted late); with a Redis Cluster the smallest bound serves every node, whose clocks
//! may differ slightly.
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
    bounds: Mutex<Bounds>,
}

#[derive(Debug)]
struct Bounds {
    /// Smallest offset bound (server ms − local ms) seen since `started`.
    current: Option<i64>,
    /// Smallest bound of the window before.
    previous: Option<i64>,
    started: Instant,
}

impl Default for ServerClock {
    fn default() -> Self {
        let origin = Instant::now();
        ServerClock {
            origin,
            bounds: Mutex::new(Bounds {
                current: None,
                previous: None,
                started: origin,
            }),
        }
    }
}

impl ServerClock {
    /// The local monotonic clock, whole ms since this clock was made (rounded down).
    pub fn local_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Learns from a reply: the server's clock read `server_ms` before now.
    pub fn observe(&self, server_ms: u64) {
        // Rounded up, so the bound stays a lower bound.
        let received = self.local_ms() + 1;
        let bound = i64::try_from(server_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(received);
        let mut b = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
        if b.started.elapsed() >= WINDOW {
            b.previous = b.current.take();
            b.started = Instant::now();
        }
        b.current = Some(b.current.map_or(bound, |c| c.min(bound)));
    }

    /// The deadline, in server ms, of a call started at local `started_ms` that the service
    /// gives up on after `timeout`; `None` before the first reply.
    pub fn deadline(&self, started_ms: i64, timeout: Duration) -> Option<u64> {
        let offset = {
            let b = self.bounds.lock().unwrap_or_else(PoisonError::into_inner);
            match (b.current, b.previous) {
                (Some(c), Some(p)) => c.min(p),
                (Some(x), None) | (None, Some(x)) => x,
                (None, None) => return None,
            }
        };
        let timeout = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        u64::try_from(started_ms.saturating_add(timeout).saturating_add(offset))
            .ok()
            .filter(|&d| d > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_deadline_before_a_reply_then_one_never_later_than_the_truth() {
        let clock = ServerClock::default();
        assert_eq!(clock.deadline(0, Duration::from_millis(15)), None);
        // The server runs 1 000 000 ms ahead; its reply was read before we received it.
        let local = clock.local_ms();
        clock.observe(u64::try_from(local).unwrap() + 1_000_000);
        let deadline = clock.deadline(local, Duration::from_millis(15)).unwrap();
        let truth = u64::try_from(local).unwrap() + 1_000_000 + 15;
        assert!(deadline <= truth, "{deadline} > {truth}");
        // A smaller bound (a server clock stepping back) is followed at once.
        clock.observe(u64::try_from(clock.local_ms()).unwrap() + 500_000);
        assert!(clock.deadline(local, Duration::from_millis(15)).unwrap() <= truth - 499_000);
    }
}
