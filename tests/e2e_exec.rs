//! `wasq exec` and `wasq inspect` through the real binary: the example tasks
//! written with the guest SDK, and hostile Rust guests.

mod common;

use common::{describe, envelope, run, task_module, wasq};
use serde_json::json;

fn exec(module: &str, task: &str, args: &str, extra: &[&str]) -> (serde_json::Value, i32) {
    let out = run(wasq()
        .arg("exec")
        .arg(task_module(module))
        .args([task, args, "--json"])
        .args(extra));
    let env = envelope(&out);
    (env, out.status.code().unwrap_or(-1))
}

#[track_caller]
fn assert_kind(env: &serde_json::Value, kind: &str) {
    assert_eq!(env["state"], "failed", "{env:#}");
    assert_eq!(env["error"]["kind"], kind, "{env:#}");
}

#[test]
fn examples_run_through_exec() {
    let (env, code) = exec("examples", "add", "[4, 5]", &[]);
    assert_eq!((env["result"].clone(), code), (json!(9), 0), "{env:#}");
    assert_eq!(env["state"], "succeeded");
    assert!(env["fuel_used"].as_u64().unwrap() > 0);
    assert!(env["id"].as_str().unwrap().len() == 26);

    let (env, _) = exec("examples", "fib", "[20]", &[]);
    assert_eq!(env["result"], json!(6765));
    let (env, _) = exec("examples", "sha256", r#"["abc"]"#, &[]);
    assert_eq!(
        env["result"],
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    let (env, _) = exec("examples", "word_count", r#"["a b a"]"#, &[]);
    assert_eq!(env["result"], json!({"a": 2, "b": 1}));
    let (env, _) = exec("examples", "long_processing", r#"["x", 0.05]"#, &[]);
    assert_eq!(env["state"], "succeeded", "{env:#}");
    assert!(env["duration_ms"].as_f64().unwrap() >= 50.0);
    assert!(env["result"].as_str().unwrap().contains('x'));
}

#[test]
fn human_output_and_exit_codes() {
    let out = run(wasq()
        .arg("exec")
        .arg(task_module("examples"))
        .args(["add", "[1, 2]"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("succeeded"));

    let out = run(wasq()
        .arg("exec")
        .arg(task_module("examples"))
        .args(["add", "[1]"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad_input"));

    let out = run(wasq().args(["exec", "/nonexistent/module.wasm", "add"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read module"));

    let out = run(wasq().args(["exec"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "usage error: {}",
        describe(&out)
    );
}

#[test]
fn typed_arguments_are_checked_by_the_sdk() {
    let (env, code) = exec("examples", "add", r#"[4, "five"]"#, &[]);
    assert_eq!(code, 1);
    assert_kind(&env, "bad_input");
    assert!(
        env["error"]["message"].as_str().unwrap().contains('y'),
        "names the parameter: {env:#}"
    );
    let (env, _) = exec("examples", "add", "[1, 2, 3]", &[]);
    assert_kind(&env, "bad_input");
    // Args that are not an array never reach the sandbox: a usage error
    // from every command (tests/e2e_cli.rs).
    let (env, _) = exec("examples", "fib", "[200]", &[]);
    assert_kind(&env, "task_error");
}

#[test]
fn panics_report_their_message() {
    let (env, code) = exec("hostile", "panic_now", r#"["the answer is not 42"]"#, &[]);
    assert_eq!(code, 1);
    assert_kind(&env, "task_error");
    assert!(
        env["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the answer is not 42"),
        "{env:#}"
    );
}

#[test]
fn the_guest_sees_no_files_env_or_network() {
    for path in ["/etc/passwd", ".", "/", "Cargo.toml"] {
        let (env, _) = exec("hostile", "read_file", &json!([path]).to_string(), &[]);
        let text = env.to_string();
        assert!(!text.contains("root:"), "read {path}: {env:#}");
        assert!(
            env["state"] == "failed" || env["result"].as_str().is_none_or(|s| s.is_empty()),
            "{env:#}"
        );
        let (env, _) = exec("hostile", "list_dir", &json!([path]).to_string(), &[]);
        assert!(!env.to_string().contains("Cargo"), "listed {path}: {env:#}");
    }
    let out = run(wasq()
        .env("WASQ_SECRET", "hunter2")
        .arg("exec")
        .arg(task_module("hostile"))
        .args(["read_env", "[]", "--json"]));
    let env = envelope(&out);
    assert_eq!(env["result"], json!([]), "{env:#}");
    let (env, _) = exec("hostile", "args", "[]", &[]);
    assert_eq!(env["result"], json!(["args"]), "{env:#}");
    let (env, _) = exec("hostile", "connect", r#"["127.0.0.1:22"]"#, &[]);
    assert!(
        !env.to_string().to_lowercase().contains("connected"),
        "{env:#}"
    );
    let (env, _) = exec("hostile", "stdin", "[]", &[]);
    assert_eq!(env["result"], json!(""), "{env:#}");
    let (env, _) = exec("hostile", "now_and_random", "[]", &[]);
    assert_eq!(env["state"], "succeeded", "clocks and random work: {env:#}");
}

#[test]
fn limits_hold_for_rust_guests() {
    let (env, _) = exec("hostile", "spin", "[]", &["--fuel", "5000000"]);
    assert_kind(&env, "fuel_exhausted");
    let (env, _) = exec(
        "hostile",
        "spin",
        "[]",
        &["--timeout", "0.3", "--fuel", "10000000000"],
    );
    assert_kind(&env, "timeout");
    let (env, _) = exec("hostile", "sleep_forever", "[]", &["--timeout", "0.3"]);
    assert_kind(&env, "timeout");
    let (env, _) = exec("hostile", "alloc", "[1000000]", &["--memory", "16777216"]);
    assert_eq!(env["result"], json!(1000000), "{env:#}");
    let (env, _) = exec("hostile", "alloc", "[100000000]", &["--memory", "16777216"]);
    assert_kind(&env, "memory_limit");
    let (env, _) = exec("hostile", "print_flood", "[1000]", &[]);
    assert_eq!(env["stdout"].as_str().unwrap().len(), 1000, "{env:#}");
    let (env, _) = exec("hostile", "print_flood", "[10000000]", &[]);
    assert_kind(&env, "output_limit");
    let (env, _) = exec("hostile", "eprint_flood", "[10000000]", &[]);
    assert_kind(&env, "output_limit");
    let (env, _) = exec("hostile", "log_flood", "[10]", &[]);
    assert_eq!(env["logs"].as_array().unwrap().len(), 10, "{env:#}");
    let (env, _) = exec("hostile", "log_flood", "[10000000]", &[]);
    assert_kind(&env, "output_limit");
    let (env, _) = exec("hostile", "big_output", "[1000]", &["--max-output", "2000"]);
    assert_eq!(env["state"], "succeeded", "{env:#}");
    let (env, _) = exec("hostile", "big_output", "[1000]", &["--max-output", "500"]);
    assert_kind(&env, "output_limit");
    let (env, _) = exec("hostile", "recurse", "[10]", &[]);
    assert_eq!(env["state"], "succeeded", "{env:#}");
    let (env, _) = exec("hostile", "recurse", "[100000000]", &[]);
    assert_kind(&env, "trap");
}

#[test]
fn inspect_lists_tasks_and_imports() {
    let out = run(wasq()
        .arg("inspect")
        .arg(task_module("examples"))
        .arg("--json"));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks: Vec<&str> = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in [
        "add",
        "fib",
        "long_processing",
        "process_file",
        "sha256",
        "word_count",
    ] {
        assert!(tasks.contains(&t), "{t} in {tasks:?}");
    }
    assert_eq!(report["sha256"].as_str().unwrap().len(), 64);
    assert!(report["size"].as_u64().unwrap() > 1000);
    for import in report["imports"].as_array().unwrap() {
        let i = import.as_str().unwrap();
        assert!(
            i.starts_with("wasq.") || i.starts_with("wasi_snapshot_preview1."),
            "{i}"
        );
    }
    let out = run(wasq()
        .args(["inspect", "Cargo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR")));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// `--compile` picks the code a one-off run gets; quick and optimised code
/// agree on the result and on the exact fuel, and a bad choice is a usage error.
#[test]
fn every_compilation_gives_the_same_result_and_fuel() {
    let mut seen = Vec::new();
    for how in ["quick", "optimized", "tiered"] {
        let (env, code) = exec("examples", "fib", "[20]", &["--compile", how]);
        assert_eq!(
            (env["result"].clone(), code),
            (json!(6765), 0),
            "{how}: {env:#}"
        );
        seen.push(env["fuel_used"].as_u64().unwrap());
    }
    assert!(seen.iter().all(|f| *f == seen[0]), "fuel differs: {seen:?}");

    let out = run(wasq().arg("exec").arg(task_module("examples")).args([
        "add",
        "[1, 2]",
        "--compile",
        "fastest",
    ]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tiered, optimized or quick"),
        "{}",
        describe(&out)
    );
}
