//! The projection: every account rebuilt from its events alone, the second opinion on the ledger.

use super::*;

// ---------------------------------------------------------------------------------------------
// The projection: every account rebuilt from its events alone.

#[derive(Clone, Debug)]
pub(super) struct LotState {
    pub(super) kind: LotKind,
    pub(super) expires_ms: Millis,
    pub(super) remaining: i64,
    /// Granted by the plan schedule (a cycle start or a plan change), so a schedule change ends it.
    pub(super) from_plan: bool,
}

/// A plan lot an operation must grant next: kind, amount, expiry, at, request id.
pub(super) type PlanLot = (LotKind, i64, Millis, Millis, Option<String>);

#[derive(Clone, Debug)]
pub(super) struct HoldState {
    pub(super) user: String,
    pub(super) category: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) created_ms: Millis,
    pub(super) state: ReservationState,
    pub(super) reserved: i64,
    pub(super) committed: i64,
    pub(super) returned: i64,
    pub(super) commit_count: i64,
    /// What is still held, per lot.
    pub(super) parts: BTreeMap<u64, i64>,
    pub(super) deadline_ms: Millis,
    pub(super) closed_ms: Option<Millis>,
    /// Seen gone from the ledger (forgotten after retention).
    pub(super) purged: bool,
    /// The cycle (by epoch) this hold's user usage was last counted in, and how much of it.
    pub(super) usage_epoch: u64,
    pub(super) usage_counted: i64,
}

impl HoldState {
    pub(super) fn held(&self) -> i64 {
        self.parts.values().sum()
    }
}

#[derive(Debug, Default)]
pub(super) struct Projection {
    pub(super) last_seq: u64,
    pub(super) granted: i64,
    pub(super) held: i64,
    pub(super) spent: i64,
    pub(super) expired: i64,
    /// Overdrawn by outage charges, not yet repaid.
    pub(super) owed: i64,
    /// A lot granted while something was owed: its Repaid event must follow at once.
    pub(super) expect_repaid: Option<(u64, i64)>,
    pub(super) last_lot: u64,
    pub(super) lots: BTreeMap<u64, LotState>,
    pub(super) last_reservation: u64,
    pub(super) holds: BTreeMap<u64, HoldState>,
    pub(super) charged_keys: BTreeSet<String>,
    /// Per user: limit, and what was held or spent this cycle.
    pub(super) users: BTreeMap<String, (Option<i64>, i64)>,
    /// Per category: (budget, used this cycle), counted as users are.
    pub(super) categories: BTreeMap<String, (Option<i64>, i64)>,
    /// Counts CycleStarted events: usage belongs to the cycle it was counted in.
    pub(super) epoch: u64,
    pub(super) plan: Option<Plan>,
    /// The cycle of the last CycleStarted event (none before the first).
    pub(super) cycle: Option<Cycle>,
    /// The cycle the ledger showed at the last check.
    pub(super) seen_cycle: Option<Cycle>,
    /// Plan and add-on credits the plan granted this cycle: a cycle start sets them to what it
    /// grants, a plan change on the same schedule grants only what they lack.
    pub(super) plan_granted: (i64, i64),
    /// The plan lots the last PlanSet or CycleStarted must be followed by, in order.
    pub(super) pending_plan_lots: VecDeque<PlanLot>,
    /// A schedule change's PlanSet was seen: its CycleStarted must follow.
    pub(super) expect_cycle_start: Option<Cycle>,
    /// Plan lots were ended early: only more of them, then a schedule change's PlanSet, may follow.
    pub(super) ending_plan_lots: bool,
    /// Lots gone (expired, or ended by a schedule change), and when.
    pub(super) removed_lots: BTreeMap<u64, Millis>,
}

impl Projection {
    pub(super) fn available(&self) -> i64 {
        self.lots.values().map(|lot| lot.remaining).sum()
    }

    pub(super) fn totals(&self) -> Totals {
        Totals {
            granted: self.granted,
            available: self.available(),
            held: self.held,
            spent: self.spent,
            expired: self.expired,
            owed: self.owed,
        }
    }

