//! `RateLimitConfig` resources → limits-file sources for the reference-format loader.
//!
//! Each resource becomes the YAML document a person would have written for the same domain
//! (docs/envoy-gateway.md; the reference converts the proto to its YAML structures the same
//! way), so xDS limits pass through exactly the validation, defaults and error messages of
//! files, with a field path. The document is emitted as indented JSON (which is YAML), and
//! the source is named `xds:<resource name>` so a diagnostic reads
//! `xds:default/eg/http:12:9: descriptors[0].rate_limit.unit: ...`.
//!
//! proto3 cannot tell an absent scalar from its zero value, so a zero is left out (an empty
//! `value` is any value, `false` is the default, no `replaces` is none), as Envoy Gateway's
//! own YAML rendering of the same resources reads.

use prost_types::value::Kind;
use serde_json::{Map, Value, json};

use crate::config::Source;
use crate::proto::ratelimit::config::ratelimit::v3::{
    RateLimitConfig, RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
};

/// The limits-file source equivalent to one resource.
pub fn to_source(resource: &RateLimitConfig) -> Source {
    let name = if resource.name.is_empty() {
        // The reference does not require a name; the domain still tells resources apart.
        &resource.domain
    } else {
        &resource.name
    };
    Source {
        name: format!("xds:{name}"),
        text: to_text(&to_value(resource)),
    }
}

/// The document as text: indented, so a diagnostic's line points at one field.
fn to_text(v: &Value) -> String {
    // Serialising a `Value` cannot fail (its keys are strings); the fallback keeps the
    // conversion total all the same, and the loader then reports what it cannot read.
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("# unserialisable: {e}"))
}

/// The document as a value.
pub fn to_value(resource: &RateLimitConfig) -> Value {
    let mut root = Map::new();
    root.insert("domain".into(), json!(resource.domain));
    if !resource.descriptors.is_empty() {
        root.insert("descriptors".into(), descriptors(&resource.descriptors));
    }
    Value::Object(root)
}

fn descriptors(list: &[RateLimitDescriptor]) -> Value {
    Value::Array(list.iter().map(descriptor).collect())
}

fn descriptor(d: &RateLimitDescriptor) -> Value {
    let mut m = Map::new();
    m.insert("key".into(), json!(d.key));
    if !d.value.is_empty() {
        m.insert("value".into(), json!(d.value));
    }
    if let Some(p) = &d.rate_limit {
        m.insert("rate_limit".into(), policy(p));
    }
    if !d.descriptors.is_empty() {
        m.insert("descriptors".into(), descriptors(&d.descriptors));
    }
    for (field, on) in [
        ("shadow_mode", d.shadow_mode),
        ("detailed_metric", d.detailed_metric),
        ("quota_mode", d.quota_mode),
    ] {
        if on {
            m.insert(field.into(), Value::Bool(true));
        }
    }
    if let Some(s) = &d.metadata {
        m.insert("metadata".into(), structure(s));
    }
    Value::Object(m)
}

fn policy(p: &RateLimitPolicy) -> Value {
    let mut m = Map::new();
    // UNKNOWN is the proto's "no unit": left out, so the loader says a unit is required
    // (or, beside `unlimited`, accepts its absence).
    match RateLimitUnit::try_from(p.unit) {
        Ok(RateLimitUnit::Unknown) => {}
        Ok(unit) => {
            m.insert(
                "unit".into(),
                json!(unit.as_str_name().to_ascii_lowercase()),
            );
        }
        // A unit number this build does not know: passed on as is, so the loader names it.
        Err(_) => {
            m.insert("unit".into(), json!(p.unit.to_string()));
        }
    }
    if p.unlimited {
        m.insert("unlimited".into(), Value::Bool(true));
        if p.requests_per_unit != 0 {
            m.insert("requests_per_unit".into(), json!(p.requests_per_unit));
        }
    } else {
        m.insert("requests_per_unit".into(), json!(p.requests_per_unit));
    }
    if !p.name.is_empty() {
        m.insert("name".into(), json!(p.name));
    }
    if !p.replaces.is_empty() {
        let replaces = p
            .replaces
            .iter()
            .map(|r| json!({ "name": r.name }))
            .collect();
        m.insert("replaces".into(), Value::Array(replaces));
    }
    Value::Object(m)
}

