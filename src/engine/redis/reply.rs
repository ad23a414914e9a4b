//! Decoding script replies into ledger answers. Scripts answer JSON (see each script's header);
//! this module owns the wire shapes and turns them into the same typed values the reference
//! model returns, so the two engines can be compared with `==`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::engine::Error;
use crate::ledger::command::Plan;
use crate::ledger::cycle::Cycle;
use crate::ledger::{
    self, AccountId, AccountView, Charged, Committed, Decision, Decline, DeclineReason, Extended, Granted, LotKind,
    LotView, Period, PlanSet, Released, ReservationId, ReservationState, ReservationView, Reserved, Totals, UserView,
    wire,
};

/// What every script answers: a result, a decline, or an error code.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum Wire<T> {
    Done(T),
    Declined(WireDecline),
    Error(String),
}

#[derive(Deserialize)]
struct WireDecline {
    reason: String,
    requested: i64,
    available: i64,
    user_remaining: Option<i64>,
    held: i64,
    state: Option<String>,
}

#[derive(Deserialize)]
pub struct WireReservation {
    seq: u64,
    user: String,
    category: String,
    state: String,
    reserved: i64,
    committed: i64,
    held: i64,
    returned: i64,
    commits: i64,
    created: i64,
    deadline: i64,
    closed: Option<i64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
pub struct WireTotals {
    granted: i64,
    available: i64,
    held: i64,
    spent: i64,
    expired: i64,
}

#[derive(Deserialize)]
pub struct WireUser {
    user: String,
    limit: Option<i64>,
    used: i64,
    remaining: Option<i64>,
}

#[derive(Deserialize)]
pub struct WirePlan {
    period: u32,
    anchor: i64,
    plan: i64,
    addon: i64,
}

#[derive(Deserialize)]
pub struct WireLot {
    id: u64,
    kind: String,
    granted: i64,
    remaining: i64,
    granted_ms: i64,
    expires: i64,
}

#[derive(Deserialize)]
pub struct WireReserved {
    reservation: u64,
    amount: i64,
    deadline: i64,
    available: i64,
}

#[derive(Deserialize)]
pub struct WireCommitted {
    charged: i64,
    already: bool,
    held: i64,
    returned: i64,
    reservation: WireReservation,
}

#[derive(Deserialize)]
pub struct WireExtended {
    added: i64,
    held: i64,
    deadline: i64,
    reservation: WireReservation,
}

#[derive(Deserialize)]
pub struct WireReleased {
    returned: i64,
    reservation: WireReservation,
}

#[derive(Deserialize)]
pub struct WireCharged {
    reservation: Option<u64>,
    charged: i64,
    already: bool,
    available: i64,
}

#[derive(Deserialize)]
pub struct WirePlanSet {
    cs: i64,
    ce: i64,
    totals: WireTotals,
}

#[derive(Deserialize)]
pub struct WireGranted {
    lot: u64,
    expires: i64,
    totals: WireTotals,
}

#[derive(Deserialize)]
pub struct WireAccount {
    plan: Option<WirePlan>,
    cs: i64,
    ce: i64,
    totals: WireTotals,
    lots: Vec<WireLot>,
    trial: bool,
    open: i64,
    #[serde(default)]
    users: Vec<WireUser>,
    user: Option<WireUser>,
}

#[derive(Deserialize)]
pub struct WirePage {
    page: Vec<WireReservation>,
    next: Option<u64>,
}

/// Identifies what a reply refers to, so error codes become the model's errors.
pub struct Context<'a> {
    pub account: &'a AccountId,
    pub reservation: Option<u64>,
    pub request: Option<&'a str>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    // A reply we cannot read means the scripts and this code disagree: not the caller's fault,
    // and nothing a retry would mend.
    Error::Internal(format!("unexpected reply from Redis script: {what}"))
}

