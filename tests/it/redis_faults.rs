//! Redis failing under the sidecar: killed and restarted, and its script cache flushed, while
//! many workers reserve and commit. Callers retry with the same request id, as real callers do.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use credit_sidecar::api::pb;
use credit_sidecar::ledger::{ManualClock, Rules};
use tonic::Code;

use crate::harness::*;
use crate::servers::RedisServer;

const WORKERS: usize = 8;
const ROUNDS: usize = 25;
/// Retries of one call while Redis is away, before the test gives up.
const ATTEMPTS_MAX: usize = 600;

/// Sends `call` until it gets an answer, retrying UNAVAILABLE; counts the retries.
async fn until_answered<T, F, Fut>(retries: &AtomicUsize, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..ATTEMPTS_MAX {
        match call().await {
            Ok(response) => return response.into_inner(),
            Err(status) if status.code() == Code::Unavailable => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("unexpected error: {status}"),
        }
    }
    panic!("no answer after {ATTEMPTS_MAX} attempts");
}

struct Workload {
    h: Arc<Harness>,
    /// Credits acknowledged as spent by commit answers.
    spent: Arc<AtomicI64>,
    done_rounds: Arc<AtomicUsize>,
    retries: Arc<AtomicUsize>,
}

impl Workload {
    fn new(h: Harness) -> Self {
        Self { h: Arc::new(h), spent: Arc::default(), done_rounds: Arc::default(), retries: Arc::default() }
    }

