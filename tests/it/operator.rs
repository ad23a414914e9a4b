//! The operator commands as an operator runs them: the real binary calling a real sidecar over
//! gRPC — tables by default, `--json` for scripts, exit statuses that tell a decline (1) from a
//! bad command line (2), a refusal (3) and an unreachable sidecar (4); tokens from a file or the
//! environment; the address from the configuration.

use std::process::{Command, Output};

use credit_sidecar::api::pb;
use credit_sidecar::api::pb::credit_authorizer_client::CreditAuthorizerClient;
use serde_json::Value;

use crate::harness::{amount_cost, eventually, reserve_request};
use crate::process::{Sidecar, Workdir};
use crate::servers::free_port;

const BINARY: &str = env!("CARGO_BIN_EXE_credit-sidecar");

/// `credit-sidecar <args>` with none of this environment's settings, calling `address`.
fn operator(address: &str, args: &[&str]) -> Output {
    let mut command = Command::new(BINARY);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CREDIT_SIDECAR_") {
            command.env_remove(name);
        }
    }
    command.args(args).args(["--address", address]).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit status `code`, with the output in the failure message.
fn expect(output: &Output, code: i32) -> &Output {
    assert_eq!(output.status.code(), Some(code), "stdout:\n{}\nstderr:\n{}", stdout(output), stderr(output));
    output
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| panic!("not JSON ({error}):\n{}", stdout(output)))
}

