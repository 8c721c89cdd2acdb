//! The compiled rules: resolve (domain, descriptor) → the counters it touches, and the
//! collision-free encoding of counter keys.
//!
//! Pure: must not depend on tonic, prost, redis, notify, HTTP crates or `std::env`. Depends
//! on `config` for the validated model only (and `config` uses [`normalize_path`] so that a
//! prefix is stored in the form request paths are matched in).

pub mod key;
pub mod path;
pub mod prefix_set;
pub mod rules;
pub mod tree;
pub mod wildcard;

pub use key::{CounterKey, CounterScope};
pub use path::normalize_path;
pub use rules::{
    ANONYMOUS, CounterLabels, CounterRule, Entry, RejectAll, Resolved, RuleSet, Unmatched,
};
pub use tree::{DescriptorTree, LimitOverride};
