//! `wasq inspect`: what a module offers, without running it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wasq_host::SandboxConfig;

use super::{UsageError, read_module};

/// Show a module's sha256, size, tasks and imports.
#[derive(Debug, Args)]
pub struct InspectCommand {
    /// The module: a `.wasm` file (or `.wat` text).
    module: PathBuf,
    /// Print one JSON object: {"sha256", "size", "tasks", "not_tasks", "imports"}
    /// (`not_tasks`: the other exports, each {"export", "why"}).
    #[arg(long)]
    json: bool,
}

impl InspectCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let bytes = read_module(&self.module)?;
        let report = wasq_host::inspect(&bytes, &SandboxConfig::default()).map_err(|e| {
            UsageError(format!(
                "{} is not a valid task module: {}",
                self.module.display(),
                e.message
            ))
        })?;
        if self.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("sha256   {}", report.sha256);
            println!("size     {} bytes", report.size);
            println!("tasks    {}", report.tasks.join(", "));
            println!("imports  {}", report.imports.join(", "));
            if !report.not_tasks.is_empty() {
                println!("not tasks:");
                for other in &report.not_tasks {
                    println!("  {}  {}", other.export, other.why);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
