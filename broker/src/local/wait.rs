//! A call's status and waiting for its result (woken by a notification, never by polling).

use super::*;

impl LocalBroker {
    pub(super) async fn read_status(&self, id: &str) -> Result<Option<Envelope>> {
        let now = Instant::now();
        let inner = self.lock();
        if let Some(r) = inner.results.get(id).filter(|r| live(r.expires, now)) {
            return Ok(Some(r.envelope.clone()));
        }
        let Some(c) = inner.calls.get(id).filter(|c| live(c.expires, now)) else {
            return Ok(None);
        };
        if c.state == State::Retrying
            && let Some(last) = &c.last
        {
            let mut env = last.clone();
            env.state = State::Retrying;
            return Ok(Some(env));
        }
        let mut env = Envelope::pending(id, c.state);
        env.attempt = c.attempt;
        if c.state == State::Running {
            env.host = c.host.clone();
        }
        Ok(Some(env))
    }

    pub(super) async fn wait_for(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>> {
        let deadline = timeout.map(|t| later(Instant::now(), t));
        loop {
            let notified = self.results.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status(id).await? {
                None => return Err(Error::UnknownCall(id.to_string())),
                Some(env) if env.state.is_final() => return Ok(Some(env)),
                Some(_) => {}
            }
            match deadline {
                Some(d) => {
                    if Instant::now() >= d {
                        return Ok(None);
                    }
                    tokio::select! {
                        () = &mut notified => {}
                        () = tokio::time::sleep_until(d) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}
