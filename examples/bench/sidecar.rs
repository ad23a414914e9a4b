//! The sidecar end to end: the release binary as a child process, driven through the generated
//! tonic clients over several HTTP/2 connections, closed-loop (N calls in flight) or open-loop
//! (a fixed rate). Around each cell: the sidecar's CPU from `/proc/<pid>/stat`, Redis CPU from
//! `INFO cpu`, settlement from `/metrics` and from the ledger table itself.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use sqlx::Row as _;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::servers::free_port;
use crate::stats::{Latencies, Percentiles, percentiles};

/// Holds made by the load stay open for the whole run.
const TTL_MS: i64 = 600_000;
/// Credits per account: nothing declines.
const CREDITS: i64 = 1_000_000_000_000;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    Redis,
    Embedded,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Embedded => "embedded",
        }
    }
}

/// A running `credit-sidecar serve`, stopped with SIGTERM when dropped.
pub struct Sidecar {
    child: Child,
    pub grpc: SocketAddr,
    metrics: SocketAddr,
    /// The ledger it settles into (for lag queries).
    pub database_url: String,
    dir: TempDir,
}

impl Sidecar {
    /// Redis engine: `redis` = (URL, key prefix) and a database URL. Embedded engine: neither,
    /// and its default SQLite ledger in a temporary working directory.
    pub async fn start(binary: &Path, redis: Option<(&str, &str)>, database_url: Option<&str>) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let log = std::fs::File::create(dir.path().join("sidecar.log")).expect("the sidecar's log file");
        let mut command = Command::new(binary);
        command
            .current_dir(dir.path())
            .args(["--listen", &grpc.to_string(), "--metrics-listen", &metrics.to_string(), "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        for variable in ["REDIS_URL", "DATABASE_URL", "CREDIT_SIDECAR_CONFIG"] {
            command.env_remove(variable);
        }
        for (variable, _) in std::env::vars().filter(|(name, _)| name.starts_with("CREDIT_SIDECAR_")) {
            command.env_remove(variable);
        }
        if let Some((url, prefix)) = redis {
            command.args(["--redis-url", url, "--redis-key-prefix", prefix]);
        }
        if let Some(url) = database_url {
            command.args(["--database-url", url]);
        }
        let database_url = database_url
            .map_or_else(|| format!("sqlite://{}", dir.path().join("credit-sidecar.db").display()), str::to_owned);
        let child = command.spawn().unwrap_or_else(|error| panic!("run {}: {error}", binary.display()));
        let mut sidecar = Self { child, grpc, metrics, database_url, dir };
        sidecar.wait_until_serving().await;
        sidecar
    }

