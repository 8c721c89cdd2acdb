//! The store conformance suite: the behaviour every [`CounterStore`] must show, run against
//! the memory store here and against every other store in its own tests.
//!
//! Each check uses keys under `namespace`, so suites can share one backend. Checks that assert
//! a limit rely on windows of a day or more, so they hold with a real clock; the checks that
//! watch a window slide or a bucket refill poll with a deadline and assert nothing about time.

use std::sync::Arc;

use super::store::{CounterOp, CounterStore, MAX_EXACT};
use crate::config::Algorithm;
use crate::descriptor::{CounterKey, CounterScope};

fn op(namespace: &str, name: &str, limit: u64, hits: u64) -> CounterOp {
    CounterOp {
        key: CounterKey::new(namespace, name, &CounterScope::Overall),
        window_secs: 86_400,
        algorithm: Algorithm::FixedWindow,
        limit,
        capacity: limit,
        hits,
        negative: false,
        enforce: true,
        quota: false,
    }
}

/// Runs every check; panics with a description on the first failure.
pub async fn run_all(store: Arc<dyn CounterStore>, namespace: &str) {
    admits_exactly_the_limit(&*store, namespace).await;
    rejected_requests_consume_nothing(&*store, namespace).await;
    check_only_and_zero_limits(&*store, namespace).await;
    negative_hits_give_quota_back(&*store, namespace).await;
    shadow_counters_never_block(&*store, namespace).await;
    ops_sharing_a_key_add_up(&*store, namespace).await;
    concurrent_callers_get_exactly_the_limit(store.clone(), namespace).await;
    quota_ops_count_always_and_block_only_together(&*store, namespace).await;
    concurrent_requests_are_decided_each_on_its_own(store.clone(), namespace).await;
    for algorithm in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
        strict_algorithm_admits_exactly_the_limit(&*store, namespace, algorithm).await;
        strict_algorithm_checks_and_gives_back(&*store, namespace, algorithm).await;
        strict_algorithm_frees_room_over_time(&*store, namespace, algorithm).await;
        concurrent_callers_get_exactly_the_limit_with(store.clone(), namespace, algorithm).await;
    }
    bucket_burst_and_capacity(&*store, namespace).await;
    mixed_algorithms_are_one_atomic_step(&*store, namespace).await;
    algorithms_never_share_state(&*store, namespace).await;
}

/// An op counting with `algorithm` over `window_secs`.
fn algo_op(
    namespace: &str,
    name: &str,
    algorithm: Algorithm,
    window_secs: u64,
    limit: u64,
    hits: u64,
) -> CounterOp {
    CounterOp {
        window_secs,
        algorithm,
        ..op(namespace, name, limit, hits)
    }
}

/// A year: a bucket of a few hundred tokens refills less than one token during a test run.
const YEAR: u64 = 365 * 86_400;

async fn strict_algorithm_admits_exactly_the_limit(
    store: &dyn CounterStore,
    ns: &str,
    a: Algorithm,
) {
    let name = format!("exact-{a}");
    for i in 1..=3u64 {
        let out = apply(store, &[algo_op(ns, &name, a, YEAR, 3, 1)], false).await;
        assert!(out.committed, "{a}: request {i} of 3 must be admitted");
        let s = out.states[0];
        assert_eq!((s.before, s.after, s.remaining), (i - 1, i, 3 - i), "{a}");
        assert!(
            s.reset_ms > 0 && s.reset_ms <= YEAR * 1000,
            "{a}: reset {}",
            s.reset_ms
        );
    }
    let out = apply(store, &[algo_op(ns, &name, a, YEAR, 3, 1)], false).await;
    let s = out.states[0];
    assert!(
        !out.committed && s.over,
        "{a}: the 4th request is over limit"
    );
    assert_eq!((s.before, s.after, s.remaining), (3, 3, 0), "{a}");
    // Sliding: the oldest hit leaves a year after it came. Bucket: one token takes a year/3.
    let expected = match a {
        Algorithm::TokenBucket => YEAR * 1000 / 3,
        _ => YEAR * 1000,
    };
    assert!(
        s.reset_ms <= expected && s.reset_ms > expected - 600_000,
        "{a}: reset {} for about {expected}",
        s.reset_ms
    );
    // A request larger than what is left is over limit as a whole, and takes nothing.
    let big = format!("big-{a}");
    let out = apply(store, &[algo_op(ns, &big, a, YEAR, 10, 11)], false).await;
    assert!(!out.committed && out.states[0].over, "{a}");
    let out = apply(store, &[algo_op(ns, &big, a, YEAR, 10, 10)], false).await;
    assert!(out.committed, "{a}: exactly the limit at once fits");
    assert_eq!(out.states[0].remaining, 0, "{a}");
}

