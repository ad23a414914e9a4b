//! Settlement end to end: operations through gRPC, events through the outbox and the settler,
//! rows in SQL — exactly once, whatever stops, restarts or runs twice in between.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use credit_sidecar::api::pb;
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::MemoryOutbox;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::engine::redis::outbox::RedisOutbox;
use credit_sidecar::ledger::event::{EventKind, draws_total};
use credit_sidecar::ledger::{AccountId, Clock, Ledger, ManualClock, Rules};
use credit_sidecar::maintenance;
use credit_sidecar::server::{ServeOptions, SettleSetup, spawn_settler};
use credit_sidecar::settle::outbox::Outbox;
use credit_sidecar::settle::settler::{SettleOptions, Settler};
use credit_sidecar::settle::store::Store;
use tokio::sync::watch;

use crate::harness::*;
use crate::servers::RedisServer;

const RETENTION: i64 = 86_400_000;

/// A SQLite ledger in its own directory.
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("ledger.db").display());
    (Store::connect(&url).await.unwrap(), dir)
}

/// What the Redis settlement tests start from: a SQLite ledger, a manual clock at `t0` and the
/// settings of one private Redis.
pub struct RedisBeside {
    pub store: Store,
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub settings: credit_sidecar::engine::redis::RedisSettings,
}

pub async fn redis_beside(urls: Vec<String>, cluster: bool) -> RedisBeside {
    let (store, dir) = sqlite_store().await;
    RedisBeside { store, dir, clock: ManualClock::new(t0()), settings: redis_settings(urls, cluster) }
}

/// A private PostgreSQL ledger beside a private Redis, and a Redis engine on a test clock.
pub struct PostgresBeside {
    pub postgres: crate::servers::PostgresServer,
    pub store: Store,
    pub server: RedisServer,
    pub clock: ManualClock,
    pub settings: credit_sidecar::engine::redis::RedisSettings,
    pub engine: Engine,
}

pub async fn postgres_beside() -> PostgresBeside {
    let postgres = crate::servers::PostgresServer::start();
    let store = Store::connect(&postgres.url()).await.unwrap();
    let server = RedisServer::start();
    let clock = ManualClock::new(t0());
    let settings = redis_settings(vec![server.url()], false);
    let engine = redis_engine(&Rules::default(), &settings, &clock).await;
    PostgresBeside { postgres, store, server, clock, settings, engine }
}

/// A server on the Redis engine that settles nothing itself (the test runs its settlers).
pub async fn unsettled_server(clock: &ManualClock, settings: &credit_sidecar::engine::redis::RedisSettings) -> Harness {
    let engine = redis_engine(&Rules::default(), settings, clock).await;
    Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await
}

/// Settlement into `store` as replica `consumer`, with small batches and quick idle polls.
pub fn settle_setup(store: &Store, consumer: &str) -> SettleSetup {
    SettleSetup {
        store: store.clone(),
        options: SettleOptions { batch_max: 64, idle_interval: Duration::from_millis(5), ..SettleOptions::default() },
        consumer: consumer.into(),
        claim_idle: Duration::from_millis(200),
    }
}

pub fn settled_options(store: &Store, consumer: &str) -> ServeOptions {
    ServeOptions {
        settle: Some(settle_setup(store, consumer)),
        shutdown_grace: Duration::from_secs(20),
        ..ServeOptions::new(Duration::from_secs(3600))
    }
}

/// A day of traffic on two accounts: every kind of change, including expiries and a renewal.
/// Returns the reservation ids it made.
pub async fn workload(h: &Harness) -> Vec<String> {
    h.account("acme", 1_000).await;
    h.account("globex", 500).await;
    h.set_user_limit("acme", "ann", Some(300)).await;
    // A budget in force (the workload's holds stay within it), and one set then lifted.
    h.set_category_budget("acme", "enrichment", Some(100_000)).await;
    h.set_category_budget("acme", "ai", Some(5)).await;
    h.set_category_budget("acme", "ai", None).await;
    h.grant("acme", pb::LotKind::Promo, 50, t0() + HOUR).await;
    let mut ids = Vec::new();
    for round in 0..12 {
        let id = h.hold("acme", if round % 2 == 0 { "ann" } else { "bob" }, 40).await;
        let provider = HashMap::from([("provider".to_owned(), format!("p{}", round % 3))]);
        h.commit_with(&id, 5, false, &format!("contact:{}", round % 5), provider).await;
        match round % 4 {
            0 => {
                h.release(&id).await;
            }
            1 => {
                h.commit(&id, 10, true).await;
            }
            2 => {
                h.extend(&id, 5, 20 * MINUTE).await;
            }
            _ => {}
        }
        ids.push(id);
        ids.push(h.hold("globex", "cy", 7).await);
    }
    h.advance(2 * HOUR).await; // holds expire, the promo lot expires
    h.clock.set(ms(2026, 3, 31, 0)); // renewal
    h.advance(0).await;
    // Holds still open at the end.
    for user in ["ann", "bob"] {
        ids.push(h.reserve("acme", user, 20, DAY).await.reservation_id);
    }
    ids
}

/// A reservation as the engine holds it, or None once purged (retention past its close).
async fn held_reservation(h: &Harness, id: &str) -> Option<pb::Reservation> {
    let request = pb::GetReservationRequest { reservation_id: id.into() };
    match h.auth.clone().get_reservation(request).await {
        Ok(response) => response.into_inner().reservation,
        Err(status) if status.code() == tonic::Code::NotFound => None,
        Err(status) => panic!("{id}: {status}"),
    }
}

