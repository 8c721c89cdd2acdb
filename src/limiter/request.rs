//! A rate limit request in domain terms, and the bounds every request must respect
//! (docs/service.md §2), checked before any rule or counter is touched.

use crate::descriptor::{Entry, LimitOverride};

/// Most descriptors in one request.
pub const MAX_DESCRIPTORS: usize = 64;
/// Most entries in one descriptor.
pub const MAX_ENTRIES: usize = 32;
/// Longest entry key or value, in bytes.
pub const MAX_ENTRY_BYTES: usize = 4096;

/// A ShouldRateLimit request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// The rate limit domain.
    pub domain: String,
    /// The descriptors, in request order.
    pub descriptors: Vec<Descriptor>,
    /// Request-level hits; 0 means 1.
    pub hits_addend: u32,
}

/// One descriptor of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Its entries, in order.
    pub entries: Vec<Entry>,
    /// Overrides the request's hits; `Some(0)` checks without counting.
    pub hits_addend: Option<u64>,
    /// Give quota back instead of taking it.
    pub is_negative_hits: bool,
    /// Replaces the configured limit (envoyproxy/ratelimit-format domains only).
    pub limit_override: Option<LimitOverride>,
}

/// Why a request was refused before it was evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRequest(pub String);

impl Request {
    /// Checks the bounds of docs/service.md §2. The message names the offending part.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        let bad = |m: String| Err(InvalidRequest(m));
        if self.domain.is_empty() {
            return bad("domain must not be empty".into());
        }
        if self.domain.len() > MAX_ENTRY_BYTES {
            return bad(format!("domain is longer than {MAX_ENTRY_BYTES} bytes"));
        }
        if self.descriptors.is_empty() {
            return bad("request has no descriptors".into());
        }
        if self.descriptors.len() > MAX_DESCRIPTORS {
            return bad(format!(
                "request has {} descriptors; at most {MAX_DESCRIPTORS} are allowed",
                self.descriptors.len()
            ));
        }
        for (i, d) in self.descriptors.iter().enumerate() {
            if d.entries.is_empty() {
                return bad(format!("descriptors[{i}] has no entries"));
            }
            if d.entries.len() > MAX_ENTRIES {
                return bad(format!(
                    "descriptors[{i}] has {} entries; at most {MAX_ENTRIES} are allowed",
                    d.entries.len()
                ));
            }
            for (j, e) in d.entries.iter().enumerate() {
                if e.key.is_empty() {
                    return bad(format!("descriptors[{i}].entries[{j}] has an empty key"));
                }
                if e.key.len() > MAX_ENTRY_BYTES || e.value.len() > MAX_ENTRY_BYTES {
                    return bad(format!(
                        "descriptors[{i}].entries[{j}] has a key or value longer than {MAX_ENTRY_BYTES} bytes"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The hits a descriptor takes: its own `hits_addend` if set (0 = check only), else the
    /// request's, where 0 means 1.
    pub fn hits_for(&self, d: &Descriptor) -> u64 {
        d.hits_addend
            .unwrap_or_else(|| u64::from(self.hits_addend.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(pairs: &[(&str, &str)]) -> Descriptor {
        Descriptor {
            entries: pairs
                .iter()
                .map(|(k, v)| Entry {
                    key: (*k).into(),
                    value: (*v).into(),
                })
                .collect(),
            ..Descriptor::default()
        }
    }

    fn req(descriptors: Vec<Descriptor>) -> Request {
        Request {
            domain: "d".into(),
            descriptors,
            hits_addend: 0,
        }
    }

    #[test]
    fn bounds_are_enforced_with_clear_messages() {
        let long = "x".repeat(MAX_ENTRY_BYTES + 1);
        let cases: Vec<(Request, &str)> = vec![
            (
                Request {
                    domain: String::new(),
                    ..req(vec![desc(&[("a", "b")])])
                },
                "domain must not be empty",
            ),
            (req(vec![]), "no descriptors"),
            (req(vec![desc(&[])]), "descriptors[0] has no entries"),
            (
                req(vec![desc(&[("a", "b")]), desc(&[("", "b")])]),
                "descriptors[1].entries[0] has an empty key",
            ),
            (req(vec![desc(&[("a", "b")]); 65]), "at most 64"),
            (req(vec![desc(&vec![("a", "b"); 33])]), "at most 32"),
            (req(vec![desc(&[("a", &long)])]), "longer than 4096 bytes"),
        ];
        for (r, want) in cases {
            let err = r.validate().unwrap_err();
            assert!(err.0.contains(want), "{err} does not mention {want:?}");
        }
        assert!(req(vec![desc(&[("a", "")])]).validate().is_ok());
    }

    #[test]
    fn hits_defaults() {
        let mut r = req(vec![desc(&[("a", "b")])]);
        assert_eq!(r.hits_for(&r.descriptors[0]), 1);
        r.hits_addend = 5;
        assert_eq!(r.hits_for(&r.descriptors[0]), 5);
        let mut d = desc(&[("a", "b")]);
        d.hits_addend = Some(0);
        assert_eq!(r.hits_for(&d), 0);
    }
}
