//! Every call the server refuses before the engine decides anything — at the gate (arrival,
//! deadline, admission, tokens) or at the API's account check — as one type that owns the
//! refusal's gRPC code, the reason it is counted under (`credit_sidecar_refusals_total{reason}`)
//! and its message. The engine's own errors become statuses in `status.rs`; declines are answers.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::ErrorDetails;

use crate::ledger::echo;
use crate::telemetry;

/// The retry delay suggested to an overloaded server's caller (with jitter on its side).
pub const OVERLOAD_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request body failed while arriving (the peer reset the stream, say).
    RequestBroken(String),
    /// The body did not arrive within `request_body_timeout_ms`.
    RequestTooSlow {
        timeout: Duration,
    },
    /// A message over `request_bytes_max`: tonic refuses it (OUT_OF_RANGE), and the gate
    /// answers it again as this refusal; `why` is the decoder's account (the sizes).
    RequestTooLarge {
        why: String,
    },
    /// A message that is not valid protobuf for its type (named).
    Malformed {
        message_type: String,
        why: String,
    },
    /// No answer within the call's deadline.
    DeadlineExceeded {
        timeout: Duration,
    },
    /// `concurrency_max` calls are in flight.
    Overloaded {
        concurrency_max: usize,
    },
    /// Tokens are configured and the call carries no bearer token.
    NoToken,
    UnknownToken,
    /// The token lacks the service's scope.
    MissingScope {
        caller: String,
        scope: &'static str,
    },
    /// The token may not touch the account the call names.
    AccountNotAllowed {
        caller: String,
        account: String,
    },
}

impl Refusal {
    pub fn code(&self) -> Code {
        match self {
            Self::RequestBroken(_) => Code::Cancelled,
            Self::RequestTooSlow { .. } | Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::RequestTooLarge { .. } => Code::OutOfRange,
            Self::Malformed { .. } => Code::InvalidArgument,
            Self::Overloaded { .. } => Code::ResourceExhausted,
            Self::NoToken | Self::UnknownToken => Code::Unauthenticated,
            Self::MissingScope { .. } | Self::AccountNotAllowed { .. } => Code::PermissionDenied,
        }
    }

    /// The `reason` label of the refusals metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RequestBroken(_) => "request_broken",
            Self::RequestTooSlow { .. } => "request_body_timeout",
            Self::RequestTooLarge { .. } => "request_too_large",
            Self::Malformed { .. } => "malformed",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::Overloaded { .. } => "overloaded",
            Self::NoToken | Self::UnknownToken => "unauthenticated",
            Self::MissingScope { .. } | Self::AccountNotAllowed { .. } => "permission_denied",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::RequestBroken(why) => format!("request: {why}"),
            Self::RequestTooSlow { timeout } => {
                format!("request_body_timeout_ms: the request did not arrive within {} ms", timeout.as_millis())
            }
            Self::RequestTooLarge { why } => format!("request_bytes_max: the request message is too large ({why})"),
            Self::Malformed { message_type, why } => format!("{message_type}: not a valid protobuf message ({why})"),
            Self::DeadlineExceeded { timeout } => format!("no answer within {} ms", timeout.as_millis()),
            Self::Overloaded { concurrency_max } => {
                format!("overloaded: {concurrency_max} calls in flight (concurrency_max); retry with backoff")
            }
            Self::NoToken => "authorization: expected the metadata `authorization: Bearer <token>`".to_owned(),
            Self::UnknownToken => "authorization: unknown bearer token".to_owned(),
            Self::MissingScope { caller, scope } => format!("authorization: token {caller:?} lacks the scope {scope}"),
            Self::AccountNotAllowed { caller, account } => {
                format!("account_id: token {caller:?} may not touch account {}", echo(account))
            }
        }
    }

    /// Counts the refusal (metric and debug log) without answering: for refusals another layer
    /// answers (tonic, for a message that is too large).
    pub fn count(&self) {
        metrics::counter!(telemetry::REFUSALS, "reason" => self.reason()).increment(1);
        tracing::debug!(reason = self.reason(), message = self.message(), "call refused");
    }

    /// Counts the refusal and makes its status.
    /// The stable code of the status's `google.rpc.ErrorInfo` (README, "Errors and declines").
    pub fn error_reason(&self) -> &'static str {
        match self {
            Self::RequestBroken(_) => "REQUEST_BROKEN",
            Self::RequestTooSlow { .. } => "REQUEST_BODY_TIMEOUT",
            Self::RequestTooLarge { .. } => "REQUEST_TOO_LARGE",
            Self::Malformed { .. } => "MALFORMED_MESSAGE",
            Self::DeadlineExceeded { .. } => "DEADLINE_EXCEEDED",
            Self::Overloaded { .. } => "OVERLOADED",
            Self::NoToken => "TOKEN_MISSING",
            Self::UnknownToken => "TOKEN_UNKNOWN",
            Self::MissingScope { .. } => "SCOPE_MISSING",
            Self::AccountNotAllowed { .. } => "ACCOUNT_NOT_ALLOWED",
        }
    }

    /// The status, with its `google.rpc` details: the `ErrorInfo`, and a `RetryInfo` for an
    /// overload (retrying after a pause helps), a `BadRequest` for a malformed message or a
    /// forbidden account.
    pub fn status(self) -> Status {
        self.count();
        self.answer()
    }

    /// [`Refusal::status`] without counting it: for the end of a call that was admitted (a
    /// stream cut at its deadline), which is not a refusal to alert on.
    pub fn answer(self) -> Status {
        let mut details = ErrorDetails::new();
        match &self {
            Self::Overloaded { .. } => {
                details.set_retry_info(Some(OVERLOAD_RETRY_DELAY));
            }
            Self::Malformed { message_type, why } => {
                details.add_bad_request_violation(message_type.clone(), why.clone());
            }
            Self::AccountNotAllowed { .. } => {
                details.add_bad_request_violation("account_id", "not among the accounts the token may touch");
            }
            _ => {}
        }
        super::status::with_details(self.code(), self.message(), self.error_reason(), details)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_names_its_setting_or_scope() {
        let slow = Refusal::RequestTooSlow { timeout: Duration::from_millis(500) };
        assert_eq!((slow.code(), slow.reason()), (Code::DeadlineExceeded, "request_body_timeout"));
        assert!(slow.message().starts_with("request_body_timeout_ms: "));
        let overloaded = Refusal::Overloaded { concurrency_max: 4 };
        assert_eq!(overloaded.code(), Code::ResourceExhausted);
        assert!(overloaded.message().contains("4 calls in flight (concurrency_max)"));
        let account = Refusal::AccountNotAllowed { caller: "ci".into(), account: "x".repeat(10_000) };
        assert!(account.message().len() < 200, "a caller's value is echoed as a short prefix");
    }
}
