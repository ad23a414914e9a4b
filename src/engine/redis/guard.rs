//! The state-loss guard: notices when Redis no longer holds the state the ledger says it should,
//! and then refuses every call instead of answering from what is left.
//!
//! Redis loses state when it restarts empty (no persistence, or a lost volume), is flushed, or
//! fails over to a replica that lacks recent writes. Served as if nothing happened, accounts the
//! ledger knows would answer NOT_FOUND and a SetPlan would create a fresh account over a lost
//! one. What gives it away:
//! - the layout marker (`cs:layout`, written when a deployment first starts) is gone: checked at
//!   start against the ledger (no marker but settled events: lost), and by every health check;
//! - a call finds no account (or no open reservation) that the ledger knows: checked whenever
//!   Redis answers NOT_FOUND, and before a call that may create an account (SetPlan, Grant,
//!   StartTrial) finds none in Redis;
//! - the settler finds new events reusing settled sequence numbers with other content: Redis
//!   lost acknowledged writes to an account it still holds (a failover to a replica that lacked
//!   them). Found after the fact — the first such changes were made — but it stops the rest.
//!
//! A loss found by evidence (the last two) deletes the layout marker, so every replica notices
//! it at its next health check.
//!
//! Once lost: readiness turns NOT_SERVING, every call answers UNAVAILABLE naming the cause and
//! the remedy, `credit_sidecar_redis_state_lost` reads 1 and an ERROR is logged. It ends when
//! the state is restored from the ledger (`rebuild` of every account, by hand or by the opt-in
//! automatic recovery, which stamps `cs:recovered`). A failover loss shows only once an account
//! writes again; `redis_wait_replicas` prevents it in the first place.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Error, RedisEngine, Result};
use crate::ledger::{AccountId, Error as LedgerError};
use crate::settle::store::Store;
use crate::telemetry;

/// What the guard knows.
#[derive(Default)]
pub(super) struct Guard {
    /// Fast path: false while nothing is lost.
    flagged: AtomicBool,
    lost: Mutex<Option<Lost>>,
    /// The ledger to check NOT_FOUND answers against (None: tests without a database).
    pub(super) ledger: Option<Store>,
}

#[derive(Clone)]
struct Lost {
    /// When it was noticed (Redis time, ms): a recovery stamped later ends it.
    since_ms: i64,
    cause: String,
}

impl Guard {
    pub(super) fn with_ledger(ledger: Option<Store>) -> Self {
        Self { ledger, ..Self::default() }
    }

