//! Redis stalled, killed, restarted, refusing writes, or not there yet: every call is
//! answered within the deadline, `/readyz` tells why the service is not ready, and it
//! recovers by itself; a call answered as failed is never counted later; quota given back
//! is usable through the over-limit cache at once on the same replica, within its TTL on
//! another. Latencies are printed as figures; the assertions only bound them loosely (no
//! hang).

use std::time::{Duration, Instant};

use integration_tests::redis::{RedisCluster, RedisServer, free_port};
use integration_tests::{Rls, request, temp_file};
use ironclad_rls::proto::RateLimitRequest;
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::Channel;

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 5, anon_value: 1000}
";
/// The per-call deadline these tests run with.
const TIMEOUT_MS: u64 = 100;
/// Slack over the deadline before a call counts as hung (the machine runs other tests).
const HANG_MS: u64 = 1_000;

fn req(consumer: &str) -> RateLimitRequest {
    request(
        "kcse",
        &[&[("endpoint", "api"), ("path", "/x"), ("consumer", consumer)]],
    )
}

fn start(redis_url: &str, extra: &[&str]) -> (tempfile::TempDir, Rls) {
    start_with_timeout(redis_url, TIMEOUT_MS, extra)
}

fn start_with_timeout(
    redis_url: &str,
    timeout_ms: u64,
    extra: &[&str],
) -> (tempfile::TempDir, Rls) {
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let timeout = format!("{timeout_ms}ms");
    let mut args = vec![
        "--config",
        file.to_str().unwrap(),
        "--redis-url",
        redis_url,
        "--redis-timeout",
        &timeout,
    ];
    args.extend_from_slice(extra);
    let rls = Rls::start(&args);
    (dir, rls)
}

/// One call: (answer code or gRPC error, elapsed).
async fn timed(
    c: &mut RateLimitServiceClient<Channel>,
    r: RateLimitRequest,
) -> (Result<i32, tonic::Code>, Duration) {
    let t = Instant::now();
    let out = c
        .should_rate_limit(r)
        .await
        .map(|r| r.into_inner().overall_code)
        .map_err(|s| s.code());
    (out, t.elapsed())
}

/// Makes `n` calls that must all be refused with UNAVAILABLE without hanging; returns the
/// slowest answer's time.
async fn all_unavailable(c: &mut RateLimitServiceClient<Channel>, n: usize, why: &str) -> Duration {
    let mut worst = Duration::ZERO;
    for i in 0..n {
        let (out, took) = timed(c, req(&format!("u{i}"))).await;
        assert_eq!(out, Err(tonic::Code::Unavailable), "call {i} while {why}");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS + HANG_MS),
            "call {i} hung for {took:?} while {why}"
        );
        worst = worst.max(took);
    }
    worst
}

/// Calls until one is answered OK; returns how long that took.
async fn until_ok(c: &mut RateLimitServiceClient<Channel>, deadline: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if timed(c, req("probe")).await.0 == Ok(Code::Ok as i32) {
            return t.elapsed();
        }
        assert!(t.elapsed() < deadline, "no OK answer within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_stalled_redis_never_makes_a_call_hang_and_recovery_is_automatic() {
    let redis = RedisServer::start();
    let (_dir, rls) = start(&redis.url(), &[]);
    let mut c = rls.client().await;
    // Healthy first (on a busy machine the first call may need a retry to warm up).
    until_ok(&mut c, Duration::from_secs(10)).await;

    redis.pause();
    let worst = all_unavailable(&mut c, 20, "Redis is stalled").await;
    println!("Redis stalled: worst answer {worst:?} with --redis-timeout {TIMEOUT_MS}ms");
    let (status, body) = rls.admin_get("/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not ready"), "{body}");

    redis.resume();
    let back = until_ok(&mut c, Duration::from_secs(10)).await;
    println!("Redis resumed: first OK answer after {back:?}");
    rls.wait_ready(Duration::from_secs(5));
}

#[tokio::test]
async fn a_killed_and_restarted_redis_is_survived() {
    let mut redis = RedisServer::start();
    let (_dir, rls) = start(&redis.url(), &[]);
    let mut c = rls.client().await;
    // Healthy first (on a busy machine the first call may need a retry to warm up).
    until_ok(&mut c, Duration::from_secs(10)).await;

    redis.kill();
    all_unavailable(&mut c, 10, "Redis is dead").await;
    assert_eq!(rls.admin_get("/readyz").0, 503);

    // A fresh server: empty, and without the script (the store reloads it on NOSCRIPT).
    redis.restart();
    let back = until_ok(&mut c, Duration::from_secs(10)).await;
    println!("Redis restarted: first OK answer after {back:?}");
    rls.wait_ready(Duration::from_secs(5));
}

