//! `wasq host run`: a worker host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use wasq_broker::{BrokerConfig, DEFAULT_MAX_DELIVERIES, Limits, is_valid_queue_name};
use wasq_host::{
    Compilation, Compiler, HostLabels, HostMetrics, Sandbox, SandboxConfig, Worker, WorkerConfig,
};

use super::{HttpArgs, RedisArgs, UsageError, parse_limit_secs, parse_positive, parse_secs};

/// Run a worker host.
#[derive(Debug, Args)]
pub struct HostCommand {
    #[command(subcommand)]
    command: HostSubcommand,
}

#[derive(Debug, Subcommand)]
enum HostSubcommand {
    /// Take calls from the queues, run them in the sandbox, publish results.
    /// Stops on SIGINT/SIGTERM: finishes running calls (up to --grace), hands
    /// the rest back to their queue, exits 0.
    Run(HostRunCommand),
}

impl HostCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            HostSubcommand::Run(c) => c.run().await,
        }
    }
}

/// The operator's maximum limits: calls may ask for less, never more.
#[derive(Debug, Clone, Args)]
pub struct HostLimitsArgs {
    /// Most fuel a call may use
    #[arg(long, value_name = "N", default_value_t = wasq_broker::DEFAULT_FUEL, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    fuel: u64,
    /// Most memory (bytes) a call may use
    #[arg(long, value_name = "BYTES", default_value_t = wasq_broker::DEFAULT_MEMORY, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    memory: u64,
    /// Longest wall time (seconds) a call may take
    #[arg(long, value_name = "SECS", value_parser = parse_limit_secs, default_value = "30", allow_hyphen_values = true)]
    timeout: Duration,
    /// Largest result (bytes)
    #[arg(long, value_name = "BYTES", default_value_t = wasq_broker::DEFAULT_MAX_OUTPUT, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    max_output: u64,
    /// Largest captured stdout, and stderr (bytes each)
    #[arg(long, value_name = "BYTES", default_value_t = wasq_broker::DEFAULT_MAX_STDIO, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    max_stdio: u64,
    /// Largest total of log messages (bytes)
    #[arg(long, value_name = "BYTES", default_value_t = wasq_broker::DEFAULT_MAX_LOGS, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    max_logs: u64,
    /// Largest args (bytes)
    #[arg(long, value_name = "BYTES", default_value_t = wasq_broker::DEFAULT_MAX_ARGS, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    max_args: u64,
    /// Largest module (bytes)
    #[arg(long, value_name = "BYTES", default_value_t = wasq_broker::DEFAULT_MAX_MODULE, value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    max_module: u64,
}

impl HostLimitsArgs {
    /// The largest module accepted.
    pub(crate) fn max_module(&self) -> u64 {
        self.max_module
    }

    /// As the sandbox's maximum limits.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            memory: self.memory,
            timeout: self.timeout,
            max_output: self.max_output,
            max_stdio: self.max_stdio,
            max_logs: self.max_logs,
            max_args: self.max_args,
        }
    }
}

/// Flags of `wasq host run`.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq host run --concurrency 32
  WASQ_REDIS_URL=rediss://user:pass@redis.internal:6380 wasq host run --queue fast --queue slow")]
pub struct HostRunCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// Queue to consume (repeatable)
    #[arg(long = "queue", value_name = "NAME", default_value = wasq_broker::DEFAULT_QUEUE)]
    queues: Vec<String>,
    /// Calls run at once (sleeping calls hold no thread)
    #[arg(long, value_name = "N", default_value_t = 16, env = "WASQ_CONCURRENCY", value_parser = parse_positive::<usize>, allow_hyphen_values = true)]
    concurrency: usize,
    #[command(flatten)]
    limits: HostLimitsArgs,
    /// Directory for compiled modules, so a restarted host starts warm
    #[arg(long, value_name = "DIR", env = "WASQ_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Key file authenticating the --cache-dir entries (default DIR.key beside
    /// the directory; created, mode 0600, if missing)
    #[arg(
        long,
        value_name = "FILE",
        env = "WASQ_CACHE_KEY",
        requires = "cache_dir"
    )]
    cache_key: Option<PathBuf>,
    /// How new modules compile: tiered (quick code first, optimised swapped
    /// in from the background), optimized, or quick
    #[arg(
        long,
        value_name = "HOW",
        default_value = "tiered",
        env = "WASQ_COMPILE"
    )]
    compile: Compilation,
    /// Modules compiled at once (each in a child process killed at its
    /// deadline); calls of further new modules wait, and past a short
    /// backlog go back to their queue for a while
    #[arg(long, value_name = "N", default_value_t = wasq_host::DEFAULT_MAX_COMPILES, value_parser = parse_positive::<usize>, allow_hyphen_values = true)]
    compile_jobs: usize,
    /// Host lease (seconds): calls of a host silent this long are reclaimed
    #[arg(long, value_name = "SECS", value_parser = parse_limit_secs, default_value = "10", allow_hyphen_values = true)]
    lease: Duration,
    /// Deliveries of one call before it fails as `lost` and is dead-lettered
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_DELIVERIES, value_parser = parse_positive::<u32>, allow_hyphen_values = true)]
    max_deliveries: u32,
    /// How long results are kept (seconds); 0 keeps them forever
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "86400", env = "WASQ_RESULT_TTL", allow_hyphen_values = true)]
    result_ttl: Duration,
    /// On shutdown, how long running calls may finish (seconds)
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30", allow_hyphen_values = true)]
    grace: Duration,
    /// Serve `GET /health` here: 200 while the host consumes, 503 when its
    /// loop stalls or Redis stops answering for --health-stall
    #[arg(long, value_name = "ADDR")]
    health: Option<SocketAddr>,
    /// How long without progress (loop turn, broker answer) before /health fails (seconds)
    #[arg(long, value_name = "SECS", value_parser = parse_limit_secs, default_value = "15", allow_hyphen_values = true)]
    health_stall: Duration,
    /// Serve Prometheus metrics at `GET /metrics` here (e.g. 127.0.0.1:9187)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    http: HttpArgs,
    /// Also answer calls over HTTP here, as `wasq serve` does (with the
    /// --token, --allow-host of the other endpoints)
    #[arg(long, value_name = "ADDR", env = "WASQ_LISTEN")]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    listen_args: super::serve::ListenArgs,
    /// Print no startup line
    #[arg(long, short)]
    quiet: bool,
}

