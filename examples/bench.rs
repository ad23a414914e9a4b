//! The project's benchmark: one command, one table, every ratio computed from figures measured
//! in the same run (figures from different runs or machines are not comparable).
//!
//! ```text
//! cargo run --release --example bench -- [--redis-url URL] [--database-url URL] [--seconds N]
//!                                        [--rate CALLS_PER_S] [--quick] [--sidecar PATH]
//! ```
//! Without URLs it starts a private `redis-server` (no persistence) and a private PostgreSQL
//! cluster (fsync on), each on a free loopback port in a temporary directory, and stops them at
//! the end. It builds and runs `target/release/credit-sidecar` as a child process. Progress goes
//! to stderr, the table to stdout. It asserts nothing: it measures.
//!
//! Rows:
//! 1. **anchors** written for the benchmark: a lean reserve Lua script through EVALSHA
//!    (`redis-benchmark`, 50 connections and 1), the commands a Reserve, a Commit, a Release and a
//!    GetBalance issue with no logic around them (the floors under those functions' cost), a PostgreSQL row-lock hold
//!    (`pgbench`, 16 clients, 1000 accounts and one hot account), and a gRPC no-op (Health/Check
//!    against the sidecar).
//! 2. **scripts**: each Redis-engine operation driven in-process through `RedisEngine`, one call
//!    at a time: µs inside Redis per script call and inner commands per call (`INFO
//!    commandstats`, reset before each run); Reserve on accounts with 1/10/100 lots, 10 000 open
//!    holds and 10 000 users; the in-process Reserve round trip ("engine direct").
//! 3. **sidecar** cells per engine: Reserve-only and Reserve→Commit→Release at 1/16/64/256 calls
//!    in flight over 10 000 accounts and on one hot account, plus an open-loop fixed-rate cell:
//!    calls/s, latency, CPU per call of the sidecar (`/proc`) and Redis (`INFO cpu`); and
//!    Redis-engine Reserves at one in flight through the sidecar and in-process by turns.
//! 4. **settlement** during each cell: events made per second, the settler's throughput from its
//!    first to its last batch in the cell, events settled per second of the cell, commit-to-SQL
//!    lag (all from `ledger_events`), and UNAVAILABLE refusals.
//! 5. **memory**: Redis bytes per remembered request id and per open hold (deltas of
//!    `used_memory_dataset`, the outbox streams emptied around them), what the sweep spends in
//!    Redis forgetting request ids once their retention passes (an engine with a 2 s retention),
//!    and the sidecar's RSS per engine.
//!
//! Only public interfaces are used (the gRPC API, `RedisEngine`'s methods, the binary, Redis and
//! SQL introspection), so the table stays comparable across rewrites of the engine's internals.

// The parts live in examples/bench/ (an example's root resolves modules beside itself).
#[path = "bench/anchors.rs"]
mod anchors;
#[path = "bench/scripts.rs"]
mod scripts;
#[path = "bench/servers.rs"]
mod servers;
#[path = "bench/sidecar.rs"]
mod sidecar;
#[path = "bench/stats.rs"]
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tonic::transport::Channel;

use crate::anchors::Alone;
use crate::scripts::{OpCost, ScriptBench};
use crate::servers::{PrivatePostgres, PrivateRedis};
use crate::sidecar::{EngineKind, Plan, Sidecar, Tally, Workload};
use crate::stats::{Percentiles, RedisProbe, Row, latency_cell, rate_cell, ratio, render};

/// Measures credit-sidecar and prints one table.
#[derive(Debug, Parser)]
struct Args {
    /// Use this Redis instead of a private one (its stats are reset; keys get a run prefix).
    #[arg(long)]
    redis_url: Option<String>,
    /// Use this PostgreSQL instead of a private one (tables bench_accounts/bench_holds are
    /// created and dropped; the sidecar's ledger tables are created if missing).
    #[arg(long)]
    database_url: Option<String>,
    /// Seconds per measured cell [default: 3, or 1 with --quick].
    #[arg(long)]
    seconds: Option<f64>,
    /// Calls/s of the open-loop Reserve cells.
    #[arg(long, default_value_t = 25_000.0)]
    rate: f64,
    /// A short smoke run: fewer calls, smaller accounts, short cells.
    #[arg(long)]
    quick: bool,
    /// The sidecar binary [default: target/release/credit-sidecar, built first].
    #[arg(long)]
    sidecar: Option<PathBuf>,
}

