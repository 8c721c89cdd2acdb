//! The command line: the top-level [`Cli`], its [`Command`]s, and `serve`'s settings
//! ([`ServeArgs`]), which the service reads at start-up. The one-shot commands keep their
//! flags beside their code in [`crate::commands`].
//!
//! Every `serve` flag also reads `RLS_` + its name in upper snake case
//! (`--grpc-addr` ↔ `RLS_GRPC_ADDR`); the flag wins. Parsed with clap, tested with
//! `try_parse_from` (never by setting the process environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::commands::{bench, check, explain, parse, render, top, validate};

/// `ironclad-rls`: an Envoy-compatible global rate limit service.
#[derive(Debug, Parser)]
#[command(name = "ironclad-rls", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
// One value per process, parsed once: the size of `serve`'s settings costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Run the service as envoyproxy/ratelimit does: no flags, configured by the reference's
    /// environment variables (what the binary does when invoked as `ratelimit`).
    Ratelimit,
    /// Load limits files as `serve` would; print the effective rules and every warning.
    /// Exit 0 when valid, 1 with every error listed.
    Validate(validate::Args),
    /// Make one ShouldRateLimit call and print the response as JSON.
    /// Exit 0 for OK, 2 for OVER_LIMIT, 1 on error.
    Check(check::Args),
    /// Load a running service with ShouldRateLimit calls and print throughput and latency.
    Bench(bench::Args),
    /// Print gateway configuration that sends the descriptors the limits files expect.
    #[command(subcommand)]
    Render(render::Target),
    /// Who is being limited: merge the replicas' `GET /limited` and refresh, like `top`.
    Top(top::Args),
    /// How a request resolves: every rule and prefix tried, the counters it touches.
    Explain(explain::Args),
}

