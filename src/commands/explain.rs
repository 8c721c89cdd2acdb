//! `explain`: why a request is limited the way it is, without a running service
//! (docs/observability.md §5). Loads the limits files as `serve` would, asks
//! [`RuleSet::explain`] for the trace of each descriptor, and prints it: the normalised path,
//! every prefix or entry tried and whether it matched, and the counters touched with their
//! keys, limits, windows and algorithms. With `--admin` it adds each counter's state from a
//! running service (`POST /counters`, which counts nothing).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::config::{self, Algorithm};
use crate::descriptor::{Applies, Entry, Explanation, Format, RuleSet, Step};
use crate::status::CounterStateView;

use super::{http, parse};

/// `explain` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Limits files or directories, as `serve --config` takes them.
    #[arg(long = "config", required = true, value_delimiter = ',')]
    pub config: Vec<PathBuf>,

    /// The rate limit domain.
    #[arg(long, default_value = "kcse")]
    pub domain: String,

    /// One descriptor: `key=value[,key=value...]` (repeatable), as `check` takes it.
    #[arg(long = "descriptor", required = true, value_parser = parse::descriptor)]
    pub descriptors: Vec<Vec<(String, String)>>,

    /// A running service's admin URL (`http://host:port`): add each counter's current state.
    #[arg(long)]
    pub admin: Option<String>,

    /// A file holding the service's `--admin-token-file` token, sent with `--admin` (the
    /// service then guards `POST /counters` as it guards `POST /json`).
    #[arg(long, requires = "admin")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// The service's `--redis-key-prefix`, to print the Redis keys it writes.
    #[arg(long, default_value = "rls")]
    pub redis_key_prefix: String,

    /// How long to wait for `--admin`.
    #[arg(long, default_value = "5s", value_parser = parse::duration)]
    pub timeout: Duration,
}

/// Prints the explanation; exit 0, or 1 when the files do not load or `--admin` fails.
pub async fn run(args: &Args) -> ExitCode {
    let loaded = match config::load_paths(&args.config) {
        Ok(l) => l,
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            eprintln!("error: the limits files do not load");
            return ExitCode::FAILURE;
        }
    };
    let rules = RuleSet::compile(&loaded.config);
    let explained: Vec<Explanation> = args
        .descriptors
        .iter()
        .map(|pairs| rules.explain(&args.domain, &entries(pairs), None))
        .collect();
    let states = match &args.admin {
        None => None,
        Some(url) => match fetch_states(url, args).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    print!(
        "{}",
        render(args, &explained, states.as_deref(), &loaded.sha256)
    );
    ExitCode::SUCCESS
}

