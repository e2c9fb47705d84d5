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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, ToRedisArgs, Value};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::broker::{
    Broker, BrokerConfig, DeadLetter, Delivery, HostInfo, HostStats, ModuleInfo, StartOutcome,
};
use crate::error::{Error, Result};
use crate::ops::{
    Event, EventLevel, MAX_EVENTS_PER_READ, QueueStats, Rate, RateScope, STATS_WINDOW_MS,
    decode_rate, encode_rate, is_valid_entry_id,
};
use crate::tls::RedisTls;
use crate::types::{
    Call, Envelope, ErrorKind, ModuleHash, State, TaskError, is_valid_call_id,
    is_valid_module_name, is_valid_queue_name, is_valid_task_name, now_ms,
};

mod reply;

use reply::{as_array, as_bytes, as_int, as_string, stream_entries};

/// The consumer group of every work stream.
const GROUP: &str = "hosts";
/// How long a wake-up stays for waiters that checked just before it came.
const WAKE_TTL: Duration = Duration::from_secs(300);
/// How long the "published by this token" marker stays (capped by the result TTL).
const MARKER_TTL: Duration = Duration::from_secs(3600);
/// Longest single `XREAD BLOCK` of a waiter: a long wait renews its block
/// this often, so a silently dead connection is noticed.
const WAIT_CHUNK: Duration = Duration::from_secs(60);
/// Delayed calls promoted per queue per claim.
const MAX_PROMOTE: usize = 1000;
/// Bytes of a garbage entry kept in its dead letter.
const GARBAGE_KEEP: usize = 4096;
/// Idle connections kept for blocking commands.
const BLOCKING_POOL: usize = 16;
/// How long a single request may take before the connection counts as dead.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a broker re-reads which modules are rate-limited.
const MODULE_LIMITS_REFRESH: Duration = Duration::from_secs(1);
/// Calls one submit script queues at most (a script blocks the server while
/// it runs, so huge batches are cut into chunks, still in one round trip).
const SUBMIT_CHUNK: usize = 256;
/// How long [`Broker::submit_wait`] first waits in the round trip that
/// submits; a longer call costs one more round trip to wait on (and a server
/// that lost its scripts, this long once).
const FIRST_WAIT: Duration = Duration::from_millis(100);
/// How long the admission of calls handed out unstarted (a blocking read's,
/// or a claim's 'held') may wait to go out with the first command about
/// them (usually their results) before it is sent alone.
const DEFER_ADMIT: Duration = Duration::from_millis(2);
/// Stored results [`Broker::wait_many`] looks up per round trip.
const PEEK_MANY: usize = 128;
/// Results one complete script publishes at most.
const COMPLETE_CHUNK: usize = 128;
/// Entries one purge round trip handles.
const PURGE_BATCH: usize = 256;

/// A Lua script: `common.lua` followed by the script's own body.
struct Lua {
    name: &'static str,
    script: redis::Script,
    source: String,
}

impl Lua {
    fn new(name: &'static str, body: &str) -> Self {
        let source = format!("{}\n{}", include_str!("redis/common.lua"), body);
        Self {
            name,
            script: redis::Script::new(&source),
            source,
        }
    }
}

struct Scripts {
    submit: Lua,
    claim: Lua,
    start: Lua,
    complete: Lua,
    retry: Lua,
    release: Lua,
    heartbeat: Lua,
    bury: Lua,
    revoke: Lua,
    drop_consumer: Lua,
    admit: Lua,
    set_rate: Lua,
    stats: Lua,
    purge: Lua,
    dead_retry: Lua,
    dead_drop: Lua,
    host_gone: Lua,
    listen: Lua,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    submit: Lua::new("submit", include_str!("redis/submit.lua")),
    claim: Lua::new("claim", include_str!("redis/claim.lua")),
    start: Lua::new("start", include_str!("redis/start.lua")),
    complete: Lua::new("complete", include_str!("redis/complete.lua")),
    retry: Lua::new("retry", include_str!("redis/retry.lua")),
    release: Lua::new("release", include_str!("redis/release.lua")),
    heartbeat: Lua::new("heartbeat", include_str!("redis/heartbeat.lua")),
    bury: Lua::new("bury", include_str!("redis/bury.lua")),
    revoke: Lua::new("revoke", include_str!("redis/revoke.lua")),
    drop_consumer: Lua::new("drop_consumer", include_str!("redis/drop_consumer.lua")),
    admit: Lua::new("admit", include_str!("redis/admit.lua")),
    set_rate: Lua::new("set_rate", include_str!("redis/set_rate.lua")),
    stats: Lua::new("stats", include_str!("redis/stats.lua")),
    purge: Lua::new("purge", include_str!("redis/purge.lua")),
    dead_retry: Lua::new("dead_retry", include_str!("redis/dead_retry.lua")),
    dead_drop: Lua::new("dead_drop", include_str!("redis/dead_drop.lua")),
    host_gone: Lua::new("host_gone", include_str!("redis/host_gone.lua")),
    listen: Lua::new("listen", include_str!("redis/listen.lua")),
});

/// One command of a pipeline; scripts remember which script they run so a
/// `NOSCRIPT` (after a server restart) can load it and run them again.
#[derive(Clone)]
struct Op {
    cmd: Cmd,
    lua: Option<&'static Lua>,
}

impl Op {
    fn cmd(cmd: Cmd) -> Self {
        Self { cmd, lua: None }
    }

    fn eval(lua: &'static Lua) -> EvalBuilder {
        EvalBuilder {
            lua,
            keys: Vec::new(),
            cmd: None,
        }
    }
}

/// An `EVALSHA`: keys first, then arguments, which are written straight
/// into the command (no copy per argument).
struct EvalBuilder {
    lua: &'static Lua,
    keys: Vec<String>,
    /// The command, begun at the first argument (once the keys are known).
    cmd: Option<Cmd>,
}

impl EvalBuilder {
    fn key(mut self, key: String) -> Self {
        debug_assert!(self.cmd.is_none(), "keys go before arguments");
        self.keys.push(key);
        self
    }

    fn begun(&mut self) -> &mut Cmd {
        let (lua, keys) = (self.lua, &mut self.keys);
        self.cmd.get_or_insert_with(|| {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(lua.script.get_hash()).arg(keys.len());
            for key in keys.drain(..) {
                cmd.arg(key);
            }
            cmd
        })
    }

    fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.begun().arg(arg);
        self
    }

    fn build(mut self) -> Op {
        self.begun();
        Op {
            cmd: self.cmd.expect("begun above"),
            lua: Some(self.lua),
        }
    }
}

/// The key names of one deployment.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn module(&self, hash: &ModuleHash) -> String {
        format!("{}:module:{}", self.prefix, hash.to_hex())
    }
    fn module_pattern(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 10);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":module:*");
        pattern
    }
    fn names(&self) -> String {
        format!("{}:names", self.prefix)
    }
    fn stream(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:stream", self.prefix)
    }
    fn delayed(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:delayed", self.prefix)
    }
    fn call(&self, id: &str) -> String {
        format!("{}:call:{id}", self.prefix)
    }
    fn result(&self, id: &str) -> String {
        format!("{}:result:{id}", self.prefix)
    }
    fn wake(&self, id: &str) -> String {
        format!("{}:wake:{id}", self.prefix)
    }
    fn revoked(&self, id: &str) -> String {
        format!("{}:revoked:{id}", self.prefix)
    }
    fn host(&self, id: &str) -> String {
        format!("{}:host:{id}", self.prefix)
    }
    fn hosts(&self) -> String {
        format!("{}:hosts", self.prefix)
    }
    fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    /// Read by scripts as the events key plus `:level`.
    fn event_level(&self) -> String {
        format!("{}:events:level", self.prefix)
    }
    fn dead_counts(&self) -> String {
        format!("{}:dead:counts", self.prefix)
    }
    fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }
    fn paused(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:paused", self.prefix)
    }
    fn done(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:done", self.prefix)
    }
    fn latency(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:latency", self.prefix)
    }
    fn rates(&self) -> String {
        format!("{}:rates", self.prefix)
    }
    fn bucket(&self, scope: &RateScope) -> String {
        match scope {
            RateScope::Queue(q) => format!("{}:{{q:{q}}}:rate", self.prefix),
            RateScope::Module(m) => format!("{}:rate:module:{}", self.prefix, m.to_hex()),
        }
    }
}

/// Connections for blocking commands (`XREADGROUP BLOCK`, `XREAD BLOCK`),
/// one per blocked caller so nobody else waits behind them. A connection
/// whose command did not finish (an error, a cancelled future) is dropped,
/// which closes it and unblocks it on the server.
struct BlockingPool {
    client: Client,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl BlockingPool {
    async fn connect(&self) -> std::result::Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Runs one blocking command that may take up to `block`.
    async fn query_one(&self, cmd: Cmd, block: Duration) -> std::result::Result<Value, RedisError> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        self.query(&pipe, block).await?.pop().ok_or_else(|| {
            RedisError::from((redis::ErrorKind::Parse, "no reply to a blocking command"))
        })
    }

    /// Runs commands in one round trip, the last of which may block for up
    /// to `block`. An idle connection from the pool that turns out dead (the
    /// server restarted since) is replaced by a fresh one, once, and the
    /// commands sent again: blocking reads are idempotent, and so is a
    /// submit under the same call id (the first final result wins).
    async fn query(
        &self,
        cmd: &redis::Pipeline,
        block: Duration,
    ) -> std::result::Result<Vec<Value>, RedisError> {
        let pooled = lock(&self.idle).pop();
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect().await?,
        };
        conn.set_response_timeout(block + RESPONSE_TIMEOUT);
        let reply = match cmd.query_async(&mut conn).await {
            Err(e) if reused && (e.is_io_error() || e.is_connection_dropped()) => {
                conn = self.connect().await?;
                conn.set_response_timeout(block + RESPONSE_TIMEOUT);
                cmd.query_async(&mut conn).await?
            }
            r => r?,
        };
        let mut idle = lock(&self.idle);
        if idle.len() < BLOCKING_POOL {
            idle.push(conn);
        }
        Ok(reply)
    }
}

/// Runs commands in one round trip on `conn` (of the server at `url`, for
/// errors); per command its reply or its error.
/// Scripts the server does not know (it restarted) are loaded and those
/// commands run again (the only commands ever copied). A connection
/// failure fails the whole batch.
async fn run_pipeline(
    mut conn: ConnectionManager,
    url: &str,
    ops: Vec<Op>,
    what: &str,
) -> Result<Vec<Result<Value>>> {
    let n = ops.len();
    let mut out: Vec<Option<Result<Value>>> = (0..n).map(|_| None).collect();
    // Round 0 sends everything; round 1 only what hit NOSCRIPT.
    let mut luas: Vec<Option<&'static Lua>> = Vec::with_capacity(n);
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for op in ops {
        luas.push(op.lua);
        pipe.add_command(op.cmd);
    }
    let mut indices: Vec<usize> = (0..n).collect();
    for round in 0..2 {
        if indices.is_empty() {
            break;
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| link_err(url, e, what))?;
        if replies.len() != indices.len() {
            return Err(Error::Malformed(format!(
                "{what}: {} replies to {} commands",
                replies.len(),
                indices.len()
            )));
        }
        let mut again = Vec::new();
        let mut load: BTreeMap<&'static str, &'static Lua> = BTreeMap::new();
        let mut retry = redis::pipe();
        retry.ignore_errors();
        for ((&i, reply), cmd) in indices.iter().zip(replies).zip(pipe.cmd_iter()) {
            match reply {
                Value::ServerError(e)
                    if round == 0
                        && e.kind() == Some(redis::ServerErrorKind::NoScript)
                        && luas[i].is_some() =>
                {
                    let lua = luas[i].expect("checked above");
                    load.insert(lua.name, lua);
                    again.push(i);
                    retry.add_command(cmd.clone());
                }
                Value::ServerError(e) => {
                    out[i] = Some(Err(link_err(url, RedisError::from(e), what)));
                }
                v => out[i] = Some(Ok(v)),
            }
        }
        for lua in load.values() {
            debug!(script = lua.name, "loading script");
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(&lua.source)
                .query_async(&mut conn)
                .await
                .map_err(|e| link_err(url, e, "cannot load a script"))?;
        }
        indices = again;
        pipe = retry;
    }
    Ok(out
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(Error::Backend(format!("{what}: script not loaded")))))
        .collect())
}

