//! The reference's environment → our `serve` settings: running as `ratelimit`.
//!
//! A Deployment written for envoyproxy/ratelimit (its own manifests, or the one Envoy
//! Gateway creates) runs `/bin/ratelimit` with no flags and configures it only through
//! environment variables. Invoked under that name (or as `ironclad-rls ratelimit`), the
//! binary reads those variables, with the reference's defaults (its
//! `src/settings/settings.go`), and turns each into the `serve` flag that means the same
//! (docs/envoy-gateway.md). The flags are then parsed by the same clap definition as a
//! command line, so every check and default of `serve` applies unchanged.
//!
//! Every reference variable is accounted for: mapped, or, when set, logged once as a
//! warning that names it and says why it changes nothing here. A value that cannot be read
//! is an error naming the variable. Variables that are not the reference's are not looked at.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::ToSocketAddrs;
use std::path::Path;

use clap::Parser;

use crate::settings::{Cli, Command, InProcessSecret, ServeArgs};

/// Why the environment does not make a configuration.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// A variable's value cannot be read.
    #[error("{name}={value:?}: {why}")]
    Invalid {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// What was expected.
        why: String,
    },
    /// A variable asks for something this build cannot do at all.
    #[error("{name}={value:?} is not supported: {why}")]
    Unsupported {
        /// The variable.
        name: String,
        /// Its value.
        value: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// A variable is not valid Unicode.
    #[error("the environment variable {0} is not valid UTF-8")]
    NotUnicode(String),
    /// The resulting settings were refused (the message names the flag).
    #[error("the settings taken from the environment were refused: {0}")]
    Settings(String),
}

/// What the environment asks for.
#[derive(Debug)]
pub struct FromEnv {
    /// The `serve` settings.
    pub args: ServeArgs,
    /// The default log level (`LOG_LEVEL`, as a `tracing` filter; `RUST_LOG` still wins).
    pub log_level: String,
    /// One line per reference variable that is set but changes nothing here.
    pub warnings: Vec<String>,
}

/// Whether the program was started under the reference's name (`/bin/ratelimit`).
pub fn invoked_as_ratelimit(argv0: Option<&OsString>) -> bool {
    argv0
        .and_then(|a| Path::new(a).file_name())
        .is_some_and(|n| n == "ratelimit")
}

/// [`from_vars`] over the process environment.
pub fn from_process_env() -> Result<FromEnv, EnvError> {
    let mut vars = BTreeMap::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str().map(str::to_owned) else {
            continue;
        };
        if !is_reference_variable(&k) {
            continue;
        }
        let v = v
            .into_string()
            .map_err(|_| EnvError::NotUnicode(k.clone()))?;
        vars.insert(k, v);
    }
    from_vars(&vars)
}

/// Logs [`FromEnv::warnings`], once each (after logging is set up).
pub fn log_warnings(from_env: &FromEnv) {
    for w in &from_env.warnings {
        tracing::warn!("{w}");
    }
}

/// Whether `name` is one of the reference's variables (the others are not read).
fn is_reference_variable(name: &str) -> bool {
    SUPPORTED.contains(&name)
        || UNSUPPORTED.iter().any(|(n, _)| *n == name)
        || UNSUPPORTED_PREFIXES
            .iter()
            .any(|(p, _)| name.starts_with(p))
        || name.starts_with("OTEL_")
}

/// The variables mapped to a setting (read by [`from_vars`]).
const SUPPORTED: &[&str] = &[
    "HOST",
    "PORT",
    "GRPC_HOST",
    "GRPC_PORT",
    "GRPC_MAX_CONNECTION_AGE",
    "GRPC_MAX_CONNECTION_AGE_GRACE",
    "GRPC_SERVER_USE_TLS",
    "GRPC_SERVER_TLS_CERT",
    "GRPC_SERVER_TLS_KEY",
    "GRPC_CLIENT_TLS_CACERT",
    "GRPC_SERVER_TLS_CA_CERT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "CONFIG_TYPE",
    "FORCE_START_WITHOUT_INITIAL_CONFIG",
    "HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED",
    "CONFIG_GRPC_XDS_NODE_ID",
    "CONFIG_GRPC_XDS_NODE_METADATA",
    "CONFIG_GRPC_XDS_SERVER_URL",
    "CONFIG_GRPC_XDS_SERVER_USE_TLS",
    "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
    "CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
    "CONFIG_GRPC_XDS_SERVER_TLS_CACERT",
    "CONFIG_GRPC_XDS_SERVER_TLS_SAN",
    "XDS_CLIENT_BACKOFF_INITIAL_INTERVAL",
    "XDS_CLIENT_BACKOFF_MAX_INTERVAL",
    "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES",
    "USE_PROMETHEUS",
    "PROMETHEUS_ADDR",
    "PROMETHEUS_PATH",
    "USE_STATSD",
    "RUNTIME_ROOT",
    "RUNTIME_SUBDIRECTORY",
    "RUNTIME_APPDIRECTORY",
    "RUNTIME_IGNOREDOTFILES",
    "RUNTIME_WATCH_ROOT",
    "LOCAL_CACHE_SIZE_IN_BYTES",
    "NEAR_LIMIT_RATIO",
    "CACHE_KEY_PREFIX",
    "BACKEND_TYPE",
    "LIMIT_RESPONSE_HEADERS_ENABLED",
    "LIMIT_LIMIT_HEADER",
    "LIMIT_REMAINING_HEADER",
    "LIMIT_RESET_HEADER",
    "REDIS_SOCKET_TYPE",
    "REDIS_TYPE",
    "REDIS_URL",
    "REDIS_AUTH",
    "REDIS_SENTINEL_AUTH",
    "REDIS_TLS",
    "REDIS_TLS_CACERT",
    "REDIS_TIMEOUT",
    "REDIS_HEALTH_CHECK_ACTIVE_CONNECTION",
    "SHADOW_MODE",
    "QUOTA_MODE",
    "RESPONSE_DYNAMIC_METADATA",
    "MERGE_DOMAIN_CONFIG",
    "TRACING_ENABLED",
    "TRACING_EXPORTER_PROTOCOL",
    "TRACING_SERVICE_NAME",
    "TRACING_SAMPLING_RATE",
];

/// `OTEL_*` variables the OpenTelemetry SDK reads from the process environment by itself
/// (batching, export headers and deadline, resource attributes, span limits), so they take
/// effect here as in the reference and are not warned about.
const OTEL_READ_BY_THE_SDK: &[&str] = &[
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_CONCURRENT_EXPORTS",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
];

/// The endpoint variables, read with `TRACING_ENABLED=true` ([`tracing_flags`]).
const OTEL_ENDPOINTS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

