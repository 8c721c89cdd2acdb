//! The `RateLimitService` route, written out by hand instead of the generated server.
//!
//! A unary call is one message in, one message out, so the route reads the request body up
//! to its one gRPC frame, answers, and writes the response as one DATA frame and the
//! `grpc-status` trailer, without tonic's streaming codec in between (its decode and encode
//! streams, request and response wrappers and boxed bodies measured about a tenth of the
//! service's CPU per call under load; docs/capacity.md).
//!
//! Decoding is ours too: a message that is not valid protobuf (invalid UTF-8 in a string, a
//! wrong wire type, truncated bytes) is INVALID_ARGUMENT and counted in
//! `ratelimit_requests_total{code="invalid"}` like any other bad request (docs/service.md §2),
//! where the generated server would answer INTERNAL and count nothing. The framing answers
//! as tonic does: OUT_OF_RANGE for a message over the size bound, UNIMPLEMENTED for a
//! compressed one (no compression is offered), INTERNAL for a body that is not one gRPC
//! frame.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic::server::NamedService;

use super::{MAX_MESSAGE_BYTES, RateLimitGrpc};
use crate::proto::RateLimitResponse;
use crate::proto::rate_limit_service_server::SERVICE_NAME;

/// The one method this service answers.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// A gRPC frame's header: the compressed flag and the message's length (big-endian u32).
const FRAME_HEADER: usize = 5;

/// The tower service tonic's router mounts under `envoy.service.ratelimit.v3.RateLimitService`.
#[derive(Debug, Clone)]
pub struct RateLimitServer {
    inner: Arc<RateLimitGrpc>,
}

impl RateLimitServer {
    /// Serves `grpc`.
    pub fn new(grpc: RateLimitGrpc) -> Self {
        RateLimitServer {
            inner: Arc::new(grpc),
        }
    }
}

impl NamedService for RateLimitServer {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> tonic::codegen::Service<http::Request<B>> for RateLimitServer
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SHOULD_RATE_LIMIT {
            return Box::pin(async { Ok(Status::unimplemented("no such method").into_http()) });
        }
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(should_rate_limit(&inner, req).await) })
    }
}

/// One `ShouldRateLimit` call: its message, the answer, the response.
async fn should_rate_limit<B>(
    grpc: &RateLimitGrpc,
    req: http::Request<B>,
) -> http::Response<tonic::body::Body>
where
    B: Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let (parts, body) = req.into_parts();
    if let Some(encoding) = parts.headers.get("grpc-encoding")
        && encoding.as_bytes() != b"identity"
    {
        return Status::unimplemented(format!(
            "grpc-encoding {} is not supported: send messages uncompressed",
            String::from_utf8_lossy(encoding.as_bytes())
        ))
        .into_http();
    }
    // One span per decision when OTLP export is on (docs/observability.md §7).
    let span = crate::telemetry::start(&tonic::metadata::MetadataMap::from_headers(parts.headers));
    let message = match read_message(body).await {
        Ok(m) => m,
        Err(status) => return status.into_http(),
    };
    let answer = grpc.answer(&message).await;
    if let Some(span) = span {
        span.finish(&message, &answer);
    }
    match answer {
        Ok(response) => respond(&response),
        Err(status) => status.into_http(),
    }
}

/// Reads the body up to the end of its first gRPC frame, and returns that frame's message.
/// The length is checked against the bound before the message is read, so an oversized one
/// is refused without being buffered.
async fn read_message<B>(body: B) -> Result<Bytes, Status>
where
    B: Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let mut body = std::pin::pin!(body);
    // Most requests arrive as one DATA frame holding the whole gRPC frame: it is sliced, not
    // copied. Otherwise the pieces are gathered in `buf`.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let have = first.as_ref().map_or(buf.len(), Bytes::len);
        if have >= FRAME_HEADER {
            let head = first.as_ref().map_or(&buf[..], |b| &b[..]);
            let len = frame_length(head)?;
            if have >= FRAME_HEADER + len {
                let whole = match first.take() {
                    Some(b) => b,
                    None => buf.freeze(),
                };
                return Ok(whole.slice(FRAME_HEADER..FRAME_HEADER + len));
            }
        }
        let data = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Some(Err(e)) => {
                let e: StdError = e.into();
                return Err(Status::internal(format!("reading the request failed: {e}")));
            }
            None if have == 0 => return Err(Status::internal("the request has no message")),
            None => return Err(Status::internal("the request's message is truncated")),
        };
        if data.is_empty() {
            continue;
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
            None => buf.extend_from_slice(&data),
        }
    }
}

