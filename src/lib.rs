//! # ironclad-rls
//!
//! An Envoy-compatible global rate limit service (`envoy.service.ratelimit.v3`).
//!
//! ## The request's path through the code
//!
//! 1. `grpc` receives `ShouldRateLimit` (`grpc::server` decodes the bytes itself, so a
//!    malformed message is INVALID_ARGUMENT, not INTERNAL) and converts the proto into a
//!    [`limiter::Request`] (`grpc::convert`); `POST /json` on the admin port (`admin`,
//!    `grpc::json`) is a second front door to the same path.
//! 2. `service::Decider` is the one decision path behind both doors: it asks the limiter,
//!    records the request's metrics, and turns a failed store into what
//!    `--on-backend-error` asks for. Refusals become gRPC statuses in one place
//!    (`grpc::status_of`).
//! 3. [`limiter::RateLimiter`] validates the request, resolves each descriptor against the
//!    current [`limiter::Snapshot`]'s [`descriptor::RuleSet`] into the counters it touches,
//!    answers counters known to be full from its [`limiter::OverLimitCache`], and has the
//!    [`limiter::CounterStore`] check and count the rest in one atomic step.
//! 4. The store is `metrics::TimedStore` (round-trip histogram and error kinds) around
//!    either [`limiter::MemoryStore`] (one process) or [`redis::RedisStore`] (one Lua script
//!    call per request, or per slot on a Redis Cluster: `redis::cluster`). Both apply the
//!    same per-algorithm `load / decide / commit` (docs/algorithms.md,
//!    docs/counter-store.md), held together by `limiter::conformance` and the differential
//!    test in `integration-tests`.
//! 5. The decision goes back through `grpc::convert` as a `RateLimitResponse`.
//!
//! ## Where rules come from
//!
//! [`config`] reads limits files (regular files only, bounded reads) into a validated model
//! with positioned errors; [`descriptor`] compiles that model into lookup structures.
//! [`install::Installer`] is the one door through which a loaded configuration becomes the
//! served [`limiter::Snapshot`] (generation 1 at start-up, the next on every reload by
//! `reload`); `/config` reads the same snapshot that requests are decided with. The second
//! source, [`xds`], takes `RateLimitConfig` resources from an xDS management server (Envoy
//! Gateway's), turns each into the limits file it stands for, loads it with the same loader
//! and installs it through the same door.
//!
//! ## The process
//!
//! `main` parses [`settings::Cli`] and runs a command: `serve` is [`app`] (bind, run while
//! supervising the servers, drain), the others live in [`commands`], one file each. Invoked
//! as `ratelimit` (the image's `/bin/ratelimit`), the settings come from envoyproxy/ratelimit's
//! environment variables instead ([`compat_env`]).
//! What an operator looks at: [`limited`] (the bounded top-k of rejecting counters that
//! `service::Decider` feeds), served with the status page by `status` on the admin port and
//! merged across replicas by `commands::top`; `descriptor`'s explain trace behind
//! `commands::explain`. Reference docs for users are under `docs/` (start at
//! `docs/README.md`).
//!
//! ## The dependency rule
//!
//! [`config`], [`descriptor`] and [`limiter`] are pure: they never use tonic, prost types,
//! redis, notify, HTTP crates or `std::env` (`scripts/check-purity` enforces it in CI). The
//! adapters (`grpc`, `admin`, [`app`], [`commands`], [`redis`]) depend on them, never the
//! reverse.
//!
//! Modules that only the binary's own commands use (`admin`, `grpc`, `metrics`, `reload`,
//! `render`, `service`, `tls`, `watch`) are `pub(crate)`: the public surface is what `main`,
//! the benches and the integration tests need.

pub(crate) mod admin;
pub mod app;
pub mod commands;
pub mod compat_env;
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
pub(crate) mod telemetry;
pub(crate) mod tls;
pub(crate) mod watch;
pub mod xds;
