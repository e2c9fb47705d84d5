//! Handing out calls: one claim pass (promote due calls, reclaim, read, hold back over rate limits), starting what it hands out, and blocking until work may be there.

use super::*;

impl LocalBroker {
    /// Marks an owned delivery's call running (see [`Broker::start`]).
    pub(super) fn start_now(
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
    pub(super) fn claim_now(
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
}
