//! What `wasq bench` reports (one JSON object per run), and the summary of
//! several runs against the Celery baseline and the targets of the
//! performance issue.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::stats::{LatencyStats, median};

/// One run of `wasq bench`. The top-level numbers are the headline ones;
/// each phase that ran fills its section (`null` when skipped).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// Calls per second, end to end, in the throughput phase.
    pub throughput_per_s: Option<f64>,
    /// Median round trip of the latency phase, ms.
    pub p50_ms: Option<f64>,
    /// 90th percentile round trip, ms.
    pub p90_ms: Option<f64>,
    /// 99th percentile round trip, ms.
    pub p99_ms: Option<f64>,
    /// Where and with what it ran.
    pub setup: Setup,
    /// Throughput phase.
    pub throughput: Option<Throughput>,
    /// Latency phase: sequential round trips.
    pub latency: Option<LatencyStats>,
    /// Cold start through a host, and the sandbox's compile and disk cache.
    pub cold_start: Option<ColdStart>,
    /// Sandbox costs without Redis: warm calls, CPU-bound work vs native.
    pub sandbox: Option<SandboxCost>,
    /// Throughput with 1 and 2 in-process hosts.
    pub scaling: Option<Scaling>,
    /// RSS of a `wasq host run` process, idle and with many calls in flight.
    pub memory: Option<Memory>,
    /// The throughput and latency phases again with call events off
    /// (`EventLevel::Off`), as Celery runs by default (no task events
    /// without `-E`); absent in reports of older `wasq bench` versions.
    #[serde(default)]
    pub events_off: Option<EventsOff>,
    /// The latency phase's round trip as bare Redis commands, no wasq in it
    /// (`XADD` + `XREAD BLOCK` → a blocked `XREADGROUP` → `XADD`): the
    /// floor this Redis and machine put under a round trip. Absent in
    /// reports of older `wasq bench` versions.
    #[serde(default)]
    pub latency_floor: Option<LatencyStats>,
    /// Median round trip of a direct call (HTTP to `wasq serve`), ms.
    #[serde(default)]
    pub direct_p50_ms: Option<f64>,
    /// 99th percentile round trip of a direct call, ms.
    #[serde(default)]
    pub direct_p99_ms: Option<f64>,
    /// Direct calls per second over several keep-alive connections.
    #[serde(default)]
    pub direct_throughput_per_s: Option<f64>,
    /// The direct phase in full.
    #[serde(default)]
    pub direct: Option<super::Direct>,
}

/// The throughput and latency phases with call events off.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsOff {
    /// Throughput phase, same sizes.
    pub throughput: Option<Throughput>,
    /// Latency phase, same sizes.
    pub latency: Option<LatencyStats>,
}

/// The run's setup.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Setup {
    /// Redis URL, password removed.
    pub redis: String,
    /// Key prefix of the run.
    pub prefix: String,
    /// Cores of the machine.
    pub cores: usize,
    /// CPU model.
    pub cpu: String,
    /// In-process hosts of the throughput and latency phases.
    pub hosts: usize,
    /// Concurrency of each host.
    pub concurrency: usize,
    /// Whether the hosts share one `Sandbox`.
    pub shared_sandbox: bool,
    /// Calls per `submit` round trip.
    pub batch: usize,
    /// Results the client waits for at once.
    pub waiters: usize,
}

/// The throughput phase: `calls` calls of `add(i, i)`, submitted in batches,
/// every result waited for and checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Throughput {
    /// Calls.
    pub calls: usize,
    /// From the first submit to the last result, seconds.
    pub seconds: f64,
    /// Calls per second, end to end.
    pub per_s: f64,
    /// Calls per second the client submitted at.
    pub submit_per_s: f64,
    /// CPU of this process (hosts and client) per call, µs.
    pub process_cpu_us_per_call: Option<f64>,
    /// CPU of redis-server per call, µs (from `INFO cpu`).
    pub redis_cpu_us_per_call: Option<f64>,
    /// Cores of the machine busy on average during the phase.
    pub machine_busy_cores: Option<f64>,
}

