//! The frame around every call inside the services, in this order: the accounts check of an
//! authenticated caller (its token may name the accounts it touches), the `call` span (`rpc`,
//! `account`, `request_id`), the store budget (the handler is cut off before the call's
//! deadline, answering UNAVAILABLE), and the call metrics (by RPC and outcome, declines by
//! reason). Each step is a function of its own below; [`frame`] runs them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use super::pb;
use super::refusal::Refusal;
use crate::auth::Caller;
use crate::telemetry;

/// When a call must be answered by: set by the gate from `grpc-timeout`, read here.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Time left, less a margin to carry the answer back: the API stops waiting for its store
    /// at this point and answers UNAVAILABLE.
    pub fn budget(&self) -> Duration {
        let left = self.0.saturating_duration_since(Instant::now());
        left.saturating_sub((left / 10).max(Duration::from_millis(1)))
    }
}

/// The account a request touches (for the caller's account list and the logs).
pub trait Scoped {
    fn account(&self) -> &str;
    fn request_id(&self) -> &str {
        ""
    }
}

/// The outcome a response reports; None for reads.
pub trait Answered {
    fn outcome_of(&self) -> Option<pb::Outcome> {
        None
    }

    /// The declines of a batch's items (the call itself answers OK).
    fn item_declines(&self) -> Vec<pb::Outcome> {
        Vec::new()
    }
}

impl Answered for pb::CommitBatchResponse {
    fn item_declines(&self) -> Vec<pb::Outcome> {
        self.items
            .iter()
            .map(pb::CommitItemResult::outcome)
            .filter(|outcome| !matches!(outcome, pb::Outcome::Ok | pb::Outcome::Journaled))
            .collect()
    }
}

/// The account part of `<account>/<seq>` (the whole text when it has no `/`).
fn account_of(reservation_id: &str) -> &str {
    reservation_id.rsplit_once('/').map_or(reservation_id, |(account, _)| account)
}

macro_rules! scoped {
    (account: $($t:ty),*) => { $(impl Scoped for $t { fn account(&self) -> &str { &self.account_id } })* };
    (account, request: $($t:ty),*) => { $(impl Scoped for $t {
        fn account(&self) -> &str { &self.account_id }
        fn request_id(&self) -> &str { &self.request_id }
    })* };
    (reservation, request: $($t:ty),*) => { $(impl Scoped for $t {
        fn account(&self) -> &str { account_of(&self.reservation_id) }
        fn request_id(&self) -> &str { &self.request_id }
    })* };
}

scoped!(account: pb::QuoteRequest, pb::GetBalanceRequest, pb::GetAccountRequest, pb::ListReservationsRequest,
    pb::GetUsageRequest, pb::GetAccountHistoryRequest, pb::WatchAccountRequest, pb::ListAlertsRequest,
    pb::SetAlertThresholdsRequest);
scoped!(account, request: pb::ReserveRequest, pb::ChargeRequest, pb::SetPlanRequest, pb::GrantRequest,
    pb::StartTrialRequest, pb::SetUserLimitRequest, pb::SetCategoryBudgetRequest);
scoped!(reservation, request: pb::CommitRequest, pb::ExtendRequest, pb::ReleaseRequest);

/// A batch has no request id of its own (each item's id is one); the logs name the first item's.
impl Scoped for pb::CommitBatchRequest {
    fn account(&self) -> &str {
        account_of(&self.reservation_id)
    }
    fn request_id(&self) -> &str {
        self.items.first().map_or("", |item| item.item_id.as_str())
    }
}

impl Scoped for pb::GetReservationRequest {
    fn account(&self) -> &str {
        account_of(&self.reservation_id)
    }
}

macro_rules! answered {
    (outcome: $($t:ty),*) => { $(impl Answered for $t {
        fn outcome_of(&self) -> Option<pb::Outcome> { Some(self.outcome()) }
    })* };
    (read: $($t:ty),*) => { $(impl Answered for $t {})* };
}

answered!(outcome: pb::ReserveResponse, pb::CommitResponse, pb::ExtendResponse, pb::ReleaseResponse,
    pb::ChargeResponse, pb::QuoteResponse, pb::SetPlanResponse, pb::GrantResponse, pb::StartTrialResponse,
    pb::SetUserLimitResponse, pb::SetCategoryBudgetResponse);
answered!(read: pb::GetBalanceResponse, pb::GetReservationResponse, pb::GetAccountResponse,
    pb::ListReservationsResponse, pb::GetUsageResponse, pb::GetAccountHistoryResponse, super::admin::WatchStream,
    pb::SetAlertThresholdsResponse, pb::ListAlertsResponse);

