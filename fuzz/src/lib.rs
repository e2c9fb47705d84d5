//! wasq's fuzz driver, on stable Rust (no cargo-fuzz, no nightly).
//!
//! Four targets, each a loop of seeded random cases for a share of a time
//! budget (`make fuzz`, `FUZZ_SECONDS`):
//!
//! | target | input | checked |
//! | --- | --- | --- |
//! | `sandbox` | wasm-smith modules shaped for the ABI (an exported `memory`, `task.*` functions), with no imports, the `wasq` and WASI imports, a wrong import, or arbitrary ones; loaded and run through [`Sandbox`] under small limits, a quarter also compiled optimised and compared | load and run end `Ok` or in an expected error kind; limits hold; the envelope is readable; quick and optimised code agree |
//! | `validate` | arbitrary bytes, bytes after the wasm header, and mutated valid modules | [`inspect`] and [`Sandbox::load_bytes`] refuse with `invalid_module`/`memory_limit` only, and agree; what loads runs classified |
//! | `args` | arbitrary bytes, random and deeply nested JSON, mutated JSON, as a call's args, and as the JSON of a queued [`wasq_broker::Call`] | the host's array check and an echo task agree with an oracle (serde_json); a call decodes, restricts its limits and submits (to a [`wasq_broker::LocalBroker`]) without panicking |
//! | `envelope` | arbitrary and mutated bytes, random envelopes with results nested up to 140 deep | decoding never panics; every envelope a host could publish (result depth at most 64) reads back equal, alone and in a batch |
//!
//! A panic anywhere (in the case, in a compiler thread) is caught, counted
//! and reported as a finding, with the seed that reproduces it
//! (`wasq-fuzz --target T --replay SEED`).
//!
//! [`Sandbox`]: wasq_host::Sandbox
//! [`Sandbox::load_bytes`]: wasq_host::Sandbox::load_bytes
//! [`inspect`]: wasq_host::inspect

pub mod inputs;
mod targets;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::panic::AssertUnwindSafe;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A fuzz target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// wasm-smith modules loaded and run through the sandbox.
    Sandbox,
    /// Arbitrary and mutated bytes through module validation and loading.
    Validate,
    /// Arbitrary bytes as call args and as queued calls.
    Args,
    /// Arbitrary bytes and random envelopes through envelope decoding.
    Envelope,
}

impl Target {
    /// All targets, in the order they run.
    pub const ALL: [Target; 4] = [
        Target::Sandbox,
        Target::Validate,
        Target::Args,
        Target::Envelope,
    ];

    /// Its name on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Target::Sandbox => "sandbox",
            Target::Validate => "validate",
            Target::Args => "args",
            Target::Envelope => "envelope",
        }
    }

    /// Its share of the time budget: running modules is the costly part.
    pub fn share(self) -> f64 {
        match self {
            Target::Sandbox => 0.55,
            Target::Validate => 0.25,
            Target::Args => 0.12,
            Target::Envelope => 0.08,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown target {s:?}: sandbox, validate, args or envelope"))
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The targets, each for its share of `seconds` (shares are scaled to
    /// the targets chosen).
    pub targets: Vec<Target>,
    /// Total time budget.
    pub seconds: f64,
    /// At most this many cases per target (whichever of time and count
    /// comes first); `None`: as many as the time allows.
    pub cases: Option<u64>,
    /// Base seed; each case's seed derives from it, the target and the
    /// case number.
    pub seed: u64,
    /// Print each finding as it happens.
    pub verbose: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            targets: Target::ALL.to_vec(),
            seconds: 300.0,
            cases: None,
            seed: 0x5eed_f0a5,
            verbose: false,
        }
    }
}

/// Something a case found: a panic, or an outcome that breaks a rule.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The target.
    pub target: Target,
    /// The seed that reproduces it (`--replay`).
    pub seed: u64,
    /// What happened.
    pub what: String,
    /// Whether it was a panic.
    pub panic: bool,
}

