//! The Rust client API: upload modules, submit calls, await results.
//!
//! [`Client`] is async and works over any [`Broker`]; [`BlockingClient`] owns
//! a small runtime and makes a remote task read like a local function call
//! (the RPyC idea):
//!
//! ```no_run
//! use std::time::Duration;
//! use wasq_broker::BlockingClient;
//!
//! let wasq = BlockingClient::connect("redis://127.0.0.1:6379", "wasq")?;
//! let sum: i64 = wasq.call("math", "add", (4, 5), Duration::from_secs(10))?;
//! assert_eq!(sum, 9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Arguments are any `Serialize` value that encodes as a JSON array: a tuple
//! (`(4, 5)`, `("x",)`, `()` for none), a `Vec`, an array, or a
//! `serde_json::Value` array. Anything else is refused with
//! [`Error::InvalidCall`] before it reaches the broker.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::broker::Broker;
use crate::error::{Error, Result};
use crate::types::{
    Call, CallLimits, DEFAULT_QUEUE, Envelope, ErrorKind, Limits, ModuleHash, RetryPolicy,
};

/// Which module a call runs: its hash, a name (`name` or `name@version`,
/// resolved by the broker), or the bytes themselves (uploaded if the broker
/// does not have them yet).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ModuleRef {
    /// A module already stored under this hash.
    Hash(ModuleHash),
    /// A name given with [`Broker::tag`].
    Name(String),
    /// Module bytes; uploaded on first use.
    Bytes(Vec<u8>),
}

impl ModuleRef {
    /// A name, even if it looks like a hash.
    pub fn name(name: impl Into<String>) -> Self {
        Self::Name(name.into())
    }
}

impl From<ModuleHash> for ModuleRef {
    fn from(h: ModuleHash) -> Self {
        Self::Hash(h)
    }
}

impl From<&ModuleHash> for ModuleRef {
    fn from(h: &ModuleHash) -> Self {
        Self::Hash(*h)
    }
}

/// `sha256:HEX` or 64 hex digits is a hash; anything else is a name.
impl From<&str> for ModuleRef {
    fn from(s: &str) -> Self {
        match s.parse() {
            Ok(h) => Self::Hash(h),
            Err(_) => Self::Name(s.to_string()),
        }
    }
}

impl From<String> for ModuleRef {
    fn from(s: String) -> Self {
        Self::from(s.as_str())
    }
}

impl From<Vec<u8>> for ModuleRef {
    fn from(b: Vec<u8>) -> Self {
        Self::Bytes(b)
    }
}

impl From<&[u8]> for ModuleRef {
    fn from(b: &[u8]) -> Self {
        Self::Bytes(b.to_vec())
    }
}

impl From<&Vec<u8>> for ModuleRef {
    fn from(b: &Vec<u8>) -> Self {
        Self::Bytes(b.clone())
    }
}

/// Encodes call arguments, which must be a JSON array. `()` means no arguments.
///
/// # Errors
/// [`Error::InvalidCall`] if they do not serialize or are not an array.
pub fn encode_args(args: &impl Serialize) -> Result<Box<RawValue>> {
    let value = serde_json::to_value(args)
        .map_err(|e| Error::InvalidCall(format!("args do not serialize to JSON: {e}")))?;
    let value = match value {
        serde_json::Value::Null => serde_json::Value::Array(Vec::new()),
        v @ serde_json::Value::Array(_) => v,
        other => {
            let kind = match other {
                serde_json::Value::Bool(_) => "a boolean",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::String(_) => "a string",
                _ => "an object",
            };
            return Err(Error::InvalidCall(format!(
                "args must be a JSON array (a tuple, a Vec or a json! array), got {kind}; \
                 wrap a single argument as (x,)"
            )));
        }
    };
    serde_json::value::to_raw_value(&value)
        .map_err(|e| Error::InvalidCall(format!("args do not serialize to JSON: {e}")))
}

