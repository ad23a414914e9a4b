//! The one place that reads configuration. Every setting `foo_bar` comes from, lowest precedence
//! first: the TOML file (`--config`), the environment (`CREDIT_SIDECAR_FOO_BAR`; also the usual
//! `REDIS_URL` / `DATABASE_URL`), and the flag `--foo-bar`. All of it is parsed into one typed
//! [`Config`] and validated before any port is bound; every error names the setting. Tests build
//! a [`Config`] from a TOML string. Every setting's default, range, unit and meaning is in
//! [`settings`].

pub mod settings;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use crate::alerts::Webhooks;
use crate::api::cli::{Connection, Operation, Target};
use crate::auth::TokenSet;
use crate::engine::redis::{RedisSettings, RedisTls, Secret, WaitReplicas};
use crate::gate::Limits;
use crate::journal::{Coverage, FailOpenConfig, JournalConfig};
use crate::ledger::Rules;
pub use crate::settle::store::SqliteSynchronous;
pub use crate::telemetry::{LogFormat, TraceConfig};
use settings::Setting;

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
    /// Where each setting given by a flag or a variable came from (for error messages): the
    /// setting's name → `--flag` or `CREDIT_SIDECAR_VARIABLE`. Filled by [`parse_args`].
    #[arg(skip)]
    pub sources: BTreeMap<String, String>,
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
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the configuration (file, environment, flags) and exit: 0 when valid, 2 with the
    /// setting and the reason when not. Files it names (tokens, TLS) are not read.
    CheckConfig,
    /// Re-create Redis state from the SQL ledger (after a Redis loss, or to repair drift).
    Rebuild {
        /// One account (default: every account in the ledger).
        #[arg(long)]
        account: Option<String>,
        /// Move a Redis written by an older layout to this one: layouts 2 and 3 are converted in
        /// place; from layout 1, check every outbox event is settled, delete every key under the
        /// prefix, rebuild every account (README, "Upgrading the Redis layout").
        #[arg(long, conflicts_with = "account")]
        upgrade_layout: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    Operator(Operation),
}

/// The settings a subcommand uses: its `--help` shows only these (the others are still
/// accepted, so one environment serves every command). None: every setting.
fn settings_shown(subcommand: &str) -> Option<&'static [&'static str]> {
    match subcommand {
        "serve" | "check-config" => None,
        "verify" | "rebuild" => Some(&MAINTENANCE_SETTINGS),
        // The operator commands read `listen` and `tls_cert_file` only as the default address
        // (from the file or the environment); their own flags say where to call.
        _ => Some(&[]),
    }
}

/// What `verify` and `rebuild` read: the stores, the logs and traces, the retention.
const MAINTENANCE_SETTINGS: [&str; 19] = [
    "log_format",
    "log_level",
    "otel_endpoint",
    "otel_service_name",
    "otel_sample_ratio",
    "otel_ca_file",
    "redis_url",
    "redis_cluster",
    "redis_shards",
    "redis_timeout_ms",
    "redis_key_prefix",
    "redis_password_file",
    "redis_ca_file",
    "redis_client_cert_file",
    "redis_client_key_file",
    "database_url",
    "database_password_file",
    "database_ca_file",
    "request_id_retention_ms",
];

/// The variables of the operator commands (beside every setting's).
const OPERATOR_VARIABLES: [&str; 4] =
    ["CREDIT_SIDECAR_ADDRESS", "CREDIT_SIDECAR_TOKEN", "CREDIT_SIDECAR_TOKEN_FILE", "CREDIT_SIDECAR_CA_FILE"];

