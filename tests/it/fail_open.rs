//! Fail-open categories (Redis engine): while Redis is unreachable, Reserves and Extends of a
//! `fail_open_categories` category are admitted from the sidecar's bounded allowance, served by
//! the sidecar until they close, and charged to Redis once it answers — with an overdraft the
//! next grant repays when the account could not cover them. On one sidecar, across a SIGKILL of
//! the real binary, and on replicas under load with Redis killed mid-call.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use credit_sidecar::api::pb;
use credit_sidecar::journal::{Coverage, Journal, JournalConfig};
use credit_sidecar::ledger::{ManualClock, Rules};
use credit_sidecar::outage::{FailOpenConfig, OUTAGE_SEQ_MIN, Outage};
use credit_sidecar::server::ServeOptions;
use tonic::Code;

use crate::harness::*;
use crate::servers::RedisServer;

/// Sends a call again, as a caller does, while it fails UNAVAILABLE (Redis dead and this
/// category's allowance not covering it, or Redis coming back). (A macro: the calls differ in
/// type, and a closure returning futures is not `Send` in a spawned task.)
macro_rules! retried {
    ($call:expr) => {{
        let mut tries = 0;
        loop {
            match $call.await {
                Ok(answer) => break answer.into_inner(),
                Err(status) if status.code() == Code::Unavailable && tries < 1_000 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(status) => panic!("{status}"),
            }
        }
    }};
}

/// A Redis that keeps what it acknowledged across a SIGKILL.
fn durable_redis() -> RedisServer {
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
}

/// The journal file with `dialer` failing open on an allowance of `credits` per account.
async fn outage(dir: &tempfile::TempDir, credits: i64) -> (Arc<Journal>, Arc<Outage>) {
    outage_bounded(dir, credits, 10_000).await
}

/// The same, serving at most `holds_max` holds (`journal_entries_max`).
async fn outage_bounded(dir: &tempfile::TempDir, credits: i64, holds_max: usize) -> (Arc<Journal>, Arc<Outage>) {
    let fail_open =
        FailOpenConfig { categories: ["dialer".to_owned()].into(), credits, window: Duration::from_secs(600) };
    let config = JournalConfig {
        path: dir.path().join("journal.db"),
        coverage: Coverage::Only(["dialer".to_owned()].into()),
        entries_max: holds_max,
        fail_open: Some(fail_open.clone()),
    };
    let journal = Arc::new(Journal::open(&config).await.unwrap());
    let outage = Outage::open(journal.clone(), fail_open).await.unwrap();
    (journal, outage)
}

/// A sidecar on `redis` whose background loop tries the journal and settles closed holds
/// every 100 ms; with `store`, settling into that ledger.
async fn sidecar(
    redis: &RedisServer,
    journal: Arc<Journal>,
    outage: Arc<Outage>,
    store: Option<&credit_sidecar::settle::store::Store>,
) -> Harness {
    let clock = ManualClock::new(t0());
    let mut settings = redis_settings(vec![redis.url()], false);
    settings.timeout = Duration::from_millis(300);
    let engine = redis_engine(&Rules::default(), &settings, &clock).await;
    let mut options = match store {
        Some(store) => crate::settle::settled_options(store, "a"),
        None => ServeOptions::new(Duration::from_secs(3600)),
    };
    options.journal = Some(journal);
    options.outage = Some(outage);
    options.journal_retry = Duration::from_millis(100);
    Harness::serve_settled(clock, engine, None, options).await
}

fn dialer_reserve(account: &str, amount: i64, request_id: &str) -> pb::ReserveRequest {
    pb::ReserveRequest {
        category: "dialer".into(),
        ttl_ms: 10 * MINUTE,
        ..reserve_request(account, amount, request_id)
    }
}

fn extend_request(reservation: &str, amount: i64, request_id: &str) -> pb::ExtendRequest {
    pb::ExtendRequest {
        reservation_id: reservation.into(),
        cost: Some(amount_cost(amount)),
        ttl_ms: 10 * MINUTE,
        request_id: request_id.into(),
        ..Default::default()
    }
}

