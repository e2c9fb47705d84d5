//! Where modules compile, and how a compile is stopped.
//!
//! Cranelift cannot be interrupted: a compile started on a thread runs to its
//! end however long that takes. So a host that runs modules it did not write
//! compiles them in a child process ([`Compiler::Process`]): the host's own
//! executable started with [`CHILD_ARG`], which reads the module on stdin and
//! writes the serialized code on stdout. The child has no environment (no
//! Redis credentials), a CPU-time limit (`RLIMIT_CPU`), an address-space limit
//! (`RLIMIT_AS`), a lower priority than the calls the host runs (nice 10), no
//! core dumps, and dies with its parent; the parent kills it at the deadline.
//! A compile past its deadline therefore stops consuming CPU at once.
//!
//! The code the child writes is deserialized by the parent without further
//! checks: it comes over a pipe from a process the parent started from its own
//! executable, given the bytes the parent had verified against their hash.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use wasmtime::{Engine, Module};
use wasq_broker::{ErrorKind, TaskError};

use super::Tier;

/// The first argument that makes the `wasq` executable a compiler child
/// (see [`child_main`]).
pub const CHILD_ARG: &str = "__wasq-compile";

/// Default address-space limit of a compiler child, in bytes.
pub const DEFAULT_COMPILE_MEMORY: u64 = 4 << 30;

/// Most bytes of compiled code read back from a child.
const MAX_COMPILED: u64 = 1 << 30;
/// Most bytes of a child's error message kept.
const MAX_CHILD_ERROR: u64 = 4096;

/// Where a [`Sandbox`](super::Sandbox) compiles modules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Compiler {
    /// On a thread of this process. A compile past its deadline is given up
    /// (the caller stops waiting) but keeps its thread, its CPU and its
    /// compile slot until it ends: for embedders that trust their modules.
    #[default]
    InProcess,
    /// In a child process started from this executable (which must call
    /// [`child_main`] when its first argument is [`CHILD_ARG`], as `wasq`
    /// does), limited in CPU time and memory and killed at the deadline.
    Process(PathBuf),
}

impl Compiler {
    /// Compiling in a child started from the running executable (on Linux
    /// `/proc/self/exe`, which still works after the file on disk is
    /// replaced by an upgrade).
    pub fn current_exe() -> std::io::Result<Self> {
        if cfg!(target_os = "linux") {
            return Ok(Self::Process(PathBuf::from("/proc/self/exe")));
        }
        std::env::current_exe().map(Self::Process)
    }
}

/// Why compiling failed.
pub(crate) enum CompileError {
    /// The module's fault (invalid, or over a compile limit): remembered for
    /// the module, reported as `invalid_module`.
    Module(TaskError),
    /// The host's (a child could not be started, or died of something else):
    /// not remembered, reported as a host error.
    Host(String),
}

impl CompileError {
    pub(crate) fn module(msg: impl Into<String>) -> Self {
        Self::Module(TaskError::new(ErrorKind::InvalidModule, msg))
    }
}

/// The limits of one compile.
pub(crate) struct Budget {
    /// Wall time; also the CPU-time limit of a child.
    pub(crate) deadline: Duration,
    /// Address-space limit of a child.
    pub(crate) memory: u64,
}

/// Compiles `bytes` for `engine` (whose code configuration is
/// [`code_config`]`(tier)`), in this process or in a child.
pub(crate) fn compile(
    compiler: &Compiler,
    engine: &Engine,
    tier: Tier,
    bytes: &[u8],
    budget: &Budget,
) -> Result<Module, CompileError> {
    match compiler {
        Compiler::InProcess => {
            Module::from_binary(engine, bytes).map_err(|e| CompileError::module(format!("{e:#}")))
        }
        Compiler::Process(program) => {
            let code = compile_in_child(program, tier, bytes, budget)?;
            // SAFETY: `code` is what a child started from this executable
            // serialized from its own compilation of `bytes`, with an engine
            // of the same code configuration (see the module docs); wasmtime
            // also checks the engine compatibility header.
            #[allow(unsafe_code)]
            unsafe { Module::deserialize(engine, &code) }
                .map_err(|e| CompileError::Host(format!("cannot load the compiler's code: {e:#}")))
        }
    }
}

fn tier_arg(tier: Tier) -> &'static str {
    match tier {
        Tier::Quick => "quick",
        Tier::Optimized => "optimized",
    }
}

