//! The modules built from `tasks/` follow guest ABI v1: `task.*` exports of type
//! `[] -> []`, `memory` exported, imports only from `wasq` (with the ABI's types)
//! and `wasi_snapshot_preview1`, and the task lists the host's tests rely on.
//!
//! Reads `target/tasks/*.wasm`, which `scripts/build-tasks.sh` writes. When they
//! have not been built the test says so and passes, unless `WASQ_REQUIRE_TASKS=1`
//! (CI sets it after building them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use wasmparser::{ExternalKind, Parser, Payload, TypeRef, ValType, Validator};

/// What a module declares, as far as the ABI is concerned.
#[derive(Debug, Default)]
struct Surface {
    /// `(module, name) -> (params, results)` of imported functions.
    imports: BTreeMap<(String, String), (Vec<ValType>, Vec<ValType>)>,
    /// Other imports (memories, tables, globals).
    other_imports: Vec<String>,
    /// Exported functions and their types.
    functions: BTreeMap<String, (Vec<ValType>, Vec<ValType>)>,
    /// Exported memories.
    memories: BTreeSet<String>,
}

fn surface(bytes: &[u8]) -> Surface {
    Validator::new()
        .validate_all(bytes)
        .expect("the module is valid wasm");
    let mut types = Vec::new();
    let mut func_types = Vec::new(); // type index of every function, imports first
    let mut surface = Surface::default();
    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.unwrap() {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    let ty = ty.unwrap();
                    types.push((ty.params().to_vec(), ty.results().to_vec()));
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import.unwrap();
                    match import.ty {
                        TypeRef::Func(index) => {
                            func_types.push(index);
                            let key = (import.module.to_owned(), import.name.to_owned());
                            surface.imports.insert(key, types[index as usize].clone());
                        }
                        other => surface
                            .other_imports
                            .push(format!("{}.{}: {other:?}", import.module, import.name)),
                    }
                }
            }
            Payload::FunctionSection(reader) => {
                for index in reader {
                    func_types.push(index.unwrap());
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.unwrap();
                    exports.push((export.name.to_owned(), export.kind, export.index));
                }
            }
            _ => {}
        }
    }
    for (name, kind, index) in exports {
        match kind {
            ExternalKind::Func => {
                let ty = types[func_types[index as usize] as usize].clone();
                surface.functions.insert(name, ty);
            }
            ExternalKind::Memory => {
                surface.memories.insert(name);
            }
            _ => {}
        }
    }
    surface
}

fn tasks_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tasks")
}

fn read_module(name: &str) -> Option<Vec<u8>> {
    let path = tasks_dir().join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Some(bytes),
        Err(err) if std::env::var_os("WASQ_REQUIRE_TASKS").is_some_and(|v| v == "1") => {
            panic!(
                "cannot read {}: {err}; run scripts/build-tasks.sh",
                path.display()
            )
        }
        Err(_) => {
            eprintln!(
                "skipped: {} is not built; run scripts/build-tasks.sh",
                path.display()
            );
            None
        }
    }
}

/// Checks the ABI rules and returns the task names.
fn check_abi(name: &str, bytes: &[u8]) -> BTreeSet<String> {
    use ValType::I32;
    let surface = surface(bytes);
    assert!(
        surface.memories.contains("memory"),
        "{name}: no `memory` export"
    );
    assert!(
        surface.other_imports.is_empty(),
        "{name}: imports {:?}",
        surface.other_imports
    );
    let allowed: BTreeMap<&str, (Vec<ValType>, Vec<ValType>)> = BTreeMap::from([
        ("input_len", (vec![], vec![I32])),
        ("input_read", (vec![I32], vec![])),
        ("output", (vec![I32, I32], vec![])),
        ("fail", (vec![I32, I32], vec![])),
        ("bad_input", (vec![I32, I32], vec![])),
        ("log", (vec![I32, I32, I32], vec![])),
    ]);
    for ((module, field), ty) in &surface.imports {
        match module.as_str() {
            "wasi_snapshot_preview1" => {}
            "wasq" => assert_eq!(
                allowed.get(field.as_str()),
                Some(ty),
                "{name}: import wasq.{field} is not in ABI v1 or has the wrong type"
            ),
            _ => {
                panic!("{name}: import {module}.{field} is outside wasq and wasi_snapshot_preview1")
            }
        }
    }
    if let Some(ty) = surface.functions.get("_initialize") {
        assert_eq!(ty, &(vec![], vec![]), "{name}: _initialize");
    }
    let mut tasks = BTreeSet::new();
    for (export, ty) in &surface.functions {
        if let Some(task) = export.strip_prefix("task.") {
            assert_eq!(ty, &(vec![], vec![]), "{name}: {export} must be [] -> []");
            let mut chars = task.chars();
            assert!(
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}: bad task name {task:?}"
            );
            tasks.insert(task.to_owned());
        }
    }
    tasks
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn examples_module() {
    let Some(bytes) = read_module("examples.wasm") else {
        return;
    };
    let tasks = check_abi("examples.wasm", &bytes);
    let expected = [
        "add",
        "fib",
        "hello",
        "long_processing",
        "noop",
        "process_file",
        "sha256",
        "word_count",
    ];
    assert_eq!(tasks, names(&expected));
}

