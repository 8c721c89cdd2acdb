//! The Lua scripts: `check_and_count.lua` (the one call per request) and `give_back.lua`
//! (the Redis Cluster undo), each run after `common.lua`; how a batch becomes their KEYS
//! and ARGV, and how a reply becomes a [`BatchOutcome`]. The field order here is the one
//! the scripts' `decode()` reads.

use std::sync::LazyLock;

use crate::config::Algorithm;
use crate::limiter::{BatchOutcome, CounterOp, CounterState, MAX_EXACT};

/// The check-and-count script, loaded once; invoked by SHA (EVALSHA), reloaded on NOSCRIPT
/// by the client.
pub static CHECK_AND_COUNT: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(concat!(
        include_str!("common.lua"),
        include_str!("check_and_count.lua")
    ))
});

/// The give-back script (Redis Cluster: undoing a slot's count of a rejected request).
pub static GIVE_BACK: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(concat!(
        include_str!("common.lua"),
        include_str!("give_back.lua")
    ))
});

/// What a check-and-count call is for (the script's ARGV[1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check, and count unless a counter is over.
    Count,
    /// Check only.
    DryRun,
    /// Readiness: a dry run that also proves the server accepts the script's writes.
    Probe,
}

impl Mode {
    /// A request's mode.
    pub fn of(dry_run: bool) -> Mode {
        if dry_run { Mode::DryRun } else { Mode::Count }
    }
}

/// Builds one check-and-count call for `ops`; each key is `prefix:` + the counter key.
/// `deadline_ms` (server clock) makes a call that starts later change nothing.
pub fn invocation<'a>(
    prefix: &str,
    ops: &[&CounterOp],
    mode: Mode,
    deadline_ms: Option<u64>,
) -> ::redis::ScriptInvocation<'a> {
    let mut inv = CHECK_AND_COUNT.prepare_invoke();
    inv.arg(match mode {
        Mode::Count => "0",
        Mode::DryRun => "1",
        Mode::Probe => "2",
    })
    .arg(deadline_ms.unwrap_or(0));
    if mode == Mode::Probe {
        // A key that never exists (the probe's SET XX leaves it so).
        inv.key(format!("{prefix}:probe"));
    }
    for op in ops {
        inv.key(format!("{prefix}:{}", op.key));
        inv.arg(algorithm(op))
            .arg(op.window_ms())
            .arg(op.limit.min(MAX_EXACT))
            .arg(op.hits.min(MAX_EXACT))
            .arg(if op.negative { "1" } else { "0" })
            .arg(if op.enforce { "1" } else { "0" })
            .arg(op.bucket_capacity());
    }
    inv
}

/// Builds the give-back call returning the hits `ops` took in a check-and-count call that
/// counted at `taken_ms` (server time). Only for ops that took hits (not negative ones).
pub fn give_back_invocation<'a>(
    prefix: &str,
    ops: &[&CounterOp],
    taken_ms: u64,
) -> ::redis::ScriptInvocation<'a> {
    let mut inv = GIVE_BACK.prepare_invoke();
    inv.arg(taken_ms);
    for op in ops {
        inv.key(format!("{prefix}:{}", op.key));
        inv.arg(algorithm(op))
            .arg(op.window_ms())
            .arg(op.limit.min(MAX_EXACT))
            .arg(op.hits.min(MAX_EXACT));
    }
    inv
}

fn algorithm(op: &CounterOp) -> &'static str {
    match op.algorithm {
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindow => "s",
        Algorithm::TokenBucket => "b",
    }
}

/// A check-and-count reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The call ran.
    Ran(BatchOutcome),
    /// The call started after its deadline and changed nothing; the server's clock then.
    Expired {
        /// Server time, ms.
        now_ms: u64,
    },
}

/// Parses the check-and-count reply for `n` counters.
pub fn parse_reply(reply: &[i64], n: usize) -> Result<Reply, String> {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    match reply {
        [now, 2] => return Ok(Reply::Expired { now_ms: u(*now) }),
        _ if reply.len() == 2 + 5 * n => {}
        _ => {
            return Err(format!(
                "script returned {} values for {n} counters",
                reply.len()
            ));
        }
    }
    Ok(Reply::Ran(BatchOutcome {
        now_ms: u(reply[0]),
        committed: reply[1] == 1,
        states: reply[2..]
            .chunks_exact(5)
            .map(|c| CounterState {
                before: u(c[0]),
                after: u(c[1]),
                over: c[2] == 1,
                reset_ms: u(c[3]),
                remaining: u(c[4]),
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_and_parsed() {
        let Reply::Ran(out) = parse_reply(&[1_000, 1, 4, 5, 0, 59_000, 5], 1).unwrap() else {
            panic!("a call that ran");
        };
        assert_eq!(out.now_ms, 1_000);
        assert!(out.committed);
        assert_eq!(
            out.states[0],
            CounterState {
                before: 4,
                after: 5,
                over: false,
                reset_ms: 59_000,
                remaining: 5,
            }
        );
        assert!(parse_reply(&[1, 1, 4], 1).is_err());
        assert_eq!(
            parse_reply(&[7, 2], 3).unwrap(),
            Reply::Expired { now_ms: 7 },
            "past its deadline: no counters"
        );
    }
}
