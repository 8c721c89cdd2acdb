//! `ironclad-rls bench`: a load tool for a running service. Closed loop by default (many
//! concurrent callers over a few HTTP/2 connections, each sending its next call when the last
//! one is answered, for a fixed time); open loop with `--rate` (calls sent on a fixed
//! schedule whatever the answers, latency counted from the scheduled time and late sends
//! counted, so queueing in the service shows instead of slowing the load down). Prints
//! throughput, answers and latency percentiles, the CPU each call cost the tool itself, and
//! with `--admin` / `--redis-url` the CPU each call cost the service and Redis. Figures in
//! the README come from it.
//!
//! The client is its own, on the `h2` crate, one thread per connection (`connection.rs`),
//! so that the tool costs a few microseconds per call and can offer 10 000 calls/s beside
//! the service on a 2-core machine; it speaks HTTP/2 without TLS only.

mod connection;
mod costs;
mod schedule;
mod wire;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::grpc::convert;
use crate::proto::RateLimitRequest;

use super::{CallError, parse};
use costs::Costs;
use wire::Outcome;

/// A send of the open loop more than this behind its scheduled time is counted as late: the
/// load tool (or the in-flight bound) could not keep the schedule, and the latency figures,
/// which count from the scheduled time, include the wait.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

/// How long a scrape of the service's `/metrics` or Redis `INFO` may take.
const FIGURES_TIMEOUT: Duration = Duration::from_secs(5);

/// `bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The service's gRPC address, `http://host:port` (the tool speaks HTTP/2 without TLS;
    /// `https://` is refused).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub addr: String,

    /// The rate limit domain.
    #[arg(long, default_value = "kcse")]
    pub domain: String,

    // The placeholder is spelled out: clap prints a literal `{n}` in help as a line break.
    /// One descriptor, as for `check` (repeatable). The letter n in curly braces, in a value,
    /// is replaced by the call's number modulo `--distinct`, to spread calls over many
    /// counters.
    #[arg(long = "descriptor", required = true, value_parser = parse::descriptor)]
    pub descriptors: Vec<Vec<(String, String)>>,

    /// Number of distinct values the placeholder takes.
    #[arg(long, default_value_t = 10_000)]
    pub distinct: u64,

    /// Calls in flight at once, shared evenly by the connections (with `--rate`: at most
    /// this many; a send that finds its connection's share all in flight waits, and is
    /// counted late when it waited past 1 ms).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// HTTP/2 connections the calls are spread over, each driven by a thread of its own (no
    /// more than `--concurrency`). A connection that closes during the run is not dialled
    /// again: its later calls count as errors.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub duration: Duration,

    /// Open loop: send this many calls per second on a fixed schedule, whatever the answers,
    /// each connection its share, evenly spaced; latency counts from each call's scheduled
    /// time.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate: Option<u32>,

    /// The service's admin URL (`http://host:port`): prints the service's CPU per call, from
    /// `process_cpu_seconds_total` in its `/metrics` before and after the load.
    #[arg(long)]
    pub admin: Option<String>,

    /// The Redis the service counts in (`redis://host:port`): prints Redis's CPU and commands
    /// per call, from `INFO cpu` and `INFO commandstats` before and after the load.
    #[arg(long)]
    pub redis_url: Option<String>,

    /// Also print the figures as one Markdown table row starting with this label
    /// (`| label | calls/s | p50 | p99 | p999 | errors |`).
    #[arg(long)]
    pub markdown_row: Option<String>,
}

/// What the callers saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    over: u64,
    errors: u64,
    /// Open loop only: sends more than [`LATE_AFTER`] behind schedule.
    late: u64,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn with_capacity(calls: usize) -> Self {
        Tally {
            latencies_us: Vec::with_capacity(calls),
            ..Tally::default()
        }
    }

    fn record(&mut self, outcome: Outcome, took: Duration) {
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::OverLimit => self.over += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.over += other.over;
        self.errors += other.errors;
        self.late += other.late;
        self.latencies_us.extend(other.latencies_us);
    }

    fn calls(&self) -> u64 {
        self.ok + self.over + self.errors
    }
}

