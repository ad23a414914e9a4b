//! The one mapping from errors to gRPC statuses (refusals before the engine are `Refusal`s).
//! Declines never come here: they are answers.
//! Values a caller sent are quoted in messages only through [`crate::ledger::echo`] (a short
//! prefix); the cap on the whole message below is a backstop, so that no message can outgrow the
//! `grpc-message` trailer whatever a refusal quotes.

use tonic::{Code, Status};

use crate::engine::Error;
use crate::ledger::Error as LedgerError;

pub fn to_status(error: Error) -> Status {
    let code = match &error {
        Error::Ledger(LedgerError::InvalidArgument { .. }) => Code::InvalidArgument,
        Error::Ledger(LedgerError::AccountNotFound(_)) => Code::NotFound,
        Error::Ledger(LedgerError::ReservationNotFound(_)) => Code::NotFound,
        Error::Ledger(LedgerError::RequestIdReused(_)) => Code::AlreadyExists,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
        Error::NotConfigured(_) => Code::FailedPrecondition,
    };
    Status::new(code, bounded(error.to_string()))
}

/// The longest message a status carries, in bytes: far below the 8 KiB a client accepts in its
/// trailers, with room for percent-encoding.
pub const MESSAGE_LEN_MAX: usize = 1024;

fn bounded(mut message: String) -> String {
    if message.len() > MESSAGE_LEN_MAX {
        let mut end = MESSAGE_LEN_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}

/// The store gave no answer within the call's budget: the change may or may not have happened.
pub fn store_timeout() -> Status {
    Status::unavailable(
        "store: no answer before the call's deadline; the outcome is unknown (retry with the same request_id)",
    )
}

/// Input refused during conversion, before any engine call.
pub fn invalid(error: LedgerError) -> Status {
    to_status(Error::Ledger(error))
}
