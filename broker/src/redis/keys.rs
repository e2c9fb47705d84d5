//! The key names of a deployment and how long keys live. Rust names its
//! keys here (the scripts name a call's keys from the prefix they are
//! given); `docs/redis.md` lists them and what each holds.

use std::time::Duration;

use crate::ops::RateScope;
use crate::types::ModuleHash;

use super::RedisBroker;

/// The consumer group of every work stream.
pub(super) const GROUP: &str = "hosts";

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
        format!("{}:call:{id}", self.prefix)
    }
    pub(super) fn result(&self, id: &str) -> String {
        format!("{}:result:{id}", self.prefix)
    }
    pub(super) fn wake(&self, id: &str) -> String {
        format!("{}:wake:{id}", self.prefix)
    }
    pub(super) fn revoked(&self, id: &str) -> String {
        format!("{}:revoked:{id}", self.prefix)
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
        format!("{}:events:level", self.prefix)
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
}
