//! The Redis engine: every operation is one Lua script call, atomic in Redis, that also appends
//! its events to the shard's outbox stream in the same step. The scripts (`lua/*.lua`, each
//! prefixed with `lua/lib.lua`) are the Lua port of [`crate::ledger::model`]; this module owns
//! the key layout ([`keys`]), passes validated commands as JSON, and decodes replies into the
//! model's own types ([`reply`]).
//!
//! Scripts are loaded once and called by hash; after a Redis restart, failover or `SCRIPT FLUSH`
//! the `NOSCRIPT` reply makes the client load them again and retry, transparently. Time comes from
//! Redis `TIME`, so every replica agrees on expiry and renewal; only tests can substitute a clock
//! (see [`RedisEngine::connect_with_test_clock`]). A Redis error or a timeout is
//! [`Error::Unavailable`]: nothing is granted that could not be recorded.

pub mod events;
mod keys;
pub mod outbox;
mod reply;

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::streams::StreamRangeReply;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use serde_json::{Map, json};

pub use keys::{Layout, SHARDS_DEFAULT, SHARDS_MAX};

use super::{Error, ReservationPage, Result};
use crate::ledger::command::{
    Charge, Commit, Extend, Grant, Quote, Release, Reserve, SetPlan, SetUserLimit, StartTrial,
};
use crate::ledger::event::Event;
use crate::ledger::{
    AccountId, AccountView, Balance, Charged, Clock, Committed, Decision, Extended, Granted, Millis, PlanSet, Quoted,
    Released, ReservationId, ReservationState, ReservationView, Reserved, UserId, UserView,
};
use reply::Context;

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
}

macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(include_str!("lua/lib.lua"), "\n", include_str!(concat!("lua/", $file))))
    };
}

struct Scripts {
    reserve: Script,
    commit: Script,
    extend: Script,
    release: Script,
    charge: Script,
    set_plan: Script,
    grant: Script,
    start_trial: Script,
    set_user_limit: Script,
    account: Script,
    reservation: Script,
    list: Script,
    sweep_account: Script,
    restore: Script,
    due: Script,
}

static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    reserve: script!("reserve.lua"),
    commit: script!("commit.lua"),
    extend: script!("extend.lua"),
    release: script!("release.lua"),
    charge: script!("charge.lua"),
    set_plan: script!("set_plan.lua"),
    grant: script!("grant.lua"),
    start_trial: script!("start_trial.lua"),
    set_user_limit: script!("set_user_limit.lua"),
    account: script!("account.lua"),
    reservation: script!("reservation.lua"),
    list: script!("list.lua"),
    sweep_account: script!("sweep_account.lua"),
    restore: script!("restore.lua"),
    due: Script::new(include_str!("lua/due.lua")),
});

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
}

fn unavailable(error: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {error}"))
}

impl RedisEngine {
    /// Connects, and checks that Redis was initialised with the same shard count.
    pub async fn connect(settings: &RedisSettings, retention_ms: Millis) -> Result<Self> {
        let connection = connect(settings).await?;
        let engine = Self {
            connection,
            settings: settings.clone(),
            layout: Layout { prefix: settings.key_prefix.clone(), shards: settings.shards },
            timeout: settings.timeout,
            retention_ms,
            test_clock: None,
        };
        engine.check_shards().await?;
        Ok(engine)
    }

    /// For tests that move time: scripts use `clock` instead of Redis `TIME`. No configuration
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

    async fn check_shards(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        let shards = self.layout.shards;
        let key = self.layout.shards_key();
        let recorded: u32 = self
            .bounded(async {
                redis::cmd("SET").arg(&key).arg(shards).arg("NX").query_async::<()>(&mut connection).await?;
                redis::cmd("GET").arg(&key).query_async(&mut connection).await
            })
            .await?;
        if recorded != shards {
            return Err(Error::Unavailable(format!(
                "redis_shards: configured {shards}, but this Redis holds accounts laid out over {recorded} shards"
            )));
        }
        Ok(())
    }

    /// Runs a Redis round trip within the timeout.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T> {
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(unavailable),
            Err(_) => Err(Error::Unavailable(format!("redis: no answer within {} ms", self.timeout.as_millis()))),
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

