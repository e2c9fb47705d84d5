//! The arithmetic of benchmarks (percentiles, medians) and what the process
//! and the machine say about themselves (CPU time, RSS), read from `/proc`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Nearest-rank percentile (`q` in 0..=100) of samples sorted ascending: the
/// smallest sample with at least `q`% of the samples at or below it. The same
/// definition as the Celery baseline's `pct`, so the two are comparable.
/// `NaN` for no samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q / 100.0 * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The median of samples in any order (the mean of the middle two for an even
/// count, as Python's `statistics.median`); `None` for no samples. `NaN`s are
/// ignored.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Percentiles of round-trip times, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencyStats {
    /// Round trips measured.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Fastest.
    pub min_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl LatencyStats {
    /// Summarises durations.
    pub fn of(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean = if ms.is_empty() {
            f64::NAN
        } else {
            ms.iter().sum::<f64>() / ms.len() as f64
        };
        Self {
            n: ms.len(),
            p50_ms: percentile(&ms, 50.0),
            p90_ms: percentile(&ms, 90.0),
            p99_ms: percentile(&ms, 99.0),
            mean_ms: mean,
            min_ms: ms.first().copied().unwrap_or(f64::NAN),
            max_ms: ms.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every
/// Linux architecture wasq runs on).
const USER_HZ: f64 = 100.0;

/// CPU time (user + system, all threads, live and exited) used by this
/// process so far: what `getrusage(RUSAGE_SELF)` reports, read from
/// `/proc/self/stat` so no `unsafe` is needed. Its resolution is 10 ms, so
/// measure phases of a second or more. `None` off Linux.
pub fn process_cpu() -> Option<Duration> {
    pid_cpu("self")
}

/// CPU time used so far by process `pid` (see [`process_cpu`]).
pub fn pid_cpu(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last `)`.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) / USER_HZ))
}

/// Resident set size of process `pid` (`"self"` for this one), in bytes,
/// from `/proc/PID/status`.
pub fn rss_bytes(pid: &str) -> Option<u64> {
    status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

fn status_kib(pid: &str, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

/// Busy and total jiffies of the whole machine, from the first line of
/// `/proc/stat`, to tell how loaded the machine was during a phase.
#[derive(Debug, Clone, Copy)]
pub struct MachineCpu {
    busy: u64,
}

impl MachineCpu {
    /// A sample now; `None` off Linux.
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let vals: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let total: u64 = vals.iter().take(8).sum();
        let idle = vals.get(3).copied().unwrap_or(0) + vals.get(4).copied().unwrap_or(0);
        let steal = vals.get(7).copied().unwrap_or(0);
        Some(Self {
            busy: total.saturating_sub(idle + steal),
        })
    }

    /// Cores busy on average between `self` and `later`, over `wall`.
    pub fn busy_cores_until(&self, later: &MachineCpu, wall: Duration) -> f64 {
        let busy = later.busy.saturating_sub(self.busy) as f64 / USER_HZ;
        busy / wall.as_secs_f64().max(1e-9)
    }
}

/// Cores of this machine.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The CPU model name from `/proc/cpuinfo`, or `unknown`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 90.0), 90.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        // Small samples round the rank up, as Celery's `pct` does.
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 1.0);
        assert_eq!(percentile(&[1.0, 2.0], 99.0), 2.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn latency_stats_in_milliseconds() {
        let samples: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        let s = LatencyStats::of(&samples);
        assert_eq!(s.n, 10);
        assert!((s.p50_ms - 5.0).abs() < 1e-9);
        assert!((s.p90_ms - 9.0).abs() < 1e-9);
        assert!((s.p99_ms - 10.0).abs() < 1e-9);
        assert!((s.mean_ms - 5.5).abs() < 1e-9);
        assert!((s.min_ms - 1.0).abs() < 1e-9 && (s.max_ms - 10.0).abs() < 1e-9);
    }

    #[test]
    fn proc_readings_are_plausible() {
        if std::fs::metadata("/proc/self/stat").is_err() {
            return;
        }
        assert!(process_cpu().is_some());
        assert!(rss_bytes("self").unwrap() > 0);
    }
}
