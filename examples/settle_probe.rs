//! Times `Store::settle` alone on a fresh SQLite file: Reserve events and their remembered
//! answers, as the embedded engine hands them over, in batches of 1 to 256 units. It shows the
//! fixed cost of one transaction (what one call in flight waits for) apart from the cost per
//! event (what bounds throughput when calls share transactions).
//!
//! ```sh
//! cargo run --release --example settle_probe
//! ```
//!
//! A measurement, not a test: figures are comparable only within one run.

use std::time::{Duration, Instant};

use credit_sidecar::ledger::command::{Plan, Reserve, SetPlan};
use credit_sidecar::ledger::{AccountId, Labels, Ledger, Period, RequestId, Rules, UserId};
use credit_sidecar::settle::outbox::Records;
use credit_sidecar::settle::store::Store;

const NOW: i64 = 1_768_435_200_000;
/// Events per case, at most.
const EVENTS_MAX: usize = 20_000;

struct Case {
    batch: usize,
    answers: bool,
    accounts: usize,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cases = [
        Case { batch: 1, answers: true, accounts: 1 },
        Case { batch: 1, answers: false, accounts: 1 },
        Case { batch: 16, answers: true, accounts: 1 },
        Case { batch: 64, answers: true, accounts: 1 },
        Case { batch: 256, answers: true, accounts: 1 },
        Case { batch: 256, answers: false, accounts: 1 },
        Case { batch: 256, answers: true, accounts: 1_000 },
    ];
    for case in cases {
        let (events, spent) = run(&case).await?;
        let batches = events / case.batch;
        println!(
            "batch {:4}, answers {:5}, accounts {:5}: {:7.1} µs/event, {:8.1} µs/transaction, {:6.0} events/s",
            case.batch,
            case.answers,
            case.accounts,
            spent.as_micros() as f64 / events as f64,
            spent.as_micros() as f64 / batches as f64,
            events as f64 / spent.as_secs_f64(),
        );
    }
    Ok(())
}

/// Settles one case's batches; returns the events settled and the time `settle` took.
async fn run(case: &Case) -> Result<(usize, Duration), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("ledger.db").display())).await?;
    let rules = Rules::default();
    let mut ledger = Ledger::new(86_400_000).journal_answers();
    for index in 0..case.accounts {
        let plan = Plan { period: Period::Monthly, anchor_ms: NOW, plan_credits: 1_000_000_000, addon_credits: 0 };
        let request = RequestId::parse(&format!("plan-{index}"))?;
        ledger.set_plan(NOW, &SetPlan { account: account(index), plan, request })?;
    }
    let funding = Records { events: ledger.drain_events(), answers: ledger.drain_answers(), snapshots: Vec::new() };
    store.settle(&funding, NOW).await?;
    let total = EVENTS_MAX.min(case.batch * 400);
    let (mut made, mut spent) = (0, Duration::ZERO);
    while made < total {
        for _ in 0..case.batch {
            let reserve = Reserve {
                account: account(made % case.accounts),
                user: UserId::parse("ann")?,
                category: rules.category("enrichment")?,
                amount: 1,
                ttl_ms: 3_600_000,
                request: RequestId::parse(&format!("r{made}"))?,
                labels: Labels::default(),
                partial: None,
            };
            ledger.reserve(NOW, &reserve)?;
            made += 1;
        }
        let mut records =
            Records { events: ledger.drain_events(), answers: ledger.drain_answers(), snapshots: Vec::new() };
        if !case.answers {
            records.answers.clear();
        }
        let started = Instant::now();
        store.settle(&records, NOW).await?;
        spent += started.elapsed();
    }
    Ok((made, spent))
}

fn account(index: usize) -> AccountId {
    AccountId::parse(&format!("acct-{index}")).expect("a valid account id")
}
