//! Wiring: the gRPC services (with health and reflection) behind the [gate](crate::gate) on a
//! listener the caller bound, the HTTP endpoint for metrics and probes, the background expiry
//! sweep, the dependency health checks, the token reloads and the settler; all stop on the
//! caller's shutdown future. Tests bind port 0 and pass their own future, so nothing here sleeps
//! or guesses when the server is ready.
//!
//! Shutdown order: health turns NOT_SERVING (and calls are still taken for `shutdown_drain`,
//! while balancers notice); the server stops taking calls and lets calls in
//! flight finish; the sweep and the checks stop; the settler flushes the outbox. All of it is
//! bounded by the grace period; [`serve`] returns [`ServeError::GraceExceeded`] when that ran out.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::alerts::Alerts;
use crate::api::{AdminService, AuthorizerService, FILE_DESCRIPTOR_SET};
use crate::auth::{Tokens, watch_tokens};
use crate::config::{TlsConfig, settings};
use crate::connection::Watched;
use crate::engine::Engine;
use crate::engine::redis::outbox::RedisOutbox;
use crate::gate::{GateLayer, Limits};
use crate::health::{Health, watch_dependencies};
use crate::journal::Journal;
use crate::settle::outbox::Outbox;
use crate::settle::settler::{SettleOptions, SettleStats, Settler};
use crate::settle::store::{Backend, SQLITE_CHECKPOINT_INTERVAL, Store};

#[derive(Clone)]
pub struct ServeOptions {
    pub sweep_interval: Duration,
    /// Settle the engine's events into this store; None runs without settlement (tests of the
    /// rules alone).
    pub settle: Option<SettleSetup>,
    pub limits: Limits,
    /// None: authentication is off.
    pub auth: Option<AuthSetup>,
    pub tls: Option<TlsConfig>,
    /// How often Redis and the database are checked for health.
    pub health_interval: Duration,
    /// When Redis lost its state, restore it from the ledger automatically (Redis engine).
    pub redis_state_recovery: bool,
    /// After the shutdown future resolves, keep serving this long while NOT_SERVING.
    pub shutdown_drain: Duration,
    /// Bounds finishing calls and flushing settlement at shutdown (after the drain).
    pub shutdown_grace: Duration,
    /// Re-read this config file this often for a new price book and categories.
    pub rules_reload: Option<(std::path::PathBuf, Duration)>,
    /// The outage journal (Redis engine): commits accepted while Redis is away.
    pub journal: Option<Arc<Journal>>,
    /// How often a non-empty journal is tried against Redis (and closed fail-open holds are
    /// charged to it).
    pub journal_retry: Duration,
    /// Fail-open holds (Redis engine, `fail_open_categories`), kept in the journal's file.
    pub outage: Option<Arc<crate::outage::Outage>>,
    /// How often accounts with alert thresholds are checked (with settlement's store).
    pub alert_interval: Duration,
    /// Where recorded alerts are told (tests hold a clone to run passes themselves).
    pub alerts: Arc<Alerts>,
}

impl ServeOptions {
    /// Defaults for everything but the sweep: no settlement, no auth, no TLS.
    pub fn new(sweep_interval: Duration) -> Self {
        Self {
            sweep_interval,
            settle: None,
            limits: Limits::default(),
            auth: None,
            tls: None,
            health_interval: default_ms(&settings::HEALTH_INTERVAL_MS),
            redis_state_recovery: false,
            shutdown_drain: default_ms(&settings::SHUTDOWN_DRAIN_MS),
            shutdown_grace: default_ms(&settings::SHUTDOWN_GRACE_MS),
            rules_reload: None,
            journal: None,
            journal_retry: crate::journal::RETRY_INTERVAL,
            outage: None,
            alert_interval: default_ms(&settings::ALERT_INTERVAL_MS),
            alerts: Arc::default(),
        }
    }
}

fn default_ms(setting: &settings::Setting) -> Duration {
    Duration::from_millis(setting.default_number() as u64)
}

#[derive(Clone)]
pub struct AuthSetup {
    pub tokens: Tokens,
    /// Re-read the tokens from this file when it changes, checking every interval.
    pub reload: Option<(std::path::PathBuf, Duration)>,
}

