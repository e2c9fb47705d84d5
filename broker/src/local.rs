//! [`LocalBroker`]: the whole broker in one process, for `wasq demo`,
//! embedding and tests.
//!
//! It keeps the semantics of [`crate::RedisBroker`] exactly (the same
//! conformance suite runs against both): fencing tokens and delivery counts,
//! leases kept fresh by heartbeats, the delivery limit with `lost` envelopes
//! and dead letters, the delayed set, revocation, first-result-wins and
//! waiters woken by a notification, never by polling. Only durability differs:
//! everything lives in memory and dies with the process.
//!
//! It records the same events (a capped in-memory stream), keeps the same
//! queue statistics and enforces pauses and rate limits (token buckets) the
//! same way.
//!
//! Time is [`tokio::time::Instant`], so tests can run it under
//! `tokio::time::pause()` and leases expire without real waiting. (Event and
//! dead-letter timestamps and latencies use the system clock, as Redis does.)
//!
//! # Layout
//! This file holds the state (one `Inner` behind a mutex) and the helpers
//! every operation shares (events, publishing, sweeping expired state); the
//! [`Broker`] impl at its end maps each operation onto the file of its
//! concept, named as in `redis/`:
//! - `modules`: the module store and module names.
//! - `calls`: submitting and revoking calls.
//! - `wait`: a call's status and waiting for results.
//! - `hosts`: host records, heartbeats, hosts whose lease lapsed.
//! - `claim`: handing out calls (promote, reclaim, read, rate limits) and
//!   starting what a claim hands out.
//! - `delivery`: start, complete, retry, release.
//! - `admin`: dead letters, events, queue stats, purge, pause, rate limits.

mod admin;
mod calls;
mod claim;
mod delivery;
mod hosts;
mod modules;
mod wait;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{
    Broker, BrokerConfig, DeadLetter, Delivery, HostInfo, HostStats, ModuleInfo, StartOutcome,
    new_token,
};
use crate::error::{Error, Result};
use crate::ops::{
    EVENTS_CAP, Event, EventLevel, LATENCY_SAMPLES, MAX_EVENTS_PER_READ, QueueStats, Rate,
    RateScope, STATS_WINDOW_MS, parse_entry_id, percentile,
};
use crate::types::{
    Call, Envelope, ErrorKind, ModuleHash, State, TaskError, is_valid_queue_name, now_ms,
};
use crate::validate::{
    check_call, check_claim, check_entry_id, check_final, check_module_ref, check_module_size,
    check_rate, check_tag, fresh_call,
};

/// How often expired results and states are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An in-process broker. Share it with an `Arc` between hosts and clients.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> wasq_broker::Result<()> {
/// use std::time::Duration;
/// use wasq_broker::{Broker, BrokerConfig, Envelope, LocalBroker, StartOutcome, State};
///
/// let broker = LocalBroker::new(BrokerConfig::default());
/// let (module, _) = broker.put_module(b"\0asm\x01\0\0\0").await?;
/// let call = wasq_broker::Call {
///     id: wasq_broker::new_call_id(),
///     module,
///     task: "add".into(),
///     args: serde_json::value::RawValue::from_string("[4, 5]".into()).unwrap(),
///     limits: Default::default(),
///     attempt: 1,
///     submitted_ms: wasq_broker::now_ms(),
///     retry: None,
///     queue: "default".into(),
/// };
/// broker.submit(std::slice::from_ref(&call), None).await?;
///
/// // What a host does:
/// let mut got = broker.claim("h1", &["default".into()], 8, Duration::from_secs(1)).await?;
/// let delivery = got.pop().unwrap();
/// assert_eq!(broker.start(&delivery, "h1").await?, StartOutcome::Run);
/// let mut envelope = Envelope::pending(&call.id, State::Succeeded);
/// envelope.result = serde_json::json!(9);
/// assert_eq!(broker.complete(&[(delivery, envelope)]).await?, vec![true]);
///
/// let done = broker.wait(&call.id, Some(Duration::from_secs(1))).await?.unwrap();
/// assert_eq!(done.result, 9);
/// # Ok(())
/// # }
/// ```
pub struct LocalBroker {
    inner: Mutex<Inner>,
    config: BrokerConfig,
    /// Notified when work may be claimable: submit, release, retry scheduling.
    work: Notify,
    /// Notified whenever a final result is published.
    results: Notify,
    /// Notified whenever an event is recorded.
    events: Notify,
}

