//! The callers' flows of docs/rules.md#callers, end to end through gRPC.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use credit_sidecar::api::pb;
use credit_sidecar::ledger::Rules;

use crate::harness::*;

/// CSV enrichment: reserve the batch, many workers commit rows in parallel against the one
/// reservation (only rows with verified, net-new data), then release the rest.
async fn csv_batch_with_parallel_commits(h: Harness) {
    h.account("acme", 5_000).await;
    let rows = 1_000;
    let batch = h.reserve_cost("acme", "ann", "enrichment", sku_cost("enrichment.row", rows), HOUR).await;
    assert_eq!((batch.outcome(), batch.amount, batch.available), (pb::Outcome::Ok, 1_000, 4_000));
    // Another user sees less available while the run is pending.
    let quote = pb::QuoteRequest {
        account_id: "acme".into(),
        user_id: "bob".into(),
        category: String::new(),
        cost: Some(amount_cost(4_001)),
    };
    assert!(!h.auth.clone().quote(quote).await.unwrap().into_inner().fits);

    let h = Arc::new(h);
    let workers = 16;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let h = Arc::clone(&h);
        let reservation = batch.reservation_id.clone();
        tasks.push(tokio::spawn(async move {
            let mut charged = 0;
            for row in (worker..rows).step_by(workers as usize) {
                // Rows divisible by 3 found nothing new: no commit.
                if row % 3 == 0 {
                    continue;
                }
                let key = format!("contact:{}:email", row % 600); // duplicates across the file
                let labels = HashMap::from([("row".to_owned(), row.to_string())]);
                let response = h.commit_with(&reservation, 1, false, &key, labels).await;
                assert_eq!(response.outcome(), pb::Outcome::Ok);
                charged += response.charged;
            }
            charged
        }));
    }
    let mut charged = 0;
    for task in tasks {
        charged += task.await.unwrap();
    }
    let distinct_keys: std::collections::HashSet<i64> =
        (0..rows).filter(|row| row % 3 != 0).map(|row| row % 600).collect();
    assert_eq!(charged, distinct_keys.len() as i64, "each contact charged once");
    let released = h.release(&batch.reservation_id).await;
    assert_eq!(released.returned, 1_000 - charged);
    let reservation = released.reservation.unwrap();
    assert_eq!(reservation.committed, charged);
    assert_eq!(reservation.commit_count, (0..rows).filter(|row| row % 3 != 0).count() as i64);
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.spent, totals.held), (5_000 - charged, charged, 0));
    assert_conserved(&totals);
}

/// Waterfall: reserve the worst case, commit per provider that found data (one reached with the
/// customer's own key costs 0), release the rest.
async fn waterfall_commits_per_provider(h: Harness) {
    h.account("acme", 100).await;
    let worst_case = 1 + 2 + 1; // provider a, provider b, validator
    let run = h.reserve_cost("acme", "ann", "waterfall", amount_cost(worst_case), 5 * MINUTE).await;
    assert_eq!(run.outcome(), pb::Outcome::Ok);
    let provider = |name: &str| HashMap::from([("provider".to_owned(), name.to_owned())]);
    let own_key = h.commit_with(&run.reservation_id, 0, false, "", provider("a-own-key")).await;
    assert_eq!((own_key.outcome(), own_key.charged), (pb::Outcome::Ok, 0));
    let b = h.commit_with(&run.reservation_id, 2, false, "", provider("b")).await;
    assert_eq!(b.charged, 2);
    let validator = h.commit_with(&run.reservation_id, 1, true, "", provider("validator")).await;
    assert_eq!((validator.charged, validator.returned), (1, 1));
    let reservation = validator.reservation.unwrap();
    assert_eq!(
        (reservation.state(), reservation.committed, reservation.commit_count),
        (pb::ReservationState::Committed, 3, 3)
    );
    assert_eq!(h.totals("acme").await.available, 97);
}

