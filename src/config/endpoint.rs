//! The endpoint limits format of the Keycloak.SE rate limiter (`kcse_rate_limits`), with every
//! default and decision of the product spec (docs/limits-format.md §1–§2).

use std::collections::HashMap;

use super::diag::Pos;
use super::fields::{Ctx, Fields, join};
use super::model::{
    Counting, Endpoint, EndpointDomain, FieldAt, Invoker, Origin, OverallLimit, Soft, Unit,
    UriPrefix,
};
use super::path::normalize_path;
use super::yaml::Node;

/// The top-level key this format lives under.
pub const ROOT_KEY: &str = "kcse_rate_limits";
/// The domain used when a file does not name one.
pub const DEFAULT_DOMAIN: &str = "kcse";

const ROOT_FIELDS: &[&str] = &["envoyVersion", "domain", "endpoints"];
const ENDPOINT_FIELDS: &[&str] = &[
    "name",
    "shortname",
    "shorname",
    "endpoint",
    "overall_limit",
    "unit",
    "unit_multiplier",
    "algorithm",
    "burst",
    "soft",
    "shadow_mode",
    "uri_prefixes",
    "url_prefixes",
];
const SOFT_FIELDS: &[&str] = &["value", "step"];
const PREFIX_FIELDS: &[&str] = &[
    "prefix",
    "unit",
    "unit_multiplier",
    "algorithm",
    "burst",
    "value",
    "anon_value",
    "invokers",
];
const INVOKER_FIELDS: &[&str] = &[
    "client",
    "unit",
    "unit_multiplier",
    "algorithm",
    "burst",
    "value",
    "anon_value",
];

/// Reads the `kcse_rate_limits` block of one file. Returns `None` when the block itself is
/// unusable; problems inside it are all recorded in `cx`.
pub fn parse_block(cx: &mut Ctx<'_>, block: &Node) -> Option<EndpointDomain> {
    let root = Fields::new(cx, block, ROOT_KEY.to_owned(), ROOT_FIELDS)?;
    let domain = root
        .opt_str(cx, "domain")
        .unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
    let envoy_version = root.get("envoyVersion").and_then(|n| match &n.value {
        super::yaml::Value::Str(s) => Some(s.clone()),
        super::yaml::Value::Int(i) => Some(i.to_string()),
        super::yaml::Value::Float(f) => Some(f.to_string()),
        other => {
            cx.error(
                n.pos,
                &root.path_of("envoyVersion"),
                format!(
                    "expected a version such as \"1.40\", found {}",
                    other.kind()
                ),
            );
            None
        }
    });
    let Some(items) = root.opt_list(cx, "endpoints") else {
        if root.get("endpoints").is_none() {
            cx.error(
                root.pos,
                &root.path_of("endpoints"),
                "required field is missing",
            );
        }
        return None;
    };
    if items.is_empty() {
        cx.warning(
            root.pos,
            &root.path_of("endpoints"),
            "no endpoints: nothing is limited",
        );
    }
    let endpoints = items
        .into_iter()
        .filter_map(|(path, node)| parse_endpoint(cx, node, path))
        .collect();
    Some(EndpointDomain {
        domain,
        envoy_version,
        endpoints,
    })
}

