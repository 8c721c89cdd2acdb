//! Test fixtures shared by the rule compilers' and the explain trace's unit tests: rules
//! compiled from limits text, the full example, and descriptor entries from pairs.

use super::{Entry, RuleSet};
use crate::config::{Source, load_sources};

/// `text` (one limits file) compiled; panics on a load error, as a fixture should.
pub(super) fn rules(text: &str) -> RuleSet {
    let loaded = load_sources(&[Source {
        name: "t.yaml".into(),
        text: text.into(),
    }])
    .unwrap_or_else(|e| panic!("{e}"));
    RuleSet::compile(&loaded.config)
}

/// The Keycloak.SE guide's full example (examples/limits/full-example.yaml), compiled.
pub(super) fn full() -> RuleSet {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/limits/full-example.yaml"
    );
    rules(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

/// Descriptor entries from `(key, value)` pairs.
pub(super) fn entries(pairs: &[(&str, &str)]) -> Vec<Entry> {
    pairs
        .iter()
        .map(|(k, v)| Entry {
            key: (*k).into(),
            value: (*v).into(),
        })
        .collect()
}