#[derive(Clone)]
pub struct SettleSetup {
    pub store: Store,
    pub options: SettleOptions,
    /// This replica's name in the Redis consumer group.
    pub consumer: String,
    /// Events another replica left unacknowledged this long are taken over.
    pub claim_idle: Duration,
}

/// The operator's HTTP endpoint: `/metrics` (when a recorder is installed), `/livez`, `/readyz`.
pub struct HttpSetup {
    pub listener: TcpListener,
    pub metrics: Option<crate::telemetry::Metrics>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("starting settlement: {0}")]
    Settle(#[from] crate::engine::Error),
    #[error("server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("shutdown did not finish within the grace period of {} ms", .0.as_millis())]
    GraceExceeded(Duration),
}

/// What a finished server reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Served {
    /// Events this process wrote to SQL.
    pub settled: u64,
}

/// Serves until `shutdown` resolves, then drains as described above.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    options: ServeOptions,
    http: Option<HttpSetup>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Served, ServeError> {
    // Everything that can fail comes before any other task is started.
    let store = options.settle.as_ref().map(|setup| setup.store.clone());
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
    let bytes_max = options.limits.request_bytes_max;
    let authorizer = AuthorizerService::new(engine.clone(), options.journal.clone(), options.outage.clone())
        .into_server()
        .max_decoding_message_size(bytes_max);
    // Turns true when the server stops taking calls: open WatchAccount streams end then.
    let (closing, closing_seen) = watch::channel(false);
    let alerts = options.alerts.clone();
    let admin = AdminService::new(engine.clone(), store.clone(), closing_seen, alerts.clone())
        .into_server()
        .max_decoding_message_size(bytes_max);
    let gate = GateLayer::new(options.limits, options.auth.as_ref().map(|auth| auth.tokens.clone()));
    let limits = options.limits;
    // Keepalive finds peers that vanished (HTTP/2 PINGs unanswered; TCP probes below);
    // `connection` closes live ones that stay idle.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout));
    if let Some(tls) = &options.tls {
        builder = builder.tls_config(tls_config(tls))?;
    }
    let (stop_settler, settler_stopped) = watch::channel(());
    let settler = match &options.settle {
        Some(setup) => Some(spawn_settler(&engine, setup, settler_stopped, options.shutdown_grace).await?),
        None => None,
    };
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    let (stop_tasks, tasks_stopped) = watch::channel(());
    let mut tasks = background_tasks(&engine, store.as_ref(), &options, &health, &tasks_stopped);
    if let Some(store) = &store {
        if alerts.webhooks().is_some() {
            let (alerts, store) = (alerts.clone(), store.clone());
            tasks.push(tokio::spawn(crate::alerts::delivery_loop(alerts, store, tasks_stopped.clone())));
        }
        let (engine, store, every) = (engine.clone(), store.clone(), options.alert_interval);
        tasks.push(tokio::spawn(crate::alerts::alert_loop(alerts, engine, store, every, tasks_stopped.clone())));
    }
    let (stop_http, http_stopped) = watch::channel(());
    let http_task = http.map(|setup| {
        tokio::spawn(crate::telemetry::serve_http(setup.listener, setup.metrics, health.serving(), http_stopped))
    });

    // Health turns NOT_SERVING first, so balancers stop sending calls while these drain.
    let draining = {
        let (health, drain) = (health.clone(), options.shutdown_drain);
        async move {
            shutdown.await;
            health.shut_down().await;
            if !drain.is_zero() {
                tracing::info!(drain_ms = drain.as_millis() as u64, "shutting down: not serving, still taking calls");
                tokio::time::sleep(drain).await;
            }
            tracing::info!("shutting down: no new calls, finishing calls in flight");
            closing.send_replace(true);
            health.close().await;
        }
    };
    let grace = options.shutdown_grace;
    let (shutdown_started, started) = watch::channel(false);
    let draining = async move {
        draining.await;
        shutdown_started.send_replace(true);
    };
    let server = builder
        .layer(gate)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(authorizer)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming(listener, limits), draining);
    // Serve until the shutdown starts; from then on the rest must finish within the grace period.
    let (result, deadline, mut in_time) = serve_until_drained(server, started, grace).await;
    drop(stop_tasks);
    for task in tasks {
        in_time &= finish(task, deadline, "background task").await.is_some();
    }
    last_try(&options, &engine, deadline).await;
    drop(stop_settler);
    let mut served = Served::default();
    if let Some((task, stats)) = settler {
        let flushed = finish(task, deadline, "settler").await;
        in_time &= flushed == Some(true);
        served.settled = stats.settled.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(settled = served.settled, flushed = flushed == Some(true), "settlement stopped");
    }
    drop(stop_http);
    if let Some(task) = http_task {
        in_time &= finish(task, deadline, "metrics endpoint").await.is_some();
    }
    result?;
    if in_time { Ok(served) } else { Err(ServeError::GraceExceeded(grace)) }
}

