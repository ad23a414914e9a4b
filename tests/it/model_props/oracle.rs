//! The harness: runs each step against the ledger and checks every answer against the projection and the invariants.

use super::*;

// ---------------------------------------------------------------------------------------------
// The harness: runs steps against the ledger and checks everything after each.

/// A request that got an answer, for retries: the newest one per scope and request id.
#[derive(Clone, Debug)]
pub(super) struct Sent {
    pub(super) cmd: Cmd,
    pub(super) answer: Answer,
    pub(super) scope: RequestScope,
    /// Account scope: the first sweep at or after this instant forgets it (retention past the
    /// call, or past the deadline of the hold a Reserve opened, moved on by each Extend).
    /// Reservation scope: unused; it is remembered as long as the reservation is stored.
    pub(super) keep_until_ms: Millis,
}

/// What the harness knew before a command ran.
pub(super) struct Before {
    pub(super) account_exists: bool,
    pub(super) hold: Option<HoldState>,
    pub(super) trial_started: bool,
}

pub(super) struct Harness {
    pub(super) ledger: Ledger,
    pub(super) rules: Rules,
    pub(super) now: Millis,
    pub(super) last_sweep_ms: Option<Millis>,
    pub(super) next_request: u64,
    pub(super) projections: BTreeMap<AccountId, Projection>,
    pub(super) reservations: Vec<ReservationId>,
    pub(super) snapshots: HashMap<ReservationId, ReservationView>,
    pub(super) sent: Vec<Sent>,
    pub(super) trials: BTreeSet<AccountId>,
    /// Every event so far, for the restore check.
    pub(super) history: Vec<Event>,
    /// What the embedded engine would have kept in SQL: each account's latest snapshot (its last
    /// event, its JSON) and each remembered answer by key (the answer, its JSON).
    pub(super) kept_snapshots: HashMap<AccountId, (u64, String)>,
    pub(super) kept_answers: HashMap<(AccountId, u64, RequestId), (RememberedAnswer, String)>,
    pub(super) checks: u64,
}

impl Harness {
    pub(super) fn new() -> Self {
        Self {
            ledger: Ledger::new(RETENTION_MS).journal_answers(),
            rules: Rules::default(),
            now: start_ms(),
            last_sweep_ms: None,
            next_request: 0,
            projections: BTreeMap::new(),
            reservations: Vec::new(),
            snapshots: HashMap::new(),
            sent: Vec::new(),
            trials: BTreeSet::new(),
            history: Vec::new(),
            kept_snapshots: HashMap::new(),
            kept_answers: HashMap::new(),
            checks: 0,
        }
    }

    pub(super) fn step(&mut self, op: &Op) -> Result<(), String> {
        match op {
            Op::TimeJump { by_ms } => {
                self.now += by_ms;
                return self.check_quiet();
            }
            Op::JumpTo { target, offset_ms } => {
                self.jump_to(*target, *offset_ms);
                return self.check_quiet();
            }
            Op::Sweep { by_ms } => {
                self.now += by_ms;
                self.sweep()?;
            }
            Op::ForgetEdge { pick, offset_ms } => self.forget_edge(*pick, *offset_ms)?,
            Op::Quote { account, user, amount, unit, category } => {
                self.quote(*account, *user, *amount, *unit, *category)?
            }
            Op::Retry { pick, which } => self.retry(*pick, *which)?,
            Op::Reuse { pick, how } => self.reuse(*pick, *how)?,
            Op::Snapshot => {
                self.keep_snapshots();
                return self.check_quiet();
            }
            Op::Restart => self.restart()?,
            Op::GrantBurst { account, count } => {
                for _ in 0..*count {
                    let grant = Op::Grant {
                        account: *account,
                        kind: LotKind::Adjustment,
                        amount: AMOUNT_MAX,
                        expires_in_ms: None,
                    };
                    let cmd = self.build(&grant);
                    self.fresh(cmd)?;
                    self.check_all()?;
                }
                return Ok(());
            }
            _ => {
                let cmd = self.build(op);
                self.fresh(cmd)?;
            }
        }
        self.check_all()
    }

