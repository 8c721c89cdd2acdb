//! What `bench` puts on the wire and reads back: each call's request as a gRPC frame built
//! before the load starts, and an answer told apart as OK, OVER_LIMIT or an error from its
//! HTTP/2 head, DATA and trailers.
//!
//! A unary gRPC answer is a head, one DATA frame holding one gRPC frame (5-byte header, then
//! the message) and a `grpc-status: 0` trailer; a refusal is a head carrying `grpc-status`
//! alone (trailers-only, as the service sends it: docs/service.md §2). Anything else is an
//! error here: the load tool counts answers, it does not diagnose them.

use h2::RecvStream;
use h2::client::ResponseFuture;
use prost::Message;
use prost::bytes::Bytes;
use tonic::codegen::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};

use super::{Args, build_request};
use crate::grpc::{FRAME_HEADER, Pieces, encode_frame};
use crate::proto::{RateLimitResponse, rate_limit_response};

/// Up to this many distinct requests are framed before the load starts; past it (a larger
/// `--distinct`) each call frames its own, which costs the tool about a microsecond more.
const PREBUILT_MAX: u64 = 1 << 16;

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// `overall_code` OK (or unknown: not over the limit).
    Ok,
    /// `overall_code` OVER_LIMIT.
    OverLimit,
    /// No answer, a refusal, or an answer that is not one `RateLimitResponse`.
    Error,
}

/// The gRPC frame of every call, by call number.
#[derive(Debug)]
pub(super) struct Requests {
    /// Call n's frame is `prebuilt[n % prebuilt.len()]`; empty when each call frames its own.
    prebuilt: Vec<Bytes>,
    args: Args,
}

impl Requests {
    /// The frames `args` asks for: one when no value has the placeholder, else one per
    /// distinct value up to [`PREBUILT_MAX`].
    pub(super) fn new(args: &Args) -> Self {
        let placeholder = args
            .descriptors
            .iter()
            .flatten()
            .any(|(_, v)| v.contains("{n}"));
        let period = if placeholder { args.distinct.max(1) } else { 1 };
        let prebuilt = if period <= PREBUILT_MAX {
            (0..period)
                .map(|n| encode_frame(&build_request(args, n)))
                .collect()
        } else {
            Vec::new()
        };
        Requests {
            prebuilt,
            args: args.clone(),
        }
    }

    /// Call `n`'s frame.
    pub(super) fn frame(&self, n: u64) -> Bytes {
        match self.prebuilt.len() as u64 {
            0 => encode_frame(&build_request(&self.args, n)),
            len => self.prebuilt[(n % len) as usize].clone(),
        }
    }
}

/// The head of a `ShouldRateLimit` call to `uri`.
pub(super) fn head(uri: &Uri) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = Method::POST;
    *head.uri_mut() = uri.clone();
    let headers = head.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(header::TE, HeaderValue::from_static("trailers"));
    head
}

/// Waits for the answer to one call and tells what it was.
pub(super) async fn answer(response: ResponseFuture) -> Outcome {
    let Ok(response) = response.await else {
        return Outcome::Error;
    };
    let (head, mut body) = response.into_parts();
    if head.status != StatusCode::OK || head.headers.contains_key("grpc-status") {
        // Trailers-only: a refusal (or, with status 0, an answer without its message).
        return Outcome::Error;
    }
    let Some(message) = read_body(&mut body).await else {
        return Outcome::Error;
    };
    match body.trailers().await {
        Ok(Some(trailers)) => outcome(&message, &trailers),
        _ => Outcome::Error,
    }
}

/// The body's bytes, whole; `None` when the stream failed. The flow-control capacity of
/// each piece is given back as it is read, so the windows never close on a long run.
async fn read_body(body: &mut RecvStream) -> Option<Bytes> {
    let mut pieces = Pieces::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        pieces.push(chunk);
    }
    Some(pieces.into_bytes())
}

/// The outcome of an answer that came with a body and trailers.
fn outcome(body: &[u8], trailers: &HeaderMap) -> Outcome {
    if trailers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"0") {
        return Outcome::Error;
    }
    match message(body).and_then(|m| RateLimitResponse::decode(m).ok()) {
        Some(r) if r.overall_code == rate_limit_response::Code::OverLimit as i32 => {
            Outcome::OverLimit
        }
        Some(_) => Outcome::Ok,
        None => Outcome::Error,
    }
}

/// The message of a body that is exactly one uncompressed gRPC frame.
fn message(body: &[u8]) -> Option<&[u8]> {
    let (head, message) = body.split_at_checked(FRAME_HEADER)?;
    let len = u32::from_be_bytes(head[1..].try_into().ok()?) as usize;
    (head[0] == 0 && len == message.len()).then_some(message)
}

#[cfg(test)]
mod tests {
    use tonic::codegen::http::Response;

    use super::*;
    use crate::grpc::SHOULD_RATE_LIMIT;
    use crate::proto::RateLimitRequest;

    fn trailers(status: &'static str) -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static(status));
        t
    }

    fn framed(code: rate_limit_response::Code) -> Bytes {
        encode_frame(&RateLimitResponse {
            overall_code: code as i32,
            ..RateLimitResponse::default()
        })
    }

