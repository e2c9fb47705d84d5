//! What an operator sees and controls: the events stream ([`Event`]), queue
//! statistics ([`QueueStats`]) and global rate limits ([`Rate`],
//! [`RateScope`]).
//!
//! Both brokers record the same events and enforce the same limits; the
//! methods that read and change them are on [`crate::Broker`].

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::types::{ModuleHash, is_valid_queue_name};

/// Events kept in the events stream (approximately: Redis trims whole nodes).
pub const EVENTS_CAP: usize = 10_000;

/// How many events one [`crate::Broker::events`] call returns at most.
pub const MAX_EVENTS_PER_READ: usize = 10_000;

/// The window of [`QueueStats::throughput_1m`] and the latency percentiles.
pub const STATS_WINDOW_MS: u64 = 60_000;

/// Latency samples kept per queue for the percentiles: the percentiles are
/// over the last minute, or over the newest this many results if a minute
/// held more.
pub const LATENCY_SAMPLES: usize = 1000;

/// Every kind of [`Event`], in the order a call usually meets them.
///
/// | kind | when | call fields | `error_kind` | `latency_ms` |
/// | --- | --- | --- | --- | --- |
/// | `queued` | submitted (or re-queued from the dead letters) | yes | | |
/// | `started` | a host starts running it | yes, `host` | | |
/// | `retried` | an attempt failed and the next one is scheduled | yes, `host` | the attempt's | |
/// | `released` | a stopping host handed it back to its queue | yes | | |
/// | `succeeded` | final: the task returned | yes, `host` | | yes |
/// | `failed` | final: the task or the infrastructure failed | yes | yes | yes |
/// | `revoked` | final: revoked (or purged) before or while running | yes | `revoked` | yes |
/// | `dead` | an entry went to the dead letters (after its `failed`, if it was a call) | if known | `lost`, `bad_input` | |
/// | `host_online` | a host registered | `host` | | |
/// | `host_heartbeat` | a host renewed its lease | `host` | | |
/// | `host_offline` | a host deregistered, or its lease lapsed | `host` | `lease_expired` if it died | |
///
/// Exactly one of `succeeded`, `failed`, `revoked` ends each call (the
/// first final result wins, so a duplicate delivery adds none).
pub const EVENT_KINDS: &[&str] = &[
    "queued",
    "started",
    "retried",
    "released",
    "succeeded",
    "failed",
    "revoked",
    "dead",
    "host_online",
    "host_heartbeat",
    "host_offline",
];

/// Which events a deployment records: set with
/// [`crate::Broker::set_event_level`], for every client and host at once
/// (Celery's `enable_events` / `disable_events`, without restarts).
///
/// Events are for watching (`wasq events`, the dashboard); nothing else
/// reads them. Queue statistics ([`QueueStats`]), results, dead letters and
/// host records are kept at every level. Host events (`host_online`,
/// `host_heartbeat`, `host_offline`: a few per host per minute) are
/// recorded at every level too. Each call event costs Redis an `XADD`: at
/// [`EventLevel::All`] three per successful call, about a fifth of the
/// server's work per call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    /// Every event of [`EVENT_KINDS`] (the default).
    #[default]
    All,
    /// Everything but `queued` and `started`: how each call ended, and
    /// every retry, release and dead letter on the way.
    Outcomes,
    /// No call events; host events only.
    Off,
}

impl EventLevel {
    /// Every level, from the most recorded.
    pub const ALL: [EventLevel; 3] = [EventLevel::All, EventLevel::Outcomes, EventLevel::Off];

    /// Its name (`all`, `outcomes`, `off`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventLevel::All => "all",
            EventLevel::Outcomes => "outcomes",
            EventLevel::Off => "off",
        }
    }

    /// Whether an event of `kind` is recorded at this level.
    pub fn records(self, kind: &str) -> bool {
        match self {
            EventLevel::All => true,
            _ if kind.starts_with("host_") => true,
            EventLevel::Outcomes => !matches!(kind, "queued" | "started"),
            EventLevel::Off => false,
        }
    }
}

impl fmt::Display for EventLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventLevel::ALL
            .into_iter()
            .find(|l| l.as_str() == s)
            .ok_or_else(|| format!("unknown event level {s:?}; levels: all, outcomes, off"))
    }
}

/// One entry of the events stream: a call changed state, or a host came,
/// stayed or went. See [`EVENT_KINDS`] for the kinds and which fields each
/// fills. Fields that do not apply are empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Its id in the events stream (`MS-SEQ`, increasing): pass it as
    /// `after` to read what came later.
    pub id: String,
    /// What happened (one of [`EVENT_KINDS`]).
    pub kind: String,
    /// The call, for call events.
    pub call_id: String,
    /// The call's queue.
    pub queue: String,
    /// The call's task.
    pub task: String,
    /// The host involved (its id), if any.
    pub host: String,
    /// When, ms since the Unix epoch (the broker's clock).
    pub ts_ms: u64,
    /// The error kind of `failed`, `retried`, `revoked` and `dead` events
    /// (`lease_expired` on a `host_offline` of a host that died).
    pub error_kind: Option<String>,
    /// On final events: ms from the call's submission to this result.
    pub latency_ms: Option<f64>,
}

