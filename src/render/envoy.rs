//! `render envoy`: a complete Envoy bootstrap (static resources) that rate limits the
//! configured endpoints through ironclad-rls.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{Value, json};

use super::{
    GatewayOptions, HostPort, JwtMode, RLS_CLUSTER, RenderError, cluster, header, jwks_cluster,
    known_shortnames, lua_filter, rate_limit, ratelimit_filter, select_domain, to_yaml,
};
use crate::config::Config;

/// The key under which the rendered `jwt_authn` provider puts the verified payload.
const JWT_PAYLOAD_KEY: &str = "jwt_payload";

const JWT_PROVIDER: &str = "identity_provider";
const JWKS_CLUSTER: &str = "jwks";
/// With `--response-cache`: the internal listener behind the cache, and the cluster to it.
const LIMITER_LISTENER: &str = "limiter";
const CACHE_TIER_CLUSTER: &str = "limiter_tier";

/// `render envoy` options.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Shared with `render istio`.
    pub gateway: GatewayOptions,
    /// The gateway's HTTP listener.
    pub listen: SocketAddr,
    /// Envoy's admin listener, if any.
    pub admin: Option<SocketAddr>,
    /// Upstream address per endpoint shortname, overriding the endpoint's `endpoint`.
    pub upstreams: Vec<(String, HostPort)>,
    /// Put Envoy's HTTP cache in front of everything else.
    pub response_cache: bool,
}

/// The bootstrap as YAML.
pub fn render(config: &Config, options: &EnvoyOptions) -> Result<String, RenderError> {
    let domain = select_domain(config, options.gateway.domain.as_deref())?;
    let gateway = &options.gateway;

    known_shortnames(domain, "--upstream", &options.upstreams)?;
    // Every endpoint needs somewhere to send its traffic; list every one that has none.
    // Clients address an endpoint by the name in its `endpoint` field (the Host header Envoy
    // routes on); `--upstream` only changes where Envoy forwards it.
    let mut upstreams = Vec::new();
    let mut missing = Vec::new();
    for ep in &domain.endpoints {
        let named = match ep.endpoint.as_deref().map(HostPort::parse) {
            Some(Err(e)) => {
                missing.push(format!(
                    "endpoint {} ({}:{}): `endpoint`: {e}",
                    ep.shortname, ep.origin.file, ep.origin.line
                ));
                continue;
            }
            named => named.and_then(Result::ok),
        };
        let given = options
            .upstreams
            .iter()
            .rev()
            .find(|(s, _)| s == &ep.shortname);
        match (given, named) {
            (Some((_, address)), named) => {
                let host = named.map_or_else(|| address.host.clone(), |n| n.host);
                upstreams.push((ep, host, address.clone()));
            }
            (None, Some(address)) => upstreams.push((ep, address.host.clone(), address)),
            (None, None) => missing.push(format!(
                "endpoint {} ({}:{}) has no `endpoint: host:port`; add one or pass --upstream {}=HOST:PORT",
                ep.shortname, ep.origin.file, ep.origin.line, ep.shortname
            )),
        }
    }
    if !missing.is_empty() {
        return Err(RenderError(missing.join("\n")));
    }
    if upstreams.is_empty() {
        return Err(RenderError(format!(
            "domain {:?} has no endpoints",
            domain.domain
        )));
    }

    // Envoy picks the virtual host by the Host header. One endpoint takes every host; with
    // several, each answers for its own host name.
    let single = upstreams.len() == 1;
    let mut hosts: BTreeMap<&str, &str> = BTreeMap::new();
    let mut virtual_hosts = Vec::new();
    let mut clusters = vec![cluster(RLS_CLUSTER, &gateway.rls_addr, true)];
    for (ep, host, address) in &upstreams {
        if let Some(other) = hosts.insert(host.as_str(), ep.shortname.as_str()) {
            return Err(RenderError(format!(
                "endpoints {other} and {} both have host {host}: Envoy routes by Host, so \
                 each endpoint needs its own",
                ep.shortname
            )));
        }
        let cluster_name = format!("upstream_{}", ep.shortname);
        let domains = if single {
            json!(["*"])
        } else {
            json!([host, format!("{host}:*")])
        };
        virtual_hosts.push(json!({
            "name": ep.shortname,
            "domains": domains,
            "routes": [{
                "match": { "prefix": "/" },
                "route": { "cluster": cluster_name }
            }],
            "rate_limits": [rate_limit(json!({ "generic_key": {
                "descriptor_key": "endpoint",
                "descriptor_value": ep.shortname
            } }))]
        }));
        clusters.push(cluster(&cluster_name, address, false));
    }

    let mut http_filters = Vec::new();
    if let JwtMode::Verify(provider) = &gateway.jwt {
        http_filters.push(jwt_authn_filter(provider));
        clusters.push(jwks_cluster(JWKS_CLUSTER, &provider.jwks_uri)?);
    }
    http_filters.push(lua_filter(gateway));
    http_filters.push(ratelimit_filter(&domain.domain, gateway));
    http_filters.push(router());

    let limiter_routes = json!({ "name": "limiter", "virtual_hosts": virtual_hosts });
    let mut bootstrap = if options.response_cache {
        // Envoy's cache filter fetches a miss through its own client, straight to the route's
        // cluster: filters after it never see the request. So the cache gets a tier of its
        // own in front of an internal listener that identifies, limits and forwards; a hit
        // never reaches that tier and spends no quota. Envoy does not store answers to
        // requests that carry `Authorization`.
        clusters.push(json!({
            "name": CACHE_TIER_CLUSTER,
            "load_assignment": {
                "cluster_name": CACHE_TIER_CLUSTER,
                "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": {
                    "envoy_internal_address": { "server_listener_name": LIMITER_LISTENER }
                } } }] }]
            }
        }));
        let cache_routes = json!({ "name": "cache", "virtual_hosts": [{
            "name": "cache",
            "domains": ["*"],
            "routes": [{ "match": { "prefix": "/" }, "route": { "cluster": CACHE_TIER_CLUSTER } }]
        }] });
        let cache_filters = json!([
            {
                "name": "envoy.filters.http.cache",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.cache.v3.CacheConfig",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.http.cache.simple_http_cache.v3.SimpleHttpCacheConfig"
                    }
                }
            },
            router()
        ]);
        json!({
            "bootstrap_extensions": [{
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"
                }
            }],
            "static_resources": {
                "listeners": [
                    {
                        "name": "ingress",
                        "address": socket_address(options.listen),
                        "filter_chains": [{ "filters": [hcm("ingress", cache_routes, cache_filters)] }]
                    },
                    {
                        "name": LIMITER_LISTENER,
                        "internal_listener": {},
                        "filter_chains": [{ "filters": [hcm(LIMITER_LISTENER, limiter_routes, json!(http_filters))] }]
                    }
                ],
                "clusters": clusters
            }
        })
    } else {
        json!({
            "static_resources": {
                "listeners": [{
                    "name": "ingress",
                    "address": socket_address(options.listen),
                    "filter_chains": [{ "filters": [hcm("ingress", limiter_routes, json!(http_filters))] }]
                }],
                "clusters": clusters
            }
        })
    };
    if let Some(admin) = options.admin {
        bootstrap["admin"] = json!({ "address": socket_address(admin) });
    }
    to_yaml(&header("envoy", domain, gateway), &[bootstrap])
}

