//! `wasq submit MODULE TASK --batch FILE.jsonl`: one call per line of FILE,
//! all queued in one round trip, then waited for.
//!
//! - Every line is checked before anything is queued: a bad line is a usage
//!   error (exit 2) naming its line number. Blank lines are skipped.
//! - Waiting collects [`WAIT_CHUNK`] calls per wait ([`Broker::wait_many`]:
//!   one round trip looks at all of them, and it blocks on one at a time),
//!   at most [`WAIT_CONCURRENCY`] waits at once (each may hold a Redis
//!   connection while it blocks), so a batch of any size holds a bounded
//!   number of connections.
//! - Output follows the input order, whatever order calls finish in: one
//!   line per input line on stdout (`--json`: the envelope; otherwise
//!   `LINE<TAB>ID<TAB>STATE<TAB>RESULT or KIND: MESSAGE`). Progress goes to
//!   stderr, as a live bar only on a terminal, then one summary line.
//! - Exit status: 0 all succeeded, 1 any failed or did not finish in
//!   `--wait-timeout`, 2 bad input, 3 broker unreachable.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::value::RawValue;
use wasq_broker::{Broker, Call, Envelope, State};

use super::{SubmitCommand, resolve_module};
use crate::commands::args::parse_args;
use crate::commands::{EXIT_FAILED, UsageError};

/// Waits in flight at once.
pub const WAIT_CONCURRENCY: usize = 64;
/// Calls one wait collects.
pub const WAIT_CHUNK: usize = 64;

