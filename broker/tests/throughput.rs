//! A rough throughput measurement of the Redis broker's hot path (ignored by
//! default; it measures, it does not assert much):
//!
//! ```text
//! cargo test -p wasq-broker --all-features --release --test throughput -- --ignored --nocapture
//! ```
//!
//! One in-process "host" claims batches, starts every call (concurrently, so
//! the multiplexed connection pipelines them) and completes each batch in one
//! round trip; the task itself costs nothing, so this is the broker's ceiling
//! on one connection.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::value::RawValue;
use wasq_broker::testing::{RedisServer, unique_prefix};
use wasq_broker::{
    Broker, BrokerConfig, Call, Envelope, ModuleHash, RedisBroker, StartOutcome, State,
    new_call_id, now_ms,
};

fn call(module: ModuleHash) -> Call {
    Call {
        id: new_call_id(),
        module,
        task: "noop".into(),
        args: RawValue::from_string("[]".into()).unwrap(),
        limits: Default::default(),
        attempt: 1,
        submitted_ms: now_ms(),
        retry: None,
        queue: "default".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly"]
async fn redis_round_trips_per_second() {
    const N: usize = 5000;
    let server = RedisServer::start();
    let b = RedisBroker::connect(&server.url(), &unique_prefix("tp"), BrokerConfig::default())
        .await
        .unwrap();
    let module = b.put_module(b"\0asm\x01\0\0\0").await.unwrap().0;
    let calls: Vec<Call> = (0..N).map(|_| call(module)).collect();
    let t0 = Instant::now();
    for chunk in calls.chunks(500) {
        b.submit(chunk, None).await.unwrap();
    }
    let submit = t0.elapsed();
    let queues = vec!["default".to_string()];
    let t1 = Instant::now();
    let mut done = 0;
    while done < N {
        let got = b
            .claim("h1", &queues, 64, Duration::from_secs(1))
            .await
            .unwrap();
        let starts = join_all(got.iter().map(|d| b.start(d, "h1"))).await;
        assert!(
            starts
                .iter()
                .all(|s| *s.as_ref().unwrap() == StartOutcome::Run)
        );
        let batch: Vec<_> = got
            .into_iter()
            .map(|d| {
                let e = Envelope::pending(&d.call.id, State::Succeeded);
                (d, e)
            })
            .collect();
        let ok = b.complete(&batch).await.unwrap();
        assert!(ok.iter().all(|&x| x));
        done += batch.len();
    }
    let run = t1.elapsed();
    let t2 = Instant::now();
    for c in calls.iter().take(500) {
        assert!(
            b.wait(&c.id, Some(Duration::ZERO))
                .await
                .unwrap()
                .unwrap()
                .succeeded()
        );
    }
    let wait = t2.elapsed();
    println!(
        "submit: {:.0} calls/s; claim+start+complete: {:.0} calls/s; wait (done): {:.0}/s",
        N as f64 / submit.as_secs_f64(),
        N as f64 / run.as_secs_f64(),
        500.0 / wait.as_secs_f64()
    );
}
