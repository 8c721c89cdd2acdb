//! envoyproxy/ratelimit matching: walk the request's entries level by level; at each level
//! the exact `key`+`value` node, else the first `*` pattern (in file order) that matches,
//! else the `key`-only node. No backtracking. The limit is the one at the node matched by the
//! last entry (docs/envoy-compat.md §2). A matched rule carries its quota mode and
//! metadata to the limiter; `value_to_metric` puts the request's value of a level in the
//! metric's rule label (bounded by the metrics, as `detailed_metric` is).

use std::collections::HashMap;
use std::sync::Arc;

use super::explain::Step;
use super::key::CounterKey;
use super::wildcard;
use super::{CounterLabels, CounterRule, Entry, LimitOverride, Resolved, RuleCache, Unmatched};
use crate::config::{
    Counting, DescriptorConfig, DescriptorDomain, Metadata, RateLimitConfig, Unit,
};

/// The compiled descriptors of one domain.
#[derive(Debug, Default)]
pub(super) struct DescriptorTree {
    domain: String,
    root: Level,
}

#[derive(Debug, Default)]
struct Level {
    by_key: HashMap<String, KeyGroup>,
}

#[derive(Debug, Default)]
struct KeyGroup {
    exact: HashMap<String, Node>,
    patterns: Vec<(String, Node)>,
    any: Option<Box<Node>>,
}

#[derive(Debug)]
struct Node {
    limit: Option<Limit>,
    shadow: bool,
    detailed_metric: bool,
    share_threshold: bool,
    quota: bool,
    value_to_metric: bool,
    metadata: Option<Arc<Metadata>>,
    /// This level's part of the key path (`key`, `key=value`, `key=pattern`).
    step: String,
    children: Level,
}

#[derive(Debug)]
enum Limit {
    Unlimited,
    Counted {
        requests_per_unit: u32,
        unit: Unit,
        counting: Counting,
        /// `name`, else the key path: `current_limit.name` and the metric's `rule` label.
        name: Arc<str>,
        configured_name: Option<Arc<str>>,
        replaces: Arc<[Arc<str>]>,
        cache: RuleCache,
    },
}

impl DescriptorTree {
    /// Compiles one domain.
    pub(super) fn compile(d: &DescriptorDomain) -> Self {
        DescriptorTree {
            domain: d.domain.clone(),
            root: level(&d.descriptors, ""),
        }
    }

