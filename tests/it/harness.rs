//! The shared harness: a real server on a loopback port chosen by the kernel, reached through
//! the real tonic clients, with a manual clock the test moves. `engine_tests!` runs one test
//! body against every engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use credit_sidecar::engine::Engine;
use credit_sidecar::engine::redis::{RedisEngine, RedisSettings};
use credit_sidecar::ledger::{ManualClock, Millis, Rules};
use credit_sidecar::server::{ServeOptions, serve};
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::servers::{RedisCluster, RedisServer};

/// 2026-03-10T12:00:00Z: inside a cycle of the plan anchored on `ANCHOR`.
pub fn t0() -> Millis {
    ms(2026, 3, 10, 12)
}

/// Plans in tests are anchored on a month's last day: 2026-01-31T00:00:00Z.
pub fn anchor() -> Millis {
    ms(2026, 1, 31, 0)
}

pub fn ms(year: i32, month: u32, day: u32, hour: u32) -> Millis {
    Utc.with_ymd_and_hms(year, month, day, hour, 0, 0).unwrap().timestamp_millis()
}

pub const MINUTE: Millis = 60_000;
pub const HOUR: Millis = 60 * MINUTE;
pub const DAY: Millis = 24 * HOUR;

#[derive(Clone, Copy, Debug)]
pub enum EngineKind {
    Embedded,
    /// A private redis-server, with the test's clock standing in for Redis TIME.
    Redis,
}

/// Settings for a test's own Redis: short timeouts, the default shard count.
pub fn redis_settings(urls: Vec<String>, cluster: bool) -> RedisSettings {
    RedisSettings {
        urls,
        cluster,
        shards: 16,
        key_prefix: String::new(),
        timeout: Duration::from_secs(2),
        wait: None,
        tls: Default::default(),
        password: None,
    }
}

/// A Redis engine on `server`, driven by `clock`.
pub async fn redis_engine(rules: &Rules, settings: &RedisSettings, clock: &ManualClock) -> Engine {
    let redis = RedisEngine::connect_with_test_clock(settings, rules.request_id_retention_ms, Arc::new(clock.clone()))
        .await
        .unwrap();
    Engine::redis(rules.clone(), redis)
}

pub struct Harness {
    pub clock: ManualClock,
    pub engine: Engine,
    pub auth: CreditAuthorizerClient<Channel>,
    pub admin: CreditAdminClient<Channel>,
    /// The private Redis of a Redis-engine harness.
    pub redis: Option<RedisServer>,
    /// Where the server listens.
    pub address: std::net::SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    requests: AtomicU64,
}

impl Harness {
    pub async fn start(kind: EngineKind) -> Self {
        Self::start_with(kind, Rules::default(), Duration::from_secs(3600)).await
    }

    /// `sweep_interval`: tests that drive expiry themselves use a long one and call `sweep`.
    pub async fn start_with(kind: EngineKind, rules: Rules, sweep_interval: Duration) -> Self {
        let clock = ManualClock::new(t0());
        match kind {
            EngineKind::Embedded => {
                let engine = Engine::embedded(rules, Arc::new(clock.clone()));
                Self::serve(clock, engine, None, sweep_interval).await
            }
            EngineKind::Redis => {
                let server = RedisServer::start();
                let engine = redis_engine(&rules, &redis_settings(vec![server.url()], false), &clock).await;
                Self::serve(clock, engine, Some(server), sweep_interval).await
            }
        }
    }

    /// A harness on a shared Redis Cluster, its keys apart from other tests' under `prefix`.
    pub async fn on_cluster(cluster: &RedisCluster, prefix: &str) -> Self {
        let clock = ManualClock::new(t0());
        let mut settings = redis_settings(cluster.urls(), true);
        settings.key_prefix = format!("{prefix}:");
        let engine = redis_engine(&Rules::default(), &settings, &clock).await;
        Self::serve(clock, engine, None, Duration::from_secs(3600)).await
    }

    /// Serves `engine` on a free loopback port and connects the clients.
    pub async fn serve(
        clock: ManualClock,
        engine: Engine,
        redis: Option<RedisServer>,
        sweep_interval: Duration,
    ) -> Self {
        Self::serve_settled(clock, engine, redis, ServeOptions::new(sweep_interval)).await
    }

