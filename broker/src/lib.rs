//! wasq's broker layer: the types every part of wasq agrees on, the [`Broker`]
//! trait, and its two implementations.
//!
//! # Layout
//! - `types`: module hashes, [`Call`], [`Limits`], the result [`Envelope`], [`ErrorKind`].
//! - `broker`: the [`Broker`] trait, [`Delivery`], host records, [`BrokerConfig`].
//! - `error`: [`Error`], which says whether a failure is worth retrying.

mod broker;
mod error;
mod types;

pub use broker::{
    Broker, BrokerConfig, DEFAULT_DEAD_LETTER_CAP, DEFAULT_LEASE, DEFAULT_MAX_DELIVERIES,
    DEFAULT_RESULT_TTL, Delivery, HostInfo, HostStats, ModuleInfo, StartOutcome,
};
pub use error::{Error, Result};
pub use types::{
    Call, CallLimits, DEFAULT_BACKOFF, DEFAULT_FUEL, DEFAULT_MAX_ARGS, DEFAULT_MAX_BACKOFF,
    DEFAULT_MAX_LOGS, DEFAULT_MAX_MODULE, DEFAULT_MAX_OUTPUT, DEFAULT_MAX_STDIO, DEFAULT_MEMORY,
    DEFAULT_QUEUE, DEFAULT_TIMEOUT, Envelope, ErrorKind, Limits, LogLine, ModuleHash,
    ParseHashError, RetryPolicy, State, TaskError, is_valid_queue_name, is_valid_task_name,
    new_call_id, now_ms,
};