/// An account's whole life through the commands: plan, grant, trial (twice: the second is a
/// decline), a user limit, its holds listed, shown and released (twice: the second is a
/// decline), its usage once settled; a refusal and a bad command line change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_an_account_from_the_command_line() {
    let work = Workdir::new();
    let mut sidecar = Sidecar::spawn(work.command());
    let serving = sidecar.serving().await;
    let address = format!("http://{}", serving.grpc);
    let run = |args: &[&str]| operator(&address, args);

    let plan = run(&["plan", "set", "acme", "--credits", "100", "--anchor", "2026-11-01T00:00:00Z"]);
    let plan = stdout(expect(&plan, 0));
    assert!(plan.lines().any(|line| line.split_whitespace().eq(["outcome", "ok"])), "{plan}");
    assert!(plan.contains("granted 100  available 100"), "{plan}");

    let grant = run(&["grant", "acme", "--credits", "50", "--kind", "promo", "--request-id", "promo-1", "--json"]);
    let grant = json(expect(&grant, 0));
    assert_eq!(grant["outcome"], "OUTCOME_OK", "{grant}");
    assert_eq!(grant["totals"]["granted"], "150", "int64 as the protobuf JSON mapping writes it: {grant}");
    // The same request id again: answered as before, not granted twice.
    let again = run(&["grant", "acme", "--credits", "50", "--kind", "promo", "--request-id", "promo-1", "--json"]);
    assert_eq!(json(expect(&again, 0))["totals"]["granted"], "150");

    expect(&run(&["trial", "start", "acme", "--credits", "5"]), 0);
    let second = run(&["trial", "start", "acme", "--credits", "5"]);
    assert!(stdout(expect(&second, 1)).contains("trial_already_used"), "a decline is exit 1");

    let limit = run(&["user-limit", "set", "acme", "ann", "--limit", "40", "--json"]);
    assert_eq!(json(expect(&limit, 0))["limit"], "40");
    let budget = run(&["category-budget", "set", "acme", "ai", "60", "--json"]);
    assert_eq!(json(expect(&budget, 0))["budget"], "60");

    let shown = stdout(expect(&run(&["account", "show", "acme"]), 0));
    let header = shown.lines().find(|line| line.starts_with("LOT")).unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["LOT", "KIND", "GRANTED", "REMAINING", "GRANTED", "AT", "EXPIRES"]
    );
    assert!(shown.lines().any(|line| line.split_whitespace().take(4).eq(["2", "promo", "50", "50"])), "{shown}");
    assert!(shown.lines().any(|line| line.split_whitespace().eq(["ann", "40", "0", "40"])), "{shown}");
    assert!(shown.lines().any(|line| line.split_whitespace().eq(["ai", "60", "0", "60"])), "{shown}");

    let mut client = CreditAuthorizerClient::new(serving.channel().await);
    let hold = client.reserve(reserve_request("acme", 30, "hold-1")).await.unwrap().into_inner();
    let id = hold.reservation_id;
    let listed = stdout(expect(&run(&["reservations", "list", "acme"]), 0));
    let row = listed.lines().find(|line| line.starts_with(&id)).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(
        row.split_whitespace().take(6).collect::<Vec<_>>(),
        [id.as_str(), "ann", "enrichment", "held", "30", "30"]
    );
    let one = json(expect(&run(&["reservations", "show", &id, "--json"]), 0));
    assert_eq!(one["reservation"]["state"], "RESERVATION_STATE_HELD", "{one}");

    client
        .commit(pb::CommitRequest {
            reservation_id: id.clone(),
            cost: Some(amount_cost(12)),
            request_id: "c-1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let released = stdout(expect(&run(&["release", &id]), 0));
    assert!(released.lines().any(|line| line.split_whitespace().eq(["returned", "18"])), "{released}");
    let twice = stdout(expect(&run(&["release", &id]), 1));
    assert!(twice.contains("reservation_closed"), "{twice}");

    eventually("the commit settles into usage", std::time::Duration::from_secs(20), async || {
        let usage = run(&["usage", "acme", "--json"]);
        usage.status.success() && json(&usage)["spent"] == "12"
    })
    .await;
    let usage = stdout(expect(&run(&["usage", "acme"]), 0));
    assert!(usage.lines().any(|line| line.split_whitespace().skip(1).eq(["ann", "enrichment", "12", "1"])), "{usage}");
    // The budget in force beside its category's spend.
    assert!(usage.lines().any(|line| line.split_whitespace().eq(["ai", "60", "0"])), "{usage}");

    // The account's history, newest first, a page at a time: the release, the commit, the hold.
    let history = stdout(expect(&run(&["history", "acme", "--limit", "3"]), 0));
    // Columns are two or more spaces apart; a cell holds single spaces at most.
    fn column(line: &str, n: usize) -> Option<&str> {
        line.split("  ").map(str::trim).filter(|cell| !cell.is_empty()).nth(n)
    }
    let changes: Vec<&str> = history.lines().skip(1).take(3).filter_map(|line| column(line, 2)).collect();
    assert_eq!(changes, ["closed", "spent", "held"], "{history}");
    let older =
        history.lines().find_map(|line| line.strip_prefix("older: --before ")).unwrap_or_else(|| panic!("{history}"));
    let rest = json(expect(&run(&["history", "acme", "--before", older, "--json"]), 0));
    let first_older = rest["entries"][0]["seq"].as_str().unwrap().parse::<u64>().unwrap();
    assert_eq!(first_older + 1, older.parse::<u64>().unwrap(), "the next page starts right below: {rest}");

    // Refused by the sidecar: exit 3, the reason on stderr, nothing on stdout.
    let refused = run(&["account", "show", "no such account!"]);
    assert!(stderr(expect(&refused, 3)).contains("InvalidArgument"), "{}", stderr(&refused));
    assert!(stdout(&refused).is_empty());
    let unknown = run(&["reservations", "show", "acme/999999"]);
    assert!(stderr(expect(&unknown, 3)).contains("NotFound"), "{}", stderr(&unknown));
    // A bad command line: exit 2, and nothing was sent (the plan is unchanged).
    let bad = run(&["plan", "set", "acme", "--credits", "1", "--period", "weekly"]);
    assert!(stderr(expect(&bad, 2)).contains("--period"), "{}", stderr(&bad));
    let account = json(expect(&run(&["account", "show", "acme", "--json"]), 0));
    assert_eq!(account["plan"]["plan_credits"], "100", "{account}");
    // Nobody there: exit 4.
    let nowhere = operator(&format!("http://127.0.0.1:{}", free_port()), &["account", "show", "acme"]);
    assert!(stderr(expect(&nowhere, 4)).contains("cannot reach the sidecar"), "{}", stderr(&nowhere));
}

/// `category-budget set`, as `user-limit set`: the team's budget in one category (a table, or
/// `--json`; a request id sent again is answered as before, not applied again), a Reserve over
/// it declined naming the category, the budget beside its use in `account show`, lifted with
/// `--none`. An unknown category is refused (exit 3); a budget with `--none`, or neither, is a
/// bad command line (exit 2) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_and_lifts_a_category_budget() {
    let work = Workdir::new();
    let mut sidecar = Sidecar::spawn(work.command());
    let serving = sidecar.serving().await;
    let address = format!("http://{}", serving.grpc);
    let run = |args: &[&str]| operator(&address, args);
    expect(&run(&["plan", "set", "acme", "--credits", "100", "--anchor", "2026-11-01T00:00:00Z"]), 0);
    let mut client = CreditAuthorizerClient::new(serving.channel().await);
    let held = client.reserve(reserve_request("acme", 30, "hold-1")).await.unwrap().into_inner();
    assert_eq!(held.outcome(), pb::Outcome::Ok);

    let set = run(&["category-budget", "set", "acme", "enrichment", "50", "--request-id", "budget-1"]);
    let set = stdout(expect(&set, 0));
    for pair in [["outcome", "ok"], ["budget", "50"], ["used", "30"], ["remaining", "20"]] {
        assert!(set.lines().any(|line| line.split_whitespace().eq(pair)), "{pair:?} in:\n{set}");
    }
    let more = client.reserve(reserve_request("acme", 10, "hold-2")).await.unwrap().into_inner();
    assert_eq!(more.outcome(), pb::Outcome::Ok);
    // The same request id again: the first answer (30 used then), not a second change.
    let again = run(&["category-budget", "set", "acme", "enrichment", "50", "--request-id", "budget-1", "--json"]);
    let again = json(expect(&again, 0));
    assert_eq!(
        (&again["outcome"], &again["budget"], &again["used"]),
        (&"OUTCOME_OK".into(), &"50".into(), &"30".into())
    );

    let over = client.reserve(reserve_request("acme", 25, "hold-3")).await.unwrap().into_inner();
    assert_eq!(over.outcome(), pb::Outcome::CategoryBudgetReached);
    let decline = over.decline.unwrap();
    assert_eq!(
        (decline.scope(), decline.scope_id.as_str(), decline.category_remaining),
        (pb::Scope::Category, "enrichment", Some(10))
    );

    let shown = stdout(expect(&run(&["account", "show", "acme"]), 0));
    let header = shown.lines().find(|line| line.starts_with("CATEGORY")).unwrap_or_else(|| panic!("{shown}"));
    assert_eq!(header.split_whitespace().collect::<Vec<_>>(), ["CATEGORY", "BUDGET", "USED", "REMAINING"]);
    assert!(shown.lines().any(|line| line.split_whitespace().eq(["enrichment", "50", "40", "10"])), "{shown}");

    // A bad command line: exit 2, nothing sent. An unknown category: refused, exit 3.
    let both = run(&["category-budget", "set", "acme", "enrichment", "5", "--none"]);
    assert!(stderr(expect(&both, 2)).contains("--none"), "{}", stderr(&both));
    let neither = run(&["category-budget", "set", "acme", "enrichment"]);
    assert!(stderr(expect(&neither, 2)).contains("<BUDGET>"), "{}", stderr(&neither));
    let unknown = run(&["category-budget", "set", "acme", "gold", "5"]);
    let unknown = stderr(expect(&unknown, 3));
    assert!(unknown.contains("InvalidArgument") && unknown.contains("category: unknown category"), "{unknown}");
    let account = json(expect(&run(&["account", "show", "acme", "--json"]), 0));
    let budgets = account["category_budgets"].as_array().unwrap_or_else(|| panic!("{account}"));
    assert_eq!(budgets.len(), 1, "{account}");
    assert_eq!((&budgets[0]["category"], &budgets[0]["budget"]), (&"enrichment".into(), &"50".into()), "{account}");

    let lifted = stdout(expect(&run(&["category-budget", "set", "acme", "enrichment", "--none"]), 0));
    for pair in [["budget", "none"], ["used", "40"], ["remaining", "none"]] {
        assert!(lifted.lines().any(|line| line.split_whitespace().eq(pair)), "{pair:?} in:\n{lifted}");
    }
    let shown = stdout(expect(&run(&["account", "show", "acme"]), 0));
    assert!(shown.lines().any(|line| line.split_whitespace().eq(["enrichment", "none", "40", "none"])), "{shown}");
    let fits = client.reserve(reserve_request("acme", 25, "hold-4")).await.unwrap().into_inner();
    assert_eq!(fits.outcome(), pb::Outcome::Ok, "no budget any more");
}

