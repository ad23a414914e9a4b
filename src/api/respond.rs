//! Ledger → protobuf: answers become responses (declines with their figures), the way back of
//! `convert`. Each handler is convert, call, respond.

use std::collections::BTreeMap;

use super::pb;
use crate::ledger::alerts::{Threshold, When};
use crate::ledger::command::Plan;
use crate::ledger::cycle::Cycle;
use crate::ledger::{
    AccountId, AccountView, Balance, CategoryView, Charged, CommitBatched, Committed, Decision, Decline, DeclineReason,
    DeclineScope, Extended, Granted, LotKind, LotView, Period, PlanSet, Quoted, Released, ReservationId,
    ReservationState, ReservationView, Reserved, Totals, UserView,
};
use crate::settle::store::{AlertRow, Delivery, LineItem, SettledReservation, UsageRow};

/// `unit`: the credits of one unit of the hold's cost (the SKU's price, or 1), for `quantity`.
pub fn reserved(decision: Decision<Reserved>, unit: i64) -> pb::ReserveResponse {
    let (outcome, decline) = outcome(&decision);
    let mut response = pb::ReserveResponse { outcome, decline, ..Default::default() };
    match decision {
        Decision::Done(reserved) => {
            response.reservation_id = reserved.reservation.to_string();
            response.amount = reserved.amount;
            response.quantity = reserved.amount / unit;
            response.deadline_unix_ms = reserved.deadline_ms;
            response.available = reserved.available;
        }
        Decision::Declined(decline) => {
            response.amount = decline.requested;
            response.available = decline.available;
        }
    }
    response
}

pub fn committed(decision: Decision<Committed>) -> pb::CommitResponse {
    let (outcome, decline) = outcome(&decision);
    let mut response = pb::CommitResponse { outcome, decline, ..Default::default() };
    match decision {
        Decision::Done(committed) => {
            response.charged = committed.charged;
            response.already_charged = committed.already_charged;
            response.held = committed.held;
            response.returned = committed.returned;
            response.reservation = Some(reservation(committed.reservation));
        }
        Decision::Declined(decline) => {
            response.held = decline.held;
            response.reservation = decline.reservation.map(|view| reservation(*view));
        }
    }
    response
}

/// A threshold as the API shows it.
pub fn threshold(threshold: &Threshold) -> pb::AlertThreshold {
    use pb::alert_threshold::When as Pb;
    let scoped = |id: &str, percent: &u32| pb::ScopedPercent { id: id.to_owned(), percent: *percent };
    let when = match &threshold.when {
        When::UsedPercent(percent) => Pb::UsedPercent(*percent),
        When::AvailableBelow(amount) => Pb::AvailableBelow(*amount),
        When::Depleted => Pb::Depleted(true),
        When::UserPercent { user, percent } => Pb::UserPercent(scoped(user.as_str(), percent)),
        When::CategoryPercent { category, percent } => Pb::CategoryPercent(scoped(category, percent)),
    };
    pb::AlertThreshold { threshold_id: threshold.id.clone(), when: Some(when) }
}

pub fn alert(alert: &AlertRow) -> pb::Alert {
    pb::Alert {
        event_id: alert.event_id(),
        account_id: alert.account.clone(),
        threshold: Some(threshold(&alert.threshold)),
        cycle_start_unix_ms: alert.cycle_start_ms,
        fired_unix_ms: alert.fired_ms,
        observed: alert.crossing.observed,
        base: alert.crossing.base,
        deliveries: Vec::new(),
    }
}

fn delivery(delivery: &Delivery) -> pb::WebhookDelivery {
    let state = match delivery.state.as_str() {
        "pending" => pb::DeliveryState::Pending,
        "delivered" => pb::DeliveryState::Delivered,
        "failed" => pb::DeliveryState::Failed,
        _ => pb::DeliveryState::Unspecified,
    };
    pb::WebhookDelivery {
        url: crate::alerts::origin(&delivery.url),
        state: state as i32,
        attempts: delivery.attempts,
        last_error: delivery.last_error.clone().unwrap_or_default(),
        next_attempt_unix_ms: if state == pb::DeliveryState::Pending { delivery.next_attempt_ms } else { 0 },
        delivered_unix_ms: delivery.delivered_ms.unwrap_or_default(),
    }
}