fn error_of(code: &str, context: &Context<'_>) -> Error {
    let refusal = match code {
        // A call on a reservation names the reservation, not the account.
        "account_not_found" => match context.reservation {
            Some(seq) => ledger::Error::ReservationNotFound(ReservationId { account: context.account.clone(), seq }),
            None => ledger::Error::AccountNotFound(context.account.clone()),
        },
        "reservation_not_found" => ledger::Error::ReservationNotFound(ReservationId {
            account: context.account.clone(),
            seq: context.reservation.unwrap_or(0),
        }),
        "request_id_reused" => match context.request.map(ledger::RequestId::parse) {
            Some(Ok(request)) => ledger::Error::RequestIdReused(request),
            _ => return corrupt("request_id_reused without a request"),
        },
        "expires_in_past" => ledger::Error::expiry_in_past(),
        code => match code.strip_prefix("balance:") {
            Some(field) => ledger::Error::balance_exceeded(field),
            None => return corrupt(format!("unknown error code {code:?}")),
        },
    };
    Error::Ledger(refusal)
}

fn parse<T: DeserializeOwned>(text: &str, context: &Context<'_>) -> Result<Decision<T>, Error> {
    let wire: Wire<T> = serde_json::from_str(text).map_err(|error| corrupt(format!("{error}: {text}")))?;
    match wire {
        Wire::Done(done) => Ok(Decision::Done(done)),
        Wire::Declined(declined) => Ok(Decision::Declined(decline(declined)?)),
        Wire::Error(code) => Err(error_of(&code, context)),
    }
}

/// A reply that is a decision; `convert` turns the result into the model's type.
pub fn decision<W: DeserializeOwned, T>(
    text: &str,
    context: &Context<'_>,
    convert: impl FnOnce(W, &AccountId) -> Result<T, Error>,
) -> Result<Decision<T>, Error> {
    match parse::<W>(text, context)? {
        Decision::Done(done) => Ok(Decision::Done(convert(done, context.account)?)),
        Decision::Declined(declined) => Ok(Decision::Declined(declined)),
    }
}

/// A reply that cannot be a decline (reads).
pub fn value<W: DeserializeOwned>(text: &str, context: &Context<'_>) -> Result<W, Error> {
    match parse::<W>(text, context)? {
        Decision::Done(done) => Ok(done),
        Decision::Declined(_) => Err(corrupt("a read answered with a decline")),
    }
}

fn decline(wire: WireDecline) -> Result<Decline, Error> {
    let reason = match wire.reason.as_str() {
        "insufficient_credit" => DeclineReason::InsufficientCredit,
        "user_limit_reached" => DeclineReason::UserLimitReached,
        "reservation_expired" => DeclineReason::ReservationExpired,
        "reservation_closed" => DeclineReason::ReservationClosed,
        "exceeds_hold" => DeclineReason::ExceedsHold,
        "trial_already_used" => DeclineReason::TrialAlreadyUsed,
        other => return Err(corrupt(format!("decline reason {other:?}"))),
    };
    Ok(Decline {
        reason,
        requested: wire.requested,
        available: wire.available,
        user_remaining: wire.user_remaining,
        held: wire.held,
        reservation_state: wire.state.as_deref().map(state).transpose()?,
    })
}

fn state(text: &str) -> Result<ReservationState, Error> {
    wire::state(text).ok_or_else(|| corrupt(format!("reservation state {text:?}")))
}

fn kind(text: &str) -> Result<LotKind, Error> {
    wire::lot_kind(text).ok_or_else(|| corrupt(format!("lot kind {text:?}")))
}

pub fn reservation(wire: WireReservation, account: &AccountId) -> Result<ReservationView, Error> {
    Ok(ReservationView {
        id: ReservationId { account: account.clone(), seq: wire.seq },
        user: wire.user,
        category: wire.category,
        state: state(&wire.state)?,
        reserved: wire.reserved,
        committed: wire.committed,
        held: wire.held,
        returned: wire.returned,
        commit_count: wire.commits,
        created_ms: wire.created,
        deadline_ms: wire.deadline,
        closed_ms: wire.closed,
        labels: wire.labels,
    })
}

