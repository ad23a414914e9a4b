//! Threshold alerts: a background pass every `alert_interval_ms` reads each account that has
//! thresholds (from the engine, as GetAccount does), and records each threshold it finds
//! crossed in the ledger database — once per billing cycle, whichever replica sees it first
//! (the table's key decides), with a pending delivery per configured webhook in the same
//! transaction — then tells the WatchAccount streams of this sidecar. Another loop posts the
//! pending deliveries: signed (HMAC-SHA256), retried with bounded backoff, at least once, each
//! under the alert's stable event id.
//!
//! The rule of a threshold (when it counts as crossed) is the ledger's
//! ([`crate::ledger::alerts`]); this module only looks, records and tells. It looks at the
//! live state, not at each event, so a threshold crossed and uncrossed between two passes (an
//! hold taken and released within a second) is not seen: alerts are about where an account
//! stands, not about every move.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use tokio::sync::{broadcast, watch};

use crate::engine::{Engine, Error as EngineError};
use crate::ledger::{AccountId, Error as LedgerError};
use crate::settle::store::{AlertRow, Delivery, Store};

/// The webhook payload's format (its `format` field): a new shape is a new number.
pub const PAYLOAD_FORMAT: u32 = 1;

/// The longest one delivery attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait between two attempts (the backoff doubles up to it).
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// How often pending deliveries are looked for.
pub const DELIVERY_POLL: Duration = Duration::from_millis(200);

/// Deliveries one pass sends at most.
const DELIVERIES_PER_PASS: usize = 32;