/// `serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A limits file or a directory of them (repeatable, or comma-separated in RLS_CONFIG).
    /// Either this or --config-xds.
    #[arg(
        long = "config",
        env = "RLS_CONFIG",
        value_delimiter = ',',
        required_unless_present = "config_xds",
        conflicts_with = "config_xds"
    )]
    pub config: Vec<PathBuf>,

    // The xDS configuration source (docs/envoy-gateway.md).
    /// Take the limits from an xDS management server instead of files: `host:port`,
    /// `http://host:port` or `https://host:port` (State-of-the-World ADS stream of
    /// `ratelimit.config.ratelimit.v3.RateLimitConfig`, as Envoy Gateway serves it).
    #[arg(long, env = "RLS_CONFIG_XDS")]
    pub config_xds: Option<String>,

    /// The node id sent to the xDS server, which picks the snapshot by it (Envoy Gateway:
    /// `envoy-ratelimit`).
    #[arg(long, env = "RLS_CONFIG_XDS_NODE_ID", default_value = "default")]
    pub config_xds_node_id: String,

    /// Node metadata sent to the xDS server: `key=value` pairs, comma-separated.
    #[arg(long, env = "RLS_CONFIG_XDS_NODE_METADATA", value_delimiter = ',', value_parser = parse_key_value)]
    pub config_xds_node_metadata: Vec<(String, String)>,

    /// PEM CA bundle that signed the xDS server's certificate: connect over TLS.
    #[arg(long, env = "RLS_CONFIG_XDS_TLS_CA")]
    pub config_xds_tls_ca: Option<PathBuf>,

    /// PEM client certificate chain for the xDS server (mutual TLS).
    #[arg(long, env = "RLS_CONFIG_XDS_TLS_CERT", requires = "config_xds_tls_key")]
    pub config_xds_tls_cert: Option<PathBuf>,

    /// PEM private key of --config-xds-tls-cert.
    #[arg(long, env = "RLS_CONFIG_XDS_TLS_KEY", requires = "config_xds_tls_cert")]
    pub config_xds_tls_key: Option<PathBuf>,

    /// The name the xDS server's certificate must carry, when it is not the URL's host.
    #[arg(long, env = "RLS_CONFIG_XDS_TLS_SERVER_NAME")]
    pub config_xds_tls_server_name: Option<String>,

    /// First wait before reconnecting to the xDS server; doubled (with jitter) after each
    /// failed attempt up to --config-xds-backoff-max.
    #[arg(long, env = "RLS_CONFIG_XDS_BACKOFF_INITIAL", default_value = "1s", value_parser = parse::duration)]
    pub config_xds_backoff_initial: Duration,

    /// Longest wait between reconnection attempts to the xDS server.
    #[arg(long, env = "RLS_CONFIG_XDS_BACKOFF_MAX", default_value = "30s", value_parser = parse::duration)]
    pub config_xds_backoff_max: Duration,

    /// Largest xDS response accepted, in bytes.
    #[arg(long, env = "RLS_CONFIG_XDS_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub config_xds_max_message_bytes: u32,

    /// With --config-xds: serve (with no limits) and be ready before the first
    /// configuration arrives. Without it the service is not ready until then.
    #[arg(
        long,
        env = "RLS_FORCE_START_WITHOUT_INITIAL_CONFIG",
        conflicts_with = "config"
    )]
    pub force_start_without_initial_config: bool,

    /// The RLS gRPC listener (Envoy's `rate_limit_service`). Port 0 picks a free port.
    #[arg(long, env = "RLS_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,

    /// The admin HTTP listener: /healthz, /readyz, /healthcheck, /metrics, /config.
    #[arg(long, env = "RLS_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// A listener of its own for Prometheus metrics (at --metrics-path), besides the admin
    /// port's /metrics (the reference's PROMETHEUS_ADDR).
    #[arg(long, env = "RLS_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// The path of the metrics on --metrics-addr.
    #[arg(long, env = "RLS_METRICS_PATH", default_value = "/metrics", value_parser = parse_http_path)]
    pub metrics_path: String,

    /// Global shadow mode: overall_code is never OVER_LIMIT; statuses and counting as if
    /// enforcing.
    #[arg(long, env = "RLS_SHADOW_MODE")]
    pub shadow_mode: bool,

    /// Global quota mode (the reference's QUOTA_MODE): a descriptor over its limit is
    /// reported in its own status, but the request is denied only when every descriptor is
    /// over limit; every hit is counted, even past the limit (docs/envoy-compat.md §4).
    #[arg(long, env = "RLS_QUOTA_MODE")]
    pub quota_mode: bool,

    /// Return the reference's dynamic_metadata on every answer (its
    /// RESPONSE_DYNAMIC_METADATA): the domain, the descriptors, the hits addends and the
    /// merged `metadata` of the rules that passed (docs/envoy-compat.md §5).
    #[arg(long, env = "RLS_RESPONSE_DYNAMIC_METADATA")]
    pub response_dynamic_metadata: bool,

    /// Add RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (and Retry-After when over
    /// limit) to response_headers_to_add.
    #[arg(long, env = "RLS_RESPONSE_HEADERS")]
    pub response_headers: bool,

    /// Shared counters in Redis: `redis://[user:pass@]host:port[/db]` or `rediss://...`.
    /// Absent: counters live in this process (one replica only).
    #[arg(long, env = "RLS_REDIS_URL", conflicts_with_all = ["redis_cluster_url", "redis_sentinel"])]
    pub redis_url: Option<String>,

    /// Comma-separated seed nodes of a Redis Cluster (`redis://host:port`, `rediss://...`,
    /// or bare `host:port`).
    #[arg(
        long,
        env = "RLS_REDIS_CLUSTER_URL",
        value_delimiter = ',',
        conflicts_with = "redis_sentinel"
    )]
    pub redis_cluster_url: Vec<String>,

    /// Redis Sentinel: `MASTER,host:port[,host:port...]`, the name the sentinels monitor
    /// the master under, then the sentinels. The master is found through them and followed
    /// across failovers. A sentinel written `rediss://host:port` means TLS to the sentinels
    /// and to the master.
    #[arg(long, env = "RLS_REDIS_SENTINEL", value_parser = parse_sentinel)]
    pub redis_sentinel: Option<Box<crate::redis::sentinel::SentinelTarget>>,

    /// A file holding the sentinels' password (not the master's: that is
    /// --redis-password-file).
    #[arg(
        long,
        env = "RLS_REDIS_SENTINEL_PASSWORD_FILE",
        requires = "redis_sentinel"
    )]
    pub redis_sentinel_password_file: Option<PathBuf>,

    /// A file holding the Redis password (a Kubernetes Secret), so it never sits in argv or
    /// the environment. Overrides a password in the URL.
    #[arg(long, env = "RLS_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// The Redis master's password handed over inside the process: the reference's
    /// `REDIS_AUTH` with `REDIS_TYPE=sentinel` (`compat_env`), where no URL names the master.
    /// Never a flag, so never in argv; --redis-password-file wins over it.
    #[arg(skip)]
    pub redis_password: Option<InProcessSecret>,

    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`).
    /// Absent: the system's trust store.
    #[arg(long, env = "RLS_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Deadline of every Redis call. Envoy's own default RLS timeout is 20 ms.
    #[arg(long, env = "RLS_REDIS_TIMEOUT", default_value = "15ms", value_parser = parse::duration)]
    pub redis_timeout: Duration,

    /// Threads answering requests (the runtime's workers). 0: one per core, less one when
    /// counters are in a single Redis (or one found through Sentinel), whose I/O thread takes
    /// that core (docs/capacity.md).
    #[arg(long, env = "RLS_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Prefix of every Redis key, so several deployments can share one Redis.
    #[arg(long, env = "RLS_REDIS_KEY_PREFIX", default_value = "rls", value_parser = parse_key_prefix)]
    pub redis_key_prefix: String,

    /// What to answer when the counter store fails: `error` (gRPC UNAVAILABLE, so Envoy's
    /// `failure_mode_deny` decides), `allow` (OK) or `deny` (OVER_LIMIT).
    #[arg(long, env = "RLS_ON_BACKEND_ERROR", value_enum, default_value_t = OnBackendError::Error)]
    pub on_backend_error: OnBackendError,

    /// How long a counter known to be over its limit is answered without Redis (at most
    /// until its window ends): quota given back through another replica is usable through
    /// this one within it. 0 turns the cache off.
    #[arg(long, env = "RLS_OVER_LIMIT_CACHE_TTL", default_value = "1s", value_parser = parse::duration)]
    pub over_limit_cache_ttl: Duration,

    /// Counters the memory store (no Redis) may hold. Past it, a request that needs a new
    /// counter fails as a backend error of kind `capacity` (answered per
    /// --on-backend-error); no counter is evicted.
    #[arg(long, env = "RLS_MEMORY_MAX_COUNTERS", default_value_t = crate::limiter::DEFAULT_MAX_COUNTERS)]
    pub memory_max_counters: usize,

    /// A count above this fraction of a limit is `near_limit` in `ratelimit_hits_total`.
    #[arg(long, env = "RLS_NEAR_LIMIT_RATIO", default_value_t = 0.8, value_parser = parse_ratio)]
    pub near_limit_ratio: f64,

    /// Distinct consumer ids the soft-threshold metric's `consumer` label may take; past it
    /// the label reads `_other`.
    #[arg(long, env = "RLS_SOFT_CONSUMER_LABELS", default_value_t = 1000)]
    pub soft_consumer_labels: usize,

    /// PEM certificate chain for the gRPC listener: serve gRPC over TLS (HTTP/2, ALPN h2).
    /// Reloaded when the file changes.
    #[arg(long, env = "RLS_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// PEM private key of `--grpc-tls-cert`.
    #[arg(long, env = "RLS_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS).
    #[arg(long, env = "RLS_GRPC_TLS_CLIENT_CA", requires = "grpc_tls_cert")]
    pub grpc_tls_client_ca: Option<PathBuf>,

    /// How long in-flight calls may take to finish after SIGTERM.
    #[arg(long, env = "RLS_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse::duration)]
    pub drain_timeout: Duration,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "RLS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    // Connection and admin bounds (docs/service.md §2 and §3; README "Bounds").
    /// HTTP/2 streams one gRPC connection may have open at once, announced in SETTINGS;
    /// a stream past it is refused (RST_STREAM REFUSED_STREAM).
    #[arg(long, env = "RLS_GRPC_MAX_CONCURRENT_STREAMS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_concurrent_streams: u32,

    /// How often an HTTP/2 PING checks that a gRPC peer still answers.
    #[arg(long, env = "RLS_GRPC_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse::duration)]
    pub grpc_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "RLS_GRPC_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse::duration)]
    pub grpc_keepalive_timeout: Duration,

    /// gRPC connections accepted at once (with or without TLS, handshakes included). Past
    /// it new connections wait in the kernel's backlog until one closes. Lowered to fit the
    /// file-descriptor limit, so that the admin side and the store keep theirs.
    #[arg(long, env = "RLS_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,

    /// Admin HTTP connections accepted at once, a budget of their own so probes and
    /// /metrics keep answering when the gRPC side is full.
    #[arg(long, env = "RLS_ADMIN_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_max_connections: u64,

    /// Send GOAWAY to a gRPC connection this old, so clients reconnect and spread over
    /// replicas added since (the reference's GRPC_MAX_CONNECTION_AGE). Off by default.
    #[arg(long, env = "RLS_GRPC_MAX_CONNECTION_AGE", value_parser = parse::duration)]
    pub grpc_max_connection_age: Option<Duration>,

    /// How long calls may still run on a connection after its GOAWAY for age; then it is
    /// closed.
    #[arg(long, env = "RLS_GRPC_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = parse::duration)]
    pub grpc_max_connection_age_grace: Duration,

    /// A file holding a bearer token that `POST /json` and `GET /config` then require
    /// (`Authorization: Bearer <token>`); re-read on every such request, so a rotated
    /// Secret takes effect at once. Without it `/json` refuses `is_negative_hits` and limit
    /// overrides, which change other callers' quota.
    #[arg(long, env = "RLS_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// OpenTelemetry tracing (docs/observability.md §7). Boxed, as it is off in most
    /// deployments and `serve`'s flags would otherwise outgrow the other commands' by far.
    #[command(flatten)]
    pub tracing: Box<TracingArgs>,
}

/// A secret set inside the process rather than by a flag; its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct InProcessSecret(pub String);

impl std::fmt::Debug for InProcessSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcessSecret(***)")
    }
}

/// `serve`'s tracing flags: one span per decision exported with OTLP.
#[derive(Debug, Clone, Args)]
pub struct TracingArgs {
    /// Export one span per decision with OTLP to this collector (`http://host:4317` for
    /// gRPC, `http://host:4318` for HTTP, where `/v1/traces` is added when the URL has no
    /// path). Absent: no tracing at all.
    #[arg(long, env = "RLS_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: `grpc` or `http` (HTTP/protobuf).
    #[arg(long, env = "RLS_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,

    /// `service.name` of the exported spans.
    #[arg(long, env = "RLS_TRACE_SERVICE_NAME", default_value = "ironclad-rls")]
    pub trace_service_name: String,

    /// Fraction of traces sampled where the caller did not decide (a caller's sampled flag
    /// is followed), from 0 to 1.
    #[arg(long, env = "RLS_TRACE_SAMPLING_RATE", default_value_t = 1.0, value_parser = parse_ratio)]
    pub trace_sampling_rate: f64,
}

