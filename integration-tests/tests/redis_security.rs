//! Redis credentials and TLS: AUTH with a password from a file or a user and password in the
//! URL, `rediss://` with a CA file; credentials never appear in logs, `/config` or errors.

use std::time::Duration;

use integration_tests::redis::{RedisServer, free_port};
use integration_tests::{Rls, request, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;

const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: api
      shortname: api
      overall_limit: 100
";
const PASSWORD: &str = "s3cret-Pa55word";

async fn answers_ok(rls: &Rls) {
    rls.wait_ready(Duration::from_secs(10));
    let r = request("kcse", &[&[("endpoint", "api")]]);
    assert_eq!(rls.overall_code(r).await, Code::Ok as i32);
}

fn assert_no_secret(rls: &Rls, secret: &str) {
    let (_, config) = rls.admin_get("/config");
    assert!(
        !config.contains(secret),
        "/config leaks the password: {config}"
    );
    let logs = rls.logs().join("\n");
    assert!(
        !logs.contains(secret),
        "the log leaks the password:\n{logs}"
    );
}

#[tokio::test]
async fn password_file_and_acl_user() {
    let redis = RedisServer::start_with(&[
        "--requirepass",
        PASSWORD,
        "--user",
        "alice",
        "on",
        ">wonderland-Pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let (dir, limits) = temp_file("limits.yaml", LIMITS);
    let secret_file = dir.path().join("redis-password");
    std::fs::write(&secret_file, format!("{PASSWORD}\n")).unwrap();

    let rls = Rls::start(&[
        "--config",
        limits.to_str().unwrap(),
        "--redis-url",
        &redis.url(),
        "--redis-password-file",
        secret_file.to_str().unwrap(),
        "--redis-timeout",
        "2s",
    ]);
    answers_ok(&rls).await;
    assert_no_secret(&rls, PASSWORD);

    let url = format!("redis://alice:wonderland-Pw@127.0.0.1:{}", redis.port);
    // Generous deadlines: these tests are about credentials, not latency.
    let rls = Rls::start(&[
        "--config",
        limits.to_str().unwrap(),
        "--redis-url",
        &url,
        "--redis-timeout",
        "2s",
    ]);
    answers_ok(&rls).await;
    assert_no_secret(&rls, "wonderland-Pw");
    let (_, config) = rls.admin_get("/config");
    assert!(config.contains("redis://alice:***@127.0.0.1"), "{config}");

    // A wrong password: not ready, and the reason does not repeat the password.
    let url = format!("redis://alice:not-the-Pw@127.0.0.1:{}", redis.port);
    let rls = Rls::start(&["--config", limits.to_str().unwrap(), "--redis-url", &url]);
    let mut c = rls.client().await;
    let err = c
        .should_rate_limit(request("kcse", &[&[("endpoint", "api")]]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(!err.message().contains("not-the-Pw"), "{}", err.message());
    let (status, body) = rls.admin_get("/readyz");
    assert_eq!(status, 503);
    assert!(!body.contains("not-the-Pw"), "{body}");
    assert_no_secret(&rls, "not-the-Pw");
}

#[tokio::test]
async fn rediss_with_a_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let cert = dir.path().join("redis.crt");
    let key = dir.path().join("redis.key");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let port = free_port();
    let _redis = RedisServer::start_on(
        free_port(),
        &[
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-ca-cert-file",
            cert.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ],
    );
    let (_d, limits) = temp_file("limits.yaml", LIMITS);
    let url = format!("rediss://localhost:{port}");
    let rls = Rls::start(&[
        "--config",
        limits.to_str().unwrap(),
        "--redis-url",
        &url,
        "--redis-ca-file",
        cert.to_str().unwrap(),
        "--redis-timeout",
        "2s",
    ]);
    answers_ok(&rls).await;

    // Without the CA the server's certificate is not trusted: never ready.
    let rls = Rls::start(&["--config", limits.to_str().unwrap(), "--redis-url", &url]);
    let (status, body) = rls.admin_get("/readyz");
    assert_eq!(status, 503, "{body}");
}
