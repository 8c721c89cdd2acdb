//! Swapping the image: the real binary invoked as `ratelimit` (a symlink, as the image's
//! `/bin/ratelimit`) runs from envoyproxy/ratelimit's environment variables alone.
//!
//! The Envoy Gateway case reproduces the environment of its default rate limit Deployment
//! (envoyproxy/gateway
//! internal/infrastructure/kubernetes/ratelimit/testdata/deployments/default.yaml) with the
//! ports made free and pointed at loopback: xDS over mutual TLS from a management server
//! written here, TLS with a client CA on the gRPC port, a real Redis, `/healthcheck` on
//! `PORT` and metrics on `PROMETHEUS_ADDR`. The file case is the reference's classic layout
//! under `RUNTIME_ROOT`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration_tests::pki::Ca;
use integration_tests::redis::{RedisServer, free_port};
use integration_tests::xds::{ManagementServer, ServerTls, limit};
use integration_tests::{Rls, binary, eventually, http_get, request, wait_for_fresh_window};
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use ironclad_rls::proto::ratelimit::config::ratelimit::v3::RateLimitUnit;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const DEADLINE: Duration = Duration::from_secs(20);
const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// `dir/ratelimit`, a symlink to the binary.
fn ratelimit_link(dir: &Path) -> PathBuf {
    let link = dir.join("ratelimit");
    std::os::unix::fs::symlink(binary(), &link).expect("symlink ratelimit");
    link
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// The lines of the log that are warnings and mention `name`.
fn warnings_naming(rls: &Rls, name: &str) -> usize {
    rls.logs()
        .iter()
        .filter(|l| l.contains("\"WARN\"") && l.contains(name))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn envoy_gateways_default_deployment_runs_with_only_the_image_swapped() {
    wait_for_fresh_window(3600, Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("tempdir");
    // One certificate for everything, as Envoy Gateway's `envoy-rate-limit` Secret.
    let ca = Ca::new("envoy-gateway-test-ca");
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"]);
    let certs = dir.path().join("certs");
    write(&certs.join("tls.crt"), &cert);
    write(&certs.join("tls.key"), &key);
    write(&certs.join("ca.crt"), &ca.pem());
    let path = |f: &str| certs.join(f).to_string_lossy().into_owned();

    let xds = ManagementServer::start(Some(ServerTls {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: ca.pem(),
    }));
    xds.set("1", vec![limit("eg", "k", "v", 1, RateLimitUnit::Hour)]);
    let redis = RedisServer::start();
    let redis_addr = redis.url().trim_start_matches("redis://").to_owned();
    let (port, grpc_port, prom_port) = (free_port(), free_port(), free_port());
    let admin: SocketAddr = ([127, 0, 0, 1], port).into();
    let prometheus: SocketAddr = ([127, 0, 0, 1], prom_port).into();
    let xds_url = xds.addr.to_string();
    let (port, grpc_port) = (port.to_string(), grpc_port.to_string());
    let prometheus_addr = prometheus.to_string();
    let (tls_crt, tls_key, ca_crt) = (path("tls.crt"), path("tls.key"), path("ca.crt"));
    let data = dir.path().join("data").to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = vec![
        // Envoy Gateway's default.yaml, in its order; changed values say why.
        ("RUNTIME_ROOT", &data), // /data
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("RUNTIME_IGNOREDOTFILES", "true"),
        ("RUNTIME_WATCH_ROOT", "false"),
        ("LOG_LEVEL", "info"),
        ("USE_STATSD", "false"),
        ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
        ("CONFIG_GRPC_XDS_SERVER_URL", &xds_url), // envoy-gateway:18001
        ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
        ("GRPC_SERVER_USE_TLS", "true"),
        ("GRPC_SERVER_TLS_CERT", &tls_crt), // /certs/tls.crt
        ("GRPC_SERVER_TLS_KEY", &tls_key),
        ("GRPC_SERVER_TLS_CA_CERT", &ca_crt),
        ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", &tls_crt),
        ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", &tls_key),
        ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", &ca_crt),
        ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ("REDIS_SOCKET_TYPE", "tcp"),
        ("REDIS_URL", &redis_addr), // redis.redis.svc:6379
        ("USE_PROMETHEUS", "true"),
        ("PROMETHEUS_ADDR", &prometheus_addr), // :19001
        ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml"),
        // Not in default.yaml: free ports instead of 8080/8081 on every interface, and JSON
        // logs so the test can read the listening line.
        ("HOST", "127.0.0.1"),
        ("PORT", &port),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", &grpc_port),
        ("LOG_FORMAT", "json"),
    ];
    let mut command = Command::new(ratelimit_link(dir.path()));
    command.envs(env);
    let rls = Rls::start_command(command);
    assert_eq!(rls.admin_addr, admin);

    // The version is fetched over mutual TLS and ACKed by node `envoy-ratelimit`.
    let ack = xds.wait_answer("1", DEADLINE);
    assert_eq!(ack.node_id, "envoy-ratelimit");
    assert_eq!(ack.error, None);
    eventually(DEADLINE, "/healthcheck 200 OK", || {
        (http_get(admin, "/healthcheck") == (200, "OK".to_owned())).then_some(())
    });

    // Decisions from the xDS limits, over TLS with a client certificate.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .identity(Identity::from_pem(&cert, &key))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://{}", rls.grpc_addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over mutual TLS");
    let mut client = RateLimitServiceClient::new(channel);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = client
            .should_rate_limit(request("eg", &[&[("k", "v")]]))
            .await
            .expect("ShouldRateLimit");
        seen.push(r.into_inner().overall_code);
    }
    assert_eq!(seen, vec![OK, OVER]);
    let (_, config) = rls.admin_get("/config");
    assert!(
        config.contains("redis://127.0.0.1"),
        "counters in Redis: {config}"
    );

    // Metrics at PROMETHEUS_ADDR (its default path), with the decisions just made.
    let (status, text) = http_get(prometheus, "/metrics");
    assert_eq!(status, 200);
    let over = integration_tests::metric_value(
        &text,
        "ratelimit_hits_total",
        &[("outcome", "over_limit")],
    );
    assert!(
        text.contains("ratelimit_") && over.is_some_and(|n| n >= 1.0),
        "metrics at PROMETHEUS_ADDR:\n{text}"
    );

    // The one variable of the deployment with no counterpart is named, once.
    assert_eq!(
        warnings_naming(&rls, "PROMETHEUS_MAPPER_YAML"),
        1,
        "{:#?}",
        rls.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_classic_file_layout_under_runtime_root_is_served_and_watched() {
    wait_for_fresh_window(3600, Duration::from_secs(120));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("srv/ratelimit/config/limits.yaml");
    let limits = |value: &str, n: u32| {
        format!(
            "domain: classic\ndescriptors:\n  - key: k\n    value: {value}\n    rate_limit:\n      unit: hour\n      requests_per_unit: {n}\n"
        )
    };
    write(&file, &limits("v", 1));
    let root = dir.path().join("srv").to_string_lossy().into_owned();
    let (port, grpc_port) = (free_port().to_string(), free_port().to_string());
    // `ironclad-rls ratelimit` is the same as the binary under the name `ratelimit`.
    let mut command = Command::new(binary());
    command.arg("ratelimit").envs([
        ("RUNTIME_ROOT", root.as_str()),
        ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ("HOST", "127.0.0.1"),
        ("PORT", &port),
        ("GRPC_HOST", "127.0.0.1"),
        ("GRPC_PORT", &grpc_port),
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "json"),
        ("DEBUG_PORT", "6070"),
    ]);
    let rls = Rls::start_command(command);
    rls.wait_ready(DEADLINE);
    assert_eq!(rls.admin_get("/healthcheck"), (200, "OK".to_owned()));
    let code = |v: &'static str| {
        let rls = &rls;
        async move { rls.overall_code(request("classic", &[&[("k", v)]])).await }
    };
    assert_eq!((code("v").await, code("v").await), (OK, OVER));

    // An edit of the file is picked up.
    write(&file, &limits("w", 1));
    eventually(DEADLINE, "the edit to be installed", || {
        rls.admin_get("/config")
            .1
            .contains("\"generation\":2")
            .then_some(())
    });
    assert_eq!((code("w").await, code("w").await), (OK, OVER));
    assert_eq!(code("v").await, OK, "v is no longer limited");

    // The unsupported variable is named once; no REDIS_URL is said too.
    assert_eq!(warnings_naming(&rls, "DEBUG_PORT"), 1, "{:#?}", rls.logs());
    assert_eq!(warnings_naming(&rls, "REDIS_URL is not set"), 1);
}

#[test]
fn an_invalid_variable_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = ratelimit_link(dir.path());
    for (name, value) in [
        ("PORT", "http"),
        ("CONFIG_TYPE", "CONSUL"),
        ("REDIS_TYPE", "ring"),
    ] {
        let out = Command::new(&link)
            .env(name, value)
            .env("REDIS_SOCKET_TYPE", "tcp")
            .env("REDIS_URL", "127.0.0.1:1")
            .output()
            .expect("run ratelimit");
        assert!(!out.status.success(), "{name}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{name}=\"{value}\"")),
            "{name}: {err}"
        );
    }
}