/// A page of alerts with their deliveries; the token names where it ended when it is full.
pub fn alerts(
    thresholds: &[Threshold],
    page: &[AlertRow],
    deliveries: &BTreeMap<String, Vec<Delivery>>,
    page_size: usize,
) -> pb::ListAlertsResponse {
    let next_page_token = match page.last() {
        Some(last) if page.len() == page_size => {
            format!("{}:{}:{}", last.fired_ms, last.cycle_start_ms, last.event_id())
        }
        _ => String::new(),
    };
    pb::ListAlertsResponse {
        thresholds: thresholds.iter().map(threshold).collect(),
        alerts: page
            .iter()
            .map(|row| {
                let sent = deliveries.get(&row.event_id()).map_or(&[][..], Vec::as_slice);
                pb::Alert { deliveries: sent.iter().map(delivery).collect(), ..alert(row) }
            })
            .collect(),
        next_page_token,
    }
}

/// A Commit written to the outage journal: nothing is known of its figures yet.
pub fn journaled() -> pb::CommitResponse {
    pb::CommitResponse { outcome: pb::Outcome::Journaled as i32, ..Default::default() }
}

/// A CommitBatch whose items were written to the outage journal: each answered JOURNALED.
pub fn batch_journaled(ids: Vec<String>) -> pb::CommitBatchResponse {
    let items = ids
        .into_iter()
        .map(|item_id| pb::CommitItemResult { item_id, outcome: pb::Outcome::Journaled as i32, ..Default::default() })
        .collect();
    pb::CommitBatchResponse { items, ..Default::default() }
}

/// A CommitBatch on a hold served during an outage that declined its new items (they did not
/// fit in what it holds, or it was closed): each item's decline, or JOURNALED for an item it
/// had taken before, and the hold as it stands.
pub fn batch_declined(ids: Vec<String>, answers: Vec<Option<Decline>>) -> pb::CommitBatchResponse {
    let reservation = answers.iter().flatten().next().and_then(|decline| decline.reservation.as_deref()).cloned();
    let items = ids
        .into_iter()
        .zip(&answers)
        .map(|(item_id, answer)| match answer {
            Some(declined) => pb::CommitItemResult {
                item_id,
                outcome: outcome_of(declined.reason) as i32,
                decline: Some(decline(declined)),
                held: declined.held,
                ..Default::default()
            },
            None => pb::CommitItemResult { item_id, outcome: pb::Outcome::Journaled as i32, ..Default::default() },
        })
        .collect();
    pb::CommitBatchResponse { items, reservation: reservation.map(self::reservation), ..Default::default() }
}

/// Each item's answer, as Commit's without the reservation view, then the reservation as the
/// batch left it.
pub fn committed_batch(ids: Vec<String>, batched: CommitBatched) -> pb::CommitBatchResponse {
    let mut response =
        pb::CommitBatchResponse { reservation: Some(reservation(batched.reservation)), ..Default::default() };
    for (item_id, decision) in ids.into_iter().zip(batched.items) {
        let (outcome, decline) = outcome(&decision);
        let mut item = pb::CommitItemResult { item_id, outcome, decline, ..Default::default() };
        match decision {
            Decision::Done(committed) => {
                (item.charged, item.already_charged, item.held) =
                    (committed.charged, committed.already_charged, committed.held);
            }
            Decision::Declined(decline) => item.held = decline.held,
        }
        response.charged += item.charged;
        response.items.push(item);
    }
    response
}

/// `unit`: as for [`reserved`], for `added_quantity`.
pub fn extended(decision: Decision<Extended>, unit: i64) -> pb::ExtendResponse {
    let (outcome, decline) = outcome(&decision);
    let mut response = pb::ExtendResponse { outcome, decline, ..Default::default() };
    match decision {
        Decision::Done(extended) => {
            response.added = extended.added;
            response.added_quantity = extended.added / unit;
            response.held = extended.held;
            response.deadline_unix_ms = extended.deadline_ms;
            response.reservation = Some(reservation(extended.reservation));
        }
        // The hold as it stands: a declined Extend leaves it unchanged, not empty.
        Decision::Declined(decline) => {
            if let Some(view) = decline.reservation {
                response.held = view.held;
                response.deadline_unix_ms = view.deadline_ms;
                response.reservation = Some(reservation(*view));
            }
        }
    }
    response
}