fn commit_request(reservation: &str, amount: i64, final_commit: bool, request_id: &str) -> pb::CommitRequest {
    pb::CommitRequest {
        reservation_id: reservation.into(),
        cost: Some(amount_cost(amount)),
        r#final: final_commit,
        request_id: request_id.into(),
        business_key: String::new(),
        labels: HashMap::new(),
    }
}

fn seq_of(reservation: &str) -> u64 {
    reservation.rsplit_once('/').unwrap().1.parse().unwrap()
}

/// One sidecar, Redis killed: a dialer Reserve is admitted from the allowance (its retry gets
/// the same hold; other categories, and what the allowance cannot cover, fail closed); a dialer
/// hold opened before the outage is taken over by its Extend; commits answer JOURNALED, and
/// declines (beyond the hold, on a closed hold) come from the figures kept. Once Redis is back
/// the closed holds are charged: 45 credits on an account of 30, so 15 are owed — visible in
/// the totals and the history — and the next grant repays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_rides_out_a_redis_outage_on_the_allowance_and_pays_it_back() {
    let mut redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let (journal, outage) = outage(&dir, 50).await;
    let (store, _ledger) = crate::settle::sqlite_store().await;
    let h = sidecar(&redis, journal.clone(), outage.clone(), Some(&store)).await;
    h.account("acct", 30).await;
    let mut auth = h.auth.clone();
    let call = auth.reserve(dialer_reserve("acct", 10, "call-1")).await.unwrap().into_inner();
    assert_eq!(call.outcome(), pb::Outcome::Ok);
    let call = call.reservation_id;

    redis.kill();
    let admitted = auth.reserve(dialer_reserve("acct", 20, "call-2")).await.unwrap().into_inner();
    assert_eq!((admitted.outcome(), admitted.amount, admitted.available), (pb::Outcome::Ok, 20, 30), "{admitted:?}");
    let new = admitted.reservation_id.clone();
    assert!(seq_of(&new) >= OUTAGE_SEQ_MIN, "{new}");
    let again = auth.reserve(dialer_reserve("acct", 20, "call-2")).await.unwrap().into_inner();
    assert_eq!(again.reservation_id, new, "a retry gets the same hold");
    let reused = auth.reserve(dialer_reserve("acct", 21, "call-2")).await.unwrap_err();
    assert_eq!(error_reason(&reused), "REQUEST_ID_REUSED");
    let closed = auth.reserve(reserve_request("acct", 5, "email-1")).await.unwrap_err();
    assert_eq!(closed.code(), Code::Unavailable, "enrichment fails closed");
    // Bad input is refused as ever, naming its field, and admits nothing.
    let bad = pb::ReserveRequest { ttl_ms: -1, ..dialer_reserve("acct", 5, "call-bad") };
    let bad = auth.reserve(bad).await.unwrap_err();
    assert_eq!((bad.code(), error_reason(&bad)), (Code::InvalidArgument, "INVALID_FIELD".into()), "{bad:?}");
    assert!(bad.message().contains("ttl_ms"), "{}", bad.message());
    assert_eq!(outage.len(), 1, "only call-2's hold");
    let beyond = auth.reserve(dialer_reserve("acct", 31, "call-3")).await.unwrap_err();
    assert_eq!(beyond.code(), Code::Unavailable);
    assert!(beyond.message().contains("fail-open allowance of account acct cannot cover 31"), "{}", beyond.message());

    // The call opened before the outage goes on: taken over by its Extend.
    let extended = auth.extend(extend_request(&call, 15, "call-1-x1")).await.unwrap().into_inner();
    assert_eq!((extended.outcome(), extended.added, extended.held), (pb::Outcome::Ok, 15, 25), "{extended:?}");
    let spent = auth.extend(extend_request(&call, 16, "call-1-x2")).await.unwrap_err();
    assert_eq!(spent.code(), Code::Unavailable, "20 + 15 of the 50 are used");
    assert_eq!(outage.len(), 2);

    let over = auth.commit(commit_request(&call, 26, true, "call-1-c1")).await.unwrap().into_inner();
    assert_eq!((over.outcome(), over.held), (pb::Outcome::ExceedsHold, 25), "{over:?}");
    for (hold, amount, request_id) in [(&call, 25, "call-1-c1"), (&new, 20, "call-2-c1")] {
        let answer = auth.commit(commit_request(hold, amount, true, request_id)).await.unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Journaled, "{answer:?}");
    }
    let late = auth.commit(commit_request(&new, 1, false, "call-2-c2")).await.unwrap().into_inner();
    assert_eq!(late.outcome(), pb::Outcome::ReservationClosed, "{late:?}");
    let view = h.reservation(&new).await;
    assert_eq!((view.state(), view.committed, view.returned), (pb::ReservationState::Committed, 20, 0));

    redis.restart();
    eventually("the outage holds settled", Duration::from_secs(30), async || outage.is_empty()).await;
    let totals = h.totals("acct").await;
    assert_eq!((totals.spent, totals.owed, totals.available, totals.held), (45, 15, 0, 0), "{totals:?}");
    assert_conserved(&totals);
    // The taken-over hold is answered as the caller left it (the sidecar keeps settled holds a
    // while, for retries); Redis released it (nothing is held).
    let view = h.reservation(&call).await;
    assert_eq!((view.state(), view.committed), (pb::ReservationState::Committed, 25));
    let retry = auth.commit(commit_request(&call, 25, true, "call-1-c1")).await.unwrap().into_inner();
    assert_eq!(retry.outcome(), pb::Outcome::Journaled, "a retry after settling gets its first answer");

    let granted = h.grant("acct", pb::LotKind::Promo, 100, 0).await;
    assert_eq!(granted.outcome(), pb::Outcome::Ok);
    let totals = h.totals("acct").await;
    assert_eq!((totals.owed, totals.available), (0, 85), "the grant repaid the overdraft first: {totals:?}");
    assert_conserved(&totals);

    // The ledger shows the overdraft and its repayment.
    let history = async || {
        let request = pb::GetAccountHistoryRequest { account_id: "acct".into(), ..Default::default() };
        // NOT_FOUND until the account's first events are settled.
        h.admin.clone().get_account_history(request).await.map(|answer| answer.into_inner().entries).unwrap_or_default()
    };
    eventually("the history settled", Duration::from_secs(30), async || {
        history().await.iter().any(|entry| matches!(entry.change, Some(pb::history_entry::Change::Repaid(_))))
    })
    .await;
    let entries = history().await;
    let overdrawn: i64 = entries
        .iter()
        .filter_map(|entry| match &entry.change {
            Some(pb::history_entry::Change::Overdrawn(overdrawn)) => Some(overdrawn.amount),
            _ => None,
        })
        .sum();
    let repaid: i64 = entries
        .iter()
        .filter_map(|entry| match &entry.change {
            Some(pb::history_entry::Change::Repaid(repaid)) => Some(repaid.amount),
            _ => None,
        })
        .sum();
    assert_eq!((overdrawn, repaid), (15, 15));
    h.stop().await;
}

