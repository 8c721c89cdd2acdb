//! The compiled rules: (domain, descriptor entries) → the counters a request touches
//! (limits-format.md §3–§4). Built once per configuration load; read by every request.

use std::collections::HashMap;
use std::sync::Arc;

use super::key::{CounterKey, CounterScope};
use super::path::normalize_path;
use super::prefix_set::PrefixSet;
use super::tree::{DescriptorTree, LimitOverride};
use crate::config::{Config, Counting, Endpoint, OverallLimit, Soft, Unit};

/// Entry key naming the endpoint (its `shortname`).
pub const ENTRY_ENDPOINT: &str = "endpoint";
/// Entry key carrying the request path.
pub const ENTRY_PATH: &str = "path";
/// Entry key carrying the consumer id; absent or empty means anonymous.
pub const ENTRY_CONSUMER: &str = "consumer";
/// The `consumer` value used in labels and logs for anonymous requests.
pub const ANONYMOUS: &str = "_anonymous";

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

/// All compiled rules of one configuration.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: HashMap<String, HashMap<String, EndpointRules>>,
    trees: HashMap<String, DescriptorTree>,
}

#[derive(Debug)]
struct EndpointRules {
    domain: String,
    shortname: Arc<str>,
    unit: Unit,
    counting: Counting,
    overall: OverallLimit,
    overall_name: Arc<str>,
    shadow: bool,
    soft: Option<Soft>,
    prefixes: Vec<PrefixRules>,
    matcher: PrefixSet,
}

#[derive(Debug)]
struct PrefixRules {
    prefix: Arc<str>,
    unit: Unit,
    counting: Counting,
    value: u32,
    anon_value: Option<u32>,
    client_name: Arc<str>,
    anon_name: Arc<str>,
    invokers: HashMap<String, InvokerRule>,
}

#[derive(Debug)]
struct InvokerRule {
    unit: Unit,
    counting: Counting,
    value: u32,
    name: Arc<str>,
}

impl RuleSet {
    /// Compiles a validated configuration.
    pub fn compile(config: &Config) -> Self {
        let mut domains: HashMap<String, HashMap<String, EndpointRules>> = HashMap::new();
        for d in &config.domains {
            let endpoints = domains.entry(d.domain.clone()).or_default();
            for ep in &d.endpoints {
                endpoints.insert(ep.shortname.clone(), compile_endpoint(&d.domain, ep));
            }
        }
        let trees = config
            .descriptor_domains
            .iter()
            .map(|d| (d.domain.clone(), DescriptorTree::compile(d)))
            .collect();
        RuleSet { domains, trees }
    }

