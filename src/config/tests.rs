//! Loader tests: the seed's examples, every default, and error reporting.

use super::*;

fn src(name: &str, text: &str) -> Source {
    Source {
        name: name.to_owned(),
        text: text.to_owned(),
    }
}

fn load_one(text: &str) -> Result<Loaded, LoadError> {
    load_sources(&[src("t.yaml", text)])
}

fn errors(text: &str) -> Vec<String> {
    load_one(text)
        .expect_err("expected the file to be rejected")
        .diagnostics
        .into_iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

fn example(rel: &str) -> Source {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/limits/");
    src(
        rel,
        &std::fs::read_to_string(format!("{path}{rel}")).unwrap(),
    )
}

#[test]
fn every_seed_example_loads_unchanged() {
    for rel in [
        "seed/2.1-per-service.yaml",
        "seed/2.2-per-service-with-client.yaml",
        "seed/2.3-per-client.yaml",
        "full-example.yaml",
    ] {
        let loaded = load_sources(&[example(rel)]).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(loaded.config.domains.len(), 1, "{rel}");
        assert_eq!(loaded.config.domains[0].domain, "kcse");
    }
}

#[test]
fn full_example_defaults_and_values() {
    let loaded = load_sources(&[example("full-example.yaml")]).unwrap();
    let ep = &loaded.config.domains[0].endpoints[0];
    assert_eq!(ep.shortname, "kcserl");
    assert_eq!(ep.overall_limit, OverallLimit::Limit(1_000_000));
    assert_eq!(ep.unit, Unit::Minute);
    let p = &ep.uri_prefixes;
    assert_eq!(p.len(), 4);
    assert_eq!(p[0].prefix, "/auth");
    assert_eq!(p[0].anon_value, None);
    assert_eq!(p[0].invokers[0].value, 10);
    assert_eq!(p[1].invokers[0].client, "test_client");
    assert_eq!(p[1].invokers[0].value, 20);
    // The token endpoint has no `value`: identified consumers get the documented default, 1.
    assert_eq!(p[2].value, 1);
    assert_eq!(p[2].anon_value, Some(10));
    // `/auth/resources/` has no unit: it inherits the endpoint's, which defaults to minute.
    assert_eq!(p[3].unit, Unit::Minute);
    assert_eq!(p[3].anon_value, Some(2_000_000));
    // The invoker's `anon_value` loads, with a warning that it has no effect.
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.path.ends_with("invokers[0].anon_value") && w.message.contains("no effect")),
        "{:#?}",
        loaded.warnings
    );
}

#[test]
fn overall_limit_sign_decides_its_meaning() {
    let with = |v: &str| {
        let text = format!(
            "kcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: s\n      overall_limit: {v}\n"
        );
        load_one(&text).unwrap().config.domains[0].endpoints[0].overall_limit
    };
    assert_eq!(with("-1"), OverallLimit::None);
    assert_eq!(with("-100"), OverallLimit::None);
    assert_eq!(with("0"), OverallLimit::RejectAll);
    assert_eq!(with("3"), OverallLimit::Limit(3));
}

#[test]
fn inheritance_of_units_and_values() {
    let text = "kcse_rate_limits:
  domain: other
  endpoints:
    - name: n
      shortname: s
      unit: HOUR
      url_prefixes:
        - prefix: /a
          value: 7
          anon_value: 3
          invokers:
            - client: c1
            - client: c2
              unit: second
              value: 2
";
    let loaded = load_one(text).unwrap();
    let d = &loaded.config.domains[0];
    assert_eq!(d.domain, "other");
    let p = &d.endpoints[0].uri_prefixes[0];
    assert_eq!(p.unit, Unit::Hour);
    assert_eq!((p.invokers[0].unit, p.invokers[0].value), (Unit::Hour, 7));
    assert_eq!((p.invokers[1].unit, p.invokers[1].value), (Unit::Second, 2));
}

