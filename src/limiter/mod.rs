//! The decision: which descriptors are over limit, what to count, and what to answer.
//!
//! Owns: hits (request, per descriptor, check-only, negative), shadow mode, the
//! all-or-nothing count of a request's counters through a [`CounterStore`], and the per
//! descriptor statuses (docs/limits-format.md §4–§5), and `overall_code` combined as the
//! reference combines it with quota mode (docs/envoy-compat.md §4), with the dynamic metadata
//! the reference returns (docs/envoy-compat.md §5). Each counter counts with its rule's
//! algorithm (fixed window, sliding window, token bucket: docs/algorithms.md), which the store
//! applies; a request mixing them is still one atomic step. Time comes from an injected
//! [`Clock`].
//! Pure: must not depend on tonic, prost, redis, notify, HTTP crates or `std::env`.

pub mod clock;
pub mod conformance;
pub mod memory;
pub mod over_limit_cache;
pub mod request;
pub mod snapshot;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::{Value, json};

pub use clock::{Clock, ManualClock, SystemClock};
pub use memory::{DEFAULT_MAX_COUNTERS, MemoryStore};
pub use over_limit_cache::OverLimitCache;
pub use request::{Descriptor, InvalidRequest, Request};
pub use snapshot::Snapshot;
pub use store::{
    BatchOutcome, CounterOp, CounterState, CounterStore, MAX_EXACT, StoreError, StoreFuture,
};

use crate::config::{Algorithm, Metadata, Unit};
use crate::descriptor::{CounterRule, Resolved, RuleSet, Unmatched};

/// The answer for a request or a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Within limits (or not limited).
    Ok,
    /// Over limit.
    OverLimit,
}

/// The limit reported in a status (`current_limit`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentLimit {
    /// The rule's stable name.
    pub name: Arc<str>,
    /// Hits per window.
    pub requests_per_unit: u32,
    /// Window unit.
    pub unit: Unit,
    /// The window is `unit × unit_multiplier`.
    pub unit_multiplier: u32,
}

/// The answer for one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// This descriptor's own code (OK when only another descriptor was over).
    pub code: Code,
    /// The counter that decided: the violated one, else the one with the least remaining.
    /// `None` when no rule limits the descriptor.
    pub current_limit: Option<CurrentLimit>,
    /// Hits left in the deciding counter's window.
    pub limit_remaining: u32,
    /// Time until the deciding counter's window ends.
    pub duration_until_reset: Option<Duration>,
}

/// What happened to one counter, for metrics and logs.
#[derive(Debug, Clone)]
pub struct CounterOutcome {
    /// Index of the request descriptor it belongs to.
    pub descriptor: usize,
    /// The rule.
    pub rule: CounterRule,
    /// Hits the descriptor asked for.
    pub hits: u64,
    /// Its state.
    pub state: CounterState,
}

/// The answer to a request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// OVER_LIMIT if any descriptor is over limit (never under global shadow mode).
    pub overall_code: Code,
    /// One status per request descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
    /// Every counter touched.
    pub counters: Vec<CounterOutcome>,
    /// Why each descriptor got no limit, where it got none.
    pub unmatched: Vec<(usize, Unmatched)>,
    /// True when the counters were incremented.
    pub committed: bool,
    /// With `--response-dynamic-metadata`: the response's `dynamic_metadata`, as the
    /// reference builds it (docs/envoy-compat.md §5). `None`: none.
    pub dynamic_metadata: Option<Metadata>,
}

