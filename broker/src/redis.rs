//! [`RedisBroker`]: the production broker, on Redis 7.0 or newer.
//!
//! The key layout, how a call moves through the keys, pauses, rate limits,
//! statistics and what each Lua script does are documented in the
//! repository's `docs/redis.md`: read it before changing a key or a script
//! (a key or a script's contract is shared by every host and client of a
//! deployment, see `docs/compatibility.md`).
//!
//! In short: every key starts with the prefix `P` given to
//! [`RedisBroker::connect`]; a queue is a stream with one consumer group of
//! hosts plus a delayed set, under the hash tag `{q:NAME}`; per call there is
//! a state hash `P:call:ID`, a result `P:result:ID` and, for waited calls, a
//! wake-up stream `P:wake:ID`. Every transition of a call is one Lua script
//! that checks the delivery still holds its entry and the call's token.
//!
//! # Layout
//! Each file holds one concept; the [`Broker`] impl below maps every
//! operation onto the file that does it.
//! - `connect`: connecting, the server check, how Redis errors map to
//!   [`crate::Error`].
//! - `keys`: key names and how long keys live.
//! - `scripts`: the Lua scripts and the pipeline that runs commands (and
//!   reloads scripts a restarted server lost).
//! - `pool`: connections of their own for blocking reads.
//! - `reply`: reading replies without trusting their shape.
//! - `entry`: queued stream entries: the call in one, or why it is garbage.
//! - `modules`: the module store and module names.
//! - `calls`: submitting and revoking calls.
//! - `claim`: handing out calls: the claim pass, blocking reads,
//!   reclaiming, burying entries that cannot run.
//! - `admission`: pause and rate-limit checks of calls a blocking read
//!   handed out, and holding that admission back to go with their results.
//! - `delivery`: start, complete, retry, release.
//! - `wait`: a call's status and waiting for results.
//! - `hosts`: host records, heartbeats, dead hosts.
//! - `admin`: dead letters, events, queue stats, purge, pause, rate limits.

mod admin;
mod admission;
mod calls;
mod claim;
mod connect;
mod delivery;
mod entry;
mod hosts;
mod keys;
mod modules;
mod pool;
mod reply;
mod scripts;
mod wait;

pub use connect::redact_url;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;

use crate::broker::{
    Broker, BrokerConfig, DeadLetter, Delivery, HostInfo, HostStats, ModuleInfo, StartOutcome,
};
use crate::error::Result;
use crate::ops::{Event, EventLevel, QueueStats, Rate, RateScope};
use crate::types::{Call, Envelope, ModuleHash};

use self::admission::{DeferredMap, Limited};
use self::claim::Drained;
use self::keys::Keys;
use self::pool::BlockingPool;

