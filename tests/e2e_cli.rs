//! The command line as a newcomer meets it, through the real `wasq` binary:
//! arguments from files and stdin, the same answer to the same mistake from
//! every command (docs/cli.md, "What each mistake gets"), limits checked
//! against the live hosts before anything is queued, flags validated where
//! they are parsed, the host's startup line, fresh `hosts` counters, idle
//! queues in `stats`, and the generated completions and man page.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use common::{describe, envelope, run, task_module, wasq};
use wasq_broker::testing::eventually_blocking;
use wasq_broker::{Broker, ModuleHash};

/// Runs `cmd` with `input` on its stdin.
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run wasq");
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Asserts a usage error (exit 2) whose stderr says `says`.
fn assert_usage(out: &Output, says: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{}", describe(out));
    assert!(
        stderr.contains(says),
        "expected {says:?}\n{}",
        describe(out)
    );
}

fn examples() -> String {
    task_module("examples").display().to_string()
}

fn sha256_hex(text: &str) -> String {
    ModuleHash::of(text.as_bytes()).to_hex()
}

#[test]
fn args_come_inline_from_a_file_or_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    // Far past what a command line comfortably carries.
    let text = "wasq ".repeat(60_000);
    let file = dir.path().join("args.json");
    std::fs::write(&file, serde_json::to_string(&[&text]).unwrap()).unwrap();
    let from_file = format!("@{}", file.display());
    let out = run(wasq().args(["exec", &examples(), "sha256", &from_file, "--json"]));
    assert_eq!(
        envelope(&out)["result"],
        sha256_hex(&text),
        "{}",
        describe(&out)
    );

    let out = run_with_stdin(
        wasq().args(["exec", &examples(), "add", "-", "--json"]),
        b"[40, 2]\n",
    );
    assert_eq!(envelope(&out)["result"], 42, "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_reads_args_and_batches_from_files_and_stdin() {
    let mut c = Cluster::start("cli_args").await;
    c.host(&[]);
    c.wait_hosts(1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("args.json");
    std::fs::write(&file, "[20,\n 22]").unwrap();
    let out = run(c.cli().args([
        "submit",
        &examples(),
        "add",
        &format!("@{}", file.display()),
        "--wait",
        "--json",
    ]));
    assert_eq!(envelope(&out)["result"], 42, "{}", describe(&out));

    let out = run_with_stdin(
        c.cli()
            .args(["submit", &examples(), "hello", "-", "--wait", "--json"]),
        b"[]",
    );
    assert_eq!(
        envelope(&out)["result"],
        "hello from wasq",
        "{}",
        describe(&out)
    );

    let out = run_with_stdin(
        c.cli()
            .args(["submit", &examples(), "add", "--batch", "-", "--json"]),
        b"[1, 2]\n\n[3, 4]\n",
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let results: Vec<&serde_json::Value> = lines.iter().map(|e| &e["result"]).collect();
    assert_eq!(results, [3, 7], "{}", describe(&out));
}

#[test]
fn malformed_args_are_the_same_usage_error_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("bad.json");
    std::fs::write(&bad_file, "[1,\n 2,\n oops]").unwrap();
    let bad_at = format!("@{}", bad_file.display());
    let batch = dir.path().join("calls.jsonl");
    std::fs::write(&batch, "[1, 2]\n[3,\n").unwrap();
    let m = examples();
    // No broker or server is needed to refuse them: nothing is contacted.
    for (args, says) in [
        (vec!["exec", &m, "add", "[4, 5"], "ARGS is not valid JSON"),
        (vec!["exec", &m, "add", "[4, 5"], "line 1 column 5"),
        (vec!["submit", &m, "add", "[4, 5"], "line 1 column 5"),
        (
            vec!["call", "http://127.0.0.1:1", &m, "add", "[4, 5"],
            "line 1 column 5",
        ),
        (vec!["exec", &m, "add", &bad_at], "line 3 column 2"),
        (vec!["submit", &m, "add", &bad_at], "line 3 column 2"),
        (
            vec!["exec", &m, "add", "{\"x\": 1}"],
            "must be a JSON array",
        ),
        (vec!["submit", &m, "add", "4"], "must be a JSON array"),
        (
            vec!["call", "http://127.0.0.1:1", &m, "add", "\"x\""],
            "must be a JSON array",
        ),
        (
            vec!["submit", &m, "add", "--batch", batch.to_str().unwrap()],
            "calls.jsonl: line 2 is not valid JSON",
        ),
        (
            vec!["exec", &m, "add", "@/nonexistent/args.json"],
            "cannot read ARGS from",
        ),
    ] {
        let out = run(wasq()
            .args(&args)
            .env("WASQ_REDIS_URL", "redis://127.0.0.1:1"));
        assert_usage(&out, says);
    }
}

#[test]
fn counts_and_time_limits_must_be_positive_where_they_are_parsed() {
    let m = examples();
    for (args, says) in [
        (
            vec!["host", "run", "--concurrency", "0"],
            "must be 1 or more, not 0",
        ),
        (
            vec!["host", "run", "--timeout", "-1"],
            "must be more than 0 seconds, not -1",
        ),
        (
            vec!["exec", &m, "add", "--timeout", "0"],
            "must be more than 0 seconds, not 0",
        ),
        (
            vec!["submit", &m, "add", "--fuel", "-5"],
            "must be 1 or more, not -5",
        ),
        (
            vec!["serve", "--concurrency", "0"],
            "must be 1 or more, not 0",
        ),
        (
            vec!["submit", &m, "add", "--countdown", "-2"],
            "must be 0 seconds or more, not -2",
        ),
    ] {
        let out = run(wasq()
            .args(&args)
            .env("WASQ_REDIS_URL", "redis://127.0.0.1:1"));
        assert_usage(&out, says);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_no_host_would_run_are_refused_before_they_are_queued() {
    let mut c = Cluster::start("cli_limits").await;
    // No live host yet: only the default args limit (1 MiB) applies.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.json");
    std::fs::write(
        &big,
        serde_json::to_string(&["x".repeat(1024 * 1024)]).unwrap(),
    )
    .unwrap();
    let big_at = format!("@{}", big.display());
    let out = run(c.cli().args(["submit", &examples(), "sha256", &big_at]));
    assert_usage(
        &out,
        "args of 1048580 bytes are over the limit of 1048576 bytes",
    );
    assert_usage(&out, "no live host of queue `default`");

    c.host(&["--max-args", "1000", "--timeout", "5"]);
    c.wait_hosts(1).await;
    let args = serde_json::to_string(&["y".repeat(1200)]).unwrap();
    let out = run(c.cli().args(["submit", &examples(), "sha256", &args]));
    assert_usage(
        &out,
        "the hosts of queue `default` would refuse this call: args of 1204 bytes are over the limit of 1000 bytes",
    );
    let out = run(c
        .cli()
        .args(["submit", &examples(), "add", "[1, 2]", "--timeout", "10"]));
    assert_usage(&out, "a timeout of 10 s is over the limit of 5 s");
    let batch = dir.path().join("calls.jsonl");
    std::fs::write(&batch, format!("[1, 2]\n[{}]\n", "7,".repeat(600) + "7")).unwrap();
    let out = run(c.cli().args([
        "submit",
        &examples(),
        "add",
        "--batch",
        batch.to_str().unwrap(),
    ]));
    assert_usage(&out, "over the limit of 1000 bytes");
    // Nothing of the refused calls was queued.
    let stats = c.broker.queue_stats().await.unwrap();
    let queued: u64 = stats.iter().map(|s| s.depth + s.pending + s.delayed).sum();
    assert_eq!(queued, 0, "{stats:?}");
    // Within the limits, the same call runs.
    let out = run(c.cli().args([
        "submit",
        &examples(),
        "add",
        "[1, 2]",
        "--timeout",
        "4.5",
        "--wait",
        "--json",
    ]));
    assert_eq!(envelope(&out)["result"], 3, "{}", describe(&out));
}

const NOT_TASKS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "add"))
  (func (export "task.hello"))
)"#;

