//! The web dashboard of `wasq dashboard`: one page and a small JSON API,
//! served by the binary itself (axum). The page, its script and its styles
//! are embedded from `dashboard/` with `include_str!`: no build step, no CDN,
//! nothing fetched from anywhere but the dashboard.
//!
//! # How it knows what it shows
//! - Hosts: [`Broker::hosts`] on every overview (live leases with the stats
//!   of their latest heartbeat).
//! - Queues: [`Broker::queue_stats`] on every overview.
//! - Recent calls and throughput: a background task tails the broker's
//!   capped events stream ([`Broker::events`], blocking for new entries) and
//!   keeps the newest calls with their latest state, and per-second counts
//!   of finished calls. Envelopes of finished calls are fetched once, with
//!   [`Broker::status`], when they reach the top of the list, then kept.
//! - Dead letters: [`Broker::dead_letters`], the newest few.
//!
//! # JSON API
//! - `GET /api/overview`: everything the page shows ([`Overview`]).
//! - `GET /api/calls/{id}`: a call's current envelope; 404 if unknown.
//! - `GET /api/events?after=ID&count=N`: raw events after an id (the newest
//!   `N` without `after`), `N` at most 1000; never blocks.
//!
//! # Security
//! Read-only: no endpoint changes anything. Everything in an envelope is
//! untrusted (guest output, error messages): the page only ever inserts it as
//! text, and every response carries a strict `Content-Security-Policy`
//! (scripts and styles from the dashboard only, no inline script). It binds
//! to loopback by default; anyone who can reach the address can read call
//! results, so put it behind an authenticating proxy before exposing it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};
use wasq_broker::{Broker, DeadLetter, Envelope, Event, EventLevel, QueueStats, now_ms};

/// Where `wasq dashboard` listens unless told otherwise (loopback only).
pub const DEFAULT_DASHBOARD_ADDR: &str = "127.0.0.1:7878";
/// Default number of recent calls kept and shown.
pub const DEFAULT_RECENT_CALLS: usize = 50;
/// Default page refresh interval.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(1);
/// Seconds of throughput the chart shows.
pub const THROUGHPUT_WINDOW_SECS: u64 = 60;
/// Newest envelopes fetched per overview (each is one `status` round trip).
const ENVELOPES_PER_OVERVIEW: usize = 20;
/// Events read per tail round trip.
const TAIL_BATCH: usize = 500;
/// How long one tail read blocks waiting for new events.
const TAIL_BLOCK: Duration = Duration::from_secs(1);
/// Dead letters shown.
const DEAD_LETTERS_SHOWN: usize = 10;

const INDEX_HTML: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const APP_CSS: &str = include_str!("dashboard/app.css");

/// How the dashboard runs.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// The key prefix of the deployment shown, for the page's title.
    pub prefix: String,
    /// Recent calls kept and shown. Default [`DEFAULT_RECENT_CALLS`].
    pub recent_calls: usize,
    /// How often the page fetches a new overview. Default [`DEFAULT_REFRESH`].
    pub refresh: Duration,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        Self {
            prefix: "wasq".to_string(),
            recent_calls: DEFAULT_RECENT_CALLS,
            refresh: DEFAULT_REFRESH,
        }
    }
}

/// Everything the page shows: the body of `GET /api/overview`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// The wasq version of the dashboard.
    pub version: String,
    /// The key prefix of the deployment shown.
    pub prefix: String,
    /// When this overview was made, ms since the Unix epoch.
    pub now_ms: u64,
    /// How often the page should refresh, in ms.
    pub refresh_ms: u64,
    /// Live hosts, by id.
    pub hosts: Vec<HostView>,
    /// Per-queue statistics, by name; `None` if the broker could not tell
    /// (see `errors`).
    pub queues: Option<Vec<QueueStats>>,
    /// Sums over hosts and the throughput window.
    pub totals: Totals,
    /// Finished calls per second over the last [`THROUGHPUT_WINDOW_SECS`]
    /// seconds, oldest first, one entry per second (zeros included).
    pub throughput: Vec<ThroughputPoint>,
    /// The newest calls, newest first.
    pub recent: Vec<RecentCall>,
    /// The newest dead letters, newest first.
    pub dead_letters: Vec<DeadLetter>,
    /// Events the dashboard has read since it started, and the newest id.
    pub events: EventsSeen,
    /// Which events the deployment records; `None` if unreadable (see
    /// `errors`). Below `all`, recent calls and the throughput chart, which
    /// come from events, miss what is not recorded.
    pub event_level: Option<EventLevel>,
    /// What could not be read this time (the rest of the overview is still valid).
    pub errors: Vec<String>,
}

