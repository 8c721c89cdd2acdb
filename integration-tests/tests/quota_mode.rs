//! Quota mode and dynamic metadata through the real binary, on the memory store and on
//! Redis (docs/envoy-compat.md, Quota mode and Dynamic metadata): `overall_code` combined
//! as the reference's service combines it, quota-mode rules counting every hit (a debit
//! past the limit is recorded, even in a denied request), the reference's metadata
//! structure, and the unlimited answer.

mod compat;

use std::time::Duration;

use St::{L, Over, U};
use compat::{OK, OVER, St, json_of, statuses_of};
use integration_tests::redis::RedisServer;
use integration_tests::{Rls, wait_for_fresh_window};
use ironclad_rls::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use ironclad_rls::proto::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse};
use serde_json::json;

fn config() -> String {
    format!("{}/tests/quota_mode", env!("CARGO_MANIFEST_DIR"))
}

/// One descriptor: its entry, and its own hits_addend when given.
fn d(key: &str, value: &str, hits: Option<u64>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: vec![Entry {
            key: key.into(),
            value: value.into(),
        }],
        hits_addend: hits,
        ..RateLimitDescriptor::default()
    }
}

fn req(descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: "llm".into(),
        descriptors,
        hits_addend: 0,
    }
}

async fn scenario(rls: &Rls) {
    wait_for_fresh_window(3600, Duration::from_secs(30));
    let mut c = rls.client().await;
    let mut ask = async |r: RateLimitRequest| -> RateLimitResponse {
        c.should_rate_limit(r).await.unwrap().into_inner()
    };
    let metadata = |r: &RateLimitResponse| json_of(r.dynamic_metadata.as_ref().unwrap());

    // Two quota-mode tiers (the reference's example.yaml): while one has quota the request
    // passes, and the metadata of those that passed names them.
    let tiers = || req(vec![d("model", "small", None), d("model", "large", None)]);
    let r = ask(tiers()).await;
    assert_eq!((r.overall_code, statuses_of(&r)), (OK, vec![L(0), L(1)]));
    assert_eq!(
        metadata(&r)["metadata"],
        json!({ "model_with_quota": { "name": "small", "tier": 1.0 }, "large_only": true })
    );
    let r = ask(tiers()).await;
    assert_eq!((r.overall_code, statuses_of(&r)), (OK, vec![Over, L(0)]));
    assert_eq!(
        metadata(&r)["metadata"],
        json!({ "model_with_quota": { "name": "large" }, "large_only": true })
    );
    // Every quota-mode descriptor over: denied; nothing passed, so no `metadata`.
    let r = ask(tiers()).await;
    assert_eq!((r.overall_code, statuses_of(&r)), (OVER, vec![Over, Over]));
    assert_eq!(metadata(&r).get("metadata"), None);

    // A non-quota rule over limit denies, and consumes nothing; the quota rule beside it
    // still counts its hit (a cost is never lost).
    for _ in 0..3 {
        let r = ask(req(vec![d("user", "u", None)])).await;
        assert_eq!(r.overall_code, OK);
    }
    let r = ask(req(vec![d("user", "u", None), d("tokens", "u", Some(10))])).await;
    assert_eq!(
        (r.overall_code, statuses_of(&r)),
        (OVER, vec![Over, L(990)])
    );
    let r = ask(req(vec![d("tokens", "u", Some(0))])).await;
    assert_eq!(
        statuses_of(&r),
        vec![L(990)],
        "the denied request's debit was recorded"
    );

    // Check, then debit at stream end far past the limit: the debit is recorded, and the
    // next check is over limit until the window ends.
    let check = || req(vec![d("tokens", "v", Some(0))]);
    let r = ask(check()).await;
    assert_eq!((r.overall_code, statuses_of(&r)), (OK, vec![L(1000)]));
    let r = ask(req(vec![d("tokens", "v", Some(2500))])).await;
    assert_eq!(statuses_of(&r), vec![Over], "the debit does not fit");
    let r = ask(check()).await;
    assert_eq!((r.overall_code, statuses_of(&r)), (OVER, vec![Over]));
    // The only quota-mode descriptor over, an ordinary one within its limit: denied
    // (TestServiceMixedPerDescriptorModes); the ordinary one reports its count as stored,
    // since the denied request took nothing from it.
    let r = ask(req(vec![d("user", "w", None), d("tokens", "v", Some(0))])).await;
    assert_eq!((r.overall_code, statuses_of(&r)), (OVER, vec![L(3), Over]));
    let r = ask(req(vec![d("user", "w", Some(0))])).await;
    assert_eq!(
        statuses_of(&r),
        vec![L(3)],
        "the denied request consumed nothing"
    );
}

