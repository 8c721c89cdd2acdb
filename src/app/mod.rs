//! The composition root, in three phases:
//!
//! 1. [`bind`]: load the configuration and install it as generation 1 (the same door every
//!    reload uses, `install.rs`), build the counter store, the limiter and the metrics, set
//!    up reload (or, with `--config-xds`, the xDS source as a critical task: its first
//!    response is generation 1) and TLS, and bind the listeners (and the metrics listener of
//!    `--metrics-addr`). It returns a [`Bound`] service whose
//!    addresses are known (port 0 in tests) and which serves nothing yet.
//! 2. [`Bound::run`]: serve gRPC and admin HTTP, and wait for the shutdown future **or** any
//!    critical task ending: a server that dies at run time ends the process with an error
//!    instead of going unnoticed until SIGTERM.
//! 3. Drain (inside `run`): not ready at once, in-flight calls finish within
//!    `--drain-timeout`, then the admin side stops.
//!
//! `anyhow` lives here and in `main`: this is where errors become an exit code.

mod accept;
mod health;
mod run;
mod serve;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use self::accept::Budgeted;
use crate::admin::{AdminState, AdminToken};
use crate::config;
use crate::descriptor::RuleSet;
use crate::install::Installer;
use crate::limiter::{Clock, CounterStore, LimiterOptions, MemoryStore, RateLimiter, SystemClock};
use crate::metrics::{Metrics, TimedStore, process};
use crate::redis::{RedisOptions, RedisStore, RedisTarget};
use crate::reload::{self, Reloader};
use crate::service::Decider;
use crate::settings::ServeArgs;
use crate::tls::{ReloadingTls, TlsFiles};
use crate::watch;
use crate::xds::{XdsClient, XdsOptions};

/// Runs the service until `shutdown` resolves, then drains: [`bind`], then [`Bound::run`].
pub async fn run(args: ServeArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Kept to the end of `run`: dropping it exports the spans still queued.
    let _tracing = crate::telemetry::install(&args.tracing)?;
    bind(args).await?.run(shutdown).await
}

/// A task whose end, before shutdown, ends the service with an error.
type CriticalTask = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// A service built and bound to its listeners, not serving yet.
pub struct Bound {
    args: ServeArgs,
    grpc_listener: Budgeted,
    admin_listener: Budgeted,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    state: AdminState,
    health: HealthReporter,
    tls: Option<Arc<ReloadingTls>>,
    /// Kept alive for the life of the service (dropping a watcher stops it).
    _watches: Vec<notify::RecommendedWatcher>,
    critical: Vec<(&'static str, CriticalTask)>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("grpc_addr", &self.grpc_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The address the gRPC listener is bound to.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The address the admin listener is bound to.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Adds a task the service cannot run without (a configuration source, say): if it ends
    /// before shutdown, whether with an error or not, the service drains and `run` returns
    /// an error. It is started by [`Bound::run`] and aborted after the drain.
    pub fn add_critical_task(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.critical.push((name, Box::pin(task)));
    }
}

/// Builds the service and binds its listeners: everything that can fail on bad flags or a bad
/// configuration fails here, before anything is served.
pub async fn bind(args: ServeArgs) -> anyhow::Result<Bound> {
    // rustls needs one process-wide crypto provider; `Err` means one is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The xDS source's flags are checked (and its TLS files read) before anything else.
    let xds = XdsOptions::from_args(&args)?;
    // Every error at once, with file:line; warnings are logged when it is installed. From
    // xDS nothing is loaded here: the first response is, unless the service is to start
    // (and be ready) without limits until it arrives.
    let loaded = match &xds {
        None => Some(config::load_paths(&args.config)?),
        Some(_) if args.force_start_without_initial_config => Some(config::load_sources(&[])?),
        Some(_) => None,
    };
    let metrics = Arc::new(Metrics::new(
        args.near_limit_ratio,
        args.soft_consumer_labels,
    )?);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (store, redis) = build_store(&args, &clock)?;
    let counter_store = redis.clone().unwrap_or_else(|| "memory".to_owned());
    let limiter = Arc::new(RateLimiter::new(
        Arc::new(RuleSet::default()),
        Arc::new(TimedStore::new(store, metrics.clone())),
        clock,
        LimiterOptions {
            shadow_mode: args.shadow_mode,
            // Only a remote store is worth sparing; the memory store is as fast as the cache.
            over_limit_cache: redis.is_some(),
            over_limit_cache_ttl: args.over_limit_cache_ttl,
            quota_mode: args.quota_mode,
            response_dynamic_metadata: args.response_dynamic_metadata,
        },
    ));
    let installer = Arc::new(Installer::new(limiter.clone(), metrics.clone()));
    if let Some(loaded) = loaded {
        installer.install(loaded);
    }

    let mut watches = Vec::new();
    let mut critical: Vec<(&'static str, CriticalTask)> = Vec::new();
    match xds {
        Some(options) => {
            tracing::info!(server = %options.uri(), "configuration from xDS");
            let client = XdsClient::new(options, installer, metrics.clone());
            critical.push((
                "xDS configuration source",
                Box::pin(async move {
                    client.run().await;
                    Ok(())
                }),
            ));
            tokio::spawn(reload::ignore_sighup());
        }
        None => {
            let reloader = Arc::new(Reloader::new(
                args.config.clone(),
                installer,
                metrics.clone(),
            ));
            let on_change = {
                let r = reloader.clone();
                move || {
                    r.reload(false);
                }
            };
            // Without a watcher SIGHUP still reloads.
            match watch::watch("configuration", &args.config, on_change) {
                Ok(w) => watches.push(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the configuration; reload with SIGHUP")
                }
            }
            tokio::spawn(reload::on_sighup(reloader));
        }
    }

    let tls = match (&args.grpc_tls_cert, &args.grpc_tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(ReloadingTls::load(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: args.grpc_tls_client_ca.clone(),
        })?)),
        _ => None,
    };
    if let Some(t) = &tls {
        let t2 = t.clone();
        watches.push(watch::watch("TLS", &t.files().paths(), move || {
            t2.reload()
        })?);
    }

