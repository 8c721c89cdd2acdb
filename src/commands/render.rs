//! `render envoy|istio`: gateway configuration that sends the descriptors the limits files
//! expect (`docs/gateway.md`). The flags are parsed and checked here, then converted
//! into `render`'s plain options; the model itself knows nothing of the command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config;
use crate::render::{self, HostPort};

use super::parse;

/// `render` targets.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Target {
    /// A complete Envoy bootstrap: listener, consumer filter, rate limit filter, route
    /// actions, RLS cluster (HTTP/2) and upstream clusters.
    Envoy(EnvoyArgs),
    /// Istio manifests for an ingress gateway: EnvoyFilter (filters, route actions, RLS
    /// cluster), RequestAuthentication when tokens are verified, and the RLS Service.
    Istio(IstioArgs),
}

/// Flags both `render` targets take.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Limits files or directories, as for `serve`.
    #[arg(long = "config", value_delimiter = ',', required = true)]
    pub config: Vec<PathBuf>,

    /// The endpoint-format domain to render, when the files hold several.
    #[arg(long)]
    pub domain: Option<String>,

    /// How long the gateway waits for the RLS before `--failure-mode-deny` decides.
    #[arg(long, default_value = "20ms", value_parser = parse::duration)]
    pub timeout: Duration,

    /// Refuse requests (HTTP 500) when the RLS fails or is too slow. Without it they pass
    /// unlimited.
    #[arg(long)]
    pub failure_mode_deny: bool,

    /// Verify Bearer tokens against this JWKS (jwt_authn / RequestAuthentication) and take
    /// the consumer from the verified `azp`; a token that fails verification gets 401.
    /// The recommended mode. Implies `--jwt verify`.
    #[arg(long, value_parser = parse_jwks_uri)]
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
    pub consumer_sources: Vec<SourceArg>,

    /// Largest `application/x-www-form-urlencoded` body read for `client_id`; larger or
    /// chunked bodies are not read (the request is not delayed or refused for it).
    #[arg(long, default_value_t = 16_384)]
    pub max_form_bytes: u32,
}

/// `--jwt` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JwtArg {
    /// Verified by the gateway against `--jwks-uri`.
    Verify,
    /// Decoded without verification.
    Decode,
    /// Not used for identification.
    Ignore,
}

/// `--consumer-sources` values: `render::Source` as the command line spells it, so the
/// render model stays free of clap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceArg {
    /// The user of HTTP Basic credentials.
    Basic,
    /// The `client_id` query parameter.
    Query,
    /// `client_id` in a form body.
    Form,
    /// The `azp` claim of a Bearer JWT.
    Jwt,
}

impl From<SourceArg> for render::Source {
    fn from(s: SourceArg) -> Self {
        match s {
            SourceArg::Basic => render::Source::Basic,
            SourceArg::Query => render::Source::Query,
            SourceArg::Form => render::Source::Form,
            SourceArg::Jwt => render::Source::Jwt,
        }
    }
}

/// `render envoy` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EnvoyArgs {
    /// Flags both targets take.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// The ironclad-rls gRPC address, `host:port`.
    #[arg(long, default_value = "127.0.0.1:8081", value_parser = HostPort::parse)]
    pub rls_addr: HostPort,

    /// The gateway's HTTP listener.
    #[arg(long, default_value = "0.0.0.0:10000")]
    pub listen: SocketAddr,

    /// Envoy's admin listener (stats, config dump); none when absent.
    #[arg(long)]
    pub envoy_admin: Option<SocketAddr>,

    /// Where an endpoint's traffic goes: `SHORTNAME=HOST:PORT` (repeatable), instead of the
    /// endpoint's `endpoint` field.
    #[arg(long = "upstream", value_parser = parse_upstream)]
    pub upstreams: Vec<(String, HostPort)>,
    /// Put Envoy's HTTP response cache before the rate limit filter: answers the upstream
    /// marks cacheable are served again without spending quota (for egress to an API).
    #[arg(long)]
    pub response_cache: bool,
}

/// `render istio` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct IstioArgs {
    /// Flags both targets take.
    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// The RLS Service address as the gateway resolves it, `host:port`. The Keycloak.SE
    /// guide's name is the default.
    #[arg(
        long,
        default_value = "rate-limiter-headless-service.ironclad-rls.svc.cluster.local:8081",
        value_parser = HostPort::parse
    )]
    pub rls_addr: HostPort,

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

fn parse_upstream(s: &str) -> Result<(String, HostPort), String> {
    let (name, address) = parse_label(s)?;
    Ok((name, HostPort::parse(&address)?))
}