pub fn released(decision: Decision<Released>) -> pb::ReleaseResponse {
    let (outcome, decline) = outcome(&decision);
    let mut response = pb::ReleaseResponse { outcome, decline, ..Default::default() };
    match decision {
        Decision::Done(released) => {
            response.returned = released.returned;
            response.reservation = Some(reservation(released.reservation));
        }
        Decision::Declined(decline) => response.reservation = decline.reservation.map(|view| reservation(*view)),
    }
    response
}

pub fn charged(decision: Decision<Charged>) -> pb::ChargeResponse {
    let (outcome, decline) = outcome(&decision);
    let mut response = pb::ChargeResponse { outcome, decline, ..Default::default() };
    match decision {
        Decision::Done(charged) => {
            response.reservation_id = charged.reservation.map(|id| id.to_string()).unwrap_or_default();
            response.charged = charged.charged;
            response.already_charged = charged.already_charged;
            response.available = charged.available;
        }
        Decision::Declined(decline) => response.available = decline.available,
    }
    response
}

pub fn quoted(quoted: Quoted) -> pb::QuoteResponse {
    pb::QuoteResponse {
        fits: quoted.fits,
        outcome: quoted.decline.map_or(pb::Outcome::Ok, outcome_of) as i32,
        amount: quoted.amount,
        available: quoted.available,
        user_remaining: quoted.user_remaining,
        units_that_fit: quoted.units_that_fit,
        category_remaining: quoted.category_remaining,
    }
}

pub fn balance(balance: Balance) -> pb::GetBalanceResponse {
    let user = balance.user.unwrap_or_else(|| UserView { user: String::new(), limit: None, used: 0, remaining: None });
    pb::GetBalanceResponse {
        totals: Some(totals(balance.totals)),
        cycle: Some(cycle(balance.cycle)),
        user_limit: user.limit,
        user_used: user.used,
        user_remaining: user.remaining,
    }
}

pub fn plan_set(decision: Decision<PlanSet>) -> pb::SetPlanResponse {
    let (outcome, _) = outcome(&decision);
    let mut response = pb::SetPlanResponse { outcome, ..Default::default() };
    if let Decision::Done(set) = decision {
        response.cycle = Some(cycle(set.cycle));
        response.totals = Some(totals(set.totals));
    }
    response
}

/// The fields Grant and StartTrial answer with: the lot granted, its expiry, the totals after.
fn granted_lot(decision: &Decision<Granted>) -> (u64, i64, Option<pb::Totals>) {
    match decision {
        Decision::Done(granted) => (granted.lot, granted.expires_ms, Some(totals(granted.totals))),
        Decision::Declined(_) => (0, 0, None),
    }
}

pub fn granted(decision: Decision<Granted>) -> pb::GrantResponse {
    let (outcome, _) = outcome(&decision);
    let (lot_id, expires_unix_ms, totals) = granted_lot(&decision);
    pb::GrantResponse { outcome, lot_id, expires_unix_ms, totals }
}

pub fn trial_started(decision: Decision<Granted>) -> pb::StartTrialResponse {
    let (outcome, decline) = outcome(&decision);
    let (lot_id, expires_unix_ms, totals) = granted_lot(&decision);
    pb::StartTrialResponse { outcome, decline, lot_id, expires_unix_ms, totals }
}

pub fn user_limit_set(decision: Decision<UserView>) -> pb::SetUserLimitResponse {
    let (outcome, _) = outcome(&decision);
    let mut response = pb::SetUserLimitResponse { outcome, ..Default::default() };
    if let Decision::Done(user) = decision {
        response.limit = user.limit;
        response.used = user.used;
        response.remaining = user.remaining;
    }
    response
}

pub fn category_budget_set(decision: Decision<CategoryView>) -> pb::SetCategoryBudgetResponse {
    let (outcome, _) = outcome(&decision);
    let mut response = pb::SetCategoryBudgetResponse { outcome, ..Default::default() };
    if let Decision::Done(category) = decision {
        response.budget = category.budget;
        response.used = category.used;
        response.remaining = category.remaining;
    }
    response
}

pub fn category_budget(view: CategoryView) -> pb::CategoryBudget {
    pb::CategoryBudget { category: view.category, budget: view.budget, used: view.used, remaining: view.remaining }
}