/// Every setting, as written in the file, the environment or a flag; all optional (defaults are
/// applied by [`Config`]), unknown file keys refused. Lists and maps are file-only. What each
/// means, its default and range: [`settings::SETTINGS`] (which also writes the flags' help).
#[derive(Clone, Debug, Default, Deserialize, Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[arg(long, global = true, env = "CREDIT_SIDECAR_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_OTEL_ENDPOINT", value_name = "URL")]
    pub otel_endpoint: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_OTEL_SERVICE_NAME", value_name = "NAME")]
    pub otel_service_name: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_OTEL_SAMPLE_RATIO", value_name = "RATIO")]
    pub otel_sample_ratio: Option<f64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_OTEL_CA_FILE", value_name = "FILE")]
    pub otel_ca_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_CLUSTER", num_args = 0..=1, default_missing_value = "true")]
    pub redis_cluster: Option<bool>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_SHARDS")]
    pub redis_shards: Option<u32>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_TIMEOUT_MS")]
    pub redis_timeout_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_KEY_PREFIX")]
    pub redis_key_prefix: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_PASSWORD_FILE", value_name = "FILE")]
    pub redis_password_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_CLIENT_CERT_FILE", value_name = "FILE")]
    pub redis_client_cert_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_CLIENT_KEY_FILE", value_name = "FILE")]
    pub redis_client_key_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_WAIT_REPLICAS")]
    pub redis_wait_replicas: Option<u32>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_WAIT_TIMEOUT_MS")]
    pub redis_wait_timeout_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REDIS_STATE_RECOVERY", value_name = "off|rebuild")]
    pub redis_state_recovery: Option<String>,
    #[arg(skip)]
    pub journal_categories: Option<BTreeSet<String>>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_JOURNAL_PATH", value_name = "FILE")]
    pub journal_path: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_JOURNAL_ENTRIES_MAX")]
    pub journal_entries_max: Option<usize>,
    #[arg(skip)]
    pub fail_open_categories: Option<BTreeSet<String>>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_FAIL_OPEN_CREDITS")]
    pub fail_open_credits: Option<i64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_FAIL_OPEN_MS")]
    pub fail_open_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_DATABASE_PASSWORD_FILE", value_name = "FILE")]
    pub database_password_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_DATABASE_CA_FILE", value_name = "FILE")]
    pub database_ca_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SETTLE_BATCH_MAX")]
    pub settle_batch_max: Option<usize>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SETTLE_WRITERS")]
    pub settle_writers: Option<usize>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SETTLE_CLAIM_IDLE_MS")]
    pub settle_claim_idle_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_OUTBOX_MEMORY_MAX")]
    pub outbox_memory_max: Option<usize>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SQLITE_SYNCHRONOUS", value_name = "normal|full")]
    pub sqlite_synchronous: Option<String>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SWEEP_INTERVAL_MS")]
    pub sweep_interval_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_ALERT_INTERVAL_MS")]
    pub alert_interval_ms: Option<u64>,
    #[arg(skip)]
    pub webhook_urls: Option<Vec<String>>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_WEBHOOK_ATTEMPTS_MAX")]
    pub webhook_attempts_max: Option<u32>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CALL_TIMEOUT_MAX_MS")]
    pub call_timeout_max_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CONCURRENCY_MAX")]
    pub concurrency_max: Option<usize>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REQUEST_BYTES_MAX")]
    pub request_bytes_max: Option<usize>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_REQUEST_BODY_TIMEOUT_MS")]
    pub request_body_timeout_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_CONNECTION_IDLE_MAX_MS")]
    pub connection_idle_max_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_HTTP2_KEEPALIVE_INTERVAL_MS")]
    pub http2_keepalive_interval_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_HTTP2_KEEPALIVE_TIMEOUT_MS")]
    pub http2_keepalive_timeout_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TCP_KEEPALIVE_MS")]
    pub tcp_keepalive_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_AUTH_TOKENS_FILE", value_name = "FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_RULES_RELOAD_INTERVAL_MS")]
    pub rules_reload_interval_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_AUTH_RELOAD_INTERVAL_MS")]
    pub auth_reload_interval_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_AUTH_DISABLED", num_args = 0..=1, default_missing_value = "true")]
    pub auth_disabled: Option<bool>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SHUTDOWN_DRAIN_MS")]
    pub shutdown_drain_ms: Option<u64>,
    #[arg(long, global = true, env = "CREDIT_SIDECAR_SHUTDOWN_GRACE_MS")]
    pub shutdown_grace_ms: Option<u64>,
    #[arg(skip)]
    pub categories: Option<BTreeSet<String>>,
    #[arg(skip)]
    pub price_book: Option<BTreeMap<String, i64>>,
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
    /// Most batches written at once (Redis engine into PostgreSQL).
    pub writers: usize,
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
        let ms = |setting: &Setting| Duration::from_millis(setting.default_number() as u64);
        Self {
            call_timeout_max: ms(&settings::CALL_TIMEOUT_MAX_MS),
            concurrency_max: settings::CONCURRENCY_MAX.default_number() as usize,
            request_bytes_max: settings::REQUEST_BYTES_MAX.default_number() as usize,
            request_body_timeout: ms(&settings::REQUEST_BODY_TIMEOUT_MS),
            connection_idle_max: ms(&settings::CONNECTION_IDLE_MAX_MS),
            http2_keepalive_interval: ms(&settings::HTTP2_KEEPALIVE_INTERVAL_MS),
            http2_keepalive_timeout: ms(&settings::HTTP2_KEEPALIVE_TIMEOUT_MS),
            tcp_keepalive: ms(&settings::TCP_KEEPALIVE_MS),
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
    /// None: no traces exported.
    pub traces: Option<TraceConfig>,
    pub engine: EngineConfig,
    pub settle: SettleConfig,
    pub limits: Limits,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    /// How often Redis and the database are checked for health.
    pub health_interval: Duration,
    /// Restore Redis from the ledger by itself when it lost its state (see the README).
    pub redis_state_recovery: bool,
    /// The outage journal, when `journal_categories` names any (Redis engine only).
    pub journal: Option<JournalConfig>,
    /// How long to keep serving, NOT_SERVING, after a shutdown signal.
    pub shutdown_drain: Duration,
    /// How long a shutdown may take to finish calls and flush settlement (after the drain).
    pub shutdown_grace: Duration,
    /// How often the background sweep expires overdue holds and renews cycles.
    pub sweep_interval: Duration,
    /// How often accounts with alert thresholds are checked.
    pub alert_interval: Duration,
    /// Where alerts are posted, when anywhere.
    pub webhooks: Option<Webhooks>,
    pub rules: Rules,
    /// What the operator should hear about once logging is up (a misspelt variable, say).
    pub warnings: Vec<String>,
    /// How often the config file is re-read for a new price book and categories.
    pub rules_reload_interval: Duration,
    /// The config file and that interval, when a file was given.
    pub rules_reload: Option<(PathBuf, Duration)>,
}

/// A setting that cannot be used, and why; `source`: where its value came from, when known.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {setting}: {reason}{}", origin.as_ref().map_or(String::new(), |origin| format!(" (from {origin})")))]
pub struct ConfigError {
    setting: String,
    reason: String,
    origin: Option<String>,
}

impl ConfigError {
    fn new(setting: &str, reason: impl std::fmt::Display) -> Self {
        Self { setting: setting.to_owned(), reason: reason.to_string(), origin: None }
    }

    /// Names where the setting's value came from, when `sources` knows.
    fn sourced(mut self, sources: &BTreeMap<String, String>) -> Self {
        self.origin = sources.get(&self.setting).cloned();
        self
    }
}

/// The environment variable of a setting.
fn variable(setting: &str) -> String {
    format!("CREDIT_SIDECAR_{}", setting.to_ascii_uppercase())
}

/// The flag of a setting.
fn flag(setting: &str) -> String {
    format!("--{}", setting.replace('_', "-"))
}

/// The command line: [`Args`], with each setting's help written from [`settings::SETTINGS`].
pub fn command() -> clap::Command {
    let mut command = <Args as clap::CommandFactory>::command();
    for setting in &settings::SETTINGS {
        if command.get_arguments().any(|arg| arg.get_id() == setting.name) {
            command = command.mut_arg(setting.name, |arg| arg.help(setting.help()));
        }
    }
    // Each setting is a global flag, accepted by every subcommand; a subcommand that does not
    // use it gets a hidden copy, which clap's propagation keeps (it copies a global flag only
    // into subcommands that lack one of that name), and which its own subcommands inherit.
    let hidden: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| settings::SETTINGS.iter().any(|setting| arg.get_id() == setting.name))
        .map(|arg| arg.clone().hide(true))
        .collect();
    let names: Vec<String> = command.get_subcommands().map(|sub| sub.get_name().to_owned()).collect();
    for name in names {
        let Some(shown) = settings_shown(&name) else { continue };
        let unused = hidden.iter().filter(|arg| !shown.contains(&arg.get_id().as_str())).cloned();
        command = command.mut_subcommand(&name, |sub| sub.args(unused));
    }
    command
}

/// Parses the process's arguments (and `CREDIT_SIDECAR_*` variables); exits on bad ones. A value
/// clap cannot parse is reported under the variable it came from when no flag gave it (clap
/// itself would name the flag).
pub fn parse_args() -> Args {
    let matches = command().try_get_matches().unwrap_or_else(|error| exit_naming_the_variable(error));
    let mut args = <Args as clap::FromArgMatches>::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    for id in matches.ids() {
        let name = id.as_str();
        let source = match matches.value_source(name) {
            Some(clap::parser::ValueSource::EnvVariable) => variable(name),
            Some(clap::parser::ValueSource::CommandLine) => flag(name),
            _ => continue,
        };
        args.sources.insert(name.to_owned(), source);
    }
    args
}

