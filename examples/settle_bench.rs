//! Settlement benchmark (a command, not a test): how fast events settle from the Redis outbox
//! into PostgreSQL, and how long a commit takes to reach its SQL row under steady load.
//!
//! ```text
//! cargo run --release --example settle_bench -- \
//!     [--redis redis://127.0.0.1:6379/] [--database postgres://postgres@127.0.0.1:5432/test] \
//!     [--events 100000] [--rate 2000] [--seconds 10] [--batch 1000]
//! ```
//! Phase 1 fills the outbox with `--events` events (no settler running), then drains it with
//! one settler loop, timing reading, writing and acknowledging separately: events/s.
//! Phase 2 runs a settler while issuing commits at `--rate` per second for `--seconds`, then
//! reads each commit's lag (its SQL row's `settled_ms` minus the event's Redis time) from SQL:
//! p50 / p99 / max. Keys use a fresh prefix and accounts a fresh name, so runs do not mix.
//!
//! ```text
//! cargo run --release --example settle_bench -- --embedded [--rate 25000] [--seconds 10] [--batch 1000]
//! ```
//! The embedded engine with its default store (a fresh SQLite file) and default outbox bound:
//! Reserves (one event each) at `--rate` per second for `--seconds` while the settler runs;
//! reports calls accepted and refused ("settlement backlog full"), events settled per second
//! and the largest backlog seen.

// The line budget (clippy.toml) is for the service's code; a benchmark reads top to bottom.
#![allow(clippy::too_many_lines)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use credit_sidecar::engine::redis::outbox::RedisOutbox;
use credit_sidecar::engine::redis::{RedisEngine, RedisSettings};
use credit_sidecar::ledger::command::{Commit, Plan, Reserve, SetPlan};
use credit_sidecar::ledger::{AccountId, Labels, Period, RequestId, ReservationId, Rules, UserId};
use credit_sidecar::settle::outbox::Outbox;
use credit_sidecar::settle::settler::{SettleOptions, Settler};
use credit_sidecar::settle::store::Store;
use sqlx::Row;
use tokio::sync::watch;

struct Args {
    redis: String,
    database: String,
    events: usize,
    rate: usize,
    seconds: u64,
    batch: usize,
    embedded: bool,
}

