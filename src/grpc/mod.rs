//! The tonic adapter: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//! Converts at the edge (`convert`, `json`) and maps every refusal to a gRPC status here, in
//! one place.

pub mod convert;
pub mod json;

use tonic::{Request, Response, Status};

use crate::proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use crate::proto::{RateLimitRequest, RateLimitResponse};
use crate::service::{Decider, Refusal};

/// Largest request accepted by the transport (service.md §2).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The RLS gRPC service.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    decider: Decider,
    response_headers: bool,
}

impl RateLimitGrpc {
    /// A service answering through `decider`.
    pub fn new(decider: Decider, response_headers: bool) -> Self {
        RateLimitGrpc {
            decider,
            response_headers,
        }
    }

    /// The tonic server for it, with the message size bound.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The one place where refusals become gRPC statuses.
pub fn status_of(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Invalid(m) => Status::invalid_argument(m),
        // UNAVAILABLE lets Envoy's `failure_mode_deny` decide.
        Refusal::Unavailable(m) => Status::unavailable(m),
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = match convert::request_from_proto(request.into_inner()) {
            Ok(req) => req,
            Err(e) => return Err(status_of(self.decider.refuse_invalid(e))),
        };
        let decision = self.decider.decide(&req).await.map_err(status_of)?;
        Ok(Response::new(convert::response_to_proto(
            &decision,
            self.response_headers,
        )))
    }
}