/// Dialer: reserve a few minutes at the region's rate, commit each minute, extend while the
/// call goes on, final commit on hang-up.
async fn dialer_commits_minutes_and_extends(h: Harness) {
    h.account("acme", 100).await;
    let call = h.reserve_cost("acme", "ann", "dialer", sku_cost("dialer.minute.de", 3), 4 * MINUTE).await;
    assert_eq!((call.outcome(), call.amount), (pb::Outcome::Ok, 6));
    let id = call.reservation_id;
    let minute = |h: &Harness, id: &str, final_commit: bool| {
        let request = pb::CommitRequest {
            reservation_id: id.into(),
            cost: Some(sku_cost("dialer.minute.de", 1)),
            r#final: final_commit,
            request_id: h.rid(),
            business_key: String::new(),
            labels: HashMap::new(),
        };
        let mut auth = h.auth.clone();
        async move { auth.commit(request).await.unwrap().into_inner() }
    };
    for _ in 0..3 {
        h.advance(MINUTE).await;
        assert_eq!(minute(&h, &id, false).await.charged, 2);
        // Keep one more minute held, and the deadline ahead of the call.
        let extend = pb::ExtendRequest {
            reservation_id: id.clone(),
            cost: Some(sku_cost("dialer.minute.de", 1)),
            ttl_ms: 4 * MINUTE,
            request_id: h.rid(),
            min_quantity: 0,
        };
        let extended = h.auth.clone().extend(extend).await.unwrap().into_inner();
        assert_eq!((extended.outcome(), extended.added), (pb::Outcome::Ok, 2));
        assert_eq!(extended.deadline_unix_ms, h.clock_now() + 4 * MINUTE);
    }
    // Hang-up half-way through minute four: bill it and return the rest.
    h.advance(30_000).await;
    let hang_up = minute(&h, &id, true).await;
    assert_eq!((hang_up.charged, hang_up.returned), (2, 4));
    let reservation = hang_up.reservation.unwrap();
    assert_eq!(
        (reservation.reserved, reservation.committed, reservation.state()),
        (12, 8, pb::ReservationState::Committed)
    );
    assert_eq!(h.totals("acme").await.available, 92);
}

/// A dialer that dies mid-call: nobody releases; the hold expires and the unused part returns.
async fn dead_dialer_hold_expires(h: Harness) {
    h.account("acme", 100).await;
    let call = h.reserve_cost("acme", "ann", "dialer", sku_cost("dialer.minute.us", 5), 2 * MINUTE).await;
    h.advance(MINUTE).await;
    assert_eq!(h.commit(&call.reservation_id, 1, false).await.charged, 1);
    // The dialer process dies here. Time passes; only the sweep acts.
    h.advance(MINUTE).await;
    let reservation = h.reservation(&call.reservation_id).await;
    assert_eq!(
        (reservation.state(), reservation.committed, reservation.returned),
        (pb::ReservationState::Expired, 1, 4)
    );
    let totals = h.totals("acme").await;
    assert_eq!((totals.available, totals.held, totals.spent), (99, 0, 1));
    // Its late final commit after a restart is refused clearly.
    let late = h.commit(&call.reservation_id, 1, true).await;
    assert_eq!(late.outcome(), pb::Outcome::ReservationExpired);
}

