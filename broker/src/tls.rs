//! TLS to Redis: the certificates a `rediss://` connection trusts and
//! presents.
//!
//! Without a CA file, a `rediss://` connection trusts the webpki roots (public
//! CAs). A deployment with its own CA gives its certificate with
//! [`RedisTls::ca`]; one whose server requires client certificates (Redis's
//! `tls-auth-clients yes`) gives [`RedisTls::cert`] and [`RedisTls::key`].

use std::path::{Path, PathBuf};
use std::sync::Once;

use redis::{ClientTlsConfig, TlsCertificates};

use crate::error::{Error, Result};

/// Largest certificate or key file read: PEM files are a few KiB; a larger
/// one is a mistake, not something to buffer.
pub const MAX_TLS_FILE: u64 = 1024 * 1024;

/// Files for TLS to Redis. All empty by default: a `rediss://` URL then
/// trusts the public CAs and presents no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// PEM file of the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key; needs `cert`.
    pub key: Option<PathBuf>,
}

impl RedisTls {
    /// Whether any file is given.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Checks the combination against the URL and reads the files.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if files are given for a plain `redis://`
    /// URL, a certificate comes without its key (or the reverse), or a file
    /// cannot be read or is over [`MAX_TLS_FILE`].
    pub(crate) fn certificates(&self, url: &str) -> Result<Option<TlsCertificates>> {
        if !self.is_set() {
            return Ok(None);
        }
        if !url.starts_with("rediss://") {
            return Err(Error::InvalidArgument(
                "--redis-ca, --redis-cert and --redis-key need a rediss:// URL (TLS)".into(),
            ));
        }
        let client_tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read_pem(cert, "client certificate")?,
                client_key: read_pem(key, "client key")?,
            }),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidArgument(
                    "a client certificate needs its key: give both --redis-cert and --redis-key"
                        .into(),
                ));
            }
        };
        let root_cert = self
            .ca
            .as_deref()
            .map(|ca| read_pem(ca, "CA certificate"))
            .transpose()?;
        Ok(Some(TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

pub(crate) fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let unreadable = |e: std::io::Error| {
        Error::InvalidArgument(format!("cannot read the {what} {}: {e}", path.display()))
    };
    let size = std::fs::metadata(path).map_err(unreadable)?.len();
    if size > MAX_TLS_FILE {
        return Err(Error::InvalidArgument(format!(
            "the {what} {} is {size} bytes, over the limit of {MAX_TLS_FILE}",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(unreadable)?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(Error::InvalidArgument(format!(
            "the {what} {} is not a PEM file",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Installs rustls's crypto provider (ring) for the process, once: the
/// redis crate's TLS needs one, and without it a `rediss://` connection
/// panics. A provider installed before (by an embedder) is kept.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combinations_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("a.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let none = RedisTls::default();
        assert!(none.certificates("redis://h").unwrap().is_none());
        let ca = RedisTls {
            ca: Some(pem.clone()),
            ..RedisTls::default()
        };
        assert!(ca.certificates("redis://h").is_err());
        let certs = ca.certificates("rediss://h").unwrap().unwrap();
        assert!(certs.root_cert.is_some() && certs.client_tls.is_none());
        let half = RedisTls {
            cert: Some(pem.clone()),
            ..RedisTls::default()
        };
        assert!(
            half.certificates("rediss://h")
                .unwrap_err()
                .to_string()
                .contains("both")
        );
        let garbage = dir.path().join("g.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let bad = RedisTls {
            ca: Some(garbage),
            ..RedisTls::default()
        };
        assert!(
            bad.certificates("rediss://h")
                .unwrap_err()
                .to_string()
                .contains("not a PEM")
        );
        let missing = RedisTls {
            ca: Some(dir.path().join("missing.pem")),
            ..RedisTls::default()
        };
        assert!(
            missing
                .certificates("rediss://h")
                .unwrap_err()
                .to_string()
                .contains("cannot read")
        );
    }
}
