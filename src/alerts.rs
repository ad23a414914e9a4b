//! Threshold alerts: a background pass every `alert_interval_ms` reads each account that has
//! thresholds (from the engine, as GetAccount does), and records each threshold it finds
//! crossed in the ledger database — once per billing cycle, whichever replica sees it first
//! (the table's key decides) — then tells the WatchAccount streams of this sidecar.
//!
//! The rule of a threshold (when it counts as crossed) is the ledger's
//! ([`crate::ledger::alerts`]); this module only looks, records and tells. It looks at the
//! live state, not at each event, so a threshold crossed and uncrossed between two passes (an
//! hold taken and released within a second) is not seen: alerts are about where an account
//! stands, not about every move.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use crate::engine::{Engine, Error as EngineError};
use crate::ledger::{AccountId, Error as LedgerError};
use crate::settle::store::{AlertRow, Store};

/// Alerts a slow WatchAccount stream may fall behind by before it misses some.
const WATCHERS_BUFFER: usize = 256;

/// What one pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub accounts: usize,
    /// Alerts this pass recorded (not those another replica or an earlier pass had).
    pub fired: usize,
}

/// The alerts this sidecar records, told to whoever listens (WatchAccount streams).
pub struct Alerts {
    sender: broadcast::Sender<Arc<AlertRow>>,
    /// (account, threshold, cycle) known recorded, so a crossed threshold is not written again
    /// every pass. Cleared when it grows past a bound (the database's key still holds).
    recorded: std::sync::Mutex<HashSet<(String, String, i64)>>,
}

const RECORDED_REMEMBERED: usize = 100_000;

impl Default for Alerts {
    fn default() -> Self {
        Self { sender: broadcast::channel(WATCHERS_BUFFER).0, recorded: std::sync::Mutex::default() }
    }
}

impl Alerts {
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AlertRow>> {
        self.sender.subscribe()
    }

    /// One pass over every account with thresholds.
    pub async fn pass(&self, engine: &Engine, store: &Store) -> Result<Pass, String> {
        let all = store.all_alert_thresholds().await.map_err(|error| error.to_string())?;
        let mut pass = Pass::default();
        for (account, thresholds) in all {
            let Ok(id) = AccountId::parse(&account) else { continue };
            let view = match engine.account(&id).await {
                Ok(view) => view,
                Err(EngineError::Ledger(LedgerError::AccountNotFound(_))) => continue,
                Err(error) => return Err(error.to_string()),
            };
            pass.accounts += 1;
            let fired_ms = chrono::Utc::now().timestamp_millis();
            for threshold in thresholds {
                let Some(crossing) = threshold.crossed(&view) else { continue };
                let key = (account.clone(), threshold.id.clone(), view.cycle.start_ms);
                if self.recorded.lock().expect("recorded alerts").contains(&key) {
                    continue;
                }
                let alert = AlertRow {
                    account: account.clone(),
                    threshold,
                    cycle_start_ms: view.cycle.start_ms,
                    fired_ms,
                    crossing,
                };
                let new = store.record_alert(&alert).await.map_err(|error| error.to_string())?;
                {
                    let mut recorded = self.recorded.lock().expect("recorded alerts");
                    if recorded.len() >= RECORDED_REMEMBERED {
                        recorded.clear();
                    }
                    recorded.insert(key);
                }
                if new {
                    let (kind, _, _) = alert.threshold.parts();
                    tracing::info!(
                        event_id = alert.event_id(),
                        kind,
                        observed = crossing.observed,
                        base = crossing.base,
                        "alert fired"
                    );
                    metrics::counter!(crate::telemetry::ALERTS, "kind" => kind).increment(1);
                    pass.fired += 1;
                    // Nobody listening is fine.
                    let _ = self.sender.send(Arc::new(alert));
                }
            }
        }
        Ok(pass)
    }
}

/// Runs a pass every `every` until `stopped` closes.
pub async fn alert_loop(
    alerts: Arc<Alerts>,
    engine: Engine,
    store: Store,
    every: Duration,
    mut stopped: watch::Receiver<()>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        if let Err(error) = alerts.pass(&engine, &store).await {
            tracing::warn!(%error, "alert pass failed; will retry");
        }
    }
}
