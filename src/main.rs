//! Parse configuration, set up logging, run. Nothing else lives here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use credit_sidecar::api::cli;
use credit_sidecar::auth::Tokens;
use credit_sidecar::config::{self, Args, AuthConfig, Command, Config, EngineConfig};
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::ledger::{AccountId, SystemClock};
use credit_sidecar::maintenance;
use credit_sidecar::server::{AuthSetup, HttpSetup, ServeOptions, SettleSetup, serve};
use credit_sidecar::settle::settler::SettleOptions;
use credit_sidecar::settle::store::Store;
use credit_sidecar::telemetry;

/// mimalloc instead of the system allocator: a call allocates and frees many small buffers
/// across the runtime's threads (HTTP/2 frames, protobuf, the ledger's records, SQL arguments),
/// and glibc's malloc spent about a quarter of the embedded engine's CPU on them under load.
/// Built with `no_thp` (Cargo.toml): with transparent huge pages, each page mimalloc took
/// from the OS was a 2 MiB page the kernel zeroed first — 7–18 % of the embedded engine's CPU
/// under load (`perf`), and its p99 — where 4 KiB pages cost a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = credit_sidecar::config::parse_args();
    match args.command.take() {
        Some(Command::CheckConfig) => return check_config(&args),
        Some(Command::Operator(operation)) => {
            return match config::connection(&args, operation.target()) {
                Ok(connection) => cli::run(operation, connection).await,
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::from(cli::exit::USAGE)
                }
            };
        }
        command => args.command = command,
    }
    // Nothing is bound and nothing logged before the whole configuration is valid.
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(cli::exit::USAGE);
        }
    };
    let command = args.command.unwrap_or(Command::Serve);
    // A report on stdout stays alone there: `verify` and `rebuild` log on stderr.
    let logs_to_stderr = !matches!(command, Command::Serve);
    let traces = match telemetry::init(config.log_format, &config.log_level, config.traces.as_ref(), logs_to_stderr) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(cli::exit::USAGE);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let result = match command {
        Command::Serve => run(config).await.map(|()| ExitCode::SUCCESS),
        Command::Verify { account, json } => maintain(&config, account, Maintenance::Verify, json).await,
        Command::Rebuild { upgrade_layout: true, json, .. } => upgrade_layout(&config, json).await,
        Command::Rebuild { account, json, .. } => maintain(&config, account, Maintenance::Rebuild, json).await,
        Command::CheckConfig | Command::Operator(_) => unreachable!("answered before the configuration is loaded"),
    };
    let code = match result {
        Ok(code) => code,
        // Once, in the log (where everything else this process said went). `verify` exits 1
        // for drift, so a run that could not compare at all exits otherwise.
        Err(error) => {
            tracing::error!(%error, "exiting");
            ExitCode::from(if logs_to_stderr { cli::exit::FAILED } else { 1 })
        }
    };
    if let Some(traces) = traces {
        // Blocks until the exporter sent the last batch (or gave up): off the runtime's threads.
        tokio::task::spawn_blocking(move || traces.shutdown()).await.ok();
    }
    code
}

/// `check-config`: 0 and `configuration: ok`, or 2 and the error.
fn check_config(args: &Args) -> ExitCode {
    match Config::check(args) {
        Ok(()) => {
            println!("configuration: ok");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(cli::exit::USAGE)
        }
    }
}

enum Maintenance {
    Verify,
    Rebuild,
}