    /// Serves with the given options (e.g. with a settler).
    pub async fn serve_settled(
        clock: ManualClock,
        engine: Engine,
        redis: Option<RedisServer>,
        options: ServeOptions,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn({
            let engine = engine.clone();
            async move {
                serve(listener, engine, options, None, async {
                    stopped.await.ok();
                })
                .await
                .unwrap();
            }
        });
        // The listener is bound, so the connection is accepted as soon as the server polls it.
        let channel = Channel::from_shared(format!("http://{address}")).unwrap().connect().await.unwrap();
        Self {
            clock,
            engine,
            auth: CreditAuthorizerClient::new(channel.clone()),
            admin: CreditAdminClient::new(channel),
            redis,
            address,
            shutdown: Some(shutdown),
            server: Some(server),
            requests: AtomicU64::new(0),
        }
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        self.shutdown.take().map(|tx| tx.send(()));
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }

    /// A fresh request id.
    pub fn rid(&self) -> String {
        format!("req-{}", self.requests.fetch_add(1, Ordering::Relaxed))
    }

    /// Moves the clock and runs the expiry sweep, as the background task would.
    pub async fn advance(&self, by: Millis) {
        self.clock.advance(by);
        self.engine.sweep().await.unwrap();
    }

    /// An account on a monthly plan anchored at `anchor()` with `credits` per cycle.
    pub async fn account(&self, account: &str, credits: i64) {
        self.set_plan(account, credits, 0).await;
    }

    pub async fn set_plan(&self, account: &str, plan_credits: i64, addon_credits: i64) -> pb::SetPlanResponse {
        let request = pb::SetPlanRequest { addon_credits, ..plan_request(account, plan_credits, anchor(), self.rid()) };
        let response = self.admin.clone().set_plan(request).await.unwrap().into_inner();
        assert_eq!(response.outcome(), pb::Outcome::Ok);
        response
    }

    pub async fn reserve(&self, account: &str, user: &str, amount: i64, ttl_ms: Millis) -> pb::ReserveResponse {
        self.reserve_cost(account, user, "enrichment", amount_cost(amount), ttl_ms).await
    }

    pub async fn reserve_cost(
        &self,
        account: &str,
        user: &str,
        category: &str,
        cost: pb::Cost,
        ttl_ms: Millis,
    ) -> pb::ReserveResponse {
        let request = pb::ReserveRequest {
            account_id: account.into(),
            user_id: user.into(),
            category: category.into(),
            cost: Some(cost),
            ttl_ms,
            request_id: self.rid(),
            labels: HashMap::new(),
            min_quantity: 0,
        };
        self.auth.clone().reserve(request).await.unwrap().into_inner()
    }

    /// Reserves and asserts it succeeded; returns the reservation id.
    pub async fn hold(&self, account: &str, user: &str, amount: i64) -> String {
        let response = self.reserve(account, user, amount, 10 * MINUTE).await;
        assert_eq!(response.outcome(), pb::Outcome::Ok, "{response:?}");
        response.reservation_id
    }

    pub async fn commit(&self, reservation: &str, amount: i64, final_commit: bool) -> pb::CommitResponse {
        self.commit_with(reservation, amount, final_commit, "", HashMap::new()).await
    }

    pub async fn commit_with(
        &self,
        reservation: &str,
        amount: i64,
        final_commit: bool,
        business_key: &str,
        labels: HashMap<String, String>,
    ) -> pb::CommitResponse {
        let request = pb::CommitRequest {
            reservation_id: reservation.into(),
            cost: Some(amount_cost(amount)),
            r#final: final_commit,
            request_id: self.rid(),
            business_key: business_key.into(),
            labels,
        };
        self.auth.clone().commit(request).await.unwrap().into_inner()
    }

    pub async fn release(&self, reservation: &str) -> pb::ReleaseResponse {
        let request = pb::ReleaseRequest { reservation_id: reservation.into(), request_id: self.rid() };
        self.auth.clone().release(request).await.unwrap().into_inner()
    }

    pub async fn extend(&self, reservation: &str, amount: i64, ttl_ms: Millis) -> pb::ExtendResponse {
        let request = pb::ExtendRequest {
            reservation_id: reservation.into(),
            cost: (amount > 0).then(|| amount_cost(amount)),
            ttl_ms,
            request_id: self.rid(),
            min_quantity: 0,
        };
        self.auth.clone().extend(request).await.unwrap().into_inner()
    }

    pub async fn totals(&self, account: &str) -> pb::Totals {
        let request = pb::GetBalanceRequest { account_id: account.into(), user_id: String::new() };
        self.auth.clone().get_balance(request).await.unwrap().into_inner().totals.unwrap()
    }

    pub async fn balance(&self, account: &str, user: &str) -> pb::GetBalanceResponse {
        let request = pb::GetBalanceRequest { account_id: account.into(), user_id: user.into() };
        self.auth.clone().get_balance(request).await.unwrap().into_inner()
    }

