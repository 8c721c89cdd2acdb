//! The Lua code and its two ways of running: on a single node, a library of Redis Functions
//! (`common.lua` + `check_and_count.lua`, loaded once with FUNCTION LOAD, called by FCALL:
//! the helpers are defined once per load, not once per call); on a Redis Cluster, scripts
//! (EVALSHA of the same text, plus `give_back.lua`, the undo). How requests become the code's
//! keys and args ([`Encoded`], one record per request: a call carries one or a coalesced
//! batch of them), and how a reply becomes one [`Reply`] per request. The field order here is
//! the one the code's `decode()` reads.

use std::fmt::Write as _;
use std::sync::LazyLock;

use crate::config::Algorithm;
use crate::limiter::{BatchOutcome, CounterOp, CounterState, MAX_EXACT};

/// The check-and-count code, as functions: common helpers and per-algorithm steps, then
/// `check_and_count(keys, args)`.
const CHECK_AND_COUNT_CODE: &str = concat!(
    include_str!("common.lua"),
    include_str!("check_and_count.lua")
);

/// The check-and-count script (Redis Cluster), loaded once; invoked by SHA (EVALSHA),
/// reloaded on NOSCRIPT by the client.
pub static CHECK_AND_COUNT: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(&format!(
        "{CHECK_AND_COUNT_CODE}\nreturn check_and_count(KEYS, ARGV)\n"
    ))
});

/// The give-back script (Redis Cluster: undoing a slot's count of a rejected request).
pub static GIVE_BACK: LazyLock<::redis::Script> = LazyLock::new(|| {
    ::redis::Script::new(concat!(
        include_str!("common.lua"),
        include_str!("give_back.lua")
    ))
});

/// The library of Redis Functions holding check-and-count (single node).
#[derive(Debug)]
pub struct Library {
    /// The function to FCALL.
    pub function: String,
    /// The text FUNCTION LOAD takes.
    pub code: String,
}

/// The library, named after a hash of its code: replicas running different versions during
/// a rolling upgrade each find their own library, never one with another argument layout.
pub static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let hash = ::redis::Script::new(CHECK_AND_COUNT_CODE)
        .get_hash()
        .to_owned();
    let name = format!("ironclad_rls_{}", &hash[..16]);
    let function = format!("{name}_check_and_count");
    Library {
        code: format!(
            "#!lua name={name}\n{CHECK_AND_COUNT_CODE}\n\
             redis.register_function('{function}', check_and_count)\n"
        ),
        function,
    }
});

/// What a check-and-count request is for (its record's mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check, and count unless the request is blocked.
    Count,
    /// Check only.
    DryRun,
    /// Readiness: a dry run that also proves the server accepts the code's writes.
    Probe,
}

impl Mode {
    /// A request's mode.
    pub fn of(dry_run: bool) -> Mode {
        if dry_run { Mode::DryRun } else { Mode::Count }
    }
}

/// Values packed end to end in one buffer: a request's keys or args, cheap to build in the
/// request's task and to copy into a batch's command.
#[derive(Debug, Default)]
pub struct Packed {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Packed {
    fn push_str(&mut self, s: &str) {
        self.bytes.extend_from_slice(s.as_bytes());
        self.ends.push(self.bytes.len());
    }

    fn push_u64(&mut self, v: u64) {
        // Writing to a Vec cannot fail.
        let _ = write!(Utf8(&mut self.bytes), "{v}");
        self.ends.push(self.bytes.len());
    }

    fn push_key(&mut self, prefix: &str, key: &str) {
        self.bytes.extend_from_slice(prefix.as_bytes());
        self.bytes.push(b':');
        self.bytes.extend_from_slice(key.as_bytes());
        self.ends.push(self.bytes.len());
    }

    /// The values, in order.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(a, &b)| &self.bytes[a..b])
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.ends.len()
    }
}

/// `fmt::Write` onto a byte buffer (numbers are ASCII).
struct Utf8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One request's record: its keys and args, and how many counters its reply holds.
#[derive(Debug)]
pub struct Encoded {
    /// The probe key (a probe), then each counter's key, `prefix:` + the counter key.
    pub keys: Packed,
    /// Mode, deadline, number of counters, then 8 fields per counter.
    pub args: Packed,
    /// Its counters.
    pub counters: usize,
}

