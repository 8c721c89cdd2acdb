//! Shared by the compatibility suites (`reference_configs`, `envoy_gateway`, `quota_mode`):
//! a table of calls with their expected answers, run through the real binary's gRPC port.

#![allow(dead_code)]

use integration_tests::Rls;
use ironclad_rls::proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::{
    Entry, RateLimitOverride,
};
use ironclad_rls::proto::rate_limit_response::Code;
use ironclad_rls::proto::{RateLimitDescriptor, RateLimitRequest, RateLimitResponse};

/// `overall_code` OK.
pub const OK: i32 = Code::Ok as i32;
/// `overall_code` OVER_LIMIT.
pub const OVER: i32 = Code::OverLimit as i32;

/// What one descriptor's status must say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// Limited, OK: a `current_limit` and this many left.
    L(u32),
    /// Limited and over limit in its own status (code OVER_LIMIT), 0 left.
    Over,
    /// Limited, reported OK although past its limit (shadow mode): 0 left.
    Shadowed,
    /// No rule limits it: OK, no `current_limit`, 0 left.
    N,
    /// `unlimited: true`: OK, no `current_limit`, 4294967295 left (as the reference).
    U,
}

/// One call and its expected answer.
pub struct Call {
    pub domain: &'static str,
    pub descriptors: &'static [&'static [(&'static str, &'static str)]],
    /// Request-level hits_addend (0: 1).
    pub hits: u32,
    /// A limit override on the first descriptor: (requests_per_unit, envoy.type.v3 unit).
    pub limit: Option<(u32, i32)>,
    pub code: i32,
    pub statuses: &'static [St],
}

/// A call with 1 hit and no override.
pub const fn call(
    domain: &'static str,
    descriptors: &'static [&'static [(&'static str, &'static str)]],
    code: i32,
    statuses: &'static [St],
) -> Call {
    Call {
        domain,
        descriptors,
        hits: 0,
        limit: None,
        code,
        statuses,
    }
}

/// The request of a call.
pub fn build(c: &Call) -> RateLimitRequest {
    RateLimitRequest {
        domain: c.domain.to_owned(),
        hits_addend: c.hits,
        descriptors: c
            .descriptors
            .iter()
            .enumerate()
            .map(|(i, entries)| RateLimitDescriptor {
                entries: entries
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                limit: c.limit.filter(|_| i == 0).map(|(requests_per_unit, unit)| {
                    RateLimitOverride {
                        requests_per_unit,
                        unit,
                        unit_multiplier: None,
                    }
                }),
                ..RateLimitDescriptor::default()
            })
            .collect(),
    }
}

/// What a response's statuses say, in the table's terms.
pub fn statuses_of(r: &RateLimitResponse) -> Vec<St> {
    r.statuses
        .iter()
        .map(|s| {
            let over = s.code == OVER;
            match (&s.current_limit, over, s.limit_remaining) {
                (Some(_), true, 0) => St::Over,
                (Some(_), false, n) => St::L(n),
                (None, false, u32::MAX) => St::U,
                (None, false, 0) => St::N,
                other => panic!("unexpected status {other:?}: {s:?}"),
            }
        })
        .collect()
}

/// Runs a table in order; every answer must be as written.
pub async fn run(rls: &Rls, table: &[(&str, &[Call])]) {
    let mut client = rls.client().await;
    for (case, calls) in table {
        for (i, c) in calls.iter().enumerate() {
            let r = client
                .should_rate_limit(build(c))
                .await
                .unwrap_or_else(|e| panic!("{case}, call {i}: {e}"))
                .into_inner();
            let mut got = statuses_of(&r);
            // A shadowed status reads as L(0) on the wire; the table says which it is.
            for (g, want) in got.iter_mut().zip(c.statuses.iter()) {
                if *want == St::Shadowed && *g == St::L(0) {
                    *g = St::Shadowed;
                }
            }
            assert_eq!(
                (r.overall_code, got.as_slice()),
                (c.code, c.statuses),
                "{case}, call {i}: overall code and statuses"
            );
        }
    }
}

/// A response's `dynamic_metadata` as JSON (numbers as doubles, as a Struct holds them).
pub fn json_of(s: &prost_types::Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => (*b).into(),
        Some(Kind::NumberValue(n)) => (*n).into(),
        Some(Kind::StringValue(s)) => s.clone().into(),
        Some(Kind::ListValue(l)) => l.values.iter().map(value_json).collect(),
        Some(Kind::StructValue(s)) => json_of(s),
    }
}