/// The message length a frame header announces, refused when compressed or over the bound.
fn frame_length(mut head: &[u8]) -> Result<usize, Status> {
    match head.get_u8() {
        0 => {}
        1 => {
            return Err(Status::unimplemented(
                "compressed messages are not supported: send them uncompressed",
            ));
        }
        flag => {
            return Err(Status::internal(format!(
                "protocol error: a gRPC frame's flag is {flag}"
            )));
        }
    }
    let len = head.get_u32() as usize;
    if len > MAX_MESSAGE_BYTES {
        return Err(Status::out_of_range(format!(
            "the request's message is {len} bytes, more than the limit of {MAX_MESSAGE_BYTES}"
        )));
    }
    Ok(len)
}

/// The response: 200, `application/grpc`, the message as one frame, then `grpc-status: 0`.
fn respond(response: &RateLimitResponse) -> http::Response<tonic::body::Body> {
    let len = response.encoded_len();
    let mut frame = BytesMut::with_capacity(FRAME_HEADER + len);
    frame.put_u8(0);
    // Far below u32::MAX: a response holds one status per descriptor of a bounded request.
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer of the encoded length cannot run out of room.
    let _ = response.encode(&mut frame);
    let mut res = http::Response::new(tonic::body::Body::new(Unary {
        message: Some(frame.freeze()),
        done: false,
    }));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    res
}

/// A unary response body: one DATA frame, then the OK trailer.
struct Unary {
    message: Option<Bytes>,
    done: bool,
}

impl Body for Unary {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        self.done = true;
        let mut trailers = http::HeaderMap::with_capacity(1);
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn read(chunks: Vec<Vec<u8>>) -> Result<Bytes, Status> {
        let frames = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from(c)))),
        );
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_message(StreamBody::new(frames)))
    }

    #[test]
    fn a_message_is_read_whole_or_in_pieces() {
        let whole = framed(0, b"hello");
        assert_eq!(read(vec![whole.clone()]).unwrap(), &b"hello"[..]);
        // Split inside the header and inside the message, with an empty piece between.
        let pieces = vec![
            whole[..2].to_vec(),
            vec![],
            whole[2..7].to_vec(),
            whole[7..].to_vec(),
        ];
        assert_eq!(read(pieces).unwrap(), &b"hello"[..]);
        // An empty message is a message (a request of all defaults).
        assert_eq!(read(vec![framed(0, b"")]).unwrap(), &b""[..]);
        // Bytes after the first frame are not read as part of it.
        let mut two = framed(0, b"ab");
        two.extend_from_slice(&framed(0, b"cd"));
        assert_eq!(read(vec![two]).unwrap(), &b"ab"[..]);
    }

    #[test]
    fn bad_framing_is_refused_with_tonics_codes() {
        use tonic::Code;
        let code = |chunks: Vec<Vec<u8>>| read(chunks).unwrap_err().code();
        assert_eq!(code(vec![]), Code::Internal, "no message");
        assert_eq!(
            code(vec![framed(0, b"hello")[..6].to_vec()]),
            Code::Internal
        );
        assert_eq!(
            code(vec![framed(1, b"x")]),
            Code::Unimplemented,
            "compressed"
        );
        assert_eq!(code(vec![framed(7, b"x")]), Code::Internal, "unknown flag");
        // Over the bound: refused from the header alone.
        let mut head = vec![0];
        head.extend_from_slice(&(MAX_MESSAGE_BYTES as u32 + 1).to_be_bytes());
        assert_eq!(code(vec![head]), Code::OutOfRange);
        let at_bound = framed(0, &vec![0; MAX_MESSAGE_BYTES]);
        assert_eq!(read(vec![at_bound]).unwrap().len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn the_response_is_one_frame_then_the_ok_trailer() {
        let response = RateLimitResponse {
            overall_code: 1,
            ..RateLimitResponse::default()
        };
        let res = respond(&response);
        assert_eq!(res.headers()["content-type"], "application/grpc");
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(res.into_body().collect())
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        let bytes = collected.to_bytes();
        assert_eq!(bytes[0], 0);
        let decoded = RateLimitResponse::decode(&bytes[FRAME_HEADER..]).unwrap();
        assert_eq!(decoded, response);
    }
}
