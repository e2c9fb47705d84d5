//! The Redis broker's internals, beyond the contract every broker meets
//! (that is `conformance.rs`): garbage in Redis, TTLs, a server restart,
//! credentials, and how many scripts, commands and blocked clients the
//! server sees for a given exchange.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::time::Instant;
use wasq_broker::testing::{RedisServer, eventually, unique_prefix};
use wasq_broker::{
    Broker, BrokerConfig, Delivery, Envelope, Error, ErrorKind, HostStats, ModuleHash, RedisBroker,
    StartOutcome, State, new_call_id,
};

use common::*;

async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test]
async fn redis_garbage_entries_are_dead_lettered() {
    let server = RedisServer::start();
    let (prefix, b) = prefixed_broker(&server, "garbage").await;
    let mut conn = raw(&server).await;
    let stream = format!("{prefix}:{{q:default}}:stream");
    let garbage_id = new_call_id();
    let mut bad_id = new_call(ModuleHash::of(WASM), "[]");
    bad_id.id = "no spaces allowed".into();
    for fields in [
        vec![("foo", "bar".to_string())],
        vec![("call", "not json".to_string())],
        vec![("call", format!("{{\"id\":\"{garbage_id}\",\"bogus\":1}}"))],
        vec![("call", "[1,2]".to_string())],
        vec![("call", serde_json::to_string(&bad_id).unwrap())],
    ] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(&fields)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let good = submit_one(&b).await;
    let got = b
        .claim("h1", &queues(), 10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "only the good call is delivered");
    assert_eq!(got[0].call.id, good.id);

    let dead = b.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 5);
    assert!(dead.iter().any(|d| d.reason.contains("is not valid")));
    assert!(dead.iter().any(|d| d.reason.contains("no `call` field")));
    assert!(dead.iter().all(|d| d.queue == "default"));
    assert_eq!(dead.iter().filter(|d| d.id == garbage_id).count(), 1);
    // The garbage with a recognisable id got a failed envelope.
    let env = b.status(&garbage_id).await.unwrap().unwrap();
    assert_eq!(env.state, State::Failed);
    assert_eq!(env.error.unwrap().kind, ErrorKind::BadInput);

    assert_eq!(b.start(&got[0], "h1").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&got[0], json!(9), "h1");
    assert_eq!(
        b.complete(&[(got[0].clone(), env)]).await.unwrap(),
        vec![true]
    );
    // Only acknowledged entries were removed; nothing is left behind.
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0);
}

#[tokio::test]
async fn redis_an_oversized_call_is_buried_not_sent_to_a_host() {
    let server = RedisServer::start();
    let prefix = unique_prefix("oversized_call");
    // A submitter whose args limit is far above the host's (config(): 4096
    // bytes, so entries over 4096 + 64 KiB are refused).
    let roomy = BrokerConfig {
        max_args: 1 << 20,
        max_module: 1 << 20,
        ..config()
    };
    let writer = RedisBroker::connect(&server.url(), &prefix, roomy)
        .await
        .unwrap();
    let host = RedisBroker::connect(&server.url(), &prefix, config())
        .await
        .unwrap();
    let module = writer.put_module(WASM).await.unwrap().0;
    let big = new_call(module, &format!("[\"{}\"]", "x".repeat(200_000)));
    let fits = new_call(module, "[1]");
    writer
        .submit(&[big.clone(), fits.clone()], None)
        .await
        .unwrap();
    let got = host
        .claim("h1", &queues(), 10, Duration::from_secs(2))
        .await
        .unwrap();
    // Obeyed: the small call is delivered; violated: the big one is not.
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, fits.id);
    let dead = host.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, big.id);
    assert!(
        dead[0].reason.contains("over this host's limit"),
        "{}",
        dead[0].reason
    );
    let env = host.status(&big.id).await.unwrap().unwrap();
    assert_eq!(env.state, State::Failed);
    let error = env.error.unwrap();
    assert_eq!(error.kind, ErrorKind::BadInput);
    assert!(error.message.contains("200"), "{}", error.message);
    // Also when it arrives while the host blocks for new calls.
    let waiting = tokio::spawn({
        let host = RedisBroker::connect(&server.url(), &prefix, config())
            .await
            .unwrap();
        async move {
            host.claim("h2", &queues(), 10, Duration::from_secs(2))
                .await
        }
    });
    let late = new_call(module, &format!("[\"{}\"]", "y".repeat(200_000)));
    writer
        .submit(std::slice::from_ref(&late), None)
        .await
        .unwrap();
    // (The small call may come back: h1 never finished it and its lease is short.)
    let got = waiting.await.unwrap().unwrap();
    assert!(got.iter().all(|d| d.call.id == fits.id), "{got:?}");
    let env = host.status(&late.id).await.unwrap().unwrap();
    assert_eq!(env.error.unwrap().kind, ErrorKind::BadInput);
}

