//! Reading the ledger back: events, totals, usage, line items, settled reservations, and what
//! the state-loss guard and the maintenance commands ask.

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Result, Store, StoreError, audited};
use crate::ledger::event::{Event, EventKind};
use crate::ledger::{AccountId, wire};

/// Totals as settled: granted = available + held + spent + expired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SettledTotals {
    pub granted: i64,
    pub held: i64,
    pub spent: i64,
    pub expired: i64,
    /// Overdraft not yet repaid (migration 0006).
    pub owed: i64,
    pub events: i64,
    pub last_seq: i64,
}

impl SettledTotals {
    pub fn available(&self) -> i64 {
        self.granted + self.owed - self.held - self.spent - self.expired
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

    /// Up to `limit` of the account's events below sequence `before` (all when None), newest
    /// first: a page of its history.
    pub async fn history(&self, account: &AccountId, before: Option<u64>, limit: usize) -> Result<Vec<Event>> {
        let sql = format!(
            "SELECT account_id, seq, at_ms, kind, request_id, data FROM ledger_events \
             WHERE account_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT {limit}"
        );
        let before = before.map_or(i64::MAX, |seq| seq as i64);
        let rows =
            sqlx::query(audited(&sql)).bind(account.as_str().to_owned()).bind(before).fetch_all(&self.pool).await?;
        rows.iter().map(event_of).collect()
    }

    /// The category budgets in force as the ledger recorded them: each category's last
    /// `category_budget_set`, lifted ones left out. (`reservation_seq IS NULL` lets the
    /// per-reservation index skip every hold's events.)
    pub async fn category_budgets(&self, account: &AccountId) -> Result<BTreeMap<String, i64>> {
        let sql = "SELECT account_id, seq, at_ms, kind, request_id, data FROM ledger_events \
                   WHERE account_id = $1 AND reservation_seq IS NULL AND kind = 'category_budget_set' ORDER BY seq";
        let rows = sqlx::query(sql).bind(account.as_str().to_owned()).fetch_all(&self.pool).await?;
        let mut budgets = BTreeMap::new();
        for row in &rows {
            if let EventKind::CategoryBudgetSet { category, budget } = event_of(row)?.kind {
                match budget {
                    Some(budget) => budgets.insert(category, budget),
                    None => budgets.remove(&category),
                };
            }
        }
        Ok(budgets)
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
            "SELECT granted, held, spent, expired, owed, events, last_seq FROM account_totals WHERE account_id = $1",
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
                owed: row.try_get(4)?,
                events: row.try_get(5)?,
                last_seq: row.try_get(6)?,
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

pub(super) fn event_of(row: &sqlx::any::AnyRow) -> Result<Event> {
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