#[tokio::test]
async fn the_service_starts_while_redis_is_down() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let (_dir, rls) = start(&url, &[]);
    let (status, body) = rls.admin_get("/readyz");
    assert_eq!(status, 503, "{body}");
    let mut c = rls.client().await;
    let (out, took) = timed(&mut c, req("a")).await;
    assert_eq!(out, Err(tonic::Code::Unavailable));
    assert!(
        took < Duration::from_millis(TIMEOUT_MS + HANG_MS),
        "{took:?}"
    );

    let _redis = RedisServer::start_on(port, &[]);
    let back = until_ok(&mut c, Duration::from_secs(10)).await;
    println!("Redis started late: first OK answer after {back:?}");
    rls.wait_ready(Duration::from_secs(5));
}

#[tokio::test]
async fn on_backend_error_allow_and_deny() {
    let url = format!("redis://127.0.0.1:{}", free_port());
    for (mode, want) in [("allow", Code::Ok), ("deny", Code::OverLimit)] {
        let (_dir, rls) = start(&url, &["--on-backend-error", mode]);
        let mut c = rls.client().await;
        for _ in 0..5 {
            let (out, _) = timed(&mut c, req("a")).await;
            assert_eq!(out, Ok(want as i32), "--on-backend-error {mode}");
        }
    }
}

#[tokio::test]
async fn full_counters_are_answered_without_touching_redis() {
    let redis = RedisServer::start();
    // A TTL longer than the test: the cache alone answers (by default an entry is asked
    // again once a second).
    let (_dir, rls) = start_with_timeout(&redis.url(), 2_000, &["--over-limit-cache-ttl", "1h"]);
    let mut c = rls.client().await;
    for _ in 0..5 {
        assert_eq!(timed(&mut c, req("hot")).await.0, Ok(Code::Ok as i32));
    }
    let before = counter_reads(&[&redis]);
    for _ in 0..200 {
        assert_eq!(
            timed(&mut c, req("hot")).await.0,
            Ok(Code::OverLimit as i32)
        );
    }
    assert_eq!(
        counter_reads(&[&redis]),
        before,
        "Redis saw no traffic for the full counter"
    );
    assert_eq!(timed(&mut c, req("other")).await.0, Ok(Code::Ok as i32));
    assert_eq!(
        counter_reads(&[&redis]),
        before + 1,
        "other counters still go to Redis"
    );
}

/// Key lookups the servers have served (`keyspace_hits` + `keyspace_misses`): reads of
/// counters. The readiness probe reads none (its only command is a write that finds no
/// key), so this counts the traffic requests cause.
fn counter_reads(servers: &[&RedisServer]) -> u64 {
    let mut reads = 0;
    for server in servers {
        let info = server.cli(&["INFO", "stats"]);
        for field in ["keyspace_hits:", "keyspace_misses:"] {
            reads += info
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .expect("INFO stats has keyspace_hits and keyspace_misses");
        }
    }
    reads
}

/// True while the server takes more than 200 ms to answer a PING (it is asleep).
fn unresponsive(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    s.read(&mut buf).is_err()
}

/// Makes `server` log every command it runs (its slow log, with a threshold of 0).
fn log_every_command(server: &RedisServer) {
    server.cli(&["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    server.cli(&["CONFIG", "SET", "slowlog-max-len", "10000"]);
    server.cli(&["SLOWLOG", "RESET"]);
}

/// While Redis is stalled: calls for `stalled` are answered OVER_LIMIT per
/// --on-backend-error deny, without hanging. The first ones sit in Redis' input buffer
/// (then the circuit opens and the rest are answered without sending).
async fn answered_during_the_stall(c: &mut RateLimitServiceClient<Channel>) {
    for i in 0..6 {
        let (out, took) = timed(c, req("stalled")).await;
        assert_eq!(out, Ok(Code::OverLimit as i32), "call {i} during the stall");
        assert!(
            took < Duration::from_millis(TIMEOUT_MS + HANG_MS),
            "call {i} hung for {took:?}"
        );
    }
}

/// Once Redis is back: it ran the queued calls (its log shows them) and none of them
/// counted, so the consumer still has its whole limit.
async fn none_counted(
    c: &mut RateLimitServiceClient<Channel>,
    owner: &RedisServer,
    all: &[&RedisServer],
) {
    until_ok(c, Duration::from_secs(10)).await;
    let log = owner.cli(&["SLOWLOG", "GET", "10000"]);
    assert!(
        log.contains(":c:stalled"),
        "a call answered during the stall reached Redis and ran: {log}"
    );
    for server in all {
        let keys = server.cli(&["--scan", "--pattern", "*stalled*"]);
        assert_eq!(
            keys.trim(),
            "",
            "a call answered during the stall was counted"
        );
    }
    let mut check = req("stalled");
    check.descriptors[0].hits_addend = Some(0);
    let resp = c.should_rate_limit(check).await.unwrap().into_inner();
    assert_eq!(resp.statuses[0].limit_remaining, 5);
}

/// A Redis (debug commands on), a service in front of it answering deny on failure, healthy
/// first (the service learns the offset of Redis' clock from the replies) with every command
/// logged; then Redis asleep for 3 s (`DEBUG SLEEP`, whose answer `sleeper` returns).
struct Asleep {
    redis: RedisServer,
    _dir: tempfile::TempDir,
    rls: Rls,
    c: RateLimitServiceClient<Channel>,
    sleeper: std::thread::JoinHandle<String>,
}

async fn asleep() -> Asleep {
    let redis = RedisServer::start_with(&["--enable-debug-command", "local"]);
    let (_dir, rls) = start(&redis.url(), &["--on-backend-error", "deny"]);
    let mut c = rls.client().await;
    until_ok(&mut c, Duration::from_secs(10)).await;
    rls.wait_ready(Duration::from_secs(5));
    log_every_command(&redis);
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "3"])
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    integration_tests::eventually(Duration::from_secs(5), "Redis asleep", || {
        unresponsive(port).then_some(())
    });
    Asleep {
        redis,
        _dir,
        rls,
        c,
        sleeper,
    }
}

