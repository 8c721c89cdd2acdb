//! Swapping the image: the real binary invoked as `ratelimit` (a symlink, as the image's
//! `/bin/ratelimit`) runs from envoyproxy/ratelimit's environment variables alone.
//!
//! The Envoy Gateway case reproduces the environment of its default rate limit Deployment
//! (envoyproxy/gateway
//! internal/infrastructure/kubernetes/ratelimit/testdata/deployments/default.yaml) with the
//! ports made free and pointed at loopback: xDS over mutual TLS from a management server
//! written here, TLS with a client CA on the gRPC port, a real Redis, `/healthcheck` on
//! `PORT` and metrics on `PROMETHEUS_ADDR`. The file case is the reference's classic layout
//! under `RUNTIME_ROOT`. Then the variables of the features that came last, each through
//! the real binary: `REDIS_TYPE=sentinel` against a real sentinel (with both passwords),
//! `TRACING_ENABLED` with an OTLP/HTTP receiver run here, `QUOTA_MODE` and
//! `RESPONSE_DYNAMIC_METADATA` changing the answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::envoy::serve_http_with_body;
use integration_tests::pki::Ca;
use integration_tests::redis::{RedisServer, Sentinel, free_port};
use integration_tests::xds::{ManagementServer, ServerTls, limit};
use integration_tests::{Rls, binary, eventually, http_get, request, wait_for_fresh_window};
use ironclad_rls::proto::RateLimitResponse;
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use ironclad_rls::proto::ratelimit::config::ratelimit::v3::RateLimitUnit;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
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

/// The binary as `ratelimit` on the classic file layout (`limits` in
/// `RUNTIME_ROOT/ratelimit/config/limits.yaml`), loopback ports, JSON logs at info, and the
/// variables in `env`; ready to answer.
fn start_ratelimit(dir: &Path, limits: &str, env: &[(&str, &str)]) -> Rls {
    let root = dir.join("srv");
    write(&root.join("ratelimit/config/limits.yaml"), limits);
    let root = root.to_string_lossy().into_owned();
    let (port, grpc_port) = (free_port().to_string(), free_port().to_string());
    let mut command = Command::new(ratelimit_link(dir));
    command
        .envs([
            ("RUNTIME_ROOT", root.as_str()),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("HOST", "127.0.0.1"),
            ("PORT", &port),
            ("GRPC_HOST", "127.0.0.1"),
            ("GRPC_PORT", &grpc_port),
            ("LOG_LEVEL", "info"),
            ("LOG_FORMAT", "json"),
        ])
        .envs(env.iter().copied());
    let rls = Rls::start_command(command);
    rls.wait_ready(DEADLINE);
    rls
}

/// The whole answer to one request.
async fn answer(rls: &Rls, req: ironclad_rls::proto::RateLimitRequest) -> RateLimitResponse {
    rls.client()
        .await
        .should_rate_limit(req)
        .await
        .expect("ShouldRateLimit")
        .into_inner()
}

/// The process's argv, as the kernel shows it to anyone on the host.
fn cmdline(rls: &Rls) -> String {
    std::fs::read(format!("/proc/{}/cmdline", rls.pid()))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .expect("read /proc/<pid>/cmdline")
}

