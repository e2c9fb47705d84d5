//! The Lua scripts and how commands reach the server: each script is the
//! prelude of key-name parts and constants generated from Rust
//! ([`lua_prelude`]), `common.lua` and its own body; [`Op`] is one command of a
//! pipeline, built with [`Op::eval`] for a script; `run_pipeline` sends a
//! batch in one round trip and, when a restarted server lost its scripts
//! (`NOSCRIPT`), loads them and runs those commands again.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisError, ToRedisArgs, Value};
use tracing::debug;

use crate::error::{Error, Result};

use super::RedisBroker;
use super::connect::link_err;
use super::keys::lua_prelude;

/// A Lua script: the generated prelude, `common.lua`, then the script's own body.
pub(super) struct Lua {
    name: &'static str,
    script: redis::Script,
    pub(super) source: String,
}

impl Lua {
    fn new(name: &'static str, body: &str) -> Self {
        let source = format!("{}{}\n{}", lua_prelude(), include_str!("common.lua"), body);
        Self {
            name,
            script: redis::Script::new(&source),
            source,
        }
    }
}

pub(super) struct Scripts {
    pub(super) submit: Lua,
    pub(super) claim: Lua,
    pub(super) start: Lua,
    pub(super) complete: Lua,
    pub(super) retry: Lua,
    pub(super) release: Lua,
    pub(super) heartbeat: Lua,
    pub(super) bury: Lua,
    pub(super) revoke: Lua,
    pub(super) drop_consumer: Lua,
    pub(super) admit: Lua,
    pub(super) set_rate: Lua,
    pub(super) stats: Lua,
    pub(super) purge: Lua,
    pub(super) dead_retry: Lua,
    pub(super) dead_drop: Lua,
    pub(super) host_gone: Lua,
    pub(super) listen: Lua,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    submit: Lua::new("submit", include_str!("submit.lua")),
    claim: Lua::new("claim", include_str!("claim.lua")),
    start: Lua::new("start", include_str!("start.lua")),
    complete: Lua::new("complete", include_str!("complete.lua")),
    retry: Lua::new("retry", include_str!("retry.lua")),
    release: Lua::new("release", include_str!("release.lua")),
    heartbeat: Lua::new("heartbeat", include_str!("heartbeat.lua")),
    bury: Lua::new("bury", include_str!("bury.lua")),
    revoke: Lua::new("revoke", include_str!("revoke.lua")),
    drop_consumer: Lua::new("drop_consumer", include_str!("drop_consumer.lua")),
    admit: Lua::new("admit", include_str!("admit.lua")),
    set_rate: Lua::new("set_rate", include_str!("set_rate.lua")),
    stats: Lua::new("stats", include_str!("stats.lua")),
    purge: Lua::new("purge", include_str!("purge.lua")),
    dead_retry: Lua::new("dead_retry", include_str!("dead_retry.lua")),
    dead_drop: Lua::new("dead_drop", include_str!("dead_drop.lua")),
    host_gone: Lua::new("host_gone", include_str!("host_gone.lua")),
    listen: Lua::new("listen", include_str!("listen.lua")),
});

/// One command of a pipeline; scripts remember which script they run so a
/// `NOSCRIPT` (after a server restart) can load it and run them again.
#[derive(Clone)]
pub(super) struct Op {
    pub(super) cmd: Cmd,
    lua: Option<&'static Lua>,
}

impl Op {
    pub(super) fn cmd(cmd: Cmd) -> Self {
        Self { cmd, lua: None }
    }

    pub(super) fn eval(lua: &'static Lua) -> EvalBuilder {
        EvalBuilder {
            lua,
            keys: Vec::new(),
            cmd: None,
        }
    }
}

/// An `EVALSHA`: keys first, then arguments, which are written straight
/// into the command (no copy per argument).
pub(super) struct EvalBuilder {
    lua: &'static Lua,
    keys: Vec<String>,
    /// The command, begun at the first argument (once the keys are known).
    cmd: Option<Cmd>,
}

impl EvalBuilder {
    pub(super) fn key(mut self, key: String) -> Self {
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

    pub(super) fn arg(mut self, arg: impl ToRedisArgs) -> Self {
        self.begun().arg(arg);
        self
    }

    pub(super) fn build(mut self) -> Op {
        self.begun();
        Op {
            cmd: self.cmd.expect("begun above"),
            lua: Some(self.lua),
        }
    }
}

/// Runs commands in one round trip on `conn` (of the server at `url`, for
/// errors); per command its reply or its error.
/// Scripts the server does not know (it restarted) are loaded and those
/// commands run again (the only commands ever copied). A connection
/// failure fails the whole batch.
pub(super) async fn run_pipeline(
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

impl RedisBroker {
    /// Runs one command.
    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &Cmd, what: &str) -> Result<T> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| self.err(e, what))
    }

    /// Runs commands in one round trip; per command its reply or its error.
    /// Scripts the server does not know (it restarted) are loaded and those
    /// commands run again (the only commands ever copied). A connection
    /// failure fails the whole batch.
    pub(super) async fn pipeline(&self, ops: Vec<Op>, what: &str) -> Result<Vec<Result<Value>>> {
        run_pipeline(self.conn.clone(), &self.url, ops, what).await
    }

    /// Runs one script.
    pub(super) async fn eval(&self, op: Op, what: &str) -> Result<Value> {
        self.pipeline(vec![op], what)
            .await?
            .pop()
            .unwrap_or_else(|| Err(Error::Backend(format!("{what}: no reply"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_built() {
        // Each script is the prelude, the common helpers and its body.
        assert!(SCRIPTS.complete.source.starts_with(&lua_prelude()));
        assert!(SCRIPTS.complete.source.contains("local function publish"));
        assert!(SCRIPTS.complete.source.contains("first final result wins"));
    }

    /// The Python client (`clients/python`) runs the scripts this crate
    /// sends, assembled the same way: `wasq/lua` there holds the generated
    /// prelude and links to this folder's `.lua` files. This checks the
    /// prelude is current (`WASQ_SYNC_SCRIPTS=1`, which
    /// `clients/python/sync_scripts.py` sets, writes it instead) and that the
    /// links lead here, so both clients send the same text and the same SHA1.
    #[test]
    fn python_client_ships_these_scripts() {
        let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/redis");
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python/src/wasq/lua");
        let prelude = dir.join("prelude.lua");
        if std::env::var_os("WASQ_SYNC_SCRIPTS").is_some_and(|v| v == "1") {
            std::fs::write(&prelude, lua_prelude())
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", prelude.display()));
        }
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        };
        assert!(
            read(&prelude) == lua_prelude(),
            "{} differs from the prelude wasq-broker generates: run \
             `python3 clients/python/sync_scripts.py` and commit the result",
            prelude.display()
        );
        for (name, lua) in [
            ("submit", &SCRIPTS.submit),
            ("listen", &SCRIPTS.listen),
            ("revoke", &SCRIPTS.revoke),
        ] {
            let body = read(&dir.join(format!("{name}.lua")));
            assert_eq!(body, read(&here.join(format!("{name}.lua"))), "{name}.lua");
            let assembled = format!(
                "{}{}\n{body}",
                read(&prelude),
                read(&dir.join("common.lua"))
            );
            assert!(
                assembled == lua.source,
                "the Python client assembles {name} differently"
            );
        }
    }
}
