//! Benchmarks through Redis: in-process hosts (`Worker` over a `RedisBroker`
//! each) and a client that submits and waits as a real one would; a real
//! `wasq host run` process for memory.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use wasq_broker::{
    Broker, BrokerConfig, Call, CallLimits, Envelope, ModuleHash, RedisBroker, new_call_id, now_ms,
};

use super::report::{ColdStart, Memory, Scaling, Throughput};
use super::sandbox_cost::{bench_sandbox, scratch_dir};
use super::stats::{MachineCpu, median, process_cpu, rss_bytes};
use wasq_host::{Sandbox, Worker, WorkerConfig};

/// How long any one result may take before the benchmark gives up.
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long benchmark results stay in Redis if the run cannot clean up.
const RESULT_TTL: Duration = Duration::from_secs(600);

/// Where the benchmark's Redis is.
#[derive(Debug, Clone)]
pub struct Target {
    /// Redis URL.
    pub url: String,
    /// Key prefix of this run; everything it writes is under it.
    pub prefix: String,
}

impl Target {
    /// A broker connection (each host gets its own, as separate hosts would).
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub async fn connect(&self) -> anyhow::Result<RedisBroker> {
        let config = BrokerConfig {
            result_ttl: RESULT_TTL,
            ..BrokerConfig::default()
        };
        Ok(RedisBroker::connect(&self.url, &self.prefix, config).await?)
    }
}

/// A plain Redis connection for what the broker does not offer: the server's
/// own CPU counters and deleting this run's keys.
pub struct RedisProbe {
    conn: redis::aio::MultiplexedConnection,
}

impl RedisProbe {
    /// Connects.
    ///
    /// # Errors
    /// If Redis cannot be reached.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).context("invalid redis url")?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to redis")?;
        Ok(Self { conn })
    }

    /// CPU time (user + system) redis-server used so far, from `INFO cpu`.
    pub async fn cpu(&self) -> Option<Duration> {
        let mut conn = self.conn.clone();
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut conn)
            .await
            .ok()?;
        let field = |name: &str| -> Option<f64> {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
        };
        Some(Duration::from_secs_f64(
            field("used_cpu_sys")? + field("used_cpu_user")?,
        ))
    }

    /// Deletes every key under `prefix:` (SCAN + UNLINK; never FLUSHALL).
    /// Returns how many it deleted.
    ///
    /// # Errors
    /// On Redis errors.
    pub async fn purge(&self, prefix: &str) -> anyhow::Result<u64> {
        let mut pattern = String::new();
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":*");
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// In-process hosts, running until [`Hosts::stop`].
pub struct Hosts {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<wasq_broker::Result<()>>>,
    /// The sandboxes of the hosts (one if shared).
    pub sandboxes: Vec<Sandbox>,
}