/// Encodes one request for `ops`. `deadline_ms` (server clock) makes a request that the
/// call reaches later change nothing.
pub fn encode(prefix: &str, ops: &[&CounterOp], mode: Mode, deadline_ms: Option<u64>) -> Encoded {
    let mut keys = Packed::default();
    let mut args = Packed {
        bytes: Vec::with_capacity(24 + 48 * ops.len()),
        ends: Vec::with_capacity(3 + 8 * ops.len()),
    };
    args.push_str(match mode {
        Mode::Count => "0",
        Mode::DryRun => "1",
        Mode::Probe => "2",
    });
    args.push_u64(deadline_ms.unwrap_or(0));
    args.push_u64(ops.len() as u64);
    if mode == Mode::Probe {
        // A key that never exists (the probe's SET XX leaves it so).
        keys.push_key(prefix, "probe");
    }
    let flag = |b: bool| if b { "1" } else { "0" };
    for op in ops {
        keys.push_key(prefix, op.key.as_str());
        args.push_str(algorithm(op));
        args.push_u64(op.window_ms());
        args.push_u64(op.limit.min(MAX_EXACT));
        args.push_u64(op.hits.min(MAX_EXACT));
        args.push_str(flag(op.negative));
        args.push_str(flag(op.enforce));
        args.push_u64(op.bucket_capacity());
        args.push_str(flag(op.quota));
    }
    Encoded {
        keys,
        args,
        counters: ops.len(),
    }
}

/// The FCALL of the library's function for a batch of requests, in arrival order.
pub fn fcall<'a>(batch: impl Iterator<Item = &'a Encoded> + Clone) -> ::redis::Cmd {
    let mut cmd = ::redis::cmd("FCALL");
    cmd.arg(LIBRARY.function.as_str());
    cmd.arg(batch.clone().map(|e| e.keys.len()).sum::<usize>());
    for e in batch.clone() {
        for k in e.keys.iter() {
            cmd.arg(k);
        }
    }
    for e in batch {
        for a in e.args.iter() {
            cmd.arg(a);
        }
    }
    cmd
}

/// One check-and-count script call (Redis Cluster) for one request.
pub fn invocation<'a>(e: &Encoded) -> ::redis::ScriptInvocation<'a> {
    let mut inv = CHECK_AND_COUNT.prepare_invoke();
    for k in e.keys.iter() {
        inv.key(k);
    }
    for a in e.args.iter() {
        inv.arg(a);
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

/// What the call did for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The request ran.
    Ran(BatchOutcome),
    /// The call reached the request after its deadline: it changed nothing; the server's
    /// clock then.
    Expired {
        /// Server time, ms.
        now_ms: u64,
    },
}

/// Parses a check-and-count reply for requests of `counters` counters each, in order: the
/// server's clock, and one [`Reply`] per request.
pub fn parse_reply(
    reply: &[i64],
    counters: impl IntoIterator<Item = usize>,
) -> Result<(u64, Vec<Reply>), String> {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let short = || format!("the script's reply ({} values) is too short", reply.len());
    let (&now, mut rest) = reply.split_first().ok_or_else(short)?;
    let now_ms = u(now);
    let mut out = Vec::new();
    for n in counters {
        let (&status, tail) = rest.split_first().ok_or_else(short)?;
        if status == 2 {
            out.push(Reply::Expired { now_ms });
            rest = tail;
            continue;
        }
        if tail.len() < 5 * n {
            return Err(short());
        }
        let (mine, tail) = tail.split_at(5 * n);
        rest = tail;
        out.push(Reply::Ran(BatchOutcome {
            now_ms,
            committed: status == 1,
            states: mine
                .chunks_exact(5)
                .map(|c| CounterState {
                    before: u(c[0]),
                    after: u(c[1]),
                    over: c[2] == 1,
                    reset_ms: u(c[3]),
                    remaining: u(c[4]),
                })
                .collect(),
        }));
    }
    if !rest.is_empty() {
        return Err(format!(
            "the script's reply has {} values more than its requests",
            rest.len()
        ));
    }
    Ok((now_ms, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_checked_and_parsed_per_request() {
        let (now, replies) = parse_reply(
            &[1_000, 1, 4, 5, 0, 59_000, 5, 2, 0, 1, 1, 1, 6, 0],
            [1, 3, 1],
        )
        .unwrap();
        assert_eq!(now, 1_000);
        let Reply::Ran(out) = &replies[0] else {
            panic!("a request that ran");
        };
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
        assert_eq!(
            replies[1],
            Reply::Expired { now_ms: 1_000 },
            "past its deadline: no counters"
        );
        let Reply::Ran(out) = &replies[2] else {
            panic!("a request that ran");
        };
        assert!(!out.committed && out.states[0].over);
        assert!(parse_reply(&[1, 1, 4], [1]).is_err(), "too short");
        assert!(parse_reply(&[1, 2, 9], [1]).is_err(), "too long");
    }

    #[test]
    fn packed_values_come_back_in_order() {
        let mut p = Packed::default();
        p.push_str("f");
        p.push_u64(60_000);
        p.push_key("rls", "a:b");
        let v: Vec<&[u8]> = p.iter().collect();
        assert_eq!(v, [&b"f"[..], b"60000", b"rls:a:b"]);
        assert_eq!(p.len(), 3);
    }
}
