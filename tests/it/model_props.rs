//! Property test of the reference model (`credit_sidecar::ledger::Ledger`), the executable
//! specification every engine must agree with.
//!
//! `random_operation_sequences_keep_the_ledger_consistent` runs `CASES` = 512 random sequences,
//! each 0..=4 funding steps then 1..`SEQUENCE_LEN_MAX` = 1..200 steps, on one ledger (24 h
//! retention) with 3 accounts and 3 users, starting 2026-01-15T00:00:00Z. The operation mix:
//! - SetPlan: all four periods; anchors on the current cycle's start (so a schedule change can
//!   restart a cycle at the same instant), on the start instant, month ends, a leap day, anywhere
//!   within ±60 days; plan and add-on credits 0, 1..=300 or near AMOUNT_MAX; and plan changes on
//!   the account's current schedule (new credits only, so lowering and raising again is common);
//! - Grant: addon/promo/adjustment, expiring at the cycle end, up to 60 days out, or "now" (refused);
//!   bursts of AMOUNT_MAX grants that run into BALANCE_MAX (refused as InvalidArgument);
//! - StartTrial (default or given credits and duration; repeated, so TrialAlreadyUsed);
//!   SetUserLimit (Some 0..=1000 or None);
//! - Reserve (TTL default, seconds to days), Commit (0, a part, all or more than held, final or
//!   not, business keys from a set of 3), Extend (amount and/or TTL), Release, Charge (with and
//!   without business key), Quote (with and without user);
//! - time: jumps of 1 s–10 min, 1–12 h, 1–40 days, and jumps to within ±1 ms of a cycle end, a
//!   hold's deadline or a lot's expiry; Sweep (at once, or after a jump);
//! - the embedded engine's snapshots of every account, and restarts: the ledger is replaced by one
//!   restored from the kept snapshots, the events after them and every remembered answer (all
//!   through their stored JSON), then swept, and the sequence goes on against it;
//! - request ids sent again: retries of remembered ones, of forgotten ones (a new request then,
//!   or ReservationNotFound once the reservation is purged), of the Reserve that opened a hold;
//!   a sweep within ±1 ms of the instant a recent request may be forgotten, then a retry of it;
//!   the same id with one field changed, as another operation in the same scope, or in the other
//!   scope (account vs reservation) or on another reservation, where it is a new request.
//!
//! Amounts are mostly 1..=200, so declines are common, sometimes near AMOUNT_MAX. Reservations are
//! picked by index into those seen so far (mostly the newest three); with none seen, the pick names
//! one that does not exist.
//!
//! After every step it checks:
//! 1. `check_invariants` (conservation, nothing negative, closed holds hold nothing);
//! 2. a projection rebuilt only from the drained events equals what the ledger shows: per-account
//!    event seq 1, 2, 3, ... without gaps; totals; every lot's remainder (draws in burn order; a
//!    closing hold's parts go back to their lots only if the lot is alive at the close instant,
//!    the deadline for an expiry, whenever the sweep noticed it: not expired then, nor removed
//!    before it; expiries with exactly what was left); plan grants (a cycle start grants the
//!    plan's credits; a plan change on the same schedule grants only what the cycle has not had
//!    from the plan yet; a schedule change ends the plan's lots first); every reservation's state,
//!    amounts, deadline and commit count; per-user usage and limits; business keys charged at most
//!    once per cycle; the reservation listings, paged;
//! 3. closed reservations never change, and disappear only once purged after their retention;
//! 4. no reservation commits more than it reserved; after a hold is admitted, its user is within
//!    their limit; every answer fits the state it was decided on (declines name the right reason
//!    and figures, BALANCE_MAX refusals happen exactly when the balance would exceed it, a quote
//!    says what Reserve would decide, a call on a hold at or past its deadline finds it expired);
//! 5. request ids, by scope. Commit, Extend and Release ids belong to their reservation and are
//!    remembered as long as it is stored (until a sweep at or after its close + 24 h purges it);
//!    the other operations' ids belong to the account and are remembered until a sweep at or
//!    after max(call, deadline of the hold a Reserve opened, extended) + 24 h. A remembered id
//!    replays its first answer and changes nothing (no events, the same account view); with other
//!    parameters it gets RequestIdReused and changes nothing. In another scope, or once forgotten,
//!    the same id is a new request, checked like any other.
//!
//! It takes about 4 s in a debug build on 2 cores (256 cases of 1..120 steps take 1 s). The unit
//! tests at the end pin down the trickiest interactions one at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use credit_sidecar::ledger::command::{
    Charge, Commit, Extend, Grant, Plan, Quote, Release, Reserve, SetPlan, SetUserLimit, StartTrial,
};
use credit_sidecar::ledger::cycle::{Cycle, cycle_containing};
use credit_sidecar::ledger::durable::{self, DurableState, RememberedAnswer};
use credit_sidecar::ledger::event::{Draw, Event, EventKind, draws_total};
use credit_sidecar::ledger::{
    AMOUNT_MAX, AccountId, Answer, BALANCE_MAX, Balance, BusinessKey, Decision, Decline, DeclineReason, Error, Labels,
    Ledger, LotKind, Millis, Period, Quoted, RequestId, ReservationId, ReservationState, ReservationView, Rules,
    Totals, UserId,
};

const HOUR_MS: Millis = 3_600_000;
const DAY_MS: Millis = 24 * HOUR_MS;
const RETENTION_MS: Millis = DAY_MS;
const ACCOUNTS: [&str; 3] = ["acme", "globex", "initech"];
const USERS: [&str; 3] = ["ann", "bob", "cyd"];
const KEYS: [&str; 3] = ["contact:1:mobile", "contact:2:email", "contact:3:mobile"];
/// Random sequences run, and their length after the funding prefix (exclusive).
const CASES: u32 = 512;
const SEQUENCE_LEN_MAX: usize = 200;

/// Fails the current check with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

fn ms(year: i32, month: u32, day: u32, hour: u32) -> Millis {
    Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap().timestamp_millis()
}

fn start_ms() -> Millis {
    ms(2026, 1, 15, 0)
}

fn account_id(index: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[index]).unwrap()
}

fn user_id(index: usize) -> UserId {
    UserId::parse(USERS[index]).unwrap()
}

fn business_key(index: Option<usize>) -> Option<BusinessKey> {
    index.and_then(|index| BusinessKey::parse_optional(KEYS[index]).unwrap())
}

fn labels(labelled: bool) -> Labels {
    if labelled { Labels::parse([("provider".to_owned(), "x".to_owned())]).unwrap() } else { Labels::default() }
}

fn bump(value: i64) -> i64 {
    if value > 1 { value - 1 } else { value + 1 }
}

// ---------------------------------------------------------------------------------------------
// Operations and how they are generated.

#[derive(Clone, Copy, Debug)]
enum CommitAmount {
    Zero,
    Percent(i64),
    AllHeld,
    OverHeld(i64),
    Fixed(i64),
}

#[derive(Clone, Copy, Debug)]
enum Target {
    CycleEnd(usize),
    Deadline(usize),
    LotExpiry(usize, usize),
}

#[derive(Clone, Debug)]
enum Op {
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
    Reserve {
        account: usize,
        user: usize,
        amount: i64,
        ttl_ms: Millis,
        labelled: bool,
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
    },
    Release {
        pick: usize,
    },
    Charge {
        account: usize,
        user: usize,
        amount: i64,
        key: Option<usize>,
    },
    Quote {
        account: usize,
        user: Option<usize>,
        amount: i64,
        unit: i64,
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
enum Retry {
    /// One the ledger must still remember: it replays.
    Remembered,
    /// One the ledger need not remember any more: a new request, or its reservation is gone.
    Forgotten,
    /// The one that opened a picked reservation (remembered or not).
    Opening,
}

/// How a request id is used again with other parameters.
#[derive(Clone, Copy, Debug)]
enum Reuse {
    /// The same operation with one field changed (for Release: another reservation).
    Field,
    /// Another operation in the same scope.
    Operation,
    /// An operation in the other scope (account vs reservation), or on another reservation.
    Elsewhere,
}

fn amount() -> impl Strategy<Value = i64> + Clone {
    prop_oneof![12 => 1..=200i64, 1 => (AMOUNT_MAX - 100)..=AMOUNT_MAX]
}

fn plan_credits() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 6 => 1..=300i64, 1 => (AMOUNT_MAX - 100)..=AMOUNT_MAX]
}

