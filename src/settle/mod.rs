//! Settlement: every event, exactly once, into durable SQL storage.
//! - [`store`]: PostgreSQL or SQLite through one sqlx path; the schema and its migrations.

pub mod store;
