//! Request path normalisation, so that `/auth//admin/realms/%41PI-TEST/` cannot escape the
//! limit on `/auth/admin/realms/API-TEST/` (docs/limits-format.md §3).
//!
//! It lives in `config` because the normalised form is part of the limits format: the loader
//! stores every `prefix` in it, and `descriptor` (which already depends on `config` for the
//! model) applies the same function to request paths, so the two can never drift apart and
//! `config` needs nothing from `descriptor`.

/// Normalises a request path (Envoy's `:path`) for prefix matching, in this order:
///
/// 1. the query string and fragment are cut off (they are not part of the path in any
///    reading of the URL);
/// 2. the spellings some backends read as a separator become `/`: `%2F`, `%5C` (either
///    case) and `\` (docs/limits-format.md §3);
/// 3. each segment's `;` parameters are dropped (`/a;x=1/b` → `/a/b`), after step 2 so a
///    parameter can never hide a separator;
/// 4. percent-encoded *unreserved* characters are decoded (other escapes keep their meaning,
///    with hex digits upper-cased so `%3b` and `%3B` compare equal; a `%` that starts no
///    escape becomes `%25`);
/// 5. runs of `/` are merged and `.` / `..` segments are resolved (never above the root).
///
/// The result always starts with `/`; a trailing `/` is kept. Treating every such spelling
/// as a separator can match more prefixes than a given backend would route, which is the
/// safe side for a limiter; matching fewer would let a spelling escape a limit.
pub fn normalize_path(raw: &str) -> String {
    let end = raw.find(['?', '#']).unwrap_or(raw.len());
    let separated = drop_params(&separators_as_slash(&raw[..end]));
    let decoded = decode_unreserved(&separated);

    // Dot segments are resolved after decoding, so `%2e%2e` counts as `..`.
    let mut segments: Vec<&str> = Vec::new();
    let parts: Vec<&str> = decoded.split('/').filter(|s| !s.is_empty()).collect();
    // A path that ends in `/`, `/.` or `/..` names a directory: keep the trailing slash.
    let trailing = decoded.ends_with('/')
        || parts
            .last()
            .is_some_and(|last| *last == "." || *last == "..");
    for part in parts {
        match part {
            "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    out
}

/// `%2F`, `%5C` (either case) and `\` → `/`. Other escapes are copied whole, so the `2F` of
/// `%252F` (an escaped `%` followed by the text `2F`) is never read as a separator.
fn separators_as_slash(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| {
                Some((
                    hex_value(*bytes.get(i + 1)?)?,
                    hex_value(*bytes.get(i + 2)?)?,
                ))
            })
            .flatten();
        let (is_separator, len) = match (bytes[i], escape) {
            (b'\\', _) => (true, 1),
            (b'%', Some((h, l))) => (matches!(h * 16 + l, b'/' | b'\\'), 3),
            _ => (false, 1),
        };
        if is_separator {
            out.push_str(&s[copied..i]);
            out.push('/');
            copied = i + len;
        }
        i += len;
    }
    out.push_str(&s[copied..]);
    out
}

