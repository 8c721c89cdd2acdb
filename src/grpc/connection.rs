//! The gRPC port's HTTP/2 connections, on our own HTTP/2 framing (`http2/`, docs/service.md
//! §2, "The serving loop").
//!
//! Each connection is one task. A turn reads what the socket has, lets the protocol state
//! (`http2::session`) turn it into requests, decides the `ShouldRateLimit` ones as futures
//! polled inside this task (the memory store answers in the same turn; a Redis call joins the
//! store's next batch), and writes every answer the turn completed with one write. No task is
//! spawned per decision, and no lock is shared with one. The port's other services (health,
//! reflection, UNIMPLEMENTED for anything else) are rare and may stream, so they keep tonic's
//! router, on a task per call (`routes.rs`).
//!
//! The bounds of docs/service.md §2 are kept here: the stream bound announced in SETTINGS
//! (counted until a stream's decision has finished), keepalive PINGs that close a peer that
//! stopped answering, GOAWAY at the maximum connection age and on stop, and the handshake
//! bound. The hard close after the age's grace is the accept loop's deadline.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use prost::bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::codegen::http::HeaderMap;
use tonic::service::Routes;

use super::RateLimitGrpc;
use super::http2::frame::{self, Reason};
use super::http2::hpack;
use super::http2::session::{Event, IdMap, Limits, RequestHead, Session};
use super::routes::{Out, Outbox, Routed};
use super::server::{self, Gather, SHOULD_RATE_LIMIT};

/// Rounds of "read what arrived, poll what is ready, write" in one wake-up before the task
/// yields to the others on its worker.
const ROUNDS: usize = 8;

/// The read buffer: room for several whole frames of the 16 KiB we announce.
const READ_BUFFER: usize = 64 << 10;

/// Past this much unwritten output the connection stops reading: a peer that does not read
/// its answers (or floods PINGs it never collects) is not buffered for without bound.
const WRITE_HIGH_WATER: usize = 1 << 20;

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
    fn limits(&self) -> Limits {
        Limits {
            max_concurrent_streams: self.max_concurrent_streams,
            // 1 MiB windows, as hyper had them, so a burst of calls is not held back by
            // WINDOW_UPDATE round trips; 16 KiB header lists.
            window: 1 << 20,
            max_header_list: 16 << 10,
            fast_path: SHOULD_RATE_LIMIT,
            headers_on_fast_path: crate::telemetry::enabled(),
        }
    }
}

