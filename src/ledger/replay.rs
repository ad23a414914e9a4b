//! Rebuilding state from the durable record: applies events, in each account's sequence order,
//! to accounts — fresh ones, or ones restored from snapshots. `verify` and `rebuild` replay an
//! account's whole history this way; the embedded engine replays the events after each
//! account's snapshot (`Ledger::restore_durable`).
//!
//! Replay re-applies the recorded effects (the lots each hold drew, what each close returned);
//! it never re-decides. Remembered answers to request ids are not in the events: the embedded
//! engine keeps them apart (`durable`); `rebuild` does not restore them, so a retry of a request
//! made before a Redis loss is executed afresh.

use std::collections::HashMap;

use super::account::{Account, OutageSpend, Reservation, Sink};
use super::event::{Draw, Event, EventKind, draws_total};
use super::types::{AccountId, Category, Labels, LotKind, Millis, RequestId, ReservationState, UserId};

#[derive(Debug, thiserror::Error)]
#[error("event {account}/{seq} cannot be replayed: {reason}")]
pub struct ReplayError {
    /// The account as recorded (it may be the invalid part).
    pub account: String,
    pub seq: u64,
    pub reason: String,
}

/// Accounts rebuilt from their events. Events must come in sequence order per account,
/// without gaps; accounts may interleave.
pub(super) fn accounts(events: impl IntoIterator<Item = Event>) -> Result<HashMap<AccountId, Account>, ReplayError> {
    let mut accounts: HashMap<AccountId, Account> = HashMap::new();
    onto(&mut accounts, events)?;
    Ok(accounts)
}

/// Applies events to `accounts` (e.g. restored from snapshots), each account's next event
/// following its last one; an account not there starts fresh.
pub(super) fn onto(
    accounts: &mut HashMap<AccountId, Account>,
    events: impl IntoIterator<Item = Event>,
) -> Result<(), ReplayError> {
    let mut discard = Vec::new();
    for event in events {
        let account =
            accounts.entry(event.account.clone()).or_insert_with(|| Account::new(event.account.clone(), event.at_ms));
        let fail = |reason: String| ReplayError { account: event.account.to_string(), seq: event.seq, reason };
        if event.seq != account.last_event + 1 {
            return Err(fail(format!("expected seq {}", account.last_event + 1)));
        }
        apply(account, &event, &mut Sink { out: &mut discard, request: None }).map_err(fail)?;
        account.last_event = event.seq;
        discard.clear();
    }
    Ok(())
}

fn take_from_lots(account: &mut Account, draws: &[Draw]) -> Result<(), String> {
    for draw in draws {
        let lot = account.lots.get_mut(&draw.lot).ok_or_else(|| format!("draw from unknown lot {}", draw.lot))?;
        if lot.remaining < draw.amount {
            return Err(format!("lot {} has {} < {}", draw.lot, lot.remaining, draw.amount));
        }
        lot.remaining -= draw.amount;
    }
    Ok(())
}

fn apply(account: &mut Account, event: &Event, sink: &mut Sink<'_>) -> Result<(), String> {
    match &event.kind {
        EventKind::PlanSet { plan, .. } => account.plan = Some(plan.clone()),
        EventKind::CycleStarted { cycle } => {
            // The plan's lots follow as their own events.
            let plan = account.plan.take();
            account.start_cycle(sink, *cycle);
            account.plan = plan;
        }
        EventKind::LotGranted { lot, kind, amount, expires_ms, from_plan } => {
            account.last_lot = account.last_lot.max(lot - 1);
            let id = account.grant(sink, *kind, *amount, event.at_ms, *expires_ms, *from_plan);
            if id != *lot {
                return Err(format!("lot {lot} granted out of order"));
            }
            match (kind, from_plan) {
                (LotKind::Plan, true) => account.cycle_plan_granted += amount,
                (LotKind::Addon, true) => account.cycle_addon_granted += amount,
                (LotKind::Trial, _) => account.trial_used = true,
                _ => {}
            }
        }
        EventKind::LotExpired { lot, .. } => {
            if !account.lots.contains_key(lot) {
                return Err(format!("unknown lot {lot} expired"));
            }
            account.expire_lot(sink, *lot, event.at_ms);
        }
        EventKind::UserLimitSet { user, limit } => {
            let user = UserId::parse(user).map_err(|error| error.to_string())?;
            account.users.entry(user).or_default().limit = *limit;
        }
        EventKind::CategoryBudgetSet { category, budget } => {
            account.categories.entry(Category(category.clone())).or_default().limit = *budget;
        }
        EventKind::Reserved { reservation, user, category, amount, draws, deadline_ms, labels } => {
            take_from_lots(account, draws)?;
            let opened_by = event.request_id.as_deref().map(RequestId::parse).transpose().map_err(|e| e.to_string())?;
            account.last_reservation = account.last_reservation.max(*reservation);
            account.reservations.insert(
                *reservation,
                Reservation {
                    user: UserId::parse(user).map_err(|error| error.to_string())?,
                    category: Category(category.clone()),
                    state: ReservationState::Held,
                    reserved: *amount,
                    committed: 0,
                    draws: draws.clone(),
                    returned: 0,
                    commit_count: 0,
                    created_ms: event.at_ms,
                    deadline_ms: *deadline_ms,
                    closed_ms: None,
                    labels: Labels::parse(labels.clone()).map_err(|error| error.to_string())?,
                    opened_by,
                    requests: HashMap::new(),
                    usage_generation: account.cycle_generation,
                    usage_counted: 0,
                },
            );
            account.deadlines.insert((*deadline_ms, *reservation));
            account.held += amount;
            account.count_usage(*reservation, *amount);
        }
        EventKind::Extended { reservation, amount, draws, deadline_ms } => {
            take_from_lots(account, draws)?;
            let held = account.reservations.get_mut(reservation).ok_or("extend of an unknown reservation")?;
            let old_deadline = held.deadline_ms;
            held.deadline_ms = *deadline_ms;
            held.reserved += amount;
            super::model::merge_draws(&mut held.draws, draws);
            account.deadlines.remove(&(old_deadline, *reservation));
            account.deadlines.insert((*deadline_ms, *reservation));
            account.held += amount;
            account.count_usage(*reservation, *amount);
        }
        EventKind::Committed { reservation, amount, draws, business_key, already_charged, .. } => {
            let key = if *already_charged { None } else { business_key.as_deref() };
            commit(account, *reservation, *amount, draws, key)?;
        }
        EventKind::Closed { reservation, state, returned, expired } => {
            close(account, *reservation, *state, returned, *expired, event.at_ms)?;
        }
        EventKind::Overdrawn { .. } => overdrawn(account, event, sink)?,
        // `grant` (its lot_granted event, just before) repaid the same from the same owed
        // figure; the record must agree.
        EventKind::Repaid { lot, amount } => {
            let repaid = account.lots.get(lot).map(|lot| lot.granted - lot.remaining);
            if repaid != Some(*amount) {
                return Err(format!("lot {lot} repaid {amount} in the record, {repaid:?} replayed"));
            }
        }
    }
    Ok(())
}

