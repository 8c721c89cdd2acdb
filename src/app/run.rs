//! Phases 2 and 3: serve, supervise, drain.
//!
//! The gRPC server, the admin server and any task added with
//! [`Bound::add_critical_task`] are critical: `run` waits for the shutdown future or the
//! first of them to end, whichever comes first. A critical task ending before shutdown is a
//! failure even when it returns `Ok` (a server that stops accepting is as dead as one that
//! errs); the service then drains like on SIGTERM and `run` returns the error, so the process
//! exits non-zero and its supervisor (Kubernetes) restarts it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use futures_util::future::select_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use super::{Bound, health, serve};
use crate::admin;
use crate::grpc::{Port, RateLimitGrpc};

/// How long the admin side may take to stop once the gRPC side has drained.
const ADMIN_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// A spawned critical task and its name for the error.
struct Running {
    name: &'static str,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Bound {
    /// Serves until `shutdown` resolves or a critical task ends, then drains. `Ok` after a
    /// requested shutdown; the failure when a critical task ended first.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Bound {
            args,
            grpc_listener,
            admin_listener,
            state,
            health,
            tls,
            _watches,
            critical,
            ..
        } = self;

        // Both reflection versions: grpcurl and older tools still ask v1alpha.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().context("gRPC reflection")?;
        let reflection_v1alpha = reflection().build_v1alpha().context("gRPC reflection")?;

        let (grpc_stop, grpc_stop_rx) = watch::channel(false);
        let (admin_stop, admin_stop_rx) = watch::channel(false);
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        let routes = tonic::service::Routes::new(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
        let port = Arc::new(Port::new(
            RateLimitGrpc::new(state.decider.clone(), args.response_headers),
            routes,
            serve::http2(&args),
        ));
        let hard_close_after = args
            .grpc_max_connection_age
            .map(|age| age + args.grpc_max_connection_age_grace);
        let grpc = tokio::spawn(serve::grpc(
            port,
            grpc_listener,
            tls,
            hard_close_after,
            grpc_stop_rx,
        ));
        let admin = tokio::spawn(serve::admin(
            admin::router(state.clone()),
            admin_listener,
            admin_stop_rx,
        ));
        let mut running = vec![
            Running {
                name: "gRPC server",
                handle: grpc,
            },
            Running {
                name: "admin server",
                handle: admin,
            },
        ];
        running.extend(critical.into_iter().map(|(name, task)| Running {
            name,
            handle: tokio::spawn(task),
        }));
        let follower = tokio::spawn(health::follow_readiness(state.clone(), health.clone()));

        let failure = tokio::select! {
            () = shutdown => None,
            (ended, i, _) = select_all(running.iter_mut().map(|r| &mut r.handle)) => {
                let name = running[i].name;
                let error = match ended {
                    Ok(Ok(())) => anyhow::anyhow!("the {name} ended unexpectedly"),
                    Ok(Err(e)) => e.context(format!("the {name} failed")),
                    Err(e) => anyhow::anyhow!("the {name} task failed: {e}"),
                };
                tracing::error!("{error:#}; draining and exiting");
                running.remove(i);
                Some(error)
            }
        };

        // Not ready at once, so load balancers and Envoy health checks stop sending; the admin
        // side keeps answering (503) while in-flight calls finish. The follower is stopped
        // first so that it cannot write a late SERVING over the NOT_SERVING.
        state.draining.store(true, Ordering::SeqCst);
        follower.abort();
        let _ = follower.await;
        health::set(&health, ServingStatus::NotServing).await;
        tracing::info!(drain_timeout = ?args.drain_timeout, "draining");
        let _ = grpc_stop.send(true);
        if let Some(grpc) = take(&mut running, "gRPC server") {
            match tokio::time::timeout(args.drain_timeout, grpc).await {
                Ok(done) => keep_first(&failure, done.context("gRPC server task").and_then(|r| r))?,
                Err(_) => {
                    tracing::warn!("drain timeout reached; exiting with calls still in flight")
                }
            }
        }
        let _ = admin_stop.send(true);
        if let Some(admin) = take(&mut running, "admin server")
            && let Ok(done) = tokio::time::timeout(ADMIN_STOP_TIMEOUT, admin).await
        {
            keep_first(&failure, done.context("admin server task").and_then(|r| r))?;
        }
        for other in running {
            other.handle.abort();
        }
        match failure {
            Some(e) => Err(e),
            None => {
                tracing::info!("stopped");
                Ok(())
            }
        }
    }
}

/// Removes the running task called `name` (absent when it is the one that ended).
fn take(running: &mut Vec<Running>, name: &str) -> Option<JoinHandle<anyhow::Result<()>>> {
    let i = running.iter().position(|r| r.name == name)?;
    Some(running.remove(i).handle)
}

/// A drain error is returned unless a failure already ended the service (the first cause is
/// the one worth reporting; the later one is logged).
fn keep_first(failure: &Option<anyhow::Error>, drained: anyhow::Result<()>) -> anyhow::Result<()> {
    match (failure, drained) {
        (_, Ok(())) => Ok(()),
        (None, Err(e)) => Err(e),
        (Some(_), Err(e)) => {
            tracing::warn!("while draining: {e:#}");
            Ok(())
        }
    }
}
