//! Calls straight to a host over HTTP, no broker in between (`wasq serve`,
//! `wasq host run --listen`). The API (`/v1/...`) is documented in
//! `docs/http.md`; every call runs in the same sandbox, under the same
//! limits, and answers the same envelope as a queued call.
//!
//! A call holds one of `concurrency` slots while it runs; with none free the
//! answer is 429 at once (never a queue). A client that disconnects drops
//! its call: the run's future is dropped with the request, which frees its
//! instance and its slot.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use wasq_broker::{
    Broker, CallLimits, Envelope, ErrorKind, ModuleHash, RedisBroker, TaskError,
    is_valid_task_name, new_call_id,
};

use crate::{Cancel, HttpGuard, Sandbox};

/// Where `wasq serve` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// Default bytes of uploaded modules a server keeps (the oldest go first).
pub const DEFAULT_STORE_BYTES: u64 = 1 << 30;

/// How a [`DirectServer`] is set up.
#[derive(Debug, Clone)]
pub struct DirectConfig {
    /// Calls running at once; a call past them gets 429.
    pub concurrency: usize,
    /// Bytes of uploaded modules kept in memory.
    pub store_bytes: u64,
}

impl Default for DirectConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            store_bytes: DEFAULT_STORE_BYTES,
        }
    }
}

/// Answers calls over HTTP with a [`Sandbox`]; modules come from uploads
/// and, with a broker, from the deployment's module store and names.
#[derive(Clone)]
pub struct DirectServer {
    inner: Arc<Inner>,
}

struct Inner {
    sandbox: Sandbox,
    broker: Option<Arc<RedisBroker>>,
    store: Mutex<Store>,
    slots: Arc<Semaphore>,
    config: DirectConfig,
}

/// Uploaded modules, bounded in bytes.
#[derive(Default)]
struct Store {
    modules: HashMap<ModuleHash, Arc<Vec<u8>>>,
    order: VecDeque<ModuleHash>,
    bytes: u64,
}

impl Store {
    fn insert(&mut self, hash: ModuleHash, bytes: Arc<Vec<u8>>, cap: u64) {
        if self.modules.contains_key(&hash) {
            return;
        }
        self.bytes += bytes.len() as u64;
        self.modules.insert(hash, bytes);
        self.order.push_back(hash);
        while self.bytes > cap && self.order.len() > 1 {
            if let Some(old) = self.order.pop_front()
                && let Some(b) = self.modules.remove(&old)
            {
                self.bytes -= b.len() as u64;
            }
        }
    }

    fn remove(&mut self, hash: &ModuleHash) {
        if let Some(b) = self.modules.remove(hash) {
            self.bytes -= b.len() as u64;
            self.order.retain(|h| h != hash);
        }
    }
}

