//! Example wasq tasks, built into `examples.wasm`: the demo, the docs and the
//! benchmarks run these.
//!
//! ```text
//! wasq exec target/tasks/examples.wasm add '[4, 5]'            # 9
//! wasq exec target/tasks/examples.wasm process_file '["a.txt", "one two\nthree", 50]'
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use wasq_guest::log::{debug, info, warn};
use wasq_guest::task;

/// The sum of two integers; wraps on overflow.
#[task]
pub fn add(x: i64, y: i64) -> i64 {
    x.wrapping_add(y)
}

/// Sleeps `seconds` (default 1) through WASI, then answers `processed <name>`.
/// The sleep counts against the call's wall-time limit but burns no fuel.
#[task]
pub fn long_processing(name: String, seconds: Option<f64>) -> Result<String, String> {
    let seconds = seconds.unwrap_or(1.0);
    let pause = Duration::try_from_secs_f64(seconds)
        .map_err(|_| format!("seconds must be a finite number >= 0, got {seconds}"))?;
    info!("processing {name} for {seconds} s");
    std::thread::sleep(pause);
    info!("finished {name}");
    Ok(format!("processed {name}"))
}

/// How often each word occurs, lowercased, with surrounding punctuation trimmed.
#[task]
pub fn word_count(text: String) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for word in text.split_whitespace() {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        if !word.is_empty() {
            *counts.entry(word.to_lowercase()).or_insert(0) += 1;
        }
    }
    debug!("{} distinct words", counts.len());
    counts
}

/// The SHA-256 of the UTF-8 text, as 64 lowercase hex digits.
#[task]
pub fn sha256(text: String) -> String {
    hex_sha256(text.as_bytes())
}

/// The `n`th Fibonacci number, computed by naive recursion on purpose (a CPU-bound
/// task for fuel and timeout tests: `fib(30)` makes 2.7 million calls).
/// `n` must be at most 93, the largest that fits a `u64`.
#[task]
pub fn fib(n: u32) -> Result<u64, String> {
    fn go(n: u32) -> u64 {
        if n < 2 {
            n.into()
        } else {
            go(n - 1) + go(n - 2)
        }
    }
    if n > 93 {
        return Err(format!(
            "fib({n}) does not fit in a u64: n must be at most 93"
        ));
    }
    Ok(go(n))
}

/// What [`process_file`] returns.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FileReport {
    /// The file name, as given.
    pub name: String,
    /// Lines in the text.
    pub lines: u64,
    /// Whitespace-separated words in the text.
    pub words: u64,
    /// The SHA-256 of the text, hex.
    pub sha256: String,
}

/// Counts the lines and words of a file's text and hashes it. With `fail_percent`
/// (0 to 100, default 0) it fails on purpose, with that probability, with a
/// `transient: …` error that is worth retrying: the retry demo uses it.
#[task]
pub fn process_file(
    name: String,
    text: String,
    fail_percent: Option<u32>,
) -> Result<FileReport, String> {
    let fail_percent = fail_percent.unwrap_or(0);
    if fail_percent > 100 {
        return Err(format!(
            "fail_percent must be between 0 and 100, got {fail_percent}"
        ));
    }
    let roll = getrandom::u32().map_err(|err| format!("transient: no randomness: {err}"))? % 100;
    if roll < fail_percent {
        warn!("simulating a failure of {name} (rolled {roll} < {fail_percent})");
        return Err(format!(
            "transient: simulated failure while processing {name}; try again"
        ));
    }
    let report = FileReport {
        lines: text.lines().count() as u64,
        words: text.split_whitespace().count() as u64,
        sha256: hex_sha256(text.as_bytes()),
        name,
    };
    info!(
        "processed {}: {} lines, {} words",
        report.name, report.lines, report.words
    );
    Ok(report)
}

/// A greeting; the smallest task with a result.
#[task]
pub fn hello() -> String {
    "hello from wasq".to_owned()
}

/// Does nothing; the result is `null`. The baseline of the benchmarks.
#[task]
pub fn noop() {}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_compute_what_they_say() {
        assert_eq!(add(4, 5), 9);
        assert_eq!(add(i64::MAX, 1), i64::MIN);
        assert_eq!(fib(10), Ok(55));
        assert_eq!(fib(20), Ok(6765));
        assert!(fib(94).is_err());
        assert_eq!(
            sha256("abc".into()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let counts = word_count("The cat, the hat. THE end!".into());
        assert_eq!(counts["the"], 3);
        assert_eq!(counts.len(), 4);
        assert_eq!(
            long_processing("x".into(), Some(0.0)),
            Ok("processed x".into())
        );
        assert!(long_processing("x".into(), Some(-1.0)).is_err());
        assert_eq!(hello(), "hello from wasq");
    }

    #[test]
    fn process_file_reports_or_fails_transiently() {
        let report = process_file("a.txt".into(), "one two\nthree\n".into(), None).unwrap();
        assert_eq!((report.lines, report.words), (2, 3));
        let err = process_file("a.txt".into(), String::new(), Some(100)).unwrap_err();
        assert!(err.starts_with("transient: "), "{err}");
        assert!(process_file("a.txt".into(), String::new(), Some(101)).is_err());
    }
}
