//! Compilation bounded whatever submitters send: compiles in a child process
//! (the real `wasq` executable) killed at the deadline, a memory limit on it,
//! a bounded number of compiles and of waiting ones, static caps checked
//! before compiling, and a byte-bounded in-memory cache. Each limit obeyed
//! and violated.

use std::time::Duration;

use wasq_broker::{ErrorKind, Limits};
use wasq_host::{Cancel, Compilation, Compiler, Sandbox, SandboxConfig, Tier};

#[path = "guests/costly.rs"]
mod costly;

use costly::costly;

const BASIC: &str = include_str!("guests/basic.wat");

fn wat(src: &str) -> Vec<u8> {
    wat::parse_str(src).expect("test guest is valid WAT")
}

/// Tests that start compiler children take turns, so each sees only its own.
static CHILDREN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Compiling in children started from the `wasq` binary under test.
fn in_children(config: SandboxConfig) -> Sandbox {
    Sandbox::new(SandboxConfig {
        pool_size: 4,
        compiler: Compiler::Process(env!("CARGO_BIN_EXE_wasq").into()),
        ..config
    })
    .expect("sandbox")
}

async fn answer(sb: &Sandbox, module: &[u8]) -> Result<serde_json::Value, wasq_broker::TaskError> {
    let loaded = sb.load_bytes(module.to_vec()).await?;
    sb.run(&loaded, "answer", b"[]", &Limits::default(), &Cancel::new())
        .await
        .result
}

/// The compiler children of this process still alive (or not yet reaped).
fn compiler_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after it.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest.split(' ').nth(1).unwrap_or_default();
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if ppid == me && String::from_utf8_lossy(&cmdline).contains(wasq_host::CHILD_ARG) {
            found.push(pid);
        }
    }
    found
}

#[tokio::test]
async fn a_child_process_compiles_every_tier() {
    let _turn = CHILDREN.lock().await;
    let m = wat(BASIC);
    for compilation in [
        Compilation::Quick,
        Compilation::Optimized,
        Compilation::Tiered,
    ] {
        let sb = in_children(SandboxConfig {
            compilation,
            ..SandboxConfig::default()
        });
        assert_eq!(answer(&sb, &m).await.unwrap(), serde_json::json!(42));
        sb.settled().await;
        let loaded = sb.load_bytes(m.clone()).await.unwrap();
        let tier = match compilation {
            Compilation::Quick => Tier::Quick,
            Compilation::Optimized | Compilation::Tiered => Tier::Optimized,
        };
        assert_eq!(loaded.tier(), tier, "{compilation:?}");
        let stats = sb.cache_stats();
        assert_eq!(stats.compiled, 1);
        assert_eq!(
            stats.optimized,
            u64::from(compilation == Compilation::Tiered)
        );
    }
    assert!(compiler_children().is_empty());
}

#[tokio::test]
async fn a_module_that_does_not_compile_fails_with_the_compilers_reason() {
    let _turn = CHILDREN.lock().await;
    // Passes the static checks, fails validation: `i32.add` of nothing.
    let m = wat(r#"(module (memory (export "memory") 1)
             (func (export "task.run") (drop (i32.add))))"#);
    let sb = in_children(SandboxConfig::default());
    let err = sb.load_bytes(m.clone()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidModule);
    assert!(err.message.contains("type mismatch"), "{}", err.message);
    // The module's fault is remembered: not compiled again.
    assert!(sb.is_cached(&wasq_broker::ModuleHash::of(&m)));
}

