//! Protocol corners of the server session (RFC 9113), driven the way a client drives it:
//! frames written with `frame`'s writers and header blocks built by hand, so that a test
//! picks every HPACK representation, and the session's output parsed back frame by frame.

use prost::bytes::Bytes;

use super::frame::{self, Head, Reason, flag, kind, setting};
use super::hpack;
use super::huffman;
use super::session::{ConnError, Event, Limits, RequestHead, Session};

const FAST: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";
const OTHER: &str = "/grpc.health.v1.Health/Check";
/// RFC 9113 §7; `frame::Reason` has no name for it since the server never sends it.
const CANCEL: Reason = Reason(0x8);

fn limits() -> Limits {
    Limits {
        max_concurrent_streams: 100,
        window: 1 << 20,
        max_header_list: 16 << 10,
        fast_path: FAST,
        headers_on_fast_path: false,
    }
}

/// Limits whose windows are the protocol's default, so that a test can use one up.
fn small_window() -> Limits {
    Limits {
        window: 65_535,
        ..limits()
    }
}

// ---------------------------------------------------------------------------------------
// What the client writes.

/// A header block written representation by representation.
#[derive(Default, Clone)]
struct Block(Vec<u8>);

impl Block {
    /// A literal without indexing (RFC 7541 §6.2.2), as our own encoder writes it.
    fn field(mut self, name: &str, value: &str) -> Self {
        hpack::encode_field(name.as_bytes(), value.as_bytes(), &mut self.0);
        self
    }

    /// A literal with incremental indexing and a new name (§6.2.1): the field enters the
    /// dynamic table, newest at index 62.
    fn index_new(mut self, name: &str, value: &str) -> Self {
        self.0.push(0x40);
        raw_string(name, &mut self.0);
        raw_string(value, &mut self.0);
        self
    }

    /// A literal with incremental indexing on the name at `index` (§6.2.1).
    fn index_name(mut self, index: u8, value: &str) -> Self {
        assert!(index < 0x3f, "a one-byte index");
        self.0.push(0x40 | index);
        raw_string(value, &mut self.0);
        self
    }

    /// An indexed field (§6.1).
    fn indexed(mut self, index: u8) -> Self {
        assert!(index < 0x7f, "a one-byte index");
        self.0.push(0x80 | index);
        self
    }

    /// A literal without indexing whose value is Huffman-coded (§5.2).
    fn huffman(mut self, name: &str, value: &str) -> Self {
        self.0.push(0x00);
        raw_string(name, &mut self.0);
        let mut coded = Vec::new();
        huffman::encode(value.as_bytes(), &mut coded);
        assert!(coded.len() < 0x7f, "a one-byte length");
        self.0.push(0x80 | coded.len() as u8);
        self.0.extend_from_slice(&coded);
        self
    }
}

fn raw_string(s: &str, out: &mut Vec<u8>) {
    assert!(s.len() < 0x7f, "a one-byte length");
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The pseudo-headers of a POST to `path`.
fn pseudo(path: &str) -> Block {
    Block::default()
        .field(":method", "POST")
        .field(":scheme", "http")
        .field(":path", path)
        .field(":authority", "rls.test")
}

/// A gRPC request's head.
fn request(path: &str) -> Block {
    pseudo(path)
        .field("content-type", "application/grpc")
        .field("te", "trailers")
}

fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::head(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

fn headers(stream: u32, block: &Block, end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    frame::headers(&mut out, stream, &block.0, end, frame::DEFAULT_MAX_FRAME);
    out
}

fn data(stream: u32, payload: &[u8], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    frame::data(&mut out, stream, payload, end);
    out
}

fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::settings(&mut out, values);
    out
}

fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    let mut out = Vec::new();
    frame::window_update(&mut out, stream, increment);
    out
}

fn rst(stream: u32, reason: Reason) -> Vec<u8> {
    let mut out = Vec::new();
    frame::rst_stream(&mut out, stream, reason);
    out
}

fn ping(flags: u8, payload: [u8; 8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::ping(&mut out, flags, payload);
    out
}

/// The frame types in `bytes`, in order.
fn kinds(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(head) = Head::parse(bytes) {
        out.push(head.kind);
        bytes = &bytes[frame::HEAD_LEN + head.len..];
    }
    assert!(bytes.is_empty());
    out
}

/// What the application answers with.
fn status(code: u16) -> Vec<u8> {
    let mut out = Vec::new();
    hpack::encode_status(code, &mut out);
    out
}

fn grpc_ok() -> Vec<u8> {
    let mut out = Vec::new();
    hpack::encode_field(b"grpc-status", b"0", &mut out);
    out
}

// ---------------------------------------------------------------------------------------
// What the session writes, parsed back.

/// A frame of the session's output; a HEADERS and its CONTINUATIONs are one item, decoded.
#[derive(Debug, PartialEq)]
enum Out {
    Settings(Vec<(u16, u32)>),
    SettingsAck,
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Headers {
        stream: u32,
        fields: Vec<(String, String)>,
        end: bool,
    },
    Data {
        stream: u32,
        data: Vec<u8>,
        end: bool,
    },
    Rst {
        stream: u32,
        reason: Reason,
    },
    GoAway {
        last: u32,
        reason: Reason,
    },
    Ping {
        ack: bool,
        payload: [u8; 8],
    },
}

fn hd(stream: u32, fields: &[(&str, &str)], end: bool) -> Out {
    Out::Headers {
        stream,
        fields: fields
            .iter()
            .map(|&(n, v)| (n.to_owned(), v.to_owned()))
            .collect(),
        end,
    }
}

fn dt(stream: u32, data: &[u8], end: bool) -> Out {
    Out::Data {
        stream,
        data: data.to_vec(),
        end,
    }
}

fn be32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes(bytes.try_into().expect("4 bytes"))
}

fn parse(mut bytes: &[u8], decoder: &mut hpack::Decoder) -> Vec<Out> {
    let mut out = Vec::new();
    // A header block still waiting for CONTINUATION: its stream, END_STREAM, its bytes.
    let mut block: Option<(u32, bool, Vec<u8>)> = None;
    while !bytes.is_empty() {
        let head = Head::parse(bytes).expect("a whole frame header");
        let payload = bytes
            .get(frame::HEAD_LEN..frame::HEAD_LEN + head.len)
            .expect("a whole frame");
        bytes = &bytes[frame::HEAD_LEN + head.len..];
        assert!(head.len <= frame::DEFAULT_MAX_FRAME || head.kind == kind::DATA);
        let (fragment, stream, end) = match (block.take(), head.kind) {
            (Some((stream, end, mut so_far)), kind::CONTINUATION) if head.stream == stream => {
                so_far.extend_from_slice(payload);
                (so_far, stream, end)
            }
            (Some(_), other) => panic!("frame type {other} inside a header block"),
            (None, kind::HEADERS) => (payload.to_vec(), head.stream, head.has(flag::END_STREAM)),
            (None, kind) => {
                out.push(control(head, kind, payload));
                continue;
            }
        };
        if !head.has(flag::END_HEADERS) {
            block = Some((stream, end, fragment));
            continue;
        }
        let mut fields = Vec::new();
        decoder
            .decode(&fragment, &mut |n: &[u8], v: &[u8]| {
                fields.push((
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                ))
            })
            .expect("a header block that decodes");
        out.push(Out::Headers {
            stream,
            fields,
            end,
        });
    }
    assert!(block.is_none(), "a header block without END_HEADERS");
    out
}

