//! End to end: calls straight to real `wasq serve` processes over HTTP, no
//! broker: uploads, every limit and hostile modules through the HTTP path,
//! tokens and the Host check, 429 when every slot is busy, a client that
//! disconnects mid-call, malformed and oversized bodies, concurrent uploads;
//! `wasq call`; names from a module store (`serve --redis`); `host run
//! --listen` doing both jobs; HTTPS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::cluster::Cluster;
use common::{
    Proc, describe, eventually, free_port, http_send, run, task_module, wait_listening, wasq,
};
use serde_json::{Value, json};
use wasq_broker::{CallLimits, DirectClient, ModuleHash};

/// A `wasq serve` on a port the system picks, with `extra` flags; answers
/// the address it logged once it listens.
fn serve(dir: &Path, name: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let mut cmd = wasq();
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra);
    let proc = Proc::spawn(cmd, name, dir.join(format!("{name}.log")));
    let addr = logged_address(&proc);
    (proc, addr)
}

/// The address in a host's "answering calls at SCHEME://ADDR/..." line.
fn logged_address(proc: &Proc) -> SocketAddr {
    let rest = proc.logged("answering calls at ");
    let addr = rest.split("://").nth(1).unwrap().split('/').next().unwrap();
    addr.parse().unwrap()
}

fn json_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// `PUT /v1/modules` with a task module; answers its `sha256:HEX`.
fn upload(addr: SocketAddr, module: &str, headers: &[&str]) -> String {
    let bytes = std::fs::read(task_module(module)).unwrap();
    let (status, _, body) = http_send(addr, "PUT", "/v1/modules", headers, &bytes);
    assert!(status == 201 || status == 200, "{status} {body}");
    let reply = json_of(&body);
    let hash = reply["module"].as_str().unwrap().to_string();
    assert_eq!(hash, format!("sha256:{}", ModuleHash::of(&bytes)));
    hash
}

/// `POST /v1/call/module/task?query` with `args`: (status, envelope).
fn call(addr: SocketAddr, module: &str, task: &str, query: &str, args: &str) -> (u16, Value) {
    let path = format!("/v1/call/{module}/{task}{query}");
    let (status, _, body) = http_send(addr, "POST", &path, &[], args.as_bytes());
    (status, json_of(&body))
}

fn kind(envelope: &Value) -> &str {
    envelope["error"]["kind"].as_str().unwrap_or("")
}

