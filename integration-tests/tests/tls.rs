//! gRPC over TLS and mutual TLS, with certificates made by the test, and certificate reload
//! when the files change.

use std::path::Path;
use std::time::{Duration, Instant};

use integration_tests::pki::Ca;
use integration_tests::{Rls, request, temp_file};
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::rate_limit_service_client::RateLimitServiceClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const LIMITS: &str = "kcse_rate_limits:\n  endpoints:\n    - name: api\n      shortname: api\n      overall_limit: 1000\n";

/// One call over TLS trusting `ca`, optionally presenting a client identity; the answer or
/// the error's text.
async fn call(rls: &Rls, ca: &str, identity: Option<&(String, String)>) -> Result<i32, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{}", rls.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    RateLimitServiceClient::new(channel)
        .should_rate_limit(request("kcse", &[&[("endpoint", "api")]]))
        .await
        .map(|r| r.into_inner().overall_code)
        .map_err(|s| format!("{s:?}"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn tls_and_certificate_reload() {
    let (dir, limits) = temp_file("limits.yaml", LIMITS);
    let ca1 = Ca::new("server CA 1");
    let (cert, key) = ca1.leaf(&["localhost"]);
    let cert_path = write(dir.path(), "server.crt", &cert);
    let key_path = write(dir.path(), "server.key", &key);
    let rls = Rls::start(&[
        "--config",
        limits.to_str().unwrap(),
        "--grpc-tls-cert",
        &cert_path,
        "--grpc-tls-key",
        &key_path,
    ]);

    assert_eq!(call(&rls, &ca1.pem(), None).await, Ok(Code::Ok as i32));
    let other = Ca::new("someone else");
    assert!(
        call(&rls, &other.pem(), None).await.is_err(),
        "a client that does not trust the CA fails"
    );
    let mut plain = RateLimitServiceClient::connect(format!("http://{}", rls.grpc_addr)).await;
    if let Ok(c) = plain.as_mut() {
        assert!(
            c.should_rate_limit(request("kcse", &[&[("endpoint", "api")]]))
                .await
                .is_err(),
            "plaintext is refused"
        );
    }

    // Renew the certificate from another CA: new connections get it without a restart.
    let ca2 = Ca::new("server CA 2");
    let (cert, key) = ca2.leaf(&["localhost"]);
    write(dir.path(), "server.key", &key);
    write(dir.path(), "server.crt", &cert);
    let t = Instant::now();
    while call(&rls, &ca2.pem(), None).await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("renewed certificate served after {:?}", t.elapsed());
    assert!(
        call(&rls, &ca1.pem(), None).await.is_err(),
        "the old CA no longer verifies the server"
    );

    // A broken file keeps the current certificate.
    write(dir.path(), "server.crt", "not a certificate");
    integration_tests::eventually(
        Duration::from_secs(5),
        "the failed TLS reload to be logged",
        || {
            rls.logs()
                .iter()
                .any(|l| l.contains("gRPC TLS reload failed"))
                .then_some(())
        },
    );
    assert_eq!(call(&rls, &ca2.pem(), None).await, Ok(Code::Ok as i32));
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate_from_the_client_ca() {
    let (dir, limits) = temp_file("limits.yaml", LIMITS);
    let server_ca = Ca::new("server CA");
    let (cert, key) = server_ca.leaf(&["localhost"]);
    let client_ca = Ca::new("client CA");
    let cert_path = write(dir.path(), "server.crt", &cert);
    let key_path = write(dir.path(), "server.key", &key);
    let client_ca_path = write(dir.path(), "clients.crt", &client_ca.pem());
    let rls = Rls::start(&[
        "--config",
        limits.to_str().unwrap(),
        "--grpc-tls-cert",
        &cert_path,
        "--grpc-tls-key",
        &key_path,
        "--grpc-tls-client-ca",
        &client_ca_path,
    ]);
    let good = client_ca.leaf(&["envoy-gateway"]);
    assert_eq!(
        call(&rls, &server_ca.pem(), Some(&good)).await,
        Ok(Code::Ok as i32)
    );
    assert!(
        call(&rls, &server_ca.pem(), None).await.is_err(),
        "no client certificate"
    );
    let stranger = Ca::new("stranger").leaf(&["envoy-gateway"]);
    assert!(
        call(&rls, &server_ca.pem(), Some(&stranger)).await.is_err(),
        "a certificate from another CA"
    );
}

#[tokio::test]
async fn max_connections_bounds_tls_connections_handshakes_included() {
    let (dir, limits) = temp_file("limits.yaml", LIMITS);
    let ca = Ca::new("server CA");
    let (cert, key) = ca.leaf(&["localhost"]);
    let cert_path = write(dir.path(), "server.crt", &cert);
    let key_path = write(dir.path(), "server.key", &key);
    let rls = Rls::start(&[
        "--config",
        limits.to_str().unwrap(),
        "--grpc-tls-cert",
        &cert_path,
        "--grpc-tls-key",
        &key_path,
        "--max-connections",
        "1",
    ]);
    // A TCP connection that never starts its handshake holds the only slot...
    let stalled = std::net::TcpStream::connect(rls.grpc_addr).unwrap();
    integration_tests::eventually(Duration::from_secs(10), "the slot taken", || {
        (rls.metric("ratelimit_connections", &[("listener", "grpc")]) == Some(1.0)).then_some(())
    });
    // ...so a real client waits (its TCP connect completes in the backlog, no handshake).
    let pem = ca.pem();
    let addr = rls.grpc_addr;
    let waiting = tokio::spawn(async move {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pem))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        RateLimitServiceClient::new(channel)
            .should_rate_limit(request("kcse", &[&[("endpoint", "api")]]))
            .await
            .map(|r| r.into_inner().overall_code)
            .map_err(|s| format!("{s:?}"))
    });
    integration_tests::eventually(Duration::from_secs(10), "the accept loop to wait", || {
        (rls.metric("ratelimit_accept_waits_total", &[("listener", "grpc")]) >= Some(1.0))
            .then_some(())
    });
    assert!(!waiting.is_finished(), "no slot, no handshake");
    drop(stalled);
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once the slot is free")
        .unwrap();
    assert_eq!(answer, Ok(Code::Ok as i32));
}