fn control(head: Head, kind: u8, payload: &[u8]) -> Out {
    match kind {
        kind::SETTINGS if head.has(flag::ACK) => {
            assert!(payload.is_empty());
            Out::SettingsAck
        }
        kind::SETTINGS => {
            assert_eq!(payload.len() % 6, 0);
            let values = payload
                .chunks_exact(6)
                .map(|e| (u16::from_be_bytes([e[0], e[1]]), be32(&e[2..])))
                .collect();
            Out::Settings(values)
        }
        kind::WINDOW_UPDATE => Out::WindowUpdate {
            stream: head.stream,
            increment: be32(payload),
        },
        kind::DATA => Out::Data {
            stream: head.stream,
            data: payload.to_vec(),
            end: head.has(flag::END_STREAM),
        },
        kind::RST_STREAM => Out::Rst {
            stream: head.stream,
            reason: Reason(be32(payload)),
        },
        kind::GOAWAY => Out::GoAway {
            last: be32(&payload[..4]),
            reason: Reason(be32(&payload[4..8])),
        },
        kind::PING => Out::Ping {
            ack: head.has(flag::ACK),
            payload: payload.try_into().expect("8 bytes"),
        },
        other => panic!("the server sent frame type {other}"),
    }
}

/// An event with what a test compares; the request head is looked at apart.
#[derive(Debug, PartialEq)]
enum Ev {
    Open(u32, String, bool),
    Data(u32, Vec<u8>, bool),
    Reset(u32),
    Pong([u8; 8]),
}

fn summary(events: &[Event]) -> Vec<Ev> {
    events
        .iter()
        .map(|e| match e {
            Event::Open { stream, head, end } => Ev::Open(*stream, head.path.clone(), *end),
            Event::Data { stream, data, end } => Ev::Data(*stream, data.to_vec(), *end),
            Event::Reset { stream } => Ev::Reset(*stream),
            Event::Pong(payload) => Ev::Pong(*payload),
        })
        .collect()
}

/// The head of the first Open among `events`.
fn first_head(events: Vec<Event>) -> RequestHead {
    events
        .into_iter()
        .find_map(|e| match e {
            Event::Open { head, .. } => Some(head),
            _ => None,
        })
        .expect("an Open event")
}

fn header<'a>(head: &'a RequestHead, name: &str) -> Option<&'a [u8]> {
    let headers = head.headers.as_ref().expect("a header map");
    headers.get(name).map(|v| v.as_bytes())
}

// ---------------------------------------------------------------------------------------
// The client.

/// A session and what a client keeps of it: unread input, events, and the decoder for the
/// session's header blocks.
struct Client {
    session: Session,
    /// Bytes the session did not read yet (a partial frame), as the connection loop keeps
    /// them.
    pending: Vec<u8>,
    events: Vec<Event>,
    decoder: hpack::Decoder,
}

impl Client {
    fn new(limits: Limits) -> Client {
        Client {
            session: Session::new(limits),
            pending: Vec::new(),
            events: Vec::new(),
            decoder: hpack::Decoder::new(4096),
        }
    }

    /// Past the preface and the SETTINGS exchange, the client's SETTINGS carrying `values`.
    fn ready(limits: Limits, values: &[(u16, u32)]) -> Client {
        let mut c = Client::new(limits);
        c.out();
        c.ok(&[frame::PREFACE, &settings(values)].concat());
        assert_eq!(c.out(), [Out::SettingsAck]);
        assert!(c.session.is_ready());
        c
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), ConnError> {
        self.pending.extend_from_slice(bytes);
        let (used, result) = self.session.receive(&self.pending, &mut self.events);
        self.pending.drain(..used);
        result
    }

    fn ok(&mut self, bytes: &[u8]) {
        if let Err(e) = self.send(bytes) {
            panic!("a connection error: {e}");
        }
    }

    /// Sends `bytes`, which must end the connection with `reason`; returns the last stream
    /// the GOAWAY names.
    fn fails(&mut self, bytes: &[u8], reason: Reason) -> u32 {
        self.fails_as("", bytes, reason)
    }

    fn fails_as(&mut self, what: &str, bytes: &[u8], reason: Reason) -> u32 {
        let err = match self.send(bytes) {
            Ok(()) => panic!("{what}: no connection error, {reason} expected"),
            Err(e) => e,
        };
        assert_eq!(err.reason, reason, "{what}: {err}");
        let goaways: Vec<(u32, Reason)> = self
            .out()
            .into_iter()
            .filter_map(|o| match o {
                Out::GoAway { last, reason } => Some((last, reason)),
                _ => None,
            })
            .collect();
        let [(last, sent)] = goaways[..] else {
            panic!("{what}: one GOAWAY expected, got {goaways:?}");
        };
        assert_eq!(sent, reason, "{what}");
        assert!(self.session.is_closing(), "{what}");
        // A failed connection reads nothing more.
        self.pending.clear();
        let (used, result) = self.session.receive(&ping(0, [0; 8]), &mut self.events);
        assert!(used == 0 && result.is_ok(), "{what}");
        assert!(self.out().is_empty(), "{what}");
        last
    }

    /// Everything the session wrote since the last call.
    fn out(&mut self) -> Vec<Out> {
        let bytes = std::mem::take(self.session.output());
        parse(&bytes, &mut self.decoder)
    }

    fn events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    fn summary(&mut self) -> Vec<Ev> {
        summary(&self.events())
    }

    /// Opens `stream` with a gRPC request for `path`, checks that it opened, and returns its
    /// head.
    fn open(&mut self, stream: u32, path: &str, end: bool) -> RequestHead {
        self.ok(&headers(stream, &request(path), end));
        let events = self.events();
        assert_eq!(summary(&events), [Ev::Open(stream, path.to_owned(), end)]);
        first_head(events)
    }

