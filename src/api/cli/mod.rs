//! The operator's commands (`credit-sidecar account show …`): one gRPC call each to a running
//! sidecar, through the generated client, answered as a table (or, with `--json`, as the
//! response in the protobuf JSON mapping) on stdout. Errors go to stderr. The exit status says
//! what happened, so a script can branch on it without parsing:
//!
//! | status | meaning |
//! | --- | --- |
//! | 0 | done |
//! | 1 | declined: a normal answer that changed nothing (the trial was used, the hold is closed) |
//! | 2 | the command line or the configuration is wrong (nothing was sent) |
//! | 3 | the sidecar refused the request (invalid argument, not found, not allowed) |
//! | 4 | the sidecar could not be reached or failed (unavailable, deadline, internal) |

mod show;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::pb;
use super::pb::credit_admin_client::CreditAdminClient;
use super::pb::credit_authorizer_client::CreditAuthorizerClient;

/// The exit statuses of the module docs' table.
pub mod exit {
    pub const DONE: u8 = 0;
    pub const DECLINED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const REFUSED: u8 = 3;
    pub const FAILED: u8 = 4;
}

/// Where the sidecar is and how to reach it; every operator command takes these. Unset, each
/// comes from its variable, then from the configuration (see README, "Operator commands").
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Target {
    /// The sidecar's gRPC address, `http://127.0.0.1:50051` or `https://…` [variable:
    /// CREDIT_SIDECAR_ADDRESS; default: the configuration's `listen`, over TLS when it serves TLS]
    #[arg(long, value_name = "URL")]
    pub address: Option<String>,
    /// A file whose first line is the bearer token [variable: CREDIT_SIDECAR_TOKEN_FILE; or the
    /// token itself in CREDIT_SIDECAR_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM CA bundle that signs an `https://` sidecar's certificate [variable:
    /// CREDIT_SIDECAR_CA_FILE; default: the system's roots]
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Print the response as JSON (the protobuf JSON mapping, proto field names) instead of a table
    #[arg(long)]
    pub json: bool,
}

/// [`Target`], resolved by the configuration: what the call needs.
#[derive(Clone)]
pub struct Connection {
    pub address: String,
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub json: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let token = self.token.as_ref().map(|_| "<redacted>");
        f.debug_struct("Connection").field("address", &self.address).field("token", &token).finish_non_exhaustive()
    }
}

/// Every operator command.
#[derive(Debug, clap::Subcommand)]
pub enum Operation {
    /// An account: plan, cycle, totals, lots, user limits, category budgets.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Set an account's plan (creates the account).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// Grant credits: an add-on, a promotion or an adjustment (a lot of its own).
    Grant(GrantArgs),
    /// Trials.
    #[command(subcommand)]
    Trial(TrialCommand),
    /// Per-user spending limits.
    #[command(subcommand)]
    UserLimit(UserLimitCommand),
    /// Per-category budgets for the whole team.
    #[command(subcommand)]
    CategoryBudget(CategoryBudgetCommand),
    /// Credits spent, by cycle, user and category (from the settled ledger).
    Usage(UsageArgs),
    /// Every change to an account, newest first (from the settled ledger).
    History(HistoryArgs),
    /// Reservations (holds).
    #[command(subcommand)]
    Reservations(ReservationsCommand),
    /// Release what a reservation still holds.
    Release(ReleaseArgs),
    /// Alert thresholds and the alerts they fired (the sidecar needs its ledger database).
    #[command(subcommand)]
    Alerts(AlertsCommand),
}