/// Serves until the shutdown starts, then waits for the calls in flight until `grace` has passed
/// (cutting off the rest). Returns the server's result, the shutdown's deadline, and whether the
/// calls finished in time.
async fn serve_until_drained(
    server: impl Future<Output = Result<(), tonic::transport::Error>>,
    mut started: watch::Receiver<bool>,
    grace: Duration,
) -> (Result<(), tonic::transport::Error>, tokio::time::Instant, bool) {
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => Some(result),
        _ = started.wait_for(|started| *started) => None,
    };
    let deadline = tokio::time::Instant::now() + grace;
    match result {
        Some(result) => (result, deadline, true),
        None => match tokio::time::timeout_at(deadline, &mut server).await {
            Ok(result) => (result, deadline, true),
            Err(_) => {
                tracing::warn!("calls in flight did not finish within the grace period; cutting them off");
                (Ok(()), deadline, false)
            }
        },
    }
}

/// The tasks that run while the server serves: the sweep, the dependency watch, and (as
/// configured) the automatic recovery, forgetting remembered answers, checkpointing a SQLite
/// ledger, reloading tokens.
fn background_tasks(
    engine: &Engine,
    store: Option<&Store>,
    options: &ServeOptions,
    health: &Health,
    stopped: &watch::Receiver<()>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(sweep_loop(engine.clone(), options.sweep_interval, stopped.clone())));
    if let Some(journal) = &options.journal {
        let (journal, outage, every) = (journal.clone(), options.outage.clone(), options.journal_retry);
        tasks.push(tokio::spawn(journal_loop(journal, outage, engine.clone(), every, stopped.clone())));
    }
    tasks.push(tokio::spawn(watch_dependencies(
        engine.clone(),
        store.cloned(),
        options.health_interval,
        health.clone(),
        stopped.clone(),
    )));
    let retention_ms = engine.rules().request_id_retention_ms;
    if let (Some(store), Some(redis), true) = (store, engine.redis_engine(), options.redis_state_recovery) {
        let (store, interval) = (store.clone(), options.health_interval);
        tasks.push(tokio::spawn(recovery_loop(store, redis, retention_ms, interval, stopped.clone())));
    }
    if let (Some(store), true) = (store, engine.keeps_answers_in_sql()) {
        tasks.push(tokio::spawn(forget_loop(store.clone(), retention_ms, stopped.clone())));
    }
    if let Some(store) = store.filter(|store| store.backend() == Backend::Sqlite) {
        tasks.push(tokio::spawn(checkpoint_loop(store.clone(), stopped.clone())));
    }
    if let Some(AuthSetup { tokens, reload: Some((file, interval)) }) = &options.auth {
        tasks.push(tokio::spawn(watch_tokens(tokens.clone(), file.clone(), *interval, stopped.clone())));
    }
    if let Some((file, interval)) = &options.rules_reload {
        tasks.push(tokio::spawn(watch_rules(engine.clone(), file.clone(), *interval, stopped.clone())));
    }
    tasks
}

/// Re-reads the config file every `interval` and, when its text changed, puts its price book
/// and categories in force (the rest of the file needs a restart). A file that does not parse or
/// check is logged once and the rules in force stay.
async fn watch_rules(engine: Engine, path: std::path::PathBuf, interval: Duration, mut stopped: watch::Receiver<()>) {
    let mut seen = tokio::fs::read_to_string(&path).await.ok();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let Ok(text) = tokio::fs::read_to_string(&path).await else { continue };
        if seen.as_deref() == Some(text.as_str()) {
            continue;
        }
        match crate::config::reload_rules(&text, &engine.rules()) {
            Ok(rules) => {
                let (categories, skus) = (rules.categories.len(), rules.price_book.len());
                engine.replace_rules(rules);
                tracing::info!(categories, skus, file = %path.display(), "price book and categories reloaded");
                metrics::counter!(crate::telemetry::RULES_RELOADS, "result" => "ok").increment(1);
            }
            Err(error) => {
                tracing::error!(%error, file = %path.display(), "config file is invalid; keeping the price book and categories");
                metrics::counter!(crate::telemetry::RULES_RELOADS, "result" => "error").increment(1);
            }
        }
        seen = Some(text);
    }
}