/// With tokens configured: the token from `--token-file` or `CREDIT_SIDECAR_TOKEN` is sent;
/// without one the sidecar refuses (exit 3). With no `--address`, the commands call the
/// configuration's `listen` (a wildcard address as loopback), read from the same config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_the_address_come_from_flags_the_environment_or_the_configuration() {
    let work = Workdir::new();
    let token = "an-operator-token-of-32-characters";
    let tokens = work.path().join("tokens.toml");
    let entry = format!("[[tokens]]\nname = \"ops\"\ntoken = \"{token}\"\nscopes = [\"authorize\", \"admin\"]\n");
    std::fs::write(&tokens, entry).unwrap();
    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let port = free_port();
    let config = work.path().join("sidecar.toml");
    std::fs::write(&config, format!("listen = \"0.0.0.0:{port}\"\nauth_tokens_file = \"{}\"\n", tokens.display()))
        .unwrap();

    let mut command = work.bare_command();
    command.args(["--config", &config.to_string_lossy(), "--log-format", "json", "--metrics-listen", "127.0.0.1:0"]);
    let mut sidecar = Sidecar::spawn(command);
    sidecar.serving().await;

    let plain = |extra: &[&str], variable: Option<&str>| {
        let mut command = Command::new(BINARY);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CREDIT_SIDECAR_") {
                command.env_remove(name);
            }
        }
        if let Some(token) = variable {
            command.env("CREDIT_SIDECAR_TOKEN", token);
        }
        command.args(["plan", "set", "acme", "--credits", "10", "--config", &config.to_string_lossy()]);
        command.args(extra).output().unwrap()
    };
    let without = plain(&[], None);
    assert!(stderr(expect(&without, 3)).contains("Unauthenticated"), "{}", stderr(&without));
    expect(&plain(&["--token-file", &token_file.to_string_lossy()], None), 0);
    expect(&plain(&[], Some(token)), 0);
    let wrong = plain(&[], Some("not-the-token-but-32-characters-long"));
    expect(&wrong, 3);
}

