//! Prometheus metrics of one host, served by `wasq host run --metrics ADDR`
//! at `GET /metrics` in the Prometheus text format (version 0.0.4).
//!
//! Encoding is the `prometheus-client` crate's (the Prometheus project's own
//! Rust client), so names, escaping and histogram layout follow the format.
//! Two kinds of values feed it:
//!
//! - [`CallMetrics`], recorded by the worker as calls end: final outcomes by
//!   state and error kind, retries, and a run-time histogram. It lives in
//!   [`WorkerStats`] so the worker needs no extra plumbing.
//! - Everything else is read at scrape time from the worker's atomics and the
//!   sandbox's [`crate::CacheStats`], so nothing is counted twice and a scrape
//!   always sees the latest values.
//!
//! | metric | type | what |
//! | --- | --- | --- |
//! | `wasq_calls_total{state,kind}` | counter | calls this host ran to a final envelope; `kind` is the error kind, empty when succeeded |
//! | `wasq_call_retries_total{kind}` | counter | attempts that failed and were scheduled again |
//! | `wasq_call_duration_seconds` | histogram | run time of every attempt (instantiate to return) |
//! | `wasq_fuel_used_total` | counter | fuel used by all attempts |
//! | `wasq_calls_in_flight` | gauge | calls running now |
//! | `wasq_concurrency` | gauge | calls this host runs at most |
//! | `wasq_claims_total` | counter | claim round trips that returned |
//! | `wasq_claimed_calls_total` | counter | deliveries those claims handed out |
//! | `wasq_calls_released_total` | counter | calls handed back to their queue on shutdown |
//! | `wasq_broker_errors_total` | counter | failed broker (Redis) operations, each retried |
//! | `wasq_module_cache_hits_total` | counter | module loads served from memory |
//! | `wasq_module_cache_disk_hits_total` | counter | module loads served from the on-disk compiled cache |
//! | `wasq_module_compiles_total` | counter | module loads that compiled (quick code when tiered) |
//! | `wasq_module_optimizations_total` | counter | background compiles of optimised code swapped in |
//! | `wasq_host_info{host,version}` | gauge | always 1; names the host process |

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use wasq_broker::Envelope;

use crate::{Sandbox, WorkerStats};

/// Upper bounds (seconds) of the run-time histogram's buckets: from half a
/// millisecond (a warm `add`) to a minute (past the default 30 s limit).
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The `Content-Type` of a `/metrics` response.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabels {
    state: String,
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

/// What the worker records as attempts end: outcomes by state and error
/// kind, retries by kind, and run times. Cheap to clone (the counters are
/// shared), so the registry holds clones of the worker's own.
#[derive(Debug, Clone)]
pub struct CallMetrics {
    outcomes: Family<OutcomeLabels, Counter>,
    retries: Family<KindLabels, Counter>,
    duration: Histogram,
}

impl Default for CallMetrics {
    fn default() -> Self {
        Self {
            outcomes: Family::default(),
            retries: Family::default(),
            duration: Histogram::new(DURATION_BUCKETS),
        }
    }
}

impl CallMetrics {
    /// Records a call's final envelope (the attempt that ended it).
    pub fn record_final(&self, env: &Envelope) {
        let labels = OutcomeLabels {
            state: env.state.to_string(),
            kind: env
                .error
                .as_ref()
                .map(|e| e.kind.to_string())
                .unwrap_or_default(),
        };
        self.outcomes.get_or_create(&labels).inc();
        self.duration.observe(env.duration_ms / 1000.0);
    }

    /// Records a failed attempt that will be tried again.
    pub fn record_retry(&self, env: &Envelope) {
        let kind = env
            .error
            .as_ref()
            .map(|e| e.kind.to_string())
            .unwrap_or_default();
        self.retries.get_or_create(&KindLabels { kind }).inc();
        self.duration.observe(env.duration_ms / 1000.0);
    }
}

/// Who the host is, for `wasq_host_info`.
#[derive(Debug, Clone)]
pub struct HostLabels {
    /// The host's unique id (as in `wasq_broker::HostInfo::id`).
    pub host: String,
    /// The wasq version it runs.
    pub version: String,
    /// Calls it runs at most.
    pub concurrency: usize,
}

/// The metrics of one host process: a registry over its worker's stats and
/// its sandbox. Encode with [`HostMetrics::encode`], or serve with
/// [`HostMetrics::serve`].
pub struct HostMetrics {
    registry: Registry,
}

impl std::fmt::Debug for HostMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMetrics").finish_non_exhaustive()
    }
}

/// Reads the worker's atomics and the sandbox's cache counters at scrape time.
struct LiveValues {
    stats: Arc<WorkerStats>,
    sandbox: Sandbox,
    concurrency: usize,
}

impl std::fmt::Debug for LiveValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveValues").finish_non_exhaustive()
    }
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