const WRONG_TYPE: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "task.sum") (param i32))
)"#;

#[test]
fn inspect_and_exec_say_why_an_export_is_not_a_task_in_the_same_words() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("not_tasks.wat");
    std::fs::write(&module, NOT_TASKS).unwrap();
    let m = module.to_str().unwrap();
    let out = run(wasq().args(["inspect", m, "--json"]));
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(&out)));
    assert_eq!(report["tasks"], serde_json::json!(["hello"]));
    let why = report["not_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["export"] == "add")
        .unwrap_or_else(|| panic!("{report}"))["why"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(why.contains("`task.add`"), "{why}");
    let out = run(wasq().args(["exec", m, "add", "--json"]));
    let env = envelope(&out);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(env["error"]["kind"], "task_not_found");
    let message = env["error"]["message"].as_str().unwrap();
    assert!(message.contains(&why), "{message}\nvs inspect: {why}");

    let module = dir.path().join("wrong_type.wat");
    std::fs::write(&module, WRONG_TYPE).unwrap();
    let m = module.to_str().unwrap();
    let words = "export `task.sum` must be a function of type [] -> []";
    assert_usage(&run(wasq().args(["inspect", m])), words);
    let out = run(wasq().args(["exec", m, "sum", "--json"]));
    let env = envelope(&out);
    assert_eq!(env["error"]["kind"], "invalid_module", "{env}");
    assert!(
        env["error"]["message"].as_str().unwrap().contains(words),
        "{env}"
    );
}

#[test]
fn a_trap_says_wasm_trap_once() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("trap.wat");
    std::fs::write(
        &module,
        r#"(module (memory (export "memory") 1) (func (export "task.t") unreachable))"#,
    )
    .unwrap();
    let out = run(wasq().args(["exec", module.to_str().unwrap(), "t", "--json"]));
    let message = envelope(&out)["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(message.matches("wasm trap").count(), 1, "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_run_says_once_what_it_is_and_quiet_says_nothing() {
    let mut c = Cluster::start("cli_startup").await;
    let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let loud = c.host(&[
        "--queue",
        "a",
        "--queue",
        "b",
        "--concurrency",
        "3",
        "--timeout",
        "7",
        "--metrics",
        &metrics.to_string(),
    ]);
    let quiet = c.host(&["--quiet"]);
    c.wait_hosts(2).await;
    let log = eventually_blocking(
        Duration::from_secs(30),
        "the startup line",
        || c.procs[loud].log(),
        |log| log.lines().any(|l| l.starts_with("wasq host ")),
    );
    let line = log
        .lines()
        .find(|l| l.starts_with("wasq host "))
        .unwrap()
        .to_string();
    let ids: Vec<String> = c
        .broker
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .filter(|(i, _)| i.concurrency == 3)
        .map(|(i, _)| i.id)
        .collect();
    assert_eq!(ids.len(), 1);
    for part in [
        format!("wasq host {} up: ", ids[0]),
        c.redis.url(),
        format!("(prefix {})", c.prefix),
        "queues a, b".to_string(),
        "concurrency 3".to_string(),
        "timeout 7 s".to_string(),
        format!("metrics http://{metrics}/metrics"),
    ] {
        assert!(line.contains(&part), "{part:?} missing from {line:?}");
    }
    let startup_lines = |i: usize| {
        c.procs[i]
            .log()
            .lines()
            .filter(|l| l.starts_with("wasq host "))
            .count()
    };
    assert_eq!(startup_lines(loud), 1);
    assert_eq!(startup_lines(quiet), 0, "{}", c.procs[quiet].log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_counters_are_at_most_a_heartbeat_old() {
    let mut c = Cluster::start("cli_hosts").await;
    // A 3 s lease: a heartbeat every second.
    c.host(&["--lease", "3"]);
    c.wait_hosts(1).await;
    for x in 0..4 {
        let out = run(c.cli().args([
            "submit",
            &examples(),
            "add",
            &format!("[{x}, 1]"),
            "--wait",
            "--json",
        ]));
        assert_eq!(envelope(&out)["state"], "succeeded", "{}", describe(&out));
    }
    // Within a few heartbeats (not a speed test: the deadline only stops a
    // host whose counters never arrive from hanging the test).
    let hosts = eventually_blocking(
        Duration::from_secs(10),
        "the host's counters of 4 calls",
        || c.json(&["hosts", "--json"]),
        |hosts| hosts[0]["done"] == 4,
    );
    let host = &hosts[0];
    assert_eq!(
        (host["failed"].as_u64(), host["in_flight"].as_u64()),
        (Some(0), Some(0)),
        "{host}"
    );
    // The limits it announced, which `submit` checks calls against.
    assert_eq!(host["limits"]["timeout"], 30.0, "{host}");
    assert_eq!(host["limits"]["max_args"], 1024 * 1024, "{host}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_leave_out_queues_with_nothing_to_show() {
    let mut c = Cluster::start("cli_stats").await;
    c.host(&["--queue", "live"]);
    c.wait_hosts(1).await;
    // A queue whose last call finished long ago and that no host consumes:
    // known (a member of PREFIX:queues, docs/redis.md) with nothing in it.
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("SADD")
        .arg(format!("{}:queues", c.prefix))
        .arg("gone")
        .query_async(&mut conn)
        .await
        .unwrap();
    // A queue with a call waiting and no host is not idle.
    c.ok(&["submit", &examples(), "add", "[1, 2]", "--queue", "waiting"]);
    let table = c.ok(&["stats"]);
    assert!(!table.contains("gone"), "{table}");
    assert!(table.contains("live"), "a queue a host consumes: {table}");
    assert!(table.contains("waiting"), "a queue with work: {table}");
    assert!(table.contains("1 idle not shown"), "{table}");
    let all = c.ok(&["stats", "--all"]);
    let gone = all
        .lines()
        .find(|l| l.starts_with("gone"))
        .unwrap_or_else(|| panic!("{all}"));
    assert!(gone.contains("idle"), "{gone}");
    let gone = c.stats("gone");
    assert_eq!(
        (gone["idle"].as_bool(), gone["hosts"].as_u64()),
        (Some(true), Some(0))
    );
    let live = c.stats("live");
    assert_eq!(
        (live["idle"].as_bool(), live["hosts"].as_u64()),
        (Some(false), Some(1))
    );
}

#[test]
fn completions_and_man_pages_come_from_the_same_flags() {
    for (shell, marker) in [
        ("bash", "_wasq()"),
        ("zsh", "#compdef wasq"),
        ("fish", "complete -c wasq"),
    ] {
        let out = run(wasq().args(["completions", shell]));
        let script = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        assert!(
            script.contains("wait-timeout"),
            "{shell}: submit's flags are missing"
        );
    }
    assert_usage(
        &run(wasq().args(["completions", "tcsh"])),
        "invalid value 'tcsh'",
    );
    let out = run(wasq().arg("man"));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH wasq"),
        "{page:.200}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run(wasq().args(["man", "--dir", dir.path().to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for page in ["wasq.1", "wasq-submit.1", "wasq-host.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap_or_default();
        assert!(text.contains(".TH"), "{page}: {text:.200}");
    }
}