fn args() -> Args {
    let mut args = Args {
        redis: "redis://127.0.0.1:6379/".into(),
        database: "postgres://postgres@127.0.0.1:5432/test".into(),
        events: 100_000,
        rate: 2_000,
        seconds: 10,
        batch: 1_000,
        embedded: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--embedded" {
            args.embedded = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--redis" => args.redis = value,
            "--database" => args.database = value,
            "--events" => args.events = value.parse().expect("--events"),
            "--rate" => args.rate = value.parse().expect("--rate"),
            "--seconds" => args.seconds = value.parse().expect("--seconds"),
            "--batch" => args.batch = value.parse().expect("--batch"),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

struct Bench {
    redis: Arc<RedisEngine>,
    run: String,
    requests: std::sync::atomic::AtomicU64,
}

impl Bench {
    fn request(&self) -> RequestId {
        let n = self.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RequestId::parse(&format!("{}-{n}", self.run)).unwrap()
    }

    fn account(&self, index: usize) -> AccountId {
        AccountId::parse(&format!("{}-a{index}", self.run)).unwrap()
    }

    async fn fund(&self, account: &AccountId) {
        let plan = Plan { period: Period::Monthly, anchor_ms: 0, plan_credits: 1_000_000_000, addon_credits: 0 };
        self.redis.set_plan(&SetPlan { account: account.clone(), plan, request: self.request() }).await.unwrap();
    }

    /// A hold of `amount` on `account`, open for an hour.
    async fn hold(&self, account: &AccountId, amount: i64) -> ReservationId {
        let rules = Rules::default();
        let reserve = Reserve {
            account: account.clone(),
            user: UserId::parse("bench").unwrap(),
            category: rules.category("enrichment").unwrap(),
            amount,
            ttl_ms: 3_600_000,
            request: self.request(),
            labels: Labels::default(),
            partial: None,
        };
        self.redis.reserve(&reserve).await.unwrap().done().expect("funded").reservation
    }

    async fn commit(&self, reservation: &ReservationId) {
        let commit = Commit {
            reservation: reservation.clone(),
            amount: 1,
            final_commit: false,
            request: self.request(),
            business_key: None,
            labels: Labels::default(),
        };
        self.redis.commit(&commit).await.unwrap();
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = args();
    if args.embedded {
        return embedded::bench(args.rate, args.seconds, args.batch).await;
    }
    let run = format!("bench{}", chrono::Utc::now().timestamp_millis());
    let settings = RedisSettings {
        urls: vec![args.redis.clone()],
        cluster: false,
        shards: 16,
        key_prefix: format!("{run}:"),
        timeout: Duration::from_secs(5),
        wait: None,
        tls: Default::default(),
        password: None,
    };
    let redis = Arc::new(RedisEngine::connect(&settings, 86_400_000).await?);
    let store = Store::connect(&args.database).await?;
    let bench = Arc::new(Bench { redis: redis.clone(), run: run.clone(), requests: Default::default() });
    let outbox = Arc::new(RedisOutbox::join(redis.clone(), "bench".into(), Duration::from_secs(30)).await?);
    println!("run {run}: redis {} database {:?}", args.redis, store.backend());

    // Phase 1: fill the outbox, then drain it.
    let accounts = 32;
    let holds: Vec<ReservationId> = {
        let mut holds = Vec::new();
        for index in 0..accounts {
            let account = bench.account(index);
            bench.fund(&account).await;
            holds.push(bench.hold(&account, 100_000_000).await);
        }
        holds
    };
    let started = Instant::now();
    let per_hold = args.events.saturating_sub(accounts * 4) / accounts;
    let mut tasks = Vec::new();
    for hold in holds.clone() {
        let bench = bench.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_hold {
                bench.commit(&hold).await;
            }
        }));
    }
    for task in tasks {
        task.await?;
    }
    let backlog = outbox.backlog().await?.events;
    println!("phase 1: {backlog} events in the outbox after {:.1} s of commits", started.elapsed().as_secs_f64());
    let (mut read_time, mut write_time, mut ack_time, mut settled, mut batches) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0usize, 0usize);
    let drain = Instant::now();
    loop {
        let t = Instant::now();
        let Some((records, token)) = outbox.read(args.batch).await? else { break };
        read_time += t.elapsed();
        let t = Instant::now();
        settled += store.settle(&records, chrono::Utc::now().timestamp_millis()).await?.new;
        write_time += t.elapsed();
        let t = Instant::now();
        outbox.ack(token).await?;
        ack_time += t.elapsed();
        batches += 1;
    }
    let elapsed = drain.elapsed().as_secs_f64();
    println!(
        "phase 1: settled {settled} events in {elapsed:.2} s = {:.0} events/s ({batches} batches of up to {}); \
         time in reading {:.2} s, SQL writes {:.2} s, ack+trim {:.2} s",
        settled as f64 / elapsed,
        args.batch,
        read_time.as_secs_f64(),
        write_time.as_secs_f64(),
        ack_time.as_secs_f64()
    );

    // Phase 2: steady commits with a settler running; lag from commit to SQL row.
    let options = SettleOptions { batch_max: args.batch, ..SettleOptions::default() };
    let settler = Settler::new(outbox.clone(), store.clone(), options);
    let (stop, stopped) = watch::channel(());
    let settling = tokio::spawn(settler.run(stopped, Duration::from_secs(30)));
    let phase2_from = redis.now().await?;
    let steady = Instant::now();
    let tick = Duration::from_millis(10);
    let per_tick = (args.rate / 100).max(1);
    let mut ticker = tokio::time::interval(tick);
    let mut issued = 0usize;
    let mut inflight = Vec::new();
    while steady.elapsed() < Duration::from_secs(args.seconds) {
        ticker.tick().await;
        for i in 0..per_tick {
            let bench = bench.clone();
            let hold = holds[(issued + i) % holds.len()].clone();
            inflight.push(tokio::spawn(async move { bench.commit(&hold).await }));
        }
        issued += per_tick;
        if inflight.len() > 4 * per_tick {
            for task in inflight.drain(..) {
                task.await?;
            }
        }
    }
    for task in inflight {
        task.await?;
    }
    let achieved = issued as f64 / steady.elapsed().as_secs_f64();
    drop(stop);
    settling.await?;
    let pool = sqlx::AnyPool::connect(&args.database).await?;
    let rows = sqlx::query(
        "SELECT settled_ms - at_ms FROM ledger_events WHERE account_id LIKE $1 AND kind = 'committed' \
         AND at_ms >= $2",
    )
    .bind(format!("{run}-%"))
    .bind(phase2_from)
    .fetch_all(&pool)
    .await?;
    let mut lags: Vec<i64> = rows.iter().map(|row| row.get::<i64, _>(0)).collect();
    lags.sort_unstable();
    let steady_lags = lags;
    println!(
        "phase 2: {issued} commits at {achieved:.0}/s for {} s; lag commit -> SQL row over {} commits: \
         p50 {} ms, p99 {} ms, max {} ms",
        args.seconds,
        steady_lags.len(),
        percentile(&steady_lags, 0.50),
        percentile(&steady_lags, 0.99),
        steady_lags.last().copied().unwrap_or(0)
    );

    // Leave nothing behind in the shared Redis and database.
    for table in ["ledger_events", "reservations", "usage_totals", "lots", "account_totals"] {
        let sql = format!("DELETE FROM {table} WHERE account_id LIKE $1");
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(format!("{run}-%")).execute(&pool).await?;
    }
    let client = redis::Client::open(args.redis.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{run}:*")).query_async(&mut connection).await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL").arg(chunk).query_async::<()>(&mut connection).await?;
    }
    println!("cleaned up {} Redis keys and the run's SQL rows", keys.len());
    Ok(())
}

