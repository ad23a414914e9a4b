//! Settlement through real faults: a Redis that stops answering mid-read, a database that is
//! down, a Redis that reloads its append-only file, and a Redis Cluster. Each test asserts on
//! what settled and what the figures say, never on timings: waits that must not happen use a
//! `claim_idle` far longer than the test's deadlines.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::engine::redis::outbox::RedisOutbox;
use credit_sidecar::ledger::{ManualClock, Rules};
use credit_sidecar::server::{SettleSetup, spawn_settler};
use credit_sidecar::settle::outbox::Outbox;
use credit_sidecar::settle::settler::{SettleOptions, SettleStats, Settler};
use credit_sidecar::settle::store::Store;
use tokio::sync::watch;

use crate::harness::*;
use crate::servers::{PostgresServer, RedisCluster, RedisServer};
use crate::settle::{
    PostgresBeside, RedisBeside, assert_settled, postgres_beside, redis_beside, unsettled_server, workload,
};

/// Longer than any deadline below: an event that waited for another replica's claim would time
/// the test out instead of settling.
const CLAIM_IDLE_NEVER: Duration = Duration::from_secs(60);

/// How long a test polls for a condition before failing.
const DEADLINE: Duration = Duration::from_secs(20);

const RETENTION: i64 = 86_400_000;

/// A settler (consumer "a") on `engine`'s outbox with quick batches and retries, stopped by
/// `stopped`.
async fn settle_quickly(
    engine: &Engine,
    store: &Store,
    stopped: watch::Receiver<()>,
) -> (tokio::task::JoinHandle<bool>, Arc<SettleStats>) {
    let setup = SettleSetup {
        store: store.clone(),
        options: quick_options(),
        consumer: "a".into(),
        claim_idle: CLAIM_IDLE_NEVER,
    };
    spawn_settler(engine, &setup, stopped, DEADLINE).await.unwrap()
}

fn quick_options() -> SettleOptions {
    SettleOptions {
        batch_max: 64,
        writers: 4,
        idle_interval: Duration::from_millis(5),
        retry_max: Duration::from_millis(100),
        measure_interval: Duration::from_millis(20),
    }
}

async fn outbox_on(settings: &credit_sidecar::engine::redis::RedisSettings, consumer: &str) -> Arc<RedisOutbox> {
    let engine = RedisEngine::connect(settings, RETENTION).await.unwrap();
    Arc::new(RedisOutbox::join(Arc::new(engine), consumer.into(), CLAIM_IDLE_NEVER).await.unwrap())
}

/// Entries read by some consumer and not yet acknowledged, over all 16 shards.
fn pending(server: &RedisServer) -> u64 {
    let script = "local n = 0 for i = 0, 15 do \
                  n = n + redis.call('XPENDING', 'cs:{s' .. i .. '}:events', 'settlers')[1] end return n";
    server.cli(&["eval", script, "0"]).parse().unwrap_or(0)
}

/// Redis stops answering while the settler reads: the read fails (timeout) after Redis has been
/// sent — and, once it resumes, has executed — the XREADGROUPs that deliver the entries to this
/// consumer. The next read takes them back at once; none waits for `claim_idle`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_a_failed_read_delivered_settle_without_waiting_for_claim_idle() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let h = unsettled_server(&clock, &settings).await;
    // A settler that has been running: its first read found nothing of its own.
    let outbox = outbox_on(&settings, "a").await;
    assert!(outbox.read(1000).await.unwrap().is_none());
    workload(&h).await;
    server.pause();
    let failed = outbox.read(1000).await;
    server.resume();
    assert!(failed.is_err(), "a read from a stopped Redis must fail");
    eventually("the failed read delivered the entries to the consumer", DEADLINE, async || pending(&server) > 0).await;
    let delivered = pending(&server);

    let settler = Settler::new(outbox.clone(), store.clone(), SettleOptions::default());
    settler.flush().await;
    assert_eq!(outbox.backlog().await.unwrap().events, 0, "entries left waiting for claim_idle");
    assert_eq!(pending(&server), 0);
    assert_settled(&store, &h, "acme").await;
    assert_settled(&store, &h, "globex").await;
    eprintln!("failed read: {delivered} entries delivered by it settled without waiting for claim_idle");
}

/// A running settler through a Redis blip under traffic: everything settles, with no replica to
/// claim anything and `claim_idle` longer than the test's deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_blip_under_load_settles_without_waiting_for_claim_idle() {
    let server = RedisServer::start();
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    blip_under_load(&server, store, clock, settings).await;
}

/// The same into PostgreSQL, where batches are written side by side: the read after the blip
/// takes back this replica's own unsettled entries only once the batches in flight have landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_blip_under_load_settles_with_batches_written_side_by_side() {
    let server = RedisServer::start();
    let postgres = PostgresServer::start();
    let store = Store::connect(&postgres.url()).await.unwrap();
    let RedisBeside { dir: _dir, clock, settings, .. } = redis_beside(vec![server.url()], false).await;
    blip_under_load(&server, store, clock, settings).await;
}

