//! The Lua code and its two ways of running: on a single node, a library of Redis Functions
//! (`common.lua` + `check_and_count.lua`, loaded once with FUNCTION LOAD, called by FCALL:
//! the helpers are defined once per load, not once per call); on a Redis Cluster, scripts
//! (EVALSHA of the same text, plus `give_back.lua`, the undo). How requests become the code's
//! keys and args ([`Encoded`], one record per request; a call carries one or a coalesced
//! batch of them, each counter listed once, the layout `check_and_count.lua`'s header
//! documents and its `spec()` and `parse()` read), and how a reply becomes one [`Reply`] per
//! request ([`parse_reply`], then [`complete`]).

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
}

/// `fmt::Write` onto a byte buffer (numbers are ASCII).
struct Utf8<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One request's record: its mode and deadline, and each counter's key and spec. A call
/// lists each counter (key and spec) once, however many of its requests use it; a request
/// refers to its counters by position ([`fcall`], and the layout in `check_and_count.lua`).
#[derive(Debug)]
pub struct Encoded {
    mode: Mode,
    /// Server ms; 0 for none.
    deadline_ms: u64,
    /// A probe's key (`prefix:probe`, a key that never exists).
    probe: Option<String>,
    /// Each counter's key, `prefix:` + the counter key.
    keys: Packed,
    /// Each counter's spec, "<algorithm> <window> <limit> <hits> <capacity> <flags>".
    specs: Packed,
    /// Its counters.
    pub counters: usize,
}

impl Encoded {
    /// Whether each counter is a fixed window, in order (the reply's shape depends on it).
    fn fixed(&self) -> impl Iterator<Item = bool> + '_ {
        self.specs.iter().map(|s| s.first() == Some(&b'f'))
    }
}

/// A counter spec's flags: give back, enforce, quota mode (check_and_count.lua).
fn flags(op: &CounterOp) -> u8 {
    u8::from(op.negative) | u8::from(op.enforce) << 1 | u8::from(op.quota) << 2
}

/// Encodes one request for `ops`. `deadline_ms` (server clock) makes a request that the
/// call reaches later change nothing.
pub fn encode(prefix: &str, ops: &[&CounterOp], mode: Mode, deadline_ms: Option<u64>) -> Encoded {
    let mut keys = Packed {
        bytes: Vec::with_capacity(
            ops.iter()
                .map(|op| prefix.len() + 1 + op.key.as_str().len())
                .sum(),
        ),
        ends: Vec::with_capacity(ops.len()),
    };
    let mut specs = Packed {
        bytes: Vec::with_capacity(32 * ops.len()),
        ends: Vec::with_capacity(ops.len()),
    };
    for op in ops {
        keys.push_key(prefix, op.key.as_str());
        let capacity = match op.algorithm {
            Algorithm::TokenBucket => op.bucket_capacity(),
            // Ignored: the same spec for every counter of a rule, whatever its capacity.
            Algorithm::FixedWindow | Algorithm::SlidingWindow => 0,
        };
        // Writing to a Vec cannot fail.
        let _ = write!(
            Utf8(&mut specs.bytes),
            "{} {} {} {} {capacity} {}",
            algorithm(op),
            op.window_ms(),
            op.limit.min(MAX_EXACT),
            op.hits.min(MAX_EXACT),
            flags(op),
        );
        specs.ends.push(specs.bytes.len());
    }
    Encoded {
        mode,
        deadline_ms: deadline_ms.unwrap_or(0),
        probe: (mode == Mode::Probe).then(|| format!("{prefix}:probe")),
        keys,
        specs,
        counters: ops.len(),
    }
}

/// Up to this many counters listed, a call finds a counter's position by a scan (most calls:
/// their requests share a few counters), past it by a map.
const SCAN_COUNTERS: usize = 8;

/// A call's keys and args, in the layout `check_and_count.lua` reads: the counters of its
/// requests, each listed once (key and spec), then per request its shape (mode, then the
/// positions of its counters) and deadline.
struct Layout<'a> {
    /// (key, spec) per counter listed.
    counters: Vec<(&'a [u8], &'a [u8])>,
    probe: Option<&'a [u8]>,
    /// Per request: its shape, then its deadline.
    requests: Packed,
}