/// A live host and its latest heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostView {
    /// Unique id of the host process.
    pub id: String,
    /// Human name, usually the hostname.
    pub name: String,
    /// wasq version it runs.
    pub version: String,
    /// Queues it consumes.
    pub queues: Vec<String>,
    /// Calls it runs at most.
    pub concurrency: usize,
    /// Calls running now.
    pub in_flight: usize,
    /// Calls it finished.
    pub done: u64,
    /// Calls that ended failed.
    pub failed: u64,
    /// Fuel used by all its calls.
    pub fuel_used: u64,
    /// Start time, ms since the Unix epoch.
    pub started_ms: u64,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Ms since it started (0 when its start is unknown).
    pub uptime_ms: u64,
    /// Its last heartbeat, ms since the Unix epoch.
    pub heartbeat_ms: u64,
    /// Ms since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// The most a call may ask for on it (absent from hosts that do not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<wasq_broker::Limits>,
}

impl HostView {
    /// A host as the broker lists it, seen at `now` (ms since the Unix epoch).
    pub fn new(info: wasq_broker::HostInfo, stats: wasq_broker::HostStats, now: u64) -> Self {
        let uptime_ms = if info.started_ms > 0 {
            now.saturating_sub(info.started_ms)
        } else {
            0
        };
        Self {
            uptime_s: uptime_ms as f64 / 1000.0,
            uptime_ms,
            heartbeat_age_ms: now.saturating_sub(stats.heartbeat_ms),
            id: info.id,
            name: info.name,
            version: info.version,
            queues: info.queues,
            concurrency: info.concurrency,
            started_ms: info.started_ms,
            in_flight: stats.in_flight,
            done: stats.done,
            failed: stats.failed,
            fuel_used: stats.fuel_used,
            heartbeat_ms: stats.heartbeat_ms,
            limits: info.limits,
        }
    }
}

/// Sums for the summary cards.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Totals {
    /// Live hosts.
    pub hosts: usize,
    /// Calls running now, over all hosts.
    pub in_flight: usize,
    /// Slots over all hosts.
    pub concurrency: usize,
    /// Calls finished by live hosts since they started.
    pub done: u64,
    /// Of those, failed.
    pub failed: u64,
    /// Calls that succeeded in the throughput window.
    pub succeeded_window: u64,
    /// Calls that failed in the throughput window.
    pub failed_window: u64,
    /// Finished calls per second over the last 10 seconds.
    pub calls_per_sec: f64,
}

/// Calls finished in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThroughputPoint {
    /// Start of the second, ms since the Unix epoch.
    pub ts_ms: u64,
    /// Calls that succeeded in it.
    pub succeeded: u64,
    /// Calls that failed (including revoked and dead-lettered) in it.
    pub failed: u64,
}

/// A recent call as the events tell it, with its envelope once final.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecentCall {
    /// The call id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its task.
    pub task: String,
    /// Where it stands: `queued`, `running`, `retrying`, `succeeded`,
    /// `failed` or `revoked`.
    pub state: String,
    /// The host that ran (or runs) it; empty before it starts.
    pub host: String,
    /// The error kind, when it failed.
    pub error_kind: Option<String>,
    /// Queue-to-finish latency in ms, when final and the event carried it.
    pub latency_ms: Option<f64>,
    /// First event seen, ms since the Unix epoch.
    pub first_ms: u64,
    /// Latest event seen, ms since the Unix epoch.
    pub updated_ms: u64,
    /// The final envelope, once fetched (see the module docs).
    pub envelope: Option<Envelope>,
}

/// How far the dashboard has read the events stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsSeen {
    /// Events read since the dashboard started.
    pub seen: u64,
    /// Id of the newest event read.
    pub last_id: Option<String>,
}

/// What the tail task has learnt from the events stream.
#[derive(Debug, Default)]
struct Tracker {
    /// Newest last; at most `cap`.
    order: VecDeque<String>,
    calls: HashMap<String, RecentCall>,
    cap: usize,
    /// Finished calls per second (start of the second → counts).
    seconds: BTreeMap<u64, ThroughputPoint>,
    events: EventsSeen,
}

/// The call state an event kind moves a call to; `None` for host events and
/// `dead` (which follows the call's `failed`).
fn state_after(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "queued" | "released" => "queued",
        "started" => "running",
        "retried" => "retrying",
        "succeeded" => "succeeded",
        "failed" => "failed",
        "revoked" => "revoked",
        _ => return None,
    })
}

