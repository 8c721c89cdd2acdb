//! The configuration being served, as one value: its generation, where it came from, its
//! SHA-256, when it was installed, the effective rules as loaded and the rules compiled for
//! lookup. The limiter decides with it and `/config` reports it, both from the same
//! [`Snapshot`] behind one swap, so what `/config` says is exactly what requests see.
//!
//! Pure: knows nothing about files, signals or HTTP; the installer (`install.rs`) builds
//! snapshots and hands them to [`super::RateLimiter::install`].

use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{Config, Diagnostic, Loaded};
use crate::descriptor::RuleSet;

/// One installed configuration.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 for the first configuration installed, one more for each install after it; 0 means
    /// nothing has been installed yet (the limiter then limits nothing).
    pub generation: u64,
    /// Where the configuration came from (file names, in load order).
    pub sources: Vec<String>,
    /// SHA-256 over the sources' names and contents, hex; empty for generation 0.
    pub sha256: String,
    /// When it was installed.
    pub loaded_at: SystemTime,
    /// Warnings found while loading (the configuration is valid).
    pub warnings: Vec<Diagnostic>,
    /// The effective rules, defaults applied (what `/config` shows).
    pub config: Config,
    /// The same rules compiled for lookup (what requests are decided with).
    pub rules: Arc<RuleSet>,
}

impl Snapshot {
    /// Generation 0: `rules` with no configuration behind them (a limiter built directly,
    /// as in tests and benchmarks, or a service before its first install).
    pub fn initial(rules: Arc<RuleSet>) -> Self {
        Snapshot {
            generation: 0,
            sources: Vec::new(),
            sha256: String::new(),
            loaded_at: SystemTime::UNIX_EPOCH,
            warnings: Vec::new(),
            config: Config::default(),
            rules,
        }
    }

    /// Compiles a loaded configuration into the snapshot of `generation`, installed at
    /// `loaded_at`.
    pub fn compile(generation: u64, loaded: Loaded, loaded_at: SystemTime) -> Self {
        Snapshot {
            generation,
            rules: Arc::new(RuleSet::compile(&loaded.config)),
            sources: loaded.files,
            sha256: loaded.sha256,
            loaded_at,
            warnings: loaded.warnings,
            config: loaded.config,
        }
    }
}
