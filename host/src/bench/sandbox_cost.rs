//! Sandbox benchmarks without a broker: compiling and deserializing a
//! module, warm instantiate + call, and CPU-bound work against native code
//! and against plain wasmtime engines with less instrumentation.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use wasq_broker::Limits;

use super::native;
use super::plain::{Instrumentation, PlainEngine};
use super::report::{CpuBound, SandboxCost, WarmCall};
use super::stats::{median, process_cpu};
use wasq_host::{Cancel, Compilation, LoadedModule, Sandbox, SandboxConfig, Tier};

/// A sandbox as a host builds it (tiered compilation), with `pool_size`
/// slots, larger args (for the sha256 benchmark) and an optional disk cache.
///
/// # Errors
/// If the sandbox cannot be built.
pub fn bench_sandbox(pool_size: u32, cache_dir: Option<&Path>) -> anyhow::Result<Sandbox> {
    compiling_sandbox(pool_size, cache_dir, Compilation::Tiered)
}

fn compiling_sandbox(
    pool_size: u32,
    cache_dir: Option<&Path>,
    compilation: Compilation,
) -> anyhow::Result<Sandbox> {
    Ok(Sandbox::new(SandboxConfig {
        limits: Limits {
            max_args: 64 * 1024 * 1024,
            ..Limits::default()
        },
        pool_size,
        cache_dir: cache_dir.map(Path::to_path_buf),
        compilation,
        ..SandboxConfig::default()
    })?)
}

/// Loads a module into a fresh sandbox compiling `how` (a compile, or a read
/// from the disk cache at `cache_dir`); returns the time `load_bytes` took,
/// and then lets a tiered sandbox finish optimising (untimed), so the disk
/// cache holds the optimised code.
///
/// # Errors
/// If the module does not load, or did not load the expected way.
pub async fn timed_load(
    wasm: &[u8],
    cache_dir: Option<&Path>,
    expect_disk_hit: bool,
    how: Compilation,
) -> anyhow::Result<Duration> {
    let sandbox = compiling_sandbox(4, cache_dir, how)?;
    let started = Instant::now();
    let module = sandbox
        .load_bytes(wasm.to_vec())
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the module: {e}"))?;
    let took = started.elapsed();
    sandbox.settled().await;
    let stats = sandbox.cache_stats();
    if expect_disk_hit {
        ensure!(
            stats.disk_hits == 1 && module.loaded_tier() == Tier::Optimized,
            "expected a disk-cache hit, got {stats:?}"
        );
    } else {
        let tier = match how {
            Compilation::Optimized => Tier::Optimized,
            Compilation::Tiered | Compilation::Quick => Tier::Quick,
        };
        ensure!(
            stats.compiled == 1 && module.loaded_tier() == tier,
            "expected a compile to {tier:?} code, got {stats:?} and {module:?}"
        );
    }
    Ok(took)
}