impl Throughput {
    /// Several passes as one: their calls over their summed time, CPU per
    /// call weighted by calls, busy cores weighted by time. `None` if empty.
    pub fn merge(parts: &[Throughput]) -> Option<Throughput> {
        let calls: usize = parts.iter().map(|t| t.calls).sum();
        let seconds: f64 = parts.iter().map(|t| t.seconds).sum();
        if parts.is_empty() || calls == 0 || seconds <= 0.0 {
            return None;
        }
        let per_call = |f: fn(&Throughput) -> Option<f64>| -> Option<f64> {
            let total = parts
                .iter()
                .map(|t| f(t).map(|v| v * t.calls as f64))
                .sum::<Option<f64>>()?;
            Some(total / calls as f64)
        };
        let submit_seconds: f64 = parts.iter().map(|t| t.calls as f64 / t.submit_per_s).sum();
        Some(Throughput {
            calls,
            seconds,
            per_s: calls as f64 / seconds,
            submit_per_s: calls as f64 / submit_seconds,
            process_cpu_us_per_call: per_call(|t| t.process_cpu_us_per_call),
            redis_cpu_us_per_call: per_call(|t| t.redis_cpu_us_per_call),
            machine_busy_cores: parts
                .iter()
                .map(|t| t.machine_busy_cores.map(|c| c * t.seconds))
                .sum::<Option<f64>>()
                .map(|c| c / seconds),
        })
    }
}

/// Cold start of bench100k (≈ 76–100 KB).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ColdStart {
    /// Size of the module, bytes.
    pub module_bytes: usize,
    /// Repetitions (each with a fresh host and cache directory).
    pub reps: usize,
    /// Submit to result of the first call on a module the host never saw
    /// (fetch, verify, compile, run), ms, median.
    pub first_call_ms: f64,
    /// The same after a host restart with its disk cache (new `Sandbox`,
    /// same `cache_dir`), ms, median.
    pub after_restart_ms: f64,
    /// A call of the now cached module, ms, median (the floor of the two above).
    pub warm_call_ms: f64,
    /// Sandbox only: `load_bytes` compiling the module to quick code (a
    /// tiered host's first compile), ms, median.
    pub compile_ms: f64,
    /// Sandbox only: `load_bytes` compiling optimised code (a tiered host's
    /// background compile; `--compile optimized`), ms, median.
    #[serde(default)]
    pub optimize_ms: f64,
    /// Sandbox only: `load_bytes` reading compiled code from the disk cache, ms, median.
    pub deserialize_ms: f64,
}

/// Host CPU of warm calls, per call.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WarmCall {
    /// Task.
    pub task: String,
    /// Calls made, one after another.
    pub calls: usize,
    /// Process CPU per call, µs.
    pub cpu_us_per_call: f64,
    /// Wall time per call, µs.
    pub wall_us_per_call: f64,
}

/// One CPU-bound task, natively and in wasm, in ms (medians).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuBound {
    /// What ran, like `fib(32)` or `sha256(4 MiB)`.
    pub task: String,
    /// The same Rust code compiled natively (release), ms.
    pub native_ms: f64,
    /// Through the sandbox (fuel and epochs on, fresh instance per call), ms.
    pub sandbox_ms: f64,
    /// Plain wasmtime engine without fuel or epochs, ms.
    pub wasm_plain_ms: f64,
    /// Plain engine with epochs only, ms.
    pub wasm_epochs_ms: f64,
    /// Plain engine with fuel only, ms.
    pub wasm_fuel_ms: f64,
    /// Plain engine with fuel and epochs (the sandbox's instrumentation), ms.
    pub wasm_fuel_epochs_ms: f64,
    /// `sandbox_ms / native_ms`.
    pub sandbox_vs_native: f64,
    /// `wasm_fuel_ms / wasm_plain_ms`: the price of fuel metering.
    pub fuel_cost: f64,
    /// `wasm_epochs_ms / wasm_plain_ms`: the price of epoch checks.
    pub epoch_cost: f64,
    /// For sha256: the `sha2` crate natively (SHA-NI where the CPU has it), ms.
    pub native_accelerated_ms: Option<f64>,
}

