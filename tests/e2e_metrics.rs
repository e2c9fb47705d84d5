//! End to end: `wasq submit --batch` against a real redis-server and a real
//! `wasq host run --metrics`; the host's `/metrics` must count exactly the
//! calls the batches ran, by state and error kind.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{Deployment, describe, eventually_blocking, header, http_get, run, task_module, wasq};
use serde_json::{Value, json};
use wasq_broker::testing::{RedisServer, unique_prefix};

/// Starts `wasq host run --metrics 127.0.0.1:0` and returns its index with
/// the address it serves metrics on (read from its log).
fn host_with_metrics(d: &mut Deployment) -> (usize, SocketAddr) {
    let i = d.spawn(
        "host",
        &[
            "host",
            "run",
            "--concurrency",
            "4",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let rest = d.procs[i].logged("serving metrics");
    let addr = rest
        .split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {rest:?}"));
    (i, addr)
}

/// A file of `--batch` lines in the test's temp dir.
fn batch_file(d: &Deployment, name: &str, lines: &[&str]) -> PathBuf {
    d.file(name, &(lines.join("\n") + "\n"))
}

/// Samples of a Prometheus text exposition: `name{a="x",b="y"}` → value,
/// with labels in the order given. Checks every line is well formed.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("HELP ") || rest.starts_with("TYPE "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name_end = series.find('{').unwrap_or(series.len());
        assert!(
            series[..name_end]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "duplicate {series}"
        );
    }
    out
}

fn get(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("no series {series} in {:#?}", m.keys().collect::<Vec<_>>()))
}

fn stdout_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `field` of each JSON envelope line on stdout.
fn field_per_line(out: &Output, field: &str) -> Vec<Value> {
    stdout_lines(out)
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()[field].clone())
        .collect()
}

