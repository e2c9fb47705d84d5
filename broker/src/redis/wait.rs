//! Reading a call's status and waiting for its result: a waited call's
//! result comes with a wake-up stream entry carrying its envelope, which
//! waiters block on with `XREAD BLOCK`.

use std::collections::HashMap;
use std::time::Duration;

use redis::{Cmd, RedisError, Value};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::types::{Call, Envelope, State, is_valid_call_id};

use super::RedisBroker;
use super::reply;
use super::reply::{as_array, as_bytes, stream_entries};
use super::scripts::{Op, SCRIPTS};

/// How long [`Broker::submit_wait`](crate::Broker::submit_wait) first waits in the round trip that
/// submits; a longer call costs one more round trip to wait on (and a server
/// that lost its scripts, this long once).
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Longest single `XREAD BLOCK` of a waiter: a long wait renews its block
/// this often, so a silently dead connection is noticed.
const WAIT_CHUNK: Duration = Duration::from_secs(60);

/// Stored results [`Broker::wait_many`](crate::Broker::wait_many) looks up per round trip.
const PEEK_MANY: usize = 128;

impl RedisBroker {
    pub(super) async fn read_status(&self, id: &str) -> Result<Option<Envelope>> {
        if !is_valid_call_id(id) {
            return Ok(None);
        }
        let mut get = redis::cmd("GET");
        get.arg(self.keys.result(id));
        let mut state = redis::cmd("HGETALL");
        state.arg(self.keys.call(id));
        let mut replies = self
            .pipeline(
                vec![Op::cmd(get), Op::cmd(state)],
                "cannot read a call's status",
            )
            .await?
            .into_iter();
        let result = replies.next().expect("two replies")?;
        let state = replies.next().expect("two replies")?;
        if let Some(bytes) = as_bytes(&result) {
            let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
                Error::Malformed(format!("the result of {id} is not an envelope: {e}"))
            })?;
            return Ok(Some(env));
        }
        let fields: HashMap<String, Vec<u8>> = reply::fields(&state).into_iter().collect();
        self.pending_envelope(id, &fields)
    }

    pub(super) async fn wait_for(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>> {
        if !is_valid_call_id(id) {
            return Err(Error::UnknownCall(id.to_string()));
        }
        // One round trip: the wake-up (it carries the envelope, for five
        // minutes after the result, if someone waited) and whether the call
        // is pending, which marks it waited for (`listen`).
        let mut peek = redis::cmd("XREAD");
        peek.arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(self.keys.wake(id))
            .arg("0-0");
        let mut replies = self
            .pipeline(
                vec![Op::cmd(peek), self.listen_op(id)],
                "cannot wait for a result",
            )
            .await?
            .into_iter();
        // A wake-up key holding garbage is overwritten when the result comes.
        let peeked = match replies.next().expect("two replies") {
            Ok(v) => woken(id, &v),
            Err(e) if e.is_transient() => return Err(e),
            Err(_) => Woken::Nothing,
        };
        let state = replies.next().expect("two replies")?;
        match peeked {
            Woken::Envelope(env) => return Ok(Some(*env)),
            Woken::Bare => return self.final_status(id).await,
            Woken::Nothing => {}
        }
        if !is_pending(&state) {
            // Unknown, or final (published before anyone waited, or with
            // its wake-up gone): the stored result says.
            match self.read_status(id).await? {
                None => return Err(Error::UnknownCall(id.to_string())),
                Some(env) if env.state.is_final() => return Ok(Some(env)),
                Some(_) => {}
            }
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let block = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_CHUNK),
                None => WAIT_CHUNK,
            };
            if block.is_zero() {
                break;
            }
            match self.block_on_wake(id, block).await? {
                Woken::Envelope(env) => return Ok(Some(*env)),
                Woken::Bare => break,
                Woken::Nothing => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            // A long wait: mark the call again, in case its state was
            // written anew meanwhile (submitted again under its id), and
            // stop if it is no longer pending.
            if !is_pending(
                &self
                    .eval(self.listen_op(id), "cannot wait for a result")
                    .await?,
            ) {
                break;
            }
        }
        self.final_status(id).await
    }

    pub(super) async fn wait_for_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<Envelope>>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut out: Vec<Option<Envelope>> = vec![None; ids.len()];
        // Every id before `next` has its envelope, or timed out.
        let mut next = 0;
        while next < ids.len() {
            // One round trip: the stored results of the next ids not found yet.
            let window: Vec<usize> = (next..ids.len())
                .filter(|&i| out[i].is_none())
                .take(PEEK_MANY)
                .collect();
            self.peek_results(ids, &window, &mut out).await?;
            while next < ids.len() && out[next].is_some() {
                next += 1;
            }
            if next == ids.len() {
                break;
            }
            if window.last().is_some_and(|&last| next > last) {
                // All there so far: look at the next ones.
                continue;
            }
            // Then block on the oldest one not done, as `wait` does (which
            // also tells an unknown id or garbage at its result key).
            match self.wait_for(&ids[next], left()).await? {
                Some(env) => {
                    out[next] = Some(env);
                    next += 1;
                }
                None => {
                    // Out of time: the rest get one look each (so an
                    // unknown id is still an error, as with `wait`).
                    for i in next + 1..ids.len() {
                        if out[i].is_none() {
                            out[i] = self.wait_for(&ids[i], Some(Duration::ZERO)).await?;
                        }
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    pub(super) async fn submit_and_wait(
        &self,
        call: &Call,
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>> {
        let first = timeout.map_or(FIRST_WAIT, |t| t.min(FIRST_WAIT));
        if first.is_zero() {
            self.submit_calls(std::slice::from_ref(call), None).await?;
            return self.wait_for(&call.id, timeout).await;
        }
        let started = Instant::now();
        // One round trip on a connection of its own: the submit script, then
        // a blocking read of the wake-up stream from its start, which returns
        // as soon as the result is published (or at once if it already is).
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in self.submit_ops(std::slice::from_ref(call), None, true)? {
            pipe.add_command(op.cmd);
        }
        pipe.add_command(self.wake_read(&call.id, first));
        let mut replies = self
            .blocking
            .query(&pipe, first)
            .await
            .map_err(|e| self.err(e, "cannot submit a call"))?;
        let read = replies
            .pop()
            .ok_or_else(|| Error::Malformed("no reply to the wake-up read".into()))?;
        match replies.pop() {
            // The server lost its scripts (it restarted): the call is not
            // queued and the read waited in vain. Submit it the usual way.
            Some(Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript) => {
                self.submit_calls(std::slice::from_ref(call), None).await?;
            }
            Some(Value::ServerError(e)) => {
                return Err(self.err(RedisError::from(e), "cannot submit a call"));
            }
            Some(_) => match woken(&call.id, &read) {
                Woken::Envelope(env) => return Ok(Some(*env)),
                Woken::Bare => return self.final_status(&call.id).await,
                Woken::Nothing => {}
            },
            None => return Err(Error::Malformed("no reply to the submit script".into())),
        }
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        self.wait_for(&call.id, left).await
    }

    /// The state of call `id`, marking it waited for while it is pending
    /// (`listen.lua`): its result then comes with a wake-up.
    fn listen_op(&self, id: &str) -> Op {
        Op::eval(&SCRIPTS.listen).key(self.keys.call(id)).build()
    }

    /// `XREAD BLOCK` of the wake-up stream of `id` from its start.
    fn wake_read(&self, id: &str, block: Duration) -> Cmd {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.keys.wake(id))
            .arg("0-0");
        cmd
    }

    /// Blocks until the wake-up stream of `id` has an entry or `block` passes.
    async fn block_on_wake(&self, id: &str, block: Duration) -> Result<Woken> {
        let reply = self
            .blocking
            .query_one(self.wake_read(id, block), block)
            .await
            .map_err(|e| self.err(e, "cannot wait for a result"))?;
        Ok(woken(id, &reply))
    }

    /// Fills `out[i]` for each `i` of `window` whose call has a final
    /// envelope stored, in one `MGET`. Anything else (no result yet, an
    /// invalid id, garbage at the key) stays `None`, for `wait` to tell.
    async fn peek_results(
        &self,
        ids: &[String],
        window: &[usize],
        out: &mut [Option<Envelope>],
    ) -> Result<()> {
        let window: Vec<usize> = window
            .iter()
            .copied()
            .filter(|&i| is_valid_call_id(&ids[i]))
            .collect();
        if window.is_empty() {
            return Ok(());
        }
        let mut get = redis::cmd("MGET");
        for &i in &window {
            get.arg(self.keys.result(&ids[i]));
        }
        let reply = self
            .pipeline(vec![Op::cmd(get)], "cannot wait for results")
            .await?
            .pop()
            .expect("one reply")?;
        let stored = as_array(&reply).unwrap_or_default();
        for (&i, value) in window.iter().zip(stored) {
            let env = as_bytes(value).and_then(|b| serde_json::from_slice::<Envelope>(b).ok());
            if let Some(env) = env.filter(|e| e.state.is_final() && e.id == ids[i]) {
                out[i] = Some(env);
            }
        }
        Ok(())
    }

    /// The final envelope of a call, `None` if it is still pending, or
    /// [`Error::UnknownCall`].
    async fn final_status(&self, id: &str) -> Result<Option<Envelope>> {
        match self.read_status(id).await? {
            Some(env) if env.state.is_final() => Ok(Some(env)),
            Some(_) => Ok(None),
            None => Err(Error::UnknownCall(id.to_string())),
        }
    }

    fn pending_envelope(
        &self,
        id: &str,
        state: &HashMap<String, Vec<u8>>,
    ) -> Result<Option<Envelope>> {
        let text = |f: &str| {
            state
                .get(f)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let Some(name) = text("state") else {
            return Ok(None);
        };
        let attempt = text("attempt")
            .and_then(|a| a.parse::<u32>().ok())
            .unwrap_or(0);
        let state = match name.as_str() {
            "queued" => State::Queued,
            "running" => State::Running,
            "retrying" => State::Retrying,
            // The final result expired before its marker: unknown.
            "done" => return Ok(None),
            other => {
                return Err(Error::Malformed(format!(
                    "call {id} has an unknown state {other:?}"
                )));
            }
        };
        if state == State::Retrying
            && let Some(mut last) =
                text("last").and_then(|l| serde_json::from_str::<Envelope>(&l).ok())
        {
            // The failed attempt's envelope (its attempt, its error), now retrying.
            last.state = State::Retrying;
            return Ok(Some(last));
        }
        let mut env = Envelope::pending(id, state);
        env.attempt = attempt;
        if state == State::Running {
            env.host = text("host").unwrap_or_default();
        }
        Ok(Some(env))
    }
}

/// What a read of a wake-up stream found.
enum Woken {
    /// No entry: no result yet.
    Nothing,
    /// The final envelope the entry carries.
    Envelope(Box<Envelope>),
    /// An entry without a usable envelope (written by an older wasq):
    /// the result exists, read it.
    Bare,
}

/// Whether a call state read from Redis is one a result is still to come for.
fn is_pending(state: &Value) -> bool {
    matches!(as_bytes(state), Some(b"queued" | b"running" | b"retrying"))
}

/// The wake-up in an `XREAD` reply of `id`'s wake-up stream.
fn woken(id: &str, reply: &Value) -> Woken {
    let Some(streams) = stream_entries(reply) else {
        return Woken::Nothing;
    };
    let Some((_, fields)) = streams.into_iter().flat_map(|(_, e)| e).next() else {
        return Woken::Nothing;
    };
    fields
        .iter()
        .find(|(f, _)| f == "env")
        .and_then(|(_, v)| serde_json::from_slice::<Envelope>(v).ok())
        .filter(|env| env.state.is_final() && env.id == id)
        .map_or(Woken::Bare, |env| Woken::Envelope(Box::new(env)))
}
