//! The settler: a background task in every replica that moves events from the engine's outbox
//! into SQL. Read a bounded batch, write it in one transaction, and only then acknowledge it; a
//! failed write is retried (the batch stays unacknowledged, so nothing is lost while the
//! database is down), and a replica that dies mid-batch leaves its events to be claimed by
//! another. Figures for operators are kept in [`SettleStats`]: the backlog and lag are measured
//! on a clock of their own, beside the settling, so they keep moving while a write is stuck
//! retrying — during the outage they exist to alert on.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

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

#[derive(Clone, Copy, Debug)]
pub struct SettleOptions {
    /// Most events per batch (one SQL transaction).
    pub batch_max: usize,
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
    /// Unsettled events in the outbox, as last measured.
    pub backlog: AtomicU64,
    /// Age of the oldest unsettled event in ms, as last measured.
    pub lag_ms: AtomicI64,
}

/// What one round of the settler (read a batch, write it, acknowledge it) came to.
enum Round {
    /// This many events settled and acknowledged.
    Settled(usize),
    Empty,
    /// The read failed (after a pause); try again.
    ReadFailed,
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

    /// Settles batch after batch; after a batch that was not full, waits for the outbox to have
    /// more (see [`Outbox::idle`]).
    async fn settle_until(&self, mut stopped: watch::Receiver<()>) {
        loop {
            match self.settle_batch(&mut stopped).await {
                Some(Round::Settled(count)) if count == self.options.batch_max => continue,
                Some(_) => {}
                None => return,
            }
            tokio::select! {
                _ = self.outbox.idle(self.options.idle_interval) => {}
                _ = stopped.changed() => return,
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

    /// Settles everything the outbox holds now, retrying failed reads and writes until a read
    /// finds it empty; returns how many events it acknowledged. Bound it with a timeout.
    pub async fn flush(&self) -> u64 {
        let (_keep, mut never) = watch::channel(());
        let mut total = 0;
        loop {
            match self.settle_batch(&mut never).await {
                Some(Round::Settled(count)) => total += count as u64,
                Some(Round::ReadFailed) => {}
                Some(Round::Empty) | None => break,
            }
        }
        self.measure().await;
        total
    }

    /// Reads one batch, writes it (retrying until it lands or `stopped` fires), acknowledges it.
    /// Returns None when stopped.
    async fn settle_batch(&self, stopped: &mut watch::Receiver<()>) -> Option<Round> {
        let (records, token) = match self.outbox.read(self.options.batch_max).await {
            Ok(Some(batch)) => batch,
            Ok(None) => return Some(Round::Empty),
            Err(error) => {
                tracing::warn!(%error, "reading the outbox failed; will retry");
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(telemetry::SETTLE_FAILURES).increment(1);
                return self.pause(stopped, self.options.retry_max).await.then_some(Round::ReadFailed);
            }
        };
        let span = tracing::info_span!("settle batch", events = records.events.len(), new = Empty, attempts = Empty);
        self.land(&records, token, stopped).instrument(span).await
    }

    /// Writes a batch read from the outbox (retrying until it lands or `stopped` fires) and
    /// acknowledges it. Returns None when stopped.
    async fn land(&self, records: &Records, token: O::Token, stopped: &mut watch::Receiver<()>) -> Option<Round> {
        let mut pause = Duration::from_millis(20);
        for attempt in 1u32.. {
            tracing::Span::current().record("attempts", attempt);
            let now = chrono::Utc::now().timestamp_millis();
            match self.store.settle(records, now).await {
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
                    if !self.pause(stopped, pause).await {
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
        Some(Round::Settled(records.events.len()))
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
