//! Anchors written for the benchmark, to put the project's figures in proportion: a lean
//! reserve Lua script and the commands of Reserve, Commit, Release and GetBalance alone, driven
//! by `redis-benchmark`, and a PostgreSQL row-lock hold driven by `pgbench`. (The third anchor, a
//! gRPC no-op, runs against the sidecar: see `sidecar`.)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::servers::postgres_bin_dir;
use crate::stats::{Latencies, Percentiles, RedisProbe, Row, ScriptStats, latency_cell, rate_cell};

/// HGET the balance, compare, HINCRBY it down, HSET a hold record: the least a reserve does.
const LEAN_RESERVE: &str = "\
local available = tonumber(redis.call('HGET', KEYS[1], 'available') or '0')
local amount = tonumber(ARGV[1])
if available < amount then return 0 end
redis.call('HINCRBY', KEYS[1], 'available', -amount)
redis.call('HSET', KEYS[2], 'amount', amount, 'state', 'held')
return 1";

/// The commands a Reserve issues inside Redis on its common path (an account with nothing due, a
/// new request id, one lot drawn and not drained), in reserve.lua's order, with no logic around
/// them: what the semantics cost before any Lua decides anything. It mirrors the script by hand
/// (the benchmark's Reserve row counts the real script's inner commands beside it). KEYS: account,
/// users, request ids, burn order, lots, reservations (prefix), deadlines, outbox, forget
/// queue; ARGV[1] a fresh number (request id and reservation seq; the id's 14-character key
/// stands in for the one the engine passes).
const RESERVE_COMMANDS: &str = "\
local n = ARGV[1]
local request = 'r-' .. n
local key = string.format('k%013d', n)
redis.call('TIME')
redis.call('HMGET', KEYS[1], 'avail', 'held', 'spent', 'expired', 'res', 'ev', 'due', 'wake', 'gen', 'cs', 'qm')
redis.call('HGET', KEYS[3], key)
redis.call('HGET', KEYS[2], 'ann')
redis.call('HGET', KEYS[1], 'c:email')
redis.call('ZRANGE', KEYS[4], 0, 3)
redis.call('HMGET', KEYS[5], 'r1')
redis.call('HSET', KEYS[5], 'r1', 1000000000000)
redis.call('HSET', KEYS[6] .. '/' .. math.floor(tonumber(n) / 64), 'm' .. n, 'held,1,0,0,1700000300000,0,,1,1,1:1',
  'i' .. n, 'ann\\031email\\0311700000000000\\031' .. request .. '\\031{}')
redis.call('ZADD', KEYS[7], 1700000300000, n)
redis.call('XADD', KEYS[8], '*', 'account', 'acct', 'seq', n, 'at', 1700000000000, 'request', request, 'kind',
  'reserved', 'data', '{\"res\":' .. n .. ',\"user\":\"ann\",\"category\":\"email\",\"amount\":1,\"draws\":[[1,1]],' ..
  '\"deadline\":1700000300000,\"labels\":{}}')
redis.call('HSET', KEYS[2], 'ann', ',1,1')
redis.call('HSET', KEYS[3], key, '1700086700000\\031fp\\031ok\\031' .. n .. '\\0311\\0311700000300000\\031999')
redis.call('RPUSH', KEYS[9], key)
redis.call('HSET', KEYS[1], 'avail', 999, 'held', 1, 'res', n, 'ev', n, 'c:email', ',1,1')
return 1";

