//! The endpoint format's compiler (docs/limits-format.md §3–§4): a domain's endpoints → the
//! counters a request touches, with entries looked up by key in any order. Built once per
//! configuration load; read by every request.

use std::collections::HashMap;
use std::sync::Arc;

use super::explain::{Applies, Step};
use super::key::{CounterKey, CounterScope};
use super::prefix_set::PrefixSet;
use super::{CounterLabels, CounterRule, Entry, RejectAll, Resolved, RuleCache, Unmatched};
use crate::config::{Counting, Endpoint, OverallLimit, Soft, Unit, normalize_path};

/// Entry key naming the endpoint (its `shortname`).
pub const ENTRY_ENDPOINT: &str = "endpoint";
/// Entry key carrying the request path.
pub const ENTRY_PATH: &str = "path";
/// Entry key carrying the consumer id; absent or empty means anonymous.
pub const ENTRY_CONSUMER: &str = "consumer";
/// The `consumer` value used in labels and logs for anonymous requests.
pub const ANONYMOUS: &str = "_anonymous";

/// The compiled endpoints of one domain, by shortname.
#[derive(Debug, Default)]
pub(super) struct EndpointSet {
    by_shortname: HashMap<String, EndpointRules>,
}

#[derive(Debug)]
struct EndpointRules {
    shortname: Arc<str>,
    unit: Unit,
    counting: Counting,
    overall: OverallLimit,
    overall_name: Arc<str>,
    /// The overall counter's key, built once.
    overall_key: CounterKey,
    overall_cache: RuleCache,
    shadow: bool,
    soft: Option<Soft>,
    prefixes: Vec<PrefixRules>,
    matcher: PrefixSet,
}

#[derive(Debug)]
struct PrefixRules {
    prefix: Arc<str>,
    /// Keys built once: every anonymous request's, and the start of each consumer's.
    anon_key: CounterKey,
    consumer_stem: String,
    unit: Unit,
    counting: Counting,
    value: u32,
    anon_value: Option<u32>,
    client_name: Arc<str>,
    anon_name: Arc<str>,
    client_cache: RuleCache,
    anon_cache: RuleCache,
    invokers: HashMap<String, InvokerRule>,
}

#[derive(Debug)]
struct InvokerRule {
    unit: Unit,
    counting: Counting,
    value: u32,
    name: Arc<str>,
    cache: RuleCache,
}

impl EndpointSet {
    /// Adds one endpoint of `domain`.
    pub(super) fn insert(&mut self, domain: &str, ep: &Endpoint) {
        self.by_shortname
            .insert(ep.shortname.clone(), compile_endpoint(domain, ep));
    }

