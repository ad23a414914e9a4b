//! Hardened edges: what hostile or sloppy input meets at the boundary. Values echoed in errors
//! stay short, reservation ids are canonical, Grant and StartTrial create no account unless
//! asked, declines on a reservation carry its state, idle connections are closed, and request
//! bodies that trickle in hold no permit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use credit_sidecar::api::pb;
use credit_sidecar::engine::Engine;
use credit_sidecar::gate::Limits;
use credit_sidecar::ledger::{ManualClock, Rules};
use credit_sidecar::server::ServeOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::harness::{EngineKind, Harness, MINUTE, RawCodec, amount_cost, error_reason, sku_cost, t0};
use tonic_types::StatusExt;

/// An embedded-engine server with these limits.
async fn serve_with(limits: Limits) -> Harness {
    let clock = ManualClock::new(t0());
    let engine = Engine::embedded(Rules::default(), Arc::new(clock.clone()));
    let mut options = ServeOptions::new(Duration::from_secs(3600));
    options.limits = limits;
    Harness::serve_settled(clock, engine, None, options).await
}

/// A 16 KiB category or SKU is refused INVALID_ARGUMENT naming the field, with a short message:
/// quoted whole, the value would push the `grpc-message` trailer past the client's header limit
/// and the caller would see RESOURCE_EXHAUSTED instead.
#[tokio::test]
async fn huge_values_are_refused_by_field_with_a_short_message() {
    let h = Harness::start(EngineKind::Embedded).await;
    h.account("acme", 100).await;
    let huge = "x".repeat(16 * 1024);
    let reserve = |category: &str, cost: pb::Cost| pb::ReserveRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        category: category.into(),
        cost: Some(cost),
        ttl_ms: 0,
        request_id: "huge".into(),
        labels: HashMap::new(),
        min_quantity: 0,
    };
    let cases = [
        (reserve(&huge, amount_cost(1)), "category: unknown category \"xxx"),
        (reserve("email", sku_cost(&huge, 1)), "cost.sku.sku: unknown SKU \"xxx"),
    ];
    for (request, expected) in cases {
        let error = h.auth.clone().reserve(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{}", error.message());
        assert!(error.message().starts_with(expected), "{}", error.message());
        assert_eq!(error_reason(&error), "INVALID_FIELD");
        let details = error.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.field, expected.split(':').next().unwrap(), "the field, machine-readable");
        assert!(error.message().contains("… (16384 bytes)"), "{}", error.message());
        assert!(error.message().len() < 512, "{} bytes", error.message().len());
    }
    let charge = pb::ChargeRequest {
        account_id: "acme".into(),
        user_id: "ann".into(),
        category: huge.clone(),
        cost: Some(amount_cost(1)),
        request_id: "huge-charge".into(),
        ..Default::default()
    };
    let error = h.auth.clone().charge(charge).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::InvalidArgument, "{}", error.message());
    assert!(error.message().starts_with("category: "), "{}", error.message());
    assert_eq!(h.totals("acme").await.available, 100, "nothing changed");
}

