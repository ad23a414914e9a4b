//! Hardened edges: what hostile or sloppy input meets at the boundary. Values echoed in errors
//! stay short.

use std::collections::HashMap;

use credit_sidecar::api::pb;

use crate::harness::{EngineKind, Harness, amount_cost, sku_cost};

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