#[test]
fn errors_carry_file_line_column_and_field_path() {
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      uri_prefixes:
        - prefix: /a
          unit: minute
        - prefix: /b
        - prefix: /c
          unit: minutes
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        errs[0],
        "t.yaml:10:17: error: kcse_rate_limits.endpoints[0].uri_prefixes[2].unit: unknown unit \"minutes\"; \
         expected one of second, minute, hour, day, week, month, year; did you mean `minute`?"
    );
}

#[test]
fn every_error_is_listed_at_once() {
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      overal_limit: 5
      uri_prefixes:
        - prefix: a
          value: -1
        - prefix: /b
          anon_value: \"ten\"
          invokers:
            - client: x
            - client: x
    - shortname: s
";
    let errs = errors(text);
    let joined = errs.join("\n");
    for needle in [
        "t.yaml:5:7: error: kcse_rate_limits.endpoints[0].overal_limit: unknown field `overal_limit`; did you mean `overall_limit`?",
        "uri_prefixes[0].prefix: must start with `/`",
        "uri_prefixes[0].value: must be at least 0, found -1",
        "uri_prefixes[1].anon_value: expected an integer, found a string",
        "uri_prefixes[1].invokers[1].client: duplicate client \"x\"",
        "endpoints[1].name: required field is missing",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in\n{joined}");
    }
}

#[test]
fn duplicates_named_unique_are_errors() {
    let dup_prefix = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      uri_prefixes:
        - prefix: /a/
        - prefix: /a//
";
    let errs = errors(dup_prefix).join("\n");
    assert!(errs.contains("duplicate prefix \"/a/\""), "{errs}");

    let one = "kcse_rate_limits:\n  endpoints:\n    - name: a\n      shortname: same\n";
    let two =
        "kcse_rate_limits:\n  domain: other\n  endpoints:\n    - name: b\n      shortname: same\n";
    let err = load_sources(&[src("one.yaml", one), src("two.yaml", two)]).unwrap_err();
    assert!(
        err.to_string().contains(
            "two.yaml:5:18: error: kcse_rate_limits.endpoints[0].shortname: duplicate shortname \"same\" (first defined at one.yaml:4:18, kcse_rate_limits.endpoints[0].shortname)"
        ),
        "{err}"
    );
}

#[test]
fn a_duplicate_shortname_is_reported_at_the_second_shortname_line() {
    // The second endpoint's `shortname:` is on line 9, not on its first line (7).
    let text = "kcse_rate_limits:
  endpoints:
    - name: first
      shortname: same
      uri_prefixes:
        - { prefix: /a, value: 1 }
    - name: second
      endpoint: host:1
      shortname: same
";
    let err = load_sources(&[src("f.yaml", text)]).unwrap_err();
    let dup: Vec<&Diagnostic> = err
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(dup.len(), 1, "{err}");
    assert_eq!(
        dup[0].pos,
        Some(Pos {
            line: 9,
            column: 18
        }),
        "{err}"
    );
    assert_eq!(dup[0].path, "kcse_rate_limits.endpoints[1].shortname");
    assert!(
        dup[0].message.contains("first defined at f.yaml:4:18"),
        "{err}"
    );
    // Spelled `shorname`, the path names the key as written.
    let typo = text.replace("      shortname: same\n", "      shorname: same\n");
    let err = load_sources(&[src("f.yaml", &typo)]).unwrap_err();
    let dup = err
        .diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error)
        .expect("an error");
    assert_eq!(dup.path, "kcse_rate_limits.endpoints[1].shorname");
    assert_eq!(
        dup.pos,
        Some(Pos {
            line: 9,
            column: 17
        })
    );
}

#[test]
fn empty_and_foreign_files_are_rejected() {
    assert!(errors("")[0].contains("file is empty"));
    assert!(errors("   \n# only a comment?\n").len() == 1 || load_one("   \n").is_err());
    let errs = errors("kcse_rate_limit:\n  endpoints: []\n").join("\n");
    assert!(errs.contains("looks like a misspelling"), "{errs}");
    // The envoyproxy/ratelimit format is recognised by its top-level keys.
    let loaded = load_one("domain: x\ndescriptors: []\n").unwrap();
    assert_eq!(loaded.config.descriptor_domains[0].domain, "x");
    let errs = errors("kcse_rate_limits: [1, 2\n").join("\n");
    assert!(errs.starts_with("t.yaml:"), "{errs}");
    assert!(errs.contains("invalid YAML"), "{errs}");
}

