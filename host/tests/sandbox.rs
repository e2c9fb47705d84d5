//! The sandbox against hostile and well-behaved WAT guests: every limit in a
//! pair (obeyed, violated) asserting the exact error kind, bad pointers in
//! every host function, invalid modules, and a host that keeps working after.
//! Every run goes through both compilation tiers (quick and optimised code, on
//! their two engines) at once, and the two must agree on the outcome and, where
//! the end does not depend on the clock, on the exact fuel used.

use std::sync::OnceLock;
use std::time::Duration;

use wasq_broker::{ErrorKind, Limits, ModuleHash};
use wasq_host::{CacheStats, Cancel, Compilation, RunOutcome, Sandbox, SandboxConfig, Tier};

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("test guest is valid WAT")
}

const BASIC: &str = include_str!("guests/basic.wat");
const LIMITS: &str = include_str!("guests/limits.wat");
const POINTERS: &str = include_str!("guests/pointers.wat");

/// One sandbox shared by all tests in this file, like a host's: hostile calls
/// must not disturb the ones after them. Optimised code only.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| compiling(Compilation::Optimized))
}

/// The same, running quick code only.
fn quick_sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| compiling(Compilation::Quick))
}

fn compiling(compilation: Compilation) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_size: 16,
        compilation,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

async fn run_on(sb: &Sandbox, module: &[u8], task: &str, args: &str, limits: Limits) -> RunOutcome {
    let module = match sb.load_bytes(module.to_vec()).await {
        Ok(m) => m,
        Err(e) => return RunOutcome::failed(e),
    };
    sb.run(&module, task, args.as_bytes(), &limits, &Cancel::new())
        .await
}

/// Runs on optimised and on quick code at once; asserts they agree and
/// returns the optimised run's outcome.
async fn run_with(module: &[u8], task: &str, args: &str, limits: Limits) -> RunOutcome {
    let (optimized, quick) = tokio::join!(
        run_on(sandbox(), module, task, args, limits),
        run_on(quick_sandbox(), module, task, args, limits),
    );
    assert_same_outcome(&optimized, &quick);
    optimized
}

#[track_caller]
fn assert_same_outcome(optimized: &RunOutcome, quick: &RunOutcome) {
    let what = |o: &RunOutcome| o.result.as_ref().map_err(|e| e.kind).cloned();
    assert_eq!(
        what(optimized),
        what(quick),
        "optimised and quick code disagree: {:?} vs {:?}",
        optimized.result,
        quick.result
    );
    // Where a run ends by the clock, or by the stack running out (quick code
    // has larger frames), the fuel used up to there differs.
    let clocked = matches!(
        kind(optimized),
        Some(ErrorKind::Timeout | ErrorKind::Revoked)
    );
    let stack = optimized
        .result
        .as_ref()
        .is_err_and(|e| e.kind == ErrorKind::Trap && e.message.contains("stack"));
    if !clocked && !stack {
        assert_eq!(
            optimized.fuel_used, quick.fuel_used,
            "optimised and quick code used different fuel"
        );
        assert_eq!(optimized.logs, quick.logs);
        assert_eq!(optimized.stdout, quick.stdout);
    }
}

async fn run(module: &[u8], task: &str, limits: Limits) -> RunOutcome {
    run_with(module, task, "[]", limits).await
}

fn kind(o: &RunOutcome) -> Option<ErrorKind> {
    o.result.as_ref().err().map(|e| e.kind)
}

#[track_caller]
fn assert_ok(o: &RunOutcome) {
    assert!(o.result.is_ok(), "expected success, got {:?}", o.result);
}

#[track_caller]
fn assert_kind(o: &RunOutcome, k: ErrorKind) {
    assert_eq!(kind(o), Some(k), "outcome: {:?}", o.result);
}

/// Ended as `timeout`, not before its limit and not long after it.
#[track_caller]
fn assert_timed_out(o: &RunOutcome, limit: Duration) {
    assert_kind(o, ErrorKind::Timeout);
    assert!(o.duration >= limit, "stopped early: {:?}", o.duration);
    assert!(
        o.duration < Duration::from_secs(5),
        "stopped late: {:?}",
        o.duration
    );
}

fn limits() -> Limits {
    Limits::default()
}

