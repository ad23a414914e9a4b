//! The real binary as a child process: configuration, logs, metrics, health and a graceful stop
//! under load, observed only from the outside — its stdout JSON lines, its exit status, its
//! sockets and the SQL ledger it leaves behind.
//!
//! Readiness is never guessed: every run asks for `--log-format json` with kernel-chosen ports
//! (`127.0.0.1:0`) and reads the real addresses from the `serving` line.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_admin_client::CreditAdminClient;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use credit_sidecar::ledger::{AccountId, Ledger};
use credit_sidecar::settle::store::Store;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::harness::{
    NOT_PROTOBUF, amount_cost, eventually, health_watch, plan_request, raw_unary, reserve_request, wait_for_health,
};
use crate::servers::{RedisServer, free_port};

const BINARY: &str = env!("CARGO_BIN_EXE_credit-sidecar");

/// How long a start (migrations included) may take on a busy 2-core machine before the test
/// fails. Only an upper bound: every wait returns as soon as its event happens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a refused start or a graceful stop may take before the test fails.
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

const RETENTION_MS: i64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// The child process
// ---------------------------------------------------------------------------------------------

/// A tempdir for one test's database and files, and the command line around it.
pub(crate) struct Workdir {
    dir: tempfile::TempDir,
}

impl Workdir {
    pub(crate) fn new() -> Self {
        Self { dir: tempfile::tempdir().unwrap() }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn database_url(&self) -> String {
        format!("sqlite://{}?mode=rwc", self.path().join("ledger.db").display())
    }

    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// The binary with none of this environment's settings leaking in, working in the tempdir,
    /// its database there: no listen, metrics or log flags yet.
    pub(crate) fn bare_command(&self) -> Command {
        let mut command = Command::new(BINARY);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CREDIT_SIDECAR_")
                || name.starts_with("OTEL_")
                || ["REDIS_URL", "DATABASE_URL", "RUST_LOG"].contains(&&*name)
            {
                command.env_remove(&*name);
            }
        }
        command.current_dir(self.path()).arg("--database-url").arg(self.database_url());
        command
    }

    /// The usual run: JSON logs, both listeners on ports the kernel picks.
    pub(crate) fn command(&self) -> Command {
        let mut command = self.bare_command();
        command.args(["--log-format", "json", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]);
        command
    }
}

/// A running (or exited) sidecar. Dropping it kills the process.
pub(crate) struct Sidecar {
    child: Child,
    /// stdout, line by line, as read; closed at the process's end of stdout.
    lines: mpsc::UnboundedReceiver<String>,
    /// Every stdout line read so far.
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Sidecar {
    pub(crate) fn spawn(mut command: Command) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the credit-sidecar binary runs");
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().unwrap();
        std::thread::spawn({
            let stdout = Arc::clone(&stdout);
            move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    stdout.lock().unwrap().push(line.clone());
                    // Nobody may listen any more: keep draining so the child never blocks.
                    tx.send(line).ok();
                }
            }
        });
        let err = child.stderr.take().unwrap();
        std::thread::spawn({
            let stderr = Arc::clone(&stderr);
            move || {
                use std::io::Read;
                let mut err = err;
                let mut buffer = [0u8; 4096];
                while let Ok(n) = err.read(&mut buffer) {
                    if n == 0 {
                        break;
                    }
                    stderr.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            }
        });
        Self { child, lines, stdout, stderr }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// What the process said, for failure messages.
    pub(crate) fn transcript(&self) -> String {
        format!("--- stdout ---\n{}\n--- stderr ---\n{}", self.stdout().join("\n"), self.stderr())
    }

    /// Reads stdout until a JSON line satisfies `wanted`; fails if stdout ends first or nothing
    /// comes within `timeout`.
    async fn wait_for_line(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    if let Ok(value) = serde_json::from_str::<Value>(&line)
                        && wanted(&value)
                    {
                        return value;
                    }
                }
                Ok(None) => {
                    let status = self.child.try_wait().ok().flatten();
                    // stderr's reader may lag the end of stdout by a moment.
                    let status = match status {
                        Some(status) => Some(status),
                        None => self.wait_exit(EXIT_TIMEOUT).await.ok(),
                    };
                    panic!("stdout ended (exit {status:?}) before {what}\n{}", self.transcript());
                }
                Err(_) => panic!("no {what} within {timeout:?}\n{}", self.transcript()),
            }
        }
    }

    /// Reads stdout (any format) until a line contains `word`; returns every line read so far.
    pub(crate) async fn lines_until(&mut self, word: &str) -> Vec<String> {
        loop {
            match tokio::time::timeout(START_TIMEOUT, self.lines.recv()).await {
                Ok(Some(line)) if line.contains(word) => return self.stdout(),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => panic!("no line with {word:?}\n{}", self.transcript()),
            }
        }
    }

    /// Waits for the `serving` line and returns the real gRPC and metrics addresses.
    pub(crate) async fn serving(&mut self) -> Serving {
        let line = self.wait_for_line("`serving` line", START_TIMEOUT, |line| message(line) == Some("serving")).await;
        let fields = &line["fields"];
        let grpc = fields["grpc"].as_str().unwrap_or_else(|| panic!("serving line without grpc: {line}"));
        let metrics = fields["metrics"].as_str().unwrap_or_else(|| panic!("serving line without metrics: {line}"));
        Serving {
            grpc: grpc.parse().unwrap_or_else(|_| panic!("grpc field is not an address: {line}")),
            metrics: (metrics != "off")
                .then(|| metrics.parse().unwrap_or_else(|_| panic!("metrics field is not an address: {line}"))),
            engine: fields["engine"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// SIGKILL: the process dies at once, mid-call, with nothing flushed.
    pub(crate) async fn kill(&mut self) {
        let status = Command::new("kill").args(["-KILL", &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -KILL {} failed", self.pid());
        self.exit_status().await;
    }

    /// SIGTERM, as a container runtime sends it.
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Waits (bounded) for the process to exit; Err(()) if it is still running at the deadline.
    async fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, ()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) async fn exit_status(&mut self) -> ExitStatus {
        match self.wait_exit(EXIT_TIMEOUT).await {
            Ok(status) => status,
            Err(()) => panic!("still running {EXIT_TIMEOUT:?} later\n{}", self.transcript()),
        }
    }

    /// After the exit: every JSON line the process wrote, once its stdout has closed.
    async fn all_json_lines(&mut self) -> Vec<Value> {
        loop {
            match tokio::time::timeout(EXIT_TIMEOUT, self.lines.recv()).await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => panic!("stdout still open {EXIT_TIMEOUT:?} after the exit"),
            }
        }
        self.stdout().iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.child.kill().ok();
            self.child.wait().ok();
        }
    }
}

pub(crate) struct Serving {
    pub(crate) grpc: SocketAddr,
    metrics: Option<SocketAddr>,
    pub(crate) engine: String,
}

impl Serving {
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .timeout(Duration::from_secs(15))
            .connect()
            .await
            .unwrap()
    }

    pub(crate) fn metrics(&self) -> SocketAddr {
        self.metrics.expect("metrics are on")
    }
}

