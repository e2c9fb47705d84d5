//! Connections of their own for blocking reads, so a caller blocked on the
//! server never holds up anyone else's commands.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, RedisError, Value};

use super::connect::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
use super::lock;

/// Idle connections kept for blocking commands.
const BLOCKING_POOL: usize = 16;

/// Connections for blocking commands (`XREADGROUP BLOCK`, `XREAD BLOCK`),
/// one per blocked caller so nobody else waits behind them. A connection
/// whose command did not finish (an error, a cancelled future) is dropped,
/// which closes it and unblocks it on the server.
pub(super) struct BlockingPool {
    client: Client,
    idle: Mutex<Vec<MultiplexedConnection>>,
}

impl BlockingPool {
    /// A pool of connections to the server `client` names, none open yet.
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            idle: Mutex::new(Vec::new()),
        }
    }

    async fn connect(&self) -> std::result::Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Runs one blocking command that may take up to `block`.
    pub(super) async fn query_one(
        &self,
        cmd: Cmd,
        block: Duration,
    ) -> std::result::Result<Value, RedisError> {
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
    pub(super) async fn query(
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
