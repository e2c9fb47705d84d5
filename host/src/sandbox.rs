//! The sandbox: one wasmtime engine per process, a cache of compiled modules,
//! and an executor that runs one call in a fresh `Store` under hard limits.
//!
//! What a hostile guest can try, and what stops it:
//!
//! | attempt | stopped by | kind |
//! | --- | --- | --- |
//! | loop forever | fuel (deterministic) | `fuel_exhausted` |
//! | sleep / block in a host call | epoch ticker + deadline on the async call | `timeout` |
//! | grow memory or tables | [`ResourceLimiter`](wasmtime::ResourceLimiter) | `memory_limit` |
//! | recurse deeply | wasmtime's stack limit | `trap` |
//! | flood result, stdout, stderr, logs | bounded buffers that trap | `output_limit` |
//! | hand host functions wild pointers | bounds checks on every access | `trap` |
//! | import anything else | import check before instantiation | `invalid_module` |
//! | huge or pathological module | size, function and body caps before compiling | `invalid_module` |
//! | read files, env, network | WASI with no preopens, no env, no sockets | (sees nothing) |
//!
//! Fuel vs epochs: fuel counts instructions, so it is exact and reproducible but
//! blind to time spent in host calls; epochs measure wall time cheaply (one
//! load and compare per loop header) and also interrupt a guest that is
//! sleeping. wasq uses both.
//!
//! Tiered compilation ([`Compilation::Tiered`], the default): a module a host
//! has never seen is compiled quickly (Cranelift without optimisations, the
//! single-pass register allocator: about half the compile time) so its first
//! calls start sooner; a background thread then compiles it optimised, swaps
//! the optimised code in for the calls that start after, and writes only the
//! optimised code to the disk cache. Both tiers carry the same fuel and epoch
//! instrumentation (fuel is counted per wasm operator, so `fuel_used` is the
//! same on either) and run under the same limits.

mod compiler;
mod config;
mod disk_cache;
mod module;
mod run;
mod stdio;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, Linker, OptLevel, RegallocAlgorithm};
use wasq_broker::{ErrorKind, Limits, ModuleHash, TaskError};

pub use compiler::{CHILD_ARG, Compiler, DEFAULT_COMPILE_MEMORY, child_main};
pub use config::{
    Compilation, DEFAULT_CACHE_CAPACITY, DEFAULT_COMPILE_QUEUE, DEFAULT_COMPILE_TIMEOUT,
    DEFAULT_MAX_CODE_BYTES, DEFAULT_MAX_COMPILES, DEFAULT_MAX_DATA_BYTES,
    DEFAULT_MAX_FUNCTION_BYTES, DEFAULT_MAX_FUNCTIONS, DEFAULT_MAX_GLOBALS, DEFAULT_MAX_LOCALS,
    DEFAULT_MAX_TYPES, DEFAULT_MEMORY_CACHE_BYTES, DEFAULT_POOL_SIZE, DEFAULT_TICK, OPTIMIZE_QUEUE,
    SandboxConfig, default_host_name,
};
pub use disk_cache::DiskCacheError;
pub use module::{LoadedModule, ModuleReport, NotTask, Tier, inspect};
pub use run::{CallState, RunOutcome};

/// Bytes of a pool slot's linear memory kept resident (and reset in place)
/// when a call ends.
const KEEP_RESIDENT: usize = 2 * 1024 * 1024;
/// Stack available to wasm code (wasmtime's `max_wasm_stack`).
pub const WASM_STACK: usize = 1024 * 1024;