impl<'a> Layout<'a> {
    fn of(batch: impl Iterator<Item = &'a Encoded>) -> Layout<'a> {
        let mut counters: Vec<(&[u8], &[u8])> = Vec::new();
        let mut index: std::collections::HashMap<(&[u8], &[u8]), usize> = Default::default();
        let mut probe = None;
        let mut requests = Packed::default();
        for e in batch {
            if let Some(p) = &e.probe {
                probe = Some(p.as_bytes());
            }
            requests.bytes.push(match e.mode {
                Mode::Count => b'0',
                Mode::DryRun => b'1',
                Mode::Probe => b'2',
            });
            for c in e.keys.iter().zip(e.specs.iter()) {
                let found = if counters.len() <= SCAN_COUNTERS {
                    counters.iter().position(|&(k, s)| s == c.1 && k == c.0)
                } else {
                    if index.is_empty() {
                        index.extend(counters.iter().enumerate().map(|(i, &c)| (c, i)));
                    }
                    index.get(&c).copied()
                };
                let i = found.unwrap_or_else(|| {
                    counters.push(c);
                    if !index.is_empty() {
                        index.insert(c, counters.len() - 1);
                    }
                    counters.len() - 1
                });
                // Writing to a Vec cannot fail.
                let _ = write!(Utf8(&mut requests.bytes), ",{}", i + 1);
            }
            requests.ends.push(requests.bytes.len());
            requests.push_u64(e.deadline_ms);
        }
        Layout {
            counters,
            probe,
            requests,
        }
    }

    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.counters.iter().map(|c| c.0).chain(self.probe)
    }

    fn key_count(&self) -> usize {
        self.counters.len() + usize::from(self.probe.is_some())
    }

    fn args(&self, mut arg: impl FnMut(&[u8])) {
        arg(self.counters.len().to_string().as_bytes());
        for c in &self.counters {
            arg(c.1);
        }
        for r in self.requests.iter() {
            arg(r);
        }
    }
}

/// The FCALL of the library's function for a batch of requests, in arrival order.
pub fn fcall<'a>(batch: impl Iterator<Item = &'a Encoded>) -> ::redis::Cmd {
    let layout = Layout::of(batch);
    let mut cmd = ::redis::cmd("FCALL");
    cmd.arg(LIBRARY.function.as_str());
    cmd.arg(layout.key_count());
    for k in layout.keys() {
        cmd.arg(k);
    }
    layout.args(|a| {
        cmd.arg(a);
    });
    cmd
}

/// One check-and-count script call (Redis Cluster) for requests of one hash tag, in
/// arrival order.
pub fn invocation<'a, 'e>(
    batch: impl Iterator<Item = &'e Encoded>,
) -> ::redis::ScriptInvocation<'a> {
    let layout = Layout::of(batch);
    let mut inv = CHECK_AND_COUNT.prepare_invoke();
    for k in layout.keys() {
        inv.key(k);
    }
    layout.args(|a| {
        inv.arg(a);
    });
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
    /// The request ran. A committed request's fixed windows hold only `before` until
    /// [`complete`] derives the rest from the request's ops.
    Ran(BatchOutcome),
    /// The call reached the request after its deadline: it changed nothing; the server's
    /// clock then.
    Expired {
        /// Server time, ms.
        now_ms: u64,
    },
}