async fn account_view(h: &Harness, account: &str) -> pb::GetAccountResponse {
    h.admin.clone().get_account(pb::GetAccountRequest { account_id: account.into() }).await.unwrap().into_inner()
}

/// SQL's totals for an account equal the engine's; its events run 1..=last without gaps.
pub async fn assert_settled(store: &Store, h: &Harness, account: &str) {
    let totals = h.totals(account).await;
    let settled = store.totals(&AccountId::parse(account).unwrap()).await.unwrap().expect("account settled");
    assert_eq!(
        (settled.granted, settled.held, settled.spent, settled.expired, settled.available()),
        (totals.granted, totals.held, totals.spent, totals.expired, totals.available),
        "{account}: SQL totals differ from the engine's"
    );
    assert_eq!(settled.events, settled.last_seq, "{account}: events lost or doubled");
}

/// The embedded default: events settle into SQLite, and a restarted engine rebuilt from them
/// answers exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_events_settle_and_a_restart_restores_them() {
    let (store, _dir) = sqlite_store().await;
    let clock = ManualClock::new(t0());
    let outbox = Arc::new(MemoryOutbox::new(100_000));
    let engine =
        Engine::embedded_with(Rules::default(), Arc::new(clock.clone()), Ledger::new(RETENTION), Some(outbox.clone()));
    let h = Harness::serve_settled(clock.clone(), engine, None, settled_options(&store, "embedded")).await;
    let ids = workload(&h).await;
    let before = (account_view(&h, "acme").await, account_view(&h, "globex").await);
    let mut reservations = Vec::new();
    for id in &ids {
        reservations.push(held_reservation(&h, id).await);
    }
    assert!(reservations.iter().any(Option::is_some), "nothing left to compare");
    assert_settled_after_stop(h, &store, &outbox).await;

    let events = store.events(None).await.unwrap();
    let ledger = Ledger::restore(RETENTION, clock.now_ms(), events).unwrap();
    let engine = Engine::embedded_with(
        Rules::default(),
        Arc::new(clock.clone()),
        ledger,
        Some(Arc::new(MemoryOutbox::new(1_000))),
    );
    let h = Harness::serve_settled(clock, engine, None, settled_options(&store, "embedded")).await;
    assert_eq!((account_view(&h, "acme").await, account_view(&h, "globex").await), before);
    for (id, expected) in ids.iter().zip(reservations) {
        assert_eq!(held_reservation(&h, id).await, expected, "{id} after the restart");
    }

    // Usage, from SQL.
    let usage = |reservation_id: &str| pb::GetUsageRequest {
        account_id: "acme".into(),
        cycle_start_unix_ms: 0,
        reservation_id: reservation_id.into(),
    };
    let report = h.admin.clone().get_usage(usage(&ids[0])).await.unwrap().into_inner();
    let spent = before.0.totals.unwrap().spent;
    assert_eq!(report.spent, spent);
    assert_eq!(report.spent_by_category["enrichment"], spent);
    let budgets: Vec<(&str, i64)> = report.budget_by_category.iter().map(|(c, b)| (c.as_str(), *b)).collect();
    assert_eq!(budgets, [("enrichment", 100_000)], "the budget in force beside the spend (ai's was lifted)");
    assert_eq!(report.spent_by_user.values().sum::<i64>(), spent);
    assert!(report.spent_by_user["ann"] > 0 && report.spent_by_user["bob"] > 0, "{:?}", report.spent_by_user);
    assert_eq!(report.totals.iter().map(|row| row.commits).sum::<i64>(), 12 + 3, "12 keyed commits, 3 final ones");
    // The first reservation's one commit, with its provider and business key.
    assert_eq!(report.line_items.len(), 1);
    let item = &report.line_items[0];
    assert_eq!((item.amount, item.business_key.as_str(), item.labels["provider"].as_str()), (5, "contact:0", "p0"));
    let foreign = h.admin.clone().get_usage(usage(&ids[1])).await.unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::InvalidArgument, "{foreign}");
    assert_eq!(crate::harness::error_reason(&foreign), "INVALID_FIELD");
    // Every reservation ever made is listed from the ledger.
    let list =
        pb::ListReservationsRequest { account_id: "acme".into(), settled: true, page_size: 1000, ..Default::default() };
    let settled = h.admin.clone().list_reservations(list).await.unwrap().into_inner().reservations;
    assert_eq!(settled.len(), 14);
    assert_eq!(settled[0].reservation_id, ids[ids.len() - 1], "newest first");
}

