//! What operators see and control: dead letters, events and their level,
//! queue statistics, purging, pausing and rate limits.

use std::collections::HashMap;
use std::time::Duration;

use redis::Value;

use crate::broker::DeadLetter;
use crate::error::{Error, Result};
use crate::ops::{
    Event, EventLevel, MAX_EVENTS_PER_READ, QueueStats, Rate, RateScope, STATS_WINDOW_MS,
    decode_rate, encode_rate, is_valid_entry_id,
};
use crate::types::{Call, ErrorKind, TaskError, is_valid_call_id, is_valid_queue_name};
use crate::validate::{check_entry_id, check_rate, fresh_call};

use super::RedisBroker;
use super::entry::recognisable_id;
use super::keys::{GROUP, WAKE_TTL};
use super::lock;
use super::reply;
use super::reply::{as_array, as_bytes, as_int, as_string, stream_entries};
use super::scripts::{Op, SCRIPTS};

/// Entries one purge round trip handles.
const PURGE_BATCH: usize = 256;

impl RedisBroker {
    pub(super) async fn read_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.keys.dead())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let reply: Value = self.query(&cmd, "cannot read dead letters").await?;
        Ok(as_array(&reply)
            .unwrap_or_default()
            .iter()
            .filter_map(dead_letter_of)
            .collect())
    }

    pub(super) async fn read_events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Event>> {
        let count = count.min(MAX_EVENTS_PER_READ);
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            Some(a) if is_valid_entry_id(a) => a.to_string(),
            Some(a) => {
                return Err(Error::InvalidArgument(format!(
                    "{a:?} is not an event id (MS-SEQ)"
                )));
            }
            None => {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(self.keys.events())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count);
                let reply: Value = self.query(&cmd, "cannot read events").await?;
                let mut newest: Vec<Event> = as_array(&reply)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| {
                        let e = as_array(e)?;
                        Some(event_of(
                            &as_string(e.first()?)?,
                            e.get(1).map(reply::fields).unwrap_or_default(),
                        ))
                    })
                    .collect();
                if !newest.is_empty() || block.is_none() {
                    newest.reverse();
                    return Ok(newest);
                }
                // Nothing yet: whatever comes is after the (empty) start.
                "0-0".to_string()
            }
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count);
        let block = block.filter(|b| !b.is_zero());
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(self.keys.events()).arg(start);
        let reply = match block {
            Some(b) => self
                .blocking
                .query_one(cmd, b)
                .await
                .map_err(|e| self.err(e, "cannot read events"))?,
            None => self.query(&cmd, "cannot read events").await?,
        };
        Ok(stream_entries(&reply)
            .ok_or_else(|| Error::Malformed("unexpected reply of XREAD".into()))?
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .map(|(id, fields)| event_of(&id, fields))
            .collect())
    }

    pub(super) async fn write_event_level(&self, level: EventLevel) -> Result<()> {
        // Every script reads the level the first time it records an event
        // (`event` in common.lua); no key means `all`.
        let mut cmd = if level == EventLevel::All {
            redis::cmd("DEL")
        } else {
            redis::cmd("SET")
        };
        cmd.arg(self.keys.event_level());
        if level != EventLevel::All {
            cmd.arg(level.as_str());
        }
        let _: Value = self.query(&cmd, "cannot set the event level").await?;
        Ok(())
    }

    pub(super) async fn read_event_level(&self) -> Result<EventLevel> {
        let key = self.keys.event_level();
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let reply = self
            .pipeline(vec![Op::cmd(get)], "cannot read the event level")
            .await?
            .pop()
            .expect("one reply");
        let garbage = |what: String| {
            Error::Malformed(format!(
                "{key} holds {what}, not a level: events are recorded at level all"
            ))
        };
        match reply {
            Err(e) if e.is_transient() => Err(e),
            Err(e) => Err(garbage(format!("what GET refuses ({e})"))),
            Ok(v) => match as_bytes(&v) {
                None => Ok(EventLevel::All),
                Some(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        garbage(format!(
                            "{:?}",
                            String::from_utf8_lossy(&b[..b.len().min(64)])
                        ))
                    }),
            },
        }
    }

    pub(super) async fn read_queue_stats(&self) -> Result<Vec<QueueStats>> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(self.keys.queues());
        let mut names: Vec<String> = self.query(&members, "cannot list queues").await?;
        for (scope, _) in self.read_rate_limits().await? {
            if let RateScope::Queue(q) = scope {
                names.push(q);
            }
        }
        for (info, _) in self.list_hosts().await? {
            names.extend(info.queues);
        }
        let names: std::collections::BTreeSet<String> = names
            .into_iter()
            .filter(|q| is_valid_queue_name(q))
            .collect();
        let ops: Vec<Op> = names
            .iter()
            .map(|q| {
                Op::eval(&SCRIPTS.stats)
                    .key(self.keys.stream(q))
                    .key(self.keys.delayed(q))
                    .key(self.keys.paused(q))
                    .key(self.keys.bucket(&RateScope::Queue(q.clone())))
                    .key(self.keys.done(q))
                    .key(self.keys.latency(q))
                    .key(self.keys.dead_counts())
                    .key(self.keys.dead())
                    .arg(q)
                    .arg(STATS_WINDOW_MS)
                    .arg(crate::ops::LATENCY_SAMPLES)
                    .build()
            })
            .collect();
        let replies = self.pipeline(ops, "cannot read queue stats").await?;
        let mut out = Vec::with_capacity(names.len());
        for (q, r) in names.into_iter().zip(replies) {
            let v = r?;
            let parts = as_array(&v).unwrap_or_default();
            let int = |i: usize| {
                parts
                    .get(i)
                    .and_then(as_int)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0)
            };
            let float = |i: usize| {
                parts
                    .get(i)
                    .and_then(as_string)
                    .and_then(|s| s.parse::<f64>().ok())
            };
            let (len, pending) = (int(0), int(1));
            let rate = match (float(4), float(5)) {
                (Some(per_second), Some(burst)) => Some(Rate {
                    per_second,
                    burst: burst as u32,
                })
                .filter(Rate::is_valid),
                _ => None,
            };
            out.push(QueueStats {
                queue: q,
                depth: len.saturating_sub(pending),
                pending,
                delayed: int(2),
                paused: int(3) == 1,
                rate,
                throughput_1m: int(6) as f64 / (STATS_WINDOW_MS as f64 / 1000.0),
                dead: int(7),
                p50_ms: float(8),
                p90_ms: float(9),
                p99_ms: float(10),
            });
        }
        Ok(out)
    }

    pub(super) async fn purge(&self, queue: &str) -> Result<u64> {
        if !is_valid_queue_name(queue) {
            return Err(Error::InvalidName(queue.to_string()));
        }
        const WHAT: &str = "cannot purge a queue";
        let stream = self.keys.stream(queue);
        let mut purged = 0;
        // Waiting entries: after the group's last delivered id, up to the
        // newest entry now (calls submitted meanwhile may stay).
        let mut newest = redis::cmd("XREVRANGE");
        newest.arg(&stream).arg("+").arg("-").arg("COUNT").arg(1);
        let mut groups = redis::cmd("XINFO");
        groups.arg("GROUPS").arg(&stream);
        let mut replies = self
            .pipeline(vec![Op::cmd(newest), Op::cmd(groups)], WHAT)
            .await?
            .into_iter();
        let newest = replies.next().expect("two replies")?;
        let newest = as_array(&newest)
            .and_then(|a| a.first())
            .and_then(as_array)
            .and_then(|e| e.first())
            .and_then(as_string);
        // No group yet (nobody ever claimed): every entry is waiting.
        let mut cursor = match replies.next().expect("two replies") {
            Ok(v) => as_array(&v)
                .unwrap_or_default()
                .iter()
                .map(reply::fields)
                .find(|g| g.iter().any(|(k, v)| k == "name" && v == GROUP.as_bytes()))
                .and_then(|g| {
                    g.into_iter()
                        .find(|(k, _)| k == "last-delivered-id")
                        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                })
                .unwrap_or_else(|| "0-0".into()),
            Err(_) => "0-0".into(),
        };
        if let Some(newest) = newest {
            loop {
                let mut range = redis::cmd("XRANGE");
                range
                    .arg(&stream)
                    .arg(format!("({cursor}"))
                    .arg(&newest)
                    .arg("COUNT")
                    .arg(PURGE_BATCH);
                let reply: Value = self.query(&range, WHAT).await?;
                let entries: reply::Entries = as_array(&reply)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| {
                        let e = as_array(e)?;
                        Some((
                            as_string(e.first()?)?,
                            e.get(1).map(reply::fields).unwrap_or_default(),
                        ))
                    })
                    .collect();
                let Some((last, _)) = entries.last() else {
                    break;
                };
                cursor = last.clone();
                let ops: Vec<Op> = entries
                    .iter()
                    .map(|(id, fields)| {
                        let raw = fields
                            .iter()
                            .find(|(f, _)| f == "call")
                            .map_or(&[][..], |(_, v)| v.as_slice());
                        self.purge_op(queue, "stream", id.as_bytes(), raw)
                    })
                    .collect();
                purged += count_ones(self.pipeline(ops, WHAT).await?)?;
            }
        }
        // Delayed calls. Members promoted meanwhile are purged from the
        // stream above or, if promoted after that pass, survive. Bounded by
        // what was there at the start, in case retries keep arriving.
        let mut card = redis::cmd("ZCARD");
        card.arg(self.keys.delayed(queue));
        let there: usize = self.query(&card, WHAT).await?;
        for _ in 0..there.div_ceil(PURGE_BATCH) + 1 {
            let mut range = redis::cmd("ZRANGE");
            range
                .arg(self.keys.delayed(queue))
                .arg(0)
                .arg(PURGE_BATCH - 1);
            let members: Vec<Vec<u8>> = self.query(&range, WHAT).await?;
            if members.is_empty() {
                break;
            }
            let ops: Vec<Op> = members
                .iter()
                .map(|m| self.purge_op(queue, "delayed", m, m))
                .collect();
            // A member not removed was promoted meanwhile: it is gone from the set.
            purged += count_ones(self.pipeline(ops, WHAT).await?)?;
        }
        Ok(purged)
    }

    /// The purge script for one waiting entry (`stream`) or delayed member.
    fn purge_op(&self, queue: &str, from: &str, entry: &[u8], raw: &[u8]) -> Op {
        let call = serde_json::from_slice::<Call>(raw)
            .ok()
            .filter(|c| is_valid_call_id(&c.id));
        let id = match &call {
            Some(c) => c.id.clone(),
            None => recognisable_id(raw).unwrap_or_default(),
        };
        Op::eval(&SCRIPTS.purge)
            .key(self.keys.stream(queue))
            .key(self.keys.delayed(queue))
            .key(self.keys.call(&id))
            .key(self.keys.result(&id))
            .key(self.keys.wake(&id))
            .key(self.keys.revoked(&id))
            .key(self.keys.events())
            .key(self.keys.done(queue))
            .arg(from)
            .arg(entry)
            .arg(&id)
            .arg(queue)
            .arg(call.as_ref().map_or(0, |c| c.attempt))
            .arg(call.as_ref().map_or("", |c| c.task.as_str()))
            .arg(call.as_ref().map_or(0, |c| c.submitted_ms))
            .arg(self.result_ttl_ms())
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .build()
    }

    pub(super) async fn write_paused(&self, queue: &str, paused: bool) -> Result<()> {
        if !is_valid_queue_name(queue) {
            return Err(Error::InvalidName(queue.to_string()));
        }
        let mut flag = redis::cmd(if paused { "SET" } else { "DEL" });
        flag.arg(self.keys.paused(queue));
        if paused {
            flag.arg("1");
        }
        let mut known = redis::cmd("SADD");
        known.arg(self.keys.queues()).arg(queue);
        let ops = vec![Op::cmd(flag), Op::cmd(known)];
        for r in self.pipeline(ops, "cannot pause or resume a queue").await? {
            r?;
        }
        Ok(())
    }

    pub(super) async fn requeue_dead_letter(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.keys.dead()).arg(entry_id).arg(entry_id);
        let reply: Value = self.query(&cmd, "cannot read a dead letter").await?;
        let Some(letter) = as_array(&reply)
            .and_then(|a| a.first())
            .and_then(dead_letter_of)
        else {
            return Ok(false);
        };
        let call = fresh_call(&letter)?;
        let json = serde_json::to_string(&call).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let op = Op::eval(&SCRIPTS.dead_retry)
            .key(self.keys.dead())
            .key(self.keys.dead_counts())
            .key(self.keys.stream(&call.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.result(&call.id))
            .key(self.keys.wake(&call.id))
            .key(self.keys.events())
            .key(self.keys.queues())
            .arg(entry_id)
            .arg(json)
            .arg(&call.id)
            .arg(&call.queue)
            .arg(&call.task)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(call.submitted_ms)
            .build();
        let reply = self.eval(op, "cannot retry a dead letter").await?;
        Ok(as_int(&reply) == Some(1))
    }

    pub(super) async fn drop_dead_letter(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let op = Op::eval(&SCRIPTS.dead_drop)
            .key(self.keys.dead())
            .key(self.keys.dead_counts())
            .arg(entry_id)
            .build();
        let reply = self.eval(op, "cannot drop a dead letter").await?;
        Ok(as_int(&reply) == Some(1))
    }

    pub(super) async fn write_rate_limit(
        &self,
        scope: &RateScope,
        rate: Option<Rate>,
    ) -> Result<()> {
        check_rate(scope, rate.as_ref())?;
        let queue = match scope {
            RateScope::Queue(q) => q.as_str(),
            RateScope::Module(_) => "",
        };
        let (per_second, burst) = match &rate {
            Some(r) => {
                let encoded = encode_rate(r);
                let (p, b) = encoded.split_once(':').expect("encode_rate writes a colon");
                (p.to_string(), b.to_string())
            }
            None => (String::new(), String::new()),
        };
        let op = Op::eval(&SCRIPTS.set_rate)
            .key(self.keys.rates())
            .key(self.keys.bucket(scope))
            .key(self.keys.queues())
            .arg(scope.key())
            .arg(per_second)
            .arg(burst)
            .arg(queue)
            .build();
        self.eval(op, "cannot set a rate limit").await?;
        // This broker's own claims see a module limit at once.
        lock(&self.limits).at = None;
        Ok(())
    }

    pub(super) async fn read_rate_limits(&self) -> Result<Vec<(RateScope, Rate)>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.rates());
        let reply: Value = self.query(&cmd, "cannot read the rate limits").await?;
        let mut out: Vec<(RateScope, Rate)> = reply::fields(&reply)
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    RateScope::from_key(&k)?,
                    decode_rate(std::str::from_utf8(&v).ok()?)?,
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// How many replies are the integer 1.
fn count_ones(replies: Vec<Result<Value>>) -> Result<u64> {
    let mut n = 0;
    for r in replies {
        if as_int(&r?) == Some(1) {
            n += 1;
        }
    }
    Ok(n)
}