/// Reference variables with no counterpart here, and why (logged when set).
const UNSUPPORTED: &[(&str, &str)] = &[
    (
        "DEBUG_HOST",
        "there is no debug (pprof) listener; the admin port serves /metrics, /config and the status page",
    ),
    (
        "DEBUG_PORT",
        "there is no debug (pprof) listener; the admin port serves /metrics, /config and the status page",
    ),
    (
        "GRPC_UDS",
        "gRPC is served on TCP only (GRPC_HOST/GRPC_PORT)",
    ),
    (
        "GRPC_CLIENT_TLS_SAN",
        "client certificates are checked against the CA only, not a SAN",
    ),
    (
        "CONFIG_GRPC_XDS_SERVER_CONNECT_RETRY_INTERVAL",
        "reconnection follows XDS_CLIENT_BACKOFF_INITIAL_INTERVAL/XDS_CLIENT_BACKOFF_MAX_INTERVAL",
    ),
    (
        "CONFIG_GRPC_XDS_CLIENT_ADDITIONAL_HEADERS",
        "no extra headers are sent to the xDS server",
    ),
    (
        "XDS_CLIENT_BACKOFF_RANDOM_FACTOR",
        "the backoff doubles each attempt, with jitter",
    ),
    (
        "XDS_CLIENT_BACKOFF_JITTER",
        "the backoff is always jittered",
    ),
    (
        "USE_DOG_STATSD",
        "statsd is not supported; metrics are Prometheus (PROMETHEUS_ADDR, or the admin port's /metrics)",
    ),
    ("USE_DOG_STATSD_MOGRIFIERS", "statsd is not supported"),
    ("STATSD_HOST", "statsd is not supported"),
    ("STATSD_PORT", "statsd is not supported"),
    (
        "EXTRA_TAGS",
        "statsd is not supported; add labels with Prometheus relabelling",
    ),
    (
        "STATS_FLUSH_INTERVAL",
        "Prometheus metrics are read when scraped",
    ),
    ("DISABLE_STATS", "metrics are always kept"),
    (
        "PROMETHEUS_MAPPER_YAML",
        "the metrics are native Prometheus metrics with their own names (docs/service.md); no statsd mapping is applied",
    ),
    (
        "PROMETHEUS_RESPONSE_TIME_AS_MILLISECONDS",
        "durations are Prometheus histograms in seconds",
    ),
    (
        "EXPIRATION_JITTER_MAX_SECONDS",
        "counters expire at the end of their window, without jitter",
    ),
    (
        "STOP_CACHE_KEY_INCREMENT_WHEN_OVERLIMIT",
        "counting follows each rule's algorithm (docs/algorithms.md)",
    ),
    (
        "REDIS_POOL_SIZE",
        "not needed: one multiplexed connection per Redis node carries every call",
    ),
    (
        "REDIS_TLS_CLIENT_CERT",
        "Redis TLS client certificates are not supported",
    ),
    (
        "REDIS_TLS_CLIENT_KEY",
        "Redis TLS client certificates are not supported",
    ),
    (
        "REDIS_TLS_SKIP_HOSTNAME_VERIFICATION",
        "the Redis server's certificate is always verified",
    ),
    (
        "REDIS_PIPELINE_WINDOW",
        "not needed: each request is one script call",
    ),
    (
        "REDIS_PIPELINE_LIMIT",
        "not needed: each request is one script call",
    ),
    (
        "REDIS_CLUSTER_PIPELINE_PARALLELISM",
        "a cluster request is one script call per slot, run in parallel",
    ),
    (
        "REDIS_POOL_ON_EMPTY_BEHAVIOR",
        "there is no pool to run empty",
    ),
    (
        "REDIS_STARTUP_INITIAL_INTERVAL",
        "Redis is reconnected on demand; readiness (/healthcheck) reports it",
    ),
    (
        "REDIS_STARTUP_MAX_INTERVAL",
        "Redis is reconnected on demand; readiness (/healthcheck) reports it",
    ),
    (
        "REDIS_STARTUP_MAX_ELAPSED_TIME",
        "Redis is reconnected on demand; readiness (/healthcheck) reports it",
    ),
    (
        "TRACING_SERVICE_NAMESPACE",
        "spans carry service.name (TRACING_SERVICE_NAME) only; add service.namespace with OTEL_RESOURCE_ATTRIBUTES",
    ),
    (
        "TRACING_SERVICE_INSTANCE_ID",
        "spans carry service.name (TRACING_SERVICE_NAME) only; add service.instance.id with OTEL_RESOURCE_ATTRIBUTES",
    ),
];

/// Families of reference variables with no counterpart here.
const UNSUPPORTED_PREFIXES: &[(&str, &str)] = &[
    (
        "REDIS_PERSECOND",
        "there is one counter store for every unit; per-second limits use it too",
    ),
    (
        "MEMCACHE_",
        "memcached is not supported; counters live in Redis or in memory",
    ),
];

/// Reads the variables one by one, with the reference's defaults.
struct Vars<'a> {
    vars: &'a BTreeMap<String, String>,
    warnings: Vec<String>,
}

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    fn str_or(&self, name: &str, default: &str) -> String {
        self.get(name).unwrap_or(default).to_owned()
    }

    fn invalid(&self, name: &str, why: impl Into<String>) -> EnvError {
        EnvError::Invalid {
            name: name.to_owned(),
            value: self.get(name).unwrap_or_default().to_owned(),
            why: why.into(),
        }
    }

    /// A boolean as Go's `strconv.ParseBool` reads it (envconfig uses it).
    fn bool_or(&self, name: &str, default: bool) -> Result<bool, EnvError> {
        match self.get(name) {
            None => Ok(default),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(_) => Err(self.invalid(name, "expected true or false")),
        }
    }

    fn parse_or<T: std::str::FromStr>(
        &self,
        name: &str,
        default: T,
        what: &str,
    ) -> Result<T, EnvError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| self.invalid(name, format!("expected {what}"))),
        }
    }

    /// A Go duration (`10s`, `24h`, `500ms`, `1m30s`), checked and passed on as text.
    fn duration_or(&self, name: &str, default: &str) -> Result<String, EnvError> {
        let v = self.str_or(name, default);
        humantime::parse_duration(&v).map_err(|e| {
            self.invalid(
                name,
                format!("expected a duration such as 10s or 1m30s ({e})"),
            )
        })?;
        Ok(v)
    }

    fn warn(&mut self, name: &str, why: &str) {
        self.warnings.push(format!(
            "{name} is set but not supported by ironclad-rls: {why}"
        ));
    }

    /// A host and port joined into a socket address (a name is resolved now).
    fn addr(
        &self,
        host_var: &str,
        host: &str,
        port_var: &str,
        port: u16,
    ) -> Result<String, EnvError> {
        let host = if host.is_empty() { "0.0.0.0" } else { host };
        let resolved = (host.trim_matches(['[', ']']), port)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next());
        match resolved {
            Some(a) => Ok(a.to_string()),
            None => Err(self.invalid(
                host_var,
                format!("cannot resolve it (with {port_var}={port})"),
            )),
        }
    }
}