/// Many tasks on one hot account at once: no overspend, conservation exact to the credit.
async fn concurrent_traffic_never_overspends(h: Harness) {
    h.account("hot", 10_000).await;
    let h = Arc::new(h);
    let mut tasks = Vec::new();
    for task in 0..24 {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let (mut spent, mut declined) = (0, 0);
            for round in 0..40 {
                let response = h.reserve("hot", &format!("u{}", task % 4), 20 + (task + round) % 30, MINUTE).await;
                if response.outcome() != pb::Outcome::Ok {
                    assert_eq!(response.outcome(), pb::Outcome::InsufficientCredit);
                    declined += 1;
                    continue;
                }
                let id = response.reservation_id;
                match round % 4 {
                    0 => spent += h.commit(&id, response.amount, true).await.charged,
                    1 => {
                        spent += h.commit(&id, 5, false).await.charged;
                        h.release(&id).await;
                    }
                    2 if h.extend(&id, 10, 0).await.outcome() == pb::Outcome::Ok => {
                        spent += h.commit(&id, response.amount + 10, true).await.charged;
                    }
                    _ => {
                        h.release(&id).await;
                    }
                }
            }
            (spent, declined)
        }));
    }
    let (mut spent, mut declined) = (0, 0);
    for task in tasks {
        let (task_spent, task_declined) = task.await.unwrap();
        spent += task_spent;
        declined += task_declined;
    }
    let totals = h.totals("hot").await;
    eprintln!("{} engine: 24 tasks x 40 rounds: {declined} reserves declined, {spent} spent", h.engine.name());
    assert!(declined > 0, "the account never ran short: the test did not reach the limit");
    assert_eq!(totals.spent, spent, "every acknowledged commit counted, nothing more");
    assert_eq!((totals.held, totals.available), (0, 10_000 - spent));
    assert_conserved(&totals);
}

impl Harness {
    fn clock_now(&self) -> i64 {
        use credit_sidecar::ledger::Clock;
        self.clock.now_ms()
    }
}

crate::engine_tests!(
    csv_batch_with_parallel_commits,
    waterfall_commits_per_provider,
    dialer_commits_minutes_and_extends,
    dead_dialer_hold_expires,
    concurrent_traffic_never_overspends,
);

/// The server's own background sweep expires holds without any call touching the account.
#[tokio::test]
async fn background_sweep_expires_holds_by_itself() {
    let h = Harness::start_with(EngineKind::Embedded, Rules::default(), Duration::from_millis(10)).await;
    h.account("acme", 100).await;
    let id = h.reserve("acme", "ann", 30, MINUTE).await.reservation_id;
    h.clock.advance(MINUTE);
    // Wait (bounded) for the sweep, watching its counter: reading the account through the API
    // would itself expire the hold and prove nothing about the background task.
    let expired = tokio::time::timeout(Duration::from_secs(10), async {
        while h.engine.swept_holds() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(expired.is_ok(), "the background sweep did not expire the hold within 10 s");
    assert_eq!(h.reservation(&id).await.state(), pb::ReservationState::Expired);
}

/// The server stops when its shutdown future resolves; afterwards calls fail fast.
#[tokio::test]
async fn server_stops_on_its_shutdown_signal() {
    let h = Harness::start(EngineKind::Embedded).await;
    h.account("acme", 10).await;
    let mut auth = h.auth.clone();
    h.stop().await;
    let request = pb::GetBalanceRequest { account_id: "acme".into(), user_id: String::new() };
    let error = auth.get_balance(request).await.unwrap_err();
    // The client either finds the connection closed (UNAVAILABLE) or has its request cut by the
    // closing socket (a transport error, which tonic reports as UNKNOWN): either way, no answer.
    let transport_cut = error.code() == tonic::Code::Unknown && error.message() == "transport error";
    assert!(error.code() == tonic::Code::Unavailable || transport_cut, "{error}");
}

/// The Redis engine really keeps its state in the test's private Redis.
#[tokio::test]
async fn redis_engine_state_lives_in_redis() {
    let h = Harness::start(EngineKind::Redis).await;
    h.account("acme", 10).await;
    let redis = h.redis.as_ref().unwrap();
    let keys = redis.cli(&["--scan", "--pattern", "cs:*:a:acme"]);
    assert!(keys.starts_with("cs:{s"), "{keys}");
    let events = redis.cli(&[
        "eval",
        "local n = 0 for i = 0, 15 do n = n + redis.call('XLEN', 'cs:{s' .. i .. '}:events') end return n",
        "0",
    ]);
    assert!(events.parse::<u32>().unwrap() >= 3, "plan set, cycle started, lot granted: {events}");
}