/// How spans travel to the OTLP collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC.
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    Http,
}

/// The answer when the counter store fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnBackendError {
    /// gRPC UNAVAILABLE: Envoy's `failure_mode_deny` decides.
    Error,
    /// Answer OK.
    Allow,
    /// Answer OVER_LIMIT.
    Deny,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up `tracing` on stderr (stdout stays for command output): level from `RUST_LOG`,
/// default `info`.
pub fn init_logging(format: LogFormat) {
    init_logging_at(format, "info");
}

/// [`init_logging`] with another default level (`RUST_LOG` still wins): the reference's
/// `LOG_LEVEL` when run as `ratelimit`.
pub fn init_logging_at(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected key=value, found {s:?}")),
    }
}

fn parse_http_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && !s.contains(char::is_whitespace) {
        Ok(s.to_owned())
    } else {
        Err("expected a path starting with `/`".into())
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

fn parse_sentinel(s: &str) -> Result<Box<crate::redis::sentinel::SentinelTarget>, String> {
    crate::redis::sentinel::SentinelTarget::parse(s).map(Box::new)
}

fn parse_otlp_endpoint(s: &str) -> Result<String, String> {
    match url::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(s.to_owned()),
        _ => Err("expected an http:// or https:// URL".into()),
    }
}