/// The commands a non-final Commit of 1 credit issues (commit.lua; the reservation, its answers
/// and the outbox), in order, with no logic around them. KEYS: account, reservations (prefix),
/// answers, outbox; ARGV[1] a fresh number (request id and reservation seq).
const COMMIT_COMMANDS: &str = "\
local n = ARGV[1]
local request = 'c-' .. n
local res = KEYS[2] .. '/' .. math.floor(tonumber(n) / 64)
redis.call('TIME')
redis.call('HMGET', KEYS[1], 'avail', 'held', 'spent', 'expired', 'res', 'ev', 'due', 'wake', 'gen', 'cs', 'qm')
redis.call('HMGET', res, 'm' .. n, 'i' .. n)
redis.call('HGET', KEYS[3], request)
redis.call('XADD', KEYS[4], '*', 'account', 'acct', 'seq', n, 'at', 1700000000000, 'request', request, 'kind',
  'committed', 'data', '{\"res\":' .. n .. ',\"user\":\"ann\",\"category\":\"email\",\"cycle\":1700000000000,' ..
  '\"amount\":1,\"draws\":[[1,1]],\"already\":false,\"labels\":{}}')
redis.call('HSET', KEYS[3], request, 'fp\\031ok\\0311\\031\\03149\\0310\\031' .. n ..
  '\\031held\\03150\\0311\\03149\\0310\\0311\\0311700000300000\\031')
redis.call('HSET', res, 'm' .. n, 'held,50,1,1,1700000300000,0,,1,50,1:49')
redis.call('HSET', KEYS[1], 'held', 49, 'spent', 1, 'ev', n)
return 1";

/// The commands a Release issues (release.lua: the reservation, its lot given back, the user's and
/// the category's usage, the deadline and purge schedules, the outbox, the answer), in order, with
/// no logic around them. KEYS: account, reservations (prefix), answers, lots, users, deadlines,
/// purge schedule, outbox; ARGV[1] a fresh number (request id and reservation seq).
const RELEASE_COMMANDS: &str = "\
local n = ARGV[1]
local request = 'x-' .. n
local res = KEYS[2] .. '/' .. math.floor(tonumber(n) / 64)
redis.call('TIME')
redis.call('HMGET', KEYS[1], 'avail', 'held', 'spent', 'expired', 'res', 'ev', 'due', 'wake', 'gen', 'cs', 'qm')
redis.call('HMGET', res, 'm' .. n, 'i' .. n)
redis.call('HGET', KEYS[3], request)
redis.call('HMGET', KEYS[4], 'r1', 'm1')
redis.call('HSET', KEYS[4], 'r1', 1000000000000)
redis.call('HGET', KEYS[5], 'ann')
redis.call('HSET', KEYS[5], 'ann', ',1,0')
redis.call('HGET', KEYS[1], 'c:email')
redis.call('HSET', res, 'm' .. n, 'released,50,1,1,1700000300000,49,1700000000000,1,0,')
redis.call('ZREM', KEYS[6], n)
redis.call('ZADD', KEYS[7], 1700086400000, 'r' .. n)
redis.call('XADD', KEYS[8], '*', 'account', 'acct', 'seq', n, 'at', 1700000000000, 'request', request, 'kind',
  'closed', 'data', '{\"res\":' .. n .. ',\"state\":\"released\",\"returned\":[[1,49]],\"expired\":0}')
redis.call('HSET', KEYS[3], request, 'fp\\031ok\\03149\\031' .. n ..
  '\\031released\\03150\\0311\\0310\\03149\\0311\\0311700000300000\\0311700000000000')
redis.call('HSET', KEYS[1], 'avail', 1000, 'held', 0, 'ev', n, 'c:email', ',1,0')
return 1";

/// The commands a GetBalance (or Quote) with a user and a category issues inside Redis
/// (balance.lua: the account's hot and cold fields, the user's and the category's usage; the
/// engine passes the time to reads), with no logic around them and a reply of the same size.
const BALANCE_COMMANDS: &str = "\
local hot = redis.call('HMGET', KEYS[1], 'avail', 'held', 'spent', 'expired', 'res', 'ev', 'due', 'wake', 'gen', 'cs',
  'qm')
