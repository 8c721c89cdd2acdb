//! `ironclad-rls bench`: a load tool for a running service. Closed loop by default (many
//! concurrent callers over a few HTTP/2 connections, each sending its next call when the last
//! one is answered, for a fixed time); open loop with `--rate` (calls sent on a fixed
//! schedule whatever the answers, latency counted from the scheduled time and late sends
//! counted, so queueing in the service shows instead of slowing the load down). Prints
//! throughput, answers and latency percentiles, and with `--admin` / `--redis-url` the CPU
//! each call cost the service and Redis. Figures in the README come from it.

use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::grpc::convert;
use crate::proto::rate_limit_service_client::RateLimitServiceClient;
use crate::proto::{RateLimitRequest, RateLimitResponse, rate_limit_response};

use super::{CallError, http, parse};

/// A send of the open loop more than this behind its scheduled time is counted as late: the
/// load tool (or the in-flight bound) could not keep the schedule, and the latency figures,
/// which count from the scheduled time, include the wait.
pub const LATE_AFTER: Duration = Duration::from_millis(1);

/// How long a scrape of the service's `/metrics` or Redis `INFO` may take.
const FIGURES_TIMEOUT: Duration = Duration::from_secs(5);

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

    /// Calls in flight at once (with `--rate`: at most this many; a send that finds them all
    /// in flight waits, and is counted late when it waited past 1 ms).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,

    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// How long to run.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub duration: Duration,

    /// Open loop: send this many calls per second on a fixed schedule, whatever the answers;
    /// latency counts from each call's scheduled time.
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
    fn record(
        &mut self,
        answer: &Result<tonic::Response<RateLimitResponse>, tonic::Status>,
        took: Duration,
    ) {
        self.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        match answer {
            Ok(r) if r.get_ref().overall_code == rate_limit_response::Code::OverLimit as i32 => {
                self.over += 1
            }
            Ok(_) => self.ok += 1,
            Err(_) => self.errors += 1,
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
    let mut clients = Vec::new();
    // Each tonic channel is one HTTP/2 connection; several, as Envoy's worker threads open
    // one each.
    for _ in 0..args.connections.max(1) {
        let channel = super::connect(&args.addr, None).await?;
        clients.push(RateLimitServiceClient::new(channel));
    }
    let before = Costs::read(args).await?;
    let started = Instant::now();
    let mut tally = match args.rate {
        Some(rate) => open_loop(args, clients, rate, started).await?,
        None => closed_loop(args, clients, started).await?,
    };
    let elapsed = started.elapsed();
    let after = Costs::read(args).await?;
    let mut out = report(args, &mut tally, elapsed);
    out.push_str(&before.per_call(&after, tally.calls(), elapsed));
    if let Some(label) = &args.markdown_row {
        out.push('\n');
        out.push_str(&markdown_row(label, &tally, elapsed));
    }
    Ok(out)
}

/// Each caller sends its next call when the last is answered.
async fn closed_loop(
    args: &Args,
    clients: Vec<RateLimitServiceClient<Channel>>,
    started: Instant,
) -> Result<Tally, CallError> {
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
                    tally.record(&answer, t.elapsed());
                }
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        all.add(t.await?);
    }
    Ok(all)
}