    pub(super) fn apply(&mut self, event: &Event, now: Millis) -> Result<(), String> {
        ensure!(event.seq == self.last_seq + 1, "event seq {} after {}", event.seq, self.last_seq);
        self.last_seq = event.seq;
        ensure!(event.at_ms <= now, "event at {} after now {now}", event.at_ms);
        if let Some((lot, amount)) = self.expect_repaid.take() {
            let repaid = EventKind::Repaid { lot, amount };
            ensure!(event.kind == repaid, "lot {lot} granted while {amount} was owed, then {:?}", event.kind);
        } else {
            self.check_plan_sequence(event)?;
        }
        match &event.kind {
            EventKind::PlanSet { plan, cycle } => self.plan_set(event, plan, *cycle)?,
            EventKind::CategoryBudgetSet { category, budget } => {
                self.categories.entry(category.clone()).or_default().0 = *budget;
            }
            EventKind::CycleStarted { cycle } => {
                // A schedule change starts the cycle containing now; a renewal starts the cycle
                // right after the last one, so a catch-up over a long gap starts every cycle in
                // turn (each at or before now).
                match self.expect_cycle_start.take() {
                    Some(expected) => ensure!(*cycle == expected, "cycle {cycle:?} started, {expected:?} expected"),
                    None => {
                        if let Some(previous) = self.cycle {
                            ensure!(cycle.start_ms == previous.end_ms, "cycle {cycle:?} does not follow {previous:?}");
                        }
                        ensure!(cycle.start_ms <= now, "cycle {cycle:?} started after now {now}");
                    }
                }
                ensure!(event.at_ms == cycle.start_ms, "cycle {cycle:?} started at {}", event.at_ms);
                self.cycle = Some(*cycle);
                self.charged_keys.clear();
                self.epoch += 1;
                self.users.values_mut().chain(self.categories.values_mut()).for_each(|(_, used)| *used = 0);
                // A cycle start grants the plan afresh, and that is what this cycle has had.
                let credits = self.plan.as_ref().map_or((0, 0), |plan| (plan.plan_credits, plan.addon_credits));
                self.plan_granted = credits;
                self.expect_plan_lots(event, credits, cycle.end_ms);
            }
            EventKind::LotGranted { lot, kind, amount, expires_ms, .. } => {
                ensure!(*amount > 0 && *lot > self.last_lot, "lot {lot} granted {amount}");
                // Alive when granted (a skipped cycle's plan lot may have died again before now).
                ensure!(*expires_ms > event.at_ms, "lot {lot} granted already dead (expires {expires_ms})");
                let granted = (*kind, *amount, *expires_ms, event.at_ms, event.request_id.clone());
                let from_plan = match self.pending_plan_lots.pop_front() {
                    Some(expected) => {
                        ensure!(granted == expected, "lot {lot} granted as {granted:?}, the plan grants {expected:?}");
                        true
                    }
                    None => {
                        ensure!(*kind != LotKind::Plan, "plan lot {lot} granted outside a plan grant");
                        false
                    }
                };
                self.last_lot = *lot;
                let state = LotState { kind: *kind, expires_ms: *expires_ms, remaining: *amount, from_plan };
                self.lots.insert(*lot, state);
                self.granted += amount;
                // What is owed is repaid first, from this lot.
                let repaid = (*amount).min(self.owed);
                if repaid > 0 {
                    self.expect_repaid = Some((*lot, repaid));
                }
            }
            EventKind::Repaid { lot, amount } => {
                let state = self.lots.get_mut(lot).ok_or(format!("unknown lot {lot} repaid"))?;
                state.remaining -= amount;
                self.owed -= amount;
            }
            EventKind::Overdrawn { amount, user, category, business_key, .. } => {
                ensure!(*amount > 0, "overdrawn {amount}");
                self.owed += amount;
                self.spent += amount;
                self.users.entry(user.clone()).or_default().1 += amount;
                self.categories.entry(category.clone()).or_default().1 += amount;
                if let Some(key) = business_key.as_deref() {
                    // The charge's covered part, if any, charged the key just before.
                    self.charged_keys.insert(key.to_owned());
                }
            }
            EventKind::LotExpired { lot, amount } => {
                let state = self.lots.remove(lot).ok_or(format!("unknown lot {lot} expired"))?;
                self.removed_lots.insert(*lot, event.at_ms);
                ensure!(state.remaining == *amount, "lot {lot} expired with {amount}, {} left", state.remaining);
                ensure!(event.at_ms <= state.expires_ms, "lot {lot} expired late");
                if event.at_ms < state.expires_ms {
                    ensure!(state.from_plan, "lot {lot}, not the plan's, ended before its expiry");
                    self.ending_plan_lots = true;
                }
                self.expired += amount;
            }
            EventKind::UserLimitSet { user, limit } => self.users.entry(user.clone()).or_default().0 = *limit,
            EventKind::Reserved { reservation, user, category, amount, draws, deadline_ms, labels } => {
                ensure!(*reservation > self.last_reservation, "reservation {reservation} not new");
                self.last_reservation = *reservation;
                self.take_from_lots(draws, *amount)?;
                let hold = HoldState {
                    user: user.clone(),
                    category: category.clone(),
                    labels: labels.clone(),
                    created_ms: event.at_ms,
                    state: ReservationState::Held,
                    reserved: *amount,
                    committed: 0,
                    returned: 0,
                    commit_count: 0,
                    parts: draws.iter().map(|draw| (draw.lot, draw.amount)).collect(),
                    deadline_ms: *deadline_ms,
                    closed_ms: None,
                    purged: false,
                    usage_epoch: self.epoch,
                    usage_counted: *amount,
                };
                self.holds.insert(*reservation, hold);
                self.users.entry(user.clone()).or_default().1 += amount;
                self.categories.entry(category.clone()).or_default().1 += amount;
                self.held += amount;
            }
            EventKind::Extended { reservation, amount, draws, deadline_ms } => {
                self.take_from_lots(draws, *amount)?;
                let epoch = self.epoch;
                let hold = self.open_hold(*reservation)?;
                ensure!(*deadline_ms >= hold.deadline_ms, "extend moved the deadline of {reservation} earlier");
                hold.deadline_ms = *deadline_ms;
                hold.reserved += amount;
                for draw in draws {
                    *hold.parts.entry(draw.lot).or_default() += draw.amount;
                }
                if hold.usage_epoch != epoch {
                    (hold.usage_epoch, hold.usage_counted) = (epoch, 0);
                }
                hold.usage_counted += amount;
                let (user, category) = (hold.user.clone(), hold.category.clone());
                self.users.entry(user).or_default().1 += amount;
                self.categories.entry(category).or_default().1 += amount;
                self.held += amount;
            }
            EventKind::Committed { reservation, amount, draws, business_key, already_charged, .. } => {
                self.commit(*reservation, *amount, draws)?;
                self.charge_key(business_key.as_deref(), *already_charged, *amount)?;
            }
            EventKind::Closed { reservation, state, returned, expired } => {
                self.close(event.at_ms, *reservation, *state, returned, *expired)?;
            }
        }
        Ok(())
    }