local cold = redis.call('HMGET', KEYS[1], 'granted', 'ce', 'pg', 'ag', 'lot', 'trial', 'owed', 'pp', 'pa', 'pc', 'pd')
local user = redis.call('HGET', KEYS[2], 'ann')
local category = redis.call('HGET', KEYS[1], 'c:email')
return {'ok', hot[10], cold[2], cold[1], hot[1], hot[2], hot[3], hot[4], cold[7], 'ann', false, user, false,
  'email', 100, category, 99}";

/// An operation whose commands the benchmark sends alone, as the floor under its function's cost.
#[derive(Clone, Copy, Debug)]
pub enum Alone {
    Reserve,
    Commit,
    Release,
    GetBalance,
}

impl Alone {
    pub const ALL: [Alone; 4] = [Alone::Reserve, Alone::Commit, Alone::Release, Alone::GetBalance];

    /// The operation's name, as the scripts section's rows name it.
    pub fn name(self) -> &'static str {
        match self {
            Alone::Reserve => "Reserve",
            Alone::Commit => "Commit",
            Alone::Release => "Release",
            Alone::GetBalance => "GetBalance",
        }
    }

    fn script(self) -> &'static str {
        match self {
            Alone::Reserve => RESERVE_COMMANDS,
            Alone::Commit => COMMIT_COMMANDS,
            Alone::Release => RELEASE_COMMANDS,
            Alone::GetBalance => BALANCE_COMMANDS,
        }
    }

    /// The script's keys, by the names of [`Alone::key`].
    fn keys(self) -> &'static [&'static str] {
        match self {
            Alone::Reserve => &["a", "u", "q", "b", "l", "r", "d", "s", "f"],
            Alone::Commit => &["a", "r", "x", "s"],
            Alone::Release => &["a", "r", "x", "l", "u", "d", "p", "s"],
            Alone::GetBalance => &["a", "u"],
        }
    }

    fn key(self, prefix: &str, name: &str) -> String {
        format!("{prefix}alone:{{{}}}:{name}", self.name())
    }
}

/// redis-benchmark picks `__rand_int__` in 0..ACCOUNTS, written as 12 zero-padded digits.
const ACCOUNTS: usize = 1000;

/// What one anchor measurement came to.
pub struct Anchor {
    pub rate: f64,
    pub latency: Percentiles,
    /// In-Redis µs per script call (Redis anchors only).
    pub in_redis: Option<ScriptStats>,
}

impl Anchor {
    pub fn row(&self, section: &str, name: &str) -> Row {
        let mut row = Row::new(section, name);
        row.rate = Some(rate_cell(self.rate));
        row.latency = Some(latency_cell(self.latency));
        row.in_redis = self.in_redis.map(|s| format!("{:.1} ({:.1})", s.usec_per_call(), s.inner_per_call()));
        row
    }
}

/// Loads the lean script, funds the accounts, and returns its SHA.
pub async fn prepare_lean(probe: &RedisProbe, prefix: &str) -> String {
    let mut connection = probe.connection();
    let sha: String =
        redis::cmd("SCRIPT").arg("LOAD").arg(LEAN_RESERVE).query_async(&mut connection).await.expect("SCRIPT LOAD");
    let mut fund = redis::pipe();
    for account in 0..ACCOUNTS {
        fund.cmd("HSET").arg(format!("{prefix}lean:bal:{account:012}")).arg("available").arg(1_000_000_000_000_i64);
    }
    fund.query_async::<()>(&mut connection).await.expect("fund the lean anchor's accounts");
    sha
}

/// The lean script through EVALSHA by `redis-benchmark` with `clients` connections, unpipelined,
/// for about `seconds` (a short calibration run sizes the measured one).
pub async fn lean_reserve(
    probe: &RedisProbe,
    url: &str,
    prefix: &str,
    sha: &str,
    clients: usize,
    seconds: f64,
) -> Anchor {
    let keys = [format!("{prefix}lean:bal:__rand_int__"), format!("{prefix}lean:hold:__rand_int__")];
    let script = Evalsha { sha, keys: &keys, args: &["1".to_owned()], spread: ACCOUNTS };
    measure(probe, url, &script, clients, seconds).await
}

