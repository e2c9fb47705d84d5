//! The module store and module names of the local broker.

use super::*;

impl LocalBroker {
    pub(super) async fn store_module(&self, bytes: &[u8]) -> Result<(ModuleHash, bool)> {
        check_module_size(bytes.len() as u64, self.config.max_module)?;
        let hash = ModuleHash::of(bytes);
        let mut inner = self.lock();
        if inner.modules.contains_key(&hash) {
            return Ok((hash, false));
        }
        inner.modules.insert(hash, Arc::from(bytes));
        Ok((hash, true))
    }

    pub(super) async fn module_exists(&self, hash: &ModuleHash) -> Result<bool> {
        Ok(self.lock().modules.contains_key(hash))
    }

    pub(super) async fn fetch_module(&self, hash: &ModuleHash) -> Result<Option<Vec<u8>>> {
        let inner = self.lock();
        let Some(bytes) = inner.modules.get(hash) else {
            return Ok(None);
        };
        let size = bytes.len() as u64;
        if size > self.config.max_module {
            return Err(Error::ModuleTooLarge {
                size,
                limit: self.config.max_module,
            });
        }
        Ok(Some(bytes.to_vec()))
    }

    pub(super) async fn tag_module(
        &self,
        name: &str,
        version: Option<&str>,
        hash: &ModuleHash,
    ) -> Result<()> {
        check_tag(name, version)?;
        let mut inner = self.lock();
        if !inner.modules.contains_key(hash) {
            return Err(Error::ModuleNotFound(format!("sha256:{hash}")));
        }
        inner.names.insert(name.to_string(), *hash);
        if let Some(v) = version {
            inner.names.insert(format!("{name}@{v}"), *hash);
        }
        Ok(())
    }

    pub(super) async fn resolve_module(&self, name: &str) -> Result<Option<ModuleHash>> {
        check_module_ref(name)?;
        Ok(self.lock().names.get(name).copied())
    }

    pub(super) async fn scan_modules(&self) -> Result<Vec<ModuleInfo>> {
        let inner = self.lock();
        let mut out: Vec<ModuleInfo> = inner
            .modules
            .iter()
            .map(|(hash, bytes)| ModuleInfo {
                hash: *hash,
                size: bytes.len() as u64,
                names: inner
                    .names
                    .iter()
                    .filter(|(_, h)| *h == hash)
                    .map(|(n, _)| n.clone())
                    .collect(),
            })
            .collect();
        out.sort_by_key(|m| m.hash);
        Ok(out)
    }
}
