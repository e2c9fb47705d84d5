//! Submitting and revoking calls.

use super::*;

impl LocalBroker {
    pub(super) async fn submit_calls(
        &self,
        calls: &[Call],
        countdown: Option<Duration>,
    ) -> Result<()> {
        for call in calls {
            check_call(call, self.config.max_args)?;
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
                    q.delayed.insert((later(now, d), seq), call.clone());
                }
                None => q.ready.push_back((seq, call.clone())),
            }
            let expires = self.ttl_from(now, countdown.unwrap_or_default());
            self.record_queued(&mut inner, call, expires, now);
        }
        drop(inner);
        self.work.notify_waiters();
        Ok(())
    }

    pub(super) async fn revoke_call(&self, id: &str) -> Result<bool> {
        let now = Instant::now();
        let mut inner = self.lock();
        if Self::has_result(&inner, id, now) {
            return Ok(false);
        }
        let Some(c) = inner.calls.get(id).filter(|c| live(c.expires, now)) else {
            return Ok(false);
        };
        let (state, attempt) = (c.state, c.attempt);
        let (queue, task, submitted_ms, entry) =
            (c.queue.clone(), c.task.clone(), c.submitted_ms, c.entry);
        let expires = self.ttl_from(now, Duration::ZERO);
        inner.revoked.insert(id.to_string(), expires);
        let mut message = None;
        if matches!(state, State::Queued | State::Retrying) {
            message = Some("revoked before it started");
        } else if state == State::Running
            && let Some(p) = entry.and_then(|e| inner.queues.get(&queue)?.pending.get(&e))
            && now.duration_since(p.touched) >= self.config.lease
        {
            // Its host stopped heartbeating: nobody will end it; end it now.
            message = Some("revoked while its host was gone");
        }
        if let Some(message) = message {
            let mut env = Envelope::failed(id, TaskError::new(ErrorKind::Revoked, message));
            env.attempt = attempt;
            if self.publish(&mut inner, env, "", now) {
                self.emit(
                    &mut inner,
                    CallEvent {
                        kind: "revoked",
                        id,
                        queue: &queue,
                        task: &task,
                        host: "",
                        error_kind: Some(ErrorKind::Revoked),
                        submitted_ms,
                        from_run: false,
                    },
                    now,
                );
            }
        }
        Ok(true)
    }

    pub(super) async fn check_revoked(&self, id: &str) -> Result<bool> {
        Ok(Self::is_revoked_now(&self.lock(), id, Instant::now()))
    }
}
