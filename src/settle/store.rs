//! The durable store: PostgreSQL or SQLite through one sqlx code path (the `Any` driver), with
//! the migrations embedded in the binary and applied at start.
//!
//! [`Store::write`] settles a batch of events in one transaction: a multi-row insert-if-absent
//! into `ledger_events` keyed on each event's own identity (account, seq) returns the events
//! that are new; only those are folded into the derived tables (reservations, usage, lots,
//! totals), with commutative upserts, so a batch written twice, or two replicas writing
//! overlapping batches in any order, have exactly the effect of writing each event once.
//!
//! SQL uses `$n` placeholders, native to PostgreSQL and accepted by SQLite, always numbered in
//! order of appearance — except the multi-row statements on SQLite, which use `?` (see
//! [`push_tuples`]).

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use sqlx::Arguments as _;
use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use super::outbox::Records;
use crate::ledger::durable::RememberedAnswer;
use crate::ledger::event::{Event, EventKind, draws_total};
use crate::ledger::snapshot::AccountSnapshot;
use crate::ledger::{AccountId, wire};

mod durable;

/// Rows per multi-row statement (well under both databases' bind-parameter limits).
const ROWS_PER_STATEMENT: usize = 500;

/// SQLite's page cache per connection, in KiB.
const SQLITE_CACHE_KIB: u32 = 65_536;

/// WAL pages (4 KiB each) after which a commit copies the WAL back into the database file.
const SQLITE_CHECKPOINT_PAGES: u32 = 10_000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("ledger row {account}/{seq}: {reason}")]
    Corrupt { account: String, seq: i64, reason: String },
}

type Result<T> = std::result::Result<T, StoreError>;

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

/// Totals as settled: granted = available + held + spent + expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettledTotals {
    pub granted: i64,
    pub held: i64,
    pub spent: i64,
    pub expired: i64,
    pub events: i64,
    pub last_seq: i64,
}

impl SettledTotals {
    pub fn available(&self) -> i64 {
        self.granted - self.held - self.spent - self.expired
    }
}

/// Spend of one (cycle, user, category).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRow {
    pub cycle_start_ms: i64,
    pub user: String,
    pub category: String,
    pub spent: i64,
    pub commits: i64,
}

/// One commit on a reservation, as settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LineItem {
    pub seq: u64,
    pub at_ms: i64,
    pub amount: i64,
    pub business_key: Option<String>,
    pub already_charged: bool,
    pub labels: BTreeMap<String, String>,
    pub request_id: Option<String>,
}

/// A reservation as settled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledReservation {
    pub seq: u64,
    pub user: String,
    pub category: String,
    pub state: String,
    pub reserved: i64,
    pub committed: i64,
    pub returned: i64,
    pub commit_count: i64,
    pub created_ms: i64,
    pub deadline_ms: i64,
    pub closed_ms: Option<i64>,
    pub labels: BTreeMap<String, String>,
}

