//! `wasq events`: follow the cluster's events stream.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use wasq_broker::{Broker, BrokerConfig, Event, EventLevel, is_valid_entry_id};

use super::stats::{fmt_ms, fmt_time};
use super::{RedisArgs, UsageError};

/// Events read per round trip.
const BATCH: usize = 500;
/// Longest single blocking read; the loop blocks again after it.
const BLOCK: Duration = Duration::from_secs(5);

/// Follow what happens in the cluster: calls queued, started, finished,
/// retried, revoked, dead-lettered; hosts coming and going.
#[derive(Debug, Args)]
#[command(after_help = "\
Each line: time (UTC), kind, call id, task, queue, host, then the error kind
and the submit-to-result latency of final events. Host heartbeats are left
out unless --heartbeats. Follows until Ctrl-C (or --count lines).

Examples:
  wasq events                          # from now on
  wasq events --all --no-follow        # what the stream still holds
  wasq events --queue fast --json | jq .kind
  wasq events --set-level outcomes     # no queued/started events from now on")]
pub struct EventsCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// Only events of this queue
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Only events of this task
    #[arg(long, value_name = "NAME")]
    task: Option<String>,
    /// Only events of this host (its id, or a prefix of it)
    #[arg(long, value_name = "ID")]
    host: Option<String>,
    /// Only events of this kind (repeatable): queued, started, retried,
    /// released, succeeded, failed, revoked, dead, host_online,
    /// host_heartbeat, host_offline
    #[arg(long = "kind", value_name = "KIND")]
    kinds: Vec<String>,
    /// Include host heartbeats (every host sends one per third of its lease)
    #[arg(long)]
    heartbeats: bool,
    /// One JSON object per line
    #[arg(long)]
    json: bool,
    /// Start after this event id instead of now
    #[arg(long, value_name = "ID", conflicts_with = "all")]
    since: Option<String>,
    /// Start from the oldest event the stream still holds
    #[arg(long)]
    all: bool,
    /// Stop after printing this many events
    #[arg(long, value_name = "N", value_parser = super::parse_positive::<u64>, allow_hyphen_values = true)]
    count: Option<u64>,
    /// Print what is there (from the oldest, without --since) and exit
    /// instead of following
    #[arg(long)]
    no_follow: bool,
    /// Set which events every client and host records from now on, and
    /// exit: all (the default), outcomes (no queued/started), off (host
    /// events only). Each call event costs Redis an XADD
    #[arg(
        long,
        value_name = "LEVEL",
        conflicts_with = "level",
        value_parser = PossibleValuesParser::new(["all", "outcomes", "off"])
            .map(|s| s.parse::<EventLevel>().expect("a listed level")),
    )]
    set_level: Option<EventLevel>,
    /// Print which events are recorded (all, outcomes, off) and exit
    #[arg(long)]
    level: bool,
}

impl EventsCommand {
    fn wanted(&self, e: &Event) -> bool {
        if e.kind == "host_heartbeat" && !self.heartbeats && !self.kinds.contains(&e.kind) {
            return false;
        }
        self.queue.as_ref().is_none_or(|q| &e.queue == q)
            && self.task.as_ref().is_none_or(|t| &e.task == t)
            && self
                .host
                .as_ref()
                .is_none_or(|h| e.host.starts_with(h.as_str()))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let Some(id) = &self.since
            && !is_valid_entry_id(id)
        {
            return Err(UsageError(format!(
                "--since {id:?} is not an event id (MS-SEQ, as `wasq events --json` shows)"
            ))
            .into());
        }
        if let Some(k) = self
            .kinds
            .iter()
            .find(|k| !wasq_broker::EVENT_KINDS.contains(&k.as_str()))
        {
            return Err(UsageError(format!(
                "unknown event kind {k:?}; kinds: {}",
                wasq_broker::EVENT_KINDS.join(", ")
            ))
            .into());
        }
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        if let Some(level) = self.set_level {
            let was = broker
                .event_level()
                .await
                .map_or_else(|e| format!("unreadable: {e}"), |l| l.to_string());
            broker.set_event_level(level).await?;
            println!("events: {level} (was {was})");
            return Ok(ExitCode::SUCCESS);
        }
        if self.level {
            println!("{}", broker.event_level().await?);
            return Ok(ExitCode::SUCCESS);
        }
        match broker.event_level().await {
            Ok(EventLevel::All) => {}
            Ok(level) => eprintln!(
                "note: the event level is {level}: {} (`wasq events --set-level all` records every event)",
                match level {
                    EventLevel::Outcomes => "calls' queued and started events are not recorded",
                    _ => "only host events are recorded",
                }
            ),
            Err(e) => eprintln!("warning: {e}"),
        }
        let mut cursor = match (&self.since, self.all || self.no_follow) {
            (Some(id), _) => id.clone(),
            (None, true) => "0".to_string(),
            // From now: after the newest event there is.
            (None, false) => broker
                .events(None, 1, None)
                .await?
                .pop()
                .map_or_else(|| "0".to_string(), |e| e.id),
        };
        let mut printed = 0u64;
        let mut out = std::io::stdout().lock();
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            let block = (!self.no_follow).then_some(BLOCK);
            let events = tokio::select! {
                _ = &mut ctrl_c => return Ok(ExitCode::SUCCESS),
                r = broker.events(Some(&cursor), BATCH, block) => r?,
            };
            if events.is_empty() && self.no_follow {
                return Ok(ExitCode::SUCCESS);
            }
            for e in &events {
                cursor.clone_from(&e.id);
                if !self.wanted(e) {
                    continue;
                }
                let line = if self.json {
                    serde_json::to_string(e)?
                } else {
                    human(e)
                };
                // A closed pipe (`| head`) ends the command quietly.
                if writeln!(out, "{line}").is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
                printed += 1;
                if self.count.is_some_and(|n| printed >= n) {
                    let _ = out.flush();
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if out.flush().is_err() {
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

/// One event as a line for people.
fn human(e: &Event) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut line = format!("{}  {:<14}", fmt_time(e.ts_ms), e.kind);
    if e.kind.starts_with("host_") {
        line.push_str(&format!("  host {}", dash(&e.host)));
    } else {
        line.push_str(&format!(
            "  {:<26}  {:<16}  {:<12}  {}",
            dash(&e.call_id),
            dash(&e.task),
            dash(&e.queue),
            dash(&e.host)
        ));
    }
    if let Some(k) = &e.error_kind {
        line.push_str(&format!("  {k}"));
    }
    if let Some(ms) = e.latency_ms {
        line.push_str(&format!("  {}", fmt_ms(ms)));
    }
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_lines() {
        let e = Event {
            id: "1-0".into(),
            kind: "failed".into(),
            call_id: "01ABC".into(),
            queue: "default".into(),
            task: "add".into(),
            host: "box/1".into(),
            ts_ms: 3_723_004,
            error_kind: Some("trap".into()),
            latency_ms: Some(12.5),
        };
        let line = human(&e);
        assert!(line.starts_with("01:02:03.004  failed"), "{line}");
        for part in ["01ABC", "add", "default", "box/1", "trap", "12.5 ms"] {
            assert!(line.contains(part), "{line}");
        }
    }
}