    pub(super) fn next_request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId::parse(&format!("req-{}", self.next_request)).unwrap()
    }

    pub(super) fn pick_reservation(&self, pick: usize) -> ReservationId {
        if self.reservations.is_empty() {
            return ReservationId { account: account_id(0), seq: 1_000 };
        }
        let len = self.reservations.len();
        // Mostly one of the newest three, which are likelier to be open; sometimes any.
        let index = if pick.is_multiple_of(4) { (pick / 4) % len } else { len - 1 - (pick / 4) % len.min(3) };
        self.reservations[index].clone()
    }

    pub(super) fn hold(&self, id: &ReservationId) -> Option<&HoldState> {
        self.projections.get(&id.account).and_then(|projection| projection.holds.get(&id.seq))
    }

    pub(super) fn build(&mut self, op: &Op) -> Cmd {
        let request = self.next_request();
        match *op {
            Op::SetPlan { account, period, anchor_ms, plan_credits, addon_credits } => Cmd::SetPlan(SetPlan {
                account: account_id(account),
                plan: Plan { period, anchor_ms, plan_credits, addon_credits },
                request,
            }),
            Op::ChangePlan { account, plan_credits, addon_credits } => {
                let account = account_id(account);
                let current = self.projections.get(&account).and_then(|projection| projection.plan.as_ref());
                let (period, anchor_ms) =
                    current.map_or((Period::Monthly, ms(2026, 1, 1, 0)), |plan| (plan.period, plan.anchor_ms));
                Cmd::SetPlan(SetPlan {
                    account,
                    plan: Plan { period, anchor_ms, plan_credits, addon_credits },
                    request,
                })
            }
            Op::Grant { account, kind, amount, expires_in_ms } => Cmd::Grant(Grant {
                account: account_id(account),
                kind,
                amount,
                expires_ms: expires_in_ms.map(|offset| self.now + offset),
                request,
                create_account: true,
            }),
            Op::StartTrial { account, credits, duration_ms } => {
                let (credits, duration_ms) = self.rules.trial(credits, duration_ms).unwrap();
                Cmd::StartTrial(StartTrial {
                    account: account_id(account),
                    credits,
                    duration_ms,
                    request,
                    create_account: true,
                })
            }
            Op::SetCategoryBudget { account, mobile, budget } => Cmd::SetCategoryBudget(SetCategoryBudget {
                account: account_id(account),
                category: self.rules.category(if mobile { "mobile" } else { "email" }).unwrap(),
                budget,
                request,
            }),
            Op::SetUserLimit { account, user, limit } => {
                Cmd::SetUserLimit(SetUserLimit { account: account_id(account), user: user_id(user), limit, request })
            }
            Op::Reserve { account, user, amount, ttl_ms, labelled, partial } => {
                // A partial hold asks for whole units: the amount rounded down to one (at least).
                let partial = partial.map(|(unit, min_units)| {
                    let units = (amount / unit).max(1);
                    (Partial { unit, min_units: min_units.min(units) }, units * unit)
                });
                Cmd::Reserve(Reserve {
                    account: account_id(account),
                    user: user_id(user),
                    category: self.rules.category("email").unwrap(),
                    amount: partial.map_or(amount, |(_, amount)| amount),
                    ttl_ms: self.rules.ttl(ttl_ms).unwrap(),
                    request,
                    labels: labels(labelled),
                    partial: partial.map(|(partial, _)| partial),
                })
            }
            Op::Commit { pick, amount, final_commit, key } => {
                let reservation = self.pick_reservation(pick);
                let held = self.hold(&reservation).map_or(0, HoldState::held);
                let amount = match amount {
                    CommitAmount::Zero => 0,
                    CommitAmount::Percent(percent) => held * percent / 100,
                    CommitAmount::AllHeld => held,
                    CommitAmount::OverHeld(extra) => held + extra,
                    CommitAmount::Fixed(amount) => amount,
                };
                let amount = amount.min(AMOUNT_MAX);
                let business_key = business_key(key);
                Cmd::Commit(Commit {
                    reservation,
                    amount,
                    final_commit,
                    request,
                    business_key,
                    labels: labels(key.is_some()),
                })
            }
            Op::Extend { pick, amount, ttl_ms, partial } => {
                let amount = if amount == 0 && ttl_ms.is_none() { 1 } else { amount };
                let ttl_ms = ttl_ms.map(|ttl| self.rules.ttl(ttl).unwrap());
                // As for Reserve: whole units, the amount rounded down to one (at least).
                let partial = partial.filter(|_| amount > 0).map(|(unit, min_units)| {
                    let units = (amount / unit).max(1);
                    (Partial { unit, min_units: min_units.min(units) }, units * unit)
                });
                Cmd::Extend(Extend {
                    reservation: self.pick_reservation(pick),
                    amount: partial.map_or(amount, |(_, amount)| amount),
                    ttl_ms,
                    request,
                    partial: partial.map(|(partial, _)| partial),
                })
            }
            Op::Release { pick } => Cmd::Release(Release { reservation: self.pick_reservation(pick), request }),
            Op::Charge { account, user, amount, key, overdraft } => Cmd::Charge(Charge {
                account: account_id(account),
                user: user_id(user),
                category: self.rules.category("mobile").unwrap(),
                amount,
                request,
                business_key: business_key(key),
                labels: Labels::default(),
                overdraft,
            }),
            _ => unreachable!("not a command: {op:?}"),
        }
    }

    pub(super) fn jump_to(&mut self, target: Target, offset_ms: Millis) {
        let instant = match target {
            Target::CycleEnd(account) => {
                self.projections.get(&account_id(account)).and_then(|p| p.seen_cycle).map(|cycle| cycle.end_ms)
            }
            Target::Deadline(pick) => self.hold(&self.pick_reservation(pick)).map(|hold| hold.deadline_ms),
            Target::LotExpiry(account, pick) => self.projections.get(&account_id(account)).and_then(|p| {
                let lots: Vec<&LotState> = p.lots.values().collect();
                (!lots.is_empty()).then(|| lots[pick % lots.len()].expires_ms)
            }),
        };
        if let Some(instant) = instant {
            self.now = self.now.max(instant + offset_ms);
        }
    }

    // -- Draining events into the projection ---------------------------------------------------

    pub(super) fn apply(&mut self, events: &[Event]) -> Result<(), String> {
        for event in events {
            let projection = self.projections.entry(event.account.clone()).or_default();
            projection.apply(event, self.now).map_err(|message| format!("{message}\n  in {event:?}"))?;
        }
        // Each operation emits its events at once: none stops in the middle of a plan change.
        for projection in self.projections.values() {
            projection.plan_events_complete()?;
        }
        Ok(())
    }

    /// Drains the events of the step just run (only `request`'s, or none), then catches every
    /// account up to now and drains those too. Returns the step's own events.
    pub(super) fn sync(&mut self, request: Option<&RequestId>) -> Result<Vec<Event>, String> {
        let events = self.ledger.drain_events();
        for event in &events {
            let ours = event.request_id.is_none() || event.request_id.as_deref() == request.map(RequestId::as_str);
            ensure!(ours, "event of another request: {event:?}");
        }
        self.apply(&events)?;
        self.history.extend(events.iter().cloned());
        for index in 0..ACCOUNTS.len() {
            let _ = self.ledger.balance(self.now, &account_id(index), None);
        }
        let catch_up = self.ledger.drain_events();
        ensure!(catch_up.iter().all(|event| event.request_id.is_none()), "a read emitted a request's event");
        self.apply(&catch_up)?;
        self.history.extend(catch_up);
        Ok(events)
    }

    pub(super) fn balance(&mut self, account: &AccountId, user: Option<&UserId>) -> Result<Balance, String> {
        self.ledger.balance(self.now, account, user).map_err(|error| format!("balance of {account}: {error}"))
    }

    /// A category's budget and use, as the account view lists it (unused: none).
    pub(super) fn category_view(&mut self, account: &AccountId, category: &Category) -> Result<CategoryView, String> {
        let view = self.ledger.account(self.now, account).map_err(|error| format!("account {account}: {error}"))?;
        let found = view.categories.into_iter().find(|view| view.category == category.as_str());
        Ok(found.unwrap_or(CategoryView {
            category: category.as_str().to_owned(),
            budget: None,
            used: 0,
            remaining: None,
        }))
    }

    // -- Fresh commands ------------------------------------------------------------------------

    pub(super) fn before(&self, cmd: &Cmd) -> Before {
        let projection = self.projections.get(cmd.account());
        Before {
            account_exists: projection.is_some(),
            hold: cmd.reservation().and_then(|id| self.hold(id)).filter(|hold| !hold.purged).cloned(),
            trial_started: self.trials.contains(cmd.account()),
        }
    }

    pub(super) fn fresh(&mut self, cmd: Cmd) -> Result<(), String> {
        let before = self.before(&cmd);
        let result = cmd.run(&mut self.ledger, self.now);
        let context = |message: String| format!("{message}\n  command {cmd:?}\n  result {result:?}");
        let ok = result.is_ok();
        let events = self.sync(ok.then(|| cmd.request())).map_err(context)?;
        let ours = events.iter().filter(|event| event.request_id.is_some()).count();
        let changed = match &result {
            Ok(answer) => answer_changes_state(answer),
            Err(_) => false,
        };
        ensure!((ours > 0) == changed, "{}", context(format!("{ours} events for the request")));
        self.verify(&cmd, &before, &result, &events).map_err(context)?;
        if let Ok(answer) = result {
            let created = match &answer {
                Answer::Reserve(Decision::Done(reserved)) => Some(reserved.reservation.clone()),
                Answer::Charge(Decision::Done(charged)) => charged.reservation.clone(),
                _ => None,
            };
            self.reservations.extend(created);
            self.remember(cmd, answer)?;
        }
        Ok(())
    }

    /// Notes a new request's answer under its scope, replacing the one forgotten there, and
    /// for an Extend moves on how long the opening Reserve's id is kept.
    pub(super) fn remember(&mut self, cmd: Cmd, answer: Answer) -> Result<(), String> {
        let scope = cmd.scope();
        let request = cmd.request().clone();
        let stale = self.sent.iter().position(|sent| sent.scope == scope && sent.cmd.request() == &request);
        if let Some(index) = stale {
            ensure!(!self.remembered(&self.sent[index]), "a new request under the remembered id {request}");
            self.sent.remove(index);
        }
        let keep_until_ms = match &answer {
            Answer::Reserve(Decision::Done(reserved)) => self.now.max(reserved.deadline_ms) + RETENTION_MS,
            _ => self.now + RETENTION_MS,
        };
        if let Answer::Extend(Decision::Done(extended)) = &answer {
            let id = &extended.reservation.id;
            let opened_by = self.sent.iter_mut().find(
                |sent| matches!(&sent.answer, Answer::Reserve(Decision::Done(reserved)) if &reserved.reservation == id),
            );
            let opened_by = opened_by.ok_or(format!("extended {id}, opened by no Reserve"))?;
            // (Never past its keep while its hold is open: the keep is a retention past the
            // deadline. An expired one would stay forgotten.)
            if opened_by.keep_until_ms > self.now {
                opened_by.keep_until_ms = opened_by.keep_until_ms.max(extended.deadline_ms + RETENTION_MS);
            }
        }
        self.sent.push(Sent { cmd, answer, scope, keep_until_ms });
        Ok(())
    }

    pub(super) fn verify(
        &mut self,
        cmd: &Cmd,
        before: &Before,
        result: &Result<Answer, Error>,
        events: &[Event],
    ) -> Result<(), String> {
        if !cmd.creates_account() && !before.account_exists {
            // A call on a reservation names the reservation; others name the account.
            let named = match cmd.reservation() {
                Some(reservation) => matches!(result, Err(Error::ReservationNotFound(id)) if id == reservation),
                None => matches!(result, Err(Error::AccountNotFound(id)) if id == cmd.account()),
            };
            ensure!(named, "expected AccountNotFound or, on a reservation, ReservationNotFound");
            return Ok(());
        }
        if let Some(id) = cmd.reservation() {
            let Some(hold) = &before.hold else {
                ensure!(
                    matches!(result, Err(Error::ReservationNotFound(r)) if r == id),
                    "expected ReservationNotFound"
                );
                return Ok(());
            };
            if let Some((reason, state)) = closed_reason(hold, self.now) {
                let decline = declined(result)?;
                ensure!(decline.reason == reason && decline.reservation_state == Some(state), "expected {reason:?}");
                return Ok(());
            }
        }
        match (cmd, result) {
            (Cmd::Reserve(c), Ok(Answer::Reserve(decision))) => self.verify_reserve(c, decision),
            (Cmd::Charge(c), Ok(Answer::Charge(decision))) => self.verify_charge(c, decision),
            (Cmd::Commit(c), Ok(Answer::Commit(decision))) => self.verify_commit(c, before, decision, events),
            (Cmd::Extend(c), Ok(Answer::Extend(decision))) => self.verify_extend(c, before, decision),
            (Cmd::Release(c), Ok(Answer::Release(decision))) => {
                let held = before.hold.as_ref().map_or(0, HoldState::held);
                let released = done(decision)?;
                let view = &released.reservation;
                ensure!(released.returned == held && view.state == ReservationState::Released, "release answer");
                ensure!(view == &self.reservation_view(&c.reservation)?, "release answer differs from the view");
                Ok(())
            }
            (Cmd::SetPlan(c), result) => self.verify_set_plan(c, result),
            (Cmd::Grant(c), result) => self.verify_grant(c, result),
            (Cmd::StartTrial(c), result) => self.verify_trial(c, before, result),
            (Cmd::SetUserLimit(c), Ok(Answer::SetUserLimit(decision))) => {
                let view = done(decision)?;
                ensure!(view.user == c.user.as_str() && view.limit == c.limit, "limit answer {view:?}");
                let balance = self.balance(&c.account, Some(&c.user))?;
                ensure!(balance.user.as_ref() == Some(view), "limit answer differs from the balance");
                Ok(())
            }
            (Cmd::SetCategoryBudget(c), Ok(Answer::SetCategoryBudget(decision))) => {
                let view = done(decision)?;
                ensure!(view.category == c.category.as_str() && view.budget == c.budget, "budget answer {view:?}");
                ensure!(self.category_view(&c.account, &c.category)? == *view, "budget answer differs from the view");
                Ok(())
            }
            _ => Err("unexpected result".into()),
        }
    }

    pub(super) fn verify_reserve(
        &mut self,
        c: &Reserve,
        decision: &Decision<credit_sidecar::ledger::Reserved>,
    ) -> Result<(), String> {
        let balance = self.balance(&c.account, Some(&c.user))?;
        let category = self.category_view(&c.account, &c.category)?;
        match decision {
            Decision::Done(reserved) => {
                match c.partial {
                    None => ensure!(reserved.amount == c.amount, "reserve answer's amount"),
                    Some(partial) => partial_held(reserved.amount, c.amount, partial, &balance, &category)?,
                }
                ensure!(reserved.deadline_ms == self.now + c.ttl_ms, "reserve answer's deadline");
                ensure!(reserved.available == balance.totals.available, "reserve answer's available");
                let hold = self.hold(&reserved.reservation).ok_or("reservation without a Reserved event")?;
                ensure!(hold.reserved == reserved.amount && hold.user == c.user.as_str(), "Reserved event differs");
                within_limits(&balance, &category)
            }
            // A partial hold is declined only when not even its least units fit.
            Decision::Declined(decline) => {
                let least = c.partial.map_or(c.amount, |partial| partial.unit * partial.min_units);
                admit_decline(decline, least, &balance, &category)
            }
        }
    }

    pub(super) fn verify_charge(
        &mut self,
        c: &Charge,
        decision: &Decision<credit_sidecar::ledger::Charged>,
    ) -> Result<(), String> {
        let balance = self.balance(&c.account, Some(&c.user))?;
        let category = self.category_view(&c.account, &c.category)?;
        let charged = match decision {
            Decision::Declined(_) if c.overdraft => return Err("an outage charge was declined".into()),
            Decision::Declined(decline) => return admit_decline(decline, c.amount, &balance, &category),
            Decision::Done(charged) => charged,
        };
        ensure!(charged.available == balance.totals.available, "charge answer's available");
        ensure!(
            (0..=c.amount).contains(&charged.overdrawn) && (c.overdraft || charged.overdrawn == 0),
            "charge answer {charged:?} for {c:?}"
        );
        // Overdrawn only what the lots lacked: they are empty now.
        ensure!(charged.overdrawn == 0 || balance.totals.available == 0, "overdrawn with credit left: {charged:?}");
        match &charged.reservation {
            None if charged.overdrawn > 0 => {
                ensure!(charged.overdrawn == c.amount && charged.charged == c.amount, "charge answer {charged:?}");
                ensure!(balance.totals.owed >= c.amount, "owed {} after {charged:?}", balance.totals.owed);
                Ok(())
            }
            None => {
                let key = c.business_key.as_ref().ok_or("charged nothing without a business key")?;
                let keys = &self.projections[&c.account].charged_keys;
                ensure!(charged.already_charged && charged.charged == 0, "charge answer {charged:?}");
                ensure!(keys.contains(key.as_str()), "charge skipped for key {key:?} not charged this cycle");
                Ok(())
            }
            Some(id) => {
                ensure!(!charged.already_charged && charged.charged == c.amount, "charge answer {charged:?}");
                let hold = self.hold(id).ok_or("charge without a Reserved event")?;
                ensure!(
                    hold.state == ReservationState::Committed && hold.committed == c.amount - charged.overdrawn,
                    "charge hold {hold:?}"
                );
                // An outage charge is not held to the user's limit or the category's budget.
                if c.overdraft { Ok(()) } else { within_limits(&balance, &category) }
            }
        }
    }

    pub(super) fn verify_commit(
        &mut self,
        c: &Commit,
        before: &Before,
        decision: &Decision<credit_sidecar::ledger::Committed>,
        events: &[Event],
    ) -> Result<(), String> {
        let held = before.hold.as_ref().map_or(0, HoldState::held);
        let key_charged = |harness: &Self| {
            let keys = &harness.projections[&c.reservation.account].charged_keys;
            c.business_key.as_ref().is_some_and(|key| keys.contains(key.as_str()))
        };
        let committed = match decision {
            Decision::Declined(decline) => {
                ensure!(decline.reason == DeclineReason::ExceedsHold, "commit declined {:?}", decline.reason);
                ensure!(
                    decline.requested == c.amount && c.amount > held && decline.held == held,
                    "exceeds-hold figures"
                );
                ensure!(!key_charged(self), "a commit of an already-charged key was declined");
                return Ok(());
            }
            Decision::Done(committed) => committed,
        };
        let event = events.iter().find_map(|event| match &event.kind {
            EventKind::Committed { reservation, amount, already_charged, .. } if *reservation == c.reservation.seq => {
                Some((*amount, *already_charged))
            }
            _ => None,
        });
        ensure!(event == Some((committed.charged, committed.already_charged)), "Committed event {event:?}");
        let expected = if committed.already_charged { 0 } else { c.amount };
        ensure!(committed.charged == expected && committed.charged <= held, "commit charged {}", committed.charged);
        let view = &committed.reservation;
        ensure!(view == &self.reservation_view(&c.reservation)?, "commit answer differs from the view");
        let left = held - committed.charged;
        if c.final_commit {
            ensure!(view.state == ReservationState::Committed && committed.returned == left, "final commit");
            ensure!(committed.held == 0, "final commit still holds {}", committed.held);
        } else {
            ensure!(
                view.state == ReservationState::Held && committed.held == left && committed.returned == 0,
                "commit"
            );
        }
        Ok(())
    }

    pub(super) fn verify_extend(
        &mut self,
        c: &Extend,
        before: &Before,
        decision: &Decision<credit_sidecar::ledger::Extended>,
    ) -> Result<(), String> {
        let hold = before.hold.as_ref().ok_or("extend of an unknown hold")?;
        let user = UserId::parse(&hold.user).unwrap();
        let balance = self.balance(&c.reservation.account, Some(&user))?;
        let category = self.rules.category(&hold.category).map_err(|error| error.to_string())?;
        let category = self.category_view(&c.reservation.account, &category)?;
        let extended = match decision {
            Decision::Declined(decline) => {
                ensure!(c.amount > 0, "extend without amount declined");
                let least = c.partial.map_or(c.amount, |partial| partial.unit * partial.min_units);
                return admit_decline(decline, least, &balance, &category);
            }
            Decision::Done(extended) => extended,
        };
        match c.partial {
            None => ensure!(extended.added == c.amount, "extend answer's added"),
            Some(partial) => partial_held(extended.added, c.amount, partial, &balance, &category)?,
        }
        let deadline = c.ttl_ms.map_or(hold.deadline_ms, |ttl| hold.deadline_ms.max(self.now + ttl));
        ensure!(extended.deadline_ms == deadline, "extend answer's deadline");
        ensure!(extended.held == hold.held() + extended.added, "extend held {}", extended.held);
        ensure!(extended.reservation == self.reservation_view(&c.reservation)?, "extend answer differs from the view");
        if c.amount > 0 { within_limits(&balance, &category) } else { Ok(()) }
    }

    /// Live balance (available + held) after the step plus `grant`: over BALANCE_MAX or not.
    pub(super) fn over_balance_max(&mut self, account: &AccountId, grant: i64) -> Result<bool, String> {
        if !self.projections.contains_key(account) {
            return Ok(grant > BALANCE_MAX);
        }
        let totals = self.balance(account, None)?.totals;
        Ok(totals.available + totals.held + grant > BALANCE_MAX)
    }

    pub(super) fn verify_set_plan(&mut self, c: &SetPlan, result: &Result<Answer, Error>) -> Result<(), String> {
        let new = &c.plan;
        match result {
            Err(Error::InvalidArgument { field, .. }) => {
                // Refused after the call caught up (a renewal resets what the cycle has had), so
                // the projection, synced since, shows what the change would have granted.
                let projection = self.projections.get(&c.account);
                let grant = match projection.and_then(|p| p.plan.as_ref().map(|old| (old, p.plan_granted))) {
                    Some((old, (plan_had, addon_had)))
                        if old.period == new.period && old.anchor_ms == new.anchor_ms =>
                    {
                        (new.plan_credits - plan_had).max(0) + (new.addon_credits - addon_had).max(0)
                    }
                    _ => new.plan_credits + new.addon_credits,
                };
                ensure!(field == "plan_credits" && self.over_balance_max(&c.account, grant)?, "set_plan refused");
                Ok(())
            }
            Ok(Answer::SetPlan(Decision::Done(set))) => {
                let balance = self.balance(&c.account, None)?;
                ensure!(
                    set.cycle == cycle_containing(new.anchor_ms, new.period, self.now),
                    "plan cycle {:?}",
                    set.cycle
                );
                ensure!(
                    set.cycle == balance.cycle && set.totals == balance.totals,
                    "set_plan answer differs from balance"
                );
                ensure!(
                    set.totals.available + set.totals.held <= BALANCE_MAX,
                    "set_plan lifted the balance over the max"
                );
                Ok(())
            }
            _ => Err("unexpected set_plan result".into()),
        }
    }

    pub(super) fn verify_grant(&mut self, c: &Grant, result: &Result<Answer, Error>) -> Result<(), String> {
        match result {
            Err(Error::InvalidArgument { field, .. }) if field == "expires_unix_ms" => {
                ensure!(c.expires_ms.is_some_and(|expires| expires <= self.now), "grant expiry refused");
                Ok(())
            }
            Err(Error::InvalidArgument { field, .. }) => {
                ensure!(field == "amount" && self.over_balance_max(&c.account, c.amount)?, "grant refused");
                Ok(())
            }
            Ok(Answer::Grant(Decision::Done(granted))) => {
                let balance = self.balance(&c.account, None)?;
                ensure!(granted.expires_ms == c.expires_ms.unwrap_or(balance.cycle.end_ms), "grant expiry");
                ensure!(granted.expires_ms > self.now && granted.totals == balance.totals, "grant answer");
                ensure!(granted.totals.available + granted.totals.held <= BALANCE_MAX, "grant over the max");
                let projection = &self.projections[&c.account];
                let lot = &projection.lots[&granted.lot];
                // The amount, less what repaid an overdraft (all of it, or all that was owed).
                let repaid = c.amount - lot.remaining;
                ensure!(lot.kind == c.kind && (0..=c.amount).contains(&repaid), "granted lot {lot:?}");
                ensure!(
                    repaid == c.amount || projection.owed == 0,
                    "granted lot {lot:?} left {} owed",
                    projection.owed
                );
                Ok(())
            }
            _ => Err("unexpected grant result".into()),
        }
    }

    pub(super) fn verify_trial(
        &mut self,
        c: &StartTrial,
        before: &Before,
        result: &Result<Answer, Error>,
    ) -> Result<(), String> {
        match result {
            Err(Error::InvalidArgument { field, .. }) => {
                let over = self.over_balance_max(&c.account, c.credits)?;
                ensure!(field == "credits" && over && !before.trial_started, "trial refused");
            }
            Ok(Answer::StartTrial(Decision::Declined(decline))) => {
                ensure!(decline.reason == DeclineReason::TrialAlreadyUsed && before.trial_started, "trial declined");
                ensure!(decline.requested == c.credits, "trial decline figures");
            }
            Ok(Answer::StartTrial(Decision::Done(granted))) => {
                ensure!(!before.trial_started, "a second trial was granted");
                ensure!(granted.expires_ms == self.now + c.duration_ms, "trial expiry");
                let projection = &self.projections[&c.account];
                let lot = &projection.lots[&granted.lot];
                // The trial's credits, less what repaid an overdraft (all of it, or all that was owed).
                let repaid = c.credits - lot.remaining;
                ensure!(lot.kind == LotKind::Trial && (0..=c.credits).contains(&repaid), "trial lot {lot:?}");
                ensure!(repaid == c.credits || projection.owed == 0, "trial lot {lot:?} left {} owed", projection.owed);
                self.trials.insert(c.account.clone());
            }
            _ => return Err("unexpected start_trial result".into()),
        }
        Ok(())
    }

    // -- Reads, sweeps, retries ----------------------------------------------------------------

    pub(super) fn quote(
        &mut self,
        account: usize,
        user: Option<usize>,
        amount: i64,
        unit: i64,
        with_category: bool,
    ) -> Result<(), String> {
        let id = account_id(account);
        let user = user.map(user_id);
        let category = with_category.then(|| self.rules.category("email").unwrap());
        let cmd = Quote { account: id.clone(), user: user.clone(), category: category.clone(), amount, unit };
        if !self.projections.contains_key(&id) {
            ensure!(matches!(self.ledger.quote(self.now, &cmd), Err(Error::AccountNotFound(_))), "quote of no account");
            return Ok(());
        }
        self.sync(None)?;
        let view = self.ledger.account(self.now, &id).map_err(|e| e.to_string())?;
        let balance = self.balance(&id, user.as_ref())?;
        let quoted = self.ledger.quote(self.now, &cmd).map_err(|e| format!("quote: {e}"))?;
        let available = balance.totals.available;
        let user_remaining = balance.user.and_then(|user| user.remaining);
        let category_remaining = match &category {
            Some(category) => self.category_view(&id, category)?.remaining,
            None => None,
        };
        let decline = if available < amount {
            Some(DeclineReason::InsufficientCredit)
        } else if user_remaining.is_some_and(|remaining| remaining < amount) {
            Some(DeclineReason::UserLimitReached)
        } else if category_remaining.is_some_and(|remaining| remaining < amount) {
            Some(DeclineReason::CategoryBudgetReached)
        } else {
            None
        };
        let room = [user_remaining, category_remaining].into_iter().flatten().fold(available, i64::min);
        let expected = Quoted {
            fits: decline.is_none(),
            decline,
            amount,
            available,
            user_remaining,
            category_remaining,
            units_that_fit: room / unit,
        };
        ensure!(quoted == expected, "quote {quoted:?}, expected {expected:?}");
        ensure!(self.ledger.drain_events().is_empty(), "a quote emitted events");
        let after = self.ledger.account(self.now, &id).map_err(|e| e.to_string())?;
        ensure!(after == view, "a quote changed the account");
        Ok(())
    }

    pub(super) fn sweep(&mut self) -> Result<(), String> {
        let expired = self.ledger.sweep(self.now);
        self.last_sweep_ms = Some(self.now);
        let events = self.sync(None)?;
        let closes = events
            .iter()
            .filter(|event| matches!(event.kind, EventKind::Closed { state: ReservationState::Expired, .. }))
            .count();
        ensure!(expired == closes, "sweep reported {expired} expiries, events show {closes}");
        Ok(())
    }

    /// Whether a reservation is still stored: known, and no sweep yet at or after its close plus
    /// the retention period.
    pub(super) fn stored(&self, id: &ReservationId) -> bool {
        self.hold(id).is_some_and(|hold| !forgettable(hold, self.last_sweep_ms))
    }

    /// Whether the ledger must still remember this request, by its scope: the account's until its
    /// keep-until instant (from then on it is forgotten, whether or not a sweep deleted it yet);
    /// a reservation's while the reservation is stored.
    pub(super) fn remembered(&self, sent: &Sent) -> bool {
        match &sent.scope {
            RequestScope::Account(_) => self.now < sent.keep_until_ms,
            RequestScope::Reservation(id) => self.stored(id),
        }
    }

    /// Sends a request again, as is: one still remembered (it must replay), one forgotten (a
    /// new request then: it runs again, or finds its reservation gone), or the one that opened a
    /// reservation (an Extend keeps it remembered longer).
    pub(super) fn retry(&mut self, pick: usize, which: Retry) -> Result<(), String> {
        let cmd = if let Retry::Opening = which {
            let id = self.pick_reservation(pick);
            let opened_by = self.sent.iter().find(|sent| match &sent.answer {
                Answer::Reserve(Decision::Done(reserved)) => reserved.reservation == id,
                Answer::Charge(Decision::Done(charged)) => charged.reservation.as_ref() == Some(&id),
                _ => false,
            });
            match opened_by {
                Some(sent) => sent.cmd.clone(),
                None => return Ok(()),
            }
        } else {
            let forgotten = matches!(which, Retry::Forgotten);
            let candidates: Vec<&Sent> = self.sent.iter().filter(|sent| self.remembered(sent) != forgotten).collect();
            if candidates.is_empty() {
                return Ok(());
            }
            candidates[pick % candidates.len()].cmd.clone()
        };
        self.send_again(cmd)
    }

    /// Sweeps at the instant one of the newest requests may be forgotten (±1 ms, when still
    /// ahead), then sends it again: the millisecond before it must replay; from then on it is a
    /// new request, or its reservation is gone. The instant: the keep-until of an account's
    /// request; for a reservation's, the retention past its close (or its deadline, where it
    /// expires if nothing closes it first).
    pub(super) fn forget_edge(&mut self, pick: usize, offset_ms: Millis) -> Result<(), String> {
        let newest = self.sent.len().min(8);
        if newest == 0 {
            return Ok(());
        }
        let sent = self.sent[self.sent.len() - 1 - pick % newest].clone();
        let instant = match &sent.scope {
            RequestScope::Account(_) => Some(sent.keep_until_ms),
            RequestScope::Reservation(id) => {
                self.hold(id).map(|hold| hold.closed_ms.unwrap_or(hold.deadline_ms) + RETENTION_MS)
            }
        };
        if let Some(instant) = instant {
            self.now = self.now.max(instant + offset_ms);
        }
        self.sweep()?;
        // Notes which reservations the sweep purged before the request goes again.
        self.check_all()?;
        self.send_again(sent.cmd)
    }

    /// Sends a remembered request's id with other parameters.
    pub(super) fn reuse(&mut self, pick: usize, how: Reuse) -> Result<(), String> {
        let candidates: Vec<&Sent> = self.sent.iter().filter(|sent| self.remembered(sent)).collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let sent = candidates[pick % candidates.len()];
        let request = sent.cmd.request().clone();
        let cmd = match how {
            Reuse::Field => sent.cmd.altered(false),
            Reuse::Operation => sent.cmd.altered(true),
            // An account's id on a reservation (released, or committed 1 of)...
            Reuse::Elsewhere if sent.cmd.reservation().is_none() => {
                let reservation = self.pick_reservation(pick / 2);
                if pick.is_multiple_of(2) {
                    Cmd::Release(Release { reservation, request })
                } else {
                    let (final_commit, business_key, labels) = (false, None, Labels::default());
                    Cmd::Commit(Commit { reservation, amount: 1, final_commit, request, business_key, labels })
                }
            }
            // ... and a reservation's on its account, or on another reservation.
            Reuse::Elsewhere => {
                let account = sent.cmd.account().clone();
                match (pick % 3, sent.cmd.clone()) {
                    (0, _) => Cmd::SetUserLimit(SetUserLimit { account, user: user_id(1), limit: None, request }),
                    (1, _) => Cmd::Reserve(Reserve {
                        account,
                        user: user_id(2),
                        category: self.rules.category("email").unwrap(),
                        amount: 1,
                        ttl_ms: self.rules.ttl(0).unwrap(),
                        request,
                        labels: Labels::default(),
                        partial: None,
                    }),
                    (_, mut cmd) => {
                        let reservation = self.pick_reservation(pick / 3);
                        match &mut cmd {
                            Cmd::Commit(c) => c.reservation = reservation,
                            Cmd::Extend(c) => c.reservation = reservation,
                            Cmd::Release(c) => c.reservation = reservation,
                            _ => unreachable!("a reservation's request"),
                        }
                        cmd
                    }
                }
            }
        };
        self.send_again(cmd)
    }

    /// Sends a command whose request id was used before. In a scope that still remembers the id,
    /// it must replay the first answer (the same request) or be refused (other parameters);
    /// elsewhere it is a new request, checked like any other.
    pub(super) fn send_again(&mut self, cmd: Cmd) -> Result<(), String> {
        let scope = cmd.scope();
        let remembered = self
            .sent
            .iter()
            .find(|sent| sent.scope == scope && sent.cmd.request() == cmd.request() && self.remembered(sent))
            .cloned();
        match remembered {
            Some(sent) => self.resend(sent, cmd),
            None => self.fresh(cmd),
        }
    }

    /// Re-sends a remembered request id: as the same request it must get its first answer; with
    /// other parameters it must be refused. Either way nothing may change.
    pub(super) fn resend(&mut self, sent: Sent, cmd: Cmd) -> Result<(), String> {
        let account = sent.cmd.account().clone();
        self.sync(None)?;
        let before = self.ledger.account(self.now, &account).map_err(|e| e.to_string())?;
        let result = cmd.run(&mut self.ledger, self.now);
        let hold = cmd.reservation().and_then(|id| self.hold(id)).cloned();
        let sweep = self.last_sweep_ms;
        let context = |message: &str| {
            let state = format!("its reservation now {hold:?}, last sweep at {sweep:?}");
            format!("{message}\n  first {sent:?}\n  again {cmd:?}\n  result {result:?}\n  {state}")
        };
        if cmd.same_as(&sent.cmd) {
            ensure!(result.as_ref() == Ok(&sent.answer), "{}", context("a retry got another answer"));
        } else {
            ensure!(
                matches!(&result, Err(Error::RequestIdReused(id)) if id == cmd.request()),
                "{}",
                context("a reused request id was not refused")
            );
        }
        let events = self.ledger.drain_events();
        ensure!(events.is_empty(), "{}", context(&format!("a resend emitted {events:?}")));
        let after = self.ledger.account(self.now, &account).map_err(|e| e.to_string())?;
        ensure!(after == before, "{}", context("a resend changed the account"));
        Ok(())
    }

    pub(super) fn reservation_view(&mut self, id: &ReservationId) -> Result<ReservationView, String> {
        self.ledger.reservation(self.now, id).map_err(|error| format!("reservation {id}: {error}"))
    }

    // -- Checks after every step ---------------------------------------------------------------

    /// After a time jump nothing is read (the next operation catches up lazily).
    pub(super) fn check_quiet(&mut self) -> Result<(), String> {
        self.ledger.check_invariants()?;
        ensure!(self.ledger.drain_events().is_empty(), "events without an operation");
        Ok(())
    }

    pub(super) fn check_all(&mut self) -> Result<(), String> {
        // Steps that fail early (a quote of no account) leave the others to catch up here.
        self.sync(None)?;
        self.ledger.check_invariants()?;
        let ids = self.ledger.account_ids();
        let projected: Vec<AccountId> = self.projections.keys().cloned().collect();
        ensure!(ids == projected, "ledger accounts {ids:?}, projected {projected:?}");
        // Reservations first: they note which ones were purged, which the listings then omit.
        for id in self.reservations.clone() {
            self.check_reservation(&id)?;
        }
        for id in ids {
            self.check_account(&id)?;
        }
        ensure!(self.ledger.drain_events().is_empty(), "reads emitted events");
        self.checks += 1;
        if self.checks.is_multiple_of(8) {
            self.check_restore()?;
        }
        Ok(())
    }

    /// Keeps the answers remembered since the last call, as the settler writes them: one row per
    /// key, the latest winning.
    pub(super) fn keep_answers(&mut self) {
        for memo in self.ledger.drain_answers() {
            let key = (memo.account.clone(), memo.reservation.unwrap_or(0), memo.request.clone());
            let text = durable::encode_answer(&memo.answer);
            self.kept_answers.insert(key, (memo, text));
        }
    }

    pub(super) fn keep_snapshots(&mut self) {
        for id in self.ledger.account_ids() {
            let snapshot = self.ledger.snapshot(&id).expect("a listed account");
            self.kept_snapshots.insert(id, (snapshot.last_event, durable::encode_snapshot(&snapshot)));
        }
    }

    /// Replaces the ledger with one restored from what was kept, as the embedded engine's start
    /// does, then sweeps (as it does too). Every later step checks the restored ledger.
    pub(super) fn restart(&mut self) -> Result<(), String> {
        self.keep_answers();
        let mut kept = DurableState::default();
        for (last_event, text) in self.kept_snapshots.values() {
            let snapshot = durable::decode_snapshot(durable::SNAPSHOT_FORMAT, text)?;
            ensure!(snapshot.last_event == *last_event, "snapshot JSON changed its last event");
            kept.snapshots.push(snapshot);
        }
        let after = |event: &Event| self.kept_snapshots.get(&event.account).is_none_or(|(last, _)| event.seq > *last);
        kept.events = self.history.iter().filter(|event| after(event)).cloned().collect();
        for (memo, text) in self.kept_answers.values() {
            let answer = durable::decode_answer(durable::ANSWER_FORMAT, text)?;
            kept.answers.push(RememberedAnswer { answer, ..memo.clone() });
        }
        self.ledger = Ledger::restore_durable(RETENTION_MS, kept).map_err(|error| error.to_string())?;
        self.sweep()
    }

    /// The ledger rebuilt from every event so far (what the embedded engine does on start, and
    /// `rebuild` does for Redis) shows the same accounts and reservations as the live one.
    pub(super) fn check_restore(&mut self) -> Result<(), String> {
        let mut restored =
            Ledger::restore(RETENTION_MS, self.now, self.history.clone()).map_err(|error| error.to_string())?;
        ensure!(restored.account_ids() == self.ledger.account_ids(), "restored accounts differ");
        for id in self.ledger.account_ids() {
            let live = self.ledger.account(self.now, &id).map_err(|e| e.to_string())?;
            let rebuilt = restored.account(self.now, &id).map_err(|e| e.to_string())?;
            ensure!(rebuilt == live, "{id} restored as {rebuilt:?}, live {live:?}");
        }
        // The restore forgets what is past retention at once; the live ledger at its next sweep.
        for id in self.reservations.clone() {
            if let Ok(rebuilt) = restored.reservation(self.now, &id) {
                let live = self.ledger.reservation(self.now, &id).map_err(|e| format!("{id}: {e}"))?;
                ensure!(rebuilt == live, "{id} restored as {rebuilt:?}, live {live:?}");
            }
        }
        ensure!(restored.drain_events().is_empty(), "a restored ledger had to catch up");
        ensure!(self.ledger.drain_events().is_empty(), "reads emitted events");
        Ok(())
    }

    pub(super) fn check_account(&mut self, id: &AccountId) -> Result<(), String> {
        let view = self.ledger.account(self.now, id).map_err(|e| e.to_string())?;
        let trial = self.trials.contains(id);
        let projection = self.projections.get_mut(id).expect("projected");
        projection.seen_cycle = Some(view.cycle);
        ensure!(
            view.totals == projection.totals(),
            "{id}: totals {:?}, events say {:?}",
            view.totals,
            projection.totals()
        );
        let lots: Vec<(u64, LotKind, Millis, i64)> =
            view.lots.iter().map(|lot| (lot.id, lot.kind, lot.expires_ms, lot.remaining)).collect();
        let mut projected: Vec<(u64, LotKind, Millis, i64)> =
            projection.lots.iter().map(|(id, lot)| (*id, lot.kind, lot.expires_ms, lot.remaining)).collect();
        projected.sort_by_key(|(id, kind, expires, _)| (*expires, *kind, *id));
        ensure!(lots == projected, "{id}: lots {lots:?}, events say {projected:?}");
        let held: i64 = projection.holds.values().filter(|hold| hold.state.is_open()).map(HoldState::held).sum();
        ensure!(held == projection.held, "{id}: open holds hold {held}, events say {}", projection.held);
        ensure!(view.cycle.contains(self.now), "{id}: cycle {:?} does not contain now {}", view.cycle, self.now);
        ensure!(projection.cycle.is_none_or(|cycle| cycle == view.cycle), "{id}: cycle differs from the events'");
        ensure!(view.plan == projection.plan && view.trial_used == trial, "{id}: plan or trial differs");
        let users: Vec<(String, Option<i64>, i64)> =
            view.users.iter().map(|user| (user.user.clone(), user.limit, user.used)).collect();
        let projected: Vec<(String, Option<i64>, i64)> =
            projection.users.iter().map(|(user, (limit, used))| (user.clone(), *limit, *used)).collect();
        ensure!(users == projected, "{id}: users {users:?}, events say {projected:?}");
        let categories: Vec<(String, Option<i64>, i64)> = view
            .categories
            .iter()
            .map(|category| (category.category.clone(), category.budget, category.used))
            .collect();
        let projected: Vec<(String, Option<i64>, i64)> =
            projection.categories.iter().map(|(category, (budget, used))| (category.clone(), *budget, *used)).collect();
        ensure!(categories == projected, "{id}: categories {categories:?}, events say {projected:?}");
        let open: Vec<u64> =
            projection.holds.iter().filter(|(_, hold)| hold.state.is_open()).map(|(seq, _)| *seq).collect();
        ensure!(
            view.open_reservations == open.len() as i64,
            "{id}: {} open, events say {open:?}",
            view.open_reservations
        );
        let shown: Vec<u64> =
            projection.holds.iter().filter(|(_, hold)| !hold.purged).map(|(seq, _)| *seq).rev().collect();
        if let Some(plan) = view.plan.as_ref().filter(|plan| plan.plan_credits > 0) {
            let plan_lots: Vec<_> = view.lots.iter().filter(|lot| lot.kind == LotKind::Plan).collect();
            let current = plan_lots.iter().all(|lot| lot.expires_ms == view.cycle.end_ms);
            ensure!(!plan_lots.is_empty() && current, "{id}: plan {plan:?} but plan lots {plan_lots:?}");
        }
        ensure!(self.list(id, None)? == shown, "{id}: listed reservations differ from {shown:?}");
        let open: Vec<u64> = open.into_iter().rev().collect();
        ensure!(
            self.list(id, Some(ReservationState::Held))? == open,
            "{id}: listed open reservations differ from {open:?}"
        );
        Ok(())
    }

    /// Every reservation the ledger lists, newest first, fetched in pages of 3.
    pub(super) fn list(&mut self, id: &AccountId, state: Option<ReservationState>) -> Result<Vec<u64>, String> {
        let (mut seqs, mut before) = (Vec::new(), None);
        loop {
            let (page, next) =
                self.ledger.list_reservations(self.now, id, state, 3, before).map_err(|e| format!("list: {e}"))?;
            ensure!(
                page.len() <= 3 && (next.is_none() || page.len() == 3),
                "{id}: page of {} with next {next:?}",
                page.len()
            );
            seqs.extend(page.iter().map(|view| view.id.seq));
            match next {
                Some(token) => before = Some(token),
                None => return Ok(seqs),
            }
        }
    }

    pub(super) fn check_reservation(&mut self, id: &ReservationId) -> Result<(), String> {
        let result = self.ledger.reservation(self.now, id);
        let last_sweep = self.last_sweep_ms;
        let hold =
            self.projections.get_mut(&id.account).and_then(|p| p.holds.get_mut(&id.seq)).ok_or("no projection")?;
        let forgettable = forgettable(hold, last_sweep);
        let view = match result {
            Err(Error::ReservationNotFound(_)) => {
                ensure!(forgettable, "{id} gone before its retention: {hold:?}");
                hold.purged = true;
                return Ok(());
            }
            Err(error) => return Err(format!("{id}: {error}")),
            Ok(view) => view,
        };
        ensure!(!hold.purged && !forgettable, "{id} still shown after retention (purged before: {})", hold.purged);
        let same = view.state == hold.state
            && view.user == hold.user
            && view.category == hold.category
            && view.labels == hold.labels
            && view.created_ms == hold.created_ms
            && view.commit_count == hold.commit_count
            && view.reserved == hold.reserved
            && view.committed == hold.committed
            && view.held == hold.held()
            && view.returned == hold.returned
            && view.deadline_ms == hold.deadline_ms
            && view.closed_ms == hold.closed_ms;
        ensure!(same, "{id}: view {view:?}, events say {hold:?}");
        ensure!(view.committed <= view.reserved, "{id} committed more than reserved");
        if !view.state.is_open() {
            if let Some(snapshot) = self.snapshots.get(id) {
                ensure!(snapshot == &view, "closed {id} changed: {snapshot:?} -> {view:?}");
            } else {
                self.snapshots.insert(id.clone(), view);
            }
        }
        Ok(())
    }
}

