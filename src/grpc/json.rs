//! A RateLimitRequest in proto3 JSON (for `POST /json`): camelCase or the proto's own field
//! names, 64-bit integers as numbers or strings, unknown fields refused.

use serde_json::{Map, Value};

use crate::descriptor::{Entry, LimitOverride};
use crate::limiter::{Descriptor, Request};

/// Parses a proto3 JSON RateLimitRequest; the error names the offending field.
pub fn request_from_json(v: &Value) -> Result<Request, String> {
    let obj = object(v, "request")?;
    known(
        obj,
        "request",
        &["domain", "descriptors", "hitsAddend", "hits_addend"],
    )?;
    let domain = match field(obj, &["domain"]) {
        None => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err("domain: expected a string".into()),
    };
    let hits_addend = match field(obj, &["hitsAddend", "hits_addend"]) {
        None => 0,
        Some(v) => u32::try_from(integer(v, "hitsAddend")?)
            .map_err(|_| "hitsAddend: out of range for uint32".to_owned())?,
    };
    let descriptors = match field(obj, &["descriptors"]) {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, d)| descriptor(d, &format!("descriptors[{i}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("descriptors: expected a list".into()),
    };
    Ok(Request {
        domain,
        descriptors,
        hits_addend,
    })
}

fn descriptor(v: &Value, path: &str) -> Result<Descriptor, String> {
    let obj = object(v, path)?;
    known(
        obj,
        path,
        &[
            "entries",
            "limit",
            "hitsAddend",
            "hits_addend",
            "isNegativeHits",
            "is_negative_hits",
        ],
    )?;
    let entries = match field(obj, &["entries"]) {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(j, e)| entry(e, &format!("{path}.entries[{j}]")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(format!("{path}.entries: expected a list")),
    };
    let hits_addend = field(obj, &["hitsAddend", "hits_addend"])
        .map(|v| integer(v, &format!("{path}.hitsAddend")))
        .transpose()?;
    let is_negative_hits = match field(obj, &["isNegativeHits", "is_negative_hits"]) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("{path}.isNegativeHits: expected true or false")),
    };
    let limit_override = match field(obj, &["limit"]) {
        None => None,
        Some(l) => Some(limit(l, &format!("{path}.limit"))?),
    };
    Ok(Descriptor {
        entries,
        hits_addend,
        is_negative_hits,
        limit_override,
    })
}

/// `{"requestsPerUnit": 5, "unit": "MINUTE"}` (enum by name or number).
fn limit(v: &Value, path: &str) -> Result<LimitOverride, String> {
    let obj = object(v, path)?;
    known(
        obj,
        path,
        &[
            "requestsPerUnit",
            "requests_per_unit",
            "unit",
            "unitMultiplier",
            "unit_multiplier",
        ],
    )?;
    let requests_per_unit = match field(obj, &["requestsPerUnit", "requests_per_unit"]) {
        None => 0,
        Some(v) => u32::try_from(integer(v, &format!("{path}.requestsPerUnit"))?)
            .map_err(|_| format!("{path}.requestsPerUnit: out of range for uint32"))?,
    };
    use crate::proto::envoy::r#type::v3::RateLimitUnit;
    let unit = match field(obj, &["unit"]) {
        Some(Value::String(name)) => RateLimitUnit::from_str_name(name).map(|u| u as i32),
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        _ => None,
    }
    .and_then(super::convert::override_unit)
    .ok_or_else(|| format!("{path}.unit: expected SECOND, MINUTE, HOUR, DAY, MONTH or YEAR"))?;
    let multiplier = field(obj, &["unitMultiplier", "unit_multiplier"])
        .map(|v| {
            integer(v, &format!("{path}.unitMultiplier")).and_then(|m| {
                u32::try_from(m)
                    .map_err(|_| format!("{path}.unitMultiplier: out of range for uint32"))
            })
        })
        .transpose()?;
    let unit_multiplier = super::convert::override_multiplier(multiplier)
        .ok_or_else(|| format!("{path}.unitMultiplier: must be at least 1"))?;
    Ok(LimitOverride {
        requests_per_unit,
        unit,
        unit_multiplier,
    })
}

fn entry(v: &Value, path: &str) -> Result<Entry, String> {
    let obj = object(v, path)?;
    known(obj, path, &["key", "value"])?;
    let text = |name: &str| match obj.get(name) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("{path}.{name}: expected a string")),
    };
    Ok(Entry {
        key: text("key")?,
        value: text("value")?,
    })
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{path}: expected an object"))
}

fn known(obj: &Map<String, Value>, path: &str, names: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !names.contains(&k.as_str())) {
        Some(k) => Err(format!("{path}: unknown field `{k}`")),
        None => Ok(()),
    }
}

fn field<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    names
        .iter()
        .find_map(|n| obj.get(*n))
        .filter(|v| !v.is_null())
}

/// A non-negative integer, as a JSON number or (proto3 JSON's 64-bit form) a string.
fn integer(v: &Value, path: &str) -> Result<u64, String> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("{path}: expected a non-negative integer"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_both_spellings() {
        let r = request_from_json(&json!({
            "domain": "kcse",
            "hitsAddend": 2,
            "descriptors": [
                {"entries": [{"key": "endpoint", "value": "e"}], "hitsAddend": "0"},
                {"entries": [{"key": "k"}], "is_negative_hits": true, "hits_addend": 3}
            ]
        }))
        .unwrap();
        assert_eq!(r.domain, "kcse");
        assert_eq!(r.hits_addend, 2);
        assert_eq!(r.descriptors[0].hits_addend, Some(0));
        assert_eq!(r.descriptors[1].entries[0].value, "");
        assert!(r.descriptors[1].is_negative_hits);
        assert_eq!(r.descriptors[1].hits_addend, Some(3));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |v: Value| request_from_json(&v).unwrap_err();
        assert_eq!(err(json!([])), "request: expected an object");
        assert_eq!(
            err(json!({"domian": "x"})),
            "request: unknown field `domian`"
        );
        assert_eq!(
            err(json!({"descriptors": [{"entries": [{"key": 1}]}]})),
            "descriptors[0].entries[0].key: expected a string"
        );
        assert_eq!(
            err(json!({"hitsAddend": -1})),
            "hitsAddend: expected a non-negative integer"
        );
    }
}