#[tokio::test]
async fn redis_an_oversized_module_is_refused_before_download() {
    let server = RedisServer::start();
    let prefix = unique_prefix("oversized_module");
    let roomy = BrokerConfig {
        max_module: 1 << 20,
        ..config()
    };
    let writer = RedisBroker::connect(&server.url(), &prefix, roomy)
        .await
        .unwrap();
    let big = vec![0u8; 4096];
    let (hash, _) = writer.put_module(&big).await.unwrap();
    // A reader whose limit (config(): 1024 bytes) is below the stored size.
    let reader = RedisBroker::connect(&server.url(), &prefix, config())
        .await
        .unwrap();
    match reader.get_module(&hash).await {
        Err(Error::ModuleTooLarge { size, limit }) => assert_eq!((size, limit), (4096, 1024)),
        other => panic!("expected ModuleTooLarge, got {other:?}"),
    }
    assert_eq!(writer.get_module(&hash).await.unwrap(), Some(big));
    assert_eq!(
        reader.get_module(&ModuleHash::of(b"none")).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn redis_garbage_at_the_result_key() {
    let server = RedisServer::start();
    let (prefix, b) = prefixed_broker(&server, "garbage_result").await;
    let mut conn = raw(&server).await;
    let call = submit_one(&b).await;
    // A waiter that gave up at once marked the call all the same: its
    // result comes with a wake-up.
    assert_eq!(b.wait(&call.id, Some(Duration::ZERO)).await.unwrap(), None);
    let result_key = format!("{prefix}:result:{}", call.id);
    let _: i64 = redis::cmd("HSET")
        .arg(&result_key)
        .arg("x")
        .arg("y")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(b.status(&call.id).await, Err(Error::Malformed(_))));
    // A host still runs the call and its result replaces the garbage.
    let d = claim_one(&b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&d, json!(9), "h1");
    assert_eq!(b.complete(&[(d, env.clone())]).await.unwrap(), vec![true]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(env.clone()));

    // A string that is not an envelope is an error too, never a panic.
    let _: () = redis::cmd("SET")
        .arg(&result_key)
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(b.status(&call.id).await, Err(Error::Malformed(_))));
    // A waiter gets the envelope the wake-up carries (it never reads the
    // result key while the wake-up lives)...
    assert_eq!(
        b.wait(&call.id, Some(Duration::from_millis(10)))
            .await
            .unwrap(),
        Some(env)
    );
    // ...and once the wake-up is gone, the garbage is an error.
    let _: i64 = redis::cmd("DEL")
        .arg(format!("{prefix}:wake:{}", call.id))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        b.wait(&call.id, Some(Duration::from_millis(10))).await,
        Err(Error::Malformed(_))
    ));
}

/// One call's garbage fails its batch's script after earlier results were
/// stored; every good result is still published and acknowledged, and only
/// the bad entry stays pending (for a reclaim).
#[tokio::test]
async fn redis_garbage_in_a_batch_of_results() {
    let server = RedisServer::start();
    // Admissions go with the results (never alone, whatever the machine's
    // load), so the batch's script meets the garbage.
    let (prefix, b) = prefixed_broker(&server, "garbage_batch").await;
    let b = b.with_admission_delay(Duration::from_secs(600));
    let mut conn = raw(&server).await;
    let calls = numbered_calls(&b, 3).await;
    b.submit(&calls, None).await.unwrap();
    let got = b
        .claim("h1", &queues(), 3, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    let bad = &got[1].call.id;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:call:{bad}"))
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .unwrap();
    let done: Vec<_> = got
        .iter()
        .map(|d| (d.clone(), succeeded(d, json!(1), "h1")))
        .collect();
    assert_eq!(b.complete(&done).await.unwrap(), vec![true, false, true]);
    for d in [&got[0], &got[2]] {
        assert_eq!(state_of(&b, &d.call.id).await, State::Succeeded);
    }
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(format!("{prefix}:{{q:default}}:stream"))
        .arg("hosts")
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        pending.len(),
        1,
        "only the bad entry stays pending: {pending:?}"
    );
}

#[tokio::test]
async fn redis_result_ttl_is_applied() {
    let server = RedisServer::start();
    let mut conn = raw(&server).await;
    for (ttl, expect_expiry) in [(Duration::from_secs(60), true), (Duration::ZERO, false)] {
        let prefix = unique_prefix("ttl");
        let cfg = BrokerConfig {
            result_ttl: ttl,
            ..config()
        };
        let b = RedisBroker::connect(&server.url(), &prefix, cfg)
            .await
            .unwrap();
        let call = submit_one(&b).await;
        // Waited for (see `redis_wake_ups_are_for_waiters`): a wake-up too.
        assert_eq!(b.wait(&call.id, Some(Duration::ZERO)).await.unwrap(), None);
        let d = claim_one(&b, "h1", Duration::from_secs(2)).await;
        assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
        let env = succeeded(&d, json!(9), "h1");
        assert_eq!(b.complete(&[(d, env)]).await.unwrap(), vec![true]);
        let pttl: i64 = redis::cmd("PTTL")
            .arg(format!("{prefix}:result:{}", call.id))
            .query_async(&mut conn)
            .await
            .unwrap();
        if expect_expiry {
            assert!(pttl > 50_000 && pttl <= 60_000, "pttl {pttl}");
        } else {
            assert_eq!(pttl, -1, "result_ttl 0 keeps results");
        }
        // The rest is bounded either way.
        for key in [
            format!("{prefix}:wake:{}", call.id),
            format!("{prefix}:call:{}", call.id),
        ] {
            let pttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(pttl > 0, "{key} has no TTL ({pttl})");
        }
    }
}

