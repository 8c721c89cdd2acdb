//! # ironclad-rls
//!
//! An Envoy-compatible global rate limit service (`envoy.service.ratelimit.v3`).
//!
//! ## The request's path through the code
//!
//! 1. `grpc` receives `ShouldRateLimit`, converts the proto into a [`limiter::Request`]
//!    (`grpc::convert`), and maps every error to a gRPC status in one place.
//! 2. [`limiter::RateLimiter`] validates the request, asks the current
//!    [`descriptor::RuleSet`] which counters each descriptor touches, and has the
//!    [`limiter::CounterStore`] check and count all of them in one atomic step.
//! 3. The decision goes back through `grpc::convert` as a `RateLimitResponse`.
//!
//! Rules come from [`config`], which reads limits files into a validated model, and
//! [`descriptor`], which compiles that model into lookup structures.
//!
//! ## The dependency rule
//!
//! [`config`], [`descriptor`] and [`limiter`] are pure: they never use tonic, prost types,
//! redis, notify, HTTP crates or `std::env`. The adapters (`grpc`, `admin`, [`app`],
//! [`commands`]) depend on them, never the reverse.
//!
//! Modules that only the binary's own commands use (`admin`, `grpc`, `metrics`, `reload`,
//! `render`, `service`, `tls`, `watch`) are `pub(crate)`: the public surface is what `main`,
//! the benches and the integration tests need.

pub(crate) mod admin;
pub mod app;
pub mod commands;
pub mod config;
pub mod descriptor;
pub(crate) mod grpc;
pub mod install;
pub mod limited;
pub mod limiter;
pub(crate) mod metrics;
pub mod proto;
pub mod redis;
pub(crate) mod reload;
pub(crate) mod render;
pub(crate) mod service;
pub mod settings;
pub mod shutdown;
pub(crate) mod status;
pub(crate) mod tls;
pub(crate) mod watch;
