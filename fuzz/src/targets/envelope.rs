//! The `envelope` target: arbitrary and mutated bytes through envelope and
//! call decoding, random envelopes through a serialize-decode round trip.

use super::*;

/// Arbitrary and mutated bytes through envelope (and call) decoding, and
/// random envelopes through a serialize-decode round trip.
pub(super) fn envelope(rng: &mut StdRng, log: &mut CaseLog) {
    match rng.random_range(0..10) {
        0..=2 => {
            let bytes = inputs::bytes(rng, 512);
            decode_all(log, "random", &bytes);
        }
        3..=4 => {
            let depth = rng.random_range(0..6);
            let env = random_envelope(rng, depth);
            let mut bytes = serde_json::to_vec(&env).expect("envelopes serialize");
            inputs::mutate(rng, &mut bytes, 6, b"{}[]\":,null0123456789e-.\\u");
            decode_all(log, "mutated", &bytes);
        }
        _ => {
            let depth_wanted = match rng.random_range(0..4) {
                0 => rng.random_range(60..68),
                1 => rng.random_range(120..140),
                _ => rng.random_range(0..8),
            };
            let env = random_envelope(rng, depth_wanted);
            let d = depth(&env.result);
            let text = serde_json::to_string(&env).expect("envelopes serialize");
            let single = serde_json::from_str::<Envelope>(&text);
            let batch = serde_json::from_str::<Vec<Envelope>>(&format!("[{text}]"));
            let readable = matches!(&single, Ok(e) if same(e, &env)) && batch.is_ok();
            let bucket = match d {
                0..=MAX_RESULT_DEPTH => "depth<=64",
                65..=126 => "depth 65-126",
                _ => "depth>=127",
            };
            log.outcome(format!(
                "roundtrip:{} ({bucket})",
                if readable { "equal" } else { "unreadable" }
            ));
            if d <= MAX_RESULT_DEPTH && !readable {
                log.finding(format!(
                    "an envelope with a result {d} deep does not read back: {:?} / {:?}",
                    single.err().map(|e| e.to_string()),
                    batch.err().map(|e| e.to_string())
                ));
            }
        }
    }
}

pub(super) fn decode_all(log: &mut CaseLog, what: &str, bytes: &[u8]) {
    let env = serde_json::from_slice::<Envelope>(bytes);
    let batch = serde_json::from_slice::<Vec<Envelope>>(bytes);
    let call = serde_json::from_slice::<Call>(bytes);
    let ok = |b: bool| if b { "ok" } else { "err" };
    log.outcome(format!(
        "decode {what}: envelope {} batch {} call {}",
        ok(env.is_ok()),
        ok(batch.is_ok()),
        ok(call.is_ok())
    ));
    if let Ok(e) = env {
        check_readable(log, &e);
    }
}

/// An envelope with every field random and a result nested `depth` deep
/// (built as a value, so any depth can be had).
pub(super) fn random_envelope(rng: &mut StdRng, depth: usize) -> Envelope {
    let mut result = match serde_json::from_str::<Value>(&inputs::json(rng, 3)) {
        Ok(v) if !v.is_array() && !v.is_object() => v,
        _ => Value::from(1),
    };
    for _ in 0..depth {
        result = if rng.random_bool(0.7) {
            Value::Array(vec![result])
        } else {
            let mut m = serde_json::Map::new();
            m.insert("k\u{1b}\"\\".into(), result);
            Value::Object(m)
        };
    }
    let text = |rng: &mut StdRng| -> String {
        let pieces = [
            "",
            "a",
            "\u{0}",
            "\u{1b}[2J",
            "é",
            "\u{10ffff}",
            "\\",
            "\"",
            "\n",
        ];
        (0..rng.random_range(0..5))
            .map(|_| pieces[rng.random_range(0..pieces.len())])
            .collect()
    };
    const KINDS: &[ErrorKind] = &[
        ErrorKind::TaskError,
        ErrorKind::Trap,
        ErrorKind::FuelExhausted,
        ErrorKind::Timeout,
        ErrorKind::MemoryLimit,
        ErrorKind::OutputLimit,
        ErrorKind::InvalidModule,
        ErrorKind::TaskNotFound,
        ErrorKind::BadInput,
        ErrorKind::ModuleNotFound,
        ErrorKind::Integrity,
        ErrorKind::Revoked,
        ErrorKind::Lost,
    ];
    let states = [
        State::Queued,
        State::Running,
        State::Retrying,
        State::Succeeded,
        State::Failed,
        State::Revoked,
    ];
    let mut env = Envelope::pending(wasq_broker::new_call_id(), states[rng.random_range(0..6)]);
    env.result = result;
    if rng.random_bool(0.3) {
        env.error = Some(TaskError::new(
            KINDS[rng.random_range(0..KINDS.len())],
            text(rng),
        ));
    }
    env.stdout = text(rng);
    env.stderr = text(rng);
    env.logs = (0..rng.random_range(0..3))
        .map(|_| LogLine {
            level: rng.random(),
            message: text(rng),
        })
        .collect();
    env.fuel_used = rng.random();
    env.duration_ms = [0.0, 1e-9, rng.random::<f64>() * 1e5, f64::MAX][rng.random_range(0..4)];
    env.attempt = rng.random();
    env.host = text(rng);
    env
}