#[tokio::test]
async fn basic_calls_and_envelope_fields() {
    let m = wat(BASIC);
    let o = run(&m, "answer", limits()).await;
    assert_eq!(o.result.as_ref().unwrap(), &serde_json::json!(42));
    assert!(o.fuel_used > 0);
    let o = run_with(&m, "echo", r#"[1, "two", {"x": null}]"#, limits()).await;
    assert_eq!(
        o.result.unwrap(),
        serde_json::json!([1, "two", {"x": null}])
    );
    let o = run(&m, "nothing", limits()).await;
    assert_eq!(o.result.unwrap(), serde_json::Value::Null);
    let o = run(&m, "log", limits()).await;
    assert_eq!(o.logs.len(), 1);
    assert_eq!(o.logs[0].level, 2);
    assert_eq!(o.logs[0].message, "boom");
    let env = o.into_envelope("id1", 1, "h/1");
    assert_eq!(env.result, serde_json::json!(42));
    assert_eq!(env.host, "h/1");
}

#[tokio::test]
async fn fail_and_panic_are_task_errors() {
    let m = wat(BASIC);
    let o = run(&m, "fail", limits()).await;
    assert_kind(&o, ErrorKind::TaskError);
    assert_eq!(o.result.unwrap_err().message, "boom");
    // fail, then trap (what a Rust panic looks like): the message wins.
    let o = run(&m, "panic", limits()).await;
    assert_kind(&o, ErrorKind::TaskError);
    assert_eq!(o.result.unwrap_err().message, "boom");
    // A plain trap.
    let o = run(&m, "trap", limits()).await;
    assert_kind(&o, ErrorKind::Trap);
    let message = o.result.unwrap_err().message;
    assert_eq!(
        message, "wasm trap: wasm `unreachable` instruction executed",
        "one prefix, then what happened"
    );
}

#[tokio::test]
async fn fuel_obeyed_and_violated() {
    let m = wat(LIMITS);
    let o = run(
        &m,
        "count",
        Limits {
            fuel: 50_000_000,
            ..limits()
        },
    )
    .await;
    assert_ok(&o);
    assert!(
        o.fuel_used > 1_000_000 && o.fuel_used < 50_000_000,
        "fuel {}",
        o.fuel_used
    );
    assert_runs_out_of_fuel_at(&m, "count", 100_000).await;
}

/// Runs `task` on a budget of `fuel` and asserts it used exactly all of it.
async fn assert_runs_out_of_fuel_at(m: &[u8], task: &str, fuel: u64) {
    let o = run(m, task, Limits { fuel, ..limits() }).await;
    assert_kind(&o, ErrorKind::FuelExhausted);
    assert_eq!(o.fuel_used, fuel, "{task}");
}

#[tokio::test]
async fn timeout_busy_loop_obeyed_and_violated() {
    let m = wat(LIMITS);
    let t = Limits {
        timeout: Duration::from_millis(300),
        fuel: u64::MAX,
        ..limits()
    };
    assert_ok(&run(&m, "count", t).await);
    let o = run(&m, "spin", t).await;
    assert_timed_out(&o, t.timeout);
}

/// Guests whose every task is one bulk instruction of a fixed length, or a
/// loop of them.
const BULK: &str = r#"(module
    (memory (export "memory") 1024)
    (table $t 65536 funcref)
    (elem declare func $nothing)
    (func $nothing)
    (func (export "task.fill_1023")
      (memory.fill (i32.const 0) (i32.const 7) (i32.const 1023)))
    (func (export "task.fill_65536")
      (memory.fill (i32.const 0) (i32.const 7) (i32.const 65536)))
    (func (export "task.fill_64mib")
      (memory.fill (i32.const 0) (i32.const 7) (i32.const 67108864)))
    (func (export "task.fill_forever")
      (loop $l
        (memory.fill (i32.const 0) (i32.const 7) (i32.const 67108864))
        (br $l)))
    (func (export "task.copy_forever")
      (loop $l
        (memory.copy (i32.const 0) (i32.const 33554432) (i32.const 33554432))
        (br $l)))
    (func (export "task.table_fill_forever")
      (loop $l
        (table.fill $t (i32.const 0) (ref.func $nothing) (i32.const 65536))
        (br $l)))
    (func (export "task.fill_past_memory")
      (memory.fill (i32.const 0) (i32.const 7) (i32.const -1))))"#;

/// Bulk memory and table instructions cost one unit of fuel per byte (or
/// element) on top of their own (wasmtime's variable operator costs).
#[tokio::test]
async fn bulk_instructions_cost_fuel_by_length() {
    let m = wat(BULK);
    let small = run(&m, "fill_1023", limits()).await;
    let large = run(&m, "fill_65536", limits()).await;
    assert_ok(&small);
    assert_ok(&large);
    assert_eq!(large.fuel_used - small.fuel_used, 65_536 - 1_023);
    let huge = run(&m, "fill_64mib", limits()).await;
    assert_ok(&huge);
    assert!(huge.fuel_used > 67_108_864, "{}", huge.fuel_used);
    // The charge comes first: a fill that would run out of budget never runs.
    assert_runs_out_of_fuel_at(&m, "fill_64mib", 1_000_000).await;
    // A length past the memory is charged, then traps out of bounds.
    let o = run(&m, "fill_past_memory", limits()).await;
    assert_kind(&o, ErrorKind::Trap);
}