impl Store {
    /// Connects (creating a SQLite file if needed) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, SqliteSynchronous::default()).await
    }

    /// [`Store::connect`], choosing how SQLite commits reach the disk.
    pub async fn connect_with(url: &str, synchronous: SqliteSynchronous) -> Result<Self> {
        let synchronous = match synchronous {
            SqliteSynchronous::Normal => "PRAGMA synchronous = NORMAL",
            SqliteSynchronous::Full => "PRAGMA synchronous = FULL",
        };
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let options = match backend {
            Backend::Sqlite => AnyConnectOptions::from_str(&sqlite_creating(url))?,
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
                                sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *connection).await?;
                                sqlx::query(synchronous).execute(&mut *connection).await?;
                                // The indexes' hot pages stay in memory (the default is 2 MiB).
                                let cache = format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}");
                                let checkpoint = format!("PRAGMA wal_autocheckpoint = {SQLITE_CHECKPOINT_PAGES}");
                                sqlx::query(AssertSqlSafe(checkpoint)).execute(&mut *connection).await?;
                                sqlx::query(AssertSqlSafe(cache)).execute(&mut *connection).await?;
                                Ok(())
                            })
                        })
                        .connect_with(options.clone())
                };
                (connect(4).await?, connect(1).await?)
            }
            Backend::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                (pool.clone(), pool)
            }
        };
        MIGRATOR.run(&writer).await?;
        Ok(Self { pool, writer, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Is the database answering?
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Settles `events` in one transaction; returns how many were new. Writing the same events
    /// again changes nothing.
    pub async fn write(&self, events: &[Event], settled_ms: i64) -> Result<usize> {
        Ok(self.write_parts(events, &[], &[], settled_ms).await?.new)
    }

    /// Settles a batch from an outbox in one transaction: its events (see [`Store::write`]) and
    /// the embedded engine's remembered answers and snapshots.
    pub async fn settle(&self, records: &Records, settled_ms: i64) -> Result<Settled> {
        self.write_parts(&records.events, &records.answers, &records.snapshots, settled_ms).await
    }

    async fn write_parts(
        &self,
        events: &[Event],
        answers: &[RememberedAnswer],
        snapshots: &[AccountSnapshot],
        settled_ms: i64,
    ) -> Result<Settled> {
        if events.is_empty() && answers.is_empty() && snapshots.is_empty() {
            return Ok(Settled::default());
        }
        let mut transaction = self.writer.begin().await?;
        let mut upserts = Upserts::new(self.backend);
        let settled = self.insert_events(&mut transaction, events, settled_ms, &mut upserts).await?;
        durable::upsert_answers(&mut upserts, answers);
        durable::upsert_snapshots(&mut upserts, snapshots, settled_ms);
        upserts.execute(&mut transaction).await?;
        transaction.commit().await?;
        Ok(settled)
    }

    /// Inserts the events not settled yet and folds those into the derived tables.
    async fn insert_events(
        &self,
        transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
        events: &[Event],
        settled_ms: i64,
        upserts: &mut Upserts,
    ) -> Result<Settled> {
        if events.is_empty() {
            return Ok(Settled::default());
        }
        // One row per identity: a batch may name an event twice (a redelivery within one read),
        // and folding both copies would count it twice; the first copy is kept. Inserting in
        // identity order also makes concurrent writers wait for each other's rows in one order.
        let mut unique: Vec<&Event> = events.iter().collect();
        unique.sort_by(|a, b| (&a.account, a.seq).cmp(&(&b.account, b.seq)));
        unique.dedup_by(|later, first| later.account == first.account && later.seq == first.seq);
        let mut inserted: Vec<(String, i64)> = Vec::new();
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO ledger_events \
                 (account_id, seq, at_ms, kind, request_id, reservation_seq, data, settled_ms) VALUES ",
            );
            push_tuples(&mut sql, chunk.len(), 8, self.backend);
            sql.push_str(" ON CONFLICT (account_id, seq) DO NOTHING RETURNING account_id, seq");
            let mut query = sqlx::query(audited(&sql));
            for event in chunk {
                let (kind, data) = wire::encode(&event.kind);
                query = query
                    .bind(event.account.as_str().to_owned())
                    .bind(event.seq as i64)
                    .bind(event.at_ms)
                    .bind(kind)
                    .bind(event.request_id.clone())
                    .bind(wire::reservation_of(&event.kind).map(|seq| seq as i64))
                    .bind(data)
                    .bind(settled_ms);
            }
            for row in query.fetch_all(&mut **transaction).await? {
                inserted.push((row.try_get(0)?, row.try_get(1)?));
            }
        }
        let new: HashSet<(String, i64)> = inserted.into_iter().collect();
        let mut fold = Fold::default();
        let mut conflicts = 0;
        for event in unique {
            if new.contains(&(event.account.as_str().to_owned(), event.seq as i64)) {
                fold.add(event);
            } else if keep_if_conflicting(transaction, event, settled_ms).await? {
                conflicts += 1;
            }
        }
        fold.write(upserts);
        Ok(Settled { new: new.len(), conflicts })
    }

    /// Every settled event, per account in sequence order (all accounts, or one).
    pub async fn events(&self, account: Option<&AccountId>) -> Result<Vec<Event>> {
        let columns = "SELECT account_id, seq, at_ms, kind, request_id, data FROM ledger_events";
        let rows = match account {
            Some(account) => {
                let sql = format!("{columns} WHERE account_id = $1 ORDER BY account_id, seq");
                sqlx::query(audited(&sql)).bind(account.as_str().to_owned()).fetch_all(&self.pool).await?
            }
            None => sqlx::query(audited(&format!("{columns} ORDER BY account_id, seq"))).fetch_all(&self.pool).await?,
        };
        rows.iter().map(event_of).collect()
    }

    /// Has the ledger settled anything of `account`?
    pub async fn knows_account(&self, account: &AccountId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM account_totals WHERE account_id = $1")
            .bind(account.as_str().to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Does the ledger hold this reservation as open (held)? An open hold is never forgotten.
    pub async fn knows_open_reservation(&self, id: &crate::ledger::ReservationId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM reservations WHERE account_id = $1 AND seq = $2 AND state = 'held'")
            .bind(id.account.as_str().to_owned())
            .bind(id.seq as i64)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn accounts(&self) -> Result<Vec<AccountId>> {
        let rows =
            sqlx::query("SELECT account_id FROM account_totals ORDER BY account_id").fetch_all(&self.pool).await?;
        let mut accounts = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let account = AccountId::parse(&id).map_err(|error| StoreError::Corrupt {
                account: id.clone(),
                seq: 0,
                reason: error.to_string(),
            })?;
            accounts.push(account);
        }
        Ok(accounts)
    }

    pub async fn totals(&self, account: &AccountId) -> Result<Option<SettledTotals>> {
        let row = sqlx::query(
            "SELECT granted, held, spent, expired, events, last_seq FROM account_totals WHERE account_id = $1",
        )
        .bind(account.as_str().to_owned())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(SettledTotals {
                granted: row.try_get(0)?,
                held: row.try_get(1)?,
                spent: row.try_get(2)?,
                expired: row.try_get(3)?,
                events: row.try_get(4)?,
                last_seq: row.try_get(5)?,
            })
        })
        .transpose()
    }

    /// Events that reused a settled identity with other content (see `ledger_conflicts`).
    pub async fn conflicts(&self, account: &AccountId) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM ledger_conflicts WHERE account_id = $1")
            .bind(account.as_str().to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Open reservations and the credits they hold, as settled so far (for the metrics).
    pub async fn open_holds(&self) -> Result<(i64, i64)> {
        let holds = sqlx::query("SELECT COUNT(*) FROM reservations WHERE state = 'held'").fetch_one(&self.pool).await?;
        let held = sqlx::query("SELECT CAST(COALESCE(SUM(held), 0) AS BIGINT) FROM account_totals")
            .fetch_one(&self.pool)
            .await?;
        Ok((holds.try_get(0)?, held.try_get(0)?))
    }

    /// How many events are settled in all (for figures and tests).
    pub async fn event_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM ledger_events").fetch_one(&self.pool).await?.try_get(0)?)
    }

    /// Spend per cycle, user and category; `cycle_start_ms` narrows to one cycle.
    pub async fn usage(&self, account: &AccountId, cycle_start_ms: Option<i64>) -> Result<Vec<UsageRow>> {
        let mut sql = String::from(
            "SELECT cycle_start_ms, user_id, category, spent, commits FROM usage_totals WHERE account_id = $1",
        );
        if cycle_start_ms.is_some() {
            sql.push_str(" AND cycle_start_ms = $2");
        }
        sql.push_str(" ORDER BY cycle_start_ms, user_id, category");
        let mut query = sqlx::query(audited(&sql)).bind(account.as_str().to_owned());
        if let Some(cycle) = cycle_start_ms {
            query = query.bind(cycle);
        }
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(UsageRow {
                    cycle_start_ms: row.try_get(0)?,
                    user: row.try_get(1)?,
                    category: row.try_get(2)?,
                    spent: row.try_get(3)?,
                    commits: row.try_get(4)?,
                })
            })
            .collect()
    }

    /// The commits of one reservation, in order.
    pub async fn line_items(&self, account: &AccountId, reservation: u64) -> Result<Vec<LineItem>> {
        let rows = sqlx::query(
            "SELECT account_id, seq, at_ms, kind, request_id, data FROM ledger_events \
             WHERE account_id = $1 AND reservation_seq = $2 AND kind = 'committed' ORDER BY seq",
        )
        .bind(account.as_str().to_owned())
        .bind(reservation as i64)
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = event_of(row)?;
            if let EventKind::Committed { amount, business_key, already_charged, labels, .. } = event.kind {
                items.push(LineItem {
                    seq: event.seq,
                    at_ms: event.at_ms,
                    amount,
                    business_key,
                    already_charged,
                    labels,
                    request_id: event.request_id,
                });
            }
        }
        Ok(items)
    }

    /// Settled reservations, newest first: at most `limit` with a sequence below `before`.
    pub async fn reservations(
        &self,
        account: &AccountId,
        state: Option<&str>,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<SettledReservation>> {
        let mut sql = String::from(
            "SELECT seq, user_id, category, state, reserved, committed, returned, commit_count, created_ms, \
             deadline_ms, closed_ms, labels FROM reservations WHERE account_id = $1 AND seq < $2",
        );
        if state.is_some() {
            sql.push_str(" AND state = $3");
        }
        sql.push_str(&format!(" ORDER BY seq DESC LIMIT {limit}"));
        let before = before.map_or(i64::MAX, |seq| seq as i64);
        let mut query = sqlx::query(audited(&sql)).bind(account.as_str().to_owned()).bind(before);
        if let Some(state) = state {
            query = query.bind(state.to_owned());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let labels: String = row.try_get(11)?;
                Ok(SettledReservation {
                    seq: row.try_get::<i64, _>(0)? as u64,
                    user: row.try_get(1)?,
                    category: row.try_get(2)?,
                    state: row.try_get(3)?,
                    reserved: row.try_get(4)?,
                    committed: row.try_get(5)?,
                    returned: row.try_get(6)?,
                    commit_count: row.try_get(7)?,
                    created_ms: row.try_get(8)?,
                    deadline_ms: row.try_get(9)?,
                    closed_ms: row.try_get(10)?,
                    labels: serde_json::from_str(&labels).unwrap_or_default(),
                })
            })
            .collect()
    }
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

