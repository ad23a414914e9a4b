//! The fault suite: the real binary killed with SIGKILL under load, on each engine, restarted on
//! the same stores, then audited against what its callers were told.
//!
//! 32 workers, each on its own connection, loop Reserve → final Commit with request ids of their
//! own (every fourth worker: Reserve → a CommitBatch of two items → Release). At SIGKILL every worker's call in flight fails; that call is *in doubt* (made or not, the
//! caller cannot know). After the restart:
//! - each in-doubt call is retried with its request id: a Reserve gets one hold (the first one if
//!   it was made), a Commit commits what it asked, a CommitBatch each of its items once;
//! - a sample of acknowledged calls is retried: each gets its first answer again, including a
//!   decline made before the kill that a fresh execution would now accept;
//! - more load runs, then a graceful stop settles everything.
//!
//! The audit reads the SQL ledger: every acknowledged Reserve is there with the request that got
//! its id (no id handed out twice), every acknowledged Commit exactly once with what it charged,
//! and replaying the events conserves credit. It prints the figures.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::engine::redis::outbox::RedisOutbox;
use credit_sidecar::ledger::event::EventKind;
use credit_sidecar::ledger::{AccountId, Ledger};
use credit_sidecar::settle::outbox::Outbox;
use credit_sidecar::settle::settler::{SettleOptions, Settler};
use credit_sidecar::settle::store::Store;
use tonic::transport::Channel;

use crate::harness::{redis_settings, reserve_request};
use crate::process::{Serving, Sidecar, Workdir, commit_request, now_ms, refused_by_the_stop, set_plan};
use crate::servers::RedisServer;

const WORKERS: usize = 32;
const ACCOUNT: &str = "crashco";
/// An account with little credit, for a decline that must survive the kill.
const TIGHT: &str = "tightco";
const HOLD: i64 = 10;
/// Pairs (Reserve + final Commit) done before the kill, and after the restart.
const PAIRS_BEFORE_KILL: u64 = 1_500;
const PAIRS_AFTER_RESTART: u64 = 300;
const RETENTION_MS: i64 = 86_400_000;

/// What one worker was told, and the call it could not learn the outcome of.
#[derive(Default)]
struct Told {
    /// (request id, reservation id) of every Reserve answered OK.
    reserves: Vec<(String, String)>,
    /// (request id, reservation id, charged) of every final Commit answered OK.
    commits: Vec<(String, String, i64)>,
    /// (item id, reservation id, charged) of every CommitBatch item answered OK.
    items: Vec<(String, String, i64)>,
    in_doubt: Option<InDoubt>,
}

#[derive(Clone, Debug)]
enum InDoubt {
    Reserve { request: String },
    Commit { request: String, reservation: String, amount: i64 },
    Batch { items: Vec<(String, i64)>, reservation: String },
    Release { request: String, reservation: String },
}

fn batch_request(reservation: &str, items: &[(String, i64)]) -> pb::CommitBatchRequest {
    let items = items
        .iter()
        .map(|(id, amount)| pb::CommitItem {
            item_id: id.clone(),
            cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(*amount)) }),
            ..Default::default()
        })
        .collect();
    pb::CommitBatchRequest { reservation_id: reservation.into(), items }
}

/// Whether a batch's answer charged each item what it asked.
fn charged_each(answer: &pb::CommitBatchResponse, items: &[(String, i64)]) -> bool {
    answer.items.len() == items.len()
        && answer
            .items
            .iter()
            .zip(items)
            .all(|(item, (id, amount))| (item.outcome(), &item.item_id, item.charged) == (pb::Outcome::Ok, id, *amount))
}

fn charge_for(worker: usize, n: u64) -> i64 {
    1 + (worker as i64 + n as i64) % HOLD
}

