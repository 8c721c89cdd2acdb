//! The strict algorithms across replicas: 3 service processes on one Redis (and on a
//! 3-master Redis Cluster), concurrent callers at random arrival times.
//!
//! What was admitted is read back in the Redis server's own time: every limited endpoint
//! also has a never-binding sliding-window counter (an hour long, a million hits) that every
//! admitted request writes in the same script call, with the same `TIME`. Its log holds
//! every admit time with its hits, so the guarantees are checked exactly, with no clock of the
//! test's own and no timing assumption:
//! - sliding window: at most `limit` hits in any interval of the window's length;
//! - token bucket: over any interval of length t, at most `burst + limit × t / window` hits.
//!
//! Then bounded cost through the binary (memory and Redis): the request with `hits_addend`
//! and a limit override at 2^32 − 1 on a sliding window, answered at constant memory, and
//! callers on other counters unaffected while it runs; and the memory store's counter bound.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use integration_tests::redis::{RedisCluster, RedisServer};
use integration_tests::{Rls, request, start_replicas, temp_file};
use ironclad_rls::proto::RateLimitRequest;
use ironclad_rls::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride;
use ironclad_rls::proto::envoy::r#type::v3::RateLimitUnit;
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
        # The witness: every admit time and its hits, at Redis time.
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
    format!("rls:{{kcse:{endpoint}}}:p:/:a:3600000:l")
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

/// Admit times (ms, Redis server time), oldest first, one per hit, from a sliding log read
/// with `LRANGE <key> 0 -1`: elements `<time>:<running total>:<hits>`.
fn admit_times(lrange: &str) -> Vec<u64> {
    let mut times = Vec::new();
    for element in lrange.split_whitespace() {
        let fields: Vec<u64> = element
            .split(':')
            .map(|f| f.parse().expect("a log element is <time>:<total>:<hits>"))
            .collect();
        let [at, _total, hits] = fields[..] else {
            panic!("a log element is <time>:<total>:<hits>: {element}");
        };
        times.extend(std::iter::repeat_n(at, usize::try_from(hits).unwrap()));
    }
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

// Bounded cost (docs/algorithms.md, "Bounded cost"): a request whose hits and limit override
// are at their wire maxima costs a small constant per counter, in memory and in Redis.

/// An envoyproxy/ratelimit-format rule counting with a sliding window.
const ABUSE: &str = "domain: abuse
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 5, algorithm: sliding_window}
";

/// The request that once aborted the process: a limit override of 2^32 − 1 per hour and
/// `hits_addend` 2^32 − 1.
fn huge(user: &str) -> RateLimitRequest {
    let mut r = request("abuse", &[&[("user", user)]]);
    r.hits_addend = u32::MAX;
    r.descriptors[0].limit = Some(RateLimitOverride {
        requests_per_unit: u32::MAX,
        unit: RateLimitUnit::Hour as i32,
        unit_multiplier: None,
    });
    r
}

/// The same request as `POST /json` takes it.
fn huge_json(user: &str) -> String {
    format!(
        r#"{{"domain": "abuse", "hitsAddend": 4294967295, "descriptors": [{{"entries": [{{"key": "user", "value": "{user}"}}], "limit": {{"requestsPerUnit": 4294967295, "unit": "HOUR"}}}}]}}"#
    )
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status (these tests run on Linux)");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("a VmRSS line")
}

/// The admin token the huge-request services run with.
const TOKEN: &str = "huge-requests";

/// A token file for `--admin-token-file`, in `dir`.
fn token_file(dir: &tempfile::TempDir) -> String {
    let path = dir.path().join("admin-token");
    std::fs::write(&path, TOKEN).expect("write the token file");
    path.to_str().expect("UTF-8 path").to_owned()
}

/// Sends the huge request over gRPC and `POST /json`, first on fresh counters (it fits:
/// admitted at once) then again (it can never fit now: over at once), on 50 counters each.
async fn send_huge_requests(rls: &Rls) {
    let mut c = rls.client().await;
    for i in 0..50 {
        let user = format!("g{i}");
        for want in [Code::Ok, Code::OverLimit] {
            let resp = c.should_rate_limit(huge(&user)).await.expect("answered");
            assert_eq!(resp.get_ref().overall_code, want as i32, "gRPC, {user}");
        }
        let user = format!("j{i}");
        for want in [200, 429] {
            // Limit overrides on `/json` need the admin token (docs/service.md §3).
            let (status, body) = rls.admin_post_with_token("/json", &huge_json(&user), TOKEN);
            assert_eq!(status, want, "POST /json, {user}: {body}");
        }
    }
}

/// The huge requests are answered, the process stays up and its memory flat.
async fn huge_requests_cost_a_constant(rls: &Rls) {
    let before = rss_kib(rls.pid());
    send_huge_requests(rls).await;
    assert_eq!(rls.admin_get("/healthz").0, 200, "the process is alive");
    let after = rss_kib(rls.pid());
    println!("RSS {before} KiB before, {after} KiB after 200 huge requests");
    assert!(
        after < before + 32 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn the_request_that_aborted_the_memory_store_is_answered_at_constant_cost() {
    let (dir, file) = temp_file("abuse.yaml", ABUSE);
    let token = token_file(&dir);
    let rls = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--admin-token-file",
        &token,
    ]);
    huge_requests_cost_a_constant(&rls).await;
}