pub fn account(view: AccountView) -> pb::GetAccountResponse {
    pb::GetAccountResponse {
        account_id: view.id.to_string(),
        plan: view.plan.map(plan),
        cycle: Some(cycle(view.cycle)),
        totals: Some(totals(view.totals)),
        lots: view.lots.into_iter().map(lot).collect(),
        trial_used: view.trial_used,
        user_limits: view.users.into_iter().map(user_limit).collect(),
        open_reservations: view.open_reservations,
        category_budgets: view.categories.into_iter().map(category_budget).collect(),
    }
}

fn outcome_of(reason: DeclineReason) -> pb::Outcome {
    match reason {
        DeclineReason::InsufficientCredit => pb::Outcome::InsufficientCredit,
        DeclineReason::UserLimitReached => pb::Outcome::UserLimitReached,
        DeclineReason::ReservationExpired => pb::Outcome::ReservationExpired,
        DeclineReason::ReservationClosed => pb::Outcome::ReservationClosed,
        DeclineReason::ExceedsHold => pb::Outcome::ExceedsHold,
        DeclineReason::TrialAlreadyUsed => pb::Outcome::TrialAlreadyUsed,
        DeclineReason::CategoryBudgetReached => pb::Outcome::CategoryBudgetReached,
    }
}

/// The outcome of a decision and, for a decline, its figures.
fn outcome<T>(decision: &Decision<T>) -> (i32, Option<pb::Decline>) {
    match decision {
        Decision::Done(_) => (pb::Outcome::Ok as i32, None),
        Decision::Declined(decline) => (outcome_of(decline.reason) as i32, Some(self::decline(decline))),
    }
}

fn decline(decline: &Decline) -> pb::Decline {
    let scope = match decline.reason.scope() {
        DeclineScope::Account => pb::Scope::Account,
        DeclineScope::User => pb::Scope::User,
        DeclineScope::Reservation => pb::Scope::Reservation,
        DeclineScope::Category => pb::Scope::Category,
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
        category_remaining: decline.category_remaining,
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
        owed: totals.owed,
    }
}

pub fn cycle(cycle: Cycle) -> pb::Cycle {
    pb::Cycle { start_unix_ms: cycle.start_ms, end_unix_ms: cycle.end_ms }
}

pub fn lot_kind(kind: LotKind) -> pb::LotKind {
    match kind {
        LotKind::Plan => pb::LotKind::Plan,
        LotKind::Addon => pb::LotKind::Addon,
        LotKind::Trial => pb::LotKind::Trial,
        LotKind::Promo => pb::LotKind::Promo,
        LotKind::Adjustment => pb::LotKind::Adjustment,
    }
}

pub fn lot(lot: LotView) -> pb::Lot {
    pb::Lot {
        lot_id: lot.id,
        kind: lot_kind(lot.kind) as i32,
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

/// A page of reservations from the engine.
pub fn page((views, next): (Vec<ReservationView>, Option<u64>)) -> pb::ListReservationsResponse {
    pb::ListReservationsResponse {
        reservations: views.into_iter().map(reservation).collect(),
        next_page_token: next.map(|seq| seq.to_string()).unwrap_or_default(),
    }
}

/// A page of settled reservations from the durable ledger; a full page has a next one.
pub fn settled_page(
    account: &AccountId,
    rows: Vec<SettledReservation>,
    page_size: usize,
) -> pb::ListReservationsResponse {
    let next = (rows.len() == page_size).then(|| rows.last().map(|row| row.seq.to_string())).flatten();
    pb::ListReservationsResponse {
        reservations: rows.into_iter().map(|row| settled_reservation(account, row)).collect(),
        next_page_token: next.unwrap_or_default(),
    }
}

fn settled_reservation(account: &AccountId, row: SettledReservation) -> pb::Reservation {
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

/// `budgets`: the category budgets in force, shown beside what each category spent.
pub fn usage(
    rows: Vec<UsageRow>,
    line_items: Vec<LineItem>,
    budgets: std::collections::BTreeMap<String, i64>,
) -> pb::GetUsageResponse {
    let mut response = pb::GetUsageResponse { budget_by_category: budgets.into_iter().collect(), ..Default::default() };
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
