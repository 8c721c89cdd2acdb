//! The gateway side, end to end: configuration printed by `ironclad-rls render envoy|istio`
//! runs in a real Envoy 1.40 in front of a test upstream, with the real service (on a real
//! Redis where counting matters) answering its rate limit calls.

use std::path::{Path, PathBuf};
use std::time::Duration;

use integration_tests::envoy::{self, Envoy, Response, send, serve_http, start_upstream};
use integration_tests::redis::{RedisServer, free_port};
use integration_tests::{Rls, example, run_cli, wait_for_fresh_window, workspace_root};
use serde_json::{Value, json};

fn limits() -> PathBuf {
    workspace_root().join("integration-tests/tests/gateway/limits.yaml")
}

/// `ironclad-rls render TARGET --config CONFIG EXTRA...`; panics with its stderr on failure.
fn render(target: &str, config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["render", target, "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = run_cli(&args);
    assert!(
        out.status.success(),
        "render {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `render`'s exit status must be 1 and its stderr must contain `expected`.
fn render_fails(args: &[&str], expected: &str) {
    let out = run_cli(&[&["render"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains(expected), "{args:?}: {stderr}");
}

/// A rendered Envoy for tests/gateway/limits.yaml in front of one echoing upstream.
struct Gateway {
    envoy: Envoy,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start(rls_port: u16, extra: &[&str]) -> Gateway {
        let upstream = format!("127.0.0.1:{}", start_upstream());
        let listen = free_port();
        let listen_addr = format!("127.0.0.1:{listen}");
        let rls_addr = format!("127.0.0.1:{rls_port}");
        let api = format!("api={upstream}");
        let tight = format!("tight={upstream}");
        let mut args = vec![
            "--listen",
            &listen_addr,
            "--rls-addr",
            &rls_addr,
            "--upstream",
            &api,
            "--upstream",
            &tight,
            // The suite runs on a busy machine; the deadline is not what these tests are about.
            "--timeout",
            "2s",
        ];
        args.extend_from_slice(extra);
        let config = render("envoy", &limits(), &args);
        let dir = tempfile::tempdir().unwrap();
        if let Err(e) = envoy::validate(&config, dir.path()) {
            panic!("envoy --mode validate refused the rendered bootstrap:\n{e}\n{config}");
        }
        let envoy = Envoy::start(&config, listen, dir.path());
        Gateway { envoy, _dir: dir }
    }

    fn get(&self, host: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        send(self.envoy.port, "GET", path, host, headers, b"")
    }

    fn post_form(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Response {
        let mut all = vec![("content-type", "application/x-www-form-urlencoded")];
        all.extend_from_slice(headers);
        send(
            self.envoy.port,
            "POST",
            path,
            "api.test",
            &all,
            body.as_bytes(),
        )
    }

    /// Who the upstream was told the caller is (`-`: anonymous), for a request that must pass.
    fn consumer(&self, response: Response) -> String {
        assert_eq!(response.status, 200, "{response:?}");
        response
            .body
            .strip_prefix("consumer=")
            .unwrap_or_else(|| panic!("not from the upstream: {response:?}"))
            .to_owned()
    }
}

fn basic(credentials: &str) -> String {
    format!("Basic {}", b64(credentials.as_bytes(), true))
}

fn b64(bytes: &[u8], padded: bool) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    if padded {
        STANDARD.encode(bytes)
    } else {
        URL_SAFE_NO_PAD.encode(bytes)
    }
}

/// A JWT with `claims`, signed ES256 by `key` (or `alg: none` and no signature).
fn jwt(claims: &Value, key: Option<&SigningKey>) -> String {
    let header = match key {
        Some(k) => json!({ "alg": "ES256", "typ": "JWT", "kid": k.kid }),
        None => json!({ "alg": "none", "typ": "JWT" }),
    };
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), false),
        b64(claims.to_string().as_bytes(), false)
    );
    let signature = key.map(|k| k.sign(input.as_bytes())).unwrap_or_default();
    format!("{input}.{}", b64(&signature, false))
}

/// An ES256 key pair made for the test; its public half is served as a JWKS.
struct SigningKey {
    kid: &'static str,
    pair: ring::signature::EcdsaKeyPair,
}

impl SigningKey {
    fn generate(kid: &'static str) -> SigningKey {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        SigningKey { kid, pair }
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let rng = ring::rand::SystemRandom::new();
        self.pair.sign(&rng, input).unwrap().as_ref().to_vec()
    }

    fn jwk(&self) -> Value {
        use ring::signature::KeyPair;
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&point[1..33], false), "y": b64(&point[33..65], false)
        })
    }
}

