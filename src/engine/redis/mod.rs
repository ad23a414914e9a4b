//! The Redis engine: every operation is one call of a Redis Function, atomic in Redis, that
//! also appends its events to the shard's outbox stream in the same step. The functions
//! ([`library`], from `lua/*.lua`) are the Lua port of [`crate::ledger::model`]; this module owns
//! the key layout ([`keys`]), passes validated commands as positional arguments, and decodes the
//! positional replies into the model's own types ([`reply`]).
//!
//! The library is loaded at connect, before the server serves. If Redis loses it (a restart
//! without persistence, `FUNCTION FLUSH`, a failover to a replica without it), the periodic
//! health check ([`RedisEngine::ping`]) finds it missing and loads it again, outside any caller's
//! deadline; a call that meets "Function not found" first starts the same load in a task of its
//! own (one at a time per engine, never cut short by a caller giving up), waits for it within its
//! own budget, and tries once more. Functions are called by name with `FCALL`, reads with
//! `FCALL_RO` (they are registered `no-writes`). A call that finds its account needs more
//! catching up than one call does (see [`library::CATCHUP_STEPS_MAX`]) is answered "due" and made
//! again. Time comes from Redis `TIME`, so every replica agrees on expiry and renewal; only tests
//! can substitute a clock (see [`RedisEngine::connect_with_test_clock`]). A Redis error or a
//! timeout is [`Error::Unavailable`]: nothing is granted that could not be recorded.

pub mod events;
mod guard;
mod keys;
pub mod library;
pub mod outbox;
mod reply;

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use tracing::Instrument;

use keys::Keys;
pub use keys::{LAYOUT_VERSION, Layout, REQUEST_KEY_LEN, SHARDS_DEFAULT, SHARDS_MAX, request_key};
use library::LIBRARY;

use super::{Error, ReservationPage, Result};
use crate::ledger::command::{
    Charge, Commit, CommitBatch, Extend, Grant, Partial, Quote, Release, Reserve, SetCategoryBudget, SetPlan,
    SetUserLimit, StartTrial,
};
use crate::ledger::cycle::Cycle;
use crate::ledger::event::Event;
use crate::ledger::{
    AccountId, AccountView, Balance, Category, CategoryView, Charged, Clock, CommitBatched, Committed, Decision,
    Extended, Granted, Millis, PlanSet, Quoted, Released, ReservationId, ReservationState, ReservationView, Reserved,
    Totals, UserId, UserView,
};
use crate::settle::store::Store;
use reply::{Context, Fields, Reply};

/// The functions that create the account they name when it does not exist.
const CREATING: [&str; 3] = ["set_plan", "grant", "start_trial"];

/// The most accounts one sweep pass catches up per shard; the rest wait for the next pass.
pub const SWEEP_BATCH_MAX: usize = 512;

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// One URL (`redis://host:port/`), or with `cluster` the seed nodes of a Redis Cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// Shards accounts are spread over; fixed at first deployment.
    pub shards: u32,
    /// Prepended to every key (empty by default), so deployments can share a Redis.
    pub key_prefix: String,
    /// The longest a call waits for Redis before answering UNAVAILABLE.
    pub timeout: Duration,
    /// Synchronous replication: every state change waits for this many replicas (`WAIT`)
    /// before it is answered. None: answered once the primary has it.
    pub wait: Option<WaitReplicas>,
    /// For `rediss://` URLs: the CA that signs the server's certificate (None: the system's
    /// roots) and a client certificate for Redis's `tls-auth-clients`.
    pub tls: RedisTls,
    /// The password (of the URL's user, or `default`), read from a file; None: the URL's own.
    pub password: Option<Secret>,
}

/// A secret: kept out of `Debug` output (settings are logged in tests and errors).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("<redacted>")
    }
}

/// TLS material for `rediss://` connections, in PEM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedisTls {
    pub ca_pem: Option<Vec<u8>>,
    /// Certificate chain and private key.
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    /// The certificates to connect with, when any is given (otherwise the client's defaults).
    fn certificates(&self) -> Option<redis::TlsCertificates> {
        if self.ca_pem.is_none() && self.client_pem.is_none() {
            return None;
        }
        Some(redis::TlsCertificates {
            client_tls: self
                .client_pem
                .clone()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert, client_key: key }),
            root_cert: self.ca_pem.clone(),
        })
    }
}

/// How many replicas must have a state change before it is answered, and how long to wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitReplicas {
    pub replicas: u32,
    pub timeout: Duration,
}

/// The most times one operation is made again because its account needed more catching up
/// than a call does ([`library::CATCHUP_STEPS_MAX`] steps each): an account untouched for
/// years with thousands of holds still catches up; past this, the call answers UNAVAILABLE and
/// the sweep goes on with it.
pub const CATCHUP_ROUNDS_MAX: usize = 1000;

/// One Redis or a Redis Cluster, behind the same interface. Both reconnect by themselves and
/// multiplex concurrent calls over shared connections; clones share them.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}

pub struct RedisEngine {
    connection: Connection,
    /// How this engine reached Redis, so other tasks (the settler) can open connections of their
    /// own instead of queueing behind hot-path calls on this one.
    settings: RedisSettings,
    layout: Layout,
    timeout: Duration,
    retention_ms: Millis,
    /// Tests only: the time scripts use instead of Redis `TIME`.
    test_clock: Option<Arc<dyn Clock>>,
    /// Notices when Redis lost its state, and then refuses calls (see [`guard`]).
    guard: guard::Guard,
    /// Held while the library is being loaded: one load at a time, however many calls found it
    /// missing.
    loading: Arc<tokio::sync::Mutex<()>>,
}

fn unavailable(error: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {error}"))
}

/// Whether a function call only reads (FCALL_RO: registered `no-writes`, allowed on replicas)
/// or may write (FCALL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

/// The trace span of one Redis function call: a child of the call's span (off unless traces
/// are exported, see `telemetry::traces`). None outside a call: the sweep's and the settler's
/// Redis calls, every second per shard, would each make a trace of their own.
fn redis_span(function: &str) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "redis",
        otel.name = %format_args!("FCALL {function}"),
        otel.kind = "client",
        db.system = "redis",
        db.operation = "FCALL",
        function,
    )
}

