//! Every rule of docs/rules.md (credit model, lifecycle) and every decline, through the real gRPC client.

use std::collections::HashMap;

use credit_sidecar::api::pb;
use credit_sidecar::ledger::{AMOUNT_MAX, BALANCE_MAX};

use crate::harness::*;

async fn reserve_is_all_or_nothing(h: Harness) {
    h.account("acme", 100).await;
    let declined = h.reserve("acme", "ann", 101, MINUTE).await;
    assert_eq!(declined.outcome(), pb::Outcome::InsufficientCredit);
    let decline = declined.decline.unwrap();
    assert_eq!(decline.scope(), pb::Scope::Account);
    assert_eq!((decline.requested, decline.available), (101, 100));
    assert!(decline.message.contains("100 credits available, 101 requested"), "{}", decline.message);
    assert!(declined.reservation_id.is_empty());
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held), (100, 0), "a decline holds nothing");

    let held = h.reserve("acme", "ann", 100, MINUTE).await;
    assert_eq!(held.outcome(), pb::Outcome::Ok);
    assert_eq!((held.amount, held.available), (100, 0));
    assert_eq!(held.deadline_unix_ms, t0() + MINUTE);
    assert!(held.reservation_id.starts_with("acme/"), "{}", held.reservation_id);
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held, totals.granted), (0, 100, 100));
}

async fn user_limit_declines_even_with_team_credit(h: Harness) {
    h.account("acme", 1_000).await;
    let set = h.set_user_limit("acme", "ann", Some(50)).await;
    assert_eq!((set.limit, set.used, set.remaining), (Some(50), 0, Some(50)));
    h.hold("acme", "ann", 30).await;
    let declined = h.reserve("acme", "ann", 21, MINUTE).await;
    assert_eq!(declined.outcome(), pb::Outcome::UserLimitReached);
    let decline = declined.decline.unwrap();
    assert_eq!(decline.scope(), pb::Scope::User);
    assert_eq!((decline.user_remaining, decline.available, decline.requested), (Some(20), 970, 21));
    // Another user of the same team is not limited.
    h.hold("acme", "bob", 500).await;
    // Exactly the remainder fits.
    h.hold("acme", "ann", 20).await;
    let balance = h.balance("acme", "ann").await;
    assert_eq!((balance.user_limit, balance.user_used, balance.user_remaining), (Some(50), 50, Some(0)));
    // Lifting the cap lets her spend again.
    h.set_user_limit("acme", "ann", None).await;
    h.hold("acme", "ann", 100).await;
}

async fn user_limit_counts_holds_and_returns_them(h: Harness) {
    h.account("acme", 1_000).await;
    h.set_user_limit("acme", "ann", Some(100)).await;
    let id = h.hold("acme", "ann", 80).await;
    h.commit(&id, 30, false).await;
    let released = h.release(&id).await;
    assert_eq!(released.returned, 50);
    let balance = h.balance("acme", "ann").await;
    assert_eq!((balance.user_used, balance.user_remaining), (30, Some(70)), "the committed 30 stays counted");
    // The next cycle starts the user afresh.
    h.clock.set(ms(2026, 3, 31, 0));
    let balance = h.balance("acme", "ann").await;
    assert_eq!((balance.user_used, balance.user_remaining), (0, Some(100)));
}

async fn burn_order_takes_soonest_expiry_first(h: Harness) {
    h.account("acme", 100).await; // the plan lot expires at the cycle end, 2026-03-31
    let promo = h.grant("acme", pb::LotKind::Promo, 10, t0() + DAY).await;
    let later = h.grant("acme", pb::LotKind::Adjustment, 10, ms(2026, 6, 1, 0)).await;
    let same_instant = h.grant("acme", pb::LotKind::Addon, 10, ms(2026, 3, 31, 0)).await;
    h.hold("acme", "ann", 115).await;
    let remaining: HashMap<u64, i64> = h.lots("acme").await.iter().map(|lot| (lot.lot_id, lot.remaining)).collect();
    assert_eq!(remaining[&promo.lot_id], 0, "soonest expiry burns first");
    // Plan and add-on lots expire at the same instant: plan burns before add-on (kind order).
    assert_eq!(remaining[&same_instant.lot_id], 5);
    assert_eq!(remaining[&later.lot_id], 10, "latest expiry untouched");
}

async fn commit_above_hold_is_declined(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 10).await;
    assert_eq!(h.commit(&id, 6, false).await.outcome(), pb::Outcome::Ok);
    let declined = h.commit(&id, 5, false).await;
    assert_eq!(declined.outcome(), pb::Outcome::ExceedsHold);
    let decline = declined.decline.unwrap();
    assert_eq!((decline.scope(), decline.requested, decline.held), (pb::Scope::Reservation, 5, 4));
    let exact = h.commit(&id, 4, false).await;
    assert_eq!((exact.outcome(), exact.held, exact.charged), (pb::Outcome::Ok, 0, 4));
    let reservation = h.reservation(&id).await;
    assert_eq!(
        (reservation.committed, reservation.commit_count, reservation.state()),
        (10, 2, pb::ReservationState::Held)
    );
}

async fn final_commit_closes_and_returns_the_rest(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 40).await;
    let done = h.commit(&id, 15, true).await;
    assert_eq!((done.outcome(), done.charged, done.returned, done.held), (pb::Outcome::Ok, 15, 25, 0));
    let reservation = done.reservation.unwrap();
    assert_eq!(reservation.state(), pb::ReservationState::Committed);
    assert_eq!(reservation.closed_unix_ms, t0());
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held, totals.spent), (85, 0, 15));
    for late in [h.commit(&id, 1, false).await.decline, h.commit(&id, 0, true).await.decline] {
        let late = late.unwrap();
        assert_eq!(late.reservation_state(), pb::ReservationState::Committed);
    }
    assert_eq!(h.commit(&id, 1, false).await.outcome(), pb::Outcome::ReservationClosed);
    assert_eq!(h.release(&id).await.outcome(), pb::Outcome::ReservationClosed);
    assert_eq!(h.extend(&id, 1, 0).await.outcome(), pb::Outcome::ReservationClosed);
    assert_eq!(h.totals("acme").await, totals, "declines change nothing");
}

async fn zero_commit_records_a_free_line_item(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 5).await;
    let free = h.commit(&id, 0, false).await;
    assert_eq!((free.outcome(), free.charged, free.held), (pb::Outcome::Ok, 0, 5));
    assert_eq!(free.reservation.unwrap().commit_count, 1);
}

async fn release_returns_the_uncommitted_part(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 30).await;
    h.commit(&id, 12, false).await;
    let released = h.release(&id).await;
    assert_eq!((released.outcome(), released.returned), (pb::Outcome::Ok, 18));
    let reservation = released.reservation.unwrap();
    assert_eq!(
        (reservation.state(), reservation.committed, reservation.returned),
        (pb::ReservationState::Released, 12, 18)
    );
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.spent, totals.held), (88, 12, 0));
    assert_conserved(&totals);
    assert_eq!(h.release(&id).await.outcome(), pb::Outcome::ReservationClosed);
}