#[test]
fn rendered_gateway_enforces_every_limit() {
    let redis = RedisServer::start();
    let rls = Rls::start(&[
        "--config",
        limits().to_str().unwrap(),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
    ]);
    let gw = Gateway::start(rls.grpc_addr.port(), &[]);
    wait_for_fresh_window(3600, Duration::from_secs(60));

    // Each identified consumer has 3 an hour under /limited/, counted down in the headers.
    for left in (0..3).rev() {
        let r = gw.get("api.test", "/limited/x?client_id=alice", &[]);
        assert_eq!(gw.consumer(r.clone()), "alice");
        assert_eq!(
            r.header("x-ratelimit-remaining"),
            Some(&*left.to_string()),
            "{r:?}"
        );
        assert!(
            r.header("x-ratelimit-limit")
                .unwrap()
                .starts_with("3, 3;w=3600"),
            "{r:?}"
        );
    }
    let over = gw.get("api.test", "/limited/x?client_id=alice", &[]);
    assert_eq!(over.status, 429, "{over:?}");
    assert_eq!(over.header("x-envoy-ratelimited"), Some("true"));
    assert_eq!(over.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = over
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry), "{over:?}");

    // Another consumer (here by Basic credentials) has its own budget, and Envoy's path
    // normalisation matches the service's: this path is under /limited/.
    let bob = basic("bob:secret");
    let r = gw.get(
        "api.test",
        "/other/..//limited/./y",
        &[("authorization", &bob)],
    );
    assert_eq!(gw.consumer(r.clone()), "bob");
    assert_eq!(r.header("x-ratelimit-remaining"), Some("2"));

    // The invoker `vip` has 5.
    let vip: Vec<u16> = (0..6)
        .map(|_| gw.get("api.test", "/limited/z?client_id=vip", &[]).status)
        .collect();
    assert_eq!(vip, [200, 200, 200, 200, 200, 429]);

    // Anonymous requests share 2, and a client cannot escape by naming itself in the header
    // the gateway owns.
    let anonymous: Vec<u16> = (0..3)
        .map(|_| {
            gw.get(
                "api.test",
                "/limited/a",
                &[("synapse-consumerid", "fresh-every-time")],
            )
            .status
        })
        .collect();
    assert_eq!(anonymous, [200, 200, 429]);

    // `tight` has an overall limit of 3 an hour, whoever asks.
    let overall: Vec<u16> = ["c1", "c2", "c3", "c4"]
        .iter()
        .map(|c| {
            gw.get("tight.test:8000", &format!("/any?client_id={c}"), &[])
                .status
        })
        .collect();
    assert_eq!(overall, [200, 200, 200, 429]);

    // The counters are in Redis, shared with every other replica.
    let keys = redis.cli(&["--scan", "--pattern", "rls:*"]);
    assert!(keys.contains("alice") && keys.contains("bob"), "{keys}");
}

