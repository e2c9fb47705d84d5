//! The one harness of the end-to-end tests: the real `wasq` binary, the
//! compiled example tasks, processes that are killed when dropped, a
//! [`Deployment`] (a redis-server, a key prefix and a temp dir of the test's
//! own) and, in [`cluster`], a [`cluster::Cluster`] that adds a Rust client.
//! Waiting is [`eventually`] / [`eventually_blocking`]: every wait has a
//! deadline and says what it last saw.

#![allow(dead_code)]

pub mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use wasq_broker::testing::{RedisServer, unique_prefix};
pub use wasq_broker::testing::{eventually, eventually_blocking};

/// The `wasq` binary cargo built for these tests.
pub fn wasq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wasq"))
}

/// A `wasq` command with a clean environment for wasq's own variables.
pub fn wasq() -> Command {
    let mut cmd = Command::new(wasq_bin());
    for var in [
        "WASQ_REDIS_URL",
        "WASQ_PREFIX",
        "WASQ_CONCURRENCY",
        "WASQ_CACHE_DIR",
        "WASQ_CACHE_KEY",
        "WASQ_RESULT_TTL",
        "WASQ_TOKEN",
        "WASQ_REDIS_CA",
        "WASQ_REDIS_CERT",
        "WASQ_REDIS_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A compiled task module from `target/tasks/` (built by `make tasks`).
pub fn task_module(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("tasks")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the task modules first with `make tasks` \
         (needs `rustup target add wasm32-wasip1`)",
        path.display()
    );
    path
}

/// Runs a command to completion, capturing output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("cannot run wasq")
}

/// Describes an output for assertion messages.
pub fn describe(out: &Output) -> String {
    format!(
        "status: {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The single JSON envelope a `--json` command printed.
pub fn envelope(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON envelope ({e})\n{}", describe(out)))
}

/// A redis-server of the test's own, a key prefix and a temp dir, and the
/// `wasq` processes started against them (killed when dropped). When the
/// test fails, the temp dir (logs, files the test wrote) is kept and its
/// path printed.
pub struct Deployment {
    pub redis: RedisServer,
    pub prefix: String,
    pub dir: Option<tempfile::TempDir>,
    pub procs: Vec<Proc>,
}

impl Deployment {
    /// Starts redis-server; no processes yet.
    pub fn start(test: &str) -> Self {
        Self {
            redis: RedisServer::start(),
            prefix: unique_prefix(test),
            dir: Some(tempfile::tempdir().unwrap()),
            procs: Vec::new(),
        }
    }

    /// The test's temp dir.
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    /// A `wasq` command pointed at this deployment.
    pub fn cli(&self) -> Command {
        let mut cmd = wasq();
        cmd.env("WASQ_REDIS_URL", self.redis.url())
            .env("WASQ_PREFIX", &self.prefix);
        cmd
    }

    /// Starts `wasq ARGS` with its log in `NAME.log`; returns its index.
    pub fn spawn(&mut self, name: &str, args: &[&str]) -> usize {
        let log = self.path().join(format!("{name}.log"));
        let mut cmd = self.cli();
        cmd.args(args);
        self.procs.push(Proc::spawn(cmd, name, log));
        self.procs.len() - 1
    }

    /// Writes `NAME` in the temp dir; returns its path.
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("test files kept in {}", dir.keep().display());
        }
    }
}

/// Waits (30 s at most) until something listens on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let _connected = eventually_blocking(
        Duration::from_secs(30),
        &format!("something listening on {addr}"),
        || TcpStream::connect(addr).map(drop).map_err(|e| e.kind()),
        Result::is_ok,
    );
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` (a `wasq` command) with wasq's info logs on stderr,
    /// captured in the file `log`, and no stdin or stdout.
    pub fn spawn(mut cmd: Command, name: impl Into<String>, log: PathBuf) -> Proc {
        let child = cmd
            .env("RUST_LOG", "wasq_host=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Proc {
            child,
            name: name.into(),
            log,
        }
    }

    /// Sends SIGKILL now.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait().expect("wait for host")
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (30 s at most) until the log has a line containing `marker`;
    /// returns the rest of that line after it (where a process says the
    /// address it listens on).
    pub fn logged(&self, marker: &str) -> String {
        let log = eventually_blocking(
            Duration::from_secs(30),
            &format!("{} logging {marker:?}", self.name),
            || self.log(),
            |log| log.contains(marker),
        );
        let line = log.lines().find(|l| l.contains(marker)).unwrap();
        line.split_once(marker).unwrap().1.to_string()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

/// `GET path` over HTTP/1.0: (status, the header lines in lower case, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_request(addr, path, &addr.to_string(), &[])
}

/// `GET path` over HTTP/1.0 with this `Host` header and extra header lines
/// (`"Name: value"`): (status, the header lines in lower case, body).
pub fn http_request(
    addr: SocketAddr,
    path: &str,
    host: &str,
    headers: &[&str],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n").unwrap();
    for h in headers {
        write!(s, "{h}\r\n").unwrap();
    }
    write!(s, "\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// The value of header `name` (lower case) in a head from [`http_get`].
pub fn header(head: &str, name: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// `METHOD path` over HTTP/1.1 with `Connection: close`, this `Host`, extra
/// header lines and a body: (status, the header lines in lower case, body).
pub fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before it has read all of a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A free loopback port (bound and released: good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `openssl` with `args` in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed for the TLS tests (Debian package `openssl`)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME-ca.pem`, `NAME-ca.key`) made in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &format!("{name}-ca.key"),
            "-out",
            &format!("{name}-ca.pem"),
        ],
    );
}

/// A certificate `NAME.pem` (key `NAME.key`) signed by CA `ca`, valid for
/// 127.0.0.1 and localhost.
pub fn make_cert(dir: &Path, ca: &str, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-days",
            "2",
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
}
