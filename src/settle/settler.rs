//! The settler: a background task in every replica that moves events from the engine's outbox
//! into SQL. Read a bounded batch, write it in one transaction, and only then acknowledge it; a
//! failed write is retried (the batch stays unacknowledged, so nothing is lost while the
//! database is down), and a replica that dies mid-batch leaves its events to be claimed by
//! another. Figures for operators are kept in [`SettleStats`]: the backlog and lag are measured
//! on a clock of their own, beside the settling, so they keep moving while a write is stuck
//! retrying — during the outage they exist to alert on.
//!
//! Batches may be written several at once (`writers`), each in its own transaction, while the
//! next one is read: a batch is acknowledged only once its own transaction committed, and the
//! store's writes are insert-if-absent events and commutative upserts in key order, which is
//! what lets replicas settle side by side, so batches of one replica may land in any order
//! too. The embedded engine's outbox, whose batches carry state that must land in order, and
//! SQLite, which has one writer, get one writer.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::Instrument;
use tracing::field::Empty;

use super::outbox::{Outbox, Records};
use super::store::Store;
use crate::telemetry;

/// Most events per batch unless configured (`settle_batch_max`). Large batches are what lets
/// SQLite keep up: each transaction rewrites the same hot pages (totals, lots, the indexes' right
/// edges) once, whatever its size; 1,000 settled ~13k events/s into SQLite where 5,000 settle
/// over 25k.
pub const SETTLE_BATCH_MAX_DEFAULT: usize = 5_000;

/// Batches written at once unless configured (`settle_writers`), where the outbox and the store
/// allow it (the Redis engine settling into PostgreSQL).
pub const SETTLE_WRITERS_DEFAULT: usize = 4;
/// The most `settle_writers` may be: each writer holds one of the store's PostgreSQL connections
/// while it writes ([`super::store::POSTGRES_CONNECTIONS`]); two stay for the API's ledger reads
/// and alerts.
pub const SETTLE_WRITERS_MAX: usize = super::store::POSTGRES_CONNECTIONS as usize - 2;

#[derive(Clone, Copy, Debug)]
pub struct SettleOptions {
    /// Most events per batch (one SQL transaction).
    pub batch_max: usize,
    /// Most batches written at once, each in its own transaction, where the outbox and the
    /// store allow it; otherwise one.
    pub writers: usize,
    /// How long to wait when the outbox is empty before reading again (an outbox that can tell
    /// when something arrives wakes the settler sooner).
    pub idle_interval: Duration,
    /// Longest pause between retries of a failed write.
    pub retry_max: Duration,
    /// How often the backlog and lag are measured.
    pub measure_interval: Duration,
}

impl Default for SettleOptions {
    fn default() -> Self {
        Self {
            batch_max: SETTLE_BATCH_MAX_DEFAULT,
            writers: SETTLE_WRITERS_DEFAULT,
            idle_interval: Duration::from_millis(50),
            retry_max: Duration::from_secs(2),
            measure_interval: Duration::from_secs(1),
        }
    }
}

/// Settlement figures, for metrics and health.
#[derive(Debug, Default)]
pub struct SettleStats {
    /// Events newly written to SQL by this replica.
    pub settled: AtomicU64,
    /// Events in batches acknowledged by this replica (including ones already settled).
    pub acknowledged: AtomicU64,
    /// Writes that failed and were retried.
    pub failures: AtomicU64,
    /// Most batches this replica has had being written at once.
    pub writing_max: AtomicU64,
    /// Unsettled events in the outbox, as last measured.
    pub backlog: AtomicU64,
    /// Age of the oldest unsettled event in ms, as last measured.
    pub lag_ms: AtomicI64,
}

/// What reading the outbox came to.
enum Read<T> {
    Batch(Records, T),
    Empty,
    /// The read failed; pause, then try again.
    Failed,
}

pub struct Settler<O: Outbox> {
    outbox: Arc<O>,
    store: Store,
    options: SettleOptions,
    stats: Arc<SettleStats>,
}

impl<O: Outbox> Settler<O> {
    pub fn new(outbox: Arc<O>, store: Store, options: SettleOptions) -> Self {
        Self { outbox, store, options, stats: Arc::default() }
    }

    pub fn stats(&self) -> Arc<SettleStats> {
        self.stats.clone()
    }

    /// Settles until `stopped` changes or closes, measuring the backlog meanwhile, then flushes
    /// what is left (bounded by `grace`). Returns whether the flush emptied the outbox in time.
    pub async fn run(self, stopped: watch::Receiver<()>, grace: Duration) -> bool {
        tokio::join!(self.settle_until(stopped.clone()), self.measure_until(stopped));
        if tokio::time::timeout(grace, self.flush()).await.is_err() {
            tracing::warn!("settlement did not finish within the shutdown grace period; events wait in the outbox");
            return false;
        }
        true
    }

    /// How many batches may be written at once: `options.writers` where both the outbox and
    /// the store take batches in any order, else one.
    fn writers(&self) -> usize {
        if self.outbox.concurrent() && self.store.concurrent_writes() { self.options.writers.max(1) } else { 1 }
    }