/// Sandbox costs, no broker involved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SandboxCost {
    /// Warm instantiate + call of `noop` (module cached).
    pub warm_noop: WarmCall,
    /// Warm instantiate + call of `add` (args in, JSON result out).
    pub warm_add: WarmCall,
    /// CPU-bound tasks vs native.
    pub cpu_bound: Vec<CpuBound>,
}

/// Throughput with several host setups.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scaling {
    /// Calls per configuration.
    pub calls: usize,
    /// One host, calls/s.
    pub one_host_per_s: f64,
    /// Two hosts sharing a `Sandbox`, calls/s.
    pub two_hosts_shared_per_s: f64,
    /// Two hosts with a `Sandbox` each, calls/s.
    pub two_hosts_separate_per_s: f64,
    /// Cores redis-server kept busy in each configuration (1 host, 2
    /// sharing, 2 separate), where Redis reports its CPU.
    #[serde(default)]
    pub redis_cores: Vec<Option<f64>>,
    /// Cores the whole machine kept busy in each configuration.
    #[serde(default)]
    pub machine_cores: Vec<Option<f64>>,
}

impl Scaling {
    /// The best of the two-host configurations over one host.
    pub fn gain(&self) -> f64 {
        self.two_hosts_shared_per_s
            .max(self.two_hosts_separate_per_s)
            / self.one_host_per_s
    }

    /// Redis's and the machine's busy cores in the best two-host configuration.
    pub fn two_hosts_cores(&self) -> (Option<f64>, Option<f64>) {
        let best = if self.two_hosts_shared_per_s >= self.two_hosts_separate_per_s {
            1
        } else {
            2
        };
        let at = |v: &[Option<f64>]| v.get(best).copied().flatten();
        (at(&self.redis_cores), at(&self.machine_cores))
    }
}

/// The name of the scaling target.
const SCALING: &str = "2 hosts vs 1 host (2 cores)";
/// Redis counts as the limit from this many busy cores (it runs commands on one).
pub const REDIS_BOUND_CORES: f64 = 0.9;
/// The machine counts as the limit from this many busy cores (of its 2).
pub const MACHINE_BOUND_CORES: f64 = 1.85;

/// RSS of a real `wasq host run` process.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memory {
    /// The host's `--concurrency`.
    pub concurrency: usize,
    /// Right after start, before any call, MiB.
    pub idle_rss_mib: f64,
    /// Idle after one call (module compiled and cached), MiB.
    pub idle_warm_rss_mib: f64,
    /// Sleeping calls of each wave.
    pub wave_calls: Vec<usize>,
    /// Peak RSS during each wave, MiB.
    pub wave_peak_rss_mib: Vec<f64>,
    /// Wall time of each wave, seconds.
    pub wave_seconds: Vec<f64>,
    /// Seconds each call sleeps.
    pub sleep_s: f64,
    /// RSS after the waves, idle again, MiB.
    pub after_rss_mib: f64,
    /// Peak of the largest wave over peak of the first: memory follows
    /// concurrency, not queue length, when this stays near 1.
    pub growth: f64,
    /// `growth` ≤ 1.25.
    pub bounded: bool,
}

/// The Celery baseline's figures from `bench/celery/bench.py --out` files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Baseline {
    /// Best (median) end-to-end throughput of the configurations, tasks/s.
    pub throughput_per_s: Option<f64>,
    /// Best (median) p50 round trip of the configurations, ms.
    pub p50_ms: Option<f64>,
    /// Which configuration gave the throughput.
    pub label: String,
    /// Repetitions that succeeded, in all.
    pub reps: usize,
}

