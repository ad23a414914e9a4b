//! Figures and their presentation: latency percentiles, Redis introspection (`INFO`,
//! `MEMORY`), and the one table the benchmark prints.

use redis::aio::MultiplexedConnection;

/// Latencies in microseconds; percentiles by sorting (a cell holds at most a few million).
#[derive(Clone, Debug, Default)]
pub struct Latencies(Vec<u32>);

impl Latencies {
    pub fn push(&mut self, elapsed: std::time::Duration) {
        self.0.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// p50, p99 and p999, in µs.
    pub fn percentiles(&mut self) -> Percentiles {
        percentiles(&mut self.0)
    }
}

/// p50, p99 and p999 of `values` (sorted in place), nearest rank; 0 for none.
pub fn percentiles<T: Copy + Ord + Into<f64>>(values: &mut [T]) -> Percentiles {
    values.sort_unstable();
    let at = |p: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        values[((values.len() - 1) as f64 * p).round() as usize].into()
    };
    Percentiles { p50: at(0.50), p99: at(0.99), p999: at(0.999) }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
}

/// Script calls and what ran inside them, from `INFO commandstats` since the last RESETSTAT.
#[derive(Clone, Copy, Debug, Default)]
pub struct ScriptStats {
    /// EVAL/EVALSHA/FCALL/FCALL_RO (and their _RO forms) calls.
    pub calls: u64,
    /// µs Redis spent in them (commands run by a script are included in the script's time).
    pub usec: u64,
    /// Every other data command: the ones scripts ran.
    pub inner_calls: u64,
}

impl ScriptStats {
    pub fn usec_per_call(&self) -> f64 {
        ratio(self.usec as f64, self.calls as f64)
    }

    pub fn inner_per_call(&self) -> f64 {
        ratio(self.inner_calls as f64, self.calls as f64)
    }
}

const SCRIPT_COMMANDS: [&str; 6] = ["evalsha", "eval", "fcall", "fcall_ro", "evalsha_ro", "eval_ro"];
/// Commands the benchmark itself or a client library sends; not work a script did.
const ADMIN_COMMANDS: [&str; 11] =
    ["info", "config", "script", "function", "memory", "client", "hello", "select", "ping", "scan", "command"];

/// Introspection of a Redis through its own connection, layout-agnostic.
#[derive(Clone)]
pub struct RedisProbe {
    connection: MultiplexedConnection,
}

impl RedisProbe {
    pub async fn connect(url: &str) -> Self {
        let client = redis::Client::open(url).expect("a valid Redis URL");
        let connection = client.get_multiplexed_async_connection().await.expect("connect to Redis");
        Self { connection }
    }

    pub fn connection(&self) -> MultiplexedConnection {
        self.connection.clone()
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        let mut connection = self.connection.clone();
        command.query_async(&mut connection).await.expect("a Redis introspection command")
    }

    pub async fn reset_stats(&self) {
        self.query::<()>(redis::cmd("CONFIG").arg("RESETSTAT")).await;
    }

    async fn info(&self, section: &str) -> String {
        self.query(redis::cmd("INFO").arg(section)).await
    }

    pub async fn script_stats(&self) -> ScriptStats {
        let mut stats = ScriptStats::default();
        for line in self.info("commandstats").await.lines() {
            let Some((name, fields)) = line.strip_prefix("cmdstat_").and_then(|line| line.split_once(':')) else {
                continue;
            };
            let field = |key: &str| -> u64 {
                fields.split(',').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('=')?.parse().ok()).unwrap_or(0)
            };
            let family = name.split('|').next().unwrap_or(name);
            if SCRIPT_COMMANDS.contains(&family) {
                stats.calls += field("calls");
                stats.usec += field("usec");
            } else if !ADMIN_COMMANDS.contains(&family) {
                stats.inner_calls += field("calls");
            }
        }
        stats
    }

    /// used_cpu_sys + used_cpu_user, in seconds.
    pub async fn cpu_seconds(&self) -> f64 {
        self.info("cpu")
            .await
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(key, _)| *key == "used_cpu_sys" || *key == "used_cpu_user")
            .filter_map(|(_, value)| value.trim().parse::<f64>().ok())
            .sum()
    }

    /// The bytes of data Redis holds (`used_memory_dataset`: `used_memory` less the server's
    /// overhead, which counts client buffers and the keyspace's own table, whose growth and
    /// incremental rehashing land in whichever measurement they happen to fall in), after
    /// `MEMORY PURGE`.
    pub async fn dataset_memory(&self) -> i64 {
        self.query::<()>(redis::cmd("MEMORY").arg("PURGE")).await;
        self.info("memory")
            .await
            .lines()
            .find_map(|line| line.strip_prefix("used_memory_dataset:")?.trim().parse().ok())
            .expect("INFO memory has used_memory_dataset")
    }

    /// Empties every stream key whose name starts with `prefix` (`XTRIM … MAXLEN 0`), found with
    /// `SCAN … TYPE stream`: the outbox, wherever the engine keeps it. Only for an engine whose
    /// events no settler reads.
    pub async fn empty_streams(&self, prefix: &str) {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .query(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(format!("{prefix}*"))
                        .arg("COUNT")
                        .arg(1000)
                        .arg("TYPE")
                        .arg("stream"),
                )
                .await;
            for key in keys {
                self.query::<()>(redis::cmd("XTRIM").arg(&key).arg("MAXLEN").arg(0)).await;
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

/// a / b, or 0 when b is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// One row of the table; a column left `None` prints as blank.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub section: String,
    pub name: String,
    pub rate: Option<String>,
    pub latency: Option<String>,
    pub in_redis: Option<String>,
    pub cpu: Option<String>,
    pub settle: Option<String>,
    pub problems: Option<String>,
    pub ratio: Option<String>,
}

const HEADERS: [&str; 9] = [
    "section",
    "row",
    "calls/s",
    "p50 / p99 / p999 µs",
    "in Redis µs/call (cmds)",
    "CPU µs/call client / sidecar / redis / pg (busy)",
    "settle: made→settled ev/s (in cell), lag p50/p99 ms",
    "declines / errors",
    "ratio",
];

impl Row {
    pub fn new(section: &str, name: impl Into<String>) -> Self {
        Self { section: section.to_owned(), name: name.into(), ..Self::default() }
    }

    fn cells(&self) -> [String; 9] {
        let text = |cell: &Option<String>| cell.clone().unwrap_or_default();
        [
            self.section.clone(),
            self.name.clone(),
            text(&self.rate),
            text(&self.latency),
            text(&self.in_redis),
            text(&self.cpu),
            text(&self.settle),
            text(&self.problems),
            text(&self.ratio),
        ]
    }
}

pub fn latency_cell(p: Percentiles) -> String {
    format!("{:.0} / {:.0} / {:.0}", p.p50, p.p99, p.p999)
}

pub fn rate_cell(rate: f64) -> String {
    format!("{rate:.0}")
}

/// The table, markdown-friendly, every column padded to its widest cell.
pub fn render(rows: &[Row]) -> String {
    let table: Vec<[String; 9]> =
        std::iter::once(HEADERS.map(str::to_owned)).chain(rows.iter().map(Row::cells)).collect();
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|column| table.iter().map(|row| row[column].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |cells: &[String; 9]| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.chars().count())))
            .collect();
        format!("| {} |", padded.join(" | "))
    };
    let rule: Vec<String> = widths.iter().map(|width| "-".repeat(*width)).collect();
    let mut out = vec![line(&table[0]), format!("|-{}-|", rule.join("-|-"))];
    out.extend(table[1..].iter().map(line));
    out.join("\n")
}