/// Load times of `wasm` in ms, `reps` times each: compiling quick code (what
/// a tiered host does first), compiling optimised code (what it does in the
/// background, and what `--compile optimized` does first), and reading the
/// optimised code back from the disk cache.
///
/// # Errors
/// If loading fails or the cache directory cannot be made.
pub async fn load_times(wasm: &[u8], reps: usize) -> anyhow::Result<LoadTimes> {
    let dir = scratch_dir("load")?;
    let mut times = LoadTimes::default();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for _ in 0..reps.max(1) {
        let _ = std::fs::remove_dir_all(&dir);
        times.quick.push(ms(
            timed_load(wasm, Some(&dir), false, Compilation::Tiered).await?
        ));
        times.deserialize.push(ms(
            timed_load(wasm, Some(&dir), true, Compilation::Tiered).await?
        ));
        times.optimized.push(ms(
            timed_load(wasm, None, false, Compilation::Optimized).await?
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(times)
}

/// Samples of [`load_times`], ms.
#[derive(Debug, Default)]
pub struct LoadTimes {
    /// Compiling quick code.
    pub quick: Vec<f64>,
    /// Compiling optimised code.
    pub optimized: Vec<f64>,
    /// Reading optimised code from the disk cache.
    pub deserialize: Vec<f64>,
}

/// A fresh directory under the system temp dir, unique to this process.
///
/// # Errors
/// If it cannot be created.
pub fn scratch_dir(what: &str) -> anyhow::Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasq-bench-{}-{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// `calls` warm runs of `task` one after another; host CPU and wall per call.
///
/// # Errors
/// If a run fails or returns something else than `expected`.
pub async fn warm_calls(
    sandbox: &Sandbox,
    module: &LoadedModule,
    task: &str,
    args: &[u8],
    expected: &serde_json::Value,
    calls: usize,
) -> anyhow::Result<WarmCall> {
    let limits = *sandbox.limits();
    let cancel = Cancel::new();
    let json = queued_args(args)?;
    // Warm up: the first instantiations fault in the pool's slots.
    for _ in 0..100 {
        sandbox
            .run_json(module, task, &json, &limits, &cancel)
            .await;
    }
    let cpu0 = process_cpu();
    let started = Instant::now();
    let mut failed = 0usize;
    for _ in 0..calls {
        let outcome = sandbox
            .run_json(module, task, &json, &limits, &cancel)
            .await;
        match &outcome.result {
            Ok(v) if v == expected => {}
            Ok(v) => bail!("{task} returned {v}, expected {expected}"),
            Err(_) => failed += 1,
        }
    }
    let wall = started.elapsed();
    let cpu = match (cpu0, process_cpu()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => wall,
    };
    ensure!(
        failed == 0,
        "{failed} of {calls} warm calls of {task} failed"
    );
    let per = |d: Duration| d.as_secs_f64() * 1e6 / calls.max(1) as f64;
    Ok(WarmCall {
        task: task.to_string(),
        calls,
        cpu_us_per_call: per(cpu),
        wall_us_per_call: per(wall),
    })
}

/// One CPU-bound task, `reps` times on each engine, medians in ms. The
/// repetitions are interleaved (native, sandbox, then each plain engine, and
/// round again), so a machine that slows down or speeds up over the phase
/// shifts every configuration alike instead of whichever ran then.
///
/// # Errors
/// If any run fails or disagrees with the native result.
#[allow(clippy::too_many_arguments)]
async fn cpu_bound(
    wasm: &[u8],
    sandbox: &Sandbox,
    module: &LoadedModule,
    label: String,
    task: &str,
    args: &[u8],
    native_run: &dyn Fn() -> String,
    accelerated: Option<&dyn Fn() -> String>,
    reps: usize,
) -> anyhow::Result<CpuBound> {
    let reps = reps.max(1);
    let time_native = |f: &dyn Fn() -> String| {
        let t = Instant::now();
        let out = f();
        (t.elapsed().as_secs_f64() * 1e3, out)
    };
    let expected: serde_json::Value = serde_json::from_str(&native_run())?;
    let engines = [(false, false), (false, true), (true, false), (true, true)]
        .into_iter()
        .map(|(fuel, epochs)| PlainEngine::new(wasm, Instrumentation { fuel, epochs }))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let limits = *sandbox.limits();
    let cancel = Cancel::new();
    let json = queued_args(args)?;

    let mut native = Vec::new();
    let mut native_accelerated = Vec::new();
    let mut sandboxed = Vec::new();
    let mut plain = vec![Vec::new(); engines.len()];
    for _ in 0..reps {
        let (took, out) = time_native(native_run);
        ensure!(
            serde_json::from_str::<serde_json::Value>(&out)? == expected,
            "native {task} is not deterministic"
        );
        native.push(took);
        if let Some(f) = accelerated {
            native_accelerated.push(time_native(f).0);
        }

        let t = Instant::now();
        let outcome = sandbox
            .run_json(module, task, &json, &limits, &cancel)
            .await;
        sandboxed.push(t.elapsed().as_secs_f64() * 1e3);
        match outcome.result {
            Ok(v) if v == expected => {}
            Ok(v) => bail!("sandboxed {task} returned {v}, natively {expected}"),
            Err(e) => bail!("sandboxed {task} failed: {e}"),
        }

        for (engine, samples) in engines.iter().zip(&mut plain) {
            let (out, took) = engine.run(task, args).await?;
            let v: serde_json::Value = serde_json::from_slice(&out)?;
            ensure!(
                v == expected,
                "plain {task} returned {v}, natively {expected}"
            );
            samples.push(took.as_secs_f64() * 1e3);
        }
    }
    let native_ms = median(&native).unwrap_or(f64::NAN);
    let native_accelerated_ms = accelerated.and_then(|_| median(&native_accelerated));
    let sandbox_ms = median(&sandboxed).unwrap_or(f64::NAN);
    let plain: Vec<f64> = plain
        .iter()
        .map(|s| median(s).unwrap_or(f64::NAN))
        .collect();
    Ok(CpuBound {
        task: label,
        native_ms,
        sandbox_ms,
        wasm_plain_ms: plain[0],
        wasm_epochs_ms: plain[1],
        wasm_fuel_ms: plain[2],
        wasm_fuel_epochs_ms: plain[3],
        sandbox_vs_native: sandbox_ms / native_ms,
        fuel_cost: plain[2] / plain[0],
        epoch_cost: plain[1] / plain[0],
        native_accelerated_ms,
    })
}

/// `args` as a host gets them from a queued call: JSON parsed once, on
/// decoding the call (so runs go through [`Sandbox::run_json`], as the
/// worker's do).
fn queued_args(args: &[u8]) -> anyhow::Result<Box<serde_json::value::RawValue>> {
    let text = String::from_utf8(args.to_vec()).context("args are not UTF-8")?;
    serde_json::value::RawValue::from_string(text).context("args are not JSON")
}

/// What [`sandbox_cost`] runs.
#[derive(Debug, Clone)]
pub struct SandboxBench {
    /// Warm calls of each task.
    pub warm_calls: usize,
    /// `n` of `fib(n)`.
    pub fib_n: u32,
    /// Bytes of text for `sha256`.
    pub sha256_bytes: usize,
    /// Repetitions of each CPU-bound run.
    pub reps: usize,
}

/// Warm calls and CPU-bound work of the examples module (`examples`).
///
/// # Errors
/// If the module lacks the tasks or a run fails.
pub async fn sandbox_cost(examples: &[u8], bench: &SandboxBench) -> anyhow::Result<SandboxCost> {
    let sandbox = bench_sandbox(16, None)?;
    let module: Arc<LoadedModule> = sandbox
        .load_bytes(examples.to_vec())
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the examples module: {e}"))?;
    // Steady state: the optimised code, as a host runs it once its
    // background compile is done.
    sandbox.settled().await;
    ensure!(
        module.tier() == Tier::Optimized,
        "the examples module was not optimised"
    );
    let warm_noop = warm_calls(
        &sandbox,
        &module,
        "noop",
        b"[]",
        &serde_json::Value::Null,
        bench.warm_calls,
    )
    .await?;
    let warm_add = warm_calls(
        &sandbox,
        &module,
        "add",
        b"[4,5]",
        &serde_json::json!(9),
        bench.warm_calls,
    )
    .await?;

    let n = bench.fib_n;
    let fib_args = format!("[{n}]");
    let fib = cpu_bound(
        examples,
        &sandbox,
        &module,
        format!("fib({n})"),
        "fib",
        fib_args.as_bytes(),
        &|| native::fib(n).to_string(),
        None,
        bench.reps,
    )
    .await?;

    // Letters only: the JSON string needs no escapes.
    let text: String = (0..bench.sha256_bytes)
        .map(|i| char::from(b'a' + (i.wrapping_mul(7919) % 26) as u8))
        .collect();
    let sha_args = serde_json::to_vec(&[&text])?;
    let accelerated = || {
        use sha2::Digest;
        let (t,): (String,) = serde_json::from_slice(&sha_args).unwrap_or_default();
        serde_json::to_string(&hex::encode(sha2::Sha256::digest(t.as_bytes()))).unwrap_or_default()
    };
    let sha = cpu_bound(
        examples,
        &sandbox,
        &module,
        format!("sha256({:.1} MiB)", bench.sha256_bytes as f64 / 1048576.0),
        "sha256",
        &sha_args,
        &|| native::sha256_task(&sha_args).unwrap_or_default(),
        Some(&accelerated as &dyn Fn() -> String),
        bench.reps,
    )
    .await?;
    Ok(SandboxCost {
        warm_noop,
        warm_add,
        cpu_bound: vec![fib, sha],
    })
}
