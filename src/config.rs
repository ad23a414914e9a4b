//! The one place that reads configuration. Every setting `foo_bar` comes from, lowest precedence
//! first: the TOML file (`--config`), the environment (`CREDIT_SIDECAR_FOO_BAR`; also the usual
//! `REDIS_URL` / `DATABASE_URL`), and the flag `--foo-bar`. All of it is parsed into one typed
//! [`Config`] and validated before any port is bound; every error names the setting. Tests build
//! a [`Config`] from a TOML string.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::auth::TokenSet;
use crate::engine::redis::{RedisSettings, SHARDS_DEFAULT, SHARDS_MAX, WaitReplicas};
use crate::gate::Limits;
use crate::ledger::Rules;
pub use crate::settle::store::SqliteSynchronous;
pub use crate::telemetry::LogFormat;

/// Credit-authorization sidecar: holds, commits and releases a team's credits over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A TOML configuration file (see README "Configuration").
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (the default).
    Serve,
    /// Compare Redis with the SQL ledger; print every drift; exit 1 when there is any.
    Verify {
        /// One account (default: every account in the ledger).
        #[arg(long)]
        account: Option<String>,
    },
    /// Re-create Redis state from the SQL ledger (after a Redis loss, or to repair drift).
    Rebuild {
        /// One account (default: every account in the ledger).
        #[arg(long)]
        account: Option<String>,
        /// Move a Redis written by an older layout to this one: check every outbox event is
        /// settled, delete every key under the prefix, rebuild every account (README,
        /// "Upgrading the Redis layout").
        #[arg(long, conflicts_with = "account")]
        upgrade_layout: bool,
    },
}