async fn strict_algorithm_checks_and_gives_back(store: &dyn CounterStore, ns: &str, a: Algorithm) {
    let name = format!("give-{a}");
    apply(store, &[algo_op(ns, &name, a, YEAR, 5, 5)], false).await;
    let out = apply(store, &[algo_op(ns, &name, a, YEAR, 5, 0)], false).await;
    assert!(
        out.committed && !out.states[0].over,
        "{a}: a check at exactly the limit is OK"
    );
    assert_eq!(out.states[0].remaining, 0, "{a}");
    let mut back = algo_op(ns, &name, a, YEAR, 5, 2);
    back.negative = true;
    let out = apply(store, &[back.clone()], false).await;
    assert!(out.committed, "{a}");
    assert_eq!((out.states[0].before, out.states[0].after), (5, 3), "{a}");
    assert_eq!(out.states[0].remaining, 2, "{a}");
    back.hits = 10;
    let out = apply(store, &[back], false).await;
    assert_eq!(
        (
            out.states[0].after,
            out.states[0].remaining,
            out.states[0].reset_ms
        ),
        (0, 5, 0),
        "{a}: never below empty / above capacity; nothing left to wait for"
    );
    let out = apply(store, &[algo_op(ns, &name, a, YEAR, 5, 5)], false).await;
    assert!(out.committed, "{a}: what was given back can be taken again");
    let out = apply(
        store,
        &[algo_op(ns, &format!("zero-{a}"), a, YEAR, 0, 0)],
        false,
    )
    .await;
    assert!(
        out.states[0].over && !out.committed,
        "{a}: a limit of 0 rejects even a check"
    );
    let out = apply(
        store,
        &[algo_op(ns, &format!("dry-{a}"), a, YEAR, 5, 1)],
        true,
    )
    .await;
    assert!(!out.committed, "{a}");
    let out = apply(
        store,
        &[algo_op(ns, &format!("dry-{a}"), a, YEAR, 5, 0)],
        false,
    )
    .await;
    assert_eq!(out.states[0].remaining, 5, "{a}: a dry run takes nothing");
}

/// A one-second window: the hits leave (the tokens come back) and the counter admits
/// again. Polls with a deadline; asserts nothing about how soon.
async fn strict_algorithm_frees_room_over_time(store: &dyn CounterStore, ns: &str, a: Algorithm) {
    let name = format!("slide-{a}");
    let out = apply(store, &[algo_op(ns, &name, a, 1, 2, 2)], false).await;
    assert!(out.committed, "{a}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = apply(store, &[algo_op(ns, &name, a, 1, 2, 1)], false).await;
        if out.committed {
            break;
        }
        assert!(
            out.states[0].reset_ms <= 1_000,
            "{a}: reset {} beyond the window",
            out.states[0].reset_ms
        );
        assert!(
            std::time::Instant::now() < deadline,
            "{a}: never admitted again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(
            out.states[0].reset_ms.clamp(1, 100),
        ))
        .await;
    }
}

async fn bucket_burst_and_capacity(store: &dyn CounterStore, ns: &str) {
    let b = Algorithm::TokenBucket;
    // burst 4 over a limit of 2 per year: 4 at once, then nothing.
    let bucket = |hits| CounterOp {
        capacity: 4,
        ..algo_op(ns, "burst", b, YEAR, 2, hits)
    };
    let out = apply(store, &[bucket(4)], false).await;
    assert!(out.committed, "the burst is the capacity");
    assert_eq!(out.states[0].remaining, 0);
    let out = apply(store, &[bucket(1)], false).await;
    assert!(!out.committed);
    // The next token comes after window / limit: half a year.
    assert!(out.states[0].reset_ms <= YEAR * 500 && out.states[0].reset_ms > YEAR * 500 - 600_000);
    let mut back = bucket(100);
    back.negative = true;
    let out = apply(store, &[back], false).await;
    assert_eq!(
        out.states[0].remaining, 4,
        "tokens come back up to the capacity"
    );
    let out = apply(store, &[bucket(5)], false).await;
    assert!(!out.committed, "more than the capacity never fits");
}

