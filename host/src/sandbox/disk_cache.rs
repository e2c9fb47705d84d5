//! The on-disk cache of compiled code, authenticated so that it cannot be
//! turned into code execution.
//!
//! Loading compiled code runs it as native code: a file swapped into the
//! cache directory would run with the host's privileges and Redis
//! credentials. So every entry carries an HMAC-SHA256 tag over the module's
//! hash, the engine's compatibility hash and the code, keyed by a host-local
//! key file that lives outside the directory (readable by the host's user
//! only). An entry whose tag does not verify (tampered, copied from another
//! module or another host, truncated) is never deserialized: it is counted,
//! logged and recompiled over.
//!
//! The directory must belong to the host's user and not be writable by its
//! group or others; symlinks are not followed (neither the directory nor an
//! entry); entries are written to unique temporary names, synced and renamed
//! into place; the directory is kept under a byte cap by removing the least
//! recently written entries.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use wasq_broker::ModuleHash;

/// Default byte cap of a cache directory: 2 GiB.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 2 * 1024 * 1024 * 1024;

const TAG_LEN: usize = 32;
const KEY_LEN: usize = 32;
const DOMAIN: &[u8] = b"wasq compiled-module cache v1\0";

/// Why a cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    /// An I/O error on the directory or the key file.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory or key file is not safe to trust.
    #[error("{path}: {reason}")]
    Unsafe {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it and what to do.
        reason: String,
    },
}

/// A checked cache directory and its key.
pub(crate) struct DiskCache {
    dir: PathBuf,
    key: [u8; KEY_LEN],
    max_bytes: u64,
}

/// The uid of this process, as the kernel shows it: the owner of `/proc/self`.
fn own_uid() -> std::io::Result<u32> {
    Ok(std::fs::metadata("/proc/self")?.uid())
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> DiskCacheError + 'a {
    move |source| DiskCacheError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks that `path` is not a symlink, belongs to `uid` and is not writable
/// (or, for a key, readable) by group and others.
fn check_owned(
    path: &Path,
    uid: u32,
    forbidden_mode: u32,
) -> Result<std::fs::Metadata, DiskCacheError> {
    let meta = std::fs::symlink_metadata(path).map_err(io("cannot inspect", path))?;
    let unsafe_ = |reason: String| DiskCacheError::Unsafe {
        path: path.to_path_buf(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_("is a symlink; give the real path".into()));
    }
    if meta.uid() != uid {
        return Err(unsafe_(format!(
            "belongs to uid {}, not to this host's uid {uid}",
            meta.uid()
        )));
    }
    if meta.mode() & forbidden_mode != 0 {
        return Err(unsafe_(format!(
            "has mode {:o}; others must not {} it (chmod go-rwx)",
            meta.mode() & 0o777,
            if forbidden_mode & 0o044 != 0 {
                "read or write"
            } else {
                "write"
            }
        )));
    }
    Ok(meta)
}

impl DiskCache {
    /// Opens (creating, mode 0700) the cache directory `dir` and the key file
    /// `key_file` (default: `DIR.key` beside the directory; created, mode
    /// 0600, with a random key if missing).
    pub(crate) fn open(
        dir: &Path,
        key_file: Option<&Path>,
        max_bytes: u64,
    ) -> Result<Self, DiskCacheError> {
        let uid = own_uid().map_err(io(
            "cannot read this process's uid from",
            Path::new("/proc/self"),
        ))?;
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("cannot create cache directory", dir))?;
        }
        let meta = check_owned(dir, uid, 0o022)?;
        if !meta.is_dir() {
            return Err(DiskCacheError::Unsafe {
                path: dir.to_path_buf(),
                reason: "is not a directory".into(),
            });
        }
        let key_path = match key_file {
            Some(k) => k.to_path_buf(),
            None => {
                let mut name = dir.file_name().unwrap_or_default().to_os_string();
                name.push(".key");
                dir.with_file_name(name)
            }
        };
        if key_path.starts_with(dir) {
            return Err(DiskCacheError::Unsafe {
                path: key_path,
                reason: "the key must not be inside the cache directory".into(),
            });
        }
        let key = read_or_create_key(&key_path, uid)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            key,
            max_bytes,
        })
    }

    fn path(&self, hash: &ModuleHash, engine: u64) -> PathBuf {
        self.dir
            .join(format!("{}-{engine:016x}.cwasm", hash.to_hex()))
    }

    fn tag(&self, hash: &ModuleHash, engine: u64, code: &[u8]) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length works");
        mac.update(DOMAIN);
        mac.update(hash.to_hex().as_bytes());
        mac.update(&engine.to_le_bytes());
        mac.update(code);
        mac
    }

    /// The authenticated code of `hash` for this engine, if a valid entry
    /// exists. `Err` says why an existing entry was refused (the caller logs,
    /// counts and recompiles).
    pub(crate) fn get(&self, hash: &ModuleHash, engine: u64) -> Result<Option<Vec<u8>>, String> {
        let path = self.path(hash, engine);
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open {} (a symlink?): {e}", path.display())),
        };
        let meta = file.metadata().map_err(|e| e.to_string())?;
        if !meta.is_file() || meta.len() > self.max_bytes || meta.len() < TAG_LEN as u64 {
            return Err(format!("{} is not a plausible cache entry", path.display()));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
        let (tag, code) = bytes.split_at(TAG_LEN);
        self.tag(hash, engine, code)
            .verify_slice(tag)
            .map_err(|_| format!("{} fails its authentication tag", path.display()))?;
        Ok(Some(code.to_vec()))
    }

    /// Writes the code of `hash` (atomically: unique temporary file, fsync,
    /// rename), then evicts old entries past the byte cap. Errors are logged.
    pub(crate) fn put(&self, hash: &ModuleHash, engine: u64, code: &[u8]) {
        let path = self.path(hash, engine);
        let tmp = self.dir.join(format!(
            ".{}.{}.{:016x}.tmp",
            hash.to_hex(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            f.write_all(&self.tag(hash, engine, code).finalize().into_bytes())?;
            f.write_all(code)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(path = %path.display(), cause = %e, "cannot write compiled-module cache entry");
            return;
        }
        self.evict();
    }

    /// Removes the least recently written entries until the directory is
    /// under its byte cap.
    fn evict(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file().then(|| {
                    (
                        m.modified().unwrap_or(std::time::UNIX_EPOCH),
                        m.len(),
                        e.path(),
                    )
                })
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.max_bytes {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
                tracing::debug!(path = %path.display(), "evicted compiled-module cache entry");
            }
        }
    }
}

fn read_or_create_key(path: &Path, uid: u32) -> Result<[u8; KEY_LEN], DiskCacheError> {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(mut f) => {
            let key: [u8; KEY_LEN] = rand::random();
            f.write_all(&key)
                .and_then(|()| f.sync_all())
                .map_err(io("cannot write cache key", path))?;
            return Ok(key);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("cannot create cache key", path)(e)),
    }
    check_owned(path, uid, 0o077)?;
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io("cannot open cache key", path))?;
    let mut key = [0u8; KEY_LEN];
    let mut rest = Vec::new();
    f.read_exact(&mut key)
        .and_then(|()| f.read_to_end(&mut rest))
        .map_err(io("cannot read cache key", path))?;
    if !rest.is_empty() {
        return Err(DiskCacheError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("is not a {KEY_LEN}-byte cache key"),
        });
    }
    Ok(key)
}
