//! Health: `grpc.health.v1` for the server (`""`) and each service, and the `/readyz` flag.
//! They are SERVING while Redis (when configured) and the database answer, NOT_SERVING while
//! either does not, and NOT_SERVING from the start of a shutdown. The service [`LIVENESS`] is
//! SERVING while the process runs: liveness and startup probes use it, so an outage of a
//! dependency takes a pod out of rotation without restarting it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::engine::Engine;
use crate::settle::store::Store;
use crate::telemetry;

/// The health service name that only says the process is up.
pub const LIVENESS: &str = "liveness";

/// The services whose status follows the dependencies.
const SERVICES: [&str; 3] = ["", crate::api::SERVICE_NAMES[0], crate::api::SERVICE_NAMES[1]];

/// Sets every status at once; shared by the dependency watch and shutdown.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    serving: watch::Sender<bool>,
    /// Set at shutdown: from then on nothing turns SERVING again. The lock makes each change of
    /// all statuses one step, so a check in progress cannot overwrite the shutdown's.
    shutting_down: Arc<tokio::sync::Mutex<bool>>,
}

impl Health {
    /// Starts NOT_SERVING (until the first check passes), with [`LIVENESS`] SERVING.
    pub async fn new(reporter: HealthReporter) -> Self {
        reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        let health = Self { reporter, serving: watch::Sender::new(false), shutting_down: Arc::default() };
        health.set(false).await;
        health
    }

    /// Follows readiness (for `/readyz`).
    pub fn serving(&self) -> watch::Receiver<bool> {
        self.serving.subscribe()
    }

    pub async fn set(&self, serving: bool) {
        let shutting_down = self.shutting_down.lock().await;
        self.apply(serving && !*shutting_down).await;
    }

    async fn apply(&self, serving: bool) {
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for service in SERVICES {
            self.reporter.set_service_status(service, status).await;
        }
        self.serving.send_replace(serving);
    }

    /// The start of a shutdown: NOT_SERVING, for good.
    pub async fn shut_down(&self) {
        let mut shutting_down = self.shutting_down.lock().await;
        *shutting_down = true;
        self.apply(false).await;
    }

    /// At shutdown, after [`Health::shut_down`]: forgets every service, which ends open
    /// `Watch` streams (after their last NOT_SERVING), so they do not hold the server open for
    /// the whole grace period.
    pub async fn close(&self) {
        let mut reporter = self.reporter.clone();
        for service in SERVICES.into_iter().chain([LIVENESS]) {
            reporter.clear_service_status(service).await;
        }
    }
}

/// The settled ledger's open holds are sampled for the metrics every this many checks.
const CHECKS_PER_LEDGER_SAMPLE: u32 = 15;

/// Checks the engine's store and the database every `interval` until `stopped` closes, and sets
/// health and the dependency gauges from the answers. The first check runs at once. Every
/// [`CHECKS_PER_LEDGER_SAMPLE`] intervals it also samples the settled ledger's open holds, apart from the
/// check, so a slow sample never makes a replica NOT_SERVING.
pub async fn watch_dependencies(
    engine: Engine,
    store: Option<Store>,
    interval: Duration,
    health: Health,
    mut stopped: watch::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<bool> = None;
    let mut sampled: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        // A check may take at most the interval (and never less than a second).
        let bound = interval.max(Duration::from_secs(1));
        let redis = match engine.ping().await {
            Ok(()) => Ok(()),
            Err(error) => Err(error.to_string()),
        };
        if let Some(engine) = engine.redis_engine() {
            metrics::gauge!(telemetry::DEPENDENCY_UP, "dependency" => "redis").set(f64::from(u8::from(redis.is_ok())));
            let lost = engine.state_lost().is_some();
            metrics::gauge!(telemetry::REDIS_STATE_LOST).set(f64::from(u8::from(lost)));
        }
        let database = match &store {
            Some(store) => match tokio::time::timeout(bound, store.ping()).await {
                Ok(result) => result.map_err(|error| error.to_string()),
                Err(_) => Err(format!("no answer within {} ms", bound.as_millis())),
            },
            None => Ok(()),
        };
        if let Some(store) = store.as_ref().filter(|_| database.is_ok())
            && sampled.is_none_or(|at| at.elapsed() >= interval * CHECKS_PER_LEDGER_SAMPLE)
        {
            sample_ledger(store, bound).await;
            sampled = Some(tokio::time::Instant::now());
        }
        if store.is_some() {
            metrics::gauge!(telemetry::DEPENDENCY_UP, "dependency" => "database")
                .set(f64::from(u8::from(database.is_ok())));
        }
        let serving = redis.is_ok() && database.is_ok();
        if last != Some(serving) {
            match (&redis, &database) {
                (Ok(()), Ok(())) => tracing::info!("dependencies answer: serving"),
                (Err(error), _) => tracing::warn!(%error, "redis does not answer: not serving"),
                (_, Err(error)) => tracing::warn!(%error, "the database does not answer: not serving"),
            }
            health.set(serving).await;
            last = Some(serving);
        }
    }
}

/// Sets the open-holds gauges from the settled ledger (bounded; a failure only logs).
async fn sample_ledger(store: &Store, bound: Duration) {
    match tokio::time::timeout(bound, store.open_holds()).await {
        Ok(Ok((holds, held))) => {
            metrics::gauge!(telemetry::OPEN_HOLDS).set(holds as f64);
            metrics::gauge!(telemetry::HELD_CREDITS).set(held as f64);
        }
        Ok(Err(error)) => tracing::debug!(%error, "sampling open holds failed"),
        Err(_) => tracing::debug!("sampling open holds took too long"),
    }
}