/// The counts of one target.
#[derive(Debug, Clone)]
pub struct TargetReport {
    /// The target.
    pub target: Target,
    /// Cases run.
    pub cases: u64,
    /// Outcomes by label (`load:invalid_module`, `run:ok`, `run:trap`, ...).
    pub outcomes: BTreeMap<String, u64>,
    /// Observations worth a look that break no rule, by label, with a
    /// count and one example.
    pub notes: BTreeMap<String, (u64, String)>,
    /// Panics caught (in the case or in any thread it started).
    pub panics: u64,
    /// Outcomes that break a rule (panics included).
    pub findings: u64,
    /// Time spent.
    pub elapsed: Duration,
}

/// Everything one run found.
#[derive(Debug, Clone)]
pub struct Report {
    /// Per target, in the order run.
    pub targets: Vec<TargetReport>,
    /// The first findings (at most 50 are kept).
    pub findings: Vec<Finding>,
}

impl Report {
    /// Whether nothing broke a rule.
    pub fn clean(&self) -> bool {
        self.targets.iter().all(|t| t.findings == 0)
    }

    /// Cases run in all.
    pub fn cases(&self) -> u64 {
        self.targets.iter().map(|t| t.cases).sum()
    }

    /// The summary table: cases per target, outcomes per kind, panics,
    /// findings, elapsed time; then notes and findings.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<9} {:>9} {:>8} {:>7} {:>9} {:>9}",
            "target", "cases", "cases/s", "panics", "findings", "elapsed"
        );
        for t in &self.targets {
            let secs = t.elapsed.as_secs_f64();
            let _ = writeln!(
                s,
                "{:<9} {:>9} {:>8.0} {:>7} {:>9} {:>8.1}s",
                t.target.name(),
                t.cases,
                t.cases as f64 / secs.max(1e-9),
                t.panics,
                t.findings,
                secs
            );
        }
        for t in &self.targets {
            let _ = writeln!(s, "\n{} outcomes:", t.target.name());
            for (label, n) in &t.outcomes {
                let _ = writeln!(s, "  {label:<44} {n:>9}");
            }
            if !t.notes.is_empty() {
                let _ = writeln!(s, "{} notes (break no rule):", t.target.name());
                for (label, (n, example)) in &t.notes {
                    let _ = writeln!(s, "  {label:<44} {n:>9}  e.g. {example}");
                }
            }
        }
        if !self.findings.is_empty() {
            let _ = writeln!(s, "\nfindings (first {}):", self.findings.len());
            for f in &self.findings {
                let _ = writeln!(
                    s,
                    "  [{}] {} --replay {}: {}",
                    if f.panic { "PANIC" } else { "rule" },
                    f.target.name(),
                    f.seed,
                    f.what
                );
            }
        }
        let _ = writeln!(
            s,
            "\n{} cases, {} findings: {}",
            self.cases(),
            self.targets.iter().map(|t| t.findings).sum::<u64>(),
            if self.clean() {
                "clean"
            } else {
                "FOUND PROBLEMS"
            }
        );
        s
    }
}

/// What one case saw.
#[derive(Debug, Default)]
pub(crate) struct CaseLog {
    pub(crate) outcomes: Vec<String>,
    pub(crate) notes: Vec<(String, String)>,
    pub(crate) findings: Vec<String>,
}

impl CaseLog {
    pub(crate) fn outcome(&mut self, label: impl Into<String>) {
        self.outcomes.push(label.into());
    }

    pub(crate) fn note(&mut self, label: impl Into<String>, example: impl Into<String>) {
        self.notes.push((label.into(), shorten(&example.into())));
    }

    pub(crate) fn finding(&mut self, what: impl Into<String>) {
        self.findings.push(shorten(&what.into()));
    }
}

/// A message cut to one readable line.
pub(crate) fn shorten(s: &str) -> String {
    let line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(240)
        .collect();
    if s.chars().count() > 240 {
        format!("{line}…")
    } else {
        line
    }
}

/// Panic messages seen since the hook was installed, from any thread.
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let payload = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(non-string payload)".into());
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            let msg = format!(
                "thread '{}' panicked at {at}: {payload}",
                thread.name().unwrap_or("?")
            );
            eprintln!("wasq-fuzz: {msg}");
            PANICS.lock().unwrap_or_else(|e| e.into_inner()).push(msg);
        }));
    });
}