impl Tracker {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            ..Self::default()
        }
    }

    fn apply(&mut self, events: &[Event]) {
        for ev in events {
            self.events.seen += 1;
            self.events.last_id = Some(ev.id.clone());
            let Some(state) = state_after(&ev.kind) else {
                continue;
            };
            if ev.call_id.is_empty() {
                continue;
            }
            let finished = matches!(state, "succeeded" | "failed" | "revoked");
            if finished {
                let second = ev.ts_ms / 1000 * 1000;
                let point = self.seconds.entry(second).or_insert(ThroughputPoint {
                    ts_ms: second,
                    ..ThroughputPoint::default()
                });
                if state == "succeeded" {
                    point.succeeded += 1;
                } else {
                    point.failed += 1;
                }
            }
            let call = self.calls.entry(ev.call_id.clone()).or_insert_with(|| {
                self.order.push_back(ev.call_id.clone());
                RecentCall {
                    id: ev.call_id.clone(),
                    queue: String::new(),
                    task: String::new(),
                    state: state.to_string(),
                    host: String::new(),
                    error_kind: None,
                    latency_ms: None,
                    first_ms: ev.ts_ms,
                    updated_ms: ev.ts_ms,
                    envelope: None,
                }
            });
            if !ev.queue.is_empty() {
                call.queue.clone_from(&ev.queue);
            }
            if !ev.task.is_empty() {
                call.task.clone_from(&ev.task);
            }
            if !ev.host.is_empty() {
                call.host.clone_from(&ev.host);
            }
            // A final state sticks: a late `started` (stale delivery) does not undo it.
            let is_final = matches!(call.state.as_str(), "succeeded" | "failed" | "revoked");
            if !is_final || finished {
                call.state = state.to_string();
            }
            if ev.error_kind.is_some() {
                call.error_kind.clone_from(&ev.error_kind);
            }
            if ev.latency_ms.is_some() {
                call.latency_ms = ev.latency_ms;
            }
            call.updated_ms = call.updated_ms.max(ev.ts_ms);
        }
        while self.order.len() > self.cap {
            if let Some(id) = self.order.pop_front() {
                self.calls.remove(&id);
            }
        }
        let horizon = now_ms().saturating_sub((THROUGHPUT_WINDOW_SECS + 5) * 1000);
        self.seconds = self.seconds.split_off(&horizon);
    }

    /// The newest calls, newest first.
    fn recent(&self) -> Vec<RecentCall> {
        self.order
            .iter()
            .rev()
            .filter_map(|id| self.calls.get(id).cloned())
            .collect()
    }

    /// One point per second of the window ending at `now_ms`, oldest first.
    fn throughput(&self, now_ms: u64) -> Vec<ThroughputPoint> {
        let end = now_ms / 1000 * 1000;
        (0..THROUGHPUT_WINDOW_SECS)
            .rev()
            .map(|back| {
                let ts = end.saturating_sub(back * 1000);
                self.seconds.get(&ts).copied().unwrap_or(ThroughputPoint {
                    ts_ms: ts,
                    ..ThroughputPoint::default()
                })
            })
            .collect()
    }

    fn set_envelope(&mut self, env: Envelope) {
        if let Some(call) = self.calls.get_mut(&env.id) {
            call.state = env.state.to_string();
            if let Some(e) = &env.error {
                call.error_kind = Some(e.kind.to_string());
            }
            if !env.host.is_empty() {
                call.host.clone_from(&env.host);
            }
            call.envelope = Some(env);
        }
    }
}

struct Inner<B> {
    broker: Arc<B>,
    config: DashboardConfig,
    tracker: Mutex<Tracker>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The dashboard over one broker: a background task tailing its events, and
/// the page and API ([`Dashboard::router`]). Dropping it stops the task.
pub struct Dashboard<B: Broker> {
    inner: Arc<Inner<B>>,
    tail: tokio::task::JoinHandle<()>,
}

impl<B: Broker> Drop for Dashboard<B> {
    fn drop(&mut self) {
        self.tail.abort();
    }
}

impl<B: Broker> Dashboard<B> {
    /// Starts tailing `broker`'s events. Must be called within a tokio runtime.
    pub fn start(broker: Arc<B>, config: DashboardConfig) -> Self {
        let inner = Arc::new(Inner {
            tracker: Mutex::new(Tracker::new(config.recent_calls)),
            broker,
            config,
        });
        let tail = tokio::spawn(tail_events(inner.clone()));
        Self { inner, tail }
    }

    /// The page and the JSON API.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/app.js", get(app_js))
            .route("/app.css", get(app_css))
            .route("/api/overview", get(overview::<B>))
            .route("/api/calls/{id}", get(call::<B>))
            .route("/api/events", get(events::<B>))
            .fallback(not_found)
            .with_state(self.inner.clone())
            .layer(axum::middleware::map_response(secure_headers))
    }