/// The settings the reference's variables in `vars` ask for. Pure apart from resolving host
/// names; the tests' entry point.
pub fn from_vars(vars: &BTreeMap<String, String>) -> Result<FromEnv, EnvError> {
    let mut v = Vars {
        vars,
        warnings: Vec::new(),
    };
    let mut args: Vec<String> = Vec::new();
    let flag = |args: &mut Vec<String>, name: &str, value: &str| {
        args.push(format!("--{name}"));
        args.push(value.to_owned());
    };

    // Listeners.
    let port = v.parse_or("PORT", 8080u16, "a port number")?;
    let host = v.str_or("HOST", "0.0.0.0");
    let admin = v.addr("HOST", &host, "PORT", port)?;
    flag(&mut args, "admin-addr", &admin);
    let grpc_port = v.parse_or("GRPC_PORT", 8081u16, "a port number")?;
    let grpc_host = v.str_or("GRPC_HOST", "0.0.0.0");
    flag(
        &mut args,
        "grpc-addr",
        &v.addr("GRPC_HOST", &grpc_host, "GRPC_PORT", grpc_port)?,
    );
    flag(
        &mut args,
        "grpc-max-connection-age",
        &v.duration_or("GRPC_MAX_CONNECTION_AGE", "24h")?,
    );
    flag(
        &mut args,
        "grpc-max-connection-age-grace",
        &v.duration_or("GRPC_MAX_CONNECTION_AGE_GRACE", "1h")?,
    );

    // TLS on the gRPC port. Envoy Gateway names the client CA GRPC_SERVER_TLS_CA_CERT; the
    // reference reads GRPC_CLIENT_TLS_CACERT. Either makes client certificates required.
    if v.bool_or("GRPC_SERVER_USE_TLS", false)? {
        for name in ["GRPC_SERVER_TLS_CERT", "GRPC_SERVER_TLS_KEY"] {
            if v.get(name).is_none_or(str::is_empty) {
                return Err(v.invalid(name, "required with GRPC_SERVER_USE_TLS=true"));
            }
        }
        flag(
            &mut args,
            "grpc-tls-cert",
            &v.str_or("GRPC_SERVER_TLS_CERT", ""),
        );
        flag(
            &mut args,
            "grpc-tls-key",
            &v.str_or("GRPC_SERVER_TLS_KEY", ""),
        );
        let ca = v
            .get("GRPC_CLIENT_TLS_CACERT")
            .filter(|s| !s.is_empty())
            .or(v.get("GRPC_SERVER_TLS_CA_CERT").filter(|s| !s.is_empty()))
            .map(str::to_owned);
        if let Some(ca) = ca {
            flag(&mut args, "grpc-tls-client-ca", &ca);
        }
    }

    // Logging.
    let log_level = match v.str_or("LOG_LEVEL", "WARN").to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "error" | "fatal" | "panic" => "error",
        _ => {
            return Err(v.invalid(
                "LOG_LEVEL",
                "expected trace, debug, info, warn, error, fatal or panic",
            ));
        }
    }
    .to_owned();
    let log_format = match v.str_or("LOG_FORMAT", "text").as_str() {
        "text" => "text",
        "json" => "json",
        _ => return Err(v.invalid("LOG_FORMAT", "expected text or json")),
    };
    flag(&mut args, "log-format", log_format);

    // Where the configuration comes from.
    match v.str_or("CONFIG_TYPE", "FILE").as_str() {
        "FILE" => {
            // The reference's classic layout: RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config.
            let root = v.str_or("RUNTIME_ROOT", "/srv/runtime_data/current");
            let sub = v.str_or("RUNTIME_SUBDIRECTORY", "");
            let app = v.str_or("RUNTIME_APPDIRECTORY", "config");
            let dir = Path::new(&root).join(sub).join(app);
            flag(&mut args, "config", &dir.to_string_lossy());
        }
        "GRPC_XDS_SOTW" => {
            flag(
                &mut args,
                "config-xds",
                &v.str_or("CONFIG_GRPC_XDS_SERVER_URL", "localhost:18000"),
            );
            flag(
                &mut args,
                "config-xds-node-id",
                &v.str_or("CONFIG_GRPC_XDS_NODE_ID", "default"),
            );
            // The reference splits on `,` and `=` and drops what has no `=`.
            let metadata: Vec<&str> = v
                .get("CONFIG_GRPC_XDS_NODE_METADATA")
                .unwrap_or_default()
                .split(',')
                .filter(|kv| kv.split_once('=').is_some_and(|(k, _)| !k.is_empty()))
                .collect();
            for kv in metadata {
                flag(&mut args, "config-xds-node-metadata", kv);
            }
            if v.bool_or("CONFIG_GRPC_XDS_SERVER_USE_TLS", false)? {
                let Some(ca) = v
                    .get("CONFIG_GRPC_XDS_SERVER_TLS_CACERT")
                    .filter(|s| !s.is_empty())
                else {
                    return Err(EnvError::Unsupported {
                        name: "CONFIG_GRPC_XDS_SERVER_TLS_CACERT".into(),
                        value: String::new(),
                        why: "TLS to the xDS server needs the CA that signed its certificate (the system trust store is not used)".into(),
                    });
                };
                flag(&mut args, "config-xds-tls-ca", ca);
                let cert = v
                    .get("CONFIG_GRPC_XDS_CLIENT_TLS_CERT")
                    .filter(|s| !s.is_empty());
                let key = v
                    .get("CONFIG_GRPC_XDS_CLIENT_TLS_KEY")
                    .filter(|s| !s.is_empty());
                match (cert, key) {
                    (Some(c), Some(k)) => {
                        flag(&mut args, "config-xds-tls-cert", c);
                        flag(&mut args, "config-xds-tls-key", k);
                    }
                    (None, None) => {}
                    (Some(_), None) => {
                        return Err(v.invalid(
                            "CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
                            "required beside CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
                        ));
                    }
                    (None, Some(_)) => {
                        return Err(v.invalid(
                            "CONFIG_GRPC_XDS_CLIENT_TLS_CERT",
                            "required beside CONFIG_GRPC_XDS_CLIENT_TLS_KEY",
                        ));
                    }
                }
                if let Some(san) = v
                    .get("CONFIG_GRPC_XDS_SERVER_TLS_SAN")
                    .filter(|s| !s.is_empty())
                {
                    flag(&mut args, "config-xds-tls-server-name", san);
                }
            }
            flag(
                &mut args,
                "config-xds-backoff-initial",
                &v.duration_or("XDS_CLIENT_BACKOFF_INITIAL_INTERVAL", "10s")?,
            );
            flag(
                &mut args,
                "config-xds-backoff-max",
                &v.duration_or("XDS_CLIENT_BACKOFF_MAX_INTERVAL", "60s")?,
            );
            if let Some(n) = v
                .get("XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES")
                .filter(|s| !s.is_empty())
            {
                let n: u32 = n.trim().parse().map_err(|_| {
                    v.invalid(
                        "XDS_CLIENT_MAX_MSG_SIZE_IN_BYTES",
                        "expected a number of bytes",
                    )
                })?;
                // The reference leaves gRPC's default for 0.
                if n > 0 {
                    flag(&mut args, "config-xds-max-message-bytes", &n.to_string());
                }
            }
            // The reference is healthy at once when forced, unless it is also told to wait
            // for one configuration; we are ready once one is installed, so forcing is an
            // empty one at start-up.
            let force = v.bool_or("FORCE_START_WITHOUT_INITIAL_CONFIG", false)?;
            let wait_for_one = v.bool_or("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", false)?;
            if force && !wait_for_one {
                args.push("--force-start-without-initial-config".into());
            }
        }
        _ => return Err(v.invalid("CONFIG_TYPE", "expected FILE or GRPC_XDS_SOTW")),
    }
    // Dot-files are always skipped and the directory always watched.
    if !v.bool_or("RUNTIME_IGNOREDOTFILES", false)? && v.get("RUNTIME_IGNOREDOTFILES").is_some() {
        v.warn(
            "RUNTIME_IGNOREDOTFILES",
            "dot-files in the configuration directory are always skipped",
        );
    }
    v.bool_or("RUNTIME_WATCH_ROOT", true)?;
    if v.bool_or("MERGE_DOMAIN_CONFIG", false)? {
        v.warn(
            "MERGE_DOMAIN_CONFIG",
            "a domain must come from one file or resource; several are an error",
        );
    }

    // Metrics.
    if v.bool_or("USE_STATSD", true)? && v.get("USE_STATSD").is_some() {
        v.warn("USE_STATSD", "statsd is not supported; metrics are Prometheus (PROMETHEUS_ADDR, or the admin port's /metrics)");
    }
    if v.bool_or("USE_PROMETHEUS", false)? {
        let raw = v.str_or("PROMETHEUS_ADDR", ":9090");
        let Some((h, p)) = raw.rsplit_once(':') else {
            return Err(v.invalid("PROMETHEUS_ADDR", "expected [host]:port"));
        };
        let p: u16 = p
            .parse()
            .map_err(|_| v.invalid("PROMETHEUS_ADDR", "expected [host]:port"))?;
        let addr = v.addr("PROMETHEUS_ADDR", h, "PROMETHEUS_ADDR", p)?;
        let path = v.str_or("PROMETHEUS_PATH", "/metrics");
        if addr == admin {
            // One listener: the admin port's /metrics.
            if path != "/metrics" {
                v.warn(
                    "PROMETHEUS_PATH",
                    "on the admin port the metrics are at /metrics",
                );
            }
        } else {
            flag(&mut args, "metrics-addr", &addr);
            flag(&mut args, "metrics-path", &path);
        }
    }

    // Decisions.
    if v.bool_or("SHADOW_MODE", false)? {
        args.push("--shadow-mode".into());
    }
    if v.bool_or("LIMIT_RESPONSE_HEADERS_ENABLED", false)? {
        args.push("--response-headers".into());
    }
    for (name, default) in [
        ("LIMIT_LIMIT_HEADER", "RateLimit-Limit"),
        ("LIMIT_REMAINING_HEADER", "RateLimit-Remaining"),
        ("LIMIT_RESET_HEADER", "RateLimit-Reset"),
    ] {
        if v.get(name)
            .is_some_and(|h| !h.eq_ignore_ascii_case(default))
        {
            v.warn(name, &format!("the header is always named {default}"));
        }
    }
    let ratio: f64 = v.parse_or("NEAR_LIMIT_RATIO", 0.8, "a number from 0 to 1")?;
    flag(&mut args, "near-limit-ratio", &ratio.to_string());
    // The reference's local cache holds over-limit keys; ours is bounded by time, not bytes.
    let cache: u64 = v.parse_or("LOCAL_CACHE_SIZE_IN_BYTES", 0, "a number of bytes")?;
    if cache == 0 {
        flag(&mut args, "over-limit-cache-ttl", "0s");
    }
    if v.bool_or("QUOTA_MODE", false)? {
        args.push("--quota-mode".into());
    }
    if v.bool_or("RESPONSE_DYNAMIC_METADATA", false)? {
        args.push("--response-dynamic-metadata".into());
    }
    if v.bool_or("TRACING_ENABLED", false)? {
        args.extend(tracing_flags(&v)?);
    }

    // The counter store.
    let master_password = redis(&mut v, &mut args)?;

    // Everything else the reference reads that is set: named once each.
    let mut named: Vec<(String, &str)> = Vec::new();
    for name in vars.keys() {
        if let Some((_, why)) = UNSUPPORTED.iter().find(|(n, _)| n == name) {
            named.push((name.clone(), why));
        } else if let Some((_, why)) = UNSUPPORTED_PREFIXES
            .iter()
            .find(|(p, _)| name.starts_with(p))
        {
            named.push((name.clone(), why));
        } else if name.starts_with("OTEL_")
            && !OTEL_READ_BY_THE_SDK.contains(&name.as_str())
            && !OTEL_ENDPOINTS.contains(&name.as_str())
        {
            named.push((
                name.clone(),
                "the exporter is set by TRACING_ENABLED, TRACING_EXPORTER_PROTOCOL, TRACING_SERVICE_NAME, TRACING_SAMPLING_RATE and OTEL_EXPORTER_OTLP(_TRACES)_ENDPOINT; of the other OTEL_* variables only OTEL_BSP_*, the OTLP headers and timeout, OTEL_RESOURCE_ATTRIBUTES and the span limits are read",
            ));
        }
    }
    for (name, why) in named {
        v.warn(&name, why);
    }

    let argv = ["ironclad-rls".to_owned(), "serve".to_owned()]
        .into_iter()
        .chain(args);
    let mut serve = match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: Command::Serve(s),
        }) => s,
        Ok(_) => return Err(EnvError::Settings("not a serve command".into())),
        Err(e) => return Err(EnvError::Settings(e.to_string())),
    };
    serve.redis_password = master_password.map(InProcessSecret);
    Ok(FromEnv {
        args: serve,
        log_level,
        warnings: v.warnings,
    })
}