    /// A unary answer, as the connection loop writes one: head, message, trailers.
    fn answer(&mut self, stream: u32, body: &[u8]) {
        self.session.send_head(stream, &status(200), false);
        self.session
            .send_data(stream, Bytes::copy_from_slice(body), false);
        self.session.send_trailers(stream, &grpc_ok());
    }
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------------------
// 1. The handshake.

#[test]
fn the_first_output_announces_the_limits_and_grows_the_connection_window() {
    let mut c = Client::new(Limits {
        max_concurrent_streams: 7,
        max_header_list: 8192,
        ..limits()
    });
    assert_eq!(
        c.out(),
        [
            Out::Settings(vec![
                (setting::MAX_CONCURRENT_STREAMS, 7),
                (setting::INITIAL_WINDOW_SIZE, 1 << 20),
                (setting::MAX_HEADER_LIST_SIZE, 8192),
            ]),
            Out::WindowUpdate {
                stream: 0,
                increment: (1 << 20) - 65_535
            },
        ]
    );
    assert!(!c.session.is_ready());
    // At the default window the connection's has nothing to grow.
    let mut small = Client::new(small_window());
    assert_eq!(
        small.out(),
        [Out::Settings(vec![
            (setting::MAX_CONCURRENT_STREAMS, 100),
            (setting::INITIAL_WINDOW_SIZE, 65_535),
            (setting::MAX_HEADER_LIST_SIZE, 16 << 10),
        ])]
    );
}

#[test]
fn the_preface_and_settings_may_come_one_byte_at_a_time() {
    let mut c = Client::new(limits());
    c.out();
    let input = [frame::PREFACE, &settings(&[])].concat();
    let preface = frame::PREFACE.len();
    for (i, b) in input.iter().enumerate() {
        c.ok(&[*b]);
        let fed = i + 1;
        // Nothing is read until the preface, then the empty SETTINGS frame, is whole.
        let unread = if fed < preface {
            fed
        } else {
            (fed - preface) % frame::HEAD_LEN
        };
        assert_eq!(c.pending.len(), unread, "after {fed} bytes");
        assert_eq!(
            c.session.is_ready(),
            fed == input.len(),
            "after {fed} bytes"
        );
    }
    assert_eq!(c.out(), [Out::SettingsAck]);
}

#[test]
fn a_wrong_preface_is_a_protocol_error() {
    let wrong: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: rls\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\r",
        // Refused from its first byte: no waiting for 24.
        b"G",
    ];
    for bytes in wrong {
        let mut c = Client::new(limits());
        c.out();
        let what = String::from_utf8_lossy(bytes);
        assert_eq!(c.fails_as(&what, bytes, Reason::PROTOCOL_ERROR), 0);
    }
}

#[test]
fn the_first_frame_must_be_settings() {
    let cases = [
        ("PING", ping(0, [1; 8])),
        (
            "a SETTINGS ACK",
            raw_frame(kind::SETTINGS, flag::ACK, 0, &[]),
        ),
        ("HEADERS", headers(1, &request(OTHER), true)),
    ];
    for (what, first) in cases {
        let mut c = Client::new(limits());
        c.out();
        c.fails_as(
            what,
            &[frame::PREFACE, &first].concat(),
            Reason::PROTOCOL_ERROR,
        );
    }
}

#[test]
fn every_settings_from_the_client_is_acknowledged_and_its_acks_are_not() {
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 1000)]);
    c.ok(&settings(&[(setting::MAX_FRAME_SIZE, 20_000), (0xfe, 1)]));
    assert_eq!(c.out(), [Out::SettingsAck]);
    // The client acknowledging ours.
    c.ok(&raw_frame(kind::SETTINGS, flag::ACK, 0, &[]));
    assert!(c.out().is_empty());
    assert!(c.events().is_empty());
}

// ---------------------------------------------------------------------------------------
// 2. A request.

#[test]
fn a_request_on_the_fast_path_opens_without_a_header_map() {
    let mut c = Client::ready(limits(), &[]);
    c.ok(&[headers(1, &request(FAST), false), data(1, b"hello", true)].concat());
    let events = c.events();
    assert_eq!(
        summary(&events),
        [
            Ev::Open(1, FAST.to_owned(), false),
            Ev::Data(1, b"hello".to_vec(), true)
        ]
    );
    let head = first_head(events);
    assert!(head.headers.is_none());
    assert_eq!(
        (
            head.method.as_str(),
            head.scheme.as_str(),
            head.authority.as_deref()
        ),
        ("POST", "http", Some("rls.test"))
    );
    assert_eq!(head.encoding, None);
    // A request with no body: END_STREAM on its HEADERS.
    let head = c.open(3, FAST, true);
    assert!(head.headers.is_none());
    assert!(c.out().is_empty());
}

#[test]
fn a_request_on_another_path_carries_its_regular_fields() {
    let mut c = Client::ready(limits(), &[]);
    let block = request(OTHER).huffman("x-client", "ironclad test client/1.0");
    c.ok(&headers(1, &block, true));
    let events = c.events();
    assert_eq!(summary(&events), [Ev::Open(1, OTHER.to_owned(), true)]);
    let head = first_head(events);
    assert_eq!(
        header(&head, "content-type"),
        Some(&b"application/grpc"[..])
    );
    assert_eq!(header(&head, "te"), Some(&b"trailers"[..]));
    assert_eq!(
        header(&head, "x-client"),
        Some(&b"ironclad test client/1.0"[..])
    );
    // Pseudo-headers are the head's own fields, not the map's.
    assert_eq!(head.headers.as_ref().map(|h| h.len()), Some(3));
    // With no regular field at all, still a map, empty.
    c.ok(&headers(3, &pseudo(OTHER), true));
    let head = first_head(c.events());
    assert_eq!(head.headers.map(|h| h.len()), Some(0));
}

#[test]
fn headers_on_fast_path_builds_the_map_there_too() {
    let mut c = Client::ready(
        Limits {
            headers_on_fast_path: true,
            ..limits()
        },
        &[],
    );
    let head = c.open(1, FAST, false);
    assert_eq!(header(&head, "te"), Some(&b"trailers"[..]));
    c.ok(&headers(3, &pseudo(FAST), true));
    let head = first_head(c.events());
    assert_eq!(head.headers.map(|h| h.len()), Some(0));
    // And without it, none even for a head of pseudo-headers alone.
    let mut c = Client::ready(limits(), &[]);
    c.ok(&headers(1, &pseudo(FAST), true));
    assert!(first_head(c.events()).headers.is_none());
}

#[test]
fn grpc_encoding_is_kept_on_every_path() {
    let mut c = Client::ready(limits(), &[]);
    c.ok(&headers(
        1,
        &request(FAST).field("grpc-encoding", "gzip"),
        false,
    ));
    let head = first_head(c.events());
    assert_eq!(head.encoding.as_deref(), Some(&b"gzip"[..]));
    assert!(head.headers.is_none());
    c.ok(&headers(
        3,
        &request(OTHER).field("grpc-encoding", "deflate"),
        false,
    ));
    let head = first_head(c.events());
    assert_eq!(head.encoding.as_deref(), Some(&b"deflate"[..]));
    assert_eq!(header(&head, "grpc-encoding"), Some(&b"deflate"[..]));
}

// ---------------------------------------------------------------------------------------
// 3. CONTINUATION.

