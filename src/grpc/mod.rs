//! The tonic adapter: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`.
//! Converts at the edge (`convert`) and maps every limiter error to a gRPC status here, in
//! one place.

pub mod convert;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::limiter::{Code, Decision, DescriptorStatus, LimitError, RateLimiter};
use crate::proto::rate_limit_service_server::{RateLimitService, RateLimitServiceServer};
use crate::proto::{RateLimitRequest, RateLimitResponse};
use crate::settings::OnBackendError;

/// Largest request accepted by the transport (service.md §2).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The RLS gRPC service.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    limiter: Arc<RateLimiter>,
    response_headers: bool,
    on_backend_error: OnBackendError,
}

impl RateLimitGrpc {
    /// A service answering from `limiter`.
    pub fn new(
        limiter: Arc<RateLimiter>,
        response_headers: bool,
        on_backend_error: OnBackendError,
    ) -> Self {
        RateLimitGrpc {
            limiter,
            response_headers,
            on_backend_error,
        }
    }

    /// The tonic server for it, with the message size bound.
    pub fn into_server(self) -> RateLimitServiceServer<Self> {
        RateLimitServiceServer::new(self).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }
}

/// The one place where limiter errors become answers: INVALID_ARGUMENT for a bad request;
/// for a failed counter store, what `--on-backend-error` says.
pub fn answer_error(
    err: &LimitError,
    on_backend_error: OnBackendError,
    descriptors: usize,
) -> Result<Decision, Status> {
    let code = match (err, on_backend_error) {
        (LimitError::Invalid(e), _) => return Err(Status::invalid_argument(e.to_string())),
        // UNAVAILABLE lets Envoy's `failure_mode_deny` decide.
        (LimitError::Backend(e), OnBackendError::Error) => {
            return Err(Status::unavailable(e.to_string()));
        }
        (LimitError::Backend(_), OnBackendError::Allow) => Code::Ok,
        (LimitError::Backend(_), OnBackendError::Deny) => Code::OverLimit,
    };
    let status = DescriptorStatus {
        code,
        current_limit: None,
        limit_remaining: 0,
        duration_until_reset: None,
    };
    Ok(Decision {
        overall_code: code,
        statuses: vec![status; descriptors],
        counters: Vec::new(),
        unmatched: Vec::new(),
        committed: false,
    })
}

#[tonic::async_trait]
impl RateLimitService for RateLimitGrpc {
    async fn should_rate_limit(
        &self,
        request: Request<RateLimitRequest>,
    ) -> Result<Response<RateLimitResponse>, Status> {
        let req = convert::request_from_proto(request.into_inner());
        let decision = match self.limiter.should_rate_limit(&req).await {
            Ok(decision) => {
                tracing::debug!(
                    domain = %req.domain,
                    overall = ?decision.overall_code,
                    counters = decision.counters.len(),
                    "decided"
                );
                decision
            }
            Err(e) => {
                tracing::debug!(domain = %req.domain, error = %e, "request not decided");
                answer_error(&e, self.on_backend_error, req.descriptors.len())?
            }
        };
        Ok(Response::new(convert::response_to_proto(
            &decision,
            self.response_headers,
        )))
    }
}
