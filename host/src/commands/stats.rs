//! `wasq stats`: every queue's counts, limits, throughput and latency; and
//! the small formatting helpers the operator commands share.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;
use wasq_broker::{Broker, BrokerConfig, QueueStats};

use super::RedisArgs;

/// Show every queue: waiting, claimed, delayed and dead calls, whether it is
/// paused, its rate limit, and its last minute's throughput and latency.
#[derive(Debug, Args)]
#[command(after_help = "\
Columns: depth (waiting, unclaimed), pending (claimed by a host, not done),
delayed (countdowns, retries, calls held back by a module rate limit), dead
(its dead letters), rate limit, final results per second over the last minute,
and p50/p90/p99 latency from submission to result of the calls hosts finished
in the last minute.

A queue is idle when nothing waits, runs or is delayed in it, it has no dead
letters, no call finished in it in the last minute and no live host consumes
it: idle queues are left out of the table (--all shows them) and marked
\"idle\": true in --json, which lists every queue.")]
pub struct StatsCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// Print a JSON array of queue stats, each with `hosts` (live hosts
    /// consuming it) and `idle`
    #[arg(long)]
    json: bool,
    /// Also show idle queues
    #[arg(long)]
    all: bool,
}

/// A queue's stats with who consumes it, as `--json` prints it.
#[derive(Debug, Serialize)]
struct QueueView {
    #[serde(flatten)]
    stats: QueueStats,
    /// Live hosts consuming it.
    hosts: usize,
    /// Nothing to do or show (see the command's help).
    idle: bool,
}

impl QueueView {
    fn new(stats: QueueStats, hosts: usize) -> Self {
        let idle = hosts == 0
            && stats.depth == 0
            && stats.pending == 0
            && stats.delayed == 0
            && stats.dead == 0
            && stats.throughput_1m == 0.0;
        Self { stats, hosts, idle }
    }
}

impl StatsCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        let (stats, hosts) = tokio::try_join!(broker.queue_stats(), broker.hosts())?;
        let views: Vec<QueueView> = stats
            .into_iter()
            .map(|s| {
                let consumers = hosts
                    .iter()
                    .filter(|(info, _)| info.queues.contains(&s.queue))
                    .count();
                QueueView::new(s, consumers)
            })
            .collect();
        if self.json {
            println!("{}", serde_json::to_string(&views)?);
        } else {
            print!("{}", table(&views, self.all));
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn table(views: &[QueueView], all: bool) -> String {
    let idle = views.iter().filter(|v| v.idle).count();
    let shown: Vec<&QueueView> = views.iter().filter(|v| all || !v.idle).collect();
    if shown.is_empty() {
        return if idle == 0 {
            "no queues yet\n".to_string()
        } else {
            format!("no busy queues ({idle} idle: --all shows them)\n")
        };
    }
    let mut rows = vec![
        [
            "QUEUE", "DEPTH", "PENDING", "DELAYED", "DEAD", "HOSTS", "STATE", "RATE", "DONE/S",
            "P50", "P90", "P99",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in &shown {
        let s = &v.stats;
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), fmt_ms);
        rows.push(vec![
            s.queue.clone(),
            s.depth.to_string(),
            s.pending.to_string(),
            s.delayed.to_string(),
            s.dead.to_string(),
            v.hosts.to_string(),
            if s.paused {
                "paused"
            } else if v.idle {
                "idle"
            } else {
                "active"
            }
            .to_string(),
            s.rate.map_or_else(|| "-".to_string(), |r| r.to_string()),
            format!("{:.2}", s.throughput_1m),
            ms(s.p50_ms),
            ms(s.p90_ms),
            ms(s.p99_ms),
        ]);
    }
    let mut out = columns(&rows);
    if !all && idle > 0 {
        out.push_str(&format!("({idle} idle not shown: --all shows them)\n"));
    }
    out
}

/// Left-aligned columns two spaces apart.
pub(super) fn columns(rows: &[Vec<String>]) -> String {
    let n = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `HH:MM:SS.mmm` (UTC) of ms since the Unix epoch.
pub(super) fn fmt_time(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// A duration in ms, readable: `0.42 ms`, `12.5 ms`, `3.20 s`.
pub(super) fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms >= 10.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// An age in ms, coarse: `850ms`, `12s`, `5m`, `3h`, `2d`.
pub(super) fn fmt_age(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms"),
        1000..60_000 => format!("{}s", ms / 1000),
        60_000..3_600_000 => format!("{}m", ms / 60_000),
        3_600_000..86_400_000 => format!("{}h", ms / 3_600_000),
        _ => format!("{}d", ms / 86_400_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_time(3_723_004), "01:02:03.004");
        assert_eq!(fmt_ms(0.4242), "0.42 ms");
        assert_eq!(fmt_ms(12.49), "12.5 ms");
        assert_eq!(fmt_ms(3200.0), "3.20 s");
        assert_eq!(fmt_age(850), "850ms");
        assert_eq!(fmt_age(12_500), "12s");
        assert_eq!(fmt_age(3 * 86_400_000), "3d");
        let t = columns(&[
            vec!["A".into(), "BB".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(t, "A    BB\nccc  d\n");
    }

    #[test]
    fn an_empty_table_says_so() {
        assert_eq!(table(&[], false), "no queues yet\n");
        let t = table(&[QueueView::new(QueueStats::empty("default"), 1)], false);
        assert!(t.starts_with("QUEUE"), "{t}");
        assert!(t.contains("default") && t.contains("active"), "{t}");
    }

    #[test]
    fn idle_queues_are_left_out_unless_asked_for() {
        let gone = QueueView::new(QueueStats::empty("gone"), 0);
        assert!(gone.idle);
        let waiting = QueueView::new(
            QueueStats {
                depth: 3,
                ..QueueStats::empty("waiting")
            },
            0,
        );
        assert!(!waiting.idle, "calls wait in it");
        let served = QueueView::new(QueueStats::empty("served"), 2);
        assert!(!served.idle, "hosts consume it");
        let views = [gone, waiting, served];
        let t = table(&views, false);
        assert!(
            !t.contains("gone") && t.contains("waiting") && t.contains("served"),
            "{t}"
        );
        assert!(t.ends_with("(1 idle not shown: --all shows them)\n"), "{t}");
        let t = table(&views, true);
        assert!(t.contains("gone") && t.contains("idle"), "{t}");
        let only_idle = [QueueView::new(QueueStats::empty("gone"), 0)];
        assert_eq!(
            table(&only_idle, false),
            "no busy queues (1 idle: --all shows them)\n"
        );
        let json = serde_json::to_value(&views[0]).unwrap();
        assert_eq!(
            (json["queue"].as_str(), json["idle"].as_bool()),
            (Some("gone"), Some(true))
        );
    }
}
