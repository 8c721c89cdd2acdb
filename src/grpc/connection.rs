//! The gRPC port's HTTP/2 connections, served on the `h2` crate (docs/service.md §2, "The
//! serving loop").
//!
//! Why not tonic's server (hyper): hyper runs every stream as a task of its own and wakes the
//! connection's task for each response, so a decision paid a spawn and several wake-ups on
//! top of its work, which a profile put among the largest costs per call. Here a
//! `ShouldRateLimit` stream is a future polled inside its connection's task: the requests
//! read in one wake-up are decided (memory store) or joined to the store's next call in that
//! same wake-up, and the answers one store reply completes are written together, with one
//! flush. The port's other services (health, reflection, and UNIMPLEMENTED for anything else)
//! are rare and may stream, so they keep tonic's router, on a task per call (`routes.rs`).
//!
//! The HTTP/2 settings are hyper's defaults written out, and the bounds of docs/service.md §2
//! are kept here: the stream bound announced in SETTINGS (h2 refuses a stream past it),
//! keepalive PINGs that close a peer that stopped answering, GOAWAY at the maximum connection
//! age and on stop. The hard close after the age's grace is the accept loop's deadline.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::{Ping, PingPong, RecvStream};
use prost::bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::codegen::http::{self, HeaderMap, HeaderName, HeaderValue};
use tonic::service::Routes;

use super::RateLimitGrpc;
use super::routes::{self, RecvBody};
use super::server::{SHOULD_RATE_LIMIT, should_rate_limit};

/// Rounds of "accept what arrived, poll what is ready" in one wake-up before the task yields
/// to the others on its worker.
const ROUNDS: usize = 8;

/// The HTTP/2 bounds of each connection.
#[derive(Debug, Clone)]
pub struct Http2 {
    /// Streams open at once, announced in SETTINGS.
    pub max_concurrent_streams: u32,
    /// How often a PING checks that the peer still answers.
    pub keepalive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// GOAWAY once a connection is this old.
    pub max_age: Option<Duration>,
    /// How long the client preface and SETTINGS exchange may take.
    pub handshake_timeout: Duration,
}

impl Http2 {
    fn builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        // hyper's defaults, which tonic's server used: 1 MiB windows so a burst of calls is
        // not held back by WINDOW_UPDATE round trips, 16 KiB frames and header lists, a
        // 400 KiB send buffer per stream, and at most 1024 streams reset for protocol errors.
        b.initial_window_size(1 << 20)
            .initial_connection_window_size(1 << 20)
            .max_frame_size(16 << 10)
            .max_header_list_size(16 << 10)
            .max_send_buffer_size(400 << 10)
            .max_local_error_reset_streams(Some(1024))
            .max_concurrent_streams(self.max_concurrent_streams);
        b
    }
}

/// What the gRPC port serves, shared by its connections.
pub struct Port {
    rls: RateLimitGrpc,
    routes: Routes,
    http2: Http2,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port").field("http2", &self.http2).finish()
    }
}

impl Port {
    /// `rls` answers `ShouldRateLimit`; `routes` every other path (tonic's router answers
    /// UNIMPLEMENTED for a path it does not know).
    pub fn new(rls: RateLimitGrpc, routes: Routes, http2: Http2) -> Self {
        Port {
            rls,
            routes: routes.prepare(),
            http2,
        }
    }

