//! Decision tests with a controlled clock: the worked examples of docs/limits-format.md §7 and
//! every rule of §4–§5.

use super::*;
use crate::config::{Source, load_sources};
use crate::descriptor::Entry;

/// 2026-01-01T00:00:00Z plus 10 s: well inside a minute window.
const T0: u64 = 1_767_225_610_000;

struct Harness {
    limiter: RateLimiter,
    clock: Arc<ManualClock>,
}

fn rules_from(text: &str) -> Arc<RuleSet> {
    let loaded = load_sources(&[Source {
        name: "t.yaml".into(),
        text: text.into(),
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(RuleSet::compile(&loaded.config))
}

fn harness(text: &str) -> Harness {
    harness_with(text, LimiterOptions::default())
}

fn harness_with(text: &str, options: LimiterOptions) -> Harness {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(MemoryStore::new(clock.clone()));
    Harness {
        limiter: RateLimiter::new(rules_from(text), store, clock.clone(), options),
        clock,
    }
}

fn seed(rel: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/examples/limits/{rel}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn descriptor(path: &str, consumer: Option<&str>) -> Descriptor {
    let mut entries = vec![
        Entry {
            key: "endpoint".into(),
            value: "kcserl".into(),
        },
        Entry {
            key: "path".into(),
            value: path.into(),
        },
    ];
    if let Some(c) = consumer {
        entries.push(Entry {
            key: "consumer".into(),
            value: c.into(),
        });
    }
    Descriptor {
        entries,
        ..Descriptor::default()
    }
}

fn request(descriptors: Vec<Descriptor>) -> Request {
    Request {
        domain: "kcse".into(),
        descriptors,
        hits_addend: 0,
    }
}

impl Harness {
    async fn call(&self, path: &str, consumer: Option<&str>) -> Decision {
        self.limiter
            .should_rate_limit(&request(vec![descriptor(path, consumer)]))
            .await
            .unwrap()
    }

    /// Sends `n` requests and returns how many were admitted.
    async fn admitted(&self, n: usize, path: &str, consumer: Option<&str>) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if self.call(path, consumer).await.overall_code == Code::Ok {
                ok += 1;
            }
        }
        ok
    }
}

const URI_ONLY: &str = "/auth/admin/realms/API-TEST-URI-ONLY/";

#[tokio::test]
async fn example_2_2_per_consumer_invoker_and_anonymous() {
    let h = harness(&seed("seed/2.2-per-service-with-client.yaml"));
    let path = format!("{URI_ONLY}users?x=1");
    assert_eq!(h.admitted(10, &path, Some("a")).await, 10);
    let eleventh = h.call(&path, Some("a")).await;
    assert_eq!(eleventh.overall_code, Code::OverLimit);
    assert_eq!(eleventh.statuses[0].limit_remaining, 0);
    assert_eq!(
        h.admitted(10, &path, Some("b")).await,
        10,
        "consumer b is unaffected"
    );
    assert_eq!(h.admitted(51, URI_ONLY, Some("test_client3")).await, 50);
    assert_eq!(
        h.admitted(6, URI_ONLY, None).await,
        5,
        "anonymous requests share 5"
    );
    assert_eq!(
        h.admitted(6, URI_ONLY, Some("")).await,
        0,
        "an empty consumer is anonymous"
    );
    let outside = h.call("/auth/admin/realms/OTHER/", Some("a")).await;
    assert_eq!(outside.overall_code, Code::Ok);
    assert_eq!(outside.statuses[0].current_limit, None);
    // A new minute starts every counter afresh.
    h.clock.advance_ms(60_000);
    assert_eq!(h.admitted(11, &path, Some("a")).await, 10);
}

#[tokio::test]
async fn example_2_3_per_client() {
    let h = harness(&seed("seed/2.3-per-client.yaml"));
    assert_eq!(
        h.admitted(11, "/auth/realms/x", Some("test_client2")).await,
        10
    );
    let other = h.call("/auth/realms/x", Some("someone")).await;
    let limit = other.statuses[0].current_limit.clone().unwrap();
    assert_eq!(limit.requests_per_unit, 200_000);
    assert_eq!(limit.name.as_ref(), "kcserl /auth client");
    assert_eq!(other.statuses[0].limit_remaining, 199_999);
}

#[tokio::test]
async fn overall_limit_is_shared_by_everyone() {
    let h = harness(
        "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: kcserl
      overall_limit: 3
      uri_prefixes: [{prefix: /, value: 10, anon_value: 10}]
",
    );
    assert_eq!(h.call("/a", Some("x")).await.overall_code, Code::Ok);
    assert_eq!(h.call("/b", Some("y")).await.overall_code, Code::Ok);
    assert_eq!(h.call("/c", None).await.overall_code, Code::Ok);
    let fourth = h.call("/a", Some("z")).await;
    assert_eq!(fourth.overall_code, Code::OverLimit);
    assert_eq!(
        fourth.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .name
            .as_ref(),
        "kcserl overall"
    );
}

#[tokio::test]
async fn overall_zero_rejects_and_counts_nothing() {
    let h = harness(
        "kcse_rate_limits:
  endpoints:
    - {name: blocked, shortname: kcserl, overall_limit: 0, unit: hour}
    - name: open
      shortname: open
      uri_prefixes: [{prefix: /, value: 5}]
",
    );
    let open = Descriptor {
        entries: vec![
            Entry {
                key: "endpoint".into(),
                value: "open".into(),
            },
            Entry {
                key: "path".into(),
                value: "/x".into(),
            },
            Entry {
                key: "consumer".into(),
                value: "c".into(),
            },
        ],
        ..Descriptor::default()
    };
    let d = h
        .limiter
        .should_rate_limit(&request(vec![open.clone(), descriptor("/x", Some("c"))]))
        .await
        .unwrap();
    assert_eq!(d.overall_code, Code::OverLimit);
    assert!(!d.committed);
    assert_eq!(
        d.statuses[0].code,
        Code::Ok,
        "the other descriptor tells its own state"
    );
    assert_eq!(
        d.statuses[0].limit_remaining, 5,
        "and nothing was counted for it"
    );
    assert_eq!(d.statuses[1].code, Code::OverLimit);
    let blocked = d.statuses[1].current_limit.clone().unwrap();
    assert_eq!((blocked.requests_per_unit, blocked.unit), (0, Unit::Hour));
    // 10 s into the hour: 3590 s to go.
    assert_eq!(
        d.statuses[1].duration_until_reset,
        Some(Duration::from_secs(3590))
    );
}

#[tokio::test]
async fn rejected_requests_consume_no_quota() {
    let h = harness(&seed("full-example.yaml"));
    // test_client on the API-TEST realm: 20 per minute there, 200000 under /auth.
    let path = "/auth/admin/realms/API-TEST/clients";
    assert_eq!(h.admitted(25, path, Some("test_client")).await, 20);
    let d = h.call("/auth/other", Some("test_client")).await;
    // 20 admitted + this one: the 5 rejected requests took nothing from /auth.
    assert_eq!(d.statuses[0].limit_remaining, 200_000 - 21);
    // The overall counter (1000000) saw only admitted requests too.
    let overall = d
        .counters
        .iter()
        .find(|c| c.rule.name.as_ref() == "kcserl overall")
        .unwrap();
    assert_eq!(overall.state.after, 21);
}

#[tokio::test]
async fn statuses_report_the_tightest_counter_and_the_window() {
    let h = harness(&seed("full-example.yaml"));
    let d = h.call("/auth/admin/realms/API-TEST/x", Some("c")).await;
    let s = &d.statuses[0];
    let limit = s.current_limit.clone().unwrap();
    assert_eq!(
        limit.name.as_ref(),
        "kcserl /auth/admin/realms/API-TEST/ client"
    );
    assert_eq!(limit.requests_per_unit, 10);
    assert_eq!(limit.unit, Unit::Minute);
    assert_eq!(s.limit_remaining, 9);
    assert_eq!(s.duration_until_reset, Some(Duration::from_secs(50)));
}

#[tokio::test]
async fn hits_addend_rules() {
    let h = harness(&seed("seed/2.2-per-service-with-client.yaml"));
    let mut r = request(vec![descriptor(URI_ONLY, Some("a"))]);
    r.hits_addend = 7;
    assert_eq!(
        h.limiter.should_rate_limit(&r).await.unwrap().statuses[0].limit_remaining,
        3
    );
    // The descriptor's own hits override the request's.
    r.descriptors[0].hits_addend = Some(3);
    let d = h.limiter.should_rate_limit(&r).await.unwrap();
    assert_eq!(
        (d.overall_code, d.statuses[0].limit_remaining),
        (Code::Ok, 0)
    );
    // Check only, at exactly the limit: OK with 0 remaining, nothing counted.
    r.descriptors[0].hits_addend = Some(0);
    let d = h.limiter.should_rate_limit(&r).await.unwrap();
    assert_eq!(
        (d.overall_code, d.statuses[0].limit_remaining),
        (Code::Ok, 0)
    );
    // Negative hits give quota back.
    r.descriptors[0].hits_addend = Some(4);
    r.descriptors[0].is_negative_hits = true;
    let d = h.limiter.should_rate_limit(&r).await.unwrap();
    assert_eq!(
        (d.overall_code, d.statuses[0].limit_remaining),
        (Code::Ok, 4)
    );
    assert_eq!(h.admitted(5, URI_ONLY, Some("a")).await, 4);
}

#[tokio::test]
async fn endpoint_shadow_mode_counts_but_answers_ok() {
    let h = harness(
        "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: kcserl
      shadow_mode: true
      uri_prefixes: [{prefix: /, value: 2}]
",
    );
    assert_eq!(h.admitted(5, "/x", Some("c")).await, 5);
    let d = h.call("/x", Some("c")).await;
    assert_eq!(d.overall_code, Code::Ok);
    assert_eq!(d.statuses[0].code, Code::Ok);
    assert!(d.counters[0].state.over, "the decision is still computed");
    assert_eq!(d.counters[0].state.after, 6, "and counted as if allowed");
}

#[tokio::test]
async fn global_shadow_mode_keeps_statuses_truthful() {
    let text = seed("seed/2.2-per-service-with-client.yaml");
    let h = harness_with(
        &text,
        LimiterOptions {
            shadow_mode: true,
            ..LimiterOptions::default()
        },
    );
    assert_eq!(h.admitted(10, URI_ONLY, Some("a")).await, 10);
    let d = h.call(URI_ONLY, Some("a")).await;
    assert_eq!(d.overall_code, Code::Ok);
    assert_eq!(d.statuses[0].code, Code::OverLimit);
    assert!(
        !d.committed,
        "counted as if enforcing: the rejected hit is not counted"
    );
}

#[tokio::test]
async fn counters_survive_a_reload_and_new_limits_apply_at_once() {
    let h = harness(&seed("seed/2.1-per-service.yaml"));
    assert_eq!(h.admitted(8, URI_ONLY, Some("a")).await, 8);
    let lowered = seed("seed/2.1-per-service.yaml").replace("value: 10", "value: 9");
    h.limiter
        .install(Arc::new(Snapshot::initial(rules_from(&lowered))));
    assert_eq!(h.admitted(3, URI_ONLY, Some("a")).await, 1);
}

#[tokio::test]
async fn unlimited_descriptors_and_order_of_statuses() {
    let h = harness(&seed("seed/2.1-per-service.yaml"));
    let unknown = Descriptor {
        entries: vec![Entry {
            key: "endpoint".into(),
            value: "nope".into(),
        }],
        ..Descriptor::default()
    };
    let d = h
        .limiter
        .should_rate_limit(&request(vec![unknown, descriptor(URI_ONLY, Some("a"))]))
        .await
        .unwrap();
    assert_eq!(d.statuses.len(), 2);
    assert_eq!(d.statuses[0].current_limit, None);
    assert_eq!(d.statuses[1].limit_remaining, 9);
    assert_eq!(d.unmatched, vec![(0, Unmatched::UnknownEndpoint)]);
}

#[tokio::test]
async fn invalid_requests_are_refused_before_counting() {
    let h = harness(&seed("seed/2.1-per-service.yaml"));
    let err = h
        .limiter
        .should_rate_limit(&request(vec![]))
        .await
        .unwrap_err();
    assert!(matches!(err, LimitError::Invalid(_)), "{err}");
}

/// Counts the calls that reach the wrapped memory store.
#[derive(Debug)]
struct Counting {
    inner: MemoryStore,
    calls: std::sync::atomic::AtomicUsize,
}

impl CounterStore for Counting {
    fn apply<'a>(
        &'a self,
        ops: &'a [CounterOp],
        dry_run: bool,
    ) -> store::StoreFuture<'a, BatchOutcome> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(ops, dry_run)
    }
    fn ping(&self) -> store::StoreFuture<'_, ()> {
        self.inner.ping()
    }
    fn kind(&self) -> &'static str {
        "counting"
    }
}

