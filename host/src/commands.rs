//! The subcommands of `wasq`, one file each, and the flag groups they share.

mod args;
mod bench;
mod completions;
mod dashboard;
mod dead;
mod demo;
mod events;
mod exec;
mod host;
mod hosts;
mod inspect;
mod module;
mod new;
mod queue;
mod result;
mod serve;
mod stats;
mod submit;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use wasq_broker::{CallLimits, Envelope, ModuleHash};

/// Exit status: the task failed (the envelope says why).
pub const EXIT_FAILED: u8 = 1;
/// Exit status: usage error or unreadable input.
pub const EXIT_USAGE: u8 = 2;
/// Exit status: the broker is unreachable.
pub const EXIT_UNREACHABLE: u8 = 3;

/// wasq: run untrusted WebAssembly tasks, locally or on a cluster of hosts.
#[derive(Debug, Parser)]
#[command(name = "wasq", version, about, long_about = None, after_help = "\
Examples:
  wasq exec target/tasks/examples.wasm add '[4, 5]'
  wasq inspect target/tasks/examples.wasm --json")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task once, locally, in the same sandbox hosts use; no broker.
    Exec(exec::ExecCommand),
    /// Show a module's hash, size, tasks and imports without running it.
    Inspect(inspect::InspectCommand),
    /// Run a worker host (`wasq host run`).
    Host(host::HostCommand),
    /// Queue a call; print its id, or its result with --wait.
    Submit(submit::SubmitCommand),
    /// Print a call's result envelope.
    Result(result::ResultCommand),
    /// Print a call's state.
    Status(result::StatusCommand),
    /// Revoke a queued or running call.
    Revoke(result::RevokeCommand),
    /// The content-addressed module store: push, ls, tag.
    Module(module::ModuleCommand),
    /// The whole pipeline on the embedded broker (or --redis), with the example tasks.
    Demo(demo::DemoCommand),
    /// Measure throughput, latency, cold start, sandbox costs and memory against a Redis server.
    Bench(bench::BenchCommand),
    /// Follow the cluster's events: calls queued, started, finished, revoked; hosts coming and going.
    Events(events::EventsCommand),
    /// List the live worker hosts with their load and counters.
    Hosts(hosts::HostsCommand),
    /// Show every queue's depth, claimed, delayed and dead calls, limits, throughput and latency.
    Stats(stats::StatsCommand),
    /// Pause, resume or purge a queue, or limit its rate.
    Queue(queue::QueueCommand),
    /// List, set or lift global rate limits of queues and modules.
    Rate(queue::RateCommand),
    /// List, retry or drop dead letters.
    Dead(dead::DeadCommand),
    /// Serve a live web dashboard of the cluster (hosts, queues, calls, throughput).
    Dashboard(dashboard::DashboardCommand),
    /// Answer calls over HTTP, no broker needed (direct calls).
    Serve(serve::ServeCommand),
    /// Call a task on a `wasq serve` host and print the result.
    Call(serve::CallCommand),
    /// Print a shell completion script (bash, zsh, fish, …).
    Completions(completions::CompletionsCommand),
    /// Print the man page, or write one per subcommand with --dir.
    Man(completions::ManCommand),
    /// Create a task project (Rust crate or C) with one task, ready to build and run.
    New(new::NewCommand),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self.command {
            Command::Exec(c) => c.run().await,
            Command::Serve(c) => c.run().await,
            Command::Call(c) => c.run().await,
            Command::Inspect(c) => c.run().await,
            Command::Host(c) => c.run().await,
            Command::Submit(c) => c.run().await,
            Command::Result(c) => c.run().await,
            Command::Status(c) => c.run().await,
            Command::Revoke(c) => c.run().await,
            Command::Module(c) => c.run().await,
            Command::Demo(c) => c.run().await,
            Command::Bench(c) => c.run().await,
            Command::Events(c) => c.run().await,
            Command::Hosts(c) => c.run().await,
            Command::Stats(c) => c.run().await,
            Command::Queue(c) => c.run().await,
            Command::Rate(c) => c.run().await,
            Command::Dead(c) => c.run().await,
            Command::Dashboard(c) => c.run().await,
            Command::Completions(c) => c.run().await,
            Command::Man(c) => c.run().await,
            Command::New(c) => c.run().await,
        }
    }
}

/// Installs the stderr subscriber: `RUST_LOG` filters (default `warn`, with
/// guest log lines, target `wasq::guest`, off: they are in the envelopes),
/// ANSI colours only on a terminal.
pub fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,wasq::guest=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// A usage problem (exit status 2) raised by a command.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The exit status for an error that ended a command.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<wasq_broker::Error>()
            && e.is_transient()
        {
            return EXIT_UNREACHABLE;
        }
    }
    EXIT_USAGE
}

