//! The reference model: every operation of the credit ledger, in memory, deterministic, with
//! time passed in. The embedded engine runs it behind a lock; the Redis scripts must agree with
//! it on every answer. Each operation reads as: find the account, catch up with time, replay a
//! remembered answer if the request id is known, check guards in order, then write.

use std::collections::HashMap;

use super::Error;
use super::account::{Account, OutageSpend, Remembered, Reservation, Sink};
use super::answer::{
    AccountView, Answer, Balance, CategoryView, Charged, CommitBatched, Committed, Decision, DeclineReason, Extended,
    Granted, PlanSet, Quoted, Released, ReservationView, Reserved, UserView,
};
use super::command::{
    Charge, Commit, CommitBatch, Extend, Fingerprint, Grant, Quote, Release, Reserve, SetCategoryBudget, SetPlan,
    SetUserLimit, StartTrial,
};
use super::cycle::cycle_containing;
use super::durable::{DurableState, RememberedAnswer};
use super::event::{Draw, Event, EventKind};
use super::replay::ReplayError;
use super::types::{AccountId, BALANCE_MAX, LotKind, Millis, RequestId, ReservationId, ReservationState, UserId};

/// The page size of `list_reservations` when none is given, and its maximum.
pub const LIST_PAGE_DEFAULT: usize = 100;
pub const LIST_PAGE_MAX: usize = 1000;
/// The most reservation sequence numbers one listing call examines (purged ones included); a
/// page may come back short, with a token to go on.
pub const LIST_SCAN_MAX: u64 = 10_000;

#[derive(Debug)]
pub struct Ledger {
    retention_ms: Millis,
    accounts: HashMap<AccountId, Account>,
    outbox: Vec<Event>,
    /// Answers remembered since the last drain, when journaling (the embedded engine keeps them
    /// in SQL so that they survive a restart).
    answers: Option<Vec<RememberedAnswer>>,
}

/// Whether an operation may create the account it names. SetPlan always may; Grant and
/// StartTrial only when the request asks (`create_account`), so a mistyped account id gets
/// NOT_FOUND instead of credits.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Create {
    Yes,
    No,
}

impl Create {
    fn asked(create_account: bool) -> Self {
        if create_account { Self::Yes } else { Self::No }
    }
}

/// How a kind of answer is remembered and recognised on replay.
struct Memo<T> {
    wrap: fn(Decision<T>) -> Answer,
    unwrap: fn(Answer) -> Option<Decision<T>>,
}

macro_rules! memo {
    ($variant:ident) => {
        Memo {
            wrap: Answer::$variant,
            unwrap: |answer| match answer {
                Answer::$variant(decision) => Some(decision),
                _ => None,
            },
        }
    };
}

/// A request being executed idempotently.
struct Call<'a, T> {
    account: &'a AccountId,
    request: &'a RequestId,
    fingerprint: Fingerprint,
    create: Create,
    /// The reservation the call acts on, if any: its request id is kept past its deadline.
    reservation: Option<u64>,
    memo: Memo<T>,
}

impl<'a, T> Call<'a, T> {
    /// A call on reservation `id`: its account must exist.
    fn on_reservation(id: &'a ReservationId, request: &'a RequestId, fingerprint: Fingerprint, memo: Memo<T>) -> Self {
        Call { account: &id.account, request, fingerprint, create: Create::No, reservation: Some(id.seq), memo }
    }
}

impl Ledger {
    /// `retention_ms`: how long request ids and closed reservations are remembered.
    pub fn new(retention_ms: Millis) -> Self {
        Self { retention_ms, accounts: HashMap::new(), outbox: Vec::new(), answers: None }
    }

    /// Journals every answer remembered under a request id, for [`Ledger::drain_answers`].
    pub fn journal_answers(mut self) -> Self {
        self.answers = Some(Vec::new());
        self
    }

    /// A ledger rebuilt from the durable record (each account's events in sequence order), with
    /// what is past retention at `now` already forgotten.
    pub fn restore(
        retention_ms: Millis,
        now: Millis,
        events: impl IntoIterator<Item = Event>,
    ) -> Result<Self, super::replay::ReplayError> {
        let mut accounts = super::replay::accounts(events)?;
        for account in accounts.values_mut() {
            account.purge(now, retention_ms);
        }
        Ok(Self { retention_ms, accounts, outbox: Vec::new(), answers: None })
    }

