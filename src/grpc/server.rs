//! One `ShouldRateLimit` call, from its request headers and body to the response frame.
//!
//! A unary call is one message in, one message out, so the call reads the request body up to
//! its one gRPC frame, answers, and encodes the response as one gRPC frame, which the
//! connection loop (`connection.rs`) writes as one DATA frame and the `grpc-status` trailer,
//! without tonic's streaming codec in between (its decode and encode streams, request and
//! response wrappers and boxed bodies measured about a tenth of the service's CPU per call
//! under load; docs/capacity.md).
//!
//! Decoding is ours too: a message that is not valid protobuf (invalid UTF-8 in a string, a
//! wrong wire type, truncated bytes) is INVALID_ARGUMENT and counted in
//! `ratelimit_requests_total{code="invalid"}` like any other bad request (docs/service.md §2),
//! where the generated server would answer INTERNAL and count nothing. The framing answers
//! as tonic does: OUT_OF_RANGE for a message over the size bound, UNIMPLEMENTED for a
//! compressed one (no compression is offered), INTERNAL for a body that is not one gRPC
//! frame.

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes, BytesMut};
use tonic::Status;

use super::{MAX_MESSAGE_BYTES, RateLimitGrpc};

/// The one method of `envoy.service.ratelimit.v3.RateLimitService`.
pub const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// A gRPC frame's header: the compressed flag and the message's length (big-endian u32).
pub const FRAME_HEADER: usize = 5;

/// Refuses a request whose `grpc-encoding` says its message is compressed: no compression
/// is offered.
pub fn check_encoding(encoding: Option<&[u8]>) -> Result<(), Status> {
    match encoding {
        Some(encoding) if encoding != b"identity" => Err(Status::unimplemented(format!(
            "grpc-encoding {} is not supported: send messages uncompressed",
            String::from_utf8_lossy(encoding)
        ))),
        _ => Ok(()),
    }
}

/// One `ShouldRateLimit` call's answer to its message, as one gRPC frame. `span` is the
/// decision's trace span when OTLP export is on (docs/observability.md §7).
pub async fn decide(
    grpc: &RateLimitGrpc,
    message: Bytes,
    span: Option<crate::telemetry::DecisionSpan>,
) -> Result<Bytes, Status> {
    let answer = grpc.answer(&message).await;
    if let Some(span) = span {
        span.finish(&message, &answer);
    }
    answer.map(|response| encode(&response))
}

/// A request body read up to the end of its first gRPC frame. The length is checked
/// against the bound as soon as the frame's header is in, so an oversized message is
/// refused without being buffered.
#[derive(Debug, Default)]
pub struct Gather {
    pieces: Pieces,
}

impl Gather {
    /// Adds the body's next bytes: the message once its frame is whole, a refusal when the
    /// frame's header is bad.
    pub fn push(&mut self, data: Bytes) -> Result<Option<Bytes>, Status> {
        self.pieces.push(data);
        let have = self.pieces.len();
        if have < FRAME_HEADER {
            return Ok(None);
        }
        let len = frame_length(self.pieces.as_slice())?;
        if have < FRAME_HEADER + len {
            return Ok(None);
        }
        let whole = std::mem::take(&mut self.pieces).into_bytes();
        Ok(Some(whole.slice(FRAME_HEADER..FRAME_HEADER + len)))
    }

    /// The refusal for a body that ended before its frame was whole.
    pub fn ended(&self) -> Status {
        if self.pieces.len() == 0 {
            Status::internal("the request has no message")
        } else {
            Status::internal("the request's message is truncated")
        }
    }
}

/// A body's DATA gathered. Most messages arrive as one DATA frame holding the whole gRPC
/// frame: that one is kept as it is, to be sliced, not copied; only a second piece makes
/// them be copied together. The service reads requests with it, `bench` answers.
#[derive(Debug, Default)]
pub struct Pieces {
    first: Option<Bytes>,
    gathered: BytesMut,
}

impl Pieces {
    /// Adds the next piece.
    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        match self.first.take() {
            None if self.gathered.is_empty() => self.first = Some(data),
            Some(first) => {
                self.gathered.extend_from_slice(&first);
                self.gathered.extend_from_slice(&data);
            }
            None => self.gathered.extend_from_slice(&data),
        }
    }

    /// The bytes so far.
    pub fn as_slice(&self) -> &[u8] {
        self.first.as_deref().unwrap_or(&self.gathered)
    }

    /// How many bytes so far.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// The bytes so far, whole.
    pub fn into_bytes(self) -> Bytes {
        self.first.unwrap_or_else(|| self.gathered.freeze())
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

/// A message as one uncompressed gRPC frame: flag 0, length, message. The service frames
/// its responses with it, `bench` its requests.
pub fn encode(message: &impl Message) -> Bytes {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(FRAME_HEADER + len);
    frame.put_u8(0);
    // Far below u32::MAX: both messages are bounded (a response holds one status per
    // descriptor of a bounded request; `bench` builds its own from a command line).
    frame.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    // Encoding into a buffer of the encoded length cannot run out of room.
    let _ = message.encode(&mut frame);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::RateLimitResponse;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut v = vec![flag];
        v.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        v.extend_from_slice(message);
        v
    }

    fn read(chunks: Vec<Vec<u8>>) -> Result<Bytes, Status> {
        let mut gather = Gather::default();
        for chunk in chunks {
            if let Some(message) = gather.push(Bytes::from(chunk))? {
                return Ok(message);
            }
        }
        Err(gather.ended())
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
    fn the_response_is_one_frame_holding_the_message() {
        let response = RateLimitResponse {
            overall_code: 1,
            ..RateLimitResponse::default()
        };
        let frame = encode(&response);
        assert_eq!(frame[0], 0, "not compressed");
        let len = u32::from_be_bytes(frame[1..FRAME_HEADER].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - FRAME_HEADER);
        let decoded = RateLimitResponse::decode(&frame[FRAME_HEADER..]).unwrap();
        assert_eq!(decoded, response);
    }
}