async fn extend_grows_amount_and_deadline(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 10).await; // deadline t0 + 10 min
    let more = h.extend(&id, 5, 0).await;
    assert_eq!(
        (more.outcome(), more.added, more.held, more.deadline_unix_ms),
        (pb::Outcome::Ok, 5, 15, t0() + 10 * MINUTE)
    );
    let later = h.extend(&id, 0, 30 * MINUTE).await;
    assert_eq!(later.deadline_unix_ms, t0() + 30 * MINUTE);
    let not_earlier = h.extend(&id, 0, 2 * MINUTE).await;
    assert_eq!(not_earlier.deadline_unix_ms, t0() + 30 * MINUTE, "a deadline never moves earlier");
    let short = h.extend(&id, 86, 0).await;
    assert_eq!(short.outcome(), pb::Outcome::InsufficientCredit);
    assert_eq!(short.decline.unwrap().available, 85);
    assert_eq!(h.reservation(&id).await.held, 15, "a declined extend changes nothing");
    h.set_user_limit("acme", "ann", Some(20)).await;
    let limited = h.extend(&id, 6, 0).await;
    assert_eq!(limited.outcome(), pb::Outcome::UserLimitReached);
    assert_eq!(limited.decline.unwrap().user_remaining, Some(5));
}

async fn holds_expire_and_return_what_is_uncommitted(h: Harness) {
    h.account("acme", 100).await;
    let id = h.reserve("acme", "ann", 40, 5 * MINUTE).await.reservation_id;
    h.commit(&id, 10, false).await;
    h.advance(5 * MINUTE - 1).await;
    assert_eq!(h.reservation(&id).await.state(), pb::ReservationState::Held, "alive until its deadline");
    h.advance(1).await;
    let reservation = h.reservation(&id).await;
    assert_eq!(reservation.state(), pb::ReservationState::Expired);
    assert_eq!((reservation.committed, reservation.returned, reservation.held), (10, 30, 0));
    assert_eq!(reservation.closed_unix_ms, t0() + 5 * MINUTE, "closed at its deadline");
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.spent, totals.held), (90, 10, 0));
    let late = h.commit(&id, 1, false).await;
    assert_eq!(late.outcome(), pb::Outcome::ReservationExpired);
    assert_eq!(late.decline.unwrap().reservation_state(), pb::ReservationState::Expired);
    assert_eq!(h.release(&id).await.outcome(), pb::Outcome::ReservationExpired);
    assert_eq!(h.extend(&id, 0, MINUTE).await.outcome(), pb::Outcome::ReservationExpired);
}

async fn expiry_without_sweep_is_seen_by_the_next_call(h: Harness) {
    h.account("acme", 100).await;
    let id = h.reserve("acme", "ann", 40, MINUTE).await.reservation_id;
    h.clock.advance(MINUTE);
    // No sweep ran: the commit itself finds the hold past its deadline.
    assert_eq!(h.commit(&id, 1, false).await.outcome(), pb::Outcome::ReservationExpired);
    assert_eq!(h.totals("acme").await.available, 100);
}

async fn a_hold_outliving_its_lot_returns_to_expired(h: Harness) {
    h.account("acme", 0).await;
    h.grant("acme", pb::LotKind::Promo, 50, t0() + HOUR).await;
    let id = h.reserve("acme", "ann", 50, 2 * HOUR).await.reservation_id;
    h.commit(&id, 20, false).await;
    h.advance(HOUR).await; // the promo lot expires with nothing left in it
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held, totals.expired), (0, 30, 0));
    let released = h.release(&id).await;
    assert_eq!(released.returned, 30);
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held, totals.expired, totals.spent), (0, 0, 30, 20));
    assert_conserved(&totals);
}

async fn retries_get_the_same_answer(h: Harness) {
    h.account("acme", 10).await;
    let mut auth = h.auth.clone();
    let request = pb::ReserveRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        category: "email".into(),
        cost: Some(amount_cost(20)),
        ttl_ms: MINUTE,
        request_id: "retry-me".into(),
        labels: HashMap::new(),
        min_quantity: 0,
    };
    let first = auth.reserve(request.clone()).await.unwrap().into_inner();
    assert_eq!(first.outcome(), pb::Outcome::InsufficientCredit);
    h.grant("acme", pb::LotKind::Addon, 100, 0).await;
    let retry = auth.reserve(request.clone()).await.unwrap().into_inner();
    assert_eq!(retry, first, "a retried decline stays a decline");
    assert_eq!(h.totals("acme").await.held, 0);

    let mut ok = request.clone();
    ok.request_id = "retry-ok".into();
    let first = auth.reserve(ok.clone()).await.unwrap().into_inner();
    h.clock.advance(1_000);
    let retry = auth.reserve(ok.clone()).await.unwrap().into_inner();
    assert_eq!(retry, first);
    assert_eq!(h.totals("acme").await.held, 20, "held once");

    let commit = pb::CommitRequest {
        reservation_id: first.reservation_id.clone(),
        cost: Some(amount_cost(5)),
        r#final: false,
        request_id: "commit-once".into(),
        business_key: String::new(),
        labels: HashMap::new(),
    };
    let once = auth.commit(commit.clone()).await.unwrap().into_inner();
    let twice = auth.commit(commit.clone()).await.unwrap().into_inner();
    assert_eq!(once, twice);
    assert_eq!(h.reservation(&first.reservation_id).await.committed, 5, "committed once");

    let mut other = commit.clone();
    other.cost = Some(amount_cost(6));
    let error = auth.commit(other).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::AlreadyExists);
    assert!(error.message().starts_with("request_id: "), "{}", error.message());
    assert_eq!(error_reason(&error), "REQUEST_ID_REUSED");
    let mut reuse = ok.clone();
    reuse.cost = Some(amount_cost(21));
    assert_eq!(auth.reserve(reuse).await.unwrap_err().code(), tonic::Code::AlreadyExists);
    assert_eq!(h.reservation(&first.reservation_id).await.committed, 5);
}