fn exit_naming_the_variable(error: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if matches!(error.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation)
        && let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg)
        && let Some(setting) = settings::SETTINGS.iter().find(|setting| arg.starts_with(&flag(setting.name)))
        && !std::env::args()
            .any(|given| given == flag(setting.name) || given.starts_with(&format!("{}=", flag(setting.name))))
        && let Ok(value) = std::env::var(variable(setting.name))
    {
        let reason = match error.get(ContextKind::InvalidValue) {
            Some(ContextValue::String(_)) | None => format!("{value:?} is not a valid value"),
            Some(other) => format!("{value:?} is not a valid value ({other})"),
        };
        let error = ConfigError { setting: setting.name.to_owned(), reason, origin: Some(variable(setting.name)) };
        eprintln!("error: {error}");
        std::process::exit(2);
    }
    error.exit()
}

/// `CREDIT_SIDECAR_*` variables that name no setting: most likely misspelt, so ignored silently
/// they would leave a setting at its default.
fn unknown_variables() -> Vec<String> {
    let known: Vec<String> = settings::SETTINGS.iter().map(|setting| variable(setting.name)).collect();
    let mut unknown: Vec<String> = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("CREDIT_SIDECAR_") && name != "CREDIT_SIDECAR_CONFIG")
        .filter(|name| !known.contains(name) && !OPERATOR_VARIABLES.contains(&name.as_str()))
        .collect();
    unknown.sort();
    unknown
}

impl Config {
    /// Flags over the environment over the file over defaults.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let (settings, sources) = merged(args)?;
        let mut config = build(settings).map_err(|error| error.sourced(&sources))?;
        config.rules_reload = args.config.clone().map(|path| (path, config.rules_reload_interval));
        config.warnings = unknown_variables()
            .into_iter()
            .map(|name| format!("{name} names no setting and is ignored (misspelt? see --help)"))
            .collect();
        Ok(config)
    }

    /// Checks the configuration as [`Config::load`] would, without reading the files it names
    /// (tokens, TLS): they belong to the machine it will run on, so a configuration rendered
    /// elsewhere (a Helm chart's) can be checked. Their settings are checked in every other way.
    pub fn check(args: &Args) -> Result<(), ConfigError> {
        let (mut settings, sources) = merged(args)?;
        if let (Some(path), Some(true)) = (&settings.auth_tokens_file, settings.auth_disabled) {
            return Err(ConfigError::new(
                "auth_disabled",
                format!("contradicts auth_tokens_file = {}; set one of them", path.display()),
            ));
        }
        if settings.auth_tokens_file.take().is_some() {
            settings.auth_disabled = Some(true);
        }
        match (&settings.tls_cert_file, &settings.tls_key_file, &settings.tls_client_ca_file) {
            (Some(_), None, _) => return Err(ConfigError::new("tls_key_file", "is required with tls_cert_file")),
            (None, Some(_), _) => return Err(ConfigError::new("tls_cert_file", "is required with tls_key_file")),
            (None, None, Some(_)) => {
                return Err(ConfigError::new(
                    "tls_client_ca_file",
                    "needs tls_cert_file and tls_key_file (mTLS is TLS first)",
                ));
            }
            _ => (settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file) = (None, None, None),
        }
        if let Some(url) = settings.redis_url.as_deref().filter(|url| !url.is_empty()) {
            let urls: Vec<String> = url.split(',').map(|part| part.trim().to_owned()).collect();
            check_redis_tls(&settings, &urls).map_err(|error| error.sourced(&sources))?;
        }
        (settings.redis_ca_file, settings.redis_client_cert_file, settings.redis_client_key_file) = (None, None, None);
        (settings.redis_password_file, settings.database_password_file) = (None, None);
        webhooks(&settings, false).map_err(|error| error.sourced(&sources))?;
        if settings.redis_url.is_none()
            && (settings.journal_categories.is_some() || settings.fail_open_categories.is_some())
        {
            // The journal needs the Redis engine, whose URL a deployment often gives apart (the
            // chart: from a Secret, through the environment): checked in every other way.
            let rules = rules(&settings).map_err(|error| error.sourced(&sources))?;
            journal_settings(&settings, &rules).map_err(|error| error.sourced(&sources))?;
            (settings.journal_categories, settings.journal_path, settings.journal_entries_max) = (None, None, None);
            (settings.fail_open_categories, settings.fail_open_credits, settings.fail_open_ms) = (None, None, None);
        }
        (settings.webhook_urls, settings.webhook_secret_file, settings.webhook_attempts_max) = (None, None, None);
        if settings.otel_ca_file.take().is_some() && !settings.otel_endpoint.as_deref().is_some_and(is_https) {
            return Err(ConfigError::new("otel_ca_file", OTEL_CA_NEEDS_HTTPS).sourced(&sources));
        }
        build(settings).map(|_| ()).map_err(|error| error.sourced(&sources))
    }

    /// A configuration from TOML text alone (defaults for what it leaves out).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        build(parse_file(text)?)
    }
}

/// Where an operator command calls, resolved: its flags, then `CREDIT_SIDECAR_ADDRESS`,
/// `CREDIT_SIDECAR_TOKEN_FILE` / `CREDIT_SIDECAR_TOKEN`, `CREDIT_SIDECAR_CA_FILE`, then the
/// configuration: its `listen` (a wildcard address becomes loopback), over TLS when it sets
/// `tls_cert_file`. So in a sidecar's own container the commands need no flags at all.
pub fn connection(args: &Args, target: &Target) -> Result<Connection, ConfigError> {
    let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let ca_file = target.ca_file.clone().or_else(|| variable("CREDIT_SIDECAR_CA_FILE").map(PathBuf::from));
    let address = match target.address.clone().or_else(|| variable("CREDIT_SIDECAR_ADDRESS")) {
        Some(address) if address.starts_with("http://") || address.starts_with("https://") => address,
        // A CA to verify the sidecar with means TLS.
        Some(address) if ca_file.is_some() => format!("https://{address}"),
        Some(address) => format!("http://{address}"),
        None => {
            let (settings, sources) = merged(args)?;
            let listen = self::address("listen", settings::LISTEN.text(settings.listen.as_deref()))
                .map_err(|error| error.sourced(&sources))?;
            let host = match listen.ip() {
                std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
                std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_owned(),
                std::net::IpAddr::V4(ip) => ip.to_string(),
                std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            };
            let scheme = if settings.tls_cert_file.is_some() { "https" } else { "http" };
            format!("{scheme}://{host}:{}", listen.port())
        }
    };
    let token_file = target.token_file.clone().or_else(|| variable("CREDIT_SIDECAR_TOKEN_FILE").map(PathBuf::from));
    let token = match token_file {
        Some(path) => {
            let text = String::from_utf8(read("token_file", &path)?)
                .map_err(|_| ConfigError::new("token_file", format!("{} is not UTF-8", path.display())))?;
            let token = text.lines().next().unwrap_or_default().trim().to_owned();
            if token.is_empty() {
                return Err(ConfigError::new("token_file", format!("{} holds no token", path.display())));
            }
            Some(token)
        }
        None => variable("CREDIT_SIDECAR_TOKEN"),
    };
    let ca_pem = ca_file.map(|path| certificates("ca_file", read("ca_file", &path)?)).transpose()?;
    Ok(Connection { address, token, ca_pem, json: target.json })
}