fn period() -> impl Strategy<Value = Period> {
    prop_oneof![Just(Period::Monthly), Just(Period::Quarterly), Just(Period::Semiannual), Just(Period::Annual)]
}

/// Anchors on the current calendar month's start (so a plan's first cycle may start exactly
/// where the account's cycle did), on the start instant, on month ends, a leap day, and anywhere.
fn anchor() -> impl Strategy<Value = Millis> {
    prop_oneof![
        Just(ms(2026, 1, 1, 0)),
        Just(start_ms()),
        Just(ms(2025, 12, 31, 12)),
        Just(ms(2026, 1, 31, 0)),
        Just(ms(2024, 2, 29, 0)),
        (-60 * DAY_MS..60 * DAY_MS).prop_map(|offset| start_ms() + offset),
    ]
}

fn lot_kind() -> impl Strategy<Value = LotKind> {
    prop_oneof![Just(LotKind::Addon), Just(LotKind::Promo), Just(LotKind::Adjustment)]
}

/// Caller TTLs; 0 means the default. Resolved through `Rules::ttl` like the API does.
fn ttl() -> impl Strategy<Value = Millis> {
    prop_oneof![Just(0), 1_000..=600_000i64, HOUR_MS..=7 * DAY_MS]
}

fn time_jump() -> impl Strategy<Value = Millis> {
    prop_oneof![4 => 1_000..=600_000i64, 2 => HOUR_MS..=12 * HOUR_MS, 1 => DAY_MS..=40 * DAY_MS]
}

fn target() -> impl Strategy<Value = Target> {
    let account = 0..ACCOUNTS.len();
    prop_oneof![
        account.clone().prop_map(Target::CycleEnd),
        any::<usize>().prop_map(Target::Deadline),
        (account, any::<usize>()).prop_map(|(account, pick)| Target::LotExpiry(account, pick)),
    ]
}

fn commit_amount() -> impl Strategy<Value = CommitAmount> {
    prop_oneof![
        Just(CommitAmount::Zero),
        (1..=100i64).prop_map(CommitAmount::Percent),
        Just(CommitAmount::AllHeld),
        (1..=50i64).prop_map(CommitAmount::OverHeld),
        amount().prop_map(CommitAmount::Fixed),
    ]
}

/// The operations that create and fund accounts; every sequence starts with a few of them.
fn funding_op() -> impl Strategy<Value = Op> {
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

fn op_strategy() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    let user = 0..USERS.len();
    let key = prop::option::of(0..KEYS.len());
    let limit = prop::option::of(prop_oneof![0..=150i64, 150..=1_000i64]);
    let extend_ttl = prop::option::of(prop_oneof![1_000..=600_000i64, HOUR_MS..=7 * DAY_MS]);
    prop_oneof![
        8 => funding_op(),
        1 => (account.clone(), 1..=12usize).prop_map(|(account, count)| Op::GrantBurst { account, count }),
        3 => (account.clone(), user.clone(), limit)
            .prop_map(|(account, user, limit)| Op::SetUserLimit { account, user, limit }),
        10 => (account.clone(), user.clone(), amount(), ttl(), any::<bool>()).prop_map(
            |(account, user, amount, ttl_ms, labelled)| Op::Reserve { account, user, amount, ttl_ms, labelled }
        ),
        10 => (any::<usize>(), commit_amount(), any::<bool>(), key.clone()).prop_map(
            |(pick, amount, final_commit, key)| Op::Commit { pick, amount, final_commit, key }
        ),
        3 => (any::<usize>(), prop_oneof![Just(0), amount()], extend_ttl)
            .prop_map(|(pick, amount, ttl_ms)| Op::Extend { pick, amount, ttl_ms }),
        4 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        5 => (account.clone(), user.clone(), amount(), key)
            .prop_map(|(account, user, amount, key)| Op::Charge { account, user, amount, key }),
        2 => (account, prop::option::of(user), amount(), 1..=20i64)
            .prop_map(|(account, user, amount, unit)| Op::Quote { account, user, amount, unit }),
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
fn sequence() -> impl Strategy<Value = Vec<Op>> {
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
enum Cmd {
    Reserve(Reserve),
    Commit(Commit),
    Extend(Extend),
    Release(Release),
    Charge(Charge),
    SetPlan(SetPlan),
    Grant(Grant),
    StartTrial(StartTrial),
    SetUserLimit(SetUserLimit),
}

impl Cmd {
    fn run(&self, ledger: &mut Ledger, now: Millis) -> Result<Answer, Error> {
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
        }
    }

    fn account(&self) -> &AccountId {
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
        }
    }

    fn request(&self) -> &RequestId {
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
        }
    }

    /// The reservation the command acts on (Commit, Extend, Release).
    fn reservation(&self) -> Option<&ReservationId> {
        match self {
            Cmd::Commit(c) => Some(&c.reservation),
            Cmd::Extend(c) => Some(&c.reservation),
            Cmd::Release(c) => Some(&c.reservation),
            _ => None,
        }
    }

    /// Whether the command may create its account.
    fn creates_account(&self) -> bool {
        matches!(self, Cmd::SetPlan(_) | Cmd::Grant(_) | Cmd::StartTrial(_))
    }

    /// Where its request id is remembered: its reservation (Commit, Extend, Release) or its account.
    fn scope(&self) -> RequestScope {
        match self.reservation() {
            Some(id) => RequestScope::Reservation(id.clone()),
            None => RequestScope::Account(self.account().clone()),
        }
    }

    /// The same request id with other parameters in the same scope (except a Release's field:
    /// its reservation is its scope): one field changed, or another operation.
    fn altered(&self, other_operation: bool) -> Cmd {
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
        }
        altered
    }

    /// Whether two commands are the same request: the same operation with the same parameters.
    fn same_as(&self, other: &Cmd) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

/// Where a request id is remembered, and so where reusing it conflicts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum RequestScope {
    Account(AccountId),
    Reservation(ReservationId),
}

// ---------------------------------------------------------------------------------------------
// The projection: every account rebuilt from its events alone.

#[derive(Clone, Debug)]
struct LotState {
    kind: LotKind,
    expires_ms: Millis,
    remaining: i64,
    /// Granted by the plan schedule (a cycle start or a plan change), so a schedule change ends it.
    from_plan: bool,
}

/// A plan lot an operation must grant next: kind, amount, expiry, at, request id.
type PlanLot = (LotKind, i64, Millis, Millis, Option<String>);

#[derive(Clone, Debug)]
struct HoldState {
    user: String,
    category: String,
    labels: BTreeMap<String, String>,
    created_ms: Millis,
    state: ReservationState,
    reserved: i64,
    committed: i64,
    returned: i64,
    commit_count: i64,
    /// What is still held, per lot.
    parts: BTreeMap<u64, i64>,
    deadline_ms: Millis,
    closed_ms: Option<Millis>,
    /// Seen gone from the ledger (forgotten after retention).
    purged: bool,
    /// The cycle (by epoch) this hold's user usage was last counted in, and how much of it.
    usage_epoch: u64,
    usage_counted: i64,
}

impl HoldState {
    fn held(&self) -> i64 {
        self.parts.values().sum()
    }
}