async fn blip_under_load(
    server: &RedisServer,
    store: Store,
    clock: ManualClock,
    settings: credit_sidecar::engine::redis::RedisSettings,
) {
    let rules = Rules::default();
    let engine = redis_engine(&rules, &settings, &clock).await;
    let (stop, stopped) = watch::channel(());
    let (settling, stats) = settle_quickly(&engine, &store, stopped).await;
    let h = Arc::new(Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await);
    h.account("acme", 1_000_000).await;
    for _ in 0..100 {
        h.hold("acme", "ann", 1).await;
    }
    server.pause();
    let failures = stats.failures.load(Ordering::Relaxed);
    eventually("the settler noticed Redis stopped", DEADLINE, async || {
        stats.failures.load(Ordering::Relaxed) > failures
    })
    .await;
    server.resume();
    for _ in 0..100 {
        h.hold("acme", "ann", 1).await;
    }
    let observer = outbox_on(&settings, "observer").await;
    eventually("everything settled", DEADLINE, async || observer.backlog().await.is_ok_and(|b| b.events == 0)).await;
    drop(stop);
    settling.await.unwrap();
    assert_settled(&store, &h, "acme").await;
}

/// The database stops: the backlog and lag figures keep moving while it is down (they are what
/// alerts on the outage), and fall back once it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_and_lag_keep_moving_while_the_database_is_down() {
    let PostgresBeside { mut postgres, store, server: _server, clock, settings: _, engine } = postgres_beside().await;
    let (stop, stopped) = watch::channel(());
    let (settling, stats) = settle_quickly(&engine, &store, stopped).await;
    let h = Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await;
    h.account("acme", 1_000).await;
    let acme = credit_sidecar::ledger::AccountId::parse("acme").unwrap();
    eventually("the first events settled", DEADLINE, async || store.totals(&acme).await.is_ok_and(|t| t.is_some()))
        .await;

    postgres.stop();
    let holds = 30;
    for _ in 0..holds {
        h.hold("acme", "ann", 1).await;
    }
    eventually("the backlog shows the events waiting", DEADLINE, async || {
        stats.backlog.load(Ordering::Relaxed) >= holds
    })
    .await;
    let lag = stats.lag_ms.load(Ordering::Relaxed);
    eventually("the lag keeps rising", DEADLINE, async || stats.lag_ms.load(Ordering::Relaxed) > lag + 100).await;
    let (backlog, lag) = measured(&stats);

    postgres.start_again();
    eventually("the backlog drained", DEADLINE, async || measured(&stats) == (0, 0)).await;
    drop(stop);
    settling.await.unwrap();
    assert_settled(&store, &h, "acme").await;
    eprintln!("database down: backlog rose to {backlog} events, lag to {lag} ms; both back to 0 after");
}

fn measured(stats: &SettleStats) -> (u64, i64) {
    (stats.backlog.load(Ordering::Relaxed), stats.lag_ms.load(Ordering::Relaxed))
}

/// Redis restarts from its append-only file (whose reload leaves the group's lag counters
/// unreliable): once everything has settled the backlog reads 0 — from the streams themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_reads_zero_after_an_aof_reload() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let RedisBeside { store, dir: _dir, clock, settings } = redis_beside(vec![server.url()], false).await;
    let h = unsettled_server(&clock, &settings).await;
    workload(&h).await;
    let settler = Settler::new(outbox_on(&settings, "a").await, store.clone(), SettleOptions::default());
    settler.flush().await;
    server.restart();
    eventually("the engine reconnected", DEADLINE, async || h.engine.ping().await.is_ok()).await;
    h.hold("acme", "ann", 1).await; // entries after the reload too
    let outbox = outbox_on(&settings, "b").await;
    Settler::new(outbox.clone(), store.clone(), SettleOptions::default()).flush().await;
    assert_eq!(outbox.backlog().await.unwrap(), Default::default(), "phantom backlog after the reload");
    assert_settled(&store, &h, "acme").await;
    let groups = server.cli(&["xinfo", "groups", "cs:{s0}:events"]);
    eprintln!("after the AOF reload: backlog 0; XINFO GROUPS of shard 0 says: {}", groups.replace('\n', " "));
}

/// Settlement on a Redis Cluster of three masters: every shard read, acknowledged and measured
/// through the cluster client (one pipeline per shard: the cluster refuses them across slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_works_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let RedisBeside { store, dir: _dir, clock, mut settings } = redis_beside(cluster.urls(), true).await;
    settings.key_prefix = "settle:".into();
    let engine = redis_engine(&Rules::default(), &settings, &clock).await;
    let (stop, stopped) = watch::channel(());
    let (settling, stats) = settle_quickly(&engine, &store, stopped).await;
    let h = Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await;
    workload(&h).await;
    let observer = outbox_on(&settings, "observer").await;
    eventually("everything settled", DEADLINE, async || observer.backlog().await.is_ok_and(|b| b.events == 0)).await;
    drop(stop);
    settling.await.unwrap();
    assert_settled(&store, &h, "acme").await;
    assert_settled(&store, &h, "globex").await;
    assert_eq!(stats.settled.load(Ordering::Relaxed), store.event_count().await.unwrap() as u64);
}