    /// Does Redis answer (within the timeout)?
    pub async fn ping(&self) -> Result<()> {
        let mut connection = self.connection.clone();
        self.bounded(redis::cmd("PING").query_async::<()>(&mut connection)).await
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

    /// Calls an account script: the nine account keys (and, for calls on a reservation, its
    /// answer hash), then account, now, retention, the operation's arguments and fingerprint.
    async fn call(
        &self,
        script: &Script,
        account: &AccountId,
        reservation: Option<u64>,
        args: Args,
        fingerprint: &str,
    ) -> Result<String> {
        let keys = self.layout.account_keys(account);
        let mut invocation = script.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        if let Some(seq) = reservation {
            invocation.key(self.layout.answers_key(account, seq));
        }
        invocation
            .arg(account.as_str())
            .arg(self.now_arg())
            .arg(self.retention_ms)
            .arg(serde_json::Value::Object(args).to_string())
            .arg(fingerprint);
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async::<String>(&mut connection)).await
    }

    pub async fn reserve(&self, cmd: &Reserve) -> Result<Decision<Reserved>> {
        let args = object(json!({
            "request": cmd.request.as_str(), "user": cmd.user.as_str(), "category": cmd.category.as_str(),
            "amount": cmd.amount, "ttl": cmd.ttl_ms, "labels": cmd.labels.to_map(),
        }));
        let text = self.call(&SCRIPTS.reserve, &cmd.account, None, args, &cmd.fingerprint().0).await?;
        let context = Context { account: &cmd.account, reservation: None, request: Some(cmd.request.as_str()) };
        reply::decision(&text, &context, reply::reserved)
    }

    pub async fn commit(&self, cmd: &Commit) -> Result<Decision<Committed>> {
        let mut args = object(json!({
            "request": cmd.request.as_str(), "seq": cmd.reservation.seq, "amount": cmd.amount,
            "final": cmd.final_commit, "labels": cmd.labels.to_map(),
        }));
        if let Some(key) = &cmd.business_key {
            args.insert("key".into(), key.as_str().into());
        }
        let text = self
            .call(&SCRIPTS.commit, &cmd.reservation.account, Some(cmd.reservation.seq), args, &cmd.fingerprint().0)
            .await?;
        reply::decision(&text, &reservation_context(&cmd.reservation, &cmd.request), reply::committed)
    }

    pub async fn extend(&self, cmd: &Extend) -> Result<Decision<Extended>> {
        let mut args =
            object(json!({ "request": cmd.request.as_str(), "seq": cmd.reservation.seq, "amount": cmd.amount }));
        if let Some(ttl) = cmd.ttl_ms {
            args.insert("ttl".into(), ttl.into());
        }
        let text = self
            .call(&SCRIPTS.extend, &cmd.reservation.account, Some(cmd.reservation.seq), args, &cmd.fingerprint().0)
            .await?;
        reply::decision(&text, &reservation_context(&cmd.reservation, &cmd.request), reply::extended)
    }

    pub async fn release(&self, cmd: &Release) -> Result<Decision<Released>> {
        let args = object(json!({ "request": cmd.request.as_str(), "seq": cmd.reservation.seq }));
        let text = self
            .call(&SCRIPTS.release, &cmd.reservation.account, Some(cmd.reservation.seq), args, &cmd.fingerprint().0)
            .await?;
        reply::decision(&text, &reservation_context(&cmd.reservation, &cmd.request), reply::released)
    }

    pub async fn charge(&self, cmd: &Charge) -> Result<Decision<Charged>> {
        let mut args = object(json!({
            "request": cmd.request.as_str(), "user": cmd.user.as_str(), "category": cmd.category.as_str(),
            "amount": cmd.amount, "labels": cmd.labels.to_map(),
        }));
        if let Some(key) = &cmd.business_key {
            args.insert("key".into(), key.as_str().into());
        }
        let text = self.call(&SCRIPTS.charge, &cmd.account, None, args, &cmd.fingerprint().0).await?;
        let context = Context { account: &cmd.account, reservation: None, request: Some(cmd.request.as_str()) };
        reply::decision(&text, &context, reply::charged)
    }