/// Drops every segment's `;` parameters: from a `;` to the end of its segment.
fn drop_params(s: &str) -> String {
    s.split('/')
        .map(|seg| seg.split_once(';').map_or(seg, |(kept, _)| kept))
        .collect::<Vec<_>>()
        .join("/")
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

fn decode_unreserved(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| Some((hex_value(bytes[i + 1])?, hex_value(bytes[i + 2])?)))
            .flatten();
        if let Some((h, l)) = escape {
            let b = h * 16 + l;
            if is_unreserved(b) {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(bytes[i + 1].to_ascii_uppercase() as char);
                out.push(bytes[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
            continue;
        }
        if bytes[i] == b'%' {
            // A `%` that starts no escape is itself escaped, so that decoding can never make a
            // new escape out of it (`%%30` would otherwise become `%0` on one pass and stay
            // `%0` on the next, and normalising would not be idempotent).
            out.push_str("%25");
            i += 1;
            continue;
        }
        // Copy one UTF-8 character (paths on the wire are ASCII, but a value is any string).
        let ch_len = s[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&s[i..i + ch_len]);
        i += ch_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn examples() {
        let cases = [
            (
                "/auth//admin/realms/%41PI-TEST/",
                "/auth/admin/realms/API-TEST/",
            ),
            (
                "/auth/admin/realms/API-TEST/users?x=1",
                "/auth/admin/realms/API-TEST/users",
            ),
            ("/a/b#frag", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/a/%2e%2E/b", "/b"),
            ("/../../etc", "/etc"),
            ("/a/..", "/"),
            ("/a/b/.", "/a/b/"),
            ("", "/"),
            ("/", "/"),
            ("auth/x", "/auth/x"),
            // Separator spellings (docs/limits-format.md §3).
            ("/a%2fb", "/a/b"),
            ("/a%2Fb", "/a/b"),
            ("/a%5cb", "/a/b"),
            ("/a%5Cb", "/a/b"),
            ("/a\\b", "/a/b"),
            ("/a%2F%2F..%2Fb", "/b"),
            ("/a\\..\\b", "/b"),
            ("/a%252Fb", "/a%252Fb"),
            ("/a%3bx", "/a%3Bx"),
            // `;` parameters, dropped per segment.
            ("/a;x=1/b", "/a/b"),
            ("/a;x=1;y=2/b;z", "/a/b"),
            ("/;x/b", "/b"),
            ("/a/;x", "/a/"),
            ("/a/..;/b", "/b"),
            ("/a;x%2Fy/b", "/a/y/b"),
            ("/a;x?q=1;2", "/a"),
            (
                "/auth/admin/realms/API-TEST%2Fusers",
                "/auth/admin/realms/API-TEST/users",
            ),
            (
                "/auth/admin/realms/API-TEST;x=1/users",
                "/auth/admin/realms/API-TEST/users",
            ),
            (
                "/auth/admin/realms/API-TEST\\users",
                "/auth/admin/realms/API-TEST/users",
            ),
            ("/%7Euser", "/~user"),
            ("/bad%zzescape%4", "/bad%25zzescape%254"),
            ("/%%30a", "/%250a"),
            ("/ünïcode//x", "/ünïcode/x"),
        ];
        for (raw, want) in cases {
            assert_eq!(normalize_path(raw), want, "normalize_path({raw:?})");
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_~-]{1,6}".prop_filter("not a dot segment", |s| s != "." && s != "..")
    }

    /// Rewrites a clean path into one of the many spellings a client could send for it.
    fn disguise(segments: &[String], noise: &[u8]) -> String {
        let mut out = String::new();
        for (i, seg) in segments.iter().enumerate() {
            let n = noise.get(i).copied().unwrap_or(0);
            out.push('/');
            if n & 1 == 1 {
                out.push('/');
            }
            if n & 2 == 2 {
                out.push_str("./");
            }
            if n & 4 == 4 {
                out.push_str("zz/../");
            }
            if n & 16 == 16 {
                // A separator spelling some backends read as `/`.
                out.push_str(["%2F", "%2f", "%5C", "\\"][usize::from(n >> 6)]);
            }
            if n & 8 == 8 {
                // Percent-encode the first character of the segment.
                let first = seg.as_bytes()[0];
                out.push_str(&format!("%{first:02x}"));
                out.push_str(&seg[1..]);
            } else {
                out.push_str(seg);
            }
            if n & 32 == 32 {
                out.push_str(";jsessionid=x");
            }
        }
        out
    }

    proptest! {
        #[test]
        fn disguised_paths_normalise_to_the_clean_one(
            segs in proptest::collection::vec(segment(), 1..6),
            noise in proptest::collection::vec(any::<u8>(), 6),
            query in "(\\?[a-z=&]{0,8})?",
        ) {
            let clean = format!("/{}", segs.join("/"));
            let sent = format!("{}{}", disguise(&segs, &noise), query);
            prop_assert_eq!(normalize_path(&sent), clean);
        }

        #[test]
        fn normalisation_is_idempotent_and_clean(raw in "[/a-z.%0-9A-Fcf?#;=\\\\]{0,24}") {
            let once = normalize_path(&raw);
            prop_assert_eq!(normalize_path(&once), once.clone());
            prop_assert!(once.starts_with('/'));
            prop_assert!(!once.contains("//"));
            prop_assert!(!once.split('/').any(|s| s == "." || s == ".."));
            // No separator spelling and no parameter survives.
            prop_assert!(!once.contains(['\\', ';']));
            prop_assert!(!once.to_ascii_uppercase().contains("%2F"));
            prop_assert!(!once.to_ascii_uppercase().contains("%5C"));
        }
    }
}
