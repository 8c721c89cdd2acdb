//! The gRPC serving loop where it meets the counter store, through the real binary and a real
//! Redis (docs/service.md §2, "The serving loop"): a call whose client gives up while Redis is
//! slow is still decided and counted exactly once, and a call in flight when its connection
//! reaches the maximum age is answered before the connection goes away.

use std::time::Duration;

use integration_tests::redis::RedisServer;
use integration_tests::{Rls, request, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;

/// Two calls per minute for the endpoint as a whole.
const LIMITS: &str = "kcse_rate_limits:\n  endpoints:\n    - name: api\n      shortname: api\n      overall_limit: 2\n";

fn start(redis: &RedisServer, extra: &[&str]) -> (tempfile::TempDir, Rls) {
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let url = redis.url();
    // A long store deadline: the calls below wait for a paused Redis on purpose.
    let mut args = vec![
        "--config",
        file.to_str().unwrap(),
        "--redis-url",
        &url,
        "--redis-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    let rls = Rls::start(&args);
    (dir, rls)
}

fn api() -> ironclad_rls::proto::RateLimitRequest {
    request("kcse", &[&[("endpoint", "api")]])
}

#[tokio::test]
async fn a_call_its_client_gave_up_on_is_still_counted_once() {
    let redis = RedisServer::start();
    let (_dir, rls) = start(&redis, &[]);
    let mut client = rls.client().await;

    redis.pause();
    // The client's deadline passes while Redis is frozen: it cancels the stream (RST_STREAM).
    let mut given_up = tonic::Request::new(api());
    given_up.set_timeout(Duration::from_millis(300));
    let status = client
        .should_rate_limit(given_up)
        .await
        .expect_err("the client gives up first");
    assert!(
        matches!(
            status.code(),
            tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    redis.resume();

    // The abandoned call took one of the two: one more is admitted, the next is over.
    assert_eq!(rls.overall_code(api()).await, Code::Ok as i32);
    assert_eq!(rls.overall_code(api()).await, Code::OverLimit as i32);
}

#[tokio::test]
async fn a_call_in_flight_at_the_maximum_age_is_answered_before_the_connection_goes() {
    let redis = RedisServer::start();
    let (_dir, rls) = start(
        &redis,
        &[
            "--grpc-max-connection-age",
            "1s",
            "--grpc-max-connection-age-grace",
            "20s",
        ],
    );
    let mut client = rls.client().await;
    assert_eq!(
        client
            .should_rate_limit(api())
            .await
            .expect("a first call")
            .into_inner()
            .overall_code,
        Code::Ok as i32
    );

    redis.pause();
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { client.should_rate_limit(api()).await }
    });
    // Past the age: the server has sent GOAWAY while the call waits for Redis.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        !in_flight.is_finished(),
        "the call waits for the paused Redis"
    );
    redis.resume();
    let answer = in_flight
        .await
        .unwrap()
        .expect("the call in flight at GOAWAY is answered");
    assert_eq!(answer.into_inner().overall_code, Code::Ok as i32);

    // The channel goes on over a new connection; the limit of two holds across both.
    let next = client
        .should_rate_limit(api())
        .await
        .expect("a new connection");
    assert_eq!(next.into_inner().overall_code, Code::OverLimit as i32);
}
