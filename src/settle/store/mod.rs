//! The durable store: PostgreSQL or SQLite through one sqlx code path (the `Any` driver), with
//! the migrations embedded in the binary and applied at start.
//!
//! [`Store::write`] settles a batch of events in one transaction: a multi-row insert-if-absent
//! into `ledger_events` keyed on each event's own identity (account, seq) returns the events
//! that are new; only those are folded into the derived tables (reservations, usage, lots,
//! totals), with commutative upserts, so a batch written twice, or two replicas writing
//! overlapping batches in any order, have exactly the effect of writing each event once.
//!
//! - `write`: settling a batch (events, derived tables, the embedded engine's kept state);
//! - `read`: the ledger read back (events, totals, usage, settled reservations);
//! - `durable`: the embedded engine's remembered answers and snapshots.
//!
//! SQL uses `$n` placeholders, native to PostgreSQL and accepted by SQLite, always numbered in
//! order of appearance — except the multi-row statements on SQLite, which use `?` (see
//! [`push_tuples`]).

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe};

mod alerts;
mod durable;
mod read;
mod write;

pub use alerts::{AlertCursor, AlertRow, Delivery};
pub use read::{LineItem, SettledReservation, SettledTotals, UsageRow};

/// Rows per multi-row statement (well under both databases' bind-parameter limits).
const ROWS_PER_STATEMENT: usize = 500;

/// SQLite's page cache per connection, in KiB.
const SQLITE_CACHE_KIB: u32 = 65_536;

/// WAL pages (4 KiB each) after which a commit copies the WAL back into the database file
/// itself: the backstop under [`Store::checkpoint`], which normally leaves it only the frames
/// of the last few batches (so that the WAL can start over from its beginning).
const SQLITE_CHECKPOINT_PAGES: u32 = 10_000;

/// How often the server checkpoints a SQLite ledger in the background ([`Store::checkpoint`]).
pub const SQLITE_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database schema: {0}")]
    Schema(String),
    #[error("ledger row {account}/{seq}: {reason}")]
    Corrupt { account: String, seq: i64, reason: String },
}

type Result<T> = std::result::Result<T, StoreError>;

/// Connections to PostgreSQL per process: the settler's writers (at most
/// [`crate::settle::settler::SETTLE_WRITERS_MAX`]) and the API's ledger reads and alerts share
/// them.
pub const POSTGRES_CONNECTIONS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// How SQLite makes a commit durable (its `synchronous` pragma; the journal is always WAL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// A commit is in the WAL file when it returns; the WAL is synced at checkpoints. A crash
    /// of the process loses nothing; a power loss or OS crash may lose the latest commits.
    #[default]
    Normal,
    /// The WAL is synced at every commit: a power loss loses nothing either, for an fsync per
    /// settled batch.
    Full,
}

/// What settling a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    /// Events written for the first time.
    pub new: usize,
    /// Events whose identity was settled before with other content: kept in
    /// `ledger_conflicts`. Proof that Redis lost acknowledged writes.
    pub conflicts: usize,
}

