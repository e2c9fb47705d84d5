//! End to end: a real redis-server, two `wasq host run` processes and a
//! `wasq dashboard`; its JSON API is checked directly, then Debian's headless
//! Chromium loads the page and, over the DevTools protocol, the test watches
//! it show both hosts and the calls, and update without a reload.
//!
//! Needs `chromium` on `PATH` (`apt-get install -y chromium`), or its path
//! in `WASQ_CHROMIUM`. On failure the page is saved as a screenshot in the
//! test's temp dir, which is kept, and its path printed.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Deployment, Proc, describe, eventually_blocking, http_get, run, task_module};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;

/// Submits `add [x, y]` and waits for it; returns the call id.
fn add(d: &Deployment, x: i64, y: i64) -> String {
    let out = run(d.cli().arg("submit").arg(task_module("examples")).args([
        "add",
        &format!("[{x}, {y}]"),
        "--wait",
        "--json",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let env: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(env["result"], json!(x + y));
    env["id"].as_str().unwrap().to_string()
}

/// Polls `f` until it returns `Some`, for at most `secs` seconds.
fn until_some<T: std::fmt::Debug>(secs: u64, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_blocking(Duration::from_secs(secs), what, f, Option::is_some).unwrap()
}

/// The address in the dashboard's "wasq dashboard: http://ADDR/" line.
fn dashboard_address(proc: &Proc) -> SocketAddr {
    let rest = proc.logged("wasq dashboard: http://");
    rest.split('/').next().unwrap().parse().unwrap()
}

fn overview(addr: SocketAddr) -> Value {
    let (status, _, body) = http_get(addr, "/api/overview");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("overview is not JSON ({e}): {body}"))
}

/// The Chromium binary: `WASQ_CHROMIUM`, or the first of the usual names on `PATH`.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("WASQ_CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(out) = Command::new("which").arg(name).output()
            && out.status.success()
        {
            return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        }
    }
    panic!(
        "chromium is not installed: this test drives a headless browser. \
         Install Debian's package with `apt-get install -y chromium` \
         (or set WASQ_CHROMIUM to a Chromium binary)"
    );
}