/// How much work each part does.
struct Sizes {
    cell: Duration,
    /// Calls per operation in the scripts section.
    ops: usize,
    /// Open holds / users in the crowded-account rows.
    crowd: usize,
    /// Calls in the memory measurement.
    memory: usize,
    /// Accounts the spread cells run over.
    spread: usize,
    in_flight: [usize; 4],
}

impl Sizes {
    fn of(args: &Args) -> Self {
        let seconds = args.seconds.unwrap_or(if args.quick { 1.0 } else { 3.0 });
        let cell = Duration::from_secs_f64(seconds);
        let in_flight = [1, 16, 64, 256];
        if args.quick {
            Self { cell, ops: 300, crowd: 1_000, memory: 2_000, spread: 1_000, in_flight }
        } else {
            Self { cell, ops: 2_000, crowd: 10_000, memory: 10_000, spread: 10_000, in_flight }
        }
    }
}

/// Figures later rows are compared with.
#[derive(Default)]
struct Baselines {
    /// In-Redis µs per call of the lean script, one connection.
    lean_us: f64,
    /// In-Redis µs per call of an operation's commands with no logic around them, by operation.
    commands_alone_us: Vec<(&'static str, f64)>,
    /// PostgreSQL row-lock tps over 1000 accounts, and on the hot account.
    pg_spread: f64,
    pg_hot: f64,
    /// `RedisEngine::reserve` in-process, one in flight.
    engine_direct: Percentiles,
}

struct Bench {
    sizes: Sizes,
    rate: f64,
    run: String,
    redis_url: String,
    database_url: String,
    probe: RedisProbe,
    binary: PathBuf,
    /// The private PostgreSQL's postmaster, whose CPU the Redis-engine cells count.
    postgres_pid: Option<u32>,
    dir: tempfile::TempDir,
    baselines: Baselines,
    rows: Vec<Row>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let binary = sidecar::binary(args.sidecar.clone());
    sqlx::any::install_default_drivers();
    let redis_server = args.redis_url.is_none().then(PrivateRedis::start);
    let postgres_server = args.database_url.is_none().then(PrivatePostgres::start);
    let redis_url = args.redis_url.clone().or_else(|| redis_server.as_ref().map(PrivateRedis::url));
    let database_url = args.database_url.clone().or_else(|| postgres_server.as_ref().map(PrivatePostgres::url));
    let (redis_url, database_url) = (redis_url.expect("a Redis"), database_url.expect("a PostgreSQL"));
    let started = Instant::now();
    let mut bench = Bench {
        sizes: Sizes::of(&args),
        rate: args.rate,
        run: format!("b{}", sidecar::now_ms()),
        probe: RedisProbe::connect(&redis_url).await,
        redis_url,
        database_url,
        binary,
        postgres_pid: postgres_server.as_ref().map(PrivatePostgres::pid),
        dir: tempfile::tempdir().expect("a temporary directory"),
        baselines: Baselines::default(),
        rows: Vec::new(),
    };
    bench.anchors().await;
    bench.scripts().await;
    bench.memory().await;
    for engine in [EngineKind::Redis, EngineKind::Embedded] {
        bench.sidecar(engine).await;
    }
    anchors::drop_row_lock_tables(&bench.database_url).await;
    eprintln!("done in {:.0} s", started.elapsed().as_secs_f64());
    println!("{}", render(&bench.rows));
    println!("{}", bench.notes(args.redis_url.is_some(), args.database_url.is_some()));
}

impl Bench {
    fn seconds(&self) -> f64 {
        self.sizes.cell.as_secs_f64()
    }

