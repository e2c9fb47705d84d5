//! `wasq queue purge|pause|resume|rate` and `wasq rate ls|queue|module`:
//! controlling queues and global rate limits.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;
use wasq_broker::{Broker, BrokerConfig, ModuleHash, ModuleRef, Rate, RateScope, RedisBroker};

use super::stats::columns;
use super::{EXIT_FAILED, RedisArgs, UsageError};

/// Pause, resume or purge a queue, or limit its rate.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq queue pause default          # hosts stop claiming; running calls finish
  wasq queue purge default --yes    # drop every waiting call (they end `revoked`)
  wasq queue resume default
  wasq queue rate default 100/s     # at most 100 calls a second, all hosts together
  wasq queue rate default 5/s:20    # ... with bursts of up to 20
  wasq queue rate default off")]
pub struct QueueCommand {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: QueueSubcommand,
}

#[derive(Debug, Subcommand)]
enum QueueSubcommand {
    /// Stop hosts from claiming calls of the queue (calls already claimed
    /// finish; submitting still works, the calls wait).
    Pause {
        /// The queue
        name: String,
    },
    /// Let hosts claim from the queue again.
    Resume {
        /// The queue
        name: String,
    },
    /// Drop every waiting call of the queue, unclaimed or delayed; each ends
    /// `revoked` ("purged") and its waiters wake. Claimed calls are never
    /// touched. Asks first on a terminal; elsewhere needs --yes.
    Purge {
        /// The queue
        name: String,
        /// Do not ask
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Limit how many calls all hosts together claim from the queue, or lift
    /// the limit with `off`.
    Rate {
        /// The queue
        name: String,
        /// N/s, N/m or N/h with an optional :BURST (100/s, 10/m, 5/s:20), or off
        rate: String,
    },
}

impl QueueCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let name = match &self.command {
            QueueSubcommand::Pause { name }
            | QueueSubcommand::Resume { name }
            | QueueSubcommand::Purge { name, .. }
            | QueueSubcommand::Rate { name, .. } => name.clone(),
        };
        if !wasq_broker::is_valid_queue_name(&name) {
            return Err(UsageError(format!(
                "invalid queue name {name:?}: use 1-64 of [A-Za-z0-9_.-]"
            ))
            .into());
        }
        if let QueueSubcommand::Rate { rate, .. } = &self.command {
            let rate = parse_rate(rate)?;
            let broker = self.redis.connect(BrokerConfig::default()).await?;
            return set_rate(&broker, &RateScope::Queue(name.clone()), rate, &name).await;
        }
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        match self.command {
            QueueSubcommand::Pause { .. } => {
                broker.set_paused(&name, true).await?;
                println!("paused {name}");
            }
            QueueSubcommand::Resume { .. } => {
                broker.set_paused(&name, false).await?;
                println!("resumed {name}");
            }
            QueueSubcommand::Purge { yes, .. } => {
                if !yes {
                    let waiting = broker
                        .queue_stats()
                        .await?
                        .into_iter()
                        .find(|s| s.queue == name)
                        .map_or(0, |s| s.depth + s.delayed);
                    let question = format!("drop the {waiting} waiting calls of queue {name}?");
                    if !confirm(&question, "purge")? {
                        eprintln!("nothing purged");
                        return Ok(ExitCode::from(EXIT_FAILED));
                    }
                }
                let n = broker.purge_queue(&name).await?;
                println!("purged {n} calls from {name}");
            }
            QueueSubcommand::Rate { .. } => unreachable!("handled above"),
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// List, set or lift global rate limits of queues and modules.
#[derive(Debug, Args)]
#[command(after_help = "\
A limit is a token bucket in Redis, shared by every host: a queue limit caps
the calls claimed from the queue, a module limit the calls of that module
started from any queue. Calls over a module's limit wait in their queue's
delayed set, so other modules' calls behind them are not held up.

Examples:
  wasq rate ls
  wasq rate module examples@1.0 10/s
  wasq rate module sha256:9f86d0... off
  wasq rate queue default 100/s     # the same as `wasq queue rate default 100/s`")]
pub struct RateCommand {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: RateSubcommand,
}

#[derive(Debug, Subcommand)]
enum RateSubcommand {
    /// List every rate limit.
    Ls {
        /// Print a JSON array of {scope, name, rate, per_second, burst}
        #[arg(long)]
        json: bool,
    },
    /// Limit a queue (or lift its limit with `off`).
    Queue {
        /// The queue
        name: String,
        /// N/s, N/m or N/h with an optional :BURST, or off
        rate: String,
    },
    /// Limit a module, in every queue (or lift its limit with `off`).
    Module {
        /// The module: sha256:HEX, HEX, NAME or NAME@VERSION
        module: String,
        /// N/s, N/m or N/h with an optional :BURST, or off
        rate: String,
    },
}

/// One limit as `wasq rate ls --json` prints it.
#[derive(Debug, Serialize)]
struct LimitView {
    /// `queue` or `module`.
    scope: &'static str,
    /// The queue name or the module hash.
    name: String,
    /// As written: `100/s`, `5/s:20`.
    rate: String,
    per_second: f64,
    burst: u32,
}

impl RateCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match &self.command {
            RateSubcommand::Ls { json } => {
                let broker = self.redis.connect(BrokerConfig::default()).await?;
                let limits: Vec<LimitView> = broker
                    .rate_limits()
                    .await?
                    .into_iter()
                    .map(|(scope, rate)| {
                        let (scope, name) = match scope {
                            RateScope::Queue(q) => ("queue", q),
                            RateScope::Module(m) => ("module", format!("sha256:{m}")),
                        };
                        LimitView {
                            scope,
                            name,
                            rate: rate.to_string(),
                            per_second: rate.per_second,
                            burst: rate.burst,
                        }
                    })
                    .collect();
                if *json {
                    println!("{}", serde_json::to_string(&limits)?);
                } else if limits.is_empty() {
                    println!("no rate limits");
                } else {
                    let mut rows = vec![vec!["SCOPE".into(), "NAME".into(), "RATE".into()]];
                    for l in limits {
                        rows.push(vec![l.scope.into(), l.name, l.rate]);
                    }
                    print!("{}", columns(&rows));
                }
                Ok(ExitCode::SUCCESS)
            }
            RateSubcommand::Queue { name, rate } => {
                if !wasq_broker::is_valid_queue_name(name) {
                    return Err(UsageError(format!("invalid queue name {name:?}")).into());
                }
                let rate = parse_rate(rate)?;
                let broker = self.redis.connect(BrokerConfig::default()).await?;
                set_rate(&broker, &RateScope::Queue(name.clone()), rate, name).await
            }
            RateSubcommand::Module { module, rate } => {
                let rate = parse_rate(rate)?;
                let broker = self.redis.connect(BrokerConfig::default()).await?;
                let hash = resolve(&broker, module).await?;
                set_rate(&broker, &RateScope::Module(hash), rate, module).await
            }
        }
    }
}