/// A log line's message.
pub(crate) fn message(line: &Value) -> Option<&str> {
    line["fields"]["message"].as_str()
}

// ---------------------------------------------------------------------------------------------
// HTTP and the Prometheus text format, by hand
// ---------------------------------------------------------------------------------------------

/// `GET path` over a fresh HTTP/1.1 connection; returns (status code, body).
async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .unwrap_or_else(|_| panic!("GET {path}: no complete answer within 10 s"))
        .unwrap();
    let raw = String::from_utf8(raw).expect("an HTTP answer in UTF-8");
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("GET {path}: not HTTP: {raw:?}"));
    let mut head_lines = head.lines();
    let status_line = head_lines.next().unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("GET {path}: bad status line {status_line:?}"));
    let chunked = head_lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("transfer-encoding:") && lower.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    (status, body)
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// One sample of the Prometheus text exposition format.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses `name{label="value",…} value [timestamp]` lines; skips comments and blank lines.
fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("metric line without a value: {line:?}"));
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            while let Some(&(start, c)) = chars.peek() {
                if c == '}' {
                    end = Some(start + 1);
                    break;
                }
                if c == ',' || c == ' ' {
                    chars.next();
                    continue;
                }
                let mut key = String::new();
                for (_, c) in chars.by_ref() {
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "label value not quoted: {line:?}");
                let mut value = String::new();
                while let Some((_, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(other) => value.push(other),
                            None => panic!("dangling escape: {line:?}"),
                        },
                        '"' => break,
                        c => value.push(c),
                    }
                }
                labels.insert(key.trim().to_owned(), value);
            }
            let end = end.unwrap_or_else(|| panic!("unterminated labels: {line:?}"));
            rest = &inner[end..];
        }
        let value = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value: {line:?}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            value => value.parse().unwrap_or_else(|_| panic!("bad value {value:?} in {line:?}")),
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

pub(crate) struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    pub(crate) async fn scrape(address: SocketAddr) -> Self {
        let (status, text) = http_get(address, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {text}");
        let samples = parse_prometheus(&text);
        Self { text, samples }
    }

    /// The value of the one sample named `name` whose labels include `labels`; None if absent.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|sample| sample.name == name)
            .filter(|sample| labels.iter().all(|(k, v)| sample.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(matching.len() <= 1, "{name}{labels:?} is ambiguous: {matching:?}");
        matching.first().map(|sample| sample.value)
    }

    pub(crate) fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no sample {name}{labels:?} in\n{}", self.text))
    }

    fn has_family(&self, name: &str) -> bool {
        self.samples.iter().any(|sample| sample.name == name || sample.name.starts_with(&format!("{name}_")))
    }

    fn type_of(&self, family: &str) -> Option<&str> {
        self.text.lines().find_map(|line| line.strip_prefix(&format!("# TYPE {family} ")).map(str::trim))
    }
}

