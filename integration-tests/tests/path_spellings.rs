//! Spellings that some backends read as a separator cannot slip past a prefix
//! (docs/limits-format.md §3): `%2F`, `%5C`, `\` count as `/` and `;` parameters are dropped,
//! through the real binary on every store; and the Envoy that `render envoy` prints refuses an
//! escaped slash instead of passing it on.

use std::time::Duration;

use integration_tests::envoy::{Envoy, send, serve_http};
use integration_tests::redis::{RedisServer, free_port};
use integration_tests::{Rls, example, request, run_cli, temp_file, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;

/// The three spellings of `/auth/admin/realms/API-TEST/users`, and more of the same.
const SPELLINGS: [&str; 7] = [
    "/auth/admin/realms/API-TEST%2Fusers",
    "/auth/admin/realms/API-TEST;x=1/users",
    "/auth/admin/realms/API-TEST\\users",
    "/auth/admin/realms/API-TEST%2fusers",
    "/auth/admin/realms/API-TEST%5Cusers",
    "/auth/admin/realms/API-TEST%5c..%5cAPI-TEST/users",
    "/auth/admin;jsessionid=1/realms/API-TEST;a;b/users?x=%2F",
];

/// Each spelling, for one consumer, is counted by the API-TEST prefix's counter (quota 10 a
/// minute in the full example), not only by `/auth`'s (200 000).
async fn every_spelling_hits_the_prefix_counter(rls: &Rls) {
    let mut c = rls.client().await;
    wait_for_fresh_window(60, Duration::from_secs(10));
    let call = |path: &str| {
        request(
            "kcse",
            &[&[
                ("endpoint", "kcserl"),
                ("path", path),
                ("consumer", "spelling"),
            ]],
        )
    };
    let canonical = c
        .should_rate_limit(call("/auth/admin/realms/API-TEST/users"))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(canonical.statuses[0].limit_remaining, 9);
    for (i, path) in SPELLINGS.iter().enumerate() {
        let resp = c
            .should_rate_limit(call(path))
            .await
            .expect("answered")
            .into_inner();
        let s = &resp.statuses[0];
        let limit = s.current_limit.as_ref().expect("a limit applies");
        assert_eq!(
            limit.name, "kcserl /auth/admin/realms/API-TEST/ client",
            "{path} escaped the API-TEST counters"
        );
        // One counter shared by every spelling: it counts down across them.
        assert_eq!(s.limit_remaining, 8 - i as u32, "{path}");
    }
    // Two left; the third call of any spelling is over the limit.
    for path in &SPELLINGS[..2] {
        assert_eq!(rls.overall_code(call(path)).await, Code::Ok as i32);
    }
    assert_eq!(
        rls.overall_code(call(SPELLINGS[2])).await,
        Code::OverLimit as i32
    );
}

#[tokio::test]
async fn spellings_hit_the_prefix_counters_in_memory() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    every_spelling_hits_the_prefix_counter(&rls).await;
}

#[tokio::test]
async fn spellings_hit_the_prefix_counters_on_redis() {
    let redis = RedisServer::start();
    let rls = Rls::start(&[
        "--config",
        example("full-example.yaml").to_str().unwrap(),
        "--redis-url",
        &redis.url(),
        // A loaded test machine must not turn a slow first call into a failure: this test is
        // about matching, the deadline has its own tests.
        "--redis-timeout",
        "2s",
    ]);
    rls.wait_ready(Duration::from_secs(20));
    every_spelling_hits_the_prefix_counter(&rls).await;
}

const GATEWAY_LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: identity server
      shortname: idp
      endpoint: idp.test:8000
      uri_prefixes:
        - { prefix: /auth, unit: hour, value: 1000, anon_value: 1000 }
        - { prefix: /auth/admin/realms/API-TEST/, unit: hour, value: 2, anon_value: 2 }
";

#[test]
fn rendered_envoy_refuses_escaped_slashes() {
    let (_limits_dir, limits) = temp_file("limits.yaml", GATEWAY_LIMITS);
    let rls = Rls::start(&["--config", limits.to_str().unwrap()]);
    let listen = free_port();
    // The upstream answers with the path it was sent.
    let upstream_port = serve_http(|head| {
        let path = head.split_whitespace().nth(1).unwrap_or("?").to_owned();
        ("200 OK", "text/plain", path)
    });
    let upstream = format!("idp=127.0.0.1:{upstream_port}");
    let out = run_cli(&[
        "render",
        "envoy",
        "--config",
        limits.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{listen}"),
        "--rls-addr",
        &format!("127.0.0.1:{}", rls.grpc_addr.port()),
        "--upstream",
        &upstream,
        "--timeout",
        "2s",
    ]);
    assert!(
        out.status.success(),
        "render envoy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(
        config.contains("path_with_escaped_slashes_action: REJECT_REQUEST"),
        "{config}"
    );
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(&config, listen, dir.path());
    wait_for_fresh_window(3600, Duration::from_secs(60));
    let get = |path: &str| send(envoy.port, "GET", path, "idp.test", &[], b"").status;
    let asked = || {
        rls.metric("ratelimit_requests_total", &[("code", "ok")])
            .unwrap_or(0.0)
    };

    // An escaped slash, in any case, is refused before the rate limit filter and the upstream.
    for path in [
        "/auth/admin/realms/API-TEST%2Fusers",
        "/auth/admin/realms/API-TEST%2fusers",
        "/auth/admin/realms/API-TEST%5Cusers",
        "/auth/admin/realms/API-TEST%5cusers",
    ] {
        assert_eq!(get(path), 400, "{path}");
    }
    assert_eq!(asked(), 0.0, "no refused request reached the RLS");
    // Anonymous requests share 2 under API-TEST, whatever the spelling Envoy lets through.
    let through = [
        "/auth/admin/realms/API-TEST;x=1/users",
        "/auth/admin/realms/API-TEST\\users",
        "/auth/admin/realms/API-TEST/users",
    ];
    let answers: Vec<(u16, String)> = through
        .iter()
        .map(|p| {
            let r = send(envoy.port, "GET", p, "idp.test", &[], b"");
            (r.status, r.body)
        })
        .collect();
    assert_eq!(
        answers,
        [
            // Forwarded as sent; the RLS drops the parameter for matching.
            (200, "/auth/admin/realms/API-TEST;x=1/users".to_owned()),
            // Envoy's `normalize_path` turns `\\` into `/`.
            (200, "/auth/admin/realms/API-TEST/users".to_owned()),
            // The third anonymous request under API-TEST: the two before were counted there.
            (429, String::new()),
        ]
    );
}
