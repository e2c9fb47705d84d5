//! Handing out calls: a claim makes a non-blocking pass over its queues
//! (promote due delayed calls, reclaim entries of dead hosts, read and
//! start new ones in the claim script), then blocks in `XREADGROUP` until
//! something comes; entries that cannot run are dead-lettered (buried).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use crate::broker::{Delivery, StartOutcome, new_token};
use crate::error::{Error, Result};
use crate::types::{Call, Envelope, ErrorKind, ModuleHash, TaskError};
use crate::validate::check_claim;

use super::RedisBroker;
use super::entry::{
    call_field, delivery_token, parse_entry, recognisable_id, start_outcome, truncate_utf8,
};
use super::keys::{GROUP, WAKE_TTL};
use super::lock;
use super::reply;
use super::reply::{as_array, as_bytes, as_int, as_string, stream_entries};
use super::scripts::{Op, SCRIPTS};

/// Delayed calls promoted per queue per claim.
const MAX_PROMOTE: usize = 1000;

/// Bytes of a garbage entry kept in its dead letter.
const GARBAGE_KEEP: usize = 4096;

/// A blocking read that drained its queues (see `RedisBroker::claim_calls`).
pub(super) struct Drained {
    host_id: String,
    queues: Vec<String>,
    /// The queues that read blocked on (not paused, tokens left).
    blockable: Vec<String>,
    /// When the non-blocking pass is due again.
    until: Instant,
}

/// What one non-blocking pass of a claim does on each of its queues.
#[derive(Clone, Copy)]
struct Pass<'a> {
    host_id: &'a str,
    /// The rate-limited modules (their buckets are the script's keys).
    modules: &'a [ModuleHash],
    /// Whether to reclaim the idle entries of dead hosts this time.
    reclaim: bool,
    /// Whether to forget idle consumers this time.
    gc: bool,
}

/// Where the entries one script handed out come from.
#[derive(Clone, Copy)]
pub(super) struct EntryContext<'a> {
    pub(super) queue: &'a str,
    /// The script's random token prefix (see [`delivery_token`]).
    pub(super) token_prefix: &'a str,
}

/// One entry a claim or admit script handed out.
pub(super) struct Claimed {
    pub(super) entry_id: String,
    pub(super) fields: Vec<(String, Vec<u8>)>,
    /// Its call, or why it is garbage.
    pub(super) parsed: std::result::Result<Call, String>,
    pub(super) deliveries: u32,
    /// What the script did about starting it.
    pub(super) started: Option<StartOutcome>,
}

/// A queue entry to dead-letter (see `RedisBroker::bury`).
struct Bury<'a> {
    queue: &'a str,
    entry_id: &'a str,
    deliveries: u32,
    /// Why it is dead-lettered.
    reason: &'a str,
    /// The entry's call as found (garbage cut to [`GARBAGE_KEEP`] bytes).
    raw: &'a str,
    /// Its call id, empty if it has no usable one.
    id: &'a str,
    /// The envelope its call fails with, if it has an id.
    envelope: Option<&'a Envelope>,
    /// The call, if it could be read.
    call: Option<&'a Call>,
}