/// The edges: a commit journaled before its hold is taken over moves into the hold, so it is
/// charged even though the hold expired in Redis meanwhile; a retried Release gets its first
/// answer; a settled hold is not taken over again in a second outage; a takeover does not
/// restart the `fail_open_ms` window, after which Reserves fail closed and a served hold's
/// Extends too (the window of each runs from its own admission).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edges_of_an_outage_keep_every_acknowledged_commit_and_the_bounds() {
    let mut redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let (journal, outage) = outage(&dir, 500).await;
    let h = sidecar(&redis, journal.clone(), outage.clone(), None).await;
    h.account("acct", 1_000).await;
    let mut auth = h.auth.clone();
    let short = pb::ReserveRequest { ttl_ms: MINUTE, ..dialer_reserve("acct", 100, "call-1") };
    let call = auth.reserve(short).await.unwrap().into_inner().reservation_id;
    // A commit that reached Redis but whose answer the caller never got (applied here behind the
    // sidecar's back): the caller sends it again during the outage.
    let reached = credit_sidecar::ledger::command::Commit {
        reservation: credit_sidecar::ledger::ReservationId::parse(&call).unwrap(),
        amount: 30,
        final_commit: false,
        request: credit_sidecar::ledger::RequestId::parse("call-1-c1").unwrap(),
        business_key: None,
        labels: credit_sidecar::ledger::Labels::default(),
    };
    assert!(matches!(h.engine.commit(&reached).await.unwrap(), credit_sidecar::ledger::Decision::Done(_)));

    redis.kill();
    let journaled = auth.commit(commit_request(&call, 30, false, "call-1-c1")).await.unwrap().into_inner();
    assert_eq!(journaled.outcome(), pb::Outcome::Journaled);
    assert_eq!(journal.len(), 1);
    // The takeover moves the journaled commit into the hold: 100 - 30 + 50 held.
    let extended = auth.extend(extend_request(&call, 50, "call-1-x1")).await.unwrap().into_inner();
    assert_eq!((extended.outcome(), extended.held), (pb::Outcome::Ok, 120), "{extended:?}");
    assert_eq!(journal.len(), 0, "handed over to the hold");
    let again = auth.commit(commit_request(&call, 30, false, "call-1-c1")).await.unwrap().into_inner();
    assert_eq!(again.outcome(), pb::Outcome::Journaled, "its retry is answered by the hold");
    // Past the hold's deadline in Redis (its Extend never reached Redis); 10 minutes here.
    h.clock.advance(2 * MINUTE);
    let last = auth.commit(commit_request(&call, 75, true, "call-1-c2")).await.unwrap().into_inner();
    assert_eq!(last.outcome(), pb::Outcome::Journaled, "{last:?}");
    // A second hold, released; its retry gets the same answer.
    let other = auth.reserve(dialer_reserve("acct", 40, "call-2")).await.unwrap().into_inner().reservation_id;
    let release = pb::ReleaseRequest { reservation_id: other.clone(), request_id: "call-2-r".into() };
    let first = auth.release(release.clone()).await.unwrap().into_inner();
    assert_eq!((first.outcome(), first.returned), (pb::Outcome::Ok, 40));
    let retried = auth.release(release).await.unwrap().into_inner();
    assert_eq!((retried.outcome(), retried.returned), (pb::Outcome::Ok, 40), "{retried:?}");
    // A batch on a third hold, then its final commit; the batch again with one more item: the
    // item taken before answers JOURNALED, the new one is declined (the hold is closed).
    let third = auth.reserve(dialer_reserve("acct", 20, "call-3b")).await.unwrap().into_inner().reservation_id;
    let item = |id: &str, amount: i64| pb::CommitItem {
        item_id: id.into(),
        cost: Some(amount_cost(amount)),
        ..Default::default()
    };
    let batch = |items: Vec<pb::CommitItem>| pb::CommitBatchRequest { reservation_id: third.clone(), items };
    let taken = auth.commit_batch(batch(vec![item("a", 6)])).await.unwrap().into_inner();
    assert_eq!(taken.items[0].outcome(), pb::Outcome::Journaled);
    let closing = auth.commit(commit_request(&third, 4, true, "call-3b-f")).await.unwrap().into_inner();
    assert_eq!(closing.outcome(), pb::Outcome::Journaled);
    let mixed = auth.commit_batch(batch(vec![item("a", 6), item("b", 1)])).await.unwrap().into_inner();
    let outcomes: Vec<_> = mixed.items.iter().map(|item| item.outcome()).collect();
    assert_eq!(outcomes, [pb::Outcome::Journaled, pb::Outcome::ReservationClosed], "{mixed:?}");

    redis.restart();
    eventually("the outage holds settled", Duration::from_secs(30), async || outage.is_empty()).await;
    let totals = h.totals("acct").await;
    // The 30 once (Redis had it: the settlement's resend was answered from memory), the 75, and
    // the third hold's 6 + 4.
    assert_eq!((totals.spent, totals.held, totals.owed), (115, 0, 0), "{totals:?}");
    assert_conserved(&totals);
    // The Reserve admitted during the outage, sent again now that Redis answers: its first answer.
    let again = auth.reserve(dialer_reserve("acct", 40, "call-2")).await.unwrap().into_inner();
    assert_eq!(again.reservation_id, other, "not a second hold in Redis");

    // A second outage: the settled hold is not taken over again (its figures are gone).
    redis.kill();
    let closed = auth.extend(extend_request(&call, 5, "call-1-x2")).await.unwrap().into_inner();
    assert_eq!(closed.outcome(), pb::Outcome::ReservationClosed, "{closed:?}");
    // The window (10 minutes here) runs from this sidecar's first admission attempt of the
    // outage; a takeover does not restart it.
    let long = pb::ReserveRequest { ttl_ms: HOUR, ..dialer_reserve("acct", 10, "call-3") };
    let seen = auth.reserve(long).await.unwrap().into_inner().reservation_id;
    redis.restart();
    let fresh = auth.reserve(dialer_reserve("acct", 10, "call-4")).await.unwrap().into_inner();
    assert!(seq_of(&fresh.reservation_id) < OUTAGE_SEQ_MIN, "a Redis hold: {fresh:?}");
    let answered = auth.get_reservation(pb::GetReservationRequest { reservation_id: fresh.reservation_id.clone() });
    answered.await.unwrap();
    redis.kill();
    h.clock.advance(6 * MINUTE);
    let admitted = auth.reserve(dialer_reserve("acct", 10, "call-5")).await.unwrap().into_inner();
    assert_eq!(admitted.outcome(), pb::Outcome::Ok, "a new outage, a new window");
    let taken = auth.extend(extend_request(&fresh.reservation_id, 5, "call-4-x")).await.unwrap().into_inner();
    assert_eq!(taken.outcome(), pb::Outcome::Ok);
    h.clock.advance(11 * MINUTE);
    let late = auth.reserve(dialer_reserve("acct", 10, "call-6")).await.unwrap_err();
    assert!(late.message().contains("past fail_open_ms"), "{}", late.message());
    // `seen` was admitted 17 minutes ago: its Extends fail closed too.
    let stale = auth.extend(extend_request(&seen, 5, "call-3-x")).await.unwrap_err();
    assert!(stale.message().contains("more than fail_open_ms ago"), "{}", stale.message());
    // Once Redis answers again, a call served here goes on past the window (it never returns to
    // Redis; the allowance still bounds it).
    redis.restart();
    let balance = pb::GetBalanceRequest { account_id: "acct".into(), ..Default::default() };
    retried!(auth.get_balance(balance.clone()));
    let goes_on = auth.extend(extend_request(&seen, 5, "call-3-x")).await.unwrap().into_inner();
    assert_eq!((goes_on.outcome(), goes_on.held), (pb::Outcome::Ok, 15), "{goes_on:?}");
    h.stop().await;
}