/// Unlimited, and the whole metadata structure of one answer (needs no quota-mode counting
/// past a limit).
async fn metadata_shape(rls: &Rls) {
    let mut c = rls.client().await;
    let metadata = |r: &RateLimitResponse| json_of(r.dynamic_metadata.as_ref().unwrap());
    let mut full = req(vec![
        d("free", "f", None),
        d("tokens", "x", Some(7)),
        d("nothing", "n", None),
    ]);
    full.hits_addend = 2;
    full.descriptors[2].limit = Some(RateLimitOverride {
        requests_per_unit: 9,
        unit: 3,
        unit_multiplier: None,
    });
    let r = c.should_rate_limit(full).await.unwrap().into_inner();
    assert_eq!(
        (r.overall_code, statuses_of(&r)),
        (OK, vec![U, L(993), L(7)])
    );
    assert_eq!(r.statuses[0].limit_remaining, u32::MAX);
    assert_eq!(
        metadata(&r),
        json!({
            "domain": "llm",
            "descriptors": [
                { "entries": ["free=f"] },
                { "entries": ["tokens=x"], "hitsAddend": 7.0 },
                { "entries": ["nothing=n"], "limit": "requests_per_unit:9 unit:HOUR" },
            ],
            "hitsAddend": 2.0,
            "metadata": { "budget": "tokens" },
        })
    );
}

#[tokio::test]
async fn quota_mode_and_metadata_on_the_memory_store() {
    let rls = Rls::start(&["--config", &config(), "--response-dynamic-metadata"]);
    scenario(&rls).await;
    metadata_shape(&rls).await;
}

/// The same on Redis: its script must count a quota-mode op in a blocked batch and block only
/// when every quota op is over (CounterOp::quota, docs/envoy-compat.md §4).
#[tokio::test]
async fn quota_mode_and_metadata_on_the_redis_store() {
    let redis = RedisServer::start();
    let rls = Rls::start(&[
        "--config",
        &config(),
        "--response-dynamic-metadata",
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
    ]);
    scenario(&rls).await;
    metadata_shape(&rls).await;
}

/// `--quota-mode`: every descriptor is in quota mode; the request is denied only when all
/// of them are over. Without `--response-dynamic-metadata`, no metadata.
#[tokio::test]
async fn global_quota_mode() {
    let rls = Rls::start(&["--config", &config(), "--quota-mode"]);
    wait_for_fresh_window(3600, Duration::from_secs(30));
    let mut c = rls.client().await;
    let two = || req(vec![d("user", "g", Some(2)), d("model", "large", Some(2))]);
    let r = c.should_rate_limit(two()).await.unwrap().into_inner();
    assert_eq!((r.overall_code, statuses_of(&r)), (OK, vec![L(1), L(0)]));
    assert!(r.dynamic_metadata.is_none());
    let r = c.should_rate_limit(two()).await.unwrap().into_inner();
    assert_eq!((r.overall_code, statuses_of(&r)), (OVER, vec![Over, Over]));
    // Past the limit, counted all the same: user g holds 4 of 3.
    let r = c
        .should_rate_limit(req(vec![d("user", "g", Some(0)), d("user", "h", None)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.overall_code, statuses_of(&r)), (OK, vec![Over, L(2)]));
}

/// `value_to_metric`: the `rule` label of `ratelimit_hits_total` carries the request's value
/// at that level; `current_limit.name` keeps the key path. `validate` shows quota mode and
/// metadata.
#[tokio::test]
async fn value_to_metric_labels_and_validate() {
    let rls = Rls::start(&["--config", &config()]);
    let mut c = rls.client().await;
    let call = RateLimitRequest {
        domain: "llm".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                Entry {
                    key: "route".into(),
                    value: "/chat".into(),
                },
                Entry {
                    key: "method".into(),
                    value: "POST".into(),
                },
            ],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    };
    let r = c.should_rate_limit(call).await.unwrap().into_inner();
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().name,
        "route.method"
    );
    let hits = rls.metric(
        "ratelimit_hits_total",
        &[
            ("domain", "llm"),
            ("rule", "route=/chat.method"),
            ("outcome", "within_limit"),
        ],
    );
    assert_eq!(hits, Some(1.0));

    let out = integration_tests::run_cli(&["validate", &config()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "model = large: 2/hour, quota mode, metadata {\"model_with_quota\":{\"name\":\"large\"},\"large_only\":true}"
        ),
        "{stdout}"
    );
}