/// What the gRPC port serves, shared by its connections.
pub struct Port {
    rls: RateLimitGrpc,
    routes: Routes,
    http2: Http2,
    /// The head and trailers of every admitted or limited answer, encoded once.
    ok_head: Vec<u8>,
    ok_trailers: Vec<u8>,
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
        let mut ok_head = Vec::new();
        hpack::encode_status(200, &mut ok_head);
        hpack::encode_field(b"content-type", b"application/grpc", &mut ok_head);
        let mut ok_trailers = Vec::new();
        hpack::encode_field(b"grpc-status", b"0", &mut ok_trailers);
        Port {
            rls,
            routes: routes.prepare(),
            http2,
            ok_head,
            ok_trailers,
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
        let (outbox, mut routed_out) = mpsc::unbounded_channel();
        let mut conn = Conn {
            port: self,
            io,
            session: Session::new(self.http2.limits()),
            input: vec![0; READ_BUFFER],
            start: 0,
            end: 0,
            events: Vec::new(),
            streams: IdMap::default(),
            outbox,
            reading: true,
            writing: true,
            block: Vec::new(),
        };
        let mut calls = FuturesUnordered::new();
        let mut starts = Vec::new();
        let mut keepalive = Keepalive::new(&self.http2);
        let mut handshake = Some(Box::pin(tokio::time::sleep(self.http2.handshake_timeout)));
        let mut age = self
            .http2
            .max_age
            .map(|age| Box::pin(tokio::time::sleep(age)));
        let mut stop = pin!(stop);
        let mut stopping = false;

        poll_fn(|cx| {
            if !stopping && stop.as_mut().poll(cx).is_ready() {
                conn.session.go_away();
                stopping = true;
            }
            if let Some(at) = &mut age
                && at.as_mut().poll(cx).is_ready()
            {
                tracing::debug!("gRPC connection: maximum age reached, sending GOAWAY");
                conn.session.go_away();
                age = None;
            }
            if let Some(at) = &mut handshake {
                if conn.session.is_ready() {
                    handshake = None;
                } else if at.as_mut().poll(cx).is_ready() {
                    tracing::debug!("gRPC connection: closed, the HTTP/2 handshake took too long");
                    conn.close();
                    handshake = None;
                }
            }
            if conn.reading && keepalive.poll_dead(cx, &mut conn.session).is_ready() {
                // The peer is gone: stop serving it, finish the decisions it started (what
                // they count stays whole), then close.
                tracing::debug!("gRPC connection: closed, a keepalive PING went unanswered");
                conn.close();
            }
            for _ in 0..ROUNDS {
                let mut progress = conn.read(cx, &mut keepalive, &mut starts);
                for (stream, message, span) in starts.drain(..) {
                    calls.push(decide(&self.rls, stream, message, span));
                }
                while let Poll::Ready(Some((stream, answer))) = calls.poll_next_unpin(cx) {
                    progress = true;
                    conn.answer(stream, answer);
                }
                while let Poll::Ready(Some((stream, out))) = routed_out.poll_recv(cx) {
                    progress = true;
                    conn.routed(stream, out);
                }
                conn.write(cx);
                if conn.is_done() && calls.is_empty() {
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
        conn.close();
        let _ = poll_fn(|cx| Pin::new(&mut conn.io).poll_shutdown(cx)).await;
    }
}

/// What the connection keeps of each stream besides its protocol state.
#[derive(Debug)]
enum Local {
    /// A decision's message being read, and the request's headers when tracing reads them.
    Reading(Gather, Option<HeaderMap>),
    /// Its decision is running.
    Deciding,
    Routed(Routed),
}

/// A decision in flight: its stream and its answer.
type Answer = (u32, Result<Bytes, Status>);

/// One connection's socket, protocol state and streams.
struct Conn<'p, IO> {
    port: &'p Port,
    io: IO,
    session: Session,
    input: Vec<u8>,
    /// The unread bytes are `input[start..end]`.
    start: usize,
    end: usize,
    events: Vec<Event>,
    streams: IdMap<Local>,
    outbox: Outbox,
    /// Frames are still read (no connection error, no EOF, no dead keepalive).
    reading: bool,
    /// Answers can still be written.
    writing: bool,
    /// Reused for the header blocks of refusals and routed answers.
    block: Vec<u8>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin> Conn<'_, IO> {
    /// Stops reading; the routed calls end (nobody will read their answers); decisions in
    /// flight finish.
    fn close(&mut self) {
        self.reading = false;
        for local in self.streams.values() {
            if let Local::Routed(routed) = local {
                routed.abort();
            }
        }
    }

    /// Nothing more will be read or answered: the caller ends once the decisions finish.
    fn is_done(&self) -> bool {
        let drained = self.session.is_closing() && self.session.streams() == 0;
        let quiet = !self.writing || self.session.output_is_empty();
        (!self.reading || drained) && quiet
    }

    /// Reads and handles what the socket has, and puts the decisions to start in `starts`;
    /// true if anything came.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        keepalive: &mut Keepalive,
        starts: &mut Vec<Start>,
    ) -> bool {
        let mut progress = false;
        while self.reading && self.session.output().len() < WRITE_HIGH_WATER {
            if self.input.len() - self.end < frame::HEAD_LEN + frame::DEFAULT_MAX_FRAME {
                // Room for a whole frame past what is unread.
                self.input.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let mut buf = ReadBuf::new(&mut self.input[self.end..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "gRPC connection: reading failed");
                    self.close();
                    self.writing = false;
                }
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    progress = true;
                    if n == 0 {
                        // The peer closed its side: answer what it asked, then close.
                        self.close();
                        break;
                    }
                    self.end += n;
                    let (used, result) = self
                        .session
                        .receive(&self.input[self.start..self.end], &mut self.events);
                    self.start += used;
                    if self.start == self.end {
                        self.start = 0;
                        self.end = 0;
                    }
                    let mut events = std::mem::take(&mut self.events);
                    for event in events.drain(..) {
                        self.event(event, keepalive, starts);
                    }
                    self.events = events;
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "gRPC connection failed");
                        self.close();
                    }
                }
            }
        }
        progress
    }

    fn event(&mut self, event: Event, keepalive: &mut Keepalive, starts: &mut Vec<Start>) {
        match event {
            Event::Open { stream, head, end } => self.open(stream, head, end),
            Event::Data { stream, data, end } => self.data(stream, data, end, starts),
            Event::Reset { stream } => match self.streams.remove(&stream) {
                Some(Local::Routed(routed)) => {
                    routed.abort();
                    self.session.release(stream);
                }
                // Its decision goes on (what it counts stays whole); the answer is dropped.
                Some(Local::Deciding) => {
                    self.streams.insert(stream, Local::Deciding);
                }
                Some(Local::Reading(..)) | None => self.session.release(stream),
            },
            Event::Pong(payload) => keepalive.pong(payload),
        }
    }

    fn open(&mut self, stream: u32, head: RequestHead, end: bool) {
        if head.path != SHOULD_RATE_LIMIT {
            let routed = Routed::start(
                self.port.routes.clone(),
                stream,
                head,
                end,
                self.outbox.clone(),
            );
            self.streams.insert(stream, Local::Routed(routed));
            return;
        }
        if let Err(status) = server::check_encoding(head.encoding.as_deref()) {
            return self.refuse(stream, status);
        }
        if end {
            return self.refuse(stream, Gather::default().ended());
        }
        self.streams
            .insert(stream, Local::Reading(Gather::default(), head.headers));
    }

    fn data(&mut self, stream: u32, data: Bytes, end: bool, starts: &mut Vec<Start>) {
        match self.streams.get_mut(&stream) {
            Some(Local::Reading(gather, headers)) => match gather.push(data) {
                Ok(Some(message)) => {
                    // One span per decision when OTLP export is on (docs/observability.md §7).
                    let span = headers.take().and_then(|h| {
                        crate::telemetry::start(&tonic::metadata::MetadataMap::from_headers(h))
                    });
                    self.streams.insert(stream, Local::Deciding);
                    starts.push((stream, message, span));
                }
                Ok(None) if end => {
                    let status = gather.ended();
                    self.refuse(stream, status);
                }
                Ok(None) => {}
                Err(status) => self.refuse(stream, status),
            },
            Some(Local::Routed(routed)) => {
                if routed.push(data, end).is_err() {
                    routed.abort();
                    self.streams.remove(&stream);
                    self.session.cancel(stream, Reason::ENHANCE_YOUR_CALM);
                    self.session.release(stream);
                }
            }
            // Bytes after the message, or for a stream already answered: not read.
            Some(Local::Deciding) | None => {}
        }
    }

    /// Answers `stream` with `status` alone and forgets it.
    fn refuse(&mut self, stream: u32, status: Status) {
        self.streams.remove(&stream);
        self.block.clear();
        status_block(&status, &mut self.block);
        self.session.send_head(stream, &self.block, true);
        self.session.release(stream);
    }

    /// A decision's answer: the message and `grpc-status: 0`, or the refusal's status alone
    /// (trailers-only, as gRPC has it).
    fn answer(&mut self, stream: u32, answer: Result<Bytes, Status>) {
        self.streams.remove(&stream);
        match answer {
            Ok(message) => {
                let port = self.port;
                self.session.send_head(stream, &port.ok_head, false);
                self.session.send_data(stream, message, false);
                self.session.send_trailers(stream, &port.ok_trailers);
                self.session.release(stream);
            }
            Err(status) => self.refuse(stream, status),
        }
    }

    /// A piece of a routed call's response.
    fn routed(&mut self, stream: u32, out: Out) {
        let finished = match out {
            Out::Head(head, end) => {
                self.block.clear();
                hpack::encode_status(head.status.as_u16(), &mut self.block);
                fields(&head.headers, &mut self.block);
                self.session.send_head(stream, &self.block, end);
                end
            }
            Out::Data(data) => {
                self.session.send_data(stream, data, false);
                false
            }
            Out::Trailers(trailers) => {
                self.block.clear();
                fields(&trailers, &mut self.block);
                self.session.send_trailers(stream, &self.block);
                true
            }
            Out::End => {
                self.session.send_data(stream, Bytes::new(), true);
                true
            }
            Out::Failed => {
                self.session.cancel(stream, Reason::INTERNAL_ERROR);
                true
            }
        };
        if finished && self.streams.remove(&stream).is_some() {
            self.session.release(stream);
        }
    }

    /// Writes what the session has queued, as far as the socket takes it.
    fn write(&mut self, cx: &mut Context<'_>) {
        if !self.writing {
            self.session.output().clear();
            return;
        }
        let mut wrote = false;
        loop {
            let out = self.session.output();
            if out.is_empty() {
                break;
            }
            match Pin::new(&mut self.io).poll_write(cx, out) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    tracing::debug!("gRPC connection: writing failed, the peer is gone");
                    self.writing = false;
                    self.close();
                    self.session.output().clear();
                    return;
                }
                Poll::Ready(Ok(n)) => {
                    out.drain(..n);
                    wrote = true;
                }
                Poll::Pending => break,
            }
        }
        if wrote {
            // TLS holds records until flushed; a plain socket flushes at once.
            if let Poll::Ready(Err(_)) = Pin::new(&mut self.io).poll_flush(cx) {
                self.writing = false;
                self.close();
            }
        }
    }
}

