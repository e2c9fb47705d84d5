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
//! Time is [`tokio::time::Instant`], so tests can run it under
//! `tokio::time::pause()` and leases expire without real waiting.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::broker::{
    Broker, BrokerConfig, DeadLetter, Delivery, HostInfo, HostStats, ModuleInfo, StartOutcome,
};
use crate::error::{Error, Result};
use crate::redis::{check_call, check_final, check_module_ref, new_token};
use crate::types::{
    Call, Envelope, ErrorKind, ModuleHash, State, TaskError, is_valid_module_name,
    is_valid_queue_name, now_ms,
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
}

#[derive(Debug, Default)]
struct Queue {
    /// Entries never delivered, oldest first.
    ready: VecDeque<(u64, Call)>,
    /// Delivered, not yet acknowledged.
    pending: BTreeMap<u64, Pending>,
    /// Calls waiting for their due time (the sequence number keeps equal times apart).
    delayed: BTreeMap<(Instant, u64), Call>,
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
            }),
            config,
            work: Notify::new(),
            results: Notify::new(),
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
        (!self.config.result_ttl.is_zero()).then(|| now + self.config.result_ttl + extra)
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
        inner.hosts.retain(|_, h| h.lease_until > now);
    }

    fn dead_letter(&self, inner: &mut Inner, letter: DeadLetter) {
        inner.dead.push_back(letter);
        let cap = usize::try_from(self.config.dead_letter_cap.max(1)).unwrap_or(usize::MAX);
        while inner.dead.len() > cap {
            inner.dead.pop_front();
        }
    }

    /// One pass: promote, reclaim, read. Returns the deliveries and when the
    /// next one could become available without a notification.
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
            let idle: Vec<u64> = q
                .pending
                .iter()
                .filter(|(_, p)| now.duration_since(p.touched) >= lease)
                .map(|(e, _)| *e)
                .collect();
            for entry in idle {
                if out.len() >= max {
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
                });
            }
            for p in q.pending.values() {
                earliest(p.touched + lease);
            }
            while out.len() < max {
                let Some((entry, call)) = q.ready.pop_front() else {
                    break;
                };
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
                });
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
            self.publish(inner, envelope, "", now);
            let call = serde_json::to_string(&p.call).unwrap_or_default();
            self.dead_letter(
                inner,
                DeadLetter {
                    id: p.call.id.clone(),
                    queue,
                    reason,
                    call,
                    deliveries: p.deliveries,
                    ts_ms: now_ms(),
                },
            );
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
        Ok(self.lock().modules.get(hash).map(|b| b.to_vec()))
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
            check_call(call)?;
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
                    q.delayed.insert((now + d, seq), call.clone());
                }
                None => q.ready.push_back((seq, call.clone())),
            }
            let expires = self.ttl_from(now, countdown.unwrap_or_default());
            inner.calls.insert(
                call.id.clone(),
                CallState {
                    state: State::Queued,
                    attempt: call.attempt,
                    token: None,
                    host: String::new(),
                    last: None,
                    expires,
                },
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
        let deadline = timeout.map(|t| Instant::now() + t);
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
        let expires = self.ttl_from(now, Duration::ZERO);
        inner.revoked.insert(id.to_string(), expires);
        if matches!(state, State::Queued | State::Retrying) {
            let mut env = Envelope::failed(
                id,
                TaskError::new(ErrorKind::Revoked, "revoked before it started"),
            );
            env.attempt = attempt;
            self.publish(&mut inner, env, "", now);
        }
        Ok(true)
    }

    async fn is_revoked(&self, id: &str) -> Result<bool> {
        Ok(Self::is_revoked_now(&self.lock(), id, Instant::now()))
    }

    async fn register_host(&self, info: &HostInfo) -> Result<()> {
        let now = Instant::now();
        self.lock().hosts.insert(
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
    ) -> Result<()> {
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
                let info = HostInfo {
                    id: host_id.to_string(),
                    name: host_id.to_string(),
                    version: String::new(),
                    queues: Vec::new(),
                    concurrency: 0,
                    started_ms: 0,
                };
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
        for d in running {
            match Self::owned(&mut inner, d) {
                Some(p) if p.consumer == host_id => p.touched = now,
                _ => tracing::warn!(host = host_id, entry = %d.entry_id,
                    "a running call was reclaimed by another host (this host's lease lapsed)"),
            }
        }
        Ok(())
    }

    async fn deregister_host(&self, host_id: &str) -> Result<()> {
        self.lock().hosts.remove(host_id);
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
        let deadline = Instant::now() + block;
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
        let now = Instant::now();
        let mut inner = self.lock();
        if Self::owned(&mut inner, delivery).is_none() {
            return Ok(StartOutcome::Skip);
        }
        let id = &delivery.call.id;
        let revoked = Self::is_revoked_now(&inner, id, now);
        if Self::has_result(&inner, id, now) {
            Self::ack(&mut inner, delivery);
            return Ok(if revoked {
                StartOutcome::Revoked
            } else {
                StartOutcome::Skip
            });
        }
        if revoked {
            let mut env = Envelope::failed(
                id.clone(),
                TaskError::new(ErrorKind::Revoked, "revoked before it started"),
            );
            env.attempt = delivery.call.attempt;
            self.publish(&mut inner, env, &delivery.token, now);
            Self::ack(&mut inner, delivery);
            return Ok(StartOutcome::Revoked);
        }
        let expires = self.ttl_from(now, Duration::ZERO);
        inner.calls.insert(
            id.clone(),
            CallState {
                state: State::Running,
                attempt: delivery.call.attempt,
                token: Some(delivery.token.clone()),
                host: host_id.to_string(),
                last: None,
                expires,
            },
        );
        Ok(StartOutcome::Run)
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
            out.push(self.publish(&mut inner, envelope.clone(), &d.token, now));
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
            },
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
        if let Some(c) = inner.calls.get_mut(id)
            && c.token.as_deref() == Some(delivery.token.as_str())
        {
            c.state = State::Queued;
            c.token = None;
            c.host.clear();
        }
        drop(inner);
        self.work.notify_waiters();
        Ok(true)
    }

    async fn hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.hosts.retain(|_, h| h.lease_until > now);
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
}