/// `verify` and `rebuild`: `--help` shows their own flags and the stores', not the server's;
/// against a ledger that does not exist they refuse and create nothing (no migration).
#[test]
fn maintenance_commands_show_their_own_flags_and_never_migrate() {
    let help = Command::new(BINARY).args(["verify", "--help"]).output().unwrap();
    let help = stdout(expect(&help, 0));
    for flag in ["--account", "--json", "--redis-url", "--database-url"] {
        assert!(help.contains(flag), "verify --help shows {flag}:\n{help}");
    }
    for flag in ["--listen", "--concurrency-max", "--auth-tokens-file", "--metrics-listen"] {
        assert!(!help.contains(flag), "verify --help hides the server's {flag}:\n{help}");
    }
    let account_help = Command::new(BINARY).args(["account", "show", "--help"]).output().unwrap();
    let account_help = stdout(expect(&account_help, 0));
    assert!(account_help.contains("--address") && !account_help.contains("--redis-url"), "{account_help}");

    let work = Workdir::new();
    let missing = work.path().join("absent.db");
    let output = Command::new(BINARY)
        .args(["verify", "--redis-url", "redis://127.0.0.1:1/", "--database-url"])
        .arg(format!("sqlite://{}?mode=rwc", missing.display()))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "could not compare: {}", stderr(&output));
    assert!(stderr(&output).contains("unable to open database file"), "{}", stderr(&output));
    assert!(!missing.exists(), "verify created the ledger file");
    assert!(stdout(&output).is_empty(), "no report, and no logs on stdout: {}", stdout(&output));
}