    async fn wait_until_serving(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("the sidecar's status") {
                panic!("the sidecar exited ({status}):\n{}", self.log());
            }
            if let Ok(channel) = self.channel().await {
                let request = HealthCheckRequest { service: String::new() };
                let answer = HealthClient::new(channel).check(request).await;
                if answer.is_ok_and(|answer| answer.into_inner().status() == ServingStatus::Serving) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the sidecar was not SERVING within {READY_TIMEOUT:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// A new HTTP/2 connection.
    pub async fn channel(&self) -> Result<Channel, tonic::transport::Error> {
        Channel::from_shared(format!("http://{}", self.grpc)).expect("a valid URI").connect().await
    }

    pub async fn channels(&self, count: usize) -> Vec<Channel> {
        let mut channels = Vec::with_capacity(count);
        for _ in 0..count {
            channels.push(self.channel().await.expect("connect to the sidecar"));
        }
        channels
    }

    fn proc_file(&self, name: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{name}", self.child.id())).unwrap_or_default()
    }

    /// utime + stime, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks_of(self.child.id())
    }

    /// VmRSS in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = self.proc_file("status");
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kib / 1024.0
    }

    /// Every sample of `/metrics`, summed over labels, by metric name.
    pub async fn metrics(&self) -> HashMap<String, f64> {
        let mut stream = tokio::net::TcpStream::connect(self.metrics).await.expect("connect to /metrics");
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").await.expect("request /metrics");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("read /metrics");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let mut samples = HashMap::new();
        for line in body.lines().filter(|line| !line.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let name = series.split('{').next().unwrap_or(series);
            *samples.entry(name.to_owned()).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
        samples
    }

    pub async fn settled_total(&self) -> f64 {
        self.metrics().await.get("credit_sidecar_settled_events_total").copied().unwrap_or(0.0)
    }

    /// Waits until at least `at_least` events have settled in all, the outbox is empty and
    /// nothing more settles (bounded). The backlog gauge alone is not enough: it is not
    /// refreshed while the settler retries a failed read.
    pub async fn wait_settled(&self, at_least: f64) {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let mut last = -1.0;
        loop {
            let metrics = self.metrics().await;
            let settled = metrics.get("credit_sidecar_settled_events_total").copied().unwrap_or(0.0);
            let backlog = metrics.get("credit_sidecar_settle_backlog_events").copied().unwrap_or(0.0);
            if backlog == 0.0 && settled == last && settled >= at_least {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("  settlement still has {backlog} events after {SETTLE_TIMEOUT:?}; going on");
                return;
            }
            last = settled;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit (bounded, then SIGKILL).
    pub fn stop(mut self) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().ok();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

/// `/proc/<pid>/stat`'s fields after the command name (field 3, the state, first).
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    // The state is a letter: 0 in its place keeps the indices.
    rest.split(' ').map(|value| value.parse().unwrap_or(0)).collect()
}

/// utime + stime of process `pid`, in clock ticks (0 once it is gone).
pub fn cpu_ticks_of(pid: u32) -> u64 {
    let fields = stat_fields(pid);
    let field = |index: usize| fields.get(index - 3).copied().unwrap_or(0);
    field(14) + field(15)
}

/// utime + stime of process `parent` and of its children alive now (a PostgreSQL postmaster and
/// its backends), in clock ticks.
pub fn tree_cpu_ticks(parent: u32) -> u64 {
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).get(1).copied() == Some(u64::from(parent)))
        .map(cpu_ticks_of)
        .sum();
    cpu_ticks_of(parent) + children
}

/// What a cell's load does per step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// grpc.health.v1 Health/Check: the gRPC floor.
    Health,
    Reserve,
    /// Reserve, Commit 1 (not final), Release: three calls.
    Flow,
    /// A CSV worker's batch: Reserve [`ROWS`] credits, commit each row (one Commit per row, or
    /// one CommitBatch of all of them), Release.
    Rows {
        batched: bool,
    },
}

/// Rows per batch in the [`Workload::Rows`] cells.
pub const ROWS: usize = 100;

/// Calls, their latencies and what went wrong.
#[derive(Debug, Default)]
pub struct Tally {
    pub latencies: Latencies,
    pub declines: u64,
    pub unavailable: u64,
    pub exhausted: u64,
    pub other_errors: u64,
    /// Open-loop calls not sent because the client's in-flight cap was reached.
    pub skipped: u64,
    /// Rows committed ([`Workload::Rows`]).
    pub rows: u64,
}

impl Tally {
    pub fn calls(&self) -> usize {
        self.latencies.len()
    }

    fn record(&mut self, started: Instant, result: Result<bool, tonic::Status>) -> bool {
        self.latencies.push(started.elapsed());
        match result {
            Ok(true) => return true,
            Ok(false) => self.declines += 1,
            Err(status) if status.code() == tonic::Code::Unavailable => self.unavailable += 1,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => self.exhausted += 1,
            Err(_) => self.other_errors += 1,
        }
        false
    }

    pub fn errors(&self) -> u64 {
        self.unavailable + self.exhausted + self.other_errors
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.declines += other.declines;
        self.unavailable += other.unavailable;
        self.exhausted += other.exhausted;
        self.other_errors += other.other_errors;
        self.skipped += other.skipped;
        self.rows += other.rows;
    }
}

/// One connection's clients.
#[derive(Clone)]
struct Clients {
    authorizer: CreditAuthorizerClient<Channel>,
    health: HealthClient<Channel>,
}

/// What a cell does: the workload, on which accounts, with request ids tagged by the cell.
pub struct Plan {
    pub workload: Workload,
    pub accounts: Arc<Vec<String>>,
    pub tag: String,
}

impl Plan {
    fn account(&self, worker: usize, step: u64) -> &str {
        &self.accounts[self.index(worker, step)]
    }

    /// The account `worker` uses at `step`: scattered, and different per worker.
    fn index(&self, worker: usize, step: u64) -> usize {
        (step.wrapping_mul(2_654_435_761).wrapping_add(worker as u64 * 40_503) % self.accounts.len() as u64) as usize
    }