    /// Plan lots follow their PlanSet or CycleStarted at once; a schedule change's PlanSet is
    /// followed by its CycleStarted; plan lots ended early are followed by a schedule change.
    pub(super) fn check_plan_sequence(&self, event: &Event) -> Result<(), String> {
        if let Some(expected) = self.pending_plan_lots.front() {
            ensure!(matches!(event.kind, EventKind::LotGranted { .. }), "plan grant {expected:?} missing");
        }
        if let Some(cycle) = self.expect_cycle_start {
            let started = matches!(event.kind, EventKind::CycleStarted { cycle: started } if started == cycle);
            ensure!(started, "schedule change without its cycle start {cycle:?}");
        }
        if self.ending_plan_lots {
            let next = matches!(event.kind, EventKind::LotExpired { .. } | EventKind::PlanSet { .. });
            ensure!(next, "plan lots ended early without a schedule change");
        }
        Ok(())
    }

    pub(super) fn expect_plan_lots(
        &mut self,
        event: &Event,
        (plan_credits, addon_credits): (i64, i64),
        expires_ms: Millis,
    ) {
        for (kind, amount) in [(LotKind::Plan, plan_credits), (LotKind::Addon, addon_credits)] {
            if amount > 0 {
                self.pending_plan_lots.push_back((kind, amount, expires_ms, event.at_ms, event.request_id.clone()));
            }
        }
    }

