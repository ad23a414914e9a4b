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
    Charge, Commit, Extend, Grant, Partial, Plan, Quote, Release, Reserve, SetCategoryBudget, SetPlan, SetUserLimit,
    StartTrial,
};
use credit_sidecar::ledger::cycle::{Cycle, cycle_containing};
use credit_sidecar::ledger::durable::{self, DurableState, RememberedAnswer};
use credit_sidecar::ledger::event::{Draw, Event, EventKind, draws_total};
use credit_sidecar::ledger::{
    AMOUNT_MAX, AccountId, Answer, BALANCE_MAX, Balance, BusinessKey, Category, CategoryView, Decision, Decline,
    DeclineReason, Error, Labels, Ledger, LotKind, Millis, Period, Quoted, RequestId, ReservationId, ReservationState,
    ReservationView, Rules, Totals, UserId,
};

pub(super) const HOUR_MS: Millis = 3_600_000;
pub(super) const DAY_MS: Millis = 24 * HOUR_MS;
pub(super) const RETENTION_MS: Millis = DAY_MS;
pub(super) const ACCOUNTS: [&str; 3] = ["acme", "globex", "initech"];
pub(super) const USERS: [&str; 3] = ["ann", "bob", "cyd"];
pub(super) const KEYS: [&str; 3] = ["contact:1:mobile", "contact:2:email", "contact:3:mobile"];
/// Random sequences run, and their length after the funding prefix (exclusive).
pub(super) const CASES: u32 = 512;
pub(super) const SEQUENCE_LEN_MAX: usize = 200;

/// Fails the current check with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

pub(super) fn ms(year: i32, month: u32, day: u32, hour: u32) -> Millis {
    Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap().timestamp_millis()
}

pub(super) fn start_ms() -> Millis {
    ms(2026, 1, 15, 0)
}

pub(super) fn account_id(index: usize) -> AccountId {
    AccountId::parse(ACCOUNTS[index]).unwrap()
}

pub(super) fn user_id(index: usize) -> UserId {
    UserId::parse(USERS[index]).unwrap()
}

pub(super) fn business_key(index: Option<usize>) -> Option<BusinessKey> {
    index.and_then(|index| BusinessKey::parse_optional(KEYS[index]).unwrap())
}

pub(super) fn labels(labelled: bool) -> Labels {
    if labelled { Labels::parse([("provider".to_owned(), "x".to_owned())]).unwrap() } else { Labels::default() }
}

pub(super) fn bump(value: i64) -> i64 {
    if value > 1 { value - 1 } else { value + 1 }
}

mod operations;
mod oracle;
mod projection;
mod scenarios;

use operations::*;
use oracle::*;
use projection::*;

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
