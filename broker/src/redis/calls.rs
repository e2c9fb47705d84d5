//! Submitting calls (one script per queue and chunk, all in one round trip)
//! and revoking them.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use redis::Value;

use crate::error::{Error, Result};
use crate::types::{Call, is_valid_call_id};
use crate::validate::check_call;

use super::RedisBroker;
use super::keys::WAKE_TTL;
use super::reply::as_int;
use super::scripts::{Op, SCRIPTS};

/// Calls one submit script queues at most (a script blocks the server while
/// it runs, so huge batches are cut into chunks, still in one round trip).
const SUBMIT_CHUNK: usize = 256;

impl RedisBroker {
    /// The submit scripts of `calls` (one per queue and chunk), after checking
    /// every call: nothing is queued if one is invalid. With `waiting`, the
    /// calls are marked as waited for (see `listen.lua`), so their results come
    /// with a wake-up.
    pub(super) fn submit_ops(
        &self,
        calls: &[Call],
        countdown: Option<Duration>,
        waiting: bool,
    ) -> Result<Vec<Op>> {
        // Check everything before anything is queued.
        let mut jsons = Vec::with_capacity(calls.len());
        for call in calls {
            check_call(call, self.config.max_args)?;
            jsons.push(serde_json::to_string(call).map_err(|e| Error::InvalidCall(e.to_string()))?);
        }
        // One script per queue and chunk, all in one round trip.
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, call) in calls.iter().enumerate() {
            by_queue.entry(call.queue.as_str()).or_default().push(i);
        }
        let countdown_ms: i64 = countdown.map_or(-1, |d| super::keys::millis_capped(d) as i64);
        let state_ttl = self.state_ttl_ms(countdown.unwrap_or_default());
        let mut ops = Vec::new();
        for (queue, indices) in &by_queue {
            for chunk in indices.chunks(SUBMIT_CHUNK) {
                let mut op = Op::eval(&SCRIPTS.submit)
                    .key(self.keys.stream(queue))
                    .key(self.keys.delayed(queue))
                    .key(self.keys.events())
                    .key(self.keys.queues());
                for &i in chunk {
                    op = op.key(self.keys.call(&calls[i].id));
                }
                let mut op = op
                    .arg(*queue)
                    .arg(state_ttl)
                    .arg(countdown_ms)
                    .arg(if waiting { "1" } else { "0" });
                for &i in chunk {
                    let call = &calls[i];
                    op = op
                        .arg(jsons[i].as_str())
                        .arg(&call.id)
                        .arg(call.attempt)
                        .arg(&call.task)
                        .arg(call.submitted_ms);
                }
                ops.push(op.build());
            }
        }
        Ok(ops)
    }

    pub(super) async fn submit_calls(
        &self,
        calls: &[Call],
        countdown: Option<Duration>,
    ) -> Result<()> {
        let ops = self.submit_ops(calls, countdown, false)?;
        for r in self.pipeline(ops, "cannot submit calls").await? {
            r?;
        }
        Ok(())
    }

    pub(super) async fn revoke_call(&self, id: &str) -> Result<bool> {
        if !is_valid_call_id(id) {
            return Ok(false);
        }
        // The script needs the call's queue keys; a call's queue never
        // changes, so reading it first only races with the call's creation.
        for _ in 0..3 {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(self.keys.call(id)).arg("queue");
            let queue: Option<String> = self.query(&cmd, "cannot revoke a call").await?;
            let queue = queue.unwrap_or_default();
            let op = Op::eval(&SCRIPTS.revoke)
                .key(self.keys.call(id))
                .key(self.keys.result(id))
                .key(self.keys.revoked(id))
                .key(self.keys.wake(id))
                .key(self.keys.events())
                .key(self.keys.done(&queue))
                .key(self.keys.stream(&queue))
                .arg(id)
                .arg(self.result_ttl_ms())
                .arg(self.marker_ttl_ms())
                .arg(WAKE_TTL.as_millis() as u64)
                .arg(&queue)
                .arg(self.config.lease.as_millis().max(1) as u64)
                .build();
            match as_int(&self.eval(op, "cannot revoke a call").await?) {
                Some(-1) => continue,
                r => return Ok(r == Some(1)),
            }
        }
        Err(Error::Malformed(format!("call {id} keeps changing queues")))
    }

    pub(super) async fn check_revoked(&self, id: &str) -> Result<bool> {
        if !is_valid_call_id(id) {
            return Ok(false);
        }
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.keys.revoked(id));
        let n: i64 = self.query(&cmd, "cannot check revocation").await?;
        Ok(n > 0)
    }

    pub(super) async fn check_revoked_many(&self, ids: &[String]) -> Result<Vec<bool>> {
        // One EXISTS per call in one pipeline (each key may sit on its own
        // cluster slot, which rules out a multi-key command).
        let valid: Vec<&String> = ids.iter().filter(|id| is_valid_call_id(id)).collect();
        if valid.is_empty() {
            return Ok(vec![false; ids.len()]);
        }
        let ops = valid
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.keys.revoked(id));
                Op::cmd(cmd)
            })
            .collect();
        let replies = self.pipeline(ops, "cannot check revocations").await?;
        let mut found = HashSet::new();
        for (id, r) in valid.into_iter().zip(replies) {
            if matches!(r?, Value::Int(n) if n > 0) {
                found.insert(id.as_str());
            }
        }
        Ok(ids.iter().map(|id| found.contains(id.as_str())).collect())
    }
}