#[test]
fn every_source_identifies_the_consumer_in_order() {
    let rls = Rls::start(&["--config", limits().to_str().unwrap()]);
    let gw = Gateway::start(
        rls.grpc_addr.port(),
        &["--jwt", "decode", "--max-form-bytes", "256"],
    );
    let unsigned = |azp: Value| format!("Bearer {}", jwt(&json!({ "azp": azp, "sub": "x" }), None));

    // One source at a time.
    let get = |path: &str, headers: &[(&str, &str)]| gw.consumer(gw.get("api.test", path, headers));
    assert_eq!(
        get("/open/", &[("authorization", &basic("c1:secret"))]),
        "c1"
    );
    assert_eq!(get("/open/", &[("authorization", &basic("c2:"))]), "c2");
    assert_eq!(
        get("/open/", &[("authorization", &basic("c3:se:cret"))]),
        "c3"
    );
    assert_eq!(get("/open/?a=1&client_id=c4&b=2", &[]), "c4");
    assert_eq!(get("/open/?client_id=c%2B5", &[]), "c+5");
    let form = |body: &str| gw.consumer(gw.post_form("/open/", &[], body));
    assert_eq!(form("grant_type=client_credentials&client_id=c6"), "c6");
    assert_eq!(
        get("/open/", &[("authorization", &unsigned(json!("c7")))]),
        "c7"
    );
    let charset = send(
        gw.envoy.port,
        "POST",
        "/open/",
        "api.test",
        &[(
            "content-type",
            "Application/X-WWW-Form-Urlencoded; charset=UTF-8",
        )],
        b"client_id=c8",
    );
    assert_eq!(gw.consumer(charset), "c8");

    // The order: Basic, query, form, token.
    assert_eq!(
        get("/open/?client_id=q", &[("authorization", &basic("b:pw"))]),
        "b"
    );
    assert_eq!(
        gw.consumer(gw.post_form("/open/?client_id=q", &[], "client_id=f")),
        "q"
    );
    assert_eq!(
        gw.consumer(gw.post_form(
            "/open/",
            &[("authorization", &unsigned(json!("t")))],
            "client_id=f"
        )),
        "f"
    );

    // A client-sent synapse-consumerid never survives.
    assert_eq!(get("/open/", &[("synapse-consumerid", "evil")]), "-");
    assert_eq!(
        get("/open/?client_id=me", &[("synapse-consumerid", "evil")]),
        "me"
    );

    // Malformed input never fails the request: the caller is anonymous.
    let long = "x".repeat(300);
    for (what, path, auth) in [
        ("bad base64", "/open/", "Basic !!!not-base64!!!".to_owned()),
        ("Basic without a colon", "/open/", basic("nocolon")),
        ("empty Basic user", "/open/", basic(":secret")),
        ("not a JWT", "/open/", "Bearer a.b".to_owned()),
        ("bad JWT base64", "/open/", "Bearer a.%%%.c".to_owned()),
        ("azp a number", "/open/", unsigned(json!(42))),
        ("azp with a space", "/open/", unsigned(json!("a b"))),
        ("azp too long", "/open/", unsigned(json!(long))),
        (
            "query id with a space",
            "/open/?client_id=a%20b",
            String::new(),
        ),
        ("empty query id", "/open/?client_id=", String::new()),
        (
            "prefixed parameter name",
            "/open/?my_client_id=x",
            String::new(),
        ),
    ] {
        let headers: Vec<(&str, &str)> = if auth.is_empty() {
            vec![]
        } else {
            vec![("authorization", auth.as_str())]
        };
        assert_eq!(get(path, &headers), "-", "{what}");
    }
    let broken_json = format!(
        "Bearer {}.{}.",
        b64(b"{\"alg\":\"none\"}", false),
        b64(b"{\"azp\": \"x\", ", false)
    );
    assert_eq!(get("/open/", &[("authorization", &broken_json)]), "-");
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let deep_token = format!("Bearer e30.{}.", b64(deep.as_bytes(), false));
    assert_eq!(get("/open/", &[("authorization", &deep_token)]), "-");

    // Bodies above --max-form-bytes, or of unknown length, are not read (and not refused).
    let big = format!("client_id=big&pad={}", "p".repeat(400));
    assert_eq!(form(&big), "-");
    let chunked = send(
        gw.envoy.port,
        "POST",
        "/open/",
        "api.test",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("transfer-encoding", "chunked"),
        ],
        b"c\r\nclient_id=ch\r\n0\r\n\r\n",
    );
    assert_eq!(gw.consumer(chunked), "-");
}

