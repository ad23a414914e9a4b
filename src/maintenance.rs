//! The `verify` and `rebuild` commands: the SQL ledger is the system of record, and the Redis
//! state of an account must be what replaying its settled events gives.
//!
//! - [`verify`] replays each account's events into the reference model and compares the result
//!   with what Redis holds now, field by field, and reports events kept in `ledger_conflicts`.
//!   Events still waiting in the outbox show up as drift too: run it with settlement caught up.
//! - [`rebuild`] writes the replayed state into Redis, replacing what is there: after a Redis
//!   loss, or to repair drift that `verify` found. Run it with traffic stopped: it overwrites
//!   whatever changed after the last settled event. Remembered request ids are not restored.

use crate::engine::Error as EngineError;
use crate::engine::redis::{IN_PLACE_FROM, LAYOUT_VERSION, RedisEngine, in_place_upgradable};
use crate::ledger::{AccountId, AccountView, Ledger, Millis};
use crate::settle::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Replay(#[from] crate::ledger::replay::ReplayError),
    #[error(
        "{0} event(s) in the Redis outbox are not in the ledger yet: stop the old sidecars gracefully (they \
         flush settlement) or let a settler finish, then run the upgrade again"
    )]
    Unsettled(usize),
}

/// One difference between the ledger and Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    pub account: AccountId,
    pub what: String,
    pub ledger: String,
    pub redis: String,
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: ledger {} / redis {}", self.account, self.what, self.ledger, self.redis)
    }
}

/// The accounts to act on: one, or every account the ledger knows.
async fn accounts(store: &Store, account: Option<&AccountId>) -> Result<Vec<AccountId>, MaintenanceError> {
    Ok(match account {
        Some(account) => vec![account.clone()],
        None => store.accounts().await?,
    })
}

/// The account as its settled events leave it, caught up to `now`.
async fn replayed(
    store: &Store,
    account: &AccountId,
    retention_ms: Millis,
    now: Millis,
) -> Result<Ledger, MaintenanceError> {
    let events = store.events(Some(account)).await?;
    Ok(Ledger::restore(retention_ms, now, events)?)
}

fn compare(account: &AccountId, ledger: &AccountView, redis: &AccountView) -> Vec<Drift> {
    let mut drift = Vec::new();
    let mut check = |what: &str, left: String, right: String| {
        if left != right {
            drift.push(Drift { account: account.clone(), what: what.to_owned(), ledger: left, redis: right });
        }
    };
    check("totals", format!("{:?}", ledger.totals), format!("{:?}", redis.totals));
    check("cycle", format!("{:?}", ledger.cycle), format!("{:?}", redis.cycle));
    check("plan", format!("{:?}", ledger.plan), format!("{:?}", redis.plan));
    check("lots", format!("{:?}", ledger.lots), format!("{:?}", redis.lots));
    check("trial", ledger.trial_used.to_string(), redis.trial_used.to_string());
    check("users", format!("{:?}", ledger.users), format!("{:?}", redis.users));
    check("categories", format!("{:?}", ledger.categories), format!("{:?}", redis.categories));
    check("open reservations", ledger.open_reservations.to_string(), redis.open_reservations.to_string());
    drift
}

/// Compares Redis with the ledger for one account or all; returns every difference found.
pub async fn verify(
    store: &Store,
    redis: &RedisEngine,
    retention_ms: Millis,
    account: Option<&AccountId>,
) -> Result<Vec<Drift>, MaintenanceError> {
    let mut drift = Vec::new();
    for account in accounts(store, account).await? {
        let conflicts = store.conflicts(&account).await?;
        if conflicts > 0 {
            drift.push(Drift {
                account: account.clone(),
                what: "events that reused a settled sequence (ledger_conflicts)".into(),
                ledger: "0".into(),
                redis: conflicts.to_string(),
            });
        }
        let now = redis.now().await?;
        let expected = replayed(store, &account, retention_ms, now).await?.account(now, &account);
        let Ok(expected) = expected else { continue };
        match redis.account(&account).await {
            Ok(actual) => drift.extend(compare(&account, &expected, &actual)),
            Err(EngineError::Ledger(crate::ledger::Error::AccountNotFound(_))) => drift.push(Drift {
                account: account.clone(),
                what: "account".into(),
                ledger: format!("{:?}", expected.totals),
                redis: "missing".into(),
            }),
            Err(error) => return Err(error.into()),
        }
    }
    Ok(drift)
}

/// Re-creates one account's or every account's Redis state from the ledger; returns how many
/// accounts were written.
pub async fn rebuild(
    store: &Store,
    redis: &RedisEngine,
    retention_ms: Millis,
    account: Option<&AccountId>,
) -> Result<usize, MaintenanceError> {
    let mut written = 0;
    for one in accounts(store, account).await? {
        let now = redis.now().await?;
        let ledger = replayed(store, &one, retention_ms, now).await?;
        if let Some(snapshot) = ledger.snapshot(&one) {
            redis.restore_account(&snapshot).await?;
            written += 1;
        }
    }
    if account.is_none() {
        // Every account is back: a loss of Redis's state noticed before this is over.
        redis.mark_restored().await?;
    }
    Ok(written)
}

/// How long the automatic recovery's lock lives, should its holder die mid-way.
const RECOVERY_LOCK_TTL_MS: u64 = 600_000;

