//! envoyproxy/ratelimit configuration files, loaded unchanged from one directory (beside an
//! endpoint-format file), with the expected answer to every request: a table run against the
//! memory store and the Redis store through the real binary.

use std::time::Duration;

use integration_tests::redis::RedisServer;
use integration_tests::{Rls, wait_for_fresh_window};
use ironclad_rls::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use ironclad_rls::proto::{RateLimitDescriptor, RateLimitRequest, rate_limit_response::Code};

const OK: i32 = Code::Ok as i32;
const OVER: i32 = Code::OverLimit as i32;

/// One request and its expected answer: overall code, then per descriptor the expected
/// `limit_remaining` (`None`: no `current_limit` at all).
struct Step {
    domain: &'static str,
    descriptors: &'static [&'static [(&'static str, &'static str)]],
    hits: u32,
    /// A limit override on the first descriptor: (requests_per_unit, envoy.type.v3 unit).
    limit: Option<(u32, i32)>,
    code: i32,
    remaining: &'static [Option<u32>],
}

const fn step(
    domain: &'static str,
    descriptors: &'static [&'static [(&'static str, &'static str)]],
    code: i32,
    remaining: &'static [Option<u32>],
) -> Step {
    Step {
        domain,
        descriptors,
        hits: 0,
        limit: None,
        code,
        remaining,
    }
}

const TABLE: &[(&str, &[Step])] = &[
    (
        "exact values",
        &[
            step("databases", &[&[("database", "users")]], OK, &[Some(2)]),
            step("databases", &[&[("database", "users")]], OK, &[Some(1)]),
            step("databases", &[&[("database", "users")]], OK, &[Some(0)]),
            step("databases", &[&[("database", "users")]], OVER, &[Some(0)]),
            step("databases", &[&[("database", "other")]], OK, &[None]),
        ],
    ),
    (
        "a limit at the last entry's node only",
        &[
            step(
                "databases",
                &[&[("database", "default"), ("client", "x")]],
                OK,
                &[Some(0)],
            ),
            step(
                "databases",
                &[&[("database", "default"), ("client", "x")]],
                OVER,
                &[Some(0)],
            ),
            step(
                "databases",
                &[&[("database", "default"), ("client", "y")]],
                OK,
                &[Some(0)],
            ),
            step("databases", &[&[("database", "default")]], OK, &[Some(1)]),
            step(
                "databases",
                &[&[("database", "default"), ("client", "x"), ("extra", "z")]],
                OK,
                &[None],
            ),
            step(
                "databases",
                &[&[("client", "x"), ("database", "default")]],
                OK,
                &[None],
            ),
        ],
    ),
    (
        "nested key-only levels count each value",
        &[
            step(
                "messaging",
                &[&[("message_type", "marketing"), ("to_number", "1")]],
                OK,
                &[Some(1)],
            ),
            step(
                "messaging",
                &[&[("message_type", "marketing"), ("to_number", "1")]],
                OK,
                &[Some(0)],
            ),
            step(
                "messaging",
                &[&[("message_type", "marketing"), ("to_number", "1")]],
                OVER,
                &[Some(0)],
            ),
            step(
                "messaging",
                &[&[("message_type", "marketing"), ("to_number", "2")]],
                OK,
                &[Some(1)],
            ),
            step("messaging", &[&[("to_number", "1")]], OK, &[Some(4)]),
            step(
                "messaging",
                &[&[("message_type", "alert"), ("to_number", "1")]],
                OK,
                &[None],
            ),
        ],
    ),
    (
        "wildcards, shared patterns, fallback, unlimited, zero, shadow",
        &[
            step("paths", &[&[("path", "/api/v1/items")]], OK, &[Some(1)]),
            step("paths", &[&[("path", "/api/v1/items")]], OK, &[Some(0)]),
            step("paths", &[&[("path", "/api/v1/items")]], OVER, &[Some(0)]),
            step("paths", &[&[("path", "/api/v2/items")]], OK, &[Some(1)]),
            step("paths", &[&[("path", "/shared/a")]], OK, &[Some(1)]),
            step("paths", &[&[("path", "/shared/b")]], OK, &[Some(0)]),
            step("paths", &[&[("path", "/shared/c")]], OVER, &[Some(0)]),
            step("paths", &[&[("path", "/elsewhere")]], OK, &[Some(3)]),
            step("paths", &[&[("path", "/health")]], OK, &[None]),
            step("paths", &[&[("path", "/health")]], OK, &[None]),
            step("paths", &[&[("path", "/closed")]], OVER, &[Some(0)]),
            step("paths", &[&[("path", "/observed")]], OK, &[Some(0)]),
            step("paths", &[&[("path", "/observed")]], OK, &[Some(0)]),
        ],
    ),
    (
        "replaces, and no key collisions",
        &[
            step(
                "tiers",
                &[&[("tier", "gold")], &[("user", "u")]],
                OK,
                &[Some(99), None],
            ),
            step(
                "tiers",
                &[&[("tier", "gold")], &[("user", "u")]],
                OK,
                &[Some(98), None],
            ),
            step("tiers", &[&[("user", "u")]], OK, &[Some(0)]),
            step("tiers", &[&[("user", "u")]], OVER, &[Some(0)]),
            step("tiers", &[&[("a_b", "c")]], OK, &[Some(0)]),
            step("tiers", &[&[("a", "b_c")]], OK, &[Some(0)]),
        ],
    ),
    (
        "a rejected request consumes nothing on any descriptor",
        &[
            step(
                "databases",
                &[
                    &[("database", "default"), ("client", "r")],
                    &[("to_number", "9")],
                ],
                OK,
                &[Some(0), None],
            ),
            step("messaging", &[&[("to_number", "9")]], OK, &[Some(4)]),
            step(
                "databases",
                &[&[("database", "default"), ("client", "r")]],
                OVER,
                &[Some(0)],
            ),
            step("messaging", &[&[("to_number", "9")]], OK, &[Some(3)]),
        ],
    ),
    (
        "hits_addend, a limit override, unknown domains, both formats",
        &[
            Step {
                domain: "messaging",
                descriptors: &[&[("to_number", "h")]],
                hits: 3,
                limit: None,
                code: OK,
                remaining: &[Some(2)],
            },
            Step {
                domain: "messaging",
                descriptors: &[&[("to_number", "h")]],
                hits: 3,
                limit: None,
                code: OVER,
                remaining: &[Some(2)],
            },
            Step {
                domain: "tiers",
                descriptors: &[&[("anything", "x")]],
                hits: 0,
                limit: Some((1, 3)),
                code: OK,
                remaining: &[Some(0)],
            },
            Step {
                domain: "tiers",
                descriptors: &[&[("anything", "x")]],
                hits: 0,
                limit: Some((1, 3)),
                code: OVER,
                remaining: &[Some(0)],
            },
            step("nowhere", &[&[("path", "/x")]], OK, &[None]),
            step(
                "kcse",
                &[&[
                    ("endpoint", "kcserl"),
                    ("path", "/auth/x"),
                    ("consumer", "c"),
                ]],
                OK,
                &[Some(1)],
            ),
        ],
    ),
];

