//! Benchmarks of wasq, behind `wasq bench` and `make bench`: throughput and
//! latency through Redis, cold start, the sandbox's own costs, scaling and
//! memory. Numbers are only meaningful as ratios against a baseline measured
//! in the same invocation on the same machine (`scripts/bench.sh` runs the
//! Celery baseline beside it); nothing here is a pass/fail test.
//!
//! This is a module of the `wasq` binary, not of the `wasq_host` library:
//! embedders who link the library do not compile or link it. It drives the
//! library only through its public API, as an embedder would. It is not a
//! crate of its own because `wasq bench` is a subcommand of the `wasq`
//! binary, which lives in `wasq-host`: a `wasq-bench` crate would depend on
//! `wasq-host` and `wasq-host`'s binary on it, a cycle Cargo refuses (the
//! way out, moving the binary to its own package, would move every
//! subcommand for the sake of this one).
//!
//! # Layout
//! - `stats`: percentiles, medians, process CPU and RSS from `/proc`.
//! - `cluster`: the phases through Redis: in-process hosts, a client that
//!   submits in batches and waits, cold start through a host, scaling, and a
//!   real `wasq host run` process for memory.
//! - `sandbox_cost`: the sandbox alone: compile and disk-cache load times,
//!   warm instantiate + call, CPU-bound tasks against native code.
//! - `direct`: calls straight to a real `wasq serve` over HTTP, no broker.
//! - `plain`: plain wasmtime engines with less instrumentation (no fuel, no
//!   epochs), to price fuel metering.
//! - `native`, `soft_sha256`: the CPU-bound example tasks compiled natively.
//! - `report`: the JSON report, the Celery baseline, the targets and the
//!   summary table.

mod cluster;
mod direct;
mod native;
mod plain;
mod report;
mod sandbox_cost;
mod soft_sha256;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;

use wasq_broker::{Broker, EventLevel};

pub use cluster::{HostSetup, Hosts, RedisProbe, Target as RedisTarget};
pub use direct::{Direct, RpcBaseline, direct_table};
pub use report::{
    Baseline, BenchReport, EventsOff, Setup, Throughput, read_reports, table, targets,
};
pub use sandbox_cost::SandboxBench;
pub use stats::{LatencyStats, cores, cpu_model, median};

/// A phase of `wasq bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Many calls, batched submits, every result checked.
    Throughput,
    /// Sequential round trips.
    Latency,
    /// First call of an unseen module; after a restart with disk cache.
    Cold,
    /// Warm calls and CPU-bound work in the sandbox, no broker.
    Sandbox,
    /// 1 host vs 2 hosts.
    Scaling,
    /// RSS of a `wasq host run` process, idle and loaded.
    Memory,
    /// Calls straight to a `wasq serve` process over HTTP, no broker.
    Direct,
}

impl Phase {
    /// Every phase, in the order they run.
    pub const ALL: [Phase; 7] = [
        Phase::Sandbox,
        Phase::Direct,
        Phase::Cold,
        Phase::Throughput,
        Phase::Latency,
        Phase::Scaling,
        Phase::Memory,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Throughput => "throughput",
            Phase::Latency => "latency",
            Phase::Cold => "cold",
            Phase::Sandbox => "sandbox",
            Phase::Scaling => "scaling",
            Phase::Memory => "memory",
            Phase::Direct => "direct",
        }
    }
}

impl std::str::FromStr for Phase {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
                format!("unknown phase {s:?}; phases: {}", names.join(", "))
            })
    }
}

/// Everything one `wasq bench` run needs.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Redis and the key prefix of this run.
    pub target: RedisTarget,
    /// Phases to run.
    pub phases: Vec<Phase>,
    /// `examples.wasm` (tasks `add`, `noop`, `fib`, `sha256`, `long_processing`).
    pub examples: Vec<u8>,
    /// `bench100k.wasm` (task `noop`), for cold start.
    pub bench100k: Vec<u8>,
    /// In-process hosts for throughput and latency.
    pub hosts: usize,
    /// Concurrency of each host.
    pub concurrency: usize,
    /// Whether the hosts share one `Sandbox`.
    pub shared_sandbox: bool,
    /// Calls in the throughput phase.
    pub calls: usize,
    /// Calls per `submit` round trip.
    pub batch: usize,
    /// Batches of results (`Broker::wait_many`, up to 512 calls each)
    /// waited for at once.
    pub waiters: usize,
    /// Warm-up calls before the throughput phase.
    pub warmup: usize,
    /// Round trips in the latency phase.
    pub latency_calls: usize,
    /// Repetitions of the cold-start measurements.
    pub cold_reps: usize,
    /// Sandbox phase settings.
    pub sandbox: SandboxBench,
    /// Calls per configuration in the scaling phase.
    pub scaling_calls: usize,
    /// Concurrency of the host process in the memory phase (its calls in flight).
    pub memory_concurrency: usize,
    /// Seconds each call of the memory phase sleeps.
    pub memory_sleep_s: f64,
    /// The `wasq` binary, for the memory phase's host process and the
    /// direct phase's server.
    pub wasq: PathBuf,
    /// Keep-alive connections of the direct phase's throughput pass.
    pub direct_connections: usize,
    /// Reports each finished phase (progress on a terminal).
    pub progress: fn(&str),
}