/// The counter store: REDIS_* (and BACKEND_TYPE) → `--redis-url` / `--redis-cluster-url` /
/// `--redis-sentinel`. Returns the master's password when it cannot ride in a URL (REDIS_TYPE=sentinel).
fn redis(v: &mut Vars<'_>, args: &mut Vec<String>) -> Result<Option<String>, EnvError> {
    match v
        .str_or("BACKEND_TYPE", "redis")
        .to_ascii_lowercase()
        .as_str()
    {
        "redis" => {}
        "memcache" => {
            return Err(EnvError::Unsupported {
                name: "BACKEND_TYPE".into(),
                value: "memcache".into(),
                why: "counters live in Redis (BACKEND_TYPE=redis) or, without REDIS_URL, in memory"
                    .into(),
            });
        }
        _ => return Err(v.invalid("BACKEND_TYPE", "expected redis")),
    }
    let timeout = v.duration_or("REDIS_TIMEOUT", "10s")?;
    args.push("--redis-timeout".into());
    args.push(timeout);
    v.bool_or("REDIS_HEALTH_CHECK_ACTIVE_CONNECTION", false)?;
    if let Some(prefix) = v.get("CACHE_KEY_PREFIX").filter(|p| !p.is_empty()) {
        args.push("--redis-key-prefix".into());
        args.push(prefix.to_owned());
    }
    let Some(url) = v
        .get("REDIS_URL")
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
    else {
        v.warnings.push(
            "REDIS_URL is not set: counters live in this process (one replica only); the reference would use /var/run/nutcracker/ratelimit.sock".into(),
        );
        return Ok(None);
    };
    let socket = v.str_or("REDIS_SOCKET_TYPE", "unix").to_ascii_lowercase();
    let tls = v.bool_or("REDIS_TLS", false)?;
    // The reference's default socket type is `unix`, but a `host:port` URL can only be TCP.
    if socket == "unix" && (v.get("REDIS_SOCKET_TYPE").is_some() || url.starts_with('/')) {
        return Err(EnvError::Unsupported {
            name: "REDIS_SOCKET_TYPE".into(),
            value: "unix".into(),
            why: "Redis is reached over TCP; set REDIS_SOCKET_TYPE=tcp and REDIS_URL=host:port"
                .into(),
        });
    }
    if socket != "tcp" && socket != "unix" {
        return Err(v.invalid("REDIS_SOCKET_TYPE", "expected tcp or unix"));
    }
    let auth = v
        .get("REDIS_AUTH")
        .filter(|a| !a.is_empty())
        .map(str::to_owned);
    let mut master_password = None;
    let redis_type = v.str_or("REDIS_TYPE", "SINGLE").to_ascii_lowercase();
    if redis_type != "sentinel" && v.get("REDIS_SENTINEL_AUTH").is_some_and(|a| !a.is_empty()) {
        // The reference ignores it too; said, so that a forgotten REDIS_TYPE is noticed.
        v.warnings.push(format!(
            "REDIS_SENTINEL_AUTH is set but unused: REDIS_TYPE is {redis_type}, not sentinel"
        ));
    }
    let node_url = |n: &str| node(v, "REDIS_URL", n, tls, "REDIS_AUTH", auth.as_deref());
    match redis_type.as_str() {
        "single" => {
            let u = node_url(&url)?;
            args.push("--redis-url".into());
            args.push(u);
        }
        "cluster" => {
            let nodes: Vec<String> = url.split(',').map(&node_url).collect::<Result<_, _>>()?;
            args.push("--redis-cluster-url".into());
            args.push(nodes.join(","));
        }
        "sentinel" => {
            // The reference's spelling: `master-name,host:port[,host:port...]`.
            let (master, sentinels) = url.split_once(',').unwrap_or((url.as_str(), ""));
            let master = master.trim();
            if master.is_empty() || master.contains(':') || sentinels.trim().is_empty() {
                return Err(v.invalid(
                    "REDIS_URL",
                    "expected the master's name and the sentinels: MASTER,host:port[,host:port...]",
                ));
            }
            // The sentinels' password rides in each sentinel's URL, as REDIS_AUTH does in
            // a single node's: parsed in this process, never in argv or a file.
            let sentinel_auth = v
                .get("REDIS_SENTINEL_AUTH")
                .filter(|a| !a.is_empty())
                .map(str::to_owned);
            let sentinels: Vec<String> = sentinels
                .split(',')
                .map(|n| {
                    node(
                        v,
                        "REDIS_URL",
                        n,
                        tls,
                        "REDIS_SENTINEL_AUTH",
                        sentinel_auth.as_deref(),
                    )
                })
                .collect::<Result<_, _>>()?;
            if let Some(a) = &auth {
                // The master is reached at the address the sentinels name, so its password
                // cannot ride in a URL; it is handed over in this process.
                if a.contains(':') {
                    return Err(EnvError::Unsupported {
                        name: "REDIS_AUTH".into(),
                        value: "<user>:<password>".into(),
                        why: "with REDIS_TYPE=sentinel the master takes a password alone (no user name)".into(),
                    });
                }
                master_password = Some(a.clone());
            }
            args.push("--redis-sentinel".into());
            args.push(format!("{master},{}", sentinels.join(",")));
        }
        _ => return Err(v.invalid("REDIS_TYPE", "expected single, cluster or sentinel")),
    }
    if tls && let Some(ca) = v.get("REDIS_TLS_CACERT").filter(|c| !c.is_empty()) {
        args.push("--redis-ca-file".into());
        args.push(ca.to_owned());
    }
    Ok(master_password)
}

