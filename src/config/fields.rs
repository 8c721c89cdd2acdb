//! Typed, position-aware reads of YAML mappings for the format validators: every read that
//! fails records a diagnostic with the field path and carries on, so one pass reports all.

use super::diag::{Diagnostics, Pos, did_you_mean};
use super::model::{Algorithm, Counting, MAX_WINDOW_MS, Unit};
use super::yaml::{Node, Value};

/// Above this limit, `validate` warns about a sliding window's memory: its exact log holds
/// one entry per admitting call (about 24 bytes in Redis, from `MEMORY USAGE` of a 500 000
/// entry log), so a limit of L admitted one hit at a time holds up to L entries.
const SLIDING_LOG_WARN: u32 = 100_000;

/// The file being checked and the diagnostics found so far.
pub struct Ctx<'a> {
    /// The file name used in diagnostics.
    pub file: &'a str,
    /// Everything found so far.
    pub diags: &'a mut Diagnostics,
}

impl Ctx<'_> {
    /// Records an error at a node.
    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.diags.error(self.file, Some(pos), path, message);
    }

    /// Records a warning at a node.
    pub fn warning(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.diags.warning(self.file, Some(pos), path, message);
    }
}

/// A mapping being read: its entries, its field path and where it starts.
pub struct Fields<'n> {
    entries: &'n [(Node, Node)],
    /// Field path of the mapping itself.
    pub path: String,
    /// Position of the mapping.
    pub pos: Pos,
}

impl<'n> Fields<'n> {
    /// Reads `node` as a mapping whose keys must all be in `known`; unknown or non-string keys
    /// are errors (with a "did you mean" hint). `None` (and an error) when it is not a mapping.
    pub fn new(cx: &mut Ctx<'_>, node: &'n Node, path: String, known: &[&str]) -> Option<Self> {
        let Some(entries) = node.as_map() else {
            cx.error(
                node.pos,
                &path,
                format!("expected a mapping, found {}", node.value.kind()),
            );
            return None;
        };
        for (k, _) in entries {
            match k.as_str() {
                Some(name) if known.contains(&name) => {}
                Some(name) => {
                    let hint = did_you_mean(name, known)
                        .map(|s| format!("; did you mean `{s}`?"))
                        .unwrap_or_default();
                    cx.error(
                        k.pos,
                        &join(&path, name),
                        format!(
                            "unknown field `{name}`{hint} (known fields: {})",
                            known.join(", ")
                        ),
                    );
                }
                None => cx.error(
                    k.pos,
                    &path,
                    format!("expected a string key, found {}", k.value.kind()),
                ),
            }
        }
        Some(Fields {
            entries,
            path,
            pos: node.pos,
        })
    }

