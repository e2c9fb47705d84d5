//! The module store: modules are write-once keys named by their hash;
//! names and versions point at hashes in one hash key.

use std::collections::{HashMap, HashSet};

use redis::Value;

use crate::broker::ModuleInfo;
use crate::error::{Error, Result};
use crate::types::ModuleHash;
use crate::validate::{check_module_ref, check_module_size, check_tag};

use super::RedisBroker;
use super::reply;
use super::reply::as_int;
use super::scripts::Op;

impl RedisBroker {
    pub(super) async fn store_module(&self, bytes: &[u8]) -> Result<(ModuleHash, bool)> {
        check_module_size(bytes.len() as u64, self.config.max_module)?;
        let hash = ModuleHash::of(bytes);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.module(&hash)).arg(bytes).arg("NX");
        let reply: Value = self.query(&cmd, "cannot store a module").await?;
        Ok((hash, !matches!(reply, Value::Nil)))
    }

    pub(super) async fn module_exists(&self, hash: &ModuleHash) -> Result<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.keys.module(hash));
        let n: i64 = self.query(&cmd, "cannot look up a module").await?;
        Ok(n > 0)
    }

    pub(super) async fn fetch_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
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

    pub(super) async fn tag_module(
        &self,
        name: &str,
        version: Option<&str>,
        hash: &ModuleHash,
    ) -> Result<()> {
        check_tag(name, version)?;
        if !self.module_exists(hash).await? {
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

    pub(super) async fn resolve_module(&self, name: &str) -> Result<Option<ModuleHash>> {
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

    pub(super) async fn scan_modules(&self) -> Result<Vec<ModuleInfo>> {
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
}
