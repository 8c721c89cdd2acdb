//! `ironclad-rls bench --rate`: the real load tool against the real service, on the memory
//! store and on a real Redis. Checks that the figures it prints agree with each other and
//! with the service's own `/metrics` (every call sent is answered or counted as an error;
//! the CPU figures are read), and that a service killed during a run ends the run with the
//! calls it did not answer counted as errors; never how fast anything was.

use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::redis::RedisServer;
use integration_tests::{Rls, binary, eventually, example, run_cli};

/// Calls per second and seconds of the open loop: 2 000 calls in all, whatever the machine.
const RATE: &str = "1000";
const DURATION: &str = "2s";
const SCHEDULED: u64 = 2_000;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The count before `what` in `line` (`"12 OK"` → 12).
fn count_before(line: &str, what: &str) -> u64 {
    number_before(line, what) as u64
}

/// The number before `what` in `line` (`"1.000 commands"` → 1.0).
fn number_before(line: &str, what: &str) -> f64 {
    let (head, _) = line
        .split_once(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    head.trim_end()
        .rsplit([' ', ','])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count before {what:?} in {line:?}"))
}

/// The number after `what` in `line` (`"late sends 3"` → 3).
fn number_after(line: &str, what: &str) -> f64 {
    let (_, tail) = line
        .split_once(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line:?}"));
    tail.trim_start()
        .split([' ', ','])
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {what:?} in {line:?}"))
}

fn line_starting<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"))
}

/// Runs the open loop against `rls` (and `redis`, when given) and checks the report.
fn open_loop_reports_consistent_figures(rls: &Rls, redis: Option<&RedisServer>) {
    let addr = format!("http://{}", rls.grpc_addr);
    let admin = format!("http://{}", rls.admin_addr);
    let mut args = vec![
        "bench",
        "--addr",
        &addr,
        "--descriptor",
        "endpoint=kcserl,path=/auth/x,consumer=c{n}",
        "--distinct",
        "50",
        "--rate",
        RATE,
        "--duration",
        DURATION,
        "--admin",
        &admin,
    ];
    let redis_url = redis.map(RedisServer::url);
    if let Some(url) = &redis_url {
        args.extend(["--redis-url", url]);
    }
    let out = run_cli(&args);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));

    // Every scheduled call was sent, and each was answered or failed.
    let sent_line = line_starting(&stdout, "sent: ");
    let sent = number_after(sent_line, "sent:");
    let answered = number_after(sent_line, "answered");
    let errors = number_after(sent_line, "errors");
    let late = number_after(sent_line, "late sends");
    assert_eq!(sent, SCHEDULED as f64, "{stdout}");
    assert_eq!(sent, answered + errors, "{stdout}");
    assert!(late <= sent, "{stdout}");
    let answers = line_starting(&stdout, "answers: ");
    let (ok, over, errs) = (
        count_before(answers, " OK"),
        count_before(answers, " OVER_LIMIT"),
        count_before(answers, " errors"),
    );
    assert_eq!((ok + over) as f64, answered, "{stdout}");
    assert_eq!(errs as f64, errors, "{stdout}");
    let first: u64 = stdout
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no call count first: {stdout}"));
    assert_eq!(first, SCHEDULED, "{stdout}");
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|l| l.contains("(open loop at 1000/s")),
        "{stdout}"
    );

    // The service counted exactly the calls bench saw answered.
    let served = |code| rls.metric("ratelimit_requests_total", &[("code", code)]);
    assert_eq!(served("ok"), Some(ok as f64), "{stdout}");
    assert_eq!(served("over_limit"), Some(over as f64), "{stdout}");

    // The tool reports its own CPU per call (its process's clock), so a reader can tell it
    // was not the bottleneck.
    let tool = line_starting(&stdout, "load tool CPU: ");
    assert!(
        number_after(tool, "load tool CPU:") > 0.0,
        "the tool's CPU per call is read: {stdout}"
    );
    assert!(tool.contains(" µs per call ("), "{stdout}");

    // 2 000 decisions cost the service some CPU, and it is read from its /metrics.
    let service = line_starting(&stdout, "service CPU: ");
    assert!(
        number_after(service, "service CPU:") > 0.0,
        "the service's CPU per call is read: {stdout}"
    );
    match redis {
        Some(_) => {
            let r = line_starting(&stdout, "Redis CPU: ");
            assert!(number_after(r, "Redis CPU:") > 0.0, "{stdout}");
            assert!(
                number_before(r, " commands per call") > 0.0,
                "Redis ran the calls' commands: {stdout}"
            );
        }
        None => assert!(!stdout.contains("Redis CPU"), "{stdout}"),
    }
}

