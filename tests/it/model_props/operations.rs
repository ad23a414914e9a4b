//! The operations a sequence is made of, how they are generated, and the commands they become.

use super::*;

// ---------------------------------------------------------------------------------------------
// Operations and how they are generated.

#[derive(Clone, Copy, Debug)]
pub(super) enum CommitAmount {
    Zero,
    Percent(i64),
    AllHeld,
    OverHeld(i64),
    Fixed(i64),
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Target {
    CycleEnd(usize),
    Deadline(usize),
    LotExpiry(usize, usize),
}

#[derive(Clone, Debug)]
pub(super) enum Op {
    SetPlan {
        account: usize,
        period: Period,
        anchor_ms: Millis,
        plan_credits: i64,
        addon_credits: i64,
    },
    Grant {
        account: usize,
        kind: LotKind,
        amount: i64,
        expires_in_ms: Option<Millis>,
    },
    GrantBurst {
        account: usize,
        count: usize,
    },
    StartTrial {
        account: usize,
        credits: i64,
        duration_ms: Millis,
    },
    SetUserLimit {
        account: usize,
        user: usize,
        limit: Option<i64>,
    },
    /// A budget on "email" (Reserve's category) or "mobile" (Charge's).
    SetCategoryBudget {
        account: usize,
        mobile: bool,
        budget: Option<i64>,
    },
    Reserve {
        account: usize,
        user: usize,
        amount: i64,
        ttl_ms: Millis,
        labelled: bool,
        /// A partial hold: (credits a unit, least units).
        partial: Option<(i64, i64)>,
    },
    Commit {
        pick: usize,
        amount: CommitAmount,
        final_commit: bool,
        key: Option<usize>,
    },
    Extend {
        pick: usize,
        amount: i64,
        ttl_ms: Option<Millis>,
        /// A partial extension: (credits a unit, least units), when there is an amount.
        partial: Option<(i64, i64)>,
    },
    Release {
        pick: usize,
    },
    Charge {
        account: usize,
        user: usize,
        amount: i64,
        key: Option<usize>,
        /// An outage charge (never declined; what the lots lack is owed).
        overdraft: bool,
    },
    Quote {
        account: usize,
        user: Option<usize>,
        amount: i64,
        unit: i64,
        /// Also check the "email" budget.
        category: bool,
    },
    TimeJump {
        by_ms: Millis,
    },
    JumpTo {
        target: Target,
        offset_ms: Millis,
    },
    Sweep {
        by_ms: Millis,
    },
    /// A plan change on the account's current schedule (or a default one): new credits only.
    ChangePlan {
        account: usize,
        plan_credits: i64,
        addon_credits: i64,
    },
    /// Sends a request again, as is.
    Retry {
        pick: usize,
        which: Retry,
    },
    /// Sends a remembered request's id with other parameters.
    Reuse {
        pick: usize,
        how: Reuse,
    },
    /// Sweeps within ±1 ms of the instant a recent request may be forgotten, then sends it again.
    ForgetEdge {
        pick: usize,
        offset_ms: Millis,
    },
    /// The embedded engine keeps a snapshot of every account (as it does every
    /// `SNAPSHOT_INTERVAL_EVENTS` of an account's events).
    Snapshot,
    /// The embedded engine restarts: the ledger is rebuilt from what it kept in SQL (the latest
    /// snapshots, the events after them, every remembered answer, all through their stored JSON)
    /// and swept, and everything goes on against the restored ledger.
    Restart,
}

/// Which request is sent again as is.
#[derive(Clone, Copy, Debug)]
pub(super) enum Retry {
    /// One the ledger must still remember: it replays.
    Remembered,
    /// One the ledger need not remember any more: a new request, or its reservation is gone.
    Forgotten,
    /// The one that opened a picked reservation (remembered or not).
    Opening,
}

/// How a request id is used again with other parameters.
#[derive(Clone, Copy, Debug)]
pub(super) enum Reuse {
    /// The same operation with one field changed (for Release: another reservation).
    Field,
    /// Another operation in the same scope.
    Operation,
    /// An operation in the other scope (account vs reservation), or on another reservation.
    Elsewhere,
}

pub(super) fn amount() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![12 => 1..=200i64, 1 => (AMOUNT_MAX - 100)..=AMOUNT_MAX]
}

