//! Configuration reload from files: on a file change or SIGHUP, load every `--config` path
//! again and, if it is valid, install it through the same door as start-up
//! ([`Installer`]). An invalid configuration changes nothing: the previous one keeps
//! serving and the error is logged with file:line.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use crate::config;
use crate::install::Installer;
use crate::metrics::Metrics;

/// Reloads the configuration files into a running service.
#[derive(Debug)]
pub struct Reloader {
    paths: Vec<PathBuf>,
    installer: Arc<Installer>,
    metrics: Arc<Metrics>,
    /// Serialises reloads (a file event and SIGHUP may coincide), so the SHA-256 compared is
    /// the one of the configuration this reload would replace.
    lock: Mutex<()>,
}

impl Reloader {
    /// A reloader of `paths` installing through `installer`.
    pub fn new(paths: Vec<PathBuf>, installer: Arc<Installer>, metrics: Arc<Metrics>) -> Self {
        Reloader {
            paths,
            installer,
            metrics,
            lock: Mutex::new(()),
        }
    }

    /// Loads the configuration again. Unless `force`d (SIGHUP), a configuration identical to
    /// the one served (same SHA-256) is left alone. Returns true when a new generation was
    /// installed.
    pub fn reload(&self, force: bool) -> bool {
        let _one_at_a_time = self
            .lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.installer.current();
        match config::load_paths(&self.paths) {
            Ok(loaded) if !force && loaded.sha256 == current.sha256 => {
                tracing::debug!("configuration unchanged");
                false
            }
            Ok(loaded) => {
                self.installer.install(loaded);
                self.metrics.reload(true);
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

/// A task body for a service whose configuration does not come from files (xDS): SIGHUP
/// is logged and changes nothing, instead of killing the process with the default action.
pub fn ignore_sighup() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let hup = signal(SignalKind::hangup());
        async move {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot listen for SIGHUP");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!(
                    "SIGHUP received: the configuration comes from xDS; nothing to reload"
                );
            }
        }
    }
    #[cfg(not(unix))]
    async move {}
}