fn entries(pairs: &[(String, String)]) -> Vec<Entry> {
    pairs
        .iter()
        .map(|(k, v)| Entry {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

async fn fetch_states(url: &str, args: &Args) -> Result<Vec<CounterStateView>, String> {
    let descriptors: Vec<serde_json::Value> = args
        .descriptors
        .iter()
        .map(|pairs| {
            let entries: Vec<serde_json::Value> = pairs
                .iter()
                .map(|(k, v)| serde_json::json!({ "key": k, "value": v }))
                .collect();
            serde_json::json!({ "entries": entries })
        })
        .collect();
    let body = serde_json::json!({ "domain": args.domain, "descriptors": descriptors }).to_string();
    let token = args
        .admin_token_file
        .as_deref()
        .map(crate::admin::token::read_token)
        .transpose()
        .map_err(|e| e.to_string())?;
    let answer = http::call(
        url,
        "POST",
        "/counters",
        Some(&body),
        token.as_deref(),
        &[],
        args.timeout,
    )
    .await
    .map_err(|e| e.to_string())?;
    #[derive(serde::Deserialize)]
    struct Answer {
        counters: Vec<CounterStateView>,
    }
    serde_json::from_str::<Answer>(&answer)
        .map(|a| a.counters)
        .map_err(|e| format!("{url}/counters: unexpected answer: {e}"))
}

/// The Redis key a counter's current window lives at (docs/counter-store.md): fixed windows
/// end in the window's start, which changes every window.
pub fn redis_key(prefix: &str, key: &str, algorithm: Algorithm, window_secs: u64) -> String {
    let window_ms = window_secs.max(1) * 1000;
    let tail = match algorithm {
        Algorithm::FixedWindow => "<window start ms>",
        Algorithm::SlidingWindow => "s",
        Algorithm::TokenBucket => "b",
    };
    format!("{prefix}:{key}:{window_ms}:{tail}")
}

fn render(
    args: &Args,
    explained: &[Explanation],
    states: Option<&[CounterStateView]>,
    sha256: &str,
) -> String {
    let mut out = String::new();
    let format = match explained.first().map(|e| e.format) {
        Some(Format::Endpoint) => "endpoint format",
        Some(Format::Descriptor) => "envoyproxy/ratelimit format",
        Some(Format::UnknownDomain) | None => "not configured: nothing is limited",
    };
    let _ = writeln!(
        out,
        "domain {} ({format}); configuration sha256 {}",
        args.domain,
        &sha256[..sha256.len().min(12)]
    );
    for (i, (pairs, e)) in args.descriptors.iter().zip(explained).enumerate() {
        let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(out, "\ndescriptor {}: {}", i + 1, shown.join(","));
        for step in &e.steps {
            out.push_str("  ");
            out.push_str(&step_line(step));
            out.push('\n');
        }
        if let Some(reject) = &e.resolved.reject_all {
            let _ = writeln!(
                out,
                "  REJECTED: {} (overall_limit 0): every request is over limit, nothing is counted{}",
                reject.name,
                if reject.shadow {
                    " (shadow mode: answered OK)"
                } else {
                    ""
                }
            );
            continue;
        }
        if e.resolved.counters.is_empty() {
            let why = match e.resolved.unmatched {
                Some(crate::descriptor::Unmatched::UnknownDomain) => "the domain is not configured",
                Some(crate::descriptor::Unmatched::NoEndpointEntry) => "no `endpoint` entry",
                Some(crate::descriptor::Unmatched::UnknownEndpoint) => {
                    "no endpoint has that shortname"
                }
                _ => "no rule applies",
            };
            let _ = writeln!(out, "  NOT LIMITED: {why}");
            continue;
        }
        let _ = writeln!(out, "  counters ({}):", e.resolved.counters.len());
        for c in &e.resolved.counters {
            let window = c.counting.window_secs(c.unit);
            let _ = writeln!(
                out,
                "    {}: {} per {}{}",
                c.name,
                c.limit,
                c.counting.per(c.unit),
                if c.shadow { " (shadow mode)" } else { "" }
            );
            let _ = writeln!(
                out,
                "      algorithm {}, window {window}s",
                c.counting.algorithm
            );
            let _ = writeln!(out, "      key {}", c.key.as_str());
            let _ = writeln!(
                out,
                "      redis {}",
                redis_key(
                    &args.redis_key_prefix,
                    c.key.as_str(),
                    c.counting.algorithm,
                    window
                )
            );
            if let Some(states) = states {
                match states
                    .iter()
                    .find(|s| s.descriptor == i && s.key == c.key.as_str())
                {
                    Some(s) => {
                        let _ = writeln!(
                            out,
                            "      now: {} of {} used, {} remaining, {}resets in {:.1}s",
                            s.count,
                            s.limit,
                            s.remaining,
                            if s.remaining == 0 { "FULL, " } else { "" },
                            s.reset_ms as f64 / 1000.0
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "      now: the service does not touch this counter (its configuration differs)"
                        );
                    }
                }
            }
        }
    }
    out
}

fn step_line(step: &Step) -> String {
    match step {
        Step::Endpoint { shortname, known } => match (shortname, known) {
            (None, _) => "endpoint: no `endpoint` entry".into(),
            (Some(s), true) => format!("endpoint {s}: found"),
            (Some(s), false) => format!("endpoint {s}: no endpoint has this shortname"),
        },
        Step::Consumer { consumer } => match consumer {
            Some(c) => format!("consumer: {c}"),
            None => "consumer: anonymous (no or empty `consumer` entry)".into(),
        },
        Step::Overall { limit } => match limit {
            None => "overall_limit: none".into(),
            Some(0) => "overall_limit: 0 (rejects every request)".into(),
            Some(n) => format!("overall_limit: {n}"),
        },
        Step::Path { raw, normalised } => match (raw, normalised) {
            (Some(r), Some(n)) if r == n => format!("path: {r}"),
            (Some(r), Some(n)) => format!("path: {r} normalised to {n}"),
            _ => "path: no `path` entry, so no prefix applies".into(),
        },
        Step::Prefix {
            prefix,
            matched,
            applies,
        } => match (matched, applies) {
            (false, _) => format!("prefix {prefix}: no match"),
            (true, Some(Applies::Rule { name, limit })) => {
                format!("prefix {prefix}: MATCH, {name} ({limit})")
            }
            (true, _) => {
                format!("prefix {prefix}: MATCH, but anonymous and no anon_value: not limited here")
            }
        },
        Step::DescriptorEntry {
            key,
            value,
            matched,
        } => match matched {
            Some(how) => format!("entry {key}={value}: matched {how}"),
            None => format!("entry {key}={value}: no match, the walk stops: not limited"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keys_follow_the_store() {
        let k = "{kcse:kcserl}:o";
        assert_eq!(
            redis_key("rls", k, Algorithm::FixedWindow, 60),
            "rls:{kcse:kcserl}:o:60000:<window start ms>"
        );
        assert_eq!(
            redis_key("p", k, Algorithm::SlidingWindow, 1),
            "p:{kcse:kcserl}:o:1000:s"
        );
    }
}