pub(super) fn plan_credits() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 6 => 1..=300i64, 1 => (AMOUNT_MAX - 100)..=AMOUNT_MAX]
}

pub(super) fn period() -> impl Strategy<Value = Period> {
    prop_oneof![Just(Period::Monthly), Just(Period::Quarterly), Just(Period::Semiannual), Just(Period::Annual)]
}

/// Anchors on the current calendar month's start (so a plan's first cycle may start exactly
/// where the account's cycle did), on the start instant, on month ends, a leap day, and anywhere.
pub(super) fn anchor() -> impl Strategy<Value = Millis> {
    prop_oneof![
        Just(ms(2026, 1, 1, 0)),
        Just(start_ms()),
        Just(ms(2025, 12, 31, 12)),
        Just(ms(2026, 1, 31, 0)),
        Just(ms(2024, 2, 29, 0)),
        (-60 * DAY_MS..60 * DAY_MS).prop_map(|offset| start_ms() + offset),
    ]
}

pub(super) fn lot_kind() -> impl Strategy<Value = LotKind> {
    prop_oneof![Just(LotKind::Addon), Just(LotKind::Promo), Just(LotKind::Adjustment)]
}

/// Caller TTLs; 0 means the default. Resolved through `Rules::ttl` like the API does.
pub(super) fn ttl() -> impl Strategy<Value = Millis> {
    prop_oneof![Just(0), 1_000..=600_000i64, HOUR_MS..=7 * DAY_MS]
}

pub(super) fn time_jump() -> impl Strategy<Value = Millis> {
    prop_oneof![4 => 1_000..=600_000i64, 2 => HOUR_MS..=12 * HOUR_MS, 1 => DAY_MS..=40 * DAY_MS]
}

pub(super) fn target() -> impl Strategy<Value = Target> {
    let account = 0..ACCOUNTS.len();
    prop_oneof![
        account.clone().prop_map(Target::CycleEnd),
        any::<usize>().prop_map(Target::Deadline),
        (account, any::<usize>()).prop_map(|(account, pick)| Target::LotExpiry(account, pick)),
    ]
}

pub(super) fn commit_amount() -> impl Strategy<Value = CommitAmount> {
    prop_oneof![
        Just(CommitAmount::Zero),
        (1..=100i64).prop_map(CommitAmount::Percent),
        Just(CommitAmount::AllHeld),
        (1..=50i64).prop_map(CommitAmount::OverHeld),
        amount().prop_map(CommitAmount::Fixed),
    ]
}

/// The operations that create and fund accounts; every sequence starts with a few of them.
pub(super) fn funding_op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    let expiry = prop::option::of(prop_oneof![1 => Just(0), 6 => 1..=60 * DAY_MS]);
    prop_oneof![
        3 => (account.clone(), period(), anchor(), plan_credits(), plan_credits()).prop_map(
            |(account, period, anchor_ms, plan_credits, addon_credits)| Op::SetPlan {
                account,
                period,
                anchor_ms,
                plan_credits,
                addon_credits,
            }
        ),
        4 => (account.clone(), lot_kind(), amount(), expiry).prop_map(|(account, kind, amount, expires_in_ms)| {
            Op::Grant { account, kind, amount, expires_in_ms }
        }),
        1 => (account, prop_oneof![Just(0), amount()], prop_oneof![Just(0), HOUR_MS..=30 * DAY_MS])
            .prop_map(|(account, credits, duration_ms)| Op::StartTrial { account, credits, duration_ms }),
    ]
}