/// The accepted connections, each closed once idle for `connection_idle_max`.
fn incoming(listener: TcpListener, limits: Limits) -> impl futures_util::Stream<Item = std::io::Result<Watched>> {
    use futures_util::StreamExt;
    // TCP_NODELAY: a response's frames go out at once instead of waiting on Nagle's algorithm
    // for the client's ACK of the previous segment.
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(limits.tcp_keepalive))
        .map(move |accepted| accepted.map(|socket| Watched::new(socket, limits.connection_idle_max)))
}

/// Waits for a stopping task until `deadline`, then aborts it; None when it failed or was cut.
async fn finish<T>(mut task: tokio::task::JoinHandle<T>, deadline: tokio::time::Instant, what: &str) -> Option<T> {
    match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(error)) => {
            tracing::error!(%error, "{what} failed");
            None
        }
        Err(_) => {
            tracing::warn!("{what} did not stop within the grace period; aborting it");
            task.abort();
            None
        }
    }
}

fn tls_config(tls: &TlsConfig) -> ServerTlsConfig {
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem));
    if let Some(ca) = &tls.client_ca_pem {
        config = config.client_ca_root(Certificate::from_pem(ca));
    }
    config
}

/// Starts settling `engine`'s outbox into `setup.store` until `stopped` fires, then flushes
/// (bounded by `grace`); the task returns whether the flush emptied the outbox in time. On Redis
/// the settler joins the consumer group as `setup.consumer`.
pub async fn spawn_settler(
    engine: &Engine,
    setup: &SettleSetup,
    stopped: watch::Receiver<()>,
    grace: Duration,
) -> Result<(tokio::task::JoinHandle<bool>, Arc<SettleStats>), crate::engine::Error> {
    fn start<O: Outbox>(
        outbox: Arc<O>,
        setup: &SettleSetup,
        stopped: watch::Receiver<()>,
        grace: Duration,
    ) -> (tokio::task::JoinHandle<bool>, Arc<SettleStats>) {
        let settler = Settler::new(outbox, setup.store.clone(), setup.options);
        let stats = settler.stats();
        (tokio::spawn(settler.run(stopped, grace)), stats)
    }
    if let Some(redis) = engine.redis_engine() {
        let outbox = RedisOutbox::join(redis, setup.consumer.clone(), setup.claim_idle).await?;
        return Ok(start(Arc::new(outbox), setup, stopped, grace));
    }
    match engine.memory_outbox() {
        Some(outbox) => Ok(start(outbox, setup, stopped, grace)),
        None => Err(crate::engine::Error::Unavailable("this embedded engine keeps no outbox".into())),
    }
}

/// The opt-in automatic recovery: every `interval`, if Redis lost its state, restores it from
/// the ledger (one replica, under a lock; the others wait for its stamp), until `stopped` closes.
async fn recovery_loop(
    store: Store,
    redis: Arc<crate::engine::redis::RedisEngine>,
    retention_ms: i64,
    interval: Duration,
    mut stopped: watch::Receiver<()>,
) {
    use crate::maintenance::{Recovery, recover};
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        let Some(cause) = redis.state_lost() else { continue };
        tracing::warn!(cause, "restoring Redis from the ledger (redis_state_recovery = rebuild)");
        match recover(&store, &redis, retention_ms).await {
            Ok(Recovery::Restored(accounts)) => tracing::warn!(accounts, "Redis restored from the ledger"),
            Ok(Recovery::Elsewhere) => tracing::info!("another replica is restoring Redis"),
            Ok(Recovery::Unsettled(events)) => {
                tracing::warn!(events, "Redis's outbox holds unsettled events; restoring once they settle")
            }
            Err(error) => tracing::error!(%error, "restoring Redis from the ledger failed; will retry"),
        }
    }
}

/// How often the embedded engine's remembered answers past retention are deleted from SQL.
const FORGET_INTERVAL: Duration = Duration::from_secs(60);

