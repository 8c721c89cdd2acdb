//! gRPC health following readiness, server reflection, graceful shutdown with a call in
//! flight, and `POST /json`.

use std::time::{Duration, Instant};

use integration_tests::redis::{RedisServer, free_port};
use integration_tests::{Rls, eventually, example, request, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const RLS_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 2}
";

async fn health(rls: &Rls, service: &str) -> ServingStatus {
    let channel = Channel::from_shared(format!("http://{}", rls.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let resp = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap();
    resp.into_inner().status()
}

async fn eventually_health(rls: &Rls, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(rls, "").await != want || health(rls, RLS_SERVICE).await != want {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn health_follows_readiness() {
    let port = free_port();
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let url = format!("redis://127.0.0.1:{port}");
    let rls = Rls::start(&["--config", file.to_str().unwrap(), "--redis-url", &url]);
    // Redis is not there yet: not serving, and /readyz says why.
    eventually_health(&rls, ServingStatus::NotServing).await;
    let (status, body) = rls.admin_get("/readyz");
    assert_eq!(status, 503);
    assert!(body.starts_with("not ready: "), "{body}");
    let _redis = RedisServer::start_on(port, &[]);
    eventually_health(&rls, ServingStatus::Serving).await;
    assert_eq!(rls.admin_get("/readyz").0, 200);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let channel = Channel::from_shared(format!("http://{}", rls.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let answer = reflect(&mut client, ask).await;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&RLS_SERVICE.to_owned()), "{names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // The RLS descriptors resolve too (what grpcurl needs to build a request).
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(RLS_SERVICE.to_owned())),
    };
    let answer = reflect(&mut client, ask).await;
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(_))
        ),
        "{answer:?}"
    );
}

/// One reflection question, one answer.
async fn reflect(
    client: &mut tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient<
        Channel,
    >,
    ask: tonic_reflection::pb::v1::ServerReflectionRequest,
) -> tonic_reflection::pb::v1::ServerReflectionResponse {
    let mut answers = client
        .server_reflection_info(tonic::codegen::tokio_stream::once(ask))
        .await
        .expect("reflection call")
        .into_inner();
    answers
        .message()
        .await
        .expect("reflection stream")
        .expect("one answer")
}

#[tokio::test]
async fn sigterm_drains_a_call_in_flight_and_exits_0() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let mut rls = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "5s",
        "--drain-timeout",
        "10s",
    ]);
    eventually_health(&rls, ServingStatus::Serving).await;
    let mut c = rls.client().await;

    // Redis sleeps 3 s: a call sent now is in flight until then.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "3"])
            .output()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let in_flight = tokio::spawn(async move {
        let r = request(
            "kcse",
            &[&[("endpoint", "api"), ("path", "/x"), ("consumer", "c")]],
        );
        c.should_rate_limit(r).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    rls.signal("-TERM");

    // Not ready while the call is still in flight. (A /readyz that raced the signal may
    // first wait up to a second for the sleeping Redis to answer its readiness probe.)
    eventually(Duration::from_secs(2), "/readyz 503 after SIGTERM", || {
        let (status, body) = rls.admin_get("/readyz");
        (status == 503 && body.contains("shutting down")).then_some(())
    });
    assert!(
        !in_flight.is_finished(),
        "the call should still be in flight"
    );
    let answer = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes");
    assert_eq!(answer.into_inner().overall_code, Code::Ok as i32);
    let exit = rls
        .wait_exit(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(exit.success(), "{exit:?}");
    sleeper.join().unwrap().unwrap();
}

#[tokio::test]
async fn post_json_answers_200_429_400_503() {
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start(&["--config", file.to_str().unwrap(), "--response-headers"]);
    let body = r#"{"domain":"kcse","descriptors":[{"entries":[{"key":"endpoint","value":"api"},{"key":"path","value":"/x"},{"key":"consumer","value":"cron"}]}]}"#;
    let (status, answer) = rls.admin_post("/json", body);
    assert_eq!(status, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["overallCode"], "OK");
    assert_eq!(v["statuses"][0]["limitRemaining"], 1);
    assert_eq!(v["statuses"][0]["currentLimit"]["unit"], "HOUR");
    assert_eq!(rls.admin_post("/json", body).0, 200);
    let (status, answer) = rls.admin_post("/json", body);
    assert_eq!(status, 429, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["overallCode"], "OVER_LIMIT");
    assert!(
        v["responseHeadersToAdd"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["key"] == "Retry-After"),
        "{v}"
    );

    for (bad, why) in [
        ("{not json", "invalid JSON"),
        (
            r#"{"domain":"kcse","descriptors":[{"entries":[{"key":"","value":"x"}]}]}"#,
            "empty key",
        ),
        (
            r#"{"domain":"kcse","descriptorz":[]}"#,
            "unknown field `descriptorz`",
        ),
        (
            r#"{"domain":"","descriptors":[{"entries":[{"key":"k","value":"v"}]}]}"#,
            "domain must not be empty",
        ),
    ] {
        let (status, answer) = rls.admin_post("/json", bad);
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(answer.contains(why), "{bad}: {answer}");
    }

    // The counter store failing: 503.
    let url = format!("redis://127.0.0.1:{}", free_port());
    let down = Rls::start(&["--config", file.to_str().unwrap(), "--redis-url", &url]);
    let (status, answer) = down.admin_post("/json", body);
    assert_eq!(status, 503, "{answer}");
}
