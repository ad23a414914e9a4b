//! Logs, metrics, and the operator's HTTP endpoint.
//!
//! - Logs: `tracing`, as text or JSON lines on stdout (stderr for commands that print a report); every call runs in a `call` span carrying
//!   `rpc`, `account` and `request_id`.
//! - Metrics: the `metrics` facade, rendered by the Prometheus exporter. The names are the
//!   constants below; README "Metrics" says what each means.
//! - Traces: OpenTelemetry over OTLP/gRPC when `otel_endpoint` is set ([`traces`]).
//! - HTTP (`metrics_listen`): `GET /metrics`, `GET /livez` (200 while the process runs) and
//!   `GET /readyz` (200 while serving, 503 otherwise), for probes that cannot speak gRPC.

use std::io::IsTerminal;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub mod traces;

pub use traces::{TraceConfig, Traces};

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    /// One JSON object per line.
    Json,
}

pub const CALLS: &str = "credit_sidecar_calls_total";
pub const CALL_DURATION: &str = "credit_sidecar_call_duration_seconds";
pub const DECLINES: &str = "credit_sidecar_declines_total";
pub const REFUSALS: &str = "credit_sidecar_refusals_total";
pub const CALLS_IN_FLIGHT: &str = "credit_sidecar_calls_in_flight";
pub const OPEN_HOLDS: &str = "credit_sidecar_open_holds";
pub const HELD_CREDITS: &str = "credit_sidecar_held_credits";
pub const REDIS_ERRORS: &str = "credit_sidecar_redis_errors_total";
pub const REDIS_STATE_LOST: &str = "credit_sidecar_redis_state_lost";
pub const DEPENDENCY_UP: &str = "credit_sidecar_dependency_up";
pub const SETTLE_BACKLOG: &str = "credit_sidecar_settle_backlog_events";
pub const SETTLE_LAG: &str = "credit_sidecar_settle_lag_seconds";
pub const SETTLED: &str = "credit_sidecar_settled_events_total";
pub const SETTLE_FAILURES: &str = "credit_sidecar_settle_failures_total";
pub const SWEPT_HOLDS: &str = "credit_sidecar_swept_holds_total";
pub const AUTH_RELOADS: &str = "credit_sidecar_auth_reloads_total";
pub const BUILD_INFO: &str = "credit_sidecar_build_info";
pub const RULES_RELOADS: &str = "credit_sidecar_rules_reloads_total";
pub const JOURNAL_ENTRIES: &str = "credit_sidecar_journal_entries";
pub const JOURNAL_COMMITS: &str = "credit_sidecar_journal_commits_total";
pub const FAIL_OPEN_HOLDS: &str = "credit_sidecar_fail_open_holds";
pub const FAIL_OPEN_CALLS: &str = "credit_sidecar_fail_open_total";
pub const OVERDRAWN_CREDITS: &str = "credit_sidecar_overdrawn_credits_total";
pub const ALERTS: &str = "credit_sidecar_alerts_total";
pub const WEBHOOK_DELIVERIES: &str = "credit_sidecar_webhook_deliveries_total";
pub const WEBHOOK_PENDING: &str = "credit_sidecar_webhook_pending";

/// Every metric this binary exports under its own name (a histogram also as `_bucket`, `_sum`
/// and `_count`). Dashboards and alert rules may name only these and [`PROCESS_METRICS`].
pub const EXPORTED: [&str; 26] = [
    CALLS,
    CALL_DURATION,
    DECLINES,
    REFUSALS,
    CALLS_IN_FLIGHT,
    OPEN_HOLDS,
    HELD_CREDITS,
    REDIS_ERRORS,
    REDIS_STATE_LOST,
    DEPENDENCY_UP,
    SETTLE_BACKLOG,
    SETTLE_LAG,
    SETTLED,
    SETTLE_FAILURES,
    SWEPT_HOLDS,
    AUTH_RELOADS,
    BUILD_INFO,
    RULES_RELOADS,
    JOURNAL_ENTRIES,
    JOURNAL_COMMITS,
    FAIL_OPEN_HOLDS,
    FAIL_OPEN_CALLS,
    OVERDRAWN_CREDITS,
    ALERTS,
    WEBHOOK_DELIVERIES,
    WEBHOOK_PENDING,
];

/// The process metrics (`metrics-process`, as Prometheus's Go client names them), collected at
/// each scrape.
pub const PROCESS_METRICS: [&str; 8] = [
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_virtual_memory_max_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
];