/// A loop of 64 MiB fills (or 32 MiB copies, or 64 Ki-element table fills):
/// the fuel budget stops it, deterministically, and with the budget out of
/// the way the wall-clock limit does (at the next epoch tick).
#[tokio::test]
async fn bulk_loops_obey_fuel_and_the_clock() {
    let m = wat(BULK);
    for task in ["fill_forever", "copy_forever", "table_fill_forever"] {
        let budget = Limits {
            fuel: 50_000_000,
            timeout: Duration::from_secs(60),
            ..limits()
        };
        let o = run(&m, task, budget).await;
        assert_kind(&o, ErrorKind::FuelExhausted);
        assert_eq!(o.fuel_used, budget.fuel, "{task}");
        assert!(
            o.duration < Duration::from_secs(10),
            "{task}: {:?}",
            o.duration
        );
        let clock = Limits {
            fuel: u64::MAX,
            timeout: Duration::from_millis(300),
            ..limits()
        };
        assert_timed_out(&run(&m, task, clock).await, clock.timeout);
    }
}

/// A guest looping on a host call that does real work (16 MiB of random
/// bytes, charged as fuel) without a fuel limit: the clock stops it (an
/// epoch check at its loop header, a deadline on the call).
#[tokio::test]
async fn timeout_stops_loops_of_costly_host_calls() {
    let m = wat(r#"(module
        (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
        (memory (export "memory") 256)
        (func (export "task.random_forever")
          (loop $l
            (drop (call $random (i32.const 0) (i32.const 16777216)))
            (br $l))))"#);
    let t = Limits {
        fuel: u64::MAX,
        timeout: Duration::from_millis(300),
        ..limits()
    };
    let o = run(&m, "random_forever", t).await;
    assert_timed_out(&o, t.timeout);
    assert!(o.fuel_used >= 16 << 20, "{}", o.fuel_used);
}

/// A guest looping on costly host calls uses little fuel, but it still
/// yields to its runtime at every epoch tick, so the caller's runtime (this
/// test's single thread; a host's claims and heartbeats) keeps going
/// meanwhile. (Fuel yields alone would not: see BENCHMARKS.md, K.)
#[tokio::test]
async fn a_busy_guest_never_holds_the_callers_runtime() {
    let m = sandbox()
        .load_bytes(wat(r#"(module
            (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
            (memory (export "memory") 256)
            (func (export "task.random_forever")
              (loop $l
                (drop (call $random (i32.const 0) (i32.const 16777216)))
                (br $l))))"#))
        .await
        .unwrap();
    let t = Limits {
        fuel: u64::MAX,
        timeout: Duration::from_secs(1),
        ..limits()
    };
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let o = sandbox()
        .run(&m, "random_forever", b"[]", &t, &Cancel::new())
        .await;
    ticker.abort();
    assert_timed_out(&o, t.timeout);
    // About 100 in a second; a runtime held by the guest would see one or two.
    let ticks = ticks.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        ticks >= 20,
        "the caller's runtime ticked {ticks} times in {:?}",
        o.duration
    );
}

#[tokio::test]
async fn timeout_sleeping_guest_obeyed_and_violated() {
    let m = wat(LIMITS);
    let t = Limits {
        timeout: Duration::from_millis(500),
        ..limits()
    };
    let o = run(&m, "sleep_50ms", t).await;
    assert_ok(&o);
    assert!(
        o.duration >= Duration::from_millis(50),
        "slept {:?}",
        o.duration
    );
    let o = run(&m, "sleep_forever", t).await;
    assert_kind(&o, ErrorKind::Timeout);
    assert!(o.duration < Duration::from_secs(5));
}

#[tokio::test]
async fn start_function_runs_under_the_limits() {
    let m = wat(include_str!("guests/start_spins.wat"));
    let o = run(
        &m,
        "run",
        Limits {
            fuel: 1_000_000,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::FuelExhausted);
    let o = run(
        &m,
        "run",
        Limits {
            fuel: u64::MAX,
            timeout: Duration::from_millis(200),
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::Timeout);
}

#[tokio::test]
async fn initialize_runs_before_the_task() {
    let m = wat(include_str!("guests/initialize.wat"));
    let o = run(&m, "check", limits()).await;
    assert_eq!(o.result.unwrap(), serde_json::json!("initialized"));
}

#[tokio::test]
async fn memory_obeyed_and_violated() {
    let m = wat(LIMITS);
    // 2 pages + 16 pages = 1179648 bytes.
    assert_ok(
        &run(
            &m,
            "grow_1mib",
            Limits {
                memory: 1_179_648,
                ..limits()
            },
        )
        .await,
    );
    let o = run(
        &m,
        "grow_1mib",
        Limits {
            memory: 1_179_647,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::MemoryLimit);
    let o = run(
        &m,
        "grow_forever",
        Limits {
            memory: 8 << 20,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::MemoryLimit);
    // With the host's default maximum too: the limit, not the pool, stops it.
    let o = run(&m, "grow_forever", limits()).await;
    assert_kind(&o, ErrorKind::MemoryLimit);
}

#[tokio::test]
async fn initial_memory_past_the_limit_fails_instantiation() {
    let m = wat(include_str!("guests/big_memory.wat"));
    let o = run(&m, "run", limits()).await;
    assert_kind(&o, ErrorKind::MemoryLimit);
    let o = run(
        &m,
        "run",
        Limits {
            memory: 1 << 20,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::MemoryLimit);
}

#[tokio::test]
async fn tables_obeyed_and_violated() {
    let m = wat(LIMITS);
    assert_ok(&run(&m, "grow_table", limits()).await);
    // 100001 elements × 8 bytes is past a 512 KiB memory limit.
    let o = run(
        &m,
        "grow_table",
        Limits {
            memory: 512 * 1024,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::MemoryLimit);
}

#[tokio::test]
async fn result_size_obeyed_and_violated() {
    let m = wat(LIMITS);
    // 64 KiB of zero bytes is within the limit (then fails as not-JSON, a task error).
    let o = run(
        &m,
        "output_64k",
        Limits {
            max_output: 65_536,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::TaskError);
    assert!(o.result.unwrap_err().message.contains("not valid JSON"));
    let o = run(
        &m,
        "output_64k",
        Limits {
            max_output: 65_535,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::OutputLimit);
}

#[tokio::test]
async fn stdout_obeyed_and_flood_violated() {
    let m = wat(LIMITS);
    let o = run(&m, "stdout_8k", limits()).await;
    assert_ok(&o);
    assert_eq!(o.stdout.len(), 8 * 1024);
    let o = run(&m, "stdout_flood", limits()).await;
    assert_kind(&o, ErrorKind::OutputLimit);
    assert_eq!(
        o.stdout.len() as u64,
        limits().max_stdio,
        "capture is bounded"
    );
    let o = run(
        &m,
        "stderr_flood",
        Limits {
            max_stdio: 4096,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::OutputLimit);
    assert_eq!(o.stderr.len(), 4096);
}

#[tokio::test]
async fn logs_obeyed_and_flood_violated() {
    let m = wat(LIMITS);
    let o = run(&m, "log_100", limits()).await;
    assert_ok(&o);
    assert_eq!(o.logs.len(), 100);
    let o = run(&m, "log_flood", limits()).await;
    assert_kind(&o, ErrorKind::OutputLimit);
    assert!(o.logs.len() < 1000, "logs bounded: {}", o.logs.len());
}

#[tokio::test]
async fn stack_overflow_is_a_trap() {
    let m = wat(LIMITS);
    let o = run(&m, "recurse", limits()).await;
    assert_kind(&o, ErrorKind::Trap);
    assert!(o.result.unwrap_err().message.contains("stack"));
}

#[tokio::test]
async fn bad_pointers_trap_in_every_host_function() {
    let m = wat(POINTERS);
    for task in [
        "input_read_end",
        "input_read_negative",
        "output_past_end",
        "output_negative_len",
        "output_wrap",
        "fail_past_end",
        "bad_input_past_end",
        "log_past_end",
        "log_negative_ptr",
        "fd_write_past_end",
    ] {
        let o = run_with(&m, task, "[1,2,3,4,5,6,7,8,9]", limits()).await;
        let k = kind(&o);
        // A length over the result limit is refused as output_limit before the
        // bounds check; everything else traps.
        assert!(
            k == Some(ErrorKind::Trap)
                || (task == "output_wrap" && k == Some(ErrorKind::OutputLimit)),
            "{task}: {:?}",
            o.result
        );
    }
    let o = run(&m, "in_bounds", limits()).await;
    assert_eq!(o.result.unwrap(), serde_json::json!(7));
}

#[tokio::test]
async fn invalid_modules_are_refused() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("garbage", b"this is not wasm at all".to_vec()),
        ("truncated", wat(BASIC)[..40].to_vec()),
        (
            "foreign import",
            wat(include_str!("guests/invalid_foreign_import.wat")),
        ),
        (
            "unknown wasq import",
            wat(include_str!("guests/invalid_wasq_import.wat")),
        ),
        (
            "wrong import type",
            wat(include_str!("guests/invalid_import_type.wat")),
        ),
        (
            "no memory",
            wat(include_str!("guests/invalid_no_memory.wat")),
        ),
        (
            "task with params",
            wat(include_str!("guests/invalid_task_type.wat")),
        ),
    ];
    for (name, bytes) in cases {
        let o = run(bytes, "run", limits()).await;
        assert_kind(&o, ErrorKind::InvalidModule);
        assert!(!o.result.unwrap_err().message.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn missing_task_and_bad_input() {
    let m = wat(BASIC);
    assert_kind(&run(&m, "nope", limits()).await, ErrorKind::TaskNotFound);
    assert_kind(
        &run(&m, "../answer", limits()).await,
        ErrorKind::TaskNotFound,
    );
    for args in ["{}", "[1,", "42", "", "[1] [2]"] {
        assert_kind(
            &run_with(&m, "echo", args, limits()).await,
            ErrorKind::BadInput,
        );
    }
    let big = format!("[\"{}\"]", "x".repeat(2048));
    assert_kind(
        &run_with(
            &m,
            "echo",
            &big,
            Limits {
                max_args: 1024,
                ..limits()
            },
        )
        .await,
        ErrorKind::BadInput,
    );
    assert_ok(
        &run_with(
            &m,
            "echo",
            &big,
            Limits {
                max_args: 4096,
                ..limits()
            },
        )
        .await,
    );
}

/// WAT for a module with `n` small functions, each with a body of `ops` drops.
fn many_functions(n: usize, ops: usize) -> Vec<u8> {
    let mut s = String::from("(module (memory (export \"memory\") 1)\n");
    let body = "(drop (i32.const 1))".repeat(ops);
    for i in 0..n {
        s.push_str(&format!("(func $f{i} {body})\n"));
    }
    s.push_str("(func (export \"task.run\")))");
    wat(&s)
}

#[tokio::test]
async fn costly_to_compile_modules_are_refused() {
    // Hundreds of thousands of functions: over the function cap, refused
    // before compiling (so fast and cheap).
    let m = many_functions(200_000, 1);
    let started = std::time::Instant::now();
    let o = run(&m, "run", limits()).await;
    assert_kind(&o, ErrorKind::InvalidModule);
    assert!(o.result.unwrap_err().message.contains("functions"));
    assert!(started.elapsed() < Duration::from_secs(30));
    // One huge body: over the per-function cap.
    let m = many_functions(1, 400_000);
    let o = run(&m, "run", limits()).await;
    assert_kind(&o, ErrorKind::InvalidModule);
    assert!(o.result.unwrap_err().message.contains("body"));
    // Within the caps, a module of many functions compiles and runs.
    let m = many_functions(2_000, 10);
    assert_ok(&run(&m, "run", limits()).await);
}

#[tokio::test]
async fn compile_time_is_capped() {
    let sb = Sandbox::new(SandboxConfig {
        pool_size: 2,
        compile_timeout: Duration::from_millis(1),
        ..SandboxConfig::default()
    })
    .unwrap();
    let err = sb.load_bytes(many_functions(20_000, 20)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidModule);
    assert!(err.message.contains("longer than"), "{}", err.message);
}

#[tokio::test]
async fn integrity_is_checked_before_compiling() {
    let m = wat(BASIC);
    let wrong = ModuleHash::of(b"something else");
    let err = sandbox()
        .load(wrong, || async { Ok(m.clone()) })
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Integrity);
}

#[tokio::test]
async fn revocation_stops_spinning_and_sleeping_guests() {
    for (sb, task) in [
        (sandbox(), "spin"),
        (sandbox(), "sleep_forever"),
        (quick_sandbox(), "spin"),
        (quick_sandbox(), "sleep_forever"),
    ] {
        let m = sb.load_bytes(wat(LIMITS)).await.unwrap();
        let cancel = Cancel::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.cancel();
        });
        let lim = Limits {
            fuel: u64::MAX,
            ..limits()
        };
        let o = sb.run(&m, task, b"[]", &lim, &cancel).await;
        assert_kind(&o, ErrorKind::Revoked);
        assert!(o.duration < Duration::from_secs(5));
    }
}

#[tokio::test]
async fn the_host_survives_hostile_calls() {
    let hostile = wat(LIMITS);
    let good = wat(BASIC);
    for task in [
        "spin",
        "grow_forever",
        "stdout_flood",
        "recurse",
        "log_flood",
    ] {
        // Fuel, not the clock, stops `spin`: the two tiers run interleaved
        // on this test's one thread (each yields at every epoch tick), so a
        // tight clock could stop one and not the other.
        let lim = Limits {
            timeout: Duration::from_secs(5),
            fuel: 5_000_000,
            ..limits()
        };
        assert!(run(&hostile, task, lim).await.result.is_err());
        let o = run(&good, "answer", limits()).await;
        assert_eq!(o.result.unwrap(), serde_json::json!(42), "after {task}");
    }
}

#[tokio::test]
async fn many_concurrent_calls_share_one_sandbox() {
    let m = sandbox().load_bytes(wat(BASIC)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let args = format!("[{i}]");
            sandbox()
                .run(
                    &m,
                    "echo",
                    args.as_bytes(),
                    &Limits::default(),
                    &Cancel::new(),
                )
                .await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(t.await.unwrap().result.unwrap(), serde_json::json!([i]));
    }
}

/// A tiered sandbox runs a new module's first calls on quick code, swaps in
/// optimised code compiled in the background (same results, same fuel) and
/// writes that to the disk cache, from which a restarted host loads it.
#[tokio::test]
async fn tiered_compilation_swaps_in_optimised_code_and_caches_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = SandboxConfig {
        pool_size: 2,
        cache_dir: Some(dir.path().join("cache")),
        ..SandboxConfig::default()
    };
    assert_eq!(config.compilation, Compilation::Tiered);
    let m = wat(BASIC);
    let answer = |sb: &Sandbox, module: std::sync::Arc<wasq_host::LoadedModule>| {
        let sb = sb.clone();
        async move {
            let o = sb
                .run(&module, "answer", b"[]", &Limits::default(), &Cancel::new())
                .await;
            assert_eq!(o.result.unwrap(), serde_json::json!(42));
            o.fuel_used
        }
    };
    let quick_fuel;
    {
        let sb = Sandbox::new(config.clone()).unwrap();
        let module = sb.load_bytes(m.clone()).await.unwrap();
        assert_eq!(module.loaded_tier(), Tier::Quick);
        quick_fuel = answer(&sb, module.clone()).await;
        let again = sb.load_bytes(m.clone()).await.unwrap();
        assert!(std::sync::Arc::ptr_eq(&module, &again));
        sb.settled().await;
        assert_eq!(module.tier(), Tier::Optimized);
        let stats = sb.cache_stats();
        assert_eq!(
            (stats.compiled, stats.optimized, stats.hits, stats.disk_hits),
            (1, 1, 1, 0)
        );
        assert_eq!(answer(&sb, module).await, quick_fuel);
    }
    assert_eq!(cwasm_files(&dir.path().join("cache")), 1);
    let sb = Sandbox::new(config).unwrap();
    let module = sb.load_bytes(m).await.unwrap();
    let stats = sb.cache_stats();
    assert_eq!((stats.compiled, stats.disk_hits), (0, 1));
    assert_eq!(module.loaded_tier(), Tier::Optimized);
    assert_eq!(answer(&sb, module).await, quick_fuel);
    sb.settled().await;
    assert_eq!(
        sb.cache_stats().optimized,
        0,
        "cached code is not recompiled"
    );
}

/// Quick code never reaches the disk cache; optimised code in it is used by
/// every kind of sandbox.
#[tokio::test]
async fn only_optimised_code_is_written_to_the_disk_cache() {
    let dir = tempfile::tempdir().unwrap();
    let config = |compilation| SandboxConfig {
        pool_size: 2,
        cache_dir: Some(dir.path().join("cache")),
        compilation,
        ..SandboxConfig::default()
    };
    let m = wat(BASIC);
    let sb = Sandbox::new(config(Compilation::Quick)).unwrap();
    let module = sb.load_bytes(m.clone()).await.unwrap();
    sb.settled().await;
    assert_eq!(module.tier(), Tier::Quick);
    assert_eq!(cwasm_files(&dir.path().join("cache")), 0);

    let sb = Sandbox::new(config(Compilation::Optimized)).unwrap();
    let module = sb.load_bytes(m.clone()).await.unwrap();
    assert_eq!(module.loaded_tier(), Tier::Optimized);
    assert_eq!(sb.cache_stats().compiled, 1);
    assert_eq!(cwasm_files(&dir.path().join("cache")), 1);

    let sb = Sandbox::new(config(Compilation::Quick)).unwrap();
    let module = sb.load_bytes(m).await.unwrap();
    assert_eq!(module.loaded_tier(), Tier::Optimized);
    assert_eq!(sb.cache_stats().disk_hits, 1);
}

fn cwasm_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "cwasm")
        })
        .count()
}

/// `[[…[0]…]]`: `levels` nested arrays.
fn nested(levels: usize) -> String {
    format!("{}0{}", "[".repeat(levels), "]".repeat(levels))
}

#[tokio::test]
async fn result_depth_obeyed_and_violated() {
    let m = wat(BASIC);
    // `echo` returns its args, so the result nests as deep as they do.
    let o = run_with(&m, "echo", &nested(64), limits()).await;
    assert_ok(&o);
    let o = run_with(&m, "echo", &nested(65), limits()).await;
    assert_kind(&o, ErrorKind::OutputLimit);
    assert!(o.result.unwrap_err().message.contains("64 levels"));
    // Whatever a host publishes, a client can read back.
    let o = run_with(&m, "echo", &nested(64), limits()).await;
    let env = o.into_envelope("id1", 1, "h/1");
    let json = serde_json::to_string(&vec![env.clone(), env]).unwrap();
    let back: Vec<wasq_broker::Envelope> = serde_json::from_str(&json).unwrap();
    assert_eq!(back.len(), 2);
}

#[tokio::test]
async fn bytes_copied_by_host_functions_cost_fuel() {
    let m = wat(BASIC);
    // `echo` reads its input and outputs it: two copies of 60 000 bytes
    // for a handful of instructions.
    let args = format!("[\"{}\"]", "x".repeat(60_000 - 4));
    let o = run_with(&m, "echo", &args, limits()).await;
    assert_ok(&o);
    assert!(o.fuel_used >= 120_000, "fuel {}", o.fuel_used);
    let o = run_with(
        &m,
        "echo",
        &args,
        Limits {
            fuel: 100_000,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::FuelExhausted);
    assert_eq!(o.fuel_used, 100_000);
}

/// A sandbox caching optimised code in `dir/cache` (key `dir/cache.key`).
fn caching(dir: &std::path::Path) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_size: 2,
        cache_dir: Some(dir.join("cache")),
        compilation: Compilation::Optimized,
        ..SandboxConfig::default()
    })
    .expect("sandbox")
}

fn cwasm_paths(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut paths: Vec<_> = std::fs::read_dir(dir.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect();
    paths.sort();
    paths
}

const OTHER: &str = r#"(module
  (import "wasq" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "7")
  (func (export "task.answer") (call $output (i32.const 0) (i32.const 1))))"#;

/// Loads `module` on a fresh sandbox over `dir` and runs `answer`.
async fn answer_from_cache(
    dir: &std::path::Path,
    module: &[u8],
) -> (serde_json::Value, CacheStats) {
    let sb = caching(dir);
    let loaded = sb.load_bytes(module.to_vec()).await.unwrap();
    let o = sb
        .run(&loaded, "answer", b"[]", &limits(), &Cancel::new())
        .await;
    (o.result.unwrap(), sb.cache_stats())
}

#[tokio::test]
async fn a_cache_entry_swapped_from_another_module_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let (basic, other) = (wat(BASIC), wat(OTHER));
    assert_eq!(
        answer_from_cache(dir.path(), &basic).await.0,
        serde_json::json!(42)
    );
    assert_eq!(
        answer_from_cache(dir.path(), &other).await.0,
        serde_json::json!(7)
    );
    let paths = cwasm_paths(dir.path());
    assert_eq!(paths.len(), 2);
    // Put one module's compiled code under the other's name.
    let basic_entry = paths
        .iter()
        .find(|p| {
            p.to_string_lossy()
                .contains(&ModuleHash::of(&basic).to_hex())
        })
        .unwrap();
    let other_entry = paths.iter().find(|p| *p != basic_entry).unwrap();
    std::fs::copy(basic_entry, other_entry).unwrap();
    let (result, stats) = answer_from_cache(dir.path(), &other).await;
    assert_eq!(result, serde_json::json!(7), "ran another module's code");
    assert_eq!(
        (stats.disk_hits, stats.disk_rejected, stats.compiled),
        (0, 1, 1)
    );
    // Compiled over: the next host loads the right code from the cache.
    let (result, stats) = answer_from_cache(dir.path(), &other).await;
    assert_eq!(result, serde_json::json!(7));
    assert_eq!((stats.disk_hits, stats.disk_rejected), (1, 0));
}

#[tokio::test]
async fn a_tampered_cache_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let basic = wat(BASIC);
    answer_from_cache(dir.path(), &basic).await;
    let entry = cwasm_paths(dir.path()).pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0x01;
    std::fs::write(&entry, &bytes).unwrap();
    let (result, stats) = answer_from_cache(dir.path(), &basic).await;
    assert_eq!(result, serde_json::json!(42));
    assert_eq!(
        (stats.disk_hits, stats.disk_rejected, stats.compiled),
        (0, 1, 1)
    );
    // A truncated one too.
    std::fs::write(&entry, &bytes[..10]).unwrap();
    let (_, stats) = answer_from_cache(dir.path(), &basic).await;
    assert_eq!((stats.disk_hits, stats.disk_rejected), (0, 1));
}

