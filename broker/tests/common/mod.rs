//! What both broker test files share: the broker settings of every test,
//! calls and envelopes to feed a broker, short-hand reads of its state, and
//! the Redis brokers on a test's own server and prefix.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep};
use wasq_broker::testing::{RedisServer, unique_prefix};
use wasq_broker::{
    Broker, BrokerConfig, Call, Delivery, Envelope, ErrorKind, Event, ModuleHash, QueueStats,
    RedisBroker, StartOutcome, State, TaskError, new_call_id, now_ms,
};

pub const LEASE: Duration = Duration::from_millis(400);
pub const MAX_DELIVERIES: u32 = 3;
pub const WASM: &[u8] = b"\0asm\x01\0\0\0";

pub fn config() -> BrokerConfig {
    BrokerConfig {
        lease: LEASE,
        max_deliveries: MAX_DELIVERIES,
        result_ttl: Duration::from_secs(600),
        max_module: 1024,
        dead_letter_cap: 100,
        max_args: 4096,
    }
}

pub fn queues() -> Vec<String> {
    vec!["default".to_string()]
}

pub fn new_call(module: ModuleHash, args: &str) -> Call {
    Call {
        id: new_call_id(),
        module,
        task: "add".into(),
        args: RawValue::from_string(args.to_string()).unwrap(),
        limits: Default::default(),
        attempt: 1,
        submitted_ms: now_ms(),
        retry: None,
        queue: "default".into(),
    }
}

pub async fn submit_one<B: Broker>(b: &B) -> Call {
    let module = b.put_module(WASM).await.unwrap().0;
    let call = new_call(module, "[4, 5]");
    b.submit(std::slice::from_ref(&call), None).await.unwrap();
    call
}

/// `n` calls of the test module, with args `[0]`, `[1]`, ... (not submitted).
pub async fn numbered_calls<B: Broker>(b: &B, n: usize) -> Vec<Call> {
    let module = b.put_module(WASM).await.unwrap().0;
    (0..n)
        .map(|i| new_call(module, &format!("[{i}]")))
        .collect()
}

/// Submits one call due after `countdown`; returns it and when it was submitted.
pub async fn submit_delayed<B: Broker>(b: &B, countdown: Duration) -> (Call, Instant) {
    let module = b.put_module(WASM).await.unwrap().0;
    let call = new_call(module, "[]");
    let t0 = Instant::now();
    b.submit(std::slice::from_ref(&call), Some(countdown))
        .await
        .unwrap();
    (call, t0)
}

/// Claims exactly one delivery within `block`.
pub async fn claim_one<B: Broker>(b: &B, host: &str, block: Duration) -> Delivery {
    let mut got = b.claim(host, &queues(), 1, block).await.unwrap();
    assert_eq!(got.len(), 1, "{host} expected one delivery");
    got.pop().unwrap()
}

pub fn succeeded(d: &Delivery, result: serde_json::Value, host: &str) -> Envelope {
    let mut e = Envelope::pending(&d.call.id, State::Succeeded);
    e.result = result;
    e.attempt = d.call.attempt;
    e.host = host.to_string();
    e.fuel_used = 42;
    e
}

pub fn task_failed(d: &Delivery, message: &str) -> Envelope {
    let mut e = Envelope::failed(&d.call.id, TaskError::new(ErrorKind::TaskError, message));
    e.attempt = d.call.attempt;
    e
}

pub async fn state_of<B: Broker>(b: &B, id: &str) -> State {
    b.status(id).await.unwrap().expect("known call").state
}

/// The events of one call, in order.
pub async fn events_of<B: Broker>(b: &B, id: &str) -> Vec<Event> {
    b.events(Some("0"), 10_000, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.call_id == id)
        .collect()
}

pub fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

pub async fn stats_of<B: Broker>(b: &B, queue: &str) -> QueueStats {
    b.queue_stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.queue == queue)
        .unwrap_or_else(|| panic!("queue {queue} is not listed"))
}

/// Runs and completes claimed calls at once, so none is left to be reclaimed.
pub async fn finish<B: Broker>(b: &B, got: &[Delivery]) {
    for d in got {
        assert_eq!(b.start(d, "h").await.unwrap(), StartOutcome::Run);
        let env = succeeded(d, json!(0), "h");
        assert_eq!(b.complete(&[(d.clone(), env)]).await.unwrap(), vec![true]);
    }
}

/// A host that answers every call it claims with the call's id, until one
/// of `id` is answered; it waits `delay` before each answer.
pub async fn answer_until<B: Broker>(b: &B, id: &str, delay: Duration) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "{id} was never claimed");
        let got = b
            .claim("h1", &queues(), 8, Duration::from_secs(5))
            .await
            .unwrap();
        sleep(delay).await;
        let done: Vec<_> = got
            .into_iter()
            .map(|d| {
                let env = succeeded(&d, json!(d.call.id), "h1");
                (d, env)
            })
            .collect();
        let published = b.complete(&done).await.unwrap();
        assert!(published.iter().all(|p| *p), "{published:?}");
        if done.iter().any(|(d, _)| d.call.id == id) {
            return;
        }
    }
}

pub async fn round_trip<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    assert_eq!(state_of(b, &call.id).await, State::Queued);

    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(d.call.id, call.id);
    assert_eq!(d.call.args.get(), "[4, 5]");
    assert_eq!(d.queue, "default");
    assert_eq!(d.deliveries, 1);
    assert_eq!(d.call.attempt, 1);
    assert!(!d.token.is_empty());

    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let running = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!(running.state, State::Running);
    assert_eq!(running.host, "h1");
    assert_eq!(running.attempt, 1);

    let env = succeeded(&d, json!(9), "h1/1");
    assert_eq!(b.complete(&[(d, env.clone())]).await.unwrap(), vec![true]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(env.clone()));
    assert_eq!(
        b.wait(&call.id, Some(Duration::from_secs(1)))
            .await
            .unwrap(),
        Some(env)
    );
    // Nothing is left to claim.
    assert!(
        b.claim("h2", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A broker on a fresh prefix of its own, and that prefix (for tests that
/// look at or tamper with its keys).
pub async fn prefixed_broker(server: &RedisServer, test: &str) -> (String, RedisBroker) {
    let prefix = unique_prefix(test);
    let b = RedisBroker::connect(&server.url(), &prefix, config())
        .await
        .expect("connect to the test redis-server");
    (prefix, b)
}

pub async fn redis_broker(server: &RedisServer, test: &str, config: BrokerConfig) -> RedisBroker {
    RedisBroker::connect(&server.url(), &unique_prefix(test), config)
        .await
        .expect("connect to the test redis-server")
}