/// Call latency buckets, in seconds: 50 µs to 5 s.
const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Installs the global log subscriber (and, with `traces`, the OpenTelemetry layer beside it).
/// `level` was validated by the configuration; it filters the logs only, so traces keep their
/// spans when the logs are quieter. Logs go to stdout, or to stderr with `to_stderr` (for
/// commands whose report owns stdout). Returns the trace exporter to shut down at the end.
pub fn init(
    format: LogFormat,
    level: &str,
    traces: Option<&TraceConfig>,
    to_stderr: bool,
) -> Result<Option<Traces>, String> {
    use tracing_subscriber::filter::filter_fn;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};

    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| "info".into());
    // Colour codes only for a person at a terminal, never into files and pipes.
    let terminal = if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
    let writer = tracing_subscriber::fmt::writer::BoxMakeWriter::new(move || -> Box<dyn std::io::Write> {
        if to_stderr { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) }
    });
    let logs = tracing_subscriber::fmt::layer().with_ansi(terminal).with_writer(writer);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs.json().with_current_span(true).with_span_list(false).with_filter(filter).boxed(),
    };
    let (traces, layer) = match traces {
        Some(config) => {
            let (traces, tracer) = Traces::start(config)?;
            let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(filter_fn(traces::exported));
            (Some(traces), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(logs).with(layer).try_init().map_err(|error| error.to_string())?;
    Ok(traces)
}

/// The scrape page's source: the global Prometheus recorder, and the process metrics collected
/// at each scrape.
#[derive(Clone)]
pub struct Metrics {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
}

impl Metrics {
    fn render(&self) -> String {
        self.process.collect();
        self.handle.render()
    }
}

/// Installs the global Prometheus recorder; the build info (`version`) is set once.
pub fn install_metrics() -> Result<Metrics, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new().set_buckets(&LATENCY_BUCKETS)?.install_recorder()?;
    describe();
    let process = metrics_process::Collector::default();
    process.describe();
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    Ok(Metrics { handle, process })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CALLS, "Calls answered, by RPC and outcome (or error code).");
    describe_histogram!(CALL_DURATION, Unit::Seconds, "Call latency inside the server, by RPC and outcome.");
    describe_counter!(DECLINES, "Declined state changes, by RPC and reason.");
    describe_counter!(REFUSALS, "Calls refused before reaching the ledger, by reason.");
    describe_gauge!(CALLS_IN_FLIGHT, "Calls being served now.");
    describe_gauge!(OPEN_HOLDS, "Open reservations in the settled ledger.");
    describe_gauge!(HELD_CREDITS, "Credits held by open reservations in the settled ledger.");
    describe_counter!(REDIS_ERRORS, "Redis round trips that failed or timed out.");
    describe_gauge!(REDIS_STATE_LOST, "1 while Redis is known to have lost state the ledger holds (calls refused).");
    describe_gauge!(DEPENDENCY_UP, "1 while the dependency answers its health check, else 0.");
    describe_gauge!(SETTLE_BACKLOG, "Events in the outbox not yet settled into SQL.");
    describe_gauge!(SETTLE_LAG, Unit::Seconds, "Age of the oldest unsettled event.");
    describe_counter!(SETTLED, "Events this process wrote to SQL.");
    describe_counter!(SETTLE_FAILURES, "Settlement reads or writes that failed and were retried.");
    describe_counter!(SWEPT_HOLDS, "Holds expired by the background sweep.");
    describe_counter!(AUTH_RELOADS, "Reloads of the bearer tokens file, by result.");
    describe_counter!(RULES_RELOADS, "Reloads of the price book and categories from the config file, by result.");
    describe_gauge!(JOURNAL_ENTRIES, "Commits in the outage journal waiting for Redis.");
    describe_counter!(
        JOURNAL_COMMITS,
        "Commits through the outage journal, by result: journaled, full, error, applied, declined, refused, unreadable."
    );
    describe_gauge!(FAIL_OPEN_HOLDS, "Holds admitted or taken over during a Redis outage, not yet charged to Redis.");
    describe_counter!(
        FAIL_OPEN_CALLS,
        "Fail-open calls and settlements, by result: reserved, extended, taken_over, allowance_spent, settled, refused."
    );
    describe_counter!(OVERDRAWN_CREDITS, "Credits outage holds charged beyond what their accounts had (owed).");
    describe_counter!(ALERTS, "Alerts this process recorded (thresholds crossed), by kind.");
    describe_counter!(WEBHOOK_DELIVERIES, "Webhook delivery attempts, by result: delivered, retried, failed.");
    describe_gauge!(WEBHOOK_PENDING, "Alert deliveries waiting to be posted (or retried), in the ledger database.");
    describe_gauge!(BUILD_INFO, "Always 1; the label `version` is the binary's version.");
    // Unlabelled counters exist from the start, so rate() over them works before the first event.
    for counter in [REDIS_ERRORS, SETTLED, SETTLE_FAILURES, SWEPT_HOLDS, OVERDRAWN_CREDITS] {
        metrics::counter!(counter).absolute(0);
    }
}

#[derive(Clone)]
struct Endpoint {
    metrics: Option<Metrics>,
    serving: watch::Receiver<bool>,
}

/// Serves `/metrics`, `/livez` and `/readyz` on `listener` until `stopped` closes. Without a
/// recorder handle `/metrics` answers 404.
pub async fn serve_http(
    listener: TcpListener,
    metrics: Option<Metrics>,
    serving: watch::Receiver<bool>,
    mut stopped: watch::Receiver<()>,
) {
    if let Some(handle) = metrics.as_ref().map(|metrics| metrics.handle.clone()) {
        let mut upkeep_stopped = stopped.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = ticker.tick() => handle.run_upkeep(),
                    _ = upkeep_stopped.changed() => return,
                }
            }
        });
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Endpoint { metrics, serving });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stopped.changed().await;
        })
        .await;
    if let Err(error) = result {
        tracing::error!(%error, "metrics endpoint failed");
    }
}

async fn scrape(State(endpoint): State<Endpoint>) -> (StatusCode, String) {
    match &endpoint.metrics {
        Some(metrics) => (StatusCode::OK, metrics.render()),
        None => (StatusCode::NOT_FOUND, "metrics are not recorded in this process\n".into()),
    }
}

async fn ready(State(endpoint): State<Endpoint>) -> (StatusCode, &'static str) {
    if *endpoint.serving.borrow() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}
