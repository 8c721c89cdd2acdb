//! The store conformance suite on a real Redis and a real 3-master Redis Cluster, and what
//! the store writes there.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::redis::{RedisCluster, RedisServer};
use ironclad_rls::config::Algorithm;
use ironclad_rls::descriptor::{CounterKey, CounterScope};
use ironclad_rls::limiter::conformance;
use ironclad_rls::limiter::{CounterOp, CounterStore};
use ironclad_rls::redis::{RedisOptions, RedisStore, RedisTarget};

fn options(target: RedisTarget) -> RedisOptions {
    RedisOptions {
        target,
        password: None,
        ca_pem: None,
        // Generous: these tests check behaviour, not latency, on a busy 2-core machine.
        timeout: Duration::from_secs(2),
        key_prefix: "rls".into(),
        ..RedisOptions::defaults()
    }
}

async fn ready(store: &Arc<RedisStore>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.ping().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis store never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_conforms() {
    let redis = RedisServer::start();
    let store = RedisStore::new(options(RedisTarget::Single(redis.url()))).unwrap();
    ready(&store).await;
    conformance::run_all(store.clone(), "conformance").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_store_conforms() {
    let cluster = RedisCluster::start();
    let nodes = cluster.nodes.iter().map(|n| n.url()).collect();
    let store = RedisStore::new(options(RedisTarget::Cluster(nodes))).unwrap();
    ready(&store).await;
    conformance::run_all(store.clone(), "conformance").await;
    // The conformance keys were spread over the cluster by their hash tags.
    let keys = cluster.keys();
    assert!(
        keys.iter().all(|k| k.starts_with("rls:{conformance:")),
        "{keys:?}"
    );
}

fn op(endpoint: &str, limit: u64) -> CounterOp {
    CounterOp {
        key: CounterKey::new(
            "d",
            endpoint,
            &CounterScope::Consumer {
                prefix: "/a",
                consumer: "c:1",
            },
        ),
        window_secs: 60,
        algorithm: Algorithm::FixedWindow,
        limit,
        capacity: limit,
        hits: 1,
        negative: false,
        enforce: true,
        quota: false,
    }
}

#[tokio::test]
async fn keys_have_the_documented_format_and_always_an_expiry() {
    let redis = RedisServer::start();
    let store = RedisStore::new(options(RedisTarget::Single(redis.url()))).unwrap();
    ready(&store).await;
    let out = store.apply(&[op("e", 10)], false).await.unwrap();
    assert!(out.committed);
    let window_start = out.now_ms - out.now_ms % 60_000;
    let keys = redis.cli(&["--scan"]);
    let key = format!("rls:{{d:e}}:p:/a:c:c%3A1:60000:{window_start}");
    assert_eq!(keys.trim(), key);
    let ttl: i64 = redis.cli(&["PTTL", &key]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
    assert_eq!(redis.cli(&["GET", &key]).trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_cross_slot_request_consumes_nothing_on_any_slot() {
    let cluster = RedisCluster::start();
    let nodes = cluster.nodes.iter().map(|n| n.url()).collect();
    let store = RedisStore::new(options(RedisTarget::Cluster(nodes))).unwrap();
    ready(&store).await;
    // Two endpoints whose counters live on different masters (redis-cli gives the three
    // masters the slot ranges 0-5460, 5461-10922 and 10923-16383).
    let master_of = |tag: &str| {
        let slot: u32 = cluster.nodes[0]
            .cli(&["CLUSTER", "KEYSLOT", tag])
            .trim()
            .parse()
            .unwrap();
        slot / 5461
    };
    let other = (0..100)
        .map(|i| format!("roomy{i}"))
        .find(|e| master_of(&format!("d:{e}")) != master_of("d:full"))
        .unwrap();
    for algorithm in [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ] {
        let with = |op: CounterOp| CounterOp { algorithm, ..op };
        let full = with(op("full", 1));
        store
            .apply(std::slice::from_ref(&full), false)
            .await
            .unwrap();
        // The roomy counter counts 3 hits per request, so a give-back must undo all 3.
        let roomy = CounterOp {
            hits: 3,
            ..with(op(&other, 100))
        };
        let out = store
            .apply(&[roomy.clone(), full.clone()], false)
            .await
            .unwrap();
        assert!(!out.committed, "{algorithm}");
        assert_eq!(
            (out.states[0].after, out.states[0].remaining),
            (0, 100),
            "{algorithm}: the answer says nothing was counted"
        );
        let check = CounterOp { hits: 0, ..roomy };
        let after = store.apply(&[check], false).await.unwrap();
        assert_eq!(
            (after.states[0].before, after.states[0].remaining),
            (0, 100),
            "{algorithm}: the roomy counter got its hits back"
        );
        if algorithm != Algorithm::FixedWindow {
            // An empty log and a full bucket hold no state at all.
            assert!(
                !cluster.keys().iter().any(|k| k.contains(&other)),
                "{algorithm}: {:?}",
                cluster.keys()
            );
        }
    }
}

#[tokio::test]
async fn strict_algorithms_keep_documented_keys_with_an_expiry() {
    let redis = RedisServer::start();
    let store = RedisStore::new(options(RedisTarget::Single(redis.url()))).unwrap();
    ready(&store).await;
    let sliding = CounterOp {
        algorithm: Algorithm::SlidingWindow,
        window_secs: 15,
        hits: 2,
        ..op("e", 5)
    };
    let bucket = CounterOp {
        algorithm: Algorithm::TokenBucket,
        window_secs: 15,
        ..op("e", 5)
    };
    let out = store.apply(&[sliding, bucket], false).await.unwrap();
    assert!(out.committed);
    let log = "rls:{d:e}:p:/a:c:c%3A1:15000:l";
    let gcra = "rls:{d:e}:p:/a:c:c%3A1:15000:b";
    let mut keys: Vec<String> = redis.cli(&["--scan"]).lines().map(str::to_owned).collect();
    keys.sort();
    assert_eq!(keys, vec![gcra.to_owned(), log.to_owned()]);
    // The log holds one element per admit time: "<time>:<running total>:<hits>"; it
    // expires with its newest.
    let now = out.now_ms.to_string();
    assert_eq!(
        redis.cli(&["LRANGE", log, "0", "-1"]).trim(),
        format!("{now}:2:2")
    );
    let ttl: i64 = redis.cli(&["PTTL", log]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 15_000, "PTTL {ttl}");
    // The bucket holds its GCRA debt (one token = 15000) and when it was written; it
    // expires when the debt is paid off (15000 / 5 per ms).
    assert_eq!(redis.cli(&["GET", gcra]).trim(), format!("15000 {now}"));
    let ttl: i64 = redis.cli(&["PTTL", gcra]).trim().parse().unwrap();
    assert!(ttl > 0 && ttl <= 3_000, "PTTL {ttl}");
}

/// Coalescing on a cluster (docs/counter-store.md §11): requests of one hash tag that queue
/// behind its calls are sent when those calls end, even when the callers that led the calls
/// have gone (their futures dropped mid-call), and every request is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_queued_behind_abandoned_cluster_calls_are_still_sent() {
    let cluster = RedisCluster::start();
    let nodes = cluster.nodes.iter().map(|n| n.url()).collect();
    let store = RedisStore::new(options(RedisTarget::Cluster(nodes))).unwrap();
    ready(&store).await;
    integration_tests::wait_for_fresh_window(60, Duration::from_secs(5));
    let slot: u32 = cluster.nodes[0]
        .cli(&["CLUSTER", "KEYSLOT", "d:e"])
        .trim()
        .parse()
        .unwrap();
    // redis-cli gives the three masters the slot ranges 0-5460, 5461-10922, 10923-16383.
    let master = &cluster.nodes[(slot / 5461) as usize];
    let apply = || {
        let store = store.clone();
        tokio::spawn(async move { store.apply(&[op("e", 100)], false).await })
    };

    // Frozen, the master keeps the tag's two calls on the wire; ten more requests queue.
    master.pause();
    let leaders: Vec<_> = (0..2).map(|_| apply()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued: Vec<_> = (0..10).map(|_| apply()).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for leader in &leaders {
        leader.abort();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    master.resume();

    for request in queued {
        let out = request
            .await
            .unwrap()
            .expect("a request queued behind an abandoned call is answered");
        assert!(out.committed);
    }
    // The abandoned calls were on the wire already, so they counted as well: 12 in all.
    let keys = master.cli(&["--scan", "--pattern", "rls:{d:e}:*"]);
    let counted: u64 = keys
        .split_whitespace()
        .map(|k| master.cli(&["GET", k]).trim().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 12, "{keys}");
}
