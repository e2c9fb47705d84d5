//! The four targets: one case each, from a seed. The `sandbox`,
//! `validate` and `args` cases are here (they share the sandboxes of
//! [`Ctx`]); `targets/checks` holds what every case checks of an outcome,
//! `targets/envelope` the `envelope` target.

mod checks;
mod envelope;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use wasq_broker::{
    Broker, BrokerConfig, Call, Envelope, ErrorKind, Limits, LocalBroker, LogLine, ModuleHash,
    State, TaskError,
};
use wasq_host::{Cancel, Compilation, LoadedModule, RunOutcome, Sandbox, SandboxConfig, inspect};

use crate::inputs::{self, Imports};
use crate::{CaseLog, Target};

use checks::{ECHO_KINDS, RUN_KINDS, check_readable, compare, depth, pattern, same, shorten_value};
use envelope::envelope;

/// Deepest result a host publishes (`MAX_RESULT_DEPTH` in the sandbox,
/// "Input and output" in docs/abi.md).
const MAX_RESULT_DEPTH: usize = 64;

/// Slack on the wall-clock limit before a run counts as overrunning it
/// (compile-free instantiation, a loaded machine).
const TIMEOUT_SLACK: Duration = Duration::from_secs(2);

/// The sandboxes and fixtures every case shares.
pub(crate) struct Ctx {
    rt: tokio::runtime::Runtime,
    /// Quick code (the default of `wasq exec`).
    quick: Sandbox,
    /// Optimised code on the pooling allocator (what hosts end up running).
    optimized: Sandbox,
    /// `task.echo`, loaded in `quick`.
    echo: std::sync::Arc<LoadedModule>,
    /// Hand-written modules to mutate.
    seeds: Vec<Vec<u8>>,
}

/// The host's maximum limits in the fuzz sandboxes: small, so a case is
/// quick, but large enough for real work.
fn host_limits() -> Limits {
    Limits {
        fuel: 1_000_000,
        memory: 4 << 20,
        timeout: Duration::from_millis(250),
        max_output: 64 << 10,
        max_stdio: 4 << 10,
        max_logs: 4 << 10,
        max_args: 64 << 10,
    }
}

fn sandbox_config(compilation: Compilation) -> SandboxConfig {
    SandboxConfig {
        limits: host_limits(),
        max_module: 1 << 20,
        compile_timeout: Duration::from_secs(20),
        pool_size: 4,
        compilation,
        cache_capacity: 64,
        host_name: "wasq-fuzz".into(),
        ..SandboxConfig::default()
    }
}