#[derive(Debug, Default)]
struct Projection {
    last_seq: u64,
    granted: i64,
    held: i64,
    spent: i64,
    expired: i64,
    last_lot: u64,
    lots: BTreeMap<u64, LotState>,
    last_reservation: u64,
    holds: BTreeMap<u64, HoldState>,
    charged_keys: BTreeSet<String>,
    /// Per user: limit, and what was held or spent this cycle.
    users: BTreeMap<String, (Option<i64>, i64)>,
    /// Counts CycleStarted events: usage belongs to the cycle it was counted in.
    epoch: u64,
    plan: Option<Plan>,
    /// The cycle of the last CycleStarted event (none before the first).
    cycle: Option<Cycle>,
    /// The cycle the ledger showed at the last check.
    seen_cycle: Option<Cycle>,
    /// Plan and add-on credits the plan granted this cycle: a cycle start sets them to what it
    /// grants, a plan change on the same schedule grants only what they lack.
    plan_granted: (i64, i64),
    /// The plan lots the last PlanSet or CycleStarted must be followed by, in order.
    pending_plan_lots: VecDeque<PlanLot>,
    /// A schedule change's PlanSet was seen: its CycleStarted must follow.
    expect_cycle_start: Option<Cycle>,
    /// Plan lots were ended early: only more of them, then a schedule change's PlanSet, may follow.
    ending_plan_lots: bool,
    /// Lots gone (expired, or ended by a schedule change), and when.
    removed_lots: BTreeMap<u64, Millis>,
}

impl Projection {
    fn available(&self) -> i64 {
        self.lots.values().map(|lot| lot.remaining).sum()
    }

    fn totals(&self) -> Totals {
        Totals {
            granted: self.granted,
            available: self.available(),
            held: self.held,
            spent: self.spent,
            expired: self.expired,
        }
    }

