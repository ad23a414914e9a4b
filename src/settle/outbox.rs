//! Where the settler reads events from. An engine's outbox hands out batches and forgets a batch
//! only when it is acknowledged, after it is safely in SQL (at-least-once delivery; the store's
//! insert-if-absent makes it exactly-once in effect).
//!
//! - the Redis engine: one stream per shard, read through a consumer group shared by every
//!   replica (src/engine/redis/outbox.rs);
//! - the embedded engine: [`MemoryOutbox`], a bounded in-process queue.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use crate::ledger::event::Event;

/// How far settlement is behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events written to the outbox and not yet acknowledged as settled.
    pub events: u64,
    /// Age of the oldest of them, in ms (0 when there are none).
    pub oldest_ms: i64,
}

/// A batch read from an outbox, with what acknowledging it takes.
pub type Batch<T> = Option<(Vec<Event>, T)>;

pub trait Outbox: Send + Sync + 'static {
    /// What `ack` needs to forget a batch.
    type Token: Send;

    /// Up to `max` events not yet settled (including ones a dead replica left behind), or
    /// `None` when there are none.
    fn read(&self, max: usize) -> impl Future<Output = Result<Batch<Self::Token>, String>> + Send;

    /// The batch is settled: forget it.
    fn ack(&self, token: Self::Token) -> impl Future<Output = Result<(), String>> + Send;

    fn backlog(&self) -> impl Future<Output = Result<Backlog, String>> + Send;
}

/// The embedded engine's outbox: events wait here, in order, until settled. Bounded: when it is
/// full the engine refuses state changes (fail closed) rather than lose their record.
pub struct MemoryOutbox {
    queue: Mutex<VecDeque<(i64, Event)>>,
    capacity: usize,
    clock: fn() -> i64,
}

impl MemoryOutbox {
    pub fn new(capacity: usize) -> Self {
        Self { queue: Mutex::new(VecDeque::new()), capacity, clock: || chrono::Utc::now().timestamp_millis() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(i64, Event)>> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Room for more events?
    pub fn has_room(&self) -> bool {
        self.lock().len() < self.capacity
    }

    pub fn push(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let now = (self.clock)();
        self.lock().extend(events.into_iter().map(|event| (now, event)));
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Outbox for MemoryOutbox {
    /// How many events, from the front, the batch took.
    type Token = usize;

    async fn read(&self, max: usize) -> Result<Batch<usize>, String> {
        let queue = self.lock();
        if queue.is_empty() {
            return Ok(None);
        }
        let batch: Vec<Event> = queue.iter().take(max).map(|(_, event)| event.clone()).collect();
        let taken = batch.len();
        Ok(Some((batch, taken)))
    }

    async fn ack(&self, taken: usize) -> Result<(), String> {
        // Only the settler removes events, and it acknowledges batches in the order it read them.
        self.lock().drain(..taken);
        Ok(())
    }

    async fn backlog(&self) -> Result<Backlog, String> {
        let queue = self.lock();
        let oldest_ms = queue.front().map_or(0, |(at, _)| ((self.clock)() - at).max(0));
        Ok(Backlog { events: queue.len() as u64, oldest_ms })
    }
}
