//! Hosts: their records (which expire with their lease), heartbeats that
//! renew them and the leases of running calls, and noticing hosts that
//! died.

use std::collections::BTreeMap;

use tracing::{debug, warn};

use crate::broker::{Delivery, HostInfo, HostStats};
use crate::error::{Error, Result};
use crate::types::{is_valid_queue_name, now_ms};

use super::RedisBroker;
use super::lock;
use super::reply::{as_array, as_bytes, as_int, as_string};
use super::scripts::{Op, SCRIPTS};

impl RedisBroker {
    pub(super) async fn add_host(&self, info: &HostInfo) -> Result<()> {
        lock(&self.registered).insert(info.id.clone(), info.clone());
        let stats = HostStats {
            heartbeat_ms: now_ms(),
            ..HostStats::default()
        };
        let mut ops = self.host_record_ops(&info.id, Some(info), &stats)?;
        ops.push(self.host_event_op("host_online", &info.id));
        for r in self.pipeline(ops, "cannot register a host").await? {
            r?;
        }
        Ok(())
    }

    pub(super) async fn record_heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> Result<Vec<String>> {
        let info = lock(&self.registered).get(host_id).cloned();
        let mut ops = self.host_record_ops(host_id, info.as_ref(), stats)?;
        ops.push(self.host_event_op("host_heartbeat", host_id));
        let mut by_queue: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
        for d in running {
            by_queue.entry(d.queue.as_str()).or_default().push(d);
        }
        for (queue, deliveries) in &by_queue {
            let mut op = Op::eval(&SCRIPTS.heartbeat)
                .key(self.keys.stream(queue))
                .arg(host_id);
            for d in deliveries {
                op = op.arg(&d.entry_id).arg(d.deliveries);
            }
            ops.push(op.build());
        }
        let replies = self.pipeline(ops, "cannot send a heartbeat").await?;
        // The replies of the per-queue scripts come last, in `by_queue`'s order.
        let first_script = replies.len() - by_queue.len();
        let mut lost = Vec::new();
        for (i, r) in replies.into_iter().enumerate() {
            let v = r?;
            let Some(queue) = i
                .checked_sub(first_script)
                .and_then(|q| by_queue.iter().nth(q))
            else {
                continue;
            };
            for entry in as_array(&v).into_iter().flatten().filter_map(as_string) {
                warn!(host = host_id, entry = %entry,
                    "a running call was reclaimed by another host (this host's lease lapsed)");
                lost.extend(
                    queue
                        .1
                        .iter()
                        .filter(|d| d.entry_id == entry)
                        .map(|d| d.token.clone()),
                );
            }
        }
        // Now and then, record the hosts that died (their lease lapsed).
        if Self::take_turn(&self.last_reap, self.config.lease)
            && let Err(e) = self.reap_hosts().await
        {
            debug!(cause = %e, "cannot look for dead hosts");
        }
        Ok(lost)
    }

    pub(super) async fn remove_host(&self, host_id: &str) -> Result<()> {
        let info = lock(&self.registered).remove(host_id);
        let mut ops = vec![self.host_gone_op(host_id, "clean")];
        for q in info.map(|i| i.queues).unwrap_or_default() {
            if is_valid_queue_name(&q) {
                ops.push(
                    Op::eval(&SCRIPTS.drop_consumer)
                        .key(self.keys.stream(&q))
                        .arg(host_id)
                        .build(),
                );
            }
        }
        for r in self.pipeline(ops, "cannot deregister a host").await? {
            r?;
        }
        Ok(())
    }