#[tokio::test]
async fn calls_answered_during_a_stall_are_never_counted_afterwards() {
    let Asleep {
        redis,
        _dir,
        rls: _rls,
        mut c,
        sleeper,
    } = asleep().await;
    answered_during_the_stall(&mut c).await;
    assert_eq!(sleeper.join().unwrap().trim(), "OK", "DEBUG SLEEP ran");
    none_counted(&mut c, &redis, &[&redis]).await;
}

#[tokio::test]
async fn calls_answered_while_a_cluster_node_stalls_are_never_counted_afterwards() {
    let cluster = RedisCluster::start();
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let timeout = format!("{TIMEOUT_MS}ms");
    let rls = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--redis-cluster-url",
        &cluster.urls(),
        "--redis-timeout",
        &timeout,
        "--on-backend-error",
        "deny",
    ]);
    let mut c = rls.client().await;
    until_ok(&mut c, Duration::from_secs(20)).await;
    rls.wait_ready(Duration::from_secs(10));
    // The node holding the endpoint's counters (its hash tag's slot).
    let owner = cluster
        .nodes
        .iter()
        .find(|n| !n.cli(&["GET", "rls:{kcse:api}:probe"]).contains("MOVED"))
        .expect("a node owns the slot");
    log_every_command(owner);
    // Frozen (SIGSTOP): what is sent waits in its socket until it is thawed.
    owner.pause();
    answered_during_the_stall(&mut c).await;
    owner.resume();
    none_counted(&mut c, owner, &cluster.nodes.iter().collect::<Vec<_>>()).await;
    drop(dir);
}

/// Many callers at once while Redis sleeps: their requests queue and go out coalesced, in
/// calls that sit in the sleeping Redis past every request's deadline. Each was answered as
/// failed (deny) within the deadline; when Redis wakes and runs those calls, every request
/// inside them has expired on the server's clock and none counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_expired_inside_a_coalesced_call_never_count() {
    let Asleep {
        redis,
        _dir,
        rls,
        mut c,
        sleeper,
    } = asleep().await;
    let mut callers = Vec::new();
    for i in 0..64 {
        let mut c = rls.client().await;
        callers.push(tokio::spawn(async move {
            timed(&mut c, req(&format!("stalled-{i}"))).await
        }));
    }
    for (i, caller) in callers.into_iter().enumerate() {
        let (out, took) = caller.await.unwrap();
        assert_eq!(
            out,
            Ok(Code::OverLimit as i32),
            "caller {i} during the stall"
        );
        assert!(
            took < Duration::from_millis(TIMEOUT_MS + HANG_MS),
            "caller {i} hung for {took:?}"
        );
    }
    assert_eq!(sleeper.join().unwrap().trim(), "OK", "DEBUG SLEEP ran");
    until_ok(&mut c, Duration::from_secs(10)).await;
    let log = redis.cli(&["SLOWLOG", "GET", "10000"]);
    assert!(
        log.contains(":c:stalled-"),
        "a call carrying requests answered during the stall reached Redis and ran: {log}"
    );
    let keys = redis.cli(&["--scan", "--pattern", "*stalled*"]);
    assert_eq!(
        keys.trim(),
        "",
        "a request answered during the stall was counted"
    );
}