    async fn anchors(&mut self) {
        eprintln!("anchors: lean reserve script (redis-benchmark)");
        let prefix = format!("{}-lean:", self.run);
        let sha = anchors::prepare_lean(&self.probe, &prefix).await;
        for clients in [50, 1] {
            let lean =
                anchors::lean_reserve(&self.probe, &self.redis_url, &prefix, &sha, clients, self.seconds()).await;
            if clients == 1 {
                self.baselines.lean_us = lean.in_redis.map_or(0.0, |stats| stats.usec_per_call());
            }
            let name = format!("lean reserve Lua, EVALSHA, {clients} conn, 1000 accts");
            self.rows.push(lean.row("anchor", &name));
        }
        for which in Alone::ALL {
            eprintln!("anchors: {}'s commands alone (redis-benchmark)", which.name());
            let alone = anchors::commands_alone(&self.probe, &self.redis_url, &prefix, which, self.seconds()).await;
            let us = alone.in_redis.map_or(0.0, |stats| stats.usec_per_call());
            let mut row = alone.row("anchor", &format!("{}'s commands alone, no logic, EVALSHA, 1 conn", which.name()));
            row.ratio = Some(format!("{:.1}× lean", ratio(us, self.baselines.lean_us)));
            self.rows.push(row);
            self.baselines.commands_alone_us.push((which.name(), us));
        }
        eprintln!("anchors: PostgreSQL row-lock hold (pgbench)");
        anchors::prepare_row_lock(&self.database_url).await;
        for hot in [false, true] {
            let hold = anchors::row_lock(&self.database_url, self.dir.path(), 16, hot, self.seconds());
            if hot {
                self.baselines.pg_hot = hold.rate;
            } else {
                self.baselines.pg_spread = hold.rate;
            }
            let accounts = if hot { "hot account" } else { "1000 accts" };
            self.rows.push(hold.row("anchor", &format!("PostgreSQL row-lock hold, 16 clients, {accounts}")));
        }
    }

    /// µs in Redis per call of operation `name`'s commands alone (Quote issues GetBalance's).
    fn commands_alone_us(&self, name: &str) -> Option<f64> {
        let name = if name == "Quote" { "GetBalance" } else { name };
        self.baselines.commands_alone_us.iter().find(|(which, _)| *which == name).map(|(_, us)| *us)
    }

    async fn scripts(&mut self) {
        eprintln!("scripts: every operation in-process, {} calls each", self.sizes.ops);
        let bench = ScriptBench::connect(&self.redis_url, &self.run, self.probe.clone()).await;
        for cost in bench.operations(self.sizes.ops).await {
            if cost.name == "Reserve" {
                self.baselines.engine_direct = cost.latency;
            }
            let vs_lean = ratio(cost.stats.usec_per_call(), self.baselines.lean_us);
            let mut row = script_row(&cost);
            row.ratio = Some(match &cost.note {
                Some(note) => format!("{vs_lean:.1}× lean; {note}"),
                None => format!("{vs_lean:.1}× lean"),
            });
            if let Some(alone_us) = self.commands_alone_us(&cost.name) {
                let vs_alone = ratio(cost.stats.usec_per_call(), alone_us);
                let direct = if cost.name == "Reserve" { "; latency = engine direct" } else { "" };
                row.ratio = Some(format!("{vs_lean:.1}× lean, {vs_alone:.1}× its commands alone{direct}"));
            }
            if cost.note.is_some() {
                // One timed sweep, not a series of calls: no rate or percentiles.
                (row.rate, row.latency) = (None, None);
            }
            self.rows.push(row);
        }
        eprintln!("scripts: Reserve by account shape");
        let shapes = bench.reserve_shapes(self.sizes.ops, self.sizes.crowd).await;
        let one_lot = shapes[0].stats.usec_per_call();
        for cost in shapes {
            let mut row = script_row(&cost);
            row.ratio = Some(format!("{:.2}× 1 lot", ratio(cost.stats.usec_per_call(), one_lot)));
            self.rows.push(row);
        }
    }