/// The production broker: Redis Streams with one consumer group, Lua scripts
/// for every state change (see the module docs for the key layout).
///
/// Cheap to share behind an `Arc`; all methods take `&self`. Normal commands
/// go through one auto-reconnecting multiplexed connection; blocking commands
/// get connections of their own.
///
/// ```no_run
/// # async fn demo() -> wasq_broker::Result<()> {
/// use wasq_broker::{Broker, BrokerConfig, RedisBroker};
///
/// let broker = RedisBroker::connect("redis://127.0.0.1:6379", "wasq", BrokerConfig::default()).await?;
/// let (hash, _new) = broker.put_module(b"\0asm\x01\0\0\0").await?;
/// broker.tag("empty", Some("1.0"), &hash).await?;
/// # Ok(())
/// # }
/// ```
pub struct RedisBroker {
    conn: ConnectionManager,
    blocking: BlockingPool,
    keys: Keys,
    config: BrokerConfig,
    /// The URL without its password, for error messages.
    url: String,
    /// Hosts registered through this broker, so heartbeats can rewrite their
    /// record even after it expired.
    registered: Mutex<HashMap<String, HostInfo>>,
    /// When this broker last reclaimed idle entries and collected consumers.
    last_reclaim: Mutex<Option<Instant>>,
    last_gc: Mutex<Option<Instant>>,
    /// When a heartbeat last looked for hosts whose lease lapsed.
    last_reap: Mutex<Option<Instant>>,
    /// The rate-limited modules and queues, as last read from `P:rates`.
    limits: Mutex<Limited>,
    /// Admissions of calls handed out unstarted, not sent yet, by delivery token.
    deferred: DeferredMap,
    /// How long those wait for a command about their calls ([`DEFER_ADMIT`](admission::DEFER_ADMIT)).
    admission_delay: Duration,
    /// Set when a blocking read drained its queues: the next claim of that
    /// host may block again at once, without the non-blocking pass.
    drained: Mutex<Option<Drained>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .field("prefix", &self.keys.prefix)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Locks `m`, even if a thread panicked holding it (nothing it guards is
/// left half-changed).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The map of the broker: each operation is done in the file of its concept.
impl Broker for RedisBroker {
    async fn put_module(&self, bytes: &[u8]) -> Result<(ModuleHash, bool)> {
        self.store_module(bytes).await
    }

    async fn has_module(&self, hash: &ModuleHash) -> Result<bool> {
        self.module_exists(hash).await
    }

    async fn get_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        self.fetch_module(hash).await
    }

    async fn tag(&self, name: &str, version: Option<&str>, hash: &ModuleHash) -> Result<()> {
        self.tag_module(name, version, hash).await
    }

    async fn resolve(&self, name: &str) -> Result<Option<ModuleHash>> {
        self.resolve_module(name).await
    }

    async fn list_modules(&self) -> Result<Vec<ModuleInfo>> {
        self.scan_modules().await
    }

    async fn submit(&self, calls: &[Call], countdown: Option<Duration>) -> Result<()> {
        self.submit_calls(calls, countdown).await
    }

    async fn submit_wait(
        &self,
        call: &Call,
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>> {
        self.submit_and_wait(call, timeout).await
    }

    async fn wait_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<Envelope>>> {
        self.wait_for_many(ids, timeout).await
    }

    async fn status(&self, id: &str) -> Result<Option<Envelope>> {
        self.read_status(id).await
    }

    async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Option<Envelope>> {
        self.wait_for(id, timeout).await
    }

    async fn revoke(&self, id: &str) -> Result<bool> {
        self.revoke_call(id).await
    }

    async fn is_revoked(&self, id: &str) -> Result<bool> {
        self.check_revoked(id).await
    }

    async fn revoked_many(&self, ids: &[String]) -> Result<Vec<bool>> {
        self.check_revoked_many(ids).await
    }

    async fn register_host(&self, info: &HostInfo) -> Result<()> {
        self.add_host(info).await
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> Result<Vec<String>> {
        self.record_heartbeat(host_id, stats, running).await
    }

    async fn deregister_host(&self, host_id: &str) -> Result<()> {
        self.remove_host(host_id).await
    }

    async fn claim(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        self.claim_calls(host_id, queues, max, block).await
    }

    async fn start(&self, delivery: &Delivery, host_id: &str) -> Result<StartOutcome> {
        self.start_delivery(delivery, host_id).await
    }

    async fn complete(&self, done: &[(Delivery, Envelope)]) -> Result<Vec<bool>> {
        self.publish_results(done).await
    }

    async fn retry(&self, delivery: &Delivery, last: &Envelope, delay: Duration) -> Result<bool> {
        self.schedule_retry(delivery, last, delay).await
    }

    async fn release(&self, delivery: &Delivery) -> Result<bool> {
        self.hand_back(delivery).await
    }

    async fn hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        self.list_hosts().await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        self.read_dead_letters(limit).await
    }

    async fn events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Event>> {
        self.read_events(after, count, block).await
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.read_queue_stats().await
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        self.purge(queue).await
    }

    async fn set_event_level(&self, level: EventLevel) -> Result<()> {
        self.write_event_level(level).await
    }

    async fn event_level(&self) -> Result<EventLevel> {
        self.read_event_level().await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        self.write_paused(queue, paused).await
    }

    async fn dead_retry(&self, entry_id: &str) -> Result<bool> {
        self.requeue_dead_letter(entry_id).await
    }

    async fn dead_drop(&self, entry_id: &str) -> Result<bool> {
        self.drop_dead_letter(entry_id).await
    }

    async fn set_rate_limit(&self, scope: &RateScope, rate: Option<Rate>) -> Result<()> {
        self.write_rate_limit(scope, rate).await
    }

    async fn rate_limits(&self) -> Result<Vec<(RateScope, Rate)>> {
        self.read_rate_limits().await
    }
}
