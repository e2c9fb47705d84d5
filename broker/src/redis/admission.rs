//! Admission: whether a call handed out may start (its queue not paused,
//! its queue's and module's rate limits not exhausted). The claim script
//! admits what it reads itself; the calls a blocking read returns are
//! admitted by the admit script, which this broker may hold back (see
//! `RedisBroker::admit`) to send with the first command about them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::Value;
use redis::aio::ConnectionManager;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::broker::{Delivery, StartOutcome, new_token};
use crate::error::{Error, Result};
use crate::ops::RateScope;
use crate::types::{Call, Envelope, ModuleHash};

use super::RedisBroker;
use super::claim::{Claimed, EntryContext};
use super::entry::{parse_entry, start_outcome};
use super::keys::WAKE_TTL;
use super::lock;
use super::reply;
use super::reply::{as_array, as_bytes};
use super::scripts::{Op, SCRIPTS, run_pipeline};

/// How often a broker re-reads which modules are rate-limited.
const MODULE_LIMITS_REFRESH: Duration = Duration::from_secs(1);

/// How long the admission of calls handed out unstarted (a blocking read's,
/// or a claim's 'held') may wait to go out with the first command about
/// them (usually their results) before it is sent alone.
pub(super) const DEFER_ADMIT: Duration = Duration::from_millis(2);

/// The rate limits a broker knows of (re-read at most once a second).
#[derive(Default)]
pub(super) struct Limited {
    /// When they were read; `None` forces a read.
    pub(super) at: Option<Instant>,
    modules: Vec<ModuleHash>,
    queues: HashSet<String>,
}

/// One entry of a held-back admission.
#[derive(Clone)]
struct HeldEntry {
    entry_id: String,
    call_id: String,
    task: String,
    attempt: u32,
    submitted_ms: u64,
    token: String,
}

/// The admission of entries a blocking read handed out, not sent yet (see
/// `RedisBroker::admit`): the admit script's keys and leading arguments,
/// and the entries still waiting for it. An entry is admitted by the first
/// round trip about its delivery, so Redis always admits it before anything
/// else about it: by its result's own complete script (which admits what it
/// publishes), or by this admission sent as the first command of that round
/// trip.
pub(super) struct Admission {
    keys: Vec<String>,
    head: Vec<String>,
    entries: Vec<HeldEntry>,
}

impl Admission {
    /// The admit script for the entries still held.
    fn op(&self) -> Op {
        let mut op = Op::eval(&SCRIPTS.admit);
        for k in &self.keys {
            op = op.key(k.clone());
        }
        for a in &self.head {
            op = op.arg(a);
        }
        // No rate-limited modules (an admission is held back only then).
        op = op.arg(0);
        for e in &self.entries {
            op = op
                .arg(&e.entry_id)
                .arg(&e.call_id)
                .arg(&e.task)
                .arg(e.attempt)
                .arg(e.submitted_ms);
        }
        op.build()
    }

    fn tokens(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.token.clone()).collect()
    }
}

/// A held-back admission, shared by the tokens of its entries; locked while
/// a round trip about its entries is in flight, so nothing overtakes it.
type Deferred = tokio::sync::Mutex<Option<Admission>>;

/// Held-back admissions by delivery token.
pub(super) type DeferredMap = Arc<Mutex<HashMap<String, Arc<Deferred>>>>;

impl RedisBroker {
    /// The rate-limited modules, re-read from the registry at most once a
    /// second (with the rate-limited queues).
    pub(super) async fn limited_modules(&self) -> Result<Vec<ModuleHash>> {
        {
            let cache = lock(&self.limits);
            if let Some(at) = cache.at
                && at.elapsed() < MODULE_LIMITS_REFRESH
            {
                return Ok(cache.modules.clone());
            }
        }
        let mut cmd = redis::cmd("HKEYS");
        cmd.arg(self.keys.rates());
        let fields: Vec<String> = self.query(&cmd, "cannot read the rate limits").await?;
        let mut fresh = Limited {
            at: Some(Instant::now()),
            ..Limited::default()
        };
        for f in &fields {
            match RateScope::from_key(f) {
                Some(RateScope::Module(m)) => fresh.modules.push(m),
                Some(RateScope::Queue(q)) => {
                    fresh.queues.insert(q);
                }
                None => {}
            }
        }
        let list = fresh.modules.clone();
        *lock(&self.limits) = fresh;
        Ok(list)
    }

