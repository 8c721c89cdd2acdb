//! Command-line settings. Every flag also reads `RLS_` + its name in upper snake case
//! (`--grpc-addr` ↔ `RLS_GRPC_ADDR`); the flag wins. Parsed with clap, tested with
//! `try_parse_from` (never by setting the process environment).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `ironclad-rls`: an Envoy-compatible global rate limit service.
#[derive(Debug, Parser)]
#[command(name = "ironclad-rls", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Load limits files as `serve` would; print the effective rules and every warning.
    /// Exit 0 when valid, 1 with every error listed.
    Validate(ValidateArgs),
    /// Make one ShouldRateLimit call and print the response as JSON.
    /// Exit 0 for OK, 2 for OVER_LIMIT, 1 on error.
    Check(CheckArgs),
    /// Load a running service with ShouldRateLimit calls and print throughput and latency.
    Bench(BenchArgs),
    /// Print gateway configuration that sends the descriptors the limits files expect.
    #[command(subcommand)]
    Render(RenderTarget),
}

/// `serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// A limits file or a directory of them (repeatable, or comma-separated in RLS_CONFIG).
    #[arg(
        long = "config",
        env = "RLS_CONFIG",
        value_delimiter = ',',
        required = true
    )]
    pub config: Vec<PathBuf>,

    /// The RLS gRPC listener (Envoy's `rate_limit_service`). Port 0 picks a free port.
    #[arg(long, env = "RLS_GRPC_ADDR", default_value = "0.0.0.0:8081")]
    pub grpc_addr: SocketAddr,

    /// The admin HTTP listener: /healthz, /readyz, /config.
    #[arg(long, env = "RLS_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// Global shadow mode: overall_code is never OVER_LIMIT; statuses and counting as if
    /// enforcing.
    #[arg(long, env = "RLS_SHADOW_MODE")]
    pub shadow_mode: bool,

    /// Add RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset (and Retry-After when over
    /// limit) to response_headers_to_add.
    #[arg(long, env = "RLS_RESPONSE_HEADERS")]
    pub response_headers: bool,

    /// Shared counters in Redis: `redis://[user:pass@]host:port[/db]` or `rediss://...`.
    /// Absent: counters live in this process (one replica only).
    #[arg(long, env = "RLS_REDIS_URL", conflicts_with = "redis_cluster_url")]
    pub redis_url: Option<String>,

    /// Comma-separated seed nodes of a Redis Cluster (`redis://host:port`, `rediss://...`,
    /// or bare `host:port`).
    #[arg(long, env = "RLS_REDIS_CLUSTER_URL", value_delimiter = ',')]
    pub redis_cluster_url: Vec<String>,

    /// A file holding the Redis password (a Kubernetes Secret), so it never sits in argv or
    /// the environment. Overrides a password in the URL.
    #[arg(long, env = "RLS_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,

    /// PEM file of the CA that signed the Redis server's certificate (`rediss://`).
    /// Absent: the system's trust store.
    #[arg(long, env = "RLS_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Deadline of every Redis call. Envoy's own default RLS timeout is 20 ms.
    #[arg(long, env = "RLS_REDIS_TIMEOUT", default_value = "15ms", value_parser = parse_duration)]
    pub redis_timeout: Duration,

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
    #[arg(long, env = "RLS_OVER_LIMIT_CACHE_TTL", default_value = "1s", value_parser = parse_duration)]
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
    #[arg(long, env = "RLS_DRAIN_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "RLS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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

/// `validate` arguments.
#[derive(Debug, Clone, Args)]
pub struct ValidateArgs {
    /// Limits files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `check` arguments.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The service's gRPC address.
    #[arg(long, env = "RLS_CHECK_ADDR", default_value = "http://127.0.0.1:8081")]
    pub addr: String,

    /// The rate limit domain.
    #[arg(long, env = "RLS_CHECK_DOMAIN", default_value = "kcse")]
    pub domain: String,

