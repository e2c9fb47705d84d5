//! End to end: a flood of distinct modules that are costly to compile
//! arrives at a real `wasq host run` while other calls, of a module it has
//! loaded, keep coming. The host compiles at most `--compile-jobs` at once,
//! holds at most half its slots for calls waiting on compiles and hands the
//! rest back, so the other calls keep being served meanwhile.
//!
//! Prints the latency of the other calls without and during the flood
//! (`cargo test --test e2e_flood -- --nocapture`); BENCHMARKS.md quotes it.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, call};
use serde_json::json;
use wasq_broker::{Broker, ModuleHash, State};

#[path = "../host/tests/guests/costly.rs"]
mod costly;

use costly::costly;

const BASIC: &str = include_str!("../host/tests/guests/basic.wat");

/// Runs `n` calls of `answer` one after another; their latencies, sorted.
async fn answers(c: &Cluster, module: ModuleHash, n: usize) -> Vec<Duration> {
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let call = call(module, "answer", json!([]));
        c.submit(std::slice::from_ref(&call)).await;
        let env = c.wait(&call.id, 120).await;
        assert_eq!(env.state, State::Succeeded, "{env:?}");
        assert_eq!(env.result, json!(42));
        took.push(started.elapsed());
    }
    took.sort();
    took
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_costly_new_modules_does_not_stop_other_calls() {
    let mut c = Cluster::start("flood").await;
    c.host(&[
        "--concurrency",
        "8",
        "--compile-jobs",
        "1",
        "--compile",
        "optimized",
    ]);
    c.wait_hosts(1).await;
    let basic = c
        .broker
        .put_module(&wat::parse_str(BASIC).unwrap())
        .await
        .unwrap()
        .0;
    let quiet = answers(&c, basic, 30).await;

    let flood_size = 16;
    let mut flood = Vec::new();
    for i in 0..flood_size {
        let module = c
            .broker
            .put_module(&costly(1_000 * i, 2_000, 30))
            .await
            .unwrap()
            .0;
        flood.push(call(module, "run", json!([])));
    }
    let flood_started = Instant::now();
    c.submit(&flood).await;
    let during = answers(&c, basic, 30).await;
    let finished_meanwhile = {
        let mut n = 0;
        for f in &flood {
            if c.broker.status(&f.id).await.unwrap().unwrap().state == State::Succeeded {
                n += 1;
            }
        }
        n
    };
    // The other calls did not wait behind the flood: they were all served
    // while most of it was still compiling.
    assert!(
        finished_meanwhile < flood_size / 2,
        "{finished_meanwhile} of {flood_size} flood calls finished before 30 other calls"
    );
    for f in &flood {
        let env = c.wait(&f.id, 300).await;
        assert_eq!(env.state, State::Succeeded, "{env:?}");
    }
    let flood_took = flood_started.elapsed();
    eprintln!(
        "other calls, p50/p90/max: quiet {:?}/{:?}/{:?}; during a flood of {flood_size} costly modules {:?}/{:?}/{:?}; \
         {finished_meanwhile} flood calls done meanwhile; the flood took {flood_took:?}",
        quantile(&quiet, 0.5),
        quantile(&quiet, 0.9),
        quiet[quiet.len() - 1],
        quantile(&during, 0.5),
        quantile(&during, 0.9),
        during[during.len() - 1],
    );
}
