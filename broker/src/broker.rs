//! The `Broker` trait: everything hosts and clients need from a queue backend.
//!
//! Two implementations: [`crate::RedisBroker`] (production, many machines) and
//! [`crate::LocalBroker`] (in-process, for the demo and unit tests). One
//! conformance suite (`broker/tests/conformance.rs`) runs against both.
//!
//! The lifecycle of a call:
//!
//! ```text
//! submit ──► queued ──claim──► (start) running ──complete──► succeeded | failed
//!   │ countdown               │        │    └──retry──► retrying ──(delay)──► queued
//!   └──► delayed set ──due──► │        └──release──► queued (graceful shutdown)
//!                             └── host lease expires ──► reclaimed by a live host
//!                                  (delivery limit reached ──► failed `lost`, dead-lettered)
//! ```
//!
//! Every claim hands out a [`Delivery`] with a fresh token, and starts it in
//! the same step ([`Delivery::started`]). `start`, `complete`, `retry` and
//! `release` check the token atomically, so a host that lost its lease (and
//! whose call was given to another host) can no longer publish.

use std::future::Future;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Result;
use crate::ops::{Event, EventLevel, QueueStats, Rate, RateScope};
use crate::types::{Call, Envelope, ModuleHash, TaskError};

/// One claim of one call by one host.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The call, as submitted (attempt already set for this attempt).
    pub call: Call,
    /// The queue it came from.
    pub queue: String,
    /// Backend-specific id of the queue entry (a stream entry id in Redis).
    pub entry_id: String,
    /// The fencing token of this delivery; stale tokens cannot publish.
    pub token: String,
    /// How many times this entry has been delivered, from 1. Above the
    /// broker's delivery limit, a call is failed as `lost` instead.
    pub deliveries: u32,
    /// What the claim did about starting it. Claims start what they hand
    /// out, in the same step, so a host needs no [`Broker::start`] round
    /// trip: `Some(Run)` means the call is `running` under this delivery's
    /// token; `Some(Revoked)` or `Some(Skip)` that it must not run (see
    /// [`StartOutcome`]; the entry is acknowledged and any `revoked`
    /// envelope published). `None` when the claim could not start it (a
    /// call it could not read): call [`Broker::start`] before running it.
    ///
    /// A broker may hand out `Some(Run)` a moment before the start is
    /// recorded: the Redis broker records the start of what a blocking read
    /// returned with the first command about the delivery (usually in the
    /// script that publishes its result), or alone after 2 ms. Should the start then find the call
    /// revoked, finished or over a limit, the result is refused like that of
    /// any stale delivery, and the call is handled as if never handed out.
    pub started: Option<StartOutcome>,
}

/// A fresh fencing token (see [`Delivery::token`]): 128 random bits.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What [`Broker::start`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartOutcome {
    /// Run it; the call is now `running` under this delivery's token.
    Run,
    /// The call was revoked; the broker already recorded the `revoked` envelope
    /// and acknowledged the entry. Do not run it.
    Revoked,
    /// Do not run it. Either the call already has a final result (a duplicate
    /// delivery; the entry is acknowledged), or this delivery is stale: the
    /// entry was reclaimed by another host after this host's lease lapsed, and
    /// is left alone because it is no longer this host's to acknowledge.
    Skip,
}

/// A queue entry that was taken out of circulation: garbage that is not a
/// call, or a call whose every delivery's host died (failed as `lost`).
/// Kept in a capped dead-letter stream for an operator to inspect, retry
/// ([`Broker::dead_retry`]) or drop ([`Broker::dead_drop`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream: what `dead_retry` and `dead_drop` take.
    #[serde(default)]
    pub entry_id: String,
    /// The call id, if the entry had a recognisable one; empty otherwise.
    pub id: String,
    /// The queue the entry was in.
    pub queue: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The entry's call JSON as found (garbage is truncated to a few KiB).
    pub call: String,
    /// How many times it had been delivered.
    pub deliveries: u32,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub ts_ms: u64,
    /// The error its call was failed with when it was dead-lettered (`lost`,
    /// or `bad_input` for garbage with a recognisable id); `None` if no
    /// envelope was published (garbage without an id) or it is not known.
    #[serde(default)]
    pub error: Option<TaskError>,
}

