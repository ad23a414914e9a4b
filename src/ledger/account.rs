//! One account's state and the primitive moves on it: draw credits from lots in burn order,
//! return them, close a reservation, and catch up with time (expire holds, expire lots, renew
//! the cycle). Operations in `model` are built from these; every primitive keeps the account's
//! counters and emits its event in the same step.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::answer::{Answer, CategoryView, Decline, DeclineReason, LotView, ReservationView, Totals, UserView};
use super::command::{Fingerprint, Partial, Plan};
use super::cycle::{Cycle, calendar_month, cycle_containing};
use super::event::{Draw, Event, EventKind, draws_total};
use super::types::{
    AccountId, BusinessKey, Category, Labels, LotKind, Millis, RequestId, ReservationId, ReservationState, UserId,
};

#[derive(Clone, Debug)]
pub(super) struct Lot {
    pub kind: LotKind,
    pub granted: i64,
    pub remaining: i64,
    pub granted_ms: Millis,
    pub expires_ms: Millis,
    /// Granted by the plan schedule (plan and recurring add-on lots), so a change of schedule
    /// ends it.
    pub from_plan: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Reservation {
    pub user: UserId,
    pub category: Category,
    pub state: ReservationState,
    pub reserved: i64,
    pub committed: i64,
    /// What is still held, per lot, in burn order. Empty once closed.
    pub draws: Vec<Draw>,
    pub returned: i64,
    pub commit_count: i64,
    pub created_ms: Millis,
    pub deadline_ms: Millis,
    pub closed_ms: Option<Millis>,
    pub labels: Labels,
    /// The request that opened it: its answer is remembered as long as the hold lives.
    pub opened_by: Option<RequestId>,
    /// Answers to Commit, Extend and Release calls on it, by request id: remembered as long as
    /// the reservation is (open, then the retention period past its close).
    pub requests: HashMap<RequestId, Remembered>,
    /// The cycle (generation) this reservation's user usage was counted in, and how much of
    /// it is still counted there (see `Account::count_usage`).
    pub usage_generation: u64,
    pub usage_counted: i64,
}

impl Reservation {
    pub fn held(&self) -> i64 {
        draws_total(&self.draws)
    }
}

#[derive(Clone, Debug, Default)]
pub(super) struct UserState {
    pub limit: Option<i64>,
    /// Held or spent this cycle.
    pub used: i64,
}

impl UserState {
    pub fn remaining(&self) -> Option<i64> {
        self.limit.map(|limit| (limit - self.used).max(0))
    }
}

#[derive(Clone, Debug)]
pub(super) struct Remembered {
    pub fingerprint: Fingerprint,
    pub answer: Answer,
    /// Account-scoped requests: forgotten after this instant (retention past the call, or past
    /// the deadline of the reservation a Reserve opened). Unused for reservation-scoped ones.
    pub keep_until_ms: Millis,
}

#[derive(Clone, Debug)]
pub(super) struct Account {
    pub id: AccountId,
    pub plan: Option<Plan>,
    pub cycle: Cycle,
    /// Counts cycle starts (renewals and schedule changes). User usage is per generation, not
    /// per start instant: a schedule change may restart a cycle at the same instant.
    pub cycle_generation: u64,
    /// Plan and recurring add-on credits granted by the plan this cycle, so that raising the
    /// plan again after lowering it grants only what this cycle has not had yet.
    pub cycle_plan_granted: i64,
    pub cycle_addon_granted: i64,
    /// Live lots only; an expired lot is removed.
    pub lots: BTreeMap<u64, Lot>,
    pub last_lot: u64,
    pub last_reservation: u64,
    pub reservations: BTreeMap<u64, Reservation>,
    /// Open reservations by deadline.
    pub deadlines: BTreeSet<(Millis, u64)>,
    pub users: BTreeMap<UserId, UserState>,
    /// Per category: its budget per cycle (`limit`) and what it held or spent this cycle,
    /// counted exactly as a user's.
    pub categories: BTreeMap<Category, UserState>,
    pub trial_used: bool,
    /// Business keys charged this cycle.
    pub charged_keys: HashSet<BusinessKey>,
    pub requests: HashMap<RequestId, Remembered>,
    pub granted: i64,
    pub held: i64,
    pub spent: i64,
    pub expired: i64,
    /// Spent by outage charges beyond the lots, not yet repaid (granted + owed = available +
    /// held + spent + expired).
    pub owed: i64,
    pub last_event: u64,
}

/// What an outage charge spent beyond the lots, and for whom.
pub(super) struct OutageSpend<'a> {
    pub user: &'a UserId,
    pub category: &'a Category,
    pub amount: i64,
    pub business_key: Option<&'a BusinessKey>,
    pub labels: &'a Labels,
}

