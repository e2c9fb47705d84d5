//! Running one call: a fresh `Store`, the `wasq` host functions, and the
//! classification of every way a run can end.

use std::time::{Duration, Instant};

use wasmtime::{Caller, Engine, Linker, Memory, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasq_broker::{ErrorKind, Limits, LogLine, TaskError};

use super::module::WASI_MODULE;
use super::stdio::BoundedPipe;
use super::{Cancel, LoadedModule, Sandbox, SandboxError};

/// Most table elements any instance may have (the pooling allocator's slot size).
pub(crate) const MAX_TABLE_ELEMENTS: u64 = 1_000_000;
/// Most tables one instance may define (the pooling allocator's limit).
pub(crate) const MAX_TABLES: u32 = 4;

/// Bytes charged per log line on top of its message, so a flood of empty
/// lines is bounded too.
const LOG_LINE_OVERHEAD: u64 = 16;

/// Deepest nesting of arrays and objects a result may have. Every client
/// parses envelopes with serde_json's default recursion limit (128), and an
/// envelope (or a batch of them) wraps the result in a few more levels: a
/// host refuses deeper results, so every envelope it publishes is readable.
pub const MAX_RESULT_DEPTH: usize = 64;

/// Per-call state inside the `Store`.
pub struct CallState {
    wasi: WasiP1Ctx,
    limiter: CallLimiter,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    failure: Option<TaskError>,
    logs: Vec<LogLine>,
    log_bytes: u64,
    max_output: u64,
    max_logs: u64,
    task: String,
}

struct CallLimiter {
    memory: u64,
    tables: u64,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory {
            return Err(wasmtime::Error::new(SandboxError::MemoryLimit {
                what: "memory",
                desired: desired as u64,
                limit: self.memory,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.tables {
            return Err(wasmtime::Error::new(SandboxError::MemoryLimit {
                what: "table",
                desired: desired as u64,
                limit: self.tables,
            }));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        MAX_TABLES as usize
    }
}

/// How a run ended, with everything the envelope reports.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The JSON result, or why there is none.
    pub result: Result<serde_json::Value, TaskError>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
    /// Log lines.
    pub logs: Vec<LogLine>,
    /// Fuel consumed (instantiation, `_initialize` and the task).
    pub fuel_used: u64,
    /// Wall time from instantiation to return.
    pub duration: Duration,
    /// The host, not the call, ran out of something: every instance slot of
    /// the pooling allocator was in use, so the call never ran. A worker
    /// hands such a call back to be run later or by another host; `result`
    /// still says why, for callers that cannot (`wasq exec`).
    pub host_busy: bool,
}

impl RunOutcome {
    /// An outcome for a call that failed before running.
    pub fn failed(error: TaskError) -> Self {
        Self {
            result: Err(error),
            stdout: String::new(),
            stderr: String::new(),
            logs: Vec::new(),
            fuel_used: 0,
            duration: Duration::ZERO,
            host_busy: false,
        }
    }

    /// The result envelope of this outcome.
    pub fn into_envelope(
        self,
        id: impl Into<String>,
        attempt: u32,
        host: impl Into<String>,
    ) -> wasq_broker::Envelope {
        let mut env = wasq_broker::Envelope::pending(id, wasq_broker::State::Succeeded);
        match self.result {
            Ok(v) => env.result = v,
            Err(e) => {
                env.state = if e.kind == ErrorKind::Revoked {
                    wasq_broker::State::Revoked
                } else {
                    wasq_broker::State::Failed
                };
                env.error = Some(e);
            }
        }
        env.stdout = self.stdout;
        env.stderr = self.stderr;
        env.logs = self.logs;
        env.fuel_used = self.fuel_used;
        env.duration_ms = self.duration.as_secs_f64() * 1000.0;
        env.attempt = attempt;
        env.host = host.into();
        env
    }
}

/// The linker shared by all calls: WASI preview 1 and the `wasq` functions.
pub(crate) fn linker(engine: &Engine) -> wasmtime::Result<Linker<CallState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut CallState| &mut s.wasi)?;
    // WASI's own `random_get` allocates a buffer of the asked length (up to
    // 4 GiB) before it checks the pointer; this one checks first, charges a
    // unit of fuel per byte, and fills the guest's memory in place a chunk at
    // a time, yielding between chunks so a guest asking for megabytes in a
    // loop never holds its runtime's thread for long.
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        WASI_MODULE,
        "random_get",
        |mut caller: Caller<'_, CallState>, (ptr, len): (i32, i32)| {
            Box::new(async move {
                /// WASI's `errno::fault`: the buffer is not in memory.
                const FAULT: i32 = 21;
                const CHUNK: usize = 1 << 20;
                let memory = memory(&mut caller)?;
                let (start, len) = (ptr as u32 as usize, len as u32 as usize);
                let Some(end) = start
                    .checked_add(len)
                    .filter(|end| *end <= memory.data_size(&caller))
                else {
                    return Ok(FAULT);
                };
                charge(&mut caller, len)?;
                let mut at = start;
                while at < end {
                    let next = end.min(at + CHUNK);
                    rand::RngCore::fill_bytes(
                        &mut rand::rng(),
                        &mut memory.data_mut(&mut caller)[at..next],
                    );
                    at = next;
                    if at < end {
                        tokio::task::yield_now().await;
                    }
                }
                Ok(0)
            })
        },
    )?;
    linker.allow_shadowing(false);
    linker.func_wrap(
        "wasq",
        "input_len",
        |caller: Caller<'_, CallState>| -> i32 {
            // Input is capped by `max_args` (far below 2 GiB) before a run starts.
            caller.data().input.len() as i32
        },
    )?;
    linker.func_wrap(
        "wasq",
        "input_read",
        |mut caller: Caller<'_, CallState>, ptr: i32| -> wasmtime::Result<()> {
            let memory = memory(&mut caller)?;
            let len = caller.data().input.len();
            charge(&mut caller, len)?;
            let (data, state) = memory.data_and_store_mut(&mut caller);
            let range = span(ptr, len as i32, data.len(), "input_read")?;
            data[range].copy_from_slice(&state.input);
            Ok(())
        },
    )?;
    linker.func_wrap(
        "wasq",
        "output",
        |mut caller: Caller<'_, CallState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut caller, ptr, len, "output", |s| {
                (s.max_output, "result")
            })?;
            caller.data_mut().output = Some(bytes);
            Ok(())
        },
    )?;
    linker.func_wrap(
        "wasq",
        "fail",
        |mut caller: Caller<'_, CallState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut caller, ptr, len, "fail", |s| {
                (s.max_output, "fail message")
            })?;
            let message = String::from_utf8_lossy(&bytes).into_owned();
            caller.data_mut().failure = Some(TaskError::new(ErrorKind::TaskError, message));
            Ok(())
        },
    )?;
    linker.func_wrap(
        "wasq",
        "bad_input",
        |mut caller: Caller<'_, CallState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut caller, ptr, len, "bad_input", |s| {
                (s.max_output, "bad_input message")
            })?;
            let message = String::from_utf8_lossy(&bytes).into_owned();
            caller.data_mut().failure = Some(TaskError::new(ErrorKind::BadInput, message));
            Ok(())
        },
    )?;
    linker.func_wrap(
        "wasq",
        "log",
        |mut caller: Caller<'_, CallState>,
         level: i32,
         ptr: i32,
         len: i32|
         -> wasmtime::Result<()> {
            let remaining = {
                let s = caller.data();
                s.max_logs.saturating_sub(s.log_bytes)
            };
            let bytes = read(&mut caller, ptr, len, "log", |s| (s.max_logs, "logs"))?;
            let cost = bytes.len() as u64 + LOG_LINE_OVERHEAD;
            let state = caller.data_mut();
            if cost > remaining {
                return Err(wasmtime::Error::new(SandboxError::OutputLimit {
                    what: "logs",
                    limit: state.max_logs,
                }));
            }
            state.log_bytes += cost;
            let level = level.clamp(0, 4) as u8;
            let message = String::from_utf8_lossy(&bytes).into_owned();
            guest_log(&state.task, level, &message);
            state.logs.push(LogLine { level, message });
            Ok(())
        },
    )?;
    Ok(linker)
}