/// What a host announces about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Unique id of this host process (`name/pid` plus a random suffix).
    pub id: String,
    /// Human name, usually the hostname.
    pub name: String,
    /// wasq version.
    pub version: String,
    /// Queues it consumes.
    pub queues: Vec<String>,
    /// Concurrent calls it runs at most.
    pub concurrency: usize,
    /// Start time, ms since the Unix epoch.
    pub started_ms: u64,
    /// The most a call may ask for on this host, so that clients refuse a
    /// call no host would run before queueing it. `None` from a host that
    /// does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<crate::Limits>,
}

impl HostInfo {
    /// What is known of a host whose registration is missing or unreadable:
    /// its id.
    pub fn unknown(id: &str) -> Self {
        Self {
            id: id.to_string(),
            name: id.to_string(),
            version: String::new(),
            queues: Vec::new(),
            concurrency: 0,
            started_ms: 0,
            limits: None,
        }
    }
}

/// A live host's counters, reported with each heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    /// Calls running now.
    pub in_flight: usize,
    /// Calls finished (any final state).
    pub done: u64,
    /// Calls that ended failed.
    pub failed: u64,
    /// Fuel used by all calls.
    pub fuel_used: u64,
    /// Last heartbeat, ms since the Unix epoch.
    pub heartbeat_ms: u64,
}

/// A stored module and the names that point at it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// Its hash.
    pub hash: ModuleHash,
    /// Its size in bytes.
    pub size: u64,
    /// `name@version` tags pointing at it (`name` alone for the latest).
    pub names: Vec<String>,
}

/// Tunables shared by both brokers.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// How long a host's lease lasts without a heartbeat. Default 10 s.
    pub lease: Duration,
    /// Deliveries of one call before it is failed as `lost`. Default 5.
    pub max_deliveries: u32,
    /// How long final results are kept; zero keeps them forever. Default one day.
    pub result_ttl: Duration,
    /// Largest module accepted. Default [`crate::DEFAULT_MAX_MODULE`].
    pub max_module: u64,
    /// Entries kept in the dead-letter stream (approximate cap). Default 10 000.
    pub dead_letter_cap: u64,
    /// Largest args (bytes of their JSON) a submitted call may carry: the
    /// submit is refused, before anything is queued, rather than the call
    /// failing on a host. Hosts still check their own `--max-args` when they
    /// run it. Default [`crate::DEFAULT_MAX_ARGS`].
    pub max_args: u64,
}

/// Default host lease: 10 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Default delivery limit: 5.
pub const DEFAULT_MAX_DELIVERIES: u32 = 5;
/// Default result TTL: one day.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default dead-letter cap: 10 000 entries.
pub const DEFAULT_DEAD_LETTER_CAP: u64 = 10_000;

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            result_ttl: DEFAULT_RESULT_TTL,
            max_module: crate::DEFAULT_MAX_MODULE,
            dead_letter_cap: DEFAULT_DEAD_LETTER_CAP,
            max_args: crate::DEFAULT_MAX_ARGS,
        }
    }
}

