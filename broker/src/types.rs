//! The data every part of wasq agrees on: module hashes, calls, limits and the
//! result envelope (`docs/envelope.md` in the repository).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Default fuel budget of a call: 10 000 000 000 units (roughly that many wasm instructions).
pub const DEFAULT_FUEL: u64 = 10_000_000_000;
/// Default limit on a call's linear memory (and table) size: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;
/// Default wall-clock limit of a call; time spent sleeping counts.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit on the size of a call's JSON result: 1 MiB.
pub const DEFAULT_MAX_OUTPUT: u64 = 1024 * 1024;
/// Default limit on captured stdout, and separately on stderr: 64 KiB each.
pub const DEFAULT_MAX_STDIO: u64 = 64 * 1024;
/// Default limit on the total bytes of log messages of one call: 64 KiB.
pub const DEFAULT_MAX_LOGS: u64 = 64 * 1024;
/// Default limit on a call's JSON arguments: 1 MiB.
pub const DEFAULT_MAX_ARGS: u64 = 1024 * 1024;
/// Default limit on a module's size: 64 MiB.
pub const DEFAULT_MAX_MODULE: u64 = 64 * 1024 * 1024;

/// The sha256 of a module's bytes: the key it is stored and called under.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleHash([u8; 32]);

impl ModuleHash {
    /// Hashes module bytes.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModuleHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

/// Error returned when a string is not a module hash.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not a module hash (expected 64 hex digits, optionally after `sha256:`): {0:?}")]
pub struct ParseHashError(String);

impl FromStr for ModuleHash {
    type Err = ParseHashError;

    /// Accepts `HEX` or `sha256:HEX` (64 hex digits, either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if hex_part.len() != 64 || hex::decode_to_slice(hex_part, &mut out).is_err() {
            return Err(ParseHashError(s.chars().take(80).collect()));
        }
        Ok(Self(out))
    }
}

impl Serialize for ModuleHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ModuleHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The limits one run is held to. A host has its own maximums (operator
/// configured); a call may ask for less through [`CallLimits`], never more.
/// Hosts announce theirs in their registration; unknown fields are ignored
/// there, so a newer host's limits never make an older client drop the
/// whole registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Fuel units; roughly one per wasm instruction, plus one per byte or
    /// element of bulk memory and table instructions. Deterministic, unlike time.
    pub fuel: u64,
    /// Bytes of linear memory (and table elements × 8) the instance may reach.
    pub memory: u64,
    /// Wall-clock time, sleeping included. Enforced by epoch interruption and a
    /// deadline on the async call, so a guest blocked in a host call still stops.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    /// Bytes of the JSON result (and of a `fail` message).
    pub max_output: u64,
    /// Bytes of captured stdout, and separately of stderr.
    pub max_stdio: u64,
    /// Bytes of log messages in total.
    pub max_logs: u64,
    /// Bytes of the JSON args.
    pub max_args: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: DEFAULT_FUEL,
            memory: DEFAULT_MEMORY,
            timeout: DEFAULT_TIMEOUT,
            max_output: DEFAULT_MAX_OUTPUT,
            max_stdio: DEFAULT_MAX_STDIO,
            max_logs: DEFAULT_MAX_LOGS,
            max_args: DEFAULT_MAX_ARGS,
        }
    }
}

impl Limits {
    /// These limits lowered by what a call asks for; a call can never raise them.
    pub fn restrict(&self, call: &CallLimits) -> Limits {
        let lower = |host: u64, asked: Option<u64>| asked.map_or(host, |a| a.min(host));
        Limits {
            fuel: lower(self.fuel, call.fuel),
            memory: lower(self.memory, call.memory),
            timeout: call.timeout.map_or(self.timeout, |t| t.min(self.timeout)),
            max_output: lower(self.max_output, call.max_output),
            ..*self
        }
    }

    /// Each limit the lower of these and `other`'s: what a call may ask for
    /// when either host may run it.
    pub fn tightest(&self, other: &Limits) -> Limits {
        Limits {
            fuel: self.fuel.min(other.fuel),
            memory: self.memory.min(other.memory),
            timeout: self.timeout.min(other.timeout),
            max_output: self.max_output.min(other.max_output),
            max_stdio: self.max_stdio.min(other.max_stdio),
            max_logs: self.max_logs.min(other.max_logs),
            max_args: self.max_args.min(other.max_args),
        }
    }

