//! What every case checks: the error kinds a run may end as, envelopes that
//! read back equal, quick and optimised code that agree.

use super::*;

/// What a run of a module may end as. Never `invalid_module` (it loaded),
/// `module_not_found`, `integrity`, `revoked` (nobody revokes) or `lost`.
pub(super) const RUN_KINDS: &[ErrorKind] = &[
    ErrorKind::TaskError,
    ErrorKind::BadInput,
    ErrorKind::Trap,
    ErrorKind::FuelExhausted,
    ErrorKind::Timeout,
    ErrorKind::MemoryLimit,
    ErrorKind::OutputLimit,
    ErrorKind::TaskNotFound,
];

/// What the echo task may end as under a call's lowered limits: it cannot
/// trap (its input always fits its memory).
pub(super) const ECHO_KINDS: &[ErrorKind] = &[
    ErrorKind::TaskError,
    ErrorKind::BadInput,
    ErrorKind::FuelExhausted,
    ErrorKind::Timeout,
    ErrorKind::MemoryLimit,
    ErrorKind::OutputLimit,
    ErrorKind::TaskNotFound,
];

/// Every envelope a host publishes must read back equal, alone and in a
/// batch (a JSON array, one level deeper), with serde_json's default
/// recursion limit, as every client reads it.
pub(super) fn check_readable(log: &mut CaseLog, env: &Envelope) {
    let text = match serde_json::to_string(env) {
        Ok(t) => t,
        Err(e) => {
            log.finding(format!("an envelope does not serialize: {e}"));
            return;
        }
    };
    match serde_json::from_str::<Envelope>(&text) {
        Ok(back) if same(&back, env) => {}
        Ok(_) => log.finding(format!("an envelope reads back different: {text}")),
        Err(e) => log.finding(format!("an envelope is unreadable ({e}): {text}")),
    }
    if let Err(e) = serde_json::from_str::<Vec<Envelope>>(&format!("[{text},{text}]")) {
        log.finding(format!("a batch of envelopes is unreadable ({e})"));
    }
}

/// Whether an envelope read back is the one written. Floats may come back
/// one unit in the last place off: serde_json parses them fast, not
/// correctly rounded (its `float_roundtrip` feature is off), so `duration_ms`
/// and floats in a result are compared with that tolerance.
pub(super) fn same(back: &Envelope, env: &Envelope) -> bool {
    let close = |a: f64, b: f64| a == b || (a - b).abs() <= a.abs().max(b.abs()) * 1e-15;
    let mut a = back.clone();
    let mut b = env.clone();
    if !close(a.duration_ms, b.duration_ms) {
        return false;
    }
    a.duration_ms = 0.0;
    b.duration_ms = 0.0;
    let (ra, rb) = (std::mem::take(&mut a.result), std::mem::take(&mut b.result));
    if a != b {
        return false;
    }
    let mut stack = vec![(&ra, &rb)];
    while let Some((x, y)) = stack.pop() {
        match (x, y) {
            (Value::Number(m), Value::Number(n)) if m != n => match (m.as_f64(), n.as_f64()) {
                (Some(p), Some(q)) if m.is_f64() && n.is_f64() && close(p, q) => {}
                _ => return false,
            },
            (Value::Array(m), Value::Array(n)) if m.len() == n.len() => {
                stack.extend(m.iter().zip(n));
            }
            (Value::Object(m), Value::Object(n)) if m.len() == n.len() => {
                for (k, v) in m {
                    match n.get(k) {
                        Some(w) => stack.push((v, w)),
                        None => return false,
                    }
                }
            }
            (x, y) if x == y => {}
            _ => return false,
        }
    }
    true
}

/// Quick and optimised runs of one module must end alike (wall-clock
/// timeouts aside, which depend on speed).
pub(super) fn compare(log: &mut CaseLog, quick: &RunOutcome, opt: &RunOutcome) {
    let kind = |o: &RunOutcome| o.result.as_ref().err().map(|e| e.kind);
    let (a, b) = (kind(quick), kind(opt));
    if a == Some(ErrorKind::Timeout) || b == Some(ErrorKind::Timeout) {
        log.outcome("compare:skipped (timeout)");
        return;
    }
    let stack =
        |o: &RunOutcome| matches!(&o.result, Err(e) if e.message.contains("call stack exhausted"));
    if a != b && (stack(quick) || stack(opt)) {
        // Quick code has larger stack frames: the same recursion overflows
        // the 1 MiB wasm stack sooner than in optimised code, which may run
        // out of fuel (or return) first. Not a host fault, but the one place
        // where a call's kind depends on the tier it ran on.
        log.outcome("compare:differ (stack exhausted on one tier)");
        log.note(
            format!(
                "tiers differ: quick {}, optimised {}",
                a.map_or("ok", ErrorKind::as_str),
                b.map_or("ok", ErrorKind::as_str)
            ),
            format!("{} / {}", show(&quick.result), show(&opt.result)),
        );
        return;
    }
    if a != b {
        log.finding(format!(
            "quick code ended {}, optimised code {}",
            show(&quick.result),
            show(&opt.result)
        ));
        return;
    }
    if let (Ok(x), Ok(y)) = (&quick.result, &opt.result)
        && x != y
    {
        log.finding(format!(
            "quick code returned {}, optimised code {}",
            shorten_value(x),
            shorten_value(y)
        ));
        return;
    }
    log.outcome("compare:same kind");
    if quick.fuel_used != opt.fuel_used {
        let how = match &quick.result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{}: {}", e.kind, pattern(&e.message)),
        };
        let example = format!("quick {} vs optimised {}", quick.fuel_used, opt.fuel_used);
        if quick.result.is_ok() {
            // docs/abi.md: fuel is counted per wasm operator, the same on
            // either tier, for a call that returns.
            log.finding(format!(
                "fuel_used differs between tiers on a return: {example}"
            ));
        } else {
            log.note(format!("fuel differs between tiers (ended {how})"), example);
        }
    }
}

pub(super) fn show(r: &Result<Value, TaskError>) -> String {
    match r {
        Ok(v) => format!("ok {}", shorten_value(v)),
        Err(e) => e.to_string(),
    }
}

pub(super) fn shorten_value(v: &Value) -> String {
    crate::shorten(&v.to_string())
}

/// A message as a pattern: digits and quoted names blurred, cut short, so
/// that notes group alike messages.
pub(super) fn pattern(msg: &str) -> String {
    let msg = [" (at offset", " at line", " at offset"]
        .iter()
        .fold(msg, |m, cut| m.split(cut).next().unwrap_or(m));
    let mut out = String::new();
    let mut in_quote = false;
    for c in msg.chars() {
        match c {
            '`' | '"' => {
                if !in_quote {
                    out.push_str("`…`");
                }
                in_quote = !in_quote;
            }
            _ if in_quote => {}
            '0'..='9' => {
                if !out.ends_with('#') {
                    out.push('#');
                }
            }
            c => out.push(c),
        }
        if out.chars().count() >= 70 {
            break;
        }
    }
    out
}

/// How deeply arrays and objects nest (a scalar is 0).
pub(super) fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                deepest = deepest.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(o) => {
                deepest = deepest.max(d + 1);
                stack.extend(o.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}