impl Baseline {
    /// Reads every `celery-*.json` in `dir`; per configuration, the median
    /// over all repetitions; then the best configuration.
    ///
    /// # Errors
    /// On unreadable or malformed files.
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let mut per_label: std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)> =
            Default::default();
        for path in files(dir, "celery-")? {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            let label = v["label"].as_str().unwrap_or("celery").to_string();
            let entry = per_label.entry(label).or_default();
            for rep in v["reps"].as_array().into_iter().flatten() {
                if rep["ok"].as_bool() != Some(true) {
                    continue;
                }
                if let Some(t) = rep["throughput"].as_f64() {
                    entry.0.push(t);
                }
                if let Some(p) = rep["lat_p50_ms"].as_f64() {
                    entry.1.push(p);
                }
            }
        }
        Ok(Self::best(&per_label))
    }

    fn best(per_label: &std::collections::BTreeMap<String, (Vec<f64>, Vec<f64>)>) -> Self {
        let mut out = Baseline::default();
        for (label, (tput, p50)) in per_label {
            out.reps += tput.len();
            if let Some(t) = median(tput)
                && out.throughput_per_s.is_none_or(|b| t > b)
            {
                out.throughput_per_s = Some(t);
                out.label = label.clone();
            }
            if let Some(p) = median(p50)
                && out.p50_ms.is_none_or(|b| p < b)
            {
                out.p50_ms = Some(p);
            }
        }
        out
    }
}

/// `prefix*.json` files of a directory, sorted.
fn files(dir: &Path, prefix: &str) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(prefix) && name.ends_with(".json") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every `wasq-*.json` (one [`BenchReport`] each) in `dir`.
///
/// # Errors
/// On unreadable or malformed files.
pub fn read_reports(dir: &Path) -> anyhow::Result<Vec<BenchReport>> {
    files(dir, "wasq-")?
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a wasq bench report", path.display()))
        })
        .collect()
}

/// How a measured value is held against its goal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// `measured ≥ factor × baseline`.
    AtLeastTimes(f64),
    /// `measured ≤ baseline / divisor`.
    AtMostFraction(f64),
    /// `measured ≤ bound`.
    AtMost(f64),
    /// `measured < bound`.
    Below(f64),
    /// `measured > 1` (a ratio that must show a gain).
    Above1,
    /// A yes/no property, measured as 1 (yes) or 0 (no).
    Holds,
}

/// One target of the performance issue, with the medians of the runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// What is measured.
    pub name: &'static str,
    /// The goal, in words.
    pub goal_text: String,
    /// The goal.
    pub goal: Goal,
    /// Median over runs; `None` if no run measured it.
    pub measured: Option<f64>,
    /// Lowest and highest over runs.
    pub range: Option<(f64, f64)>,
    /// Unit of `measured`.
    pub unit: &'static str,
    /// The baseline it is compared with, for relative goals.
    pub baseline: Option<f64>,
    /// For a goal that holds "until Redis or the cores are the limit": the
    /// limit that was reached, in words.
    pub limit: Option<String>,
}

impl Target {
    /// `measured / baseline` for relative goals, `measured / bound` for bounds.
    pub fn ratio(&self) -> Option<f64> {
        let m = self.measured?;
        match self.goal {
            Goal::AtLeastTimes(_) | Goal::AtMostFraction(_) => {
                let b = self.baseline?;
                (b != 0.0).then(|| m / b)
            }
            Goal::AtMost(bound) | Goal::Below(bound) => (bound != 0.0).then(|| m / bound),
            Goal::Above1 | Goal::Holds => Some(m),
        }
    }

    /// Whether the goal is met; `None` when it cannot be told (not measured,
    /// or no baseline for a relative goal).
    pub fn met(&self) -> Option<bool> {
        let m = self.measured?;
        Some(match self.goal {
            Goal::AtLeastTimes(k) => m >= k * self.baseline?,
            Goal::AtMostFraction(k) => m <= self.baseline? / k,
            Goal::AtMost(b) => m <= b,
            Goal::Below(b) => m < b,
            Goal::Above1 => m > 1.0,
            Goal::Holds => m >= 0.5,
        })
    }
}