/// A decision to start: its stream, its message, its trace span.
type Start = (u32, Bytes, Option<crate::telemetry::DecisionSpan>);

async fn decide(
    grpc: &RateLimitGrpc,
    stream: u32,
    message: Bytes,
    span: Option<crate::telemetry::DecisionSpan>,
) -> Answer {
    (stream, server::decide(grpc, message, span).await)
}

/// A status alone as a response head: `:status 200` and tonic's gRPC fields for it.
fn status_block(status: &Status, block: &mut Vec<u8>) {
    hpack::encode_status(200, block);
    let (head, ()) = status.clone().into_http::<()>().into_parts();
    fields(&head.headers, block);
}

fn fields(headers: &HeaderMap, block: &mut Vec<u8>) {
    for (name, value) in headers {
        hpack::encode_field(name.as_str().as_bytes(), value.as_bytes(), block);
    }
}

/// The keepalive PINGs: one every interval, none while one is unanswered.
struct Keepalive {
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    interval: Duration,
    timeout: Duration,
}

/// Our PINGs' payload; a PING ACK with another is the peer's own business.
const PING: [u8; 8] = *b"ironclad";

impl Keepalive {
    fn new(http2: &Http2) -> Self {
        Keepalive {
            timer: Box::pin(tokio::time::sleep(http2.keepalive_interval)),
            waiting: false,
            interval: http2.keepalive_interval,
            timeout: http2.keepalive_timeout,
        }
    }

    fn pong(&mut self, payload: [u8; 8]) {
        if self.waiting && payload == PING {
            self.waiting = false;
            self.timer.as_mut().reset(Instant::now() + self.interval);
        }
    }

    /// Ready when the peer let a PING go unanswered past the timeout.
    fn poll_dead(&mut self, cx: &mut Context<'_>, session: &mut Session) -> Poll<()> {
        ready!(self.timer.as_mut().poll(cx));
        if self.waiting {
            return Poll::Ready(());
        }
        session.ping(PING);
        self.waiting = true;
        self.timer.as_mut().reset(Instant::now() + self.timeout);
        // Polled again so that the timer's new deadline wakes this task.
        let _ = self.timer.as_mut().poll(cx);
        Poll::Pending
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
    use tonic::codegen::http;

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