/// Reads a JSON-lines file of argument arrays: `(line number, args)` per
/// non-blank line.
///
/// # Errors
/// A [`UsageError`] naming the file and line of the first bad line, or an
/// unreadable or empty file.
pub fn read_batch(path: &Path) -> anyhow::Result<Vec<(usize, Box<RawValue>)>> {
    let stdin = path == Path::new("-");
    let name = if stdin {
        "standard input".to_string()
    } else {
        path.display().to_string()
    };
    let read = if stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map(|_| text)
    } else {
        std::fs::read_to_string(path)
    };
    let text = read.map_err(|e| UsageError(format!("cannot read batch file {name}: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        out.push((i + 1, parse_args(line, &format!("{name}: line {}", i + 1))?));
    }
    if out.is_empty() {
        return Err(UsageError(format!(
            "{name} has no calls: write one JSON args array per line, like [4, 5]"
        ))
        .into());
    }
    Ok(out)
}

/// Counts of a finished batch.
#[derive(Debug, Default)]
struct Tally {
    succeeded: usize,
    failed: usize,
    unfinished: usize,
}

impl Tally {
    fn add(&mut self, env: &Envelope) {
        if env.succeeded() {
            self.succeeded += 1;
        } else if env.state.is_final() {
            self.failed += 1;
        } else {
            self.unfinished += 1;
        }
    }
}

/// One output line for people and pipes: `LINE ID STATE RESULT`, tab-separated.
fn plain_line(line: usize, env: &Envelope) -> String {
    let detail = match (&env.state, &env.error) {
        (State::Succeeded, _) => serde_json::to_string(&env.result).unwrap_or_default(),
        (_, Some(e)) => format!("{}: {}", e.kind, e.message.replace(['\t', '\n'], " ")),
        _ => String::new(),
    };
    format!("{line}\t{}\t{}\t{detail}", env.id, env.state)
}

/// Runs `wasq submit --batch` for `cmd`, whose flags apply to every call.
pub async fn run(cmd: &SubmitCommand, path: &Path) -> anyhow::Result<ExitCode> {
    let lines = read_batch(path)?;
    let args: Vec<&RawValue> = lines.iter().map(|(_, a)| a.as_ref()).collect();
    let broker = cmd.connect_checked(&args).await?;
    let hash = match resolve_module(&broker, &cmd.module).await? {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {}: {}", e.kind, crate::commands::shown(&e.message));
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let calls: Vec<Call> = lines
        .iter()
        .map(|(_, args)| cmd.call(hash, args.clone()))
        .collect();
    let started = Instant::now();
    broker
        .submit(&calls, cmd.countdown)
        .await
        .with_context(|| format!("cannot submit {} calls", calls.len()))?;

    let bar = if std::io::stderr().is_terminal() {
        let bar =
            ProgressBar::with_draw_target(Some(calls.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:32} {pos}/{len} calls · {msg}",
        ) {
            bar.set_style(style);
        }
        bar.set_message("0 failed");
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    } else {
        ProgressBar::hidden()
    };

    let deadline = cmd.wait_timeout.map(|t| Instant::now() + t);
    let broker = &broker;
    let mut waits = futures::stream::iter(calls.chunks(WAIT_CHUNK).enumerate())
        .map(|(c, chunk)| async move {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ids: Vec<String> = chunk.iter().map(|call| call.id.clone()).collect();
            let envs = broker.wait_many(&ids, left).await?;
            let mut out = Vec::with_capacity(chunk.len());
            for (k, (call, env)) in chunk.iter().zip(envs).enumerate() {
                let env = match env {
                    Some(env) => env,
                    // Not final in time: report where it stands.
                    None => broker
                        .status(&call.id)
                        .await?
                        .unwrap_or_else(|| Envelope::pending(call.id.clone(), State::Queued)),
                };
                out.push((c * WAIT_CHUNK + k, env));
            }
            anyhow::Ok(out)
        })
        .buffer_unordered(WAIT_CONCURRENCY);

    let mut tally = Tally::default();
    let mut finished: BTreeMap<usize, Envelope> = BTreeMap::new();
    let mut next = 0;
    let mut stdout = std::io::stdout().lock();
    while let Some(item) = waits.next().await {
        let done = match item {
            Ok(x) => x,
            Err(e) => {
                bar.abandon();
                return Err(e.context("cannot wait for the batch's results"));
            }
        };
        bar.inc(done.len() as u64);
        for (i, env) in done {
            tally.add(&env);
            finished.insert(i, env);
        }
        let rate = bar.position() as f64 / started.elapsed().as_secs_f64().max(1e-3);
        bar.set_message(format!("{} failed · {rate:.0} calls/s", tally.failed));
        // Print in input order: everything up to the first call not yet back.
        while let Some(env) = finished.remove(&next) {
            let text = if cmd.json {
                serde_json::to_string(&env).unwrap_or_default()
            } else {
                plain_line(lines[next].0, &env)
            };
            bar.suspend(|| writeln!(stdout, "{text}"))
                .context("cannot write to stdout")?;
            next += 1;
        }
    }
    bar.finish_and_clear();
    stdout.flush().context("cannot write to stdout")?;

    let elapsed = started.elapsed().as_secs_f64();
    let unfinished = if tally.unfinished > 0 {
        format!(", {} unfinished", tally.unfinished)
    } else {
        String::new()
    };
    eprintln!(
        "{} calls: {} succeeded, {} failed{unfinished} in {elapsed:.2} s ({:.0} calls/s)",
        calls.len(),
        tally.succeeded,
        tally.failed,
        calls.len() as f64 / elapsed.max(1e-9),
    );
    if tally.failed > 0 || tally.unfinished > 0 {
        Ok(ExitCode::from(EXIT_FAILED))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn lines_parse_with_their_numbers_and_blanks_skipped() {
        let f = file("[1, 2]\n\n  \n[\"a\"]\n[]");
        let got = read_batch(f.path()).unwrap();
        let nums: Vec<usize> = got.iter().map(|(n, _)| *n).collect();
        assert_eq!(nums, [1, 4, 5]);
        assert_eq!(got[1].1.get(), "[\"a\"]");
    }

    #[test]
    fn a_bad_line_is_a_usage_error_naming_it() {
        for (text, line) in [("[1]\n{\"a\": 1}\n", 2), ("[1]\n[2]\n[3\n", 3), ("7\n", 1)] {
            let f = file(text);
            let err = read_batch(f.path()).unwrap_err();
            assert!(err.downcast_ref::<UsageError>().is_some(), "{err:#}");
            assert!(
                err.to_string().contains(&format!("line {line} ")),
                "{err:#}"
            );
        }
        let err = read_batch(file("\n\n").path()).unwrap_err();
        assert!(err.to_string().contains("no calls"), "{err:#}");
    }

    #[test]
    fn plain_lines_show_result_or_error() {
        let mut ok = Envelope::pending("01A", State::Succeeded);
        ok.result = serde_json::json!({"n": 9});
        assert_eq!(plain_line(3, &ok), "3\t01A\tsucceeded\t{\"n\":9}");
        let bad = Envelope::failed(
            "01B",
            wasq_broker::TaskError::new(wasq_broker::ErrorKind::Trap, "out of\tbounds"),
        );
        assert_eq!(plain_line(4, &bad), "4\t01B\tfailed\ttrap: out of bounds");
    }
}