/// Every setting, as written in the file, the environment or a flag; all optional (defaults are
/// applied by [`Config`]), unknown file keys refused. Lists and maps are file-only.
#[derive(Clone, Debug, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// gRPC address [default: 127.0.0.1:50051].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the HTTP endpoint for /metrics, /livez and /readyz, or `off` [default: 127.0.0.1:9464].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// `text` or `json` [default: text].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// A tracing filter such as `info` or `credit_sidecar=debug,info` [default: info].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Redis URL (`redis://host:6379/`); with redis_cluster, comma-separated seed nodes. Without
    /// one the embedded engine runs. Also read from REDIS_URL.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Treat redis_url as the seed nodes of a Redis Cluster.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_CLUSTER", num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: Option<bool>,
    /// Shards accounts are spread over; fixed at first deployment [default: 16].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_SHARDS")]
    pub redis_shards: Option<u32>,
    /// Longest wait for one Redis round trip before answering UNAVAILABLE [default: 500].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    /// Prepended to every Redis key [default: none].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    /// Replicas every state change must reach (Redis `WAIT`) before it is answered; 0 for none
    /// [default: 0].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,
    /// How long a state change waits for those replicas before answering UNAVAILABLE
    /// [default: 500].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_WAIT_TIMEOUT_MS")]
    pub redis_wait_timeout_ms: Option<u64>,
    /// When Redis lost its state: `off` refuses calls until an operator runs `rebuild`;
    /// `rebuild` restores every account from the ledger automatically, once [default: off].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_STATE_RECOVERY", value_name = "off|rebuild")]
    pub redis_state_recovery: Option<String>,
    /// Where events settle: `postgres://…` or `sqlite:…` [default: sqlite://credit-sidecar.db?mode=rwc].
    /// Also read from DATABASE_URL.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Most events per SQL transaction [default: 5000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SETTLE_BATCH_MAX")]
    pub settle_batch_max: Option<usize>,
    /// Events another replica left unacknowledged this long are taken over [default: 30000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SETTLE_CLAIM_IDLE_MS")]
    pub settle_claim_idle_ms: Option<u64>,
    /// The embedded engine's outbox bound; beyond it state changes are refused [default: 100000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_OUTBOX_MEMORY_MAX")]
    pub outbox_memory_max: Option<usize>,
    /// SQLite's `synchronous` setting: `normal` survives a crash of the sidecar, `full` also a
    /// power loss [default: normal].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SQLITE_SYNCHRONOUS", value_name = "normal|full")]
    pub sqlite_synchronous: Option<String>,
    /// How often overdue holds are expired and ended cycles renewed [default: 1000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    /// How often Redis and the database are checked for health [default: 1000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: Option<u64>,
    /// The longest any call may take; a client's grpc-timeout may shorten it [default: 5000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CALL_TIMEOUT_MAX_MS")]
    pub call_timeout_max_ms: Option<u64>,
    /// Calls in flight at most; beyond it calls are refused at once [default: 1024].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CONCURRENCY_MAX")]
    pub concurrency_max: Option<usize>,
    /// The largest request message in bytes [default: 65536].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    /// The longest a request's body may take to arrive, before the call counts against
    /// concurrency_max [default: 2000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REQUEST_BODY_TIMEOUT_MS")]
    pub request_body_timeout_ms: Option<u64>,
    /// A connection with no call in flight for this long is closed [default: 60000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CONNECTION_IDLE_MAX_MS")]
    pub connection_idle_max_ms: Option<u64>,
    /// How often an HTTP/2 PING checks that a connection's peer is alive [default: 20000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_HTTP2_KEEPALIVE_INTERVAL_MS")]
    pub http2_keepalive_interval_ms: Option<u64>,
    /// A connection whose peer does not answer a PING within this long is closed [default: 10000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_HTTP2_KEEPALIVE_TIMEOUT_MS")]
    pub http2_keepalive_timeout_ms: Option<u64>,
    /// Idle time before the kernel's TCP keepalive probes start [default: 60000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TCP_KEEPALIVE_MS")]
    pub tcp_keepalive_ms: Option<u64>,
    /// A TOML file of bearer tokens and their scopes; re-read when it changes.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_AUTH_TOKENS_FILE", value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// How often the tokens file is checked for changes [default: 1000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_AUTH_RELOAD_INTERVAL_MS")]
    pub auth_reload_interval_ms: Option<u64>,
    /// Serve without authentication on a non-loopback address.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_AUTH_DISABLED", num_args = 0..=1, default_missing_value = "true")]
    pub auth_disabled: Option<bool>,
    /// PEM certificate chain; with tls_key_file, serve TLS.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of tls_cert_file.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates; clients must present a certificate signed by one (mTLS).
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// After SIGTERM, keep serving this long while health says NOT_SERVING, so balancers stop
    /// routing here before the listener closes [default: 0].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SHUTDOWN_DRAIN_MS")]
    pub shutdown_drain_ms: Option<u64>,
    /// The longest a shutdown may take to finish calls and flush settlement [default: 10000].
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(skip)]
    pub categories: Option<BTreeSet<String>>,
    #[arg(skip)]
    pub price_book: Option<BTreeMap<String, i64>>,
    /// TTL of a hold when the caller gives none.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_RESERVATION_TTL_DEFAULT_MS")]
    pub reservation_ttl_default_ms: Option<i64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_RESERVATION_TTL_MIN_MS")]
    pub reservation_ttl_min_ms: Option<i64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_RESERVATION_TTL_MAX_MS")]
    pub reservation_ttl_max_ms: Option<i64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TRIAL_CREDITS_DEFAULT")]
    pub trial_credits_default: Option<i64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TRIAL_DURATION_DEFAULT_MS")]
    pub trial_duration_default_ms: Option<i64>,
    /// How long request ids and closed reservations are remembered.
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REQUEST_ID_RETENTION_MS")]
    pub request_id_retention_ms: Option<i64>,
}

/// Where hot state lives.
#[derive(Clone, Debug)]
pub enum EngineConfig {
    /// In-process; the default when no Redis URL is given.
    Embedded,
    Redis(RedisSettings),
}

/// Settlement of events into SQL.
#[derive(Clone, Debug)]
pub struct SettleConfig {
    pub database_url: String,
    /// Most events per SQL transaction.
    pub batch_max: usize,
    /// Events another replica left unacknowledged this long are taken over.
    pub claim_idle_ms: u64,
    /// The embedded engine's outbox bound: beyond it, state changes are refused.
    pub outbox_memory_max: usize,
    /// How SQLite commits reach the disk (PostgreSQL ignores it).
    pub sqlite_synchronous: SqliteSynchronous,
}