pub(super) fn op_strategy() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    let user = 0..USERS.len();
    let key = prop::option::of(0..KEYS.len());
    let limit = prop::option::of(prop_oneof![0..=150i64, 150..=1_000i64]);
    let extend_ttl = prop::option::of(prop_oneof![1_000..=600_000i64, HOUR_MS..=7 * DAY_MS]);
    prop_oneof![
        8 => funding_op(),
        1 => (account.clone(), 1..=12usize).prop_map(|(account, count)| Op::GrantBurst { account, count }),
        3 => (account.clone(), user.clone(), limit.clone())
            .prop_map(|(account, user, limit)| Op::SetUserLimit { account, user, limit }),
        2 => (account.clone(), any::<bool>(), limit)
            .prop_map(|(account, mobile, budget)| Op::SetCategoryBudget { account, mobile, budget }),
        10 => (account.clone(), user.clone(), amount(), ttl(), any::<bool>(), prop::option::weighted(0.3, (1..=20i64, 1..=4i64)))
            .prop_map(|(account, user, amount, ttl_ms, labelled, partial)| Op::Reserve { account, user, amount, ttl_ms, labelled, partial }),
        10 => (any::<usize>(), commit_amount(), any::<bool>(), key.clone()).prop_map(
            |(pick, amount, final_commit, key)| Op::Commit { pick, amount, final_commit, key }
        ),
        3 => (any::<usize>(), prop_oneof![Just(0), amount()], extend_ttl, prop::option::weighted(0.3, (1..=20i64, 1..=4i64)))
            .prop_map(|(pick, amount, ttl_ms, partial)| Op::Extend { pick, amount, ttl_ms, partial }),
        4 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        5 => (account.clone(), user.clone(), amount(), key, prop::bool::weighted(0.2))
            .prop_map(|(account, user, amount, key, overdraft)| Op::Charge { account, user, amount, key, overdraft }),
        2 => (account, prop::option::of(user), amount(), 1..=20i64, any::<bool>())
            .prop_map(|(account, user, amount, unit, category)| Op::Quote { account, user, amount, unit, category }),
        6 => time_jump().prop_map(|by_ms| Op::TimeJump { by_ms }),
        2 => (target(), -1..=1i64).prop_map(|(target, offset_ms)| Op::JumpTo { target, offset_ms }),
        2 => prop_oneof![Just(0), time_jump()].prop_map(|by_ms| Op::Sweep { by_ms }),
        2 => (any::<usize>(), -1..=1i64).prop_map(|(pick, offset_ms)| Op::ForgetEdge { pick, offset_ms }),
        3 => (0..ACCOUNTS.len(), plan_credits(), plan_credits()).prop_map(|(account, plan_credits, addon_credits)| {
            Op::ChangePlan { account, plan_credits, addon_credits }
        }),
        4 => (any::<usize>(), prop_oneof![2 => Just(Retry::Remembered), 1 => Just(Retry::Forgotten), 1 => Just(Retry::Opening)])
            .prop_map(|(pick, which)| Op::Retry { pick, which }),
        3 => (any::<usize>(), prop_oneof![Just(Reuse::Field), Just(Reuse::Operation), Just(Reuse::Elsewhere)])
            .prop_map(|(pick, how)| Op::Reuse { pick, how }),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Restart),
    ]
}