    #[test]
    fn a_request_is_one_uncompressed_frame_of_its_message() {
        let args = super::super::tests::args(&["--distinct", "3"]);
        let requests = Requests::new(&args);
        assert_eq!(requests.prebuilt.len(), 3, "one per distinct value");
        let frame = requests.frame(4);
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - FRAME_HEADER);
        let request = RateLimitRequest::decode(&frame[FRAME_HEADER..]).unwrap();
        assert_eq!(request, build_request(&args, 4));
        assert_eq!(request.descriptors[0].entries[1].value, "c1");
    }

    #[test]
    fn requests_are_framed_once_or_per_call() {
        let fixed = super::super::tests::args_with("endpoint=e,consumer=c", &[]);
        assert_eq!(Requests::new(&fixed).prebuilt.len(), 1, "no placeholder");
        let many = super::super::tests::args(&["--distinct", "1000000"]);
        let requests = Requests::new(&many);
        assert!(
            requests.prebuilt.is_empty(),
            "over the bound: built per call"
        );
        let frame = requests.frame(123_456);
        let request = RateLimitRequest::decode(&frame[FRAME_HEADER..]).unwrap();
        assert_eq!(request.descriptors[0].entries[1].value, "c123456");
    }

    #[test]
    fn answers_are_told_apart() {
        use rate_limit_response::Code;
        assert_eq!(outcome(&framed(Code::Ok), &trailers("0")), Outcome::Ok);
        assert_eq!(
            outcome(&framed(Code::OverLimit), &trailers("0")),
            Outcome::OverLimit
        );
        // An error status in the trailers, however good the message.
        assert_eq!(outcome(&framed(Code::Ok), &trailers("14")), Outcome::Error);
        assert_eq!(
            outcome(&framed(Code::Ok), &HeaderMap::new()),
            Outcome::Error
        );
        // Not one uncompressed frame of a RateLimitResponse.
        let frame = framed(Code::OverLimit);
        assert_eq!(
            outcome(&frame[..frame.len() - 1], &trailers("0")),
            Outcome::Error
        );
        assert_eq!(outcome(&frame[..3], &trailers("0")), Outcome::Error);
        let mut compressed = frame.to_vec();
        compressed[0] = 1;
        assert_eq!(outcome(&compressed, &trailers("0")), Outcome::Error);
        assert_eq!(
            outcome(&[0, 0, 0, 0, 2, 0x08, 0x80], &trailers("0")),
            Outcome::Error,
            "truncated protobuf"
        );
        // An empty message is a response of all defaults: OK.
        assert_eq!(outcome(&[0, 0, 0, 0, 0], &trailers("0")), Outcome::Ok);
    }

    /// How the test server answers the n-th call.
    fn respond(n: usize, mut respond: h2::server::SendResponse<Bytes>) {
        let grpc = |status: &'static str| {
            let mut head = Response::new(());
            head.headers_mut()
                .insert("grpc-status", HeaderValue::from_static(status));
            head
        };
        let ok_head = || {
            let mut head = Response::new(());
            head.headers_mut()
                .insert("content-type", HeaderValue::from_static("application/grpc"));
            head
        };
        match n {
            // OVER_LIMIT, its frame in two DATA frames, then the OK trailer.
            0 => {
                let frame = framed(rate_limit_response::Code::OverLimit);
                let mut body = respond.send_response(ok_head(), false).unwrap();
                body.send_data(frame.slice(..3), false).unwrap();
                body.send_data(frame.slice(3..), false).unwrap();
                body.send_trailers(trailers("0")).unwrap();
            }
            // A refusal: the status alone (trailers-only).
            1 => drop(respond.send_response(grpc("14"), true).unwrap()),
            // An OK trailer with no message before it.
            2 => {
                let mut body = respond.send_response(ok_head(), false).unwrap();
                body.send_trailers(trailers("0")).unwrap();
            }
            // The stream reset.
            3 => respond.send_reset(h2::Reason::INTERNAL_ERROR),
            // OK in one DATA frame.
            _ => {
                let mut body = respond.send_response(ok_head(), false).unwrap();
                body.send_data(framed(rate_limit_response::Code::Ok), false)
                    .unwrap();
                body.send_trailers(trailers("0")).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn answers_are_read_off_http2_streams() {
        let (client_io, server_io) = tokio::io::duplex(64 << 10);
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let mut n = 0;
            while let Some(Ok((_request, answer))) = conn.accept().await {
                respond(n, answer);
                n += 1;
            }
        });
        let (mut client, conn) = h2::client::handshake(client_io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let uri: Uri = format!("http://rls{SHOULD_RATE_LIMIT}").parse().unwrap();
        let mut outcomes = Vec::new();
        for _ in 0..5 {
            client = client.ready().await.unwrap();
            let (response, mut body) = client.send_request(head(&uri), false).unwrap();
            body.send_data(Bytes::from_static(&[0, 0, 0, 0, 0]), true)
                .unwrap();
            outcomes.push(answer(response).await);
        }
        assert_eq!(
            outcomes,
            [
                Outcome::OverLimit,
                Outcome::Error,
                Outcome::Error,
                Outcome::Error,
                Outcome::Ok
            ]
        );
    }
}