/// A peer that opens a connection and then does nothing has it closed after
/// `connection_idle_max_ms`; a caller whose connection was closed that way simply reconnects.
#[tokio::test]
async fn idle_connections_are_closed() {
    let limits = Limits { connection_idle_max: Duration::from_millis(300), ..Limits::default() };
    let h = serve_with(limits).await;
    h.account("acme", 100).await;
    let mut socket = tokio::net::TcpStream::connect(h.address).await.unwrap();
    // The HTTP/2 client preface and an empty SETTINGS frame: a well-behaved, idle peer.
    socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let closed = async {
        let mut buffer = [0; 1024];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    // The bound is far above the limit: it only keeps a broken build from hanging.
    tokio::time::timeout(Duration::from_secs(20), closed).await.expect("the idle connection was held open");
    // The harness's own connection went idle too; its next call connects again. A call that
    // races the close of its idle connection fails in transport (the close sends no GOAWAY: see
    // README) and is retried, as a client retries any transport failure.
    let request = pb::GetBalanceRequest { account_id: "acme".into(), user_id: String::new() };
    let mut attempts = 0;
    let totals = loop {
        attempts += 1;
        match h.auth.clone().get_balance(request.clone()).await {
            Ok(response) => break response.into_inner().totals.unwrap(),
            Err(status) if attempts < 3 && status.metadata().get("content-type").is_none() => continue,
            Err(status) => panic!("{status:?}"),
        }
    };
    assert_eq!(totals.available, 100);
}

/// A peer that holds its connection open but answers no HTTP/2 PING (a dead host behind a
/// live NAT, a frozen process) is dropped after `http2_keepalive_interval_ms` +
/// `http2_keepalive_timeout_ms`, long before the idle limit would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_answer_no_keepalive_ping_are_dropped() {
    let limits = Limits {
        connection_idle_max: Duration::from_secs(3600),
        http2_keepalive_interval: Duration::from_millis(200),
        http2_keepalive_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let h = serve_with(limits).await;
    let mut socket = tokio::net::TcpStream::connect(h.address).await.unwrap();
    // The preface, an empty SETTINGS and an ACK of the server's: then nothing, PINGs included.
    let ack = b"\x00\x00\x00\x04\x01\x00\x00\x00\x00";
    socket.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    socket.write_all(ack).await.unwrap();
    let mut pings = 0;
    let closed = async {
        let mut buffer = [0u8; 4096];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                // A PING frame: type 6, not an ACK.
                Ok(n) => {
                    pings += buffer[..n].windows(5).filter(|w| w[..3] == [0, 0, 8] && w[3] == 6 && w[4] == 0).count()
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed).await.expect("a peer ignoring PINGs was held open");
    assert!(pings >= 1, "the server never sent a keepalive PING");
}

/// Peers that send a call's headers and then trickle (here: never finish) its body are refused
/// after `request_body_timeout_ms` without ever taking one of `concurrency_max`: honest calls
/// made meanwhile all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_bodies_do_not_block_honest_calls() {
    let limits = Limits { concurrency_max: 4, request_body_timeout: Duration::from_millis(500), ..Limits::default() };
    let h = serve_with(limits).await;
    h.account("acme", 100).await;
    let channel = Channel::from_shared(format!("http://{}", h.address)).unwrap().connect().await.unwrap();
    let tricklers: Vec<_> = (0..8)
        .map(|_| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                grpc.ready().await.unwrap();
                let path = http::uri::PathAndQuery::from_static("/credits.v1.CreditAuthorizer/Reserve");
                let body = tokio_stream::pending::<bytes::Bytes>();
                grpc.client_streaming(tonic::Request::new(body), path, RawCodec).await.unwrap_err()
            })
        })
        .collect();
    let quote = pb::QuoteRequest { account_id: "acme".into(), cost: Some(amount_cost(1)), ..Default::default() };
    let mut honest = 0;
    while tricklers.iter().any(|trickler| !trickler.is_finished()) {
        let answer = h.auth.clone().quote(quote.clone()).await;
        assert!(answer.is_ok(), "honest call {honest} refused while bodies trickled: {answer:?}");
        honest += 1;
        assert!(honest < 1_000_000, "the trickling calls never ended");
    }
    for trickler in tricklers {
        let status = trickler.await.unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().starts_with("request_body_timeout_ms: "), "{status:?}");
        assert_eq!(error_reason(&status), "REQUEST_BODY_TIMEOUT");
    }
}

/// A reservation id is `<account>/<n>` with n as the server wrote it: no sign, no leading zeros.
/// Every call that takes one refuses the other spellings, naming the field, changing nothing.
async fn reservation_ids_are_canonical(h: Harness) {
    h.account("acme", 100).await;
    let id = h.hold("acme", "ann", 10).await;
    assert_eq!(id, "acme/1");
    for bad in ["acme/01", "acme/001", "acme/+1", "acme/1 ", "acme/00"] {
        let expect_refused = |result: Result<_, tonic::Status>, rpc: &str| {
            let error = result.err().unwrap_or_else(|| panic!("{rpc} {bad:?} was accepted"));
            assert_eq!(error.code(), tonic::Code::InvalidArgument, "{rpc} {bad:?}: {}", error.message());
            assert_eq!(error_reason(&error), "INVALID_FIELD");
            assert!(error.message().starts_with("reservation_id: "), "{rpc} {bad:?}: {}", error.message());
        };
        let commit = pb::CommitRequest {
            reservation_id: bad.into(),
            cost: Some(amount_cost(1)),
            request_id: h.rid(),
            ..Default::default()
        };
        expect_refused(h.auth.clone().commit(commit).await.map(|_| ()), "Commit");
        let extend = pb::ExtendRequest {
            reservation_id: bad.into(),
            cost: None,
            ttl_ms: MINUTE,
            request_id: h.rid(),
            min_quantity: 0,
        };
        expect_refused(h.auth.clone().extend(extend).await.map(|_| ()), "Extend");
        let release = pb::ReleaseRequest { reservation_id: bad.into(), request_id: h.rid() };
        expect_refused(h.auth.clone().release(release).await.map(|_| ()), "Release");
        let get = pb::GetReservationRequest { reservation_id: bad.into() };
        expect_refused(h.auth.clone().get_reservation(get).await.map(|_| ()), "GetReservation");
    }
    let reservation = h.reservation(&id).await;
    assert_eq!((reservation.held, reservation.committed, reservation.commit_count), (10, 0, 0), "nothing changed");
    assert_eq!(h.totals("acme").await.held, 10);
}

