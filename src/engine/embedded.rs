//! The embedded engine: the reference model ([`Ledger`]) in-process behind one mutex. Each
//! operation is a few microseconds of work on in-memory maps, so one lock is simpler than
//! sharding and not the bottleneck.
//!
//! Nothing it acknowledges is lost: an operation's records (its events, the answer it remembers
//! under the request id, now and then a snapshot of the account) go to the outbox, and the
//! caller gets the answer only once the settler has committed them to SQL — group commit, as
//! the operations that arrive during one transaction share the next. A restart restores the
//! ledger from those records (`Ledger::restore_durable`). Without an outbox (tests of the rules
//! alone) records are dropped and nothing waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::Instrument;

pub use super::memory_outbox::MemoryOutbox;
use super::memory_outbox::Ticket;
use crate::ledger::{AccountId, Clock, Error, Ledger, Millis};
use crate::settle::outbox::Records;

/// Events of an account between two snapshots of it, at least: a restart replays at most this
/// many per account, or as many as its last snapshot had items if that is more (see
/// [`snapshot_due`]).
pub const SNAPSHOT_INTERVAL_EVENTS: u64 = 10_000;

/// Whether an account whose last snapshot (if any since start) was taken at event `taken` and
/// copied `items` items is due another one at event `last`. A snapshot copies the whole account,
/// so on an account with more open holds than [`SNAPSHOT_INTERVAL_EVENTS`] a fixed interval would
/// cost more than one item per event (a Reserve-only load on one account spent 6.5 % of the
/// embedded engine's CPU encoding snapshots); waiting as many events as the last one had items
/// keeps that at one item per event, and a restart's replay no longer than a snapshot's load.
pub fn snapshot_due(taken: u64, items: u64, last: u64) -> bool {
    last >= taken + SNAPSHOT_INTERVAL_EVENTS.max(items)
}

pub struct EmbeddedEngine {
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
    outbox: Option<Arc<MemoryOutbox>>,
}

struct State {
    ledger: Ledger,
    /// The last event of each account's latest snapshot and how many items it copied (absent:
    /// none taken since start).
    snapshotted: HashMap<AccountId, (u64, u64)>,
}

impl EmbeddedEngine {
    pub fn now_ms(&self) -> crate::ledger::Millis {
        self.clock.now_ms()
    }

    pub fn new(clock: Arc<dyn Clock>, ledger: Ledger, outbox: Option<Arc<MemoryOutbox>>) -> Self {
        let ledger = if outbox.is_some() { ledger.journal_answers() } else { ledger };
        Self { state: Mutex::new(State { ledger, snapshotted: HashMap::new() }), clock, outbox }
    }

    pub fn outbox(&self) -> Option<Arc<MemoryOutbox>> {
        self.outbox.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in the model; the state it left is still the
        // best we have, and refusing every later call would turn one bug into an outage.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one operation at the clock's now, atomically, and answers once what it changed (and
    /// everything before it, which it may have seen) is in SQL. Refuses (fail closed) while the
    /// outbox is full: a change that could not be recorded must not happen.
    ///
    /// The wait has no bound of its own: the call's deadline cuts it (UNAVAILABLE). The change
    /// is then made but not yet durable; it becomes durable when the database answers again, and
    /// a retry with the same request id gets its answer.
    pub async fn run<T>(&self, op: impl FnOnce(&mut Ledger, Millis) -> Result<T, Error>) -> super::Result<T> {
        let (result, ticket) = self.apply(op)?;
        // The trace span of the wait (a child of the call's; off unless traces are exported).
        let durable = MemoryOutbox::durable(ticket).instrument(tracing::debug_span!("durable write"));
        if !durable.await {
            return Err(super::Error::Unavailable("the outbox closed before the change was settled".into()));
        }
        Ok(result?)
    }

    fn apply<T>(
        &self,
        op: impl FnOnce(&mut Ledger, Millis) -> Result<T, Error>,
    ) -> super::Result<(Result<T, Error>, Ticket)> {
        if let Some(outbox) = &self.outbox
            && !outbox.has_room()
        {
            return Err(super::Error::Unavailable(format!(
                "settlement backlog full ({} events wait for the database)",
                outbox.len()
            )));
        }
        let mut state = self.lock();
        let now = self.clock.now_ms();
        let result = op(&mut state.ledger, now);
        let ticket = self.record(&mut state);
        Ok((result, ticket))
    }

    /// Expires overdue holds and renews cycles; does not wait for SQL (no caller does).
    pub fn sweep(&self) -> usize {
        let mut state = self.lock();
        let now = self.clock.now_ms();
        let expired = state.ledger.sweep(now);
        self.record(&mut state);
        expired
    }

    /// Moves the ledger's new records to the outbox, under the ledger's lock so they keep their
    /// order, with a snapshot of the account when one is due ([`snapshot_due`]). Returns the
    /// ticket to wait for.
    fn record(&self, state: &mut State) -> Ticket {
        let events = state.ledger.drain_events();
        let answers = state.ledger.drain_answers();
        let Some(outbox) = &self.outbox else { return Ticket::none() };
        let mut snapshots = Vec::new();
        if let Some(last) = events.last() {
            let (taken, items) = state.snapshotted.get(&last.account).copied().unwrap_or((0, 0));
            if snapshot_due(taken, items, last.seq)
                && let Some(snapshot) = state.ledger.snapshot(&last.account)
            {
                state.snapshotted.insert(last.account.clone(), (snapshot.last_event, snapshot.items()));
                snapshots.push(snapshot);
            }
        }
        outbox.push(Records { events, answers, snapshots })
    }
}

#[cfg(test)]
mod tests {
    use super::{SNAPSHOT_INTERVAL_EVENTS, snapshot_due};

    /// Every `SNAPSHOT_INTERVAL_EVENTS` events, or as many events as the last snapshot had items
    /// when that is more.
    #[test]
    fn a_snapshot_is_due_after_the_interval_or_as_many_events_as_it_copied() {
        let interval = SNAPSHOT_INTERVAL_EVENTS;
        assert!(!snapshot_due(0, 0, interval - 1));
        assert!(snapshot_due(0, 0, interval), "the first one since start");
        assert!(!snapshot_due(interval, 10, 2 * interval - 1));
        assert!(snapshot_due(interval, 10, 2 * interval), "a small account: the interval");
        assert!(!snapshot_due(interval, 50_000, interval + 49_999));
        assert!(snapshot_due(interval, 50_000, interval + 50_000), "50,000 open holds: 50,000 events");
    }
}