#[tokio::test]
async fn a_compile_past_its_deadline_is_killed() {
    let _turn = CHILDREN.lock().await;
    let m = costly(1, 4_000, 22);
    // Violated: the child is killed at the deadline, and gone when the load
    // answers, so it no longer uses any CPU.
    let sb = in_children(SandboxConfig {
        compilation: Compilation::Optimized,
        compile_timeout: Duration::from_millis(100),
        ..SandboxConfig::default()
    });
    let err = sb.load_bytes(m.clone()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidModule);
    assert!(err.message.contains("longer than 100ms"), "{}", err.message);
    assert_eq!(compiler_children(), Vec::<u32>::new());
    assert_eq!(sb.compiles_running(), 0);
    // Obeyed: the same module compiles within a generous deadline.
    let sb = in_children(SandboxConfig {
        compilation: Compilation::Optimized,
        ..SandboxConfig::default()
    });
    let loaded = sb.load_bytes(m).await.unwrap();
    let o = sb
        .run(&loaded, "run", b"[]", &Limits::default(), &Cancel::new())
        .await;
    assert!(o.result.is_ok(), "{:?}", o.result);
}

#[tokio::test]
async fn a_compile_past_its_memory_limit_fails() {
    let _turn = CHILDREN.lock().await;
    // About 1 MiB of one function: Cranelift needs some 200 MiB of address
    // space for it, a small module under 64 MiB.
    let big = costly(2, 4_000, 22);
    let small = wat(BASIC);
    let limited = in_children(SandboxConfig {
        compilation: Compilation::Optimized,
        compile_memory: 128 << 20,
        ..SandboxConfig::default()
    });
    // Violated: too little address space for the big one.
    let err = limited.load_bytes(big.clone()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidModule, "{}", err.message);
    assert!(err.message.contains("memory"), "{}", err.message);
    // Obeyed: the small one under the same limit, the big one under the
    // default.
    assert_eq!(
        answer(&limited, &small).await.unwrap(),
        serde_json::json!(42)
    );
    let roomy = in_children(SandboxConfig {
        compilation: Compilation::Optimized,
        ..SandboxConfig::default()
    });
    roomy.load_bytes(big).await.unwrap();
}

#[tokio::test]
async fn a_compiler_that_cannot_start_is_the_hosts_error_not_the_modules() {
    let sb = Sandbox::new(SandboxConfig {
        pool_size: 2,
        compiler: Compiler::Process("/nonexistent/wasq".into()),
        ..SandboxConfig::default()
    })
    .unwrap();
    let m = wat(BASIC);
    let err = sb.load_bytes(m.clone()).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Trap);
    assert!(err.message.contains("host error"), "{}", err.message);
    // Not remembered: the module may compile once the host is mended.
    assert!(!sb.is_cached(&wasq_broker::ModuleHash::of(&m)));
}

/// Waits (up to a minute) for `cond`, which watches compiles on other threads.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiles_are_bounded_in_number_and_backlog() {
    let _turn = CHILDREN.lock().await;
    let sb = in_children(SandboxConfig {
        compilation: Compilation::Optimized,
        max_compiles: 1,
        compile_queue: 1,
        ..SandboxConfig::default()
    });
    let (a, b, c) = (costly(10, 4_000, 22), costly(11, 4_000, 22), wat(BASIC));
    let hash = wasq_broker::ModuleHash::of;
    assert!(!sb.compile_backlog_full(&hash(&c)));
    let first = tokio::spawn({
        let (sb, a) = (sb.clone(), a.clone());
        async move { sb.load_bytes(a).await.map(|_| ()) }
    });
    until("the first compile", || sb.compiles_running() == 1).await;
    // One compile runs; a second may wait.
    assert!(!sb.compile_backlog_full(&hash(&b)));
    let second = tokio::spawn({
        let (sb, b) = (sb.clone(), b.clone());
        async move { sb.load_bytes(b).await.map(|_| ()) }
    });
    until("the second compile to wait", || sb.compiles_waiting() == 1).await;
    assert_eq!(sb.compiles_running(), 1);
    assert_eq!(sb.loads_waiting(), 2);
    // Full for a third new module; calls of those loading may still wait.
    assert!(sb.compile_backlog_full(&hash(&c)));
    assert!(!sb.compile_backlog_full(&hash(&a)));
    assert!(!sb.compile_backlog_full(&hash(&b)));
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert!(!sb.compile_backlog_full(&hash(&c)));
    assert_eq!(sb.loads_waiting(), 0);
    assert_eq!(sb.cache_stats().compiled, 2);
}

