//! `wasq bench`: throughput, latency, cold start, sandbox costs, scaling and
//! memory against a Redis server; `--summarize DIR` turns the JSON of
//! several runs and of the Celery baseline into the table of targets.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::bench::{self, BenchConfig, Phase, RedisTarget, SandboxBench};
use clap::Args;

use super::{UsageError, read_module};

/// Flags of `wasq bench`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq bench --redis redis://127.0.0.1:6390 --calls 20000 --hosts 1
  wasq bench --redis redis://127.0.0.1:6390 --phases throughput,latency --json
  wasq bench --summarize target/bench/latest

`make bench` starts its own redis-server and runs this beside the Celery baseline.")]
pub struct BenchCommand {
    /// Redis URL (use a throwaway server: the run adds load, not data it keeps)
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "WASQ_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    url: String,
    /// Key prefix of the run [default: a fresh `wasq-bench-<ulid>`]; its keys are deleted afterwards
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Phases to run, comma separated: sandbox, cold, throughput, latency, scaling, memory
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "sandbox,cold,throughput,latency,scaling,memory"
    )]
    phases: Vec<Phase>,
    /// Calls in the throughput phase
    #[arg(long, value_name = "N", default_value_t = bench::DEFAULT_CALLS, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    calls: usize,
    /// In-process hosts for throughput and latency
    #[arg(long, value_name = "H", default_value_t = 1, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    hosts: usize,
    /// Concurrency of each host
    #[arg(long, value_name = "C", default_value_t = 64, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    concurrency: usize,
    /// Give each host its own Sandbox instead of sharing one
    #[arg(long)]
    separate_sandboxes: bool,
    /// Calls per submit round trip
    #[arg(long, value_name = "B", default_value_t = bench::DEFAULT_BATCH, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    batch: usize,
    /// Batches of results (up to 512 calls each) the client waits for at once
    #[arg(long, value_name = "W", default_value_t = 4, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    waiters: usize,
    /// Warm-up calls before the throughput phase
    #[arg(long, value_name = "N", default_value_t = 1000)]
    warmup: usize,
    /// Round trips in the latency phase
    #[arg(long, value_name = "N", default_value_t = bench::DEFAULT_LATENCY_CALLS, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    latency_calls: usize,
    /// Repetitions of the cold-start measurements (median reported)
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    cold_reps: usize,
    /// Warm sandbox calls per task
    #[arg(long, value_name = "N", default_value_t = 50_000, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    warm_calls: usize,
    /// n of the fib(n) CPU-bound task
    #[arg(long, value_name = "N", default_value_t = 32)]
    fib: u32,
    /// Bytes of text hashed by the sha256 CPU-bound task
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    sha256_bytes: usize,
    /// Repetitions of each CPU-bound run (median reported)
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    cpu_reps: usize,
    /// Calls per configuration in the scaling phase
    #[arg(long, value_name = "N", default_value_t = bench::DEFAULT_CALLS, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    scaling_calls: usize,
    /// Calls in flight at once in the memory phase (the host's --concurrency)
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    memory_calls: usize,
    /// Seconds each call of the memory phase sleeps
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    memory_sleep: f64,
    /// The examples module
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/tasks/examples.wasm"
    )]
    examples: PathBuf,
    /// The ~100 KB module for cold start
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/tasks/bench100k.wasm"
    )]
    bench100k: PathBuf,
    /// Keep the run's keys in Redis (they carry TTLs where the broker sets them)
    #[arg(long)]
    keep_keys: bool,
    /// Print one JSON object (the report) on stdout
    #[arg(long)]
    json: bool,
    /// Report each phase on stderr even when it is not a terminal
    #[arg(long)]
    progress: bool,
    /// Instead of running: read DIR/wasq-*.json and DIR/celery-*.json and print the table of targets
    #[arg(long, value_name = "DIR", conflicts_with = "json")]
    summarize: Option<PathBuf>,
}

fn progress_terminal(line: &str) {
    eprintln!("  {line}");
}

fn progress_quiet(_: &str) {}

impl BenchCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Some(dir) = &self.summarize {
            let runs = bench::read_reports(dir)?;
            let baseline = bench::Baseline::read(dir)?;
            let targets = bench::targets(&runs, &baseline);
            print!("{}", bench::table(&targets, runs.len(), &baseline));
            print!(
                "{}",
                bench::direct_table(&runs, &bench::RpcBaseline::read(dir)?)
            );
            return Ok(ExitCode::SUCCESS);
        }
        let read = |path: &PathBuf| {
            read_module(path).map_err(|e| {
                UsageError(format!(
                    "{e:#}\nbuild the example tasks first: `make tasks`"
                ))
            })
        };
        let examples = read(&self.examples)?;
        let bench100k = if self.phases.contains(&Phase::Cold) {
            read(&self.bench100k)?
        } else {
            Vec::new()
        };
        let prefix = self
            .prefix
            .clone()
            .unwrap_or_else(|| format!("wasq-bench-{}", wasq_broker::new_call_id().to_lowercase()));
        let target = RedisTarget {
            url: self.url.clone(),
            prefix,
        };
        let config = BenchConfig {
            target: target.clone(),
            phases: self.phases.clone(),
            examples,
            bench100k,
            hosts: self.hosts.max(1),
            concurrency: self.concurrency.max(1),
            shared_sandbox: !self.separate_sandboxes,
            calls: self.calls.max(1),
            batch: self.batch.max(1),
            waiters: self.waiters.max(1),
            warmup: self.warmup,
            latency_calls: self.latency_calls.max(1),
            cold_reps: self.cold_reps.max(1),
            sandbox: SandboxBench {
                warm_calls: self.warm_calls.max(1),
                fib_n: self.fib.min(93),
                sha256_bytes: self.sha256_bytes,
                reps: self.cpu_reps.max(1),
            },
            scaling_calls: self.scaling_calls.max(1),
            memory_concurrency: self.memory_calls.max(1),
            memory_sleep_s: self.memory_sleep.max(0.0),
            wasq: std::env::current_exe()?,
            direct_connections: 8,
            progress: if self.progress || !self.json || std::io::stderr().is_terminal() {
                progress_terminal
            } else {
                progress_quiet
            },
        };
        if !self.json {
            eprintln!(
                "wasq bench: {} at {}, prefix {}, {} core(s)",
                self.phases
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(","),
                wasq_broker::redact_url(&target.url),
                target.prefix,
                bench::cores()
            );
        }
        let result = bench::run(&config).await;
        let needs_redis = self
            .phases
            .iter()
            .any(|p| !matches!(p, Phase::Sandbox | Phase::Direct));
        if needs_redis && !self.keep_keys {
            match bench::cleanup(&target).await {
                Ok(n) => {
                    tracing::debug!(keys = n, prefix = %target.prefix, "deleted the run's keys")
                }
                Err(e) => {
                    tracing::warn!(cause = %e, prefix = %target.prefix, "cannot delete the run's keys")
                }
            }
        }
        let report = result?;
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            let baseline = bench::Baseline::default();
            let targets = bench::targets(std::slice::from_ref(&report), &baseline);
            println!("\n{}", bench::table(&targets, 1, &baseline));
            println!(
                "(relative targets need the Celery baseline: `make bench`; `--json` for every figure)"
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
