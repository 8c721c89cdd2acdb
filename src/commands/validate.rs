//! `validate`: load limits files exactly as `serve` would, print the effective rules on
//! stdout and every warning or error on stderr (`file:line:col` and field path, as
//! `docs/limits-format.md` describes). Nothing is started: it is the check to run before a
//! deploy or in a chart's CI.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config, DescriptorConfig, OverallLimit, RateLimitConfig, Severity};

/// `validate` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Limits files or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Exit 0 when the configuration loads (warnings allowed), 1 otherwise.
pub fn run(args: &Args) -> ExitCode {
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
        let quota = if d.quota_mode { ", quota mode" } else { "" };
        let metadata = d
            .metadata
            .as_ref()
            .map(|m| format!(", metadata {}", serde_json::Value::Object(m.clone())))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{indent}{}{value}{limit}{shadow}{quota}{metadata}",
            d.key
        );
        describe_descriptors(&d.descriptors, depth + 1, out);
    }
}
