//! Synchronous replication (`redis_wait_replicas`): every state change waits for the replicas
//! before it is answered, so a failover to a replica loses nothing acknowledged. A private
//! primary and replica; the failover is the primary killed and the replica promoted.

use std::time::{Duration, Instant};

use credit_sidecar::api::pb;
use credit_sidecar::engine::redis::WaitReplicas;
use credit_sidecar::ledger::Rules;
use tonic::Code;

use crate::harness::{Harness, redis_engine, redis_settings, reserve_request};
use crate::servers::RedisServer;

/// Waits (bounded) until the replica has synced with its primary.
fn wait_for_link(replica: &RedisServer) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica.cli(&["info", "replication"]).contains("master_link_status:up") {
        assert!(Instant::now() < deadline, "the replica never synced");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_wait_replicas_a_failover_loses_no_acknowledged_change() {
    let mut primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    wait_for_link(&replica);
    // Generous for a loaded machine: only the stopped replica below may run it out.
    let wait = WaitReplicas { replicas: 1, timeout: Duration::from_secs(2) };
    let settings =
        credit_sidecar::engine::redis::RedisSettings { wait: Some(wait), ..redis_settings(vec![primary.url()], false) };
    let clock = credit_sidecar::ledger::ManualClock::new(crate::harness::t0());
    let engine = redis_engine(&Rules::default(), &settings, &clock).await;
    let h = Harness::serve(clock.clone(), engine, None, Duration::from_secs(3600)).await;
    h.account("acme", 1_000).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(h.hold("acme", "ann", 10).await);
    }
    let committed = h.hold("acme", "ann", 10).await;
    let commit = h.commit(&committed, 7, true).await;
    assert_eq!(commit.outcome(), pb::Outcome::Ok, "{commit:?}");

    // A replica that does not acknowledge: the change is not acknowledged either.
    replica.pause();
    let status = h.auth.clone().reserve(reserve_request("acme", 10, "while-paused")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("replicas"), "{}", status.message());

    // Failover: the primary dies, the replica takes over.
    primary.kill();
    replica.resume();
    assert_eq!(replica.cli(&["replicaof", "no", "one"]), "OK");
    let promoted = redis_engine(&Rules::default(), &redis_settings(vec![replica.url()], false), &clock).await;
    let after = Harness::serve(clock.clone(), promoted, None, Duration::from_secs(3600)).await;
    for id in &held {
        let reservation = after.reservation(id).await;
        assert_eq!((reservation.state(), reservation.held), (pb::ReservationState::Held, 10), "{id}");
    }
    let closed = after.reservation(&committed).await;
    assert_eq!((closed.state(), closed.committed), (pb::ReservationState::Committed, 7));
    let totals = after.totals("acme").await;
    assert_eq!(totals.spent, 7, "every acknowledged change, after the failover");
    // The unacknowledged Reserve may or may not have reached the replica; retried with its
    // request id, it holds exactly once either way.
    assert!([200, 210].contains(&totals.held), "{totals:?}");
    let retried = after.auth.clone().reserve(reserve_request("acme", 10, "while-paused")).await.unwrap().into_inner();
    assert_eq!(retried.outcome(), pb::Outcome::Ok, "{retried:?}");
    assert_eq!(after.totals("acme").await.held, 210);
}