/// How to start in-process hosts.
#[derive(Debug, Clone)]
pub struct HostSetup {
    /// Hosts.
    pub hosts: usize,
    /// Concurrency of each.
    pub concurrency: usize,
    /// One `Sandbox` for all, or one each.
    pub shared_sandbox: bool,
    /// Queue they consume.
    pub queue: String,
    /// Disk cache of their sandboxes.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Hosts {
    /// Starts the hosts and waits until they are registered.
    ///
    /// # Errors
    /// If a sandbox cannot be built, Redis cannot be reached or the hosts do
    /// not register within 10 s.
    pub async fn start(
        target: &Target,
        setup: &HostSetup,
        client: &RedisBroker,
    ) -> anyhow::Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let pool = u32::try_from(setup.concurrency)
            .unwrap_or(u32::MAX)
            .saturating_add(4);
        let shared = if setup.shared_sandbox {
            let slots = pool.saturating_mul(u32::try_from(setup.hosts.max(1)).unwrap_or(u32::MAX));
            Some(bench_sandbox(slots, setup.cache_dir.as_deref())?)
        } else {
            None
        };
        let mut sandboxes = Vec::new();
        let mut tasks = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..setup.hosts.max(1) {
            let sandbox = match &shared {
                Some(s) => s.clone(),
                None => bench_sandbox(pool, setup.cache_dir.as_deref())?,
            };
            if !setup.shared_sandbox || sandboxes.is_empty() {
                sandboxes.push(sandbox.clone());
            }
            let broker = Arc::new(target.connect().await?);
            let mut config = WorkerConfig::new(
                vec![setup.queue.clone()],
                setup.concurrency,
                wasq_broker::DEFAULT_LEASE,
            );
            config.grace = Duration::from_secs(5);
            ids.push(config.host_id.clone());
            let worker = Worker::new(broker, sandbox, config);
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(worker.run(async move {
                let _ = rx.wait_for(|s| *s).await;
            })));
        }
        let hosts = Self {
            stop,
            tasks,
            sandboxes,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let live = client.hosts().await?;
            if ids.iter().all(|id| live.iter().any(|(h, _)| &h.id == id)) {
                break;
            }
            if Instant::now() >= deadline {
                hosts.stop().await;
                bail!("the in-process hosts did not register within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let every host reach its blocking claim.
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(hosts)
    }

    /// Stops the hosts and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn add_call(module: ModuleHash, queue: &str, x: i64) -> Call {
    call(module, queue, "add", &format!("[{x},{x}]"))
}

fn call(module: ModuleHash, queue: &str, task: &str, args: &str) -> Call {
    Call {
        id: new_call_id(),
        module,
        task: task.to_string(),
        args: serde_json::value::RawValue::from_string(args.to_string())
            .expect("benchmark args are valid JSON"),
        limits: CallLimits::default(),
        attempt: 1,
        submitted_ms: now_ms(),
        retry: None,
        queue: queue.to_string(),
    }
}

fn check(env: Option<Envelope>, id: &str, expected: &Value) -> anyhow::Result<()> {
    let env = env.with_context(|| format!("no result for call {id} within {RESULT_TIMEOUT:?}"))?;
    if let Some(e) = &env.error {
        bail!("call {id} failed: {e}");
    }
    ensure!(
        &env.result == expected,
        "call {id} returned {}, expected {expected}",
        env.result
    );
    Ok(())
}

/// Waits for calls in the order they come from `ids`, as a client collecting
/// a batch of results does ([`Broker::wait_many`]): the ids at hand, up to
/// 512, in one wait, `waiters` such waits at a time; checks each result.
async fn wait_all(
    client: Arc<RedisBroker>,
    mut ids: mpsc::UnboundedReceiver<(String, Value)>,
    waiters: usize,
) -> anyhow::Result<usize> {
    let stream = futures::stream::poll_fn(move |cx| ids.poll_recv(cx));
    let mut results = std::pin::pin!(
        stream
            .ready_chunks(512)
            .map(|chunk| {
                let client = client.clone();
                async move {
                    let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
                    let envs = client.wait_many(&ids, Some(RESULT_TIMEOUT)).await?;
                    for ((id, expected), env) in chunk.iter().zip(envs) {
                        check(env, id, expected)?;
                    }
                    anyhow::Ok(chunk.len())
                }
            })
            .buffered(waiters.max(1))
    );
    let mut n = 0;
    while let Some(r) = results.next().await {
        n += r?;
    }
    Ok(n)
}

/// Submits `calls` calls of `add(i, i)` in batches of `batch` while waiting
/// for (and checking) every result; measures the whole.
///
/// # Errors
/// On broker errors, a wrong result, or a result not arriving.
pub async fn throughput(
    client: &Arc<RedisBroker>,
    probe: Option<&RedisProbe>,
    module: ModuleHash,
    queue: &str,
    calls: usize,
    batch: usize,
    waiters: usize,
) -> anyhow::Result<Throughput> {
    let (tx, rx) = mpsc::unbounded_channel();
    let waiter = tokio::spawn(wait_all(client.clone(), rx, waiters));
    let redis0 = match probe {
        Some(p) => p.cpu().await,
        None => None,
    };
    let cpu0 = process_cpu();
    let machine0 = MachineCpu::now();
    let started = Instant::now();
    let mut i = 0usize;
    while i < calls {
        let n = batch.max(1).min(calls - i);
        let chunk: Vec<Call> = (i..i + n)
            .map(|x| add_call(module, queue, x as i64))
            .collect();
        client.submit(&chunk, None).await?;
        for (x, c) in (i..i + n).zip(chunk) {
            let _ = tx.send((c.id, json!(2 * x as i64)));
        }
        i += n;
    }
    drop(tx);
    let submitted = started.elapsed();
    let done = waiter.await.context("the waiting task died")??;
    let wall = started.elapsed();
    let cpu1 = process_cpu();
    let machine1 = MachineCpu::now();
    let redis1 = match probe {
        Some(p) => p.cpu().await,
        None => None,
    };
    ensure!(done == calls, "{done} of {calls} results came back");
    let per_call_us = |d: Duration| d.as_secs_f64() * 1e6 / calls.max(1) as f64;
    Ok(Throughput {
        calls,
        seconds: wall.as_secs_f64(),
        per_s: calls as f64 / wall.as_secs_f64(),
        submit_per_s: calls as f64 / submitted.as_secs_f64(),
        process_cpu_us_per_call: cpu0
            .zip(cpu1)
            .map(|(a, b)| per_call_us(b.saturating_sub(a))),
        redis_cpu_us_per_call: redis0
            .zip(redis1)
            .map(|(a, b)| per_call_us(b.saturating_sub(a))),
        machine_busy_cores: machine0
            .zip(machine1)
            .map(|(a, b)| a.busy_cores_until(&b, wall)),
    })
}

/// `n` sequential round trips: submit one `add(1, 2)` and wait for it, as
/// a remote call does ([`Broker::submit_wait`]); the time of each.
///
/// # Errors
/// On broker errors or a wrong result.
pub async fn latency_samples(
    client: &RedisBroker,
    module: ModuleHash,
    queue: &str,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    let expected = json!(3);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let c = call(module, queue, "add", "[1,2]");
        let started = Instant::now();
        let env = client.submit_wait(&c, Some(RESULT_TIMEOUT)).await?;
        samples.push(started.elapsed());
        check(env, &c.id, &expected)?;
    }
    Ok(samples)
}