#[test]
fn hostile_module() {
    let Some(bytes) = read_module("hostile.wasm") else {
        return;
    };
    let tasks = check_abi("hostile.wasm", &bytes);
    let expected = [
        "alloc",
        "args",
        "big_output",
        "connect",
        "eprint_flood",
        "exit",
        "list_dir",
        "log_flood",
        "now_and_random",
        "panic_now",
        "print_flood",
        "read_env",
        "read_file",
        "recurse",
        "sleep_forever",
        "spin",
        "stdin",
    ];
    assert_eq!(tasks, names(&expected));
}

#[test]
fn bench100k_module() {
    let Some(bytes) = read_module("bench100k.wasm") else {
        return;
    };
    let tasks = check_abi("bench100k.wasm", &bytes);
    assert!(tasks.contains("noop"), "{tasks:?}");
    let size = bytes.len();
    assert!(
        (80_000..=150_000).contains(&size),
        "bench100k.wasm is {size} bytes, not about 100 KB"
    );
}

/// Prints each module's imports, exports and size (`--nocapture` to see them).
#[test]
fn describe_modules() {
    for name in ["examples.wasm", "hostile.wasm", "bench100k.wasm"] {
        let Ok(bytes) = std::fs::read(tasks_dir().join(name)) else {
            continue;
        };
        let surface = surface(&bytes);
        println!("{name}: {} bytes", bytes.len());
        for (module, field) in surface.imports.keys() {
            println!("  import {module}.{field}");
        }
        for export in surface.functions.keys() {
            println!("  export {export}");
        }
    }
}

// ---------------------------------------------------------------------------
// Running the modules: a minimal ABI v1 host, enough to check the guest side.
// The real host is wasq-host; this one only records what the guest reported.

mod host {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use wasmtime::{Caller, Config, Engine, Extern, Linker, Module, Store};
    use wasmtime_wasi::WasiCtxBuilder;
    use wasmtime_wasi::p1::WasiP1Ctx;
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

    /// What one call produced.
    #[derive(Debug)]
    pub struct Call {
        pub output: Option<serde_json::Value>,
        /// `(kind, message)` from `fail` or `bad_input`.
        pub failure: Option<(&'static str, String)>,
        pub trap: Option<String>,
        pub logs: Vec<(i32, String)>,
        pub stdout: Vec<u8>,
    }

    impl Call {
        /// The result of a call that succeeded.
        #[track_caller]
        pub fn ok(&self) -> &serde_json::Value {
            assert!(self.failure.is_none() && self.trap.is_none(), "{self:#?}");
            self.output.as_ref().unwrap_or(&serde_json::Value::Null)
        }

        /// The message of a call that failed with `kind`.
        #[track_caller]
        pub fn failed(&self, kind: &str) -> &str {
            match &self.failure {
                Some((k, message)) if *k == kind => message,
                _ => panic!("expected a {kind} failure: {self:#?}"),
            }
        }
    }

    struct State {
        wasi: WasiP1Ctx,
        input: Vec<u8>,
        output: Option<Vec<u8>>,
        failure: Option<(&'static str, String)>,
        logs: Vec<(i32, String)>,
    }

    fn engine() -> &'static Engine {
        static ENGINE: OnceLock<Engine> = OnceLock::new();
        ENGINE.get_or_init(|| {
            let mut config = Config::new();
            config.consume_fuel(true);
            Engine::new(&config).unwrap()
        })
    }

    fn module(bytes: &[u8]) -> Module {
        static CACHE: OnceLock<Mutex<HashMap<Vec<u8>, Module>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap();
        cache
            .entry(bytes.to_vec())
            .or_insert_with(|| Module::new(engine(), bytes).unwrap())
            .clone()
    }

