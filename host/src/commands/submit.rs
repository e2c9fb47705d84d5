//! `wasq submit`: queue a call (or, with `--batch`, many).

mod batch;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Args};
use serde_json::value::RawValue;
use std::sync::Arc;

use wasq_broker::{
    Broker, BrokerConfig, Call, CallLimits, Client, ErrorKind, Limits, ModuleHash, ModuleRef,
    RedisBroker, RetryPolicy, TaskError, is_valid_queue_name, is_valid_task_name,
};

use super::{EXIT_FAILED, LimitsArgs, RedisArgs, UsageError, parse_secs, print_envelope};

/// Queue a call of TASK in MODULE and print its id (or, with --wait, its result).
#[derive(Debug, Args)]
#[command(after_help = "\
MODULE is a .wasm/.wat path (uploaded first if the cluster lacks it),
sha256:HEX, or a name given with `wasq module tag` (NAME or NAME@VERSION).

Examples:
  wasq submit target/tasks/examples.wasm add '[4, 5]' --wait
  wasq submit examples@1.0 fib '[30]' --retries 3 --queue cpu
  wasq submit sha256:9f2c… long_processing '[\"report\"]' --countdown 60
  wasq submit examples@1.0 add --batch pairs.jsonl --json > results.jsonl")]
#[command(group(ArgGroup::new("waiting").args(["wait", "batch"]).multiple(true)))]
pub struct SubmitCommand {
    #[command(flatten)]
    redis: RedisArgs,
    /// The module: a file path, sha256:HEX, or a name
    module: String,
    /// The task to call
    task: String,
    #[arg(default_value = "[]", help = super::args::ARGS_HELP, allow_hyphen_values = true)]
    args: String,
    #[command(flatten)]
    limits: LimitsArgs,
    /// Retries after a `task_error`, with exponential backoff and jitter
    #[arg(long, value_name = "N")]
    retries: Option<u32>,
    /// The queue to submit to
    #[arg(long, value_name = "NAME", default_value = wasq_broker::DEFAULT_QUEUE)]
    queue: String,
    /// Run no sooner than this many seconds from now
    #[arg(long, value_name = "SECS", value_parser = parse_secs, allow_hyphen_values = true)]
    countdown: Option<Duration>,
    /// Wait for the result and print it (exit status as `wasq exec`)
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this many seconds (with --wait or --batch)
    #[arg(long, value_name = "SECS", value_parser = parse_secs, requires = "waiting", allow_hyphen_values = true)]
    wait_timeout: Option<Duration>,
    /// Print exactly one JSON envelope on stdout (with --wait); with
    /// --batch, one per input line (JSON lines)
    #[arg(long)]
    json: bool,
    /// Submit one call per line of FILE (a JSON args array per line; - for
    /// stdin) in one round trip, then wait for all; progress on stderr, one
    /// result per line on stdout in input order; exit 1 if any failed
    #[arg(long, value_name = "FILE.jsonl", conflicts_with = "args")]
    batch: Option<PathBuf>,
}

/// Resolves a module reference to a stored hash: uploads a file if needed.
/// A name or hash the broker does not have is `Ok(Err(module_not_found))`.
pub async fn resolve_module<B: Broker>(
    broker: &Arc<B>,
    module: &str,
) -> anyhow::Result<Result<ModuleHash, TaskError>> {
    let client = Client::from_arc(broker.clone());
    let not_found = |message: String| Ok(Err(TaskError::new(ErrorKind::ModuleNotFound, message)));
    match super::module_ref(module)? {
        ModuleRef::Hash(hash) if !broker.has_module(&hash).await? => {
            not_found(format!("no module {hash} is stored"))
        }
        reference => match client.resolve(reference).await {
            Ok(hash) => Ok(Ok(hash)),
            Err(wasq_broker::Error::ModuleNotFound(name)) => {
                not_found(format!("no module named {name:?} (see `wasq module ls`)"))
            }
            Err(e) => Err(e.into()),
        },
    }
}

impl SubmitCommand {
    /// Connects to the broker, then refuses (usage error, exit 2) calls that
    /// no live host of the queue would run as asked: args over their
    /// `--max-args`, or limits above theirs. With no live host announcing
    /// its limits, only args over the default limit are refused.
    pub(crate) async fn connect_checked(
        &self,
        args: &[&RawValue],
    ) -> anyhow::Result<Arc<RedisBroker>> {
        let broker = self
            .redis
            .connect(BrokerConfig {
                max_args: super::args::MAX_ARGS_READ,
                ..BrokerConfig::default()
            })
            .await?;
        let client = Client::new(broker);
        let largest = args.iter().map(|a| a.get().len() as u64).max().unwrap_or(0);
        let asked = self.limits.to_call_limits();
        let misfit = match client.queue_limits(&self.queue).await? {
            Some(limits) => limits.misfit(&asked, largest).map(|why| {
                format!(
                    "the hosts of queue `{}` would refuse this call: {why}",
                    self.queue
                )
            }),
            None => Limits::default()
                .misfit(&CallLimits::default(), largest)
                .map(|why| {
                    format!(
                        "{why} (the default; no live host of queue `{}` says it allows more)",
                        self.queue
                    )
                }),
        };
        if let Some(message) = misfit {
            return Err(UsageError(message).into());
        }
        Ok(client.broker().clone())
    }

    /// The call these flags ask for, with `args`.
    pub(crate) fn call(&self, module: ModuleHash, args: Box<RawValue>) -> Call {
        Call {
            limits: self.limits.to_call_limits(),
            retry: self.retries.map(RetryPolicy::new),
            queue: self.queue.clone(),
            ..Call::new(module, &self.task, args)
        }
    }

    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        if !is_valid_task_name(&self.task) {
            return Err(UsageError(format!("invalid task name {:?}", self.task)).into());
        }
        if !is_valid_queue_name(&self.queue) {
            return Err(UsageError(format!("invalid queue name {:?}", self.queue)).into());
        }
        if let Some(path) = &self.batch {
            return batch::run(&self, path).await;
        }
        let args = super::args::read_args(&self.args)?;
        let broker = self.connect_checked(&[&args]).await?;
        let hash = match resolve_module(&broker, &self.module).await? {
            Ok(h) => h,
            Err(e) => {
                eprintln!("error: {}: {}", e.kind, super::shown(&e.message));
                return Ok(ExitCode::from(EXIT_FAILED));
            }
        };
        let call = self.call(hash, args);
        let envelope = if !self.wait || self.countdown.is_some() {
            broker
                .submit(std::slice::from_ref(&call), self.countdown)
                .await?;
            if !self.wait {
                println!("{}", call.id);
                return Ok(ExitCode::SUCCESS);
            }
            broker.wait(&call.id, self.wait_timeout).await?
        } else {
            broker.submit_wait(&call, self.wait_timeout).await?
        };
        match envelope {
            Some(env) => Ok(print_envelope(&env, self.json)),
            None => {
                eprintln!(
                    "error: no result for {} within the wait timeout (the call is still queued or running)",
                    call.id
                );
                Ok(ExitCode::from(EXIT_FAILED))
            }
        }
    }
}