/// Failures raised inside a run by the host itself; they travel through
/// wasmtime as the error of a trap and are classified by downcasting.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The wall-clock limit passed.
    #[error("wall-clock limit of {0:?} exceeded")]
    Timeout(Duration),
    /// The call was revoked while running.
    #[error("call revoked while running")]
    Revoked,
    /// Memory or a table would grow past the limit.
    #[error("{what} would grow to {desired} past the limit of {limit}")]
    MemoryLimit {
        /// `memory` (bytes) or `table` (elements).
        what: &'static str,
        /// What the guest asked for.
        desired: u64,
        /// The limit.
        limit: u64,
    },
    /// Result, stdout, stderr or logs past their limit.
    #[error("{what} exceeded its limit of {limit} bytes")]
    OutputLimit {
        /// Which output.
        what: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// A host function was given a pointer or length outside memory.
    #[error("guest passed an invalid pointer or length to `wasq.{0}`")]
    BadPointer(&'static str),
    /// The module has no exported memory at the time of a host call.
    #[error("module exports no memory named `memory`")]
    NoMemory,
}

impl SandboxError {
    /// The envelope kind this failure maps to.
    pub fn kind(&self) -> ErrorKind {
        match self {
            SandboxError::Timeout(_) => ErrorKind::Timeout,
            SandboxError::Revoked => ErrorKind::Revoked,
            SandboxError::MemoryLimit { .. } => ErrorKind::MemoryLimit,
            SandboxError::OutputLimit { .. } => ErrorKind::OutputLimit,
            SandboxError::BadPointer(_) => ErrorKind::Trap,
            SandboxError::NoMemory => ErrorKind::InvalidModule,
        }
    }
}

/// Lets a caller stop a running call from outside (revocation). Checked at
/// every epoch tick, and awaited alongside the call so a sleeping guest stops
/// at once.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<CancelInner>);

#[derive(Debug, Default)]
struct CancelInner {
    cancelled: AtomicBool,
    notify: Notify,
}

impl Cancel {
    /// A fresh, not cancelled, handle.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the call; it ends as `revoked`.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0.notify.notify_waiters();
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    pub(crate) async fn cancelled(&self) {
        loop {
            let notified = self.0.notify.notified();
            if self.is_cancelled() {
                return;
            }
            notified.await;
        }
    }
}

/// Errors building a sandbox (engine configuration, cache directory).
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// wasmtime refused the configuration.
    #[error("cannot configure the wasm engine: {0}")]
    Engine(String),
    /// The cache directory or its key cannot be used (or are unsafe to trust).
    #[error("compiled-module cache: {0}")]
    Cache(#[from] DiskCacheError),
}

type ModuleSlot = Arc<OnceCell<Result<Arc<LoadedModule>, LoadFailure>>>;

/// A failed load, and whether the module is to blame (then the failure is
/// remembered, so a hostile module is not compiled again for each call).
#[derive(Clone)]
struct LoadFailure {
    error: TaskError,
    remembered: bool,
}

impl From<compiler::CompileError> for LoadFailure {
    fn from(e: compiler::CompileError) -> Self {
        match e {
            compiler::CompileError::Module(error) => Self {
                error,
                remembered: true,
            },
            compiler::CompileError::Host(reason) => Self {
                error: TaskError::new(
                    ErrorKind::Trap,
                    format!("host error, not the module's: {reason}"),
                ),
                remembered: false,
            },
        }
    }
}

/// Counters of the module cache, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Loads served from memory.
    pub hits: u64,
    /// Loads that deserialized code from the disk cache.
    pub disk_hits: u64,
    /// Loads that compiled (quick code when tiered).
    pub compiled: u64,
    /// Background compiles of optimised code swapped in (tiered).
    pub optimized: u64,
    /// Disk cache entries refused (authentication failed, unreadable, a
    /// symlink) and compiled over.
    pub disk_rejected: u64,
    /// Modules left on quick code because the optimiser's queue was full.
    pub optimize_dropped: u64,
    /// Modules dropped from memory to stay within the count or byte cap.
    pub evicted: u64,
}

/// Runs untrusted modules. Cheap to share (`Arc` inside); one per process.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    /// Optimised code; the pooling allocator; the disk cache's engine.
    engine: Engine,
    linker: Linker<CallState>,
    /// Quick code (no optimisation), instantiated on demand; absent with
    /// [`Compilation::Optimized`].
    quick: Option<(Engine, Linker<CallState>)>,
    /// Hands quick-compiled modules to the background optimiser thread.
    optimizer: Mutex<Option<std::sync::mpsc::SyncSender<module::Optimize>>>,
    /// Compile slots.
    compiles: Arc<tokio::sync::Semaphore>,
    /// Compiles waiting for a slot.
    waiting: AtomicUsize,
    /// Loads waiting for a module that is not loaded yet.
    loading: AtomicUsize,
    /// Optimisations queued or running.
    pending: tokio::sync::watch::Sender<usize>,
    config: SandboxConfig,
    modules: Mutex<ModuleCache>,
    stats: Mutex<CacheStats>,
    ticker_stop: Arc<AtomicBool>,
    /// The authenticated disk cache, if `cache_dir` is set.
    disk: Option<disk_cache::DiskCache>,
}

