//! Hardened edges: what hostile or sloppy input meets at the boundary. Values echoed in errors
//! stay short, and reservation ids are canonical.

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

crate::engine_tests!(reservation_ids_are_canonical);