/// A ledger one migration behind this binary: `verify` refuses it (exit 4, naming the
/// migrations) and leaves it behind — nothing migrated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_commands_refuse_a_ledger_of_another_version_and_leave_it() {
    let work = Workdir::new();
    let url = work.database_url();
    drop(credit_sidecar::settle::store::Store::connect(&url).await.unwrap());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let count =
        async || -> i64 { sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap() };
    let all = count().await;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(&pool)
        .await
        .unwrap();
    let output = Command::new(BINARY)
        .args(["verify", "--redis-url", "redis://127.0.0.1:1/", "--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(stderr(&output).contains("the ledger has migrations"), "{}", stderr(&output));
    assert_eq!(count().await, all - 1, "verify migrated the ledger");
}

/// A sidecar serving TLS: the commands verify it against `--ca-file` (or
/// `CREDIT_SIDECAR_CA_FILE`) and refuse one they cannot verify; with no address, the
/// configuration's `tls_cert_file` makes the default address `https://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_sidecar_is_verified_against_the_ca_file() {
    let pki = crate::harness::pki();
    let work = Workdir::new();
    let write = |name: &str, text: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let (ca, cert, key) = (write("ca.pem", &pki.ca), write("cert.pem", &pki.server.0), write("key.pem", &pki.server.1));
    let port = free_port();
    let config = write(
        "sidecar.toml",
        &format!("listen = \"127.0.0.1:{port}\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\n"),
    );
    let mut command = work.bare_command();
    command.args(["--config", &config, "--log-format", "json", "--metrics-listen", "127.0.0.1:0"]);
    let mut sidecar = Sidecar::spawn(command);
    sidecar.serving().await;

    let address = format!("https://localhost:{port}");
    expect(&operator(&address, &["plan", "set", "acme", "--credits", "10", "--ca-file", &ca]), 0);
    let unverified = operator(&address, &["account", "show", "acme"]);
    assert!(stderr(expect(&unverified, 4)).contains("cannot reach the sidecar"), "{}", stderr(&unverified));

    let from_config = Command::new(BINARY)
        .args(["account", "show", "acme", "--json", "--config", &config])
        .env("CREDIT_SIDECAR_CA_FILE", &ca)
        .output()
        .unwrap();
    assert_eq!(json(expect(&from_config, 0))["plan"]["plan_credits"], "10");
}

