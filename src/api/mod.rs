//! gRPC: the only code that names generated protobuf types. Each handler is three steps: the
//! request becomes a validated ledger command (`convert`), the engine executes it, and its answer
//! becomes the response (`respond`). Engine errors become statuses in one place (`status`), every
//! refusal before the engine is a [`Refusal`]; a message that does not decode is the caller's bad
//! input (`codec`); every call runs in one frame: account check, span, store budget, metrics (`frame`).

mod admin;
mod authorizer;
pub mod cli;
pub mod codec;
mod convert;
mod frame;
mod history;
mod refusal;
mod respond;
pub mod status;

pub use admin::{AdminService, WATCH_STREAMS_MAX};
pub use authorizer::AuthorizerService;
pub use frame::{Deadline, Observed, record_unobserved};
pub use refusal::Refusal;

/// Generated messages and service stubs of `credits.v1`.
#[allow(clippy::too_many_lines)] // generated: the line budget is for code written here
pub mod pb {
    tonic::include_proto!("credits.v1");
    include!(concat!(env!("OUT_DIR"), "/credits.v1.serde.rs"));
}

/// The full names of the services of `credits.v1`, as health checks and reflection name them.
pub const SERVICE_NAMES: [&str; 2] = [
    <pb::credit_authorizer_server::CreditAuthorizerServer<AuthorizerService> as tonic::server::NamedService>::NAME,
    <pb::credit_admin_server::CreditAdminServer<AdminService> as tonic::server::NamedService>::NAME,
];

/// The encoded descriptors of `credits.v1`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("credits_v1_descriptor");
