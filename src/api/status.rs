//! The one mapping from errors to gRPC statuses. Declines never come here: they are answers.

use tonic::{Code, Status};

use crate::engine::Error;
use crate::ledger::Error as Refusal;

pub fn to_status(error: Error) -> Status {
    let code = match &error {
        Error::Ledger(Refusal::InvalidArgument { .. }) => Code::InvalidArgument,
        Error::Ledger(Refusal::AccountNotFound(_)) => Code::NotFound,
        Error::Ledger(Refusal::ReservationNotFound(_)) => Code::NotFound,
        Error::Ledger(Refusal::RequestIdReused(_)) => Code::AlreadyExists,
        Error::Unavailable(_) => Code::Unavailable,
        Error::Internal(_) => Code::Internal,
        Error::NotConfigured(_) => Code::FailedPrecondition,
    };
    Status::new(code, error.to_string())
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}

/// Input refused during conversion, before any engine call.
pub fn invalid(error: Refusal) -> Status {
    to_status(Error::Ledger(error))
}