#[tokio::test]
async fn a_symlinked_cache_entry_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let basic = wat(BASIC);
    answer_from_cache(dir.path(), &basic).await;
    let entry = cwasm_paths(dir.path()).pop().unwrap();
    let elsewhere = dir.path().join("elsewhere.cwasm");
    std::fs::rename(&entry, &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
    let (result, stats) = answer_from_cache(dir.path(), &basic).await;
    assert_eq!(result, serde_json::json!(42));
    assert_eq!((stats.disk_hits, stats.disk_rejected), (0, 1));
}

#[test]
fn an_unsafe_cache_directory_or_key_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let open = |key: Option<std::path::PathBuf>| {
        Sandbox::new(SandboxConfig {
            pool_size: 1,
            cache_dir: Some(cache.clone()),
            cache_key: key,
            compilation: Compilation::Optimized,
            ..SandboxConfig::default()
        })
    };
    open(None).expect("a fresh directory is fine");
    let key = dir.path().join("cache.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for mode in [0o770, 0o707, 0o777] {
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = open(None)
            .err()
            .expect("a writable directory is refused")
            .to_string();
        assert!(err.contains("mode"), "{err}");
    }
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A key others can read.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(open(None).err().unwrap().to_string().contains("mode"));
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // The key inside the directory.
    assert!(
        open(Some(cache.join("k")))
            .err()
            .unwrap()
            .to_string()
            .contains("inside")
    );
    // A symlinked directory.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&cache, &link).unwrap();
    let err = Sandbox::new(SandboxConfig {
        pool_size: 1,
        cache_dir: Some(link),
        cache_key: Some(key.clone()),
        ..SandboxConfig::default()
    })
    .err()
    .expect("a symlinked directory is refused")
    .to_string();
    assert!(err.contains("symlink"), "{err}");
}