/// A module with `types` function types, `globals` globals, a function with
/// `locals` locals and `data` bytes of data.
fn declaring(types: u32, globals: u32, locals: u32, data: usize) -> Vec<u8> {
    let mut s = String::from("(module (memory (export \"memory\") 1)");
    for i in 0..types {
        let params = " i32".repeat(i as usize % 8);
        s.push_str(&format!(" (type (func (param{params}) (result i64)))"));
    }
    for _ in 0..globals {
        s.push_str(" (global i32 (i32.const 0))");
    }
    s.push_str(&format!(" (data (i32.const 0) \"{}\")", "x".repeat(data)));
    s.push_str(" (func (export \"task.run\")");
    for _ in 0..locals {
        s.push_str(" (local i32)");
    }
    s.push_str("))");
    wat(&s)
}

#[test]
fn static_caps_are_checked_before_compiling() {
    let config = SandboxConfig {
        max_types: 8,
        max_globals: 5,
        max_locals: 100,
        max_data_bytes: 1_000,
        ..SandboxConfig::default()
    };
    let check = |m: &[u8]| wasq_host::inspect(m, &config).map(|_| ());
    // Obeyed, each at its cap.
    check(&declaring(7, 5, 100, 1_000)).unwrap();
    // Violated, one at a time (a `task.run` type adds one type).
    for (m, what) in [
        (declaring(8, 5, 100, 1_000), "types"),
        (declaring(7, 6, 100, 1_000), "globals"),
        (declaring(7, 5, 101, 1_000), "locals"),
        (declaring(7, 5, 100, 1_001), "data segments"),
    ] {
        let err = check(&m).unwrap_err();
        assert_eq!(err.kind, ErrorKind::InvalidModule);
        assert!(err.message.contains(what), "{what}: {}", err.message);
    }
}

#[tokio::test]
async fn the_in_memory_cache_is_bounded_in_bytes() {
    let modules: Vec<Vec<u8>> = (0..3).map(|i| costly(100 + i, 50, 10)).collect();
    let hashes: Vec<_> = modules
        .iter()
        .map(|m| wasq_broker::ModuleHash::of(m))
        .collect();
    let sized = Sandbox::new(SandboxConfig {
        pool_size: 2,
        compilation: Compilation::Optimized,
        ..SandboxConfig::default()
    })
    .unwrap();
    let one = sized
        .load_bytes(modules[0].clone())
        .await
        .unwrap()
        .footprint();
    assert!(one > modules[0].len() as u64);
    // Obeyed: room for all three.
    let roomy = Sandbox::new(SandboxConfig {
        pool_size: 2,
        compilation: Compilation::Optimized,
        memory_cache_bytes: one * 4,
        ..SandboxConfig::default()
    })
    .unwrap();
    for m in &modules {
        roomy.load_bytes(m.clone()).await.unwrap();
    }
    assert!(hashes.iter().all(|h| roomy.is_cached(h)));
    assert_eq!(roomy.cache_stats().evicted, 0);
    // Violated: room for about two; the oldest goes.
    let tight = Sandbox::new(SandboxConfig {
        pool_size: 2,
        compilation: Compilation::Optimized,
        memory_cache_bytes: one * 2 + one / 2,
        ..SandboxConfig::default()
    })
    .unwrap();
    for m in &modules {
        tight.load_bytes(m.clone()).await.unwrap();
    }
    assert!(!tight.is_cached(&hashes[0]));
    assert!(tight.is_cached(&hashes[1]) && tight.is_cached(&hashes[2]));
    assert_eq!(tight.cache_stats().evicted, 1);
}
