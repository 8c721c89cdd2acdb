//! docs/limits-format.md §7 through the real binary over gRPC.

use std::time::Duration;

use integration_tests::{Rls, example, request, temp_file, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use ironclad_rls::proto::{RateLimitRequest, RateLimitResponse};
use tonic::transport::Channel;

const URI_ONLY: &str = "/auth/admin/realms/API-TEST-URI-ONLY/";

fn req(path: &str, consumer: Option<&str>) -> RateLimitRequest {
    let mut entries = vec![("endpoint", "kcserl"), ("path", path)];
    if let Some(c) = consumer {
        entries.push(("consumer", c));
    }
    request("kcse", &[&entries])
}

async fn call(c: &mut RateLimitServiceClient<Channel>, r: RateLimitRequest) -> RateLimitResponse {
    c.should_rate_limit(r)
        .await
        .expect("call failed")
        .into_inner()
}

async fn admitted(
    c: &mut RateLimitServiceClient<Channel>,
    n: usize,
    path: &str,
    consumer: Option<&str>,
) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if call(c, req(path, consumer)).await.overall_code == Code::Ok as i32 {
            ok += 1;
        }
    }
    ok
}

#[tokio::test]
async fn example_2_2() {
    let rls = Rls::start(&[
        "--config",
        example("seed/2.2-per-service-with-client.yaml")
            .to_str()
            .unwrap(),
    ]);
    let mut c = rls.client().await;
    wait_for_fresh_window(60, Duration::from_secs(10));

    let users = format!("{URI_ONLY}users?x=1");
    assert_eq!(admitted(&mut c, 10, &users, Some("a")).await, 10);
    let eleventh = call(&mut c, req(&users, Some("a"))).await;
    assert_eq!(eleventh.overall_code, Code::OverLimit as i32);
    let s = &eleventh.statuses[0];
    assert_eq!(s.code, Code::OverLimit as i32);
    let limit = s.current_limit.as_ref().expect("current_limit");
    assert_eq!(
        (limit.requests_per_unit, limit.name.as_str()),
        (10, "kcserl /auth/admin/realms/API-TEST-URI-ONLY/ client")
    );
    let reset = s.duration_until_reset.expect("duration_until_reset");
    assert!(
        (1..=60).contains(&reset.seconds) || (reset.seconds == 0 && reset.nanos > 0),
        "{reset:?}"
    );

    assert_eq!(
        admitted(&mut c, 10, URI_ONLY, Some("b")).await,
        10,
        "consumer b is unaffected"
    );
    assert_eq!(
        admitted(&mut c, 51, URI_ONLY, Some("test_client3")).await,
        50
    );
    assert_eq!(
        admitted(&mut c, 6, URI_ONLY, None).await,
        5,
        "anonymous requests share 5"
    );

    let outside = call(&mut c, req("/auth/admin/realms/OTHER/", Some("a"))).await;
    assert_eq!(outside.overall_code, Code::Ok as i32);
    assert!(
        outside.statuses[0].current_limit.is_none(),
        "a path outside the prefix is never limited"
    );
}

#[tokio::test]
async fn example_2_3() {
    let rls = Rls::start(&[
        "--config",
        example("seed/2.3-per-client.yaml").to_str().unwrap(),
    ]);
    let mut c = rls.client().await;
    wait_for_fresh_window(60, Duration::from_secs(10));
    assert_eq!(
        admitted(&mut c, 11, "/auth/realms/x/account", Some("test_client2")).await,
        10
    );
    let other = call(&mut c, req("/auth/realms/x/account", Some("someone"))).await;
    assert_eq!(
        other.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        200_000
    );
    assert_eq!(other.statuses[0].limit_remaining, 199_999);
}

#[tokio::test]
async fn overall_limit_applies_to_everyone() {
    let (_dir, file) = temp_file(
        "limits.yaml",
        "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: kcserl
      overall_limit: 3
      uri_prefixes:
        - {prefix: /, value: 10, anon_value: 10}
",
    );
    let rls = Rls::start(&["--config", file.to_str().unwrap()]);
    let mut c = rls.client().await;
    wait_for_fresh_window(60, Duration::from_secs(10));
    for (path, consumer) in [("/a", Some("x")), ("/b", Some("y")), ("/c", None)] {
        assert_eq!(
            call(&mut c, req(path, consumer)).await.overall_code,
            Code::Ok as i32
        );
    }
    for consumer in [Some("x"), Some("new"), None] {
        let r = call(&mut c, req("/a", consumer)).await;
        assert_eq!(
            r.overall_code,
            Code::OverLimit as i32,
            "the 4th request is over limit for everyone"
        );
        assert_eq!(
            r.statuses[0].current_limit.as_ref().unwrap().name,
            "kcserl overall"
        );
    }
}

#[tokio::test]
async fn full_example_nested_prefixes_and_statuses_in_order() {
    let rls = Rls::start(&["--config", example("").to_str().unwrap()]);
    let mut c = rls.client().await;
    wait_for_fresh_window(60, Duration::from_secs(10));
    // Two descriptors: statuses come back in request order, one per descriptor.
    let r = request(
        "kcse",
        &[
            &[("endpoint", "unknown"), ("path", "/auth")],
            &[
                ("endpoint", "kcserl"),
                ("path", "/auth//admin/realms/%41PI-TEST/x"),
                ("consumer", "test_client"),
            ],
        ],
    );
    let resp = call(&mut c, r).await;
    assert_eq!(resp.statuses.len(), 2);
    assert!(resp.statuses[0].current_limit.is_none());
    let tight = resp.statuses[1].current_limit.as_ref().unwrap();
    // The invoker's 20 under API-TEST is tighter than /auth's 200000 and the overall 1000000.
    assert_eq!(
        tight.name,
        "kcserl /auth/admin/realms/API-TEST/ invoker test_client"
    );
    assert_eq!(resp.statuses[1].limit_remaining, 19);
    // The token endpoint: anonymous requests share 10 per minute.
    let token = "/auth/realms/API-TEST/protocol/openid-connect/token";
    assert_eq!(admitted(&mut c, 11, token, None).await, 10);
}

#[tokio::test]
async fn unknown_domain_is_unlimited() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let mut c = rls.client().await;
    let r = request(
        "other-domain",
        &[&[("endpoint", "kcserl"), ("path", "/auth")]],
    );
    let resp = call(&mut c, r).await;
    assert_eq!(resp.overall_code, Code::Ok as i32);
    assert!(resp.statuses[0].current_limit.is_none());
}