async fn mixed_algorithms_are_one_atomic_step(store: &dyn CounterStore, ns: &str) {
    let (f, s, b) = (
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    );
    apply(store, &[algo_op(ns, "mix-full", s, YEAR, 1, 1)], false).await;
    let ops = [
        algo_op(ns, "mix-f", f, 86_400, 10, 1),
        algo_op(ns, "mix-b", b, YEAR, 10, 1),
        algo_op(ns, "mix-full", s, YEAR, 1, 1),
    ];
    let out = apply(store, &ops, false).await;
    assert!(!out.committed && out.states[2].over);
    assert!(!out.states[0].over && !out.states[1].over);
    assert_eq!(
        (out.states[0].after, out.states[0].remaining),
        (0, 10),
        "the fixed window was not counted"
    );
    assert_eq!(
        (out.states[1].after, out.states[1].remaining),
        (0, 10),
        "the bucket was not taken from"
    );
    let check: Vec<CounterOp> = ops
        .iter()
        .map(|o| CounterOp {
            hits: 0,
            ..o.clone()
        })
        .collect();
    let out = apply(store, &check, false).await;
    assert_eq!(
        out.states.iter().map(|s| s.remaining).collect::<Vec<_>>(),
        vec![10, 10, 0]
    );
    // The full log rejects a fitting bucket in the same request; then a fitting log admits.
    apply(store, &[algo_op(ns, "mix-b2", b, YEAR, 1, 1)], false).await;
    let out = apply(
        store,
        &[
            algo_op(ns, "mix-s2", s, YEAR, 5, 1),
            algo_op(ns, "mix-b2", b, YEAR, 1, 1),
        ],
        false,
    )
    .await;
    assert!(!out.committed && out.states[1].over);
    assert_eq!(out.states[0].remaining, 5, "the log was not written");
}

async fn algorithms_never_share_state(store: &dyn CounterStore, ns: &str) {
    // One counter key, three algorithms and two window lengths: five separate states.
    for (a, w) in [
        (Algorithm::FixedWindow, YEAR),
        (Algorithm::SlidingWindow, YEAR),
        (Algorithm::TokenBucket, YEAR),
        (Algorithm::SlidingWindow, 86_400),
        (Algorithm::TokenBucket, 86_400),
    ] {
        let out = apply(store, &[algo_op(ns, "same-key", a, w, 1, 1)], false).await;
        assert!(out.committed, "{a} over {w} s starts from its own state");
    }
}

async fn concurrent_callers_get_exactly_the_limit_with(
    store: Arc<dyn CounterStore>,
    ns: &str,
    a: Algorithm,
) {
    // A bucket's second counter shares the first's hash tag: in a Redis Cluster, tokens
    // given back on another slot while other callers use the bucket are given back
    // conservatively (the README's Redis Cluster section); a sliding log's give-back is
    // exact, so it is raced across slots.
    let race = format!("race-{a}");
    let other = match a {
        Algorithm::TokenBucket => race.clone(),
        _ => format!("race-other-{a}"),
    };
    let other_key = |ns: &str, limit| CounterOp {
        key: CounterKey::new(ns, &other, &CounterScope::Anonymous { prefix: "/other" }),
        ..algo_op(ns, &other, a, YEAR, limit, 1)
    };
    let ops = [algo_op(ns, &race, a, YEAR, 250, 1), other_key(ns, 1_000)];
    let total = race_callers(&store, &ops).await;
    assert_eq!(total, 250, "{a}: exactly the limit must be admitted");
    let check = CounterOp {
        hits: 0,
        ..other_key(ns, 1_000)
    };
    let out = apply(&*store, &[check], false).await;
    assert_eq!(
        out.states[0].remaining, 750,
        "{a}: rejected requests consumed nothing"
    );
}