/// Whether a closed hold may be purged: a sweep ran at or after its close plus the retention.
pub(super) fn forgettable(hold: &HoldState, last_sweep_ms: Option<Millis>) -> bool {
    hold.closed_ms.zip(last_sweep_ms).is_some_and(|(closed, sweep)| closed + RETENTION_MS <= sweep)
}

/// Whether an answer records a change (and so emits events with its request id).
pub(super) fn answer_changes_state(answer: &Answer) -> bool {
    match answer {
        Answer::Reserve(decision) => decision.declined().is_none(),
        Answer::Commit(decision) => decision.declined().is_none(),
        Answer::Extend(decision) => decision.declined().is_none(),
        Answer::Release(decision) => decision.declined().is_none(),
        Answer::Charge(decision) => {
            matches!(decision, Decision::Done(charged) if charged.reservation.is_some() || charged.overdrawn > 0)
        }
        Answer::SetPlan(decision) => decision.declined().is_none(),
        Answer::Grant(decision) => decision.declined().is_none(),
        Answer::StartTrial(decision) => decision.declined().is_none(),
        Answer::SetUserLimit(decision) => decision.declined().is_none(),
        Answer::SetCategoryBudget(decision) => decision.declined().is_none(),
    }
}

/// The decline any call on a closed hold, or one past its deadline, must get.
pub(super) fn closed_reason(hold: &HoldState, now: Millis) -> Option<(DeclineReason, ReservationState)> {
    match hold.state {
        ReservationState::Held if hold.deadline_ms > now => None,
        ReservationState::Held | ReservationState::Expired => {
            Some((DeclineReason::ReservationExpired, ReservationState::Expired))
        }
        state => Some((DeclineReason::ReservationClosed, state)),
    }
}

