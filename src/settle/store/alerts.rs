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

/// Where a page of alerts ends: (fired_ms, threshold_id) of its last, oldest alert.
pub type AlertCursor = (i64, String);

fn threshold_of(row: &sqlx::any::AnyRow) -> Result<Threshold> {
    let (id, kind, scope, value): (String, String, String, i64) =
        (row.try_get("threshold_id")?, row.try_get("kind")?, row.try_get("scope_id")?, row.try_get("value")?);
    Threshold::from_parts(&id, &kind, &scope, value)
        .map_err(|error| StoreError::Schema(format!("threshold {id}: {error}")))
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

    /// Records an alert unless its threshold already fired in this cycle; true when it is new.
    pub async fn record_alert(&self, alert: &AlertRow) -> Result<bool> {
        let (kind, scope, value) = alert.threshold.parts();
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
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
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
        rows.iter()
            .map(|row| {
                Ok(AlertRow {
                    account: row.try_get("account_id")?,
                    threshold: threshold_of(row)?,
                    cycle_start_ms: row.try_get("cycle_start_ms")?,
                    fired_ms: row.try_get("fired_ms")?,
                    crossing: Crossing { observed: row.try_get("observed")?, base: row.try_get("base")? },
                })
            })
            .collect()
    }
}
