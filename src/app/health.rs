//! gRPC health (`grpc.health.v1.Health`) kept equal to readiness: SERVING for `""` and for
//! the RLS service while `/readyz` would answer 200, NOT_SERVING otherwise and from the
//! start of the drain on.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminState};
use crate::grpc::RateLimitGrpc;
use crate::proto::rate_limit_service_server::RateLimitServiceServer;

/// How often gRPC health follows readiness.
const INTERVAL: Duration = Duration::from_millis(250);

/// Sets both health names (the server as a whole, and the RLS service Envoy may ask about).
pub(super) async fn set(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <RateLimitServiceServer<RateLimitGrpc> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Keeps gRPC health equal to readiness (SERVING while ready) until draining.
pub(super) async fn follow_readiness(state: AdminState, health: HealthReporter) {
    let mut last = None;
    loop {
        if state.draining.load(Ordering::SeqCst) {
            return;
        }
        let status = match admin::readiness(&state).await {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        // Checked again: the drain may have started while the probe ran, and a late SERVING
        // must not overwrite its NOT_SERVING.
        if last != Some(status) && !state.draining.load(Ordering::SeqCst) {
            set(&health, status).await;
            last = Some(status);
        }
        tokio::time::sleep(INTERVAL).await;
    }
}