    pub async fn set_plan(&self, cmd: &SetPlan) -> Result<Decision<PlanSet>> {
        let plan = &cmd.plan;
        let args = object(json!({
            "request": cmd.request.as_str(),
            "plan": { "period": plan.period.months(), "anchor": plan.anchor_ms, "plan": plan.plan_credits,
                      "addon": plan.addon_credits },
        }));
        let text = self.call(&SCRIPTS.set_plan, &cmd.account, None, args, &cmd.fingerprint().0).await?;
        let context = Context { account: &cmd.account, reservation: None, request: Some(cmd.request.as_str()) };
        reply::decision(&text, &context, reply::plan_set)
    }

    pub async fn grant(&self, cmd: &Grant) -> Result<Decision<Granted>> {
        let mut args = object(json!({
            "request": cmd.request.as_str(), "kind": crate::ledger::wire::lot_kind_name(cmd.kind), "amount": cmd.amount,
        }));
        if let Some(expires) = cmd.expires_ms {
            args.insert("expires".into(), expires.into());
        }
        let text = self.call(&SCRIPTS.grant, &cmd.account, None, args, &cmd.fingerprint().0).await?;
        let context = Context { account: &cmd.account, reservation: None, request: Some(cmd.request.as_str()) };
        reply::decision(&text, &context, reply::granted)
    }

    pub async fn start_trial(&self, cmd: &StartTrial) -> Result<Decision<Granted>> {
        let args = object(json!({
            "request": cmd.request.as_str(), "credits": cmd.credits, "duration": cmd.duration_ms,
        }));
        let text = self.call(&SCRIPTS.start_trial, &cmd.account, None, args, &cmd.fingerprint().0).await?;
        let context = Context { account: &cmd.account, reservation: None, request: Some(cmd.request.as_str()) };
        reply::decision(&text, &context, reply::granted)
    }

    pub async fn set_user_limit(&self, cmd: &SetUserLimit) -> Result<Decision<UserView>> {
        let mut args = object(json!({ "request": cmd.request.as_str(), "user": cmd.user.as_str() }));
        if let Some(limit) = cmd.limit {
            args.insert("limit".into(), limit.into());
        }
        let text = self.call(&SCRIPTS.set_user_limit, &cmd.account, None, args, &cmd.fingerprint().0).await?;
        let context = Context { account: &cmd.account, reservation: None, request: Some(cmd.request.as_str()) };
        reply::decision(&text, &context, reply::user_view)
    }

    /// The account caught up to now, with one user's view and optionally every user's.
    async fn view(
        &self,
        account: &AccountId,
        user: Option<&UserId>,
        users: bool,
    ) -> Result<(AccountView, Option<UserView>)> {
        let mut args = object(json!({ "users": users }));
        if let Some(user) = user {
            args.insert("user".into(), user.as_str().into());
        }
        let text = self.call(&SCRIPTS.account, account, None, args, "").await?;
        let wire = reply::value(&text, &Context { account, reservation: None, request: None })?;
        reply::account(wire, account)
    }

    pub async fn quote(&self, cmd: &Quote) -> Result<Quoted> {
        let (view, user) = self.view(&cmd.account, cmd.user.as_ref(), false).await?;
        let user_remaining = user.and_then(|user| user.remaining);
        Ok(Quoted::evaluate(view.totals.available, user_remaining, cmd.amount, cmd.unit))
    }

    pub async fn balance(&self, account: &AccountId, user: Option<&UserId>) -> Result<Balance> {
        let (view, user) = self.view(account, user, false).await?;
        Ok(Balance { totals: view.totals, cycle: view.cycle, user })
    }

    pub async fn account(&self, account: &AccountId) -> Result<AccountView> {
        Ok(self.view(account, None, true).await?.0)
    }

    pub async fn reservation(&self, id: &ReservationId) -> Result<ReservationView> {
        let args = object(json!({ "seq": id.seq }));
        let text = self.call(&SCRIPTS.reservation, &id.account, None, args, "").await?;
        let context = Context { account: &id.account, reservation: Some(id.seq), request: None };
        reply::reservation(reply::value(&text, &context)?, &id.account)
    }