#[tokio::test]
async fn readiness_runs_the_script_and_fails_while_redis_refuses_writes() {
    let redis = RedisServer::start();
    let (_dir, rls) = start_with_timeout(&redis.url(), 2_000, &[]);
    rls.wait_ready(Duration::from_secs(10));

    // maxmemory reached with noeviction: PING still answers, every count would fail.
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    redis.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let body = integration_tests::eventually(Duration::from_secs(5), "/readyz 503", || {
        let (status, body) = rls.admin_get("/readyz");
        (status == 503).then_some(body)
    });
    assert!(body.contains("OOM"), "the reason is given: {body}");
    let mut c = rls.client().await;
    assert_eq!(
        timed(&mut c, req("oom")).await.0,
        Err(tonic::Code::Unavailable),
        "what readiness said: a count fails"
    );
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    rls.wait_ready(Duration::from_secs(10));
    assert_eq!(timed(&mut c, req("oom")).await.0, Ok(Code::Ok as i32));
}

#[tokio::test]
async fn readiness_fails_for_a_user_that_may_not_run_scripts() {
    let redis = RedisServer::start();
    // A single node runs check-and-count as a Redis Function (FCALL).
    redis.cli(&[
        "ACL", "SETUSER", "rls", "on", ">secret", "~*", "+@all", "-fcall",
    ]);
    let url = format!("redis://rls:secret@127.0.0.1:{}", redis.port);
    let (_dir, rls) = start_with_timeout(&url, 2_000, &[]);
    let body = integration_tests::eventually(Duration::from_secs(10), "/readyz 503", || {
        let (status, body) = rls.admin_get("/readyz");
        (status == 503 && body.contains("permissions to run the 'fcall' command")).then_some(body)
    });
    println!("{}", body.trim());
    redis.cli(&["ACL", "SETUSER", "rls", "+fcall"]);
    rls.wait_ready(Duration::from_secs(10));
}

/// `n` hits given back (is_negative_hits) by `consumer`.
fn give_back(consumer: &str, n: u64) -> RateLimitRequest {
    let mut r = req(consumer);
    r.descriptors[0].hits_addend = Some(n);
    r.descriptors[0].is_negative_hits = true;
    r
}

/// Two replicas on one store (`flag` `url`), the second with a short cache TTL.
fn two_replicas(flag: &str, url: &str) -> (tempfile::TempDir, Rls, Rls) {
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let start = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            file.to_str().unwrap(),
            flag,
            url,
            "--redis-timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        Rls::start(&args)
    };
    let one = start(&[]);
    let two = start(&["--over-limit-cache-ttl", "300ms"]);
    (dir, one, two)
}

/// A consumer at its limit gives 3 hits back through replica one: its next request there
/// is OK at once (the give-back dropped that replica's cache entry); replica two, whose
/// cache also holds the full counter, admits it again once its entry's TTL has passed (the
/// window is an hour).
async fn quota_given_back(one: &Rls, two: &Rls, servers: &[&RedisServer]) {
    let mut a = one.client().await;
    let mut b = two.client().await;
    until_ok(&mut a, Duration::from_secs(20)).await;
    until_ok(&mut b, Duration::from_secs(20)).await;
    for _ in 0..5 {
        assert_eq!(timed(&mut a, req("giver")).await.0, Ok(Code::Ok as i32));
    }
    // Replica two learns the counter is full, then both answer it from their caches.
    assert_eq!(
        timed(&mut b, req("giver")).await.0,
        Ok(Code::OverLimit as i32)
    );
    let reads = counter_reads(servers);
    for c in [&mut a, &mut b] {
        for _ in 0..3 {
            assert_eq!(timed(c, req("giver")).await.0, Ok(Code::OverLimit as i32));
        }
    }
    assert_eq!(
        counter_reads(servers),
        reads,
        "the replicas answered from their caches"
    );

    assert_eq!(
        timed(&mut a, give_back("giver", 3)).await.0,
        Ok(Code::Ok as i32)
    );
    assert_eq!(
        timed(&mut a, req("giver")).await.0,
        Ok(Code::Ok as i32),
        "the give-back dropped this replica's cache entry"
    );
    let t = Instant::now();
    loop {
        if timed(&mut b, req("giver")).await.0 == Ok(Code::Ok as i32) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "replica two never saw the quota given back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("replica two admitted again after {:?}", t.elapsed());
}

#[tokio::test]
async fn quota_given_back_is_usable_at_once_here_and_within_the_ttl_elsewhere() {
    let redis = RedisServer::start();
    let (_dir, one, two) = two_replicas("--redis-url", &redis.url());
    quota_given_back(&one, &two, &[&redis]).await;
}

#[tokio::test]
async fn quota_given_back_on_a_cluster_is_usable_at_once_here_and_within_the_ttl_elsewhere() {
    let cluster = RedisCluster::start();
    let (_dir, one, two) = two_replicas("--redis-cluster-url", &cluster.urls());
    let nodes: Vec<&RedisServer> = cluster.nodes.iter().collect();
    quota_given_back(&one, &two, &nodes).await;
}
