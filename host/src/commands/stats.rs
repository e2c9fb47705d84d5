//! `wasq stats`: every queue's counts, limits, throughput and latency; and
//! the small formatting helpers the operator commands share.

use std::process::ExitCode;

use clap::Args;
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
in the last minute.")]
pub struct StatsCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// Print a JSON array of queue stats
    #[arg(long)]
    json: bool,
}

impl StatsCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        let stats = broker.queue_stats().await?;
        if self.json {
            println!("{}", serde_json::to_string(&stats)?);
        } else {
            print!("{}", table(&stats));
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn table(stats: &[QueueStats]) -> String {
    if stats.is_empty() {
        return "no queues yet\n".to_string();
    }
    let mut rows = vec![
        [
            "QUEUE", "DEPTH", "PENDING", "DELAYED", "DEAD", "STATE", "RATE", "DONE/S", "P50",
            "P90", "P99",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for s in stats {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), fmt_ms);
        rows.push(vec![
            s.queue.clone(),
            s.depth.to_string(),
            s.pending.to_string(),
            s.delayed.to_string(),
            s.dead.to_string(),
            if s.paused { "paused" } else { "active" }.to_string(),
            s.rate.map_or_else(|| "-".to_string(), |r| r.to_string()),
            format!("{:.2}", s.throughput_1m),
            ms(s.p50_ms),
            ms(s.p90_ms),
            ms(s.p99_ms),
        ]);
    }
    columns(&rows)
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
        assert_eq!(table(&[]), "no queues yet\n");
        let t = table(&[QueueStats::empty("default")]);
        assert!(t.starts_with("QUEUE"), "{t}");
        assert!(t.contains("default"), "{t}");
    }
}