#[test]
fn calls_limits_and_hostile_modules_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(
        dir.path(),
        "serve",
        &[
            "--fuel",
            "50000000",
            "--memory",
            "67108864",
            "--max-output",
            "4096",
        ],
    );
    let examples = upload(addr, "examples", &[]);
    let hostile = upload(addr, "hostile", &[]);

    // A call answers the envelope.
    let (status, env) = call(addr, &examples, "add", "", "[4, 5]");
    assert_eq!(
        (status, env["state"].as_str(), &env["result"]),
        (200, Some("succeeded"), &json!(9))
    );
    assert!(env["id"].as_str().is_some_and(|id| !id.is_empty()));

    // Fuel: obeyed, violated, and never above the server's maximum.
    assert_eq!(
        call(addr, &examples, "fib", "?fuel=10000000", "[20]").1["result"],
        json!(6765)
    );
    assert_eq!(
        kind(&call(addr, &examples, "fib", "?fuel=1000", "[20]").1),
        "fuel_exhausted"
    );
    let (_, env) = call(addr, &hostile, "spin", "", "[]");
    assert_eq!(kind(&env), "fuel_exhausted");
    assert_eq!(env["fuel_used"], json!(50_000_000));
    let (status, env) = call(addr, &hostile, "spin", "?fuel=1000000000000", "[]");
    assert_eq!((status, kind(&env)), (400, "bad_input"));
    let message = env["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("fuel of 1000000000000 is over the limit of 50000000"),
        "{message}"
    );
    // Wall time, as a query parameter or a header.
    let (_, env) = call(addr, &hostile, "sleep_forever", "?timeout=0.2", "[]");
    assert_eq!(kind(&env), "timeout");
    let (status, _, body) = http_send(
        addr,
        "POST",
        &format!("/v1/call/{hostile}/sleep_forever"),
        &["wasq-timeout: 0.2"],
        b"[]",
    );
    assert_eq!((status, kind(&json_of(&body))), (200, "timeout"));
    // Memory (the server's 64 MiB) and output (its 4 KiB): each obeyed, then
    // violated.
    for (task, within, past, violated) in [
        ("alloc", "[1048576]", "[134217728]", "memory_limit"),
        ("big_output", "[1000]", "[100000]", "output_limit"),
    ] {
        let (_, env) = call(addr, &hostile, task, "", within);
        assert_eq!(env["state"], json!("succeeded"), "{task}: {env}");
        assert_eq!(kind(&call(addr, &hostile, task, "", past).1), violated);
    }
    assert_eq!(
        kind(&call(addr, &hostile, "recurse", "", "[100000000]").1),
        "trap"
    );
    assert_eq!(
        kind(&call(addr, &hostile, "print_flood", "", "[1000000]").1),
        "output_limit"
    );

    // Bad requests: a clear 4xx with the error kind.
    let (status, env) = call(addr, &examples, "add", "", "[4,");
    assert_eq!((status, kind(&env)), (400, "bad_input"));
    assert!(
        env["error"]["message"].as_str().unwrap().contains("column"),
        "{env}"
    );
    assert_eq!(call(addr, &examples, "add", "", "{\"a\": 1}").0, 400);
    assert_eq!(call(addr, &examples, "add", "?fuel=lots", "[1, 2]").0, 400);
    assert_eq!(call(addr, &examples, "add", "?timeout=-1", "[1, 2]").0, 400);
    assert_eq!(call(addr, &examples, "no-such", "", "[]").0, 400);
    let (status, env) = call(addr, &examples, "missing", "", "[]");
    assert_eq!((status, kind(&env)), (200, "task_not_found"));
    let unknown = format!("sha256:{}", ModuleHash::of(b"not uploaded"));
    let (status, env) = call(addr, &unknown, "add", "", "[]");
    assert_eq!((status, kind(&env)), (404, "module_not_found"));
    let (status, env) = call(addr, "some-name", "add", "", "[]");
    assert_eq!((status, kind(&env)), (404, "module_not_found"));
    // Args over the server's limit (1 MiB by default).
    let big = format!("[\"{}\"]", "x".repeat(2 << 20));
    let (status, env) = call(addr, &examples, "add", "", &big);
    assert_eq!((status, kind(&env)), (413, "bad_input"));

    // Uploads: a module that is not one, a hash that does not match, and
    // concurrent uploads of one module.
    let (status, _, body) = http_send(addr, "PUT", "/v1/modules", &[], b"\0asm garbage");
    assert_eq!((status, kind(&json_of(&body))), (422, "invalid_module"));
    let wrong = format!("/v1/modules?sha256={unknown}");
    let bytes = std::fs::read(task_module("examples")).unwrap();
    let (status, _, body) = http_send(addr, "PUT", &wrong, &[], &bytes);
    assert_eq!((status, kind(&json_of(&body))), (400, "integrity"));
    let threads: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || upload(addr, "hostile", &[])))
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), hostile);
    }
    assert_eq!(
        call(addr, &hostile, "args", "", "[]").1["result"],
        json!(["args"])
    );
}

#[test]
fn oversized_uploads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(dir.path(), "small", &["--max-module", "10000"]);
    let bytes = std::fs::read(task_module("examples")).unwrap();
    let (status, _, body) = http_send(addr, "PUT", "/v1/modules", &[], &bytes);
    assert_eq!((status, kind(&json_of(&body))), (413, "invalid_module"));
    assert!(body.contains("10000"), "{body}");
}