/// 32 concurrent callers each apply `ops` 20 times (640 tries); returns how many committed.
async fn race_callers(store: &Arc<dyn CounterStore>, ops: &[CounterOp]) -> u64 {
    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let store = store.clone();
            let ops = ops.to_vec();
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for _ in 0..20 {
                    if apply(&*store, &ops, false).await.committed {
                        admitted += 1;
                    }
                }
                admitted
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task panicked");
    }
    total
}

async fn apply(
    store: &dyn CounterStore,
    ops: &[CounterOp],
    dry_run: bool,
) -> super::store::BatchOutcome {
    store.apply(ops, dry_run).await.expect("store call failed")
}

async fn admits_exactly_the_limit(store: &dyn CounterStore, ns: &str) {
    for i in 1..=3 {
        let out = apply(store, &[op(ns, "exact", 3, 1)], false).await;
        assert!(out.committed, "request {i} of 3 must be admitted");
        assert_eq!(out.states[0].after, i);
        assert!(out.states[0].reset_ms > 0 && out.states[0].reset_ms <= 86_400_000);
    }
    let out = apply(store, &[op(ns, "exact", 3, 1)], false).await;
    assert!(
        !out.committed && out.states[0].over,
        "the 4th request must be over limit"
    );
    assert_eq!((out.states[0].before, out.states[0].after), (3, 3));
    // A request larger than what is left is over limit as a whole.
    let out = apply(store, &[op(ns, "big", 10, 11)], false).await;
    assert!(!out.committed);
    let out = apply(store, &[op(ns, "big", 10, 10)], false).await;
    assert!(out.committed);
}

async fn rejected_requests_consume_nothing(store: &dyn CounterStore, ns: &str) {
    apply(store, &[op(ns, "full", 1, 1)], false).await;
    let out = apply(
        store,
        &[op(ns, "roomy", 100, 1), op(ns, "full", 1, 1)],
        false,
    )
    .await;
    assert!(!out.committed);
    assert!(!out.states[0].over && out.states[1].over);
    assert_eq!(
        out.states[0].after, 0,
        "the roomy counter must not be counted"
    );
    let out = apply(store, &[op(ns, "roomy", 100, 0)], false).await;
    assert_eq!(out.states[0].before, 0);
    // A dry run counts nothing either.
    let out = apply(store, &[op(ns, "dry", 100, 5)], true).await;
    assert!(!out.committed);
    assert_eq!(
        apply(store, &[op(ns, "dry", 100, 0)], false).await.states[0].before,
        0
    );
}

async fn check_only_and_zero_limits(store: &dyn CounterStore, ns: &str) {
    apply(store, &[op(ns, "at", 2, 2)], false).await;
    let out = apply(store, &[op(ns, "at", 2, 0)], false).await;
    assert!(
        out.committed && !out.states[0].over,
        "a check at exactly the limit is OK"
    );
    assert_eq!(out.states[0].after, 2);
    let out = apply(store, &[op(ns, "zero", 0, 0)], false).await;
    assert!(
        out.states[0].over && !out.committed,
        "a limit of 0 rejects even a check"
    );
}

async fn negative_hits_give_quota_back(store: &dyn CounterStore, ns: &str) {
    apply(store, &[op(ns, "neg", 10, 4)], false).await;
    let mut give_back = op(ns, "neg", 10, 3);
    give_back.negative = true;
    let out = apply(store, &[give_back.clone()], false).await;
    assert!(out.committed);
    assert_eq!((out.states[0].before, out.states[0].after), (4, 1));
    let out = apply(store, &[give_back], false).await;
    assert_eq!(out.states[0].after, 0, "never below zero");
}