/// Who may call.
#[derive(Clone, Debug)]
pub enum AuthConfig {
    /// No authentication; `reason` says why that is allowed (logged at start).
    Off { reason: &'static str },
    /// Bearer tokens from `file`, checked for changes every `reload_interval`.
    Tokens { file: PathBuf, reload_interval: Duration, initial: TokenSet },
}

/// TLS material, read at start.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// With it, clients must present a certificate this CA signed (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

// `Limits` belongs to the gate; its defaults live here, with every other setting's.
impl Default for Limits {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            call_timeout_max: ms(CALL_TIMEOUT_MAX_DEFAULT_MS),
            concurrency_max: CONCURRENCY_MAX_DEFAULT,
            request_bytes_max: REQUEST_BYTES_MAX_DEFAULT,
            request_body_timeout: ms(REQUEST_BODY_TIMEOUT_DEFAULT_MS),
            connection_idle_max: ms(CONNECTION_IDLE_MAX_DEFAULT_MS),
            http2_keepalive_interval: ms(HTTP2_KEEPALIVE_INTERVAL_DEFAULT_MS),
            http2_keepalive_timeout: ms(HTTP2_KEEPALIVE_TIMEOUT_DEFAULT_MS),
            tcp_keepalive: ms(TCP_KEEPALIVE_DEFAULT_MS),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// None: no metrics endpoint.
    pub metrics_listen: Option<SocketAddr>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub engine: EngineConfig,
    pub settle: SettleConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    /// How often Redis and the database are checked for health.
    pub health_interval: Duration,
    /// Restore Redis from the ledger by itself when it lost its state (see the README).
    pub redis_state_recovery: bool,
    /// How long to keep serving, NOT_SERVING, after a shutdown signal.
    pub shutdown_drain: Duration,
    /// How long a shutdown may take to finish calls and flush settlement (after the drain).
    pub shutdown_grace: Duration,
    /// How often the background sweep expires overdue holds and renews cycles.
    pub sweep_interval: Duration,
    pub rules: Rules,
}

pub const LISTEN_DEFAULT: &str = "127.0.0.1:50051";
pub const METRICS_LISTEN_DEFAULT: &str = "127.0.0.1:9464";
pub const SWEEP_INTERVAL_DEFAULT_MS: u64 = 1_000;
pub const REDIS_TIMEOUT_DEFAULT_MS: u64 = 500;
pub const REDIS_WAIT_TIMEOUT_DEFAULT_MS: u64 = 500;
pub const DATABASE_URL_DEFAULT: &str = "sqlite://credit-sidecar.db?mode=rwc";
pub const CALL_TIMEOUT_MAX_DEFAULT_MS: u64 = 5_000;
pub const CONCURRENCY_MAX_DEFAULT: usize = 1_024;
pub const REQUEST_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// A request of at most `request_bytes_max` arrives in far less on any working link; a peer
/// slower than this is more likely holding the server than calling it.
pub const REQUEST_BODY_TIMEOUT_DEFAULT_MS: u64 = 2_000;
/// Long enough that a caller between bursts keeps its connection, short enough that idle
/// connections (of a crashed pool, or a hostile peer) do not pile up.
pub const CONNECTION_IDLE_MAX_DEFAULT_MS: u64 = 60_000;
/// Finds a peer that vanished without closing (a killed pod, a dropped NAT entry) within half a
/// minute.
pub const HTTP2_KEEPALIVE_INTERVAL_DEFAULT_MS: u64 = 20_000;
pub const HTTP2_KEEPALIVE_TIMEOUT_DEFAULT_MS: u64 = 10_000;
pub const TCP_KEEPALIVE_DEFAULT_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    fn new(setting: &str, reason: impl std::fmt::Display) -> Self {
        Self(format!("{setting}: {reason}"))
    }
}

