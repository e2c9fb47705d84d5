//! `wasq new`: a task project of one's own builds with its own tools (cargo,
//! or clang through make) and runs through `wasq exec` at once; a directory
//! that is not empty is refused.

mod common;

#[path = "../host/tests/guests/clang.rs"]
mod clang;

use std::path::Path;
use std::process::Command;

use common::{describe, envelope, run, wasq};

/// `wasq exec MODULE hello ARGS --json`: the envelope.
fn hello(module: &Path, args: &str) -> serde_json::Value {
    let out = run(wasq()
        .arg("exec")
        .arg(module)
        .args(["hello", args, "--json"]));
    envelope(&out)
}

/// The greeting `hello '["Ada"]'` answers, checked to name Ada.
#[track_caller]
fn assert_greets_ada(module: &Path) {
    let env = hello(module, r#"["Ada"]"#);
    assert_eq!(env["state"], "succeeded", "{env:#}");
    let greeting = env["result"].as_str().unwrap_or_default();
    assert!(greeting.contains("Ada"), "{env:#}");
}

/// Runs `cmd`, showing its output when it fails.
#[track_caller]
fn run_ok(cmd: &mut Command) {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}\n{}", describe(&out));
}

#[test]
fn a_new_rust_crate_builds_with_cargo_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("hello");
    run_ok(wasq().arg("new").arg(&dir));
    for file in [
        "Cargo.toml",
        ".cargo/config.toml",
        "src/lib.rs",
        "README.md",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        readme.contains("target/wasm32-wasip1/release/hello.wasm"),
        "{readme}"
    );

    // Its own target dir (not the workspace's: the crate is no member of
    // it), offline from the registry cache when it has the SDK's
    // dependencies, else online.
    let target = tmp.path().join("target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = |offline: bool| {
        let mut cmd = Command::new(&cargo);
        cmd.args(["build", "--release"])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", &target);
        if offline {
            cmd.arg("--offline");
        }
        run(&mut cmd)
    };
    let out = build(true);
    if !out.status.success() {
        eprintln!(
            "the offline build failed, trying online:\n{}",
            describe(&out)
        );
        let out = build(false);
        assert!(
            out.status.success(),
            "cargo build --release\n{}",
            describe(&out)
        );
    }
    let module = target.join("wasm32-wasip1/release/hello.wasm");
    assert!(module.is_file(), "{} is missing", module.display());
    assert_greets_ada(&module);
}

#[test]
fn a_dashed_name_becomes_the_module_name_cargo_gives() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-task");
    run_ok(wasq().arg("new").arg(&dir));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("name = \"my-task\""), "{manifest}");
    // The SDK by an absolute path to this checkout's guest-sdk.
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../guest-sdk")
        .canonicalize()
        .unwrap();
    assert!(
        manifest.contains(&format!("path = \"{}\"", sdk.display())),
        "{manifest}"
    );
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(readme.contains("release/my_task.wasm"), "{readme}");
}

#[test]
fn a_new_c_module_builds_with_make_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("greeter");
    run_ok(wasq().arg("new").arg(&dir).args(["--lang", "c"]));
    let header = std::fs::read_to_string(dir.join("wasq_guest.h")).unwrap();
    assert_eq!(
        header,
        std::fs::read_to_string(clang::header_dir().join("wasq_guest.h")).unwrap(),
        "the header is the SDK's"
    );
    if !clang::clang_available("building the C project of `wasq new --lang c`") {
        return;
    }
    run_ok(Command::new("make").arg("-C").arg(&dir));
    let module = dir.join("greeter.wasm");
    assert_greets_ada(&module);
    // The name's JSON escapes go into the result as they came.
    let env = hello(&module, r#"["A\"da"]"#);
    assert_eq!(env["result"], "hello, A\"da!", "{env:#}");
    let env = hello(&module, "[1]");
    assert_eq!(env["error"]["kind"], "bad_input", "{env:#}");
}

#[test]
fn a_directory_that_is_not_empty_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("keep.txt"), "mine").unwrap();
    for lang in ["rust", "c"] {
        let out = run(wasq().arg("new").arg(tmp.path()).args(["--lang", lang]));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not empty"),
            "{}",
            describe(&out)
        );
    }
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "nothing was written");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("keep.txt")).unwrap(),
        "mine"
    );

    // A file where the directory should be, and an SDK that is not one.
    let out = run(wasq().arg("new").arg(tmp.path().join("keep.txt")));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = run(wasq()
        .arg("new")
        .arg(tmp.path().join("fresh"))
        .arg("--sdk")
        .arg(tmp.path()));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--sdk DIR"),
        "{}",
        describe(&out)
    );
    assert!(!tmp.path().join("fresh").exists());
    let out = run(wasq()
        .arg("new")
        .arg(tmp.path().join("fresh"))
        .args(["--lang", "c", "--sdk", "."]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(!tmp.path().join("fresh").exists());
}