/// An event whose identity is already settled: a redelivery (same content: nothing to do), or a
/// conflict — Redis lost acknowledged writes and reused the sequence number. A conflicting event
/// is kept in `ledger_conflicts` (once), never dropped, and reported loudly.
async fn keep_if_conflicting(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    event: &Event,
    seen_ms: i64,
) -> Result<bool> {
    let (kind, data) = wire::encode(&event.kind);
    let settled =
        sqlx::query("SELECT kind, data, at_ms, request_id FROM ledger_events WHERE account_id = $1 AND seq = $2")
            .bind(event.account.as_str().to_owned())
            .bind(event.seq as i64)
            .fetch_one(&mut **transaction)
            .await?;
    let same = settled.try_get::<String, _>(0)? == kind
        && settled.try_get::<String, _>(1)? == data
        && settled.try_get::<i64, _>(2)? == event.at_ms
        && settled.try_get::<Option<String>, _>(3)? == event.request_id;
    if same {
        return Ok(false);
    }
    tracing::error!(
        account = %event.account,
        seq = event.seq,
        "an event reuses a settled sequence number with other content (Redis lost acknowledged writes?); \
         kept in ledger_conflicts"
    );
    sqlx::query(
        "INSERT INTO ledger_conflicts (account_id, seq, at_ms, kind, request_id, data, seen_ms) \
         SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS \
         (SELECT 1 FROM ledger_conflicts WHERE account_id = $1 AND seq = $2 AND data = $6)",
    )
    .bind(event.account.as_str().to_owned())
    .bind(event.seq as i64)
    .bind(event.at_ms)
    .bind(kind)
    .bind(event.request_id.clone())
    .bind(data)
    .bind(seen_ms)
    .execute(&mut **transaction)
    .await?;
    Ok(true)
}