#[test]
fn verified_mode_takes_azp_only_from_tokens_the_issuer_signed() {
    let key = SigningKey::generate("k1");
    let stranger = SigningKey::generate("k1");
    let jwks = json!({ "keys": [key.jwk()] }).to_string();
    let jwks_port = serve_http(move |_| ("200 OK", "application/json", jwks.clone()));
    let jwks_uri = format!("http://127.0.0.1:{jwks_port}/realms/test/certs");
    let rls = Rls::start(&["--config", limits().to_str().unwrap()]);
    let gw = Gateway::start(
        rls.grpc_addr.port(),
        &[
            "--jwks-uri",
            &jwks_uri,
            "--jwt-issuer",
            "https://idp.test/realms/test",
        ],
    );
    let claims = |iss: &str, azp: &str| json!({ "iss": iss, "azp": azp, "sub": "u", "exp": 4_102_444_800u64 });
    let bearer = |token: String| format!("Bearer {token}");
    let issuer = "https://idp.test/realms/test";

    let good = bearer(jwt(&claims(issuer, "signed-client"), Some(&key)));
    let r = eventually_passes(&gw, &good);
    assert_eq!(gw.consumer(r), "signed-client");

    for (what, token) in [
        ("unsigned", bearer(jwt(&claims(issuer, "forged"), None))),
        (
            "another key",
            bearer(jwt(&claims(issuer, "forged"), Some(&stranger))),
        ),
        (
            "another issuer",
            bearer(jwt(&claims("https://evil.test", "forged"), Some(&key))),
        ),
        ("garbage", "Bearer not.a.token".to_owned()),
    ] {
        let r = gw.get("api.test", "/open/", &[("authorization", &token)]);
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    // No token: anonymous, or identified by the other sources.
    assert_eq!(gw.consumer(gw.get("api.test", "/open/", &[])), "-");
    assert_eq!(
        gw.consumer(gw.get("api.test", "/open/?client_id=q", &[])),
        "q"
    );

    // Trusting only verified tokens: the sources a client can simply type are ignored.
    let strict = Gateway::start(
        rls.grpc_addr.port(),
        &["--jwks-uri", &jwks_uri, "--consumer-sources", "jwt"],
    );
    let r = eventually_passes(&strict, &good);
    assert_eq!(strict.consumer(r), "signed-client");
    let basic_q = basic("q:pw");
    let typed = strict.get(
        "api.test",
        "/open/?client_id=q",
        &[("authorization", &basic_q)],
    );
    assert_eq!(strict.consumer(typed), "-");
}

/// The first request may race Envoy's first JWKS fetch; later ones may not fail.
fn eventually_passes(gw: &Gateway, authorization: &str) -> Response {
    integration_tests::eventually(Duration::from_secs(10), "the JWKS to be fetched", || {
        let r = gw.get("api.test", "/open/", &[("authorization", authorization)]);
        (r.status == 200).then_some(r)
    })
}

#[test]
fn failure_mode_deny_decides_when_the_service_is_down() {
    let rls = Rls::start(&["--config", limits().to_str().unwrap()]);
    let open = Gateway::start(rls.grpc_addr.port(), &[]);
    let closed = Gateway::start(rls.grpc_addr.port(), &["--failure-mode-deny"]);
    wait_for_fresh_window(3600, Duration::from_secs(60));
    // While the service answers, both gateways enforce the limit of 3 per consumer.
    for (gw, path) in [
        (&open, "/limited/x?client_id=o"),
        (&closed, "/limited/x?client_id=c"),
    ] {
        let statuses: Vec<u16> = (0..4)
            .map(|_| gw.get("api.test", path, &[]).status)
            .collect();
        assert_eq!(statuses, [200, 200, 200, 429]);
    }
    drop(rls);
    // Without it, one lets everything through and the other refuses everything.
    for _ in 0..3 {
        assert_eq!(open.get("api.test", "/limited/x", &[]).status, 200);
        let refused = closed.get("api.test", "/limited/x", &[]);
        assert_eq!(refused.status, 500, "{refused:?}");
    }
}

#[test]
fn every_rendered_configuration_passes_envoy_validate() {
    let dir = tempfile::tempdir().unwrap();
    let configs = [
        example("full-example.yaml"),
        example("seed/2.1-per-service.yaml"),
        example("seed/2.2-per-service-with-client.yaml"),
        example("seed/2.3-per-client.yaml"),
        workspace_root().join("examples/envoy/limits.yaml"),
        limits(),
    ];
    let modes: [&[&str]; 4] = [
        &[],
        &[
            "--failure-mode-deny",
            "--jwt",
            "ignore",
            "--envoy-admin",
            "127.0.0.1:9901",
            "--response-cache",
        ],
        &[
            "--jwks-uri",
            "https://idp.example/realms/a/protocol/openid-connect/certs",
        ],
        &[
            "--jwks-uri",
            "http://keycloak:8080/certs",
            "--jwt-issuer",
            "http://keycloak:8080/realms/a",
            "--jwt-audience",
            "account",
        ],
    ];
    for config in &configs {
        for mode in modes {
            let text = render("envoy", config, mode);
            if let Err(e) = envoy::validate(&text, dir.path()) {
                panic!("{config:?} {mode:?}: refused:\n{e}");
            }
        }
        for mode in [
            &[][..],
            &[
                "--jwks-uri",
                "https://idp/certs",
                "--jwt-issuer",
                "https://idp",
            ],
        ] {
            let manifests = render("istio", config, mode);
            let bootstrap = istio_bootstrap(&manifests, free_port(), 8081, 8080);
            if let Err(e) = envoy::validate(&bootstrap, dir.path()) {
                panic!("{config:?} istio {mode:?}: refused:\n{e}");
            }
        }
    }
}

/// What an Istio gateway does with `render istio`'s EnvoyFilter, done by hand: a gateway
/// listener whose one virtual host routes to `upstream`, with every patch applied. The RLS
/// cluster's Kubernetes address is pointed at `127.0.0.1:rls`.
fn istio_bootstrap(manifests: &str, listen: u16, rls: u16, upstream: u16) -> String {
    let docs: Vec<Value> = serde_saphyr::from_multiple(manifests).unwrap();
    let filter = docs.iter().find(|d| d["kind"] == "EnvoyFilter").unwrap();
    assert_eq!(
        filter["spec"]["workloadSelector"]["labels"]["istio"],
        "ingressgateway"
    );
    let mut hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": { "virtual_hosts": [{
            "name": "gateway", "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": "upstream" } }]
        }] },
        "http_filters": []
    });
    let mut filters = Vec::new();
    let mut clusters = vec![json!({
        "name": "upstream", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": "upstream", "endpoints": [{ "lb_endpoints": [{ "endpoint": {
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": upstream } } } }] }] }
    })];
    for patch in filter["spec"]["configPatches"].as_array().unwrap() {
        assert_eq!(patch["match"]["context"], "GATEWAY");
        let value = patch["patch"]["value"].clone();
        match (
            patch["applyTo"].as_str().unwrap(),
            patch["patch"]["operation"].as_str().unwrap(),
        ) {
            ("NETWORK_FILTER", "MERGE") => {
                for (k, v) in value["typed_config"].as_object().unwrap() {
                    hcm[k] = v.clone();
                }
            }
            ("HTTP_FILTER", "INSERT_BEFORE") => {
                assert_eq!(
                    patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
                    "envoy.filters.http.router"
                );
                filters.push(value);
            }
            ("CLUSTER", "ADD") => {
                let mut c = value;
                c["type"] = json!("STATIC");
                c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] =
                    json!({ "socket_address": { "address": "127.0.0.1", "port_value": rls } });
                clusters.push(c);
            }
            ("VIRTUAL_HOST", "MERGE") => {
                hcm["route_config"]["virtual_hosts"][0]["rate_limits"] =
                    value["rate_limits"].clone();
            }
            other => panic!("unexpected patch {other:?}"),
        }
    }
    filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    }));
    hcm["http_filters"] = json!(filters);
    json!({ "static_resources": {
        "listeners": [{
            "address": { "socket_address": { "address": "127.0.0.1", "port_value": listen } },
            "filter_chains": [{ "filters": [{
                "name": "envoy.filters.network.http_connection_manager", "typed_config": hcm
            }] }]
        }],
        "clusters": clusters
    } })
    .to_string()
}

