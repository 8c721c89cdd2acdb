//! The one decision path behind every front door (gRPC and `POST /json`): decide, record
//! metrics, and turn a failed counter store into what `--on-backend-error` asks for.

use std::sync::Arc;
use std::time::Instant;

use crate::limited::Limited;
use crate::limiter::{Code, Decision, DescriptorStatus, LimitError, RateLimiter, Request};
use crate::metrics::{Metrics, RequestCode};
use crate::settings::OnBackendError;

/// Why a request got no decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The request broke a bound (gRPC INVALID_ARGUMENT, HTTP 400).
    Invalid(String),
    /// The counter store failed and `--on-backend-error` is `error` (UNAVAILABLE, HTTP 503).
    Unavailable(String),
}

/// Decides requests for the adapters.
#[derive(Debug, Clone)]
pub struct Decider {
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
    on_backend_error: OnBackendError,
    global_shadow: bool,
    /// Who is being limited (`GET /limited`): fed with every decision.
    limited: Arc<Limited>,
}

impl Decider {
    /// A decider over `limiter`, recording into `metrics`.
    pub fn new(
        limiter: Arc<RateLimiter>,
        metrics: Arc<Metrics>,
        on_backend_error: OnBackendError,
        global_shadow: bool,
    ) -> Self {
        Decider {
            limiter,
            metrics,
            on_backend_error,
            global_shadow,
            limited: Arc::new(Limited::default()),
        }
    }

    /// The summary of recently rejecting counters this decider feeds.
    pub fn limited(&self) -> &Arc<Limited> {
        &self.limited
    }

    /// Decides one request.
    pub async fn decide(&self, req: &Request) -> Result<Decision, Refusal> {
        let start = Instant::now();
        let result = self.limiter.should_rate_limit(req).await;
        let (code, answer) = match result {
            Ok(d) => {
                self.metrics.decision(&req.domain, &d, self.global_shadow);
                self.limited
                    .record(&req.domain, &d, self.global_shadow, unix_ms);
                let code = match d.overall_code {
                    Code::Ok => RequestCode::Ok,
                    Code::OverLimit => RequestCode::OverLimit,
                };
                tracing::debug!(domain = %req.domain, overall = ?d.overall_code, counters = d.counters.len(), "decided");
                (code, Ok(d))
            }
            Err(LimitError::Invalid(e)) => {
                tracing::debug!(domain = %req.domain, error = %e, "invalid request");
                (RequestCode::Invalid, Err(Refusal::Invalid(e.to_string())))
            }
            Err(LimitError::Backend(e)) => {
                tracing::debug!(domain = %req.domain, error = %e, "counter store failed");
                (
                    RequestCode::BackendError,
                    self.on_backend_error(&e.to_string(), req.descriptors.len()),
                )
            }
        };
        self.metrics.request(code, start.elapsed());
        answer
    }

    /// Counts a request refused before it could be decided (bad input at the edge).
    pub fn refuse_invalid(&self, message: String) -> Refusal {
        self.metrics
            .request(RequestCode::Invalid, std::time::Duration::ZERO);
        Refusal::Invalid(message)
    }

    fn on_backend_error(&self, error: &str, descriptors: usize) -> Result<Decision, Refusal> {
        let code = match self.on_backend_error {
            OnBackendError::Error => return Err(Refusal::Unavailable(error.to_owned())),
            OnBackendError::Allow => Code::Ok,
            OnBackendError::Deny => Code::OverLimit,
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
            dynamic_metadata: None,
        })
    }
}

/// The wall clock in Unix ms, as `/limited` reports times (0 before 1970: never in practice).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
