//! Parse configuration, set up logging, run. Nothing else lives here.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use credit_sidecar::config::{Args, Command, Config, EngineConfig};
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::ledger::SystemClock;
use credit_sidecar::server::{ServeOptions, serve};

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
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let engine = match &config.engine {
        EngineConfig::Embedded => Engine::embedded(config.rules.clone(), Arc::new(SystemClock)),
        EngineConfig::Redis(settings) => {
            let redis = RedisEngine::connect(settings, config.rules.request_id_retention_ms).await?;
            Engine::redis(config.rules.clone(), redis)
        }
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, engine = engine.name(), "credit-sidecar serving gRPC");
    let options = ServeOptions { sweep_interval: Duration::from_millis(config.sweep_interval_ms) };
    serve(listener, engine, options, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
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