/// Flags for a headless, quiet, throwaway Chromium profile.
fn chromium_flags(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// Headless Chromium driven over the DevTools protocol: one page, attached
/// through the browser endpoint with a flat session.
struct Browser {
    _proc: Proc,
    ws: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
}

impl Browser {
    fn launch(dir: &Path) -> Self {
        let bin = chromium();
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = dir.join("chromium.log");
        let child = Command::new(&bin)
            .args(chromium_flags(&profile))
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let proc = Proc {
            child,
            name: "chromium".into(),
            log,
        };
        // Chromium writes its port and browser endpoint path here once it listens.
        let port_file = profile.join("DevToolsActivePort");
        let url = until_some(30, "chromium's DevTools endpoint", || {
            let text = std::fs::read_to_string(&port_file).ok()?;
            let mut lines = text.lines();
            let port = lines.next()?.trim().parse::<u16>().ok()?;
            let path = lines.next()?.trim().to_string();
            Some(format!("ws://127.0.0.1:{port}{path}"))
        });
        let (ws, _) = tungstenite::connect(url.as_str())
            .unwrap_or_else(|e| panic!("cannot connect to chromium at {url}: {e}"));
        if let MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        let mut b = Self {
            _proc: proc,
            ws,
            session: String::new(),
            next_id: 0,
        };
        let target = b.send("Target.createTarget", json!({"url": "about:blank"}), false);
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b.send(
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
            false,
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends one command and returns its result, skipping events.
    fn send(&mut self, method: &str, params: Value, in_session: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if in_session {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(tungstenite::Message::Text(msg.to_string().into()))
            .unwrap_or_else(|e| panic!("cannot send {method} to chromium: {e}"));
        loop {
            let reply = self
                .ws
                .read()
                .unwrap_or_else(|e| panic!("no reply from chromium to {method}: {e}"));
            let tungstenite::Message::Text(text) = reply else {
                continue;
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    fn navigate(&mut self, url: &str) {
        self.send("Page.navigate", json!({"url": url}), true);
    }

    /// Evaluates a JavaScript expression in the page; its JSON value.
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.send(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
            true,
        );
        assert!(
            r.get("exceptionDetails").is_none(),
            "page threw on {expr}: {r}"
        );
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is truthy; returns its value. Exceptions count
    /// as not yet (the document may still be loading).
    fn wait_for(&mut self, secs: u64, what: &str, expr: &str) -> Value {
        let guarded =
            format!("(() => {{ try {{ return ({expr}); }} catch (_) {{ return null; }} }})()");
        eventually_blocking(
            Duration::from_secs(secs),
            &format!("the page showing {what} ({expr})"),
            || self.eval(&guarded),
            |v| !(v.is_null() || *v == json!(false) || *v == json!(0) || *v == json!("")),
        )
    }
}

/// On a failing test, saves a screenshot of the page in the temp dir (which
/// the [`Deployment`] keeps when the test fails).
struct OnFailure {
    dir: PathBuf,
    url: String,
}

impl Drop for OnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let dir = &self.dir;
        let shot = dir.join("dashboard.png");
        let profile = dir.join("screenshot-profile");
        let taken = Command::new(chromium_path_or_default())
            .args(chromium_flags(&profile))
            .arg(format!("--screenshot={}", shot.display()))
            .arg("--virtual-time-budget=3000")
            .arg(&self.url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if taken {
            eprintln!("screenshot of the dashboard: {}", shot.display());
        }
    }
}

fn chromium_path_or_default() -> PathBuf {
    std::env::var_os("WASQ_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"))
}

#[test]
fn dashboard_shows_hosts_and_calls_and_updates_live() {
    // Fail at once, with the install line, if there is no browser.
    let _ = chromium();
    let mut c = Deployment::start("dashboard");
    let dir = c.path().to_path_buf();
    c.spawn("host0", &["host", "run", "--concurrency", "2"]);
    c.spawn(
        "host1",
        &[
            "host",
            "run",
            "--concurrency",
            "3",
            "--queue",
            "default",
            "--queue",
            "other",
        ],
    );
    let dash = c.spawn(
        "dashboard",
        &["dashboard", "--listen", "127.0.0.1:0", "--refresh", "0.25"],
    );
    let addr: SocketAddr = dashboard_address(&c.procs[dash]);
    let url = format!("http://{addr}/");
    let guard = OnFailure {
        dir: dir.clone(),
        url: url.clone(),
    };

    // The JSON API: both hosts, then a call with its envelope.
    let hosts = until_some(30, "two hosts in /api/overview", || {
        let o = overview(addr);
        let ids: Vec<String> = o["hosts"]
            .as_array()?
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    let o = overview(addr);
    assert_eq!(o["prefix"], json!(c.prefix));
    assert_eq!(o["totals"]["hosts"], 2);
    assert_eq!(o["totals"]["concurrency"], 5);
    assert_eq!(o["throughput"].as_array().unwrap().len(), 60);
    let h1 = o["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["concurrency"] == 3)
        .unwrap();
    assert_eq!(h1["queues"], json!(["default", "other"]));
    for key in [
        "version",
        "in_flight",
        "done",
        "failed",
        "fuel_used",
        "uptime_s",
        "heartbeat_age_ms",
    ] {
        assert!(h1.get(key).is_some(), "host has {key}: {h1}");
    }

    let first = add(&c, 20, 22);
    let call = until_some(
        30,
        "the first call with its envelope in /api/overview",
        || {
            let o = overview(addr);
            o["recent"]
                .as_array()?
                .iter()
                .find(|r| r["id"] == json!(first) && !r["envelope"].is_null())
                .cloned()
        },
    );
    assert_eq!(call["state"], "succeeded", "{call}");
    assert_eq!(call["task"], "add", "{call}");
    assert_eq!(call["queue"], "default", "{call}");
    assert_eq!(call["envelope"]["result"], 42, "{call}");
    assert!(
        hosts.contains(&call["host"].as_str().unwrap().to_string()),
        "{call}"
    );
    let o = overview(addr);
    let finished: u64 = o["throughput"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["succeeded"].as_u64().unwrap() + p["failed"].as_u64().unwrap())
        .sum();
    assert!(
        finished >= 1,
        "throughput counts the call: {}",
        o["throughput"]
    );
    assert!(
        o["events"]["seen"].as_u64().unwrap() >= 3,
        "{}",
        o["events"]
    );

    let (status, _, body) = http_get(addr, &format!("/api/calls/{first}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["result"], 42);
    let (status, _, _) = http_get(addr, "/api/calls/01NOSUCHCALL0000000000000");
    assert_eq!(status, 404);
    let (status, _, body) = http_get(addr, "/api/events?count=5");
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert!(!events.is_empty() && events.len() <= 5, "{body}");
    let (status, head, body) = http_get(addr, "/");
    assert_eq!(status, 200);
    assert!(body.contains("<script src=\"/app.js\""), "{body}");
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    for asset in ["/app.js", "/app.css"] {
        let (status, _, body) = http_get(addr, asset);
        assert_eq!(status, 200, "{asset}");
        assert!(body.len() > 500, "{asset} is embedded");
    }

    // The page, in a real browser.
    let mut b = Browser::launch(&dir);
    b.navigate(&url);
    b.wait_for(
        30,
        "a first update",
        "Number(document.body.dataset.updates) >= 1",
    );
    let shown_hosts = b.wait_for(
        30,
        "both hosts",
        "(() => { const ids = [...document.querySelectorAll('#hosts tbody tr')].map(r => r.dataset.id); return ids.length === 2 ? ids : null })()",
    );
    let mut shown: Vec<String> = serde_json::from_value(shown_hosts).unwrap();
    shown.sort();
    let mut want = hosts.clone();
    want.sort();
    assert_eq!(shown, want);
    b.wait_for(
        30,
        "the first call, succeeded",
        &format!("document.querySelector('#calls tr[data-id=\"{first}\"][data-state=\"succeeded\"]') !== null"),
    );
    assert_eq!(
        b.eval("document.getElementById('live').dataset.state"),
        json!("live")
    );

    // Mark this document, then change the cluster: the page must follow
    // without a reload (the mark survives, the update counter grows).
    b.eval("window.__wasqMark = 'same-document'; true");
    let updates_before = b
        .eval("Number(document.body.dataset.updates)")
        .as_u64()
        .unwrap();
    let second = add(&c, 1, 2);
    b.wait_for(
        30,
        "the second call, submitted after the page loaded",
        &format!("document.querySelector('#calls tr[data-id=\"{second}\"][data-state=\"succeeded\"]') !== null"),
    );
    assert_eq!(
        b.eval("window.__wasqMark"),
        json!("same-document"),
        "the page was reloaded"
    );
    let updates_after = b
        .eval("Number(document.body.dataset.updates)")
        .as_u64()
        .unwrap();
    assert!(
        updates_after > updates_before,
        "{updates_before} -> {updates_after}"
    );
    let order = b.eval("[...document.querySelectorAll('#calls tr.call')].map(r => r.dataset.id)");
    let order: Vec<String> = serde_json::from_value(order).unwrap();
    let (i2, i1) = (
        order.iter().position(|id| *id == second).unwrap(),
        order.iter().position(|id| *id == first).unwrap(),
    );
    assert!(i2 < i1, "newest first: {order:?}");
    b.wait_for(
        10,
        "bars in the throughput chart",
        "document.querySelectorAll('#chart rect').length",
    );

    // Clicking a call shows its envelope.
    b.eval(&format!(
        "document.querySelector('#calls tr[data-id=\"{second}\"]').click(); true"
    ));
    let shown = b.wait_for(
        10,
        "the envelope of the clicked call",
        &format!("(document.querySelector('#calls tr.detail[data-for=\"{second}\"] pre') || {{}}).textContent"),
    );
    let env: Value = serde_json::from_str(shown.as_str().unwrap()).unwrap();
    assert_eq!(env["result"], 3);
    assert_eq!(env["state"], "succeeded");

    // The event level: a note says when calls' events are off (the chart
    // and the recent calls come from them), and goes when they are back.
    assert_eq!(overview(addr)["event_level"], "all");
    assert_eq!(
        b.eval("document.getElementById('events-level').hidden"),
        json!(true)
    );
    let set = |level: &str| {
        let out = run(c.cli().args(["events", "--set-level", level]));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    };
    set("off");
    let note = b.wait_for(
        30,
        "the note that call events are off",
        "(() => { const p = document.getElementById('events-level'); return p.hidden ? null : p.textContent })()",
    );
    assert!(note.as_str().unwrap().contains("events are off"), "{note}");
    assert_eq!(overview(addr)["event_level"], "off");
    set("all");
    b.wait_for(
        30,
        "the note gone",
        "document.getElementById('events-level').hidden",
    );

    // A host going away disappears from the page.
    c.procs[0].terminate();
    b.wait_for(
        30,
        "one host left",
        "document.querySelectorAll('#hosts tbody tr').length === 1",
    );
    assert_eq!(b.eval("window.__wasqMark"), json!("same-document"));

    drop(b);
    drop(guard);
}

/// With `--token`, the dashboard answers nobody without it; a browser
/// opening `/?token=` once gets a cookie and is sent on to the page. A
/// request naming another Host is refused whatever it carries.
#[test]
fn the_dashboard_checks_its_token_and_host() {
    let mut c = Deployment::start("dashboard_token");
    let dash = c.spawn(
        "dashboard",
        &["dashboard", "--listen", "127.0.0.1:0", "--token", "t0ken"],
    );
    let addr: SocketAddr = dashboard_address(&c.procs[dash]);
    let host = addr.to_string();
    let (status, _, _) = common::http_request(addr, "/api/overview", &host, &[]);
    assert_eq!(status, 401);
    let (status, _, body) = common::http_request(
        addr,
        "/api/overview",
        &host,
        &["Authorization: Bearer t0ken"],
    );
    assert_eq!(status, 200, "{body}");
    let (status, head, _) = common::http_request(addr, "/?token=t0ken", &host, &[]);
    assert_eq!(status, 303);
    assert_eq!(common::header(&head, "location"), "/");
    let cookie = common::header(&head, "set-cookie");
    assert!(
        cookie.starts_with("wasq_token=t0ken;") && cookie.contains("httponly"),
        "{cookie}"
    );
    let (status, _, body) = common::http_request(addr, "/", &host, &["Cookie: wasq_token=t0ken"]);
    assert_eq!(status, 200);
    assert!(
        body.contains("<html") || body.contains("<!doctype"),
        "{body}"
    );
    let (status, _, _) = common::http_request(addr, "/?token=wrong", &host, &[]);
    assert_eq!(status, 401);
    // DNS rebinding: a page of another origin resolving to 127.0.0.1.
    let (status, _, _) = common::http_request(
        addr,
        "/api/overview",
        "attacker.example",
        &["Authorization: Bearer t0ken"],
    );
    assert_eq!(status, 403);
}