async fn shadow_counters_never_block(store: &dyn CounterStore, ns: &str) {
    let mut shadow = op(ns, "shadow", 1, 1);
    shadow.enforce = false;
    apply(store, &[shadow.clone()], false).await;
    let out = apply(store, &[shadow.clone(), op(ns, "enforced", 10, 1)], false).await;
    assert!(out.committed && out.states[0].over);
    assert_eq!(
        out.states[0].after, 2,
        "shadow counters count past their limit"
    );
    assert_eq!(out.states[1].after, 1);
    // A shadow sliding log stays over its limit but holds at most one entry past it; a
    // shadow bucket's tokens stay at 0.
    for a in [Algorithm::SlidingWindow, Algorithm::TokenBucket] {
        let name = format!("shadow-{a}");
        let shadow = CounterOp {
            enforce: false,
            quota: false,
            ..algo_op(ns, &name, a, YEAR, 2, 1_000)
        };
        let out = apply(store, std::slice::from_ref(&shadow), false).await;
        assert!(out.committed && out.states[0].over, "{a}");
        assert_eq!(out.states[0].remaining, 0, "{a}");
        let check = CounterOp {
            hits: 0,
            enforce: true,
            quota: false,
            ..shadow
        };
        let out = apply(store, &[check], false).await;
        assert_eq!(out.states[0].remaining, 0, "{a}");
        if a == Algorithm::SlidingWindow {
            assert_eq!(out.states[0].before, 3, "{a}: limit + 1 entries");
        }
    }
}

async fn ops_sharing_a_key_add_up(store: &dyn CounterStore, ns: &str) {
    let out = apply(
        store,
        &[op(ns, "twice", 3, 2), op(ns, "twice", 3, 2)],
        false,
    )
    .await;
    assert!(!out.committed, "2 + 2 > 3 even within one batch");
    assert!(out.states[1].over);
    let out = apply(
        store,
        &[op(ns, "twice", 4, 2), op(ns, "twice", 4, 2)],
        false,
    )
    .await;
    assert!(out.committed);
    assert_eq!(out.states[1].after, 4);
}

async fn concurrent_callers_get_exactly_the_limit(store: Arc<dyn CounterStore>, ns: &str) {
    let ops = [op(ns, "race", 250, 1), op(ns, "race-b", 1_000, 1)];
    let total = race_callers(&store, &ops).await;
    assert_eq!(total, 250, "exactly the limit must be admitted");
    let out = apply(&*store, &[op(ns, "race-b", 1_000, 0)], false).await;
    assert_eq!(
        out.states[0].before, 250,
        "rejected requests consumed nothing"
    );
}

/// A quota-mode op (docs/envoy-compat.md "Quota mode").
fn quota_op(ns: &str, name: &str, limit: u64, hits: u64) -> CounterOp {
    CounterOp {
        quota: true,
        ..op(ns, name, limit, hits)
    }
}

/// The count a fixed-window counter holds now (a check-only read).
async fn count(store: &dyn CounterStore, ns: &str, name: &str) -> u64 {
    apply(store, &[op(ns, name, u64::MAX >> 12, 0)], false)
        .await
        .states[0]
        .before
}

