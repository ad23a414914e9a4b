//! The rules of the credit ledger, with no I/O: types and validation, the price book and other
//! operator rules, billing-cycle arithmetic, and the reference model — the executable
//! specification that every engine must agree with.
//!
//! - [`types`]: validated ids, amounts, labels; the bounds, as named constants.
//! - [`rules`]: categories, price book, TTL bounds, trial defaults (from configuration).
//! - [`command`]: validated commands and their idempotency fingerprints.
//! - [`cycle`]: calendar arithmetic of billing cycles.
//! - [`model`]: [`Ledger`], every operation; `account` holds the per-account primitives.
//! - [`event`]: the record of every state change (the outbox the settler writes to SQL);
//!   [`wire`]: its JSON form, shared by the Redis outbox, the embedded outbox and SQL.
//! - [`answer`]: what operations return: results, and declines with their figures.
//! - [`durable`]: what the embedded engine keeps in SQL beside the events (remembered answers,
//!   account snapshots), in versioned JSON forms; [`snapshot`]: an account's plain copy.
//! - [`clock`]: injectable time.
//! - [`alerts`]: alert thresholds, and when one counts as crossed.
//!
//! No tonic, redis or sqlx here: callers (engines, the API) depend on this module, never the
//! other way round.

mod account;
pub mod alerts;
pub mod answer;
mod check;
pub mod clock;
pub mod command;
pub mod cycle;
pub mod durable;
pub mod event;
pub mod model;
pub mod replay;
pub mod rules;
pub mod snapshot;
pub mod types;
pub mod wire;

pub use answer::*;
pub use clock::{Clock, ManualClock, SystemClock};
pub use model::Ledger;
pub use rules::{CostInput, Priced, Rules};
pub use types::*;

/// Why a request was refused without being decided: bad input, or something that does not
/// exist. Business declines are not errors; see [`Decision`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The named request field is invalid; nothing changed.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("account_id: no account {0}")]
    AccountNotFound(AccountId),
    #[error("reservation_id: no reservation {0}")]
    ReservationNotFound(ReservationId),
    #[error("request_id: {0} was already used with different parameters")]
    RequestIdReused(RequestId),
}

impl Error {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.to_owned(), reason: reason.into() }
    }

    /// A grant that would lift the account's live balance above [`BALANCE_MAX`].
    pub fn balance_exceeded(field: &str) -> Self {
        Self::invalid(field, format!("would lift the account's balance above {BALANCE_MAX}"))
    }

    /// A lot expiry that is not in the future.
    pub fn expiry_in_past() -> Self {
        Self::invalid("expires_unix_ms", "must be in the future")
    }
}