fn event_of(row: &sqlx::any::AnyRow) -> Result<Event> {
    let account: String = row.try_get(0)?;
    let seq: i64 = row.try_get(1)?;
    let corrupt = |reason: String| StoreError::Corrupt { account: account.clone(), seq, reason };
    let kind: String = row.try_get(3)?;
    let data: String = row.try_get(5)?;
    Ok(Event {
        account: AccountId::parse(&account).map_err(|error| corrupt(error.to_string()))?,
        seq: seq as u64,
        at_ms: row.try_get(2)?,
        request_id: row.try_get(4)?,
        kind: wire::decode(&kind, &data).map_err(|error| corrupt(error.to_string()))?,
    })
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

/// A batch's upserts of derived tables and kept state, sent together after its events.
///
/// PostgreSQL takes one statement per query in its extended protocol, so there each runs on its
/// own. SQLite gets them as one multi-statement query: sqlx runs SQLite on a worker thread, and
/// each query is a hand-off there and back (about 0.1 ms on the development machine, most of a
/// small batch's cost); sqlx binds each statement's anonymous `?` parameters in turn, from one
/// argument list. So the SQLite statements here must use `?` only (see [`push_tuples`]).
pub(super) struct Upserts {
    pub(super) backend: Backend,
    statements: Vec<(String, AnyArguments)>,
    /// The first value that failed to encode (none of the types bound here can fail).
    failed: Option<sqlx::error::BoxDynError>,
}

/// Binds a statement's values in order (see [`Upserts::statement`]).
pub(super) struct Binder<'a> {
    arguments: &'a mut AnyArguments,
    failed: &'a mut Option<sqlx::error::BoxDynError>,
}