impl Config {
    /// Flags over the environment over the file over defaults.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| ConfigError::new("config", format!("cannot read {}: {error}", path.display())))?;
                parse_file(&text)?
            }
            None => Settings::default(),
        };
        let mut overlay = args.settings.clone();
        // The conventional variables, below their CREDIT_SIDECAR_ forms (which clap has read).
        for (name, slot) in [("REDIS_URL", &mut overlay.redis_url), ("DATABASE_URL", &mut overlay.database_url)] {
            if slot.is_none() {
                *slot = std::env::var(name).ok().filter(|value| !value.is_empty());
            }
        }
        build(overlay_settings(file, overlay)?)
    }

    /// A configuration from TOML text alone (defaults for what it leaves out).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        build(parse_file(text)?)
    }
}

fn parse_file(text: &str) -> Result<Settings, ConfigError> {
    toml::from_str(text).map_err(|error| ConfigError::new("config file", error))
}

/// `over`'s settings replace `under`'s where given.
fn overlay_settings(under: Settings, over: Settings) -> Result<Settings, ConfigError> {
    let to_map = |settings: &Settings| match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        other => Err(ConfigError::new("config", format!("cannot merge settings: {other:?}"))),
    };
    let mut merged = to_map(&under)?;
    for (key, value) in to_map(&over)? {
        if !value.is_null() {
            merged.insert(key, value);
        }
    }
    serde_json::from_value(serde_json::Value::Object(merged)).map_err(|error| ConfigError::new("config", error))
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    setting: &str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError> {
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        return Err(ConfigError::new(setting, format!("must be in {}..={}, got {value}", range.start(), range.end())));
    }
    Ok(value)
}

fn address(setting: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::new(setting, format!("{text:?} is not an address like 127.0.0.1:50051")))
}

fn build(file: Settings) -> Result<Config, ConfigError> {
    let engine = engine(&file)?;
    let settle = settle(&file)?;
    let listen = address("listen", file.listen.as_deref().unwrap_or(LISTEN_DEFAULT))?;
    let metrics_listen = match file.metrics_listen.as_deref().unwrap_or(METRICS_LISTEN_DEFAULT) {
        "off" => None,
        text => Some(address("metrics_listen", text)?),
    };
    let log_format = match file.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(ConfigError::new("log_format", format!("must be text or json, got {other:?}"))),
    };
    let log_level = file.log_level.clone().unwrap_or_else(|| "info".to_owned());
    tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|error| ConfigError::new("log_level", error))?;
    let limits = limits(&file)?;
    let auth = auth(&file, listen)?;
    let tls = tls(&file)?;
    let ms = Duration::from_millis;
    let health_interval = ms(in_range("health_interval_ms", file.health_interval_ms, 1_000, 10..=60_000)?);
    let shutdown_drain = ms(in_range("shutdown_drain_ms", file.shutdown_drain_ms, 0, 0..=600_000)?);
    let shutdown_grace = ms(in_range("shutdown_grace_ms", file.shutdown_grace_ms, 10_000, 100..=600_000)?);
    let sweep_interval =
        ms(in_range("sweep_interval_ms", file.sweep_interval_ms, SWEEP_INTERVAL_DEFAULT_MS, 10..=60_000)?);
    let defaults = Rules::default();
    let rules = Rules {
        categories: file.categories.unwrap_or(defaults.categories),
        price_book: file.price_book.unwrap_or(defaults.price_book),
        reservation_ttl_default_ms: file.reservation_ttl_default_ms.unwrap_or(defaults.reservation_ttl_default_ms),
        reservation_ttl_min_ms: file.reservation_ttl_min_ms.unwrap_or(defaults.reservation_ttl_min_ms),
        reservation_ttl_max_ms: file.reservation_ttl_max_ms.unwrap_or(defaults.reservation_ttl_max_ms),
        trial_credits_default: file.trial_credits_default.unwrap_or(defaults.trial_credits_default),
        trial_duration_default_ms: file.trial_duration_default_ms.unwrap_or(defaults.trial_duration_default_ms),
        trial_duration_max_ms: defaults.trial_duration_max_ms,
        request_id_retention_ms: file.request_id_retention_ms.unwrap_or(defaults.request_id_retention_ms),
    };
    rules.validate().map_err(ConfigError)?;
    Ok(Config {
        listen,
        metrics_listen,
        log_format,
        log_level,
        engine,
        settle,
        limits,
        auth,
        tls,
        health_interval,
        redis_state_recovery: match file.redis_state_recovery.as_deref().unwrap_or("off") {
            "off" => false,
            "rebuild" => true,
            other => {
                return Err(ConfigError::new("redis_state_recovery", format!("must be off or rebuild, got {other:?}")));
            }
        },
        shutdown_drain,
        shutdown_grace,
        sweep_interval,
        rules,
    })
}