impl Ctx {
    pub(crate) fn new() -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a tokio runtime: {e}"))?;
        let quick = Sandbox::new(sandbox_config(Compilation::Quick)).map_err(|e| e.to_string())?;
        let optimized =
            Sandbox::new(sandbox_config(Compilation::Optimized)).map_err(|e| e.to_string())?;
        let echo_bytes = wat::parse_str(inputs::ECHO_WAT).map_err(|e| e.to_string())?;
        let echo = rt
            .block_on(quick.load_bytes(echo_bytes))
            .map_err(|e| format!("the echo module does not load: {e}"))?;
        Ok(Self {
            rt,
            quick,
            optimized,
            echo,
            seeds: inputs::seed_modules(),
        })
    }

    pub(crate) fn case(&self, target: Target, seed: u64) -> CaseLog {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut log = CaseLog::default();
        match target {
            Target::Sandbox => self.sandbox(&mut rng, &mut log),
            Target::Validate => self.validate(&mut rng, &mut log),
            Target::Args => self.args(&mut rng, &mut log),
            Target::Envelope => envelope(&mut rng, &mut log),
        }
        log
    }

    /// wasm-smith modules through `load_bytes` and `run`.
    fn sandbox(&self, rng: &mut StdRng, log: &mut CaseLog) {
        let imports = match rng.random_range(0..100) {
            0..30 => Imports::None,
            30..85 => Imports::Wasq,
            85..95 => Imports::Wrong,
            _ => Imports::Arbitrary,
        };
        let Some((bytes, shape)) = inputs::smith_module(rng, imports) else {
            log.outcome("wasm-smith gave up");
            return;
        };
        let tag = imports.label();
        let limits = call_limits(rng);
        let loaded = self.rt.block_on(self.quick.load_bytes(bytes.clone()));
        let module = match loaded {
            Ok(m) => {
                log.outcome(format!("load:ok [{tag}]"));
                if shape.bad_task_type {
                    log.finding("a module with a task of type [i32] -> [i32] loaded");
                }
                if u64::from(shape.memory_pages) * 65_536 > host_limits().memory {
                    log.finding(format!(
                        "a module with {} initial pages loaded under a {}-byte limit",
                        shape.memory_pages,
                        host_limits().memory
                    ));
                }
                m
            }
            Err(e) => {
                log.outcome(format!("load:{} [{tag}]", e.kind));
                if !matches!(e.kind, ErrorKind::InvalidModule | ErrorKind::MemoryLimit) {
                    log.finding(format!("load failed with unexpected kind: {e}"));
                } else if shape.compatible
                    && matches!(imports, Imports::None | Imports::Wasq)
                    && !shape.bad_task_type
                    && u64::from(shape.memory_pages) * 65_536 <= host_limits().memory
                {
                    // A module meant to be valid was refused: not wrong in
                    // itself (the engine is stricter than wasm-smith in
                    // places), but worth seeing why.
                    log.note(format!("refused: {}", pattern(&e.message)), e.message);
                }
                return;
            }
        };
        let task = pick_task(rng, &module);
        let args = if rng.random_bool(0.7) {
            "[]".to_string()
        } else {
            inputs::args(rng)
        };
        let outcome = self.run(&self.quick, &module, &task, args.as_bytes(), &limits);
        self.check_run(log, &module, &task, &outcome, &limits, RUN_KINDS);
        // A quarter of the modules also compile optimised, on the pooling
        // allocator: the code hosts end up running must agree.
        if rng.random_bool(0.25) {
            // A guest that reads a clock or random bytes may take another
            // path on each run: only the others must agree.
            let deterministic = inspect(&bytes, self.quick.config()).is_ok_and(|r| {
                !r.imports.iter().any(|i| {
                    matches!(
                        i.as_str(),
                        "wasi_snapshot_preview1.random_get"
                            | "wasi_snapshot_preview1.clock_time_get"
                            | "wasi_snapshot_preview1.poll_oneoff"
                    )
                })
            });
            match self.rt.block_on(self.optimized.load_bytes(bytes)) {
                Ok(opt) => {
                    let other = self.run(&self.optimized, &opt, &task, args.as_bytes(), &limits);
                    self.check_run(log, &opt, &task, &other, &limits, RUN_KINDS);
                    if deterministic {
                        compare(log, &outcome, &other);
                    } else {
                        log.outcome("compare:skipped (reads a clock or randomness)");
                    }
                }
                Err(e) => log.finding(format!(
                    "loads quick but optimised compilation refuses it: {e}"
                )),
            }
        }
    }

    /// Arbitrary and mutated bytes through `inspect` and `load_bytes`.
    fn validate(&self, rng: &mut StdRng, log: &mut CaseLog) {
        let bytes = match rng.random_range(0..10) {
            0 | 1 => {
                log.outcome("input:random");
                inputs::bytes(rng, 300)
            }
            2 | 3 => {
                log.outcome("input:header+random");
                let mut b = b"\0asm\x01\0\0\0".to_vec();
                b.extend(inputs::bytes(rng, 300));
                b
            }
            _ => {
                log.outcome("input:mutated module");
                let mut base = if rng.random_bool(0.5) {
                    self.seeds[rng.random_range(0..self.seeds.len())].clone()
                } else {
                    let imports = if rng.random_bool(0.5) {
                        Imports::Wasq
                    } else {
                        Imports::None
                    };
                    inputs::smith_module(rng, imports)
                        .map(|(b, _)| b)
                        .unwrap_or_else(|| self.seeds[0].clone())
                };
                let donor = &self.seeds[rng.random_range(0..self.seeds.len())];
                inputs::mutate(rng, &mut base, 8, donor);
                base
            }
        };
        let config = self.quick.config();
        let report = inspect(&bytes, config);
        match &report {
            Ok(_) => log.outcome("inspect:ok"),
            Err(e) => {
                log.outcome(format!("inspect:{}", e.kind));
                if !matches!(e.kind, ErrorKind::InvalidModule | ErrorKind::MemoryLimit) {
                    log.finding(format!("inspect failed with unexpected kind: {e}"));
                }
            }
        }
        let loaded = self.rt.block_on(self.quick.load_bytes(bytes.clone()));
        match (&report, &loaded) {
            (_, Ok(_)) => log.outcome("load:ok"),
            (_, Err(e)) => {
                log.outcome(format!("load:{}", e.kind));
                if !matches!(e.kind, ErrorKind::InvalidModule | ErrorKind::MemoryLimit) {
                    log.finding(format!("load failed with unexpected kind: {e}"));
                }
            }
        }
        match (&report, &loaded) {
            (Err(e), Ok(_)) => log.finding(format!("inspect refuses ({e}) but load accepts")),
            (Err(a), Err(b)) if a.kind != b.kind => {
                log.finding(format!("inspect says {a} but load says {b}"))
            }
            (Ok(r), Ok(m)) if r.tasks != m.tasks => log.finding(format!(
                "inspect lists tasks {:?}, load {:?}",
                r.tasks, m.tasks
            )),
            // `inspect` is a streaming scan of what the ABI allows, not a
            // validation: compilation refuses the rest (docs/abi.md).
            (Ok(_), Err(e)) => {
                let stage = if e.message.starts_with("failed to parse") {
                    "invalid wasm"
                } else if e.message.starts_with("failed to compile") {
                    "invalid function body"
                } else {
                    "other"
                };
                log.note(format!("inspect ok, compile refused: {stage}"), &e.message)
            }
            _ => {}
        }
        let Ok(module) = loaded else { return };
        if rng.random_bool(0.125) {
            match self.rt.block_on(self.optimized.load_bytes(bytes)) {
                Ok(_) => log.outcome("load-optimized:ok"),
                Err(e) => log.finding(format!(
                    "loads quick but optimised compilation refuses it: {e}"
                )),
            }
        }
        if let Some(task) = module.tasks.first().cloned() {
            let limits = Limits {
                fuel: 100_000,
                timeout: Duration::from_millis(100),
                ..host_limits()
            };
            let outcome = self.run(&self.quick, &module, &task, b"[]", &limits);
            self.check_run(log, &module, &task, &outcome, &limits, RUN_KINDS);
        }
    }

    /// Arbitrary bytes as args (checked against an oracle through the echo
    /// task) and as the JSON of a queued call.
    fn args(&self, rng: &mut StdRng, log: &mut CaseLog) {
        let bytes: Vec<u8> = match rng.random_range(0..12) {
            0 => inputs::bytes(rng, 64),
            1..=4 => inputs::args(rng).into_bytes(),
            5 => {
                let depth = if rng.random_bool(0.5) {
                    rng.random_range(58..70)
                } else {
                    rng.random_range(120..136)
                };
                inputs::nested(rng, depth).into_bytes()
            }
            6 | 7 => {
                let mut b = inputs::args(rng).into_bytes();
                inputs::mutate(rng, &mut b, 3, b"[]{}\",:\\ud800 1e999\xff\x00");
                b
            }
            8 => {
                const EDGE: &[&[u8]] = &[
                    b"",
                    b" ",
                    b"[",
                    b"]",
                    b"[]]",
                    b"[[]",
                    b"\xef\xbb\xbf[]",
                    b"[]\x00",
                    b"[\"\xff\"]",
                    b"[\"\\ud800\"]",
                    b"[1e999]",
                    b"[-]",
                    b"[01]",
                    b"[1,]",
                    b"[\"a\nb\"]",
                    b"[] []",
                    b"[]/**/",
                    b"[NaN]",
                    b"\t[\r\n]\t",
                ];
                EDGE[rng.random_range(0..EDGE.len())].to_vec()
            }
            9 => {
                // Just over and at the args limit.
                let n = host_limits().max_args as usize + rng.random_range(0..2);
                let mut b = vec![b' '; n];
                b[0] = b'[';
                b[n - 1] = b']';
                b
            }
            _ => inputs::json(rng, 4).into_bytes(),
        };
        self.echo_oracle(log, &bytes);
        self.queued_call(rng, log, &bytes);
    }

    /// Runs the echo task on `bytes` and checks the outcome against what
    /// serde_json (strict JSON) says about them.
    fn echo_oracle(&self, log: &mut CaseLog, bytes: &[u8]) {
        let limits = host_limits();
        let outcome = self.run(&self.quick, &self.echo, "echo", bytes, &limits);
        self.check_run(log, &self.echo, "echo", &outcome, &limits, RUN_KINDS);
        let got = match &outcome.result {
            Ok(_) => "ok".to_string(),
            Err(e) => e.kind.to_string(),
        };
        log.outcome(format!("echo:{got}"));
        let strict = serde_json::from_slice::<Value>(bytes);
        let expected: Result<Value, ErrorKind> = if bytes.len() as u64 > limits.max_args {
            Err(ErrorKind::BadInput)
        } else {
            match &strict {
                Ok(v @ Value::Array(_)) if depth(v) <= MAX_RESULT_DEPTH => Ok(v.clone()),
                Ok(Value::Array(_)) => Err(ErrorKind::OutputLimit),
                _ => Err(ErrorKind::BadInput),
            }
        };
        match (&expected, &outcome.result) {
            (Ok(want), Ok(have)) if want == have => {}
            (Err(want), Err(have)) if *want == have.kind => {}
            (Err(ErrorKind::BadInput), Err(have))
                if have.kind == ErrorKind::TaskError
                    && have.message.starts_with("task output is not valid JSON") =>
            {
                // The host's array check is a fast syntax scan (it accepts
                // what serde_json's own `RawValue` accepts): it lets through
                // arrays serde_json would not build a value of. Such args
                // reach the guest, whose decoding refuses them (`bad_input`
                // from the SDK); the echo guest hands them back and the
                // result fails to parse as the guest's fault.
                let why = strict.err().map(|e| e.to_string()).unwrap_or_default();
                log.note(format!("lenient array check: {}", pattern(&why)), why);
            }
            (want, have) => log.finding(format!(
                "echo of {:?}: expected {}, got {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
                match want {
                    Ok(_) => "ok".to_string(),
                    Err(k) => k.to_string(),
                },
                match have {
                    Ok(v) => format!("ok {}", shorten_value(v)),
                    Err(e) => e.to_string(),
                }
            )),
        }
    }

    /// `bytes` as the args of a queued call, inside call JSON with random
    /// limits: decoded as a host decodes a claimed call, its limits
    /// restricted, run with `run_json`, and submitted to a `LocalBroker`.
    fn queued_call(&self, rng: &mut StdRng, log: &mut CaseLog, bytes: &[u8]) {
        let call_bytes = if rng.random_bool(0.1) {
            inputs::bytes(rng, 200)
        } else {
            let mut b = call_json(rng, bytes);
            if rng.random_bool(0.2) {
                inputs::mutate(rng, &mut b, 2, b"{}[]\":,01-e");
            }
            b
        };
        let call = match serde_json::from_slice::<Call>(&call_bytes) {
            Ok(c) => c,
            Err(_) => {
                log.outcome("call:refused");
                return;
            }
        };
        log.outcome("call:decoded");
        let host = host_limits();
        let limits = host.restrict(&call.limits);
        if limits.fuel > host.fuel
            || limits.memory > host.memory
            || limits.timeout > host.timeout
            || limits.max_output > host.max_output
            || limits.max_args != host.max_args
        {
            log.finding(format!(
                "call limits {:?} raised the host's {host:?} to {limits:?}",
                call.limits
            ));
        }
        let outcome = self.rt.block_on(self.quick.run_json(
            &self.echo,
            &call.task,
            &call.args,
            &limits,
            &Cancel::new(),
        ));
        self.check_run(log, &self.echo, &call.task, &outcome, &limits, ECHO_KINDS);
        log.outcome(format!(
            "call-run:{}",
            outcome
                .result
                .as_ref()
                .map_or_else(|e| e.kind.to_string(), |_| "ok".into())
        ));
        let broker = LocalBroker::new(BrokerConfig::default());
        let countdown = match rng.random_range(0..10) {
            0 => Some(Duration::from_secs_f64(rng.random_range(0.0..5.0))),
            1 => {
                let shift = rng.random_range(0..64);
                Some(Duration::from_secs(rng.random_range(0..u64::MAX >> shift)))
            }
            _ => None,
        };
        match self
            .rt
            .block_on(broker.submit(std::slice::from_ref(&call), countdown))
        {
            Ok(()) => log.outcome("submit:ok"),
            Err(e) => {
                let label = match &e {
                    wasq_broker::Error::InvalidCall(_) => "invalid_call",
                    wasq_broker::Error::InvalidName(_) => "invalid_name",
                    _ => "other",
                };
                log.outcome(format!("submit:{label}"));
                if label == "other" {
                    log.finding(format!("submit failed unexpectedly: {e}"));
                }
            }
        }
    }

    fn run(
        &self,
        sandbox: &Sandbox,
        module: &LoadedModule,
        task: &str,
        args: &[u8],
        limits: &Limits,
    ) -> RunOutcome {
        self.rt
            .block_on(sandbox.run(module, task, args, limits, &Cancel::new()))
    }

    /// Labels a run's outcome and checks the rules every run keeps.
    fn check_run(
        &self,
        log: &mut CaseLog,
        module: &LoadedModule,
        task: &str,
        outcome: &RunOutcome,
        limits: &Limits,
        allowed: &[ErrorKind],
    ) {
        match &outcome.result {
            Ok(_) => log.outcome("run:ok"),
            Err(e) => {
                let sub = match e.kind {
                    ErrorKind::Trap if e.message.starts_with("wasm trap:") => "trap (wasm)",
                    ErrorKind::Trap if e.message.contains("invalid pointer or length") => {
                        "trap (bad pointer to a host function)"
                    }
                    ErrorKind::Trap if e.message.contains("invalid exit status") => {
                        "trap (proc_exit status >= 126)"
                    }
                    ErrorKind::Trap => {
                        log.note(format!("trap: {}", pattern(&e.message)), &e.message);
                        "trap (other)"
                    }
                    k => k.as_str(),
                };
                log.outcome(format!("run:{sub}"));
                let task_missing = module
                    .tasks
                    .binary_search_by(|t| t.as_str().cmp(task))
                    .is_err();
                let wrong_task = match e.kind {
                    ErrorKind::TaskNotFound => !task_missing,
                    // Args are checked before the task is looked up.
                    ErrorKind::BadInput => false,
                    _ => task_missing,
                };
                if !allowed.contains(&e.kind) || wrong_task {
                    log.finding(format!("run of task {task:?} ended as {e}"));
                }
            }
        }
        if outcome.result.is_ok()
            && module
                .tasks
                .binary_search_by(|t| t.as_str().cmp(task))
                .is_err()
        {
            log.finding(format!("task {task:?}, which the module lacks, returned"));
        }
        if outcome.host_busy {
            log.finding("run reports the host busy, with one call at a time");
        }
        if outcome.fuel_used > limits.fuel {
            log.finding(format!(
                "fuel_used {} over the budget of {}",
                outcome.fuel_used, limits.fuel
            ));
        }
        if outcome.duration > limits.timeout + TIMEOUT_SLACK {
            log.finding(format!(
                "ran {:?} under a wall-clock limit of {:?}",
                outcome.duration, limits.timeout
            ));
        }
        // Lossy UTF-8 may turn one byte into three.
        if outcome.stdout.len() as u64 > 3 * limits.max_stdio
            || outcome.stderr.len() as u64 > 3 * limits.max_stdio
        {
            log.finding("stdout or stderr past max_stdio");
        }
        let log_bytes: u64 = outcome
            .logs
            .iter()
            .map(|l| l.message.len() as u64 + 16)
            .sum();
        if log_bytes > 3 * limits.max_logs {
            log.finding(format!("{log_bytes} bytes of logs past max_logs"));
        }
        if let Ok(v) = &outcome.result
            && depth(v) > MAX_RESULT_DEPTH
        {
            log.finding(format!("a result {} deep was accepted", depth(v)));
        }
        let env = outcome.clone().into_envelope(
            wasq_broker::new_call_id(),
            1,
            self.quick.config().host_name.clone(),
        );
        check_readable(log, &env);
    }
}