/// Scrapes until `ready` holds (bounded): for figures that follow settlement and health checks.
async fn scrape_until(address: SocketAddr, what: &str, ready: impl Fn(&Metrics) -> bool) -> Metrics {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let metrics = Metrics::scrape(address).await;
        if ready(&metrics) {
            return metrics;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}:\n{}", metrics.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A monthly plan of `credits` anchored a day ago (the binary runs on the real clock).
pub(crate) async fn set_plan(admin: &mut CreditAdminClient<Channel>, account: &str, credits: i64) {
    let request = plan_request(account, credits, now_ms() - 86_400_000, format!("plan-{account}"));
    let response = admin.set_plan(request).await.unwrap().into_inner();
    assert_eq!(response.outcome(), pb::Outcome::Ok, "{response:?}");
}

pub(crate) fn commit_request(
    reservation: &str,
    amount: i64,
    final_commit: bool,
    request_id: String,
) -> pb::CommitRequest {
    pb::CommitRequest {
        reservation_id: reservation.into(),
        cost: Some(amount_cost(amount)),
        r#final: final_commit,
        request_id,
        business_key: String::new(),
        labels: HashMap::new(),
    }
}

pub(crate) async fn balance(auth: &mut CreditAuthorizerClient<Channel>, account: &str) -> pb::Totals {
    let request = pb::GetBalanceRequest { account_id: account.into(), user_id: String::new() };
    auth.get_balance(request).await.unwrap().into_inner().totals.unwrap()
}

async fn health(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let request = HealthCheckRequest { service: service.into() };
    let response = HealthClient::new(channel.clone()).check(request).await?;
    Ok(response.into_inner().status())
}

/// Watches `service` until it reports SERVING (bounded): the dependency checks behind the
/// whole server's status may finish just after the `serving` line. Returns the statuses seen.
async fn watch_until_serving(channel: &Channel, service: &str) -> Vec<ServingStatus> {
    wait_for_health(&mut health_watch(channel, service).await, ServingStatus::Serving).await
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Calls through the real binary show up in /metrics with the contract's names and labels:
/// per-RPC outcomes, declines, durations, dependency health and settlement figures; /livez and
/// /readyz answer 200 while it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_outcomes_declines_durations_and_settlement() {
    let work = Workdir::new();
    let mut command = work.command();
    command.args(["--health-interval-ms", "50", "--request-bytes-max", "2048"]);
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    assert_eq!(serving.engine, "embedded");
    let metrics_address = serving.metrics();
    let channel = serving.channel().await;
    let mut admin = CreditAdminClient::new(channel.clone());
    let mut auth = CreditAuthorizerClient::new(channel.clone());

    set_plan(&mut admin, "acme", 1_000).await;
    let grant = pb::GrantRequest {
        account_id: "acme".into(),
        kind: pb::LotKind::Promo as i32,
        amount: 500,
        expires_unix_ms: 0,
        request_id: "promo-1".into(),
        create_account: false,
    };
    assert_eq!(admin.grant(grant).await.unwrap().into_inner().outcome(), pb::Outcome::Ok);
    let held = auth.reserve(reserve_request("acme", 100, "r-ok")).await.unwrap().into_inner();
    assert_eq!(held.outcome(), pb::Outcome::Ok, "{held:?}");
    let declined = auth.reserve(reserve_request("acme", 1_000_000, "r-big")).await.unwrap().into_inner();
    assert_eq!(declined.outcome(), pb::Outcome::InsufficientCredit, "{declined:?}");
    let commit = commit_request(&held.reservation_id, 30, false, "c-1".into());
    let committed = auth.commit(commit).await.unwrap().into_inner();
    assert_eq!((committed.outcome(), committed.charged, committed.held), (pb::Outcome::Ok, 30, 70));
    // A batch answers OK; its item's decline is counted as a decline.
    let item = pb::CommitItem {
        item_id: "b-1".into(),
        cost: Some(pb::Cost { cost: Some(pb::cost::Cost::Amount(80)) }),
        ..Default::default()
    };
    let batch = pb::CommitBatchRequest { reservation_id: held.reservation_id.clone(), items: vec![item] };
    let batched = auth.commit_batch(batch).await.unwrap().into_inner();
    assert_eq!(batched.items[0].outcome(), pb::Outcome::ExceedsHold, "{batched:?}");
    let bad = auth.reserve(reserve_request("acme", 0, "r-bad")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    let mut oversized = reserve_request("acme", 1, "r-huge");
    oversized.labels.insert("note".into(), "x".repeat(4_096));
    let refused = auth.reserve(oversized).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::OutOfRange, "{refused:?}");
    // Bytes that are not a protobuf message: the caller's bad input, refused before any handler
    // runs, and counted like every other answer.
    let garbage = raw_unary(&channel, "/credits.v1.CreditAuthorizer/Commit", NOT_PROTOBUF).await.unwrap_err();
    assert_eq!(garbage.code(), tonic::Code::InvalidArgument, "{garbage:?}");
    assert!(garbage.message().starts_with("CommitRequest: not a valid protobuf message"), "{garbage:?}");
    assert_eq!(crate::harness::error_reason(&garbage), "MALFORMED_MESSAGE");
    assert_eq!(crate::harness::error_reason(&refused), "REQUEST_TOO_LARGE");
    assert_eq!(crate::harness::error_reason(&bad), "INVALID_FIELD");

    // Figures that follow the health check and the settler are waited for; the call counters
    // are final the moment the calls have answered.
    let metrics = scrape_until(metrics_address, "the database up, the ledger settled, one open hold", |m| {
        m.get("credit_sidecar_dependency_up", &[("dependency", "database")]) == Some(1.0)
            && m.get("credit_sidecar_settle_backlog_events", &[]) == Some(0.0)
            && m.get("credit_sidecar_settled_events_total", &[]).is_some_and(|settled| settled > 0.0)
            && m.get("credit_sidecar_open_holds", &[]) == Some(1.0)
            && m.get("credit_sidecar_held_credits", &[]) == Some(70.0)
    })
    .await;
    let calls =
        |rpc: &str, outcome: &str| metrics.get("credit_sidecar_calls_total", &[("rpc", rpc), ("outcome", outcome)]);
    assert_eq!(calls("Reserve", "ok"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("Reserve", "insufficient_credit"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("Reserve", "invalid_argument"), Some(1.0), "{}", metrics.text);
    let refusals = |reason: &str| metrics.get("credit_sidecar_refusals_total", &[("reason", reason)]);
    assert_eq!(refusals("request_too_large"), Some(1.0), "{}", metrics.text);
    assert_eq!(refusals("malformed"), Some(1.0), "{}", metrics.text);
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(metrics.get("credit_sidecar_build_info", &version), Some(1.0), "{}", metrics.text);
    // (CPU seconds count whole seconds: present, but 0 in a process this young.)
    assert!(metrics.get("process_cpu_seconds_total", &[]).is_some(), "{}", metrics.text);
    for process in ["process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds"] {
        assert!(metrics.get(process, &[]).is_some_and(|value| value > 0.0), "{process}: {}", metrics.text);
    }
    assert_eq!(calls("Reserve", "out_of_range"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("Commit", "invalid_argument"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("Commit", "ok"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("SetPlan", "ok"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("Grant", "ok"), Some(1.0), "{}", metrics.text);
    assert_eq!(calls("Commit", "insufficient_credit"), None, "a Commit decline that never happened: {}", metrics.text);
    assert_eq!(calls("CommitBatch", "ok"), Some(1.0), "{}", metrics.text);
    assert_eq!(
        metrics.value("credit_sidecar_declines_total", &[("rpc", "CommitBatch"), ("reason", "exceeds_hold")]),
        1.0,
        "a batch item's decline: {}",
        metrics.text
    );
    assert_eq!(
        metrics.value("credit_sidecar_declines_total", &[("rpc", "Reserve"), ("reason", "insufficient_credit")]),
        1.0
    );
    // A histogram: per-bucket counts (so replicas aggregate), its count and sum.
    assert_eq!(metrics.type_of("credit_sidecar_call_duration_seconds"), Some("histogram"), "{}", metrics.text);
    let ok_reserve = [("rpc", "Reserve"), ("outcome", "ok")];
    assert_eq!(metrics.value("credit_sidecar_call_duration_seconds_count", &ok_reserve), 1.0);
    let declined_reserve = [("rpc", "Reserve"), ("outcome", "insufficient_credit")];
    assert_eq!(metrics.value("credit_sidecar_call_duration_seconds_count", &declined_reserve), 1.0);
    let inf_bucket = [("rpc", "Reserve"), ("outcome", "ok"), ("le", "+Inf")];
    assert_eq!(metrics.value("credit_sidecar_call_duration_seconds_bucket", &inf_bucket), 1.0);
    let seconds = metrics.value("credit_sidecar_call_duration_seconds_sum", &ok_reserve);
    assert!(seconds > 0.0 && seconds < 5.0, "a Reserve took {seconds} s by the histogram");
    assert_eq!(metrics.value("credit_sidecar_calls_in_flight", &[]), 0.0);
    // A counter that never moved may be absent from the page: absent is 0.
    let failures = metrics.get("credit_sidecar_settle_failures_total", &[]).unwrap_or(0.0);
    assert_eq!(failures, 0.0, "{}", metrics.text);
    assert!(metrics.has_family("credit_sidecar_settle_lag_seconds"), "{}", metrics.text);
    let settled = metrics.value("credit_sidecar_settled_events_total", &[]);

    assert_eq!(http_get(metrics_address, "/livez").await.0, 200);
    assert_eq!(http_get(metrics_address, "/readyz").await.0, 200);

    // Everything the counter says was settled is in the ledger, and that is all there is.
    sidecar.terminate();
    let status = sidecar.exit_status().await;
    assert_eq!(status.code(), Some(0), "{}", sidecar.transcript());
    let lines = sidecar.all_json_lines().await;
    let stopped = lines.iter().find(|line| message(line) == Some("stopped")).expect("a `stopped` line");
    let store = Store::connect(&work.database_url()).await.unwrap();
    let in_sql = store.event_count().await.unwrap();
    assert_eq!(settled as i64, in_sql, "settled_events_total vs rows in ledger_events");
    assert_eq!(stopped["fields"]["settled"].as_i64(), Some(in_sql), "{stopped}");
}

/// A setting comes from the file, is overridden by its environment variable, which is
/// overridden by its flag; the `serving` line reports the address really bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_precedence_is_file_then_environment_then_flag() {
    let work = Workdir::new();
    let (from_file, from_env, from_flag) = (free_port(), free_port(), free_port());
    let config = work.write("credit-sidecar.toml", &format!("listen = \"127.0.0.1:{from_file}\"\n"));
    let base = || {
        let mut command = work.bare_command();
        command.args(["--log-format", "json", "--metrics-listen", "127.0.0.1:0"]);
        command
    };

    let mut runs: Vec<(&str, Command, u16)> = Vec::new();
    let mut file_only = base();
    file_only.arg("--config").arg(&config);
    runs.push(("the file (--config)", file_only, from_file));
    let mut file_by_env = base();
    file_by_env.env("CREDIT_SIDECAR_CONFIG", &config);
    runs.push(("the file (CREDIT_SIDECAR_CONFIG)", file_by_env, from_file));
    let mut env_over_file = base();
    env_over_file.arg("--config").arg(&config).env("CREDIT_SIDECAR_LISTEN", format!("127.0.0.1:{from_env}"));
    runs.push(("the environment over the file", env_over_file, from_env));
    let mut flag_over_env = base();
    flag_over_env
        .arg("--config")
        .arg(&config)
        .env("CREDIT_SIDECAR_LISTEN", format!("127.0.0.1:{from_env}"))
        .args(["--listen", &format!("127.0.0.1:{from_flag}")]);
    runs.push(("the flag over the environment", flag_over_env, from_flag));

    for (source, command, port) in runs {
        let mut sidecar = Sidecar::spawn(command);
        let serving = sidecar.serving().await;
        assert_eq!(serving.grpc, SocketAddr::from(([127, 0, 0, 1], port)), "listen from {source}");
        // The reported address is the one really bound: the liveness check answers there.
        let channel = serving.channel().await;
        assert_eq!(health(&channel, "liveness").await.unwrap(), ServingStatus::Serving, "{source}");
        drop(sidecar);
    }
}

/// REDIS_URL selects the Redis engine, and CREDIT_SIDECAR_REDIS_URL wins over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_sidecar_redis_url_wins_over_redis_url() {
    let redis = RedisServer::start();
    let work = Workdir::new();
    // Nothing listens on this port: were REDIS_URL used, the start would fail.
    let nowhere = format!("redis://127.0.0.1:{}/", free_port());

    let mut plain = work.command();
    plain.env("REDIS_URL", redis.url());
    let mut sidecar = Sidecar::spawn(plain);
    assert_eq!(sidecar.serving().await.engine, "redis", "REDIS_URL alone selects the Redis engine");
    drop(sidecar);

    let mut both = work.command();
    both.env("REDIS_URL", &nowhere).env("CREDIT_SIDECAR_REDIS_URL", redis.url());
    let mut sidecar = Sidecar::spawn(both);
    let serving = sidecar.serving().await;
    assert_eq!(serving.engine, "redis");
    let channel = serving.channel().await;
    watch_until_serving(&channel, "").await; // Redis is the one that answers
}

/// Each invalid setting stops the binary with exit code 2 and `error: configuration:
/// <setting>: …` before it binds anything: its listen and metrics ports are held by this test,
/// so a bind attempt would fail differently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_refused_before_any_port_is_bound() {
    let work = Workdir::new();
    let grpc_held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let grpc_port = grpc_held.local_addr().unwrap().port();
    let metrics_address = metrics_held.local_addr().unwrap().to_string();
    let unknown_key = work.write("unknown.toml", "no_such_setting = 1\n");

    let base = |listen: String| {
        let mut command = work.bare_command();
        command.args(["--log-format", "json", "--listen", &listen, "--metrics-listen", &metrics_address]);
        command
    };
    let loopback = format!("127.0.0.1:{grpc_port}");
    // (setting, command, where the error must say the value came from)
    let mut cases: Vec<(&str, Command, Option<&str>)> = Vec::new();
    let mut zero_concurrency = base(loopback.clone());
    zero_concurrency.args(["--concurrency-max", "0"]);
    cases.push(("concurrency_max", zero_concurrency, Some("(from --concurrency-max)")));
    let mut zero_from_env = base(loopback.clone());
    zero_from_env.env("CREDIT_SIDECAR_CONCURRENCY_MAX", "0");
    cases.push(("concurrency_max", zero_from_env, Some("(from CREDIT_SIDECAR_CONCURRENCY_MAX)")));
    // A value clap cannot parse, from a variable: named by the variable, not by the flag.
    let mut words_from_env = base(loopback.clone());
    words_from_env.env("CREDIT_SIDECAR_REDIS_SHARDS", "many");
    cases.push(("redis_shards", words_from_env, Some("\"many\" is not a valid value")));
    let mut from_file = base(loopback.clone());
    from_file.arg("--config").arg(work.write("bad-sweep.toml", "sweep_interval_ms = 5\n"));
    cases.push(("sweep_interval_ms", from_file, Some("(from the config file ")));
    let mut xml_logs = work.bare_command();
    xml_logs.env("CREDIT_SIDECAR_LOG_FORMAT", "xml").args([
        "--listen",
        &loopback,
        "--metrics-listen",
        &metrics_address,
    ]);
    cases.push(("log_format", xml_logs, Some("(from CREDIT_SIDECAR_LOG_FORMAT)")));
    let mut unknown = base(loopback.clone());
    unknown.arg("--config").arg(&unknown_key);
    cases.push(("no_such_setting", unknown, None));
    // Every interface, so not loopback; the port is still the held one.
    cases.push(("auth_tokens_file", base(format!("0.0.0.0:{grpc_port}")), None));

    for (setting, command, origin) in cases {
        let mut sidecar = Sidecar::spawn(command);
        let status = sidecar.exit_status().await;
        let stderr = sidecar.stderr();
        assert_eq!(status.code(), Some(2), "{setting}: exit status {status}\n{}", sidecar.transcript());
        // A bad value names its setting first; an unknown file key is named in the file's error.
        let named = if setting == "no_such_setting" {
            stderr.starts_with("error: configuration: ") && stderr.contains(setting)
        } else {
            stderr.starts_with(&format!("error: configuration: {setting}: "))
        };
        assert!(named, "{setting}: stderr is not `error: configuration:` naming {setting}:\n{stderr}");
        if let Some(origin) = origin {
            assert!(stderr.contains(origin), "{setting}: stderr does not say `{origin}`:\n{stderr}");
        }
        assert_eq!(stderr.matches("error: ").count(), 1, "{setting}: the error is said once:\n{stderr}");
        let lines = sidecar.all_json_lines().await;
        assert!(!lines.iter().any(|line| message(line) == Some("serving")), "{setting}: it served");
    }
    // Afterwards the ports are still ours alone: a connection to each reaches this test's
    // listener, not a process left behind (re-binding them instead would race with other tests'
    // outgoing connections, which may get the port number once it is released).
    for held in [&grpc_held, &metrics_held] {
        let client = std::net::TcpStream::connect(held.local_addr().unwrap()).unwrap();
        let (_, peer) = held.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap(), "another listener answered on {:?}", held.local_addr());
    }
}

/// Without a tokens file on loopback the binary starts, warning that authentication is off;
/// with one, it does not warn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_loopback_run_warns_that_authentication_is_off() {
    let work = Workdir::new();
    let warned = |lines: &[Value]| {
        lines
            .iter()
            .any(|line| line["level"].as_str() == Some("WARN") && message(line) == Some("authentication is off"))
    };

    // The whole log of a run: serve, then stop (how it stops is another test's business).
    let mut open = Sidecar::spawn(work.command());
    open.serving().await;
    open.terminate();
    open.exit_status().await;
    let lines = open.all_json_lines().await;
    assert!(warned(&lines), "no WARN `authentication is off` in\n{}", open.transcript());

    let tokens = work.write(
        "tokens.toml",
        "[[tokens]]\nname = \"tests\"\ntoken = \"a-test-token-of-32-characters-xx\"\nscopes = [\"authorize\", \"admin\"]\n",
    );
    let mut command = work.command();
    command.arg("--auth-tokens-file").arg(&tokens);
    let mut guarded = Sidecar::spawn(command);
    guarded.serving().await;
    guarded.terminate();
    guarded.exit_status().await;
    let lines = guarded.all_json_lines().await;
    assert!(!warned(&lines), "warned with a tokens file:\n{}", guarded.transcript());
}

/// A `CREDIT_SIDECAR_*` variable that names no setting (a typo would leave the setting at its
/// default) is warned about once logging is up; text logs into a pipe carry no colour codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_variable_is_warned_about_and_piped_logs_have_no_colour() {
    let work = Workdir::new();
    let mut command = work.command();
    command.env("CREDIT_SIDECAR_CONCURENCY_MAX", "8");
    let mut sidecar = Sidecar::spawn(command);
    sidecar.serving().await;
    sidecar.terminate();
    sidecar.exit_status().await;
    let lines = sidecar.all_json_lines().await;
    let warned = lines.iter().any(|line| {
        line["level"].as_str() == Some("WARN")
            && message(line).is_some_and(|text| text.contains("CREDIT_SIDECAR_CONCURENCY_MAX names no setting"))
    });
    assert!(warned, "no warning about the misspelt variable:\n{}", sidecar.transcript());

    let mut text = work.bare_command();
    text.args(["--log-format", "text", "--listen", "127.0.0.1:0", "--metrics-listen", "off", "check-config"]);
    let mut checked = Sidecar::spawn(text);
    assert_eq!(checked.exit_status().await.code(), Some(0), "{}", checked.transcript());
    let mut text = work.bare_command();
    text.args(["--log-format", "text", "--listen", "127.0.0.1:0", "--metrics-listen", "off"]);
    let mut plain = Sidecar::spawn(text);
    let lines = plain.lines_until("serving").await;
    plain.terminate();
    plain.exit_status().await;
    assert!(lines.iter().all(|line| !line.contains('\u{1b}')), "colour codes in a pipe:\n{}", plain.transcript());
}

/// The price book and categories reload from the config file while serving: a new SKU prices at
/// once; a file that does not check keeps the rules in force and is counted as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_price_book_reloads_from_the_config_file() {
    let work = Workdir::new();
    let config = work.write("config.toml", "[price_book]\n\"email.verified\" = 1\n");
    let mut command = work.command();
    command.arg("--config").arg(&config).args(["--rules-reload-interval-ms", "20"]);
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    let channel = serving.channel().await;
    set_plan(&mut CreditAdminClient::new(channel.clone()), "acme", 100).await;
    let quote = |sku: &'static str| {
        let mut client = CreditAuthorizerClient::new(channel.clone());
        async move {
            let cost = pb::Cost { cost: Some(pb::cost::Cost::Sku(pb::SkuQuantity { sku: sku.into(), quantity: 2 })) };
            let request = pb::QuoteRequest { account_id: "acme".into(), cost: Some(cost), ..Default::default() };
            client.quote(request).await.map(|response| response.into_inner().amount)
        }
    };
    let unknown = quote("fax.page").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown:?}");

    std::fs::write(&config, "[price_book]\n\"email.verified\" = 1\n\"fax.page\" = 3\n").unwrap();
    eventually("the new SKU prices", Duration::from_secs(20), async || quote("fax.page").await.ok() == Some(6)).await;

    std::fs::write(&config, "categories = []\n").unwrap();
    let metrics = scrape_until(serving.metrics(), "a rejected reload", |m| {
        m.get("credit_sidecar_rules_reloads_total", &[("result", "error")]) == Some(1.0)
    })
    .await;
    assert_eq!(metrics.get("credit_sidecar_rules_reloads_total", &[("result", "ok")]), Some(1.0), "{}", metrics.text);
    assert_eq!(quote("fax.page").await.ok(), Some(6), "the rules in force stay");
}

