//! wasq-host: the sandbox that runs untrusted task modules, and the worker
//! loop that feeds it calls from a broker.
//!
//! # Layout
//! - `sandbox`: the wasmtime engines (quick and optimised code, see
//!   [`Compilation`]), module checks and cache, and the executor
//!   ([`Sandbox`], [`SandboxConfig`], [`RunOutcome`]).
//! - `sandbox/config`: [`SandboxConfig`], its `DEFAULT_*` values and
//!   [`Compilation`].
//! - `sandbox/module`: ABI checks and compile caps before wasmtime sees a module,
//!   the on-disk compiled-code cache.
//! - `sandbox/run`: one call in a fresh `Store`: the `wasq` host functions, limits,
//!   and the classification of failures into envelope kinds.
//! - `sandbox/stdio`: bounded capture of stdout and stderr.
//! - `worker`: the loop of `wasq host run` ([`Worker`], [`WorkerConfig`]): claim,
//!   run, publish; heartbeats, revocation checks, graceful shutdown.
//! - `worker/background`: the tasks beside the claim loop: batched
//!   publishing, heartbeats, revocation checks.
//! - `metrics`: Prometheus metrics of a host, `GET /metrics` of `wasq host run
//!   --metrics` ([`HostMetrics`], [`CallMetrics`]).
//! - `http`: what every HTTP endpoint checks first: the `Host` header
//!   against DNS rebinding, and an optional token ([`HttpGuard`]).
//! - `dashboard`: the web dashboard of `wasq dashboard` and its JSON API
//!   ([`Dashboard`]); its page, script and styles are embedded from `dashboard/`.
//! - `serve`: calls straight to a host over HTTP, no broker (`wasq serve`,
//!   [`DirectServer`]).
//!
//! The benchmarks behind `wasq bench` (`src/bench.rs`, `src/bench/`) sit
//! beside these files but belong to the `wasq` binary (`main.rs` declares
//! them), not to this library: embedders do not link them.

#![deny(missing_docs)]

mod dashboard;
mod http;
mod metrics;
mod sandbox;
mod serve;
mod worker;

pub use dashboard::{
    DEFAULT_DASHBOARD_ADDR, DEFAULT_RECENT_CALLS, DEFAULT_REFRESH, Dashboard, DashboardConfig,
    EventsSeen, HostView, Overview, RecentCall, THROUGHPUT_WINDOW_SECS, ThroughputPoint, Totals,
};
pub use http::HttpGuard;
pub use metrics::{CallMetrics, DURATION_BUCKETS, HostLabels, HostMetrics, METRICS_CONTENT_TYPE};
pub use sandbox::{
    CHILD_ARG, CacheStats, CallState, Cancel, Compilation, Compiler, DEFAULT_CACHE_CAPACITY,
    DEFAULT_COMPILE_MEMORY, DEFAULT_COMPILE_QUEUE, DEFAULT_COMPILE_TIMEOUT, DEFAULT_MAX_CODE_BYTES,
    DEFAULT_MAX_COMPILES, DEFAULT_MAX_DATA_BYTES, DEFAULT_MAX_FUNCTION_BYTES,
    DEFAULT_MAX_FUNCTIONS, DEFAULT_MAX_GLOBALS, DEFAULT_MAX_LOCALS, DEFAULT_MAX_TYPES,
    DEFAULT_MEMORY_CACHE_BYTES, DEFAULT_POOL_SIZE, DEFAULT_TICK, LoadedModule, ModuleReport,
    NotTask, OPTIMIZE_QUEUE, RunOutcome, Sandbox, SandboxConfig, SandboxError, SetupError, Tier,
    WASM_STACK, child_main, default_host_name, inspect,
};
pub use serve::{
    DEFAULT_LISTEN, DEFAULT_STORE_BYTES, DirectConfig, DirectServer, serve, server_tls,
};
pub use worker::{
    DEFAULT_CLAIM_BLOCK, DEFAULT_GRACE, DEFAULT_REVOKE_CHECK, Worker, WorkerConfig, WorkerStats,
};
