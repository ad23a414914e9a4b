//! Parse configuration, set up logging, run. Nothing else lives here.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use credit_sidecar::config::{Args, Command, Config, EngineConfig};
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::ledger::{AccountId, Ledger, SystemClock};
use credit_sidecar::maintenance;
use credit_sidecar::server::{ServeOptions, SettleSetup, serve};
use credit_sidecar::settle::outbox::MemoryOutbox;
use credit_sidecar::settle::settler::SettleOptions;
use credit_sidecar::settle::store::Store;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let config = Config::load(&args)?;
    match args.command.unwrap_or(Command::Serve) {
        Command::Serve => run(config).await,
        Command::Verify { account } => {
            let drift = maintain(&config, account, Maintenance::Verify).await?;
            if drift > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Rebuild { account } => maintain(&config, account, Maintenance::Rebuild).await.map(|_| ()),
    }
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
    let redis = RedisEngine::connect(settings, retention).await?;
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

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::connect(&config.settle.database_url).await?;
    tracing::info!(database = ?store.backend(), "settling events into the database");
    let engine = match &config.engine {
        EngineConfig::Embedded => {
            // The embedded engine's state is its settled ledger: rebuild it before serving.
            let events = store.events(None).await?;
            let restored = events.len();
            let now = chrono::Utc::now().timestamp_millis();
            let ledger = Ledger::restore(config.rules.request_id_retention_ms, now, events)?;
            tracing::info!(events = restored, "embedded engine restored from the ledger");
            let outbox = Arc::new(MemoryOutbox::new(config.settle.outbox_memory_max));
            Engine::embedded_with(config.rules.clone(), Arc::new(SystemClock), ledger, Some(outbox))
        }
        EngineConfig::Redis(settings) => {
            let redis = RedisEngine::connect(settings, config.rules.request_id_retention_ms).await?;
            Engine::redis(config.rules.clone(), redis)
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, engine = engine.name(), "credit-sidecar serving gRPC");
    let settle = SettleSetup {
        store,
        options: SettleOptions { batch_max: config.settle.batch_max, ..SettleOptions::default() },
        consumer: consumer_name(),
        claim_idle: Duration::from_millis(config.settle.claim_idle_ms),
        grace: Duration::from_millis(config.shutdown_grace_ms),
    };
    let options =
        ServeOptions { sweep_interval: Duration::from_millis(config.sweep_interval_ms), settle: Some(settle) };
    serve(listener, engine, options, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

/// This process's name in the settlers' consumer group: unique per replica and start.
fn consumer_name() -> String {
    let started = chrono::Utc::now().timestamp_millis();
    format!("sidecar-{}-{started}", std::process::id())
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down: finishing calls in flight");
}