#[test]
fn other_top_level_keys_are_ignored() {
    let text = "some_other_property: 1\nkcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: s\n";
    assert!(load_one(text).is_ok());
}

#[test]
fn surprising_defaults_warn() {
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shorname: s
      soft: { value: 8, step: 2 }
      uri_prefixes:
        - prefix: /x
        - prefix: /y/./z
          value: 100
          anon_value: 5
";
    let loaded = load_one(text).unwrap();
    let w: Vec<String> = loaded.warnings.iter().map(|d| d.to_string()).collect();
    let joined = w.join("\n");
    for needle in [
        "`shorname` is accepted as an alias",
        "uri_prefixes[0].value: no `value`",
        "uri_prefixes[0].anon_value: no `anon_value`",
        "soft.value 8 is at or above the limit it watches (value 1)",
        "soft.value 8 is at or above the limit it watches (anon_value 5)",
        "\"/y/./z\" is matched as \"/y/z\"",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in\n{joined}");
    }
    assert_eq!(loaded.config.domains[0].endpoints[0].shortname, "s");
}

#[test]
fn numbers_are_not_silently_taken_as_names() {
    let text = "kcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: 42\n";
    let errs = errors(text).join("\n");
    assert!(errs.contains("quote it"), "{errs}");
}

#[test]
fn limits_beyond_uint32_are_rejected() {
    let text = "kcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: s\n      uri_prefixes:\n        - prefix: /a\n          value: 4294967296\n";
    let errs = errors(text).join("\n");
    assert!(errs.contains("must be at most 4294967295"), "{errs}");
}

#[test]
fn sha_changes_with_content() {
    let a = load_one("kcse_rate_limits:\n  endpoints: []\n").unwrap();
    let b = load_one("kcse_rate_limits:\n  endpoints: []\n# changed\n").unwrap();
    assert_ne!(a.sha256, b.sha256);
    assert_eq!(a.sha256.len(), 64);
}

const ENVOY: &str = "domain: mongo_cla
descriptors:
  - key: remote_address
    rate_limit: { unit: second, requests_per_unit: 10 }
  - key: database
    value: users
    descriptors:
      - key: client
        rate_limit: { name: per-client, unit: MINUTE, requests_per_unit: 100 }
        shadow_mode: true
  - key: path
    value: \"/api/*/items\"
    rate_limit: { unlimited: true }
";

#[test]
fn envoy_format_loads() {
    let loaded = load_one(ENVOY).unwrap();
    let d = &loaded.config.descriptor_domains[0];
    assert_eq!(d.domain, "mongo_cla");
    assert_eq!(d.descriptors.len(), 3);
    let client = &d.descriptors[1].descriptors[0];
    assert!(client.shadow_mode);
    assert_eq!(
        client.rate_limit,
        Some(RateLimitConfig::Limit {
            requests_per_unit: 100,
            unit: Unit::Minute,
            counting: Counting::default(),
            name: Some("per-client".into()),
            replaces: vec![]
        })
    );
    assert_eq!(
        d.descriptors[2].rate_limit,
        Some(RateLimitConfig::Unlimited { name: None })
    );
}

#[test]
fn envoy_format_validation_lists_everything() {
    let text = "domain: d
descriptors:
  - key: a
    rate_limit: { unit: second, requests_per_unit: 1, unlimited: true }
  - key: a
  - key: a
  - key: \"\"
  - key: b
    value: x
    rate_limit: { unit: minute, requests_per_unit: 5, name: r1, replaces: [{name: r1}] }
    descriptors:
      - key: c
        rate_limit: { unit: hour, requests_per_unit: 5, replaces: [{name: nothing}] }
        typo: 1
  - key: e
    rate_limit: { requests_per_unit: 5 }
";
    let errs = errors(text).join("\n");
    for needle in [
        "t.yaml:4:25: error: descriptors[0].rate_limit.unit: not allowed beside `unlimited: true`",
        "descriptors[1]: duplicate descriptor: key \"a\" without a value appears twice at this level",
        "descriptors[3].key: must not be empty",
        "descriptors[4].rate_limit.replaces[0].name: \"r1\": a rule cannot replace itself",
        "descriptors[4].descriptors[0].rate_limit.replaces[0].name: \"nothing\": names no rule in this domain",
        "descriptors[4].descriptors[0].typo: unknown field `typo`",
        "descriptors[5].rate_limit.unit: required field is missing",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in\n{errs}");
    }
}

