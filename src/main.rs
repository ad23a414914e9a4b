//! Parse configuration, set up logging, run. Nothing else lives here.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use credit_sidecar::auth::Tokens;
use credit_sidecar::config::{AuthConfig, Command, Config, EngineConfig};
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::ledger::{AccountId, SystemClock};
use credit_sidecar::maintenance;
use credit_sidecar::server::{AuthSetup, HttpSetup, ServeOptions, SettleSetup, serve};
use credit_sidecar::settle::settler::SettleOptions;
use credit_sidecar::settle::store::Store;
use credit_sidecar::telemetry;

#[tokio::main]
async fn main() -> ExitCode {
    let args = credit_sidecar::config::parse_args();
    if let Some(Command::CheckConfig) = args.command {
        return match Config::check(&args) {
            Ok(()) => {
                println!("configuration: ok");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(2)
            }
        };
    }
    // Nothing is bound and nothing logged before the whole configuration is valid.
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let traces = match telemetry::init(config.log_format, &config.log_level, config.traces.as_ref()) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    for warning in &config.warnings {
        tracing::warn!("configuration: {warning}");
    }
    let result = match args.command.unwrap_or(Command::Serve) {
        Command::Serve => run(config).await,
        Command::Verify { account } => match maintain(&config, account, Maintenance::Verify).await {
            Ok(0) => Ok(()),
            Ok(_) => return ExitCode::FAILURE,
            Err(error) => Err(error),
        },
        Command::CheckConfig => unreachable!("answered before the configuration is loaded"),
        Command::Rebuild { upgrade_layout: true, .. } => upgrade_layout(&config).await,
        Command::Rebuild { account, .. } => maintain(&config, account, Maintenance::Rebuild).await.map(|_| ()),
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        // Once, in the log (on stdout, where everything else this process said went).
        Err(error) => {
            tracing::error!(%error, "exiting");
            ExitCode::FAILURE
        }
    };
    if let Some(traces) = traces {
        // Blocks until the exporter sent the last batch (or gave up): off the runtime's threads.
        tokio::task::spawn_blocking(move || traces.shutdown()).await.ok();
    }
    code
}

enum Maintenance {
    Verify,
    Rebuild,
}

/// Runs `verify` (returns the number of drifts) or `rebuild` against the configured Redis.
async fn maintain(
    config: &Config,
    account: Option<String>,
    what: Maintenance,
) -> Result<usize, Box<dyn std::error::Error>> {
    let EngineConfig::Redis(settings) = &config.engine else {
        return Err("verify and rebuild compare Redis with the ledger: set redis_url / REDIS_URL".into());
    };
    let account = account.map(|id| AccountId::parse(&id)).transpose()?;
    let store = Store::connect(&config.settle.database_url).await?;
    let retention = config.rules.request_id_retention_ms;
    let redis = RedisEngine::connect_for_maintenance(settings, retention).await?;
    match what {
        Maintenance::Verify => {
            let drift = maintenance::verify(&store, &redis, retention, account.as_ref()).await?;
            for line in &drift {
                println!("{line}");
            }
            println!("{} drift(s)", drift.len());
            Ok(drift.len())
        }
        Maintenance::Rebuild => {
            let written = maintenance::rebuild(&store, &redis, retention, account.as_ref()).await?;
            println!("rebuilt {written} account(s) from the ledger");
            Ok(0)
        }
    }
}

/// `rebuild --upgrade-layout`: an older layout's Redis moved to this one, from the ledger.
async fn upgrade_layout(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let EngineConfig::Redis(settings) = &config.engine else {
        return Err("rebuild --upgrade-layout works on Redis: set redis_url / REDIS_URL".into());
    };
    let store = Store::connect(&config.settle.database_url).await?;
    let upgraded = maintenance::upgrade_layout(&store, settings, config.rules.request_id_retention_ms).await?;
    println!(
        "deleted {} key(s) of the old layout; rebuilt {} account(s) from the ledger in layout {}",
        upgraded.keys_deleted,
        upgraded.accounts_rebuilt,
        credit_sidecar::engine::redis::LAYOUT_VERSION
    );
    Ok(())
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
        options: SettleOptions { batch_max: config.settle.batch_max, ..SettleOptions::default() },
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