/// The bounds on every call and connection (see [`Limits`]).
fn limits(file: &Settings) -> Result<Limits, ConfigError> {
    Ok(Limits {
        call_timeout_max: Duration::from_millis(in_range(
            "call_timeout_max_ms",
            file.call_timeout_max_ms,
            CALL_TIMEOUT_MAX_DEFAULT_MS,
            10..=600_000,
        )?),
        concurrency_max: in_range("concurrency_max", file.concurrency_max, CONCURRENCY_MAX_DEFAULT, 1..=1_000_000)?,
        request_bytes_max: in_range(
            "request_bytes_max",
            file.request_bytes_max,
            REQUEST_BYTES_MAX_DEFAULT,
            1_024..=16 * 1024 * 1024,
        )?,
        request_body_timeout: Duration::from_millis(in_range(
            "request_body_timeout_ms",
            file.request_body_timeout_ms,
            REQUEST_BODY_TIMEOUT_DEFAULT_MS,
            10..=600_000,
        )?),
        connection_idle_max: Duration::from_millis(in_range(
            "connection_idle_max_ms",
            file.connection_idle_max_ms,
            CONNECTION_IDLE_MAX_DEFAULT_MS,
            100..=86_400_000,
        )?),
        http2_keepalive_interval: Duration::from_millis(in_range(
            "http2_keepalive_interval_ms",
            file.http2_keepalive_interval_ms,
            HTTP2_KEEPALIVE_INTERVAL_DEFAULT_MS,
            100..=3_600_000,
        )?),
        http2_keepalive_timeout: Duration::from_millis(in_range(
            "http2_keepalive_timeout_ms",
            file.http2_keepalive_timeout_ms,
            HTTP2_KEEPALIVE_TIMEOUT_DEFAULT_MS,
            100..=600_000,
        )?),
        tcp_keepalive: Duration::from_millis(in_range(
            "tcp_keepalive_ms",
            file.tcp_keepalive_ms,
            TCP_KEEPALIVE_DEFAULT_MS,
            1_000..=7_200_000,
        )?),
    })
}

/// Tokens when a file is given; otherwise off, but only on loopback or when asked for.
fn auth(file: &Settings, listen: SocketAddr) -> Result<AuthConfig, ConfigError> {
    let reload_ms = in_range("auth_reload_interval_ms", file.auth_reload_interval_ms, 1_000, 10..=3_600_000)?;
    let disabled = file.auth_disabled.unwrap_or(false);
    match &file.auth_tokens_file {
        Some(path) if disabled => Err(ConfigError::new(
            "auth_disabled",
            format!("contradicts auth_tokens_file = {}; set one of them", path.display()),
        )),
        Some(path) => {
            let initial = TokenSet::load(path).map_err(|error| ConfigError::new("auth_tokens_file", error))?;
            Ok(AuthConfig::Tokens { file: path.clone(), reload_interval: Duration::from_millis(reload_ms), initial })
        }
        None if disabled => Ok(AuthConfig::Off { reason: "auth_disabled = true" }),
        None if listen.ip().is_loopback() => {
            Ok(AuthConfig::Off { reason: "listening on loopback only and no auth_tokens_file is set" })
        }
        None => Err(ConfigError::new(
            "auth_tokens_file",
            format!("required when listening on {listen}, which is not loopback (or set auth_disabled = true)"),
        )),
    }
}

