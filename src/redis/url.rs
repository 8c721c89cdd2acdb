//! Redis addresses: parsing with the password from a file, and a redacted form for logs and
//! `/config` (credentials never leave the process).

/// `redis://user:secret@host:6379/0` → `redis://user:***@host:6379/0`; a URL without
/// credentials is returned unchanged. Bare `host:port` is accepted as given.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let redacted = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{user}:***@{host}")
        }
        None => rest.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{redacted}"),
        None => redacted,
    }
}

/// Adds `redis://` to a bare `host:port`.
pub fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("redis://{url}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hidden() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(redact("rediss://:s3cret@h:1"), "rediss://:***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("h:1"), "h:1");
        assert_eq!(redact("redis://u:p@ss@h:1"), "redis://u:***@h:1");
        assert!(!redact("redis://a:b%40c@h:1").contains("b%40c"));
    }

    #[test]
    fn bare_addresses_get_a_scheme() {
        assert_eq!(with_scheme("h:1"), "redis://h:1");
        assert_eq!(with_scheme("rediss://h:1"), "rediss://h:1");
    }
}
