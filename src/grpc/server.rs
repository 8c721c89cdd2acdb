//! The `RateLimitService` route, written out by hand instead of the generated server.
//!
//! The generated server decodes with prost before our code runs and maps a decode error to
//! INTERNAL, so a request that is not valid protobuf (invalid UTF-8 in a string, a wrong wire
//! type, truncated bytes) would be answered INTERNAL and never counted. Here the codec hands
//! over the message's raw bytes, and [`RateLimitGrpc::answer`] decodes them, so a malformed
//! message is INVALID_ARGUMENT and counted in `ratelimit_requests_total{code="invalid"}`
//! like any other bad request (docs/service.md §2). Framing, compression and the message-size
//! bound stay tonic's.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::bytes::Buf;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::codegen::{Body, BoxFuture, Bytes, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};
use tonic_prost::ProstEncoder;

use super::{MAX_MESSAGE_BYTES, RateLimitGrpc};
use crate::proto::RateLimitResponse;
use crate::proto::rate_limit_service_server::SERVICE_NAME;

/// The one method this service answers.
const SHOULD_RATE_LIMIT: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

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
    B: Body + Send + 'static,
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
        let method = ShouldRateLimit(Arc::clone(&self.inner));
        Box::pin(async move {
            let mut grpc = Grpc::new(RawRequestCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE_BYTES), None);
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// One `ShouldRateLimit` call, on the message's raw bytes.
struct ShouldRateLimit(Arc<RateLimitGrpc>);

impl UnaryService<Bytes> for ShouldRateLimit {
    type Response = RateLimitResponse;
    type Future = BoxFuture<Response<RateLimitResponse>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let inner = Arc::clone(&self.0);
        // One span per decision when OTLP export is on (docs/observability.md §7).
        let span = crate::telemetry::start(request.metadata());
        Box::pin(async move {
            let message = request.into_inner();
            let answer = inner.answer(&message).await.map(Response::new);
            if let Some(span) = span {
                span.finish(&message, &answer);
            }
            answer
        })
    }
}

/// Encodes responses with prost; decodes nothing: the message's bytes go to the handler.
#[derive(Debug, Clone, Copy, Default)]
struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = RateLimitResponse;
    type Decode = Bytes;
    type Encoder = ProstEncoder<RateLimitResponse>;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// Takes one whole message (tonic has already removed the gRPC framing).
#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}