/// Deletes the embedded engine's remembered answers that no restart needs any more (the ledger
/// in memory forgets them at its sweeps), every [`FORGET_INTERVAL`], until `stopped` closes.
async fn forget_loop(store: Store, retention_ms: i64, mut stopped: watch::Receiver<()>) {
    let mut ticker = tokio::time::interval(FORGET_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let now = chrono::Utc::now().timestamp_millis();
                match store.forget_answers(now, now.saturating_sub(retention_ms)).await {
                    Ok(0) => {}
                    Ok(forgotten) => tracing::debug!(forgotten, "forgot remembered answers past retention"),
                    Err(error) => tracing::warn!(%error, "forgetting remembered answers failed; will retry"),
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Checkpoints a SQLite ledger every [`SQLITE_CHECKPOINT_INTERVAL`] until `stopped` closes,
/// so that settling batches (and the calls waiting for them) do not.
async fn checkpoint_loop(store: Store, mut stopped: watch::Receiver<()>) {
    let mut ticker = tokio::time::interval(SQLITE_CHECKPOINT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(error) = store.checkpoint().await {
                    tracing::debug!(%error, "background checkpoint failed; the next commit past the WAL's limit does it");
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

/// Expires overdue holds and renews ended cycles every `interval`, until `stopped` closes.
async fn sweep_loop(engine: Engine, interval: Duration, mut stopped: watch::Receiver<()>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => match engine.sweep().await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "expired overdue holds"),
                Err(error) => tracing::warn!(%error, "expiry sweep failed; will retry"),
            },
            _ = stopped.changed() => return,
        }
    }
}

/// Tries the outage journal against Redis every `every` while it holds commits (the first time
/// at once: what an earlier run left).
/// Closed fail-open holds are charged to Redis on the same beat.
async fn journal_loop(
    journal: Arc<Journal>,
    outage: Option<Arc<crate::outage::Outage>>,
    engine: Engine,
    every: Duration,
    mut stopped: watch::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        if !journal.is_empty() {
            apply_journal(&journal, &engine).await;
        }
        // Settled holds are kept a while for retries: a pass also forgets them in time.
        if let Some(outage) = outage.as_ref().filter(|outage| !outage.is_idle()) {
            settle_outage(outage, &engine).await;
        }
    }
}

/// At shutdown, a last try of the outage journal and the closed fail-open holds, within the
/// grace period; what is left stays in the file for the next start and is logged whole, for a
/// volume that does not outlive the pod.
async fn last_try(options: &ServeOptions, engine: &Engine, deadline: tokio::time::Instant) {
    if let Some(journal) = options.journal.as_ref().filter(|journal| !journal.is_empty()) {
        let _ = tokio::time::timeout_at(deadline, apply_journal(journal, engine)).await;
        if !journal.is_empty() {
            journal.report_left().await;
        }
    }
    if let Some(outage) = options.outage.as_ref().filter(|outage| !outage.is_empty()) {
        let _ = tokio::time::timeout_at(deadline, settle_outage(outage, engine)).await;
        if !outage.is_empty() {
            outage.report_left().await;
        }
    }
}

/// One pass over the closed fail-open holds.
async fn settle_outage(outage: &Arc<crate::outage::Outage>, engine: &Engine) {
    let settled = outage.settle(engine, engine.local_now_ms()).await;
    if settled.holds > 0 {
        tracing::info!(
            holds = settled.holds,
            overdrawn = settled.overdrawn,
            left = outage.len(),
            "outage holds settled"
        );
    }
    if let Some(cause) = settled.stopped {
        tracing::debug!(cause, left = outage.len(), "outage holds wait for Redis");
    }
}

/// One pass over the journal.
async fn apply_journal(journal: &Arc<Journal>, engine: &Engine) {
    match journal.drain(engine, None).await {
        Ok(drained) => {
            let crate::journal::Drained { applied, declined, refused, stopped } = &drained;
            if applied + declined + refused > 0 {
                tracing::info!(applied, declined, refused, left = journal.len(), "outage journal applied");
            }
            if let Some(cause) = stopped {
                tracing::debug!(cause, left = journal.len(), "outage journal waits for Redis");
            }
        }
        Err(error) => tracing::error!(%error, "outage journal cannot be read"),
    }
}