#[test]
fn a_header_block_in_three_frames_is_one_request() {
    let mut c = Client::ready(limits(), &[]);
    let block = request(OTHER).field("x-long", &"v".repeat(90));
    let mut bytes = Vec::new();
    frame::headers(&mut bytes, 1, &block.0, false, block.0.len() / 3 + 1);
    assert_eq!(
        kinds(&bytes),
        [kind::HEADERS, kind::CONTINUATION, kind::CONTINUATION]
    );
    bytes.extend(data(1, b"abc", true));
    c.ok(&bytes);
    let events = c.events();
    assert_eq!(
        summary(&events),
        [
            Ev::Open(1, OTHER.to_owned(), false),
            Ev::Data(1, b"abc".to_vec(), true)
        ]
    );
    assert_eq!(
        header(&first_head(events), "x-long"),
        Some("v".repeat(90).as_bytes())
    );
}

#[test]
fn a_header_block_interrupted_is_a_protocol_error() {
    let block = request(OTHER).0;
    let (first, rest) = block.split_at(10);
    let start = raw_frame(kind::HEADERS, flag::END_STREAM, 1, first);
    let end = raw_frame(kind::CONTINUATION, flag::END_HEADERS, 1, rest);
    let cases = [
        (
            "CONTINUATION of another stream",
            raw_frame(kind::CONTINUATION, flag::END_HEADERS, 3, rest),
        ),
        (
            "HEADERS of another stream",
            headers(3, &request(OTHER), true),
        ),
        ("DATA of the same stream", data(1, b"x", false)),
        ("PING", ping(0, [2; 8])),
        (
            "PRIORITY",
            raw_frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 7]),
        ),
        ("an unknown frame type", raw_frame(0xfa, 0, 0, b"x")),
    ];
    for (what, between) in cases {
        let mut c = Client::ready(limits(), &[]);
        c.fails_as(
            what,
            &[start.clone(), between, end.clone()].concat(),
            Reason::PROTOCOL_ERROR,
        );
        assert!(c.events().is_empty(), "{what}");
    }
    let mut c = Client::ready(limits(), &[]);
    c.fails_as("CONTINUATION alone", &end, Reason::PROTOCOL_ERROR);
}

#[test]
fn a_header_block_past_four_times_the_list_bound_ends_the_connection() {
    let mut c = Client::ready(
        Limits {
            max_header_list: 100,
            ..limits()
        },
        &[],
    );
    let start = raw_frame(kind::HEADERS, 0, 1, &[0; 300]);
    let more = raw_frame(kind::CONTINUATION, 0, 1, &[0; 101]);
    c.fails(&[start, more].concat(), Reason::ENHANCE_YOUR_CALM);
}

// ---------------------------------------------------------------------------------------
// 4. Padding and priority.

#[test]
fn padding_and_priority_fields_are_not_part_of_the_block_or_the_data() {
    let mut c = Client::ready(limits(), &[]);
    let flags = [flag::PADDED, flag::PRIORITY, flag::PADDED | flag::PRIORITY];
    for (stream, flags) in [1, 3, 5].into_iter().zip(flags) {
        let mut payload = Vec::new();
        if flags & flag::PADDED != 0 {
            payload.push(4);
        }
        if flags & flag::PRIORITY != 0 {
            // Exclusive on stream 0, weight 16.
            payload.extend([0x80, 0, 0, 0, 15]);
        }
        payload.extend(request(OTHER).0);
        if flags & flag::PADDED != 0 {
            payload.extend([0; 4]);
        }
        let mut bytes = raw_frame(kind::HEADERS, flags | flag::END_HEADERS, stream, &payload);
        let mut body = vec![6];
        body.extend(b"hello");
        body.extend([0; 6]);
        bytes.extend(raw_frame(
            kind::DATA,
            flag::PADDED | flag::END_STREAM,
            stream,
            &body,
        ));
        c.ok(&bytes);
        let events = c.events();
        assert_eq!(
            summary(&events),
            [
                Ev::Open(stream, OTHER.to_owned(), false),
                Ev::Data(stream, b"hello".to_vec(), true)
            ],
            "flags {flags:#x}"
        );
        let head = first_head(events);
        assert_eq!(head.headers.map(|h| h.len()), Some(2), "flags {flags:#x}");
    }
    // Padding that fills the whole frame leaves no data.
    c.open(7, OTHER, false);
    c.ok(&raw_frame(kind::DATA, flag::PADDED, 7, &[2, 0, 0]));
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
}

