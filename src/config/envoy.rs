//! The envoyproxy/ratelimit configuration format (`domain` + nested `descriptors`), loaded
//! unchanged, with its validation rules (docs/envoy-compat.md).
//!
//! Every field of the reference's current format is read, and every zero value Envoy Gateway
//! writes when it serialises a `RateLimitConfig` (`rate_limit: null`, `value: ""`,
//! `name: ""`, `replaces: []`, `descriptors: []`, booleans `false`) means the same as the
//! field left out (docs/envoy-compat.md §1).

use std::collections::HashSet;

use super::fields::{Ctx, Fields};
use super::model::{
    Counting, DescriptorConfig, DescriptorDomain, Metadata, Origin, RateLimitConfig,
};
use super::yaml::{Node, Value};

const ROOT_FIELDS: &[&str] = &["name", "domain", "descriptors"];
const DESCRIPTOR_FIELDS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "share_threshold",
    "quota_mode",
    "value_to_metric",
    "metadata",
];
const RATE_LIMIT_FIELDS: &[&str] = &[
    "unit",
    "requests_per_unit",
    "unit_multiplier",
    "algorithm",
    "burst",
    "unlimited",
    "name",
    "replaces",
];
const REPLACES_FIELDS: &[&str] = &["name"];

/// A `replaces` entry, checked once every rule name of the domain is known.
struct Replace {
    target: String,
    own_name: Option<String>,
    pos: super::diag::Pos,
    path: String,
}

/// Reads a whole file of this format. `None` when it is unusable; every problem is in `cx`.
pub fn parse_file(cx: &mut Ctx<'_>, root: &Node) -> Option<DescriptorDomain> {
    let f = Fields::new(cx, root, String::new(), ROOT_FIELDS)?;
    let name = opt_name(cx, &f, "name");
    let domain = f.req_str(cx, "domain");
    let mut pending = Vec::new();
    let descriptors = parse_level(cx, &f, "descriptors", &mut pending);
    let mut names = Vec::new();
    collect_names(&descriptors, &mut names);
    for r in pending {
        let problem = if r.own_name.as_deref() == Some(r.target.as_str()) {
            "a rule cannot replace itself"
        } else if !names.contains(&r.target.as_str()) {
            "names no rule in this domain"
        } else {
            continue;
        };
        cx.error(r.pos, &r.path, format!("\"{}\": {problem}", r.target));
    }
    Some(DescriptorDomain {
        domain: domain?,
        descriptors,
        origin: Origin {
            file: cx.file.to_owned(),
            line: f.pos.line,
        },
        name,
    })
}

/// An optional name where `""` is no name, as Envoy Gateway writes an unset one.
fn opt_name(cx: &mut Ctx<'_>, f: &Fields<'_>, key: &str) -> Option<String> {
    match f.get(key).map(|n| &n.value) {
        Some(Value::Str(s)) if s.is_empty() => None,
        _ => f.opt_str(cx, key),
    }
}

/// True when `key` is absent or written as its zero value (`""`, `0`, `false`, `[]`): what
/// Envoy Gateway writes for a field it does not set.
fn is_unset(f: &Fields<'_>, key: &str) -> bool {
    match f.get(key).map(|n| &n.value) {
        None => true,
        Some(Value::Str(s)) => s.is_empty(),
        Some(Value::Int(0) | Value::Bool(false)) => true,
        Some(Value::Seq(items)) => items.is_empty(),
        Some(_) => false,
    }
}

