//! The composition root: load the configuration, build the counter store, the limiter and
//! the metrics, bind the listeners (port 0 in tests), serve gRPC and admin HTTP, reload on
//! change, and drain on the stop signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch as signal_watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminState, ConfigInfo};
use crate::config::{self, Loaded};
use crate::descriptor::RuleSet;
use crate::grpc::RateLimitGrpc;
use crate::limiter::{Clock, CounterStore, LimiterOptions, MemoryStore, RateLimiter, SystemClock};
use crate::metrics::{Metrics, TimedStore};
use crate::proto::rate_limit_service_server::RateLimitServiceServer;
use crate::redis::{RedisOptions, RedisStore, RedisTarget};
use crate::reload::{self, Reloader};
use crate::service::Decider;
use crate::settings::ServeArgs;
use crate::tls::{self, ReloadingTls, TlsFiles};
use crate::watch;

/// How often gRPC health follows readiness.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);

/// Loads the configuration or explains, with every error, why not.
pub fn load(args: &ServeArgs) -> anyhow::Result<Loaded> {
    let loaded = config::load_paths(&args.config)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded)
}

/// Runs the service until `shutdown` resolves, then drains.
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // rustls needs one process-wide crypto provider; `Err` means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let loaded = load(&args)?;
    let metrics = Arc::new(Metrics::new(
        args.near_limit_ratio,
        args.soft_consumer_labels,
    )?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (store, redis) = build_store(&args, &clock)?;
    let counter_store = redis.clone().unwrap_or_else(|| "memory".to_owned());
    let limiter = Arc::new(RateLimiter::new(
        Arc::new(RuleSet::compile(&loaded.config)),
        Arc::new(TimedStore::new(store, metrics.clone())),
        clock,
        LimiterOptions {
            shadow_mode: args.shadow_mode,
            // Only a remote store is worth sparing; the memory store is as fast as the cache.
            over_limit_cache: redis.is_some(),
            over_limit_cache_ttl: args.over_limit_cache_ttl,
        },
    ));
    let info = Arc::new(ArcSwap::from_pointee(ConfigInfo::new(
        1,
        &loaded,
        &counter_store,
    )));
    metrics.config_loaded(1, reload::unix_now());
    log_summary(&loaded, 1);

    let reloader = Arc::new(Reloader::new(
        args.config.clone(),
        limiter.clone(),
        info.clone(),
        metrics.clone(),
        counter_store.clone(),
    ));
    let on_change = {
        let r = reloader.clone();
        move || {
            r.reload(false);
        }
    };
    // Kept alive for the life of the service; without it SIGHUP still reloads.
    let _config_watch = watch::watch("configuration", &args.config, on_change)
        .inspect_err(
            |e| tracing::warn!(error = %e, "cannot watch the configuration; reload with SIGHUP"),
        )
        .ok();
    tokio::spawn(reload::on_sighup(reloader));

    let tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(ReloadingTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.grpc_tls_client_ca.clone(),
        })?)),
        _ => None,
    };
    let _tls_watch = match &tls {
        Some(t) => {
            let t2 = t.clone();
            Some(watch::watch("TLS", &t.files().paths(), move || {
                t2.reload()
            })?)
        }
        None => None,
    };

    let decider = Decider::new(
        limiter.clone(),
        metrics.clone(),
        args.on_backend_error,
        args.shadow_mode,
    );
    let draining = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        limiter,
        config: info,
        draining: draining.clone(),
        metrics,
        decider: decider.clone(),
        response_headers: args.response_headers,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    // Known (NOT_SERVING) from the first call, not NOT_FOUND until the first probe.
    set_health(&health, ServingStatus::NotServing).await;
    tokio::spawn(follow_readiness(admin_state.clone(), health.clone()));
    // Both reflection versions: grpcurl and older tools still ask v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("gRPC reflection")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("gRPC reflection")?;

    let grpc_listener = bind(args.grpc_addr, "gRPC").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    tracing::info!(
        grpc_addr = %grpc_listener.local_addr()?,
        admin_addr = %admin_listener.local_addr()?,
        grpc_tls = tls.is_some(),
        mutual_tls = args.grpc_tls_client_ca.is_some(),
        store = %counter_store,
        "listening"
    );

    let (grpc_stop, grpc_stop_rx) = signal_watch::channel(false);
    let (admin_stop, admin_stop_rx) = signal_watch::channel(false);
    let router = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(RateLimitGrpc::new(decider, args.response_headers).into_server());
    let grpc = match tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            tls::incoming(grpc_listener, tls),
            stopped(grpc_stop_rx),
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            stopped(grpc_stop_rx),
        )),
    };
    let admin = tokio::spawn(
        axum::serve(admin_listener, admin::router(admin_state))
            .with_graceful_shutdown(stopped(admin_stop_rx))
            .into_future(),
    );

    shutdown.await;
    // Not ready at once, so load balancers and Envoy health checks stop sending; the admin
    // side keeps answering (503) while in-flight calls finish.
    draining.store(true, Ordering::SeqCst);
    set_health(&health, ServingStatus::NotServing).await;
    tracing::info!(drain_timeout = ?args.drain_timeout, "draining");
    let _ = grpc_stop.send(true);
    match tokio::time::timeout(args.drain_timeout, grpc).await {
        Ok(done) => done.context("gRPC server task")?.context("gRPC server")?,
        Err(_) => tracing::warn!("drain timeout reached; exiting with calls still in flight"),
    }
    let _ = admin_stop.send(true);
    if let Ok(done) = tokio::time::timeout(Duration::from_secs(1), admin).await {
        done.context("admin server task")?.context("admin server")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves when a stop is sent (or the sender is gone).
async fn stopped(mut rx: signal_watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health
        .set_service_status(
            <RateLimitServiceServer<RateLimitGrpc> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
}

/// Keeps gRPC health equal to readiness (SERVING while ready) until draining.
async fn follow_readiness(state: AdminState, health: HealthReporter) {
    let mut last = None;
    loop {
        if state.draining.load(Ordering::SeqCst) {
            return;
        }
        let status = match admin::readiness(&state).await {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        };
        if last != Some(status) && !state.draining.load(Ordering::SeqCst) {
            set_health(&health, status).await;
            last = Some(status);
        }
        tokio::time::sleep(HEALTH_INTERVAL).await;
    }
}

/// The counter store named by the flags, and (for Redis) its description with credentials
/// redacted.
fn build_store(
    args: &ServeArgs,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(Arc<dyn CounterStore>, Option<String>)> {
    let target = match (&args.redis_url, args.redis_cluster_url.as_slice()) {
        (Some(url), _) => RedisTarget::Single(url.clone()),
        (None, []) => {
            let store = MemoryStore::with_max_counters(clock.clone(), args.memory_max_counters);
            return Ok((Arc::new(store), None));
        }
        (None, nodes) => RedisTarget::Cluster(nodes.to_vec()),
    };
    let password = args
        .redis_password_file
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .with_context(|| format!("cannot read --redis-password-file {}", p.display()))
        })
        .transpose()?;
    let ca_pem = args
        .redis_ca_file
        .as_ref()
        .map(|p| {
            std::fs::read(p).with_context(|| format!("cannot read --redis-ca-file {}", p.display()))
        })
        .transpose()?;
    let store = RedisStore::new(RedisOptions {
        target,
        password,
        ca_pem,
        timeout: args.redis_timeout,
        key_prefix: args.redis_key_prefix.clone(),
    })?;
    let described = store.described().to_owned();
    Ok((store, Some(described)))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the {what} listener to {addr}"))
}

/// One log line per configuration load, with its summary.
pub fn log_summary(loaded: &Loaded, generation: u64) {
    let domains = &loaded.config.domains;
    let endpoints: usize = domains.iter().map(|d| d.endpoints.len()).sum();
    let prefixes: usize = domains
        .iter()
        .flat_map(|d| &d.endpoints)
        .map(|e| e.uri_prefixes.len())
        .sum();
    tracing::info!(
        generation,
        files = loaded.files.len(),
        domains = domains.len(),
        endpoints,
        prefixes,
        warnings = loaded.warnings.len(),
        sha256 = %loaded.sha256,
        "configuration loaded"
    );
}