async fn business_keys_charge_once_per_cycle(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 50).await;
    let first = h.commit_with(&id, 10, false, "contact:123:mobile", HashMap::new()).await;
    assert_eq!((first.charged, first.already_charged), (10, false));
    let again = h.commit_with(&id, 10, false, "contact:123:mobile", HashMap::new()).await;
    assert_eq!((again.outcome(), again.charged, again.already_charged, again.held), (pb::Outcome::Ok, 0, true, 40));
    // Another reservation, another request id: still charged once.
    let other = h.hold("acme", "bob", 10).await;
    let third = h.commit_with(&other, 10, true, "contact:123:mobile", HashMap::new()).await;
    assert_eq!((third.charged, third.already_charged, third.returned), (0, true, 10));
    let mut charge = pb::ChargeRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        category: "mobile".into(),
        cost: Some(sku_cost("mobile.verified", 1)),
        request_id: h.rid(),
        business_key: "contact:123:mobile".into(),
        labels: HashMap::new(),
    };
    let charged = h.auth.clone().charge(charge.clone()).await.unwrap().into_inner();
    assert_eq!((charged.charged, charged.already_charged, charged.reservation_id.as_str()), (0, true, ""));
    assert_eq!(h.totals("acme").await.spent, 10);
    // A new cycle charges the key again.
    h.clock.set(ms(2026, 3, 31, 0));
    charge.request_id = h.rid();
    let renewed = h.auth.clone().charge(charge).await.unwrap().into_inner();
    assert_eq!((renewed.outcome(), renewed.charged, renewed.already_charged), (pb::Outcome::Ok, 10, false));
}

async fn charge_holds_and_commits_in_one_step(h: Harness) {
    h.account("acme", 100).await;
    let request = pb::ChargeRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        category: "phone_number".into(),
        cost: Some(sku_cost("phone_number.month", 1)),
        request_id: h.rid(),
        business_key: String::new(),
        labels: HashMap::from([("number".into(), "+1555".into())]),
    };
    let charged = h.auth.clone().charge(request.clone()).await.unwrap().into_inner();
    assert_eq!((charged.outcome(), charged.charged, charged.available), (pb::Outcome::Ok, 50, 50));
    let reservation = h.reservation(&charged.reservation_id).await;
    assert_eq!(
        (reservation.state(), reservation.committed, reservation.held),
        (pb::ReservationState::Committed, 50, 0)
    );
    assert_eq!(reservation.labels["number"], "+1555");
    let mut big = request;
    big.request_id = h.rid();
    big.cost = Some(sku_cost("phone_number.month", 2));
    let declined = h.auth.clone().charge(big).await.unwrap().into_inner();
    assert_eq!(declined.outcome(), pb::Outcome::InsufficientCredit);
    assert_eq!(declined.decline.unwrap().requested, 100);
    assert_eq!(h.totals("acme").await.spent, 50);
}

async fn quote_answers_without_changing_anything(h: Harness) {
    h.account("acme", 100).await;
    h.set_user_limit("acme", "ann", Some(30)).await;
    let quote = |user: &str, cost| pb::QuoteRequest {
        account_id: "acme".into(),
        user_id: user.into(),
        category: "dialer".into(),
        cost: Some(cost),
    };
    let mut auth = h.auth.clone();
    let team = auth.quote(quote("", sku_cost("dialer.minute.de", 10))).await.unwrap().into_inner();
    assert_eq!((team.fits, team.amount, team.available, team.units_that_fit), (true, 20, 100, 50));
    let ann = auth.quote(quote("ann", sku_cost("dialer.minute.de", 20))).await.unwrap().into_inner();
    assert_eq!(
        (ann.fits, ann.outcome(), ann.user_remaining, ann.units_that_fit),
        (false, pb::Outcome::UserLimitReached, Some(30), 15)
    );
    let too_much = auth.quote(quote("", amount_cost(101))).await.unwrap().into_inner();
    assert_eq!(
        (too_much.fits, too_much.outcome(), too_much.units_that_fit),
        (false, pb::Outcome::InsufficientCredit, 0)
    );
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held), (100, 0));
}

async fn renewal_is_exact_at_the_boundary_without_rollover(h: Harness) {
    h.account("acme", 100).await; // cycle 2026-02-28 .. 2026-03-31 (anchor Jan 31, clamped)
    let cycle = h.balance("acme", "").await.cycle.unwrap();
    assert_eq!((cycle.start_unix_ms, cycle.end_unix_ms), (ms(2026, 2, 28, 0), ms(2026, 3, 31, 0)));
    let id = h.hold("acme", "ann", 30).await;
    h.commit(&id, 30, true).await;
    let boundary = ms(2026, 3, 31, 0);
    h.clock.set(boundary - 1);
    assert_eq!(h.totals("acme").await.available, 70, "old cycle until the last millisecond");
    h.clock.set(boundary);
    let totals = h.totals("acme").await;
    assert_eq!(
        (totals.available, totals.granted, totals.expired),
        (100, 200, 70),
        "fresh plan credits; the 70 left expired"
    );
    assert_eq!(totals.spent, 30, "spent credits stay spent");
    let cycle = h.balance("acme", "").await.cycle.unwrap();
    assert_eq!((cycle.start_unix_ms, cycle.end_unix_ms), (boundary, ms(2026, 4, 30, 0)));
    // Renewal happens once, however often the account is read.
    h.clock.set(boundary + 1);
    h.engine.sweep().await.unwrap();
    assert_eq!(h.totals("acme").await.granted, 200);
    // Months without traffic: the catch-up starts every cycle in turn, each renewing once (the
    // skipped cycles' credits expire with them), and ends in the current cycle.
    h.advance(90 * DAY).await;
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.granted, totals.expired), (100, 400, 270));
    let cycle = h.balance("acme", "").await.cycle.unwrap();
    assert_eq!((cycle.start_unix_ms, cycle.end_unix_ms), (ms(2026, 5, 31, 0), ms(2026, 6, 30, 0)));
    assert_conserved(&totals);
}

async fn addons_are_usable_at_once_and_recur(h: Harness) {
    h.set_plan("acme", 100, 0).await;
    h.hold("acme", "ann", 100).await;
    // Buying a recurring add-on mid-cycle: usable at once.
    let set = h.set_plan("acme", 100, 50).await;
    assert_eq!(set.totals.unwrap().available, 50);
    assert_eq!(h.reserve("acme", "ann", 50, MINUTE).await.outcome(), pb::Outcome::Ok);
    // Lowering it takes effect at renewal; so does a plan downgrade.
    h.set_plan("acme", 80, 20).await;
    assert_eq!(h.totals("acme").await.available, 0);
    h.clock.set(ms(2026, 3, 31, 0));
    let lots = h.lots("acme").await;
    let kinds: Vec<(pb::LotKind, i64)> = lots.iter().map(|lot| (lot.kind(), lot.granted)).collect();
    assert_eq!(kinds, vec![(pb::LotKind::Plan, 80), (pb::LotKind::Addon, 20)]);
    // A one-off add-on purchase expires with the cycle by default.
    let bought = h.grant("acme", pb::LotKind::Addon, 25, 0).await;
    assert_eq!(bought.expires_unix_ms, ms(2026, 4, 30, 0));
    assert_eq!(bought.totals.unwrap().available, 125);
}