impl RedisEngine {
    /// Connects, checks that Redis holds this layout version with the same shard count (or
    /// nothing yet: then records them), and loads the function library.
    pub async fn connect(settings: &RedisSettings, retention_ms: Millis) -> Result<Self> {
        let engine = Self::connect_unchecked(settings, retention_ms).await?;
        engine.check_layout(Some(0)).await?;
        engine.load_library().await?;
        Ok(engine)
    }

    /// For `verify` and `rebuild`: checks the layout version and shards but writes nothing
    /// into an empty Redis (`rebuild` records the layout once every account is back).
    pub async fn connect_for_maintenance(settings: &RedisSettings, retention_ms: Millis) -> Result<Self> {
        let engine = Self::connect_unchecked(settings, retention_ms).await?;
        engine.check_layout(None).await?;
        engine.load_library().await?;
        Ok(engine)
    }

    /// [`RedisEngine::connect`] for serving: what Redis holds is checked against `ledger` (see
    /// [`guard`]). A Redis without this deployment's layout marker while the ledger holds events
    /// lost its state: the engine starts refusing calls instead of starting afresh.
    pub async fn connect_guarded(settings: &RedisSettings, retention_ms: Millis, ledger: Store) -> Result<Self> {
        let mut engine = Self::connect_unchecked(settings, retention_ms).await?;
        let events = ledger.event_count().await.map_err(|error| Error::Unavailable(format!("database: {error}")))?;
        engine.guard = guard::Guard::with_ledger(Some(ledger));
        engine.check_layout(Some(events)).await?;
        engine.load_library().await?;
        Ok(engine)
    }

    /// Connects without looking at what Redis holds (for the layout upgrade, which must read a
    /// Redis of another layout).
    pub(crate) async fn connect_unchecked(settings: &RedisSettings, retention_ms: Millis) -> Result<Self> {
        let connection = connect(settings).await?;
        Ok(Self {
            connection,
            settings: settings.clone(),
            layout: Layout { prefix: settings.key_prefix.clone(), shards: settings.shards },
            timeout: settings.timeout,
            retention_ms,
            test_clock: None,
            guard: guard::Guard::default(),
            loading: Arc::default(),
        })
    }

    /// For tests that move time: functions use `clock` instead of Redis `TIME`. No configuration
    /// reaches this; the server always uses [`RedisEngine::connect`].
    #[doc(hidden)]
    pub async fn connect_with_test_clock(
        settings: &RedisSettings,
        retention_ms: Millis,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let mut engine = Self::connect(settings, retention_ms).await?;
        engine.test_clock = Some(clock);
        Ok(engine)
    }

    /// This process's now (the test clock's, when one is set), for what the sidecar decides
    /// without Redis (an outage).
    pub fn local_now_ms(&self) -> crate::ledger::Millis {
        match &self.test_clock {
            Some(clock) => clock.now_ms(),
            None => crate::ledger::SystemClock.now_ms(),
        }
    }

    /// For tests that move time: the engine uses `clock` instead of Redis `TIME` from now on.
    #[doc(hidden)]
    pub fn set_test_clock(&mut self, clock: Arc<dyn Clock>) {
        self.test_clock = Some(clock);
    }

    /// Refuses a Redis laid out by another version or over another shard count; records this
    /// layout in an empty one — unless the ledger already holds `ledger_events` events: then the
    /// empty Redis lost its state, and the guard refuses calls until it is restored (None:
    /// leaves an empty Redis as it is, for maintenance). Layout 1
    /// kept its shard count under `cs:shards`; this layout writes a non-number there, so a
    /// layout-1 sidecar started against it refuses to start too.
    async fn check_layout(&self, ledger_events: Option<i64>) -> Result<()> {
        let value = self.layout.layout_value();
        match self.recorded_layout().await? {
            Some(recorded) if recorded == value => return Ok(()),
            Some(recorded) if in_place_upgradable(&recorded, self.layout.shards).is_some() => {
                let version = &recorded[..1];
                return Err(Error::Unavailable(format!(
                    "redis layout: Redis holds accounts in layout {version}, this sidecar reads layout {LAYOUT_VERSION}: \
                     stop the old sidecars, then run `credit-sidecar rebuild --upgrade-layout`, which converts them in \
                     place (README, \"Upgrading the Redis layout\")"
                )));
            }
            Some(recorded) => {
                return Err(Error::Unavailable(format!(
                    "redis layout: this sidecar uses layout {value:?} (version, shards) but Redis holds {recorded:?}; \
                     check redis_shards, or upgrade the data as the README's \"Upgrading the Redis layout\" says"
                )));
            }
            None => {}
        }
        if let Some(shards) = self.layout_1_marker().await? {
            return Err(Error::Unavailable(format!(
                "redis layout: Redis holds accounts in layout 1 ({shards} shards), this sidecar reads layout \
                 {LAYOUT_VERSION}: drain the old sidecars, let settlement finish, then run `credit-sidecar rebuild \
                 --upgrade-layout` (README, \"Upgrading the Redis layout\")"
            )));
        }
        match ledger_events {
            None => Ok(()),
            Some(0) => self.write_layout().await,
            Some(events) => {
                self.flag_lost(format!("Redis holds no layout marker while the ledger holds {events} events")).await;
                Ok(())
            }
        }
    }

    /// After every account was restored from the ledger: records the layout (if it was lost)
    /// and stamps the recovery, which ends a loss noticed before it in every replica.
    pub async fn mark_restored(&self) -> Result<()> {
        let now = self.now().await?;
        let mut connection = self.connection.clone();
        let key = self.layout.layout_key();
        self.bounded(
            redis::cmd("SET").arg(&key).arg(self.layout.layout_value()).arg("NX").query_async::<()>(&mut connection),
        )
        .await?;
        self.bounded(redis::cmd("SET").arg(self.layout.recovered_key()).arg(now).query_async::<()>(&mut connection))
            .await?;
        self.check_state().await
    }