/// The floor under a round trip: its shape through Redis with nothing of
/// wasq in it. `n` times, a client sends, in one pipeline on a connection of
/// its own, an `XADD` to a stream and an `XREAD BLOCK` on a reply stream; a
/// "host" task blocked in `XREADGROUP` on that stream wakes, and `XADD`s the
/// reply on another connection, which wakes the client. No scripts, no
/// JSON, no sandbox: two Redis hops each way and the tokio wake-ups, as in
/// [`latency_samples`]. Keys under `prefix`.
///
/// # Errors
/// On Redis errors.
pub async fn latency_floor(url: &str, prefix: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let client = redis::Client::open(url).context("invalid redis url")?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESULT_TIMEOUT));
    let connect = || client.get_multiplexed_async_connection_with_config(&config);
    let (mut host_read, mut host_write, mut caller) =
        (connect().await?, connect().await?, connect().await?);
    let stream = format!("{prefix}:floor:calls");
    let _: redis::Value = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("hosts")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut host_read)
        .await?;
    let host = {
        let stream = stream.clone();
        let prefix = prefix.to_string();
        tokio::spawn(async move {
            for _ in 0..n {
                let got: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("hosts")
                    .arg("h")
                    .arg("COUNT")
                    .arg(1)
                    .arg("BLOCK")
                    .arg(RESULT_TIMEOUT.as_millis() as u64)
                    .arg("STREAMS")
                    .arg(&stream)
                    .arg(">")
                    .query_async(&mut host_read)
                    .await?;
                let Some(entry) = got.keys.first().and_then(|k| k.ids.first()) else {
                    bail!("the floor's host read nothing");
                };
                let i: u64 = entry.get("i").context("no i in the floor's call")?;
                let _: redis::Value = redis::pipe()
                    .cmd("XADD")
                    .arg(format!("{prefix}:floor:reply:{i}"))
                    .arg("*")
                    .arg("r")
                    .arg(i)
                    .cmd("XACK")
                    .arg(&stream)
                    .arg("hosts")
                    .arg(&entry.id)
                    .query_async(&mut host_write)
                    .await?;
            }
            anyhow::Ok(())
        })
    };
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let started = Instant::now();
        let (_, reply): (redis::Value, redis::streams::StreamReadReply) = redis::pipe()
            .cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("i")
            .arg(i)
            .cmd("XREAD")
            .arg("BLOCK")
            .arg(RESULT_TIMEOUT.as_millis() as u64)
            .arg("STREAMS")
            .arg(format!("{prefix}:floor:reply:{i}"))
            .arg("0-0")
            .query_async(&mut caller)
            .await?;
        samples.push(started.elapsed());
        ensure!(
            !reply.keys.is_empty(),
            "round trip {i} of the floor timed out"
        );
    }
    host.await.context("the floor's host task died")??;
    Ok(samples)
}