    async fn memory(&mut self) {
        let n = self.sizes.memory;
        eprintln!("memory: {n} Reserves and {n} SetUserLimits, then {n} request ids forgotten");
        let bench = ScriptBench::connect(&self.redis_url, &format!("{}m", self.run), self.probe.clone()).await;
        let memory = bench.memory(self.sizes.memory).await;
        let mut row = Row::new("memory", "Redis bytes per remembered request id");
        row.in_redis = Some(format!("{:.0} B", memory.per_request_id));
        row.ratio = Some(format!("SetUserLimit ×{} changing nothing; their outbox entries not counted", memory.calls));
        self.rows.push(row);
        let mut row = Row::new("memory", "Redis bytes per open hold, without its request id");
        row.in_redis = Some(format!("{:.0} B", memory.per_hold_without_request_id));
        row.ratio = Some(format!(
            "Reserve ×{} on one account; their outbox entries ({:.0} B a Reserve until settled) not counted",
            memory.calls, memory.stream_per_reserve
        ));
        self.rows.push(row);
        // What forgetting them costs the sweep, with a retention short enough to wait out.
        const RETENTION_MS: i64 = 2_000;
        let run = format!("{}f", self.run);
        let forgetting = ScriptBench::with_retention(
            &self.redis_url,
            &run,
            &format!("{run}-ops:"),
            self.probe.clone(),
            RETENTION_MS,
        )
        .await;
        let cost = forgetting.forgetting(self.sizes.memory, RETENTION_MS).await;
        let mut row = script_row(&cost);
        (row.section, row.rate, row.latency) = ("memory".to_owned(), None, None);
        row.ratio = cost.note.clone();
        self.rows.push(row);
    }

    async fn sidecar(&mut self, engine: EngineKind) {
        eprintln!("sidecar, {} engine: starting {}", engine.name(), self.binary.display());
        let prefix = format!("{}-sc:", self.run);
        let sidecar = match engine {
            EngineKind::Redis => {
                Sidecar::start(&self.binary, Some((&self.redis_url, &prefix)), Some(&self.database_url)).await
            }
            EngineKind::Embedded => Sidecar::start(&self.binary, None, None).await,
        };
        let channels = sidecar.channels(16).await;
        let tag = format!("{}-{}", self.run, engine.name());
        let spread: Arc<Vec<String>> = Arc::new((0..self.sizes.spread).map(|i| format!("{tag}-a{i}")).collect());
        eprintln!("  funding {} accounts", spread.len());
        sidecar::fund(&channels, &spread, &tag).await;
        if engine == EngineKind::Redis {
            for in_flight in self.sizes.in_flight {
                let plan = Plan { workload: Workload::Health, accounts: spread.clone(), tag: format!("{tag}-h") };
                let row = self.cell(&sidecar, &channels, engine, plan, Load::InFlight(in_flight)).await.0;
                self.rows.push(Row {
                    section: "anchor".into(),
                    name: format!("gRPC no-op Health/Check ×{in_flight}"),
                    ..row
                });
            }
        }
        let mut cell_index = 0;
        for workload in [Workload::Reserve, Workload::Flow] {
            for hot in [false, true] {
                for in_flight in self.sizes.in_flight {
                    cell_index += 1;
                    let accounts =
                        if hot { self.hot_account(&channels, &tag, cell_index).await } else { spread.clone() };
                    let plan = Plan { workload, accounts, tag: format!("{tag}-c{cell_index}") };
                    let (mut row, figures) =
                        self.cell(&sidecar, &channels, engine, plan, Load::InFlight(in_flight)).await;
                    row.ratio = self.cell_ratio(engine, workload, hot, in_flight, &figures);
                    self.rows.push(row);
                }
            }
        }
        if engine == EngineKind::Redis {
            let row = self.alternating(&sidecar, &channels, &prefix, spread.clone(), &format!("{tag}-alt")).await;
            self.rows.push(row);
        }
        // A CSV worker's rows: one Commit per row against one CommitBatch per 100 rows.
        let mut rows_per_second = Vec::new();
        for batched in [false, true] {
            cell_index += 1;
            let plan = Plan {
                workload: Workload::Rows { batched },
                accounts: spread.clone(),
                tag: format!("{tag}-c{cell_index}"),
            };
            let (mut row, figures) = self.cell(&sidecar, &channels, engine, plan, Load::InFlight(16)).await;
            row.ratio = Some(format!("{:.0} rows/s", figures.rows));
            rows_per_second.push(figures.rows);
            self.rows.push(row);
        }
        if let [single, batched] = rows_per_second[..] {
            let mut row = Row::new("sidecar", format!("{} CommitBatch rows/s vs one Commit per row", engine.name()));
            row.ratio = Some(format!("{:.1}× ({batched:.0} vs {single:.0} rows/s)", ratio(batched, single)));
            self.rows.push(row);
        }
        let plan = Plan { workload: Workload::Reserve, accounts: spread.clone(), tag: format!("{tag}-rate") };
        let row = self.cell(&sidecar, &channels, engine, plan, Load::Rate(self.rate)).await.0;
        self.rows.push(row);
        let mut rss = Row::new("memory", format!("sidecar RSS after the cells, {} engine", engine.name()));
        rss.in_redis = Some(format!("{:.0} MiB", sidecar.rss_mib()));
        self.rows.push(rss);
        sidecar.stop();
    }