fn summarise(values: Vec<f64>) -> (Option<f64>, Option<(f64, f64)>) {
    let values: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
    let range = values
        .iter()
        .copied()
        .fold(None, |acc: Option<(f64, f64)>, v| {
            Some(acc.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))))
        });
    (median(&values), range)
}

/// The targets of the performance issue, each with the median over `runs`.
pub fn targets(runs: &[BenchReport], baseline: &Baseline) -> Vec<Target> {
    let pick =
        |f: &dyn Fn(&BenchReport) -> Option<f64>| summarise(runs.iter().filter_map(f).collect());
    // More hosts cannot help once Redis (one core) or the machine is busy.
    let (redis, _) = pick(&|r| r.scaling.as_ref().and_then(|s| s.two_hosts_cores().0));
    let (machine, _) = pick(&|r| r.scaling.as_ref().and_then(|s| s.two_hosts_cores().1));
    let scaling_limit = match (redis, machine) {
        (Some(r), m) if r >= REDIS_BOUND_CORES => Some(format!(
            "Redis: {} of its one core busy with 2 hosts{}",
            num(r),
            m.map_or(String::new(), |m| format!(", machine {} of 2", num(m)))
        )),
        (r, Some(m)) if m >= MACHINE_BOUND_CORES => Some(format!(
            "the cores: {} of 2 busy with 2 hosts{}",
            num(m),
            r.map_or(String::new(), |r| format!(", Redis {}", num(r)))
        )),
        _ => None,
    };
    let mut out = Vec::new();
    let mut push = |name, goal_text: &str, goal, unit, baseline: Option<f64>, (measured, range)| {
        out.push(Target {
            name,
            goal_text: goal_text.to_string(),
            goal,
            measured,
            range,
            unit,
            baseline,
            limit: None,
        })
    };
    push(
        "throughput (add, end to end)",
        "≥ 30× Celery",
        Goal::AtLeastTimes(30.0),
        "calls/s",
        baseline.throughput_per_s,
        pick(&|r| r.throughput_per_s),
    );
    push(
        "p50 round trip (add)",
        "≤ 1/6 of Celery's",
        Goal::AtMostFraction(6.0),
        "ms",
        baseline.p50_ms,
        pick(&|r| r.p50_ms),
    );
    push(
        "throughput, call events off (as Celery's)",
        "≥ 30× Celery",
        Goal::AtLeastTimes(30.0),
        "calls/s",
        baseline.throughput_per_s,
        pick(&|r| {
            let t = r.events_off.as_ref()?.throughput.as_ref()?;
            Some(t.per_s)
        }),
    );
    push(
        "p50 round trip, call events off",
        "≤ 1/6 of Celery's",
        Goal::AtMostFraction(6.0),
        "ms",
        baseline.p50_ms,
        pick(&|r| Some(r.events_off.as_ref()?.latency.as_ref()?.p50_ms)),
    );
    push(
        "p50 floor: that round trip as bare Redis commands, no wasq (reference)",
        "≤ 1/6 of Celery's?",
        Goal::AtMostFraction(6.0),
        "ms",
        baseline.p50_ms,
        pick(&|r| Some(r.latency_floor.as_ref()?.p50_ms)),
    );
    push(
        "warm instantiate + call (noop), host CPU",
        "≤ 20 µs",
        Goal::AtMost(20.0),
        "µs",
        None,
        pick(&|r| r.sandbox.as_ref().map(|s| s.warm_noop.cpu_us_per_call)),
    );
    push(
        "warm instantiate + call (add), host CPU",
        "≤ 20 µs",
        Goal::AtMost(20.0),
        "µs",
        None,
        pick(&|r| r.sandbox.as_ref().map(|s| s.warm_add.cpu_us_per_call)),
    );
    push(
        "cold start, ~100 KB module, never seen",
        "< 150 ms",
        Goal::Below(150.0),
        "ms",
        None,
        pick(&|r| r.cold_start.as_ref().map(|c| c.first_call_ms)),
    );
    push(
        "cold start after restart, disk cache",
        "< 5 ms",
        Goal::Below(5.0),
        "ms",
        None,
        pick(&|r| r.cold_start.as_ref().map(|c| c.after_restart_ms)),
    );
    for (i, name) in [
        (0, "sandboxed CPU work vs native: fib"),
        (1, "sandboxed CPU work vs native: sha256"),
    ] {
        push(
            name,
            "≤ 1.5× (fuel on)",
            Goal::AtMost(1.5),
            "×",
            None,
            pick(&|r| {
                r.sandbox
                    .as_ref()
                    .and_then(|s| s.cpu_bound.get(i))
                    .map(|c| c.sandbox_vs_native)
            }),
        );
    }
    push(
        SCALING,
        "> 1×",
        Goal::Above1,
        "×",
        None,
        pick(&|r| r.scaling.as_ref().map(Scaling::gain)),
    );
    push(
        "idle host RSS",
        "< 50 MiB",
        Goal::Below(50.0),
        "MiB",
        None,
        pick(&|r| r.memory.as_ref().map(|m| m.idle_rss_mib)),
    );
    push(
        "RSS bounded, 1000 calls in flight",
        "bounded",
        Goal::Holds,
        "yes/no",
        None,
        pick(&|r| r.memory.as_ref().map(|m| if m.bounded { 1.0 } else { 0.0 })),
    );
    if let Some(t) = out.iter_mut().find(|t| t.name == SCALING) {
        t.limit = scaling_limit;
    }
    out
}