#[tokio::test]
async fn redis_survives_a_restart() {
    let mut server = RedisServer::start();
    let b = redis_broker(&server, "restart", config()).await;
    let module = b.put_module(WASM).await.unwrap().0;
    let running = new_call(module, "[1]");
    let queued = new_call(module, "[2]");
    b.submit(std::slice::from_ref(&running), None)
        .await
        .unwrap();
    let d = claim_one(&b, "h1", Duration::from_secs(2)).await;
    assert_eq!(d.call.id, running.id);
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    b.submit(std::slice::from_ref(&queued), None).await.unwrap();

    server.stop();
    // Every kind of request fails as transient while the server is down.
    assert!(matches!(
        b.status(&queued.id).await,
        Err(Error::Unavailable(_))
    ));
    assert!(matches!(
        b.claim("h1", &queues(), 1, Duration::from_millis(100))
            .await,
        Err(Error::Unavailable(_))
    ));
    assert!(matches!(
        b.submit(std::slice::from_ref(&new_call(module, "[]")), None)
            .await,
        Err(Error::Unavailable(_))
    ));
    assert!(matches!(
        b.wait(&queued.id, Some(Duration::from_millis(100))).await,
        Err(Error::Unavailable(_))
    ));
    assert!(matches!(
        b.submit_wait(&new_call(module, "[]"), Some(Duration::from_millis(100)))
            .await,
        Err(Error::Unavailable(_))
    ));
    let err = b.has_module(&module).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("127.0.0.1"), "{err}");

    server.restart();
    // The broker recovers by itself (scripts are reloaded) and nothing was lost.
    let status = eventually(
        Duration::from_secs(10),
        "the broker back after the restart",
        || b.status(&queued.id),
        |r| !matches!(r, Err(e) if e.is_transient()),
    )
    .await
    .unwrap_or_else(|e| panic!("broker did not recover: {e}"));
    assert_eq!(status.unwrap().state, State::Queued);
    assert_eq!(state_of(&b, &running.id).await, State::Running);
    // h1 lived through the outage and heartbeats again before anyone
    // reclaims its call (idle time in Redis includes the downtime).
    b.heartbeat("h1", &HostStats::default(), std::slice::from_ref(&d))
        .await
        .unwrap();
    let again = b
        .claim("h2", &queues(), 8, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].call.id, queued.id);
    // The call that was running when the server died is still owned by h1,
    // who may finish it...
    let env = succeeded(&d, json!(1), "h1");
    assert_eq!(b.complete(&[(d, env)]).await.unwrap(), vec![true]);
    assert_eq!(state_of(&b, &running.id).await, State::Succeeded);
    assert!(b.get_module(&module).await.unwrap().is_some());
}

#[tokio::test]
async fn redis_errors_name_the_server_but_not_the_password() {
    let server = RedisServer::start();
    let port = server.port();
    drop(server);
    let url = format!("redis://alice:hunter2@127.0.0.1:{port}");
    let err = RedisBroker::connect(&url, "p", config()).await.unwrap_err();
    assert!(err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn redis_set_nx_never_overwrites_a_module() {
    let server = RedisServer::start();
    let (prefix, b) = prefixed_broker(&server, "nx").await;
    let mut conn = raw(&server).await;
    let hash = ModuleHash::of(WASM);
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:module:{hash}"))
        .arg("tampered")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(b.put_module(WASM).await.unwrap(), (hash, false));
    // Stored bytes are returned unverified; hosts check the hash.
    assert_eq!(b.get_module(&hash).await.unwrap().unwrap(), b"tampered");
}

#[tokio::test]
async fn redis_events_are_recorded() {
    let server = RedisServer::start();
    let (prefix, b) = prefixed_broker(&server, "events").await;
    let call = submit_one(&b).await;
    let d = claim_one(&b, "h1", Duration::from_secs(2)).await;
    assert_eq!(b.start(&d, "h1").await.unwrap(), StartOutcome::Run);
    let env = succeeded(&d, json!(9), "h1");
    b.complete(&[(d, env)]).await.unwrap();
    let mut conn = raw(&server).await;
    let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:events"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let types: Vec<String> = reply
        .iter()
        .map(|(_, f)| f.iter().find(|(k, _)| k == "type").unwrap().1.clone())
        .collect();
    assert_eq!(types, vec!["queued", "started", "succeeded"]);
    assert!(
        reply
            .iter()
            .all(|(_, f)| f.contains(&("id".to_string(), call.id.clone())))
    );
    // One set of fields for every entry (a stream stores it once per
    // node); what does not apply is empty.
    for (_, fields) in &reply {
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "type", "id", "queue", "task", "host", "ts", "error", "latency"
            ]
        );
    }
    let field = |i: usize, name: &str| {
        let fields = &reply[i].1;
        fields.iter().find(|(k, _)| k == name).unwrap().1.clone()
    };
    assert_eq!(
        (field(0, "error"), field(0, "latency")),
        (String::new(), String::new())
    );
    assert_eq!(field(2, "error"), "");
    assert!(field(2, "latency").parse::<f64>().unwrap() >= 0.0);
}

