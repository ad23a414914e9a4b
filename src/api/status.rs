//! The one mapping from errors to gRPC statuses (refusals before the engine are `Refusal`s).
//! Declines never come here: they are answers.
//! Values a caller sent are quoted in messages only through [`crate::ledger::echo`] (a short
//! prefix); the cap on the whole message below is a backstop, so that no message can outgrow the
//! `grpc-message` trailer whatever a refusal quotes.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::engine::Error;
use crate::ledger::Error as LedgerError;

/// The `domain` of every `google.rpc.ErrorInfo` this service sends.
pub const ERROR_DOMAIN: &str = "credit-sidecar";

/// Every `ErrorInfo.reason` this service sends, with the status code it comes with. The
/// README's catalogue ("Errors and declines") lists exactly these (a test holds it to them).
pub const REASONS: [(&str, Code); 20] = [
    ("INVALID_FIELD", Code::InvalidArgument),
    ("MALFORMED_MESSAGE", Code::InvalidArgument),
    ("ACCOUNT_NOT_FOUND", Code::NotFound),
    ("RESERVATION_NOT_FOUND", Code::NotFound),
    ("REQUEST_ID_REUSED", Code::AlreadyExists),
    ("STORE_UNAVAILABLE", Code::Unavailable),
    ("STORE_TIMEOUT", Code::Unavailable),
    ("STORE_STATE_LOST", Code::Unavailable),
    ("OVERLOADED", Code::ResourceExhausted),
    ("SHUTTING_DOWN", Code::Unavailable),
    ("DEADLINE_EXCEEDED", Code::DeadlineExceeded),
    ("REQUEST_BODY_TIMEOUT", Code::DeadlineExceeded),
    ("REQUEST_TOO_LARGE", Code::OutOfRange),
    ("REQUEST_BROKEN", Code::Cancelled),
    ("TOKEN_MISSING", Code::Unauthenticated),
    ("TOKEN_UNKNOWN", Code::Unauthenticated),
    ("SCOPE_MISSING", Code::PermissionDenied),
    ("ACCOUNT_NOT_ALLOWED", Code::PermissionDenied),
    ("NOT_CONFIGURED", Code::FailedPrecondition),
    ("INTERNAL", Code::Internal),
];

/// The retry delay suggested when a store did not answer: long enough for a failover or a
/// reconnect to be under way, short enough to stay within a worker's deadline.
pub const STORE_RETRY_DELAY: Duration = Duration::from_millis(200);

/// The retry delay suggested while Redis's state is lost: a restore from the ledger takes
/// seconds at least.
pub const STATE_LOST_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Every error status carries `google.rpc` details (`grpc-status-details-bin`): an `ErrorInfo`
/// whose `reason` is a stable code (README, "Errors and declines"), and, by code, a `BadRequest`
/// naming the field, a `ResourceInfo` naming what was not found, a `RetryInfo` when waiting
/// and retrying (with the same request id) helps.
pub fn to_status(error: Error) -> Status {
    to_status_naming(error, "request_id")
}

/// As [`to_status`], for a CommitBatch: a reused item id is named as the item's field.
pub fn batch_status(error: Error, item_ids: &[String]) -> Status {
    let index = match &error {
        Error::Ledger(LedgerError::RequestIdReused(id)) => item_ids.iter().position(|item| item == id.as_str()),
        _ => None,
    };
    match index {
        Some(index) => to_status_naming(error, &format!("items[{index}].item_id")),
        None => to_status(error),
    }
}

/// `request_field`: the field a REQUEST_ID_REUSED names.
fn to_status_naming(error: Error, request_field: &str) -> Status {
    let message = bounded(error.to_string());
    let mut details = ErrorDetails::new();
    let (code, reason) = match &error {
        Error::Ledger(LedgerError::InvalidArgument { field, reason }) => {
            details.add_bad_request_violation(field, bounded(reason.clone()));
            (Code::InvalidArgument, "INVALID_FIELD")
        }
        Error::Ledger(LedgerError::AccountNotFound(account)) => {
            details.set_resource_info("account", account.as_str(), "", "no such account");
            (Code::NotFound, "ACCOUNT_NOT_FOUND")
        }
        Error::Ledger(LedgerError::ReservationNotFound(reservation)) => {
            details.set_resource_info("reservation", reservation.to_string(), "", "no such reservation");
            (Code::NotFound, "RESERVATION_NOT_FOUND")
        }
        Error::Ledger(LedgerError::RequestIdReused(_)) => {
            details.add_bad_request_violation(request_field, "already used with different parameters");
            (Code::AlreadyExists, "REQUEST_ID_REUSED")
        }
        Error::Unavailable(_) => {
            details.set_retry_info(Some(STORE_RETRY_DELAY));
            (Code::Unavailable, "STORE_UNAVAILABLE")
        }
        Error::StateLost(_) => {
            details.set_retry_info(Some(STATE_LOST_RETRY_DELAY));
            (Code::Unavailable, "STORE_STATE_LOST")
        }
        Error::Internal(_) => (Code::Internal, "INTERNAL"),
        Error::NotConfigured(_) => (Code::FailedPrecondition, "NOT_CONFIGURED"),
    };
    with_details(code, message, reason, details)
}