    pub async fn reservation(&self, id: &str) -> pb::Reservation {
        let request = pb::GetReservationRequest { reservation_id: id.into() };
        self.auth.clone().get_reservation(request).await.unwrap().into_inner().reservation.unwrap()
    }

    pub async fn set_category_budget(
        &self,
        account: &str,
        category: &str,
        budget: Option<i64>,
    ) -> pb::SetCategoryBudgetResponse {
        let request = pb::SetCategoryBudgetRequest {
            account_id: account.into(),
            category: category.into(),
            budget,
            request_id: self.rid(),
        };
        self.admin.clone().set_category_budget(request).await.unwrap().into_inner()
    }

    pub async fn set_user_limit(&self, account: &str, user: &str, limit: Option<i64>) -> pb::SetUserLimitResponse {
        let request =
            pb::SetUserLimitRequest { account_id: account.into(), user_id: user.into(), limit, request_id: self.rid() };
        self.admin.clone().set_user_limit(request).await.unwrap().into_inner()
    }

    pub async fn grant(&self, account: &str, kind: pb::LotKind, amount: i64, expires: Millis) -> pb::GrantResponse {
        let request = pb::GrantRequest {
            account_id: account.into(),
            kind: kind as i32,
            amount,
            expires_unix_ms: expires,
            request_id: self.rid(),
            create_account: false,
        };
        self.admin.clone().grant(request).await.unwrap().into_inner()
    }

    pub async fn lots(&self, account: &str) -> Vec<pb::Lot> {
        let request = pb::GetAccountRequest { account_id: account.into() };
        self.admin.clone().get_account(request).await.unwrap().into_inner().lots
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            shutdown.send(()).ok();
        }
    }
}

/// A monthly plan of `credits` for `account`, anchored at `anchor_unix_ms`.
pub fn plan_request(
    account: &str,
    credits: i64,
    anchor_unix_ms: Millis,
    request_id: impl Into<String>,
) -> pb::SetPlanRequest {
    pb::SetPlanRequest {
        account_id: account.into(),
        period: pb::Period::Monthly as i32,
        anchor_unix_ms,
        plan_credits: credits,
        addon_credits: 0,
        request_id: request_id.into(),
    }
}

/// A Reserve of `amount` credits for user ann, category enrichment, for ten minutes.
pub fn reserve_request(account: &str, amount: i64, request_id: impl Into<String>) -> pb::ReserveRequest {
    pb::ReserveRequest {
        account_id: account.into(),
        user_id: "ann".into(),
        category: "enrichment".into(),
        cost: Some(amount_cost(amount)),
        ttl_ms: 10 * MINUTE,
        request_id: request_id.into(),
        labels: HashMap::new(),
        min_quantity: 0,
    }
}

/// How long a test waits for a health status before failing.
pub const HEALTH_TRANSITION_MAX: Duration = Duration::from_secs(20);

/// Opens a `grpc.health.v1.Health/Watch` stream on `service`.
pub async fn health_watch(channel: &Channel, service: &str) -> tonic::Streaming<HealthCheckResponse> {
    let request = HealthCheckRequest { service: service.into() };
    HealthClient::new(channel.clone()).watch(request).await.unwrap().into_inner()
}

/// Reads a health watch until it reports `status` (bounded); returns every status read.
/// Polls `condition` every 10 ms until it holds, failing with `what` after `within`: for states
/// the code reaches in the background (settlement, health checks), never for timing.
pub async fn eventually(what: &str, within: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn wait_for_health(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
    status: ServingStatus,
) -> Vec<ServingStatus> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + HEALTH_TRANSITION_MAX;
    while seen.last() != Some(&status) {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Ok(Ok(Some(update))) => seen.push(update.status()),
            Ok(other) => panic!("health watch ended after {seen:?}: {other:?}"),
            Err(_) => panic!("health not {status:?} within {HEALTH_TRANSITION_MAX:?}; statuses seen: {seen:?}"),
        }
    }
    seen
}

pub fn amount_cost(amount: i64) -> pb::Cost {
    pb::Cost { cost: Some(pb::cost::Cost::Amount(amount)) }
}

pub fn sku_cost(sku: &str, quantity: i64) -> pb::Cost {
    pb::Cost { cost: Some(pb::cost::Cost::Sku(pb::SkuQuantity { sku: sku.into(), quantity })) }
}

/// Conservation as the API reports it.
pub fn assert_conserved(totals: &pb::Totals) {
    assert_eq!(
        totals.granted + totals.owed,
        totals.available + totals.held + totals.spent + totals.expired,
        "conservation broken: {totals:?}"
    );
}