#[test]
fn istio_manifests_limit_by_host_on_a_gateway() {
    let manifests = render(
        "istio",
        &limits(),
        &[
            "--namespace",
            "gw-ns",
            "--host",
            "api=api.example.com",
            "--timeout",
            "2s",
        ],
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&manifests).unwrap();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["EnvoyFilter", "Service"]);
    assert_eq!(docs[0]["metadata"]["namespace"], "gw-ns");
    let service = &docs[1];
    assert_eq!(service["metadata"]["name"], "rate-limiter-headless-service");
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert!(
        service["spec"]["ports"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("grpc-")
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 8081);

    let rls = Rls::start(&["--config", limits().to_str().unwrap()]);
    let listen = free_port();
    let bootstrap = istio_bootstrap(&manifests, listen, rls.grpc_addr.port(), start_upstream());
    let dir = tempfile::tempdir().unwrap();
    envoy::validate(&bootstrap, dir.path()).unwrap();
    let envoy = Envoy::start(&bootstrap, listen, dir.path());
    wait_for_fresh_window(3600, Duration::from_secs(60));
    let get = |host: &str, path: &str| send(envoy.port, "GET", path, host, &[], b"").status;

    // The public name given by --host, any case, with or without a port.
    let api: Vec<u16> = [
        "api.example.com",
        "API.Example.com:443",
        "api.example.com",
        "api.example.com",
    ]
    .iter()
    .map(|h| get(h, "/limited/x?client_id=ann"))
    .collect();
    assert_eq!(api, [200, 200, 200, 429]);
    // `tight` by its endpoint's host: an overall 3.
    let tight: Vec<u16> = (0..4)
        .map(|i| get("tight.test", &format!("/?client_id=t{i}")))
        .collect();
    assert_eq!(tight, [200, 200, 200, 429]);
    // Another host makes no descriptor, so it is never limited.
    let other: Vec<u16> = (0..5)
        .map(|_| get("elsewhere.test", "/limited/x?client_id=ann"))
        .collect();
    assert_eq!(other, [200; 5]);
    // Escaped slashes are refused on the gateway too, as `render envoy` does
    // (docs/gateway.md), before any quota is asked for.
    for path in ["/limited%2Fx?client_id=esc", "/limited%5cx?client_id=esc"] {
        assert_eq!(get("api.example.com", path), 400, "{path}");
    }
}

