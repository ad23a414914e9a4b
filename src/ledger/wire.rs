//! The wire form of events: a kind name and a JSON object per kind. It is the one encoding shared
//! by the Redis outbox (the scripts' `emit` in lib.lua writes exactly these shapes), the embedded
//! engine's outbox and the SQL ledger's `data` column, so an event read back from any of them
//! decodes to the same [`EventKind`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::Plan;
use super::cycle::Cycle;
use super::event::{Draw, EventKind};
use super::types::{LotKind, Period, ReservationState};

#[derive(Debug, thiserror::Error)]
#[error("malformed {kind} event: {reason}")]
pub struct WireError {
    kind: String,
    reason: String,
}

#[derive(Serialize, Deserialize)]
struct WirePlan {
    period: u32,
    anchor: i64,
    plan: i64,
    addon: i64,
}

#[derive(Serialize, Deserialize)]
struct PlanSetData {
    plan: WirePlan,
    cs: i64,
    ce: i64,
}

#[derive(Serialize, Deserialize)]
struct CycleData {
    cs: i64,
    ce: i64,
}

#[derive(Serialize, Deserialize)]
struct LotGrantedData {
    lot: u64,
    kind: String,
    amount: i64,
    expires: i64,
    from_plan: bool,
}

#[derive(Serialize, Deserialize)]
struct LotExpiredData {
    lot: u64,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct UserLimitData {
    user: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct CategoryBudgetData {
    category: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct ReservedData {
    res: u64,
    user: String,
    category: String,
    amount: i64,
    draws: Vec<(u64, i64)>,
    deadline: i64,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct ExtendedData {
    res: u64,
    amount: i64,
    draws: Vec<(u64, i64)>,
    deadline: i64,
}

#[derive(Serialize, Deserialize)]
struct CommittedData {
    res: u64,
    user: String,
    category: String,
    cycle: i64,
    amount: i64,
    draws: Vec<(u64, i64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    already: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct OverdrawnData {
    res: u64,
    user: String,
    category: String,
    cycle: i64,
    amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct RepaidData {
    lot: u64,
    amount: i64,
}

#[derive(Serialize, Deserialize)]
struct ClosedData {
    res: u64,
    state: String,
    returned: Vec<(u64, i64)>,
    expired: i64,
}

fn pairs(draws: &[Draw]) -> Vec<(u64, i64)> {
    draws.iter().map(|draw| (draw.lot, draw.amount)).collect()
}

fn draws(pairs: Vec<(u64, i64)>) -> Vec<Draw> {
    pairs.into_iter().map(|(lot, amount)| Draw { lot, amount }).collect()
}

pub fn lot_kind_name(kind: LotKind) -> &'static str {
    match kind {
        LotKind::Trial => "trial",
        LotKind::Promo => "promo",
        LotKind::Plan => "plan",
        LotKind::Addon => "addon",
        LotKind::Adjustment => "adjustment",
    }
}

pub fn lot_kind(name: &str) -> Option<LotKind> {
    LotKind::ALL.into_iter().find(|kind| lot_kind_name(*kind) == name)
}

pub fn state_name(state: ReservationState) -> &'static str {
    match state {
        ReservationState::Held => "held",
        ReservationState::Committed => "committed",
        ReservationState::Released => "released",
        ReservationState::Expired => "expired",
    }
}

pub fn state(name: &str) -> Option<ReservationState> {
    [ReservationState::Held, ReservationState::Committed, ReservationState::Released, ReservationState::Expired]
        .into_iter()
        .find(|state| state_name(*state) == name)
}

pub fn period(months: u32) -> Option<Period> {
    [Period::Monthly, Period::Quarterly, Period::Semiannual, Period::Annual]
        .into_iter()
        .find(|period| period.months() == months)
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("event data serialises")
}

/// The reservation an event is about, if any.
pub fn reservation_of(kind: &EventKind) -> Option<u64> {
    match kind {
        EventKind::Reserved { reservation, .. }
        | EventKind::Extended { reservation, .. }
        | EventKind::Committed { reservation, .. }
        | EventKind::Closed { reservation, .. } => Some(*reservation),
        EventKind::Overdrawn { reservation, .. } => Some(*reservation).filter(|seq| *seq != 0),
        EventKind::PlanSet { .. }
        | EventKind::CycleStarted { .. }
        | EventKind::LotGranted { .. }
        | EventKind::LotExpired { .. }
        | EventKind::Repaid { .. }
        | EventKind::UserLimitSet { .. }
        | EventKind::CategoryBudgetSet { .. } => None,
    }
}

/// An event's kind name and JSON data.
pub fn encode(kind: &EventKind) -> (&'static str, String) {
    match kind {
        EventKind::PlanSet { plan, cycle } => {
            let plan = WirePlan {
                period: plan.period.months(),
                anchor: plan.anchor_ms,
                plan: plan.plan_credits,
                addon: plan.addon_credits,
            };
            ("plan_set", json(&PlanSetData { plan, cs: cycle.start_ms, ce: cycle.end_ms }))
        }
        EventKind::CycleStarted { cycle } => {
            ("cycle_started", json(&CycleData { cs: cycle.start_ms, ce: cycle.end_ms }))
        }
        EventKind::LotGranted { lot, kind, amount, expires_ms, from_plan } => (
            "lot_granted",
            json(&LotGrantedData {
                lot: *lot,
                kind: lot_kind_name(*kind).into(),
                amount: *amount,
                expires: *expires_ms,
                from_plan: *from_plan,
            }),
        ),
        EventKind::LotExpired { lot, amount } => ("lot_expired", json(&LotExpiredData { lot: *lot, amount: *amount })),
        EventKind::UserLimitSet { user, limit } => {
            ("user_limit_set", json(&UserLimitData { user: user.clone(), limit: *limit }))
        }
        EventKind::CategoryBudgetSet { category, budget } => {
            ("category_budget_set", json(&CategoryBudgetData { category: category.clone(), budget: *budget }))
        }
        EventKind::Reserved { reservation, user, category, amount, draws, deadline_ms, labels } => (
            "reserved",
            json(&ReservedData {
                res: *reservation,
                user: user.clone(),
                category: category.clone(),
                amount: *amount,
                draws: pairs(draws),
                deadline: *deadline_ms,
                labels: labels.clone(),
            }),
        ),
        EventKind::Extended { reservation, amount, draws, deadline_ms } => (
            "extended",
            json(&ExtendedData { res: *reservation, amount: *amount, draws: pairs(draws), deadline: *deadline_ms }),
        ),
        EventKind::Committed {
            reservation,
            user,
            category,
            cycle_start_ms,
            amount,
            draws,
            business_key,
            already_charged,
            labels,
        } => (
            "committed",
            json(&CommittedData {
                res: *reservation,
                user: user.clone(),
                category: category.clone(),
                cycle: *cycle_start_ms,
                amount: *amount,
                draws: pairs(draws),
                key: business_key.clone(),
                already: *already_charged,
                labels: labels.clone(),
            }),
        ),
        EventKind::Overdrawn { reservation, user, category, cycle_start_ms, amount, business_key, labels } => (
            "overdrawn",
            json(&OverdrawnData {
                res: *reservation,
                user: user.clone(),
                category: category.clone(),
                cycle: *cycle_start_ms,
                amount: *amount,
                key: business_key.clone(),
                labels: labels.clone(),
            }),
        ),
        EventKind::Repaid { lot, amount } => ("repaid", json(&RepaidData { lot: *lot, amount: *amount })),
        EventKind::Closed { reservation, state, returned, expired } => (
            "closed",
            json(&ClosedData {
                res: *reservation,
                state: state_name(*state).into(),
                returned: pairs(returned),
                expired: *expired,
            }),
        ),
    }
}

/// Decodes a kind name and its JSON data.
pub fn decode(kind: &str, data: &str) -> Result<EventKind, WireError> {
    let fail = |reason: String| WireError { kind: kind.to_owned(), reason };
    fn parse<T: for<'de> Deserialize<'de>>(data: &str) -> Result<T, String> {
        serde_json::from_str(data).map_err(|error| format!("{error}: {data}"))
    }
    let event = match kind {
        "plan_set" => {
            let d: PlanSetData = parse(data).map_err(fail)?;
            let period = period(d.plan.period).ok_or_else(|| fail(format!("period of {} months", d.plan.period)))?;
            let plan =
                Plan { period, anchor_ms: d.plan.anchor, plan_credits: d.plan.plan, addon_credits: d.plan.addon };
            EventKind::PlanSet { plan, cycle: Cycle { start_ms: d.cs, end_ms: d.ce } }
        }
        "cycle_started" => {
            let d: CycleData = parse(data).map_err(fail)?;
            EventKind::CycleStarted { cycle: Cycle { start_ms: d.cs, end_ms: d.ce } }
        }
        "lot_granted" => {
            let d: LotGrantedData = parse(data).map_err(fail)?;
            let kind = lot_kind(&d.kind).ok_or_else(|| fail(format!("lot kind {:?}", d.kind)))?;
            EventKind::LotGranted { lot: d.lot, kind, amount: d.amount, expires_ms: d.expires, from_plan: d.from_plan }
        }
        "lot_expired" => {
            let d: LotExpiredData = parse(data).map_err(fail)?;
            EventKind::LotExpired { lot: d.lot, amount: d.amount }
        }
        "user_limit_set" => {
            let d: UserLimitData = parse(data).map_err(fail)?;
            EventKind::UserLimitSet { user: d.user, limit: d.limit }
        }
        "category_budget_set" => {
            let d: CategoryBudgetData = parse(data).map_err(fail)?;
            EventKind::CategoryBudgetSet { category: d.category, budget: d.budget }
        }
        "reserved" => {
            let d: ReservedData = parse(data).map_err(fail)?;
            EventKind::Reserved {
                reservation: d.res,
                user: d.user,
                category: d.category,
                amount: d.amount,
                draws: draws(d.draws),
                deadline_ms: d.deadline,
                labels: d.labels,
            }
        }
        "extended" => {
            let d: ExtendedData = parse(data).map_err(fail)?;
            EventKind::Extended { reservation: d.res, amount: d.amount, draws: draws(d.draws), deadline_ms: d.deadline }
        }
        "committed" => {
            let d: CommittedData = parse(data).map_err(fail)?;
            EventKind::Committed {
                reservation: d.res,
                user: d.user,
                category: d.category,
                cycle_start_ms: d.cycle,
                amount: d.amount,
                draws: draws(d.draws),
                business_key: d.key,
                already_charged: d.already,
                labels: d.labels,
            }
        }
        "overdrawn" => {
            let d: OverdrawnData = parse(data).map_err(fail)?;
            EventKind::Overdrawn {
                reservation: d.res,
                user: d.user,
                category: d.category,
                cycle_start_ms: d.cycle,
                amount: d.amount,
                business_key: d.key,
                labels: d.labels,
            }
        }
        "repaid" => {
            let d: RepaidData = parse(data).map_err(fail)?;
            EventKind::Repaid { lot: d.lot, amount: d.amount }
        }
        "closed" => {
            let d: ClosedData = parse(data).map_err(fail)?;
            let state = state(&d.state).ok_or_else(|| fail(format!("state {:?}", d.state)))?;
            EventKind::Closed { reservation: d.res, state, returned: draws(d.returned), expired: d.expired }
        }
        other => return Err(fail(format!("unknown kind {other:?}"))),
    };
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every kind's JSON is pinned, and round-trips, in tests/it/golden.rs.
    #[test]
    fn malformed_events_are_refused() {
        assert!(decode("lot_granted", "{\"lot\":1}").unwrap_err().to_string().starts_with("malformed lot_granted"));
        assert!(decode("mystery", "{}").is_err());
    }
}