#[tokio::test]
async fn full_counters_are_answered_without_the_store_until_their_window_ends() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(Counting {
        inner: MemoryStore::new(clock.clone()),
        calls: Default::default(),
    });
    let text = seed("seed/2.2-per-service-with-client.yaml");
    let options = LimiterOptions {
        over_limit_cache: true,
        ..LimiterOptions::default()
    };
    let limiter = RateLimiter::new(rules_from(&text), store.clone(), clock.clone(), options);
    let h = Harness { limiter, clock };
    let calls = || store.calls.load(std::sync::atomic::Ordering::SeqCst);

    assert_eq!(h.admitted(10, URI_ONLY, Some("a")).await, 10);
    assert_eq!(calls(), 10);
    for _ in 0..50 {
        let d = h.call(URI_ONLY, Some("a")).await;
        assert_eq!(d.overall_code, Code::OverLimit);
        assert_eq!(d.statuses[0].limit_remaining, 0);
        assert_eq!(
            d.statuses[0].duration_until_reset,
            Some(Duration::from_secs(50))
        );
    }
    assert_eq!(calls(), 10, "the full counter was answered locally");
    // Other consumers still reach the store.
    assert_eq!(h.admitted(1, URI_ONLY, Some("b")).await, 1);
    assert_eq!(calls(), 11);
    // A check-only request reads the store (OK at exactly the limit).
    let mut check = request(vec![descriptor(URI_ONLY, Some("a"))]);
    check.descriptors[0].hits_addend = Some(0);
    assert_eq!(
        h.limiter
            .should_rate_limit(&check)
            .await
            .unwrap()
            .overall_code,
        Code::Ok
    );
    assert_eq!(calls(), 12);
    // A reload forgets what was full; a new window starts afresh.
    h.limiter
        .install(Arc::new(Snapshot::initial(rules_from(&text))));
    h.call(URI_ONLY, Some("a")).await;
    assert_eq!(calls(), 13);
    h.clock.advance_ms(60_000);
    assert_eq!(h.admitted(10, URI_ONLY, Some("a")).await, 10);
}

