//! The admin HTTP side: `/healthz`, `/readyz`, `/config` (service.md §3).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::Serialize;

use crate::config::{Config, Diagnostic, Loaded};
use crate::limiter::RateLimiter;

/// How long `/readyz` waits for the counter store before calling it unready.
const READY_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What `/config` reports about the configuration being served.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigInfo {
    /// Grows by one on every successful load.
    pub generation: u64,
    /// SHA-256 over the files' names and contents.
    pub sha256: String,
    /// The files, in load order.
    pub files: Vec<String>,
    /// When it was loaded (RFC 3339, UTC).
    pub loaded_at: String,
    /// Warnings found while loading.
    pub warnings: Vec<Diagnostic>,
    /// The counter store (`memory`, or the Redis target with credentials redacted).
    pub counter_store: String,
    /// The effective rules, defaults applied.
    pub rules: Config,
}

impl ConfigInfo {
    /// Describes a configuration that just loaded.
    pub fn new(generation: u64, loaded: &Loaded, counter_store: &str) -> Self {
        ConfigInfo {
            generation,
            sha256: loaded.sha256.clone(),
            files: loaded.files.clone(),
            loaded_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            warnings: loaded.warnings.clone(),
            counter_store: counter_store.to_owned(),
            rules: loaded.config.clone(),
        }
    }
}

/// Shared state of the admin endpoints.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The limiter (its store answers readiness probes).
    pub limiter: Arc<RateLimiter>,
    /// The configuration being served.
    pub config: Arc<ArcSwap<ConfigInfo>>,
    /// Set from SIGTERM on: `/readyz` answers 503 so load balancers stop sending.
    pub draining: Arc<AtomicBool>,
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/config", get(config))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.draining.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response();
    }
    let store = s.limiter.store();
    match tokio::time::timeout(READY_PROBE_TIMEOUT, store.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: {} counter store did not answer within {READY_PROBE_TIMEOUT:?}\n",
                store.kind()
            ),
        )
            .into_response(),
    }
}

async fn config(State(s): State<AdminState>) -> Json<Arc<ConfigInfo>> {
    Json(s.config.load_full())
}
