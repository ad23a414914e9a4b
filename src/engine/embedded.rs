//! The embedded engine: the reference model ([`Ledger`]) in-process behind one mutex. Each
//! operation is a few microseconds of work on in-memory maps, so one lock is simpler than
//! sharding and not the bottleneck. The events every operation emits go to a bounded in-memory
//! outbox that the settler drains into SQLite (or PostgreSQL); without one (tests of the rules
//! alone) they are dropped.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::ledger::{Clock, Error, Ledger, Millis};
use crate::settle::outbox::MemoryOutbox;

pub struct EmbeddedEngine {
    ledger: Mutex<Ledger>,
    clock: Arc<dyn Clock>,
    outbox: Option<Arc<MemoryOutbox>>,
}

impl EmbeddedEngine {
    pub fn new(clock: Arc<dyn Clock>, ledger: Ledger, outbox: Option<Arc<MemoryOutbox>>) -> Self {
        Self { ledger: Mutex::new(ledger), clock, outbox }
    }

    pub fn outbox(&self) -> Option<Arc<MemoryOutbox>> {
        self.outbox.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock is a bug in the model; the state it left is still the
        // best we have, and refusing every later call would turn one bug into an outage.
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one operation at the clock's now, atomically, and queues its events for settlement.
    /// Refuses (fail closed) while the outbox is full: a change that could not be recorded must
    /// not happen.
    pub fn with<T>(&self, op: impl FnOnce(&mut Ledger, Millis) -> Result<T, Error>) -> super::Result<T> {
        if let Some(outbox) = &self.outbox
            && !outbox.has_room()
        {
            return Err(super::Error::Unavailable(format!(
                "settlement backlog full ({} events wait for the database)",
                outbox.len()
            )));
        }
        let mut ledger = self.lock();
        let now = self.clock.now_ms();
        let result = op(&mut ledger, now);
        self.record(&mut ledger);
        Ok(result?)
    }

    pub fn sweep(&self) -> usize {
        let mut ledger = self.lock();
        let now = self.clock.now_ms();
        let expired = ledger.sweep(now);
        self.record(&mut ledger);
        expired
    }

    /// Moves the ledger's new events to the outbox, under the ledger's lock so they keep their
    /// order.
    fn record(&self, ledger: &mut Ledger) {
        let events = ledger.drain_events();
        if let Some(outbox) = &self.outbox {
            outbox.push(events);
        }
    }
}
