//! Checking, compiling and caching modules.
//!
//! Before wasmtime sees a module, a cheap streaming pass (wasmparser) checks
//! what the guest ABI allows and caps what makes compilation expensive: the
//! number of functions, the total and per-function body size. Cranelift's cost
//! is roughly linear in code size, so these caps bound compile time and memory;
//! a wall-clock cap on compilation backs them up.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use serde::Serialize;
use wasmparser::{ExternalKind, Parser, Payload, TypeRef};
use wasmtime::{ExternType, InstancePre, Module};
use wasq_broker::{ErrorKind, ModuleHash, TaskError, is_valid_task_name};

use super::compiler::{self, CompileError};
use super::run::{MAX_TABLE_ELEMENTS, MAX_TABLES};
use super::{CallState, Compilation, Sandbox, SandboxConfig};

/// The `wasq` imports of ABI v1 (plus the `bad_input` extension).
pub(crate) const WASQ_IMPORTS: &[&str] = &[
    "input_len",
    "input_read",
    "output",
    "fail",
    "log",
    "bad_input",
];

/// The import module of WASI preview 1.
pub(crate) const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Which code of a module new calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Compiled without optimisation, to start sooner.
    Quick,
    /// Compiled with Cranelift's optimisations (or read from the disk cache).
    Optimized,
}

/// A compiled, checked module, ready to instantiate.
pub struct LoadedModule {
    /// Its sha256.
    pub hash: ModuleHash,
    /// Its size in bytes.
    pub size: u64,
    /// Its task names, sorted.
    pub tasks: Vec<String>,
    /// Its other exports, and why each is not a task.
    pub not_tasks: Vec<NotTask>,
    /// The code it was loaded with, and which tier that is.
    first: (Tier, InstancePre<CallState>),
    /// Optimised code swapped in later by the background optimiser.
    optimized: std::sync::OnceLock<InstancePre<CallState>>,
    pub(crate) has_initialize: bool,
}

impl LoadedModule {
    /// Which code a call starting now runs.
    pub fn tier(&self) -> Tier {
        if self.optimized.get().is_some() {
            Tier::Optimized
        } else {
            self.first.0
        }
    }

    /// Which code it was loaded with: [`Tier::Quick`] when it was compiled
    /// for a tiered or quick sandbox, [`Tier::Optimized`] when it came from
    /// the disk cache or an optimising sandbox.
    pub fn loaded_tier(&self) -> Tier {
        self.first.0
    }

    /// The code a call starting now instantiates (its engine is
    /// `pre.module().engine()`).
    pub(crate) fn pre(&self) -> &InstancePre<CallState> {
        self.optimized.get().unwrap_or(&self.first.1)
    }

    /// Bytes it holds in memory: its compiled code (both tiers once
    /// optimised) and its wasm size, which bounds its memory image.
    pub fn footprint(&self) -> u64 {
        let code = |pre: &InstancePre<CallState>| {
            let range = pre.module().image_range();
            (range.end as usize).saturating_sub(range.start as usize) as u64
        };
        self.size + code(&self.first.1) + self.optimized.get().map_or(0, code)
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("hash", &self.hash)
            .field("size", &self.size)
            .field("tasks", &self.tasks)
            .field("tier", &self.tier())
            .finish_non_exhaustive()
    }
}

/// A quick-compiled module waiting for its optimised code.
pub(crate) struct Optimize {
    pub(crate) module: std::sync::Arc<LoadedModule>,
    pub(crate) bytes: Vec<u8>,
}

/// What `wasq inspect` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModuleReport {
    /// Hex sha256 of the bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Task names (`task.<name>` exports), sorted.
    pub tasks: Vec<String>,
    /// The other exports, each with why it is not a task.
    pub not_tasks: Vec<NotTask>,
    /// Imports as `module.name`.
    pub imports: Vec<String>,
}

/// Reads a module's tasks and imports without compiling or running it, and
/// checks it against the guest ABI and the caps of `config`.
///
/// # Errors
/// An `invalid_module` error saying what is wrong.
pub fn inspect(bytes: &[u8], config: &SandboxConfig) -> Result<ModuleReport, TaskError> {
    let scan = scan(bytes, config)?;
    Ok(ModuleReport {
        sha256: ModuleHash::of(bytes).to_hex(),
        size: bytes.len() as u64,
        tasks: scan.tasks.into_iter().collect(),
        not_tasks: scan.not_tasks,
        imports: scan.imports,
    })
}

struct Scan {
    tasks: BTreeSet<String>,
    imports: Vec<String>,
    not_tasks: Vec<NotTask>,
}

