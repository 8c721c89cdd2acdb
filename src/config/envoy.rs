//! The envoyproxy/ratelimit configuration format (`domain` + nested `descriptors`), loaded
//! unchanged, with its validation rules (docs/envoy-compat.md).

use std::collections::HashSet;

use super::fields::{Ctx, Fields};
use super::model::{Counting, DescriptorConfig, DescriptorDomain, Origin, RateLimitConfig};
use super::yaml::Node;

const ROOT_FIELDS: &[&str] = &["domain", "descriptors"];
const DESCRIPTOR_FIELDS: &[&str] = &[
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "share_threshold",
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
    let name = f.opt_str(cx, "name");
    if f.opt_bool(cx, "unlimited").unwrap_or(false) {
        for field in [
            "unit",
            "requests_per_unit",
            "unit_multiplier",
            "algorithm",
            "burst",
            "replaces",
        ] {
            if let Some(n) = f.get(field) {
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
