//! The admin port's views for people (docs/observability.md §3, §6): `GET /limited` (who is
//! being limited, JSON), `GET /status.json` (what the status page shows) and `GET /` (the
//! status page: one HTML document with inline SVG and script, no external assets, so it works
//! on an air-gapped cluster and through `kubectl port-forward`).
//!
//! The page is rendered with its data on the server, so it is useful without script; the
//! inline script then refreshes it in place from `/status.json` and draws the per-rule rates
//! from successive samples of the hit counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use crate::admin::{AdminState, readiness};
use crate::config::Diagnostic;
use crate::limited::{LimitedCounter, LimitedView};
use crate::service::unix_ms;

/// Rows `/limited` answers unless `?limit=` asks otherwise.
const DEFAULT_ROWS: usize = 50;
/// Rows of the status page's table.
const PAGE_ROWS: usize = 10;

/// `GET /limited` query.
#[derive(Debug, Deserialize)]
pub struct LimitedQuery {
    /// Most rows to answer.
    pub limit: Option<usize>,
}

/// `GET /limited`: the replica's recently rejecting counters, most rejected first.
pub async fn limited(State(s): State<AdminState>, Query(q): Query<LimitedQuery>) -> Response {
    let view = s
        .decider
        .limited()
        .view(unix_ms(), q.limit.unwrap_or(DEFAULT_ROWS));
    Json(view).into_response()
}

/// One counter's state as `POST /counters` answers it (`ironclad-rls explain --admin`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterStateView {
    /// Index of the request's descriptor the counter belongs to.
    pub descriptor: usize,
    /// The counter key.
    pub key: String,
    /// The rule's name.
    pub rule: String,
    /// The limit.
    pub limit: u32,
    /// The count in the current window (fixed window), the hits in the log (sliding window),
    /// or the bucket's debt in hits (token bucket).
    pub count: u64,
    /// Hits that could be admitted now.
    pub remaining: u64,
    /// Over its limit now.
    pub over: bool,
    /// ms until the window ends (or, when over, until a hit could be admitted).
    pub reset_ms: u64,
}

/// `POST /counters`: the body of `POST /json`, answered with the state of every counter the
/// request touches. Every descriptor is read with `hits_addend` 0 (docs/protocol.md: check
/// only), so asking counts nothing; it goes to the limiter directly, past the decider, so it
/// shows in neither the metrics nor `/limited`.
pub async fn counters(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let bad = |status: axum::http::StatusCode, message: String| {
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    };
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return bad(
                axum::http::StatusCode::BAD_REQUEST,
                format!("invalid JSON: {e}"),
            );
        }
    };
    let mut request = match crate::grpc::json::request_from_json(&value) {
        Ok(r) => r,
        Err(e) => return bad(axum::http::StatusCode::BAD_REQUEST, e),
    };
    for d in &mut request.descriptors {
        d.hits_addend = Some(0);
    }
    match s.limiter.should_rate_limit(&request).await {
        Ok(decision) => {
            let rows: Vec<CounterStateView> = decision
                .counters
                .iter()
                .map(|c| CounterStateView {
                    descriptor: c.descriptor,
                    key: c.rule.key.as_str().to_owned(),
                    rule: c.rule.name.to_string(),
                    limit: c.rule.limit,
                    count: c.state.before,
                    remaining: c.state.remaining,
                    over: c.state.over,
                    reset_ms: c.state.reset_ms,
                })
                .collect();
            Json(serde_json::json!({ "counters": rows })).into_response()
        }
        Err(crate::limiter::LimitError::Invalid(e)) => {
            bad(axum::http::StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(crate::limiter::LimitError::Backend(e)) => {
            bad(axum::http::StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}

/// One rule's hit counters since start-up, by outcome (`ratelimit_hits_total`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RuleHits {
    /// The domain.
    pub domain: String,
    /// The rule label.
    pub rule: String,
    /// Admitted hits.
    pub within_limit: f64,
    /// Rejected hits.
    pub over_limit: f64,
    /// Over limit but allowed by shadow mode.
    pub shadow_over_limit: f64,
}

/// The body of `GET /status.json`.
#[derive(Debug, Serialize)]
pub struct StatusView<'a> {
    /// The replica's clock (Unix ms): the page computes rates between two answers with it.
    pub now_ms: u64,
    /// Configuration generation.
    pub generation: u64,
    /// SHA-256 of the configuration.
    pub sha256: &'a str,
    /// The limits files.
    pub files: &'a [String],
    /// When the configuration was loaded (RFC 3339).
    pub loaded_at: String,
    /// Warnings found while loading.
    pub warnings: &'a [Diagnostic],
    /// The counter store (credentials redacted).
    pub counter_store: &'a str,
    /// `/readyz`'s verdict: `ready`, or why not.
    pub health: String,
    /// True when `/readyz` would answer 200.
    pub ready: bool,
    /// The top limited counters.
    pub limited: LimitedView,
    /// Hit counters per rule.
    pub rules: Vec<RuleHits>,
}

/// `GET /status.json`.
pub async fn status_json(State(s): State<AdminState>) -> Response {
    let health = readiness(&s).await;
    let snapshot = s.limiter.snapshot();
    let view = StatusView {
        now_ms: unix_ms(),
        generation: snapshot.generation,
        sha256: &snapshot.sha256,
        files: &snapshot.sources,
        loaded_at: humantime::format_rfc3339_millis(snapshot.loaded_at).to_string(),
        warnings: &snapshot.warnings,
        counter_store: &s.counter_store,
        ready: health.is_ok(),
        health: health.err().unwrap_or_else(|| "ready".into()),
        limited: s.decider.limited().view(unix_ms(), PAGE_ROWS),
        rules: rule_hits(&s.metrics.render()),
    };
    Json(view).into_response()
}

/// `GET /`: the status page.
pub async fn page(State(s): State<AdminState>) -> Response {
    let health = readiness(&s).await;
    let snapshot = s.limiter.snapshot();
    let limited = s.decider.limited().view(unix_ms(), PAGE_ROWS);
    let mut files = String::new();
    for f in snapshot.sources.iter() {
        let _ = write!(files, "<li>{}</li>", escape(f));
    }
    let mut warnings = String::new();
    for w in snapshot.warnings.iter() {
        let _ = write!(warnings, "<li>{}</li>", escape(&w.to_string()));
    }
    let html = PAGE
        .replace("{{generation}}", &snapshot.generation.to_string())
        .replace("{{sha256}}", &escape(&snapshot.sha256))
        .replace(
            "{{loaded_at}}",
            &humantime::format_rfc3339_seconds(snapshot.loaded_at).to_string(),
        )
        .replace("{{files}}", &files)
        .replace("{{warnings}}", &warnings)
        .replace("{{warning_count}}", &snapshot.warnings.len().to_string())
        .replace("{{store}}", &escape(&s.counter_store))
        .replace(
            "{{health}}",
            &escape(health.as_ref().err().map_or("ready", String::as_str)),
        )
        .replace(
            "{{health_class}}",
            if health.is_ok() { "ok" } else { "bad" },
        )
        .replace("{{limited_rows}}", &limited_rows(&limited.counters));
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

/// The table rows of the top limited counters, as the script also writes them.
fn limited_rows(rows: &[LimitedCounter]) -> String {
    if rows.is_empty() {
        return r#"<tr><td colspan="4" class="quiet">nothing limited in the last 5 minutes</td></tr>"#.into();
    }
    let mut out = String::new();
    for r in rows {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&r.subject),
            escape(&r.rule),
            r.rejected,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(r.last_ms)
            ),
        );
    }
    out
}