    /// Why a call with `args_len` bytes of args asking for `asked` does not
    /// fit these limits (each figure named with the limit it passes), or
    /// `None` when it fits. [`Limits::restrict`] lowers what a call asks
    /// for silently; a client checks this first to say so instead.
    pub fn misfit(&self, asked: &CallLimits, args_len: u64) -> Option<String> {
        let over = |what: &str, asked: Option<u64>, limit: u64, unit: &str| {
            asked
                .filter(|a| *a > limit)
                .map(|a| format!("{what} of {a}{unit} is over the limit of {limit}{unit}"))
        };
        if args_len > self.max_args {
            return Some(format!(
                "args of {args_len} bytes are over the limit of {} bytes",
                self.max_args
            ));
        }
        over("fuel", asked.fuel, self.fuel, "")
            .or_else(|| over("memory", asked.memory, self.memory, " bytes"))
            .or_else(|| {
                asked.timeout.filter(|t| *t > self.timeout).map(|t| {
                    format!(
                        "a timeout of {} s is over the limit of {} s",
                        t.as_secs_f64(),
                        self.timeout.as_secs_f64()
                    )
                })
            })
            .or_else(|| over("max_output", asked.max_output, self.max_output, " bytes"))
    }
}

/// What a call asks for; `None` means "the host's maximum".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallLimits {
    /// Fuel budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Wall-clock limit.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_duration_secs"
    )]
    pub timeout: Option<Duration>,
    /// Result size limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output: Option<u64>,
}

/// Where a run stands. Serialized in snake_case, as in the envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting in a queue (or in the delayed set).
    Queued,
    /// Claimed by a host and running.
    Running,
    /// Failed an attempt; waiting for the next one.
    Retrying,
    /// Final: the task returned.
    Succeeded,
    /// Final: the task or the infrastructure failed; `error` says why.
    Failed,
    /// Final: revoked before or while running.
    Revoked,
}

impl State {
    /// Whether no further change can happen.
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Failed | State::Revoked)
    }

    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Running => "running",
            State::Retrying => "retrying",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Revoked => "revoked",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a run failed (`docs/envelope.md`, "Error kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The guest called `fail` (or panicked with a message).
    TaskError,
    /// A wasm trap: unreachable, out-of-bounds access, stack overflow, …
    Trap,
    /// The fuel budget ran out.
    FuelExhausted,
    /// The wall-clock limit passed.
    Timeout,
    /// Memory or tables would grow past the limit.
    MemoryLimit,
    /// Result, stdout, stderr or logs past their limit.
    OutputLimit,
    /// Not valid wasm, a disallowed import, no memory, a bad task signature.
    InvalidModule,
    /// The module has no export `task.<name>`.
    TaskNotFound,
    /// Args are not a JSON array, too large, or do not fit the task's parameters.
    BadInput,
    /// No module with that hash or name is stored.
    ModuleNotFound,
    /// Stored module bytes do not hash to their key.
    Integrity,
    /// The call was revoked before or while running.
    Revoked,
    /// Every delivery's host died; the delivery limit was reached.
    Lost,
}

impl ErrorKind {
    /// The snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::TaskError => "task_error",
            ErrorKind::Trap => "trap",
            ErrorKind::FuelExhausted => "fuel_exhausted",
            ErrorKind::Timeout => "timeout",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::InvalidModule => "invalid_module",
            ErrorKind::TaskNotFound => "task_not_found",
            ErrorKind::BadInput => "bad_input",
            ErrorKind::ModuleNotFound => "module_not_found",
            ErrorKind::Integrity => "integrity",
            ErrorKind::Revoked => "revoked",
            ErrorKind::Lost => "lost",
        }
    }

    /// Whether a failure of this kind may be retried when the call asked for
    /// retries. Only the guest's own `task_error` is: every other kind would
    /// fail the same way again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::TaskError)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` member of a failed envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    /// The machine-readable kind.
    pub kind: ErrorKind,
    /// A human-readable explanation.
    pub message: String,
}

impl TaskError {
    /// Builds an error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// One line a task logged through the `log` import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// 0 trace, 1 debug, 2 info, 3 warn, 4 error.
    pub level: u8,
    /// The message (lossy UTF-8).
    pub message: String,
}

/// The outcome of a call: the same shape from `wasq exec`, `wasq submit --wait`
/// and the Rust client API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The call id (a ULID).
    pub id: String,
    /// Where the call stands.
    pub state: State,
    /// The task's JSON result; `null` unless succeeded.
    pub result: serde_json::Value,
    /// Why it failed; `null` unless failed or revoked.
    pub error: Option<TaskError>,
    /// Captured stdout (lossy UTF-8, bounded).
    pub stdout: String,
    /// Captured stderr (lossy UTF-8, bounded).
    pub stderr: String,
    /// Log lines, in order.
    pub logs: Vec<LogLine>,
    /// Fuel consumed by the run (including `_initialize`).
    pub fuel_used: u64,
    /// Wall time of the run in milliseconds (instantiate to return).
    pub duration_ms: f64,
    /// Which attempt produced this envelope, from 1.
    pub attempt: u32,
    /// The host that ran it, `name/pid`; empty if no host ran it.
    pub host: String,
}

