//! Every setting in one table: its name (in the file; the flag `--foo-bar` and the variable
//! `CREDIT_SIDECAR_FOO_BAR` derive from it), its default, its range and unit, and what it means.
//! [`super::build`] reads numbers through these entries, the flags' `--help` is written from them,
//! and tests hold the README's configuration table and the Helm chart's values schema to them.
//! A default that belongs to another module (a batch size, a rule) is that module's constant,
//! named here.

use std::fmt::Display;

use super::ConfigError;
use crate::engine::redis::{SHARDS_DEFAULT, SHARDS_MAX};
use crate::ledger::rules;
use crate::settle::settler::{SETTLE_BATCH_MAX_DEFAULT, SETTLE_WRITERS_DEFAULT, SETTLE_WRITERS_MAX};

/// One setting.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    pub name: &'static str,
    pub default: Default,
    /// Inclusive bounds of a number checked on its own (rules are checked against each other).
    pub range: Option<(i64, i64)>,
    /// `ms`, `bytes`, … ("" for none).
    pub unit: &'static str,
    /// What it does, in a sentence or two (Markdown links allowed: `--help` shows their text).
    pub meaning: &'static str,
}

/// A setting's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Default {
    Number(i64),
    /// Text, as written in the file.
    Text(&'static str),
    /// No value; what that means.
    Nothing(&'static str),
}

impl Setting {
    /// The number given, or the default; refused outside the range.
    pub fn number<T>(&self, given: Option<T>) -> Result<T, ConfigError>
    where
        T: Copy + Display + TryInto<i64> + TryFrom<i64>,
    {
        let (Default::Number(default), Some((min, max))) = (self.default, self.range) else {
            unreachable!("{} is not a number with a range (see the table's test)", self.name);
        };
        let out_of_range = |shown: &dyn Display| {
            ConfigError::new(self.name, format!("must be in {min}..={max}{}, got {shown}", self.unit_suffix()))
        };
        let value = match given {
            Some(given) => given.try_into().map_err(|_| out_of_range(&given))?,
            None => default,
        };
        if !(min..=max).contains(&value) {
            return Err(out_of_range(&value));
        }
        T::try_from(value).map_err(|_| out_of_range(&value))
    }

    /// The default of a number setting (0 for others).
    pub const fn default_number(&self) -> i64 {
        match self.default {
            Default::Number(number) => number,
            _ => 0,
        }
    }

    /// The text given, or the default text ("" when there is none).
    pub fn text<'a>(&self, given: Option<&'a str>) -> &'a str {
        match (given, self.default) {
            (Some(given), _) => given,
            (None, Default::Text(default)) => default,
            (None, _) => "",
        }
    }

    fn unit_suffix(&self) -> String {
        if self.unit.is_empty() { String::new() } else { format!(" {}", self.unit) }
    }

    /// The flag's help: the meaning (links as their text), the default and the range.
    pub fn help(&self) -> String {
        let mut help = strip_links(self.meaning);
        let default = match self.default {
            Default::Number(number) => format!("{number}{}", self.unit_suffix()),
            Default::Text(text) => text.to_owned(),
            Default::Nothing(what) => what.to_owned(),
        };
        help.push_str(&format!(" [default: {default}]"));
        if let Some((min, max)) = self.range {
            help.push_str(&format!(" [range: {min}..={max}]"));
        }
        help
    }

    /// The setting's row of the README's configuration table.
    pub fn markdown_row(&self) -> String {
        let default = match self.default {
            Default::Number(number) => format!("`{number}`"),
            Default::Text("") => "empty".to_owned(),
            Default::Text(text) => format!("`{text}`"),
            Default::Nothing(what) => what.to_owned(),
        };
        let range = self.range.map_or(String::new(), |(min, max)| format!("{min}..={max}"));
        format!("| `{}` | {default} | {range} | {} | {} |", self.name, self.unit, self.meaning)
    }
}