/// A JWKS URL for `--jwks-uri`: http or https with a host, since the rendered cluster that
/// fetches it needs one.
fn parse_jwks_uri(s: &str) -> Result<url::Url, String> {
    let uri = url::Url::parse(s).map_err(|e| format!("{e}"))?;
    if !matches!(uri.scheme(), "http" | "https") || uri.host_str().is_none() {
        return Err("expected an http:// or https:// URL".into());
    }
    Ok(uri)
}

/// Prints gateway configuration for the loaded limits. Exit 1 when the limits do not load or
/// cannot be rendered.
pub fn run(target: &Target) -> ExitCode {
    let gateway_args = match target {
        Target::Envoy(a) => &a.gateway,
        Target::Istio(a) => &a.gateway,
    };
    let loaded = match config::load_paths(&gateway_args.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            return ExitCode::FAILURE;
        }
    };
    let result = match target {
        Target::Envoy(a) => a
            .options()
            .inspect(|o| warn_if_unverified(&o.gateway))
            .and_then(|o| render::envoy::render(&loaded.config, &o)),
        Target::Istio(a) => a
            .options()
            .inspect(|o| warn_if_unverified(&o.gateway))
            .and_then(|o| render::istio::render(&loaded.config, &o)),
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Decoded tokens are the Keycloak.SE guide's behaviour and the default without
/// `--jwks-uri`, so say once, on stderr, what that costs.
fn warn_if_unverified(options: &render::GatewayOptions) {
    if options.jwt == render::JwtMode::Decode {
        eprintln!(
            "warning: Bearer tokens will be decoded without verification, so a client can \
             choose its consumer id; pass --jwks-uri to verify them (see docs/gateway.md)"
        );
    }
}

impl EnvoyArgs {
    /// The render model's options.
    pub fn options(&self) -> Result<render::envoy::EnvoyOptions, render::RenderError> {
        Ok(render::envoy::EnvoyOptions {
            gateway: self.gateway.options(&self.rls_addr)?,
            listen: self.listen,
            admin: self.envoy_admin,
            upstreams: self.upstreams.clone(),
            response_cache: self.response_cache,
        })
    }
}

impl IstioArgs {
    /// The render model's options.
    pub fn options(&self) -> Result<render::istio::IstioOptions, render::RenderError> {
        Ok(render::istio::IstioOptions {
            gateway: self.gateway.options(&self.rls_addr)?,
            namespace: self.namespace.clone(),
            gateway_selector: self.gateway_selector.clone(),
            hosts: self.hosts.clone(),
            rls_selector: (!self.no_service).then(|| self.rls_selector.clone()),
        })
    }
}

impl GatewayArgs {
    /// The options both targets share; `rls_addr` is each target's own flag (their defaults
    /// differ). Refuses the flag combinations that would silently do nothing.
    pub fn options(
        &self,
        rls_addr: &HostPort,
    ) -> Result<render::GatewayOptions, render::RenderError> {
        let refuse = |message: &str| Err(render::RenderError(message.to_owned()));
        let provider = self.jwks_uri.clone().map(|jwks_uri| render::JwtProvider {
            jwks_uri,
            issuer: self.jwt_issuer.clone(),
            audiences: self.jwt_audiences.clone(),
        });
        let jwt_used = self.consumer_sources.contains(&SourceArg::Jwt);
        if !jwt_used && (provider.is_some() || self.jwt.is_some_and(|j| j != JwtArg::Ignore)) {
            return refuse(
                "--consumer-sources leaves out jwt, so --jwt and --jwks-uri have nothing to do",
            );
        }
        let jwt = match (self.jwt, provider) {
            (_, None) if !jwt_used => render::JwtMode::Ignore,
            (None | Some(JwtArg::Verify), Some(p)) => render::JwtMode::Verify(p),
            (Some(JwtArg::Verify), None) => {
                return refuse("--jwt verify needs --jwks-uri (and, for Istio, --jwt-issuer)");
            }
            (Some(JwtArg::Decode | JwtArg::Ignore), Some(_)) => {
                return refuse("--jwks-uri is only used with --jwt verify");
            }
            (None | Some(JwtArg::Decode), None) => render::JwtMode::Decode,
            (Some(JwtArg::Ignore), None) => render::JwtMode::Ignore,
        };
        Ok(render::GatewayOptions {
            sources: self.consumer_sources.iter().map(|&s| s.into()).collect(),
            domain: self.domain.clone(),
            rls_addr: rls_addr.clone(),
            timeout: self.timeout,
            failure_mode_deny: self.failure_mode_deny,
            jwt,
            max_form_bytes: self.max_form_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, ValueEnum};

    use super::*;
    use crate::settings::{Cli, Command};

    fn envoy(args: &[&str]) -> Result<EnvoyArgs, clap::Error> {
        let cli = Cli::try_parse_from(
            [
                &["ironclad-rls", "render", "envoy", "--config", "x.yaml"],
                args,
            ]
            .concat(),
        )?;
        match cli.command {
            Command::Render(Target::Envoy(a)) => Ok(a),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn istio(args: &[&str]) -> IstioArgs {
        let cli = Cli::try_parse_from(
            [
                &["ironclad-rls", "render", "istio", "--config", "x.yaml"],
                args,
            ]
            .concat(),
        )
        .unwrap();
        match cli.command {
            Command::Render(Target::Istio(a)) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn jwt(args: &[&str]) -> Result<render::JwtMode, String> {
        let options = envoy(args).map_err(|e| e.to_string())?.options();
        options.map(|o| o.gateway.jwt).map_err(|e| e.0)
    }

    #[test]
    fn every_source_flag_value_is_a_render_source_in_the_same_order() {
        let converted: Vec<render::Source> = SourceArg::value_variants()
            .iter()
            .map(|&s| s.into())
            .collect();
        assert_eq!(converted, render::Source::ALL);
        let defaults = envoy(&[]).unwrap().options().unwrap();
        assert_eq!(defaults.gateway.sources, render::Source::ALL);
    }

    #[test]
    fn jwt_mode_follows_the_flags() {
        let verify = jwt(&[
            "--jwks-uri",
            "https://idp.example/certs",
            "--jwt-issuer",
            "i",
        ]);
        let Ok(render::JwtMode::Verify(p)) = verify else {
            panic!("{verify:?}")
        };
        assert_eq!(p.jwks_uri.as_str(), "https://idp.example/certs");
        assert_eq!(p.issuer.as_deref(), Some("i"));
        assert_eq!(jwt(&[]), Ok(render::JwtMode::Decode), "the guide's default");
        assert_eq!(jwt(&["--jwt", "ignore"]), Ok(render::JwtMode::Ignore));
        assert_eq!(
            jwt(&["--consumer-sources", "basic,query"]),
            Ok(render::JwtMode::Ignore),
            "no jwt source: tokens are not looked at"
        );
    }

    #[test]
    fn jwt_flags_that_would_do_nothing_are_refused() {
        for (args, says) in [
            (&["--jwt", "verify"][..], "needs --jwks-uri"),
            (
                &["--jwt", "decode", "--jwks-uri", "http://idp/certs"],
                "only used with --jwt verify",
            ),
            (
                &["--consumer-sources", "basic", "--jwt", "decode"],
                "leaves out jwt",
            ),
            (
                &["--consumer-sources", "basic", "--jwks-uri", "http://idp/c"],
                "leaves out jwt",
            ),
        ] {
            let e = jwt(args).unwrap_err();
            assert!(e.contains(says), "{args:?}: {e}");
        }
        for bad in ["ftp://idp/certs", "not a url", "file:///certs"] {
            let e = jwt(&["--jwks-uri", bad]).unwrap_err();
            assert!(e.contains("--jwks-uri"), "{bad}: {e}");
        }
    }

    #[test]
    fn each_target_converts_its_own_flags() {
        let e = envoy(&[
            "--rls-addr",
            "[::1]:9000",
            "--upstream",
            "a=up:80",
            "--envoy-admin",
            "127.0.0.1:9901",
            "--response-cache",
            "--timeout",
            "50ms",
        ])
        .unwrap()
        .options()
        .unwrap();
        assert_eq!(e.gateway.rls_addr.to_string(), "[::1]:9000");
        assert_eq!(e.gateway.timeout, Duration::from_millis(50));
        assert_eq!(e.upstreams[0].1.to_string(), "up:80");
        assert_eq!(e.listen.to_string(), "0.0.0.0:10000");
        assert!(e.response_cache && e.admin.is_some());
        assert!(envoy(&["--upstream", "a=noport"]).is_err());

        let i = istio(&["--no-service", "--host", "a=api.example"])
            .options()
            .unwrap();
        assert_eq!(
            i.gateway.rls_addr.to_string(),
            "rate-limiter-headless-service.ironclad-rls.svc.cluster.local:8081"
        );
        assert_eq!(i.rls_selector, None);
        assert_eq!(i.hosts, [("a".to_owned(), "api.example".to_owned())]);
        assert_eq!(
            i.gateway_selector,
            [("istio".to_owned(), "ingressgateway".to_owned())]
        );
        let with_service = istio(&[]).options().unwrap();
        assert_eq!(
            with_service.rls_selector,
            Some(vec![(
                "app.kubernetes.io/name".to_owned(),
                "ironclad-rls".to_owned()
            )])
        );
    }

    #[test]
    fn labels_need_a_key_and_a_value() {
        assert_eq!(parse_label("k=v=w"), Ok(("k".into(), "v=w".into())));
        for bad in ["k", "=v", "k="] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }
}