fn tls(file: &Settings) -> Result<Option<TlsConfig>, ConfigError> {
    let read = |setting: &str, path: &PathBuf| {
        std::fs::read(path)
            .map_err(|error| ConfigError::new(setting, format!("cannot read {}: {error}", path.display())))
    };
    let certificates = |setting: &str, pem: Vec<u8>| {
        let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
        match parsed {
            Ok(certificates) if !certificates.is_empty() => Ok(pem),
            Ok(_) => Err(ConfigError::new(setting, "holds no PEM certificate")),
            Err(error) => Err(ConfigError::new(setting, format!("not a PEM certificate chain: {error}"))),
        }
    };
    let client_ca_pem = file
        .tls_client_ca_file
        .as_ref()
        .map(|path| certificates("tls_client_ca_file", read("tls_client_ca_file", path)?))
        .transpose()?;
    match (&file.tls_cert_file, &file.tls_key_file) {
        (Some(cert), Some(key)) => {
            let cert_pem = certificates("tls_cert_file", read("tls_cert_file", cert)?)?;
            let key_pem = read("tls_key_file", key)?;
            PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|error| ConfigError::new("tls_key_file", format!("not a PEM private key: {error}")))?;
            Ok(Some(TlsConfig { cert_pem, key_pem, client_ca_pem }))
        }
        (None, None) if client_ca_pem.is_some() => {
            Err(ConfigError::new("tls_client_ca_file", "needs tls_cert_file and tls_key_file (mTLS is TLS first)"))
        }
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::new("tls_key_file", "is required with tls_cert_file")),
        (None, Some(_)) => Err(ConfigError::new("tls_cert_file", "is required with tls_key_file")),
    }
}

fn settle(file: &Settings) -> Result<SettleConfig, ConfigError> {
    let database_url = file.database_url.clone().unwrap_or_else(|| DATABASE_URL_DEFAULT.to_owned());
    if !["postgres://", "postgresql://", "sqlite:"].iter().any(|scheme| database_url.starts_with(scheme)) {
        return Err(ConfigError::new("database_url", "must start with postgres://, postgresql:// or sqlite:"));
    }
    Ok(SettleConfig {
        database_url,
        batch_max: in_range(
            "settle_batch_max",
            file.settle_batch_max,
            crate::settle::settler::SETTLE_BATCH_MAX_DEFAULT,
            1..=10_000,
        )?,
        claim_idle_ms: in_range("settle_claim_idle_ms", file.settle_claim_idle_ms, 30_000, 100..=3_600_000)?,
        outbox_memory_max: in_range("outbox_memory_max", file.outbox_memory_max, 100_000, 1_000..=10_000_000)?,
        sqlite_synchronous: match file.sqlite_synchronous.as_deref().unwrap_or("normal") {
            "normal" => SqliteSynchronous::Normal,
            "full" => SqliteSynchronous::Full,
            other => {
                return Err(ConfigError::new("sqlite_synchronous", format!("must be normal or full, got {other:?}")));
            }
        },
    })
}