/// A few funding operations, then the random mix.
pub(super) fn sequence() -> impl Strategy<Value = Vec<Op>> {
    (prop::collection::vec(funding_op(), 0..=4), prop::collection::vec(op_strategy(), 1..SEQUENCE_LEN_MAX)).prop_map(
        |(mut ops, more)| {
            ops.extend(more);
            ops
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Commands, uniformly.

#[derive(Clone, Debug)]
pub(super) enum Cmd {
    Reserve(Reserve),
    Commit(Commit),
    Extend(Extend),
    Release(Release),
    Charge(Charge),
    SetPlan(SetPlan),
    Grant(Grant),
    StartTrial(StartTrial),
    SetUserLimit(SetUserLimit),
    SetCategoryBudget(SetCategoryBudget),
}

impl Cmd {
    pub(super) fn run(&self, ledger: &mut Ledger, now: Millis) -> Result<Answer, Error> {
        match self {
            Cmd::Reserve(c) => ledger.reserve(now, c).map(Answer::Reserve),
            Cmd::Commit(c) => ledger.commit(now, c).map(Answer::Commit),
            Cmd::Extend(c) => ledger.extend(now, c).map(Answer::Extend),
            Cmd::Release(c) => ledger.release(now, c).map(Answer::Release),
            Cmd::Charge(c) => ledger.charge(now, c).map(Answer::Charge),
            Cmd::SetPlan(c) => ledger.set_plan(now, c).map(Answer::SetPlan),
            Cmd::Grant(c) => ledger.grant(now, c).map(Answer::Grant),
            Cmd::StartTrial(c) => ledger.start_trial(now, c).map(Answer::StartTrial),
            Cmd::SetUserLimit(c) => ledger.set_user_limit(now, c).map(Answer::SetUserLimit),
            Cmd::SetCategoryBudget(c) => ledger.set_category_budget(now, c).map(Answer::SetCategoryBudget),
        }
    }

    pub(super) fn account(&self) -> &AccountId {
        match self {
            Cmd::Reserve(c) => &c.account,
            Cmd::Commit(c) => &c.reservation.account,
            Cmd::Extend(c) => &c.reservation.account,
            Cmd::Release(c) => &c.reservation.account,
            Cmd::Charge(c) => &c.account,
            Cmd::SetPlan(c) => &c.account,
            Cmd::Grant(c) => &c.account,
            Cmd::StartTrial(c) => &c.account,
            Cmd::SetUserLimit(c) => &c.account,
            Cmd::SetCategoryBudget(c) => &c.account,
        }
    }

    pub(super) fn request(&self) -> &RequestId {
        match self {
            Cmd::Reserve(c) => &c.request,
            Cmd::Commit(c) => &c.request,
            Cmd::Extend(c) => &c.request,
            Cmd::Release(c) => &c.request,
            Cmd::Charge(c) => &c.request,
            Cmd::SetPlan(c) => &c.request,
            Cmd::Grant(c) => &c.request,
            Cmd::StartTrial(c) => &c.request,
            Cmd::SetUserLimit(c) => &c.request,
            Cmd::SetCategoryBudget(c) => &c.request,
        }
    }

    /// The reservation the command acts on (Commit, Extend, Release).
    pub(super) fn reservation(&self) -> Option<&ReservationId> {
        match self {
            Cmd::Commit(c) => Some(&c.reservation),
            Cmd::Extend(c) => Some(&c.reservation),
            Cmd::Release(c) => Some(&c.reservation),
            _ => None,
        }
    }

    /// Whether the command may create its account.
    pub(super) fn creates_account(&self) -> bool {
        matches!(self, Cmd::SetPlan(_) | Cmd::Grant(_) | Cmd::StartTrial(_))
    }

    /// Where its request id is remembered: its reservation (Commit, Extend, Release) or its account.
    pub(super) fn scope(&self) -> RequestScope {
        match self.reservation() {
            Some(id) => RequestScope::Reservation(id.clone()),
            None => RequestScope::Account(self.account().clone()),
        }
    }

    /// The same request id with other parameters in the same scope (except a Release's field:
    /// its reservation is its scope): one field changed, or another operation.
    pub(super) fn altered(&self, other_operation: bool) -> Cmd {
        let request = self.request().clone();
        if other_operation {
            let account = self.account().clone();
            return match self {
                Cmd::SetUserLimit(_) => Cmd::Grant(Grant {
                    account,
                    kind: LotKind::Promo,
                    amount: 1,
                    expires_ms: None,
                    request,
                    create_account: true,
                }),
                Cmd::Commit(Commit { reservation, .. }) | Cmd::Extend(Extend { reservation, .. }) => {
                    Cmd::Release(Release { reservation: reservation.clone(), request })
                }
                Cmd::Release(c) => Cmd::Commit(Commit {
                    reservation: c.reservation.clone(),
                    amount: 0,
                    final_commit: false,
                    request,
                    business_key: None,
                    labels: Labels::default(),
                }),
                _ => Cmd::SetUserLimit(SetUserLimit { account, user: user_id(0), limit: Some(7), request }),
            };
        }
        let mut altered = self.clone();
        match &mut altered {
            Cmd::Reserve(c) => c.amount = bump(c.amount),
            Cmd::Commit(c) => c.amount = bump(c.amount),
            Cmd::Extend(c) => c.amount = bump(c.amount),
            Cmd::Release(c) => c.reservation.seq += 1,
            Cmd::Charge(c) => c.amount = bump(c.amount),
            Cmd::SetPlan(c) => c.plan.plan_credits = bump(c.plan.plan_credits),
            Cmd::Grant(c) => c.amount = bump(c.amount),
            Cmd::StartTrial(c) => c.credits = bump(c.credits),
            Cmd::SetUserLimit(c) => c.limit = if c.limit.is_some() { None } else { Some(0) },
            Cmd::SetCategoryBudget(c) => c.budget = if c.budget.is_some() { None } else { Some(0) },
        }
        altered
    }

    /// Whether two commands are the same request: the same operation with the same parameters.
    pub(super) fn same_as(&self, other: &Cmd) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

/// Where a request id is remembered, and so where reusing it conflicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RequestScope {
    Account(AccountId),
    Reservation(ReservationId),
}