/// `which`'s commands alone through EVALSHA on one account, one connection, a fresh number per
/// call (collisions are rare), after giving the account what the commands read: a lot, a user,
/// every account field.
pub async fn commands_alone(probe: &RedisProbe, url: &str, prefix: &str, which: Alone, seconds: f64) -> Anchor {
    let mut connection = probe.connection();
    let sha: String =
        redis::cmd("SCRIPT").arg("LOAD").arg(which.script()).query_async(&mut connection).await.expect("SCRIPT LOAD");
    let key = |name: &str| which.key(prefix, name);
    let mut account = redis::cmd("HSET");
    account.arg(key("a")).arg("c:email").arg("100,1,1");
    for field in ["avail", "held", "spent", "expired", "res", "ev", "due", "wake", "gen", "cs", "granted", "ce"] {
        account.arg(field).arg(1_700_000_000_000_i64);
    }
    for field in ["pg", "ag", "lot", "trial", "pp", "pa", "pc", "pd"] {
        account.arg(field).arg(1);
    }
    redis::pipe()
        .add_command(account)
        .cmd("HSET")
        .arg(key("l"))
        .arg("r1")
        .arg(1_000_000_000_000_i64)
        .arg("m1")
        .arg("plan,1000000000000,1700000000000,1702592000000,1")
        .cmd("ZADD")
        .arg(key("b"))
        .arg(1_702_592_000_000_i64)
        .arg("00000000000000001")
        .cmd("HSET")
        .arg(key("u"))
        .arg("ann")
        .arg(",1,1")
        .query_async::<()>(&mut connection)
        .await
        .expect("give the commands-alone anchor its account");
    let keys: Vec<String> = which.keys().iter().map(|name| key(name)).collect();
    let script = Evalsha { sha: &sha, keys: &keys, args: &["__rand_int__".to_owned()], spread: 1_000_000_000 };
    measure(probe, url, &script, 1, seconds).await
}

/// One EVALSHA call as `redis-benchmark` sends it: `__rand_int__` in a key or argument becomes a
/// random 12-digit number below `spread`.
struct Evalsha<'a> {
    sha: &'a str,
    keys: &'a [String],
    args: &'a [String],
    spread: usize,
}

async fn measure(probe: &RedisProbe, url: &str, script: &Evalsha<'_>, clients: usize, seconds: f64) -> Anchor {
    let calibration = redis_benchmark(url, script, clients, 2_000);
    let requests = ((calibration.0 * seconds) as usize).max(2_000);
    probe.reset_stats().await;
    let (rate, latency) = redis_benchmark(url, script, clients, requests);
    Anchor { rate, latency, in_redis: Some(probe.script_stats().await) }
}

