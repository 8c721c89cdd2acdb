//! The lifecycle in-process: `bind` on port 0, `run` with an injected shutdown future, the
//! drain seen from a client (health NOT_SERVING, `/readyz` 503, `run` returning `Ok` once
//! the last connection closes), and a critical task ending that makes `run` fail.

use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::*;
use crate::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
use crate::proto::rate_limit_service_client::RateLimitServiceClient;
use crate::proto::{RateLimitDescriptor, RateLimitRequest};
use crate::settings::{Cli, Command};

const LIMITS: &str = "kcse_rate_limits:\n  endpoints:\n    - name: api\n      shortname: api\n      unit: hour\n      uri_prefixes:\n        - {prefix: /, value: 5}\n";

/// A deadline for things that happen at once on an idle machine; generous for a busy one.
const SOON: Duration = Duration::from_secs(10);

fn serve_args(config: &std::path::Path, extra: &[&str]) -> ServeArgs {
    let mut argv = vec![
        "ironclad-rls",
        "serve",
        "--config",
        config.to_str().expect("UTF-8 path"),
        "--grpc-addr",
        "127.0.0.1:0",
        "--admin-addr",
        "127.0.0.1:0",
    ];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).expect("valid flags").command {
        Command::Serve(args) => args,
        other => panic!("not serve: {other:?}"),
    }
}

fn limits_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("limits.yaml");
    std::fs::write(&path, LIMITS).expect("write limits");
    (dir, path)
}

/// `GET path` over HTTP/1.1: (status, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to admin");
    let ask = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(ask.as_bytes()).await.expect("send");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {raw:?}"));
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

fn request() -> RateLimitRequest {
    let entry = |k: &str, v: &str| Entry {
        key: k.into(),
        value: v.into(),
    };
    RateLimitRequest {
        domain: "kcse".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![
                entry("endpoint", "api"),
                entry("path", "/x"),
                entry("consumer", "c"),
            ],
            ..RateLimitDescriptor::default()
        }],
        hits_addend: 0,
    }
}

#[tokio::test]
async fn a_requested_shutdown_drains_and_run_returns_ok() {
    let (_dir, config) = limits_file();
    // A drain timeout far above the deadline below: `run` must end because the last
    // connection closed, not because the drain gave up.
    let bound = bind(serve_args(&config, &["--drain-timeout", "60s"]))
        .await
        .expect("bind");
    let (grpc_addr, admin_addr) = (bound.grpc_addr(), bound.admin_addr());
    assert_ne!(grpc_addr.port(), 0, "the bound port, not the asked one");
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(bound.run(async {
        let _ = stopped.await;
    }));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let answer = RateLimitServiceClient::new(channel.clone())
        .should_rate_limit(request())
        .await
        .expect("a call before shutdown")
        .into_inner();
    assert_eq!(answer.statuses[0].limit_remaining, 4);

    // A health watch is a stream that stays open: it holds the connection, and so the drain,
    // until this test lets go of it.
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let mut next_status = async || {
        tokio::time::timeout(SOON, watch.message())
            .await
            .expect("a health update in time")
            .expect("health stream")
            .expect("health stream open")
            .status()
    };
    while next_status().await != ServingStatus::Serving {}
    assert_eq!(get(admin_addr, "/readyz").await.0, 200);

    stop.send(()).expect("run is waiting");
    while next_status().await != ServingStatus::NotServing {}
    let (status, body) = get(admin_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("shutting down"), "{body}");
    assert!(!run.is_finished(), "the open stream holds the drain");

    drop(watch);
    drop(channel);
    let ended = tokio::time::timeout(SOON, run)
        .await
        .expect("run returns once the last connection closed")
        .expect("run task");
    assert!(ended.is_ok(), "{ended:?}");
}

#[tokio::test]
async fn a_critical_task_that_fails_or_ends_makes_run_fail() {
    let (_dir, config) = limits_file();
    for (ending, want) in [
        (Err(anyhow::anyhow!("boom")), "the test source failed: boom"),
        (Ok(()), "the test source ended unexpectedly"),
    ] {
        let mut bound = bind(serve_args(&config, &[])).await.expect("bind");
        let admin_addr = bound.admin_addr();
        let (go, wait) = oneshot::channel::<()>();
        bound.add_critical_task("test source", async move {
            let _ = wait.await;
            ending
        });
        let run = tokio::spawn(bound.run(std::future::pending()));
        // Serving first, so the failure is one at run time.
        assert_eq!(get(admin_addr, "/healthz").await.0, 200);
        go.send(()).expect("task is waiting");
        let ended = tokio::time::timeout(SOON, run)
            .await
            .expect("run ends without a shutdown request")
            .expect("run task");
        let error = format!("{:#}", ended.expect_err("run fails"));
        assert!(error.contains(want), "{error}");
    }
}