/// An HTTP connection manager.
fn hcm(stat_prefix: &str, route_config: Value, http_filters: Value) -> Value {
    json!({
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": stat_prefix,
            // The path the RLS matches prefixes on must be the path the upstream serves:
            // `/auth//x/../y` may not slip past a limit on `/auth/y`.
            "normalize_path": true,
            "merge_slashes": true,
            // An escaped slash (`%2F`, `%5C`, either case) is refused with 400 rather than
            // passed on: a backend that decodes it would route a path that neither Envoy's
            // route match nor the `path` descriptor saw. Refusing, not unescaping and
            // forwarding, because it is Envoy's advice for API clients (they send normalised
            // paths), it never changes a request the backend then serves differently, and a
            // client that needs an escaped slash is told so at once. The RLS counts these
            // spellings as `/` anyway (docs/limits-format.md §3), for gateways not made here.
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "route_config": route_config,
            "http_filters": http_filters
        }
    })
}

fn router() -> Value {
    json!({
        "name": "envoy.filters.http.router",
        "typed_config": { "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }
    })
}

fn socket_address(addr: SocketAddr) -> Value {
    json!({ "socket_address": { "address": addr.ip().to_string(), "port_value": addr.port() } })
}

/// `jwt_authn`: a request without a token passes (it may identify itself otherwise or be
/// anonymous); a request with a token that fails verification is refused with 401.
fn jwt_authn_filter(provider: &super::JwtProvider) -> Value {
    let mut p = json!({
        "remote_jwks": {
            "http_uri": { "uri": provider.jwks_uri.as_str(), "cluster": JWKS_CLUSTER, "timeout": "5s" },
            "cache_duration": "300s",
            // Fetch the keys at start, so the first request does not wait for them.
            "async_fetch": {}
        },
        // The upstream (an identity server, an API) still needs the token.
        "forward": true,
        "payload_in_metadata": JWT_PAYLOAD_KEY
    });
    if let Some(issuer) = &provider.issuer {
        p["issuer"] = json!(issuer);
    }
    if !provider.audiences.is_empty() {
        p["audiences"] = json!(provider.audiences);
    }
    json!({
        "name": "envoy.filters.http.jwt_authn",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": { JWT_PROVIDER: p },
            "rules": [{
                "match": { "prefix": "/" },
                "requires": { "requires_any": { "requirements": [
                    { "provider_name": JWT_PROVIDER },
                    { "allow_missing": {} }
                ] } }
            }]
        }
    })
}