/// `alerts set` and `alerts list`: thresholds set from flags and printed back; the sidecar's own
/// pass (every 100 ms here) fires those a hold crosses, once each, and `alerts list` shows them
/// with their delivery to a webhook nobody answers (its origin only, never its path; pending,
/// with the last error and the next attempt), a page at a time. Bad flag syntax is a bad command
/// line naming the flag (exit 2), as is neither a threshold nor `--clear`; a percentage out of
/// range is refused by the sidecar (exit 3); neither changes the thresholds. `--clear` clears
/// them, and the alerts stay listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_sets_alert_thresholds_and_lists_the_alerts_they_fire() {
    let work = Workdir::new();
    let secret = work.path().join("webhook.key");
    std::fs::write(&secret, "a-webhook-signing-key\n").unwrap();
    let hook = format!("http://127.0.0.1:{}/hooks/a-secret-path", free_port());
    let config = work.path().join("sidecar.toml");
    std::fs::write(&config, format!("webhook_urls = [\"{hook}\"]\nwebhook_secret_file = \"{}\"\n", secret.display()))
        .unwrap();
    let mut command = work.command();
    command.args(["--config", &config.to_string_lossy(), "--alert-interval-ms", "100"]);
    let mut sidecar = Sidecar::spawn(command);
    let serving = sidecar.serving().await;
    let address = format!("http://{}", serving.grpc);
    let run = |args: &[&str]| operator(&address, args);
    expect(&run(&["plan", "set", "acme", "--credits", "100"]), 0);
    expect(&run(&["user-limit", "set", "acme", "ann", "--limit", "40"]), 0);
    expect(&run(&["category-budget", "set", "acme", "enrichment", "50"]), 0);

    let set = run(&[
        "alerts",
        "set",
        "acme",
        "--used-percent",
        "quarter=25",
        "--available-below",
        "low=10",
        "--depleted",
        "empty",
        "--user-percent",
        "ann-half=ann:50%",
        "--category-percent",
        "enrichment-most=enrichment:90",
    ]);
    let set = stdout(expect(&set, 0));
    for row in [
        ["THRESHOLD", "KIND", "SCOPE", "VALUE"],
        ["quarter", "used_percent", "-", "25"],
        ["low", "available_below", "-", "10"],
        ["empty", "depleted", "-", "-"],
        ["ann-half", "user_percent", "ann", "50"],
        ["enrichment-most", "category_percent", "enrichment", "90"],
    ] {
        assert!(set.lines().any(|line| line.split_whitespace().eq(row)), "{row:?} in:\n{set}");
    }

    // 30 of 100 credits used (≥ 25 %), 30 of ann's 40 (≥ 50 %); 70 available, 30 of the
    // category's 50 (< 90 %): two alerts.
    let mut client = CreditAuthorizerClient::new(serving.channel().await);
    let held = client.reserve(reserve_request("acme", 30, "hold-1")).await.unwrap().into_inner();
    assert_eq!(held.outcome(), pb::Outcome::Ok);
    let fired = |list: &Value| -> Vec<String> {
        let alerts = list["alerts"].as_array().cloned().unwrap_or_default();
        let mut ids: Vec<String> =
            alerts.iter().map(|alert| alert["threshold"]["threshold_id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    // Delivery is attempted (and fails: nobody listens) once the alerts are recorded.
    let tried = |list: &Value| {
        list["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().all(|alert| alert["deliveries"][0]["last_error"].as_str().is_some_and(|e| !e.is_empty()))
        })
    };
    eventually("the alerts fire and their delivery is tried", std::time::Duration::from_secs(20), async || {
        let list = run(&["alerts", "list", "acme", "--json"]);
        list.status.success() && fired(&json(&list)) == ["ann-half", "quarter"] && tried(&json(&list))
    })
    .await;

    let list = json(expect(&run(&["alerts", "list", "acme", "--json"]), 0));
    assert_eq!(list["thresholds"].as_array().map(Vec::len), Some(5), "{list}");
    let alert = |id: &str| {
        let alerts = list["alerts"].as_array().unwrap();
        alerts.iter().find(|alert| alert["threshold"]["threshold_id"] == id).unwrap_or_else(|| panic!("{list}"))
    };
    let (alert, ann) = (alert("quarter"), alert("ann-half")["event_id"].as_str().unwrap());
    let cycle_start = alert["cycle_start_unix_ms"].as_str().unwrap();
    let event = alert["event_id"].as_str().unwrap();
    assert!(event.starts_with(&format!("acme/quarter/{cycle_start}")), "{list}");
    assert_eq!((&alert["observed"], &alert["base"]), (&"30".into(), &"100".into()), "{list}");
    let delivery = &alert["deliveries"][0];
    assert_eq!(delivery["state"], "DELIVERY_STATE_PENDING", "{list}");
    assert!(delivery["next_attempt_unix_ms"].as_str().is_some(), "{list}");
    assert!(!list.to_string().contains("a-secret-path"), "a webhook's path is never shown: {list}");

    let table = stdout(expect(&run(&["alerts", "list", "acme"]), 0));
    let header = |first: &str| table.lines().find(|line| line.starts_with(first)).unwrap_or_else(|| panic!("{table}"));
    assert_eq!(
        header("EVENT  ").split_whitespace().collect::<Vec<_>>(),
        ["EVENT", "THRESHOLD", "FIRED", "OBSERVED", "BASE"]
    );
    assert!(
        table.lines().any(|line| {
            let cells: Vec<&str> = line.split_whitespace().collect();
            cells.len() == 5 && cells[..2] == [ann, "ann-half"] && cells[3..] == ["30", "40"]
        }),
        "{table}"
    );
    let webhook = format!("{}/…", hook.trim_end_matches("/hooks/a-secret-path"));
    let deliveries = table
        .lines()
        .skip_while(|line| !(line.starts_with("EVENT ") && line.contains(" WEBHOOK ")))
        .collect::<Vec<_>>();
    assert_eq!(
        deliveries.first().map(|line| line.split_whitespace().take(6).collect::<Vec<_>>()),
        Some(vec!["EVENT", "WEBHOOK", "STATE", "ATTEMPTS", "NEXT", "ATTEMPT"]),
        "{table}"
    );
    assert!(deliveries.iter().any(|line| line.split_whitespace().take(3).eq([ann, &webhook, "pending"])), "{table}");
    assert!(!table.contains("a-secret-path"), "{table}");
    assert!(!table.contains("older:"), "one page: {table}");

    // A page at a time: the token of the first page gives the other alert.
    let first = stdout(expect(&run(&["alerts", "list", "acme", "--page-size", "1"]), 0));
    let token =
        first.lines().find_map(|line| line.strip_prefix("older: --page-token ")).unwrap_or_else(|| panic!("{first}"));
    let page = |args: &[&str]| json(expect(&run(&[&["alerts", "list", "acme", "--json"], args].concat()), 0));
    let mut pages = fired(&page(&["--page-size", "1"]));
    pages.extend(fired(&page(&["--page-size", "1", "--page-token", token])));
    pages.sort();
    assert_eq!(pages, ["ann-half", "quarter"]);

    // A bad command line: exit 2, naming the flag, nothing sent. Out of range: refused, exit 3.
    for (args, flag) in [
        (&["--used-percent", "quarter"][..], "--used-percent"),
        (&["--used-percent", "quarter=many"][..], "--used-percent"),
        (&["--available-below", "low"][..], "--available-below"),
        (&["--user-percent", "ann-half=ann"][..], "--user-percent"),
        (&["--category-percent", "most=enrichment"][..], "--category-percent"),
        (&["--clear", "--depleted", "empty"][..], "--clear"),
        (&[][..], "--clear"),
    ] {
        let bad = run(&[&["alerts", "set", "acme"], args].concat());
        assert!(stderr(expect(&bad, 2)).contains(flag), "{args:?}: {}", stderr(&bad));
    }
    let refused = run(&["alerts", "set", "acme", "--used-percent", "most=150"]);
    let refused = stderr(expect(&refused, 3));
    assert!(refused.contains("InvalidArgument") && refused.contains("thresholds[0].used_percent"), "{refused}");
    let list = json(expect(&run(&["alerts", "list", "acme", "--json"]), 0));
    assert_eq!(list["thresholds"].as_array().map(Vec::len), Some(5), "nothing changed: {list}");

    let cleared = stdout(expect(&run(&["alerts", "set", "acme", "--clear"]), 0));
    assert!(cleared.lines().any(|line| line.split_whitespace().eq(["thresholds", "none"])), "{cleared}");
    let list = json(expect(&run(&["alerts", "list", "acme", "--json"]), 0));
    assert!(list["thresholds"].as_array().is_none_or(Vec::is_empty), "{list}");
    assert_eq!(fired(&list), ["ann-half", "quarter"], "the alerts stay: {list}");
    let table = stdout(expect(&run(&["alerts", "list", "acme"]), 0));
    assert!(table.lines().next().is_some_and(|line| line.split_whitespace().eq(["thresholds", "none"])), "{table}");
}
