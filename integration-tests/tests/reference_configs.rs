//! Every configuration file of the envoyproxy/ratelimit repository, reproduced in our own
//! words under `reference_configs/` (each fixture names the upstream file it mirrors): those
//! the reference rejects are rejected with file:line and field path, and those it accepts
//! load and answer, through the real binary on the memory store and on Redis, as the
//! reference's config and service tests (`test/config/config_test.go`,
//! `test/service/ratelimit_test.go`) expect.

mod compat;

use std::time::Duration;

use St::{L, N, Over, Shadowed, U};
use compat::{Call, OK, OVER, St, call, run};
use integration_tests::redis::RedisServer;
use integration_tests::{Rls, run_cli, wait_for_fresh_window};
use ironclad_rls::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use ironclad_rls::proto::{RateLimitDescriptor, RateLimitRequest};

fn dir(sub: &str) -> String {
    format!(
        "{}/tests/reference_configs/{sub}",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The reference's rejections (its `expectConfigPanic` cases), each with what our message
/// must hold: the file and line, and the field path or problem.
#[test]
fn files_the_reference_rejects_are_rejected_with_line_and_field_path() {
    let cases: &[(&str, &[&str])] = &[
        (
            "bad_limit_unit.yaml",
            &[":7:", "descriptors[0].rate_limit.unit", "fortnight"],
        ),
        ("bad_yaml.yaml", &[":2:", "invalid YAML"]),
        // The reference reads only a file's first document and rejects the same domain in
        // a second file; we read every document, and a domain twice is still an error.
        (
            "duplicate_domain.yaml",
            &[":6:", "\"ref-twice\" is already defined"],
        ),
        (
            "duplicate_key.yaml",
            &[":7:", "descriptors[1]", "appears twice"],
        ),
        ("empty_domain.yaml", &["domain: required field is missing"]),
        (
            "empty_key.yaml",
            &[":4:", "descriptors[0].key: required field is missing"],
        ),
        (
            "misspelled_key.yaml",
            &[
                ":6:",
                "descriptors[0].ratelimit",
                "did you mean `rate_limit`",
            ],
        ),
        (
            "misspelled_key2.yaml",
            &[
                ":8:",
                "rate_limit.requestsperunit",
                "did you mean `requests_per_unit`",
            ],
        ),
        (
            "non_map_list.yaml",
            &[":4:", "descriptors[0]: expected a mapping, found a string"],
        ),
        ("non_string_key.yaml", &[":2:", "expected a string key"]),
        (
            "replaces_empty.yaml",
            &[":11:", "replaces[0].name: required field is missing"],
        ),
        (
            "replaces_self.yaml",
            &[":11:", "replaces[0].name", "cannot replace itself"],
        ),
        (
            "unlimited_with_unit.yaml",
            &[
                ":7:",
                "rate_limit.unit: not allowed beside `unlimited: true`",
            ],
        ),
    ];
    let listed = std::fs::read_dir(dir("rejected")).unwrap().count();
    assert_eq!(listed, cases.len(), "every rejected fixture has a case");
    for (file, wanted) in cases {
        let path = format!("{}/{file}", dir("rejected"));
        let out = run_cli(&["validate", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file} was accepted");
        assert!(
            stderr.contains(&format!("{file}:")),
            "{file}: no file name in\n{stderr}"
        );
        for w in *wanted {
            assert!(stderr.contains(w), "{file}: missing {w:?} in\n{stderr}");
        }
    }
}

#[test]
fn files_the_reference_accepts_load() {
    let out = run_cli(&["validate", &dir("accepted")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("valid: 7 file(s), 0 warning(s)"), "{all}");
}

/// What the reference's tests assert of each accepted file, as calls. Units are hours or
/// longer where a test makes several calls, so no window ends in between (each call of a
/// per-second or per-minute rule is the first on its counter).
const TABLE: &[(&str, &[Call])] = &[
    (
        "basic_config: levels, defaults, overrides, whitelisted value, names, unlimited",
        &[
            call(
                "ref-basic",
                &[&[("tenant", "acme"), ("user", "bob")]],
                OK,
                &[L(5)],
            ),
            call(
                "ref-basic",
                &[&[("tenant", "acme"), ("user", "root")]],
                OK,
                &[L(11)],
            ),
            call("ref-basic", &[&[("tenant", "acme")]], OK, &[N]),
            call(
                "ref-basic",
                &[&[("tenant", "acme"), ("user", "bob"), ("x", "y")]],
                OK,
                &[N],
            ),
            call(
                "ref-basic",
                &[&[("tenant", "other"), ("user", "bob")]],
                OK,
                &[N],
            ),
            call("ref-basic", &[&[("region", "us")]], OK, &[L(20)]),
            call("ref-basic", &[&[("region", "eu")]], OK, &[L(30)]),
            call("ref-basic", &[&[("region", "internal")]], OK, &[N]),
            call("ref-basic", &[&[("job", "j")]], OK, &[L(1)]),
            call("ref-basic", &[&[("job", "j")]], OK, &[L(0)]),
            call("ref-basic", &[&[("job", "j")]], OVER, &[Over]),
            call("ref-basic", &[&[("report", "r")]], OK, &[L(1)]),
            call("ref-basic", &[&[("shop", "main")]], OK, &[L(15)]),
            call(
                "ref-basic",
                &[&[("shop", "main"), ("cart", "big")]],
                OK,
                &[L(25)],
            ),
            call(
                "ref-basic",
                &[&[("shop", "main"), ("cart", "small")]],
                OK,
                &[N],
            ),
            // TestUnlimited: no current_limit and 4294967295 left, never counted.
            call(
                "ref-basic",
                &[&[("probe", "p")], &[("job", "k")]],
                OK,
                &[U, L(1)],
            ),
            call("ref-basic", &[&[("probe", "p")]], OK, &[U]),
            call("ref-basic", &[&[("client_ip", "10.0.0.1")]], OK, &[L(70)]),
            // TestConfigLimitOverride: the override applies to any descriptor of the domain.
            Call {
                domain: "ref-basic",
                descriptors: &[&[("tenant", "acme"), ("user", "over")]],
                hits: 0,
                limit: Some((42, 3)),
                code: OK,
                statuses: &[L(41)],
            },
            // An unknown domain: no limit.
            call("no-such-domain", &[&[("job", "j")]], OK, &[N]),
        ],
    ),
    (
        "shadowmode_config: shadow rules report but never deny",
        &[
            call(
                "ref-shadow",
                &[&[("tenant", "acme"), ("user", "root")]],
                OK,
                &[L(0)],
            ),
            call(
                "ref-shadow",
                &[&[("tenant", "acme"), ("user", "root")]],
                OK,
                &[Shadowed],
            ),
            call("ref-shadow", &[&[("region", "us")]], OK, &[L(0)]),
            call("ref-shadow", &[&[("region", "us")]], OK, &[Shadowed]),
            call("ref-shadow", &[&[("region", "eu")]], OK, &[L(0)]),
            call("ref-shadow", &[&[("region", "eu")]], OVER, &[Over]),
        ],
    ),
    (
        "wildcard: trailing, middle and several `*`, each value counted apart",
        &[
            call("ref-wildcard", &[&[("bucket", "logs-a")]], OK, &[L(1)]),
            call("ref-wildcard", &[&[("bucket", "logs-a")]], OK, &[L(0)]),
            call("ref-wildcard", &[&[("bucket", "logs-b")]], OK, &[L(1)]),
            call("ref-wildcard", &[&[("bucket", "logs-a")]], OVER, &[Over]),
            call("ref-wildcard", &[&[("bucket", "logs")]], OK, &[N]),
            call("ref-wildcard", &[&[("exact", "logs")]], OK, &[L(1)]),
            call("ref-wildcard", &[&[("exact", "logs-a")]], OK, &[N]),
            call("ref-wildcard", &[&[("anyvalue", "q")]], OK, &[L(1)]),
            call("ref-wildcard", &[&[("middle", "img1.png")]], OK, &[L(1)]),
            call("ref-wildcard", &[&[("middle", "imgpng")]], OK, &[L(1)]),
            call("ref-wildcard", &[&[("middle", "img1.jpg")]], OK, &[N]),
            call("ref-wildcard", &[&[("several", "a1b2c")]], OK, &[L(0)]),
            call("ref-wildcard", &[&[("several", "abc")]], OK, &[L(0)]),
            call("ref-wildcard", &[&[("several", "acb")]], OK, &[N]),
            call(
                "ref-wildcard",
                &[&[("outer", "fixed"), ("bucket", "tmp-1")]],
                OK,
                &[L(1)],
            ),
            call("ref-wildcard", &[&[("bucket", "tmp-1")]], OK, &[N]),
        ],
    ),
    (
        "share_threshold: every value a shared pattern matches shares one counter",
        &[
            call("ref-share", &[&[("doc", "docs/a")]], OK, &[L(1)]),
            call("ref-share", &[&[("doc", "docs/b")]], OK, &[L(0)]),
            call("ref-share", &[&[("doc", "docs/c")]], OVER, &[Over]),
            call(
                "ref-share",
                &[&[("team", "core"), ("doc", "core/x")]],
                OK,
                &[L(1)],
            ),
            call(
                "ref-share",
                &[&[("team", "core"), ("doc", "core/y")]],
                OK,
                &[L(0)],
            ),
            call(
                "ref-share",
                &[&[("doc", "top/1"), ("doc", "inner/1")]],
                OK,
                &[L(1)],
            ),
            call(
                "ref-share",
                &[&[("doc", "top/2"), ("doc", "inner/2")]],
                OK,
                &[L(0)],
            ),
            call(
                "ref-share",
                &[&[("api", "v1/a"), ("verb", "GET")]],
                OK,
                &[L(8)],
            ),
            call(
                "ref-share",
                &[&[("api", "v1/b"), ("verb", "GET")]],
                OK,
                &[L(7)],
            ),
            call(
                "ref-share",
                &[&[("api", "v1/c"), ("verb", "POST")]],
                OK,
                &[L(8)],
            ),
            call(
                "ref-share",
                &[&[("svc", "svc/1"), ("op", "get")]],
                OK,
                &[L(7)],
            ),
            call(
                "ref-share",
                &[&[("svc", "svc/2"), ("op", "get")]],
                OK,
                &[L(6)],
            ),
            call(
                "ref-share",
                &[&[("dir", "dir/1"), ("file", "file/1"), ("kind", "k")]],
                OK,
                &[L(0)],
            ),
            call(
                "ref-share",
                &[&[("dir", "dir/2"), ("file", "file/1"), ("kind", "k")]],
                OVER,
                &[Over],
            ),
            // The unshared pattern below a shared one: another file, another counter.
            call(
                "ref-share",
                &[&[("dir", "dir/3"), ("file", "file/2"), ("kind", "k")]],
                OK,
                &[L(0)],
            ),
            // An exact value wins over a shared pattern and keeps its own counter.
            call("ref-share", &[&[("exact", "e1")]], OK, &[L(4)]),
            call("ref-share", &[&[("exact", "e2")]], OK, &[L(1)]),
            call("ref-share", &[&[("exact", "e3")]], OK, &[L(0)]),
            call("ref-share", &[&[("exact", "e1")]], OK, &[L(3)]),
            call("ref-share", &[&[("mid", "/xAy")]], OK, &[L(1)]),
            call("ref-share", &[&[("mid", "/xBBy")]], OK, &[L(0)]),
            call("ref-share", &[&[("multi", "p1q2r")]], OK, &[L(1)]),
            call("ref-share", &[&[("multi", "pqr")]], OK, &[L(0)]),
        ],
    ),
    (
        "example.yaml: replaces, a zero limit, shadow mode, unlimited",
        &[
            // `plan=premium` replaces `per_app`: alice's rule is dropped from this request.
            call(
                "ref-example",
                &[&[("plan", "premium")], &[("app", "a"), ("user", "alice")]],
                OK,
                &[L(3), N],
            ),
            call(
                "ref-example",
                &[&[("app", "a"), ("user", "alice")]],
                OK,
                &[L(0)],
            ),
            call(
                "ref-example",
                &[&[("app", "a"), ("user", "alice")]],
                OVER,
                &[Over],
            ),
            call(
                "ref-example",
                &[
                    &[("from", "edge"), ("to", "billing")],
                    &[("app", "a"), ("user", "alice")],
                ],
                OK,
                &[L(1), N],
            ),
            call(
                "ref-example",
                &[&[("app", "c"), ("user", "mallory")]],
                OVER,
                &[Over],
            ),
            call(
                "ref-example",
                &[
                    &[("from", "edge"), ("to", "unblock")],
                    &[("app", "c"), ("user", "mallory")],
                ],
                OK,
                &[L(1), N],
            ),
            call(
                "ref-example",
                &[&[("from", "edge"), ("to", "old")], &[("plan", "premium")]],
                OK,
                &[N, L(2)],
            ),
            call("ref-example", &[&[("app", "d")]], OK, &[L(1)]),
            call(
                "ref-example",
                &[&[("app", "d"), ("user", "zed")]],
                OK,
                &[L(2)],
            ),
            call(
                "ref-example",
                &[&[("app", "d"), ("bot", "watched")]],
                OK,
                &[L(0)],
            ),
            call(
                "ref-example",
                &[&[("app", "d"), ("bot", "watched")]],
                OK,
                &[Shadowed],
            ),
            call("ref-example", &[&[("app", "d"), ("health", "h")]], OK, &[U]),
            call("ref-example", &[&[("visitor", "v")]], OK, &[L(1)]),
            call("ref-config", &[&[("table", "orders")]], OK, &[L(2)]),
            call("ref-config", &[&[("table", "items")]], OK, &[L(2)]),
        ],
    ),
];

#[tokio::test]
async fn accepted_files_answer_as_the_references_tests_on_the_memory_store() {
    let rls = Rls::start(&["--config", &dir("accepted")]);
    wait_for_fresh_window(3600, Duration::from_secs(30));
    run(&rls, TABLE).await;
}

#[tokio::test]
async fn accepted_files_answer_as_the_references_tests_on_the_redis_store() {
    let redis = RedisServer::start();
    let rls = Rls::start(&[
        "--config",
        &dir("accepted"),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
    ]);
    wait_for_fresh_window(3600, Duration::from_secs(30));
    run(&rls, TABLE).await;
}

/// TestMetadata: a matched rule's `metadata` comes back in `dynamic_metadata` when it
/// passes (here with `--response-dynamic-metadata`), merged across descriptors.
#[tokio::test]
async fn metadata_yaml_comes_back_in_dynamic_metadata() {
    let rls = Rls::start(&["--config", &dir("accepted"), "--response-dynamic-metadata"]);
    let mut c = rls.client().await;
    let request = |descriptors: &[&[(&str, &str)]]| RateLimitRequest {
        domain: "ref-metadata".into(),
        descriptors: descriptors
            .iter()
            .map(|entries| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                ..RateLimitDescriptor::default()
            })
            .collect(),
        hits_addend: 0,
    };
    let r = c
        .should_rate_limit(request(&[
            &[("tenant", "acme"), ("user", "u")],
            &[("region", "r")],
        ]))
        .await
        .unwrap()
        .into_inner();
    let m = compat::json_of(&r.dynamic_metadata.unwrap());
    assert_eq!(
        m["metadata"],
        serde_json::json!({ "backend": "pool-a", "upstream_by_quota": { "backend": "pool-b" } })
    );
    // The nested override without metadata: none merged, so no `metadata` key.
    let r = c
        .should_rate_limit(request(&[&[("tenant", "acme"), ("user", "root")]]))
        .await
        .unwrap()
        .into_inner();
    let m = compat::json_of(&r.dynamic_metadata.unwrap());
    assert_eq!(m.get("metadata"), None, "{m}");
    assert_eq!(m["domain"], "ref-metadata");
}
