//! `wasq hosts`: the live worker hosts.

use std::process::ExitCode;

use clap::Args;
use wasq_broker::{Broker, BrokerConfig, now_ms};
use wasq_host::HostView;

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
