//! The embedded engine: the reference model ([`Ledger`]) in-process behind one mutex. Each
//! operation is a few microseconds of work on in-memory maps, so one lock is simpler than
//! sharding and not the bottleneck. Events are drained after every operation; until the
//! settler exists they are counted and dropped.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::ledger::{Clock, Error, Ledger, Millis};

pub struct EmbeddedEngine {
    ledger: Mutex<Ledger>,
    clock: Arc<dyn Clock>,
}

impl EmbeddedEngine {
    pub fn new(clock: Arc<dyn Clock>, retention_ms: Millis) -> Self {
        Self { ledger: Mutex::new(Ledger::new(retention_ms)), clock }
    }

    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock is a bug in the model; the state it left is still the
        // best we have, and refusing every later call would turn one bug into an outage.
        self.ledger.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one operation at the clock's now, atomically.
    pub fn with<T>(&self, op: impl FnOnce(&mut Ledger, Millis) -> Result<T, Error>) -> super::Result<T> {
        let mut ledger = self.lock();
        let now = self.clock.now_ms();
        let result = op(&mut ledger, now);
        let events = ledger.drain_events();
        tracing::trace!(events = events.len(), "operation recorded");
        Ok(result?)
    }

    pub fn sweep(&self) -> usize {
        let mut ledger = self.lock();
        let now = self.clock.now_ms();
        let expired = ledger.sweep(now);
        ledger.drain_events();
        expired
    }
}
