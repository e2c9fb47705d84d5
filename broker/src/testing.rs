//! Test helpers (feature `test-util`): a throwaway `redis-server` per test,
//! and [`eventually`] / [`eventually_blocking`] for waiting on a state that
//! another task or process brings about.
//!
//! [`RedisServer::start`] launches the `redis-server` binary found on `PATH`
//! bound to 127.0.0.1 on a free port, in its own temporary directory, with the
//! append-only file fsynced on every write, so [`RedisServer::restart`] brings
//! back exactly what was written before. The server is killed when the value
//! is dropped. Tests never touch a Redis they did not start (nothing on 6379)
//! and never `FLUSHALL`: give each test its own key prefix with
//! [`unique_prefix`].
//!
//! ```no_run
//! use wasq_broker::testing::{RedisServer, unique_prefix};
//!
//! let server = RedisServer::start();
//! let url = server.url();
//! let prefix = unique_prefix("my_test");
//! // RedisBroker::connect(&url, &prefix, BrokerConfig::default()).await? ...
//! # let _ = (url, prefix);
//! ```

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a starting server may take to answer `PING`.
const START_DEADLINE: Duration = Duration::from_secs(10);
/// Attempts at finding a port nobody else grabs between our probe and the server's bind.
const PORT_ATTEMPTS: usize = 8;

/// A `redis-server` child process owned by a test. Killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh server on a free port with an empty data directory.
    ///
    /// # Panics
    /// If `redis-server` is not installed or does not come up: this is a test
    /// helper, and a test without its server cannot run.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`RedisServer::start`], with extra `redis-server` arguments, for
    /// example `["--requirepass", "secret"]` or an ACL user
    /// (`["--user", "alice", "on", ">pw", "~*", "&*", "+@all"]`). Readiness
    /// is still detected without credentials (a `NOAUTH` answer counts).
    ///
    /// # Panics
    /// As [`RedisServer::start`].
    pub fn start_with(extra_args: &[&str]) -> Self {
        let extra: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let dir = tempfile::Builder::new()
            .prefix("wasq-redis-")
            .tempdir()
            .expect("cannot create a temporary directory for redis-server");
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match spawn(port, dir.path(), &extra) {
                Ok(child) => {
                    return Self {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                    };
                }
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start redis-server: {last_error}");
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory (holds the append-only file and `redis.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: like a crash; with `appendfsync always`
    /// nothing acknowledged is lost) and waits for it to exit. Clients see
    /// refused connections until [`RedisServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory; the data comes
    /// back from the append-only file.
    ///
    /// # Panics
    /// If the server does not come back (for example because another process
    /// took the port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match spawn(self.port, self.dir.path(), &self.extra) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) if Instant::now() >= deadline => {
                    panic!("cannot restart redis-server on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How often [`eventually`] and [`eventually_blocking`] look again.
pub const POLL_EVERY: Duration = Duration::from_millis(10);

/// Looks at something (`observe`) until what it sees satisfies `until`, for
/// at most `within`; returns what satisfied it. Every poll has this deadline,
/// so a regression fails the test instead of hanging it.
///
/// Uses tokio's clock: under `tokio::time::pause()` the waits between looks
/// advance virtual time, so a test of the in-process broker needs no real
/// waiting.
///
/// # Panics
/// At the deadline, naming `what` and the last value seen.
///
/// ```no_run
/// # async fn demo(count: impl Fn() -> usize) {
/// use std::time::Duration;
/// let n = wasq_broker::testing::eventually(
///     Duration::from_secs(5), "two hosts", || async { count() }, |n| *n == 2,
/// ).await;
/// # let _ = n; }
/// ```
pub async fn eventually<V, F, Fut>(
    within: Duration,
    what: &str,
    mut observe: F,
    until: impl Fn(&V) -> bool,
) -> V
where
    V: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = V>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = observe().await;
        if until(&seen) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}; last seen: {seen:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// [`eventually`] for a test without an async runtime: blocks the thread
/// between looks.
///
/// # Panics
/// At the deadline, naming `what` and the last value seen.
pub fn eventually_blocking<V: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut observe: impl FnMut() -> V,
    until: impl Fn(&V) -> bool,
) -> V {
    let deadline = Instant::now() + within;
    loop {
        let seen = observe();
        if until(&seen) {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; last seen: {seen:?}"
        );
        std::thread::sleep(POLL_EVERY);
    }
}

/// A key prefix no other test uses: `test:{name}:{random}`. Characters that
/// have a meaning in Redis keys or patterns are replaced by `_`.
pub fn unique_prefix(test_name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("test:{name}:{:08x}{n}", rand::random::<u32>())
}

/// A port that was free a moment ago (the kernel picks it for port 0).
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .expect("cannot bind a probe socket on 127.0.0.1");
    listener
        .local_addr()
        .expect("probe socket has no address")
        .port()
}

/// Spawns `redis-server` on `port` and waits until it answers `PING`; an
/// error (with the server's log) if it exits or stays silent.
fn spawn(port: u16, dir: &Path, extra: &[String]) -> Result<Child, String> {
    let log: PathBuf = dir.join("redis.log");
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--save", ""])
        .args(["--appendonly", "yes"])
        .args(["--appendfsync", "always"])
        .args(["--daemonize", "no"])
        .args(["--protected-mode", "yes"])
        .arg("--logfile")
        .arg(&log)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run redis-server (is it installed?): {e}"))?;
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!(
                "redis-server on port {port} exited with {status}: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ));
        }
        if ping(port) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server on port {port} did not answer PING"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a server on `port` is ready: `PING` answered with `+PONG`, or
/// with `-NOAUTH` when it wants a password (a loading server answers
/// `-LOADING`, which is not ready yet).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let mut got = 0;
    while got < 7 {
        match stream.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"+PONG") || buf.starts_with(b"-NOAUTH")
}
