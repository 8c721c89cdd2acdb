//! proto ↔ domain, at the edge: nothing inside the limiter sees a prost type.

use std::time::Duration;

use prost::Message;
use serde_json::{Value, json};

use crate::config::Unit;
use crate::descriptor::{Entry, LimitOverride};
use crate::limiter::{Code, Decision, Descriptor, DescriptorStatus, Request};
use crate::proto::envoy::config::core::v3::HeaderValue;
use crate::proto::rate_limit_descriptor::Entry as ProtoEntry;
use crate::proto::rate_limit_response::{
    DescriptorStatus as ProtoStatus, RateLimit, rate_limit::Unit as ProtoUnit,
};
use crate::proto::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse, rate_limit_response};

/// Decodes a `RateLimitRequest` from the bytes of one gRPC message and converts it. The error
/// says what is wrong with the message (prost names the field and the problem: invalid UTF-8,
/// a wrong wire type, a truncated buffer).
pub fn decode_request(message: &[u8]) -> Result<Request, String> {
    let req = RateLimitRequest::decode(message).map_err(|e| format!("invalid protobuf: {e}"))?;
    request_from_proto(req)
}

/// Converts a request. Bounds are checked by the limiter, which names the offending part in
/// its error; here only a limit override without a unit is refused.
pub fn request_from_proto(req: RateLimitRequest) -> Result<Request, String> {
    let mut overrides = Vec::with_capacity(req.descriptors.len());
    for (i, d) in req.descriptors.iter().enumerate() {
        overrides.push(match &d.limit {
            None => None,
            Some(l) => Some(LimitOverride {
                requests_per_unit: l.requests_per_unit,
                unit: override_unit(l.unit)
                    .ok_or_else(|| format!("descriptors[{i}].limit.unit must be set"))?,
                unit_multiplier: override_multiplier(l.unit_multiplier).ok_or_else(|| {
                    format!("descriptors[{i}].limit.unit_multiplier must be at least 1")
                })?,
            }),
        });
    }
    Ok(Request {
        domain: req.domain,
        hits_addend: req.hits_addend,
        descriptors: req
            .descriptors
            .into_iter()
            .map(|d| Descriptor {
                entries: d
                    .entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key,
                        value: e.value,
                    })
                    .collect(),
                hits_addend: d.hits_addend,
                is_negative_hits: d.is_negative_hits,
                limit_override: None,
            })
            .zip(overrides)
            .map(|(d, limit_override)| Descriptor {
                limit_override,
                ..d
            })
            .collect(),
    })
}

/// The window multiplier of a limit override: unset means 1; Envoy's API requires ≥ 1 when
/// set, so 0 is refused rather than read as 1.
pub fn override_multiplier(m: Option<u32>) -> Option<u32> {
    match m {
        None => Some(1),
        Some(0) => None,
        Some(m) => Some(m),
    }
}

/// The unit of a limit override (`envoy.type.v3.RateLimitUnit`, which has no WEEK).
pub fn override_unit(unit: i32) -> Option<Unit> {
    use crate::proto::envoy::r#type::v3::RateLimitUnit as U;
    match U::try_from(unit).ok()? {
        U::Unknown => None,
        U::Second => Some(Unit::Second),
        U::Minute => Some(Unit::Minute),
        U::Hour => Some(Unit::Hour),
        U::Day => Some(Unit::Day),
        U::Month => Some(Unit::Month),
        U::Year => Some(Unit::Year),
    }
}

/// Builds a request from `key=value` descriptors, as the `check` and `bench` commands take
/// them; `value` may rewrite each value (`bench` fills in `{n}`).
pub fn request_from_pairs(
    domain: &str,
    descriptors: &[Vec<(String, String)>],
    hits_addend: u32,
    value: impl Fn(&str) -> String,
) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: descriptors
            .iter()
            .map(|pairs| RateLimitDescriptor {
                entries: pairs
                    .iter()
                    .map(|(k, v)| ProtoEntry {
                        key: k.clone(),
                        value: value(v),
                    })
                    .collect(),
                ..RateLimitDescriptor::default()
            })
            .collect(),
        hits_addend,
    }
}

