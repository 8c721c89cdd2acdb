//! The differential property test: random batches applied step by step to the memory store
//! (the reference, src/limiter/memory.rs) and to a real Redis store on a real
//! `redis-server` (src/redis/check_and_count.lua), comparing everything a batch answers
//! after every step: committed, and per op before, after, over, remaining and reset.
//!
//! The batches mix what the two implementations must agree on: ops sharing a counter within
//! a batch, several algorithms and windows on one key, negative hits, shadow (non-enforcing)
//! ops, dry runs, limit 0, hits 0, long windows (hours, days, a month, and past 2^53 ms as
//! only a limit override can ask) and one-second ones, and hits and limits up to their
//! wire maxima (a bucket whose capacity × window passes 2^53, a sliding log asked for
//! 2^32 or 2^64 hits).
//!
//! Time: the Redis store reads the server's clock (`TIME`), so each step runs on Redis first
//! and the memory store's [`ManualClock`] is then set to the `now_ms` Redis answered: both
//! decide at the same instant. Some steps first let real time pass (up to 0.7 s) so that
//! one- and two-second windows end, logs slide and buckets refill between steps; that wait
//! is the input being generated (time moving), not a wait for something to happen.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use integration_tests::redis::RedisServer;
use ironclad_rls::config::Algorithm;
use ironclad_rls::descriptor::{CounterKey, CounterScope};
use ironclad_rls::limiter::{
    BatchOutcome, CounterOp, CounterStore, ManualClock, MemoryStore, StoreError,
};
use ironclad_rls::redis::{RedisOptions, RedisStore, RedisTarget};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Cases per run (each counts in keys of its own); `DIFFERENTIAL_CASES` asks for more, for a
/// longer hunt.
fn case_count() -> u32 {
    std::env::var("DIFFERENTIAL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(48)
}

/// One counter of a scenario: several may share a key (`name`) with other algorithms or
/// windows, which must never share state.
#[derive(Debug, Clone)]
struct Counter {
    name: u8,
    algorithm: Algorithm,
    window_secs: u64,
    limit: u64,
    capacity: u64,
}

/// One op of a batch, on one of the scenario's counters.
#[derive(Debug, Clone)]
struct Op {
    counter: usize,
    hits: u64,
    negative: bool,
    enforce: bool,
    /// Quota mode: counts even when the request is blocked; blocks only with every other
    /// enforcing quota op of the request.
    quota: bool,
}

#[derive(Debug, Clone)]
struct Step {
    /// Real time to let pass before the step, ms.
    gap_ms: u64,
    dry_run: bool,
    ops: Vec<Op>,
}

#[derive(Debug, Clone)]
struct Scenario {
    counters: Vec<Counter>,
    steps: Vec<Step>,
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::FixedWindow),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::TokenBucket),
    ]
}

/// A limit override may ask for any window: past 2^53 ms both stores count over 2^53 ms.
const HUGE_WINDOW_SECS: u64 = u32::MAX as u64 * 31_536_000;

fn window_secs() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => Just(1u64),
        4 => Just(2),
        2 => Just(60),
        2 => Just(3_600),
        2 => Just(86_400),
        2 => Just(30 * 86_400),
        1 => Just(HUGE_WINDOW_SECS),
    ]
}

/// Limits are 32-bit (configured, or a descriptor's override).
fn limit() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        12 => 1u64..8,
        4 => 8u64..100,
        1 => Just(u64::from(u32::MAX)),
    ]
}

/// Hits: a descriptor's `hits_addend` is 64-bit.
fn hits() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        16 => 1u64..4,
        4 => 4u64..20,
        1 => Just(u64::from(u32::MAX)),
        1 => Just(u64::MAX),
    ]
}

fn burst() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        4 => Just(None),
        4 => (1u64..12).prop_map(Some),
        1 => Just(Some(u64::from(u32::MAX))),
    ]
}

fn counter() -> impl Strategy<Value = Counter> {
    (0u8..3, algorithm(), window_secs(), limit(), burst()).prop_map(
        |(name, algorithm, window_secs, limit, burst)| Counter {
            name,
            algorithm,
            window_secs,
            limit,
            capacity: burst.unwrap_or(limit),
        },
    )
}

