//! The egress demo (examples/egress) run as a test, shortened: two real Envoy gateways per
//! scenario with response caches, two ironclad-rls replicas on a real Redis, a mock API that
//! locks out whoever exceeds its limit. The shared strict algorithms must cause no lockout.

use integration_tests::{binary, envoy::envoy_binary, workspace_root};

#[test]
fn the_egress_demo_keeps_the_api_free_of_lockouts() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("chart.svg");
    let out = std::process::Command::new("python3")
        .arg(workspace_root().join("examples/egress/demo.py"))
        .args([
            "--duration",
            "25",
            "--workers",
            "4",
            "--static-every",
            "2",
            "--chart",
        ])
        .arg(&chart)
        .env("IRONCLAD_RLS_BIN", binary())
        .env("ENVOY_BIN", envoy_binary())
        .output()
        .expect("run python3 examples/egress/demo.py (apt-get install python3)");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");

    // | scenario | calls | from cache | rejected by gateway | reached API | rejected by API | lockouts |
    let row = |scenario: &str| -> Vec<u64> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {scenario} |")))
            .unwrap_or_else(|| panic!("no row for {scenario}:\n{text}"));
        line.split('|')
            .skip(2)
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.trim().parse().unwrap())
            .collect()
    };
    for scenario in ["sliding_window", "token_bucket"] {
        let r = row(scenario);
        let (calls, cached, rejected, reached, api_rejected, lockouts) =
            (r[0], r[1], r[2], r[3], r[4], r[5]);
        assert_eq!(lockouts, 0, "{scenario}:\n{text}");
        assert_eq!(api_rejected, 0, "{scenario}:\n{text}");
        // The workers want far more than the limit: the gateway refused some, and the cache
        // answered the repeated coordinate.
        assert!(rejected > 0 && cached > 0, "{scenario}:\n{text}");
        // 25 s at 5 per 16 s, shared by both gateways: a burst of 5, then one per 3.2 s.
        assert!(
            (5..=5 + 25 / 3 + 1).contains(&reached),
            "{scenario}:\n{text}"
        );
        assert!(calls >= cached + rejected + reached, "{scenario}:\n{text}");
    }
    // The seed's per-gateway buckets let twice the rate through.
    let local = row("envoy-local");
    assert!(local[3] > row("token_bucket")[3], "{text}");
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.matches("<path").count() == 4,
        "{svg}"
    );
}
