//! Prometheus metrics (docs/service.md §3) in an explicit registry (no global state: every
//! service instance, and every test, has its own).
//!
//! Labels never carry unbounded request data: `rule` is a rule name from the configuration,
//! and the soft-threshold `consumer` label takes at most a configured number of distinct
//! client ids, after which it reads `_other`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

pub mod process;

use crate::descriptor::{ANONYMOUS, CounterRule};
use crate::limiter::{
    BatchOutcome, CounterOp, CounterOutcome, CounterStore, Decision, StoreError, StoreFuture,
};

/// The `consumer` label value once the bound on distinct consumers is reached.
pub const OTHER_CONSUMER: &str = "_other";
/// The `rule` label of a `detailed_metric` rule once the bound on distinct values is reached.
pub const OTHER_RULE: &str = "_other";

/// Outcome of a request, for `ratelimit_requests_total{code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestCode {
    /// Answered OK.
    Ok,
    /// Answered OVER_LIMIT.
    OverLimit,
    /// Refused as invalid.
    Invalid,
    /// The counter store failed.
    BackendError,
}

impl RequestCode {
    /// Every code, in the order of [`Metrics`]' request handles.
    const ALL: [RequestCode; 4] = [
        RequestCode::Ok,
        RequestCode::OverLimit,
        RequestCode::Invalid,
        RequestCode::BackendError,
    ];

    fn label(self) -> &'static str {
        match self {
            RequestCode::Ok => "ok",
            RequestCode::OverLimit => "over_limit",
            RequestCode::Invalid => "invalid",
            RequestCode::BackendError => "backend_error",
        }
    }
}

/// The `outcome` of `ratelimit_hits_total`, in the order of [`RuleHits`]' handles.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Within,
    Near,
    Over,
    ShadowOver,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Within => "within_limit",
            Outcome::Near => "near_limit",
            Outcome::Over => "over_limit",
            Outcome::ShadowOver => "shadow_over_limit",
        }
    }
}

/// One rule's `ratelimit_hits_total` series, kept in the compiled rule's cache
/// ([`crate::descriptor::RuleCache`]) so a request does not look them up by label strings
/// (a hash of three strings and a lock each time). Each series is registered on its first
/// hit, as a lookup would, so `/metrics` shows the same series either way. `owner` names the
/// [`Metrics`] they belong to: a rule set counted by two of them (tests) must not count
/// into the wrong registry, and `domain` the label they were made for.
struct RuleHits {
    owner: u64,
    domain: Box<str>,
    by_outcome: [OnceLock<IntCounter>; 4],
}

/// Source of [`Metrics::id`].
static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(0);

