//! CreditAdmin.WatchAccount: a stream of the account as GetAccount shows it, sent when it
//! changes; bounded on its own (not by the call deadline or `concurrency_max`), ended by a
//! shutdown — on both engines.

use std::time::Duration;

use credit_sidecar::api::WATCH_STREAMS_MAX;
use credit_sidecar::api::pb;
use credit_sidecar::gate::Limits;
use credit_sidecar::ledger::{ManualClock, Rules};
use credit_sidecar::server::ServeOptions;
use tonic::{Code, Streaming};

use crate::harness::*;

crate::engine_tests!(
    a_watch_sends_the_account_then_each_change_once,
    a_watch_refuses_bad_input_unknown_accounts_and_too_many_streams,
);

fn watch_request(account: &str, interval_ms: i64) -> pb::WatchAccountRequest {
    pb::WatchAccountRequest { account_id: account.into(), interval_ms }
}

/// The next message, which must come (the state it waits for was made before).
async fn next(stream: &mut Streaming<pb::WatchAccountResponse>) -> pb::GetAccountResponse {
    let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a message within 10 s")
        .expect("no error")
        .expect("the stream goes on");
    assert!(message.at_unix_ms > 0);
    message.account.expect("the account")
}

async fn a_watch_sends_the_account_then_each_change_once(h: Harness) {
    h.account("acct", 1_000).await;
    let mut stream = h.admin.clone().watch_account(watch_request("acct", 100)).await.unwrap().into_inner();
    let first = next(&mut stream).await;
    assert_eq!(first.account_id, "acct");
    assert_eq!((first.totals.unwrap().available, first.open_reservations), (1_000, 0));
    let hold = h.hold("acct", "agent", 30).await;
    let held = next(&mut stream).await;
    assert_eq!((held.totals.unwrap().held, held.open_reservations), (30, 1));
    h.commit(&hold, 10, true).await;
    let committed = next(&mut stream).await.totals.unwrap();
    assert_eq!((committed.held, committed.spent, committed.available), (0, 10, 990));
    // Reads change nothing, so they send nothing: the next message is the next change (a
    // repeat of the last state would fail here).
    h.balance("acct", "").await;
    h.grant("acct", pb::LotKind::Promo, 5, ms(2026, 12, 31, 0)).await;
    let granted = next(&mut stream).await.totals.unwrap();
    assert_eq!((granted.granted, granted.available), (1_005, 995));
}

async fn a_watch_refuses_bad_input_unknown_accounts_and_too_many_streams(h: Harness) {
    h.account("acct", 1_000).await;
    let mut admin = h.admin.clone();
    let bad = admin.watch_account(watch_request("acct", 50)).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("interval_ms: "), "{}", bad.message());
    let unknown = admin.watch_account(watch_request("nobody", 0)).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let mut open = Vec::new();
    for _ in 0..WATCH_STREAMS_MAX {
        let mut stream = admin.watch_account(watch_request("acct", 0)).await.unwrap().into_inner();
        next(&mut stream).await;
        open.push(stream);
    }
    let refused = admin.watch_account(watch_request("acct", 0)).await.unwrap_err();
    assert_eq!((refused.code(), error_reason(&refused)), (Code::ResourceExhausted, "OVERLOADED".to_owned()));
    // A stream the caller drops gives its place back (the sidecar notices within an interval).
    open.pop();
    eventually("a dropped stream's place is free", Duration::from_secs(10), async || {
        admin.clone().watch_account(watch_request("acct", 0)).await.is_ok()
    })
    .await;
}

/// A stream outlives the call deadline and holds no `concurrency_max` permit (with one permit,
/// calls still go through beside it); a shutdown ends it with UNAVAILABLE and does not wait for
/// it.
#[tokio::test]
async fn a_watch_outlives_the_call_deadline_holds_no_permit_and_ends_at_shutdown() {
    let clock = ManualClock::new(t0());
    let engine = credit_sidecar::engine::Engine::embedded(Rules::default(), std::sync::Arc::new(clock.clone()));
    let mut options = ServeOptions::new(Duration::from_secs(3600));
    options.limits = Limits { call_timeout_max: Duration::from_millis(200), concurrency_max: 1, ..Limits::default() };
    let h = Harness::serve_settled(clock, engine, None, options).await;
    h.account("acct", 1_000).await;
    let mut stream = h.admin.clone().watch_account(watch_request("acct", 100)).await.unwrap().into_inner();
    next(&mut stream).await;
    // Past the 200 ms deadline a call would have had (this waits for time, not for readiness).
    tokio::time::sleep(Duration::from_millis(400)).await;
    h.hold("acct", "agent", 30).await;
    assert_eq!(next(&mut stream).await.totals.unwrap().held, 30, "the stream outlived the deadline");
    let stopping = tokio::spawn(h.stop());
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("the stream ends");
    let end = end.unwrap_err();
    assert_eq!((end.code(), error_reason(&end)), (Code::Unavailable, "SHUTTING_DOWN".to_owned()));
    stopping.await.unwrap();
}