impl Event {
    /// Whether this event ends its call (`succeeded`, `failed`, `revoked`).
    pub fn is_final(&self) -> bool {
        matches!(self.kind.as_str(), "succeeded" | "failed" | "revoked")
    }
}

/// Whether `id` is a stream entry id as events and dead letters use:
/// `MS` or `MS-SEQ`, decimal.
pub fn is_valid_entry_id(id: &str) -> bool {
    parse_entry_id(id).is_some()
}

/// `MS-SEQ` (or `MS`) as numbers, for ordering.
pub(crate) fn parse_entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A queue as an operator sees it. Counts are taken in one atomic step per
/// queue; rates and percentiles cover the last minute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue name.
    pub queue: String,
    /// Calls waiting in the queue, not yet claimed by any host.
    pub depth: u64,
    /// Calls claimed by a host and not yet done (running, or about to run,
    /// or held by a host that died and not reclaimed yet).
    pub pending: u64,
    /// Calls waiting for their due time: countdowns, retries, and calls held
    /// back by a module rate limit.
    pub delayed: u64,
    /// Dead letters of this queue (entries dead-lettered from it and still
    /// in the dead-letter stream).
    pub dead: u64,
    /// Whether hosts are told not to claim from it.
    pub paused: bool,
    /// Its global rate limit, if any.
    pub rate: Option<Rate>,
    /// Final results (succeeded, failed, revoked) per second over the last minute.
    pub throughput_1m: f64,
    /// Median latency, submission to result, of calls hosts finished in the
    /// last minute (at most the newest [`LATENCY_SAMPLES`]); `None` without any.
    pub p50_ms: Option<f64>,
    /// 90th percentile latency, like `p50_ms`.
    pub p90_ms: Option<f64>,
    /// 99th percentile latency, like `p50_ms`.
    pub p99_ms: Option<f64>,
}

impl QueueStats {
    /// Empty stats of `queue`.
    pub fn empty(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            depth: 0,
            pending: 0,
            delayed: 0,
            dead: 0,
            paused: false,
            rate: None,
            throughput_1m: 0.0,
            p50_ms: None,
            p90_ms: None,
            p99_ms: None,
        }
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted samples.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// A global rate limit: a token bucket that refills `per_second` tokens a
/// second up to `burst`; every call claimed takes one. Enforced by the
/// broker across all hosts, on the broker's clock.
///
/// Written `N/s`, `N/m` or `N/h` (fractions allowed), with an optional
/// `:BURST`: `100/s`, `10/m`, `5/s:20`. Without a burst it is one second's
/// worth of calls, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    /// Tokens added per second.
    pub per_second: f64,
    /// Most tokens the bucket holds: how many calls may start at once after
    /// a quiet spell.
    pub burst: u32,
}

/// Why a rate does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate {0:?}: use N/s, N/m or N/h with an optional :BURST, like 100/s, 10/m, 5/s:20"
)]
pub struct ParseRateError(String);

impl Rate {
    /// `per_second` with the default burst (one second's worth, at least 1).
    pub fn per_second(per_second: f64) -> Self {
        Self {
            per_second,
            burst: default_burst(per_second),
        }
    }

    /// Whether the numbers can be enforced: a positive, finite rate and a
    /// burst of at least 1.
    pub fn is_valid(&self) -> bool {
        self.per_second.is_finite() && self.per_second > 0.0 && self.burst >= 1
    }
}

fn default_burst(per_second: f64) -> u32 {
    if per_second.is_finite() {
        per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
    } else {
        1
    }
}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseRateError(s.chars().take(40).collect());
        let (rate, burst) = match s.trim().split_once(':') {
            Some((r, b)) => (r, Some(b.trim().parse::<u32>().map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let (n, unit) = rate.split_once('/').ok_or_else(bad)?;
        let n: f64 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(bad()),
        };
        let per_second = n / per;
        let rate = Rate {
            per_second,
            burst: burst.unwrap_or_else(|| default_burst(per_second)),
        };
        if rate.is_valid() {
            Ok(rate)
        } else {
            Err(bad())
        }
    }
}

impl fmt::Display for Rate {
    /// The shortest of `N/s`, `N/m`, `N/h` that shows the rate exactly,
    /// then `:BURST` unless the burst is the default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.per_second;
        let whole = |x: f64| (x - x.round()).abs() < 1e-9;
        if whole(r) || r >= 1.0 {
            write!(f, "{}/s", trim_float(r))?;
        } else if whole(r * 60.0) {
            write!(f, "{}/m", trim_float(r * 60.0))?;
        } else {
            write!(f, "{}/h", trim_float(r * 3600.0))?;
        }
        if self.burst != default_burst(r) {
            write!(f, ":{}", self.burst)?;
        }
        Ok(())
    }
}

