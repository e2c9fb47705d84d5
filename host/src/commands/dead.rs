//! `wasq dead ls|retry|drop`: the dead letters.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use wasq_broker::{Broker, BrokerConfig, DEFAULT_DEAD_LETTER_CAP, DeadLetter};

use super::queue::confirm;
use super::stats::{columns, fmt_time};
use super::{EXIT_FAILED, RedisArgs, UsageError};

/// Inspect, retry or drop dead letters: queue entries taken out of
/// circulation (garbage, or calls every host of which died).
#[derive(Debug, Args)]
#[command(after_help = "\
A retried call goes back to the queue it was dead-lettered from with the same
call id (its `lost` result is discarded, so `wasq result ID --wait` gives the
new one), attempt 1 and a fresh delivery count. Garbage cannot be retried,
only dropped.

Examples:
  wasq dead ls
  wasq dead retry 1718000000000-0
  wasq dead retry --all
  wasq dead drop --all --yes")]
pub struct DeadCommand {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: DeadSubcommand,
}

#[derive(Debug, Subcommand)]
enum DeadSubcommand {
    /// List dead letters, newest first.
    Ls {
        /// Print a JSON array of dead letters
        #[arg(long)]
        json: bool,
        /// Show at most this many
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = super::parse_positive::<usize>, allow_hyphen_values = true)]
        limit: usize,
    },
    /// Queue dead-lettered calls again.
    Retry {
        /// The dead letter's entry id (see `wasq dead ls`)
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        entry: Option<String>,
        /// Every dead letter that holds a call
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters.
    Drop {
        /// The dead letter's entry id (see `wasq dead ls`)
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        entry: Option<String>,
        /// Every dead letter (asks first on a terminal; elsewhere needs --yes)
        #[arg(long)]
        all: bool,
        /// Do not ask
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

impl DeadCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if let DeadSubcommand::Retry { entry: Some(e), .. }
        | DeadSubcommand::Drop { entry: Some(e), .. } = &self.command
            && !wasq_broker::is_valid_entry_id(e)
        {
            return Err(UsageError(format!(
                "{e:?} is not a dead-letter entry id (MS-SEQ, as `wasq dead ls` shows)"
            ))
            .into());
        }
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        match self.command {
            DeadSubcommand::Ls { json, limit } => {
                let dead = broker.dead_letters(limit).await?;
                if json {
                    println!("{}", serde_json::to_string(&dead)?);
                } else {
                    print!("{}", table(&dead));
                }
                Ok(ExitCode::SUCCESS)
            }
            DeadSubcommand::Retry {
                entry: Some(entry), ..
            } => match broker.dead_retry(&entry).await {
                Ok(true) => {
                    println!("retried {entry}");
                    Ok(ExitCode::SUCCESS)
                }
                Ok(false) => {
                    eprintln!(
                        "error: no dead letter {entry} to retry (gone, or its call is live again or succeeded)"
                    );
                    Ok(ExitCode::from(EXIT_FAILED))
                }
                Err(wasq_broker::Error::InvalidCall(m)) => Err(UsageError(m).into()),
                Err(e) => Err(e.into()),
            },
            DeadSubcommand::Retry { .. } => {
                let (mut retried, mut skipped) = (0u64, 0u64);
                for letter in broker.dead_letters(all_limit()).await? {
                    match broker.dead_retry(&letter.entry_id).await {
                        Ok(true) => retried += 1,
                        Ok(false) => skipped += 1,
                        Err(wasq_broker::Error::InvalidCall(m)) => {
                            eprintln!("skipped {}: {m}", letter.entry_id);
                            skipped += 1;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                println!("retried {retried} dead letters, skipped {skipped}");
                Ok(ExitCode::SUCCESS)
            }
            DeadSubcommand::Drop {
                entry: Some(entry), ..
            } => {
                if broker.dead_drop(&entry).await? {
                    println!("dropped {entry}");
                    Ok(ExitCode::SUCCESS)
                } else {
                    eprintln!("error: no dead letter {entry}");
                    Ok(ExitCode::from(EXIT_FAILED))
                }
            }
            DeadSubcommand::Drop { yes, .. } => {
                let letters = broker.dead_letters(all_limit()).await?;
                if !yes
                    && !confirm(
                        &format!("drop {} dead letters?", letters.len()),
                        "drop dead letters",
                    )?
                {
                    eprintln!("nothing dropped");
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                let mut dropped = 0u64;
                for letter in &letters {
                    if broker.dead_drop(&letter.entry_id).await? {
                        dropped += 1;
                    }
                }
                println!("dropped {dropped} dead letters");
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}

/// How many dead letters `--all` reads: all a stream with the default cap holds.
fn all_limit() -> usize {
    usize::try_from(DEFAULT_DEAD_LETTER_CAP).unwrap_or(usize::MAX)
}

fn table(dead: &[DeadLetter]) -> String {
    if dead.is_empty() {
        return "no dead letters\n".to_string();
    }
    let mut rows = vec![
        [
            "ENTRY",
            "TIME",
            "QUEUE",
            "CALL",
            "ERROR",
            "DELIVERIES",
            "REASON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for d in dead {
        let mut reason = d.reason.clone();
        if reason.chars().count() > 60 {
            reason = reason.chars().take(57).collect::<String>() + "...";
        }
        rows.push(vec![
            d.entry_id.clone(),
            fmt_time(d.ts_ms),
            d.queue.clone(),
            if d.id.is_empty() {
                "-".into()
            } else {
                d.id.clone()
            },
            d.error
                .as_ref()
                .map_or_else(|| "garbage".to_string(), |e| e.kind.to_string()),
            d.deliveries.to_string(),
            reason,
        ]);
    }
    columns(&rows)
}