#[test]
fn padding_longer_than_the_payload_is_a_protocol_error() {
    let block = request(OTHER).0;
    let mut headers_pad = vec![255];
    headers_pad.extend(&block);
    // The padding fits what follows the pad length, but not with the priority fields too.
    let mut priority_pad = vec![3, 0, 0, 0, 0, 15];
    priority_pad.extend([0; 2]);
    let cases = [
        (
            "HEADERS",
            raw_frame(
                kind::HEADERS,
                flag::PADDED | flag::END_HEADERS,
                1,
                &headers_pad,
            ),
        ),
        (
            "HEADERS with priority",
            raw_frame(
                kind::HEADERS,
                flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
                1,
                &priority_pad,
            ),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = Client::ready(limits(), &[]);
        c.fails_as(what, &bytes, Reason::PROTOCOL_ERROR);
        assert!(c.events().is_empty(), "{what}");
    }
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    c.fails(
        &raw_frame(kind::DATA, flag::PADDED, 1, &[3, b'a', b'b']),
        Reason::PROTOCOL_ERROR,
    );
    assert!(c.events().is_empty());
}

#[test]
fn padding_counts_against_the_windows() {
    let mut c = Client::ready(small_window(), &[]);
    c.open(1, OTHER, false);
    // 16 384 bytes a frame, of which 255 padding and 1 the pad length.
    let carried = body(16_384 - 256);
    let payload = [&[255][..], &carried, &[0; 255]].concat();
    let padded = raw_frame(kind::DATA, flag::PADDED, 1, &payload);
    c.ok(&[padded.clone(), padded].concat());
    assert_eq!(
        c.summary(),
        [
            Ev::Data(1, carried.clone(), false),
            Ev::Data(1, carried, false)
        ]
    );
    // Half the window used by the frames' whole length, not by what they carried.
    assert_eq!(
        c.out(),
        [
            Out::WindowUpdate {
                stream: 1,
                increment: 32_768
            },
            Out::WindowUpdate {
                stream: 0,
                increment: 32_768
            },
        ]
    );
}

// ---------------------------------------------------------------------------------------
// 5. Frame size and partial frames.

#[test]
fn a_frame_over_16384_bytes_is_a_frame_size_error() {
    // The client's own larger frame size does not raise what it may send us.
    let mut c = Client::ready(limits(), &[(setting::MAX_FRAME_SIZE, 1 << 20)]);
    c.open(1, OTHER, false);
    c.ok(&data(1, &[1; 16_384], false));
    assert_eq!(c.summary(), [Ev::Data(1, vec![1; 16_384], false)]);
    // Refused from its header alone: the payload need not arrive.
    let mut big = Vec::new();
    frame::head(&mut big, 16_385, kind::DATA, 0, 1);
    assert_eq!(c.fails(&big, Reason::FRAME_SIZE_ERROR), 1);
}

#[test]
fn a_partial_frame_is_left_unread_until_its_rest_comes() {
    let mut c = Client::ready(limits(), &[]);
    let open = headers(1, &request(OTHER), false);
    let all = [open.clone(), data(1, b"body", true)].concat();
    let mut events = Vec::new();
    let (used, result) = c.session.receive(&all[..all.len() - 3], &mut events);
    assert!(result.is_ok());
    assert_eq!(used, open.len());
    assert_eq!(summary(&events), [Ev::Open(1, OTHER.to_owned(), false)]);
    // Not even a whole frame header.
    let mut events = Vec::new();
    let (used, result) = c
        .session
        .receive(&all[open.len()..open.len() + 5], &mut events);
    assert!(result.is_ok());
    assert_eq!(used, 0);
    assert!(events.is_empty());
    let (used, result) = c.session.receive(&all[open.len()..], &mut events);
    assert!(result.is_ok());
    assert_eq!(used, all.len() - open.len());
    assert_eq!(summary(&events), [Ev::Data(1, b"body".to_vec(), true)]);
}

// ---------------------------------------------------------------------------------------
// 6. HPACK stays in step with requests that are refused.

/// What a refused block leaves in the dynamic table: `:authority: seeded.test` (63) and
/// `x-dyn: v1` (62).
fn seed(block: Block) -> Block {
    block.index_name(1, "seeded.test").index_new("x-dyn", "v1")
}

/// Sends a valid request on `stream` that takes two fields from the table `seed` filled,
/// and checks that they decoded as seeded.
fn assert_table_in_step(c: &mut Client, stream: u32) {
    let block = Block::default()
        .field(":method", "POST")
        .field(":scheme", "http")
        .field(":path", OTHER)
        .indexed(63)
        .indexed(62);
    c.ok(&headers(stream, &block, true));
    let events = c.events();
    assert_eq!(summary(&events), [Ev::Open(stream, OTHER.to_owned(), true)]);
    let head = first_head(events);
    assert_eq!(head.authority.as_deref(), Some("seeded.test"));
    assert_eq!(header(&head, "x-dyn"), Some(&b"v1"[..]));
}

fn method_and_scheme() -> Block {
    Block::default()
        .field(":method", "POST")
        .field(":scheme", "http")
}

#[test]
fn a_malformed_request_is_reset_and_its_table_changes_are_kept() {
    let with_path = || method_and_scheme().field(":path", OTHER);
    let cases = [
        ("an uppercase name", seed(with_path()).field("X-Upper", "1")),
        (
            "a connection-specific field",
            seed(with_path()).field("connection", "keep-alive"),
        ),
        (
            "te other than trailers",
            seed(with_path()).field("te", "gzip"),
        ),
        (
            "a pseudo-header after a regular field",
            seed(method_and_scheme()).field(":path", OTHER),
        ),
        ("no :path", seed(method_and_scheme())),
        (
            "an unknown pseudo-header",
            seed(with_path()).field(":protocol", "websocket"),
        ),
    ];
    for (what, block) in cases {
        let mut c = Client::ready(limits(), &[]);
        c.ok(&headers(1, &block, true));
        assert_eq!(
            c.out(),
            [Out::Rst {
                stream: 1,
                reason: Reason::PROTOCOL_ERROR
            }],
            "{what}"
        );
        // Never shown to the application, so not even a Reset is.
        assert!(c.events().is_empty(), "{what}");
        assert_eq!(c.session.streams(), 0, "{what}");
        assert_table_in_step(&mut c, 3);
    }
}

#[test]
fn a_header_list_over_the_bound_is_answered_431_and_its_table_changes_are_kept() {
    let big = "a".repeat(120);
    let block = seed(method_and_scheme().field(":path", OTHER))
        .field("x-big", &big)
        .field("x-big-2", &big)
        .field("x-big-3", &big);
    let bound = Limits {
        max_header_list: 300,
        ..limits()
    };
    // With END_STREAM from the client: the 431 alone.
    let mut c = Client::ready(bound.clone(), &[]);
    c.ok(&headers(1, &block, true));
    assert_eq!(c.out(), [hd(1, &[(":status", "431")], true)]);
    assert!(c.events().is_empty());
    assert_eq!(c.session.streams(), 0);
    assert_table_in_step(&mut c, 3);
    // Without: the client is also told to stop sending.
    let mut c = Client::ready(bound, &[]);
    c.ok(&headers(1, &block, false));
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "431")], true),
            Out::Rst {
                stream: 1,
                reason: Reason::NO_ERROR
            }
        ]
    );
    assert!(c.events().is_empty());
    // Its body, sent before the client knew, is dropped.
    c.ok(&data(1, b"late", true));
    assert!(c.events().is_empty());
    assert_table_in_step(&mut c, 3);
}

#[test]
fn a_block_that_does_not_decode_is_a_compression_error() {
    let mut c = Client::ready(limits(), &[]);
    // Index 0 is in neither table.
    c.fails(
        &headers(1, &Block(vec![0x80]), true),
        Reason::COMPRESSION_ERROR,
    );
}

// ---------------------------------------------------------------------------------------
// 7. The stream bound.

#[test]
fn a_stream_past_the_bound_is_refused_until_the_application_releases_one() {
    let mut c = Client::ready(
        Limits {
            max_concurrent_streams: 2,
            ..limits()
        },
        &[],
    );
    c.open(1, OTHER, true);
    c.open(3, OTHER, true);
    // Refused, but its block still enters the table.
    c.ok(&headers(5, &request(OTHER).index_new("x-seen", "5"), true));
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 5,
            reason: Reason::REFUSED_STREAM
        }]
    );
    assert!(c.events().is_empty());
    // Reset by the client while its call still runs: it still counts.
    c.ok(&rst(1, CANCEL));
    assert_eq!(c.summary(), [Ev::Reset(1)]);
    c.ok(&headers(7, &request(OTHER), true));
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 7,
            reason: Reason::REFUSED_STREAM
        }]
    );
    assert!(c.events().is_empty());
    assert_eq!(c.session.streams(), 2);
    c.session.release(1);
    assert_eq!(c.session.streams(), 1);
    c.ok(&headers(9, &request(OTHER).indexed(62), true));
    let events = c.events();
    assert_eq!(summary(&events), [Ev::Open(9, OTHER.to_owned(), true)]);
    assert_eq!(header(&first_head(events), "x-seen"), Some(&b"5"[..]));
    assert!(c.out().is_empty());
}

// ---------------------------------------------------------------------------------------
// 8. Stream ids.

#[test]
fn an_even_stream_is_a_protocol_error() {
    let mut c = Client::ready(limits(), &[]);
    assert_eq!(
        c.fails(&headers(2, &request(OTHER), true), Reason::PROTOCOL_ERROR),
        0
    );
    assert!(c.events().is_empty());
}