/// A busy account is kept as a snapshot every `SNAPSHOT_INTERVAL_EVENTS` events, so a restart
/// replays only the events after its latest one — and finds the same account and the same
/// remembered answers as a restart from the whole history would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_account_restarts_from_its_snapshot_and_the_events_after_it() {
    use credit_sidecar::engine::SNAPSHOT_INTERVAL_EVENTS;
    use credit_sidecar::ledger::command::{Plan, Reserve, SetPlan};
    use credit_sidecar::ledger::{Labels, Period, RequestId, UserId};

    let (store, _dir) = sqlite_store().await;
    let clock = ManualClock::new(t0());
    let rules = Rules::default();
    let outbox = Arc::new(MemoryOutbox::new(100_000));
    let engine =
        Engine::embedded_with(rules.clone(), Arc::new(clock.clone()), Ledger::new(RETENTION), Some(outbox.clone()));
    let (stop, stopped) = watch::channel(());
    let options = SettleOptions { idle_interval: Duration::from_millis(5), ..SettleOptions::default() };
    let setup =
        SettleSetup { store: store.clone(), options, consumer: String::new(), claim_idle: Duration::from_secs(30) };
    let (settling, _stats) = spawn_settler(&engine, &setup, stopped, Duration::from_secs(30)).await.unwrap();
    let account = AccountId::parse("busy").unwrap();
    let plan = Plan { period: Period::Monthly, anchor_ms: t0(), plan_credits: 1_000_000, addon_credits: 0 };
    let request = RequestId::parse("plan").unwrap();
    engine.set_plan(&SetPlan { account: account.clone(), plan, request }).await.unwrap();
    // One event per Reserve; 64 in flight, as a busy caller would have.
    let reserves = SNAPSHOT_INTERVAL_EVENTS + 500;
    let reserve = |n: u64| Reserve {
        account: account.clone(),
        user: UserId::parse("ann").unwrap(),
        category: rules.category("enrichment").unwrap(),
        amount: 1,
        ttl_ms: 3_600_000,
        request: RequestId::parse(&format!("r{n}")).unwrap(),
        labels: Labels::default(),
        partial: None,
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..reserves {
        let (engine, command, permit) = (engine.clone(), reserve(n), permits.clone().acquire_owned().await.unwrap());
        calls.spawn(async move {
            let decision = engine.reserve(&command).await.unwrap();
            drop(permit);
            (n, decision.done().expect("credit for every hold").reservation)
        });
    }
    let mut opened = HashMap::new();
    while let Some(call) = calls.join_next().await {
        let (n, reservation) = call.unwrap();
        opened.insert(n, reservation);
    }
    let live = engine.account(&account).await.unwrap();
    drop(stop);
    assert!(settling.await.unwrap(), "the settler flushed");

    let kept = store.durable_state().await.unwrap();
    let snapshot = kept.snapshots.iter().find(|snapshot| snapshot.account == "busy").expect("a snapshot of busy");
    let tail = kept.events.iter().filter(|event| event.account == account).count() as u64;
    let last_seq = store.totals(&account).await.unwrap().unwrap().last_seq as u64;
    assert!(snapshot.last_event >= SNAPSHOT_INTERVAL_EVENTS, "snapshot at event {}", snapshot.last_event);
    assert_eq!(snapshot.last_event + tail, last_seq, "the events after the snapshot, and only those, are replayed");
    assert!(tail < SNAPSHOT_INTERVAL_EVENTS, "{tail} events to replay");
    assert_eq!(kept.answers.len() as u64, reserves + 1, "one remembered answer per request");

    let engine = Engine::restore_embedded(rules.clone(), Arc::new(clock.clone()), &store, 1_000).await.unwrap();
    let (stop, stopped) = watch::channel(());
    let (settling, _) = spawn_settler(&engine, &setup, stopped, Duration::from_secs(30)).await.unwrap();
    assert_eq!(engine.account(&account).await.unwrap(), live, "the account after the restart");
    // Every Reserve is remembered: a retry gets its hold, whether before or after the snapshot.
    for n in [0, reserves / 2, reserves - 1] {
        let again = engine.reserve(&reserve(n)).await.unwrap().done().unwrap().reservation;
        assert_eq!(again, opened[&n], "retry of r{n}");
    }
    assert_eq!(engine.account(&account).await.unwrap(), live, "retries changed nothing");
    drop(stop);
    assert!(settling.await.unwrap());
}

async fn assert_settled_after_stop(h: Harness, store: &Store, outbox: &MemoryOutbox) {
    let totals = (h.totals("acme").await, h.totals("globex").await);
    let check = Harness::serve(h.clock.clone(), h.engine.clone(), None, Duration::from_secs(3600)).await;
    h.stop().await; // the final flush
    assert!(outbox.is_empty(), "events left unsettled after shutdown");
    assert_settled(store, &check, "acme").await;
    assert_settled(store, &check, "globex").await;
    assert_eq!((check.totals("acme").await, check.totals("globex").await), totals);
}

/// Two replicas settle one Redis at once, during the traffic: every event lands exactly once
/// (the events each newly wrote add up to all of them), and both took part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_settling_at_once_write_each_event_once() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let rules = Rules::default();
    let (stop, stopped) = watch::channel(());
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let engine = redis_engine(&rules, &settings, &clock).await;
        let options = settle_setup(&store, name).options;
        let grace = Duration::from_secs(20);
        let claim = Duration::from_secs(30);
        replicas.push(
            spawn_settler(
                &engine,
                &SettleSetup { store: store.clone(), options, consumer: name.into(), claim_idle: claim },
                stopped.clone(),
                grace,
            )
            .await
            .unwrap(),
        );
    }
    let h =
        Harness::serve(clock.clone(), redis_engine(&rules, &settings, &clock).await, None, Duration::from_secs(3600))
            .await;
    workload(&h).await;
    drop((stop, stopped));
    let mut written = Vec::new();
    for (task, stats) in replicas {
        task.await.unwrap();
        written.push(stats.settled.load(Ordering::Relaxed));
    }
    assert_settled(&store, &h, "acme").await;
    assert_settled(&store, &h, "globex").await;
    assert_eq!(
        written.iter().sum::<u64>(),
        store.event_count().await.unwrap() as u64,
        "written per replica: {written:?}"
    );
    assert!(written.iter().all(|count| *count > 0), "a replica settled nothing: {written:?}");
    // Everything acknowledged was trimmed from the shards' streams.
    let left = server.cli(&[
        "eval",
        "local n = 0 for i = 0, 15 do n = n + redis.call('XLEN', 'cs:{s' .. i .. '}:events') end return n",
        "0",
    ]);
    assert_eq!(left, "0", "settled entries left in the streams");
    eprintln!(
        "two replicas: {} events settled, written per replica {written:?}; lost 0, doubled 0",
        written.iter().sum::<u64>()
    );
}