/// Where an operation's events go, stamped with the request that caused them.
pub(super) struct Sink<'a> {
    pub out: &'a mut Vec<Event>,
    pub request: Option<&'a RequestId>,
}

impl Account {
    pub fn new(id: AccountId, now: Millis) -> Self {
        Self {
            id,
            plan: None,
            cycle: calendar_month(now),
            cycle_generation: 0,
            cycle_plan_granted: 0,
            cycle_addon_granted: 0,
            lots: BTreeMap::new(),
            last_lot: 0,
            last_reservation: 0,
            reservations: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            users: BTreeMap::new(),
            categories: BTreeMap::new(),
            trial_used: false,
            charged_keys: HashSet::new(),
            requests: HashMap::new(),
            granted: 0,
            held: 0,
            spent: 0,
            expired: 0,
            owed: 0,
            last_event: 0,
        }
    }

    pub fn emit(&mut self, sink: &mut Sink<'_>, at_ms: Millis, kind: EventKind) {
        self.last_event += 1;
        sink.out.push(Event {
            account: self.id.clone(),
            seq: self.last_event,
            at_ms,
            request_id: sink.request.map(|request| request.as_str().to_owned()),
            kind,
        });
    }

    pub fn available(&self) -> i64 {
        self.lots.values().map(|lot| lot.remaining).sum()
    }

    pub fn totals(&self) -> Totals {
        Totals {
            granted: self.granted,
            available: self.available(),
            held: self.held,
            spent: self.spent,
            expired: self.expired,
            owed: self.owed,
        }
    }

    pub fn user_remaining(&self, user: &UserId) -> Option<i64> {
        self.users.get(user).and_then(UserState::remaining)
    }

    pub fn category_remaining(&self, category: &Category) -> Option<i64> {
        self.categories.get(category).and_then(UserState::remaining)
    }

    /// What a hold of `amount` for `user` in `category` asks for: the whole amount, or with
    /// `partial` as many whole units as the available credit, the user's remaining limit and
    /// the category's remaining budget leave room for.
    pub fn hold_amount(&self, user: &UserId, category: &Category, amount: i64, partial: Option<Partial>) -> i64 {
        match partial {
            None => amount,
            Some(partial) => {
                let limits = [self.user_remaining(user), self.category_remaining(category)];
                let room = limits.into_iter().flatten().fold(self.available(), i64::min);
                partial.amount(amount, room)
            }
        }
    }

    /// The checks every new hold passes, in order: the account's credit, the user's limit,
    /// then the category's budget.
    /// (The decline is boxed: declines are rare, and the Ok path stays small.)
    pub fn admit(&self, user: &UserId, category: &Category, amount: i64) -> Result<(), Box<Decline>> {
        let available = self.available();
        let user_remaining = self.user_remaining(user);
        let decline = |reason| Decline {
            reason,
            requested: amount,
            available,
            user_remaining,
            held: 0,
            reservation_state: None,
            account: self.id.clone(),
            user: Some(user.as_str().to_owned()),
            reservation: None,
            category: None,
            category_remaining: None,
        };
        if available < amount {
            return Err(Box::new(decline(DeclineReason::InsufficientCredit)));
        }
        if user_remaining.is_some_and(|remaining| remaining < amount) {
            return Err(Box::new(decline(DeclineReason::UserLimitReached)));
        }
        let category_remaining = self.category_remaining(category);
        if category_remaining.is_some_and(|remaining| remaining < amount) {
            return Err(Box::new(Decline {
                category: Some(category.as_str().to_owned()),
                category_remaining,
                ..decline(DeclineReason::CategoryBudgetReached)
            }));
        }
        Ok(())
    }

