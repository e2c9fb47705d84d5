//! Connecting: the URL (shown without its password), the shared
//! auto-reconnecting connection, the check that the server is new enough
//! (which also loads every script), and how Redis errors map to [`Error`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError};

use crate::broker::BrokerConfig;
use crate::error::{Error, Result};
use crate::tls::RedisTls;

use super::RedisBroker;
use super::admission::{DEFER_ADMIT, DeferredMap, Limited};
use super::keys::Keys;
use super::pool::BlockingPool;
use super::scripts::SCRIPTS;

/// How long a single request may take before the connection counts as dead.
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The oldest Redis that has every command and option wasq uses.
const MIN_REDIS: (u32, u32) = (7, 0);

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
            blocking: BlockingPool::new(client),
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

    pub(super) fn err(&self, e: RedisError, what: &str) -> Error {
        link_err(&self.url, e, what)
    }
}

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

/// A Redis error while doing `what` on the server at `url`.
pub(super) fn link_err(url: &str, e: RedisError, what: &str) -> Error {
    map_err(e, &format!("{what} (redis at {url})"))
}

/// Classifies a Redis error: connection trouble is [`Error::Unavailable`].
pub(super) fn map_err(e: RedisError, what: &str) -> Error {
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

/// The URL with its password replaced by `***`, for logs and messages.
pub fn redact_url(url: &str) -> String {
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
}