#[tokio::test]
async fn redis_credentials_in_the_url() {
    let server = RedisServer::start_with(&[
        "--user", "default", "off", // no anonymous access
        "--user", "alice", "on", ">s3cret", "~*", "&*", "+@all",
    ]);
    let port = server.port();
    let good = format!("redis://alice:s3cret@127.0.0.1:{port}");
    let b = RedisBroker::connect(&good, &unique_prefix("acl"), config())
        .await
        .unwrap();
    round_trip(&b).await;
    // Blocking commands use their own connections, with the same credentials.
    let call = submit_one(&b).await;
    assert_eq!(
        b.wait(&call.id, Some(Duration::from_millis(50)))
            .await
            .unwrap(),
        None
    );

    let bad = format!("redis://alice:n0tthis@127.0.0.1:{port}");
    let err = RedisBroker::connect(&bad, "p", config()).await.unwrap_err();
    assert!(
        !err.is_transient(),
        "bad credentials are not worth retrying: {err}"
    );
    assert!(!err.to_string().contains("n0tthis"), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

/// Blocked clients of the server (a claim parked in `XREADGROUP BLOCK`).
async fn blocked_clients(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    info_field(conn, "clients", "blocked_clients").await
}

/// Waits until some client blocks in a read on the server (a claim or a
/// wait has reached its blocking command).
async fn until_a_client_blocks(conn: &redis::aio::MultiplexedConnection) {
    eventually(
        Duration::from_secs(10),
        "a client blocked on the server",
        || {
            let mut conn = conn.clone();
            async move { blocked_clients(&mut conn).await }
        },
        |n| *n > 0,
    )
    .await;
}

/// Scripts run by the server so far.
async fn scripts_run(conn: &mut redis::aio::MultiplexedConnection) -> u64 {
    command_calls(conn, &["evalsha", "eval"]).await
}

/// How many times the server ran the `commands` so far (scripts' own
/// commands included).
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, commands: &[&str]) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    stats
        .lines()
        .filter(|l| {
            l.strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
                .is_some_and(|(name, _)| commands.contains(&name))
        })
        .filter_map(|l| {
            l.split_once("calls=")?
                .1
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

async fn info_field(
    conn: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(conn)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .strip_prefix(':')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {field} in INFO {section}"))
}

/// After a blocking read hands out fewer calls than asked for (the queue is
/// drained), the host's next claim blocks again at once: the only script it
/// runs is the admission of what it reads, not the non-blocking pass. What
/// that pass does still happens in time: a paused queue keeps its calls, a
/// delayed call is promoted when due.
#[tokio::test]
async fn redis_a_drained_claim_blocks_again_without_the_pass() {
    let server = RedisServer::start();
    let b = std::sync::Arc::new(redis_broker(&server, "drained", config()).await);
    let mut conn = raw(&server).await;
    let claimer = {
        let b = b.clone();
        tokio::spawn(async move {
            b.claim("h1", &queues(), 8, Duration::from_secs(10))
                .await
                .unwrap()
        })
    };
    until_a_client_blocks(&conn).await;
    let first = submit_one(&*b).await;
    let got = claimer.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, first.id);
    let finish = |got: Vec<Delivery>| {
        let b = b.clone();
        async move {
            let done: Vec<_> = got
                .into_iter()
                .map(|d| {
                    let env = succeeded(&d, json!(9), "h1");
                    (d, env)
                })
                .collect();
            b.complete(&done).await.unwrap();
        }
    };
    finish(got).await;

    let second = submit_one(&*b).await;
    let before = scripts_run(&mut conn).await;
    let got = b
        .claim("h1", &queues(), 8, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, second.id);
    assert_eq!(got[0].started, Some(StartOutcome::Run));
    finish(got).await;
    assert_eq!(
        scripts_run(&mut conn).await - before,
        1,
        "a drained claim runs no script: the result's script admits the call"
    );

    // Paused while drained: the call is read, not admitted, and stays queued.
    b.set_paused("default", true).await.unwrap();
    let third = submit_one(&*b).await;
    let got = b
        .claim("h1", &queues(), 8, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(got.is_empty(), "a paused queue handed out {got:?}");
    assert_eq!(state_of(&*b, &third.id).await, State::Queued);
    b.set_paused("default", false).await.unwrap();
    let got = b
        .claim("h1", &queues(), 8, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, third.id);
    finish(got).await;

    // A delayed call submitted while drained is promoted when due.
    let countdown = Duration::from_millis(300);
    let (delayed, t0) = submit_delayed(&*b, countdown).await;
    let got = eventually(
        Duration::from_secs(5),
        "the delayed call handed out",
        || async {
            b.claim("h1", &queues(), 8, Duration::from_secs(1))
                .await
                .unwrap()
        },
        |got| !got.is_empty(),
    )
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].call.id, delayed.id);
    assert!(t0.elapsed() >= countdown - Duration::from_millis(50));
}

/// What a blocking read hands out runs at once; its admission (the call
/// becomes `running` under the delivery's token) goes out with the result,
/// or by itself within milliseconds for a longer call, and a result its
/// admission did not start is refused.
#[tokio::test]
async fn redis_a_deferred_admission_goes_out_by_itself() {
    let server = RedisServer::start();
    let b = redis_broker(&server, "deferred", config()).await;
    let conn = raw(&server).await;
    let qs = queues();
    let (got, call) = tokio::join!(b.claim("h1", &qs, 8, Duration::from_secs(10)), async {
        until_a_client_blocks(&conn).await;
        submit_one(&b).await
    });
    let mut got = got.unwrap();
    assert_eq!(got.len(), 1);
    let d = got.pop().unwrap();
    assert_eq!(
        (d.call.id.as_str(), d.started),
        (call.id.as_str(), Some(StartOutcome::Run))
    );
    // The host says nothing more, yet the call becomes running.
    let running = eventually(
        Duration::from_secs(5),
        "the call running without a word from its host",
        || async { b.status(&call.id).await.unwrap().unwrap() },
        |env| env.state == State::Running,
    )
    .await;
    assert_eq!(
        (running.state, running.host.as_str()),
        (State::Running, "h1")
    );
    let env = succeeded(&d, json!(9), "h1");
    assert_eq!(b.complete(&[(d, env.clone())]).await.unwrap(), vec![true]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(env.clone()));

    // The same call submitted again after its result: a blocking read
    // hands it out before its admission (which skips it: the result is
    // there), so the host runs it, and its second result is refused.
    let (got, ()) = tokio::join!(b.claim("h1", &qs, 8, Duration::from_secs(2)), async {
        until_a_client_blocks(&conn).await;
        b.submit(std::slice::from_ref(&call), None).await.unwrap();
    });
    let mut got = got.unwrap();
    assert_eq!(got.len(), 1);
    let again = got.pop().unwrap();
    assert_eq!(
        (again.call.id.as_str(), again.started),
        (call.id.as_str(), Some(StartOutcome::Run)),
        "handed out before its admission"
    );
    let second = succeeded(&again, json!(10), "h1");
    assert_eq!(b.complete(&[(again, second)]).await.unwrap(), vec![false]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(env));

    // A queue paused while a host blocks on it: the check pipelined behind
    // the read sees the pause, the admission goes first, nothing is handed out.
    let (got, paused) = tokio::join!(b.claim("h1", &qs, 8, Duration::from_millis(500)), async {
        until_a_client_blocks(&conn).await;
        b.set_paused("default", true).await.unwrap();
        submit_one(&b).await
    });
    assert!(got.unwrap().is_empty());
    assert_eq!(state_of(&b, &paused.id).await, State::Queued);
}

/// What a blocking read hands out is admitted by its result's own script:
/// one script for the pair; an entry of the same read without a result yet
/// is admitted by itself; a pause or a revocation between the read and the
/// result refuses the result and loses nothing.
#[tokio::test]
async fn redis_a_held_admission_goes_with_its_result() {
    let server = RedisServer::start();
    // Long enough that a result sent at once finds its call's admission still
    // held, however loaded the machine; short enough to see one go alone.
    let b = redis_broker(&server, "held", config())
        .await
        .with_admission_delay(Duration::from_secs(1));
    let mut conn = raw(&server).await;
    let qs = queues();
    let read = |n: usize| {
        let (b, qs, server) = (&b, &qs, &server);
        async move {
            let conn = raw(server).await;
            let (got, calls) = tokio::join!(b.claim("h1", qs, 8, Duration::from_secs(10)), async {
                until_a_client_blocks(&conn).await;
                let calls = numbered_calls(b, n).await;
                b.submit(&calls, None).await.unwrap();
                calls
            });
            let got = got.unwrap();
            assert_eq!(got.len(), n);
            assert!(got.iter().all(|d| d.started == Some(StartOutcome::Run)));
            (got, calls)
        }
    };
    let answer = |d: &Delivery| (d.clone(), succeeded(d, json!(d.call.id), "h1"));

    // Two read at once; one result at once: one script, no admission apart.
    let (got, _) = read(2).await;
    let before = scripts_run(&mut conn).await;
    assert_eq!(b.complete(&[answer(&got[0])]).await.unwrap(), vec![true]);
    assert_eq!(scripts_run(&mut conn).await - before, 1);
    let evs = events_of(&b, &got[0].call.id).await;
    assert_eq!(kinds(&evs), ["queued", "started", "succeeded"]);
    assert_eq!((evs[1].host.as_str(), evs[2].host.as_str()), ("h1", "h1"));
    // The other is admitted by itself shortly (running, on h1), and its
    // result is published as any other.
    eventually(
        Duration::from_secs(5),
        "the rest admitted by itself",
        || state_of(&b, &got[1].call.id),
        |s| *s == State::Running,
    )
    .await;
    assert_eq!(b.complete(&[answer(&got[1])]).await.unwrap(), vec![true]);
    assert_eq!(state_of(&b, &got[1].call.id).await, State::Succeeded);

    // Paused between the read and the result: the admission puts the call
    // back in line and its result is refused; resumed, it runs again.
    let (got, calls) = read(1).await;
    b.set_paused("default", true).await.unwrap();
    assert_eq!(b.complete(&[answer(&got[0])]).await.unwrap(), vec![false]);
    assert_eq!(state_of(&b, &calls[0].id).await, State::Queued);
    assert_eq!(stats_of(&b, "default").await.depth, 1);
    b.set_paused("default", false).await.unwrap();
    let d = claim_one(&b, "h2", Duration::from_secs(2)).await;
    assert_eq!(d.call.id, calls[0].id);
    assert_eq!(b.complete(&[answer(&d)]).await.unwrap(), vec![true]);
    assert_eq!(state_of(&b, &calls[0].id).await, State::Succeeded);

    // Revoked between the read and the result: revoked it stays.
    let (got, calls) = read(1).await;
    assert!(b.revoke(&calls[0].id).await.unwrap());
    assert_eq!(b.complete(&[answer(&got[0])]).await.unwrap(), vec![false]);
    let env = b.status(&calls[0].id).await.unwrap().unwrap();
    assert_eq!(env.state, State::Revoked);
    assert_eq!(stats_of(&b, "default").await.pending, 0);
}

/// A claim that does not block checks what it reads (a call revoked while
/// queued is not run) and, on a queue without limits, hands the rest out
/// unstarted: the result's script starts each, so a call costs the claim's
/// script and its result's. A revocation after the claim still holds: one
/// while the call is queued refuses the result; one while it runs elsewhere
/// (it was submitted twice) is in the call's state, and the result's
/// script publishes it instead.
#[tokio::test]
async fn redis_a_claim_leaves_the_start_to_the_result() {
    let server = RedisServer::start();
    // Admissions wait for the results (never alone within the test).
    let b = redis_broker(&server, "claim_held", config())
        .await
        .with_admission_delay(Duration::from_secs(600));
    let mut conn = raw(&server).await;
    let answer = |d: &Delivery| (d.clone(), succeeded(d, json!(d.call.id), "h1"));
    let calls = numbered_calls(&b, 4).await;
    b.submit(&calls, None).await.unwrap();
    assert!(b.revoke(&calls[3].id).await.unwrap());
    let before = scripts_run(&mut conn).await;
    let got = b.claim("h1", &queues(), 8, Duration::ZERO).await.unwrap();
    let started: Vec<_> = got
        .iter()
        .map(|d| (d.call.id.as_str(), d.started))
        .collect();
    let run = Some(StartOutcome::Run);
    assert_eq!(
        started,
        [
            (calls[0].id.as_str(), run),
            (&calls[1].id, run),
            (&calls[2].id, run),
            (&calls[3].id, Some(StartOutcome::Revoked)),
        ]
    );
    // Handed out, not started.
    assert_eq!(state_of(&b, &calls[0].id).await, State::Queued);
    assert_eq!(b.complete(&[answer(&got[0])]).await.unwrap(), vec![true]);
    assert_eq!(scripts_run(&mut conn).await - before, 2);
    let evs = events_of(&b, &calls[0].id).await;
    assert_eq!(kinds(&evs), ["queued", "started", "succeeded"]);
    assert_eq!((evs[1].host.as_str(), evs[2].host.as_str()), ("h1", "h1"));

    // Revoked after the claim, while queued: revoked it stays.
    assert!(b.revoke(&calls[1].id).await.unwrap());
    assert_eq!(b.complete(&[answer(&got[1])]).await.unwrap(), vec![false]);
    assert_eq!(state_of(&b, &calls[1].id).await, State::Revoked);

    // Submitted again, started by h2 and revoked while it runs there (h2
    // is alive: ending the run is its business); h1's result for the first
    // entry finds the revocation and publishes it, not its own.
    b.submit(std::slice::from_ref(&calls[2]), None)
        .await
        .unwrap();
    let d2 = claim_one(&b, "h2", Duration::ZERO).await;
    assert_eq!(b.start(&d2, "h2").await.unwrap(), StartOutcome::Run);
    assert_eq!(state_of(&b, &calls[2].id).await, State::Running);
    assert!(b.revoke(&calls[2].id).await.unwrap());
    assert_eq!(state_of(&b, &calls[2].id).await, State::Running);
    assert_eq!(b.complete(&[answer(&got[2])]).await.unwrap(), vec![false]);
    let env = b.status(&calls[2].id).await.unwrap().unwrap();
    assert_eq!(
        (env.state, env.error.map(|e| e.kind)),
        (State::Revoked, Some(ErrorKind::Revoked))
    );
}

/// `submit_wait` submits and waits in one round trip (one read of the
/// wake-up, no peek first), and works on a server that lost its scripts.
#[tokio::test]
async fn redis_submit_wait_reads_once_and_survives_lost_scripts() {
    let server = RedisServer::start();
    let b = redis_broker(&server, "submit_wait", config()).await;
    let mut conn = raw(&server).await;
    let module = b.put_module(WASM).await.unwrap().0;
    for round in [
        "scripts not loaded yet",
        "scripts loaded",
        "scripts flushed",
    ] {
        if round == "scripts flushed" {
            let _: () = redis::cmd("SCRIPT")
                .arg("FLUSH")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let call = new_call(module, "[]");
        let reads = command_calls(&mut conn, &["xread"]).await;
        let (env, ()) = tokio::join!(
            b.submit_wait(&call, Some(Duration::from_secs(20))),
            answer_until(&b, &call.id, Duration::ZERO)
        );
        let env = env.unwrap().expect("a result within the timeout");
        assert_eq!(env.result, json!(call.id), "{round}");
        if round == "scripts loaded" {
            assert_eq!(
                command_calls(&mut conn, &["xread"]).await - reads,
                1,
                "one blocking read of the wake-up"
            );
        }
        let events = events_of(&b, &call.id).await;
        assert_eq!(
            kinds(&events),
            ["queued", "started", "succeeded"],
            "{round}: queued once"
        );
    }
}

/// Publishing a result adds a wake-up only for a call someone waits for
/// (`wait` marks it while it is pending; a remote call is marked when it is
/// submitted): results collected in bulk cost no wake-up, and a wait that
/// comes after the result gets it from the result key.
#[tokio::test]
async fn redis_wake_ups_are_for_waiters() {
    let server = RedisServer::start();
    let (prefix, b) = prefixed_broker(&server, "wake_ups").await;
    let conn = raw(&server).await;
    let calls = numbered_calls(&b, 2).await;
    b.submit(&calls, None).await.unwrap();
    let (alone, waited) = (&calls[0], &calls[1]);
    let marked = |id: &str| {
        let mut cmd = redis::cmd("HEXISTS");
        cmd.arg(format!("{prefix}:call:{id}")).arg("waiting");
        let mut conn = conn.clone();
        async move { cmd.query_async::<bool>(&mut conn).await.unwrap() }
    };
    let wake_ttl = |id: &str| {
        let mut cmd = redis::cmd("PTTL");
        cmd.arg(format!("{prefix}:wake:{id}"));
        let mut conn = conn.clone();
        async move { cmd.query_async::<i64>(&mut conn).await.unwrap() }
    };
    let (got, envs) = tokio::join!(b.wait(&waited.id, Some(Duration::from_secs(20))), async {
        // The results come once the waiter has marked its call.
        eventually(
            Duration::from_secs(10),
            "the waiter marking its call",
            || marked(&waited.id),
            |m| *m,
        )
        .await;
        assert!(!marked(&alone.id).await);
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < 2 {
            assert!(Instant::now() < deadline, "claimed only {got:?}");
            got.extend(b.claim("h1", &queues(), 2, Duration::ZERO).await.unwrap());
        }
        let done: Vec<_> = got
            .iter()
            .map(|d| (d.clone(), succeeded(d, json!(d.call.id), "h1")))
            .collect();
        assert_eq!(b.complete(&done).await.unwrap(), vec![true, true]);
        done.into_iter()
            .map(|(d, env)| (d.call.id, env))
            .collect::<HashMap<_, _>>()
    });
    assert_eq!(got.unwrap().as_ref(), envs.get(&waited.id));
    let ttl = wake_ttl(&waited.id).await;
    assert!(ttl > 0 && ttl <= 300_000, "wake-up TTL {ttl}");
    // Nobody waited for `alone`: no wake-up, and a wait now reads its result.
    assert_eq!(wake_ttl(&alone.id).await, -2, "no wake-up key");
    assert_eq!(
        b.wait(&alone.id, Some(Duration::from_secs(5)))
            .await
            .unwrap()
            .as_ref(),
        envs.get(&alone.id)
    );
    // That late wait marked nothing: the call is final.
    assert!(!marked(&alone.id).await);
    assert_eq!(wake_ttl(&alone.id).await, -2);
}

/// `wait_many` on results that are all there: one `MGET` per 128, no
/// per-call command; garbage at one result key is that call's own business.
#[tokio::test]
async fn redis_wait_many_reads_results_in_bulk() {
    let server = RedisServer::start();
    let (prefix, b) = prefixed_broker(&server, "wait_many").await;
    let mut conn = raw(&server).await;
    let calls = numbered_calls(&b, 300).await;
    b.submit(&calls, None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < calls.len() {
        got.extend(b.claim("h1", &queues(), 100, Duration::ZERO).await.unwrap());
    }
    let done: Vec<_> = got
        .iter()
        .map(|d| (d.clone(), succeeded(d, json!(d.call.id), "h1")))
        .collect();
    assert!(b.complete(&done).await.unwrap().iter().all(|p| *p));
    let ids: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
    let per_call = ["xread", "hget", "get", "hgetall"];
    let (gets, singles) = (
        command_calls(&mut conn, &["mget"]).await,
        command_calls(&mut conn, &per_call).await,
    );
    let envs = b
        .wait_many(&ids, Some(Duration::from_secs(5)))
        .await
        .unwrap();
    for (id, env) in ids.iter().zip(&envs) {
        assert_eq!(env.as_ref().map(|e| &e.result), Some(&json!(id)));
    }
    assert_eq!(command_calls(&mut conn, &["mget"]).await - gets, 3);
    assert_eq!(command_calls(&mut conn, &per_call).await, singles);

    // Nobody blocked on these calls, so none has a wake-up...
    let wakes: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:wake:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(wakes.is_empty(), "{wakes:?}");
    // ...and garbage at a result key is that call's error, which says which call.
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:result:{}", ids[7]))
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        b.wait_many(&ids, Some(Duration::from_secs(5))).await,
        Err(Error::Malformed(m)) if m.contains(&ids[7])
    ));
}

/// A server that knows the `complete` script but not `admit` (it lost its
/// scripts, then results of calls a non-blocking claim started loaded it):
/// the deferred admission sent with a result hits NOSCRIPT and runs again
/// after the result, which its token fence refused. The result is
/// published all the same.
#[tokio::test]
async fn redis_a_deferred_admission_the_server_did_not_know() {
    let server = RedisServer::start();
    let b = redis_broker(&server, "deferred_noscript", config()).await;
    let mut conn = raw(&server).await;
    let complete = format!(
        "{}\n{}",
        include_str!("../src/redis/common.lua"),
        include_str!("../src/redis/complete.lua")
    );
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&complete)
        .query_async(&mut conn)
        .await
        .unwrap();
    let qs = queues();
    let (got, call) = tokio::join!(b.claim("h1", &qs, 8, Duration::from_secs(10)), async {
        until_a_client_blocks(&conn).await;
        submit_one(&b).await
    });
    let d = got.unwrap().pop().expect("one delivery");
    assert_eq!(d.call.id, call.id);
    let env = succeeded(&d, json!(9), "h1");
    assert_eq!(b.complete(&[(d, env.clone())]).await.unwrap(), vec![true]);
    assert_eq!(b.status(&call.id).await.unwrap(), Some(env));
}