/// `metadata`: a mapping of any YAML values, kept as JSON. Scalar keys are read as text (the
/// reference prints them with `%v`); a float JSON cannot hold (NaN, infinity) or a key that
/// is a list, a mapping or null is an error.
fn parse_metadata(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<Metadata> {
    let Value::Map(entries) = &node.value else {
        cx.error(
            node.pos,
            path,
            format!("expected a mapping, found {}", node.value.kind()),
        );
        return None;
    };
    let mut out = Metadata::new();
    let mut ok = true;
    for (k, v) in entries {
        let key = match &k.value {
            Value::Str(s) => s.clone(),
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Float(x) => x.to_string(),
            other => {
                cx.error(
                    k.pos,
                    path,
                    format!("a metadata key must be text, found {}", other.kind()),
                );
                ok = false;
                continue;
            }
        };
        let vpath = super::fields::join(path, &key);
        match json_of(cx, v, &vpath) {
            Some(j) => {
                out.insert(key, j);
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn json_of(cx: &mut Ctx<'_>, node: &Node, path: &str) -> Option<serde_json::Value> {
    use serde_json::Value as J;
    Some(match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        // Beyond i64 (a YAML integer can be wider): a double, as a protobuf Struct holds it.
        Value::Int(i) => i64::try_from(*i)
            .map(J::from)
            .unwrap_or_else(|_| serde_json::Number::from_f64(*i as f64).map_or(J::Null, J::Number)),
        Value::Float(x) => match serde_json::Number::from_f64(*x) {
            Some(n) => J::Number(n),
            None => {
                cx.error(
                    node.pos,
                    path,
                    format!("{x} cannot be held in metadata (JSON has no NaN or infinity)"),
                );
                return None;
            }
        },
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(json_of(cx, item, &format!("{path}[{i}]"))?);
            }
            J::Array(out)
        }
        Value::Map(_) => J::Object(parse_metadata(cx, node, path)?),
    })
}

/// The descriptors under `key` of a mapping: one level, with its duplicate check.
fn parse_level(
    cx: &mut Ctx<'_>,
    f: &Fields<'_>,
    key: &str,
    pending: &mut Vec<Replace>,
) -> Vec<DescriptorConfig> {
    let mut out: Vec<DescriptorConfig> = Vec::new();
    let mut seen: HashSet<(String, Option<String>)> = HashSet::new();
    for (path, node) in f.opt_list(cx, key).unwrap_or_default() {
        let Some(d) = parse_descriptor(cx, node, path.clone(), pending) else {
            continue;
        };
        if !seen.insert((d.key.clone(), d.value.clone())) {
            let what = match &d.value {
                Some(v) => format!("key \"{}\" with value \"{v}\"", d.key),
                None => format!("key \"{}\" without a value", d.key),
            };
            cx.error(
                node.pos,
                &path,
                format!("duplicate descriptor: {what} appears twice at this level"),
            );
            continue;
        }
        out.push(d);
    }
    out
}

fn parse_descriptor(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: String,
    pending: &mut Vec<Replace>,
) -> Option<DescriptorConfig> {
    let f = Fields::new(cx, node, path, DESCRIPTOR_FIELDS)?;
    let key = f.req_str(cx, "key");
    // The reference reads a missing and an empty value alike: any value.
    let value = match f.get("value").map(|n| &n.value) {
        Some(super::yaml::Value::Str(s)) if s.is_empty() => None,
        _ => f.opt_str(cx, "value"),
    };
    let rate_limit = f
        .get("rate_limit")
        .and_then(|n| parse_rate_limit(cx, n, f.path_of("rate_limit"), pending));
    let shadow_mode = f.opt_bool(cx, "shadow_mode").unwrap_or(false);
    let detailed_metric = f.opt_bool(cx, "detailed_metric").unwrap_or(false);
    let share_threshold = f.opt_bool(cx, "share_threshold").unwrap_or(false);
    let quota_mode = f.opt_bool(cx, "quota_mode").unwrap_or(false);
    let value_to_metric = f.opt_bool(cx, "value_to_metric").unwrap_or(false);
    // An empty mapping is no metadata, as in the reference.
    let metadata = f
        .get("metadata")
        .and_then(|n| parse_metadata(cx, n, &f.path_of("metadata")))
        .filter(|m| !m.is_empty());
    if share_threshold && !value.as_deref().is_some_and(|v| v.contains('*')) {
        let pos = f.get("share_threshold").map_or(f.pos, |n| n.pos);
        cx.error(
            pos,
            &f.path_of("share_threshold"),
            "only a value with a `*` pattern can share its counter",
        );
    }
    let descriptors = parse_level(cx, &f, "descriptors", pending);
    Some(DescriptorConfig {
        key: key?,
        value,
        rate_limit,
        shadow_mode,
        detailed_metric,
        share_threshold,
        quota_mode,
        value_to_metric,
        metadata,
        descriptors,
    })
}

fn parse_rate_limit(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: String,
    pending: &mut Vec<Replace>,
) -> Option<RateLimitConfig> {
    let f = Fields::new(cx, node, path, RATE_LIMIT_FIELDS)?;
    let name = opt_name(cx, &f, "name");
    if f.opt_bool(cx, "unlimited").unwrap_or(false) {
        for field in [
            "unit",
            "requests_per_unit",
            "unit_multiplier",
            "algorithm",
            "burst",
            "replaces",
        ] {
            // A zero value is a field left out (Envoy Gateway writes every field).
            if let Some(n) = f.get(field).filter(|_| !is_unset(&f, field)) {
                cx.error(
                    n.pos,
                    &f.path_of(field),
                    "not allowed beside `unlimited: true`",
                );
            }
        }
        return Some(RateLimitConfig::Unlimited { name });
    }
    f.require(
        cx,
        "unit",
        "required field is missing (or set `unlimited: true`)",
    );
    let unit = f.opt_unit(cx, "unit");
    f.require(cx, "requests_per_unit", "required field is missing");
    let requests_per_unit = f.opt_limit(cx, "requests_per_unit");
    let counting = unit.map(|u| {
        let limits: Vec<u32> = requests_per_unit.into_iter().collect();
        f.counting(cx, u, Counting::default(), &limits)
    });
    let mut replaces = Vec::new();
    for (rpath, rnode) in f.opt_list(cx, "replaces").unwrap_or_default() {
        if let Some(rf) = Fields::new(cx, rnode, rpath, REPLACES_FIELDS)
            && let Some(n) = rf.req_str(cx, "name")
        {
            pending.push(Replace {
                target: n.clone(),
                own_name: name.clone(),
                pos: rf.get("name").map_or(rf.pos, |v| v.pos),
                path: rf.path_of("name"),
            });
            replaces.push(n);
        }
    }
    Some(RateLimitConfig::Limit {
        requests_per_unit: requests_per_unit?,
        unit: unit?,
        counting: counting?,
        name,
        replaces,
    })
}

fn collect_names<'a>(descriptors: &'a [DescriptorConfig], out: &mut Vec<&'a str>) {
    for d in descriptors {
        if let Some(
            RateLimitConfig::Limit { name: Some(n), .. }
            | RateLimitConfig::Unlimited { name: Some(n) },
        ) = &d.rate_limit
        {
            out.push(n);
        }
        collect_names(&d.descriptors, out);
    }
}
