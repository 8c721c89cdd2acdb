//! The compiled rules: resolve (domain, descriptor) → the counters it touches, and the
//! collision-free encoding of counter keys.
//!
//! Two compilers share the types defined here, and [`RuleSet`] picks one per domain:
//! `rules` for the endpoint format (docs/limits-format.md §3–§4: entries looked up by key)
//! and `tree` for the envoyproxy/ratelimit format (docs/envoy-compat.md: entries matched in
//! order). Each depends on this module only, never on the other.
//!
//! Pure: must not depend on tonic, prost, redis, notify, HTTP crates or `std::env`. Depends
//! on `config` for the validated model and for [`normalize_path`], which the loader also uses
//! so that a prefix is stored in the form request paths are matched in.

mod explain;
#[cfg(test)]
mod fixtures;
mod key;
mod prefix_set;
mod rules;
mod tree;
mod wildcard;

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

pub use crate::config::normalize_path;
pub use explain::{Applies, Explanation, Format, Step};
pub use key::{CounterKey, CounterScope};
pub use rules::ANONYMOUS;

use crate::config::{Config, Counting, Metadata, Soft, Unit};
use rules::EndpointSet;
use tree::DescriptorTree;

/// One descriptor entry, as Envoy sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry key.
    pub key: String,
    /// The entry value.
    pub value: String,
}

/// A counter that a request touches, with the limit that applies to it now.
#[derive(Debug, Clone)]
pub struct CounterRule {
    /// Identity of the counter (no limit in it).
    pub key: CounterKey,
    /// Allowed hits per window.
    pub limit: u32,
    /// Window unit.
    pub unit: Unit,
    /// Window multiplier, algorithm and bucket capacity.
    pub counting: Counting,
    /// Stable, bounded rule name: `current_limit.name` and the `rule` metric label.
    pub name: Arc<str>,
    /// The endpoint is in shadow mode: this counter never causes a rejection.
    pub shadow: bool,
    /// Soft thresholds that watch this counter (consumer counters only, not the overall one).
    pub soft: Option<Soft>,
    /// Labels for soft-threshold metrics.
    pub labels: CounterLabels,
    /// With `detailed_metric`: the request's entries, as the metric's `rule` label (bounded
    /// by the metrics).
    pub detail: Option<String>,
    /// The rule's configured `name` (what `replaces` refers to).
    pub configured_name: Option<Arc<str>>,
    /// Names of rules this one replaces when both match in one request.
    pub replaces: Arc<[Arc<str>]>,
    /// Quota mode (docs/envoy-compat.md §4): over limit shows in the descriptor's status but
    /// does not by itself deny the request, and every hit is counted.
    pub quota: bool,
    /// The rule's `metadata`, returned in the response's dynamic metadata when it passes.
    pub metadata: Option<Arc<Metadata>>,
    /// What an adapter resolved for this rule once (the metrics' handles), shared by every
    /// counter the compiled rule yields.
    pub cache: RuleCache,
}

/// A place, made once per compiled rule, where an adapter keeps what it derived from the
/// rule (the metrics keep its `ratelimit_hits_total` handles there, so a request does not
/// look them up by label strings). Opaque here: this module knows nothing of metrics. Rules
/// made for one request (a limit override) get [`RuleCache::none`], which keeps nothing.
#[derive(Clone, Default)]
pub struct RuleCache(Option<Arc<OnceLock<Box<dyn Any + Send + Sync>>>>);

impl RuleCache {
    /// An empty place, for a rule of the compiled configuration.
    pub fn new() -> Self {
        RuleCache(Some(Arc::new(OnceLock::new())))
    }

    /// No place: for a rule built for one request, whose cache would serve no other.
    pub fn none() -> Self {
        RuleCache(None)
    }

    /// The value kept here, made by `init` on first use; `None` when this is no place, or
    /// when it holds a value of another type.
    pub fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> Option<&T> {
        let slot = self.0.as_deref()?;
        slot.get_or_init(|| Box::new(init())).downcast_ref()
    }
}

