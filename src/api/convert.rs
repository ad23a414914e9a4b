//! Protobuf ⇄ ledger. Requests become validated commands (bad input is refused here, naming
//! the field, before any engine sees it); answers become responses.

use std::collections::HashMap;

use super::pb;
use crate::ledger::command::{self, Plan};
use crate::ledger::cycle::Cycle;
use crate::ledger::{
    AccountId, BusinessKey, CostInput, Decision, Decline, DeclineReason, Error, Labels, LotKind, LotView, Period,
    RequestId, ReservationId, ReservationState, ReservationView, Rules, Scope, Totals, UserId, UserView, check_amount,
    check_instant,
};

type Result<T> = std::result::Result<T, Error>;

fn cost(cost: Option<pb::Cost>) -> CostInput {
    match cost.and_then(|cost| cost.cost) {
        None => CostInput::Missing,
        Some(pb::cost::Cost::Amount(amount)) => CostInput::Amount(amount),
        Some(pb::cost::Cost::Sku(sku)) => CostInput::Sku { sku: sku.sku, quantity: sku.quantity },
    }
}

fn labels(labels: HashMap<String, String>) -> Result<Labels> {
    Labels::parse(labels)
}

/// An optional user: empty means none.
pub fn optional_user(user: &str) -> Result<Option<UserId>> {
    if user.is_empty() { Ok(None) } else { UserId::parse(user).map(Some) }
}

pub fn reserve(request: pb::ReserveRequest, rules: &Rules) -> Result<command::Reserve> {
    Ok(command::Reserve {
        account: AccountId::parse(&request.account_id)?,
        user: UserId::parse(&request.user_id)?,
        category: rules.category(&request.category)?,
        amount: rules.price(&cost(request.cost), false)?.amount,
        ttl_ms: rules.ttl(request.ttl_ms)?,
        request: RequestId::parse(&request.request_id)?,
        labels: labels(request.labels)?,
    })
}

pub fn commit(request: pb::CommitRequest, rules: &Rules) -> Result<command::Commit> {
    Ok(command::Commit {
        reservation: ReservationId::parse(&request.reservation_id)?,
        amount: rules.price(&cost(request.cost), true)?.amount,
        final_commit: request.r#final,
        request: RequestId::parse(&request.request_id)?,
        business_key: BusinessKey::parse_optional(&request.business_key)?,
        labels: labels(request.labels)?,
    })
}

pub fn extend(request: pb::ExtendRequest, rules: &Rules) -> Result<command::Extend> {
    let reservation = ReservationId::parse(&request.reservation_id)?;
    let amount = match request.cost {
        None => 0,
        some => rules.price(&cost(some), false)?.amount,
    };
    let ttl_ms = rules.extend_ttl(request.ttl_ms)?;
    if amount == 0 && ttl_ms.is_none() {
        return Err(Error::invalid("cost", "give extra credits (cost) or a new deadline (ttl_ms), or both"));
    }
    Ok(command::Extend { reservation, amount, ttl_ms, request: RequestId::parse(&request.request_id)? })
}

pub fn release(request: pb::ReleaseRequest) -> Result<command::Release> {
    Ok(command::Release {
        reservation: ReservationId::parse(&request.reservation_id)?,
        request: RequestId::parse(&request.request_id)?,
    })
}

pub fn charge(request: pb::ChargeRequest, rules: &Rules) -> Result<command::Charge> {
    Ok(command::Charge {
        account: AccountId::parse(&request.account_id)?,
        user: UserId::parse(&request.user_id)?,
        category: rules.category(&request.category)?,
        amount: rules.price(&cost(request.cost), false)?.amount,
        request: RequestId::parse(&request.request_id)?,
        business_key: BusinessKey::parse_optional(&request.business_key)?,
        labels: labels(request.labels)?,
    })
}

pub fn quote(request: pb::QuoteRequest, rules: &Rules) -> Result<command::Quote> {
    let account = AccountId::parse(&request.account_id)?;
    let user = optional_user(&request.user_id)?;
    if !request.category.is_empty() {
        rules.category(&request.category)?;
    }
    let priced = rules.price(&cost(request.cost), false)?;
    Ok(command::Quote { account, user, amount: priced.amount, unit: priced.unit })
}

fn period(value: i32) -> Result<Period> {
    match pb::Period::try_from(value) {
        Ok(pb::Period::Monthly) => Ok(Period::Monthly),
        Ok(pb::Period::Quarterly) => Ok(Period::Quarterly),
        Ok(pb::Period::Semiannual) => Ok(Period::Semiannual),
        Ok(pb::Period::Annual) => Ok(Period::Annual),
        Ok(pb::Period::Unspecified) | Err(_) => {
            Err(Error::invalid("period", "must be MONTHLY, QUARTERLY, SEMIANNUAL or ANNUAL"))
        }
    }
}