impl DirectServer {
    /// A server over `sandbox`; `broker` (optional) is where modules and
    /// names not uploaded here are looked up.
    pub fn new(sandbox: Sandbox, broker: Option<Arc<RedisBroker>>, config: DirectConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
                sandbox,
                broker,
                store: Mutex::default(),
                config,
            }),
        }
    }

    /// Calls running now.
    pub fn running(&self) -> usize {
        self.inner.config.concurrency.max(1) - self.inner.slots.available_permits()
    }

    /// The API's routes behind `guard` (Host header, token).
    pub fn router(&self, guard: HttpGuard) -> Router {
        let limits = self.inner.sandbox.config();
        let module_cap = usize::try_from(limits.max_module).unwrap_or(usize::MAX);
        let args_cap = usize::try_from(limits.limits.max_args).unwrap_or(usize::MAX);
        let api = Router::new()
            .route(
                "/v1/modules",
                put(upload).layer(DefaultBodyLimit::max(module_cap)),
            )
            .route(
                "/v1/call/{module}/{task}",
                post(call).layer(DefaultBodyLimit::max(args_cap)),
            )
            .route("/v1/health", get(health))
            .with_state(self.clone());
        guard.protect(api)
    }

    fn stored(&self, hash: &ModuleHash) -> Option<Arc<Vec<u8>>> {
        let store = self.inner.store.lock().unwrap_or_else(|e| e.into_inner());
        store.modules.get(hash).cloned()
    }

    /// The bytes of `hash`: uploaded here, or from the broker.
    async fn fetch(&self, hash: ModuleHash) -> Result<Vec<u8>, TaskError> {
        if let Some(bytes) = self.stored(&hash) {
            return Ok(bytes.to_vec());
        }
        let not_found = || {
            TaskError::new(
                ErrorKind::ModuleNotFound,
                format!("no module {hash} here: upload it with PUT /v1/modules"),
            )
        };
        let Some(broker) = &self.inner.broker else {
            return Err(not_found());
        };
        match broker.get_module(&hash).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(not_found()),
            Err(e @ wasq_broker::Error::ModuleTooLarge { .. }) => {
                Err(TaskError::new(ErrorKind::InvalidModule, e.to_string()))
            }
            Err(e) => Err(TaskError::new(
                ErrorKind::ModuleNotFound,
                format!("cannot fetch module {hash}: {e}"),
            )),
        }
    }

    /// `sha256:HEX` (or 64 hex digits), or a name the broker knows.
    async fn resolve(&self, module: &str) -> Result<ModuleHash, (StatusCode, TaskError)> {
        if let Ok(hash) = module.parse() {
            return Ok(hash);
        }
        if module.starts_with("sha256:") {
            return Err((
                StatusCode::BAD_REQUEST,
                TaskError::new(
                    ErrorKind::BadInput,
                    format!("bad module hash {module:?}: sha256: and 64 hex digits"),
                ),
            ));
        }
        let not_found = |why: String| {
            (
                StatusCode::NOT_FOUND,
                TaskError::new(ErrorKind::ModuleNotFound, why),
            )
        };
        let Some(broker) = &self.inner.broker else {
            return Err(not_found(format!(
                "no module named {module:?}: this server has no module store (--redis) to look names up in; call it as sha256:HEX"
            )));
        };
        match broker.resolve(module).await {
            Ok(Some(hash)) => Ok(hash),
            Ok(None) => Err(not_found(format!("no module is named {module:?}"))),
            Err(wasq_broker::Error::InvalidName(n)) => Err((
                StatusCode::BAD_REQUEST,
                TaskError::new(ErrorKind::BadInput, format!("invalid module name {n:?}")),
            )),
            Err(e) => Err((
                StatusCode::SERVICE_UNAVAILABLE,
                TaskError::new(
                    ErrorKind::ModuleNotFound,
                    format!("cannot look up {module:?}: {e}"),
                ),
            )),
        }
    }
}

/// A JSON error body: `{"error": {"kind": ..., "message": ...}}`, the shape
/// of an envelope's `error`.
fn error(status: StatusCode, kind: ErrorKind, message: impl Into<String>) -> Response {
    let body = serde_json::json!({
        "error": TaskError::new(kind, message),
    });
    (status, Json(body)).into_response()
}

/// A failed envelope for a call that did not run, with its status.
fn failed(status: StatusCode, id: String, error: TaskError) -> Response {
    let mut envelope = Envelope::failed(id, error);
    envelope.attempt = 1;
    (status, Json(envelope)).into_response()
}

fn body_error(rejection: &BytesRejection, what: &str, cap: u64) -> (StatusCode, String) {
    let status = rejection.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        (status, format!("{what} over the limit of {cap} bytes"))
    } else {
        (status, format!("cannot read the {what}: {rejection}"))
    }
}

#[derive(Debug, Deserialize)]
struct UploadQuery {
    /// The hash the client expects (`sha256:HEX`); a mismatch is refused.
    sha256: Option<String>,
}