/// Charges one unit of fuel per byte a host function copies for the guest,
/// as wasmtime charges its own bulk memory instructions: copying through
/// the host is no cheaper than copying in wasm, so the fuel budget bounds it.
fn charge(caller: &mut Caller<'_, CallState>, bytes: usize) -> wasmtime::Result<()> {
    let fuel = caller.get_fuel()?;
    match fuel.checked_sub(bytes as u64) {
        Some(left) => caller.set_fuel(left),
        None => {
            caller.set_fuel(0)?;
            Err(wasmtime::Error::new(Trap::OutOfFuel))
        }
    }
}

fn guest_log(task: &str, level: u8, message: &str) {
    match level {
        0 => tracing::trace!(target: "wasq::guest", task, "{message}"),
        1 => tracing::debug!(target: "wasq::guest", task, "{message}"),
        2 => tracing::info!(target: "wasq::guest", task, "{message}"),
        3 => tracing::warn!(target: "wasq::guest", task, "{message}"),
        _ => tracing::error!(target: "wasq::guest", task, "{message}"),
    }
}

fn memory(caller: &mut Caller<'_, CallState>) -> wasmtime::Result<Memory> {
    match caller.get_export("memory") {
        Some(wasmtime::Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::Error::new(SandboxError::NoMemory)),
    }
}

