//! The trickiest interactions, one at a time.

use super::*;

// ---------------------------------------------------------------------------------------------
// The trickiest interactions, one at a time.

pub(super) fn grant(account: &str, kind: LotKind, amount: i64, expires_ms: Option<Millis>, request: &str) -> Grant {
    Grant {
        account: AccountId::parse(account).unwrap(),
        kind,
        amount,
        expires_ms,
        request: RequestId::parse(request).unwrap(),
        create_account: true,
    }
}

pub(super) fn reserve(account: &str, user: &str, amount: i64, ttl_ms: Millis, request: &str) -> Reserve {
    Reserve {
        account: AccountId::parse(account).unwrap(),
        user: UserId::parse(user).unwrap(),
        category: Rules::default().category("email").unwrap(),
        amount,
        ttl_ms,
        request: RequestId::parse(request).unwrap(),
        labels: Labels::default(),
        partial: None,
    }
}

pub(super) fn charge(account: &str, user: &str, amount: i64, key: &str, request: &str) -> Charge {
    Charge {
        account: AccountId::parse(account).unwrap(),
        user: UserId::parse(user).unwrap(),
        category: Rules::default().category("mobile").unwrap(),
        amount,
        request: RequestId::parse(request).unwrap(),
        business_key: BusinessKey::parse_optional(key).unwrap(),
        labels: Labels::default(),
        overdraft: false,
    }
}

pub(super) fn set_plan(
    account: &str,
    anchor_ms: Millis,
    plan_credits: i64,
    addon_credits: i64,
    request: &str,
) -> SetPlan {
    SetPlan {
        account: AccountId::parse(account).unwrap(),
        plan: Plan { period: Period::Monthly, anchor_ms, plan_credits, addon_credits },
        request: RequestId::parse(request).unwrap(),
    }
}

pub(super) fn set_limit(account: &str, user: &str, limit: Option<i64>, request: &str) -> SetUserLimit {
    SetUserLimit {
        account: AccountId::parse(account).unwrap(),
        user: UserId::parse(user).unwrap(),
        limit,
        request: RequestId::parse(request).unwrap(),
    }
}

pub(super) fn totals(ledger: &mut Ledger, now: Millis, account: &str) -> Totals {
    ledger.balance(now, &AccountId::parse(account).unwrap(), None).unwrap().totals
}

#[test]
pub(super) fn a_held_part_whose_lot_expired_before_release_counts_as_expired() {
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
    let expected = Totals { granted: 150, available: 50, held: 0, spent: 0, expired: 100, owed: 0 };
    assert_eq!(totals(&mut ledger, t0 + HOUR_MS, "acme"), expected);
    ledger.check_invariants().unwrap();
}

