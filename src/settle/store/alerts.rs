//! Alert thresholds and the alerts they fired (migration 0005).

use std::collections::BTreeMap;

use sqlx::Row;

use super::{Result, Store, StoreError, audited};
use crate::ledger::AccountId;
use crate::ledger::alerts::{Crossing, Threshold};

/// An alert as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertRow {
    pub account: String,
    pub threshold: Threshold,
    pub cycle_start_ms: i64,
    pub fired_ms: i64,
    pub crossing: Crossing,
}

impl AlertRow {
    /// Stable across replicas and retries: the account, the threshold (its id and its
    /// definition), the cycle — `<account>/<threshold>/<cycle_start>/<kind>:<value>[:<scope>]`.
    pub fn event_id(&self) -> String {
        let (kind, scope, value) = self.threshold.parts();
        let scope = if scope.is_empty() { String::new() } else { format!(":{scope}") };
        format!("{}/{}/{}/{kind}:{value}{scope}", self.account, self.threshold.id, self.cycle_start_ms)
    }
}

/// The WHERE clause naming one alert's rows (`$n`.. from `first`), and its binds in order.
const ALERT_KEY: &str = "account_id = $A AND threshold_id = $T AND kind = $K AND scope_id = $S AND value = $V \
                         AND cycle_start_ms = $C";

/// [`ALERT_KEY`] numbered from `$first`.
fn alert_key(first: usize) -> String {
    ["$A", "$T", "$K", "$S", "$V", "$C"]
        .iter()
        .enumerate()
        .fold(ALERT_KEY.to_owned(), |sql, (offset, name)| sql.replace(name, &format!("${}", first + offset)))
}

/// Binds an alert's key, in [`ALERT_KEY`]'s order.
fn bind_key<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    alert: &AlertRow,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    let (kind, scope, value) = alert.threshold.parts();
    query
        .bind(alert.account.clone())
        .bind(alert.threshold.id.clone())
        .bind(kind)
        .bind(scope.to_owned())
        .bind(value)
        .bind(alert.cycle_start_ms)
}

/// An alert's delivery to one webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub url: String,
    /// `pending`, `delivered` or `failed` (gave up).
    pub state: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub delivered_ms: Option<i64>,
}

/// Where a page of alerts ends: (fired_ms, cycle_start_ms, event id) of its last, oldest alert.
pub type AlertCursor = (i64, i64, String);

fn threshold_of(row: &sqlx::any::AnyRow) -> Result<Threshold> {
    let (id, kind, scope, value): (String, String, String, i64) =
        (row.try_get("threshold_id")?, row.try_get("kind")?, row.try_get("scope_id")?, row.try_get("value")?);
    Threshold::from_parts(&id, &kind, &scope, value)
        .map_err(|error| StoreError::Schema(format!("threshold {id}: {error}")))
}

fn alert_of(row: &sqlx::any::AnyRow) -> Result<AlertRow> {
    Ok(AlertRow {
        account: row.try_get("account_id")?,
        threshold: threshold_of(row)?,
        cycle_start_ms: row.try_get("cycle_start_ms")?,
        fired_ms: row.try_get("fired_ms")?,
        crossing: Crossing { observed: row.try_get("observed")?, base: row.try_get("base")? },
    })
}

fn delivery_of(row: &sqlx::any::AnyRow) -> Result<Delivery> {
    Ok(Delivery {
        url: row.try_get("url")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        next_attempt_ms: row.try_get("next_attempt_ms")?,
        last_error: row.try_get("last_error")?,
        delivered_ms: row.try_get("delivered_ms")?,
    })
}

