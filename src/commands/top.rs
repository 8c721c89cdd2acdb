//! `top`: who is being limited across replicas (docs/observability.md §4). Asks every
//! replica's admin port for `GET /limited`, merges the views (a counter's rejected hits add
//! up across replicas, since each counts the requests it decided), and redraws the table
//! every `--interval`, like `top`. A replica that does not answer is named on the screen and
//! left out of the sums; the others keep being shown.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use crate::limited::{LimitedCounter, LimitedView, merge};

use super::{http, parse};

/// `top` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Admin URLs of the replicas (`http://host:port`), comma-separated or repeated.
    #[arg(long = "admin", required = true, value_delimiter = ',')]
    pub admin: Vec<String>,

    /// Time between refreshes.
    #[arg(long, default_value = "2s", value_parser = parse::duration)]
    pub interval: Duration,

    /// Rows shown.
    #[arg(long, default_value_t = 20)]
    pub rows: usize,

    /// Print one screen and exit (for scripts): exit 1 when no replica answered.
    #[arg(long)]
    pub once: bool,

    /// How long to wait for each replica.
    #[arg(long, default_value = "2s", value_parser = parse::duration)]
    pub timeout: Duration,
}

/// Runs until Ctrl-C (or once, with `--once`).
pub async fn run(args: &Args) -> ExitCode {
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let answers = fetch_all(args).await;
        let screen = render(args, &answers, crate::service::unix_ms());
        if args.once {
            print!("{screen}");
            return if answers.iter().any(|(_, a)| a.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        // Home and clear, then the screen: a terminal redraws in place.
        print!("\x1b[H\x1b[2J{screen}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        tokio::select! {
            _ = &mut ctrl_c => return ExitCode::SUCCESS,
            () = tokio::time::sleep(args.interval) => {}
        }
    }
}

type Answer = Result<LimitedView, String>;

async fn fetch_all(args: &Args) -> Vec<(String, Answer)> {
    let calls = args.admin.iter().map(|url| async move {
        let path = format!("/limited?limit={}", crate::limited::DEFAULT_CAPACITY);
        let answer = match http::call(url, "GET", &path, None, None, &[], args.timeout).await {
            Ok(body) => serde_json::from_str::<LimitedView>(&body)
                .map_err(|e| format!("unexpected answer: {e}")),
            Err(e) => Err(e.to_string()),
        };
        (url.clone(), answer)
    });
    futures_util::future::join_all(calls).await
}

fn render(args: &Args, answers: &[(String, Answer)], now_ms: u64) -> String {
    let views: Vec<LimitedView> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok().cloned())
        .collect();
    let rows = merge(&views);
    let mut out = String::new();
    let window = views.first().map_or(300, |v| v.window_secs);
    let _ = writeln!(
        out,
        "ironclad-rls top: {} of {} replicas answered, rejected hits over the last {}s, {}",
        views.len(),
        answers.len(),
        window,
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(now_ms))
    );
    for (url, a) in answers {
        match a {
            Ok(v) => {
                let _ = writeln!(out, "  {url}: {} limited counters", v.counters.len());
            }
            Err(e) => {
                let _ = writeln!(out, "  {url}: NOT ANSWERING: {e}");
            }
        }
    }
    let _ = writeln!(
        out,
        "\n{:>4} {:>10} {:>8} {:>4}  {:<24} RULE",
        "#", "REJECTED", "LAST", "REPL", "WHO"
    );
    if rows.is_empty() {
        let _ = writeln!(out, "     (nothing limited)");
    }
    for (i, r) in rows.iter().take(args.rows).enumerate() {
        let _ = writeln!(
            out,
            "{:>4} {:>10} {:>8} {:>4}  {:<24} {}{}",
            i + 1,
            r.rejected,
            ago(now_ms, r.last_ms),
            replicas_with(&views, r),
            r.subject,
            r.rule,
            if r.shadow { " (shadow)" } else { "" }
        );
    }
    out
}

fn replicas_with(views: &[LimitedView], row: &LimitedCounter) -> usize {
    views
        .iter()
        .filter(|v| {
            v.counters
                .iter()
                .any(|c| c.key == row.key && c.domain == row.domain)
        })
        .count()
}

/// `12s`, `3m`: how long ago.
fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    if secs < 120 {
        format!("{secs}s ago")
    } else {
        format!("{}m ago", secs / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, rejected: u64) -> LimitedCounter {
        LimitedCounter {
            domain: "kcse".into(),
            rule: format!("rule {key}"),
            subject: key.into(),
            key: key.into(),
            rejected,
            last_ms: 1_000,
            shadow: false,
        }
    }

    #[test]
    fn screen_merges_and_names_the_silent_replica() {
        let view = |counters| LimitedView {
            now_ms: 0,
            window_secs: 300,
            capacity: 8,
            counters,
        };
        let args = Args {
            admin: vec![],
            interval: Duration::from_secs(1),
            rows: 10,
            once: true,
            timeout: Duration::from_secs(1),
        };
        let answers = vec![
            (
                "http://a:1".to_owned(),
                Ok(view(vec![row("x", 2), row("y", 5)])),
            ),
            ("http://b:1".to_owned(), Ok(view(vec![row("x", 4)]))),
            ("http://c:1".to_owned(), Err("refused".to_owned())),
        ];
        let screen = render(&args, &answers, 5_000);
        assert!(screen.contains("2 of 3 replicas answered"), "{screen}");
        assert!(screen.contains("http://c:1: NOT ANSWERING: refused"));
        let table: Vec<&str> = screen
            .lines()
            .skip_while(|l| !l.contains("REJECTED"))
            .skip(1)
            .collect();
        assert!(
            table[0].contains(" 6 ") && table[0].contains("4s ago") && table[0].contains("   2  x"),
            "{screen}"
        );
        assert!(
            table[1].contains(" 5 ") && table[1].contains("rule y"),
            "{screen}"
        );
    }
}