#[tokio::test]
async fn replaces_drops_the_named_rule_when_both_match() {
    let h = harness(
        "domain: d
descriptors:
  - key: tier
    value: gold
    rate_limit: { name: gold, unit: minute, requests_per_unit: 100, replaces: [{name: everyone}] }
  - key: user
    rate_limit: { name: everyone, unit: minute, requests_per_unit: 1 }
",
    );
    let d = |k: &str, v: &str| Descriptor {
        entries: vec![Entry {
            key: k.into(),
            value: v.into(),
        }],
        ..Descriptor::default()
    };
    let req = |ds: Vec<Descriptor>| Request {
        domain: "d".into(),
        descriptors: ds,
        hits_addend: 0,
    };
    for _ in 0..5 {
        let out = h
            .limiter
            .should_rate_limit(&req(vec![d("tier", "gold"), d("user", "u")]))
            .await
            .unwrap();
        assert_eq!(
            out.overall_code,
            Code::Ok,
            "`everyone` is replaced by `gold`"
        );
        assert_eq!(out.statuses[1].current_limit, None);
    }
    // Alone, `everyone` applies.
    let alone = req(vec![d("user", "u")]);
    for want in [Code::Ok, Code::OverLimit] {
        let out = h.limiter.should_rate_limit(&alone).await.unwrap();
        assert_eq!(out.overall_code, want);
    }
}