impl Operation {
    /// The target every command carries.
    pub fn target(&self) -> &Target {
        match self {
            Operation::Account(AccountCommand::Show { target, .. }) => target,
            Operation::Plan(PlanCommand::Set(args)) => &args.target,
            Operation::Grant(args) => &args.target,
            Operation::Trial(TrialCommand::Start(args)) => &args.target,
            Operation::UserLimit(UserLimitCommand::Set(args)) => &args.target,
            Operation::CategoryBudget(CategoryBudgetCommand::Set(args)) => &args.target,
            Operation::Usage(args) => &args.target,
            Operation::History(args) => &args.target,
            Operation::Reservations(ReservationsCommand::List(args)) => &args.target,
            Operation::Reservations(ReservationsCommand::Show { target, .. }) => target,
            Operation::Release(args) => &args.target,
            Operation::Alerts(AlertsCommand::List(args)) => &args.target,
            Operation::Alerts(AlertsCommand::Set(args)) => &args.target,
        }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum AccountCommand {
    /// Show an account.
    Show {
        account: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum PlanCommand {
    /// Set the plan: its period, anchor and credits per cycle.
    Set(PlanArgs),
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    pub account: String,
    /// Plan credits per cycle.
    #[arg(long)]
    pub credits: i64,
    /// Add-on credits per cycle.
    #[arg(long, default_value_t = 0)]
    pub addon: i64,
    #[arg(long, value_enum, default_value_t = Period::Monthly)]
    pub period: Period,
    /// When cycles start: RFC 3339 (`2026-11-01T00:00:00Z`) or Unix milliseconds [default: now].
    #[arg(long, value_parser = unix_ms)]
    pub anchor: Option<i64>,
    #[command(flatten)]
    pub idempotency: Idempotency,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct GrantArgs {
    pub account: String,
    /// Credits granted.
    #[arg(long)]
    pub credits: i64,
    #[arg(long, value_enum, default_value_t = GrantKind::Addon)]
    pub kind: GrantKind,
    /// When the lot expires: RFC 3339 or Unix milliseconds [default: never].
    #[arg(long, value_parser = unix_ms)]
    pub expires: Option<i64>,
    /// Create the account if it does not exist.
    #[arg(long)]
    pub create_account: bool,
    #[command(flatten)]
    pub idempotency: Idempotency,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum TrialCommand {
    /// Start an account's trial (once per account).
    Start(TrialArgs),
}

#[derive(Debug, clap::Args)]
pub struct TrialArgs {
    pub account: String,
    /// Trial credits [default: the sidecar's trial_credits_default].
    #[arg(long, default_value_t = 0)]
    pub credits: i64,
    /// Trial length in days [default: the sidecar's trial_duration_default_ms].
    #[arg(long, default_value_t = 0)]
    pub days: i64,
    /// Create the account if it does not exist.
    #[arg(long)]
    pub create_account: bool,
    #[command(flatten)]
    pub idempotency: Idempotency,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum UserLimitCommand {
    /// Set (or, with --none, lift) a user's limit per cycle.
    Set(UserLimitArgs),
}

#[derive(Debug, clap::Args)]
pub struct UserLimitArgs {
    pub account: String,
    pub user: String,
    /// Credits the user may spend per cycle.
    #[arg(long, required_unless_present = "none", conflicts_with = "none")]
    pub limit: Option<i64>,
    /// No limit.
    #[arg(long)]
    pub none: bool,
    #[command(flatten)]
    pub idempotency: Idempotency,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum CategoryBudgetCommand {
    /// Set (or, with --none, lift) a category's budget per cycle, for the whole team.
    Set(CategoryBudgetArgs),
}

#[derive(Debug, clap::Args)]
pub struct CategoryBudgetArgs {
    pub account: String,
    /// One of the sidecar's categories (`ai`, `mobile`, …).
    pub category: String,
    /// Credits the team may hold or spend in the category per cycle.
    #[arg(required_unless_present = "none", conflicts_with = "none")]
    pub budget: Option<i64>,
    /// No budget.
    #[arg(long)]
    pub none: bool,
    #[command(flatten)]
    pub idempotency: Idempotency,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    pub account: String,
    /// Only the cycle that starts then: RFC 3339 or Unix milliseconds [default: every cycle].
    #[arg(long, value_parser = unix_ms)]
    pub cycle_start: Option<i64>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    pub account: String,
    /// Most entries shown (1..=1000).
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only entries older than this sequence number (the `older:` line of a previous page).
    #[arg(long)]
    pub before: Option<u64>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum ReservationsCommand {
    /// An account's reservations, newest first.
    List(ListArgs),
    /// One reservation.
    Show {
        reservation: String,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    pub account: String,
    #[arg(long, value_enum, default_value_t = StateFilter::Held)]
    pub state: StateFilter,
    /// Most reservations shown.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// From the durable ledger (every reservation ever settled) instead of the engine.
    #[arg(long)]
    pub settled: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    pub reservation: String,
    #[command(flatten)]
    pub idempotency: Idempotency,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Subcommand)]
pub enum AlertsCommand {
    /// An account's thresholds, then the alerts they fired, newest first, each with its webhook
    /// deliveries.
    List(AlertsListArgs),
    /// Replace an account's thresholds (each fires at most once per billing cycle).
    ///
    /// Each flag repeats and names its threshold by an ID (up to the first `=`); the thresholds
    /// given replace all of the account's, and are printed back. `--clear`, alone, removes them
    /// all; with no flag at all nothing is sent. Percentages are whole, `80` or `80%`.
    Set(AlertsSetArgs),
}

#[derive(Debug, clap::Args)]
pub struct AlertsListArgs {
    pub account: String,
    /// Most alerts shown (1..=1000).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub page_size: u32,
    /// Only alerts older than this (the `older:` line of a previous page).
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct AlertsSetArgs {
    pub account: String,
    /// Boxed: five lists would make every command's value as large as this one's.
    #[command(flatten)]
    pub thresholds: Box<ThresholdFlags>,
    #[command(flatten)]
    pub target: Target,
}

/// The account's new thresholds, each named by its ID (the part before the first `=`); the
/// flags repeat. At least one, or `--clear`: nothing clears the thresholds by accident.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = true)]
pub struct ThresholdFlags {
    /// Fires when the live lots' credits used (held or spent) reach PCT percent (1..=100).
    #[arg(long, value_name = "ID=PCT", value_parser = used_percent)]
    pub used_percent: Vec<pb::AlertThreshold>,
    /// Fires when available credit falls below AMOUNT.
    #[arg(long, value_name = "ID=AMOUNT", value_parser = available_below)]
    pub available_below: Vec<pb::AlertThreshold>,
    /// Fires when available credit reaches 0.
    #[arg(long, value_name = "ID", value_parser = depleted)]
    pub depleted: Vec<pb::AlertThreshold>,
    /// Fires when USER's use this cycle reaches PCT percent (1..=100) of their limit.
    #[arg(long, value_name = "ID=USER:PCT", value_parser = user_percent)]
    pub user_percent: Vec<pb::AlertThreshold>,
    /// Fires when the team's use of CATEGORY this cycle reaches PCT percent (1..=100) of its budget.
    #[arg(long, value_name = "ID=CATEGORY:PCT", value_parser = category_percent)]
    pub category_percent: Vec<pb::AlertThreshold>,
    /// Remove every threshold of the account (its alerts stay listed).
    #[arg(
        long,
        conflicts_with_all = ["used_percent", "available_below", "depleted", "user_percent", "category_percent"]
    )]
    pub clear: bool,
}

impl ThresholdFlags {
    /// The thresholds, flag by flag; none with `--clear`.
    fn thresholds(self) -> Vec<pb::AlertThreshold> {
        let Self { used_percent, available_below, depleted, user_percent, category_percent, clear: _ } = self;
        [used_percent, available_below, depleted, user_percent, category_percent].into_iter().flatten().collect()
    }
}

/// `ID=…` as the threshold's id and the rest (checked by clap, before anything is sent; the
/// figures' ranges are the sidecar's to check).
fn threshold_id<'a>(text: &'a str, syntax: &str) -> Result<(String, &'a str), String> {
    match text.split_once('=') {
        Some((id, rest)) if !id.is_empty() => Ok((id.to_owned(), rest)),
        _ => Err(format!("expected {syntax}")),
    }
}

/// `80` or `80%`.
fn percent(text: &str) -> Result<u32, String> {
    let digits = text.strip_suffix('%').unwrap_or(text);
    digits.parse().map_err(|_| format!("{text:?} is not a whole percentage"))
}

/// `USER:PCT` or `CATEGORY:PCT` (the percentage after the last `:`).
fn scoped_percent(text: &str, syntax: &str) -> Result<pb::ScopedPercent, String> {
    match text.rsplit_once(':') {
        Some((id, value)) if !id.is_empty() => Ok(pb::ScopedPercent { id: id.to_owned(), percent: percent(value)? }),
        _ => Err(format!("expected {syntax}")),
    }
}

fn alert_threshold(threshold_id: String, when: pb::alert_threshold::When) -> pb::AlertThreshold {
    pb::AlertThreshold { threshold_id, when: Some(when) }
}

fn used_percent(text: &str) -> Result<pb::AlertThreshold, String> {
    let (id, value) = threshold_id(text, "ID=PCT, e.g. eighty=80")?;
    Ok(alert_threshold(id, pb::alert_threshold::When::UsedPercent(percent(value)?)))
}

fn available_below(text: &str) -> Result<pb::AlertThreshold, String> {
    let (id, value) = threshold_id(text, "ID=AMOUNT, e.g. low=500")?;
    let amount = value.parse().map_err(|_| format!("{value:?} is not a whole number of credits"))?;
    Ok(alert_threshold(id, pb::alert_threshold::When::AvailableBelow(amount)))
}

fn depleted(text: &str) -> Result<pb::AlertThreshold, String> {
    Ok(alert_threshold(text.to_owned(), pb::alert_threshold::When::Depleted(true)))
}

fn user_percent(text: &str) -> Result<pb::AlertThreshold, String> {
    let syntax = "ID=USER:PCT, e.g. ann-90=ann:90";
    let (id, scoped) = threshold_id(text, syntax)?;
    Ok(alert_threshold(id, pb::alert_threshold::When::UserPercent(scoped_percent(scoped, syntax)?)))
}

fn category_percent(text: &str) -> Result<pb::AlertThreshold, String> {
    let syntax = "ID=CATEGORY:PCT, e.g. ai-75=ai:75";
    let (id, scoped) = threshold_id(text, syntax)?;
    Ok(alert_threshold(id, pb::alert_threshold::When::CategoryPercent(scoped_percent(scoped, syntax)?)))
}

/// A plan's period.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Period {
    Monthly,
    Quarterly,
    Semiannual,
    Annual,
}

/// The kinds of lot an operator grants (plan lots come with the plan, trial lots with a trial).
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum GrantKind {
    Addon,
    Promo,
    Adjustment,
}

/// Which reservations a list shows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum StateFilter {
    Held,
    Committed,
    Released,
    Expired,
    All,
}

/// RFC 3339 or Unix milliseconds, as Unix milliseconds (checked by clap, before anything is
/// sent).
fn unix_ms(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|at| at.timestamp_millis())
        .map_err(|error| format!("neither RFC 3339 (2026-11-01T00:00:00Z) nor Unix milliseconds: {error}"))
}

/// The request id of a change.
#[derive(Debug, clap::Args)]
pub struct Idempotency {
    /// The change's request id: run the command again with the same id and it is not applied
    /// twice [default: a new one, printed on stderr]
    #[arg(long)]
    pub request_id: Option<String>,
}

impl Idempotency {
    /// The given id, or a new one — printed on stderr, so that a change whose answer was lost
    /// can be sent again with `--request-id` and is not applied twice.
    fn id(&self) -> String {
        self.request_id.clone().unwrap_or_else(|| {
            let now = chrono::Utc::now();
            let id = format!("cli-{}-{}", now.format("%Y%m%dT%H%M%S%.6fZ"), std::process::id());
            eprintln!("request_id: {id}");
            id
        })
    }
}

/// What went wrong, and the status to exit with.
#[derive(Debug)]
struct Failure {
    status: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self { status: exit::USAGE, message: message.into() }
    }

    /// Exit 4 when the sidecar could not do it (retrying may help), 3 when it will not.
    fn from_status(status: &tonic::Status) -> Self {
        use tonic_types::StatusExt;
        let code = match status.code() {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss
            | Code::Cancelled
            | Code::ResourceExhausted
            | Code::Aborted => exit::FAILED,
            Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated => exit::REFUSED,
        };
        let details = status.get_error_details();
        let mut message = format!("{:?}: {}", status.code(), status.message());
        if let Some(info) = details.error_info() {
            message.push_str(&format!(" [{}]", info.reason));
        }
        if let Some(delay) = details.retry_info().and_then(|retry| retry.retry_delay) {
            message.push_str(&format!(" (retry after {} ms with the same --request-id)", delay.as_millis()));
        }
        Self { status: code, message }
    }
}

/// Runs one command; the answer on stdout, an error on stderr; returns the exit status.
pub async fn run(operation: Operation, connection: Connection) -> ExitCode {
    let json = connection.json;
    let result = match connect(&connection).await {
        Ok(clients) => call(operation, clients).await,
        Err(failure) => Err(failure),
    };
    match result {
        Ok(answer) => {
            println!("{}", if json { answer.json } else { answer.table });
            ExitCode::from(if answer.declined { exit::DECLINED } else { exit::DONE })
        }
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

/// How long reaching the sidecar may take before the command gives up (exit 4).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The deadline of the command's one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

type Authorized = InterceptedService<Channel, Bearer>;

struct Clients {
    admin: CreditAdminClient<Authorized>,
    authorizer: CreditAuthorizerClient<Authorized>,
}

/// Adds `authorization: Bearer <token>` when there is a token.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

async fn connect(connection: &Connection) -> Result<Clients, Failure> {
    let address = &connection.address;
    let mut endpoint = Endpoint::from_shared(address.clone())
        .map_err(|error| Failure::usage(format!("address {address:?}: {error}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    if address.starts_with("https://") {
        let tls = ClientTlsConfig::new();
        let tls = match &connection.ca_pem {
            Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
            None => tls.with_native_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|error| Failure::usage(format!("TLS for {address}: {error}")))?;
    }
    let bearer = match &connection.token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| Failure::usage("the token holds characters a header cannot carry"))?,
        ),
        None => None,
    };
    let channel = endpoint.connect().await.map_err(|error| Failure {
        status: exit::FAILED,
        message: format!("cannot reach the sidecar at {address}: {}", source_chain(&error)),
    })?;
    Ok(Clients {
        admin: CreditAdminClient::with_interceptor(channel.clone(), Bearer(bearer.clone())),
        authorizer: CreditAuthorizerClient::with_interceptor(channel, Bearer(bearer)),
    })
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(error) = source {
        let cause = error.to_string();
        // Some errors repeat their source's text in their own.
        if !text.contains(&cause) {
            text.push_str(&format!(": {cause}"));
        }
        source = error.source();
    }
    text
}

/// A response, as both outputs, and whether it was a decline.
struct Answer {
    table: String,
    json: String,
    declined: bool,
}

impl Answer {
    fn new<T: serde::Serialize>(response: &T, table: String, outcome: Option<pb::Outcome>) -> Self {
        let json = serde_json::to_string_pretty(response)
            .unwrap_or_else(|error| serde_json::json!({ "error": error.to_string() }).to_string());
        Self { table, json, declined: outcome.is_some_and(|outcome| outcome != pb::Outcome::Ok) }
    }
}

async fn call(operation: Operation, mut clients: Clients) -> Result<Answer, Failure> {
    let grpc = |status: tonic::Status| Failure::from_status(&status);
    match operation {
        Operation::Account(AccountCommand::Show { account, .. }) => {
            let request = pb::GetAccountRequest { account_id: account };
            let response = clients.admin.get_account(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::account(&response), None))
        }
        Operation::Plan(PlanCommand::Set(args)) => {
            let request = plan_request(&args);
            let response = clients.admin.set_plan(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::plan_set(&response), Some(response.outcome())))
        }
        Operation::Grant(args) => {
            let request = grant_request(&args);
            let response = clients.admin.grant(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::granted(&response), Some(response.outcome())))
        }
        Operation::Trial(TrialCommand::Start(args)) => {
            let request = pb::StartTrialRequest {
                account_id: args.account,
                credits: args.credits,
                duration_ms: args.days.saturating_mul(86_400_000),
                request_id: args.idempotency.id(),
                create_account: args.create_account,
            };
            let response = clients.admin.start_trial(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::trial(&response), Some(response.outcome())))
        }
        Operation::UserLimit(UserLimitCommand::Set(args)) => {
            let request = pb::SetUserLimitRequest {
                account_id: args.account,
                user_id: args.user,
                limit: if args.none { None } else { args.limit },
                request_id: args.idempotency.id(),
            };
            let response = clients.admin.set_user_limit(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::user_limit(&response), Some(response.outcome())))
        }
        Operation::CategoryBudget(CategoryBudgetCommand::Set(args)) => {
            let request = pb::SetCategoryBudgetRequest {
                account_id: args.account,
                category: args.category,
                budget: if args.none { None } else { args.budget },
                request_id: args.idempotency.id(),
            };
            let response = clients.admin.set_category_budget(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::category_budget(&response), Some(response.outcome())))
        }
        Operation::Alerts(command) => alerts(command, clients).await,
        other => read_or_release(other, clients).await,
    }
}

