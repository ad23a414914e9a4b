//! What operations answer. A business refusal is a [`Decline`] inside an `Ok`, with the figures a
//! caller needs; `Err` is for bad input and unknown things only.
//!
//! An [`Answer`] and what it carries derive serde: the embedded engine keeps remembered answers
//! in SQL in that JSON form, a durable format pinned by the golden tests in `durable`. Renaming a
//! field here changes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::command::Plan;
use super::cycle::Cycle;
use super::types::{AccountId, LotKind, Millis, ReservationId, ReservationState};

/// Done, or declined for a business reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision<T> {
    Done(T),
    Declined(Decline),
}

impl<T> Decision<T> {
    pub fn done(self) -> Option<T> {
        match self {
            Self::Done(value) => Some(value),
            Self::Declined(_) => None,
        }
    }

    pub fn declined(&self) -> Option<&Decline> {
        match self {
            Self::Done(_) => None,
            Self::Declined(decline) => Some(decline),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    InsufficientCredit,
    UserLimitReached,
    ReservationExpired,
    ReservationClosed,
    ExceedsHold,
    TrialAlreadyUsed,
    CategoryBudgetReached,
}

/// Which limit refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclineScope {
    Account,
    User,
    Reservation,
    Category,
}

impl DeclineReason {
    pub fn scope(self) -> DeclineScope {
        match self {
            Self::InsufficientCredit | Self::TrialAlreadyUsed => DeclineScope::Account,
            Self::UserLimitReached => DeclineScope::User,
            Self::ReservationExpired | Self::ReservationClosed | Self::ExceedsHold => DeclineScope::Reservation,
            Self::CategoryBudgetReached => DeclineScope::Category,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decline {
    pub reason: DeclineReason,
    pub requested: i64,
    /// The account's available credit when decided.
    pub available: i64,
    /// The user's remaining limit, when the user has one.
    pub user_remaining: Option<i64>,
    /// What the reservation held (reservation declines).
    pub held: i64,
    pub reservation_state: Option<ReservationState>,
    /// The account decided on.
    pub account: AccountId,
    /// The user whose limit was checked: the caller's (Reserve, Charge) or the hold's (Commit,
    /// Extend, Release); None for a trial.
    pub user: Option<String>,
    /// The reservation the call acted on, as it stands after the call (Commit, Extend and
    /// Release declines, whatever their reason), so a caller sees what it still holds, until
    /// when, and in what state, without a second call.
    pub reservation: Option<Box<ReservationView>>,
    /// The category whose budget refused (CATEGORY_BUDGET_REACHED only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// The category's remaining budget this cycle (CATEGORY_BUDGET_REACHED only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_remaining: Option<i64>,
}

impl Decline {
    /// The id of the scope that refused: the account's, the user's or the reservation's.
    pub fn scope_id(&self) -> String {
        match self.reason.scope() {
            DeclineScope::Account => self.account.to_string(),
            DeclineScope::User => self.user.clone().unwrap_or_default(),
            DeclineScope::Reservation => self.reservation.as_ref().map(|view| view.id.to_string()).unwrap_or_default(),
            DeclineScope::Category => self.category.clone().unwrap_or_default(),
        }
    }

    /// One sentence for logs and people, naming the scope that refused.
    pub fn message(&self) -> String {
        let (account, scope) = (&self.account, self.scope_id());
        match self.reason {
            DeclineReason::InsufficientCredit => {
                format!("account {account} has {} credits available, {} requested", self.available, self.requested)
            }
            DeclineReason::UserLimitReached => format!(
                "user {scope} of account {account} reached their limit: {} remaining this cycle, {} requested",
                self.user_remaining.unwrap_or(0),
                self.requested
            ),
            DeclineReason::ReservationExpired => {
                format!("reservation {scope} expired; its uncommitted part was returned")
            }
            DeclineReason::ReservationClosed => format!("reservation {scope} is already closed"),
            DeclineReason::ExceedsHold => format!(
                "commit of {} exceeds the {} reservation {scope} still holds; extend first",
                self.requested, self.held
            ),
            DeclineReason::TrialAlreadyUsed => format!("account {account} already had its trial"),
            DeclineReason::CategoryBudgetReached => format!(
                "category {scope} of account {account} reached its budget: {} remaining this cycle, {} requested",
                self.category_remaining.unwrap_or(0),
                self.requested
            ),
        }
    }
}

/// Where an account's credits stand: granted + owed = available + held + spent + expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub granted: i64,
    pub available: i64,
    pub held: i64,
    pub spent: i64,
    pub expired: i64,
    /// Credits spent by outage charges beyond what the lots held, not yet repaid by a grant
    /// (docs/rules.md#overdraft). Absent from stored answers when 0, as before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub owed: i64,
}

pub(super) fn is_zero(value: &i64) -> bool {
    *value == 0
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationView {
    pub id: ReservationId,
    pub user: String,
    pub category: String,
    pub state: ReservationState,
    pub reserved: i64,
    pub committed: i64,
    pub held: i64,
    pub returned: i64,
    pub commit_count: i64,
    pub created_ms: Millis,
    pub deadline_ms: Millis,
    pub closed_ms: Option<Millis>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LotView {
    pub id: u64,
    pub kind: LotKind,
    pub granted: i64,
    pub remaining: i64,
    pub granted_ms: Millis,
    pub expires_ms: Millis,
}

/// A category's budget this cycle and what it used (held or spent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryView {
    pub category: String,
    pub budget: Option<i64>,
    /// Held or spent this cycle.
    pub used: i64,
    pub remaining: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub user: String,
    pub limit: Option<i64>,
    /// Held or spent this cycle.
    pub used: i64,
    pub remaining: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub reservation: ReservationId,
    pub amount: i64,
    pub deadline_ms: Millis,
    pub available: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub charged: i64,
    pub already_charged: bool,
    pub held: i64,
    pub returned: i64,
    pub reservation: ReservationView,
}

/// A CommitBatch's answer: each item's, in order (an item answered from memory carries the
/// figures of its first call), and the reservation as the whole batch left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitBatched {
    pub items: Vec<Decision<Committed>>,
    pub reservation: ReservationView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extended {
    pub added: i64,
    pub held: i64,
    pub deadline_ms: Millis,
    pub reservation: ReservationView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub returned: i64,
    pub reservation: ReservationView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charged {
    /// None when the business key was already charged and nothing happened.
    pub reservation: Option<ReservationId>,
    pub charged: i64,
    pub already_charged: bool,
    pub available: i64,
    /// Of `charged`, what no lot covered (an outage charge's overdraft); 0 otherwise.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overdrawn: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted {
    pub fits: bool,
    /// The decline a Reserve would get, if any.
    pub decline: Option<DeclineReason>,
    pub amount: i64,
    pub available: i64,
    pub user_remaining: Option<i64>,
    /// The category's remaining budget, when a category with a budget was given.
    pub category_remaining: Option<i64>,
    pub units_that_fit: i64,
}

impl Quoted {
    /// What a Reserve of `amount` would meet, given the account's available credit, the user's
    /// remaining limit and the category's remaining budget (checked in that order, as Reserve
    /// does), and how many `unit`s fit.
    pub fn evaluate(
        available: i64,
        user_remaining: Option<i64>,
        category_remaining: Option<i64>,
        amount: i64,
        unit: i64,
    ) -> Self {
        let decline = if available < amount {
            Some(DeclineReason::InsufficientCredit)
        } else if user_remaining.is_some_and(|remaining| remaining < amount) {
            Some(DeclineReason::UserLimitReached)
        } else if category_remaining.is_some_and(|remaining| remaining < amount) {
            Some(DeclineReason::CategoryBudgetReached)
        } else {
            None
        };
        let budget = [user_remaining, category_remaining].into_iter().flatten().fold(available, i64::min);
        Self {
            fits: decline.is_none(),
            decline,
            amount,
            available,
            user_remaining,
            category_remaining,
            units_that_fit: budget / unit,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanSet {
    pub cycle: Cycle,
    pub totals: Totals,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub lot: u64,
    pub expires_ms: Millis,
    pub totals: Totals,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Balance {
    pub totals: Totals,
    pub cycle: Cycle,
    pub user: Option<UserView>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountView {
    pub id: AccountId,
    pub plan: Option<Plan>,
    pub cycle: Cycle,
    pub totals: Totals,
    /// Live lots in burn order.
    pub lots: Vec<LotView>,
    pub trial_used: bool,
    pub users: Vec<UserView>,
    pub open_reservations: i64,
    /// Every category the account has used or set a budget for, by name.
    pub categories: Vec<CategoryView>,
}

/// A remembered answer, replayed on a retry with the same request id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Reserve(Decision<Reserved>),
    Commit(Decision<Committed>),
    Extend(Decision<Extended>),
    Release(Decision<Released>),
    Charge(Decision<Charged>),
    SetPlan(Decision<PlanSet>),
    Grant(Decision<Granted>),
    StartTrial(Decision<Granted>),
    SetUserLimit(Decision<UserView>),
    SetCategoryBudget(Decision<CategoryView>),
}