impl Binder<'_> {
    pub(super) fn bind<'t, T>(&mut self, value: T) -> &mut Self
    where
        T: sqlx::Encode<'t, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        if let Err(error) = self.arguments.add(value) {
            self.failed.get_or_insert(error);
        }
        self
    }
}

impl Upserts {
    pub(super) fn new(backend: Backend) -> Self {
        Self { backend, statements: Vec::new(), failed: None }
    }

    /// Adds a statement; bind its values, in order, through the binder returned.
    pub(super) fn statement(&mut self, sql: String) -> Binder<'_> {
        debug_assert!(self.backend == Backend::Postgres || !sql.contains('$'), "numbered parameters: {sql}");
        match (self.backend, self.statements.last_mut()) {
            (Backend::Sqlite, Some((text, _))) => {
                text.push_str(";\n");
                text.push_str(&sql);
            }
            _ => self.statements.push((sql, AnyArguments::default())),
        }
        let (_, arguments) = self.statements.last_mut().expect("a statement was just added");
        Binder { arguments, failed: &mut self.failed }
    }

    pub(super) async fn execute(self, transaction: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
        if let Some(error) = self.failed {
            return Err(sqlx::Error::Encode(error).into());
        }
        for (sql, arguments) in self.statements {
            sqlx::query_with(audited(&sql), arguments).execute(&mut **transaction).await?;
        }
        Ok(())
    }
}