/// A queue backend. All methods are cancel-safe in the sense that dropping a
/// future never loses a call: at worst it is delivered again.
pub trait Broker: Send + Sync + 'static {
    // ---- modules -------------------------------------------------------

    /// Stores module bytes under their sha256 (write-once). Returns the hash and
    /// whether they were newly stored.
    ///
    /// # Errors
    /// [`crate::Error::ModuleTooLarge`] past the size limit; backend errors.
    fn put_module(&self, bytes: &[u8]) -> impl Future<Output = Result<(ModuleHash, bool)>> + Send;

    /// Whether a module is stored (so clients skip re-uploading).
    fn has_module(&self, hash: &ModuleHash) -> impl Future<Output = Result<bool>> + Send;

    /// The stored bytes, unverified: callers must check the hash.
    ///
    /// # Errors
    /// [`crate::Error::ModuleTooLarge`] if the stored value is over this
    /// broker's `max_module`, checked before any byte of it moves.
    fn get_module(&self, hash: &ModuleHash)
    -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Points `name` (and `name@version` if given) at a stored module.
    ///
    /// # Errors
    /// [`crate::Error::ModuleNotFound`] if the hash is not stored;
    /// [`crate::Error::InvalidName`] for names outside `[A-Za-z0-9_.-]{1,128}`.
    fn tag(
        &self,
        name: &str,
        version: Option<&str>,
        hash: &ModuleHash,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Resolves `name` or `name@version` to a hash; `None` if unknown.
    fn resolve(&self, name: &str) -> impl Future<Output = Result<Option<ModuleHash>>> + Send;

    /// Every stored module with its names.
    fn list_modules(&self) -> impl Future<Output = Result<Vec<ModuleInfo>>> + Send;

    // ---- clients -------------------------------------------------------

    /// Queues calls (on each call's `queue`) in one round trip. With
    /// `countdown`, they wait in the delayed set first. Each gets state
    /// `queued` immediately, so `status` knows the id.
    ///
    /// # Errors
    /// [`crate::Error::InvalidCall`] (args not a JSON array, a bad task name
    /// or call id) or [`crate::Error::InvalidName`] (queue) before anything
    /// is queued; backend errors.
    fn submit(
        &self,
        calls: &[Call],
        countdown: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Submits one call (as [`Broker::submit`], without countdown) and waits
    /// for its final envelope (as [`Broker::wait`]): a remote call. A
    /// backend may need fewer round trips than the two steps; Redis needs
    /// one for a result that comes within 100 ms. `None` when `timeout`
    /// passes first.
    ///
    /// # Errors
    /// As [`Broker::submit`] and [`Broker::wait`].
    fn submit_wait(
        &self,
        call: &Call,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<Envelope>>> + Send {
        async move {
            self.submit(std::slice::from_ref(call), None).await?;
            self.wait(&call.id, timeout).await
        }
    }

    /// The current envelope of a call: final, or a pending one with state
    /// `queued`/`running`/`retrying`. `None` means the id is unknown (never
    /// submitted, or its result expired).
    fn status(&self, id: &str) -> impl Future<Output = Result<Option<Envelope>>> + Send;

    /// Waits for a final envelope, blocking on a push from the host (never
    /// polling). `None` when `timeout` passes first. Any number of waiters
    /// may wait on the same id; all wake.
    ///
    /// # Errors
    /// [`crate::Error::UnknownCall`] if the id is unknown.
    fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<Envelope>>> + Send;

    /// Waits for several calls, all within one `timeout`: per id, in order,
    /// its final envelope, or `None` if it was not final in time. The same
    /// as [`Broker::wait`] on each id in turn, which is what the default
    /// does; Redis looks up many stored results per round trip and blocks
    /// only on the oldest call not done yet, so a client collecting a batch
    /// of results wakes once for many.
    ///
    /// # Errors
    /// [`crate::Error::UnknownCall`] for any unknown id; backend errors.
    fn wait_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Option<Envelope>>>> + Send {
        async move {
            let deadline = timeout.map(|t| Instant::now() + t);
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                out.push(self.wait(id, left).await?);
            }
            Ok(out)
        }
    }

    /// Revokes a call: if queued (or delayed, or waiting to retry) it never
    /// starts: its `revoked` envelope is published at once, so waiters wake,
    /// and a host that claims it later gets [`StartOutcome::Revoked`] (one
    /// that took it just before, its start not recorded yet, may run it for
    /// nothing: its result is refused). If running, the host running it notices (see [`Broker::is_revoked`]) and
    /// ends it as `revoked`; if its host has stopped heartbeating (its entry
    /// idled past this broker's lease), it is revoked at once too, and the
    /// host that reclaims it skips it. The revocation is durable (it
    /// outlives hosts, for the result TTL). Returns false if the call is
    /// unknown or already final.
    fn revoke(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Whether a call has been revoked (hosts check this while running).
    fn is_revoked(&self, id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// [`Broker::is_revoked`] for many calls at once, in order: a host checks
    /// all its running calls in one round trip, so the check costs the same
    /// however many calls run.
    fn revoked_many(&self, ids: &[String]) -> impl Future<Output = Result<Vec<bool>>> + Send {
        async move {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.push(self.is_revoked(id).await?);
            }
            Ok(out)
        }
    }

    // ---- hosts ---------------------------------------------------------

    /// Announces a host and takes its lease.
    fn register_host(&self, info: &HostInfo) -> impl Future<Output = Result<()>> + Send;

    /// Renews the host's lease, publishes its stats, and keeps the entries it
    /// is running fresh so no one reclaims them. `running` must hold every
    /// delivery the host has claimed and not yet completed, retried or
    /// released, started or not: an entry left out for longer than the lease
    /// is reclaimed by another host. Send it well within the lease (a third).
    /// Deliveries that were already reclaimed by someone else are left alone
    /// (and logged): a heartbeat never takes a call back.
    ///
    /// Returns the tokens of those reclaimed deliveries: another host owns
    /// their calls now, so this one should stop running them (their results
    /// would be refused anyway). A delivery whose entry is no longer pending
    /// at all (its result was published) is not reported.
    fn heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Removes a host's lease (on clean shutdown).
    fn deregister_host(&self, host_id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Claims up to `max` calls from `queues`, waiting up to `block` for one to
    /// arrive. On the way it promotes due delayed calls and reclaims calls of
    /// hosts whose lease expired (failing as `lost`, and dead-lettering, any
    /// past the delivery limit). Garbage entries are dead-lettered and logged.
    /// Earlier queues in `queues` are served first. Returns early (possibly
    /// empty) as soon as it has something; `block` zero never waits.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`] for a bad queue name; backend errors.
    fn claim(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>>> + Send;

    /// Marks a claimed call running (records host, attempt and this
    /// delivery's token), unless it was revoked or already finished, or the
    /// delivery is stale. `complete` and `retry` only accept the token
    /// recorded here. Claims do this already for what they hand out (see
    /// [`Delivery::started`]); call it before running a delivery whose
    /// `started` is `None`. Safe to repeat: for a started delivery it only
    /// checks again (revoked since, or stale) and records nothing new.
    fn start(
        &self,
        delivery: &Delivery,
        host_id: &str,
    ) -> impl Future<Output = Result<StartOutcome>> + Send;

    /// Publishes final envelopes and acknowledges their entries, atomically per
    /// call and pipelined across calls. The first final result wins; a stale
    /// token publishes nothing. Returns, per envelope, whether it was accepted.
    ///
    /// Idempotent: completing the same delivery again (say, after a
    /// connection error hid the first answer) returns true again without
    /// changing the stored result. A delivery whose entry was reclaimed by
    /// another host, or whose token `start` did not record, is refused and
    /// its entry left to its owner.
    ///
    /// # Errors
    /// [`crate::Error::InvalidCall`] if an envelope is not final or belongs to
    /// another call; backend errors. A batch may be partly applied when a
    /// connection error is returned: repeat it.
    fn complete(
        &self,
        done: &[(Delivery, Envelope)],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send;

    /// Records a failed attempt (state `retrying`, the envelope kept as the
    /// last error) and schedules attempt + 1 after `delay` in the delayed set.
    /// Token-checked like `complete`; false if the delivery is stale.
    fn retry(
        &self,
        delivery: &Delivery,
        last: &Envelope,
        delay: Duration,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Hands a claimed call back to its queue at once (graceful shutdown), as
    /// a new entry with the same attempt and a fresh delivery count. Works for
    /// deliveries that were never started. False if the delivery is stale or
    /// the call already has a final result.
    fn release(&self, delivery: &Delivery) -> impl Future<Output = Result<bool>> + Send;

    /// Hosts whose lease is live, with their latest stats.
    fn hosts(&self) -> impl Future<Output = Result<Vec<(HostInfo, HostStats)>>> + Send;

    /// The newest `limit` dead letters, newest first.
    fn dead_letters(&self, limit: usize) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send;

    // ---- operators -----------------------------------------------------

    /// Entries of the events stream (see [`crate::EVENT_KINDS`]), oldest
    /// first: those after stream id `after` (`"0"` for the oldest kept), or
    /// with `after` = `None` the newest `count`. At most `count` (capped at
    /// [`crate::MAX_EVENTS_PER_READ`]). When there are none and `block` is
    /// given, waits up to `block` for the next ones (never polling).
    ///
    /// The stream is capped at about [`crate::EVENTS_CAP`] entries, so a
    /// reader that falls far behind misses events; ids tell (they are
    /// increasing, and the first one read is newer than `after`).
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] if `after` is not an entry id; backend errors.
    fn events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Event>>> + Send;

    /// Which events the deployment records from now on (see
    /// [`EventLevel`]), for every client and host at once: each transition
    /// looks the level up as it happens, no restart needed.
    ///
    /// # Errors
    /// Backend errors.
    fn set_event_level(&self, level: EventLevel) -> impl Future<Output = Result<()>> + Send;

    /// The event level in force ([`EventLevel::All`] until one is set).
    ///
    /// # Errors
    /// [`crate::Error::Malformed`] if the stored level is garbage (which
    /// the broker treats as [`EventLevel::All`] meanwhile); backend errors.
    fn event_level(&self) -> impl Future<Output = Result<EventLevel>> + Send;

    /// Every known queue (submitted to, consumed by a live host, paused or
    /// rate-limited) with its counts, limit and last-minute throughput and
    /// latency, sorted by name. Bounded work per queue.
    fn queue_stats(&self) -> impl Future<Output = Result<Vec<QueueStats>>> + Send;

    /// Drops every call waiting in `queue` (unclaimed or delayed), publishing
    /// a final `revoked` envelope ("purged") for each so waiters wake, and
    /// marking it revoked so a copy elsewhere never starts. Claimed calls
    /// (running, or held by a host) are never touched. Returns how many
    /// entries were dropped. Calls submitted while it runs may survive it:
    /// pause the queue first for a clean cut.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`] for a bad queue name; backend errors.
    fn purge_queue(&self, queue: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Pauses or resumes a queue. Hosts do not claim from a paused queue
    /// (calls they claimed before run to the end); submitting still works,
    /// the calls wait. Takes effect at each host's next claim.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`] for a bad queue name; backend errors.
    fn set_paused(&self, queue: &str, paused: bool) -> impl Future<Output = Result<()>> + Send;

    /// Puts a dead-lettered call back in its queue, as a fresh submission:
    /// same call id (so whoever holds the id gets the new result; its `lost`
    /// envelope is discarded), attempt 1, delivery count 1, submit time now.
    /// The dead letter is removed. False if there is no such dead letter, or
    /// if its call has meanwhile succeeded (the success stands and the dead
    /// letter stays for `dead_drop`).
    ///
    /// # Errors
    /// [`crate::Error::InvalidCall`] if the dead letter holds no valid call
    /// (garbage: drop it instead); [`crate::Error::InvalidArgument`] for a
    /// malformed entry id; backend errors.
    fn dead_retry(&self, entry_id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes a dead letter. False if there is no such dead letter.
    ///
    /// # Errors
    /// [`crate::Error::InvalidArgument`] for a malformed entry id; backend errors.
    fn dead_drop(&self, entry_id: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Sets (`Some`) or removes (`None`) a global rate limit. A queue limit
    /// caps how many calls all hosts together claim from the queue; a module
    /// limit caps how many calls of the module start, in any queue. Calls
    /// over a module's limit wait in their queue's delayed set until its
    /// bucket refills, so they never hold up other modules' calls behind
    /// them (no head-of-line blocking). Other brokers' hosts see a new module
    /// limit within about a second.
    ///
    /// # Errors
    /// [`crate::Error::InvalidName`] for a bad queue name,
    /// [`crate::Error::InvalidArgument`] for a rate that is not positive and
    /// finite or a zero burst; backend errors.
    fn set_rate_limit(
        &self,
        scope: &RateScope,
        rate: Option<Rate>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Every rate limit set, sorted by scope.
    fn rate_limits(&self) -> impl Future<Output = Result<Vec<(RateScope, Rate)>>> + Send;
}

/// A shared broker is a broker: hosts and clients in one process can hold
/// one `Arc<RedisBroker>` (or `Arc<LocalBroker>`) between them.
impl<B: Broker> Broker for std::sync::Arc<B> {
    fn put_module(&self, bytes: &[u8]) -> impl Future<Output = Result<(ModuleHash, bool)>> + Send {
        (**self).put_module(bytes)
    }
    fn has_module(&self, hash: &ModuleHash) -> impl Future<Output = Result<bool>> + Send {
        (**self).has_module(hash)
    }
    fn get_module(
        &self,
        hash: &ModuleHash,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send {
        (**self).get_module(hash)
    }
    fn tag(
        &self,
        name: &str,
        version: Option<&str>,
        hash: &ModuleHash,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).tag(name, version, hash)
    }
    fn resolve(&self, name: &str) -> impl Future<Output = Result<Option<ModuleHash>>> + Send {
        (**self).resolve(name)
    }
    fn list_modules(&self) -> impl Future<Output = Result<Vec<ModuleInfo>>> + Send {
        (**self).list_modules()
    }
    fn submit(
        &self,
        calls: &[Call],
        countdown: Option<Duration>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).submit(calls, countdown)
    }
    fn submit_wait(
        &self,
        call: &Call,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<Envelope>>> + Send {
        (**self).submit_wait(call, timeout)
    }
    fn status(&self, id: &str) -> impl Future<Output = Result<Option<Envelope>>> + Send {
        (**self).status(id)
    }
    fn wait(
        &self,
        id: &str,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Option<Envelope>>> + Send {
        (**self).wait(id, timeout)
    }
    fn wait_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Option<Envelope>>>> + Send {
        (**self).wait_many(ids, timeout)
    }
    fn revoke(&self, id: &str) -> impl Future<Output = Result<bool>> + Send {
        (**self).revoke(id)
    }
    fn is_revoked(&self, id: &str) -> impl Future<Output = Result<bool>> + Send {
        (**self).is_revoked(id)
    }
    fn revoked_many(&self, ids: &[String]) -> impl Future<Output = Result<Vec<bool>>> + Send {
        (**self).revoked_many(ids)
    }
    fn register_host(&self, info: &HostInfo) -> impl Future<Output = Result<()>> + Send {
        (**self).register_host(info)
    }
    fn heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> impl Future<Output = Result<Vec<String>>> + Send {
        (**self).heartbeat(host_id, stats, running)
    }
    fn deregister_host(&self, host_id: &str) -> impl Future<Output = Result<()>> + Send {
        (**self).deregister_host(host_id)
    }
    fn claim(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> impl Future<Output = Result<Vec<Delivery>>> + Send {
        (**self).claim(host_id, queues, max, block)
    }
    fn start(
        &self,
        delivery: &Delivery,
        host_id: &str,
    ) -> impl Future<Output = Result<StartOutcome>> + Send {
        (**self).start(delivery, host_id)
    }
    fn complete(
        &self,
        done: &[(Delivery, Envelope)],
    ) -> impl Future<Output = Result<Vec<bool>>> + Send {
        (**self).complete(done)
    }
    fn retry(
        &self,
        delivery: &Delivery,
        last: &Envelope,
        delay: Duration,
    ) -> impl Future<Output = Result<bool>> + Send {
        (**self).retry(delivery, last, delay)
    }
    fn release(&self, delivery: &Delivery) -> impl Future<Output = Result<bool>> + Send {
        (**self).release(delivery)
    }
    fn hosts(&self) -> impl Future<Output = Result<Vec<(HostInfo, HostStats)>>> + Send {
        (**self).hosts()
    }
    fn dead_letters(&self, limit: usize) -> impl Future<Output = Result<Vec<DeadLetter>>> + Send {
        (**self).dead_letters(limit)
    }
    fn events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> impl Future<Output = Result<Vec<Event>>> + Send {
        (**self).events(after, count, block)
    }
    fn set_event_level(&self, level: EventLevel) -> impl Future<Output = Result<()>> + Send {
        (**self).set_event_level(level)
    }
    fn event_level(&self) -> impl Future<Output = Result<EventLevel>> + Send {
        (**self).event_level()
    }
    fn queue_stats(&self) -> impl Future<Output = Result<Vec<QueueStats>>> + Send {
        (**self).queue_stats()
    }
    fn purge_queue(&self, queue: &str) -> impl Future<Output = Result<u64>> + Send {
        (**self).purge_queue(queue)
    }
    fn set_paused(&self, queue: &str, paused: bool) -> impl Future<Output = Result<()>> + Send {
        (**self).set_paused(queue, paused)
    }
    fn dead_retry(&self, entry_id: &str) -> impl Future<Output = Result<bool>> + Send {
        (**self).dead_retry(entry_id)
    }
    fn dead_drop(&self, entry_id: &str) -> impl Future<Output = Result<bool>> + Send {
        (**self).dead_drop(entry_id)
    }
    fn set_rate_limit(
        &self,
        scope: &RateScope,
        rate: Option<Rate>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).set_rate_limit(scope, rate)
    }
    fn rate_limits(&self) -> impl Future<Output = Result<Vec<(RateScope, Rate)>>> + Send {
        (**self).rate_limits()
    }
}