    /// Resolves one descriptor: entries are looked up by key, in any order, and when a key
    /// is repeated the first occurrence counts.
    pub(super) fn resolve(&self, entries: &[Entry]) -> Resolved {
        let find = |k: &str| {
            entries
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        let Some(shortname) = find(ENTRY_ENDPOINT) else {
            return Resolved::unmatched(Unmatched::NoEndpointEntry);
        };
        let Some(ep) = self.by_shortname.get(shortname) else {
            return Resolved::unmatched(Unmatched::UnknownEndpoint);
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
                key: ep.overall_key.clone(),
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
                quota: false,
                metadata: None,
                cache: ep.overall_cache.clone(),
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

impl EndpointSet {
    /// The trace of [`EndpointSet::resolve`] (`ironclad-rls explain`): the same lookups,
    /// written down instead of acted on.
    pub(super) fn explain(&self, entries: &[Entry]) -> Vec<Step> {
        let find = |k: &str| {
            entries
                .iter()
                .find(|e| e.key == k)
                .map(|e| e.value.as_str())
        };
        let shortname = find(ENTRY_ENDPOINT);
        let ep = shortname.and_then(|s| self.by_shortname.get(s));
        let mut steps = vec![Step::Endpoint {
            shortname: shortname.map(str::to_owned),
            known: ep.is_some(),
        }];
        let Some(ep) = ep else { return steps };
        let consumer = find(ENTRY_CONSUMER).filter(|c| !c.is_empty());
        steps.push(Step::Consumer {
            consumer: consumer.map(str::to_owned),
        });
        steps.push(Step::Overall {
            limit: match ep.overall {
                OverallLimit::None => None,
                OverallLimit::RejectAll => Some(0),
                OverallLimit::Limit(n) => Some(n),
            },
        });
        if ep.overall == OverallLimit::RejectAll {
            // Nothing else is looked at: the request is rejected and nothing counted.
            return steps;
        }
        let raw = find(ENTRY_PATH);
        let normalised = raw.map(normalize_path);
        steps.push(Step::Path {
            raw: raw.map(str::to_owned),
            normalised: normalised.clone(),
        });
        let matched: Vec<usize> = normalised
            .as_deref()
            .map(|p| ep.matcher.matches(p).collect())
            .unwrap_or_default();
        for (i, p) in ep.prefixes.iter().enumerate() {
            let hit = matched.contains(&i);
            steps.push(Step::Prefix {
                prefix: p.prefix.to_string(),
                matched: hit,
                applies: hit.then(|| match ep.counter_for(p, consumer) {
                    Some(rule) => Applies::Rule {
                        name: rule.name.to_string(),
                        limit: rule.limit,
                    },
                    None => Applies::NoAnonymousLimit,
                }),
            });
        }
        steps
    }
}

impl EndpointRules {
    fn counter_for(&self, p: &PrefixRules, consumer: Option<&str>) -> Option<CounterRule> {
        let (scope, limit, unit, counting, (name, cache)) = match consumer {
            Some(c) => match p.invokers.get(c) {
                Some(inv) => (
                    CounterScope::Consumer {
                        prefix: &p.prefix,
                        consumer: c,
                    },
                    inv.value,
                    inv.unit,
                    inv.counting,
                    (inv.name.clone(), inv.cache.clone()),
                ),
                None => (
                    CounterScope::Consumer {
                        prefix: &p.prefix,
                        consumer: c,
                    },
                    p.value,
                    p.unit,
                    p.counting,
                    (p.client_name.clone(), p.client_cache.clone()),
                ),
            },
            None => (
                CounterScope::Anonymous { prefix: &p.prefix },
                p.anon_value?,
                p.unit,
                p.counting,
                (p.anon_name.clone(), p.anon_cache.clone()),
            ),
        };
        Some(CounterRule {
            key: match scope {
                CounterScope::Consumer { consumer, .. } => {
                    CounterKey::from_stem(&p.consumer_stem, consumer)
                }
                _ => p.anon_key.clone(),
            },
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
            quota: false,
            metadata: None,
            cache,
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
            anon_key: CounterKey::new(
                domain,
                short,
                &CounterScope::Anonymous { prefix: &p.prefix },
            ),
            consumer_stem: CounterKey::consumer_stem(domain, short, &p.prefix),
            unit: p.unit,
            counting: p.counting,
            value: p.value,
            anon_value: p.anon_value,
            client_name: format!("{short} {} client", p.prefix).into(),
            anon_name: format!("{short} {} anonymous", p.prefix).into(),
            client_cache: RuleCache::new(),
            anon_cache: RuleCache::new(),
            invokers: p
                .invokers
                .iter()
                .map(|i| {
                    let rule = InvokerRule {
                        unit: i.unit,
                        counting: i.counting,
                        value: i.value,
                        name: format!("{short} {} invoker {}", p.prefix, i.client).into(),
                        cache: RuleCache::new(),
                    };
                    (i.client.clone(), rule)
                })
                .collect(),
        })
        .collect();
    EndpointRules {
        shortname: short.into(),
        unit: ep.unit,
        counting: ep.counting,
        overall: ep.overall_limit,
        overall_name: format!("{short} overall").into(),
        overall_key: CounterKey::new(domain, short, &CounterScope::Overall),
        overall_cache: RuleCache::new(),
        shadow: ep.shadow_mode,
        soft: ep.soft,
        matcher: PrefixSet::new(prefixes.iter().map(|p| &*p.prefix)),
        prefixes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::RuleSet;
    use crate::descriptor::fixtures::{entries, full, rules};

    fn resolve(rs: &RuleSet, domain: &str, e: &[Entry]) -> Resolved {
        rs.resolve(domain, e, None)
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
