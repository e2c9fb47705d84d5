//! The guest ABI's edge cases, as docs/abi.md states them, one test each.
//! Every case runs in the WAT guest `guests/abi_edges.wat` and, where clang
//! is available, in the C guest `guests/abi_edges.c` built from
//! `guest-sdk/c/wasq_guest.h`; both must show what the docs say.

#[path = "guests/clang.rs"]
mod clang;

use std::sync::OnceLock;

use wasq_broker::{ErrorKind, Limits};
use wasq_host::{Cancel, RunOutcome, Sandbox, SandboxConfig};

/// The same tasks in WAT and, when clang runs, in C.
fn guests() -> &'static [(&'static str, Vec<u8>)] {
    static GUESTS: OnceLock<Vec<(&'static str, Vec<u8>)>> = OnceLock::new();
    GUESTS.get_or_init(|| {
        let mut guests = vec![(
            "abi_edges.wat",
            wat::parse_str(include_str!("guests/abi_edges.wat")).expect("valid WAT"),
        )];
        if clang::clang_available("the C guest abi_edges.c") {
            let dir = tempfile::tempdir().unwrap();
            let source =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/abi_edges.c");
            let bytes = clang::build_c(&source, &dir.path().join("abi_edges.wasm"));
            guests.push(("abi_edges.c", bytes));
        }
        guests
    })
}

fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new(SandboxConfig::default()).expect("sandbox"))
}

/// Runs `task` in every guest: `(guest, outcome)`.
async fn run_each(task: &str) -> Vec<(&'static str, RunOutcome)> {
    let mut outcomes = Vec::new();
    for (guest, bytes) in guests() {
        let module = sandbox()
            .load_bytes(bytes.clone())
            .await
            .unwrap_or_else(|e| panic!("{guest} loads: {e:?}"));
        let outcome = sandbox()
            .run(&module, task, b"[]", &Limits::default(), &Cancel::new())
            .await;
        outcomes.push((*guest, outcome));
    }
    outcomes
}

/// Asserts the call failed with `kind` and `message`, and that its
/// envelope carries no result.
#[track_caller]
fn assert_failed(guest: &str, outcome: RunOutcome, kind: ErrorKind, message: &str) {
    let error = outcome.result.as_ref().expect_err(guest).clone();
    assert_eq!(
        (error.kind, error.message.as_str()),
        (kind, message),
        "{guest}"
    );
    let envelope = outcome.into_envelope("id", 1, "h");
    assert_eq!(envelope.result, serde_json::Value::Null, "{guest}");
    assert_eq!(envelope.state.to_string(), "failed", "{guest}");
}

#[tokio::test]
async fn bad_input_import_fails_the_call_as_bad_input() {
    for (guest, o) in run_each("bad_input").await {
        assert_failed(guest, o, ErrorKind::BadInput, "name must not be empty");
    }
}

#[tokio::test]
async fn output_that_is_not_json_is_a_task_error() {
    for (guest, o) in run_each("not_json").await {
        let error = o.result.expect_err(guest);
        assert_eq!(error.kind, ErrorKind::TaskError, "{guest}");
        assert!(
            error.message.starts_with("task output is not valid JSON: "),
            "{guest}: {}",
            error.message
        );
    }
}

#[tokio::test]
async fn output_then_fail_has_failed_and_drops_the_output() {
    for (guest, o) in run_each("output_then_fail").await {
        assert_failed(guest, o, ErrorKind::TaskError, "failed after output");
    }
    for (guest, o) in run_each("fail_then_output").await {
        assert_failed(guest, o, ErrorKind::TaskError, "failed before output");
    }
}

#[tokio::test]
async fn the_last_failure_sets_kind_and_message() {
    for (guest, o) in run_each("fail_then_bad_input").await {
        assert_failed(guest, o, ErrorKind::BadInput, "last");
    }
}

#[tokio::test]
async fn log_levels_are_clamped_into_0_to_4() {
    for (guest, o) in run_each("log_levels").await {
        assert!(o.result.is_ok(), "{guest}: {:?}", o.result);
        let levels: Vec<u8> = o.logs.iter().map(|l| l.level).collect();
        // -5, 0, 2, 4, 9, i32::MIN, i32::MAX
        assert_eq!(levels, [0, 0, 2, 4, 4, 0, 4], "{guest}");
    }
}

#[tokio::test]
async fn invalid_utf8_is_replaced_in_fail_log_and_stdout() {
    const REPLACED: &str = "\u{FFFD} ok \u{FFFD}";
    for (guest, o) in run_each("bad_utf8_fail").await {
        assert_failed(guest, o, ErrorKind::TaskError, REPLACED);
    }
    for (guest, o) in run_each("bad_utf8_log").await {
        assert!(o.result.is_ok(), "{guest}: {:?}", o.result);
        assert_eq!(o.logs.len(), 1, "{guest}");
        assert_eq!(o.logs[0].message, REPLACED, "{guest}");
    }
    for (guest, o) in run_each("bad_utf8_stdout").await {
        assert!(o.result.is_ok(), "{guest}: {:?}", o.result);
        assert_eq!(o.stdout, REPLACED, "{guest}");
    }
}

#[tokio::test]
async fn initialize_runs_once_before_each_call() {
    for _ in 0..2 {
        for (guest, o) in run_each("initialized").await {
            assert_eq!(o.result.expect(guest), serde_json::json!(1), "{guest}");
        }
    }
}

#[test]
fn tasks_are_the_exports_named_task_dot_name() {
    let expected = [
        "bad_input",
        "bad_utf8_fail",
        "bad_utf8_log",
        "bad_utf8_stdout",
        "fail_then_bad_input",
        "fail_then_output",
        "initialized",
        "log_levels",
        "not_json",
        "output_then_fail",
    ];
    for (guest, bytes) in guests() {
        let report = wasq_host::inspect(bytes, &SandboxConfig::default()).expect(guest);
        assert_eq!(report.tasks, expected, "{guest}: `_initialize` is no task");
    }
}
