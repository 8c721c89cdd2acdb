//! The check-and-count script (`check_and_count.lua`): how a batch becomes KEYS/ARGV, and
//! how the reply becomes a [`BatchOutcome`].

use std::sync::LazyLock;

use crate::config::Algorithm;
use crate::limiter::{BatchOutcome, CounterOp, CounterState};

/// The script, loaded once; invoked by SHA (EVALSHA), reloaded on NOSCRIPT by the client.
pub static CHECK_AND_COUNT: LazyLock<::redis::Script> =
    LazyLock::new(|| ::redis::Script::new(include_str!("check_and_count.lua")));

/// Lua numbers are doubles: counts and hits stay exact below 2^53.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// Builds one invocation for `ops`; each key is `prefix:` + the counter key.
pub fn invocation<'a>(
    prefix: &str,
    ops: &[&CounterOp],
    dry_run: bool,
) -> ::redis::ScriptInvocation<'a> {
    let mut inv = CHECK_AND_COUNT.prepare_invoke();
    inv.arg(if dry_run { "1" } else { "0" });
    for op in ops {
        push(
            &mut inv,
            prefix,
            op,
            if op.negative { "1" } else { "0" },
            op.enforce,
            0,
        );
    }
    inv
}

/// Builds the invocation that undoes what `ops` did in a call that answered at `taken_ms`
/// (server time): hits taken are given back exactly (mode "2"), hits given back are taken
/// again, without enforcing a limit.
pub fn give_back_invocation<'a>(
    prefix: &str,
    ops: &[&CounterOp],
    taken_ms: u64,
) -> ::redis::ScriptInvocation<'a> {
    let mut inv = CHECK_AND_COUNT.prepare_invoke();
    inv.arg("0");
    for op in ops {
        let mode = if op.negative { "0" } else { "2" };
        push(&mut inv, prefix, op, mode, false, taken_ms);
    }
    inv
}

fn push(
    inv: &mut ::redis::ScriptInvocation<'_>,
    prefix: &str,
    op: &CounterOp,
    mode: &str,
    enforce: bool,
    taken_ms: u64,
) {
    let algorithm = match op.algorithm {
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindow => "s",
        Algorithm::TokenBucket => "b",
    };
    inv.key(format!("{prefix}:{}", op.key));
    inv.arg(algorithm)
        .arg(op.window_secs.max(1).saturating_mul(1000).min(MAX_EXACT))
        .arg(op.limit.min(MAX_EXACT))
        .arg(op.hits.min(MAX_EXACT))
        .arg(mode)
        .arg(if enforce { "1" } else { "0" })
        .arg(op.capacity.min(MAX_EXACT))
        .arg(taken_ms);
}

/// Parses the script's reply for `n` counters.
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