#[test]
fn an_even_stream_below_the_last_one_is_a_protocol_error_too() {
    let cases = [
        ("HEADERS", headers(2, &request(OTHER), true)),
        ("DATA", data(2, b"x", true)),
        ("WINDOW_UPDATE", window_update(2, 1)),
        ("RST_STREAM", rst(2, CANCEL)),
    ];
    for (what, bytes) in cases {
        let mut c = Client::ready(limits(), &[]);
        c.open(3, OTHER, false);
        assert_eq!(
            c.fails_as(what, &bytes, Reason::PROTOCOL_ERROR),
            3,
            "{what}"
        );
        assert!(c.events().is_empty(), "{what}");
    }
}

#[test]
fn data_on_an_idle_stream_is_a_protocol_error() {
    let mut c = Client::ready(limits(), &[]);
    assert_eq!(c.fails(&data(1, b"x", false), Reason::PROTOCOL_ERROR), 0);
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    assert_eq!(c.fails(&data(3, b"x", false), Reason::PROTOCOL_ERROR), 1);
    assert!(c.events().is_empty());
}

#[test]
fn data_for_a_forgotten_stream_is_ignored_but_counts_against_the_connection_window() {
    let mut c = Client::ready(small_window(), &[]);
    c.open(1, OTHER, false);
    c.session.send_head(1, &status(200), true);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], true),
            Out::Rst {
                stream: 1,
                reason: Reason::NO_ERROR
            }
        ]
    );
    c.session.release(1);
    assert_eq!(c.session.streams(), 0);
    // Sent before the client saw our end: half the connection window's worth.
    c.ok(&[data(1, &[0; 16_384], false), data(1, &[0; 16_384], true)].concat());
    assert!(c.events().is_empty());
    assert_eq!(
        c.out(),
        [Out::WindowUpdate {
            stream: 0,
            increment: 32_768
        }]
    );
}

// ---------------------------------------------------------------------------------------
// 9. Flow control, receiving.

#[test]
fn data_past_the_connection_window_is_a_flow_control_error() {
    let chunk = data(1, &[0; 16_384], false);
    // The whole window in one read is fine (it is given back at the end of a read)...
    let mut c = Client::ready(small_window(), &[]);
    c.open(1, OTHER, false);
    c.ok(&[chunk.repeat(3), data(1, &[0; 16_383], false)].concat());
    assert_eq!(c.events().len(), 4);
    // ...one byte more is not. The stream's own window was given back half way, so the
    // connection's is the one exceeded.
    let mut c = Client::ready(small_window(), &[]);
    c.open(1, OTHER, false);
    assert_eq!(c.fails(&chunk.repeat(4), Reason::FLOW_CONTROL_ERROR), 1);
}

#[test]
fn the_connection_window_is_given_back_once_half_of_it_is_used() {
    let mut c = Client::ready(small_window(), &[]);
    c.open(1, OTHER, false);
    c.ok(&data(1, &[0; 16_384], false));
    assert!(c.out().is_empty());
    c.ok(&data(1, &[0; 16_384], false));
    assert_eq!(
        c.out(),
        [
            Out::WindowUpdate {
                stream: 1,
                increment: 32_768
            },
            Out::WindowUpdate {
                stream: 0,
                increment: 32_768
            },
        ]
    );
    // Whole again: a full window more in one read is taken.
    c.ok(&[
        data(1, &[0; 16_384], false).repeat(3),
        data(1, &[0; 16_383], false),
    ]
    .concat());
    assert_eq!(c.events().len(), 6);
}

#[test]
fn data_past_a_streams_window_resets_only_that_stream() {
    // The connection's window is far larger than a stream's here.
    let mut c = Client::ready(
        Limits {
            window: 20_000,
            ..limits()
        },
        &[],
    );
    c.open(1, OTHER, false);
    // 11 000 left after the first frame: above half the window, so not given back yet.
    c.ok(&[data(1, &[0; 9_000], false), data(1, &[0; 11_001], false)].concat());
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 1,
            reason: Reason::FLOW_CONTROL_ERROR
        }]
    );
    assert_eq!(
        c.summary(),
        [Ev::Data(1, vec![0; 9_000], false), Ev::Reset(1)]
    );
    c.open(3, OTHER, true);
}

// ---------------------------------------------------------------------------------------
// 10. Flow control, sending.

#[test]
fn a_response_waits_for_the_stream_window_and_keeps_its_order() {
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 3)]);
    c.open(1, FAST, true);
    let body = body(40);
    c.answer(1, &body);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, &body[..3], false)
        ]
    );
    // The connection's window is not what it waits for.
    c.ok(&window_update(0, 1_000));
    assert!(c.out().is_empty());
    c.ok(&window_update(1, 10));
    assert_eq!(c.out(), [dt(1, &body[3..13], false)]);
    c.ok(&window_update(1, 100));
    assert_eq!(
        c.out(),
        [
            dt(1, &body[13..], false),
            hd(1, &[("grpc-status", "0")], true)
        ]
    );
    assert!(!c.session.can_send(1));
    c.session.release(1);
    assert_eq!(c.session.streams(), 0);
}

#[test]
fn a_response_waits_for_the_connection_window() {
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
    c.open(1, FAST, true);
    let body = body(65_545);
    c.answer(1, &body);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, &body[..16_384], false),
            dt(1, &body[16_384..32_768], false),
            dt(1, &body[32_768..49_152], false),
            dt(1, &body[49_152..65_535], false),
        ]
    );
    // The stream's window is not what it waits for.
    c.ok(&window_update(1, 1_000));
    assert!(c.out().is_empty());
    c.ok(&window_update(0, 4));
    assert_eq!(c.out(), [dt(1, &body[65_535..65_539], false)]);
    c.ok(&window_update(0, 100));
    assert_eq!(
        c.out(),
        [
            dt(1, &body[65_539..], false),
            hd(1, &[("grpc-status", "0")], true)
        ]
    );
}

#[test]
fn the_connection_window_is_shared_by_the_streams_that_wait() {
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
    c.open(1, FAST, true);
    c.open(3, FAST, true);
    let first = body(65_535);
    c.answer(1, &first);
    assert_eq!(c.out().len(), 1 + 4 + 1);
    c.answer(3, b"second");
    assert_eq!(c.out(), [hd(3, &[(":status", "200")], false)]);
    c.ok(&window_update(0, 100));
    assert_eq!(
        c.out(),
        [
            dt(3, b"second", false),
            hd(3, &[("grpc-status", "0")], true)
        ]
    );
}

#[test]
fn a_larger_initial_window_releases_the_data_that_waits() {
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 3)]);
    c.open(1, FAST, true);
    let body = body(40);
    c.answer(1, &body);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, &body[..3], false)
        ]
    );
    c.ok(&settings(&[(setting::INITIAL_WINDOW_SIZE, 100)]));
    assert_eq!(
        c.out(),
        [
            Out::SettingsAck,
            dt(1, &body[3..], false),
            hd(1, &[("grpc-status", "0")], true)
        ]
    );
}