    /// Resolves a descriptor; `over` replaces the configured limit.
    pub(super) fn resolve(&self, entries: &[Entry], over: Option<LimitOverride>) -> Resolved {
        let mut level = &self.root;
        let mut node = None;
        // The values that identify the counter: the request's, or a shared pattern.
        let mut identity: Vec<(&str, &str)> = Vec::with_capacity(entries.len());
        // Set when a matched level has `value_to_metric`: its label is then built per level.
        let mut value_to_metric = false;
        for e in entries {
            let found = level.by_key.get(&e.key).and_then(|g| {
                if let Some(n) = g.exact.get(&e.value) {
                    return Some((n, e.value.as_str()));
                }
                if let Some((p, n)) = g
                    .patterns
                    .iter()
                    .find(|(p, _)| wildcard::matches(p, &e.value))
                {
                    return Some((
                        n,
                        if n.share_threshold {
                            p.as_str()
                        } else {
                            e.value.as_str()
                        },
                    ));
                }
                g.any.as_deref().map(|n| (n, e.value.as_str()))
            });
            match found {
                Some((n, value)) => {
                    identity.push((&e.key, value));
                    value_to_metric |= n.value_to_metric;
                    node = Some(n);
                    level = &n.children;
                }
                None => {
                    node = None;
                    break;
                }
            }
        }
        let key = || CounterKey::descriptor(&self.domain, identity.iter().copied());
        let path = || {
            entries
                .iter()
                .map(|e| format!("{}={}", e.key, e.value))
                .collect::<Vec<_>>()
                .join(".")
        };
        // An override needs only the domain (docs/envoy-compat.md), and is never in shadow mode.
        // It replaces the limit and window, not how the matched rule counts: a strict
        // sliding window or bucket stays one (a fixed window where no rule matched).
        if let Some(o) = over {
            let configured = match node.map(|n| &n.limit) {
                Some(Some(Limit::Counted { counting, .. })) => *counting,
                _ => Counting::default(),
            };
            let entries_only: Vec<(&str, &str)> = entries
                .iter()
                .map(|e| (e.key.as_str(), e.value.as_str()))
                .collect();
            return Resolved::counted(CounterRule {
                key: CounterKey::descriptor(&self.domain, entries_only),
                limit: o.requests_per_unit,
                unit: o.unit,
                counting: Counting {
                    unit_multiplier: o.unit_multiplier.max(1),
                    ..configured
                },
                name: format!("override {}", path()).into(),
                shadow: false,
                soft: None,
                labels: labels(&self.domain),
                detail: None,
                configured_name: None,
                replaces: Arc::from([]),
                // An override is the request's own limit: neither quota mode nor metadata
                // of a rule applies, as in the reference.
                quota: false,
                metadata: None,
                cache: RuleCache::none(),
            });
        }
        let Some(node) = node else {
            return Resolved::unmatched(Unmatched::NoRule);
        };
        match &node.limit {
            Some(Limit::Counted {
                requests_per_unit,
                unit,
                counting,
                name,
                configured_name,
                replaces,
                cache,
            }) => Resolved::counted(CounterRule {
                key: key(),
                limit: *requests_per_unit,
                unit: *unit,
                counting: *counting,
                name: name.clone(),
                shadow: node.shadow,
                soft: None,
                labels: labels(&self.domain),
                detail: if node.detailed_metric {
                    Some(path())
                } else if value_to_metric {
                    Some(self.value_to_metric_label(entries))
                } else {
                    None
                },
                configured_name: configured_name.clone(),
                replaces: replaces.clone(),
                quota: node.quota,
                metadata: node.metadata.clone(),
                cache: cache.clone(),
            }),
            Some(Limit::Unlimited) => Resolved {
                unlimited: true,
                ..Resolved::unmatched(Unmatched::NoRule)
            },
            None => Resolved::unmatched(Unmatched::NoRule),
        }
    }
}

impl DescriptorTree {
    /// The rule label with `value_to_metric` (as the reference builds it): per level, the
    /// request's value where the matched node has `value_to_metric`, the pattern where a
    /// shared pattern matched (`share_threshold` wins), else the configured step. Only
    /// called for a descriptor that matched every entry.
    fn value_to_metric_label(&self, entries: &[Entry]) -> String {
        let mut level = &self.root;
        let mut out = String::new();
        for e in entries {
            let Some(g) = level.by_key.get(&e.key) else {
                break;
            };
            let (n, via_pattern) = match g.exact.get(&e.value) {
                Some(n) => (n, false),
                None => match g
                    .patterns
                    .iter()
                    .find(|(p, _)| wildcard::matches(p, &e.value))
                {
                    Some((_, n)) => (n, true),
                    None => match g.any.as_deref() {
                        Some(n) => (n, false),
                        None => break,
                    },
                },
            };
            if !out.is_empty() {
                out.push('.');
            }
            if n.value_to_metric && !(via_pattern && n.share_threshold) {
                out.push_str(&e.key);
                out.push('=');
                out.push_str(&e.value);
            } else {
                out.push_str(&n.step);
            }
            level = &n.children;
        }
        out
    }

    /// The trace of [`DescriptorTree::resolve`]'s walk (`ironclad-rls explain`): each entry
    /// and the node it matched, up to the first that matches none.
    pub(super) fn explain(&self, entries: &[Entry]) -> Vec<Step> {
        let mut level = &self.root;
        let mut steps = Vec::with_capacity(entries.len());
        let mut stopped = false;
        for e in entries {
            let found = if stopped {
                None
            } else {
                level.by_key.get(&e.key).and_then(|g| {
                    if let Some(n) = g.exact.get(&e.value) {
                        return Some((n, format!("{}={}", e.key, e.value)));
                    }
                    if let Some((p, n)) = g
                        .patterns
                        .iter()
                        .find(|(p, _)| wildcard::matches(p, &e.value))
                    {
                        return Some((n, format!("{}={p}", e.key)));
                    }
                    g.any.as_deref().map(|n| (n, e.key.clone()))
                })
            };
            stopped |= found.is_none();
            steps.push(Step::DescriptorEntry {
                key: e.key.clone(),
                value: e.value.clone(),
                matched: found.as_ref().map(|(_, how)| how.clone()),
            });
            if let Some((n, _)) = found {
                level = &n.children;
            }
        }
        steps
    }
}