async fn changing_the_schedule_restarts_the_cycle(h: Harness) {
    h.set_plan("acme", 100, 0).await;
    h.hold("acme", "ann", 40).await;
    let request = pb::SetPlanRequest {
        account_id: "acme".into(),
        period: pb::Period::Annual as i32,
        anchor_unix_ms: ms(2026, 3, 1, 0),
        plan_credits: 1_000,
        addon_credits: 0,
        request_id: h.rid(),
    };
    let set = h.admin.clone().set_plan(request).await.unwrap().into_inner();
    let cycle = set.cycle.unwrap();
    assert_eq!((cycle.start_unix_ms, cycle.end_unix_ms), (ms(2026, 3, 1, 0), ms(2027, 3, 1, 0)));
    let totals = set.totals.unwrap();
    assert_eq!((totals.available, totals.held, totals.expired), (1_000, 40, 60));
    assert_conserved(&totals);
}

async fn trial_is_granted_once(h: Harness) {
    // Without create_account, an unknown account gets NOT_FOUND and nothing is created.
    let unknown = pb::StartTrialRequest { account_id: "newco".into(), request_id: h.rid(), ..Default::default() };
    assert_eq!(h.admin.clone().start_trial(unknown).await.unwrap_err().code(), tonic::Code::NotFound);
    let request = pb::StartTrialRequest {
        account_id: "newco".into(),
        credits: 0,
        duration_ms: 0,
        request_id: h.rid(),
        create_account: true,
    };
    let trial = h.admin.clone().start_trial(request).await.unwrap().into_inner();
    assert_eq!(trial.outcome(), pb::Outcome::Ok);
    assert_eq!((trial.expires_unix_ms, trial.totals.unwrap().available), (t0() + 14 * DAY, 100));
    let again = pb::StartTrialRequest {
        account_id: "newco".into(),
        credits: 500,
        duration_ms: DAY,
        request_id: h.rid(),
        create_account: true,
    };
    let again = h.admin.clone().start_trial(again).await.unwrap().into_inner();
    assert_eq!(again.outcome(), pb::Outcome::TrialAlreadyUsed);
    assert_eq!(again.decline.unwrap().scope(), pb::Scope::Account);
    h.hold("newco", "ann", 60).await;
    h.advance(14 * DAY).await;
    let totals = h.totals("newco").await;
    assert_eq!((totals.available, totals.expired, totals.held), (0, 100, 0), "trial end expires it all");
    let account = h.admin.clone().get_account(pb::GetAccountRequest { account_id: "newco".into() }).await.unwrap();
    assert!(account.into_inner().trial_used);
}

async fn amounts_near_the_bound_stay_exact(h: Harness) {
    h.account("whale", AMOUNT_MAX).await;
    for _ in 0..9 {
        h.grant("whale", pb::LotKind::Adjustment, AMOUNT_MAX, 0).await;
    }
    let totals = h.totals("whale").await;
    assert_eq!(totals.available, BALANCE_MAX);
    let over = pb::GrantRequest {
        account_id: "whale".into(),
        kind: pb::LotKind::Promo as i32,
        amount: 1,
        expires_unix_ms: 0,
        request_id: h.rid(),
        create_account: false,
    };
    let error = h.admin.clone().grant(over).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument);
    assert!(error.message().starts_with("amount: "), "{}", error.message());
    let id = h.hold("whale", "ann", AMOUNT_MAX).await;
    let committed = h.commit(&id, AMOUNT_MAX - 1, true).await;
    assert_eq!((committed.charged, committed.returned), (AMOUNT_MAX - 1, 1));
    let totals = h.totals("whale").await;
    assert_eq!(totals.available, BALANCE_MAX - AMOUNT_MAX + 1);
    assert_eq!(totals.spent, 999_999_999_999);
    assert_conserved(&totals);
    // Lifetime figures pass 10^14: past the 14 significant digits cjson.encode would print.
    for _ in 0..100 {
        let charge = pb::ChargeRequest {
            account_id: "whale".into(),
            user_id: "ann".into(),
            category: "api".into(),
            cost: Some(amount_cost(AMOUNT_MAX)),
            request_id: h.rid(),
            ..Default::default()
        };
        assert_eq!(h.auth.clone().charge(charge).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);
        h.grant("whale", pb::LotKind::Adjustment, AMOUNT_MAX, 0).await;
    }
    let totals = h.totals("whale").await;
    assert_eq!(totals.spent, 100_999_999_999_999);
    assert_eq!(totals.granted, 110_000_000_000_000);
    assert_conserved(&totals);
}

async fn get_account_and_list_reservations(h: Harness) {
    h.account("acme", 100).await;
    h.set_user_limit("acme", "ann", Some(40)).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.hold("acme", "ann", 1).await);
    }
    h.release(&ids[1]).await;
    let mut admin = h.admin.clone();
    let account = admin.get_account(pb::GetAccountRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert_eq!(account.plan.unwrap().plan_credits, 100);
    assert_eq!(account.open_reservations, 4);
    assert_eq!(account.user_limits.len(), 1);
    assert_eq!((account.user_limits[0].used, account.user_limits[0].remaining), (4, Some(36)));
    let list = |state: pb::ReservationState, page_size, page_token: String| pb::ListReservationsRequest {
        account_id: "acme".into(),
        state: state as i32,
        page_size,
        page_token,
        settled: false,
    };
    let first =
        admin.list_reservations(list(pb::ReservationState::Unspecified, 2, String::new())).await.unwrap().into_inner();
    let first_ids: Vec<&str> = first.reservations.iter().map(|r| r.reservation_id.as_str()).collect();
    assert_eq!(first_ids, vec![ids[4].as_str(), ids[3].as_str()], "newest first");
    let second = admin
        .list_reservations(list(pb::ReservationState::Unspecified, 2, first.next_page_token))
        .await
        .unwrap()
        .into_inner();
    let third = admin
        .list_reservations(list(pb::ReservationState::Unspecified, 2, second.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((second.reservations.len(), third.reservations.len(), third.next_page_token.as_str()), (2, 1, ""));
    let released =
        admin.list_reservations(list(pb::ReservationState::Released, 0, String::new())).await.unwrap().into_inner();
    assert_eq!(released.reservations.len(), 1);
    assert_eq!(released.reservations[0].reservation_id, ids[1]);
}

async fn unknown_things_are_not_found(h: Harness) {
    h.account("acme", 100).await;
    let mut auth = h.auth.clone();
    let reserve = pb::ReserveRequest {
        account_id: "nobody".into(),
        user_id: "ann".into(),
        category: "email".into(),
        cost: Some(amount_cost(1)),
        ttl_ms: 0,
        request_id: h.rid(),
        labels: HashMap::new(),
        min_quantity: 0,
    };
    let error = auth.reserve(reserve).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound);
    assert!(error.message().starts_with("account_id: "), "{}", error.message());
    for id in ["acme/999", "nobody/1"] {
        let error = auth.get_reservation(pb::GetReservationRequest { reservation_id: id.into() }).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::NotFound, "{id}");
        let commit = pb::CommitRequest {
            reservation_id: id.into(),
            cost: Some(amount_cost(1)),
            request_id: h.rid(),
            ..Default::default()
        };
        assert_eq!(auth.commit(commit).await.unwrap_err().code(), tonic::Code::NotFound);
    }
    let limit = pb::SetUserLimitRequest {
        account_id: "nobody".into(),
        user_id: "u".into(),
        limit: Some(1),
        request_id: h.rid(),
    };
    assert_eq!(h.admin.clone().set_user_limit(limit).await.unwrap_err().code(), tonic::Code::NotFound);
    let balance = pb::GetBalanceRequest { account_id: "nobody".into(), user_id: String::new() };
    assert_eq!(auth.get_balance(balance).await.unwrap_err().code(), tonic::Code::NotFound);
}