#[test]
fn tokens_and_the_host_header_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(dir.path(), "token", &["--token", "s3cret"]);
    let health = |headers: &[&str]| http_send(addr, "GET", "/v1/health", headers, b"").0;
    assert_eq!(health(&[]), 401);
    assert_eq!(health(&["Authorization: Bearer wrong"]), 401);
    assert_eq!(health(&["Authorization: Bearer s3cret"]), 200);
    let bytes = std::fs::read(task_module("examples")).unwrap();
    assert_eq!(http_send(addr, "PUT", "/v1/modules", &[], &bytes).0, 401);
    let examples = upload(addr, "examples", &["Authorization: Bearer s3cret"]);
    let path = format!("/v1/call/{examples}/add");
    assert_eq!(http_send(addr, "POST", &path, &[], b"[1, 2]").0, 401);
    // DNS rebinding: a request naming another host is refused, token or not.
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "GET /v1/health HTTP/1.0\r\nHost: evil.example\r\nAuthorization: Bearer s3cret\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(
        raw.starts_with("HTTP/1.0 403") || raw.starts_with("HTTP/1.1 403"),
        "{raw}"
    );

    // `wasq call` with the token (uploads what the server lacks).
    let out = run(wasq()
        .args(["call", &format!("http://{addr}")])
        .arg(task_module("hostile"))
        .args(["args", "[]", "--token", "s3cret", "--json"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let env = json_of(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(env["state"], json!("succeeded"));
    // Without it: refused, exit 2, a clear message.
    let out = run(wasq().args([
        "call",
        &format!("http://{addr}"),
        &examples,
        "add",
        "[1, 2]",
    ]));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        describe(&out)
    );
}

#[test]
fn beyond_loopback_a_token_is_required() {
    let out = run(wasq().args(["serve", "--listen", "0.0.0.0:0"]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token"));
    // With --insecure it starts (and is stopped here).
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut cmd = wasq();
    cmd.args([
        "serve",
        "--insecure",
        "--listen",
        &format!("0.0.0.0:{port}"),
    ]);
    let mut server = Proc::spawn(cmd, "insecure", dir.path().join("insecure.log"));
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap());
    assert!(server.child.try_wait().unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_servers_answer_429_and_a_disconnected_call_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(dir.path(), "busy", &["--concurrency", "1"]);
    let hostile = upload(addr, "hostile", &[]);
    let client = DirectClient::new(&format!("http://{addr}"), None).unwrap();
    let running = || async { client.health().await.unwrap()["running"].as_u64().unwrap() };
    // A call that sleeps holds the only slot; the raw connection is ours to
    // drop.
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    use std::io::Write;
    write!(
        stream,
        "POST /v1/call/{hostile}/sleep_forever?timeout=25 HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\n\r\n[]"
    )
    .unwrap();
    eventually(Duration::from_secs(30), "the call running", &running, |n| {
        *n == 1
    })
    .await;
    // Every slot busy: 429 with Retry-After, at once.
    let (status, head, body) = http_send(
        addr,
        "POST",
        &format!("/v1/call/{hostile}/args"),
        &[],
        b"[]",
    );
    assert_eq!(status, 429, "{body}");
    assert_eq!(common::header(&head, "retry-after"), "1");
    assert_eq!(json_of(&body)["error"]["kind"], json!("busy"));
    let err = client
        .call_raw(&hostile, "args", "[]", &CallLimits::default())
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    // The client goes away: its call stops and frees the slot.
    drop(stream);
    eventually(
        Duration::from_secs(30),
        "the abandoned call freeing its slot",
        &running,
        |n| *n == 0,
    )
    .await;
    let env = client
        .call_raw(&hostile, "args", "[]", &CallLimits::default())
        .await
        .unwrap();
    assert_eq!(env.state, wasq_broker::State::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_from_the_module_store_and_host_run_listen() {
    let mut c = Cluster::start("direct").await;
    // Push and name a module in the deployment's store.
    let out = run(c
        .cli()
        .args(["module", "push"])
        .arg(task_module("examples"))
        .args(["--tag", "examples@1.0"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    // `serve --redis`: names and stored modules, nothing uploaded to it.
    let (_server, addr) = serve(
        c.path(),
        "serve-redis",
        &["--redis", &c.redis.url(), "--prefix", &c.prefix],
    );
    let (status, env) = call(addr, "examples@1.0", "add", "", "[2, 3]");
    assert_eq!((status, &env["result"]), (200, &json!(5)), "{env}");
    let (status, env) = call(addr, "nobody@1.0", "add", "", "[]");
    assert_eq!((status, kind(&env)), (404, "module_not_found"));

    // `host run --listen`: one process takes queued calls and direct ones.
    let i = c.host(&["--listen", "127.0.0.1:0"]);
    let direct = logged_address(&c.procs[i]);
    let client = DirectClient::new(&format!("http://{direct}"), None).unwrap();
    let sum: i64 = client.call("examples@1.0", "add", (20, 22)).await.unwrap();
    assert_eq!(sum, 42);
    let out = run(c
        .cli()
        .args(["submit", "examples@1.0", "add", "[1, 1]", "--wait"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    // The typed call uploads bytes the server lacks.
    let bytes = std::fs::read(task_module("hostile")).unwrap();
    let argv: Vec<String> = client.call(bytes, "args", ()).await.unwrap();
    assert_eq!(argv, ["args"]);
}

#[test]
fn https_with_a_ca_of_the_deployments_own() {
    let dir = tempfile::tempdir().unwrap();
    common::make_ca(dir.path(), "direct");
    common::make_cert(dir.path(), "direct", "server");
    let (cert, key, ca) = (
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("direct-ca.pem"),
    );
    let (_server, addr) = serve(
        dir.path(),
        "https",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--token",
            "t0k",
        ],
    );
    let url = format!("https://{addr}");
    let call = |extra: &[&str]| {
        run(wasq()
            .args(["call", &url])
            .arg(task_module("examples"))
            .args(["add", "[20, 22]", "--token", "t0k"])
            .args(extra))
    };
    let out = call(&["--ca", ca.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // Without the CA the server's certificate is not trusted: no call.
    let out = call(&[]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("certificate"),
        "{}",
        describe(&out)
    );
    // Plain HTTP to the TLS port gets nothing usable.
    let out = run(wasq().args(["call", &format!("http://{addr}"), "sha256:00", "add"]));
    assert_ne!(out.status.code(), Some(0));
}