/// The proto's unit for ours.
pub fn unit_to_proto(unit: Unit) -> ProtoUnit {
    match unit {
        Unit::Second => ProtoUnit::Second,
        Unit::Minute => ProtoUnit::Minute,
        Unit::Hour => ProtoUnit::Hour,
        Unit::Day => ProtoUnit::Day,
        Unit::Week => ProtoUnit::Week,
        Unit::Month => ProtoUnit::Month,
        Unit::Year => ProtoUnit::Year,
    }
}

fn code_to_proto(code: Code) -> rate_limit_response::Code {
    match code {
        Code::Ok => rate_limit_response::Code::Ok,
        Code::OverLimit => rate_limit_response::Code::OverLimit,
    }
}

fn duration_to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn status_to_proto(s: &DescriptorStatus) -> ProtoStatus {
    ProtoStatus {
        code: code_to_proto(s.code).into(),
        current_limit: s.current_limit.as_ref().map(|l| RateLimit {
            name: l.name.to_string(),
            requests_per_unit: l.requests_per_unit,
            unit: unit_to_proto(l.unit).into(),
            // Envoy 1.40 reads it; omitted when 1 so older readers see the same answer.
            unit_multiplier: (l.unit_multiplier > 1).then_some(l.unit_multiplier),
        }),
        limit_remaining: s.limit_remaining,
        duration_until_reset: s.duration_until_reset.map(duration_to_proto),
        quota: None,
    }
}

/// Builds the response. With `response_headers`, adds the IETF `RateLimit-*` fields of the
/// most constrained status (and `Retry-After` when over limit), for clients behind a
/// gateway that does not add Envoy's own `x-ratelimit-*` headers.
pub fn response_to_proto(d: &Decision, response_headers: bool) -> RateLimitResponse {
    RateLimitResponse {
        overall_code: code_to_proto(d.overall_code).into(),
        statuses: d.statuses.iter().map(status_to_proto).collect(),
        response_headers_to_add: if response_headers {
            rate_limit_headers(d)
        } else {
            Vec::new()
        },
        dynamic_metadata: d.dynamic_metadata.as_ref().map(struct_of),
        ..RateLimitResponse::default()
    }
}

/// JSON → `google.protobuf.Struct` (docs/envoy-compat.md §5): numbers become
/// doubles, as a Struct holds them.
fn struct_of(m: &serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: m
            .iter()
            .map(|(k, v)| (k.clone(), struct_value(v)))
            .collect(),
    }
}

fn struct_value(v: &Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(struct_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(struct_of(m)),
    };
    prost_types::Value { kind: Some(kind) }
}

/// `google.protobuf.Struct` → JSON, for `check` and `/json`.
fn json_of_struct(s: &prost_types::Struct) -> Value {
    Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), json_of_value(v)))
            .collect(),
    )
}

fn json_of_value(v: &prost_types::Value) -> Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(json_of_value).collect()),
        Some(Kind::StructValue(s)) => json_of_struct(s),
    }
}

fn rate_limit_headers(d: &Decision) -> Vec<HeaderValue> {
    // Over-limit statuses first, then the fewest remaining: the one a client must respect.
    let Some(s) = d
        .statuses
        .iter()
        .filter(|s| s.current_limit.is_some())
        .min_by_key(|s| (s.code != Code::OverLimit, s.limit_remaining))
    else {
        return Vec::new();
    };
    let (Some(limit), Some(reset)) = (&s.current_limit, s.duration_until_reset) else {
        return Vec::new();
    };
    // Whole seconds, rounded up: a client waiting `reset` seconds must find a new window.
    let reset_secs = reset.as_millis().div_ceil(1000).to_string();
    let header = |key: &str, value: String| HeaderValue {
        key: key.to_owned(),
        value,
        raw_value: Vec::new(),
    };
    let mut out = vec![
        header("RateLimit-Limit", limit.requests_per_unit.to_string()),
        header("RateLimit-Remaining", s.limit_remaining.to_string()),
        header("RateLimit-Reset", reset_secs.clone()),
    ];
    if d.overall_code == Code::OverLimit {
        out.push(header("Retry-After", reset_secs));
    }
    out
}