impl std::fmt::Debug for RuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.0 {
            None => "none",
            Some(slot) if slot.get().is_some() => "filled",
            Some(_) => "empty",
        };
        write!(f, "RuleCache({state})")
    }
}

/// Where a counter sits, for metrics and logs.
#[derive(Debug, Clone)]
pub struct CounterLabels {
    /// The endpoint's shortname.
    pub endpoint: Arc<str>,
    /// The prefix, or `None` for the overall counter.
    pub prefix: Option<Arc<str>>,
    /// The client id, or `None` when anonymous or overall.
    pub consumer: Option<String>,
}

/// An endpoint whose `overall_limit` is 0: the request is over limit and nothing is counted.
#[derive(Debug, Clone)]
pub struct RejectAll {
    /// Rule name.
    pub name: Arc<str>,
    /// The endpoint's unit (reported in `current_limit`).
    pub unit: Unit,
    /// The endpoint's window multiplier (reported in `current_limit`).
    pub unit_multiplier: u32,
    /// Shadow mode: reported, but the answer stays OK.
    pub shadow: bool,
}

/// What one descriptor resolves to.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// Set when the endpoint rejects everything.
    pub reject_all: Option<RejectAll>,
    /// The counters to check and count. Empty with no `reject_all`: not limited.
    pub counters: Vec<CounterRule>,
    /// Why nothing applies, when nothing does (for metrics and debug logs).
    pub unmatched: Option<Unmatched>,
    /// Matched by an `unlimited: true` rule: OK with `limit_remaining` 4294967295, as the
    /// reference answers (docs/envoy-compat.md §6).
    pub unlimited: bool,
}

/// Why a descriptor got no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// The request's domain is not configured.
    UnknownDomain,
    /// No `endpoint` entry.
    NoEndpointEntry,
    /// The `endpoint` entry names no configured endpoint.
    UnknownEndpoint,
    /// The endpoint is known but no rule applies to this path and consumer.
    NoRule,
}

/// A request's override of the configured limit (Envoy's `RateLimitOverride`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    /// Hits per unit.
    pub requests_per_unit: u32,
    /// Window unit.
    pub unit: Unit,
    /// The window is `unit × unit_multiplier` (≥ 1).
    pub unit_multiplier: u32,
}

impl Resolved {
    /// Nothing applies, for the reason given.
    fn unmatched(why: Unmatched) -> Self {
        Resolved {
            unmatched: Some(why),
            ..Resolved::default()
        }
    }

    /// Exactly one counter applies.
    fn counted(rule: CounterRule) -> Self {
        Resolved {
            counters: vec![rule],
            ..Resolved::default()
        }
    }
}

/// All compiled rules of one configuration.
#[derive(Debug, Default)]
pub struct RuleSet {
    endpoints: HashMap<String, EndpointSet>,
    trees: HashMap<String, DescriptorTree>,
}

impl RuleSet {
    /// Compiles a validated configuration.
    pub fn compile(config: &Config) -> Self {
        let mut endpoints: HashMap<String, EndpointSet> = HashMap::new();
        for d in &config.domains {
            let set = endpoints.entry(d.domain.clone()).or_default();
            for ep in &d.endpoints {
                set.insert(&d.domain, ep);
            }
        }
        let trees = config
            .descriptor_domains
            .iter()
            .map(|d| (d.domain.clone(), DescriptorTree::compile(d)))
            .collect();
        RuleSet { endpoints, trees }
    }

    /// True when the domain has rules.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.endpoints.contains_key(domain) || self.trees.contains_key(domain)
    }

    /// Resolves one descriptor. In the endpoint format, entries are looked up by key, in any
    /// order, and when a key is repeated the first occurrence counts; a limit override is
    /// ignored. In the envoyproxy/ratelimit format, entries are matched in order.
    pub fn resolve(
        &self,
        domain: &str,
        entries: &[Entry],
        over: Option<LimitOverride>,
    ) -> Resolved {
        if let Some(tree) = self.trees.get(domain) {
            return tree.resolve(entries, over);
        }
        match self.endpoints.get(domain) {
            Some(set) => set.resolve(entries),
            None => Resolved::unmatched(Unmatched::UnknownDomain),
        }
    }
}