/// An outage charge's part that no lot covered: spent, and owed.
fn overdrawn(account: &mut Account, event: &Event, sink: &mut Sink<'_>) -> Result<(), String> {
    let EventKind::Overdrawn { reservation, user, category, amount, business_key, labels, .. } = &event.kind else {
        return Err("not an overdraft".into());
    };
    let user = UserId::parse(user).map_err(|error| error.to_string())?;
    let category = Category(category.clone());
    let labels = Labels::parse(labels.clone()).map_err(|error| error.to_string())?;
    let key = business_key
        .as_deref()
        .map(super::types::BusinessKey::parse_optional)
        .transpose()
        .map_err(|e| e.to_string())?
        .flatten();
    let spend =
        OutageSpend { user: &user, category: &category, amount: *amount, business_key: key.as_ref(), labels: &labels };
    account.overdraw(sink, event.at_ms, *reservation, spend);
    account.charged_keys.extend(key);
    Ok(())
}

/// A commit of `amount` from the reservation's `draws`; `charged_key`: the business key it
/// charged (None when it had none, or the key was already charged).
fn commit(
    account: &mut Account,
    reservation: u64,
    amount: i64,
    draws: &[Draw],
    charged_key: Option<&str>,
) -> Result<(), String> {
    let held = account.reservations.get_mut(&reservation).ok_or("commit on an unknown reservation")?;
    for draw in draws {
        let part = held.draws.iter_mut().find(|part| part.lot == draw.lot).ok_or("commit from a lot not held")?;
        part.amount -= draw.amount;
    }
    held.draws.retain(|part| part.amount > 0);
    held.committed += amount;
    held.commit_count += 1;
    account.held -= amount;
    account.spent += amount;
    if let Some(key) = charged_key {
        let key = super::types::BusinessKey::parse_optional(key).map_err(|e| e.to_string())?;
        account.charged_keys.extend(key);
    }
    Ok(())
}

/// The reservation closed at `at_ms` in `state`: `returned` went back to its lots, `expired`
/// counts as expired.
fn close(
    account: &mut Account,
    reservation: u64,
    state: ReservationState,
    returned: &[Draw],
    expired: i64,
    at_ms: Millis,
) -> Result<(), String> {
    let held = account.reservations.get_mut(&reservation).ok_or("close of an unknown reservation")?;
    let total = draws_total(&std::mem::take(&mut held.draws));
    if total != draws_total(returned) + expired {
        return Err(format!("close releases {total}, record says {}", draws_total(returned) + expired));
    }
    held.state = state;
    held.returned = total;
    held.closed_ms = Some(at_ms);
    let deadline = held.deadline_ms;
    account.deadlines.remove(&(deadline, reservation));
    for draw in returned {
        let lot = account.lots.get_mut(&draw.lot).ok_or("return to an unknown lot")?;
        lot.remaining += draw.amount;
    }
    account.held -= total;
    account.expired += expired;
    account.uncount_usage(reservation, total);
    Ok(())
}