/// Why a request could not be decided.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitError {
    /// The request broke a bound; answer INVALID_ARGUMENT.
    #[error("invalid request: {0}")]
    Invalid(#[from] InvalidRequest),
    /// The counter store failed; answer per `--on-backend-error`.
    #[error(transparent)]
    Backend(#[from] StoreError),
}

/// Options that change answers, not rules.
#[derive(Debug, Clone, Copy)]
pub struct LimiterOptions {
    /// Global shadow mode: `overall_code` is never OVER_LIMIT; statuses stay truthful.
    pub shadow_mode: bool,
    /// Answer requests that hit a counter known to be full without asking the store, until
    /// its window ends or `over_limit_cache_ttl` passes (for a shared, remote store).
    pub over_limit_cache: bool,
    /// How long a full counter is answered locally at most (`--over-limit-cache-ttl`): how
    /// soon quota given back through another replica is seen here.
    pub over_limit_cache_ttl: Duration,
    /// Global quota mode (`--quota-mode`): every descriptor is in quota mode.
    pub quota_mode: bool,
    /// Build the response's dynamic metadata (`--response-dynamic-metadata`).
    pub response_dynamic_metadata: bool,
}

/// `--over-limit-cache-ttl`'s default.
pub const DEFAULT_OVER_LIMIT_CACHE_TTL: Duration = Duration::from_secs(1);

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            shadow_mode: false,
            over_limit_cache: false,
            over_limit_cache_ttl: DEFAULT_OVER_LIMIT_CACHE_TTL,
            quota_mode: false,
            response_dynamic_metadata: false,
        }
    }
}

/// Most counters the over-limit cache remembers.
pub const OVER_LIMIT_CACHE_CAPACITY: usize = 100_000;

/// The rate limiter: the configuration being served, a counter store and a clock.
#[derive(Debug)]
pub struct RateLimiter {
    /// The one place the served configuration lives: requests and `/config` both read it.
    current: ArcSwap<Snapshot>,
    store: Arc<dyn CounterStore>,
    clock: Arc<dyn Clock>,
    options: LimiterOptions,
    full: Option<OverLimitCache>,
}

impl RateLimiter {
    /// A limiter serving `rules` as generation 0, until a configuration is installed.
    pub fn new(
        rules: Arc<RuleSet>,
        store: Arc<dyn CounterStore>,
        clock: Arc<dyn Clock>,
        options: LimiterOptions,
    ) -> Self {
        RateLimiter {
            current: ArcSwap::from_pointee(Snapshot::initial(rules)),
            store,
            clock,
            options,
            full: options.over_limit_cache.then(|| {
                OverLimitCache::new(OVER_LIMIT_CACHE_CAPACITY, options.over_limit_cache_ttl)
            }),
        }
    }

    /// Serves `snapshot` from now on, in one atomic swap: a request sees the old rules or the
    /// new ones, never a mix, and a request in flight keeps the rules it started with.
    /// Counters are untouched (a counter's identity holds no limit); the over-limit cache is
    /// cleared, since a new limit may admit what the old one refused.
    pub fn install(&self, snapshot: Arc<Snapshot>) {
        self.current.store(snapshot);
        if let Some(full) = &self.full {
            full.clear();
        }
    }

    /// The configuration being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The counter store.
    pub fn store(&self) -> &Arc<dyn CounterStore> {
        &self.store
    }