/// The seed's egress limit as one shared bucket (docs/algorithms.md).
const EGRESS_BUCKET: &str = "kcse_rate_limits:
  endpoints:
    - name: geocode
      shortname: kcserl
      overall_limit: 5
      unit: second
      unit_multiplier: 15
      algorithm: token_bucket
";

#[tokio::test]
async fn the_egress_bucket_admits_its_burst_then_one_token_per_3_s() {
    let h = harness(EGRESS_BUCKET);
    let first = h.call("/geocode", None).await;
    let s = &first.statuses[0];
    let limit = s.current_limit.clone().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.unit_multiplier),
        (5, Unit::Second, 15)
    );
    assert_eq!(s.limit_remaining, 4);
    assert_eq!(
        s.duration_until_reset,
        Some(Duration::from_secs(3)),
        "time until the next token"
    );
    assert_eq!(
        h.admitted(10, "/geocode", None).await,
        4,
        "burst of 5 in all"
    );
    let over = h.call("/geocode", None).await;
    assert_eq!(over.overall_code, Code::OverLimit);
    assert_eq!(over.statuses[0].limit_remaining, 0);
    assert_eq!(
        over.statuses[0].duration_until_reset,
        Some(Duration::from_secs(3))
    );
    h.clock.advance_ms(2_999);
    let over = h.call("/geocode", None).await;
    assert_eq!(over.overall_code, Code::OverLimit);
    assert_eq!(
        over.statuses[0].duration_until_reset,
        Some(Duration::from_millis(1))
    );
    h.clock.advance_ms(1);
    assert_eq!(
        h.admitted(3, "/geocode", None).await,
        1,
        "one token per 3 s"
    );
    // Idle for a whole fill interval: full again, and a full bucket has nothing to wait for.
    h.clock.advance_ms(15_000);
    let check = h
        .limiter
        .should_rate_limit(&Request {
            descriptors: vec![Descriptor {
                hits_addend: Some(0),
                ..descriptor("/geocode", None)
            }],
            ..request(vec![])
        })
        .await
        .unwrap();
    assert_eq!(check.statuses[0].limit_remaining, 5);
    assert_eq!(check.statuses[0].duration_until_reset, Some(Duration::ZERO));
    assert_eq!(h.admitted(10, "/geocode", None).await, 5);
}