impl Envelope {
    /// An envelope for a call that has not produced a result yet.
    pub fn pending(id: impl Into<String>, state: State) -> Self {
        Self {
            id: id.into(),
            state,
            result: serde_json::Value::Null,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            logs: Vec::new(),
            fuel_used: 0,
            duration_ms: 0.0,
            attempt: 0,
            host: String::new(),
        }
    }

    /// A failed envelope that no run produced (module missing, bad input, …).
    pub fn failed(id: impl Into<String>, error: TaskError) -> Self {
        let mut e = Self::pending(id, State::Failed);
        if error.kind == ErrorKind::Revoked {
            e.state = State::Revoked;
        }
        e.error = Some(error);
        e
    }

    /// Whether the call succeeded.
    pub fn succeeded(&self) -> bool {
        self.state == State::Succeeded
    }
}

/// A retry policy for `task_error` failures: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so at most `retries + 1` attempts).
    pub retries: u32,
    /// Delay before the first retry; doubled for each further one.
    #[serde(with = "duration_secs")]
    pub backoff: Duration,
    /// Upper bound of the delay.
    #[serde(with = "duration_secs")]
    pub max_backoff: Duration,
}

/// Default first backoff of a retry: 200 ms.
pub const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
/// Default upper bound on a retry's backoff: 60 s.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);

