//! Protobuf → ledger: requests become validated commands (bad input is refused here, naming the
//! field, before any engine sees it). The way back is `respond`.

use std::collections::HashMap;

use super::pb;
use crate::ledger::alerts::{THRESHOLDS_MAX, Threshold, When};
use crate::ledger::command::{self, COMMIT_BATCH_MAX, Partial, Plan};
use crate::ledger::model::{LIST_PAGE_DEFAULT, LIST_PAGE_MAX};
use crate::ledger::{
    AccountId, BusinessKey, CostInput, Error, Labels, LotKind, Period, RequestId, ReservationId, ReservationState,
    Rules, UserId, Zero, check_amount, check_instant,
};
use crate::settle::store::AlertCursor;

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

/// A hold's cost priced out, and its unit: the SKU's price, or one credit for a raw amount
/// (what `quantity` and `min_quantity` count).
fn hold_cost(cost: CostInput, rules: &Rules) -> Result<(i64, i64)> {
    let priced = rules.price(&cost, Zero::Refused)?;
    let unit = if matches!(cost, CostInput::Sku { .. }) { priced.unit } else { 1 };
    Ok((priced.amount, unit))
}

/// `min_quantity`: 0 for all or nothing, else a partial hold of at least that many units.
fn partial(min_quantity: i64, amount: i64, unit: i64) -> Result<Option<Partial>> {
    if min_quantity == 0 {
        return Ok(None);
    }
    let most = amount / unit;
    if !(1..=most).contains(&min_quantity) {
        return Err(Error::invalid(
            "min_quantity",
            format!("must be 0 (all or nothing) or in 1..={most} (the quantity asked for), got {min_quantity}"),
        ));
    }
    Ok(Some(Partial { unit, min_units: min_quantity }))
}

/// A Reserve, and the unit its answer's `quantity` counts.
pub fn reserve(request: pb::ReserveRequest, rules: &Rules) -> Result<(command::Reserve, i64)> {
    let (amount, unit) = hold_cost(cost(request.cost), rules)?;
    let reserve = command::Reserve {
        account: AccountId::parse(&request.account_id)?,
        user: UserId::parse(&request.user_id)?,
        category: rules.category(&request.category)?,
        amount,
        ttl_ms: rules.ttl(request.ttl_ms)?,
        request: RequestId::parse(&request.request_id)?,
        labels: labels(request.labels)?,
        partial: partial(request.min_quantity, amount, unit)?,
    };
    Ok((reserve, unit))
}

pub fn commit_batch(request: pb::CommitBatchRequest, rules: &Rules) -> Result<command::CommitBatch> {
    let reservation = ReservationId::parse(&request.reservation_id)?;
    if !(1..=COMMIT_BATCH_MAX).contains(&request.items.len()) {
        return Err(Error::invalid(
            "items",
            format!("must hold 1..={COMMIT_BATCH_MAX} items, got {}", request.items.len()),
        ));
    }
    let mut seen = HashMap::with_capacity(request.items.len());
    let mut items = Vec::with_capacity(request.items.len());
    for (index, item) in request.items.into_iter().enumerate() {
        let in_item = |error: Error| match error {
            Error::InvalidArgument { field, reason } => {
                Error::InvalidArgument { field: format!("items[{index}].{field}"), reason }
            }
            other => other,
        };
        let id = RequestId::parse(&item.item_id).map_err(|error| match error {
            Error::InvalidArgument { reason, .. } => Error::invalid(&format!("items[{index}].item_id"), reason),
            other => other,
        })?;
        if let Some(first) = seen.insert(item.item_id, index) {
            return Err(Error::invalid(&format!("items[{index}].item_id"), format!("repeats items[{first}]'s")));
        }
        items.push(command::CommitItem {
            id,
            amount: rules.price(&cost(item.cost), Zero::Allowed).map_err(in_item)?.amount,
            business_key: BusinessKey::parse_optional(&item.business_key).map_err(in_item)?,
            labels: labels(item.labels).map_err(in_item)?,
        });
    }
    Ok(command::CommitBatch { reservation, items })
}

pub fn commit(request: pb::CommitRequest, rules: &Rules) -> Result<command::Commit> {
    Ok(command::Commit {
        reservation: ReservationId::parse(&request.reservation_id)?,
        amount: rules.price(&cost(request.cost), Zero::Allowed)?.amount,
        final_commit: request.r#final,
        request: RequestId::parse(&request.request_id)?,
        business_key: BusinessKey::parse_optional(&request.business_key)?,
        labels: labels(request.labels)?,
    })
}