/// A Redis error while doing `what` on the server at `url`.
fn link_err(url: &str, e: RedisError, what: &str) -> Error {
    map_err(e, &format!("{what} (redis at {url})"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The rate limits a broker knows of (re-read at most once a second).
#[derive(Default)]
struct Limited {
    /// When they were read; `None` forces a read.
    at: Option<Instant>,
    modules: Vec<ModuleHash>,
    queues: HashSet<String>,
}

/// One entry of a held-back admission.
#[derive(Clone)]
struct HeldEntry {
    entry_id: String,
    call_id: String,
    task: String,
    attempt: u32,
    submitted_ms: u64,
    token: String,
}

/// The admission of entries a blocking read handed out, not sent yet (see
/// `RedisBroker::admit`): the admit script's keys and leading arguments,
/// and the entries still waiting for it. An entry is admitted by the first
/// round trip about its delivery, so Redis always admits it before anything
/// else about it: by its result's own complete script (which admits what it
/// publishes), or by this admission sent as the first command of that round
/// trip.
struct Admission {
    keys: Vec<String>,
    head: Vec<String>,
    entries: Vec<HeldEntry>,
}

impl Admission {
    /// The admit script for the entries still held.
    fn op(&self) -> Op {
        let mut op = Op::eval(&SCRIPTS.admit);
        for k in &self.keys {
            op = op.key(k.clone());
        }
        for a in &self.head {
            op = op.arg(a);
        }
        // No rate-limited modules (an admission is held back only then).
        op = op.arg(0);
        for e in &self.entries {
            op = op
                .arg(&e.entry_id)
                .arg(&e.call_id)
                .arg(&e.task)
                .arg(e.attempt)
                .arg(e.submitted_ms);
        }
        op.build()
    }

    fn tokens(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.token.clone()).collect()
    }
}

/// A held-back admission, shared by the tokens of its entries; locked while
/// a round trip about its entries is in flight, so nothing overtakes it.
struct Deferred {
    admission: tokio::sync::Mutex<Option<Admission>>,
}

/// Held-back admissions by delivery token.
type DeferredMap = Arc<Mutex<HashMap<String, Arc<Deferred>>>>;

/// Sends what `d` still holds unless it went out already. Returns the
/// tokens it did not start (paused, revoked, over a limit, reclaimed):
/// their calls must not be published. Empty if nothing was left to send.
async fn send_deferred(
    conn: &ConnectionManager,
    url: &str,
    map: &DeferredMap,
    d: &Deferred,
) -> Result<HashSet<String>> {
    let mut slot = d.admission.lock().await;
    let Some(admission) = slot.as_ref() else {
        return Ok(HashSet::new());
    };
    let reply = run_pipeline(
        conn.clone(),
        url,
        vec![admission.op()],
        "cannot admit claimed calls",
    )
    .await?
    .pop()
    .unwrap_or_else(|| Err(Error::Malformed("no reply to the admit script".into())));
    let tokens = admission.tokens();
    *slot = None;
    forget_tokens(map, &tokens);
    Ok(refused_by(&tokens, reply))
}

/// Marks `tokens` admitted (or refused): they need nothing more.
fn forget_tokens(map: &DeferredMap, tokens: &[String]) {
    let mut map = lock(map);
    for t in tokens {
        map.remove(t);
    }
}

/// The `tokens` (in the order of the script's entries) an admit script did
/// not start, from its reply. A failed script started none of them; they
/// stay pending and are reclaimed after the lease.
fn refused_by(tokens: &[String], reply: Result<Value>) -> HashSet<String> {
    let reply = reply.unwrap_or_else(|e| {
        warn!(cause = %e, "admission of claimed calls failed; they will be reclaimed");
        Value::Nil
    });
    let outcomes = as_array(&reply).unwrap_or_default();
    tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| outcomes.get(*i).and_then(as_bytes) != Some(b"run"))
        .map(|(_, t)| {
            debug!(token = %t, "a deferred admission did not start its call");
            t.clone()
        })
        .collect()
}

/// A blocking read that drained its queues (see `RedisBroker::claim`).
struct Drained {
    host_id: String,
    queues: Vec<String>,
    /// The queues that read blocked on (not paused, tokens left).
    blockable: Vec<String>,
    /// When the non-blocking pass is due again.
    until: Instant,
}

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
    /// How long those wait for a command about their calls ([`DEFER_ADMIT`]).
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

impl RedisBroker {
    /// Connects to Redis at `url` (`redis://[user:password@]host:port[/db]`, or
    /// `rediss://` for TLS) and uses keys under `prefix`.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the server cannot be reached (the message
    /// names the URL without its password); [`Error::Backend`] for an invalid
    /// URL, an empty prefix or rejected credentials.
    pub async fn connect(url: &str, prefix: &str, config: BrokerConfig) -> Result<Self> {
        Self::connect_tls(url, prefix, config, &RedisTls::default()).await
    }

    /// [`RedisBroker::connect`] with the CA to trust and the client
    /// certificate to present over a `rediss://` URL (see [`RedisTls`]).
    ///
    /// # Errors
    /// As `connect`; [`Error::InvalidArgument`] if the TLS files do not fit
    /// the URL or cannot be read. A server whose certificate the CA did not
    /// sign, or that refuses the client certificate, is
    /// [`Error::Unavailable`], naming the TLS failure.
    pub async fn connect_tls(
        url: &str,
        prefix: &str,
        config: BrokerConfig,
        tls: &RedisTls,
    ) -> Result<Self> {
        let shown = redact_url(url);
        if prefix.is_empty() {
            return Err(Error::Backend("the key prefix must not be empty".into()));
        }
        if url.starts_with("rediss://") {
            crate::tls::install_crypto_provider();
        }
        let client = match tls.certificates(url)? {
            Some(certs) => Client::build_with_tls(url, certs),
            None => Client::open(url),
        }
        .map_err(|e| Error::Backend(format!("invalid redis url {shown}: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(100))
            .set_max_delay(Duration::from_secs(1))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let conn = ConnectionManager::new_with_config(client.clone(), manager_config)
            .await
            .map_err(|e| map_err(e, &format!("cannot connect to redis at {shown}")))?;
        broker_preflight(&conn, &shown).await?;
        let broker = Self {
            conn,
            blocking: BlockingPool {
                client,
                idle: Mutex::new(Vec::new()),
            },
            keys: Keys {
                prefix: prefix.to_string(),
            },
            config,
            url: shown,
            registered: Mutex::new(HashMap::new()),
            last_reclaim: Mutex::new(None),
            last_gc: Mutex::new(None),
            last_reap: Mutex::new(None),
            limits: Mutex::new(Limited::default()),
            deferred: DeferredMap::default(),
            admission_delay: DEFER_ADMIT,
            drained: Mutex::new(None),
        };
        Ok(broker)
    }

    /// Sets how long the admission of calls handed out unstarted waits for
    /// their results before it goes out alone (2 ms otherwise), so a test
    /// can tell which way it went.
    #[cfg(feature = "test-util")]
    #[must_use]
    pub fn with_admission_delay(mut self, delay: Duration) -> Self {
        self.admission_delay = delay;
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.keys.prefix
    }

    /// The tunables it was connected with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    fn err(&self, e: RedisError, what: &str) -> Error {
        link_err(&self.url, e, what)
    }

    /// Runs one command.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd, what: &str) -> Result<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.err(e, what))
    }

    /// Runs commands in one round trip; per command its reply or its error.
    /// Scripts the server does not know (it restarted) are loaded and those
    /// commands run again (the only commands ever copied). A connection
    /// failure fails the whole batch.
    async fn pipeline(&self, ops: Vec<Op>, what: &str) -> Result<Vec<Result<Value>>> {
        run_pipeline(self.conn.clone(), &self.url, ops, what).await
    }

    /// Runs one script.
    async fn eval(&self, op: Op, what: &str) -> Result<Value> {
        self.pipeline(vec![op], what)
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Backend(format!("{what}: no reply"))))
    }

    fn result_ttl_ms(&self) -> u64 {
        self.config.result_ttl.as_millis() as u64
    }

    fn marker_ttl_ms(&self) -> u64 {
        let ttl = if self.config.result_ttl.is_zero() {
            MARKER_TTL
        } else {
            self.config.result_ttl.min(MARKER_TTL)
        };
        (ttl.as_millis() as u64).max(1)
    }

    /// TTL of a pending state that waits `extra` before running.
    fn state_ttl_ms(&self, extra: Duration) -> u64 {
        if self.config.result_ttl.is_zero() {
            0
        } else {
            millis_capped(self.config.result_ttl.saturating_add(extra))
        }
    }

    fn reclaim_interval(&self) -> Duration {
        (self.config.lease / 4).clamp(Duration::from_millis(20), Duration::from_secs(2))
    }

    /// Whether it is time to look for idle entries again, without taking the turn.
    fn turn_due(slot: &Mutex<Option<Instant>>, every: Duration) -> bool {
        lock(slot).is_none_or(|t| t.elapsed() >= every)
    }

    /// The queues a claim may block on at once, if the last claim of
    /// `host_id` on `queues` ended with a blocking read that drained them and
    /// nothing the non-blocking pass does (promote a delayed call, refill a
    /// bucket, reclaim, notice a resumed queue) is due yet.
    fn still_drained(&self, host_id: &str, queues: &[String]) -> Option<Drained> {
        let d = lock(&self.drained).take()?;
        let fresh = d.host_id == host_id
            && d.queues == queues
            && Instant::now() < d.until
            && !Self::turn_due(&self.last_reclaim, self.reclaim_interval());
        fresh.then_some(d)
    }

    /// Whether it is time to look for idle entries again (and note that we do).
    fn take_turn(slot: &Mutex<Option<Instant>>, every: Duration) -> bool {
        let now = Instant::now();
        let mut last = lock(slot);
        match *last {
            Some(t) if now.duration_since(t) < every => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }

    /// Consumers idle this long (and holding nothing) are forgotten.
    fn consumer_gc_idle(&self) -> Duration {
        (self.config.lease * 10).max(Duration::from_secs(300))
    }

    /// Turns a raw stream entry into a delivery, or buries it. `started` is
    /// what the claim script did about starting it; `token_prefix` makes its
    /// token (see [`delivery_token`]).
    #[allow(clippy::too_many_arguments)]
    async fn accept_entry(
        &self,
        queue: &str,
        entry_id: String,
        fields: &[(String, Vec<u8>)],
        parsed: std::result::Result<Call, String>,
        deliveries: u32,
        started: Option<StartOutcome>,
        token_prefix: &str,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let raw = call_field(fields);
        match parsed {
            Err(reason) => {
                let raw = raw.unwrap_or_default();
                let id = recognisable_id(raw);
                warn!(queue, entry = %entry_id, call_id = id.as_deref().unwrap_or(""), %reason,
                    "dead-lettering a garbage queue entry");
                let envelope = id.as_ref().map(|id| {
                    Envelope::failed(
                        id.clone(),
                        TaskError::new(
                            ErrorKind::BadInput,
                            format!("the queued call is malformed: {reason}"),
                        ),
                    )
                });
                let mut kept = String::from_utf8_lossy(raw).into_owned();
                truncate_utf8(&mut kept, GARBAGE_KEEP);
                self.bury(
                    queue,
                    &entry_id,
                    deliveries,
                    &reason,
                    &kept,
                    id.as_deref().unwrap_or(""),
                    envelope.as_ref(),
                    None,
                )
                .await
            }
            Ok(call) if deliveries > self.config.max_deliveries => {
                let reason = format!(
                    "delivered {} times, over the limit of {}: every host that took it stopped heartbeating",
                    deliveries, self.config.max_deliveries
                );
                warn!(queue, call_id = %call.id, deliveries, "call lost: delivery limit reached");
                let mut envelope =
                    Envelope::failed(call.id.clone(), TaskError::new(ErrorKind::Lost, &reason));
                envelope.attempt = call.attempt;
                let raw = String::from_utf8_lossy(raw.unwrap_or_default()).into_owned();
                self.bury(
                    queue,
                    &entry_id,
                    deliveries,
                    &reason,
                    &raw,
                    &call.id,
                    Some(&envelope),
                    Some(&call),
                )
                .await
            }
            Ok(call) => {
                out.push(Delivery {
                    call,
                    queue: queue.to_string(),
                    token: delivery_token(token_prefix, &entry_id),
                    entry_id,
                    deliveries,
                    started,
                });
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn bury(
        &self,
        queue: &str,
        entry_id: &str,
        deliveries: u32,
        reason: &str,
        raw: &str,
        id: &str,
        envelope: Option<&Envelope>,
        call: Option<&Call>,
    ) -> Result<()> {
        let kind = envelope
            .and_then(|e| e.error.as_ref())
            .map_or("", |e| e.kind.as_str());
        let envelope = match envelope {
            Some(e) => serde_json::to_string(e).unwrap_or_default(),
            None => String::new(),
        };
        let op = Op::eval(&SCRIPTS.bury)
            .key(self.keys.stream(queue))
            .key(self.keys.dead())
            .key(self.keys.result(id))
            .key(self.keys.call(id))
            .key(self.keys.wake(id))
            .key(self.keys.events())
            .key(self.keys.dead_counts())
            .key(self.keys.done(queue))
            .arg(entry_id)
            .arg(deliveries)
            .arg(reason)
            .arg(raw)
            .arg(envelope)
            .arg(self.result_ttl_ms())
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(self.config.dead_letter_cap.max(1))
            .arg(id)
            .arg(queue)
            .arg(kind)
            .arg(call.map_or("", |c| c.task.as_str()))
            .arg(call.map_or(0, |c| c.submitted_ms))
            .build();
        // The entry stays pending if this fails, so it is reclaimed and
        // buried later: no reason to fail the claim that found it.
        if let Err(e) = self.eval(op, "cannot dead-letter a queue entry").await {
            warn!(queue, entry = %entry_id, cause = %e, "dead-lettering failed; will retry after the lease");
        }
        Ok(())
    }

    /// The queue's keys, its pause flag and rate bucket, the events and
    /// counters its started calls touch, then the limited modules' buckets:
    /// the keys of `claim.lua` and `admit.lua`.
    fn limit_keys(&self, queue: &str, modules: &[ModuleHash]) -> Vec<String> {
        let mut keys = vec![
            self.keys.stream(queue),
            self.keys.delayed(queue),
            self.keys.paused(queue),
            self.keys.bucket(&RateScope::Queue(queue.to_string())),
            self.keys.events(),
            self.keys.done(queue),
        ];
        keys.extend(
            modules
                .iter()
                .map(|m| self.keys.bucket(&RateScope::Module(*m))),
        );
        keys
    }

    /// The rate-limited modules, re-read from the registry at most once a
    /// second (with the rate-limited queues).
    async fn limited_modules(&self) -> Result<Vec<ModuleHash>> {
        {
            let cache = lock(&self.limits);
            if let Some(at) = cache.at
                && at.elapsed() < MODULE_LIMITS_REFRESH
            {
                return Ok(cache.modules.clone());
            }
        }
        let mut cmd = redis::cmd("HKEYS");
        cmd.arg(self.keys.rates());
        let fields: Vec<String> = self.query(&cmd, "cannot read the rate limits").await?;
        let mut fresh = Limited {
            at: Some(Instant::now()),
            ..Limited::default()
        };
        for f in &fields {
            match RateScope::from_key(f) {
                Some(RateScope::Module(m)) => fresh.modules.push(m),
                Some(RateScope::Queue(q)) => {
                    fresh.queues.insert(q);
                }
                None => {}
            }
        }
        let list = fresh.modules.clone();
        *lock(&self.limits) = fresh;
        Ok(list)
    }

    /// One non-blocking pass over one queue: promote, reclaim, read.
    /// Returns the time until it is worth another pass without a new entry
    /// (a delayed call due, a bucket refilled), and whether a blocking read
    /// may hand out its new entries now (not paused, tokens left).
    #[allow(clippy::too_many_arguments)]
    async fn claim_queue(
        &self,
        host_id: &str,
        queue: &str,
        want: usize,
        reclaim: bool,
        gc: bool,
        modules: &[ModuleHash],
        out: &mut Vec<Delivery>,
    ) -> Result<(Option<Duration>, bool)> {
        let mut op = Op::eval(&SCRIPTS.claim);
        for key in self.limit_keys(queue, modules) {
            op = op.key(key);
        }
        let token_prefix = new_token();
        let mut op = op
            .arg(host_id)
            .arg(want)
            .arg(self.config.lease.as_millis().max(1) as u64)
            .arg(if reclaim { "1" } else { "0" })
            .arg(MAX_PROMOTE)
            .arg(if gc {
                self.consumer_gc_idle().as_millis() as u64
            } else {
                0
            })
            .arg(&self.keys.prefix)
            .arg(&token_prefix)
            .arg(self.config.max_deliveries)
            .arg(queue)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64);
        for m in modules {
            op = op.arg(m.to_hex());
        }
        let reply = self.eval(op.build(), "cannot claim calls").await?;
        let bad = || Error::Malformed("unexpected reply of the claim script".into());
        // Where in `out` the deliveries handed out unstarted ('held') are.
        let mut held_at = Vec::new();
        let parts = as_array(&reply).ok_or_else(bad)?;
        let next_due = parts.first().and_then(as_int).ok_or_else(bad)?;
        let entries = parts.get(1).and_then(as_array).ok_or_else(bad)?;
        for e in entries {
            let e = as_array(e).ok_or_else(bad)?;
            let id = e.first().and_then(as_string).ok_or_else(bad)?;
            let fields = e.get(1).map(reply::fields).unwrap_or_default();
            let deliveries = e.get(2).and_then(as_int).ok_or_else(bad)?;
            let deliveries = u32::try_from(deliveries).unwrap_or(u32::MAX);
            let held = e.get(3).and_then(as_bytes) == Some(b"held");
            let started = if held {
                Some(StartOutcome::Run)
            } else {
                start_outcome(e.get(3))
            };
            let parsed = parse_call(call_field(&fields));
            let before = out.len();
            self.accept_entry(
                queue,
                id,
                &fields,
                parsed,
                deliveries,
                started,
                &token_prefix,
                out,
            )
            .await?;
            if held && out.len() > before {
                held_at.push(before);
            }
        }
        if !held_at.is_empty() {
            self.hold(
                host_id,
                queue,
                &token_prefix,
                held_at.iter().map(|&i| &out[i]),
            );
        }
        let blockable = parts.get(2).and_then(as_int) == Some(1);
        Ok((
            u64::try_from(next_due).ok().map(Duration::from_millis),
            blockable,
        ))
    }

    /// Runs the admission checks (pause, rate limits) over entries a
    /// blocking read handed out and starts those admitted, in one script;
    /// turns those admitted into deliveries.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        host_id: &str,
        queue: &str,
        modules: &[ModuleHash],
        entries: reply::Entries,
        paused: bool,
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let parsed: Vec<std::result::Result<Call, String>> = entries
            .iter()
            .map(|(_, fields)| parse_call(call_field(fields)))
            .collect();
        let token_prefix = new_token();
        let mut op = Op::eval(&SCRIPTS.admit);
        for key in self.limit_keys(queue, modules) {
            op = op.key(key);
        }
        op = op
            .arg(host_id)
            .arg(&self.keys.prefix)
            .arg(&token_prefix)
            .arg(queue)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(modules.len());
        for m in modules {
            op = op.arg(m.to_hex());
        }
        for ((id, _), call) in entries.iter().zip(&parsed) {
            op = match call {
                Ok(c) => op
                    .arg(id)
                    .arg(&c.id)
                    .arg(&c.task)
                    .arg(c.attempt)
                    .arg(c.submitted_ms),
                Err(_) => op.arg(id).arg("").arg("").arg(0).arg(0),
            };
        }
        // Nothing to hold back for (as far as this host knows; the scripts
        // still check): hand the calls out at once and admit them with the
        // first command about them (usually their results' script), which
        // saves a round trip and a script per blocking read. A call that turns out not
        // admitted (revoked or finished meanwhile, over a limit set within
        // the last second) ran for nothing: its result is refused, as any
        // stale delivery's.
        let defer = !paused
            && modules.is_empty()
            && !lock(&self.limits).queues.contains(queue)
            && parsed.iter().all(|c| c.is_ok());
        if defer {
            let first = out.len();
            for ((id, fields), call) in entries.into_iter().zip(parsed) {
                self.accept_entry(
                    queue,
                    id,
                    &fields,
                    call,
                    1,
                    Some(StartOutcome::Run),
                    &token_prefix,
                    out,
                )
                .await?;
            }
            self.hold(host_id, queue, &token_prefix, out[first..].iter());
            return Ok(());
        }
        let reply = self.eval(op.build(), "cannot admit claimed calls").await?;
        let outcomes = as_array(&reply)
            .filter(|o| o.len() == entries.len())
            .ok_or_else(|| Error::Malformed("unexpected reply of the admit script".into()))?;
        for (((id, fields), call), outcome) in entries.into_iter().zip(parsed).zip(outcomes) {
            if as_bytes(outcome) == Some(b"no") {
                continue;
            }
            let started = start_outcome(Some(outcome));
            self.accept_entry(queue, id, &fields, call, 1, started, &token_prefix, out)
                .await?;
        }
        Ok(())
    }

    /// Holds back the admission of `delivered`, handed out unstarted, until
    /// a command about one of them goes out (see `admit`).
    fn hold<'a>(
        &self,
        host_id: &str,
        queue: &str,
        token_prefix: &str,
        delivered: impl Iterator<Item = &'a Delivery>,
    ) {
        let entries = delivered
            .map(|d| HeldEntry {
                entry_id: d.entry_id.clone(),
                call_id: d.call.id.clone(),
                task: d.call.task.clone(),
                attempt: d.call.attempt,
                submitted_ms: d.call.submitted_ms,
                token: d.token.clone(),
            })
            .collect();
        self.defer_admission(Admission {
            keys: self.limit_keys(queue, &[]),
            head: vec![
                host_id.to_string(),
                self.keys.prefix.clone(),
                token_prefix.to_string(),
                queue.to_string(),
                self.state_ttl_ms(Duration::ZERO).to_string(),
                self.marker_ttl_ms().to_string(),
                WAKE_TTL.as_millis().to_string(),
            ],
            entries,
        });
    }

    /// Holds back an admission (see `admit`) until a command about one of
    /// its deliveries goes out, or the admission delay passes.
    fn defer_admission(&self, admission: Admission) {
        let tokens = admission.tokens();
        let deferred = Arc::new(Deferred {
            admission: tokio::sync::Mutex::new(Some(admission)),
        });
        {
            let mut map = lock(&self.deferred);
            for t in tokens {
                map.insert(t, deferred.clone());
            }
        }
        let (conn, url, map) = (self.conn.clone(), self.url.clone(), self.deferred.clone());
        let delay = self.admission_delay;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let mut backoff = Duration::from_millis(50);
            for attempt in 1..=8 {
                match send_deferred(&conn, &url, &map, &deferred).await {
                    Ok(_) => return,
                    Err(e) if attempt == 8 => {
                        // Their results carry the admission, or the entries
                        // are reclaimed after the lease.
                        warn!(cause = %e, "cannot admit claimed calls; leaving it to their results");
                    }
                    Err(e) => {
                        debug!(cause = %e, attempt, "cannot admit claimed calls; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
        });
    }

    /// Sends the deferred admission of `token`'s delivery, if any is still
    /// pending, before something else is done about it.
    async fn settle(&self, token: &str) -> Result<()> {
        let deferred = lock(&self.deferred).get(token).cloned();
        if let Some(d) = deferred {
            send_deferred(&self.conn, &self.url, &self.deferred, &d).await?;
        }
        Ok(())
    }

    /// Blocks in `XREADGROUP` on all queues for new entries.
    async fn block_for_new(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
        modules: &[ModuleHash],
        out: &mut Vec<Delivery>,
    ) -> Result<()> {
        let block_ms = block.as_millis().max(1) as u64;
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(host_id)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS");
        for q in queues {
            cmd.arg(self.keys.stream(q));
        }
        for _ in queues {
            cmd.arg(">");
        }
        // Right behind the read on the same connection, so it runs as soon
        // as the read returns (no round trip of its own): whether a queue
        // was paused meanwhile, in which case admission cannot wait.
        let mut paused = redis::cmd("EXISTS");
        for q in queues {
            paused.arg(self.keys.paused(q));
        }
        let mut pipe = redis::pipe();
        pipe.add_command(cmd).add_command(paused);
        let replies = self
            .blocking
            .query(&pipe, block)
            .await
            .map_err(|e| self.err(e, "cannot read new calls"))?;
        let (Some(reply), Some(paused)) = (replies.first(), replies.get(1)) else {
            return Err(Error::Malformed("unexpected reply of XREADGROUP".into()));
        };
        let paused = as_int(paused) != Some(0);
        let by_key: HashMap<String, &String> =
            queues.iter().map(|q| (self.keys.stream(q), q)).collect();
        let mut got = Vec::new();
        for (key, entries) in stream_entries(reply)
            .ok_or_else(|| Error::Malformed("unexpected reply of XREADGROUP".into()))?
        {
            let Some(queue) = by_key.get(&key) else {
                continue;
            };
            // If this fails the entries stay pending and are reclaimed after the lease.
            self.admit(host_id, queue, modules, entries, paused, &mut got)
                .await?;
        }
        // Several streams may each answer with up to `max`: hand back the surplus.
        if got.len() > max {
            for extra in got.split_off(max) {
                if let Err(e) = self.release(&extra).await {
                    // Still pending: reclaimed after the lease.
                    warn!(call_id = %extra.call.id, cause = %e, "cannot hand back a surplus call");
                }
            }
        }
        out.extend(got);
        Ok(())
    }

    /// The submit scripts of `calls` (one per queue and chunk), after checking
    /// every call: nothing is queued if one is invalid. With `waiting`, the
    /// calls are marked as waited for (see `listen`), so their results come
    /// with a wake-up.
    fn submit_ops(
        &self,
        calls: &[Call],
        countdown: Option<Duration>,
        waiting: bool,
    ) -> Result<Vec<Op>> {
        // Check everything before anything is queued.
        let mut jsons = Vec::with_capacity(calls.len());
        for call in calls {
            check_call(call, self.config.max_args)?;
            jsons.push(serde_json::to_string(call).map_err(|e| Error::InvalidCall(e.to_string()))?);
        }
        // One script per queue and chunk, all in one round trip.
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, call) in calls.iter().enumerate() {
            by_queue.entry(call.queue.as_str()).or_default().push(i);
        }
        let countdown_ms: i64 = countdown.map_or(-1, |d| millis_capped(d) as i64);
        let state_ttl = self.state_ttl_ms(countdown.unwrap_or_default());
        let mut ops = Vec::new();
        for (queue, indices) in &by_queue {
            for chunk in indices.chunks(SUBMIT_CHUNK) {
                let mut op = Op::eval(&SCRIPTS.submit)
                    .key(self.keys.stream(queue))
                    .key(self.keys.delayed(queue))
                    .key(self.keys.events())
                    .key(self.keys.queues());
                for &i in chunk {
                    op = op.key(self.keys.call(&calls[i].id));
                }
                let mut op = op
                    .arg(*queue)
                    .arg(state_ttl)
                    .arg(countdown_ms)
                    .arg(if waiting { "1" } else { "0" });
                for &i in chunk {
                    let call = &calls[i];
                    op = op
                        .arg(jsons[i].as_str())
                        .arg(&call.id)
                        .arg(call.attempt)
                        .arg(&call.task)
                        .arg(call.submitted_ms);
                }
                ops.push(op.build());
            }
        }
        Ok(ops)
    }

    /// The state of call `id`, marking it waited for while it is pending
    /// (`listen.lua`): its result then comes with a wake-up.
    fn listen_op(&self, id: &str) -> Op {
        Op::eval(&SCRIPTS.listen).key(self.keys.call(id)).build()
    }

    /// `XREAD BLOCK` of the wake-up stream of `id` from its start.
    fn wake_read(&self, id: &str, block: Duration) -> Cmd {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(self.keys.wake(id))
            .arg("0-0");
        cmd
    }

    /// Blocks until the wake-up stream of `id` has an entry or `block` passes.
    async fn block_on_wake(&self, id: &str, block: Duration) -> Result<Woken> {
        let reply = self
            .blocking
            .query_one(self.wake_read(id, block), block)
            .await
            .map_err(|e| self.err(e, "cannot wait for a result"))?;
        Ok(woken(id, &reply))
    }

    /// Fills `out[i]` for each `i` of `window` whose call has a final
    /// envelope stored, in one `MGET`. Anything else (no result yet, an
    /// invalid id, garbage at the key) stays `None`, for `wait` to tell.
    async fn peek_results(
        &self,
        ids: &[String],
        window: &[usize],
        out: &mut [Option<Envelope>],
    ) -> Result<()> {
        let window: Vec<usize> = window
            .iter()
            .copied()
            .filter(|&i| is_valid_call_id(&ids[i]))
            .collect();
        if window.is_empty() {
            return Ok(());
        }
        let mut get = redis::cmd("MGET");
        for &i in &window {
            get.arg(self.keys.result(&ids[i]));
        }
        let reply = self
            .pipeline(vec![Op::cmd(get)], "cannot wait for results")
            .await?
            .pop()
            .expect("one reply")?;
        let stored = as_array(&reply).unwrap_or_default();
        for (&i, value) in window.iter().zip(stored) {
            let env = as_bytes(value).and_then(|b| serde_json::from_slice::<Envelope>(b).ok());
            if let Some(env) = env.filter(|e| e.state.is_final() && e.id == ids[i]) {
                out[i] = Some(env);
            }
        }
        Ok(())
    }

    /// The final envelope of a call, `None` if it is still pending, or
    /// [`Error::UnknownCall`].
    async fn final_status(&self, id: &str) -> Result<Option<Envelope>> {
        match self.status(id).await? {
            Some(env) if env.state.is_final() => Ok(Some(env)),
            Some(_) => Ok(None),
            None => Err(Error::UnknownCall(id.to_string())),
        }
    }

    fn pending_envelope(
        &self,
        id: &str,
        state: &HashMap<String, Vec<u8>>,
    ) -> Result<Option<Envelope>> {
        let text = |f: &str| {
            state
                .get(f)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let Some(name) = text("state") else {
            return Ok(None);
        };
        let attempt = text("attempt")
            .and_then(|a| a.parse::<u32>().ok())
            .unwrap_or(0);
        let state = match name.as_str() {
            "queued" => State::Queued,
            "running" => State::Running,
            "retrying" => State::Retrying,
            // The final result expired before its marker: unknown.
            "done" => return Ok(None),
            other => {
                return Err(Error::Malformed(format!(
                    "call {id} has an unknown state {other:?}"
                )));
            }
        };
        if state == State::Retrying
            && let Some(mut last) =
                text("last").and_then(|l| serde_json::from_str::<Envelope>(&l).ok())
        {
            // The failed attempt's envelope (its attempt, its error), now retrying.
            last.state = State::Retrying;
            return Ok(Some(last));
        }
        let mut env = Envelope::pending(id, state);
        env.attempt = attempt;
        if state == State::Running {
            env.host = text("host").unwrap_or_default();
        }
        Ok(Some(env))
    }
}

impl Broker for RedisBroker {
    async fn put_module(&self, bytes: &[u8]) -> Result<(ModuleHash, bool)> {
        let size = bytes.len() as u64;
        if size > self.config.max_module {
            return Err(Error::ModuleTooLarge {
                size,
                limit: self.config.max_module,
            });
        }
        let hash = ModuleHash::of(bytes);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.module(&hash)).arg(bytes).arg("NX");
        let reply: Value = self.query(&cmd, "cannot store a module").await?;
        Ok((hash, !matches!(reply, Value::Nil)))
    }

    async fn has_module(&self, hash: &ModuleHash) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.keys.module(hash));
        let n: i64 = self.query(&cmd, "cannot look up a module").await?;
        Ok(n > 0)
    }

    async fn get_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        // The size first, so an oversized value is never downloaded. Module
        // keys are write-once, so the size cannot change in between.
        let mut strlen = redis::cmd("STRLEN");
        strlen.arg(self.keys.module(hash));
        let size: u64 = self.query(&strlen, "cannot read a module's size").await?;
        if size > self.config.max_module {
            return Err(Error::ModuleTooLarge {
                size,
                limit: self.config.max_module,
            });
        }
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.keys.module(hash));
        self.query(&cmd, "cannot read a module").await
    }

    async fn tag(&self, name: &str, version: Option<&str>, hash: &ModuleHash) -> Result<()> {
        if !is_valid_module_name(name) {
            return Err(Error::InvalidName(name.to_string()));
        }
        if let Some(v) = version
            && !is_valid_module_name(v)
        {
            return Err(Error::InvalidName(v.to_string()));
        }
        if !self.has_module(hash).await? {
            return Err(Error::ModuleNotFound(format!("sha256:{hash}")));
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(self.keys.names()).arg(name).arg(hash.to_hex());
        if let Some(v) = version {
            cmd.arg(format!("{name}@{v}")).arg(hash.to_hex());
        }
        let _: i64 = self.query(&cmd, "cannot tag a module").await?;
        Ok(())
    }

    async fn resolve(&self, name: &str) -> Result<Option<ModuleHash>> {
        check_module_ref(name)?;
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.keys.names()).arg(name);
        let hex: Option<String> = self.query(&cmd, "cannot resolve a module name").await?;
        hex.map(|h| {
            h.parse()
                .map_err(|_| Error::Malformed(format!("module name {name} points at {h:?}")))
        })
        .transpose()
    }

    async fn list_modules(&self) -> Result<Vec<ModuleInfo>> {
        let prefix = format!("{}:module:", self.keys.prefix);
        let mut hashes = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(self.keys.module_pattern())
                .arg("COUNT")
                .arg(1000);
            let (next, keys): (u64, Vec<String>) = self.query(&cmd, "cannot list modules").await?;
            for key in keys {
                if let Some(h) = key.strip_prefix(&prefix).and_then(|h| h.parse().ok()) {
                    hashes.insert(h);
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let mut hashes: Vec<ModuleHash> = hashes.into_iter().collect();
        hashes.sort();
        let mut ops: Vec<Op> = hashes
            .iter()
            .map(|h| {
                let mut c = redis::cmd("STRLEN");
                c.arg(self.keys.module(h));
                Op::cmd(c)
            })
            .collect();
        let mut names_cmd = redis::cmd("HGETALL");
        names_cmd.arg(self.keys.names());
        ops.push(Op::cmd(names_cmd));
        let mut replies = self.pipeline(ops, "cannot list modules").await?;
        let names_reply = replies.pop().expect("one reply per command")?;
        let mut names: HashMap<String, Vec<String>> = HashMap::new();
        for (name, hex) in reply::fields(&names_reply) {
            names
                .entry(String::from_utf8_lossy(&hex).into_owned())
                .or_default()
                .push(name);
        }
        let mut out = Vec::with_capacity(hashes.len());
        for (hash, size) in hashes.into_iter().zip(replies) {
            let size = size?;
            let size = as_int(&size).unwrap_or(0);
            let mut names = names.remove(&hash.to_hex()).unwrap_or_default();
            names.sort();
            out.push(ModuleInfo {
                hash,
                size: u64::try_from(size).unwrap_or(0),
                names,
            });
        }
        Ok(out)
    }

    async fn submit(&self, calls: &[Call], countdown: Option<Duration>) -> Result<()> {
        let ops = self.submit_ops(calls, countdown, false)?;
        for r in self.pipeline(ops, "cannot submit calls").await? {
            r?;
        }
        Ok(())
    }

    async fn submit_wait(
        &self,
        call: &Call,
        timeout: Option<Duration>,
    ) -> Result<Option<Envelope>> {
        let first = timeout.map_or(FIRST_WAIT, |t| t.min(FIRST_WAIT));
        if first.is_zero() {
            self.submit(std::slice::from_ref(call), None).await?;
            return self.wait(&call.id, timeout).await;
        }
        let started = Instant::now();
        // One round trip on a connection of its own: the submit script, then
        // a blocking read of the wake-up stream from its start, which returns
        // as soon as the result is published (or at once if it already is).
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for op in self.submit_ops(std::slice::from_ref(call), None, true)? {
            pipe.add_command(op.cmd);
        }
        pipe.add_command(self.wake_read(&call.id, first));
        let mut replies = self
            .blocking
            .query(&pipe, first)
            .await
            .map_err(|e| self.err(e, "cannot submit a call"))?;
        let read = replies
            .pop()
            .ok_or_else(|| Error::Malformed("no reply to the wake-up read".into()))?;
        match replies.pop() {
            // The server lost its scripts (it restarted): the call is not
            // queued and the read waited in vain. Submit it the usual way.
            Some(Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript) => {
                self.submit(std::slice::from_ref(call), None).await?;
            }
            Some(Value::ServerError(e)) => {
                return Err(self.err(RedisError::from(e), "cannot submit a call"));
            }
            Some(_) => match woken(&call.id, &read) {
                Woken::Envelope(env) => return Ok(Some(*env)),
                Woken::Bare => return self.final_status(&call.id).await,
                Woken::Nothing => {}
            },
            None => return Err(Error::Malformed("no reply to the submit script".into())),
        }
        let left = timeout.map(|t| t.saturating_sub(started.elapsed()));
        self.wait(&call.id, left).await
    }

    async fn wait_many(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<Envelope>>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let left = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let mut out: Vec<Option<Envelope>> = vec![None; ids.len()];
        // Every id before `next` has its envelope, or timed out.
        let mut next = 0;
        while next < ids.len() {
            // One round trip: the stored results of the next ids not found yet.
            let window: Vec<usize> = (next..ids.len())
                .filter(|&i| out[i].is_none())
                .take(PEEK_MANY)
                .collect();
            self.peek_results(ids, &window, &mut out).await?;
            while next < ids.len() && out[next].is_some() {
                next += 1;
            }
            if next == ids.len() {
                break;
            }
            if window.last().is_some_and(|&last| next > last) {
                // All there so far: look at the next ones.
                continue;
            }
            // Then block on the oldest one not done, as `wait` does (which
            // also tells an unknown id or garbage at its result key).
            match self.wait(&ids[next], left()).await? {
                Some(env) => {
                    out[next] = Some(env);
                    next += 1;
                }
                None => {
                    // Out of time: the rest get one look each (so an
                    // unknown id is still an error, as with `wait`).
                    for i in next + 1..ids.len() {
                        if out[i].is_none() {
                            out[i] = self.wait(&ids[i], Some(Duration::ZERO)).await?;
                        }
                    }
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn status(&self, id: &str) -> Result<Option<Envelope>> {
        if !is_valid_call_id(id) {
            return Ok(None);
        }
        let mut get = redis::cmd("GET");
        get.arg(self.keys.result(id));
        let mut state = redis::cmd("HGETALL");
        state.arg(self.keys.call(id));
        let mut replies = self
            .pipeline(
                vec![Op::cmd(get), Op::cmd(state)],
                "cannot read a call's status",
            )
            .await?
            .into_iter();
        let result = replies.next().expect("two replies")?;
        let state = replies.next().expect("two replies")?;
        if let Some(bytes) = as_bytes(&result) {
            let env: Envelope = serde_json::from_slice(bytes).map_err(|e| {
                Error::Malformed(format!("the result of {id} is not an envelope: {e}"))
            })?;
            return Ok(Some(env));
        }
        let fields: HashMap<String, Vec<u8>> = reply::fields(&state).into_iter().collect();
        self.pending_envelope(id, &fields)
    }

    async fn wait(&self, id: &str, timeout: Option<Duration>) -> Result<Option<Envelope>> {
        if !is_valid_call_id(id) {
            return Err(Error::UnknownCall(id.to_string()));
        }
        // One round trip: the wake-up (it carries the envelope, for five
        // minutes after the result, if someone waited) and whether the call
        // is pending, which marks it waited for (`listen`).
        let mut peek = redis::cmd("XREAD");
        peek.arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg(self.keys.wake(id))
            .arg("0-0");
        let mut replies = self
            .pipeline(
                vec![Op::cmd(peek), self.listen_op(id)],
                "cannot wait for a result",
            )
            .await?
            .into_iter();
        // A wake-up key holding garbage is overwritten when the result comes.
        let peeked = match replies.next().expect("two replies") {
            Ok(v) => woken(id, &v),
            Err(e) if e.is_transient() => return Err(e),
            Err(_) => Woken::Nothing,
        };
        let state = replies.next().expect("two replies")?;
        match peeked {
            Woken::Envelope(env) => return Ok(Some(*env)),
            Woken::Bare => return self.final_status(id).await,
            Woken::Nothing => {}
        }
        if !is_pending(&state) {
            // Unknown, or final (published before anyone waited, or with
            // its wake-up gone): the stored result says.
            match self.status(id).await? {
                None => return Err(Error::UnknownCall(id.to_string())),
                Some(env) if env.state.is_final() => return Ok(Some(env)),
                Some(_) => {}
            }
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let block = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()).min(WAIT_CHUNK),
                None => WAIT_CHUNK,
            };
            if block.is_zero() {
                break;
            }
            match self.block_on_wake(id, block).await? {
                Woken::Envelope(env) => return Ok(Some(*env)),
                Woken::Bare => break,
                Woken::Nothing => {}
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            // A long wait: mark the call again, in case its state was
            // written anew meanwhile (submitted again under its id), and
            // stop if it is no longer pending.
            if !is_pending(
                &self
                    .eval(self.listen_op(id), "cannot wait for a result")
                    .await?,
            ) {
                break;
            }
        }
        self.final_status(id).await
    }

    async fn revoke(&self, id: &str) -> Result<bool> {
        if !is_valid_call_id(id) {
            return Ok(false);
        }
        // The script needs the call's queue keys; a call's queue never
        // changes, so reading it first only races with the call's creation.
        for _ in 0..3 {
            let mut cmd = redis::cmd("HGET");
            cmd.arg(self.keys.call(id)).arg("queue");
            let queue: Option<String> = self.query(&cmd, "cannot revoke a call").await?;
            let queue = queue.unwrap_or_default();
            let op = Op::eval(&SCRIPTS.revoke)
                .key(self.keys.call(id))
                .key(self.keys.result(id))
                .key(self.keys.revoked(id))
                .key(self.keys.wake(id))
                .key(self.keys.events())
                .key(self.keys.done(&queue))
                .key(self.keys.stream(&queue))
                .arg(id)
                .arg(self.result_ttl_ms())
                .arg(self.marker_ttl_ms())
                .arg(WAKE_TTL.as_millis() as u64)
                .arg(&queue)
                .arg(self.config.lease.as_millis().max(1) as u64)
                .build();
            match as_int(&self.eval(op, "cannot revoke a call").await?) {
                Some(-1) => continue,
                r => return Ok(r == Some(1)),
            }
        }
        Err(Error::Malformed(format!("call {id} keeps changing queues")))
    }

    async fn is_revoked(&self, id: &str) -> Result<bool> {
        if !is_valid_call_id(id) {
            return Ok(false);
        }
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.keys.revoked(id));
        let n: i64 = self.query(&cmd, "cannot check revocation").await?;
        Ok(n > 0)
    }

    async fn revoked_many(&self, ids: &[String]) -> Result<Vec<bool>> {
        // One EXISTS per call in one pipeline (each key may sit on its own
        // cluster slot, which rules out a multi-key command).
        let valid: Vec<&String> = ids.iter().filter(|id| is_valid_call_id(id)).collect();
        if valid.is_empty() {
            return Ok(vec![false; ids.len()]);
        }
        let ops = valid
            .iter()
            .map(|id| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.keys.revoked(id));
                Op::cmd(cmd)
            })
            .collect();
        let replies = self.pipeline(ops, "cannot check revocations").await?;
        let mut found = HashSet::new();
        for (id, r) in valid.into_iter().zip(replies) {
            if matches!(r?, Value::Int(n) if n > 0) {
                found.insert(id.as_str());
            }
        }
        Ok(ids.iter().map(|id| found.contains(id.as_str())).collect())
    }

    async fn register_host(&self, info: &HostInfo) -> Result<()> {
        lock(&self.registered).insert(info.id.clone(), info.clone());
        let stats = HostStats {
            heartbeat_ms: now_ms(),
            ..HostStats::default()
        };
        let mut ops = self.host_record_ops(&info.id, Some(info), &stats)?;
        ops.push(self.host_event_op("host_online", &info.id));
        for r in self.pipeline(ops, "cannot register a host").await? {
            r?;
        }
        Ok(())
    }

    async fn heartbeat(
        &self,
        host_id: &str,
        stats: &HostStats,
        running: &[Delivery],
    ) -> Result<Vec<String>> {
        let info = lock(&self.registered).get(host_id).cloned();
        let mut ops = self.host_record_ops(host_id, info.as_ref(), stats)?;
        ops.push(self.host_event_op("host_heartbeat", host_id));
        let mut by_queue: BTreeMap<&str, Vec<&Delivery>> = BTreeMap::new();
        for d in running {
            by_queue.entry(d.queue.as_str()).or_default().push(d);
        }
        for (queue, deliveries) in &by_queue {
            let mut op = Op::eval(&SCRIPTS.heartbeat)
                .key(self.keys.stream(queue))
                .arg(host_id);
            for d in deliveries {
                op = op.arg(&d.entry_id).arg(d.deliveries);
            }
            ops.push(op.build());
        }
        let replies = self.pipeline(ops, "cannot send a heartbeat").await?;
        // The replies of the per-queue scripts come last, in `by_queue`'s order.
        let first_script = replies.len() - by_queue.len();
        let mut lost = Vec::new();
        for (i, r) in replies.into_iter().enumerate() {
            let v = r?;
            let Some(queue) = i
                .checked_sub(first_script)
                .and_then(|q| by_queue.iter().nth(q))
            else {
                continue;
            };
            for entry in as_array(&v).into_iter().flatten().filter_map(as_string) {
                warn!(host = host_id, entry = %entry,
                    "a running call was reclaimed by another host (this host's lease lapsed)");
                lost.extend(
                    queue
                        .1
                        .iter()
                        .filter(|d| d.entry_id == entry)
                        .map(|d| d.token.clone()),
                );
            }
        }
        // Now and then, record the hosts that died (their lease lapsed).
        if Self::take_turn(&self.last_reap, self.config.lease)
            && let Err(e) = self.reap_hosts().await
        {
            debug!(cause = %e, "cannot look for dead hosts");
        }
        Ok(lost)
    }

    async fn deregister_host(&self, host_id: &str) -> Result<()> {
        let info = lock(&self.registered).remove(host_id);
        let mut ops = vec![self.host_gone_op(host_id, "clean")];
        for q in info.map(|i| i.queues).unwrap_or_default() {
            if is_valid_queue_name(&q) {
                ops.push(
                    Op::eval(&SCRIPTS.drop_consumer)
                        .key(self.keys.stream(&q))
                        .arg(host_id)
                        .build(),
                );
            }
        }
        for r in self.pipeline(ops, "cannot deregister a host").await? {
            r?;
        }
        Ok(())
    }

    async fn claim(
        &self,
        host_id: &str,
        queues: &[String],
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>> {
        for q in queues {
            if !is_valid_queue_name(q) {
                return Err(Error::InvalidName(q.clone()));
            }
        }
        if max == 0 || queues.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen = HashSet::new();
        let queues: Vec<String> = queues
            .iter()
            .filter(|q| seen.insert(q.as_str()))
            .cloned()
            .collect();
        let deadline = Instant::now() + block;
        let mut out = Vec::new();
        // Right after a blocking read that drained the queues, the
        // non-blocking pass would find only what a blocking read returns at
        // once: skip it (one script less per claim, off the latency path).
        if let Some(d) = self.still_drained(host_id, &queues) {
            let now = Instant::now();
            let wait = (deadline.min(d.until) - now)
                .min(self.config.lease / 2)
                .max(Duration::from_millis(1));
            let modules = self.limited_modules().await?;
            self.block_for_new(host_id, &d.blockable, max, wait, &modules, &mut out)
                .await?;
            if !out.is_empty() {
                if out.len() < max {
                    *lock(&self.drained) = Some(d);
                }
                return Ok(out);
            }
        }
        loop {
            let pass = Instant::now();
            let modules = self.limited_modules().await?;
            let reclaim = Self::take_turn(&self.last_reclaim, self.reclaim_interval());
            let gc = reclaim && Self::take_turn(&self.last_gc, self.consumer_gc_idle() / 10);
            let mut next_due: Option<Duration> = None;
            let mut blockable = Vec::new();
            for q in &queues {
                let want = max - out.len();
                if want == 0 {
                    break;
                }
                let (due, open) = self
                    .claim_queue(host_id, q, want, reclaim, gc, &modules, &mut out)
                    .await?;
                next_due = match (next_due, due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if open {
                    blockable.push(q.clone());
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(out);
            }
            // Block for new entries, but wake up for the next delayed call and
            // often enough to keep reclaiming the entries of dead hosts.
            let mut wait = deadline - now;
            wait = wait
                .min(self.config.lease / 2)
                .max(Duration::from_millis(1));
            if let Some(due) = next_due {
                wait = wait.min(due.max(Duration::from_millis(1)));
            }
            if blockable.is_empty() {
                // Paused or out of tokens everywhere: nothing to block on.
                tokio::time::sleep(wait).await;
                continue;
            }
            self.block_for_new(host_id, &blockable, max, wait, &modules, &mut out)
                .await?;
            if !out.is_empty() {
                if out.len() < max {
                    // Until the pass has something to do again: a delayed
                    // call or a bucket due, or at the latest the end of this
                    // claim's block (a resumed queue is noticed by then).
                    let until = pass + next_due.unwrap_or(block).min(block);
                    *lock(&self.drained) = Some(Drained {
                        host_id: host_id.to_string(),
                        queues: queues.clone(),
                        blockable,
                        until,
                    });
                }
                return Ok(out);
            }
        }
    }

    async fn start(&self, delivery: &Delivery, host_id: &str) -> Result<StartOutcome> {
        // The claim revoked or skipped it already (and acknowledged its entry).
        if let Some(outcome @ (StartOutcome::Revoked | StartOutcome::Skip)) = delivery.started {
            return Ok(outcome);
        }
        self.settle(&delivery.token).await?;
        let call = &delivery.call;
        let op = Op::eval(&SCRIPTS.start)
            .key(self.keys.stream(&delivery.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.result(&call.id))
            .key(self.keys.revoked(&call.id))
            .key(self.keys.wake(&call.id))
            .key(self.keys.events())
            .key(self.keys.done(&delivery.queue))
            .arg(&delivery.entry_id)
            .arg(delivery.deliveries)
            .arg(&delivery.token)
            .arg(host_id)
            .arg(call.attempt)
            .arg(&delivery.queue)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(&call.id)
            .arg(&call.task)
            .arg(call.submitted_ms)
            .build();
        let reply = self.eval(op, "cannot start a call").await?;
        match as_string(&reply).as_deref() {
            Some("run") => Ok(StartOutcome::Run),
            Some("revoked") => Ok(StartOutcome::Revoked),
            Some("skip") => Ok(StartOutcome::Skip),
            Some("stale") => {
                debug!(call_id = %call.id, entry = %delivery.entry_id, "stale delivery not started");
                Ok(StartOutcome::Skip)
            }
            _ => Err(Error::Malformed(
                "unexpected reply of the start script".into(),
            )),
        }
    }

    async fn complete(&self, done: &[(Delivery, Envelope)]) -> Result<Vec<bool>> {
        let mut jsons = Vec::with_capacity(done.len());
        for (delivery, envelope) in done {
            check_final(delivery, envelope)?;
            jsons.push(
                serde_json::to_string(envelope).map_err(|e| Error::InvalidCall(e.to_string()))?,
            );
        }
        // One script per queue and chunk, all in one round trip.
        let mut by_queue: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, (d, _)) in done.iter().enumerate() {
            by_queue.entry(d.queue.as_str()).or_default().push(i);
        }
        let chunks: Vec<&[usize]> = by_queue
            .values()
            .flat_map(|indices| indices.chunks(COMPLETE_CHUNK))
            .collect();
        // Held-back admissions of these deliveries: their results' scripts
        // admit them (the admissions stay locked meanwhile, so nothing else
        // sends them, and a failed round trip leaves them as they were).
        let mut deferred: Vec<Arc<Deferred>> = {
            let map = lock(&self.deferred);
            done.iter()
                .filter_map(|(d, _)| map.get(&d.token).cloned())
                .collect()
        };
        deferred.sort_by_key(Arc::as_ptr);
        deferred.dedup_by_key(|d| Arc::as_ptr(d));
        let mut slots = Vec::with_capacity(deferred.len());
        for d in &deferred {
            slots.push(d.admission.lock().await);
        }
        let done_tokens: HashSet<&str> = done.iter().map(|(d, _)| d.token.as_str()).collect();
        let held: HashSet<String> = slots
            .iter()
            .filter_map(|slot| slot.as_ref())
            .flat_map(|a| &a.entries)
            .filter(|e| done_tokens.contains(e.token.as_str()))
            .map(|e| e.token.clone())
            .collect();
        let ops = chunks
            .iter()
            .map(|chunk| self.complete_op(done, &jsons, chunk, &held))
            .collect();
        let replies = self.pipeline(ops, "cannot publish results").await?;
        let mut out = vec![false; done.len()];
        // Deliveries whose admission must go out on its own first, and
        // those a script answered for (admitted or refused, if held).
        let (mut apart, mut answered) = (Vec::new(), HashSet::new());
        let mut outcome = |i: usize, flag: Option<i64>| match flag {
            Some(2) => apart.push(i),
            Some(f) => {
                out[i] = f == 1;
                answered.insert(done[i].0.token.as_str());
            }
            None => {}
        };
        let mut alone = Vec::new();
        for (chunk, r) in chunks.iter().zip(replies) {
            match r {
                Ok(v) => {
                    let flags = as_array(&v).unwrap_or_default();
                    for (k, &i) in chunk.iter().enumerate() {
                        outcome(i, flags.get(k).and_then(as_int));
                    }
                }
                Err(e) if e.is_transient() => return Err(e),
                // One call's bad data stopped the script: find out per call
                // (repeating a completion, or an admission, is harmless).
                Err(_) => alone.extend(chunk.iter().copied()),
            }
        }
        if !alone.is_empty() {
            let ops = alone
                .iter()
                .map(|&i| self.complete_op(done, &jsons, &[i], &held))
                .collect();
            let replies = self.pipeline(ops, "cannot publish results").await?;
            for (&i, r) in alone.iter().zip(replies) {
                match r {
                    Ok(v) => outcome(i, as_array(&v).and_then(|f| f.first()).and_then(as_int)),
                    Err(e) if !e.is_transient() => {
                        // One call's bad data must not hide the others' outcome.
                        warn!(call_id = %done[i].0.call.id, cause = %e, "result not published");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        // What the scripts admitted (or refused) is no longer held; the
        // admission of the rest (left alone, or a script that failed) still
        // goes out, by itself if need be.
        let settled: Vec<String> = held
            .into_iter()
            .filter(|t| answered.contains(t.as_str()))
            .collect();
        let settled_set: HashSet<&str> = settled.iter().map(String::as_str).collect();
        for slot in &mut slots {
            if let Some(a) = slot.as_mut() {
                a.entries
                    .retain(|e| !settled_set.contains(e.token.as_str()));
                if a.entries.is_empty() {
                    **slot = None;
                }
            }
        }
        forget_tokens(&self.deferred, &settled);
        drop(slots);
        // A queue paused or rate-limited since these calls were read: their
        // admission goes first, on its own (it puts them back in line or in
        // the delayed set, refusing them), then the results of those it
        // started after all.
        for i in apart {
            let token = &done[i].0.token;
            let d = lock(&self.deferred).get(token).cloned();
            let refused = match d {
                Some(d) => send_deferred(&self.conn, &self.url, &self.deferred, &d).await?,
                None => HashSet::new(),
            };
            if refused.contains(token) {
                continue;
            }
            let op = self.complete_op(done, &jsons, &[i], &HashSet::new());
            let reply = self
                .pipeline(vec![op], "cannot publish results")
                .await?
                .pop()
                .expect("one reply")?;
            out[i] = as_array(&reply).and_then(|f| f.first()).and_then(as_int) == Some(1);
        }
        Ok(out)
    }

    async fn retry(&self, delivery: &Delivery, last: &Envelope, delay: Duration) -> Result<bool> {
        self.settle(&delivery.token).await?;
        let mut next = delivery.call.clone();
        next.attempt = next.attempt.saturating_add(1);
        let next_json =
            serde_json::to_string(&next).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let last_json =
            serde_json::to_string(last).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let call = &delivery.call;
        let op = Op::eval(&SCRIPTS.retry)
            .key(self.keys.stream(&delivery.queue))
            .key(self.keys.delayed(&delivery.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.events())
            .arg(&delivery.entry_id)
            .arg(delivery.deliveries)
            .arg(&delivery.token)
            .arg(next_json)
            .arg(delay.as_millis() as u64)
            .arg(last_json)
            .arg(self.state_ttl_ms(delay))
            .arg(next.attempt)
            .arg(&call.id)
            .arg(&delivery.queue)
            .arg(&last.host)
            .arg(&call.task)
            .arg(last.error.as_ref().map_or("", |e| e.kind.as_str()))
            .build();
        let reply = self.eval(op, "cannot schedule a retry").await?;
        Ok(as_int(&reply) == Some(1))
    }

    async fn release(&self, delivery: &Delivery) -> Result<bool> {
        self.settle(&delivery.token).await?;
        let call = &delivery.call;
        let json = serde_json::to_string(call).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let op = Op::eval(&SCRIPTS.release)
            .key(self.keys.stream(&delivery.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.result(&call.id))
            .key(self.keys.events())
            .arg(&delivery.entry_id)
            .arg(delivery.deliveries)
            .arg(&delivery.token)
            .arg(json)
            .arg(&call.id)
            .arg(&delivery.queue)
            .arg(&call.task)
            .build();
        let reply = self.eval(op, "cannot release a call").await?;
        Ok(as_int(&reply) == Some(1))
    }

    async fn hosts(&self) -> Result<Vec<(HostInfo, HostStats)>> {
        self.reap_hosts().await?;
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(self.keys.hosts()).arg("-inf").arg(now_ms());
        let mut range = redis::cmd("ZRANGE");
        range.arg(self.keys.hosts()).arg(0).arg(-1);
        let replies = self
            .pipeline(vec![Op::cmd(trim), Op::cmd(range)], "cannot list hosts")
            .await?;
        let ids: Vec<String> = match replies.into_iter().nth(1) {
            Some(Ok(v)) => as_array(&v)
                .map(|a| a.iter().filter_map(as_string).collect())
                .unwrap_or_default(),
            Some(Err(e)) => return Err(e),
            None => Vec::new(),
        };
        let ops: Vec<Op> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("HMGET");
                c.arg(self.keys.host(id)).arg("info").arg("stats");
                Op::cmd(c)
            })
            .collect();
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, r) in ids
            .iter()
            .zip(self.pipeline(ops, "cannot list hosts").await?)
        {
            let v = r?;
            let parts = as_array(&v).unwrap_or_default();
            let info = parts.first().and_then(as_bytes);
            let stats = parts.get(1).and_then(as_bytes);
            let Some(stats) = stats else {
                // Its lease expired since the reaping above: reap it too, so
                // that no host leaves the list without its `host_offline`.
                gone.push(self.host_gone_op(id, "expired"));
                continue;
            };
            let stats: HostStats = serde_json::from_slice(stats).unwrap_or_default();
            let info = info
                .and_then(|i| serde_json::from_slice::<HostInfo>(i).ok())
                .unwrap_or_else(|| HostInfo {
                    id: id.clone(),
                    name: id.clone(),
                    version: String::new(),
                    queues: Vec::new(),
                    concurrency: 0,
                    started_ms: 0,
                });
            out.push((info, stats));
        }
        for r in self.pipeline(gone, "cannot list hosts").await? {
            r?;
        }
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.keys.dead())
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit);
        let reply: Value = self.query(&cmd, "cannot read dead letters").await?;
        Ok(as_array(&reply)
            .unwrap_or_default()
            .iter()
            .filter_map(dead_letter_of)
            .collect())
    }

    async fn events(
        &self,
        after: Option<&str>,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Event>> {
        let count = count.min(MAX_EVENTS_PER_READ);
        if count == 0 {
            return Ok(Vec::new());
        }
        let start = match after {
            Some(a) if is_valid_entry_id(a) => a.to_string(),
            Some(a) => {
                return Err(Error::InvalidArgument(format!(
                    "{a:?} is not an event id (MS-SEQ)"
                )));
            }
            None => {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(self.keys.events())
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count);
                let reply: Value = self.query(&cmd, "cannot read events").await?;
                let mut newest: Vec<Event> = as_array(&reply)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| {
                        let e = as_array(e)?;
                        Some(event_of(
                            &as_string(e.first()?)?,
                            e.get(1).map(reply::fields).unwrap_or_default(),
                        ))
                    })
                    .collect();
                if !newest.is_empty() || block.is_none() {
                    newest.reverse();
                    return Ok(newest);
                }
                // Nothing yet: whatever comes is after the (empty) start.
                "0-0".to_string()
            }
        };
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(count);
        let block = block.filter(|b| !b.is_zero());
        if let Some(b) = block {
            cmd.arg("BLOCK").arg(b.as_millis().max(1) as u64);
        }
        cmd.arg("STREAMS").arg(self.keys.events()).arg(start);
        let reply = match block {
            Some(b) => self
                .blocking
                .query_one(cmd, b)
                .await
                .map_err(|e| self.err(e, "cannot read events"))?,
            None => self.query(&cmd, "cannot read events").await?,
        };
        Ok(stream_entries(&reply)
            .ok_or_else(|| Error::Malformed("unexpected reply of XREAD".into()))?
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .map(|(id, fields)| event_of(&id, fields))
            .collect())
    }

    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let mut members = redis::cmd("SMEMBERS");
        members.arg(self.keys.queues());
        let mut names: Vec<String> = self.query(&members, "cannot list queues").await?;
        for (scope, _) in self.rate_limits().await? {
            if let RateScope::Queue(q) = scope {
                names.push(q);
            }
        }
        for (info, _) in self.hosts().await? {
            names.extend(info.queues);
        }
        let names: std::collections::BTreeSet<String> = names
            .into_iter()
            .filter(|q| is_valid_queue_name(q))
            .collect();
        let ops: Vec<Op> = names
            .iter()
            .map(|q| {
                Op::eval(&SCRIPTS.stats)
                    .key(self.keys.stream(q))
                    .key(self.keys.delayed(q))
                    .key(self.keys.paused(q))
                    .key(self.keys.bucket(&RateScope::Queue(q.clone())))
                    .key(self.keys.done(q))
                    .key(self.keys.latency(q))
                    .key(self.keys.dead_counts())
                    .key(self.keys.dead())
                    .arg(q)
                    .arg(STATS_WINDOW_MS)
                    .arg(crate::ops::LATENCY_SAMPLES)
                    .build()
            })
            .collect();
        let replies = self.pipeline(ops, "cannot read queue stats").await?;
        let mut out = Vec::with_capacity(names.len());
        for (q, r) in names.into_iter().zip(replies) {
            let v = r?;
            let parts = as_array(&v).unwrap_or_default();
            let int = |i: usize| {
                parts
                    .get(i)
                    .and_then(as_int)
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0)
            };
            let float = |i: usize| {
                parts
                    .get(i)
                    .and_then(as_string)
                    .and_then(|s| s.parse::<f64>().ok())
            };
            let (len, pending) = (int(0), int(1));
            let rate = match (float(4), float(5)) {
                (Some(per_second), Some(burst)) => Some(Rate {
                    per_second,
                    burst: burst as u32,
                })
                .filter(Rate::is_valid),
                _ => None,
            };
            out.push(QueueStats {
                queue: q,
                depth: len.saturating_sub(pending),
                pending,
                delayed: int(2),
                paused: int(3) == 1,
                rate,
                throughput_1m: int(6) as f64 / (STATS_WINDOW_MS as f64 / 1000.0),
                dead: int(7),
                p50_ms: float(8),
                p90_ms: float(9),
                p99_ms: float(10),
            });
        }
        Ok(out)
    }

    async fn purge_queue(&self, queue: &str) -> Result<u64> {
        if !is_valid_queue_name(queue) {
            return Err(Error::InvalidName(queue.to_string()));
        }
        const WHAT: &str = "cannot purge a queue";
        let stream = self.keys.stream(queue);
        let mut purged = 0;
        // Waiting entries: after the group's last delivered id, up to the
        // newest entry now (calls submitted meanwhile may stay).
        let mut newest = redis::cmd("XREVRANGE");
        newest.arg(&stream).arg("+").arg("-").arg("COUNT").arg(1);
        let mut groups = redis::cmd("XINFO");
        groups.arg("GROUPS").arg(&stream);
        let mut replies = self
            .pipeline(vec![Op::cmd(newest), Op::cmd(groups)], WHAT)
            .await?
            .into_iter();
        let newest = replies.next().expect("two replies")?;
        let newest = as_array(&newest)
            .and_then(|a| a.first())
            .and_then(as_array)
            .and_then(|e| e.first())
            .and_then(as_string);
        // No group yet (nobody ever claimed): every entry is waiting.
        let mut cursor = match replies.next().expect("two replies") {
            Ok(v) => as_array(&v)
                .unwrap_or_default()
                .iter()
                .map(reply::fields)
                .find(|g| g.iter().any(|(k, v)| k == "name" && v == GROUP.as_bytes()))
                .and_then(|g| {
                    g.into_iter()
                        .find(|(k, _)| k == "last-delivered-id")
                        .map(|(_, v)| String::from_utf8_lossy(&v).into_owned())
                })
                .unwrap_or_else(|| "0-0".into()),
            Err(_) => "0-0".into(),
        };
        if let Some(newest) = newest {
            loop {
                let mut range = redis::cmd("XRANGE");
                range
                    .arg(&stream)
                    .arg(format!("({cursor}"))
                    .arg(&newest)
                    .arg("COUNT")
                    .arg(PURGE_BATCH);
                let reply: Value = self.query(&range, WHAT).await?;
                let entries: reply::Entries = as_array(&reply)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|e| {
                        let e = as_array(e)?;
                        Some((
                            as_string(e.first()?)?,
                            e.get(1).map(reply::fields).unwrap_or_default(),
                        ))
                    })
                    .collect();
                let Some((last, _)) = entries.last() else {
                    break;
                };
                cursor = last.clone();
                let ops: Vec<Op> = entries
                    .iter()
                    .map(|(id, fields)| {
                        let raw = fields
                            .iter()
                            .find(|(f, _)| f == "call")
                            .map_or(&[][..], |(_, v)| v.as_slice());
                        self.purge_op(queue, "stream", id.as_bytes(), raw)
                    })
                    .collect();
                purged += count_ones(self.pipeline(ops, WHAT).await?)?;
            }
        }
        // Delayed calls. Members promoted meanwhile are purged from the
        // stream above or, if promoted after that pass, survive. Bounded by
        // what was there at the start, in case retries keep arriving.
        let mut card = redis::cmd("ZCARD");
        card.arg(self.keys.delayed(queue));
        let there: usize = self.query(&card, WHAT).await?;
        for _ in 0..there.div_ceil(PURGE_BATCH) + 1 {
            let mut range = redis::cmd("ZRANGE");
            range
                .arg(self.keys.delayed(queue))
                .arg(0)
                .arg(PURGE_BATCH - 1);
            let members: Vec<Vec<u8>> = self.query(&range, WHAT).await?;
            if members.is_empty() {
                break;
            }
            let ops: Vec<Op> = members
                .iter()
                .map(|m| self.purge_op(queue, "delayed", m, m))
                .collect();
            // A member not removed was promoted meanwhile: it is gone from the set.
            purged += count_ones(self.pipeline(ops, WHAT).await?)?;
        }
        Ok(purged)
    }

    async fn set_event_level(&self, level: EventLevel) -> Result<()> {
        // Every script reads the level the first time it records an event
        // (`event` in common.lua); no key means `all`.
        let mut cmd = if level == EventLevel::All {
            redis::cmd("DEL")
        } else {
            redis::cmd("SET")
        };
        cmd.arg(self.keys.event_level());
        if level != EventLevel::All {
            cmd.arg(level.as_str());
        }
        let _: Value = self.query(&cmd, "cannot set the event level").await?;
        Ok(())
    }

    async fn event_level(&self) -> Result<EventLevel> {
        let key = self.keys.event_level();
        let mut get = redis::cmd("GET");
        get.arg(&key);
        let reply = self
            .pipeline(vec![Op::cmd(get)], "cannot read the event level")
            .await?
            .pop()
            .expect("one reply");
        let garbage = |what: String| {
            Error::Malformed(format!(
                "{key} holds {what}, not a level: events are recorded at level all"
            ))
        };
        match reply {
            Err(e) if e.is_transient() => Err(e),
            Err(e) => Err(garbage(format!("what GET refuses ({e})"))),
            Ok(v) => match as_bytes(&v) {
                None => Ok(EventLevel::All),
                Some(b) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| {
                        garbage(format!(
                            "{:?}",
                            String::from_utf8_lossy(&b[..b.len().min(64)])
                        ))
                    }),
            },
        }
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        if !is_valid_queue_name(queue) {
            return Err(Error::InvalidName(queue.to_string()));
        }
        let mut flag = redis::cmd(if paused { "SET" } else { "DEL" });
        flag.arg(self.keys.paused(queue));
        if paused {
            flag.arg("1");
        }
        let mut known = redis::cmd("SADD");
        known.arg(self.keys.queues()).arg(queue);
        let ops = vec![Op::cmd(flag), Op::cmd(known)];
        for r in self.pipeline(ops, "cannot pause or resume a queue").await? {
            r?;
        }
        Ok(())
    }

    async fn dead_retry(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.keys.dead()).arg(entry_id).arg(entry_id);
        let reply: Value = self.query(&cmd, "cannot read a dead letter").await?;
        let Some(letter) = as_array(&reply)
            .and_then(|a| a.first())
            .and_then(dead_letter_of)
        else {
            return Ok(false);
        };
        let call = fresh_call(&letter)?;
        let json = serde_json::to_string(&call).map_err(|e| Error::InvalidCall(e.to_string()))?;
        let op = Op::eval(&SCRIPTS.dead_retry)
            .key(self.keys.dead())
            .key(self.keys.dead_counts())
            .key(self.keys.stream(&call.queue))
            .key(self.keys.call(&call.id))
            .key(self.keys.result(&call.id))
            .key(self.keys.wake(&call.id))
            .key(self.keys.events())
            .key(self.keys.queues())
            .arg(entry_id)
            .arg(json)
            .arg(&call.id)
            .arg(&call.queue)
            .arg(&call.task)
            .arg(self.state_ttl_ms(Duration::ZERO))
            .arg(call.submitted_ms)
            .build();
        let reply = self.eval(op, "cannot retry a dead letter").await?;
        Ok(as_int(&reply) == Some(1))
    }

    async fn dead_drop(&self, entry_id: &str) -> Result<bool> {
        check_entry_id(entry_id)?;
        let op = Op::eval(&SCRIPTS.dead_drop)
            .key(self.keys.dead())
            .key(self.keys.dead_counts())
            .arg(entry_id)
            .build();
        let reply = self.eval(op, "cannot drop a dead letter").await?;
        Ok(as_int(&reply) == Some(1))
    }

    async fn set_rate_limit(&self, scope: &RateScope, rate: Option<Rate>) -> Result<()> {
        check_rate(scope, rate.as_ref())?;
        let queue = match scope {
            RateScope::Queue(q) => q.as_str(),
            RateScope::Module(_) => "",
        };
        let (per_second, burst) = match &rate {
            Some(r) => {
                let encoded = encode_rate(r);
                let (p, b) = encoded.split_once(':').expect("encode_rate writes a colon");
                (p.to_string(), b.to_string())
            }
            None => (String::new(), String::new()),
        };
        let op = Op::eval(&SCRIPTS.set_rate)
            .key(self.keys.rates())
            .key(self.keys.bucket(scope))
            .key(self.keys.queues())
            .arg(scope.key())
            .arg(per_second)
            .arg(burst)
            .arg(queue)
            .build();
        self.eval(op, "cannot set a rate limit").await?;
        // This broker's own claims see a module limit at once.
        lock(&self.limits).at = None;
        Ok(())
    }

    async fn rate_limits(&self) -> Result<Vec<(RateScope, Rate)>> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(self.keys.rates());
        let reply: Value = self.query(&cmd, "cannot read the rate limits").await?;
        let mut out: Vec<(RateScope, Rate)> = reply::fields(&reply)
            .into_iter()
            .filter_map(|(k, v)| {
                Some((
                    RateScope::from_key(&k)?,
                    decode_rate(std::str::from_utf8(&v).ok()?)?,
                ))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

impl RedisBroker {
    /// The complete script for the deliveries `chunk` (indices into `done`
    /// and `jsons`, their envelopes' JSON), all of one queue; it admits
    /// those whose token is in `held` (their admission was held back).
    fn complete_op(
        &self,
        done: &[(Delivery, Envelope)],
        jsons: &[String],
        chunk: &[usize],
        held: &HashSet<String>,
    ) -> Op {
        let queue = &done[chunk[0]].0.queue;
        let mut op = Op::eval(&SCRIPTS.complete)
            .key(self.keys.stream(queue))
            .key(self.keys.events())
            .key(self.keys.done(queue))
            .key(self.keys.latency(queue))
            .key(self.keys.paused(queue))
            .key(self.keys.bucket(&RateScope::Queue(queue.clone())));
        for &i in chunk {
            let id = &done[i].0.call.id;
            op = op
                .key(self.keys.call(id))
                .key(self.keys.result(id))
                .key(self.keys.wake(id))
                .key(self.keys.revoked(id));
        }
        // The range of the chunk's entries, for the script's one XPENDING
        // (none if an id is not `ms-seq`, or for a single delivery).
        let ids = chunk.iter().map(|&i| entry_number(&done[i].0.entry_id));
        let id = |(ms, seq): (u64, u64)| format!("{ms}-{seq}");
        let [low, high] = match (ids.clone().min(), ids.max()) {
            (Some(Some(low)), Some(Some(high))) if chunk.len() > 1 => [id(low), id(high)],
            _ => [String::new(), String::new()],
        };
        let mut op = op
            .arg(self.result_ttl_ms())
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .arg(queue)
            .arg(low)
            .arg(high);
        for &i in chunk {
            let (delivery, envelope) = &done[i];
            let call = &delivery.call;
            op = op
                .arg(&delivery.entry_id)
                .arg(delivery.deliveries)
                .arg(&delivery.token)
                .arg(jsons[i].as_str())
                .arg(&call.id)
                .arg(envelope.state.as_str())
                .arg(&envelope.host)
                .arg(&call.task)
                .arg(envelope.error.as_ref().map_or("", |e| e.kind.as_str()))
                .arg(call.submitted_ms)
                .arg(call.attempt)
                .arg(if held.contains(&delivery.token) {
                    "1"
                } else {
                    "0"
                });
        }
        op.build()
    }

    /// The purge script for one waiting entry (`stream`) or delayed member.
    fn purge_op(&self, queue: &str, from: &str, entry: &[u8], raw: &[u8]) -> Op {
        let call = serde_json::from_slice::<Call>(raw)
            .ok()
            .filter(|c| is_valid_call_id(&c.id));
        let id = match &call {
            Some(c) => c.id.clone(),
            None => recognisable_id(raw).unwrap_or_default(),
        };
        Op::eval(&SCRIPTS.purge)
            .key(self.keys.stream(queue))
            .key(self.keys.delayed(queue))
            .key(self.keys.call(&id))
            .key(self.keys.result(&id))
            .key(self.keys.wake(&id))
            .key(self.keys.revoked(&id))
            .key(self.keys.events())
            .key(self.keys.done(queue))
            .arg(from)
            .arg(entry)
            .arg(&id)
            .arg(queue)
            .arg(call.as_ref().map_or(0, |c| c.attempt))
            .arg(call.as_ref().map_or("", |c| c.task.as_str()))
            .arg(call.as_ref().map_or(0, |c| c.submitted_ms))
            .arg(self.result_ttl_ms())
            .arg(self.marker_ttl_ms())
            .arg(WAKE_TTL.as_millis() as u64)
            .build()
    }

    fn host_record_ops(
        &self,
        host_id: &str,
        info: Option<&HostInfo>,
        stats: &HostStats,
    ) -> Result<Vec<Op>> {
        let stats = HostStats {
            heartbeat_ms: now_ms(),
            ..stats.clone()
        };
        let key = self.keys.host(host_id);
        let lease_ms = self.config.lease.as_millis().max(1) as u64;
        let mut hset = redis::cmd("HSET");
        hset.arg(&key)
            .arg("stats")
            .arg(serde_json::to_string(&stats).map_err(|e| Error::Backend(e.to_string()))?);
        if let Some(info) = info {
            hset.arg("info")
                .arg(serde_json::to_string(info).map_err(|e| Error::Backend(e.to_string()))?);
        }
        let mut expire = redis::cmd("PEXPIRE");
        expire.arg(&key).arg(lease_ms);
        // The index only lists candidates; the record's TTL decides liveness.
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(self.keys.hosts())
            .arg(now_ms() + 3 * lease_ms + 60_000)
            .arg(host_id);
        let mut trim = redis::cmd("ZREMRANGEBYSCORE");
        trim.arg(self.keys.hosts()).arg("-inf").arg(now_ms());
        Ok(vec![
            Op::cmd(hset),
            Op::cmd(expire),
            Op::cmd(zadd),
            Op::cmd(trim),
        ])
    }

    /// A host event, on the events stream (its time is the entry id's).
    fn host_event_op(&self, kind: &str, host_id: &str) -> Op {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.keys.events())
            .arg("MAXLEN")
            .arg("~")
            .arg(crate::ops::EVENTS_CAP)
            .arg("*")
            .arg("type")
            .arg(kind)
            .arg("host")
            .arg(host_id);
        Op::cmd(xadd)
    }

    fn host_gone_op(&self, host_id: &str, mode: &str) -> Op {
        Op::eval(&SCRIPTS.host_gone)
            .key(self.keys.hosts())
            .key(self.keys.host(host_id))
            .key(self.keys.events())
            .arg(host_id)
            .arg(mode)
            .build()
    }

    /// Takes hosts whose lease lapsed out of the index, recording
    /// `host_offline` for each (once, whoever notices first).
    async fn reap_hosts(&self) -> Result<()> {
        let mut range = redis::cmd("ZRANGE");
        range.arg(self.keys.hosts()).arg(0).arg(-1);
        let ids: Vec<String> = self.query(&range, "cannot list hosts").await?;
        let ops: Vec<Op> = ids
            .iter()
            .map(|id| {
                let mut c = redis::cmd("EXISTS");
                c.arg(self.keys.host(id));
                Op::cmd(c)
            })
            .collect();
        let mut gone = Vec::new();
        for (id, r) in ids
            .iter()
            .zip(self.pipeline(ops, "cannot list hosts").await?)
        {
            if as_int(&r?) == Some(0) {
                gone.push(self.host_gone_op(id, "expired"));
            }
        }
        for r in self.pipeline(gone, "cannot list hosts").await? {
            r?;
        }
        Ok(())
    }
}

/// The oldest Redis that has every command and option wasq uses.
const MIN_REDIS: (u32, u32) = (7, 0);

/// Loads every script (so a missing `+@scripting` permission shows at once,
/// and the first calls need no extra round trip) and checks the server version.
async fn broker_preflight(conn: &ConnectionManager, shown: &str) -> Result<()> {
    let s = &*SCRIPTS;
    let all = [
        &s.submit,
        &s.claim,
        &s.start,
        &s.complete,
        &s.retry,
        &s.release,
        &s.heartbeat,
        &s.bury,
        &s.revoke,
        &s.drop_consumer,
        &s.admit,
        &s.set_rate,
        &s.stats,
        &s.purge,
        &s.dead_retry,
        &s.dead_drop,
        &s.host_gone,
    ];
    let mut pipe = redis::pipe();
    pipe.cmd("INFO").arg("server");
    for lua in all {
        pipe.cmd("SCRIPT").arg("LOAD").arg(&lua.source).ignore();
    }
    let mut conn = conn.clone();
    let (info,): (String,) = pipe
        .query_async(&mut conn)
        .await
        .map_err(|e| map_err(e, &format!("cannot prepare redis at {shown}")))?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(str::trim)
        .unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !version.is_empty() && found < MIN_REDIS {
        return Err(Error::Backend(format!(
            "redis at {shown} is version {version}; wasq needs {}.{} or newer",
            MIN_REDIS.0, MIN_REDIS.1
        )));
    }
    Ok(())
}

/// Milliseconds of `d`, at most a hundred years': a caller's countdown (say
/// `Duration::MAX`) neither panics nor wraps around into a negative number,
/// and `now + ms` stays a valid score and expiry in Redis.
fn millis_capped(d: Duration) -> u64 {
    const FAR_MS: u128 = 100 * 365 * 24 * 3600 * 1000;
    d.as_millis().min(FAR_MS) as u64
}

/// Checks a call before it is queued.
pub(crate) fn check_call(call: &Call, max_args: u64) -> Result<()> {
    if !is_valid_call_id(&call.id) {
        return Err(Error::InvalidCall(format!(
            "call id {:?} is not 1-128 of [A-Za-z0-9_-]",
            call.id
        )));
    }
    if !is_valid_task_name(&call.task) {
        return Err(Error::InvalidCall(format!(
            "task name {:?} is not [A-Za-z_][A-Za-z0-9_]*",
            call.task
        )));
    }
    if !is_valid_queue_name(&call.queue) {
        return Err(Error::InvalidName(call.queue.clone()));
    }
    if !call.args.get().trim_start().starts_with('[') {
        return Err(Error::InvalidCall(
            "args must be a JSON array, like [4, 5]".into(),
        ));
    }
    let size = call.args.get().len() as u64;
    if size > max_args {
        return Err(Error::InvalidCall(format!(
            "args are {size} bytes, over the limit of {max_args}"
        )));
    }
    Ok(())
}

/// Checks that an envelope can end this delivery's call.
pub(crate) fn check_final(delivery: &Delivery, envelope: &Envelope) -> Result<()> {
    if !envelope.state.is_final() {
        return Err(Error::InvalidCall(format!(
            "cannot complete call {} with a {} envelope",
            delivery.call.id, envelope.state
        )));
    }
    if envelope.id != delivery.call.id {
        return Err(Error::InvalidCall(format!(
            "envelope of call {} given for call {}",
            envelope.id, delivery.call.id
        )));
    }
    Ok(())
}

/// Checks `name` or `name@version`.
pub(crate) fn check_module_ref(name: &str) -> Result<()> {
    let ok = match name.split_once('@') {
        Some((n, v)) => is_valid_module_name(n) && is_valid_module_name(v),
        None => is_valid_module_name(name),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}

/// How many replies are the integer 1.
fn count_ones(replies: Vec<Result<Value>>) -> Result<u64> {
    let mut n = 0;
    for r in replies {
        if as_int(&r?) == Some(1) {
            n += 1;
        }
    }
    Ok(n)
}

/// A dead letter from its stream entry (`[id, fields]`).
fn dead_letter_of(entry: &Value) -> Option<DeadLetter> {
    let parts = as_array(entry)?;
    let entry_id = as_string(parts.first()?)?;
    let fields: HashMap<String, Vec<u8>> = parts
        .get(1)
        .map(reply::fields)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let text = |f: &str| {
        fields
            .get(f)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let reason = text("reason");
    let error = serde_json::from_value::<ErrorKind>(serde_json::Value::String(text("error")))
        .ok()
        .map(|kind| TaskError::new(kind, reason.clone()));
    Some(DeadLetter {
        entry_id,
        id: text("id"),
        queue: text("queue"),
        reason,
        call: text("call"),
        deliveries: text("deliveries").parse().unwrap_or(0),
        ts_ms: text("ts").parse().unwrap_or(0),
        error,
    })
}

/// An event from its stream entry.
fn event_of(id: &str, fields: Vec<(String, Vec<u8>)>) -> Event {
    let fields: HashMap<String, Vec<u8>> = fields.into_iter().collect();
    let text = |f: &str| {
        fields
            .get(f)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let from_id = crate::ops::parse_entry_id(id).map_or(0, |(ms, _)| ms);
    let some = |s: String| Some(s).filter(|s| !s.is_empty());
    Event {
        id: id.to_string(),
        kind: text("type"),
        call_id: text("id"),
        queue: text("queue"),
        task: text("task"),
        host: text("host"),
        ts_ms: text("ts").parse().unwrap_or(from_id),
        error_kind: some(text("error")),
        latency_ms: text("latency").parse().ok(),
    }
}

/// The call of a dead letter, ready to be queued again: attempt 1, submitted
/// now, in the queue it was dead-lettered from.
pub(crate) fn fresh_call(letter: &DeadLetter) -> Result<Call> {
    let mut call: Call = serde_json::from_str(&letter.call).map_err(|e| {
        Error::InvalidCall(format!(
            "dead letter {} holds no valid call ({e}); drop it instead",
            letter.entry_id
        ))
    })?;
    if is_valid_queue_name(&letter.queue) {
        call.queue.clone_from(&letter.queue);
    }
    call.attempt = 1;
    call.submitted_ms = now_ms();
    // It was accepted once; hosts check their own limits when they run it.
    check_call(&call, u64::MAX)?;
    Ok(call)
}

pub(crate) fn check_entry_id(id: &str) -> Result<()> {
    if is_valid_entry_id(id) {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "{id:?} is not a dead-letter entry id (MS-SEQ, as `wasq dead ls` shows)"
        )))
    }
}

pub(crate) fn check_rate(scope: &RateScope, rate: Option<&Rate>) -> Result<()> {
    if let RateScope::Queue(q) = scope
        && !is_valid_queue_name(q)
    {
        return Err(Error::InvalidName(q.clone()));
    }
    match rate {
        Some(r) if !r.is_valid() => Err(Error::InvalidArgument(format!(
            "rate {} a second with burst {} cannot be enforced: it must be positive and finite, the burst at least 1",
            r.per_second, r.burst
        ))),
        _ => Ok(()),
    }
}

/// A fresh fencing token: 128 random bits.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The token of a delivery handed out by one claim: the claim's random
/// prefix and the entry id (unique per claim), as the claim scripts write it.
fn delivery_token(prefix: &str, entry_id: &str) -> String {
    format!("{prefix}:{entry_id}")
}

/// The `call` field of a stream entry.
fn call_field(fields: &[(String, Vec<u8>)]) -> Option<&[u8]> {
    fields
        .iter()
        .find(|(f, _)| f == "call")
        .map(|(_, v)| v.as_slice())
}

/// A queued call, or why it is garbage.
fn parse_call(raw: Option<&[u8]>) -> std::result::Result<Call, String> {
    match raw {
        None => Err("entry has no `call` field".to_string()),
        Some(raw) => serde_json::from_slice::<Call>(raw)
            .map_err(|e| format!("`call` is not a valid call: {e}"))
            .and_then(|c| {
                // Ids become key names: only well-formed ones get that far.
                if is_valid_call_id(&c.id) {
                    Ok(c)
                } else {
                    Err(format!("call id {:?} is not valid", c.id))
                }
            }),
    }
}

/// What a read of a wake-up stream found.
enum Woken {
    /// No entry: no result yet.
    Nothing,
    /// The final envelope the entry carries.
    Envelope(Box<Envelope>),
    /// An entry without a usable envelope (written by an older wasq):
    /// the result exists, read it.
    Bare,
}

/// A stream entry id (`ms-seq`) as numbers, in their order; `None` if it
/// is not one.
fn entry_number(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Whether a call state read from Redis is one a result is still to come for.
fn is_pending(state: &Value) -> bool {
    matches!(as_bytes(state), Some(b"queued" | b"running" | b"retrying"))
}

/// The wake-up in an `XREAD` reply of `id`'s wake-up stream.
fn woken(id: &str, reply: &Value) -> Woken {
    let Some(streams) = stream_entries(reply) else {
        return Woken::Nothing;
    };
    let Some((_, fields)) = streams.into_iter().flat_map(|(_, e)| e).next() else {
        return Woken::Nothing;
    };
    fields
        .iter()
        .find(|(f, _)| f == "env")
        .and_then(|(_, v)| serde_json::from_slice::<Envelope>(v).ok())
        .filter(|env| env.state.is_final() && env.id == id)
        .map_or(Woken::Bare, |env| Woken::Envelope(Box::new(env)))
}

/// What a claim script did about starting an entry (`None`: not started).
fn start_outcome(v: Option<&Value>) -> Option<StartOutcome> {
    match v.and_then(as_bytes)? {
        b"run" => Some(StartOutcome::Run),
        b"revoked" => Some(StartOutcome::Revoked),
        b"skip" => Some(StartOutcome::Skip),
        _ => None,
    }
}

/// The id of a garbage call, if it has a usable one.
pub(crate) fn recognisable_id(raw: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
    let id = v.get("id")?.as_str()?;
    is_valid_call_id(id).then(|| id.to_string())
}

fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

/// Classifies a Redis error: connection trouble is [`Error::Unavailable`].
fn map_err(e: RedisError, what: &str) -> Error {
    use redis::ErrorKind as K;
    use redis::ServerErrorKind as S;
    let transient = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            K::Server(S::BusyLoading | S::TryAgain | S::ClusterDown | S::MasterDown | S::ReadOnly)
        );
    if transient {
        return Error::Unavailable(format!("{what}: {e}"));
    }
    let text = e.to_string();
    if text.contains("WRONGTYPE") || matches!(e.kind(), K::Parse | K::UnexpectedReturnType) {
        return Error::Malformed(format!("{what}: {text}"));
    }
    Error::Backend(format!("{what}: {text}"))
}

/// The URL with its password replaced by `***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://alice:s3cret@h:1/2"),
            "redis://alice:***@h:1/2"
        );
        assert_eq!(redact_url("rediss://:s3cret@h"), "rediss://:***@h");
        assert!(!redact_url("redis://a:p@ss@h").contains("p@ss"));
    }

    #[test]
    fn entry_ids_order_as_numbers() {
        let ids = ["1764512345678-9", "1764512345678-10", "1764512345677-99"];
        let numbers: Vec<_> = ids.iter().map(|id| entry_number(id)).collect();
        assert_eq!(numbers.iter().min(), Some(&Some((1764512345677, 99))));
        assert_eq!(numbers.iter().max(), Some(&Some((1764512345678, 10))));
        for bad in ["", "12", "12-", "-3", "a-1", "1-2-3"] {
            assert_eq!(entry_number(bad), None, "{bad}");
        }
    }

    #[test]
    fn queue_keys_share_a_hash_tag() {
        let k = Keys {
            prefix: "wasq".into(),
        };
        assert_eq!(k.stream("default"), "wasq:{q:default}:stream");
        assert_eq!(k.delayed("default"), "wasq:{q:default}:delayed");
        let k = Keys {
            prefix: "a*b".into(),
        };
        assert_eq!(k.module_pattern(), "a\\*b:module:*");
    }

    #[test]
    fn garbage_ids() {
        assert_eq!(recognisable_id(br#"{"id":"abc"}"#).as_deref(), Some("abc"));
        assert_eq!(recognisable_id(br#"{"id":"a b"}"#), None);
        assert_eq!(recognisable_id(b"nope"), None);
    }

    #[test]
    fn scripts_are_built() {
        // Each script is the common helpers plus its body.
        assert!(SCRIPTS.complete.source.contains("local function publish"));
        assert!(SCRIPTS.complete.source.contains("first final result wins"));
    }
}