    async fn step(&self, clients: &mut Clients, worker: usize, step: u64, tally: &mut Tally) {
        let started = Instant::now();
        if self.workload == Workload::Health {
            let answer = clients.health.check(HealthCheckRequest { service: String::new() }).await;
            tally.record(started, answer.map(|_| true));
            return;
        }
        let request_id = format!("{}-{worker}-{step}", self.tag);
        let amount = if matches!(self.workload, Workload::Rows { .. }) { ROWS as i64 } else { 1 };
        let reserve = pb::ReserveRequest {
            account_id: self.account(worker, step).to_owned(),
            user_id: format!("user{}", worker % 16),
            category: "enrichment".into(),
            cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(amount)) }),
            ttl_ms: TTL_MS,
            request_id: format!("{request_id}-r"),
            labels: HashMap::new(),
            min_quantity: 0,
        };
        let answer = clients.authorizer.reserve(reserve).await.map(|answer| answer.into_inner());
        let reservation = answer.as_ref().ok().map(|answer| answer.reservation_id.clone());
        let ok = tally.record(started, answer.map(|answer| answer.outcome() == pb::Outcome::Ok));
        let (true, Some(reservation)) = (ok, reservation) else { return };
        match self.workload {
            Workload::Flow => commit_rows(clients, &reservation, &request_id, 1, tally).await,
            Workload::Rows { batched: false } => commit_rows(clients, &reservation, &request_id, ROWS, tally).await,
            Workload::Rows { batched: true } => commit_batch(clients, &reservation, &request_id, tally).await,
            Workload::Health | Workload::Reserve => return,
        }
        let started = Instant::now();
        let release = pb::ReleaseRequest { reservation_id: reservation, request_id: format!("{request_id}-x") };
        let answer = clients.authorizer.release(release).await;
        tally.record(started, answer.map(|answer| answer.into_inner().outcome() == pb::Outcome::Ok));
    }
}

/// One Commit of 1 credit per row.
async fn commit_rows(clients: &mut Clients, reservation: &str, request_id: &str, rows: usize, tally: &mut Tally) {
    for row in 0..rows {
        let started = Instant::now();
        let commit = pb::CommitRequest {
            reservation_id: reservation.to_owned(),
            cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(1)) }),
            r#final: false,
            request_id: format!("{request_id}-c{row}"),
            business_key: String::new(),
            labels: HashMap::new(),
        };
        let answer = clients.authorizer.commit(commit).await;
        if tally.record(started, answer.map(|answer| answer.into_inner().outcome() == pb::Outcome::Ok)) {
            tally.rows += 1;
        }
    }
}

/// [`ROWS`] rows of 1 credit in one CommitBatch.
async fn commit_batch(clients: &mut Clients, reservation: &str, request_id: &str, tally: &mut Tally) {
    let started = Instant::now();
    let items = (0..ROWS)
        .map(|row| pb::CommitItem {
            item_id: format!("{request_id}-c{row}"),
            cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(1)) }),
            business_key: String::new(),
            labels: HashMap::new(),
        })
        .collect();
    let batch = pb::CommitBatchRequest { reservation_id: reservation.to_owned(), items };
    let answer = clients.authorizer.commit_batch(batch).await.map(|answer| answer.into_inner());
    let rows = answer
        .as_ref()
        .map_or(0, |answer| answer.items.iter().filter(|item| item.outcome() == pb::Outcome::Ok).count());
    if tally.record(started, answer.map(|_| rows == ROWS)) {
        tally.rows += rows as u64;
    }
}

fn clients(channels: &[Channel], worker: usize) -> Clients {
    let channel = channels[worker % channels.len()].clone();
    Clients { authorizer: CreditAuthorizerClient::new(channel.clone()), health: HealthClient::new(channel) }
}

/// One worker that alternates a step of `plan` with `direct(index of an account)`, timed apart, until
/// `duration` has passed: one call in flight at any time, and both kinds of call meet the same
/// machine, Redis and settlement at the same moments. Returns the plan's tally and the direct
/// calls' latencies.
pub async fn alternating(
    channels: &[Channel],
    plan: &Plan,
    duration: Duration,
    mut direct: impl AsyncFnMut(usize),
) -> (Tally, Latencies) {
    let mut clients = clients(channels, 0);
    let (mut tally, mut direct_latencies) = (Tally::default(), Latencies::default());
    let deadline = Instant::now() + duration;
    let mut step = 0;
    while Instant::now() < deadline {
        plan.step(&mut clients, 0, step, &mut tally).await;
        let started = Instant::now();
        direct(plan.index(1, step)).await;
        direct_latencies.push(started.elapsed());
        step += 1;
    }
    (tally, direct_latencies)
}

/// `in_flight` workers, each calling back to back until `duration` has passed.
pub async fn closed_loop(channels: &[Channel], plan: Arc<Plan>, in_flight: usize, duration: Duration) -> Tally {
    let deadline = Instant::now() + duration;
    let mut workers = JoinSet::new();
    for worker in 0..in_flight {
        let (mut clients, plan) = (clients(channels, worker), plan.clone());
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut step = 0;
            while Instant::now() < deadline {
                plan.step(&mut clients, worker, step, &mut tally).await;
                step += 1;
            }
            tally
        });
    }
    let mut tally = Tally::default();
    while let Some(worker) = workers.join_next().await {
        tally.merge(worker.expect("a load worker panicked"));
    }
    tally
}