/// The byte range `ptr..ptr+len`, if it is inside a memory of `size` bytes.
fn span(
    ptr: i32,
    len: i32,
    size: usize,
    func: &'static str,
) -> wasmtime::Result<std::ops::Range<usize>> {
    let (Ok(start), Ok(len)) = (usize::try_from(ptr), usize::try_from(len)) else {
        return Err(wasmtime::Error::new(SandboxError::BadPointer(func)));
    };
    match start.checked_add(len) {
        Some(end) if end <= size => Ok(start..end),
        _ => Err(wasmtime::Error::new(SandboxError::BadPointer(func))),
    }
}

/// Copies `len` bytes at `ptr` out of guest memory, after checking `len`
/// against the limit `limit(state)` (checked first, so a huge length is
/// refused before anything is copied).
fn read(
    caller: &mut Caller<'_, CallState>,
    ptr: i32,
    len: i32,
    func: &'static str,
    limit: impl Fn(&CallState) -> (u64, &'static str),
) -> wasmtime::Result<Vec<u8>> {
    let (max, what) = limit(caller.data());
    if len > 0 && len as u64 > max {
        return Err(wasmtime::Error::new(SandboxError::OutputLimit {
            what,
            limit: max,
        }));
    }
    let memory = memory(caller)?;
    let range = span(ptr, len, memory.data_size(&*caller), func)?;
    charge(caller, range.len())?;
    Ok(memory.data(&*caller)[range].to_vec())
}

pub(crate) async fn run(
    sandbox: &Sandbox,
    module: &LoadedModule,
    task: &str,
    args: &[u8],
    parsed: bool,
    limits: &Limits,
    cancel: &Cancel,
) -> RunOutcome {
    if args.len() as u64 > limits.max_args {
        return RunOutcome::failed(TaskError::new(
            ErrorKind::BadInput,
            format!(
                "args are {} bytes, over the limit of {}",
                args.len(),
                limits.max_args
            ),
        ));
    }
    let array = if parsed {
        // Valid JSON already: an array is one that opens with `[`.
        args.trim_ascii_start().starts_with(b"[")
    } else {
        is_json_array(args)
    };
    if !array {
        return RunOutcome::failed(TaskError::new(
            ErrorKind::BadInput,
            "args must be a JSON array, like [4, 5]",
        ));
    }
    if module
        .tasks
        .binary_search_by(|t| t.as_str().cmp(task))
        .is_err()
    {
        let mut message = format!(
            "module {} has no task `{task}` (it has: {})",
            module.hash,
            if module.tasks.is_empty() {
                "none".to_string()
            } else {
                module.tasks.join(", ")
            }
        );
        if let Some(other) = module.not_tasks.iter().find(|n| n.export == task) {
            message.push_str(&format!("; export `{task}` is {}", other.why));
        }
        return RunOutcome::failed(TaskError::new(ErrorKind::TaskNotFound, message));
    }

    let stdout = BoundedPipe::new("stdout", limits.max_stdio);
    let stderr = BoundedPipe::new("stderr", limits.max_stdio);
    let wasi = WasiCtxBuilder::new()
        .args(&[task])
        .stdout(stdout.clone())
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build_p1();
    let state = CallState {
        wasi,
        limiter: CallLimiter {
            memory: limits.memory,
            tables: MAX_TABLE_ELEMENTS.min(limits.memory / 8),
        },
        input: args.to_vec(),
        output: None,
        failure: None,
        logs: Vec::new(),
        log_bytes: 0,
        max_output: limits.max_output,
        max_logs: limits.max_logs,
        task: task.to_string(),
    };
    // The module's current code (quick or optimised) and the engine it was
    // compiled by, which the store must belong to.
    let pre = module.pre();
    let mut store = Store::new(pre.module().engine(), state);
    store.limiter(|s| &mut s.limiter);
    // wasmtime counts fuel in an i64 and saturates near u64::MAX; a budget
    // of 2^63 is forever anyway, and keeps `fuel_used` exact.
    let fuel = limits.fuel.min(i64::MAX as u64);
    let _ = store.set_fuel(fuel);
    let started = Instant::now();
    // A timeout too large for the clock (an operator's `--timeout 1e18`)
    // means no deadline within this host's lifetime.
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = started
        .checked_add(limits.timeout)
        .unwrap_or_else(|| started + far);
    let timeout = limits.timeout;
    let cancel_check = cancel.clone();
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if cancel_check.is_cancelled() {
            return Err(wasmtime::Error::new(SandboxError::Revoked));
        }
        if Instant::now() >= deadline {
            return Err(wasmtime::Error::new(SandboxError::Timeout(timeout)));
        }
        Ok(UpdateDeadline::Yield(1))
    });

    let call = async {
        let instance = pre.instantiate_async(&mut store).await?;
        if module.has_initialize {
            let init = instance.get_typed_func::<(), ()>(&mut store, "_initialize")?;
            init.call_async(&mut store, ()).await?;
        }
        let func = instance.get_typed_func::<(), ()>(&mut store, &format!("task.{task}"))?;
        func.call_async(&mut store, ()).await
    };
    // The epoch callback stops running wasm (and keeps the fuel count exact);
    // these stop a guest parked in an async host call (a WASI sleep), which no
    // epoch can interrupt, a few ticks later.
    let backstop = deadline
        .checked_add(sandbox.config().tick * 4)
        .unwrap_or(deadline);
    let ended: wasmtime::Result<()> = tokio::select! {
        r = tokio::time::timeout_at(backstop.into(), call) => match r {
            Ok(r) => r,
            Err(_) => Err(wasmtime::Error::new(SandboxError::Timeout(timeout))),
        },
        () = cancel.cancelled() => Err(wasmtime::Error::new(SandboxError::Revoked)),
    };
    let duration = started.elapsed();
    // Compiled code keeps its fuel count in a register and writes it back at
    // calls, so a run interrupted inside a tight loop reports the fuel used up
    // to its last call out of wasm.
    let fuel_used = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
    let state = store.into_data();
    let host_busy = matches!(&ended, Err(e) if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some());
    let result = match ended {
        Ok(()) => finish(state.output, state.failure),
        Err(e) if host_busy => Err(TaskError::new(
            ErrorKind::Trap,
            format!("host busy, the call did not run: {e:#}"),
        )),
        Err(e) => Err(classify(&e, state.failure, timeout)),
    };
    RunOutcome {
        result,
        stdout: stdout.contents(),
        stderr: stderr.contents(),
        logs: state.logs,
        fuel_used,
        duration,
        host_busy,
    }
}