/// `PUT /v1/modules`: stores and compiles a module; answers its hash and
/// tasks (201, or 200 when it was here already).
async fn upload(
    State(server): State<DirectServer>,
    Query(query): Query<UploadQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let config = server.inner.sandbox.config();
    let bytes = match body {
        Ok(b) => b,
        Err(rejection) => {
            let (status, message) = body_error(&rejection, "module", config.max_module);
            return error(status, ErrorKind::InvalidModule, message);
        }
    };
    let hash = ModuleHash::of(&bytes);
    if let Some(expected) = query.sha256 {
        match expected.parse::<ModuleHash>() {
            Ok(h) if h == hash => {}
            Ok(h) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::Integrity,
                    format!("the body hashes to {hash}, not {h}"),
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BadInput,
                    format!("bad sha256: {e}"),
                );
            }
        }
    }
    let known = server.stored(&hash).is_some();
    let bytes = Arc::new(bytes.to_vec());
    {
        let mut store = server.inner.store.lock().unwrap_or_else(|e| e.into_inner());
        store.insert(hash, bytes.clone(), server.inner.config.store_bytes);
    }
    // Compiled now, so a module that cannot run is refused here, not at its
    // first call.
    let loaded = server
        .inner
        .sandbox
        .load(hash, || async move { Ok(bytes.to_vec()) })
        .await;
    match loaded {
        Ok(module) => {
            let status = if known {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            let body = serde_json::json!({
                "module": format!("sha256:{hash}"),
                "size": module.size,
                "tasks": module.tasks,
            });
            (status, Json(body)).into_response()
        }
        Err(e) => {
            let mut store = server.inner.store.lock().unwrap_or_else(|e| e.into_inner());
            store.remove(&hash);
            error(StatusCode::UNPROCESSABLE_ENTITY, e.kind, e.message)
        }
    }
}

/// Limits a call asks for, as query parameters (`?fuel=..&timeout=..`) or
/// headers (`wasq-fuel: ..`); never above the server's.
#[derive(Debug, Default, Deserialize)]
struct LimitsQuery {
    fuel: Option<u64>,
    memory: Option<u64>,
    /// Seconds, fractions allowed.
    timeout: Option<f64>,
    max_output: Option<u64>,
}

fn header_value<T: std::str::FromStr>(
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<T>, String> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| format!("header {name} is not a valid number")),
    }
}

fn call_limits(query: LimitsQuery, headers: &HeaderMap) -> Result<CallLimits, String> {
    let timeout = match query.timeout.or(header_value(headers, "wasq-timeout")?) {
        None => None,
        Some(secs) if secs.is_finite() && secs > 0.0 => {
            Some(Duration::try_from_secs_f64(secs).map_err(|e| format!("timeout: {e}"))?)
        }
        Some(secs) => {
            return Err(format!(
                "timeout must be a positive number of seconds, not {secs}"
            ));
        }
    };
    let positive = |what: &str, v: Option<u64>| match v {
        Some(0) => Err(format!("{what} must be at least 1")),
        v => Ok(v),
    };
    Ok(CallLimits {
        fuel: positive("fuel", query.fuel.or(header_value(headers, "wasq-fuel")?))?,
        memory: positive(
            "memory",
            query.memory.or(header_value(headers, "wasq-memory")?),
        )?,
        timeout,
        max_output: positive(
            "max_output",
            query
                .max_output
                .or(header_value(headers, "wasq-max-output")?),
        )?,
    })
}

