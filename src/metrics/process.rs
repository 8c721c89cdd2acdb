//! Process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_open_fds`, `process_max_fds`), read from `/proc/self` when `/metrics` is
//! scraped, so cost per decision and the distance to the file-descriptor limit can be read
//! from the outside. Names and meanings are the Prometheus client conventions.
//!
//! Read by hand rather than with the `prometheus` crate's `process` feature, which pulls in
//! `procfs` and `libc` for four numbers. Where `/proc` is missing (not Linux) the three
//! `/proc` metrics are left out rather than reported as 0.

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, Metric, MetricFamily, MetricType};

/// The soft limit on open file descriptors (`ulimit -n`); `None` when unlimited.
pub fn max_fds() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// One reading of the process's figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size, in bytes.
    pub resident_bytes: Option<f64>,
    /// File descriptors open now.
    pub open_fds: Option<f64>,
    /// The soft limit on them.
    pub max_fds: f64,
}

impl Reading {
    /// Reads `/proc/self` now.
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let status = std::fs::read_to_string("/proc/self/status").ok();
        Reading {
            cpu_seconds: stat
                .as_deref()
                .and_then(|s| cpu_seconds(s, rustix::param::clock_ticks_per_second())),
            resident_bytes: status.as_deref().and_then(resident_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            // Unlimited is reported as the largest count, as Prometheus clients do.
            max_fds: max_fds().map_or(f64::from(u32::MAX), |n| n as f64),
        }
    }
}

/// utime + stime from `/proc/self/stat`, in seconds. The fields are counted after the
/// command name's closing parenthesis: the name itself may hold spaces and parentheses.
fn cpu_seconds(stat: &str, ticks_per_second: u64) -> Option<f64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // After ")": state is field 3 of stat(5); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    (ticks_per_second > 0).then(|| (utime + stime) as f64 / ticks_per_second as f64)
}

/// `VmRSS` from `/proc/self/status` (in kB there), in bytes.
fn resident_bytes(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb * 1024) as f64)
}

/// The collector registered in the service's registry.
#[derive(Debug)]
pub struct ProcessCollector {
    descs: [Desc; 4],
}

const CPU: (&str, &str) = (
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
);
const RSS: (&str, &str) = (
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
);
const OPEN_FDS: (&str, &str) = ("process_open_fds", "Number of open file descriptors.");
const MAX_FDS: (&str, &str) = (
    "process_max_fds",
    "Maximum number of open file descriptors.",
);

impl ProcessCollector {
    /// The four metrics' descriptions.
    pub fn new() -> Result<Self, prometheus::Error> {
        let desc = |(name, help): (&str, &str)| {
            Desc::new(name.into(), help.into(), Vec::new(), Default::default())
        };
        Ok(ProcessCollector {
            descs: [desc(CPU)?, desc(RSS)?, desc(OPEN_FDS)?, desc(MAX_FDS)?],
        })
    }
}

fn family((name, help): (&str, &str), kind: MetricType, value: f64) -> MetricFamily {
    let mut m = Metric::default();
    match kind {
        MetricType::COUNTER => {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        }
        _ => {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
    }
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(kind);
    f.set_metric(vec![m]);
    f
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let r = Reading::now();
        let mut out = Vec::with_capacity(4);
        if let Some(v) = r.cpu_seconds {
            out.push(family(CPU, MetricType::COUNTER, v));
        }
        if let Some(v) = r.resident_bytes {
            out.push(family(RSS, MetricType::GAUGE, v));
        }
        if let Some(v) = r.open_fds {
            out.push(family(OPEN_FDS, MetricType::GAUGE, v));
        }
        out.push(family(MAX_FDS, MetricType::GAUGE, r.max_fds));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a process may choose.
        let stat =
            "4242 (rls (x) y) S 1 4242 4242 0 -1 4194560 900 0 0 0 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(cpu_seconds(stat, 100), Some(3.0));
        assert_eq!(cpu_seconds("garbage", 100), None);
    }

    #[test]
    fn resident_memory_is_read_in_bytes() {
        let status = "Name:\trls\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(resident_bytes(status), Some(2048.0 * 1024.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let r = Reading::now();
        assert!(r.cpu_seconds.is_some_and(|s| s >= 0.0), "{r:?}");
        assert!(r.resident_bytes.is_some_and(|b| b > 1e6), "{r:?}");
        let open = r.open_fds.unwrap_or(0.0);
        assert!(open >= 3.0 && open <= r.max_fds, "{r:?}");
    }
}