/// Grant and StartTrial on an unknown account answer NOT_FOUND and create nothing, unless the
/// request sets `create_account`. The flag is not part of the request's fingerprint: a retry
/// with the same id gets the first answer whatever the flag says.
async fn grant_and_trial_create_accounts_only_when_asked(h: Harness) {
    let grant = |account: &str, request_id: &str, create_account: bool| pb::GrantRequest {
        account_id: account.into(),
        kind: pb::LotKind::Promo as i32,
        amount: 50,
        expires_unix_ms: 0,
        request_id: request_id.into(),
        create_account,
    };
    let trial = |account: &str, request_id: &str, create_account: bool| pb::StartTrialRequest {
        account_id: account.into(),
        request_id: request_id.into(),
        create_account,
        ..Default::default()
    };
    let mut admin = h.admin.clone();
    let error = admin.grant(grant("typo", "g1", false)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{}", error.message());
    assert_eq!(error.message(), "account_id: no account typo");
    assert_eq!(error_reason(&error), "ACCOUNT_NOT_FOUND");
    let resource = error.get_error_details().resource_info().cloned().unwrap();
    assert_eq!((resource.resource_type.as_str(), resource.resource_name.as_str()), ("account", "typo"));
    let error = admin.start_trial(trial("typo", "t1", false)).await.unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{}", error.message());
    let account = pb::GetAccountRequest { account_id: "typo".into() };
    assert_eq!(admin.get_account(account).await.unwrap_err().code(), tonic::Code::NotFound, "nothing was created");

    let granted = admin.grant(grant("newco", "g2", true)).await.unwrap().into_inner();
    assert_eq!((granted.outcome(), granted.totals.unwrap().available), (pb::Outcome::Ok, 50));
    let retried = admin.grant(grant("newco", "g2", false)).await.unwrap().into_inner();
    assert_eq!(retried, granted, "a retry without the flag gets the first answer");
    let trial_ok = admin.start_trial(trial("trialco", "t2", true)).await.unwrap().into_inner();
    assert_eq!((trial_ok.outcome(), trial_ok.totals.unwrap().available), (pb::Outcome::Ok, 100));
    // On an account that exists the flag changes nothing.
    let more = admin.grant(grant("newco", "g3", false)).await.unwrap().into_inner();
    assert_eq!(more.totals.unwrap().available, 100);
    let second = admin.start_trial(trial("trialco", "t3", false)).await.unwrap().into_inner();
    assert_eq!(second.outcome(), pb::Outcome::TrialAlreadyUsed);
}

/// A decline on a reservation carries the reservation as it stands (held, committed, deadline,
/// state), and every decline names the scope that refused by its id.
async fn declines_carry_the_reservation_and_name_the_scope(h: Harness) {
    h.account("acme", 100).await;
    h.set_user_limit("acme", "ann", Some(70)).await;
    let reserved = h.reserve("acme", "ann", 60, 10 * MINUTE).await;
    let (id, deadline) = (reserved.reservation_id, reserved.deadline_unix_ms);
    assert_eq!(h.commit(&id, 5, false).await.outcome(), pb::Outcome::Ok);

    // Extend declined by the user's limit: the hold is unchanged, and shown.
    let extend = h.extend(&id, 20, 0).await;
    assert_eq!(extend.outcome(), pb::Outcome::UserLimitReached);
    assert_eq!((extend.held, extend.deadline_unix_ms), (55, deadline), "{extend:?}");
    let view = extend.reservation.clone().expect("a declined Extend shows the reservation");
    assert_eq!((view.reservation_id.as_str(), view.held, view.committed), (id.as_str(), 55, 5));
    assert_eq!((view.state(), view.deadline_unix_ms), (pb::ReservationState::Held, deadline));
    let decline = extend.decline.unwrap();
    assert_eq!((decline.scope(), decline.scope_id.as_str()), (pb::Scope::User, "ann"));
    assert!(decline.message.starts_with("user ann of account acme reached their limit"), "{}", decline.message);

    // Extend declined by the account's credit.
    h.set_user_limit("acme", "ann", None).await;
    let extend = h.extend(&id, 50, 0).await;
    assert_eq!(extend.outcome(), pb::Outcome::InsufficientCredit);
    assert_eq!((extend.held, extend.deadline_unix_ms), (55, deadline));
    assert_eq!(extend.reservation.as_ref().map(|view| view.held), Some(55));
    let decline = extend.decline.unwrap();
    assert_eq!((decline.scope(), decline.scope_id.as_str()), (pb::Scope::Account, "acme"));
    assert!(decline.message.starts_with("account acme has 40 credits available"), "{}", decline.message);

    // A commit above the hold.
    let over = h.commit(&id, 56, false).await;
    assert_eq!(over.outcome(), pb::Outcome::ExceedsHold);
    assert_eq!((over.held, over.reservation.as_ref().map(|view| view.committed)), (55, Some(5)));
    let decline = over.decline.unwrap();
    assert_eq!((decline.scope(), decline.scope_id.as_str()), (pb::Scope::Reservation, id.as_str()));
    assert!(decline.message.contains(&format!("reservation {id} ")), "{}", decline.message);

    // Closed, then expired: Commit, Extend and Release declines show the closed reservation.
    assert_eq!(h.release(&id).await.outcome(), pb::Outcome::Ok);
    let commit = h.commit(&id, 1, false).await;
    assert_eq!(commit.outcome(), pb::Outcome::ReservationClosed);
    let view = commit.reservation.expect("a declined Commit shows the reservation");
    assert_eq!((view.state(), view.held, view.committed, view.returned), (pb::ReservationState::Released, 0, 5, 55));
    assert_eq!(commit.decline.unwrap().scope_id, id);
    let release = h.release(&id).await;
    assert_eq!(release.outcome(), pb::Outcome::ReservationClosed);
    assert_eq!(release.reservation.map(|view| view.state()), Some(pb::ReservationState::Released));

    let expiring = h.reserve("acme", "ann", 10, 2 * MINUTE).await.reservation_id;
    assert_eq!(h.commit(&expiring, 4, false).await.outcome(), pb::Outcome::Ok);
    h.advance(3 * MINUTE).await;
    let request = pb::CommitRequest {
        reservation_id: expiring.clone(),
        cost: Some(amount_cost(1)),
        request_id: "late".into(),
        ..Default::default()
    };
    let late = h.auth.clone().commit(request.clone()).await.unwrap().into_inner();
    assert_eq!(late.outcome(), pb::Outcome::ReservationExpired);
    let view = late.reservation.clone().expect("an expired reservation is shown");
    assert_eq!((view.state(), view.held, view.committed, view.returned), (pb::ReservationState::Expired, 0, 4, 6));
    let decline = late.decline.clone().unwrap();
    assert_eq!(decline.scope_id, expiring);
    assert!(decline.message.starts_with(&format!("reservation {expiring} expired")), "{}", decline.message);
    let extend = h.extend(&expiring, 0, MINUTE).await;
    assert_eq!(extend.outcome(), pb::Outcome::ReservationExpired);
    assert_eq!(extend.reservation.map(|view| view.state()), Some(pb::ReservationState::Expired));
    // A retry gets the remembered decline, reservation included.
    let retried = h.auth.clone().commit(request).await.unwrap().into_inner();
    assert_eq!(retried, late);
}

crate::engine_tests!(
    reservation_ids_are_canonical,
    grant_and_trial_create_accounts_only_when_asked,
    declines_carry_the_reservation_and_name_the_scope
);
