//! The binary's commands and admin endpoints: `validate`, `check`, `serve` on a broken
//! configuration, `/healthz`, `/readyz`, `/config`.

use std::time::Duration;

use integration_tests::{
    Rls, example, run_cli, serve_until_exit, temp_file, wait_for_fresh_window,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn validate_accepts_every_seed_example_and_prints_rules_and_warnings() {
    let out = run_cli(&["validate", example("full-example.yaml").to_str().unwrap()]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("endpoint kcserl (kcse-endpoint): overall 1000000/minute"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "prefix /auth/resources/: each consumer 1/minute, anonymous 2000000/minute shared"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("client test_client2: 10/minute"),
        "{stdout}"
    );
    assert!(
        stderr.contains("invokers[0].anon_value: has no effect"),
        "{stderr}"
    );
    assert!(
        stderr.contains("full-example.yaml:18:29: warning"),
        "{stderr}"
    );

    for seed in [
        "seed/2.1-per-service.yaml",
        "seed/2.2-per-service-with-client.yaml",
        "seed/2.3-per-client.yaml",
    ] {
        let out = run_cli(&["validate", example(seed).to_str().unwrap()]);
        assert!(out.status.success(), "{seed}: {}", text(&out.stderr));
    }
}

#[test]
fn validate_lists_every_error_with_position_and_exits_1() {
    let (dir, _) = temp_file(
        "bad.yaml",
        "kcse_rate_limits:
  endpoints:
    - name: n
      shortname: s
      overal_limit: 5
      uri_prefixes:
        - prefix: /a
          unit: minutes
",
    );
    std::fs::write(dir.path().join("empty.yml"), "").unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "not: [valid").unwrap();
    let out = run_cli(&["validate", dir.path().to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let bad = dir.path().join("bad.yaml");
    let bad = bad.display();
    for needle in [
        format!(
            "{bad}:5:7: error: kcse_rate_limits.endpoints[0].overal_limit: unknown field `overal_limit`; did you mean `overall_limit`?"
        ),
        format!(
            "{bad}:8:17: error: kcse_rate_limits.endpoints[0].uri_prefixes[0].unit: unknown unit \"minutes\""
        ),
        "empty.yml: error: file is empty".to_owned(),
        "invalid: 3 error(s)".to_owned(),
    ] {
        assert!(stderr.contains(&needle), "missing {needle:?} in\n{stderr}");
    }
    assert!(
        !stderr.contains(".hidden.yaml"),
        "dot-files are skipped: {stderr}"
    );

    let out = run_cli(&["validate", "/nonexistent/limits.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/limits.yaml: error: cannot open"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_refuses_a_broken_configuration() {
    let (_dir, file) = temp_file(
        "bad.yaml",
        "kcse_rate_limits:\n  endpoints:\n    - name: x\n",
    );
    let out = serve_until_exit(&["--config", file.to_str().unwrap()], &[]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.yaml:3:7: error: kcse_rate_limits.endpoints[0].shortname: required field is missing"), "{stderr}");
}

#[test]
fn check_prints_json_and_exits_0_then_2() {
    let rls = Rls::start(&["--config", example("").to_str().unwrap()]);
    let addr = format!("http://{}", rls.grpc_addr);
    let args = |hits: &'static str| {
        vec![
            "check".to_owned(),
            "--addr".to_owned(),
            addr.clone(),
            "--descriptor".to_owned(),
            "endpoint=kcserl,path=/auth/realms/x,consumer=test_client2".to_owned(),
            "--hits".to_owned(),
            hits.to_owned(),
        ]
    };
    wait_for_fresh_window(60, Duration::from_secs(5));
    let run = |a: Vec<String>| run_cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let first = run(args("10"));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    let json: serde_json::Value = serde_json::from_slice(&first.stdout).expect("check prints JSON");
    assert_eq!(json["overallCode"], "OK");
    assert_eq!(json["statuses"][0]["limitRemaining"], 0);
    assert_eq!(
        json["statuses"][0]["currentLimit"]["name"],
        "kcserl /auth invoker test_client2"
    );
    assert_eq!(json["statuses"][0]["currentLimit"]["unit"], "MINUTE");

    let second = run(args("1"));
    assert_eq!(second.status.code(), Some(2), "{}", text(&second.stderr));
    let json: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(json["overallCode"], "OVER_LIMIT");
    assert!(
        json["statuses"][0]["durationUntilReset"]
            .as_str()
            .unwrap()
            .ends_with('s')
    );

    drop(rls);
    let refused = run(args("1"));
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("cannot connect"),
        "{}",
        text(&refused.stderr)
    );
}

#[test]
fn admin_endpoints() {
    let rls = Rls::start(&["--config", example("").to_str().unwrap()]);
    assert_eq!(rls.admin_get("/healthz"), (200, "ok\n".to_owned()));
    assert_eq!(rls.admin_get("/readyz"), (200, "ready\n".to_owned()));
    let (status, body) = rls.admin_get("/config");
    assert_eq!(status, 200);
    let cfg: serde_json::Value = serde_json::from_str(&body).expect("/config is JSON");
    assert_eq!(cfg["generation"], 1);
    assert_eq!(cfg["sha256"].as_str().unwrap().len(), 64);
    assert!(
        cfg["files"][0]
            .as_str()
            .unwrap()
            .ends_with("full-example.yaml"),
        "{cfg}"
    );
    assert_eq!(
        cfg["rules"]["domains"][0]["endpoints"][0]["shortname"],
        "kcserl"
    );
    assert_eq!(
        cfg["rules"]["domains"][0]["endpoints"][0]["uri_prefixes"][2]["value"],
        1
    );
    assert!(
        rls.logs()
            .iter()
            .any(|l| l.contains("configuration loaded"))
    );
    assert_eq!(rls.admin_get("/nope").0, 404);
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let mut rls = Rls::start(&["--config", example("").to_str().unwrap()]);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &rls.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = rls
        .wait_exit(Duration::from_secs(10))
        .expect("exits after SIGTERM");
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn settings_come_from_rls_environment_variables_and_flags_win() {
    let dir = example("seed");
    let files = format!(
        "{},{}",
        dir.join("2.1-per-service.yaml").display(),
        example("full-example.yaml").display()
    );
    // Both files name shortname kcserl: loading both must fail, which proves RLS_CONFIG was
    // read as a comma-separated list.
    let out = serve_until_exit(&[], &[("RLS_CONFIG", &files)]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("duplicate shortname"),
        "{}",
        text(&out.stderr)
    );

    // RLS_GRPC_ADDR names a port that is taken; the flag given by Rls::start (port 0) wins.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    let rls = Rls::start_with_env(
        &[],
        &[
            ("RLS_CONFIG", example("full-example.yaml").to_str().unwrap()),
            ("RLS_GRPC_ADDR", &taken_addr),
        ],
    );
    assert_ne!(rls.grpc_addr.to_string(), taken_addr);
    assert_eq!(rls.admin_get("/readyz").0, 200);
}

/// `(flag, env var, default)` of every flag in a command's `--help`, in order.
fn flags_of(command: &[&str]) -> Vec<(String, Option<String>, Option<String>)> {
    let out = run_cli(&[command, &["--help"]].concat());
    assert!(out.status.success(), "{command:?}: {}", text(&out.stderr));
    let help = text(&out.stdout);
    let mut flags: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in help.lines() {
        let t = line.trim_start();
        // A flag's line starts its block; `[env: ...]` and `[default: ...]` follow on that line
        // (short layout) or on their own lines (long layout).
        if let Some(long) = t.strip_prefix("--").or_else(|| {
            t.strip_prefix('-')
                .and_then(|s| s.split_once(", --").map(|(_, l)| l))
        }) {
            let name = long.split([' ', '\n']).next().unwrap_or(long);
            flags.push((name.to_owned(), None, None));
        }
        let Some(current) = flags.last_mut() else {
            continue;
        };
        if let Some((_, env)) = t.split_once("[env: ") {
            current.1 = env.split_once('=').map(|(name, _)| name.to_owned());
        }
        if let Some((_, default)) = t.split_once("[default: ") {
            current.2 = default.split_once(']').map(|(d, _)| d.to_owned());
        }
    }
    flags.retain(|(f, _, _)| f != "help" && f != "version");
    flags
}

#[test]
fn the_one_shot_commands_keep_their_flags_env_vars_and_defaults() {
    // Scripts, the chart's examples and the docs call these commands: renaming a flag, its
    // variable or its default breaks them, so a change here must be deliberate.
    let some = |s: &str| Some(s.to_owned());
    let table = |rows: &[(&str, Option<String>, Option<String>)]| {
        rows.iter()
            .map(|(f, e, d)| ((*f).to_owned(), e.clone(), d.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(flags_of(&["validate"]), table(&[]));
    assert_eq!(
        flags_of(&["check"]),
        table(&[
            (
                "addr",
                some("RLS_CHECK_ADDR"),
                some("http://127.0.0.1:8081")
            ),
            ("domain", some("RLS_CHECK_DOMAIN"), some("kcse")),
            ("descriptor", None, None),
            ("hits", None, some("0")),
            ("timeout", None, some("5s")),
        ])
    );
    assert_eq!(
        flags_of(&["bench"]),
        table(&[
            ("addr", None, some("http://127.0.0.1:8081")),
            ("domain", None, some("kcse")),
            ("descriptor", None, None),
            ("distinct", None, some("10000")),
            ("concurrency", None, some("64")),
            ("connections", None, some("4")),
            ("duration", None, some("10s")),
            ("rate", None, None),
            ("admin", None, None),
            ("redis-url", None, None),
            ("markdown-row", None, None),
        ])
    );
    let gateway = [
        ("config", None, None),
        ("domain", None, None),
        ("timeout", None, some("20ms")),
        ("failure-mode-deny", None, None),
        ("jwks-uri", None, None),
        ("jwt-issuer", None, None),
        ("jwt-audience", None, None),
        ("jwt", None, None),
        ("consumer-sources", None, some("basic,query,form,jwt")),
        ("max-form-bytes", None, some("16384")),
    ];
    let envoy = [
        ("rls-addr", None, some("127.0.0.1:8081")),
        ("listen", None, some("0.0.0.0:10000")),
        ("envoy-admin", None, None),
        ("upstream", None, None),
        ("response-cache", None, None),
    ];
    assert_eq!(
        flags_of(&["render", "envoy"]),
        table(&[&gateway[..], &envoy[..]].concat())
    );
    let istio = [
        (
            "rls-addr",
            None,
            some("rate-limiter-headless-service.ironclad-rls.svc.cluster.local:8081"),
        ),
        ("namespace", None, some("istio-system")),
        ("gateway-selector", None, some("istio=ingressgateway")),
        ("host", None, None),
        (
            "rls-selector",
            None,
            some("app.kubernetes.io/name=ironclad-rls"),
        ),
        ("no-service", None, None),
    ];
    assert_eq!(
        flags_of(&["render", "istio"]),
        table(&[&gateway[..], &istio[..]].concat())
    );
}

#[test]
fn every_serve_flag_reads_its_rls_variable() {
    // The rule of docs/service.md: `--grpc-addr` ↔ `RLS_GRPC_ADDR`. Checked as a rule, not a
    // list, so a new flag is held to it without touching this test.
    let flags = flags_of(&["serve"]);
    assert!(flags.len() >= 10, "parsed too few serve flags: {flags:?}");
    for (flag, env, _) in &flags {
        let expected = format!("RLS_{}", flag.to_uppercase().replace('-', "_"));
        assert_eq!(env.as_deref(), Some(expected.as_str()), "serve --{flag}");
    }
}

#[test]
fn bench_reports_every_answer_the_service_gave() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let addr = format!("http://{}", rls.grpc_addr);
    // Each of 3 consumers may make 10 calls a minute under /auth/admin/realms/API-TEST/: in
    // one window exactly 30 calls are OK whatever the number of calls made.
    wait_for_fresh_window(60, Duration::from_secs(10));
    let out = run_cli(&[
        "bench",
        "--addr",
        &addr,
        "--descriptor",
        "endpoint=kcserl,path=/auth/admin/realms/API-TEST/x,consumer=c{n}",
        "--distinct",
        "3",
        "--concurrency",
        "4",
        "--connections",
        "2",
        "--duration",
        "1s",
        "--markdown-row",
        "memory",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let answers = stdout
        .lines()
        .find_map(|l| l.strip_prefix("answers: "))
        .unwrap_or_else(|| panic!("no answers line: {stdout}"));
    let counts: Vec<u64> = answers
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let [ok, over, errors] = counts[..] else {
        panic!("{answers}")
    };
    assert_eq!((ok, errors), (30, 0), "{stdout}");
    assert!(over > 0, "bench made more calls than the quota: {stdout}");
    let total: u64 = stdout.split(' ').next().unwrap().parse().unwrap();
    assert_eq!(total, ok + over + errors, "{stdout}");
    // The service saw exactly the calls bench counted.
    let served = |code| rls.metric("ratelimit_requests_total", &[("code", code)]);
    assert_eq!(served("ok"), Some(ok as f64));
    assert_eq!(served("over_limit"), Some(over as f64));
    let row = stdout.lines().last().unwrap();
    assert!(
        row.starts_with("| memory | ") && row.ends_with(" | 0 |"),
        "{row}"
    );

    drop(rls);
    let refused = run_cli(&["bench", "--addr", &addr, "--descriptor", "k=v"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("cannot connect"),
        "{}",
        text(&refused.stderr)
    );
}
