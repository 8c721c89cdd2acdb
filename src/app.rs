//! The composition root: load the configuration, build the limiter and its store, bind the
//! listeners (port 0 in tests), serve, and drain on the stop signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::{self, AdminState, ConfigInfo};
use crate::config::{self, Loaded};
use crate::descriptor::RuleSet;
use crate::grpc::RateLimitGrpc;
use crate::limiter::{Clock, CounterStore, LimiterOptions, MemoryStore, RateLimiter, SystemClock};
use crate::redis::{RedisOptions, RedisStore, RedisTarget};
use crate::settings::ServeArgs;

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
    let loaded = load(&args)?;
    let rules = Arc::new(RuleSet::compile(&loaded.config));
    log_summary(&loaded);

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (store, store_description) = build_store(&args, &clock)?;
    let limiter = Arc::new(RateLimiter::new(
        rules,
        store,
        clock,
        LimiterOptions {
            shadow_mode: args.shadow_mode,
            // Only a remote store is worth sparing; the memory store is as fast as the cache.
            over_limit_cache: store_description.is_some(),
        },
    ));
    let draining = Arc::new(AtomicBool::new(false));
    let admin_state = AdminState {
        limiter: limiter.clone(),
        config: Arc::new(ArcSwap::from_pointee(ConfigInfo::new(
            1,
            &loaded,
            store_description.as_deref().unwrap_or("memory"),
        ))),
        draining: draining.clone(),
    };

    let grpc_listener = bind(args.grpc_addr, "gRPC").await?;
    let admin_listener = bind(args.admin_addr, "admin").await?;
    tracing::info!(
        grpc_addr = %grpc_listener.local_addr()?,
        admin_addr = %admin_listener.local_addr()?,
        store = store_description.as_deref().unwrap_or("memory"),
        "listening"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        // Either a stop was sent or the sender is gone: stop in both cases.
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                RateLimitGrpc::new(limiter, args.response_headers, args.on_backend_error)
                    .into_server(),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                stopped(stop_rx.clone()),
            ),
    );
    let admin = tokio::spawn(
        axum::serve(admin_listener, admin::router(admin_state))
            .with_graceful_shutdown(stopped(stop_rx))
            .into_future(),
    );

    shutdown.await;
    draining.store(true, Ordering::SeqCst);
    tracing::info!(drain_timeout = ?args.drain_timeout, "draining");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(args.drain_timeout, async {
        let g = grpc.await;
        let a = admin.await;
        (g, a)
    })
    .await;
    match drained {
        Ok((g, a)) => {
            g.context("gRPC server task")?.context("gRPC server")?;
            a.context("admin server task")?.context("admin server")?;
            tracing::info!("stopped");
        }
        Err(_) => tracing::warn!("drain timeout reached; exiting with calls still in flight"),
    }
    Ok(())
}

/// The counter store named by the flags, and (for Redis) its description with credentials
/// redacted.
fn build_store(
    args: &ServeArgs,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(Arc<dyn CounterStore>, Option<String>)> {
    let target = match (&args.redis_url, args.redis_cluster_url.as_slice()) {
        (Some(url), _) => RedisTarget::Single(url.clone()),
        (None, []) => return Ok((Arc::new(MemoryStore::new(clock.clone())), None)),
        (None, nodes) => RedisTarget::Cluster(nodes.to_vec()),
    };
    // rustls needs one process-wide crypto provider; `Err` means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
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

fn log_summary(loaded: &Loaded) {
    let domains = &loaded.config.domains;
    let endpoints: usize = domains.iter().map(|d| d.endpoints.len()).sum();
    let prefixes: usize = domains
        .iter()
        .flat_map(|d| &d.endpoints)
        .map(|e| e.uri_prefixes.len())
        .sum();
    tracing::info!(
        files = loaded.files.len(),
        domains = domains.len(),
        endpoints,
        prefixes,
        warnings = loaded.warnings.len(),
        sha256 = %loaded.sha256,
        "configuration loaded"
    );
}
