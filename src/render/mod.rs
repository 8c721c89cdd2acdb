//! `render`: gateway configuration that sends ironclad-rls the descriptors of
//! docs/limits-format.md §3, for a plain Envoy ([`envoy`]) or an Istio ingress gateway
//! ([`istio`]).
//!
//! An adapter: it reads the validated [`crate::config`] model and builds Envoy's
//! configuration as JSON values, which [`to_yaml`] prints. Nothing here touches the network.
//! The pieces both targets share (the HTTP filters, the route actions, the RLS cluster) are
//! built once here, so an Istio gateway and a plain Envoy can never drift apart.

pub mod envoy;
pub mod istio;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Config, EndpointDomain};

/// The Lua filter's source; `ironclad-rls render` fills in its settings lines.
pub const CONSUMER_ID_LUA: &str = include_str!("consumer_id.lua");

/// The request header the Lua filter sets and the `consumer` action reads.
pub const CONSUMER_HEADER: &str = "synapse-consumerid";

/// The name of the RLS cluster in every rendered configuration.
pub const RLS_CLUSTER: &str = "ironclad_rls";

/// Where the `azp` claim of a Bearer JWT comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtMode {
    /// Envoy's `jwt_authn` (or Istio's RequestAuthentication) verifies the token against the
    /// issuer's JWKS: a bad token is refused with 401, a good one's payload is read.
    Verify(JwtProvider),
    /// The claim is read from the token without checking its signature (the Keycloak.SE
    /// guide's behaviour): anyone can choose their consumer id.
    Decode,
    /// Bearer tokens do not identify the consumer.
    Ignore,
}

/// The identity provider whose tokens `JwtMode::Verify` accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtProvider {
    /// The JWKS URL (`http://` or `https://`).
    pub jwks_uri: url::Url,
    /// The required `iss`; `None` accepts any issuer (Envoy only; Istio requires one).
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty accepts any.
    pub audiences: Vec<String>,
}

/// A place the Lua filter looks for the consumer id, in the order it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// The user of HTTP Basic credentials.
    Basic,
    /// The `client_id` query parameter.
    Query,
    /// `client_id` in a form body.
    Form,
    /// The `azp` claim of a Bearer JWT.
    Jwt,
}

impl Source {
    /// Every source, in the order the filter tries them.
    pub const ALL: [Source; 4] = [Source::Basic, Source::Query, Source::Form, Source::Jwt];

    fn name(self) -> &'static str {
        match self {
            Source::Basic => "basic",
            Source::Query => "query",
            Source::Form => "form",
            Source::Jwt => "jwt",
        }
    }
}

/// What both targets need.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// The sources of the consumer id that are used.
    pub sources: Vec<Source>,
    /// The RLS domain to render; `None` when the configuration has exactly one.
    pub domain: Option<String>,
    /// The RLS as `host:port`.
    pub rls_addr: HostPort,
    /// The rate limit filter's deadline for an RLS answer.
    pub timeout: Duration,
    /// Refuse requests (Envoy answers 500) when the RLS fails or is too slow; `false` lets
    /// them through.
    pub failure_mode_deny: bool,
    /// How Bearer tokens identify the consumer.
    pub jwt: JwtMode,
    /// Largest form body the Lua filter reads for `client_id`.
    pub max_form_bytes: u32,
}

/// A `host:port` pair (`[v6]:port` for IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address, without brackets.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl HostPort {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(s: &str) -> Result<HostPort, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("expected host:port, found {s:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = port
            .parse::<u16>()
            .map_err(|_| format!("bad port in {s:?}"))?;
        if host.is_empty() || port == 0 {
            return Err(format!("expected host:port, found {s:?}"));
        }
        Ok(HostPort {
            host: host.to_owned(),
            port,
        })
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a configuration cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError(pub String);

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RenderError {}

fn error<T>(message: impl Into<String>) -> Result<T, RenderError> {
    Err(RenderError(message.into()))
}