/// Every metric of the service.
pub struct Metrics {
    /// Tells this instance's cached rule handles from another's.
    id: u64,
    registry: Registry,
    hits: IntCounterVec,
    soft_crossings: IntCounterVec,
    /// `ratelimit_requests_total` by [`RequestCode::ALL`], resolved once: every request counts into one.
    requests_by_code: [IntCounter; 4],
    request_duration: Histogram,
    backend_duration: Histogram,
    backend_errors: IntCounterVec,
    reloads: IntCounterVec,
    generation: IntGauge,
    last_success: Gauge,
    connections: IntGaugeVec,
    connection_limit: IntGaugeVec,
    accept_waits: IntCounterVec,
    accept_errors: IntCounterVec,
    admin_refusals: IntCounterVec,
    /// `ratelimit_config_info{sha256}`: 1 for the configuration served, so replicas serving
    /// different files show as different series (docs/observability.md, IroncladRlsConfigDrift).
    config_info: IntGaugeVec,
    /// `ratelimit_memory_counters{store="memory"}` and its bound: set at each scrape, and
    /// only by a store with a counter bound, so a Redis-backed replica shows neither.
    memory_counters: IntGaugeVec,
    memory_max_counters: IntGaugeVec,
    near_limit_ratio: f64,
    consumers: Mutex<HashSet<String>>,
    detailed_rules: Mutex<HashSet<String>>,
    /// Bound of distinct values of each request-derived label (`consumer`, detailed `rule`).
    max_consumers: usize,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Latency buckets from 100 µs to 1 s: an RLS answers in about a millisecond and Envoy gives
/// it 20 ms by default.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1, 0.25, 1.0,
];

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new(near_limit_ratio: f64, max_consumers: usize) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let histogram = |name: &str, help: &str| -> Result<Histogram, prometheus::Error> {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let hits = counter(
            "ratelimit_hits_total",
            "Hits per rule: within_limit (admitted), near_limit (admitted above the near-limit ratio), over_limit (rejected), shadow_over_limit (over but allowed by shadow mode).",
            &["domain", "rule", "outcome"],
        )?;
        let soft_crossings = counter(
            "ratelimit_soft_limit_crossings_total",
            "Soft thresholds (soft.value + k * soft.step, up to the limit) crossed by consumer counters.",
            &["domain", "endpoint", "prefix", "consumer"],
        )?;
        let requests = counter(
            "ratelimit_requests_total",
            "ShouldRateLimit requests by answer.",
            &["code"],
        )?;
        let backend_errors = counter(
            "ratelimit_backend_errors_total",
            "Counter store failures.",
            &["kind"],
        )?;
        let reloads = counter(
            "ratelimit_config_reloads_total",
            "Configuration loads after start-up.",
            &["result"],
        )?;
        // Every series an alert takes `rate` or `increase` of starts at 0: Prometheus sees no
        // increase in a series whose first sample is already 1, so the first failed reload or
        // store error would otherwise never alert (docs/observability.md §2).
        for result in ["success", "error"] {
            reloads.with_label_values(&[result]);
        }
        let requests_by_code = RequestCode::ALL.map(|c| requests.with_label_values(&[c.label()]));
        for kind in ["timeout", "unavailable", "capacity", "queue_full"] {
            backend_errors.with_label_values(&[kind]);
        }
        let request_duration = histogram(
            "ratelimit_request_duration_seconds",
            "Time to decide a ShouldRateLimit request.",
        )?;
        let backend_duration = histogram(
            "ratelimit_backend_duration_seconds",
            "Counter store round trips.",
        )?;
        let generation = IntGauge::new(
            "ratelimit_config_generation",
            "Generation of the configuration being served.",
        )?;
        registry.register(Box::new(generation.clone()))?;
        let last_success = Gauge::new(
            "ratelimit_config_last_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
        )?;
        registry.register(Box::new(last_success.clone()))?;
        let gauge =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec, prometheus::Error> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let connections = gauge(
            "ratelimit_connections",
            "Connections open now (handshakes included), per listener.",
            &["listener"],
        )?;
        let connection_limit = gauge(
            "ratelimit_connection_limit",
            "Connections a listener accepts at once (its budget).",
            &["listener"],
        )?;
        let accept_waits = counter(
            "ratelimit_accept_waits_total",
            "Times a listener's budget was full and it waited for a connection to close before accepting again.",
            &["listener"],
        )?;
        let accept_errors = counter(
            "ratelimit_accept_errors_total",
            "Failed accepts: kind fd_limit (out of file descriptors, or of kernel memory) backs off; kind other is retried at once.",
            &["listener", "kind"],
        )?;
        let admin_refusals = counter(
            "ratelimit_admin_refusals_total",
            "Admin requests refused: reason unauthorized (401), forbidden (403), too_large (413).",
            &["reason"],
        )?;
        registry.register(Box::new(process::ProcessCollector::new()?))?;
        let config_info = IntGaugeVec::new(
            Opts::new(
                "ratelimit_config_info",
                "1 for the configuration being served, labelled with its SHA-256.",
            ),
            &["sha256"],
        )?;
        registry.register(Box::new(config_info.clone()))?;
        let memory_counters = gauge(
            "ratelimit_memory_counters",
            "Counters the in-memory store holds now.",
            &["store"],
        )?;
        let memory_max_counters = gauge(
            "ratelimit_memory_max_counters",
            "Counters the in-memory store may hold (--memory-max-counters).",
            &["store"],
        )?;
        Ok(Metrics {
            id: NEXT_METRICS_ID.fetch_add(1, Ordering::Relaxed),
            registry,
            hits,
            soft_crossings,
            requests_by_code,
            request_duration,
            backend_duration,
            backend_errors,
            reloads,
            generation,
            last_success,
            connections,
            connection_limit,
            accept_waits,
            accept_errors,
            admin_refusals,
            config_info,
            memory_counters,
            memory_max_counters,
            near_limit_ratio,
            consumers: Mutex::new(HashSet::new()),
            detailed_rules: Mutex::new(HashSet::new()),
            max_consumers,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Counts a request's answer and how long it took.
    pub fn request(&self, code: RequestCode, took: Duration) {
        self.requests_by_code[code as usize].inc();
        self.request_duration.observe(took.as_secs_f64());
    }

    /// Times one counter store round trip; `error` names the failure kind.
    pub fn backend_call(&self, took: Duration, error: Option<&str>) {
        self.backend_duration.observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.backend_errors.with_label_values(&[kind]).inc();
        }
    }

    /// Counts a configuration load after start-up.
    pub fn reload(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "success" } else { "error" }])
            .inc();
    }

    /// Records the configuration now served.
    pub fn config_loaded(&self, generation: u64, unix_secs: f64) {
        self.generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.last_success.set(unix_secs);
    }

    /// The metrics of one listener (`grpc` or `admin`), with its budget recorded.
    pub fn listener(&self, listener: &str, budget: usize) -> ListenerMetrics {
        self.connection_limit
            .with_label_values(&[listener])
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        ListenerMetrics {
            open: self.connections.with_label_values(&[listener]),
            waits: self.accept_waits.with_label_values(&[listener]),
            fd_limit: self
                .accept_errors
                .with_label_values(&[listener, "fd_limit"]),
            other: self.accept_errors.with_label_values(&[listener, "other"]),
        }
    }

    /// Counts an admin request refused for `reason` (`unauthorized`, `forbidden`,
    /// `too_large`).
    pub fn admin_refused(&self, reason: &str) {
        self.admin_refusals.with_label_values(&[reason]).inc();
    }

    /// Records the in-memory store's counters and bound (read at each scrape).
    pub fn memory_occupancy(&self, counters: usize, max: usize) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.memory_counters
            .with_label_values(&["memory"])
            .set(n(counters));
        self.memory_max_counters
            .with_label_values(&["memory"])
            .set(n(max));
    }

    /// Records the served configuration's hash: one series, the previous one removed.
    pub fn config_hash(&self, sha256: &str) {
        self.config_info.reset();
        self.config_info.with_label_values(&[sha256]).set(1);
    }

    /// Counts every hit of a decided request per rule and outcome, and soft crossings.
    pub fn decision(&self, domain: &str, d: &Decision, global_shadow: bool) {
        for c in &d.counters {
            if c.hits == 0 {
                continue;
            }
            let cached = self.rule_hits(domain, &c.rule);
            // A detailed rule's label comes from the request, bounded: looked up each time.
            let mut detailed = None;
            let mut hits = |outcome: Outcome, n: u64| {
                if n == 0 {
                    return;
                }
                match cached {
                    Some(h) => h.by_outcome[outcome as usize]
                        .get_or_init(|| {
                            self.hits
                                .with_label_values(&[domain, &c.rule.name, outcome.label()])
                        })
                        .inc_by(n),
                    None => {
                        let rule = detailed.get_or_insert_with(|| match &c.rule.detail {
                            Some(detail) => self.bounded(&self.detailed_rules, detail, OTHER_RULE),
                            None => c.rule.name.to_string(),
                        });
                        self.hits
                            .with_label_values(&[domain, rule, outcome.label()])
                            .inc_by(n);
                    }
                }
            };
            if c.state.over {
                // Allowed anyway: by the rule's own shadow mode, or the global one.
                let shadowed = c.rule.shadow || global_shadow;
                hits(
                    if shadowed {
                        Outcome::ShadowOver
                    } else {
                        Outcome::Over
                    },
                    c.hits,
                );
            } else if d.committed && c.state.after > c.state.before {
                // Admitted and counted (a give-back lowers the count and is not a hit).
                hits(Outcome::Within, c.hits);
                hits(Outcome::Near, self.near_limit_hits(c));
                self.soft_crossings_of(domain, c);
            }
        }
    }

    /// The rule's cached `ratelimit_hits_total` handles, made on its first hit; `None` for a
    /// detailed rule (its label is the request's), a rule made for one request, or a rule
    /// whose cache another [`Metrics`] filled.
    fn rule_hits<'r>(&self, domain: &str, rule: &'r CounterRule) -> Option<&'r RuleHits> {
        if rule.detail.is_some() {
            return None;
        }
        rule.cache
            .get_or_init(|| RuleHits {
                owner: self.id,
                domain: domain.into(),
                by_outcome: Default::default(),
            })
            .filter(|h| h.owner == self.id && *h.domain == *domain)
    }

    /// The admitted hits above `near_limit_ratio × limit` (as envoyproxy/ratelimit counts).
    fn near_limit_hits(&self, c: &CounterOutcome) -> u64 {
        let threshold = (f64::from(c.rule.limit) * self.near_limit_ratio).floor() as u64;
        let (before, after) = (c.state.before, c.state.after);
        if after <= threshold {
            0
        } else {
            after - before.max(threshold)
        }
    }

    fn soft_crossings_of(&self, domain: &str, c: &CounterOutcome) {
        let (Some(soft), Some(prefix)) = (c.rule.soft, &c.rule.labels.prefix) else {
            return;
        };
        let n = soft_crossings(
            c.state.before,
            c.state.after,
            soft.value,
            soft.step,
            c.rule.limit.into(),
        );
        if n == 0 {
            return;
        }
        let consumer = self.consumer_label(c.rule.labels.consumer.as_deref());
        self.soft_crossings
            .with_label_values(&[domain, &c.rule.labels.endpoint, prefix, &consumer])
            .inc_by(n);
    }

    fn consumer_label(&self, consumer: Option<&str>) -> String {
        match consumer {
            Some(id) => self.bounded(&self.consumers, id, OTHER_CONSUMER),
            None => ANONYMOUS.to_owned(),
        }
    }

    /// `value` while `seen` holds fewer than the bound of distinct values, else `other`.
    fn bounded(&self, seen: &Mutex<HashSet<String>>, value: &str, other: &str) -> String {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.max_consumers {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        other.to_owned()
    }
}