/// Sends `rate` calls per second on a fixed schedule from `started`, for `--duration`:
/// call i is due at `started + i / rate`, whatever became of the calls before it. A thread
/// of its own keeps the schedule (tokio's timers tick in milliseconds, ten calls' worth at
/// 10 000/s); each call is a task on the runtime. At most `--concurrency` calls are in
/// flight: a send that finds them all in flight waits for one, which the late count and the
/// latency (counted from the scheduled time) both show.
async fn open_loop(
    args: &Args,
    clients: Vec<RateLimitServiceClient<Channel>>,
    rate: u32,
    started: Instant,
) -> Result<Tally, CallError> {
    let calls = (args.duration.as_secs_f64() * f64::from(rate)).ceil() as u64;
    let in_flight = u32::try_from(args.concurrency.clamp(1, 1 << 20)).unwrap_or(1 << 20);
    let permits = Arc::new(Semaphore::new(in_flight as usize));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let handle = tokio::runtime::Handle::current();
    let args = args.clone();
    let shared = tally.clone();
    let late = tokio::task::spawn_blocking(move || {
        let mut late = 0u64;
        for i in 0..calls {
            let due =
                started + Duration::from_nanos(i.saturating_mul(1_000_000_000) / u64::from(rate));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let permit = match permits.clone().try_acquire_owned() {
                Ok(p) => p,
                // Never closed, so this only waits.
                Err(_) => match handle.block_on(permits.clone().acquire_owned()) {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            if due.elapsed() > LATE_AFTER {
                late += 1;
            }
            let request = build_request(&args, i);
            let mut client = clients[(i % clients.len() as u64) as usize].clone();
            let tally = shared.clone();
            handle.spawn(async move {
                let answer = client.should_rate_limit(request).await;
                let took = due.elapsed();
                tally
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(&answer, took);
                drop(permit);
            });
        }
        // Every permit back: every call sent has been answered (or failed).
        let _ = handle.block_on(permits.acquire_many(in_flight));
        late
    })
    .await?;
    let mut all = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
    all.late = late;
    Ok(all)
}

/// Percentile `p` (0..=1) of sorted latencies, in ms.
fn percentile(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn report(args: &Args, t: &mut Tally, elapsed: Duration) -> String {
    t.latencies_us.sort_unstable();
    let pct = |p| percentile(&t.latencies_us, p);
    let total = t.calls();
    let rate = total as f64 / elapsed.as_secs_f64();
    let mode = match args.rate {
        Some(r) => format!(
            "open loop at {r}/s, at most {} in flight over {} connections",
            args.concurrency, args.connections
        ),
        None => format!(
            "{} concurrent over {} connections",
            args.concurrency, args.connections
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

/// CPU counters of the service and of Redis at one moment, where asked for.
#[derive(Debug, Clone, Copy, Default)]
struct Costs {
    /// The service's `process_cpu_seconds_total`.
    service_cpu_s: Option<f64>,
    /// Redis: used CPU (user + system, every thread), and commands run so far.
    redis: Option<RedisCosts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RedisCosts {
    cpu_s: f64,
    commands: u64,
    /// Time spent inside the commands (`usec` of `INFO commandstats`), in µs.
    command_us: u64,
}

impl Costs {
    async fn read(args: &Args) -> Result<Costs, CallError> {
        let service_cpu_s = match &args.admin {
            Some(base) => Some(service_cpu(base).await?),
            None => None,
        };
        let redis = match &args.redis_url {
            Some(url) => Some(redis_costs(url).await?),
            None => None,
        };
        Ok(Costs {
            service_cpu_s,
            redis,
        })
    }

    /// The lines `service CPU: ...` and `Redis CPU: ...` for what was read, each starting
    /// with a line break.
    fn per_call(&self, after: &Costs, calls: u64, elapsed: Duration) -> String {
        let mut out = String::new();
        let calls = calls.max(1) as f64;
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        if let (Some(a), Some(b)) = (self.service_cpu_s, after.service_cpu_s) {
            let cpu = (b - a).max(0.0);
            out.push_str(&format!(
                "\nservice CPU: {:.2} µs per call ({:.2} cores)",
                cpu * 1e6 / calls,
                cpu / secs
            ));
        }
        if let (Some(a), Some(b)) = (self.redis, after.redis) {
            let cpu = (b.cpu_s - a.cpu_s).max(0.0);
            let commands = b.commands.saturating_sub(a.commands);
            out.push_str(&format!(
                "\nRedis CPU: {:.2} µs per call ({:.2} cores), {:.3} commands per call, {:.2} µs inside commands per call",
                cpu * 1e6 / calls,
                cpu / secs,
                commands as f64 / calls,
                b.command_us.saturating_sub(a.command_us) as f64 / calls,
            ));
        }
        out
    }
}

/// `process_cpu_seconds_total` from the service's `/metrics`.
async fn service_cpu(base: &str) -> Result<f64, CallError> {
    let base = base.trim_end_matches('/');
    let base = base.strip_suffix("/metrics").unwrap_or(base);
    let text = http::call(base, "GET", "/metrics", None, None, &[], FIGURES_TIMEOUT)
        .await
        .map_err(|e| CallError::Figures {
            what: format!("{base}/metrics"),
            reason: e.to_string(),
        })?;
    metric_value(&text, "process_cpu_seconds_total").ok_or_else(|| CallError::Figures {
        what: format!("{base}/metrics"),
        reason: "no process_cpu_seconds_total in it (is /proc mounted?)".into(),
    })
}

/// The value of an unlabelled metric in a Prometheus text exposition.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Redis's CPU and command counts, from `INFO cpu` and `INFO commandstats`.
async fn redis_costs(url: &str) -> Result<RedisCosts, CallError> {
    let failed = |reason: String| CallError::Figures {
        what: format!("INFO of {url}"),
        reason,
    };
    let query = async {
        let client = redis::Client::open(url).map_err(|e| failed(e.to_string()))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let cpu: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .map_err(|e| failed(e.to_string()))?;
        parse_redis_info(&cpu, &stats)
            .ok_or_else(|| failed("no used_cpu_sys / used_cpu_user in INFO cpu".into()))
    };
    tokio::time::timeout(FIGURES_TIMEOUT, query)
        .await
        .map_err(|_| failed(format!("no answer in {FIGURES_TIMEOUT:?}")))?
}

/// `used_cpu_sys + used_cpu_user`, and the sums of `calls` and `usec` over the `cmdstat_*`
/// lines, but for the commands this tool sends to read them (`INFO`, and the `CLIENT` and
/// `HELLO` of its connection's set-up).
fn parse_redis_info(cpu: &str, stats: &str) -> Option<RedisCosts> {
    let field = |name: &str| -> Option<f64> {
        cpu.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    let cpu_s = field("used_cpu_sys")? + field("used_cpu_user")?;
    let (mut commands, mut command_us) = (0u64, 0u64);
    let ours = |l: &str| {
        ["cmdstat_info:", "cmdstat_client", "cmdstat_hello:"]
            .iter()
            .any(|p| l.starts_with(p))
    };
    for line in stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !ours(l))
    {
        let Some((_, fields)) = line.split_once(':') else {
            continue;
        };
        for (k, v) in fields.split(',').filter_map(|kv| kv.split_once('=')) {
            match k {
                "calls" => commands += v.trim().parse::<u64>().unwrap_or(0),
                "usec" => command_us += v.trim().parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    Some(RedisCosts {
        cpu_s,
        commands,
        command_us,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::settings::{Cli, Command};

    fn args(extra: &[&str]) -> Args {
        let cli = Cli::try_parse_from(
            [
                &[
                    "ironclad-rls",
                    "bench",
                    "--descriptor",
                    "endpoint=e,consumer=c{n}",
                ],
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

    #[test]
    fn redis_info_is_read() {
        let cpu = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        let stats = "# Commandstats\r\ncmdstat_evalsha:calls=10,usec=40,usec_per_call=4.00,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=2,usec=30,usec_per_call=15.00\r\ncmdstat_client|setinfo:calls=2,usec=3,usec_per_call=1.50\r\n";
        assert_eq!(
            parse_redis_info(cpu, stats),
            Some(RedisCosts {
                cpu_s: 3.75,
                commands: 10,
                command_us: 40
            })
        );
        assert_eq!(parse_redis_info("# CPU\r\n", stats), None);
    }

    #[test]
    fn costs_per_call() {
        let before = Costs {
            service_cpu_s: Some(1.0),
            redis: Some(RedisCosts {
                cpu_s: 2.0,
                commands: 100,
                command_us: 0,
            }),
        };
        let after = Costs {
            service_cpu_s: Some(1.5),
            redis: Some(RedisCosts {
                cpu_s: 2.1,
                commands: 100 + 10_000,
                command_us: 40_000,
            }),
        };
        let text = before.per_call(&after, 10_000, Duration::from_secs(1));
        assert!(
            text.contains("service CPU: 50.00 µs per call (0.50 cores)"),
            "{text}"
        );
        assert!(
            text.contains("Redis CPU: 10.00 µs per call (0.10 cores), 1.000 commands per call, 4.00 µs inside commands per call"),
            "{text}"
        );
        assert_eq!(
            Costs::default().per_call(&after, 1, Duration::from_secs(1)),
            ""
        );
    }

    #[test]
    fn the_cpu_metric_is_found() {
        let text = "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total 12.5\nprocess_cpu_seconds_total_other 1\n";
        assert_eq!(metric_value(text, "process_cpu_seconds_total"), Some(12.5));
        assert_eq!(metric_value("", "process_cpu_seconds_total"), None);
    }
}