/// An async client over any broker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use std::time::Duration;
/// use wasq_broker::{BrokerConfig, Client, LocalBroker, RetryPolicy};
///
/// let broker = Arc::new(LocalBroker::new(BrokerConfig::default()));
/// # wasq_broker::__doc_adder_host(broker.clone());
/// let client = Client::from_arc(broker);
/// let module = client.upload(b"\0asm\x01\0\0\0").await?;
///
/// // One call, default limits:
/// let id = client.submit(module, "add", (4, 5)).await?;
/// let envelope = client.result(&id, Some(Duration::from_secs(5))).await?.expect("in time");
/// assert_eq!(envelope.result, 9);
///
/// // With a builder: limits, retries, a queue, a countdown.
/// let id = client
///     .call(module, "add")
///     .args([1, 2])
///     .fuel(1_000_000)
///     .retry(RetryPolicy::new(3))
///     .countdown(Duration::from_millis(10))
///     .submit()
///     .await?;
/// assert_eq!(client.result(&id, Some(Duration::from_secs(5))).await?.unwrap().result, 3);
///
/// // Submit and wait in one step (one round trip on Redis):
/// let (_id, envelope) = client
///     .call(module, "add")
///     .args([2, 3])
///     .run(Some(Duration::from_secs(5)))
///     .await?;
/// assert_eq!(envelope.expect("in time").result, 5);
///
/// // Many calls in one round trip, then all their results.
/// let ids = client
///     .submit_many((0..10).map(|i| client.call(module, "add").args((i, i))))
///     .await?;
/// let all = client.results(&ids, Some(Duration::from_secs(5))).await?;
/// assert!(all.iter().all(|e| e.as_ref().is_some_and(|e| e.succeeded())));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Client<B> {
    broker: Arc<B>,
}

impl<B> Clone for Client<B> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
        }
    }
}

impl<B: Broker> Client<B> {
    /// A client that owns its broker.
    pub fn new(broker: B) -> Self {
        Self::from_arc(Arc::new(broker))
    }

    /// A client over a shared broker.
    pub fn from_arc(broker: Arc<B>) -> Self {
        Self { broker }
    }

    /// The broker underneath.
    pub fn broker(&self) -> &Arc<B> {
        &self.broker
    }

    /// Stores module bytes unless the broker has them already (checked first,
    /// so a large module crosses the network once). Returns its hash.
    ///
    /// # Errors
    /// [`Error::ModuleTooLarge`]; broker errors.
    pub async fn upload(&self, bytes: &[u8]) -> Result<ModuleHash> {
        let hash = ModuleHash::of(bytes);
        if !self.broker.has_module(&hash).await? {
            self.broker.put_module(bytes).await?;
        }
        Ok(hash)
    }

    /// The hash a module reference stands for, uploading bytes if needed.
    ///
    /// # Errors
    /// [`Error::ModuleNotFound`] for an unknown name; broker errors.
    pub async fn resolve(&self, module: impl Into<ModuleRef>) -> Result<ModuleHash> {
        match module.into() {
            ModuleRef::Hash(h) => Ok(h),
            ModuleRef::Bytes(b) => self.upload(&b).await,
            ModuleRef::Name(n) => self
                .broker
                .resolve(&n)
                .await?
                .ok_or(Error::ModuleNotFound(n)),
        }
    }