/// The endpoint-format domain to render. envoyproxy/ratelimit-format domains are not
/// rendered: their descriptors are whatever the operator's own actions send.
pub fn select_domain<'a>(
    config: &'a Config,
    wanted: Option<&str>,
) -> Result<&'a EndpointDomain, RenderError> {
    let names = || {
        config
            .domains
            .iter()
            .map(|d| d.domain.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(w) => match config.domains.iter().find(|d| d.domain == w) {
            Some(d) => Ok(d),
            None => error(format!(
                "no endpoint-format domain {w:?} in the configuration (it has: {})",
                names()
            )),
        },
        None => match config.domains.as_slice() {
            [one] => Ok(one),
            [] => error(
                "the configuration has no endpoint-format (kcse_rate_limits) domain to render",
            ),
            _ => error(format!(
                "the configuration has several domains ({}); choose one with --domain",
                names()
            )),
        },
    }
}

/// Refuses a per-endpoint flag (`flag SHORTNAME=...`) that names no endpoint of `domain`.
fn known_shortnames<T>(
    domain: &EndpointDomain,
    flag: &str,
    given: &[(String, T)],
) -> Result<(), RenderError> {
    match given
        .iter()
        .find(|(name, _)| !domain.endpoints.iter().any(|e| &e.shortname == name))
    {
        Some((name, _)) => error(format!(
            "{flag} names {name:?}, which is no endpoint shortname of domain {:?}",
            domain.domain
        )),
        None => Ok(()),
    }
}

/// The Lua filter with its settings lines filled in.
pub fn consumer_lua(sources: &[Source], jwt: &JwtMode, max_form_bytes: u32) -> String {
    let sources = Source::ALL
        .iter()
        .filter(|s| sources.contains(s))
        .map(|s| s.name())
        .collect::<Vec<_>>()
        .join(",");
    let mode = match jwt {
        JwtMode::Verify(_) => "verify",
        JwtMode::Decode => "decode",
        JwtMode::Ignore => "ignore",
    };
    let mut out = String::with_capacity(CONSUMER_ID_LUA.len() + 64);
    for line in CONSUMER_ID_LUA.lines() {
        // Each setting is one `local NAME = value -- comment` line; the value is replaced.
        let replaced = [
            ("local SOURCES = ", lua_string(&sources)),
            ("local JWT_MODE = ", lua_string(mode)),
            ("local MAX_FORM_BYTES = ", max_form_bytes.to_string()),
        ]
        .into_iter()
        .find(|(prefix, _)| line.starts_with(prefix))
        .map(|(prefix, value)| format!("{prefix}{value}"));
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A Lua string literal (control characters as Lua's decimal `\ddd` escapes).
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The Lua HTTP filter that sets `synapse-consumerid`.
pub fn lua_filter(options: &GatewayOptions) -> Value {
    json!({
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {
                "inline_string": consumer_lua(
                    &options.sources,
                    &options.jwt,
                    options.max_form_bytes,
                )
            }
        }
    })
}

/// The rate limit HTTP filter, calling [`RLS_CLUSTER`].
pub fn ratelimit_filter(domain: &str, options: &GatewayOptions) -> Value {
    json!({
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": domain,
            "timeout": duration(options.timeout),
            "failure_mode_deny": options.failure_mode_deny,
            // Envoy builds x-ratelimit-limit/-remaining/-reset and Retry-After from the
            // statuses ironclad-rls answers (the status closest to its limit).
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "enable_retry_after_header": true,
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": { "envoy_grpc": { "cluster_name": RLS_CLUSTER } }
            }
        }
    })
}

/// The `rate_limits` item that makes the descriptor `{endpoint, path, consumer?}`: the
/// `endpoint` entry comes from `endpoint_action`, the rest is the same everywhere.
pub fn rate_limit(endpoint_action: Value) -> Value {
    json!({
        "actions": [
            endpoint_action,
            { "request_headers": { "header_name": ":path", "descriptor_key": "path" } },
            // Anonymous requests have no header: skip the entry, keep the descriptor.
            { "request_headers": {
                "header_name": CONSUMER_HEADER,
                "descriptor_key": "consumer",
                "skip_if_absent": true
            } }
        ]
    })
}

