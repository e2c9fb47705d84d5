//! Dead letters, events, queue stats, purge, pause and rate limits.

use super::*;

impl LocalBroker {
    pub(super) async fn read_dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self.lock().dead.iter().rev().take(limit).cloned().collect())
    }

    pub(super) async fn read_events(
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

    pub(super) async fn read_queue_stats(&self) -> Result<Vec<QueueStats>> {
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

    pub(super) async fn purge(&self, queue: &str) -> Result<u64> {
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

    pub(super) async fn write_event_level(&self, level: EventLevel) -> Result<()> {
        self.lock().event_level = level;
        Ok(())
    }

    pub(super) async fn read_event_level(&self) -> Result<EventLevel> {
        Ok(self.lock().event_level)
    }

    pub(super) async fn write_paused(&self, queue: &str, paused: bool) -> Result<()> {
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

    pub(super) async fn requeue_dead_letter(&self, entry_id: &str) -> Result<bool> {
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
        self.record_queued(&mut inner, &call, expires, now);
        drop(inner);
        self.work.notify_waiters();
        Ok(true)
    }

    pub(super) async fn drop_dead_letter(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let mut inner = self.lock();
        let before = inner.dead.len();
        inner.dead.retain(|d| d.entry_id != entry_id);
        Ok(inner.dead.len() < before)
    }

    pub(super) async fn write_rate_limit(
        &self,
        scope: &RateScope,
        rate: Option<Rate>,
    ) -> Result<()> {
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

    pub(super) async fn read_rate_limits(&self) -> Result<Vec<(RateScope, Rate)>> {
        Ok(self
            .lock()
            .buckets
            .iter()
            .map(|(s, b)| (s.clone(), b.rate))
            .collect())
    }
}