    /// A plan change. On the same schedule (period and anchor) it grants, for the rest of this
    /// cycle, only what the cycle has not had from the plan yet: lowering and raising it again
    /// grants nothing twice. A schedule change ends the plan's lots (just before) and starts the
    /// cycle its new schedule puts now in (just after).
    pub(super) fn plan_set(&mut self, event: &Event, plan: &Plan, cycle: Cycle) -> Result<(), String> {
        let same_schedule =
            self.plan.as_ref().is_some_and(|old| old.period == plan.period && old.anchor_ms == plan.anchor_ms);
        if same_schedule {
            ensure!(!self.ending_plan_lots, "plan lots ended by a change on the same schedule");
            ensure!(self.cycle == Some(cycle), "plan change on the same schedule names cycle {cycle:?}");
            let (plan_had, addon_had) = self.plan_granted;
            let grants = ((plan.plan_credits - plan_had).max(0), (plan.addon_credits - addon_had).max(0));
            self.plan_granted = (plan_had + grants.0, addon_had + grants.1);
            self.expect_plan_lots(event, grants, cycle.end_ms);
        } else {
            let left: Vec<u64> = self.lots.iter().filter(|(_, lot)| lot.from_plan).map(|(id, _)| *id).collect();
            ensure!(left.is_empty(), "schedule change left the old plan's lots {left:?}");
            let expected = cycle_containing(plan.anchor_ms, plan.period, event.at_ms);
            ensure!(cycle == expected, "schedule change to cycle {cycle:?}, expected {expected:?}");
            self.expect_cycle_start = Some(cycle);
        }
        self.ending_plan_lots = false;
        self.plan = Some(plan.clone());
        Ok(())
    }

    /// Whether an operation's events ended in the middle of a plan change or cycle start.
    pub(super) fn plan_events_complete(&self) -> Result<(), String> {
        ensure!(
            self.pending_plan_lots.is_empty() && self.expect_cycle_start.is_none() && !self.ending_plan_lots,
            "plan events stopped short: lots {:?}, cycle {:?}, ending {}",
            self.pending_plan_lots,
            self.expect_cycle_start,
            self.ending_plan_lots
        );
        Ok(())
    }

    pub(super) fn open_hold(&mut self, reservation: u64) -> Result<&mut HoldState, String> {
        let hold = self.holds.get_mut(&reservation).ok_or(format!("event on unknown reservation {reservation}"))?;
        ensure!(hold.state == ReservationState::Held, "event on closed reservation {reservation}");
        Ok(hold)
    }

    /// Takes draws from lots, checking they cover `amount` and follow the burn order: soonest
    /// expiry first, then kind order, then age; every lot before the last one drawn is emptied.
    pub(super) fn take_from_lots(&mut self, draws: &[Draw], amount: i64) -> Result<(), String> {
        ensure!(draws_total(draws) == amount, "draws {draws:?} do not total {amount}");
        let mut last_key = None;
        for draw in draws {
            let lot = self.lots.get_mut(&draw.lot).ok_or(format!("draw from unknown lot {}", draw.lot))?;
            ensure!(draw.amount > 0 && draw.amount <= lot.remaining, "draw {draw:?} from {} left", lot.remaining);
            lot.remaining -= draw.amount;
            last_key = last_key.max(Some((lot.expires_ms, lot.kind, draw.lot)));
        }
        let unburnt =
            self.lots.iter().find(|(id, lot)| lot.remaining > 0 && Some((lot.expires_ms, lot.kind, **id)) < last_key);
        if let Some((id, _)) = unburnt {
            return Err(format!("draws {draws:?} skipped lot {id}, which burns first"));
        }
        Ok(())
    }