#[test]
fn a_smaller_initial_window_can_take_a_stream_window_below_zero() {
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 10)]);
    c.open(1, FAST, true);
    let body = body(40);
    c.answer(1, &body);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, &body[..10], false)
        ]
    );
    // 10 - 10 sent, then 6 less: -6 (RFC 9113 §6.9.2).
    c.ok(&settings(&[(setting::INITIAL_WINDOW_SIZE, 4)]));
    assert_eq!(c.out(), [Out::SettingsAck]);
    c.ok(&window_update(1, 6));
    assert!(c.out().is_empty());
    c.ok(&window_update(1, 5));
    assert_eq!(c.out(), [dt(1, &body[10..15], false)]);
}

#[test]
fn an_initial_window_that_takes_a_stream_window_past_2_31_is_a_flow_control_error() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, FAST, true);
    // 65 535 + this = 2^31 - 1, the most a window may be.
    c.ok(&window_update(1, 0x7fff_ffff - 65_535));
    assert!(c.out().is_empty());
    c.fails(
        &settings(&[(setting::INITIAL_WINDOW_SIZE, 65_536)]),
        Reason::FLOW_CONTROL_ERROR,
    );
}

#[test]
fn data_frames_are_cut_at_the_peers_max_frame_size() {
    let body = body(40_000);
    let mut c = Client::ready(limits(), &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]);
    c.open(1, FAST, true);
    c.answer(1, &body);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, &body[..16_384], false),
            dt(1, &body[16_384..32_768], false),
            dt(1, &body[32_768..], false),
            hd(1, &[("grpc-status", "0")], true),
        ]
    );
    let mut c = Client::ready(
        limits(),
        &[
            (setting::INITIAL_WINDOW_SIZE, 1 << 20),
            (setting::MAX_FRAME_SIZE, 20_000),
        ],
    );
    c.open(1, FAST, true);
    c.answer(1, &body);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, &body[..20_000], false),
            dt(1, &body[20_000..], false),
            hd(1, &[("grpc-status", "0")], true),
        ]
    );
}

#[test]
fn stream_window_errors_reset_only_the_stream() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, FAST, false);
    c.ok(&window_update(1, 0));
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 1,
            reason: Reason::PROTOCOL_ERROR
        }]
    );
    assert_eq!(c.summary(), [Ev::Reset(1)]);
    c.open(3, FAST, false);
    c.ok(&window_update(3, 0x7fff_ffff));
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 3,
            reason: Reason::FLOW_CONTROL_ERROR
        }]
    );
    assert_eq!(c.summary(), [Ev::Reset(3)]);
    c.open(5, FAST, true);
}

// ---------------------------------------------------------------------------------------
// 11. Control frames.

#[test]
fn a_ping_is_answered_with_its_payload_and_an_ack_is_a_pong() {
    let mut c = Client::ready(limits(), &[]);
    c.ok(&ping(0, *b"12345678"));
    assert_eq!(
        c.out(),
        [Out::Ping {
            ack: true,
            payload: *b"12345678"
        }]
    );
    assert!(c.events().is_empty());
    c.session.ping(*b"keepaliv");
    assert_eq!(
        c.out(),
        [Out::Ping {
            ack: false,
            payload: *b"keepaliv"
        }]
    );
    c.ok(&ping(flag::ACK, *b"keepaliv"));
    assert!(c.out().is_empty());
    assert_eq!(c.summary(), [Ev::Pong(*b"keepaliv")]);
}

#[test]
fn malformed_control_frames_end_the_connection() {
    let cases = [
        (
            "PING of 7 bytes",
            raw_frame(kind::PING, 0, 0, &[0; 7]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "PING of 9 bytes",
            raw_frame(kind::PING, 0, 0, &[0; 9]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "PING on a stream",
            raw_frame(kind::PING, 0, 1, &[0; 8]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE of 0 on stream 0",
            window_update(0, 0),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "WINDOW_UPDATE of 3 bytes",
            raw_frame(kind::WINDOW_UPDATE, 0, 0, &[0, 0, 1]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "the connection window past 2^31-1",
            window_update(0, 0x7fff_ffff),
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "WINDOW_UPDATE on an idle stream",
            window_update(1, 1),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS of 5 bytes",
            raw_frame(kind::SETTINGS, 0, 0, &[0, 4, 0, 0, 1]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS ACK with a payload",
            raw_frame(kind::SETTINGS, flag::ACK, 0, &[0; 6]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "SETTINGS on a stream",
            raw_frame(kind::SETTINGS, 0, 1, &[]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_INITIAL_WINDOW_SIZE 2^31",
            settings(&[(setting::INITIAL_WINDOW_SIZE, 1 << 31)]),
            Reason::FLOW_CONTROL_ERROR,
        ),
        (
            "SETTINGS_MAX_FRAME_SIZE 16383",
            settings(&[(setting::MAX_FRAME_SIZE, 16_383)]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_MAX_FRAME_SIZE 2^24",
            settings(&[(setting::MAX_FRAME_SIZE, 1 << 24)]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "SETTINGS_ENABLE_PUSH 2",
            settings(&[(setting::ENABLE_PUSH, 2)]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PUSH_PROMISE",
            raw_frame(kind::PUSH_PROMISE, flag::END_HEADERS, 1, &[0, 0, 0, 2]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM on stream 0",
            rst(0, CANCEL),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "RST_STREAM of 3 bytes",
            raw_frame(kind::RST_STREAM, 0, 1, &[0, 0, 8]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "RST_STREAM on an idle stream",
            rst(1, CANCEL),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "GOAWAY of 7 bytes",
            raw_frame(kind::GOAWAY, 0, 0, &[0; 7]),
            Reason::FRAME_SIZE_ERROR,
        ),
        (
            "GOAWAY on a stream",
            raw_frame(kind::GOAWAY, 0, 1, &[0; 8]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "PRIORITY on stream 0",
            raw_frame(kind::PRIORITY, 0, 0, &[0; 5]),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "HEADERS on stream 0",
            headers(0, &request(OTHER), true),
            Reason::PROTOCOL_ERROR,
        ),
        (
            "DATA on stream 0",
            data(0, b"x", true),
            Reason::PROTOCOL_ERROR,
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut c = Client::ready(limits(), &[]);
        c.fails_as(what, &bytes, reason);
    }
}

#[test]
fn an_unknown_frame_type_is_ignored() {
    let mut c = Client::ready(limits(), &[]);
    c.ok(&[
        raw_frame(0xfa, 0xff, 0, b"anything"),
        raw_frame(0x0b, 0, 1, &[]),
    ]
    .concat());
    assert!(c.out().is_empty());
    assert!(c.events().is_empty());
    // Nor does one on stream 1 make it anything but idle.
    c.open(1, OTHER, true);
}

#[test]
fn a_priority_frame_is_ignored_and_a_wrong_sized_one_resets_its_stream() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    c.ok(&raw_frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 0, 7]));
    assert!(c.out().is_empty());
    assert!(c.events().is_empty());
    c.ok(&raw_frame(kind::PRIORITY, 0, 1, &[0, 0, 0, 0]));
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 1,
            reason: Reason::FRAME_SIZE_ERROR
        }]
    );
    assert_eq!(c.summary(), [Ev::Reset(1)]);
}

#[test]
fn a_wrong_sized_priority_frame_on_an_idle_stream_ends_the_connection() {
    // RST_STREAM may not name an idle stream, so the stream error becomes the connection's.
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    assert_eq!(
        c.fails(
            &raw_frame(kind::PRIORITY, 0, 3, &[0, 0, 0, 0]),
            Reason::FRAME_SIZE_ERROR
        ),
        1
    );
    let mut c = Client::ready(limits(), &[]);
    c.open(3, OTHER, false);
    // Even streams are never the client's, below the last one too.
    c.fails(
        &raw_frame(kind::PRIORITY, 0, 2, &[0, 0, 0, 0]),
        Reason::FRAME_SIZE_ERROR,
    );
}

// ---------------------------------------------------------------------------------------
// 12. GOAWAY.

#[test]
fn a_stream_opened_after_the_clients_goaway_is_refused_and_the_earlier_ones_finish() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    // GOAWAY from the client, last stream 0, NO_ERROR.
    c.ok(&raw_frame(kind::GOAWAY, 0, 0, &[0; 8]));
    assert!(c.session.is_closing());
    c.ok(&headers(3, &request(OTHER), true));
    // Refused, not silently dropped: the client learns that it may retry it elsewhere.
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 3,
            reason: Reason::REFUSED_STREAM
        }]
    );
    assert!(c.events().is_empty());
    c.ok(&data(1, b"", true));
    assert_eq!(c.summary(), [Ev::Data(1, Vec::new(), true)]);
}

#[test]
fn go_away_names_the_last_stream_and_lets_the_earlier_ones_finish() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    assert!(!c.session.is_closing());
    c.session.go_away();
    assert_eq!(
        c.out(),
        [Out::GoAway {
            last: 1,
            reason: Reason::NO_ERROR
        }]
    );
    assert!(c.session.is_closing());
    // Once only.
    c.session.go_away();
    assert!(c.out().is_empty());
    // A stream after it: not opened, and no error. Its block still enters the table.
    c.ok(&headers(
        3,
        &request(OTHER).index_new("x-late", "yes"),
        true,
    ));
    c.ok(&data(3, b"ignored", true));
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
    // Trailers on stream 1 that name that entry: they decode only if the table is in step.
    c.ok(&headers(1, &Block::default().indexed(62), true));
    assert_eq!(c.summary(), [Ev::Data(1, Vec::new(), true)]);
    c.answer(1, b"answer");
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            dt(1, b"answer", false),
            hd(1, &[("grpc-status", "0")], true),
        ]
    );
}

#[test]
fn a_connection_error_after_go_away_names_the_same_last_stream() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    c.session.go_away();
    c.out();
    c.ok(&headers(3, &request(OTHER), true));
    // Stream 3 came after GOAWAY and was never served: the error's GOAWAY still says 1.
    assert_eq!(
        c.fails(
            &raw_frame(kind::PING, 0, 0, &[0; 7]),
            Reason::FRAME_SIZE_ERROR
        ),
        1
    );
}

