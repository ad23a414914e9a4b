//! The Redis engine's own scripts, driven in-process through the public `RedisEngine` methods,
//! one call at a time: what each operation costs inside Redis (`INFO commandstats`, reset before
//! each operation's run), how Reserve's cost grows with lots, open holds and users, the raw
//! round trip of a Reserve ("engine direct"), and Redis memory per open hold and per remembered
//! request id. Nothing here names a key or a script: only commands' public types.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use credit_sidecar::engine::redis::{RedisEngine, RedisSettings};
use credit_sidecar::ledger::command::{
    Charge, Commit, Extend, Grant, Plan, Quote, Release, Reserve, SetPlan, SetUserLimit,
};
use credit_sidecar::ledger::{AccountId, Labels, LotKind, Millis, Period, RequestId, ReservationId, Rules, UserId};
use tokio::task::JoinSet;

use crate::stats::{Latencies, Percentiles, RedisProbe, ScriptStats};

const DAY_MS: Millis = 86_400_000;
/// Holds stay open for the whole run.
const TTL_MS: Millis = 3_600_000;
const CREDITS: i64 = 1_000_000_000_000;

/// One operation's run: what Redis spent inside the script calls, and the round trips.
#[derive(Clone, Debug)]
pub struct OpCost {
    pub name: String,
    pub stats: ScriptStats,
    pub rate: f64,
    pub latency: Percentiles,
    /// Extra words for the row (e.g. the sweep's cost per expired hold).
    pub note: Option<String>,
}

/// Bytes in Redis, from `used_memory_dataset` deltas with the outbox streams emptied around them.
#[derive(Clone, Copy, Debug)]
pub struct MemoryCost {
    pub per_request_id: f64,
    pub per_hold_without_request_id: f64,
    /// Outbox bytes per event-producing call, for the record.
    pub stream_per_reserve: f64,
    pub calls: usize,
}

#[derive(Clone)]
pub struct ScriptBench {
    engine: Arc<RedisEngine>,
    probe: RedisProbe,
    rules: Rules,
    run: String,
    /// Prefix of this bench's keys (so its outbox streams can be told from others').
    prefix: String,
    requests: Arc<AtomicU64>,
}

impl ScriptBench {
    pub async fn connect(url: &str, run: &str, probe: RedisProbe) -> Self {
        Self::with_prefix(url, run, &format!("{run}-ops:"), probe).await
    }

    /// An engine on keys under `prefix`: a sidecar's own prefix makes its calls land in that
    /// sidecar's accounts and outbox (so its settler settles them).
    pub async fn with_prefix(url: &str, run: &str, prefix: &str, probe: RedisProbe) -> Self {
        Self::with_retention(url, run, prefix, probe, DAY_MS).await
    }

    /// An engine that remembers request ids for `retention_ms`.
    pub async fn with_retention(url: &str, run: &str, prefix: &str, probe: RedisProbe, retention_ms: Millis) -> Self {
        let prefix = prefix.to_owned();
        let settings = RedisSettings {
            urls: vec![url.to_owned()],
            cluster: false,
            shards: 16,
            key_prefix: prefix.clone(),
            timeout: Duration::from_secs(10),
            wait: None,
            tls: Default::default(),
            password: None,
        };
        let engine = RedisEngine::connect(&settings, retention_ms).await.expect("connect the Redis engine");
        Self {
            engine: Arc::new(engine),
            probe,
            rules: Rules::default(),
            run: run.to_owned(),
            prefix,
            requests: Arc::default(),
        }
    }

    fn request(&self) -> RequestId {
        let n = self.requests.fetch_add(1, Ordering::Relaxed);
        RequestId::parse(&format!("{}-{n}", self.run)).expect("a valid request id")
    }

    fn account(&self, name: &str) -> AccountId {
        AccountId::parse(&format!("{}-{name}", self.run)).expect("a valid account id")
    }

    fn accounts(&self, group: &str, count: usize) -> Vec<AccountId> {
        (0..count).map(|index| self.account(&format!("{group}{index}"))).collect()
    }

    fn set_plan(&self, account: &AccountId) -> SetPlan {
        let plan = Plan { period: Period::Monthly, anchor_ms: 0, plan_credits: CREDITS, addon_credits: 0 };
        SetPlan { account: account.clone(), plan, request: self.request() }
    }

