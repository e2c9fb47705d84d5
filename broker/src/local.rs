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
    Call, Envelope, ErrorKind, ModuleHash, State, TaskError, is_valid_module_name,
    is_valid_queue_name, now_ms,
};
use crate::validate::{
    check_call, check_entry_id, check_final, check_module_ref, check_rate, fresh_call,
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

    /// Marks an owned delivery's call running (see [`Broker::start`]).
    fn start_now(
        &self,
        inner: &mut Inner,
        delivery: &Delivery,
        host_id: &str,
        now: Instant,
    ) -> StartOutcome {
        let id = &delivery.call.id;
        let revoked = Self::is_revoked_now(inner, id, now);
        if Self::has_result(inner, id, now) {
            Self::ack(inner, delivery);
            return if revoked {
                StartOutcome::Revoked
            } else {
                StartOutcome::Skip
            };
        }
        let call = &delivery.call;
        let ev = |kind| CallEvent {
            kind,
            id,
            queue: &delivery.queue,
            task: &call.task,
            host: host_id,
            error_kind: (kind == "revoked").then_some(ErrorKind::Revoked),
            submitted_ms: call.submitted_ms,
            from_run: false,
        };
        if revoked {
            let mut env = Envelope::failed(
                id.clone(),
                TaskError::new(ErrorKind::Revoked, "revoked before it started"),
            );
            env.attempt = call.attempt;
            self.publish(inner, env, &delivery.token, now);
            Self::ack(inner, delivery);
            self.emit(inner, ev("revoked"), now);
            return StartOutcome::Revoked;
        }
        let already = inner.calls.get(id).is_some_and(|c| {
            c.state == State::Running && c.token.as_deref() == Some(delivery.token.as_str())
        });
        if already {
            return StartOutcome::Run;
        }
        let expires = self.ttl_from(now, Duration::ZERO);
        inner.calls.insert(
            id.clone(),
            CallState {
                state: State::Running,
                attempt: call.attempt,
                token: Some(delivery.token.clone()),
                host: host_id.to_string(),
                last: None,
                expires,
                queue: delivery.queue.clone(),
                task: call.task.clone(),
                submitted_ms: call.submitted_ms,
                entry: delivery.entry_id.parse().ok(),
            },
        );
        self.emit(inner, ev("started"), now);
        StartOutcome::Run
    }

    /// One pass: promote, then (unless paused, within the rate limits)
    /// reclaim and read. Returns the deliveries and when the next one could
    /// become available without a notification.
    fn claim_now(
        &self,
        inner: &mut Inner,
        host_id: &str,
        queues: &[String],
        max: usize,
        now: Instant,
    ) -> (Vec<Delivery>, Option<Instant>) {
        let lease = self.config.lease;
        let mut out = Vec::new();
        let mut lost = Vec::new();
        let mut next: Option<Instant> = None;
        let mut earliest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for name in queues {
            let q = inner.queues.entry(name.clone()).or_default();
            while let Some(entry) = q.delayed.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let call = entry.remove();
                inner.next_entry += 1;
                q.ready.push_back((inner.next_entry, call));
            }
            if let Some(((due, _), _)) = q.delayed.first_key_value() {
                earliest(*due);
            }
            if inner.paused.contains(name) {
                continue;
            }
            let scope = RateScope::Queue(name.clone());
            let mut allowed = max - out.len();
            if let Some(b) = inner.buckets.get(&scope) {
                let avail = b.available(now);
                allowed = allowed.min(avail.floor().max(0.0) as usize);
                if avail < 1.0 {
                    earliest(now + b.wait(now, 0.0));
                }
            }
            let before = out.len();
            let idle: Vec<u64> = q
                .pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.touched) >= lease)
                .map(|(e, _)| *e)
                .collect();
            for entry in idle {
                if out.len() - before >= allowed {
                    break;
                }
                let p = q.pending.get_mut(&entry).expect("listed above");
                p.deliveries += 1;
                p.consumer = host_id.to_string();
                p.touched = now;
                if p.deliveries > self.config.max_deliveries {
                    let p = q.pending.remove(&entry).expect("listed above");
                    lost.push((name.clone(), p));
                    continue;
                }
                out.push(Delivery {
                    call: p.call.clone(),
                    queue: name.clone(),
                    entry_id: entry.to_string(),
                    token: new_token(),
                    deliveries: p.deliveries,
                    started: None,
                });
            }
            for p in q.pending.values() {
                earliest(p.touched + lease);
            }
            // Calls over their module's limit wait in the delayed set, so
            // the calls behind them go on (no head-of-line blocking).
            let mut held: HashMap<ModuleHash, u32> = HashMap::new();
            let mut skipped = Vec::new();
            while out.len() - before < allowed {
                let Some((entry, call)) = q.ready.pop_front() else {
                    break;
                };
                if let Some(b) = inner.buckets.get_mut(&RateScope::Module(call.module)) {
                    if b.available(now) < 1.0 {
                        let behind = held.entry(call.module).or_insert(0);
                        let due = now
                            + b.wait(now, 0.0)
                            + Duration::from_secs_f64(f64::from(*behind) / b.rate.per_second);
                        *behind += 1;
                        skipped.push((due, call));
                        continue;
                    }
                    b.take(now, 1.0);
                }
                q.pending.insert(
                    entry,
                    Pending {
                        call: call.clone(),
                        consumer: host_id.to_string(),
                        deliveries: 1,
                        touched: now,
                    },
                );
                out.push(Delivery {
                    call,
                    queue: name.clone(),
                    entry_id: entry.to_string(),
                    token: new_token(),
                    deliveries: 1,
                    started: None,
                });
            }
            for (due, call) in skipped {
                inner.next_entry += 1;
                q.delayed.insert((due, inner.next_entry), call);
                earliest(due);
            }
            if let Some(b) = inner.buckets.get_mut(&scope) {
                b.take(now, (out.len() - before) as f64);
            }
        }
        for (queue, p) in lost {
            let reason = format!(
                "delivered {} times, over the limit of {}: every host that took it stopped heartbeating",
                p.deliveries, self.config.max_deliveries
            );
            tracing::warn!(queue, call_id = %p.call.id, deliveries = p.deliveries,
                "call lost: delivery limit reached");
            let mut envelope =
                Envelope::failed(p.call.id.clone(), TaskError::new(ErrorKind::Lost, &reason));
            envelope.attempt = p.call.attempt;
            let ev = |kind| CallEvent {
                kind,
                id: &p.call.id,
                queue: &queue,
                task: &p.call.task,
                host: "",
                error_kind: Some(ErrorKind::Lost),
                submitted_ms: p.call.submitted_ms,
                from_run: false,
            };
            if self.publish(inner, envelope, "", now) {
                self.emit(inner, ev("failed"), now);
            }
            let call = serde_json::to_string(&p.call).unwrap_or_default();
            self.dead_letter(
                inner,
                DeadLetter {
                    entry_id: String::new(),
                    id: p.call.id.clone(),
                    queue: queue.clone(),
                    reason: reason.clone(),
                    call,
                    deliveries: p.deliveries,
                    ts_ms: now_ms(),
                    error: Some(TaskError::new(ErrorKind::Lost, reason)),
                },
            );
            self.emit(inner, ev("dead"), now);
        }
        // Claims start what they hand out (see `Delivery::started`).
        for d in &mut out {
            d.started = Some(self.start_now(inner, d, host_id, now));
        }
        (out, next)
    }
}

