//! End to end: operating a cluster. Real `wasq host run` processes on a
//! redis-server started by the test, watched and controlled by other `wasq`
//! processes: `events`, `hosts`, `stats`, `revoke`, `queue`, `rate`, `dead`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, call};
use common::{Proc, describe, eventually, eventually_blocking, run, task_module};
use serde_json::{Value, json};
use wasq_broker::{Broker, Call, ErrorKind, State};

/// Waits for a child process to exit, up to `secs`.
fn wait_exit(p: &mut Proc, secs: u64) -> std::process::ExitStatus {
    let what = format!("{} exiting", p.name);
    eventually_blocking(
        Duration::from_secs(secs),
        &what,
        || p.child.try_wait().unwrap(),
        Option::is_some,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_hosts_are_seen_from_another_process() {
    let mut c = Cluster::start("ops_watch").await;
    let hash = c.upload("examples").await;
    c.host(&["--concurrency", "4", "--lease", "1"]);
    c.host(&["--concurrency", "4", "--lease", "1"]);
    c.wait_hosts_exactly(2, 30).await;

    // A second process follows the events from here on.
    let since = c
        .broker
        .events(None, 1, None)
        .await
        .unwrap()
        .pop()
        .map_or_else(|| "0".to_string(), |e| e.id);
    let out_path = c.path().join("events.jsonl");
    let mut watcher = Proc {
        child: c
            .cli()
            .args([
                "events", "--json", "--queue", "default", "--count", "9", "--since",
            ])
            .arg(&since)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path).unwrap())
            .stderr(std::fs::File::create(c.path().join("events.err")).unwrap())
            .spawn()
            .unwrap(),
        name: "wasq events".into(),
        log: c.path().join("events.err"),
    };
    let calls: Vec<Call> = (0..3).map(|i| call(hash, "add", json!([i, 1]))).collect();
    c.submit(&calls).await;
    for cl in &calls {
        assert_eq!(c.wait(&cl.id, 30).await.state, State::Succeeded);
    }
    assert!(wait_exit(&mut watcher, 30).success());
    let lines: Vec<Value> = std::fs::read_to_string(&out_path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 9, "{lines:#?}");
    for cl in &calls {
        let kinds: Vec<&str> = lines
            .iter()
            .filter(|e| e["call_id"] == cl.id.as_str())
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, vec!["queued", "started", "succeeded"], "{lines:#?}");
    }
    let done = lines.iter().find(|e| e["kind"] == "succeeded").unwrap();
    assert_eq!(done["task"], "add");
    assert!(done["latency_ms"].as_f64().unwrap() >= 0.0, "{done}");
    assert!(!done["host"].as_str().unwrap().is_empty());

    // Human lines too, from the start of the stream.
    let text = c.ok(&["events", "--all", "--no-follow", "--queue", "default"]);
    assert_eq!(text.lines().count(), 9, "{text}");
    assert!(
        text.contains("succeeded") && text.contains(&calls[0].id),
        "{text}"
    );

    // `wasq hosts` shows both, with what they did (stats come with heartbeats).
    let done = |hosts: &Value| -> u64 {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["done"].as_u64().unwrap())
            .sum()
    };
    let hosts = eventually(
        Duration::from_secs(10),
        "hosts reporting 3 calls done",
        || async { c.json(&["hosts", "--json"]) },
        |hosts| done(hosts) == 3,
    )
    .await;
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    for h in hosts {
        assert_eq!(h["queues"], json!(["default"]));
        assert_eq!(h["concurrency"], 4);
        assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
        assert!(h["heartbeat_age_ms"].as_u64().unwrap() < 5000, "{h}");
        assert!(h["uptime_ms"].as_u64().unwrap() > 0, "{h}");
    }
    let table = c.ok(&["hosts"]);
    assert_eq!(table.lines().count(), 3, "{table}");

    // A host killed with SIGKILL drops out within its lease (1 s) or so.
    let log = c.procs[0].log();
    let victim_id = hosts
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .find(|id| log.contains(id.as_str()))
        .unwrap_or_else(|| panic!("host0 logs none of the listed ids\n{log}"));
    c.procs[0].kill9();
    let ids = |hosts: &Value| -> Vec<String> {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    };
    let left = eventually(
        Duration::from_secs(5),
        &format!("{victim_id} dropping out of `wasq hosts`"),
        || async { c.json(&["hosts", "--json"]) },
        |hosts| !ids(hosts).contains(&victim_id),
    )
    .await;
    assert_eq!(ids(&left).len(), 1);
    // ...and its end is an event.
    let offline = c.ok(&[
        "events",
        "--json",
        "--all",
        "--no-follow",
        "--kind",
        "host_offline",
    ]);
    let offline: Vec<Value> = offline
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(offline.len(), 1, "{offline:#?}");
    assert_eq!(offline[0]["host"], victim_id.as_str());
    assert_eq!(offline[0]["error_kind"], "lease_expired");
}