/// A listener that cannot bind is named in the error, which is said once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_names_its_listener() {
    let work = Workdir::new();
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = held.local_addr().unwrap().to_string();
    let mut command = work.bare_command();
    command.args(["--log-format", "json", "--listen", "127.0.0.1:0", "--metrics-listen", &address]);
    let mut sidecar = Sidecar::spawn(command);
    let status = sidecar.exit_status().await;
    assert_eq!(status.code(), Some(1), "{}", sidecar.transcript());
    let lines = sidecar.all_json_lines().await;
    let errors: Vec<&Value> = lines.iter().filter(|line| line["level"].as_str() == Some("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{}", sidecar.transcript());
    let error = errors[0]["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.starts_with(&format!("metrics_listen {address}: cannot bind")), "{error}");
    assert!(sidecar.stderr().is_empty(), "said again on stderr:\n{}", sidecar.transcript());
}

/// A SIGTERM the moment the binary says `serving` is a graceful stop like any other: exit 0,
/// with the `stopped` line (a probe or an orchestrator may stop a replica that has just started).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_the_serving_line_stops_gracefully() {
    let work = Workdir::new();
    let mut sidecar = Sidecar::spawn(work.command());
    sidecar.serving().await;
    sidecar.terminate();
    let status = sidecar.exit_status().await;
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}\n{}", sidecar.transcript());
    let lines = sidecar.all_json_lines().await;
    assert!(lines.iter().any(|line| message(line) == Some("stopped")), "{}", sidecar.transcript());
}