/// A sentinel with a password, watching a password-protected master (quorum 1), once it
/// names the master (authenticated, as the service will ask).
fn sentinel(master: &str, master_port: u16, master_password: &str, password: &str) -> Sentinel {
    let mut sentinel = Sentinel::start(&format!(
        "requirepass {password}\n\
         sentinel monitor {master} 127.0.0.1 {master_port} 1\n\
         sentinel auth-pass {master} {master_password}\n"
    ));
    let deadline = Instant::now() + DEADLINE;
    while !sentinel
        .cli(
            Some(password),
            &["SENTINEL", "get-master-addr-by-name", master],
        )
        .contains(&master_port.to_string())
    {
        sentinel.assert_running();
        assert!(
            Instant::now() < deadline,
            "the sentinel on {} did not name the master",
            sentinel.port
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sentinel
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_type_sentinel_counts_on_the_master_the_sentinel_names() {
    wait_for_fresh_window(3600, Duration::from_secs(120));
    let (master_pw, sentinel_pw) = ("master-pw-7d1", "sentinel-pw-3c9");
    let master = RedisServer::start_with(&["--requirepass", master_pw]);
    let sentinel = sentinel("mymaster", master.port, master_pw, sentinel_pw);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("mymaster,127.0.0.1:{}", sentinel.port);
    // Both passwords are required: the sentinel answers nothing without its own, the
    // master counts nothing without REDIS_AUTH.
    let rls = start_ratelimit(
        dir.path(),
        "domain: sent\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: hour\n      requests_per_unit: 3\n",
        &[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", &url),
            ("REDIS_AUTH", master_pw),
            ("REDIS_SENTINEL_AUTH", sentinel_pw),
        ],
    );
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(
            rls.overall_code(request("sent", &[&[("user", "ann")]]))
                .await,
        );
    }
    assert_eq!(codes, vec![OK, OK, OK, OVER], "{:#?}", rls.logs());

    // Counted on the master: its keys name the descriptor.
    let keys = master.cli(&["-a", master_pw, "--no-auth-warning", "KEYS", "*"]);
    assert!(
        keys.lines()
            .any(|k| k.contains("user") && k.contains("ann")),
        "the master holds the counter: {keys:?}"
    );
    // The passwords were handed over inside the process: not in argv, not in the log,
    // not on /config.
    let shown = [
        cmdline(&rls),
        rls.logs().join("\n"),
        rls.admin_get("/config").1,
    ];
    for (what, text) in ["argv", "log", "/config"].iter().zip(&shown) {
        assert!(
            !text.contains(master_pw) && !text.contains(sentinel_pw),
            "a password in the {what}: {text}"
        );
    }
    assert_eq!(warnings_naming(&rls, "REDIS_SENTINEL_AUTH"), 0);
}

/// One exported span: its resource's service name and its trace id.
type Received = (String, Vec<u8>);

/// Every span an OTLP/HTTP export delivered, and the paths posted to.
#[derive(Clone, Default)]
struct Spans {
    spans: Arc<Mutex<Vec<Received>>>,
    paths: Arc<Mutex<Vec<String>>>,
}

impl Spans {
    fn add(&self, path: &str, body: &[u8]) {
        self.paths.lock().expect("lock").push(path.to_owned());
        let Ok(req) = ExportTraceServiceRequest::decode(body) else {
            return;
        };
        let mut spans = self.spans.lock().expect("lock");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push((service.clone(), span.trace_id));
            }
        }
    }

    /// Polls until a span of `trace_id` arrived; its service name.
    async fn wait_for(&self, trace_id: &[u8], rls: &Rls) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .find(|(_, id)| id == trace_id)
                .map(|(s, _)| s.clone());
            if let Some(service) = found {
                return service;
            }
            assert!(
                Instant::now() < deadline,
                "no span of the caller's trace reached the receiver; the service's log:\n{}",
                rls.logs().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_enabled_exports_the_callers_trace_as_ratelimit_over_otlp_http() {
    let spans = Spans::default();
    // An OTLP/HTTP receiver: each export answered 200 with an empty export response (which
    // encodes to no bytes).
    let port = serve_http_with_body({
        let spans = spans.clone();
        move |head, body| {
            spans.add(head.split(' ').nth(1).unwrap_or_default(), body);
            ("200 OK", "application/x-protobuf", String::new())
        }
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    // Only the reference's variables: the protocol (http) and the service name
    // (RateLimit) are its defaults. OTEL_BSP_SCHEDULE_DELAY is read by the SDK itself and
    // only shortens the wait.
    let rls = start_ratelimit(
        dir.path(),
        "domain: traced\ndescriptors:\n  - key: user\n    rate_limit:\n      unit: hour\n      requests_per_unit: 5\n",
        &[
            ("TRACING_ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut req = tonic::Request::new(request("traced", &[&[("user", "ann")]]));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .expect("ASCII"),
    );
    let code = rls
        .client()
        .await
        .should_rate_limit(req)
        .await
        .expect("ShouldRateLimit")
        .into_inner()
        .overall_code;
    assert_eq!(code, OK);

    let id: Vec<u8> = (0..trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).expect("hex"))
        .collect();
    let service = spans.wait_for(&id, &rls).await;
    assert_eq!(service, "RateLimit", "the reference's default service name");
    let paths = spans.paths.lock().expect("lock").clone();
    assert!(
        paths.iter().all(|p| p == "/v1/traces"),
        "OTEL_EXPORTER_OTLP_ENDPOINT is a base; OTLP/HTTP posts under it: {paths:?}"
    );
    assert_eq!(warnings_naming(&rls, "OTEL_"), 0, "{:#?}", rls.logs());
}

const QUOTA_LIMITS: &str = "domain: quota
descriptors:
  - key: tokens
    rate_limit:
      unit: hour
      requests_per_unit: 1
    metadata:
      tier: gold
  - key: calls
    rate_limit:
      unit: hour
      requests_per_unit: 10
";

#[tokio::test(flavor = "multi_thread")]
async fn quota_mode_and_dynamic_metadata_change_the_answers() {
    wait_for_fresh_window(3600, Duration::from_secs(120));
    let both: &[&[(&str, &str)]] = &[&[("tokens", "ann")], &[("calls", "ann")]];
    let (on_dir, off_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let on = start_ratelimit(
        on_dir.path(),
        QUOTA_LIMITS,
        &[
            ("QUOTA_MODE", "true"),
            ("RESPONSE_DYNAMIC_METADATA", "true"),
        ],
    );
    // The same limits without the two variables: the answers they change.
    let off = start_ratelimit(off_dir.path(), QUOTA_LIMITS, &[]);

    for rls in [&on, &off] {
        let first = answer(rls, request("quota", both)).await;
        assert_eq!(first.overall_code, OK);
    }
    let second_on = answer(&on, request("quota", both)).await;
    let second_off = answer(&off, request("quota", both)).await;
    let codes = |r: &RateLimitResponse| r.statuses.iter().map(|s| s.code).collect::<Vec<_>>();
    // The quota descriptor is over its limit in both; only in quota mode does the other,
    // within its limit, keep the request admitted.
    assert_eq!(codes(&second_on), vec![OVER, OK]);
    assert_eq!(
        second_on.overall_code, OK,
        "quota mode: not every descriptor is over"
    );
    assert_eq!(codes(&second_off), vec![OVER, OK]);
    assert_eq!(second_off.overall_code, OVER);
    // The quota descriptor alone, over its limit, is denied in quota mode too.
    let alone = answer(&on, request("quota", &[&[("tokens", "ann")]])).await;
    assert_eq!(alone.overall_code, OVER);

    // The reference's dynamic_metadata with RESPONSE_DYNAMIC_METADATA=true, none without.
    let metadata = second_on
        .dynamic_metadata
        .as_ref()
        .expect("dynamic_metadata with RESPONSE_DYNAMIC_METADATA=true");
    let text = format!("{metadata:?}");
    assert!(
        metadata.fields.contains_key("domain") && metadata.fields.contains_key("descriptors"),
        "{text}"
    );
    assert!(text.contains("quota") && text.contains("tokens"), "{text}");
    assert!(second_off.dynamic_metadata.is_none());
    for rls in [&on, &off] {
        assert_eq!(warnings_naming(rls, "QUOTA_MODE"), 0);
        assert_eq!(warnings_naming(rls, "RESPONSE_DYNAMIC_METADATA"), 0);
    }
}