    /// Reads batch after batch and writes each while reading the next, up to `writers()` at
    /// once; after a batch that was not full, waits for the outbox to have more (see
    /// [`Outbox::idle`]). When stopped, lets the batches being written finish (one still
    /// retrying gives up and stays in the outbox).
    async fn settle_until(&self, mut stopped: watch::Receiver<()>) {
        let writers = self.writers();
        if writers > 1 {
            tracing::info!(writers, "settling up to {writers} batches at once");
        }
        let mut landing = FuturesUnordered::new();
        'settling: loop {
            while landing.len() >= writers {
                tokio::select! {
                    _ = landing.next() => {}
                    _ = stopped.changed() => break 'settling,
                }
            }
            if stopped.has_changed().unwrap_or(true) {
                break;
            }
            // A read that takes back this replica's own unsettled entries would take those of
            // the batches being written as well, and write them twice: let those land first.
            while self.outbox.recovering() && !landing.is_empty() {
                tokio::select! {
                    _ = landing.next() => {}
                    _ = stopped.changed() => break 'settling,
                }
            }
            let failed = match Self::meanwhile(&mut landing, self.read_batch()).await {
                Read::Batch(records, token) => {
                    let full = records.events.len() == self.options.batch_max;
                    landing.push(self.land(records, token, stopped.clone()));
                    self.stats.writing_max.fetch_max(landing.len() as u64, Ordering::Relaxed);
                    if full {
                        continue;
                    }
                    false
                }
                Read::Empty => false,
                Read::Failed => true,
            };
            let wait = async {
                if failed {
                    tokio::time::sleep(self.options.retry_max).await;
                } else {
                    self.outbox.idle(self.options.idle_interval).await;
                }
            };
            tokio::select! {
                () = Self::meanwhile(&mut landing, wait) => {}
                _ = stopped.changed() => break,
            }
        }
        while landing.next().await.is_some() {}
    }

    /// Runs `future` to its end while the batches in `landing` go on being written (a batch
    /// that lands meanwhile leaves the set).
    async fn meanwhile<T>(
        landing: &mut FuturesUnordered<impl Future<Output = Option<usize>>>,
        future: impl Future<Output = T>,
    ) -> T {
        let mut future = pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return output,
                Some(_) = landing.next(), if !landing.is_empty() => {}
            }
        }
    }

    /// Measures the backlog every `measure_interval` until stopped.
    async fn measure_until(&self, mut stopped: watch::Receiver<()>) {
        let mut ticker = tokio::time::interval(self.options.measure_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.measure().await,
                _ = stopped.changed() => return,
            }
        }
    }

    /// Settles everything the outbox holds now, one batch at a time, retrying failed reads and
    /// writes until a read finds it empty; returns how many events it acknowledged. Bound it
    /// with a timeout.
    pub async fn flush(&self) -> u64 {
        let (_keep, never) = watch::channel(());
        let mut total = 0;
        loop {
            match self.read_batch().await {
                Read::Batch(records, token) => {
                    total += self.land(records, token, never.clone()).await.unwrap_or(0) as u64;
                }
                Read::Failed => tokio::time::sleep(self.options.retry_max).await,
                Read::Empty => break,
            }
        }
        self.measure().await;
        total
    }

    /// Reads one batch; a failed read is counted and logged (the caller pauses before the next).
    async fn read_batch(&self) -> Read<O::Token> {
        match self.outbox.read(self.options.batch_max).await {
            Ok(Some((records, token))) => Read::Batch(records, token),
            Ok(None) => Read::Empty,
            Err(error) => {
                tracing::warn!(%error, "reading the outbox failed; will retry");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::SETTLE_FAILURES).increment(1);
                Read::Failed
            }
        }
    }

    /// Writes a batch read from the outbox (retrying until it lands or `stopped` fires) and
    /// acknowledges it. Returns how many events it acknowledged, or None when stopped first.
    async fn land(&self, records: Records, token: O::Token, mut stopped: watch::Receiver<()>) -> Option<usize> {
        let span = tracing::info_span!("settle batch", events = records.events.len(), new = Empty, attempts = Empty);
        async move {
            let mut pause = Duration::from_millis(20);
            for attempt in 1u32.. {
                tracing::Span::current().record("attempts", attempt);
                let now = chrono::Utc::now().timestamp_millis();
                match self.store.settle(&records, now).await {
                    Ok(settled) => {
                        tracing::Span::current().record("new", settled.new);
                        self.stats.settled.fetch_add(settled.new as u64, Ordering::Relaxed);
                        metrics::counter!(telemetry::SETTLED).increment(settled.new as u64);
                        if settled.conflicts > 0 {
                            self.outbox.conflicts_found(settled.conflicts).await;
                        }
                        break;
                    }
                    Err(error) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!(telemetry::SETTLE_FAILURES).increment(1);
                        tracing::warn!(%error, events = records.events.len(), "settling a batch failed; retrying");
                        if !self.pause(&mut stopped, pause).await {
                            self.outbox.abandon(token);
                            return None;
                        }
                        pause = (pause * 2).min(self.options.retry_max);
                    }
                }
            }
            if let Err(error) = self.outbox.ack(token).await {
                // The batch is in SQL; unacknowledged, it will be delivered again and change nothing.
                tracing::warn!(%error, "acknowledging a settled batch failed");
            }
            self.stats.acknowledged.fetch_add(records.events.len() as u64, Ordering::Relaxed);
            Some(records.events.len())
        }
        .instrument(span)
        .await
    }

    /// Waits `pause`, or less if stopped; false when stopped.
    async fn pause(&self, stopped: &mut watch::Receiver<()>, pause: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = stopped.changed() => false,
        }
    }

    async fn measure(&self) {
        if let Ok(backlog) = self.outbox.backlog().await {
            self.stats.backlog.store(backlog.events, Ordering::Relaxed);
            self.stats.lag_ms.store(backlog.oldest_ms, Ordering::Relaxed);
            metrics::gauge!(telemetry::SETTLE_BACKLOG).set(backlog.events as f64);
            metrics::gauge!(telemetry::SETTLE_LAG).set(backlog.oldest_ms as f64 / 1000.0);
        }
    }
}