    /// Decides a request: checks every counter of every descriptor and counts them all, or
    /// none when any enforcing counter is over its limit.
    pub async fn should_rate_limit(&self, req: &Request) -> Result<Decision, LimitError> {
        req.validate()?;
        let current = self.current.load_full();
        let rules = &current.rules;
        let mut resolved: Vec<Resolved> = req
            .descriptors
            .iter()
            .map(|d| rules.resolve(&req.domain, &d.entries, d.limit_override))
            .collect();
        apply_replaces(&mut resolved);

        let mut ops = Vec::new();
        let mut owners = Vec::new();
        let mut reject_all = false;
        for (i, (d, r)) in req.descriptors.iter().zip(&resolved).enumerate() {
            reject_all |= r.reject_all.as_ref().is_some_and(|x| !x.shadow);
            let hits = req.hits_for(d);
            for rule in &r.counters {
                ops.push(CounterOp {
                    key: rule.key.clone(),
                    window_secs: rule.counting.window_secs(rule.unit),
                    algorithm: rule.counting.algorithm,
                    limit: rule.limit.into(),
                    capacity: rule.counting.capacity(rule.limit).into(),
                    hits,
                    negative: d.is_negative_hits,
                    enforce: !rule.shadow,
                    quota: self.options.quota_mode || rule.quota,
                });
                owners.push((i, rule, hits));
            }
        }
        if let Some(decision) = self.answer_from_cache(req, &resolved, &ops, &owners) {
            return Ok(decision);
        }
        // An endpoint with overall_limit 0 rejects the request, so nothing may be counted;
        // the other counters are still read (a dry run) so their statuses tell the truth.
        let outcome = if ops.is_empty() {
            BatchOutcome {
                now_ms: self.clock.now_ms(),
                committed: !reject_all,
                states: Vec::new(),
            }
        } else {
            self.store.apply(&ops, reject_all).await?
        };
        self.update_cache(&ops, &outcome);

        let counters: Vec<CounterOutcome> = owners
            .into_iter()
            .zip(&outcome.states)
            .map(|((descriptor, rule, hits), state)| CounterOutcome {
                descriptor,
                rule: rule.clone(),
                hits,
                state: *state,
            })
            .collect();
        let statuses: Vec<DescriptorStatus> = resolved
            .iter()
            .enumerate()
            .map(|(i, r)| {
                status_of(
                    r,
                    counters.iter().filter(|c| c.descriptor == i),
                    outcome.now_ms,
                )
            })
            .collect();
        let (overall_code, passed) = self.combine(&resolved, &statuses);
        Ok(Decision {
            overall_code,
            dynamic_metadata: self.dynamic_metadata(req, &resolved, &passed),
            statuses,
            unmatched: resolved
                .iter()
                .enumerate()
                .filter_map(|(i, r)| r.unmatched.map(|u| (i, u)))
                .collect(),
            counters,
            committed: outcome.committed,
        })
    }

    /// `overall_code`, as the reference's service combines the statuses
    /// (docs/envoy-compat.md §4): OVER_LIMIT when a descriptor not in quota mode is
    /// over limit, or when every quota-mode descriptor is (with the global `--quota-mode`,
    /// every descriptor is one, a descriptor no rule limits included); an `unlimited`
    /// descriptor takes no part. Global shadow mode then makes it OK. Also returns the
    /// descriptors that passed (not over, not unlimited), whose metadata is returned.
    fn combine(&self, resolved: &[Resolved], statuses: &[DescriptorStatus]) -> (Code, Vec<usize>) {
        // Only the metadata needs to know which passed: no allocation without it.
        let mut passed = Vec::new();
        let (mut failed_rate, mut failed_quota, mut total_quota) = (0usize, 0usize, 0usize);
        for (i, (r, s)) in resolved.iter().zip(statuses).enumerate() {
            if r.unlimited {
                continue;
            }
            let quota = self.options.quota_mode || r.counters.iter().any(|c| c.quota);
            if s.code == Code::OverLimit {
                if quota {
                    failed_quota += 1;
                } else {
                    failed_rate += 1;
                }
            } else if self.options.response_dynamic_metadata {
                passed.push(i);
            }
            if quota {
                total_quota += 1;
            }
        }
        let over = failed_rate > 0 || (total_quota > 0 && total_quota == failed_quota);
        let code = if over && !self.options.shadow_mode {
            Code::OverLimit
        } else {
            Code::Ok
        };
        (code, passed)
    }

