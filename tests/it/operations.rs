//! Production operation, in-process over real sockets: bearer tokens (every refusal, rotation),
//! load shedding, deadlines and Redis outages, request size, health that follows Redis and the
//! database, reflection, and TLS/mTLS. The binary's own behaviour (config sources, metrics,
//! SIGTERM) is in `process.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use credit_sidecar::auth::{TokenSet, Tokens};
use credit_sidecar::config::TlsConfig;
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::RedisSettings;
use credit_sidecar::gate::Limits;
use credit_sidecar::ledger::{ManualClock, Rules};
use credit_sidecar::server::{AuthSetup, ServeError, ServeOptions, Served, serve};
use credit_sidecar::settle::store::Store;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{
    HEALTH_TRANSITION_MAX, Pki, anchor, error_reason, eventually, health_watch, pki, plan_request, redis_engine,
    redis_settings, reserve_request, t0, wait_for_health,
};
use crate::servers::{PostgresServer, RedisServer};

const AUTHORIZE_TOKEN: &str = "worker-token-0123456789";
const ADMIN_TOKEN: &str = "admin-token-0123456789";

/// A server on a free loopback port, stopped on drop of its shutdown sender.
struct Sidecar {
    address: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<Served, ServeError>>,
}

impl Sidecar {
    async fn start(engine: Engine, options: ServeOptions) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, engine, options, None, async {
            stopped.await.ok();
        }));
        Self { address, shutdown: Some(shutdown), task }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.address)).unwrap().connect().await.unwrap()
    }

    async fn stop(mut self) -> Result<Served, ServeError> {
        self.shutdown.take().map(|tx| tx.send(()));
        self.task.await.unwrap()
    }
}

fn embedded() -> Engine {
    Engine::embedded(Rules::default(), Arc::new(ManualClock::new(t0())))
}

