//! `ironclad-rls bench`: a load tool for a running service. Many concurrent callers over a
//! few HTTP/2 connections, for a fixed time; prints throughput, answers and latency
//! percentiles. Figures in the README come from it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::grpc::convert;
use crate::proto::rate_limit_service_client::RateLimitServiceClient;
use crate::proto::{RateLimitRequest, rate_limit_response};

use super::{CallError, parse};

/// `bench` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The service's gRPC address.
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

    /// Calls in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub duration: Duration,

    /// Also print the figures as one Markdown table row starting with this label
    /// (`| label | calls/s | p50 | p99 | p999 | errors |`).
    #[arg(long)]
    pub markdown_row: Option<String>,
}

/// What one caller saw.
#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    over: u64,
    errors: u64,
    latencies_us: Vec<u32>,
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
    let mut clients = Vec::new();
    // Each tonic channel is one HTTP/2 connection; several, as Envoy's worker threads open
    // one each.
    for _ in 0..args.connections.max(1) {
        let channel = super::connect(&args.addr, None).await?;
        clients.push(RateLimitServiceClient::new(channel));
    }
    let started = Instant::now();
    let deadline = started + args.duration;
    let tasks: Vec<_> = (0..args.concurrency.max(1))
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            let args = args.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut n = i as u64;
                while Instant::now() < deadline {
                    let request = build_request(&args, n);
                    n += args.concurrency as u64;
                    let t = Instant::now();
                    let answer = client.should_rate_limit(request).await;
                    tally
                        .latencies_us
                        .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                    match answer {
                        Ok(r)
                            if r.get_ref().overall_code
                                == rate_limit_response::Code::OverLimit as i32 =>
                        {
                            tally.over += 1
                        }
                        Ok(_) => tally.ok += 1,
                        Err(_) => tally.errors += 1,
                    }
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.ok += t.ok;
        all.over += t.over;
        all.errors += t.errors;
        all.latencies_us.extend(t.latencies_us);
    }
    let elapsed = started.elapsed();
    Ok(report(args, &mut all, elapsed))
}

fn report(args: &Args, t: &mut Tally, elapsed: Duration) -> String {
    t.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let v = &t.latencies_us;
        if v.is_empty() {
            return 0.0;
        }
        let i = ((v.len() - 1) as f64 * p).round() as usize;
        f64::from(v[i]) / 1000.0
    };
    let total = t.ok + t.over + t.errors;
    let rate = total as f64 / elapsed.as_secs_f64();
    let mut out = format!(
        "{total} calls in {:.1}s: {rate:.0} calls/s ({} concurrent over {} connections)\n\
         answers: {} OK, {} OVER_LIMIT, {} errors\n\
         latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}",
        elapsed.as_secs_f64(),
        args.concurrency,
        args.connections,
        t.ok,
        t.over,
        t.errors,
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(0.999),
        pct(1.0),
    );
    if let Some(label) = &args.markdown_row {
        out.push_str(&format!(
            "\n| {label} | {rate:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            pct(0.5),
            pct(0.99),
            pct(0.999),
            t.errors
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::settings::{Cli, Command};

    #[test]
    fn placeholders_spread_calls_over_counters() {
        let cli = Cli::try_parse_from([
            "ironclad-rls",
            "bench",
            "--descriptor",
            "endpoint=e,consumer=c{n}",
            "--distinct",
            "3",
        ])
        .unwrap();
        let Command::Bench(args) = cli.command else {
            panic!("not bench")
        };
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
}