/// The line `host run` prints to stderr once it is up: who it is, where its
/// broker is (without password), what it consumes and allows, and where its
/// endpoints listen.
fn startup_line(
    cmd: &HostRunCommand,
    host_id: &str,
    concurrency: usize,
    endpoints: &[(&str, String)],
) -> String {
    let l = cmd.limits.limits();
    let mut line = format!(
        "wasq host {host_id} up: {} (prefix {}) · queues {} · concurrency {concurrency} · limits fuel {}, memory {} B, timeout {} s, output {} B, args {} B",
        wasq_broker::redact_url(&cmd.redis.url),
        cmd.redis.prefix,
        cmd.queues.join(", "),
        l.fuel,
        l.memory,
        l.timeout.as_secs_f64(),
        l.max_output,
        l.max_args,
    );
    for (what, url) in endpoints {
        line.push_str(&format!(" · {what} {url}"));
    }
    line
}

impl HostRunCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        for q in &self.queues {
            if !is_valid_queue_name(q) {
                return Err(UsageError(format!(
                    "invalid queue name {q:?}: use 1-64 of [A-Za-z0-9_.-]"
                ))
                .into());
            }
        }
        let broker_config = BrokerConfig {
            lease: self.lease,
            max_deliveries: self.max_deliveries,
            result_ttl: self.result_ttl,
            max_module: self.limits.max_module,
            max_args: self.limits.max_args,
            ..BrokerConfig::default()
        };
        let broker = Arc::new(self.redis.connect(broker_config).await?);
        let concurrency = self.concurrency;
        // Direct calls get slots of their own beside the queue's.
        let slots = if self.listen.is_some() {
            concurrency.saturating_mul(2)
        } else {
            concurrency
        };
        let sandbox = Sandbox::new(SandboxConfig {
            limits: self.limits.limits(),
            max_module: self.limits.max_module,
            pool_size: u32::try_from(slots).unwrap_or(u32::MAX).saturating_add(4),
            cache_dir: self.cache_dir.clone(),
            cache_key: self.cache_key.clone(),
            compilation: self.compile,
            compiler: Compiler::current_exe().context("cannot find the wasq executable")?,
            max_compiles: self.compile_jobs,
            // New modules loading at once: at most half the slots' worth.
            compile_queue: (concurrency / 2).saturating_sub(self.compile_jobs),
            ..SandboxConfig::default()
        })?;
        let mut config = WorkerConfig::new(self.queues.clone(), concurrency, self.lease);
        config.grace = self.grace;
        let metrics_sandbox = sandbox.clone();
        let mut endpoints = Vec::new();
        if let Some(addr) = self.listen {
            let server =
                super::serve::direct_server(sandbox.clone(), Some(broker.clone()), concurrency);
            self.listen_args.start(addr, &self.http, &server).await?;
            let scheme = self.listen_args.scheme();
            endpoints.push(("calls", format!("{scheme}://{addr}/v1/call/MODULE/TASK")));
        }
        let worker = Worker::new(broker, sandbox, config);
        if let Some(addr) = self.health {
            let stats = worker.stats();
            let stall = self.health_stall;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for health checks on {addr}"))?;
            endpoints.push((
                "health",
                format!("http://{}/health", listener.local_addr()?),
            ));
            let app = axum::Router::new().route(
                "/health",
                axum::routing::get(move || {
                    let healthy = stats.healthy(stall);
                    async move {
                        if healthy {
                            (axum::http::StatusCode::OK, "ok\n")
                        } else {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "stalled\n")
                        }
                    }
                }),
            );
            let app = self.http.guard(addr).protect(app);
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(cause = %e, "the health server stopped");
                }
            });
        }
        if let Some(addr) = self.metrics {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics scrapes on {addr}"))?;
            endpoints.push((
                "metrics",
                format!("http://{}/metrics", listener.local_addr()?),
            ));
            let metrics = Arc::new(HostMetrics::new(
                worker.stats(),
                metrics_sandbox,
                HostLabels {
                    host: worker.config().host_id.clone(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    concurrency,
                },
            ));
            let guard = self.http.guard(addr);
            tokio::spawn(async move {
                if let Err(e) = metrics.serve(listener, guard).await {
                    tracing::error!(cause = %e, "the metrics server stopped");
                }
            });
        }
        if !self.quiet {
            eprintln!(
                "{}",
                startup_line(&self, &worker.config().host_id, concurrency, &endpoints)
            );
        }
        worker.run(shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown signal received");
}