async fn quota_ops_count_always_and_block_only_together(store: &dyn CounterStore, ns: &str) {
    // A quota op within its limit and a normal one: both counted.
    let out = apply(
        store,
        &[quota_op(ns, "q1", 2, 2), op(ns, "r1", 10, 1)],
        false,
    )
    .await;
    assert!(out.committed && !out.states[0].over);
    // The only quota op goes over: the request is blocked, the normal op is not counted, the
    // quota op is counted past its limit.
    let out = apply(
        store,
        &[quota_op(ns, "q1", 2, 5), op(ns, "r1", 10, 1)],
        false,
    )
    .await;
    assert!(!out.committed, "every quota op over blocks the request");
    assert!(out.states[0].over);
    assert_eq!((out.states[0].before, out.states[0].after), (2, 7));
    assert_eq!(out.states[1].after, out.states[1].before);
    assert_eq!(
        count(store, ns, "q1").await,
        7,
        "a quota op counts even when over"
    );
    assert_eq!(
        count(store, ns, "r1").await,
        1,
        "a blocked request's other ops count nothing"
    );
    // One quota op over, another not: not blocked, everything counted.
    let out = apply(
        store,
        &[
            quota_op(ns, "q1", 2, 1),
            quota_op(ns, "q2", 10, 1),
            op(ns, "r1", 10, 1),
        ],
        false,
    )
    .await;
    assert!(out.committed, "a quota op over does not block by itself");
    assert!(out.states[0].over && !out.states[1].over);
    assert_eq!(count(store, ns, "q1").await, 8);
    assert_eq!(count(store, ns, "r1").await, 2);
    // A normal op over blocks; the quota op still counts.
    let out = apply(
        store,
        &[quota_op(ns, "q2", 10, 3), op(ns, "r0", 0, 1)],
        false,
    )
    .await;
    assert!(!out.committed);
    assert_eq!(count(store, ns, "q2").await, 4);
    // A shadow-mode quota op never blocks, and counts.
    let shadow = CounterOp {
        enforce: false,
        ..quota_op(ns, "q1", 2, 1)
    };
    let out = apply(store, &[shadow, op(ns, "r1", 10, 1)], false).await;
    assert!(
        out.committed,
        "a shadow quota op is not among those that block together"
    );
    assert_eq!(count(store, ns, "q1").await, 9);
    // A shadow quota op passed, as in the reference: with it, an enforcing quota op over its
    // limit is not "every quota op over", so the request goes through and counts.
    let shadow = CounterOp {
        enforce: false,
        ..quota_op(ns, "q1", 2, 1)
    };
    let out = apply(
        store,
        &[shadow, quota_op(ns, "q1b", 1, 2), op(ns, "r1", 10, 1)],
        false,
    )
    .await;
    assert!(out.committed, "a shadow quota op counts as one that passed");
    assert!(out.states[1].over);
    assert_eq!(count(store, ns, "r1").await, 4);
    assert_eq!(count(store, ns, "q1").await, 10);
    // A dry run counts nothing, quota ops included.
    let out = apply(
        store,
        &[quota_op(ns, "q2", 10, 1), op(ns, "r1", 10, 1)],
        true,
    )
    .await;
    assert!(!out.committed);
    assert_eq!(count(store, ns, "q2").await, 4);
    assert_eq!(count(store, ns, "r1").await, 4);
    // Capped where doubles stay exact, as shadow counts are.
    let out = apply(store, &[quota_op(ns, "q3", 1, MAX_EXACT)], false).await;
    assert!(out.states[0].over);
    apply(store, &[quota_op(ns, "q3", 1, MAX_EXACT)], false).await;
    assert_eq!(count(store, ns, "q3").await, MAX_EXACT);
}

/// Many concurrent requests (which the Redis store coalesces into shared calls): a request
/// that is rejected never affects another one decided in the same call, and requests on one
/// counter see each other's hits.
async fn concurrent_requests_are_decided_each_on_its_own(store: Arc<dyn CounterStore>, ns: &str) {
    let tasks: Vec<_> = (0..96_u64)
        .map(|i| {
            let store = store.clone();
            let ns = ns.to_owned();
            tokio::spawn(async move {
                // Every third request asks for a counter whose limit is 0: it is rejected,
                // and the shared counter must not count it.
                let ops = if i % 3 == 0 {
                    vec![op(&ns, "mix-shared", 1_000, 1), op(&ns, "mix-zero", 0, 1)]
                } else {
                    vec![
                        op(&ns, "mix-shared", 1_000, 1),
                        op(&ns, &format!("mix-own-{i}"), 1, 1),
                        op(&ns, "mix-tight", 20, 1),
                    ]
                };
                let out = apply(&*store, &ops, false).await;
                (i, out.committed)
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        let (i, committed) = t.await.expect("caller panicked");
        if i % 3 == 0 {
            assert!(!committed, "request {i} asks for a zero limit");
        } else if committed {
            admitted += 1;
            assert_eq!(count(&*store, ns, &format!("mix-own-{i}")).await, 1);
        } else {
            assert_eq!(count(&*store, ns, &format!("mix-own-{i}")).await, 0);
        }
    }
    assert_eq!(admitted, 20, "the tight counter admits exactly its limit");
    assert_eq!(count(&*store, ns, "mix-tight").await, 20);
    assert_eq!(
        count(&*store, ns, "mix-shared").await,
        20,
        "only admitted requests count on the shared counter"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{MemoryStore, SystemClock};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn memory_store_conforms() {
        run_all(
            Arc::new(MemoryStore::new(Arc::new(SystemClock))),
            "conformance",
        )
        .await;
    }
}
