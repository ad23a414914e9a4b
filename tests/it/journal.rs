//! The outage journal (Redis engine): Commits that meet a dead Redis are journaled on disk and
//! applied, once each and in order, when Redis answers again — on one sidecar, on replicas that
//! each journal their own, under load with Redis killed mid-call, and across a SIGKILL of the
//! sidecar itself (the real binary).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use credit_sidecar::api::pb;
use credit_sidecar::journal::{Coverage, Journal, JournalConfig};
use credit_sidecar::ledger::{ManualClock, Rules};
use credit_sidecar::server::ServeOptions;
use tonic::Code;

use crate::harness::*;
use crate::servers::RedisServer;

/// A Redis that keeps what it acknowledged across a SIGKILL (the journal's premise: the holds
/// are still there when it comes back).
fn durable_redis() -> RedisServer {
    RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"])
}

async fn journal(dir: &tempfile::TempDir, coverage: Coverage, entries_max: usize) -> Arc<Journal> {
    let config = JournalConfig { path: dir.path().join("journal.db"), coverage, entries_max, fail_open: None };
    Arc::new(Journal::open(&config).await.unwrap())
}

fn dialer_only() -> Coverage {
    Coverage::Only(["dialer".to_owned()].into())
}

/// A sidecar on `redis` with `journal`, whose background loop tries it every `retry`.
async fn sidecar_retrying(redis: &RedisServer, journal: Arc<Journal>, retry: Duration) -> Harness {
    let clock = ManualClock::new(t0());
    let mut settings = redis_settings(vec![redis.url()], false);
    settings.timeout = Duration::from_millis(300);
    let engine = redis_engine(&Rules::default(), &settings, &clock).await;
    let mut options = ServeOptions::new(Duration::from_secs(3600));
    options.journal = Some(journal);
    options.journal_retry = retry;
    Harness::serve_settled(clock, engine, None, options).await
}

async fn sidecar(redis: &RedisServer, journal: Arc<Journal>) -> Harness {
    sidecar_retrying(redis, journal, Duration::from_millis(100)).await
}