/// A test body of the engine suite.
pub type Body = fn(Harness) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// Runs each named `async fn(Harness)` of the calling module once per engine, as
/// `<module>::embedded::<name>` and `<module>::redis::<name>`, and lists them in `<module>::SUITE`
/// for the Redis Cluster run.
#[macro_export]
macro_rules! engine_tests {
    ($($name:ident),* $(,)?) => {
        $crate::engine_tests!(@engine embedded, Embedded, $($name),*);
        $crate::engine_tests!(@engine redis, Redis, $($name),*);
        #[allow(dead_code, reason = "only some modules' suites run again on the Redis Cluster")]
        pub const SUITE: &[(&str, $crate::harness::Body)] = &[$((stringify!($name), |h| Box::pin($name(h)))),*];
    };
    (@engine $module:ident, $kind:ident, $($name:ident),*) => {
        mod $module {
            use $crate::harness::{EngineKind, Harness};
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(Harness::start(EngineKind::$kind).await).await;
                }
            )*
        }
    };
}

/// Bytes in, bytes out: a codec for requests no generated client would send.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: bytes::Bytes, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let length = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, length)))
    }
}

/// Sends `message` as the raw body of one unary call to `path` (e.g.
/// `/credits.v1.CreditAuthorizer/Commit`), in a well-formed gRPC frame.
pub async fn raw_unary(channel: &Channel, path: &'static str, message: &[u8]) -> Result<bytes::Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.map_err(|error| tonic::Status::unavailable(error.to_string()))?;
    let request = tonic::Request::new(bytes::Bytes::copy_from_slice(message));
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(request, path, RawCodec).await.map(tonic::Response::into_inner)
}

/// Bytes that are not a protobuf message: a field key whose varint never ends.
pub const NOT_PROTOBUF: &[u8] = &[0xff; 11];

/// A CA, a server certificate for `localhost` (and 127.0.0.1) and a client certificate, all signed
/// by the CA, made for one test.
pub struct Pki {
    pub ca: String,
    /// Certificate and key (PEM) for `localhost` and 127.0.0.1.
    pub server: (String, String),
    /// Certificate and key (PEM) of a client named `worker`.
    pub client: (String, String),
}

pub fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    // Distinct subject names: OpenSSL (redis-server, PostgreSQL) takes a certificate whose
    // subject equals its issuer for a self-signed one, and rejects it as an unknown CA.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "credit-sidecar test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf = |names: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, names[0].as_str());
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki { ca: ca.pem(), server: leaf(&["localhost", "127.0.0.1"]), client: leaf(&["worker"]) }
}

/// The `google.rpc` details every error status carries, checked: an `ErrorInfo` in the
/// service's domain whose reason is one of `api::status::REASONS` for this code, and by code a
/// `BadRequest` naming a field (INVALID_ARGUMENT), a `ResourceInfo` (NOT_FOUND), a `RetryInfo`
/// with a delay (UNAVAILABLE, RESOURCE_EXHAUSTED). Returns the reason.
pub fn error_reason(status: &tonic::Status) -> String {
    use credit_sidecar::api::status::{ERROR_DOMAIN, REASONS};
    use tonic_types::StatusExt;
    let details =
        status.check_error_details().unwrap_or_else(|error| panic!("undecodable details: {error}: {status:?}"));
    let info = details.error_info().unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
    assert_eq!(info.domain, ERROR_DOMAIN, "{status:?}");
    assert!(
        REASONS.contains(&(info.reason.as_str(), status.code())),
        "reason {} with {:?} is not in the catalogue",
        info.reason,
        status.code()
    );
    match status.code() {
        tonic::Code::InvalidArgument => {
            let bad = details.bad_request().unwrap_or_else(|| panic!("no BadRequest: {status:?}"));
            assert!(bad.field_violations.iter().all(|v| !v.field.is_empty()), "{status:?}");
            assert!(!bad.field_violations.is_empty(), "{status:?}");
        }
        tonic::Code::NotFound => {
            let resource = details.resource_info().unwrap_or_else(|| panic!("no ResourceInfo: {status:?}"));
            assert!(["account", "reservation"].contains(&resource.resource_type.as_str()), "{status:?}");
            assert!(!resource.resource_name.is_empty(), "{status:?}");
        }
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
            let retry = details.retry_info().unwrap_or_else(|| panic!("no RetryInfo: {status:?}"));
            assert!(retry.retry_delay.is_some_and(|delay| !delay.is_zero()), "{status:?}");
        }
        _ => {}
    }
    info.reason.clone()
}