    fn read(caller: &mut Caller<'_, State>, ptr: i32, len: i32) -> wasmtime::Result<Vec<u8>> {
        let memory = caller
            .get_export("memory")
            .and_then(Extern::into_memory)
            .unwrap();
        let mut buf = vec![0; usize::try_from(len)?];
        memory.read(&caller, usize::try_from(ptr)?, &mut buf)?;
        Ok(buf)
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    /// Runs `task.<task>` of the module with this JSON input and fuel.
    pub fn call(bytes: &[u8], task: &str, input: &str, fuel: u64) -> Call {
        let stdout = MemoryOutputPipe::new(1 << 20);
        let wasi = WasiCtxBuilder::new()
            .args(&[task])
            .stdout(stdout.clone())
            .build_p1();
        let state = State {
            wasi,
            input: input.as_bytes().to_vec(),
            output: None,
            failure: None,
            logs: Vec::new(),
        };
        let mut store = Store::new(engine(), state);
        store.set_fuel(fuel).unwrap();
        let mut linker: Linker<State> = Linker::new(engine());
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| &mut s.wasi).unwrap();
        linker
            .func_wrap("wasq", "input_len", |c: Caller<'_, State>| {
                c.data().input.len() as i32
            })
            .unwrap()
            .func_wrap(
                "wasq",
                "input_read",
                |mut c: Caller<'_, State>, ptr: i32| {
                    let input = c.data().input.clone();
                    let memory = c
                        .get_export("memory")
                        .and_then(Extern::into_memory)
                        .unwrap();
                    memory.write(&mut c, usize::try_from(ptr)?, &input)?;
                    wasmtime::Result::<()>::Ok(())
                },
            )
            .unwrap()
            .func_wrap(
                "wasq",
                "output",
                |mut c: Caller<'_, State>, ptr: i32, len: i32| {
                    let bytes = read(&mut c, ptr, len)?;
                    c.data_mut().output = Some(bytes);
                    wasmtime::Result::<()>::Ok(())
                },
            )
            .unwrap()
            .func_wrap(
                "wasq",
                "fail",
                |mut c: Caller<'_, State>, ptr: i32, len: i32| {
                    let message = text(read(&mut c, ptr, len)?);
                    c.data_mut().failure = Some(("task_error", message));
                    wasmtime::Result::<()>::Ok(())
                },
            )
            .unwrap()
            .func_wrap(
                "wasq",
                "bad_input",
                |mut c: Caller<'_, State>, ptr: i32, len: i32| {
                    let message = text(read(&mut c, ptr, len)?);
                    c.data_mut().failure = Some(("bad_input", message));
                    wasmtime::Result::<()>::Ok(())
                },
            )
            .unwrap()
            .func_wrap(
                "wasq",
                "log",
                |mut c: Caller<'_, State>, level: i32, ptr: i32, len: i32| {
                    let message = text(read(&mut c, ptr, len)?);
                    c.data_mut().logs.push((level, message));
                    wasmtime::Result::<()>::Ok(())
                },
            )
            .unwrap();
        let instance = linker.instantiate(&mut store, &module(bytes)).unwrap();
        let mut trap = None;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).unwrap();
        }
        let func = instance
            .get_typed_func::<(), ()>(&mut store, &format!("task.{task}"))
            .unwrap();
        if let Err(err) = func.call(&mut store, ()) {
            trap = Some(format!("{err:?}"));
        }
        let state = store.into_data();
        Call {
            output: state.output.map(|b| serde_json::from_slice(&b).unwrap()),
            failure: state.failure,
            trap,
            logs: state.logs,
            stdout: stdout.contents().to_vec(),
        }
    }
}

const FUEL: u64 = 2_000_000_000;