    pub async fn list_reservations(
        &self,
        account: &AccountId,
        state: Option<ReservationState>,
        page_size: usize,
        before: Option<u64>,
    ) -> Result<ReservationPage> {
        let mut args = object(json!({ "size": page_size, "scan": crate::ledger::model::LIST_SCAN_MAX }));
        if let Some(state) = state {
            args.insert("state".into(), crate::ledger::wire::state_name(state).into());
        }
        if let Some(before) = before {
            args.insert("before".into(), before.into());
        }
        let text = self.call(&SCRIPTS.list, account, None, args, "").await?;
        let wire = reply::value(&text, &Context { account, reservation: None, request: None })?;
        reply::page(wire, account)
    }

    /// Catches up every account whose wake-up time has come, shard by shard, in bounded
    /// batches. Safe with many replicas sweeping at once: catching up is idempotent. Returns how
    /// many holds expired.
    pub async fn sweep(&self) -> Result<usize> {
        let mut expired = 0;
        for shard in 0..self.layout.shards {
            let mut due_call = SCRIPTS.due.prepare_invoke();
            due_call.key(self.layout.wake_key(shard)).arg(self.now_arg()).arg(SWEEP_BATCH_MAX);
            let mut connection = self.connection.clone();
            let due: Vec<String> = self.bounded(due_call.invoke_async(&mut connection)).await?;
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

    /// Up to `count` outbox entries of `shard` after entry id `after` ("-" for the start), with
    /// their stream ids.
    pub async fn outbox_range(&self, shard: u32, after: &str, count: usize) -> Result<Vec<(String, Event)>> {
        let start = if after == "-" { "-".to_owned() } else { format!("({after}") };
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("XRANGE");
        command.arg(self.layout.events_key(shard)).arg(start).arg("+").arg("COUNT").arg(count);
        let reply: StreamRangeReply = self.bounded(command.query_async(&mut connection)).await?;
        reply.ids.into_iter().map(|entry| Ok((entry.id.clone(), events::decode(&entry.map)?))).collect()
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
        let keys = self.layout.account_keys(&account);
        let mut invocation = SCRIPTS.restore.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let snapshot = serde_json::to_string(snapshot).expect("snapshot serialises");
        invocation.arg(account.as_str()).arg(self.now_arg()).arg(self.retention_ms).arg(snapshot).arg("");
        let mut connection = self.connection.clone();
        self.bounded(invocation.invoke_async::<i64>(&mut connection)).await?;
        Ok(())
    }

    async fn sweep_account(&self, account: &AccountId) -> Result<usize> {
        let keys = self.layout.account_keys(account);
        let mut invocation = SCRIPTS.sweep_account.prepare_invoke();
        for key in &keys {
            invocation.key(key);
        }
        let args = json!({ "answers_prefix": self.layout.answers_prefix(account) });
        invocation.arg(account.as_str()).arg(self.now_arg()).arg(self.retention_ms).arg(args.to_string()).arg("");
        let mut connection = self.connection.clone();
        let expired: i64 = self.bounded(invocation.invoke_async(&mut connection)).await?;
        Ok(usize::try_from(expired).unwrap_or(0))
    }
}

/// A script's arguments (ARGV[4]), as a JSON object.
type Args = Map<String, serde_json::Value>;

fn object(value: serde_json::Value) -> Args {
    match value {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("json! object literal"),
    }
}

fn reservation_context<'a>(id: &'a ReservationId, request: &'a crate::ledger::RequestId) -> Context<'a> {
    Context { account: &id.account, reservation: Some(id.seq), request: Some(request.as_str()) }
}

async fn connect(settings: &RedisSettings) -> Result<Connection> {
    let timeout = settings.timeout;
    if settings.cluster {
        let client = redis::cluster::ClusterClient::builder(settings.urls.clone())
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
    let client = redis::Client::open(url.as_str()).map_err(unavailable)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    let manager = tokio::time::timeout(timeout * 4, ConnectionManager::new_with_config(client, config))
        .await
        .map_err(|_| Error::Unavailable("redis: no answer while connecting".into()))?
        .map_err(unavailable)?;
    Ok(Connection::Single(manager))
}