/// A task to call: usually one the module has.
fn pick_task(rng: &mut StdRng, module: &LoadedModule) -> String {
    match rng.random_range(0..20) {
        0 => "nosuch".into(),
        1 => "t0".into(),
        _ if !module.tasks.is_empty() => {
            module.tasks[rng.random_range(0..module.tasks.len())].clone()
        }
        _ => "t0".into(),
    }
}

/// Limits a call asks for, lowered to the host's.
fn call_limits(rng: &mut StdRng) -> Limits {
    let host = host_limits();
    Limits {
        fuel: [1_000, 50_000, host.fuel][rng.random_range(0..3)],
        memory: [64 << 10, 1 << 20, host.memory][rng.random_range(0..3)],
        timeout: [Duration::from_millis(50), host.timeout][rng.random_range(0..2)],
        max_output: [0, 16, host.max_output][rng.random_range(0..3)],
        ..host
    }
}

/// The JSON of a queued call with `args` spliced in as they are, random
/// limits (in range, out of range, of the wrong type), sometimes another
/// task, queue or id, sometimes an unknown field.
fn call_json(rng: &mut StdRng, args: &[u8]) -> Vec<u8> {
    const NUMBERS: &[&str] = &[
        "0",
        "1",
        "1000",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        "1.5",
        "1e300",
        "1e400",
        "\"5\"",
        "null",
        "0.000000001",
        "9223372036854775807",
    ];
    let mut limits = Vec::new();
    for field in ["fuel", "memory", "timeout", "max_output", "max_args"] {
        if rng.random_bool(0.25) {
            limits.push(format!(
                "\"{field}\":{}",
                NUMBERS[rng.random_range(0..NUMBERS.len())]
            ));
        }
    }
    let task = ["echo", "echo", "echo", "nosuch", "", "1bad"][rng.random_range(0..6)];
    let id = if rng.random_bool(0.95) {
        wasq_broker::new_call_id()
    } else {
        "../../etc".into()
    };
    let queue = ["default", "default", "q-1", "", "a b"][rng.random_range(0..5)];
    let extra = if rng.random_bool(0.1) {
        ",\"future_field\":[1]"
    } else {
        ""
    };
    let mut out = format!(
        "{{\"id\":\"{id}\",\"module\":\"{}\",\"task\":\"{task}\",\"args\":",
        ModuleHash::of(b"echo").to_hex()
    )
    .into_bytes();
    out.extend_from_slice(args);
    out.extend_from_slice(
        format!(
            ",\"limits\":{{{}}},\"attempt\":{},\"queue\":\"{queue}\"{extra}}}",
            limits.join(","),
            NUMBERS[rng.random_range(0..3)]
        )
        .as_bytes(),
    );
    out
}
