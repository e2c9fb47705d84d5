//! `wasq result`, `wasq status` and `wasq revoke`.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use wasq_broker::{Broker, BrokerConfig};

use super::{EXIT_FAILED, RedisArgs, UsageError, parse_secs, print_envelope};

/// Print a call's result envelope.
#[derive(Debug, Args)]
pub struct ResultCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// The call id
    id: String,
    /// Wait until the call has a final result
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (with --wait)
    #[arg(long, value_name = "SECS", value_parser = parse_secs, requires = "wait", allow_hyphen_values = true)]
    wait_timeout: Option<Duration>,
    /// Print exactly one JSON envelope on stdout
    #[arg(long)]
    json: bool,
}

impl ResultCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        let env = if self.wait {
            match broker.wait(&self.id, self.wait_timeout).await {
                Ok(Some(env)) => env,
                Ok(None) => {
                    eprintln!("error: no result for {} within the wait timeout", self.id);
                    return Ok(ExitCode::from(EXIT_FAILED));
                }
                Err(wasq_broker::Error::UnknownCall(_)) => return Err(unknown(&self.id)),
                Err(e) => return Err(e.into()),
            }
        } else {
            broker
                .status(&self.id)
                .await?
                .ok_or_else(|| unknown(&self.id))?
        };
        if !env.state.is_final() && !self.json {
            eprintln!(
                "call {} is {} (attempt {}); use --wait to wait for it",
                env.id, env.state, env.attempt
            );
            return Ok(ExitCode::from(EXIT_FAILED));
        }
        Ok(print_envelope(&env, self.json))
    }
}

fn unknown(id: &str) -> anyhow::Error {
    UsageError(format!(
        "unknown call id {id} (never submitted, or its result expired)"
    ))
    .into()
}

/// Print a call's state: queued, running, retrying, succeeded, failed, revoked.
#[derive(Debug, Args)]
pub struct StatusCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// The call id
    id: String,
    /// Print the envelope as JSON
    #[arg(long)]
    json: bool,
}

impl StatusCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        let env = broker
            .status(&self.id)
            .await?
            .ok_or_else(|| unknown(&self.id))?;
        if self.json {
            println!("{}", serde_json::to_string(&env)?);
        } else {
            match &env.error {
                Some(e) => println!("{} ({}: {})", env.state, e.kind, super::shown(&e.message)),
                None => println!("{}", env.state),
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Revoke a call: a queued call never starts, a running one is interrupted.
#[derive(Debug, Args)]
pub struct RevokeCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// The call id
    id: String,
}

impl RevokeCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        if broker.revoke(&self.id).await? {
            println!("revoked {}", self.id);
            Ok(ExitCode::SUCCESS)
        } else {
            eprintln!("error: {} is unknown or already final", self.id);
            Ok(ExitCode::from(EXIT_FAILED))
        }
    }
}
