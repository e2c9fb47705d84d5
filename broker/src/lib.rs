//! wasq's broker layer: the types every part of wasq agrees on, the [`Broker`]
//! trait, its two implementations and the client API on top.
//!
//! # Layout
//! - `types`: module hashes, [`Call`], [`Limits`], the result [`Envelope`], [`ErrorKind`].
//! - `broker`: the [`Broker`] trait, [`Delivery`], host records, [`BrokerConfig`].
//! - `error`: [`Error`], which says whether a failure is worth retrying.
//! - `ops`: what operators see and control: [`Event`], [`QueueStats`],
//!   [`Rate`] limits and their [`RateScope`].
//! - `redis`: [`RedisBroker`], the production broker (its docs have the key
//!   layout and list its files, one per concept), with its Lua scripts in
//!   `redis/*.lua`.
//! - `tls`: [`RedisTls`], the CA and client certificate of a `rediss://`
//!   connection.
//! - `local`: [`LocalBroker`], the same semantics in process memory, for the
//!   demo, embedding and tests (its docs list its files, one per concept,
//!   named as in `redis/`).
//! - `validate`: the checks both brokers run on what they are given.
//! - `client`: [`Client`] (async) and [`BlockingClient`] (a call reads like a
//!   function call), [`ModuleRef`], [`CallError`].
//! - `direct`: [`DirectClient`], calls straight to a `wasq serve` host over
//!   HTTP, no broker.
//! - `testing` (feature `test-util`): [`testing::RedisServer`], a throwaway
//!   `redis-server` per test, and [`testing::eventually`], waiting with a
//!   deadline.

mod broker;
mod client;
mod direct;
mod error;
mod local;
mod ops;
mod redis;
#[cfg(feature = "test-util")]
pub mod testing;
mod tls;
mod types;
mod validate;

pub use broker::{
    Broker, BrokerConfig, DEFAULT_DEAD_LETTER_CAP, DEFAULT_LEASE, DEFAULT_MAX_DELIVERIES,
    DEFAULT_RESULT_TTL, DeadLetter, Delivery, HostInfo, HostStats, ModuleInfo, StartOutcome,
};
#[doc(hidden)]
pub use client::{__doc_adder_host, __doc_adder_host_thread};
pub use client::{BlockingClient, CallBuilder, CallError, Client, ModuleRef, encode_args};
pub use direct::{DirectClient, MAX_ANSWER};
pub use error::{Error, Result};
pub use local::LocalBroker;
pub use ops::{
    EVENT_KINDS, EVENTS_CAP, Event, EventLevel, LATENCY_SAMPLES, MAX_EVENTS_PER_READ,
    ParseRateError, QueueStats, Rate, RateScope, STATS_WINDOW_MS, is_valid_entry_id,
};
pub use redis::{RedisBroker, redact_url};
pub use tls::{MAX_TLS_FILE, RedisTls, install_crypto_provider};
pub use types::{
    Call, CallLimits, DEFAULT_BACKOFF, DEFAULT_FUEL, DEFAULT_MAX_ARGS, DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_LOGS, DEFAULT_MAX_MODULE, DEFAULT_MAX_OUTPUT, DEFAULT_MAX_STDIO, DEFAULT_MEMORY,
    DEFAULT_QUEUE, DEFAULT_TIMEOUT, Envelope, ErrorKind, Limits, LogLine, ModuleHash,
    ParseHashError, RetryPolicy, State, TaskError, is_valid_call_id, is_valid_module_name,
    is_valid_queue_name, is_valid_task_name, new_call_id, now_ms,
};
