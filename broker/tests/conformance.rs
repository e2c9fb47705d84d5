//! One conformance suite, run against both brokers.
//!
//! Every scenario is a generic `async fn(&B)`; the `conformance!` macro
//! instantiates it twice: against a [`LocalBroker`] under paused tokio time
//! (leases expire without real waiting) and against a [`RedisBroker`] on its
//! own throwaway `redis-server` with a prefix of its own. Tests of the Redis
//! broker's internals (garbage in Redis, TTLs, a server restart, what the
//! server sees) are in `redis_internals.rs`; helpers both use in `common/`.

mod common;

use std::time::Duration;

use serde_json::json;
use serde_json::value::RawValue;
use tokio::time::{Instant, sleep};
use wasq_broker::{
    Broker, Call, Delivery, Envelope, Error, ErrorKind, Event, EventLevel, HostInfo, HostStats,
    LocalBroker, ModuleHash, Rate, RateScope, RetryPolicy, StartOutcome, State, TaskError,
    new_call_id, now_ms,
};

use common::*;

// ---- the scenarios ------------------------------------------------------------

async fn unknown_vs_queued<B: Broker>(b: &B) {
    let unknown = new_call_id();
    assert_eq!(b.status(&unknown).await.unwrap(), None);
    assert!(matches!(
        b.wait(&unknown, Some(Duration::from_millis(50))).await,
        Err(Error::UnknownCall(_))
    ));
    assert!(!b.revoke(&unknown).await.unwrap());
    let call = submit_one(b).await;
    let status = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!(status.state, State::Queued);
    assert_eq!(status.attempt, 1);
    assert_eq!(status.id, call.id);
}