/// Parses a check-and-count reply for `requests`, in order: the server's clock, and one
/// [`Reply`] per request (to be [`complete`]d with its ops).
pub fn parse_reply<'a>(
    reply: &[i64],
    requests: impl IntoIterator<Item = &'a Encoded>,
) -> Result<(u64, Vec<Reply>), String> {
    let u = |v: i64| u64::try_from(v).unwrap_or(0);
    let short = || format!("the script's reply ({} values) is too short", reply.len());
    let (&now, mut rest) = reply.split_first().ok_or_else(short)?;
    let now_ms = u(now);
    let mut out = Vec::new();
    for e in requests {
        let (&status, tail) = rest.split_first().ok_or_else(short)?;
        rest = tail;
        if status == 2 {
            out.push(Reply::Expired { now_ms });
            continue;
        }
        let committed = status == 1;
        let mut states = Vec::with_capacity(e.counters);
        for fixed in e.fixed() {
            if committed && fixed {
                // Its `before` only (check_and_count.lua: the rest follows from it).
                let (&before, tail) = rest.split_first().ok_or_else(short)?;
                rest = tail;
                states.push(CounterState {
                    before: u(before),
                    ..CounterState::default()
                });
            } else {
                let (c, tail) = rest.split_first_chunk::<5>().ok_or_else(short)?;
                rest = tail;
                states.push(CounterState {
                    before: u(c[0]),
                    after: u(c[1]),
                    over: c[2] == 1,
                    reset_ms: u(c[3]),
                    remaining: u(c[4]),
                });
            }
        }
        out.push(Reply::Ran(BatchOutcome {
            now_ms,
            committed,
            states,
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

/// Fills in what a committed request's fixed windows were not sent with: from `before`, the
/// op and the server's clock, by the rules of `fixed.decide` in check_and_count.lua (those
/// of the memory store: src/limiter/memory.rs), in exact integers where Lua's doubles are
/// exact too (every quantity below 2^53). `ops` are the request's, in the order encoded.
pub fn complete(out: &mut BatchOutcome, ops: &[&CounterOp]) -> Result<(), String> {
    if out.states.len() != ops.len() {
        return Err(format!(
            "the script's reply holds {} counters for a request of {}",
            out.states.len(),
            ops.len()
        ));
    }
    if !out.committed {
        return Ok(());
    }
    for (s, op) in out.states.iter_mut().zip(ops) {
        if op.algorithm != Algorithm::FixedWindow {
            continue;
        }
        let (limit, hits, win) = (
            op.limit.min(MAX_EXACT),
            op.hits.min(MAX_EXACT),
            op.window_ms(),
        );
        if op.negative {
            s.after = s.before.saturating_sub(hits);
            s.over = false;
        } else {
            // A shadow-mode count goes past its limit, up to 2^53 − 1 (as in Lua).
            s.after = s.before.saturating_add(hits).min(MAX_EXACT);
            s.over = limit == 0 || s.before.saturating_add(hits) > limit;
        }
        s.reset_ms = win - out.now_ms % win;
        s.remaining = limit.saturating_sub(s.after);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::{CounterKey, CounterScope};

    fn op(key: &str, algorithm: Algorithm, limit: u64, hits: u64) -> CounterOp {
        CounterOp {
            key: CounterKey::new("d", key, &CounterScope::Overall),
            window_secs: 60,
            algorithm,
            limit,
            capacity: 7,
            hits,
            negative: false,
            enforce: true,
            quota: false,
        }
    }

    /// A command's arguments, as text.
    fn args(cmd: &::redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                ::redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<not a value>".into(),
            })
            .collect()
    }

    #[test]
    fn a_call_lists_each_counter_once_and_requests_refer_to_them() {
        let a = op("a", Algorithm::FixedWindow, 10, 1);
        let b = op("b", Algorithm::TokenBucket, 5, 2);
        let shadow = CounterOp {
            enforce: false,
            quota: true,
            negative: true,
            ..a.clone()
        };
        let first = encode("rls", &[&a, &b], Mode::Count, Some(1_000));
        // The same counters again, in another order, and `a` with other flags: a counter of
        // its own (same key, other spec).
        let second = encode("rls", &[&b, &a, &shadow], Mode::DryRun, None);
        let probe = encode("rls", &[], Mode::Probe, Some(1_001));
        let cmd = fcall([&first, &second, &probe].into_iter());
        let a_key = format!("rls:{}", a.key);
        let b_key = format!("rls:{}", b.key);
        assert_eq!(
            args(&cmd)[2..],
            [
                "4",
                &a_key,
                &b_key,
                &a_key,
                "rls:probe",
                "3",
                "f 60000 10 1 0 2",
                "b 60000 5 2 7 2",
                "f 60000 10 1 0 5",
                "0,1,2",
                "1000",
                "1,2,1,3",
                "0",
                "2",
                "1001",
            ]
        );
        // One request alone (a Redis Cluster script call) lists its own counters, once.
        let twice = encode("rls", &[&a, &a], Mode::Count, None);
        let layout = Layout::of(std::iter::once(&twice));
        assert_eq!(layout.counters.len(), 1);
        assert_eq!(layout.requests.iter().next(), Some(&b"0,1,1"[..]));
    }

    #[test]
    fn many_counters_are_found_by_the_map_as_by_the_scan() {
        let ops: Vec<CounterOp> = (0..40)
            .map(|i| op(&format!("k{}", i % 20), Algorithm::FixedWindow, 10, 1))
            .collect();
        let refs: Vec<&CounterOp> = ops.iter().collect();
        let e = encode("rls", &refs, Mode::Count, None);
        let layout = Layout::of(std::iter::once(&e));
        assert_eq!(layout.counters.len(), 20);
        let shape = String::from_utf8(layout.requests.iter().next().unwrap().to_vec()).unwrap();
        let expected: String = std::iter::once("0".to_string())
            .chain((0..40).map(|i| format!(",{}", i % 20 + 1)))
            .collect();
        assert_eq!(shape, expected);
    }

    #[test]
    fn replies_are_checked_and_parsed_per_request() {
        let f = op("a", Algorithm::FixedWindow, 10, 1);
        let s = op("b", Algorithm::SlidingWindow, 10, 1);
        let one = encode("rls", &[&f], Mode::Count, None);
        let three = encode("rls", &[&f, &s, &f], Mode::Count, None);
        // Committed: a fixed window sends `before` only, the others five values; not
        // committed: five values each; past its deadline: none.
        #[rustfmt::skip]
        let reply = [
            1_000,
            1, 4,
            1, 5, 2, 3, 0, 59_000, 7, 6,
            0, 9, 9, 1, 59_000, 1, 2, 2, 0, 59_000, 8, 9, 9, 1, 59_000, 6,
            2,
        ];
        let (now, replies) = parse_reply(&reply, [&one, &three, &three, &one]).unwrap();
        assert_eq!(now, 1_000);
        let Reply::Ran(mut out) = replies[0].clone() else {
            panic!("a request that ran");
        };
        complete(&mut out, &[&f]).unwrap();
        assert!(out.committed);
        assert_eq!(
            out.states[0],
            CounterState {
                before: 4,
                after: 5,
                over: false,
                reset_ms: 59_000,
                remaining: 5,
            },
            "derived as fixed.decide does"
        );
        let Reply::Ran(mut out) = replies[1].clone() else {
            panic!("a request that ran");
        };
        complete(&mut out, &[&f, &s, &f]).unwrap();
        assert_eq!(
            out.states[1],
            CounterState {
                before: 2,
                after: 3,
                over: false,
                reset_ms: 59_000,
                remaining: 7,
            },
            "a sliding window as sent"
        );
        assert_eq!((out.states[2].before, out.states[2].after), (6, 7));
        let Reply::Ran(out) = &replies[2] else {
            panic!("a request that ran");
        };
        assert!(!out.committed && out.states[0].over && out.states[2].remaining == 6);
        assert_eq!(replies[3], Reply::Expired { now_ms: 1_000 }, "no counters");
        assert!(parse_reply(&[1, 1], [&one]).is_err(), "too short");
        assert!(
            parse_reply(&[1, 0, 1, 2, 3, 4], [&one]).is_err(),
            "too short"
        );
        assert!(parse_reply(&[1, 1, 4, 9], [&one]).is_err(), "too long");
        let Reply::Ran(mut out) = replies[0].clone() else {
            panic!("a request that ran");
        };
        assert!(complete(&mut out, &[&f, &f]).is_err(), "not its ops");
    }

    #[test]
    fn derived_fixed_windows_follow_the_limits_and_the_bounds() {
        let derive = |op: &CounterOp, before: u64| {
            let mut out = BatchOutcome {
                now_ms: 1_700_000_052_345,
                committed: true,
                states: vec![CounterState {
                    before,
                    ..CounterState::default()
                }],
            };
            complete(&mut out, &[op]).unwrap();
            out.states[0]
        };
        let over = derive(&op("a", Algorithm::FixedWindow, 10, 3), 9);
        assert_eq!(
            over,
            CounterState {
                before: 9,
                after: 12,
                over: true,
                reset_ms: 60_000 - 12_345,
                remaining: 0,
            },
            "a shadow count committed past its limit"
        );
        let zero = derive(&op("a", Algorithm::FixedWindow, 0, 0), 0);
        assert!(zero.over, "limit 0 is always over");
        let back = CounterOp {
            negative: true,
            ..op("a", Algorithm::FixedWindow, 10, 5)
        };
        let given = derive(&back, 3);
        assert_eq!((given.after, given.over, given.remaining), (0, false, 10));
        let huge = derive(
            &op("a", Algorithm::FixedWindow, u64::MAX, u64::MAX),
            MAX_EXACT - 1,
        );
        assert_eq!(
            (huge.after, huge.over, huge.remaining),
            (MAX_EXACT, true, 0)
        );
    }

    #[test]
    fn packed_values_come_back_in_order() {
        let mut p = Packed::default();
        p.push_u64(60_000);
        p.push_key("rls", "a:b");
        let v: Vec<&[u8]> = p.iter().collect();
        assert_eq!(v, [&b"60000"[..], b"rls:a:b"]);
    }
}