/// `alerts set` and `alerts list`.
async fn alerts(command: AlertsCommand, mut clients: Clients) -> Result<Answer, Failure> {
    let grpc = |status: tonic::Status| Failure::from_status(&status);
    match command {
        AlertsCommand::List(args) => {
            let request = pb::ListAlertsRequest {
                account_id: args.account,
                page_size: args.page_size,
                page_token: args.page_token.unwrap_or_default(),
            };
            let response = clients.admin.list_alerts(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::alerts(&response), None))
        }
        AlertsCommand::Set(args) => {
            let request =
                pb::SetAlertThresholdsRequest { account_id: args.account, thresholds: args.thresholds.thresholds() };
            let response = clients.admin.set_alert_thresholds(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::thresholds(&response.thresholds), None))
        }
    }
}

/// The reads and Release (the rest of [`call`]).
async fn read_or_release(operation: Operation, mut clients: Clients) -> Result<Answer, Failure> {
    let grpc = |status: tonic::Status| Failure::from_status(&status);
    match operation {
        Operation::Usage(args) => {
            let request = pb::GetUsageRequest {
                account_id: args.account,
                cycle_start_unix_ms: args.cycle_start.unwrap_or(0),
                reservation_id: String::new(),
            };
            let response = clients.admin.get_usage(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::usage(&response), None))
        }
        Operation::History(args) => {
            let request = pb::GetAccountHistoryRequest {
                account_id: args.account,
                page_size: args.limit,
                page_token: args.before.map(|seq| seq.to_string()).unwrap_or_default(),
            };
            let response = clients.admin.get_account_history(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::history(&response), None))
        }
        Operation::Reservations(ReservationsCommand::List(args)) => {
            let request = pb::ListReservationsRequest {
                account_id: args.account,
                state: reservation_state(args.state) as i32,
                page_size: args.limit,
                page_token: String::new(),
                settled: args.settled,
            };
            let response = clients.admin.list_reservations(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::reservations(&response.reservations), None))
        }
        Operation::Reservations(ReservationsCommand::Show { reservation, .. }) => {
            let request = pb::GetReservationRequest { reservation_id: reservation };
            let response = clients.authorizer.get_reservation(request).await.map_err(grpc)?.into_inner();
            let table = response.reservation.as_ref().map(show::reservation).unwrap_or_default();
            Ok(Answer::new(&response, table, None))
        }
        Operation::Release(args) => {
            let request = pb::ReleaseRequest { reservation_id: args.reservation, request_id: args.idempotency.id() };
            let response = clients.authorizer.release(request).await.map_err(grpc)?.into_inner();
            Ok(Answer::new(&response, show::released(&response), Some(response.outcome())))
        }
        Operation::Account(_)
        | Operation::Plan(_)
        | Operation::Grant(_)
        | Operation::Trial(_)
        | Operation::UserLimit(_)
        | Operation::CategoryBudget(_)
        | Operation::Alerts(_) => {
            unreachable!("changes and alerts are sent by `call`")
        }
    }
}