impl RedisBroker {
    pub(super) async fn claim_calls(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        if !check_claim(queues, max)? {
            return Ok(Vec::new());
        }
        let mut seen = HashSet::new();
        let queues: Vec<String> = queues
            .iter()
            .filter(|q| seen.insert(q.as_str()))
            .cloned()
            .collect();
        let deadline = Instant::now() + block;
        let mut out = Vec::new();
        // Right after a blocking read that drained the queues, the
        // non-blocking pass would find only what a blocking read returns at
        // once: skip it (one script less per claim, off the latency path).
        if let Some(d) = self.still_drained(host_id, &queues) {
            let now = Instant::now();
            let wait = (deadline.min(d.until) - now)
                .min(self.config.lease / 2)
                .max(Duration::from_millis(1));
            let modules = self.limited_modules().await?;
            self.block_for_new(host_id, &d.blockable, max, wait, &modules, &mut out)
                .await?;
            if !out.is_empty() {
                if out.len() < max {
                    *lock(&self.drained) = Some(d);
                }
                return Ok(out);
            }
        }
        loop {
            let pass = Instant::now();
            let modules = self.limited_modules().await?;
            let reclaim = Self::take_turn(&self.last_reclaim, self.reclaim_interval());
            let gc = reclaim && Self::take_turn(&self.last_gc, self.consumer_gc_idle() / 10);
            let plan = Pass {
                host_id,
                modules: &modules,
                reclaim,
                gc,
            };
            let mut next_due: Option<Duration> = None;
            let mut blockable = Vec::new();
            for q in &queues {
                let want = max - out.len();
                if want == 0 {
                    break;
                }
                let (due, open) = self.claim_queue(&plan, q, want, &mut out).await?;
                next_due = match (next_due, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if open {
                    blockable.push(q.clone());
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Block for new entries, but wake up for the next delayed call and
            // often enough to keep reclaiming the entries of dead hosts.
            let mut wait = deadline - now;
            wait = wait
                .min(self.config.lease / 2)
                .max(Duration::from_millis(1));
            if let Some(due) = next_due {
                wait = wait.min(due.max(Duration::from_millis(1)));
            }
            if blockable.is_empty() {
                // Paused or out of tokens everywhere: nothing to block on.
                tokio::time::sleep(wait).await;
                continue;
            }
            self.block_for_new(host_id, &blockable, max, wait, &modules, &mut out)
                .await?;
            if !out.is_empty() {
                if out.len() < max {
                    // Until the pass has something to do again: a delayed
                    // call or a bucket due, or at the latest the end of this
                    // claim's block (a resumed queue is noticed by then).
                    let until = pass + next_due.unwrap_or(block).min(block);
                    *lock(&self.drained) = Some(Drained {
                        host_id: host_id.to_string(),
                        queues: queues.clone(),
                        blockable,
                        until,
                    });
                }
                return Ok(out);
            }
        }
    }

    fn reclaim_interval(&self) -> Duration {
        (self.config.lease / 4).clamp(Duration::from_millis(20), Duration::from_secs(2))
    }

    /// Whether it is time to look for idle entries again, without taking the turn.
    fn turn_due(slot: &Mutex<Option<Instant>>, every: Duration) -> bool {
        lock(slot).is_none_or(|t| t.elapsed() >= every)
    }

    /// The queues a claim may block on at once, if the last claim of
    /// `host_id` on `queues` ended with a blocking read that drained them and
    /// nothing the non-blocking pass does (promote a delayed call, refill a
    /// bucket, reclaim, notice a resumed queue) is due yet.
    fn still_drained(&self, host_id: &str, queues: &[String]) -> Option<Drained> {
        let d = lock(&self.drained).take()?;
        let fresh = d.host_id == host_id
            && d.queues == queues
            && Instant::now() < d.until
            && !Self::turn_due(&self.last_reclaim, self.reclaim_interval());
        fresh.then_some(d)
    }

    /// Whether it is time to look for idle entries again (and note that we do).
    pub(super) fn take_turn(slot: &Mutex<Option<Instant>>, every: Duration) -> bool {
        let now = Instant::now();
        let mut last = lock(slot);
        match *last {
            Some(t) if now.duration_since(t) < every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Consumers idle this long (and holding nothing) are forgotten.
    fn consumer_gc_idle(&self) -> Duration {
        (self.config.lease * 10).max(Duration::from_secs(300))
    }

    /// One non-blocking pass over one queue: promote, reclaim, read.
    /// Returns the time until it is worth another pass without a new entry
    /// (a delayed call due, a bucket refilled), and whether a blocking read
    /// may hand out its new entries now (not paused, tokens left).
    async fn claim_queue(
        &self,
        pass: &Pass<'_>,
        queue: &str,
        want: usize,
        out: &mut Vec<Delivery>,
    ) -> Result<(Option<Duration>, bool)> {
        let Pass {
            host_id,
            modules,
            reclaim,
            gc,
        } = *pass;
        let mut op = Op::eval(&SCRIPTS.claim);
        for key in self.limit_keys(queue, modules) {
            op = op.key(key);
        }
        let token_prefix = new_token();
        let mut op = op
            .arg(host_id)
            .arg(want)
            .arg(self.config.lease.as_millis().max(1) as u64)
            .arg(if reclaim { "1" } else { "0" })
            .arg(MAX_PROMOTE)
            .arg(if gc {
                self.consumer_gc_idle().as_millis() as u64
            } else {
                0
            })
            .arg(&self.keys.prefix)
            .arg(&token_prefix)
            .arg(self.config.max_deliveries)
            .arg(queue)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(self.max_entry());
        for m in modules {
            op = op.arg(m.to_hex());
        }
        let reply = self.eval(op.build(), "cannot claim calls").await?;
        let ctx = EntryContext {
            queue,
            token_prefix: &token_prefix,
        };
        let bad = || Error::Malformed("unexpected reply of the claim script".into());
        // Where in `out` the deliveries handed out unstarted ('held') are.
        let mut held_at = Vec::new();
        let parts = as_array(&reply).ok_or_else(bad)?;
        let next_due = parts.first().and_then(as_int).ok_or_else(bad)?;
        let entries = parts.get(1).and_then(as_array).ok_or_else(bad)?;
        for e in entries {
            let e = as_array(e).ok_or_else(bad)?;
            let id = e.first().and_then(as_string).ok_or_else(bad)?;
            let fields = e.get(1).map(reply::fields).unwrap_or_default();
            let deliveries = e.get(2).and_then(as_int).ok_or_else(bad)?;
            let deliveries = u32::try_from(deliveries).unwrap_or(u32::MAX);
            let held = e.get(3).and_then(as_bytes) == Some(b"held");
            let started = if held {
                Some(StartOutcome::Run)
            } else {
                start_outcome(e.get(3))
            };
            let parsed = parse_entry(&fields, self.max_entry());
            let before = out.len();
            let entry = Claimed {
                entry_id: id,
                fields,
                parsed,
                deliveries,
                started,
            };
            self.accept_entry(&ctx, entry, out).await?;
            if held && out.len() > before {
                held_at.push(before);
            }
        }
        if !held_at.is_empty() {
            self.hold(
                host_id,
                queue,
                &token_prefix,
                held_at.iter().map(|&i| &out[i]),
            );
        }
        let blockable = parts.get(2).and_then(as_int) == Some(1);
        Ok((
            u64::try_from(next_due).ok().map(Duration::from_millis),
            blockable,
        ))
    }

    /// Blocks in `XREADGROUP` on all queues for new entries.
    async fn block_for_new(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
        modules: &[ModuleHash],
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let block_ms = block.as_millis().max(1) as u64;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(host_id)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS");
        for q in queues {
            cmd.arg(self.keys.stream(q));
        }
        for _ in queues {
            cmd.arg(">");
        }
        // Right behind the read on the same connection, so it runs as soon
        // as the read returns (no round trip of its own): whether a queue
        // was paused meanwhile, in which case admission cannot wait.
        let mut paused = redis::cmd("EXISTS");
        for q in queues {
            paused.arg(self.keys.paused(q));
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).add_command(paused);
        let replies = self
            .blocking
            .query(&pipe, block)
            .await
            .map_err(|e| self.err(e, "cannot read new calls"))?;
        let (Some(reply), Some(paused)) = (replies.first(), replies.get(1)) else {
            return Err(Error::Malformed("unexpected reply of XREADGROUP".into()));
        };
        let paused = as_int(paused) != Some(0);
        let by_key: HashMap<String, &String> =
            queues.iter().map(|q| (self.keys.stream(q), q)).collect();
        let mut got = Vec::new();
        for (key, entries) in stream_entries(reply)
            .ok_or_else(|| Error::Malformed("unexpected reply of XREADGROUP".into()))?
        {
            let Some(queue) = by_key.get(&key) else {
                continue;
            };
            // If this fails the entries stay pending and are reclaimed after the lease.
            self.admit(host_id, queue, modules, entries, paused, &mut got)
                .await?;
        }
        // Several streams may each answer with up to `max`: hand back the surplus.
        if got.len() > max {
            for extra in got.split_off(max) {
                if let Err(e) = self.hand_back(&extra).await {
                    // Still pending: reclaimed after the lease.
                    warn!(call_id = %extra.call.id, cause = %e, "cannot hand back a surplus call");
                }
            }
        }
        out.extend(got);
        Ok(())
    }

    /// Turns an entry a script handed out into a delivery, or buries it.
    pub(super) async fn accept_entry(
        &self,
        ctx: &EntryContext<'_>,
        entry: Claimed,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let EntryContext {
            queue,
            token_prefix,
        } = *ctx;
        let Claimed {
            entry_id,
            fields,
            parsed,
            deliveries,
            started,
        } = entry;
        let raw = call_field(&fields);
        match parsed {
            Err(reason) => {
                let raw = raw.unwrap_or_default();
                let id = recognisable_id(raw);
                warn!(queue, entry = %entry_id, call_id = id.as_deref().unwrap_or(""), %reason,
                    "dead-lettering a garbage queue entry");
                let envelope = id.as_ref().map(|id| {
                    Envelope::failed(
                        id.clone(),
                        TaskError::new(
                            ErrorKind::BadInput,
                            format!("the queued call is malformed: {reason}"),
                        ),
                    )
                });
                let mut kept = String::from_utf8_lossy(raw).into_owned();
                truncate_utf8(&mut kept, GARBAGE_KEEP);
                self.bury(Bury {
                    queue,
                    entry_id: &entry_id,
                    deliveries,
                    reason: &reason,
                    raw: &kept,
                    id: id.as_deref().unwrap_or(""),
                    envelope: envelope.as_ref(),
                    call: None,
                })
                .await
            }
            Ok(call) if deliveries > self.config.max_deliveries => {
                let reason = format!(
                    "delivered {} times, over the limit of {}: every host that took it stopped heartbeating",
                    deliveries, self.config.max_deliveries
                );
                warn!(queue, call_id = %call.id, deliveries, "call lost: delivery limit reached");
                let mut envelope =
                    Envelope::failed(call.id.clone(), TaskError::new(ErrorKind::Lost, &reason));
                envelope.attempt = call.attempt;
                let raw = String::from_utf8_lossy(raw.unwrap_or_default()).into_owned();
                self.bury(Bury {
                    queue,
                    entry_id: &entry_id,
                    deliveries,
                    reason: &reason,
                    raw: &raw,
                    id: &call.id,
                    envelope: Some(&envelope),
                    call: Some(&call),
                })
                .await
            }
            Ok(call) => {
                out.push(Delivery {
                    call,
                    queue: queue.to_string(),
                    token: delivery_token(token_prefix, &entry_id),
                    entry_id,
                    deliveries,
                    started,
                });
                Ok(())
            }
        }
    }

    /// Dead-letters a queue entry and publishes the envelope its call
    /// fails with, if it has one (`bury.lua`).
    async fn bury(&self, bury: Bury<'_>) -> Result<()> {
        let Bury {
            queue,
            entry_id,
            deliveries,
            reason,
            raw,
            id,
            envelope,
            call,
        } = bury;
        let kind = envelope
            .and_then(|e| e.error.as_ref())
            .map_or("", |e| e.kind.as_str());
        let envelope = match envelope {
            Some(e) => serde_json::to_string(e).unwrap_or_default(),
            None => String::new(),
        };
        let op = Op::eval(&SCRIPTS.bury)
            .key(self.keys.stream(queue))
            .key(self.keys.dead())
            .key(self.keys.result(id))
            .key(self.keys.call(id))
            .key(self.keys.wake(id))
            .key(self.keys.events())
            .key(self.keys.dead_counts())
            .key(self.keys.done(queue))
            .arg(entry_id)
            .arg(deliveries)
            .arg(reason)
            .arg(raw)
            .arg(envelope)
            .arg(self.result_ttl_ms())
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(self.config.dead_letter_cap.max(1))
            .arg(id)
            .arg(queue)
            .arg(kind)
            .arg(call.map_or("", |c| c.task.as_str()))
            .arg(call.map_or(0, |c| c.submitted_ms))
            .build();
        // The entry stays pending if this fails, so it is reclaimed and
        // buried later: no reason to fail the claim that found it.
        if let Err(e) = self.eval(op, "cannot dead-letter a queue entry").await {
            warn!(queue, entry = %entry_id, cause = %e, "dead-lettering failed; will retry after the lease");
        }
        Ok(())
    }
}