    /// The most a call on `queue` may ask for: the tightest limits of the
    /// live hosts consuming it. `None` when none of them says (no live host,
    /// or hosts too old to announce limits): then only the broker's own
    /// `max_args` applies before queueing.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn queue_limits(&self, queue: &str) -> Result<Option<Limits>> {
        Ok(self
            .broker
            .hosts()
            .await?
            .into_iter()
            .filter(|(info, _)| info.queues.iter().any(|q| q == queue))
            .filter_map(|(info, _)| info.limits)
            .reduce(|a, b| a.tightest(&b)))
    }

    /// Starts building a call of `task` in `module`.
    pub fn call(&self, module: impl Into<ModuleRef>, task: &str) -> CallBuilder<'_, B> {
        CallBuilder {
            client: self,
            module: module.into(),
            task: task.to_string(),
            args: Ok(empty_args()),
            limits: CallLimits::default(),
            retry: None,
            queue: DEFAULT_QUEUE.to_string(),
            countdown: None,
            id: None,
        }
    }

    /// Submits one call with default limits on the default queue; returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidCall`] for args that are not an array or a bad task
    /// name; [`Error::ModuleNotFound`]; broker errors.
    pub async fn submit(
        &self,
        module: impl Into<ModuleRef>,
        task: &str,
        args: impl Serialize,
    ) -> Result<String> {
        self.call(module, task).args(args).submit().await
    }

    /// Submits many calls; calls sharing a countdown (usually all) go in one
    /// round trip. Returns their ids in order.
    ///
    /// # Errors
    /// The first invalid call fails the whole batch before anything is queued.
    pub async fn submit_many<'a>(
        &'a self,
        calls: impl IntoIterator<Item = CallBuilder<'a, B>>,
    ) -> Result<Vec<String>> {
        let mut resolved: HashMap<ModuleRef, ModuleHash> = HashMap::new();
        let mut groups: Vec<(Option<Duration>, Vec<Call>)> = Vec::new();
        let mut ids = Vec::new();
        for builder in calls {
            let module = match resolved.get(&builder.module) {
                Some(h) => *h,
                None => {
                    let h = self.resolve(builder.module.clone()).await?;
                    resolved.insert(builder.module.clone(), h);
                    h
                }
            };
            let countdown = builder.countdown;
            let call = builder.into_call(module)?;
            ids.push(call.id.clone());
            match groups.iter_mut().find(|(c, _)| *c == countdown) {
                Some((_, calls)) => calls.push(call),
                None => groups.push((countdown, vec![call])),
            }
        }
        for (countdown, calls) in &groups {
            self.broker.submit(calls, *countdown).await?;
        }
        Ok(ids)
    }

    /// Waits up to `timeout` (forever with `None`) for a call's final
    /// envelope; `None` if it did not finish in time. A failed task is an
    /// `Ok` envelope with state `failed`: look at [`Envelope::error`].
    ///
    /// # Errors
    /// [`Error::UnknownCall`]; broker errors.
    pub async fn result(&self, id: &str, timeout: Option<Duration>) -> Result<Option<Envelope>> {
        self.broker.wait(id, timeout).await
    }

    /// Waits for several calls, all within one `timeout`; per id its final
    /// envelope or `None` if it was not done in time ([`Broker::wait_many`]:
    /// on Redis, one round trip looks at many results, and the client blocks
    /// only on the oldest call not done yet).
    ///
    /// # Errors
    /// [`Error::UnknownCall`] for any unknown id; broker errors.
    pub async fn results(
        &self,
        ids: &[String],
        timeout: Option<Duration>,
    ) -> Result<Vec<Option<Envelope>>> {
        self.broker.wait_many(ids, timeout).await
    }

    /// The current envelope of a call (final or pending); `None` if unknown.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn status(&self, id: &str) -> Result<Option<Envelope>> {
        self.broker.status(id).await
    }

    /// Revokes a call; false if it is unknown or already final.
    ///
    /// # Errors
    /// Broker errors.
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        self.broker.revoke(id).await
    }
}

fn empty_args() -> Box<RawValue> {
    RawValue::from_string("[]".to_string()).expect("valid JSON")
}

/// A call being put together; see [`Client::call`]. Every setter documents
/// its default.
#[must_use = "a call builder does nothing until submitted"]
#[derive(Debug)]
pub struct CallBuilder<'a, B> {
    client: &'a Client<B>,
    module: ModuleRef,
    task: String,
    args: Result<Box<RawValue>>,
    limits: CallLimits,
    retry: Option<RetryPolicy>,
    queue: String,
    countdown: Option<Duration>,
    id: Option<String>,
}

impl<'a, B: Broker> CallBuilder<'a, B> {
    /// The arguments: a tuple, `Vec`, array or JSON array. Default `[]`.
    pub fn args(mut self, args: impl Serialize) -> Self {
        self.args = encode_args(&args);
        self
    }

    /// All limits at once. Default: none asked, so the host's maximums apply.
    pub fn limits(mut self, limits: CallLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Fuel budget. Default: the host's maximum.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.limits.fuel = Some(fuel);
        self
    }

