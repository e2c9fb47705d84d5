//! `wasq demo`: the whole pipeline in one process.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use wasq_broker::{
    Broker, BrokerConfig, Call, Envelope, LocalBroker, ModuleHash, RetryPolicy, new_call_id,
};
use wasq_host::{Sandbox, SandboxConfig, Worker, WorkerConfig};

use super::{EXIT_FAILED, UsageError, read_module};

/// Run the example tasks through the whole pipeline: upload, submit, hosts,
/// retries, results. On the embedded broker unless --redis is given.
#[derive(Debug, Args)]
pub struct DemoCommand {
    /// Run against this Redis instead of the embedded broker
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Key prefix (with --redis); a fresh one per run by default
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// The example tasks module
    #[arg(
        long,
        value_name = "FILE",
        default_value = "target/tasks/examples.wasm"
    )]
    module: PathBuf,
    /// In-process hosts to start
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
    hosts: usize,
}

impl DemoCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let bytes = read_module(&self.module).map_err(|e| {
            UsageError(format!(
                "{e:#}\nbuild the example tasks first: `make tasks`"
            ))
        })?;
        let config = BrokerConfig {
            lease: Duration::from_secs(3),
            ..BrokerConfig::default()
        };
        let ok = match &self.redis {
            None => {
                println!(
                    "wasq demo: embedded broker, {} in-process hosts\n",
                    self.hosts
                );
                demo(
                    Arc::new(LocalBroker::new(config.clone())),
                    &bytes,
                    self.hosts,
                    config.lease,
                )
                .await?
            }
            Some(url) => {
                let prefix = self
                    .prefix
                    .clone()
                    .unwrap_or_else(|| format!("wasq-demo-{}", new_call_id().to_lowercase()));
                println!(
                    "wasq demo: redis at {}, prefix {prefix}, {} in-process hosts\n",
                    wasq_broker::redact_url(url),
                    self.hosts
                );
                let broker =
                    wasq_broker::RedisBroker::connect(url, &prefix, config.clone()).await?;
                demo(Arc::new(broker), &bytes, self.hosts, config.lease).await?
            }
        };
        Ok(if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        })
    }
}

fn call(module: ModuleHash, task: &str, args: Value) -> Call {
    let args = serde_json::value::to_raw_value(&args)
        .unwrap_or_else(|_| serde_json::value::to_raw_value(&json!([])).unwrap());
    Call::new(module, task, args)
}

fn show(env: &Envelope) -> String {
    match &env.error {
        None => format!("{}", env.result),
        Some(e) => format!("{} ({})", e.kind, e.message),
    }
}

