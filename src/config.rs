//! The one place that reads configuration: command-line flags and an optional TOML file (flags
//! win). Parsed once into typed values and validated before any port is bound; every error names
//! the setting. Tests build a [`Config`] from a TOML string.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Deserialize;

use crate::engine::redis::{RedisSettings, SHARDS_DEFAULT, SHARDS_MAX};
use crate::ledger::Rules;

/// Credit-authorization sidecar: holds, commits and releases a team's credits over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// A TOML configuration file (see README "Configuration").
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address the gRPC server listens on [default: 127.0.0.1:50051].
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Redis URL (`redis://host:6379/`); with --redis-cluster, comma-separated seed nodes.
    /// Without one the embedded engine runs.
    #[arg(long, global = true, env = "REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// Treat --redis-url as the seed nodes of a Redis Cluster.
    #[arg(long, global = true)]
    pub redis_cluster: bool,
    /// Where events settle: `postgres://…` or `sqlite://file.db` [default: a SQLite file
    /// `credit-sidecar.db` in the working directory].
    #[arg(long, global = true, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
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
    },
}

/// The file's shape; every field optional, unknown fields refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    sweep_interval_ms: Option<u64>,
    redis_url: Option<String>,
    redis_cluster: Option<bool>,
    redis_shards: Option<u32>,
    redis_timeout_ms: Option<u64>,
    redis_key_prefix: Option<String>,
    database_url: Option<String>,
    settle_batch_max: Option<usize>,
    settle_claim_idle_ms: Option<u64>,
    outbox_memory_max: Option<usize>,
    shutdown_grace_ms: Option<u64>,
    categories: Option<BTreeSet<String>>,
    price_book: Option<BTreeMap<String, i64>>,
    reservation_ttl_default_ms: Option<i64>,
    reservation_ttl_min_ms: Option<i64>,
    reservation_ttl_max_ms: Option<i64>,
    trial_credits_default: Option<i64>,
    trial_duration_default_ms: Option<i64>,
    request_id_retention_ms: Option<i64>,
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
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub engine: EngineConfig,
    pub settle: SettleConfig,
    /// How long a shutdown may take to finish calls and flush settlement.
    pub shutdown_grace_ms: u64,
    /// How often the background sweep expires overdue holds and renews cycles.
    pub sweep_interval_ms: u64,
    pub rules: Rules,
}

pub const LISTEN_DEFAULT: &str = "127.0.0.1:50051";
pub const SWEEP_INTERVAL_DEFAULT_MS: u64 = 1_000;
pub const REDIS_TIMEOUT_DEFAULT_MS: u64 = 1_000;
pub const DATABASE_URL_DEFAULT: &str = "sqlite://credit-sidecar.db?mode=rwc";

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(String);

impl Config {
    /// Flags over the file over defaults.
    pub fn load(args: &Args) -> Result<Self, ConfigError> {
        let text = match &args.config {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|error| ConfigError(format!("config: cannot read {}: {error}", path.display())))?,
            None => String::new(),
        };
        let mut file = parse_file(&text)?;
        if let Some(listen) = &args.listen {
            file.listen = Some(listen.clone());
        }
        if let Some(url) = &args.redis_url {
            file.redis_url = Some(url.clone());
        }
        if args.redis_cluster {
            file.redis_cluster = Some(true);
        }
        if let Some(url) = &args.database_url {
            file.database_url = Some(url.clone());
        }
        build(file)
    }

    /// A configuration from TOML text alone (defaults for what it leaves out).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        build(parse_file(text)?)
    }
}

fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|error| ConfigError(format!("config file: {error}")))
}