    /// A decline about a reservation's hold, deadline or state.
    pub fn reservation_decline(&self, seq: u64, reason: DeclineReason, requested: i64) -> Decline {
        let reservation = &self.reservations[&seq];
        Decline {
            reason,
            requested,
            available: self.available(),
            user_remaining: self.user_remaining(&reservation.user),
            held: reservation.held(),
            reservation_state: Some(reservation.state),
            account: self.id.clone(),
            user: Some(reservation.user.as_str().to_owned()),
            reservation: Some(Box::new(self.reservation_view(seq))),
            category: None,
            category_remaining: None,
        }
    }

    /// Takes `amount` from live lots, soonest expiry first (ties: kind order, then age).
    /// The caller has checked that the lots cover it.
    pub fn draw(&mut self, amount: i64) -> Vec<Draw> {
        let mut order: Vec<(Millis, LotKind, u64)> = self
            .lots
            .iter()
            .filter(|(_, lot)| lot.remaining > 0)
            .map(|(id, lot)| (lot.expires_ms, lot.kind, *id))
            .collect();
        order.sort_unstable();
        let mut draws = Vec::new();
        let mut left = amount;
        for (_, _, id) in order {
            if left == 0 {
                break;
            }
            let lot = self.lots.get_mut(&id).expect("lot listed above");
            let take = left.min(lot.remaining);
            lot.remaining -= take;
            left -= take;
            draws.push(Draw { lot: id, amount: take });
        }
        assert_eq!(left, 0, "draw of {amount} beyond the available credit");
        draws
    }

    /// Grants a new lot and records it.
    pub fn grant(
        &mut self,
        sink: &mut Sink<'_>,
        kind: LotKind,
        amount: i64,
        at_ms: Millis,
        expires_ms: Millis,
        from_plan: bool,
    ) -> u64 {
        self.last_lot += 1;
        let id = self.last_lot;
        // An overdraft is repaid first, from the new lot: it starts with the rest.
        let repaid = amount.min(self.owed);
        self.lots.insert(
            id,
            Lot { kind, granted: amount, remaining: amount - repaid, granted_ms: at_ms, expires_ms, from_plan },
        );
        self.granted += amount;
        self.owed -= repaid;
        self.emit(sink, at_ms, EventKind::LotGranted { lot: id, kind, amount, expires_ms, from_plan });
        if repaid > 0 {
            self.emit(sink, at_ms, EventKind::Repaid { lot: id, amount: repaid });
        }
        id
    }

    /// Spends `amount` that no lot covers (an outage charge's overdraft): the account owes it,
    /// and it counts for the user and the category this cycle like a commit.
    pub fn overdraw(&mut self, sink: &mut Sink<'_>, at_ms: Millis, reservation: u64, spend: OutageSpend<'_>) {
        let OutageSpend { user, category, amount, business_key, labels } = spend;
        self.owed += amount;
        self.spent += amount;
        self.users.entry(user.clone()).or_default().used += amount;
        self.categories.entry(category.clone()).or_default().used += amount;
        let event = EventKind::Overdrawn {
            reservation,
            user: user.as_str().to_owned(),
            category: category.as_str().to_owned(),
            cycle_start_ms: self.cycle.start_ms,
            amount,
            business_key: business_key.map(|key| key.as_str().to_owned()),
            labels: labels.to_map(),
        };
        self.emit(sink, at_ms, event);
    }

    /// Counts a new hold of `amount` against the reservation's user this cycle.
    pub fn count_usage(&mut self, seq: u64, amount: i64) {
        let generation = self.cycle_generation;
        let reservation = self.reservations.get_mut(&seq).expect("reservation exists");
        if reservation.usage_generation != generation {
            reservation.usage_generation = generation;
            reservation.usage_counted = 0;
        }
        reservation.usage_counted += amount;
        self.users.entry(reservation.user.clone()).or_default().used += amount;
        self.categories.entry(reservation.category.clone()).or_default().used += amount;
    }