fn compile_in_child(
    program: &std::path::Path,
    tier: Tier,
    bytes: &[u8],
    budget: &Budget,
) -> Result<Vec<u8>, CompileError> {
    let cpu_secs = budget.deadline.as_secs().saturating_add(1);
    let memory = budget.memory;
    let mut command = Command::new(program);
    command
        .arg(CHILD_ARG)
        .arg(tier_arg(tier))
        .env_clear()
        // One malloc arena per compile thread reserves 64 MiB of address
        // space each; a few are plenty and keep RLIMIT_AS about real use.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only
    // makes async-signal-safe system calls (setrlimit, setpriority, prctl).
    #[allow(unsafe_code)]
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            limit_child(cpu_secs, memory)
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| CompileError::Host(format!("cannot start the compiler process: {e}")))?;
    let pid = child.id();
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let deadline = budget.deadline;
    let watchdog = std::thread::Builder::new()
        .name("wasq-compile-watchdog".into())
        .spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = watch.recv_timeout(deadline) {
                // The child is not reaped before this thread is joined, so
                // `pid` is still the child's.
                kill(pid);
                return true;
            }
            false
        })
        .map_err(|e| {
            kill(pid);
            let _ = child.wait();
            CompileError::Host(format!("cannot start the compile watchdog: {e}"))
        })?;
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(err) = stderr.as_mut() {
            let _ = err.take(MAX_CHILD_ERROR).read_to_string(&mut text);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = std::io::copy(err, &mut std::io::sink());
        }
        text
    });
    // The child reads all of its input before it writes anything, so writing
    // first cannot deadlock; a child killed meanwhile makes the write fail.
    if let Some(mut input) = stdin.take() {
        let _ = input.write_all(bytes);
    }
    let mut code = Vec::new();
    let read = match stdout.as_mut() {
        Some(out) => out.take(MAX_COMPILED + 1).read_to_end(&mut code),
        None => Ok(0),
    };
    drop(stdout);
    drop(done);
    let timed_out = watchdog.join().unwrap_or(false);
    if code.len() as u64 > MAX_COMPILED {
        kill(pid);
    }
    let status = child.wait();
    let message = errors.join().unwrap_or_default();
    let message = message.trim();
    if timed_out {
        return Err(CompileError::module(format!(
            "compiling the module took longer than {deadline:?}"
        )));
    }
    let status =
        status.map_err(|e| CompileError::Host(format!("cannot wait for the compiler: {e}")))?;
    if code.len() as u64 > MAX_COMPILED {
        return Err(CompileError::module(format!(
            "the compiled code exceeds {MAX_COMPILED} bytes"
        )));
    }
    if status.success() {
        read.map_err(|e| CompileError::Host(format!("cannot read the compiled code: {e}")))?;
        return Ok(code);
    }
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(libc::SIGXCPU) | Some(libc::SIGKILL) => Err(CompileError::module(format!(
            "compiling the module used more than {cpu_secs} s of CPU time"
        ))),
        _ if message.contains("memory allocation") => Err(CompileError::module(format!(
            "compiling the module needed more than {memory} bytes of memory"
        ))),
        // A compiler that crashes on a module (short of memory in ways that
        // do not print, such as a thread that cannot get its stack) is the
        // module's doing as far as this host can tell.
        Some(signal) => Err(CompileError::module(format!(
            "the compiler died of signal {signal} on this module (its limits: {memory} bytes of memory, {cpu_secs} s of CPU)"
        ))),
        None if status.code() == Some(EXIT_INVALID) => Err(CompileError::module(message)),
        _ => Err(CompileError::Host(format!(
            "the compiler process failed ({status}): {message}"
        ))),
    }
}

/// The exit status of a child whose module does not compile.
const EXIT_INVALID: i32 = 3;

fn limit_child(cpu_secs: u64, memory: u64) -> std::io::Result<()> {
    let set = |resource, value: u64| {
        let limit = libc::rlimit {
            rlim_cur: value as libc::rlim_t,
            rlim_max: value as libc::rlim_t,
        };
        // SAFETY: plain system calls on a valid struct.
        #[allow(unsafe_code)]
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::RLIMIT_CPU, cpu_secs)?;
    set(libc::RLIMIT_AS, memory)?;
    set(libc::RLIMIT_CORE, 0)?;
    // SAFETY: plain system calls; failures only lose a nicety.
    #[allow(unsafe_code)]
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    Ok(())
}

fn kill(pid: u32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: a plain system call; `pid` is an unreaped child of ours.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// The compiler child: `EXE __wasq-compile quick|optimized` reads a module on
/// stdin, compiles it with the sandbox's code configuration of that tier and
/// writes the serialized code on stdout. Exits 3 with the reason on stderr
/// when the module does not compile, 2 on a usage error.
pub fn child_main() -> ExitCode {
    let tier = match std::env::args().nth(2).as_deref() {
        Some("quick") => Tier::Quick,
        Some("optimized") => Tier::Optimized,
        _ => {
            eprintln!("usage: {CHILD_ARG} quick|optimized < module.wasm > code");
            return ExitCode::from(2);
        }
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("cannot read the module: {e}");
        return ExitCode::from(2);
    }
    let engine = match Engine::new(&super::code_config(tier)) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot configure the wasm engine: {e:#}");
            return ExitCode::from(2);
        }
    };
    let code = match Module::from_binary(&engine, &bytes).and_then(|m| m.serialize()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(EXIT_INVALID as u8);
        }
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(&code).and_then(|()| out.flush()).is_err() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
