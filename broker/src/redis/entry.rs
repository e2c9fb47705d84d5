//! Queued stream entries: reading the call out of one (or why it is
//! garbage), entry ids, and the tokens of the deliveries made of them.

use redis::Value;

use crate::broker::StartOutcome;
use crate::types::{Call, is_valid_call_id};

use super::RedisBroker;
use super::reply::as_bytes;

/// Room in a queued call entry beside its args (id, module, task, limits,
/// retry policy, times), far more than a valid call needs.
const CALL_OVERHEAD: u64 = 64 * 1024;

impl RedisBroker {
    /// The most bytes of a queued call entry this host reads: its args limit
    /// and room for the rest of the call.
    pub(super) fn max_entry(&self) -> u64 {
        self.config.max_args.saturating_add(CALL_OVERHEAD)
    }
}

/// The `call` field of a stream entry.
pub(super) fn call_field(fields: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(f, _)| f == "call")
        .map(|(_, v)| v.as_slice())
}

/// A queued stream entry's call, or why it is garbage; an entry over
/// `max_entry` bytes is refused before it is parsed (the claim script sends
/// only its head and its size, `oversized`).
pub(super) fn parse_entry(
    fields: &[(String, Vec<u8>)],
    max_entry: u64,
) -> std::result::Result<Call, String> {
    let raw = call_field(fields);
    let size = fields
        .iter()
        .find(|(f, _)| f == "oversized")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .or_else(|| raw.map(|r| r.len() as u64).filter(|n| *n > max_entry));
    match size {
        Some(size) => Err(format!(
            "the queued call is {size} bytes, over this host's limit of {max_entry} (its args limit and {CALL_OVERHEAD} bytes)"
        )),
        None => parse_call(raw),
    }
}

/// A queued call, or why it is garbage.
fn parse_call(raw: Option<&[u8]>) -> std::result::Result<Call, String> {
    match raw {
        None => Err("entry has no `call` field".to_string()),
        Some(raw) => serde_json::from_slice::<Call>(raw)
            .map_err(|e| format!("`call` is not a valid call: {e}"))
            .and_then(|c| {
                // Ids become key names: only well-formed ones get that far.
                if is_valid_call_id(&c.id) {
                    Ok(c)
                } else {
                    Err(format!("call id {:?} is not valid", c.id))
                }
            }),
    }
}

/// The id of a garbage call, if it has a usable one.
pub(super) fn recognisable_id(raw: &[u8]) -> Option<String> {
    let id = match serde_json::from_slice::<serde_json::Value>(raw) {
        Ok(v) => v.get("id")?.as_str()?.to_string(),
        // The head of an oversized call: wasq writes the id first.
        Err(_) => {
            let rest = raw.strip_prefix(br#"{"id":""#)?;
            let end = rest.iter().position(|b| *b == b'"')?;
            String::from_utf8(rest[..end].to_vec()).ok()?
        }
    };
    is_valid_call_id(&id).then_some(id)
}

pub(super) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// The token of a delivery handed out by one claim: the claim's random
/// prefix and the entry id (unique per claim), as the claim scripts write it.
pub(super) fn delivery_token(prefix: &str, entry_id: &str) -> String {
    format!("{prefix}{}{entry_id}", super::keys::TOKEN_SEP)
}

/// What a claim script did about starting an entry (`None`: not started).
pub(super) fn start_outcome(v: Option<&Value>) -> Option<StartOutcome> {
    match v.and_then(as_bytes)? {
        b"run" => Some(StartOutcome::Run),
        b"revoked" => Some(StartOutcome::Revoked),
        b"skip" => Some(StartOutcome::Skip),
        _ => None,
    }
}

/// A stream entry id (`ms-seq`) as numbers, in their order; `None` if it
/// is not one.
pub(super) fn entry_number(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_order_as_numbers() {
        let ids = ["1764512345678-9", "1764512345678-10", "1764512345677-99"];
        let numbers: Vec<_> = ids.iter().map(|id| entry_number(id)).collect();
        assert_eq!(numbers.iter().min(), Some(&Some((1764512345677, 99))));
        assert_eq!(numbers.iter().max(), Some(&Some((1764512345678, 10))));
        for bad in ["", "12", "12-", "-3", "a-1", "1-2-3"] {
            assert_eq!(entry_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn garbage_ids() {
        assert_eq!(recognisable_id(br#"{"id":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(recognisable_id(br#"{"id":"a b"}"#), None);
        assert_eq!(recognisable_id(b"nope"), None);
        // The head of an oversized call, cut short.
        assert_eq!(
            recognisable_id(br#"{"id":"01ABC","module":"sha256:00"#).as_deref(),
            Some("01ABC")
        );
        assert_eq!(recognisable_id(br#"{"id":"a b","mod"#), None);
    }
}
