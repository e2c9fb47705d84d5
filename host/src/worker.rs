//! The worker loop of `wasq host run`: claim calls from a broker, run them in
//! the sandbox, publish their envelopes.
//!
//! - It claims only as many calls as it has free slots, so calls it cannot
//!   start yet stay in the queue for other hosts.
//! - Sleeping guests do not hold a thread: every call is an async task.
//! - A heartbeat task renews the host's lease and keeps its running entries
//!   fresh, so a long call on a live host is never reclaimed; it also checks
//!   running calls for revocation.
//! - Results are published in batches: finished calls queue up while a
//!   `complete` round trip is in flight and go out together in the next one.
//! - Broker errors (Redis gone) never lose a call: claims back off and retry;
//!   a result that cannot be published is retried until it is, while the
//!   heartbeat keeps the entry ours.
//! - On shutdown it stops claiming, lets running calls finish for a grace
//!   period, then interrupts the rest and releases them to the queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::{debug, info, instrument, warn};
use wasq_broker::{
    Broker, Delivery, Envelope, ErrorKind, HostInfo, HostStats, StartOutcome, TaskError, now_ms,
};

use crate::{Cancel, RunOutcome, Sandbox};

/// Default time a claim blocks waiting for calls.
pub const DEFAULT_CLAIM_BLOCK: Duration = Duration::from_secs(1);
/// Default grace period for running calls on shutdown.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Default interval between revocation checks of running calls.
pub const DEFAULT_REVOKE_CHECK: Duration = Duration::from_millis(250);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unique id of this host process.
    pub host_id: String,
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Calls run at once; also the most claimed at once.
    pub concurrency: usize,
    /// How long one claim blocks waiting for calls.
    pub claim_block: Duration,
    /// Heartbeat interval; keep it well under the broker's lease (a third).
    pub heartbeat: Duration,
    /// How long running calls may finish after shutdown begins.
    pub grace: Duration,
    /// How often running calls are checked for revocation.
    pub revoke_check: Duration,
}

impl WorkerConfig {
    /// A config for `queues` with `concurrency` slots and defaults elsewhere;
    /// the heartbeat is a third of `lease`.
    pub fn new(queues: Vec<String>, concurrency: usize, lease: Duration) -> Self {
        Self {
            host_id: format!("{}-{:04x}", crate::default_host_name(), rand_u16()),
            queues,
            concurrency: concurrency.max(1),
            claim_block: DEFAULT_CLAIM_BLOCK,
            heartbeat: lease / 3,
            grace: DEFAULT_GRACE,
            revoke_check: DEFAULT_REVOKE_CHECK,
        }
    }
}

fn rand_u16() -> u16 {
    rand::random()
}

/// Live counters of a worker, shared with the heartbeat and health checks.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Calls running now.
    pub in_flight: AtomicUsize,
    /// Calls finished.
    pub done: AtomicU64,
    /// Calls that ended failed.
    pub failed: AtomicU64,
    /// Fuel used by all calls.
    pub fuel_used: AtomicU64,
    /// Calls handed back on shutdown.
    pub released: AtomicU64,
    /// Last time the consume loop went round, ms since the Unix epoch.
    pub last_loop_ms: AtomicU64,
    /// Last time the broker answered a claim or a heartbeat, ms since the
    /// Unix epoch.
    pub last_broker_ok_ms: AtomicU64,
    /// Broker errors seen.
    pub broker_errors: AtomicU64,
    /// Claim round trips that returned (with calls or empty).
    pub claims: AtomicU64,
    /// Deliveries those claims handed out.
    pub claimed: AtomicU64,
    /// Final outcomes by state and error kind, retries, and run times, for
    /// `/metrics` (see [`crate::CallMetrics`]).
    pub calls: crate::CallMetrics,
}

impl WorkerStats {
    fn snapshot(&self) -> HostStats {
        HostStats {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            fuel_used: self.fuel_used.load(Ordering::Relaxed),
            heartbeat_ms: now_ms(),
        }
    }

    /// Whether the host is consuming: its loop went round within `stall` (it
    /// goes round at least once per claim block, even when idle or full) and
    /// the broker answered a claim or heartbeat within `stall`. A host that is
    /// alive but stuck, or cut off from Redis, turns unhealthy.
    pub fn healthy(&self, stall: Duration) -> bool {
        let now = now_ms();
        let stall = stall.as_millis() as u64;
        let fresh = |t: &AtomicU64| now.saturating_sub(t.load(Ordering::Relaxed)) <= stall;
        fresh(&self.last_loop_ms) && fresh(&self.last_broker_ok_ms)
    }
}

