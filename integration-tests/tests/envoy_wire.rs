//! Wire compatibility with a real Envoy 1.40: its global rate limit filter calls the real
//! binary over HTTP/2 and enforces the answers, with `x-ratelimit-*` headers.

use integration_tests::envoy::{Envoy, start_upstream};
use integration_tests::redis::free_port;
use integration_tests::{Rls, example, wait_for_fresh_window};

fn bootstrap(listen: u16, rls: u16, upstream: u16) -> String {
    format!(
        r#"static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {listen}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - generic_key: {{descriptor_key: endpoint, descriptor_value: kcserl}}
                    - request_headers: {{header_name: ":path", descriptor_key: path}}
                    - request_headers: {{header_name: synapse-consumerid, descriptor_key: consumer, skip_if_absent: true}}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: kcse
              timeout: 1s
              failure_mode_deny: true
              enable_x_ratelimit_headers: DRAFT_VERSION_03
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: rls}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: rls
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: rls
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {rls}}}}}}}}}]}}]
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
"#
    )
}

/// `GET path` through Envoy with an optional consumer header: (status, lower-cased head).
fn get(port: u16, path: &str, consumer: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let header = consumer
        .map(|c| format!("synapse-consumerid: {c}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let head = raw
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head)
}

#[test]
fn envoy_enforces_the_answers() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let upstream = start_upstream();
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _envoy = Envoy::start(
        &bootstrap(listen, rls.grpc_addr.port(), upstream),
        listen,
        dir.path(),
    );
    wait_for_fresh_window(60, std::time::Duration::from_secs(15));

    // test_client2 may make 10 requests a minute under /auth.
    for i in 0..10 {
        let (status, head) = get(listen, "/auth/realms/x", Some("test_client2"));
        assert_eq!(status, 200, "request {i}: {head}");
    }
    let (status, head) = get(listen, "/auth/realms/x", Some("test_client2"));
    assert_eq!(status, 429, "{head}");
    assert!(head.contains("x-envoy-ratelimited: true"), "{head}");
    assert!(
        head.contains("x-ratelimit-limit: 10, 10;w=60;name=\"kcserl /auth invoker test_client2\""),
        "{head}"
    );
    assert!(head.contains("x-ratelimit-remaining: 0"), "{head}");

    // Another consumer has its own budget; Envoy's merge_slashes and our normalisation agree.
    let (status, head) = get(listen, "/auth//realms/./x", Some("someone"));
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("x-ratelimit-remaining: 199999"), "{head}");
    // Anonymous on the token endpoint: 10 a minute, shared.
    let token = "/auth/realms/API-TEST/protocol/openid-connect/token";
    let statuses: Vec<u16> = (0..11).map(|_| get(listen, token, None).0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses[10], 429);

    // With the service gone and failure_mode_deny, Envoy refuses.
    drop(rls);
    let (status, _) = get(listen, "/auth/realms/x", Some("fresh"));
    assert_ne!(
        status, 200,
        "failure_mode_deny must not let requests through without the RLS"
    );
}

#[test]
fn envoy_reads_the_window_multiplier_of_a_shared_bucket() {
    // The seed's egress bucket, slowed to 5 tokens per 15 minutes so no token comes back
    // during the test: Envoy's headers carry the 900 s window from `unit_multiplier`.
    let (_dir, limits) = integration_tests::temp_file(
        "limits.yaml",
        "kcse_rate_limits:
  endpoints:
    - name: egress
      shortname: kcserl
      overall_limit: 5
      unit: minute
      unit_multiplier: 15
      algorithm: token_bucket
",
    );
    let rls = Rls::start(&["--config", limits.to_str().unwrap()]);
    let upstream = start_upstream();
    let listen = free_port();
    let dir = tempfile::tempdir().unwrap();
    let _envoy = Envoy::start(
        &bootstrap(listen, rls.grpc_addr.port(), upstream),
        listen,
        dir.path(),
    );
    for i in 0..5 {
        let (status, head) = get(listen, "/geocode", None);
        assert_eq!(status, 200, "request {i}: {head}");
    }
    let (status, head) = get(listen, "/geocode", None);
    assert_eq!(status, 429, "{head}");
    assert!(
        head.contains("x-ratelimit-limit: 5, 5;w=900;name=\"kcserl overall\""),
        "{head}"
    );
    assert!(head.contains("x-ratelimit-remaining: 0"), "{head}");
}