/// Reserve → final Commit until `stop` is set (then returns cleanly) or a call fails (then
/// returns the call in doubt; the failure must be the kill's, once `killed` is set).
async fn worker(
    worker: usize,
    phase: &'static str,
    channel: Channel,
    progress: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
) -> Result<Told, String> {
    let mut auth = CreditAuthorizerClient::new(channel);
    let mut told = Told::default();
    let failed = |told: Told, doubt: InDoubt, status: tonic::Status| -> Result<Told, String> {
        if !killed.load(Ordering::SeqCst) || !refused_by_the_stop(&status) {
            return Err(format!("worker {worker}: {doubt:?} failed other than by the kill: {status:?}"));
        }
        Ok(Told { in_doubt: Some(doubt), ..told })
    };
    for n in 1.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let request = format!("{phase}-w{worker}-{n}-r");
        let reserved = match auth.reserve(reserve_request(ACCOUNT, HOLD, request.clone())).await {
            Ok(response) => response.into_inner(),
            Err(status) => return failed(told, InDoubt::Reserve { request }, status),
        };
        if reserved.outcome() != pb::Outcome::Ok {
            return Err(format!("worker {worker}: Reserve answered {reserved:?}"));
        }
        told.reserves.push((request, reserved.reservation_id.clone()));
        let amount = charge_for(worker, n);
        let request = format!("{phase}-w{worker}-{n}-c");
        let reservation = reserved.reservation_id;
        if worker % 4 == 3 {
            // Two items (the first may be 0), then Release.
            let items = vec![(format!("{request}1"), amount / 2), (format!("{request}2"), amount - amount / 2)];
            let answer = match auth.commit_batch(batch_request(&reservation, &items)).await {
                Ok(response) => response.into_inner(),
                Err(status) => return failed(told, InDoubt::Batch { items, reservation }, status),
            };
            if !charged_each(&answer, &items) {
                return Err(format!("worker {worker}: CommitBatch of {items:?} answered {answer:?}"));
            }
            told.items.extend(items.into_iter().map(|(id, amount)| (id, reservation.clone(), amount)));
            let request = format!("{phase}-w{worker}-{n}-x");
            let release = pb::ReleaseRequest { reservation_id: reservation.clone(), request_id: request.clone() };
            if let Err(status) = auth.release(release).await {
                return failed(told, InDoubt::Release { request, reservation }, status);
            }
            progress.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let commit = commit_request(&reservation, amount, true, request.clone());
        let committed = match auth.commit(commit).await {
            Ok(response) => response.into_inner(),
            Err(status) => return failed(told, InDoubt::Commit { request, reservation, amount }, status),
        };
        if (committed.outcome(), committed.charged) != (pb::Outcome::Ok, amount) {
            return Err(format!("worker {worker}: final Commit of {amount} answered {committed:?}"));
        }
        told.commits.push((request, reservation, amount));
        progress.fetch_add(1, Ordering::SeqCst);
    }
    Ok(told)
}