fn engine(file: &Settings) -> Result<EngineConfig, ConfigError> {
    let Some(url) = file.redis_url.as_deref().filter(|url| !url.is_empty()) else {
        return Ok(EngineConfig::Embedded);
    };
    let cluster = file.redis_cluster.unwrap_or(false);
    let urls: Vec<String> = url.split(',').map(|part| part.trim().to_owned()).collect();
    if urls.len() > 1 && !cluster {
        return Err(ConfigError::new("redis_url", "several URLs need redis_cluster = true"));
    }
    for url in &urls {
        redis::parse_redis_url(url)
            .ok_or_else(|| ConfigError::new("redis_url", format!("{url:?} is not a redis:// or rediss:// URL")))?;
    }
    let shards = in_range("redis_shards", file.redis_shards, SHARDS_DEFAULT, 1..=SHARDS_MAX)?;
    let timeout_ms = in_range("redis_timeout_ms", file.redis_timeout_ms, REDIS_TIMEOUT_DEFAULT_MS, 10..=60_000)?;
    let key_prefix = file.redis_key_prefix.clone().unwrap_or_default();
    if key_prefix.len() > 64 || key_prefix.contains(['{', '}']) {
        return Err(ConfigError::new("redis_key_prefix", "at most 64 bytes, without braces"));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let replicas = in_range("redis_wait_replicas", file.redis_wait_replicas, 0, 0..=16)?;
    let wait_ms =
        in_range("redis_wait_timeout_ms", file.redis_wait_timeout_ms, REDIS_WAIT_TIMEOUT_DEFAULT_MS, 1..=60_000)?;
    if replicas > 0 && cluster {
        return Err(ConfigError::new(
            "redis_wait_replicas",
            "is supported on a single Redis primary, not with redis_cluster",
        ));
    }
    let wait = (replicas > 0).then(|| WaitReplicas { replicas, timeout: Duration::from_millis(wait_ms) });
    Ok(EngineConfig::Redis(RedisSettings { urls, cluster, shards, key_prefix, timeout, wait }))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_serve_on_loopback() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen.to_string(), LISTEN_DEFAULT);
        assert_eq!(config.rules, Rules::default());
    }

    #[test]
    fn file_sets_rules() {
        let config =
            Config::from_toml("categories = [\"email\", \"dialer\"]\n[price_book]\n\"dialer.minute.fr\" = 3\n")
                .unwrap();
        assert_eq!(config.rules.price_book["dialer.minute.fr"], 3);
        assert!(config.rules.category("mobile").is_err());
    }

    #[test]
    fn errors_name_the_setting() {
        let table = [
            ("listen = \"nowhere\"", "listen: "),
            ("sweep_interval_ms = 0", "sweep_interval_ms: "),
            ("[price_book]\nfree = 0", "price_book.free: "),
            ("reservation_ttl_min_ms = 0", "reservation_ttl_"),
            ("colour = \"blue\"", "config file: "),
            ("redis_url = \"http://x\"", "redis_url: "),
            ("redis_url = \"redis://a:1,redis://b:2\"", "redis_url: several URLs"),
            ("redis_url = \"redis://a:1\"\nredis_shards = 0", "redis_shards: "),
            ("database_url = \"mysql://x\"", "database_url: "),
            ("settle_batch_max = 0", "settle_batch_max: "),
            ("metrics_listen = \"somewhere\"", "metrics_listen: "),
            ("log_format = \"xml\"", "log_format: "),
            ("sqlite_synchronous = \"off\"", "sqlite_synchronous: "),
            ("log_level = \"[[[\"", "log_level: "),
            ("call_timeout_max_ms = 0", "call_timeout_max_ms: "),
            ("concurrency_max = 0", "concurrency_max: "),
            ("request_bytes_max = 10", "request_bytes_max: "),
            ("request_body_timeout_ms = 0", "request_body_timeout_ms: "),
            ("connection_idle_max_ms = 1", "connection_idle_max_ms: "),
            ("http2_keepalive_interval_ms = 0", "http2_keepalive_interval_ms: "),
            ("http2_keepalive_timeout_ms = 600001", "http2_keepalive_timeout_ms: "),
            ("tcp_keepalive_ms = 10", "tcp_keepalive_ms: "),
            ("health_interval_ms = 0", "health_interval_ms: "),
            ("redis_state_recovery = \"yes\"", "redis_state_recovery: "),
            ("redis_url = \"redis://a:1\"\nredis_wait_replicas = 17", "redis_wait_replicas: "),
            (
                "redis_url = \"redis://a:1,redis://b:1\"\nredis_cluster = true\nredis_wait_replicas = 1",
                "redis_wait_replicas: ",
            ),
            ("shutdown_drain_ms = 600001", "shutdown_drain_ms: "),
        ];
        for (text, expected) in table {
            let error = Config::from_toml(text).unwrap_err().to_string();
            assert!(error.starts_with(&format!("configuration: {expected}")), "{text}: {error}");
        }
    }

    #[test]
    fn authentication_is_off_only_on_loopback_or_when_asked() {
        let off = |text: &str| matches!(Config::from_toml(text).unwrap().auth, AuthConfig::Off { .. });
        assert!(off(""));
        assert!(off("listen = \"[::1]:50051\""));
        assert!(off("listen = \"0.0.0.0:50051\"\nauth_disabled = true"));
        let error = Config::from_toml("listen = \"0.0.0.0:50051\"").unwrap_err().to_string();
        assert!(error.starts_with("configuration: auth_tokens_file: required"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.toml");
        std::fs::write(&tokens, "[[tokens]]\nname = \"w\"\ntoken = \"0123456789abcdef\"\nscopes = [\"authorize\"]\n")
            .unwrap();
        let text = format!("listen = \"0.0.0.0:50051\"\nauth_tokens_file = {:?}", tokens.display().to_string());
        let AuthConfig::Tokens { initial, .. } = Config::from_toml(&text).unwrap().auth else { panic!("tokens") };
        assert_eq!(initial.len(), 1);
        let both = format!("{text}\nauth_disabled = true");
        assert!(Config::from_toml(&both).unwrap_err().to_string().starts_with("configuration: auth_disabled: "));
        std::fs::write(&tokens, "[[tokens]]\nname = \"w\"\ntoken = \"short\"\nscopes = [\"authorize\"]\n").unwrap();
        let error = Config::from_toml(&text).unwrap_err().to_string();
        assert!(error.starts_with("configuration: auth_tokens_file: ") && error.contains("tokens[0].token"), "{error}");
    }

    #[test]
    fn tls_settings_come_in_pairs_and_are_checked_before_serving() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            format!("{:?}", path.display().to_string())
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
        let (cert, key, junk) =
            (file("cert.pem", &cert.pem()), file("key.pem", &key.serialize_pem()), file("junk.pem", "not a pem"));
        let table = [
            (format!("tls_cert_file = {cert}"), "tls_key_file: "),
            (format!("tls_key_file = {key}"), "tls_cert_file: "),
            (format!("tls_client_ca_file = {cert}"), "tls_client_ca_file: "),
            ("tls_cert_file = \"/nonexistent.pem\"\ntls_key_file = \"/nonexistent.pem\"".to_owned(), "tls_cert_file: "),
            (format!("tls_cert_file = {junk}\ntls_key_file = {key}"), "tls_cert_file: "),
            (format!("tls_cert_file = {cert}\ntls_key_file = {junk}"), "tls_key_file: "),
            (
                format!("tls_cert_file = {cert}\ntls_key_file = {key}\ntls_client_ca_file = {junk}"),
                "tls_client_ca_file: ",
            ),
        ];
        for (text, expected) in table {
            let error = Config::from_toml(&text).unwrap_err().to_string();
            assert!(error.starts_with(&format!("configuration: {expected}")), "{text}: {error}");
        }
        let config = Config::from_toml(&format!("tls_cert_file = {cert}\ntls_key_file = {key}")).unwrap();
        assert!(config.tls.is_some_and(|tls| tls.client_ca_pem.is_none()));
    }

    #[test]
    fn a_redis_url_selects_the_redis_engine() {
        assert!(matches!(Config::from_toml("").unwrap().engine, EngineConfig::Embedded));
        let config = Config::from_toml("redis_url = \"redis://127.0.0.1:6379/\"").unwrap();
        let EngineConfig::Redis(settings) = config.engine else { panic!("expected redis") };
        assert_eq!((settings.shards, settings.cluster, settings.urls.len()), (SHARDS_DEFAULT, false, 1));
        let cluster = "redis_url = \"redis://a:1, redis://b:2\"\nredis_cluster = true";
        let EngineConfig::Redis(settings) = Config::from_toml(cluster).unwrap().engine else { panic!() };
        assert_eq!(settings.urls, vec!["redis://a:1".to_owned(), "redis://b:2".to_owned()]);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = std::env::temp_dir().join(format!("credit-sidecar-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\n").unwrap();
        let args = Args::parse_from(["credit-sidecar", "--config", path.to_str().unwrap(), "--listen", "127.0.0.1:2"]);
        assert_eq!(Config::load(&args).unwrap().listen.port(), 2);
        let args = Args::parse_from(["credit-sidecar", "--config", path.to_str().unwrap()]);
        assert_eq!(Config::load(&args).unwrap().listen.port(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
