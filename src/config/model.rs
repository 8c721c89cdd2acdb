//! The validated configuration: what the files say, with every default applied and every
//! rule checked. Compiled into lookup structures by `crate::descriptor`.

use std::fmt;

use serde::Serialize;

use super::diag::Pos;

/// A window unit. `month` is 30 days and `year` 365 days, as envoyproxy/ratelimit counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3600 s.
    Hour,
    /// 86 400 s.
    Day,
    /// 7 days.
    Week,
    /// 30 days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// Every unit, in the order messages list them.
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The unit's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3_600,
            Unit::Day => 86_400,
            Unit::Week => 7 * 86_400,
            Unit::Month => 30 * 86_400,
            Unit::Year => 365 * 86_400,
        }
    }

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// Parses a unit, case-insensitively.
    pub fn parse(s: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a rule counts (docs/algorithms.md). `fixed_window` is the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Windows aligned to the epoch, `limit` hits per window.
    #[default]
    FixedWindow,
    /// At most `limit` hits in every interval of the window's length (an exact log).
    SlidingWindow,
    /// A bucket of `burst` tokens refilled continuously at `limit` per window (GCRA).
    TokenBucket,
}

impl Algorithm {
    /// Every algorithm, in the order messages list them.
    pub const ALL: [Algorithm; 3] = [
        Algorithm::FixedWindow,
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
    ];

    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::TokenBucket => "token_bucket",
        }
    }

    /// Parses a configuration spelling (exact, as field names are).
    pub fn parse(s: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest window, in ms: Redis' Lua numbers are doubles, exact below 2^53.
pub const MAX_WINDOW_MS: u64 = (1 << 53) - 1;

/// The fields beside a limit that say how it counts (docs/algorithms.md): the window is
/// `unit × unit_multiplier`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Counting {
    /// The window is this many units (≥ 1).
    pub unit_multiplier: u32,
    /// The counting algorithm.
    pub algorithm: Algorithm,
    /// A token bucket's capacity; `None`: the limit. Only set with `token_bucket`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

impl Default for Counting {
    fn default() -> Self {
        Counting {
            unit_multiplier: 1,
            algorithm: Algorithm::FixedWindow,
            burst: None,
        }
    }
}

impl Counting {
    /// The window length in seconds (every unit is a whole number of seconds).
    pub fn window_secs(&self, unit: Unit) -> u64 {
        unit.seconds()
            .saturating_mul(u64::from(self.unit_multiplier.max(1)))
    }

    /// The window and algorithm as `validate` prints them after a limit and a `/`:
    /// `minute`, `15 seconds`, `15 seconds, token bucket of 20`.
    pub fn per(&self, unit: Unit) -> String {
        let mut s = match self.unit_multiplier {
            0 | 1 => unit.to_string(),
            m => format!("{m} {unit}s"),
        };
        match (self.algorithm, self.burst) {
            (Algorithm::FixedWindow, _) => {}
            (Algorithm::SlidingWindow, _) => s.push_str(", sliding window"),
            (Algorithm::TokenBucket, None) => s.push_str(", token bucket"),
            (Algorithm::TokenBucket, Some(b)) => {
                s.push_str(&format!(", token bucket of {b}"));
            }
        }
        s
    }

    /// A bucket's capacity for a rule whose limit is `limit`.
    pub fn capacity(&self, limit: u32) -> u32 {
        self.burst.unwrap_or(limit)
    }
}

/// Where a rule was written, so runtime messages can point back at the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The file.
    pub file: String,
    /// The line of the rule's first key.
    pub line: u64,
}

/// Where one field was written: its value's position and its field path
/// (`kcse_rate_limits.endpoints[1].shortname`), for checks that span files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldAt {
    /// The value's position.
    pub pos: Pos,
    /// The field path.
    pub path: String,
}

/// Everything loaded from every file given to `--config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Config {
    /// Endpoint-format domains, each once (files naming the same domain are merged).
    pub domains: Vec<EndpointDomain>,
    /// envoyproxy/ratelimit-format domains, each from one file.
    pub descriptor_domains: Vec<DescriptorDomain>,
}

/// The endpoints of one RLS domain (endpoint format).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointDomain {
    /// The domain Envoy sends (default `kcse`).
    pub domain: String,
    /// `envoyVersion`, used only to pick gateway config syntax.
    pub envoy_version: Option<String>,
    /// The endpoints, in file order.
    pub endpoints: Vec<Endpoint>,
}

