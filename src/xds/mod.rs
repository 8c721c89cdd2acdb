//! The xDS configuration source (docs/envoy-gateway.md): limits from an xDS management
//! server, as Envoy Gateway serves them to envoyproxy/ratelimit, instead of files.
//!
//! A State-of-the-World client of the aggregated discovery service (ADS) subscribed to every
//! `ratelimit.config.ratelimit.v3.RateLimitConfig` (one resource per domain). Each response
//! is converted into the reference-format limits it stands for (`convert.rs`) and loaded by
//! the same loader as files; a response that loads is installed through the one door
//! (`install.rs`) and ACKed, one that does not is NACKed with the loader's error and the
//! previous configuration keeps serving. The stream is re-opened with backoff whenever it
//! ends; what was last installed keeps serving meanwhile (`client.rs`).

mod client;
mod convert;

pub use client::{TYPE_URL, XdsClient, XdsError, XdsOptions};
pub use convert::to_source;
