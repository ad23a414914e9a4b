//! The integration tests: one binary, modules by subject, one shared harness that starts the
//! real server on a free loopback port and talks to it through the real tonic clients.

// The line budget (clippy.toml) is for the service's code; a test scenario reads top to bottom.
#![allow(clippy::too_many_lines)]

mod alerts;
mod architecture;
mod cluster;
mod crash;
mod differential;
mod edges;
mod errors;
mod fail_open;
mod flows;
mod golden;
mod harness;
mod journal;
mod layout;
mod model_props;
mod monitoring;
mod operations;
mod operator;
mod process;
mod redis_faults;
mod replication;
mod rules;
mod servers;
mod settings;
mod settle;
mod settle_faults;
mod state_loss;
mod store;
mod store_tls;
mod traces;
mod watch;