/// The file's settings under the environment's and the flags', and where each came from.
fn merged(args: &Args) -> Result<(Settings, BTreeMap<String, String>), ConfigError> {
    let mut sources = BTreeMap::new();
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|error| ConfigError::new("config", format!("cannot read {}: {error}", path.display())))?;
            let file = parse_file(&text)?;
            for name in given(&file)? {
                sources.insert(name, format!("the config file {}", path.display()));
            }
            file
        }
        None => Settings::default(),
    };
    sources.extend(args.sources.clone());
    let mut overlay = args.settings.clone();
    // The conventional variables, below their CREDIT_SIDECAR_ forms (which clap has read).
    for (name, setting, slot) in [
        ("REDIS_URL", "redis_url", &mut overlay.redis_url),
        ("DATABASE_URL", "database_url", &mut overlay.database_url),
    ] {
        if slot.is_none() {
            *slot = std::env::var(name).ok().filter(|value| !value.is_empty());
            if slot.is_some() {
                sources.insert(setting.to_owned(), name.to_owned());
            }
        }
    }
    Ok((overlay_settings(file, overlay)?, sources))
}

/// The PostgreSQL URL with `password` (percent-encoded by the `url` crate) in its user info.
fn with_password(database_url: &str, password: &Secret) -> Result<String, ConfigError> {
    let refuse = |reason: &str| ConfigError::new("database_password_file", reason);
    if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
        return Err(refuse("is for PostgreSQL URLs (postgres://)"));
    }
    let mut url = url::Url::parse(database_url).map_err(|_| refuse("the database_url does not parse as a URL"))?;
    if url.password().is_some() {
        return Err(refuse("contradicts the password in database_url; set one of them"));
    }
    url.set_password(Some(&password.0)).map_err(|()| refuse("the database_url has no host to log in to"))?;
    Ok(url.into())
}

/// `database_ca_file` as the PostgreSQL URL's `sslrootcert` (and `sslmode=verify-full` unless
/// the URL names a mode): the standard parameters, so the URL alone says how it connects.
fn with_root_certificate(url: &str, ca: &std::path::Path) -> Result<String, ConfigError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(ConfigError::new("database_ca_file", "is for PostgreSQL URLs (postgres://)"));
    }
    if url.contains("sslrootcert=") {
        return Err(ConfigError::new("database_ca_file", "contradicts the URL's own sslrootcert; set one of them"));
    }
    let ca = ca
        .to_str()
        .filter(|path| !path.contains(['&', '#', '?', ' ']))
        .ok_or_else(|| ConfigError::new("database_ca_file", "must be a plain path (no spaces, &, # or ?)"))?;
    let separator = if url.contains('?') { '&' } else { '?' };
    let mode = if url.contains("sslmode=") { String::new() } else { "&sslmode=verify-full".to_owned() };
    Ok(format!("{url}{separator}sslrootcert={ca}{mode}"))
}

/// The settings `settings` gives a value.
fn given(settings: &Settings) -> Result<Vec<String>, ConfigError> {
    match serde_json::to_value(settings) {
        Ok(serde_json::Value::Object(map)) => {
            Ok(map.into_iter().filter(|(_, value)| !value.is_null()).map(|(key, _)| key).collect())
        }
        other => Err(ConfigError::new("config", format!("cannot read settings back: {other:?}"))),
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

fn address(setting: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|_| ConfigError::new(setting, format!("{text:?} is not an address like 127.0.0.1:50051")))
}

fn build(file: Settings) -> Result<Config, ConfigError> {
    let engine = engine(&file)?;
    let settle = settle(&file)?;
    let listen = address("listen", settings::LISTEN.text(file.listen.as_deref()))?;
    let metrics_listen = match settings::METRICS_LISTEN.text(file.metrics_listen.as_deref()) {
        "off" => None,
        text => Some(address("metrics_listen", text)?),
    };
    let log_format = match settings::LOG_FORMAT.text(file.log_format.as_deref()) {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => return Err(ConfigError::new("log_format", format!("must be text or json, got {other:?}"))),
    };
    let log_level = settings::LOG_LEVEL.text(file.log_level.as_deref()).to_owned();
    tracing_subscriber::EnvFilter::try_new(&log_level).map_err(|error| ConfigError::new("log_level", error))?;
    let traces = traces(&file)?;
    let limits = limits(&file)?;
    let auth = auth(&file, listen)?;
    let tls = tls(&file)?;
    let ms = Duration::from_millis;
    let health_interval = ms(settings::HEALTH_INTERVAL_MS.number(file.health_interval_ms)?);
    let shutdown_drain = ms(settings::SHUTDOWN_DRAIN_MS.number(file.shutdown_drain_ms)?);
    let shutdown_grace = ms(settings::SHUTDOWN_GRACE_MS.number(file.shutdown_grace_ms)?);
    let sweep_interval = ms(settings::SWEEP_INTERVAL_MS.number(file.sweep_interval_ms)?);
    let alert_interval = ms(settings::ALERT_INTERVAL_MS.number(file.alert_interval_ms)?);
    let webhooks = webhooks(&file, true)?;
    let rules = rules(&file)?;
    let journal = journal(&file, &engine, &rules)?;
    Ok(Config {
        listen,
        metrics_listen,
        log_format,
        log_level,
        traces,
        engine,
        settle,
        limits,
        auth,
        tls,
        health_interval,
        redis_state_recovery: match settings::REDIS_STATE_RECOVERY.text(file.redis_state_recovery.as_deref()) {
            "off" => false,
            "rebuild" => true,
            other => {
                return Err(ConfigError::new("redis_state_recovery", format!("must be off or rebuild, got {other:?}")));
            }
        },
        journal,
        shutdown_drain,
        shutdown_grace,
        sweep_interval,
        alert_interval,
        webhooks,
        rules,
        warnings: Vec::new(),
        rules_reload_interval: ms(settings::RULES_RELOAD_INTERVAL_MS.number(file.rules_reload_interval_ms)?),
        rules_reload: None,
    })
}

/// The webhooks alerts are posted to: on with `webhook_urls`, which needs `webhook_secret_file`
/// (read only when `read_secret`; `check-config` does not read the files it names).
fn webhooks(file: &Settings, read_secret: bool) -> Result<Option<Webhooks>, ConfigError> {
    let Some(urls) = file.webhook_urls.as_ref().filter(|urls| !urls.is_empty()) else {
        return match (&file.webhook_secret_file, &file.webhook_attempts_max) {
            (Some(_), _) => Err(ConfigError::new("webhook_secret_file", "does nothing without webhook_urls")),
            (_, Some(_)) => Err(ConfigError::new("webhook_attempts_max", "does nothing without webhook_urls")),
            _ => Ok(None),
        };
    };
    for (index, url) in urls.iter().enumerate() {
        if urls[..index].contains(url) {
            return Err(ConfigError::new("webhook_urls", format!("{} is listed twice", crate::alerts::origin(url))));
        }
        let parsed = url::Url::parse(url)
            .map_err(|_| ConfigError::new("webhook_urls", format!("{} is not a URL", crate::alerts::origin(url))))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ConfigError::new(
                "webhook_urls",
                format!("{} is not an http(s) URL", crate::alerts::origin(url)),
            ));
        }
    }
    let attempts_max = settings::WEBHOOK_ATTEMPTS_MAX.number(file.webhook_attempts_max)?;
    let Some(path) = &file.webhook_secret_file else {
        return Err(ConfigError::new("webhook_secret_file", "is required with webhook_urls (the signature's key)"));
    };
    let secret = if read_secret { password("webhook_secret_file", path)?.0.into_bytes() } else { Vec::new() };
    Ok(Some(Webhooks { urls: urls.clone(), secret, attempts_max, backoff: Duration::from_secs(1) }))
}