struct Running {
    delivery: Delivery,
    cancel: Cancel,
    since: Instant,
    /// Its envelope is with the publisher: the entry stays (and is kept
    /// fresh by heartbeats) until it is published, but there is nothing to
    /// interrupt, check for revocation or hand back on shutdown.
    finished: bool,
}

/// A worker host: a broker, a sandbox and a config.
pub struct Worker<B> {
    broker: Arc<B>,
    sandbox: Sandbox,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    slot_freed: Arc<Notify>,
}

impl<B: Broker> Worker<B> {
    /// A worker over `broker` running calls in `sandbox`.
    pub fn new(broker: Arc<B>, sandbox: Sandbox, config: WorkerConfig) -> Self {
        Self {
            broker,
            sandbox,
            config,
            stats: Arc::default(),
            running: Arc::default(),
            slot_freed: Arc::new(Notify::new()),
        }
    }

    /// Its live counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Its config.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Runs until `shutdown` completes, then drains (see the module docs).
    ///
    /// # Errors
    /// Only if the host cannot register at all before shutdown; every later
    /// broker error is retried.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> wasq_broker::Result<()> {
        let info = HostInfo {
            id: self.config.host_id.clone(),
            name: self.sandbox.config().host_name.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            queues: self.config.queues.clone(),
            concurrency: self.config.concurrency,
            started_ms: now_ms(),
        };
        tokio::pin!(shutdown);
        let mut backoff = Backoff::new();
        loop {
            match self.broker.register_host(&info).await {
                Ok(()) => break,
                Err(e) => {
                    self.stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                    warn!(cause = %e, "cannot register host; retrying");
                    tokio::select! {
                        () = &mut shutdown => return Err(e),
                        () = tokio::time::sleep(backoff.next()) => {}
                    }
                }
            }
        }
        self.stats
            .last_broker_ok_ms
            .store(now_ms(), Ordering::Relaxed);
        info!(host = %self.config.host_id, queues = ?self.config.queues, concurrency = self.config.concurrency, "host online");

        let (done_tx, done_rx) = mpsc::unbounded_channel::<(Delivery, Envelope)>();
        let publisher = tokio::spawn(publish_loop(
            self.broker.clone(),
            done_rx,
            self.running.clone(),
        ));
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.broker.clone(),
            self.config.clone(),
            self.stats.clone(),
            self.running.clone(),
        ));

        let mut tasks = tokio::task::JoinSet::new();
        let mut backoff = Backoff::new();
        loop {
            self.stats.last_loop_ms.store(now_ms(), Ordering::Relaxed);
            while tasks.try_join_next().is_some() {}
            let free = self
                .config
                .concurrency
                .saturating_sub(self.stats.in_flight.load(Ordering::SeqCst));
            if free == 0 {
                tokio::select! {
                    () = &mut shutdown => break,
                    () = self.slot_freed.notified() => continue,
                    // Wake now and then so the health signal stays fresh.
                    () = tokio::time::sleep(self.config.claim_block) => continue,
                }
            }
            let claimed = tokio::select! {
                () = &mut shutdown => break,
                r = self.broker.claim(&self.config.host_id, &self.config.queues, free, self.config.claim_block) => r,
            };
            let deliveries = match claimed {
                Ok(d) => {
                    backoff.reset();
                    self.stats
                        .last_broker_ok_ms
                        .store(now_ms(), Ordering::Relaxed);
                    self.stats.claims.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .claimed
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                    d
                }
                Err(e) => {
                    self.stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next();
                    warn!(cause = %e, retry_in = ?wait, "claim failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            for delivery in deliveries {
                let cancel = Cancel::new();
                self.stats.in_flight.fetch_add(1, Ordering::SeqCst);
                self.running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(
                        delivery.token.clone(),
                        Running {
                            delivery: delivery.clone(),
                            cancel: cancel.clone(),
                            since: Instant::now(),
                            finished: false,
                        },
                    );
                tasks.spawn(execute(
                    self.broker.clone(),
                    self.sandbox.clone(),
                    self.config.host_id.clone(),
                    delivery,
                    cancel,
                    self.stats.clone(),
                    self.running.clone(),
                    self.slot_freed.clone(),
                    done_tx.clone(),
                ));
            }
            // Let the calls just spawned start before the next claim goes
            // out: otherwise that claim (a blocking read, when the queue is
            // drained) is sent first and the new tasks wait for it, or for
            // another thread to steal them (about 40 µs of a round trip's
            // 0.7–0.9 ms here, measured with timestamps along the path).
            tokio::task::yield_now().await;
        }

        // Shutdown: no more claims. Let running calls finish for the grace period.
        let in_flight = self.stats.in_flight.load(Ordering::SeqCst);
        info!(in_flight, grace = ?self.config.grace, "shutting down: finishing running calls");
        let deadline = Instant::now() + self.config.grace;
        while !tasks.is_empty() {
            match tokio::time::timeout_at(deadline.into(), tasks.join_next()).await {
                Ok(_) => {}
                Err(_) => break,
            }
        }
        // Interrupt and hand back what is left, so another host takes it at
        // once. Calls that finished stay for the publisher: releasing them
        // would throw their results away (the release takes the token).
        let mut left: Vec<Delivery> = Vec::new();
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, r| {
                if r.finished {
                    return true;
                }
                r.cancel.cancel();
                left.push(r.delivery.clone());
                false
            });
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        for d in &left {
            match self.broker.release(d).await {
                Ok(_) => {
                    self.stats.released.fetch_add(1, Ordering::Relaxed);
                    info!(call_id = %d.call.id, "released unfinished call to its queue");
                }
                Err(e) => {
                    warn!(call_id = %d.call.id, cause = %e, "cannot release call; it will be reclaimed after the lease")
                }
            }
        }
        drop(done_tx);
        // Publish what finished; give up only if the broker stays away.
        let _ = tokio::time::timeout(Duration::from_secs(10), publisher).await;
        heartbeat.abort();
        if let Err(e) = self.broker.deregister_host(&self.config.host_id).await {
            warn!(cause = %e, "cannot deregister host; its lease will expire");
        }
        info!(host = %self.config.host_id, "host offline");
        Ok(())
    }
}

