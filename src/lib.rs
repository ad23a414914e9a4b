//! credit-sidecar: decides whether work may spend a team's credits, and records every credit
//! held, spent, returned and expired.
//!
//! Codemap (ARCHITECTURE.md has the whole picture, the data flow of a call and the allowed
//! dependencies between these modules, which `tests/it/architecture.rs` enforces):
//! - [`server`]: wiring — the gRPC services, health, reflection, the background tasks, shutdown.
//! - [`config`]: the one place that reads flags, environment and files; typed and validated.
//! - [`maintenance`]: the `verify` and `rebuild` commands (Redis against the SQL ledger).
//! - [`health`]: `grpc.health.v1` and `/readyz`, following Redis and the database.
//! - [`gate`]: the tower layer before every call: deadline, the request's arrival, admission
//!   (load shedding), bearer tokens.
//! - [`connection`]: accepted connections, closed when idle.
//! - [`api`]: gRPC. The only code that names generated protobuf types; converts them to ledger
//!   commands and maps errors to gRPC statuses in one place.
//! - [`journal`]: the outage journal: Commits accepted while Redis is away, applied when it
//!   answers again (Redis engine, opt-in per category).
//! - [`alerts`]: threshold alerts: found crossed in the background, recorded once per cycle,
//!   told to WatchAccount streams.
//! - [`auth`]: the tokens file: scopes, accounts, constant-time checks, reloads.
//! - [`engine`]: where hot state lives: the embedded engine (the reference model behind a lock)
//!   and the Redis engine (one Redis Function call per operation, from a Lua library).
//! - [`settle`]: outbox → SQL (PostgreSQL or SQLite): the settler and the store.
//! - [`telemetry`]: logging, metric names, the HTTP endpoint for metrics and probes.
//! - [`ledger`]: the rules, with no I/O: types, validation, cycles, the reference model.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod config;
pub mod connection;
pub mod engine;
pub mod gate;
pub mod health;
pub mod journal;
pub mod ledger;
pub mod maintenance;
pub mod outage;
pub mod server;
pub mod settle;
pub mod telemetry;