    /// Un-counts returned credits, but only what this reservation counted in this cycle.
    pub fn uncount_usage(&mut self, seq: u64, returned: i64) {
        let generation = self.cycle_generation;
        let reservation = self.reservations.get_mut(&seq).expect("reservation exists");
        if reservation.usage_generation != generation {
            return;
        }
        let back = returned.min(reservation.usage_counted);
        reservation.usage_counted -= back;
        if let Some(user) = self.users.get_mut(&reservation.user) {
            user.used -= back;
        }
        // Clamped: a hold made before category budgets existed (a format-1 snapshot, a Redis
        // carried over) counted its user but not its category; returning it must not push the
        // category below zero. The category is then under-counted until the next renewal.
        if let Some(category) = self.categories.get_mut(&reservation.category) {
            category.used = (category.used - back).max(0);
        }
    }

    /// Closes an open reservation at `at_ms` (now, or its deadline when it expired): what it
    /// still holds goes back to its lots if they were alive at that instant, otherwise to expired.
    /// Deciding by the close instant, not by when the sweep ran, keeps the record independent of
    /// sweep timing. Returns the amount released.
    pub fn close(&mut self, sink: &mut Sink<'_>, seq: u64, state: ReservationState, at_ms: Millis) -> i64 {
        let reservation = self.reservations.get_mut(&seq).expect("reservation exists");
        debug_assert!(reservation.state.is_open(), "closing a closed reservation");
        let draws = std::mem::take(&mut reservation.draws);
        let total = draws_total(&draws);
        reservation.state = state;
        reservation.returned = total;
        reservation.closed_ms = Some(at_ms);
        let deadline = reservation.deadline_ms;
        self.deadlines.remove(&(deadline, seq));
        let mut returned = Vec::new();
        let mut expired = 0;
        for draw in draws {
            match self.lots.get_mut(&draw.lot).filter(|lot| lot.expires_ms > at_ms) {
                Some(lot) => {
                    lot.remaining += draw.amount;
                    returned.push(draw);
                }
                None => expired += draw.amount,
            }
        }
        self.held -= total;
        self.expired += expired;
        self.uncount_usage(seq, total);
        self.emit(sink, at_ms, EventKind::Closed { reservation: seq, state, returned, expired });
        total
    }

    /// Brings the account up to `now` by replaying what time did, in time order: lots expire at
    /// their expiry, holds at their deadline, and cycles renew at their end — every cycle that
    /// began, even one that ended again before `now`. At one instant lots go first (a lot
    /// expiring at t is not alive at t), then holds, then the renewal. So the record is the same
    /// however late this runs. Idempotent; every operation starts with it, and the background
    /// sweep calls it so that nothing waits for traffic.
    pub fn catch_up(&mut self, sink: &mut Sink<'_>, now: Millis) {
        #[derive(PartialEq, Eq, PartialOrd, Ord)]
        enum Due {
            Lot(u64),
            Hold(u64),
            Renewal,
        }
        loop {
            let lot =
                self.lots.iter().filter(|(_, lot)| lot.expires_ms <= now).map(|(id, lot)| (lot.expires_ms, *id)).min();
            let hold = self.deadlines.first().copied().filter(|(deadline, _)| *deadline <= now);
            let renewal = (self.cycle.end_ms <= now).then_some(self.cycle.end_ms);
            let next = [
                lot.map(|(at, id)| (at, Due::Lot(id))),
                hold.map(|(at, seq)| (at, Due::Hold(seq))),
                renewal.map(|at| (at, Due::Renewal)),
            ]
            .into_iter()
            .flatten()
            .min();
            match next {
                None => return,
                Some((at, Due::Lot(id))) => self.expire_lot(sink, id, at),
                Some((at, Due::Hold(seq))) => {
                    self.close(sink, seq, ReservationState::Expired, at);
                }
                Some((at, Due::Renewal)) => {
                    let cycle = match &self.plan {
                        Some(plan) => cycle_containing(plan.anchor_ms, plan.period, at),
                        None => calendar_month(at),
                    };
                    self.start_cycle(sink, cycle);
                }
            }
        }
    }

