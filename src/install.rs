//! The one door through which a configuration becomes the served one. Start-up installs
//! generation 1 through it, every reload installs the next generation through it, and a
//! second configuration source (xDS) would too: warnings logged, rules compiled, generation
//! numbered, the snapshot swapped into the limiter (which `/config` reads as well), the
//! gauges set and a summary logged, the same way whoever calls.
//!
//! What a source does around it (comparing SHA-256 to skip an unchanged reload, counting
//! reloads, keeping the old configuration on a failed load) stays with the source
//! (`reload.rs`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::Loaded;
use crate::limiter::{RateLimiter, Snapshot};
use crate::metrics::Metrics;

/// Installs configurations into a running limiter and numbers their generations.
#[derive(Debug)]
pub struct Installer {
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
    /// Two sources installing at once must not both take the same next generation.
    lock: Mutex<()>,
}

impl Installer {
    /// An installer for `limiter`, recording into `metrics`.
    pub fn new(limiter: Arc<RateLimiter>, metrics: Arc<Metrics>) -> Self {
        Installer {
            limiter,
            metrics,
            lock: Mutex::new(()),
        }
    }

    /// Serves `loaded` from now on as the next generation (1 for the first), and returns
    /// that generation.
    pub fn install(&self, loaded: Loaded) -> u64 {
        let _one_at_a_time = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.limiter.snapshot().generation + 1;
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let now = SystemTime::now();
        let snapshot = Arc::new(Snapshot::compile(generation, loaded, now));
        log_summary(&snapshot);
        self.metrics.config_hash(&snapshot.sha256);
        self.limiter.install(snapshot);
        self.metrics.config_loaded(generation, unix_secs(now));
        generation
    }

    /// The configuration being served.
    pub fn current(&self) -> Arc<Snapshot> {
        self.limiter.snapshot()
    }
}

/// Seconds since the epoch, for the last-success gauge.
fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One log line per installed configuration, with its summary.
fn log_summary(s: &Snapshot) {
    let domains = &s.config.domains;
    let endpoints: usize = domains.iter().map(|d| d.endpoints.len()).sum();
    let prefixes: usize = domains
        .iter()
        .flat_map(|d| &d.endpoints)
        .map(|e| e.uri_prefixes.len())
        .sum();
    tracing::info!(
        generation = s.generation,
        files = s.sources.len(),
        domains = domains.len(),
        endpoints,
        prefixes,
        warnings = s.warnings.len(),
        sha256 = %s.sha256,
        "configuration loaded"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Source, load_sources};
    use crate::descriptor::RuleSet;
    use crate::limiter::{LimiterOptions, ManualClock, MemoryStore};

    fn loaded(value: u32) -> Loaded {
        load_sources(&[Source {
            name: "t.yaml".into(),
            text: format!(
                "kcse_rate_limits:\n  endpoints:\n    - name: ep\n      shortname: ep\n      uri_prefixes:\n        - {{prefix: /, value: {value}}}\n"
            ),
        }])
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn generations_count_from_one_and_the_limiter_serves_the_last_install() {
        let clock = Arc::new(ManualClock::new(0));
        let limiter = Arc::new(RateLimiter::new(
            Arc::new(RuleSet::default()),
            Arc::new(MemoryStore::new(clock.clone())),
            clock,
            LimiterOptions::default(),
        ));
        let metrics = Arc::new(Metrics::new(0.8, 10).unwrap_or_else(|e| panic!("{e}")));
        let installer = Installer::new(limiter.clone(), metrics.clone());
        assert_eq!(installer.current().generation, 0, "nothing installed yet");

        let first = loaded(5);
        let sha = first.sha256.clone();
        assert_eq!(installer.install(first), 1);
        assert_eq!(installer.install(loaded(6)), 2);

        let s = limiter.snapshot();
        assert_eq!(s.generation, 2);
        assert_ne!(s.sha256, sha, "the second install is the one served");
        assert_eq!(s.config.domains[0].endpoints[0].uri_prefixes[0].value, 6);
        assert!(metrics.render().contains("ratelimit_config_generation 2"));
    }
}