/// What one attempt of the automatic recovery did.
#[derive(Debug, PartialEq, Eq)]
pub enum Recovery {
    /// Every account was restored; this many were written.
    Restored(usize),
    /// Another replica holds the lock.
    Elsewhere,
    /// Redis's outbox holds events the ledger has not settled yet: try again once it has.
    Unsettled(usize),
}

/// The opt-in automatic recovery (`redis_state_recovery = "rebuild"`): restores every account
/// from the ledger under a lock, so one replica does it once while all refuse calls.
pub async fn recover(store: &Store, redis: &RedisEngine, retention_ms: Millis) -> Result<Recovery, MaintenanceError> {
    let token = format!("{}-{}", std::process::id(), chrono::Utc::now().timestamp_millis());
    if !redis.lock_recovery(&token, RECOVERY_LOCK_TTL_MS).await? {
        return Ok(Recovery::Elsewhere);
    }
    let result = async {
        let unsettled = unsettled_events(store, redis).await?;
        if unsettled > 0 {
            return Ok(Recovery::Unsettled(unsettled));
        }
        Ok(Recovery::Restored(rebuild(store, redis, retention_ms, None).await?))
    }
    .await;
    redis.unlock_recovery(&token).await?;
    result
}

/// What the layout upgrade did: converted the accounts of a layout-2 or layout-3 Redis in place, deleted a
/// layout-1 Redis's keys (or found no layout recorded: `from_layout` 0) and rebuilt the accounts
/// from the ledger, or nothing (`from_layout` is this layout: it was upgraded already).
#[derive(Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub from_layout: u32,
    pub accounts_converted: usize,
    pub keys_deleted: usize,
    pub accounts_rebuilt: usize,
}

/// Moves a Redis written by an older layout to this one (the old sidecars stopped first).
///
/// From layout 2 or 3, in place: every account's remembered request ids are converted (layouts 3
/// and 4 changed only how they are kept), so they survive and nothing else is touched; the
/// outbox streams stay as they are for the new sidecars to settle.
///
/// From layout 1: refuses while any event in the outbox streams is missing from the SQL ledger
/// (let settlement finish first), then deletes every key of the deployment, records this layout
/// and rebuilds every account from the ledger. Remembered request ids do not survive that (as
/// with `rebuild`).
pub async fn upgrade_layout(
    store: &Store,
    settings: &crate::engine::redis::RedisSettings,
    retention_ms: Millis,
) -> Result<Upgraded, MaintenanceError> {
    let redis = RedisEngine::connect_unchecked(settings, retention_ms).await?;
    let current = format!("{LAYOUT_VERSION} {}", settings.shards);
    match redis.recorded_layout().await? {
        // Run again after it finished (say its last reply was lost): nothing to do. Going on
        // would wipe and rebuild, losing the request ids the conversion kept.
        Some(recorded) if recorded == current => {
            redis.forget_upgraded().await?;
            return Ok(Upgraded {
                from_layout: LAYOUT_VERSION,
                accounts_converted: 0,
                keys_deleted: 0,
                accounts_rebuilt: 0,
            });
        }
        Some(recorded) if let Some(from) = in_place_upgradable(&recorded, settings.shards) => {
            let accounts_converted = redis.upgrade_in_place(from).await?;
            return Ok(Upgraded { from_layout: from, accounts_converted, keys_deleted: 0, accounts_rebuilt: 0 });
        }
        // Another shard count: converting would read every account under the wrong keys, and
        // rebuilding would move them all. The operator set the wrong `redis_shards`.
        Some(recorded) if IN_PLACE_FROM.iter().any(|version| recorded.starts_with(&format!("{version} "))) => {
            return Err(MaintenanceError::Engine(EngineError::Unavailable(format!(
                "redis layout: Redis holds layout {} over {} shards; set redis_shards to that and run the upgrade \
                 again",
                &recorded[..1],
                &recorded[2..]
            ))));
        }
        _ => {}
    }
    let unsettled = unsettled_events(store, &redis).await?;
    if unsettled > 0 {
        return Err(MaintenanceError::Unsettled(unsettled));
    }
    let from_layout = if redis.layout_1_marker().await?.is_some() { 1 } else { 0 };
    let keys_deleted = redis.wipe_and_init().await?;
    let accounts_rebuilt = rebuild(store, &redis, retention_ms, None).await?;
    Ok(Upgraded { from_layout, accounts_converted: 0, keys_deleted, accounts_rebuilt })
}

/// How many events in Redis's outbox streams the ledger does not have. The streams' entry format
/// is the same in every layout, so this reads an old layout's outbox too.
async fn unsettled_events(store: &Store, redis: &RedisEngine) -> Result<usize, MaintenanceError> {
    let mut settled: std::collections::HashMap<AccountId, std::collections::HashSet<u64>> = Default::default();
    let mut missing = 0;
    for event in redis.outbox().await? {
        if !settled.contains_key(&event.account) {
            let seqs = store.events(Some(&event.account)).await?.into_iter().map(|settled| settled.seq).collect();
            settled.insert(event.account.clone(), seqs);
        }
        if !settled[&event.account].contains(&event.seq) {
            missing += 1;
        }
    }
    Ok(missing)
}
