//! The admin HTTP side (docs/service.md §3): `/healthz`, `/readyz`, `/metrics`, `/config`, and
//! `POST /json` for clients that are not Envoy.
//!
//! The admin port is reachable from inside the cluster, so what can change quota is guarded
//! (docs/service.md §3): with `--admin-token-file`, `/json` and `/config` require the
//! bearer token (`token.rs`); without it, `/json` refuses `is_negative_hits` and limit
//! overrides, which would let any caller give quota back to, or raise the limit of, someone
//! else's counter. A body over the bound is refused from its `Content-Length`, before a
//! byte of it is read. Probes and `/metrics` stay open.

pub mod token;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Serialize;

use crate::config::{Config, Diagnostic};
use crate::grpc::{MAX_MESSAGE_BYTES, convert, json};
use crate::limiter::{Code, RateLimiter, Snapshot};
use crate::metrics::Metrics;
use crate::service::{Decider, Refusal};

pub use token::AdminToken;

/// Largest admin request body: a `POST /json` request is a RateLimitRequest, which gRPC
/// bounds the same way.
pub const MAX_BODY_BYTES: usize = MAX_MESSAGE_BYTES;

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
    /// The token `/json` and `/config` require (`--admin-token-file`), if any.
    pub token: Option<Arc<AdminToken>>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    // The routes that show or change more than health, behind the token when there is one.
    let guarded = Router::new()
        .route("/config", get(config))
        .route("/json", post(json_request))
        // Reads counter state like `/json` with `hits_addend` 0, so it needs what `/json` needs.
        .route("/counters", post(crate::status::counters))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/healthcheck", get(healthcheck))
        .route("/metrics", get(metrics))
        .merge(guarded)
        // Read-only summaries, open like `/metrics` (which carries consumer labels too): the
        // status page fetches `/status.json` from a browser that cannot send a bearer token.
        .route("/", get(crate::status::page))
        .route("/status.json", get(crate::status::status_json))
        .route("/limited", get(crate::status::limited))
        // A chunked body is still cut at the bound while it is read.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_large_bodies,
        ))
        .with_state(state)
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// 413 on a `Content-Length` over the bound, before the body is read.
async fn refuse_large_bodies(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY_BYTES as u64 => {
            s.metrics.admin_refused("too_large");
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a body of {n} bytes is over the bound of {MAX_BODY_BYTES} bytes"),
            )
        }
        _ => next.run(req).await,
    }
}

/// 401 unless the request carries the admin token, when one is configured.
async fn require_token(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let Some(token) = &s.token else {
        return next.run(req).await;
    };
    if token.admits(authorization(req.headers())) {
        return next.run(req).await;
    }
    s.metrics.admin_refused("unauthorized");
    let mut answer = error(
        StatusCode::UNAUTHORIZED,
        "this path requires `Authorization: Bearer <token>` with the token of --admin-token-file"
            .into(),
    );
    answer.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    answer
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
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

/// The router of the separate metrics listener (`--metrics-addr`): the metrics at `path`,
/// nothing else.
pub fn metrics_router(state: AdminState, path: &str) -> Router {
    Router::new().route(path, get(metrics)).with_state(state)
}

/// `GET /healthcheck` as envoyproxy/ratelimit answers it (Envoy Gateway probes it): 200 `OK`
/// while ready, 500 with an empty body otherwise (docs/envoy-gateway.md).
async fn healthcheck(State(s): State<AdminState>) -> Response {
    match readiness(&s).await {
        Ok(()) => (StatusCode::OK, "OK").into_response(),
        Err(why) => {
            tracing::debug!(%why, "healthcheck: not healthy");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    if let Some((counters, max)) = s.limiter.store().occupancy() {
        s.metrics.memory_occupancy(counters, max);
    }
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
    let bad = error;
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return bad(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let request = match json::request_from_json(&value) {
        Ok(r) => r,
        Err(e) => return bad(StatusCode::BAD_REQUEST, e),
    };
    // Without a token anyone who reaches the port could refund or raise any counter.
    let changes_quota = request
        .descriptors
        .iter()
        .any(|d| d.is_negative_hits || d.limit_override.is_some());
    if changes_quota && s.token.is_none() {
        s.metrics.admin_refused("forbidden");
        return bad(
            StatusCode::FORBIDDEN,
            "is_negative_hits and limit overrides change other callers' quota; /json accepts them only when the service runs with --admin-token-file and the request carries its token".into(),
        );
    }
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
