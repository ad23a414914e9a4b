//! Reading the outbox: stream entries written by the scripts' `emit` (lib.lua), decoded into the
//! model's [`Event`]s. The settler reads through here, and the differential tests compare these
//! events with the reference model's, one for one.
//!
//! An entry's fields: `account`, `seq`, `at`, `request` (empty when none), `kind`, and `data`, a
//! JSON object whose shape depends on `kind` (see each arm below).

use std::collections::{BTreeMap, HashMap};

use redis::Value;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::engine::Error;
use crate::ledger::command::Plan;
use crate::ledger::cycle::Cycle;
use crate::ledger::event::{Draw, Event, EventKind};
use crate::ledger::{AccountId, LotKind, Period, ReservationState};

fn malformed(what: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("malformed outbox entry: {what}"))
}

fn text(fields: &HashMap<String, Value>, name: &str) -> Result<String, Error> {
    match fields.get(name) {
        Some(Value::BulkString(bytes)) => String::from_utf8(bytes.clone()).map_err(malformed),
        Some(Value::SimpleString(text)) => Ok(text.clone()),
        _ => Err(malformed(format!("field {name} missing"))),
    }
}

fn number<T: std::str::FromStr>(fields: &HashMap<String, Value>, name: &str) -> Result<T, Error> {
    text(fields, name)?.parse().map_err(|_| malformed(format!("field {name} is not a number")))
}

fn data<T: DeserializeOwned>(json: &str) -> Result<T, Error> {
    serde_json::from_str(json).map_err(|error| malformed(format!("{error}: {json}")))
}

fn draws(pairs: Vec<(u64, i64)>) -> Vec<Draw> {
    pairs.into_iter().map(|(lot, amount)| Draw { lot, amount }).collect()
}

fn lot_kind(name: &str) -> Result<LotKind, Error> {
    Ok(match name {
        "trial" => LotKind::Trial,
        "promo" => LotKind::Promo,
        "plan" => LotKind::Plan,
        "addon" => LotKind::Addon,
        "adjustment" => LotKind::Adjustment,
        other => return Err(malformed(format!("lot kind {other:?}"))),
    })
}

fn state(name: &str) -> Result<ReservationState, Error> {
    Ok(match name {
        "held" => ReservationState::Held,
        "committed" => ReservationState::Committed,
        "released" => ReservationState::Released,
        "expired" => ReservationState::Expired,
        other => return Err(malformed(format!("reservation state {other:?}"))),
    })
}

#[derive(Deserialize)]
struct WirePlan {
    period: u32,
    anchor: i64,
    plan: i64,
    addon: i64,
}

#[derive(Deserialize)]
struct PlanSetData {
    plan: WirePlan,
    cs: i64,
    ce: i64,
}

#[derive(Deserialize)]
struct CycleData {
    cs: i64,
    ce: i64,
}

#[derive(Deserialize)]
struct LotGrantedData {
    lot: u64,
    kind: String,
    amount: i64,
    expires: i64,
}

#[derive(Deserialize)]
struct LotExpiredData {
    lot: u64,
    amount: i64,
}

#[derive(Deserialize)]
struct UserLimitData {
    user: String,
    limit: Option<i64>,
}

#[derive(Deserialize)]
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

#[derive(Deserialize)]
struct ExtendedData {
    res: u64,
    amount: i64,
    draws: Vec<(u64, i64)>,
    deadline: i64,
}

#[derive(Deserialize)]
struct CommittedData {
    res: u64,
    amount: i64,
    draws: Vec<(u64, i64)>,
    key: Option<String>,
    already: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ClosedData {
    res: u64,
    state: String,
    returned: Vec<(u64, i64)>,
    expired: i64,
}

/// Decodes one outbox entry.
pub fn decode(fields: &HashMap<String, Value>) -> Result<Event, Error> {
    let account = AccountId::parse(&text(fields, "account")?).map_err(malformed)?;
    let request = text(fields, "request")?;
    let json = text(fields, "data")?;
    let kind = match text(fields, "kind")?.as_str() {
        "plan_set" => {
            let d: PlanSetData = data(&json)?;
            let period = [Period::Monthly, Period::Quarterly, Period::Semiannual, Period::Annual]
                .into_iter()
                .find(|period| period.months() == d.plan.period)
                .ok_or_else(|| malformed("plan period"))?;
            let plan =
                Plan { period, anchor_ms: d.plan.anchor, plan_credits: d.plan.plan, addon_credits: d.plan.addon };
            EventKind::PlanSet { plan, cycle: Cycle { start_ms: d.cs, end_ms: d.ce } }
        }
        "cycle_started" => {
            let d: CycleData = data(&json)?;
            EventKind::CycleStarted { cycle: Cycle { start_ms: d.cs, end_ms: d.ce } }
        }
        "lot_granted" => {
            let d: LotGrantedData = data(&json)?;
            EventKind::LotGranted { lot: d.lot, kind: lot_kind(&d.kind)?, amount: d.amount, expires_ms: d.expires }
        }
        "lot_expired" => {
            let d: LotExpiredData = data(&json)?;
            EventKind::LotExpired { lot: d.lot, amount: d.amount }
        }
        "user_limit_set" => {
            let d: UserLimitData = data(&json)?;
            EventKind::UserLimitSet { user: d.user, limit: d.limit }
        }
        "reserved" => {
            let d: ReservedData = data(&json)?;
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
            let d: ExtendedData = data(&json)?;
            EventKind::Extended { reservation: d.res, amount: d.amount, draws: draws(d.draws), deadline_ms: d.deadline }
        }
        "committed" => {
            let d: CommittedData = data(&json)?;
            EventKind::Committed {
                reservation: d.res,
                amount: d.amount,
                draws: draws(d.draws),
                business_key: d.key,
                already_charged: d.already,
                labels: d.labels,
            }
        }
        "closed" => {
            let d: ClosedData = data(&json)?;
            EventKind::Closed {
                reservation: d.res,
                state: state(&d.state)?,
                returned: draws(d.returned),
                expired: d.expired,
            }
        }
        other => return Err(malformed(format!("event kind {other:?}"))),
    };
    Ok(Event {
        account,
        seq: number(fields, "seq")?,
        at_ms: number(fields, "at")?,
        request_id: (!request.is_empty()).then_some(request),
        kind,
    })
}
