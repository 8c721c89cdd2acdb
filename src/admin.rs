//! The admin HTTP side (service.md §3): `/healthz`, `/readyz`, `/metrics`, `/config`, and
//! `POST /json` for clients that are not Envoy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::config::{Config, Diagnostic};
use crate::grpc::{MAX_MESSAGE_BYTES, convert, json};
use crate::limiter::{Code, RateLimiter, Snapshot};
use crate::metrics::Metrics;
use crate::service::{Decider, Refusal};

/// How long `/readyz` waits for the counter store before calling it unready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/config` reports: the served [`Snapshot`] and the counter store. Borrowed from the
/// snapshot for the time of one answer, so what it shows is what requests are decided with.
#[derive(Debug, Serialize)]
pub struct ConfigView<'a> {
    /// Grows by one on every successful load.
    pub generation: u64,
    /// SHA-256 over the files' names and contents.
    pub sha256: &'a str,
    /// The files, in load order.
    pub files: &'a [String],
    /// When it was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// Warnings found while loading.
    pub warnings: &'a [Diagnostic],
    /// The counter store (`memory`, or the Redis target with credentials redacted).
    pub counter_store: &'a str,
    /// The effective rules, defaults applied.
    pub rules: &'a Config,
}

impl<'a> ConfigView<'a> {
    /// Describes `snapshot`, served with `counter_store`.
    pub fn new(snapshot: &'a Snapshot, counter_store: &'a str) -> Self {
        ConfigView {
            generation: snapshot.generation,
            sha256: &snapshot.sha256,
            files: &snapshot.sources,
            loaded_at: humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
            warnings: &snapshot.warnings,
            counter_store,
            rules: &snapshot.config,
        }
    }
}

/// Shared state of the admin endpoints.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The limiter: its snapshot is the configuration `/config` reports, its store answers
    /// readiness probes.
    pub limiter: Arc<RateLimiter>,
    /// The counter store's description for `/config` (credentials redacted).
    pub counter_store: Arc<str>,
    /// Set from SIGTERM on: `/readyz` answers 503 so load balancers stop sending.
    pub draining: Arc<AtomicBool>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Decides `POST /json` requests.
    pub decider: Decider,
    /// Add `RateLimit-*` headers to answers (`--response-headers`).
    pub response_headers: bool,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/config", get(config))
        .route("/metrics", get(metrics))
        .route("/json", post(json_request))
        .route("/", get(crate::status::page))
        .route("/status.json", get(crate::status::status_json))
        .route("/limited", get(crate::status::limited))
        .route("/counters", post(crate::status::counters))
        .layer(DefaultBodyLimit::max(MAX_MESSAGE_BYTES))
        .with_state(state)
}

/// Whether the service can answer now; the reason when it cannot.
pub async fn readiness(s: &AdminState) -> Result<(), String> {
    if s.draining.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    if s.limiter.snapshot().generation == 0 {
        return Err("no configuration installed yet".into());
    }
    let store = s.limiter.store();
    match tokio::time::timeout(READY_PROBE_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "{} counter store did not answer within {READY_PROBE_TIMEOUT:?}",
            store.kind()
        )),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// `POST /json`: a RateLimitRequest in proto3 JSON → the RateLimitResponse as JSON, with 200
/// for OK, 429 for OVER_LIMIT, 400 for bad input, 503 when the counter store failed.
async fn json_request(State(s): State<AdminState>, body: Bytes) -> Response {
    let bad = |status: StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let request = match json::request_from_json(&value) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    match s.decider.decide(&request).await {
        Ok(decision) => {
            let status = match decision.overall_code {
                Code::Ok => StatusCode::OK,
                Code::OverLimit => StatusCode::TOO_MANY_REQUESTS,
            };
            let response = convert::response_to_proto(&decision, s.response_headers);
            (status, Json(convert::response_to_json(&response))).into_response()
        }
        Err(Refusal::Invalid(e)) => bad(StatusCode::BAD_REQUEST, e),
        Err(Refusal::Unavailable(e)) => bad(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    match readiness(&s).await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn config(State(s): State<AdminState>) -> Response {
    let snapshot = s.limiter.snapshot();
    Json(ConfigView::new(&snapshot, &s.counter_store)).into_response()
}
