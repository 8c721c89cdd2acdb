//! One server-side HTTP/2 connection's protocol state, without I/O (RFC 9113): bytes read
//! from the peer go in, [`Event`]s and bytes to write come out. The connection loop
//! (`connection.rs`) owns the socket, the timers and the calls.
//!
//! Why our own: the `h2` crate shares each stream between the connection and the handles the
//! application holds, behind a lock, builds an `http::Request` with a `HeaderMap` for every
//! stream and queues every frame through its prioritizer; a profile at saturation put about
//! half of the service's CPU per decision there (docs/capacity.md). A gRPC rate limit call is
//! small and unary, so here a request is decoded straight into what the decision needs, its
//! answer's header blocks are constants, and a turn's frames are written with one write.
//!
//! What it keeps of the protocol: the preface and SETTINGS exchange, HPACK with the dynamic
//! table the peer drives, CONTINUATION, padding, flow control both ways (a response waits
//! for the peer's window; a request's DATA is given back at once, since each stream buffers
//! at most one bounded message), RST_STREAM, PING, GOAWAY both ways, and the stream bound
//! announced in SETTINGS, counted until a stream's call has finished, not only until its
//! frames have.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use prost::bytes::Bytes;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};

use super::frame::{self, Head, Reason, flag, kind, setting};
use super::hpack;

/// What a connection announces and enforces.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Streams open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub(crate) max_concurrent_streams: u32,
    /// The window of each stream and of the connection.
    pub(crate) window: u32,
    /// The largest header list a request may carry (SETTINGS_MAX_HEADER_LIST_SIZE, counted as
    /// RFC 9113 §6.5.2 has it); a larger one is answered 431.
    pub(crate) max_header_list: usize,
    /// Requests on this path are decoded for the fast path: no `HeaderMap` is built unless
    /// `headers_on_fast_path`.
    pub(crate) fast_path: &'static str,
    /// Build the `HeaderMap` on the fast path too (tracing reads the caller's context from it).
    pub(crate) headers_on_fast_path: bool,
}

/// The compressed header block a peer may send for one request, CONTINUATIONs included.
/// Past it the connection ends (ENHANCE_YOUR_CALM): the block cannot be decoded in part, and
/// skipping it would leave the HPACK table out of step. Four times the header list bound
/// covers any honest encoding of a list at the bound.
const MAX_BLOCK_FACTOR: usize = 4;

/// The HPACK table the peer may use (SETTINGS_HEADER_TABLE_SIZE's default).
const TABLE_SIZE: usize = 4096;

/// A request's head, as the application gets it.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) path: String,
    /// `grpc-encoding`, always kept: the fast path refuses compressed messages from it.
    pub(crate) encoding: Option<Vec<u8>>,
    /// Every regular field; `None` on the fast path unless asked for.
    pub(crate) headers: Option<HeaderMap>,
    pub(crate) method: String,
    pub(crate) scheme: String,
    pub(crate) authority: Option<String>,
}

/// What a turn of [`Session::receive`] found.
#[derive(Debug)]
pub(crate) enum Event {
    /// A new stream's request head. `end` when the request has no body.
    Open {
        stream: u32,
        head: RequestHead,
        end: bool,
    },
    /// Request body bytes; `end` when the peer ended the stream with them (or with
    /// trailers, which are dropped: a gRPC request has none that matter here).
    Data { stream: u32, data: Bytes, end: bool },
    /// The stream was reset, by the peer or for its errors: it gets no answer.
    Reset { stream: u32 },
    /// The peer answered our PING with this payload.
    Pong([u8; 8]),
}

/// A connection error: GOAWAY with the reason has been queued; the connection reads no more.
#[derive(Debug)]
pub(crate) struct ConnError {
    pub(crate) reason: Reason,
    pub(crate) why: String,
}

impl std::fmt::Display for ConnError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.why)
    }
}

fn fail(reason: Reason, why: impl Into<String>) -> ConnError {
    ConnError {
        reason,
        why: why.into(),
    }
}