    /// Runs the admission checks (pause, rate limits) over entries a
    /// blocking read handed out and starts those admitted, in one script;
    /// turns those admitted into deliveries.
    pub(super) async fn admit(
        &self,
        host_id: &str,
        queue: &str,
        modules: &[ModuleHash],
        entries: reply::Entries,
        paused: bool,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let parsed: Vec<std::result::Result<Call, String>> = entries
            .iter()
            .map(|(_, fields)| parse_entry(fields, self.max_entry()))
            .collect();
        let token_prefix = new_token();
        let mut op = Op::eval(&SCRIPTS.admit);
        for key in self.limit_keys(queue, modules) {
            op = op.key(key);
        }
        op = op
            .arg(host_id)
            .arg(&self.keys.prefix)
            .arg(&token_prefix)
            .arg(queue)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(modules.len());
        for m in modules {
            op = op.arg(m.to_hex());
        }
        for ((id, _), call) in entries.iter().zip(&parsed) {
            op = match call {
                Ok(c) => op
                    .arg(id)
                    .arg(&c.id)
                    .arg(&c.task)
                    .arg(c.attempt)
                    .arg(c.submitted_ms),
                Err(_) => op.arg(id).arg("").arg("").arg(0).arg(0),
            };
        }
        // Nothing to hold back for (as far as this host knows; the scripts
        // still check): hand the calls out at once and admit them with the
        // first command about them (usually their results' script), which
        // saves a round trip and a script per blocking read. A call that turns out not
        // admitted (revoked or finished meanwhile, over a limit set within
        // the last second) ran for nothing: its result is refused, as any
        // stale delivery's.
        let defer = !paused
            && modules.is_empty()
            && !lock(&self.limits).queues.contains(queue)
            && parsed.iter().all(|c| c.is_ok());
        let ctx = EntryContext {
            queue,
            token_prefix: &token_prefix,
        };
        if defer {
            let first = out.len();
            for ((entry_id, fields), parsed) in entries.into_iter().zip(parsed) {
                let entry = Claimed {
                    entry_id,
                    fields,
                    parsed,
                    deliveries: 1,
                    started: Some(StartOutcome::Run),
                };
                self.accept_entry(&ctx, entry, out).await?;
            }
            self.hold(host_id, queue, &token_prefix, out[first..].iter());
            return Ok(());
        }
        let reply = self.eval(op.build(), "cannot admit claimed calls").await?;
        let outcomes = as_array(&reply)
            .filter(|o| o.len() == entries.len())
            .ok_or_else(|| Error::Malformed("unexpected reply of the admit script".into()))?;
        for (((entry_id, fields), parsed), outcome) in entries.into_iter().zip(parsed).zip(outcomes)
        {
            if as_bytes(outcome) == Some(b"no") {
                continue;
            }
            let entry = Claimed {
                entry_id,
                fields,
                parsed,
                deliveries: 1,
                started: start_outcome(Some(outcome)),
            };
            self.accept_entry(&ctx, entry, out).await?;
        }
        Ok(())
    }