struct Inner {
    modules: HashMap<ModuleHash, Arc<[u8]>>,
    names: BTreeMap<String, ModuleHash>,
    queues: HashMap<String, Queue>,
    calls: HashMap<String, CallState>,
    results: HashMap<String, Stored>,
    revoked: HashMap<String, Option<Instant>>,
    dead: VecDeque<DeadLetter>,
    hosts: HashMap<String, HostRecord>,
    next_entry: u64,
    last_sweep: Instant,
    events: VecDeque<Event>,
    /// The newest stream id handed out (events and dead letters), `(ms, seq)`.
    last_id: (u64, u64),
    /// Queues submitted to, paused or rate-limited.
    known: BTreeSet<String>,
    paused: HashSet<String>,
    buckets: BTreeMap<RateScope, Bucket>,
    event_level: EventLevel,
}

/// A token bucket of a rate limit.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn available(&self, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * self.rate.per_second;
        (self.tokens + refill).min(f64::from(self.rate.burst))
    }

    /// How long until one more whole token beyond `taken` is there.
    fn wait(&self, now: Instant, taken: f64) -> Duration {
        let short = (1.0 + taken - self.available(now)).max(0.0);
        Duration::from_secs_f64(short / self.rate.per_second)
    }

    fn take(&mut self, now: Instant, n: f64) {
        self.tokens = self.available(now) - n;
        self.at = now;
    }
}

#[derive(Debug, Default)]
struct Queue {
    /// Entries never delivered, oldest first.
    ready: VecDeque<(u64, Call)>,
    /// Delivered, not yet acknowledged.
    pending: BTreeMap<u64, Pending>,
    /// Calls waiting for their due time (the sequence number keeps equal times apart).
    delayed: BTreeMap<(Instant, u64), Call>,
    /// When final results were published, for the throughput (last minute).
    finals: VecDeque<Instant>,
    /// Latencies (ms) of results hosts produced, for the percentiles.
    latencies: VecDeque<(Instant, f64)>,
}

#[derive(Debug)]
struct Pending {
    call: Call,
    consumer: String,
    deliveries: u32,
    /// Last delivery or heartbeat: idle since then.
    touched: Instant,
}

#[derive(Debug)]
struct CallState {
    state: State,
    attempt: u32,
    token: Option<String>,
    host: String,
    last: Option<Envelope>,
    expires: Option<Instant>,
    queue: String,
    task: String,
    submitted_ms: u64,
    /// The entry it runs from, while running.
    entry: Option<u64>,
}

impl CallState {
    fn queued(call: &Call, expires: Option<Instant>) -> Self {
        Self {
            state: State::Queued,
            attempt: call.attempt,
            token: None,
            host: String::new(),
            last: None,
            expires,
            queue: call.queue.clone(),
            task: call.task.clone(),
            submitted_ms: call.submitted_ms,
            entry: None,
        }
    }
}

/// What an event says about a call.
struct CallEvent<'a> {
    kind: &'a str,
    id: &'a str,
    queue: &'a str,
    task: &'a str,
    host: &'a str,
    error_kind: Option<ErrorKind>,
    /// The call's submit time, for the latency of final events.
    submitted_ms: u64,
    /// Whether a host's run produced it (then its latency is sampled).
    from_run: bool,
}

/// ms since the Unix epoch, with µs.
fn now_ms_exact() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[derive(Debug)]
struct Stored {
    envelope: Envelope,
    /// The token of the delivery that published it (empty if none did), so a
    /// repeated `complete` of that delivery is accepted again.
    token: String,
    expires: Option<Instant>,
}

#[derive(Debug)]
struct HostRecord {
    info: HostInfo,
    stats: HostStats,
    lease_until: Instant,
}