    /// The node under `key`, if present (an explicit `null` counts as absent, as in YAML
    /// `value:` with nothing after it).
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
            .filter(|v| v.value != Value::Null)
    }

    /// The field path of `key` inside this mapping.
    pub fn path_of(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Records `message` as an error at this mapping when `key` is absent; true if present.
    pub fn require(&self, cx: &mut Ctx<'_>, key: &str, message: &str) -> bool {
        let present = self.get(key).is_some();
        if !present {
            cx.error(self.pos, &self.path_of(key), message);
        }
        present
    }

    /// A required non-empty string.
    pub fn req_str(&self, cx: &mut Ctx<'_>, key: &str) -> Option<String> {
        if !self.require(cx, key, "required field is missing") {
            return None;
        }
        self.opt_str(cx, key)
    }

    /// An optional non-empty string. Numbers are refused rather than converted, because YAML
    /// would already have turned `007` into 7: quoting keeps client ids exact.
    pub fn opt_str(&self, cx: &mut Ctx<'_>, key: &str) -> Option<String> {
        let node = self.get(key)?;
        match &node.value {
            Value::Str(s) if s.is_empty() => {
                cx.error(node.pos, &self.path_of(key), "must not be empty");
                None
            }
            Value::Str(s) => Some(s.clone()),
            other => {
                let hint = if matches!(other, Value::Int(_) | Value::Float(_) | Value::Bool(_)) {
                    "; quote it to use it as text"
                } else {
                    ""
                };
                cx.error(
                    node.pos,
                    &self.path_of(key),
                    format!("expected a string, found {}{hint}", other.kind()),
                );
                None
            }
        }
    }

    /// An optional integer within `[min, max]`.
    pub fn opt_int(&self, cx: &mut Ctx<'_>, key: &str, min: i128, max: i128) -> Option<i128> {
        let node = self.get(key)?;
        match node.value {
            Value::Int(v) if v < min => {
                cx.error(
                    node.pos,
                    &self.path_of(key),
                    format!("must be at least {min}, found {v}"),
                );
                None
            }
            Value::Int(v) if v > max => {
                cx.error(
                    node.pos,
                    &self.path_of(key),
                    format!("must be at most {max}, found {v}"),
                );
                None
            }
            Value::Int(v) => Some(v),
            ref other => {
                cx.error(
                    node.pos,
                    &self.path_of(key),
                    format!("expected an integer, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// An optional limit: an integer from 0 to `u32::MAX` (Envoy's `requests_per_unit` is a
    /// uint32, so a bigger number could never be answered faithfully).
    pub fn opt_limit(&self, cx: &mut Ctx<'_>, key: &str) -> Option<u32> {
        self.opt_int(cx, key, 0, u32::MAX.into())
            .and_then(|v| u32::try_from(v).ok())
    }

    /// An optional boolean.
    pub fn opt_bool(&self, cx: &mut Ctx<'_>, key: &str) -> Option<bool> {
        let node = self.get(key)?;
        match node.value {
            Value::Bool(b) => Some(b),
            ref other => {
                cx.error(
                    node.pos,
                    &self.path_of(key),
                    format!("expected true or false, found {}", other.kind()),
                );
                None
            }
        }
    }

    /// An optional unit name, any case.
    pub fn opt_unit(&self, cx: &mut Ctx<'_>, key: &str) -> Option<Unit> {
        let names: Vec<&str> = Unit::ALL.iter().map(|u| u.as_str()).collect();
        self.opt_named(cx, key, "unit", &names, Unit::parse)
    }

    /// An optional algorithm name.
    pub fn opt_algorithm(&self, cx: &mut Ctx<'_>, key: &str) -> Option<Algorithm> {
        let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
        self.opt_named(cx, key, "algorithm", &names, Algorithm::parse)
    }

    /// An optional name from a fixed list: `parse` reads it; an unknown one is an error that
    /// lists `names` and suggests the closest.
    fn opt_named<T>(
        &self,
        cx: &mut Ctx<'_>,
        key: &str,
        what: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let node = self.get(key)?;
        let text = self.opt_str(cx, key)?;
        if let Some(value) = parse(&text) {
            return Some(value);
        }
        let hint = did_you_mean(&text, names)
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        cx.error(
            node.pos,
            &self.path_of(key),
            format!(
                "unknown {what} \"{text}\"; expected one of {}{hint}",
                names.join(", ")
            ),
        );
        None
    }

    /// The counting fields of this level (docs/algorithms.md): `unit_multiplier` and `algorithm`
    /// are inherited from `parent` (a level that sets `unit` without `unit_multiplier` gets
    /// multiplier 1); `burst` is this level's own and only valid with `token_bucket`.
    /// `limits` are the limits this level's buckets hold (for the exactness bound).
    pub fn counting(
        &self,
        cx: &mut Ctx<'_>,
        unit: Unit,
        parent: Counting,
        limits: &[u32],
    ) -> Counting {
        let own_multiplier = self
            .opt_int(cx, "unit_multiplier", 1, u32::MAX.into())
            .and_then(|m| u32::try_from(m).ok());
        let unit_multiplier = match own_multiplier {
            Some(m) => m,
            None if self.get("unit").is_some() => 1,
            None => parent.unit_multiplier,
        };
        let algorithm = self
            .opt_algorithm(cx, "algorithm")
            .unwrap_or(parent.algorithm);
        let window_ms = u128::from(unit.seconds()) * 1000 * u128::from(unit_multiplier);
        if window_ms > u128::from(MAX_WINDOW_MS) {
            let pos = self.get("unit_multiplier").map_or(self.pos, |n| n.pos);
            cx.error(
                pos,
                &self.path_of("unit_multiplier"),
                format!("a window of {unit_multiplier} × {unit} is too long (at most 2^53 ms)"),
            );
        }
        let mut burst = None;
        if let Some(node) = self.get("burst") {
            let value = self
                .opt_int(cx, "burst", 1, u32::MAX.into())
                .and_then(|b| u32::try_from(b).ok());
            if algorithm == Algorithm::TokenBucket {
                burst = value;
            } else {
                cx.error(
                    node.pos,
                    &self.path_of("burst"),
                    format!(
                        "only valid with `algorithm: token_bucket` (this level counts with {algorithm})"
                    ),
                );
            }
        }
        if algorithm == Algorithm::TokenBucket {
            // The bucket's state is kept in exact integers of (tokens × window ms) in Redis'
            // Lua, whose numbers are doubles: beyond 2^53 the count would round.
            let capacities = burst.map_or_else(|| limits.to_vec(), |b| vec![b]);
            if let Some(cap) = capacities
                .into_iter()
                .find(|&c| u128::from(c) * window_ms > u128::from(MAX_WINDOW_MS))
            {
                let key = if burst.is_some() {
                    "burst"
                } else {
                    "algorithm"
                };
                let pos = self.get(key).map_or(self.pos, |n| n.pos);
                cx.error(
                    pos,
                    &self.path_of(key),
                    format!(
                        "a token bucket of {cap} tokens over {unit_multiplier} × {unit} cannot be counted exactly (capacity × window in ms must stay below 2^53)"
                    ),
                );
            }
        }
        if algorithm == Algorithm::SlidingWindow
            && let Some(&big) = limits.iter().find(|&&l| l > SLIDING_LOG_WARN)
        {
            let pos = self.get("algorithm").map_or(self.pos, |n| n.pos);
            cx.warning(
                pos,
                &self.path_of("algorithm"),
                format!(
                    "a sliding window logs every admitting call: a limit of {big} holds up to {big} entries (about {} MB in Redis) per counter",
                    u64::from(big) * 24 / 1_000_000
                ),
            );
        }
        Counting {
            unit_multiplier,
            algorithm,
            burst,
        }
    }

    /// An optional list; each item is handed to `item` with its index path.
    pub fn opt_list(&self, cx: &mut Ctx<'_>, key: &str) -> Option<Vec<(String, &'n Node)>> {
        let node = self.get(key)?;
        list_items(cx, node, &self.path_of(key))
    }
}

/// The items of a sequence node, each with its field path; an error if it is not a list.
pub fn list_items<'n>(
    cx: &mut Ctx<'_>,
    node: &'n Node,
    path: &str,
) -> Option<Vec<(String, &'n Node)>> {
    match &node.value {
        Value::Seq(items) => Some(
            items
                .iter()
                .enumerate()
                .map(|(i, n)| (format!("{path}[{i}]"), n))
                .collect(),
        ),
        other => {
            cx.error(
                node.pos,
                path,
                format!("expected a list, found {}", other.kind()),
            );
            None
        }
    }
}

/// `parent.key`, or `key` at the top.
pub fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}.{key}")
    }
}