// ---------------------------------------------------------------------------------------
// 13. RST_STREAM from the client.

#[test]
fn a_reset_from_the_client_ends_the_stream() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    assert!(c.session.can_send(1));
    c.ok(&rst(1, CANCEL));
    assert_eq!(c.summary(), [Ev::Reset(1)]);
    assert!(!c.session.can_send(1));
    // Sent before the client reset it.
    c.ok(&data(1, b"late", true));
    assert!(c.events().is_empty());
    // The answer, once ready, goes nowhere.
    c.answer(1, b"answer");
    assert!(c.out().is_empty());
    // A second reset is nothing new.
    c.ok(&rst(1, CANCEL));
    assert!(c.events().is_empty());
    c.session.release(1);
    assert_eq!(c.session.streams(), 0);
}

// ---------------------------------------------------------------------------------------
// 14. Answering early.

#[test]
fn answering_before_the_request_ended_resets_the_clients_side() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, FAST, false);
    c.session.send_head(1, &status(200), true);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], true),
            Out::Rst {
                stream: 1,
                reason: Reason::NO_ERROR
            }
        ]
    );
    assert!(!c.session.can_send(1));
    c.ok(&data(1, b"late", true));
    assert!(c.events().is_empty());
    assert!(c.out().is_empty());
}

#[test]
fn cancelling_a_stream_resets_it_once() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, FAST, false);
    c.session.send_head(1, &status(200), false);
    c.session.cancel(1, Reason::INTERNAL_ERROR);
    c.session.cancel(1, Reason::INTERNAL_ERROR);
    assert_eq!(
        c.out(),
        [
            hd(1, &[(":status", "200")], false),
            Out::Rst {
                stream: 1,
                reason: Reason::INTERNAL_ERROR
            }
        ]
    );
    // The application is not told of its own cancel.
    assert!(c.events().is_empty());
}

// ---------------------------------------------------------------------------------------
// 15. Trailers from the client.

#[test]
fn client_trailers_end_the_request_body() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    c.ok(&data(1, b"abc", false));
    c.ok(&headers(1, &Block::default().field("x-trailer", "1"), true));
    assert_eq!(
        c.summary(),
        [
            Ev::Data(1, b"abc".to_vec(), false),
            Ev::Data(1, Vec::new(), true)
        ]
    );
    assert!(c.out().is_empty());
    c.answer(1, b"ok");
    assert_eq!(c.out().len(), 3);
}

#[test]
fn a_second_headers_without_end_stream_resets_the_stream() {
    let mut c = Client::ready(limits(), &[]);
    c.open(1, OTHER, false);
    c.ok(&headers(
        1,
        &Block::default().field("x-trailer", "1"),
        false,
    ));
    assert_eq!(
        c.out(),
        [Out::Rst {
            stream: 1,
            reason: Reason::PROTOCOL_ERROR
        }]
    );
    assert_eq!(c.summary(), [Ev::Reset(1)]);
    assert!(!c.session.can_send(1));
}

#[test]
fn frames_after_the_clients_end_stream_reset_the_stream() {
    let cases = [
        ("DATA", data(1, b"more", false)),
        (
            "HEADERS",
            headers(1, &Block::default().field("x-trailer", "1"), true),
        ),
    ];
    for (what, bytes) in cases {
        let mut c = Client::ready(limits(), &[]);
        c.open(1, OTHER, true);
        c.ok(&bytes);
        assert_eq!(
            c.out(),
            [Out::Rst {
                stream: 1,
                reason: Reason::STREAM_CLOSED
            }],
            "{what}"
        );
        assert_eq!(c.summary(), [Ev::Reset(1)], "{what}");
    }
}
