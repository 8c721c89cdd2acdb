//! The admin port's guard on quota (docs/service.md §3, `--admin-token-file`): without a token
//! file, `POST /json` refuses refunds (`is_negative_hits`) and limit overrides; with one,
//! `/json` and `/config` answer 401 without the bearer token and accept refunds with it,
//! while probes and `/metrics` stay open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use integration_tests::{Rls, temp_file};

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      unit: hour
      uri_prefixes:
        - {prefix: /, value: 2}
";

const TAKE: &str = r#"{"domain":"kcse","descriptors":[{"entries":[{"key":"endpoint","value":"api"},{"key":"path","value":"/x"},{"key":"consumer","value":"cron"}]}]}"#;
const REFUND: &str = r#"{"domain":"kcse","descriptors":[{"entries":[{"key":"endpoint","value":"api"},{"key":"path","value":"/x"},{"key":"consumer","value":"cron"}],"isNegativeHits":true}]}"#;
const OVERRIDE: &str = r#"{"domain":"kcse","descriptors":[{"entries":[{"key":"endpoint","value":"api"},{"key":"path","value":"/x"},{"key":"consumer","value":"cron"}],"limit":{"requestsPerUnit":1000,"unit":"HOUR"}}]}"#;

/// One HTTP/1.1 request with an optional `Authorization` header: (status, body).
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {raw:?}"));
    (
        status,
        raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned(),
    )
}

#[test]
fn without_a_token_file_json_refuses_refunds_and_overrides() {
    let (_dir, file) = temp_file("limits.yaml", LIMITS);
    let rls = Rls::start(&["--config", file.to_str().unwrap()]);
    let post = |body| http(rls.admin_addr, "POST", "/json", None, body);

    assert_eq!(post(TAKE).0, 200);
    for (body, what) in [(REFUND, "a refund"), (OVERRIDE, "a limit override")] {
        let (status, answer) = post(body);
        assert_eq!(status, 403, "{what}: {answer}");
        assert!(answer.contains("--admin-token-file"), "{what}: {answer}");
    }
    // Nothing was given back: one hit is left of 2.
    assert_eq!(post(TAKE).0, 200);
    assert_eq!(post(TAKE).0, 429);
    assert_eq!(
        rls.metric("ratelimit_admin_refusals_total", &[("reason", "forbidden")]),
        Some(2.0)
    );
    assert_eq!(http(rls.admin_addr, "GET", "/config", None, "").0, 200);
}

/// A service run with `--admin-token-file` holding `token`: (its directory, the limits file,
/// the token file, the service).
fn with_token(
    token: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
    Rls,
) {
    let (dir, file) = temp_file("limits.yaml", LIMITS);
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, token).unwrap();
    let rls = Rls::start(&[
        "--config",
        file.to_str().unwrap(),
        "--admin-token-file",
        token_file.to_str().unwrap(),
    ]);
    (dir, file, token_file, rls)
}

#[test]
fn with_a_token_file_json_and_config_need_the_token_and_refunds_are_accepted() {
    let (_dir, _file, token_file, rls) = with_token("0123-token-abcd\n");
    let addr = rls.admin_addr;
    let good = Some("Bearer 0123-token-abcd");

    for auth in [None, Some("Bearer wrong"), Some("0123-token-abcd")] {
        let (status, answer) = http(addr, "POST", "/json", auth, TAKE);
        assert_eq!(status, 401, "{auth:?}: {answer}");
        assert_eq!(http(addr, "GET", "/config", auth, "").0, 401, "{auth:?}");
    }
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(http(addr, "GET", open, None, "").0, 200, "{open}");
    }
    let (status, config) = http(addr, "GET", "/config", good, "");
    assert_eq!(status, 200);
    assert!(
        !config.contains("0123-token-abcd"),
        "the token is never shown"
    );

    // Take both hits, give one back, and it can be used at once.
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 200);
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 200);
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 429);
    let (status, answer) = http(addr, "POST", "/json", good, REFUND);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 200);

    // A rotated token applies to the next request.
    std::fs::write(&token_file, "rotated").unwrap();
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 401);
    assert_ne!(
        http(addr, "POST", "/json", Some("Bearer rotated"), TAKE).0,
        401
    );
    assert!(
        rls.logs()
            .iter()
            .all(|l| !l.contains("0123-token-abcd") && !l.contains("rotated")),
        "the token never reaches the log"
    );
    assert_eq!(
        rls.metric(
            "ratelimit_admin_refusals_total",
            &[("reason", "unauthorized")]
        ),
        Some(7.0)
    );
}

/// Where the token meets the observability endpoints: `POST /counters` reads counter state as
/// `/json` does, so it is guarded like `/json`, and `explain --admin` gets through only with
/// `--admin-token-file`; the read-only summaries stay open for the browser status page.
#[test]
fn counters_need_the_token_and_explain_sends_it() {
    let (_dir, file, token_file, rls) = with_token("explain-token\n");
    let addr = rls.admin_addr;
    assert_eq!(http(addr, "POST", "/counters", None, TAKE).0, 401);
    let good = Some("Bearer explain-token");
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 200);
    let (status, answer) = http(addr, "POST", "/counters", good, TAKE);
    assert_eq!(status, 200, "{answer}");
    for open in ["/", "/status.json", "/limited"] {
        assert_eq!(http(addr, "GET", open, None, "").0, 200, "{open}");
    }

    let admin = format!("http://{addr}");
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--config",
            file.to_str().unwrap(),
            "--domain",
            "kcse",
            "--descriptor",
            "endpoint=api,path=/x,consumer=cron",
            "--admin",
            &admin,
        ];
        args.extend_from_slice(extra);
        integration_tests::run_cli(&args)
    };
    let refused = explain(&[]);
    assert!(!refused.status.success(), "explain without the token");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let out = explain(&["--admin-token-file", token_file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Asking counted nothing: one hit was taken above, so one more fits and the next is over.
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 200);
    assert_eq!(http(addr, "POST", "/json", good, TAKE).0, 429);
}