/// The sidecar serves at most `journal_entries_max` outage holds: beyond, a Reserve fails closed
/// even with allowance left, and admits nothing; a hold settled frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_holds_are_bounded_in_number() {
    let mut redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let (journal, outage) = outage_bounded(&dir, 1_000, 2).await;
    let h = sidecar(&redis, journal, outage.clone(), None).await;
    h.account("acct", 1_000).await;
    let mut auth = h.auth.clone();
    redis.kill();
    let mut held = Vec::new();
    for request_id in ["call-1", "call-2"] {
        let answer = auth.reserve(dialer_reserve("acct", 1, request_id)).await.unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Ok, "{answer:?}");
        held.push(answer.reservation_id);
    }
    let third = auth.reserve(dialer_reserve("acct", 1, "call-3")).await.unwrap_err();
    assert_eq!(third.code(), Code::Unavailable);
    assert!(third.message().contains("2 holds are served during the outage already"), "{}", third.message());
    assert_eq!(outage.len(), 2);
    // A retry of an admitted Reserve is still answered: it admits nothing new.
    let again = auth.reserve(dialer_reserve("acct", 1, "call-1")).await.unwrap().into_inner();
    assert_eq!(again.reservation_id, held[0]);
    let released = pb::ReleaseRequest { reservation_id: held[0].clone(), request_id: "call-1-r".into() };
    assert_eq!(auth.release(released).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);
    redis.restart();
    eventually("the released hold settled", Duration::from_secs(30), async || outage.len() == 1).await;
    redis.kill();
    let fourth = auth.reserve(dialer_reserve("acct", 1, "call-4")).await.unwrap().into_inner();
    assert_eq!(fourth.outcome(), pb::Outcome::Ok, "a settled hold frees its place: {fourth:?}");
    redis.restart();
    h.stop().await;
}