/// `[text](target)` → `text`.
fn strip_links(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|at| open + at) else { break };
        let Some(end) = rest[close..].find(')').map(|at| close + at) else { break };
        out.push_str(&rest[..open]);
        out.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

const fn number(
    name: &'static str,
    default: i64,
    min: i64,
    max: i64,
    unit: &'static str,
    meaning: &'static str,
) -> Setting {
    Setting { name, default: Default::Number(default), range: Some((min, max)), unit, meaning }
}

const fn text(name: &'static str, default: Default, meaning: &'static str) -> Setting {
    Setting { name, default, range: None, unit: "", meaning }
}

pub const LISTEN: Setting = text("listen", Default::Text("127.0.0.1:50051"), "gRPC address");
pub const METRICS_LISTEN: Setting = text(
    "metrics_listen",
    Default::Text("127.0.0.1:9464"),
    "HTTP address of `/metrics`, `/livez`, `/readyz`; `off` disables it",
);
pub const LOG_FORMAT: Setting = text(
    "log_format",
    Default::Text("text"),
    "`text`, or `json` (one object per line on stdout; stderr for `verify`, `rebuild`)",
);
pub const LOG_LEVEL: Setting =
    text("log_level", Default::Text("info"), "a `tracing` filter: `info`, `credit_sidecar=debug,info`, …");
pub const OTEL_ENDPOINT: Setting = text(
    "otel_endpoint",
    Default::Nothing("none: no traces"),
    "OTLP/gRPC collector to export traces to, `http://otel-collector:4317` or `https://…` (README \"Traces\")",
);
pub const OTEL_SERVICE_NAME: Setting =
    text("otel_service_name", Default::Text("credit-sidecar"), "the traces' `service.name`");
pub const OTEL_SAMPLE_RATIO: Setting = text(
    "otel_sample_ratio",
    Default::Text("1.0"),
    "share of new traces kept, 0.0–1.0; a call in a caller's trace follows the caller's sampling decision",
);
pub const OTEL_CA_FILE: Setting = text(
    "otel_ca_file",
    Default::Nothing("none: the system's roots"),
    "PEM CA bundle that signs an `https://` collector's certificate",
);
pub const REDIS_URL: Setting = text(
    "redis_url",
    Default::Nothing("none: embedded engine"),
    "`redis://host:6379/` selects the Redis engine; with `redis_cluster`, comma-separated seed nodes; also read \
     from `REDIS_URL`",
);
pub const REDIS_CLUSTER: Setting = text("redis_cluster", Default::Text("false"), "connect to a Redis Cluster");
pub const REDIS_SHARDS: Setting = number(
    "redis_shards",
    SHARDS_DEFAULT as i64,
    1,
    SHARDS_MAX as i64,
    "",
    "shards accounts are spread over (one outbox stream each); **fixed at first deployment**, checked at start",
);
pub const REDIS_TIMEOUT_MS: Setting = number(
    "redis_timeout_ms",
    500,
    10,
    60_000,
    "ms",
    "the longest one Redis round trip may take before the call answers `UNAVAILABLE`",
);
pub const REDIS_KEY_PREFIX: Setting = text(
    "redis_key_prefix",
    Default::Text(""),
    "prepended to every key, so deployments can share a Redis (at most 64 bytes, no braces)",
);
pub const REDIS_PASSWORD_FILE: Setting = text(
    "redis_password_file",
    Default::Nothing("none: the URL's"),
    "a file whose first line is the Redis password (of the URL's user, or `default`): a mounted Secret, so the \
     password is on no command line",
);
pub const REDIS_CA_FILE: Setting = text(
    "redis_ca_file",
    Default::Nothing("none: the system's roots"),
    "PEM CA bundle that signs the Redis server's certificate (`rediss://` URLs; Redis Cluster too)",
);
pub const REDIS_CLIENT_CERT_FILE: Setting = text(
    "redis_client_cert_file",
    Default::Nothing("none"),
    "PEM client certificate for Redis's `tls-auth-clients`; with `redis_client_key_file`",
);
pub const REDIS_CLIENT_KEY_FILE: Setting =
    text("redis_client_key_file", Default::Nothing("none"), "PEM private key of `redis_client_cert_file`");
