//! A short session against a running sidecar: put a team on a plan, hold credits for a batch,
//! commit what was used, release the rest, and read the balance.
//!
//! ```text
//! cargo run                      # terminal 1: the sidecar on 127.0.0.1:50051
//! cargo run --example session    # terminal 2
//! ```
//! Pass another address as the first argument (`http://127.0.0.1:50051` by default).

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let mut admin = CreditAdminClient::connect(address.clone()).await?;
    let mut auth = CreditAuthorizerClient::connect(address).await?;
    // Request ids make every call safe to retry; a fresh run gets fresh ones.
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let rid = |step: &str| format!("example-{run}-{step}");

    let plan = admin
        .set_plan(pb::SetPlanRequest {
            account_id: "demo".into(),
            period: pb::Period::Monthly as i32,
            anchor_unix_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            plan_credits: 1_000,
            addon_credits: 0,
            request_id: rid("plan"),
        })
        .await?
        .into_inner();
    println!("plan set: {:?}", plan.totals.unwrap_or_default());

    let reserved = auth
        .reserve(pb::ReserveRequest {
            account_id: "demo".into(),
            user_id: "ann".into(),
            category: "enrichment".into(),
            cost: Some(pb::Cost {
                cost: Some(pb::cost::Cost::Sku(pb::SkuQuantity { sku: "enrichment.row".into(), quantity: 50 })),
            }),
            ttl_ms: 60_000,
            request_id: rid("reserve"),
            labels: HashMap::from([("file".into(), "leads.csv".into())]),
            min_quantity: 0,
        })
        .await?
        .into_inner();
    println!("reserve: {:?} {} held as {}", reserved.outcome(), reserved.amount, reserved.reservation_id);
    if reserved.outcome() != pb::Outcome::Ok {
        println!("declined: {}", reserved.decline.map(|d| d.message).unwrap_or_default());
        return Ok(());
    }

    for row in 0..3 {
        let committed = auth
            .commit(pb::CommitRequest {
                reservation_id: reserved.reservation_id.clone(),
                cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(1)) }),
                r#final: false,
                request_id: rid(&format!("row-{row}")),
                business_key: format!("contact:{row}:email"),
                labels: HashMap::new(),
            })
            .await?
            .into_inner();
        println!("commit row {row}: charged {}, still held {}", committed.charged, committed.held);
    }

    let released = auth
        .release(pb::ReleaseRequest { reservation_id: reserved.reservation_id.clone(), request_id: rid("release") })
        .await?
        .into_inner();
    println!("release: returned {}", released.returned);

    let balance = auth
        .get_balance(pb::GetBalanceRequest { account_id: "demo".into(), user_id: "ann".into() })
        .await?
        .into_inner();
    println!("balance: {:?}", balance.totals.unwrap_or_default());
    Ok(())
}