fn build(s: &Step) -> RateLimitRequest {
    RateLimitRequest {
        domain: s.domain.to_owned(),
        hits_addend: s.hits,
        descriptors: s
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, entries)| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                limit: s.limit.filter(|_| i == 0).map(|(requests_per_unit, unit)| {
                    RateLimitOverride {
                        requests_per_unit,
                        unit,
                        unit_multiplier: None,
                    }
                }),
                ..RateLimitDescriptor::default()
            })
            .collect(),
    }
}

async fn run_table(rls: &Rls) {
    let mut c = rls.client().await;
    wait_for_fresh_window(3600, Duration::from_secs(30));
    for (case, steps) in TABLE {
        for (i, s) in steps.iter().enumerate() {
            let r = c
                .should_rate_limit(build(s))
                .await
                .unwrap_or_else(|e| panic!("{case}, step {i}: {e}"))
                .into_inner();
            assert_eq!(r.overall_code, s.code, "{case}, step {i}: overall code");
            let remaining: Vec<Option<u32>> = r
                .statuses
                .iter()
                .map(|st| st.current_limit.as_ref().map(|_| st.limit_remaining))
                .collect();
            assert_eq!(
                remaining, s.remaining,
                "{case}, step {i}: limit_remaining per descriptor"
            );
        }
    }
}

fn config_dir() -> String {
    format!("{}/tests/envoy_compat", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_table_on_the_memory_store() {
    let rls = Rls::start(&["--config", &config_dir()]);
    run_table(&rls).await;
}

#[tokio::test]
async fn the_table_on_the_redis_store() {
    let redis = RedisServer::start();
    let rls = Rls::start(&[
        "--config",
        &config_dir(),
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
    ]);
    run_table(&rls).await;
    // What the reference would have written as one key (`a_b_c`) is two counters here.
    let keys = redis.cli(&["--scan", "--pattern", "rls:{tiers:a*"]);
    for counter in ["rls:{tiers:a_b=c}:d:", "rls:{tiers:a=b_c}:d:"] {
        assert_eq!(
            keys.lines().filter(|k| k.starts_with(counter)).count(),
            1,
            "{counter} in {keys}"
        );
    }
}

#[test]
fn validate_prints_the_descriptor_tree() {
    let out = integration_tests::run_cli(&["validate", &config_dir()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "  path = /shared/* (one shared counter): 2/hour",
        "    client (any value, counted apart): 1/hour as per-client",
        "  tier = gold: 100/hour as gold, replaces everyone",
        "  endpoint kcserl (side-by-side): overall none",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in\n{stdout}");
    }
}