fn plan_request(args: &PlanArgs) -> pb::SetPlanRequest {
    let period = match args.period {
        Period::Monthly => pb::Period::Monthly,
        Period::Quarterly => pb::Period::Quarterly,
        Period::Semiannual => pb::Period::Semiannual,
        Period::Annual => pb::Period::Annual,
    };
    pb::SetPlanRequest {
        account_id: args.account.clone(),
        period: period as i32,
        anchor_unix_ms: args.anchor.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        plan_credits: args.credits,
        addon_credits: args.addon,
        request_id: args.idempotency.id(),
    }
}

fn grant_request(args: &GrantArgs) -> pb::GrantRequest {
    let kind = match args.kind {
        GrantKind::Addon => pb::LotKind::Addon,
        GrantKind::Promo => pb::LotKind::Promo,
        GrantKind::Adjustment => pb::LotKind::Adjustment,
    };
    pb::GrantRequest {
        account_id: args.account.clone(),
        kind: kind as i32,
        amount: args.credits,
        expires_unix_ms: args.expires.unwrap_or(0),
        request_id: args.idempotency.id(),
        create_account: args.create_account,
    }
}

fn reservation_state(state: StateFilter) -> pb::ReservationState {
    match state {
        StateFilter::Held => pb::ReservationState::Held,
        StateFilter::Committed => pb::ReservationState::Committed,
        StateFilter::Released => pb::ReservationState::Released,
        StateFilter::Expired => pb::ReservationState::Expired,
        StateFilter::All => pb::ReservationState::Unspecified,
    }
}
