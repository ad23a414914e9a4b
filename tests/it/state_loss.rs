//! The Redis state-loss guard: a Redis that lost what the ledger holds (restarted empty, flushed)
//! is noticed, reported and refused — never served as if nothing happened — until its state is
//! restored from the ledger, by hand (`rebuild`) or by the opt-in automatic recovery.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::ledger::{AccountId, ManualClock, Rules};
use credit_sidecar::maintenance;
use credit_sidecar::server::{ServeOptions, serve};
use credit_sidecar::settle::store::Store;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::harness::{
    anchor, error_reason, eventually, health_watch, plan_request, redis_settings, reserve_request, t0, wait_for_health,
};
use crate::servers::RedisServer;
use crate::settle::{settle_setup, sqlite_store};

const RETENTION: i64 = 86_400_000;

/// A server on a guarded Redis engine, settling into `store`.
struct Guarded {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    engine: Arc<RedisEngine>,
}

impl Guarded {
    async fn start(redis: &RedisServer, store: &Store, recovery: bool) -> Self {
        let settings = redis_settings(vec![redis.url()], false);
        let mut engine = RedisEngine::connect_guarded(&settings, RETENTION, store.clone()).await.unwrap();
        engine.set_test_clock(Arc::new(ManualClock::new(t0())));
        let engine = Engine::redis(Rules::default(), engine);
        let options = ServeOptions {
            settle: Some(settle_setup(store, "a")),
            health_interval: Duration::from_millis(50),
            redis_state_recovery: recovery,
            ..ServeOptions::new(Duration::from_secs(3600))
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let redis_engine = engine.redis_engine().unwrap();
        tokio::spawn(serve(listener, engine, options, None, async {
            stopped.await.ok();
        }));
        Self { address, shutdown: Some(shutdown), engine: redis_engine }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address)).unwrap().connect().await.unwrap()
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
    }
}

/// What most tests here start from: a private Redis, a SQLite ledger, and a guarded sidecar on
/// them that has answered SERVING.
struct Scene {
    redis: RedisServer,
    store: Store,
    _dir: tempfile::TempDir,
    sidecar: Guarded,
    channel: Channel,
    health: tonic::Streaming<HealthCheckResponse>,
}

impl Scene {
    async fn serving(recovery: bool) -> Self {
        let redis = RedisServer::start();
        let (store, dir) = sqlite_store().await;
        let sidecar = Guarded::start(&redis, &store, recovery).await;
        let channel = sidecar.channel().await;
        let mut health = health_watch(&channel, "").await;
        wait_for_health(&mut health, ServingStatus::Serving).await;
        Self { redis, store, _dir: dir, sidecar, channel, health }
    }
}

/// The cause, once the guard noticed the loss (the health check after Redis answers again).
async fn noticed(engine: &RedisEngine) -> String {
    eventually("the guard notices the loss", Duration::from_secs(20), async || engine.state_lost().is_some()).await;
    engine.state_lost().expect("a loss, once noticed, stays until recovery")
}

/// Funds acme, opens a hold of 10 and waits until both are settled; returns acme's totals.
async fn fund_and_settle(channel: &Channel, store: &Store) -> pb::Totals {
    let mut admin = CreditAdminClient::new(channel.clone());
    admin.set_plan(plan_request("acme", 100, anchor(), "plan")).await.unwrap();
    fund_and_settle_hold(channel, store).await
}

/// Opens a hold of 10 on acme and waits until it is settled; returns acme's totals.
async fn fund_and_settle_hold(channel: &Channel, store: &Store) -> pb::Totals {
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    let reserved = auth.reserve(reserve_request("acme", 10, "r1")).await.unwrap().into_inner();
    assert_eq!(reserved.outcome(), pb::Outcome::Ok, "{reserved:?}");
    let acme = AccountId::parse("acme").unwrap();
    eventually("the hold settles", Duration::from_secs(20), async || {
        store.totals(&acme).await.unwrap().is_some_and(|totals| totals.held == 10)
    })
    .await;
    totals(channel).await
}

async fn totals(channel: &Channel) -> pb::Totals {
    let request = pb::GetBalanceRequest { account_id: "acme".into(), user_id: String::new() };
    CreditAuthorizerClient::new(channel.clone()).get_balance(request).await.unwrap().into_inner().totals.unwrap()
}