    pub(super) async fn list_hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        self.reap_hosts().await?;
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(self.keys.hosts()).arg("-inf").arg(now_ms());
        let mut range = redis::cmd("ZRANGE");
        range.arg(self.keys.hosts()).arg(0).arg(-1);
        let replies = self
            .pipeline(vec![Op::cmd(trim), Op::cmd(range)], "cannot list hosts")
            .await?;
        let ids: Vec<String> = match replies.into_iter().nth(1) {
            Some(Ok(v)) => as_array(&v)
                .map(|a| a.iter().filter_map(as_string).collect())
                .unwrap_or_default(),
            Some(Err(e)) => return Err(e),
            None => Vec::new(),
        };
        let ops: Vec<Op> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("HMGET");
                c.arg(self.keys.host(id)).arg("info").arg("stats");
                Op::cmd(c)
            })
            .collect();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, r) in ids
            .iter()
            .zip(self.pipeline(ops, "cannot list hosts").await?)
        {
            let v = r?;
            let parts = as_array(&v).unwrap_or_default();
            let info = parts.first().and_then(as_bytes);
            let stats = parts.get(1).and_then(as_bytes);
            let Some(stats) = stats else {
                // Its lease expired since the reaping above: reap it too, so
                // that no host leaves the list without its `host_offline`.
                gone.push(self.host_gone_op(id, "expired"));
                continue;
            };
            let stats: HostStats = serde_json::from_slice(stats).unwrap_or_default();
            let info = info
                .and_then(|i| serde_json::from_slice::<HostInfo>(i).ok())
                .unwrap_or_else(|| HostInfo::unknown(id));
            out.push((info, stats));
        }
        for r in self.pipeline(gone, "cannot list hosts").await? {
            r?;
        }
        Ok(out)
    }

    fn host_record_ops(
        &self,
        host_id: &str,
        info: Option<&HostInfo>,
        stats: &HostStats,
    ) -> Result<Vec<Op>> {
        let stats = HostStats {
            heartbeat_ms: now_ms(),
            ..stats.clone()
        };
        let key = self.keys.host(host_id);
        let lease_ms = self.config.lease.as_millis().max(1) as u64;
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("stats")
            .arg(serde_json::to_string(&stats).map_err(|e| Error::Backend(e.to_string()))?);
        if let Some(info) = info {
            hset.arg("info")
                .arg(serde_json::to_string(info).map_err(|e| Error::Backend(e.to_string()))?);
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(lease_ms);
        // The index only lists candidates; the record's TTL decides liveness.
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.hosts())
            .arg(now_ms() + 3 * lease_ms + 60_000)
            .arg(host_id);
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(self.keys.hosts()).arg("-inf").arg(now_ms());
        Ok(vec![
            Op::cmd(hset),
            Op::cmd(expire),
            Op::cmd(zadd),
            Op::cmd(trim),
        ])
    }

    /// A host event, on the events stream (its time is the entry id's).
    fn host_event_op(&self, kind: &str, host_id: &str) -> Op {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(crate::ops::EVENTS_CAP)
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("host")
            .arg(host_id);
        Op::cmd(xadd)
    }

    fn host_gone_op(&self, host_id: &str, mode: &str) -> Op {
        Op::eval(&SCRIPTS.host_gone)
            .key(self.keys.hosts())
            .key(self.keys.host(host_id))
            .key(self.keys.events())
            .arg(host_id)
            .arg(mode)
            .build()
    }

    /// Takes hosts whose lease lapsed out of the index, recording
    /// `host_offline` for each (once, whoever notices first).
    async fn reap_hosts(&self) -> Result<()> {
        let mut range = redis::cmd("ZRANGE");
        range.arg(self.keys.hosts()).arg(0).arg(-1);
        let ids: Vec<String> = self.query(&range, "cannot list hosts").await?;
        let ops: Vec<Op> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("EXISTS");
                c.arg(self.keys.host(id));
                Op::cmd(c)
            })
            .collect();
        let mut gone = Vec::new();
        for (id, r) in ids
            .iter()
            .zip(self.pipeline(ops, "cannot list hosts").await?)
        {
            if as_int(&r?) == Some(0) {
                gone.push(self.host_gone_op(id, "expired"));
            }
        }
        for r in self.pipeline(gone, "cannot list hosts").await? {
            r?;
        }
        Ok(())
    }
}
