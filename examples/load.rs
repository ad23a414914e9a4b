//! A fixed amount of work against a running sidecar, in two steps: with CALLS = 0 it puts
//! `accounts` accounts on a plan (the set-up); with CALLS > 0 it makes that many Reserves on
//! them, `in_flight` at a time, and prints calls/s and latency percentiles — nothing else, so a profiler counting during
//! that run counts Reserves only.
//!
//! ```text
//! cargo run --release --example load -- [ADDRESS] [CALLS] [IN_FLIGHT] [ACCOUNTS] [TAG]
//! ```
//! Defaults: `http://127.0.0.1:50051 20000 64 1000 load`. Run the set-up once per sidecar
//! (`load ADDRESS 0`); runs with the same CALLS and TAG reuse the same request ids.
//!
//! It exists for the repeatable measure the benchmark cannot give on a shared machine: the
//! instructions a sidecar spends per call, counted by `valgrind --tool=callgrind` (README,
//! "Instructions per call"). Wall-clock figures are the benchmark's job.

use std::collections::HashMap;
use std::time::Instant;

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let calls: usize = args.next().map_or(Ok(20_000), |value| value.parse())?;
    let in_flight: usize = args.next().map_or(Ok(64), |value| value.parse())?;
    let accounts: usize = args.next().map_or(Ok(1_000), |value| value.parse())?;
    let tag = args.next().unwrap_or_else(|| "load".into());
    let channel = tonic::transport::Endpoint::from_shared(address)?.connect().await?;

    if calls == 0 {
        let mut admin = CreditAdminClient::new(channel);
        for account in 0..accounts {
            let plan = pb::SetPlanRequest {
                account_id: format!("{tag}-{account}"),
                period: pb::Period::Monthly as i32,
                anchor_unix_ms: 0,
                plan_credits: 1_000_000_000,
                addon_credits: 0,
                request_id: format!("{tag}-plan-{account}"),
            };
            admin.set_plan(plan).await?;
        }
        println!("{accounts} accounts on a plan");
        return Ok(());
    }

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..in_flight {
        let mut authorizer = CreditAuthorizerClient::new(channel.clone());
        let tag = tag.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            for call in (worker..calls).step_by(in_flight) {
                let sent = Instant::now();
                let reserve = pb::ReserveRequest {
                    account_id: format!("{tag}-{}", call % accounts),
                    user_id: format!("user{}", worker % 16),
                    category: "enrichment".into(),
                    cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(1)) }),
                    ttl_ms: 600_000,
                    request_id: format!("{tag}-{call}"),
                    labels: HashMap::new(),
                    min_quantity: 0,
                };
                let answer = authorizer.reserve(reserve).await.map_err(|status| match status.code() {
                    tonic::Code::NotFound => format!("call {call}: {status} (set the accounts up first: CALLS = 0)"),
                    _ => format!("call {call}: {status}"),
                })?;
                let answer = answer.into_inner();
                if answer.outcome() != pb::Outcome::Ok {
                    return Err(format!("call {call} declined: {answer:?}"));
                }
                latencies.push(sent.elapsed());
            }
            Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(calls);
    while let Some(worker) = workers.join_next().await {
        latencies.extend(worker??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies.get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)));
    let micros = |q: f64| at(q).map_or(0, |latency| latency.as_micros());
    println!(
        "{calls} Reserves, {in_flight} in flight, in {elapsed:.2?}: {:.0}/s, p50/p99/p999 {}/{}/{} µs",
        calls as f64 / elapsed.as_secs_f64(),
        micros(0.5),
        micros(0.99),
        micros(0.999)
    );
    Ok(())
}