mod embedded {
    //! The embedded engine under a steady rate of Reserves, settling into SQLite.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{Duration, Instant};

    use credit_sidecar::engine::MemoryOutbox;
    use credit_sidecar::engine::{Engine, Error};
    use credit_sidecar::ledger::command::{Plan, Reserve, SetPlan};
    use credit_sidecar::ledger::{AccountId, Labels, Ledger, Period, RequestId, Rules, SystemClock, UserId};
    use credit_sidecar::server::{SettleSetup, spawn_settler};
    use credit_sidecar::settle::settler::SettleOptions;
    use credit_sidecar::settle::store::Store;
    use tokio::sync::watch;

    const ACCOUNTS: usize = 64;
    /// Workers issuing Reserves, each its share of the rate.
    const WORKERS: usize = 4;

    pub async fn bench(rate: usize, seconds: u64, batch: usize) -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("settle-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let store = Store::connect(&format!("sqlite://{}", dir.join("ledger.db").display())).await?;
        let rules = Rules::default();
        let outbox = Arc::new(MemoryOutbox::new(100_000));
        let ledger = Ledger::new(rules.request_id_retention_ms);
        let engine = Engine::embedded_with(rules.clone(), Arc::new(SystemClock), ledger, Some(outbox.clone()));
        let options = SettleOptions { batch_max: batch, ..SettleOptions::default() };
        let (stop, stopped) = watch::channel(());
        let grace = Duration::from_secs(60);
        let (settling, stats) = spawn_settler(
            &engine,
            &SettleSetup { store: store.clone(), options, consumer: String::new(), claim_idle: grace },
            stopped,
            grace,
        )
        .await?;
        let counter = Arc::new(AtomicU64::new(0));
        for index in 0..ACCOUNTS {
            let plan =
                Plan { period: Period::Monthly, anchor_ms: 0, plan_credits: 1_000_000_000_000, addon_credits: 0 };
            let request = RequestId::parse(&format!("plan-{index}"))?;
            engine.set_plan(&SetPlan { account: account(index), plan, request }).await?;
        }
        write_only(&rules, batch).await?;
        let (ok, refused, backlog_max) =
            (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let started = Instant::now();
        let settled_before = stats.settled.load(Ordering::Relaxed);
        let mut workers = Vec::new();
        for worker in 0..WORKERS {
            let (engine, rules, counter) = (engine.clone(), rules.clone(), counter.clone());
            let (ok, refused, outbox, backlog_max) = (ok.clone(), refused.clone(), outbox.clone(), backlog_max.clone());
            workers.push(tokio::spawn(async move {
                let tick = Duration::from_millis(10);
                let per_tick = (rate / WORKERS / 100).max(1);
                let mut ticker = tokio::time::interval(tick);
                // Open loop: each call waits until its records are durable, so each is a task.
                let mut calls = tokio::task::JoinSet::new();
                while started.elapsed() < Duration::from_secs(seconds) {
                    ticker.tick().await;
                    while calls.try_join_next().is_some() {}
                    for _ in 0..per_tick {
                        let n = counter.fetch_add(1, Ordering::Relaxed) as usize;
                        let reserve = Reserve {
                            account: account(n % ACCOUNTS),
                            user: UserId::parse(&format!("u{worker}")).unwrap(),
                            category: rules.category("enrichment").unwrap(),
                            amount: 1,
                            ttl_ms: 3_600_000,
                            request: RequestId::parse(&format!("r{n}")).unwrap(),
                            labels: Labels::default(),
                            partial: None,
                        };
                        let (engine, ok, refused) = (engine.clone(), ok.clone(), refused.clone());
                        calls.spawn(async move {
                            match engine.reserve(&reserve).await {
                                Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                                Err(Error::Unavailable(_)) => refused.fetch_add(1, Ordering::Relaxed),
                                Err(error) => panic!("{error}"),
                            };
                        });
                    }
                    backlog_max.fetch_max(outbox.len() as u64, Ordering::Relaxed);
                }
                while calls.join_next().await.is_some() {}
            }));
        }
        for worker in workers {
            worker.await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let settled_during = stats.settled.load(Ordering::Relaxed) - settled_before;
        let left = outbox.len();
        drop(stop);
        settling.await?;
        let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
        println!(
            "embedded, SQLite, batch {batch}: {} Reserves in {elapsed:.1} s = {:.0}/s asked; {ok} ok, {refused} refused; \
             settled {settled_during} events meanwhile = {:.0} events/s; largest backlog {}, {left} left at the end",
            ok + refused,
            (ok + refused) as f64 / elapsed,
            settled_during as f64 / elapsed,
            backlog_max.load(Ordering::Relaxed),
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    /// The store alone: 100,000 Reserved events from the model, written in batches.
    async fn write_only(rules: &Rules, batch: usize) -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("settle-bench-w{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let store = Store::connect(&format!("sqlite://{}", dir.join("ledger.db").display())).await?;
        let mut ledger = Ledger::new(rules.request_id_retention_ms);
        let now = chrono::Utc::now().timestamp_millis();
        for index in 0..ACCOUNTS {
            let plan =
                Plan { period: Period::Monthly, anchor_ms: 0, plan_credits: 1_000_000_000_000, addon_credits: 0 };
            let request = RequestId::parse(&format!("plan-{index}"))?;
            ledger.set_plan(now, &SetPlan { account: account(index), plan, request })?;
        }
        for n in 0..100_000 {
            let reserve = Reserve {
                account: account(n % ACCOUNTS),
                user: UserId::parse("u")?,
                category: rules.category("enrichment").unwrap(),
                amount: 1,
                ttl_ms: 3_600_000,
                request: RequestId::parse(&format!("r{n}"))?,
                labels: Labels::default(),
                partial: None,
            };
            ledger.reserve(now, &reserve)?;
        }
        let events = ledger.drain_events();
        let started = Instant::now();
        for chunk in events.chunks(batch) {
            store.write(chunk, now).await?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "store alone: {} events in batches of {batch} in {elapsed:.2} s = {:.0} events/s",
            events.len(),
            events.len() as f64 / elapsed
        );
        std::fs::remove_dir_all(&dir).ok();
        Ok(())
    }

    fn account(index: usize) -> AccountId {
        AccountId::parse(&format!("bench-a{index}")).unwrap()
    }
}