fn trim_float(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{}", x.round() as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// What a rate limit applies to: every call of a queue, or every call of a
/// module wherever it is queued.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateScope {
    /// Calls claimed from this queue.
    Queue(String),
    /// Calls of this module, in any queue.
    Module(ModuleHash),
}

impl RateScope {
    /// `queue:NAME` or `module:HEX`: its name in the broker's registry.
    pub fn key(&self) -> String {
        match self {
            RateScope::Queue(q) => format!("queue:{q}"),
            RateScope::Module(m) => format!("module:{}", m.to_hex()),
        }
    }

    /// The inverse of [`RateScope::key`]; `None` for anything else.
    pub fn from_key(key: &str) -> Option<Self> {
        match key.split_once(':')? {
            ("queue", q) if is_valid_queue_name(q) => Some(RateScope::Queue(q.to_string())),
            ("module", m) => m.parse().ok().map(RateScope::Module),
            _ => None,
        }
    }
}

impl fmt::Display for RateScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateScope::Queue(q) => write!(f, "queue {q}"),
            RateScope::Module(m) => write!(f, "module sha256:{m}"),
        }
    }
}

/// A rate as stored in a registry value: `PER_SECOND:BURST`.
pub(crate) fn encode_rate(rate: &Rate) -> String {
    format!("{}:{}", rate.per_second, rate.burst)
}

/// The inverse of [`encode_rate`].
pub(crate) fn decode_rate(s: &str) -> Option<Rate> {
    let (r, b) = s.split_once(':')?;
    let rate = Rate {
        per_second: r.parse().ok()?,
        burst: b.parse().ok()?,
    };
    rate.is_valid().then_some(rate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_levels_parse_print_and_filter() {
        for l in EventLevel::ALL {
            assert_eq!(l.as_str().parse::<EventLevel>(), Ok(l));
            assert_eq!(serde_json::to_string(&l).unwrap(), format!("\"{l}\""));
        }
        assert!(
            "loud"
                .parse::<EventLevel>()
                .unwrap_err()
                .contains("outcomes")
        );
        assert_eq!(EventLevel::default(), EventLevel::All);
        let recorded = |l: EventLevel| -> Vec<&str> {
            EVENT_KINDS
                .iter()
                .copied()
                .filter(|k| l.records(k))
                .collect()
        };
        assert_eq!(recorded(EventLevel::All), EVENT_KINDS.to_vec());
        // Outcomes drops exactly the two events of a call going well.
        let dropped: Vec<&str> = EVENT_KINDS
            .iter()
            .copied()
            .filter(|k| !recorded(EventLevel::Outcomes).contains(k))
            .collect();
        assert_eq!(dropped, vec!["queued", "started"]);
        assert_eq!(
            recorded(EventLevel::Off),
            vec!["host_online", "host_heartbeat", "host_offline"]
        );
    }

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "100/s".parse().unwrap();
        assert_eq!(
            r,
            Rate {
                per_second: 100.0,
                burst: 100
            }
        );
        assert_eq!(r.to_string(), "100/s");
        let r: Rate = "10/m".parse().unwrap();
        assert!((r.per_second - 10.0 / 60.0).abs() < 1e-12);
        assert_eq!(r.burst, 1);
        assert_eq!(r.to_string(), "10/m");
        let r: Rate = "5/s:20".parse().unwrap();
        assert_eq!(
            r,
            Rate {
                per_second: 5.0,
                burst: 20
            }
        );
        assert_eq!(r.to_string(), "5/s:20");
        assert_eq!("0.5/s".parse::<Rate>().unwrap().to_string(), "30/m");
        assert_eq!("2/h".parse::<Rate>().unwrap().to_string(), "2/h");
        assert_eq!("2.5/s".parse::<Rate>().unwrap().to_string(), "2.5/s");
        for bad in [
            "", "5", "5/d", "0/s", "-1/s", "x/s", "5/s:0", "5/s:x", "inf/s", "NaN/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        for r in ["100/s", "10/m", "5/s:20", "1/h:3", "0.25/s"] {
            let rate: Rate = r.parse().unwrap();
            assert_eq!(rate.to_string().parse::<Rate>().unwrap(), rate, "{r}");
            assert_eq!(decode_rate(&encode_rate(&rate)), Some(rate));
        }
    }

    #[test]
    fn scopes_round_trip() {
        let h = ModuleHash::of(b"x");
        for s in [RateScope::Queue("fast".into()), RateScope::Module(h)] {
            assert_eq!(RateScope::from_key(&s.key()), Some(s));
        }
        assert_eq!(RateScope::from_key("queue:a:b"), None);
        assert_eq!(RateScope::from_key("other:x"), None);
    }

    #[test]
    fn entry_ids() {
        assert_eq!(parse_entry_id("1-2"), Some((1, 2)));
        assert_eq!(parse_entry_id("17"), Some((17, 0)));
        for bad in ["", "-", "a-1", "1-", "1-2-3", "+", "$"] {
            assert!(!is_valid_entry_id(bad), "{bad}");
        }
    }

    #[test]
    fn percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 90.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
