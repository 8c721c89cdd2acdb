//! Accepting connections within a budget (docs/service.md §2, "Connections are bounded").
//!
//! Each listener has its own budget: a semaphore whose permit is taken **before** `accept`
//! and held for the life of the connection (TLS handshake included). When the budget is
//! full the loop stops accepting, so new connections wait in the kernel's backlog, cost
//! this process no file descriptor, and are accepted as soon as one closes. The gRPC budget
//! is also cut to what the file-descriptor limit leaves after the admin budget and a reserve
//! for the store, the configuration and the watchers: a flood of gRPC connections can then
//! never take the descriptor `/healthz` or a Redis reconnect needs.
//!
//! When `accept` still fails for want of descriptors (EMFILE, ENFILE: the limit was lowered
//! at run time, or something else holds them) or kernel memory, the loop backs off (50 ms
//! doubling to 1 s), logs and counts; connections already open are served as before.
//!
//! A new connection has [`PREPARE_TIMEOUT`] to say something (plaintext) or to finish its
//! TLS handshake; one that stays silent is closed and gives its slot back.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Sleep;

use crate::metrics::ListenerMetrics;

/// How long a new connection may stay silent, or take over its TLS handshake.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(10);

/// Descriptors kept out of the gRPC budget besides the admin budget: standard streams, the
/// runtime's epoll and wakers, the listeners, the file watchers, configuration and
/// certificate reads, and the counter store's connections (a Redis Cluster client holds
/// one per node).
pub const FD_RESERVE: u64 = 64;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The gRPC budget: `--max-connections`, cut to what `max_fds` (the soft `ulimit -n`, `None`
/// for unlimited) leaves after the admin budget and [`FD_RESERVE`], and at least 1.
pub fn grpc_budget(max_connections: u64, admin_budget: u64, max_fds: Option<u64>) -> u64 {
    let room = max_fds.map_or(u64::MAX, |n| {
        n.saturating_sub(admin_budget.saturating_add(FD_RESERVE))
    });
    max_connections.min(room).max(1)
}

/// One listener, its budget and its metrics.
#[derive(Debug)]
pub struct Budgeted {
    /// The bound listener.
    pub listener: TcpListener,
    /// `grpc` or `admin`, for logs and metrics.
    pub name: &'static str,
    /// Connections open at once.
    pub budget: usize,
    /// Its metrics.
    pub metrics: ListenerMetrics,
}

/// A connection slot: gives its permit back and lowers the open-connections gauge when the
/// connection is dropped, whichever way it ends.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: prometheus::IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: prometheus::IntGauge) -> Self {
        open.inc();
        Slot {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// An accepted connection: the transport, its slot, and an optional hard deadline after
/// which every read and write fails, so the server closes it (`--grpc-max-connection-age`
/// plus its grace: the GOAWAY at the age itself is the server's).
pub struct Conn<IO> {
    io: IO,
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl<IO> Conn<IO> {
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        // Polling registers the waker: the server's pending read wakes at the deadline.
        let reached = self
            .deadline
            .as_mut()
            .is_some_and(|d| d.as_mut().poll(cx).is_ready());
        if reached {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "maximum connection age and its grace period reached",
            ));
        }
        Ok(())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_deadline(cx)?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Waits until a plaintext connection has something to read (or has closed), within the
/// caller's deadline: a connection that never speaks must not keep a slot.
pub async fn first_bytes(tcp: TcpStream, _peer: SocketAddr) -> Option<TcpStream> {
    // `peek`, not `readable`: readiness may be reported before any byte arrived, and the
    // byte stays in the socket for the server to read.
    tcp.peek(&mut [0u8; 1]).await.ok()?;
    Some(tcp)
}

/// Accepts connections on `l` within its budget, prepares each one concurrently (`prepare`
/// waits for first bytes or completes a TLS handshake; `None` drops it) under
/// [`PREPARE_TIMEOUT`], and yields the prepared ones. A connection is closed for good
/// `hard_close_after` after it was accepted, when given.
///
/// The accept loop runs on its own task and ends, closing the listener, when the stream is
/// dropped (the server stopped accepting at shutdown).
pub fn incoming<C, P, F>(
    l: Budgeted,
    hard_close_after: Option<Duration>,
    prepare: P,
) -> impl Stream<Item = io::Result<Conn<C>>> + Send + 'static
where
    C: Send + 'static,
    P: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = Option<C>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Conn<C>>(64);
    tokio::spawn(accept_loop(l, hard_close_after, prepare, tx));
    futures_util::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
}

async fn accept_loop<C, P, F>(
    l: Budgeted,
    hard_close_after: Option<Duration>,
    prepare: P,
    tx: mpsc::Sender<Conn<C>>,
) where
    C: Send + 'static,
    P: Fn(TcpStream, SocketAddr) -> F + Send + 'static,
    F: Future<Output = Option<C>> + Send + 'static,
{
    let Budgeted {
        listener,
        name,
        budget,
        metrics,
    } = l;
    let slots = Arc::new(Semaphore::new(budget));
    let mut backoff = MIN_BACKOFF;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics.waits.inc();
                tracing::debug!(
                    listener = name,
                    budget,
                    "connection budget full; accepting again when a connection closes"
                );
                tokio::select! {
                    p = slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        // Never closed; if it were, no connection could be accepted again.
                        Err(_) => return,
                    },
                    () = tx.closed() => return,
                }
            }
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tx.closed() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => {
                backoff = MIN_BACKOFF;
                c
            }
            Err(e) if out_of_resources(&e) => {
                metrics.fd_limit.inc();
                tracing::warn!(
                    listener = name,
                    error = %e,
                    retry_in = ?backoff,
                    "cannot accept: out of file descriptors or memory; open connections are still served"
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => {
                // A peer that reset before it was accepted, and the like: nothing to wait for.
                metrics.other.inc();
                tracing::debug!(listener = name, error = %e, "accept failed");
                continue;
            }
        };
        let slot = Slot::new(permit, metrics.open.clone());
        let _ = tcp.set_nodelay(true);
        let prepared = prepare(tcp, peer);
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(PREPARE_TIMEOUT, prepared).await {
                Ok(Some(io)) => {
                    let conn = Conn {
                        io,
                        deadline: hard_close_after.map(|d| Box::pin(tokio::time::sleep(d))),
                        _slot: slot,
                    };
                    let _ = tx.send(conn).await;
                }
                Ok(None) => {}
                Err(_) => {
                    tracing::debug!(listener = name, %peer, "closed a connection that stayed silent or did not finish its TLS handshake")
                }
            }
        });
    }
}

/// Errors that mean "no resources for a new connection now": retrying at once would spin.
fn out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|errno| errno.raw_os_error() == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_budget_leaves_room_for_the_admin_side_and_the_reserve() {
        assert_eq!(grpc_budget(10_000, 64, None), 10_000);
        assert_eq!(grpc_budget(10_000, 64, Some(1_048_576)), 10_000);
        assert_eq!(grpc_budget(10_000, 64, Some(1024)), 1024 - 64 - FD_RESERVE);
        assert_eq!(grpc_budget(100, 64, Some(1024)), 100);
        assert_eq!(grpc_budget(10_000, 64, Some(50)), 1, "never 0");
    }

    #[test]
    fn out_of_descriptors_is_told_apart_from_a_reset_peer() {
        use rustix::io::Errno;
        let os = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert!(out_of_resources(&os(Errno::MFILE)));
        assert!(out_of_resources(&os(Errno::NFILE)));
        assert!(!out_of_resources(&os(Errno::CONNABORTED)));
        assert!(!out_of_resources(&io::Error::other("x")));
    }
}