fn panics_seen() -> usize {
    PANICS.lock().unwrap_or_else(|e| e.into_inner()).len()
}

fn panics_since(n: usize) -> Vec<String> {
    PANICS.lock().unwrap_or_else(|e| e.into_inner())[n..].to_vec()
}

/// A case's seed: the base seed, the target and the case number mixed
/// (splitmix64), so cases are independent and each reproducible alone.
pub fn case_seed(base: u64, target: Target, case: u64) -> u64 {
    let mut z = base
        .wrapping_add((target as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(case.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs the targets of `options` and returns what they found.
///
/// # Errors
/// When the sandboxes cannot be built (wasmtime refuses the configuration).
pub fn run(options: &Options) -> Result<Report, String> {
    install_panic_hook();
    let ctx = targets::Ctx::new()?;
    let total_share: f64 = options.targets.iter().map(|t| t.share()).sum();
    let mut report = Report {
        targets: Vec::new(),
        findings: Vec::new(),
    };
    for &target in &options.targets {
        let budget =
            Duration::from_secs_f64((options.seconds * target.share() / total_share).max(0.0));
        let mut t = TargetReport {
            target,
            cases: 0,
            outcomes: BTreeMap::new(),
            notes: BTreeMap::new(),
            panics: 0,
            findings: 0,
            elapsed: Duration::ZERO,
        };
        let started = Instant::now();
        while options.cases.is_none_or(|n| t.cases < n) && started.elapsed() < budget {
            let seed = case_seed(options.seed, target, t.cases);
            run_one(
                &ctx,
                target,
                seed,
                &mut t,
                &mut report.findings,
                options.verbose,
            );
            t.cases += 1;
        }
        t.elapsed = started.elapsed();
        report.targets.push(t);
    }
    Ok(report)
}

/// Runs one case by its seed and returns its log as text (`--replay`).
///
/// # Errors
/// When the sandboxes cannot be built.
pub fn replay(target: Target, seed: u64) -> Result<(Report, String), String> {
    install_panic_hook();
    let ctx = targets::Ctx::new()?;
    let mut t = TargetReport {
        target,
        cases: 1,
        outcomes: BTreeMap::new(),
        notes: BTreeMap::new(),
        panics: 0,
        findings: 0,
        elapsed: Duration::ZERO,
    };
    let mut findings = Vec::new();
    let started = Instant::now();
    let log = run_one(&ctx, target, seed, &mut t, &mut findings, true);
    t.elapsed = started.elapsed();
    let text = format!(
        "outcomes: {:?}\nnotes: {:?}\nfindings: {:?}",
        log.outcomes, log.notes, log.findings
    );
    Ok((
        Report {
            targets: vec![t],
            findings,
        },
        text,
    ))
}

fn run_one(
    ctx: &targets::Ctx,
    target: Target,
    seed: u64,
    t: &mut TargetReport,
    findings: &mut Vec<Finding>,
    verbose: bool,
) -> CaseLog {
    let before = panics_seen();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| ctx.case(target, seed)));
    let mut log = match result {
        Ok(log) => log,
        Err(_) => {
            let mut log = CaseLog::default();
            log.outcome("panic");
            log
        }
    };
    let panics = panics_since(before);
    for (label, example) in log.notes.drain(..) {
        let entry = t
            .notes
            .entry(label)
            .or_insert_with(|| (0, format!("(--replay {seed}) {example}")));
        entry.0 += 1;
    }
    for label in &log.outcomes {
        *t.outcomes.entry(label.clone()).or_default() += 1;
    }
    let mut found: Vec<(String, bool)> = log.findings.iter().map(|f| (f.clone(), false)).collect();
    found.extend(panics.iter().map(|p| (shorten(p), true)));
    t.panics += panics.len() as u64;
    t.findings += found.len() as u64;
    for (what, panic) in found {
        if verbose {
            eprintln!(
                "wasq-fuzz: {} --replay {seed}: {}{what}",
                target.name(),
                if panic { "PANIC " } else { "" }
            );
        }
        if findings.len() < 50 {
            findings.push(Finding {
                target,
                seed,
                what,
                panic,
            });
        }
    }
    log
}