    /// One descriptor: `key=value[,key=value...]` (repeatable). A value runs to the next
    /// comma; everything after the first `=` belongs to it.
    #[arg(long = "descriptor", required = true, value_parser = parse_descriptor)]
    pub descriptors: Vec<Vec<(String, String)>>,

    /// The request's hits_addend (0 means 1).
    #[arg(long, default_value_t = 0)]
    pub hits: u32,

    /// How long to wait for the answer.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The service's gRPC address.
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub addr: String,

    /// The rate limit domain.
    #[arg(long, default_value = "kcse")]
    pub domain: String,

    /// One descriptor, as for `check` (repeatable). `{n}` in a value is replaced by the call's
    /// number modulo `--distinct`, to spread calls over many counters.
    #[arg(long = "descriptor", required = true, value_parser = parse_descriptor)]
    pub descriptors: Vec<Vec<(String, String)>>,

    /// Number of distinct values `{n}` takes.
    #[arg(long, default_value_t = 10_000)]
    pub distinct: u64,

    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Also print the figures as one Markdown table row starting with this label
    /// (`| label | calls/s | p50 | p99 | p999 | errors |`).
    #[arg(long)]
    pub markdown_row: Option<String>,
}

/// `render` targets.
#[derive(Debug, Clone, Subcommand)]
pub enum RenderTarget {
    /// A complete Envoy bootstrap: listener, consumer filter, rate limit filter, route
    /// actions, RLS cluster (HTTP/2) and upstream clusters.
    Envoy(RenderEnvoyArgs),
    /// Istio manifests for an ingress gateway: EnvoyFilter (filters, route actions, RLS
    /// cluster), RequestAuthentication when tokens are verified, and the RLS Service.
    Istio(RenderIstioArgs),
}

/// Flags both `render` targets take.
#[derive(Debug, Clone, Args)]
pub struct RenderGatewayArgs {
    /// Limits files or directories, as for `serve`.
    #[arg(long = "config", value_delimiter = ',', required = true)]
    pub config: Vec<PathBuf>,

    /// The endpoint-format domain to render, when the files hold several.
    #[arg(long)]
    pub domain: Option<String>,

    /// How long the gateway waits for the RLS before `--failure-mode-deny` decides.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Refuse requests (HTTP 500) when the RLS fails or is too slow. Without it they pass
    /// unlimited.
    #[arg(long)]
    pub failure_mode_deny: bool,

    /// Verify Bearer tokens against this JWKS (jwt_authn / RequestAuthentication) and take
    /// the consumer from the verified `azp`; a token that fails verification gets 401.
    /// The recommended mode. Implies `--jwt verify`.
    #[arg(long, value_parser = crate::render::parse_jwks_uri)]
    pub jwks_uri: Option<url::Url>,

    /// The issuer verified tokens must carry (`iss`). Required for Istio.
    #[arg(long, requires = "jwks_uri")]
    pub jwt_issuer: Option<String>,

    /// An accepted audience (`aud`) of verified tokens (repeatable); none: any.
    #[arg(long = "jwt-audience", requires = "jwks_uri")]
    pub jwt_audiences: Vec<String>,

    /// How Bearer tokens identify the consumer: `verify` (needs --jwks-uri), `decode` (read
    /// `azp` without checking the signature, as the Keycloak.SE guide's script does: anyone
    /// can pick a consumer id), `ignore`. Default: `verify` with --jwks-uri, else `decode`.
    #[arg(long, value_enum)]
    pub jwt: Option<JwtArg>,

    /// Where the consumer id may come from (comma-separated; tried in the fixed order
    /// basic, query, form, jwt). Only `jwt` with `--jwks-uri` is verified by the gateway: an
    /// id from the others is whatever the client says.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "basic,query,form,jwt"
    )]
    pub consumer_sources: Vec<crate::render::Source>,

    /// Largest `application/x-www-form-urlencoded` body read for `client_id`; larger or
    /// chunked bodies are not read (the request is not delayed or refused for it).
    #[arg(long, default_value_t = 16_384)]
    pub max_form_bytes: u32,
}