/// `off` or a rate.
fn parse_rate(s: &str) -> anyhow::Result<Option<Rate>> {
    if matches!(s, "off" | "none") {
        return Ok(None);
    }
    Ok(Some(s.parse().map_err(|e| UsageError(format!("{e}")))?))
}

async fn set_rate(
    broker: &RedisBroker,
    scope: &RateScope,
    rate: Option<Rate>,
    shown: &str,
) -> anyhow::Result<ExitCode> {
    broker.set_rate_limit(scope, rate).await?;
    let what = match scope {
        RateScope::Queue(_) => format!("queue {shown}"),
        RateScope::Module(m) if shown.contains(&m.to_hex()) => format!("module sha256:{m}"),
        RateScope::Module(m) => format!("module {shown} (sha256:{m})"),
    };
    match rate {
        Some(r) => println!("{what}: at most {r}"),
        None => println!("{what}: no limit"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The hash of a module named as every command names it
/// ([`super::module_ref`]); a file is hashed, not uploaded.
async fn resolve(broker: &RedisBroker, module: &str) -> anyhow::Result<ModuleHash> {
    match super::module_ref(module)? {
        ModuleRef::Hash(hash) => Ok(hash),
        ModuleRef::Bytes(bytes) => Ok(ModuleHash::of(&bytes)),
        ModuleRef::Name(name) => match broker.resolve(&name).await {
            Ok(Some(hash)) => Ok(hash),
            Ok(None) => {
                Err(UsageError(format!("no module named {name:?} (see `wasq module ls`)")).into())
            }
            Err(wasq_broker::Error::InvalidName(_)) => Err(UsageError(format!(
                "{name:?} is neither a module file, a hash (sha256:HEX) nor a name"
            ))
            .into()),
            Err(e) => Err(e.into()),
        },
    }
}

/// Asks on a terminal; elsewhere refuses (the caller said no `--yes`).
pub(super) fn confirm(question: &str, action: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(format!(
            "refusing to {action} without --yes when stdin is not a terminal"
        ))
        .into());
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_off() {
        assert_eq!(parse_rate("off").unwrap(), None);
        assert_eq!(
            parse_rate("5/s:20").unwrap(),
            Some(Rate {
                per_second: 5.0,
                burst: 20
            })
        );
        assert!(parse_rate("fast").is_err());
    }
}
