//! A plain wasmtime engine beside the sandbox's, to price the sandbox's
//! instrumentation: the same code generation settings, with fuel metering
//! and epoch interruption each switched on or off, and just enough of the
//! `wasq` imports to run the example tasks (no limits, no output bounds).

use std::time::{Duration, Instant};

use anyhow::bail;
use wasmtime::{Caller, Config, Engine, Extern, Linker, Module, OptLevel, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

use wasq_host::WASM_STACK;

/// Which instrumentation a [`PlainEngine`] compiles in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Instrumentation {
    /// Fuel metering (`consume_fuel`): a counter update per basic block.
    pub fuel: bool,
    /// Epoch interruption: a load and compare at function entries and loop headers.
    pub epochs: bool,
}

/// State of one plain run.
struct PlainState {
    wasi: WasiP1Ctx,
    input: Vec<u8>,
    output: Option<Vec<u8>>,
    failure: Option<String>,
}

/// A wasmtime engine configured like the sandbox's but for `instrumentation`,
/// with one module compiled.
pub struct PlainEngine {
    engine: Engine,
    linker: Linker<PlainState>,
    module: Module,
    has_initialize: bool,
    instrumentation: Instrumentation,
}

impl PlainEngine {
    /// Compiles `wasm` for an engine with `instrumentation`.
    ///
    /// # Errors
    /// If wasmtime rejects the configuration or the module.
    pub fn new(wasm: &[u8], instrumentation: Instrumentation) -> anyhow::Result<Self> {
        let mut cfg = Config::new();
        cfg.consume_fuel(instrumentation.fuel)
            .epoch_interruption(instrumentation.epochs)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(WASM_STACK)
            .async_stack_size(WASM_STACK + 1024 * 1024)
            .wasm_multi_memory(false)
            .wasm_memory64(false)
            .wasm_custom_page_sizes(false)
            .memory_init_cow(true);
        let engine = Engine::new(&cfg)?;
        let module = Module::new(&engine, wasm)
            .map_err(|e| anyhow::anyhow!("cannot compile the module: {e:#}"))?;
        let has_initialize = module.get_export("_initialize").is_some();
        Ok(Self {
            linker: linker(&engine).map_err(|e| anyhow::anyhow!("{e:#}"))?,
            engine,
            module,
            has_initialize,
            instrumentation,
        })
    }

    /// Instantiates the module and runs `task` with `args`; returns the output
    /// bytes and the wall time of instantiation plus the call.
    ///
    /// # Errors
    /// A trap, or the task failing.
    pub async fn run(&self, task: &str, args: &[u8]) -> anyhow::Result<(Vec<u8>, Duration)> {
        let state = PlainState {
            wasi: WasiCtxBuilder::new().args(&[task]).build_p1(),
            input: args.to_vec(),
            output: None,
            failure: None,
        };
        let mut store = Store::new(&self.engine, state);
        // No ticker runs: a far deadline never passes, but the checks run.
        store.set_epoch_deadline(u64::MAX / 4);
        if self.instrumentation.fuel {
            store.set_fuel(u64::MAX / 4)?;
        }
        let started = Instant::now();
        let instance = self
            .linker
            .instantiate_async(&mut store, &self.module)
            .await?;
        if self.has_initialize {
            instance
                .get_typed_func::<(), ()>(&mut store, "_initialize")?
                .call_async(&mut store, ())
                .await?;
        }
        instance
            .get_typed_func::<(), ()>(&mut store, &format!("task.{task}"))?
            .call_async(&mut store, ())
            .await?;
        let took = started.elapsed();
        let state = store.into_data();
        if let Some(f) = state.failure {
            bail!("task {task} failed: {f}");
        }
        Ok((state.output.unwrap_or_else(|| b"null".to_vec()), took))
    }
}

fn memory(caller: &mut Caller<'_, PlainState>) -> wasmtime::Result<wasmtime::Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => wasmtime::bail!("no memory export"),
    }
}

/// `start..start + len` if both are non-negative (the plain engine trusts its
/// guests otherwise: slicing checks the bounds).
fn range(start: i32, len: usize) -> wasmtime::Result<std::ops::Range<usize>> {
    match usize::try_from(start) {
        Ok(s) => Ok(s..s.saturating_add(len)),
        Err(_) => wasmtime::bail!("negative pointer"),
    }
}

fn read(caller: &mut Caller<'_, PlainState>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
    let memory = memory(caller)?;
    let data = memory.data(&*caller);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    match data.get(range(ptr, len)?) {
        Some(bytes) => Ok(bytes.to_vec()),
        None => wasmtime::bail!("out of bounds"),
    }
}

fn linker(engine: &Engine) -> wasmtime::Result<Linker<PlainState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut PlainState| &mut s.wasi)?;
    linker.func_wrap("wasq", "input_len", |c: Caller<'_, PlainState>| {
        c.data().input.len() as i32
    })?;
    linker.func_wrap(
        "wasq",
        "input_read",
        |mut c: Caller<'_, PlainState>, ptr: i32| -> wasmtime::Result<()> {
            let memory = memory(&mut c)?;
            let (data, state) = memory.data_and_store_mut(&mut c);
            match data.get_mut(range(ptr, state.input.len())?) {
                Some(dest) => dest.copy_from_slice(&state.input),
                None => wasmtime::bail!("out of bounds"),
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        "wasq",
        "output",
        |mut c: Caller<'_, PlainState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let bytes = read(&mut c, ptr, len)?;
            c.data_mut().output = Some(bytes);
            Ok(())
        },
    )?;
    for name in ["fail", "bad_input"] {
        linker.func_wrap(
            "wasq",
            name,
            |mut c: Caller<'_, PlainState>, ptr: i32, len: i32| -> wasmtime::Result<()> {
                let bytes = read(&mut c, ptr, len)?;
                c.data_mut().failure = Some(String::from_utf8_lossy(&bytes).into_owned());
                Ok(())
            },
        )?;
    }
    linker.func_wrap(
        "wasq",
        "log",
        |_: Caller<'_, PlainState>, _level: i32, _ptr: i32, _len: i32| {},
    )?;
    Ok(linker)
}
