//! Checks both brokers run on what they are given before anything changes,
//! so [`crate::RedisBroker`] and [`crate::LocalBroker`] refuse the same
//! input with the same error; and the call a dead letter is retried as.

use crate::broker::{DeadLetter, Delivery};
use crate::error::{Error, Result};
use crate::ops::{Rate, RateScope, is_valid_entry_id};
use crate::types::{
    Call, Envelope, is_valid_call_id, is_valid_module_name, is_valid_queue_name,
    is_valid_task_name, now_ms,
};

/// Checks a module name and its version before a tag is written.
pub(crate) fn check_tag(name: &str, version: Option<&str>) -> Result<()> {
    if let Some(bad) = std::iter::once(name)
        .chain(version)
        .find(|n| !is_valid_module_name(n))
    {
        return Err(Error::InvalidName(bad.to_string()));
    }
    Ok(())
}

/// Checks the queue names of a claim; `Ok(false)` when it has nothing to
/// claim (no queue, or `max` 0), so it returns at once without blocking.
pub(crate) fn check_claim(queues: &[String], max: usize) -> Result<bool> {
    if let Some(bad) = queues.iter().find(|q| !is_valid_queue_name(q)) {
        return Err(Error::InvalidName(bad.clone()));
    }
    Ok(max > 0 && !queues.is_empty())
}

/// Checks a module's size before it is stored.
pub(crate) fn check_module_size(size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(Error::ModuleTooLarge { size, limit });
    }
    Ok(())
}

/// Checks a call before it is queued.
pub(crate) fn check_call(call: &Call, max_args: u64) -> Result<()> {
    if !is_valid_call_id(&call.id) {
        return Err(Error::InvalidCall(format!(
            "call id {:?} is not 1-128 of [A-Za-z0-9_-]",
            call.id
        )));
    }
    if !is_valid_task_name(&call.task) {
        return Err(Error::InvalidCall(format!(
            "task name {:?} is not [A-Za-z_][A-Za-z0-9_]*",
            call.task
        )));
    }
    if !is_valid_queue_name(&call.queue) {
        return Err(Error::InvalidName(call.queue.clone()));
    }
    if !call.args.get().trim_start().starts_with('[') {
        return Err(Error::InvalidCall(
            "args must be a JSON array, like [4, 5]".into(),
        ));
    }
    let size = call.args.get().len() as u64;
    if size > max_args {
        return Err(Error::InvalidCall(format!(
            "args are {size} bytes, over the limit of {max_args}"
        )));
    }
    Ok(())
}

/// Checks that an envelope can end this delivery's call.
pub(crate) fn check_final(delivery: &Delivery, envelope: &Envelope) -> Result<()> {
    if !envelope.state.is_final() {
        return Err(Error::InvalidCall(format!(
            "cannot complete call {} with a {} envelope",
            delivery.call.id, envelope.state
        )));
    }
    if envelope.id != delivery.call.id {
        return Err(Error::InvalidCall(format!(
            "envelope of call {} given for call {}",
            envelope.id, delivery.call.id
        )));
    }
    Ok(())
}

/// Checks `name` or `name@version`.
pub(crate) fn check_module_ref(name: &str) -> Result<()> {
    let ok = match name.split_once('@') {
        Some((n, v)) => is_valid_module_name(n) && is_valid_module_name(v),
        None => is_valid_module_name(name),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// The call of a dead letter, ready to be queued again: attempt 1, submitted
/// now, in the queue it was dead-lettered from.
pub(crate) fn fresh_call(letter: &DeadLetter) -> Result<Call> {
    let mut call: Call = serde_json::from_str(&letter.call).map_err(|e| {
        Error::InvalidCall(format!(
            "dead letter {} holds no valid call ({e}); drop it instead",
            letter.entry_id
        ))
    })?;
    if is_valid_queue_name(&letter.queue) {
        call.queue.clone_from(&letter.queue);
    }
    call.attempt = 1;
    call.submitted_ms = now_ms();
    // It was accepted once; hosts check their own limits when they run it.
    check_call(&call, u64::MAX)?;
    Ok(call)
}

/// Checks a dead-letter entry id.
pub(crate) fn check_entry_id(id: &str) -> Result<()> {
    if is_valid_entry_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{id:?} is not a dead-letter entry id (MS-SEQ, as `wasq dead ls` shows)"
        )))
    }
}

/// Checks a rate limit and the queue it is for.
pub(crate) fn check_rate(scope: &RateScope, rate: Option<&Rate>) -> Result<()> {
    if let RateScope::Queue(q) = scope
        && !is_valid_queue_name(q)
    {
        return Err(Error::InvalidName(q.clone()));
    }
    match rate {
        Some(r) if !r.is_valid() => Err(Error::InvalidArgument(format!(
            "rate {} a second with burst {} cannot be enforced: it must be positive and finite, the burst at least 1",
            r.per_second, r.burst
        ))),
        _ => Ok(()),
    }
}