fn labels(domain: &str) -> CounterLabels {
    CounterLabels {
        endpoint: domain.into(),
        prefix: None,
        consumer: None,
    }
}

fn level(descriptors: &[DescriptorConfig], parent_path: &str) -> Level {
    let mut out = Level::default();
    for d in descriptors {
        let step = match &d.value {
            Some(v) => format!("{}={v}", d.key),
            None => d.key.clone(),
        };
        let path = if parent_path.is_empty() {
            step.clone()
        } else {
            format!("{parent_path}.{step}")
        };
        let node = Node {
            limit: d.rate_limit.as_ref().map(|r| match r {
                RateLimitConfig::Unlimited { .. } => Limit::Unlimited,
                RateLimitConfig::Limit {
                    requests_per_unit,
                    unit,
                    counting,
                    name,
                    replaces,
                } => Limit::Counted {
                    requests_per_unit: *requests_per_unit,
                    unit: *unit,
                    counting: *counting,
                    name: name.clone().unwrap_or_else(|| path.clone()).into(),
                    configured_name: name.as_deref().map(Arc::from),
                    replaces: replaces.iter().map(|r| Arc::from(r.as_str())).collect(),
                    cache: RuleCache::new(),
                },
            }),
            shadow: d.shadow_mode,
            detailed_metric: d.detailed_metric,
            share_threshold: d.share_threshold,
            quota: d.quota_mode,
            value_to_metric: d.value_to_metric,
            metadata: d.metadata.clone().map(Arc::new),
            step,
            children: level(&d.descriptors, &path),
        };
        let group = out.by_key.entry(d.key.clone()).or_default();
        match &d.value {
            Some(v) if v.contains('*') => group.patterns.push((v.clone(), node)),
            Some(v) => {
                group.exact.insert(v.clone(), node);
            }
            None => group.any = Some(Box::new(node)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Source, load_sources};
    use crate::descriptor::RuleSet;

    const CONFIG: &str = "domain: d
descriptors:
  - key: remote_address
    rate_limit: { unit: second, requests_per_unit: 10 }
  - key: database
    value: users
    rate_limit: { unit: minute, requests_per_unit: 3 }
    descriptors:
      - key: client
        rate_limit: { name: per-client, unit: minute, requests_per_unit: 100 }
  - key: path
    value: /api/*/items
    rate_limit: { unit: minute, requests_per_unit: 7 }
  - key: path
    value: /api/*
    share_threshold: true
    rate_limit: { unit: minute, requests_per_unit: 8 }
  - key: path
    rate_limit: { unit: hour, requests_per_unit: 9 }
  - key: free
    rate_limit: { unlimited: true }
";

    fn rules() -> RuleSet {
        let loaded = load_sources(&[Source {
            name: "t.yaml".into(),
            text: CONFIG.into(),
        }])
        .unwrap();
        RuleSet::compile(&loaded.config)
    }

    fn resolve(rs: &RuleSet, pairs: &[(&str, &str)]) -> Option<(String, u32, String)> {
        let entries: Vec<Entry> = pairs
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect();
        let r = rs.resolve("d", &entries, None);
        r.counters
            .first()
            .map(|c| (c.name.to_string(), c.limit, c.key.to_string()))
    }

    #[test]
    fn matching_follows_the_reference() {
        let rs = rules();
        // Key-only: any value, each with its own counter.
        let a = resolve(&rs, &[("remote_address", "10.0.0.1")]).unwrap();
        let b = resolve(&rs, &[("remote_address", "10.0.0.2")]).unwrap();
        assert_eq!((a.0.as_str(), a.1), ("remote_address", 10));
        assert_ne!(a.2, b.2);
        // Exact value, and a limit at an inner level only for the last entry.
        assert_eq!(resolve(&rs, &[("database", "users")]).unwrap().1, 3);
        assert_eq!(
            resolve(&rs, &[("database", "users"), ("client", "x")])
                .unwrap()
                .0,
            "per-client"
        );
        assert_eq!(resolve(&rs, &[("database", "other")]), None);
        // More entries than the configured path: no limit.
        assert_eq!(
            resolve(
                &rs,
                &[("database", "users"), ("client", "x"), ("extra", "y")]
            ),
            None
        );
        // No backtracking: `database=users` matched, a miss below is no limit.
        assert_eq!(resolve(&rs, &[("database", "users"), ("nope", "x")]), None);
        // Exact first, then the first matching pattern in file order, then key-only.
        assert_eq!(resolve(&rs, &[("path", "/api/v1/items")]).unwrap().1, 7);
        assert_eq!(resolve(&rs, &[("path", "/api/v1/users")]).unwrap().1, 8);
        assert_eq!(resolve(&rs, &[("path", "/other")]).unwrap().1, 9);
        // Patterns count each value apart, unless share_threshold.
        assert_ne!(
            resolve(&rs, &[("path", "/api/a/items")]).unwrap().2,
            resolve(&rs, &[("path", "/api/b/items")]).unwrap().2
        );
        assert_eq!(
            resolve(&rs, &[("path", "/api/x")]).unwrap().2,
            resolve(&rs, &[("path", "/api/y")]).unwrap().2
        );
        // Unlimited: no counter; unknown key: no limit; order matters.
        assert_eq!(resolve(&rs, &[("free", "x")]), None);
        assert_eq!(resolve(&rs, &[("unknown", "x")]), None);
        assert_eq!(
            resolve(&rs, &[("client", "x"), ("database", "users")]),
            None
        );
    }

    #[test]
    fn an_override_needs_only_the_domain() {
        let rs = rules();
        let entries = vec![Entry {
            key: "unknown".into(),
            value: "x".into(),
        }];
        let over = Some(LimitOverride {
            requests_per_unit: 42,
            unit: Unit::Day,
            unit_multiplier: 3,
        });
        let r = rs.resolve("d", &entries, over);
        assert_eq!((r.counters[0].limit, r.counters[0].unit), (42, Unit::Day));
        assert_eq!(r.counters[0].counting.unit_multiplier, 3);
        assert!(
            rs.resolve("other-domain", &entries, over)
                .counters
                .is_empty()
        );
    }

    #[test]
    fn value_to_metric_labels_carry_the_requests_value_at_that_level() {
        let text = "domain: d
descriptors:
  - key: route
    value_to_metric: true
    descriptors:
      - key: method
        rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: api
    value: v1/*
    share_threshold: true
    value_to_metric: true
    descriptors:
      - key: user
        value_to_metric: true
        quota_mode: true
        metadata: { tier: gold }
        rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: plain
    rate_limit: { unit: minute, requests_per_unit: 1 }
";
        let loaded = load_sources(&[Source {
            name: "t.yaml".into(),
            text: text.into(),
        }])
        .unwrap();
        let rs = RuleSet::compile(&loaded.config);
        let rule = |pairs: &[(&str, &str)]| {
            let entries: Vec<Entry> = pairs
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect();
            rs.resolve("d", &entries, None).counters.remove(0)
        };
        // The route's value is in the label; the method level has no flag: its key only.
        let r = rule(&[("route", "/users"), ("method", "GET")]);
        assert_eq!(r.detail.as_deref(), Some("route=/users.method"));
        assert_eq!(&*r.name, "route.method", "current_limit.name is unchanged");
        // A shared pattern keeps its pattern (share_threshold wins); the user's value shows.
        let r = rule(&[("api", "v1/items"), ("user", "u1")]);
        assert_eq!(r.detail.as_deref(), Some("api=v1/*.user=u1"));
        assert!(r.quota);
        assert_eq!(
            r.metadata
                .as_deref()
                .map(|m| serde_json::Value::Object(m.clone())),
            Some(serde_json::json!({ "tier": "gold" }))
        );
        // No flag anywhere: no detail label.
        assert_eq!(rule(&[("plain", "x")]).detail, None);
        assert!(!rule(&[("plain", "x")]).quota);
    }
}
