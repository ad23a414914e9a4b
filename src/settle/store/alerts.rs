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
    /// Stable across replicas and retries.
    pub fn event_id(&self) -> String {
        format!("{}/{}/{}", self.account, self.threshold.id, self.cycle_start_ms)
    }
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

/// Where a page of alerts ends: (fired_ms, threshold_id) of its last, oldest alert.
pub type AlertCursor = (i64, String);

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
            all.entry(row.try_get("account_id")?).or_default().push(threshold_of(row)?);
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
             ON CONFLICT (account_id, threshold_id, cycle_start_ms) DO NOTHING",
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
                sqlx::query(
                    "INSERT INTO alert_deliveries (account_id, threshold_id, cycle_start_ms, url, next_attempt_ms) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(alert.account.clone())
                .bind(alert.threshold.id.clone())
                .bind(alert.cycle_start_ms)
                .bind(url.clone())
                .bind(alert.fired_ms)
                .execute(&mut *tx)
                .await?;
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
             AND a.threshold_id = d.threshold_id AND a.cycle_start_ms = d.cycle_start_ms \
             WHERE d.state = 'pending' AND d.next_attempt_ms <= $1 ORDER BY d.next_attempt_ms LIMIT {limit}"
        );
        let rows = sqlx::query(audited(&sql)).bind(now_ms).fetch_all(&self.pool).await?;
        rows.iter().map(|row| Ok((delivery_of(row)?, alert_of(row)?))).collect()
    }

    /// Takes a due delivery for `lease_ms` (another replica's pass skips it meanwhile); false
    /// when another replica took it first.
    pub async fn lease_delivery(&self, alert: &AlertRow, delivery: &Delivery, until_ms: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE alert_deliveries SET next_attempt_ms = $1 WHERE account_id = $2 AND threshold_id = $3 \
             AND cycle_start_ms = $4 AND url = $5 AND state = 'pending' AND next_attempt_ms = $6",
        )
        .bind(until_ms)
        .bind(alert.account.clone())
        .bind(alert.threshold.id.clone())
        .bind(alert.cycle_start_ms)
        .bind(delivery.url.clone())
        .bind(delivery.next_attempt_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records an attempt's outcome: delivered, or failed with when to try again (None: never).
    pub async fn delivery_attempted(
        &self,
        alert: &AlertRow,
        url: &str,
        now_ms: i64,
        failed: Option<(&str, Option<i64>)>,
    ) -> Result<()> {
        let (state, next, error, delivered) = match failed {
            None => ("delivered", now_ms, None, Some(now_ms)),
            Some((error, Some(next))) => ("pending", next, Some(error), None),
            Some((error, None)) => ("failed", now_ms, Some(error), None),
        };
        sqlx::query(
            "UPDATE alert_deliveries SET state = $1, attempts = attempts + 1, next_attempt_ms = $2, last_error = $3, \
             delivered_ms = $4 WHERE account_id = $5 AND threshold_id = $6 AND cycle_start_ms = $7 AND url = $8",
        )
        .bind(state)
        .bind(next)
        .bind(error.map(str::to_owned))
        .bind(delivered)
        .bind(alert.account.clone())
        .bind(alert.threshold.id.clone())
        .bind(alert.cycle_start_ms)
        .bind(url.to_owned())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every delivery of the account's alerts `alerts`, by alert.
    pub async fn deliveries(&self, alerts: &[AlertRow]) -> Result<BTreeMap<(String, i64), Vec<Delivery>>> {
        let mut all: BTreeMap<(String, i64), Vec<Delivery>> = BTreeMap::new();
        let Some(first) = alerts.first() else { return Ok(all) };
        let oldest = alerts.iter().map(|alert| alert.cycle_start_ms).min().unwrap_or(0);
        let rows = sqlx::query(
            "SELECT threshold_id, cycle_start_ms, url, attempts, next_attempt_ms, state, last_error, delivered_ms \
             FROM alert_deliveries WHERE account_id = $1 AND cycle_start_ms >= $2 ORDER BY url",
        )
        .bind(first.account.clone())
        .bind(oldest)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let key = (row.try_get("threshold_id")?, row.try_get("cycle_start_ms")?);
            all.entry(key).or_default().push(delivery_of(row)?);
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
        let sql = format!(
            "SELECT account_id, threshold_id, cycle_start_ms, fired_ms, kind, scope_id, value, observed, base FROM alerts \
             WHERE account_id = $1 AND (fired_ms < $2 OR (fired_ms = $2 AND threshold_id < $3)) \
             ORDER BY fired_ms DESC, threshold_id DESC LIMIT {limit}"
        );
        let (fired, threshold) = before.cloned().unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(audited(&sql))
            .bind(account.as_str().to_owned())
            .bind(fired)
            .bind(threshold)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(alert_of).collect()
    }
}