/// `grpc.health.v1.Health` on the binary: `liveness` answers SERVING at once; the whole server
/// and both credit services become SERVING once the database has answered; an unknown service
/// is NOT_FOUND.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_over_grpc_answers_serving_for_liveness_and_the_whole_server() {
    let work = Workdir::new();
    let mut sidecar = Sidecar::spawn(work.command());
    let channel = sidecar.serving().await.channel().await;
    // Liveness needs nothing but the process: SERVING from the first answer.
    assert_eq!(health(&channel, "liveness").await.unwrap(), ServingStatus::Serving);
    for service in ["", "credits.v1.CreditAuthorizer", "credits.v1.CreditAdmin"] {
        let seen = watch_until_serving(&channel, service).await;
        if seen.len() > 1 {
            eprintln!("health of {service:?} right after the `serving` line: {seen:?}");
        }
        // And Check agrees with Watch.
        assert_eq!(health(&channel, service).await.unwrap(), ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health(&channel, "no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");
}

/// SIGTERM with calls in flight: the embedded engine drains them and settles every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_drains_calls_and_settles_every_event() {
    sigterm_under_load(None).await;
}

/// The same on the Redis engine, and `verify` finds Redis and the ledger in agreement after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_load_on_redis_drains_calls_and_settles_every_event() {
    let redis = RedisServer::start();
    sigterm_under_load(Some(&redis)).await;
}

