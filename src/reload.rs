//! Configuration reload: on a file change or SIGHUP, load every `--config` path again and,
//! if it is valid, swap the new rules in atomically. An invalid configuration changes
//! nothing: the previous one keeps serving and the error is logged with file:line.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use crate::admin::ConfigInfo;
use crate::config::{self, Loaded};
use crate::descriptor::RuleSet;
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;

/// Reloads the configuration into a running limiter.
#[derive(Debug)]
pub struct Reloader {
    paths: Vec<PathBuf>,
    limiter: Arc<RateLimiter>,
    info: Arc<ArcSwap<ConfigInfo>>,
    metrics: Arc<Metrics>,
    counter_store: String,
    /// Serialises reloads (a file event and SIGHUP may coincide).
    lock: Mutex<()>,
}

impl Reloader {
    /// A reloader for the configuration that `info` describes (generation 1 at start-up).
    pub fn new(
        paths: Vec<PathBuf>,
        limiter: Arc<RateLimiter>,
        info: Arc<ArcSwap<ConfigInfo>>,
        metrics: Arc<Metrics>,
        counter_store: String,
    ) -> Self {
        Reloader {
            paths,
            limiter,
            info,
            metrics,
            counter_store,
            lock: Mutex::new(()),
        }
    }

    /// Loads the configuration again. Unless `force`d (SIGHUP), a configuration identical to
    /// the one served (same SHA-256) is left alone. Returns true when new rules were swapped in.
    pub fn reload(&self, force: bool) -> bool {
        let _one_at_a_time = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.info.load_full();
        match config::load_paths(&self.paths) {
            Ok(loaded) if !force && loaded.sha256 == current.sha256 => {
                tracing::debug!("configuration unchanged");
                false
            }
            Ok(loaded) => {
                self.swap_in(&loaded, current.generation + 1);
                true
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(
                    generation = current.generation,
                    "configuration reload failed; the previous configuration keeps serving: {e}"
                );
                false
            }
        }
    }

    fn swap_in(&self, loaded: &Loaded, generation: u64) {
        // Rules first, then what /config reports: a request sees old or new rules, never a mix.
        self.limiter
            .replace_rules(Arc::new(RuleSet::compile(&loaded.config)));
        self.info.store(Arc::new(ConfigInfo::new(
            generation,
            loaded,
            &self.counter_store,
        )));
        self.metrics.reload(true);
        self.metrics.config_loaded(generation, unix_now());
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        crate::app::log_summary(loaded, generation);
    }
}

/// Seconds since the epoch, for the last-success gauge.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A task body that reloads (forced) on every SIGHUP until the process ends. The handler is
/// installed by this call, before the service reports that it listens: a SIGHUP that arrives
/// early must reload, not kill the process with the default action.
pub fn on_sighup(reloader: Arc<Reloader>) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hup = signal(SignalKind::hangup());
        async move {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP; reload on SIGHUP is off");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the configuration");
                reloader.reload(true);
            }
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = reloader;
    }
}