#[tokio::test]
async fn the_huge_request_takes_a_constant_in_redis() {
    let redis = RedisServer::start();
    let (dir, file) = temp_file("abuse.yaml", ABUSE);
    let token = token_file(&dir);
    let rls = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
        "--admin-token-file",
        &token,
    ]);
    rls.wait_ready(Duration::from_secs(20));
    huge_requests_cost_a_constant(&rls).await;
    // One log entry holding 2^32 − 1 hits.
    let key = "rls:{abuse:user=g0}:d:3600000:l";
    let bytes: u64 = redis
        .cli(&["MEMORY", "USAGE", key])
        .trim()
        .parse()
        .expect("MEMORY USAGE of the log");
    println!("MEMORY USAGE {key}: {bytes} bytes");
    assert!(bytes < 256, "{bytes} bytes for one admit time");
    assert_eq!(redis.cli(&["LLEN", key]).trim(), "1");
}

/// While one caller sends huge requests, callers on other counters are answered within
/// their deadline, and each gets exactly its limit: under `--on-backend-error allow` a
/// stalled store would have admitted them all.
async fn victims_keep_their_limit(rls: &Rls) {
    let attacker = {
        let mut c = rls.client().await;
        tokio::spawn(async move {
            for i in 0..200 {
                let _ = c.should_rate_limit(huge(&format!("a{}", i % 10))).await;
            }
        })
    };
    let mut victims = Vec::new();
    for v in 0..4 {
        let mut c = rls.client().await;
        victims.push(tokio::spawn(async move {
            let mut admitted = 0;
            for _ in 0..12 {
                let call = c.should_rate_limit(request("abuse", &[&[("user", &format!("v{v}"))]]));
                let resp = tokio::time::timeout(Duration::from_secs(10), call)
                    .await
                    .expect("a victim's call answered within its deadline")
                    .expect("a victim's call succeeds");
                if resp.get_ref().overall_code == Code::Ok as i32 {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    for v in victims {
        assert_eq!(v.await.unwrap(), 5, "a victim gets exactly its limit");
    }
    attacker.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_on_other_counters_are_answered_while_huge_requests_run() {
    let (_dir, file) = temp_file("abuse.yaml", ABUSE);
    let memory = Rls::start(&["--config", file.to_str().unwrap()]);
    victims_keep_their_limit(&memory).await;
    let redis = RedisServer::start();
    let on_redis = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "1s",
        "--on-backend-error",
        "allow",
    ]);
    on_redis.wait_ready(Duration::from_secs(20));
    victims_keep_their_limit(&on_redis).await;
}

// The memory store's bound (`--memory-max-counters`).

const PER_CONSUMER: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 2, anon_value: 1000}
";

fn consumer(id: &str) -> RateLimitRequest {
    request(
        "kcse",
        &[&[("endpoint", "api"), ("path", "/x"), ("consumer", id)]],
    )
}

#[tokio::test]
async fn a_full_memory_store_refuses_new_counters_and_evicts_none() {
    let (_dir, file) = temp_file("limits.yaml", PER_CONSUMER);
    for (mode, refused) in [
        ("deny", Ok(Code::OverLimit as i32)),
        ("error", Err(tonic::Code::Unavailable)),
    ] {
        let rls = Rls::start(&[
            "--config",
            file.to_str().unwrap(),
            "--memory-max-counters",
            "3",
            "--on-backend-error",
            mode,
        ]);
        let mut c = rls.client().await;
        let mut call = async |id: &str| {
            c.should_rate_limit(consumer(id))
                .await
                .map(|r| r.into_inner().overall_code)
                .map_err(|s| s.code())
        };
        for id in ["a", "b", "c"] {
            assert_eq!(call(id).await, Ok(Code::Ok as i32), "{mode}: {id} fits");
        }
        assert_eq!(call("d").await, refused, "{mode}: a fourth counter");
        assert_eq!(
            rls.metric("ratelimit_backend_errors_total", &[("kind", "capacity")]),
            Some(1.0),
            "{mode}"
        );
        // The three live counters were kept: each has one hit left, then is over.
        for id in ["a", "b", "c"] {
            assert_eq!(
                call(id).await,
                Ok(Code::Ok as i32),
                "{mode}: {id} still counts"
            );
            assert_eq!(
                call(id).await,
                Ok(Code::OverLimit as i32),
                "{mode}: {id} at its limit"
            );
        }
        assert_eq!(call("d").await, refused, "{mode}: still full");
        // What the bound-approaching alert divides (docs/observability.md).
        let store = [("store", "memory")];
        assert_eq!(rls.metric("ratelimit_memory_counters", &store), Some(3.0));
        assert_eq!(
            rls.metric("ratelimit_memory_max_counters", &store),
            Some(3.0)
        );
    }
}