    /// Redis Reserve ×1 through the sidecar, alternating with the same Reserve made in-process on
    /// the sidecar's own keys (its settler settles both): the sidecar's overhead measured against
    /// round trips that meet the same machine, Redis and settlement at the same moments. The
    /// scripts section's "engine direct" ran with nothing else going on.
    async fn alternating(
        &self,
        sidecar: &Sidecar,
        channels: &[Channel],
        prefix: &str,
        accounts: Arc<Vec<String>>,
        tag: &str,
    ) -> Row {
        let name = format!("redis Reserve ×1 alternating with engine direct, same keys, {} accts", accounts.len());
        eprintln!("  {name}");
        sidecar.wait_settled(0.0).await;
        let direct = ScriptBench::with_prefix(&self.redis_url, tag, prefix, self.probe.clone()).await;
        let plan = Plan { workload: Workload::Reserve, accounts: accounts.clone(), tag: tag.to_owned() };
        let started = Instant::now();
        let (mut tally, mut direct_latencies) =
            sidecar::alternating(&channels[..1], &plan, self.sizes.cell, async |index| {
                direct.reserve_named(&accounts[index]).await;
            })
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let (latency, direct) = (tally.latencies.percentiles(), direct_latencies.percentiles());
        let mut row = Row::new("sidecar", name);
        row.rate = Some(rate_cell(tally.calls() as f64 / elapsed));
        row.latency = Some(latency_cell(latency));
        row.problems = Some(problems(&tally));
        row.ratio = Some(format!(
            "p50 {:+.0} µs, p99 {:+.0} µs over engine direct in this cell ({})",
            latency.p50 - direct.p50,
            latency.p99 - direct.p99,
            latency_cell(direct)
        ));
        row
    }

    /// A fresh hot account per cell (funded, settled), so holds of earlier cells do not pile up.
    async fn hot_account(&self, channels: &[Channel], tag: &str, cell: usize) -> Arc<Vec<String>> {
        let account = format!("{tag}-hot{cell}");
        sidecar::fund(channels, std::slice::from_ref(&account), &format!("{tag}-hot{cell}")).await;
        Arc::new(vec![account])
    }

    /// One measured cell, with CPU and settlement around it.
    async fn cell(
        &self,
        sidecar: &Sidecar,
        channels: &[Channel],
        engine: EngineKind,
        plan: Plan,
        load: Load,
    ) -> (Row, CellFigures) {
        let name = cell_name(engine, &plan, load);
        eprintln!("  {name}");
        sidecar.wait_settled(0.0).await;
        let redis_engine = engine == EngineKind::Redis;
        let settled_before = sidecar.settled_total().await;
        let cpu_before = self.cpu_sample(sidecar, redis_engine).await;
        let from = sidecar::now_ms();
        let started = Instant::now();
        let connections = match load {
            Load::InFlight(in_flight) => in_flight.div_ceil(16).min(channels.len()),
            Load::Rate(_) => channels.len(),
        };
        let channels = &channels[..connections];
        let plan = Arc::new(plan);
        let mut tally = match load {
            Load::InFlight(in_flight) => sidecar::closed_loop(channels, plan.clone(), in_flight, self.sizes.cell).await,
            Load::Rate(rate) => sidecar::fixed_rate(channels, plan.clone(), rate, self.sizes.cell, 1_000).await,
        };
        let elapsed = started.elapsed().as_secs_f64();
        let to = sidecar::now_ms();
        let cpu = self.cpu_sample(sidecar, redis_engine).await.since(&cpu_before);
        let settled = sidecar.settled_total().await - settled_before;
        let calls = tally.calls() as f64;
        let latency = tally.latencies.percentiles();
        let mut row = Row::new("sidecar", name);
        row.rate = Some(rate_cell(calls / elapsed));
        row.latency = Some(latency_cell(latency));
        row.cpu = Some(cpu.cell(calls, elapsed));
        row.problems = Some(problems(&tally));
        if plan.workload != Workload::Health {
            // Every answered state change made at least one event.
            let changes = tally.calls() as u64 - tally.declines - tally.errors();
            sidecar.wait_settled(settled_before + changes as f64).await;
            let settlement = sidecar::ledger_settlement(&sidecar.database_url, from, to).await;
            let settled_per_s = settlement.settled_per_s.map_or_else(|| "–".to_owned(), |rate| format!("{rate:.0}"));
            row.settle = Some(format!(
                "{:.0}→{settled_per_s} ({:.0}), {:.0} / {:.0}",
                settlement.made as f64 / elapsed,
                settled / elapsed,
                settlement.lag.p50,
                settlement.lag.p99
            ));
        }
        (row, CellFigures { rate: calls / elapsed, latency, rows: tally.rows as f64 / elapsed })
    }