/// A cluster of one `host:port`. The RLS cluster must speak HTTP/2: without it Envoy's
/// configuration still validates but every RLS call fails (docs/protocol.md §6).
pub fn cluster(name: &str, address: &HostPort, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": if address.is_ip() { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": { "socket_address": {
                "address": address.host, "port_value": address.port
            } } } }] }]
        }
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": { "http2_protocol_options": {} }
            }
        });
    }
    c
}

/// The cluster that serves the JWKS, with TLS (checked against the system's CAs) for https.
pub fn jwks_cluster(name: &str, uri: &url::Url) -> Result<Value, RenderError> {
    let host = match uri.host_str() {
        Some(h) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => return error(format!("--jwks-uri {uri} has no host")),
    };
    let port = uri.port_or_known_default().unwrap_or(443);
    let mut c = cluster(name, &HostPort { host, port }, false);
    if uri.scheme() == "https" {
        c["transport_socket"] = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": uri.host_str(),
                "common_tls_context": { "validation_context": {
                    "trusted_ca": { "filename": "/etc/ssl/certs/ca-certificates.crt" }
                } }
            }
        });
    }
    Ok(c)
}

/// Envoy's Duration form, `"0.020s"`.
pub fn duration(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// Prints documents as YAML, each after `---`, under a comment header.
pub fn to_yaml(header: &str, documents: &[Value]) -> Result<String, RenderError> {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str("# ");
        out.push_str(line);
        out.push('\n');
    }
    let mut options = serde_saphyr::SerializerOptions::default();
    // A folded (`>`) line would still mean the same, but the Lua script must read as the file
    // it comes from.
    options.min_fold_chars = usize::MAX;
    options.folded_wrap_chars = usize::MAX;
    for (i, doc) in documents.iter().enumerate() {
        if i > 0 || documents.len() > 1 {
            out.push_str("---\n");
        }
        serde_saphyr::to_fmt_writer_with_options(&mut out, doc, options.clone())
            .map_err(|e| RenderError(format!("cannot print YAML: {e}")))?;
    }
    Ok(out)
}

/// Lines every rendered file starts with (as `#` comments).
pub fn header(target: &str, domain: &EndpointDomain, options: &GatewayOptions) -> String {
    let sources = options
        .sources
        .iter()
        .map(|s| match s {
            Source::Basic => "the Basic user",
            Source::Query => "?client_id=",
            Source::Form => "a form body's client_id",
            Source::Jwt => "a Bearer JWT's azp",
        })
        .collect::<Vec<_>>()
        .join(", then ");
    let identity = match &options.jwt {
        JwtMode::Verify(p) => format!(
            "Bearer tokens are verified against {} and their azp identifies the consumer.",
            p.jwks_uri
        ),
        JwtMode::Decode => {
            "WARNING: Bearer tokens are NOT verified: anyone can choose a consumer id \
             (and a fresh quota) by minting a token. Pass --jwks-uri to verify them."
                .to_owned()
        }
        JwtMode::Ignore => "Bearer tokens do not identify the consumer.".to_owned(),
    };
    let mut h = format!(
        "Generated by `ironclad-rls render {target}` {} for domain {:?}.\n\
         Descriptor per request: endpoint (shortname), path (:path), consumer ({CONSUMER_HEADER}, \
         absent when anonymous).\n\
         Consumer from (in this order): {sources}.\n\
         {identity}\n\
         RLS at {} (HTTP/2), timeout {}, on RLS failure: {}.",
        env!("CARGO_PKG_VERSION"),
        domain.domain,
        options.rls_addr,
        duration(options.timeout),
        if options.failure_mode_deny {
            "deny"
        } else {
            "allow"
        },
    );
    if let Some(v) = &domain.envoy_version {
        h.push_str(&format!(
            "\nenvoyVersion {v:?} in the limits file; this output is written for Envoy 1.40."
        ));
    }
    h
}

#[cfg(test)]
mod tests;
