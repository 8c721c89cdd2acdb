//! Envoy Gateway's generated configurations: our own fixtures under `envoy_gateway/`, one per
//! RateLimitConfig its translator tests emit (envoyproxy/gateway
//! `internal/xds/translator/testdata/out/ratelimit-config/*.yaml`, named alike), with its
//! serialisation (a top-level `name`, every field written, zero values such as
//! `rate_limit: null`, `value: ""`, `replaces: []`, upper-case units, several documents in one
//! file). All 26 load; a spread of them is limited at the configured number for the
//! descriptors Envoy sends from the paired `*.routes.yaml` actions, through the real binary on
//! both stores and through a real Envoy 1.40 with those actions.

mod compat;

use std::time::Duration;

use St::{L, Over, Shadowed};
use compat::{Call, OK, OVER, St, call, run};
use integration_tests::envoy::{self, Envoy, send, start_upstream};
use integration_tests::redis::RedisServer;
use integration_tests::{Rls, run_cli, wait_for_fresh_window};

fn dir() -> String {
    format!("{}/tests/envoy_gateway", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn all_26_generated_configurations_load() {
    let files: Vec<_> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 26);
    for f in &files {
        let out = run_cli(&["validate", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Together: 33 domains, the second and third documents of a file included.
    let out = run_cli(&["validate", &dir()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("domain ")).count(),
        33,
        "{stdout}"
    );
    for domain in [
        "team-x/policy-many-1",
        "team-x/policy-many-2",
        "gw-listener-2",
    ] {
        assert!(
            stdout.contains(&format!("domain {domain} ")),
            "{domain} in\n{stdout}"
        );
    }
}

const ROUTE_A: (&str, &str) = ("route-a", "route-a");
const ROUTE_B: (&str, &str) = ("route-b", "route-b");

/// Per fixture, what Envoy sends from the routes' actions (`generic_key` of the route, then
/// the rule's matches), and the answers: each limited at its configured number.
const TABLE: &[(&str, &[Call])] = &[
    (
        "distinct-match: request_headers x-user-id, one counter per value",
        &[
            call(
                "gw-distinct",
                &[&[ROUTE_A, ("rule-0-match-0", "alice")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-distinct",
                &[&[ROUTE_A, ("rule-0-match-0", "alice")]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-distinct",
                &[&[ROUTE_A, ("rule-0-match-0", "alice")]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-distinct",
                &[&[ROUTE_A, ("rule-0-match-0", "alice")]],
                OVER,
                &[Over],
            ),
            call(
                "gw-distinct",
                &[&[ROUTE_A, ("rule-0-match-0", "bob")]],
                OK,
                &[L(2)],
            ),
        ],
    ),
    (
        "value-match: header_value_match, one counter",
        &[
            call(
                "gw-value",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-value",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-value",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-value",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OVER,
                &[Over],
            ),
        ],
    ),
    (
        "masked-remote-address-match, and distinct-remote-address-match (per address)",
        &[
            call(
                "gw-masked",
                &[&[ROUTE_A, ("masked_remote_address", "10.20.0.0/16")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-masked",
                &[&[ROUTE_A, ("masked_remote_address", "10.20.0.0/16")]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-masked",
                &[&[ROUTE_A, ("masked_remote_address", "10.20.0.0/16")]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-masked",
                &[&[ROUTE_A, ("masked_remote_address", "10.20.0.0/16")]],
                OVER,
                &[Over],
            ),
            call(
                "gw-distinct-addr",
                &[&[
                    ROUTE_A,
                    ("masked_remote_address", "10.20.0.0/16"),
                    ("remote_address", "10.20.1.1"),
                ]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-distinct-addr",
                &[&[
                    ROUTE_A,
                    ("masked_remote_address", "10.20.0.0/16"),
                    ("remote_address", "10.20.1.1"),
                ]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-distinct-addr",
                &[&[
                    ROUTE_A,
                    ("masked_remote_address", "10.20.0.0/16"),
                    ("remote_address", "10.20.1.1"),
                ]],
                OVER,
                &[Over],
            ),
            call(
                "gw-distinct-addr",
                &[&[
                    ROUTE_A,
                    ("masked_remote_address", "10.20.0.0/16"),
                    ("remote_address", "10.20.1.2"),
                ]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-invert",
                &[&[ROUTE_A, ("masked_remote_address", "invert:10.20.30.0/24")]],
                OK,
                &[L(2)],
            ),
        ],
    ),
    (
        "method-match: GET and PUT share rule 0, POST is rule 1",
        &[
            call(
                "gw-method",
                &[&[ROUTE_A, ("rule-0-method", "rule-0-method")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-method",
                &[&[ROUTE_A, ("rule-0-method", "rule-0-method")]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-method",
                &[&[ROUTE_A, ("rule-0-method", "rule-0-method")]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-method",
                &[&[ROUTE_A, ("rule-0-method", "rule-0-method")]],
                OVER,
                &[Over],
            ),
            call(
                "gw-method",
                &[&[ROUTE_A, ("rule-1-method", "rule-1-method")]],
                OK,
                &[L(29)],
            ),
        ],
    ),
    (
        "path-match and query-parameters-match",
        &[
            call(
                "gw-path",
                &[&[ROUTE_A, ("rule-0-path", "rule-0-path")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-path",
                &[&[ROUTE_A, ("rule-1-path", "rule-1-path")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-path",
                &[&[ROUTE_A, ("rule-0-path", "rule-0-path")]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-path",
                &[&[ROUTE_A, ("rule-0-path", "rule-0-path")]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-path",
                &[&[ROUTE_A, ("rule-0-path", "rule-0-path")]],
                OVER,
                &[Over],
            ),
            call(
                "gw-query",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                ]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-query",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                ]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-query",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                ]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-query",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                ]],
                OVER,
                &[Over],
            ),
            // Only the header matched (no query parameter): Envoy drops the descriptor; were
            // it sent with one entry less, it would match no limit.
            call(
                "gw-query",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[St::N],
            ),
        ],
    ),
    (
        "shared rules (one policy's domain, whichever route sends it) and per-route rules",
        &[
            call(
                "team-x/policy-shared",
                &[&[
                    ("team-x/policy-shared/rule/0", "team-x/policy-shared/rule/0"),
                    ("rule-0-match-0", "u"),
                ]],
                OK,
                &[L(2)],
            ),
            call(
                "team-x/policy-shared",
                &[&[
                    ("team-x/policy-shared/rule/0", "team-x/policy-shared/rule/0"),
                    ("rule-0-match-0", "u"),
                ]],
                OK,
                &[L(1)],
            ),
            call(
                "team-x/policy-shared",
                &[&[
                    ("team-x/policy-shared/rule/0", "team-x/policy-shared/rule/0"),
                    ("rule-0-match-0", "u"),
                ]],
                OK,
                &[L(0)],
            ),
            call(
                "team-x/policy-shared",
                &[&[
                    ("team-x/policy-shared/rule/0", "team-x/policy-shared/rule/0"),
                    ("rule-0-match-0", "u"),
                ]],
                OVER,
                &[Over],
            ),
            // The second and third documents of one file are domains of their own.
            call(
                "team-x/policy-many-1",
                &[&[
                    ("team-x/policy-many-1/rule/0", "team-x/policy-many-1/rule/0"),
                    ("rule-0-match-0", "rule-0-match-0"),
                ]],
                OK,
                &[L(1)],
            ),
            call(
                "team-x/policy-many-2",
                &[&[
                    ("team-x/policy-many-2/rule/0", "team-x/policy-many-2/rule/0"),
                    ("rule-0-match-0", "rule-0-match-0"),
                ]],
                OK,
                &[L(3)],
            ),
            call(
                "gw-many-policies",
                &[&[("route-d", "route-d"), ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(3)],
            ),
            // multiple-routes: the same rule key under two routes, two limits.
            call(
                "gw-routes",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-routes",
                &[&[ROUTE_B, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(5)],
            ),
            // Two descriptors of one request (multiple-shared-and-unshared): both counted.
            call(
                "gw-mixed",
                &[
                    &[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")],
                    &[ROUTE_A, ("rule-1-match-0", "rule-1-match-0")],
                ],
                OK,
                &[L(2), L(2)],
            ),
            // The largest uint32 limit (multiple-rules).
            call(
                "gw-rules",
                &[&[ROUTE_A, ("rule-1-match-0", "rule-1-match-0")]],
                OK,
                &[L(4_294_967_294)],
            ),
        ],
    ),
    (
        "month-year-rule",
        &[
            call(
                "gw-month-year",
                &[&[ROUTE_A, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(2)],
            ),
            call(
                "gw-month-year",
                &[&[ROUTE_B, ("rule-0-match-0", "rule-0-match-0")]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-month-year",
                &[&[ROUTE_B, ("rule-0-match-0", "rule-0-match-0")]],
                OVER,
                &[Over],
            ),
        ],
    ),
    (
        "global-shadow-mode: counted and reported, never denied",
        &[
            call(
                "gw-shadow",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                    ("rule-0-match-2", "rule-0-match-2"),
                    ("masked_remote_address", "0.0.0.0/0"),
                ]],
                OK,
                &[L(1)],
            ),
            call(
                "gw-shadow",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                    ("rule-0-match-2", "rule-0-match-2"),
                    ("masked_remote_address", "0.0.0.0/0"),
                ]],
                OK,
                &[L(0)],
            ),
            call(
                "gw-shadow",
                &[&[
                    ROUTE_A,
                    ("rule-0-match-0", "rule-0-match-0"),
                    ("rule-0-match-1", "rule-0-match-1"),
                    ("rule-0-match-2", "rule-0-match-2"),
                    ("masked_remote_address", "0.0.0.0/0"),
                ]],
                OK,
                &[Shadowed],
            ),
        ],
    ),
];

async fn run_table(rls: &Rls) {
    wait_for_fresh_window(3600, Duration::from_secs(30));
    run(rls, TABLE).await;
    // The month and year rules report their own units.
    let mut c = rls.client().await;
    for (route, unit) in [(ROUTE_A, 5), (ROUTE_B, 6)] {
        let req = integration_tests::request(
            "gw-month-year",
            &[&[route, ("rule-0-match-0", "rule-0-match-0")]],
        );
        let r = c.should_rate_limit(req).await.unwrap().into_inner();
        assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().unit, unit);
    }
}

#[tokio::test]
async fn the_spread_is_limited_at_the_configured_number_on_the_memory_store() {
    let rls = Rls::start(&["--config", &dir()]);
    run_table(&rls).await;
}

#[tokio::test]
async fn the_spread_is_limited_at_the_configured_number_on_the_redis_store() {
    let redis = RedisServer::start();
    let rls = Rls::start(&[
        "--config",
        &dir(),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
    ]);
    run_table(&rls).await;
}

/// Envoy 1.40 with the actions of `multiple-all-match.routes.yaml` (three header matches, a
/// method, a path and a masked remote address, per-route domain as Envoy Gateway configures
/// it) and of `distinct-match.routes.yaml` (request_headers), against the real binary.
#[test]
fn through_a_real_envoy_with_the_gateways_actions() {
    let rls = Rls::start(&["--config", &dir()]);
    let listen = integration_tests::redis::free_port();
    let config = bootstrap(listen, rls.grpc_addr.port(), start_upstream());
    let tmp = tempfile::tempdir().unwrap();
    if let Err(e) = envoy::validate(&config, tmp.path()) {
        panic!("Envoy refused the configuration:\n{e}");
    }
    let envoy = Envoy::start(&config, listen, tmp.path());
    wait_for_fresh_window(3600, Duration::from_secs(60));
    let all = [("x-team", "blue"), ("x-tier", "gold"), ("x-org", "acme")];
    let get = |path: &str, headers: &[(&str, &str)]| {
        send(envoy.port, "GET", path, "gw.test", headers, b"").status
    };
    let statuses: Vec<u16> = (0..4).map(|_| get("/v1/items", &all)).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "gw-all-match: 3 per hour");
    // One header does not match: Envoy sends no descriptor, nothing limits it.
    let missing: Vec<u16> = (0..4)
        .map(|_| {
            get(
                "/v1/items",
                &[("x-team", "blue"), ("x-tier", "silver"), ("x-org", "acme")],
            )
        })
        .collect();
    assert_eq!(missing, [200; 4]);
    // A POST is not the GET the method match wants.
    assert_eq!(
        send(envoy.port, "POST", "/v1/items", "gw.test", &all, b"x").status,
        200
    );
    let alice: Vec<u16> = (0..4)
        .map(|_| get("/users", &[("x-user-id", "alice")]))
        .collect();
    assert_eq!(
        alice,
        [200, 200, 200, 429],
        "gw-distinct: 3 per hour per user"
    );
    assert_eq!(get("/users", &[("x-user-id", "bob")]), 200);
}

fn bootstrap(listen: u16, rls_port: u16, upstream: u16) -> String {
    format!(
        r#"static_resources:
  listeners:
    - name: gw
      address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: gw
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - name: route-a
                          match: {{ path: /v1/items }}
                          route: {{ cluster: upstream }}
                          typed_per_filter_config:
                            envoy.filters.http.ratelimit:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                              domain: gw-all-match
                              rate_limits:
                                - actions:
                                    - generic_key: {{ descriptor_key: route-a, descriptor_value: route-a }}
                                    - header_value_match:
                                        descriptor_key: rule-0-match-0
                                        descriptor_value: rule-0-match-0
                                        expect_match: true
                                        headers: [{{ name: x-team, string_match: {{ exact: blue }} }}]
                                    - header_value_match:
                                        descriptor_key: rule-0-match-1
                                        descriptor_value: rule-0-match-1
                                        expect_match: true
                                        headers: [{{ name: x-tier, string_match: {{ exact: gold }} }}]
                                    - header_value_match:
                                        descriptor_key: rule-0-match-2
                                        descriptor_value: rule-0-match-2
                                        expect_match: true
                                        headers: [{{ name: x-org, string_match: {{ exact: acme }} }}]
                                    - header_value_match:
                                        descriptor_key: rule-0-method
                                        descriptor_value: rule-0-method
                                        expect_match: true
                                        headers: [{{ name: ":method", string_match: {{ exact: GET }} }}]
                                    - header_value_match:
                                        descriptor_key: rule-0-path
                                        descriptor_value: rule-0-path
                                        expect_match: true
                                        headers: [{{ name: ":path", string_match: {{ exact: /v1/items }} }}]
                                    - remote_address_match:
                                        address_matcher:
                                          ranges: [{{ address_prefix: 0.0.0.0, prefix_len: 0 }}]
                                        descriptor_key: masked_remote_address
                                        descriptor_value: 0.0.0.0/0
                        - name: route-b
                          match: {{ prefix: /users }}
                          route: {{ cluster: upstream }}
                          typed_per_filter_config:
                            envoy.filters.http.ratelimit:
                              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute
                              domain: gw-distinct
                              rate_limits:
                                - actions:
                                    - generic_key: {{ descriptor_key: route-a, descriptor_value: route-a }}
                                    - request_headers: {{ descriptor_key: rule-0-match-0, header_name: x-user-id }}
                http_filters:
                  - name: envoy.filters.http.ratelimit
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
                      domain: unused
                      failure_mode_deny: true
                      timeout: 2s
                      rate_limit_service:
                        transport_api_version: V3
                        grpc_service: {{ envoy_grpc: {{ cluster_name: rls }} }}
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: upstream
      type: STATIC
      load_assignment:
        cluster_name: upstream
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {upstream} }} }} }} }}] }}]
    - name: rls
      type: STATIC
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config: {{ http2_protocol_options: {{}} }}
      load_assignment:
        cluster_name: rls
        endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {rls_port} }} }} }} }}] }}]
"#
    )
}