#[test]
fn open_loop_on_the_memory_store() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    open_loop_reports_consistent_figures(&rls, None);
}

#[test]
fn open_loop_on_redis() {
    let redis = RedisServer::start();
    let url = redis.url();
    let rls = Rls::start(&[
        "--config",
        example("full-example.yaml").to_str().unwrap(),
        "--redis-url",
        &url,
        // Checks figures, not latency, on a busy 2-core machine.
        "--redis-timeout",
        "2s",
    ]);
    open_loop_reports_consistent_figures(&rls, Some(&redis));
}

#[test]
fn unreachable_figures_are_a_clear_error() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let addr = format!("http://{}", rls.grpc_addr);
    let out = run_cli(&[
        "bench",
        "--addr",
        &addr,
        "--descriptor",
        "endpoint=kcserl,path=/auth/x",
        "--rate",
        "10",
        "--duration",
        "100ms",
        "--redis-url",
        "redis://127.0.0.1:1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot read INFO of redis://127.0.0.1:1"),
        "{stderr}"
    );
}

#[test]
fn an_https_address_is_refused_up_front() {
    let out = run_cli(&[
        "bench",
        "--addr",
        "https://127.0.0.1:1",
        "--descriptor",
        "endpoint=kcserl",
        "--duration",
        "100ms",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid --addr \"https://127.0.0.1:1\"") && stderr.contains("h2c"),
        "{stderr}"
    );
}

/// Starts `bench` with `extra` against a fresh service, kills the service with SIGKILL once
/// it has answered some calls, and returns what bench printed; bench must end by itself
/// and succeed.
fn run_through_a_kill(extra: &[&str]) -> String {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let addr = format!("http://{}", rls.grpc_addr);
    let bench = Command::new(binary())
        .args([
            "bench",
            "--addr",
            &addr,
            "--descriptor",
            "endpoint=kcserl,path=/auth/x,consumer=c{n}",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run ironclad-rls bench");
    eventually(
        Duration::from_secs(20),
        "the service's first answers",
        || {
            rls.metric("ratelimit_requests_total", &[("code", "ok")])
                .filter(|&n| n > 0.0)
        },
    );
    rls.signal("-KILL");
    let out = bench.wait_with_output().expect("bench ran");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    stdout
}

#[test]
fn a_service_killed_during_the_open_loop_leaves_its_calls_counted_as_errors() {
    let stdout = run_through_a_kill(&["--rate", "1000", "--duration", "3s"]);
    let sent_line = line_starting(&stdout, "sent: ");
    let (sent, answered, errors) = (
        number_after(sent_line, "sent:"),
        number_after(sent_line, "answered"),
        number_after(sent_line, "errors"),
    );
    // The schedule was kept to its end: each call answered before the kill, or an error.
    assert_eq!(sent, 3_000.0, "{stdout}");
    assert_eq!(sent, answered + errors, "{stdout}");
    assert!(answered > 0.0, "answers before the kill: {stdout}");
    assert!(errors > 0.0, "calls after the kill: {stdout}");
}

#[test]
fn a_service_killed_during_the_closed_loop_ends_the_run_with_errors() {
    // Far longer than the run lasts once its connections are gone.
    let stdout = run_through_a_kill(&["--duration", "60s", "--concurrency", "8"]);
    let answers = line_starting(&stdout, "answers: ");
    assert!(count_before(answers, " OK") > 0, "{stdout}");
    assert!(count_before(answers, " errors") > 0, "{stdout}");
    let seconds = stdout
        .split_once(" calls in ")
        .and_then(|(_, t)| t.split_once('s'))
        .and_then(|(s, _)| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no run time: {stdout}"));
    assert!(
        seconds < 60.0,
        "the callers stop when their connections die: {stdout}"
    );
}