/// A replica reads a batch and dies before acknowledging it: another claims those events once
/// they have been idle long enough and settles them, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dying_mid_batch_leaves_its_events_to_another() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let rules = Rules::default();
    let h =
        Harness::serve(clock.clone(), redis_engine(&rules, &settings, &clock).await, None, Duration::from_secs(3600))
            .await;
    workload(&h).await;
    let retention = rules.request_id_retention_ms;
    let dying = RedisEngine::connect_with_test_clock(&settings, retention, Arc::new(clock.clone())).await.unwrap();
    let dead = RedisOutbox::join(Arc::new(dying), "dies".into(), Duration::from_millis(200)).await.unwrap();
    let (taken, _token) = dead.read(100).await.unwrap().expect("events to read");
    drop(dead); // dies holding them: never acknowledged

    let survivor = RedisEngine::connect_with_test_clock(&settings, retention, Arc::new(clock.clone())).await.unwrap();
    let outbox =
        Arc::new(RedisOutbox::join(Arc::new(survivor), "survives".into(), Duration::from_millis(200)).await.unwrap());
    let settler = Settler::new(outbox.clone(), store.clone(), SettleOptions::default());
    eventually("the dead replica's events are claimed and settled", Duration::from_secs(20), async || {
        settler.flush().await;
        outbox.backlog().await.unwrap().events == 0
    })
    .await;
    assert!(!taken.is_empty());
    assert_settled(&store, &h, "acme").await;
    assert_settled(&store, &h, "globex").await;
    let settled = store.event_count().await.unwrap();
    eprintln!(
        "dead replica: it held {} events; {settled} settled once by the survivor; lost 0, doubled 0",
        taken.events.len()
    );
}

/// Redis loses everything: `verify` sees it, `rebuild` restores every account from the ledger,
/// and `verify` then finds Redis and the ledger in agreement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_restores_a_flushed_redis_that_verify_then_finds_consistent() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let rules = Rules::default();
    let engine = redis_engine(&rules, &settings, &clock).await;
    let h = Harness::serve_settled(clock.clone(), engine, None, settled_options(&store, "a")).await;
    let ids = workload(&h).await;
    // Work admitted during an outage spent more than globex had: the overdraft (Redis's `owed`
    // field) is rebuilt from the ledger with the rest.
    let outage = credit_sidecar::ledger::command::Charge {
        account: AccountId::parse("globex").unwrap(),
        user: credit_sidecar::ledger::UserId::parse("cyd").unwrap(),
        category: rules.category("dialer").unwrap(),
        amount: 1_000_000,
        request: credit_sidecar::ledger::RequestId::parse("outage-1").unwrap(),
        business_key: None,
        labels: credit_sidecar::ledger::Labels::default(),
        overdraft: true,
    };
    let charged = h.engine.charge(&outage).await.unwrap().done().unwrap();
    assert!(charged.overdrawn > 0, "{charged:?}");
    let before = (account_view(&h, "acme").await, account_view(&h, "globex").await);
    assert_eq!(before.1.totals.as_ref().map(|totals| totals.owed), Some(charged.overdrawn));
    let check = Harness::serve(clock.clone(), h.engine.clone(), None, Duration::from_secs(3600)).await;
    h.stop().await;

    let redis = RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap();
    assert_eq!(maintenance::verify(&store, &redis, RETENTION, None).await.unwrap(), vec![]);
    assert_eq!(server.cli(&["flushall"]), "OK");
    let drift = maintenance::verify(&store, &redis, RETENTION, None).await.unwrap();
    assert_eq!(drift.len(), 2, "both accounts missing: {drift:?}");
    assert_eq!(maintenance::rebuild(&store, &redis, RETENTION, None).await.unwrap(), 2);
    assert_eq!(maintenance::verify(&store, &redis, RETENTION, None).await.unwrap(), vec![]);
    assert_eq!((account_view(&check, "acme").await, account_view(&check, "globex").await), before);
    // Open holds came back too: they can still be committed.
    let open: Vec<&String> = ids.iter().filter(|id| id.starts_with("acme/")).collect();
    let mut committed = 0;
    for id in open {
        if held_reservation(&check, id).await.is_some_and(|r| r.state() == pb::ReservationState::Held) {
            assert_eq!(check.commit(id, 1, true).await.outcome(), pb::Outcome::Ok);
            committed += 1;
        }
    }
    assert!(committed > 0, "the workload left no open hold to check");
}