#[derive(Default)]
struct ReservationFold {
    user: String,
    category: String,
    state: String,
    reserved: i64,
    committed: i64,
    returned: i64,
    commit_count: i64,
    created_ms: i64,
    deadline_ms: i64,
    closed_ms: Option<i64>,
    labels: String,
}

#[derive(Default)]
struct LotFold {
    kind: String,
    granted: i64,
    drawn: i64,
    returned: i64,
    expired: i64,
    granted_ms: i64,
    expires_ms: i64,
    expired_ms: Option<i64>,
}

#[derive(Default)]
struct TotalsFold {
    granted: i64,
    held: i64,
    spent: i64,
    expired: i64,
    events: i64,
    last_seq: i64,
}

/// The derived tables' changes from a batch of new events, aggregated per row, so each row is
/// upserted once per batch. Rows are written table by table in key order, so concurrent writers
/// (replicas settling different events of the same accounts) lock them in one global order and
/// cannot deadlock on them (in hash order, PostgreSQL reported deadlocks).
#[derive(Default)]
struct Fold {
    reservations: BTreeMap<(String, i64), ReservationFold>,
    usage: BTreeMap<(String, i64, String, String), (i64, i64)>,
    lots: BTreeMap<(String, i64), LotFold>,
    totals: BTreeMap<String, TotalsFold>,
}

impl Fold {
    fn add(&mut self, event: &Event) {
        let account = event.account.as_str().to_owned();
        let totals = self.totals.entry(account.clone()).or_default();
        totals.events += 1;
        totals.last_seq = totals.last_seq.max(event.seq as i64);
        let reservation_key = |seq: u64| (account.clone(), seq as i64);
        match &event.kind {
            EventKind::PlanSet { .. } | EventKind::CycleStarted { .. } | EventKind::UserLimitSet { .. } => {}
            EventKind::LotGranted { lot, kind, amount, expires_ms, .. } => {
                totals.granted += amount;
                let row = self.lots.entry((account.clone(), *lot as i64)).or_default();
                row.kind = wire::lot_kind_name(*kind).to_owned();
                row.granted += amount;
                row.granted_ms = event.at_ms;
                row.expires_ms = *expires_ms;
            }
            EventKind::LotExpired { lot, amount } => {
                totals.expired += amount;
                let row = self.lots.entry((account.clone(), *lot as i64)).or_default();
                row.expired += amount;
                row.expired_ms = Some(event.at_ms);
            }
            EventKind::Reserved { reservation, user, category, amount, draws, deadline_ms, labels } => {
                totals.held += amount;
                let row = self.reservations.entry(reservation_key(*reservation)).or_default();
                row.user = user.clone();
                row.category = category.clone();
                row.reserved += amount;
                row.created_ms = event.at_ms;
                row.deadline_ms = row.deadline_ms.max(*deadline_ms);
                row.labels = serde_json::to_string(labels).unwrap_or_default();
                for draw in draws {
                    self.lots.entry((account.clone(), draw.lot as i64)).or_default().drawn += draw.amount;
                }
            }
            EventKind::Extended { reservation, amount, draws, deadline_ms } => {
                totals.held += amount;
                let row = self.reservations.entry(reservation_key(*reservation)).or_default();
                row.reserved += amount;
                row.deadline_ms = row.deadline_ms.max(*deadline_ms);
                for draw in draws {
                    self.lots.entry((account.clone(), draw.lot as i64)).or_default().drawn += draw.amount;
                }
            }
            EventKind::Committed { reservation, amount, user, category, cycle_start_ms, .. } => {
                totals.held -= amount;
                totals.spent += amount;
                let row = self.reservations.entry(reservation_key(*reservation)).or_default();
                row.committed += amount;
                row.commit_count += 1;
                let usage = self.usage.entry((account.clone(), *cycle_start_ms, user.clone(), category.clone()));
                let (spent, commits) = usage.or_default();
                *spent += amount;
                *commits += 1;
            }
            EventKind::Closed { reservation, state, returned, expired } => {
                let released = draws_total(returned) + expired;
                totals.held -= released;
                totals.expired += expired;
                let row = self.reservations.entry(reservation_key(*reservation)).or_default();
                row.state = wire::state_name(*state).to_owned();
                row.returned += released;
                row.closed_ms = Some(event.at_ms);
                for draw in returned {
                    self.lots.entry((account.clone(), draw.lot as i64)).or_default().returned += draw.amount;
                }
            }
        }
    }