impl std::fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBroker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn live(expires: Option<Instant>, now: Instant) -> bool {
    expires.is_none_or(|e| e > now)
}

/// Forgets what is older than the stats window.
fn prune_window(q: &mut Queue, now: Instant) {
    let window = Duration::from_millis(STATS_WINDOW_MS);
    while q
        .finals
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > window)
    {
        q.finals.pop_front();
    }
    while q
        .latencies
        .front()
        .is_some_and(|(t, _)| now.saturating_duration_since(*t) > window)
    {
        q.latencies.pop_front();
    }
}

/// `now + d`, or a time so far ahead that it never comes when the sum
/// would overflow the clock: a caller's countdown or timeout (say
/// `Duration::MAX`) must not panic the broker.
fn later(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

impl LocalBroker {
    /// An empty broker.
    pub fn new(config: BrokerConfig) -> Self {
        Self {
            inner: Mutex::new(Inner {
                modules: HashMap::new(),
                names: BTreeMap::new(),
                queues: HashMap::new(),
                calls: HashMap::new(),
                results: HashMap::new(),
                revoked: HashMap::new(),
                dead: VecDeque::new(),
                hosts: HashMap::new(),
                next_entry: 0,
                last_sweep: Instant::now(),
                events: VecDeque::new(),
                last_id: (0, 0),
                known: BTreeSet::new(),
                paused: HashSet::new(),
                buckets: BTreeMap::new(),
                event_level: EventLevel::All,
            }),
            config,
            work: Notify::new(),
            results: Notify::new(),
            events: Notify::new(),
        }
    }

    /// A fresh stream-like id, `MS-SEQ`, increasing.
    fn next_id(inner: &mut Inner) -> String {
        let ms = now_ms();
        inner.last_id = if ms > inner.last_id.0 {
            (ms, 0)
        } else {
            (inner.last_id.0, inner.last_id.1 + 1)
        };
        format!("{}-{}", inner.last_id.0, inner.last_id.1)
    }

    /// Records an event (and, for a final one, counts it in its queue's stats).
    fn emit(&self, inner: &mut Inner, ev: CallEvent<'_>, now: Instant) {
        let id = Self::next_id(inner);
        let is_final = matches!(ev.kind, "succeeded" | "failed" | "revoked");
        let latency_ms = (is_final && ev.submitted_ms > 0)
            .then(|| (now_ms_exact() - ev.submitted_ms as f64).max(0.0));
        if is_final && let Some(q) = inner.queues.get_mut(ev.queue) {
            q.finals.push_back(now);
            // Results a host produced carry their run; the others (revoked
            // before running, lost) would only distort the latencies.
            if ev.from_run
                && let Some(l) = latency_ms
            {
                q.latencies.push_back((now, l));
                while q.latencies.len() > LATENCY_SAMPLES {
                    q.latencies.pop_front();
                }
            }
            prune_window(q, now);
        }
        if !inner.event_level.records(ev.kind) {
            return;
        }
        inner.events.push_back(Event {
            ts_ms: parse_entry_id(&id).map_or(0, |(ms, _)| ms),
            id,
            kind: ev.kind.to_string(),
            call_id: ev.id.to_string(),
            queue: ev.queue.to_string(),
            task: ev.task.to_string(),
            host: ev.host.to_string(),
            error_kind: ev.error_kind.map(|k| k.as_str().to_string()),
            latency_ms,
        });
        while inner.events.len() > EVENTS_CAP {
            inner.events.pop_front();
        }
        self.events.notify_waiters();
    }

    /// A host event.
    /// Records a call just put in its queue: its `queued` state (expiring
    /// at `expires`), its queue as known, and its `queued` event.
    fn record_queued(
        &self,
        inner: &mut Inner,
        call: &Call,
        expires: Option<Instant>,
        now: Instant,
    ) {
        inner
            .calls
            .insert(call.id.clone(), CallState::queued(call, expires));
        inner.known.insert(call.queue.clone());
        self.emit(
            inner,
            CallEvent {
                kind: "queued",
                id: &call.id,
                queue: &call.queue,
                task: &call.task,
                host: "",
                error_kind: None,
                submitted_ms: call.submitted_ms,
                from_run: false,
            },
            now,
        );
    }

    fn emit_host(&self, inner: &mut Inner, kind: &str, host: &str, error_kind: Option<&str>) {
        let id = Self::next_id(inner);
        inner.events.push_back(Event {
            ts_ms: parse_entry_id(&id).map_or(0, |(ms, _)| ms),
            id,
            kind: kind.to_string(),
            call_id: String::new(),
            queue: String::new(),
            task: String::new(),
            host: host.to_string(),
            error_kind: error_kind.map(str::to_string),
            latency_ms: None,
        });
        while inner.events.len() > EVENTS_CAP {
            inner.events.pop_front();
        }
        self.events.notify_waiters();
    }

    /// Takes hosts whose lease lapsed out, recording `host_offline`.
    fn reap_hosts(&self, inner: &mut Inner, now: Instant) {
        let gone: Vec<String> = inner
            .hosts
            .iter()
            .filter(|(_, h)| h.lease_until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            inner.hosts.remove(&id);
            self.emit_host(inner, "host_offline", &id, Some("lease_expired"));
        }
    }

    /// Revokes a call no host holds: the flag, and unless it is final (or
    /// running from another entry) its envelope and event.
    fn revoke_now(&self, inner: &mut Inner, call: &Call, message: &str, now: Instant) {
        if inner
            .calls
            .get(&call.id)
            .is_some_and(|c| c.state == State::Running && live(c.expires, now))
        {
            return;
        }
        let expires = self.ttl_from(now, Duration::ZERO);
        inner.revoked.insert(call.id.clone(), expires);
        let mut env = Envelope::failed(&call.id, TaskError::new(ErrorKind::Revoked, message));
        env.attempt = call.attempt;
        if self.publish(inner, env, "", now) {
            self.emit(
                inner,
                CallEvent {
                    kind: "revoked",
                    id: &call.id,
                    queue: &call.queue,
                    task: &call.task,
                    host: "",
                    error_kind: Some(ErrorKind::Revoked),
                    submitted_ms: call.submitted_ms,
                    from_run: false,
                },
                now,
            );
        }
    }

    /// The tunables it was created with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ttl_from(&self, now: Instant, extra: Duration) -> Option<Instant> {
        (!self.config.result_ttl.is_zero())
            .then(|| later(now, self.config.result_ttl.saturating_add(extra)))
    }

    /// Stores a final envelope unless one exists; wakes waiters.
    fn publish(&self, inner: &mut Inner, envelope: Envelope, token: &str, now: Instant) -> bool {
        let id = envelope.id.clone();
        if inner.results.get(&id).is_some_and(|r| live(r.expires, now)) {
            return false;
        }
        inner.calls.remove(&id);
        inner.results.insert(
            id,
            Stored {
                envelope,
                token: token.to_string(),
                expires: self.ttl_from(now, Duration::ZERO),
            },
        );
        self.results.notify_waiters();
        true
    }

    fn has_result(inner: &Inner, id: &str, now: Instant) -> bool {
        inner.results.get(id).is_some_and(|r| live(r.expires, now))
    }

    fn is_revoked_now(inner: &Inner, id: &str, now: Instant) -> bool {
        inner.revoked.get(id).is_some_and(|e| live(*e, now))
    }

    /// The pending record of this delivery, if it still holds its entry.
    fn owned<'a>(inner: &'a mut Inner, d: &Delivery) -> Option<&'a mut Pending> {
        let entry: u64 = d.entry_id.parse().ok()?;
        inner
            .queues
            .get_mut(&d.queue)?
            .pending
            .get_mut(&entry)
            .filter(|p| p.deliveries == d.deliveries)
    }

    fn ack(inner: &mut Inner, d: &Delivery) {
        if let (Some(q), Ok(entry)) = (inner.queues.get_mut(&d.queue), d.entry_id.parse::<u64>()) {
            q.pending.remove(&entry);
        }
    }

    fn sweep(&self, inner: &mut Inner, now: Instant) {
        if now.duration_since(inner.last_sweep) < SWEEP_EVERY {
            return;
        }
        inner.last_sweep = now;
        inner.results.retain(|_, r| live(r.expires, now));
        inner.calls.retain(|_, c| live(c.expires, now));
        inner.revoked.retain(|_, e| live(*e, now));
        self.reap_hosts(inner, now);
    }

    fn dead_letter(&self, inner: &mut Inner, mut letter: DeadLetter) {
        letter.entry_id = Self::next_id(inner);
        inner.dead.push_back(letter);
        let cap = usize::try_from(self.config.dead_letter_cap.max(1)).unwrap_or(usize::MAX);
        while inner.dead.len() > cap {
            inner.dead.pop_front();
        }
    }
}