/// A step on `n` counters.
fn step(n: usize) -> impl Strategy<Value = Step> {
    let op = (
        0..n,
        hits(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(counter, hits, negative, enforce, quota)| Op {
            counter,
            hits,
            negative,
            enforce,
            quota,
        });
    (
        prop_oneof![9 => Just(0u64), 1 => 1u64..700],
        prop::bool::weighted(0.1),
        prop::collection::vec(op, 1..5),
    )
        .prop_map(|(gap_ms, dry_run, ops)| Step {
            gap_ms,
            dry_run,
            ops,
        })
}

fn scenario() -> impl Strategy<Value = Scenario> {
    prop::collection::vec(counter(), 1..5).prop_flat_map(|counters| {
        let n = counters.len();
        (Just(counters), prop::collection::vec(step(n), 1..24))
            .prop_map(|(counters, steps)| Scenario { counters, steps })
    })
}

/// The ops of one step, with keys under `namespace`.
fn ops(namespace: &str, counters: &[Counter], step: &Step) -> Vec<CounterOp> {
    step.ops
        .iter()
        .map(|op| {
            let c = &counters[op.counter];
            CounterOp {
                key: CounterKey::new(namespace, &format!("k{}", c.name), &CounterScope::Overall),
                window_secs: c.window_secs,
                algorithm: c.algorithm,
                limit: c.limit,
                capacity: c.capacity,
                hits: op.hits,
                negative: op.negative,
                enforce: op.enforce,
                quota: op.quota,
            }
        })
        .collect()
}

/// Runs a scenario through both stores; the first difference fails the case.
fn run_case(
    rt: &tokio::runtime::Runtime,
    redis: &RedisStore,
    namespace: &str,
    scenario: &Scenario,
) -> Result<(), TestCaseError> {
    let clock = Arc::new(ManualClock::new(0));
    let memory = MemoryStore::new(clock.clone());
    for (i, step) in scenario.steps.iter().enumerate() {
        if step.gap_ms > 0 {
            std::thread::sleep(Duration::from_millis(step.gap_ms));
        }
        let ops = ops(namespace, &scenario.counters, step);
        let remote: BatchOutcome = rt
            .block_on(redis.apply(&ops, step.dry_run))
            .map_err(|e| TestCaseError::fail(format!("Redis store failed: {e}")))?;
        clock.set_ms(remote.now_ms);
        let local = memory
            .apply_now(&ops, step.dry_run)
            .map_err(|e| TestCaseError::fail(format!("memory store failed: {e}")))?;
        prop_assert_eq!(
            &local,
            &remote,
            "step {} (memory store left, Redis right), ops {:?}, dry run {}",
            i,
            step.ops,
            step.dry_run
        );
    }
    Ok(())
}

/// Scenarios worth running every time, whatever the random ones draw.
fn known_cases() -> Vec<Scenario> {
    let op = |counter, hits, negative, enforce| Op {
        counter,
        hits,
        negative,
        enforce,
        quota: false,
    };
    let step = |gap_ms, ops| Step {
        gap_ms,
        dry_run: false,
        ops,
    };
    vec![
        // A shadow op on a bucket of limit 0 (it never refills), read again after its
        // window.
        Scenario {
            counters: vec![Counter {
                name: 0,
                algorithm: Algorithm::TokenBucket,
                window_secs: 1,
                limit: 0,
                capacity: 3,
            }],
            steps: vec![
                step(0, vec![op(0, 1, false, false)]),
                step(700, vec![op(0, 0, false, true)]),
                step(700, vec![op(0, 0, false, true)]),
            ],
        },
    ]
}

#[test]
fn the_memory_and_redis_stores_answer_every_batch_alike() {
    let server = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let store = rt.block_on(async {
        let store = RedisStore::new(RedisOptions {
            target: RedisTarget::Single(server.url()),
            password: None,
            ca_pem: None,
            timeout: Duration::from_secs(5),
            key_prefix: "diff".into(),
            ..RedisOptions::defaults()
        })
        .expect("Redis store");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.ping().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis store never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
    });
    let cases = AtomicU64::new(0);
    for (i, scenario) in known_cases().iter().enumerate() {
        if let Err(e) = run_case(&rt, &store, &format!("known{i}"), scenario) {
            panic!("known case {i}: {e}\n{scenario:?}");
        }
    }
    let mut runner = TestRunner::new(Config {
        cases: case_count(),
        // Shrinking replays cases against the live server; a few hundred runs is plenty.
        max_shrink_iters: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&scenario(), |scenario| {
        // Every run (shrinking included) counts in keys of its own.
        let namespace = format!("case{}", cases.fetch_add(1, Ordering::Relaxed));
        run_case(&rt, &store, &namespace, &scenario)
    });
    println!(
        "{} runs (cases and shrinking steps)",
        cases.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

// Coalesced calls -------------------------------------------------------------------------
//
// On a single node, requests that wait together travel in one call (docs/counter-store.md
// §11), and each must still be answered exactly as if it had been sent alone, in arrival
// order. The call lists each counter (key and spec) once and its requests refer to them; a
// request of fixed windows only takes the script's fast path, any other the general one,
// and both share the call's fixed windows. So: waves of requests are sent at once to a store
// with one worker on the test's own (current-thread) runtime, where all of a wave queue, in
// order, before the worker takes them in one call; the memory store then applies the same
// requests one by one, in the same order, at the time Redis answered.

/// Waves of requests on a scenario's counters.
#[derive(Debug, Clone)]
struct Waves {
    counters: Vec<Counter>,
    /// Each wave's requests (the first one's gap is the wave's).
    waves: Vec<Vec<Step>>,
}

fn waves() -> impl Strategy<Value = Waves> {
    prop::collection::vec(counter(), 1..6).prop_flat_map(|counters| {
        let n = counters.len();
        let wave = prop::collection::vec(step(n), 1..12);
        (Just(counters), prop::collection::vec(wave, 1..8))
            .prop_map(|(counters, waves)| Waves { counters, waves })
    })
}

/// Polls every future once, in order (each joins the store's queue then), then until all
/// are done.
async fn together<'a, T>(mut futures: Vec<Pin<Box<dyn Future<Output = T> + Send + 'a>>>) -> Vec<T> {
    let mut done: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, d) in futures.iter_mut().zip(done.iter_mut()) {
            if d.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *d = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

/// Runs the waves through both stores; the first difference fails the case. Returns the
/// requests sent.
fn run_waves(
    rt: &tokio::runtime::Runtime,
    redis: &RedisStore,
    namespace: &str,
    w: &Waves,
) -> Result<u64, TestCaseError> {
    let clock = Arc::new(ManualClock::new(0));
    let memory = MemoryStore::new(clock.clone());
    let mut sent = 0;
    for (i, wave) in w.waves.iter().enumerate() {
        if wave[0].gap_ms > 0 {
            std::thread::sleep(Duration::from_millis(wave[0].gap_ms));
        }
        let ops: Vec<Vec<CounterOp>> = wave
            .iter()
            .map(|step| ops(namespace, &w.counters, step))
            .collect();
        let remote: Vec<Result<BatchOutcome, StoreError>> = rt.block_on(together(
            wave.iter()
                .zip(&ops)
                .map(|(step, ops)| redis.apply(ops, step.dry_run))
                .collect(),
        ));
        sent += wave.len() as u64;
        for (j, ((step, ops), remote)) in wave.iter().zip(&ops).zip(remote).enumerate() {
            let remote =
                remote.map_err(|e| TestCaseError::fail(format!("Redis store failed: {e}")))?;
            clock.set_ms(remote.now_ms);
            let local = memory
                .apply_now(ops, step.dry_run)
                .map_err(|e| TestCaseError::fail(format!("memory store failed: {e}")))?;
            prop_assert_eq!(
                &local,
                &remote,
                "wave {} request {} (memory store left, Redis right), ops {:?}, dry run {}",
                i,
                j,
                step.ops,
                step.dry_run
            );
        }
    }
    Ok(sent)
}

/// Waves worth running every time: on one key, fixed windows of one window under several
/// specs (limits, hits, flags: one state, several counters listed), next to a sliding log
/// and a bucket of the same key, so fast-path and general-path requests alternate on the
/// same fixed window within one call.
fn known_waves() -> Vec<Waves> {
    let fixed = |limit| Counter {
        name: 0,
        algorithm: Algorithm::FixedWindow,
        window_secs: 60,
        limit,
        capacity: limit,
    };
    let op = |counter, hits, negative, enforce, quota| Op {
        counter,
        hits,
        negative,
        enforce,
        quota,
    };
    let req = |dry_run, ops| Step {
        gap_ms: 0,
        dry_run,
        ops,
    };
    let counters = vec![
        fixed(5),
        fixed(3),
        Counter {
            name: 0,
            algorithm: Algorithm::SlidingWindow,
            window_secs: 60,
            limit: 4,
            capacity: 4,
        },
        Counter {
            name: 0,
            algorithm: Algorithm::TokenBucket,
            window_secs: 60,
            limit: 4,
            capacity: 2,
        },
        Counter {
            name: 1,
            ..fixed(2)
        },
    ];
    let wave = vec![
        req(false, vec![op(0, 1, false, true, false)]),
        req(
            false,
            vec![op(0, 1, false, true, false), op(2, 1, false, true, false)],
        ),
        req(false, vec![op(1, 1, false, true, false)]),
        req(
            false,
            vec![op(0, 2, false, true, false), op(3, 1, false, true, false)],
        ),
        // Over on the limit-3 spec of the same window: blocked, its quota op counts.
        req(
            false,
            vec![op(1, 1, false, true, false), op(4, 1, false, true, true)],
        ),
        req(true, vec![op(0, 1, false, true, false)]),
        req(
            false,
            vec![op(0, 2, true, true, false), op(2, 1, true, true, false)],
        ),
        req(
            false,
            vec![op(0, 1, false, false, false), op(0, 1, false, true, false)],
        ),
        req(
            false,
            vec![op(4, 2, false, true, true), op(4, 1, false, true, true)],
        ),
        req(false, vec![op(0, 1, false, true, false)]),
    ];
    // A bucket's key expires when its debt is paid off at the limit of the counter that
    // wrote it; Redis keeps the key through that ms. Counter 0 (limit 2^32 - 1) empties a
    // 4-token bucket that it refills within 1 ms, so the key it writes expires 1 ms later;
    // counter 1, the same key and window at limit 4, still finds nearly all that debt there
    // in that ms. Its dry run, in the next call, disagreed when that call ran exactly at the
    // expiry ms (the memory store had dropped the state: a full bucket; Redis an empty one).
    // Which ms the next call runs in is not ours to choose, so the pair repeats: a wave
    // in the same ms reads it alike (counter 0 is then over, writing nothing), and the ms
    // after it is the one that disagreed.
    let bucket = |limit| Counter {
        name: 2,
        algorithm: Algorithm::TokenBucket,
        window_secs: 1,
        limit,
        capacity: 4,
    };
    let expiring = Waves {
        counters: vec![bucket(u64::from(u32::MAX)), bucket(4)],
        waves: (0..40)
            .map(|_| {
                vec![
                    req(true, vec![op(1, 1, false, true, false)]),
                    req(false, vec![op(0, 4, false, true, false)]),
                ]
            })
            .collect(),
    };
    vec![
        Waves {
            counters,
            waves: vec![wave.clone(), wave],
        },
        expiring,
    ]
}

#[test]
fn coalesced_requests_are_answered_as_if_each_was_sent_alone() {
    let server = RedisServer::start();
    // The worker runs on this runtime: a wave queues whole before it takes any of it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let store = rt.block_on(async {
        let store = RedisStore::new(RedisOptions {
            target: RedisTarget::Single(server.url()),
            timeout: Duration::from_secs(5),
            key_prefix: "coal".into(),
            connections: 1,
            calls_per_connection: 1,
            own_thread: false,
            ..RedisOptions::defaults()
        })
        .expect("Redis store");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.ping().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Redis store never became ready"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
    });
    let before = server.command_calls("fcall");
    let mut sent = 0;
    for (i, w) in known_waves().iter().enumerate() {
        match run_waves(&rt, &store, &format!("known{i}"), w) {
            Ok(n) => sent += n,
            Err(e) => panic!("known waves {i}: {e}\n{w:?}"),
        }
    }
    let calls = server.command_calls("fcall") - before;
    println!("known waves: {sent} requests in {calls} calls");
    // One call per wave (and one more, should the library need loading first).
    let known: usize = known_waves().iter().map(|w| w.waves.len()).sum();
    assert!(
        calls <= known as u64 + 1,
        "{calls} calls for {sent} requests in waves: they were not coalesced"
    );
    let cases = AtomicU64::new(0);
    let requests = AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: case_count(),
        max_shrink_iters: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let before = server.command_calls("fcall");
    let result = runner.run(&waves(), |w| {
        let namespace = format!("case{}", cases.fetch_add(1, Ordering::Relaxed));
        requests.fetch_add(run_waves(&rt, &store, &namespace, &w)?, Ordering::Relaxed);
        Ok(())
    });
    let calls = server.command_calls("fcall") - before;
    let requests = requests.load(Ordering::Relaxed);
    println!(
        "{} runs, {requests} requests in {calls} calls",
        cases.load(Ordering::Relaxed)
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(
        calls * 2 < requests,
        "{calls} calls for {requests} requests: waves were not coalesced"
    );
}