    /// CPU seconds used so far by this process (the load generator), the sidecar, Redis (Redis
    /// engine only) and the private PostgreSQL (Redis engine only: the embedded engine's ledger
    /// is SQLite inside the sidecar).
    async fn cpu_sample(&self, sidecar: &Sidecar, redis_engine: bool) -> CpuSample {
        let seconds = |ticks: u64| ticks as f64 / clock_ticks_per_second();
        CpuSample {
            client: seconds(sidecar::cpu_ticks_of(std::process::id())),
            sidecar: seconds(sidecar.cpu_ticks()),
            redis: if redis_engine { Some(self.probe.cpu_seconds().await) } else { None },
            postgres: self.postgres_pid.filter(|_| redis_engine).map(|pid| seconds(sidecar::tree_cpu_ticks(pid))),
        }
    }

    /// Redis Reserve at 64 in flight vs PostgreSQL; 1 in flight vs the engine's own round trip.
    fn cell_ratio(
        &self,
        engine: EngineKind,
        workload: Workload,
        hot: bool,
        in_flight: usize,
        cell: &CellFigures,
    ) -> Option<String> {
        if engine != EngineKind::Redis || workload != Workload::Reserve {
            return None;
        }
        let direct = self.baselines.engine_direct;
        match in_flight {
            64 => {
                let pg = if hot { self.baselines.pg_hot } else { self.baselines.pg_spread };
                let which = if hot { "hot" } else { "1000 accts" };
                Some(format!("{:.1}× PostgreSQL row lock ({which})", ratio(cell.rate, pg)))
            }
            1 => Some(format!(
                "p50 {:+.0} µs, p99 {:+.0} µs over engine direct",
                cell.latency.p50 - direct.p50,
                cell.latency.p99 - direct.p99
            )),
            _ => None,
        }
    }