impl Collector for LiveValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.stats;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let in_flight = i64::try_from(s.in_flight.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let cache = self.sandbox.cache_stats();
        let e = &mut encoder;
        gauge(e, "wasq_calls_in_flight", "Calls running now.", in_flight)?;
        gauge(
            e,
            "wasq_concurrency",
            "Calls this host runs at most.",
            i64::try_from(self.concurrency).unwrap_or(i64::MAX),
        )?;
        counter(
            e,
            "wasq_fuel_used",
            "Fuel used by all attempts.",
            load(&s.fuel_used),
        )?;
        counter(
            e,
            "wasq_claims",
            "Claim round trips that returned.",
            load(&s.claims),
        )?;
        counter(
            e,
            "wasq_claimed_calls",
            "Deliveries handed out by claims.",
            load(&s.claimed),
        )?;
        counter(
            e,
            "wasq_calls_released",
            "Calls handed back to their queue on shutdown.",
            load(&s.released),
        )?;
        counter(
            e,
            "wasq_broker_errors",
            "Failed broker (Redis) operations; each is retried.",
            load(&s.broker_errors),
        )?;
        counter(
            e,
            "wasq_module_cache_hits",
            "Module loads served from the in-memory cache.",
            cache.hits,
        )?;
        counter(
            e,
            "wasq_module_cache_disk_hits",
            "Module loads served from the on-disk compiled cache.",
            cache.disk_hits,
        )?;
        counter(
            e,
            "wasq_module_compiles",
            "Module loads that compiled (quick code when tiered).",
            cache.compiled,
        )?;
        counter(
            e,
            "wasq_module_optimizations",
            "Background compiles of optimised code swapped in.",
            cache.optimized,
        )?;
        counter(
            e,
            "wasq_module_cache_rejected",
            "Disk cache entries refused (authentication failed) and compiled over.",
            cache.disk_rejected,
        )?;
        counter(
            e,
            "wasq_module_evictions",
            "Compiled modules dropped from memory to stay within the cache caps.",
            cache.evicted,
        )?;
        counter(
            e,
            "wasq_module_optimizations_dropped",
            "Modules left on quick code because the optimiser's queue was full.",
            cache.optimize_dropped,
        )?;
        counter(
            e,
            "wasq_calls_compile_busy",
            "Calls handed back because too many calls waited for compiles.",
            load(&s.compile_busy),
        )?;
        gauge(
            e,
            "wasq_loads_waiting",
            "Calls waiting for their module to compile.",
            i64::try_from(self.sandbox.loads_waiting()).unwrap_or(i64::MAX),
        )?;
        Ok(())
    }
}

impl HostMetrics {
    /// Metrics over a worker's `stats` and the `sandbox` it runs calls in.
    pub fn new(stats: Arc<WorkerStats>, sandbox: Sandbox, host: HostLabels) -> Self {
        let mut registry = Registry::default();
        registry.register(
            "wasq_calls",
            "Calls this host ran to a final envelope, by state and error kind",
            stats.calls.outcomes.clone(),
        );
        registry.register(
            "wasq_call_retries",
            "Failed attempts scheduled to run again, by error kind",
            stats.calls.retries.clone(),
        );
        registry.register(
            "wasq_call_duration_seconds",
            "Run time of each attempt, instantiate to return",
            stats.calls.duration.clone(),
        );
        registry.register(
            "wasq_host",
            "The host process",
            Info::new(vec![
                ("host".to_string(), host.host),
                ("version".to_string(), host.version),
            ]),
        );
        registry.register_collector(Box::new(LiveValues {
            stats,
            sandbox,
            concurrency: host.concurrency,
        }));
        Self { registry }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Serves `GET /metrics` on `listener`, behind `guard`, until the task
    /// is dropped.
    ///
    /// # Errors
    /// If accepting connections fails for good.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        guard: crate::HttpGuard,
    ) -> std::io::Result<()> {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        let app = Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(self);
        axum::serve(listener, guard.protect(app)).await
    }
}

async fn metrics_handler(AxumState(metrics): AxumState<Arc<HostMetrics>>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasq_broker::{ErrorKind, State, TaskError};

    fn env(state: State, kind: Option<ErrorKind>, ms: f64) -> Envelope {
        let mut e = match kind {
            Some(k) => Envelope::failed("c", TaskError::new(k, "x")),
            None => Envelope::pending("c", state),
        };
        e.state = state;
        e.duration_ms = ms;
        e
    }

    #[test]
    fn text_has_outcomes_histogram_and_live_values() {
        let stats = Arc::new(WorkerStats::default());
        stats.calls.record_final(&env(State::Succeeded, None, 0.7));
        stats.calls.record_final(&env(State::Succeeded, None, 3.0));
        stats
            .calls
            .record_final(&env(State::Failed, Some(ErrorKind::Trap), 2000.0));
        stats
            .calls
            .record_retry(&env(State::Failed, Some(ErrorKind::TaskError), 1.5));
        stats.fuel_used.store(1234, Ordering::Relaxed);
        stats.in_flight.store(2, Ordering::Relaxed);
        stats.broker_errors.store(5, Ordering::Relaxed);
        let sandbox = Sandbox::new(crate::SandboxConfig::default()).unwrap();
        let m = HostMetrics::new(
            stats.clone(),
            sandbox,
            HostLabels {
                host: "h\"1".into(),
                version: "0.1.0".into(),
                concurrency: 8,
            },
        );
        let text = m.encode();
        for line in [
            "# TYPE wasq_calls_total counter",
            "wasq_calls_total{state=\"succeeded\",kind=\"\"} 2",
            "wasq_calls_total{state=\"failed\",kind=\"trap\"} 1",
            "wasq_call_retries_total{kind=\"task_error\"} 1",
            "# TYPE wasq_call_duration_seconds histogram",
            "wasq_call_duration_seconds_bucket{le=\"0.001\"} 1",
            "wasq_call_duration_seconds_bucket{le=\"0.005\"} 3",
            "wasq_call_duration_seconds_bucket{le=\"2.5\"} 4",
            "wasq_call_duration_seconds_bucket{le=\"+Inf\"} 4",
            "wasq_call_duration_seconds_count 4",
            "# HELP wasq_fuel_used_total Fuel used by all attempts.",
            "wasq_fuel_used_total 1234",
            "wasq_calls_in_flight 2",
            "wasq_concurrency 8",
            "wasq_broker_errors_total 5",
            "wasq_module_compiles_total 0",
            "wasq_host_info{host=\"h\\\"1\",version=\"0.1.0\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "not OpenMetrics:\n{text}");
    }
}