/// Every RPC of `credits.v1`, as the call metrics name them, and its full gRPC name (the trace
/// span's name).
const RPCS: [(&str, &str); 21] = [
    ("Reserve", "credits.v1.CreditAuthorizer/Reserve"),
    ("Commit", "credits.v1.CreditAuthorizer/Commit"),
    ("CommitBatch", "credits.v1.CreditAuthorizer/CommitBatch"),
    ("Extend", "credits.v1.CreditAuthorizer/Extend"),
    ("Release", "credits.v1.CreditAuthorizer/Release"),
    ("Charge", "credits.v1.CreditAuthorizer/Charge"),
    ("Quote", "credits.v1.CreditAuthorizer/Quote"),
    ("GetBalance", "credits.v1.CreditAuthorizer/GetBalance"),
    ("GetReservation", "credits.v1.CreditAuthorizer/GetReservation"),
    ("SetPlan", "credits.v1.CreditAdmin/SetPlan"),
    ("Grant", "credits.v1.CreditAdmin/Grant"),
    ("StartTrial", "credits.v1.CreditAdmin/StartTrial"),
    ("SetUserLimit", "credits.v1.CreditAdmin/SetUserLimit"),
    ("SetCategoryBudget", "credits.v1.CreditAdmin/SetCategoryBudget"),
    ("GetAccount", "credits.v1.CreditAdmin/GetAccount"),
    ("ListReservations", "credits.v1.CreditAdmin/ListReservations"),
    ("GetUsage", "credits.v1.CreditAdmin/GetUsage"),
    ("GetAccountHistory", "credits.v1.CreditAdmin/GetAccountHistory"),
    ("WatchAccount", "credits.v1.CreditAdmin/WatchAccount"),
    ("SetAlertThresholds", "credits.v1.CreditAdmin/SetAlertThresholds"),
    ("ListAlerts", "credits.v1.CreditAdmin/ListAlerts"),
];

/// Put in a request's extensions by the gate, set when the call reaches [`frame`] (which
/// counts it). A call tonic refuses before any handler runs — a message that does not decode,
/// one over `request_bytes_max` — never gets here, and the gate counts it with
/// [`record_unobserved`], so every call answered shows in the call metrics exactly once.
#[derive(Clone, Default)]
pub struct Observed(Arc<AtomicBool>);

impl Observed {
    pub fn was_observed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts a call refused before it reached a handler: `path` is its gRPC path, `code` the
/// status it was answered with.
pub fn record_unobserved(path: &str, code: Code, started: Instant) {
    let method = path.rsplit('/').next().unwrap_or_default();
    // Only known names become labels: a caller must not mint new time series by calling paths
    // that do not exist.
    let rpc = RPCS.into_iter().find(|(rpc, _)| *rpc == method).map_or("unknown", |(rpc, _)| rpc);
    record(rpc, code_label(code), started);
    tracing::debug!(rpc, code = code_label(code), "call refused before its handler");
}

/// Runs `handler` on `request` as RPC `rpc`, in the frame the module docs describe.
pub async fn frame<Req, Resp, Fut>(
    rpc: &'static str,
    request: Request<Req>,
    handler: impl FnOnce(Request<Req>) -> Fut,
) -> Result<Response<Resp>, Status>
where
    Req: Scoped,
    Resp: Answered,
    Fut: Future<Output = Result<Response<Resp>, Status>>,
{
    let started = Instant::now();
    let caller = request.extensions().get::<Caller>().cloned();
    let deadline = request.extensions().get::<Deadline>().copied();
    if let Some(observed) = request.extensions().get::<Observed>() {
        observed.0.store(true, Ordering::Relaxed);
    }
    let message = request.get_ref();
    let account = message.account().to_owned();
    let span = call_span(rpc, &account, message.request_id());
    telemetry::traces::adopt_caller_span(&span, request.metadata());
    let unanswered = Unanswered(Some(span.clone()));
    async move {
        let _unanswered = unanswered;
        if let Err(refusal) = check_account(caller.as_ref(), &account) {
            let status = refusal.status();
            record(rpc, code_label(status.code()), started);
            traced(&status);
            return Err(status);
        }
        let result = within_budget(deadline, handler(request)).await;
        count(rpc, &result, started);
        let mut unanswered = _unanswered;
        unanswered.0 = None;
        result
    }
    .instrument(span)
    .await
}

/// The `call` span. Exported as a trace, it also carries OpenTelemetry's name, kind and RPC
/// attributes (which the logs do not need); its `outcome` is recorded when the call is answered.
fn call_span(rpc: &'static str, account: &str, request_id: &str) -> tracing::Span {
    use tracing::field::Empty;
    if !telemetry::traces::exporting() {
        return tracing::info_span!("call", rpc, account, request_id, outcome = Empty);
    }
    let name = RPCS.into_iter().find(|(method, _)| *method == rpc).map_or(rpc, |(_, name)| name);
    tracing::info_span!(
        "call",
        otel.name = name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc,
        account,
        request_id,
        outcome = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    )
}

/// Marks the current `call` span failed when the status is a server-side failure (as
/// OpenTelemetry's gRPC conventions have it: a caller's mistake is not the server's error).
fn traced(status: &Status) {
    let span = tracing::Span::current();
    span.record("outcome", code_label(status.code()));
    if matches!(
        status.code(),
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.record("otel.status_code", "error");
        span.record("otel.status_description", status.message());
    }
}

/// Records `outcome = cancelled` on the call's span when the call is dropped unanswered (the
/// caller went away, or the gate's deadline cut it), so no span ends without an outcome.
struct Unanswered(Option<tracing::Span>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            span.record("outcome", "cancelled");
        }
    }
}