pub const REDIS_WAIT_REPLICAS: Setting = number(
    "redis_wait_replicas",
    0,
    0,
    16,
    "",
    "replicas every state change must reach (Redis `WAIT`) before it is answered; single primary only \
     ([persistence](#redis-production))",
);
pub const REDIS_WAIT_TIMEOUT_MS: Setting = number(
    "redis_wait_timeout_ms",
    500,
    1,
    60_000,
    "ms",
    "how long a change waits for those replicas before answering `UNAVAILABLE`",
);
pub const REDIS_STATE_RECOVERY: Setting = text(
    "redis_state_recovery",
    Default::Text("off"),
    "when Redis lost its state: `off` refuses calls until `rebuild`; `rebuild` restores it from the ledger by \
     itself ([When Redis loses its state](#when-redis-loses-its-state))",
);
pub const JOURNAL_CATEGORIES: Setting = text(
    "journal_categories",
    Default::Nothing("none (off)"),
    "Redis engine: categories whose Commits are journaled on disk while Redis is unreachable and applied when \
     it answers, `[\"*\"]` for all (file only; [Outage journal](#outage-journal))",
);
pub const JOURNAL_PATH: Setting = text(
    "journal_path",
    Default::Text("credit-sidecar-journal.db"),
    "the outage journal's SQLite file (on a volume that outlives the container)",
);
pub const JOURNAL_ENTRIES_MAX: Setting = number(
    "journal_entries_max",
    10_000,
    1,
    1_000_000,
    "commits",
    "commits the outage journal holds at most; beyond, Commits fail `UNAVAILABLE` as without a journal",
);
pub const FAIL_OPEN_CATEGORIES: Setting = text(
    "fail_open_categories",
    Default::Nothing("none (off)"),
    "Redis engine: categories whose Reserves and Extends are admitted from a local allowance while Redis is \
     unreachable, and charged (with an overdraft if need be) when it answers; their Commits are journaled (file \
     only; [Fail-open categories](#fail-open-categories))",
);
pub const FAIL_OPEN_CREDITS: Setting = number(
    "fail_open_credits",
    100,
    1,
    1_000_000_000_000,
    "credits",
    "the allowance: credits this sidecar admits per account while Redis is unreachable (held by holds not yet \
     charged to Redis)",
);
pub const FAIL_OPEN_MS: Setting = number(
    "fail_open_ms",
    300_000,
    1_000,
    86_400_000,
    "ms",
    "how long an outage is ridden out: Reserves and takeovers this long after the sidecar's first admission \
     attempt of the outage, and a hold's Extends this long after its admission, fail closed again",
);
pub const DATABASE_URL: Setting = text(
    "database_url",
    Default::Text("sqlite://credit-sidecar.db?mode=rwc"),
    "where events settle: `postgres://…` or `sqlite:…`; also read from `DATABASE_URL`",
);
pub const DATABASE_PASSWORD_FILE: Setting = text(
    "database_password_file",
    Default::Nothing("none: the URL's"),
    "a file whose first line is the PostgreSQL password of the URL's user (a mounted Secret)",
);
pub const DATABASE_CA_FILE: Setting = text(
    "database_ca_file",
    Default::Nothing("none"),
    "PEM CA that signs the PostgreSQL server's certificate: the URL's `sslrootcert`, with `sslmode=verify-full` \
     unless the URL names a mode",
);
pub const SETTLE_BATCH_MAX: Setting = number(
    "settle_batch_max",
    SETTLE_BATCH_MAX_DEFAULT as i64,
    1,
    10_000,
    "events",
    "most events per SQL transaction (large batches are what lets SQLite keep up)",
);
pub const SETTLE_WRITERS: Setting = number(
    "settle_writers",
    SETTLE_WRITERS_DEFAULT as i64,
    1,
    SETTLE_WRITERS_MAX as i64,
    "batches",
    "Redis engine into PostgreSQL: batches written at once, each in its own transaction and connection (of 8: \
     two stay for ledger reads), while the next is read (SQLite and the embedded engine write one at a time)",
);
pub const SETTLE_CLAIM_IDLE_MS: Setting = number(
    "settle_claim_idle_ms",
    30_000,
    100,
    3_600_000,
    "ms",
    "events another replica left unacknowledged this long are taken over",
);
pub const OUTBOX_MEMORY_MAX: Setting = number(
    "outbox_memory_max",
    100_000,
    1_000,
    10_000_000,
    "events",
    "embedded engine: events that may wait for the database before state changes are refused",
);
pub const SQLITE_SYNCHRONOUS: Setting = text(
    "sqlite_synchronous",
    Default::Text("normal"),
    "SQLite's `synchronous`: `normal` loses nothing on a crash of the sidecar, `full` nothing on a power loss \
     either ([Embedded](#embedded-default))",
);
pub const SWEEP_INTERVAL_MS: Setting =
    number("sweep_interval_ms", 1_000, 10, 60_000, "ms", "how often overdue holds expire and ended cycles renew");