/// A partial hold takes the whole units that fit (the account's credit and the user's limit),
/// at least `min_quantity`; declined only when not even that fits. Extend likewise.
async fn partial_holds_take_the_whole_units_that_fit(h: Harness) {
    h.account("acme", 1_000).await;
    let minutes = |quantity| sku_cost("dialer.minute.de", quantity); // 2 credits a minute
    let partial = |user: &str, cost: pb::Cost, min_quantity: i64, request_id: &str| pb::ReserveRequest {
        account_id: "acme".into(),
        user_id: user.into(),
        category: "dialer".into(),
        cost: Some(cost),
        ttl_ms: HOUR,
        request_id: request_id.into(),
        labels: HashMap::new(),
        min_quantity,
    };
    let mut auth = h.auth.clone();
    // 700 minutes asked, 500 fit in the account's 1000 credits.
    let held = auth.reserve(partial("bob", minutes(700), 100, "p-1")).await.unwrap().into_inner();
    assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
    assert_eq!((held.quantity, held.amount, held.available), (500, 1_000, 0));
    // Nothing left: even one minute is declined, and `requested` is that minimum.
    let declined = auth.reserve(partial("bob", minutes(700), 1, "p-2")).await.unwrap().into_inner();
    assert_eq!(declined.outcome(), pb::Outcome::InsufficientCredit);
    assert_eq!((declined.decline.unwrap().requested, declined.quantity), (2, 0));
    // A retry gets the first answer, though the room has changed since.
    h.release(&held.reservation_id).await;
    let retried = auth.reserve(partial("bob", minutes(700), 100, "p-1")).await.unwrap().into_inner();
    assert_eq!(retried, held, "a retry of a partial hold answers what was held");
    // The same request id with another minimum is another request.
    let reused = auth.reserve(partial("bob", minutes(700), 50, "p-1")).await.unwrap_err();
    assert_eq!(error_reason(&reused), "REQUEST_ID_REUSED");

    // The user's limit cuts the hold too: 301 credits left to ann is 150 minutes.
    h.set_user_limit("acme", "ann", Some(301)).await;
    let ann = auth.reserve(partial("ann", minutes(700), 100, "p-3")).await.unwrap().into_inner();
    assert_eq!((ann.outcome(), ann.quantity, ann.amount, ann.available), (pb::Outcome::Ok, 150, 300, 700));
    let over = auth.reserve(partial("ann", minutes(700), 1, "p-4")).await.unwrap().into_inner();
    assert_eq!(over.outcome(), pb::Outcome::UserLimitReached);
    let decline = over.decline.unwrap();
    assert_eq!((decline.scope(), decline.requested, decline.user_remaining), (pb::Scope::User, 2, Some(1)));
    // With a raw amount the units are credits: bob takes the account's 700 left of 5000 asked.
    let bob = auth.reserve(partial("bob", amount_cost(5_000), 10, "p-5")).await.unwrap().into_inner();
    assert_eq!((bob.outcome(), bob.quantity, bob.amount, bob.available), (pb::Outcome::Ok, 700, 700, 0));
    h.release(&bob.reservation_id).await;

    // Extend: 10 more minutes asked, ann's limit leaves room for 5 (11 credits).
    h.set_user_limit("acme", "ann", Some(311)).await;
    let extend = |min_quantity| pb::ExtendRequest {
        reservation_id: ann.reservation_id.clone(),
        cost: Some(minutes(10)),
        ttl_ms: 0,
        request_id: format!("e-{min_quantity}"),
        min_quantity,
    };
    let declined = auth.extend(extend(6)).await.unwrap().into_inner();
    assert_eq!(declined.outcome(), pb::Outcome::UserLimitReached);
    assert_eq!((declined.held, declined.decline.unwrap().requested), (300, 12), "declined whole: the hold unchanged");
    let extended = auth.extend(extend(1)).await.unwrap().into_inner();
    assert_eq!(extended.outcome(), pb::Outcome::Ok, "{extended:?}");
    assert_eq!((extended.added, extended.added_quantity, extended.held), (10, 5, 310));
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held), (690, 310));
}