/// Runs the workers until `pairs` pairs are done, then `end` (kill or stop) the load.
async fn load(serving: &Serving, phase: &'static str, pairs: u64, sidecar: &mut Sidecar, kill: bool) -> Vec<Told> {
    let progress = Arc::new(AtomicU64::new(0));
    let (stop, killed) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
    let mut workers = Vec::new();
    for index in 0..WORKERS {
        let channel = serving.channel().await;
        let (progress, stop, killed) = (progress.clone(), stop.clone(), killed.clone());
        workers.push(tokio::spawn(worker(index, phase, channel, progress, stop, killed)));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.load(Ordering::SeqCst) < pairs {
        assert!(
            Instant::now() < deadline,
            "only {} pairs in 60 s\n{}",
            progress.load(Ordering::SeqCst),
            sidecar.transcript()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if kill {
        killed.store(true, Ordering::SeqCst);
        sidecar.kill().await;
    } else {
        stop.store(true, Ordering::SeqCst);
    }
    let mut told = Vec::new();
    for worker in workers {
        told.push(worker.await.unwrap().unwrap_or_else(|failure| panic!("{failure}")));
    }
    told
}

fn start(work: &Workdir, redis: Option<&RedisServer>) -> Sidecar {
    let mut command = work.command();
    if let Some(redis) = redis {
        // A restarted process is a new consumer: take over the dead one's entries soon.
        command.args(["--redis-url", &redis.url(), "--settle-claim-idle-ms", "200"]);
    }
    Sidecar::spawn(command)
}

async fn reserve(
    auth: &mut CreditAuthorizerClient<Channel>,
    account: &str,
    amount: i64,
    request: &str,
) -> pb::ReserveResponse {
    auth.reserve(reserve_request(account, amount, request)).await.unwrap().into_inner()
}

async fn sigkill_under_load(redis: Option<&RedisServer>) {
    let work = Workdir::new();
    let mut sidecar = start(&work, redis);
    let serving = sidecar.serving().await;
    let channel = serving.channel().await;
    let mut admin = CreditAdminClient::new(channel.clone());
    let mut auth = CreditAuthorizerClient::new(channel);
    set_plan(&mut admin, ACCOUNT, 1_000_000_000).await;
    // A decline, then credit that a fresh execution of the same request would find enough.
    set_plan(&mut admin, TIGHT, 100).await;
    let declined = reserve(&mut auth, TIGHT, 500, "tight-decline").await;
    assert_eq!(declined.outcome(), pb::Outcome::InsufficientCredit, "{declined:?}");
    let grant = pb::GrantRequest {
        account_id: TIGHT.into(),
        kind: pb::LotKind::Adjustment.into(),
        amount: 1_000,
        expires_unix_ms: 0,
        request_id: "tight-grant".into(),
        create_account: false,
    };
    admin.grant(grant).await.unwrap();

    let before = load(&serving, "a", PAIRS_BEFORE_KILL, &mut sidecar, true).await;

    let mut sidecar = start(&work, redis);
    let serving = sidecar.serving().await;
    let mut auth = CreditAuthorizerClient::new(serving.channel().await);
    // The decline is remembered: the same request gets the same answer.
    let again = reserve(&mut auth, TIGHT, 500, "tight-decline").await;
    assert_eq!(again, declined, "a remembered decline after SIGKILL");
    // Acknowledged calls are remembered: a retry gets its first answer and opens nothing.
    let mut retried = 0;
    for told in &before {
        for (request, reservation) in told.reserves.iter().step_by(25) {
            let answer = reserve(&mut auth, ACCOUNT, HOLD, request).await;
            assert_eq!(
                (answer.outcome(), &answer.reservation_id),
                (pb::Outcome::Ok, reservation),
                "retry of {request}"
            );
            retried += 1;
        }
        for (request, reservation, amount) in told.commits.iter().step_by(25) {
            let answer =
                auth.commit(commit_request(reservation, *amount, true, request.clone())).await.unwrap().into_inner();
            assert_eq!((answer.outcome(), answer.charged), (pb::Outcome::Ok, *amount), "retry of {request}");
            retried += 1;
        }
        for (item, reservation, amount) in told.items.iter().step_by(25) {
            let items = [(item.clone(), *amount)];
            let answer = auth.commit_batch(batch_request(reservation, &items)).await.unwrap().into_inner();
            assert!(charged_each(&answer, &items), "retry of item {item}: {answer:?}");
            retried += 1;
        }
    }
    // Calls in doubt, retried with their request ids, settle one way.
    let mut resolved = Told::default();
    let mut in_doubt = 0;
    for told in &before {
        let Some(doubt) = &told.in_doubt else { continue };
        in_doubt += 1;
        match doubt {
            InDoubt::Reserve { request } => {
                let answer = reserve(&mut auth, ACCOUNT, HOLD, request).await;
                assert_eq!(answer.outcome(), pb::Outcome::Ok, "retry of {request} in doubt: {answer:?}");
                resolved.reserves.push((request.clone(), answer.reservation_id.clone()));
                let close = format!("{request}-close");
                let commit = commit_request(&answer.reservation_id, 1, true, close.clone());
                let closed = auth.commit(commit).await.unwrap().into_inner();
                assert_eq!(closed.outcome(), pb::Outcome::Ok, "{closed:?}");
                resolved.commits.push((close, answer.reservation_id, 1));
            }
            InDoubt::Commit { request, reservation, amount } => {
                let commit = commit_request(reservation, *amount, true, request.clone());
                let answer = auth.commit(commit).await.unwrap().into_inner();
                assert_eq!((answer.outcome(), answer.charged), (pb::Outcome::Ok, *amount), "retry of {request}");
                resolved.commits.push((request.clone(), reservation.clone(), *amount));
            }
            InDoubt::Batch { items, reservation } => {
                let answer = auth.commit_batch(batch_request(reservation, items)).await.unwrap().into_inner();
                assert!(charged_each(&answer, items), "retry of the batch {items:?} in doubt: {answer:?}");
                resolved.items.extend(items.iter().map(|(id, amount)| (id.clone(), reservation.clone(), *amount)));
            }
            InDoubt::Release { request, reservation } => {
                let release = pb::ReleaseRequest { reservation_id: reservation.clone(), request_id: request.clone() };
                let answer = auth.release(release).await.unwrap().into_inner();
                assert_eq!(answer.outcome(), pb::Outcome::Ok, "retry of {request} in doubt: {answer:?}");
            }
        }
    }
    let mut after = load(&serving, "b", PAIRS_AFTER_RESTART, &mut sidecar, false).await;
    sidecar.terminate();
    let status = sidecar.exit_status().await;
    assert_eq!(status.code(), Some(0), "graceful stop: {status}\n{}", sidecar.transcript());
    after.push(resolved);

    if let Some(redis) = redis {
        settle_what_the_dead_left(&work, redis).await;
    }
    let told: Vec<&Told> = before.iter().chain(&after).collect();
    let audit = audit(&work, &told).await;
    eprintln!(
        "SIGKILL under load ({} engine, {WORKERS} workers): {} Reserve and {} final Commit or CommitBatch \
         items acknowledged ({} before the kill), {in_doubt} calls in doubt at the kill, {retried} acknowledged calls retried after \
         the restart with their first answers; audit: {} acknowledged commits missing, {} doubled, {} Reserve \
         answers missing, {} reservation ids handed out twice, {} events settled",
        serving.engine,
        audit.reserves,
        audit.commits,
        before.iter().map(|told| told.commits.len() + told.items.len()).sum::<usize>(),
        audit.missing_commits,
        audit.doubled_commits,
        audit.missing_reserves,
        audit.reused_ids,
        audit.events,
    );
    assert_eq!(
        (audit.missing_commits, audit.doubled_commits, audit.missing_reserves, audit.reused_ids),
        (0, 0, 0, 0),
        "the audit (missing commits, doubled commits, missing reserves, reused ids)"
    );
}

/// Entries the killed process had read but not acknowledged wait in Redis until a replica claims
/// them (after `settle_claim_idle_ms`); the short second run may stop before its claim comes
/// round. They are not lost: the audit runs once settlement caught up, as `verify` would.
async fn settle_what_the_dead_left(work: &Workdir, redis: &RedisServer) {
    let settings = redis_settings(vec![redis.url()], false);
    let engine = RedisEngine::connect_for_maintenance(&settings, RETENTION_MS).await.unwrap();
    let outbox = Arc::new(RedisOutbox::join(Arc::new(engine), "audit".into(), Duration::from_millis(1)).await.unwrap());
    let store = Store::connect(&work.database_url()).await.unwrap();
    Settler::new(outbox.clone(), store, SettleOptions::default()).flush().await;
    assert_eq!(outbox.backlog().await.unwrap().events, 0, "settlement caught up before the audit");
}

#[derive(Debug, Default)]
struct Audit {
    reserves: usize,
    commits: usize,
    missing_reserves: usize,
    missing_commits: usize,
    doubled_commits: usize,
    reused_ids: usize,
    events: i64,
}

/// Compares the settled ledger with what the callers were told.
async fn audit(work: &Workdir, told: &[&Told]) -> Audit {
    let store = Store::connect(&work.database_url()).await.unwrap();
    let account = AccountId::parse(ACCOUNT).unwrap();
    let events = store.events(Some(&account)).await.unwrap();
    let mut opened_by: HashMap<u64, Option<String>> = HashMap::new();
    let mut commits: BTreeMap<u64, Vec<(Option<String>, i64)>> = BTreeMap::new();
    for event in &events {
        match &event.kind {
            EventKind::Reserved { reservation, .. } => {
                opened_by.insert(*reservation, event.request_id.clone());
            }
            EventKind::Committed { reservation, amount, .. } => {
                commits.entry(*reservation).or_default().push((event.request_id.clone(), *amount));
            }
            _ => {}
        }
    }
    let seq = |id: &str| id.rsplit_once('/').and_then(|(_, seq)| seq.parse::<u64>().ok()).expect("a reservation id");
    let mut audit = Audit::default();
    let mut holders: HashMap<&str, &str> = HashMap::new();
    for (request, reservation) in told.iter().flat_map(|told| &told.reserves) {
        audit.reserves += 1;
        if holders.insert(reservation, request).is_some_and(|other| other != request) {
            audit.reused_ids += 1;
        }
        if opened_by.get(&seq(reservation)) != Some(&Some(request.clone())) {
            audit.missing_reserves += 1;
        }
    }
    for (request, reservation, amount) in told.iter().flat_map(|told| told.commits.iter().chain(&told.items)) {
        audit.commits += 1;
        let found = commits.get(&seq(reservation)).map_or(0, |all| {
            all.iter().filter(|(by, charged)| by.as_deref() == Some(request) && charged == amount).count()
        });
        match found {
            0 => audit.missing_commits += 1,
            1 => {}
            _ => audit.doubled_commits += 1,
        }
    }
    let totals = store.totals(&account).await.unwrap().expect("the account is settled");
    assert_eq!(totals.events, totals.last_seq, "events lost or doubled: {totals:?}");
    assert_eq!(store.conflicts(&account).await.unwrap(), 0, "conflicting events");
    audit.events = totals.events;
    let mut replayed = Ledger::restore(RETENTION_MS, now_ms(), events).expect("the settled events replay");
    let view = replayed.balance(now_ms(), &account, None).unwrap().totals;
    assert_eq!(view.granted, view.available + view.held + view.spent + view.expired, "conservation: {view:?}");
    assert_eq!((view.spent, view.held), (totals.spent, totals.held), "replayed vs settled totals");
    audit
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_on_the_embedded_engine_loses_no_acknowledged_change() {
    sigkill_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_on_redis_loses_no_acknowledged_change() {
    let redis = RedisServer::start();
    sigkill_under_load(Some(&redis)).await;
}