    /// Records this layout (version and shards), unless another start recorded one first.
    async fn write_layout(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let (key, old_key, value) = (self.layout.layout_key(), self.layout.layout_1_key(), self.layout.layout_value());
        // Two commands, not a pipeline: the keys live in different Cluster slots.
        self.bounded(redis::cmd("SET").arg(&key).arg(&value).arg("NX").query_async::<()>(&mut connection)).await?;
        let marker = format!("see {key}");
        self.bounded(redis::cmd("SET").arg(&old_key).arg(marker).query_async::<()>(&mut connection)).await?;
        let recorded: Option<String> = self.bounded(redis::cmd("GET").arg(&key).query_async(&mut connection)).await?;
        match recorded {
            Some(recorded) if recorded == value => Ok(()),
            other => Err(Error::Unavailable(format!("redis layout: recorded {other:?} while writing {value:?}"))),
        }
    }

    /// Loads the function library (a no-op when this version is there already).
    async fn load_library(&self) -> Result<()> {
        load_library(self.connection.clone(), self.timeout).await
    }

    /// Loads the library again after Redis lost it, in a task of its own: a caller that gives up
    /// (its deadline) does not cut the load short, and concurrent callers wait for one load.
    async fn reload_library(&self) -> Result<()> {
        let (loading, connection, timeout) = (Arc::clone(&self.loading), self.connection.clone(), self.timeout);
        let load = tokio::spawn(async move {
            let _one_at_a_time = loading.lock().await;
            load_library(connection, timeout).await
        });
        load.await.map_err(|error| Error::Internal(format!("loading the function library: {error}")))?
    }

    /// Is this version's library in Redis? Single Redis only: on a Cluster, `FUNCTION LIST`
    /// reaches one node of many, so there a lost library is found by the call that needs it.
    async fn library_missing(&self) -> Result<bool> {
        if matches!(self.connection, Connection::Cluster(_)) {
            return Ok(false);
        }
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("FUNCTION");
        command.arg("LIST").arg("LIBRARYNAME").arg(&LIBRARY.name);
        let libraries: Vec<Value> = self.bounded(command.query_async(&mut connection)).await?;
        // LIBRARYNAME is a pattern; the name has no pattern characters, so it matches itself only.
        Ok(libraries.is_empty())
    }