    /// Holds back the admission of `delivered`, handed out unstarted, until
    /// a command about one of them goes out (see `admit`).
    pub(super) fn hold<'a>(
        &self,
        host_id: &str,
        queue: &str,
        token_prefix: &str,
        delivered: impl Iterator<Item = &'a Delivery>,
    ) {
        let entries = delivered
            .map(|d| HeldEntry {
                entry_id: d.entry_id.clone(),
                call_id: d.call.id.clone(),
                task: d.call.task.clone(),
                attempt: d.call.attempt,
                submitted_ms: d.call.submitted_ms,
                token: d.token.clone(),
            })
            .collect();
        self.defer_admission(Admission {
            keys: self.limit_keys(queue, &[]),
            head: vec![
                host_id.to_string(),
                self.keys.prefix.clone(),
                token_prefix.to_string(),
                queue.to_string(),
                self.state_ttl_ms(Duration::ZERO).to_string(),
                self.marker_ttl_ms().to_string(),
                WAKE_TTL.as_millis().to_string(),
            ],
            entries,
        });
    }

    /// Holds back an admission (see `admit`) until a command about one of
    /// its deliveries goes out, or the admission delay passes.
    fn defer_admission(&self, admission: Admission) {
        let tokens = admission.tokens();
        let deferred = Arc::new(Deferred::new(Some(admission)));
        {
            let mut map = lock(&self.deferred);
            for t in tokens {
                map.insert(t, deferred.clone());
            }
        }
        let (conn, url, map) = (self.conn.clone(), self.url.clone(), self.deferred.clone());
        let delay = self.admission_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut backoff = Duration::from_millis(50);
            for attempt in 1..=8 {
                match send_deferred(&conn, &url, &map, &deferred).await {
                    Ok(_) => return,
                    Err(e) if attempt == 8 => {
                        // Their results carry the admission, or the entries
                        // are reclaimed after the lease.
                        warn!(cause = %e, "cannot admit claimed calls; leaving it to their results");
                    }
                    Err(e) => {
                        debug!(cause = %e, attempt, "cannot admit claimed calls; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }

    /// Sends the deferred admission of `token`'s delivery, if any is still
    /// pending, before something else is done about it. Returns `false` if
    /// that admission did not start its call (paused, revoked, over a
    /// limit, reclaimed): its result must not be published.
    pub(super) async fn settle(&self, token: &str) -> Result<bool> {
        let deferred = lock(&self.deferred).get(token).cloned();
        match deferred {
            Some(d) => {
                let refused = send_deferred(&self.conn, &self.url, &self.deferred, &d).await?;
                Ok(!refused.contains(token))
            }
            None => Ok(true),
        }
    }

    /// Locks the held-back admissions of the deliveries in `done`, whose
    /// results are about to be published: their results' scripts admit
    /// them (the admissions stay locked meanwhile, so nothing else sends
    /// them, and a failed round trip leaves them as they were).
    pub(super) async fn carry_admissions(&self, done: &[(Delivery, Envelope)]) -> Carried {
        let mut deferred: Vec<Arc<Deferred>> = {
            let map = lock(&self.deferred);
            done.iter()
                .filter_map(|(d, _)| map.get(&d.token).cloned())
                .collect()
        };
        deferred.sort_by_key(Arc::as_ptr);
        deferred.dedup_by_key(|d| Arc::as_ptr(d));
        let mut slots = Vec::with_capacity(deferred.len());
        for d in deferred {
            slots.push(d.lock_owned().await);
        }
        let done_tokens: HashSet<&str> = done.iter().map(|(d, _)| d.token.as_str()).collect();
        let held: HashSet<String> = slots
            .iter()
            .filter_map(|slot| slot.as_ref())
            .flat_map(|a| &a.entries)
            .filter(|e| done_tokens.contains(e.token.as_str()))
            .map(|e| e.token.clone())
            .collect();
        Carried { slots, held }
    }
}

/// The held-back admissions of deliveries whose results are being
/// published, locked until [`Carried::finish`] (see
/// `RedisBroker::carry_admissions`).
pub(super) struct Carried {
    slots: Vec<tokio::sync::OwnedMutexGuard<Option<Admission>>>,
    /// The tokens of those deliveries whose admission is held back: their
    /// complete scripts admit them.
    pub(super) held: HashSet<String>,
}

impl Carried {
    /// Ends the round trip: what the scripts admitted (or refused), the
    /// tokens in `answered`, is no longer held; the admission of the rest
    /// (left alone, or a script that failed) still goes out, by itself if
    /// need be. Unlocks the admissions.
    pub(super) fn finish(mut self, map: &DeferredMap, answered: &HashSet<&str>) {
        let settled: Vec<String> = self
            .held
            .into_iter()
            .filter(|t| answered.contains(t.as_str()))
            .collect();
        let settled_set: HashSet<&str> = settled.iter().map(String::as_str).collect();
        for slot in &mut self.slots {
            if let Some(a) = slot.as_mut() {
                a.entries
                    .retain(|e| !settled_set.contains(e.token.as_str()));
                if a.entries.is_empty() {
                    **slot = None;
                }
            }
        }
        forget_tokens(map, &settled);
    }
}

/// Sends what `d` still holds unless it went out already. Returns the
/// tokens it did not start (paused, revoked, over a limit, reclaimed):
/// their calls must not be published. Empty if nothing was left to send.
async fn send_deferred(
    conn: &ConnectionManager,
    url: &str,
    map: &DeferredMap,
    d: &Deferred,
) -> Result<HashSet<String>> {
    let mut slot = d.lock().await;
    let Some(admission) = slot.as_ref() else {
        return Ok(HashSet::new());
    };
    let reply = run_pipeline(
        conn.clone(),
        url,
        vec![admission.op()],
        "cannot admit claimed calls",
    )
    .await?
    .pop()
    .unwrap_or_else(|| Err(Error::Malformed("no reply to the admit script".into())));
    let tokens = admission.tokens();
    *slot = None;
    forget_tokens(map, &tokens);
    Ok(refused_by(&tokens, reply))
}

/// Marks `tokens` admitted (or refused): they need nothing more.
fn forget_tokens(map: &DeferredMap, tokens: &[String]) {
    let mut map = lock(map);
    for t in tokens {
        map.remove(t);
    }
}

/// The `tokens` (in the order of the script's entries) an admit script did
/// not start, from its reply. A failed script started none of them; they
/// stay pending and are reclaimed after the lease.
fn refused_by(tokens: &[String], reply: Result<Value>) -> HashSet<String> {
    let reply = reply.unwrap_or_else(|e| {
        warn!(cause = %e, "admission of claimed calls failed; they will be reclaimed");
        Value::Nil
    });
    let outcomes = as_array(&reply).unwrap_or_default();
    tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| outcomes.get(*i).and_then(as_bytes) != Some(b"run"))
        .map(|(_, t)| {
            debug!(token = %t, "a deferred admission did not start its call");
            t.clone()
        })
        .collect()
}
