//! Exactness across replicas: 3 service processes sharing one Redis (or one 3-master Redis
//! Cluster), 128 concurrent callers, limit 1000: exactly 1000 admitted, every run, with the
//! requests that meet on the wire sharing script calls on either.

use std::time::Duration;

use integration_tests::redis::{RedisCluster, RedisServer};
use integration_tests::{Rls, request, start_replicas, temp_file, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: shared
      shortname: ep
      overall_limit: 1000
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 100000, anon_value: 100000}
";

/// Sends 2048 requests from 128 concurrent callers spread over `replicas`; returns
/// (admitted, over limit, errors).
async fn storm(replicas: &[Rls]) -> (u64, u64, u64) {
    let mut tasks = Vec::new();
    for i in 0..128 {
        let mut client = replicas[i % replicas.len()].client().await;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut over, mut err) = (0, 0, 0);
            for j in 0..16 {
                let consumer = format!("c{}", (i * 16 + j) % 37);
                let r = request(
                    "kcse",
                    &[&[("endpoint", "ep"), ("path", "/x"), ("consumer", &consumer)]],
                );
                match client.should_rate_limit(r).await {
                    Ok(resp) if resp.get_ref().overall_code == Code::Ok as i32 => ok += 1,
                    Ok(_) => over += 1,
                    Err(_) => err += 1,
                }
            }
            (ok, over, err)
        }));
    }
    let mut total = (0, 0, 0);
    for t in tasks {
        let (a, b, c) = t.await.unwrap();
        total = (total.0 + a, total.1 + b, total.2 + c);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_one_redis_admit_exactly_the_limit() {
    let redis = RedisServer::start();
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let replicas = start_replicas("--redis-url", &redis.url(), file.to_str().unwrap());
    wait_for_fresh_window(3600, Duration::from_secs(30));
    let (ok, over, err) = storm(&replicas).await;
    println!("single Redis: admitted {ok}, over limit {over}, errors {err}");
    assert_eq!(err, 0);
    assert_eq!(ok, 1000, "exactly the limit is admitted");
    assert_eq!(over, 2048 - 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_on_a_redis_cluster_admit_exactly_the_limit() {
    let cluster = RedisCluster::start();
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let replicas = start_replicas(
        "--redis-cluster-url",
        &cluster.urls(),
        file.to_str().unwrap(),
    );
    wait_for_fresh_window(3600, Duration::from_secs(30));
    let script_calls = || -> u64 {
        cluster
            .nodes
            .iter()
            .map(|n| n.command_calls("evalsha"))
            .sum()
    };
    let before = script_calls();
    let (ok, over, err) = storm(&replicas).await;
    let calls = script_calls() - before;
    println!(
        "Redis Cluster: admitted {ok}, over limit {over}, errors {err}; {calls} script calls for 2048 requests"
    );
    assert_eq!(err, 0);
    assert_eq!(ok, 1000, "exactly the limit is admitted");
    // Every request carries the one tag {kcse:ep}: the requests of a replica that meet on
    // the wire share calls (docs/counter-store.md §11), counted exactly all the same. Sent
    // alone, the 1000 admitted requests alone would have taken 1000 calls (the refused ones
    // may be answered by the over-limit cache).
    assert!(
        calls < 1000,
        "coalesced on the tag's master: {calls} calls for 2048 requests"
    );
    // The counters landed on the cluster, keyed by the documented format.
    assert!(
        cluster
            .keys()
            .iter()
            .any(|k| k.starts_with("rls:{kcse:ep}:o:3600000:")),
        "{:?}",
        cluster.keys()
    );
}

const MIXED_LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: tight
      shortname: tight
      overall_limit: 100
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 100000, anon_value: 100000}
    - name: side
      shortname: side
      overall_limit: 1000000
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 100000, anon_value: 100000}
    - name: wide
      shortname: wide
      overall_limit: 1000000
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 100000, anon_value: 100000}
";

/// The overall count of endpoint `ep` in Redis (its current hour).
fn overall(redis: &RedisServer, ep: &str) -> u64 {
    let keys = redis.cli(&[
        "--scan",
        "--pattern",
        &format!("rls:{{kcse:{ep}}}:o:3600000:*"),
    ]);
    let keys: Vec<&str> = keys.split_whitespace().collect();
    assert_eq!(keys.len(), 1, "one overall counter for {ep}: {keys:?}");
    redis
        .cli(&["GET", keys[0]])
        .trim()
        .parse()
        .expect("a count")
}

/// 256 requests in flight over 3 replicas (which coalesce what reaches each of them at
/// once into shared calls): requests on a tight counter, each with a second counter that
/// only admitted requests may count, mixed with requests on a counter of their own that
/// are all admitted. Each is decided alone inside a shared call: exactly the limit of the
/// tight one is admitted, a rejected request never counts its other counter, and a
/// rejected request next to an admitted one changes nothing for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_requests_on_three_replicas_are_each_decided_alone() {
    let redis = RedisServer::start();
    let (_dir, file) = temp_file("limits.yaml", MIXED_LIMITS);
    let replicas = start_replicas("--redis-url", &redis.url(), file.to_str().unwrap());
    wait_for_fresh_window(3600, Duration::from_secs(30));
    let mut tasks = Vec::new();
    for i in 0..256 {
        // Several connections per replica: one client each.
        let mut client = replicas[i % replicas.len()].client().await;
        tasks.push(tokio::spawn(async move {
            let (mut tight, mut wide, mut err) = (0_u64, 0_u64, 0_u64);
            for j in 0..4 {
                let consumer = format!("c{}", (i * 4 + j) % 41);
                let c = consumer.as_str();
                let on = |ep| [("endpoint", ep), ("path", "/x"), ("consumer", c)];
                let r = if i % 2 == 0 {
                    request("kcse", &[&on("tight"), &on("side")])
                } else {
                    request("kcse", &[&on("wide")])
                };
                match client.should_rate_limit(r).await {
                    Ok(resp) if resp.get_ref().overall_code == Code::Ok as i32 => {
                        if i % 2 == 0 {
                            tight += 1;
                        } else {
                            wide += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => err += 1,
                }
            }
            (tight, wide, err)
        }));
    }
    let (mut tight, mut wide, mut err) = (0, 0, 0);
    for t in tasks {
        let (a, b, c) = t.await.unwrap();
        (tight, wide, err) = (tight + a, wide + b, err + c);
    }
    println!("coalesced mix: tight admitted {tight}, wide admitted {wide}, errors {err}");
    assert_eq!(err, 0);
    assert_eq!(tight, 100, "exactly the tight limit is admitted");
    assert_eq!(
        wide, 512,
        "a rejected neighbour never rejects an admitted request"
    );
    assert_eq!(overall(&redis, "tight"), 100);
    assert_eq!(
        overall(&redis, "side"),
        100,
        "a rejected request counted its other counter"
    );
    assert_eq!(overall(&redis, "wide"), 512);
    // They did share calls: fewer calls than requests reached Redis.
    let calls = redis.command_calls("fcall");
    println!("1024 requests in {calls} FCALLs");
    assert!(
        calls < 1024,
        "{calls} calls for 1024 requests: nothing was coalesced"
    );
}