fn parse_endpoint(cx: &mut Ctx<'_>, node: &Node, path: String) -> Option<Endpoint> {
    let f = Fields::new(cx, node, path, ENDPOINT_FIELDS)?;
    let name = f.req_str(cx, "name");
    let (shortname_key, shortname_node) = match (f.get("shortname"), f.get("shorname")) {
        (None, Some(typo)) => ("shorname", Some(typo)),
        (first, _) => ("shortname", first),
    };
    let shortname_at = FieldAt {
        pos: shortname_node.map_or(f.pos, |n| n.pos),
        path: f.path_of(shortname_key),
    };
    let shortname = match (f.get("shortname"), f.get("shorname")) {
        (Some(_), Some(typo)) => {
            cx.error(
                typo.pos,
                &f.path_of("shorname"),
                "both `shortname` and its misspelling `shorname` are set; keep `shortname`",
            );
            None
        }
        (None, Some(typo)) => {
            cx.warning(
                typo.pos,
                &f.path_of("shorname"),
                "`shorname` is accepted as an alias of `shortname`; please rename it",
            );
            f.opt_str(cx, "shorname")
        }
        _ => f.req_str(cx, "shortname"),
    };
    let endpoint = f.opt_str(cx, "endpoint");
    if let (Some(ep), Some(n)) = (&endpoint, f.get("endpoint")) {
        check_host_port(cx, n.pos, &f.path_of("endpoint"), ep);
    }
    let overall_limit = match f.opt_int(cx, "overall_limit", i128::MIN, u32::MAX.into()) {
        None => OverallLimit::None,
        Some(v) if v < 0 => OverallLimit::None,
        Some(0) => OverallLimit::RejectAll,
        Some(v) => OverallLimit::Limit(u32::try_from(v).unwrap_or(u32::MAX)),
    };
    let unit = f.opt_unit(cx, "unit").unwrap_or(Unit::Minute);
    let overall_limits: Vec<u32> = match overall_limit {
        OverallLimit::Limit(l) => vec![l],
        _ => Vec::new(),
    };
    let counting = f.counting(cx, unit, Counting::default(), &overall_limits);
    if let (Some(n), OverallLimit::None | OverallLimit::RejectAll) = (f.get("burst"), overall_limit)
    {
        // At this level `burst` sizes the overall bucket, and there is none.
        cx.error(
            n.pos,
            &f.path_of("burst"),
            "sizes the overall bucket, but there is none: overall_limit must be above 0",
        );
    }
    let soft = f
        .get("soft")
        .and_then(|n| parse_soft(cx, n, f.path_of("soft")));
    let shadow_mode = f.opt_bool(cx, "shadow_mode").unwrap_or(false);

    let prefixes_key = match (f.get("uri_prefixes"), f.get("url_prefixes")) {
        (Some(_), Some(second)) => {
            cx.error(
                second.pos,
                &f.path_of("url_prefixes"),
                "both `uri_prefixes` and its alias `url_prefixes` are set; use one list",
            );
            "uri_prefixes"
        }
        (None, Some(_)) => "url_prefixes",
        _ => "uri_prefixes",
    };
    let mut uri_prefixes: Vec<UriPrefix> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (ppath, pnode) in f.opt_list(cx, prefixes_key).unwrap_or_default() {
        let Some(p) = parse_prefix(cx, pnode, ppath.clone(), unit, counting) else {
            continue;
        };
        if let Some(first) = seen.get(&p.prefix) {
            cx.error(
                pnode.pos,
                &join(&ppath, "prefix"),
                format!("duplicate prefix \"{}\" (also at {first})", p.prefix),
            );
            continue;
        }
        seen.insert(p.prefix.clone(), ppath);
        if let Some(s) = soft {
            warn_soft_above_limits(
                cx,
                pnode.pos,
                &ppath_of(&f, prefixes_key, uri_prefixes.len()),
                &p,
                s,
            );
        }
        uri_prefixes.push(p);
    }
    if let (OverallLimit::None, true) = (overall_limit, uri_prefixes.is_empty()) {
        cx.warning(
            f.pos,
            &f.path,
            "no overall_limit and no prefixes: this endpoint is never limited",
        );
    }
    Some(Endpoint {
        name: name?,
        shortname: shortname?,
        endpoint,
        overall_limit,
        unit,
        counting,
        soft,
        shadow_mode,
        uri_prefixes,
        origin: Origin {
            file: cx.file.to_owned(),
            line: f.pos.line,
        },
        shortname_at,
    })
}

fn ppath_of(f: &Fields<'_>, key: &str, index: usize) -> String {
    format!("{}[{index}]", f.path_of(key))
}

fn parse_soft(cx: &mut Ctx<'_>, node: &Node, path: String) -> Option<Soft> {
    let f = Fields::new(cx, node, path, SOFT_FIELDS)?;
    let max = i128::from(u64::MAX);
    f.require(cx, "value", "required when `soft` is present");
    let value = f.opt_int(cx, "value", 0, max)?;
    let step = f.opt_int(cx, "step", 1, max).unwrap_or(1);
    Some(Soft {
        value: u64::try_from(value).ok()?,
        step: u64::try_from(step).ok()?,
    })
}