    pub(super) fn commit(&mut self, reservation: u64, amount: i64, draws: &[Draw]) -> Result<(), String> {
        ensure!(draws_total(draws) == amount, "commit draws {draws:?} do not total {amount}");
        let hold = self.open_hold(reservation)?;
        for draw in draws {
            let part = hold.parts.get_mut(&draw.lot).ok_or(format!("commit from lot {} not held", draw.lot))?;
            ensure!(draw.amount > 0 && draw.amount <= *part, "commit draw {draw:?} beyond the held {part}");
            *part -= draw.amount;
        }
        hold.parts.retain(|_, part| *part > 0);
        hold.committed += amount;
        hold.commit_count += 1;
        ensure!(hold.committed <= hold.reserved, "reservation {reservation} committed beyond reserved");
        self.held -= amount;
        self.spent += amount;
        Ok(())
    }

    pub(super) fn charge_key(&mut self, key: Option<&str>, already_charged: bool, amount: i64) -> Result<(), String> {
        match (key, already_charged) {
            (Some(key), false) => {
                ensure!(self.charged_keys.insert(key.to_owned()), "business key {key} charged twice in a cycle");
            }
            (Some(key), true) => {
                ensure!(self.charged_keys.contains(key), "business key {key} said charged but was not");
                ensure!(amount == 0, "already-charged key {key} spent {amount}");
            }
            (None, true) => return Err("already_charged without a business key".into()),
            (None, false) => {}
        }
        Ok(())
    }

    /// Closes a hold at `at_ms` (now, or its deadline for an expiry): each part goes back to its
    /// lot if that lot is still there and alive at the close instant, otherwise it counts as
    /// expired. When a sweep noticed an expiry does not matter.
    pub(super) fn close(
        &mut self,
        at_ms: Millis,
        reservation: u64,
        state: ReservationState,
        returned: &[Draw],
        expired: i64,
    ) -> Result<(), String> {
        ensure!(state != ReservationState::Held, "reservation {reservation} closed as held");
        let (lots, removed_lots) = (&self.lots, &self.removed_lots);
        let hold = self.holds.get_mut(&reservation).ok_or(format!("unknown reservation {reservation} closed"))?;
        ensure!(hold.state == ReservationState::Held, "reservation {reservation} closed twice");
        if state == ReservationState::Expired {
            ensure!(at_ms == hold.deadline_ms, "reservation {reservation} expired at {at_ms}, not its deadline");
        }
        let parts = std::mem::take(&mut hold.parts);
        // A lot removed after the close instant was alive then: the close came too late to give
        // the part back (the ledger must close holds before it removes their lots).
        for lot in parts.keys() {
            let removed = removed_lots.get(lot).filter(|removed| **removed > at_ms);
            ensure!(removed.is_none(), "close of {reservation} at {at_ms} after its lot {lot} went at {removed:?}");
        }
        let live = |lot: &u64| lots.get(lot).is_some_and(|state| state.expires_ms > at_ms);
        let expect_returned: Vec<Draw> = parts
            .iter()
            .filter(|(lot, _)| live(lot))
            .map(|(lot, amount)| Draw { lot: *lot, amount: *amount })
            .collect();
        let expect_expired: i64 = parts.iter().filter(|(lot, _)| !live(lot)).map(|(_, amount)| amount).sum();
        let mut returned_sorted = returned.to_vec();
        returned_sorted.sort_by_key(|draw| draw.lot);
        ensure!(
            returned_sorted == expect_returned && expired == expect_expired,
            "close of {reservation}: returned {returned:?} + expired {expired}, expected {expect_returned:?} + {expect_expired}"
        );
        let total = draws_total(returned) + expired;
        hold.state = state;
        hold.returned = total;
        hold.closed_ms = Some(at_ms);
        // Returned credits no longer count against the user, in the cycle they were counted in.
        if hold.usage_epoch == self.epoch {
            let back = total.min(hold.usage_counted);
            hold.usage_counted -= back;
            self.users.get_mut(&hold.user).expect("counted user").1 -= back;
            self.categories.get_mut(&hold.category).expect("counted category").1 -= back;
        }
        for draw in returned {
            self.lots.get_mut(&draw.lot).expect("live lot").remaining += draw.amount;
        }
        self.held -= total;
        self.expired += expired;
        Ok(())
    }
}