/// What one worker saw acknowledged.
#[derive(Debug, Default)]
struct Tally {
    reserves: u64,
    commits: u64,
    spent: i64,
    /// Reservations acknowledged whose final commit was not: still held.
    open: i64,
    /// Answers that arrived after SIGTERM was sent.
    answered_after_term: u64,
    /// How this worker's last call failed.
    refusal: String,
}

const HOLD: i64 = 10;
const WORKERS: usize = 16;
const ACCOUNT: &str = "loadco";

/// Did the stop refuse the call (the server answering UNAVAILABLE, or the connection refused,
/// closed or torn down before an answer) rather than a call failing on its own?
pub(crate) fn refused_by_the_stop(status: &tonic::Status) -> bool {
    // A status the server sent carries the response's headers; one made up by the client
    // because the transport failed carries none.
    let from_transport = status.metadata().get("content-type").is_none();
    status.code() == tonic::Code::Unavailable
        || (from_transport
            && matches!(status.code(), tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled))
}

async fn load_worker(
    worker: usize,
    channel: Channel,
    progress: Arc<AtomicU64>,
    term_sent: Arc<AtomicBool>,
) -> Result<Tally, String> {
    let mut auth = CreditAuthorizerClient::new(channel);
    let mut tally = Tally::default();
    let stop = |tally: Tally, call: &str, status: tonic::Status| -> Result<Tally, String> {
        if !term_sent.load(Ordering::SeqCst) {
            return Err(format!("worker {worker}: {call} failed before SIGTERM: {status:?}"));
        }
        if !refused_by_the_stop(&status) {
            return Err(format!("worker {worker}: {call} failed with more than the stop: {status:?}"));
        }
        Ok(Tally { refusal: format!("{:?}: {}", status.code(), status.message()), ..tally })
    };
    let mut n: i64 = 0;
    loop {
        n += 1;
        let reserve = reserve_request(ACCOUNT, HOLD, format!("w{worker}-{n}-reserve"));
        let reserved = match auth.reserve(reserve).await {
            Ok(response) => response.into_inner(),
            Err(status) => return stop(tally, "Reserve", status),
        };
        if reserved.outcome() != pb::Outcome::Ok || reserved.amount != HOLD {
            return Err(format!("worker {worker}: Reserve answered {reserved:?}"));
        }
        tally.reserves += 1;
        tally.open += 1;
        tally.answered_after_term += u64::from(term_sent.load(Ordering::SeqCst));
        let charge = 1 + (n + worker as i64) % HOLD;
        let commit = commit_request(&reserved.reservation_id, charge, true, format!("w{worker}-{n}-commit"));
        let committed = match auth.commit(commit).await {
            Ok(response) => response.into_inner(),
            Err(status) => return stop(tally, "Commit", status),
        };
        if (committed.outcome(), committed.charged, committed.held, committed.returned)
            != (pb::Outcome::Ok, charge, 0, HOLD - charge)
        {
            return Err(format!("worker {worker}: final Commit of {charge} answered {committed:?}"));
        }
        tally.commits += 1;
        tally.open -= 1;
        tally.spent += charge;
        tally.answered_after_term += u64::from(term_sent.load(Ordering::SeqCst));
        progress.fetch_add(1, Ordering::SeqCst);
    }
}