/// CommitBatch: the items are the Commits they stand for, applied in order in one step and
/// answered one by one; each item id is remembered like a Commit's request id.
async fn commit_batch_applies_each_item_as_a_commit(h: Harness) {
    h.account("acme", 1_000).await;
    let id = h.hold("acme", "ann", 100).await;
    let item = |item_id: &str, amount: i64, business_key: &str| pb::CommitItem {
        item_id: item_id.into(),
        cost: Some(amount_cost(amount)),
        business_key: business_key.into(),
        labels: HashMap::from([("row".to_owned(), item_id.to_owned())]),
    };
    let batch = |items: Vec<pb::CommitItem>| pb::CommitBatchRequest { reservation_id: id.clone(), items };
    let rows = vec![
        item("row-1", 10, ""),
        item("row-2", 20, "contact:1"),
        item("row-3", 80, ""),
        item("row-4", 30, ""),
        item("row-5", 5, "contact:1"),
    ];
    let mut auth = h.auth.clone();
    let answer = auth.commit_batch(batch(rows.clone())).await.unwrap().into_inner();
    let outcomes: Vec<_> = answer.items.iter().map(|item| (item.outcome(), item.charged, item.held)).collect();
    assert_eq!(
        outcomes,
        [
            (pb::Outcome::Ok, 10, 90),
            (pb::Outcome::Ok, 20, 70),
            (pb::Outcome::ExceedsHold, 0, 70),
            (pb::Outcome::Ok, 30, 40),
            (pb::Outcome::Ok, 0, 40),
        ],
        "{answer:?}"
    );
    assert!(answer.items[4].already_charged, "the business key was charged by row-2");
    assert_eq!(answer.items[2].decline.as_ref().unwrap().requested, 80);
    let ids: Vec<&str> = answer.items.iter().map(|item| item.item_id.as_str()).collect();
    assert_eq!(ids, ["row-1", "row-2", "row-3", "row-4", "row-5"]);
    let view = answer.reservation.as_ref().unwrap();
    assert_eq!((answer.charged, view.committed, view.held, view.commit_count), (60, 60, 40, 4));
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held, totals.spent), (900, 40, 60));

    // A retried batch gets every item's first answer and changes nothing.
    assert_eq!(auth.commit_batch(batch(rows.clone())).await.unwrap().into_inner(), answer);
    // An item id is a Commit's request id on this reservation.
    let commit = pb::CommitRequest {
        reservation_id: id.clone(),
        cost: Some(amount_cost(20)),
        r#final: false,
        request_id: "row-2".into(),
        business_key: "contact:1".into(),
        labels: HashMap::from([("row".to_owned(), "row-2".to_owned())]),
    };
    let single = auth.commit(commit).await.unwrap().into_inner();
    assert_eq!((single.outcome(), single.charged, single.held), (pb::Outcome::Ok, 20, 70));
    assert_eq!(h.totals("acme").await, totals, "answered from memory");

    // An item id used before with other figures refuses the whole batch, the items ahead of it too.
    let reused = auth.commit_batch(batch(vec![item("row-6", 1, ""), item("row-4", 31, "")])).await.unwrap_err();
    assert_eq!(reused.code(), tonic::Code::AlreadyExists);
    assert_eq!(error_reason(&reused), "REQUEST_ID_REUSED");
    assert!(reused.message().contains("row-4"), "{}", reused.message());
    let details = tonic_types::StatusExt::get_error_details(&reused);
    let violations = details.bad_request().map(|bad| bad.field_violations.clone()).unwrap_or_default();
    assert_eq!(violations[0].field, "items[1].item_id", "the reused item is named by its field");
    assert_eq!(h.totals("acme").await, totals, "nothing of a refused batch applies");
    let fixed = auth.commit_batch(batch(vec![item("row-6", 1, ""), item("row-4", 30, "")])).await.unwrap();
    let fixed = fixed.into_inner();
    assert_eq!(fixed.charged, 31, "row-6 fresh, row-4 as first answered");
    assert_eq!(fixed.items[1].held, 40, "an item answered from memory carries its first figures");
    assert_eq!(fixed.reservation.unwrap().held, 39, "the reservation as this batch left it");
    // An id used by another call on the reservation (here an Extend) is taken.
    let extend = pb::ExtendRequest {
        reservation_id: id.clone(),
        ttl_ms: MINUTE,
        request_id: "ext-1".into(),
        ..Default::default()
    };
    assert_eq!(auth.extend(extend).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);
    let taken = auth.commit_batch(batch(vec![item("ext-1", 1, "")])).await.unwrap_err();
    assert_eq!(error_reason(&taken), "REQUEST_ID_REUSED");
    let totals = h.totals("acme").await;

    // Bad input is refused by field, whole.
    let bad = [
        (batch(vec![]), "items: must hold 1..=100 items, got 0"),
        (batch((0..101).map(|i| item(&format!("r{i}"), 1, "")).collect()), "items: must hold 1..=100 items, got 101"),
        (batch(vec![item("a", 1, ""), item("a", 1, "")]), "items[1].item_id: repeats items[0]'s"),
        (batch(vec![item("a", 1, ""), item("", 1, "")]), "items[1].item_id: must not be empty"),
        (batch(vec![item("a", -1, "")]), "items[0].cost.amount: must be in 0..="),
        (batch(vec![item("a", 1, &"k".repeat(257))]), "items[0].business_key: must be at most 256"),
    ];
    for (request, expected) in bad {
        let error = auth.commit_batch(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{expected}");
        assert!(error.message().starts_with(expected), "expected {expected:?}, got {:?}", error.message());
    }
    let unknown = pb::CommitBatchRequest { reservation_id: "acme/999".into(), items: vec![item("z", 1, "")] };
    assert_eq!(auth.commit_batch(unknown).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(h.totals("acme").await, totals, "refused batches change nothing");

    // On a closed reservation every new item is declined as a Commit would be.
    h.release(&id).await;
    let closed = auth.commit_batch(batch(vec![item("row-7", 1, ""), item("row-1", 10, "")])).await.unwrap();
    let closed = closed.into_inner();
    assert_eq!(closed.items[0].outcome(), pb::Outcome::ReservationClosed);
    assert_eq!((closed.items[1].outcome(), closed.items[1].charged), (pb::Outcome::Ok, 10), "row-1 from memory");
}

/// A category budget caps what the whole team may hold or spend in one category per cycle,
/// checked with the account's credit and the user's limit: Reserve, Extend, Charge, partial
/// holds and Quote all see it; a release gives back to it; a renewal starts it afresh.
async fn category_budgets_cap_a_kind_of_spend_per_cycle(h: Harness) {
    h.account("acme", 1_000).await; // cycle 2026-02-28 .. 2026-03-31
    let mut admin = h.admin.clone();
    let mut auth = h.auth.clone();
    let budget = |category: &str, budget: Option<i64>, request_id: &str| pb::SetCategoryBudgetRequest {
        account_id: "acme".into(),
        category: category.into(),
        budget,
        request_id: request_id.into(),
    };
    let early = h.reserve_cost("acme", "ann", "ai", amount_cost(30), HOUR).await;
    assert_eq!(early.outcome(), pb::Outcome::Ok);
    let set = admin.set_category_budget(budget("ai", Some(100), "b-1")).await.unwrap().into_inner();
    assert_eq!((set.outcome(), set.budget, set.used, set.remaining), (pb::Outcome::Ok, Some(100), 30, Some(70)));

    // Over the budget: declined by the category, with its figures; other categories go on.
    let over = h.reserve_cost("acme", "bob", "ai", amount_cost(71), HOUR).await;
    assert_eq!(over.outcome(), pb::Outcome::CategoryBudgetReached);
    let decline = over.decline.unwrap();
    assert_eq!((decline.scope(), decline.scope_id.as_str()), (pb::Scope::Category, "ai"));
    assert_eq!((decline.requested, decline.available, decline.category_remaining), (71, 970, Some(70)));
    assert!(
        decline.message.contains("category ai of account acme reached its budget: 70 remaining"),
        "{}",
        decline.message
    );
    let email = h.reserve_cost("acme", "bob", "email", amount_cost(200), HOUR).await;
    assert_eq!(email.outcome(), pb::Outcome::Ok, "another category is not capped");
    let charge = pb::ChargeRequest {
        account_id: "acme".into(),
        user_id: "bob".into(),
        category: "ai".into(),
        cost: Some(amount_cost(71)),
        request_id: "c-1".into(),
        ..Default::default()
    };
    assert_eq!(auth.charge(charge).await.unwrap().into_inner().outcome(), pb::Outcome::CategoryBudgetReached);
    // Quote sees the budget when given the category.
    let quote = |category: &str| pb::QuoteRequest {
        account_id: "acme".into(),
        user_id: String::new(),
        category: category.into(),
        cost: Some(sku_cost("email.verified", 71)),
    };
    let quoted = auth.quote(quote("ai")).await.unwrap().into_inner();
    assert_eq!(
        (quoted.fits, quoted.outcome(), quoted.category_remaining),
        (false, pb::Outcome::CategoryBudgetReached, Some(70))
    );
    assert!(auth.quote(quote("")).await.unwrap().into_inner().fits, "without a category, only credit and user count");
    // A partial hold takes what the budget leaves; an Extend is capped too.
    let partial = pb::ReserveRequest {
        account_id: "acme".into(),
        user_id: "bob".into(),
        category: "ai".into(),
        cost: Some(amount_cost(500)),
        ttl_ms: HOUR,
        request_id: "p-1".into(),
        labels: HashMap::new(),
        min_quantity: 1,
    };
    let partial = auth.reserve(partial).await.unwrap().into_inner();
    assert_eq!((partial.outcome(), partial.amount), (pb::Outcome::Ok, 70), "the budget's 70 left");
    let extended = h.extend(&early.reservation_id, 1, 0).await;
    assert_eq!(extended.outcome(), pb::Outcome::CategoryBudgetReached);
    assert_eq!(extended.held, 30, "a declined Extend leaves the hold");
    // Returned credits give back to the budget; commits stay counted.
    h.commit(&early.reservation_id, 10, true).await;
    let account = admin.get_account(pb::GetAccountRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    let ai = account.category_budgets.iter().find(|c| c.category == "ai").unwrap();
    assert_eq!((ai.budget, ai.used, ai.remaining), (Some(100), 80, Some(20)));
    let email_use = account.category_budgets.iter().find(|c| c.category == "email").unwrap();
    assert_eq!((email_use.budget, email_use.used, email_use.remaining), (None, 200, None));
    // A new cycle starts every category afresh; the budget stays.
    h.clock.set(ms(2026, 3, 31, 0));
    let renewed = admin.set_category_budget(budget("ai", Some(100), "b-2")).await.unwrap().into_inner();
    assert_eq!((renewed.used, renewed.remaining), (0, Some(100)));
    // Lifted: no cap.
    let lifted = admin.set_category_budget(budget("ai", None, "b-3")).await.unwrap().into_inner();
    assert_eq!((lifted.budget, lifted.remaining), (None, None));
    assert_eq!(h.reserve_cost("acme", "ann", "ai", amount_cost(500), HOUR).await.outcome(), pb::Outcome::Ok);

    // Bad input is refused by field; an unknown account is not created.
    let unknown = admin.set_category_budget(budget("gold", Some(1), "b-4")).await.unwrap_err();
    assert!(unknown.message().starts_with("category: unknown category"), "{}", unknown.message());
    let negative = admin.set_category_budget(budget("ai", Some(-1), "b-5")).await.unwrap_err();
    assert!(negative.message().starts_with("budget: "), "{}", negative.message());
    let nobody = pb::SetCategoryBudgetRequest { account_id: "nobody".into(), ..budget("ai", Some(1), "b-6") };
    assert_eq!(admin.set_category_budget(nobody).await.unwrap_err().code(), tonic::Code::NotFound);
}

/// Bad input: INVALID_ARGUMENT, the message starts with the field, and nothing changes.
async fn bad_input_names_the_field_and_changes_nothing(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 10).await;
    let before = h.totals("acme").await;
    let reserve = || pb::ReserveRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        category: "email".into(),
        cost: Some(amount_cost(1)),
        ttl_ms: 0,
        request_id: "bad-input".into(),
        labels: HashMap::new(),
        min_quantity: 0,
    };
    type Edit = fn(&mut pb::ReserveRequest);
    let reserves: Vec<(Edit, &str)> = vec![
        (|r| r.account_id.clear(), "account_id: must not be empty"),
        (|r| r.account_id = "a".repeat(65), "account_id: must be at most 64"),
        (|r| r.account_id = "ac me".into(), "account_id: must be visible ASCII"),
        (|r| r.user_id.clear(), "user_id: must not be empty"),
        (|r| r.request_id.clear(), "request_id: must not be empty"),
        (|r| r.request_id = "r".repeat(129), "request_id: must be at most 128"),
        (|r| r.category = "gold".into(), "category: unknown category"),
        (|r| r.cost = None, "cost: an amount or a SKU"),
        (|r| r.cost = Some(amount_cost(0)), "cost.amount: must be in 1..="),
        (|r| r.cost = Some(amount_cost(-3)), "cost.amount: must be in 1..="),
        (|r| r.cost = Some(amount_cost(AMOUNT_MAX + 1)), "cost.amount: must be in 1..="),
        (|r| r.cost = Some(sku_cost("caviar", 1)), "cost.sku.sku: unknown SKU"),
        (|r| r.cost = Some(sku_cost("email.verified", 0)), "cost.sku.quantity: must be in 1..="),
        (|r| r.ttl_ms = -1, "ttl_ms: must be 0 (default) or in"),
        (|r| r.ttl_ms = 8 * DAY, "ttl_ms: must be 0 (default) or in"),
        (|r| r.labels = (0..17).map(|i| (format!("k{i}"), String::new())).collect(), "labels: at most 16"),
        (|r| r.min_quantity = 2, "min_quantity: must be 0 (all or nothing) or in 1..=1 "),
        (|r| r.min_quantity = -1, "min_quantity: must be 0 (all or nothing) or in 1..=1 "),
        (
            |r| (r.cost, r.min_quantity) = (Some(sku_cost("dialer.minute.de", 3)), 4),
            "min_quantity: must be 0 (all or nothing) or in 1..=3 ",
        ),
    ];
    let mut auth = h.auth.clone();
    for (edit, expected) in reserves {
        let mut request = reserve();
        edit(&mut request);
        let error = auth.reserve(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{expected}");
        assert!(error.message().starts_with(expected), "expected {expected:?}, got {:?}", error.message());
    }
    let commit = |reservation_id: &str, cost: Option<pb::Cost>, business_key: &str| pb::CommitRequest {
        reservation_id: reservation_id.into(),
        cost,
        r#final: false,
        request_id: "bad-commit".into(),
        business_key: business_key.into(),
        labels: HashMap::new(),
    };
    let commits = [
        (commit("", Some(amount_cost(1)), ""), "reservation_id: must look like"),
        (commit("acme/zero", Some(amount_cost(1)), ""), "reservation_id: must end in a number in 1..="),
        (commit(&id, Some(amount_cost(-1)), ""), "cost.amount: must be in 0..="),
        (commit(&id, None, ""), "cost: "),
        (commit(&id, Some(amount_cost(1)), &"k".repeat(257)), "business_key: must be at most 256"),
    ];
    for (request, expected) in commits {
        let error = auth.commit(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert!(error.message().starts_with(expected), "expected {expected:?}, got {:?}", error.message());
    }
    let extend = pb::ExtendRequest {
        reservation_id: id.clone(),
        cost: None,
        ttl_ms: 0,
        request_id: "bad-extend".into(),
        min_quantity: 0,
    };
    let error = auth.extend(extend.clone()).await.unwrap_err();
    assert!(error.message().starts_with("cost: give extra credits"), "{}", error.message());
    let partial = pb::ExtendRequest { ttl_ms: MINUTE, min_quantity: 1, ..extend };
    let error = auth.extend(partial).await.unwrap_err();
    assert!(error.message().starts_with("min_quantity: a partial extension needs a cost"), "{}", error.message());
    let mut admin = h.admin.clone();
    let plan = pb::SetPlanRequest {
        account_id: "acme".into(),
        period: 0,
        anchor_unix_ms: 0,
        plan_credits: 1,
        addon_credits: 0,
        request_id: "p".into(),
    };
    assert!(admin.set_plan(plan.clone()).await.unwrap_err().message().starts_with("period: "));
    let negative = pb::SetPlanRequest { period: 1, plan_credits: -1, ..plan.clone() };
    assert!(admin.set_plan(negative).await.unwrap_err().message().starts_with("plan_credits: "));
    let anchor = pb::SetPlanRequest { period: 1, anchor_unix_ms: -5, ..plan };
    assert!(admin.set_plan(anchor).await.unwrap_err().message().starts_with("anchor_unix_ms: "));
    let grant = pb::GrantRequest {
        account_id: "acme".into(),
        kind: pb::LotKind::Plan as i32,
        amount: 5,
        expires_unix_ms: 0,
        request_id: "g".into(),
        create_account: false,
    };
    assert!(admin.grant(grant.clone()).await.unwrap_err().message().starts_with("kind: "));
    let past = pb::GrantRequest { kind: pb::LotKind::Promo as i32, expires_unix_ms: t0() - 1, ..grant.clone() };
    assert!(admin.grant(past).await.unwrap_err().message().starts_with("expires_unix_ms: must be in the future"));
    let zero = pb::GrantRequest { kind: pb::LotKind::Promo as i32, amount: 0, ..grant };
    assert!(admin.grant(zero).await.unwrap_err().message().starts_with("amount: "));
    let trial = pb::StartTrialRequest {
        account_id: "acme".into(),
        duration_ms: 400 * DAY,
        request_id: "t".into(),
        ..Default::default()
    };
    assert!(admin.start_trial(trial).await.unwrap_err().message().starts_with("duration_ms: "));
    let limit = pb::SetUserLimitRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        limit: Some(-1),
        request_id: "l".into(),
    };
    assert!(admin.set_user_limit(limit).await.unwrap_err().message().starts_with("limit: "));
    let list = pb::ListReservationsRequest { account_id: "acme".into(), page_size: 5000, ..Default::default() };
    assert!(admin.list_reservations(list).await.unwrap_err().message().starts_with("page_size: "));

    assert_eq!(h.totals("acme").await, before, "bad input changed nothing");
    let account = admin.get_account(pb::GetAccountRequest { account_id: "acme".into() }).await.unwrap().into_inner();
    assert!(!account.trial_used);
    assert!(account.user_limits.iter().all(|user| user.limit.is_none()), "no limit was set");
    // None of the refused request ids was remembered: each works now with valid parameters.
    let mut valid = reserve();
    valid.request_id = "bad-input".into();
    assert_eq!(auth.reserve(valid).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);
}

/// A listing examines a bounded number of reservations per call: past the budget it returns
/// what it found with a token, and following the tokens still finds everything.
async fn long_listings_are_bounded_and_complete(h: Harness) {
    use credit_sidecar::ledger::command::Charge;
    use credit_sidecar::ledger::model::LIST_SCAN_MAX;
    use credit_sidecar::ledger::{AccountId, Labels, RequestId, Rules, UserId};
    h.account("acme", 1_000_000).await;
    let held = h.hold("acme", "ann", 1).await; // the oldest, and the only one held
    let rules = Rules::default();
    for n in 0..LIST_SCAN_MAX + 5 {
        let charge = Charge {
            account: AccountId::parse("acme").unwrap(),
            user: UserId::parse("bob").unwrap(),
            category: rules.category("api").unwrap(),
            amount: 1,
            request: RequestId::parse(&format!("c{n}")).unwrap(),
            business_key: None,
            labels: Labels::default(),
            overdraft: false,
        };
        h.engine.charge(&charge).await.unwrap();
    }
    let list = |page_token: String| pb::ListReservationsRequest {
        account_id: "acme".into(),
        state: pb::ReservationState::Held as i32,
        page_size: 10,
        page_token,
        settled: false,
    };
    let first = h.admin.clone().list_reservations(list(String::new())).await.unwrap().into_inner();
    assert!(first.reservations.is_empty(), "the first call stops at its budget");
    assert!(!first.next_page_token.is_empty(), "…and says where to go on");
    let second = h.admin.clone().list_reservations(list(first.next_page_token)).await.unwrap().into_inner();
    let ids: Vec<&str> = second.reservations.iter().map(|r| r.reservation_id.as_str()).collect();
    assert_eq!((ids, second.next_page_token.as_str()), (vec![held.as_str()], ""));
}

crate::engine_tests!(
    long_listings_are_bounded_and_complete,
    reserve_is_all_or_nothing,
    user_limit_declines_even_with_team_credit,
    user_limit_counts_holds_and_returns_them,
    burn_order_takes_soonest_expiry_first,
    commit_above_hold_is_declined,
    final_commit_closes_and_returns_the_rest,
    zero_commit_records_a_free_line_item,
    release_returns_the_uncommitted_part,
    extend_grows_amount_and_deadline,
    holds_expire_and_return_what_is_uncommitted,
    expiry_without_sweep_is_seen_by_the_next_call,
    a_hold_outliving_its_lot_returns_to_expired,
    retries_get_the_same_answer,
    business_keys_charge_once_per_cycle,
    charge_holds_and_commits_in_one_step,
    quote_answers_without_changing_anything,
    renewal_is_exact_at_the_boundary_without_rollover,
    addons_are_usable_at_once_and_recur,
    changing_the_schedule_restarts_the_cycle,
    trial_is_granted_once,
    amounts_near_the_bound_stay_exact,
    get_account_and_list_reservations,
    unknown_things_are_not_found,
    bad_input_names_the_field_and_changes_nothing,
    partial_holds_take_the_whole_units_that_fit,
    commit_batch_applies_each_item_as_a_commit,
    category_budgets_cap_a_kind_of_spend_per_cycle,
);