    fn apply(&mut self, event: &Event, now: Millis) -> Result<(), String> {
        ensure!(event.seq == self.last_seq + 1, "event seq {} after {}", event.seq, self.last_seq);
        self.last_seq = event.seq;
        ensure!(event.at_ms <= now, "event at {} after now {now}", event.at_ms);
        self.check_plan_sequence(event)?;
        match &event.kind {
            EventKind::PlanSet { plan, cycle } => self.plan_set(event, plan, *cycle)?,
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
                self.users.values_mut().for_each(|(_, used)| *used = 0);
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
                let user = hold.user.clone();
                self.users.entry(user).or_default().1 += amount;
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
    fn check_plan_sequence(&self, event: &Event) -> Result<(), String> {
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

    fn expect_plan_lots(&mut self, event: &Event, (plan_credits, addon_credits): (i64, i64), expires_ms: Millis) {
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
    fn plan_set(&mut self, event: &Event, plan: &Plan, cycle: Cycle) -> Result<(), String> {
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
    fn plan_events_complete(&self) -> Result<(), String> {
        ensure!(
            self.pending_plan_lots.is_empty() && self.expect_cycle_start.is_none() && !self.ending_plan_lots,
            "plan events stopped short: lots {:?}, cycle {:?}, ending {}",
            self.pending_plan_lots,
            self.expect_cycle_start,
            self.ending_plan_lots
        );
        Ok(())
    }

    fn open_hold(&mut self, reservation: u64) -> Result<&mut HoldState, String> {
        let hold = self.holds.get_mut(&reservation).ok_or(format!("event on unknown reservation {reservation}"))?;
        ensure!(hold.state == ReservationState::Held, "event on closed reservation {reservation}");
        Ok(hold)
    }

    /// Takes draws from lots, checking they cover `amount` and follow the burn order: soonest
    /// expiry first, then kind order, then age; every lot before the last one drawn is emptied.
    fn take_from_lots(&mut self, draws: &[Draw], amount: i64) -> Result<(), String> {
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

    fn commit(&mut self, reservation: u64, amount: i64, draws: &[Draw]) -> Result<(), String> {
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

    fn charge_key(&mut self, key: Option<&str>, already_charged: bool, amount: i64) -> Result<(), String> {
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
    fn close(
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
        }
        for draw in returned {
            self.lots.get_mut(&draw.lot).expect("live lot").remaining += draw.amount;
        }
        self.held -= total;
        self.expired += expired;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The harness: runs steps against the ledger and checks everything after each.

/// A request that got an answer, for retries: the newest one per scope and request id.
#[derive(Clone, Debug)]
struct Sent {
    cmd: Cmd,
    answer: Answer,
    scope: RequestScope,
    /// Account scope: the first sweep at or after this instant forgets it (retention past the
    /// call, or past the deadline of the hold a Reserve opened, moved on by each Extend).
    /// Reservation scope: unused; it is remembered as long as the reservation is stored.
    keep_until_ms: Millis,
}

/// What the harness knew before a command ran.
struct Before {
    account_exists: bool,
    hold: Option<HoldState>,
    trial_started: bool,
}

struct Harness {
    ledger: Ledger,
    rules: Rules,
    now: Millis,
    last_sweep_ms: Option<Millis>,
    next_request: u64,
    projections: BTreeMap<AccountId, Projection>,
    reservations: Vec<ReservationId>,
    snapshots: HashMap<ReservationId, ReservationView>,
    sent: Vec<Sent>,
    trials: BTreeSet<AccountId>,
    /// Every event so far, for the restore check.
    history: Vec<Event>,
    /// What the embedded engine would have kept in SQL: each account's latest snapshot (its last
    /// event, its JSON) and each remembered answer by key (the answer, its JSON).
    kept_snapshots: HashMap<AccountId, (u64, String)>,
    kept_answers: HashMap<(AccountId, u64, RequestId), (RememberedAnswer, String)>,
    checks: u64,
}

impl Harness {
    fn new() -> Self {
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

    fn step(&mut self, op: &Op) -> Result<(), String> {
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
            Op::Quote { account, user, amount, unit } => self.quote(*account, *user, *amount, *unit)?,
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

    fn next_request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId::parse(&format!("req-{}", self.next_request)).unwrap()
    }

    fn pick_reservation(&self, pick: usize) -> ReservationId {
        if self.reservations.is_empty() {
            return ReservationId { account: account_id(0), seq: 1_000 };
        }
        let len = self.reservations.len();
        // Mostly one of the newest three, which are likelier to be open; sometimes any.
        let index = if pick.is_multiple_of(4) { (pick / 4) % len } else { len - 1 - (pick / 4) % len.min(3) };
        self.reservations[index].clone()
    }

    fn hold(&self, id: &ReservationId) -> Option<&HoldState> {
        self.projections.get(&id.account).and_then(|projection| projection.holds.get(&id.seq))
    }

    fn build(&mut self, op: &Op) -> Cmd {
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
            Op::SetUserLimit { account, user, limit } => {
                Cmd::SetUserLimit(SetUserLimit { account: account_id(account), user: user_id(user), limit, request })
            }
            Op::Reserve { account, user, amount, ttl_ms, labelled } => Cmd::Reserve(Reserve {
                account: account_id(account),
                user: user_id(user),
                category: self.rules.category("email").unwrap(),
                amount,
                ttl_ms: self.rules.ttl(ttl_ms).unwrap(),
                request,
                labels: labels(labelled),
            }),
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
            Op::Extend { pick, amount, ttl_ms } => {
                let amount = if amount == 0 && ttl_ms.is_none() { 1 } else { amount };
                let ttl_ms = ttl_ms.map(|ttl| self.rules.ttl(ttl).unwrap());
                Cmd::Extend(Extend { reservation: self.pick_reservation(pick), amount, ttl_ms, request })
            }
            Op::Release { pick } => Cmd::Release(Release { reservation: self.pick_reservation(pick), request }),
            Op::Charge { account, user, amount, key } => Cmd::Charge(Charge {
                account: account_id(account),
                user: user_id(user),
                category: self.rules.category("mobile").unwrap(),
                amount,
                request,
                business_key: business_key(key),
                labels: Labels::default(),
            }),
            _ => unreachable!("not a command: {op:?}"),
        }
    }

    fn jump_to(&mut self, target: Target, offset_ms: Millis) {
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

    fn apply(&mut self, events: &[Event]) -> Result<(), String> {
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
    fn sync(&mut self, request: Option<&RequestId>) -> Result<Vec<Event>, String> {
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

    fn balance(&mut self, account: &AccountId, user: Option<&UserId>) -> Result<Balance, String> {
        self.ledger.balance(self.now, account, user).map_err(|error| format!("balance of {account}: {error}"))
    }

    // -- Fresh commands ------------------------------------------------------------------------

    fn before(&self, cmd: &Cmd) -> Before {
        let projection = self.projections.get(cmd.account());
        Before {
            account_exists: projection.is_some(),
            hold: cmd.reservation().and_then(|id| self.hold(id)).filter(|hold| !hold.purged).cloned(),
            trial_started: self.trials.contains(cmd.account()),
        }
    }

    fn fresh(&mut self, cmd: Cmd) -> Result<(), String> {
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
    fn remember(&mut self, cmd: Cmd, answer: Answer) -> Result<(), String> {
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
            opened_by.keep_until_ms = opened_by.keep_until_ms.max(extended.deadline_ms + RETENTION_MS);
        }
        self.sent.push(Sent { cmd, answer, scope, keep_until_ms });
        Ok(())
    }

    fn verify(
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
            _ => Err("unexpected result".into()),
        }
    }

    fn verify_reserve(
        &mut self,
        c: &Reserve,
        decision: &Decision<credit_sidecar::ledger::Reserved>,
    ) -> Result<(), String> {
        let balance = self.balance(&c.account, Some(&c.user))?;
        match decision {
            Decision::Done(reserved) => {
                ensure!(reserved.amount == c.amount && reserved.deadline_ms == self.now + c.ttl_ms, "reserve answer");
                ensure!(reserved.available == balance.totals.available, "reserve answer's available");
                let hold = self.hold(&reserved.reservation).ok_or("reservation without a Reserved event")?;
                ensure!(hold.reserved == c.amount && hold.user == c.user.as_str(), "Reserved event differs");
                within_limit(&balance)
            }
            Decision::Declined(decline) => admit_decline(decline, c.amount, &balance),
        }
    }

    fn verify_charge(
        &mut self,
        c: &Charge,
        decision: &Decision<credit_sidecar::ledger::Charged>,
    ) -> Result<(), String> {
        let balance = self.balance(&c.account, Some(&c.user))?;
        let charged = match decision {
            Decision::Declined(decline) => return admit_decline(decline, c.amount, &balance),
            Decision::Done(charged) => charged,
        };
        ensure!(charged.available == balance.totals.available, "charge answer's available");
        match &charged.reservation {
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
                    hold.state == ReservationState::Committed && hold.committed == c.amount,
                    "charge hold {hold:?}"
                );
                within_limit(&balance)
            }
        }
    }

    fn verify_commit(
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

    fn verify_extend(
        &mut self,
        c: &Extend,
        before: &Before,
        decision: &Decision<credit_sidecar::ledger::Extended>,
    ) -> Result<(), String> {
        let hold = before.hold.as_ref().ok_or("extend of an unknown hold")?;
        let user = UserId::parse(&hold.user).unwrap();
        let balance = self.balance(&c.reservation.account, Some(&user))?;
        let extended = match decision {
            Decision::Declined(decline) => {
                ensure!(c.amount > 0, "extend without amount declined");
                return admit_decline(decline, c.amount, &balance);
            }
            Decision::Done(extended) => extended,
        };
        let deadline = c.ttl_ms.map_or(hold.deadline_ms, |ttl| hold.deadline_ms.max(self.now + ttl));
        ensure!(extended.added == c.amount && extended.deadline_ms == deadline, "extend answer");
        ensure!(extended.held == hold.held() + c.amount, "extend held {}", extended.held);
        ensure!(extended.reservation == self.reservation_view(&c.reservation)?, "extend answer differs from the view");
        if c.amount > 0 { within_limit(&balance) } else { Ok(()) }
    }

    /// Live balance (available + held) after the step plus `grant`: over BALANCE_MAX or not.
    fn over_balance_max(&mut self, account: &AccountId, grant: i64) -> Result<bool, String> {
        if !self.projections.contains_key(account) {
            return Ok(grant > BALANCE_MAX);
        }
        let totals = self.balance(account, None)?.totals;
        Ok(totals.available + totals.held + grant > BALANCE_MAX)
    }

    fn verify_set_plan(&mut self, c: &SetPlan, result: &Result<Answer, Error>) -> Result<(), String> {
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

    fn verify_grant(&mut self, c: &Grant, result: &Result<Answer, Error>) -> Result<(), String> {
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
                let lot = &self.projections[&c.account].lots[&granted.lot];
                ensure!(lot.kind == c.kind && lot.remaining == c.amount, "granted lot {lot:?}");
                Ok(())
            }
            _ => Err("unexpected grant result".into()),
        }
    }

    fn verify_trial(&mut self, c: &StartTrial, before: &Before, result: &Result<Answer, Error>) -> Result<(), String> {
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
                let lot = &self.projections[&c.account].lots[&granted.lot];
                ensure!(lot.kind == LotKind::Trial && lot.remaining == c.credits, "trial lot {lot:?}");
                self.trials.insert(c.account.clone());
            }
            _ => return Err("unexpected start_trial result".into()),
        }
        Ok(())
    }

    // -- Reads, sweeps, retries ----------------------------------------------------------------

    fn quote(&mut self, account: usize, user: Option<usize>, amount: i64, unit: i64) -> Result<(), String> {
        let id = account_id(account);
        let user = user.map(user_id);
        let cmd = Quote { account: id.clone(), user: user.clone(), amount, unit };
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
        let decline = if available < amount {
            Some(DeclineReason::InsufficientCredit)
        } else if user_remaining.is_some_and(|remaining| remaining < amount) {
            Some(DeclineReason::UserLimitReached)
        } else {
            None
        };
        let budget = user_remaining.map_or(available, |remaining| remaining.min(available));
        let expected = Quoted {
            fits: decline.is_none(),
            decline,
            amount,
            available,
            user_remaining,
            units_that_fit: budget / unit,
        };
        ensure!(quoted == expected, "quote {quoted:?}, expected {expected:?}");
        ensure!(self.ledger.drain_events().is_empty(), "a quote emitted events");
        let after = self.ledger.account(self.now, &id).map_err(|e| e.to_string())?;
        ensure!(after == view, "a quote changed the account");
        Ok(())
    }

    fn sweep(&mut self) -> Result<(), String> {
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
    fn stored(&self, id: &ReservationId) -> bool {
        self.hold(id).is_some_and(|hold| !forgettable(hold, self.last_sweep_ms))
    }

    /// Whether the ledger must still remember this request, by its scope: the account's until a
    /// sweep at or after its keep-until instant; a reservation's while the reservation is stored.
    fn remembered(&self, sent: &Sent) -> bool {
        match &sent.scope {
            RequestScope::Account(_) => self.last_sweep_ms.is_none_or(|sweep| sweep < sent.keep_until_ms),
            RequestScope::Reservation(id) => self.stored(id),
        }
    }

    /// Sends a request again, as is: one still remembered (it must replay), one forgotten (a
    /// new request then: it runs again, or finds its reservation gone), or the one that opened a
    /// reservation (an Extend keeps it remembered longer).
    fn retry(&mut self, pick: usize, which: Retry) -> Result<(), String> {
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
    fn forget_edge(&mut self, pick: usize, offset_ms: Millis) -> Result<(), String> {
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
    fn reuse(&mut self, pick: usize, how: Reuse) -> Result<(), String> {
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
    fn send_again(&mut self, cmd: Cmd) -> Result<(), String> {
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
    fn resend(&mut self, sent: Sent, cmd: Cmd) -> Result<(), String> {
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

    fn reservation_view(&mut self, id: &ReservationId) -> Result<ReservationView, String> {
        self.ledger.reservation(self.now, id).map_err(|error| format!("reservation {id}: {error}"))
    }

    // -- Checks after every step ---------------------------------------------------------------

    /// After a time jump nothing is read (the next operation catches up lazily).
    fn check_quiet(&mut self) -> Result<(), String> {
        self.ledger.check_invariants()?;
        ensure!(self.ledger.drain_events().is_empty(), "events without an operation");
        Ok(())
    }

    fn check_all(&mut self) -> Result<(), String> {
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
    fn keep_answers(&mut self) {
        for memo in self.ledger.drain_answers() {
            let key = (memo.account.clone(), memo.reservation.unwrap_or(0), memo.request.clone());
            let text = durable::encode_answer(&memo.answer);
            self.kept_answers.insert(key, (memo, text));
        }
    }

    fn keep_snapshots(&mut self) {
        for id in self.ledger.account_ids() {
            let snapshot = self.ledger.snapshot(&id).expect("a listed account");
            self.kept_snapshots.insert(id, (snapshot.last_event, durable::encode_snapshot(&snapshot)));
        }
    }

    /// Replaces the ledger with one restored from what was kept, as the embedded engine's start
    /// does, then sweeps (as it does too). Every later step checks the restored ledger.
    fn restart(&mut self) -> Result<(), String> {
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
    fn check_restore(&mut self) -> Result<(), String> {
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

    fn check_account(&mut self, id: &AccountId) -> Result<(), String> {
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
    fn list(&mut self, id: &AccountId, state: Option<ReservationState>) -> Result<Vec<u64>, String> {
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

    fn check_reservation(&mut self, id: &ReservationId) -> Result<(), String> {
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
fn forgettable(hold: &HoldState, last_sweep_ms: Option<Millis>) -> bool {
    hold.closed_ms.zip(last_sweep_ms).is_some_and(|(closed, sweep)| closed + RETENTION_MS <= sweep)
}

/// Whether an answer records a change (and so emits events with its request id).
fn answer_changes_state(answer: &Answer) -> bool {
    match answer {
        Answer::Reserve(decision) => decision.declined().is_none(),
        Answer::Commit(decision) => decision.declined().is_none(),
        Answer::Extend(decision) => decision.declined().is_none(),
        Answer::Release(decision) => decision.declined().is_none(),
        Answer::Charge(decision) => matches!(decision, Decision::Done(charged) if charged.reservation.is_some()),
        Answer::SetPlan(decision) => decision.declined().is_none(),
        Answer::Grant(decision) => decision.declined().is_none(),
        Answer::StartTrial(decision) => decision.declined().is_none(),
        Answer::SetUserLimit(decision) => decision.declined().is_none(),
    }
}

/// The decline any call on a closed hold, or one past its deadline, must get.
fn closed_reason(hold: &HoldState, now: Millis) -> Option<(DeclineReason, ReservationState)> {
    match hold.state {
        ReservationState::Held if hold.deadline_ms > now => None,
        ReservationState::Held | ReservationState::Expired => {
            Some((DeclineReason::ReservationExpired, ReservationState::Expired))
        }
        state => Some((DeclineReason::ReservationClosed, state)),
    }
}

fn declined(result: &Result<Answer, Error>) -> Result<&Decline, String> {
    let decline = match result {
        Ok(Answer::Commit(decision)) => decision.declined(),
        Ok(Answer::Extend(decision)) => decision.declined(),
        Ok(Answer::Release(decision)) => decision.declined(),
        _ => None,
    };
    decline.ok_or_else(|| "expected a decline".to_owned())
}

fn done<T>(decision: &Decision<T>) -> Result<&T, String> {
    match decision {
        Decision::Done(value) => Ok(value),
        Decision::Declined(decline) => Err(format!("unexpected decline {decline:?}")),
    }
}

/// A hold refused by the admission checks: account credit first, then the user's limit.
fn admit_decline(decline: &Decline, amount: i64, balance: &Balance) -> Result<(), String> {
    let remaining = balance.user.as_ref().and_then(|user| user.remaining);
    ensure!(decline.requested == amount && decline.available == balance.totals.available, "decline figures");
    ensure!(
        decline.user_remaining == remaining,
        "decline user_remaining {:?} != {remaining:?}",
        decline.user_remaining
    );
    match decline.reason {
        DeclineReason::InsufficientCredit => ensure!(decline.available < amount, "credit decline with enough credit"),
        DeclineReason::UserLimitReached => ensure!(
            decline.available >= amount && remaining.is_some_and(|remaining| remaining < amount),
            "user-limit decline within the limit"
        ),
        reason => return Err(format!("hold declined with {reason:?}")),
    }
    Ok(())
}

/// After a hold was admitted, its user is within their limit.
fn within_limit(balance: &Balance) -> Result<(), String> {
    let user = balance.user.as_ref().ok_or("no user view")?;
    ensure!(
        user.limit.is_none_or(|limit| user.used <= limit),
        "user {} used {} over limit {:?}",
        user.user,
        user.used,
        user.limit
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_the_ledger_consistent(ops in sequence()) {
        let mut harness = Harness::new();
        for (index, op) in ops.iter().enumerate() {
            harness
                .step(op)
                .map_err(|message| TestCaseError::fail(format!("step {index} {op:?} at {}: {message}", harness.now)))?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The trickiest interactions, one at a time.

fn grant(account: &str, kind: LotKind, amount: i64, expires_ms: Option<Millis>, request: &str) -> Grant {
    Grant {
        account: AccountId::parse(account).unwrap(),
        kind,
        amount,
        expires_ms,
        request: RequestId::parse(request).unwrap(),
        create_account: true,
    }
}

fn reserve(account: &str, user: &str, amount: i64, ttl_ms: Millis, request: &str) -> Reserve {
    Reserve {
        account: AccountId::parse(account).unwrap(),
        user: UserId::parse(user).unwrap(),
        category: Rules::default().category("email").unwrap(),
        amount,
        ttl_ms,
        request: RequestId::parse(request).unwrap(),
        labels: Labels::default(),
    }
}

fn charge(account: &str, user: &str, amount: i64, key: &str, request: &str) -> Charge {
    Charge {
        account: AccountId::parse(account).unwrap(),
        user: UserId::parse(user).unwrap(),
        category: Rules::default().category("mobile").unwrap(),
        amount,
        request: RequestId::parse(request).unwrap(),
        business_key: BusinessKey::parse_optional(key).unwrap(),
        labels: Labels::default(),
    }
}

fn set_plan(account: &str, anchor_ms: Millis, plan_credits: i64, addon_credits: i64, request: &str) -> SetPlan {
    SetPlan {
        account: AccountId::parse(account).unwrap(),
        plan: Plan { period: Period::Monthly, anchor_ms, plan_credits, addon_credits },
        request: RequestId::parse(request).unwrap(),
    }
}

fn set_limit(account: &str, user: &str, limit: Option<i64>, request: &str) -> SetUserLimit {
    SetUserLimit {
        account: AccountId::parse(account).unwrap(),
        user: UserId::parse(user).unwrap(),
        limit,
        request: RequestId::parse(request).unwrap(),
    }
}

fn totals(ledger: &mut Ledger, now: Millis, account: &str) -> Totals {
    ledger.balance(now, &AccountId::parse(account).unwrap(), None).unwrap().totals
}

#[test]
fn a_held_part_whose_lot_expired_before_release_counts_as_expired() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    ledger.grant(t0, &grant("acme", LotKind::Promo, 100, Some(t0 + HOUR_MS), "g1")).unwrap();
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 50, None, "g2")).unwrap();
    // The promo lot expires first, so it is drawn first.
    let reserved = ledger.reserve(t0, &reserve("acme", "ann", 120, 2 * HOUR_MS, "r1")).unwrap().done().unwrap();
    ledger.drain_events();
    // Released at the very millisecond the promo lot dies: its part cannot go back.
    let release = Release { reservation: reserved.reservation, request: RequestId::parse("x1").unwrap() };
    let released = ledger.release(t0 + HOUR_MS, &release).unwrap().done().unwrap();
    assert_eq!(released.returned, 120);
    let closed: Vec<EventKind> = ledger.drain_events().into_iter().map(|event| event.kind).collect();
    assert!(closed.contains(&EventKind::LotExpired { lot: 1, amount: 0 }), "{closed:?}");
    let expected_close = EventKind::Closed {
        reservation: 1,
        state: ReservationState::Released,
        returned: vec![Draw { lot: 2, amount: 20 }],
        expired: 100,
    };
    assert!(closed.contains(&expected_close), "{closed:?}");
    let expected = Totals { granted: 150, available: 50, held: 0, spent: 0, expired: 100 };
    assert_eq!(totals(&mut ledger, t0 + HOUR_MS, "acme"), expected);
    ledger.check_invariants().unwrap();
}

#[test]
fn renewal_happens_exactly_at_the_boundary_millisecond() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let (anchor, boundary) = (ms(2026, 1, 10, 9), ms(2026, 2, 10, 9));
    let acme = AccountId::parse("acme").unwrap();
    let ann = UserId::parse("ann").unwrap();
    ledger.set_plan(start_ms(), &set_plan("acme", anchor, 100, 20, "p1")).unwrap();
    ledger.set_user_limit(start_ms(), &set_limit("acme", "ann", Some(50), "l1")).unwrap();
    ledger.charge(start_ms(), &charge("acme", "ann", 30, "", "c1")).unwrap().done().unwrap();
    ledger.drain_events();

    let before = ledger.balance(boundary - 1, &acme, Some(&ann)).unwrap();
    assert_eq!(before.cycle, Cycle { start_ms: anchor, end_ms: boundary });
    assert_eq!((before.totals.available, before.totals.expired), (90, 0));
    assert_eq!(before.user.unwrap().used, 30);
    assert!(ledger.drain_events().is_empty(), "nothing happens one millisecond early");

    let after = ledger.balance(boundary, &acme, Some(&ann)).unwrap();
    assert_eq!(after.cycle.start_ms, boundary);
    assert_eq!(after.totals, Totals { granted: 240, available: 120, held: 0, spent: 30, expired: 90 });
    assert_eq!(after.user.unwrap().used, 0, "user usage restarts with the cycle");
    let events = ledger.drain_events();
    assert!(events.iter().all(|event| event.at_ms == boundary), "{events:?}");
    let kinds: Vec<&str> = events
        .iter()
        .map(|event| match event.kind {
            EventKind::LotExpired { .. } => "expired",
            EventKind::CycleStarted { .. } => "cycle",
            EventKind::LotGranted { .. } => "granted",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["expired", "expired", "cycle", "granted", "granted"]);
    ledger.check_invariants().unwrap();
}

#[test]
fn a_business_key_is_charged_once_per_cycle_and_again_in_the_next() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    ledger.set_plan(t0, &set_plan("acme", ms(2026, 1, 1, 0), 100, 0, "p1")).unwrap();
    let hold = ledger.reserve(t0, &reserve("acme", "ann", 20, HOUR_MS, "r1")).unwrap().done().unwrap();
    let commit = |amount, request: &str| Commit {
        reservation: hold.reservation.clone(),
        amount,
        final_commit: false,
        request: RequestId::parse(request).unwrap(),
        business_key: BusinessKey::parse_optional("contact:1:mobile").unwrap(),
        labels: Labels::default(),
    };
    let first = ledger.commit(t0, &commit(5, "k1")).unwrap().done().unwrap();
    assert_eq!((first.charged, first.already_charged, first.held), (5, false, 15));
    let second = ledger.commit(t0, &commit(5, "k2")).unwrap().done().unwrap();
    assert_eq!((second.charged, second.already_charged, second.held), (0, true, 15));
    let charged = ledger.charge(t0, &charge("acme", "bob", 7, "contact:1:mobile", "k3")).unwrap().done().unwrap();
    assert_eq!((charged.reservation, charged.charged, charged.already_charged), (None, 0, true));
    assert_eq!(totals(&mut ledger, t0, "acme").spent, 5);

    let next_cycle = ms(2026, 2, 1, 0);
    let key = "contact:1:mobile";
    let charged = ledger.charge(next_cycle, &charge("acme", "bob", 7, key, "k4")).unwrap().done().unwrap();
    assert_eq!((charged.charged, charged.already_charged), (7, false));
    let again = ledger.charge(next_cycle, &charge("acme", "bob", 7, key, "k5")).unwrap().done().unwrap();
    assert_eq!((again.charged, again.already_charged), (0, true));
    assert_eq!(totals(&mut ledger, next_cycle, "acme").spent, 12);
    ledger.check_invariants().unwrap();
}

/// Found by the property test: usage was tagged with the cycle's start instant, and a schedule
/// change restarting the cycle at the same instant let a release drive usage below zero.
#[test]
fn a_plan_change_that_restarts_the_same_cycle_keeps_user_usage_consistent() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    let (acme, ann) = (AccountId::parse("acme").unwrap(), UserId::parse("ann").unwrap());
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 100, Some(t0 + 30 * DAY_MS), "g1")).unwrap();
    ledger.set_user_limit(t0, &set_limit("acme", "ann", Some(60), "l1")).unwrap();
    let hold = ledger.reserve(t0, &reserve("acme", "ann", 50, HOUR_MS, "r1")).unwrap().done().unwrap();
    // The account's calendar-month cycle starts on Jan 1; so does the new plan's first cycle.
    ledger.set_plan(t0, &set_plan("acme", ms(2026, 1, 1, 0), 0, 0, "p1")).unwrap();
    assert_eq!(ledger.balance(t0, &acme, Some(&ann)).unwrap().user.unwrap().used, 0);
    let release = Release { reservation: hold.reservation, request: RequestId::parse("x1").unwrap() };
    ledger.release(t0, &release).unwrap().done().unwrap();
    // The hold was counted in the cycle the plan change ended; releasing it must not lower the
    // new cycle's usage below zero (which would lift ann's limit by 50).
    assert_eq!(ledger.balance(t0, &acme, Some(&ann)).unwrap().user.unwrap().used, 0);
    ledger.check_invariants().unwrap();
}

/// docs/rules.md#lifecycle: request ids are remembered "at least as long as the reservation lives". A hold
/// extended past its first deadline lives on: a late retry of its Reserve must not hold again,
/// and one of a commit made before the extension must not spend again.
#[test]
fn request_ids_on_a_hold_are_remembered_while_the_extended_hold_lives() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 100, Some(t0 + 30 * DAY_MS), "g1")).unwrap();
    let first = ledger.reserve(t0, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap();
    let reservation = first.clone().done().unwrap().reservation;
    let commit = Commit {
        reservation: reservation.clone(),
        amount: 10,
        final_commit: false,
        request: RequestId::parse("c1").unwrap(),
        business_key: None,
        labels: Labels::default(),
    };
    let committed = ledger.commit(t0, &commit).unwrap();
    let request = RequestId::parse("e1").unwrap();
    let extend = Extend { reservation: reservation.clone(), amount: 0, ttl_ms: Some(7 * DAY_MS), request };
    ledger.extend(t0 + 1_000, &extend).unwrap().done().unwrap();

    let later = t0 + 2 * DAY_MS;
    ledger.sweep(later);
    assert_eq!(ledger.reservation(later, &reservation).unwrap().state, ReservationState::Held);
    let retry = ledger.reserve(later, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap();
    assert_eq!(retry, first, "a Reserve retried while its hold lives must get the first answer");
    assert_eq!(ledger.commit(later, &commit).unwrap(), committed, "a commit retried while its hold lives");
    let expected = Totals { granted: 100, available: 50, held: 40, spent: 10, expired: 0 };
    assert_eq!(totals(&mut ledger, later, "acme"), expected);
}

/// Rule: Commit, Extend and Release ids belong to their reservation and are remembered as long as
/// it is stored: past 24 h while it is open (here extended past 2 days), past its close, until
/// the sweep at its close + retention purges it. Elsewhere (another reservation, an account
/// operation) the same id is a new request.
#[test]
fn a_commit_id_lives_as_long_as_its_reservation_and_is_a_new_request_elsewhere() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    let c1 = RequestId::parse("c1").unwrap();
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 1_000, Some(t0 + 60 * DAY_MS), "g1")).unwrap();
    let hold = ledger.reserve(t0, &reserve("acme", "ann", 100, 300_000, "r1")).unwrap().done().unwrap().reservation;
    let other = ledger.reserve(t0, &reserve("acme", "bob", 100, 7 * DAY_MS, "r2")).unwrap().done().unwrap().reservation;
    let commit = |reservation: &ReservationId, amount| Commit {
        reservation: reservation.clone(),
        amount,
        final_commit: false,
        request: c1.clone(),
        business_key: None,
        labels: Labels::default(),
    };
    let first = ledger.commit(t0, &commit(&hold, 10)).unwrap();
    let extend = Extend {
        reservation: hold.clone(),
        amount: 0,
        ttl_ms: Some(7 * DAY_MS),
        request: RequestId::parse("e1").unwrap(),
    };
    ledger.extend(t0 + 1_000, &extend).unwrap().done().unwrap();

    // Two days on, swept: the hold is still open, so the commit replays and spends nothing more.
    let later = t0 + 2 * DAY_MS;
    ledger.sweep(later);
    ledger.drain_events();
    assert_eq!(ledger.commit(later, &commit(&hold, 10)).unwrap(), first);
    assert!(ledger.drain_events().is_empty(), "a replayed commit emits nothing");
    assert_eq!(ledger.commit(later, &commit(&hold, 11)), Err(Error::RequestIdReused(c1.clone())));
    let release_as_c1 = Release { reservation: hold.clone(), request: c1.clone() };
    assert_eq!(ledger.release(later, &release_as_c1), Err(Error::RequestIdReused(c1.clone())));
    let expected = Totals { granted: 1_000, available: 800, held: 190, spent: 10, expired: 0 };
    assert_eq!(totals(&mut ledger, later, "acme"), expected);

    // The same id on another reservation, then as an account's request: new requests, applied.
    let on_other = ledger.commit(later, &commit(&other, 10)).unwrap().done().unwrap();
    assert_eq!((on_other.charged, on_other.already_charged, on_other.held), (10, false, 90));
    let as_reserve = ledger.reserve(later, &reserve("acme", "cyd", 5, HOUR_MS, "c1")).unwrap().done().unwrap();
    assert_eq!(as_reserve.reservation.seq, 3, "a Reserve under a commit's id opens a new hold");
    let expected = Totals { granted: 1_000, available: 795, held: 185, spent: 20, expired: 0 };
    assert_eq!(totals(&mut ledger, later, "acme"), expected);
    // Each scope still replays its own answer.
    assert_eq!(ledger.commit(later, &commit(&hold, 10)).unwrap(), first);
    assert_eq!(ledger.commit(later, &commit(&other, 10)).unwrap().done().unwrap(), on_other);

    // Closed on day 3, the reservation (and what it remembers) is kept until the sweep at day 4.
    let closed = t0 + 3 * DAY_MS;
    let release = Release { reservation: hold.clone(), request: RequestId::parse("x1").unwrap() };
    assert_eq!(ledger.release(closed, &release).unwrap().done().unwrap().returned, 90);
    let purge = closed + RETENTION_MS;
    ledger.sweep(purge - 1);
    assert_eq!(ledger.commit(purge - 1, &commit(&hold, 10)).unwrap(), first, "kept while the reservation is");
    ledger.sweep(purge);
    assert_eq!(ledger.reservation(purge, &hold), Err(Error::ReservationNotFound(hold.clone())));
    assert_eq!(ledger.commit(purge, &commit(&hold, 10)), Err(Error::ReservationNotFound(hold.clone())));
    let expected = Totals { granted: 1_000, available: 890, held: 90, spent: 20, expired: 0 };
    assert_eq!(totals(&mut ledger, purge, "acme"), expected, "the purge changed nothing else");

    // And an account's id (the Reserve that opened `other`, still remembered) on a reservation.
    let r2_on_other = Commit { request: RequestId::parse("r2").unwrap(), ..commit(&other, 5) };
    let committed = ledger.commit(purge, &r2_on_other).unwrap().done().unwrap();
    assert_eq!((committed.charged, committed.held), (5, 85), "a new request in the reservation's scope");
    ledger.check_invariants().unwrap();
}

/// Rule: a Reserve's id belongs to the account and is kept until a sweep at or after its hold's
/// deadline + retention; an Extend moves that to the new deadline + retention.
#[test]
fn the_opening_reserve_id_is_kept_for_the_retention_past_the_extended_deadline() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 1_000, Some(t0 + 60 * DAY_MS), "g1")).unwrap();
    let first = ledger.reserve(t0, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap();
    let plain = ledger.reserve(t0, &reserve("acme", "bob", 50, 300_000, "r2")).unwrap();
    let hold = first.clone().done().unwrap().reservation;
    let extend =
        Extend { reservation: hold, amount: 0, ttl_ms: Some(7 * DAY_MS), request: RequestId::parse("e1").unwrap() };
    let deadline = ledger.extend(t0 + 1_000, &extend).unwrap().done().unwrap().deadline_ms;
    assert_eq!(deadline, t0 + 1_000 + 7 * DAY_MS);

    // The hold that was not extended: its Reserve is forgotten at its own deadline + retention.
    let plain_keep = t0 + 300_000 + RETENTION_MS;
    ledger.sweep(plain_keep - 1);
    assert_eq!(ledger.reserve(plain_keep - 1, &reserve("acme", "bob", 50, 300_000, "r2")).unwrap(), plain);
    ledger.sweep(plain_keep);
    let again = ledger.reserve(plain_keep, &reserve("acme", "bob", 50, 300_000, "r2")).unwrap().done().unwrap();
    assert_eq!(again.reservation.seq, 3, "forgotten: a new request");

    // The extended one: kept until the sweep at the new deadline + retention.
    let keep = deadline + RETENTION_MS;
    ledger.sweep(keep - 1);
    assert_eq!(ledger.reserve(keep - 1, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap(), first);
    ledger.sweep(keep);
    let again = ledger.reserve(keep, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap().done().unwrap();
    assert_eq!(again.reservation.seq, 4, "forgotten: a new request");
    ledger.check_invariants().unwrap();
}

/// The plan and add-on lots an operation's events grant, in order.
fn lots_granted(ledger: &mut Ledger) -> Vec<(LotKind, i64)> {
    let events = ledger.drain_events();
    events
        .into_iter()
        .filter_map(|event| match event.kind {
            EventKind::LotGranted { kind, amount, .. } => Some((kind, amount)),
            _ => None,
        })
        .collect()
}

/// Rule: a plan change on the same schedule grants only what this cycle has not had from the plan
/// yet, so lowering and raising it again grants nothing twice; a cycle start (renewal or schedule
/// change) grants the plan afresh and resets what the cycle has had.
#[test]
fn lowering_then_raising_the_plan_grants_nothing_twice_in_a_cycle() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let acme = AccountId::parse("acme").unwrap();
    let (t0, anchor) = (start_ms(), ms(2026, 1, 1, 0));
    let plan = |ledger: &mut Ledger, now, anchor_ms, plan_credits, addon_credits, request| {
        ledger
            .set_plan(now, &set_plan("acme", anchor_ms, plan_credits, addon_credits, request))
            .unwrap()
            .done()
            .unwrap();
        lots_granted(ledger)
    };
    use LotKind::{Addon, Plan as PlanLot};
    assert_eq!(plan(&mut ledger, t0, anchor, 100, 20, "p1"), [(PlanLot, 100), (Addon, 20)]);
    assert_eq!(plan(&mut ledger, t0, anchor, 0, 0, "p2"), [], "a downgrade grants nothing");
    assert_eq!(plan(&mut ledger, t0, anchor, 100, 20, "p3"), [], "the cycle has had these already");
    assert_eq!(plan(&mut ledger, t0, anchor, 150, 10, "p4"), [(PlanLot, 50)], "an upgrade grants the difference");
    assert_eq!(plan(&mut ledger, t0, anchor, 150, 30, "p5"), [(Addon, 10)], "so does an add-on bought mid-cycle");
    assert_eq!(plan(&mut ledger, t0, anchor, 0, 0, "p6"), []);
    assert_eq!(plan(&mut ledger, t0, anchor, 150, 30, "p7"), []);
    assert_eq!(totals(&mut ledger, t0, "acme").granted, 180);

    // Renewal grants the current plan afresh; the new cycle then has had exactly that.
    let feb = ms(2026, 2, 1, 0);
    ledger.balance(feb, &acme, None).unwrap();
    assert_eq!(lots_granted(&mut ledger), [(PlanLot, 150), (Addon, 30)]);
    assert_eq!(plan(&mut ledger, feb, anchor, 0, 0, "p8"), []);
    assert_eq!(plan(&mut ledger, feb, anchor, 200, 30, "p9"), [(PlanLot, 50)]);
    assert_eq!(plan(&mut ledger, feb, anchor, 200, 0, "p10"), []);
    assert_eq!(plan(&mut ledger, feb, anchor, 200, 30, "p11"), []);

    // A schedule change ends the plan's lots and starts a cycle that grants the plan in full.
    let moved = ms(2026, 1, 20, 0);
    ledger.set_plan(feb + HOUR_MS, &set_plan("acme", moved, 200, 30, "p12")).unwrap().done().unwrap();
    let events = ledger.drain_events();
    let ended: i64 = events
        .iter()
        .map(|event| match event.kind {
            EventKind::LotExpired { amount, .. } => amount,
            _ => 0,
        })
        .sum();
    assert_eq!(ended, 230, "the old schedule's lots (150 + 30 + 50) end");
    let granted: Vec<(LotKind, i64)> = events
        .iter()
        .filter_map(|event| match event.kind {
            EventKind::LotGranted { kind, amount, .. } => Some((kind, amount)),
            _ => None,
        })
        .collect();
    assert_eq!(granted, [(PlanLot, 200), (Addon, 30)]);
    assert_eq!(plan(&mut ledger, feb + HOUR_MS, moved, 0, 0, "p13"), []);
    assert_eq!(plan(&mut ledger, feb + HOUR_MS, moved, 200, 30, "p14"), []);
    let expected = Totals { granted: 640, available: 230, held: 0, spent: 0, expired: 410 };
    assert_eq!(totals(&mut ledger, feb + HOUR_MS, "acme"), expected);
    ledger.check_invariants().unwrap();
}

/// Runs one hold past its deadline with the given sweeps: a promo lot of 100 expiring at
/// `promo_expires_ms`, an adjustment lot of 50, a hold of 120 (100 from the promo lot, which
/// burns first) with a deadline at `deadline_ms`, 10 of it committed. Returns the events after the
/// commit (instant and kind) and the totals at the end.
fn expire_hold(promo_expires_ms: Millis, deadline_ms: Millis, sweeps: &[Millis]) -> (Vec<(Millis, EventKind)>, Totals) {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    ledger.grant(t0, &grant("acme", LotKind::Promo, 100, Some(promo_expires_ms), "g1")).unwrap();
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 50, Some(t0 + 30 * DAY_MS), "g2")).unwrap();
    let hold = ledger.reserve(t0, &reserve("acme", "ann", 120, deadline_ms - t0, "r1")).unwrap().done().unwrap();
    let commit = Commit {
        reservation: hold.reservation,
        amount: 10,
        final_commit: false,
        request: RequestId::parse("c1").unwrap(),
        business_key: None,
        labels: Labels::default(),
    };
    ledger.commit(t0, &commit).unwrap().done().unwrap();
    ledger.drain_events();
    for sweep in sweeps {
        ledger.sweep(*sweep);
    }
    ledger.check_invariants().unwrap();
    let events = ledger.drain_events().into_iter().map(|event| (event.at_ms, event.kind)).collect();
    (events, totals(&mut ledger, *sweeps.last().unwrap(), "acme"))
}

/// Rule: a closing hold's part goes back to its lot if the lot is alive at the close instant (for
/// an expiry, the deadline), however late the sweep notices: a hold expiring at +1 h from a lot
/// dying at +2 h, swept at +3 h, returns its part, and the lot then expires with it.
#[test]
fn a_hold_expiring_before_its_lot_dies_returns_its_part_however_late_the_sweep() {
    let t0 = start_ms();
    let (hour, two_hours) = (t0 + HOUR_MS, t0 + 2 * HOUR_MS);
    let (events, end) = expire_hold(two_hours, hour, &[t0 + 3 * HOUR_MS]);
    let closed = EventKind::Closed {
        reservation: 1,
        state: ReservationState::Expired,
        returned: vec![Draw { lot: 1, amount: 90 }, Draw { lot: 2, amount: 20 }],
        expired: 0,
    };
    assert_eq!(events, [(hour, closed), (two_hours, EventKind::LotExpired { lot: 1, amount: 90 })]);
    assert_eq!(end, Totals { granted: 150, available: 50, held: 0, spent: 10, expired: 90 });
    // Swept in between, or at each instant: the same record.
    for sweeps in [&[t0 + 90 * 60_000, t0 + 3 * HOUR_MS][..], &[hour, two_hours, t0 + 3 * HOUR_MS]] {
        assert_eq!(expire_hold(two_hours, hour, sweeps), (events.clone(), end), "swept at {sweeps:?}");
    }
}

/// The converse: a lot dying before the hold's deadline keeps none of it; its part counts as
/// expired at the deadline, whenever the sweep noticed either.
#[test]
fn a_hold_expiring_after_its_lot_died_counts_that_part_as_expired_however_late_the_sweep() {
    let t0 = start_ms();
    let (hour, two_hours) = (t0 + HOUR_MS, t0 + 2 * HOUR_MS);
    let (events, end) = expire_hold(hour, two_hours, &[hour, t0 + 3 * HOUR_MS]);
    let closed = EventKind::Closed {
        reservation: 1,
        state: ReservationState::Expired,
        returned: vec![Draw { lot: 2, amount: 20 }],
        expired: 90,
    };
    assert_eq!(events, [(hour, EventKind::LotExpired { lot: 1, amount: 0 }), (two_hours, closed)]);
    assert_eq!(end, Totals { granted: 150, available: 50, held: 0, spent: 10, expired: 90 });
    // One late sweep: the same events and totals. (In the order of the catch-up, which closes
    // holds before it expires lots; so compared by instant here.)
    let (mut late, late_end) = expire_hold(hour, two_hours, &[t0 + 3 * HOUR_MS]);
    late.sort_by_key(|(at_ms, _)| *at_ms);
    assert_eq!((late, late_end), (events, end));
}