    /// Runs a Redis round trip within the timeout.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        self.bounded_for(self.timeout, call).await
    }

    /// Runs a Redis round trip within `timeout`.
    async fn bounded_for<T>(&self, timeout: Duration, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(Error::Unavailable(format!("redis: no answer within {} ms", timeout.as_millis()))),
        };
        if result.is_err() {
            metrics::counter!(crate::telemetry::REDIS_ERRORS).increment(1);
        }
        result
    }

    /// A new connection to the same Redis (or Cluster), separate from the one calls use.
    pub(super) async fn open_connection(&self) -> Result<Connection> {
        connect(&self.settings).await
    }

    /// Does Redis answer (within the timeout), holding its state (see [`guard`]) and this
    /// version's library? The health check calls this every `health_interval_ms`: a library
    /// Redis lost (a restart without persistence, `FUNCTION FLUSH`) is loaded again here, before
    /// a call needs it.
    pub async fn ping(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut connection)).await?;
        if self.library_missing().await? {
            tracing::warn!("Redis lost the function library; loading it again");
            self.reload_library().await?;
        }
        self.check_state().await
    }

    /// The engine's now: the test clock, or Redis `TIME`.
    pub async fn now(&self) -> Result<Millis> {
        if let Some(clock) = &self.test_clock {
            return Ok(clock.now_ms());
        }
        let mut connection = self.connection.clone();
        let (seconds, micros): (i64, i64) = self.bounded(redis::cmd("TIME").query_async(&mut connection)).await?;
        Ok(seconds * 1000 + micros / 1000)
    }

    fn now_arg(&self) -> String {
        self.test_clock.as_ref().map(|clock| clock.now_ms().to_string()).unwrap_or_default()
    }

    /// The FCALL (FCALL_RO for reads) of function `name`.
    fn fcall_command(name: &str, access: Access, keys: &Keys, args: &[Arg<'_>]) -> redis::Cmd {
        // Sized up front: growing the buffer argument by argument was a tenth of the call's
        // CPU on the engine side.
        let bytes = keys.bytes()
            + args
                .iter()
                .map(|arg| match arg {
                    Arg::Text(text) => text.len(),
                    Arg::Owned(text) => text.len(),
                    Arg::Int(_) => 20,
                })
                .sum::<usize>()
            + LIBRARY.prefix.len()
            + name.len()
            + 16;
        let mut command = redis::Cmd::with_capacity(3 + keys.len() + args.len(), bytes);
        command.arg(match access {
            Access::Read => "FCALL_RO",
            Access::Write => "FCALL",
        });
        command.arg(format!("{}{name}", LIBRARY.prefix)).arg(keys.len());
        for key in keys.iter() {
            command.arg(key);
        }
        for arg in args {
            match arg {
                Arg::Text(text) => command.arg(*text),
                Arg::Int(number) => command.arg(*number),
                Arg::Owned(text) => command.arg(text.as_str()),
            };
        }
        command
    }

    /// Calls function `name` (FCALL_RO for reads); loads the library again and retries
    /// once if Redis lost it.
    async fn fcall(&self, name: &str, access: Access, keys: &Keys, args: &[Arg<'_>]) -> Result<Value> {
        let command = Self::fcall_command(name, access, keys, args);
        self.send_reloading(self.timeout, |mut connection| {
            let command = &command;
            async move { command.query_async::<Value>(&mut connection).await }
        })
        .instrument(redis_span(name))
        .await
    }

    /// A state-changing FCALL and, with `redis_wait_replicas` set, a `WAIT` right behind it in
    /// one pipeline: both on one connection, so the WAIT covers the change even if the
    /// connection is replaced meanwhile (a WAIT sent alone after a reconnect would count only
    /// the new connection's writes: none). Returns the reply and how many replicas confirmed.
    async fn fcall_replicated(&self, name: &str, keys: &Keys, args: &[Arg<'_>]) -> Result<(Value, Option<u32>)> {
        let Some(wait) = self.settings.wait else {
            return Ok((self.fcall(name, Access::Write, keys, args).await?, None));
        };
        let mut pipeline = redis::pipe();
        pipeline.add_command(Self::fcall_command(name, Access::Write, keys, args));
        pipeline.cmd("WAIT").arg(wait.replicas).arg(wait.timeout.as_millis() as u64);
        let (value, acknowledged) = self
            .send_reloading(wait.timeout + self.timeout, |mut connection| {
                let pipeline = &pipeline;
                async move { pipeline.query_async::<(Value, u32)>(&mut connection).await }
            })
            .instrument(redis_span(name))
            .await?;
        Ok((value, Some(acknowledged)))
    }

    /// Sends a request within `timeout`; when Redis lost the function library, loads it again
    /// and sends the request once more.
    async fn send_reloading<T, F, Fut>(&self, timeout: Duration, request: F) -> Result<T>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(timeout, request(self.connection.clone())).await {
            Ok(Err(error)) if error.to_string().contains("Function not found") => {
                tracing::warn!("Redis lost the function library; loading it again");
                self.reload_library().await?;
                self.bounded_for(timeout, request(self.connection.clone())).await
            }
            Ok(result) => result.map_err(|error| {
                metrics::counter!(crate::telemetry::REDIS_ERRORS).increment(1);
                unavailable(error)
            }),
            Err(_) => {
                metrics::counter!(crate::telemetry::REDIS_ERRORS).increment(1);
                Err(Error::Unavailable(format!("redis: no answer within {} ms", timeout.as_millis())))
            }
        }
    }

    /// Calls an account function: account, now, retention, then the operation's arguments.
    async fn account_call(
        &self,
        name: &str,
        access: Access,
        account: &AccountId,
        keys: &Keys,
        args: &[Arg<'_>],
    ) -> Result<Value> {
        let all = self.account_args(name, account, args).await?;
        self.fcall(name, access, keys, &all).await
    }

    /// An account function's arguments (account, now, retention, then the operation's), once the
    /// guard admits the call.
    async fn account_args<'a>(&self, name: &str, account: &'a AccountId, args: &[Arg<'a>]) -> Result<Vec<Arg<'a>>> {
        if name != "restore" {
            self.admit().await?;
        }
        if CREATING.contains(&name) {
            self.guard_creation(account).await?;
        }
        let mut all = vec![Arg::Text(account.as_str()), Arg::Owned(self.now_arg()), Arg::Int(self.retention_ms)];
        all.extend_from_slice(args);
        Ok(all)
    }

    /// A state-changing operation: made again while its account needs more catching up.
    async fn change<T>(
        &self,
        name: &str,
        context: &Context<'_>,
        args: &[Arg<'_>],
        convert: impl Fn(&mut Fields, &AccountId) -> Result<T>,
    ) -> Result<Decision<T>> {
        let keys = self.layout.call_keys(context.account, context.reservation);
        for _ in 0..CATCHUP_ROUNDS_MAX {
            let all = self.account_args(name, context.account, args).await?;
            let (value, acknowledged) = self.fcall_replicated(name, &keys, &all).await?;
            let decision = match self.checked(reply::parse(value, context)).await? {
                Reply::Ok(mut fields) => Decision::Done(convert(&mut fields, context.account)?),
                Reply::Declined(decline) => Decision::Declined(decline),
                Reply::Due => continue,
            };
            // A decline is remembered under its request id too: it waits like a change.
            self.replicated(acknowledged)?;
            return Ok(decision);
        }
        Err(catch_up_unfinished(context.account))
    }

    /// A read: when its account must catch up first, catches it up, then reads again.
    async fn read<T>(
        &self,
        name: &str,
        context: &Context<'_>,
        args: &[Arg<'_>],
        convert: impl Fn(&mut Fields, &AccountId) -> Result<T>,
    ) -> Result<T> {
        let keys = self.layout.call_keys(context.account, None);
        for _ in 0..CATCHUP_ROUNDS_MAX {
            let value = self.account_call(name, Access::Read, context.account, &keys, args).await?;
            match self.checked(reply::parse(value, context)).await? {
                Reply::Ok(mut fields) => return convert(&mut fields, context.account),
                Reply::Declined(_) => return Err(Error::Internal("a Redis read answered with a decline".into())),
                Reply::Due => self.catch_up(context).await?,
            }
        }
        Err(catch_up_unfinished(context.account))
    }

    /// With synchronous replication on, the answer to a change waits until the configured
    /// replicas have it: `acknowledged` is what the WAIT behind its FCALL counted (see
    /// [`RedisEngine::fcall_replicated`]). Fewer in time: UNAVAILABLE — the change is on the
    /// primary and may or may not survive a failover, so the caller retries with the same
    /// request id.
    fn replicated(&self, acknowledged: Option<u32>) -> Result<()> {
        let (Some(wait), Some(acknowledged)) = (self.settings.wait, acknowledged) else { return Ok(()) };
        if acknowledged < wait.replicas {
            metrics::counter!(crate::telemetry::REDIS_ERRORS).increment(1);
            return Err(Error::Unavailable(format!(
                "redis: the change reached {acknowledged} of the {} replicas redis_wait_replicas asks for within {} \
                 ms; it may not survive a failover: retry with the same request_id",
                wait.replicas,
                wait.timeout.as_millis()
            )));
        }
        Ok(())
    }

    /// A reply, with a NOT_FOUND checked against the ledger (see [`guard`]).
    async fn checked<T>(&self, reply: Result<T>) -> Result<T> {
        match reply {
            Err(error @ Error::Ledger(_)) => Err(self.guard_not_found(error).await),
            other => other,
        }
    }

    /// Brings an account up to now (bounded calls, until done).
    async fn catch_up(&self, context: &Context<'_>) -> Result<()> {
        let keys = self.layout.call_keys(context.account, None);
        for _ in 0..CATCHUP_ROUNDS_MAX {
            let value = self.account_call("catch_up", Access::Write, context.account, &keys, &[]).await?;
            let Reply::Ok(mut fields) = reply::parse(value, context)? else {
                return Err(Error::Internal("catch_up answered neither ok nor an error".into()));
            };
            if fields.int()? == 1 {
                return Ok(());
            }
        }
        Err(catch_up_unfinished(context.account))
    }

    pub async fn reserve(&self, cmd: &Reserve) -> Result<Decision<Reserved>> {
        let (fingerprint, labels) = (cmd.fingerprint(), labels_json(&cmd.labels));
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Text(cmd.user.as_str()),
            Arg::Text(cmd.category.as_str()),
            Arg::Int(cmd.amount),
            Arg::Int(cmd.ttl_ms),
            Arg::Owned(labels),
            partial_arg(cmd.partial, |partial| partial.unit),
            partial_arg(cmd.partial, |partial| partial.min_units),
        ];
        self.change("reserve", &account_context(&cmd.account, &cmd.request), &args, reply::reserved).await
    }

    pub async fn commit(&self, cmd: &Commit) -> Result<Decision<Committed>> {
        let (fingerprint, labels) = (cmd.fingerprint(), labels_json(&cmd.labels));
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Int(seq_arg(cmd.reservation.seq)),
            Arg::Int(cmd.amount),
            Arg::Text(if cmd.final_commit { "1" } else { "0" }),
            Arg::Text(cmd.business_key.as_ref().map_or("", |key| key.as_str())),
            Arg::Owned(labels),
        ];
        self.change("commit", &reservation_context(&cmd.reservation, &cmd.request), &args, reply::committed).await
    }

    pub async fn commit_batch(&self, cmd: &CommitBatch) -> Result<CommitBatched> {
        let commits: Vec<Commit> = cmd.commits().collect();
        let fingerprints: Vec<_> = commits.iter().map(Commit::fingerprint).collect();
        let labels: Vec<String> = commits.iter().map(|commit| labels_json(&commit.labels)).collect();
        let mut args = Vec::with_capacity(2 + 5 * commits.len());
        args.extend([Arg::Int(seq_arg(cmd.reservation.seq)), Arg::Int(commits.len() as i64)]);
        for ((commit, fingerprint), labels) in commits.iter().zip(&fingerprints).zip(labels) {
            args.extend([
                Arg::Text(commit.request.as_str()),
                Arg::Text(keys::stored_fingerprint(&fingerprint.0)),
                Arg::Int(commit.amount),
                Arg::Text(commit.business_key.as_ref().map_or("", |key| key.as_str())),
                Arg::Owned(labels),
            ]);
        }
        let id = &cmd.reservation;
        let keys = self.layout.call_keys(&id.account, Some(id.seq));
        let requests: Vec<&str> = commits.iter().map(|commit| commit.request.as_str()).collect();
        for _ in 0..CATCHUP_ROUNDS_MAX {
            let all = self.account_args("commit_batch", &id.account, &args).await?;
            let (value, acknowledged) = self.fcall_replicated("commit_batch", &keys, &all).await?;
            let reply = self.checked(reply::parse_batch(value, id, &requests)).await?;
            let Some((reservation, replies)) = reply else { continue };
            let mut items = Vec::with_capacity(replies.len());
            for answer in replies {
                items.push(match answer {
                    Reply::Ok(mut fields) => Decision::Done(reply::committed(&mut fields, &id.account)?),
                    Reply::Declined(decline) => Decision::Declined(decline),
                    Reply::Due => return Err(Error::Internal("a batch item answered \"due\"".into())),
                });
            }
            self.replicated(acknowledged)?;
            return Ok(CommitBatched { items, reservation });
        }
        Err(catch_up_unfinished(&id.account))
    }

    pub async fn extend(&self, cmd: &Extend) -> Result<Decision<Extended>> {
        let fingerprint = cmd.fingerprint();
        let ttl = cmd.ttl_ms.map(|ttl| ttl.to_string()).unwrap_or_default();
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Int(seq_arg(cmd.reservation.seq)),
            Arg::Int(cmd.amount),
            Arg::Owned(ttl),
            partial_arg(cmd.partial, |partial| partial.unit),
            partial_arg(cmd.partial, |partial| partial.min_units),
        ];
        self.change("extend", &reservation_context(&cmd.reservation, &cmd.request), &args, reply::extended).await
    }

    pub async fn release(&self, cmd: &Release) -> Result<Decision<Released>> {
        let fingerprint = cmd.fingerprint();
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Int(seq_arg(cmd.reservation.seq)),
        ];
        self.change("release", &reservation_context(&cmd.reservation, &cmd.request), &args, reply::released).await
    }

    pub async fn charge(&self, cmd: &Charge) -> Result<Decision<Charged>> {
        let (fingerprint, labels) = (cmd.fingerprint(), labels_json(&cmd.labels));
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Text(cmd.user.as_str()),
            Arg::Text(cmd.category.as_str()),
            Arg::Int(cmd.amount),
            Arg::Text(cmd.business_key.as_ref().map_or("", |key| key.as_str())),
            Arg::Owned(labels),
            Arg::Text(if cmd.overdraft { "1" } else { "0" }),
        ];
        self.change("charge", &account_context(&cmd.account, &cmd.request), &args, reply::charged).await
    }

    pub async fn set_plan(&self, cmd: &SetPlan) -> Result<Decision<PlanSet>> {
        let (fingerprint, plan) = (cmd.fingerprint(), &cmd.plan);
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Int(i64::from(plan.period.months())),
            Arg::Int(plan.anchor_ms),
            Arg::Int(plan.plan_credits),
            Arg::Int(plan.addon_credits),
        ];
        self.change("set_plan", &account_context(&cmd.account, &cmd.request), &args, reply::plan_set).await
    }

    pub async fn grant(&self, cmd: &Grant) -> Result<Decision<Granted>> {
        let fingerprint = cmd.fingerprint();
        let expires = cmd.expires_ms.map(|ms| ms.to_string()).unwrap_or_default();
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Text(crate::ledger::wire::lot_kind_name(cmd.kind)),
            Arg::Int(cmd.amount),
            Arg::Owned(expires),
            Arg::Text(create_flag(cmd.create_account)),
        ];
        self.change("grant", &account_context(&cmd.account, &cmd.request), &args, reply::granted).await
    }

    pub async fn start_trial(&self, cmd: &StartTrial) -> Result<Decision<Granted>> {
        let fingerprint = cmd.fingerprint();
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Int(cmd.credits),
            Arg::Int(cmd.duration_ms),
            Arg::Text(create_flag(cmd.create_account)),
        ];
        self.change("start_trial", &account_context(&cmd.account, &cmd.request), &args, reply::granted).await
    }

    pub async fn set_user_limit(&self, cmd: &SetUserLimit) -> Result<Decision<UserView>> {
        let fingerprint = cmd.fingerprint();
        let limit = cmd.limit.map(|limit| limit.to_string()).unwrap_or_default();
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Text(cmd.user.as_str()),
            Arg::Owned(limit),
        ];
        self.change("set_user_limit", &account_context(&cmd.account, &cmd.request), &args, reply::user_view).await
    }

    pub async fn set_category_budget(&self, cmd: &SetCategoryBudget) -> Result<Decision<CategoryView>> {
        let fingerprint = cmd.fingerprint();
        let budget = cmd.budget.map(|budget| budget.to_string()).unwrap_or_default();
        let args = [
            Arg::Text(cmd.request.as_str()),
            Arg::Owned(keys::stamp(&cmd.request, &fingerprint.0)),
            Arg::Text(cmd.category.as_str()),
            Arg::Owned(budget),
        ];
        let context = account_context(&cmd.account, &cmd.request);
        self.change("set_category_budget", &context, &args, reply::category_view).await
    }

    /// The account's cycle and totals, one user's view and one category's.
    async fn balance_of(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        category: Option<&str>,
    ) -> Result<(Cycle, Totals, Option<UserView>, Option<CategoryView>)> {
        let args = [Arg::Text(user.map_or("", |user| user.as_str())), Arg::Text(category.unwrap_or(""))];
        let context = Context { account, reservation: None, request: None };
        let (with_user, with_category) = (user.is_some(), category.is_some());
        self.read("balance", &context, &args, |fields, _| reply::balance(fields, with_user, with_category)).await
    }

    pub async fn quote(&self, cmd: &Quote) -> Result<Quoted> {
        let category = cmd.category.as_ref().map(Category::as_str);
        let (_, totals, user, category) = self.balance_of(&cmd.account, cmd.user.as_ref(), category).await?;
        let user_remaining = user.and_then(|user| user.remaining);
        let category_remaining = category.and_then(|category| category.remaining);
        Ok(Quoted::evaluate(totals.available, user_remaining, category_remaining, cmd.amount, cmd.unit))
    }

    pub async fn balance(&self, account: &AccountId, user: Option<&UserId>) -> Result<Balance> {
        let (cycle, totals, user, _) = self.balance_of(account, user, None).await?;
        Ok(Balance { totals, cycle, user })
    }

    pub async fn account(&self, account: &AccountId) -> Result<AccountView> {
        let context = Context { account, reservation: None, request: None };
        self.read("account", &context, &[], reply::account).await
    }

    pub async fn reservation(&self, id: &ReservationId) -> Result<ReservationView> {
        let context = Context { account: &id.account, reservation: Some(id.seq), request: None };
        self.read("reservation", &context, &[Arg::Int(seq_arg(id.seq))], reply::reservation).await
    }

    pub async fn list_reservations(
        &self,
        account: &AccountId,
        state: Option<ReservationState>,
        page_size: usize,
        before: Option<u64>,
    ) -> Result<ReservationPage> {
        let before = before.map(|seq| seq.to_string()).unwrap_or_default();
        let args = [
            Arg::Int(i64::try_from(page_size).unwrap_or(i64::MAX)),
            Arg::Int(seq_arg(crate::ledger::model::LIST_SCAN_MAX)),
            Arg::Owned(before),
            Arg::Text(state.map_or("", crate::ledger::wire::state_name)),
        ];
        let context = Context { account, reservation: None, request: None };
        self.read("list", &context, &args, reply::page).await
    }

    /// Catches up every account whose wake-up time has come, shard by shard, in bounded
    /// batches. Safe with many replicas sweeping at once: catching up is idempotent. Returns how
    /// many holds expired.
    pub async fn sweep(&self) -> Result<usize> {
        if let Some(cause) = self.state_lost() {
            return Err(Error::Unavailable(format!("no sweep while Redis's state is lost ({cause})")));
        }
        let mut expired = 0;
        for shard in 0..self.layout.shards {
            let keys = Keys::one(&self.layout.wake_key(shard));
            let now = self.now_arg();
            let args = [Arg::Text(&now), Arg::Int(SWEEP_BATCH_MAX as i64)];
            let due: Vec<String> = redis::from_redis_value(self.fcall("due", Access::Read, &keys, &args).await?)
                .map_err(|error| Error::Internal(format!("due: {error}")))?;
            for account in due {
                let Ok(account) = AccountId::parse(&account) else {
                    tracing::warn!(account, "skipping a malformed account id in the wake-up index");
                    continue;
                };
                // One account that fails must not stop the others (or the other shards).
                match self.sweep_account(&account).await {
                    Ok(count) => expired += count,
                    Err(error) => tracing::warn!(%account, %error, "sweeping an account failed; will retry"),
                }
            }
        }
        Ok(expired)
    }

    /// Sweeps one account, in bounded calls until it is done (or the rounds run out: the next
    /// pass goes on). Returns how many holds expired.
    async fn sweep_account(&self, account: &AccountId) -> Result<usize> {
        let keys = self.layout.call_keys(account, None);
        let prefix = self.layout.answers_prefix(account);
        let mut expired = 0;
        for _ in 0..CATCHUP_ROUNDS_MAX {
            let value =
                self.account_call("sweep_account", Access::Write, account, &keys, &[Arg::Text(&prefix)]).await?;
            let (count, done): (i64, i64) =
                redis::from_redis_value(value).map_err(|error| Error::Internal(format!("sweep_account: {error}")))?;
            expired += usize::try_from(count).unwrap_or(0);
            if done == 1 {
                break;
            }
        }
        Ok(expired)
    }

    /// Up to `count` outbox entries of `shard` after entry id `after` ("-" for the start), with
    /// their stream ids.
    pub async fn outbox_range(&self, shard: u32, after: &str, count: usize) -> Result<Vec<(String, Event)>> {
        let start = if after == "-" { "-".to_owned() } else { format!("({after}") };
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("XRANGE");
        command.arg(self.layout.events_key(shard)).arg(start).arg("+").arg("COUNT").arg(count);
        let reply: Value = self.bounded(command.query_async(&mut connection)).await?;
        events::entries(reply)?.into_iter().map(|entry| Ok((entry.id, events::decode(&entry.fields)?))).collect()
    }

    /// Every outbox entry of every shard, in each shard's order (for tests and `verify`).
    pub async fn outbox(&self) -> Result<Vec<Event>> {
        const PAGE: usize = 1000;
        let mut all = Vec::new();
        for shard in 0..self.layout.shards {
            let mut after = "-".to_owned();
            loop {
                let page = self.outbox_range(shard, &after, PAGE).await?;
                let full = page.len() == PAGE;
                if let Some((id, _)) = page.last() {
                    after = id.clone();
                }
                all.extend(page.into_iter().map(|(_, event)| event));
                if !full {
                    break;
                }
            }
        }
        Ok(all)
    }

    /// Replaces an account's state with `snapshot` (the `rebuild` command).
    pub async fn restore_account(&self, snapshot: &crate::ledger::snapshot::AccountSnapshot) -> Result<()> {
        let account = AccountId::parse(&snapshot.account)?;
        let keys = self.layout.call_keys(&account, None);
        let snapshot = serde_json::to_string(snapshot).expect("snapshot serialises");
        self.account_call("restore", Access::Write, &account, &keys, &[Arg::Owned(snapshot)]).await?;
        Ok(())
    }

    /// What the layout marker holds ("<version> <shards>"), if anything.
    pub(crate) async fn recorded_layout(&self) -> Result<Option<String>> {
        let mut connection = self.connection.clone();
        self.bounded(redis::cmd("GET").arg(self.layout.layout_key()).query_async(&mut connection)).await
    }

    /// Layout 1's marker (its shard count), if Redis holds one. Later layouts write a note there
    /// ("see cs:layout"), which is no layout 1: its layout marker was deleted (the state-loss
    /// guard does so when it finds Redis lost writes).
    pub(crate) async fn layout_1_marker(&self) -> Result<Option<String>> {
        let mut connection = self.connection.clone();
        let old: Option<String> =
            self.bounded(redis::cmd("GET").arg(self.layout.layout_1_key()).query_async(&mut connection)).await?;
        Ok(old.filter(|old| *old != format!("see {}", self.layout.layout_key())))
    }

    /// `rebuild --upgrade-layout` on a layout-2 or layout-3 Redis (`from`): converts every
    /// account's remembered request ids in place and then records this layout, so retries of
    /// calls made before the upgrade are still answered once. From layout 2 the function
    /// `upgrade_requests` gives them layout 3's form first; `rekey_requests` then files them
    /// under their keys (both in bounded calls). Every account is in its shard's wake-up index,
    /// so this walks those (on Redis Cluster each shard's keys route like any call). Returns how
    /// many accounts it converted.
    pub(crate) async fn upgrade_in_place(&self, from: u32) -> Result<usize> {
        const PAGE: usize = 1000;
        self.load_library().await?;
        let mut connection = self.connection.clone();
        let mut accounts = 0;
        for shard in 0..self.layout.shards {
            // The shard's accounts first, then the conversion: converting from layout 2 moves
            // accounts' wake-up times, which would shift pages read meanwhile.
            let wake = self.layout.wake_key(shard);
            let mut names: Vec<String> = Vec::new();
            for start in (0..).step_by(PAGE) {
                let mut command = redis::cmd("ZRANGE");
                command.arg(&wake).arg(start).arg(start + PAGE - 1);
                let page: Vec<String> = self.bounded(command.query_async(&mut connection)).await?;
                let last = page.len() < PAGE;
                names.extend(page);
                if last {
                    break;
                }
            }
            for account in &names {
                let account = AccountId::parse(account).map_err(|error| {
                    Error::Internal(format!("upgrade: {account:?} in the wake-up index of shard {shard}: {error}"))
                })?;
                // (From layout 2, each call converts only what is left: the ids' members in p
                // go as they are converted.)
                if from == 2 {
                    self.upgrade_requests(&account).await?;
                }
                if self.rekey_requests(&account).await? {
                    accounts += 1;
                }
            }
        }
        let value = self.layout.layout_value();
        self.bounded(redis::cmd("SET").arg(self.layout.layout_key()).arg(value).query_async::<()>(&mut connection))
            .await?;
        self.forget_upgraded().await?;
        Ok(accounts)
    }

    /// Deletes the sets of accounts an in-place upgrade converted (`rekey_requests`): once the
    /// layout is recorded they are not needed, and a run that ended before deleting them leaves
    /// them for the next run to find.
    pub(crate) async fn forget_upgraded(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        for shard in 0..self.layout.shards {
            let key = self.layout.upgraded_key(shard);
            self.bounded(redis::cmd("UNLINK").arg(key).query_async::<()>(&mut connection)).await?;
        }
        Ok(())
    }

    /// Gives one account's remembered request ids layout 3's form, from layout 2's (see
    /// `upgrade_in_place`).
    async fn upgrade_requests(&self, account: &AccountId) -> Result<()> {
        let keys = self.layout.call_keys(account, None);
        let mut skipped = 0;
        loop {
            let args = [
                Arg::Text(account.as_str()),
                Arg::Owned(self.now_arg()),
                Arg::Int(self.retention_ms),
                Arg::Int(skipped),
            ];
            let value = self.fcall("upgrade_requests", Access::Write, &keys, &args).await?;
            let (done, next): (i64, i64) = redis::from_redis_value(value)
                .map_err(|error| Error::Internal(format!("upgrade_requests: {error}")))?;
            if done == 1 {
                return Ok(());
            }
            skipped = next;
        }
    }

    /// Files one account's remembered request ids under their keys, from layout 3's form (see
    /// `upgrade_in_place`). False when an earlier run had converted it.
    async fn rekey_requests(&self, account: &AccountId) -> Result<bool> {
        let keys = self.layout.upgrade_keys(account);
        loop {
            let args = [Arg::Text(account.as_str()), Arg::Owned(self.now_arg()), Arg::Int(self.retention_ms)];
            let value = self.fcall("rekey_requests", Access::Write, &keys, &args).await?;
            let done: i64 =
                redis::from_redis_value(value).map_err(|error| Error::Internal(format!("rekey_requests: {error}")))?;
            if done != 0 {
                return Ok(done == 1);
            }
        }
    }

    /// Deletes every key under this deployment's prefix (the layout upgrade's clean slate), then
    /// records this layout and loads the library. Returns how many keys were deleted. Single Redis
    /// only: a Cluster has no one keyspace to scan (README: flush its primaries instead).
    pub(crate) async fn wipe_and_init(&self) -> Result<usize> {
        if matches!(self.connection, Connection::Cluster(_)) {
            return Err(Error::Unavailable(
                "upgrading the layout of a Redis Cluster: after settlement, FLUSHALL every primary (or start \
                 on a fresh cluster), then run `credit-sidecar rebuild`"
                    .into(),
            ));
        }
        let pattern = format!("{}cs:*", self.layout.prefix);
        let mut connection = self.connection.clone();
        let mut deleted = 0;
        let mut cursor = 0u64;
        loop {
            let mut command = redis::cmd("SCAN");
            command.arg(cursor).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000);
            let (next, keys): (u64, Vec<String>) = self.bounded(command.query_async(&mut connection)).await?;
            if !keys.is_empty() {
                self.bounded(redis::cmd("UNLINK").arg(&keys).query_async::<i64>(&mut connection)).await?;
                deleted += keys.len();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        self.write_layout().await?;
        self.load_library().await?;
        Ok(deleted)
    }
}