/// A Redis engine on `server` whose round trips may take `timeout`.
async fn redis(server: &RedisServer, timeout: Duration) -> Engine {
    let settings = RedisSettings { timeout, ..redis_settings(vec![server.url()], false) };
    redis_engine(&Rules::default(), &settings, &ManualClock::new(t0())).await
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

fn tokens_file(entries: &[(&str, &str, &str, Option<&str>)]) -> String {
    entries
        .iter()
        .map(|(name, token, scopes, accounts)| {
            let accounts = accounts.map(|list| format!("accounts = [{list}]\n")).unwrap_or_default();
            format!("[[tokens]]\nname = \"{name}\"\ntoken = \"{token}\"\nscopes = [{scopes}]\n{accounts}\n")
        })
        .collect()
}

fn auth_options(tokens: &str, reload: Option<(std::path::PathBuf, Duration)>) -> ServeOptions {
    let tokens = Tokens::new(TokenSet::parse(tokens).unwrap());
    ServeOptions { auth: Some(AuthSetup { tokens, reload }), ..ServeOptions::new(Duration::from_secs(3600)) }
}

#[tokio::test]
async fn every_auth_refusal_has_its_code_and_changes_nothing() {
    let tokens = tokens_file(&[
        ("worker", AUTHORIZE_TOKEN, "\"authorize\"", Some("\"acme\"")),
        ("ops", ADMIN_TOKEN, "\"admin\", \"authorize\"", None),
    ]);
    let sidecar = Sidecar::start(embedded(), auth_options(&tokens, None)).await;
    let channel = sidecar.channel().await;
    let (mut auth, mut admin) = (CreditAuthorizerClient::new(channel.clone()), CreditAdminClient::new(channel.clone()));
    admin.set_plan(with_token(plan_request("acme", 100, anchor(), "plan-acme"), ADMIN_TOKEN)).await.unwrap();

    let unauthenticated = [
        Request::new(reserve_request("acme", 10, "r1")),
        with_token(reserve_request("acme", 10, "r1"), "not-a-known-token-at-all"),
        with_token(reserve_request("acme", 10, "r1"), ""),
        {
            let mut request = Request::new(reserve_request("acme", 10, "r1"));
            request.metadata_mut().insert("authorization", format!("Basic {AUTHORIZE_TOKEN}").parse().unwrap());
            request
        },
    ];
    let reasons = ["TOKEN_MISSING", "TOKEN_UNKNOWN", "TOKEN_UNKNOWN", "TOKEN_MISSING"];
    for (request, reason) in unauthenticated.into_iter().zip(reasons) {
        let status = auth.reserve(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().starts_with("authorization: "), "{status:?}");
        assert_eq!(error_reason(&status), reason, "{status:?}");
    }
    // A worker token cannot administer, nor touch an account outside its list — whether the
    // account is named or hidden in a reservation id.
    let status = admin.grant(with_token(pb::GrantRequest::default(), AUTHORIZE_TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("admin"), "{status:?}");
    assert_eq!(error_reason(&status), "SCOPE_MISSING");
    admin.set_plan(with_token(plan_request("globex", 100, anchor(), "plan-globex"), ADMIN_TOKEN)).await.unwrap();
    let status = auth.reserve(with_token(reserve_request("globex", 10, "r2"), AUTHORIZE_TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().starts_with("account_id: "), "{status:?}");
    assert_eq!(error_reason(&status), "ACCOUNT_NOT_ALLOWED");
    let held = auth.reserve(with_token(reserve_request("globex", 10, "r3"), ADMIN_TOKEN)).await.unwrap().into_inner();
    let release = pb::ReleaseRequest { reservation_id: held.reservation_id.clone(), request_id: "rel".into() };
    let status = auth.release(with_token(release, AUTHORIZE_TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let read = pb::GetReservationRequest { reservation_id: held.reservation_id.clone() };
    assert_eq!(
        auth.get_reservation(with_token(read, AUTHORIZE_TOKEN)).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Nothing refused changed anything: acme untouched, globex holds only the admin's 10.
    let balance = |account: &str, token: &str| {
        with_token(pb::GetBalanceRequest { account_id: account.into(), user_id: String::new() }, token)
    };
    let acme = auth.get_balance(balance("acme", AUTHORIZE_TOKEN)).await.unwrap().into_inner().totals.unwrap();
    assert_eq!((acme.available, acme.held), (100, 0));
    let globex = auth.get_balance(balance("globex", ADMIN_TOKEN)).await.unwrap().into_inner().totals.unwrap();
    assert_eq!((globex.available, globex.held), (90, 10));
    // The worker's own account works; health needs no token.
    let ok = auth.reserve(with_token(reserve_request("acme", 10, "r4"), AUTHORIZE_TOKEN)).await.unwrap().into_inner();
    assert_eq!(ok.outcome(), pb::Outcome::Ok);
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: "liveness".into() }).await.unwrap();
    assert_eq!(health.into_inner().status(), ServingStatus::Serving);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_tokens_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    let old = "old-token-0123456789";
    let new = "new-token-0123456789";
    std::fs::write(&path, tokens_file(&[("worker", old, "\"authorize\"", None)])).unwrap();
    let initial = std::fs::read_to_string(&path).unwrap();
    let options = auth_options(&initial, Some((path.clone(), Duration::from_millis(20))));
    let tokens = options.auth.as_ref().unwrap().tokens.clone();
    let sidecar = Sidecar::start(embedded(), options).await;
    let mut auth = CreditAuthorizerClient::new(sidecar.channel().await);
    let quote = || pb::GetBalanceRequest { account_id: "nobody".into(), user_id: String::new() };
    // NOT_FOUND means authenticated (the account does not exist).
    assert_eq!(auth.get_balance(with_token(quote(), old)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(auth.get_balance(with_token(quote(), new)).await.unwrap_err().code(), Code::Unauthenticated);

    // Rotate as Kubernetes does: write the new version beside it, then rename over it.
    let staged = dir.path().join("tokens.toml.new");
    std::fs::write(&staged, tokens_file(&[("worker", new, "\"authorize\"", None)])).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let started = Instant::now();
    let mut attempts = 0;
    while auth.get_balance(with_token(quote(), new)).await.unwrap_err().code() == Code::Unauthenticated {
        attempts += 1;
        assert!(started.elapsed() < HEALTH_TRANSITION_MAX, "the new token was not accepted after {attempts} attempts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("rotation took effect after {:?} ({attempts} refused attempts)", started.elapsed());
    assert_eq!(auth.get_balance(with_token(quote(), old)).await.unwrap_err().code(), Code::Unauthenticated);

    // A broken file, once the watcher has read and refused it, leaves the tokens in force.
    std::fs::write(&staged, "[[tokens]]\nname = \"x\"\ntoken = \"short\"\nscopes = [\"admin\"]\n").unwrap();
    std::fs::rename(&staged, &path).unwrap();
    let started = Instant::now();
    while tokens.rejected() == 0 {
        assert!(started.elapsed() < HEALTH_TRANSITION_MAX, "the broken file was never read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(auth.get_balance(with_token(quote(), new)).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(auth.get_balance(with_token(quote(), old)).await.unwrap_err().code(), Code::Unauthenticated);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn overload_is_refused_at_once_with_resource_exhausted() {
    let mut server = RedisServer::start();
    let engine = redis(&server, Duration::from_secs(10)).await;
    let limits = Limits { concurrency_max: 2, call_timeout_max: Duration::from_secs(10), ..Limits::default() };
    let sidecar = Sidecar::start(engine, ServeOptions { limits, ..ServeOptions::new(Duration::from_secs(3600)) }).await;
    let channel = sidecar.channel().await;
    let mut admin = CreditAdminClient::new(channel.clone());
    admin.set_plan(plan_request("acme", 1_000, anchor(), "plan")).await.unwrap();

    // Redis hangs: two calls take the only two places and wait for it. The next call is refused
    // without waiting. (A probe may win a place before a stuck call does; the stuck call is then
    // the one refused, and is sent again. An admitted probe's short deadline frees its place.)
    server.pause();
    let spawn_stuck = |index: usize| {
        let mut auth = CreditAuthorizerClient::new(channel.clone());
        tokio::spawn(async move { auth.reserve(reserve_request("acme", 1, format!("stuck-{index}"))).await })
    };
    let mut stuck: Vec<_> = (0..2).map(spawn_stuck).collect();
    let mut sent_stuck = stuck.len();
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    let (refused, elapsed) = loop {
        for call in &mut stuck {
            if call.is_finished() {
                let status = (&mut *call).await.unwrap().unwrap_err();
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(error_reason(&status), "OVERLOADED");
                *call = spawn_stuck(sent_stuck);
                sent_stuck += 1;
            }
        }
        assert!(sent_stuck < 100, "the stuck calls never both held a place");
        // Let the stuck calls' tasks send first: one connection carries the calls in order.
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
        let sent = Instant::now();
        match auth.reserve(with_timeout(reserve_request("acme", 1, "probe"), Duration::from_millis(50))).await {
            Err(status) if status.code() == Code::ResourceExhausted && stuck.iter().all(|call| !call.is_finished()) => {
                break (status, sent.elapsed());
            }
            Err(status) => assert!(
                matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted),
                "{status:?}"
            ),
            Ok(response) => panic!("answered while redis is paused: {response:?}"),
        }
    };
    assert!(refused.message().contains("concurrency_max"), "{refused:?}");
    eprintln!("overload refused in {elapsed:?} while two calls waited on a paused redis");
    server.resume();
    for call in stuck {
        let answer = call.await.unwrap().unwrap().into_inner();
        assert_eq!(answer.outcome(), pb::Outcome::Ok);
    }
    // With the places free again, calls are admitted.
    assert!(auth.reserve(reserve_request("acme", 1, "after")).await.is_ok());
    sidecar.stop().await.unwrap();
    server.kill();
}

#[tokio::test]
async fn a_hung_redis_answers_unavailable_within_the_callers_deadline() {
    let server = RedisServer::start();
    // Redis's own timeout is longer than the deadlines: the call's deadline must bound the wait.
    let engine = redis(&server, Duration::from_secs(30)).await;
    let limits = Limits { call_timeout_max: Duration::from_millis(400), ..Limits::default() };
    let sidecar = Sidecar::start(engine, ServeOptions { limits, ..ServeOptions::new(Duration::from_secs(3600)) }).await;
    let channel = sidecar.channel().await;
    CreditAdminClient::new(channel.clone()).set_plan(plan_request("acme", 100, anchor(), "plan")).await.unwrap();
    let mut auth = CreditAuthorizerClient::new(channel);
    server.pause();
    // The client's deadline, shorter than the server's maximum.
    let deadline = Duration::from_millis(250);
    let sent = Instant::now();
    let status = auth.reserve(with_timeout(reserve_request("acme", 10, "r1"), deadline)).await.unwrap_err();
    let client_elapsed = sent.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_reason(&status), "STORE_TIMEOUT", "the deadline cut the wait for Redis");
    // No client deadline: the server's maximum applies.
    let sent = Instant::now();
    let status = auth.reserve(reserve_request("acme", 10, "r2")).await.unwrap_err();
    let server_elapsed = sent.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_reason(&status), "STORE_TIMEOUT");
    eprintln!("hung redis: UNAVAILABLE after {client_elapsed:?} (deadline 250 ms), {server_elapsed:?} (max 400 ms)");
    // Generous bounds (a loaded machine), but far below Redis's own 30 s timeout: the deadlines
    // are what ended these calls.
    assert!(client_elapsed < Duration::from_secs(5) && server_elapsed < Duration::from_secs(5));
    server.resume();
    // Retrying with the same request id after Redis answers again: exactly one hold of 10.
    let first = auth.reserve(reserve_request("acme", 10, "r1")).await.unwrap().into_inner();
    let again = auth.reserve(reserve_request("acme", 10, "r1")).await.unwrap().into_inner();
    assert_eq!(first.reservation_id, again.reservation_id);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn health_and_calls_follow_redis_through_an_outage() {
    // Redis keeps its data across the restart, as a production Redis with persistence does.
    let mut server = RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]);
    let engine = redis(&server, Duration::from_millis(300)).await;
    let options =
        ServeOptions { health_interval: Duration::from_millis(50), ..ServeOptions::new(Duration::from_secs(3600)) };
    let sidecar = Sidecar::start(engine, options).await;
    let channel = sidecar.channel().await;
    let mut whole = health_watch(&channel, "").await;
    let mut authorizer = health_watch(&channel, "credits.v1.CreditAuthorizer").await;
    let mut liveness = health_watch(&channel, "liveness").await;
    wait_for_health(&mut whole, ServingStatus::Serving).await;
    wait_for_health(&mut authorizer, ServingStatus::Serving).await;
    CreditAdminClient::new(channel.clone()).set_plan(plan_request("acme", 100, anchor(), "plan")).await.unwrap();
    let mut auth = CreditAuthorizerClient::new(channel.clone());

    server.kill();
    wait_for_health(&mut whole, ServingStatus::NotServing).await;
    wait_for_health(&mut authorizer, ServingStatus::NotServing).await;
    let deadline = Duration::from_millis(500);
    let sent = Instant::now();
    let status = auth.reserve(with_timeout(reserve_request("acme", 10, "r1"), deadline)).await.unwrap_err();
    let elapsed = sent.elapsed();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(["STORE_UNAVAILABLE", "STORE_TIMEOUT"].contains(&error_reason(&status).as_str()), "{status:?}");
    eprintln!("redis killed: UNAVAILABLE after {elapsed:?} (deadline {deadline:?}): {}", status.message());
    let check = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: "liveness".into() }).await;
    assert_eq!(check.unwrap().into_inner().status(), ServingStatus::Serving, "liveness must not follow redis");

    server.restart();
    wait_for_health(&mut whole, ServingStatus::Serving).await;
    wait_for_health(&mut authorizer, ServingStatus::Serving).await;
    // Serving again; a first call may still meet a connection being re-established (the
    // 300 ms engine timeout on a busy machine): UNAVAILABLE, retried with the same request id
    // as the contract says — and then answered, once.
    let mut answer = None;
    eventually("a Reserve after Redis is back", Duration::from_secs(20), async || {
        match auth.reserve(reserve_request("acme", 10, "r1")).await {
            Ok(response) => answer = Some(response.into_inner()),
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        answer.is_some()
    })
    .await;
    let answer = answer.unwrap();
    assert_eq!(answer.outcome(), pb::Outcome::Ok);
    let again = auth.reserve(reserve_request("acme", 10, "r1")).await.unwrap().into_inner();
    assert_eq!(again.reservation_id, answer.reservation_id, "the retries made one hold");
    wait_for_health(&mut liveness, ServingStatus::Serving).await;
    drop((whole, authorizer, liveness));
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn health_follows_the_database_and_turns_not_serving_at_shutdown() {
    let mut postgres = PostgresServer::start();
    let store = Store::connect(&postgres.fresh_url()).await.unwrap();
    let engine = Engine::embedded_with(
        Rules::default(),
        Arc::new(ManualClock::new(t0())),
        credit_sidecar::ledger::Ledger::new(Rules::default().request_id_retention_ms),
        Some(Arc::new(credit_sidecar::engine::MemoryOutbox::new(10_000))),
    );
    let options = ServeOptions {
        settle: Some(crate::settle::settle_setup(&store, "test")),
        health_interval: Duration::from_millis(50),
        shutdown_drain: Duration::from_secs(3),
        ..ServeOptions::new(Duration::from_secs(3600))
    };
    let sidecar = Sidecar::start(engine, options).await;
    let channel = sidecar.channel().await;
    let mut whole = health_watch(&channel, "").await;
    let mut admin = health_watch(&channel, "credits.v1.CreditAdmin").await;
    // Both watches read up to SERVING first, so each wait below sees a real transition.
    wait_for_health(&mut whole, ServingStatus::Serving).await;
    wait_for_health(&mut admin, ServingStatus::Serving).await;
    postgres.stop();
    wait_for_health(&mut whole, ServingStatus::NotServing).await;
    wait_for_health(&mut admin, ServingStatus::NotServing).await;
    postgres.start_again();
    wait_for_health(&mut whole, ServingStatus::Serving).await;
    wait_for_health(&mut admin, ServingStatus::Serving).await;

    // Shutdown: the watch sees NOT_SERVING, and during the drain calls are still answered. Then
    // the open watches end: an open stream would hold the server until the grace period ran
    // out, and stop() would fail with GraceExceeded.
    let stopping = tokio::spawn(sidecar.stop());
    wait_for_health(&mut whole, ServingStatus::NotServing).await;
    let mut client = CreditAdminClient::new(channel.clone());
    let answer = client.set_plan(plan_request("acme", 100, anchor(), "during-drain")).await.unwrap().into_inner();
    assert_eq!(answer.outcome(), pb::Outcome::Ok);
    let served = stopping.await.unwrap().unwrap();
    assert!(served.settled >= 1, "the plan set during the drain was settled: {served:?}");
    for mut stream in [whole, admin] {
        let mut last = None;
        while let Some(message) = stream.message().await.unwrap() {
            last = Some(message.status());
        }
        assert_ne!(last, Some(ServingStatus::Serving), "a watch ended on SERVING");
    }
}

#[tokio::test]
async fn oversized_requests_are_refused_before_the_ledger() {
    let limits = Limits { request_bytes_max: 1_024, ..Limits::default() };
    let sidecar =
        Sidecar::start(embedded(), ServeOptions { limits, ..ServeOptions::new(Duration::from_secs(3600)) }).await;
    let channel = sidecar.channel().await;
    CreditAdminClient::new(channel.clone()).set_plan(plan_request("acme", 100, anchor(), "plan")).await.unwrap();
    let mut auth = CreditAuthorizerClient::new(channel);
    let mut big = reserve_request("acme", 10, "big");
    big.labels.insert("note".into(), "x".repeat(2_000));
    let status = auth.reserve(big).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(error_reason(&status), "REQUEST_TOO_LARGE");
    assert!(status.message().contains("1024"), "{status:?}");
    let balance = pb::GetBalanceRequest { account_id: "acme".into(), user_id: String::new() };
    let totals = auth.get_balance(balance).await.unwrap().into_inner().totals.unwrap();
    assert_eq!((totals.available, totals.held), (100, 0));
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let sidecar = Sidecar::start(embedded(), ServeOptions::new(Duration::from_secs(3600))).await;
    let mut client = ServerReflectionClient::new(sidecar.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|service| service.name).collect();
    for expected in ["credits.v1.CreditAuthorizer", "credits.v1.CreditAdmin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|name| name == expected), "{expected} missing from {names:?}");
    }
    drop(responses);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_reflection_stream_ends_at_the_deadline_and_cannot_hold_a_shutdown() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;

    let limits = Limits { call_timeout_max: Duration::from_millis(300), ..Limits::default() };
    let options = ServeOptions {
        limits,
        shutdown_grace: Duration::from_secs(30),
        ..ServeOptions::new(Duration::from_secs(3600))
    };
    let sidecar = Sidecar::start(embedded(), options).await;
    let mut client = ServerReflectionClient::new(sidecar.channel().await);
    // A client that asks once and keeps its side of the stream open.
    let (send, requests) = tokio::sync::mpsc::channel(1);
    send.send(ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    })
    .await
    .unwrap();
    let stream = tokio_stream::wrappers::ReceiverStream::new(requests);
    let mut responses = client.server_reflection_info(stream).await.unwrap().into_inner();
    assert!(responses.message().await.unwrap().is_some());
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(error_reason(&status), "DEADLINE_EXCEEDED");
    drop(send);
    sidecar.stop().await.unwrap();
}

#[tokio::test]
async fn calls_still_running_when_the_grace_period_ends_make_shutdown_report_it() {
    let server = RedisServer::start();
    let engine = redis(&server, Duration::from_secs(30)).await;
    let limits = Limits { call_timeout_max: Duration::from_secs(30), ..Limits::default() };
    let options = ServeOptions {
        limits,
        shutdown_grace: Duration::from_millis(300),
        ..ServeOptions::new(Duration::from_secs(3600))
    };
    let sidecar = Sidecar::start(engine, options).await;
    let channel = sidecar.channel().await;
    CreditAdminClient::new(channel.clone()).set_plan(plan_request("acme", 100, anchor(), "plan")).await.unwrap();
    server.pause();
    let mut auth = CreditAuthorizerClient::new(channel.clone());
    let stuck = tokio::spawn(async move { auth.reserve(reserve_request("acme", 10, "stuck")).await });
    // The call is in flight once the server counts it: a second one with a tiny deadline
    // answers, so the first (sent earlier on the same connection) has been admitted.
    let mut probe = CreditAuthorizerClient::new(channel);
    let _ = probe
        .get_balance(with_timeout(
            pb::GetBalanceRequest { account_id: "acme".into(), user_id: String::new() },
            Duration::from_millis(20),
        ))
        .await;
    let result = sidecar.stop().await;
    assert!(matches!(result, Err(ServeError::GraceExceeded(_))), "{result:?}");
    server.resume();
    let _ = stuck.await;
}

async fn tls_channel(address: SocketAddr, pki: &Pki, client_cert: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
    if client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Channel::from_shared(format!("https://{address}")).unwrap().tls_config(tls)?.connect().await
}

async fn balance_code(channel: Channel) -> Code {
    let request = pb::GetBalanceRequest { account_id: "nobody".into(), user_id: String::new() };
    match CreditAuthorizerClient::new(channel).get_balance(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test]
async fn tls_and_mutual_tls_admit_only_the_right_peers() {
    let pki = pki();
    let tls = |client_ca: bool| TlsConfig {
        cert_pem: pki.server.0.clone().into_bytes(),
        key_pem: pki.server.1.clone().into_bytes(),
        client_ca_pem: client_ca.then(|| pki.ca.clone().into_bytes()),
    };
    // TLS: a client trusting the CA is served; a plaintext client is not.
    let sidecar = Sidecar::start(
        embedded(),
        ServeOptions { tls: Some(tls(false)), ..ServeOptions::new(Duration::from_secs(3600)) },
    )
    .await;
    assert_eq!(balance_code(tls_channel(sidecar.address, &pki, false).await.unwrap()).await, Code::NotFound);
    let plain = Channel::from_shared(format!("http://{}", sidecar.address)).unwrap().connect().await;
    if let Ok(channel) = plain {
        assert_ne!(balance_code(channel).await, Code::NotFound, "plaintext must not be served");
    }
    sidecar.stop().await.unwrap();

    // mTLS: without a client certificate the handshake fails; with one signed by the CA it works.
    let sidecar = Sidecar::start(
        embedded(),
        ServeOptions { tls: Some(tls(true)), ..ServeOptions::new(Duration::from_secs(3600)) },
    )
    .await;
    let anonymous = match tls_channel(sidecar.address, &pki, false).await {
        Ok(channel) => balance_code(channel).await,
        Err(_) => Code::Unavailable,
    };
    assert_ne!(anonymous, Code::NotFound, "a client without a certificate must not be served");
    assert_eq!(balance_code(tls_channel(sidecar.address, &pki, true).await.unwrap()).await, Code::NotFound);
    sidecar.stop().await.unwrap();
}