pub const ALERT_INTERVAL_MS: Setting = number(
    "alert_interval_ms",
    1_000,
    100,
    3_600_000,
    "ms",
    "how often accounts with alert thresholds are checked ([Alerts](#alerts))",
);
pub const WEBHOOK_URLS: Setting = text(
    "webhook_urls",
    Default::Nothing("none"),
    "http(s) URLs every alert is posted to, signed (file only; [Alerts](#alerts))",
);
pub const WEBHOOK_SECRET_FILE: Setting = text(
    "webhook_secret_file",
    Default::Nothing("none"),
    "a file whose first line is the HMAC-SHA256 key of the webhooks' signature (required with webhook_urls)",
);
pub const WEBHOOK_ATTEMPTS_MAX: Setting = number(
    "webhook_attempts_max",
    20,
    1,
    100,
    "attempts",
    "attempts to deliver an alert to a webhook (backoff 1 s doubling to 5 min: 20 span about an hour) before giving up",
);
pub const HEALTH_INTERVAL_MS: Setting =
    number("health_interval_ms", 1_000, 10, 60_000, "ms", "how often Redis and the database are checked for health");
pub const CALL_TIMEOUT_MAX_MS: Setting = number(
    "call_timeout_max_ms",
    5_000,
    10,
    600_000,
    "ms",
    "the longest any call may take; a shorter client `grpc-timeout` wins",
);
pub const CONCURRENCY_MAX: Setting = number(
    "concurrency_max",
    1_024,
    1,
    1_000_000,
    "calls",
    "calls in flight; one more is refused at once with `RESOURCE_EXHAUSTED`",
);
pub const REQUEST_BYTES_MAX: Setting = number(
    "request_bytes_max",
    64 * 1024,
    1_024,
    16 * 1024 * 1024,
    "bytes",
    "the largest request message; larger ones are refused with `OUT_OF_RANGE`",
);
// A request of at most `request_bytes_max` arrives in far less on any working link; a peer
// slower than this is more likely holding the server than calling it.
pub const REQUEST_BODY_TIMEOUT_MS: Setting = number(
    "request_body_timeout_ms",
    2_000,
    10,
    600_000,
    "ms",
    "the longest a request's body may take to arrive, before the call counts against `concurrency_max`; slower \
     ones are refused with `DEADLINE_EXCEEDED`",
);
// Long enough that a caller between bursts keeps its connection, short enough that idle
// connections (of a crashed pool, or a hostile peer) do not pile up.
pub const CONNECTION_IDLE_MAX_MS: Setting = number(
    "connection_idle_max_ms",
    60_000,
    100,
    86_400_000,
    "ms",
    "a connection with no call in flight this long is closed",
);
// Finds a peer that vanished without closing (a killed pod, a dropped NAT entry) within half a
// minute.
pub const HTTP2_KEEPALIVE_INTERVAL_MS: Setting = number(
    "http2_keepalive_interval_ms",
    20_000,
    100,
    3_600_000,
    "ms",
    "how often an HTTP/2 PING checks each connection's peer",
);
pub const HTTP2_KEEPALIVE_TIMEOUT_MS: Setting = number(
    "http2_keepalive_timeout_ms",
    10_000,
    100,
    600_000,
    "ms",
    "a peer that does not answer a PING within this is disconnected",
);
pub const TCP_KEEPALIVE_MS: Setting = number(
    "tcp_keepalive_ms",
    60_000,
    1_000,
    7_200_000,
    "ms",
    "idle time before the kernel's TCP keepalive probes start",
);
pub const AUTH_TOKENS_FILE: Setting = text(
    "auth_tokens_file",
    Default::Nothing("none"),
    "TOML file of bearer tokens ([Authentication](#authentication)); re-read when it changes",
);
pub const AUTH_RELOAD_INTERVAL_MS: Setting =
    number("auth_reload_interval_ms", 1_000, 10, 3_600_000, "ms", "how often the tokens file is checked for changes");