/// PostgreSQL stops for a while under load, then comes back: calls never notice, events wait in
/// Redis, and once the database is back the backlog drains — nothing lost, nothing doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_loses_and_doubles_nothing() {
    let PostgresBeside { mut postgres, store, server: _server, clock, settings, engine } = postgres_beside().await;
    let (stop, stopped) = watch::channel(());
    let options = SettleOptions {
        batch_max: 64,
        idle_interval: Duration::from_millis(5),
        retry_max: Duration::from_millis(200),
        ..SettleOptions::default()
    };
    let claim = Duration::from_secs(30);
    let (settling, stats) = spawn_settler(
        &engine,
        &SettleSetup { store: store.clone(), options, consumer: "a".into(), claim_idle: claim },
        stopped,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let h = Arc::new(Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await);
    h.account("acme", 1_000_000).await;
    let traffic = |rounds: usize| {
        let h = h.clone();
        tokio::spawn(async move {
            for _ in 0..rounds {
                let id = h.hold("acme", "ann", 10).await;
                assert_eq!(h.commit(&id, 3, false).await.outcome(), pb::Outcome::Ok);
                assert_eq!(h.commit(&id, 2, true).await.outcome(), pb::Outcome::Ok);
            }
        })
    };
    traffic(50).await.unwrap();
    postgres.stop();
    let during = traffic(200);
    eventually("the settler notices the database is down", Duration::from_secs(20), async || {
        stats.failures.load(Ordering::Relaxed) > 0
    })
    .await;
    during.await.unwrap();
    let waiting = RedisOutbox::join(
        Arc::new(RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap()),
        "observer".into(),
        claim,
    )
    .await
    .unwrap()
    .backlog()
    .await
    .unwrap();
    assert!(waiting.events > 0, "nothing waited while the database was down");
    postgres.start_again();
    traffic(50).await.unwrap();
    drop(stop);
    settling.await.unwrap();
    assert_settled(&store, &h, "acme").await;
    let events = store.event_count().await.unwrap();
    let totals = store.totals(&AccountId::parse("acme").unwrap()).await.unwrap().unwrap();
    assert_eq!(totals.spent, 300 * 5, "every acknowledged commit settled once");
    eprintln!(
        "database outage: {events} events settled, {} waited in Redis during the outage, {} failed writes retried; \
         lost 0, doubled 0",
        waiting.events,
        stats.failures.load(Ordering::Relaxed)
    );
}

/// Stopped while PostgreSQL is down, with batches failing in every writer: the batches given up
/// are read again by the flush at shutdown (not left for another replica's claim), so once the
/// database is back within the grace period the outbox empties and the settler says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_given_up_at_shutdown_are_settled_by_the_flush() {
    let PostgresBeside { mut postgres, store, server: _server, clock, settings, engine } = postgres_beside().await;
    let (stop, stopped) = watch::channel(());
    let options = SettleOptions {
        batch_max: 16,
        writers: 4,
        idle_interval: Duration::from_millis(5),
        retry_max: Duration::from_millis(200),
        ..SettleOptions::default()
    };
    let setup =
        SettleSetup { store: store.clone(), options, consumer: "a".into(), claim_idle: Duration::from_secs(3600) };
    let (settling, stats) = spawn_settler(&engine, &setup, stopped, Duration::from_secs(60)).await.unwrap();
    let h = Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await;
    h.account("acme", 1_000_000).await;
    postgres.stop();
    for _ in 0..100 {
        let id = h.hold("acme", "ann", 10).await;
        assert_eq!(h.commit(&id, 3, true).await.outcome(), pb::Outcome::Ok);
    }
    eventually("every writer is failing", Duration::from_secs(20), async || {
        stats.writing_max.load(Ordering::Relaxed) >= 4 && stats.failures.load(Ordering::Relaxed) >= 4
    })
    .await;
    drop(stop);
    postgres.start_again();
    assert!(settling.await.unwrap(), "the flush said the outbox was not emptied");
    let observer = RedisOutbox::join(
        Arc::new(RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap()),
        "observer".into(),
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert_eq!(observer.backlog().await.unwrap().events, 0, "batches given up wait for a claim");
    assert_settled(&store, &h, "acme").await;
}