/// A status with `details` and the `ErrorInfo` of `reason`.
pub fn with_details(code: Code, message: String, reason: &'static str, mut details: ErrorDetails) -> Status {
    debug_assert!(REASONS.contains(&(reason, code)), "{reason} with {code:?} is not in REASONS");
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(code, message, details)
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

/// The retry delay suggested when a stream is refused or ended by a shutdown.
pub const STREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Ends a stream (WatchAccount) when the sidecar stops.
pub fn shutting_down() -> Status {
    let message = "the sidecar is shutting down; watch again (another replica)".to_owned();
    with_details(Code::Unavailable, message, "SHUTTING_DOWN", ErrorDetails::with_retry_info(Some(STREAM_RETRY_DELAY)))
}

/// Refuses a stream beyond the sidecar's bound on them.
pub fn too_many_streams(max: usize) -> Status {
    let message = format!("{max} WatchAccount streams are open already; retry later");
    with_details(
        Code::ResourceExhausted,
        message,
        "OVERLOADED",
        ErrorDetails::with_retry_info(Some(STREAM_RETRY_DELAY)),
    )
}

/// The store gave no answer within the call's budget: the change may or may not have happened.
pub fn store_timeout() -> Status {
    let message =
        "store: no answer before the call's deadline; the outcome is unknown (retry with the same request_id)";
    with_details(
        Code::Unavailable,
        message.to_owned(),
        "STORE_TIMEOUT",
        ErrorDetails::with_retry_info(Some(STORE_RETRY_DELAY)),
    )
}

/// Input refused during conversion, before any engine call.
pub fn invalid(error: LedgerError) -> Status {
    to_status(Error::Ledger(error))
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;
    use crate::api::Refusal;
    use crate::ledger::{AccountId, RequestId, ReservationId};

    /// Every error the service can answer with carries a reason of [`REASONS`], with its code.
    #[test]
    fn every_error_has_a_catalogued_reason() {
        let account = AccountId::parse("acme").unwrap();
        let engine_errors = [
            Error::Ledger(LedgerError::invalid("cost.amount", "must be positive")),
            Error::Ledger(LedgerError::AccountNotFound(account.clone())),
            Error::Ledger(LedgerError::ReservationNotFound(ReservationId::parse("acme/1").unwrap())),
            Error::Ledger(LedgerError::RequestIdReused(RequestId::parse("r-1").unwrap())),
            Error::Unavailable("redis: down".into()),
            Error::StateLost("flushed".into()),
            Error::Internal("bug".into()),
            Error::NotConfigured("no database".into()),
        ];
        let refusals = [
            Refusal::RequestBroken("reset".into()),
            Refusal::RequestTooSlow { timeout: Duration::from_secs(1) },
            Refusal::RequestTooLarge { why: "2000 > 1024".into() },
            Refusal::Malformed { message_type: "ReserveRequest".into(), why: "bad wire type".into() },
            Refusal::DeadlineExceeded { timeout: Duration::from_secs(1) },
            Refusal::Overloaded { concurrency_max: 1 },
            Refusal::NoToken,
            Refusal::UnknownToken,
            Refusal::MissingScope { caller: "w".into(), scope: "admin" },
            Refusal::AccountNotAllowed { caller: "w".into(), account: "acme".into() },
        ];
        let statuses: Vec<Status> = engine_errors
            .into_iter()
            .map(to_status)
            .chain(refusals.into_iter().map(Refusal::answer))
            .chain([store_timeout(), shutting_down(), too_many_streams(64)])
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for status in statuses {
            let details = status.check_error_details().unwrap();
            let info = details.error_info().unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
            assert!(REASONS.contains(&(info.reason.as_str(), status.code())), "{status:?}");
            seen.insert(info.reason.clone());
        }
        let all: std::collections::BTreeSet<String> = REASONS.iter().map(|(reason, _)| reason.to_string()).collect();
        assert_eq!(seen, all, "every catalogued reason is produced by some error");
    }
}
