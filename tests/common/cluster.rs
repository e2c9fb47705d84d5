//! A cluster for end-to-end tests: a [`Deployment`] (redis-server, prefix,
//! temp dir, `wasq` processes) plus a Rust client of it, for tests that
//! submit and read calls themselves.

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use wasq_broker::{
    Broker, BrokerConfig, Call, CallLimits, Envelope, ModuleHash, RedisBroker, State, new_call_id,
    now_ms,
};

use super::{Deployment, describe, eventually, run, task_module};

/// A [`Deployment`] (its fields and methods are the cluster's) and a Rust
/// client of it, all stopped when dropped.
pub struct Cluster {
    pub deployment: Deployment,
    pub broker: Arc<RedisBroker>,
}

impl Deref for Cluster {
    type Target = Deployment;

    fn deref(&self) -> &Deployment {
        &self.deployment
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Deployment {
        &mut self.deployment
    }
}

impl Cluster {
    /// Starts redis-server and connects; no hosts yet.
    pub async fn start(test: &str) -> Self {
        let deployment = Deployment::start(test);
        let broker = Arc::new(
            RedisBroker::connect(
                &deployment.redis.url(),
                &deployment.prefix,
                BrokerConfig::default(),
            )
            .await
            .expect("connect"),
        );
        Self { deployment, broker }
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

    /// Starts `wasq host run` with extra flags; returns its index in `procs`.
    pub fn host(&mut self, extra: &[&str]) -> usize {
        let name = format!("host{}", self.procs.len());
        let args: Vec<&str> = ["host", "run"].iter().chain(extra).copied().collect();
        self.spawn(&name, &args)
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
        eventually(
            Duration::from_secs(secs),
            "hosts live",
            || async { self.broker.hosts().await.map(|h| h.len()).unwrap_or(0) },
            |live| done(*live),
        )
        .await;
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
        let _seen = eventually(
            Duration::from_secs(secs),
            &format!("{id} in state {state}"),
            || async { self.broker.status(id).await.map(|e| e.map(|e| e.state)) },
            |seen| matches!(seen, Ok(Some(s)) if *s == state),
        )
        .await;
    }

    /// How many hosts logged starting `id` (each start is one execution).
    pub fn starts_of(&self, id: &str) -> usize {
        self.procs
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