    /// Serves one connection until it closes: the peer closed it, it failed, a PING went
    /// unanswered, or it went away (GOAWAY at its age or once `stop` resolved) and its
    /// streams finished. A decision that has started is finished even when its stream or the
    /// connection is gone, so what it counted is never half done.
    pub async fn serve<IO>(&self, io: IO, stop: impl Future<Output = ()>)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = self.http2.builder().handshake::<_, Bytes>(io);
        let mut conn = match tokio::time::timeout(self.http2.handshake_timeout, handshake).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "gRPC connection: HTTP/2 handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("gRPC connection: closed, the HTTP/2 handshake took too long");
                return;
            }
        };
        let Some(pings) = conn.ping_pong() else {
            // Only `None` when taken before; this is the first and only take.
            return;
        };
        let mut keepalive = Keepalive::new(pings, &self.http2);
        let mut age = self
            .http2
            .max_age
            .map(|age| Box::pin(tokio::time::sleep(age)));
        let mut stop = pin!(stop);
        let mut stopping = false;
        let mut open = true;
        let mut calls = FuturesUnordered::new();

        poll_fn(|cx| {
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                conn.graceful_shutdown();
                stopping = true;
            }
            if let Some(at) = &mut age
                && at.as_mut().poll(cx).is_ready()
            {
                tracing::debug!("gRPC connection: maximum age reached, sending GOAWAY");
                conn.graceful_shutdown();
                age = None;
            }
            if open && keepalive.poll_dead(cx).is_ready() {
                // The peer is gone: stop serving it, finish the decisions it started (what
                // they count stays whole), then close.
                tracing::debug!("gRPC connection: closed, a keepalive PING went unanswered");
                open = false;
            }
            for _ in 0..ROUNDS {
                let mut progress = false;
                // Accepting also drives the connection: reads frames, writes what the calls
                // queued, flushes.
                while open {
                    match conn.poll_accept(cx) {
                        Poll::Ready(Some(Ok((request, respond)))) => {
                            progress = true;
                            if request.uri().path() == SHOULD_RATE_LIMIT {
                                calls.push(call(&self.rls, request, respond));
                            } else {
                                tokio::spawn(routes::serve(self.routes.clone(), request, respond));
                            }
                        }
                        Poll::Ready(Some(Err(e))) => {
                            tracing::debug!(error = %e, "gRPC connection failed");
                            open = false;
                        }
                        Poll::Ready(None) => open = false,
                        Poll::Pending => break,
                    }
                }
                while let Poll::Ready(Some(())) = calls.poll_next_unpin(cx) {
                    progress = true;
                }
                if !open && calls.is_empty() {
                    return Poll::Ready(());
                }
                if !progress {
                    return Poll::Pending;
                }
            }
            // Still busy: let the worker's other tasks run, and come back.
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await;
    }
}

/// One `ShouldRateLimit` stream: decide, then answer with the message and `grpc-status: 0`,
/// or with the refusal's status alone (a trailers-only response, as gRPC has it).
async fn call(
    grpc: &RateLimitGrpc,
    request: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let (head, body) = request.into_parts();
    let answer = should_rate_limit(grpc, head.headers, RecvBody::new(body)).await;
    let sent = match answer {
        Ok(frame) => send_message(respond, frame),
        Err(status) => send_status(respond, status),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "a ShouldRateLimit answer was not sent: the stream is gone");
    }
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

fn send_message(mut respond: SendResponse<Bytes>, frame: Bytes) -> Result<(), h2::Error> {
    let mut head = http::Response::new(());
    head.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let mut stream = respond.send_response(head, false)?;
    stream.send_data(frame, false)?;
    let mut trailers = HeaderMap::with_capacity(1);
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    stream.send_trailers(trailers)
}

/// A status alone: HEADERS with `grpc-status` and `grpc-message`, ending the stream.
fn send_status(mut respond: SendResponse<Bytes>, status: Status) -> Result<(), h2::Error> {
    let (head, ()) = status.into_http::<()>().into_parts();
    respond
        .send_response(http::Response::from_parts(head, ()), true)
        .map(drop)
}

/// The keepalive PINGs: one every interval, none while one is unanswered.
struct Keepalive {
    pings: PingPong,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    interval: Duration,
    timeout: Duration,
}

impl Keepalive {
    fn new(pings: PingPong, http2: &Http2) -> Self {
        Keepalive {
            pings,
            timer: Box::pin(tokio::time::sleep(http2.keepalive_interval)),
            waiting: false,
            interval: http2.keepalive_interval,
            timeout: http2.keepalive_timeout,
        }
    }