/// Every kind of call answers UNAVAILABLE naming the loss — none NOT_FOUND — and nothing is
/// created over the lost account.
async fn assert_refused(channel: &Channel, redis: &RedisServer) {
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    let mut admin = CreditAdminClient::new(channel.clone());
    let reserve = auth.reserve(reserve_request("acme", 10, "r2")).await.unwrap_err();
    let balance = pb::GetBalanceRequest { account_id: "acme".into(), user_id: String::new() };
    let read = auth.get_balance(balance).await.unwrap_err();
    let plan = admin.set_plan(plan_request("acme", 500, anchor(), "plan-again")).await.unwrap_err();
    for status in [&reserve, &read, &plan] {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("redis lost its state"), "{}", status.message());
        assert!(status.message().contains("rebuild"), "the remedy: {}", status.message());
        assert_eq!(error_reason(status), "STORE_STATE_LOST");
    }
    assert_eq!(redis.cli(&["--scan", "--pattern", "cs:*:a:acme"]), "", "an account created over the lost one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_is_refused_reported_and_restored_by_rebuild() {
    let Scene { mut redis, store, _dir, sidecar, channel, mut health } = Scene::serving(false).await;
    let before = fund_and_settle(&channel, &store).await;

    redis.restart(); // no persistence: it comes back empty
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    let cause = noticed(&sidecar.engine).await;
    assert!(cause.contains("cs:layout"), "{cause}");
    assert_refused(&channel, &redis).await;

    // The manual remedy: rebuild every account from the ledger.
    let settings = redis_settings(vec![redis.url()], false);
    let mut maintenance_engine = RedisEngine::connect_for_maintenance(&settings, RETENTION).await.unwrap();
    maintenance_engine.set_test_clock(Arc::new(ManualClock::new(t0())));
    assert_eq!(maintenance::rebuild(&store, &maintenance_engine, RETENTION, None).await.unwrap(), 1);
    wait_for_health(&mut health, ServingStatus::Serving).await;
    assert_eq!(totals(&channel).await, before, "acme as the ledger had it");
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    let again = auth.reserve(reserve_request("acme", 10, "r3")).await.unwrap().into_inner();
    assert_eq!((again.outcome(), again.available), (pb::Outcome::Ok, 80), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_starting_on_an_empty_redis_beside_a_settled_ledger_refuses_calls() {
    let first = RedisServer::start();
    let (store, _dir) = sqlite_store().await;
    {
        let sidecar = Guarded::start(&first, &store, false).await;
        fund_and_settle(&sidecar.channel().await, &store).await;
    }
    let empty = RedisServer::start(); // e.g. a new Redis after its volume was lost
    let sidecar = Guarded::start(&empty, &store, false).await;
    assert!(
        sidecar.engine.state_lost().is_some_and(|cause| cause.contains("ledger holds")),
        "{:?}",
        sidecar.engine.state_lost()
    );
    let channel = sidecar.channel().await;
    let mut health = health_watch(&channel, "").await;
    let seen = wait_for_health(&mut health, ServingStatus::NotServing).await;
    assert!(!seen.contains(&ServingStatus::Serving), "served before noticing: {seen:?}");
    assert_refused(&channel, &empty).await;
    assert_eq!(empty.cli(&["get", "cs:layout"]), "", "an empty Redis beside a ledger must not be initialised afresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_recovery_restores_a_redis_restarted_empty() {
    let Scene { mut redis, store, _dir, sidecar: _sidecar, channel, mut health } = Scene::serving(true).await;
    let before = fund_and_settle(&channel, &store).await;

    redis.restart();
    let seen = wait_for_health(&mut health, ServingStatus::NotServing).await;
    assert!(seen.contains(&ServingStatus::NotServing));
    wait_for_health(&mut health, ServingStatus::Serving).await;
    assert_eq!(totals(&channel).await, before, "acme as the ledger had it");
    assert_ne!(redis.cli(&["get", "cs:recovered"]), "", "the recovery is stamped");
    assert_eq!(redis.cli(&["get", "cs:recovery"]), "", "and its lock released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_the_ledger_knows_but_redis_lost_is_never_answered_not_found() {
    let Scene { redis, store, _dir, sidecar, channel, mut health } = Scene::serving(false).await;
    fund_and_settle(&channel, &store).await;
    // Redis keeps its layout marker but loses one account (a partial loss).
    let lose = "for _, key in ipairs(redis.call('KEYS', 'cs:*:acme*')) do redis.call('DEL', key) end return 1";
    assert_eq!(redis.cli(&["eval", lose, "0"]), "1");
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    // An account the ledger never saw is still simply not found.
    let unknown = auth.reserve(reserve_request("nobody", 10, "n1")).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(sidecar.engine.state_lost().is_none());
    assert_refused(&channel, &redis).await;
    assert!(noticed(&sidecar.engine).await.contains("account acme is in the ledger but not in Redis"));
    wait_for_health(&mut health, ServingStatus::NotServing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_went_back_in_time_is_refused_once_its_reused_sequences_settle() {
    let Scene { mut redis, store, _dir, sidecar, channel, mut health } = Scene::serving(false).await;
    let mut admin = CreditAdminClient::new(channel.clone());
    admin.set_plan(plan_request("acme", 100, anchor(), "plan")).await.unwrap();
    // Redis as a lagging replica would have it: before the hold below.
    assert_eq!(redis.cli(&["save"]), "OK");
    fund_and_settle_hold(&channel, &store).await;
    redis.restart(); // loads the older snapshot: the layout marker is there, the hold is not
    // The stale account takes a write, reusing the hold's sequence numbers; once settled, the
    // conflict gives the loss away.
    // (Retried with its request id while the engine reconnects, as any caller would.)
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    let stale = loop {
        match auth.reserve(reserve_request("acme", 5, "after-failover")).await {
            Ok(response) => break response.into_inner(),
            Err(status) if status.code() == Code::Unavailable && Instant::now() < deadline => {
                assert!(!status.message().contains("lost its state"), "noticed before the write: {status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => panic!("{status:?}"),
        }
    };
    assert_eq!(stale.outcome(), pb::Outcome::Ok, "{stale:?}");
    let cause = noticed(&sidecar.engine).await;
    assert!(cause.contains("reuse settled sequence numbers"), "{cause}");
    wait_for_health(&mut health, ServingStatus::NotServing).await;
    let refused = auth.reserve(reserve_request("acme", 5, "later")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(redis.cli(&["get", "cs:layout"]), "", "the marker is gone, so every replica notices");
    assert!(store.conflicts(&AccountId::parse("acme").unwrap()).await.unwrap() > 0);
    // Another replica starting now is refused the same way (not taken for an old layout).
    let another = Guarded::start(&redis, &store, false).await;
    assert!(
        another.engine.state_lost().is_some_and(|cause| cause.contains("no layout marker")),
        "{:?}",
        another.engine.state_lost()
    );
}

/// The automatic recovery's two ways of not restoring yet: while Redis's outbox holds events the
/// ledger lacks (restoring then would drop them), and while another replica holds the lock. Each
/// leaves Redis as it was, and the lock as it found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_recovery_waits_for_unsettled_events_and_for_another_replicas_lock() {
    use credit_sidecar::ledger::command::{Plan, SetPlan};
    use credit_sidecar::ledger::{Period, RequestId};
    use credit_sidecar::maintenance::Recovery;

    let redis = RedisServer::start();
    let (store, _dir) = sqlite_store().await;
    let settings = redis_settings(vec![redis.url()], false);
    let mut engine = RedisEngine::connect_guarded(&settings, RETENTION, store.clone()).await.unwrap();
    engine.set_test_clock(Arc::new(ManualClock::new(t0())));
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 100, addon_credits: 0 };
    let account = AccountId::parse("acme").unwrap();
    let set_plan = SetPlan { account: account.clone(), plan, request: RequestId::parse("plan").unwrap() };
    engine.set_plan(&set_plan).await.unwrap();
    let account_key = redis.cli(&["--scan", "--pattern", "cs:*:a:acme"]);
    assert_ne!(account_key, "");

    // Nothing settled yet: every outbox event is missing from the ledger.
    let unsettled = engine.outbox().await.unwrap();
    assert!(!unsettled.is_empty());
    let recovery = maintenance::recover(&store, &engine, RETENTION).await.unwrap();
    assert_eq!(recovery, Recovery::Unsettled(unsettled.len()));
    assert_eq!(redis.cli(&["get", "cs:recovery"]), "", "the lock is released");
    assert_eq!(redis.cli(&["get", "cs:recovered"]), "", "nothing was restored");

    // Settled, but another replica holds the lock: this one leaves it and Redis alone.
    store.write(&unsettled, t0()).await.unwrap();
    assert!(engine.lock_recovery("another-replica", 60_000).await.unwrap());
    let recovery = maintenance::recover(&store, &engine, RETENTION).await.unwrap();
    assert_eq!(recovery, Recovery::Elsewhere);
    assert_eq!(redis.cli(&["get", "cs:recovery"]), "another-replica", "the other replica's lock is kept");
    assert_eq!(redis.cli(&["get", "cs:recovered"]), "", "nothing was restored");

    // Once the lock is free, the recovery restores the account from the ledger and stamps it.
    engine.unlock_recovery("another-replica").await.unwrap();
    let recovery = maintenance::recover(&store, &engine, RETENTION).await.unwrap();
    assert_eq!(recovery, Recovery::Restored(1));
    assert_ne!(redis.cli(&["get", "cs:recovered"]), "", "the recovery is stamped");
    assert_eq!(redis.cli(&["get", "cs:recovery"]), "", "and its lock released");
    assert_eq!(redis.cli(&["--scan", "--pattern", "cs:*:a:acme"]), account_key);
}