impl RetryPolicy {
    /// `retries` retries with the default backoff.
    pub fn new(retries: u32) -> Self {
        Self {
            retries,
            backoff: DEFAULT_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }

    /// The delay before attempt `next_attempt` (2 is the first retry): the
    /// exponential step with "equal jitter" (half fixed, half random), so
    /// retries of many failed calls spread out instead of arriving together.
    pub fn delay(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// A call as it travels through a queue. Args stay raw JSON: the host hands
/// them to the guest as they are, without re-encoding. Unknown fields are
/// ignored, so a newer client's calls still run on older hosts during a
/// rolling upgrade.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Call {
    /// The call id (a ULID); also the key of its result.
    pub id: String,
    /// The module to run, always resolved to its hash before queueing.
    pub module: ModuleHash,
    /// The task name (`task.<name>` export).
    pub task: String,
    /// The JSON array of arguments, as submitted.
    pub args: Box<RawValue>,
    /// What the call asks of the sandbox.
    #[serde(default)]
    pub limits: CallLimits,
    /// Which attempt this is, from 1.
    #[serde(default = "one")]
    pub attempt: u32,
    /// Submit time, milliseconds since the Unix epoch.
    #[serde(default)]
    pub submitted_ms: u64,
    /// Retries for `task_error`, if asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    /// The queue the call was submitted to.
    #[serde(default = "default_queue")]
    pub queue: String,
}

impl Call {
    /// A first attempt of `task` in `module` with `args` (a JSON array), on
    /// the default queue, with a fresh id, no limits asked and no retries;
    /// set the other fields with struct update syntax:
    /// `Call { queue: "cpu".into(), ..Call::new(hash, "fib", args) }`.
    pub fn new(module: ModuleHash, task: &str, args: Box<RawValue>) -> Self {
        Self {
            id: new_call_id(),
            module,
            task: task.to_string(),
            args,
            limits: CallLimits::default(),
            attempt: 1,
            submitted_ms: now_ms(),
            retry: None,
            queue: DEFAULT_QUEUE.to_string(),
        }
    }
}

fn one() -> u32 {
    1
}

fn default_queue() -> String {
    DEFAULT_QUEUE.to_string()
}

/// The queue calls go to when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// A fresh call id: a ULID, sortable by creation time.
pub fn new_call_id() -> String {
    ulid::Ulid::new().to_string()
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether `name` is a valid task name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_task_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether `id` can be a call id: 1–128 of `[A-Za-z0-9_-]` (a ULID from
/// [`new_call_id`] always is). Ids become part of keys, so nothing else is
/// accepted.
pub fn is_valid_call_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// Whether `name` can name a module (or a module version): 1–128 of
/// `[A-Za-z0-9_.-]`. `@` separates a name from its version and is therefore
/// not part of either.
pub fn is_valid_module_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether `name` is a valid queue name: 1–64 of `[A-Za-z0-9_.-]`. Queue names
/// become part of Redis keys, so braces and colons are kept out.
pub fn is_valid_queue_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

mod duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

mod opt_duration_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<f64>::deserialize(d)? {
            Some(secs) => Duration::try_from_secs_f64(secs)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_parses_both_forms_and_rejects_garbage() {
        let h = ModuleHash::of(b"abc");
        assert_eq!(h.to_hex().parse::<ModuleHash>().unwrap(), h);
        assert_eq!(format!("sha256:{h}").parse::<ModuleHash>().unwrap(), h);
        assert!("abc".parse::<ModuleHash>().is_err());
        assert!("zz".repeat(32).parse::<ModuleHash>().is_err());
    }

    #[test]
    fn call_limits_only_lower() {
        let host = Limits::default();
        let asked = CallLimits {
            fuel: Some(5),
            memory: Some(u64::MAX),
            timeout: Some(Duration::from_secs(3600)),
            max_output: None,
        };
        let eff = host.restrict(&asked);
        assert_eq!(eff.fuel, 5);
        assert_eq!(eff.memory, host.memory);
        assert_eq!(eff.timeout, host.timeout);
        assert_eq!(eff.max_output, host.max_output);
    }

    #[test]
    fn a_misfit_names_the_figure_and_the_limit() {
        let host = Limits::default();
        assert_eq!(host.misfit(&CallLimits::default(), host.max_args), None);
        let within = CallLimits {
            fuel: Some(host.fuel),
            timeout: Some(host.timeout),
            ..CallLimits::default()
        };
        assert_eq!(host.misfit(&within, 10), None);
        assert_eq!(
            host.misfit(&CallLimits::default(), host.max_args + 1)
                .unwrap(),
            format!(
                "args of {} bytes are over the limit of {} bytes",
                host.max_args + 1,
                host.max_args
            )
        );
        let slow = CallLimits {
            timeout: Some(Duration::from_secs(60)),
            ..CallLimits::default()
        };
        assert_eq!(
            host.misfit(&slow, 2).unwrap(),
            "a timeout of 60 s is over the limit of 30 s"
        );
        let hungry = CallLimits {
            memory: Some(host.memory * 2),
            ..CallLimits::default()
        };
        assert!(host.misfit(&hungry, 2).unwrap().starts_with("memory of "));
    }

    #[test]
    fn announced_limits_read_with_fields_a_newer_host_adds() {
        let mut json = serde_json::to_value(Limits::default()).unwrap();
        json["max_sockets"] = serde_json::json!(4);
        let read: Limits = serde_json::from_value(json).unwrap();
        assert_eq!(read, Limits::default());
    }

    #[test]
    fn the_tightest_of_two_hosts_takes_each_lower_limit() {
        let a = Limits {
            fuel: 10,
            timeout: Duration::from_secs(60),
            ..Limits::default()
        };
        let b = Limits {
            max_args: 5,
            ..Limits::default()
        };
        let t = a.tightest(&b);
        assert_eq!((t.fuel, t.timeout, t.max_args), (10, DEFAULT_TIMEOUT, 5));
    }

    #[test]
    fn envelope_serializes_as_designed() {
        let mut e = Envelope::failed("x", TaskError::new(ErrorKind::FuelExhausted, "out"));
        e.attempt = 1;
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["state"], "failed");
        assert_eq!(v["error"]["kind"], "fuel_exhausted");
        assert!(v["result"].is_null());
        for key in [
            "id",
            "state",
            "result",
            "error",
            "stdout",
            "stderr",
            "logs",
            "fuel_used",
            "duration_ms",
            "attempt",
            "host",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let p = RetryPolicy {
            retries: 10,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        let d2 = p.delay(2);
        assert!(d2 >= Duration::from_millis(50) && d2 <= Duration::from_millis(100));
        let d4 = p.delay(4);
        assert!(d4 >= Duration::from_millis(200) && d4 <= Duration::from_millis(400));
        assert!(p.delay(30) <= Duration::from_secs(1));
    }

    #[test]
    fn names() {
        assert!(is_valid_task_name("add"));
        assert!(is_valid_task_name("_x9"));
        assert!(!is_valid_task_name("9x"));
        assert!(!is_valid_task_name(""));
        assert!(!is_valid_task_name("a-b"));
        assert!(is_valid_queue_name("default"));
        assert!(!is_valid_queue_name("a{b}"));
        assert!(!is_valid_queue_name("a:b"));
    }
}