/// Runs `verify` (exit 1 when there is drift) or `rebuild` against the configured Redis and
/// the ledger as it is: no migration runs (the serving sidecar owns the schema).
async fn maintain(
    config: &Config,
    account: Option<String>,
    what: Maintenance,
    json: bool,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let EngineConfig::Redis(settings) = &config.engine else {
        return Err("verify and rebuild compare Redis with the ledger: set redis_url / REDIS_URL".into());
    };
    let account = account.map(|id| AccountId::parse(&id)).transpose()?;
    let store = Store::open_existing(&config.settle.database_url).await?;
    let retention = config.rules.request_id_retention_ms;
    let redis = RedisEngine::connect_for_maintenance(settings, retention).await?;
    match what {
        Maintenance::Verify => {
            let drift = maintenance::verify(&store, &redis, retention, account.as_ref()).await?;
            if json {
                let drifts: Vec<serde_json::Value> = drift
                    .iter()
                    .map(|drift| {
                        serde_json::json!({
                            "account": drift.account.as_str(),
                            "what": drift.what,
                            "ledger": drift.ledger,
                            "redis": drift.redis,
                        })
                    })
                    .collect();
                println!("{}", serde_json::json!({ "drifts": drifts, "count": drift.len() }));
            } else {
                for line in &drift {
                    println!("{line}");
                }
                println!("{} drift(s)", drift.len());
            }
            Ok(if drift.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Maintenance::Rebuild => {
            let written = maintenance::rebuild(&store, &redis, retention, account.as_ref()).await?;
            if json {
                println!("{}", serde_json::json!({ "rebuilt_accounts": written }));
            } else {
                println!("rebuilt {written} account(s) from the ledger");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `rebuild --upgrade-layout`: an older layout's Redis moved to this one, from the ledger.
async fn upgrade_layout(config: &Config, json: bool) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let EngineConfig::Redis(settings) = &config.engine else {
        return Err("rebuild --upgrade-layout works on Redis: set redis_url / REDIS_URL".into());
    };
    let store = Store::open_existing(&config.settle.database_url).await?;
    let upgraded = maintenance::upgrade_layout(&store, settings, config.rules.request_id_retention_ms).await?;
    let layout = credit_sidecar::engine::redis::LAYOUT_VERSION;
    if json {
        let report = serde_json::json!({
            "from_layout": upgraded.from_layout,
            "converted_accounts": upgraded.accounts_converted,
            "keys_deleted": upgraded.keys_deleted,
            "rebuilt_accounts": upgraded.accounts_rebuilt,
            "layout": layout,
        });
        println!("{report}");
    } else if upgraded.from_layout == layout {
        println!("Redis holds layout {layout} already; nothing to do");
    } else if upgraded.from_layout == 2 || upgraded.from_layout == 3 {
        println!(
            "converted {} account(s) from layout {} to layout {layout} in place; remembered request ids kept",
            upgraded.accounts_converted, upgraded.from_layout,
        );
    } else {
        let old = if upgraded.from_layout == 1 { "layout 1" } else { "no recorded layout" };
        println!(
            "deleted {} key(s) of {old}; rebuilt {} account(s) from the ledger in layout {layout}",
            upgraded.keys_deleted, upgraded.accounts_rebuilt,
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect_with(&config.settle.database_url, config.settle.sqlite_synchronous).await?;
    tracing::info!(database = ?store.backend(), "settling events into the database");
    let engine = match &config.engine {
        EngineConfig::Embedded => {
            let (rules, outbox_max) = (config.rules.clone(), config.settle.outbox_memory_max);
            Engine::restore_embedded(rules, Arc::new(SystemClock), &store, outbox_max).await?
        }
        EngineConfig::Redis(settings) => {
            let retention = config.rules.request_id_retention_ms;
            let redis = RedisEngine::connect_guarded(settings, retention, store.clone()).await?;
            Engine::redis(config.rules.clone(), redis)
        }
    };
    let settle = SettleSetup {
        store,
        options: SettleOptions {
            batch_max: config.settle.batch_max,
            writers: config.settle.writers,
            ..SettleOptions::default()
        },
        consumer: consumer_name(),
        claim_idle: Duration::from_millis(config.settle.claim_idle_ms),
    };
    let auth = match &config.auth {
        AuthConfig::Off { reason } => {
            tracing::warn!(reason, "authentication is off");
            None
        }
        AuthConfig::Tokens { file, reload_interval, initial } => {
            tracing::info!(tokens = initial.len(), file = %file.display(), "bearer tokens required");
            Some(AuthSetup { tokens: Tokens::new(initial.clone()), reload: Some((file.clone(), *reload_interval)) })
        }
    };
    let journal = match &config.journal {
        Some(journal) => {
            let opened = credit_sidecar::journal::Journal::open(journal).await?;
            tracing::info!(path = %journal.path.display(), coverage = ?journal.coverage, waiting = opened.len(), "outage journal on");
            Some(Arc::new(opened))
        }
        None => None,
    };
    let outage = match (&journal, config.journal.as_ref().and_then(|journal| journal.fail_open.clone())) {
        (Some(journal), Some(fail_open)) => {
            let categories = fail_open.categories.clone();
            let opened = credit_sidecar::outage::Outage::open(journal.clone(), fail_open).await?;
            tracing::info!(?categories, holds = opened.len(), "fail-open categories on");
            Some(opened)
        }
        _ => None,
    };
    let options = ServeOptions {
        sweep_interval: config.sweep_interval,
        settle: Some(settle),
        limits: config.limits,
        auth,
        tls: config.tls.clone(),
        health_interval: config.health_interval,
        redis_state_recovery: config.redis_state_recovery,
        shutdown_drain: config.shutdown_drain,
        shutdown_grace: config.shutdown_grace,
        rules_reload: config.rules_reload.clone(),
        journal,
        journal_retry: credit_sidecar::journal::RETRY_INTERVAL,
        outage,
        alert_interval: config.alert_interval,
        alerts: Arc::new(credit_sidecar::alerts::Alerts::new(config.webhooks.clone())),
    };
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|error| format!("listen {}: cannot bind: {error}", config.listen))?;
    let grpc = listener.local_addr()?;
    let http = match config.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|error| format!("metrics_listen {address}: cannot bind: {error}"))?;
            Some(HttpSetup { listener, metrics: Some(telemetry::install_metrics()?) })
        }
        None => None,
    };
    let metrics = http.as_ref().map(|http| http.listener.local_addr()).transpose()?;
    let metrics = metrics.map_or_else(|| "off".to_owned(), |address| address.to_string());
    let tls = config.tls.as_ref().map_or("off", |tls| if tls.client_ca_pem.is_some() { "mtls" } else { "tls" });
    tracing::info!(%grpc, metrics, engine = engine.name(), tls, "serving");
    let served = serve(listener, engine, options, http, shutdown).await?;
    tracing::info!(settled = served.settled, "stopped");
    Ok(())
}

/// This process's name in the settlers' consumer group: unique per replica and start.
fn consumer_name() -> String {
    let started = chrono::Utc::now().timestamp_millis();
    format!("sidecar-{}-{started}", std::process::id())
}

/// Installs the SIGINT and SIGTERM handlers now (so a signal that comes before serving starts is
/// not lost); the future resolves on the first of them. A second signal exits at once, with
/// status 1, for an operator who will not wait for the drain and the grace period.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown signal received; a second one exits at once");
        tokio::spawn(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::warn!("second shutdown signal: exiting without finishing calls or settlement");
            std::process::exit(1);
        });
    })
}
