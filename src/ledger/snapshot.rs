//! A plain, complete copy of one account's state (all but its remembered answers), for writing
//! it into another engine or keeping it: `rebuild` restores an account's Redis state from the SQL
//! ledger by replaying its events into the model and writing the snapshot with the `restore`
//! function; the embedded engine keeps one per account in SQL (`engine_snapshots`) so that a
//! restart replays only the events after it. The JSON's field names are the Redis functions'
//! own (short where the Rust names are whole words, by `serde(rename)`). Both uses make the JSON
//! form a durable format: the golden test in `durable` pins it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use std::collections::{BTreeSet, HashMap, HashSet};

use super::account::{Account, Lot, Reservation, UserState};
use super::command::Plan;
use super::cycle::Cycle;
use super::event::Draw;
use super::types::{AccountId, BusinessKey, Category, Labels, RequestId, ReservationState, UserId};
use super::wire::{lot_kind, lot_kind_name, period, state, state_name};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSnapshot {
    pub period: u32,
    pub anchor: i64,
    pub plan: i64,
    pub addon: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotSnapshot {
    pub id: u64,
    pub kind: String,
    pub granted: i64,
    pub remaining: i64,
    pub granted_ms: i64,
    pub expires: i64,
    pub from_plan: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationSnapshot {
    pub seq: u64,
    pub user: String,
    pub category: String,
    pub state: String,
    pub reserved: i64,
    pub committed: i64,
    /// What it still holds, per lot: [lot, amount].
    pub draws: Vec<(u64, i64)>,
    pub returned: i64,
    pub commits: i64,
    pub created: i64,
    pub deadline: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<i64>,
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_by: Option<String>,
    /// The cycle generation its user's usage was counted in, and how much it counted there.
    #[serde(rename = "ugen")]
    pub usage_generation: u64,
    #[serde(rename = "ucnt")]
    pub usage_counted: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSnapshot {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    pub used: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountSnapshot {
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<PlanSnapshot>,
    #[serde(rename = "cs")]
    pub cycle_start_ms: i64,
    #[serde(rename = "ce")]
    pub cycle_end_ms: i64,
    /// The cycle generation (`gen` in the scripts).
    #[serde(rename = "gen")]
    pub generation: u64,
    /// Plan and add-on credits granted this cycle.
    #[serde(rename = "pg")]
    pub cycle_plan_granted: i64,
    #[serde(rename = "ag")]
    pub cycle_addon_granted: i64,
    pub lots: Vec<LotSnapshot>,
    pub last_lot: u64,
    #[serde(rename = "last_res")]
    pub last_reservation: u64,
    pub last_event: u64,
    pub trial: bool,
    pub granted: i64,
    pub held: i64,
    pub spent: i64,
    pub expired: i64,
    /// The overdraft not yet repaid; absent when 0 (so every snapshot from before overdrafts
    /// existed reads the same).
    #[serde(default, skip_serializing_if = "super::answer::is_zero")]
    pub owed: i64,
    pub reservations: Vec<ReservationSnapshot>,
    pub users: BTreeMap<String, UserSnapshot>,
    /// Business keys charged this cycle.
    pub keys: Vec<String>,
    /// Category budgets and use this cycle (`limit` is the budget); absent from format 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, UserSnapshot>,
}

impl AccountSnapshot {
    /// How many items it copies (reservations, lots, users, categories, business keys): what
    /// taking it costs, roughly, in units of replaying one event.
    pub fn items(&self) -> u64 {
        (self.reservations.len() + self.lots.len() + self.users.len() + self.categories.len() + self.keys.len()) as u64
    }

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
            cycle_start_ms: account.cycle.start_ms,
            cycle_end_ms: account.cycle.end_ms,
            generation: account.cycle_generation,
            cycle_plan_granted: account.cycle_plan_granted,
            cycle_addon_granted: account.cycle_addon_granted,
            lots: account
                .lots
                .iter()
                .map(|(id, lot)| LotSnapshot {
                    id: *id,
                    kind: lot_kind_name(lot.kind).to_owned(),
                    granted: lot.granted,
                    remaining: lot.remaining,
                    granted_ms: lot.granted_ms,
                    expires: lot.expires_ms,
                    from_plan: lot.from_plan,
                })
                .collect(),
            last_lot: account.last_lot,
            last_reservation: account.last_reservation,
            last_event: account.last_event,
            trial: account.trial_used,
            granted: account.granted,
            held: account.held,
            spent: account.spent,
            expired: account.expired,
            owed: account.owed,
            reservations: account
                .reservations
                .iter()
                .map(|(seq, r)| ReservationSnapshot {
                    seq: *seq,
                    user: r.user.as_str().to_owned(),
                    category: r.category.as_str().to_owned(),
                    state: state_name(r.state).to_owned(),
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
                    usage_generation: r.usage_generation,
                    usage_counted: r.usage_counted,
                })
                .collect(),
            users: account
                .users
                .iter()
                .map(|(user, state)| (user.as_str().to_owned(), UserSnapshot { limit: state.limit, used: state.used }))
                .collect(),
            keys,
            categories: account
                .categories
                .iter()
                .map(|(category, state)| {
                    (category.as_str().to_owned(), UserSnapshot { limit: state.limit, used: state.used })
                })
                .collect(),
        }
    }
}

impl AccountSnapshot {
    /// The account this snapshot copies, with no remembered answers (they are kept apart).
    /// Refuses a snapshot the model could not have made: unknown names, invalid ids.
    pub(super) fn into_account(self) -> Result<Account, String> {
        let id = AccountId::parse(&self.account).map_err(|error| error.to_string())?;
        let mut account = Account::new(id, self.cycle_start_ms);
        account.plan = self.plan.map(PlanSnapshot::into_plan).transpose()?;
        account.cycle = Cycle { start_ms: self.cycle_start_ms, end_ms: self.cycle_end_ms };
        account.cycle_generation = self.generation;
        account.cycle_plan_granted = self.cycle_plan_granted;
        account.cycle_addon_granted = self.cycle_addon_granted;
        for lot in self.lots {
            let kind = lot_kind(&lot.kind).ok_or_else(|| format!("lot {}: unknown kind {:?}", lot.id, lot.kind))?;
            let restored = Lot {
                kind,
                granted: lot.granted,
                remaining: lot.remaining,
                granted_ms: lot.granted_ms,
                expires_ms: lot.expires,
                from_plan: lot.from_plan,
            };
            account.lots.insert(lot.id, restored);
        }
        account.last_lot = self.last_lot;
        account.last_reservation = self.last_reservation;
        account.last_event = self.last_event;
        account.trial_used = self.trial;
        account.granted = self.granted;
        account.held = self.held;
        account.spent = self.spent;
        account.expired = self.expired;
        account.owed = self.owed;
        let mut deadlines = BTreeSet::new();
        for reservation in self.reservations {
            let seq = reservation.seq;
            let restored = reservation.into_reservation().map_err(|reason| format!("reservation {seq}: {reason}"))?;
            if restored.state.is_open() {
                deadlines.insert((restored.deadline_ms, seq));
            }
            account.reservations.insert(seq, restored);
        }
        account.deadlines = deadlines;
        for (user, state) in self.users {
            let user = UserId::parse(&user).map_err(|error| error.to_string())?;
            account.users.insert(user, UserState { limit: state.limit, used: state.used });
        }
        for (category, state) in self.categories {
            account.categories.insert(Category(category), UserState { limit: state.limit, used: state.used });
        }
        let mut keys = HashSet::with_capacity(self.keys.len());
        for key in self.keys {
            keys.extend(BusinessKey::parse_optional(&key).map_err(|error| error.to_string())?);
        }
        account.charged_keys = keys;
        Ok(account)
    }
}

impl PlanSnapshot {
    fn into_plan(self) -> Result<Plan, String> {
        let period = period(self.period).ok_or_else(|| format!("plan: no period of {} months", self.period))?;
        Ok(Plan { period, anchor_ms: self.anchor, plan_credits: self.plan, addon_credits: self.addon })
    }
}

impl ReservationSnapshot {
    fn into_reservation(self) -> Result<Reservation, String> {
        let state: ReservationState = state(&self.state).ok_or_else(|| format!("unknown state {:?}", self.state))?;
        let opened_by = self.opened_by.as_deref().map(RequestId::parse).transpose().map_err(|e| e.to_string())?;
        Ok(Reservation {
            user: UserId::parse(&self.user).map_err(|error| error.to_string())?,
            category: Category(self.category),
            state,
            reserved: self.reserved,
            committed: self.committed,
            draws: self.draws.into_iter().map(|(lot, amount)| Draw { lot, amount }).collect(),
            returned: self.returned,
            commit_count: self.commits,
            created_ms: self.created,
            deadline_ms: self.deadline,
            closed_ms: self.closed,
            labels: Labels::parse(self.labels).map_err(|error| error.to_string())?,
            opened_by,
            requests: HashMap::new(),
            usage_generation: self.usage_generation,
            usage_counted: self.usage_counted,
        })
    }
}