    /// True when the domain has rules.
    pub fn has_domain(&self, domain: &str) -> bool {
        self.domains.contains_key(domain) || self.trees.contains_key(domain)
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
        let unmatched = |why| Resolved {
            unmatched: Some(why),
            ..Resolved::default()
        };
        let Some(endpoints) = self.domains.get(domain) else {
            return unmatched(Unmatched::UnknownDomain);
        };
        let find = |k: &str| {
            entries
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        let Some(shortname) = find(ENTRY_ENDPOINT) else {
            return unmatched(Unmatched::NoEndpointEntry);
        };
        let Some(ep) = endpoints.get(shortname) else {
            return unmatched(Unmatched::UnknownEndpoint);
        };
        let consumer = find(ENTRY_CONSUMER).filter(|c| !c.is_empty());
        let mut out = Resolved::default();
        match ep.overall {
            OverallLimit::None => {}
            OverallLimit::RejectAll => {
                out.reject_all = Some(RejectAll {
                    name: ep.overall_name.clone(),
                    unit: ep.unit,
                    unit_multiplier: ep.counting.unit_multiplier,
                    shadow: ep.shadow,
                });
                return out;
            }
            OverallLimit::Limit(limit) => out.counters.push(CounterRule {
                key: CounterKey::new(&ep.domain, &ep.shortname, &CounterScope::Overall),
                limit,
                unit: ep.unit,
                counting: ep.counting,
                name: ep.overall_name.clone(),
                shadow: ep.shadow,
                soft: None,
                labels: CounterLabels {
                    endpoint: ep.shortname.clone(),
                    prefix: None,
                    consumer: None,
                },
                detail: None,
                configured_name: None,
                replaces: Arc::from([]),
            }),
        }
        if let Some(raw_path) = find(ENTRY_PATH) {
            let path = normalize_path(raw_path);
            for i in ep.matcher.matches(&path) {
                if let Some(rule) = ep.counter_for(&ep.prefixes[i], consumer) {
                    out.counters.push(rule);
                }
            }
        }
        if out.counters.is_empty() {
            out.unmatched = Some(Unmatched::NoRule);
        }
        out
    }
}

impl EndpointRules {
    fn counter_for(&self, p: &PrefixRules, consumer: Option<&str>) -> Option<CounterRule> {
        let (scope, limit, unit, counting, name) = match consumer {
            Some(c) => match p.invokers.get(c) {
                Some(inv) => (
                    CounterScope::Consumer {
                        prefix: &p.prefix,
                        consumer: c,
                    },
                    inv.value,
                    inv.unit,
                    inv.counting,
                    inv.name.clone(),
                ),
                None => (
                    CounterScope::Consumer {
                        prefix: &p.prefix,
                        consumer: c,
                    },
                    p.value,
                    p.unit,
                    p.counting,
                    p.client_name.clone(),
                ),
            },
            None => (
                CounterScope::Anonymous { prefix: &p.prefix },
                p.anon_value?,
                p.unit,
                p.counting,
                p.anon_name.clone(),
            ),
        };
        Some(CounterRule {
            key: CounterKey::new(&self.domain, &self.shortname, &scope),
            limit,
            unit,
            counting,
            name,
            shadow: self.shadow,
            soft: self.soft,
            labels: CounterLabels {
                endpoint: self.shortname.clone(),
                prefix: Some(p.prefix.clone()),
                consumer: consumer.map(str::to_owned),
            },
            detail: None,
            configured_name: None,
            replaces: Arc::from([]),
        })
    }
}

fn compile_endpoint(domain: &str, ep: &Endpoint) -> EndpointRules {
    let short = ep.shortname.as_str();
    let prefixes: Vec<PrefixRules> = ep
        .uri_prefixes
        .iter()
        .map(|p| PrefixRules {
            prefix: p.prefix.as_str().into(),
            unit: p.unit,
            counting: p.counting,
            value: p.value,
            anon_value: p.anon_value,
            client_name: format!("{short} {} client", p.prefix).into(),
            anon_name: format!("{short} {} anonymous", p.prefix).into(),
            invokers: p
                .invokers
                .iter()
                .map(|i| {
                    let rule = InvokerRule {
                        unit: i.unit,
                        counting: i.counting,
                        value: i.value,
                        name: format!("{short} {} invoker {}", p.prefix, i.client).into(),
                    };
                    (i.client.clone(), rule)
                })
                .collect(),
        })
        .collect();
    EndpointRules {
        domain: domain.to_owned(),
        shortname: short.into(),
        unit: ep.unit,
        counting: ep.counting,
        overall: ep.overall_limit,
        overall_name: format!("{short} overall").into(),
        shadow: ep.shadow_mode,
        soft: ep.soft,
        matcher: PrefixSet::new(prefixes.iter().map(|p| &*p.prefix)),
        prefixes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Source, load_sources};

    fn rules(text: &str) -> RuleSet {
        let loaded = load_sources(&[Source {
            name: "t.yaml".into(),
            text: text.into(),
        }])
        .unwrap();
        RuleSet::compile(&loaded.config)
    }

    fn resolve(rs: &RuleSet, domain: &str, e: &[Entry]) -> Resolved {
        rs.resolve(domain, e, None)
    }

    fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
        pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect()
    }