/// Where the Redis broker is.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL; `rediss://` for TLS, `redis://user:password@host:port/db` for ACLs
    #[arg(
        long = "redis",
        value_name = "URL",
        env = "WASQ_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        global = true
    )]
    url: String,
    /// Prefix of every key, so deployments can share a server
    #[arg(
        long,
        value_name = "PREFIX",
        env = "WASQ_PREFIX",
        default_value = "wasq",
        global = true
    )]
    prefix: String,
    /// PEM file of the CA that signed the Redis server's certificate (rediss:// only)
    #[arg(long, value_name = "FILE", env = "WASQ_REDIS_CA", global = true)]
    redis_ca: Option<PathBuf>,
    /// PEM file of a client certificate for mutual TLS (needs --redis-key)
    #[arg(long, value_name = "FILE", env = "WASQ_REDIS_CERT", global = true)]
    redis_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key (needs --redis-cert)
    #[arg(long, value_name = "FILE", env = "WASQ_REDIS_KEY", global = true)]
    redis_key: Option<PathBuf>,
}

impl RedisArgs {
    /// Connects to Redis. A TLS file that does not fit the URL, or cannot be
    /// read, is a usage error (exit 2); a server that cannot be reached, or
    /// whose certificate the CA did not sign, exits 3.
    pub async fn connect(
        &self,
        config: wasq_broker::BrokerConfig,
    ) -> anyhow::Result<wasq_broker::RedisBroker> {
        let tls = wasq_broker::RedisTls {
            ca: self.redis_ca.clone(),
            cert: self.redis_cert.clone(),
            key: self.redis_key.clone(),
        };
        Ok(wasq_broker::RedisBroker::connect_tls(&self.url, &self.prefix, config, &tls).await?)
    }
}

/// Who may call the HTTP endpoints (`dashboard`, `host run --health/--metrics`).
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Also accept requests whose Host header names HOST (repeatable;
    /// loopback names and the listen address are always accepted)
    #[arg(long = "allow-host", value_name = "HOST")]
    allow_hosts: Vec<String>,
    /// Require `Authorization: Bearer TOKEN` (or, for a browser, opening a
    /// page once with ?token=TOKEN)
    #[arg(long, value_name = "TOKEN", env = "WASQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl HttpArgs {
    /// The guard for a server listening on `addr`.
    pub fn guard(&self, addr: std::net::SocketAddr) -> wasq_host::HttpGuard {
        wasq_host::HttpGuard::new(addr, &self.allow_hosts, self.token.clone())
    }
}

/// The limits a call may ask for (`exec`, `submit`).
#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Fuel budget (roughly wasm instructions) [default: the host's, 10000000000]
    #[arg(long, value_name = "N", value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    fuel: Option<u64>,
    /// Memory limit in bytes [default: the host's, 268435456]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    memory: Option<u64>,
    /// Wall-clock limit in seconds, fractions allowed [default: the host's, 30]
    #[arg(long, value_name = "SECS", value_parser = parse_limit_secs, allow_hyphen_values = true)]
    timeout: Option<Duration>,
    /// Result size limit in bytes [default: the host's, 1048576]
    #[arg(long, value_name = "BYTES", value_parser = parse_positive::<u64>, allow_hyphen_values = true)]
    max_output: Option<u64>,
}

impl LimitsArgs {
    /// As the call's limits.
    pub fn to_call_limits(&self) -> CallLimits {
        CallLimits {
            fuel: self.fuel,
            memory: self.memory,
            timeout: self.timeout,
            max_output: self.max_output,
        }
    }
}

/// Parses seconds with fractions (`0.5`) into a duration; 0 allowed.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("expected a number of seconds, like 30 or 0.5, not {s:?}"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(format!("must be 0 seconds or more, not {s}"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{s} seconds is too long"))
}

/// Parses a time limit: seconds with fractions, more than 0.
pub fn parse_limit_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs(s)
        .map_err(|e| e.replace("must be 0 seconds or more", "must be more than 0 seconds"))?;
    if d.is_zero() {
        return Err(format!("must be more than 0 seconds, not {s}"));
    }
    Ok(d)
}

/// Parses a count or size that must be at least 1 (`--concurrency`,
/// `--fuel`, `--memory`, …).
pub fn parse_positive<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
{
    match s.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err(format!("must be 1 or more, not {s}")),
        Err(_) if s.trim().starts_with('-') => Err(format!("must be 1 or more, not {s}")),
        Err(_) => Err(format!("expected a whole number of 1 or more, not {s:?}")),
    }
}