/// Stream ids are unique per connection and arrive in order: hashing them is wasted work.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread the odd ids over the table's buckets.
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0 << 8 | u64::from(*b);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n);
    }
}

/// A map keyed by stream id.
pub(crate) type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

type Streams = IdMap<Stream>;

/// What waits on a stream for the peer's window.
#[derive(Debug)]
enum Queued {
    Data(Bytes, bool),
    Trailers(Vec<u8>),
}

#[derive(Debug)]
struct Stream {
    /// The peer ended its side (END_STREAM), or the stream was reset.
    recv_closed: bool,
    /// We ended our side, or the stream was reset.
    send_closed: bool,
    /// The application has not finished with it (its call is running); the stream counts
    /// against the bound until then.
    held: bool,
    send_window: i64,
    /// Bytes the peer may still send on the stream.
    recv_window: i64,
    queued: VecDeque<Queued>,
}

enum State {
    /// Waiting for the 24 bytes of the client preface.
    Preface,
    /// The preface came; the first frame must be SETTINGS.
    Settings,
    Open,
    /// A connection error was sent; nothing more is read.
    Failed,
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Partial {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// One connection's protocol state.
pub(crate) struct Session {
    limits: Limits,
    state: State,
    decoder: hpack::Decoder,
    streams: Streams,
    /// The highest stream the peer opened.
    last_stream: u32,
    /// After GOAWAY: streams above this are ignored.
    goaway: Option<u32>,
    /// The peer sent GOAWAY: it opens no more streams.
    peer_goaway: bool,
    partial: Option<Partial>,
    send_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    recv_window: i64,
    out: Vec<u8>,
    /// Reused for a block's fields and for a 431's head.
    scratch: Vec<u8>,
}

impl Session {
    /// A connection whose SETTINGS and first WINDOW_UPDATE are already queued to be written.
    pub(crate) fn new(limits: Limits) -> Session {
        let mut out = Vec::with_capacity(16 << 10);
        frame::settings(
            &mut out,
            &[
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    limits.max_concurrent_streams,
                ),
                (setting::INITIAL_WINDOW_SIZE, limits.window),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    u32::try_from(limits.max_header_list).unwrap_or(u32::MAX),
                ),
            ],
        );
        let window = i64::from(limits.window);
        if window > frame::DEFAULT_WINDOW {
            let grow = u32::try_from(window - frame::DEFAULT_WINDOW).unwrap_or(0);
            frame::window_update(&mut out, 0, grow);
        }
        Session {
            limits,
            state: State::Preface,
            decoder: hpack::Decoder::new(TABLE_SIZE),
            streams: Streams::default(),
            last_stream: 0,
            goaway: None,
            peer_goaway: false,
            partial: None,
            send_window: frame::DEFAULT_WINDOW,
            peer_initial_window: frame::DEFAULT_WINDOW,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            recv_window: window.max(frame::DEFAULT_WINDOW),
            out,
            scratch: Vec::new(),
        }
    }

    /// The bytes to write; the caller drains what it wrote.
    pub(crate) fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub(crate) fn output_is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The preface and the peer's first SETTINGS have arrived.
    pub(crate) fn is_ready(&self) -> bool {
        matches!(self.state, State::Open)
    }

    /// Streams that are open or whose call has not finished.
    pub(crate) fn streams(&self) -> usize {
        self.streams.len()
    }

    /// GOAWAY was sent or received, or the connection failed: no new stream will open.
    pub(crate) fn is_closing(&self) -> bool {
        self.goaway.is_some() || self.peer_goaway || matches!(self.state, State::Failed)
    }

