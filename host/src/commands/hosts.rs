//! `wasq hosts`: the live worker hosts.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use wasq_broker::{Broker, BrokerConfig, HostInfo, HostStats, now_ms};

use super::RedisArgs;
use super::stats::{columns, fmt_age};

/// List the live worker hosts: name, version, queues, concurrency, calls in
/// flight, done and failed, fuel used, uptime and last heartbeat. A host
/// that stops heartbeating drops out once its lease lapses.
#[derive(Debug, Args)]
pub struct HostsCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// Print a JSON array, one object per host
    #[arg(long)]
    json: bool,
}

/// One host as `--json` prints it.
#[derive(Debug, Serialize)]
struct HostView {
    /// Unique id of the host process.
    id: String,
    /// Its machine's name.
    name: String,
    version: String,
    queues: Vec<String>,
    concurrency: usize,
    in_flight: usize,
    done: u64,
    failed: u64,
    fuel_used: u64,
    started_ms: u64,
    uptime_ms: u64,
    heartbeat_ms: u64,
    /// How long ago the last heartbeat was.
    heartbeat_age_ms: u64,
    /// The most a call may ask for on it (absent from hosts that do not say).
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<wasq_broker::Limits>,
}

impl HostView {
    fn new(info: HostInfo, stats: HostStats, now: u64) -> Self {
        Self {
            uptime_ms: if info.started_ms > 0 {
                now.saturating_sub(info.started_ms)
            } else {
                0
            },
            heartbeat_age_ms: now.saturating_sub(stats.heartbeat_ms),
            id: info.id,
            name: info.name,
            version: info.version,
            queues: info.queues,
            concurrency: info.concurrency,
            in_flight: stats.in_flight,
            done: stats.done,
            failed: stats.failed,
            fuel_used: stats.fuel_used,
            started_ms: info.started_ms,
            heartbeat_ms: stats.heartbeat_ms,
            limits: info.limits,
        }
    }
}

impl HostsCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        let now = now_ms();
        let mut hosts: Vec<HostView> = broker
            .hosts()
            .await?
            .into_iter()
            .map(|(info, stats)| HostView::new(info, stats, now))
            .collect();
        hosts.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        if self.json {
            println!("{}", serde_json::to_string(&hosts)?);
            return Ok(ExitCode::SUCCESS);
        }
        if hosts.is_empty() {
            println!("no live hosts");
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![
            [
                "HOST",
                "VERSION",
                "QUEUES",
                "RUNNING",
                "DONE",
                "FAILED",
                "FUEL",
                "UP",
                "HEARTBEAT",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for h in &hosts {
            rows.push(vec![
                h.id.clone(),
                h.version.clone(),
                h.queues.join(","),
                format!("{}/{}", h.in_flight, h.concurrency),
                h.done.to_string(),
                h.failed.to_string(),
                h.fuel_used.to_string(),
                fmt_age(h.uptime_ms),
                format!("{} ago", fmt_age(h.heartbeat_age_ms)),
            ]);
        }
        print!("{}", columns(&rows));
        Ok(ExitCode::SUCCESS)
    }
}
