//! The two servers as futures for the supervisor: gRPC (tonic) with its HTTP/2 bounds, and
//! admin HTTP (axum on hyper) with its slow-header timeout. Both take their connections
//! from a budgeted accept loop (`accept.rs`) and stop accepting when `stop` fires.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::watch;

use super::accept::{self, Budgeted};
use crate::settings::ServeArgs;
use crate::tls::ReloadingTls;

/// How long a client may take to send a request's headers on the admin side.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when a stop is sent (or the sender is gone).
pub(super) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The gRPC server with the connection bounds of docs/service.md §2: `max_concurrent_streams`
/// announced in SETTINGS (h2 refuses a stream past it), keepalive PINGs that close a peer
/// that stopped answering, GOAWAY at `--grpc-max-connection-age` and a hard close after the
/// grace period (tonic's own grace option never sends the GOAWAY, so the grace is the
/// accept loop's deadline instead).
pub(super) fn server_builder(args: &ServeArgs) -> tonic::transport::Server {
    let builder = tonic::transport::Server::builder()
        .max_concurrent_streams(args.grpc_max_concurrent_streams)
        .http2_keepalive_interval(Some(args.grpc_keepalive_interval))
        .http2_keepalive_timeout(Some(args.grpc_keepalive_timeout));
    match args.grpc_max_connection_age {
        Some(age) => builder.max_connection_age(age),
        None => builder,
    }
}

/// Serves `router` on the budgeted gRPC listener, plaintext or TLS, until `stop`; then
/// waits for the open connections to finish (the caller bounds that by the drain timeout).
pub(super) async fn grpc(
    router: tonic::transport::server::Router,
    listener: Budgeted,
    tls: Option<Arc<ReloadingTls>>,
    hard_close_after: Option<Duration>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    match tls {
        Some(tls) => {
            let incoming = accept::incoming(listener, hard_close_after, move |tcp, peer| {
                let tls = tls.clone();
                async move {
                    tls.accept(tcp)
                        .await
                        .inspect_err(|e| tracing::debug!(%peer, error = %e, "TLS handshake failed"))
                        .ok()
                }
            });
            router
                .serve_with_incoming_shutdown(incoming, stopped(stop))
                .await
        }
        None => {
            let incoming = accept::incoming(listener, hard_close_after, accept::first_bytes);
            router
                .serve_with_incoming_shutdown(incoming, stopped(stop))
                .await
        }
    }
    .context("gRPC server")
}

/// Serves the admin router on its budgeted listener until `stop`, then lets the requests in
/// progress finish (the caller bounds how long).
pub(super) async fn admin(
    router: axum::Router,
    listener: Budgeted,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    let graceful = GracefulShutdown::new();
    {
        // Dropped before the wait below: that closes the listener, so new clients are
        // refused instead of waiting in the backlog of a port that will not answer.
        let incoming = accept::incoming(listener, None, accept::first_bytes);
        let mut incoming = std::pin::pin!(incoming);
        let mut stop = std::pin::pin!(stopped(stop));
        loop {
            let conn = tokio::select! {
                () = &mut stop => break,
                c = incoming.next() => c,
            };
            let Some(Ok(conn)) = conn else {
                anyhow::bail!("the admin accept loop ended");
            };
            let service = TowerToHyperService::new(router.clone());
            let served = graceful.watch(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(conn), service)
                    .into_owned(),
            );
            tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::debug!(error = %e, "admin connection ended with an error");
                }
            });
        }
    }
    graceful.shutdown().await;
    Ok(())
}