/// A module as every command names it: a file (`.wasm`, or `.wat` text),
/// `sha256:HEX` (or the 64 hex digits alone), or a name `NAME` /
/// `NAME@VERSION`. A file becomes its
/// bytes (uploaded where a broker lacks them); a path that does not exist
/// is a usage error rather than a name nobody tagged.
pub fn module_ref(arg: &str) -> anyhow::Result<wasq_broker::ModuleRef> {
    use wasq_broker::ModuleRef;
    let path = std::path::Path::new(arg);
    if path.is_file() {
        return Ok(ModuleRef::Bytes(read_module(path)?));
    }
    if arg.starts_with("sha256:") || (arg.len() == 64 && arg.parse::<ModuleHash>().is_ok()) {
        return Ok(ModuleRef::Hash(arg.parse().map_err(|e| {
            UsageError(format!("{arg:?} is not a module hash: {e}"))
        })?));
    }
    if arg.ends_with(".wasm") || arg.ends_with(".wat") || arg.contains('/') {
        return Err(UsageError(format!("cannot read module file {arg}: no such file")).into());
    }
    Ok(ModuleRef::name(arg))
}

/// Reads a module file: `.wasm` bytes, or `.wat` text converted to bytes.
pub fn read_module(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    if bytes.starts_with(b"\0asm") {
        return Ok(bytes);
    }
    if path.extension().is_some_and(|e| e == "wat") {
        return wat::parse_bytes(&bytes)
            .map(|b| b.into_owned())
            .with_context(|| format!("cannot parse WAT text in {}", path.display()));
    }
    Ok(bytes)
}

/// Guest-controlled text made safe to print for people: control characters
/// other than newline and tab (terminal escape sequences, carriage returns
/// that overwrite lines, bells) are shown as `\u{..}` escapes instead of
/// reaching the terminal. JSON output needs none of this: JSON escapes them.
pub fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char = |c: char| c.is_control() && c != '\n' && c != '\t';
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Prints an envelope: exactly one JSON document with `json`, or the result
/// and a one-line summary for people (guest text through [`shown`]).
/// Returns the exit status it implies.
pub fn print_envelope(env: &Envelope, json: bool) -> ExitCode {
    if json {
        println!("{}", serde_json::to_string(env).unwrap_or_default());
    } else {
        if !env.stdout.is_empty() {
            eprintln!("--- stdout ---\n{}", shown(env.stdout.trim_end()));
        }
        if !env.stderr.is_empty() {
            eprintln!("--- stderr ---\n{}", shown(env.stderr.trim_end()));
        }
        for line in &env.logs {
            let level = ["trace", "debug", "info", "warn", "error"][usize::from(line.level.min(4))];
            eprintln!("[{level}] {}", shown(&line.message));
        }
        if env.succeeded() {
            println!(
                "{}",
                serde_json::to_string_pretty(&env.result).unwrap_or_default()
            );
        } else if let Some(e) = &env.error {
            eprintln!("error: {}: {}", e.kind, shown(&e.message));
        }
        eprintln!(
            "{} · fuel {} · {:.2} ms{}",
            env.state,
            env.fuel_used,
            env.duration_ms,
            if env.attempt > 1 {
                format!(" · attempt {}", env.attempt)
            } else {
                String::new()
            }
        );
    }
    if env.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn guest_text_cannot_drive_the_terminal() {
        assert_eq!(shown("plain\n\ttext"), "plain\n\ttext");
        assert_eq!(shown("\u{1b}[2Jgone\r\u{7}"), "\\u{1b}[2Jgone\\u{d}\\u{7}");
        assert_eq!(shown("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn seconds_parse_with_fractions() {
        assert_eq!(parse_secs("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_secs("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_secs("-1").unwrap_err(),
            "must be 0 seconds or more, not -1"
        );
        assert!(parse_secs("x").unwrap_err().contains("like 30 or 0.5"));
        assert!(parse_secs("1e300").is_err());
        assert_eq!(
            parse_limit_secs("0").unwrap_err(),
            "must be more than 0 seconds, not 0"
        );
        assert_eq!(
            parse_limit_secs("-1").unwrap_err(),
            "must be more than 0 seconds, not -1"
        );
        assert_eq!(
            parse_limit_secs("2.5").unwrap(),
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn counts_must_be_positive() {
        assert_eq!(parse_positive::<usize>("16"), Ok(16));
        assert_eq!(
            parse_positive::<usize>("0").unwrap_err(),
            "must be 1 or more, not 0"
        );
        assert_eq!(
            parse_positive::<u64>("-5").unwrap_err(),
            "must be 1 or more, not -5"
        );
        assert!(
            parse_positive::<u32>("many")
                .unwrap_err()
                .contains("whole number")
        );
    }

    #[test]
    fn limit_flags_refuse_zero_and_negatives_with_a_sentence() {
        for args in [
            ["wasq", "exec", "m.wasm", "t", "--timeout", "0"],
            ["wasq", "exec", "m.wasm", "t", "--timeout", "-1"],
            ["wasq", "exec", "m.wasm", "t", "--fuel", "0"],
            ["wasq", "exec", "m.wasm", "t", "--memory", "-4096"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert!(err.to_string().contains("must be"), "{err}");
        }
        let err = Cli::try_parse_from(["wasq", "host", "run", "--concurrency", "0"]).unwrap_err();
        assert!(
            err.to_string().contains("must be 1 or more, not 0"),
            "{err}"
        );
    }
}