#[test]
fn batches_run_and_metrics_count_them_by_state_and_kind() {
    let mut s = Deployment::start("metrics");
    let (host, addr) = host_with_metrics(&mut s);
    let examples = task_module("examples");
    let hostile = task_module("hostile");

    // Before any call: the counters exist and are zero.
    let (status, head, text) = http_get(addr, "/metrics");
    let content_type = header(&head, "content-type");
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let m = parse_metrics(&text);
    assert_eq!(get(&m, "wasq_claimed_calls_total"), 0.0);
    assert_eq!(get(&m, "wasq_call_duration_seconds_count"), 0.0);

    // Batch 1, piped, plain output: 6 adds succeed, 2 fail as bad_input
    // (a string where a number goes; wrong arity). Blank lines are skipped.
    let adds = batch_file(
        &s,
        "adds.jsonl",
        &[
            "[1, 1]",
            "[2, 2]",
            "",
            "[3, 3]",
            "[\"x\", 1]",
            "[4, 4]",
            "[5, 5]",
            "[1]",
            "[6, 6]",
        ],
    );
    let out = run(s
        .cli()
        .arg("submit")
        .arg(&examples)
        .args(["add", "--batch"])
        .arg(&adds));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a call failed: {}",
        describe(&out)
    );
    let lines = stdout_lines(&out);
    assert_eq!(lines.len(), 8, "one line per call: {}", describe(&out));
    let mut by_line = BTreeMap::new();
    for l in &lines {
        let cols: Vec<&str> = l.split('\t').collect();
        assert_eq!(cols.len(), 4, "LINE ID STATE RESULT: {l:?}");
        assert_eq!(cols[1].len(), 26, "a ULID call id: {l:?}");
        by_line.insert(
            cols[0].parse::<usize>().unwrap(),
            (cols[2].to_string(), cols[3].to_string()),
        );
    }
    let got: Vec<usize> = by_line.keys().copied().collect();
    assert_eq!(
        got,
        [1, 2, 4, 5, 6, 7, 8, 9],
        "input line numbers, in order"
    );
    let line_order: Vec<usize> = lines
        .iter()
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(line_order, got, "output follows input order");
    for (line, want) in [(1, 2), (2, 4), (4, 6), (6, 8), (7, 10), (9, 12)] {
        assert_eq!(
            by_line[&line],
            ("succeeded".to_string(), want.to_string()),
            "line {line}"
        );
    }
    for line in [5, 8] {
        assert_eq!(by_line[&line].0, "failed", "line {line}");
        assert!(
            by_line[&line].1.starts_with("bad_input: "),
            "line {line}: {:?}",
            by_line[&line]
        );
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("8 calls: 6 succeeded, 2 failed in "),
        "summary line: {}",
        describe(&out)
    );
    assert!(
        !stderr.contains('\r') && !stderr.contains("\x1b["),
        "no progress bar when piped: {stderr:?}"
    );

    // Batch 2, --json: fib with too little fuel fails as fuel_exhausted.
    let fibs = batch_file(&s, "fibs.jsonl", &["[25]", "[26]", "[27]"]);
    let out = run(s
        .cli()
        .arg("submit")
        .arg(&examples)
        .args(["fib", "--fuel", "20000", "--json", "--batch"])
        .arg(&fibs));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let envs: Vec<Value> = stdout_lines(&out)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not an envelope ({e}): {l}")))
        .collect();
    assert_eq!(envs.len(), 3, "{}", describe(&out));
    for env in &envs {
        assert_eq!(env["state"], "failed", "{env}");
        assert_eq!(env["error"]["kind"], "fuel_exhausted", "{env}");
    }

    // Batch 3, --json, all succeed: exit 0; results in input order.
    let words = batch_file(&s, "words.jsonl", &["[\"a b a\"]", "[\"\"]", "[\"x\"]"]);
    let out = run(s
        .cli()
        .arg("submit")
        .arg(&examples)
        .args(["word_count", "--json", "--batch"])
        .arg(&words));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let results: Vec<Value> = field_per_line(&out, "result");
    assert_eq!(
        results,
        [json!({"a": 2, "b": 1}), json!({}), json!({"x": 1})]
    );
    let fuel_of_words: u64 = stdout_lines(&out)
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["fuel_used"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert!(fuel_of_words > 0);

    // Batch 4: a guest panic is a task_error; one retry each.
    let panics = batch_file(&s, "panics.jsonl", &["[\"boom\"]", "[\"bang\"]"]);
    let out = run(s
        .cli()
        .arg("submit")
        .arg(&hostile)
        .args(["panic_now", "--retries", "1", "--json", "--batch"])
        .arg(&panics));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    for l in stdout_lines(&out) {
        let env: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(env["error"]["kind"], "task_error", "{env}");
        assert_eq!(env["attempt"], 2, "retried once: {env}");
    }

    // One call of a task the module lacks.
    let out =
        run(s
            .cli()
            .arg("submit")
            .arg(&examples)
            .args(["no_such_task", "[]", "--wait", "--json"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));

    // The host's metrics count exactly those calls. Every count is recorded
    // before the result is published, so one scrape after the last result suffices.
    let (_, _, text) = http_get(addr, "/metrics");
    let m = parse_metrics(&text);
    let calls = |state: &str, kind: &str| {
        m.get(&format!(
            "wasq_calls_total{{state=\"{state}\",kind=\"{kind}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
    };
    assert_eq!(calls("succeeded", ""), 9.0, "{text}");
    assert_eq!(calls("failed", "bad_input"), 2.0, "{text}");
    assert_eq!(calls("failed", "fuel_exhausted"), 3.0, "{text}");
    assert_eq!(calls("failed", "task_error"), 2.0, "{text}");
    assert_eq!(calls("failed", "task_not_found"), 1.0, "{text}");
    let total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("wasq_calls_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 17.0, "no other outcomes: {text}");
    assert_eq!(get(&m, "wasq_call_retries_total{kind=\"task_error\"}"), 2.0);
    // Every attempt is timed: 17 final ones and 2 retried.
    assert_eq!(get(&m, "wasq_call_duration_seconds_count"), 19.0);
    assert_eq!(
        get(&m, "wasq_call_duration_seconds_bucket{le=\"+Inf\"}"),
        19.0
    );
    let buckets: Vec<f64> = m
        .iter()
        .filter(|(k, _)| k.starts_with("wasq_call_duration_seconds_bucket{"))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() >= 10, "{text}");
    assert!(get(&m, "wasq_call_duration_seconds_sum") > 0.0);
    assert_eq!(
        get(&m, "wasq_claimed_calls_total"),
        19.0,
        "each attempt claimed once"
    );
    assert!(get(&m, "wasq_claims_total") >= 1.0);
    assert_eq!(get(&m, "wasq_calls_in_flight"), 0.0);
    assert_eq!(get(&m, "wasq_concurrency"), 4.0);
    assert!(get(&m, "wasq_fuel_used_total") >= fuel_of_words as f64);
    assert_eq!(
        get(&m, "wasq_module_compiles_total"),
        2.0,
        "examples and hostile, once each"
    );
    assert_eq!(get(&m, "wasq_module_cache_disk_hits_total"), 0.0);
    // Tiered compilation: each module's optimised code is compiled in the
    // background and swapped in, once. Only a scrape can see when.
    let optimized = || {
        let (_, _, text) = http_get(addr, "/metrics");
        get(&parse_metrics(&text), "wasq_module_optimizations_total")
    };
    eventually_blocking(
        Duration::from_secs(60),
        "both modules optimised",
        optimized,
        |n| *n >= 2.0,
    );
    assert_eq!(
        optimized(),
        2.0,
        "examples and hostile, optimised once each"
    );
    let hits = get(&m, "wasq_module_cache_hits_total");
    assert!(hits >= 3.0 && hits + 2.0 <= 19.0, "cache hits {hits}");
    assert_eq!(get(&m, "wasq_broker_errors_total"), 0.0);
    assert!(
        m.keys()
            .any(|k| k.starts_with("wasq_host_info{host=\"") && k.contains("version=\"")),
        "{text}"
    );

    // Batch 5 (after the counts): more calls than one wait collects, in
    // input order; then the same to a queue no host serves, which does not
    // finish in time.
    let many: Vec<String> = (0..150).map(|i| format!("[{i}, {i}]")).collect();
    let many_refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let many_file = batch_file(&s, "many.jsonl", &many_refs);
    let out = run(s
        .cli()
        .arg("submit")
        .arg(&examples)
        .args(["add", "--json", "--batch"])
        .arg(&many_file));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let sums: Vec<Value> = field_per_line(&out, "result");
    assert_eq!(sums, (0..150).map(|i| json!(2 * i)).collect::<Vec<_>>());
    let out = run(s
        .cli()
        .arg("submit")
        .arg(&examples)
        .args([
            "add",
            "--queue",
            "nobody",
            "--wait-timeout",
            "0.5",
            "--json",
            "--batch",
        ])
        .arg(&many_file));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let states: Vec<Value> = field_per_line(&out, "state");
    assert_eq!(states, vec![json!("queued"); 150]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("150 unfinished"),
        "{}",
        describe(&out)
    );

    let status = s.procs[host].terminate();
    assert!(status.success(), "host exits 0 on SIGTERM");
}

#[test]
fn a_bad_batch_line_is_a_usage_error_and_queues_nothing() {
    let s = Deployment::start("badbatch");
    let file = batch_file(
        &s,
        "bad.jsonl",
        &["[1, 2]", "[3, 4]", "{\"x\": 1}", "[5, 6]"],
    );
    let out = run(s
        .cli()
        .arg("submit")
        .arg(task_module("examples"))
        .args(["add", "--batch"])
        .arg(&file));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "names the line: {stderr}");
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    // Nothing reached Redis: not even the module.
    let client = redis::Client::open(s.redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", s.prefix))
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "nothing written: {keys:?}");

    // Unparsable JSON and a scalar are rejected the same way.
    for (lines, n) in [(&["[1, 1]", "[2, 2"][..], 2), (&["7"][..], 1)] {
        let file = batch_file(&s, "bad2.jsonl", lines);
        let out = run(s
            .cli()
            .arg("submit")
            .arg(task_module("examples"))
            .args(["add", "--batch"])
            .arg(&file));
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!("line {n} ")),
            "{}",
            describe(&out)
        );
    }
    // --batch and an ARGS_JSON positional do not mix.
    let out = run(s
        .cli()
        .arg("submit")
        .arg(task_module("examples"))
        .args(["add", "[1, 2]", "--batch"])
        .arg(&file));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// `wasq bench` through Redis at small sizes: the report has the headline
/// figures the performance issue asks for, the events-off passes and the
/// floor, every result was checked (a wrong one fails the run), and the
/// run's keys, its event level with them, are gone.
#[test]
fn bench_reports_throughput_latency_and_the_floor_then_cleans_up() {
    let redis = RedisServer::start();
    let prefix = unique_prefix("bench");
    let out = run(wasq()
        .args(["bench", "--redis", &redis.url(), "--prefix", &prefix])
        .args(["--phases", "throughput,latency", "--json"])
        .args(["--calls", "300", "--warmup", "20", "--latency-calls", "40"])
        .arg("--examples")
        .arg(task_module("examples")));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["throughput_per_s", "p50_ms", "p90_ms", "p99_ms"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report:#}"
        );
    }
    // Half the calls at each level, in the order all, off, off, all.
    assert_eq!(report["throughput"]["calls"], 300);
    assert_eq!(report["events_off"]["throughput"]["calls"], 300);
    assert_eq!(report["latency"]["n"], 40);
    assert_eq!(report["events_off"]["latency"]["n"], 40);
    assert_eq!(report["latency_floor"]["n"], 40);
    let floor = report["latency_floor"]["p50_ms"].as_f64().unwrap();
    assert!(floor > 0.0, "{report:#}");

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut con)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