/// `--jwt` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtArg {
    /// Verified by the gateway against `--jwks-uri`.
    Verify,
    /// Decoded without verification.
    Decode,
    /// Not used for identification.
    Ignore,
}

/// `render envoy` flags.
#[derive(Debug, Clone, Args)]
pub struct RenderEnvoyArgs {
    /// Flags both targets take.
    #[command(flatten)]
    pub gateway: RenderGatewayArgs,

    /// The ironclad-rls gRPC address, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8081", value_parser = crate::render::HostPort::parse)]
    pub rls_addr: crate::render::HostPort,

    /// The gateway's HTTP listener.
    #[arg(long, default_value = "0.0.0.0:10000")]
    pub listen: SocketAddr,

    /// Envoy's admin listener (stats, config dump); none when absent.
    #[arg(long)]
    pub envoy_admin: Option<SocketAddr>,

    /// Where an endpoint's traffic goes: `SHORTNAME=HOST:PORT` (repeatable), instead of the
    /// endpoint's `endpoint` field.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    pub upstreams: Vec<(String, crate::render::HostPort)>,
    /// Put Envoy's HTTP response cache before the rate limit filter: answers the upstream
    /// marks cacheable are served again without spending quota (for egress to an API).
    #[arg(long)]
    pub response_cache: bool,
}

/// `render istio` flags.
#[derive(Debug, Clone, Args)]
pub struct RenderIstioArgs {
    /// Flags both targets take.
    #[command(flatten)]
    pub gateway: RenderGatewayArgs,

    /// The RLS Service address as the gateway resolves it, `host:port`. The Keycloak.SE
    /// guide's name is the default.
    #[arg(
        long,
        default_value = "rate-limiter-headless-service.ironclad-rls.svc.cluster.local:8081",
        value_parser = crate::render::HostPort::parse
    )]
    pub rls_addr: crate::render::HostPort,

    /// Namespace of the ingress gateway (EnvoyFilter and RequestAuthentication live there).
    #[arg(long, default_value = "istio-system")]
    pub namespace: String,

    /// A label of the gateway pods, `KEY=VALUE` (repeatable).
    #[arg(long = "gateway-selector", value_parser = parse_label, default_value = "istio=ingressgateway")]
    pub gateway_selector: Vec<(String, String)>,

    /// The Host clients send for an endpoint: `SHORTNAME=HOST` (repeatable); default: the host
    /// of the endpoint's `endpoint`.
    #[arg(long = "host", value_parser = parse_label)]
    pub hosts: Vec<(String, String)>,

    /// A label of the ironclad-rls pods, for the Service (repeatable).
    #[arg(long = "rls-selector", value_parser = parse_label, default_value = "app.kubernetes.io/name=ironclad-rls")]
    pub rls_selector: Vec<(String, String)>,

    /// Print no Service (the Helm chart creates its own).
    #[arg(long)]
    pub no_service: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, found {s:?}")),
    }
}

fn parse_upstream(s: &str) -> Result<(String, crate::render::HostPort), String> {
    let (name, address) = parse_label(s)?;
    Ok((name, crate::render::HostPort::parse(&address)?))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 15ms, 5s, 1m)"))
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("expected a number from 0 to 1".into()),
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

fn parse_descriptor(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => Err(format!("expected key=value, found {pair:?}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn check_descriptors_parse() {
        let cli = Cli::try_parse_from([
            "ironclad-rls",
            "check",
            "--descriptor",
            "endpoint=kcserl,path=/a?b=c",
            "--descriptor",
            "k=",
            "--hits",
            "3",
        ])
        .unwrap();
        let Command::Check(c) = cli.command else {
            panic!("not check")
        };
        assert_eq!(c.descriptors[0][1], ("path".into(), "/a?b=c".into()));
        assert_eq!(c.descriptors[1][0], ("k".into(), String::new()));
        assert_eq!(c.hits, 3);
        assert!(Cli::try_parse_from(["ironclad-rls", "check", "--descriptor", "novalue"]).is_err());
    }
}