    fn lost(&self) -> Option<Lost> {
        self.lost.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// The answer every call gets while Redis's state is lost.
fn refusal(cause: &str) -> Error {
    Error::StateLost(format!(
        "redis lost its state ({cause}); calls are refused until it is restored from the ledger: stop traffic, \
         let settlement finish, run `credit-sidecar rebuild` (README, \"When Redis loses its state\"), or set \
         redis_state_recovery = \"rebuild\""
    ))
}

impl RedisEngine {
    /// Why Redis's state is considered lost, if it is.
    pub fn state_lost(&self) -> Option<String> {
        self.guard.flagged.load(Ordering::Acquire).then(|| self.guard.lost().map(|lost| lost.cause)).flatten()
    }

    /// Records that Redis lost its state (once; later causes are logged only).
    pub(super) async fn flag_lost(&self, cause: String) -> Error {
        let since_ms = self.now().await.unwrap_or_else(|_| chrono::Utc::now().timestamp_millis());
        let mut lost = self.guard.lost.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if lost.is_none() {
            tracing::error!(
                cause,
                "Redis lost its state: refusing every call until it is restored from the ledger (`credit-sidecar \
                 rebuild`, or redis_state_recovery = \"rebuild\")"
            );
            metrics::gauge!(telemetry::REDIS_STATE_LOST).set(1.0);
            *lost = Some(Lost { since_ms, cause: cause.clone() });
            self.guard.flagged.store(true, Ordering::Release);
        }
        refusal(&cause)
    }

    /// Records a loss found by evidence (not by the missing marker) and deletes the layout
    /// marker, so that every replica's next health check, and any sidecar that starts, notices
    /// it too — until a `rebuild` records the layout again.
    pub async fn report_lost(&self, cause: String) -> Error {
        let error = self.flag_lost(cause).await;
        let mut connection = self.connection.clone();
        let key = self.layout.layout_key();
        if let Err(error) = self.bounded(redis::cmd("DEL").arg(&key).query_async::<()>(&mut connection)).await {
            tracing::warn!(%error, "could not delete the layout marker to tell the other replicas");
        }
        error
    }

    /// Looks at Redis: the layout marker must be there; a loss ends once a recovery stamped after
    /// it. Err while lost.
    pub async fn check_state(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let layout: Option<String> =
            self.bounded(redis::cmd("GET").arg(self.layout.layout_key()).query_async(&mut connection)).await?;
        if layout.is_none() {
            let lost =
                self.flag_lost("the layout marker cs:layout is gone: Redis restarted empty or was flushed".into());
            return Err(lost.await);
        }
        let Some(lost) = self.guard.flagged.load(Ordering::Acquire).then(|| self.guard.lost()).flatten() else {
            return Ok(());
        };
        let recovered: Option<i64> =
            self.bounded(redis::cmd("GET").arg(self.layout.recovered_key()).query_async(&mut connection)).await?;
        if recovered.is_some_and(|at| at >= lost.since_ms) {
            *self.guard.lost.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
            self.guard.flagged.store(false, Ordering::Release);
            metrics::gauge!(telemetry::REDIS_STATE_LOST).set(0.0);
            tracing::info!("Redis's state was restored from the ledger; serving again");
            return Ok(());
        }
        Err(refusal(&lost.cause))
    }

    /// Before any call: refuses while the state is lost (looking again, so a recovery is
    /// noticed at once).
    pub(super) async fn admit(&self) -> Result<()> {
        if !self.guard.flagged.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_state().await
    }

    /// Before a call that may create `account`: if Redis has no such account but the ledger
    /// does, Redis lost it.
    pub(super) async fn guard_creation(&self, account: &AccountId) -> Result<()> {
        let Some(ledger) = &self.guard.ledger else { return Ok(()) };
        let mut connection = self.connection.clone();
        let key = &self.layout.account_keys(account)[0];
        let exists: bool = self.bounded(redis::cmd("EXISTS").arg(key).query_async(&mut connection)).await?;
        if exists {
            return Ok(());
        }
        match ledger.knows_account(account).await {
            Ok(false) => Ok(()),
            Ok(true) => Err(self.report_lost(format!("account {account} is in the ledger but not in Redis")).await),
            Err(error) => Err(Error::Unavailable(format!("database: {error}"))),
        }
    }

    /// A NOT_FOUND from Redis, checked against the ledger: Redis lost what the ledger knows?
    pub(super) async fn guard_not_found(&self, error: Error) -> Error {
        let Some(ledger) = &self.guard.ledger else { return error };
        let known = match &error {
            Error::Ledger(LedgerError::AccountNotFound(account)) => ledger.knows_account(account).await,
            Error::Ledger(LedgerError::ReservationNotFound(id)) => ledger.knows_open_reservation(id).await,
            _ => return error,
        };
        match known {
            Ok(false) => error,
            Ok(true) => self.report_lost(format!("{} is in the ledger but not in Redis", what(&error))).await,
            Err(database) => Error::Unavailable(format!("database: {database}")),
        }
    }
}

fn what(error: &Error) -> String {
    match error {
        Error::Ledger(LedgerError::AccountNotFound(account)) => format!("account {account}"),
        Error::Ledger(LedgerError::ReservationNotFound(id)) => format!("open reservation {id}"),
        other => other.to_string(),
    }
}

impl RedisEngine {
    /// Takes the automatic recovery's lock for `ttl_ms`; false if another replica holds it.
    pub async fn lock_recovery(&self, token: &str, ttl_ms: u64) -> Result<bool> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("SET");
        command.arg(self.layout.recovery_lock_key()).arg(token).arg("NX").arg("PX").arg(ttl_ms);
        let taken: Option<String> = self.bounded(command.query_async(&mut connection)).await?;
        Ok(taken.is_some())
    }

    /// Releases the lock if this `token` still holds it.
    pub async fn unlock_recovery(&self, token: &str) -> Result<()> {
        let mut connection = self.connection.clone();
        let key = self.layout.recovery_lock_key();
        let holder: Option<String> = self.bounded(redis::cmd("GET").arg(&key).query_async(&mut connection)).await?;
        if holder.as_deref() == Some(token) {
            self.bounded(redis::cmd("DEL").arg(&key).query_async::<()>(&mut connection)).await?;
        }
        Ok(())
    }
}
