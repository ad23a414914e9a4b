//! The embedded engine's outbox: each operation's records wait here, in order, until the
//! settler has written them to SQL, and the operation's caller waits for that (group commit).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use crate::settle::outbox::{Backlog, Batch, Outbox, Records};

/// One operation's records: settled together, in order, never split across batches (a hold and
/// the answer that named it land in one transaction).
#[derive(Debug)]
struct Unit {
    at_ms: i64,
    records: Records,
    /// Told once the unit is settled: its operation, and reads that may have seen it.
    waiters: Vec<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct Queue {
    units: VecDeque<Unit>,
    /// Events in `units`.
    events: usize,
}

/// What an operation waits for after pushing its records: resolved once they (and everything
/// queued before) are in SQL. Each waiter is told on its own, so a settled batch wakes the calls
/// it settled and no others.
#[derive(Debug)]
pub struct Ticket(Option<oneshot::Receiver<()>>);

impl Ticket {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Self(None)
    }
}

/// The embedded engine's outbox: each operation's records wait here, in order, until settled,
/// and the operation's caller waits for that (see [`MemoryOutbox::durable`]): group commit, as
/// every batch the settler takes holds the operations that arrived during the previous one.
/// Bounded: when it is full the engine refuses state changes (fail closed).
pub struct MemoryOutbox {
    queue: Mutex<Queue>,
    capacity: usize,
    /// Wakes the settler when something arrives.
    arrived: Notify,
    clock: fn() -> i64,
}

impl MemoryOutbox {
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::default(),
            capacity,
            arrived: Notify::new(),
            clock: || chrono::Utc::now().timestamp_millis(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Room for more? Counts events, and operations too (a decline remembered under a request
    /// id records no event, but waits here all the same).
    pub fn has_room(&self) -> bool {
        let queue = self.lock();
        queue.events < self.capacity && queue.units.len() < self.capacity
    }

    /// Queues one operation's records; returns the ticket to wait for with [`Self::durable`].
    /// Nothing to record still gets a ticket: for everything queued before, which the
    /// operation may have seen.
    pub fn push(&self, records: Records) -> Ticket {
        let (told, ticket) = oneshot::channel();
        let mut queue = self.lock();
        if records.is_empty() {
            return match queue.units.back_mut() {
                Some(last) => {
                    last.waiters.push(told);
                    Ticket(Some(ticket))
                }
                None => Ticket(None),
            };
        }
        queue.events += records.events.len();
        queue.units.push_back(Unit { at_ms: (self.clock)(), records, waiters: vec![told] });
        drop(queue);
        self.arrived.notify_one();
        Ticket(Some(ticket))
    }

    /// Resolves once everything the ticket covers is in SQL; false if that can no longer happen
    /// (the outbox was dropped unsettled). Waits as long as that takes: the caller bounds it (a
    /// call's deadline).
    pub async fn durable(ticket: Ticket) -> bool {
        match ticket.0 {
            Some(told) => told.await.is_ok(),
            None => true,
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.lock().events
    }

    pub fn is_empty(&self) -> bool {
        self.lock().units.is_empty()
    }
}

impl Outbox for MemoryOutbox {
    /// How many units, from the front, the batch took.
    type Token = usize;

    /// Whole units from the front, up to `max` events (at least one unit).
    async fn read(&self, max: usize) -> Result<Batch<usize>, String> {
        let queue = self.lock();
        let mut batch = Records::default();
        let mut taken = 0;
        for unit in &queue.units {
            if taken > 0 && batch.events.len() + unit.records.events.len() > max {
                break;
            }
            batch.events.extend(unit.records.events.iter().cloned());
            batch.answers.extend(unit.records.answers.iter().cloned());
            batch.snapshots.extend(unit.records.snapshots.iter().cloned());
            taken += 1;
        }
        Ok((taken > 0).then_some((batch, taken)))
    }

    async fn ack(&self, taken: usize) -> Result<(), String> {
        // Only the settler removes units, and it acknowledges batches in the order it read them.
        let mut queue = self.lock();
        let settled: Vec<Unit> = queue.units.drain(..taken).collect();
        queue.events -= settled.iter().map(|unit| unit.records.events.len()).sum::<usize>();
        drop(queue);
        for waiter in settled.into_iter().flat_map(|unit| unit.waiters) {
            // A waiter gone (its call cut by its deadline) needs no word.
            let _ = waiter.send(());
        }
        Ok(())
    }

    async fn backlog(&self) -> Result<Backlog, String> {
        let queue = self.lock();
        let oldest_ms = queue.units.front().map_or(0, |unit| ((self.clock)() - unit.at_ms).max(0));
        Ok(Backlog { events: queue.events as u64, oldest_ms })
    }

    /// Returns at once when something waits: the next batch is whatever arrived meanwhile.
    async fn idle(&self, interval: Duration) {
        if !self.is_empty() {
            return;
        }
        let _ = tokio::time::timeout(interval, self.arrived.notified()).await;
    }
}