/// A `google.protobuf.Struct` as the JSON object it stands for.
fn structure(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value(v)))
            .collect(),
    )
}

fn value(v: &prost_types::Value) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::NumberValue(n)) => {
            serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::StructValue(s)) => structure(s),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_sources;
    use crate::proto::ratelimit::config::ratelimit::v3::RateLimitReplace;

    fn policy(unit: RateLimitUnit, n: u32) -> Option<RateLimitPolicy> {
        Some(RateLimitPolicy {
            unit: unit as i32,
            requests_per_unit: n,
            ..Default::default()
        })
    }

    /// Shaped like a resource Envoy Gateway's translator emits for a header-match rule
    /// (envoyproxy/gateway internal/xds/translator/testdata/out/ratelimit-config/*.yaml).
    fn gateway_like() -> RateLimitConfig {
        RateLimitConfig {
            name: "default/eg/http".into(),
            domain: "default/eg/http".into(),
            descriptors: vec![RateLimitDescriptor {
                key: "httproute/default/myroute/rule/0/match/0".into(),
                value: "httproute/default/myroute/rule/0/match/0".into(),
                descriptors: vec![RateLimitDescriptor {
                    key: "rule-0-match-0".into(),
                    value: "rule-0-match-0".into(),
                    rate_limit: policy(RateLimitUnit::Hour, 5),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_gateway_resource_loads_as_its_yaml_would() {
        let source = to_source(&gateway_like());
        assert_eq!(source.name, "xds:default/eg/http");
        let loaded = load_sources(&[source]).unwrap_or_else(|e| panic!("{e}"));
        let d = &loaded.config.descriptor_domains[0];
        assert_eq!(d.domain, "default/eg/http");
        let leaf = &d.descriptors[0].descriptors[0];
        assert_eq!(leaf.value.as_deref(), Some("rule-0-match-0"));
        assert!(matches!(
            leaf.rate_limit,
            Some(crate::config::RateLimitConfig::Limit {
                requests_per_unit: 5,
                ..
            })
        ));
    }

    #[test]
    fn zero_values_are_left_out() {
        let v = to_value(&RateLimitConfig {
            name: String::new(),
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                key: "k".into(),
                rate_limit: Some(RateLimitPolicy {
                    unlimited: true,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        });
        assert_eq!(
            v,
            json!({"domain": "d", "descriptors": [{"key": "k", "rate_limit": {"unlimited": true}}]})
        );
    }

    #[test]
    fn names_replaces_and_metadata_are_carried() {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            "tier".to_owned(),
            prost_types::Value {
                kind: Some(Kind::StringValue("gold".into())),
            },
        );
        let v = to_value(&RateLimitConfig {
            name: "n".into(),
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                key: "k".into(),
                rate_limit: Some(RateLimitPolicy {
                    unit: RateLimitUnit::Minute as i32,
                    requests_per_unit: 3,
                    name: "a".into(),
                    replaces: vec![RateLimitReplace { name: "b".into() }],
                    unlimited: false,
                }),
                shadow_mode: true,
                metadata: Some(prost_types::Struct { fields }),
                ..Default::default()
            }],
        });
        assert_eq!(
            v["descriptors"][0],
            json!({
                "key": "k",
                "rate_limit": {"unit": "minute", "requests_per_unit": 3, "name": "a", "replaces": [{"name": "b"}]},
                "shadow_mode": true,
                "metadata": {"tier": "gold"}
            })
        );
    }

    #[test]
    fn an_invalid_resource_is_rejected_with_its_source_and_field_path() {
        let mut bad = gateway_like();
        bad.descriptors[0].descriptors[0].rate_limit = policy(RateLimitUnit::Unknown, 5);
        let e = load_sources(&[to_source(&bad)]).expect_err("no unit");
        let text = e.to_string();
        assert!(text.contains("xds:default/eg/http:"), "{text}");
        assert!(
            text.contains("descriptors[0].descriptors[0].rate_limit"),
            "{text}"
        );
    }
}