#[tokio::test]
async fn the_disk_cache_keeps_under_its_byte_cap() {
    let dir = tempfile::tempdir().unwrap();
    let sb = |cap: u64| {
        Sandbox::new(SandboxConfig {
            pool_size: 2,
            cache_dir: Some(dir.path().join("cache")),
            cache_max_bytes: cap,
            compilation: Compilation::Optimized,
            ..SandboxConfig::default()
        })
        .unwrap()
    };
    sb(u64::MAX).load_bytes(wat(BASIC)).await.unwrap();
    let basic_size = std::fs::metadata(&cwasm_paths(dir.path())[0])
        .unwrap()
        .len();
    let other_dir = tempfile::tempdir().unwrap();
    caching(other_dir.path())
        .load_bytes(wat(OTHER))
        .await
        .unwrap();
    let other_size = std::fs::metadata(&cwasm_paths(other_dir.path())[0])
        .unwrap()
        .len();
    // One byte short of both: the older entry goes.
    let tight = sb(basic_size + other_size - 1);
    tight.load_bytes(wat(OTHER)).await.unwrap();
    let left = cwasm_paths(dir.path());
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0]
            .to_string_lossy()
            .contains(&ModuleHash::of(&wat(OTHER)).to_hex())
    );
}

const RANDOM: &str = r#"(module
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasq" "output" (func $output (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 65000) "0")
  (func (export "task.fill")
    (if (call $random (i32.const 0) (i32.const 16)) (then unreachable))
    ;; 128 random bits are not all zero.
    (if (i64.eqz (i64.or (i64.load (i32.const 0)) (i64.load (i32.const 8)))) (then unreachable))
    (call $output (i32.const 65000) (i32.const 1)))
  (func (export "task.outside")
    ;; Past the end of memory, and 4 GiB: `fault` (21), nothing allocated.
    (if (i32.ne (call $random (i32.const 65530) (i32.const 16)) (i32.const 21)) (then unreachable))
    (if (i32.ne (call $random (i32.const 0) (i32.const -1)) (i32.const 21)) (then unreachable))
    (call $output (i32.const 65000) (i32.const 1)))
  (func (export "task.much")
    (drop (call $random (i32.const 0) (i32.const 60000)))
    (call $output (i32.const 65000) (i32.const 1))))"#;

#[tokio::test]
async fn random_get_is_bounded_and_costs_fuel() {
    let m = wat(RANDOM);
    assert_eq!(
        run(&m, "fill", limits()).await.result.unwrap(),
        serde_json::json!(0)
    );
    assert_eq!(
        run(&m, "outside", limits()).await.result.unwrap(),
        serde_json::json!(0)
    );
    // 60,000 bytes cost 60,000 fuel: obeyed with room, violated without.
    let o = run(
        &m,
        "much",
        Limits {
            fuel: 200_000,
            ..limits()
        },
    )
    .await;
    assert_ok(&o);
    assert!(o.fuel_used > 60_000, "{}", o.fuel_used);
    let o = run(
        &m,
        "much",
        Limits {
            fuel: 50_000,
            ..limits()
        },
    )
    .await;
    assert_kind(&o, ErrorKind::FuelExhausted);
}