/// An export that is not a task, and why: what `wasq inspect` lists beside
/// the tasks, and what a call of a task by that name is told.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NotTask {
    /// The export's name.
    pub export: String,
    /// Why it is not a task, in the words a call of it gets.
    pub why: String,
}

/// Why the export `name` of `kind` is not a task; `None` for `task.*`.
fn why_not_task(name: &str, kind: ExternalKind) -> Option<String> {
    if name.starts_with("task.") {
        return None;
    }
    Some(match (name, kind) {
        ("memory", ExternalKind::Memory) => "the module's memory".to_string(),
        ("_initialize", ExternalKind::Func) => {
            "the reactor initialiser, run before every task".to_string()
        }
        (_, ExternalKind::Func | ExternalKind::FuncExact) => format!(
            "a function, but not a task: tasks are exported as `task.NAME` (this one would be `task.{name}`)"
        ),
        _ => "not a function".to_string(),
    })
}

/// Refuses a section of `count` items over `limit`: "module declares 9
/// types, over the limit of 8".
fn section_cap(verb: &str, items: &str, count: u32, limit: u32) -> Result<(), TaskError> {
    if count > limit {
        return Err(invalid(format!(
            "module {verb} {count} {items}, over the limit of {limit}"
        )));
    }
    Ok(())
}

fn invalid(msg: impl Into<String>) -> TaskError {
    TaskError::new(ErrorKind::InvalidModule, msg)
}