/// The kinds of the events of `id`, as `wasq events --json --all --no-follow` prints them.
fn kinds_of(c: &Cluster, id: &str) -> Vec<String> {
    c.ok(&["events", "--json", "--all", "--no-follow"])
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["call_id"] == id)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_level_holds_for_running_hosts_and_clients() {
    let mut c = Cluster::start("ops_level").await;
    let hash = c.upload("examples").await;
    c.host(&["--concurrency", "2"]);
    c.wait_hosts_exactly(1, 30).await;
    let module = format!("sha256:{hash}");
    let run_one = |c: &Cluster| {
        let env = c.json(&["submit", &module, "add", "[1, 2]", "--wait", "--json"]);
        assert_eq!(env["state"], "succeeded", "{env}");
        env["id"].as_str().unwrap().to_string()
    };
    assert_eq!(c.ok(&["events", "--level"]).trim(), "all");

    // The running host and new clients follow a level set from elsewhere.
    assert_eq!(
        c.ok(&["events", "--set-level", "off"]).trim(),
        "events: off (was all)"
    );
    let quiet = run_one(&c);
    assert_eq!(
        c.ok(&["events", "--set-level", "outcomes"]).trim(),
        "events: outcomes (was off)"
    );
    let outcome = run_one(&c);
    let follow = run(c.cli().args(["events", "--all", "--no-follow"]));
    assert!(
        String::from_utf8_lossy(&follow.stderr).contains("the event level is outcomes"),
        "{}",
        describe(&follow)
    );
    assert!(kinds_of(&c, &quiet).is_empty());
    assert_eq!(kinds_of(&c, &outcome), vec!["succeeded"]);
    // Statistics count both.
    let per_minute = c.stats("default")["throughput_1m"].as_f64().unwrap() * 60.0;
    assert!((per_minute - 2.0).abs() < 1e-6, "{per_minute}");

    // A level that is not one is a usage error and changes nothing.
    let bad = run(c.cli().args(["events", "--set-level", "loud"]));
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("outcomes"));
    assert_eq!(c.ok(&["events", "--level"]).trim(), "outcomes");

    // Garbage at the level's key: reading it says so, calls go on with
    // every event recorded, and setting a level repairs it.
    let key = format!("{}:events:level", c.prefix);
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut con)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("level")
        .arg("off")
        .query_async(&mut con)
        .await
        .unwrap();
    let unreadable = run(c.cli().args(["events", "--level"]));
    assert_eq!(
        unreadable.status.code(),
        Some(2),
        "{}",
        describe(&unreadable)
    );
    assert!(
        String::from_utf8_lossy(&unreadable.stderr).contains("not a level"),
        "{}",
        describe(&unreadable)
    );
    let loud = run_one(&c);
    assert_eq!(kinds_of(&c, &loud), vec!["queued", "started", "succeeded"]);
    assert!(
        c.ok(&["events", "--set-level", "all"])
            .starts_with("events: all (was unreadable"),
    );
    assert_eq!(c.ok(&["events", "--level"]).trim(), "all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_calls_end_revoked_whether_queued_sleeping_or_spinning() {
    let mut c = Cluster::start("ops_revoke").await;
    let examples = c.upload("examples").await;
    let hostile = c.upload("hostile").await;
    c.host(&["--concurrency", "2"]);
    c.wait_hosts_exactly(1, 30).await;

    // Two long calls fill the host; a third waits in the queue.
    let sleeping = call(examples, "long_processing", json!(["nap", 30.0]));
    let spinning = call(hostile, "spin", json!([]));
    let queued = call(examples, "add", json!([1, 2]));
    c.submit(&[sleeping.clone(), spinning.clone()]).await;
    c.wait_state(&sleeping.id, State::Running, 30).await;
    c.wait_state(&spinning.id, State::Running, 30).await;
    c.submit(std::slice::from_ref(&queued)).await;
    assert_eq!(c.state(&queued.id).await, State::Queued);

    // Revoked while queued: final at once; it never starts.
    let out = c.ok(&["revoke", &queued.id]);
    assert!(out.contains("revoked"), "{out}");
    let env = c.wait(&queued.id, 5).await;
    assert_eq!(env.state, State::Revoked);

    // Revoked while running: the host interrupts them, sleeping or busy.
    let t0 = Instant::now();
    c.ok(&["revoke", &sleeping.id]);
    c.ok(&["revoke", &spinning.id]);
    for id in [&sleeping.id, &spinning.id] {
        let env = c.wait(id, 10).await;
        assert_eq!(env.state, State::Revoked, "{env:?}");
        assert_eq!(env.error.as_ref().unwrap().kind, ErrorKind::Revoked);
    }
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // The host is free again; the revoked queued call was claimed and skipped.
    let after = call(examples, "add", json!([2, 2]));
    c.submit(std::slice::from_ref(&after)).await;
    assert_eq!(c.wait(&after.id, 30).await.result, json!(4));
    assert_eq!(c.starts_of(&queued.id), 0);
    assert_eq!(c.state(&queued.id).await, State::Revoked);
    // Each ended with exactly one final event.
    let events = c.ok(&["events", "--json", "--all", "--no-follow"]);
    for id in [&queued.id, &sleeping.id, &spinning.id] {
        let finals: Vec<&str> = events
            .lines()
            .filter(|l| l.contains(id.as_str()))
            .filter(|l| l.contains(r#""kind":"revoked""#))
            .collect();
        assert_eq!(finals.len(), 1, "{id}: {events}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_survives_host_restarts() {
    let mut c = Cluster::start("ops_revoke_restart").await;
    let hash = c.upload("examples").await;

    // Revoked while no host runs at all: a host started later never runs it.
    let waiting = call(hash, "add", json!([1, 1]));
    c.submit(std::slice::from_ref(&waiting)).await;
    c.ok(&["revoke", &waiting.id]);

    // Revoked while its host is dead (killed, not yet noticed): the host
    // that reclaims it does not run it either.
    let a = c.host(&["--concurrency", "1", "--lease", "1"]);
    c.wait_hosts_exactly(1, 30).await;
    let running = call(hash, "long_processing", json!(["doomed", 30.0]));
    c.submit(std::slice::from_ref(&running)).await;
    c.wait_state(&running.id, State::Running, 30).await;
    c.procs[a].kill9();
    c.ok(&["revoke", &running.id]);

    let b = c.host(&["--concurrency", "1", "--lease", "1"]);
    let env = c.wait(&running.id, 30).await;
    assert_eq!(env.state, State::Revoked);
    let marker = call(hash, "add", json!([3, 3]));
    c.submit(std::slice::from_ref(&marker)).await;
    assert_eq!(c.wait(&marker.id, 30).await.result, json!(6));
    // b reclaims the dead host's entry (after a lease) and skips it.
    eventually(
        Duration::from_secs(30),
        "the dead host's entry done",
        || async { c.stats("default")["pending"].clone() },
        |pending| *pending == 0,
    )
    .await;
    assert_eq!(c.state(&waiting.id).await, State::Revoked);
    assert_eq!(c.starts_of(&waiting.id), 0, "{}", c.procs[b].log());
    // The claim itself marks a call running, so host a may have been killed
    // before it logged the start; what matters is that b never ran it.
    assert!(c.starts_of(&running.id) <= 1, "only on the host that died");
    assert!(
        !c.procs[b]
            .log()
            .lines()
            .any(|l| l.contains("call started") && l.contains(running.id.as_str())),
        "the host that reclaimed it ran it: {}",
        c.procs[b].log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_pause_resume_and_purge() {
    let mut c = Cluster::start("ops_queue").await;
    let hash = c.upload("examples").await;
    c.host(&["--concurrency", "4"]);
    c.wait_hosts_exactly(1, 30).await;

    let out = c.ok(&["queue", "pause", "default"]);
    assert!(out.contains("paused"), "{out}");
    let calls: Vec<Call> = (0..3).map(|i| call(hash, "add", json!([i, i]))).collect();
    c.submit(&calls).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for cl in &calls {
        assert_eq!(c.state(&cl.id).await, State::Queued);
    }
    let s = c.stats("default");
    assert_eq!(
        (s["paused"].clone(), s["depth"].clone()),
        (json!(true), json!(3)),
        "{s}"
    );
    assert!(c.ok(&["stats"]).contains("paused"));

    c.ok(&["queue", "resume", "default"]);
    for (i, cl) in calls.iter().enumerate() {
        assert_eq!(c.wait(&cl.id, 30).await.result, json!(2 * i));
    }
    let s = c.stats("default");
    assert_eq!(s["paused"], false);
    assert_eq!(s["depth"], 0);
    assert!(s["throughput_1m"].as_f64().unwrap() > 0.0, "{s}");
    assert!(s["p50_ms"].as_f64().is_some(), "{s}");

    // Purge: refused without --yes off a terminal; then every waiting call ends revoked.
    c.ok(&["queue", "pause", "default"]);
    let calls: Vec<Call> = (0..3).map(|i| call(hash, "add", json!([i, 0]))).collect();
    c.submit(&calls).await;
    let out = run(c.cli().args(["queue", "purge", "default"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));
    assert_eq!(c.state(&calls[0].id).await, State::Queued);
    let out = c.ok(&["queue", "purge", "default", "--yes"]);
    assert!(out.contains("purged 3"), "{out}");
    for cl in &calls {
        let env = c.wait(&cl.id, 5).await;
        assert_eq!(env.state, State::Revoked);
        assert_eq!(env.error.unwrap().message, "purged");
    }
    c.ok(&["queue", "resume", "default"]);
    let after = call(hash, "add", json!([5, 5]));
    c.submit(std::slice::from_ref(&after)).await;
    assert_eq!(c.wait(&after.id, 30).await.result, json!(10));
    for cl in &calls {
        assert_eq!(c.starts_of(&cl.id), 0);
    }
    let out = run(c.cli().args(["queue", "pause", "no:such"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_retried_and_dropped() {
    let mut c = Cluster::start("ops_dead").await;
    let hash = c.upload("examples").await;

    // A lost call: its host is killed, and the delivery limit is 1.
    let a = c.host(&[
        "--concurrency",
        "1",
        "--lease",
        "1",
        "--max-deliveries",
        "1",
    ]);
    c.wait_hosts_exactly(1, 30).await;
    let lost = call(hash, "long_processing", json!(["once", 3.0]));
    c.submit(std::slice::from_ref(&lost)).await;
    c.wait_state(&lost.id, State::Running, 30).await;
    c.procs[a].kill9();
    c.host(&[
        "--concurrency",
        "2",
        "--lease",
        "1",
        "--max-deliveries",
        "1",
    ]);
    let env = c.wait(&lost.id, 30).await;
    assert_eq!(env.error.as_ref().unwrap().kind, ErrorKind::Lost, "{env:?}");

    // And garbage in the work stream.
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{}:{{q:default}}:stream", c.prefix))
        .arg("*")
        .arg("call")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let dead = eventually(
        Duration::from_secs(30),
        "two dead letters",
        || async { c.json(&["dead", "ls", "--json"]) },
        |dead| dead.as_array().unwrap().len() == 2,
    )
    .await;
    let dead = dead.as_array().unwrap();
    let lost_letter = dead.iter().find(|d| d["id"] == lost.id.as_str()).unwrap();
    let garbage = dead.iter().find(|d| d["id"] == "").unwrap();
    assert_eq!(lost_letter["error"]["kind"], "lost");
    assert_eq!(lost_letter["queue"], "default");
    assert!(garbage["error"].is_null());
    assert_eq!(c.stats("default")["dead"], 2);
    let table = c.ok(&["dead", "ls"]);
    assert!(
        table.contains(&lost.id) && table.contains("lost"),
        "{table}"
    );

    // Garbage cannot be retried; the lost call can, and now runs to the end.
    let out = run(c
        .cli()
        .args(["dead", "retry", garbage["entry_id"].as_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = c.ok(&["dead", "retry", lost_letter["entry_id"].as_str().unwrap()]);
    assert!(out.contains("retried"), "{out}");
    let env = c.wait(&lost.id, 60).await;
    assert_eq!(env.state, State::Succeeded, "{env:?}");
    assert_eq!(env.attempt, 1);
    let out = run(c
        .cli()
        .args(["dead", "retry", lost_letter["entry_id"].as_str().unwrap()]));
    assert_eq!(out.status.code(), Some(1), "only once: {}", describe(&out));

    // Drop: all at once, with --yes off a terminal.
    let out = run(c.cli().args(["dead", "drop", "--all"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let out = c.ok(&["dead", "drop", "--all", "--yes"]);
    assert!(out.contains("dropped 1"), "{out}");
    assert_eq!(c.json(&["dead", "ls", "--json"]), json!([]));
    assert_eq!(c.stats("default")["dead"], 0);
    let out = run(c.cli().args(["dead", "drop", "nonsense"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_two_hosts() {
    let mut c = Cluster::start("ops_rate").await;
    let hash = c.upload("examples").await;
    c.host(&["--concurrency", "8"]);
    c.host(&["--concurrency", "8"]);
    c.wait_hosts_exactly(2, 30).await;

    let out = c.ok(&["queue", "rate", "default", "5/s"]);
    assert!(out.contains("5/s"), "{out}");
    let limits = c.json(&["rate", "ls", "--json"]);
    assert_eq!(limits[0]["scope"], "queue");
    assert_eq!(limits[0]["rate"], "5/s");
    assert_eq!(c.stats("default")["rate"]["per_second"], 5.0);

    let calls: Vec<Call> = (0..100).map(|i| call(hash, "add", json!([i, 0]))).collect();
    c.submit(&calls).await;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut finished = 0;
    for cl in &calls {
        if c.state(&cl.id).await == State::Succeeded {
            finished += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // 5 a second plus a burst of 5: about 20 in 3 s, never 100.
    let most = (5.0 * secs + 5.0 + 3.0) as usize;
    assert!(
        (8..=most).contains(&finished),
        "{finished} calls finished in {secs:.1} s under 5/s"
    );

    // A module limit shows in the list; lifting both lets the rest run.
    let out = run(c
        .cli()
        .args(["module", "push"])
        .arg(task_module("examples"))
        .args(["--tag", "examples"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    c.ok(&["rate", "module", "examples", "50/s"]);
    let limits = c.json(&["rate", "ls", "--json"]);
    assert_eq!(limits.as_array().unwrap().len(), 2, "{limits:#}");
    assert!(limits.to_string().contains(&hash.to_hex()));
    c.ok(&["queue", "rate", "default", "off"]);
    c.ok(&["rate", "module", &format!("sha256:{hash}"), "off"]);
    assert_eq!(c.json(&["rate", "ls", "--json"]), json!([]));
    for cl in &calls {
        assert_eq!(c.wait(&cl.id, 60).await.state, State::Succeeded);
    }
    let out = run(c.cli().args(["queue", "rate", "default", "fast"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}