/// A dead letter from its stream entry (`[id, fields]`).
fn dead_letter_of(entry: &Value) -> Option<DeadLetter> {
    let parts = as_array(entry)?;
    let entry_id = as_string(parts.first()?)?;
    let fields: HashMap<String, Vec<u8>> = parts
        .get(1)
        .map(reply::fields)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let text = |f: &str| {
        fields
            .get(f)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let reason = text("reason");
    let error = serde_json::from_value::<ErrorKind>(serde_json::Value::String(text("error")))
        .ok()
        .map(|kind| TaskError::new(kind, reason.clone()));
    Some(DeadLetter {
        entry_id,
        id: text("id"),
        queue: text("queue"),
        reason,
        call: text("call"),
        deliveries: text("deliveries").parse().unwrap_or(0),
        ts_ms: text("ts").parse().unwrap_or(0),
        error,
    })
}

/// An event from its stream entry.
fn event_of(id: &str, fields: Vec<(String, Vec<u8>)>) -> Event {
    let fields: HashMap<String, Vec<u8>> = fields.into_iter().collect();
    let text = |f: &str| {
        fields
            .get(f)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let from_id = crate::ops::parse_entry_id(id).map_or(0, |(ms, _)| ms);
    let some = |s: String| Some(s).filter(|s| !s.is_empty());
    Event {
        id: id.to_string(),
        kind: text("type"),
        call_id: text("id"),
        queue: text("queue"),
        task: text("task"),
        host: text("host"),
        ts_ms: text("ts").parse().unwrap_or(from_id),
        error_kind: some(text("error")),
        latency_ms: text("latency").parse().ok(),
    }
}