pub const RULES_RELOAD_INTERVAL_MS: Setting = number(
    "rules_reload_interval_ms",
    1_000,
    10,
    3_600_000,
    "ms",
    "how often the config file is checked for a new price book and categories (applied without a restart)",
);
pub const AUTH_DISABLED: Setting =
    text("auth_disabled", Default::Text("false"), "serve a non-loopback `listen` without authentication");
pub const TLS_CERT_FILE: Setting = text(
    "tls_cert_file",
    Default::Nothing("none"),
    "PEM certificate chain; with `tls_key_file` (both or neither), serve TLS (rustls)",
);
pub const TLS_KEY_FILE: Setting = text("tls_key_file", Default::Nothing("none"), "PEM private key of `tls_cert_file`");
pub const TLS_CLIENT_CA_FILE: Setting = text(
    "tls_client_ca_file",
    Default::Nothing("none"),
    "PEM CA certificates; clients must present a certificate one of them signed (mTLS); needs TLS",
);
pub const SHUTDOWN_DRAIN_MS: Setting = number(
    "shutdown_drain_ms",
    0,
    0,
    600_000,
    "ms",
    "after SIGTERM, keep taking calls this long while health says `NOT_SERVING`",
);
pub const SHUTDOWN_GRACE_MS: Setting = number(
    "shutdown_grace_ms",
    10_000,
    100,
    600_000,
    "ms",
    "after the drain, the longest finishing calls and flushing settlement may take",
);
pub const CATEGORIES: Setting = text(
    "categories",
    Default::Nothing("email, mobile, enrichment, waterfall, ai, dialer, api, phone_number, mailbox"),
    "what holds and charges may be for (file only)",
);
pub const PRICE_BOOK: Setting =
    text("price_book", Default::Nothing("see `src/ledger/rules.rs`"), "SKU → credits per unit (file only)");

const fn rule(name: &'static str, default: i64, unit: &'static str, meaning: &'static str) -> Setting {
    Setting { name, default: Default::Number(default), range: None, unit, meaning }
}

pub const RESERVATION_TTL_DEFAULT_MS: Setting = rule(
    "reservation_ttl_default_ms",
    rules::RESERVATION_TTL_DEFAULT_MS,
    "ms",
    "a hold's TTL when the caller gives 0 (between the TTL bounds)",
);
pub const RESERVATION_TTL_MIN_MS: Setting =
    rule("reservation_ttl_min_ms", rules::RESERVATION_TTL_MIN_MS, "ms", "the shortest TTL a caller may ask for");
