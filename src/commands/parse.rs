//! Value parsers that several commands' flags share, so `--timeout 5s` or
//! `--descriptor k=v` read the same everywhere. Each returns the message clap prints after
//! the flag's name.

use std::time::Duration;

/// A humantime duration: `15ms`, `5s`, `1m`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 15ms, 5s, 1m)"))
}

/// One descriptor: `key=value[,key=value...]`. A value runs to the next comma and keeps
/// every `=` after the first, so a path with a query string stays whole; an empty value is
/// allowed (Envoy sends them), an empty key is not.
pub(crate) fn descriptor(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("expected key=value, found {pair:?}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_keep_everything_after_the_first_equals() {
        assert_eq!(
            descriptor("endpoint=e,path=/a?b=c").unwrap(),
            vec![
                ("endpoint".into(), "e".into()),
                ("path".into(), "/a?b=c".into())
            ]
        );
        assert_eq!(descriptor("k=").unwrap(), vec![("k".into(), String::new())]);
        for bad in ["novalue", "=v", "a=1,,b=2"] {
            assert!(descriptor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_name_examples_when_wrong() {
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(duration("5").unwrap_err().contains("examples: 15ms"));
    }
}