/// Loads the function library with `FUNCTION LOAD` (a no-op when this version is there).
async fn load_library(mut connection: Connection, timeout: Duration) -> Result<()> {
    let mut command = redis::cmd("FUNCTION");
    command.arg("LOAD").arg(&LIBRARY.source);
    // Compiling the library takes Redis longer than an ordinary call.
    match tokio::time::timeout(timeout * 4, command.query_async::<String>(&mut connection)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.to_string().contains("already exists") => Ok(()),
        Ok(Err(error)) => Err(unavailable(error)),
        Err(_) => Err(Error::Unavailable("redis: no answer loading the function library".into())),
    }
}

/// One positional argument of a function call.
#[derive(Clone)]
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    Owned(String),
}

/// The `create_account` argument of grant and start_trial.
fn create_flag(create_account: bool) -> &'static str {
    if create_account { "1" } else { "0" }
}

/// The layout version (2 or 3) a recorded layout marker names, when it is one this version
/// converts in place over `shards` shards.
pub(crate) fn in_place_upgradable(recorded: &str, shards: u32) -> Option<u32> {
    IN_PLACE_FROM.into_iter().find(|version| recorded == format!("{version} {shards}"))
}

/// The layouts `rebuild --upgrade-layout` converts in place (older ones are rebuilt).
pub(crate) const IN_PLACE_FROM: [u32; 2] = [2, 3];