/// An Extend, and the unit its answer's `added_quantity` counts.
pub fn extend(request: pb::ExtendRequest, rules: &Rules) -> Result<(command::Extend, i64)> {
    let reservation = ReservationId::parse(&request.reservation_id)?;
    let (amount, unit) = match request.cost {
        None => (0, 1),
        some => hold_cost(cost(some), rules)?,
    };
    let ttl_ms = rules.extend_ttl(request.ttl_ms)?;
    if amount == 0 && ttl_ms.is_none() {
        return Err(Error::invalid("cost", "give extra credits (cost) or a new deadline (ttl_ms), or both"));
    }
    if amount == 0 && request.min_quantity != 0 {
        return Err(Error::invalid("min_quantity", "a partial extension needs a cost to take units of"));
    }
    let partial = partial(request.min_quantity, amount, unit)?;
    let extend =
        command::Extend { reservation, amount, ttl_ms, request: RequestId::parse(&request.request_id)?, partial };
    Ok((extend, unit))
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
        amount: rules.price(&cost(request.cost), Zero::Refused)?.amount,
        request: RequestId::parse(&request.request_id)?,
        business_key: BusinessKey::parse_optional(&request.business_key)?,
        labels: labels(request.labels)?,
        // A caller's Charge is checked like any other; only the outage journal overdraws.
        overdraft: false,
    })
}

