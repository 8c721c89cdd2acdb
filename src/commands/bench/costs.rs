//! What a call cost the load tool, the service and Redis, read before and after the load:
//! the tool's own process CPU clock, the service's `process_cpu_seconds_total` from its
//! `/metrics`, Redis's `INFO cpu` and `INFO commandstats`.

use std::time::Duration;

use super::{Args, FIGURES_TIMEOUT};
use crate::commands::{CallError, http};

/// CPU counters of the tool, the service and Redis at one moment, where asked for.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Costs {
    /// This process's CPU time (every thread, user and system): set apart from the others,
    /// right at the start and the end of the load, so their reading is not in it.
    pub(super) tool_cpu_s: Option<f64>,
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
    pub(super) async fn read(args: &Args) -> Result<Costs, CallError> {
        let service_cpu_s = match &args.admin {
            Some(base) => Some(service_cpu(base).await?),
            None => None,
        };
        let redis = match &args.redis_url {
            Some(url) => Some(redis_costs(url).await?),
            None => None,
        };
        Ok(Costs {
            tool_cpu_s: None,
            service_cpu_s,
            redis,
        })
    }

    /// The lines `load tool CPU: ...`, `service CPU: ...` and `Redis CPU: ...` for what was
    /// read, each starting with a line break.
    pub(super) fn per_call(&self, after: &Costs, calls: u64, elapsed: Duration) -> String {
        let mut out = String::new();
        let calls = calls.max(1) as f64;
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut cpu_line = |what: &str, before: Option<f64>, after: Option<f64>| {
            if let (Some(a), Some(b)) = (before, after) {
                let cpu = (b - a).max(0.0);
                out.push_str(&format!(
                    "\n{what} CPU: {:.2} µs per call ({:.2} cores)",
                    cpu * 1e6 / calls,
                    cpu / secs
                ));
            }
        };
        cpu_line("load tool", self.tool_cpu_s, after.tool_cpu_s);
        cpu_line("service", self.service_cpu_s, after.service_cpu_s);
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

/// This process's CPU time so far, in seconds: every thread's, the connections' threads
/// that have ended included.
pub(super) fn tool_cpu() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
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
    use super::*;

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
            tool_cpu_s: Some(0.0),
            service_cpu_s: Some(1.0),
            redis: Some(RedisCosts {
                cpu_s: 2.0,
                commands: 100,
                command_us: 0,
            }),
        };
        let after = Costs {
            tool_cpu_s: Some(0.1),
            service_cpu_s: Some(1.5),
            redis: Some(RedisCosts {
                cpu_s: 2.1,
                commands: 100 + 10_000,
                command_us: 40_000,
            }),
        };
        let text = before.per_call(&after, 10_000, Duration::from_secs(1));
        assert!(
            text.starts_with("\nload tool CPU: 10.00 µs per call (0.10 cores)\n"),
            "{text}"
        );
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

    #[test]
    fn the_tool_cpu_clock_counts_this_process_working() {
        let before = tool_cpu();
        let spin = std::time::Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(tool_cpu() > before, "50 ms of spinning cost no CPU");
    }
}
