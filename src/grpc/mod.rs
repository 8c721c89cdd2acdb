//! The tonic adapter: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//! Converts at the edge (`convert`) and maps every limiter error to a gRPC status here, in
//! one place.

pub mod convert;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::limiter::{LimitError, RateLimiter};
use crate::proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use crate::proto::{RateLimitRequest, RateLimitResponse};

/// Largest request accepted by the transport (service.md §2).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The RLS gRPC service.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    limiter: Arc<RateLimiter>,
    response_headers: bool,
}

impl RateLimitGrpc {
    /// A service answering from `limiter`.
    pub fn new(limiter: Arc<RateLimiter>, response_headers: bool) -> Self {
        RateLimitGrpc {
            limiter,
            response_headers,
        }
    }

    /// The tonic server for it, with the message size bound.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The one place where limiter errors become gRPC statuses.
pub fn status_of(err: &LimitError) -> Status {
    match err {
        LimitError::Invalid(e) => Status::invalid_argument(e.to_string()),
        // UNAVAILABLE lets Envoy's `failure_mode_deny` decide.
        LimitError::Backend(e) => Status::unavailable(e.to_string()),
    }
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = convert::request_from_proto(request.into_inner());
        match self.limiter.should_rate_limit(&req).await {
            Ok(decision) => {
                tracing::debug!(
                    domain = %req.domain,
                    overall = ?decision.overall_code,
                    counters = decision.counters.len(),
                    "decided"
                );
                Ok(Response::new(convert::response_to_proto(
                    &decision,
                    self.response_headers,
                )))
            }
            Err(e) => {
                tracing::debug!(domain = %req.domain, error = %e, "request refused");
                Err(status_of(&e))
            }
        }
    }
}