#[derive(Clone)]
pub struct Store {
    /// Reads (and PostgreSQL's writes).
    pool: AnyPool,
    /// Where settlement writes: on SQLite one connection of its own, on PostgreSQL `pool`.
    /// SQLite keeps a page cache per connection and drops it when another connection has
    /// written, so writers taking turns over a pool each read the hot pages back from the
    /// file before every batch; one writer keeps its cache.
    writer: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, SqliteSynchronous::default()).await
    }

    /// [`Store::connect`], choosing how SQLite commits reach the disk.
    pub async fn connect_with(url: &str, synchronous: SqliteSynchronous) -> Result<Self> {
        let store = Self::open(url, synchronous, true).await?;
        MIGRATOR.run(&store.writer).await?;
        Ok(store)
    }

    /// Opens a ledger the sidecar created, as it is: no file is created and no migration runs
    /// (the serving sidecar owns the schema, and an operator's command must not change it
    /// under an older binary). Refused when the schema is not the one this binary knows.
    pub async fn open_existing(url: &str) -> Result<Self> {
        let store = Self::open(url, SqliteSynchronous::default(), false).await?;
        let sql = "SELECT version, checksum FROM _sqlx_migrations WHERE success ORDER BY version";
        let applied: Vec<(i64, Vec<u8>)> = match sqlx::query_as(sql).fetch_all(&store.pool).await {
            Ok(applied) => applied,
            // SQLite says "no such table", PostgreSQL answers 42P01 (undefined_table).
            Err(error) if error.to_string().contains("no such table") || error.to_string().contains("42P01") => {
                return Err(StoreError::Schema(format!("no ledger here ({error}): start the sidecar once")));
            }
            Err(error) => return Err(error.into()),
        };
        let known: Vec<(i64, Vec<u8>)> = MIGRATOR
            .iter()
            .filter(|migration| migration.migration_type.is_up_migration())
            .map(|migration| (migration.version, migration.checksum.to_vec()))
            .collect();
        if applied != known {
            let versions = |migrations: &[(i64, Vec<u8>)]| migrations.iter().map(|(v, _)| *v).collect::<Vec<_>>();
            return Err(StoreError::Schema(format!(
                "the ledger has migrations {:?}, this binary knows {:?} (or the same with other contents): run the \
                 sidecar of this version once (it migrates at start), or use the binary that matches the ledger",
                versions(&applied),
                versions(&known)
            )));
        }
        Ok(store)
    }

    async fn open(url: &str, synchronous: SqliteSynchronous, create: bool) -> Result<Self> {
        let synchronous = match synchronous {
            SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL",
            SqliteSynchronous::Full => "PRAGMA synchronous = FULL",
        };
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let options = match backend {
            Backend::Sqlite if create => AnyConnectOptions::from_str(&sqlite_creating(url))?,
            Backend::Sqlite => AnyConnectOptions::from_str(&sqlite_existing(url))?,
            Backend::Postgres => AnyConnectOptions::from_str(url)?,
        };
        let (pool, writer) = match backend {
            // One writer at a time is SQLite's nature; WAL lets readers run beside it.
            Backend::Sqlite => {
                let connect = |connections| {
                    AnyPoolOptions::new()
                        .max_connections(connections)
                        .acquire_timeout(Duration::from_secs(5))
                        // A local file's connection does not go stale; the ping before each
                        // acquire was a round trip to sqlx's worker thread (~100 µs here) on
                        // every batch, which the embedded engine's callers wait for.
                        .test_before_acquire(false)
                        .after_connect(move |connection, _| {
                            Box::pin(async move {
                                sqlx::query("PRAGMA busy_timeout = 5000").execute(&mut *connection).await?;
                                if !create {
                                    // Opened to read an existing ledger: its journal mode stays
                                    // as the sidecar set it, and nothing else is written.
                                    return Ok(());
                                }
                                sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *connection).await?;
                                sqlx::query(synchronous).execute(&mut *connection).await?;
                                // The indexes' hot pages stay in memory (the default is 2 MiB).
                                let cache = format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}");
                                let checkpoint = format!("PRAGMA wal_autocheckpoint = {SQLITE_CHECKPOINT_PAGES}");
                                sqlx::query(AssertSqlSafe(checkpoint)).execute(&mut *connection).await?;
                                sqlx::query(AssertSqlSafe(cache)).execute(&mut *connection).await?;
                                // A batch's multi-row upserts each keep a statement journal
                                // (to undo that statement alone); in a file, SQLite creates,
                                // writes and deletes one per batch. Kept in memory, it is
                                // freed at commit. It holds nothing a crash needs: the WAL does.
                                sqlx::query("PRAGMA temp_store = MEMORY").execute(&mut *connection).await?;
                                Ok(())
                            })
                        })
                        .connect_with(options.clone())
                };
                (connect(4).await?, connect(1).await?)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(POSTGRES_CONNECTIONS)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                (pool.clone(), pool)
            }
        };
        Ok(Self { pool, writer, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Whether batches may be settled in transactions side by side: PostgreSQL (SQLite has one
    /// writer; a second transaction would only wait for the first).
    pub fn concurrent_writes(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// SQLite: copies the WAL's committed pages into the database file on a reading
    /// connection (a PASSIVE checkpoint: it waits for no one, and no one waits for it).
    /// Without it the commit that crosses [`SQLITE_CHECKPOINT_PAGES`] copies 40 MiB while
    /// every call waiting for that batch waits too (30–50 ms at the embedded engine's p99 in
    /// the benchmark). Returns the WAL's frames and how many of them are in the database file
    /// now; PostgreSQL: nothing to do, `None`.
    pub async fn checkpoint(&self) -> Result<Option<(i64, i64)>> {
        if self.backend != Backend::Sqlite {
            return Ok(None);
        }
        let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&self.pool).await?;
        Ok(Some((sqlx::Row::try_get(&row, 1)?, sqlx::Row::try_get(&row, 2)?)))
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// A SQLite URL that opens the file only if it exists: `mode=ro` when the URL asks for it (a
/// read-only mount), else `mode=rw` whatever mode it named (`rwc` would create it).
fn sqlite_existing(url: &str) -> String {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let read_only = query.split('&').any(|parameter| parameter == "mode=ro");
    let mut parameters: Vec<&str> = query.split('&').filter(|p| !p.is_empty() && !p.starts_with("mode=")).collect();
    parameters.push(if read_only { "mode=ro" } else { "mode=rw" });
    format!("{path}?{}", parameters.join("&"))
}

/// SQLite opens an existing file only, unless told `mode=rwc`: asks for that when the URL names
/// no mode of its own.
fn sqlite_creating(url: &str) -> String {
    if url.contains("mode=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}mode=rwc")
}

/// SQL built here from constant text and numbered placeholders only: values are always bound,
/// never spliced, so there is nothing to inject.
fn audited(sql: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(sql.to_owned())
}

/// Appends `rows` tuples of `width` placeholders: ($1, $2), ($3, $4), ... on PostgreSQL; on
/// SQLite anonymous ones, (?, ?), (?, ?), ... bound in the same order. SQLite finds a numbered
/// parameter's name by a linear scan, so binding a statement of n `$` parameters costs O(n²):
/// 72 % of the settler's time at 500 rows per statement.
fn push_tuples(sql: &mut String, rows: usize, width: usize, backend: Backend) {
    let mut n = 0;
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..width {
            n += 1;
            if column > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Postgres => {
                    // itoa: a statement of 500 rows has thousands of placeholders, and a
                    // `format!` each was a third of the settler's CPU.
                    sql.push('$');
                    sql.push_str(itoa::Buffer::new().format(n));
                }
                Backend::Sqlite => sql.push('?'),
            }
        }
        sql.push(')');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_files_are_created_unless_a_mode_is_named() {
        assert_eq!(sqlite_creating("sqlite://a.db"), "sqlite://a.db?mode=rwc");
        assert_eq!(sqlite_creating("sqlite://a.db?cache=shared"), "sqlite://a.db?cache=shared&mode=rwc");
        assert_eq!(sqlite_creating("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
    }

    #[test]
    fn an_existing_ledger_is_opened_never_created() {
        assert_eq!(sqlite_existing("sqlite://a.db"), "sqlite://a.db?mode=rw");
        assert_eq!(sqlite_existing("sqlite://a.db?mode=rwc"), "sqlite://a.db?mode=rw");
        assert_eq!(sqlite_existing("sqlite:///d/a.db?cache=shared&mode=rwc"), "sqlite:///d/a.db?cache=shared&mode=rw");
        assert_eq!(sqlite_existing("sqlite://a.db?mode=ro"), "sqlite://a.db?mode=ro");
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut sql = String::new();
        push_tuples(&mut sql, 2, 3, Backend::Postgres);
        assert_eq!(sql, "($1, $2, $3), ($4, $5, $6)");
        let mut sql = String::new();
        push_tuples(&mut sql, 2, 2, Backend::Sqlite);
        assert_eq!(sql, "(?, ?), (?, ?)");
    }
}
