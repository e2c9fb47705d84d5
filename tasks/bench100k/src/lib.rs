//! A module of about 100 KB for cold-start benchmarks: `noop` measures the
//! start-up itself, and the other tasks are a realistic amount of code beside it
//! (serde-derived types, float parsing and formatting, sorting, SHA-256) that the
//! host must compile before the first call. Growing this crate changes what the
//! cold-start benchmark measures: check `target/tasks/bench100k.wasm` stays
//! between 80 and 150 KB (a test in `guest-sdk/tests/modules.rs` does).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasq_guest::task;

/// Does nothing; the result is `null`.
#[task]
pub fn noop() {}

/// Summary statistics of a list of numbers.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// How many values.
    pub count: usize,
    /// Their mean, `null` for none.
    pub mean: Option<f64>,
    /// The smallest, `null` for none.
    pub min: Option<f64>,
    /// The largest, `null` for none.
    pub max: Option<f64>,
    /// The population standard deviation, `null` for none.
    pub stddev: Option<f64>,
    /// The median, `null` for none.
    pub median: Option<f64>,
}

/// Mean, extremes, standard deviation and median.
#[task]
pub fn stats(values: Vec<f64>) -> Stats {
    let count = values.len();
    if count == 0 {
        return Stats {
            count,
            mean: None,
            min: None,
            max: None,
            stddev: None,
            median: None,
        };
    }
    let mean = values.iter().sum::<f64>() / count as f64;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64;
    let mut sorted = values;
    sorted.sort_by(f64::total_cmp);
    let median = if count % 2 == 1 {
        sorted[count / 2]
    } else {
        (sorted[count / 2 - 1] + sorted[count / 2]) / 2.0
    };
    Stats {
        count,
        mean: Some(mean),
        min: sorted.first().copied(),
        max: sorted.last().copied(),
        stddev: Some(var.sqrt()),
        median: Some(median),
    }
}

/// The SHA-256 of the text, hex, repeated `rounds` times (default 1) over its
/// own output: a CPU-bound task with a small result.
#[task]
pub fn hash_chain(text: String, rounds: Option<u32>) -> String {
    let mut digest = Sha256::digest(text.as_bytes());
    for _ in 1..rounds.unwrap_or(1) {
        digest = Sha256::digest(digest);
    }
    format!("{digest:x}")
}