#[tokio::test]
async fn a_sliding_window_closes_the_fixed_windows_boundary_burst() {
    let text = |algorithm| {
        format!(
            "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: kcserl
      overall_limit: 3
      unit: second
      unit_multiplier: 10
      algorithm: {algorithm}
"
        )
    };
    // T0 is 10 s into a minute: a 10 s fixed window starts there. Send 3 just before the
    // window ends and 3 just after it.
    let fixed = harness(&text("fixed_window"));
    let sliding = harness(&text("sliding_window"));
    for h in [&fixed, &sliding] {
        h.clock.advance_ms(9_900);
    }
    assert_eq!(fixed.admitted(3, "/", None).await, 3);
    assert_eq!(sliding.admitted(3, "/", None).await, 3);
    let over = sliding.call("/", None).await;
    assert_eq!(over.overall_code, Code::OverLimit);
    assert_eq!(
        over.statuses[0].duration_until_reset,
        Some(Duration::from_secs(10)),
        "the oldest hit leaves 10 s after it came"
    );
    for h in [&fixed, &sliding] {
        h.clock.advance_ms(200);
    }
    assert_eq!(fixed.admitted(3, "/", None).await, 3, "6 within 200 ms");
    assert_eq!(
        sliding.admitted(3, "/", None).await,
        0,
        "never more than 3 in 10 s"
    );
    sliding.clock.advance_ms(9_799);
    assert_eq!(sliding.admitted(1, "/", None).await, 0);
    sliding.clock.advance_ms(1);
    assert_eq!(sliding.admitted(5, "/", None).await, 3);
    let d = sliding.call("/", None).await;
    assert_eq!(d.statuses[0].limit_remaining, 0);
}

