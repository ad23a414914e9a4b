//! Wiring: the gRPC services on a listener the caller bound, the background expiry sweep, and
//! the settler; all stop on the caller's shutdown future. Tests bind port 0 and pass their own
//! future, so nothing here sleeps or guesses when the server is ready.
//!
//! Shutdown order: stop taking calls and let calls in flight finish, stop the sweep, then let the
//! settler flush the outbox (bounded by the grace period), then return.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{AdminService, AuthorizerService};
use crate::engine::Engine;
use crate::settle::settler::{SettleOptions, SettleStats};
use crate::settle::store::Store;

#[derive(Clone)]
pub struct ServeOptions {
    pub sweep_interval: Duration,
    /// Settle the engine's events into this store; None runs without settlement (tests of the
    /// rules alone).
    pub settle: Option<SettleSetup>,
}

#[derive(Clone)]
pub struct SettleSetup {
    pub store: Store,
    pub options: SettleOptions,
    /// This replica's name in the Redis consumer group.
    pub consumer: String,
    /// Events another replica left unacknowledged this long are taken over.
    pub claim_idle: Duration,
    /// How long the final flush at shutdown may take.
    pub grace: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("starting settlement: {0}")]
    Settle(#[from] crate::engine::Error),
}

/// Serves until `shutdown` resolves, then drains as described above.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let (stop_sweep, sweep_stopped) = watch::channel(());
    let sweeper = tokio::spawn(sweep_loop(engine.clone(), options.sweep_interval, sweep_stopped));
    let (stop_settler, settler_stopped) = watch::channel(());
    let settler = match &options.settle {
        Some(setup) => Some(start_settler(&engine, setup, settler_stopped).await?),
        None => None,
    };
    let result = tonic::transport::Server::builder()
        .add_service(AuthorizerService::new(engine.clone()).into_server())
        .add_service(AdminService::new(engine, options.settle.as_ref().map(|setup| setup.store.clone())).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    drop(stop_sweep);
    if let Err(error) = sweeper.await {
        tracing::error!(%error, "expiry sweep task failed");
    }
    drop(stop_settler);
    if let Some((task, stats)) = settler {
        if let Err(error) = task.await {
            tracing::error!(%error, "settler task failed");
        }
        let settled = stats.settled.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(settled, "settlement stopped");
    }
    Ok(result?)
}

async fn start_settler(
    engine: &Engine,
    setup: &SettleSetup,
    stopped: watch::Receiver<()>,
) -> Result<(tokio::task::JoinHandle<()>, Arc<SettleStats>), ServeError> {
    let store = setup.store.clone();
    let consumer = setup.consumer.clone();
    Ok(engine.spawn_settler(store, setup.options, consumer, setup.claim_idle, stopped, setup.grace).await?)
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