/// Sends `request` as a caller does after an outage: again while the answer is JOURNALED or
/// UNAVAILABLE (Redis's connection may still be coming back), with the same request id.
async fn commit_until_applied(h: &Harness, request: pb::CommitRequest) -> pb::CommitResponse {
    for _ in 0..200 {
        match h.auth.clone().commit(request.clone()).await {
            Ok(answer) if answer.get_ref().outcome() != pb::Outcome::Journaled => return answer.into_inner(),
            Ok(_) => {}
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => panic!("{status}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{request:?} still not applied")
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

async fn dialer_hold(h: &Harness, account: &str, amount: i64) -> String {
    let held = h.reserve_cost(account, "agent", "dialer", amount_cost(amount), 10 * MINUTE).await;
    assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
    held.reservation_id
}

/// One sidecar: commits on a dialer hold are journaled while Redis is dead (a retry is not
/// written twice; a request id reused with other figures, a commit of another category, and
/// one beyond the journal's bound are refused as they say; the same request id on another
/// hold is another commit), then applied in order once Redis is back by the call that finds
/// them (the background loop is too slow to get there first); each retry gets the commit's real
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_meeting_a_dead_redis_are_journaled_and_applied_once_in_order() {
    let mut redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(&dir, dialer_only(), 4).await;
    let h = sidecar_retrying(&redis, journal.clone(), Duration::from_secs(3600)).await;
    h.account("acct", 1_000).await;
    let call = dialer_hold(&h, "acct", 100).await;
    let other_call = dialer_hold(&h, "acct", 20).await;
    let email = h.hold("acct", "agent", 50).await; // enrichment: not journaled
    let mut auth = h.auth.clone();
    let first = auth.commit(commit_request(&call, 10, false, "m1")).await.unwrap().into_inner();
    assert_eq!((first.outcome(), first.charged), (pb::Outcome::Ok, 10));

    redis.kill();
    for (request_id, amount, final_commit) in [("m2", 20, false), ("m3", 30, false), ("m4", 5, true)] {
        let answer = auth.commit(commit_request(&call, amount, final_commit, request_id)).await.unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Journaled, "{answer:?}");
        assert_eq!((answer.charged, answer.held, answer.reservation), (0, 0, None));
    }
    // The same commit again: the same answer, not a second entry.
    let again = auth.commit(commit_request(&call, 20, false, "m2")).await.unwrap().into_inner();
    assert_eq!(again.outcome(), pb::Outcome::Journaled);
    // Request ids are the reservation's: the same one on another hold is another commit.
    let elsewhere = auth.commit(commit_request(&other_call, 7, false, "m2")).await.unwrap().into_inner();
    assert_eq!(elsewhere.outcome(), pb::Outcome::Journaled);
    assert_eq!(journal.len(), 4);
    let reused = auth.commit(commit_request(&call, 21, false, "m2")).await.unwrap_err();
    assert_eq!((reused.code(), error_reason(&reused)), (Code::AlreadyExists, "REQUEST_ID_REUSED".into()));
    let full = auth.commit(commit_request(&call, 1, false, "m5")).await.unwrap_err();
    assert_eq!(full.code(), Code::Unavailable);
    assert!(full.message().contains("outage journal is full (4 commits"), "{}", full.message());
    let other = auth.commit(commit_request(&email, 5, false, "e1")).await.unwrap_err();
    assert_eq!(other.code(), Code::Unavailable);
    assert!(other.message().contains("store unavailable"), "{}", other.message());
    let unseen = auth.commit(commit_request("acct/999", 5, false, "u1")).await.unwrap_err();
    assert_eq!(unseen.code(), Code::Unavailable, "a reservation this sidecar never saw is not covered");
    let released =
        auth.release(pb::ReleaseRequest { reservation_id: call.clone(), request_id: "rel".into() }).await.unwrap_err();
    assert_eq!(released.code(), Code::Unavailable, "Release is not journaled");
    assert_eq!(journal.len(), 4);

    redis.restart();
    // The retry of m3 finds the journal holding its reservation's commits: they go first, in
    // order (m4 closes the hold), then m3's retry is answered from what Redis remembers.
    let m3 = commit_until_applied(&h, commit_request(&call, 30, false, "m3")).await;
    assert_eq!((m3.outcome(), m3.charged), (pb::Outcome::Ok, 30), "{m3:?}");
    assert_eq!(journal.len(), 1, "only the other hold's commit waits: nothing called on it yet");
    assert_eq!(h.reservation(&other_call).await.committed, 7, "applied by the call that found it");
    assert_eq!(journal.len(), 0);
    let view = h.reservation(&call).await;
    assert_eq!(view.state(), pb::ReservationState::Committed);
    assert_eq!((view.committed, view.returned, view.held), (65, 35, 0));
    let m4 = auth.commit(commit_request(&call, 5, true, "m4")).await.unwrap().into_inner();
    assert_eq!((m4.outcome(), m4.charged, m4.returned), (pb::Outcome::Ok, 5, 35));
    let totals = h.totals("acct").await;
    assert_eq!((totals.spent, totals.held), (72, 63), "each journaled commit charged once: {totals:?}");
    assert_conserved(&totals);
    h.stop().await;
}

/// A journaled commit that Redis declines when it is applied (it asks for more than the hold
/// holds: the sidecar cannot know while Redis is away) is dropped from the journal, counted, and
/// the caller's retry learns the decline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journaled_commit_declined_when_applied_answers_its_decline() {
    let mut redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(&dir, dialer_only(), 100).await;
    let h = sidecar(&redis, journal.clone()).await;
    h.account("acct", 1_000).await;
    let call = dialer_hold(&h, "acct", 100).await;
    let short = h.reserve_cost("acct", "agent", "dialer", amount_cost(50), MINUTE).await.reservation_id;

    redis.kill();
    let answer = h.auth.clone().commit(commit_request(&call, 140, false, "too-much")).await.unwrap().into_inner();
    assert_eq!(answer.outcome(), pb::Outcome::Journaled);
    let late = h.auth.clone().commit(commit_request(&short, 10, false, "late")).await.unwrap().into_inner();
    assert_eq!(late.outcome(), pb::Outcome::Journaled);
    // The outage outlasts the short hold's deadline.
    h.clock.advance(2 * MINUTE);
    redis.restart();
    // The background loop applies the entries: declined, and dropped.
    eventually("the journal is applied", Duration::from_secs(10), async || journal.is_empty()).await;
    let retry = h.auth.clone().commit(commit_request(&call, 140, false, "too-much")).await.unwrap().into_inner();
    assert_eq!((retry.outcome(), retry.held), (pb::Outcome::ExceedsHold, 100), "{retry:?}");
    let retry = h.auth.clone().commit(commit_request(&short, 10, false, "late")).await.unwrap().into_inner();
    assert_eq!(retry.outcome(), pb::Outcome::ReservationExpired, "{retry:?}");
    let totals = h.totals("acct").await;
    assert_eq!((totals.spent, totals.held, totals.available), (0, 100, 900));
    h.stop().await;
}

/// Redis hung (SIGSTOP), not dead: the commit waits `redis_timeout_ms`, is journaled, and is
/// applied when Redis resumes. An entry whose commit had reached Redis already (the crash
/// between applying and deleting, or a reply lost with the connection) charges once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_journals_and_an_entry_applied_twice_charges_once() {
    use credit_sidecar::ledger::command::Commit;
    use credit_sidecar::ledger::{Labels, RequestId, ReservationId};

    let redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(&dir, dialer_only(), 100).await;
    let h = sidecar(&redis, journal.clone()).await;
    h.account("acct", 1_000).await;
    let call = dialer_hold(&h, "acct", 100).await;

    redis.pause();
    let answer = h.auth.clone().commit(commit_request(&call, 15, false, "hung")).await.unwrap().into_inner();
    assert_eq!(answer.outcome(), pb::Outcome::Journaled);
    redis.resume();
    eventually("the journal is applied", Duration::from_secs(10), async || journal.is_empty()).await;
    assert_eq!(h.reservation(&call).await.committed, 15);

    let applied = h.auth.clone().commit(commit_request(&call, 5, false, "twice")).await.unwrap().into_inner();
    assert_eq!((applied.outcome(), applied.charged), (pb::Outcome::Ok, 5));
    let same = Commit {
        reservation: ReservationId::parse(&call).unwrap(),
        amount: 5,
        final_commit: false,
        request: RequestId::parse("twice").unwrap(),
        business_key: None,
        labels: Labels::default(),
    };
    journal.accept(&same).await.unwrap();
    let drained = journal.drain(&h.engine, None).await.unwrap();
    assert_eq!((drained.applied, drained.stopped), (1, None), "answered from what Redis remembers");
    let totals = h.totals("acct").await;
    assert_eq!((totals.spent, totals.held), (20, 80), "charged once: {totals:?}");
    h.stop().await;
}

