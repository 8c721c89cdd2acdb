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
