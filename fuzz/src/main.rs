//! `wasq-fuzz`: runs the fuzz targets for a time budget and prints a
//! summary; exits 1 if anything broke a rule (a panic above all).

use clap::Parser;
use wasq_fuzz::{Options, Target};

/// wasq's fuzz driver (stable Rust): wasm-smith modules through the sandbox,
/// arbitrary bytes through module validation, args and envelope decoding.
#[derive(Parser)]
#[command(name = "wasq-fuzz")]
struct Cli {
    /// Total time budget in seconds, split across the targets.
    #[arg(long, env = "FUZZ_SECONDS", default_value_t = 300.0)]
    seconds: f64,
    /// Targets to run (repeatable): sandbox, validate, args, envelope.
    #[arg(long = "target")]
    targets: Vec<Target>,
    /// At most this many cases per target.
    #[arg(long)]
    cases: Option<u64>,
    /// Base seed (cases derive theirs from it); default: from the clock.
    #[arg(long, env = "FUZZ_SEED")]
    seed: Option<u64>,
    /// Run one case by its seed (as a finding prints it), with one --target.
    #[arg(long)]
    replay: Option<u64>,
    /// Print findings as they happen.
    #[arg(long, short)]
    verbose: bool,
}

fn main() {
    let cli = Cli::parse();
    let targets = if cli.targets.is_empty() {
        Target::ALL.to_vec()
    } else {
        cli.targets
    };
    if let Some(seed) = cli.replay {
        let [target] = targets[..] else {
            eprintln!("wasq-fuzz: --replay needs exactly one --target");
            std::process::exit(2);
        };
        match wasq_fuzz::replay(target, seed) {
            Ok((report, text)) => {
                println!("{text}");
                std::process::exit(if report.clean() { 0 } else { 1 });
            }
            Err(e) => {
                eprintln!("wasq-fuzz: {e}");
                std::process::exit(2);
            }
        }
    }
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let options = Options {
        targets,
        seconds: cli.seconds,
        cases: cli.cases,
        seed,
        verbose: cli.verbose,
    };
    println!(
        "wasq-fuzz: seed {seed}, {} s over {}",
        options.seconds,
        options
            .targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    match wasq_fuzz::run(&options) {
        Ok(report) => {
            print!("{}", report.summary());
            std::process::exit(if report.clean() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("wasq-fuzz: {e}");
            std::process::exit(2);
        }
    }
}