    /// Each worker: reserve 10, commit 3, then commit 2 final (returning 5); every call with its
    /// own request id, retried with the same id until answered.
    fn spawn(&self) -> Vec<tokio::task::JoinHandle<()>> {
        (0..WORKERS)
            .map(|worker| {
                let (h, spent, done, retries) =
                    (self.h.clone(), self.spent.clone(), self.done_rounds.clone(), self.retries.clone());
                tokio::spawn(async move {
                    for round in 0..ROUNDS {
                        let id = format!("w{worker}-r{round}");
                        let reserve = pb::ReserveRequest {
                            account_id: "hot".into(),
                            user_id: format!("u{worker}"),
                            category: "enrichment".into(),
                            cost: Some(amount_cost(10)),
                            ttl_ms: 10 * MINUTE,
                            request_id: format!("{id}-reserve"),
                            labels: HashMap::new(),
                            min_quantity: 0,
                        };
                        let held = until_answered(&retries, || {
                            let (mut auth, request) = (h.auth.clone(), reserve.clone());
                            async move { auth.reserve(request).await }
                        })
                        .await;
                        assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
                        for (step, amount, final_commit) in [("a", 3, false), ("b", 2, true)] {
                            let commit = pb::CommitRequest {
                                reservation_id: held.reservation_id.clone(),
                                cost: Some(amount_cost(amount)),
                                r#final: final_commit,
                                request_id: format!("{id}-commit-{step}"),
                                business_key: String::new(),
                                labels: HashMap::new(),
                            };
                            let answer = until_answered(&retries, || {
                                let (mut auth, request) = (h.auth.clone(), commit.clone());
                                async move { auth.commit(request).await }
                            })
                            .await;
                            assert_eq!(answer.outcome(), pb::Outcome::Ok, "{answer:?}");
                            spent.fetch_add(answer.charged, Ordering::Relaxed);
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect()
    }

    /// Waits (bounded) until at least `rounds` rounds are done.
    async fn wait_for_rounds(&self, rounds: usize) {
        eventually("the workload makes its rounds", Duration::from_secs(60), async || {
            self.done_rounds.load(Ordering::Relaxed) >= rounds
        })
        .await;
    }

    /// Every acknowledged commit is in Redis, nothing more, and nothing is left held.
    async fn assert_nothing_lost(&self) {
        let totals = self.h.totals("hot").await;
        let rounds = (WORKERS * ROUNDS) as i64;
        assert_eq!(self.spent.load(Ordering::Relaxed), rounds * 5);
        assert_eq!(totals.spent, rounds * 5, "acknowledged spend lost or doubled: {totals:?}");
        assert_eq!((totals.held, totals.available), (0, 100_000 - rounds * 5));
        assert_conserved(&totals);
    }
}

async fn workload_on(server: &RedisServer, timeout: Duration) -> Workload {
    let clock = ManualClock::new(t0());
    let mut settings = redis_settings(vec![server.url()], false);
    settings.timeout = timeout;
    let engine = redis_engine(&Rules::default(), &settings, &clock).await;
    let h = Harness::serve(clock, engine, None, Duration::from_secs(3600)).await;
    h.account("hot", 100_000).await;
    Workload::new(h)
}

/// redis-server with `appendfsync always` is SIGKILLed mid-run and restarted on the same data:
/// calls meanwhile answer UNAVAILABLE, the sidecar reconnects by itself, and every acknowledged
/// commit survives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_with_aof_always_loses_nothing_acknowledged() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let workload = workload_on(&server, Duration::from_millis(300)).await;
    let tasks = workload.spawn();
    workload.wait_for_rounds(WORKERS * ROUNDS / 3).await;

    server.kill();
    let started = Instant::now();
    let probe = workload
        .h
        .auth
        .clone()
        .get_balance(pb::GetBalanceRequest { account_id: "hot".into(), user_id: String::new() })
        .await;
    let refused_after = started.elapsed();
    assert_eq!(probe.unwrap_err().code(), Code::Unavailable, "Redis down must answer UNAVAILABLE");
    server.restart();

    for task in tasks {
        task.await.unwrap();
    }
    workload.assert_nothing_lost().await;
    eprintln!(
        "redis restart: UNAVAILABLE after {refused_after:?}; {} retries; {} rounds",
        workload.retries.load(Ordering::Relaxed),
        WORKERS * ROUNDS
    );
    assert!(workload.retries.load(Ordering::Relaxed) > 0, "the outage was not noticed: the test proved nothing");
}

/// `FUNCTION FLUSH` mid-run (what a Redis restarted without persistence looks like to the
/// library): the library is loaded again transparently and no call fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn function_flush_mid_run_fails_no_call() {
    let server = RedisServer::start();
    let workload = workload_on(&server, Duration::from_secs(2)).await;
    let tasks = workload.spawn();
    for fraction in 1..=3 {
        workload.wait_for_rounds(WORKERS * ROUNDS * fraction / 4).await;
        assert_eq!(server.cli(&["function", "flush"]), "OK");
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(workload.retries.load(Ordering::Relaxed), 0, "a call failed across FUNCTION FLUSH");
    // Calls went on after each flush, so each flush was followed by a load of the library.
    let stats = server.cli(&["info", "commandstats"]);
    let loads: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_function|load:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0);
    assert!(loads >= 4, "the library was loaded {loads} times across 3 flushes: {stats}");
    workload.assert_nothing_lost().await;
}

/// A library Redis lost is loaded again by the server's own health check, before any call needs
/// it: no caller pays for the load inside its deadline, and no call meets "Function not found".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_library_is_loaded_again_before_a_call_needs_it() {
    let server = RedisServer::start();
    let clock = ManualClock::new(t0());
    let engine = redis_engine(&Rules::default(), &redis_settings(vec![server.url()], false), &clock).await;
    let mut options = credit_sidecar::server::ServeOptions::new(Duration::from_secs(3600));
    options.health_interval = Duration::from_millis(50);
    let h = Harness::serve_settled(clock, engine, Some(server), options).await;
    h.account("acme", 100).await;
    let server = h.redis.as_ref().unwrap();
    let name = &credit_sidecar::engine::redis::library::LIBRARY.name;
    assert_eq!(server.cli(&["FUNCTION", "FLUSH"]), "OK");
    // No call is made meanwhile: only the server's checks can bring the library back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.cli(&["FUNCTION", "LIST"]).contains(name.as_str()) {
        assert!(Instant::now() < deadline, "the library was not loaded again without a call");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.hold("acme", "ann", 10).await;
    let stats = server.cli(&["INFO", "commandstats"]);
    let fcall = stats.lines().find(|line| line.starts_with("cmdstat_fcall:")).expect("FCALL was called");
    assert!(fcall.contains("failed_calls=0"), "a call met the lost library: {fcall}");
}

/// Two replicas sweep the same Redis at once while late commits race them at the deadline:
/// every hold closes exactly once and is refunded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sweeping_at_once_refund_each_hold_once() {
    use credit_sidecar::ledger::command::Commit;
    use credit_sidecar::ledger::{Decision, DeclineReason, Labels, RequestId};

    let server = RedisServer::start();
    let clock = ManualClock::new(t0());
    let settings = redis_settings(vec![server.url()], false);
    let rules = Rules::default();
    let replicas = [redis_engine(&rules, &settings, &clock).await, redis_engine(&rules, &settings, &clock).await];
    let h = Harness::serve(clock.clone(), replicas[0].clone(), None, Duration::from_secs(3600)).await;
    h.account("hot", 10_000).await;
    let mut holds = Vec::new();
    for _ in 0..200 {
        let id = h.reserve("hot", "ann", 7, MINUTE).await.reservation_id;
        h.commit(&id, 2, false).await;
        holds.push(credit_sidecar::ledger::ReservationId::parse(&id).unwrap());
    }
    clock.advance(MINUTE);
    let mut tasks = Vec::new();
    for replica in &replicas {
        let replica = replica.clone();
        tasks.push(tokio::spawn(async move { replica.sweep().await.unwrap() }));
    }
    for (index, id) in holds.iter().enumerate() {
        let replica = replicas[index % 2].clone();
        let commit = Commit {
            reservation: id.clone(),
            amount: 1,
            final_commit: true,
            request: RequestId::parse(&format!("late-{index}")).unwrap(),
            business_key: None,
            labels: Labels::default(),
        };
        tasks.push(tokio::spawn(async move {
            let answer = replica.commit(&commit).await.unwrap();
            let Decision::Declined(decline) = answer else { panic!("a commit after the deadline succeeded") };
            assert_eq!(decline.reason, DeclineReason::ReservationExpired);
            0
        }));
    }
    let mut expired = 0;
    for task in tasks {
        expired += task.await.unwrap();
    }
    assert!(expired <= holds.len(), "the sweeps expired {expired} of {} holds", holds.len());
    let totals = h.totals("hot").await;
    assert_eq!((totals.spent, totals.held), (400, 0));
    assert_eq!(totals.available, 10_000 - 400, "each hold's 5 uncommitted credits came back exactly once");
    assert_conserved(&totals);
}