#[test]
fn examples_run() {
    use serde_json::json;
    let Some(m) = read_module("examples.wasm") else {
        return;
    };
    let call = |task: &str, input: &str| host::call(&m, task, input, FUEL);

    assert_eq!(call("add", "[4, 5]").ok(), &json!(9));
    assert_eq!(call("hello", "[]").ok(), &json!("hello from wasq"));
    let noop = call("noop", "[]");
    assert_eq!((noop.ok(), noop.output.is_none()), (&json!(null), true));
    assert_eq!(call("fib", "[20]").ok(), &json!(6765));
    assert_eq!(
        call("sha256", r#"["abc"]"#).ok(),
        &json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        call("word_count", r#"["The cat, the hat"]"#).ok(),
        &json!({"cat": 1, "hat": 1, "the": 2})
    );

    let slept = call("long_processing", r#"["job", 0.01]"#);
    assert_eq!(slept.ok(), &json!("processed job"));
    assert_eq!(slept.logs.len(), 2, "{:?}", slept.logs);
    assert_eq!(slept.logs[0], (2, "processing job for 0.01 s".to_owned()));
    assert_eq!(
        call("long_processing", r#"["job", -1]"#).failed("task_error"),
        "seconds must be a finite number >= 0, got -1"
    );

    let report = call("process_file", r#"["a.txt", "one two\nthree"]"#);
    let report = report.ok();
    assert_eq!(
        (&report["name"], &report["lines"], &report["words"]),
        (&json!("a.txt"), &json!(2), &json!(3))
    );
    assert_eq!(report["sha256"].as_str().map(str::len), Some(64));
    let transient = call("process_file", r#"["a.txt", "x", 100]"#);
    assert!(transient.failed("task_error").starts_with("transient: "));
    assert_eq!(transient.logs[0].0, 3);

    // The ABI v1 extension bad_input, with the SDK's messages.
    assert_eq!(
        call("add", r#"[1, "a"]"#).failed("bad_input"),
        r#"argument 2 (y): invalid type: string "a", expected i64"#
    );
    assert_eq!(
        call("add", "[1, 2, 3]").failed("bad_input"),
        "task add takes 2 arguments (x, y), got 3"
    );
    assert_eq!(
        call("process_file", r#"["a"]"#).failed("bad_input"),
        "task process_file takes 2 to 3 arguments (name, text, fail_percent), got 1"
    );
    assert!(
        call("add", "{}")
            .failed("bad_input")
            .starts_with("task arguments must be a JSON array")
    );
    assert_eq!(
        call("fib", "[94]").failed("task_error"),
        "fib(94) does not fit in a u64: n must be at most 93"
    );
}

#[test]
fn hostile_run() {
    use serde_json::json;
    let Some(m) = read_module("hostile.wasm") else {
        return;
    };
    let call = |task: &str, input: &str| host::call(&m, task, input, FUEL);

    let panicked = call("panic_now", r#"["boom"]"#);
    let message = panicked.failed("task_error");
    assert!(
        message.starts_with("panicked at ") && message.ends_with(": boom"),
        "{message}"
    );
    assert!(panicked.trap.is_some(), "a panic aborts: {panicked:#?}");

    assert!(
        !call("read_file", r#"["/etc/passwd"]"#)
            .failed("task_error")
            .is_empty()
    );
    assert!(!call("list_dir", r#"["/"]"#).failed("task_error").is_empty());
    assert!(
        !call("connect", r#"["127.0.0.1:6379"]"#)
            .failed("task_error")
            .is_empty()
    );
    assert_eq!(call("read_env", "[]").ok(), &json!([]));
    assert_eq!(call("args", "[]").ok(), &json!(["args"]));
    assert_eq!(call("stdin", "[]").ok(), &json!(""));
    assert_eq!(call("recurse", "[1000]").ok(), &json!(1000));
    assert!(call("recurse", "[100000000]").trap.is_some());
    assert_eq!(call("alloc", "[10000000]").ok(), &json!(10_000_000));
    assert_eq!(call("big_output", "[5]").ok(), &json!("xxxxx"));
    let printed = call("print_flood", "[100]");
    assert_eq!((printed.ok(), printed.stdout.len()), (&json!(100), 100));
    assert_eq!(call("log_flood", "[3]").logs.len(), 3);
    let now = call("now_and_random", "[]");
    assert!(now.ok()[0].as_u64().unwrap() > 1_600_000_000_000, "{now:?}");
    let spun = host::call(&m, "spin", "[]", 10_000_000);
    assert!(
        spun.trap.as_deref().unwrap_or("").contains("fuel"),
        "{spun:#?}"
    );
}

#[test]
fn bench100k_run() {
    use serde_json::json;
    let Some(m) = read_module("bench100k.wasm") else {
        return;
    };
    assert_eq!(host::call(&m, "noop", "[]", FUEL).ok(), &json!(null));
    let stats = host::call(&m, "stats", "[[3, 1, 2]]", FUEL);
    assert_eq!(stats.ok()["median"], json!(2.0));
}