#[tokio::test]
async fn the_over_limit_cache_never_rejects_a_strict_counter_that_fits() {
    let options = LimiterOptions {
        over_limit_cache: true,
        ..LimiterOptions::default()
    };
    for algorithm in ["sliding_window", "token_bucket"] {
        let h = harness_with(
            &format!(
                "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: kcserl
      overall_limit: 2
      unit: second
      unit_multiplier: 10
      algorithm: {algorithm}
"
            ),
            options,
        );
        assert_eq!(h.admitted(2, "/", None).await, 2);
        let over = h.call("/", None).await;
        assert_eq!(over.overall_code, Code::OverLimit, "{algorithm}");
        // Hits given back make room at once: a cached "full" would still reject.
        let give_back = Request {
            descriptors: vec![Descriptor {
                is_negative_hits: true,
                ..descriptor("/", None)
            }],
            ..request(vec![])
        };
        h.limiter.should_rate_limit(&give_back).await.unwrap();
        assert_eq!(
            h.call("/", None).await.overall_code,
            Code::Ok,
            "{algorithm}"
        );
        // Room also comes back at the counter's own pace, not at a window's end.
        let over = h.call("/", None).await;
        assert_eq!(over.overall_code, Code::OverLimit, "{algorithm}");
        let wait = over.statuses[0].duration_until_reset.unwrap();
        h.clock.advance_ms(u64::try_from(wait.as_millis()).unwrap());
        assert_eq!(
            h.call("/", None).await.overall_code,
            Code::Ok,
            "{algorithm}: admitted as soon as it fits"
        );
    }
}

#[tokio::test]
async fn a_descriptor_override_keeps_the_rules_algorithm_and_its_multiplier() {
    let h = harness(
        "domain: d
descriptors:
  - key: k
    rate_limit: { unit: second, requests_per_unit: 100, algorithm: sliding_window }
",
    );
    let req = Request {
        domain: "d".into(),
        hits_addend: 0,
        descriptors: vec![Descriptor {
            entries: vec![Entry {
                key: "k".into(),
                value: "v".into(),
            }],
            limit_override: Some(crate::descriptor::LimitOverride {
                requests_per_unit: 2,
                unit: Unit::Second,
                unit_multiplier: 30,
            }),
            ..Descriptor::default()
        }],
    };
    for _ in 0..2 {
        let d = h.limiter.should_rate_limit(&req).await.unwrap();
        assert_eq!(d.overall_code, Code::Ok);
        let l = d.statuses[0].current_limit.clone().unwrap();
        assert_eq!((l.requests_per_unit, l.unit_multiplier), (2, 30));
        assert_eq!(
            d.counters[0].rule.counting.algorithm,
            crate::config::Algorithm::SlidingWindow
        );
    }
    h.clock.advance_ms(29_999);
    let d = h.limiter.should_rate_limit(&req).await.unwrap();
    assert_eq!(d.overall_code, Code::OverLimit, "a 30 s sliding window");
    h.clock.advance_ms(1);
    let d = h.limiter.should_rate_limit(&req).await.unwrap();
    assert_eq!(d.overall_code, Code::Ok);
}

/// Quota mode, dynamic metadata and the unlimited answer (docs/envoy-compat.md): the cases of
/// the reference's service tests (`test/service/ratelimit_test.go`), with real counting.
const QUOTA_RULES: &str = "domain: q
descriptors:
  - key: regular
    rate_limit: { unit: minute, requests_per_unit: 1 }
    metadata: { name: service_1, pool: { a: 1 } }
  - key: quota
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
    metadata: { name: service_2, pool: { a: 2, b: 2 }, only_quota: true }
  - key: quota2
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: debit
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 10 }
  - key: free
    rate_limit: { unlimited: true }
";

fn q_request(keys: &[&str]) -> Request {
    Request {
        domain: "q".into(),
        hits_addend: 0,
        descriptors: keys
            .iter()
            .map(|k| Descriptor {
                entries: vec![Entry {
                    key: (*k).into(),
                    value: "v".into(),
                }],
                ..Descriptor::default()
            })
            .collect(),
    }
}