async fn first_final_result_wins<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    let call = new_call(module, "[1, 1]");
    // The same call queued twice (a client retrying its submit): two entries.
    b.submit(&[call.clone(), call.clone()], None).await.unwrap();
    let got = b
        .claim("h1", &queues(), 2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let (d1, d2) = (got[0].clone(), got[1].clone());
    assert_eq!(b.start(&d1, "h1").await.unwrap(), StartOutcome::Run);
    let first = succeeded(&d1, json!(2), "h1");
    assert_eq!(
        b.complete(&[(d1.clone(), first.clone())]).await.unwrap(),
        vec![true]
    );
    // Completing the same delivery again is accepted (idempotent) and changes nothing.
    let again = succeeded(&d1, json!("other"), "h1");
    assert_eq!(b.complete(&[(d1, again)]).await.unwrap(), vec![true]);
    // The duplicate is skipped at start and cannot publish.
    assert_eq!(b.start(&d2, "h1").await.unwrap(), StartOutcome::Skip);
    let late = succeeded(&d2, json!(3), "h1");
    assert_eq!(b.complete(&[(d2, late)]).await.unwrap(), vec![false]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(first));
    assert!(
        b.claim("h1", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn stale_token_cannot_publish<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let a = claim_one(b, "a", Duration::from_secs(2)).await;
    assert_eq!(b.start(&a, "a").await.unwrap(), StartOutcome::Run);
    // Host a stops heartbeating; after the lease host b reclaims the call.
    sleep(LEASE * 2).await;
    let bd = claim_one(b, "b", LEASE * 5).await;
    assert_eq!(bd.call.id, call.id);
    assert_eq!(bd.deliveries, 2);
    assert_ne!(bd.token, a.token);
    // a wakes up: its heartbeat must not take the entry back, and nothing it
    // does counts any more, before or after b starts.
    b.heartbeat("a", &HostStats::default(), std::slice::from_ref(&a))
        .await
        .unwrap();
    let stale = succeeded(&a, json!("stale"), "a");
    assert_eq!(
        b.complete(&[(a.clone(), stale.clone())]).await.unwrap(),
        vec![false]
    );
    assert_eq!(b.start(&bd, "b").await.unwrap(), StartOutcome::Run);
    assert_eq!(b.start(&a, "a").await.unwrap(), StartOutcome::Skip);
    assert_eq!(
        b.complete(&[(a.clone(), stale)]).await.unwrap(),
        vec![false]
    );
    assert!(
        !b.retry(&a, &task_failed(&a, "x"), Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(!b.release(&a).await.unwrap());
    assert_eq!(state_of(b, &call.id).await, State::Running);

    let good = succeeded(&bd, json!(9), "b");
    assert_eq!(b.complete(&[(bd, good.clone())]).await.unwrap(), vec![true]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(good));
}

async fn retry_goes_through_the_delayed_set<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    let mut call = new_call(module, "[]");
    call.retry = Some(RetryPolicy::new(2));
    b.submit(std::slice::from_ref(&call), None).await.unwrap();
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let failed = task_failed(&d, "flaky");
    let delay = Duration::from_millis(600);
    let t0 = Instant::now();
    assert!(b.retry(&d, &failed, delay).await.unwrap());
    // The last error shows while it waits.
    let status = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!(status.state, State::Retrying);
    assert_eq!(status.attempt, 1);
    assert_eq!(status.error.as_ref().unwrap().message, "flaky");
    // A stale repeat of the same delivery cannot schedule a second retry.
    assert!(!b.retry(&d, &failed, delay).await.unwrap());
    // Not before the delay...
    assert!(
        b.claim("h1", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // ...then back with attempt 2.
    let d2 = claim_one(b, "h1", Duration::from_secs(5)).await;
    assert!(
        t0.elapsed() >= delay - Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(d2.call.id, call.id);
    assert_eq!(d2.call.attempt, 2);
    assert_eq!(d2.deliveries, 1);
    assert_eq!(b.start(&d2, "h1").await.unwrap(), StartOutcome::Run);
    let status = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempt), (State::Running, 2));
    let ok = succeeded(&d2, json!("ok"), "h1");
    assert_eq!(b.complete(&[(d2, ok)]).await.unwrap(), vec![true]);
    let done = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!((done.state, done.attempt), (State::Succeeded, 2));
}

async fn countdown_delays_a_call<B: Broker>(b: &B) {
    let countdown = Duration::from_millis(600);
    let (call, t0) = submit_delayed(b, countdown).await;
    assert_eq!(state_of(b, &call.id).await, State::Queued);
    assert!(
        b.claim("h1", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let d = claim_one(b, "h1", Duration::from_secs(5)).await;
    assert!(
        t0.elapsed() >= countdown - Duration::from_millis(50),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(d.call.id, call.id);
}

/// A countdown too large for the clock (where adding it to an `Instant` or
/// a `Duration` would overflow) holds the call back for as long as the
/// broker lives, without a panic.
async fn a_countdown_past_the_clock_holds_the_call<B: Broker>(b: &B) {
    for countdown in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
        let (call, _) = submit_delayed(b, countdown).await;
        assert_eq!(state_of(b, &call.id).await, State::Queued);
        assert!(
            b.claim("h1", &queues(), 8, Duration::ZERO)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

async fn delivery_limit_fails_as_lost<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(d.deliveries, 1);
    // Every host that takes it dies without a heartbeat.
    for n in 2..=MAX_DELIVERIES {
        sleep(LEASE * 2).await;
        let d = claim_one(b, &format!("h{n}"), LEASE * 5).await;
        assert_eq!(d.deliveries, n);
        assert_eq!(
            b.start(&d, &format!("h{n}")).await.unwrap(),
            StartOutcome::Run
        );
    }
    sleep(LEASE * 2).await;
    assert!(b.claim("h9", &queues(), 8, LEASE).await.unwrap().is_empty());
    let env = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!(env.state, State::Failed);
    assert_eq!(env.error.as_ref().unwrap().kind, ErrorKind::Lost);
    assert_eq!(
        b.wait(&call.id, Some(Duration::from_secs(1)))
            .await
            .unwrap(),
        Some(env)
    );
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, call.id);
    assert_eq!(dead[0].queue, "default");
    assert_eq!(dead[0].deliveries, MAX_DELIVERIES + 1);
    assert!(dead[0].reason.contains("delivered"), "{}", dead[0].reason);
    let kept: Call = serde_json::from_str(&dead[0].call).unwrap();
    assert_eq!(kept.id, call.id);
    // Gone from circulation.
    sleep(LEASE * 2).await;
    assert!(b.claim("h9", &queues(), 8, LEASE).await.unwrap().is_empty());
}

async fn dead_host_is_reclaimed_after_the_lease<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let a = claim_one(b, "a", Duration::from_secs(2)).await;
    assert_eq!(b.start(&a, "a").await.unwrap(), StartOutcome::Run);
    // The lease runs from the heartbeat, so it is timed from just before it.
    let t0 = Instant::now();
    b.heartbeat("a", &HostStats::default(), std::slice::from_ref(&a))
        .await
        .unwrap();
    // Not yet: a's lease is live.
    assert!(
        b.claim("b", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // a dies; b gets the call once the lease has passed, not much later.
    let bd = claim_one(b, "b", LEASE * 10).await;
    assert!(t0.elapsed() >= LEASE / 2, "{:?}", t0.elapsed());
    assert!(t0.elapsed() < LEASE * 4, "{:?}", t0.elapsed());
    assert_eq!(bd.call.id, call.id);
    assert_eq!(bd.deliveries, 2);
    assert_eq!(b.start(&bd, "b").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&bd, json!(9), "b");
    assert_eq!(b.complete(&[(bd, env)]).await.unwrap(), vec![true]);
}

async fn live_host_is_never_reclaimed<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let a = claim_one(b, "a", Duration::from_secs(2)).await;
    assert_eq!(b.start(&a, "a").await.unwrap(), StartOutcome::Run);
    // A long task: a heartbeats for four leases while b keeps trying to claim.
    let end = Instant::now() + LEASE * 4;
    while Instant::now() < end {
        b.heartbeat("a", &HostStats::default(), std::slice::from_ref(&a))
            .await
            .unwrap();
        let got = b.claim("b", &queues(), 8, LEASE / 4).await.unwrap();
        assert!(got.is_empty(), "a live host's call was reclaimed");
    }
    let env = succeeded(&a, json!(9), "a");
    assert_eq!(b.complete(&[(a, env)]).await.unwrap(), vec![true]);
    assert_eq!(state_of(b, &call.id).await, State::Succeeded);
}

async fn revoke_a_queued_call<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    assert!(b.revoke(&call.id).await.unwrap());
    assert!(b.is_revoked(&call.id).await.unwrap());
    // Final at once, without a host.
    let env = b
        .wait(&call.id, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.state, State::Revoked);
    assert_eq!(env.error.as_ref().unwrap().kind, ErrorKind::Revoked);
    // A host that claims it does not run it.
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Revoked);
    assert!(!b.revoke(&call.id).await.unwrap(), "already final");
    assert!(
        b.claim("h1", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn revoke_a_running_call<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    assert!(!b.is_revoked(&call.id).await.unwrap());
    assert!(b.revoke(&call.id).await.unwrap());
    // The host notices and ends it; until then it runs.
    assert_eq!(state_of(b, &call.id).await, State::Running);
    assert!(b.is_revoked(&call.id).await.unwrap());
    let mut env = Envelope::failed(
        &call.id,
        TaskError::new(ErrorKind::Revoked, "revoked while running"),
    );
    env.attempt = 1;
    assert_eq!(b.complete(&[(d, env)]).await.unwrap(), vec![true]);
    assert_eq!(state_of(b, &call.id).await, State::Revoked);
}

async fn revoked_many_answers_in_order<B: Broker>(b: &B) {
    let kept = submit_one(b).await;
    let revoked = submit_one(b).await;
    assert!(b.revoke(&revoked.id).await.unwrap());
    let ids = [
        kept.id.clone(),
        revoked.id.clone(),
        "not-a-call-id".to_string(),
        new_call_id(),
    ];
    assert_eq!(
        b.revoked_many(&ids).await.unwrap(),
        vec![false, true, false, false]
    );
    assert!(b.revoked_many(&[]).await.unwrap().is_empty());
}

async fn a_heartbeat_reports_calls_reclaimed_elsewhere<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let a = claim_one(b, "a", Duration::from_secs(2)).await;
    assert_eq!(b.start(&a, "a").await.unwrap(), StartOutcome::Run);
    // While a holds it, its heartbeat reports nothing lost.
    let lost = b
        .heartbeat("a", &HostStats::default(), std::slice::from_ref(&a))
        .await
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    // a stalls past its lease and b takes the call over.
    let taken = claim_one(b, "b", LEASE * 10).await;
    assert_eq!(taken.call.id, call.id);
    let lost = b
        .heartbeat("a", &HostStats::default(), std::slice::from_ref(&a))
        .await
        .unwrap();
    assert_eq!(lost, vec![a.token.clone()]);
    // b's heartbeat keeps it; and once b's result is out, nobody lost it.
    assert!(
        b.heartbeat("b", &HostStats::default(), std::slice::from_ref(&taken))
            .await
            .unwrap()
            .is_empty()
    );
    let env = succeeded(&taken, json!(9), "b");
    assert_eq!(
        b.complete(&[(taken.clone(), env)]).await.unwrap(),
        vec![true]
    );
    assert!(
        b.heartbeat("b", &HostStats::default(), std::slice::from_ref(&taken))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn args_over_the_limit_are_refused_at_submit<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    // config() allows 4096 bytes of args.
    let at_limit = format!("[\"{}\"]", "x".repeat(4096 - 4));
    let fits = new_call(module, &at_limit);
    b.submit(std::slice::from_ref(&fits), None).await.unwrap();
    let over = format!("[\"{}\"]", "x".repeat(4096 - 3));
    let big = new_call(module, &over);
    let err = b
        .submit(&[new_call(module, "[1]"), big.clone()], None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCall(_)), "{err:?}");
    assert!(err.to_string().contains("4097 bytes"), "{err}");
    assert!(err.to_string().contains("4096"), "{err}");
    // Nothing of the refused batch was queued.
    assert!(b.status(&big.id).await.unwrap().is_none());
    let got = b.claim("h", &queues(), 8, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, fits.id);
}

async fn several_waiters_all_wake<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&d, json!(9), "h1");
    let wait = || b.wait(&call.id, Some(Duration::from_secs(10)));
    let t0 = Instant::now();
    let (w1, w2, w3, done) = tokio::join!(wait(), wait(), wait(), async {
        sleep(Duration::from_millis(200)).await;
        b.complete(&[(d.clone(), env.clone())]).await.unwrap()
    });
    assert_eq!(done, vec![true]);
    for w in [w1, w2, w3] {
        assert_eq!(w.unwrap(), Some(env.clone()));
    }
    // Woken by the publication, not by their timeout.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

async fn wait_times_out<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let t0 = Instant::now();
    let timeout = Duration::from_millis(300);
    assert_eq!(b.wait(&call.id, Some(timeout)).await.unwrap(), None);
    assert!(t0.elapsed() >= timeout, "{:?}", t0.elapsed());
    assert_eq!(b.wait(&call.id, Some(Duration::ZERO)).await.unwrap(), None);
}

async fn release_requeues_at_once<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    let started = new_call(module, "[1]");
    let unstarted = new_call(module, "[2]");
    b.submit(&[started.clone(), unstarted.clone()], None)
        .await
        .unwrap();
    let got = b
        .claim("a", &queues(), 2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(b.start(&got[0], "a").await.unwrap(), StartOutcome::Run);
    // Graceful shutdown: both go back, started or not.
    assert!(b.release(&got[0]).await.unwrap());
    assert!(b.release(&got[1]).await.unwrap());
    assert!(!b.release(&got[0]).await.unwrap(), "released twice");
    assert_eq!(state_of(b, &started.id).await, State::Queued);
    let again = b.claim("b", &queues(), 8, Duration::ZERO).await.unwrap();
    let mut ids: Vec<&str> = again.iter().map(|d| d.call.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![started.id.as_str(), unstarted.id.as_str()];
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(
        again
            .iter()
            .all(|d| d.deliveries == 1 && d.call.attempt == 1)
    );
    // The released delivery can no longer publish.
    let stale = succeeded(&got[0], json!(0), "a");
    assert_eq!(
        b.complete(&[(got[0].clone(), stale)]).await.unwrap(),
        vec![false]
    );
}

async fn modules<B: Broker>(b: &B) {
    let other = b"\0asm\x01\0\0\0\x00".to_vec();
    let (h, new) = b.put_module(WASM).await.unwrap();
    assert!(new);
    assert_eq!(h, ModuleHash::of(WASM));
    assert_eq!(b.put_module(WASM).await.unwrap(), (h, false));
    assert!(b.has_module(&h).await.unwrap());
    assert_eq!(b.get_module(&h).await.unwrap().as_deref(), Some(WASM));
    let missing = ModuleHash::of(b"missing");
    assert!(!b.has_module(&missing).await.unwrap());
    assert_eq!(b.get_module(&missing).await.unwrap(), None);

    b.tag("math", Some("1.0"), &h).await.unwrap();
    assert_eq!(b.resolve("math").await.unwrap(), Some(h));
    assert_eq!(b.resolve("math@1.0").await.unwrap(), Some(h));
    assert_eq!(b.resolve("math@2.0").await.unwrap(), None);
    assert_eq!(b.resolve("nope").await.unwrap(), None);
    let (h2, _) = b.put_module(&other).await.unwrap();
    b.tag("math", Some("2.0"), &h2).await.unwrap();
    assert_eq!(b.resolve("math").await.unwrap(), Some(h2), "latest wins");
    assert_eq!(b.resolve("math@1.0").await.unwrap(), Some(h));
    assert!(matches!(
        b.tag("ghost", None, &missing).await,
        Err(Error::ModuleNotFound(_))
    ));
    assert!(matches!(
        b.tag("a b", None, &h).await,
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(
        b.tag("a", Some("1@2"), &h).await,
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(b.resolve("a b").await, Err(Error::InvalidName(_))));

    let list = b.list_modules().await.unwrap();
    assert_eq!(list.len(), 2);
    let first = list.iter().find(|m| m.hash == h).unwrap();
    assert_eq!(first.size, WASM.len() as u64);
    assert_eq!(first.names, vec!["math@1.0".to_string()]);
    let second = list.iter().find(|m| m.hash == h2).unwrap();
    assert_eq!(
        second.names,
        vec!["math".to_string(), "math@2.0".to_string()]
    );

    let big = vec![0u8; 1025];
    assert!(matches!(
        b.put_module(&big).await,
        Err(Error::ModuleTooLarge {
            size: 1025,
            limit: 1024
        })
    ));
    assert!(!b.has_module(&ModuleHash::of(&big)).await.unwrap());
}

async fn claim_returns_at_most_max<B: Broker>(b: &B) {
    let calls = numbered_calls(b, 5).await;
    b.submit(&calls, None).await.unwrap();
    let first = b
        .claim("h1", &queues(), 2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first.len(), 2);
    let rest = b
        .claim("h1", &queues(), 10, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
    let mut all: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|d| d.call.id.clone())
        .collect();
    all.sort();
    let mut want: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
    want.sort();
    assert_eq!(all, want, "each call delivered exactly once, in any order");
    assert!(
        b.claim("h1", &queues(), 0, Duration::from_secs(1))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claim_blocks_until_a_call_arrives<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    let call = new_call(module, "[]");
    let t0 = Instant::now();
    let qs = queues();
    let (got, ()) = tokio::join!(b.claim("h1", &qs, 4, Duration::from_secs(10)), async {
        sleep(Duration::from_millis(150)).await;
        b.submit(std::slice::from_ref(&call), None).await.unwrap();
    });
    let got = got.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, call.id);
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

async fn wait_many_collects_a_batch<B: Broker>(b: &B) {
    let calls = numbered_calls(b, 6).await;
    b.submit(&calls, None).await.unwrap();
    let ids: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
    // Two done before the wait, the rest while it waits (the last one only
    // after a pause), in an order other than the ids'.
    let got = b.claim("h1", &queues(), 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 6);
    let answer = |d: &Delivery| (d.clone(), succeeded(d, json!(d.call.id), "h1"));
    let by_id = |id: &str| got.iter().find(|d| d.call.id == id).unwrap();
    for d in [by_id(&ids[3]), by_id(&ids[0])] {
        assert_eq!(b.start(d, "h1").await.unwrap(), StartOutcome::Run);
        b.complete(&[answer(d)]).await.unwrap();
    }
    let mut asked = ids.clone();
    asked.push(ids[3].clone());
    let (envs, ()) = tokio::join!(b.wait_many(&asked, Some(Duration::from_secs(20))), async {
        for (k, i) in [5, 1, 2, 4].into_iter().enumerate() {
            let d = by_id(&ids[i]);
            assert_eq!(b.start(d, "h1").await.unwrap(), StartOutcome::Run);
            if k == 3 {
                sleep(Duration::from_millis(300)).await;
            }
            b.complete(&[answer(d)]).await.unwrap();
        }
    });
    let envs = envs.unwrap();
    assert_eq!(envs.len(), asked.len());
    for (id, env) in asked.iter().zip(&envs) {
        let env = env.as_ref().expect("every call done within the timeout");
        assert_eq!((&env.id, &env.result), (id, &json!(id)));
        assert_eq!(env.state, State::Succeeded);
    }
    assert!(b.wait_many(&[], None).await.unwrap().is_empty());

    // Out of time: the calls done have their envelope, the others `None`.
    let more = numbered_calls(b, 3).await;
    b.submit(&more, None).await.unwrap();
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    b.complete(&[answer(&d)]).await.unwrap();
    let ids: Vec<String> = more.iter().map(|c| c.id.clone()).collect();
    let t0 = Instant::now();
    let timeout = Duration::from_millis(300);
    let envs = b.wait_many(&ids, Some(timeout)).await.unwrap();
    assert!(t0.elapsed() >= timeout, "{:?}", t0.elapsed());
    assert_eq!(
        envs.iter().map(Option::is_some).collect::<Vec<_>>(),
        ids.iter().map(|id| *id == d.call.id).collect::<Vec<_>>()
    );

    // An unknown id fails the whole wait, wherever it is, in time or not.
    for unknown in ["never-submitted", "not an id!"] {
        let mut asked = vec![d.call.id.clone(), unknown.to_string()];
        assert!(
            matches!(b.wait_many(&asked, None).await, Err(Error::UnknownCall(u)) if u == unknown)
        );
        asked.insert(0, ids.iter().find(|i| **i != d.call.id).unwrap().clone());
        assert!(matches!(
            b.wait_many(&asked, Some(Duration::from_millis(50))).await,
            Err(Error::UnknownCall(u)) if u == unknown
        ));
    }
}

async fn submit_wait_is_a_remote_call<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    // No host: the timeout passes and the call stays queued.
    let early = new_call(module, "[1]");
    let t0 = Instant::now();
    let timeout = Duration::from_millis(250);
    assert_eq!(b.submit_wait(&early, Some(timeout)).await.unwrap(), None);
    assert!(t0.elapsed() >= timeout, "{:?}", t0.elapsed());
    assert_eq!(state_of(b, &early.id).await, State::Queued);
    // A host answers at once, then one slower than a first wait (100 ms).
    for delay in [Duration::ZERO, Duration::from_millis(400)] {
        let call = new_call(module, "[2]");
        let (env, ()) = tokio::join!(
            b.submit_wait(&call, Some(Duration::from_secs(20))),
            answer_until(b, &call.id, delay)
        );
        let env = env.unwrap().expect("a result within the timeout");
        assert_eq!(env.state, State::Succeeded);
        assert_eq!(env.result, json!(call.id));
        assert_eq!(state_of(b, &call.id).await, State::Succeeded);
    }
    assert_eq!(state_of(b, &early.id).await, State::Succeeded);
    // Invalid calls are refused before anything is queued.
    let bad = new_call(module, "{}");
    assert!(matches!(
        b.submit_wait(&bad, Some(Duration::from_secs(1))).await,
        Err(Error::InvalidCall(_))
    ));
    assert!(b.status(&bad.id).await.unwrap().is_none());
}

async fn queues_are_separate<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    let mut fast = new_call(module, "[]");
    fast.queue = "fast".into();
    let slow = new_call(module, "[]");
    b.submit(&[fast.clone(), slow.clone()], None).await.unwrap();
    let got = b
        .claim("h1", &["fast".to_string()], 8, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].call.id.as_str(), got[0].queue.as_str()),
        (fast.id.as_str(), "fast")
    );
    let both = ["fast".to_string(), "default".to_string()];
    let got = b
        .claim("h1", &both, 8, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, slow.id);
    assert!(matches!(
        b.claim("h1", &["a:b".to_string()], 1, Duration::ZERO).await,
        Err(Error::InvalidName(_))
    ));
}

async fn invalid_calls_are_refused<B: Broker>(b: &B) {
    let module = b.put_module(WASM).await.unwrap().0;
    let mut not_array = new_call(module, "{\"a\": 1}");
    assert!(matches!(
        b.submit(std::slice::from_ref(&not_array), None).await,
        Err(Error::InvalidCall(_))
    ));
    not_array.args = RawValue::from_string("[1]".into()).unwrap();
    not_array.task = "no-dashes".into();
    assert!(matches!(
        b.submit(std::slice::from_ref(&not_array), None).await,
        Err(Error::InvalidCall(_))
    ));
    let mut bad_id = new_call(module, "[]");
    bad_id.id = "has space".into();
    assert!(matches!(
        b.submit(std::slice::from_ref(&bad_id), None).await,
        Err(Error::InvalidCall(_))
    ));
    // A non-final envelope cannot complete a call.
    let call = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let pending = Envelope::pending(&call.id, State::Running);
    assert!(matches!(
        b.complete(&[(d, pending)]).await,
        Err(Error::InvalidCall(_))
    ));
}

async fn hosts_age_out<B: Broker>(b: &B) {
    let info = |id: &str| HostInfo {
        id: id.into(),
        name: "box".into(),
        version: "0.1.0".into(),
        queues: queues(),
        concurrency: 4,
        started_ms: now_ms(),
        limits: Some(wasq_broker::Limits {
            max_args: 4321,
            ..wasq_broker::Limits::default()
        }),
    };
    b.register_host(&info("a")).await.unwrap();
    b.register_host(&info("b")).await.unwrap();
    let mut ids: Vec<String> = b
        .hosts()
        .await
        .unwrap()
        .into_iter()
        .map(|(i, _)| i.id)
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["a", "b"]);
    // a heartbeats, b does not.
    let end = Instant::now() + LEASE * 2;
    let stats = HostStats {
        in_flight: 1,
        done: 7,
        ..HostStats::default()
    };
    while Instant::now() < end {
        b.heartbeat("a", &stats, &[]).await.unwrap();
        sleep(LEASE / 4).await;
    }
    // One more beat right before looking, so only a stall of a whole lease
    // between these two lines (not the loop's sleep) could age `a` out.
    b.heartbeat("a", &stats, &[]).await.unwrap();
    let live = b.hosts().await.unwrap();
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(live[0].0.id, "a");
    assert_eq!(live[0].0.concurrency, 4);
    assert_eq!(live[0].0.queues, queues());
    assert_eq!(live[0].0.limits.map(|l| l.max_args), Some(4321));
    assert_eq!(live[0].1.done, 7);
    assert!(live[0].1.heartbeat_ms > 0);
    b.deregister_host("a").await.unwrap();
    assert!(b.hosts().await.unwrap().is_empty());
}

// ---- operators: events, stats, pause, purge, dead letters, rate limits ----------

/// A call failed as `lost` and dead-lettered: every host that took it died.
async fn make_lost<B: Broker>(b: &B) -> Call {
    let call = submit_one(b).await;
    for n in 1..=MAX_DELIVERIES {
        let d = claim_one(b, &format!("h{n}"), LEASE * 5).await;
        assert_eq!(
            b.start(&d, &format!("h{n}")).await.unwrap(),
            StartOutcome::Run
        );
        sleep(LEASE * 2).await;
    }
    assert!(b.claim("h9", &queues(), 8, LEASE).await.unwrap().is_empty());
    assert_eq!(
        b.status(&call.id)
            .await
            .unwrap()
            .unwrap()
            .error
            .unwrap()
            .kind,
        ErrorKind::Lost
    );
    call
}

async fn events_follow_calls<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    b.complete(&[(d.clone(), succeeded(&d, json!(9), "h1"))])
        .await
        .unwrap();
    let evs = events_of(b, &call.id).await;
    assert_eq!(kinds(&evs), vec!["queued", "started", "succeeded"]);
    assert!(evs.iter().all(|e| e.queue == "default" && e.task == "add"));
    assert!(evs.iter().all(|e| e.ts_ms > 0));
    assert_eq!(evs[1].host, "h1");
    assert_eq!(evs[2].host, "h1");
    assert!(evs[2].latency_ms.is_some_and(|l| l >= 0.0), "{:?}", evs[2]);
    assert!(evs[..2].iter().all(|e| e.latency_ms.is_none()));
    assert!(evs.iter().all(|e| e.error_kind.is_none()));
    assert!(evs[2].is_final() && !evs[0].is_final());

    // The newest `count`, oldest first; nothing after the newest.
    let all = b.events(None, 10_000, None).await.unwrap();
    let newest = b.events(None, 2, None).await.unwrap();
    assert_eq!(newest, all[all.len() - 2..].to_vec());
    let last = all.last().unwrap().id.clone();
    assert!(b.events(Some(&last), 10, None).await.unwrap().is_empty());
    let from_start = b.events(Some("0"), 2, None).await.unwrap();
    assert_eq!(from_start, all[..2].to_vec());
    assert!(matches!(
        b.events(Some("not-an-id"), 10, None).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(b.events(None, 0, None).await.unwrap().is_empty());

    // Blocking: woken by the next event, not by the timeout...
    let t0 = Instant::now();
    let (got, other) = tokio::join!(
        b.events(Some(&last), 10, Some(Duration::from_secs(10))),
        async {
            sleep(Duration::from_millis(200)).await;
            submit_one(b).await
        }
    );
    let got = got.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert_eq!(got[0].kind, "queued");
    assert_eq!(got[0].call_id, other.id);
    // ...or it times out empty.
    let t0 = Instant::now();
    let none = b
        .events(
            Some(&got.last().unwrap().id),
            10,
            Some(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
}

/// A call with one retry whose first attempt failed (on `h1`); its next
/// attempt is due after `delay`.
async fn failed_once<B: Broker>(b: &B, delay: Duration) -> Call {
    let module = b.put_module(WASM).await.unwrap().0;
    let mut flaky = new_call(module, "[]");
    flaky.retry = Some(RetryPolicy::new(1));
    b.submit(std::slice::from_ref(&flaky), None).await.unwrap();
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    assert!(b.retry(&d, &task_failed(&d, "flaky"), delay).await.unwrap());
    flaky
}

async fn failures_retries_and_revocations_are_events<B: Broker>(b: &B) {
    let flaky = failed_once(b, Duration::from_millis(10)).await;
    let d = claim_one(b, "h1", Duration::from_secs(5)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let mut failed = task_failed(&d, "again");
    failed.host = "h1".into();
    b.complete(&[(d.clone(), failed)]).await.unwrap();
    let evs = events_of(b, &flaky.id).await;
    assert_eq!(
        kinds(&evs),
        vec!["queued", "started", "retried", "started", "failed"]
    );
    assert_eq!(evs[2].error_kind.as_deref(), Some("task_error"));
    assert_eq!(evs[4].error_kind.as_deref(), Some("task_error"));
    assert!(evs[4].latency_ms.is_some());

    // Revoked while queued: final at once, with a latency.
    let queued = submit_one(b).await;
    assert!(b.revoke(&queued.id).await.unwrap());
    let evs = events_of(b, &queued.id).await;
    assert_eq!(kinds(&evs), vec!["queued", "revoked"]);
    assert_eq!(evs[1].error_kind.as_deref(), Some("revoked"));
    assert!(evs[1].latency_ms.is_some());
    // A host that claims it later adds no second final event.
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Revoked);
    assert_eq!(
        kinds(&events_of(b, &queued.id).await),
        vec!["queued", "revoked"]
    );

    // Lost: failed, then dead.
    let lost = make_lost(b).await;
    let evs = events_of(b, &lost.id).await;
    let tail: Vec<&str> = kinds(&evs).into_iter().rev().take(2).collect();
    assert_eq!(tail, vec!["dead", "failed"], "{evs:?}");
    assert!(
        evs.iter()
            .rev()
            .take(2)
            .all(|e| e.error_kind.as_deref() == Some("lost"))
    );
    assert_eq!(evs.iter().filter(|e| e.is_final()).count(), 1);
}

/// One call through claim, start and complete; its events' kinds.
async fn one_call_kinds<B: Broker>(b: &B) -> Vec<String> {
    let call = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&d, json!(9), "h1");
    assert_eq!(b.complete(&[(d, env)]).await.unwrap(), vec![true]);
    let evs = events_of(b, &call.id).await;
    kinds(&evs).into_iter().map(String::from).collect()
}

async fn the_event_level_chooses_what_is_recorded<B: Broker>(b: &B) {
    assert_eq!(b.event_level().await.unwrap(), EventLevel::All);
    let mut seen = Vec::new();
    for level in [EventLevel::Outcomes, EventLevel::Off, EventLevel::All] {
        b.set_event_level(level).await.unwrap();
        assert_eq!(b.event_level().await.unwrap(), level);
        seen.push(one_call_kinds(b).await);
    }
    assert_eq!(
        seen,
        vec![
            vec!["succeeded"],
            vec![],
            vec!["queued", "started", "succeeded"]
        ]
    );
    // The statistics count every result, whatever the level.
    let s = stats_of(b, "default").await;
    assert!((s.throughput_1m - 3.0 / 60.0).abs() < 1e-9, "{s:?}");

    // Outcomes keeps retries and revocations.
    b.set_event_level(EventLevel::Outcomes).await.unwrap();
    let flaky = failed_once(b, Duration::from_secs(60)).await;
    assert!(b.revoke(&flaky.id).await.unwrap());
    assert_eq!(
        kinds(&events_of(b, &flaky.id).await),
        vec!["retried", "revoked"]
    );

    // Off: a call a blocked host takes (the fused admission on Redis)
    // leaves no event; host events stay.
    b.set_event_level(EventLevel::Off).await.unwrap();
    let qs = queues();
    let (got, call) = tokio::join!(b.claim("h2", &qs, 1, Duration::from_secs(5)), async {
        sleep(Duration::from_millis(100)).await;
        submit_one(b).await
    });
    let d = got.unwrap().pop().expect("the blocked claim gets the call");
    let env = succeeded(&d, json!(9), "h2");
    assert_eq!(b.complete(&[(d, env)]).await.unwrap(), vec![true]);
    assert_eq!(
        b.wait(&call.id, None).await.unwrap().unwrap().state,
        State::Succeeded
    );
    assert!(events_of(b, &call.id).await.is_empty());
    b.register_host(&HostInfo {
        id: "h2".into(),
        name: "box".into(),
        version: "0.1.0".into(),
        queues: queues(),
        concurrency: 1,
        started_ms: now_ms(),
        limits: None,
    })
    .await
    .unwrap();
    let last = b.events(None, 1, None).await.unwrap();
    assert_eq!(
        (last[0].kind.as_str(), last[0].host.as_str()),
        ("host_online", "h2")
    );
}

async fn host_events<B: Broker>(b: &B) {
    let info = |id: &str| HostInfo {
        id: id.into(),
        name: "box".into(),
        version: "0.1.0".into(),
        queues: vec!["hq".to_string()],
        concurrency: 2,
        started_ms: now_ms(),
        limits: None,
    };
    b.register_host(&info("a")).await.unwrap();
    b.register_host(&info("b")).await.unwrap();
    b.heartbeat("a", &HostStats::default(), &[]).await.unwrap();
    b.deregister_host("a").await.unwrap();
    // b dies: its lease lapses and whoever looks records it once.
    sleep(LEASE * 2).await;
    assert!(b.hosts().await.unwrap().is_empty());
    assert!(b.hosts().await.unwrap().is_empty());
    let evs: Vec<Event> = b
        .events(Some("0"), 1000, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind.starts_with("host_"))
        .collect();
    let seen: Vec<(&str, &str, Option<&str>)> = evs
        .iter()
        .map(|e| (e.kind.as_str(), e.host.as_str(), e.error_kind.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("host_online", "a", None),
            ("host_online", "b", None),
            ("host_heartbeat", "a", None),
            ("host_offline", "a", None),
            ("host_offline", "b", Some("lease_expired")),
        ]
    );
    assert!(evs.iter().all(|e| e.call_id.is_empty() && e.ts_ms > 0));
}

async fn queue_stats_count_and_time<B: Broker>(b: &B) {
    let calls = numbered_calls(b, 4).await;
    b.submit(&calls[..3], None).await.unwrap();
    b.submit(&calls[3..], Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let s = stats_of(b, "default").await;
    assert_eq!(
        (s.depth, s.pending, s.delayed, s.dead),
        (3, 0, 1, 0),
        "{s:?}"
    );
    assert!(!s.paused);
    assert_eq!(s.rate, None);
    assert_eq!(s.throughput_1m, 0.0);
    assert_eq!(s.p50_ms, None);

    let got = b
        .claim("h1", &queues(), 2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 2);
    let s = stats_of(b, "default").await;
    assert_eq!((s.depth, s.pending, s.delayed), (1, 2, 1), "{s:?}");
    for d in &got {
        assert_eq!(b.start(d, "h1").await.unwrap(), StartOutcome::Run);
    }
    sleep(Duration::from_millis(20)).await;
    let done: Vec<(Delivery, Envelope)> = got
        .iter()
        .map(|d| (d.clone(), succeeded(d, json!(1), "h1")))
        .collect();
    b.complete(&done).await.unwrap();
    let s = stats_of(b, "default").await;
    assert_eq!((s.depth, s.pending, s.delayed), (1, 0, 1), "{s:?}");
    assert!((s.throughput_1m - 2.0 / 60.0).abs() < 1e-9, "{s:?}");
    let (p50, p90, p99) = (s.p50_ms.unwrap(), s.p90_ms.unwrap(), s.p99_ms.unwrap());
    assert!(p50 >= 0.0 && p50 <= p90 && p90 <= p99, "{s:?}");
    // A queue only a live host consumes is known too.
    b.register_host(&HostInfo {
        id: "h2".into(),
        name: "box".into(),
        version: "0".into(),
        queues: vec!["other".into()],
        concurrency: 1,
        started_ms: now_ms(),
        limits: None,
    })
    .await
    .unwrap();
    let s = stats_of(b, "other").await;
    assert_eq!((s.depth, s.pending, s.delayed, s.dead), (0, 0, 0, 0));
}

async fn a_paused_queue_is_not_claimed<B: Broker>(b: &B) {
    let running = submit_one(b).await;
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    b.set_paused("default", true).await.unwrap();
    assert!(stats_of(b, "default").await.paused);
    let waiting = submit_one(b).await;
    // A blocking claim sees nothing, even as more arrives.
    let qs = queues();
    let (got, _) = tokio::join!(b.claim("h2", &qs, 8, LEASE * 2), async {
        sleep(LEASE / 2).await;
        submit_one(b).await
    });
    assert!(got.unwrap().is_empty());
    // Other queues go on.
    let module = b.put_module(WASM).await.unwrap().0;
    let mut elsewhere = new_call(module, "[]");
    elsewhere.queue = "other".into();
    b.submit(std::slice::from_ref(&elsewhere), None)
        .await
        .unwrap();
    let both = vec!["default".to_string(), "other".to_string()];
    let got = b
        .claim("h2", &both, 8, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, elsewhere.id);
    // The running call finishes.
    assert_eq!(
        b.complete(&[(d.clone(), succeeded(&d, json!(9), "h1"))])
            .await
            .unwrap(),
        vec![true]
    );
    assert_eq!(state_of(b, &running.id).await, State::Succeeded);
    assert_eq!(state_of(b, &waiting.id).await, State::Queued);
    let s = stats_of(b, "default").await;
    assert_eq!(s.depth, 2, "{s:?}");
    // Resumed: a claim blocked on the queue gets the waiting calls.
    let (got, ()) = tokio::join!(b.claim("h2", &qs, 8, Duration::from_secs(5)), async {
        sleep(Duration::from_millis(100)).await;
        b.set_paused("default", false).await.unwrap();
    });
    assert_eq!(got.unwrap().len(), 2);
    assert!(!stats_of(b, "default").await.paused);
    assert!(matches!(
        b.set_paused("no{good}", true).await,
        Err(Error::InvalidName(_))
    ));
}

async fn purge_drops_waiting_calls_only<B: Broker>(b: &B) {
    let calls = numbered_calls(b, 4).await;
    b.submit(&calls[..3], None).await.unwrap();
    b.submit(&calls[3..], Some(Duration::from_secs(600)))
        .await
        .unwrap();
    let running = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(running.call.id, calls[0].id);
    assert_eq!(b.start(&running, "h1").await.unwrap(), StartOutcome::Run);
    // Someone waits for a waiting call; the purge wakes them.
    let (waited, purged) =
        tokio::join!(b.wait(&calls[1].id, Some(Duration::from_secs(10))), async {
            sleep(Duration::from_millis(100)).await;
            b.purge_queue("default").await.unwrap()
        });
    assert_eq!(purged, 3);
    let env = waited.unwrap().unwrap();
    assert_eq!(env.state, State::Revoked);
    assert_eq!(env.error.as_ref().unwrap().message, "purged");
    for c in &calls[1..] {
        assert_eq!(state_of(b, &c.id).await, State::Revoked);
        assert!(b.is_revoked(&c.id).await.unwrap());
        assert_eq!(kinds(&events_of(b, &c.id).await), vec!["queued", "revoked"]);
    }
    let s = stats_of(b, "default").await;
    assert_eq!((s.depth, s.pending, s.delayed), (0, 1, 0), "{s:?}");
    assert!(
        b.claim("h2", &queues(), 8, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    // The running call was not touched.
    assert_eq!(state_of(b, &calls[0].id).await, State::Running);
    let env = succeeded(&running, json!(0), "h1");
    assert_eq!(b.complete(&[(running, env)]).await.unwrap(), vec![true]);
    assert_eq!(b.purge_queue("default").await.unwrap(), 0);
    assert_eq!(b.purge_queue("never-used").await.unwrap(), 0);
}

async fn dead_letters_are_retried_and_dropped<B: Broker>(b: &B) {
    let call = make_lost(b).await;
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(!dead[0].entry_id.is_empty());
    assert_eq!(dead[0].error.as_ref().unwrap().kind, ErrorKind::Lost);
    assert_eq!(stats_of(b, "default").await.dead, 1);

    // Retried: same id, fresh attempt and deliveries, the old result gone.
    let (waited, retried) = tokio::join!(b.wait(&call.id, Some(Duration::from_secs(10))), async {
        sleep(Duration::from_millis(50)).await;
        b.dead_retry(&dead[0].entry_id).await.unwrap()
    });
    assert!(retried);
    // (a waiter that started before the retry saw the `lost` result)
    assert_eq!(
        waited.unwrap().unwrap().error.unwrap().kind,
        ErrorKind::Lost
    );
    let status = b.status(&call.id).await.unwrap().unwrap();
    assert_eq!((status.state, status.attempt), (State::Queued, 1));
    assert!(b.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(stats_of(b, "default").await.dead, 0);
    assert!(!b.dead_retry(&dead[0].entry_id).await.unwrap(), "only once");
    let d = claim_one(b, "h1", Duration::from_secs(2)).await;
    assert_eq!(d.call.id, call.id);
    assert_eq!((d.deliveries, d.call.attempt), (1, 1));
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&d, json!(9), "h1");
    b.complete(&[(d, env.clone())]).await.unwrap();
    assert_eq!(
        b.wait(&call.id, Some(Duration::from_secs(1)))
            .await
            .unwrap(),
        Some(env)
    );
    assert_eq!(
        kinds(&events_of(b, &call.id).await).last(),
        Some(&"succeeded")
    );

    // Dropped.
    make_lost(b).await;
    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(b.dead_drop(&dead[0].entry_id).await.unwrap());
    assert!(!b.dead_drop(&dead[0].entry_id).await.unwrap());
    assert!(!b.dead_retry(&dead[0].entry_id).await.unwrap());
    assert!(b.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(stats_of(b, "default").await.dead, 0);
    assert!(matches!(
        b.dead_drop("garbage").await,
        Err(Error::InvalidArgument(_))
    ));
}

async fn a_queue_rate_limit_caps_claims<B: Broker>(b: &B) {
    let calls = numbered_calls(b, 10).await;
    b.submit(&calls, None).await.unwrap();
    let scope = RateScope::Queue("default".into());
    let rate = Rate {
        per_second: 4.0,
        burst: 2,
    };
    b.set_rate_limit(&scope, Some(rate)).await.unwrap();
    assert_eq!(b.rate_limits().await.unwrap(), vec![(scope.clone(), rate)]);
    assert_eq!(stats_of(b, "default").await.rate, Some(rate));
    // The burst, then nothing until the bucket refills...
    // (Timed from before the claim that empties the bucket: the next token
    // comes 250 ms after that claim, however slowly the machine runs.)
    let drained = Instant::now();
    let got = b.claim("h1", &queues(), 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 2);
    finish(b, &got).await;
    let more = b.claim("h2", &queues(), 10, Duration::ZERO).await.unwrap();
    assert!(more.is_empty(), "{more:?}");
    // ...which a blocking claim waits for (a token every 250 ms).
    let t0 = Instant::now();
    let got = b
        .claim("h2", &queues(), 10, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        drained.elapsed() >= Duration::from_millis(200),
        "{:?}",
        drained.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    finish(b, &got).await;
    // Over a second, about 4 more (the bucket never exceeds its burst).
    sleep(Duration::from_secs(1)).await;
    let got = b.claim("h3", &queues(), 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 2, "capped by the burst");
    finish(b, &got).await;
    // Lifted: the rest at once.
    b.set_rate_limit(&scope, None).await.unwrap();
    assert!(b.rate_limits().await.unwrap().is_empty());
    let got = b.claim("h3", &queues(), 10, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 5);
    assert!(matches!(
        b.set_rate_limit(
            &scope,
            Some(Rate {
                per_second: 0.0,
                burst: 1
            })
        )
        .await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        b.set_rate_limit(&RateScope::Queue("a:b".into()), None)
            .await,
        Err(Error::InvalidName(_))
    ));
}

async fn a_module_rate_limit_does_not_block_other_modules<B: Broker>(b: &B) {
    let slow = b.put_module(WASM).await.unwrap().0;
    let fast = b.put_module(b"\0asm\x01\0\0\0\0").await.unwrap().0;
    let scope = RateScope::Module(slow);
    b.set_rate_limit(
        &scope,
        Some(Rate {
            per_second: 2.0,
            burst: 1,
        }),
    )
    .await
    .unwrap();
    let s: Vec<Call> = (0..3).map(|i| new_call(slow, &format!("[{i}]"))).collect();
    let f: Vec<Call> = (0..3).map(|i| new_call(fast, &format!("[{i}]"))).collect();
    // The slow module's calls are first in line.
    b.submit(&s, None).await.unwrap();
    b.submit(&f, None).await.unwrap();
    // Timed from before the claim that empties the bucket, so a slow machine
    // cannot shorten the wait measured below.
    let drained = Instant::now();
    let got = b.claim("h1", &queues(), 10, Duration::ZERO).await.unwrap();
    finish(b, &got).await;
    let mut ids: Vec<&str> = got.iter().map(|d| d.call.id.as_str()).collect();
    ids.sort_unstable();
    let mut want = vec![
        s[0].id.as_str(),
        f[0].id.as_str(),
        f[1].id.as_str(),
        f[2].id.as_str(),
    ];
    want.sort_unstable();
    assert_eq!(ids, want, "one slow call, every fast one");
    let st = stats_of(b, "default").await;
    assert_eq!((st.depth, st.pending, st.delayed), (0, 0, 2), "{st:?}");
    // The held-back calls come one per refill (500 ms), in any order.
    let t0 = Instant::now();
    let mut rest = Vec::new();
    while rest.len() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5), "held back for good");
        let got = b
            .claim("h1", &queues(), 10, Duration::from_secs(1))
            .await
            .unwrap();
        finish(b, &got).await;
        rest.extend(got);
    }
    assert!(
        drained.elapsed() >= Duration::from_millis(900),
        "{:?}",
        drained.elapsed()
    );
    assert!(
        rest.iter()
            .all(|d| d.call.module == slow && d.deliveries == 1)
    );
    assert_eq!(
        b.rate_limits().await.unwrap(),
        vec![(
            scope,
            Rate {
                per_second: 2.0,
                burst: 1
            }
        )]
    );
}

async fn revoking_a_call_whose_host_died_ends_it_at_once<B: Broker>(b: &B) {
    let call = submit_one(b).await;
    let d = claim_one(b, "a", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "a").await.unwrap(), StartOutcome::Run);
    // a dies; nobody has reclaimed the call yet.
    sleep(LEASE * 2).await;
    assert!(b.revoke(&call.id).await.unwrap());
    let env = b
        .wait(&call.id, Some(Duration::from_secs(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(env.state, State::Revoked);
    // The host that reclaims it does not run it.
    let again = claim_one(b, "b", LEASE * 5).await;
    assert_eq!(again.deliveries, 2);
    assert_eq!(b.start(&again, "b").await.unwrap(), StartOutcome::Revoked);
    let final_events = events_of(b, &call.id)
        .await
        .into_iter()
        .filter(Event::is_final)
        .count();
    assert_eq!(final_events, 1);
}

// ---- instantiation ------------------------------------------------------------

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_local {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    let broker = wasq_broker::LocalBroker::new(super::config());
                    super::$name(&broker).await;
                }
            )*
        }
        mod on_redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = wasq_broker::testing::RedisServer::start();
                    let broker =
                        super::redis_broker(&server, stringify!($name), super::config()).await;
                    super::$name(&broker).await;
                }
            )*
        }
    };
}

conformance!(
    round_trip,
    unknown_vs_queued,
    first_final_result_wins,
    stale_token_cannot_publish,
    retry_goes_through_the_delayed_set,
    countdown_delays_a_call,
    a_countdown_past_the_clock_holds_the_call,
    delivery_limit_fails_as_lost,
    dead_host_is_reclaimed_after_the_lease,
    live_host_is_never_reclaimed,
    revoke_a_queued_call,
    revoke_a_running_call,
    revoked_many_answers_in_order,
    args_over_the_limit_are_refused_at_submit,
    a_heartbeat_reports_calls_reclaimed_elsewhere,
    several_waiters_all_wake,
    wait_times_out,
    release_requeues_at_once,
    modules,
    claim_returns_at_most_max,
    claim_blocks_until_a_call_arrives,
    submit_wait_is_a_remote_call,
    wait_many_collects_a_batch,
    queues_are_separate,
    invalid_calls_are_refused,
    hosts_age_out,
    events_follow_calls,
    failures_retries_and_revocations_are_events,
    host_events,
    the_event_level_chooses_what_is_recorded,
    queue_stats_count_and_time,
    a_paused_queue_is_not_claimed,
    purge_drops_waiting_calls_only,
    dead_letters_are_retried_and_dropped,
    a_queue_rate_limit_caps_claims,
    a_module_rate_limit_does_not_block_other_modules,
    revoking_a_call_whose_host_died_ends_it_at_once,
);

/// The Arc blanket impl forwards (compile-time check plus one call).
#[tokio::test(start_paused = true)]
async fn arc_of_a_broker_is_a_broker() {
    let broker = std::sync::Arc::new(LocalBroker::new(config()));
    round_trip(&broker).await;
}

/// The stats window slides (on the local broker, where time can be skipped).
#[tokio::test(start_paused = true)]
async fn local_stats_forget_results_older_than_a_minute() {
    let b = LocalBroker::new(config());
    let call = submit_one(&b).await;
    let d = claim_one(&b, "h1", Duration::from_secs(1)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    b.complete(&[(d.clone(), succeeded(&d, json!(9), "h1"))])
        .await
        .unwrap();
    let s = stats_of(&b, "default").await;
    assert!(s.throughput_1m > 0.0 && s.p50_ms.is_some(), "{s:?}");
    sleep(Duration::from_secs(61)).await;
    let s = stats_of(&b, "default").await;
    assert_eq!((s.throughput_1m, s.p50_ms), (0.0, None), "{s:?}");
    assert_eq!(state_of(&b, &call.id).await, State::Succeeded);
}