/// One Redis node of `REDIS_URL` (`host:port`) as a URL, with `auth` (the variable
/// `auth_var`: `user:password` or a password alone, the reference's two spellings) in it.
fn node(
    v: &Vars<'_>,
    url_var: &str,
    node: &str,
    tls: bool,
    auth_var: &str,
    auth: Option<&str>,
) -> Result<String, EnvError> {
    let node = node.trim();
    if node.is_empty() || node.contains("://") || !node.contains(':') {
        return Err(v.invalid(
            url_var,
            "expected host:port (comma-separated for a cluster or the sentinels)",
        ));
    }
    let scheme = if tls { "rediss" } else { "redis" };
    let mut u = url::Url::parse(&format!("{scheme}://{node}"))
        .map_err(|e| v.invalid(url_var, format!("expected host:port ({e})")))?;
    if let Some(a) = auth {
        let (user, password) = a.split_once(':').unwrap_or(("", a));
        if u.set_username(user).is_err() || u.set_password(Some(password)).is_err() {
            return Err(v.invalid(url_var, format!("cannot carry {auth_var}")));
        }
    }
    Ok(u.to_string())
}

/// `TRACING_ENABLED=true`: the reference's tracing variables → `--otlp-*` / `--trace-*`,
/// with its defaults (its `src/settings/settings.go` and `src/trace/trace.go`: HTTP,
/// service name `RateLimit`, every trace the caller did not decide sampled).
fn tracing_flags(v: &Vars<'_>) -> Result<Vec<String>, EnvError> {
    // The reference takes an empty protocol for HTTP and refuses any other than the two.
    let protocol = match v.str_or("TRACING_EXPORTER_PROTOCOL", "http").as_str() {
        "http" | "" => "http",
        "grpc" => "grpc",
        _ => return Err(v.invalid("TRACING_EXPORTER_PROTOCOL", "expected http or grpc")),
    };
    // The OpenTelemetry rules: the traces endpoint is the full URL; the general endpoint
    // is a base under which OTLP/HTTP posts to `v1/traces` (gRPC has no path).
    let endpoint = if let Some(e) = v
        .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .filter(|e| !e.is_empty())
    {
        otlp_url(v, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", e)?;
        e.to_owned()
    } else if let Some(e) = v
        .get("OTEL_EXPORTER_OTLP_ENDPOINT")
        .filter(|e| !e.is_empty())
    {
        let u = otlp_url(v, "OTEL_EXPORTER_OTLP_ENDPOINT", e)?;
        if protocol == "http" {
            let mut u = u;
            let path = format!("{}/v1/traces", u.path().trim_end_matches('/'));
            u.set_path(&path);
            u.to_string()
        } else {
            e.to_owned()
        }
    } else if protocol == "http" {
        "http://localhost:4318/v1/traces".to_owned()
    } else {
        "http://localhost:4317".to_owned()
    };
    // Go's ratio sampler samples everything from 1 up and nothing from 0 down.
    let rate: f64 = v.parse_or("TRACING_SAMPLING_RATE", 1.0, "a number")?;
    if rate.is_nan() {
        return Err(v.invalid("TRACING_SAMPLING_RATE", "expected a number"));
    }
    let rate = rate.clamp(0.0, 1.0);
    Ok(vec![
        "--otlp-endpoint".into(),
        endpoint,
        "--otlp-protocol".into(),
        protocol.into(),
        "--trace-service-name".into(),
        v.str_or("TRACING_SERVICE_NAME", "RateLimit"),
        "--trace-sampling-rate".into(),
        rate.to_string(),
    ])
}

/// An OTLP endpoint variable's value as an `http(s)://` URL, or an error naming it.
fn otlp_url(v: &Vars<'_>, name: &str, value: &str) -> Result<url::Url, EnvError> {
    match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(u),
        _ => Err(v.invalid(name, "expected an http:// or https:// URL")),
    }
}