impl Broker for LocalBroker {
    async fn put_module(&self, bytes: &[u8]) -> Result<(ModuleHash, bool)> {
        let size = bytes.len() as u64;
        if size > self.config.max_module {
            return Err(Error::ModuleTooLarge {
                size,
                limit: self.config.max_module,
            });
        }
        let hash = ModuleHash::of(bytes);
        let mut inner = self.lock();
        if inner.modules.contains_key(&hash) {
            return Ok((hash, false));
        }
        inner.modules.insert(hash, Arc::from(bytes));
        Ok((hash, true))
    }

    async fn has_module(&self, hash: &ModuleHash) -> Result<bool> {
        Ok(self.lock().modules.contains_key(hash))
    }

    async fn get_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        let inner = self.lock();
        let Some(bytes) = inner.modules.get(hash) else {
            return Ok(None);
        };
        let size = bytes.len() as u64;
        if size > self.config.max_module {
            return Err(Error::ModuleTooLarge {
                size,
                limit: self.config.max_module,
            });
        }
        Ok(Some(bytes.to_vec()))
    }

    async fn tag(&self, name: &str, version: Option<&str>, hash: &ModuleHash) -> Result<()> {
        if !is_valid_module_name(name) {
            return Err(Error::InvalidName(name.to_string()));
        }
        if let Some(v) = version
            && !is_valid_module_name(v)
        {
            return Err(Error::InvalidName(v.to_string()));
        }
        let mut inner = self.lock();
        if !inner.modules.contains_key(hash) {
            return Err(Error::ModuleNotFound(format!("sha256:{hash}")));
        }
        inner.names.insert(name.to_string(), *hash);
        if let Some(v) = version {
            inner.names.insert(format!("{name}@{v}"), *hash);
        }
        Ok(())
    }

    async fn resolve(&self, name: &str) -> Result<Option<ModuleHash>> {
        check_module_ref(name)?;
        Ok(self.lock().names.get(name).copied())
    }

    async fn list_modules(&self) -> Result<Vec<ModuleInfo>> {
        let inner = self.lock();
        let mut out: Vec<ModuleInfo> = inner
            .modules
            .iter()
            .map(|(hash, bytes)| ModuleInfo {
                hash: *hash,
                size: bytes.len() as u64,
                names: inner
                    .names
                    .iter()
                    .filter(|(_, h)| *h == hash)
                    .map(|(n, _)| n.clone())
                    .collect(),
            })
            .collect();
        out.sort_by_key(|m| m.hash);
        Ok(out)
    }

    async fn submit(&self, calls: &[Call], countdown: Option<Duration>) -> Result<()> {
        for call in calls {
            check_call(call, self.config.max_args)?;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.sweep(&mut inner, now);
        for call in calls {
            inner.next_entry += 1;
            let seq = inner.next_entry;
            let q = inner.queues.entry(call.queue.clone()).or_default();
            match countdown {
                Some(d) => {
                    q.delayed.insert((later(now, d), seq), call.clone());
                }
                None => q.ready.push_back((seq, call.clone())),
            }
            let expires = self.ttl_from(now, countdown.unwrap_or_default());
            inner
                .calls
                .insert(call.id.clone(), CallState::queued(call, expires));
            inner.known.insert(call.queue.clone());
            self.emit(
                &mut inner,
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
        drop(inner);
        self.work.notify_waiters();
        Ok(())
    }

    async fn status(&self, id: &str) -> Result<Option<Envelope>> {
        let now = Instant::now();
        let inner = self.lock();
        if let Some(r) = inner.results.get(id).filter(|r| live(r.expires, now)) {
            return Ok(Some(r.envelope.clone()));
        }
        let Some(c) = inner.calls.get(id).filter(|c| live(c.expires, now)) else {
            return Ok(None);
        };
        if c.state == State::Retrying
            && let Some(last) = &c.last
        {
            let mut env = last.clone();
            env.state = State::Retrying;
            return Ok(Some(env));
        }
        let mut env = Envelope::pending(id, c.state);
        env.attempt = c.attempt;
        if c.state == State::Running {
            env.host = c.host.clone();
        }
        Ok(Some(env))
    }

    async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Option<Envelope>> {
        let deadline = timeout.map(|t| later(Instant::now(), t));
        loop {
            let notified = self.results.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status(id).await? {
                None => return Err(Error::UnknownCall(id.to_string())),
                Some(env) if env.state.is_final() => return Ok(Some(env)),
                Some(_) => {}
            }
            match deadline {
                Some(d) => {
                    if Instant::now() >= d {
                        return Ok(None);
                    }
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(d) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    async fn revoke(&self, id: &str) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if Self::has_result(&inner, id, now) {
            return Ok(false);
        }
        let Some(c) = inner.calls.get(id).filter(|c| live(c.expires, now)) else {
            return Ok(false);
        };
        let (state, attempt) = (c.state, c.attempt);
        let (queue, task, submitted_ms, entry) =
            (c.queue.clone(), c.task.clone(), c.submitted_ms, c.entry);
        let expires = self.ttl_from(now, Duration::ZERO);
        inner.revoked.insert(id.to_string(), expires);
        let mut message = None;
        if matches!(state, State::Queued | State::Retrying) {
            message = Some("revoked before it started");
        } else if state == State::Running
            && let Some(p) = entry.and_then(|e| inner.queues.get(&queue)?.pending.get(&e))
            && now.duration_since(p.touched) >= self.config.lease
        {
            // Its host stopped heartbeating: nobody will end it; end it now.
            message = Some("revoked while its host was gone");
        }
        if let Some(message) = message {
            let mut env = Envelope::failed(id, TaskError::new(ErrorKind::Revoked, message));
            env.attempt = attempt;
            if self.publish(&mut inner, env, "", now) {
                self.emit(
                    &mut inner,
                    CallEvent {
                        kind: "revoked",
                        id,
                        queue: &queue,
                        task: &task,
                        host: "",
                        error_kind: Some(ErrorKind::Revoked),
                        submitted_ms,
                        from_run: false,
                    },
                    now,
                );
            }
        }
        Ok(true)
    }

    async fn is_revoked(&self, id: &str) -> Result<bool> {
        Ok(Self::is_revoked_now(&self.lock(), id, Instant::now()))
    }

    async fn register_host(&self, info: &HostInfo) -> Result<()> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.emit_host(&mut inner, "host_online", &info.id, None);
        inner.hosts.insert(
            info.id.clone(),
            HostRecord {
                info: info.clone(),
                stats: HostStats {
                    heartbeat_ms: now_ms(),
                    ..HostStats::default()
                },
                lease_until: now + self.config.lease,
            },
        );
        Ok(())
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> Result<Vec<String>> {
        let now = Instant::now();
        let mut inner = self.lock();
        let stats = HostStats {
            heartbeat_ms: now_ms(),
            ..stats.clone()
        };
        let lease_until = now + self.config.lease;
        match inner.hosts.get_mut(host_id) {
            Some(h) => {
                h.stats = stats;
                h.lease_until = lease_until;
            }
            None => {
                let info = HostInfo::unknown(host_id);
                inner.hosts.insert(
                    host_id.to_string(),
                    HostRecord {
                        info,
                        stats,
                        lease_until,
                    },
                );
            }
        }
        let mut lost = Vec::new();
        for d in running {
            let pending = d.entry_id.parse::<u64>().ok().and_then(|entry| {
                inner
                    .queues
                    .get_mut(&d.queue)
                    .and_then(|q| q.pending.get_mut(&entry))
            });
            match pending {
                Some(p) if p.consumer == host_id && p.deliveries == d.deliveries => p.touched = now,
                // Acknowledged: its result is out, nothing to keep fresh.
                None => {}
                Some(_) => {
                    tracing::warn!(host = host_id, entry = %d.entry_id,
                        "a running call was reclaimed by another host (this host's lease lapsed)");
                    lost.push(d.token.clone());
                }
            }
        }
        self.emit_host(&mut inner, "host_heartbeat", host_id, None);
        self.reap_hosts(&mut inner, now);
        Ok(lost)
    }

    async fn deregister_host(&self, host_id: &str) -> Result<()> {
        let mut inner = self.lock();
        if inner.hosts.remove(host_id).is_some() {
            self.emit_host(&mut inner, "host_offline", host_id, None);
        }
        Ok(())
    }

    async fn claim(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        for q in queues {
            if !is_valid_queue_name(q) {
                return Err(Error::InvalidName(q.clone()));
            }
        }
        if max == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = later(Instant::now(), block);
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let (out, next) = {
                let mut inner = self.lock();
                self.claim_now(&mut inner, host_id, queues, max, now)
            };
            if !out.is_empty() || now >= deadline {
                return Ok(out);
            }
            let wake = next.map_or(deadline, |n| n.min(deadline));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn start(&self, delivery: &Delivery, host_id: &str) -> Result<StartOutcome> {
        // The claim revoked or skipped it already (and acknowledged its entry).
        if let Some(outcome @ (StartOutcome::Revoked | StartOutcome::Skip)) = delivery.started {
            return Ok(outcome);
        }
        let now = Instant::now();
        let mut inner = self.lock();
        if Self::owned(&mut inner, delivery).is_none() {
            return Ok(StartOutcome::Skip);
        }
        Ok(self.start_now(&mut inner, delivery, host_id, now))
    }

    async fn complete(&self, done: &[(Delivery, Envelope)]) -> Result<Vec<bool>> {
        for (d, e) in done {
            check_final(d, e)?;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.sweep(&mut inner, now);
        let mut out = Vec::with_capacity(done.len());
        for (d, envelope) in done {
            let id = &d.call.id;
            if let Some(r) = inner.results.get(id).filter(|r| live(r.expires, now))
                && r.token == d.token
            {
                out.push(true); // this delivery published it already
                continue;
            }
            let holds_token = inner
                .calls
                .get(id)
                .is_some_and(|c| c.token.as_deref() == Some(d.token.as_str()));
            if !holds_token || Self::owned(&mut inner, d).is_none() {
                out.push(false);
                continue;
            }
            Self::ack(&mut inner, d);
            if Self::has_result(&inner, id, now) {
                if let Some(c) = inner.calls.get_mut(id) {
                    c.token = None;
                }
                out.push(false);
                continue;
            }
            let published = self.publish(&mut inner, envelope.clone(), &d.token, now);
            if published {
                self.emit(
                    &mut inner,
                    CallEvent {
                        kind: envelope.state.as_str(),
                        id,
                        queue: &d.queue,
                        task: &d.call.task,
                        host: &envelope.host,
                        error_kind: envelope.error.as_ref().map(|e| e.kind),
                        submitted_ms: d.call.submitted_ms,
                        from_run: true,
                    },
                    now,
                );
            }
            out.push(published);
        }
        Ok(out)
    }

    async fn retry(&self, delivery: &Delivery, last: &Envelope, delay: Duration) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        let id = &delivery.call.id;
        let holds_token = inner
            .calls
            .get(id)
            .is_some_and(|c| c.token.as_deref() == Some(delivery.token.as_str()));
        if !holds_token || Self::owned(&mut inner, delivery).is_none() {
            return Ok(false);
        }
        Self::ack(&mut inner, delivery);
        let mut next = delivery.call.clone();
        next.attempt = next.attempt.saturating_add(1);
        inner.next_entry += 1;
        let seq = inner.next_entry;
        inner
            .queues
            .entry(delivery.queue.clone())
            .or_default()
            .delayed
            .insert((now + delay, seq), next.clone());
        let expires = self.ttl_from(now, delay);
        inner.calls.insert(
            id.clone(),
            CallState {
                state: State::Retrying,
                attempt: next.attempt,
                token: None,
                host: String::new(),
                last: Some(last.clone()),
                expires,
                queue: delivery.queue.clone(),
                task: next.task.clone(),
                submitted_ms: next.submitted_ms,
                entry: None,
            },
        );
        self.emit(
            &mut inner,
            CallEvent {
                kind: "retried",
                id,
                queue: &delivery.queue,
                task: &next.task,
                host: &last.host,
                error_kind: last.error.as_ref().map(|e| e.kind),
                submitted_ms: next.submitted_ms,
                from_run: false,
            },
            now,
        );
        drop(inner);
        // Claimers blocked now must learn about the new due time.
        self.work.notify_waiters();
        Ok(true)
    }

    async fn release(&self, delivery: &Delivery) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if Self::owned(&mut inner, delivery).is_none() {
            return Ok(false);
        }
        Self::ack(&mut inner, delivery);
        let id = &delivery.call.id;
        if Self::has_result(&inner, id, now) {
            return Ok(false);
        }
        inner.next_entry += 1;
        let seq = inner.next_entry;
        inner
            .queues
            .entry(delivery.queue.clone())
            .or_default()
            .ready
            .push_back((seq, delivery.call.clone()));
        let mut host = String::new();
        if let Some(c) = inner.calls.get_mut(id)
            && c.token.as_deref() == Some(delivery.token.as_str())
        {
            c.state = State::Queued;
            c.token = None;
            c.entry = None;
            host = std::mem::take(&mut c.host);
        }
        self.emit(
            &mut inner,
            CallEvent {
                kind: "released",
                id,
                queue: &delivery.queue,
                task: &delivery.call.task,
                host: &host,
                error_kind: None,
                submitted_ms: delivery.call.submitted_ms,
                from_run: false,
            },
            now,
        );
        drop(inner);
        self.work.notify_waiters();
        Ok(true)
    }

    async fn hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.reap_hosts(&mut inner, now);
        let mut out: Vec<(HostInfo, HostStats)> = inner
            .hosts
            .values()
            .map(|h| (h.info.clone(), h.stats.clone()))
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.lock().dead.iter().rev().take(limit).cloned().collect())
    }

    async fn events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Event>> {
        let count = count.min(MAX_EVENTS_PER_READ);
        let after = match after {
            Some(a) => Some(parse_entry_id(a).ok_or_else(|| {
                Error::InvalidArgument(format!("{a:?} is not an event id (MS-SEQ)"))
            })?),
            None => None,
        };
        if count == 0 {
            return Ok(Vec::new());
        }
        let deadline = block.map(|b| later(Instant::now(), b));
        loop {
            let notified = self.events.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let inner = self.lock();
                let out: Vec<Event> = match after {
                    None => {
                        let skip = inner.events.len().saturating_sub(count);
                        inner.events.iter().skip(skip).cloned().collect()
                    }
                    Some(a) => inner
                        .events
                        .iter()
                        .filter(|e| parse_entry_id(&e.id).is_some_and(|id| id > a))
                        .take(count)
                        .cloned()
                        .collect(),
                };
                if !out.is_empty() {
                    return Ok(out);
                }
            }
            match deadline {
                Some(d) if Instant::now() < d => {
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(d) => {}
                    }
                }
                _ => return Ok(Vec::new()),
            }
        }
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let now = Instant::now();
        let mut inner = self.lock();
        self.reap_hosts(&mut inner, now);
        let mut names: BTreeSet<String> = inner.known.clone();
        names.extend(inner.queues.keys().cloned());
        names.extend(inner.paused.iter().cloned());
        names.extend(inner.buckets.keys().filter_map(|s| match s {
            RateScope::Queue(q) => Some(q.clone()),
            RateScope::Module(_) => None,
        }));
        for h in inner.hosts.values() {
            names.extend(h.info.queues.iter().cloned());
        }
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let dead = inner.dead.iter().filter(|d| d.queue == name).count() as u64;
            let paused = inner.paused.contains(&name);
            let rate = inner
                .buckets
                .get(&RateScope::Queue(name.clone()))
                .map(|b| b.rate);
            let mut stats = QueueStats::empty(name.clone());
            if let Some(q) = inner.queues.get_mut(&name) {
                prune_window(q, now);
                let mut samples: Vec<f64> = q.latencies.iter().map(|(_, l)| *l).collect();
                samples.sort_by(f64::total_cmp);
                stats.depth = q.ready.len() as u64;
                stats.pending = q.pending.len() as u64;
                stats.delayed = q.delayed.len() as u64;
                stats.throughput_1m = q.finals.len() as f64 / (STATS_WINDOW_MS as f64 / 1000.0);
                stats.p50_ms = percentile(&samples, 50.0);
                stats.p90_ms = percentile(&samples, 90.0);
                stats.p99_ms = percentile(&samples, 99.0);
            }
            stats.dead = dead;
            stats.paused = paused;
            stats.rate = rate;
            out.push(stats);
        }
        Ok(out)
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        if !is_valid_queue_name(queue) {
            return Err(Error::InvalidName(queue.to_string()));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(q) = inner.queues.get_mut(queue) else {
            return Ok(0);
        };
        let mut dropped: Vec<Call> = q.ready.drain(..).map(|(_, c)| c).collect();
        dropped.extend(std::mem::take(&mut q.delayed).into_values());
        for call in &dropped {
            self.revoke_now(&mut inner, call, "purged", now);
        }
        Ok(dropped.len() as u64)
    }

    async fn set_event_level(&self, level: EventLevel) -> Result<()> {
        self.lock().event_level = level;
        Ok(())
    }

    async fn event_level(&self) -> Result<EventLevel> {
        Ok(self.lock().event_level)
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        if !is_valid_queue_name(queue) {
            return Err(Error::InvalidName(queue.to_string()));
        }
        let mut inner = self.lock();
        inner.known.insert(queue.to_string());
        if paused {
            inner.paused.insert(queue.to_string());
        } else {
            inner.paused.remove(queue);
        }
        drop(inner);
        self.work.notify_waiters();
        Ok(())
    }

    async fn dead_retry(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(pos) = inner.dead.iter().position(|d| d.entry_id == entry_id) else {
            return Ok(false);
        };
        let call = fresh_call(&inner.dead[pos])?;
        let live_call = inner
            .calls
            .get(&call.id)
            .is_some_and(|c| live(c.expires, now));
        let succeeded = inner
            .results
            .get(&call.id)
            .is_some_and(|r| live(r.expires, now) && r.envelope.succeeded());
        if live_call || succeeded {
            return Ok(false);
        }
        inner.dead.remove(pos);
        inner.results.remove(&call.id);
        inner.next_entry += 1;
        let seq = inner.next_entry;
        inner
            .queues
            .entry(call.queue.clone())
            .or_default()
            .ready
            .push_back((seq, call.clone()));
        let expires = self.ttl_from(now, Duration::ZERO);
        inner
            .calls
            .insert(call.id.clone(), CallState::queued(&call, expires));
        inner.known.insert(call.queue.clone());
        self.emit(
            &mut inner,
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
        drop(inner);
        self.work.notify_waiters();
        Ok(true)
    }

    async fn dead_drop(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let mut inner = self.lock();
        let before = inner.dead.len();
        inner.dead.retain(|d| d.entry_id != entry_id);
        Ok(inner.dead.len() < before)
    }

    async fn set_rate_limit(&self, scope: &RateScope, rate: Option<Rate>) -> Result<()> {
        check_rate(scope, rate.as_ref())?;
        let now = Instant::now();
        let mut inner = self.lock();
        match rate {
            None => {
                inner.buckets.remove(scope);
            }
            Some(rate) => {
                // A new limit starts full; a changed one keeps its tokens.
                let tokens = inner
                    .buckets
                    .get(scope)
                    .map_or(f64::from(rate.burst), |b| b.available(now))
                    .min(f64::from(rate.burst));
                inner.buckets.insert(
                    scope.clone(),
                    Bucket {
                        rate,
                        tokens,
                        at: now,
                    },
                );
                if let RateScope::Queue(q) = scope {
                    inner.known.insert(q.clone());
                }
            }
        }
        drop(inner);
        self.work.notify_waiters();
        Ok(())
    }

    async fn rate_limits(&self) -> Result<Vec<(RateScope, Rate)>> {
        Ok(self
            .lock()
            .buckets
            .iter()
            .map(|(s, b)| (s.clone(), b.rate))
            .collect())
    }
}