/// The map of the broker: each operation is done in the file of its concept.
impl Broker for LocalBroker {
    async fn put_module(&self, bytes: &[u8]) -> Result<(ModuleHash, bool)> {
        self.store_module(bytes).await
    }

    async fn has_module(&self, hash: &ModuleHash) -> Result<bool> {
        self.module_exists(hash).await
    }

    async fn get_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        self.fetch_module(hash).await
    }

    async fn tag(&self, name: &str, version: Option<&str>, hash: &ModuleHash) -> Result<()> {
        self.tag_module(name, version, hash).await
    }

    async fn resolve(&self, name: &str) -> Result<Option<ModuleHash>> {
        self.resolve_module(name).await
    }

    async fn list_modules(&self) -> Result<Vec<ModuleInfo>> {
        self.scan_modules().await
    }

    async fn submit(&self, calls: &[Call], countdown: Option<Duration>) -> Result<()> {
        self.submit_calls(calls, countdown).await
    }

    async fn status(&self, id: &str) -> Result<Option<Envelope>> {
        self.read_status(id).await
    }

    async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Option<Envelope>> {
        self.wait_for(id, timeout).await
    }

    async fn revoke(&self, id: &str) -> Result<bool> {
        self.revoke_call(id).await
    }

    async fn is_revoked(&self, id: &str) -> Result<bool> {
        self.check_revoked(id).await
    }

    async fn register_host(&self, info: &HostInfo) -> Result<()> {
        self.add_host(info).await
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> Result<Vec<String>> {
        self.record_heartbeat(host_id, stats, running).await
    }

    async fn deregister_host(&self, host_id: &str) -> Result<()> {
        self.remove_host(host_id).await
    }

    async fn claim(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        self.claim_calls(host_id, queues, max, block).await
    }

    async fn start(&self, delivery: &Delivery, host_id: &str) -> Result<StartOutcome> {
        self.start_delivery(delivery, host_id).await
    }

    async fn complete(&self, done: &[(Delivery, Envelope)]) -> Result<Vec<bool>> {
        self.publish_results(done).await
    }

    async fn retry(&self, delivery: &Delivery, last: &Envelope, delay: Duration) -> Result<bool> {
        self.schedule_retry(delivery, last, delay).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<bool> {
        self.hand_back(delivery).await
    }

    async fn hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        self.list_hosts().await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.read_dead_letters(limit).await
    }

    async fn events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Event>> {
        self.read_events(after, count, block).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.read_queue_stats().await
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        self.purge(queue).await
    }

    async fn set_event_level(&self, level: EventLevel) -> Result<()> {
        self.write_event_level(level).await
    }

    async fn event_level(&self) -> Result<EventLevel> {
        self.read_event_level().await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.write_paused(queue, paused).await
    }

    async fn dead_retry(&self, entry_id: &str) -> Result<bool> {
        self.requeue_dead_letter(entry_id).await
    }

    async fn dead_drop(&self, entry_id: &str) -> Result<bool> {
        self.drop_dead_letter(entry_id).await
    }

    async fn set_rate_limit(&self, scope: &RateScope, rate: Option<Rate>) -> Result<()> {
        self.write_rate_limit(scope, rate).await
    }

    async fn rate_limits(&self) -> Result<Vec<(RateScope, Rate)>> {
        self.read_rate_limits().await
    }
}
