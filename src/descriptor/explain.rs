//! Why a request resolves the way it does (`ironclad-rls explain`, docs/observability.md §5):
//! a structured trace of every rule and prefix tried, beside the very [`Resolved`] that
//! [`RuleSet::resolve`] gives, so what the trace lists as counted is what the service counts.
//!
//! Each compiler walks its own rules a second time for the trace, reading the same compiled
//! structures; the trace never decides anything.

use super::{Entry, LimitOverride, Resolved, RuleSet};

/// The trace of one descriptor.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// Which rule format the domain uses, if any.
    pub format: Format,
    /// What was looked at, in the order the compiler looks.
    pub steps: Vec<Step>,
    /// The outcome: the counters touched (their keys, limits, windows, algorithms), or why
    /// none.
    pub resolved: Resolved,
}

/// The format of the request's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The endpoint format (docs/limits-format.md §3).
    Endpoint,
    /// The envoyproxy/ratelimit format (docs/envoy-compat.md).
    Descriptor,
    /// The domain is not configured: nothing is limited.
    UnknownDomain,
}

/// One thing the compiler looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The `endpoint` entry and whether an endpoint has that shortname.
    Endpoint {
        /// The entry's value; `None` when the descriptor has no `endpoint` entry.
        shortname: Option<String>,
        /// An endpoint of the domain has that shortname.
        known: bool,
    },
    /// Who the request counts for.
    Consumer {
        /// The `consumer` entry; `None` (absent or empty) means anonymous.
        consumer: Option<String>,
    },
    /// The endpoint's `overall_limit`.
    Overall {
        /// `None` when not set; `Some(0)` rejects every request without counting.
        limit: Option<u32>,
    },
    /// The `path` entry before and after normalisation (docs/limits-format.md §4).
    Path {
        /// As sent; `None` when the descriptor has no `path` entry (no prefix can match).
        raw: Option<String>,
        /// What prefixes are matched against.
        normalised: Option<String>,
    },
    /// One configured prefix.
    Prefix {
        /// The prefix.
        prefix: String,
        /// The normalised path starts with it.
        matched: bool,
        /// When matched: the rule that applies and its limit, or why none does.
        applies: Option<Applies>,
    },
    /// One request entry in the envoyproxy/ratelimit format, matched at its level.
    DescriptorEntry {
        /// The entry key.
        key: String,
        /// The entry value.
        value: String,
        /// How it matched (`key=value`, a `*` pattern, `key` only), or `None`: the walk
        /// stops and nothing is limited.
        matched: Option<String>,
    },
}

/// What a matched prefix does for the request's consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applies {
    /// A counter with this rule name and limit.
    Rule {
        /// The rule name (`current_limit.name`).
        name: String,
        /// Hits per window.
        limit: u32,
    },
    /// Anonymous, and the prefix sets no `anon_value`: not limited by this prefix.
    NoAnonymousLimit,
}

impl RuleSet {
    /// Explains how one descriptor of `domain` resolves.
    pub fn explain(
        &self,
        domain: &str,
        entries: &[Entry],
        over: Option<LimitOverride>,
    ) -> Explanation {
        let resolved = self.resolve(domain, entries, over);
        let (format, steps) = if let Some(tree) = self.trees.get(domain) {
            (Format::Descriptor, tree.explain(entries))
        } else if let Some(set) = self.endpoints.get(domain) {
            (Format::Endpoint, set.explain(entries))
        } else {
            (Format::UnknownDomain, Vec::new())
        };
        Explanation {
            format,
            steps,
            resolved,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::descriptor::fixtures::{entries, full, rules};

    #[test]
    fn every_prefix_is_listed_with_what_applies() {
        let rs = full();
        let e = explain_of(
            &rs,
            &[
                ("endpoint", "kcserl"),
                ("path", "/auth//admin/realms/API-TEST/./users"),
                ("consumer", "test_client"),
            ],
        );
        assert_eq!(e.format, Format::Endpoint);
        assert!(e.steps.contains(&Step::Path {
            raw: Some("/auth//admin/realms/API-TEST/./users".into()),
            normalised: Some("/auth/admin/realms/API-TEST/users".into()),
        }));
        let prefixes: Vec<(&str, bool)> = e
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Prefix {
                    prefix, matched, ..
                } => Some((prefix.as_str(), *matched)),
                _ => None,
            })
            .collect();
        assert_eq!(
            prefixes,
            vec![
                ("/auth", true),
                ("/auth/admin/realms/API-TEST/", true),
                ("/auth/realms/API-TEST/protocol/openid-connect/token", false),
                ("/auth/resources/", false),
            ]
        );
        assert!(e.steps.contains(&Step::Prefix {
            prefix: "/auth/admin/realms/API-TEST/".into(),
            matched: true,
            applies: Some(Applies::Rule {
                name: "kcserl /auth/admin/realms/API-TEST/ invoker test_client".into(),
                limit: 20
            }),
        }));
        // The counters are resolve's own.
        assert_eq!(e.resolved.counters.len(), 3);
    }

    #[test]
    fn anonymous_without_anon_value_is_said() {
        let rs = full();
        let e = explain_of(&rs, &[("endpoint", "kcserl"), ("path", "/auth/x")]);
        assert!(e.steps.contains(&Step::Consumer { consumer: None }));
        assert!(e.steps.contains(&Step::Prefix {
            prefix: "/auth".into(),
            matched: true,
            applies: Some(Applies::NoAnonymousLimit),
        }));
        assert_eq!(e.resolved.counters.len(), 1, "only the overall counter");
        let unknown = explain_of(&rs, &[("endpoint", "nope")]);
        assert_eq!(
            unknown.steps,
            vec![Step::Endpoint {
                shortname: Some("nope".into()),
                known: false
            }]
        );
        let other = rs.explain("other", &entries(&[("endpoint", "kcserl")]), None);
        assert_eq!(other.format, Format::UnknownDomain);
    }

    #[test]
    fn descriptor_format_walk() {
        let rs = rules(
            "domain: d\ndescriptors:\n  - key: path\n    value: /api/*\n    rate_limit: { unit: minute, requests_per_unit: 8 }\n    descriptors:\n      - key: user\n        rate_limit: { unit: second, requests_per_unit: 2 }\n",
        );
        let e = rs.explain(
            "d",
            &entries(&[("path", "/api/x"), ("user", "u1"), ("extra", "z")]),
            None,
        );
        assert_eq!(e.format, Format::Descriptor);
        let matched: Vec<Option<&str>> = e
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::DescriptorEntry { matched, .. } => Some(matched.as_deref()),
                _ => None,
            })
            .collect();
        assert_eq!(matched, vec![Some("path=/api/*"), Some("user"), None]);
        assert!(e.resolved.counters.is_empty());
    }

    fn explain_of(rs: &RuleSet, pairs: &[(&str, &str)]) -> Explanation {
        rs.explain("kcse", &entries(pairs), None)
    }
}