impl BenchConfig {
    fn runs(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }
}

/// Runs the chosen phases and reports. The caller cleans up the prefix.
///
/// # Errors
/// On the first phase that fails (Redis unreachable, a wrong result, …).
pub async fn run(config: &BenchConfig) -> anyhow::Result<BenchReport> {
    let progress = config.progress;
    let mut report = BenchReport {
        setup: Setup {
            redis: wasq_broker::redact_url(&config.target.url),
            prefix: config.target.prefix.clone(),
            cores: cores(),
            cpu: cpu_model(),
            hosts: config.hosts,
            concurrency: config.concurrency,
            shared_sandbox: config.shared_sandbox,
            batch: config.batch,
            waiters: config.waiters,
        },
        ..BenchReport::default()
    };

    if config.runs(Phase::Sandbox) {
        let s = sandbox_cost::sandbox_cost(&config.examples, &config.sandbox).await?;
        progress(&format!(
            "sandbox: warm noop {:.1} µs CPU/call, add {:.1} µs; {}",
            s.warm_noop.cpu_us_per_call,
            s.warm_add.cpu_us_per_call,
            s.cpu_bound
                .iter()
                .map(|c| format!(
                    "{} {:.2}× native (fuel {:.2}×)",
                    c.task, c.sandbox_vs_native, c.fuel_cost
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        report.sandbox = Some(s);
    }
    if config.runs(Phase::Direct) {
        let d = direct::direct(
            &config.wasq,
            &config.examples,
            config.latency_calls,
            config.calls,
            config.direct_connections,
        )
        .await?;
        progress(&format!(
            "direct (HTTP, no broker): p50 {:.3} ms, p99 {:.3} ms; {:.0} calls/s over {} connections; server CPU {:.1} µs/call, client {:.1} µs/call",
            d.latency.p50_ms,
            d.latency.p99_ms,
            d.throughput_per_s,
            d.connections,
            d.server_cpu_us_per_call.unwrap_or(f64::NAN),
            d.client_cpu_us_per_call.unwrap_or(f64::NAN),
        ));
        report.direct_p50_ms = Some(d.latency.p50_ms);
        report.direct_p99_ms = Some(d.latency.p99_ms);
        report.direct_throughput_per_s = Some(d.throughput_per_s);
        report.direct = Some(d);
    }
    let needs_redis = [
        Phase::Cold,
        Phase::Throughput,
        Phase::Latency,
        Phase::Scaling,
        Phase::Memory,
    ]
    .into_iter()
    .any(|p| config.runs(p));
    if !needs_redis {
        return Ok(report);
    }

    let target = &config.target;
    let client = Arc::new(target.connect().await?);
    let probe = RedisProbe::connect(&target.url).await.ok();
    let (module, _) = client.put_module(&config.examples).await?;

    if config.runs(Phase::Cold) {
        let c = cluster::cold_start(target, &client, &config.bench100k, config.cold_reps).await?;
        progress(&format!(
            "cold start ({} bytes): first call {:.1} ms, after restart {:.2} ms, warm {:.2} ms; compile quick {:.1} ms, optimised {:.1} ms, deserialize {:.2} ms",
            c.module_bytes,
            c.first_call_ms,
            c.after_restart_ms,
            c.warm_call_ms,
            c.compile_ms,
            c.optimize_ms,
            c.deserialize_ms
        ));
        report.cold_start = Some(c);
    }

    if config.runs(Phase::Throughput) || config.runs(Phase::Latency) {
        let queue = "bench";
        let setup = HostSetup {
            hosts: config.hosts,
            concurrency: config.concurrency,
            shared_sandbox: config.shared_sandbox,
            queue: queue.into(),
            cache_dir: None,
        };
        let hosts = Hosts::start(target, &setup, &client).await?;
        let r = async {
            cluster::warm_up(&client, module, queue, config.warmup).await?;
            // With call events at the default level and off (as Celery runs
            // unless told `-E`), in the order all, off, off, all with half
            // the calls each: what drifts during the phase (the machine,
            // Redis's growing keyspace) weighs on both alike.
            let mut passes: [Vec<Throughput>; 2] = Default::default();
            let mut trips: [Vec<std::time::Duration>; 2] = Default::default();
            for off in [false, true, true, false] {
                let level = if off { EventLevel::Off } else { EventLevel::All };
                client.set_event_level(level).await?;
                let i = usize::from(off);
                if config.runs(Phase::Throughput) {
                    passes[i].push(
                        cluster::throughput(&client, probe.as_ref(), module, queue, config.calls.div_ceil(2), config.batch, config.waiters).await?,
                    );
                }
                if config.runs(Phase::Latency) {
                    trips[i].extend(
                        cluster::latency_samples(&client, module, queue, config.latency_calls.div_ceil(2)).await?,
                    );
                }
            }
            client.set_event_level(EventLevel::All).await?;
            let [all, off] = passes.map(|p| Throughput::merge(&p));
            let [lat_all, lat_off] = trips.map(|t| (!t.is_empty()).then(|| LatencyStats::of(&t)));
            for (t, what) in [(&all, ""), (&off, ", call events off")] {
                if let Some(t) = t {
                    progress(&format!(
                        "throughput{what}: {:.0} calls/s ({} calls in {:.2} s; submit {:.0}/s; CPU/call: this process {:.1} µs, redis {:.1} µs; machine {:.2} cores busy)",
                        t.per_s,
                        t.calls,
                        t.seconds,
                        t.submit_per_s,
                        t.process_cpu_us_per_call.unwrap_or(f64::NAN),
                        t.redis_cpu_us_per_call.unwrap_or(f64::NAN),
                        t.machine_busy_cores.unwrap_or(f64::NAN)
                    ));
                }
            }
            for (l, what) in [(&lat_all, ""), (&lat_off, ", call events off")] {
                if let Some(l) = l {
                    progress(&format!(
                        "latency{what}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms ({} round trips)",
                        l.p50_ms, l.p90_ms, l.p99_ms, l.n
                    ));
                }
            }
            report.throughput_per_s = all.as_ref().map(|t| t.per_s);
            report.throughput = all;
            report.p50_ms = lat_all.map(|l| l.p50_ms);
            report.p90_ms = lat_all.map(|l| l.p90_ms);
            report.p99_ms = lat_all.map(|l| l.p99_ms);
            report.latency = lat_all;
            report.events_off = Some(EventsOff {
                throughput: off,
                latency: lat_off,
            });
            if config.runs(Phase::Latency) {
                let floor = LatencyStats::of(
                    &cluster::latency_floor(&target.url, &target.prefix, config.latency_calls).await?,
                );
                progress(&format!(
                    "latency floor, bare Redis commands of the same shape: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms",
                    floor.p50_ms, floor.p90_ms, floor.p99_ms
                ));
                report.latency_floor = Some(floor);
            }
            anyhow::Ok(())
        }
        .await;
        hosts.stop().await;
        r?;
    }

    if config.runs(Phase::Scaling) {
        let s = cluster::scaling(
            target,
            &client,
            probe.as_ref(),
            module,
            config.scaling_calls,
            config.concurrency,
            config.batch,
            config.waiters,
        )
        .await?;
        let cores = |i: usize| {
            let c = |v: &[Option<f64>]| {
                v.get(i)
                    .copied()
                    .flatten()
                    .map_or("?".into(), |c| format!("{c:.2}"))
            };
            format!(
                "(cores busy: redis {}, machine {})",
                c(&s.redis_cores),
                c(&s.machine_cores)
            )
        };
        progress(&format!(
            "scaling: 1 host {:.0}/s {}, 2 hosts sharing a sandbox {:.0}/s {}, 2 hosts with a sandbox each {:.0}/s {}",
            s.one_host_per_s,
            cores(0),
            s.two_hosts_shared_per_s,
            cores(1),
            s.two_hosts_separate_per_s,
            cores(2)
        ));
        report.scaling = Some(s);
    }

    if config.runs(Phase::Memory) {
        let m = cluster::memory(
            &config.wasq,
            target,
            &client,
            module,
            config.memory_concurrency,
            config.memory_sleep_s,
        )
        .await?;
        progress(&format!(
            "memory: idle host {:.1} MiB ({:.1} MiB warm); peak {:.1} MiB with {} in flight, {:.1} MiB with {} queued ({:.2}×, {}); waves took {:.2} s and {:.2} s",
            m.idle_rss_mib,
            m.idle_warm_rss_mib,
            m.wave_peak_rss_mib[0],
            m.wave_calls[0],
            m.wave_peak_rss_mib[1],
            m.wave_calls[1],
            m.growth,
            if m.bounded { "bounded" } else { "NOT bounded" },
            m.wave_seconds[0],
            m.wave_seconds[1]
        ));
        report.memory = Some(m);
    }
    Ok(report)
}

/// Deletes the run's keys (by prefix, never FLUSHALL). Returns how many.
///
/// # Errors
/// On Redis errors.
pub async fn cleanup(target: &RedisTarget) -> anyhow::Result<u64> {
    RedisProbe::connect(&target.url)
        .await?
        .purge(&target.prefix)
        .await
}

/// Default calls of the throughput phase.
pub const DEFAULT_CALLS: usize = 20_000;
/// Default round trips of the latency phase.
pub const DEFAULT_LATENCY_CALLS: usize = 2_000;
/// Default calls per submit.
pub const DEFAULT_BATCH: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_parse_by_name() {
        for p in Phase::ALL {
            assert_eq!(p.name().parse::<Phase>(), Ok(p));
        }
        assert!("warp".parse::<Phase>().unwrap_err().contains("throughput"));
    }
}