fn parse_key_prefix(s: &str) -> Result<String, String> {
    // A brace would become the Redis Cluster hash tag of every key, piling all counters
    // on one slot.
    if s.contains(['{', '}']) {
        return Err("must not contain `{` or `}`".into());
    }
    Ok(s.to_owned())
}

impl ServeArgs {
    /// The runtime's workers on a machine of `cores` cores: `--worker-threads`, or one per
    /// core, less the one the Redis I/O thread of a single node or Sentinel store runs on
    /// (`redis/batch.rs`). Measured on two cores under saturation: two workers beside that
    /// thread left it and Redis waiting for a core behind the request threads (calls of a
    /// millisecond took 10-20 ms, and hundreds per 100 000 missed the 15 ms deadline); one
    /// worker answered as many calls per second, each with less CPU, and none missed it.
    pub fn runtime_workers(&self, cores: usize) -> usize {
        if self.worker_threads > 0 {
            return self.worker_threads;
        }
        let io_thread = self.redis_url.is_some() || self.redis_sentinel.is_some();
        if io_thread {
            cores.saturating_sub(1).max(1)
        } else {
            cores.max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_leave_a_core_to_the_redis_io_thread() {
        let memory = serve(&["--config", "l.yaml"]);
        assert_eq!(memory.runtime_workers(4), 4);
        assert_eq!(memory.runtime_workers(1), 1);
        let single = serve(&[
            "--config",
            "l.yaml",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ]);
        assert_eq!(single.runtime_workers(4), 3);
        assert_eq!(single.runtime_workers(2), 1);
        assert_eq!(single.runtime_workers(1), 1, "never none");
        // A Redis Cluster has no I/O thread of its own (redis/cluster.rs).
        let cluster = serve(&[
            "--config",
            "l.yaml",
            "--redis-cluster-url",
            "redis://127.0.0.1:7000",
        ]);
        assert_eq!(cluster.runtime_workers(2), 2);
        let set = serve(&[
            "--config",
            "l.yaml",
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--worker-threads",
            "3",
        ]);
        assert_eq!(set.runtime_workers(2), 3, "the flag wins");
    }

    fn serve(args: &[&str]) -> ServeArgs {
        let cli = Cli::try_parse_from([&["ironclad-rls", "serve"], args].concat()).unwrap();
        match cli.command {
            Command::Serve(s) => s,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn serve_defaults_match_the_spec() {
        let s = serve(&["--config", "limits/"]);
        assert_eq!(s.grpc_addr.to_string(), "0.0.0.0:8081");
        assert_eq!(s.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(s.drain_timeout, Duration::from_secs(5));
        assert_eq!(s.log_format, LogFormat::Text);
        assert!(!s.shadow_mode && !s.response_headers);
        assert_eq!(s.redis_timeout, Duration::from_millis(15));
        assert_eq!(s.redis_key_prefix, "rls");
        assert_eq!(s.on_backend_error, OnBackendError::Error);
        assert_eq!(s.over_limit_cache_ttl, Duration::from_secs(1));
        assert_eq!(s.memory_max_counters, 1_000_000);
        assert!(s.redis_url.is_none() && s.redis_cluster_url.is_empty());
        assert!((s.near_limit_ratio - 0.8).abs() < f64::EPSILON);
        assert_eq!(s.soft_consumer_labels, 1000);
        assert!(s.grpc_tls_cert.is_none());
        assert!(s.redis_sentinel.is_none() && s.tracing.otlp_endpoint.is_none());
        assert_eq!(s.tracing.otlp_protocol, OtlpProtocol::Grpc);
        assert_eq!(s.tracing.trace_service_name, "ironclad-rls");
        assert!((s.tracing.trace_sampling_rate - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn sentinel_and_tracing_flags() {
        let s = serve(&[
            "--config",
            "x",
            "--redis-sentinel",
            "mymaster,s1:26379,s2:26379",
            "--otlp-endpoint",
            "http://collector:4318",
            "--otlp-protocol",
            "http",
            "--trace-sampling-rate",
            "0.25",
        ]);
        let t = s.redis_sentinel.unwrap();
        assert_eq!(t.master, "mymaster");
        assert_eq!(t.sentinels.len(), 2);
        assert_eq!(s.tracing.otlp_protocol, OtlpProtocol::Http);
        assert!((s.tracing.trace_sampling_rate - 0.25).abs() < f64::EPSILON);
        let refused: [&[&str]; 4] = [
            &["--redis-sentinel", "s1:26379"],
            &["--redis-sentinel", "m,s:1", "--redis-url", "redis://a"],
            &["--otlp-endpoint", "collector:4317"],
            &["--trace-sampling-rate", "2"],
        ];
        for args in refused {
            let argv = [&["ironclad-rls", "serve", "--config", "x"], args].concat();
            assert!(Cli::try_parse_from(argv).is_err(), "{args:?} is refused");
        }
    }

    #[test]
    fn redis_flags() {
        let s = serve(&[
            "--config",
            "x",
            "--redis-cluster-url",
            "redis://a:1,b:2",
            "--on-backend-error",
            "deny",
        ]);
        assert_eq!(s.redis_cluster_url, vec!["redis://a:1", "b:2"]);
        assert_eq!(s.on_backend_error, OnBackendError::Deny);
        let both = [
            "ironclad-rls",
            "serve",
            "--config",
            "x",
            "--redis-url",
            "redis://a",
            "--redis-cluster-url",
            "b:1",
        ];
        assert!(
            Cli::try_parse_from(both).is_err(),
            "the two Redis modes exclude each other"
        );
        let braces = [
            "ironclad-rls",
            "serve",
            "--config",
            "x",
            "--redis-key-prefix",
            "{x}",
        ];
        assert!(Cli::try_parse_from(braces).is_err());
    }

    #[test]
    fn several_configs_and_flags() {
        let s = serve(&[
            "--config",
            "a.yaml",
            "--config",
            "b/,c/",
            "--grpc-addr",
            "127.0.0.1:0",
            "--drain-timeout",
            "250ms",
            "--log-format",
            "json",
        ]);
        assert_eq!(s.config.len(), 3);
        assert_eq!(s.grpc_addr.port(), 0);
        assert_eq!(s.drain_timeout, Duration::from_millis(250));
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn serve_needs_a_config() {
        assert!(Cli::try_parse_from(["ironclad-rls", "serve"]).is_err());
    }

    #[test]
    fn xds_is_a_configuration_source_instead_of_files() {
        let s = serve(&[
            "--config-xds",
            "envoy-gateway:18001",
            "--config-xds-node-id",
            "envoy-ratelimit",
            "--config-xds-node-metadata",
            "a=1,b=x=y",
        ]);
        assert!(s.config.is_empty());
        assert_eq!(s.config_xds.as_deref(), Some("envoy-gateway:18001"));
        assert_eq!(s.config_xds_node_id, "envoy-ratelimit");
        assert_eq!(
            s.config_xds_node_metadata,
            vec![("a".into(), "1".into()), ("b".into(), "x=y".into())]
        );
        assert!(!s.force_start_without_initial_config);
        assert_eq!(serve(&["--config", "x"]).config_xds_node_id, "default");
        let both = [
            "ironclad-rls",
            "serve",
            "--config",
            "x",
            "--config-xds",
            "h:1",
        ];
        assert!(Cli::try_parse_from(both).is_err(), "one source at a time");
        let force_without_xds = [
            "ironclad-rls",
            "serve",
            "--config",
            "x",
            "--force-start-without-initial-config",
        ];
        assert!(Cli::try_parse_from(force_without_xds).is_err());
    }

    #[test]
    fn metrics_listener_flags() {
        let s = serve(&["--config", "x"]);
        assert!(s.metrics_addr.is_none());
        assert_eq!(s.metrics_path, "/metrics");
        let s = serve(&[
            "--config",
            "x",
            "--metrics-addr",
            "127.0.0.1:0",
            "--metrics-path",
            "/stats",
        ]);
        assert_eq!(s.metrics_path, "/stats");
        let bad = [
            "ironclad-rls",
            "serve",
            "--config",
            "x",
            "--metrics-path",
            "stats",
        ];
        assert!(Cli::try_parse_from(bad).is_err());
    }
}
