//! Where hot state lives. [`Engine`] is what the API calls; it dispatches to a backend:
//! - `embedded`: the reference model in-process, behind a lock (zero set-up, the default).
//! - [`redis`]: production; every operation one atomic Lua script, ready for Redis Cluster.
//!
//! Every backend executes the same validated commands from [`crate::ledger::command`] and
//! returns the same answers; a backend failure is [`Error::Unavailable`], never a guess.

mod embedded;
mod memory_outbox;
pub mod redis;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ledger::command::{
    Charge, Commit, CommitBatch, Extend, Grant, Quote, Release, Reserve, SetCategoryBudget, SetPlan, SetUserLimit,
    StartTrial,
};
use crate::ledger::{
    AccountId, AccountView, Balance, CategoryView, Charged, Clock, CommitBatched, Committed, Decision, Extended,
    Granted, Ledger, PlanSet, Quoted, Released, ReservationId, ReservationState, ReservationView, Reserved, Rules,
    UserId, UserView,
};
use crate::settle::store::Store;

pub use embedded::{EmbeddedEngine, MemoryOutbox, SNAPSHOT_INTERVAL_EVENTS};

/// Why an engine could not answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Refused by the rules: bad input, unknown account or reservation, request id reuse.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::Error),
    /// The store behind the engine could not be reached or did not answer in time. Nothing was
    /// decided.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Redis lost its state: calls are refused until it is restored from the ledger (by an
    /// operator's `rebuild`, or by itself with `redis_state_recovery = "rebuild"`).
    #[error("store unavailable: {0}")]
    StateLost(String),
    /// Something that cannot be mended by retrying: data the code cannot read (a bug, or
    /// corruption), or an operation this deployment does not offer.
    #[error("internal: {0}")]
    Internal(String),
    /// The operation needs something this deployment lacks (e.g. usage without a database).
    #[error("{0}")]
    NotConfigured(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A page of reservations and the token of the next page.
pub type ReservationPage = (Vec<ReservationView>, Option<u64>);

/// The engine the server runs, with the rules it validates requests against.
#[derive(Clone)]
pub struct Engine {
    /// Swapped whole when the price book or categories are reloaded; each call reads one version.
    rules: Arc<arc_swap::ArcSwap<Rules>>,
    backend: Backend,
    /// Holds expired by the background sweep (not by a call that found them overdue).
    swept_holds: Arc<AtomicU64>,
}

#[derive(Clone)]
enum Backend {
    Embedded(Arc<EmbeddedEngine>),
    Redis(Arc<redis::RedisEngine>),
}

impl Engine {
    /// The embedded engine with nothing settled: its events are dropped (tests of the rules).
    pub fn embedded(rules: Rules, clock: Arc<dyn Clock>) -> Self {
        let ledger = Ledger::new(rules.request_id_retention_ms);
        Self::embedded_with(rules, clock, ledger, None)
    }

    /// The embedded engine as it stood when it stopped: its state is what it kept in `store`
    /// (snapshots, the events after them, remembered answers); then what passed while it was down
    /// (holds past their deadline, cycles that ended) is caught up. Its events queue in a
    /// [`MemoryOutbox`] of `outbox_max` events for the settler.
    pub async fn restore_embedded(
        rules: Rules,
        clock: Arc<dyn Clock>,
        store: &Store,
        outbox_max: usize,
    ) -> Result<Self> {
        let kept = store.durable_state().await.map_err(|error| Error::Unavailable(error.to_string()))?;
        let (snapshots, events, answers) = (kept.snapshots.len(), kept.events.len(), kept.answers.len());
        let ledger = Ledger::restore_durable(rules.request_id_retention_ms, kept)
            .map_err(|error| Error::Internal(format!("restoring the embedded engine: {error}")))?;
        tracing::info!(snapshots, events, answers, "embedded engine restored from the database");
        let engine = Self::embedded_with(rules, clock, ledger, Some(Arc::new(MemoryOutbox::new(outbox_max))));
        engine.sweep().await?;
        Ok(engine)
    }

    /// The embedded engine starting from `ledger`, its events queued in `outbox` for the settler.
    pub fn embedded_with(
        rules: Rules,
        clock: Arc<dyn Clock>,
        ledger: Ledger,
        outbox: Option<Arc<MemoryOutbox>>,
    ) -> Self {
        Self {
            rules: Arc::new(arc_swap::ArcSwap::from_pointee(rules)),
            backend: Backend::Embedded(Arc::new(EmbeddedEngine::new(clock, ledger, outbox))),
            swept_holds: Arc::default(),
        }
    }

    pub fn redis(rules: Rules, engine: redis::RedisEngine) -> Self {
        Self {
            rules: Arc::new(arc_swap::ArcSwap::from_pointee(rules)),
            backend: Backend::Redis(Arc::new(engine)),
            swept_holds: Arc::default(),
        }
    }

    /// The rules in force now (validation, prices, TTL bounds).
    pub fn rules(&self) -> Arc<Rules> {
        self.rules.load_full()
    }

    /// From now on, new calls are checked and priced by `rules`.
    pub fn replace_rules(&self, rules: Rules) {
        self.rules.store(Arc::new(rules));
    }

    pub fn name(&self) -> &'static str {
        match &self.backend {
            Backend::Embedded(_) => "embedded",
            Backend::Redis(_) => "redis",
        }
    }

    pub async fn reserve(&self, cmd: &Reserve) -> Result<Decision<Reserved>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.reserve(now, cmd)).await,
            Backend::Redis(engine) => engine.reserve(cmd).await,
        }
    }

    pub async fn commit(&self, cmd: &Commit) -> Result<Decision<Committed>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.commit(now, cmd)).await,
            Backend::Redis(engine) => engine.commit(cmd).await,
        }
    }

    /// Each item's answer, in order, and the reservation after them; refused whole (nothing
    /// changed) by an unknown reservation or an item id used with other parameters.
    pub async fn commit_batch(&self, cmd: &CommitBatch) -> Result<CommitBatched> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.commit_batch(now, cmd)).await,
            Backend::Redis(engine) => engine.commit_batch(cmd).await,
        }
    }

    pub async fn extend(&self, cmd: &Extend) -> Result<Decision<Extended>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.extend(now, cmd)).await,
            Backend::Redis(engine) => engine.extend(cmd).await,
        }
    }

    pub async fn release(&self, cmd: &Release) -> Result<Decision<Released>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.release(now, cmd)).await,
            Backend::Redis(engine) => engine.release(cmd).await,
        }
    }

    pub async fn charge(&self, cmd: &Charge) -> Result<Decision<Charged>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.charge(now, cmd)).await,
            Backend::Redis(engine) => engine.charge(cmd).await,
        }
    }

    pub async fn quote(&self, cmd: &Quote) -> Result<Quoted> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.quote(now, cmd)).await,
            Backend::Redis(engine) => engine.quote(cmd).await,
        }
    }

    pub async fn set_plan(&self, cmd: &SetPlan) -> Result<Decision<PlanSet>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.set_plan(now, cmd)).await,
            Backend::Redis(engine) => engine.set_plan(cmd).await,
        }
    }

    pub async fn grant(&self, cmd: &Grant) -> Result<Decision<Granted>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.grant(now, cmd)).await,
            Backend::Redis(engine) => engine.grant(cmd).await,
        }
    }

    pub async fn start_trial(&self, cmd: &StartTrial) -> Result<Decision<Granted>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.start_trial(now, cmd)).await,
            Backend::Redis(engine) => engine.start_trial(cmd).await,
        }
    }

    pub async fn set_category_budget(&self, cmd: &SetCategoryBudget) -> Result<Decision<CategoryView>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.set_category_budget(now, cmd)).await,
            Backend::Redis(engine) => engine.set_category_budget(cmd).await,
        }
    }

    pub async fn set_user_limit(&self, cmd: &SetUserLimit) -> Result<Decision<UserView>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.set_user_limit(now, cmd)).await,
            Backend::Redis(engine) => engine.set_user_limit(cmd).await,
        }
    }

    pub async fn balance(&self, account: &AccountId, user: Option<&UserId>) -> Result<Balance> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.balance(now, account, user)).await,
            Backend::Redis(engine) => engine.balance(account, user).await,
        }
    }

    pub async fn account(&self, account: &AccountId) -> Result<AccountView> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.account(now, account)).await,
            Backend::Redis(engine) => engine.account(account).await,
        }
    }

    pub async fn reservation(&self, id: &ReservationId) -> Result<ReservationView> {
        match &self.backend {
            Backend::Embedded(engine) => engine.run(|ledger, now| ledger.reservation(now, id)).await,
            Backend::Redis(engine) => engine.reservation(id).await,
        }
    }

    pub async fn list_reservations(
        &self,
        account: &AccountId,
        state: Option<ReservationState>,
        page_size: usize,
        before: Option<u64>,
    ) -> Result<ReservationPage> {
        match &self.backend {
            Backend::Embedded(engine) => {
                engine.run(|ledger, now| ledger.list_reservations(now, account, state, page_size, before)).await
            }
            Backend::Redis(engine) => engine.list_reservations(account, state, page_size, before).await,
        }
    }

    /// The Redis engine, when this is one.
    /// Now, as this process sees it (the engine's clock; for Redis, the test clock when one is
    /// set, else the system's): for what the sidecar decides without Redis during an outage.
    pub fn local_now_ms(&self) -> crate::ledger::Millis {
        match &self.backend {
            Backend::Embedded(engine) => engine.now_ms(),
            Backend::Redis(engine) => engine.local_now_ms(),
        }
    }

    pub fn redis_engine(&self) -> Option<Arc<redis::RedisEngine>> {
        match &self.backend {
            Backend::Redis(engine) => Some(engine.clone()),
            Backend::Embedded(_) => None,
        }
    }

    /// Does the engine keep remembered answers in SQL (the embedded engine with settlement)?
    pub fn keeps_answers_in_sql(&self) -> bool {
        matches!(&self.backend, Backend::Embedded(engine) if engine.outbox().is_some())
    }

    /// Does the engine's store answer? (Always, for the embedded engine.)
    pub async fn ping(&self) -> Result<()> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(engine) => engine.ping().await,
        }
    }

    /// Expires holds past their deadline and renews ended cycles everywhere; returns how many
    /// holds expired. The server's background sweep calls this; tests call it directly.
    pub async fn sweep(&self) -> Result<usize> {
        let expired = match &self.backend {
            Backend::Embedded(engine) => engine.sweep(),
            Backend::Redis(engine) => engine.sweep().await?,
        };
        self.swept_holds.fetch_add(expired as u64, Ordering::Relaxed);
        metrics::counter!(crate::telemetry::SWEPT_HOLDS).increment(expired as u64);
        Ok(expired)
    }

    /// The embedded engine's outbox, when this is one that settles.
    pub fn memory_outbox(&self) -> Option<Arc<MemoryOutbox>> {
        match &self.backend {
            Backend::Embedded(engine) => engine.outbox(),
            Backend::Redis(_) => None,
        }
    }

    /// How many holds the sweep has expired since start.
    pub fn swept_holds(&self) -> u64 {
        self.swept_holds.load(Ordering::Relaxed)
    }
}