    /// Serves the dashboard on `listener`, behind `guard`, until `shutdown`
    /// completes.
    ///
    /// # Errors
    /// If accepting connections fails for good.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        guard: crate::HttpGuard,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, guard.protect(self.router()))
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// What `GET /api/overview` returns.
    pub async fn overview(&self) -> Overview {
        build_overview(&self.inner).await
    }
}

/// Reads the events stream for as long as the dashboard lives: first the
/// newest page, then everything after it, blocking while nothing is new.
async fn tail_events<B: Broker>(inner: Arc<Inner<B>>) {
    let mut cursor: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let block = cursor.as_ref().map(|_| TAIL_BLOCK);
        match inner
            .broker
            .events(cursor.as_deref(), TAIL_BATCH, block)
            .await
        {
            Ok(events) => {
                failures = 0;
                if let Some(last) = events.last() {
                    cursor = Some(last.id.clone());
                } else if cursor.is_none() {
                    // An empty stream: read it from its start from now on.
                    cursor = Some("0".to_string());
                }
                lock(&inner.tracker).apply(&events);
            }
            Err(e) => {
                failures += 1;
                let wait = Duration::from_millis(100 * u64::from(failures.min(30)));
                if failures == 1 {
                    warn!(cause = %e, "cannot read the events stream; retrying");
                } else {
                    debug!(cause = %e, retry_in = ?wait, "events stream still unreadable");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

async fn build_overview<B: Broker>(inner: &Inner<B>) -> Overview {
    let mut errors = Vec::new();
    let broker = &inner.broker;
    let (hosts, queues, dead, level) = tokio::join!(
        broker.hosts(),
        broker.queue_stats(),
        broker.dead_letters(DEAD_LETTERS_SHOWN),
        broker.event_level()
    );
    let now = now_ms();
    let mut hosts: Vec<HostView> = hosts
        .unwrap_or_else(|e| {
            errors.push(format!("hosts: {e}"));
            Vec::new()
        })
        .into_iter()
        .map(|(info, stats)| HostView::new(info, stats, now))
        .collect();
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    let queues = match queues {
        Ok(q) => Some(q),
        Err(e) => {
            errors.push(format!("queues: {e}"));
            None
        }
    };
    let dead_letters = dead.unwrap_or_else(|e| {
        errors.push(format!("dead letters: {e}"));
        Vec::new()
    });
    let event_level = level
        .map_err(|e| errors.push(format!("event level: {e}")))
        .ok();

    // Fetch envelopes of the newest finished calls that lack one.
    let wanted: Vec<String> = {
        let t = lock(&inner.tracker);
        t.recent()
            .into_iter()
            .take(ENVELOPES_PER_OVERVIEW)
            .filter(|c| {
                c.envelope.is_none()
                    && matches!(c.state.as_str(), "succeeded" | "failed" | "revoked")
            })
            .map(|c| c.id)
            .collect()
    };
    let fetched = futures::future::join_all(wanted.iter().map(|id| broker.status(id))).await;
    let (recent, throughput, events) = {
        let mut t = lock(&inner.tracker);
        for env in fetched.into_iter().flatten().flatten() {
            if env.state.is_final() {
                t.set_envelope(env);
            }
        }
        (t.recent(), t.throughput(now), t.events.clone())
    };

    let window = |secs: usize| throughput.iter().rev().skip(1).take(secs);
    let last10: u64 = window(10).map(|p| p.succeeded + p.failed).sum();
    let totals = Totals {
        hosts: hosts.len(),
        in_flight: hosts.iter().map(|h| h.in_flight).sum(),
        concurrency: hosts.iter().map(|h| h.concurrency).sum(),
        done: hosts.iter().map(|h| h.done).sum(),
        failed: hosts.iter().map(|h| h.failed).sum(),
        succeeded_window: throughput.iter().map(|p| p.succeeded).sum(),
        failed_window: throughput.iter().map(|p| p.failed).sum(),
        calls_per_sec: last10 as f64 / 10.0,
    };
    Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        prefix: inner.config.prefix.clone(),
        now_ms: now,
        refresh_ms: inner.config.refresh.as_millis() as u64,
        hosts,
        queues,
        totals,
        throughput,
        recent,
        dead_letters,
        events,
        event_level,
        errors,
    }
}

async fn overview<B: Broker>(State(inner): State<Arc<Inner<B>>>) -> Json<Overview> {
    Json(build_overview(&inner).await)
}

fn json_error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn call<B: Broker>(State(inner): State<Arc<Inner<B>>>, Path(id): Path<String>) -> Response {
    match inner.broker.status(&id).await {
        Ok(Some(env)) => Json(env).into_response(),
        Ok(None) => json_error(StatusCode::NOT_FOUND, format!("unknown call {id}")),
        Err(e) => json_error(
            StatusCode::BAD_GATEWAY,
            format!("cannot read call {id}: {e}"),
        ),
    }
}

/// Query of `GET /api/events`.
#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
    count: Option<usize>,
}

async fn events<B: Broker>(
    State(inner): State<Arc<Inner<B>>>,
    Query(q): Query<EventsQuery>,
) -> Response {
    let count = q.count.unwrap_or(100).clamp(1, 1000);
    match inner.broker.events(q.after.as_deref(), count, None).await {
        Ok(events) => Json(events).into_response(),
        Err(e) => json_error(StatusCode::BAD_GATEWAY, format!("cannot read events: {e}")),
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn app_css() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such page".to_string())
}

/// Headers on every response: a strict CSP (the page shows untrusted text),
/// no MIME sniffing, no framing, no caching of live data.
async fn secure_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, kind: &str, call: &str, ts_ms: u64) -> Event {
        Event {
            id: format!("{id}-0"),
            kind: kind.to_string(),
            call_id: call.to_string(),
            queue: "default".to_string(),
            task: "add".to_string(),
            host: if kind == "queued" { "" } else { "h1" }.to_string(),
            ts_ms,
            error_kind: (kind == "failed").then(|| "trap".to_string()),
            latency_ms: matches!(kind, "succeeded" | "failed").then_some(4.5),
        }
    }

    #[test]
    fn calls_follow_their_events_and_final_states_stick() {
        let now = now_ms() / 1000 * 1000;
        let mut t = Tracker::new(10);
        t.apply(&[
            ev(1, "queued", "a", now),
            ev(2, "queued", "b", now),
            ev(3, "host_heartbeat", "", now),
            ev(4, "started", "a", now),
            ev(5, "succeeded", "a", now + 1),
            ev(6, "started", "b", now + 1),
            ev(7, "failed", "b", now + 2),
            ev(8, "dead", "b", now + 2),
            // A stale duplicate start after the end changes nothing.
            ev(9, "started", "a", now + 3),
        ]);
        let recent = t.recent();
        let ids: Vec<&str> = recent.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"], "newest first");
        assert_eq!(recent[1].state, "succeeded");
        assert_eq!(recent[1].host, "h1");
        assert_eq!(recent[1].latency_ms, Some(4.5));
        assert_eq!(recent[0].state, "failed");
        assert_eq!(recent[0].error_kind.as_deref(), Some("trap"));
        assert_eq!(t.events.seen, 9);
        assert_eq!(t.events.last_id.as_deref(), Some("9-0"));

        let points = t.throughput(now + 500);
        assert_eq!(points.len() as u64, THROUGHPUT_WINDOW_SECS);
        let last = points.last().unwrap();
        assert_eq!((last.ts_ms, last.succeeded, last.failed), (now, 1, 1));
        assert!(points.windows(2).all(|w| w[1].ts_ms == w[0].ts_ms + 1000));
    }

    #[test]
    fn the_recent_list_is_capped_and_envelopes_attach() {
        let now = now_ms();
        let mut t = Tracker::new(3);
        let events: Vec<Event> = (0..5)
            .map(|i| ev(i, "queued", &format!("c{i}"), now))
            .collect();
        t.apply(&events);
        let ids: Vec<String> = t.recent().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["c4", "c3", "c2"]);
        assert_eq!(t.calls.len(), 3);

        let mut env = Envelope::pending("c3", wasq_broker::State::Succeeded);
        env.host = "h2".to_string();
        t.set_envelope(env);
        t.set_envelope(Envelope::pending("c0", wasq_broker::State::Succeeded));
        let c3 = t.recent().into_iter().find(|c| c.id == "c3").unwrap();
        assert_eq!((c3.state.as_str(), c3.host.as_str()), ("succeeded", "h2"));
        assert!(c3.envelope.is_some());
        assert!(
            !t.calls.contains_key("c0"),
            "a forgotten call stays forgotten"
        );
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let now = now_ms() / 1000 * 1000;
        let mut t = Tracker::new(10);
        t.apply(&[ev(1, "succeeded", "old", now - 600_000)]);
        t.apply(&[ev(2, "succeeded", "new", now)]);
        assert_eq!(t.seconds.len(), 1);
        let total: u64 = t.throughput(now).iter().map(|p| p.succeeded).sum();
        assert_eq!(total, 1);
    }
}