    /// The response's dynamic metadata with `--response-dynamic-metadata`, in the
    /// reference's structure: `domain`; `descriptors`, each with its `entries` as
    /// `key=value` strings, its limit override (`limit`, in protobuf text form) and its
    /// `hitsAddend` when set; the request's `hitsAddend` when not 0; and `metadata`, the
    /// `metadata` of every rule whose descriptor passed, merged (the first descriptor's
    /// value of a key wins; mappings under one key are merged the same way).
    fn dynamic_metadata(
        &self,
        req: &Request,
        resolved: &[Resolved],
        passed: &[usize],
    ) -> Option<Metadata> {
        if !self.options.response_dynamic_metadata {
            return None;
        }
        let mut out = Metadata::new();
        out.insert("domain".into(), Value::String(req.domain.clone()));
        let descriptors: Vec<Value> = req
            .descriptors
            .iter()
            .map(|d| {
                let mut o = Metadata::new();
                let entries: Vec<Value> = d
                    .entries
                    .iter()
                    .map(|e| Value::String(format!("{}={}", e.key, e.value)))
                    .collect();
                o.insert("entries".into(), Value::Array(entries));
                if let Some(l) = &d.limit_override {
                    o.insert("limit".into(), Value::String(override_text(l)));
                }
                if let Some(h) = d.hits_addend {
                    o.insert("hitsAddend".into(), json!(h as f64));
                }
                Value::Object(o)
            })
            .collect();
        out.insert("descriptors".into(), Value::Array(descriptors));
        if req.hits_addend != 0 {
            out.insert("hitsAddend".into(), json!(f64::from(req.hits_addend)));
        }
        let mut merged = Metadata::new();
        for &i in passed {
            for c in resolved.get(i).map_or(&[][..], |r| &r.counters[..]) {
                if let Some(m) = &c.metadata {
                    merge_metadata(&mut merged, m);
                }
            }
        }
        if !merged.is_empty() {
            out.insert("metadata".into(), Value::Object(merged));
        }
        Some(out)
    }
}

/// A limit override in protobuf text form, as the reference prints it
/// (`requests_per_unit:10 unit:MINUTE`); the unit is `envoy.type.v3.RateLimitUnit`'s name.
fn override_text(l: &crate::descriptor::LimitOverride) -> String {
    let mut s = format!(
        "requests_per_unit:{} unit:{}",
        l.requests_per_unit,
        l.unit.as_str().to_ascii_uppercase()
    );
    if l.unit_multiplier != 1 {
        s.push_str(&format!(" unit_multiplier:{{value:{}}}", l.unit_multiplier));
    }
    s
}

/// Merges `src` into `dest`: a key `dest` lacks is added; where both hold a mapping, they are
/// merged the same way; otherwise `dest` keeps its value (the reference's `mergeMetadata`).
fn merge_metadata(dest: &mut Metadata, src: &Metadata) {
    for (k, v) in src {
        match (dest.get_mut(k), v) {
            (None, _) => {
                dest.insert(k.clone(), v.clone());
            }
            (Some(Value::Object(d)), Value::Object(s)) => merge_metadata(d, s),
            (Some(_), _) => {}
        }
    }
}

/// `replaces` (envoyproxy/ratelimit format): when a rule and a rule it names both match in
/// one request, the named one is dropped; its descriptor is then not limited.
fn apply_replaces(resolved: &mut [Resolved]) {
    let replaced: Vec<Arc<str>> = resolved
        .iter()
        .flat_map(|r| &r.counters)
        .flat_map(|c| c.replaces.iter().cloned())
        .collect();
    if replaced.is_empty() {
        return;
    }
    for r in resolved.iter_mut() {
        r.counters.retain(|c| {
            !c.configured_name
                .as_ref()
                .is_some_and(|n| replaced.contains(n))
        });
    }
}

impl RateLimiter {
    /// When an enforcing counter of the request is known to be full, the request is over
    /// limit and the store is not asked. Descriptors with a full counter report it; the
    /// others report OK without a limit (their state was not read; nothing was counted).
    fn answer_from_cache(
        &self,
        req: &Request,
        resolved: &[Resolved],
        ops: &[CounterOp],
        owners: &[(usize, &CounterRule, u64)],
    ) -> Option<Decision> {
        let full = self.full.as_ref()?;
        // A quota-mode counter must count every hit, even in a request that is denied: a
        // request with one always goes to the store (docs/envoy-compat.md §4).
        if ops.iter().any(|op| op.quota && op.hits > 0) {
            return None;
        }
        let now = self.clock.now_ms();
        let counters: Vec<CounterOutcome> = ops
            .iter()
            .zip(owners)
            .filter_map(|(op, &(descriptor, rule, hits))| {
                let reset_ms = full.full_for(op, now)?;
                let count = op.limit;
                Some(CounterOutcome {
                    descriptor,
                    rule: rule.clone(),
                    hits,
                    state: CounterState {
                        before: count,
                        after: count,
                        over: true,
                        reset_ms,
                        remaining: 0,
                    },
                })
            })
            .collect();
        if counters.is_empty() {
            return None;
        }
        // Only an enforcing counter that is not in quota mode is cached, so the request is
        // over limit whatever the other descriptors say; their state was not read.
        let statuses: Vec<DescriptorStatus> = resolved
            .iter()
            .enumerate()
            .map(|(i, r)| {
                status_of(
                    &Resolved {
                        unlimited: r.unlimited,
                        ..Resolved::default()
                    },
                    counters.iter().filter(|c| c.descriptor == i),
                    now,
                )
            })
            .collect();
        let (overall_code, passed) = self.combine(resolved, &statuses);
        Some(Decision {
            overall_code,
            dynamic_metadata: self.dynamic_metadata(req, resolved, &passed),
            statuses,
            counters,
            unmatched: Vec::new(),
            committed: false,
        })
    }