    /// Memory limit in bytes. Default: the host's maximum.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.limits.memory = Some(bytes);
        self
    }

    /// Wall-clock limit of one run. Default: the host's maximum.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.limits.timeout = Some(timeout);
        self
    }

    /// Limit on the JSON result's size in bytes. Default: the host's maximum.
    pub fn max_output(mut self, bytes: u64) -> Self {
        self.limits.max_output = Some(bytes);
        self
    }

    /// Retries on `task_error`. Default: none.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// The queue. Default [`DEFAULT_QUEUE`].
    pub fn queue(mut self, queue: &str) -> Self {
        self.queue = queue.to_string();
        self
    }

    /// Runs no earlier than this from now (waits in the broker's delayed
    /// set, not in this process). Default: at once.
    pub fn countdown(mut self, delay: Duration) -> Self {
        self.countdown = Some(delay);
        self
    }

    /// Uses this call id instead of a fresh ULID (1–128 of `[A-Za-z0-9_-]`).
    pub fn id(mut self, id: &str) -> Self {
        self.id = Some(id.to_string());
        self
    }

    fn into_call(self, module: ModuleHash) -> Result<Call> {
        let call = Call::new(module, &self.task, self.args?);
        Ok(Call {
            id: self.id.unwrap_or(call.id),
            limits: self.limits,
            retry: self.retry,
            queue: self.queue,
            ..call
        })
    }

    /// The call as it will be queued (module resolved, uploaded if given as bytes).
    ///
    /// # Errors
    /// As [`CallBuilder::submit`].
    pub async fn build(self) -> Result<Call> {
        let module = self.client.resolve(self.module.clone()).await?;
        self.into_call(module)
    }

    /// Submits the call; returns its id.
    ///
    /// # Errors
    /// [`Error::InvalidCall`] for bad args or names; [`Error::ModuleNotFound`]
    /// for an unknown module name; broker errors.
    pub async fn submit(self) -> Result<String> {
        let client = self.client;
        let countdown = self.countdown;
        let call = self.build().await?;
        client
            .broker
            .submit(std::slice::from_ref(&call), countdown)
            .await?;
        Ok(call.id)
    }

    /// Submits the call and waits up to `timeout` (forever with `None`) for
    /// its final envelope, in one round trip where the broker can
    /// ([`Broker::submit_wait`]). Returns the call id, and the envelope
    /// unless the timeout passed first. A countdown set on the builder is
    /// honoured (in two steps).
    ///
    /// # Errors
    /// As [`CallBuilder::submit`] and [`Client::result`].
    pub async fn run(self, timeout: Option<Duration>) -> Result<(String, Option<Envelope>)> {
        let client = self.client;
        let countdown = self.countdown;
        let call = self.build().await?;
        let envelope = match countdown {
            None => client.broker.submit_wait(&call, timeout).await?,
            Some(_) => {
                client
                    .broker
                    .submit(std::slice::from_ref(&call), countdown)
                    .await?;
                client.broker.wait(&call.id, timeout).await?
            }
        };
        Ok((call.id, envelope))
    }
}

