//! `wasq completions SHELL` and `wasq man`: generated from the same clap
//! definitions as `--help`, so they never disagree with it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, UsageError};

/// Print a shell completion script.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq completions bash > ~/.local/share/bash-completion/completions/wasq
  wasq completions zsh > \"${fpath[1]}/_wasq\"
  wasq completions fish > ~/.config/fish/completions/wasq.fish")]
pub struct CompletionsCommand {
    /// The shell: bash, zsh, fish, elvish or powershell
    shell: Shell,
}

impl CompletionsCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let mut cmd = Cli::command();
        clap_complete::generate(self.shell, &mut cmd, "wasq", &mut std::io::stdout());
        Ok(ExitCode::SUCCESS)
    }
}

/// Print the man page (roff), or write one page per subcommand into a directory.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  wasq man | man -l -
  wasq man --dir /usr/local/share/man/man1")]
pub struct ManCommand {
    /// Write wasq.1 and wasq-SUBCOMMAND.1 for every subcommand into DIR
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl ManCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let cmd = Cli::command();
        match self.dir {
            None => {
                let mut out = Vec::new();
                clap_mangen::Man::new(cmd).render(&mut out)?;
                std::io::stdout().write_all(&out)?;
            }
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(UsageError(format!("{} is not a directory", dir.display())).into());
                }
                clap_mangen::generate_to(cmd, &dir)
                    .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