/// Batches written side by side: a backlog of many small batches, over one busy account and a
/// few others, settles into PostgreSQL with four writers. Every event lands once, the derived
/// tables match the engine, no transaction deadlocked (each batch locks its rows in key order;
/// a deadlock would show as a failed, retried write), and batches really were in flight together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_written_side_by_side_settle_everything_once() {
    let PostgresBeside { postgres: _postgres, store, server: _server, clock, settings, engine } =
        postgres_beside().await;
    let h = Arc::new(Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await);
    let accounts = ["busy", "acme", "globex", "initech"];
    for account in accounts {
        h.account(account, 1_000_000).await;
    }
    let mut traffic = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let h = h.clone();
        // Half the workers on the busy account: its totals row is in every batch.
        let account = if worker % 2 == 0 { "busy" } else { accounts[worker / 2 % 3 + 1] };
        traffic.spawn(async move {
            for _ in 0..40 {
                let id = h.hold(account, "ann", 10).await;
                assert_eq!(h.commit(&id, 3, false).await.outcome(), pb::Outcome::Ok);
                assert_eq!(h.commit(&id, 2, true).await.outcome(), pb::Outcome::Ok);
            }
        });
    }
    while let Some(done) = traffic.join_next().await {
        done.unwrap();
    }

    let outbox = Arc::new(
        RedisOutbox::join(
            Arc::new(
                RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap(),
            ),
            "a".into(),
            Duration::from_secs(30),
        )
        .await
        .unwrap(),
    );
    let backlog = outbox.backlog().await.unwrap().events;
    let options = SettleOptions {
        batch_max: 16,
        writers: 4,
        idle_interval: Duration::from_millis(5),
        ..SettleOptions::default()
    };
    let settler = Settler::new(outbox.clone(), store.clone(), options);
    let stats = settler.stats();
    let (stop, stopped) = watch::channel(());
    let settling = tokio::spawn(settler.run(stopped, Duration::from_secs(30)));
    eventually("the backlog settles", Duration::from_secs(60), async || {
        stats.acknowledged.load(Ordering::Relaxed) >= backlog
    })
    .await;
    drop(stop);
    assert!(settling.await.unwrap(), "the flush at the end emptied the outbox");

    assert_eq!(outbox.backlog().await.unwrap().events, 0);
    for account in accounts {
        assert_settled(&store, &h, account).await;
    }
    assert_eq!(store.event_count().await.unwrap(), backlog as i64, "every event settled once");
    assert_eq!(stats.settled.load(Ordering::Relaxed), backlog);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0, "a write failed (a deadlock?) and was retried");
    let most = stats.writing_max.load(Ordering::Relaxed);
    assert!(most > 1, "batches were written one at a time ({most} at most)");
    eprintln!("side by side: {backlog} events in batches of 16, up to {most} written at once, no retries");
}

/// The maintenance commands as an operator runs them: the real binary, configured by
/// environment; `verify` exits 1 on drift and 0 once `rebuild` has repaired it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_and_rebuild_commands_report_through_their_exit_codes() {
    let server = RedisServer::start();
    let (store, dir) = sqlite_store().await;
    let database_url = format!("sqlite://{}?mode=rwc", dir.path().join("ledger.db").display());
    // Real time: the commands use Redis TIME, not a test clock.
    let settings = redis_settings(vec![server.url()], false);
    let engine = Engine::redis(Rules::default(), RedisEngine::connect(&settings, RETENTION).await.unwrap());
    let h = Harness::serve_settled(ManualClock::new(t0()), engine, None, settled_options(&store, "a")).await;
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 10).await;
    h.commit(&id, 4, false).await;
    h.stop().await;
    let run = |command: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_credit-sidecar"))
            .args(command.split_whitespace())
            .env("REDIS_URL", server.url())
            .env("DATABASE_URL", &database_url)
            .env("CREDIT_SIDECAR_LOG_LEVEL", "debug")
            .output()
            .unwrap()
    };
    let clean = run("verify");
    assert!(clean.status.success(), "{}", String::from_utf8_lossy(&clean.stdout));
    // The report alone on stdout; the logs (at debug, there are some) on stderr.
    assert_eq!(String::from_utf8_lossy(&clean.stdout), "0 drift(s)\n");
    assert!(String::from_utf8_lossy(&clean.stderr).contains("DEBUG"), "the logs went to stderr");
    let clean = run("verify --json");
    assert_eq!(String::from_utf8_lossy(&clean.stdout), "{\"count\":0,\"drifts\":[]}\n");
    server.cli(&["flushall"]);
    let drifted = run("verify --json");
    assert_eq!(drifted.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&drifted.stdout).unwrap();
    assert!(report["count"].as_u64().is_some_and(|count| count > 0), "{report}");
    assert_eq!(report["drifts"][0]["account"], "acme", "{report}");
    let drifted = run("verify");
    assert_eq!(drifted.status.code(), Some(1));
    let report = String::from_utf8_lossy(&drifted.stdout).to_string();
    assert!(report.contains("acme: account: ledger") && report.contains("redis missing"), "{report}");
    let rebuilt = run("rebuild");
    assert!(rebuilt.status.success());
    assert_eq!(String::from_utf8_lossy(&rebuilt.stdout), "rebuilt 1 account(s) from the ledger\n");
    assert!(run("verify").status.success());
}

/// Redis loses acknowledged writes after they settled (here: a flush while serving) and then
/// reuses sequence numbers: the settler recreates its consumer group, and every reused identity
/// with other content is kept in `ledger_conflicts` — never silently dropped — and reported by
/// `verify`; `rebuild` then restores Redis from the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequences_reused_after_redis_data_loss_are_kept_and_reported() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let rules = Rules::default();
    let (stop, stopped) = watch::channel(());
    let engine = redis_engine(&rules, &settings, &clock).await;
    let options = settle_setup(&store, "a").options;
    let (settling, stats) = spawn_settler(
        &engine,
        &SettleSetup { store: store.clone(), options, consumer: "a".into(), claim_idle: Duration::from_secs(30) },
        stopped,
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let h = Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await;
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 10).await;
    h.commit(&id, 4, true).await;
    let acme = AccountId::parse("acme").unwrap();
    eventually("the first events settle", Duration::from_secs(20), async || {
        store.totals(&acme).await.unwrap().is_some_and(|totals| totals.spent == 4)
    })
    .await;
    assert_eq!(server.cli(&["flushall"]), "OK"); // Redis loses everything, consumer group included
    // A sidecar that knows no ledger (so no state-loss guard) starts on the empty Redis and
    // writes a new history: seqs 1, 2, 3 again, with other content.
    h.stop().await;
    let blind =
        Harness::serve(clock.clone(), redis_engine(&rules, &settings, &clock).await, None, Duration::from_secs(3600))
            .await;
    blind.clock.advance(MINUTE);
    blind.account("acme", 50).await;
    blind.hold("acme", "ann", 5).await;
    drop(stop);
    settling.await.unwrap();
    assert!(stats.settled.load(Ordering::Relaxed) > 0);
    assert_eq!(store.totals(&acme).await.unwrap().unwrap().spent, 4, "the settled history is intact");
    let conflicts = store.conflicts(&acme).await.unwrap();
    assert!(conflicts >= 3, "reused identities must be kept, not dropped: {conflicts}");
    let redis = RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap();
    let drift = maintenance::verify(&store, &redis, RETENTION, Some(&acme)).await.unwrap();
    assert!(drift.iter().any(|line| line.what.contains("ledger_conflicts")), "{drift:?}");
}