    pub fn expire_lot(&mut self, sink: &mut Sink<'_>, id: u64, at_ms: Millis) {
        let lot = self.lots.remove(&id).expect("lot exists");
        self.expired += lot.remaining;
        self.emit(sink, at_ms, EventKind::LotExpired { lot: id, amount: lot.remaining });
    }

    /// Begins `cycle`: user usage and business keys reset, and the plan's lots are granted.
    pub fn start_cycle(&mut self, sink: &mut Sink<'_>, cycle: Cycle) {
        self.cycle = cycle;
        self.cycle_generation += 1;
        self.cycle_plan_granted = 0;
        self.cycle_addon_granted = 0;
        self.charged_keys.clear();
        for usage in self.users.values_mut().chain(self.categories.values_mut()) {
            usage.used = 0;
        }
        self.emit(sink, cycle.start_ms, EventKind::CycleStarted { cycle });
        if let Some(plan) = self.plan.clone() {
            self.grant_plan_lots(sink, plan.plan_credits, plan.addon_credits, cycle.start_ms);
        }
    }

    /// Grants plan and recurring add-on credits (each only when positive) for the rest of the cycle.
    pub fn grant_plan_lots(&mut self, sink: &mut Sink<'_>, plan_credits: i64, addon_credits: i64, at_ms: Millis) {
        let expires = self.cycle.end_ms;
        self.cycle_plan_granted += plan_credits;
        self.cycle_addon_granted += addon_credits;
        for (kind, amount) in [(LotKind::Plan, plan_credits), (LotKind::Addon, addon_credits)] {
            if amount > 0 {
                self.grant(sink, kind, amount, at_ms, expires, true);
            }
        }
    }

    pub fn reservation_view(&self, seq: u64) -> ReservationView {
        let r = &self.reservations[&seq];
        ReservationView {
            id: ReservationId { account: self.id.clone(), seq },
            user: r.user.as_str().to_owned(),
            category: r.category.as_str().to_owned(),
            state: r.state,
            reserved: r.reserved,
            committed: r.committed,
            held: r.held(),
            returned: r.returned,
            commit_count: r.commit_count,
            created_ms: r.created_ms,
            deadline_ms: r.deadline_ms,
            closed_ms: r.closed_ms,
            labels: r.labels.to_map(),
        }
    }

    /// Live lots in burn order.
    pub fn lot_views(&self) -> Vec<LotView> {
        let mut lots: Vec<LotView> = self
            .lots
            .iter()
            .map(|(id, lot)| LotView {
                id: *id,
                kind: lot.kind,
                granted: lot.granted,
                remaining: lot.remaining,
                granted_ms: lot.granted_ms,
                expires_ms: lot.expires_ms,
            })
            .collect();
        lots.sort_by_key(|lot| (lot.expires_ms, lot.kind, lot.id));
        lots
    }

    pub fn category_view(&self, category: &Category) -> CategoryView {
        let state = self.categories.get(category).cloned().unwrap_or_default();
        CategoryView {
            category: category.as_str().to_owned(),
            budget: state.limit,
            used: state.used,
            remaining: state.remaining(),
        }
    }

    pub fn user_view(&self, user: &UserId) -> UserView {
        let state = self.users.get(user).cloned().unwrap_or_default();
        UserView { user: user.as_str().to_owned(), limit: state.limit, used: state.used, remaining: state.remaining() }
    }

    /// Forgets closed reservations and request ids past their retention.
    pub fn purge(&mut self, now: Millis, retention_ms: Millis) {
        self.requests.retain(|_, remembered| remembered.keep_until_ms > now);
        self.reservations.retain(|_, r| r.closed_ms.is_none_or(|closed| closed.saturating_add(retention_ms) > now));
    }
}