#[test]
pub(super) fn renewal_happens_exactly_at_the_boundary_millisecond() {
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
    assert_eq!(after.totals, Totals { granted: 240, available: 120, held: 0, spent: 30, expired: 90, owed: 0 });
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
pub(super) fn a_business_key_is_charged_once_per_cycle_and_again_in_the_next() {
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
pub(super) fn a_plan_change_that_restarts_the_same_cycle_keeps_user_usage_consistent() {
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
pub(super) fn request_ids_on_a_hold_are_remembered_while_the_extended_hold_lives() {
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
    let extend =
        Extend { reservation: reservation.clone(), amount: 0, ttl_ms: Some(7 * DAY_MS), request, partial: None };
    ledger.extend(t0 + 1_000, &extend).unwrap().done().unwrap();

    let later = t0 + 2 * DAY_MS;
    ledger.sweep(later);
    assert_eq!(ledger.reservation(later, &reservation).unwrap().state, ReservationState::Held);
    let retry = ledger.reserve(later, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap();
    assert_eq!(retry, first, "a Reserve retried while its hold lives must get the first answer");
    assert_eq!(ledger.commit(later, &commit).unwrap(), committed, "a commit retried while its hold lives");
    let expected = Totals { granted: 100, available: 50, held: 40, spent: 10, expired: 0, owed: 0 };
    assert_eq!(totals(&mut ledger, later, "acme"), expected);
}

/// Rule: Commit, Extend and Release ids belong to their reservation and are remembered as long as
/// it is stored: past 24 h while it is open (here extended past 2 days), past its close, until
/// the sweep at its close + retention purges it. Elsewhere (another reservation, an account
/// operation) the same id is a new request.
#[test]
pub(super) fn a_commit_id_lives_as_long_as_its_reservation_and_is_a_new_request_elsewhere() {
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
        partial: None,
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
    let expected = Totals { granted: 1_000, available: 800, held: 190, spent: 10, expired: 0, owed: 0 };
    assert_eq!(totals(&mut ledger, later, "acme"), expected);

    // The same id on another reservation, then as an account's request: new requests, applied.
    let on_other = ledger.commit(later, &commit(&other, 10)).unwrap().done().unwrap();
    assert_eq!((on_other.charged, on_other.already_charged, on_other.held), (10, false, 90));
    let as_reserve = ledger.reserve(later, &reserve("acme", "cyd", 5, HOUR_MS, "c1")).unwrap().done().unwrap();
    assert_eq!(as_reserve.reservation.seq, 3, "a Reserve under a commit's id opens a new hold");
    let expected = Totals { granted: 1_000, available: 795, held: 185, spent: 20, expired: 0, owed: 0 };
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
    let expected = Totals { granted: 1_000, available: 890, held: 90, spent: 20, expired: 0, owed: 0 };
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
pub(super) fn the_opening_reserve_id_is_kept_for_the_retention_past_the_extended_deadline() {
    let mut ledger = Ledger::new(RETENTION_MS);
    let t0 = start_ms();
    ledger.grant(t0, &grant("acme", LotKind::Adjustment, 1_000, Some(t0 + 60 * DAY_MS), "g1")).unwrap();
    let first = ledger.reserve(t0, &reserve("acme", "ann", 50, 300_000, "r1")).unwrap();
    let plain = ledger.reserve(t0, &reserve("acme", "bob", 50, 300_000, "r2")).unwrap();
    let hold = first.clone().done().unwrap().reservation;
    let extend = Extend {
        reservation: hold,
        amount: 0,
        ttl_ms: Some(7 * DAY_MS),
        request: RequestId::parse("e1").unwrap(),
        partial: None,
    };
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
pub(super) fn lots_granted(ledger: &mut Ledger) -> Vec<(LotKind, i64)> {
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
pub(super) fn lowering_then_raising_the_plan_grants_nothing_twice_in_a_cycle() {
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
    let expected = Totals { granted: 640, available: 230, held: 0, spent: 0, expired: 410, owed: 0 };
    assert_eq!(totals(&mut ledger, feb + HOUR_MS, "acme"), expected);
    ledger.check_invariants().unwrap();
}

/// Runs one hold past its deadline with the given sweeps: a promo lot of 100 expiring at
/// `promo_expires_ms`, an adjustment lot of 50, a hold of 120 (100 from the promo lot, which
/// burns first) with a deadline at `deadline_ms`, 10 of it committed. Returns the events after the
/// commit (instant and kind) and the totals at the end.
pub(super) fn expire_hold(
    promo_expires_ms: Millis,
    deadline_ms: Millis,
    sweeps: &[Millis],
) -> (Vec<(Millis, EventKind)>, Totals) {
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
pub(super) fn a_hold_expiring_before_its_lot_dies_returns_its_part_however_late_the_sweep() {
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
    assert_eq!(end, Totals { granted: 150, available: 50, held: 0, spent: 10, expired: 90, owed: 0 });
    // Swept in between, or at each instant: the same record.
    for sweeps in [&[t0 + 90 * 60_000, t0 + 3 * HOUR_MS][..], &[hour, two_hours, t0 + 3 * HOUR_MS]] {
        assert_eq!(expire_hold(two_hours, hour, sweeps), (events.clone(), end), "swept at {sweeps:?}");
    }
}

/// The converse: a lot dying before the hold's deadline keeps none of it; its part counts as
/// expired at the deadline, whenever the sweep noticed either.
#[test]
pub(super) fn a_hold_expiring_after_its_lot_died_counts_that_part_as_expired_however_late_the_sweep() {
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
    assert_eq!(end, Totals { granted: 150, available: 50, held: 0, spent: 10, expired: 90, owed: 0 });
    // One late sweep: the same events and totals. (In the order of the catch-up, which closes
    // holds before it expires lots; so compared by instant here.)
    let (mut late, late_end) = expire_hold(hour, two_hours, &[t0 + 3 * HOUR_MS]);
    late.sort_by_key(|(at_ms, _)| *at_ms);
    assert_eq!((late, late_end), (events, end));
}