    /// Remembers every enforcing counter that is now full, and forgets every counter this
    /// request gave hits back to (the quota is usable through this replica at once:
    /// docs/counter-store.md §6).
    fn update_cache(&self, ops: &[CounterOp], outcome: &BatchOutcome) {
        let Some(full) = &self.full else { return };
        let now = self.clock.now_ms();
        for (op, s) in ops.iter().zip(&outcome.states) {
            if op.negative {
                if outcome.committed {
                    full.forget(op);
                }
                continue;
            }
            let count = if outcome.committed { s.after } else { s.before };
            if op.algorithm == Algorithm::FixedWindow
                && op.enforce
                && !op.quota
                && op.limit > 0
                && count >= op.limit
            {
                full.remember(op, now, s.reset_ms);
            }
        }
    }
}

fn status_of<'a>(
    r: &Resolved,
    counters: impl Iterator<Item = &'a CounterOutcome>,
    now_ms: u64,
) -> DescriptorStatus {
    if let Some(reject) = &r.reject_all {
        let window_secs = reject
            .unit
            .seconds()
            .saturating_mul(reject.unit_multiplier.max(1).into());
        let (_, end) = clock::window(now_ms, window_secs);
        return DescriptorStatus {
            code: if reject.shadow {
                Code::Ok
            } else {
                Code::OverLimit
            },
            current_limit: Some(CurrentLimit {
                name: reject.name.clone(),
                requests_per_unit: 0,
                unit: reject.unit,
                unit_multiplier: reject.unit_multiplier,
            }),
            limit_remaining: 0,
            duration_until_reset: Some(Duration::from_millis(end - now_ms)),
        };
    }
    let remaining = |c: &CounterOutcome| c.state.remaining;
    // The violated counter when over limit, else the one closest to its limit.
    let mut deciding: Option<&CounterOutcome> = None;
    for c in counters {
        deciding = match deciding {
            None => Some(c),
            Some(d) if c.state.over && !d.state.over => Some(c),
            Some(d) if c.state.over == d.state.over && remaining(c) < remaining(d) => Some(c),
            keep => keep,
        };
    }
    let Some(c) = deciding else {
        return DescriptorStatus {
            code: Code::Ok,
            current_limit: None,
            // The reference's answer for `unlimited: true` (docs/envoy-compat.md §6).
            limit_remaining: if r.unlimited { u32::MAX } else { 0 },
            duration_until_reset: None,
        };
    };
    DescriptorStatus {
        code: if c.state.over && !c.rule.shadow {
            Code::OverLimit
        } else {
            Code::Ok
        },
        current_limit: Some(CurrentLimit {
            name: c.rule.name.clone(),
            requests_per_unit: c.rule.limit,
            unit: c.rule.unit,
            unit_multiplier: c.rule.counting.unit_multiplier,
        }),
        limit_remaining: u32::try_from(remaining(c)).unwrap_or(u32::MAX),
        duration_until_reset: Some(Duration::from_millis(c.state.reset_ms)),
    }
}

#[cfg(test)]
mod tests;