/// `complete` reads the pending records of a batch's entries with one
/// `XPENDING` over their range; an entry past what that read returned is
/// looked up alone, and a stale delivery in the batch is still refused.
#[tokio::test]
async fn redis_complete_reads_a_batch_pending_records_at_once() {
    let server = RedisServer::start();
    let b = redis_broker(&server, "pel", config()).await;
    let mut conn = raw(&server).await;
    let calls = numbered_calls(&b, 200).await;
    b.submit(&calls, None).await.unwrap();
    let mut got = Vec::new();
    while got.len() < calls.len() {
        let more = b
            .claim("h1", &queues(), 200, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!more.is_empty(), "only {} of 200 claimed", got.len());
        got.extend(more);
    }
    let done = |ds: &[&Delivery]| -> Vec<(Delivery, Envelope)> {
        ds.iter()
            .map(|d| ((*d).clone(), succeeded(d, json!(1), "h1")))
            .collect()
    };
    let xpending = async |conn: &mut redis::aio::MultiplexedConnection| {
        command_calls(conn, &["xpending"]).await
    };

    let before = xpending(&mut conn).await;
    let batch: Vec<&Delivery> = got[50..60].iter().collect();
    assert_eq!(b.complete(&done(&batch)).await.unwrap(), vec![true; 10]);
    assert_eq!(xpending(&mut conn).await - before, 1);

    // The first and the last: 200 pending entries in between, more than
    // one read returns for a batch of two, so the last is looked up alone.
    let before = xpending(&mut conn).await;
    let ends = [&got[0], &got[199]];
    assert_eq!(b.complete(&done(&ends)).await.unwrap(), vec![true, true]);
    assert_eq!(xpending(&mut conn).await - before, 2);

    // A copy of a delivery with another count (reclaimed meanwhile, as far
    // as it can tell) is refused; its neighbours are published. (The call
    // is started first, as one that runs a while is: a copy shares the
    // delivery's token, and answering it would settle a held admission.)
    assert_eq!(b.start(&got[100], "h1").await.unwrap(), StartOutcome::Run);
    let mut stale = got[100].clone();
    stale.deliveries += 1;
    let mixed = [&got[99], &stale, &got[101]];
    assert_eq!(
        b.complete(&done(&mixed)).await.unwrap(),
        vec![true, false, true]
    );
    assert_eq!(b.complete(&done(&[&got[100]])).await.unwrap(), vec![true]);
    for d in [&got[0], &got[55], &got[100], &got[199]] {
        let env = b.wait(&d.call.id, Some(Duration::ZERO)).await.unwrap();
        assert_eq!(env.unwrap().state, State::Succeeded);
    }
}
