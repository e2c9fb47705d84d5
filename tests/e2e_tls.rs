//! TLS to Redis end to end: a `redis-server` serving TLS with certificates
//! this test makes (`openssl`), a real `wasq host run` and `wasq submit
//! --wait` over `rediss://`, mutual TLS, and the failures a wrong CA or a
//! missing client certificate must give (exit 3, a clear message, no panic).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Proc, describe, free_port, make_ca, make_cert, run, task_module, wasq};
use wasq_broker::testing::{RedisServer, unique_prefix};

/// A redis-server with a TLS port (and its plain port, used only to see it
/// is up), certificates in a temp dir: `good` signed the server's, `other`
/// signed nothing it trusts.
struct TlsRedis {
    _server: RedisServer,
    tls_port: u16,
    certs: tempfile::TempDir,
    prefix: String,
}

impl TlsRedis {
    fn start(test: &str, client_certs_required: bool) -> Self {
        let certs = tempfile::tempdir().unwrap();
        make_ca(certs.path(), "good");
        make_ca(certs.path(), "other");
        make_cert(certs.path(), "good", "server");
        make_cert(certs.path(), "good", "client");
        let tls_port = free_port();
        let path = |f: &str| certs.path().join(f).to_string_lossy().into_owned();
        let server = RedisServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("good-ca.pem"),
            "--tls-auth-clients",
            if client_certs_required { "yes" } else { "no" },
        ]);
        Self {
            _server: server,
            tls_port,
            certs,
            prefix: unique_prefix(test),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.certs.path().join(name)
    }

    /// A `wasq` command on `rediss://` with this test's prefix and no files.
    fn cli(&self) -> Command {
        let mut cmd = wasq();
        cmd.env(
            "WASQ_REDIS_URL",
            format!("rediss://127.0.0.1:{}", self.tls_port),
        )
        .env("WASQ_PREFIX", &self.prefix);
        cmd
    }

    /// `cli()` trusting CA `ca`, presenting the client certificate if asked
    /// (through the environment; the flags are checked below).
    fn cli_with(&self, ca: &str, client_cert: bool) -> Command {
        let mut cmd = self.cli();
        cmd.env("WASQ_REDIS_CA", self.file(&format!("{ca}-ca.pem")));
        if client_cert {
            cmd.env("WASQ_REDIS_CERT", self.file("client.pem"))
                .env("WASQ_REDIS_KEY", self.file("client.key"));
        }
        cmd
    }
}

#[track_caller]
fn assert_unreachable_without_panic(out: &std::process::Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{}", describe(out));
    assert!(!stderr.contains("panicked"), "{}", describe(out));
    assert!(stderr.to_lowercase().contains(expect), "{}", describe(out));
}

#[test]
fn a_host_and_a_submitter_talk_over_tls() {
    let redis = TlsRedis::start("tls_round_trip", false);
    let module = task_module("examples");
    let out = run(redis
        .cli_with("good", false)
        .args(["module", "push"])
        .arg(&module)
        .args(["--tag", "examples@1"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));

    let log = redis.certs.path().join("host.log");
    let mut host_cmd = redis.cli_with("good", false);
    host_cmd.args(["host", "run", "--concurrency", "2"]);
    let _host = Proc::spawn(host_cmd, "host", log);

    let out = run(redis
        .cli_with("good", false)
        .args(["submit", "examples@1", "add", "[4, 5]", "--wait", "--json"])
        .args(["--wait-timeout", "30"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let env = common::envelope(&out);
    assert_eq!(env["result"], 9, "{}", describe(&out));
    assert_eq!(env["state"], "succeeded");
}

#[test]
fn a_wrong_ca_is_refused_with_exit_3() {
    let redis = TlsRedis::start("tls_wrong_ca", false);
    let out = run(redis.cli_with("other", false).args(["module", "ls"]));
    assert_unreachable_without_panic(&out, "certificate");
    // No CA at all: the server's certificate is signed by no public CA.
    let out = run(redis.cli().args(["module", "ls"]));
    assert_unreachable_without_panic(&out, "certificate");
    // The right one works.
    let out = run(redis.cli_with("good", false).args(["module", "ls"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
}

#[test]
fn mutual_tls_needs_the_client_certificate() {
    let redis = TlsRedis::start("tls_mutual", true);
    let out = run(redis.cli_with("good", true).args(["module", "ls"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = run(redis.cli_with("good", false).args(["module", "ls"]));
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        describe(&out)
    );
}

#[test]
fn tls_files_are_checked_before_connecting() {
    let redis = TlsRedis::start("tls_usage", false);
    // The flags work as the environment does.
    let out = run(redis
        .cli()
        .args(["module", "ls", "--redis-ca"])
        .arg(redis.file("good-ca.pem")));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // A CA file with a plain redis:// URL: a usage error saying why.
    let out = run(wasq()
        .env("WASQ_REDIS_URL", "redis://127.0.0.1:1")
        .args(["module", "ls", "--redis-ca"])
        .arg(redis.file("good-ca.pem")));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rediss://"),
        "{}",
        describe(&out)
    );
    // A certificate without its key.
    let out = run(redis
        .cli()
        .args(["module", "ls", "--redis-cert"])
        .arg(redis.file("client.pem")));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    // A file that is not PEM.
    let out = run(redis
        .cli()
        .args(["module", "ls", "--redis-ca"])
        .arg(redis.file("server.ext")));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a PEM"),
        "{}",
        describe(&out)
    );
}
