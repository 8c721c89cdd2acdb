//! The check-and-count script (`check_and_count.lua`): how a batch becomes KEYS/ARGV, and
//! how the reply becomes a [`BatchOutcome`].

use std::sync::LazyLock;

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
        inv.key(format!("{prefix}:{}", op.key));
        inv.arg(op.window_secs.max(1).saturating_mul(1000))
            .arg(op.limit.min(MAX_EXACT))
            .arg(op.hits.min(MAX_EXACT))
            .arg(if op.negative { "1" } else { "0" })
            .arg(if op.enforce { "1" } else { "0" });
    }
    inv
}

/// Parses the script's reply for `n` counters.
pub fn parse_reply(reply: &[i64], n: usize) -> Result<BatchOutcome, String> {
    if reply.len() != 2 + 4 * n {
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
            .chunks_exact(4)
            .map(|c| CounterState {
                before: u(c[0]),
                after: u(c[1]),
                over: c[2] == 1,
                reset_ms: u(c[3]),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_and_parsed() {
        let out = parse_reply(&[1_000, 1, 4, 5, 0, 59_000], 1).unwrap();
        assert_eq!(out.now_ms, 1_000);
        assert!(out.committed);
        assert_eq!(
            out.states[0],
            CounterState {
                before: 4,
                after: 5,
                over: false,
                reset_ms: 59_000
            }
        );
        assert!(parse_reply(&[1, 1, 4], 1).is_err());
    }
}