/// A partial hold's unit or least units; "" for an all-or-nothing hold.
fn partial_arg(partial: Option<Partial>, field: fn(Partial) -> i64) -> Arg<'static> {
    partial.map_or(Arg::Text(""), |partial| Arg::Int(field(partial)))
}

fn labels_json(labels: &crate::ledger::Labels) -> String {
    serde_json::to_string(&labels.to_map()).expect("labels serialise")
}

/// Sequence numbers are bounded to 2^53 by validation, so they fit an i64 argument.
fn seq_arg(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

fn catch_up_unfinished(account: &AccountId) -> Error {
    Error::Unavailable(format!(
        "account {account}: more than {CATCHUP_ROUNDS_MAX} rounds of catching up are due; the sweep goes on with it"
    ))
}

fn account_context<'a>(account: &'a AccountId, request: &'a crate::ledger::RequestId) -> Context<'a> {
    Context { account, reservation: None, request: Some(request.as_str()) }
}

fn reservation_context<'a>(id: &'a ReservationId, request: &'a crate::ledger::RequestId) -> Context<'a> {
    Context { account: &id.account, reservation: Some(id.seq), request: Some(request.as_str()) }
}

/// TCP_NODELAY: a call is one small request and one small reply; waiting on Nagle's algorithm
/// for the previous segment's ACK would add latency to every call behind another.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    redis::io::tcp::TcpSettings::default().set_nodelay(true)
}