/// Where alerts are posted.
#[derive(Clone)]
pub struct Webhooks {
    pub urls: Vec<String>,
    /// The HMAC-SHA256 key of the signature header.
    pub secret: Vec<u8>,
    /// Attempts per delivery before it is given up (`failed`).
    pub attempts_max: u32,
    /// The first retry's delay; it doubles each attempt, up to [`BACKOFF_MAX`].
    pub backoff: Duration,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("urls", &self.urls.iter().map(|url| origin(url)).collect::<Vec<_>>())
            .field("secret", &"<redacted>")
            .field("attempts_max", &self.attempts_max)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// A webhook URL as logs and listings show it: its origin only (a URL's path often carries a
/// token, as Slack's do).
pub fn origin(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => format!("{}/…", parsed.origin().ascii_serialization()),
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// The body posted for an alert (format [`PAYLOAD_FORMAT`]).
pub fn payload(alert: &AlertRow) -> String {
    let (kind, scope, value) = alert.threshold.parts();
    serde_json::json!({
        "format": PAYLOAD_FORMAT,
        "type": "alert",
        "event_id": alert.event_id(),
        "account_id": alert.account,
        "threshold": { "threshold_id": alert.threshold.id, "kind": kind, "scope_id": scope, "value": value },
        "cycle_start_unix_ms": alert.cycle_start_ms,
        "fired_unix_ms": alert.fired_ms,
        "observed": alert.crossing.observed,
        "base": alert.crossing.base,
    })
    .to_string()
}

/// The signature header's value: `v1=` and the hex HMAC-SHA256, under `secret`, of
/// `<timestamp>.<body>` (the timestamp header's value, so a receiver can refuse replays).
pub fn signature(secret: &[u8], timestamp_ms: i64, body: &str) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp_ms.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut text = String::with_capacity(3 + 2 * digest.len());
    text.push_str("v1=");
    for byte in digest {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// The delay before attempt `attempts + 1`, after `attempts` failed.
fn backoff(first: Duration, attempts: u32) -> Duration {
    first.saturating_mul(2_u32.saturating_pow(attempts.saturating_sub(1))).min(BACKOFF_MAX)
}

/// Alerts a slow WatchAccount stream may fall behind by before it misses some.
const WATCHERS_BUFFER: usize = 256;

/// What one pass found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    pub accounts: usize,
    /// Alerts this pass recorded (not those another replica or an earlier pass had).
    pub fired: usize,
    /// Accounts or alerts it could not read or record (tried again next pass).
    pub failed: usize,
}

/// The alerts this sidecar records, told to whoever listens (WatchAccount streams), and posted
/// to the webhooks.
pub struct Alerts {
    sender: broadcast::Sender<Arc<AlertRow>>,
    webhooks: Option<Webhooks>,
    /// Event ids known recorded, so a crossed threshold is not written again every pass. Cleared
    /// when it grows past a bound (the database's key still holds).
    recorded: std::sync::Mutex<HashSet<String>>,
}

const RECORDED_REMEMBERED: usize = 100_000;

impl Default for Alerts {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Alerts {
    pub fn new(webhooks: Option<Webhooks>) -> Self {
        Self { sender: broadcast::channel(WATCHERS_BUFFER).0, webhooks, recorded: std::sync::Mutex::default() }
    }

    pub fn webhooks(&self) -> Option<&Webhooks> {
        self.webhooks.as_ref()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<AlertRow>> {
        self.sender.subscribe()
    }

    /// One pass over every account with thresholds. An account that cannot be read or recorded
    /// now is skipped (counted in `failed`), not the pass.
    pub async fn pass(&self, engine: &Engine, store: &Store) -> Result<Pass, String> {
        let all = store.all_alert_thresholds().await.map_err(|error| error.to_string())?;
        let mut pass = Pass::default();
        for (account, thresholds) in all {
            let Ok(id) = AccountId::parse(&account) else { continue };
            let view = match engine.account(&id).await {
                Ok(view) => view,
                Err(EngineError::Ledger(LedgerError::AccountNotFound(_))) => continue,
                Err(error) => {
                    tracing::warn!(account, %error, "alert pass: the account cannot be read; next pass");
                    pass.failed += 1;
                    continue;
                }
            };
            pass.accounts += 1;
            let fired_ms = chrono::Utc::now().timestamp_millis();
            for threshold in thresholds {
                let Some(crossing) = threshold.crossed(&view) else { continue };
                let alert = AlertRow {
                    account: account.clone(),
                    threshold,
                    cycle_start_ms: view.cycle.start_ms,
                    fired_ms,
                    crossing,
                };
                let key = alert.event_id();
                if self.recorded.lock().expect("recorded alerts").contains(&key) {
                    continue;
                }
                let urls = self.webhooks.as_ref().map_or(&[][..], |hooks| &hooks.urls[..]);
                let new = match store.record_alert(&alert, urls).await {
                    Ok(new) => new,
                    Err(error) => {
                        tracing::warn!(account, %error, "alert pass: an alert cannot be recorded; next pass");
                        pass.failed += 1;
                        continue;
                    }
                };
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

impl Alerts {
    /// Posts the deliveries due now, one at a time, until `stopped` changes; returns how many
    /// were attempted.
    pub async fn deliver(
        &self,
        store: &Store,
        client: &reqwest::Client,
        stopped: &mut watch::Receiver<()>,
    ) -> Result<usize, String> {
        let Some(hooks) = &self.webhooks else { return Ok(0) };
        let now = chrono::Utc::now().timestamp_millis();
        let due = store.due_deliveries(now, DELIVERIES_PER_PASS).await.map_err(|error| error.to_string())?;
        let mut attempted = 0;
        for (delivery, alert) in due {
            // Taken with a fresh clock: the lease outlasts this attempt whatever came before it.
            let lease = chrono::Utc::now().timestamp_millis() + LEASE.as_millis() as i64;
            if !store.lease_delivery(&alert, &delivery, lease).await.map_err(|error| error.to_string())? {
                continue; // another replica took it
            }
            attempted += 1;
            let failed = if hooks.urls.contains(&delivery.url) {
                tokio::select! {
                    posted = post(client, hooks, &delivery, &alert) => posted.err(),
                    // Stopping: the lease lapses, and the delivery is tried again later.
                    _ = stopped.changed() => return Ok(attempted),
                }
            } else {
                // Removed from webhook_urls since the alert fired: not posted any more.
                Some(NOT_CONFIGURED.to_owned())
            };
            let done = chrono::Utc::now().timestamp_millis();
            let attempts = u32::try_from(delivery.attempts + 1).unwrap_or(u32::MAX);
            let url = origin(&delivery.url);
            let (result, outcome) = match &failed {
                None => ("delivered", None),
                Some(error) if attempts >= hooks.attempts_max || error == NOT_CONFIGURED => {
                    tracing::error!(event_id = alert.event_id(), url, attempts, error, "webhook delivery given up");
                    ("failed", Some((error.as_str(), None)))
                }
                Some(error) => {
                    let next = done + backoff(hooks.backoff, attempts).as_millis() as i64;
                    tracing::warn!(
                        event_id = alert.event_id(),
                        url,
                        attempts,
                        error,
                        "webhook delivery failed; will retry"
                    );
                    ("retried", Some((error.as_str(), Some(next))))
                }
            };
            let recorded = store.delivery_attempted(&alert, &delivery.url, lease, done, outcome).await;
            if !recorded.map_err(|error| error.to_string())? {
                tracing::warn!(
                    event_id = alert.event_id(),
                    url,
                    "webhook delivery: the lease had passed to another replica"
                );
            }
            metrics::counter!(crate::telemetry::WEBHOOK_DELIVERIES, "result" => result).increment(1);
        }
        Ok(attempted)
    }
}

/// The error of a delivery to a URL no longer in `webhook_urls`.
const NOT_CONFIGURED: &str = "no longer in webhook_urls";

/// How long a replica holds a delivery it is posting: well beyond one attempt.
const LEASE: Duration = Duration::from_secs(60);

/// The delivery loop counts the pending deliveries for the gauge every this many passes.
const PENDING_GAUGE_EVERY: u32 = 25;

/// One attempt: a 2xx answer within [`ATTEMPT_TIMEOUT`] delivers.
async fn post(client: &reqwest::Client, hooks: &Webhooks, delivery: &Delivery, alert: &AlertRow) -> Result<(), String> {
    let body = payload(alert);
    let timestamp = chrono::Utc::now().timestamp_millis();
    let response = client
        .post(&delivery.url)
        .timeout(ATTEMPT_TIMEOUT)
        .header("content-type", "application/json")
        .header("x-credit-sidecar-event-id", alert.event_id())
        .header("x-credit-sidecar-timestamp", timestamp.to_string())
        .header("x-credit-sidecar-signature", signature(&hooks.secret, timestamp, &body))
        .body(body)
        .send()
        .await
        .map_err(|error| error_chain(&error.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(format!("HTTP {status} (redirects are not followed: a signed alert goes where it was configured)"))
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// An error and its causes, without the URL (its path may carry a token).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Posts due deliveries every [`DELIVERY_POLL`] until `stopped` closes.
pub async fn delivery_loop(alerts: Arc<Alerts>, store: Store, mut stopped: watch::Receiver<()>) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .build();
    let client = match client {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "webhooks: cannot build an HTTP client; alerts are not posted");
            return;
        }
    };
    let mut ticker = tokio::time::interval(DELIVERY_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut passes = 0_u32;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.changed() => return,
        }
        if let Err(error) = alerts.deliver(&store, &client, &mut stopped).await {
            tracing::warn!(%error, "webhook pass failed; will retry");
        }
        if passes.is_multiple_of(PENDING_GAUGE_EVERY)
            && let Ok(pending) = store.pending_deliveries().await
        {
            metrics::gauge!(crate::telemetry::WEBHOOK_PENDING).set(pending as f64);
        }
        passes = passes.wrapping_add(1);
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
    // The first pass one interval after the start, not at once.
    ticker.tick().await;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::alerts::{Crossing, Threshold, When};

    fn alert() -> AlertRow {
        AlertRow {
            account: "acme".into(),
            threshold: Threshold::new("t", "eighty", When::UsedPercent(80)).unwrap(),
            cycle_start_ms: 1_772_236_800_000,
            fired_ms: 1_773_144_000_000,
            crossing: Crossing { observed: 860, base: 1_000 },
        }
    }

    /// The payload is a contract with every receiver: format 1, pinned.
    #[test]
    fn the_payload_is_format_1_and_the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        assert_eq!(
            payload(&alert()),
            r#"{"account_id":"acme","base":1000,"cycle_start_unix_ms":1772236800000,"event_id":"acme/eighty/1772236800000/used_percent:80","fired_unix_ms":1773144000000,"format":1,"observed":860,"threshold":{"kind":"used_percent","scope_id":"","threshold_id":"eighty","value":80},"type":"alert"}"#
        );
        // Computed apart (Python's hmac): HMAC-SHA256(b"secret", b"1700000000000.{}").
        assert_eq!(
            signature(b"secret", 1_700_000_000_000, "{}"),
            "v1=8399216d111287e3bb28e25c0f4f31dffdf831c68c9ee2b96c2f67c9b81d341b"
        );
        assert_ne!(signature(b"Jefe", 12, "body"), signature(b"Jefe", 13, "body"));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_bound_and_urls_show_their_origin_only() {
        let first = Duration::from_secs(1);
        let delays: Vec<u64> = (1..=11).map(|attempts| backoff(first, attempts).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(origin("https://hooks.slack.com/services/T0/B0/secret"), "https://hooks.slack.com/…");
        assert_eq!(origin("http://127.0.0.1:8080/hook?token=x"), "http://127.0.0.1:8080/…");
    }
}