fn num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The summary table (markdown) of targets.
pub fn table(targets: &[Target], runs: usize, baseline: &Baseline) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "wasq: median of {runs} run(s) [min–max]; Celery baseline: {} ({} rep(s))\n",
        if baseline.label.is_empty() {
            "not measured"
        } else {
            &baseline.label
        },
        baseline.reps
    );
    let _ = writeln!(s, "| target | goal | wasq | Celery | ratio | met |");
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for t in targets {
        let measured = match (t.measured, t.range, t.goal) {
            (Some(m), _, Goal::Holds) => (if m >= 0.5 { "yes" } else { "no" }).to_string(),
            (Some(m), Some((lo, hi)), _) if runs > 1 => {
                format!("{} {} [{}–{}]", num(m), t.unit, num(lo), num(hi))
            }
            (Some(m), _, _) => format!("{} {}", num(m), t.unit),
            (None, _, _) => "not measured".into(),
        };
        let base = t
            .baseline
            .map_or(String::from("–"), |b| format!("{} {}", num(b), t.unit));
        let ratio = match (t.ratio(), t.goal) {
            (Some(r), Goal::AtLeastTimes(_) | Goal::AtMostFraction(_)) => format!("{}×", num(r)),
            (Some(r), Goal::AtMost(_) | Goal::Below(_)) => format!("{}% of bound", num(r * 100.0)),
            (Some(r), Goal::Above1) => format!("{}×", num(r)),
            _ => "–".into(),
        };
        let met = match (t.met(), &t.limit) {
            (Some(true), _) => "yes".to_string(),
            (Some(false), Some(limit)) => format!("at the limit ({limit})"),
            (Some(false), None) => "**no**".to_string(),
            (None, _) => "?".to_string(),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {measured} | {base} | {ratio} | {met} |",
            t.name, t.goal_text
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(goal: Goal, measured: f64, baseline: Option<f64>) -> Target {
        Target {
            name: "t",
            goal_text: String::new(),
            goal,
            measured: Some(measured),
            range: None,
            unit: "",
            baseline,
            limit: None,
        }
    }

    #[test]
    fn relative_goals_compare_with_the_baseline() {
        let t = target(Goal::AtLeastTimes(30.0), 24_000.0, Some(800.0));
        assert_eq!(t.ratio(), Some(30.0));
        assert_eq!(t.met(), Some(true));
        let t = target(Goal::AtLeastTimes(30.0), 23_999.0, Some(800.0));
        assert_eq!(t.met(), Some(false));
        // p50 must be at most a sixth of Celery's: 0.25 vs 1.5 is exactly that.
        let t = target(Goal::AtMostFraction(6.0), 0.25, Some(1.5));
        assert!((t.ratio().unwrap() - 1.0 / 6.0).abs() < 1e-12);
        assert_eq!(t.met(), Some(true));
        assert_eq!(
            target(Goal::AtMostFraction(6.0), 0.26, Some(1.5)).met(),
            Some(false)
        );
        // No baseline: cannot tell.
        assert_eq!(target(Goal::AtLeastTimes(30.0), 1.0, None).met(), None);
    }

    #[test]
    fn absolute_goals_and_their_ratios() {
        assert_eq!(target(Goal::AtMost(20.0), 20.0, None).met(), Some(true));
        assert_eq!(target(Goal::Below(5.0), 5.0, None).met(), Some(false));
        assert_eq!(target(Goal::Below(150.0), 75.0, None).ratio(), Some(0.5));
        assert_eq!(target(Goal::Above1, 1.0, None).met(), Some(false));
        assert_eq!(target(Goal::Above1, 1.2, None).met(), Some(true));
        assert_eq!(target(Goal::Holds, 0.0, None).met(), Some(false));
    }

    #[test]
    fn baseline_takes_the_best_configuration_median() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "prefork".to_string(),
            (vec![600.0, 700.0, 680.0], vec![2.1, 2.0, 2.3]),
        );
        m.insert(
            "solo".to_string(),
            (vec![760.0, 780.0, 770.0], vec![1.6, 1.5, 1.55]),
        );
        let b = Baseline::best(&m);
        assert_eq!(b.throughput_per_s, Some(770.0));
        assert_eq!(b.p50_ms, Some(1.55));
        assert_eq!(b.label, "solo");
        assert_eq!(b.reps, 6);
    }

    #[test]
    fn scaling_names_the_limit_it_reached() {
        let run = |two: f64, redis: f64, machine: f64| BenchReport {
            scaling: Some(Scaling {
                one_host_per_s: 10_000.0,
                two_hosts_shared_per_s: two,
                two_hosts_separate_per_s: two - 500.0,
                redis_cores: vec![Some(0.8), Some(redis), Some(0.1)],
                machine_cores: vec![Some(1.2), Some(machine), Some(0.1)],
                ..Scaling::default()
            }),
            ..BenchReport::default()
        };
        let row = |runs: &[BenchReport]| {
            let t = targets(runs, &Baseline::default());
            let t = t.into_iter().find(|t| t.name == SCALING).unwrap();
            let table = table(std::slice::from_ref(&t), runs.len(), &Baseline::default());
            (t, table.lines().last().unwrap().to_string())
        };
        // Fewer calls with 2 hosts, Redis busy: the limit, said as such.
        let (t, line) = row(&[run(9_000.0, 0.95, 1.5)]);
        assert_eq!(t.met(), Some(false));
        assert!(
            line.contains("at the limit (Redis: 0.95 of its one core"),
            "{line}"
        );
        let (_, line) = row(&[run(9_000.0, 0.5, 1.9)]);
        assert!(
            line.contains("at the limit (the cores: 1.90 of 2"),
            "{line}"
        );
        // Neither busy: a plain miss.
        let (t, line) = row(&[run(9_000.0, 0.5, 1.2)]);
        assert_eq!(t.limit, None);
        assert!(line.ends_with("| **no** |"), "{line}");
        // More calls: met, whatever the load.
        let (t, line) = row(&[run(12_000.0, 0.95, 1.9)]);
        assert_eq!(t.met(), Some(true));
        assert!(line.ends_with("| yes |"), "{line}");
        // Reports from before the cores were recorded: a plain miss.
        let old = BenchReport {
            scaling: Some(Scaling {
                one_host_per_s: 10_000.0,
                two_hosts_shared_per_s: 9_000.0,
                ..Scaling::default()
            }),
            ..BenchReport::default()
        };
        assert!(row(&[old]).1.ends_with("| **no** |"));
    }

    #[test]
    fn targets_take_medians_over_runs() {
        let runs: Vec<BenchReport> = [20_000.0, 26_000.0, 24_000.0]
            .into_iter()
            .map(|t| BenchReport {
                throughput_per_s: Some(t),
                ..BenchReport::default()
            })
            .collect();
        let baseline = Baseline {
            throughput_per_s: Some(800.0),
            ..Baseline::default()
        };
        let t = &targets(&runs, &baseline)[0];
        assert_eq!(t.measured, Some(24_000.0));
        assert_eq!(t.range, Some((20_000.0, 26_000.0)));
        assert_eq!(t.met(), Some(true));
        let table = table(&targets(&runs, &baseline), runs.len(), &baseline);
        assert!(table.contains("30.0×"), "{table}");
    }

    #[test]
    fn throughput_passes_merge_by_calls_and_time() {
        let pass = |calls: usize, seconds: f64, cpu: f64, busy: f64| Throughput {
            calls,
            seconds,
            per_s: calls as f64 / seconds,
            submit_per_s: calls as f64 / (seconds / 2.0),
            process_cpu_us_per_call: Some(cpu),
            redis_cpu_us_per_call: Some(cpu * 2.0),
            machine_busy_cores: Some(busy),
        };
        let m =
            Throughput::merge(&[pass(1000, 1.0, 10.0, 1.0), pass(3000, 1.0, 30.0, 2.0)]).unwrap();
        assert_eq!((m.calls, m.seconds, m.per_s), (4000, 2.0, 2000.0));
        assert!((m.submit_per_s - 4000.0).abs() < 1e-9, "{m:?}");
        assert_eq!(m.process_cpu_us_per_call, Some(25.0));
        assert_eq!(m.redis_cpu_us_per_call, Some(50.0));
        assert_eq!(m.machine_busy_cores, Some(1.5));
        let mut unmeasured = pass(10, 1.0, 1.0, 1.0);
        unmeasured.redis_cpu_us_per_call = None;
        let m = Throughput::merge(&[pass(10, 1.0, 1.0, 1.0), unmeasured]).unwrap();
        assert_eq!(m.redis_cpu_us_per_call, None);
        assert!(Throughput::merge(&[]).is_none());
    }

    #[test]
    fn events_off_runs_have_their_own_rows() {
        let run = |per_s: f64, p50_ms: f64| BenchReport {
            throughput_per_s: Some(per_s / 2.0),
            events_off: Some(EventsOff {
                throughput: Some(Throughput {
                    per_s,
                    ..Throughput::default()
                }),
                latency: Some(LatencyStats::of(&[std::time::Duration::from_secs_f64(
                    p50_ms / 1e3,
                )])),
            }),
            ..BenchReport::default()
        };
        let runs = vec![run(24_000.0, 0.2), run(20_000.0, 0.4), run(26_000.0, 0.3)];
        let baseline = Baseline {
            throughput_per_s: Some(800.0),
            p50_ms: Some(1.5),
            ..Baseline::default()
        };
        let ts = targets(&runs, &baseline);
        let row = |name: &str| ts.iter().find(|t| t.name == name).unwrap().clone();
        let t = row("throughput, call events off (as Celery's)");
        assert_eq!((t.measured, t.met()), (Some(24_000.0), Some(true)));
        assert_eq!(row("throughput (add, end to end)").met(), Some(false));
        let p = row("p50 round trip, call events off");
        assert!((p.measured.unwrap() - 0.3).abs() < 1e-9, "{p:?}");
        assert_eq!(p.met(), Some(false));
        // Reports from before the events-off pass still read.
        let old: BenchReport = serde_json::from_str(r#"{"throughput_per_s": 1.0, "p50_ms": null, "p90_ms": null, "p99_ms": null, "setup": {"redis": "", "prefix": "", "cores": 2, "cpu": "", "hosts": 1, "concurrency": 1, "shared_sandbox": false, "batch": 1, "waiters": 1}, "throughput": null, "latency": null, "cold_start": null, "sandbox": null, "scaling": null, "memory": null}"#).unwrap();
        assert!(old.events_off.is_none());
    }
}