async fn connect(settings: &RedisSettings) -> Result<Connection> {
    let timeout = settings.timeout;
    if settings.cluster {
        let mut builder = redis::cluster::ClusterClient::builder(settings.urls.clone());
        if let Some(certificates) = settings.tls.certificates() {
            builder = builder.certs(certificates);
        }
        if let Some(password) = &settings.password {
            builder = builder.password(&password.0);
        }
        let client = builder
            .tcp_settings(tcp_settings())
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(2)
            .build()
            .map_err(unavailable)?;
        let connection = tokio::time::timeout(timeout * 4, client.get_async_connection())
            .await
            .map_err(|_| Error::Unavailable("redis cluster: no answer while connecting".into()))?
            .map_err(unavailable)?;
        return Ok(Connection::Cluster(connection));
    }
    let url = settings.urls.first().ok_or_else(|| Error::Unavailable("redis: no URL".into()))?;
    let mut info = url.as_str().into_connection_info().map_err(unavailable)?.set_tcp_settings(tcp_settings());
    if let Some(password) = &settings.password {
        let redis = info.redis_settings().clone().set_password(&password.0);
        info = info.set_redis_settings(redis);
    }
    let client = match settings.tls.certificates() {
        Some(certificates) => redis::Client::build_with_tls(info, certificates).map_err(unavailable)?,
        None => redis::Client::open(info).map_err(unavailable)?,
    };
    // A `WAIT` (synchronous replication) may take its own timeout on top of a round trip.
    let response_timeout = timeout + settings.wait.map_or(Duration::ZERO, |wait| wait.timeout);
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let manager = tokio::time::timeout(timeout * 4, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| Error::Unavailable("redis: no answer while connecting".into()))?
        .map_err(unavailable)?;
    Ok(Connection::Single(manager))
}
