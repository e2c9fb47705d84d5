//! The key names of a deployment and how long keys live. Rust names its
//! keys here; the scripts name a call's keys from the prefix they are given
//! and the parts below, which [`lua_prelude`] hands them, so a key name has
//! one source. `docs/redis.md` lists the keys and what each holds.

use std::time::Duration;

use crate::ops::RateScope;
use crate::types::ModuleHash;

use super::RedisBroker;

/// The consumer group of every work stream.
pub(super) const GROUP: &str = "hosts";

/// The part of a call's state key after the prefix (`P:call:ID`).
const CALL: &str = "call";
/// The part of a call's result key (`P:result:ID`).
const RESULT: &str = "result";
/// The part of a call's wake-up stream (`P:wake:ID`).
const WAKE: &str = "wake";
/// The part of a call's revoked flag (`P:revoked:ID`).
const REVOKED: &str = "revoked";
/// The suffix of the events key that holds the event level (`P:events:level`).
const LEVEL: &str = "level";

/// How long the per-queue counters of final results (the `done` hash and
/// the `latency` samples) stay once the queue is idle.
const COUNTERS_TTL: Duration = Duration::from_secs(180);
/// How far back the `done` hash keeps its per-second counts.
const COUNTERS_KEEP: Duration = Duration::from_secs(120);

/// How long a wake-up stays for waiters that checked just before it came.
pub(super) const WAKE_TTL: Duration = Duration::from_secs(300);

/// How long the "published by this token" marker stays (capped by the result TTL).
const MARKER_TTL: Duration = Duration::from_secs(3600);

/// The key names of one deployment.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn module(&self, hash: &ModuleHash) -> String {
        format!("{}:module:{}", self.prefix, hash.to_hex())
    }
    pub(super) fn module_pattern(&self) -> String {
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
    pub(super) fn names(&self) -> String {
        format!("{}:names", self.prefix)
    }
    pub(super) fn stream(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:stream", self.prefix)
    }
    pub(super) fn delayed(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:delayed", self.prefix)
    }
    pub(super) fn call(&self, id: &str) -> String {
        format!("{}:{CALL}:{id}", self.prefix)
    }
    pub(super) fn result(&self, id: &str) -> String {
        format!("{}:{RESULT}:{id}", self.prefix)
    }
    pub(super) fn wake(&self, id: &str) -> String {
        format!("{}:{WAKE}:{id}", self.prefix)
    }
    pub(super) fn revoked(&self, id: &str) -> String {
        format!("{}:{REVOKED}:{id}", self.prefix)
    }
    pub(super) fn host(&self, id: &str) -> String {
        format!("{}:host:{id}", self.prefix)
    }
    pub(super) fn hosts(&self) -> String {
        format!("{}:hosts", self.prefix)
    }
    pub(super) fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }
    pub(super) fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    /// Read by scripts as the events key plus `:level`.
    pub(super) fn event_level(&self) -> String {
        format!("{}:{LEVEL}", self.events())
    }
    pub(super) fn dead_counts(&self) -> String {
        format!("{}:dead:counts", self.prefix)
    }
    pub(super) fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }
    pub(super) fn paused(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:paused", self.prefix)
    }
    pub(super) fn done(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:done", self.prefix)
    }
    pub(super) fn latency(&self, queue: &str) -> String {
        format!("{}:{{q:{queue}}}:latency", self.prefix)
    }
    pub(super) fn rates(&self) -> String {
        format!("{}:rates", self.prefix)
    }
    pub(super) fn bucket(&self, scope: &RateScope) -> String {
        match scope {
            RateScope::Queue(q) => format!("{}:{{q:{q}}}:rate", self.prefix),
            RateScope::Module(m) => format!("{}:rate:module:{}", self.prefix, m.to_hex()),
        }
    }
}

impl RedisBroker {
    pub(super) fn result_ttl_ms(&self) -> u64 {
        self.config.result_ttl.as_millis() as u64
    }

    pub(super) fn marker_ttl_ms(&self) -> u64 {
        let ttl = if self.config.result_ttl.is_zero() {
            MARKER_TTL
        } else {
            self.config.result_ttl.min(MARKER_TTL)
        };
        (ttl.as_millis() as u64).max(1)
    }

    /// TTL of a pending state that waits `extra` before running.
    pub(super) fn state_ttl_ms(&self, extra: Duration) -> u64 {
        if self.config.result_ttl.is_zero() {
            0
        } else {
            millis_capped(self.config.result_ttl.saturating_add(extra))
        }
    }

    /// The queue's keys, its pause flag and rate bucket, the events and
    /// counters its started calls touch, then the limited modules' buckets:
    /// the keys of `claim.lua` and `admit.lua`.
    pub(super) fn limit_keys(&self, queue: &str, modules: &[ModuleHash]) -> Vec<String> {
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
}

/// The Lua prelude of every script: the key-name parts and shared constants
/// above (and the caps of [`crate::ops`]), as Lua locals, so the scripts
/// and Rust name keys and cap streams alike. Numbers go as text: Redis 7.0
/// formats numbers handed to `redis.call` with `%.17g`, which costs more
/// than the command (see `common.lua`).
pub(super) fn lua_prelude() -> String {
    use crate::ops::{EVENTS_CAP, LATENCY_SAMPLES};
    format!(
        "-- Generated from the Rust constants (broker/src/redis/keys.rs, ops.rs).\n\
         local GROUP = '{GROUP}'\n\
         local CALL_PART, RESULT_PART = ':{CALL}:', ':{RESULT}:'\n\
         local WAKE_PART, REVOKED_PART = ':{WAKE}:', ':{REVOKED}:'\n\
         local LEVEL_SUFFIX = ':{LEVEL}'\n\
         local TOKEN_SEP = '{TOKEN_SEP}'\n\
         local EVENTS_CAP = '{EVENTS_CAP}'\n\
         local LATENCY_CAP = '{LATENCY_SAMPLES}'\n\
         local COUNTERS_TTL_MS = '{}'\n\
         local COUNTERS_KEEP_S = {}\n",
        COUNTERS_TTL.as_millis(),
        COUNTERS_KEEP.as_secs(),
    )
}

/// Between a claim's token prefix and an entry id in a delivery's token.
pub(super) const TOKEN_SEP: &str = ":";

/// Milliseconds of `d`, at most a hundred years': a caller's countdown (say
/// `Duration::MAX`) neither panics nor wraps around into a negative number,
/// and `now + ms` stays a valid score and expiry in Redis.
pub(crate) fn millis_capped(d: Duration) -> u64 {
    const FAR_MS: u128 = 100 * 365 * 24 * 3600 * 1000;
    d.as_millis().min(FAR_MS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_prelude_names_keys_as_rust_does() {
        let k = Keys { prefix: "p".into() };
        let prelude = lua_prelude();
        for (part, key) in [
            ("CALL_PART", k.call("x")),
            ("RESULT_PART", k.result("x")),
            ("WAKE_PART", k.wake("x")),
            ("REVOKED_PART", k.revoked("x")),
        ] {
            assert!(prelude.contains(part), "{part} missing");
            let middle = key.strip_prefix('p').unwrap().strip_suffix('x').unwrap();
            assert!(prelude.contains(&format!("'{middle}'")), "{key}: {prelude}");
        }
        assert_eq!(k.event_level(), format!("{}:level", k.events()));
        assert!(prelude.contains("local GROUP = 'hosts'"));
    }
}