    fn reserve(&self, account: &AccountId, user: &str, ttl_ms: Millis) -> Reserve {
        Reserve {
            account: account.clone(),
            user: UserId::parse(user).expect("a valid user id"),
            category: self.rules.category("enrichment").expect("a default category"),
            amount: 1,
            ttl_ms,
            request: self.request(),
            labels: Labels::default(),
            partial: None,
        }
    }

    async fn fund(&self, account: &AccountId) {
        self.engine.set_plan(&self.set_plan(account)).await.expect("SetPlan").done().expect("SetPlan is not declined");
    }

    /// One Reserve of 1 credit on the account named `account` as it is (no run prefix added).
    pub async fn reserve_named(&self, account: &str) {
        let account = AccountId::parse(account).expect("a valid account id");
        self.hold(&account, "direct", TTL_MS).await;
    }

    async fn hold(&self, account: &AccountId, user: &str, ttl_ms: Millis) -> ReservationId {
        let reserved = self.engine.reserve(&self.reserve(account, user, ttl_ms)).await.expect("Reserve");
        reserved.done().expect("funded accounts never decline").reservation
    }

    /// Runs `call(i)` for i in 0..n one at a time, after CONFIG RESETSTAT; returns what Redis
    /// counted and the round trips.
    async fn measure(&self, name: &str, n: usize, mut call: impl AsyncFnMut(usize)) -> OpCost {
        self.probe.reset_stats().await;
        let mut latencies = Latencies::default();
        let started = Instant::now();
        for index in 0..n {
            let call_started = Instant::now();
            call(index).await;
            latencies.push(call_started.elapsed());
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        let stats = self.probe.script_stats().await;
        OpCost { name: name.to_owned(), stats, rate, latency: latencies.percentiles(), note: None }
    }

    /// Every operation, `n` calls each, on accounts with one plan lot; the sweep on `n` accounts
    /// with one overdue hold each. Reserve's round trips are the "engine direct" latency.
    pub async fn operations(&self, n: usize) -> Vec<OpCost> {
        let accounts = self.accounts("op", n);
        let granted = self.accounts("grant", n);
        for account in &granted {
            self.fund(account).await;
        }
        let engine = &self.engine;
        let mut costs = vec![self.measure("SetPlan", n, async |i| self.fund(&accounts[i]).await).await];
        costs.push(
            self.measure("Grant", n, async |i| {
                let grant = Grant {
                    account: granted[i].clone(),
                    kind: LotKind::Addon,
                    amount: 1_000,
                    expires_ms: None,
                    request: self.request(),
                    create_account: true,
                };
                engine.grant(&grant).await.expect("Grant").done().expect("Grant is not declined");
            })
            .await,
        );
        let mut holds = Vec::with_capacity(n);
        costs
            .push(self.measure("Reserve", n, async |i| holds.push(self.hold(&accounts[i], "ann", TTL_MS).await)).await);
        costs.push(
            self.measure("Commit", n, async |i| {
                let commit = Commit {
                    reservation: holds[i].clone(),
                    amount: 1,
                    final_commit: false,
                    request: self.request(),
                    business_key: None,
                    labels: Labels::default(),
                };
                engine.commit(&commit).await.expect("Commit").done().expect("Commit is not declined");
            })
            .await,
        );
        costs.push(
            self.measure("Extend", n, async |i| {
                let (reservation, ttl_ms) = (holds[i].clone(), Some(TTL_MS));
                let extend = Extend { reservation, amount: 1, ttl_ms, request: self.request(), partial: None };
                engine.extend(&extend).await.expect("Extend").done().expect("Extend is not declined");
            })
            .await,
        );
        costs.push(
            self.measure("Release", n, async |i| {
                let release = Release { reservation: holds[i].clone(), request: self.request() };
                engine.release(&release).await.expect("Release").done().expect("Release is not declined");
            })
            .await,
        );
        costs.push(
            self.measure("Charge", n, async |i| {
                let charge = Charge {
                    account: accounts[i].clone(),
                    user: UserId::parse("ann").expect("a valid user id"),
                    category: self.rules.category("enrichment").expect("a default category"),
                    amount: 1,
                    request: self.request(),
                    business_key: None,
                    overdraft: false,
                    labels: Labels::default(),
                };
                engine.charge(&charge).await.expect("Charge").done().expect("Charge is not declined");
            })
            .await,
        );
        let ann = UserId::parse("ann").expect("a valid user id");
        costs.push(
            self.measure("GetBalance", n, async |i| {
                engine.balance(&accounts[i], Some(&ann)).await.expect("GetBalance");
            })
            .await,
        );
        costs.push(
            self.measure("Quote", n, async |i| {
                let quote =
                    Quote { account: accounts[i].clone(), user: Some(ann.clone()), category: None, amount: 5, unit: 1 };
                engine.quote(&quote).await.expect("Quote");
            })
            .await,
        );
        costs.push(
            self.measure("GetReservation", n, async |i| {
                engine.reservation(&holds[i]).await.expect("GetReservation");
            })
            .await,
        );
        costs.push(
            self.measure("ListReservations", n, async |i| {
                engine.list_reservations(&accounts[i], None, 50, None).await.expect("ListReservations");
            })
            .await,
        );
        costs.push(self.sweep(n).await);
        costs
    }

    /// `n` accounts with a hold of the shortest TTL; once all are overdue, sweep passes until
    /// one expires nothing. Per script call, and per expired hold in the note.
    async fn sweep(&self, n: usize) -> OpCost {
        let accounts = self.accounts("sweep", n);
        for account in &accounts {
            self.fund(account).await;
            self.hold(account, "ann", self.rules.reservation_ttl_min_ms).await;
        }
        tokio::time::sleep(Duration::from_millis(self.rules.reservation_ttl_min_ms as u64 + 200)).await;
        let mut expired = 0;
        let mut passes = 0;
        let mut cost = self
            .measure("sweep", 1, async |_| {
                loop {
                    passes += 1;
                    match self.engine.sweep().await.expect("sweep") {
                        0 => break,
                        count => expired += count,
                    }
                }
            })
            .await;
        let per_hold = cost.stats.usec as f64 / expired.max(1) as f64;
        cost.note = Some(format!("{expired} holds expired in {passes} passes; {per_hold:.1} µs in Redis per hold"));
        cost
    }

    /// `n` request ids remembered on one account (SetUserLimits that change nothing); once all are
    /// past the engine's retention, sweep passes until one finds nothing to do. Per script call,
    /// and per id forgotten in the note. (Pair it with an engine of a short retention.)
    pub async fn forgetting(&self, n: usize, retention_ms: Millis) -> OpCost {
        let account = self.account("forget");
        self.fund(&account).await;
        self.concurrently(n, |bench, _| async move {
            bench.limit(&bench.account("forget"), "ann", CREDITS).await;
        })
        .await;
        tokio::time::sleep(Duration::from_millis(retention_ms as u64 + 200)).await;
        let mut passes = 0;
        let mut cost = self
            .measure("sweep, forgetting request ids", 1, async |_| {
                // The first pass forgets them (in bounded calls); the second finds nothing due.
                for _ in 0..2 {
                    passes += 1;
                    self.engine.sweep().await.expect("sweep");
                }
            })
            .await;
        let per_id = cost.stats.usec as f64 / n.max(1) as f64;
        cost.note = Some(format!("{n} ids forgotten in {passes} passes; {per_id:.1} µs in Redis per id"));
        cost
    }

    /// Reserve on accounts in a given shape: `n` calls spread over `accounts`.
    async fn reserve_on(&self, name: &str, accounts: &[AccountId], users: usize, n: usize) -> OpCost {
        self.measure(name, n, async |i| {
            let user = if users > 0 { format!("user{}", (i * 7919) % users) } else { "ann".to_owned() };
            self.hold(&accounts[i % accounts.len()], &user, TTL_MS).await;
        })
        .await
    }

    /// Reserve's in-Redis cost as accounts grow: 1, 10 and 100 lots (ten accounts each), one
    /// account with 10 000 open holds, one with 10 000 users that each have a limit.
    pub async fn reserve_shapes(&self, n: usize, big: usize) -> Vec<OpCost> {
        let mut costs = Vec::new();
        for lots in [1, 10, 100] {
            let accounts = self.accounts(&format!("lots{lots}-"), 10);
            for account in &accounts {
                self.with_lots(account, lots).await;
            }
            costs.push(self.reserve_on(&format!("Reserve, {lots} lot(s)"), &accounts, 0, n).await);
        }
        let crowded = vec![self.account("holds")];
        self.fund(&crowded[0]).await;
        self.concurrently(big, |bench, _| async move {
            bench.hold(&bench.account("holds"), "ann", TTL_MS).await;
        })
        .await;
        costs.push(self.reserve_on(&format!("Reserve, {big} open holds"), &crowded, 0, n).await);
        let peopled = vec![self.account("users")];
        self.fund(&peopled[0]).await;
        self.concurrently(big, |bench, i| async move {
            bench.limit(&bench.account("users"), &format!("user{i}"), CREDITS).await;
        })
        .await;
        costs.push(self.reserve_on(&format!("Reserve, {big} users with limits"), &peopled, big, n).await);
        costs
    }

    /// A plan lot and `lots - 1` add-on lots, each expiring at its own minute.
    async fn with_lots(&self, account: &AccountId, lots: usize) {
        self.fund(account).await;
        let now = self.engine.now().await.expect("Redis TIME");
        for index in 1..lots {
            let grant = Grant {
                account: account.clone(),
                kind: LotKind::Addon,
                amount: 1_000_000,
                expires_ms: Some(now + 600_000 + index as Millis * 60_000),
                request: self.request(),
                create_account: false,
            };
            self.engine.grant(&grant).await.expect("Grant").done().expect("Grant is not declined");
        }
    }

    async fn limit(&self, account: &AccountId, user: &str, limit: i64) {
        let cmd = SetUserLimit {
            account: account.clone(),
            user: UserId::parse(user).expect("a valid user id"),
            limit: Some(limit),
            request: self.request(),
        };
        self.engine.set_user_limit(&cmd).await.expect("SetUserLimit").done().expect("SetUserLimit is not declined");
    }

    /// Set-up work (not measured): `call(i)` for i in 0..count, 32 at a time.
    async fn concurrently<F, Fut>(&self, count: usize, call: F)
    where
        F: Fn(ScriptBench, usize) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        const WORKERS: usize = 32;
        let mut workers = JoinSet::new();
        for worker in 0..WORKERS {
            let (bench, call) = (self.clone(), call.clone());
            workers.spawn(async move {
                for index in (worker..count).step_by(WORKERS) {
                    call(bench.clone(), index).await;
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a set-up worker panicked");
        }
    }

    /// What `call` leaves in Redis, and what its outbox entries took: the dataset's bytes (see
    /// `RedisProbe::dataset_memory`) before the call with the outbox empty, after it, and after
    /// emptying the outbox again. Emptying the streams, which no settler reads here, stands for the settler
    /// deleting settled entries, and it measures their bytes exactly where `MEMORY USAGE` only
    /// estimates a stream (it counts a listpack's bytes, not the allocation holding them).
    async fn memory_delta(&self, call: impl AsyncFnOnce()) -> (i64, i64) {
        self.probe.empty_streams(&self.prefix).await;
        let before = self.probe.dataset_memory().await;
        call().await;
        let with_streams = self.probe.dataset_memory().await;
        self.probe.empty_streams(&self.prefix).await;
        let after = self.probe.dataset_memory().await;
        (after - before, with_streams - after)
    }

    /// `n` Reserves on one funded account (distinct request ids, no commits), then `n`
    /// SetUserLimit calls that change nothing but remember their request ids, each measured
    /// without the outbox entries it made (see `memory_delta`).
    pub async fn memory(&self, n: usize) -> MemoryCost {
        let account = self.account("memory");
        self.fund(&account).await;
        self.limit(&account, "ann", CREDITS).await;
        let (reserves, reserve_streams) = self
            .memory_delta(async || {
                self.concurrently(n, |bench, _| async move {
                    bench.hold(&bench.account("memory"), "ann", TTL_MS).await;
                })
                .await
            })
            .await;
        let (limits, _) = self
            .memory_delta(async || {
                self.concurrently(n, |bench, _| async move {
                    bench.limit(&bench.account("memory"), "ann", CREDITS).await;
                })
                .await
            })
            .await;
        let (per_request_id, per_hold) = (limits as f64 / n as f64, reserves as f64 / n as f64);
        MemoryCost {
            per_request_id,
            per_hold_without_request_id: per_hold - per_request_id,
            stream_per_reserve: reserve_streams as f64 / n as f64,
            calls: n,
        }
    }
}