/// One listener's connection metrics, handed to its accept loop.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// Connections open now.
    pub open: IntGauge,
    /// Times the budget was full.
    pub waits: IntCounter,
    /// Accepts failed for want of file descriptors (or kernel memory).
    pub fd_limit: IntCounter,
    /// Other failed accepts (a peer that reset before it was accepted).
    pub other: IntCounter,
}

/// How many thresholds `t = value + k × step` (k ≥ 0, `t ≤ limit`) an increment from `before`
/// to `after` crosses: `before < t ≤ after` (docs/limits-format.md §6).
pub fn soft_crossings(before: u64, after: u64, value: u64, step: u64, limit: u64) -> u64 {
    let lo = before.saturating_add(1).max(value);
    let hi = after.min(limit);
    if step == 0 || lo > hi {
        return 0;
    }
    // Thresholds are value, value + step, ...: count those in [lo, hi].
    let first = value + (lo - value).div_ceil(step) * step;
    if first > hi {
        0
    } else {
        (hi - first) / step + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_crossings_follow_the_spec() {
        // soft {value 8, step 2}, limit 12: thresholds 8, 10, 12.
        assert_eq!(soft_crossings(0, 7, 8, 2, 12), 0);
        assert_eq!(soft_crossings(7, 8, 8, 2, 12), 1);
        assert_eq!(soft_crossings(8, 9, 8, 2, 12), 0);
        assert_eq!(soft_crossings(9, 12, 8, 2, 12), 2);
        assert_eq!(
            soft_crossings(0, 20, 8, 2, 12),
            3,
            "thresholds above the limit do not count"
        );
        assert_eq!(soft_crossings(12, 13, 8, 2, 12), 0);
        assert_eq!(
            soft_crossings(0, 1, 0, 1, 5),
            1,
            "value 0: the first hit crosses 1 (0 is not crossed from 0)"
        );
    }

    /// Two registries counting one compiled rule set (the rule's cached handles belong to
    /// the first), and a detailed rule beside a cached one: every hit lands in the series a
    /// lookup by labels would have chosen, and no series appears before its first hit.
    #[test]
    fn cached_rule_handles_count_where_lookups_would() {
        use std::sync::Arc;

        use crate::config::{Source, load_sources};
        use crate::descriptor::{Entry, RuleSet};
        use crate::limiter::{
            Descriptor, LimiterOptions, ManualClock, MemoryStore, RateLimiter, Request,
        };

        let text = "domain: d
descriptors:
  - key: k
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: x
    detailed_metric: true
    rate_limit: { unit: minute, requests_per_unit: 100 }
";
        let loaded = load_sources(&[Source {
            name: "t.yaml".into(),
            text: text.into(),
        }])
        .unwrap();
        let clock = Arc::new(ManualClock::new(1_000));
        let limiter = RateLimiter::new(
            Arc::new(RuleSet::compile(&loaded.config)),
            Arc::new(MemoryStore::new(clock.clone())),
            clock,
            LimiterOptions::default(),
        );
        let request = |key: &str, value: &str| Request {
            domain: "d".into(),
            descriptors: vec![Descriptor {
                entries: vec![Entry {
                    key: key.into(),
                    value: value.into(),
                }],
                ..Descriptor::default()
            }],
            hits_addend: 0,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let decide = |m: &Metrics, key: &str, value: &str| {
            let d = rt
                .block_on(limiter.should_rate_limit(&request(key, value)))
                .unwrap();
            m.decision("d", &d, false);
        };
        let series = |m: &Metrics, rule: &str, outcome: &str| {
            let want = format!(
                "ratelimit_hits_total{{domain=\"d\",outcome=\"{outcome}\",rule=\"{rule}\"}} "
            );
            m.render()
                .lines()
                .find_map(|l| l.strip_prefix(want.as_str()).map(str::to_owned))
        };
        let (a, b) = (
            Metrics::new(0.8, 10).unwrap(),
            Metrics::new(0.8, 10).unwrap(),
        );
        decide(&a, "k", "v"); // fills the rule's cache for `a`
        decide(&b, "k", "v"); // over the limit of 1, counted in `b` by lookup
        decide(&a, "x", "1");
        decide(&a, "x", "2");
        assert_eq!(series(&a, "k", "within_limit").as_deref(), Some("1"));
        assert_eq!(series(&a, "k", "over_limit"), None);
        assert_eq!(series(&a, "k", "near_limit").as_deref(), Some("1"));
        assert_eq!(series(&b, "k", "over_limit").as_deref(), Some("1"));
        assert_eq!(series(&b, "k", "within_limit"), None);
        assert_eq!(series(&a, "x=1", "within_limit").as_deref(), Some("1"));
        assert_eq!(series(&a, "x=2", "within_limit").as_deref(), Some("1"));
        decide(&a, "k", "v");
        assert_eq!(series(&a, "k", "over_limit").as_deref(), Some("1"));
    }

    #[test]
    fn the_consumer_label_is_bounded() {
        let m = Metrics::new(0.8, 2).unwrap();
        assert_eq!(m.consumer_label(Some("a")), "a");
        assert_eq!(m.consumer_label(Some("b")), "b");
        assert_eq!(m.consumer_label(Some("c")), OTHER_CONSUMER);
        assert_eq!(m.consumer_label(Some("a")), "a");
        assert_eq!(m.consumer_label(None), ANONYMOUS);
    }
}

/// A [`CounterStore`] decorator that times every round trip and counts failures by kind.
#[derive(Debug)]
pub struct TimedStore {
    inner: std::sync::Arc<dyn CounterStore>,
    metrics: std::sync::Arc<Metrics>,
}

impl TimedStore {
    /// Wraps `inner`.
    pub fn new(inner: std::sync::Arc<dyn CounterStore>, metrics: std::sync::Arc<Metrics>) -> Self {
        TimedStore { inner, metrics }
    }
}

impl CounterStore for TimedStore {
    fn apply<'a>(&'a self, ops: &'a [CounterOp], dry_run: bool) -> StoreFuture<'a, BatchOutcome> {
        Box::pin(async move {
            let start = std::time::Instant::now();
            let result = self.inner.apply(ops, dry_run).await;
            let kind = result.as_ref().err().map(StoreError::kind);
            self.metrics.backend_call(start.elapsed(), kind);
            result
        })
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn occupancy(&self) -> Option<(usize, usize)> {
        self.inner.occupancy()
    }
}