/// Why a [`BlockingClient::call`] did not return a value.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The task ran (or was refused) and failed, or was revoked; the envelope
    /// says why ([`CallError::kind`]).
    #[error("call {} {}: {}", .0.id, .0.state, describe(.0))]
    Failed(Box<Envelope>),
    /// No final result within the timeout. The call may still run: revoke it
    /// with its id if its result is no longer wanted.
    #[error("no result for call {id} within {timeout:?}")]
    Timeout {
        /// The call id.
        id: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// The task succeeded but its result does not deserialize into the
    /// requested type.
    #[error("the result of call {id} does not fit the expected type: {source}")]
    Decode {
        /// The call id.
        id: String,
        /// What serde said.
        source: serde_json::Error,
        /// The result as returned.
        result: serde_json::Value,
    },
    /// The broker failed (unreachable, invalid call, unknown module, ...).
    #[error(transparent)]
    Broker(#[from] Error),
}

fn describe(e: &Envelope) -> String {
    e.error
        .as_ref()
        .map_or_else(|| "no error given".to_string(), ToString::to_string)
}

impl CallError {
    /// The envelope of a failed call.
    pub fn envelope(&self) -> Option<&Envelope> {
        match self {
            CallError::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The failure kind of a failed call.
    pub fn kind(&self) -> Option<ErrorKind> {
        self.envelope()?.error.as_ref().map(|e| e.kind)
    }

    /// Whether trying the same call again later may succeed: broker outages
    /// and timeouts, not task failures.
    pub fn is_transient(&self) -> bool {
        match self {
            CallError::Timeout { .. } => true,
            CallError::Broker(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// A synchronous client: owns a single-threaded tokio runtime and blocks on
/// each request, so a remote task reads like a function call.
///
/// Do not use it from inside an async runtime (blocking there panics); use
/// [`Client`] instead.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use wasq_broker::{BlockingClient, BrokerConfig, CallError, ErrorKind, LocalBroker};
///
/// let broker = Arc::new(LocalBroker::new(BrokerConfig::default()));
/// # wasq_broker::__doc_adder_host_thread(broker.clone());
/// let wasq = BlockingClient::from_arc(broker)?;
/// let module = wasq.upload(b"\0asm\x01\0\0\0")?;
///
/// let sum: i64 = wasq.call(module, "add", (4, 5), Duration::from_secs(5))?;
/// assert_eq!(sum, 9);
///
/// // A failing task is an error carrying its envelope:
/// let err = wasq.call::<i64>(module, "add", ("four", 5), Duration::from_secs(5)).unwrap_err();
/// assert_eq!(err.kind(), Some(ErrorKind::TaskError));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct BlockingClient<B> {
    runtime: tokio::runtime::Runtime,
    client: Client<B>,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Backend(format!("cannot start a tokio runtime: {e}")))
}

impl BlockingClient<crate::RedisBroker> {
    /// Connects to Redis with the default [`crate::BrokerConfig`].
    ///
    /// # Errors
    /// As [`crate::RedisBroker::connect`].
    pub fn connect(url: &str, prefix: &str) -> Result<Self> {
        Self::build(|| crate::RedisBroker::connect(url, prefix, crate::BrokerConfig::default()))
    }
}

impl<B: Broker> BlockingClient<B> {
    /// A client over a broker that needs no runtime to be created (like
    /// [`crate::LocalBroker`]).
    ///
    /// # Errors
    /// If the runtime cannot start.
    pub fn new(broker: B) -> Result<Self> {
        Self::from_arc(Arc::new(broker))
    }

    /// A client over a shared broker.
    ///
    /// # Errors
    /// If the runtime cannot start.
    pub fn from_arc(broker: Arc<B>) -> Result<Self> {
        Ok(Self {
            runtime: runtime()?,
            client: Client::from_arc(broker),
        })
    }

    /// Creates the broker inside the client's runtime (a Redis connection
    /// belongs to the runtime it was made in).
    ///
    /// # Errors
    /// If the runtime cannot start or `make` fails.
    pub fn build<F, Fut>(make: F) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<B>>,
    {
        let runtime = runtime()?;
        let broker = runtime.block_on(make())?;
        Ok(Self {
            runtime,
            client: Client::new(broker),
        })
    }

    /// The async client inside, for what this one does not wrap.
    pub fn client(&self) -> &Client<B> {
        &self.client
    }

    /// Runs a future on the client's runtime.
    pub fn block_on<T>(&self, fut: impl Future<Output = T>) -> T {
        self.runtime.block_on(fut)
    }

    /// Calls `task` in `module` with `args` and waits up to `timeout` for its
    /// result, deserialized as `R`.
    ///
    /// # Errors
    /// [`CallError::Failed`] with the envelope if the task failed or was
    /// revoked; [`CallError::Timeout`]; [`CallError::Decode`];
    /// [`CallError::Broker`].
    pub fn call<R: DeserializeOwned>(
        &self,
        module: impl Into<ModuleRef>,
        task: &str,
        args: impl Serialize,
        timeout: Duration,
    ) -> Result<R, CallError> {
        self.runtime.block_on(async {
            let (id, envelope) = self
                .client
                .call(module, task)
                .args(args)
                .run(Some(timeout))
                .await?;
            let Some(envelope) = envelope else {
                return Err(CallError::Timeout { id, timeout });
            };
            if !envelope.succeeded() {
                return Err(CallError::Failed(Box::new(envelope)));
            }
            R::deserialize(&envelope.result).map_err(|source| CallError::Decode {
                id,
                source,
                result: envelope.result.clone(),
            })
        })
    }

    /// Stores module bytes unless already stored; returns the hash.
    ///
    /// # Errors
    /// As [`Client::upload`].
    pub fn upload(&self, bytes: &[u8]) -> Result<ModuleHash> {
        self.runtime.block_on(self.client.upload(bytes))
    }

    /// Submits a call without waiting; returns its id.
    ///
    /// # Errors
    /// As [`Client::submit`].
    pub fn submit(
        &self,
        module: impl Into<ModuleRef>,
        task: &str,
        args: impl Serialize,
    ) -> Result<String> {
        self.runtime
            .block_on(self.client.submit(module, task, args))
    }

    /// Waits for a call's final envelope; `None` on timeout.
    ///
    /// # Errors
    /// As [`Client::result`].
    pub fn result(&self, id: &str, timeout: Option<Duration>) -> Result<Option<Envelope>> {
        self.runtime.block_on(self.client.result(id, timeout))
    }

    /// The current envelope of a call; `None` if unknown.
    ///
    /// # Errors
    /// Broker errors.
    pub fn status(&self, id: &str) -> Result<Option<Envelope>> {
        self.runtime.block_on(self.client.status(id))
    }

    /// Revokes a call; false if unknown or final.
    ///
    /// # Errors
    /// Broker errors.
    pub fn revoke(&self, id: &str) -> Result<bool> {
        self.runtime.block_on(self.client.revoke(id))
    }
}

/// For doc examples only: a stand-in host on `broker` that runs `add(a, b)`
/// for every call (failing with `task_error` when the args are not two
/// integers), as a task on the current runtime.
#[doc(hidden)]
pub fn __doc_adder_host<B: Broker>(broker: Arc<B>) {
    tokio::spawn(adder_host(broker));
}

/// For doc examples only: [`__doc_adder_host`] on a thread of its own.
#[doc(hidden)]
pub fn __doc_adder_host_thread<B: Broker>(broker: Arc<B>) {
    std::thread::spawn(move || {
        let rt = runtime().expect("runtime");
        rt.block_on(adder_host(broker));
    });
}

async fn adder_host<B: Broker>(broker: Arc<B>) {
    use crate::types::{State, TaskError};
    let queues = [DEFAULT_QUEUE.to_string()];
    loop {
        let Ok(deliveries) = broker
            .claim("doc-host", &queues, 16, Duration::from_secs(1))
            .await
        else {
            return;
        };
        for d in deliveries {
            if broker.start(&d, "doc-host").await.ok() != Some(crate::StartOutcome::Run) {
                continue;
            }
            let mut env = Envelope::pending(&d.call.id, State::Succeeded);
            env.attempt = d.call.attempt;
            match serde_json::from_str::<(i64, i64)>(d.call.args.get()) {
                Ok((a, b)) => env.result = (a + b).into(),
                Err(e) => {
                    env = Envelope::failed(
                        &d.call.id,
                        TaskError::new(ErrorKind::TaskError, e.to_string()),
                    );
                }
            }
            let _ = broker.complete(&[(d, env)]).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_must_be_arrays() {
        assert_eq!(encode_args(&(4, 5)).unwrap().get(), "[4,5]");
        assert_eq!(encode_args(&("x",)).unwrap().get(), "[\"x\"]");
        assert_eq!(encode_args(&()).unwrap().get(), "[]");
        assert_eq!(encode_args(&vec![1, 2, 3]).unwrap().get(), "[1,2,3]");
        assert_eq!(
            encode_args(&serde_json::json!([{"a": 1}])).unwrap().get(),
            "[{\"a\":1}]"
        );
        for bad in [
            encode_args(&5).unwrap_err(),
            encode_args(&"x").unwrap_err(),
            encode_args(&serde_json::json!({"a": 1})).unwrap_err(),
        ] {
            assert!(matches!(bad, Error::InvalidCall(ref m) if m.contains("JSON array")));
        }
    }

    #[test]
    fn module_refs() {
        let h = ModuleHash::of(b"x");
        assert_eq!(ModuleRef::from(format!("sha256:{h}")), ModuleRef::Hash(h));
        assert_eq!(ModuleRef::from(h.to_hex()), ModuleRef::Hash(h));
        assert_eq!(ModuleRef::from("math@1"), ModuleRef::Name("math@1".into()));
        assert_eq!(
            ModuleRef::from(&b"ab"[..]),
            ModuleRef::Bytes(b"ab".to_vec())
        );
    }
}