/// `ServeArgs` parsed from a command line (used by the tests to compare).
#[cfg(test)]
fn parse_serve(flags: &[&str]) -> ServeArgs {
    match Cli::parse_from([&["ironclad-rls", "serve"], flags].concat()).command {
        Command::Serve(s) => s,
        other => panic!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::OtlpProtocol;
    use std::time::Duration;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn ok(pairs: &[(&str, &str)]) -> FromEnv {
        from_vars(&env(pairs)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The environment Envoy Gateway sets (envoyproxy/gateway
    /// internal/infrastructure/kubernetes/ratelimit/testdata/deployments/default.yaml),
    /// reproduced here so the test does not need the upstream tree.
    fn envoy_gateway() -> Vec<(&'static str, &'static str)> {
        vec![
            ("RUNTIME_ROOT", "/data"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
            ("RUNTIME_IGNOREDOTFILES", "true"),
            ("RUNTIME_WATCH_ROOT", "false"),
            ("LOG_LEVEL", "info"),
            ("USE_STATSD", "false"),
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("CONFIG_GRPC_XDS_SERVER_URL", "envoy-gateway:18001"),
            ("CONFIG_GRPC_XDS_NODE_ID", "envoy-ratelimit"),
            ("GRPC_SERVER_USE_TLS", "true"),
            ("GRPC_SERVER_TLS_CERT", "/certs/tls.crt"),
            ("GRPC_SERVER_TLS_KEY", "/certs/tls.key"),
            ("GRPC_SERVER_TLS_CA_CERT", "/certs/ca.crt"),
            ("CONFIG_GRPC_XDS_SERVER_USE_TLS", "true"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_CERT", "/certs/tls.crt"),
            ("CONFIG_GRPC_XDS_CLIENT_TLS_KEY", "/certs/tls.key"),
            ("CONFIG_GRPC_XDS_SERVER_TLS_CACERT", "/certs/ca.crt"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "127.0.0.1:6379"),
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", ":19001"),
            ("PROMETHEUS_MAPPER_YAML", "/etc/statsd-exporter/conf.yaml"),
        ]
    }

    #[test]
    fn envoy_gateways_deployment_maps_to_xds_tls_redis_and_a_metrics_port() {
        let f = ok(&envoy_gateway());
        let a = &f.args;
        assert_eq!(a.admin_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(a.grpc_addr.to_string(), "0.0.0.0:8081");
        assert!(a.config.is_empty());
        assert_eq!(a.config_xds.as_deref(), Some("envoy-gateway:18001"));
        assert_eq!(a.config_xds_node_id, "envoy-ratelimit");
        assert_eq!(
            a.config_xds_tls_ca.as_deref(),
            Some(Path::new("/certs/ca.crt"))
        );
        assert_eq!(
            a.config_xds_tls_cert.as_deref(),
            Some(Path::new("/certs/tls.crt"))
        );
        assert!(a.force_start_without_initial_config);
        assert_eq!(
            a.grpc_tls_cert.as_deref(),
            Some(Path::new("/certs/tls.crt"))
        );
        assert_eq!(
            a.grpc_tls_client_ca.as_deref(),
            Some(Path::new("/certs/ca.crt"))
        );
        assert_eq!(a.redis_url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(a.redis_timeout, Duration::from_secs(10));
        assert_eq!(
            a.metrics_addr.map(|m| m.to_string()).as_deref(),
            Some("0.0.0.0:19001")
        );
        assert_eq!(a.metrics_path, "/metrics");
        assert_eq!(
            a.grpc_max_connection_age,
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(
            a.over_limit_cache_ttl,
            Duration::ZERO,
            "LOCAL_CACHE_SIZE_IN_BYTES=0"
        );
        assert_eq!(f.log_level, "info");
        // Exactly the one variable with no counterpart is named.
        assert_eq!(f.warnings.len(), 1, "{:?}", f.warnings);
        assert!(
            f.warnings[0].starts_with("PROMETHEUS_MAPPER_YAML "),
            "{:?}",
            f.warnings
        );
    }

    #[test]
    fn the_reference_defaults_read_the_classic_file_layout() {
        let f = ok(&[
            ("RUNTIME_ROOT", "/srv/rt"),
            ("RUNTIME_SUBDIRECTORY", "ratelimit"),
        ]);
        assert_eq!(f.args.config, vec![Path::new("/srv/rt/ratelimit/config")]);
        assert_eq!(f.log_level, "warn");
        assert!(
            f.args.redis_url.is_none(),
            "no REDIS_URL: memory, with a warning"
        );
        assert!(
            f.warnings
                .iter()
                .any(|w| w.starts_with("REDIS_URL is not set"))
        );
        let defaults = ok(&[]);
        assert_eq!(
            defaults.args.config,
            vec![Path::new("/srv/runtime_data/current/config")]
        );
        let same = parse_serve(&["--config", "x"]);
        assert_eq!(
            defaults.args.soft_consumer_labels,
            same.soft_consumer_labels
        );
    }

    #[test]
    fn every_set_unsupported_variable_is_named_once() {
        let f = ok(&[
            ("DEBUG_PORT", "6070"),
            ("REDIS_PERSECOND", "true"),
            ("REDIS_PERSECOND_URL", "x:1"),
            ("MEMCACHE_HOST_PORT", "m:11211"),
            ("USE_STATSD", "true"),
            ("OTEL_TRACES_SAMPLER", "always_on"),
            ("MERGE_DOMAIN_CONFIG", "true"),
            ("TRACING_SERVICE_NAMESPACE", "edge"),
            // Read by the OpenTelemetry SDK itself: not warned about.
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=b"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]);
        for name in [
            "DEBUG_PORT",
            "REDIS_PERSECOND",
            "REDIS_PERSECOND_URL",
            "MEMCACHE_HOST_PORT",
            "USE_STATSD",
            "OTEL_TRACES_SAMPLER",
            "MERGE_DOMAIN_CONFIG",
            "TRACING_SERVICE_NAMESPACE",
        ] {
            let n = f
                .warnings
                .iter()
                .filter(|w| w.starts_with(&format!("{name} ")))
                .count();
            assert_eq!(n, 1, "{name}: {:?}", f.warnings);
        }
        // And the REDIS_URL line: nothing else.
        assert_eq!(f.warnings.len(), 9, "{:?}", f.warnings);
        // Defaults restated change nothing and are not warned about.
        let quiet = ok(&[
            ("USE_STATSD", "false"),
            ("REDIS_URL", "h:1"),
            ("REDIS_SOCKET_TYPE", "tcp"),
        ]);
        assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (pairs, name) in [
            (vec![("PORT", "http")], "PORT"),
            (vec![("SHADOW_MODE", "yes")], "SHADOW_MODE"),
            (vec![("CONFIG_TYPE", "CONSUL")], "CONFIG_TYPE"),
            (vec![("LOG_LEVEL", "loud")], "LOG_LEVEL"),
            (
                vec![("GRPC_MAX_CONNECTION_AGE", "soon")],
                "GRPC_MAX_CONNECTION_AGE",
            ),
            (vec![("NEAR_LIMIT_RATIO", "x")], "NEAR_LIMIT_RATIO"),
            (
                vec![
                    ("REDIS_URL", "h:1"),
                    ("REDIS_SOCKET_TYPE", "tcp"),
                    ("REDIS_TYPE", "ring"),
                ],
                "REDIS_TYPE",
            ),
            (vec![("BACKEND_TYPE", "memcache")], "BACKEND_TYPE"),
            (
                vec![("REDIS_URL", "/var/run/redis.sock")],
                "REDIS_SOCKET_TYPE",
            ),
            (
                vec![("GRPC_SERVER_USE_TLS", "true")],
                "GRPC_SERVER_TLS_CERT",
            ),
        ] {
            let e = from_vars(&env(&pairs)).expect_err(name).to_string();
            assert!(e.starts_with(name), "{name}: {e}");
        }
        // A value clap refuses is reported too.
        let e = from_vars(&env(&[("NEAR_LIMIT_RATIO", "2")])).expect_err("ratio > 1");
        assert!(e.to_string().contains("near-limit-ratio"), "{e}");
    }

    #[test]
    fn redis_auth_tls_and_cluster() {
        let f = ok(&[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "a:1,b:2"),
            ("REDIS_TYPE", "CLUSTER"),
            ("REDIS_AUTH", "user:p@ss"),
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CACERT", "/ca.pem"),
        ]);
        assert_eq!(
            f.args.redis_cluster_url,
            vec!["rediss://user:p%40ss@a:1", "rediss://user:p%40ss@b:2"]
        );
        assert_eq!(f.args.redis_ca_file.as_deref(), Some(Path::new("/ca.pem")));
        let single = ok(&[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "r:6379"),
            ("REDIS_AUTH", "secret"),
        ]);
        assert_eq!(
            single.args.redis_url.as_deref(),
            Some("redis://:secret@r:6379")
        );
    }

    #[test]
    fn force_start_waits_when_told_to_be_healthy_only_with_a_configuration() {
        let base = [
            ("CONFIG_TYPE", "GRPC_XDS_SOTW"),
            ("FORCE_START_WITHOUT_INITIAL_CONFIG", "true"),
        ];
        assert!(ok(&base).args.force_start_without_initial_config);
        let mut waiting = base.to_vec();
        waiting.push(("HEALTHY_WITH_AT_LEAST_ONE_CONFIG_LOADED", "true"));
        assert!(!ok(&waiting).args.force_start_without_initial_config);
        assert!(
            !ok(&[("CONFIG_TYPE", "GRPC_XDS_SOTW")])
                .args
                .force_start_without_initial_config
        );
    }

    #[test]
    fn prometheus_on_the_admin_address_is_the_admin_ports_metrics() {
        let f = ok(&[
            ("USE_PROMETHEUS", "true"),
            ("PROMETHEUS_ADDR", "0.0.0.0:8080"),
        ]);
        assert!(f.args.metrics_addr.is_none());
        let f = ok(&[("USE_PROMETHEUS", "true"), ("PROMETHEUS_PATH", "/stats")]);
        assert_eq!(f.args.metrics_addr.map(|a| a.port()), Some(9090));
        assert_eq!(f.args.metrics_path, "/stats");
        assert!(
            ok(&[]).args.metrics_addr.is_none(),
            "USE_PROMETHEUS defaults to false"
        );
    }

    #[test]
    fn the_name_decides() {
        assert!(invoked_as_ratelimit(Some(&OsString::from(
            "/bin/ratelimit"
        ))));
        assert!(invoked_as_ratelimit(Some(&OsString::from("ratelimit"))));
        assert!(!invoked_as_ratelimit(Some(&OsString::from(
            "/usr/bin/ironclad-rls"
        ))));
        assert!(!invoked_as_ratelimit(None));
    }

    #[test]
    fn quota_mode_and_dynamic_metadata_are_their_flags() {
        let f = ok(&[("QUOTA_MODE", "true"), ("RESPONSE_DYNAMIC_METADATA", "1")]);
        assert!(f.args.quota_mode && f.args.response_dynamic_metadata);
        assert!(f.warnings.iter().all(|w| !w.contains("QUOTA_MODE")));
        let off = ok(&[("QUOTA_MODE", "false")]);
        assert!(!off.args.quota_mode && !off.args.response_dynamic_metadata);
        let e = from_vars(&env(&[("QUOTA_MODE", "on")])).expect_err("not a Go bool");
        assert!(e.to_string().starts_with("QUOTA_MODE"), "{e}");
    }

    fn sentinel_env(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut pairs = vec![
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_TYPE", "sentinel"),
            ("REDIS_URL", "mymaster, s1:26379 ,s2:26380"),
        ];
        pairs.extend_from_slice(extra);
        pairs
    }

    #[test]
    fn redis_sentinel_takes_the_references_url_and_both_passwords() {
        let f = ok(&sentinel_env(&[
            ("REDIS_SENTINEL_AUTH", "s3cret"),
            ("REDIS_AUTH", "master-pw"),
        ]));
        let t = f.args.redis_sentinel.as_deref().expect("--redis-sentinel");
        assert_eq!(t.master, "mymaster");
        // The sentinels' password rides in their URLs, the master's beside them.
        assert_eq!(
            t.sentinels,
            vec!["redis://:s3cret@s1:26379", "redis://:s3cret@s2:26380"]
        );
        assert_eq!(
            f.args.redis_password,
            Some(InProcessSecret("master-pw".into()))
        );
        assert!(f.args.redis_url.is_none() && f.args.redis_cluster_url.is_empty());
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        assert!(
            !format!("{:?}", f.args.redis_password).contains("master-pw"),
            "Debug hides the password"
        );

        // TLS to the sentinels (and so to the master), a user for the sentinels.
        let tls = ok(&sentinel_env(&[
            ("REDIS_TLS", "true"),
            ("REDIS_TLS_CACERT", "/ca.pem"),
            ("REDIS_SENTINEL_AUTH", "ops:pw"),
        ]));
        let t = tls
            .args
            .redis_sentinel
            .as_deref()
            .expect("--redis-sentinel");
        assert_eq!(
            t.sentinels,
            vec!["rediss://ops:pw@s1:26379", "rediss://ops:pw@s2:26380"]
        );
        assert_eq!(
            tls.args.redis_ca_file.as_deref(),
            Some(Path::new("/ca.pem"))
        );
        assert!(tls.args.redis_password.is_none());

        // Without REDIS_TYPE=sentinel the sentinels' password is unused, and said to be.
        let single = ok(&[
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "r:6379"),
            ("REDIS_SENTINEL_AUTH", "s3cret"),
        ]);
        assert_eq!(single.args.redis_url.as_deref(), Some("redis://r:6379"));
        assert_eq!(single.warnings.len(), 1, "{:?}", single.warnings);
        assert!(single.warnings[0].starts_with("REDIS_SENTINEL_AUTH is set but unused"));
        assert!(!single.warnings[0].contains("s3cret"));
    }

    #[test]
    fn a_bad_sentinel_environment_names_its_variable() {
        for (url, auth, name) in [
            ("s1:26379", "", "REDIS_URL"),
            ("mymaster", "", "REDIS_URL"),
            ("mymaster,", "", "REDIS_URL"),
            ("mymaster,redis://s1:26379", "", "REDIS_URL"),
            ("mymaster,s1:26379", "user:pw", "REDIS_AUTH"),
        ] {
            let mut pairs = vec![
                ("REDIS_SOCKET_TYPE", "tcp"),
                ("REDIS_TYPE", "SENTINEL"),
                ("REDIS_URL", url),
            ];
            if !auth.is_empty() {
                pairs.push(("REDIS_AUTH", auth));
            }
            let e = from_vars(&env(&pairs)).expect_err(url).to_string();
            assert!(e.starts_with(name), "{url}: {e}");
            assert!(!e.contains("pw\""), "no password in the message: {e}");
        }
    }

    #[test]
    fn tracing_takes_the_references_defaults() {
        let f = ok(&[
            ("TRACING_ENABLED", "true"),
            ("REDIS_SOCKET_TYPE", "tcp"),
            ("REDIS_URL", "r:6379"),
        ]);
        let t = &f.args.tracing;
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("http://localhost:4318/v1/traces")
        );
        assert_eq!(t.otlp_protocol, OtlpProtocol::Http);
        assert_eq!(t.trace_service_name, "RateLimit");
        assert!((t.trace_sampling_rate - 1.0).abs() < f64::EPSILON);
        assert!(f.warnings.is_empty(), "{:?}", f.warnings);
        // Off by default; the other TRACING_* variables then change nothing, as there.
        let off = ok(&[
            ("TRACING_SERVICE_NAME", "x"),
            ("TRACING_SAMPLING_RATE", "0.1"),
        ]);
        assert!(off.args.tracing.otlp_endpoint.is_none());
        let grpc = ok(&[
            ("TRACING_ENABLED", "true"),
            ("TRACING_EXPORTER_PROTOCOL", "grpc"),
        ]);
        assert_eq!(
            grpc.args.tracing.otlp_endpoint.as_deref(),
            Some("http://localhost:4317")
        );
        assert_eq!(grpc.args.tracing.otlp_protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn tracing_variables_map_to_the_trace_flags() {
        let f = ok(&[
            ("TRACING_ENABLED", "true"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector:4318/base/",
            ),
            ("TRACING_SERVICE_NAME", "edge-rl"),
            ("TRACING_SAMPLING_RATE", "0.25"),
            ("TRACING_EXPORTER_PROTOCOL", ""),
        ]);
        let t = &f.args.tracing;
        // The general endpoint is a base: OTLP/HTTP posts under it.
        assert_eq!(
            t.otlp_endpoint.as_deref(),
            Some("https://collector:4318/base/v1/traces")
        );
        assert_eq!(t.otlp_protocol, OtlpProtocol::Http, "empty is HTTP");
        assert_eq!(t.trace_service_name, "edge-rl");
        assert!((t.trace_sampling_rate - 0.25).abs() < f64::EPSILON);
        // The traces endpoint is the URL itself, and wins over the general one.
        let traces = ok(&[
            ("TRACING_ENABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/custom"),
        ]);
        assert_eq!(
            traces.args.tracing.otlp_endpoint.as_deref(),
            Some("http://c:4318/custom")
        );
        // gRPC has no path: the general endpoint is used as it is.
        let grpc = ok(&[
            ("TRACING_ENABLED", "true"),
            ("TRACING_EXPORTER_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ]);
        assert_eq!(
            grpc.args.tracing.otlp_endpoint.as_deref(),
            Some("http://c:4317")
        );
        // Go's ratio sampler: from 1 up everything, from 0 down nothing.
        for (raw, rate) in [("5", 1.0), ("-1", 0.0), ("0", 0.0)] {
            let f = ok(&[("TRACING_ENABLED", "true"), ("TRACING_SAMPLING_RATE", raw)]);
            assert!((f.args.tracing.trace_sampling_rate - rate).abs() < f64::EPSILON);
        }
    }

    #[test]
    fn bad_tracing_values_name_their_variable() {
        for (name, value) in [
            ("TRACING_EXPORTER_PROTOCOL", "zipkin"),
            ("TRACING_SAMPLING_RATE", "half"),
            ("TRACING_SAMPLING_RATE", "NaN"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "grpc://c:4317"),
        ] {
            let e = from_vars(&env(&[("TRACING_ENABLED", "true"), (name, value)]))
                .expect_err(name)
                .to_string();
            assert!(e.starts_with(name), "{name}={value}: {e}");
        }
    }

    #[test]
    fn only_the_references_variables_are_read() {
        assert!(is_reference_variable("PORT"));
        assert!(is_reference_variable("MEMCACHE_SRV"));
        assert!(is_reference_variable("OTEL_SERVICE_NAME"));
        assert!(is_reference_variable("REDIS_SENTINEL_AUTH"));
        assert!(is_reference_variable("TRACING_SAMPLING_RATE"));
        assert!(!is_reference_variable("PATH"));
        assert!(!is_reference_variable("RLS_CONFIG"));
    }
}
