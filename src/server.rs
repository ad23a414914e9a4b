//! Wiring: the gRPC services on a listener the caller bound, plus the background expiry sweep;
//! both stop on the caller's shutdown future. Tests bind port 0 and pass their own future, so
//! nothing here sleeps or guesses when the server is ready.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::api::{AdminService, AuthorizerService};
use crate::engine::Engine;

#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub sweep_interval: Duration,
}

/// Serves until `shutdown` resolves, then lets calls in flight finish and stops the sweep.
pub async fn serve(
    listener: TcpListener,
    engine: Engine,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (stop, stopped) = watch::channel(());
    let sweeper = tokio::spawn(sweep_loop(engine.clone(), options.sweep_interval, stopped));
    let result = tonic::transport::Server::builder()
        .add_service(AuthorizerService::new(engine.clone()).into_server())
        .add_service(AdminService::new(engine).into_server())
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    drop(stop);
    if let Err(error) = sweeper.await {
        tracing::error!(%error, "expiry sweep task failed");
    }
    result
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
