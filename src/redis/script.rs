//! The Lua scripts: `check_and_count.lua` (the one call per request) and `give_back.lua`
//! (the Redis Cluster undo), each run after `common.lua`; how a batch becomes their KEYS
//! and ARGV, and how a reply becomes a [`BatchOutcome`]. The field order here is the one
//! the scripts' `decode()` reads.

use std::sync::LazyLock;

use crate::config::Algorithm;
use crate::limiter::{BatchOutcome, CounterOp, CounterState};

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

/// Lua numbers are doubles: counts and hits stay exact below 2^53.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// Builds one check-and-count call for `ops`; each key is `prefix:` + the counter key.
pub fn invocation<'a>(
    prefix: &str,
    ops: &[&CounterOp],
    dry_run: bool,
) -> ::redis::ScriptInvocation<'a> {
    let mut inv = CHECK_AND_COUNT.prepare_invoke();
    inv.arg(if dry_run { "1" } else { "0" });
    for op in ops {
        inv.key(format!("{prefix}:{}", op.key));
        inv.arg(algorithm(op))
            .arg(window_ms(op))
            .arg(op.limit.min(MAX_EXACT))
            .arg(op.hits.min(MAX_EXACT))
            .arg(if op.negative { "1" } else { "0" })
            .arg(if op.enforce { "1" } else { "0" })
            .arg(op.capacity.min(MAX_EXACT));
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
            .arg(window_ms(op))
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

fn window_ms(op: &CounterOp) -> u64 {
    op.window_secs.max(1).saturating_mul(1000).min(MAX_EXACT)
}

/// Parses the check-and-count reply for `n` counters.
pub fn parse_reply(reply: &[i64], n: usize) -> Result<BatchOutcome, String> {
    if reply.len() != 2 + 5 * n {
        return Err(format!(
            "script returned {} values for {n} counters",
            reply.len()
        ));
    }
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(BatchOutcome {
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
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_and_parsed() {
        let out = parse_reply(&[1_000, 1, 4, 5, 0, 59_000, 5], 1).unwrap();
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
    }
}
