//! Calls straight to a host over HTTP (`wasq serve`), no broker in between:
//! the client side of the API in `docs/http.md`.
//!
//! A [`DirectClient`] keeps its connections alive and opens more as calls
//! overlap (as many as calls in flight), so many concurrent calls spread
//! over several connections and each call costs one request on an open one.
//! `https://` URLs trust the public CAs, or the CA given with
//! [`DirectClient::with_ca`].

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::{Method, Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{CallError, ModuleRef, encode_args};
use crate::error::{Error, Result};
use crate::types::{CallLimits, Envelope, ErrorKind, ModuleHash};

/// Largest answer read from a server: an envelope carries at most a result,
/// stdout, stderr and logs, each capped by the host far below this.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// A client of one `wasq serve` host.
#[derive(Clone, Debug)]
pub struct DirectClient {
    base: String,
    token: Option<String>,
    http: HttpClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl DirectClient {
    /// A client of the server at `url` (`http://HOST:PORT` or
    /// `https://HOST:PORT`, public CAs), sending `token` as
    /// `Authorization: Bearer` when given.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a URL that is not `http(s)://HOST[:PORT]`.
    pub fn new(url: &str, token: Option<String>) -> Result<Self> {
        Self::with_ca(url, token, None)
    }

    /// As [`DirectClient::new`], trusting for `https://` the CA in the PEM
    /// file `ca` instead of the public ones.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a bad URL or a CA file that cannot be
    /// read (or is over [`MAX_TLS_FILE`](crate::MAX_TLS_FILE)) or holds no
    /// certificate.
    pub fn with_ca(url: &str, token: Option<String>, ca: Option<&Path>) -> Result<Self> {
        let uri: Uri = url
            .parse()
            .map_err(|e| Error::InvalidArgument(format!("invalid URL {url:?}: {e}")))?;
        let scheme = match uri.scheme_str() {
            Some(s @ ("http" | "https")) => s,
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "invalid URL {url:?}: use http://HOST:PORT or https://HOST:PORT"
                )));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| Error::InvalidArgument(format!("invalid URL {url:?}: no host")))?;
        crate::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        match ca {
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Some(path) => {
                let pem = crate::tls::read_pem(path, "CA certificate")?;
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert
                        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
                    roots
                        .add(cert)
                        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "{} holds no PEM certificate",
                        path.display()
                    )));
                }
            }
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Ok(Self {
            base: format!("{scheme}://{authority}"),
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::InvalidArgument(format!("cannot build the request: {e}")))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| Error::Unavailable(format!("{}: {}", self.base, chain(&e))))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| Error::Unavailable(format!("cannot read the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    /// The error of an answer that is not what was asked for.
    fn refused(status: StatusCode, body: &[u8]) -> Error {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned());
        match status {
            StatusCode::TOO_MANY_REQUESTS => Error::Unavailable(format!("host busy: {message}")),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Error::Backend(format!("refused ({status}): {message}"))
            }
            StatusCode::PAYLOAD_TOO_LARGE => Error::InvalidCall(message),
            s if s.is_server_error() => Error::Unavailable(format!("{status}: {message}")),
            _ => Error::Backend(format!("{status}: {message}")),
        }
    }

    /// Stores `bytes` on the server (compiled there at once); returns the
    /// module's hash.
    ///
    /// # Errors
    /// [`Error::InvalidCall`] if the server refuses the module (too large,
    /// invalid: the message says why); as [`DirectClient::call_raw`].
    pub async fn upload(&self, bytes: &[u8]) -> Result<ModuleHash> {
        let hash = ModuleHash::of(bytes);
        let (status, body) = self
            .send(
                Method::PUT,
                &format!("/v1/modules?sha256={hash}"),
                bytes.to_vec(),
            )
            .await?;
        match status {
            StatusCode::OK | StatusCode::CREATED => Ok(hash),
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
                Err(Error::InvalidCall(Self::refused(status, &body).to_string()))
            }
            _ => Err(Self::refused(status, &body)),
        }
    }

    /// Runs `task` of `module` (`sha256:HEX` or a name the server's module
    /// store knows) with `args` (a JSON array) under `limits`; answers the
    /// envelope, also for a call that failed or could not run (module not
    /// found, malformed args).
    ///
    /// # Errors
    /// [`Error::Unavailable`] when the server cannot be reached or is busy
    /// (429: retry after a moment); [`Error::Backend`] when it refuses the
    /// request (token) or answers something that is not an envelope.
    pub async fn call_raw(
        &self,
        module: &str,
        task: &str,
        args: &str,
        limits: &CallLimits,
    ) -> Result<Envelope> {
        let mut query = Vec::new();
        if let Some(fuel) = limits.fuel {
            query.push(format!("fuel={fuel}"));
        }
        if let Some(memory) = limits.memory {
            query.push(format!("memory={memory}"));
        }
        if let Some(timeout) = limits.timeout {
            query.push(format!("timeout={}", timeout.as_secs_f64()));
        }
        if let Some(max_output) = limits.max_output {
            query.push(format!("max_output={max_output}"));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let path = format!(
            "/v1/call/{}/{}{query}",
            path_segment(module),
            path_segment(task)
        );
        let (status, body) = self
            .send(Method::POST, &path, args.as_bytes().to_vec())
            .await?;
        match serde_json::from_slice::<Envelope>(&body) {
            Ok(envelope) if envelope.error.is_some() || status == StatusCode::OK => Ok(envelope),
            _ => Err(Self::refused(status, &body)),
        }
    }

    /// Calls `task` of `module` with `args` and deserializes its result as
    /// `R`, as [`BlockingClient::call`](crate::BlockingClient::call) does
    /// through a broker. Module bytes are uploaded when the server lacks
    /// them.
    ///
    /// # Errors
    /// [`CallError::Failed`] with the envelope if the task failed;
    /// [`CallError::Decode`]; [`CallError::Broker`] for the transport.
    pub async fn call<R: DeserializeOwned>(
        &self,
        module: impl Into<ModuleRef>,
        task: &str,
        args: impl Serialize,
    ) -> std::result::Result<R, CallError> {
        let args = encode_args(&args)?;
        let module = module.into();
        let name = match &module {
            ModuleRef::Hash(h) => format!("sha256:{h}"),
            ModuleRef::Name(n) => n.clone(),
            ModuleRef::Bytes(b) => format!("sha256:{}", ModuleHash::of(b)),
        };
        let limits = CallLimits::default();
        let mut envelope = self.call_raw(&name, task, args.get(), &limits).await?;
        if let ModuleRef::Bytes(bytes) = &module
            && envelope.error.as_ref().map(|e| e.kind) == Some(ErrorKind::ModuleNotFound)
        {
            self.upload(bytes).await?;
            envelope = self.call_raw(&name, task, args.get(), &limits).await?;
        }
        if !envelope.succeeded() {
            return Err(CallError::Failed(Box::new(envelope)));
        }
        R::deserialize(&envelope.result).map_err(|source| CallError::Decode {
            id: envelope.id.clone(),
            source,
            result: envelope.result.clone(),
        })
    }

    /// `GET /v1/health`: the server's status.
    ///
    /// # Errors
    /// As [`DirectClient::call_raw`].
    pub async fn health(&self) -> Result<serde_json::Value> {
        let (status, body) = self.send(Method::GET, "/v1/health", Vec::new()).await?;
        if status != StatusCode::OK {
            return Err(Self::refused(status, &body));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Error::Malformed(format!("health is not JSON: {e}")))
    }
}

/// An error with its causes, `a: b: c` (hyper's own Display hides them).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// `s` for a path segment: names, hashes and task names need no escaping
/// but `:`, which is allowed in a segment; anything else is percent-encoded.
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_escape_what_they_must() {
        assert_eq!(path_segment("sha256:ab12"), "sha256:ab12");
        assert_eq!(path_segment("examples@1.0"), "examples@1.0");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn only_http_urls() {
        assert!(DirectClient::new("http://127.0.0.1:7070", None).is_ok());
        assert!(matches!(
            DirectClient::new("ftp://x", None),
            Err(Error::InvalidArgument(_))
        ));
        assert!(DirectClient::new("https://x:7070", None).is_ok());
    }
}