    /// The embedded engine's ledger as it kept it: each account from its snapshot, the events
    /// after it replayed on top, and its remembered answers. Nothing is forgotten here: sweep
    /// after it, as at any time.
    pub fn restore_durable(retention_ms: Millis, state: DurableState) -> Result<Self, ReplayError> {
        let mut accounts = HashMap::with_capacity(state.snapshots.len());
        for snapshot in state.snapshots {
            let (name, seq) = (snapshot.account.clone(), snapshot.last_event);
            let account = snapshot.into_account().map_err(|reason| ReplayError {
                account: name,
                seq,
                reason: format!("snapshot: {reason}"),
            })?;
            accounts.insert(account.id.clone(), account);
        }
        super::replay::onto(&mut accounts, state.events)?;
        for memo in state.answers {
            let Some(account) = accounts.get_mut(&memo.account) else { continue };
            let remembered = Remembered {
                fingerprint: Fingerprint(memo.fingerprint),
                answer: memo.answer,
                keep_until_ms: memo.keep_until_ms,
            };
            match memo.reservation {
                Some(seq) => {
                    if let Some(reservation) = account.reservations.get_mut(&seq) {
                        reservation.requests.insert(memo.request, remembered);
                    }
                }
                None => {
                    account.requests.insert(memo.request, remembered);
                }
            }
        }
        Ok(Self { retention_ms, accounts, outbox: Vec::new(), answers: Some(Vec::new()) })
    }

    /// Answers remembered since the last call, in order (empty unless journaling).
    pub fn drain_answers(&mut self) -> Vec<RememberedAnswer> {
        self.answers.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records a remembered answer in the journal, when journaling.
    fn journal(&mut self, account: &AccountId, reservation: Option<u64>, request: &RequestId) {
        let Some(journal) = self.answers.as_mut() else { return };
        let Some(state) = self.accounts.get(account) else { return };
        let remembered = match reservation {
            Some(seq) => state.reservations.get(&seq).and_then(|r| r.requests.get(request)),
            None => state.requests.get(request),
        };
        if let Some(remembered) = remembered {
            journal.push(RememberedAnswer {
                account: account.clone(),
                reservation,
                request: request.clone(),
                fingerprint: remembered.fingerprint.0.clone(),
                keep_until_ms: remembered.keep_until_ms,
                answer: remembered.answer.clone(),
            });
        }
    }

    /// Events emitted since the last call, in order.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.outbox)
    }

