//! The one-shot commands (`validate`, `check`, `render`) and logging set-up; `serve` lives in `app`.

use std::fmt::Write as _;
use std::process::ExitCode;

use crate::config::{self, Config, DescriptorConfig, OverallLimit, RateLimitConfig, Severity};
use crate::grpc::convert;
use crate::proto::rate_limit_response;
use crate::proto::rate_limit_service_client::RateLimitServiceClient;
use crate::render;
use crate::settings::{
    CheckArgs, JwtArg, LogFormat, RenderGatewayArgs, RenderTarget, ValidateArgs,
};

/// Sets up `tracing` on stderr (stdout stays for command output): level from `RUST_LOG`,
/// default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// `validate`: exit 0 when the configuration loads (warnings allowed), 1 otherwise.
pub fn validate(args: &ValidateArgs) -> ExitCode {
    match config::load_paths(&args.paths) {
        Ok(loaded) => {
            print!("{}", describe(&loaded.config));
            for w in &loaded.warnings {
                eprintln!("{w}");
            }
            eprintln!(
                "valid: {} file(s), {} warning(s), sha256 {}",
                loaded.files.len(),
                loaded.warnings.len(),
                loaded.sha256
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            let errors = e
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!("invalid: {errors} error(s)");
            ExitCode::FAILURE
        }
    }
}

/// The effective rules, one line per counter kind, defaults applied.
pub fn describe(config: &Config) -> String {
    let mut out = String::new();
    for d in &config.descriptor_domains {
        let _ = writeln!(
            out,
            "domain {} (envoyproxy/ratelimit format, {})",
            d.domain, d.origin.file
        );
        describe_descriptors(&d.descriptors, 1, &mut out);
    }
    for d in &config.domains {
        let _ = writeln!(out, "domain {}", d.domain);
        for ep in &d.endpoints {
            let overall = match ep.overall_limit {
                OverallLimit::None => "none".to_owned(),
                OverallLimit::RejectAll => "0 (every request is rejected)".to_owned(),
                OverallLimit::Limit(n) => format!("{n}/{}", ep.counting.per(ep.unit)),
            };
            let _ = write!(
                out,
                "  endpoint {} ({}): overall {overall}",
                ep.shortname, ep.name
            );
            if ep.shadow_mode {
                out.push_str(", shadow mode");
            }
            if let Some(s) = ep.soft {
                let _ = write!(out, ", soft from {} every {}", s.value, s.step);
            }
            out.push('\n');
            for p in &ep.uri_prefixes {
                let anon = p.anon_value.map_or_else(
                    || "unlimited".to_owned(),
                    |a| format!("{a}/{} shared", p.counting.per(p.unit)),
                );
                let _ = writeln!(
                    out,
                    "    prefix {}: each consumer {}/{}, anonymous {anon}",
                    p.prefix,
                    p.value,
                    p.counting.per(p.unit)
                );
                for i in &p.invokers {
                    let per = i.counting.per(i.unit);
                    let _ = writeln!(out, "      client {}: {}/{per}", i.client, i.value);
                }
            }
        }
    }
    out
}

fn describe_descriptors(descriptors: &[DescriptorConfig], depth: usize, out: &mut String) {
    for d in descriptors {
        let indent = "  ".repeat(depth);
        let value = d.value.as_deref().map_or_else(
            || " (any value, counted apart)".to_owned(),
            |v| match (v.contains('*'), d.share_threshold) {
                (true, true) => format!(" = {v} (one shared counter)"),
                (true, false) => format!(" = {v} (each value counted apart)"),
                _ => format!(" = {v}"),
            },
        );
        let limit = match &d.rate_limit {
            None => String::new(),
            Some(RateLimitConfig::Unlimited { .. }) => ": unlimited".to_owned(),
            Some(RateLimitConfig::Limit {
                requests_per_unit,
                unit,
                name,
                replaces,
                counting,
            }) => {
                let mut l = format!(": {requests_per_unit}/{}", counting.per(*unit));
                if let Some(n) = name {
                    let _ = write!(l, " as {n}");
                }
                if !replaces.is_empty() {
                    let _ = write!(l, ", replaces {}", replaces.join(", "));
                }
                l
            }
        };
        let shadow = if d.shadow_mode { ", shadow mode" } else { "" };
        let _ = writeln!(out, "{indent}{}{value}{limit}{shadow}", d.key);
        describe_descriptors(&d.descriptors, depth + 1, out);
    }
}

/// `check`: one ShouldRateLimit call; exit 0 for OK, 2 for OVER_LIMIT, 1 on error.
pub async fn check(args: &CheckArgs) -> ExitCode {
    match check_call(args).await {
        Ok(resp) => {
            let json = convert::response_to_json(&resp);
            println!(
                "{}",
                serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
            );
            if resp.overall_code == rate_limit_response::Code::OverLimit as i32 {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn check_call(args: &CheckArgs) -> anyhow::Result<crate::proto::RateLimitResponse> {
    let endpoint = tonic::transport::Endpoint::from_shared(args.addr.clone())
        .map_err(|e| anyhow::anyhow!("invalid --addr {:?}: {e}", args.addr))?
        .connect_timeout(args.timeout)
        .timeout(args.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", args.addr))?;
    let request =
        convert::request_from_pairs(&args.domain, &args.descriptors, args.hits, str::to_owned);
    let resp = RateLimitServiceClient::new(channel)
        .should_rate_limit(request)
        .await
        .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?;
    Ok(resp.into_inner())
}

/// `render envoy|istio`: print gateway configuration for the loaded limits. Exit 1 when the
/// limits do not load or cannot be rendered.
pub fn render(target: &RenderTarget) -> ExitCode {
    let gateway_args = match target {
        RenderTarget::Envoy(a) => &a.gateway,
        RenderTarget::Istio(a) => &a.gateway,
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
    let result = gateway_options(target, gateway_args).and_then(|gateway| match target {
        RenderTarget::Envoy(a) => render::envoy::render(
            &loaded.config,
            &render::envoy::EnvoyOptions {
                gateway,
                listen: a.listen,
                admin: a.envoy_admin,
                upstreams: a.upstreams.clone(),
                response_cache: a.response_cache,
            },
        ),
        RenderTarget::Istio(a) => render::istio::render(
            &loaded.config,
            &render::istio::IstioOptions {
                gateway,
                namespace: a.namespace.clone(),
                gateway_selector: a.gateway_selector.clone(),
                hosts: a.hosts.clone(),
                rls_selector: (!a.no_service).then(|| a.rls_selector.clone()),
            },
        ),
    });
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

fn gateway_options(
    target: &RenderTarget,
    a: &RenderGatewayArgs,
) -> Result<render::GatewayOptions, render::RenderError> {
    let provider = a.jwks_uri.clone().map(|jwks_uri| render::JwtProvider {
        jwks_uri,
        issuer: a.jwt_issuer.clone(),
        audiences: a.jwt_audiences.clone(),
    });
    let jwt_used = a.consumer_sources.contains(&render::Source::Jwt);
    if !jwt_used && (provider.is_some() || a.jwt.is_some_and(|j| j != JwtArg::Ignore)) {
        return Err(render::RenderError(
            "--consumer-sources leaves out jwt, so --jwt and --jwks-uri have nothing to do".into(),
        ));
    }
    let jwt = match (a.jwt, provider) {
        (_, None) if !jwt_used => render::JwtMode::Ignore,
        (None | Some(JwtArg::Verify), Some(p)) => render::JwtMode::Verify(p),
        (Some(JwtArg::Verify), None) => {
            return Err(render::RenderError(
                "--jwt verify needs --jwks-uri (and, for Istio, --jwt-issuer)".into(),
            ));
        }
        (Some(JwtArg::Decode), Some(_)) | (Some(JwtArg::Ignore), Some(_)) => {
            return Err(render::RenderError(
                "--jwks-uri is only used with --jwt verify".into(),
            ));
        }
        (None | Some(JwtArg::Decode), None) => {
            eprintln!(
                "warning: Bearer tokens will be decoded without verification, so a client can \
                 choose its consumer id; pass --jwks-uri to verify them (see docs/gateway.md)"
            );
            render::JwtMode::Decode
        }
        (Some(JwtArg::Ignore), None) => render::JwtMode::Ignore,
    };
    let rls_addr = match target {
        RenderTarget::Envoy(e) => e.rls_addr.clone(),
        RenderTarget::Istio(i) => i.rls_addr.clone(),
    };
    Ok(render::GatewayOptions {
        sources: a.consumer_sources.clone(),
        domain: a.domain.clone(),
        rls_addr,
        timeout: a.timeout,
        failure_mode_deny: a.failure_mode_deny,
        jwt,
        max_form_bytes: a.max_form_bytes,
    })
}