/// Renders a response in proto3 JSON (camelCase fields, enum names, durations as `"1.5s"`),
/// as printed by `check`.
pub fn response_to_json(r: &RateLimitResponse) -> Value {
    let code = |c: i32| {
        rate_limit_response::Code::try_from(c)
            .map_or("UNKNOWN", |c| c.as_str_name())
            .to_owned()
    };
    let statuses: Vec<Value> = r
        .statuses
        .iter()
        .map(|s| {
            let mut o = json!({ "code": code(s.code), "limitRemaining": s.limit_remaining });
            if let Some(l) = &s.current_limit {
                o["currentLimit"] = json!({
                    "name": l.name,
                    "requestsPerUnit": l.requests_per_unit,
                    "unit": ProtoUnit::try_from(l.unit).map_or("UNKNOWN", |u| u.as_str_name()),
                });
                if let Some(m) = l.unit_multiplier {
                    o["currentLimit"]["unitMultiplier"] = json!(m);
                }
            }
            if let Some(d) = &s.duration_until_reset {
                o["durationUntilReset"] = Value::String(json_duration(d));
            }
            o
        })
        .collect();
    let mut out = json!({ "overallCode": code(r.overall_code), "statuses": statuses });
    if !r.response_headers_to_add.is_empty() {
        out["responseHeadersToAdd"] = r
            .response_headers_to_add
            .iter()
            .map(|h| json!({ "key": h.key, "value": h.value }))
            .collect();
    }
    if let Some(m) = &r.dynamic_metadata {
        out["dynamicMetadata"] = json_of_struct(m);
    }
    out
}

fn json_duration(d: &prost_types::Duration) -> String {
    if d.nanos == 0 {
        format!("{}s", d.seconds)
    } else {
        let frac = format!("{:09}", d.nanos);
        format!("{}.{}s", d.seconds, frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::CurrentLimit;

    fn decision(code: Code, remaining: u32) -> Decision {
        Decision {
            overall_code: code,
            statuses: vec![
                DescriptorStatus {
                    code: Code::Ok,
                    current_limit: None,
                    limit_remaining: 0,
                    duration_until_reset: None,
                },
                DescriptorStatus {
                    code,
                    current_limit: Some(CurrentLimit {
                        name: "r".into(),
                        requests_per_unit: 10,
                        unit: Unit::Week,
                        unit_multiplier: 1,
                    }),
                    limit_remaining: remaining,
                    duration_until_reset: Some(Duration::from_millis(1_500)),
                },
            ],
            counters: Vec::new(),
            unmatched: Vec::new(),
            committed: true,
            dynamic_metadata: None,
        }
    }

    #[test]
    fn response_keeps_order_and_fields() {
        let r = response_to_proto(&decision(Code::Ok, 4), false);
        assert_eq!(r.overall_code, rate_limit_response::Code::Ok as i32);
        assert_eq!(r.statuses.len(), 2);
        assert!(r.statuses[0].current_limit.is_none());
        let l = r.statuses[1].current_limit.as_ref().unwrap();
        assert_eq!(l.unit, ProtoUnit::Week as i32);
        assert_eq!(
            r.statuses[1].duration_until_reset,
            Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            })
        );
        assert!(r.response_headers_to_add.is_empty());
        let j = response_to_json(&r);
        assert_eq!(j["statuses"][1]["durationUntilReset"], "1.5s");
        assert_eq!(j["statuses"][1]["currentLimit"]["unit"], "WEEK");
    }

    #[test]
    fn headers_when_asked() {
        let r = response_to_proto(&decision(Code::OverLimit, 0), true);
        let h: Vec<(String, String)> = r
            .response_headers_to_add
            .iter()
            .map(|h| (h.key.clone(), h.value.clone()))
            .collect();
        assert_eq!(
            h,
            vec![
                ("RateLimit-Limit".into(), "10".into()),
                ("RateLimit-Remaining".into(), "0".into()),
                ("RateLimit-Reset".into(), "2".into()),
                ("Retry-After".into(), "2".into()),
            ]
        );
    }
}