    /// Runs `body` as an idempotent state change: catch up, replay or refuse a known request id,
    /// otherwise execute and remember the answer (a decline too). Errors are not remembered and
    /// leave no trace: `body` checks everything before it writes.
    fn run<T: Clone>(
        &mut self,
        now: Millis,
        call: Call<'_, T>,
        body: impl FnOnce(&mut Account, &mut Sink<'_>) -> Result<Decision<T>, Error>,
    ) -> Result<Decision<T>, Error> {
        let created = !self.accounts.contains_key(call.account);
        if created && call.create == Create::No {
            // A call on a reservation names the reservation, not the account.
            return Err(match call.reservation {
                Some(seq) => Error::ReservationNotFound(ReservationId { account: call.account.clone(), seq }),
                None => Error::AccountNotFound(call.account.clone()),
            });
        }
        let account =
            self.accounts.entry(call.account.clone()).or_insert_with(|| Account::new(call.account.clone(), now));
        let mut sink = Sink { out: &mut self.outbox, request: None };
        account.catch_up(&mut sink, now);
        // An account-scoped answer is forgotten the instant its keep passes, whether or not the
        // sweep has deleted it yet (a reservation's answers live as long as it does).
        let remembered = match call.reservation {
            Some(seq) => account.reservations.get(&seq).and_then(|r| r.requests.get(call.request)),
            None => account.requests.get(call.request).filter(|remembered| remembered.keep_until_ms > now),
        };
        if let Some(remembered) = remembered {
            if remembered.fingerprint != call.fingerprint {
                return Err(Error::RequestIdReused(call.request.clone()));
            }
            return (call.memo.unwrap)(remembered.answer.clone())
                .ok_or_else(|| Error::RequestIdReused(call.request.clone()));
        }
        let mut sink = Sink { out: &mut self.outbox, request: Some(call.request) };
        let decision = match body(account, &mut sink) {
            Ok(decision) => decision,
            Err(error) => {
                if created {
                    self.accounts.remove(call.account);
                }
                return Err(error);
            }
        };
        let answer = (call.memo.wrap)(decision.clone());
        let fingerprint = call.fingerprint;
        let scope = call.reservation.filter(|seq| account.reservations.contains_key(seq));
        match call.reservation.and_then(|seq| account.reservations.get_mut(&seq)) {
            // Reservation-scoped: lives as long as the reservation does.
            Some(reservation) => {
                let remembered = Remembered { fingerprint, answer, keep_until_ms: 0 };
                reservation.requests.insert(call.request.clone(), remembered);
            }
            // Account-scoped: retention past the call, or past the deadline of the hold it opened.
            None => {
                let deadline = reservation_of(&answer)
                    .and_then(|seq| account.reservations.get(&seq))
                    .map_or(now, |reservation| reservation.deadline_ms);
                let keep_until_ms = now.max(deadline).saturating_add(self.retention_ms);
                account.requests.insert(call.request.clone(), Remembered { fingerprint, answer, keep_until_ms });
            }
        }
        self.journal(call.account, scope, call.request);
        Ok(decision)
    }

    /// The account for a read, caught up to `now`.
    fn read(&mut self, now: Millis, id: &AccountId) -> Result<&mut Account, Error> {
        let account = self.accounts.get_mut(id).ok_or_else(|| Error::AccountNotFound(id.clone()))?;
        account.catch_up(&mut Sink { out: &mut self.outbox, request: None }, now);
        Ok(account)
    }

    pub fn reserve(&mut self, now: Millis, cmd: &Reserve) -> Result<Decision<Reserved>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::No,
            reservation: None,
            memo: memo!(Reserve),
        };
        self.run(now, call, |account, sink| {
            let amount = account.hold_amount(&cmd.user, &cmd.category, cmd.amount, cmd.partial);
            if let Err(decline) = account.admit(&cmd.user, &cmd.category, amount) {
                return Ok(Decision::Declined(*decline));
            }
            let deadline_ms = now + cmd.ttl_ms;
            let seq =
                open_reservation(account, sink, now, deadline_ms, amount, (&cmd.user, &cmd.category, &cmd.labels));
            Ok(Decision::Done(Reserved {
                reservation: ReservationId { account: account.id.clone(), seq },
                amount,
                deadline_ms,
                available: account.available(),
            }))
        })
    }

    pub fn commit(&mut self, now: Millis, cmd: &Commit) -> Result<Decision<Committed>, Error> {
        let seq = cmd.reservation.seq;
        let call = Call::on_reservation(&cmd.reservation, &cmd.request, cmd.fingerprint(), memo!(Commit));
        self.run(now, call, |account, sink| {
            if let Some(decline) = closed_decline(account, &cmd.reservation, cmd.amount)? {
                return Ok(Decision::Declined(decline));
            }
            let already_charged = cmd.business_key.as_ref().is_some_and(|key| account.charged_keys.contains(key));
            let charge = if already_charged { 0 } else { cmd.amount };
            if charge > account.reservations[&seq].held() {
                return Ok(Decision::Declined(account.reservation_decline(seq, DeclineReason::ExceedsHold, charge)));
            }
            spend(account, sink, now, seq, charge, (&cmd.business_key, already_charged, &cmd.labels));
            let returned =
                if cmd.final_commit { account.close(sink, seq, ReservationState::Committed, now) } else { 0 };
            let reservation = account.reservation_view(seq);
            Ok(Decision::Done(Committed {
                charged: charge,
                already_charged,
                held: reservation.held,
                returned,
                reservation,
            }))
        })
    }

    /// The batch's items as Commits, in order, in one step: each answered as that Commit would
    /// be; then the reservation as the batch left it. Refused whole, changing nothing, when the
    /// reservation is unknown or an item's id was used (before, or earlier in the batch) with
    /// other parameters.
    pub fn commit_batch(&mut self, now: Millis, cmd: &CommitBatch) -> Result<CommitBatched, Error> {
        let commits: Vec<Commit> = cmd.commits().collect();
        let id = &cmd.reservation;
        let account = self.accounts.get(&id.account).ok_or_else(|| Error::ReservationNotFound(id.clone()))?;
        let reservation = account.reservations.get(&id.seq).ok_or_else(|| Error::ReservationNotFound(id.clone()))?;
        let mut batch: HashMap<&RequestId, Fingerprint> = HashMap::with_capacity(commits.len());
        for commit in &commits {
            let fingerprint = commit.fingerprint();
            let earlier = reservation.requests.get(&commit.request).map(|remembered| &remembered.fingerprint);
            if earlier.or(batch.get(&commit.request)).is_some_and(|earlier| *earlier != fingerprint) {
                return Err(Error::RequestIdReused(commit.request.clone()));
            }
            batch.insert(&commit.request, fingerprint);
        }
        let items = commits.iter().map(|commit| self.commit(now, commit)).collect::<Result<Vec<_>, _>>()?;
        let reservation = self.accounts[&id.account].reservation_view(id.seq);
        Ok(CommitBatched { items, reservation })
    }

    pub fn extend(&mut self, now: Millis, cmd: &Extend) -> Result<Decision<Extended>, Error> {
        let seq = cmd.reservation.seq;
        let call = Call::on_reservation(&cmd.reservation, &cmd.request, cmd.fingerprint(), memo!(Extend));
        let decision = self.run(now, call, |account, sink| {
            if let Some(decline) = closed_decline(account, &cmd.reservation, cmd.amount)? {
                return Ok(Decision::Declined(decline));
            }
            let (user, category) = {
                let reservation = &account.reservations[&seq];
                (reservation.user.clone(), reservation.category.clone())
            };
            let amount =
                if cmd.amount > 0 { account.hold_amount(&user, &category, cmd.amount, cmd.partial) } else { 0 };
            if amount > 0
                && let Err(mut decline) = account.admit(&user, &category, amount)
            {
                // Declined by the account, the user or the category, but about this hold: show it as it stands.
                decline.reservation = Some(Box::new(account.reservation_view(seq)));
                return Ok(Decision::Declined(*decline));
            }
            let draws = if amount > 0 { account.draw(amount) } else { Vec::new() };
            let old_deadline = account.reservations[&seq].deadline_ms;
            let deadline_ms = cmd.ttl_ms.map_or(old_deadline, |ttl| old_deadline.max(now + ttl));
            account.deadlines.remove(&(old_deadline, seq));
            account.deadlines.insert((deadline_ms, seq));
            let reservation = account.reservations.get_mut(&seq).expect("checked above");
            reservation.deadline_ms = deadline_ms;
            reservation.reserved += amount;
            merge_draws(&mut reservation.draws, &draws);
            account.held += amount;
            account.count_usage(seq, amount);
            account.emit(sink, now, EventKind::Extended { reservation: seq, amount, draws, deadline_ms });
            let reservation = account.reservation_view(seq);
            Ok(Decision::Done(Extended { added: amount, held: reservation.held, deadline_ms, reservation }))
        })?;
        if let Decision::Done(extended) = &decision {
            self.carry_opening_request(now, &cmd.reservation, extended.deadline_ms);
        }
        Ok(decision)
    }

    /// Keeps the answer of the Reserve that opened a reservation for the retention period past
    /// its new deadline, so a late retry of that Reserve can never open a second hold. An answer
    /// already past its keep is forgotten (whether or not a sweep deleted it) and stays so.
    fn carry_opening_request(&mut self, now: Millis, id: &ReservationId, deadline_ms: Millis) {
        let Some(account) = self.accounts.get_mut(&id.account) else { return };
        let Some(opened_by) = account.reservations.get(&id.seq).and_then(|r| r.opened_by.clone()) else { return };
        let remembered = account.requests.get_mut(&opened_by).filter(|remembered| remembered.keep_until_ms > now);
        if let Some(remembered) = remembered {
            remembered.keep_until_ms = remembered.keep_until_ms.max(deadline_ms.saturating_add(self.retention_ms));
            self.journal(&id.account, None, &opened_by);
        }
    }

    pub fn release(&mut self, now: Millis, cmd: &Release) -> Result<Decision<Released>, Error> {
        let seq = cmd.reservation.seq;
        let call = Call::on_reservation(&cmd.reservation, &cmd.request, cmd.fingerprint(), memo!(Release));
        self.run(now, call, |account, sink| {
            if let Some(decline) = closed_decline(account, &cmd.reservation, 0)? {
                return Ok(Decision::Declined(decline));
            }
            let returned = account.close(sink, seq, ReservationState::Released, now);
            Ok(Decision::Done(Released { returned, reservation: account.reservation_view(seq) }))
        })
    }

    pub fn charge(&mut self, now: Millis, cmd: &Charge) -> Result<Decision<Charged>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::No,
            reservation: None,
            memo: memo!(Charge),
        };
        self.run(now, call, |account, sink| {
            if cmd.business_key.as_ref().is_some_and(|key| account.charged_keys.contains(key)) {
                let available = account.available();
                return Ok(Decision::Done(Charged {
                    reservation: None,
                    charged: 0,
                    already_charged: true,
                    available,
                    overdrawn: 0,
                }));
            }
            // An outage charge is never declined: the lots give what they have, the rest is owed.
            let covered = if cmd.overdraft {
                cmd.amount.min(account.available())
            } else {
                if let Err(decline) = account.admit(&cmd.user, &cmd.category, cmd.amount) {
                    return Ok(Decision::Declined(*decline));
                }
                cmd.amount
            };
            let mut reservation = None;
            if covered > 0 {
                let seq = open_reservation(account, sink, now, now, covered, (&cmd.user, &cmd.category, &cmd.labels));
                spend(account, sink, now, seq, covered, (&cmd.business_key, false, &cmd.labels));
                account.close(sink, seq, ReservationState::Committed, now);
                reservation = Some(ReservationId { account: account.id.clone(), seq });
            }
            let overdrawn = cmd.amount - covered;
            if overdrawn > 0 {
                let spend = OutageSpend {
                    user: &cmd.user,
                    category: &cmd.category,
                    amount: overdrawn,
                    business_key: cmd.business_key.as_ref(),
                    labels: &cmd.labels,
                };
                account.overdraw(sink, now, reservation.as_ref().map_or(0, |id| id.seq), spend);
                if let Some(key) = &cmd.business_key {
                    account.charged_keys.insert(key.clone());
                }
            }
            Ok(Decision::Done(Charged {
                reservation,
                charged: cmd.amount,
                already_charged: false,
                available: account.available(),
                overdrawn,
            }))
        })
    }

    pub fn quote(&mut self, now: Millis, cmd: &Quote) -> Result<Quoted, Error> {
        let account = self.read(now, &cmd.account)?;
        let user_remaining = cmd.user.as_ref().and_then(|user| account.user_remaining(user));
        let category_remaining = cmd.category.as_ref().and_then(|category| account.category_remaining(category));
        Ok(Quoted::evaluate(account.available(), user_remaining, category_remaining, cmd.amount, cmd.unit))
    }

    pub fn set_plan(&mut self, now: Millis, cmd: &SetPlan) -> Result<Decision<PlanSet>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::Yes,
            reservation: None,
            memo: memo!(SetPlan),
        };
        self.run(now, call, |account, sink| {
            let new = &cmd.plan;
            let same_schedule =
                account.plan.as_ref().is_some_and(|old| old.period == new.period && old.anchor_ms == new.anchor_ms);
            // On the same schedule, grant only what this cycle has not had yet: an upgrade or a
            // mid-cycle add-on purchase is usable at once, a downgrade waits for renewal, and
            // lowering then raising the plan grants nothing twice.
            let (plan_grant, addon_grant) = if same_schedule {
                (
                    (new.plan_credits - account.cycle_plan_granted).max(0),
                    (new.addon_credits - account.cycle_addon_granted).max(0),
                )
            } else {
                (new.plan_credits, new.addon_credits)
            };
            check_balance(account, plan_grant + addon_grant, "plan_credits")?;
            account.plan = Some(new.clone());
            if same_schedule {
                account.emit(sink, now, EventKind::PlanSet { plan: new.clone(), cycle: account.cycle });
                account.grant_plan_lots(sink, plan_grant, addon_grant, now);
            } else {
                let from_plan: Vec<u64> =
                    account.lots.iter().filter(|(_, lot)| lot.from_plan).map(|(id, _)| *id).collect();
                for id in from_plan {
                    account.expire_lot(sink, id, now);
                }
                let cycle = cycle_containing(new.anchor_ms, new.period, now);
                account.emit(sink, now, EventKind::PlanSet { plan: new.clone(), cycle });
                // Without a plan set, start_cycle grants nothing; it is set above, so it grants.
                account.start_cycle(sink, cycle);
            }
            Ok(Decision::Done(PlanSet { cycle: account.cycle, totals: account.totals() }))
        })
    }

    pub fn grant(&mut self, now: Millis, cmd: &Grant) -> Result<Decision<Granted>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::asked(cmd.create_account),
            reservation: None,
            memo: memo!(Grant),
        };
        self.run(now, call, |account, sink| {
            let expires_ms = cmd.expires_ms.unwrap_or(account.cycle.end_ms);
            if expires_ms <= now {
                return Err(Error::expiry_in_past());
            }
            check_balance(account, cmd.amount, "amount")?;
            let lot = account.grant(sink, cmd.kind, cmd.amount, now, expires_ms, false);
            Ok(Decision::Done(Granted { lot, expires_ms, totals: account.totals() }))
        })
    }

    pub fn start_trial(&mut self, now: Millis, cmd: &StartTrial) -> Result<Decision<Granted>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::asked(cmd.create_account),
            reservation: None,
            memo: memo!(StartTrial),
        };
        self.run(now, call, |account, sink| {
            if account.trial_used {
                return Ok(Decision::Declined(super::answer::Decline {
                    reason: DeclineReason::TrialAlreadyUsed,
                    requested: cmd.credits,
                    available: account.available(),
                    user_remaining: None,
                    held: 0,
                    reservation_state: None,
                    account: account.id.clone(),
                    user: None,
                    category: None,
                    category_remaining: None,
                    reservation: None,
                }));
            }
            check_balance(account, cmd.credits, "credits")?;
            let expires_ms = now + cmd.duration_ms;
            account.trial_used = true;
            let lot = account.grant(sink, LotKind::Trial, cmd.credits, now, expires_ms, false);
            Ok(Decision::Done(Granted { lot, expires_ms, totals: account.totals() }))
        })
    }

    pub fn set_user_limit(&mut self, now: Millis, cmd: &SetUserLimit) -> Result<Decision<UserView>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::No,
            reservation: None,
            memo: memo!(SetUserLimit),
        };
        self.run(now, call, |account, sink| {
            account.users.entry(cmd.user.clone()).or_default().limit = cmd.limit;
            let user = cmd.user.as_str().to_owned();
            account.emit(sink, now, EventKind::UserLimitSet { user, limit: cmd.limit });
            Ok(Decision::Done(account.user_view(&cmd.user)))
        })
    }

    pub fn set_category_budget(
        &mut self,
        now: Millis,
        cmd: &SetCategoryBudget,
    ) -> Result<Decision<CategoryView>, Error> {
        let call = Call {
            account: &cmd.account,
            request: &cmd.request,
            fingerprint: cmd.fingerprint(),
            create: Create::No,
            reservation: None,
            memo: memo!(SetCategoryBudget),
        };
        self.run(now, call, |account, sink| {
            account.categories.entry(cmd.category.clone()).or_default().limit = cmd.budget;
            let category = cmd.category.as_str().to_owned();
            account.emit(sink, now, EventKind::CategoryBudgetSet { category, budget: cmd.budget });
            Ok(Decision::Done(account.category_view(&cmd.category)))
        })
    }

    pub fn balance(&mut self, now: Millis, id: &AccountId, user: Option<&UserId>) -> Result<Balance, Error> {
        let account = self.read(now, id)?;
        Ok(Balance { totals: account.totals(), cycle: account.cycle, user: user.map(|user| account.user_view(user)) })
    }

    pub fn account(&mut self, now: Millis, id: &AccountId) -> Result<AccountView, Error> {
        let account = self.read(now, id)?;
        Ok(AccountView {
            id: account.id.clone(),
            plan: account.plan.clone(),
            cycle: account.cycle,
            totals: account.totals(),
            lots: account.lot_views(),
            trial_used: account.trial_used,
            users: account.users.keys().map(|user| account.user_view(user)).collect(),
            categories: account.categories.keys().map(|category| account.category_view(category)).collect(),
            open_reservations: account.deadlines.len() as i64,
        })
    }

    pub fn reservation(&mut self, now: Millis, id: &ReservationId) -> Result<ReservationView, Error> {
        let account = self.read(now, &id.account).map_err(|_| Error::ReservationNotFound(id.clone()))?;
        if !account.reservations.contains_key(&id.seq) {
            return Err(Error::ReservationNotFound(id.clone()));
        }
        Ok(account.reservation_view(id.seq))
    }

    /// Newest first. `before`: only reservations with a smaller sequence (the page token).
    /// Returns the page and the token of the next one.
    pub fn list_reservations(
        &mut self,
        now: Millis,
        id: &AccountId,
        state: Option<ReservationState>,
        page_size: usize,
        before: Option<u64>,
    ) -> Result<(Vec<ReservationView>, Option<u64>), Error> {
        let account = self.read(now, id)?;
        let mut page = Vec::new();
        let mut seq = before.map_or(account.last_reservation, |before| before.saturating_sub(1));
        seq = seq.min(account.last_reservation);
        let mut scanned = 0;
        while seq >= 1 {
            // Bounded work per call (Redis runs this inside one script): past the budget, hand
            // back a token to go on from here, with what was found so far.
            if scanned == LIST_SCAN_MAX {
                return Ok((page, Some(seq + 1)));
            }
            scanned += 1;
            if let Some(reservation) = account.reservations.get(&seq)
                && state.is_none_or(|state| state == reservation.state)
            {
                if page.len() == page_size {
                    let next = page.last().map(|view: &ReservationView| view.id.seq);
                    return Ok((page, next));
                }
                page.push(account.reservation_view(seq));
            }
            seq -= 1;
        }
        Ok((page, None))
    }

    /// The background pass: catches every account up to `now` (expiring holds and lots,
    /// renewing cycles) and forgets what is past retention. Returns how many holds expired.
    pub fn sweep(&mut self, now: Millis) -> usize {
        let mut expired = 0;
        for account in self.accounts.values_mut() {
            let before = account.deadlines.len();
            account.catch_up(&mut Sink { out: &mut self.outbox, request: None }, now);
            expired += before - account.deadlines.len();
            account.purge(now, self.retention_ms);
        }
        expired
    }

    /// Checks invariants 1–3 of docs/rules.md#invariants on every account, from first principles.
    /// Returns the first violation found.
    pub fn check_invariants(&self) -> Result<(), String> {
        for account in self.accounts.values() {
            super::check::account(account)?;
        }
        Ok(())
    }

    /// A complete copy of one account's state (for writing it into another engine).
    pub fn snapshot(&self, id: &AccountId) -> Option<super::snapshot::AccountSnapshot> {
        self.accounts.get(id).map(super::snapshot::AccountSnapshot::of)
    }

    pub fn account_ids(&self) -> Vec<AccountId> {
        let mut ids: Vec<AccountId> = self.accounts.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// The reservation an answer created (Reserve), so its request id lives as long as it does.
fn reservation_of(answer: &Answer) -> Option<u64> {
    match answer {
        Answer::Reserve(Decision::Done(reserved)) => Some(reserved.reservation.seq),
        _ => None,
    }
}

/// Looks up a reservation and declines when it is no longer open.
fn closed_decline(
    account: &Account,
    id: &ReservationId,
    requested: i64,
) -> Result<Option<super::answer::Decline>, Error> {
    let reservation = account.reservations.get(&id.seq).ok_or_else(|| Error::ReservationNotFound(id.clone()))?;
    let reason = match reservation.state {
        ReservationState::Held => return Ok(None),
        ReservationState::Expired => DeclineReason::ReservationExpired,
        ReservationState::Committed | ReservationState::Released => DeclineReason::ReservationClosed,
    };
    Ok(Some(account.reservation_decline(id.seq, reason, requested)))
}

/// Refuses a grant that would lift the live balance (available + held) above `BALANCE_MAX`.
fn check_balance(account: &Account, amount: i64, field: &str) -> Result<(), Error> {
    if account.available() + account.held + amount > BALANCE_MAX {
        return Err(Error::balance_exceeded(field));
    }
    Ok(())
}

/// Opens a reservation holding `amount` (already admitted) and returns its sequence.
fn open_reservation(
    account: &mut Account,
    sink: &mut Sink<'_>,
    now: Millis,
    deadline_ms: Millis,
    amount: i64,
    (user, category, labels): (&UserId, &super::types::Category, &super::types::Labels),
) -> u64 {
    let draws = account.draw(amount);
    account.last_reservation += 1;
    let seq = account.last_reservation;
    account.reservations.insert(
        seq,
        Reservation {
            user: user.clone(),
            category: category.clone(),
            state: ReservationState::Held,
            reserved: amount,
            committed: 0,
            draws: draws.clone(),
            returned: 0,
            commit_count: 0,
            created_ms: now,
            deadline_ms,
            closed_ms: None,
            labels: labels.clone(),
            opened_by: sink.request.cloned(),
            requests: HashMap::new(),
            usage_generation: account.cycle_generation,
            usage_counted: 0,
        },
    );
    account.deadlines.insert((deadline_ms, seq));
    account.held += amount;
    account.count_usage(seq, amount);
    let event = EventKind::Reserved {
        reservation: seq,
        user: user.as_str().to_owned(),
        category: category.as_str().to_owned(),
        amount,
        draws,
        deadline_ms,
        labels: labels.to_map(),
    };
    account.emit(sink, now, event);
    seq
}

/// Moves `amount` (checked against the hold) from held to spent, from the first draws first.
fn spend(
    account: &mut Account,
    sink: &mut Sink<'_>,
    now: Millis,
    seq: u64,
    amount: i64,
    (business_key, already_charged, labels): (&Option<super::types::BusinessKey>, bool, &super::types::Labels),
) {
    let reservation = account.reservations.get_mut(&seq).expect("reservation exists");
    let mut left = amount;
    let mut taken = Vec::new();
    for draw in reservation.draws.iter_mut() {
        if left == 0 {
            break;
        }
        let take = left.min(draw.amount);
        draw.amount -= take;
        left -= take;
        taken.push(Draw { lot: draw.lot, amount: take });
    }
    reservation.draws.retain(|draw| draw.amount > 0);
    reservation.committed += amount;
    reservation.commit_count += 1;
    account.held -= amount;
    account.spent += amount;
    if let Some(key) = business_key
        && !already_charged
    {
        account.charged_keys.insert(key.clone());
    }
    let reservation = &account.reservations[&seq];
    let event = EventKind::Committed {
        reservation: seq,
        user: reservation.user.as_str().to_owned(),
        category: reservation.category.as_str().to_owned(),
        cycle_start_ms: account.cycle.start_ms,
        amount,
        draws: taken,
        business_key: business_key.as_ref().map(|key| key.as_str().to_owned()),
        already_charged,
        labels: labels.to_map(),
    };
    account.emit(sink, now, event);
}

/// Adds new draws to a reservation's held parts, merging parts of the same lot.
pub(super) fn merge_draws(held: &mut Vec<Draw>, new: &[Draw]) {
    for draw in new {
        match held.iter_mut().find(|part| part.lot == draw.lot) {
            Some(part) => part.amount += draw.amount,
            None => held.push(*draw),
        }
    }
}
