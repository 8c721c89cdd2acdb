//! Seeing what the limiter does (issue 16, docs/observability.md), through real parts: the
//! real binary, a real Prometheus and promtool, real Redis, headless Chromium and tmux.
//!
//! - the alert rules pass `promtool check rules` and their `promtool test rules` cases (which
//!   fire and stay quiet), and a changed threshold makes those cases fail;
//! - a real Prometheus scrapes two replicas under known traffic, and every dashboard panel's
//!   query and every alert expression returns the series it should;
//! - `/limited` lists a known burst in order and stays within its bound under many ids;
//!   `top` merges two replicas on a tmux screen;
//! - `explain` prints, for a dozen requests, the Redis keys the service really writes;
//! - the status page renders in headless Chromium with the generation and the top limited
//!   counter, without console messages; its screenshot is kept under target/observe/.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::redis::{RedisServer, free_port};
use integration_tests::{Rls, eventually, example, http_get, http_post, run_cli, workspace_root};
use serde_json::Value;

/// Limits of the observed service: a client rule with a low limit and soft thresholds, an
/// anonymous share, and an endpoint in shadow mode.
const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      overall_limit: 100000
      soft: { value: 2, step: 1 }
      uri_prefixes:
        - prefix: /a
          unit: minute
          value: 5
          anon_value: 3
    - name: trial
      shortname: trial
      shadow_mode: true
      uri_prefixes:
        - prefix: /
          unit: minute
          value: 2
          anon_value: 2
";

fn tool(name: &str, package: &str) -> PathBuf {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    found.unwrap_or_else(|| {
        panic!("{name} not found: install the Debian package `{package}` (scripts/test does)")
    })
}

fn chart_file(rel: &str) -> PathBuf {
    workspace_root().join("charts/ironclad-rls").join(rel)
}

fn json_request(endpoint: &str, path: &str, consumer: Option<&str>) -> String {
    let mut entries = vec![
        serde_json::json!({"key": "endpoint", "value": endpoint}),
        serde_json::json!({"key": "path", "value": path}),
    ];
    if let Some(c) = consumer {
        entries.push(serde_json::json!({"key": "consumer", "value": c}));
    }
    serde_json::json!({"domain": "kcse", "descriptors": [{"entries": entries}]}).to_string()
}

/// One `POST /json` decision: the HTTP status (200 OK, 429 over limit).
fn decide(rls: &Rls, endpoint: &str, path: &str, consumer: Option<&str>) -> u16 {
    rls.admin_post("/json", &json_request(endpoint, path, consumer))
        .0
}