/// The outage journal: on when `journal_categories` lists any, with the Redis engine only (the
/// embedded engine has no outage to ride out); its other settings are refused without it.
fn journal(file: &Settings, engine: &EngineConfig, rules: &Rules) -> Result<Option<JournalConfig>, ConfigError> {
    let journal = journal_settings(file, rules)?;
    if let Some(journal) = &journal
        && matches!(engine, EngineConfig::Embedded)
    {
        let name = if journal.fail_open.is_some() { "fail_open_categories" } else { "journal_categories" };
        return Err(ConfigError::new(
            name,
            "needs the Redis engine (redis_url): the embedded engine has no outage to ride out",
        ));
    }
    Ok(journal)
}

/// Categories that are `rules`' own, or the error naming `setting`.
fn known_categories(setting: &'static str, categories: &BTreeSet<String>, rules: &Rules) -> Result<(), ConfigError> {
    match categories.iter().find(|category| !rules.categories.contains(*category)) {
        Some(unknown) => Err(ConfigError::new(
            setting,
            format!("{unknown:?} is not one of the categories ({})", join(&rules.categories)),
        )),
        None => Ok(()),
    }
}

/// Fail-open: on when `fail_open_categories` lists any; its other settings are refused without it.
fn fail_open_settings(file: &Settings, rules: &Rules) -> Result<Option<FailOpenConfig>, ConfigError> {
    let Some(categories) = file.fail_open_categories.as_ref().filter(|categories| !categories.is_empty()) else {
        return match (&file.fail_open_credits, &file.fail_open_ms) {
            (Some(_), _) => Err(ConfigError::new("fail_open_credits", "does nothing without fail_open_categories")),
            (_, Some(_)) => Err(ConfigError::new("fail_open_ms", "does nothing without fail_open_categories")),
            _ => Ok(None),
        };
    };
    known_categories("fail_open_categories", categories, rules)?;
    Ok(Some(FailOpenConfig {
        categories: categories.clone(),
        credits: settings::FAIL_OPEN_CREDITS.number(file.fail_open_credits)?,
        window: std::time::Duration::from_millis(settings::FAIL_OPEN_MS.number(file.fail_open_ms)?),
    }))
}

/// The journal's settings, checked on their own.
fn journal_settings(file: &Settings, rules: &Rules) -> Result<Option<JournalConfig>, ConfigError> {
    let fail_open = fail_open_settings(file, rules)?;
    // A fail-open category's commits are journaled too (its holds' calls go on during an outage).
    let mut categories = file.journal_categories.clone().unwrap_or_default();
    if let Some(fail_open) = &fail_open
        && !categories.contains("*")
    {
        categories.extend(fail_open.categories.iter().cloned());
    }
    let Some(categories) = Some(&categories).filter(|categories| !categories.is_empty()) else {
        return match (&file.journal_path, &file.journal_entries_max) {
            (Some(_), _) => Err(ConfigError::new("journal_path", "does nothing without journal_categories")),
            (_, Some(_)) => Err(ConfigError::new("journal_entries_max", "does nothing without journal_categories")),
            _ => Ok(None),
        };
    };
    let coverage = if categories.contains("*") {
        if categories.len() > 1 {
            return Err(ConfigError::new("journal_categories", "\"*\" stands for every category; list it alone"));
        }
        Coverage::All
    } else {
        known_categories("journal_categories", categories, rules)?;
        Coverage::Only(categories.clone())
    };
    let entries_max = settings::JOURNAL_ENTRIES_MAX.number(file.journal_entries_max)?;
    let path = file.journal_path.clone().unwrap_or_else(|| PathBuf::from(settings::JOURNAL_PATH.text(None)));
    Ok(Some(JournalConfig { path, coverage, entries_max, fail_open }))
}

fn join(names: &BTreeSet<String>) -> String {
    names.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// Trace export: on with `otel_endpoint`; its other settings are refused without it (they would
/// do nothing, silently).
fn traces(file: &Settings) -> Result<Option<TraceConfig>, ConfigError> {
    let endpoint = settings::OTEL_ENDPOINT.text(file.otel_endpoint.as_deref());
    if endpoint.is_empty() {
        let given = [
            ("otel_service_name", file.otel_service_name.is_some()),
            ("otel_sample_ratio", file.otel_sample_ratio.is_some()),
            ("otel_ca_file", file.otel_ca_file.is_some()),
        ];
        return match given.into_iter().find(|(_, given)| *given) {
            Some((name, _)) => Err(ConfigError::new(name, "does nothing without otel_endpoint; set both or neither")),
            None => Ok(None),
        };
    }
    if !matches!(endpoint.split_once("://"), Some(("http" | "https", rest)) if !rest.is_empty()) {
        return Err(ConfigError::new(
            "otel_endpoint",
            format!("{endpoint:?} is not an OTLP/gRPC endpoint like http://otel-collector:4317"),
        ));
    }
    let service_name = settings::OTEL_SERVICE_NAME.text(file.otel_service_name.as_deref());
    if service_name.trim().is_empty() {
        return Err(ConfigError::new("otel_service_name", "must not be empty"));
    }
    let sample_ratio = file.otel_sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        return Err(ConfigError::new("otel_sample_ratio", format!("must be in 0.0..=1.0, got {sample_ratio}")));
    }
    let ca_pem = match &file.otel_ca_file {
        Some(_) if !is_https(endpoint) => return Err(ConfigError::new("otel_ca_file", OTEL_CA_NEEDS_HTTPS)),
        Some(path) => Some(certificates("otel_ca_file", read("otel_ca_file", path)?)?),
        None => None,
    };
    Ok(Some(TraceConfig { endpoint: endpoint.to_owned(), service_name: service_name.to_owned(), sample_ratio, ca_pem }))
}