/// `overall_limit`, decoded: the seed gives the sign of the number three meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OverallLimit {
    /// Negative (the default): no overall counter.
    None,
    /// Zero: every request to the endpoint is rejected, nothing is counted.
    RejectAll,
    /// Positive: one counter shared by every request to the endpoint.
    Limit(u32),
}

/// `soft`: thresholds whose crossings are counted in a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Soft {
    /// The first threshold.
    pub value: u64,
    /// The distance between thresholds (> 0).
    pub step: u64,
}

/// One protected service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// Free text.
    pub name: String,
    /// The value Envoy sends in the `endpoint` entry; unique across the configuration.
    pub shortname: String,
    /// `host:port` of the protected service (for `render`).
    pub endpoint: Option<String>,
    /// The overall limit.
    pub overall_limit: OverallLimit,
    /// Unit of the overall limit and default of the prefixes.
    pub unit: Unit,
    /// How the overall limit counts (`burst` sizes the overall bucket); its multiplier and
    /// algorithm are the prefixes' defaults.
    #[serde(flatten)]
    pub counting: Counting,
    /// Soft thresholds.
    pub soft: Option<Soft>,
    /// Decide and count, but always answer OK.
    pub shadow_mode: bool,
    /// The limited URL prefixes, in file order.
    pub uri_prefixes: Vec<UriPrefix>,
    /// Where it was written.
    pub origin: Origin,
    /// Where its `shortname` was written (not reported by `/config`: the origin says enough
    /// there).
    #[serde(skip)]
    pub shortname_at: FieldAt,
}

/// Limits under one URL prefix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UriPrefix {
    /// The prefix, normalised like request paths are.
    pub prefix: String,
    /// Window unit.
    pub unit: Unit,
    /// How its counters count (`burst` sizes the per-client and anonymous buckets).
    #[serde(flatten)]
    pub counting: Counting,
    /// Quota per identified consumer.
    pub value: u32,
    /// Quota shared by all anonymous requests; `None`: anonymous requests are not limited here.
    pub anon_value: Option<u32>,
    /// Per-client overrides.
    pub invokers: Vec<Invoker>,
}

/// A client with a quota of its own under a prefix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invoker {
    /// The client id (`azp`), compared exactly.
    pub client: String,
    /// Window unit.
    pub unit: Unit,
    /// How its counter counts.
    #[serde(flatten)]
    pub counting: Counting,
    /// Quota.
    pub value: u32,
}

/// One domain in the envoyproxy/ratelimit format (`domain` + `descriptors`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DescriptorDomain {
    /// The domain.
    pub domain: String,
    /// The top-level descriptors, in file order.
    pub descriptors: Vec<DescriptorConfig>,
    /// Where it was written.
    pub origin: Origin,
    /// The top-level `name` (Envoy Gateway writes one per listener); not used for matching.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A descriptor's `metadata` (docs/envoy-compat.md §5): any YAML values, kept as
/// JSON, which maps one to one onto the `google.protobuf.Struct` of a response.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// A descriptor node: it matches one request entry at its level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DescriptorConfig {
    /// The entry key.
    pub key: String,
    /// Absent: any value (each distinct value counted apart). Present: an exact value, or a
    /// pattern where each `*` matches zero or more characters.
    pub value: Option<String>,
    /// The limit of a request whose last entry matches here.
    pub rate_limit: Option<RateLimitConfig>,
    /// Count and report, but never answer OVER_LIMIT.
    pub shadow_mode: bool,
    /// Metrics carry the request's values instead of the key path.
    pub detailed_metric: bool,
    /// For a pattern: every value it matches shares one counter.
    pub share_threshold: bool,
    /// Quota mode (docs/envoy-compat.md §4): over limit is reported in this descriptor's status
    /// but does not by itself deny the request, and every hit is counted.
    pub quota_mode: bool,
    /// The metric's `rule` label carries the request's value at this level.
    pub value_to_metric: bool,
    /// Returned in the response's dynamic metadata when this rule passes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    /// Nested descriptors.
    pub descriptors: Vec<DescriptorConfig>,
}

/// `rate_limit` of a descriptor.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateLimitConfig {
    /// `unlimited: true`: never limited, never counted.
    Unlimited {
        /// `name`, if given.
        name: Option<String>,
    },
    /// A limit.
    Limit {
        /// Hits per unit; 0 rejects every request.
        requests_per_unit: u32,
        /// Window unit.
        unit: Unit,
        /// Window multiplier, algorithm and burst.
        #[serde(flatten)]
        counting: Counting,
        /// `name`, if given.
        name: Option<String>,
        /// Names of rules this one replaces when both match in one request.
        replaces: Vec<String>,
    },
}