pub(super) fn declined(result: &Result<Answer, Error>) -> Result<&Decline, String> {
    let decline = match result {
        Ok(Answer::Commit(decision)) => decision.declined(),
        Ok(Answer::Extend(decision)) => decision.declined(),
        Ok(Answer::Release(decision)) => decision.declined(),
        _ => None,
    };
    decline.ok_or_else(|| "expected a decline".to_owned())
}

pub(super) fn done<T>(decision: &Decision<T>) -> Result<&T, String> {
    match decision {
        Decision::Done(value) => Ok(value),
        Decision::Declined(decline) => Err(format!("unexpected decline {decline:?}")),
    }
}

/// A partial hold took whole units, at least its minimum and at most what was asked, and no
/// further unit would have fitted (the account's credit, the user's limit or the category's
/// budget is short of one).
fn partial_held(
    held: i64,
    asked: i64,
    partial: Partial,
    balance: &Balance,
    category: &CategoryView,
) -> Result<(), String> {
    ensure!(held % partial.unit == 0, "partial hold {held} is not whole units of {}", partial.unit);
    ensure!((partial.unit * partial.min_units..=asked).contains(&held), "partial hold {held} outside its bounds");
    let remaining = balance.user.as_ref().and_then(|user| user.remaining);
    let room = [remaining, category.remaining].into_iter().flatten().fold(balance.totals.available, i64::min);
    ensure!(held == asked || room < partial.unit, "partial hold {held} left room for another unit ({room} left)");
    Ok(())
}