    /// Ready when the peer let a PING go unanswered past the timeout (or the connection
    /// can no longer send one).
    fn poll_dead(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.waiting {
                match self.pings.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.waiting = false;
                        self.timer.as_mut().reset(Instant::now() + self.interval);
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Pending => {}
                }
            }
            ready!(self.timer.as_mut().poll(cx));
            if self.waiting {
                return Poll::Ready(());
            }
            if self.pings.send_ping(Ping::opaque()).is_err() {
                return Poll::Ready(());
            }
            self.waiting = true;
            self.timer.as_mut().reset(Instant::now() + self.timeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use h2::client::SendRequest;
    use prost::Message;
    use prost::bytes::{BufMut, BytesMut};
    use tokio::task::JoinHandle;
    use tonic::Code;

    use tokio::sync::watch;

    use super::*;
    use crate::proto::{RateLimitResponse, rate_limit_response};

    const UNKNOWN_METHOD: &str = "/envoy.service.ratelimit.v3.RateLimitService/Other";
    const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

    fn port() -> Arc<Port> {
        let (grpc, _metrics) = super::super::tests::service();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let http2 = Http2 {
            max_concurrent_streams: 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            max_age: None,
            handshake_timeout: Duration::from_secs(10),
        };
        Arc::new(Port::new(grpc, Routes::new(health), http2))
    }

    /// A client connection to `port` over an in-process pipe; the handle ends when the
    /// server side of the connection has ended.
    async fn connect(
        port: Arc<Port>,
        stop: watch::Receiver<bool>,
    ) -> (SendRequest<Bytes>, JoinHandle<()>) {
        connect_with_window(port, stop, 2 << 20).await
    }

    /// As [`connect`], with the client's stream window set to `window` bytes.
    async fn connect_with_window(
        port: Arc<Port>,
        stop: watch::Receiver<bool>,
        window: u32,
    ) -> (SendRequest<Bytes>, JoinHandle<()>) {
        let (server_io, client_io) = tokio::io::duplex(64 << 10);
        let served = tokio::spawn(async move {
            let mut stop = stop;
            port.serve(server_io, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        });
        // hyper's client windows, as tonic's channel has them: with h2's default 64 KiB window
        // the client would take 200 answers it has not read yet for a flood of small DATA
        // frames and go away (h2's data-frame budget is half its connection window).
        let (client, conn) = h2::client::Builder::new()
            .initial_window_size(window)
            .initial_connection_window_size(5 << 20)
            .handshake(client_io)
            .await
            .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (client, served)
    }

    fn framed(flag: u8, message: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(flag);
        b.put_u32(u32::try_from(message.len()).unwrap());
        b.put_slice(message);
        b.freeze()
    }

    /// What the client got back: the head, the body's bytes, the trailers.
    struct Answer {
        head: http::response::Parts,
        body: Bytes,
        trailers: Option<HeaderMap>,
    }

    impl Answer {
        /// `grpc-status` from the trailers, or from the head of a trailers-only answer.
        fn code(&self) -> Code {
            let status = self.trailers.as_ref().unwrap_or(&self.head.headers)["grpc-status"]
                .to_str()
                .unwrap();
            Code::from_i32(status.parse().unwrap())
        }
    }

    /// A gRPC request's head for `path`.
    fn grpc_request(path: &str) -> http::request::Builder {
        http::Request::post(format!("http://rls{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    }

    /// The answer is one uncompressed frame holding an OK decision.
    fn assert_admitted(answer: &Answer) {
        assert_eq!(answer.code(), Code::Ok);
        assert_eq!(answer.body[0], 0, "an uncompressed frame");
        let response = RateLimitResponse::decode(&answer.body[5..]).expect("a whole response");
        assert_eq!(response.overall_code, rate_limit_response::Code::Ok as i32);
    }

    /// Health, asked about the server as a whole (an empty request), answers SERVING.
    async fn assert_serving(client: &SendRequest<Bytes>) {
        let answer = call(client, HEALTH_CHECK, framed(0, b"")).await;
        assert_eq!(answer.code(), Code::Ok);
        let status = tonic_health::pb::HealthCheckResponse::decode(&answer.body[5..]).unwrap();
        assert_eq!(
            status.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    async fn call(client: &SendRequest<Bytes>, path: &str, body: Bytes) -> Answer {
        let request = grpc_request(path).body(()).unwrap();
        let mut client = client.clone().ready().await.expect("ready");
        let (response, mut send) = client.send_request(request, false).expect("send");
        send.send_data(body, true).expect("send the message");
        let (head, mut recv) = response.await.expect("response").into_parts();
        let mut body = BytesMut::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("data");
            let _ = recv.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.expect("trailers");
        Answer {
            head,
            body: body.freeze(),
            trailers,
        }
    }

    fn should_rate_limit_message() -> Bytes {
        let request = super::super::tests::request("kcse", &[("endpoint", "e"), ("path", "/a/b")]);
        framed(0, &request.encode_to_vec())
    }

    #[tokio::test]
    async fn concurrent_calls_on_one_connection_each_get_the_message_then_the_ok_trailer() {
        let (_stop, stop_rx) = watch::channel(false);
        let (client, _served) = connect(port(), stop_rx).await;
        let calls = (0..200).map(|_| call(&client, SHOULD_RATE_LIMIT, should_rate_limit_message()));
        for answer in futures_util::future::join_all(calls).await {
            assert_eq!(answer.head.status, http::StatusCode::OK);
            assert_eq!(answer.head.headers["content-type"], "application/grpc");
            assert_admitted(&answer);
        }
    }

    #[tokio::test]
    async fn a_refused_call_is_answered_with_its_status_alone() {
        let (_stop, stop_rx) = watch::channel(false);
        let (client, _served) = connect(port(), stop_rx).await;
        for (what, body, code) in [
            (
                "bad protobuf",
                framed(0, &[0x08, 0x01]),
                Code::InvalidArgument,
            ),
            ("compressed", framed(1, b"x"), Code::Unimplemented),
            ("no message", Bytes::new(), Code::Internal),
        ] {
            let answer = call(&client, SHOULD_RATE_LIMIT, body).await;
            assert_eq!(answer.code(), code, "{what}");
            assert!(answer.trailers.is_none(), "{what}: trailers-only");
            assert!(answer.body.is_empty(), "{what}: no message");
        }
        // The connection still serves.
        let answer = call(&client, SHOULD_RATE_LIMIT, should_rate_limit_message()).await;
        assert_eq!(answer.code(), Code::Ok);
    }

    #[tokio::test]
    async fn other_paths_are_served_by_the_router() {
        let (_stop, stop_rx) = watch::channel(false);
        let (client, _served) = connect(port(), stop_rx).await;
        let answer = call(&client, UNKNOWN_METHOD, should_rate_limit_message()).await;
        assert_eq!(answer.code(), Code::Unimplemented);
        assert_serving(&client).await;
    }

    /// A client that grants a few bytes at a time still gets whole answers on both paths:
    /// the decision's message and a routed service's, each split over many DATA frames as
    /// its window opens.
    #[tokio::test]
    async fn answers_larger_than_the_clients_window_arrive_whole() {
        let (_stop, stop_rx) = watch::channel(false);
        let (client, _served) = connect_with_window(port(), stop_rx, 3).await;
        assert_admitted(&call(&client, SHOULD_RATE_LIMIT, should_rate_limit_message()).await);
        assert_serving(&client).await;
    }

    /// Headers over the 16 KiB bound announced in SETTINGS are refused by the HTTP/2 layer
    /// before anything is decided, and the connection goes on serving.
    #[tokio::test]
    async fn a_header_block_over_the_bound_is_refused_and_the_connection_serves_on() {
        let (_stop, stop_rx) = watch::channel(false);
        let (client, _served) = connect(port(), stop_rx).await;
        let request = grpc_request(SHOULD_RATE_LIMIT)
            .header("x-padding", "p".repeat(20 << 10))
            .body(())
            .unwrap();
        let mut sender = client.clone().ready().await.expect("ready");
        let (response, mut send) = sender.send_request(request, false).expect("send");
        let _ = send.send_data(should_rate_limit_message(), true);
        match response.await {
            Ok(r) => assert_eq!(
                r.status(),
                http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            ),
            Err(e) => assert_eq!(e.reason(), Some(h2::Reason::REFUSED_STREAM), "{e}"),
        }
        let answer = call(&client, SHOULD_RATE_LIMIT, should_rate_limit_message()).await;
        assert_eq!(answer.code(), Code::Ok);
    }

    #[tokio::test]
    async fn stop_sends_goaway_and_the_connection_ends() {
        let (stop, stop_rx) = watch::channel(false);
        let (client, served) = connect(port(), stop_rx).await;
        let answer = call(&client, SHOULD_RATE_LIMIT, should_rate_limit_message()).await;
        assert_eq!(answer.code(), Code::Ok);
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("the connection ends after GOAWAY")
            .unwrap();
        // A new call finds the connection gone.
        let request = grpc_request(SHOULD_RATE_LIMIT).body(()).unwrap();
        let sent = match client.clone().ready().await {
            Ok(mut c) => c.send_request(request, true).map(drop),
            Err(e) => Err(e),
        };
        assert!(sent.is_err(), "no new call after GOAWAY");
    }
}
