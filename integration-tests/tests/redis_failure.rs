//! Redis stalled, killed, restarted, or not there yet: every call is answered within the
//! deadline, `/readyz` tells why the service is not ready, and it recovers by itself.
//! Latencies are printed as figures; the assertions only bound them loosely (no hang).

use std::time::{Duration, Instant};

use integration_tests::redis::{RedisServer, free_port};
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
    let (_dir, rls) = start_with_timeout(&redis.url(), 2_000, &[]);
    let mut c = rls.client().await;
    for _ in 0..5 {
        assert_eq!(timed(&mut c, req("hot")).await.0, Ok(Code::Ok as i32));
    }
    let before = redis.command_calls("evalsha");
    for _ in 0..200 {
        assert_eq!(
            timed(&mut c, req("hot")).await.0,
            Ok(Code::OverLimit as i32)
        );
    }
    assert_eq!(
        redis.command_calls("evalsha"),
        before,
        "Redis saw no traffic for the full counter"
    );
    assert_eq!(timed(&mut c, req("other")).await.0, Ok(Code::Ok as i32));
    assert_eq!(
        redis.command_calls("evalsha"),
        before + 1,
        "other counters still go to Redis"
    );
}