fn limited(rls: &Rls, limit: usize) -> Value {
    let (status, body) = rls.admin_get(&format!("/limited?limit={limit}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/limited is JSON")
}

fn rows(view: &Value) -> Vec<(String, String, u64)> {
    view["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .map(|c| {
            (
                c["subject"].as_str().unwrap_or_default().to_owned(),
                c["rule"].as_str().unwrap_or_default().to_owned(),
                c["rejected"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

fn limits_file(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write limits");
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Alert rules under promtool

#[test]
fn alert_rules_check_and_their_unit_cases_fire_and_stay_quiet() {
    let promtool = tool("promtool", "prometheus");
    let rules = chart_file("files/alerts.yaml");
    let out = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = std::fs::read_to_string(
        workspace_root().join("integration-tests/tests/observe/alerts_test.yaml"),
    )
    .expect("read alert cases");
    let run_cases = |rules_path: &Path| {
        let file = dir.path().join("cases.yaml");
        std::fs::write(
            &file,
            cases.replace("RULES_FILE", &rules_path.display().to_string()),
        )
        .expect("write cases");
        let out = Command::new(&promtool)
            .args(["test", "rules"])
            .arg(&file)
            .output()
            .expect("run promtool");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, log) = run_cases(&rules);
    assert!(ok, "promtool test rules:\n{log}");
    // The cases are not a rubber stamp: each threshold, changed, breaks them.
    let text = std::fs::read_to_string(&rules).expect("read rules");
    for (from, to) in [
        ("> 0.01\n", "> 0.5\n"),
        ("ratelimit_config_info)) > 1", "ratelimit_config_info)) > 2"),
        (
            "process_open_fds / process_max_fds > 0.8",
            "process_open_fds / process_max_fds > 0.95",
        ),
        (
            "ratelimit_connection_limit > 0.8",
            "ratelimit_connection_limit > 0.95",
        ),
        (
            "ironclad_rls:rule_rejection_ratio:rate5m > 0.1",
            "ironclad_rls:rule_rejection_ratio:rate5m > 0.6",
        ),
    ] {
        assert!(text.contains(from), "{from:?} is not in the rules");
        let changed = dir.path().join("changed.yaml");
        std::fs::write(&changed, text.replacen(from, to, 1)).expect("write");
        let (ok, _) = run_cases(&changed);
        assert!(!ok, "the cases still pass with {from:?} changed to {to:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// A real Prometheus: the dashboard's queries and the alert expressions

struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(targets: &[String], rules: &Path) -> Prometheus {
        let bin = tool("prometheus", "prometheus");
        let dir = tempfile::tempdir().expect("tempdir");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: rls\n    static_configs:\n      - targets: [{}]\n",
            rules.display(),
            targets.join(", ")
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write prometheus.yml");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            port,
            _dir: dir,
        };
        eventually(Duration::from_secs(60), "prometheus ready", || {
            let addr = format!("127.0.0.1:{port}").parse().ok()?;
            std::net::TcpStream::connect(addr).ok()?;
            (http_get(addr, "/-/ready").0 == 200).then_some(())
        });
        p
    }

    /// An instant query: the result vector.
    fn query(&self, expr: &str) -> Vec<Value> {
        self.query_at(expr, None)
    }

    /// An instant query evaluated at Unix time `at` (now when `None`).
    fn query_at(&self, expr: &str, at: Option<f64>) -> Vec<Value> {
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let time = at.map(|t| format!("&time={t:.3}")).unwrap_or_default();
        let (status, body) = http_get(addr, &format!("/api/v1/query?query={}{time}", encode(expr)));
        assert_eq!(status, 200, "{expr}: {body}");
        let v: Value = serde_json::from_str(&body).expect("query answer is JSON");
        assert_eq!(v["status"], "success", "{expr}: {body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A dashboard query with its Grafana variables filled in as the dashboard's defaults would.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("job=~\"$job\"", "job=~\".+\"")
        .replace("$gateway_timeout", "0.02")
}

/// Keeps traffic flowing so rates stay defined while Prometheus is asked: a new consumer
/// admitted every round, `bob` rejected, the shadow endpoint over limit.
fn traffic(rls: Arc<Rls>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0u64;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            decide(&rls, "api", "/a/x", Some(&format!("c{i}")));
            decide(&rls, "api", "/a/x", Some("bob"));
            decide(&rls, "trial", "/t", Some("eve"));
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn prometheus_runs_every_dashboard_query_and_alert_expression() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = limits_file(dir.path(), "a.yaml", LIMITS);
    let b_dir = dir.path().join("b");
    std::fs::create_dir(&b_dir).expect("mkdir");
    // The second replica serves the same rules from a different file: another sha256.
    let b = limits_file(&b_dir, "b.yaml", &format!("# replica b\n{LIMITS}"));
    let one = Arc::new(Rls::start(&["--config", &a]));
    let two = Rls::start(&["--config", &b]);
    one.wait_ready(Duration::from_secs(20));
    two.wait_ready(Duration::from_secs(20));
    let stop = Arc::new(AtomicBool::new(false));
    let prom = Prometheus::start(
        &[one.admin_addr.to_string(), two.admin_addr.to_string()],
        &chart_file("files/alerts.yaml"),
    );
    // Prometheus must have seen the error counter at 0 before the reload fails: an increase
    // is measured between samples.
    eventually(Duration::from_secs(60), "both replicas scraped", || {
        (prom
            .query("ratelimit_config_reloads_total{result=\"error\"} == 0")
            .len()
            == 2)
            .then_some(())
    });
    // A failed reload on the second: the old configuration keeps serving.
    std::fs::write(&b, "kcse_rate_limits: [not, a, mapping\n").expect("break b");
    eventually(Duration::from_secs(30), "a failed reload", || {
        (two.metric("ratelimit_config_reloads_total", &[("result", "error")])? >= 1.0).then_some(())
    });
    // bob goes over his 5 per minute and crosses the soft thresholds 2..5 on the way.
    for _ in 0..8 {
        decide(&one, "api", "/a/x", Some("bob"));
    }
    let load = traffic(one.clone(), stop.clone());
    let process_metrics = one.admin_get("/metrics").1.contains("process_open_fds");

    // Every panel's every query.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_file("dashboards/ironclad-rls.json")).expect("read"),
    )
    .expect("dashboard is JSON");
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        let Some(targets) = panel["targets"].as_array() else {
            continue;
        };
        let title = panel["title"].as_str().unwrap_or_default();
        for t in targets {
            let expr = grafana_to_promql(t["expr"].as_str().expect("expr"));
            let needs_process = expr.contains("process_");
            if needs_process && !process_metrics {
                // Process metrics come with issue 13; until then the query must still parse
                // and answer, empty.
                assert!(prom.query(&expr).is_empty(), "{title}: {expr}");
                eprintln!("note: {title}: {expr} is empty until /metrics has process metrics");
                continue;
            }
            let result = eventually(Duration::from_secs(60), &format!("{title}: {expr}"), || {
                let r = prom.query(&expr);
                (!r.is_empty()).then_some(r)
            });
            checked += 1;
            // The series are the ones the traffic makes.
            let labels: Vec<String> = result.iter().map(|s| s["metric"].to_string()).collect();
            let has = |needle: &str| labels.iter().any(|l| l.contains(needle));
            if expr.contains("ratelimit_requests_total") && expr.contains("by (code)") {
                assert!(
                    has("\"over_limit\"") && has("\"ok\""),
                    "{title}: {labels:?}"
                );
            }
            if expr.contains("outcome=\"over_limit\"") {
                assert!(has("api /a client"), "{title}: {labels:?}");
            }
            if expr.contains("outcome=\"shadow_over_limit\"") {
                assert!(has("trial / client"), "{title}: {labels:?}");
            }
            if expr.contains("ratelimit_soft_limit_crossings_total") {
                assert!(has("\"bob\""), "{title}: {labels:?}");
            }
            if expr.contains("count by (sha256)") {
                assert_eq!(result.len(), 2, "{title}: two configurations: {labels:?}");
            }
            if expr.contains("ratelimit_config_generation") {
                assert_eq!(result.len(), 2, "{title}: one series per replica");
            }
        }
    }
    assert!(checked >= 12, "only {checked} panel queries checked");

    // Every alert expression: the ones the situation calls for answer, the others are quiet.
    let rules: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(chart_file("files/alerts.yaml")).expect("read rules"),
    )
    .expect("rules are YAML");
    let mut alerts = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            if let Some(name) = rule["alert"].as_str() {
                alerts.push((
                    name.to_owned(),
                    rule["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    assert_eq!(alerts.len(), 7, "{alerts:?}");
    for (name, expr) in &alerts {
        let should_answer = match name.as_str() {
            "IroncladRlsReloadFailing"
            | "IroncladRlsConfigDrift"
            | "IroncladRlsRejectionRatioJump" => true,
            "IroncladRlsStoreFailing"
            | "IroncladRlsLatencyNearTimeout"
            | "IroncladRlsMemoryCountersNearBound"
            | "IroncladRlsConnectionsNearBound" => false,
            other => panic!("no expectation for alert {other}"),
        };
        if should_answer {
            let r = eventually(Duration::from_secs(60), name, || {
                let r = prom.query(expr);
                (!r.is_empty()).then_some(r)
            });
            let labels: Vec<String> = r.iter().map(|s| s["metric"].to_string()).collect();
            match name.as_str() {
                "IroncladRlsReloadFailing" => {
                    assert_eq!(r.len(), 1, "{labels:?}");
                    assert!(
                        labels[0].contains(&two.admin_addr.to_string()),
                        "{labels:?}"
                    );
                }
                "IroncladRlsConfigDrift" => assert_eq!(r[0]["value"][1], "2"),
                _ => assert!(
                    labels.iter().any(|l| l.contains("api /a client")),
                    "{name}: {labels:?}"
                ),
            }
        } else if name == "IroncladRlsLatencyNearTimeout" {
            // How long decisions take on a shared machine is not for a test to assert; that
            // the alert answers exactly for the jobs whose p99 is past 80% of 20 ms is.
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs_f64();
            let (quantile, _) = expr.split_once('>').expect("a comparison");
            let p99 = eventually(Duration::from_secs(60), "p99 per job", || {
                let r = prom.query_at(quantile.trim(), Some(at));
                (!r.is_empty()).then_some(r)
            });
            let slow: BTreeSet<String> = p99
                .iter()
                .filter(|s| {
                    s["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.8 * 0.020)
                })
                .map(|s| s["metric"]["job"].to_string())
                .collect();
            let alerting: BTreeSet<String> = prom
                .query_at(expr, Some(at))
                .iter()
                .map(|s| s["metric"]["job"].to_string())
                .collect();
            assert_eq!(alerting, slow, "{p99:?}");
        } else {
            let r = prom.query(expr);
            assert!(r.is_empty(), "{name} answers: {expr}: {r:?}");
        }
    }
    if process_metrics {
        let r = prom.query("process_open_fds / process_max_fds");
        assert_eq!(r.len(), 2, "both replicas report their descriptors");
    } else {
        eprintln!("note: IroncladRlsConnectionsNearBound has no input until process metrics land");
    }
    stop.store(true, Ordering::SeqCst);
    load.join().expect("traffic thread");
}

// ---------------------------------------------------------------------------------------------
// /limited and top

#[test]
fn limited_lists_a_burst_in_order_and_stays_within_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = limits_file(dir.path(), "a.yaml", LIMITS);
    let rls = Rls::start(&["--config", &a]);
    rls.wait_ready(Duration::from_secs(20));
    assert!(rows(&limited(&rls, 10)).is_empty(), "nothing limited yet");
    // alice 12 requests (7 rejected), bob 8 (3 rejected), anonymous 5 (2 rejected), shadow 4
    // (2 over limit, allowed).
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(decide(&rls, "api", "/a/1", Some("alice")));
    }
    for _ in 0..8 {
        decide(&rls, "api", "/a/2", Some("bob"));
    }
    for _ in 0..5 {
        decide(&rls, "api", "/a/3", None);
    }
    for _ in 0..4 {
        assert_eq!(
            decide(&rls, "trial", "/t", Some("eve")),
            200,
            "shadow mode answers OK"
        );
    }
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 7);
    let view = limited(&rls, 10);
    assert_eq!(
        rows(&view),
        vec![
            ("alice".into(), "api /a client".into(), 7),
            ("bob".into(), "api /a client".into(), 3),
            ("eve".into(), "trial / client".into(), 2),
            ("_anonymous".into(), "api /a anonymous".into(), 2),
        ]
    );
    assert_eq!(view["counters"][2]["shadow"], true);
    assert_eq!(view["counters"][0]["key"], "{kcse:api}:p:/a:c:alice");
    assert_eq!(view["window_secs"], 300);
    assert_eq!(rows(&limited(&rls, 1)).len(), 1);

    // Many distinct ids, each rejected once: the table keeps its bound and alice on top.
    let capacity = view["capacity"].as_u64().expect("capacity") as usize;
    for i in 0..(capacity * 3) {
        let id = format!("id{i}");
        for _ in 0..6 {
            decide(&rls, "api", "/a/x", Some(&id));
        }
    }
    let view = limited(&rls, 100_000);
    let all = rows(&view);
    assert_eq!(all.len(), capacity, "bounded by its capacity");
    assert_eq!(all[0], ("alice".into(), "api /a client".into(), 7));
    let distinct: BTreeSet<&String> = all.iter().map(|r| &r.0).collect();
    assert_eq!(distinct.len(), capacity);
    // Never metric labels: no consumer id of the burst reached /metrics except as soft
    // crossings (bounded by --soft-consumer-labels), and no `id` rule exists.
    let (_, metrics) = rls.admin_get("/metrics");
    assert!(!metrics.contains("rule=\"alice\""), "{metrics}");
}

struct Tmux {
    socket: String,
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn top_merges_two_replicas_on_a_terminal() {
    let tmux = tool("tmux", "tmux");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = limits_file(dir.path(), "a.yaml", LIMITS);
    let one = Rls::start(&["--config", &a]);
    let two = Rls::start(&["--config", &a]);
    one.wait_ready(Duration::from_secs(20));
    two.wait_ready(Duration::from_secs(20));
    // Each replica counts for itself (memory stores): alice is rejected 4 times on one and 6
    // on two (10 in all), bob 7 on one, carol 3 on two.
    let burst = |r: &Rls, who: &str, n: usize| {
        for _ in 0..n {
            decide(r, "api", "/a/x", Some(who));
        }
    };
    burst(&one, "alice", 9);
    burst(&two, "alice", 11);
    burst(&one, "bob", 12);
    burst(&two, "carol", 8);
    let urls = format!("http://{},http://{}", one.admin_addr, two.admin_addr);
    let session = Tmux {
        socket: format!("observe-top-{}", std::process::id()),
    };
    let command = format!(
        "{} top --admin {urls} --interval 300ms",
        integration_tests::binary().display()
    );
    let started = Command::new(&tmux)
        .args([
            "-L",
            &session.socket,
            "new-session",
            "-d",
            "-x",
            "160",
            "-y",
            "40",
            &command,
        ])
        .status()
        .expect("run tmux");
    assert!(started.success(), "tmux new-session failed");
    let screen = || {
        let out = Command::new(&tmux)
            .args(["-L", &session.socket, "capture-pane", "-p"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = eventually(Duration::from_secs(30), "top's screen", || {
        let s = screen();
        s.contains("2 of 2 replicas answered").then_some(s)
    });
    let table: Vec<&str> = first
        .lines()
        .skip_while(|l| !l.contains("REJECTED"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let parsed: Vec<(u64, usize, &str)> = table
        .iter()
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            // #, REJECTED, LAST ("0s", "ago"), REPL, WHO, RULE...
            (
                cols[1].parse().expect("rejected"),
                cols[4].parse().expect("replicas"),
                cols[5],
            )
        })
        .collect();
    assert_eq!(
        parsed,
        vec![(10, 2, "alice"), (7, 1, "bob"), (3, 1, "carol")],
        "{first}"
    );
    // It refreshes: more rejections show up without restarting it.
    burst(&two, "carol", 5);
    eventually(Duration::from_secs(30), "carol's 8 on the screen", || {
        let s = screen();
        s.lines()
            .any(|l| l.contains("carol") && l.split_whitespace().nth(1) == Some("8"))
            .then_some(())
    });
    // A replica going away is named, and the other still shown.
    drop(two);
    eventually(Duration::from_secs(30), "a silent replica named", || {
        let s = screen();
        (s.contains("1 of 2 replicas answered") && s.contains("NOT ANSWERING") && s.contains("bob"))
            .then_some(())
    });
}

// ---------------------------------------------------------------------------------------------
// explain against the keys the service writes

/// The Redis key patterns `explain` prints for one descriptor.
fn explained_keys(config: &[&Path], pairs: &str) -> Vec<String> {
    let mut args = vec!["explain".to_owned()];
    for c in config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    args.extend(["--descriptor".into(), pairs.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_cli(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("redis "))
        .map(str::to_owned)
        .collect()
}

fn matches_pattern(pattern: &str, key: &str) -> bool {
    match pattern.strip_suffix("<window start ms>") {
        Some(stem) => key
            .strip_prefix(stem)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())),
        None => pattern == key,
    }
}

#[test]
fn explain_prints_the_counters_the_service_writes_to_redis() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = limits_file(
        dir.path(),
        "closed.yaml",
        "kcse_rate_limits:\n  endpoints:\n    - name: closed\n      shortname: closed\n      overall_limit: 0\n      uri_prefixes:\n        - prefix: /\n          value: 5\n",
    );
    let full = example("full-example.yaml");
    let configs = [full.as_path(), Path::new(&closed)];
    let rls = Rls::start(&[
        "--config",
        &full.display().to_string(),
        "--config",
        &closed,
        "--redis-url",
        &redis.url(),
        "--redis-timeout",
        "2s",
    ]);
    rls.wait_ready(Duration::from_secs(20));
    // (descriptor, counters expected): several prefixes, invokers, anonymous, overall 0,
    // paths that normalisation changes, and nothing matching.
    let cases: [(&str, usize); 12] = [
        (
            "endpoint=kcserl,path=/auth/admin/realms/API-TEST/users,consumer=test_client",
            3,
        ),
        ("endpoint=kcserl,path=/auth/x,consumer=test_client2", 2),
        ("endpoint=kcserl,path=/auth/admin/realms/API-TEST/x", 2),
        (
            "endpoint=kcserl,path=/auth/admin/realms/API-TEST/x,consumer=",
            2,
        ),
        (
            "endpoint=kcserl,path=/auth/realms/API-TEST/protocol/openid-connect/token",
            2,
        ),
        (
            "endpoint=kcserl,path=/auth/resources/app.js,consumer=someone",
            3,
        ),
        (
            "endpoint=kcserl,path=/auth//admin/realms/%41PI-TEST/./u,consumer=c",
            3,
        ),
        (
            "endpoint=kcserl,path=/auth/admin/realms/API-TEST/../../x,consumer=c",
            2,
        ),
        ("endpoint=kcserl,path=/elsewhere,consumer=test_client", 1),
        ("endpoint=kcserl,consumer=test_client", 1),
        ("endpoint=closed,path=/x,consumer=test_client", 0),
        ("endpoint=nope,path=/auth", 0),
    ];
    for (pairs, expected) in cases {
        redis.cli(&["FLUSHALL"]);
        let patterns = explained_keys(&configs, pairs);
        assert_eq!(patterns.len(), expected, "{pairs}: {patterns:?}");
        let (status, answer) = http_post(rls.admin_addr, "/json", &json_of_pairs(pairs));
        assert!(status == 200 || status == 429, "{pairs}: {status} {answer}");
        let written: Vec<String> = redis
            .cli(&["--scan"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        assert_eq!(
            written.len(),
            patterns.len(),
            "{pairs}: wrote {written:?}, explain {patterns:?}"
        );
        for p in &patterns {
            assert!(
                written.iter().any(|k| matches_pattern(p, k)),
                "{pairs}: explain's {p} is not among {written:?}"
            );
        }
    }
    // With --admin, each counter's state from the running service, and asking counts nothing.
    let pairs = "endpoint=kcserl,path=/auth/realms/API-TEST/protocol/openid-connect/token";
    for _ in 0..3 {
        decide_pairs(&rls, pairs);
    }
    let admin = format!("http://{}", rls.admin_addr);
    let explain_admin = || {
        let out = run_cli(&[
            "explain",
            "--config",
            &full.display().to_string(),
            "--config",
            &closed,
            "--descriptor",
            pairs,
            "--admin",
            &admin,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = explain_admin();
    // The last case flushed Redis; three hits since.
    assert!(text.contains("now: 3 of 10 used, 7 remaining"), "{text}");
    assert!(
        explain_admin().contains("now: 3 of 10 used"),
        "explain --admin counted"
    );
    let bad = run_cli(&[
        "explain",
        "--config",
        &closed,
        "--descriptor",
        pairs,
        "--admin",
        "http://127.0.0.1:1",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("error: http://127.0.0.1:1"));
}

/// The `POST /json` body of one descriptor written `k=v,k=v` in domain `kcse`.
fn json_of_pairs(pairs: &str) -> String {
    let entries: Vec<Value> = pairs
        .split(',')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("k=v");
            serde_json::json!({"key": k, "value": v})
        })
        .collect();
    serde_json::json!({"domain": "kcse", "descriptors": [{"entries": entries}]}).to_string()
}

fn decide_pairs(rls: &Rls, pairs: &str) -> u16 {
    rls.admin_post("/json", &json_of_pairs(pairs)).0
}

// ---------------------------------------------------------------------------------------------
// The status page in headless Chromium

fn chromium(args: &[&str], profile: &Path) -> (String, String) {
    let bin = tool("chromium", "chromium");
    let out = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_page_renders_in_chromium_with_the_generation_and_the_top_limited_counter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = limits_file(dir.path(), "a.yaml", LIMITS);
    let rls = Rls::start(&["--config", &a]);
    rls.wait_ready(Duration::from_secs(20));
    // A reload, so the generation shown is 2, not a default.
    std::fs::write(&a, format!("{LIMITS}# edited\n")).expect("edit");
    rls.signal("-HUP");
    eventually(Duration::from_secs(20), "generation 2", || {
        (rls.metric("ratelimit_config_generation", &[])? == 2.0).then_some(())
    });
    for _ in 0..15 {
        decide(&rls, "api", "/a/x", Some("mallory<script>"));
    }
    for _ in 0..7 {
        decide(&rls, "api", "/a/x", Some("bob"));
    }
    let url = format!("http://{}/", rls.admin_addr);
    let profile = tempfile::tempdir().expect("profile");
    // Virtual time lets the page's script fetch /status.json and redraw before the dump.
    let (dom, log) = chromium(
        &["--virtual-time-budget=6000", "--dump-dom", &url],
        profile.path(),
    );
    assert!(dom.contains("<b id=\"generation\">2</b>"), "{dom}");
    let refreshed: u32 = dom
        .split("data-refreshed=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("data-refreshed on body");
    assert!(refreshed >= 1, "the script never refreshed the page: {dom}");
    let table = dom
        .split("<tbody id=\"limited\">")
        .nth(1)
        .expect("limited table");
    let first_row = table.split("</tr>").next().expect("a row");
    assert!(
        first_row.contains("mallory&lt;script&gt;") && first_row.contains(">10<"),
        "top limited counter first, escaped: {first_row}"
    );
    assert!(table.contains("bob"), "{table}");
    assert!(dom.contains("<polyline"), "per-rule charts drawn: {dom}");
    assert!(dom.contains("ready"), "{dom}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    // The screenshot is kept as an artefact.
    let shot_dir = workspace_root().join("target/observe");
    std::fs::create_dir_all(&shot_dir).expect("mkdir target/observe");
    let shot = shot_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().expect("profile");
    chromium(
        &[
            "--virtual-time-budget=6000",
            "--window-size=1200,1100",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
        profile.path(),
    );
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

// ---------------------------------------------------------------------------------------------
// Where features meet: /limited on every store, with the over-limit cache (Redis stores answer
// repeat rejections from it without a round trip) and shadow mode on a sliding window

const MEETING: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      uri_prefixes:
        - prefix: /fixed
          unit: minute
          value: 3
    - name: trial
      shortname: trial
      shadow_mode: true
      uri_prefixes:
        - prefix: /sliding
          unit: minute
          algorithm: sliding_window
          value: 2
";

fn limited_counts_every_rejection(store_flags: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = limits_file(dir.path(), "meeting.yaml", MEETING);
    let mut args = vec!["--config", config.as_str(), "--redis-timeout", "2s"];
    args.extend_from_slice(store_flags);
    let rls = Rls::start(&args);
    rls.wait_ready(Duration::from_secs(20));
    let fixed: Vec<u16> = (0..10)
        .map(|_| decide(&rls, "api", "/fixed/x", Some("alice")))
        .collect();
    let rejected = fixed.iter().filter(|s| **s == 429).count() as u64;
    assert_eq!(rejected, 7, "{fixed:?}");
    let shadow: Vec<u16> = (0..6)
        .map(|_| decide(&rls, "trial", "/sliding/x", Some("eve")))
        .collect();
    assert!(
        shadow.iter().all(|s| *s == 200),
        "shadow mode answers OK: {shadow:?}"
    );
    let view = limited(&rls, 10);
    assert_eq!(
        rows(&view),
        vec![
            ("alice".into(), "api /fixed client".into(), rejected),
            ("eve".into(), "trial /sliding client".into(), 4),
        ],
        "{store_flags:?}"
    );
    assert_eq!(view["counters"][0]["shadow"], false);
    assert_eq!(view["counters"][1]["shadow"], true);
    // The rejections are the ones the metrics count, cache or not.
    assert_eq!(
        rls.metric(
            "ratelimit_hits_total",
            &[("rule", "api /fixed client"), ("outcome", "over_limit")]
        ),
        Some(rejected as f64)
    );
}

#[test]
fn limited_counts_cached_and_shadowed_rejections_on_the_memory_store() {
    limited_counts_every_rejection(&[]);
}

#[test]
fn limited_counts_cached_and_shadowed_rejections_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    limited_counts_every_rejection(&["--redis-url", &url]);
}

#[test]
fn limited_counts_cached_and_shadowed_rejections_on_a_redis_cluster() {
    let cluster = integration_tests::redis::RedisCluster::start();
    let urls = cluster.urls();
    limited_counts_every_rejection(&["--redis-cluster-url", &urls]);
}
