//! The gRPC adapter: `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` and the
//! port's HTTP/2 connections (`connection`, on the `h2` crate; health and reflection through
//! tonic's router in `routes`). Decodes and converts at the edge (`server`, `convert`, `json`)
//! and maps every refusal to a gRPC status here, in one place.

mod connection;
pub mod convert;
mod http2;
pub mod json;
mod routes;
mod server;

use tonic::Status;

pub use connection::{Http2, Port};
pub use server::{FRAME_HEADER, Pieces, SHOULD_RATE_LIMIT, encode as encode_frame};

use crate::proto::RateLimitResponse;
use crate::service::{Decider, Refusal};

/// Largest request accepted by the transport (docs/service.md §2).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The RLS gRPC service.
#[derive(Debug, Clone)]
pub struct RateLimitGrpc {
    decider: Decider,
    response_headers: bool,
}

impl RateLimitGrpc {
    /// A service answering through `decider`.
    pub fn new(decider: Decider, response_headers: bool) -> Self {
        RateLimitGrpc {
            decider,
            response_headers,
        }
    }

    /// Answers one `ShouldRateLimit` message, given as the bytes on the wire: a message that
    /// is not valid protobuf is INVALID_ARGUMENT and counted as invalid, like a request that
    /// breaks a bound (docs/service.md §2).
    pub async fn answer(&self, message: &[u8]) -> Result<RateLimitResponse, Status> {
        let req = match convert::decode_request(message) {
            Ok(req) => req,
            Err(e) => return Err(status_of(self.decider.refuse_invalid(e))),
        };
        let decision = self.decider.decide(&req).await.map_err(status_of)?;
        Ok(convert::response_to_proto(&decision, self.response_headers))
    }
}

/// The one place where refusals become gRPC statuses.
pub fn status_of(refusal: Refusal) -> Status {
    match refusal {
        Refusal::Invalid(m) => Status::invalid_argument(m),
        // UNAVAILABLE lets Envoy's `failure_mode_deny` decide.
        Refusal::Unavailable(m) => Status::unavailable(m),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use prost::Message;
    use tonic::Code;

    use super::*;
    use crate::config::{Source, load_sources};
    use crate::descriptor::RuleSet;
    use crate::limiter::{LimiterOptions, MemoryStore, RateLimiter, SystemClock};
    use crate::metrics::Metrics;
    use crate::proto::rate_limit_descriptor::Entry;
    use crate::proto::{RateLimitDescriptor, RateLimitRequest};
    use crate::settings::OnBackendError;

    const LIMITS: &str = "kcse_rate_limits:
  endpoints:
    - name: e
      shortname: e
      uri_prefixes:
        - { prefix: /a/, value: 1000000, anon_value: 1000000 }
";

    pub(super) fn service() -> (RateLimitGrpc, Arc<Metrics>) {
        let loaded = load_sources(&[Source {
            name: "t.yaml".into(),
            text: LIMITS.into(),
        }])
        .expect("limits load");
        let clock = Arc::new(SystemClock);
        let limiter = Arc::new(RateLimiter::new(
            Arc::new(RuleSet::compile(&loaded.config)),
            Arc::new(MemoryStore::new(clock.clone())),
            clock,
            LimiterOptions::default(),
        ));
        let metrics = Arc::new(Metrics::new(0.8, 10).expect("metrics"));
        let decider = Decider::new(limiter, metrics.clone(), OnBackendError::Error, false);
        (RateLimitGrpc::new(decider, false), metrics)
    }

    fn invalid_count(m: &Metrics) -> u64 {
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix("ratelimit_requests_total{code=\"invalid\"} "))
            .map_or(0, |n| n.parse().expect("a count"))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    pub(super) fn request(domain: &str, pairs: &[(&str, &str)]) -> RateLimitRequest {
        RateLimitRequest {
            domain: domain.into(),
            descriptors: vec![RateLimitDescriptor {
                entries: pairs
                    .iter()
                    .map(|(k, v)| Entry {
                        key: (*k).into(),
                        value: (*v).into(),
                    })
                    .collect(),
                ..RateLimitDescriptor::default()
            }],
            hits_addend: 0,
        }
    }

    /// Field 1 (`domain`, length-delimited) holding bytes that are not UTF-8.
    const INVALID_UTF8: &[u8] = &[0x0a, 0x02, 0xc3, 0x28];
    /// Field 1 with wire type 0 (varint) where a string belongs.
    const WRONG_WIRE_TYPE: &[u8] = &[0x08, 0x01];
    /// Field 1 claiming 10 bytes, holding 3.
    const TRUNCATED: &[u8] = &[0x0a, 0x0a, b'k', b'c', b's'];

    #[test]
    fn malformed_protobuf_is_invalid_argument_and_counted() {
        let (grpc, metrics) = service();
        let rt = runtime();
        for (what, bytes) in [
            ("invalid UTF-8", INVALID_UTF8),
            ("wrong wire type", WRONG_WIRE_TYPE),
            ("truncated", TRUNCATED),
        ] {
            let before = invalid_count(&metrics);
            let status = rt
                .block_on(grpc.answer(bytes))
                .expect_err("a malformed message is refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(
                status.message().starts_with("invalid protobuf"),
                "{what}: {}",
                status.message()
            );
            assert_eq!(invalid_count(&metrics), before + 1, "{what}");
        }
        // A well-formed message is answered (and not counted as invalid).
        let ok = request("kcse", &[("endpoint", "e"), ("path", "/a/b")]).encode_to_vec();
        assert!(rt.block_on(grpc.answer(&ok)).is_ok());
        assert_eq!(invalid_count(&metrics), 3);
    }

    /// Valid requests, then damaged the ways a broken or hostile client damages them.
    fn message() -> impl Strategy<Value = Vec<u8>> {
        let valid = (
            prop_oneof![Just("kcse".to_owned()), "[a-z]{0,4}"],
            proptest::collection::vec(
                (
                    prop_oneof![
                        Just("endpoint".to_owned()),
                        Just("path".to_owned()),
                        Just("consumer".to_owned()),
                        "[a-z]{0,3}"
                    ],
                    prop_oneof![Just("e".to_owned()), "/a/[a-z/%]{0,6}", ".{0,4}"],
                ),
                0..5,
            ),
        )
            .prop_map(|(domain, pairs)| {
                let pairs: Vec<(&str, &str)> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                request(&domain, &pairs).encode_to_vec()
            });
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            valid.clone(),
            (valid.clone(), any::<prop::sample::Index>())
                .prop_map(|(m, i)| m[..i.index(m.len() + 1)].to_vec()),
            (valid, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut m, i, b)| {
                if !m.is_empty() {
                    let at = i.index(m.len());
                    m[at] ^= b;
                }
                m
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Whatever the bytes: no panic, and either an answer or INVALID_ARGUMENT, counted.
        #[test]
        fn any_bytes_are_answered_or_invalid_argument(messages in proptest::collection::vec(message(), 1..8)) {
            let (grpc, metrics) = service();
            let rt = runtime();
            let mut refused = 0;
            for m in &messages {
                match rt.block_on(grpc.answer(m)) {
                    Ok(_) => {}
                    Err(status) => {
                        prop_assert_eq!(status.code(), Code::InvalidArgument, "{:?}", status);
                        refused += 1;
                    }
                }
            }
            prop_assert_eq!(invalid_count(&metrics), refused);
        }
    }
}