/// The real binary, SIGKILLed while it serves outage holds: they were on disk before the
/// callers heard of them, so the next start settles them once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_holds_survive_a_sigkill_of_the_sidecar() {
    use crate::process::{Metrics, Sidecar, Workdir, set_plan};
    use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
    use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;

    let mut redis = durable_redis();
    let work = Workdir::new();
    let config = work.path().join("config.toml");
    std::fs::write(&config, "fail_open_categories = [\"dialer\"]\nfail_open_credits = 40\nredis_timeout_ms = 300\n")
        .unwrap();
    let redis_url = redis.url();
    let start = || {
        let mut command = work.command();
        command.arg("--config").arg(&config).args(["--redis-url", &redis_url]);
        Sidecar::spawn(command)
    };
    let mut sidecar = start();
    let serving = sidecar.serving().await;
    let channel = serving.channel().await;
    let (mut auth, mut admin) = (CreditAuthorizerClient::new(channel.clone()), CreditAdminClient::new(channel));
    set_plan(&mut admin, "acct", 1_000).await;
    let before = auth.reserve(dialer_reserve("acct", 10, "call-1")).await.unwrap().into_inner().reservation_id;

    redis.kill();
    let new = auth.reserve(dialer_reserve("acct", 20, "call-2")).await.unwrap().into_inner();
    assert_eq!(new.outcome(), pb::Outcome::Ok, "{new:?}");
    let extended = auth.extend(extend_request(&before, 10, "call-1-x")).await.unwrap().into_inner();
    assert_eq!((extended.outcome(), extended.held), (pb::Outcome::Ok, 20), "{extended:?}");
    for (hold, amount, request_id) in [(&new.reservation_id, 12, "call-2-c"), (&before, 18, "call-1-c")] {
        let answer = auth.commit(commit_request(hold, amount, true, request_id)).await.unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Journaled, "{answer:?}");
    }
    let metrics = Metrics::scrape(serving.metrics()).await;
    assert_eq!(metrics.value("credit_sidecar_fail_open_holds", &[]), 2.0);
    assert_eq!(metrics.value("credit_sidecar_fail_open_total", &[("result", "reserved")]), 1.0);
    assert_eq!(metrics.value("credit_sidecar_fail_open_total", &[("result", "taken_over")]), 1.0);
    sidecar.kill().await;

    redis.restart();
    let mut sidecar = start();
    let serving = sidecar.serving().await;
    let channel = serving.channel().await;
    sidecar.lines_until("outage holds settled").await;
    let mut auth = CreditAuthorizerClient::new(channel);
    let balance = auth
        .get_balance(pb::GetBalanceRequest { account_id: "acct".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let totals = balance.totals.unwrap();
    assert_eq!((totals.spent, totals.held, totals.owed, totals.available), (30, 0, 0, 970), "{totals:?}");
    let metrics = Metrics::scrape(serving.metrics()).await;
    assert_eq!(metrics.value("credit_sidecar_fail_open_holds", &[]), 0.0);
}

const WORKERS: usize = 6;
const ROUNDS: usize = 20;

/// Two replicas on one Redis, each with its own journal and allowance, under load (each round: a
/// dialer Reserve, an Extend, commits of 3 and 2 final), Redis SIGKILLed mid-run and restarted
/// on its AOF. Every step is retried with its request id while it fails UNAVAILABLE. Afterwards
/// every commit a caller was told happened (OK or JOURNALED) was charged exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_under_load_charge_every_acknowledged_commit_once_when_redis_is_killed() {
    let mut redis = durable_redis();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (first, second) = (outage(&dirs[0], 10_000).await, outage(&dirs[1], 10_000).await);
    let outages = [first.1.clone(), second.1.clone()];
    let journals = [first.0.clone(), second.0.clone()];
    let replicas = [
        Arc::new(sidecar(&redis, first.0, first.1, None).await),
        Arc::new(sidecar(&redis, second.0, second.1, None).await),
    ];
    replicas[0].account("hot", 100_000).await;
    let (done, admitted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let told = Arc::new(AtomicI64::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let h = replicas[worker % 2].clone();
            let (done, admitted, told) = (done.clone(), admitted.clone(), told.clone());
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let id = format!("w{worker}-r{round}");
                    let held = retried!(h.auth.clone().reserve(dialer_reserve("hot", 10, &format!("{id}-r"))));
                    assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
                    if seq_of(&held.reservation_id) >= OUTAGE_SEQ_MIN {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    let hold = held.reservation_id;
                    let extended = retried!(h.auth.clone().extend(extend_request(&hold, 5, &format!("{id}-x"))));
                    assert_eq!(extended.outcome(), pb::Outcome::Ok, "{extended:?}");
                    for (step, amount, final_commit) in [("a", 3, false), ("b", 2, true)] {
                        let request = commit_request(&hold, amount, final_commit, &format!("{id}-{step}"));
                        let answer = retried!(h.auth.clone().commit(request.clone()));
                        match answer.outcome() {
                            pb::Outcome::Ok => assert_eq!(answer.charged, amount),
                            pb::Outcome::Journaled => {}
                            other => panic!("commit {id}-{step}: {other:?} {answer:?}"),
                        }
                        told.fetch_add(amount, Ordering::Relaxed);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    eventually("a third of the rounds", Duration::from_secs(60), async || {
        done.load(Ordering::Relaxed) >= WORKERS * ROUNDS / 3
    })
    .await;
    redis.kill();
    // A dialer call on each replica while Redis is dead: admitted from the allowance for sure,
    // whatever the workers were doing at the kill.
    for (index, replica) in replicas.iter().enumerate() {
        let mut auth = replica.auth.clone();
        let held = auth.reserve(dialer_reserve("hot", 9, &format!("outage-{index}"))).await.unwrap().into_inner();
        assert!(seq_of(&held.reservation_id) >= OUTAGE_SEQ_MIN, "{held:?}");
        let answer = auth.commit(commit_request(&held.reservation_id, 4, true, &format!("outage-{index}-c"))).await;
        assert_eq!(answer.unwrap().into_inner().outcome(), pb::Outcome::Journaled);
        told.fetch_add(4, Ordering::Relaxed);
    }
    redis.restart();
    for task in tasks {
        task.await.unwrap();
    }
    eventually("every journal applied and outage hold settled", Duration::from_secs(60), async || {
        journals.iter().all(|journal| journal.is_empty()) && outages.iter().all(|outage| outage.is_empty())
    })
    .await;

    let totals = replicas[0].totals("hot").await;
    let rounds = (WORKERS * ROUNDS) as i64;
    assert_eq!(told.load(Ordering::Relaxed), rounds * 5 + 8);
    assert_eq!(totals.spent, rounds * 5 + 8, "an acknowledged commit lost or doubled: {totals:?}");
    assert_eq!(totals.owed, 0, "{totals:?}");
    assert_conserved(&totals);
    eprintln!(
        "fail-open under load: {} holds admitted during the outage, {rounds} rounds",
        admitted.load(Ordering::Relaxed)
    );
    for replica in replicas {
        Arc::into_inner(replica).expect("the workers are done").stop().await;
    }
}