const OTEL_CA_NEEDS_HTTPS: &str = "needs an https:// otel_endpoint";

fn is_https(endpoint: &str) -> bool {
    endpoint.starts_with("https://")
}

/// The business rules: the file's categories and price book, the TTL, trial and retention
/// settings, each over its default; checked against each other.
fn rules(file: &Settings) -> Result<Rules, ConfigError> {
    let defaults = Rules::default();
    let rules = Rules {
        categories: file.categories.clone().unwrap_or(defaults.categories),
        price_book: file.price_book.clone().unwrap_or(defaults.price_book),
        reservation_ttl_default_ms: file.reservation_ttl_default_ms.unwrap_or(defaults.reservation_ttl_default_ms),
        reservation_ttl_min_ms: file.reservation_ttl_min_ms.unwrap_or(defaults.reservation_ttl_min_ms),
        reservation_ttl_max_ms: file.reservation_ttl_max_ms.unwrap_or(defaults.reservation_ttl_max_ms),
        trial_credits_default: file.trial_credits_default.unwrap_or(defaults.trial_credits_default),
        trial_duration_default_ms: file.trial_duration_default_ms.unwrap_or(defaults.trial_duration_default_ms),
        trial_duration_max_ms: defaults.trial_duration_max_ms,
        request_id_retention_ms: file.request_id_retention_ms.unwrap_or(defaults.request_id_retention_ms),
    };
    checked(rules)
}

/// The rules after the config file changed to `text`: its categories and price book (the
/// file-only rules) over `current`; the rest stays as started (changing it needs a restart).
pub fn reload_rules(text: &str, current: &Rules) -> Result<Rules, ConfigError> {
    let file = parse_file(text)?;
    let defaults = Rules::default();
    let rules = Rules {
        categories: file.categories.unwrap_or(defaults.categories),
        price_book: file.price_book.unwrap_or(defaults.price_book),
        ..current.clone()
    };
    checked(rules)
}

/// `rules`, if they are consistent; otherwise the error names the setting.
fn checked(rules: Rules) -> Result<Rules, ConfigError> {
    rules.validate().map_err(|message| match message.split_once(": ") {
        Some((setting, reason)) => ConfigError::new(setting, reason),
        None => ConfigError::new("rules", message),
    })?;
    Ok(rules)
}

/// The bounds on every call and connection (see [`Limits`]).
fn limits(file: &Settings) -> Result<Limits, ConfigError> {
    let ms = |setting: &Setting, given| setting.number(given).map(Duration::from_millis);
    Ok(Limits {
        call_timeout_max: ms(&settings::CALL_TIMEOUT_MAX_MS, file.call_timeout_max_ms)?,
        concurrency_max: settings::CONCURRENCY_MAX.number(file.concurrency_max)?,
        request_bytes_max: settings::REQUEST_BYTES_MAX.number(file.request_bytes_max)?,
        request_body_timeout: ms(&settings::REQUEST_BODY_TIMEOUT_MS, file.request_body_timeout_ms)?,
        connection_idle_max: ms(&settings::CONNECTION_IDLE_MAX_MS, file.connection_idle_max_ms)?,
        http2_keepalive_interval: ms(&settings::HTTP2_KEEPALIVE_INTERVAL_MS, file.http2_keepalive_interval_ms)?,
        http2_keepalive_timeout: ms(&settings::HTTP2_KEEPALIVE_TIMEOUT_MS, file.http2_keepalive_timeout_ms)?,
        tcp_keepalive: ms(&settings::TCP_KEEPALIVE_MS, file.tcp_keepalive_ms)?,
    })
}

/// Tokens when a file is given; otherwise off, but only on loopback or when asked for.
fn auth(file: &Settings, listen: SocketAddr) -> Result<AuthConfig, ConfigError> {
    let reload_ms = settings::AUTH_RELOAD_INTERVAL_MS.number(file.auth_reload_interval_ms)?;
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

/// The bytes of the file a setting names.
fn read(setting: &str, path: &PathBuf) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError::new(setting, format!("cannot read {}: {error}", path.display())))
}

/// `pem`, when it holds at least one PEM certificate and nothing unreadable.
fn certificates(setting: &str, pem: Vec<u8>) -> Result<Vec<u8>, ConfigError> {
    let parsed: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match parsed {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        Ok(_) => Err(ConfigError::new(setting, "holds no PEM certificate")),
        Err(error) => Err(ConfigError::new(setting, format!("not a PEM certificate chain: {error}"))),
    }
}

fn tls(file: &Settings) -> Result<Option<TlsConfig>, ConfigError> {
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
    let mut database_url = settings::DATABASE_URL.text(file.database_url.as_deref()).to_owned();
    if let Some(ca) = &file.database_ca_file {
        database_url = with_root_certificate(&database_url, ca)?;
    }
    if let Some(path) = &file.database_password_file {
        database_url = with_password(&database_url, &password("database_password_file", path)?)?;
    }
    if !["postgres://", "postgresql://", "sqlite:"].iter().any(|scheme| database_url.starts_with(scheme)) {
        return Err(ConfigError::new("database_url", "must start with postgres://, postgresql:// or sqlite:"));
    }
    Ok(SettleConfig {
        database_url,
        batch_max: settings::SETTLE_BATCH_MAX.number(file.settle_batch_max)?,
        writers: settings::SETTLE_WRITERS.number(file.settle_writers)?,
        claim_idle_ms: settings::SETTLE_CLAIM_IDLE_MS.number(file.settle_claim_idle_ms)?,
        outbox_memory_max: settings::OUTBOX_MEMORY_MAX.number(file.outbox_memory_max)?,
        sqlite_synchronous: match settings::SQLITE_SYNCHRONOUS.text(file.sqlite_synchronous.as_deref()) {
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
    let shards = settings::REDIS_SHARDS.number(file.redis_shards)?;
    let timeout_ms = settings::REDIS_TIMEOUT_MS.number(file.redis_timeout_ms)?;
    let key_prefix = file.redis_key_prefix.clone().unwrap_or_default();
    if key_prefix.len() > 64 || key_prefix.contains(['{', '}']) {
        return Err(ConfigError::new("redis_key_prefix", "at most 64 bytes, without braces"));
    }
    let timeout = Duration::from_millis(timeout_ms);
    let replicas = settings::REDIS_WAIT_REPLICAS.number(file.redis_wait_replicas)?;
    let wait_ms = settings::REDIS_WAIT_TIMEOUT_MS.number(file.redis_wait_timeout_ms)?;
    if replicas > 0 && cluster {
        return Err(ConfigError::new(
            "redis_wait_replicas",
            "is supported on a single Redis primary, not with redis_cluster",
        ));
    }
    let wait = (replicas > 0).then(|| WaitReplicas { replicas, timeout: Duration::from_millis(wait_ms) });
    let tls = redis_tls(file, &urls)?;
    let password = file.redis_password_file.as_ref().map(|path| password("redis_password_file", path)).transpose()?;
    Ok(EngineConfig::Redis(RedisSettings { urls, cluster, shards, key_prefix, timeout, wait, tls, password }))
}

/// A password kept in a file (a Kubernetes Secret's key): its first line.
fn password(setting: &str, path: &PathBuf) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigError::new(setting, format!("cannot read {}: {error}", path.display())))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(ConfigError::new(setting, format!("{} is empty", path.display())));
    }
    Ok(Secret(password.to_owned()))
}

