//! `wasq module push|ls|tag`: the content-addressed module store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use wasq_broker::{Broker, BrokerConfig, ModuleHash};

use super::{RedisArgs, UsageError, read_module};

/// Upload modules, list them, give them names.
#[derive(Debug, Args)]
pub struct ModuleCommand {
    #[command(flatten)]
    redis: RedisArgs,
    #[command(subcommand)]
    command: ModuleSubcommand,
}

#[derive(Debug, Subcommand)]
enum ModuleSubcommand {
    /// Upload a module (stored once under its sha256) and print its hash.
    Push {
        /// The module file (.wasm or .wat)
        file: PathBuf,
        /// Also tag it NAME or NAME@VERSION
        #[arg(long, value_name = "NAME[@VERSION]")]
        tag: Option<String>,
    },
    /// List stored modules with their size and names.
    Ls {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Point NAME (and NAME@VERSION) at a stored module.
    Tag {
        /// NAME or NAME@VERSION
        name: String,
        /// The module hash (HEX or sha256:HEX)
        hash: String,
    },
}

fn split_tag(tag: &str) -> (&str, Option<&str>) {
    match tag.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (tag, None),
    }
}

impl ModuleCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let broker = self.redis.connect(BrokerConfig::default()).await?;
        match self.command {
            ModuleSubcommand::Push { file, tag } => {
                let bytes = read_module(&file)?;
                wasq_host::inspect(&bytes, &wasq_host::SandboxConfig::default()).map_err(|e| {
                    UsageError(format!(
                        "{} is not a valid task module: {}",
                        file.display(),
                        e.message
                    ))
                })?;
                let (hash, new) = broker.put_module(&bytes).await?;
                if let Some(tag) = tag {
                    let (name, version) = split_tag(&tag);
                    broker.tag(name, version, &hash).await?;
                }
                eprintln!("{}", if new { "uploaded" } else { "already stored" });
                println!("sha256:{hash}");
            }
            ModuleSubcommand::Ls { json } => {
                let modules = broker.list_modules().await?;
                if json {
                    println!("{}", serde_json::to_string(&modules)?);
                } else {
                    for m in modules {
                        println!(
                            "sha256:{}  {:>9} bytes  {}",
                            m.hash,
                            m.size,
                            m.names.join(", ")
                        );
                    }
                }
            }
            ModuleSubcommand::Tag { name, hash } => {
                let hash: ModuleHash = hash.parse().map_err(|e| UsageError(format!("{e}")))?;
                let (n, version) = split_tag(&name);
                broker.tag(n, version, &hash).await?;
                println!("{name} -> sha256:{hash}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
