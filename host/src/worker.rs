//! The worker loop of `wasq host run`: claim calls from a broker, run them in
//! the sandbox, publish their envelopes.
//!
//! - It claims only as many calls as it has free slots, so calls it cannot
//!   start yet stay in the queue for other hosts.
//! - Sleeping guests do not hold a thread: every call is an async task.
//! - A heartbeat task renews the host's lease and keeps its running entries
//!   fresh, so a long call on a live host is never reclaimed; nothing else
//!   shares that task. Should the host's lease lapse anyway and another host
//!   reclaim a call, the heartbeat hears of it and the call is interrupted
//!   here. A second task checks all running calls for revocation in one
//!   round trip.
//! - Results are published in batches: finished calls queue up while a
//!   `complete` round trip is in flight and go out together in the next one.
//! - Broker errors (Redis gone) never lose a call: claims back off and retry;
//!   a result that cannot be published for a transient reason is retried
//!   until it is, while the heartbeat keeps the entry ours. A result the
//!   broker refuses for good is left for redelivery.
//! - Nothing a call does wedges a slot: a panic while running it fails the
//!   call (kind `trap`, saying the host panicked) and frees the slot; a call
//!   that finds every instance slot in use is handed back to its queue.
//! - On shutdown it stops claiming, lets running calls finish for a grace
//!   period, then interrupts the rest and releases them to the queue.
//!
//! The claim loop and running one call are here; the tasks beside the loop
//! (publishing, heartbeats, revocation checks) are in `worker/background`.

mod background;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};
use tracing::{debug, error, info, instrument, warn};
use wasq_broker::{
    Broker, Delivery, Envelope, ErrorKind, HostInfo, HostStats, StartOutcome, TaskError, now_ms,
};

use crate::{Cancel, RunOutcome, Sandbox};

use background::{heartbeat_loop, publish_loop, revoke_loop};

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
    /// Calls whose execution panicked in the host (each ended failed).
    pub panics: AtomicU64,
    /// Calls interrupted here because another host reclaimed them (this
    /// host's heartbeats had lapsed).
    pub reclaimed: AtomicU64,
    /// Calls of new modules handed back because the compile backlog was full.
    pub compile_busy: AtomicU64,
    /// Results the broker refused for good (not a transient error): their
    /// calls are left for redelivery.
    pub unpublished: AtomicU64,
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
    /// Tests only: calls of this task panic inside the execution.
    #[cfg(test)]
    panic_on_task: Option<String>,
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
            #[cfg(test)]
            panic_on_task: None,
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
            limits: Some(*self.sandbox.limits()),
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
            self.stats.clone(),
        ));
        let heartbeat = tokio::spawn(heartbeat_loop(
            self.broker.clone(),
            self.config.clone(),
            self.stats.clone(),
            self.running.clone(),
        ));
        let revocations = tokio::spawn(revoke_loop(
            self.broker.clone(),
            self.config.clone(),
            self.running.clone(),
        ));
        let exec = Exec {
            broker: self.broker.clone(),
            sandbox: self.sandbox.clone(),
            host_id: self.config.host_id.clone(),
            stats: self.stats.clone(),
            running: self.running.clone(),
            slot_freed: self.slot_freed.clone(),
            done: done_tx,
            #[cfg(test)]
            panic_on_task: self.panic_on_task.clone(),
        };

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
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        delivery.token.clone(),
                        Running {
                            delivery: delivery.clone(),
                            cancel: cancel.clone(),
                            since: Instant::now(),
                            finished: false,
                        },
                    );
                tasks.spawn(execute(exec.clone(), delivery, cancel));
            }
            // Let the calls just spawned start before the next claim goes
            // out: otherwise that claim (a blocking read, when the queue is
            // drained) is sent first and the new tasks wait for it, or for
            // another thread to steal them, which adds to every call's
            // latency.
            tokio::task::yield_now().await;
        }

        // Shutdown: no more claims. Let running calls finish for the grace period.
        let in_flight = self.stats.in_flight.load(Ordering::SeqCst);
        info!(in_flight, grace = ?self.config.grace, "shutting down: finishing running calls");
        let deadline = Instant::now()
            .checked_add(self.config.grace)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 24 * 3600));
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
            .unwrap_or_else(PoisonError::into_inner)
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
        drop(exec);
        revocations.abort();
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

/// A call's slot: freed when its execution ends, however it ends (a panic
/// included), so a host never loses capacity.
struct Slot {
    stats: Arc<WorkerStats>,
    slot_freed: Arc<Notify>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.slot_freed.notify_one();
    }
}