#[test]
fn a_domain_has_one_file_and_one_format() {
    let a = src("a.yaml", "domain: d\ndescriptors: []\n");
    let b = src("b.yaml", "domain: d\ndescriptors: []\n");
    let err = load_sources(&[a.clone(), b]).unwrap_err().to_string();
    assert!(
        err.contains("b.yaml:1:1: error: domain: domain \"d\" is already defined in a.yaml"),
        "{err}"
    );
    let endpoints = src(
        "e.yaml",
        "kcse_rate_limits:\n  domain: d\n  endpoints: []\n",
    );
    let err = load_sources(&[endpoints, a]).unwrap_err().to_string();
    assert!(err.contains("each domain has one format"), "{err}");
    // Both formats side by side, in different domains.
    let endpoints = src("e.yaml", "kcse_rate_limits:\n  endpoints: []\n");
    assert!(load_sources(&[endpoints, src("a.yaml", ENVOY)]).is_ok());
}

#[test]
fn the_seed_egress_bucket_loads() {
    // docs/algorithms.md: the seed's Envoy local bucket (5 tokens, 5 per 15 s), shared.
    let text = "kcse_rate_limits:
  domain: egress
  endpoints:
    - name: geocode
      shortname: geocode
      endpoint: maps.example:443
      overall_limit: 5
      unit: second
      unit_multiplier: 15
      algorithm: token_bucket
";
    let loaded = load_one(text).unwrap();
    let ep = &loaded.config.domains[0].endpoints[0];
    assert_eq!(
        ep.counting,
        Counting {
            unit_multiplier: 15,
            algorithm: Algorithm::TokenBucket,
            burst: None
        }
    );
    assert_eq!(ep.counting.window_secs(ep.unit), 15);
    assert_eq!(ep.counting.capacity(5), 5, "burst defaults to the limit");
}

#[test]
fn algorithm_and_multiplier_are_inherited_and_burst_is_not() {
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      overall_limit: 10
      unit: second
      unit_multiplier: 15
      algorithm: token_bucket
      burst: 20
      uri_prefixes:
        - prefix: /inherits
          value: 3
          invokers:
            - client: same
            - client: own-unit
              unit: minute
            - client: sliding
              algorithm: sliding_window
              unit_multiplier: 5
        - prefix: /own
          unit: hour
          algorithm: fixed_window
          value: 4
          invokers:
            - client: bucket
              algorithm: token_bucket
              burst: 9
";
    let loaded = load_one(text).unwrap();
    let ep = &loaded.config.domains[0].endpoints[0];
    assert_eq!(ep.counting.burst, Some(20));
    let p = &ep.uri_prefixes;
    let c = |unit_multiplier, algorithm, burst| Counting {
        unit_multiplier,
        algorithm,
        burst,
    };
    let (tb, sw, fw) = (
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
    );
    assert_eq!((p[0].unit, p[0].counting), (Unit::Second, c(15, tb, None)));
    assert_eq!(p[0].invokers[0].counting, c(15, tb, None));
    // Setting `unit` without `unit_multiplier` means multiplier 1.
    assert_eq!(
        (p[0].invokers[1].unit, p[0].invokers[1].counting),
        (Unit::Minute, c(1, tb, None))
    );
    assert_eq!(p[0].invokers[2].counting, c(5, sw, None));
    assert_eq!((p[1].unit, p[1].counting), (Unit::Hour, c(1, fw, None)));
    assert_eq!(p[1].invokers[0].counting, c(1, tb, Some(9)));
}