async fn sigterm_under_load(redis: Option<&RedisServer>) {
    let work = Workdir::new();
    let mut command = work.command();
    if let Some(redis) = redis {
        command.args(["--redis-url", &redis.url()]);
    }
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    assert_eq!(serving.engine, if redis.is_some() { "redis" } else { "embedded" });
    let setup = serving.channel().await;
    set_plan(&mut CreditAdminClient::new(setup.clone()), ACCOUNT, 1_000_000_000).await;
    let granted = balance(&mut CreditAuthorizerClient::new(setup), ACCOUNT).await.granted;

    // Each worker on a connection of its own, as separate callers would be.
    let progress = Arc::new(AtomicU64::new(0));
    let term_sent = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let channel = serving.channel().await;
        workers.push(tokio::spawn(load_worker(worker, channel, Arc::clone(&progress), Arc::clone(&term_sent))));
    }
    // Some load first: wait (bounded) until 200 reservations have been committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.load(Ordering::SeqCst) < 200 {
        assert!(
            Instant::now() < deadline,
            "only {} commits in 30 s\n{}",
            progress.load(Ordering::SeqCst),
            sidecar.transcript()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before_term = progress.load(Ordering::SeqCst);
    term_sent.store(true, Ordering::SeqCst);
    let sent = Instant::now();
    sidecar.terminate();

    let mut tallies = Vec::new();
    let mut failures = Vec::new();
    for worker in workers {
        match worker.await.unwrap() {
            Ok(tally) => tallies.push(tally),
            Err(failure) => failures.push(failure),
        }
    }
    let status = sidecar.exit_status().await;
    let stop_took = sent.elapsed();
    assert!(failures.is_empty(), "calls failed other than by the stop:\n{}", failures.join("\n"));
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}\n{}", sidecar.transcript());
    let lines = sidecar.all_json_lines().await;
    let stopped = lines
        .iter()
        .find(|line| message(line) == Some("stopped"))
        .unwrap_or_else(|| panic!("no `stopped` line\n{}", sidecar.transcript()));
    let settled_by_process = stopped["fields"]["settled"].as_i64().unwrap_or_else(|| panic!("{stopped}"));

    let reserves: u64 = tallies.iter().map(|t| t.reserves).sum();
    let commits: u64 = tallies.iter().map(|t| t.commits).sum();
    let spent: i64 = tallies.iter().map(|t| t.spent).sum();
    let open: i64 = tallies.iter().map(|t| t.open).sum();
    let after_term: u64 = tallies.iter().map(|t| t.answered_after_term).sum();
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for tally in &tallies {
        let kind = tally.refusal.split(':').next().unwrap_or_default().to_owned();
        *refusals.entry(kind).or_default() += 1;
    }
    eprintln!(
        "sigterm under load ({} engine, {WORKERS} workers): {} calls answered ({reserves} Reserve, {commits} final \
         Commit; {before_term} pairs done at SIGTERM, {after_term} answers after it), {open} holds left open; \
         SIGTERM to exit {stop_took:?}; workers stopped by {refusals:?}; the process settled {settled_by_process} \
         events",
        serving.engine,
        reserves + commits,
    );
    let distinct: std::collections::BTreeSet<&str> = tallies.iter().map(|tally| tally.refusal.as_str()).collect();
    for refusal in distinct {
        eprintln!("  a worker's last call failed with {refusal}");
    }

    // The ledger holds exactly what the callers were told.
    let store = Store::connect(&work.database_url()).await.unwrap();
    let account = AccountId::parse(ACCOUNT).unwrap();
    let totals = store.totals(&account).await.unwrap().expect("the account is settled");
    assert_eq!(
        (totals.granted, totals.spent, totals.held, totals.expired),
        (granted, spent, open * HOLD, 0),
        "settled totals (granted, spent, held, expired) vs what the callers were told"
    );
    assert_eq!(totals.events, totals.last_seq, "events lost or doubled: {totals:?}");
    assert_eq!(store.conflicts(&account).await.unwrap(), 0);
    assert_eq!(store.event_count().await.unwrap(), settled_by_process, "events in SQL vs the `stopped` line");
    let mut settled_reservations = 0;
    let mut settled_open = 0;
    let mut before = None;
    loop {
        let page = store.reservations(&account, None, 1_000, before).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.seq);
        settled_reservations += page.len() as u64;
        settled_open += page.iter().filter(|reservation| reservation.closed_ms.is_none()).count() as i64;
    }
    assert_eq!(settled_reservations, reserves, "settled reservations vs Reserve calls acknowledged");
    assert_eq!(settled_open, open, "settled open reservations vs holds left open");

    // Replaying the settled events from scratch gives the same account, conservation included.
    let events = store.events(Some(&account)).await.unwrap();
    let mut replayed = Ledger::restore(RETENTION_MS, now_ms(), events).expect("the settled events replay");
    let view = replayed.balance(now_ms(), &account, None).unwrap().totals;
    assert_eq!(
        (view.granted, view.available, view.held, view.spent, view.expired),
        (totals.granted, totals.available(), totals.held, totals.spent, totals.expired),
        "the replayed ledger vs the settled totals"
    );
    assert_eq!(view.granted, view.available + view.held + view.spent + view.expired, "conservation: {view:?}");
    drop(store);

    if let Some(redis) = redis {
        let output =
            work.bare_command().args(["--redis-url", &redis.url(), "--log-format", "json", "verify"]).output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "verify: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        assert!(stdout.contains("0 drift(s)"), "verify: {stdout}");
    }
}

