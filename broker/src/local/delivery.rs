//! What a host does with a delivery: start, complete, retry, release.

use super::*;

impl LocalBroker {
    pub(super) async fn start_delivery(
        &self,
        delivery: &Delivery,
        host_id: &str,
    ) -> Result<StartOutcome> {
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

    pub(super) async fn publish_results(&self, done: &[(Delivery, Envelope)]) -> Result<Vec<bool>> {
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

    pub(super) async fn schedule_retry(
        &self,
        delivery: &Delivery,
        last: &Envelope,
        delay: Duration,
    ) -> Result<bool> {
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

    pub(super) async fn hand_back(&self, delivery: &Delivery) -> Result<bool> {
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
}