/// A call's place in the running map: removed when its execution ends
/// unless its envelope went to the publisher (which removes it once
/// published). An execution that panics drops it too, so heartbeats stop
/// keeping the entry fresh and the call is redelivered after the lease.
struct Held {
    running: Arc<Mutex<HashMap<String, Running>>>,
    token: String,
    published: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.published {
            lock(&self.running).remove(&self.token);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What one call's execution needs from its worker.
struct Exec<B> {
    broker: Arc<B>,
    sandbox: Sandbox,
    host_id: String,
    stats: Arc<WorkerStats>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    slot_freed: Arc<Notify>,
    done: mpsc::UnboundedSender<(Delivery, Envelope)>,
    #[cfg(test)]
    panic_on_task: Option<String>,
}

impl<B> Clone for Exec<B> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
            sandbox: self.sandbox.clone(),
            host_id: self.host_id.clone(),
            stats: self.stats.clone(),
            running: self.running.clone(),
            slot_freed: self.slot_freed.clone(),
            done: self.done.clone(),
            #[cfg(test)]
            panic_on_task: self.panic_on_task.clone(),
        }
    }
}

/// One call, from its start (usually done by the claim) to handing its
/// envelope to the publisher.
#[instrument(skip_all, fields(call_id = %delivery.call.id, task = %delivery.call.task, attempt = delivery.call.attempt))]
async fn execute<B: Broker>(x: Exec<B>, delivery: Delivery, cancel: Cancel) {
    let slot = Slot {
        stats: x.stats.clone(),
        slot_freed: x.slot_freed.clone(),
    };
    let mut held = Held {
        running: x.running.clone(),
        token: delivery.token.clone(),
        published: false,
    };
    let broker = &x.broker;
    let stats = &x.stats;
    // A new module while enough are loading: back to the queue, where the
    // call waits without a slot (or goes to a host with room), instead of
    // waiting here for its compile.
    if x.sandbox.compile_backlog_full(&delivery.call.module) {
        debug!(module = %delivery.call.module, "compile backlog full; handing the call back");
        stats.compile_busy.fetch_add(1, Ordering::Relaxed);
        drop(slot);
        tokio::time::sleep(Backoff::new().next()).await;
        match broker.release(&delivery).await {
            Ok(_) => {
                stats.released.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(cause = %e, "cannot release call; it will be reclaimed after the lease")
            }
        }
        return;
    }
    // Claims start what they hand out; only a delivery the claim could not
    // start costs a `start` round trip.
    let mut backoff = Backoff::new();
    let started = match delivery.started {
        Some(outcome) => Some(outcome),
        None => loop {
            match broker.start(&delivery, &x.host_id).await {
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
        return;
    }
    let call = &delivery.call;
    info!(call_id = %call.id, deliveries = delivery.deliveries, "call started");
    let broker_down = std::sync::atomic::AtomicBool::new(false);
    // A panic while loading or running (a host bug, or an operator setting
    // that overflows) ends the call with a clear failure instead of leaving
    // it `running` with its slot taken.
    let run = std::panic::AssertUnwindSafe(async {
        #[cfg(test)]
        if x.panic_on_task.as_deref() == Some(call.task.as_str()) {
            panic!("injected panic for task {}", call.task);
        }
        let limits = x.sandbox.limits().restrict(&call.limits);
        let module = x
            .sandbox
            .load(call.module, || async {
                match broker.get_module(&call.module).await {
                    Ok(Some(bytes)) => Ok(bytes),
                    Ok(None) => Err(TaskError::new(
                        ErrorKind::ModuleNotFound,
                        format!("no module {} is stored", call.module),
                    )),
                    // Refused before a byte of it moved.
                    Err(e @ wasq_broker::Error::ModuleTooLarge { .. }) => {
                        Err(TaskError::new(ErrorKind::InvalidModule, e.to_string()))
                    }
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
        match module {
            Ok(m) => {
                x.sandbox
                    .run_json(&m, &call.task, &call.args, &limits, &cancel)
                    .await
            }
            Err(e) => RunOutcome::failed(e),
        }
    });
    let outcome = match futures::FutureExt::catch_unwind(run).await {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            error!(
                panic = message,
                "the host panicked while running a call; failing it"
            );
            stats.panics.fetch_add(1, Ordering::Relaxed);
            RunOutcome::failed(TaskError::new(
                ErrorKind::Trap,
                format!(
                    "host error, not the task's: the host panicked while running this call ({message})"
                ),
            ))
        }
    };
    if broker_down.load(Ordering::Relaxed) || outcome.host_busy {
        // Not the call's fault: hand it back for another delivery. A busy
        // host waits a moment first, so the call does not bounce straight
        // back to it.
        if outcome.host_busy {
            warn!("every instance slot is in use; handing the call back");
            tokio::time::sleep(Backoff::new().next()).await;
        } else {
            warn!("cannot fetch the module from the broker; releasing the call");
        }
        drop(slot);
        match broker.release(&delivery).await {
            Ok(_) => {
                stats.released.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(cause = %e, "cannot release call; it will be reclaimed after the lease")
            }
        }
        return;
    }
    let env = outcome.into_envelope(call.id.clone(), call.attempt, x.host_id.clone());
    stats.fuel_used.fetch_add(env.fuel_used, Ordering::Relaxed);
    drop(slot);

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
        return;
    }
    // The publisher forgets the delivery once the envelope is out. A call
    // no longer in `running` was taken back (interrupted by a shutdown past
    // its grace, to be released to its queue, or reclaimed by another host):
    // what the interruption produced is not its result and must not be
    // published.
    {
        let mut running = lock(&x.running);
        match running.get_mut(&delivery.token) {
            Some(r) => r.finished = true,
            None => {
                debug!("call taken back; dropping its interrupted outcome");
                return;
            }
        }
    }
    held.published = true;
    stats.done.fetch_add(1, Ordering::Relaxed);
    if !env.succeeded() {
        stats.failed.fetch_add(1, Ordering::Relaxed);
    }
    stats.calls.record_final(&env);
    let _ = x.done.send((delivery, env));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compilation, SandboxConfig};
    use serde_json::value::RawValue;
    use wasq_broker::{BrokerConfig, Call, CallLimits, LocalBroker, State, new_call_id};

    const GUEST: &str = include_str!("../tests/guests/basic.wat");

    fn broker(lease: Duration) -> Arc<LocalBroker> {
        Arc::new(LocalBroker::new(BrokerConfig {
            lease,
            ..BrokerConfig::default()
        }))
    }

    fn sandbox(compilation: Compilation, pool_size: u32) -> Sandbox {
        Sandbox::new(SandboxConfig {
            pool_size,
            compilation,
            ..SandboxConfig::default()
        })
        .expect("sandbox")
    }

    async fn submit(b: &LocalBroker, task: &str, limits: CallLimits) -> String {
        let module = b
            .put_module(&wat::parse_str(GUEST).unwrap())
            .await
            .unwrap()
            .0;
        let call = Call {
            id: new_call_id(),
            module,
            task: task.into(),
            args: RawValue::from_string("[]".into()).unwrap(),
            limits,
            attempt: 1,
            submitted_ms: now_ms(),
            retry: None,
            queue: "default".into(),
        };
        b.submit(std::slice::from_ref(&call), None).await.unwrap();
        call.id
    }

    async fn result(b: &LocalBroker, id: &str) -> Envelope {
        b.wait(id, Some(Duration::from_secs(20)))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("no result for {id} within 20 s"))
    }

    /// Runs `worker` until the returned sender is dropped or sent to.
    fn start(worker: Worker<LocalBroker>) -> tokio::sync::oneshot::Sender<()> {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(worker.run(async {
            let _ = stopped.await;
        }));
        stop
    }

    #[tokio::test]
    async fn a_panic_fails_the_call_and_frees_its_slot() {
        let b = broker(DEFAULT_LEASE_FOR_TESTS);
        let mut worker = Worker::new(
            b.clone(),
            sandbox(Compilation::Quick, 4),
            WorkerConfig::new(vec!["default".into()], 1, DEFAULT_LEASE_FOR_TESTS),
        );
        worker.panic_on_task = Some("nothing".into());
        let stats = worker.stats();
        let _stop = start(worker);

        let panicked = submit(&b, "nothing", CallLimits::default()).await;
        let env = result(&b, &panicked).await;
        assert_eq!(env.state, State::Failed);
        let err = env.error.unwrap();
        assert_eq!(err.kind, ErrorKind::Trap);
        assert!(err.message.contains("host panicked"), "{}", err.message);
        assert!(err.message.contains("injected panic"), "{}", err.message);
        // The only slot is free again: the next call runs.
        let next = submit(&b, "answer", CallLimits::default()).await;
        let env = result(&b, &next).await;
        assert_eq!(env.state, State::Succeeded, "{env:?}");
        assert_eq!(env.result, serde_json::json!(42));
        assert_eq!(stats.panics.load(Ordering::Relaxed), 1);
        assert_eq!(stats.in_flight.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_busy_pool_hands_calls_back_instead_of_failing_them() {
        let b = broker(DEFAULT_LEASE_FOR_TESTS);
        // Two slots of work, one instance slot: the second call finds the
        // pool exhausted while the first spins to its timeout.
        let worker = Worker::new(
            b.clone(),
            sandbox(Compilation::Optimized, 1),
            WorkerConfig::new(vec!["default".into()], 2, DEFAULT_LEASE_FOR_TESTS),
        );
        let stats = worker.stats();
        let _stop = start(worker);
        let limits = CallLimits {
            timeout: Some(Duration::from_millis(300)),
            ..CallLimits::default()
        };
        let ids = [
            submit(&b, "spin", limits).await,
            submit(&b, "spin", limits).await,
        ];
        for id in &ids {
            let env = result(&b, id).await;
            assert_eq!(
                env.error.as_ref().map(|e| e.kind),
                Some(ErrorKind::Timeout),
                "{env:?}"
            );
        }
        assert!(stats.released.load(Ordering::Relaxed) >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_reclaimed_elsewhere_is_interrupted_here() {
        let lease = Duration::from_millis(300);
        let b = broker(lease);
        let id = submit(&b, "spin", CallLimits::default()).await;
        let queues = vec!["default".to_string()];
        let a = b.claim("a", &queues, 1, Duration::ZERO).await.unwrap();
        assert_eq!(a.len(), 1);
        let a = a.into_iter().next().unwrap();
        // Host a stalls past its lease (nothing heartbeats for it) and host
        // b takes the call over.
        tokio::time::sleep(lease * 2).await;
        let taken = b.claim("b", &queues, 1, Duration::ZERO).await.unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].call.id, id);

        // Host a's heartbeat learns it and interrupts its copy.
        let cancel = Cancel::new();
        let running = Arc::new(Mutex::new(HashMap::from([(
            a.token.clone(),
            Running {
                delivery: a,
                cancel: cancel.clone(),
                since: Instant::now(),
                finished: false,
            },
        )])));
        let stats = Arc::new(WorkerStats::default());
        let mut config = WorkerConfig::new(queues, 1, lease);
        config.host_id = "a".into();
        let beat = tokio::spawn(heartbeat_loop(
            b.clone(),
            config,
            stats.clone(),
            running.clone(),
        ));
        tokio::time::timeout(Duration::from_secs(5), cancel.cancelled())
            .await
            .expect("the reclaimed call was not interrupted");
        assert!(lock(&running).is_empty());
        assert_eq!(stats.reclaimed.load(Ordering::Relaxed), 1);
        beat.abort();
    }

    #[tokio::test]
    async fn a_refused_result_does_not_stall_the_publisher() {
        let b = broker(DEFAULT_LEASE_FOR_TESTS);
        let queues = vec!["default".to_string()];
        let first = submit(&b, "answer", CallLimits::default()).await;
        let second = submit(&b, "answer", CallLimits::default()).await;
        let got = b.claim("h", &queues, 2, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 2);
        let running: Arc<Mutex<HashMap<String, Running>>> = Arc::default();
        let stats = Arc::new(WorkerStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_loop(b.clone(), rx, running, stats.clone()));
        for d in got {
            let mut env = Envelope::pending(d.call.id.clone(), State::Succeeded);
            env.result = serde_json::json!(42);
            if d.call.id == first {
                // Not final: the broker refuses it for good.
                env.state = State::Running;
            }
            tx.send((d, env)).unwrap();
        }
        let env = result(&b, &second).await;
        assert_eq!(env.state, State::Succeeded);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), publisher)
            .await
            .expect("the publisher kept retrying a refused result")
            .unwrap();
        assert_eq!(stats.unpublished.load(Ordering::Relaxed), 1);
        assert!(
            b.status(&first)
                .await
                .unwrap()
                .is_some_and(|e| !e.state.is_final())
        );
    }

    #[tokio::test]
    async fn a_timeout_past_the_clock_means_no_deadline() {
        // An operator's `--timeout 1e18` is past what `Instant` can hold:
        // the run must neither overflow nor panic.
        let mut config = SandboxConfig {
            pool_size: 2,
            compilation: Compilation::Quick,
            ..SandboxConfig::default()
        };
        config.limits.timeout = Duration::from_secs(1_000_000_000_000_000_000);
        let sb = Sandbox::new(config).unwrap();
        let module = sb.load_bytes(wat::parse_str(GUEST).unwrap()).await.unwrap();
        let limits = *sb.limits();
        let out = sb
            .run_json(
                &module,
                "answer",
                &RawValue::from_string("[]".into()).unwrap(),
                &limits,
                &Cancel::new(),
            )
            .await;
        assert_eq!(out.result.unwrap(), serde_json::json!(42));
    }

    const DEFAULT_LEASE_FOR_TESTS: Duration = Duration::from_secs(10);
}