    fn notes(&self, own_redis: bool, own_database: bool) -> String {
        let redis = if own_redis { "given Redis" } else { "private redis-server (--save \"\" --appendonly no)" };
        let database =
            if own_database { "given PostgreSQL" } else { "private PostgreSQL (fsync on, synchronous_commit on)" };
        format!(
            "\nRun {}: {} s per cell, {} calls per script row; {redis}; {database}; embedded engine settles into \
             SQLite in a temporary directory. {} cores shared by the load generator, the sidecar, Redis and PostgreSQL.\n\
             Latencies in µs (anchor and sidecar rows: as seen by the client; pgbench rows: per transaction). \
             \"in Redis µs/call (cmds)\": INFO commandstats µs per script call and inner commands per call. \
             CPU: µs per call of the load generator, the sidecar, Redis (INFO cpu) and the private PostgreSQL \
             (postmaster and backends, /proc), and (busy) their sum per second over the cores. \
             Settlement: events made per second in the cell (ledger rows by their own time) → events per second the \
             settler wrote from its first batch landing in the cell to its last, the first batch's events not counted \
             (its throughput while running: in a steady state the rate events are made at, below it when settlement \
             falls behind), in brackets events settled per second of the cell (credit_sidecar_settled_events_total: \
             short of the events made by what was still waiting when the cell ended), and settled_ms - at_ms lag. Errors are UNAVAILABLE (u), RESOURCE_EXHAUSTED (x), \
             other (o); open-loop steps over the client's cap of 1000 in flight are skipped (s). \
             Figures are comparable only within one run.",
            self.run,
            self.seconds(),
            self.sizes.ops,
            std::thread::available_parallelism().map_or(0, usize::from),
        )
    }
}

#[derive(Clone, Copy)]
enum Load {
    InFlight(usize),
    Rate(f64),
}

/// CPU seconds per process, or their differences over a cell. `None`: not measured (not used
/// by the engine, or a server the benchmark did not start).
#[derive(Clone, Copy)]
struct CpuSample {
    client: f64,
    sidecar: f64,
    redis: Option<f64>,
    postgres: Option<f64>,
}

impl CpuSample {
    fn since(&self, before: &CpuSample) -> CpuSample {
        let minus = |now: Option<f64>, then: Option<f64>| Some(now? - then?);
        CpuSample {
            client: self.client - before.client,
            sidecar: self.sidecar - before.sidecar,
            redis: minus(self.redis, before.redis),
            postgres: minus(self.postgres, before.postgres),
        }
    }

    /// "client / sidecar / redis / pg" µs per call, and how busy that kept the machine's cores
    /// (their sum × calls/s over the cores: near 100 % the cell ran out of CPU, not of work).
    fn cell(&self, calls: f64, elapsed: f64) -> String {
        let per_call = |seconds: f64| ratio(seconds * 1e6, calls);
        let shown =
            |seconds: Option<f64>| seconds.map_or("-".to_owned(), |seconds| format!("{:.1}", per_call(seconds)));
        let total = self.client + self.sidecar + self.redis.unwrap_or(0.0) + self.postgres.unwrap_or(0.0);
        let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
        format!(
            "{:.1} / {:.1} / {} / {} ({:.0} %)",
            per_call(self.client),
            per_call(self.sidecar),
            shown(self.redis),
            shown(self.postgres),
            100.0 * ratio(total, elapsed * cores)
        )
    }
}

struct CellFigures {
    rate: f64,
    latency: Percentiles,
    /// Rows committed per second (the rows cells).
    rows: f64,
}

fn cell_name(engine: EngineKind, plan: &Plan, load: Load) -> String {
    let what = match plan.workload {
        Workload::Health => "Health/Check",
        Workload::Reserve => "Reserve",
        Workload::Flow => "Reserve→Commit→Release",
        Workload::Rows { batched: false } => "Reserve→100 Commits→Release (CSV rows)",
        Workload::Rows { batched: true } => "Reserve→CommitBatch of 100→Release (CSV rows)",
    };
    let accounts = match plan.accounts.len() {
        1 => "hot account".to_owned(),
        count => format!("{count} accts"),
    };
    match load {
        Load::InFlight(in_flight) => format!("{} {what} ×{in_flight}, {accounts}", engine.name()),
        Load::Rate(rate) => format!("{} {what} open loop {rate:.0}/s, {accounts}", engine.name()),
    }
}

fn script_row(cost: &OpCost) -> Row {
    let mut row = Row::new("scripts", cost.name.clone());
    row.rate = Some(rate_cell(cost.rate));
    row.latency = Some(latency_cell(cost.latency));
    row.in_redis = Some(format!("{:.1} ({:.1})", cost.stats.usec_per_call(), cost.stats.inner_per_call()));
    row
}

fn problems(tally: &Tally) -> String {
    let mut errors = Vec::new();
    for (count, code) in
        [(tally.unavailable, "u"), (tally.exhausted, "x"), (tally.other_errors, "o"), (tally.skipped, "s")]
    {
        if count > 0 {
            errors.push(format!("{count}{code}"));
        }
    }
    let errors = if errors.is_empty() { "0".to_owned() } else { errors.join(" ") };
    format!("{} / {errors}", tally.declines)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|output| String::from_utf8_lossy(&output.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
