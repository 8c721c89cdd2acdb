//! `render istio`: the manifests that make an Istio ingress gateway send ironclad-rls the
//! same descriptors as `render envoy`'s bootstrap does.
//!
//! Istio builds the gateway's routes from VirtualServices, which this command cannot see, so
//! the endpoint entry is chosen by the request's Host (`:authority`) rather than by the
//! virtual host: one `rate_limits` item per endpoint, merged into every gateway virtual
//! host, each producing a descriptor only when its host matches.

use serde_json::{Map, Value, json};

use super::{
    GatewayOptions, HostPort, JwtMode, JwtProvider, RLS_CLUSTER, RenderError, cluster, header,
    known_shortnames, lua_filter, rate_limit, ratelimit_filter, select_domain, to_yaml,
};
use crate::config::Config;

/// `render istio` options.
#[derive(Debug, Clone)]
pub struct IstioOptions {
    /// Shared with `render envoy`.
    pub gateway: GatewayOptions,
    /// Namespace of the gateway workload (EnvoyFilter and RequestAuthentication go there).
    pub namespace: String,
    /// Labels that select the gateway pods.
    pub gateway_selector: Vec<(String, String)>,
    /// The Host clients use for an endpoint at the gateway, by shortname; default: the host
    /// of the endpoint's `endpoint`.
    pub hosts: Vec<(String, String)>,
    /// Labels of the ironclad-rls pods, for the Service; `None`: no Service is printed.
    pub rls_selector: Option<Vec<(String, String)>>,
}

/// The manifests as multi-document YAML.
pub fn render(config: &Config, options: &IstioOptions) -> Result<String, RenderError> {
    let domain = select_domain(config, options.gateway.domain.as_deref())?;
    let gateway = &options.gateway;
    known_shortnames(domain, "--host", &options.hosts)?;
    let mut rate_limits = Vec::new();
    let mut missing = Vec::new();
    for ep in &domain.endpoints {
        let given = options.hosts.iter().rev().find(|(s, _)| s == &ep.shortname);
        let host = match (given, &ep.endpoint) {
            (Some((_, h)), _) => h.clone(),
            (None, Some(text)) => match HostPort::parse(text) {
                Ok(hp) => hp.host,
                Err(e) => {
                    missing.push(format!("endpoint {}: `endpoint`: {e}", ep.shortname));
                    continue;
                }
            },
            (None, None) => {
                missing.push(format!(
                    "endpoint {} ({}:{}) has no `endpoint: host:port`; add one or pass --host {}=HOST",
                    ep.shortname, ep.origin.file, ep.origin.line, ep.shortname
                ));
                continue;
            }
        };
        rate_limits.push(rate_limit(json!({ "header_value_match": {
            "descriptor_key": "endpoint",
            "descriptor_value": ep.shortname,
            "headers": [{
                "name": ":authority",
                "string_match": { "safe_regex": { "regex": authority_regex(&host) } }
            }]
        } })));
    }
    if !missing.is_empty() {
        return Err(RenderError(missing.join("\n")));
    }

    // Istio's RequestAuthentication needs the issuer (it keys the verified payload by it).
    if let JwtMode::Verify(JwtProvider { issuer: None, .. }) = &gateway.jwt {
        return Err(RenderError(
            "Istio's RequestAuthentication needs the issuer: pass --jwt-issuer".into(),
        ));
    }

    let hcm = "envoy.filters.network.http_connection_manager";
    let before_router = json!({
        "context": "GATEWAY",
        "listener": { "filterChain": { "filter": {
            "name": hcm,
            "subFilter": { "name": "envoy.filters.http.router" }
        } } }
    });
    let patches = json!([
        {
            "applyTo": "NETWORK_FILTER",
            "match": { "context": "GATEWAY", "listener": { "filterChain": { "filter": { "name": hcm } } } },
            "patch": { "operation": "MERGE", "value": {
                "name": hcm,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "normalize_path": true,
                    "merge_slashes": true,
                    // As `render envoy`: escaped slashes are refused, not passed on
                    // (docs/gateway.md). Istio's own `pathNormalization` does not cover them.
                    "path_with_escaped_slashes_action": "REJECT_REQUEST"
                }
            } }
        },
        // Two INSERT_BEFORE router patches, in this order, leave Lua before the rate limit
        // filter: the consumer header exists when the descriptor is built.
        {
            "applyTo": "HTTP_FILTER",
            "match": before_router,
            "patch": { "operation": "INSERT_BEFORE", "value": lua_filter(gateway) }
        },
        {
            "applyTo": "HTTP_FILTER",
            "match": before_router,
            "patch": { "operation": "INSERT_BEFORE", "value": ratelimit_filter(&domain.domain, gateway) }
        },
        {
            "applyTo": "CLUSTER",
            "match": { "context": "GATEWAY" },
            "patch": { "operation": "ADD", "value": cluster(RLS_CLUSTER, &gateway.rls_addr, true) }
        },
        {
            "applyTo": "VIRTUAL_HOST",
            "match": { "context": "GATEWAY" },
            "patch": { "operation": "MERGE", "value": { "rate_limits": rate_limits } }
        }
    ]);
    let selector = labels(&options.gateway_selector);
    let mut documents = vec![json!({
        "apiVersion": "networking.istio.io/v1alpha3",
        "kind": "EnvoyFilter",
        "metadata": { "name": "ironclad-rls", "namespace": options.namespace },
        "spec": {
            "workloadSelector": { "labels": selector },
            "configPatches": patches
        }
    })];
    if let JwtMode::Verify(p) = &gateway.jwt {
        let mut rule = json!({
            "issuer": p.issuer,
            "jwksUri": p.jwks_uri.as_str(),
            "forwardOriginalToken": true
        });
        if !p.audiences.is_empty() {
            rule["audiences"] = json!(p.audiences);
        }
        documents.push(json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "RequestAuthentication",
            "metadata": { "name": "ironclad-rls-consumer-jwt", "namespace": options.namespace },
            "spec": { "selector": { "matchLabels": selector }, "jwtRules": [rule] }
        }));
    }
    if let Some(rls_selector) = &options.rls_selector {
        documents.push(service(&gateway.rls_addr, rls_selector)?);
    }
    to_yaml(&header("istio", domain, gateway), &documents)
}

/// The headless Service for the RLS. Istio decides a port's protocol by its name, and the
/// RLS must be reached over HTTP/2, hence `grpc-`.
fn service(address: &HostPort, selector: &[(String, String)]) -> Result<Value, RenderError> {
    let mut parts = address.host.split('.');
    let (Some(name), Some(namespace), Some("svc")) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(RenderError(format!(
            "--rls-addr {address} is not NAME.NAMESPACE.svc[.cluster.local]:PORT, so no Service \
             can be derived from it; pass such an address or --no-service"
        )));
    };
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            // Headless: each gateway spreads its HTTP/2 calls over every replica instead of
            // pinning one connection to one pod behind a virtual IP.
            "clusterIP": "None",
            "selector": labels(selector),
            "ports": [{ "name": "grpc-rls", "port": address.port, "targetPort": address.port, "protocol": "TCP" }]
        }
    }))
}

fn labels(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

/// An RE2 pattern for `host` or `host:port` in `:authority`, any letter case.
fn authority_regex(host: &str) -> String {
    let mut escaped = String::new();
    for c in host.chars() {
        if !c.is_ascii_alphanumeric() && c != '-' {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("(?i)^{escaped}(:[0-9]+)?$")
}
