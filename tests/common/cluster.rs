//! A cluster for end-to-end tests: a redis-server started by the test, real
//! `wasq host run` processes and `wasq` commands pointed at it.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasq_broker::testing::{RedisServer, unique_prefix};
use wasq_broker::{
    Broker, BrokerConfig, Call, CallLimits, Envelope, ModuleHash, RedisBroker, State, new_call_id,
    now_ms,
};

use super::{Proc, describe, run, task_module, wasq};

/// A redis-server of the test's own, a key prefix, `wasq host run`
/// processes and a Rust client, all stopped when dropped.
pub struct Cluster {
    pub redis: RedisServer,
    pub prefix: String,
    pub hosts: Vec<Proc>,
    pub dir: tempfile::TempDir,
    pub broker: Arc<RedisBroker>,
}

impl Cluster {
    /// Starts redis-server and connects; no hosts yet.
    pub async fn start(test: &str) -> Self {
        let redis = RedisServer::start();
        let prefix = unique_prefix(test);
        let broker = Arc::new(
            RedisBroker::connect(&redis.url(), &prefix, BrokerConfig::default())
                .await
                .expect("connect"),
        );
        Self {
            redis,
            prefix,
            hosts: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            broker,
        }
    }

    /// A `wasq` command pointed at this cluster.
    pub fn cli(&self) -> Command {
        let mut cmd = wasq();
        cmd.env("WASQ_REDIS_URL", self.redis.url())
            .env("WASQ_PREFIX", &self.prefix);
        cmd
    }

    /// Runs a `wasq` command to completion; asserts its exit status.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = run(self.cli().args(args));
        assert_eq!(
            out.status.code(),
            Some(0),
            "wasq {args:?}\n{}",
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a `wasq ... --json` command and parses its output.
    pub fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("wasq {args:?}: {e}\n{text}"))
    }

    /// Starts `wasq host run` with extra flags; returns its index.
    pub fn host(&mut self, extra: &[&str]) -> usize {
        let i = self.hosts.len();
        let log = self.dir.path().join(format!("host{i}.log"));
        let mut cmd = self.cli();
        cmd.args(["host", "run"]).args(extra);
        self.hosts.push(Proc::spawn(cmd, format!("host{i}"), log));
        i
    }

    /// Waits until at least `n` hosts hold a live lease (30 s at most).
    pub async fn wait_hosts(&self, n: usize) {
        self.wait_live_hosts(30, |live| live >= n).await;
    }

    /// Waits until exactly `n` hosts hold a live lease.
    pub async fn wait_hosts_exactly(&self, n: usize, secs: u64) {
        self.wait_live_hosts(secs, |live| live == n).await;
    }

    async fn wait_live_hosts(&self, secs: u64, done: impl Fn(usize) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let live = self.broker.hosts().await.map(|h| h.len()).unwrap_or(0);
            if done(live) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{live} hosts live after {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stores a module of target/tasks/.
    pub async fn upload(&self, module: &str) -> ModuleHash {
        let bytes = std::fs::read(task_module(module)).unwrap();
        self.broker.put_module(&bytes).await.unwrap().0
    }

    /// Queues calls now.
    pub async fn submit(&self, calls: &[Call]) {
        self.broker.submit(calls, None).await.unwrap();
    }

    /// Waits for a final envelope, as a client would: retrying while Redis
    /// is unreachable (the connection comes back by itself).
    pub async fn wait(&self, id: &str, secs: u64) -> Envelope {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.broker.wait(id, Some(left)).await {
                Ok(Some(env)) => return env,
                Ok(None) => panic!("no result for {id} within {secs} s"),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("wait for {id}: {e}"),
            }
        }
    }

    /// The call's current state.
    pub async fn state(&self, id: &str) -> State {
        self.broker.status(id).await.unwrap().unwrap().state
    }

    /// Polls (across process boundaries, with a deadline) until `id` is in
    /// `state`; Redis errors count as "not yet".
    pub async fn wait_state(&self, id: &str, state: State, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(env)) = self.broker.status(id).await
                && env.state == state
            {
                return;
            }
            assert!(Instant::now() < deadline, "{id} never reached {state}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many hosts logged starting `id` (each start is one execution).
    pub fn starts_of(&self, id: &str) -> usize {
        self.hosts
            .iter()
            .map(|h| {
                h.log()
                    .lines()
                    .filter(|l| l.contains("call started") && l.contains(id))
                    .count()
            })
            .sum()
    }

    /// The stats of one queue, as `wasq stats --json` prints them.
    pub fn stats(&self, queue: &str) -> Value {
        let all = self.json(&["stats", "--json"]);
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["queue"] == queue)
            .unwrap_or_else(|| panic!("queue {queue} not in {all}"))
            .clone()
    }
}

/// A call of `task` on the default queue.
pub fn call(module: ModuleHash, task: &str, args: Value) -> Call {
    Call {
        id: new_call_id(),
        module,
        task: task.into(),
        args: serde_json::value::to_raw_value(&args).unwrap(),
        limits: CallLimits::default(),
        attempt: 1,
        submitted_ms: now_ms(),
        retry: None,
        queue: "default".into(),
    }
}