/// Runs the load and prints the figures.
pub async fn run(args: &Args) -> ExitCode {
    match load(args).await {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build_request(args: &Args, n: u64) -> RateLimitRequest {
    let number = (n % args.distinct.max(1)).to_string();
    convert::request_from_pairs(&args.domain, &args.descriptors, 0, |v| {
        v.replace("{n}", &number)
    })
}

async fn load(args: &Args) -> Result<String, CallError> {
    let plan = Arc::new(connection::Plan::new(args)?);
    let workers = connection::connect(&plan).await?;
    let mut before = Costs::read(args).await?;
    before.tool_cpu_s = Some(costs::tool_cpu());
    let (mut tally, elapsed) = connection::run(workers).await?;
    let tool_after = costs::tool_cpu();
    let mut after = Costs::read(args).await?;
    after.tool_cpu_s = Some(tool_after);
    let mut out = report(args, &plan, &mut tally, elapsed);
    out.push_str(&before.per_call(&after, tally.calls(), elapsed));
    if let Some(label) = &args.markdown_row {
        out.push('\n');
        out.push_str(&markdown_row(label, &tally, elapsed));
    }
    Ok(out)
}

/// Percentile `p` (0..=1) of sorted latencies, in ms.
fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn report(args: &Args, plan: &connection::Plan, t: &mut Tally, elapsed: Duration) -> String {
    t.latencies_us.sort_unstable();
    let pct = |p| percentile(&t.latencies_us, p);
    let total = t.calls();
    let rate = total as f64 / elapsed.as_secs_f64();
    let mode = match args.rate {
        Some(r) => format!(
            "open loop at {r}/s, at most {} in flight over {} connections",
            plan.concurrency, plan.connections
        ),
        None => format!(
            "{} concurrent over {} connections",
            plan.concurrency, plan.connections
        ),
    };
    let mut out = format!(
        "{total} calls in {:.1}s: {rate:.0} calls/s ({mode})\n\
         answers: {} OK, {} OVER_LIMIT, {} errors\n",
        elapsed.as_secs_f64(),
        t.ok,
        t.over,
        t.errors,
    );
    if args.rate.is_some() {
        out.push_str(&format!(
            "sent: {total}, answered {}, errors {}, late sends {} (more than {} ms behind schedule; latency counts from the scheduled time)\n",
            t.ok + t.over,
            t.errors,
            t.late,
            LATE_AFTER.as_millis(),
        ));
    }
    out.push_str(&format!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    ));
    out
}

fn markdown_row(label: &str, t: &Tally, elapsed: Duration) -> String {
    let pct = |p| percentile(&t.latencies_us, p);
    format!(
        "| {label} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
        t.calls() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        t.errors
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::settings::{Cli, Command};

    /// `bench --descriptor endpoint=e,consumer=c{n}` and `extra`.
    pub(super) fn args(extra: &[&str]) -> Args {
        args_with("endpoint=e,consumer=c{n}", extra)
    }

    /// `bench --descriptor descriptor` and `extra`.
    pub(super) fn args_with(descriptor: &str, extra: &[&str]) -> Args {
        let cli = Cli::try_parse_from(
            [
                &["ironclad-rls", "bench", "--descriptor", descriptor],
                extra,
            ]
            .concat(),
        )
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
        args
    }

    #[test]
    fn placeholders_spread_calls_over_counters() {
        let args = args(&["--distinct", "3"]);
        let consumer = |n| {
            build_request(&args, n).descriptors[0].entries[1]
                .value
                .clone()
        };
        assert_eq!(
            (consumer(1), consumer(4), consumer(5)),
            ("c1".into(), "c1".into(), "c2".into())
        );
        assert_eq!(build_request(&args, 7).descriptors[0].entries[0].value, "e");
    }

    #[test]
    fn a_rate_of_zero_is_refused() {
        assert!(
            Cli::try_parse_from([
                "ironclad-rls",
                "bench",
                "--descriptor",
                "k=v",
                "--rate",
                "0"
            ])
            .is_err()
        );
        assert_eq!(args(&["--rate", "10000"]).rate, Some(10_000));
    }
}