/// One call, from its start (usually done by the claim) to handing its
/// envelope to the publisher.
#[allow(clippy::too_many_arguments)]
#[instrument(skip_all, fields(call_id = %delivery.call.id, task = %delivery.call.task, attempt = delivery.call.attempt))]
async fn execute<B: Broker>(
    broker: Arc<B>,
    sandbox: Sandbox,
    host_id: String,
    delivery: Delivery,
    cancel: Cancel,
    stats: Arc<WorkerStats>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    slot_freed: Arc<Notify>,
    done: mpsc::UnboundedSender<(Delivery, Envelope)>,
) {
    let forget = |running: &Mutex<HashMap<String, Running>>| {
        running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&delivery.token);
    };
    let finish_slot = || {
        stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        slot_freed.notify_one();
    };
    // Claims start what they hand out; only a delivery the claim could not
    // start costs a `start` round trip.
    let mut backoff = Backoff::new();
    let started = match delivery.started {
        Some(outcome) => Some(outcome),
        None => loop {
            match broker.start(&delivery, &host_id).await {
                Ok(s) => break Some(s),
                Err(e) if e.is_transient() && !cancel.is_cancelled() => {
                    stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => {
                    warn!(cause = %e, "cannot start call; leaving it for redelivery");
                    break None;
                }
            }
        },
    };
    if started != Some(StartOutcome::Run) {
        debug!(outcome = ?started, "not running call");
        forget(&running);
        finish_slot();
        return;
    }
    let call = &delivery.call;
    info!(call_id = %call.id, deliveries = delivery.deliveries, "call started");
    let limits = sandbox.limits().restrict(&call.limits);
    let broker_down = std::sync::atomic::AtomicBool::new(false);
    let module = sandbox
        .load(call.module, || async {
            match broker.get_module(&call.module).await {
                Ok(Some(bytes)) => Ok(bytes),
                Ok(None) => Err(TaskError::new(
                    ErrorKind::ModuleNotFound,
                    format!("no module {} is stored", call.module),
                )),
                Err(e) => {
                    broker_down.store(true, Ordering::Relaxed);
                    Err(TaskError::new(
                        ErrorKind::ModuleNotFound,
                        format!("cannot fetch module: {e}"),
                    ))
                }
            }
        })
        .await;
    if broker_down.load(Ordering::Relaxed) {
        // Not the call's fault: hand it back for another delivery.
        warn!("cannot fetch the module from the broker; releasing the call");
        forget(&running);
        finish_slot();
        if let Err(e) = broker.release(&delivery).await {
            warn!(cause = %e, "cannot release call; it will be reclaimed after the lease");
        }
        return;
    }
    let outcome = match module {
        Ok(m) => {
            sandbox
                .run_json(&m, &call.task, &call.args, &limits, &cancel)
                .await
        }
        Err(e) => RunOutcome::failed(e),
    };
    let env = outcome.into_envelope(call.id.clone(), call.attempt, host_id.clone());
    stats.fuel_used.fetch_add(env.fuel_used, Ordering::Relaxed);
    finish_slot();

    if let (Some(err), Some(policy)) = (&env.error, &call.retry)
        && err.kind.is_retryable()
        && call.attempt <= policy.retries
    {
        let delay = policy.delay(call.attempt + 1);
        let mut backoff = Backoff::new();
        loop {
            match broker.retry(&delivery, &env, delay).await {
                Ok(_) => break,
                Err(e) if e.is_transient() => {
                    stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => {
                    warn!(cause = %e, "cannot schedule retry");
                    break;
                }
            }
        }
        info!(kind = %err.kind, next_attempt = call.attempt + 1, ?delay, "task failed; retrying");
        stats.calls.record_retry(&env);
        forget(&running);
        return;
    }
    // The publisher forgets the delivery once the envelope is out. A call
    // no longer in `running` was taken back by a shutdown past its grace
    // (interrupted, to be released to its queue): what the interruption
    // produced is not its result and must not be published.
    {
        let mut running = running.lock().unwrap_or_else(|e| e.into_inner());
        match running.get_mut(&delivery.token) {
            Some(r) => r.finished = true,
            None => {
                debug!("call handed back on shutdown; dropping its interrupted outcome");
                return;
            }
        }
    }
    stats.done.fetch_add(1, Ordering::Relaxed);
    if !env.succeeded() {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    stats.calls.record_final(&env);
    let _ = done.send((delivery, env));
}

/// Publishes finished envelopes in batches: one `complete` for everything
/// that finished since the last one.
async fn publish_loop<B: Broker>(
    broker: Arc<B>,
    mut rx: mpsc::UnboundedReceiver<(Delivery, Envelope)>,
    running: Arc<Mutex<HashMap<String, Running>>>,
) {
    const MAX_BATCH: usize = 256;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut backoff = Backoff::new();
        loop {
            match broker.complete(&batch).await {
                Ok(accepted) => {
                    for ((d, _), ok) in batch.iter().zip(accepted) {
                        if !ok {
                            debug!(call_id = %d.call.id, "result not accepted (stale delivery or already final)");
                        }
                    }
                    break;
                }
                Err(e) => {
                    let wait = backoff.next();
                    warn!(cause = %e, calls = batch.len(), retry_in = ?wait, "cannot publish results; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        let mut r = running.lock().unwrap_or_else(|e| e.into_inner());
        for (d, _) in batch.drain(..) {
            r.remove(&d.token);
        }
    }
}

async fn heartbeat_loop<B: Broker>(
    broker: Arc<B>,
    config: WorkerConfig,
    stats: Arc<WorkerStats>,
    running: Arc<Mutex<HashMap<String, Running>>>,
) {
    let mut beat = tokio::time::interval(config.heartbeat.max(Duration::from_millis(10)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut revoke = tokio::time::interval(config.revoke_check.max(Duration::from_millis(10)));
    revoke.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = beat.tick() => {
                let deliveries: Vec<Delivery> = running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|r| r.delivery.clone())
                    .collect();
                match broker.heartbeat(&config.host_id, &stats.snapshot(), &deliveries).await {
                    Ok(()) => stats.last_broker_ok_ms.store(now_ms(), Ordering::Relaxed),
                    Err(e) => {
                        stats.broker_errors.fetch_add(1, Ordering::Relaxed);
                        warn!(cause = %e, "heartbeat failed");
                    }
                }
            }
            _ = revoke.tick() => {
                let ids: Vec<(String, Cancel)> = running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    // Short calls finish before a check would matter; only
                    // calls running longer than one interval cost a round trip.
                    .filter(|r| !r.finished && !r.cancel.is_cancelled() && r.since.elapsed() >= config.revoke_check)
                    .map(|r| (r.delivery.call.id.clone(), r.cancel.clone()))
                    .collect();
                for (id, cancel) in ids {
                    if let Ok(true) = broker.is_revoked(&id).await {
                        info!(call_id = %id, "revoked while running; interrupting");
                        cancel.cancel();
                    }
                }
            }
        }
    }
}

/// Exponential backoff with jitter for broker errors: 50 ms doubling to 5 s.
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            next: Duration::from_millis(50),
        }
    }

    fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }

    fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(5));
        let jitter = f64::from(rand_u16()) / f64::from(u16::MAX);
        d / 2 + (d / 2).mul_f64(jitter)
    }
}
