//! Counter identity. A counter key names *what* is counted (domain, endpoint, prefix,
//! consumer), never the limit, so counters survive a reload that changes a limit.
//!
//! Format (docs/counter-store.md §4, relied on by the Redis store):
//!
//! ```text
//! {<domain>:<endpoint>}:o                          overall counter of an endpoint
//! {<domain>:<endpoint>}:p:<prefix>:c:<consumer>    one consumer under a prefix
//! {<domain>:<endpoint>}:p:<prefix>:a               all anonymous requests under a prefix
//! {<domain>:<k1>=<v1>:<k2>=<v2>...}:d              a descriptor (envoyproxy/ratelimit format)
//! ```
//!
//! Every component is escaped (`%` → `%25`, `:` → `%3A`, `=` → `%3D`, `{` → `%7B`, `}` →
//! `%7D`), so the separators cannot occur inside a component and the encoding is injective:
//! two different counters never share a key (envoyproxy/ratelimit joins with a bare `_`, so
//! `(a_b, c)` and `(a, b_c)` collide there). The braces are a Redis Cluster hash tag: all
//! counters of one endpoint land on one slot, so one script sees them all; a descriptor of the
//! envoyproxy/ratelimit format has one counter, tagged by all of its entries.

use std::fmt;
use std::sync::Arc;

/// An encoded, collision-free counter key (without the store's prefix or window).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey(Arc<str>);

/// What a counter counts, before encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CounterScope<'a> {
    /// Every request to the endpoint.
    Overall,
    /// One identified consumer under a prefix.
    Consumer {
        /// The configured prefix.
        prefix: &'a str,
        /// The client id.
        consumer: &'a str,
    },
    /// All anonymous requests under a prefix.
    Anonymous {
        /// The configured prefix.
        prefix: &'a str,
    },
}

impl CounterKey {
    /// The key of a descriptor of the envoyproxy/ratelimit format: its domain and entries.
    pub fn descriptor<'e>(
        domain: &str,
        entries: impl IntoIterator<Item = (&'e str, &'e str)>,
    ) -> Self {
        let mut s = String::with_capacity(64);
        s.push('{');
        escape_into(domain, &mut s);
        for (k, v) in entries {
            s.push(':');
            escape_into(k, &mut s);
            s.push('=');
            escape_into(v, &mut s);
        }
        s.push_str("}:d");
        CounterKey(s.into())
    }
}

impl CounterKey {
    /// Encodes a counter's identity.
    pub fn new(domain: &str, endpoint: &str, scope: &CounterScope<'_>) -> Self {
        let mut s = String::with_capacity(domain.len() + endpoint.len() + 32);
        s.push('{');
        escape_into(domain, &mut s);
        s.push(':');
        escape_into(endpoint, &mut s);
        s.push('}');
        match scope {
            CounterScope::Overall => s.push_str(":o"),
            CounterScope::Consumer { prefix, consumer } => {
                s.push_str(":p:");
                escape_into(prefix, &mut s);
                s.push_str(":c:");
                escape_into(consumer, &mut s);
            }
            CounterScope::Anonymous { prefix } => {
                s.push_str(":p:");
                escape_into(prefix, &mut s);
                s.push_str(":a");
            }
        }
        CounterKey(s.into())
    }

    /// What every consumer key under one prefix starts with,
    /// `{<domain>:<endpoint>}:p:<prefix>:c:`: built once per prefix when the configuration is
    /// compiled, so a request only escapes and appends its consumer ([`CounterKey::from_stem`]).
    pub fn consumer_stem(domain: &str, endpoint: &str, prefix: &str) -> String {
        let mut s = String::with_capacity(domain.len() + endpoint.len() + prefix.len() + 8);
        s.push('{');
        escape_into(domain, &mut s);
        s.push(':');
        escape_into(endpoint, &mut s);
        s.push_str("}:p:");
        escape_into(prefix, &mut s);
        s.push_str(":c:");
        s
    }

    /// A consumer's key from its prefix's [`CounterKey::consumer_stem`]: the same key as
    /// [`CounterKey::new`] with [`CounterScope::Consumer`].
    pub fn from_stem(stem: &str, consumer: &str) -> Self {
        let mut s = String::with_capacity(stem.len() + consumer.len() + 8);
        s.push_str(stem);
        escape_into(consumer, &mut s);
        CounterKey(s.into())
    }

