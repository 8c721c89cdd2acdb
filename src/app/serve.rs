//! The two servers as futures for the supervisor: gRPC (our HTTP/2 loop on h2,
//! `grpc/connection.rs`) with its bounds, and admin HTTP (axum on hyper) with its slow-header
//! timeout. Both take their connections
//! from a budgeted accept loop (`accept.rs`) and stop accepting when `stop` fires.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

use super::accept::{self, Budgeted, Conn};
use crate::grpc::{Http2, Port};
use crate::settings::ServeArgs;
use crate::tls::ReloadingTls;

/// How long a client may take to send a request's headers on the admin side.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolves when a stop is sent (or the sender is gone).
pub(super) async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The HTTP/2 bounds of docs/service.md §2 for each gRPC connection: `max_concurrent_streams`
/// announced in SETTINGS (h2 refuses a stream past it), keepalive PINGs that close a peer
/// that stopped answering, GOAWAY at `--grpc-max-connection-age` (the hard close after its
/// grace is the accept loop's deadline), and as long for the HTTP/2 handshake as a new
/// connection has for its first bytes.
pub(super) fn http2(args: &ServeArgs) -> Http2 {
    Http2 {
        max_concurrent_streams: args.grpc_max_concurrent_streams,
        keepalive_interval: args.grpc_keepalive_interval,
        keepalive_timeout: args.grpc_keepalive_timeout,
        max_age: args.grpc_max_connection_age,
        handshake_timeout: accept::PREPARE_TIMEOUT,
    }
}

/// Serves `port` on the budgeted gRPC listener, plaintext or TLS, until `stop`; then waits
/// for the open connections to finish (the caller bounds that by the drain timeout).
pub(super) async fn grpc(
    port: Arc<Port>,
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
            serve_connections(port, incoming, stop).await
        }
        None => {
            let incoming = accept::incoming(listener, hard_close_after, accept::first_bytes);
            serve_connections(port, incoming, stop).await
        }
    }
}

/// Serves each accepted connection on a task of its own until `stop`; then closes the
/// listener and waits until every connection has ended (each sends GOAWAY on `stop` and ends
/// when its calls have been answered).
async fn serve_connections<C>(
    port: Arc<Port>,
    incoming: impl Stream<Item = std::io::Result<Conn<C>>>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()>
where
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Every connection task holds a sender: `recv` returns `None` once all have ended.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    accept_until_stopped(incoming, stop.clone(), "gRPC", |conn| {
        let port = port.clone();
        let stop = stop.clone();
        let open = open.clone();
        tokio::spawn(async move {
            port.serve(conn, stopped(stop)).await;
            drop(open);
        });
    })
    .await?;
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Hands every connection `incoming` yields to `serve` until `stop`, then drops `incoming`,
/// which closes the listener, so new clients are refused instead of waiting in the backlog
/// of a port that will not answer. An accept loop that ends first is an error.
async fn accept_until_stopped<C>(
    incoming: impl Stream<Item = std::io::Result<Conn<C>>>,
    stop: watch::Receiver<bool>,
    listener: &str,
    mut serve: impl FnMut(Conn<C>),
) -> anyhow::Result<()> {
    let mut incoming = std::pin::pin!(incoming);
    let mut stop = std::pin::pin!(stopped(stop));
    loop {
        let conn = tokio::select! {
            () = &mut stop => return Ok(()),
            c = incoming.next() => c,
        };
        let Some(Ok(conn)) = conn else {
            anyhow::bail!("the {listener} accept loop ended");
        };
        serve(conn);
    }
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
    let incoming = accept::incoming(listener, None, accept::first_bytes);
    accept_until_stopped(incoming, stop, "admin", |conn| {
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
    })
    .await?;
    graceful.shutdown().await;
    Ok(())
}