#[test]
fn algorithm_fields_are_validated_with_positions() {
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      burst: 5
      algorithm: token_bucket
      uri_prefixes:
        - prefix: /a
          algorithm: sliding_windows
          unit_multiplier: 0
        - prefix: /b
          algorithm: sliding_window
          burst: 3
        - prefix: /c
          unit: year
          unit_multiplier: 400000
";
    let errs = errors(text).join("\n");
    for needle in [
        "t.yaml:5:14: error: kcse_rate_limits.endpoints[0].burst: sizes the overall bucket, but there is none: overall_limit must be above 0",
        "t.yaml:9:22: error: kcse_rate_limits.endpoints[0].uri_prefixes[0].algorithm: unknown algorithm \"sliding_windows\"; expected one of fixed_window, sliding_window, token_bucket; did you mean `sliding_window`?",
        "t.yaml:10:28: error: kcse_rate_limits.endpoints[0].uri_prefixes[0].unit_multiplier: must be at least 1, found 0",
        "t.yaml:13:18: error: kcse_rate_limits.endpoints[0].uri_prefixes[1].burst: only valid with `algorithm: token_bucket` (this level counts with sliding_window)",
        "t.yaml:16:28: error: kcse_rate_limits.endpoints[0].uri_prefixes[2].unit_multiplier: a window of 400000 × year is too long",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in\n{errs}");
    }
    // A bucket too large to count exactly in Redis' doubles.
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      overall_limit: 4000000000
      unit: year
      algorithm: token_bucket
";
    let errs = errors(text).join("\n");
    assert!(
        errs.contains("t.yaml:7:18: error: kcse_rate_limits.endpoints[0].algorithm: a token bucket of 4000000000 tokens over 1 × year cannot be counted exactly"),
        "{errs}"
    );
}

#[test]
fn envoy_format_takes_the_algorithm_fields() {
    let text = "domain: d
descriptors:
  - key: k
    rate_limit: { unit: second, unit_multiplier: 15, requests_per_unit: 5, algorithm: token_bucket, burst: 7 }
  - key: s
    rate_limit: { unit: minute, requests_per_unit: 5, algorithm: sliding_window }
";
    let loaded = load_one(text).unwrap();
    let d = &loaded.config.descriptor_domains[0];
    let Some(RateLimitConfig::Limit { counting, .. }) = &d.descriptors[0].rate_limit else {
        panic!("expected a limit");
    };
    assert_eq!(
        *counting,
        Counting {
            unit_multiplier: 15,
            algorithm: Algorithm::TokenBucket,
            burst: Some(7)
        }
    );
    let text = "domain: d
descriptors:
  - key: k
    rate_limit: { unit: second, requests_per_unit: 5, burst: 7 }
  - key: u
    rate_limit: { unlimited: true, algorithm: sliding_window }
";
    let errs = errors(text).join("\n");
    for needle in [
        "t.yaml:4:62: error: descriptors[0].rate_limit.burst: only valid with `algorithm: token_bucket` (this level counts with fixed_window)",
        "t.yaml:6:47: error: descriptors[1].rate_limit.algorithm: not allowed beside `unlimited: true`",
    ] {
        assert!(errs.contains(needle), "missing {needle:?} in\n{errs}");
    }
}

#[test]
fn a_large_sliding_window_warns_about_memory() {
    let text = "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      overall_limit: 2000000
      algorithm: sliding_window
";
    let loaded = load_one(text).unwrap();
    assert!(
        loaded
            .warnings
            .iter()
            .any(|w| w.path.ends_with("endpoints[0].algorithm")
                && w.message
                    .contains("holds up to 2000000 entries (about 48 MB in Redis)")),
        "{:#?}",
        loaded.warnings
    );
}