async fn demo<B: Broker>(
    broker: Arc<B>,
    bytes: &[u8],
    hosts: usize,
    lease: Duration,
) -> anyhow::Result<bool> {
    let sandbox = Sandbox::new(SandboxConfig {
        pool_size: 64,
        ..SandboxConfig::default()
    })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = Vec::new();
    for _ in 0..hosts.max(1) {
        let worker = Worker::new(
            broker.clone(),
            sandbox.clone(),
            WorkerConfig::new(vec![wasq_broker::DEFAULT_QUEUE.into()], 8, lease),
        );
        let mut rx = stop_rx.clone();
        workers.push(tokio::spawn(worker.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        })));
    }

    let (hash, new) = broker
        .put_module(bytes)
        .await
        .context("cannot upload the example module")?;
    broker.tag("examples", Some("1.0"), &hash).await?;
    println!(
        "1. uploaded examples.wasm ({} bytes) as sha256:{}… ({}), tagged examples@1.0",
        bytes.len(),
        &hash.to_hex()[..12],
        if new { "new" } else { "already stored" }
    );
    let resolved = broker
        .resolve("examples@1.0")
        .await?
        .context("name did not resolve")?;

    // 2. Simple calls, one at a time, like local function calls.
    println!("\n2. calls that read like local ones:");
    let mut all_ok = true;
    for (task, args) in [
        ("add", json!([4, 5])),
        ("fib", json!([25])),
        ("sha256", json!(["hello wasq"])),
        (
            "word_count",
            json!(["the quick brown fox jumps over the lazy dog the end"]),
        ),
    ] {
        let c = call(resolved, task, args.clone());
        let started = Instant::now();
        broker.submit(std::slice::from_ref(&c), None).await?;
        let env = broker
            .wait(&c.id, Some(Duration::from_secs(30)))
            .await?
            .context("no result in 30 s")?;
        all_ok &= env.succeeded();
        println!(
            "   {task}{args} = {}   [{} µs round trip, fuel {}, host {}]",
            show(&env),
            started.elapsed().as_micros(),
            env.fuel_used,
            env.host
        );
    }

    // 3. Long calls in parallel: sleeping guests hold no thread.
    println!("\n3. six long_processing calls (0.5 s each) in parallel:");
    let calls: Vec<Call> = (1..=6)
        .map(|i| {
            call(
                resolved,
                "long_processing",
                json!([format!("report-{i}"), 0.5]),
            )
        })
        .collect();
    let started = Instant::now();
    broker.submit(&calls, None).await?;
    for c in &calls {
        let env = broker
            .wait(&c.id, Some(Duration::from_secs(30)))
            .await?
            .context("no result in 30 s")?;
        all_ok &= env.succeeded();
        println!("   {} on {}", show(&env), env.host);
    }
    println!(
        "   all six in {:.2} s (sequentially: 3 s)",
        started.elapsed().as_secs_f64()
    );

    // 4. The classic: ten files, random failures, automatic retries.
    println!(
        "\n4. ten files processed in parallel; each attempt fails 40% of the time, up to 10 retries:"
    );
    let calls: Vec<Call> = (1..=10)
        .map(|i| {
            let text = format!("file {i}\n").repeat(i * 3);
            let mut c = call(
                resolved,
                "process_file",
                json!([format!("file-{i:02}.txt"), text, 40]),
            );
            // 0.4^11: a file fails all 11 attempts once in about 24 000
            // (with 6 retries it was once in 600: the demo's tests flaked).
            c.retry = Some(RetryPolicy {
                retries: 10,
                backoff: Duration::from_millis(50),
                max_backoff: Duration::from_millis(500),
            });
            c
        })
        .collect();
    broker.submit(&calls, None).await?;
    let mut retried = 0;
    for c in &calls {
        let env = broker
            .wait(&c.id, Some(Duration::from_secs(60)))
            .await?
            .context("no result in 60 s")?;
        retried += env.attempt.saturating_sub(1);
        all_ok &= env.succeeded();
        let summary = match &env.error {
            None => format!(
                "{} lines, {} words",
                env.result["lines"], env.result["words"]
            ),
            Some(e) => format!("{}: {}", e.kind, e.message),
        };
        println!(
            "   {:<12} {:<9} after {} attempt(s): {summary}",
            env.result["name"]
                .as_str()
                .unwrap_or(&format!("{}", c.args)),
            env.state.to_string(),
            env.attempt
        );
    }
    println!("   {retried} retries in all");

    // 5. Limits hold.
    println!("\n5. the sandbox holds:");
    let mut c = call(resolved, "fib", json!([40]));
    c.limits.fuel = Some(1_000_000);
    broker.submit(std::slice::from_ref(&c), None).await?;
    let env = broker
        .wait(&c.id, Some(Duration::from_secs(30)))
        .await?
        .context("no result")?;
    println!("   fib(40) with 1M fuel -> {}", show(&env));
    let mut c = call(resolved, "long_processing", json!(["slow", 10.0]));
    c.limits.timeout = Some(Duration::from_millis(300));
    broker.submit(std::slice::from_ref(&c), None).await?;
    let env = broker
        .wait(&c.id, Some(Duration::from_secs(30)))
        .await?
        .context("no result")?;
    println!(
        "   long_processing(10 s) with a 0.3 s timeout -> {}",
        show(&env)
    );
    let c = call(resolved, "add", json!(["four", 5]));
    broker.submit(std::slice::from_ref(&c), None).await?;
    let env = broker
        .wait(&c.id, Some(Duration::from_secs(30)))
        .await?
        .context("no result")?;
    println!("   add(\"four\", 5) -> {}", show(&env));

    let hosts = broker.hosts().await?;
    println!("\n{} hosts online; shutting down", hosts.len());
    for (info, stats) in &hosts {
        println!(
            "   {}  done {}  failed {}  fuel {}",
            info.id, stats.done, stats.failed, stats.fuel_used
        );
    }
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    println!(
        "\n{}",
        if all_ok {
            "demo finished: every call behaved as expected"
        } else {
            "demo finished with unexpected failures"
        }
    );
    Ok(all_ok)
}
