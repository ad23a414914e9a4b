//! Hardened edges: what hostile or sloppy input meets at the boundary. Values echoed in errors
//! stay short, reservation ids are canonical, and Grant and StartTrial create no account unless
//! asked.

use std::collections::HashMap;

use credit_sidecar::api::pb;

use crate::harness::{EngineKind, Harness, MINUTE, amount_cost, sku_cost};

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
    };
    let cases = [
        (reserve(&huge, amount_cost(1)), "category: unknown category \"xxx"),
        (reserve("email", sku_cost(&huge, 1)), "cost.sku.sku: unknown SKU \"xxx"),
    ];
    for (request, expected) in cases {
        let error = h.auth.clone().reserve(request).await.unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument, "{}", error.message());
        assert!(error.message().starts_with(expected), "{}", error.message());
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
            assert!(error.message().starts_with("reservation_id: "), "{rpc} {bad:?}: {}", error.message());
        };
        let commit = pb::CommitRequest {
            reservation_id: bad.into(),
            cost: Some(amount_cost(1)),
            request_id: h.rid(),
            ..Default::default()
        };
        expect_refused(h.auth.clone().commit(commit).await.map(|_| ()), "Commit");
        let extend = pb::ExtendRequest { reservation_id: bad.into(), cost: None, ttl_ms: MINUTE, request_id: h.rid() };
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

crate::engine_tests!(reservation_ids_are_canonical, grant_and_trial_create_accounts_only_when_asked);
