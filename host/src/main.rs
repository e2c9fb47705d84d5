//! The `wasq` binary: parses flags and hands each subcommand to its
//! `XCommand::run`. See `wasq --help`.

mod bench;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // A compiler child of a host (see `wasq_host::Compiler::Process`).
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(wasq_host::CHILD_ARG)) {
        return wasq_host::child_main();
    }
    let cli = commands::Cli::parse();
    commands::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(commands::EXIT_USAGE);
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(commands::exit_code_of(&err))
        }
    }
}
