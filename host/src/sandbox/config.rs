//! How a [`Sandbox`](super::Sandbox) is set up: [`SandboxConfig`], its
//! defaults (`DEFAULT_*`, which the CLI reuses) and how new modules are
//! compiled ([`Compilation`]).

use std::path::PathBuf;
use std::time::Duration;

use wasq_broker::Limits;

use super::compiler::{Compiler, DEFAULT_COMPILE_MEMORY};
use super::disk_cache::DEFAULT_CACHE_MAX_BYTES;

/// Default number of instance slots in the pooling allocator (calls that can
/// run at the same time in one process).
pub const DEFAULT_POOL_SIZE: u32 = 256;
/// Default interval of the epoch ticker; the precision of wall-clock limits
/// and revocation.
pub const DEFAULT_TICK: Duration = Duration::from_millis(5);
/// Default cap on functions in one module.
pub const DEFAULT_MAX_FUNCTIONS: u32 = 100_000;
/// Default cap on the total bytes of function bodies in one module.
pub const DEFAULT_MAX_CODE_BYTES: u64 = 32 * 1024 * 1024;
/// Default cap on one function body's bytes.
pub const DEFAULT_MAX_FUNCTION_BYTES: u32 = 1024 * 1024;
/// Default cap on the wall time of compiling one module.
pub const DEFAULT_COMPILE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of compiled modules kept in memory.
pub const DEFAULT_CACHE_CAPACITY: usize = 512;
/// Default cap on the bytes of compiled modules kept in memory (their code,
/// and their wasm bytes, which bound their memory images).
pub const DEFAULT_MEMORY_CACHE_BYTES: u64 = 1 << 30;
/// Default number of modules compiling at once.
pub const DEFAULT_MAX_COMPILES: usize = 2;
/// Default number of modules that may wait for one of those slots; past it a
/// host hands calls of further new modules back instead of holding a slot.
pub const DEFAULT_COMPILE_QUEUE: usize = 8;
/// Quick-compiled modules waiting for the background optimiser at most;
/// past it a module keeps its quick code (counted as `optimize_dropped`).
pub const OPTIMIZE_QUEUE: usize = 32;
/// Default cap on the types a module declares.
pub const DEFAULT_MAX_TYPES: u32 = 10_000;
/// Default cap on the globals a module declares.
pub const DEFAULT_MAX_GLOBALS: u32 = 10_000;
/// Default cap on one function's locals.
pub const DEFAULT_MAX_LOCALS: u32 = 20_000;
/// Default cap on the bytes of a module's data segments in all.
pub const DEFAULT_MAX_DATA_BYTES: u64 = 32 * 1024 * 1024;
/// How a [`Sandbox`](super::Sandbox) compiles the modules it has not seen (and has no disk
/// cache entry for).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compilation {
    /// Quick code first, optimised code swapped in by a background compile
    /// (written to the disk cache). First calls start about twice as soon.
    #[default]
    Tiered,
    /// Optimised code only, compiled before the first call runs.
    Optimized,
    /// Quick code only: never optimised, never written to the disk cache
    /// (a disk cache entry, optimised, is still used). For one-off runs.
    Quick,
}

impl std::str::FromStr for Compilation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tiered" => Ok(Self::Tiered),
            "optimized" => Ok(Self::Optimized),
            "quick" => Ok(Self::Quick),
            other => Err(format!(
                "unknown compilation {other:?}: use tiered, optimized or quick"
            )),
        }
    }
}

/// How a [`Sandbox`](super::Sandbox) is set up. Plain data; every field has a `DEFAULT_*`.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The host's maximum limits; calls may ask for less.
    pub limits: Limits,
    /// Largest module accepted, in bytes.
    pub max_module: u64,
    /// Most functions a module may define.
    pub max_functions: u32,
    /// Most bytes of function bodies in all.
    pub max_code_bytes: u64,
    /// Most bytes of one function body.
    pub max_function_bytes: u32,
    /// Most types a module may declare.
    pub max_types: u32,
    /// Most globals a module may declare.
    pub max_globals: u32,
    /// Most locals of one function.
    pub max_locals: u32,
    /// Most bytes of data segments in all.
    pub max_data_bytes: u64,
    /// Compilation taking longer than this fails the module (in a child
    /// process, also the CPU time it may use).
    pub compile_timeout: Duration,
    /// Where modules compile: [`Compiler::Process`] for modules the host
    /// did not write.
    pub compiler: Compiler,
    /// Address-space limit of a compiler child, in bytes.
    pub compile_memory: u64,
    /// Modules compiling at once.
    pub max_compiles: usize,
    /// Modules that may wait for a compile slot beside those compiling (see
    /// [`Sandbox::compile_backlog_full`](super::Sandbox::compile_backlog_full)).
    pub compile_queue: usize,
    /// Slots of the pooling allocator: calls running at once.
    pub pool_size: u32,
    /// Epoch tick; the precision of timeouts and revocation.
    pub tick: Duration,
    /// Where compiled code is kept across restarts; `None` keeps it only in
    /// memory. Entries are authenticated (HMAC) with the key in
    /// `cache_key`; the directory must be the host user's and not writable
    /// by others.
    pub cache_dir: Option<PathBuf>,
    /// The key file that authenticates the disk cache; default `DIR.key`
    /// beside `cache_dir`, created (mode 0600) if missing. Never inside the
    /// directory: whoever can write entries must not hold the key.
    pub cache_key: Option<PathBuf>,
    /// Byte cap of the disk cache; the least recently written entries go
    /// first. Default [`DEFAULT_CACHE_MAX_BYTES`].
    pub cache_max_bytes: u64,
    /// How new modules are compiled.
    pub compilation: Compilation,
    /// Compiled modules kept in memory.
    pub cache_capacity: usize,
    /// Bytes of compiled modules kept in memory (code and wasm bytes).
    pub memory_cache_bytes: u64,
    /// The `host` field of envelopes (`name/pid`).
    pub host_name: String,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            max_module: wasq_broker::DEFAULT_MAX_MODULE,
            max_functions: DEFAULT_MAX_FUNCTIONS,
            max_code_bytes: DEFAULT_MAX_CODE_BYTES,
            max_function_bytes: DEFAULT_MAX_FUNCTION_BYTES,
            max_types: DEFAULT_MAX_TYPES,
            max_globals: DEFAULT_MAX_GLOBALS,
            max_locals: DEFAULT_MAX_LOCALS,
            max_data_bytes: DEFAULT_MAX_DATA_BYTES,
            compile_timeout: DEFAULT_COMPILE_TIMEOUT,
            compiler: Compiler::default(),
            compile_memory: DEFAULT_COMPILE_MEMORY,
            max_compiles: DEFAULT_MAX_COMPILES,
            compile_queue: DEFAULT_COMPILE_QUEUE,
            pool_size: DEFAULT_POOL_SIZE,
            tick: DEFAULT_TICK,
            cache_dir: None,
            cache_key: None,
            cache_max_bytes: DEFAULT_CACHE_MAX_BYTES,
            compilation: Compilation::default(),
            cache_capacity: DEFAULT_CACHE_CAPACITY,
            memory_cache_bytes: DEFAULT_MEMORY_CACHE_BYTES,
            host_name: default_host_name(),
        }
    }
}

/// `hostname/pid`, the default name a host puts in envelopes.
pub fn default_host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}/{}", std::process::id())
}