const WORKERS: usize = 6;
const ROUNDS: usize = 30;

/// Two replicas, each with its own journal, under load (every worker: a dialer hold of 10,
/// commit 3, commit 2 final), Redis SIGKILLed mid-run and restarted on its AOF. Reserves
/// meanwhile fail and are retried; commits are journaled (and a final commit on a standing hold
/// per replica, made while Redis is dead, so the journal is used whatever the workers were doing
/// at the kill). Afterwards every commit a caller was told happened (OK or JOURNALED) is in Redis
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_under_load_lose_and_double_no_journaled_commit_when_redis_is_killed() {
    let mut redis = durable_redis();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let journals = [journal(&dirs[0], Coverage::All, 10_000).await, journal(&dirs[1], Coverage::All, 10_000).await];
    let replicas =
        [Arc::new(sidecar(&redis, journals[0].clone()).await), Arc::new(sidecar(&redis, journals[1].clone()).await)];
    replicas[0].account("hot", 100_000).await;
    let mut standing = Vec::new();
    for (index, replica) in replicas.iter().enumerate() {
        let reserve =
            pb::ReserveRequest { category: "dialer".into(), ..reserve_request("hot", 10, format!("standing-{index}")) };
        standing.push(replica.auth.clone().reserve(reserve).await.unwrap().into_inner().reservation_id);
    }
    let (done, journaled, retries) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let told = Arc::new(AtomicI64::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let h = replicas[worker % 2].clone();
            let (done, journaled, retries, told) = (done.clone(), journaled.clone(), retries.clone(), told.clone());
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    let id = format!("w{worker}-r{round}");
                    let reserve = pb::ReserveRequest {
                        category: "dialer".into(),
                        ..reserve_request("hot", 10, format!("{id}-reserve"))
                    };
                    let held = loop {
                        match h.auth.clone().reserve(reserve.clone()).await {
                            Ok(answer) => break answer.into_inner(),
                            Err(status) if status.code() == Code::Unavailable => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            Err(status) => panic!("reserve: {status}"),
                        }
                    };
                    assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
                    for (step, amount, final_commit) in [("a", 3, false), ("b", 2, true)] {
                        let request =
                            commit_request(&held.reservation_id, amount, final_commit, &format!("{id}-{step}"));
                        let answer = h.auth.clone().commit(request).await.unwrap_or_else(|status| panic!("{status}"));
                        match answer.get_ref().outcome() {
                            pb::Outcome::Ok => assert_eq!(answer.get_ref().charged, amount),
                            pb::Outcome::Journaled => {
                                journaled.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("commit {id}-{step}: {other:?}"),
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
    // Standing holds, one per replica, committed on while Redis is dead: journaled for sure,
    // whatever the workers were doing at the kill.
    for (replica, hold) in replicas.iter().zip(&standing) {
        let answer = replica.auth.clone().commit(commit_request(hold, 4, true, &format!("{hold}-c"))).await.unwrap();
        assert_eq!(answer.get_ref().outcome(), pb::Outcome::Journaled, "{answer:?}");
        told.fetch_add(4, Ordering::Relaxed);
    }
    redis.restart();
    for task in tasks {
        task.await.unwrap();
    }
    eventually("both journals applied", Duration::from_secs(30), async || journals.iter().all(|j| j.is_empty())).await;

    let totals = replicas[0].totals("hot").await;
    let rounds = (WORKERS * ROUNDS) as i64;
    assert_eq!(told.load(Ordering::Relaxed), rounds * 5 + 8);
    assert_eq!((totals.spent, totals.held), (rounds * 5 + 8, 0), "a journaled commit lost or doubled: {totals:?}");
    assert_conserved(&totals);
    eprintln!(
        "journal under load: {} commits journaled, {} reserve retries, {rounds} rounds",
        journaled.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed)
    );
    for replica in replicas {
        Arc::into_inner(replica).expect("the workers are done").stop().await;
    }
}

/// The real binary, SIGKILLed with commits in its journal while Redis is dead: the commits were
/// on disk before the callers heard JOURNALED, so the next start applies them once Redis is
/// back, and each retry gets its real answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journaled_commits_survive_a_sigkill_of_the_sidecar() {
    use crate::process::{Metrics, Sidecar, Workdir, set_plan};
    use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
    use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;

    let mut redis = durable_redis();
    let work = Workdir::new();
    let config = work.path().join("config.toml");
    std::fs::write(&config, "journal_categories = [\"dialer\"]\nredis_timeout_ms = 300\n").unwrap();
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
    let reserve = pb::ReserveRequest { category: "dialer".into(), ..reserve_request("acct", 100, "call-1") };
    let call = auth.reserve(reserve).await.unwrap().into_inner().reservation_id;

    redis.kill();
    for (request_id, amount, final_commit) in [("minute-1", 7, false), ("minute-2", 9, true)] {
        let answer = auth.commit(commit_request(&call, amount, final_commit, request_id)).await.unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Journaled, "{answer:?}");
    }
    let metrics = Metrics::scrape(serving.metrics()).await;
    assert_eq!(metrics.value("credit_sidecar_journal_entries", &[]), 2.0);
    assert_eq!(metrics.value("credit_sidecar_journal_commits_total", &[("result", "journaled")]), 2.0);
    assert_eq!(metrics.value("credit_sidecar_calls_total", &[("rpc", "Commit"), ("outcome", "journaled")]), 2.0);
    assert_eq!(metrics.get("credit_sidecar_declines_total", &[("rpc", "Commit")]), None, "JOURNALED is no decline");
    sidecar.kill().await;
    assert!(work.path().join("credit-sidecar-journal.db").exists(), "the journal's default file");

    redis.restart();
    let mut sidecar = start();
    let serving = sidecar.serving().await;
    let channel = serving.channel().await;
    let lines = sidecar.lines_until("outage journal applied").await;
    assert!(lines.iter().any(|line| line.contains("\"applied\":2")), "{}", sidecar.transcript());
    let metrics = Metrics::scrape(serving.metrics()).await;
    assert_eq!(metrics.value("credit_sidecar_journal_entries", &[]), 0.0);
    assert_eq!(metrics.value("credit_sidecar_journal_commits_total", &[("result", "applied")]), 2.0);
    let mut auth = CreditAuthorizerClient::new(channel);
    let view = auth
        .get_reservation(pb::GetReservationRequest { reservation_id: call.clone() })
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(view.state(), pb::ReservationState::Committed);
    assert_eq!((view.committed, view.returned), (16, 84), "{view:?}");
    let retry = auth.commit(commit_request(&call, 7, false, "minute-1")).await.unwrap().into_inner();
    assert_eq!((retry.outcome(), retry.charged), (pb::Outcome::Ok, 7), "answered from what Redis remembers");
}

/// A CommitBatch that meets a dead Redis is journaled whole (each item the Commit under its item
/// id that the batch applies) or not at all, and applied item by item later; the same batch sent
/// again gets each item's real answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_batch_is_journaled_whole_and_its_items_applied_once() {
    let mut redis = durable_redis();
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(&dir, Coverage::All, 3).await;
    let h = sidecar_retrying(&redis, journal.clone(), Duration::from_secs(3600)).await;
    h.account("acct", 1_000).await;
    let call = dialer_hold(&h, "acct", 100).await;
    let batch = |items: &[(&str, i64)]| pb::CommitBatchRequest {
        reservation_id: call.clone(),
        items: items
            .iter()
            .map(|(id, amount)| pb::CommitItem {
                item_id: (*id).into(),
                cost: Some(amount_cost(*amount)),
                business_key: String::new(),
                labels: HashMap::new(),
            })
            .collect(),
    };
    let mut auth = h.auth.clone();

    redis.kill();
    for _ in 0..2 {
        let answer = auth.commit_batch(batch(&[("row-1", 10), ("row-2", 20)])).await.unwrap().into_inner();
        let outcomes: Vec<_> = answer.items.iter().map(pb::CommitItemResult::outcome).collect();
        assert_eq!(outcomes, [pb::Outcome::Journaled, pb::Outcome::Journaled], "{answer:?}");
        assert_eq!((answer.charged, answer.reservation), (0, None));
    }
    assert_eq!(journal.len(), 2, "sent twice, journaled once");
    let full = auth.commit_batch(batch(&[("row-3", 1), ("row-4", 1)])).await.unwrap_err();
    assert_eq!(full.code(), Code::Unavailable);
    assert_eq!(journal.len(), 2, "a batch that does not fit is journaled not at all");
    let reused = auth.commit_batch(batch(&[("row-1", 11)])).await.unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert!(reused.message().contains("row-1"), "{}", reused.message());

    redis.restart();
    let again = batch(&[("row-1", 10), ("row-2", 20)]);
    let mut answer = None;
    for _ in 0..200 {
        match auth.commit_batch(again.clone()).await {
            Ok(got) if got.get_ref().items[0].outcome() != pb::Outcome::Journaled => {
                answer = Some(got.into_inner());
                break;
            }
            Ok(_) => {}
            Err(status) if status.code() == Code::Unavailable => {}
            Err(status) => panic!("{status}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = answer.expect("applied once Redis is back");
    let charged: Vec<_> = answer.items.iter().map(|item| (item.outcome(), item.charged)).collect();
    assert_eq!(charged, [(pb::Outcome::Ok, 10), (pb::Outcome::Ok, 20)]);
    assert_eq!(journal.len(), 0);
    assert_eq!(h.reservation(&call).await.committed, 30, "each item once");
    h.stop().await;
}