    let decider = Decider::new(
        limiter.clone(),
        metrics.clone(),
        args.on_backend_error,
        args.shadow_mode,
    );
    let token = match &args.admin_token_file {
        Some(path) => Some(Arc::new(AdminToken::load(path)?)),
        None => None,
    };
    let state = AdminState {
        limiter,
        counter_store: counter_store.as_str().into(),
        draining: Arc::new(AtomicBool::new(false)),
        metrics: metrics.clone(),
        decider,
        response_headers: args.response_headers,
        token,
    };
    let health = HealthReporter::new();
    // Known (NOT_SERVING) from the first call, not NOT_FOUND until the first probe.
    health::set(&health, ServingStatus::NotServing).await;

    let max_fds = process::max_fds();
    let admin_budget = args.admin_max_connections;
    let grpc_budget = accept::grpc_budget(args.max_connections, admin_budget, max_fds);
    if grpc_budget < args.max_connections {
        tracing::warn!(
            max_connections = args.max_connections,
            grpc_budget,
            max_fds,
            "--max-connections lowered to fit the file-descriptor limit (ulimit -n) after the admin budget and a reserve; raise the limit to accept more"
        );
    }
    let grpc_listener = bind_listener(args.grpc_addr, "gRPC")?;
    let admin_listener = bind_listener(args.admin_addr, "admin")?;
    let grpc_addr = grpc_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let budgeted = |listener, name, budget: u64| Budgeted {
        listener,
        name,
        budget: usize::try_from(budget).unwrap_or(usize::MAX),
        metrics: metrics.listener(name, usize::try_from(budget).unwrap_or(usize::MAX)),
    };
    tracing::info!(
        %grpc_addr,
        %admin_addr,
        grpc_tls = tls.is_some(),
        mutual_tls = args.grpc_tls_client_ca.is_some(),
        store = %counter_store,
        grpc_max_connections = grpc_budget,
        admin_max_connections = admin_budget,
        admin_token = state.token.is_some(),
        "listening"
    );
    let grpc_listener = budgeted(grpc_listener, "grpc", grpc_budget);
    let admin_listener = budgeted(admin_listener, "admin", admin_budget);
    if let Some(addr) = args.metrics_addr {
        // Its own listener (the reference's PROMETHEUS_ADDR), sharing the admin budget's
        // size but not its connections, so a scraper and the probes never starve each other.
        let listener = bind_listener(addr, "metrics")?;
        let metrics_addr = listener.local_addr()?;
        let listener = budgeted(listener, "metrics", admin_budget);
        let router = crate::admin::metrics_router(state.clone(), &args.metrics_path);
        tracing::info!(%metrics_addr, path = %args.metrics_path, "metrics listening");
        critical.push((
            "metrics server",
            Box::pin(async move {
                // Never sent: the task is stopped by being aborted after the drain, and
                // the sender is kept so that the server does not read its drop as a stop.
                let (_keep, stop) = tokio::sync::watch::channel(false);
                serve::admin(router, listener, stop).await
            }),
        ));
    }
    Ok(Bound {
        args,
        grpc_listener,
        admin_listener,
        grpc_addr,
        admin_addr,
        state,
        health,
        tls,
        _watches: watches,
        critical,
    })
}

/// The counter store named by the flags, and (for Redis) its description with credentials
/// redacted.
fn build_store(
    args: &ServeArgs,
    clock: &Arc<dyn Clock>,
) -> anyhow::Result<(Arc<dyn CounterStore>, Option<String>)> {
    let mut target = match (&args.redis_url, args.redis_cluster_url.as_slice()) {
        (Some(url), _) => RedisTarget::Single(url.clone()),
        (None, []) if args.redis_sentinel.is_some() => {
            RedisTarget::Sentinel(*args.redis_sentinel.clone().context("checked just above")?)
        }
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
    // compat_env's in-process password (REDIS_AUTH for a sentinel-named master).
    let password = password.or_else(|| args.redis_password.as_ref().map(|s| s.0.clone()));
    let sentinel_password = args
        .redis_sentinel_password_file
        .as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .with_context(|| {
                    format!("cannot read --redis-sentinel-password-file {}", p.display())
                })
        })
        .transpose()?;
    if let RedisTarget::Sentinel(t) = &mut target {
        t.password = sentinel_password;
    }
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
        ..RedisOptions::defaults()
    })?;
    let described = store.described().to_owned();
    Ok((store, Some(described)))
}

/// Connections the kernel completes and queues for a listener while its budget is full (the
/// kernel caps it at `net.core.somaxconn`). Past it new connections are not answered and
/// their clients retry.
const LISTEN_BACKLOG: u32 = 1024;

fn bind_listener(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    };
    socket
        .and_then(|s| {
            // As std's bind does: a restarted service can bind while old connections linger.
            s.set_reuseaddr(true)?;
            s.bind(addr)?;
            s.listen(LISTEN_BACKLOG)
        })
        .with_context(|| format!("cannot bind the {what} listener to {addr}"))
}
