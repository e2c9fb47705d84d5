//! Reading Redis replies without trusting their shape: every helper returns
//! `None` (or nothing) for a value of the wrong kind instead of failing.

use redis::Value;

/// The bytes of a string reply.
pub(super) fn as_bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Okay => Some(b"OK"),
        _ => None,
    }
}

/// A string reply as text (lossy UTF-8).
pub(super) fn as_string(v: &Value) -> Option<String> {
    as_bytes(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

/// An integer reply, or a string holding one.
pub(super) fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        Value::Double(d) if d.fract() == 0.0 => Some(*d as i64),
        _ => as_bytes(v).and_then(|b| std::str::from_utf8(b).ok()?.trim().parse().ok()),
    }
}

/// An array (or set) reply.
pub(super) fn as_array(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// Field/value pairs: a flat array (RESP2) or a map (RESP3).
pub(super) fn fields(v: &Value) -> Vec<(String, Vec<u8>)> {
    match v {
        Value::Map(pairs) => pairs
            .iter()
            .filter_map(|(k, v)| Some((as_string(k)?, as_bytes(v)?.to_vec())))
            .collect(),
        _ => as_array(v)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter_map(|kv| Some((as_string(&kv[0])?, as_bytes(&kv[1])?.to_vec())))
            .collect(),
    }
}

/// One stream's entries: `(entry id, fields)`.
pub(super) type Entries = Vec<(String, Vec<(String, Vec<u8>)>)>;

/// The reply of `XREAD`/`XREADGROUP`: per stream key, its entries. `Nil`
/// (nothing arrived) gives an empty list; an unexpected shape gives `None`.
pub(super) fn stream_entries(v: &Value) -> Option<Vec<(String, Entries)>> {
    let streams: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Some(Vec::new()),
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        _ => as_array(v)?
            .iter()
            .map(|s| {
                let s = as_array(s)?;
                Some((s.first()?, s.get(1)?))
            })
            .collect::<Option<_>>()?,
    };
    let mut out = Vec::with_capacity(streams.len());
    for (key, entries) in streams {
        let key = as_string(key)?;
        let mut list = Vec::new();
        for e in as_array(entries)? {
            let e = as_array(e)?;
            let id = as_string(e.first()?)?;
            let f = e.get(1).map(fields).unwrap_or_default();
            list.push((id, f));
        }
        out.push((key, list));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn stream_replies_in_both_protocols() {
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("call"), bulk("{}")]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(bulk("s"), Value::Array(vec![entry]))]);
        for v in [resp2, resp3] {
            let got = stream_entries(&v).unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, "s");
            assert_eq!(got[0].1[0].0, "1-0");
            assert_eq!(got[0].1[0].1, vec![("call".to_string(), b"{}".to_vec())]);
        }
        assert!(stream_entries(&Value::Nil).unwrap().is_empty());
        assert!(stream_entries(&Value::Int(3)).is_none());
    }
}