/// A caller whose token names accounts may touch only those.
fn check_account(caller: Option<&Caller>, account: &str) -> Result<(), Refusal> {
    match caller {
        Some(caller) if !caller.may_touch(account) => {
            Err(Refusal::AccountNotAllowed { caller: caller.name.clone(), account: account.to_owned() })
        }
        _ => Ok(()),
    }
}

/// Runs the handler until the call's store budget (its deadline less the margin to answer) is
/// spent; then answers UNAVAILABLE: the store did not answer, so the outcome is unknown.
async fn within_budget<Resp>(
    deadline: Option<Deadline>,
    handling: impl Future<Output = Result<Response<Resp>, Status>>,
) -> Result<Response<Resp>, Status> {
    let Some(deadline) = deadline else { return handling.await };
    tokio::time::timeout(deadline.budget(), handling).await.unwrap_or_else(|_| Err(super::status::store_timeout()))
}

/// The call metrics and log line of an answered call: its outcome (declines by reason) or status.
fn count<Resp: Answered>(rpc: &'static str, result: &Result<Response<Resp>, Status>, started: Instant) {
    match result {
        Ok(response) => {
            let outcome = response.get_ref().outcome_of().unwrap_or(pb::Outcome::Ok);
            let label = outcome_label(outcome);
            if !matches!(outcome, pb::Outcome::Ok | pb::Outcome::Journaled) && rpc != "Quote" {
                metrics::counter!(telemetry::DECLINES, "rpc" => rpc, "reason" => label).increment(1);
            }
            for item in response.get_ref().item_declines() {
                metrics::counter!(telemetry::DECLINES, "rpc" => rpc, "reason" => outcome_label(item)).increment(1);
            }
            record(rpc, label, started);
            tracing::Span::current().record("outcome", label);
            tracing::debug!(outcome = label, "answered");
        }
        Err(status) => {
            let label = code_label(status.code());
            record(rpc, label, started);
            traced(status);
            match status.code() {
                Code::Unavailable | Code::Internal | Code::Unknown => {
                    tracing::warn!(code = label, message = status.message(), "call failed")
                }
                _ => tracing::debug!(code = label, message = status.message(), "call refused"),
            }
        }
    }
}

fn record(rpc: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!(telemetry::CALLS, "rpc" => rpc, "outcome" => outcome).increment(1);
    metrics::histogram!(telemetry::CALL_DURATION, "rpc" => rpc, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

fn outcome_label(outcome: pb::Outcome) -> &'static str {
    match outcome {
        pb::Outcome::Unspecified => "unspecified",
        pb::Outcome::Ok => "ok",
        pb::Outcome::InsufficientCredit => "insufficient_credit",
        pb::Outcome::UserLimitReached => "user_limit_reached",
        pb::Outcome::ReservationExpired => "reservation_expired",
        pb::Outcome::ReservationClosed => "reservation_closed",
        pb::Outcome::ExceedsHold => "exceeds_hold",
        pb::Outcome::TrialAlreadyUsed => "trial_already_used",
        pb::Outcome::CategoryBudgetReached => "category_budget_reached",
        pb::Outcome::Journaled => "journaled",
    }
}

fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
