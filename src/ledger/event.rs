//! Events: the durable record of every state change. Each operation that changes state emits
//! its events in the same step (the outbox); applying them in order reproduces every account's
//! totals and every lot's remainder, which the property tests check. The event's identity is
//! (account, seq): the per-account sequence, never a position in some transport.

use std::collections::BTreeMap;

use super::command::Plan;
use super::cycle::Cycle;
use super::types::{AccountId, LotKind, Millis, ReservationState};

/// Credits taken from (or returned to) one lot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    pub lot: u64,
    pub amount: i64,
}

pub fn draws_total(draws: &[Draw]) -> i64 {
    draws.iter().map(|draw| draw.amount).sum()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub account: AccountId,
    /// 1, 2, 3, ... per account, without gaps.
    pub seq: u64,
    /// When the change took effect (for expiries: the deadline or expiry instant, not the
    /// moment the sweeper noticed).
    pub at_ms: Millis,
    /// The request that caused it; None for expiries and renewals.
    pub request_id: Option<String>,
    pub kind: EventKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    PlanSet {
        plan: Plan,
        cycle: Cycle,
    },
    /// A new billing cycle began (renewal or plan change): user usage and business keys reset.
    CycleStarted {
        cycle: Cycle,
    },
    /// `from_plan`: granted by the plan schedule (plan and recurring add-on lots).
    LotGranted {
        lot: u64,
        kind: LotKind,
        amount: i64,
        expires_ms: Millis,
        from_plan: bool,
    },
    /// A lot reached its expiry with `amount` left.
    LotExpired {
        lot: u64,
        amount: i64,
    },
    UserLimitSet {
        user: String,
        limit: Option<i64>,
    },
    /// A category's budget per cycle set (None: lifted).
    CategoryBudgetSet {
        category: String,
        budget: Option<i64>,
    },
    Reserved {
        reservation: u64,
        user: String,
        category: String,
        amount: i64,
        draws: Vec<Draw>,
        deadline_ms: Millis,
        labels: BTreeMap<String, String>,
    },
    Extended {
        reservation: u64,
        amount: i64,
        draws: Vec<Draw>,
        deadline_ms: Millis,
    },
    Committed {
        reservation: u64,
        /// The reservation's user and category, and the cycle this spend counts in, so usage can
        /// be reported from this event alone.
        user: String,
        category: String,
        cycle_start_ms: Millis,
        /// What this commit spent, taken from these lots' held parts.
        amount: i64,
        draws: Vec<Draw>,
        business_key: Option<String>,
        already_charged: bool,
        labels: BTreeMap<String, String>,
    },
    /// An outage charge spent `amount` credits that no lot covered: the account owes them
    /// (`owed` grows) until its next grants repay them. The spend counts for the user and the
    /// category in the cycle, like a commit's. `reservation` is the charge's own (it carries the
    /// part the lots covered, if any) — 0 when the lots covered none of it.
    Overdrawn {
        reservation: u64,
        user: String,
        category: String,
        cycle_start_ms: Millis,
        amount: i64,
        business_key: Option<String>,
        labels: BTreeMap<String, String>,
    },
    /// The first `amount` credits of a lot just granted repaid the account's overdraft: the lot
    /// starts with its amount less these.
    Repaid {
        lot: u64,
        amount: i64,
    },
    /// A reservation closed: `returned` went back to live lots, `expired` to lots already dead.
    Closed {
        reservation: u64,
        state: ReservationState,
        returned: Vec<Draw>,
        expired: i64,
    },
}