impl Harness {
    async fn q(&self, keys: &[&str]) -> (Code, Vec<Code>) {
        let d = self
            .limiter
            .should_rate_limit(&q_request(keys))
            .await
            .unwrap();
        (d.overall_code, d.statuses.iter().map(|s| s.code).collect())
    }
}

use Code::{Ok as OK, OverLimit as OVER};

#[tokio::test]
async fn quota_mode_combines_overall_code_as_the_reference() {
    let h = harness(QUOTA_RULES);
    // A non-quota descriptor over limit denies, whatever the quota descriptors say
    // (TestServicePerDescriptorQuotaMode).
    assert_eq!(h.q(&["regular"]).await, (OK, vec![OK]));
    assert_eq!(h.q(&["regular", "quota"]).await, (OVER, vec![OVER, OK]));
    // The rejected request counted nothing on the regular rule, but the quota rule counted
    // its hit: it is now full.
    assert_eq!(h.q(&["quota2", "quota"]).await, (OK, vec![OK, OVER]));
    // Some quota descriptors over: OK (TestServiceQuotaModeOnlySomeOverTheLimit). All of
    // them over: OVER_LIMIT (TestServiceQuotaModeOnlyAllOverTheLimit).
    assert_eq!(h.q(&["quota", "quota2"]).await, (OVER, vec![OVER, OVER]));
    // The only quota descriptor over, the regular one within: OVER_LIMIT
    // (TestServiceMixedPerDescriptorModes); the regular rule consumed nothing.
    h.clock.advance_ms(60_000);
    assert_eq!(h.q(&["quota"]).await, (OK, vec![OK]));
    assert_eq!(h.q(&["regular", "quota"]).await, (OVER, vec![OK, OVER]));
    assert_eq!(h.q(&["regular"]).await, (OK, vec![OK]));
    // An unlimited descriptor takes no part: the one quota descriptor over still denies.
    assert_eq!(h.q(&["free", "quota"]).await, (OVER, vec![OK, OVER]));
}

#[tokio::test]
async fn global_quota_mode_denies_only_when_every_descriptor_is_over() {
    let h = harness_with(
        QUOTA_RULES,
        LimiterOptions {
            quota_mode: true,
            ..LimiterOptions::default()
        },
    );
    assert_eq!(h.q(&["regular", "quota2"]).await, (OK, vec![OK, OK]));
    // Both over (TestServiceGlobalQuotaMode).
    assert_eq!(h.q(&["regular", "quota2"]).await, (OVER, vec![OVER, OVER]));
    // A descriptor no rule limits is a quota descriptor that passed, as in the reference.
    assert_eq!(h.q(&["regular", "nothing"]).await, (OK, vec![OVER, OK]));
    // Global shadow mode still wins.
    let h = harness_with(
        QUOTA_RULES,
        LimiterOptions {
            quota_mode: true,
            shadow_mode: true,
            ..LimiterOptions::default()
        },
    );
    h.q(&["regular"]).await;
    assert_eq!(h.q(&["regular"]).await, (OK, vec![OVER]));
}

#[tokio::test]
async fn a_quota_debit_past_the_limit_is_recorded() {
    let h = harness(QUOTA_RULES);
    let mut check = q_request(&["debit"]);
    check.descriptors[0].hits_addend = Some(0);
    let mut debit = q_request(&["debit"]);
    debit.descriptors[0].hits_addend = Some(25);
    let d = h.limiter.should_rate_limit(&check).await.unwrap();
    assert_eq!((d.overall_code, d.statuses[0].limit_remaining), (OK, 10));
    // The stream's real cost, far past the limit: reported over, and counted all the same.
    let d = h.limiter.should_rate_limit(&debit).await.unwrap();
    assert_eq!(d.statuses[0].code, OVER);
    assert_eq!(d.counters[0].state.after, 25);
    // The next check sees it: denied until the window ends.
    let d = h.limiter.should_rate_limit(&check).await.unwrap();
    assert_eq!((d.overall_code, d.statuses[0].limit_remaining), (OVER, 0));
    h.clock.advance_ms(60_000);
    let d = h.limiter.should_rate_limit(&check).await.unwrap();
    assert_eq!(d.overall_code, OK);
}