/// HTML-escapes text for element content and quoted attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Reads `ratelimit_hits_total` out of the service's own Prometheus text, so the page shows
/// the very numbers `/metrics` serves without a second bookkeeping on the request path.
pub fn rule_hits(metrics_text: &str) -> Vec<RuleHits> {
    let mut by_rule: BTreeMap<(String, String), RuleHits> = BTreeMap::new();
    for line in metrics_text.lines() {
        let Some(rest) = line.strip_prefix("ratelimit_hits_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        let get = |name: &str| {
            labels
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let (domain, rule) = (get("domain"), get("rule"));
        let row = by_rule
            .entry((domain.clone(), rule.clone()))
            .or_insert_with(|| RuleHits {
                domain,
                rule,
                ..RuleHits::default()
            });
        match get("outcome").as_str() {
            "within_limit" => row.within_limit += value,
            "over_limit" => row.over_limit += value,
            "shadow_over_limit" => row.shadow_over_limit += value,
            _ => {}
        }
    }
    by_rule.into_values().collect()
}

/// `a="x",b="y\"z"` → pairs, with the text format's escapes (`\\`, `\"`, `\n`) undone.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if name.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => {}
                },
                c => value.push(c),
            }
        }
        out.push((name.trim_start_matches(',').to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

/// The page: placeholders `{{...}}` are filled on the server, the script refreshes in place.
const PAGE: &str = include_str!("status.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_are_read_per_rule_with_escapes() {
        let text = concat!(
            "# HELP ratelimit_hits_total x\n",
            "ratelimit_hits_total{domain=\"kcse\",outcome=\"over_limit\",rule=\"kcserl /a client\"} 4\n",
            "ratelimit_hits_total{domain=\"kcse\",outcome=\"within_limit\",rule=\"kcserl /a client\"} 10\n",
            "ratelimit_hits_total{domain=\"d\",outcome=\"shadow_over_limit\",rule=\"q\\\"x\\\\y\"} 2\n",
            "ratelimit_requests_total{code=\"ok\"} 10\n",
        );
        let rows = rule_hits(text);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].rule, "q\"x\\y");
        assert_eq!(rows[0].shadow_over_limit, 2.0);
        assert_eq!((rows[1].within_limit, rows[1].over_limit), (10.0, 4.0));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        assert!(limited_rows(&[]).contains("nothing limited"));
    }
}