/// The TLS material of `rediss://` connections, read from the files the settings name.
fn redis_tls(file: &Settings, urls: &[String]) -> Result<RedisTls, ConfigError> {
    check_redis_tls(file, urls)?;
    let ca_pem = file.redis_ca_file.as_ref().map(|path| read("redis_ca_file", path)).transpose()?;
    let client_pem = match (&file.redis_client_cert_file, &file.redis_client_key_file) {
        (Some(cert), Some(key)) => Some((read("redis_client_cert_file", cert)?, read("redis_client_key_file", key)?)),
        _ => None,
    };
    Ok(RedisTls { ca_pem, client_pem })
}

/// The Redis TLS settings make sense together (without reading their files).
fn check_redis_tls(file: &Settings, urls: &[String]) -> Result<(), ConfigError> {
    let any_tls = file.redis_ca_file.is_some() || file.redis_client_cert_file.is_some();
    if any_tls && !urls.iter().all(|url| url.starts_with("rediss://")) {
        return Err(ConfigError::new("redis_url", "TLS files are set: the URL must be rediss://"));
    }
    match (&file.redis_client_cert_file, &file.redis_client_key_file) {
        (Some(_), None) => Err(ConfigError::new("redis_client_key_file", "is required with redis_client_cert_file")),
        (None, Some(_)) => Err(ConfigError::new("redis_client_cert_file", "is required with redis_client_key_file")),
        _ => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_ca_and_password_files_refuse_what_they_cannot_mean() {
        let dir = std::env::temp_dir().join(format!("credit-sidecar-db-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("password");
        std::fs::write(&password, "p@ss\n").unwrap();
        let empty = dir.join("empty");
        std::fs::write(&empty, "").unwrap();
        let error = |text: String| Config::from_toml(&text).unwrap_err().to_string();
        let pg = "postgres://worker@db:5432/credits";
        let cases = [
            (
                "database_url = \"sqlite://x.db\"\ndatabase_ca_file = \"/ca.pem\"".to_owned(),
                "database_ca_file: is for PostgreSQL",
            ),
            (
                format!("database_url = \"{pg}?sslrootcert=/a.pem\"\ndatabase_ca_file = \"/ca.pem\""),
                "database_ca_file: contradicts",
            ),
            (
                format!("database_url = \"{pg}\"\ndatabase_ca_file = \"/my ca.pem\""),
                "database_ca_file: must be a plain path",
            ),
            (
                format!("database_url = \"sqlite://x.db\"\ndatabase_password_file = \"{}\"", password.display()),
                "database_password_file: is for PostgreSQL",
            ),
            (
                format!("database_url = \"postgres://w:pw@db/c\"\ndatabase_password_file = \"{}\"", password.display()),
                "database_password_file: contradicts",
            ),
            (
                format!("database_url = \"{pg}\"\ndatabase_password_file = \"{}\"", empty.display()),
                "database_password_file: ",
            ),
        ];
        for (text, expected) in cases {
            let message = error(text.clone());
            assert!(message.starts_with(&format!("configuration: {expected}")), "{text}: {message}");
        }
        // A mode the URL names is kept; the password is percent-encoded.
        let text = format!(
            "database_url = \"{pg}?sslmode=verify-ca\"\ndatabase_ca_file = \"/ca.pem\"\ndatabase_password_file = \"{}\"",
            password.display()
        );
        let url = Config::from_toml(&text).unwrap().settle.database_url;
        assert_eq!(url, "postgres://worker:p%40ss@db:5432/credits?sslmode=verify-ca&sslrootcert=/ca.pem");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn traces_are_off_by_default_and_their_settings_are_checked() {
        assert_eq!(Config::from_toml("").unwrap().traces, None);
        let config = Config::from_toml("otel_endpoint = \"http://collector:4317\"\notel_sample_ratio = 0.25").unwrap();
        let expected = TraceConfig {
            endpoint: "http://collector:4317".into(),
            service_name: "credit-sidecar".into(),
            sample_ratio: 0.25,
            ca_pem: None,
        };
        assert_eq!(config.traces, Some(expected));
        let table = [
            ("otel_endpoint = \"collector:4317\"", "otel_endpoint: \"collector:4317\" is not an OTLP/gRPC endpoint"),
            ("otel_endpoint = \"ftp://collector\"", "otel_endpoint: "),
            ("otel_sample_ratio = 0.5", "otel_sample_ratio: does nothing without otel_endpoint"),
            ("otel_service_name = \"x\"", "otel_service_name: does nothing without otel_endpoint"),
            ("otel_endpoint = \"http://c:4317\"\notel_sample_ratio = 1.5", "otel_sample_ratio: must be in 0.0..=1.0"),
            ("otel_endpoint = \"http://c:4317\"\notel_service_name = \" \"", "otel_service_name: must not be empty"),
            ("otel_endpoint = \"http://c:4317\"\notel_ca_file = \"/ca.pem\"", "otel_ca_file: needs an https://"),
            ("otel_endpoint = \"https://c:4317\"\notel_ca_file = \"/no/such/ca.pem\"", "otel_ca_file: cannot read"),
        ];
        for (text, expected) in table {
            let message = Config::from_toml(text).unwrap_err().to_string();
            assert!(message.starts_with(&format!("configuration: {expected}")), "{text}: {message}");
        }
    }

    #[test]
    fn the_outage_journal_is_off_by_default_and_its_settings_are_checked() {
        assert!(Config::from_toml("").unwrap().journal.is_none());
        let redis = "redis_url = \"redis://127.0.0.1:6379/\"\n";
        let config = Config::from_toml(&format!("{redis}journal_categories = [\"dialer\", \"ai\"]")).unwrap();
        let journal = config.journal.unwrap();
        assert_eq!(journal.coverage, Coverage::Only(["ai".to_owned(), "dialer".to_owned()].into()));
        assert_eq!((journal.path, journal.entries_max), (PathBuf::from("credit-sidecar-journal.db"), 10_000));
        let all =
            format!("{redis}journal_categories = [\"*\"]\njournal_path = \"/data/j.db\"\njournal_entries_max = 5");
        let journal = Config::from_toml(&all).unwrap().journal.unwrap();
        assert_eq!((journal.coverage, journal.path, journal.entries_max), (Coverage::All, "/data/j.db".into(), 5));
        assert!(Config::from_toml(&format!("{redis}journal_categories = []")).unwrap().journal.is_none());
        let table = [
            ("journal_categories = [\"dialer\"]".to_owned(), "journal_categories: needs the Redis engine"),
            (format!("{redis}journal_categories = [\"dialr\"]"), "journal_categories: \"dialr\" is not one of"),
            (format!("{redis}journal_categories = [\"*\", \"ai\"]"), "journal_categories: \"*\" stands for every"),
            (format!("{redis}journal_path = \"j.db\""), "journal_path: does nothing without journal_categories"),
            (format!("{redis}journal_entries_max = 3"), "journal_entries_max: does nothing without"),
            (format!("{redis}journal_entries_max = 0"), "journal_entries_max: does nothing without"),
            (
                format!("{redis}journal_categories = [\"ai\"]\njournal_entries_max = 0"),
                "journal_entries_max: must be in",
            ),
        ];
        for (text, expected) in table {
            let message = Config::from_toml(&text).unwrap_err().to_string();
            assert!(message.starts_with(&format!("configuration: {expected}")), "{text}: {message}");
        }
    }

    #[test]
    fn fail_open_is_off_by_default_turns_the_journal_on_and_its_settings_are_checked() {
        let redis = "redis_url = \"redis://127.0.0.1:6379/\"\n";
        assert!(Config::from_toml(redis).unwrap().journal.is_none());
        // Its categories' commits are journaled too, beside the journal's own.
        let text = format!("{redis}journal_categories = [\"ai\"]\nfail_open_categories = [\"dialer\"]");
        let journal = Config::from_toml(&text).unwrap().journal.unwrap();
        assert_eq!(journal.coverage, Coverage::Only(["ai".to_owned(), "dialer".to_owned()].into()));
        let fail_open = journal.fail_open.unwrap();
        assert_eq!(fail_open.categories, ["dialer".to_owned()].into());
        assert_eq!((fail_open.credits, fail_open.window), (100, std::time::Duration::from_secs(300)));
        let text = format!("{redis}fail_open_categories = [\"dialer\"]\nfail_open_credits = 7\nfail_open_ms = 2000");
        let journal = Config::from_toml(&text).unwrap().journal.unwrap();
        assert_eq!(journal.coverage, Coverage::Only(["dialer".to_owned()].into()));
        let fail_open = journal.fail_open.unwrap();
        assert_eq!((fail_open.credits, fail_open.window), (7, std::time::Duration::from_secs(2)));
        let all = format!("{redis}journal_categories = [\"*\"]\nfail_open_categories = [\"dialer\"]");
        assert_eq!(Config::from_toml(&all).unwrap().journal.unwrap().coverage, Coverage::All);
        let table = [
            ("fail_open_categories = [\"dialer\"]".to_owned(), "fail_open_categories: needs the Redis engine"),
            (format!("{redis}fail_open_categories = [\"dialr\"]"), "fail_open_categories: \"dialr\" is not one of"),
            (format!("{redis}fail_open_credits = 5"), "fail_open_credits: does nothing without fail_open_categories"),
            (format!("{redis}fail_open_ms = 5000"), "fail_open_ms: does nothing without fail_open_categories"),
            (
                format!("{redis}fail_open_categories = [\"dialer\"]\nfail_open_credits = 0"),
                "fail_open_credits: must be in",
            ),
            (format!("{redis}fail_open_categories = [\"dialer\"]\nfail_open_ms = 10"), "fail_open_ms: must be in"),
        ];
        for (text, expected) in table {
            let message = Config::from_toml(&text).unwrap_err().to_string();
            assert!(message.starts_with(&format!("configuration: {expected}")), "{text}: {message}");
        }
    }

    #[test]
    fn webhooks_are_off_by_default_and_their_settings_are_checked() {
        assert!(Config::from_toml("").unwrap().webhooks.is_none());
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "whsec-1\nignored\n").unwrap();
        let text = format!(
            "webhook_urls = [\"https://hooks.example.com/a/b\", \"http://127.0.0.1:8080/x\"]\n\
             webhook_secret_file = {:?}\nwebhook_attempts_max = 5",
            secret.display().to_string()
        );
        let hooks = Config::from_toml(&text).unwrap().webhooks.unwrap();
        assert_eq!((hooks.urls.len(), hooks.secret.as_slice(), hooks.attempts_max), (2, &b"whsec-1"[..], 5));
        let debug = format!("{hooks:?}");
        assert!(!debug.contains("whsec") && !debug.contains("/a/b"), "{debug}");
        let table = [
            ("webhook_urls = [\"https://h/x\"]".to_owned(), "webhook_secret_file: is required with webhook_urls"),
            ("webhook_secret_file = \"/s\"".to_owned(), "webhook_secret_file: does nothing without webhook_urls"),
            ("webhook_attempts_max = 3".to_owned(), "webhook_attempts_max: does nothing without"),
            (
                "webhook_urls = [\"https://h/x\", \"https://h/x\"]\nwebhook_secret_file = \"/s\"".to_owned(),
                "webhook_urls: https://h/… is listed twice",
            ),
            ("webhook_urls = [\"ftp://h/x\"]\nwebhook_secret_file = \"/s\"".to_owned(), "webhook_urls: "),
            ("webhook_urls = [\"nope\"]\nwebhook_secret_file = \"/s\"".to_owned(), "webhook_urls: <not a URL> is not"),
            (
                "webhook_urls = [\"https://h/x\"]\nwebhook_secret_file = \"/no/such\"".to_owned(),
                "webhook_secret_file: cannot read",
            ),
            (
                format!(
                    "webhook_urls = [\"https://h/x\"]\nwebhook_secret_file = {:?}\nwebhook_attempts_max = 0",
                    secret.display().to_string()
                ),
                "webhook_attempts_max: must be in 1..=100",
            ),
        ];
        for (text, expected) in table {
            let message = Config::from_toml(&text).unwrap_err().to_string();
            assert!(message.starts_with(&format!("configuration: {expected}")), "{text}: {message}");
        }
    }

    #[test]
    fn defaults_serve_on_loopback() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.listen.to_string(), settings::LISTEN.text(None));
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
            ("rules_reload_interval_ms = 1", "rules_reload_interval_ms: must be in 10..=3600000 ms"),
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
        assert_eq!(
            (settings.shards, settings.cluster, settings.urls.len()),
            (crate::engine::redis::SHARDS_DEFAULT, false, 1)
        );
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