pub fn quote(request: pb::QuoteRequest, rules: &Rules) -> Result<command::Quote> {
    let account = AccountId::parse(&request.account_id)?;
    let user = optional_user(&request.user_id)?;
    let category = if request.category.is_empty() { None } else { Some(rules.category(&request.category)?) };
    let priced = rules.price(&cost(request.cost), Zero::Refused)?;
    Ok(command::Quote { account, user, category, amount: priced.amount, unit: priced.unit })
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
            plan_credits: check_amount("plan_credits", request.plan_credits, Zero::Allowed)?,
            addon_credits: check_amount("addon_credits", request.addon_credits, Zero::Allowed)?,
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
        amount: check_amount("amount", request.amount, Zero::Refused)?,
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

pub fn set_category_budget(request: pb::SetCategoryBudgetRequest, rules: &Rules) -> Result<command::SetCategoryBudget> {
    Ok(command::SetCategoryBudget {
        account: AccountId::parse(&request.account_id)?,
        category: rules.category(&request.category)?,
        budget: request.budget.map(|budget| check_amount("budget", budget, Zero::Allowed)).transpose()?,
        request: RequestId::parse(&request.request_id)?,
    })
}

pub fn set_user_limit(request: pb::SetUserLimitRequest) -> Result<command::SetUserLimit> {
    Ok(command::SetUserLimit {
        account: AccountId::parse(&request.account_id)?,
        user: UserId::parse(&request.user_id)?,
        limit: request.limit.map(|limit| check_amount("limit", limit, Zero::Allowed)).transpose()?,
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

/// What a ListReservations request asks for, validated.
pub struct ListQuery {
    pub account: AccountId,
    pub state: Option<ReservationState>,
    pub page_size: usize,
    /// The page starts below this reservation (from the previous page's token).
    pub before: Option<u64>,
    /// From the durable ledger rather than the engine.
    pub settled: bool,
}

/// A page's size (0: the default) and where it starts (below the sequence number in the
/// previous page's token), validated.
fn page(page_size: u32, page_token: &str) -> Result<(usize, Option<u64>)> {
    let size = match page_size as usize {
        0 => LIST_PAGE_DEFAULT,
        size if size <= LIST_PAGE_MAX => size,
        _ => return Err(Error::invalid("page_size", format!("must be at most {LIST_PAGE_MAX}"))),
    };
    let before = match page_token {
        "" => None,
        token => {
            Some(token.parse::<u64>().map_err(|_| Error::invalid("page_token", "not a token from a previous page"))?)
        }
    };
    Ok((size, before))
}

pub fn list_query(request: pb::ListReservationsRequest) -> Result<ListQuery> {
    let (page_size, before) = page(request.page_size, &request.page_token)?;
    Ok(ListQuery {
        account: AccountId::parse(&request.account_id)?,
        state: state_filter(request.state)?,
        page_size,
        before,
        settled: request.settled,
    })
}

/// What a GetAccountHistory request asks for, validated.
pub struct HistoryQuery {
    pub account: AccountId,
    pub page_size: usize,
    /// The page starts below this sequence number (from the previous page's token).
    pub before: Option<u64>,
}

pub fn history_query(request: pb::GetAccountHistoryRequest) -> Result<HistoryQuery> {
    let (page_size, before) = page(request.page_size, &request.page_token)?;
    Ok(HistoryQuery { account: AccountId::parse(&request.account_id)?, page_size, before })
}

/// A SetAlertThresholds: the account and its thresholds, each checked and named by index.
pub fn alert_thresholds(request: pb::SetAlertThresholdsRequest, rules: &Rules) -> Result<(AccountId, Vec<Threshold>)> {
    use pb::alert_threshold::When as Pb;
    let account = AccountId::parse(&request.account_id)?;
    if request.thresholds.len() > THRESHOLDS_MAX {
        let reason = format!("at most {THRESHOLDS_MAX} thresholds, got {}", request.thresholds.len());
        return Err(Error::invalid("thresholds", reason));
    }
    let mut thresholds: Vec<Threshold> = Vec::with_capacity(request.thresholds.len());
    for (index, threshold) in request.thresholds.into_iter().enumerate() {
        let field = format!("thresholds[{index}]");
        let when = match threshold.when {
            None => {
                let reason = "must set one of used_percent, available_below, depleted, user_percent, category_percent";
                return Err(Error::invalid(&field, reason));
            }
            Some(Pb::UsedPercent(percent)) => When::UsedPercent(percent),
            Some(Pb::AvailableBelow(amount)) => When::AvailableBelow(amount),
            Some(Pb::Depleted(true)) => When::Depleted,
            Some(Pb::Depleted(false)) => {
                return Err(Error::invalid(&format!("{field}.depleted"), "must be true when set"));
            }
            Some(Pb::UserPercent(scoped)) => When::UserPercent {
                user: UserId::parse(&scoped.id).map_err(|error| match error {
                    Error::InvalidArgument { reason, .. } => {
                        Error::invalid(&format!("{field}.user_percent.id"), reason)
                    }
                    other => other,
                })?,
                percent: scoped.percent,
            },
            Some(Pb::CategoryPercent(scoped)) => When::CategoryPercent {
                category: rules
                    .category(&scoped.id)
                    .map_err(|_| {
                        let reason = format!("unknown category {}", crate::ledger::echo(&scoped.id));
                        Error::invalid(&format!("{field}.category_percent.id"), reason)
                    })?
                    .as_str()
                    .to_owned(),
                percent: scoped.percent,
            },
        };
        let threshold = Threshold::new(&field, &threshold.threshold_id, when)?;
        if let Some(first) = thresholds.iter().position(|seen| seen.id == threshold.id) {
            return Err(Error::invalid(&format!("{field}.threshold_id"), format!("repeats thresholds[{first}]'s")));
        }
        thresholds.push(threshold);
    }
    Ok((account, thresholds))
}

/// A ListAlerts: the account, the page size, and where the previous page ended
/// (`<fired_unix_ms>:<cycle_start_unix_ms>:<event_id>`).
pub fn alerts_query(request: pb::ListAlertsRequest) -> Result<(AccountId, usize, Option<AlertCursor>)> {
    let account = AccountId::parse(&request.account_id)?;
    let (size, _) = page(request.page_size, "")?;
    let before = match request.page_token.as_str() {
        "" => None,
        token => {
            let bad = || Error::invalid("page_token", "not a token from a previous page");
            let mut parts = token.splitn(3, ':');
            let (Some(fired), Some(cycle), Some(event)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad());
            };
            Some((fired.parse::<i64>().map_err(|_| bad())?, cycle.parse::<i64>().map_err(|_| bad())?, event.to_owned()))
        }
    };
    Ok((account, size, before))
}

/// A WatchAccount's account and how often it is looked at (`interval_ms`: 0 for a second).
pub fn watch(request: pb::WatchAccountRequest) -> Result<(AccountId, std::time::Duration)> {
    let account = AccountId::parse(&request.account_id)?;
    let every = match request.interval_ms {
        0 => 1_000,
        ms @ 100..=60_000 => ms as u64,
        other => return Err(Error::invalid("interval_ms", format!("must be 0 or 100..=60000 ms, got {other}"))),
    };
    Ok((account, std::time::Duration::from_millis(every)))
}

/// What a GetUsage request asks for, validated.
pub struct UsageQuery {
    pub account: AccountId,
    /// One cycle (by its start), or every cycle.
    pub cycle: Option<i64>,
    /// A reservation of the account whose line items to list.
    pub reservation: Option<ReservationId>,
}

pub fn usage_query(request: pb::GetUsageRequest) -> Result<UsageQuery> {
    let account = AccountId::parse(&request.account_id)?;
    let cycle = match request.cycle_start_unix_ms {
        0 => None,
        at => Some(check_instant("cycle_start_unix_ms", at)?),
    };
    let reservation = match request.reservation_id.as_str() {
        "" => None,
        id => {
            let id = ReservationId::parse(id)?;
            if id.account != account {
                return Err(Error::invalid("reservation_id", "belongs to another account"));
            }
            Some(id)
        }
    };
    Ok(UsageQuery { account, cycle, reservation })
}