#[test]
fn render_explains_what_it_cannot_do() {
    let (_d1, no_endpoint) = integration_tests::temp_file(
        "l.yaml",
        "kcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: s\n      uri_prefixes:\n        - prefix: /\n",
    );
    let path = no_endpoint.to_str().unwrap();
    render_fails(&["envoy", "--config", path], "endpoint s (");
    render_fails(&["envoy", "--config", path], "--upstream s=HOST:PORT");
    render_fails(&["istio", "--config", path], "--host s=HOST");
    render_fails(
        &["envoy", "--config", path, "--upstream", "nope=127.0.0.1:1"],
        "--upstream names \"nope\"",
    );
    let lim = limits();
    let lim = lim.to_str().unwrap();
    render_fails(
        &["envoy", "--config", lim, "--jwt", "verify"],
        "needs --jwks-uri",
    );
    render_fails(
        &[
            "envoy",
            "--config",
            lim,
            "--consumer-sources",
            "basic",
            "--jwt",
            "decode",
        ],
        "leaves out jwt",
    );
    render_fails(
        &["istio", "--config", lim, "--jwks-uri", "https://idp/certs"],
        "--jwt-issuer",
    );
    render_fails(
        &["envoy", "--config", lim, "--domain", "other"],
        "no endpoint-format domain \"other\"",
    );
    render_fails(
        &["istio", "--config", lim, "--rls-addr", "10.0.0.1:8081"],
        "--no-service",
    );
    let bad = run_cli(&[
        "render",
        "envoy",
        "--config",
        lim,
        "--jwks-uri",
        "ftp://x/y",
    ]);
    assert_eq!(bad.status.code(), Some(2), "a bad flag is a usage error");
    // A broken limits file is reported as `validate` reports it.
    let (_d2, broken) =
        integration_tests::temp_file("b.yaml", "kcse_rate_limits:\n  endpoints: 7\n");
    render_fails(&["envoy", "--config", broken.to_str().unwrap()], "b.yaml:2");
}

