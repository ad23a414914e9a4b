//! Where the settler reads events from. An engine's outbox hands out batches and forgets a batch
//! only when it is acknowledged, after it is safely in SQL (at-least-once delivery; the store's
//! insert-if-absent makes it exactly-once in effect).
//!
//! - the Redis engine: one stream per shard, read through a consumer group shared by every
//!   replica (src/engine/redis/outbox.rs);
//! - the embedded engine: a bounded in-process queue whose callers wait until their operation is
//!   settled (group commit; src/engine/memory_outbox.rs).

use std::future::Future;
use std::time::Duration;

use crate::ledger::durable::RememberedAnswer;
use crate::ledger::event::Event;
use crate::ledger::snapshot::AccountSnapshot;

/// How far settlement is behind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Events written to the outbox and not yet acknowledged as settled.
    pub events: u64,
    /// Age of the oldest of them, in ms (0 when there are none).
    pub oldest_ms: i64,
}

/// What one batch carries into SQL: events and, from the embedded engine, the state it must find
/// again after a restart (see `crate::ledger::durable`).
#[derive(Clone, Debug, Default)]
pub struct Records {
    pub events: Vec<Event>,
    pub answers: Vec<RememberedAnswer>,
    pub snapshots: Vec<AccountSnapshot>,
}

impl Records {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.answers.is_empty() && self.snapshots.is_empty()
    }
}

/// A batch read from an outbox, with what acknowledging it takes.
pub type Batch<T> = Option<(Records, T)>;

pub trait Outbox: Send + Sync + 'static {
    /// What `ack` needs to forget a batch.
    type Token: Send;

    /// Up to `max` events not yet settled (including ones a dead replica left behind), or
    /// `None` when there are none.
    fn read(&self, max: usize) -> impl Future<Output = Result<Batch<Self::Token>, String>> + Send;

    /// The batch is settled: forget it.
    fn ack(&self, token: Self::Token) -> impl Future<Output = Result<(), String>> + Send;

    fn backlog(&self) -> impl Future<Output = Result<Backlog, String>> + Send;

    /// A settled batch held events that reuse settled identities with other content: the
    /// engine's store lost acknowledged writes. Nothing to do by default.
    fn conflicts_found(&self, _count: usize) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Whether batches may be written side by side and land in any order: true where every
    /// batch holds only events (the store's writes of them commute). False by default.
    fn concurrent(&self) -> bool {
        false
    }

    /// Whether the next read first takes back this reader's own entries read and not yet
    /// acknowledged (after a failed read or acknowledgement): those of batches still being
    /// written too, so the settler lets them land first. False by default.
    fn recovering(&self) -> bool {
        false
    }

    /// A batch that was read and will not be settled now (the settler stopped while its write
    /// kept failing): the next read should take it back. Nothing by default.
    fn abandon(&self, _token: Self::Token) {}

    /// Waits after a batch that was not full, until there may be more to read: `interval` by
    /// default, so light traffic still makes batches of some size.
    fn idle(&self, interval: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(interval)
    }
}