    fn write(self, upserts: &mut Upserts) {
        upsert_rows(upserts, &RESERVATIONS_UPSERT, self.reservations, |query, ((account, seq), row)| {
            let state = if row.state.is_empty() { "held" } else { &row.state };
            let labels = if row.labels.is_empty() { "{}" } else { &row.labels };
            query
                .bind(account.clone())
                .bind(*seq)
                .bind(row.user.clone())
                .bind(row.category.clone())
                .bind(state.to_owned())
                .bind(row.reserved)
                .bind(row.committed)
                .bind(row.returned)
                .bind(row.commit_count)
                .bind(row.created_ms)
                .bind(row.deadline_ms)
                .bind(row.closed_ms)
                .bind(labels.to_owned());
        });
        upsert_rows(
            upserts,
            &USAGE_UPSERT,
            self.usage,
            |query, ((account, cycle, user, category), (spent, commits))| {
                query
                    .bind(account.clone())
                    .bind(*cycle)
                    .bind(user.clone())
                    .bind(category.clone())
                    .bind(*spent)
                    .bind(*commits);
            },
        );
        upsert_rows(upserts, &LOTS_UPSERT, self.lots, |query, ((account, lot), row)| {
            query
                .bind(account.clone())
                .bind(*lot)
                .bind(row.kind.clone())
                .bind(row.granted)
                .bind(row.drawn)
                .bind(row.returned)
                .bind(row.expired)
                .bind(row.granted_ms)
                .bind(row.expires_ms)
                .bind(row.expired_ms);
        });
        upsert_rows(upserts, &TOTALS_UPSERT, self.totals, |query, (account, row)| {
            query
                .bind(account.clone())
                .bind(row.granted)
                .bind(row.held)
                .bind(row.spent)
                .bind(row.expired)
                .bind(row.events)
                .bind(row.last_seq);
        });
    }
}

/// A multi-row upsert: `insert` up to `VALUES`, a tuple of `columns` placeholders per row, then
/// `conflict` (the `ON CONFLICT` clause that folds a row into the one already there).
struct UpsertSql {
    insert: &'static str,
    columns: usize,
    conflict: &'static str,
}

/// `reservations`: one row per reservation, its figures summed, its facts kept once known.
const RESERVATIONS_UPSERT: UpsertSql = UpsertSql {
    insert: "INSERT INTO reservations (account_id, seq, user_id, category, state, reserved, committed, \
         returned, commit_count, created_ms, deadline_ms, closed_ms, labels) VALUES ",
    columns: 13,
    conflict: " ON CONFLICT (account_id, seq) DO UPDATE SET \
         user_id = CASE WHEN excluded.user_id <> '' THEN excluded.user_id ELSE reservations.user_id END, \
         category = CASE WHEN excluded.category <> '' THEN excluded.category ELSE reservations.category END, \
         state = CASE WHEN excluded.state <> 'held' THEN excluded.state ELSE reservations.state END, \
         reserved = reservations.reserved + excluded.reserved, \
         committed = reservations.committed + excluded.committed, \
         returned = reservations.returned + excluded.returned, \
         commit_count = reservations.commit_count + excluded.commit_count, \
         created_ms = CASE WHEN excluded.created_ms <> 0 THEN excluded.created_ms \
             ELSE reservations.created_ms END, \
         deadline_ms = CASE WHEN excluded.deadline_ms > reservations.deadline_ms THEN excluded.deadline_ms \
             ELSE reservations.deadline_ms END, \
         closed_ms = COALESCE(excluded.closed_ms, reservations.closed_ms), \
         labels = CASE WHEN excluded.labels <> '{}' THEN excluded.labels ELSE reservations.labels END",
};