/// Warms hosts up: `n` calls through the whole path (the first compiles).
///
/// # Errors
/// As [`throughput`].
pub async fn warm_up(
    client: &Arc<RedisBroker>,
    module: ModuleHash,
    queue: &str,
    n: usize,
) -> anyhow::Result<()> {
    throughput(client, None, module, queue, n.max(1), 100, 16)
        .await
        .map(|_| ())
}

/// One submit-to-result round trip of `task` with `args`, in ms.
async fn one_call(
    client: &RedisBroker,
    module: ModuleHash,
    queue: &str,
    task: &str,
) -> anyhow::Result<f64> {
    let c = call(module, queue, task, "[]");
    let started = Instant::now();
    let env = client.submit_wait(&c, Some(RESULT_TIMEOUT)).await?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    check(env, &c.id, &Value::Null)?;
    Ok(ms)
}

/// Cold start of `wasm` (which must have a `noop` task) through a host:
/// never seen, then after a restart with the disk cache; `reps` times with a
/// fresh host and cache each time. Also the sandbox-only compile and
/// deserialize times.
///
/// # Errors
/// On broker errors, or if the host did not compile / hit its cache as expected.
pub async fn cold_start(
    target: &Target,
    client: &RedisBroker,
    wasm: &[u8],
    reps: usize,
) -> anyhow::Result<ColdStart> {
    let (module, _) = client.put_module(wasm).await?;
    let queue = "cold";
    let mut first = Vec::new();
    let mut restart = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..reps.max(1) {
        let dir = scratch_dir("cold")?;
        let setup = HostSetup {
            hosts: 1,
            concurrency: 4,
            shared_sandbox: true,
            queue: queue.into(),
            cache_dir: Some(dir.clone()),
        };
        let hosts = Hosts::start(target, &setup, client).await?;
        first.push(one_call(client, module, queue, "noop").await?);
        warm.push(one_call(client, module, queue, "noop").await?);
        // The optimised code reaches the disk cache in the background.
        hosts.sandboxes[0].settled().await;
        let stats = hosts.sandboxes[0].cache_stats();
        hosts.stop().await;
        ensure!(
            stats.compiled == 1 && stats.optimized == 1,
            "the first host did not compile (quick, then optimised) exactly once: {stats:?}"
        );

        let hosts = Hosts::start(target, &setup, client).await?;
        restart.push(one_call(client, module, queue, "noop").await?);
        let stats = hosts.sandboxes[0].cache_stats();
        hosts.stop().await;
        ensure!(
            stats.disk_hits == 1 && stats.compiled == 0,
            "the restarted host did not use its disk cache: {stats:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    let loads = super::sandbox_cost::load_times(wasm, reps).await?;
    let med = |v: &[f64]| median(v).unwrap_or(f64::NAN);
    Ok(ColdStart {
        module_bytes: wasm.len(),
        reps: reps.max(1),
        first_call_ms: med(&first),
        after_restart_ms: med(&restart),
        warm_call_ms: med(&warm),
        compile_ms: med(&loads.quick),
        optimize_ms: med(&loads.optimized),
        deserialize_ms: med(&loads.deserialize),
    })
}

/// Throughput of 1 host, 2 hosts sharing a sandbox and 2 hosts with a
/// sandbox each, `calls` calls each, with the cores Redis (through `probe`)
/// and the machine kept busy in each.
///
/// # Errors
/// As [`throughput`].
#[allow(clippy::too_many_arguments)]
pub async fn scaling(
    target: &Target,
    client: &Arc<RedisBroker>,
    probe: Option<&RedisProbe>,
    module: ModuleHash,
    calls: usize,
    concurrency: usize,
    batch: usize,
    waiters: usize,
) -> anyhow::Result<Scaling> {
    let (mut per_s, mut redis_cores, mut machine_cores) = (Vec::new(), Vec::new(), Vec::new());
    for (hosts, shared) in [(1, true), (2, true), (2, false)] {
        let setup = HostSetup {
            hosts,
            concurrency,
            shared_sandbox: shared,
            queue: format!("scale{hosts}{}", if shared { "s" } else { "x" }),
            cache_dir: None,
        };
        let running = Hosts::start(target, &setup, client).await?;
        let r = async {
            warm_up(client, module, &setup.queue, 500).await?;
            throughput(client, probe, module, &setup.queue, calls, batch, waiters).await
        }
        .await;
        running.stop().await;
        let r = r?;
        per_s.push(r.per_s);
        redis_cores.push(r.redis_cpu_us_per_call.map(|us| us * r.per_s / 1e6));
        machine_cores.push(r.machine_busy_cores);
    }
    Ok(Scaling {
        calls,
        one_host_per_s: per_s[0],
        two_hosts_shared_per_s: per_s[1],
        two_hosts_separate_per_s: per_s[2],
        redis_cores,
        machine_cores,
    })
}

/// A `wasq host run` child process, stopped (SIGTERM, then SIGKILL) on drop.
struct HostProcess {
    child: tokio::process::Child,
    pid: String,
}

impl HostProcess {
    async fn stop(mut self) {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(&self.pid)
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    fn rss(&self) -> u64 {
        rss_bytes(&self.pid).unwrap_or(0)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// RSS of a real host process: idle, and during waves of sleeping calls
/// (`concurrency`, then 3 × `concurrency` of them, each sleeping `sleep_s`).
///
/// # Errors
/// If the host cannot be started or calls fail.
pub async fn memory(
    wasq: &Path,
    target: &Target,
    client: &Arc<RedisBroker>,
    module: ModuleHash,
    concurrency: usize,
    sleep_s: f64,
) -> anyhow::Result<Memory> {
    let queue = "memory";
    let child = tokio::process::Command::new(wasq)
        .args([
            "host",
            "run",
            "--redis",
            &target.url,
            "--prefix",
            &target.prefix,
            "--queue",
            queue,
        ])
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .args(["--result-ttl", "600", "--grace", "5"])
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", wasq.display()))?;
    let pid = child.id().context("the host exited at once")?.to_string();
    let host = HostProcess { child, pid };
    let r = async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let live = client.hosts().await?;
            if live.iter().any(|(h, _)| {
                h.queues.iter().any(|q| q == queue) && h.name.ends_with(&format!("/{}", host.pid))
            }) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the host process did not register within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = host.rss();
        warm_up(client, module, queue, 1).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle_warm = host.rss();
        let mut wave_calls = Vec::new();
        let mut peaks = Vec::new();
        let mut seconds = Vec::new();
        for n in [concurrency, 3 * concurrency] {
            let (peak, secs) = wave(client, module, queue, n, sleep_s, &host).await?;
            wave_calls.push(n);
            peaks.push(peak as f64 / MIB);
            seconds.push(secs);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let growth = peaks[1] / peaks[0];
        Ok(Memory {
            concurrency,
            idle_rss_mib: idle as f64 / MIB,
            idle_warm_rss_mib: idle_warm as f64 / MIB,
            wave_calls,
            wave_peak_rss_mib: peaks,
            wave_seconds: seconds,
            sleep_s,
            after_rss_mib: host.rss() as f64 / MIB,
            growth,
            bounded: growth <= 1.25,
        })
    }
    .await;
    host.stop().await;
    r
}

/// `n` sleeping calls at once; peak RSS of the host while they run, and how
/// long they took.
async fn wave(
    client: &Arc<RedisBroker>,
    module: ModuleHash,
    queue: &str,
    n: usize,
    sleep_s: f64,
    host: &HostProcess,
) -> anyhow::Result<(u64, f64)> {
    let calls: Vec<Call> = (0..n)
        .map(|i| {
            call(
                module,
                queue,
                "long_processing",
                &format!("[\"m{i}\",{sleep_s}]"),
            )
        })
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    for (i, c) in calls.iter().enumerate() {
        let _ = tx.send((c.id.clone(), json!(format!("processed m{i}"))));
    }
    drop(tx);
    let started = Instant::now();
    client.submit(&calls, None).await?;
    let waiter = tokio::spawn(wait_all(client.clone(), rx, 64));
    let mut peak = host.rss();
    while !waiter.is_finished() {
        peak = peak.max(host.rss());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = waiter.await.context("the waiting task died")??;
    ensure!(done == n, "{done} of {n} sleeping calls came back");
    Ok((peak, started.elapsed().as_secs_f64()))
}