impl Store {
    /// Replaces the account's thresholds.
    pub async fn set_alert_thresholds(&self, account: &AccountId, thresholds: &[Threshold]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM alert_thresholds WHERE account_id = $1")
            .bind(account.as_str().to_owned())
            .execute(&mut *tx)
            .await?;
        for threshold in thresholds {
            let (kind, scope, value) = threshold.parts();
            sqlx::query(
                "INSERT INTO alert_thresholds (account_id, threshold_id, kind, scope_id, value) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(account.as_str().to_owned())
            .bind(threshold.id.clone())
            .bind(kind)
            .bind(scope.to_owned())
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn alert_thresholds(&self, account: &AccountId) -> Result<Vec<Threshold>> {
        let rows = sqlx::query(
            "SELECT threshold_id, kind, scope_id, value FROM alert_thresholds WHERE account_id = $1 ORDER BY threshold_id",
        )
        .bind(account.as_str().to_owned())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(threshold_of).collect()
    }

    /// Every account's thresholds (the alert loop's work list).
    pub async fn all_alert_thresholds(&self) -> Result<BTreeMap<String, Vec<Threshold>>> {
        let rows = sqlx::query(
            "SELECT account_id, threshold_id, kind, scope_id, value FROM alert_thresholds ORDER BY account_id, threshold_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut all: BTreeMap<String, Vec<Threshold>> = BTreeMap::new();
        for row in &rows {
            let account: String = row.try_get("account_id")?;
            // One row this binary cannot read does not stop every other account's alerts.
            match threshold_of(row) {
                Ok(threshold) => all.entry(account).or_default().push(threshold),
                Err(error) => tracing::warn!(account, %error, "an alert threshold this binary cannot read; skipped"),
            }
        }
        Ok(all)
    }

    /// Records an alert unless its threshold already fired in this cycle, with a pending
    /// delivery to each of `webhooks` (due at `alert.fired_ms`), in one transaction; true when
    /// it is new.
    pub async fn record_alert(&self, alert: &AlertRow, webhooks: &[String]) -> Result<bool> {
        let (kind, scope, value) = alert.threshold.parts();
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO alerts (account_id, threshold_id, cycle_start_ms, fired_ms, kind, scope_id, value, observed, base) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (account_id, threshold_id, kind, scope_id, value, cycle_start_ms) DO NOTHING",
        )
        .bind(alert.account.clone())
        .bind(alert.threshold.id.clone())
        .bind(alert.cycle_start_ms)
        .bind(alert.fired_ms)
        .bind(kind)
        .bind(scope.to_owned())
        .bind(value)
        .bind(alert.crossing.observed)
        .bind(alert.crossing.base)
        .execute(&mut *tx)
        .await?;
        let new = done.rows_affected() == 1;
        if new {
            for url in webhooks {
                let insert = "INSERT INTO alert_deliveries \
                     (account_id, threshold_id, kind, scope_id, value, cycle_start_ms, url, next_attempt_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING";
                bind_key(sqlx::query(insert), alert).bind(url.clone()).bind(alert.fired_ms).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    /// Pending deliveries due by `now`, oldest due first, with their alerts.
    pub async fn due_deliveries(&self, now_ms: i64, limit: usize) -> Result<Vec<(Delivery, AlertRow)>> {
        let sql = format!(
            "SELECT d.url, d.attempts, d.next_attempt_ms, d.state, d.last_error, d.delivered_ms, \
             a.account_id, a.threshold_id, a.cycle_start_ms, a.fired_ms, a.kind, a.scope_id, a.value, a.observed, a.base \
             FROM alert_deliveries d JOIN alerts a ON a.account_id = d.account_id \
             AND a.threshold_id = d.threshold_id AND a.kind = d.kind AND a.scope_id = d.scope_id \
             AND a.value = d.value AND a.cycle_start_ms = d.cycle_start_ms \
             WHERE d.state = 'pending' AND d.next_attempt_ms <= $1 ORDER BY d.next_attempt_ms LIMIT {limit}"
        );
        let rows = sqlx::query(audited(&sql)).bind(now_ms).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((delivery_of(row)?, alert_of(row)?))).collect()
    }

    /// Takes a due delivery until `until_ms` (another replica's pass skips it meanwhile); false
    /// when another replica took it first. The lease is also the token its result must show.
    pub async fn lease_delivery(&self, alert: &AlertRow, delivery: &Delivery, until_ms: i64) -> Result<bool> {
        let sql = format!(
            "UPDATE alert_deliveries SET next_attempt_ms = $1 WHERE {} AND url = $8 AND state = 'pending' \
             AND next_attempt_ms = $9",
            alert_key(2)
        );
        let query = bind_key(sqlx::query(audited(&sql)).bind(until_ms), alert);
        let done = query.bind(delivery.url.clone()).bind(delivery.next_attempt_ms).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records an attempt's outcome, if this replica still holds the delivery's lease `lease_ms`:
    /// delivered, or failed with when to try again (None: never). False when the lease had
    /// passed to another replica (its result stands).
    pub async fn delivery_attempted(
        &self,
        alert: &AlertRow,
        url: &str,
        lease_ms: i64,
        now_ms: i64,
        failed: Option<(&str, Option<i64>)>,
    ) -> Result<bool> {
        let (state, next, error, delivered) = match failed {
            None => ("delivered", now_ms, None, Some(now_ms)),
            Some((error, Some(next))) => ("pending", next, Some(error), None),
            Some((error, None)) => ("failed", now_ms, Some(error), None),
        };
        let sql = format!(
            "UPDATE alert_deliveries SET state = $1, attempts = attempts + 1, next_attempt_ms = $2, last_error = $3, \
             delivered_ms = $4 WHERE {} AND url = $11 AND state = 'pending' AND next_attempt_ms = $12",
            alert_key(5)
        );
        let query = sqlx::query(audited(&sql)).bind(state).bind(next).bind(error.map(str::to_owned)).bind(delivered);
        let done = bind_key(query, alert).bind(url.to_owned()).bind(lease_ms).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// The deliveries of each of `alerts`, by event id.
    pub async fn deliveries(&self, alerts: &[AlertRow]) -> Result<BTreeMap<String, Vec<Delivery>>> {
        let mut all = BTreeMap::new();
        let sql = format!(
            "SELECT url, attempts, next_attempt_ms, state, last_error, delivered_ms FROM alert_deliveries \
             WHERE {} ORDER BY url",
            alert_key(1)
        );
        for alert in alerts {
            let rows = bind_key(sqlx::query(audited(&sql)), alert).fetch_all(&self.pool).await?;
            let sent: Result<Vec<Delivery>> = rows.iter().map(delivery_of).collect();
            all.insert(alert.event_id(), sent?);
        }
        Ok(all)
    }

    /// Deliveries waiting (pending), for the gauge.
    pub async fn pending_deliveries(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM alert_deliveries WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }

    /// The account's alerts, newest first, older than `before`.
    pub async fn alerts(
        &self,
        account: &AccountId,
        before: Option<&AlertCursor>,
        limit: usize,
    ) -> Result<Vec<AlertRow>> {
        let sql = "SELECT account_id, threshold_id, cycle_start_ms, fired_ms, kind, scope_id, value, observed, base \
                   FROM alerts WHERE account_id = $1 \
                   ORDER BY fired_ms DESC, cycle_start_ms DESC, threshold_id DESC, kind DESC, scope_id DESC, value DESC";
        // The cursor names the last alert shown; the rows after it in this order are the page.
        // (Alerts are few per account: a handful of thresholds a cycle.)
        let rows = sqlx::query(sql).bind(account.as_str().to_owned()).fetch_all(&self.pool).await?;
        let all: Result<Vec<AlertRow>> = rows.iter().map(alert_of).collect();
        let all = all?;
        let start = match before {
            None => 0,
            Some((fired, cycle, event)) => all
                .iter()
                .position(|alert| {
                    (alert.fired_ms, alert.cycle_start_ms, alert.event_id()) == (*fired, *cycle, event.clone())
                })
                .map_or_else(
                    // The named alert is gone: resume at the first one older than it.
                    || {
                        all.iter()
                            .position(|alert| (alert.fired_ms, alert.cycle_start_ms) < (*fired, *cycle))
                            .unwrap_or(all.len())
                    },
                    |at| at + 1,
                ),
        };
        Ok(all.into_iter().skip(start).take(limit).collect())
    }
}
