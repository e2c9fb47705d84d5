//! `wasq exec`: run one task locally.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wasq_broker::{Limits, new_call_id};
use wasq_host::{Cancel, Compilation, RunOutcome, Sandbox, SandboxConfig};

use super::args::read_args;
use super::{LimitsArgs, UsageError, print_envelope, read_module};

/// Run TASK of MODULE once, in the sandbox, and print its result.
#[derive(Debug, Args)]
pub struct ExecCommand {
    /// The module: a `.wasm` file (or `.wat` text).
    module: PathBuf,
    /// The task to run (`task.<name>` export).
    task: String,
    #[arg(default_value = "[]", help = super::args::ARGS_HELP, allow_hyphen_values = true)]
    args: String,
    #[command(flatten)]
    limits: LimitsArgs,
    /// Print exactly one JSON envelope on stdout.
    #[arg(long)]
    json: bool,
    /// How to compile: quick (starts soonest), optimized (runs fastest) or tiered
    #[arg(long, value_name = "HOW", default_value = "quick")]
    compile: Compilation,
}

impl ExecCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let args = read_args(&self.args)?;
        let bytes = read_module(&self.module)?;
        let sandbox = Sandbox::new(SandboxConfig {
            pool_size: 2,
            compilation: self.compile,
            ..SandboxConfig::default()
        })?;
        let limits: Limits = sandbox.limits().restrict(&self.limits.to_call_limits());
        if let Some(why) = sandbox
            .limits()
            .misfit(&self.limits.to_call_limits(), args.get().len() as u64)
        {
            return Err(UsageError(format!(
                "a host with default limits would refuse this call: {why}"
            ))
            .into());
        }
        let outcome = match sandbox.load_bytes(bytes).await {
            Ok(module) => {
                sandbox
                    .run(
                        &module,
                        &self.task,
                        args.get().as_bytes(),
                        &limits,
                        &Cancel::new(),
                    )
                    .await
            }
            Err(e) => RunOutcome::failed(e),
        };
        let env = outcome.into_envelope(new_call_id(), 1, sandbox.config().host_name.clone());
        Ok(print_envelope(&env, self.json))
    }
}