#[tokio::test]
async fn the_over_limit_cache_never_answers_a_quota_counter() {
    let clock = Arc::new(ManualClock::new(T0));
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let options = LimiterOptions {
        over_limit_cache: true,
        ..LimiterOptions::default()
    };
    let limiter = RateLimiter::new(rules_from(QUOTA_RULES), store, clock.clone(), options);
    let mut debit = q_request(&["debit"]);
    debit.descriptors[0].hits_addend = Some(4);
    for expected_after in [4, 8, 12, 16] {
        let d = limiter.should_rate_limit(&debit).await.unwrap();
        assert_eq!(
            d.counters[0].state.after, expected_after,
            "every debit counted"
        );
    }
}

#[tokio::test]
async fn dynamic_metadata_has_the_references_structure() {
    let h = harness_with(
        QUOTA_RULES,
        LimiterOptions {
            response_dynamic_metadata: true,
            ..LimiterOptions::default()
        },
    );
    let mut req = q_request(&["regular", "quota", "free"]);
    req.hits_addend = 2;
    req.descriptors[1].hits_addend = Some(1);
    req.descriptors[2].limit_override = Some(crate::descriptor::LimitOverride {
        requests_per_unit: 5,
        unit: Unit::Minute,
        unit_multiplier: 1,
    });
    // regular: 2 hits of 1 → over (and the request is denied); quota passes with 1 hit.
    let d = h.limiter.should_rate_limit(&req).await.unwrap();
    assert_eq!(d.overall_code, OVER);
    let m = serde_json::Value::Object(d.dynamic_metadata.unwrap());
    assert_eq!(
        m,
        json!({
            "domain": "q",
            "descriptors": [
                { "entries": ["regular=v"] },
                { "entries": ["quota=v"], "hitsAddend": 1.0 },
                { "entries": ["free=v"], "limit": "requests_per_unit:5 unit:MINUTE" },
            ],
            "hitsAddend": 2.0,
            // Only the passed descriptor's metadata.
            "metadata": { "name": "service_2", "pool": { "a": 2, "b": 2 }, "only_quota": true },
        })
    );
    // Both pass: merged, the first descriptor's value of a key wins, mappings merge.
    let d = h
        .limiter
        .should_rate_limit(&q_request(&["regular", "quota2", "quota"]))
        .await
        .unwrap();
    assert_eq!(
        d.statuses.iter().map(|s| s.code).collect::<Vec<_>>(),
        [OK, OK, OVER]
    );
    let m = serde_json::Value::Object(d.dynamic_metadata.unwrap());
    assert_eq!(
        m["metadata"],
        json!({ "name": "service_1", "pool": { "a": 1 } })
    );
    // Off: none.
    let off = harness(QUOTA_RULES);
    let d = off
        .limiter
        .should_rate_limit(&q_request(&["regular"]))
        .await
        .unwrap();
    assert!(d.dynamic_metadata.is_none());
}

#[tokio::test]
async fn unlimited_answers_the_references_remaining() {
    let h = harness(QUOTA_RULES);
    let d = h
        .limiter
        .should_rate_limit(&q_request(&["free", "nothing"]))
        .await
        .unwrap();
    assert_eq!(d.overall_code, OK);
    assert_eq!(d.statuses[0].limit_remaining, u32::MAX);
    assert!(d.statuses[0].current_limit.is_none());
    assert_eq!(
        d.statuses[1].limit_remaining, 0,
        "not limited is not unlimited"
    );
    assert!(d.counters.is_empty(), "unlimited is never counted");
}

#[tokio::test]
async fn a_shadow_quota_rule_is_a_quota_descriptor_that_passed() {
    let text = "domain: q
descriptors:
  - key: quota
    quota_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: watched
    quota_mode: true
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 1 }
";
    let h = harness(text);
    assert_eq!(h.q(&["quota", "watched"]).await, (OK, vec![OK, OK]));
    // Both past their limits, but the shadow one reports OK: not every quota descriptor is
    // over, so the request passes (the reference counts the shadow rule's OK status).
    assert_eq!(h.q(&["quota", "watched"]).await, (OK, vec![OVER, OK]));
    assert_eq!(h.q(&["quota"]).await, (OVER, vec![OVER]));
}
