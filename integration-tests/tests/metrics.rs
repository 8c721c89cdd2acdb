//! `/metrics` after known traffic: hits per rule and outcome, soft-threshold crossings
//! counted exactly as docs/limits-format.md §6 says (with the bounded consumer label), requests by
//! code, latency histograms, and the configuration gauges.

use std::time::Duration;

use integration_tests::{Rls, request, temp_file, wait_for_fresh_window};

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: ep
      shortname: ep
      soft: {value: 2, step: 2}
      unit: hour
      uri_prefixes:
        - {prefix: /p, value: 5, anon_value: 3}
    - name: sh
      shortname: sh
      shadow_mode: true
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 1}
";

#[tokio::test]
async fn metric_values_after_known_traffic() {
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--soft-consumer-labels",
        "1",
    ]);
    let mut c = rls.client().await;
    wait_for_fresh_window(3600, Duration::from_secs(30));
    let mut send = async |endpoint: &str, consumer: Option<&str>, n: usize| {
        for _ in 0..n {
            let mut entries = vec![("endpoint", endpoint), ("path", "/p/x")];
            if let Some(id) = consumer {
                entries.push(("consumer", id));
            }
            c.should_rate_limit(request("kcse", &[&entries]))
                .await
                .unwrap();
        }
    };
    send("ep", Some("a"), 7).await; // 5 admitted, 2 over; crosses 2 and 4
    send("ep", None, 4).await; // 3 admitted, 1 over; crosses 2 (4 is above the limit 3)
    send("ep", Some("b"), 2).await; // crosses 2; the label's single slot is taken by `a`
    send("sh", Some("s"), 3).await; // 1 admitted, 2 over but allowed by shadow mode
    let _ = c
        .should_rate_limit(request("", &[&[("endpoint", "ep")]]))
        .await; // invalid

    let hits = |rule: &str, outcome: &str| {
        rls.metric(
            "ratelimit_hits_total",
            &[("domain", "kcse"), ("rule", rule), ("outcome", outcome)],
        )
    };
    assert_eq!(
        hits("ep /p client", "within_limit"),
        Some(7.0),
        "5 for a, 2 for b"
    );
    assert_eq!(hits("ep /p client", "over_limit"), Some(2.0));
    // near_limit: admitted hits above 0.8 × 5 = 4: a's 5th.
    assert_eq!(hits("ep /p client", "near_limit"), Some(1.0));
    assert_eq!(hits("ep /p anonymous", "within_limit"), Some(3.0));
    assert_eq!(hits("ep /p anonymous", "over_limit"), Some(1.0));
    // near_limit: above floor(0.8 × 3) = 2: the 3rd anonymous hit.
    assert_eq!(hits("ep /p anonymous", "near_limit"), Some(1.0));
    assert_eq!(hits("sh / client", "within_limit"), Some(1.0));
    assert_eq!(hits("sh / client", "shadow_over_limit"), Some(2.0));
    assert_eq!(hits("sh / client", "over_limit"), None);

    let soft = |consumer: &str| {
        rls.metric(
            "ratelimit_soft_limit_crossings_total",
            &[
                ("domain", "kcse"),
                ("endpoint", "ep"),
                ("prefix", "/p"),
                ("consumer", consumer),
            ],
        )
    };
    assert_eq!(soft("a"), Some(2.0), "thresholds 2 and 4");
    assert_eq!(
        soft("_anonymous"),
        Some(1.0),
        "threshold 2 only: 4 is above anon_value 3"
    );
    assert_eq!(
        soft("_other"),
        Some(1.0),
        "b is past the bound of 1 distinct consumer"
    );
    assert_eq!(soft("b"), None);

    let requests = |code: &str| rls.metric("ratelimit_requests_total", &[("code", code)]);
    assert_eq!(requests("ok"), Some(13.0));
    assert_eq!(requests("over_limit"), Some(3.0));
    assert_eq!(requests("invalid"), Some(1.0));
    assert_eq!(
        rls.metric("ratelimit_request_duration_seconds_count", &[]),
        Some(17.0)
    );
    assert_eq!(
        rls.metric("ratelimit_backend_duration_seconds_count", &[]),
        Some(16.0)
    );
    assert_eq!(rls.metric("ratelimit_config_generation", &[]), Some(1.0));
    assert!(
        rls.metric("ratelimit_config_last_success_timestamp_seconds", &[])
            .unwrap()
            > 1.7e9
    );
}

#[tokio::test]
async fn process_metrics_are_present_and_plausible() {
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start(&["--config", file.to_str().unwrap()]);
    let mut c = rls.client().await;
    for _ in 0..50 {
        c.should_rate_limit(request("kcse", &[&[("endpoint", "ep"), ("path", "/p/x")]]))
            .await
            .unwrap();
    }
    let m = |name: &str| {
        rls.metric(name, &[])
            .unwrap_or_else(|| panic!("{name} is missing from /metrics"))
    };
    let (cpu, rss, open, max) = (
        m("process_cpu_seconds_total"),
        m("process_resident_memory_bytes"),
        m("process_open_fds"),
        m("process_max_fds"),
    );
    println!("cpu {cpu} s, rss {rss} B, open fds {open}, max fds {max}");
    assert!(cpu > 0.0 && cpu < 600.0, "cpu {cpu}");
    assert!(rss > 1e6 && rss < 4e9, "rss {rss}");
    // stdio, the runtime, two listeners, the watcher, this test's connection.
    assert!(open >= 6.0 && open < max, "open {open} of {max}");
    assert!(
        m("process_cpu_seconds_total") >= cpu,
        "a counter never goes down"
    );
}