/// Runs redis-benchmark; returns (calls/s, percentiles in µs; redis-benchmark has no p999, so
/// its max stands in).
fn redis_benchmark(url: &str, script: &Evalsha<'_>, clients: usize, requests: usize) -> (f64, Percentiles) {
    let output = Command::new("redis-benchmark")
        .args(["-u", url, "-c", &clients.to_string(), "-n", &requests.to_string()])
        .args(["-r", &script.spread.to_string(), "--csv", "EVALSHA", script.sha, &script.keys.len().to_string()])
        .args(script.keys)
        .args(script.args)
        .output()
        .expect("redis-benchmark must be installed (Debian: redis-tools)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let fields: Vec<f64> = stdout
        .lines()
        .find(|line| line.starts_with("\"EVALSHA"))
        .unwrap_or_else(|| {
            panic!("redis-benchmark printed no result: {stdout} {}", String::from_utf8_lossy(&output.stderr))
        })
        .rsplit("\",\"")
        .take(7)
        .map(|field| field.trim_matches('"').parse().expect("a number in redis-benchmark's CSV"))
        .collect();
    // Reversed: max, p99, p95, p50, min, avg, rps.
    let ms_to_us = |ms: f64| ms * 1000.0;
    (fields[6], Percentiles { p50: ms_to_us(fields[3]), p99: ms_to_us(fields[1]), p999: ms_to_us(fields[0]) })
}

/// The PostgreSQL anchor's tables, funded; dropped again by [`drop_row_lock_tables`].
pub async fn prepare_row_lock(database_url: &str) {
    let pool = sqlx::PgPool::connect(database_url).await.expect("connect to PostgreSQL");
    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_holds, bench_accounts;
         CREATE TABLE bench_accounts (id INT PRIMARY KEY, available BIGINT NOT NULL);
         INSERT INTO bench_accounts SELECT g, 1000000000000000 FROM generate_series(1, 1000) g;
         CREATE TABLE bench_holds (id BIGSERIAL PRIMARY KEY, account_id INT NOT NULL, amount BIGINT NOT NULL,
                                   created TIMESTAMPTZ NOT NULL DEFAULT now());",
    )
    .execute(&pool)
    .await
    .expect("create the row-lock anchor's tables");
    pool.close().await;
}

pub async fn drop_row_lock_tables(database_url: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(database_url).await {
        sqlx::raw_sql("DROP TABLE IF EXISTS bench_holds, bench_accounts").execute(&pool).await.ok();
        pool.close().await;
    }
}

/// One transaction per hold: `UPDATE … available - 1 WHERE id = $2 AND available >= 1`, then
/// `INSERT INTO bench_holds`, by `pgbench` with `clients` connections, over the 1000 accounts or
/// (`hot`) on account 1 alone.
pub fn row_lock(database_url: &str, dir: &Path, clients: usize, hot: bool, seconds: f64) -> Anchor {
    let script = dir.join(if hot { "hot.sql" } else { "spread.sql" });
    let account = if hot { "\\set aid 1" } else { "\\set aid random(1, 1000)" };
    let text = format!(
        "{account}\nBEGIN;\nUPDATE bench_accounts SET available = available - 1 WHERE id = :aid AND available >= 1;\n\
         INSERT INTO bench_holds (account_id, amount) VALUES (:aid, 1);\nCOMMIT;\n"
    );
    std::fs::write(&script, text).expect("write the pgbench script");
    let log_prefix = dir.join(if hot { "pgbench-hot" } else { "pgbench-spread" });
    let pgbench = postgres_bin_dir().map_or_else(|| "pgbench".into(), |bin| bin.join("pgbench"));
    let output = Command::new(pgbench)
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &(seconds.ceil() as u64).max(1).to_string()])
        .arg("-f")
        .arg(&script)
        .arg("-l")
        .arg(format!("--log-prefix={}", log_prefix.display()))
        .arg(database_url)
        .output()
        .expect("pgbench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "pgbench failed: {stdout} {}", String::from_utf8_lossy(&output.stderr));
    let rate = stdout
        .lines()
        .find_map(|line| line.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
        .expect("pgbench prints tps");
    Anchor { rate, latency: pgbench_latencies(dir, &log_prefix).percentiles(), in_redis: None }
}

/// Per-transaction latencies from pgbench's logs (`client txn latency_us script epoch us`).
fn pgbench_latencies(dir: &Path, prefix: &Path) -> Latencies {
    let mut latencies = Latencies::default();
    let stem = prefix.file_name().and_then(|name| name.to_str()).unwrap_or_default().to_owned();
    for entry in std::fs::read_dir(dir).expect("the bench directory").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&stem) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for micros in text.lines().filter_map(|line| line.split_whitespace().nth(2)?.parse::<u64>().ok()) {
            latencies.push(Duration::from_micros(micros));
        }
        std::fs::remove_file(entry.path()).ok();
    }
    latencies
}