/// A normal return: the guest's failure, or its output as JSON (null if none).
fn finish(
    output: Option<Vec<u8>>,
    failure: Option<TaskError>,
) -> Result<serde_json::Value, TaskError> {
    if let Some(f) = failure {
        return Err(f);
    }
    let value: serde_json::Value = match output {
        None => return Ok(serde_json::Value::Null),
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            TaskError::new(
                ErrorKind::TaskError,
                format!("task output is not valid JSON: {e}"),
            )
        })?,
    };
    if depth(&value) > MAX_RESULT_DEPTH {
        return Err(TaskError::new(
            ErrorKind::OutputLimit,
            format!("result nests arrays and objects more than {MAX_RESULT_DEPTH} levels deep"),
        ));
    }
    Ok(value)
}

/// How deeply arrays and objects nest in `value` (a scalar is 0).
fn depth(value: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(a) => Box::new(a.iter()),
            serde_json::Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

/// Maps the error that ended a run to its envelope kind, by type.
fn classify(err: &wasmtime::Error, failure: Option<TaskError>, timeout: Duration) -> TaskError {
    if let Some(e) = err.downcast_ref::<SandboxError>() {
        return TaskError::new(e.kind(), e.to_string());
    }
    if let Some(exit) = err.downcast_ref::<wasmtime_wasi::I32Exit>() {
        if let Some(f) = failure {
            return f;
        }
        return TaskError::new(
            ErrorKind::TaskError,
            format!("task exited with status {}", exit.0),
        );
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        match trap {
            Trap::OutOfFuel => {
                return TaskError::new(ErrorKind::FuelExhausted, "fuel budget exhausted");
            }
            Trap::Interrupt => {
                return TaskError::new(
                    ErrorKind::Timeout,
                    format!("wall-clock limit of {timeout:?} exceeded"),
                );
            }
            _ => {}
        }
        // A guest that reported a failure and then trapped is a panic: its
        // message is the better explanation.
        if let Some(f) = failure {
            return f;
        }
        return TaskError::new(ErrorKind::Trap, trap.to_string());
    }
    if let Some(f) = failure {
        return f;
    }
    // Anything else wasmtime raises during instantiation or a host call
    // (e.g. a WASI call trapping on bad memory) is the guest's doing.
    TaskError::new(ErrorKind::Trap, format!("{err:#}"))
}

fn is_json_array(args: &[u8]) -> bool {
    let trimmed = args.trim_ascii();
    if !(trimmed.starts_with(b"[") && trimmed.ends_with(b"]")) {
        return false;
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_bounds_checked() {
        assert_eq!(span(0, 4, 4, "t").unwrap(), 0..4);
        assert!(span(1, 4, 4, "t").is_err());
        assert!(span(-1, 1, 4, "t").is_err());
        assert!(span(0, -1, 4, "t").is_err());
        assert!(span(i32::MAX, i32::MAX, usize::MAX, "t").is_ok());
        assert!(span(i32::MAX, 1, i32::MAX as usize, "t").is_err());
    }

    #[test]
    fn depth_counts_arrays_and_objects() {
        assert_eq!(depth(&serde_json::json!(1)), 0);
        assert_eq!(depth(&serde_json::json!([])), 1);
        assert_eq!(depth(&serde_json::json!([1, [2, {"a": [3]}], {}])), 4);
    }

    #[test]
    fn only_json_arrays_are_args() {
        assert!(is_json_array(b"[]"));
        assert!(is_json_array(b" [1, \"a\"] "));
        assert!(!is_json_array(b"{}"));
        assert!(!is_json_array(b"[1,"));
        assert!(!is_json_array(b"[1] [2]"));
        assert!(!is_json_array(b""));
    }
}
