//! `*` patterns of the envoyproxy/ratelimit format: each `*` matches zero or more characters,
//! anywhere in the value; everything else matches itself.

/// True when `value` matches `pattern`. Greedy with one-star backtracking: linear in
/// practice, and never exponential (a later `*` supersedes the earlier one's choices).
pub fn matches(pattern: &str, value: &str) -> bool {
    let (p, v) = (pattern.as_bytes(), value.as_bytes());
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, vi));
            pi += 1;
        } else if pi < p.len() && p[pi] == v[vi] {
            pi += 1;
            vi += 1;
        } else if let Some((sp, sv)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The definition, spelled out: try every split at every `*`.
    fn naive(p: &[u8], v: &[u8]) -> bool {
        match p.split_first() {
            None => v.is_empty(),
            Some((b'*', rest)) => (0..=v.len()).any(|i| naive(rest, &v[i..])),
            Some((c, rest)) => v.first() == Some(c) && naive(rest, &v[1..]),
        }
    }

    #[test]
    fn examples() {
        assert!(matches("foo*", "foo"));
        assert!(matches("foo*", "foobar"));
        assert!(!matches("foo*", "fo"));
        assert!(matches("/api/*/items", "/api/v1/items"));
        assert!(matches("/api/*/items", "/api//items"));
        assert!(!matches("/api/*/items", "/api/v1/item"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "aXbYbZc"));
        assert!(!matches("a*b*c", "aXbYbZ"));
        assert!(matches("exact", "exact"));
        assert!(!matches("exact", "exactly"));
    }

    proptest! {
        #[test]
        fn agrees_with_the_naive_definition(pattern in "[ab*]{0,8}", value in "[ab]{0,10}") {
            prop_assert_eq!(matches(&pattern, &value), naive(pattern.as_bytes(), value.as_bytes()));
        }
    }
}
