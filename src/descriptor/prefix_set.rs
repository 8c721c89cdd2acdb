//! Finds *every* configured prefix that a path starts with (docs/limits-format.md §4: all
//! matching prefixes apply), in a handful of hash lookups instead of a scan of all prefixes.

use std::collections::HashMap;

/// A set of string prefixes, each with an index into the caller's list.
#[derive(Debug, Clone, Default)]
pub struct PrefixSet {
    /// The distinct prefix lengths, ascending: a path can only match a prefix of one of them.
    lengths: Vec<usize>,
    by_text: HashMap<Box<[u8]>, usize>,
}

impl PrefixSet {
    /// Builds the set; `prefixes[i]` gets index `i`. Later duplicates are ignored (the loader
    /// already rejects them).
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut set = PrefixSet::default();
        for (i, p) in prefixes.into_iter().enumerate() {
            set.by_text.entry(p.as_bytes().into()).or_insert(i);
            set.lengths.push(p.len());
        }
        set.lengths.sort_unstable();
        set.lengths.dedup();
        set
    }

    /// Indices of the prefixes `path` starts with, shortest prefix first. Byte-wise and
    /// case-sensitive, like Envoy's own `prefix` route match.
    pub fn matches<'s>(&'s self, path: &'s str) -> impl Iterator<Item = usize> + 's {
        let bytes = path.as_bytes();
        self.lengths
            .iter()
            .take_while(move |&&len| len <= bytes.len())
            .filter_map(move |&len| self.by_text.get(&bytes[..len]).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nested_prefixes_all_match() {
        let prefixes = [
            "/auth",
            "/auth/admin/realms/API-TEST/",
            "/auth/resources/",
            "/other",
        ];
        let set = PrefixSet::new(prefixes);
        let hits: Vec<usize> = set.matches("/auth/admin/realms/API-TEST/users").collect();
        assert_eq!(hits, vec![0, 1]);
        assert_eq!(set.matches("/authx").collect::<Vec<_>>(), vec![0]);
        assert_eq!(set.matches("/au").count(), 0);
        assert_eq!(set.matches("/Auth").count(), 0);
    }

    proptest! {
        /// The hash-based matcher agrees with the obvious scan of every prefix.
        #[test]
        fn agrees_with_naive_scan(
            prefixes in proptest::collection::hash_set("/[ab/é]{0,5}", 0..12),
            path in "/[ab/é]{0,8}",
        ) {
            let prefixes: Vec<String> = prefixes.into_iter().collect();
            let set = PrefixSet::new(prefixes.iter().map(String::as_str));
            let mut got: Vec<usize> = set.matches(&path).collect();
            got.sort_unstable();
            let want: Vec<usize> = (0..prefixes.len()).filter(|&i| path.starts_with(&prefixes[i])).collect();
            prop_assert_eq!(got, want);
        }
    }
}