/// An outbox entry that cannot be decoded does not wedge settlement: it goes to the shard's
/// dead-letter stream, and the events around it settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_entry_goes_to_the_dead_letter_stream() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let h = unsettled_server(&clock, &settings).await;
    h.account("acme", 100).await;
    let shard_of_acme = server.cli(&["--scan", "--pattern", "cs:*:a:acme"]);
    let tag = &shard_of_acme[shard_of_acme.find('{').unwrap()..=shard_of_acme.find('}').unwrap()];
    let stream = format!("cs:{tag}:events");
    server.cli(&[
        "xadd", &stream, "*", "account", "acme", "seq", "99", "at", "1", "request", "", "kind", "mystery", "data", "{}",
    ]);
    h.hold("acme", "ann", 5).await;
    let engine = RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap();
    let outbox = Arc::new(RedisOutbox::join(Arc::new(engine), "a".into(), Duration::from_secs(30)).await.unwrap());
    Settler::new(outbox.clone(), store.clone(), SettleOptions::default()).flush().await;
    assert_eq!(outbox.backlog().await.unwrap().events, 0, "settlement went past the bad entry");
    assert_eq!(server.cli(&["xlen", &format!("{stream}:dead")]), "1");
    assert_settled(&store, &h, "acme").await;
}

/// The embedded engine's remembered answers leave SQL once no restart needs them: account-scoped
/// ones past their keep-until instant, reservation-scoped ones once their reservation closed
/// before the cutoff; the rest stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_answers_past_retention_are_forgotten_in_sql() {
    use credit_sidecar::ledger::command::{Commit, Plan, Reserve, SetPlan};
    use credit_sidecar::ledger::{Labels, Period, RequestId, ReservationId, UserId};
    use credit_sidecar::settle::outbox::Records;

    let (store, _dir) = sqlite_store().await;
    let rules = Rules::default();
    let mut ledger = Ledger::new(RETENTION).journal_answers();
    let account = AccountId::parse("acme").unwrap();
    let now = t0();
    let plan = Plan { period: Period::Monthly, anchor_ms: now, plan_credits: 1_000, addon_credits: 0 };
    let request = |id: &str| RequestId::parse(id).unwrap();
    ledger.set_plan(now, &SetPlan { account: account.clone(), plan, request: request("plan") }).unwrap();
    let reserve = |id: &str| Reserve {
        account: account.clone(),
        user: UserId::parse("ann").unwrap(),
        category: rules.category("enrichment").unwrap(),
        amount: 10,
        ttl_ms: 60_000,
        request: request(id),
        labels: Labels::default(),
        partial: None,
    };
    let closed = ledger.reserve(now, &reserve("r-closed")).unwrap().done().unwrap().reservation;
    let open = ledger.reserve(now, &reserve("r-open")).unwrap().done().unwrap().reservation;
    let commit = |id: &ReservationId, request_id: &str, final_commit: bool| Commit {
        reservation: id.clone(),
        amount: 1,
        final_commit,
        request: request(request_id),
        business_key: None,
        labels: Labels::default(),
    };
    ledger.commit(now, &commit(&closed, "c-closed", true)).unwrap();
    ledger.commit(now, &commit(&open, "c-open", false)).unwrap();
    let records = Records { events: ledger.drain_events(), answers: ledger.drain_answers(), snapshots: Vec::new() };
    store.settle(&records, now).await.unwrap();
    assert_eq!(store.durable_state().await.unwrap().answers.len(), 5);

    // Nothing is past its keep-until yet, and no reservation closed before the cutoff.
    assert_eq!(store.forget_answers(now, now - RETENTION).await.unwrap(), 0);
    // Later: every account-scoped answer is past its keep-until (call or deadline + retention),
    // and the closed reservation's answers are past its close + retention; the open one's stay.
    let later = now + 60_000 + RETENTION + 1;
    assert_eq!(store.forget_answers(later, later - RETENTION).await.unwrap(), 4);
    let left = store.durable_state().await.unwrap().answers;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].request.as_str(), left[0].reservation), ("c-open", Some(open.seq)));
}