pub const RESERVATION_TTL_MAX_MS: Setting = rule(
    "reservation_ttl_max_ms",
    rules::RESERVATION_TTL_MAX_MS,
    "ms",
    "the longest TTL a caller may ask for (at most a year)",
);
pub const TRIAL_CREDITS_DEFAULT: Setting =
    rule("trial_credits_default", rules::TRIAL_CREDITS_DEFAULT, "credits", "trial credits when the caller gives 0");
pub const TRIAL_DURATION_DEFAULT_MS: Setting =
    rule("trial_duration_default_ms", rules::TRIAL_DURATION_DEFAULT_MS, "ms", "trial length when the caller gives 0");
pub const REQUEST_ID_RETENTION_MS: Setting = rule(
    "request_id_retention_ms",
    rules::REQUEST_ID_RETENTION_MS,
    "ms",
    "how long request ids and closed reservations are remembered (at least 24 h)",
);

/// Every setting, in the README's order.
pub const SETTINGS: [Setting; 65] = [
    LISTEN,
    METRICS_LISTEN,
    LOG_FORMAT,
    LOG_LEVEL,
    OTEL_ENDPOINT,
    OTEL_SERVICE_NAME,
    OTEL_SAMPLE_RATIO,
    OTEL_CA_FILE,
    REDIS_URL,
    REDIS_CLUSTER,
    REDIS_SHARDS,
    REDIS_TIMEOUT_MS,
    REDIS_KEY_PREFIX,
    REDIS_PASSWORD_FILE,
    REDIS_CA_FILE,
    REDIS_CLIENT_CERT_FILE,
    REDIS_CLIENT_KEY_FILE,
    REDIS_WAIT_REPLICAS,
    REDIS_WAIT_TIMEOUT_MS,
    REDIS_STATE_RECOVERY,
    JOURNAL_CATEGORIES,
    JOURNAL_PATH,
    JOURNAL_ENTRIES_MAX,
    FAIL_OPEN_CATEGORIES,
    FAIL_OPEN_CREDITS,
    FAIL_OPEN_MS,
    DATABASE_URL,
    DATABASE_PASSWORD_FILE,
    DATABASE_CA_FILE,
    SETTLE_BATCH_MAX,
    SETTLE_WRITERS,
    SETTLE_CLAIM_IDLE_MS,
    OUTBOX_MEMORY_MAX,
    SQLITE_SYNCHRONOUS,
    SWEEP_INTERVAL_MS,
    ALERT_INTERVAL_MS,
    WEBHOOK_URLS,
    WEBHOOK_SECRET_FILE,
    WEBHOOK_ATTEMPTS_MAX,
    HEALTH_INTERVAL_MS,
    CALL_TIMEOUT_MAX_MS,
    CONCURRENCY_MAX,
    REQUEST_BYTES_MAX,
    REQUEST_BODY_TIMEOUT_MS,
    CONNECTION_IDLE_MAX_MS,
    HTTP2_KEEPALIVE_INTERVAL_MS,
    HTTP2_KEEPALIVE_TIMEOUT_MS,
    TCP_KEEPALIVE_MS,
    AUTH_TOKENS_FILE,
    AUTH_RELOAD_INTERVAL_MS,
    RULES_RELOAD_INTERVAL_MS,
    AUTH_DISABLED,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    TLS_CLIENT_CA_FILE,
    SHUTDOWN_DRAIN_MS,
    SHUTDOWN_GRACE_MS,
    CATEGORIES,
    PRICE_BOOK,
    RESERVATION_TTL_DEFAULT_MS,
    RESERVATION_TTL_MIN_MS,
    RESERVATION_TTL_MAX_MS,
    TRIAL_CREDITS_DEFAULT,
    TRIAL_DURATION_DEFAULT_MS,
    REQUEST_ID_RETENTION_MS,
];

/// The README's configuration table: a header and one row per setting.
pub fn markdown_table() -> String {
    let mut table = String::from("| setting | default | range | unit | meaning |\n| --- | --- | --- | --- | --- |\n");
    for setting in &SETTINGS {
        table.push_str(&setting.markdown_row());
        table.push('\n');
    }
    table
}