    /// Reads the complete frames at the front of `input`, pushes what they meant to
    /// `events`, and returns how many bytes it read; the caller keeps the rest for the next
    /// turn. A connection error has queued GOAWAY, and nothing more is read.
    pub(crate) fn receive(
        &mut self,
        input: &[u8],
        events: &mut Vec<Event>,
    ) -> (usize, Result<(), ConnError>) {
        let mut at = 0;
        let result = self.frames(input, &mut at, events);
        if let Err(e) = &result {
            let last = self
                .goaway
                .unwrap_or(self.last_stream)
                .min(self.last_stream);
            frame::goaway(&mut self.out, last, e.reason);
            self.goaway = Some(last);
            self.state = State::Failed;
        }
        if !matches!(self.state, State::Failed) {
            // After a connection error only the GOAWAY may follow (RFC 9113 §5.4.1), on
            // this turn and on any later one.
            self.announce_window();
        }
        (at, result)
    }

    fn frames(
        &mut self,
        input: &[u8],
        at: &mut usize,
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        loop {
            let rest = &input[*at..];
            match self.state {
                State::Failed => return Ok(()),
                State::Preface => {
                    let n = rest.len().min(frame::PREFACE.len());
                    if rest[..n] != frame::PREFACE[..n] {
                        return Err(fail(
                            Reason::PROTOCOL_ERROR,
                            "not the HTTP/2 client preface",
                        ));
                    }
                    if n < frame::PREFACE.len() {
                        return Ok(());
                    }
                    *at += n;
                    self.state = State::Settings;
                    continue;
                }
                State::Settings | State::Open => {}
            }
            let Some(head) = Head::parse(rest) else {
                return Ok(());
            };
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(fail(
                    Reason::FRAME_SIZE_ERROR,
                    format!("a frame of {} bytes, over the 16 KiB announced", head.len),
                ));
            }
            let Some(payload) = rest.get(frame::HEAD_LEN..frame::HEAD_LEN + head.len) else {
                return Ok(());
            };
            *at += frame::HEAD_LEN + head.len;
            if matches!(self.state, State::Settings) {
                if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                    return Err(fail(
                        Reason::PROTOCOL_ERROR,
                        "the first frame is not SETTINGS",
                    ));
                }
                self.state = State::Open;
            }
            self.frame(head, payload, events)?;
        }
    }

    fn frame(
        &mut self,
        head: Head,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        if let Some(partial) = &self.partial
            && (head.kind != kind::CONTINUATION || head.stream != partial.stream)
        {
            return Err(fail(Reason::PROTOCOL_ERROR, "a header block interrupted"));
        }
        match head.kind {
            kind::DATA => self.data(head, payload, events),
            kind::HEADERS => self.headers(head, payload, events),
            kind::CONTINUATION => self.continuation(head, payload, events),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    // A stream error, but RST_STREAM may not name an idle stream (RFC 9113
                    // §6.4), so there it is the connection's.
                    if self.is_idle(head.stream) {
                        return Err(fail(Reason::FRAME_SIZE_ERROR, "PRIORITY is not 5 bytes"));
                    }
                    self.reset(head.stream, Reason::FRAME_SIZE_ERROR, events);
                }
                Ok(())
            }
            kind::RST_STREAM => {
                if head.stream == 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
                }
                if head.len != 4 {
                    return Err(fail(Reason::FRAME_SIZE_ERROR, "RST_STREAM is not 4 bytes"));
                }
                if self.is_idle(head.stream) {
                    return Err(fail(Reason::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
                }
                if let Some(s) = self.streams.get_mut(&head.stream)
                    && !(s.recv_closed && s.send_closed)
                {
                    s.recv_closed = true;
                    s.send_closed = true;
                    s.queued.clear();
                    events.push(Event::Reset {
                        stream: head.stream,
                    });
                }
                self.forget_if_done(head.stream);
                Ok(())
            }
            kind::SETTINGS => self.settings(head, payload),
            kind::PUSH_PROMISE => Err(fail(Reason::PROTOCOL_ERROR, "PUSH_PROMISE from a client")),
            kind::PING => {
                if head.stream != 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "PING on a stream"));
                }
                let Ok(data) = <[u8; 8]>::try_from(payload) else {
                    return Err(fail(Reason::FRAME_SIZE_ERROR, "PING is not 8 bytes"));
                };
                if head.has(flag::ACK) {
                    events.push(Event::Pong(data));
                } else {
                    frame::ping(&mut self.out, flag::ACK, data);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(fail(Reason::PROTOCOL_ERROR, "GOAWAY on a stream"));
                }
                if head.len < 8 {
                    return Err(fail(
                        Reason::FRAME_SIZE_ERROR,
                        "GOAWAY is shorter than 8 bytes",
                    ));
                }
                self.peer_goaway = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.window_update(head, payload, events),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    /// Not yet opened by the peer: above the last stream it opened, or one it can never
    /// open (a client's streams are odd, RFC 9113 §5.1.1), so a frame on it is a
    /// connection error rather than one for a forgotten stream.
    fn is_idle(&self, stream: u32) -> bool {
        stream > self.last_stream || stream.is_multiple_of(2)
    }

    fn settings(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if head.len != 0 {
                return Err(fail(
                    Reason::FRAME_SIZE_ERROR,
                    "a SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if !head.len.is_multiple_of(6) {
            return Err(fail(
                Reason::FRAME_SIZE_ERROR,
                "SETTINGS is not a multiple of 6 bytes",
            ));
        }
        for entry in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([entry[0], entry[1]]);
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match id {
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(fail(Reason::PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH above 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    let value = i64::from(value);
                    if value > frame::MAX_WINDOW {
                        return Err(fail(
                            Reason::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    let delta = value - self.peer_initial_window;
                    self.peer_initial_window = value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > frame::MAX_WINDOW {
                            return Err(fail(
                                Reason::FLOW_CONTROL_ERROR,
                                "a stream window past 2^31-1",
                            ));
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(frame::DEFAULT_MAX_FRAME as u32..=(1 << 24) - 1).contains(&value) {
                        return Err(fail(
                            Reason::PROTOCOL_ERROR,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                // HEADER_TABLE_SIZE: our encoder never uses the table. MAX_CONCURRENT_STREAMS:
                // a server opens none. MAX_HEADER_LIST_SIZE: our answers are a few bytes.
                // Unknown ids are ignored (RFC 9113 §6.5.2).
                _ => {}
            }
        }
        frame::settings_ack(&mut self.out);
        self.send_all_queued();
        Ok(())
    }

    fn window_update(
        &mut self,
        head: Head,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        let Ok(bytes) = <[u8; 4]>::try_from(payload) else {
            return Err(fail(
                Reason::FRAME_SIZE_ERROR,
                "WINDOW_UPDATE is not 4 bytes",
            ));
        };
        let increment = i64::from(u32::from_be_bytes(bytes) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(fail(Reason::PROTOCOL_ERROR, "a WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(fail(
                    Reason::FLOW_CONTROL_ERROR,
                    "the connection window past 2^31-1",
                ));
            }
            self.send_all_queued();
        } else {
            if self.is_idle(head.stream) {
                return Err(fail(
                    Reason::PROTOCOL_ERROR,
                    "WINDOW_UPDATE on an idle stream",
                ));
            }
            let Some(s) = self.streams.get_mut(&head.stream) else {
                return Ok(());
            };
            if increment == 0 {
                self.reset(head.stream, Reason::PROTOCOL_ERROR, events);
                return Ok(());
            }
            s.send_window += increment;
            if s.send_window > frame::MAX_WINDOW {
                self.reset(head.stream, Reason::FLOW_CONTROL_ERROR, events);
                return Ok(());
            }
            self.send_queued(head.stream);
        }
        Ok(())
    }

    /// The payload without its padding (RFC 9113 §6.1, §6.2), and the priority fields'
    /// length to skip for HEADERS.
    fn unpad(head: Head, payload: &[u8], skip: usize) -> Result<&[u8], ConnError> {
        let (pad, rest) = if head.has(flag::PADDED) {
            match payload.split_first() {
                Some((pad, rest)) => (usize::from(*pad), rest),
                None => {
                    return Err(fail(
                        Reason::FRAME_SIZE_ERROR,
                        "a padded frame without its pad length",
                    ));
                }
            }
        } else {
            (0, payload)
        };
        if pad + skip > rest.len() {
            return Err(fail(
                Reason::PROTOCOL_ERROR,
                "padding longer than the frame",
            ));
        }
        Ok(&rest[skip..rest.len() - pad])
    }

    fn data(
        &mut self,
        head: Head,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        if self.is_idle(head.stream) {
            return Err(fail(Reason::PROTOCOL_ERROR, "DATA on an idle stream"));
        }
        // The whole frame counts against the windows, padding included.
        let len = head.len as i64;
        if len > self.recv_window {
            return Err(fail(
                Reason::FLOW_CONTROL_ERROR,
                "DATA past the connection window",
            ));
        }
        // Given back at once (announced at the end of the turn): what a stream may buffer is
        // bounded by the application (one message, or what a routed call has not read), and
        // an unreleased window would stall every other stream.
        self.recv_window -= len;
        let data = Self::unpad(head, payload, 0)?;
        let end = head.has(flag::END_STREAM);
        let Some(s) = self.streams.get_mut(&head.stream) else {
            // Closed and forgotten: frames the peer sent before it saw our end.
            return Ok(());
        };
        if s.send_closed {
            // We ended or reset it; the peer sent this before it knew.
            return Ok(());
        }
        if s.recv_closed {
            // Half-closed (remote): DATA after END_STREAM.
            self.reset(head.stream, Reason::STREAM_CLOSED, events);
            return Ok(());
        }
        if len > s.recv_window {
            self.reset(head.stream, Reason::FLOW_CONTROL_ERROR, events);
            return Ok(());
        }
        s.recv_window -= len;
        let window = i64::from(self.limits.window);
        if !end && s.recv_window <= window / 2 {
            // Only a long-lived routed stream gets here; a decision's message is far smaller.
            frame::window_update(
                &mut self.out,
                head.stream,
                u32::try_from(window - s.recv_window).unwrap_or(0),
            );
            s.recv_window = window;
        }
        s.recv_closed = end;
        if !data.is_empty() || end {
            events.push(Event::Data {
                stream: head.stream,
                data: Bytes::copy_from_slice(data),
                end,
            });
        }
        self.forget_if_done(head.stream);
        Ok(())
    }

    fn headers(
        &mut self,
        head: Head,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(fail(Reason::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let skip = if head.has(flag::PRIORITY) { 5 } else { 0 };
        let fragment = Self::unpad(head, payload, skip)?;
        let end_stream = head.has(flag::END_STREAM);
        if head.has(flag::END_HEADERS) {
            return self.block(head.stream, end_stream, fragment, events);
        }
        let max = self.limits.max_header_list * MAX_BLOCK_FACTOR;
        if fragment.len() > max {
            return Err(fail(
                Reason::ENHANCE_YOUR_CALM,
                "a header block past its bound",
            ));
        }
        self.partial = Some(Partial {
            stream: head.stream,
            end_stream,
            block: fragment.to_vec(),
        });
        Ok(())
    }

    fn continuation(
        &mut self,
        head: Head,
        payload: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        let Some(mut partial) = self.partial.take() else {
            return Err(fail(Reason::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
        };
        if partial.block.len() + payload.len() > self.limits.max_header_list * MAX_BLOCK_FACTOR {
            return Err(fail(
                Reason::ENHANCE_YOUR_CALM,
                "a header block past its bound",
            ));
        }
        partial.block.extend_from_slice(payload);
        if head.has(flag::END_HEADERS) {
            return self.block(partial.stream, partial.end_stream, &partial.block, events);
        }
        self.partial = Some(partial);
        Ok(())
    }

    /// A whole header block on `stream`: a new request, or trailers.
    fn block(
        &mut self,
        stream: u32,
        end: bool,
        block: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), ConnError> {
        // Decoded whatever becomes of the stream: the table must stay in step with the peer's.
        let decoded = self.decode(block)?;
        if !self.is_idle(stream) {
            let Some(s) = self.streams.get_mut(&stream) else {
                return Ok(());
            };
            if s.recv_closed {
                if s.send_closed {
                    return Ok(());
                }
                self.reset(stream, Reason::STREAM_CLOSED, events);
                return Ok(());
            }
            // Trailers: they must end the stream, and the body is complete with them.
            if !end {
                self.reset(stream, Reason::PROTOCOL_ERROR, events);
                return Ok(());
            }
            s.recv_closed = true;
            events.push(Event::Data {
                stream,
                data: Bytes::new(),
                end: true,
            });
            self.forget_if_done(stream);
            return Ok(());
        }
        if stream.is_multiple_of(2) {
            return Err(fail(
                Reason::PROTOCOL_ERROR,
                "a client opened an even stream",
            ));
        }
        self.last_stream = stream;
        if self.goaway.is_some_and(|last| stream > last) {
            // After our GOAWAY: not processed, and the peer knows from it that it may retry.
            return Ok(());
        }
        if self.peer_goaway || self.streams.len() >= self.limits.max_concurrent_streams as usize {
            // Not processed, said so, so the client may retry it elsewhere (RFC 9113 §8.7).
            frame::rst_stream(&mut self.out, stream, Reason::REFUSED_STREAM);
            return Ok(());
        }
        let open = Stream {
            recv_closed: end,
            send_closed: false,
            held: true,
            send_window: self.peer_initial_window,
            recv_window: i64::from(self.limits.window),
            queued: VecDeque::new(),
        };
        match decoded {
            Decoded::Head(head) => {
                self.streams.insert(stream, open);
                events.push(Event::Open { stream, head, end });
            }
            Decoded::TooLarge => {
                self.streams.insert(stream, open);
                let mut block = std::mem::take(&mut self.scratch);
                block.clear();
                hpack::encode_status(431, &mut block);
                self.send_head(stream, &block, true);
                self.scratch = block;
                self.release(stream);
            }
            Decoded::Malformed(why) => {
                tracing::debug!(stream, why, "HTTP/2: a malformed request");
                // Never shown to the application, so it gets no Reset event for it; its
                // later frames land on a forgotten stream.
                frame::rst_stream(&mut self.out, stream, Reason::PROTOCOL_ERROR);
            }
        }
        Ok(())
    }

    fn decode(&mut self, block: &[u8]) -> Result<Decoded, ConnError> {
        let mut fields = Fields::new(&self.limits);
        self.decoder
            .decode(block, &mut |name: &[u8], value: &[u8]| {
                fields.add(name, value)
            })
            .map_err(|e| fail(Reason::COMPRESSION_ERROR, e.to_string()))?;
        Ok(fields.finish())
    }

    /// Resets `stream` (a stream error) and tells the application if it still had it open.
    fn reset(&mut self, stream: u32, reason: Reason, events: &mut Vec<Event>) {
        frame::rst_stream(&mut self.out, stream, reason);
        if let Some(s) = self.streams.get_mut(&stream) {
            let was_open = !(s.recv_closed && s.send_closed);
            s.recv_closed = true;
            s.send_closed = true;
            s.queued.clear();
            if was_open && s.held {
                events.push(Event::Reset { stream });
            }
        }
        self.forget_if_done(stream);
    }

    fn forget_if_done(&mut self, stream: u32) {
        if let Some(s) = self.streams.get(&stream)
            && s.recv_closed
            && s.send_closed
            && !s.held
        {
            self.streams.remove(&stream);
        }
    }

    /// The application has finished with `stream` (its call ended): it no longer counts
    /// against the bound once its frames are done.
    pub(crate) fn release(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.held = false;
        }
        self.forget_if_done(stream);
    }

    fn announce_window(&mut self) {
        // Announced once half the window is used, so a burst of small requests costs one
        // WINDOW_UPDATE per half window, not one per frame.
        let window = i64::from(self.limits.window).max(frame::DEFAULT_WINDOW);
        if self.recv_window <= window / 2 {
            let grow = window - self.recv_window;
            frame::window_update(&mut self.out, 0, u32::try_from(grow).unwrap_or(0));
            self.recv_window = window;
        }
    }

    /// Sends GOAWAY (NO_ERROR) naming the last stream that will be served; streams opened
    /// after it are ignored, the ones before it go on.
    pub(crate) fn go_away(&mut self) {
        if self.goaway.is_none() && !matches!(self.state, State::Failed) {
            frame::goaway(&mut self.out, self.last_stream, Reason::NO_ERROR);
            self.goaway = Some(self.last_stream);
        }
    }

    pub(crate) fn ping(&mut self, payload: [u8; 8]) {
        frame::ping(&mut self.out, 0, payload);
    }

    /// Whether `stream` can still be answered.
    pub(crate) fn can_send(&self, stream: u32) -> bool {
        self.streams.get(&stream).is_some_and(|s| !s.send_closed)
    }

    /// A response head (an HPACK block) on `stream`; `end` ends the stream with it.
    pub(crate) fn send_head(&mut self, stream: u32, block: &[u8], end: bool) {
        if !self.can_send(stream) {
            return;
        }
        frame::headers(&mut self.out, stream, block, end, self.peer_max_frame);
        if end {
            self.ended(stream);
        }
    }

    /// Body bytes on `stream`, as the windows allow; the rest waits for WINDOW_UPDATE.
    pub(crate) fn send_data(&mut self, stream: u32, data: Bytes, end: bool) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.send_closed {
            return;
        }
        s.queued.push_back(Queued::Data(data, end));
        self.send_queued(stream);
    }

    /// Trailers (an HPACK block) ending `stream`, after its queued data.
    pub(crate) fn send_trailers(&mut self, stream: u32, block: &[u8]) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        if s.send_closed {
            return;
        }
        if s.queued.is_empty() {
            frame::headers(&mut self.out, stream, block, true, self.peer_max_frame);
            self.ended(stream);
        } else {
            s.queued.push_back(Queued::Trailers(block.to_vec()));
        }
    }

    /// Resets `stream` from our side (the application's call failed or was cancelled).
    pub(crate) fn cancel(&mut self, stream: u32, reason: Reason) {
        if self.can_send(stream) {
            let mut none = Vec::new();
            self.reset(stream, reason, &mut none);
        }
    }

    /// Our side ended: a peer still sending is told to stop (RFC 9113 §8.1), so that it does
    /// not hold its half open.
    fn ended(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.send_closed = true;
            if !s.recv_closed {
                s.recv_closed = true;
                frame::rst_stream(&mut self.out, stream, Reason::NO_ERROR);
            }
        }
        self.forget_if_done(stream);
    }

    /// Writes what waits on `stream` while the windows allow.
    fn send_queued(&mut self, stream: u32) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let mut ended = false;
        while let Some(next) = s.queued.front_mut() {
            match next {
                Queued::Data(data, end) => {
                    let room = self.send_window.min(s.send_window).max(0) as usize;
                    let n = data.len().min(room).min(self.peer_max_frame);
                    if n < data.len() {
                        if n > 0 {
                            let piece = data.split_to(n);
                            frame::data(&mut self.out, stream, &piece, false);
                            self.send_window -= n as i64;
                            s.send_window -= n as i64;
                            // Frame size, not the window, may be what split it.
                            continue;
                        }
                        // Waits for a WINDOW_UPDATE.
                        return;
                    }
                    let end = *end;
                    frame::data(&mut self.out, stream, data, end);
                    self.send_window -= n as i64;
                    s.send_window -= n as i64;
                    s.queued.pop_front();
                    if end {
                        ended = true;
                        break;
                    }
                }
                Queued::Trailers(block) => {
                    frame::headers(&mut self.out, stream, block, true, self.peer_max_frame);
                    s.queued.pop_front();
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            s.queued.clear();
            self.ended(stream);
        }
    }

    /// After a window grew: every stream that waits gets what the windows now allow. Rare
    /// for answers of a few hundred bytes, so a walk over the streams is cheap enough.
    fn send_all_queued(&mut self) {
        let waiting: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.queued.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for stream in waiting {
            if self.send_window <= 0 {
                break;
            }
            self.send_queued(stream);
        }
    }
}

enum Decoded {
    Head(RequestHead),
    TooLarge,
    Malformed(&'static str),
}

/// A request's fields as they are decoded, checked as RFC 9113 §8.2 and §8.3 ask.
struct Fields<'a> {
    limits: &'a Limits,
    size: usize,
    regular: bool,
    method: Option<String>,
    scheme: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    encoding: Option<Vec<u8>>,
    headers: Option<HeaderMap>,
    error: Option<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(limits: &'a Limits) -> Self {
        Fields {
            limits,
            size: 0,
            regular: false,
            method: None,
            scheme: None,
            authority: None,
            path: None,
            encoding: None,
            headers: None,
            error: None,
        }
    }

    fn add(&mut self, name: &[u8], value: &[u8]) {
        self.size += name.len() + value.len() + 32;
        if self.error.is_some() || self.size > self.limits.max_header_list {
            return;
        }
        if let Err(why) = self.field(name, value) {
            self.error = Some(why);
        }
    }

    fn field(&mut self, name: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.regular {
                return Err("a pseudo-header after a regular field");
            }
            let slot = match pseudo {
                b"method" => &mut self.method,
                b"scheme" => &mut self.scheme,
                b"authority" => &mut self.authority,
                b"path" => &mut self.path,
                _ => return Err("an unknown pseudo-header"),
            };
            if slot.is_some() {
                return Err("a pseudo-header twice");
            }
            let text =
                std::str::from_utf8(value).map_err(|_| "a pseudo-header that is not UTF-8")?;
            *slot = Some(text.to_owned());
            return Ok(());
        }
        if !self.regular {
            self.regular = true;
            let fast = self.path.as_deref() == Some(self.limits.fast_path);
            if !fast || self.limits.headers_on_fast_path {
                self.headers = Some(HeaderMap::new());
            }
        }
        if name.is_empty() || name.iter().any(u8::is_ascii_uppercase) {
            return Err("a field name that is empty or not lowercase");
        }
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => {
                return Err("a connection-specific field");
            }
            b"te" if value != b"trailers" => return Err("te other than trailers"),
            b"grpc-encoding" => self.encoding = Some(value.to_vec()),
            _ => {}
        }
        if let Some(headers) = &mut self.headers {
            let name =
                HeaderName::from_bytes(name).map_err(|_| "a field name that is not a token")?;
            let value = HeaderValue::from_bytes(value)
                .map_err(|_| "a field value with a forbidden byte")?;
            headers.append(name, value);
        }
        Ok(())
    }

    fn finish(self) -> Decoded {
        if self.size > self.limits.max_header_list {
            return Decoded::TooLarge;
        }
        if let Some(why) = self.error {
            return Decoded::Malformed(why);
        }
        let (Some(method), Some(scheme), Some(path)) = (self.method, self.scheme, self.path) else {
            return Decoded::Malformed("a request without :method, :scheme or :path");
        };
        if path.is_empty() {
            return Decoded::Malformed("an empty :path");
        }
        let fast = path == self.limits.fast_path;
        let headers = match self.headers {
            Some(h) => Some(h),
            None if !fast || self.limits.headers_on_fast_path => Some(HeaderMap::new()),
            None => None,
        };
        Decoded::Head(RequestHead {
            path,
            encoding: self.encoding,
            headers,
            method,
            scheme,
            authority: self.authority,
        })
    }
}
