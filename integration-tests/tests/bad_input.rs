//! Bad requests get INVALID_ARGUMENT with a message naming the problem; the server keeps
//! serving (docs/service.md §2). That includes messages that are not valid protobuf, sent
//! as hand-made bytes by a client whose codec encodes nothing.

use integration_tests::{Rls, example, request};
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::{RateLimitRequest, RateLimitResponse};
use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::Code as GrpcCode;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

#[tokio::test]
async fn invalid_requests_are_refused_clearly_and_the_server_keeps_serving() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let mut c = rls.client().await;
    let long = "v".repeat(4097);
    let many_entries: Vec<(&str, &str)> = vec![("k", "v"); 33];
    let many_descriptors: Vec<&[(&str, &str)]> = vec![&[("k", "v")]; 65];
    let cases: Vec<(RateLimitRequest, &str)> = vec![
        (
            request("", &[&[("endpoint", "kcserl")]]),
            "domain must not be empty",
        ),
        (request("kcse", &[]), "no descriptors"),
        (request("kcse", &[&[]]), "descriptors[0] has no entries"),
        (
            request("kcse", &[&[("endpoint", "kcserl")], &[("", "x")]]),
            "descriptors[1].entries[0] has an empty key",
        ),
        (request("kcse", &many_descriptors), "at most 64"),
        (request("kcse", &[&many_entries]), "at most 32"),
        (
            request("kcse", &[&[("path", long.as_str())]]),
            "longer than 4096 bytes",
        ),
    ];
    for (r, want) in cases {
        let err = c.should_rate_limit(r).await.expect_err("must be refused");
        assert_eq!(err.code(), GrpcCode::InvalidArgument, "{err:?}");
        assert!(
            err.message().contains(want),
            "message {:?} does not say {want:?}",
            err.message()
        );
    }

    // A message over 64 KiB is refused by the transport, not by a crash.
    let huge = "x".repeat(3000);
    let big: Vec<(&str, &str)> = vec![("k", huge.as_str()); 30];
    let err = c
        .should_rate_limit(request("kcse", &[&big]))
        .await
        .expect_err("an oversized message must be refused");
    assert_eq!(err.code(), GrpcCode::OutOfRange, "{err:?}");

    // The same connection and a new one still get answers.
    let ok = request(
        "kcse",
        &[&[
            ("endpoint", "kcserl"),
            ("path", "/auth/x"),
            ("consumer", "c"),
        ]],
    );
    assert_eq!(
        c.should_rate_limit(ok.clone())
            .await
            .unwrap()
            .into_inner()
            .overall_code,
        Code::Ok as i32
    );
    let mut fresh = rls.client().await;
    assert_eq!(
        fresh
            .should_rate_limit(ok)
            .await
            .unwrap()
            .into_inner()
            .overall_code,
        Code::Ok as i32
    );
    assert_eq!(rls.admin_get("/healthz").0, 200);
}

/// A codec that sends the given bytes as the message and hands back the answer's bytes, so
/// the test decides exactly what goes on the wire.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Self::Error> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// One `ShouldRateLimit` call carrying `message` verbatim.
async fn send_raw(channel: Channel, message: &[u8]) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
    );
    grpc.unary(
        tonic::Request::new(Bytes::copy_from_slice(message)),
        path,
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_and_counted() {
    let rls = Rls::start(&["--config", example("full-example.yaml").to_str().unwrap()]);
    let channel = Channel::from_shared(format!("http://{}", rls.grpc_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let invalid = || {
        rls.metric("ratelimit_requests_total", &[("code", "invalid")])
            .unwrap_or(0.0)
    };
    let cases: [(&str, &[u8]); 4] = [
        // Field 1 (`domain`, length-delimited) holding bytes that are not UTF-8.
        ("invalid UTF-8 in domain", &[0x0a, 0x02, 0xc3, 0x28]),
        // descriptors[0].entries[0].key = "\xff": field 2 > field 1 > field 1.
        (
            "invalid UTF-8 in an entry key",
            &[0x12, 0x05, 0x0a, 0x03, 0x0a, 0x01, 0xff],
        ),
        // Field 1 as a varint where a string belongs.
        ("wrong wire type", &[0x08, 0x01]),
        // Field 1 claiming 10 bytes, holding 3.
        ("truncated", &[0x0a, 0x0a, b'k', b'c', b's']),
    ];
    for (n, (what, bytes)) in cases.iter().enumerate() {
        let status = send_raw(channel.clone(), bytes)
            .await
            .expect_err("a malformed message is refused");
        assert_eq!(
            status.code(),
            GrpcCode::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains("invalid protobuf"),
            "{what}: {:?}",
            status.message()
        );
        assert_eq!(invalid(), (n + 1) as f64, "{what} is counted as invalid");
    }

    // The same channel still answers a well-formed message, sent the same raw way.
    let ok = request(
        "kcse",
        &[&[
            ("endpoint", "kcserl"),
            ("path", "/auth/x"),
            ("consumer", "c"),
        ]],
    );
    let answer = send_raw(channel, &ok.encode_to_vec())
        .await
        .expect("a well-formed message is answered");
    let answer = RateLimitResponse::decode(answer).expect("a RateLimitResponse");
    assert_eq!(answer.overall_code, Code::Ok as i32);
    assert_eq!(invalid(), cases.len() as f64);
    assert_eq!(rls.admin_get("/healthz").0, 200);
}