fn totals(wire: WireTotals) -> Totals {
    Totals {
        granted: wire.granted,
        available: wire.available,
        held: wire.held,
        spent: wire.spent,
        expired: wire.expired,
    }
}

fn user(wire: WireUser) -> UserView {
    UserView { user: wire.user, limit: wire.limit, used: wire.used, remaining: wire.remaining }
}

pub fn reserved(wire: WireReserved, account: &AccountId) -> Result<Reserved, Error> {
    Ok(Reserved {
        reservation: ReservationId { account: account.clone(), seq: wire.reservation },
        amount: wire.amount,
        deadline_ms: wire.deadline,
        available: wire.available,
    })
}

pub fn committed(wire: WireCommitted, account: &AccountId) -> Result<Committed, Error> {
    Ok(Committed {
        charged: wire.charged,
        already_charged: wire.already,
        held: wire.held,
        returned: wire.returned,
        reservation: reservation(wire.reservation, account)?,
    })
}

pub fn extended(wire: WireExtended, account: &AccountId) -> Result<Extended, Error> {
    Ok(Extended {
        added: wire.added,
        held: wire.held,
        deadline_ms: wire.deadline,
        reservation: reservation(wire.reservation, account)?,
    })
}

pub fn released(wire: WireReleased, account: &AccountId) -> Result<Released, Error> {
    Ok(Released { returned: wire.returned, reservation: reservation(wire.reservation, account)? })
}

pub fn charged(wire: WireCharged, account: &AccountId) -> Result<Charged, Error> {
    Ok(Charged {
        reservation: wire.reservation.map(|seq| ReservationId { account: account.clone(), seq }),
        charged: wire.charged,
        already_charged: wire.already,
        available: wire.available,
    })
}

pub fn plan_set(wire: WirePlanSet, _: &AccountId) -> Result<PlanSet, Error> {
    Ok(PlanSet { cycle: Cycle { start_ms: wire.cs, end_ms: wire.ce }, totals: totals(wire.totals) })
}

pub fn granted(wire: WireGranted, _: &AccountId) -> Result<Granted, Error> {
    Ok(Granted { lot: wire.lot, expires_ms: wire.expires, totals: totals(wire.totals) })
}

pub fn user_view(wire: WireUser, _: &AccountId) -> Result<UserView, Error> {
    Ok(user(wire))
}

fn period(months: u32) -> Result<Period, Error> {
    wire::period(months).ok_or_else(|| corrupt(format!("plan period of {months} months")))
}

/// The account view and, if asked for, one user's view.
pub fn account(wire: WireAccount, account: &AccountId) -> Result<(AccountView, Option<UserView>), Error> {
    let plan = match wire.plan {
        Some(plan) => Some(Plan {
            period: period(plan.period)?,
            anchor_ms: plan.anchor,
            plan_credits: plan.plan,
            addon_credits: plan.addon,
        }),
        None => None,
    };
    let lots = wire
        .lots
        .into_iter()
        .map(|lot| {
            Ok(LotView {
                id: lot.id,
                kind: kind(&lot.kind)?,
                granted: lot.granted,
                remaining: lot.remaining,
                granted_ms: lot.granted_ms,
                expires_ms: lot.expires,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    // Sorted here, byte-wise like the model, rather than by Lua's locale-dependent comparison.
    let mut users: Vec<UserView> = wire.users.into_iter().map(user).collect();
    users.sort_by(|a, b| a.user.cmp(&b.user));
    let view = AccountView {
        id: account.clone(),
        plan,
        cycle: Cycle { start_ms: wire.cs, end_ms: wire.ce },
        totals: totals(wire.totals),
        lots,
        trial_used: wire.trial,
        users,
        open_reservations: wire.open,
    };
    Ok((view, wire.user.map(user)))
}

pub fn page(wire: WirePage, account: &AccountId) -> Result<(Vec<ReservationView>, Option<u64>), Error> {
    let page = wire.page.into_iter().map(|r| reservation(r, account)).collect::<Result<Vec<_>, Error>>()?;
    Ok((page, wire.next))
}