fn parse_prefix(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: String,
    default_unit: Unit,
    parent: Counting,
) -> Option<UriPrefix> {
    let f = Fields::new(cx, node, path, PREFIX_FIELDS)?;
    let raw = f.req_str(cx, "prefix");
    let prefix = raw.and_then(|raw| {
        let pos = f.get("prefix").map_or(f.pos, |n| n.pos);
        if !raw.starts_with('/') {
            cx.error(pos, &f.path_of("prefix"), format!("must start with `/`, found \"{raw}\""));
            return None;
        }
        let normal = normalize_path(&raw);
        if normal != raw {
            cx.warning(
                pos,
                &f.path_of("prefix"),
                format!("\"{raw}\" is matched as \"{normal}\": request paths are normalised before matching"),
            );
        }
        Some(normal)
    });
    let unit = f.opt_unit(cx, "unit").unwrap_or(default_unit);
    let value = f.opt_limit(cx, "value");
    if value.is_none() && f.get("value").is_none() {
        cx.warning(
            f.pos,
            &f.path_of("value"),
            "no `value`: each identified consumer gets 1 request per unit",
        );
    }
    let anon_value = f.opt_limit(cx, "anon_value");
    if f.get("anon_value").is_none() {
        cx.warning(
            f.pos,
            &f.path_of("anon_value"),
            "no `anon_value`: anonymous requests are not limited by this prefix",
        );
    }
    let value = value.unwrap_or(1);
    let limits: Vec<u32> = std::iter::once(value).chain(anon_value).collect();
    let counting = f.counting(cx, unit, parent, &limits);
    // An invoker inherits everything but `burst`, which sizes this level's buckets only.
    let inherited = Counting {
        burst: None,
        ..counting
    };

    let mut invokers: Vec<Invoker> = Vec::new();
    for (ipath, inode) in f.opt_list(cx, "invokers").unwrap_or_default() {
        let Some(inv) = parse_invoker(cx, inode, ipath.clone(), unit, inherited, value) else {
            continue;
        };
        if invokers.iter().any(|i| i.client == inv.client) {
            cx.error(
                inode.pos,
                &join(&ipath, "client"),
                format!("duplicate client \"{}\" in this prefix", inv.client),
            );
            continue;
        }
        invokers.push(inv);
    }
    Some(UriPrefix {
        prefix: prefix?,
        unit,
        counting,
        value,
        anon_value,
        invokers,
    })
}

fn parse_invoker(
    cx: &mut Ctx<'_>,
    node: &Node,
    path: String,
    unit: Unit,
    parent: Counting,
    value: u32,
) -> Option<Invoker> {
    let f = Fields::new(cx, node, path, INVOKER_FIELDS)?;
    let client = f.req_str(cx, "client");
    let unit = f.opt_unit(cx, "unit").unwrap_or(unit);
    let value = f.opt_limit(cx, "value").unwrap_or(value);
    let counting = f.counting(cx, unit, parent, &[value]);
    if let Some(n) = f.get("anon_value") {
        // The seed's full example has one; it must load, but it cannot mean anything.
        cx.warning(
            n.pos,
            &f.path_of("anon_value"),
            "has no effect: an anonymous request has no client to match an invoker",
        );
    }
    Some(Invoker {
        client: client?,
        unit,
        counting,
        value,
    })
}

fn warn_soft_above_limits(cx: &mut Ctx<'_>, pos: Pos, path: &str, p: &UriPrefix, soft: Soft) {
    let mut watched: Vec<String> = vec![format!("value {}", p.value)];
    watched.extend(p.anon_value.map(|a| format!("anon_value {a}")));
    watched.extend(
        p.invokers
            .iter()
            .map(|i| format!("{} {}", i.client, i.value)),
    );
    let limits = std::iter::once(p.value)
        .chain(p.anon_value)
        .chain(p.invokers.iter().map(|i| i.value));
    let under: Vec<String> = limits
        .zip(watched)
        .filter(|(limit, _)| soft.value >= u64::from(*limit))
        .map(|(_, label)| label)
        .collect();
    if !under.is_empty() {
        cx.warning(
            pos,
            path,
            format!("soft.value {} is at or above the limit it watches ({}): no soft crossing is ever counted there", soft.value, under.join(", ")),
        );
    }
}

fn check_host_port(cx: &mut Ctx<'_>, pos: Pos, path: &str, value: &str) {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        cx.error(pos, path, format!("expected host:port, found \"{value}\""));
    }
}
