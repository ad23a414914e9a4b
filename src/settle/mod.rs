//! Settlement: every event, exactly once, into durable SQL storage.
//! - [`outbox`]: what the settler reads from (an engine's outbox), and the embedded engine's
//!   in-memory outbox.
//! - [`settler`]: the background task: read a batch, write it in one transaction, acknowledge.
//! - [`store`]: PostgreSQL or SQLite through one sqlx path; the schema and its migrations.
//!
//! Depends on `ledger` (events, their JSON) and `telemetry` (metric names) only; engines
//! implement [`outbox::Outbox`].

pub mod outbox;
pub mod settler;
pub mod store;
