//! The xDS configuration source through the real binary and real gRPC: a management server
//! written here (`integration_tests::xds`, the aggregated discovery service as Envoy Gateway
//! serves it) sends `RateLimitConfig`s; the service applies them (its decisions change),
//! ACKs each version that loads, NACKs one that does not with the loader's error and keeps
//! serving the previous limits, and survives the management server's restart.

use std::time::{Duration, Instant};

use integration_tests::xds::{ManagementServer, limit};
use integration_tests::{Rls, eventually, request, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::ratelimit::config::ratelimit::v3::RateLimitUnit;

const DEADLINE: Duration = Duration::from_secs(20);
const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

fn start_rls(server: &ManagementServer, extra: &[&str]) -> Rls {
    let url = server.addr.to_string();
    let mut args = vec![
        "--config-xds",
        url.as_str(),
        "--config-xds-node-id",
        "test-node",
        // Fast reconnection for the restart; the doubling is the unit tests'.
        "--config-xds-backoff-initial",
        "50ms",
        "--config-xds-backoff-max",
        "300ms",
    ];
    args.extend_from_slice(extra);
    Rls::start(&args)
}

fn generation(rls: &Rls) -> u64 {
    let (_, body) = rls.admin_get("/config");
    let v: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
    v["generation"].as_u64().expect("generation")
}

async fn codes(rls: &Rls, domain: &str, value: &str, n: usize) -> Vec<i32> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(rls.overall_code(request(domain, &[&[("k", value)]])).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn xds_limits_are_applied_acked_nacked_and_kept_across_a_server_restart() {
    // Hour windows: the counts below cannot straddle a boundary unless one is within reach.
    wait_for_fresh_window(3600, Duration::from_secs(120));
    let mut server = ManagementServer::start(None);
    let rls = start_rls(&server, &[]);

    // Connected, but nothing served yet: not ready, and the reference's healthcheck is 500.
    eventually(DEADLINE, "the first request", || {
        server.recorded().first().cloned()
    });
    let first = &server.recorded()[0];
    assert_eq!(first.node_id, "test-node");
    assert_eq!(first.type_url, integration_tests::xds::TYPE_URL);
    assert_eq!(first.version_info, "", "nothing applied yet");
    assert_eq!(rls.admin_get("/readyz").0, 503);
    assert_eq!(rls.admin_get("/healthcheck").0, 500);

    // Version 1 applies and is ACKed; the service becomes ready.
    server.set("1", vec![limit("xds", "k", "v", 2, RateLimitUnit::Hour)]);
    let ack = server.wait_answer("1", DEADLINE);
    assert_eq!(ack.version_info, "1", "ACK carries the version applied");
    assert_eq!(ack.error, None);
    rls.wait_ready(DEADLINE);
    assert_eq!(rls.admin_get("/healthcheck"), (200, "OK".to_owned()));
    assert_eq!(codes(&rls, "xds", "v", 3).await, vec![OK, OK, OVER]);
    let (_, config) = rls.admin_get("/config");
    assert!(config.contains("\"xds:xds\""), "{config}");

    // Version 2 changes the limits: the decisions change with it.
    let sent = Instant::now();
    server.set("2", vec![limit("xds", "k", "w", 1, RateLimitUnit::Hour)]);
    let ack = server.wait_answer("2", DEADLINE);
    // A figure, not an assertion: how long from the push to the ACK (applied by then).
    eprintln!("xDS version 2: pushed to ACK in {:?}", sent.elapsed());
    assert_eq!(
        (ack.version_info.as_str(), ack.error.as_deref()),
        ("2", None)
    );
    assert_eq!(codes(&rls, "xds", "w", 2).await, vec![OK, OVER]);
    assert_eq!(
        codes(&rls, "xds", "v", 3).await,
        vec![OK; 3],
        "v has no limit in version 2"
    );
    let served = generation(&rls);

    // Version 3 does not load: NACK with the loader's error (source and field path), the
    // previous version's number, and version 2 keeps serving.
    let mut bad = limit("xds", "k", "x", 1, RateLimitUnit::Unknown);
    bad.name = "bad-resource".into();
    server.set("3", vec![bad]);
    let nack = server.wait_answer("3", DEADLINE);
    assert_eq!(
        nack.version_info, "2",
        "a NACK carries the version still applied"
    );
    let error = nack.error.expect("a NACK has error_detail");
    assert!(error.contains("xds:bad-resource"), "{error}");
    assert!(error.contains("descriptors[0].rate_limit"), "{error}");
    assert_eq!(generation(&rls), served, "nothing installed");
    assert_eq!(
        codes(&rls, "xds", "w", 1).await,
        vec![OVER],
        "version 2 still serves"
    );
    assert!(
        rls.logs().iter().any(|l| l.contains("NACK")),
        "the rejection is logged"
    );

    // The management server goes away: the service keeps serving version 2 and ready.
    let streams_before = server.streams();
    server.stop();
    eventually(DEADLINE, "the stream end to be logged", || {
        rls.logs()
            .iter()
            .any(|l| l.contains("xDS configuration stream ended"))
            .then_some(())
    });
    assert_eq!(codes(&rls, "xds", "w", 1).await, vec![OVER]);
    assert_eq!(rls.admin_get("/healthcheck").0, 200);

    // Back with a new version: the client reconnects by itself, says which version it
    // has, and applies the new one.
    server.set("4", vec![limit("xds", "k", "y", 1, RateLimitUnit::Hour)]);
    let back = Instant::now();
    server.resume();
    let ack = server.wait_answer("4", DEADLINE);
    eprintln!(
        "xDS server back: reconnected and version 4 ACKed in {:?} (backoff 50ms..300ms)",
        back.elapsed()
    );
    assert_eq!(ack.error, None);
    assert!(server.streams() > streams_before, "a new stream");
    let reconnect = server
        .recorded()
        .into_iter()
        .find(|r| r.stream == ack.stream && r.response_nonce.is_empty())
        .expect("the new stream's first request");
    assert_eq!(
        reconnect.version_info, "2",
        "the last version applied, not the NACKed one"
    );
    assert_eq!(codes(&rls, "xds", "y", 2).await, vec![OK, OVER]);
}

#[tokio::test(flavor = "multi_thread")]
async fn force_start_serves_and_is_ready_before_any_configuration() {
    // A server that never answers: nothing is ever configured.
    let server = ManagementServer::start(None);
    let rls = start_rls(&server, &["--force-start-without-initial-config"]);
    rls.wait_ready(DEADLINE);
    assert_eq!(rls.admin_get("/healthcheck"), (200, "OK".to_owned()));
    assert_eq!(codes(&rls, "any", "v", 3).await, vec![OK; 3], "no limits");
    // And the first configuration, when it comes, is applied like any other.
    server.set("1", vec![limit("any", "k", "v", 1, RateLimitUnit::Hour)]);
    server.wait_answer("1", DEADLINE);
    wait_for_fresh_window(3600, Duration::from_secs(30));
    assert_eq!(codes(&rls, "any", "v", 2).await, vec![OK, OVER]);
}

#[test]
fn xds_and_files_are_exclusive_and_a_bad_address_is_refused() {
    let out = integration_tests::serve_until_exit(
        &["--config", "x.yaml", "--config-xds", "127.0.0.1:1"],
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--config-xds"), "{err}");

    let out = integration_tests::serve_until_exit(&["--config-xds", "grpc://h:1"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http:// or https://"), "{err}");
}

/// Where xDS meets the shared store and shadow mode: two replicas fed by one management
/// server count into one Redis; a new version keeps the counts made under the previous one;
/// a resource's `shadow_mode` answers OK over the limit.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_redis_share_xds_limits_across_versions_and_honour_shadow_mode() {
    use ironclad_rls::proto::ratelimit::config::ratelimit::v3::{
        RateLimitDescriptor, RateLimitPolicy,
    };
    wait_for_fresh_window(3600, Duration::from_secs(120));
    let redis = integration_tests::redis::RedisServer::start();
    let url = redis.url();
    let server = ManagementServer::start(None);
    let a = start_rls(&server, &["--redis-url", &url, "--redis-timeout", "2s"]);
    let b = start_rls(&server, &["--redis-url", &url, "--redis-timeout", "2s"]);
    server.set("1", vec![limit("shared", "k", "v", 3, RateLimitUnit::Hour)]);
    a.wait_ready(DEADLINE);
    b.wait_ready(DEADLINE);
    assert_eq!(codes(&a, "shared", "v", 1).await, vec![OK]);
    assert_eq!(codes(&b, "shared", "v", 1).await, vec![OK]);

    // Version 2: the same limit plus a shadow rule. The count of `v` goes on from 2.
    let mut v2 = limit("shared", "k", "v", 3, RateLimitUnit::Hour);
    v2.descriptors.push(RateLimitDescriptor {
        key: "k".into(),
        value: "s".into(),
        rate_limit: Some(RateLimitPolicy {
            unit: RateLimitUnit::Hour as i32,
            requests_per_unit: 1,
            ..Default::default()
        }),
        shadow_mode: true,
        ..Default::default()
    });
    server.set("2", vec![v2]);
    eventually(DEADLINE, "both replicas to ACK version 2", || {
        let acks = server
            .recorded()
            .into_iter()
            .filter(|r| r.response_nonce == "n2" && r.version_info == "2")
            .count();
        (acks >= 2).then_some(())
    });
    assert_eq!(
        codes(&b, "shared", "v", 1).await,
        vec![OK],
        "the third of 3"
    );
    assert_eq!(
        codes(&a, "shared", "v", 1).await,
        vec![OVER],
        "counted across versions and replicas"
    );
    assert_eq!(
        codes(&a, "shared", "s", 3).await,
        vec![OK; 3],
        "shadow mode from the resource never rejects"
    );
    let shadowed = a.metric("ratelimit_hits_total", &[("outcome", "shadow_over_limit")]);
    assert_eq!(
        shadowed,
        Some(2.0),
        "the two hits past the shadow limit are counted as such"
    );
}