#[derive(Default)]
struct ModuleCache {
    slots: std::collections::HashMap<ModuleHash, ModuleSlot>,
    /// Oldest first.
    order: std::collections::VecDeque<ModuleHash>,
}

impl ModuleCache {
    /// Drops the oldest modules until at most `count` remain and those
    /// loaded weigh at most `bytes`; answers how many went. Calls running a
    /// dropped module keep it alive until they end.
    fn evict(&mut self, count: usize, bytes: u64) -> u64 {
        let mut weight: u64 = self
            .slots
            .values()
            .filter_map(|s| s.get()?.as_ref().ok())
            .map(|m| m.footprint())
            .sum();
        let mut evicted = 0;
        while self.order.len() > count || (weight > bytes && !self.order.is_empty()) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.remove(&old) {
                if let Some(Ok(m)) = slot.get() {
                    weight = weight.saturating_sub(m.footprint());
                }
                evicted += 1;
            }
        }
        evicted
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Sandbox {
    /// Builds the engine (with the pooling allocator sized for
    /// `config.pool_size` concurrent calls), the linker, and starts the epoch
    /// ticker thread.
    ///
    /// # Errors
    /// When wasmtime rejects the configuration (for instance if the machine
    /// cannot reserve the virtual memory of the pool) or the cache directory
    /// cannot be created.
    pub fn new(config: SandboxConfig) -> Result<Self, SetupError> {
        let disk = match &config.cache_dir {
            Some(dir) => Some(disk_cache::DiskCache::open(
                dir,
                config.cache_key.as_deref(),
                config.cache_max_bytes,
            )?),
            None => None,
        };
        let setup = |e: wasmtime::Error| SetupError::Engine(format!("{e:#}"));
        let engine = Engine::new(&engine_config(&config, false)).map_err(setup)?;
        let linker = run::linker(&engine).map_err(setup)?;
        let quick = match config.compilation {
            Compilation::Optimized => None,
            Compilation::Tiered | Compilation::Quick => {
                let engine = Engine::new(&engine_config(&config, true)).map_err(setup)?;
                let linker = run::linker(&engine).map_err(setup)?;
                Some((engine, linker))
            }
        };
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let mut engines = vec![engine.weak()];
        engines.extend(quick.as_ref().map(|(e, _)| e.weak()));
        spawn_ticker(engines, config.tick, ticker_stop.clone());
        let inner = Arc::new(Inner {
            engine,
            linker,
            quick,
            optimizer: Mutex::new(None),
            compiles: Arc::new(tokio::sync::Semaphore::new(config.max_compiles.max(1))),
            waiting: AtomicUsize::new(0),
            loading: AtomicUsize::new(0),
            pending: tokio::sync::watch::Sender::new(0),
            config,
            modules: Mutex::default(),
            stats: Mutex::default(),
            ticker_stop,
            disk,
        });
        if inner.config.compilation == Compilation::Tiered {
            let (tx, rx) = std::sync::mpsc::sync_channel(OPTIMIZE_QUEUE);
            let weak = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("wasq-optimize".into())
                .spawn(move || optimizer(weak, rx))
                .map_err(|e| SetupError::Engine(format!("cannot start optimiser thread: {e}")))?;
            *inner.optimizer.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        }
        Ok(Self { inner })
    }

    /// Completes when no background optimisation is queued or running: every
    /// module loaded so far runs optimised code (unless its optimisation
    /// failed, which is logged) and is in the disk cache.
    pub async fn settled(&self) {
        let mut pending = self.inner.pending.subscribe();
        let _ = pending.wait_for(|n| *n == 0).await;
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The host's maximum limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.config.limits
    }

    /// Cache counters so far.
    pub fn cache_stats(&self) -> CacheStats {
        *self.inner.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a module is compiled and cached in memory (or known invalid).
    pub fn is_cached(&self, hash: &ModuleHash) -> bool {
        let cache = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        cache.slots.get(hash).is_some_and(|s| s.initialized())
    }

    /// Whether a call of `hash` would start one module load too many: `hash`
    /// is neither loaded nor loading, and [`SandboxConfig::max_compiles`] +
    /// [`SandboxConfig::compile_queue`] modules are loading already. A worker
    /// then hands the call back rather than hold a call slot for it, so a
    /// flood of new modules queues in Redis, not in the host's slots. (Calls
    /// of a module already loading wait for it: they add no compile.)
    pub fn compile_backlog_full(&self, hash: &ModuleHash) -> bool {
        let limit = self.inner.config.max_compiles.max(1) + self.inner.config.compile_queue;
        let cache = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        !cache.slots.contains_key(hash)
            && cache.slots.values().filter(|s| !s.initialized()).count() >= limit
    }

    /// Compiles waiting for a compile slot now.
    pub fn compiles_waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Calls waiting for their module to load (compile running or queued).
    pub fn loads_waiting(&self) -> usize {
        self.inner.loading.load(Ordering::SeqCst)
    }

    /// Compiles running now (each holds a compile slot until its thread ends).
    pub fn compiles_running(&self) -> usize {
        self.inner
            .config
            .max_compiles
            .max(1)
            .saturating_sub(self.inner.compiles.available_permits())
    }

    /// The compiled module for `hash`, compiling `bytes()` on first use.
    /// Concurrent loads of one module compile it once. `bytes` is only called
    /// on a miss; it returns the stored bytes, or an error envelope kind
    /// (`module_not_found`). The bytes are verified against `hash` before
    /// compiling (`integrity`). A module's own failures are cached too, so a
    /// hostile module is not recompiled for each of its calls; failures of
    /// the host (a compiler process that cannot start) are not.
    pub async fn load<F, Fut>(
        &self,
        hash: ModuleHash,
        bytes: F,
    ) -> Result<Arc<LoadedModule>, TaskError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, TaskError>>,
    {
        let slot = {
            let mut cache = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = cache.slots.get(&hash) {
                slot.clone()
            } else {
                let evicted = cache.evict(self.inner.config.cache_capacity.max(1) - 1, u64::MAX);
                self.count(|s| s.evicted += evicted);
                let slot = ModuleSlot::default();
                cache.slots.insert(hash, slot.clone());
                cache.order.push_back(hash);
                slot
            }
        };
        let _waiting = if slot.initialized() {
            self.count(|s| s.hits += 1);
            None
        } else {
            Some(Counted::new(&self.inner.loading))
        };
        let result = slot
            .get_or_init(|| async {
                let bytes = match bytes().await {
                    Ok(b) => b,
                    // Transient: the module may be uploaded later.
                    Err(error) => {
                        return Err(LoadFailure {
                            remembered: !matches!(error.kind, ErrorKind::ModuleNotFound),
                            error,
                        });
                    }
                };
                if ModuleHash::of(&bytes) != hash {
                    return Err(LoadFailure {
                        error: TaskError::new(
                            ErrorKind::Integrity,
                            format!("stored bytes of module {hash} do not hash to its key"),
                        ),
                        remembered: true,
                    });
                }
                self.compile(hash, bytes).await
            })
            .await
            .clone();
        let mut cache = self.inner.modules.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(m) => {
                let evicted = cache.evict(
                    self.inner.config.cache_capacity.max(1),
                    self.inner.config.memory_cache_bytes,
                );
                drop(cache);
                self.count(|s| s.evicted += evicted);
                Ok(m)
            }
            Err(failure) => {
                if !failure.remembered
                    && cache
                        .slots
                        .get(&hash)
                        .is_some_and(|s| Arc::ptr_eq(s, &slot))
                {
                    cache.slots.remove(&hash);
                    cache.order.retain(|h| h != &hash);
                }
                Err(failure.error)
            }
        }
    }

    /// Loads module bytes that are already at hand (`wasq exec`).
    pub async fn load_bytes(&self, bytes: Vec<u8>) -> Result<Arc<LoadedModule>, TaskError> {
        let hash = ModuleHash::of(&bytes);
        self.load(hash, || async move { Ok(bytes) }).await
    }

    /// Compiles on a thread of its own once a compile slot is free; the slot
    /// stays taken until the thread ends (an in-process compile past its
    /// deadline included), so compiles are bounded in number whatever
    /// submitters send.
    async fn compile(
        &self,
        hash: ModuleHash,
        bytes: Vec<u8>,
    ) -> Result<Arc<LoadedModule>, LoadFailure> {
        let permit = {
            let _waiting = Counted::new(&self.inner.waiting);
            let permit = self.inner.compiles.clone().acquire_owned().await;
            permit.map_err(|_| compiler::CompileError::Host("the sandbox is closed".into()))?
        };
        let this = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("wasq-compile-{}", &hash.to_hex()[..8]))
            .spawn(move || {
                let _permit = permit;
                let loaded = module::load(&this, hash, &bytes).map(Arc::new);
                if let Ok(m) = &loaded
                    && m.tier() == Tier::Quick
                    && this.config().compilation == Compilation::Tiered
                {
                    this.optimize_later(m.clone(), bytes);
                }
                let _ = tx.send(loaded);
            })
            .map_err(|e| {
                compiler::CompileError::Host(format!("cannot start a compiler thread: {e}"))
            })?;
        let timeout = self.inner.config.compile_timeout;
        // A compiler child is killed at `timeout` and its thread answers
        // then; waiting a little longer lets that answer (the process gone)
        // arrive first. An in-process compile cannot be stopped: stop waiting.
        let wait = match self.inner.config.compiler {
            Compiler::Process(_) => timeout.saturating_add(Duration::from_secs(2)),
            Compiler::InProcess => timeout,
        };
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(result)) => result.map_err(LoadFailure::from),
            Ok(Err(_)) => {
                Err(compiler::CompileError::Host("the compiler thread died".into()).into())
            }
            Err(_) => Err(compiler::CompileError::module(format!(
                "compiling the module took longer than {timeout:?}"
            ))
            .into()),
        }
    }

    /// The limits of one compile.
    pub(crate) fn budget(&self) -> compiler::Budget {
        compiler::Budget {
            deadline: self.inner.config.compile_timeout,
            memory: self.inner.config.compile_memory,
        }
    }

    /// Runs `task` of `module` with `args` (a JSON array) under `limits`
    /// (already lowered to the host's maximums by the caller, see
    /// [`Limits::restrict`]). Never panics on guest behaviour; every failure is
    /// in the outcome.
    pub async fn run(
        &self,
        module: &LoadedModule,
        task: &str,
        args: &[u8],
        limits: &Limits,
        cancel: &Cancel,
    ) -> RunOutcome {
        run::run(self, module, task, args, false, limits, cancel).await
    }

    /// [`Sandbox::run`] with args already parsed as JSON (a queued call's):
    /// only their being an array is checked, not their syntax again, which
    /// for megabytes of args is a pass as long as the task's own.
    pub async fn run_json(
        &self,
        module: &LoadedModule,
        task: &str,
        args: &serde_json::value::RawValue,
        limits: &Limits,
        cancel: &Cancel,
    ) -> RunOutcome {
        let args = args.get().as_bytes();
        run::run(self, module, task, args, true, limits, cancel).await
    }

    /// The engine and linker of optimised code.
    pub(crate) fn optimizing(&self) -> (&Engine, &Linker<CallState>) {
        (&self.inner.engine, &self.inner.linker)
    }

    /// The engine and linker of quick code, if this sandbox compiles any.
    pub(crate) fn quick(&self) -> Option<(&Engine, &Linker<CallState>)> {
        self.inner.quick.as_ref().map(|(e, l)| (e, l))
    }

    fn optimize_later(&self, module: Arc<LoadedModule>, bytes: Vec<u8>) {
        let optimizer = self
            .inner
            .optimizer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = optimizer.as_ref() {
            self.inner.pending.send_modify(|n| *n += 1);
            let hash = module.hash;
            match tx.try_send(module::Optimize { module, bytes }) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    self.inner.pending.send_modify(|n| *n -= 1);
                    self.count(|s| s.optimize_dropped += 1);
                    tracing::warn!(module = %hash, "optimiser queue full; the module keeps its quick code");
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    self.inner.pending.send_modify(|n| *n -= 1);
                }
            }
        }
    }

    pub(crate) fn disk(&self) -> Option<&disk_cache::DiskCache> {
        self.inner.disk.as_ref()
    }

    pub(crate) fn count(&self, f: impl FnOnce(&mut CacheStats)) {
        f(&mut self.inner.stats.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

/// One more in a counter for as long as it lives (a waiting load is counted
/// out also when its caller stops waiting).
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The background optimiser: compiles queued modules optimised, one at a
/// time (Cranelift spreads each over the cores), until the sandbox is gone.
fn optimizer(sandbox: std::sync::Weak<Inner>, jobs: std::sync::mpsc::Receiver<module::Optimize>) {
    while let Ok(job) = jobs.recv() {
        let Some(inner) = sandbox.upgrade() else {
            return;
        };
        let sandbox = Sandbox { inner };
        module::optimize(&sandbox, &job);
        drop(job);
        sandbox
            .inner
            .pending
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The engine configuration: optimised code on the pooling allocator, or
/// (`quick`) unoptimised code with the single-pass register allocator on the
/// on-demand allocator (quick code runs only until its module is optimised,
/// so it gets no pool of its own). Both have the same instrumentation and
/// stack; the limits are enforced per store by the `ResourceLimiter`.
fn engine_config(config: &SandboxConfig, quick: bool) -> Config {
    let mut cfg = code_config(if quick { Tier::Quick } else { Tier::Optimized });
    cfg.async_stack_size(WASM_STACK + 1024 * 1024);
    if quick {
        return cfg;
    }
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    let slots = config.pool_size.max(1);
    let max_memory = usize::try_from(config.limits.memory).unwrap_or(usize::MAX);
    pool.total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .total_stacks(slots)
        .max_memories_per_module(1)
        .max_tables_per_module(run::MAX_TABLES)
        .max_memory_size(max_memory)
        .table_elements(run::MAX_TABLE_ELEMENTS as usize)
        .max_unused_warm_slots(slots.min(64))
        // A freed slot is reset by zeroing the pages the call dirtied (found
        // with the PAGEMAP_SCAN ioctl where the kernel has it, Linux >= 6.7)
        // instead of `madvise(DONTNEED)` and its TLB shootdowns and page
        // faults, which cost about two thirds of a warm instantiate + call.
        // The price: up to this much memory stays resident per used slot.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(wasmtime::Enabled::Auto);
    cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    cfg
}

/// What decides the code of a tier: instrumentation, features, optimiser.
/// A compiler child builds its engine from this alone, so the code it writes
/// loads into the host's engines.
pub(crate) fn code_config(tier: Tier) -> Config {
    let mut cfg = Config::new();
    cfg.consume_fuel(true)
        .epoch_interruption(true)
        .max_wasm_stack(WASM_STACK)
        .wasm_multi_memory(false)
        .wasm_memory64(false)
        .wasm_custom_page_sizes(false)
        .memory_init_cow(true);
    match tier {
        Tier::Quick => cfg
            .cranelift_opt_level(OptLevel::None)
            .cranelift_regalloc_algorithm(RegallocAlgorithm::SinglePass),
        Tier::Optimized => cfg.cranelift_opt_level(OptLevel::Speed),
    };
    cfg
}

fn spawn_ticker(engines: Vec<wasmtime::EngineWeak>, tick: Duration, stop: Arc<AtomicBool>) {
    let _ = std::thread::Builder::new()
        .name("wasq-epoch".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                for engine in &engines {
                    match engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => return,
                    }
                }
            }
        });
}