/// A hold refused by the admission checks: account credit first, then the user's limit, then
/// the category's budget (as `category` stands: a decline changes nothing).
pub(super) fn admit_decline(
    decline: &Decline,
    amount: i64,
    balance: &Balance,
    category: &CategoryView,
) -> Result<(), String> {
    let remaining = balance.user.as_ref().and_then(|user| user.remaining);
    ensure!(decline.requested == amount && decline.available == balance.totals.available, "decline figures");
    ensure!(
        decline.user_remaining == remaining,
        "decline user_remaining {:?} != {remaining:?}",
        decline.user_remaining
    );
    let user_ok = remaining.is_none_or(|remaining| remaining >= amount);
    match decline.reason {
        DeclineReason::InsufficientCredit => ensure!(decline.available < amount, "credit decline with enough credit"),
        DeclineReason::UserLimitReached => {
            ensure!(decline.available >= amount && !user_ok, "user-limit decline within the limit")
        }
        DeclineReason::CategoryBudgetReached => {
            ensure!(
                decline.available >= amount && user_ok && category.remaining.is_some_and(|left| left < amount),
                "category-budget decline within the budget: {category:?}"
            );
            ensure!(
                decline.category.as_deref() == Some(category.category.as_str())
                    && decline.category_remaining == category.remaining,
                "category decline figures {decline:?}, {category:?}"
            );
            return Ok(());
        }
        reason => return Err(format!("hold declined with {reason:?}")),
    }
    ensure!(decline.category.is_none() && decline.category_remaining.is_none(), "category figures on {decline:?}");
    Ok(())
}

/// After a hold was admitted, its user is within their limit and its category within its budget.
pub(super) fn within_limits(balance: &Balance, category: &CategoryView) -> Result<(), String> {
    let user = balance.user.as_ref().ok_or("no user view")?;
    ensure!(
        user.limit.is_none_or(|limit| user.used <= limit),
        "user {} used {} over limit {:?}",
        user.user,
        user.used,
        user.limit
    );
    ensure!(category.budget.is_none_or(|budget| category.used <= budget), "category over budget: {category:?}");
    Ok(())
}