pub fn set_plan(request: pb::SetPlanRequest) -> Result<command::SetPlan> {
    Ok(command::SetPlan {
        account: AccountId::parse(&request.account_id)?,
        plan: Plan {
            period: period(request.period)?,
            anchor_ms: check_instant("anchor_unix_ms", request.anchor_unix_ms)?,
            plan_credits: check_amount("plan_credits", request.plan_credits, true)?,
            addon_credits: check_amount("addon_credits", request.addon_credits, true)?,
        },
        request: RequestId::parse(&request.request_id)?,
    })
}

pub fn grant(request: pb::GrantRequest) -> Result<command::Grant> {
    let kind = match pb::LotKind::try_from(request.kind) {
        Ok(pb::LotKind::Addon) => LotKind::Addon,
        Ok(pb::LotKind::Promo) => LotKind::Promo,
        Ok(pb::LotKind::Adjustment) => LotKind::Adjustment,
        Ok(pb::LotKind::Unspecified | pb::LotKind::Plan | pb::LotKind::Trial) | Err(_) => {
            return Err(Error::invalid("kind", "must be ADDON, PROMO or ADJUSTMENT"));
        }
    };
    let expires_ms = match request.expires_unix_ms {
        0 => None,
        at => Some(check_instant("expires_unix_ms", at)?),
    };
    Ok(command::Grant {
        account: AccountId::parse(&request.account_id)?,
        kind,
        amount: check_amount("amount", request.amount, false)?,
        expires_ms,
        request: RequestId::parse(&request.request_id)?,
        create_account: request.create_account,
    })
}

pub fn start_trial(request: pb::StartTrialRequest, rules: &Rules) -> Result<command::StartTrial> {
    let account = AccountId::parse(&request.account_id)?;
    let (credits, duration_ms) = rules.trial(request.credits, request.duration_ms)?;
    let request_id = RequestId::parse(&request.request_id)?;
    Ok(command::StartTrial {
        account,
        credits,
        duration_ms,
        request: request_id,
        create_account: request.create_account,
    })
}

pub fn set_user_limit(request: pb::SetUserLimitRequest) -> Result<command::SetUserLimit> {
    Ok(command::SetUserLimit {
        account: AccountId::parse(&request.account_id)?,
        user: UserId::parse(&request.user_id)?,
        limit: request.limit.map(|limit| check_amount("limit", limit, true)).transpose()?,
        request: RequestId::parse(&request.request_id)?,
    })
}

/// A state filter: UNSPECIFIED means all states.
pub fn state_filter(value: i32) -> Result<Option<ReservationState>> {
    match pb::ReservationState::try_from(value) {
        Ok(pb::ReservationState::Unspecified) => Ok(None),
        Ok(pb::ReservationState::Held) => Ok(Some(ReservationState::Held)),
        Ok(pb::ReservationState::Committed) => Ok(Some(ReservationState::Committed)),
        Ok(pb::ReservationState::Released) => Ok(Some(ReservationState::Released)),
        Ok(pb::ReservationState::Expired) => Ok(Some(ReservationState::Expired)),
        Err(_) => Err(Error::invalid("state", format!("unknown reservation state {value}"))),
    }
}

// ---- answers -------------------------------------------------------------------------------

fn outcome_of(reason: DeclineReason) -> pb::Outcome {
    match reason {
        DeclineReason::InsufficientCredit => pb::Outcome::InsufficientCredit,
        DeclineReason::UserLimitReached => pb::Outcome::UserLimitReached,
        DeclineReason::ReservationExpired => pb::Outcome::ReservationExpired,
        DeclineReason::ReservationClosed => pb::Outcome::ReservationClosed,
        DeclineReason::ExceedsHold => pb::Outcome::ExceedsHold,
        DeclineReason::TrialAlreadyUsed => pb::Outcome::TrialAlreadyUsed,
    }
}

/// The outcome of a decision and, for a decline, its figures.
pub fn outcome<T>(decision: &Decision<T>) -> (i32, Option<pb::Decline>) {
    match decision {
        Decision::Done(_) => (pb::Outcome::Ok as i32, None),
        Decision::Declined(decline) => (outcome_of(decline.reason) as i32, Some(self::decline(decline))),
    }
}

pub fn quote_outcome(reason: Option<DeclineReason>) -> i32 {
    reason.map_or(pb::Outcome::Ok, outcome_of) as i32
}

fn decline(decline: &Decline) -> pb::Decline {
    let scope = match decline.reason.scope() {
        Scope::Account => pb::Scope::Account,
        Scope::User => pb::Scope::User,
        Scope::Reservation => pb::Scope::Reservation,
    };
    pb::Decline {
        scope: scope as i32,
        requested: decline.requested,
        available: decline.available,
        user_remaining: decline.user_remaining,
        held: decline.held,
        reservation_state: decline.reservation_state.map_or(0, |state| self::state(state) as i32),
        message: decline.message(),
        scope_id: decline.scope_id(),
    }
}