#[test]
fn the_envoy_walkthrough_runs_as_its_readme_says() {
    let port = |name: &'static str| (name, free_port().to_string());
    let ports = [
        port("UPSTREAM_PORT"),
        port("RLS_PORT"),
        port("ADMIN_PORT"),
        port("ENVOY_PORT"),
    ];
    wait_for_fresh_window(60, Duration::from_secs(20));
    let out = std::process::Command::new(workspace_root().join("examples/envoy/run.sh"))
        .envs(ports.iter().map(|(k, v)| (*k, v.as_str())))
        .env("IRONCLAD_RLS_BIN", integration_tests::binary())
        .env("ENVOY_BIN", envoy::envoy_binary())
        .output()
        .expect("run examples/envoy/run.sh (needs bash, curl, python3)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let statuses: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("HTTP/1.1 "))
        .map(|l| &l[..3])
        .collect();
    // alice ×6, bob, partner, anonymous ×4, outside /api/.
    assert_eq!(
        statuses,
        [
            "200", "200", "200", "200", "200", "429", "200", "200", "200", "200", "200", "429",
            "200"
        ],
        "{text}"
    );
    for expected in [
        "hello, alice",
        "hello, bob",
        "hello, partner",
        "x-ratelimit-limit: 10, 10;w=60;name=\"demo /api/ invoker partner\"",
        "retry-after: ",
        "x-envoy-ratelimited: true",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(
        !text.contains("hello, me-"),
        "a client-sent consumer id got through:\n{text}"
    );
}

#[test]
fn the_istio_example_is_what_render_prints_today() {
    let out = std::process::Command::new(workspace_root().join("examples/istio/render.sh"))
        .env("IRONCLAD_RLS_BIN", integration_tests::binary())
        .output()
        .expect("run examples/istio/render.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed =
        std::fs::read_to_string(workspace_root().join("examples/istio/ironclad-rls-istio.yaml"))
            .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout) == committed,
        "examples/istio/ironclad-rls-istio.yaml is stale: regenerate it with \
         examples/istio/render.sh > examples/istio/ironclad-rls-istio.yaml"
    );
    // And what it prints works on a gateway: validated like every other render.
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = istio_bootstrap(&committed, free_port(), 8081, 8080);
    envoy::validate(&bootstrap, dir.path()).unwrap();
}

#[test]
fn envoy_reads_the_window_multiplier_of_a_shared_bucket() {
    // The seed's egress bucket, slowed to 5 tokens per 15 minutes so that no token comes back
    // during the test: Envoy's headers carry the 900 s window from `unit_multiplier`.
    let (_dir, limits) = integration_tests::temp_file(
        "limits.yaml",
        "kcse_rate_limits:
  endpoints:
    - name: egress
      shortname: geocode
      endpoint: maps.example:443
      overall_limit: 5
      unit: minute
      unit_multiplier: 15
      algorithm: token_bucket
",
    );
    let rls = Rls::start(&["--config", limits.to_str().unwrap()]);
    let upstream = format!("geocode=127.0.0.1:{}", start_upstream());
    let listen = free_port();
    let config = render(
        "envoy",
        &limits,
        &[
            "--listen",
            &format!("127.0.0.1:{listen}"),
            "--rls-addr",
            &rls.grpc_addr.to_string(),
            "--upstream",
            &upstream,
            "--timeout",
            "2s",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let envoy = Envoy::start(&config, listen, dir.path());
    for i in 0..5 {
        let r = send(envoy.port, "GET", "/geocode", "maps.example", &[], b"");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    let r = send(envoy.port, "GET", "/geocode", "maps.example", &[], b"");
    assert_eq!(r.status, 429, "{r:?}");
    assert_eq!(
        r.header("x-ratelimit-limit"),
        Some("5, 5;w=900;name=\"geocode overall\""),
        "{r:?}"
    );
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}