fn build(file: FileConfig) -> Result<Config, ConfigError> {
    let engine = engine(&file)?;
    let settle = settle(&file)?;
    let shutdown_grace_ms = file.shutdown_grace_ms.unwrap_or(10_000);
    if !(100..=600_000).contains(&shutdown_grace_ms) {
        return Err(ConfigError("shutdown_grace_ms: must be in 100..=600000".into()));
    }
    let listen_text = file.listen.unwrap_or_else(|| LISTEN_DEFAULT.to_owned());
    let listen = listen_text
        .parse()
        .map_err(|_| ConfigError(format!("listen: {listen_text:?} is not an address like 127.0.0.1:50051")))?;
    let sweep_interval_ms = file.sweep_interval_ms.unwrap_or(SWEEP_INTERVAL_DEFAULT_MS);
    if !(10..=60_000).contains(&sweep_interval_ms) {
        return Err(ConfigError("sweep_interval_ms: must be in 10..=60000".into()));
    }
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
    Ok(Config { listen, engine, settle, shutdown_grace_ms, sweep_interval_ms, rules })
}

fn settle(file: &FileConfig) -> Result<SettleConfig, ConfigError> {
    let database_url = file.database_url.clone().unwrap_or_else(|| DATABASE_URL_DEFAULT.to_owned());
    if !["postgres://", "postgresql://", "sqlite:"].iter().any(|scheme| database_url.starts_with(scheme)) {
        return Err(ConfigError("database_url: must start with postgres://, postgresql:// or sqlite:".into()));
    }
    let batch_max = file.settle_batch_max.unwrap_or(1_000);
    if !(1..=10_000).contains(&batch_max) {
        return Err(ConfigError("settle_batch_max: must be in 1..=10000".into()));
    }
    let claim_idle_ms = file.settle_claim_idle_ms.unwrap_or(30_000);
    if !(100..=3_600_000).contains(&claim_idle_ms) {
        return Err(ConfigError("settle_claim_idle_ms: must be in 100..=3600000".into()));
    }
    let outbox_memory_max = file.outbox_memory_max.unwrap_or(100_000);
    if !(1_000..=10_000_000).contains(&outbox_memory_max) {
        return Err(ConfigError("outbox_memory_max: must be in 1000..=10000000".into()));
    }
    Ok(SettleConfig { database_url, batch_max, claim_idle_ms, outbox_memory_max })
}

fn engine(file: &FileConfig) -> Result<EngineConfig, ConfigError> {
    let Some(url) = file.redis_url.as_deref().filter(|url| !url.is_empty()) else {
        return Ok(EngineConfig::Embedded);
    };
    let cluster = file.redis_cluster.unwrap_or(false);
    let urls: Vec<String> = url.split(',').map(|part| part.trim().to_owned()).collect();
    if urls.len() > 1 && !cluster {
        return Err(ConfigError("redis_url: several URLs need redis_cluster = true".into()));
    }
    for url in &urls {
        redis::parse_redis_url(url)
            .ok_or_else(|| ConfigError(format!("redis_url: {url:?} is not a redis:// or rediss:// URL")))?;
    }
    let shards = file.redis_shards.unwrap_or(SHARDS_DEFAULT);
    if !(1..=SHARDS_MAX).contains(&shards) {
        return Err(ConfigError(format!("redis_shards: must be in 1..={SHARDS_MAX}")));
    }
    let timeout_ms = file.redis_timeout_ms.unwrap_or(REDIS_TIMEOUT_DEFAULT_MS);
    if !(10..=60_000).contains(&timeout_ms) {
        return Err(ConfigError("redis_timeout_ms: must be in 10..=60000".into()));
    }
    let key_prefix = file.redis_key_prefix.clone().unwrap_or_default();
    if key_prefix.len() > 64 || key_prefix.contains(['{', '}']) {
        return Err(ConfigError("redis_key_prefix: at most 64 bytes, without braces".into()));
    }
    let timeout = Duration::from_millis(timeout_ms);
    Ok(EngineConfig::Redis(RedisSettings { urls, cluster, shards, key_prefix, timeout }))
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
        ];
        for (text, expected) in table {
            let error = Config::from_toml(text).unwrap_err().to_string();
            assert!(error.starts_with(&format!("configuration: {expected}")), "{text}: {error}");
        }
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