pub fn state(state: ReservationState) -> pb::ReservationState {
    match state {
        ReservationState::Held => pb::ReservationState::Held,
        ReservationState::Committed => pb::ReservationState::Committed,
        ReservationState::Released => pb::ReservationState::Released,
        ReservationState::Expired => pb::ReservationState::Expired,
    }
}

pub fn reservation(view: ReservationView) -> pb::Reservation {
    pb::Reservation {
        reservation_id: view.id.to_string(),
        account_id: view.id.account.to_string(),
        user_id: view.user,
        category: view.category,
        state: state(view.state) as i32,
        reserved: view.reserved,
        committed: view.committed,
        held: view.held,
        returned: view.returned,
        commit_count: view.commit_count,
        created_unix_ms: view.created_ms,
        deadline_unix_ms: view.deadline_ms,
        closed_unix_ms: view.closed_ms.unwrap_or(0),
        labels: view.labels.into_iter().collect(),
    }
}

pub fn totals(totals: Totals) -> pb::Totals {
    pb::Totals {
        granted: totals.granted,
        available: totals.available,
        held: totals.held,
        spent: totals.spent,
        expired: totals.expired,
    }
}

pub fn cycle(cycle: Cycle) -> pb::Cycle {
    pb::Cycle { start_unix_ms: cycle.start_ms, end_unix_ms: cycle.end_ms }
}

pub fn lot(lot: LotView) -> pb::Lot {
    let kind = match lot.kind {
        LotKind::Plan => pb::LotKind::Plan,
        LotKind::Addon => pb::LotKind::Addon,
        LotKind::Trial => pb::LotKind::Trial,
        LotKind::Promo => pb::LotKind::Promo,
        LotKind::Adjustment => pb::LotKind::Adjustment,
    };
    pb::Lot {
        lot_id: lot.id,
        kind: kind as i32,
        granted: lot.granted,
        remaining: lot.remaining,
        granted_unix_ms: lot.granted_ms,
        expires_unix_ms: lot.expires_ms,
    }
}

pub fn user_limit(view: UserView) -> pb::UserLimit {
    pb::UserLimit { user_id: view.user, limit: view.limit, used: view.used, remaining: view.remaining }
}

pub fn plan(plan: Plan) -> pb::Plan {
    let period = match plan.period {
        Period::Monthly => pb::Period::Monthly,
        Period::Quarterly => pb::Period::Quarterly,
        Period::Semiannual => pb::Period::Semiannual,
        Period::Annual => pb::Period::Annual,
    };
    pb::Plan {
        period: period as i32,
        anchor_unix_ms: plan.anchor_ms,
        plan_credits: plan.plan_credits,
        addon_credits: plan.addon_credits,
    }
}

pub fn settled_reservation(account: &AccountId, row: crate::settle::store::SettledReservation) -> pb::Reservation {
    let state = crate::ledger::wire::state(&row.state).map_or(pb::ReservationState::Unspecified, state);
    let held = if row.closed_ms.is_some() { 0 } else { row.reserved - row.committed - row.returned };
    pb::Reservation {
        reservation_id: ReservationId { account: account.clone(), seq: row.seq }.to_string(),
        account_id: account.to_string(),
        user_id: row.user,
        category: row.category,
        state: state as i32,
        reserved: row.reserved,
        committed: row.committed,
        held,
        returned: row.returned,
        commit_count: row.commit_count,
        created_unix_ms: row.created_ms,
        deadline_unix_ms: row.deadline_ms,
        closed_unix_ms: row.closed_ms.unwrap_or(0),
        labels: row.labels.into_iter().collect(),
    }
}

pub fn usage(
    rows: Vec<crate::settle::store::UsageRow>,
    line_items: Vec<crate::settle::store::LineItem>,
) -> pb::GetUsageResponse {
    let mut response = pb::GetUsageResponse::default();
    for row in rows {
        response.spent += row.spent;
        *response.spent_by_category.entry(row.category.clone()).or_default() += row.spent;
        *response.spent_by_user.entry(row.user.clone()).or_default() += row.spent;
        response.totals.push(pb::UsageTotal {
            cycle_start_unix_ms: row.cycle_start_ms,
            user_id: row.user,
            category: row.category,
            spent: row.spent,
            commits: row.commits,
        });
    }
    response.line_items = line_items
        .into_iter()
        .map(|item| pb::LineItem {
            at_unix_ms: item.at_ms,
            amount: item.amount,
            business_key: item.business_key.unwrap_or_default(),
            already_charged: item.already_charged,
            labels: item.labels.into_iter().collect(),
            request_id: item.request_id.unwrap_or_default(),
        })
        .collect();
    response
}