/// Every field of the reference's current format, each zero value Envoy Gateway writes, and
/// `metadata` of any YAML values (docs/envoy-compat.md §1).
#[test]
fn the_references_current_fields_and_gateways_zero_values_load() {
    let text = r#"name: my-listener
domain: zero
descriptors:
  - key: route
    value: route-a
    rate_limit: null
    descriptors:
      - key: user
        value: ""
        rate_limit:
          requests_per_unit: 7
          unit: SECOND
          unlimited: false
          name: ""
          replaces: []
        descriptors: []
        shadow_mode: false
        quota_mode: true
        detailed_metric: false
        value_to_metric: true
        share_threshold: false
        metadata:
          upstream: { pool: b, weight: 3, ratio: 0.5, tags: [x, 1, true, null] }
          7: seven
    shadow_mode: false
    quota_mode: false
    detailed_metric: false
    value_to_metric: false
    share_threshold: false
  - key: free
    rate_limit: { unlimited: true, unit: "", requests_per_unit: 0, replaces: [], name: "" }
"#;
    let loaded = load_one(text).unwrap_or_else(|e| panic!("{e}"));
    let d = &loaded.config.descriptor_domains[0];
    assert_eq!(d.name.as_deref(), Some("my-listener"));
    let route = &d.descriptors[0];
    assert!(route.rate_limit.is_none() && !route.quota_mode);
    let user = &route.descriptors[0];
    assert_eq!(user.value, None, "value: \"\" is any value");
    assert!(user.quota_mode && user.value_to_metric && user.descriptors.is_empty());
    match &user.rate_limit {
        Some(RateLimitConfig::Limit {
            requests_per_unit: 7,
            unit: Unit::Second,
            name: None,
            replaces,
            ..
        }) => assert!(replaces.is_empty()),
        other => panic!("{other:?}"),
    }
    let m = serde_json::Value::Object(user.metadata.clone().unwrap());
    assert_eq!(
        m,
        serde_json::json!({
            "upstream": { "pool": "b", "weight": 3, "ratio": 0.5, "tags": ["x", 1, true, null] },
            "7": "seven"
        })
    );
    assert!(matches!(
        d.descriptors[1].rate_limit,
        Some(RateLimitConfig::Unlimited { name: None })
    ));
}

#[test]
fn several_documents_are_several_domains_and_all_load() {
    let text = "---\nname: a\ndomain: a\ndescriptors: []\n---\n# second\ndomain: b\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 1 }\n---\n";
    let loaded = load_one(text).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = loaded
        .config
        .descriptor_domains
        .iter()
        .map(|d| d.domain.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    // Positions stay those of the file; a bad field in the second document says so.
    let errs =
        errors("domain: a\n---\ndomain: b\ndescriptors:\n  - key: k\n    quota: true\n").join("\n");
    assert!(
        errs.contains("t.yaml:6:") && errs.contains("descriptors[0].quota"),
        "{errs}"
    );
    // The same domain in two documents is still a duplicate.
    let errs = errors("domain: a\n---\ndomain: a\n").join("\n");
    assert!(errs.contains("already defined"), "{errs}");
}

#[test]
fn unknown_fields_and_bad_metadata_still_fail_with_line_and_path() {
    let errs = errors("domain: d\ndescriptors:\n  - key: k\n    quota_mod: true\n").join("\n");
    assert!(
        errs.contains("t.yaml:4:")
            && errs.contains("descriptors[0].quota_mod")
            && errs.contains("quota_mode"),
        "{errs}"
    );
    let errs = errors("domain: d\ndescriptors:\n  - key: k\n    metadata: [1]\n").join("\n");
    assert!(
        errs.contains("descriptors[0].metadata: expected a mapping"),
        "{errs}"
    );
    let errs = errors("domain: d\ndescriptors:\n  - key: k\n    metadata: { a: { b: .nan } }\n")
        .join("\n");
    // (The parser itself refuses a non-finite float, with its position.)
    assert!(errs.contains("t.yaml:4:"), "{errs}");
    let errs = errors("domain: d\ndescriptors:\n  - key: k\n    quota_mode: yes\n").join("\n");
    assert!(errs.contains("expected true or false"), "{errs}");
    // `unit` beside `unlimited: true` is still an error when it is not a zero value.
    let errs = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unlimited: true, unit: day }\n",
    )
    .join("\n");
    assert!(
        errs.contains("rate_limit.unit: not allowed beside"),
        "{errs}"
    );
}