/// A Redis restarted empty under the real binary: the metric and the ERROR log line an operator
/// alerts on, and readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_state_shows_in_the_metric_and_an_error_log() {
    let mut redis = RedisServer::start();
    let work = Workdir::new();
    let mut command = work.command();
    command.args(["--redis-url", &redis.url(), "--health-interval-ms", "50"]);
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    let channel = serving.channel().await;
    set_plan(&mut CreditAdminClient::new(channel.clone()), "lossco", 100).await;
    let metrics = serving.metrics();
    scrape_until(metrics, "the account settled", |m| m.value("credit_sidecar_settled_events_total", &[]) >= 3.0).await;
    assert_eq!(Metrics::scrape(metrics).await.value("credit_sidecar_redis_state_lost", &[]), 0.0);

    redis.restart(); // no persistence: empty
    scrape_until(metrics, "redis_state_lost 1", |m| m.value("credit_sidecar_redis_state_lost", &[]) == 1.0).await;
    let (status, _) = http_get(metrics, "/readyz").await;
    assert_eq!(status, 503, "readiness while Redis's state is lost");
    let error = sidecar
        .wait_for_line("the ERROR line", START_TIMEOUT, |line| {
            line["level"] == "ERROR" && message(line).is_some_and(|text| text.starts_with("Redis lost its state"))
        })
        .await;
    assert!(error["fields"]["cause"].as_str().is_some_and(|cause| cause.contains("cs:layout")), "{error}");
}