fn scan(bytes: &[u8], config: &SandboxConfig) -> Result<Scan, TaskError> {
    if bytes.len() as u64 > config.max_module {
        return Err(invalid(format!(
            "module is {} bytes, over the limit of {}",
            bytes.len(),
            config.max_module
        )));
    }
    if !bytes.starts_with(b"\0asm") {
        return Err(invalid("not a WebAssembly module (bad magic number)"));
    }
    let mut tasks = BTreeSet::new();
    let mut imports = Vec::new();
    let mut not_tasks = Vec::new();
    // Per type index: is it the task type `[] -> []`? Per function index
    // (imports first): its type index.
    let mut unit_types: Vec<bool> = Vec::new();
    let mut function_types: Vec<u32> = Vec::new();
    let mut has_memory = false;
    let mut code_bytes: u64 = 0;
    let mut data_bytes: u64 = 0;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| invalid(format!("malformed module: {e}")))?;
        match payload {
            Payload::Version { encoding, .. } if encoding != wasmparser::Encoding::Module => {
                return Err(invalid(
                    "components are not supported; expected a core module",
                ));
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import =
                        import.map_err(|e| invalid(format!("malformed import section: {e}")))?;
                    let name = format!("{}.{}", import.module, import.name);
                    let allowed = match import.module {
                        "wasq" => WASQ_IMPORTS.contains(&import.name),
                        WASI_MODULE => true,
                        _ => false,
                    };
                    if !allowed || !matches!(import.ty, TypeRef::Func(_) | TypeRef::FuncExact(_)) {
                        return Err(invalid(format!(
                            "disallowed import `{name}`: only functions of `wasq` (ABI v1) and `{WASI_MODULE}` may be imported"
                        )));
                    }
                    if let TypeRef::Func(ty) | TypeRef::FuncExact(ty) = import.ty {
                        function_types.push(ty);
                    }
                    imports.push(name);
                }
            }
            // What the pooling allocator of optimised code refuses at
            // compile time and quick code only at instantiation (where it
            // looked like a guest `trap`): checked here for both tiers.
            Payload::TableSection(reader) => {
                if reader.count() > MAX_TABLES {
                    return Err(invalid(format!(
                        "module defines {} tables, over the limit of {MAX_TABLES}",
                        reader.count()
                    )));
                }
                let limit = MAX_TABLE_ELEMENTS.min(config.limits.memory / 8);
                for table in reader {
                    let table =
                        table.map_err(|e| invalid(format!("malformed table section: {e}")))?;
                    if table.ty.initial > limit {
                        // Like initial memory: a limit, not a defect.
                        return Err(TaskError::new(
                            ErrorKind::MemoryLimit,
                            format!(
                                "module declares a table of {} elements, over the host's limit of {limit}",
                                table.ty.initial
                            ),
                        ));
                    }
                }
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory =
                        memory.map_err(|e| invalid(format!("malformed memory section: {e}")))?;
                    let initial = memory.initial.saturating_mul(65_536);
                    if initial > config.limits.memory {
                        // It could never run on this host: a limit, not a defect.
                        return Err(TaskError::new(
                            ErrorKind::MemoryLimit,
                            format!(
                                "module declares {initial} bytes of initial memory, over the host's limit of {}",
                                config.limits.memory
                            ),
                        ));
                    }
                }
            }
            Payload::TypeSection(reader) => {
                section_cap("declares", "types", reader.count(), config.max_types)?;
                for group in reader {
                    let group =
                        group.map_err(|e| invalid(format!("malformed type section: {e}")))?;
                    for ty in group.into_types() {
                        unit_types.push(matches!(
                            &ty.composite_type.inner,
                            wasmparser::CompositeInnerType::Func(f)
                                if f.params().is_empty() && f.results().is_empty()
                        ));
                    }
                    if unit_types.len() as u64 > u64::from(config.max_types) {
                        return Err(invalid(format!(
                            "module declares more than {} types, the limit",
                            config.max_types
                        )));
                    }
                }
            }
            Payload::GlobalSection(reader) => {
                section_cap("declares", "globals", reader.count(), config.max_globals)?;
            }
            Payload::DataSection(reader) => {
                for data in reader {
                    let data = data.map_err(|e| invalid(format!("malformed data section: {e}")))?;
                    data_bytes += data.data.len() as u64;
                    if data_bytes > config.max_data_bytes {
                        return Err(invalid(format!(
                            "data segments exceed {} bytes in all",
                            config.max_data_bytes
                        )));
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                section_cap("defines", "functions", reader.count(), config.max_functions)?;
                for ty in reader {
                    function_types
                        .push(ty.map_err(|e| invalid(format!("malformed function section: {e}")))?);
                }
            }
            Payload::CodeSectionEntry(body) => {
                let len = body.range().len() as u64;
                if len > u64::from(config.max_function_bytes) {
                    return Err(invalid(format!(
                        "a function body is {len} bytes, over the limit of {}",
                        config.max_function_bytes
                    )));
                }
                code_bytes += len;
                if code_bytes > config.max_code_bytes {
                    return Err(invalid(format!(
                        "function bodies exceed {} bytes in all",
                        config.max_code_bytes
                    )));
                }
                let mut locals: u64 = 0;
                let reader = body
                    .get_locals_reader()
                    .map_err(|e| invalid(format!("malformed function body: {e}")))?;
                for group in reader {
                    let (count, _) =
                        group.map_err(|e| invalid(format!("malformed function locals: {e}")))?;
                    locals += u64::from(count);
                    if locals > u64::from(config.max_locals) {
                        return Err(invalid(format!(
                            "a function declares more than {} locals, the limit",
                            config.max_locals
                        )));
                    }
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export =
                        export.map_err(|e| invalid(format!("malformed export section: {e}")))?;
                    if export.name == "memory" && export.kind == ExternalKind::Memory {
                        has_memory = true;
                    }
                    let is_unit = |index: u32| {
                        function_types
                            .get(index as usize)
                            .and_then(|ty| unit_types.get(*ty as usize))
                            .copied()
                            .unwrap_or(false)
                    };
                    if export.name == "_initialize"
                        && !(export.kind == ExternalKind::Func && is_unit(export.index))
                    {
                        return Err(invalid(UNIT_TYPE_ONLY.replace("{}", export.name)));
                    }
                    if let Some(why) = why_not_task(export.name, export.kind) {
                        not_tasks.push(NotTask {
                            export: export.name.to_string(),
                            why,
                        });
                    }
                    if let Some(task) = export.name.strip_prefix("task.") {
                        if !is_valid_task_name(task) {
                            return Err(invalid(format!(
                                "export `{}` is not a valid task name ([A-Za-z_][A-Za-z0-9_]*)",
                                export.name
                            )));
                        }
                        if export.kind != ExternalKind::Func {
                            return Err(invalid(format!(
                                "export `{}` is not a function",
                                export.name
                            )));
                        }
                        if !is_unit(export.index) {
                            return Err(invalid(UNIT_TYPE_ONLY.replace("{}", export.name)));
                        }
                        tasks.insert(task.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    if !has_memory {
        return Err(invalid("module exports no memory named `memory`"));
    }
    Ok(Scan {
        tasks,
        imports,
        not_tasks,
    })
}

/// What a task or `_initialize` export of another type is told (`{}`: its name).
const UNIT_TYPE_ONLY: &str = "export `{}` must be a function of type [] -> []";

/// Checks, compiles (or reads compiled code from the disk cache) and
/// pre-links a module. Runs on a compiler thread. A disk cache entry is
/// optimised code; without one, the code is quick unless the sandbox compiles
/// [`Compilation::Optimized`], and only optimised code is written back.
pub(crate) fn load(
    sandbox: &Sandbox,
    hash: ModuleHash,
    bytes: &[u8],
) -> Result<LoadedModule, CompileError> {
    let config = sandbox.config();
    let scan = scan(bytes, config).map_err(CompileError::Module)?;
    let (engine, linker) = sandbox.optimizing();
    let mut module = None;
    match sandbox.disk().map(|d| d.get(&hash, engine_id(engine))) {
        None | Some(Ok(None)) => {}
        Some(Ok(Some(code))) => {
            // SAFETY: the bytes carry a valid HMAC under this host's key over
            // the module hash, this engine's compatibility hash and the code:
            // they are what `store` serialized from this engine's own
            // compilation of this module (see `disk_cache`), and wasmtime
            // checks the engine compatibility header too.
            #[allow(unsafe_code)]
            match unsafe { Module::deserialize(engine, &code) } {
                Ok(m) => {
                    sandbox.count(|s| s.disk_hits += 1);
                    module = Some((Tier::Optimized, m, linker));
                }
                Err(e) => {
                    sandbox.count(|s| s.disk_rejected += 1);
                    tracing::warn!(module = %hash, cause = %e, "ignoring unreadable compiled-module cache entry")
                }
            }
        }
        Some(Err(reason)) => {
            sandbox.count(|s| s.disk_rejected += 1);
            tracing::warn!(module = %hash, %reason, "refusing compiled-module cache entry; compiling again");
        }
    }
    let (tier, module, linker) = match (module, sandbox.quick()) {
        (Some(m), _) => m,
        (None, Some((engine, linker))) if config.compilation != Compilation::Optimized => {
            let m = compiler::compile(
                &config.compiler,
                engine,
                Tier::Quick,
                bytes,
                &sandbox.budget(),
            )?;
            sandbox.count(|s| s.compiled += 1);
            (Tier::Quick, m, linker)
        }
        (None, _) => {
            let m = compiler::compile(
                &config.compiler,
                engine,
                Tier::Optimized,
                bytes,
                &sandbox.budget(),
            )?;
            sandbox.count(|s| s.compiled += 1);
            store(sandbox, &hash, &m);
            (Tier::Optimized, m, linker)
        }
    };
    let mut has_initialize = false;
    for export in module.exports() {
        let is_task = export.name().starts_with("task.");
        if !is_task && export.name() != "_initialize" {
            continue;
        }
        match export.ty() {
            ExternType::Func(f) if f.params().len() == 0 && f.results().len() == 0 => {
                if !is_task {
                    has_initialize = true;
                }
            }
            _ => {
                return Err(CompileError::module(
                    UNIT_TYPE_ONLY.replace("{}", export.name()),
                ));
            }
        }
    }
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| CompileError::module(format!("{e:#}")))?;
    Ok(LoadedModule {
        hash,
        size: bytes.len() as u64,
        tasks: scan.tasks.into_iter().collect(),
        not_tasks: scan.not_tasks,
        first: (tier, pre),
        optimized: std::sync::OnceLock::new(),
        has_initialize,
    })
}

/// Compiles a quick-compiled module optimised, writes it to the disk cache
/// and swaps it in: calls that start afterwards run it. A failure (the same
/// bytes compiled once already) is logged; the module keeps its quick code.
pub(crate) fn optimize(sandbox: &Sandbox, job: &Optimize) {
    let (engine, linker) = sandbox.optimizing();
    let hash = job.module.hash;
    let compiled = compiler::compile(
        &sandbox.config().compiler,
        engine,
        Tier::Optimized,
        &job.bytes,
        &sandbox.budget(),
    )
    .and_then(|m| {
        let pre = linker
            .instantiate_pre(&m)
            .map_err(|e| CompileError::module(format!("{e:#}")))?;
        Ok((m, pre))
    });
    match compiled {
        Ok((m, pre)) => {
            store(sandbox, &hash, &m);
            if job.module.optimized.set(pre).is_ok() {
                sandbox.count(|s| s.optimized += 1);
                tracing::debug!(module = %hash, "optimised code swapped in");
            }
        }
        Err(CompileError::Module(e)) => {
            tracing::warn!(module = %hash, cause = %e.message, "cannot optimise module; it keeps running quick code")
        }
        Err(CompileError::Host(reason)) => {
            tracing::warn!(module = %hash, %reason, "cannot optimise module; it keeps running quick code")
        }
    }
}

/// Which engine configuration compiled code belongs to.
fn engine_id(engine: &wasmtime::Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

/// Writes optimised code to the disk cache, if there is one.
fn store(sandbox: &Sandbox, hash: &ModuleHash, module: &Module) {
    let Some(disk) = sandbox.disk() else {
        return;
    };
    match module.serialize() {
        Ok(code) => disk.put(hash, engine_id(module.engine()), &code),
        Err(e) => tracing::warn!(module = %hash, cause = %e, "cannot serialize compiled code"),
    }
}
