//! The strict algorithms across replicas: 3 service processes on one Redis (and on a
//! 3-master Redis Cluster), concurrent callers at random arrival times.
//!
//! What was admitted is read back in the Redis server's own time: every limited endpoint
//! also has a never-binding sliding-window counter (an hour long, a million hits) that every
//! admitted request writes in the same script call, with the same `TIME`. Its log is the
//! exact list of admit times, so the guarantees are checked exactly, with no clock of the
//! test's own and no timing assumption:
//! - sliding window: at most `limit` hits in any interval of the window's length;
//! - token bucket: over any interval of length t, at most `burst + limit × t / window` hits.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::redis::{RedisCluster, RedisServer};
use integration_tests::{Rls, request, start_replicas, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: sliding
      shortname: sw
      overall_limit: 7
      unit: second
      unit_multiplier: 2
      algorithm: sliding_window
      uri_prefixes:
        # The witness: one log entry per admitted hit, at Redis time.
        - {prefix: /, unit: hour, value: 1000000, anon_value: 1000000}
    - name: bucket
      shortname: tb
      overall_limit: 4
      unit: second
      algorithm: token_bucket
      burst: 6
      uri_prefixes:
        - {prefix: /, unit: hour, algorithm: sliding_window, value: 1000000, anon_value: 1000000}
";

/// The witness log of an endpoint (anonymous requests under `/`).
fn witness_key(endpoint: &str) -> String {
    format!("rls:{{kcse:{endpoint}}}:p:/:a:3600000:s")
}

/// A small xorshift generator: the test needs no statistical quality, only variety and a
/// seed it can print to replay a failure.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 24 callers spread over the replicas, each sending 40 anonymous requests to `endpoint`
/// with 1 or 2 hits, at random gaps of 0–200 ms (about 4 s: the windows slide and the bucket
/// refills while the callers contend). Returns (hits admitted, requests over limit).
async fn callers(replicas: &[Rls], endpoint: &'static str, seed: u64) -> (u64, u64) {
    let mut tasks = Vec::new();
    for i in 0..24u64 {
        let mut client = replicas[usize::try_from(i).unwrap() % replicas.len()]
            .client()
            .await;
        let mut rng = Rng(seed ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        tasks.push(tokio::spawn(async move {
            let (mut hits_ok, mut over) = (0, 0);
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(rng.below(201))).await;
                let hits = 1 + rng.below(2);
                let mut r = request("kcse", &[&[("endpoint", endpoint), ("path", "/x")]]);
                r.hits_addend = u32::try_from(hits).unwrap();
                let resp = client
                    .should_rate_limit(r)
                    .await
                    .expect("the service answers");
                if resp.get_ref().overall_code == Code::Ok as i32 {
                    hits_ok += hits;
                } else {
                    over += 1;
                }
            }
            (hits_ok, over)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        let (a, b) = t.await.unwrap();
        total = (total.0 + a, total.1 + b);
    }
    total
}

/// Admit times (ms, Redis server time), oldest first, one per hit.
fn admit_times(lrange: &str) -> Vec<u64> {
    let mut times: Vec<u64> = lrange
        .split_whitespace()
        .map(|t| t.parse().expect("a log entry is a time in ms"))
        .collect();
    times.sort_unstable();
    times
}

fn assert_sliding_window(times: &[u64], limit: usize, window_ms: u64) {
    for (i, &start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|&&t| t < start + window_ms)
            .count();
        assert!(
            within <= limit,
            "{within} hits in [{start}, {start} + {window_ms} ms): more than {limit}"
        );
    }
}

fn assert_token_bucket(times: &[u64], burst: u64, limit: u64, window_ms: u64) {
    for (i, &from) in times.iter().enumerate() {
        for (n, &to) in times[i..].iter().enumerate() {
            let hits = u64::try_from(n + 1).unwrap();
            // hits ≤ burst + limit × (to − from) / window, in integers.
            assert!(
                hits * window_ms <= burst * window_ms + limit * (to - from),
                "{hits} hits in [{from}, {to}]: more than {burst} + {limit} per {window_ms} ms"
            );
        }
    }
}

fn seed() -> u64 {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("random seed {seed}");
    seed
}

/// Runs both workloads and checks them against what Redis logged; `lrange` reads a key.
async fn check_both(replicas: &[Rls], lrange: impl Fn(&str) -> String) {
    let seed = seed();
    let (sw, tb) = tokio::join!(
        callers(replicas, "sw", seed),
        callers(replicas, "tb", seed.rotate_left(17))
    );

    let times = admit_times(&lrange(&witness_key("sw")));
    println!(
        "sliding window: {} hits admitted, {} requests over limit",
        sw.0, sw.1
    );
    assert_eq!(
        times.len() as u64,
        sw.0,
        "every admitted hit is logged once"
    );
    assert!(sw.1 > 0, "the workload reached the limit");
    assert!(sw.0 > 7, "the window slid during the run");
    assert_sliding_window(&times, 7, 2_000);

    let times = admit_times(&lrange(&witness_key("tb")));
    println!(
        "token bucket: {} hits admitted, {} requests over limit",
        tb.0, tb.1
    );
    assert_eq!(times.len() as u64, tb.0);
    assert!(tb.1 > 0, "the workload reached the limit");
    assert!(tb.0 > 6, "the bucket refilled during the run");
    assert_token_bucket(&times, 6, 4, 1_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_keep_the_strict_guarantees() {
    let redis = RedisServer::start();
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let replicas = start_replicas("--redis-url", &redis.url(), file.to_str().unwrap());
    check_both(&replicas, |key| redis.cli(&["LRANGE", key, "0", "-1"])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_a_redis_cluster_keep_the_strict_guarantees() {
    let cluster = RedisCluster::start();
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let replicas = start_replicas(
        "--redis-cluster-url",
        &cluster.urls(),
        file.to_str().unwrap(),
    );
    check_both(&replicas, |key| {
        cluster.nodes[0].cli(&["-c", "LRANGE", key, "0", "-1"])
    })
    .await;
}

#[tokio::test]
async fn current_limit_carries_the_window_multiplier() {
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start(&["--config", file.to_str().unwrap()]);
    let mut client = rls.client().await;
    let r = request("kcse", &[&[("endpoint", "sw"), ("path", "/x")]]);
    let resp = client.should_rate_limit(r).await.unwrap().into_inner();
    let status = &resp.statuses[0];
    let limit = status.current_limit.as_ref().unwrap();
    // The deciding counter is the one with the least remaining: the 2 s sliding window.
    assert_eq!(
        (limit.requests_per_unit, limit.unit_multiplier),
        (7, Some(2))
    );
    assert_eq!(status.limit_remaining, 6);
    // A window of one unit leaves the field out, as Envoy's reference service does.
    let r = request("kcse", &[&[("endpoint", "tb"), ("path", "/x")]]);
    let resp = client.should_rate_limit(r).await.unwrap().into_inner();
    let limit = resp.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit_multiplier), (4, None));
    assert_eq!(resp.statuses[0].limit_remaining, 5, "burst 6, one taken");
}