/// `usage_totals`: spent and commits per account, cycle, user and category.
const USAGE_UPSERT: UpsertSql = UpsertSql {
    insert: "INSERT INTO usage_totals (account_id, cycle_start_ms, user_id, category, spent, commits) VALUES ",
    columns: 6,
    conflict: " ON CONFLICT (account_id, cycle_start_ms, user_id, category) DO UPDATE SET \
         spent = usage_totals.spent + excluded.spent, commits = usage_totals.commits + excluded.commits",
};

/// `lots`: one row per lot, its figures summed.
const LOTS_UPSERT: UpsertSql = UpsertSql {
    insert: "INSERT INTO lots (account_id, lot_id, kind, granted, drawn, returned, expired, granted_ms, \
         expires_ms, expired_ms) VALUES ",
    columns: 10,
    conflict: " ON CONFLICT (account_id, lot_id) DO UPDATE SET \
         kind = CASE WHEN excluded.kind <> '' THEN excluded.kind ELSE lots.kind END, \
         granted = lots.granted + excluded.granted, drawn = lots.drawn + excluded.drawn, \
         returned = lots.returned + excluded.returned, expired = lots.expired + excluded.expired, \
         granted_ms = CASE WHEN excluded.granted_ms <> 0 THEN excluded.granted_ms ELSE lots.granted_ms END, \
         expires_ms = CASE WHEN excluded.expires_ms <> 0 THEN excluded.expires_ms ELSE lots.expires_ms END, \
         expired_ms = COALESCE(excluded.expired_ms, lots.expired_ms)",
};

/// `account_totals`: the account's figures summed, its last event's sequence kept.
const TOTALS_UPSERT: UpsertSql = UpsertSql {
    insert: "INSERT INTO account_totals (account_id, granted, held, spent, expired, events, last_seq) VALUES ",
    columns: 7,
    conflict: " ON CONFLICT (account_id) DO UPDATE SET \
         granted = account_totals.granted + excluded.granted, held = account_totals.held + excluded.held, \
         spent = account_totals.spent + excluded.spent, expired = account_totals.expired + excluded.expired, \
         events = account_totals.events + excluded.events, \
         last_seq = CASE WHEN excluded.last_seq > account_totals.last_seq THEN excluded.last_seq \
             ELSE account_totals.last_seq END",
};

/// One table's rows (in key order) as upserts of at most [`ROWS_PER_STATEMENT`] rows each;
/// `bind` adds one row's values in column order.
fn upsert_rows<K, V>(
    upserts: &mut Upserts,
    sql: &UpsertSql,
    rows: BTreeMap<K, V>,
    bind: impl Fn(&mut Binder<'_>, &(K, V)),
) {
    let rows: Vec<(K, V)> = rows.into_iter().collect();
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut text = String::from(sql.insert);
        push_tuples(&mut text, chunk.len(), sql.columns, upserts.backend);
        text.push_str(sql.conflict);
        let mut query = upserts.statement(text);
        for row in chunk {
            bind(&mut query, row);
        }
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
    fn placeholders_are_numbered_in_order() {
        let mut sql = String::new();
        push_tuples(&mut sql, 2, 3, Backend::Postgres);
        assert_eq!(sql, "($1, $2, $3), ($4, $5, $6)");
        let mut sql = String::new();
        push_tuples(&mut sql, 2, 2, Backend::Sqlite);
        assert_eq!(sql, "(?, ?), (?, ?)");
    }
}