    /// The encoded key.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn escape_into(component: &str, out: &mut String) {
    // Most components need no escape: copy them whole instead of char by char.
    if !component
        .bytes()
        .any(|b| matches!(b, b'%' | b':' | b'=' | b'{' | b'}'))
    {
        out.push_str(component);
        return;
    }
    for ch in component.chars() {
        match ch {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '=' => out.push_str("%3D"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn underscore_joins_do_not_collide() {
        let a = CounterKey::new("d", "a_b", &CounterScope::Anonymous { prefix: "c" });
        let b = CounterKey::new("d", "a", &CounterScope::Anonymous { prefix: "b_c" });
        assert_ne!(a, b);
        let a = CounterKey::new(
            "d",
            "e",
            &CounterScope::Consumer {
                prefix: "/p:c:x",
                consumer: "y",
            },
        );
        let b = CounterKey::new(
            "d",
            "e",
            &CounterScope::Consumer {
                prefix: "/p",
                consumer: "x:c:y",
            },
        );
        assert_ne!(a, b);
    }

    #[test]
    fn descriptor_keys_do_not_collide() {
        // The reference's regression: `(a_b, c)` and `(a, b_c)` joined with `_` are one key.
        let a = CounterKey::descriptor("d", [("a_b", "c")]);
        let b = CounterKey::descriptor("d", [("a", "b_c")]);
        assert_ne!(a, b);
        let a = CounterKey::descriptor("d", [("k", "v:x=y")]);
        let b = CounterKey::descriptor("d", [("k", "v"), ("x", "y")]);
        assert_ne!(a, b);
        assert_eq!(
            CounterKey::descriptor("d", [("k", "v")]).as_str(),
            "{d:k=v}:d"
        );
        // Never equal to an endpoint-format key.
        assert_ne!(
            CounterKey::descriptor("d", []),
            CounterKey::new("d", "", &CounterScope::Overall)
        );
    }

    #[test]
    fn hash_tag_is_domain_and_endpoint() {
        let k = CounterKey::new("kcse", "ep}{", &CounterScope::Overall);
        assert_eq!(k.as_str(), "{kcse:ep%7D%7B}:o");
    }

    fn scope() -> impl Strategy<Value = (u8, String, String)> {
        (0u8..3, "[a:_%{}b]{0,4}", "[a:_%{}b]{0,4}")
    }

    fn build(domain: &str, endpoint: &str, (kind, p, c): &(u8, String, String)) -> CounterKey {
        let scope = match kind {
            0 => CounterScope::Overall,
            1 => CounterScope::Consumer {
                prefix: p,
                consumer: c,
            },
            _ => CounterScope::Anonymous { prefix: p },
        };
        CounterKey::new(domain, endpoint, &scope)
    }

    fn canonical(
        domain: &str,
        endpoint: &str,
        (kind, p, c): &(u8, String, String),
    ) -> (String, String, u8, String, String) {
        // Fields that a scope does not use must not distinguish identities.
        match kind {
            0 => (
                domain.into(),
                endpoint.into(),
                0,
                String::new(),
                String::new(),
            ),
            1 => (domain.into(), endpoint.into(), 1, p.clone(), c.clone()),
            _ => (domain.into(), endpoint.into(), 2, p.clone(), String::new()),
        }
    }

    const OPEN: char = '{';
    const CLOSE: char = '}';

    proptest! {
        /// Equal keys if and only if equal identities.
        #[test]
        fn encoding_is_injective(
            d1 in "[a:_%{}]{0,3}", e1 in "[a:_%{}]{0,3}", s1 in scope(),
            d2 in "[a:_%{}]{0,3}", e2 in "[a:_%{}]{0,3}", s2 in scope(),
        ) {
            let same_identity = canonical(&d1, &e1, &s1) == canonical(&d2, &e2, &s2);
            prop_assert_eq!(build(&d1, &e1, &s1) == build(&d2, &e2, &s2), same_identity);
        }

        /// A key built from a prefix's stem is the key built in one go.
        #[test]
        fn stems_build_the_same_keys(d in "[a:_%{}=]{0,3}", e in "[a:_%{}=]{0,3}", p in "[a:_%{}=/]{0,4}", c in "[a:_%{}=]{0,4}") {
            let whole = CounterKey::new(&d, &e, &CounterScope::Consumer { prefix: &p, consumer: &c });
            prop_assert_eq!(CounterKey::from_stem(&CounterKey::consumer_stem(&d, &e, &p), &c), whole);
        }

        /// The hash tag is always the first `{...}` and holds exactly domain and endpoint.
        #[test]
        fn hash_tag_is_well_formed(d in ".{0,4}", e in ".{0,4}", s in scope()) {
            let key = build(&d, &e, &s);
            let k = key.as_str();
            let close = k.find(CLOSE).unwrap();
            prop_assert_eq!(k.chars().next(), Some(OPEN));
            prop_assert_eq!(k[1..close].matches(':').count(), 1);
        }
    }
}