    fn full() -> RuleSet {
        rules(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/limits/full-example.yaml"
            ))
            .unwrap(),
        )
    }

    fn summary(r: &Resolved) -> Vec<(String, u32)> {
        r.counters
            .iter()
            .map(|c| (c.name.to_string(), c.limit))
            .collect()
    }

    #[test]
    fn all_matching_prefixes_apply_with_the_right_quota() {
        let rs = full();
        let r = resolve(
            &rs,
            "kcse",
            &entries(&[
                ("path", "/auth/admin/realms/API-TEST/users"),
                ("endpoint", "kcserl"),
                ("consumer", "test_client"),
            ]),
        );
        assert_eq!(
            summary(&r),
            vec![
                ("kcserl overall".into(), 1_000_000),
                ("kcserl /auth client".into(), 200_000),
                (
                    "kcserl /auth/admin/realms/API-TEST/ invoker test_client".into(),
                    20
                ),
            ]
        );
        // Every consumer has a counter of its own.
        let a = resolve(
            &rs,
            "kcse",
            &entries(&[
                ("endpoint", "kcserl"),
                ("path", "/auth/x"),
                ("consumer", "a"),
            ]),
        );
        let b = resolve(
            &rs,
            "kcse",
            &entries(&[
                ("endpoint", "kcserl"),
                ("path", "/auth/x"),
                ("consumer", "b"),
            ]),
        );
        assert_ne!(a.counters[1].key, b.counters[1].key);
        // The overall counter is shared.
        assert_eq!(a.counters[0].key, b.counters[0].key);
    }

    #[test]
    fn anonymous_requests_share_a_counter_where_anon_value_is_set() {
        let rs = full();
        let anon = resolve(
            &rs,
            "kcse",
            &entries(&[
                ("endpoint", "kcserl"),
                ("path", "/auth/admin/realms/API-TEST/x"),
                ("consumer", ""),
            ]),
        );
        assert_eq!(
            summary(&anon),
            vec![
                ("kcserl overall".into(), 1_000_000),
                ("kcserl /auth/admin/realms/API-TEST/ anonymous".into(), 100)
            ]
        );
        let no_consumer = resolve(
            &rs,
            "kcse",
            &entries(&[
                ("endpoint", "kcserl"),
                ("path", "/auth/admin/realms/API-TEST/x"),
            ]),
        );
        assert_eq!(anon.counters[1].key, no_consumer.counters[1].key);
    }

    #[test]
    fn normalised_paths_cannot_escape() {
        let rs = full();
        let r = resolve(
            &rs,
            "kcse",
            &entries(&[
                ("endpoint", "kcserl"),
                ("path", "/auth//admin/realms/%41PI-TEST/./u?x"),
                ("consumer", "c"),
            ]),
        );
        assert_eq!(r.counters.len(), 3, "{:?}", summary(&r));
    }

    #[test]
    fn unknown_things_get_no_limit() {
        let rs = full();
        let cases = [
            (
                "other",
                entries(&[("endpoint", "kcserl"), ("path", "/auth")]),
                Unmatched::UnknownDomain,
            ),
            (
                "kcse",
                entries(&[("path", "/auth")]),
                Unmatched::NoEndpointEntry,
            ),
            (
                "kcse",
                entries(&[("endpoint", "nope"), ("path", "/auth")]),
                Unmatched::UnknownEndpoint,
            ),
        ];
        for (domain, e, why) in cases {
            let r = resolve(&rs, domain, &e);
            assert!(r.counters.is_empty() && r.reject_all.is_none());
            assert_eq!(r.unmatched, Some(why));
        }
    }

    #[test]
    fn overall_zero_rejects_without_counters() {
        let rs = rules(
            "kcse_rate_limits:\n  endpoints:\n    - name: n\n      shortname: s\n      overall_limit: 0\n      uri_prefixes: [{prefix: /, value: 5}]\n",
        );
        let r = resolve(&rs, "kcse", &entries(&[("endpoint", "s"), ("path", "/x")]));
        assert!(r.reject_all.is_some());
        assert!(r.counters.is_empty());
    }
}