/// GetAccountHistory pages through the settled ledger newest first: the pages together are
/// every event of the account, in order, each entry carrying the event's figures; bad page
/// arguments are refused by field, an unknown account is NOT_FOUND. On both engines (the
/// history is the ledger's, whichever engine wrote it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_history_pages_through_every_settled_change() {
    // Embedded: the engine settles through its outbox; a stop flushes it.
    let (store, _dir) = sqlite_store().await;
    let clock = ManualClock::new(t0());
    let outbox = Arc::new(MemoryOutbox::new(100_000));
    let engine =
        Engine::embedded_with(Rules::default(), Arc::new(clock.clone()), Ledger::new(RETENTION), Some(outbox.clone()));
    let h = Harness::serve_settled(clock.clone(), engine, None, settled_options(&store, "embedded")).await;
    workload(&h).await;
    h.stop().await;
    let reader = history_reader(&store).await;
    check_history(&reader, &store, "acme").await;
    reader.stop().await;

    // Redis: the settler drains Redis's outbox into the ledger.
    let server = RedisServer::start();
    let beside = redis_beside(vec![server.url()], false).await;
    let engine = redis_engine(&Rules::default(), &beside.settings, &beside.clock).await;
    let h = Harness::serve_settled(beside.clock.clone(), engine, None, settled_options(&beside.store, "a")).await;
    workload(&h).await;
    // The stop's final flush settles what the settler had not yet.
    h.stop().await;
    let reader = history_reader(&beside.store).await;
    check_history(&reader, &beside.store, "globex").await;
    reader.stop().await;
}

/// A server over `store` (its admin API reads history from the ledger; its own engine is empty).
async fn history_reader(store: &Store) -> Harness {
    let clock = ManualClock::new(t0());
    let outbox = Some(Arc::new(MemoryOutbox::new(1_000)));
    let engine = Engine::embedded_with(Rules::default(), Arc::new(clock.clone()), Ledger::new(RETENTION), outbox);
    Harness::serve_settled(clock, engine, None, settled_options(store, "reader")).await
}

fn history_request(account: &str, page_size: u32, page_token: &str) -> pb::GetAccountHistoryRequest {
    pb::GetAccountHistoryRequest { account_id: account.into(), page_size, page_token: page_token.into() }
}

/// Pages of 3 through `account`'s history against the ledger's events, then the refusals.
async fn check_history(h: &Harness, store: &Store, account: &str) {
    use pb::history_entry::Change;
    let events = store.events(Some(&AccountId::parse(account).unwrap())).await.unwrap();
    assert!(events.len() > 6, "a workload worth paging: {} events", events.len());
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let page = h.admin.clone().get_account_history(history_request(account, 3, &token)).await.unwrap().into_inner();
        assert!(page.entries.len() <= 3);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(entries.len(), events.len(), "every event, once");
    for (entry, event) in entries.iter().zip(events.iter().rev()) {
        assert_eq!((entry.seq, entry.at_unix_ms), (event.seq, event.at_ms), "newest first: {entry:?}");
        assert_eq!(entry.request_id, event.request_id.clone().unwrap_or_default());
        let change = entry.change.as_ref().unwrap_or_else(|| panic!("an entry without its change: {entry:?}"));
        match (&event.kind, change) {
            (EventKind::Reserved { reservation, amount, draws, .. }, Change::Reserved(hold)) => {
                assert_eq!(hold.reservation_id, format!("{account}/{reservation}"));
                assert_eq!(hold.amount, *amount);
                assert_eq!(hold.lots.iter().map(|lot| lot.amount).sum::<i64>(), draws_total(draws));
            }
            (EventKind::Committed { amount, business_key, .. }, Change::Committed(commit)) => {
                assert_eq!(commit.amount, *amount);
                assert_eq!(commit.business_key, business_key.clone().unwrap_or_default());
            }
            (EventKind::Closed { returned, expired, .. }, Change::Closed(closed)) => {
                assert_eq!(closed.returned.iter().map(|lot| lot.amount).sum::<i64>(), draws_total(returned));
                assert_eq!(closed.expired, *expired);
            }
            (EventKind::LotGranted { lot, amount, .. }, Change::LotGranted(granted)) => {
                assert_eq!((granted.lot_id, granted.amount), (*lot, *amount));
            }
            (EventKind::LotExpired { lot, amount }, Change::LotExpired(gone)) => {
                assert_eq!((gone.lot_id, gone.amount), (*lot, *amount));
            }
            (EventKind::PlanSet { .. }, Change::PlanSet(_))
            | (EventKind::CycleStarted { .. }, Change::CycleStarted(_))
            | (EventKind::UserLimitSet { .. }, Change::UserLimitSet(_))
            | (EventKind::CategoryBudgetSet { .. }, Change::CategoryBudgetSet(_))
            | (EventKind::Extended { .. }, Change::Extended(_)) => {}
            (kind, change) => panic!("event {kind:?} became {change:?}"),
        }
    }
    let kinds: std::collections::HashSet<_> = events.iter().map(|event| std::mem::discriminant(&event.kind)).collect();
    assert!(kinds.len() >= 6, "the workload covers most of the 9 kinds: {}", kinds.len());

    let mut admin = h.admin.clone();
    let bad_token = admin.get_account_history(history_request(account, 3, "not-a-token")).await.unwrap_err();
    assert_eq!(crate::harness::error_reason(&bad_token), "INVALID_FIELD");
    assert!(bad_token.message().starts_with("page_token: "), "{bad_token:?}");
    let too_big = admin.get_account_history(history_request(account, 5_000, "")).await.unwrap_err();
    assert!(too_big.message().starts_with("page_size: "), "{too_big:?}");
    let unknown = admin.get_account_history(history_request("nobody", 3, "")).await.unwrap_err();
    assert_eq!(crate::harness::error_reason(&unknown), "ACCOUNT_NOT_FOUND");
}
