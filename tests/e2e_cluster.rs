//! End to end: a redis-server started by the test, several real `wasq host
//! run` processes, calls submitted by the CLI and by the Rust API, every
//! result checked. Hosts are killed, Redis is restarted, hosts are stopped.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, call};
use common::{describe, envelope, eventually, run, task_module, wasq};
use serde_json::json;
use wasq_broker::testing::RedisServer;
use wasq_broker::{Broker, Call, ModuleHash, State};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_runs_calls_from_the_cli_and_the_rust_api() {
    let mut c = Cluster::start("cluster").await;
    for _ in 0..3 {
        c.host(&["--concurrency", "8"]);
    }
    c.wait_hosts(3).await;

    // Upload and name the module with the CLI.
    let out = run(c
        .cli()
        .args(["module", "push"])
        .arg(task_module("examples"))
        .args(["--tag", "examples@1.0"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let hash: ModuleHash = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let out = run(c.cli().args(["module", "ls", "--json"]));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(listed.to_string().contains(&hash.to_hex()), "{listed}");

    // By name, with --wait.
    let out = run(c.cli().args([
        "submit",
        "examples@1.0",
        "add",
        "[4, 5]",
        "--wait",
        "--json",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let env = envelope(&out);
    assert_eq!(env["result"], json!(9));
    assert!(env["host"].as_str().unwrap().contains('/'));
    // By hash and by path.
    let out = run(c.cli().args([
        "submit",
        &format!("sha256:{hash}"),
        "fib",
        "[10]",
        "--wait",
        "--json",
    ]));
    assert_eq!(envelope(&out)["result"], json!(55), "{}", describe(&out));
    let out = run(c
        .cli()
        .arg("submit")
        .arg(task_module("examples"))
        .args(["add", "[1, 1]", "--wait"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2",
        "{}",
        describe(&out)
    );
    // A name that does not resolve.
    let out = run(c.cli().args(["submit", "nosuchmodule", "add", "[1, 1]"]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("module_not_found"),
        "{}",
        describe(&out)
    );
    // Args that are not an array never reach the queue.
    let out = run(c.cli().args(["submit", "examples", "add", "{\"x\": 1}"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));

    // Many calls from the CLI without waiting, then collected by id.
    let mut ids = Vec::new();
    for i in 0..20 {
        let out = run(c
            .cli()
            .args(["submit", "examples", "add", &format!("[{i}, {i}]")]));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        ids.push((
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            2 * i,
        ));
    }
    for (id, want) in &ids {
        let out = run(c.cli().args(["result", id, "--wait", "--json"]));
        assert_eq!(envelope(&out)["result"], json!(want), "{}", describe(&out));
        let out = run(c.cli().args(["status", id]));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "succeeded");
    }

    // Many more from the Rust API in one round trip.
    let calls: Vec<Call> = (0..300).map(|i| call(hash, "add", json!([i, 1]))).collect();
    c.broker.submit(&calls, None).await.unwrap();
    let mut hosts_seen = std::collections::BTreeSet::new();
    for (i, cl) in calls.iter().enumerate() {
        let env = c.wait(&cl.id, 60).await;
        assert_eq!(env.result, json!(i + 1), "{env:?}");
        hosts_seen.insert(env.host.clone());
    }
    assert!(
        hosts_seen.len() >= 2,
        "work spread over hosts: {hosts_seen:?}"
    );
    for cl in &calls {
        assert_eq!(c.starts_of(&cl.id), 1, "{} ran exactly once", cl.id);
    }

    // Unknown ids are told apart from queued ones.
    let out = run(c.cli().args(["result", "01NOSUCHCALL0000000000000"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown call id"));
    let out = run(c.cli().args(["status", "01NOSUCHCALL0000000000000"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hosts_calls_finish_on_another_host() {
    let mut c = Cluster::start("kill9").await;
    let hash = c.upload("examples").await;
    let a = c.host(&["--concurrency", "4", "--lease", "1"]);
    c.wait_hosts(1).await;
    let calls: Vec<Call> = (0..4)
        .map(|i| call(hash, "long_processing", json!([format!("job{i}"), 5.0])))
        .collect();
    c.broker.submit(&calls, None).await.unwrap();
    for cl in &calls {
        c.wait_state(&cl.id, State::Running, 30).await;
    }
    c.procs[a].kill9();
    let b = c.host(&["--concurrency", "4", "--lease", "1"]);
    for cl in &calls {
        let env = c.wait(&cl.id, 60).await;
        assert_eq!(env.state, State::Succeeded, "{env:?}");
        assert!(
            c.procs[b].log().contains(&cl.id),
            "finished on the new host"
        );
        // Once on the killed host (that attempt died), once on the new one.
        assert_eq!(c.starts_of(&cl.id), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_longer_than_the_lease_on_a_live_host_runs_once() {
    let mut c = Cluster::start("longcall").await;
    let hash = c.upload("examples").await;
    c.host(&["--lease", "0.6", "--concurrency", "2"]);
    c.host(&["--lease", "0.6", "--concurrency", "2"]);
    c.wait_hosts(2).await;
    let cl = call(hash, "long_processing", json!(["slow", 3.0]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    let env = c.wait(&cl.id, 30).await;
    assert_eq!(env.state, State::Succeeded, "{env:?}");
    assert_eq!(c.starts_of(&cl.id), 1, "ran once despite lasting 5 leases");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_ride_out_a_redis_restart() {
    let mut c = Cluster::start("restart").await;
    let hash = c.upload("examples").await;
    c.host(&["--concurrency", "4"]);
    c.host(&["--concurrency", "4"]);
    c.wait_hosts(2).await;
    let calls: Vec<Call> = (0..40)
        .map(|i| call(hash, "long_processing", json!([format!("r{i}"), 0.1])))
        .collect();
    c.broker.submit(&calls, None).await.unwrap();
    c.wait_state(&calls[0].id, State::Succeeded, 30).await;
    let last = c.broker.status(&calls[39].id).await.unwrap().unwrap();
    assert!(
        !last.state.is_final(),
        "the outage must hit work in progress"
    );
    c.redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.redis.restart();
    for cl in &calls {
        let env = c.wait(&cl.id, 90).await;
        assert_eq!(env.state, State::Succeeded, "{env:?}");
    }
    // And new work still flows.
    let cl = call(hash, "add", json!([2, 2]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    assert_eq!(c.wait(&cl.id, 30).await.result, json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_countdown_and_result_ttl() {
    let mut c = Cluster::start("retries").await;
    c.upload("examples").await;
    c.host(&["--concurrency", "4", "--result-ttl", "2"]);
    c.wait_hosts(1).await;
    let examples = task_module("examples");

    // Always failing: retried, then failed with the last attempt's error.
    let out = run(c.cli().arg("submit").arg(&examples).args([
        "process_file",
        r#"["f.txt", "a b", 100]"#,
        "--retries",
        "2",
        "--wait",
        "--json",
    ]));
    let env = envelope(&out);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(env["error"]["kind"], "task_error");
    assert_eq!(env["attempt"], 3, "{env:#}");
    // Never failing: one attempt.
    let out = run(c.cli().arg("submit").arg(&examples).args([
        "process_file",
        r#"["f.txt", "a b", 0]"#,
        "--retries",
        "2",
        "--wait",
        "--json",
    ]));
    assert_eq!(envelope(&out)["attempt"], 1, "{}", describe(&out));
    // Failing without asking for retries: one attempt.
    let out = run(c.cli().arg("submit").arg(&examples).args([
        "process_file",
        r#"["f.txt", "a b", 100]"#,
        "--wait",
        "--json",
    ]));
    assert_eq!(envelope(&out)["attempt"], 1, "{}", describe(&out));

    // Countdown: queued first, not run before its time.
    let started = Instant::now();
    let out =
        run(c
            .cli()
            .arg("submit")
            .arg(&examples)
            .args(["add", "[1, 2]", "--countdown", "1.5"]));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = run(c.cli().args(["status", &id]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "queued",
        "{}",
        describe(&out)
    );
    let env = c.wait(&id, 30).await;
    assert_eq!(env.result, json!(3));
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Result TTL: the result is there, then it expires and the id is unknown.
    let out = run(c.cli().args(["result", &id, "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = eventually(
        Duration::from_secs(20),
        "the result expiring",
        || async { run(c.cli().args(["result", &id])) },
        |out| out.status.code() == Some(2),
    )
    .await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown call id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_and_a_tampered_module() {
    let mut c = Cluster::start("garbage").await;
    let hash = c.upload("examples").await;
    c.host(&["--concurrency", "2"]);
    c.wait_hosts(1).await;
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();

    // Garbage entries in the work stream: dead-lettered, the host goes on.
    let stream = format!("{}:{{q:default}}:stream", c.prefix);
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("call")
        .arg("{not json")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("nothing")
        .arg("here")
        .query_async(&mut con)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("call")
        .arg(r#"{"id":"x","module":"zz"}"#)
        .query_async(&mut con)
        .await
        .unwrap();
    let cl = call(hash, "add", json!([20, 22]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    assert_eq!(c.wait(&cl.id, 30).await.result, json!(42));
    let dead = c.broker.dead_letters(10).await.unwrap();
    assert!(dead.len() >= 3, "garbage dead-lettered: {dead:?}");

    // A tampered module: stored bytes no longer hash to their key.
    let bytes = std::fs::read(task_module("hostile")).unwrap();
    let (victim, _) = c.broker.put_module(&bytes).await.unwrap();
    let key = format!("{}:module:{}", c.prefix, victim.to_hex());
    let mut tampered = bytes.clone();
    let n = tampered.len();
    tampered[n - 1] ^= 0xff;
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(tampered)
        .query_async(&mut con)
        .await
        .unwrap();
    let cl = call(victim, "args", json!([]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    let env = c.wait(&cl.id, 30).await;
    assert_eq!(
        env.error.as_ref().map(|e| e.kind),
        Some(wasq_broker::ErrorKind::Integrity),
        "{env:?}"
    );

    // A module that is not stored at all.
    let missing = ModuleHash::of(b"never uploaded");
    let cl = call(missing, "add", json!([1, 2]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    let env = c.wait(&cl.id, 30).await;
    assert_eq!(
        env.error.as_ref().map(|e| e.kind),
        Some(wasq_broker::ErrorKind::ModuleNotFound),
        "{env:?}"
    );

    // The host is still healthy and working.
    let cl = call(hash, "add", json!([1, 1]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    assert_eq!(c.wait(&cl.id, 30).await.result, json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_or_hands_back_calls() {
    let mut c = Cluster::start("shutdown").await;
    let hash = c.upload("examples").await;

    // A long grace: running calls finish on the stopping host.
    let a = c.host(&["--concurrency", "2", "--grace", "20"]);
    c.wait_hosts(1).await;
    let calls: Vec<Call> = (0..2)
        .map(|i| call(hash, "long_processing", json!([format!("g{i}"), 1.0])))
        .collect();
    c.broker.submit(&calls, None).await.unwrap();
    for cl in &calls {
        c.wait_state(&cl.id, State::Running, 30).await;
    }
    let status = c.procs[a].terminate();
    assert!(status.success(), "host exits 0 on SIGTERM: {status:?}");
    for cl in &calls {
        let env = c.broker.status(&cl.id).await.unwrap().unwrap();
        assert_eq!(
            env.state,
            State::Succeeded,
            "finished before exiting: {env:?}"
        );
    }

    // A short grace: what cannot finish is handed back and another host runs it.
    let b = c.host(&["--concurrency", "2", "--grace", "0.2"]);
    c.wait_hosts(1).await;
    let calls: Vec<Call> = (0..2)
        .map(|i| call(hash, "long_processing", json!([format!("h{i}"), 2.0])))
        .collect();
    c.broker.submit(&calls, None).await.unwrap();
    for cl in &calls {
        c.wait_state(&cl.id, State::Running, 30).await;
    }
    let stopped_at = Instant::now();
    let status = c.procs[b].terminate();
    assert!(status.success(), "host exits 0 on SIGTERM: {status:?}");
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    assert!(
        c.procs[b].log().contains("released"),
        "{}",
        c.procs[b].log()
    );
    let d = c.host(&["--concurrency", "2"]);
    for cl in &calls {
        let env = c.wait(&cl.id, 30).await;
        assert_eq!(env.state, State::Succeeded, "{env:?}");
        assert!(c.procs[d].log().contains(&cl.id));
    }
}

#[test]
fn the_demo_runs_on_the_embedded_broker_and_on_redis() {
    let examples = task_module("examples");
    let out = run(wasq().args(["demo", "--module"]).arg(&examples));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("add[4,5] = 9"), "{text}");
    assert!(text.contains("every call behaved as expected"), "{text}");

    let redis = RedisServer::start();
    let out = run(wasq()
        .args(["demo", "--redis", &redis.url(), "--module"])
        .arg(&examples));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("every call behaved as expected"));
}

#[test]
fn an_unreachable_broker_exits_3() {
    // A port nothing listens on: bind, note, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let out = run(wasq().args([
        "submit",
        "--redis",
        &url,
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "add",
    ]));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let out = run(wasq().args(["status", "--redis", &url, "01ABC"]));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

/// `GET /health` on a host's health port: the status code.
fn health(port: u16) -> Option<u16> {
    use std::io::{Read, Write};
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    sock.write_all(format!("GET /health HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
        .ok()?;
    let mut reply = String::new();
    sock.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_false_while_the_host_cannot_consume() {
    let mut c = Cluster::start("health").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    c.host(&[
        "--health",
        &format!("127.0.0.1:{port}"),
        "--health-stall",
        "1.5",
        "--lease",
        "0.9",
    ]);
    c.wait_hosts(1).await;
    let until = |want: u16, secs: u64| async move {
        eventually(
            Duration::from_secs(secs),
            &format!("/health answering {want}"),
            || async { health(port) },
            |got| *got == Some(want),
        )
        .await;
    };
    until(200, 10).await;
    // Redis stops answering for 6 s: the host can neither claim nor heartbeat.
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(6000)
        .arg("ALL")
        .query_async(&mut con)
        .await
        .unwrap();
    until(503, 10).await;
    until(200, 15).await;
    // And it consumes again.
    let hash = c.upload("examples").await;
    let cl = call(hash, "add", json!([3, 4]));
    c.broker
        .submit(std::slice::from_ref(&cl), None)
        .await
        .unwrap();
    assert_eq!(c.wait(&cl.id, 30).await.result, json!(7));
}

/// Every HTTP endpoint checks the Host header (DNS rebinding) and, when
/// given one, a token; the health check is no exception.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_check_host_and_token() {
    let mut c = Cluster::start("http_guard").await;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (health_addr, metrics_addr) = (free(), free());
    c.host(&[
        "--health",
        &health_addr.to_string(),
        "--metrics",
        &metrics_addr.to_string(),
        "--token",
        "s3cret",
        "--allow-host",
        "wasq.internal",
    ]);
    c.wait_hosts(1).await;
    let bearer = "Authorization: Bearer s3cret";
    for (addr, path) in [(health_addr, "/health"), (metrics_addr, "/metrics")] {
        let host = addr.to_string();
        // Wait until it listens (the host binds it while starting).
        eventually(
            Duration::from_secs(10),
            &format!("{path} listening"),
            || async { std::net::TcpStream::connect(addr).is_ok() },
            |ok| *ok,
        )
        .await;
        let (status, _, _) = common::http_request(addr, path, &host, &[bearer]);
        assert_eq!(status, 200, "{path} with the token");
        let (status, _, _) = common::http_request(addr, path, "wasq.internal:80", &[bearer]);
        assert_eq!(status, 200, "{path} on an allowed name");
        let (status, head, _) = common::http_request(addr, path, &host, &[]);
        assert_eq!(status, 401, "{path} without the token");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        let (status, _, _) =
            common::http_request(addr, path, &host, &["Authorization: Bearer wrong"]);
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _, body) = common::http_request(addr, path, "evil.example:80", &[bearer]);
        assert_eq!(status, 403, "{path} for another Host");
        assert!(body.contains("--allow-host"), "{body}");
    }
}
