//! What a host does with a delivery: start it, publish its result
//! (complete), schedule a retry, or hand it back (release). Each is one
//! script that checks the delivery still holds its entry and token.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tracing::{debug, warn};

use crate::broker::{Delivery, StartOutcome};
use crate::error::{Error, Result};
use crate::ops::RateScope;
use crate::types::Envelope;
use crate::validate::check_final;

use super::RedisBroker;
use super::entry::entry_number;
use super::keys::WAKE_TTL;
use super::reply::{as_array, as_int, as_string};
use super::scripts::{Op, SCRIPTS};

/// Results one complete script publishes at most.
const COMPLETE_CHUNK: usize = 128;

impl RedisBroker {
    pub(super) async fn start_delivery(
        &self,
        delivery: &Delivery,
        host_id: &str,
    ) -> Result<StartOutcome> {
        // The claim revoked or skipped it already (and acknowledged its entry).
        if let Some(outcome @ (StartOutcome::Revoked | StartOutcome::Skip)) = delivery.started {
            return Ok(outcome);
        }
        self.settle(&delivery.token).await?;
        let call = &delivery.call;
        let op = Op::eval(&SCRIPTS.start)
            .key(self.keys.stream(&delivery.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.result(&call.id))
            .key(self.keys.revoked(&call.id))
            .key(self.keys.wake(&call.id))
            .key(self.keys.events())
            .key(self.keys.done(&delivery.queue))
            .arg(&delivery.entry_id)
            .arg(delivery.deliveries)
            .arg(&delivery.token)
            .arg(host_id)
            .arg(call.attempt)
            .arg(&delivery.queue)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(&call.id)
            .arg(&call.task)
            .arg(call.submitted_ms)
            .build();
        let reply = self.eval(op, "cannot start a call").await?;
        match as_string(&reply).as_deref() {
            Some("run") => Ok(StartOutcome::Run),
            Some("revoked") => Ok(StartOutcome::Revoked),
            Some("skip") => Ok(StartOutcome::Skip),
            Some("stale") => {
                debug!(call_id = %call.id, entry = %delivery.entry_id, "stale delivery not started");
                Ok(StartOutcome::Skip)
            }
            _ => Err(Error::Malformed(
                "unexpected reply of the start script".into(),
            )),
        }
    }

    pub(super) async fn publish_results(&self, done: &[(Delivery, Envelope)]) -> Result<Vec<bool>> {
        let mut jsons = Vec::with_capacity(done.len());
        for (delivery, envelope) in done {
            check_final(delivery, envelope)?;
            jsons.push(
                serde_json::to_string(envelope).map_err(|e| Error::InvalidCall(e.to_string()))?,
            );
        }
        // One script per queue and chunk, all in one round trip.
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (d, _)) in done.iter().enumerate() {
            by_queue.entry(d.queue.as_str()).or_default().push(i);
        }
        let chunks: Vec<&[usize]> = by_queue
            .values()
            .flat_map(|indices| indices.chunks(COMPLETE_CHUNK))
            .collect();
        // Held-back admissions of these deliveries go with their results.
        let carried = self.carry_admissions(done).await;
        let held = &carried.held;
        let ops = chunks
            .iter()
            .map(|chunk| self.complete_op(done, &jsons, chunk, held))
            .collect();
        let replies = self.pipeline(ops, "cannot publish results").await?;
        let mut out = vec![false; done.len()];
        // Deliveries whose admission must go out on its own first, and
        // those a script answered for (admitted or refused, if held).
        let (mut apart, mut answered) = (Vec::new(), HashSet::new());
        let mut outcome = |i: usize, flag: Option<i64>| match flag {
            Some(2) => apart.push(i),
            Some(f) => {
                out[i] = f == 1;
                answered.insert(done[i].0.token.as_str());
            }
            None => {}
        };
        let mut alone = Vec::new();
        for (chunk, r) in chunks.iter().zip(replies) {
            match r {
                Ok(v) => {
                    let flags = as_array(&v).unwrap_or_default();
                    for (k, &i) in chunk.iter().enumerate() {
                        outcome(i, flags.get(k).and_then(as_int));
                    }
                }
                Err(e) if e.is_transient() => return Err(e),
                // One call's bad data stopped the script: find out per call
                // (repeating a completion, or an admission, is harmless).
                Err(_) => alone.extend(chunk.iter().copied()),
            }
        }
        if !alone.is_empty() {
            let ops = alone
                .iter()
                .map(|&i| self.complete_op(done, &jsons, &[i], held))
                .collect();
            let replies = self.pipeline(ops, "cannot publish results").await?;
            for (&i, r) in alone.iter().zip(replies) {
                match r {
                    Ok(v) => outcome(i, as_array(&v).and_then(|f| f.first()).and_then(as_int)),
                    Err(e) if !e.is_transient() => {
                        // One call's bad data must not hide the others' outcome.
                        warn!(call_id = %done[i].0.call.id, cause = %e, "result not published");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        carried.finish(&self.deferred, &answered);
        // A queue paused or rate-limited since these calls were read: their
        // admission goes first, on its own (it puts them back in line or in
        // the delayed set, refusing them), then the results of those it
        // started after all.
        for i in apart {
            if !self.settle(&done[i].0.token).await? {
                continue;
            }
            let op = self.complete_op(done, &jsons, &[i], &HashSet::new());
            let reply = self
                .pipeline(vec![op], "cannot publish results")
                .await?
                .pop()
                .expect("one reply")?;
            out[i] = as_array(&reply).and_then(|f| f.first()).and_then(as_int) == Some(1);
        }
        Ok(out)
    }

    /// The complete script for the deliveries `chunk` (indices into `done`
    /// and `jsons`, their envelopes' JSON), all of one queue; it admits
    /// those whose token is in `held` (their admission was held back).
    fn complete_op(
        &self,
        done: &[(Delivery, Envelope)],
        jsons: &[String],
        chunk: &[usize],
        held: &HashSet<String>,
    ) -> Op {
        let queue = &done[chunk[0]].0.queue;
        let mut op = Op::eval(&SCRIPTS.complete)
            .key(self.keys.stream(queue))
            .key(self.keys.events())
            .key(self.keys.done(queue))
            .key(self.keys.latency(queue))
            .key(self.keys.paused(queue))
            .key(self.keys.bucket(&RateScope::Queue(queue.clone())));
        for &i in chunk {
            let id = &done[i].0.call.id;
            op = op
                .key(self.keys.call(id))
                .key(self.keys.result(id))
                .key(self.keys.wake(id))
                .key(self.keys.revoked(id));
        }
        // The range of the chunk's entries, for the script's one XPENDING
        // (none if an id is not `ms-seq`, or for a single delivery).
        let ids = chunk.iter().map(|&i| entry_number(&done[i].0.entry_id));
        let id = |(ms, seq): (u64, u64)| format!("{ms}-{seq}");
        let [low, high] = match (ids.clone().min(), ids.max()) {
            (Some(Some(low)), Some(Some(high))) if chunk.len() > 1 => [id(low), id(high)],
            _ => [String::new(), String::new()],
        };
        let mut op = op
            .arg(self.result_ttl_ms())
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(queue)
            .arg(low)
            .arg(high);
        for &i in chunk {
            let (delivery, envelope) = &done[i];
            let call = &delivery.call;
            op = op
                .arg(&delivery.entry_id)
                .arg(delivery.deliveries)
                .arg(&delivery.token)
                .arg(jsons[i].as_str())
                .arg(&call.id)
                .arg(envelope.state.as_str())
                .arg(&envelope.host)
                .arg(&call.task)
                .arg(envelope.error.as_ref().map_or("", |e| e.kind.as_str()))
                .arg(call.submitted_ms)
                .arg(call.attempt)
                .arg(if held.contains(&delivery.token) {
                    "1"
                } else {
                    "0"
                });
        }
        op.build()
    }

    pub(super) async fn schedule_retry(
        &self,
        delivery: &Delivery,
        last: &Envelope,
        delay: Duration,
    ) -> Result<bool> {
        self.settle(&delivery.token).await?;
        let mut next = delivery.call.clone();
        next.attempt = next.attempt.saturating_add(1);
        let next_json =
            serde_json::to_string(&next).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let last_json =
            serde_json::to_string(last).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let call = &delivery.call;
        let op = Op::eval(&SCRIPTS.retry)
            .key(self.keys.stream(&delivery.queue))
            .key(self.keys.delayed(&delivery.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.events())
            .arg(&delivery.entry_id)
            .arg(delivery.deliveries)
            .arg(&delivery.token)
            .arg(next_json)
            .arg(delay.as_millis() as u64)
            .arg(last_json)
            .arg(self.state_ttl_ms(delay))
            .arg(next.attempt)
            .arg(&call.id)
            .arg(&delivery.queue)
            .arg(&last.host)
            .arg(&call.task)
            .arg(last.error.as_ref().map_or("", |e| e.kind.as_str()))
            .build();
        let reply = self.eval(op, "cannot schedule a retry").await?;
        Ok(as_int(&reply) == Some(1))
    }

    pub(super) async fn hand_back(&self, delivery: &Delivery) -> Result<bool> {
        self.settle(&delivery.token).await?;
        let call = &delivery.call;
        let json = serde_json::to_string(call).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let op = Op::eval(&SCRIPTS.release)
            .key(self.keys.stream(&delivery.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.result(&call.id))
            .key(self.keys.events())
            .arg(&delivery.entry_id)
            .arg(delivery.deliveries)
            .arg(&delivery.token)
            .arg(json)
            .arg(&call.id)
            .arg(&delivery.queue)
            .arg(&call.task)
            .build();
        let reply = self.eval(op, "cannot release a call").await?;
        Ok(as_int(&reply) == Some(1))
    }
}
