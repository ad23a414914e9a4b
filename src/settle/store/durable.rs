//! The embedded engine's kept state in SQL: remembered answers (`request_answers`) and account
//! snapshots (`engine_snapshots`), written in the same transaction as the events they go with,
//! and read back at start (see `crate::ledger::durable`).

use std::collections::HashMap;

use sqlx::Row;

use super::read::event_of;
use super::write::Upserts;
use super::{Result, Store, StoreError, push_tuples};
use crate::ledger::durable::{
    ANSWER_FORMAT, DurableState, RememberedAnswer, SNAPSHOT_FORMAT, decode_answer, decode_snapshot, encode_answer,
    encode_snapshot,
};
use crate::ledger::snapshot::AccountSnapshot;
use crate::ledger::{AccountId, RequestId};

/// Rows per multi-row upsert.
const ROWS_PER_UPSERT: usize = 500;

/// Writes remembered answers; a later answer under the same request replaces an earlier one
/// (its keep-until moved, or the id was forgotten and used again).
pub(super) fn upsert_answers(upserts: &mut Upserts, answers: &[RememberedAnswer]) {
    // One row per key per statement (PostgreSQL refuses to update a row twice in one): the last.
    let mut last: HashMap<(&AccountId, u64, &RequestId), &RememberedAnswer> = HashMap::new();
    for memo in answers {
        last.insert((&memo.account, memo.reservation.unwrap_or(0), &memo.request), memo);
    }
    let rows: Vec<&RememberedAnswer> = last.into_values().collect();
    for chunk in rows.chunks(ROWS_PER_UPSERT) {
        let mut sql = String::from(
            "INSERT INTO request_answers \
             (account_id, reservation_seq, request_id, fingerprint, keep_until_ms, format, data) VALUES ",
        );
        push_tuples(&mut sql, chunk.len(), 7, upserts.backend);
        sql.push_str(
            " ON CONFLICT (account_id, reservation_seq, request_id) DO UPDATE SET \
             fingerprint = excluded.fingerprint, keep_until_ms = excluded.keep_until_ms, \
             format = excluded.format, data = excluded.data",
        );
        let mut query = upserts.statement(sql);
        for memo in chunk {
            query
                .bind(memo.account.as_str().to_owned())
                .bind(memo.reservation.unwrap_or(0) as i64)
                .bind(memo.request.as_str().to_owned())
                .bind(memo.fingerprint.clone())
                .bind(memo.keep_until_ms)
                .bind(ANSWER_FORMAT)
                .bind(encode_answer(&memo.answer));
        }
    }
}

/// Writes account snapshots, each replacing an older one of its account.
pub(super) fn upsert_snapshots(upserts: &mut Upserts, snapshots: &[AccountSnapshot], taken_ms: i64) {
    let mut newest: HashMap<&str, &AccountSnapshot> = HashMap::new();
    for snapshot in snapshots {
        let kept = newest.entry(&snapshot.account).or_insert(snapshot);
        if snapshot.last_event > kept.last_event {
            *kept = snapshot;
        }
    }
    for snapshot in newest.into_values() {
        let mut sql =
            String::from("INSERT INTO engine_snapshots (account_id, last_seq, format, data, taken_ms) VALUES ");
        push_tuples(&mut sql, 1, 5, upserts.backend);
        sql.push_str(
            " ON CONFLICT (account_id) DO UPDATE SET last_seq = excluded.last_seq, format = excluded.format, \
             data = excluded.data, taken_ms = excluded.taken_ms WHERE excluded.last_seq > engine_snapshots.last_seq",
        );
        upserts
            .statement(sql)
            .bind(snapshot.account.clone())
            .bind(snapshot.last_event as i64)
            .bind(SNAPSHOT_FORMAT)
            .bind(encode_snapshot(snapshot))
            .bind(taken_ms);
    }
}

impl Store {
    /// What the embedded engine kept: snapshots, the events after them, remembered answers.
    pub async fn durable_state(&self) -> Result<DurableState> {
        let mut state = DurableState::default();
        let rows = sqlx::query("SELECT account_id, last_seq, format, data FROM engine_snapshots")
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let account: String = row.try_get(0)?;
            let seq: i64 = row.try_get(1)?;
            let corrupt = |reason: String| StoreError::Corrupt { account: account.clone(), seq, reason };
            let snapshot = decode_snapshot(row.try_get(2)?, &row.try_get::<String, _>(3)?)
                .map_err(|reason| corrupt(format!("snapshot: {reason}")))?;
            if snapshot.account != account || snapshot.last_event as i64 != seq {
                return Err(corrupt("snapshot: its content names another account or event".into()));
            }
            state.snapshots.push(snapshot);
        }
        let rows = sqlx::query(
            "SELECT e.account_id, e.seq, e.at_ms, e.kind, e.request_id, e.data FROM ledger_events e \
             LEFT JOIN engine_snapshots s ON s.account_id = e.account_id \
             WHERE s.last_seq IS NULL OR e.seq > s.last_seq ORDER BY e.account_id, e.seq",
        )
        .fetch_all(&self.pool)
        .await?;
        state.events = rows.iter().map(event_of).collect::<Result<_>>()?;
        let rows = sqlx::query(
            "SELECT account_id, reservation_seq, request_id, fingerprint, keep_until_ms, format, data \
             FROM request_answers",
        )
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            state.answers.push(answer_of(&row)?);
        }
        Ok(state)
    }

    /// Deletes remembered answers no restart needs any more: account-scoped ones past their
    /// keep-until instant, and those of reservations closed before `closed_before_ms`. Returns
    /// how many went.
    pub async fn forget_answers(&self, now_ms: i64, closed_before_ms: i64) -> Result<u64> {
        let mut transaction = self.writer.begin().await?;
        let expired = sqlx::query("DELETE FROM request_answers WHERE reservation_seq = 0 AND keep_until_ms <= $1")
            .bind(now_ms)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        let closed = sqlx::query(
            "DELETE FROM request_answers WHERE reservation_seq > 0 AND EXISTS (SELECT 1 FROM reservations r \
             WHERE r.account_id = request_answers.account_id AND r.seq = request_answers.reservation_seq \
             AND r.closed_ms IS NOT NULL AND r.closed_ms < $1)",
        )
        .bind(closed_before_ms)
        .execute(&mut *transaction)
        .await?
        .rows_affected();
        transaction.commit().await?;
        Ok(expired + closed)
    }
}

fn answer_of(row: &sqlx::any::AnyRow) -> Result<RememberedAnswer> {
    let account: String = row.try_get(0)?;
    let seq: i64 = row.try_get(1)?;
    let corrupt = |reason: String| StoreError::Corrupt { account: account.clone(), seq, reason };
    let request: String = row.try_get(2)?;
    Ok(RememberedAnswer {
        account: AccountId::parse(&account).map_err(|error| corrupt(error.to_string()))?,
        reservation: (seq > 0).then_some(seq as u64),
        request: RequestId::parse(&request).map_err(|error| corrupt(error.to_string()))?,
        fingerprint: row.try_get(3)?,
        keep_until_ms: row.try_get(4)?,
        answer: decode_answer(row.try_get(5)?, &row.try_get::<String, _>(6)?)
            .map_err(|reason| corrupt(format!("answer to {request}: {reason}")))?,
    })
}
