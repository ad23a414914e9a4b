//! Writing a batch: its events inserted if absent (an identity already settled with other content
//! is kept as a conflict), the new ones folded into the derived tables, and the embedded engine's
//! remembered answers and snapshots — one transaction.

use std::collections::{BTreeMap, HashSet};

use sqlx::Arguments as _;
use sqlx::Row;
use sqlx::any::AnyArguments;

use super::{Backend, ROWS_PER_STATEMENT, Result, Settled, Store, audited, durable, push_tuples};
use crate::ledger::durable::RememberedAnswer;
use crate::ledger::event::{Event, EventKind, draws_total};
use crate::ledger::snapshot::AccountSnapshot;
use crate::ledger::wire;
use crate::settle::outbox::Records;

impl Store {
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
    repaid: i64,
}

#[derive(Default)]
struct TotalsFold {
    granted: i64,
    held: i64,
    spent: i64,
    expired: i64,
    owed: i64,
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
            EventKind::PlanSet { .. }
            | EventKind::CycleStarted { .. }
            | EventKind::UserLimitSet { .. }
            | EventKind::CategoryBudgetSet { .. } => {}
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
            // Spent beyond the lots: owed; it counts in the usage's spend (not as a commit).
            EventKind::Overdrawn { amount, user, category, cycle_start_ms, .. } => {
                totals.spent += amount;
                totals.owed += amount;
                let usage = self.usage.entry((account.clone(), *cycle_start_ms, user.clone(), category.clone()));
                usage.or_default().0 += amount;
            }
            EventKind::Repaid { lot, amount } => {
                totals.owed -= amount;
                self.lots.entry((account.clone(), *lot as i64)).or_default().repaid += amount;
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
                .bind(row.expired_ms)
                .bind(row.repaid);
        });
        upsert_rows(upserts, &TOTALS_UPSERT, self.totals, |query, (account, row)| {
            query
                .bind(account.clone())
                .bind(row.granted)
                .bind(row.held)
                .bind(row.spent)
                .bind(row.expired)
                .bind(row.owed)
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
         expires_ms, expired_ms, repaid) VALUES ",
    columns: 11,
    conflict: " ON CONFLICT (account_id, lot_id) DO UPDATE SET \
         kind = CASE WHEN excluded.kind <> '' THEN excluded.kind ELSE lots.kind END, \
         granted = lots.granted + excluded.granted, drawn = lots.drawn + excluded.drawn, \
         returned = lots.returned + excluded.returned, expired = lots.expired + excluded.expired, \
         granted_ms = CASE WHEN excluded.granted_ms <> 0 THEN excluded.granted_ms ELSE lots.granted_ms END, \
         expires_ms = CASE WHEN excluded.expires_ms <> 0 THEN excluded.expires_ms ELSE lots.expires_ms END, \
         expired_ms = COALESCE(excluded.expired_ms, lots.expired_ms), \
         repaid = lots.repaid + excluded.repaid",
};

/// `account_totals`: the account's figures summed, its last event's sequence kept.
const TOTALS_UPSERT: UpsertSql = UpsertSql {
    insert: "INSERT INTO account_totals (account_id, granted, held, spent, expired, owed, events, last_seq) \
         VALUES ",
    columns: 8,
    conflict: " ON CONFLICT (account_id) DO UPDATE SET \
         granted = account_totals.granted + excluded.granted, held = account_totals.held + excluded.held, \
         spent = account_totals.spent + excluded.spent, expired = account_totals.expired + excluded.expired, \
         owed = account_totals.owed + excluded.owed, \
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