/// Open loop: steps started at `rate` per second whatever the answers' latency, at most `cap`
/// in flight (the rest are counted as skipped).
pub async fn fixed_rate(channels: &[Channel], plan: Arc<Plan>, rate: f64, duration: Duration, cap: usize) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let permits = Arc::new(Semaphore::new(cap));
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (started, mut issued, mut skipped) = (Instant::now(), 0u64, 0u64);
    while started.elapsed() < duration {
        ticker.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while issued < due {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                skipped += due - issued;
                issued = due;
                break;
            };
            let (mut clients, plan, tally) = (clients(channels, issued as usize), plan.clone(), tally.clone());
            let step = issued;
            tokio::spawn(async move {
                let mut own = Tally::default();
                plan.step(&mut clients, 0, step, &mut own).await;
                tally.lock().expect("the tally lock").merge(own);
                drop(permit);
            });
            issued += 1;
        }
    }
    let _all = permits.acquire_many(cap as u32).await.expect("the semaphore stays open");
    let mut tally = std::mem::take(&mut *tally.lock().expect("the tally lock"));
    tally.skipped = skipped;
    tally
}

/// Funds `accounts` with a plan of [`CREDITS`] through CreditAdmin.SetPlan, 64 calls at a time.
pub async fn fund(channels: &[Channel], accounts: &[String], tag: &str) {
    let accounts = Arc::new(accounts.to_vec());
    let mut workers = JoinSet::new();
    for worker in 0..64 {
        let (channel, accounts, tag) = (channels[worker % channels.len()].clone(), accounts.clone(), tag.to_owned());
        workers.spawn(async move {
            let mut admin = CreditAdminClient::new(channel);
            for index in (worker..accounts.len()).step_by(64) {
                let request = pb::SetPlanRequest {
                    account_id: accounts[index].clone(),
                    period: pb::Period::Monthly as i32,
                    anchor_unix_ms: 0,
                    plan_credits: CREDITS,
                    addon_credits: 0,
                    request_id: format!("{tag}-plan-{index}"),
                };
                admin.set_plan(request).await.expect("SetPlan through the sidecar");
            }
        });
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("a funding worker panicked");
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

/// Settlement during a cell, from the ledger table.
pub struct Settlement {
    /// Events made in the cell (by their own time).
    pub made: usize,
    /// Their commit-to-SQL lag (`settled_ms - at_ms`) percentiles in ms.
    pub lag: Percentiles,
    /// Events per second the settler wrote between the first and the last batch that landed in
    /// the cell, the first batch's events not counted (they were made before it started): its
    /// throughput while it ran, which in a steady state is the rate events are made at, and
    /// below it when settlement falls behind. None with fewer than two batches.
    pub settled_per_s: Option<f64>,
}

/// Settlement of the events made in [from, to]: what `Settlement` says. Batches are told apart by
/// their `settled_ms` (when the settler began the write that landed them; two begun in the same
/// millisecond count as one, which changes nothing but the first batch left out).
pub async fn ledger_settlement(database_url: &str, from: i64, to: i64) -> Settlement {
    let pool = sqlx::AnyPool::connect(database_url).await.expect("connect to the ledger database");
    let sql = format!("SELECT settled_ms - at_ms FROM ledger_events WHERE at_ms >= {from} AND at_ms <= {to}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.expect("read ledger_events");
    let sql = format!(
        "SELECT settled_ms, COUNT(*) FROM ledger_events WHERE settled_ms >= {from} AND settled_ms <= {to} \
         GROUP BY settled_ms ORDER BY settled_ms"
    );
    let batches = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.expect("read ledger_events");
    pool.close().await;
    // Clocks of one host; a lag is never negative, and i32 milliseconds is plenty.
    let mut lags: Vec<i32> = rows.iter().map(|row| row.get::<i64, _>(0).clamp(0, i64::from(i32::MAX)) as i32).collect();
    let batches: Vec<(i64, i64)> = batches.iter().map(|row| (row.get::<i64, _>(0), row.get::<i64, _>(1))).collect();
    let settled_per_s = match (batches.first(), batches.last()) {
        (Some(&(first, _)), Some(&(last, _))) if last > first => {
            let events: i64 = batches[1..].iter().map(|&(_, count)| count).sum();
            Some(events as f64 * 1000.0 / (last - first) as f64)
        }
        _ => None,
    };
    Settlement { made: rows.len(), lag: percentiles(&mut lags), settled_per_s }
}

/// The sidecar binary beside this example's (`target/<profile>/credit-sidecar`), built first
/// when run through cargo so that it matches the source.
pub fn binary(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(path) = explicit {
        return path;
    }
    let exe = std::env::current_exe().expect("this program's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/examples/bench");
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut build = Command::new(cargo);
        build.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--bin", "credit-sidecar"]);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        eprintln!("building the sidecar: {build:?}");
        assert!(build.status().expect("cargo runs").success(), "building credit-sidecar failed");
    }
    let path = profile_dir.join("credit-sidecar");
    assert!(path.is_file(), "{} is missing: cargo build --release --bin credit-sidecar", path.display());
    path
}
