//! A plain, complete copy of one account's state, for writing it into another engine: `rebuild`
//! restores an account's Redis state from the SQL ledger by replaying its events into the model
//! and writing the snapshot with `restore.lua`. Field names are the Redis scripts' own.

use std::collections::BTreeMap;

use serde::Serialize;

use super::account::Account;
use super::wire::{lot_kind_name, state_name};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlanSnapshot {
    pub period: u32,
    pub anchor: i64,
    pub plan: i64,
    pub addon: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LotSnapshot {
    pub id: u64,
    pub kind: &'static str,
    pub granted: i64,
    pub remaining: i64,
    pub granted_ms: i64,
    pub expires: i64,
    pub from_plan: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReservationSnapshot {
    pub seq: u64,
    pub user: String,
    pub category: String,
    pub state: &'static str,
    pub reserved: i64,
    pub committed: i64,
    /// What it still holds, per lot: [lot, amount].
    pub draws: Vec<(u64, i64)>,
    pub returned: i64,
    pub commits: i64,
    pub created: i64,
    pub deadline: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed: Option<i64>,
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<String>,
    pub ugen: u64,
    pub ucnt: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UserSnapshot {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    pub used: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccountSnapshot {
    pub account: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSnapshot>,
    pub cs: i64,
    pub ce: i64,
    /// The cycle generation (`gen` in the scripts).
    #[serde(rename = "gen")]
    pub generation: u64,
    pub pg: i64,
    pub ag: i64,
    pub lots: Vec<LotSnapshot>,
    pub last_lot: u64,
    pub last_res: u64,
    pub last_event: u64,
    pub trial: bool,
    pub granted: i64,
    pub held: i64,
    pub spent: i64,
    pub expired: i64,
    pub reservations: Vec<ReservationSnapshot>,
    pub users: BTreeMap<String, UserSnapshot>,
    /// Business keys charged this cycle.
    pub keys: Vec<String>,
}

impl AccountSnapshot {
    pub(super) fn of(account: &Account) -> Self {
        let mut keys: Vec<String> = account.charged_keys.iter().map(|key| key.as_str().to_owned()).collect();
        keys.sort();
        Self {
            account: account.id.as_str().to_owned(),
            plan: account.plan.as_ref().map(|plan| PlanSnapshot {
                period: plan.period.months(),
                anchor: plan.anchor_ms,
                plan: plan.plan_credits,
                addon: plan.addon_credits,
            }),
            cs: account.cycle.start_ms,
            ce: account.cycle.end_ms,
            generation: account.cycle_generation,
            pg: account.cycle_plan_granted,
            ag: account.cycle_addon_granted,
            lots: account
                .lots
                .iter()
                .map(|(id, lot)| LotSnapshot {
                    id: *id,
                    kind: lot_kind_name(lot.kind),
                    granted: lot.granted,
                    remaining: lot.remaining,
                    granted_ms: lot.granted_ms,
                    expires: lot.expires_ms,
                    from_plan: lot.from_plan,
                })
                .collect(),
            last_lot: account.last_lot,
            last_res: account.last_reservation,
            last_event: account.last_event,
            trial: account.trial_used,
            granted: account.granted,
            held: account.held,
            spent: account.spent,
            expired: account.expired,
            reservations: account
                .reservations
                .iter()
                .map(|(seq, r)| ReservationSnapshot {
                    seq: *seq,
                    user: r.user.as_str().to_owned(),
                    category: r.category.as_str().to_owned(),
                    state: state_name(r.state),
                    reserved: r.reserved,
                    committed: r.committed,
                    draws: r.draws.iter().map(|draw| (draw.lot, draw.amount)).collect(),
                    returned: r.returned,
                    commits: r.commit_count,
                    created: r.created_ms,
                    deadline: r.deadline_ms,
                    closed: r.closed_ms,
                    labels: r.labels.to_map(),
                    opened_by: r.opened_by.as_ref().map(|request| request.as_str().to_owned()),
                    ugen: r.usage_generation,
                    ucnt: r.usage_counted,
                })
                .collect(),
            users: account
                .users
                .iter()
                .map(|(user, state)| (user.as_str().to_owned(), UserSnapshot { limit: state.limit, used: state.used }))
                .collect(),
            keys,
        }
    }
}