/// `POST /v1/call/{module}/{task}`: runs one call; answers its envelope.
async fn call(
    State(server): State<DirectServer>,
    Path((module, task)): Path<(String, String)>,
    query: Result<Query<LimitsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let id = new_call_id();
    let bad = |message: String| {
        failed(
            StatusCode::BAD_REQUEST,
            id.clone(),
            TaskError::new(ErrorKind::BadInput, message),
        )
    };
    let sandbox = &server.inner.sandbox;
    let args = match body {
        Ok(b) => b,
        Err(rejection) => {
            let (status, message) = body_error(&rejection, "args", sandbox.limits().max_args);
            return failed(status, id, TaskError::new(ErrorKind::BadInput, message));
        }
    };
    if !is_valid_task_name(&task) {
        return bad(format!(
            "invalid task name {task:?}: use [A-Za-z_][A-Za-z0-9_]*"
        ));
    }
    let args: Box<RawValue> = match serde_json::from_slice(&args) {
        Ok(a) => a,
        Err(e) => return bad(format!("args are not valid JSON: {e}")),
    };
    if !args.get().trim_start().starts_with('[') {
        return bad("args must be a JSON array".into());
    }
    let limits = match query {
        Ok(Query(q)) => call_limits(q, &headers),
        Err(e) => Err(e.body_text()),
    };
    let limits = match limits {
        Ok(l) => match sandbox.limits().misfit(&l, 0) {
            None => sandbox.limits().restrict(&l),
            Some(why) => return bad(format!("this server would refuse this call: {why}")),
        },
        Err(message) => return bad(message),
    };
    let Ok(_slot) = server.inner.slots.clone().try_acquire_owned() else {
        let body = serde_json::json!({"error": {
            "kind": "busy",
            "message": format!(
                "every slot of this host is busy ({} calls running); retry after a moment",
                server.inner.config.concurrency
            ),
        }});
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let hash = match server.resolve(&module).await {
        Ok(h) => h,
        Err((status, e)) => return failed(status, id, e),
    };
    let loaded = sandbox.load(hash, || server.fetch(hash)).await;
    let module = match loaded {
        Ok(m) => m,
        Err(e) if e.kind == ErrorKind::ModuleNotFound => {
            return failed(StatusCode::NOT_FOUND, id, e);
        }
        Err(e) => return failed(StatusCode::OK, id, e),
    };
    let outcome = sandbox
        .run_json(&module, &task, &args, &limits, &Cancel::new())
        .await;
    let envelope = outcome.into_envelope(id, 1, sandbox.config().host_name.clone());
    (StatusCode::OK, Json(envelope)).into_response()
}

/// `GET /v1/health`.
async fn health(State(server): State<DirectServer>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "host": server.inner.sandbox.config().host_name,
        "running": server.running(),
        "concurrency": server.inner.config.concurrency,
        "version": env!("CARGO_PKG_VERSION"),
    });
    Json(body).into_response()
}

/// Serves `router` on `listener` until `shutdown` completes: plain HTTP, or
/// HTTPS with `tls`. Connections are kept alive; Nagle is off (small
/// request, small answer).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(address = %local, "answering calls at {scheme}://{local}/v1/call/MODULE/TASK");
    let Some(tls) = tls else {
        let listener = listener.tap_io(|s| {
            let _ = s.set_nodelay(true);
        });
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let service = hyper_util::service::TowerToHyperService::new(router);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(cause = %e, "cannot accept a connection");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let (acceptor, service) = (acceptor.clone(), service.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

/// The TLS configuration of a server from PEM files (size-checked).
///
/// # Errors
/// A file that cannot be read, is too large, or holds no usable
/// certificate or key.
pub fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Arc<tokio_rustls::rustls::ServerConfig>> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    wasq_broker::install_crypto_provider();
    let read = |path: &std::path::Path| -> anyhow::Result<Vec<u8>> {
        let size = std::fs::metadata(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        anyhow::ensure!(
            size <= wasq_broker::MAX_TLS_FILE,
            "{} is {size} bytes, over the limit of {} for a PEM file",
            path.display(),
            wasq_broker::MAX_TLS_FILE
        );
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .with_context(|| format!("{} holds no PEM private key", key.display()))?;
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not make a TLS server")?;
    Ok(Arc::new(config))
}
