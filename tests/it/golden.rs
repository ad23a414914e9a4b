//! Golden tests: the formats that outlive a binary, rendered from the code and compared with the
//! texts under `tests/golden/` — request fingerprints of every command, the event JSON of every
//! kind, the SQL schema as each database reports it, the messages and fields of the gRPC API, and
//! what Redis holds for an account after one call of each kind (layout 4). (The Redis key names
//! and the shard of an account are pinned in `layout.rs`; the embedded engine's remembered
//! answers and snapshots in `src/ledger/durable.rs`.)
//!
//! A failure here means a durable format changed. Old data, in-flight retries and deployed
//! clients still speak the old one: give the format a new version and an upgrade path
//! (ARCHITECTURE.md, "Durable formats") before you accept the new text. To accept it, run the
//! test with `GOLDEN_UPDATE=1` and commit the changed file with the reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use credit_sidecar::ledger::command::{
    Charge, Commit, Extend, Grant, Partial, Plan, Release, Reserve, SetCategoryBudget, SetPlan, SetUserLimit,
    StartTrial,
};
use credit_sidecar::ledger::event::{Draw, EventKind};
use credit_sidecar::ledger::{
    AccountId, BusinessKey, Labels, LotKind, Period, RequestId, ReservationId, ReservationState, Rules, UserId, wire,
};
use credit_sidecar::settle::store::Store;
use prost::Message as _;
use sqlx::Row as _;

use crate::servers::{PostgresServer, RedisServer};

/// Compares `actual` with `tests/golden/<name>`, or writes it there under `GOLDEN_UPDATE=1`.
fn assert_golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(&path, actual).expect("write the golden file");
        return;
    }
    let pinned = std::fs::read_to_string(&path).unwrap_or_default();
    if let Err(message) = compare(name, &pinned, actual) {
        panic!("{message}");
    }
}

fn compare(name: &str, pinned: &str, actual: &str) -> Result<(), String> {
    if pinned == actual {
        return Ok(());
    }
    let line = pinned
        .lines()
        .zip(actual.lines())
        .position(|(pinned, actual)| pinned != actual)
        .unwrap_or(pinned.lines().count().min(actual.lines().count()));
    Err(format!(
        "{name} is a durable format and it changed (first difference at line {}):\n  pinned: {:?}\n  now:    {:?}\n\
         Give it a new version and an upgrade path (ARCHITECTURE.md, \"Durable formats\"), then accept the new \
         text with GOLDEN_UPDATE=1.",
        line + 1,
        pinned.lines().nth(line).unwrap_or("<end>"),
        actual.lines().nth(line).unwrap_or("<end>"),
    ))
}

#[test]
fn a_changed_text_fails_naming_the_format_and_the_line() {
    let message = compare("events.txt", "a\nb\n", "a\nc\n").expect_err("another text fails");
    assert!(message.starts_with("events.txt is a durable format and it changed (first difference at line 2)"));
    assert!(message.contains("pinned: \"b\"") && message.contains("now:    \"c\""), "{message}");
    assert!(compare("events.txt", "a\n", "a\nmore\n").unwrap_err().contains("line 2"));
    assert_eq!(compare("events.txt", "same\n", "same\n"), Ok(()));
}

fn account() -> AccountId {
    AccountId::parse("acme").unwrap()
}

fn request() -> RequestId {
    RequestId::parse("r-1").unwrap()
}

fn labels() -> Labels {
    Labels::parse([("provider".to_owned(), "x".to_owned()), ("row".to_owned(), "17".to_owned())]).unwrap()
}

fn reservation() -> ReservationId {
    ReservationId { account: account(), seq: 7 }
}

/// One command of each kind with fixed fields (and a Grant of each lot kind a Grant takes): a
/// request id is remembered with its fingerprint, so a changed fingerprint turns every retry in
/// flight during a deploy into ALREADY_EXISTS.
#[test]
fn request_fingerprints_are_pinned() {
    let rules = Rules::default();
    let email = rules.category("email").unwrap();
    let key = BusinessKey::parse_optional("contact:123:mobile").unwrap();
    let user = UserId::parse("ann").unwrap();
    let mut lines = vec![
        (
            "reserve",
            Reserve {
                account: account(),
                user: user.clone(),
                category: email.clone(),
                amount: 50,
                ttl_ms: 300_000,
                request: request(),
                labels: labels(),
                partial: None,
            }
            .fingerprint(),
        ),
        (
            "reserve, partial",
            Reserve {
                account: account(),
                user: user.clone(),
                category: email.clone(),
                amount: 50,
                ttl_ms: 300_000,
                request: request(),
                labels: labels(),
                partial: Some(Partial { unit: 5, min_units: 2 }),
            }
            .fingerprint(),
        ),
        (
            "commit",
            Commit {
                reservation: reservation(),
                amount: 3,
                final_commit: true,
                request: request(),
                business_key: key.clone(),
                labels: labels(),
            }
            .fingerprint(),
        ),
        (
            "extend",
            Extend { reservation: reservation(), amount: 2, ttl_ms: Some(60_000), request: request(), partial: None }
                .fingerprint(),
        ),
        (
            "extend, partial",
            Extend {
                reservation: reservation(),
                amount: 10,
                ttl_ms: None,
                request: request(),
                partial: Some(Partial { unit: 5, min_units: 1 }),
            }
            .fingerprint(),
        ),
        (
            "extend, no ttl",
            Extend { reservation: reservation(), amount: 0, ttl_ms: None, request: request(), partial: None }
                .fingerprint(),
        ),
        ("release", Release { reservation: reservation(), request: request() }.fingerprint()),
        (
            "charge",
            Charge {
                account: account(),
                user: user.clone(),
                category: email.clone(),
                amount: 1,
                request: request(),
                business_key: key,
                labels: Labels::default(),
                overdraft: false,
            }
            .fingerprint(),
        ),
        (
            "charge, overdraft",
            Charge {
                account: account(),
                user: user.clone(),
                category: email.clone(),
                amount: 1,
                request: request(),
                business_key: None,
                labels: Labels::default(),
                overdraft: true,
            }
            .fingerprint(),
        ),
        (
            "set_plan",
            SetPlan {
                account: account(),
                plan: Plan {
                    period: Period::Quarterly,
                    anchor_ms: 1_769_817_600_000,
                    plan_credits: 1_000,
                    addon_credits: 200,
                },
                request: request(),
            }
            .fingerprint(),
        ),
        (
            "set_user_limit",
            SetUserLimit { account: account(), user: user.clone(), limit: Some(40), request: request() }.fingerprint(),
        ),
        (
            "set_user_limit, none",
            SetUserLimit { account: account(), user, limit: None, request: request() }.fingerprint(),
        ),
        (
            "set_category_budget",
            SetCategoryBudget { account: account(), category: email.clone(), budget: Some(300), request: request() }
                .fingerprint(),
        ),
        (
            "set_category_budget, none",
            SetCategoryBudget { account: account(), category: email.clone(), budget: None, request: request() }
                .fingerprint(),
        ),
        (
            "start_trial",
            StartTrial {
                account: account(),
                credits: 100,
                duration_ms: 1_209_600_000,
                request: request(),
                create_account: false,
            }
            .fingerprint(),
        ),
    ];
    let grants =
        [("grant addon", LotKind::Addon), ("grant promo", LotKind::Promo), ("grant adjustment", LotKind::Adjustment)];
    for (name, kind) in grants {
        let grant = Grant {
            account: account(),
            kind,
            amount: 500,
            expires_ms: None,
            request: request(),
            create_account: false,
        };
        lines.push((name, grant.fingerprint()));
    }
    let text: String = lines.iter().map(|(name, fingerprint)| format!("{name}: {}\n", fingerprint.0)).collect();
    assert_golden("fingerprints.txt", &text);
}

/// The JSON of each event kind, as the Redis functions write it to the outbox, the embedded
/// engine to SQL, and `ledger_events.data` keeps it (settlement compares it byte for byte).
#[test]
fn event_json_is_pinned() {
    let plan = Plan { period: Period::Monthly, anchor_ms: 1_769_817_600_000, plan_credits: 1_000, addon_credits: 200 };
    let cycle = credit_sidecar::ledger::cycle::Cycle { start_ms: 1_769_817_600_000, end_ms: 1_772_236_800_000 };
    let draws = vec![Draw { lot: 1, amount: 4 }, Draw { lot: 3, amount: 999_999_999_999 }];
    let labels = BTreeMap::from([("provider".to_owned(), "x \"quoted\" é".to_owned())]);
    let kinds = [
        EventKind::PlanSet { plan, cycle },
        EventKind::CycleStarted { cycle },
        EventKind::LotGranted {
            lot: 2,
            kind: LotKind::Promo,
            amount: 10_000_000_000_000,
            expires_ms: 9,
            from_plan: false,
        },
        EventKind::LotGranted {
            lot: 1,
            kind: LotKind::Plan,
            amount: 1_000,
            expires_ms: 1_772_236_800_000,
            from_plan: true,
        },
        EventKind::LotExpired { lot: 2, amount: 0 },
        EventKind::UserLimitSet { user: "ann".into(), limit: None },
        EventKind::UserLimitSet { user: "bob".into(), limit: Some(0) },
        EventKind::CategoryBudgetSet { category: "ai".into(), budget: Some(300) },
        EventKind::CategoryBudgetSet { category: "ai".into(), budget: None },
        EventKind::Reserved {
            reservation: 4,
            user: "ann".into(),
            category: "email".into(),
            amount: 5,
            draws: draws.clone(),
            deadline_ms: 77,
            labels: labels.clone(),
        },
        EventKind::Extended { reservation: 4, amount: 0, draws: vec![], deadline_ms: 88 },
        EventKind::Committed {
            reservation: 4,
            user: "ann".into(),
            category: "email".into(),
            cycle_start_ms: 1_000,
            amount: 3,
            draws: draws.clone(),
            business_key: Some("contact:1".into()),
            already_charged: false,
            labels,
        },
        EventKind::Committed {
            reservation: 5,
            user: "bob".into(),
            category: "waterfall".into(),
            cycle_start_ms: 1_000,
            amount: 0,
            draws: vec![],
            business_key: None,
            already_charged: true,
            labels: BTreeMap::new(),
        },
        EventKind::Closed { reservation: 4, state: ReservationState::Expired, returned: draws.clone(), expired: 2 },
        EventKind::Closed { reservation: 5, state: ReservationState::Released, returned: vec![], expired: 0 },
        EventKind::Closed { reservation: 6, state: ReservationState::Committed, returned: draws, expired: 0 },
        EventKind::Overdrawn {
            reservation: 6,
            user: "ann".into(),
            category: "dialer".into(),
            cycle_start_ms: 1_000,
            amount: 12,
            business_key: Some("call:9".into()),
            labels: BTreeMap::from([("region".to_owned(), "eu".to_owned())]),
        },
        EventKind::Overdrawn {
            reservation: 0,
            user: "bob".into(),
            category: "dialer".into(),
            cycle_start_ms: 1_000,
            amount: 3,
            business_key: None,
            labels: BTreeMap::new(),
        },
        EventKind::Repaid { lot: 7, amount: 15 },
    ];
    let mut text = String::new();
    for kind in kinds {
        let (name, data) = wire::encode(&kind);
        assert_eq!(wire::decode(name, &data).unwrap(), kind, "{name} decodes to what it encodes");
        writeln!(text, "{name} {data}").unwrap();
    }
    assert_golden("events.txt", &text);
}

/// The SQLite schema after every migration, as `sqlite_master` reports it.
#[tokio::test]
async fn sqlite_schema_is_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/credits.db?mode=rwc", dir.path().display());
    Store::connect(&url).await.expect("migrate a fresh SQLite ledger");
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' \
         AND sql IS NOT NULL ORDER BY type, name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let text: String = rows
        .iter()
        .map(|row| format!("{} {}:\n{}\n\n", row.get::<String, _>(0), row.get::<String, _>(1), row.get::<String, _>(2)))
        .collect();
    assert_golden("schema-sqlite.txt", &text);
}

/// The PostgreSQL schema after every migration: tables, columns (type, nullability, default),
/// constraints and indexes, as the catalog reports them.
#[tokio::test]
async fn postgres_schema_is_pinned() {
    let server = PostgresServer::start();
    let url = server.fresh_url();
    Store::connect(&url).await.expect("migrate a fresh PostgreSQL ledger");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let columns = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                coalesce(column_default, '')::text \
         FROM information_schema.columns WHERE table_schema = current_schema() AND table_name NOT LIKE '_sqlx%' \
         ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let mut text = String::new();
    for row in &columns {
        let (table, column, kind, nullable, default) = (
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<String, _>(2),
            row.get::<String, _>(3),
            row.get::<String, _>(4),
        );
        let null = if nullable == "YES" { "" } else { " not null" };
        let default = if default.is_empty() { String::new() } else { format!(" default {default}") };
        writeln!(text, "column {table}.{column} {kind}{null}{default}").unwrap();
    }
    let constraints = sqlx::query(
        "SELECT conrelid::regclass::text, conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
         WHERE connamespace = current_schema()::regnamespace AND conrelid::regclass::text NOT LIKE '_sqlx%' \
         ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for row in &constraints {
        writeln!(
            text,
            "constraint {} {}: {}",
            row.get::<String, _>(0),
            row.get::<String, _>(1),
            row.get::<String, _>(2)
        )
        .unwrap();
    }
    let indexes = sqlx::query(
        "SELECT indexname::text, replace(indexdef, current_schema() || '.', '') FROM pg_indexes \
         WHERE schemaname = current_schema() AND tablename NOT LIKE '_sqlx%' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for row in &indexes {
        writeln!(text, "index {}: {}", row.get::<String, _>(0), row.get::<String, _>(1)).unwrap();
    }
    assert_golden("schema-postgres.txt", &text);
}

/// Every message, field (number, type, label), enum value and method of `credits.v1`: what
/// deployed clients encode and decode. Comments may change; these may not.
#[test]
fn the_api_wire_form_is_pinned() {
    let set = prost_types::FileDescriptorSet::decode(credit_sidecar::api::FILE_DESCRIPTOR_SET).unwrap();
    let mut text = String::new();
    for file in set.file.iter().filter(|file| file.package() == "credits.v1") {
        writeln!(text, "file {}", file.name()).unwrap();
        for message in &file.message_type {
            describe_message(&mut text, "", message);
        }
        for enumeration in &file.enum_type {
            describe_enum(&mut text, "", enumeration);
        }
        for service in &file.service {
            for method in &service.method {
                writeln!(
                    text,
                    "rpc {}.{}({}) returns ({})",
                    service.name(),
                    method.name(),
                    method.input_type(),
                    method.output_type()
                )
                .unwrap();
            }
        }
    }
    assert_golden("api.txt", &text);
}

fn describe_message(text: &mut String, outer: &str, message: &prost_types::DescriptorProto) {
    let name = format!("{outer}{}", message.name());
    writeln!(text, "message {name}").unwrap();
    for field in &message.field {
        let kind =
            if field.type_name().is_empty() { format!("{:?}", field.r#type()) } else { field.type_name().to_owned() };
        let oneof = field.oneof_index.map_or(String::new(), |index| {
            format!(" oneof {}", message.oneof_decl.get(index as usize).map_or("?", |oneof| oneof.name()))
        });
        let optional = if field.proto3_optional() { " optional" } else { "" };
        writeln!(text, "  {} = {} {:?} {kind}{optional}{oneof}", field.name(), field.number(), field.label()).unwrap();
    }
    for nested in &message.nested_type {
        describe_message(text, &format!("{name}."), nested);
    }
    for enumeration in &message.enum_type {
        describe_enum(text, &format!("{name}."), enumeration);
    }
}

fn describe_enum(text: &mut String, outer: &str, enumeration: &prost_types::EnumDescriptorProto) {
    writeln!(text, "enum {outer}{}", enumeration.name()).unwrap();
    for value in &enumeration.value {
        writeln!(text, "  {} = {}", value.name(), value.number()).unwrap();
    }
}

/// What Redis holds, key by key, after a plan, a grant, a user limit, a category budget, a
/// Reserve with labels, a Commit with a business key, an Extend, and a second hold released: the
/// fields and members the Lua writes and reads back (layout 4). Every deployed Redis holds these;
/// a sidecar that reads them otherwise needs a new layout version and an upgrade path. The outbox
/// entries' ids (Redis's own clock) are left out; their fields are pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_layout_is_pinned() {
    use std::sync::Arc;

    use credit_sidecar::engine::redis::RedisEngine;
    use credit_sidecar::ledger::ManualClock;

    let server = RedisServer::start();
    let settings = crate::harness::redis_settings(vec![server.url()], false);
    let t0 = crate::harness::t0();
    let clock = ManualClock::new(t0);
    let redis = RedisEngine::connect_with_test_clock(&settings, 86_400_000, Arc::new(clock.clone())).await.unwrap();
    let email = Rules::default().category("email").unwrap();
    let ann = UserId::parse("ann").unwrap();
    let id = |name: &str| RequestId::parse(name).unwrap();
    let plan =
        Plan { period: Period::Monthly, anchor_ms: crate::harness::anchor(), plan_credits: 1000, addon_credits: 0 };
    redis.set_plan(&SetPlan { account: account(), plan, request: id("plan-1") }).await.unwrap();
    let grant = Grant {
        account: account(),
        kind: LotKind::Promo,
        amount: 50,
        expires_ms: Some(t0 + 30 * 86_400_000),
        request: id("grant-1"),
        create_account: false,
    };
    redis.grant(&grant).await.unwrap();
    redis
        .set_user_limit(&SetUserLimit {
            account: account(),
            user: ann.clone(),
            limit: Some(500),
            request: id("limit-1"),
        })
        .await
        .unwrap();
    let budget =
        SetCategoryBudget { account: account(), category: email.clone(), budget: Some(800), request: id("budget-1") };
    redis.set_category_budget(&budget).await.unwrap();
    let reserve = |amount: i64, name: &str| Reserve {
        account: account(),
        user: ann.clone(),
        category: email.clone(),
        amount,
        ttl_ms: 60_000,
        request: id(name),
        labels: labels(),
        partial: None,
    };
    let first = redis.reserve(&reserve(100, "reserve-1")).await.unwrap().done().unwrap().reservation;
    clock.advance(1_000);
    let commit = Commit {
        reservation: first.clone(),
        amount: 30,
        final_commit: false,
        request: id("commit-1"),
        business_key: BusinessKey::parse_optional("contact:123:mobile").unwrap(),
        labels: labels(),
    };
    redis.commit(&commit).await.unwrap();
    let extend =
        Extend { reservation: first, amount: 10, ttl_ms: Some(120_000), request: id("extend-1"), partial: None };
    redis.extend(&extend).await.unwrap();
    let second = redis.reserve(&reserve(20, "reserve-2")).await.unwrap().done().unwrap().reservation;
    redis.release(&Release { reservation: second, request: id("release-1") }).await.unwrap();

    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut connection).await.unwrap();
    keys.sort();
    let mut text = String::new();
    let shown = |bytes: &[u8]| format!("{:?}", String::from_utf8_lossy(bytes));
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut connection).await.unwrap();
        writeln!(text, "{key} ({kind})").unwrap();
        let mut lines: Vec<String> = match kind.as_str() {
            "string" => {
                let value: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut connection).await.unwrap();
                vec![shown(&value)]
            }
            "hash" => {
                let entries: Vec<(Vec<u8>, Vec<u8>)> =
                    redis::cmd("HGETALL").arg(&key).query_async(&mut connection).await.unwrap();
                entries.iter().map(|(field, value)| format!("{} = {}", shown(field), shown(value))).collect()
            }
            "zset" => {
                let members: Vec<(Vec<u8>, String)> = redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                // In score order, as Redis keeps them (not sorted again below).
                let lines = members.iter().map(|(member, score)| format!("{score} {}", shown(member))).collect();
                text.extend(lines_of(lines));
                continue;
            }
            "list" => {
                let items: Vec<Vec<u8>> =
                    redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut connection).await.unwrap();
                // In order (not sorted again below).
                text.extend(lines_of(items.iter().map(|item| shown(item)).collect()));
                continue;
            }
            "set" => {
                let members: Vec<Vec<u8>> =
                    redis::cmd("SMEMBERS").arg(&key).query_async(&mut connection).await.unwrap();
                members.iter().map(|member| shown(member)).collect()
            }
            "stream" => {
                let entries: Vec<(String, Vec<Vec<u8>>)> =
                    redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query_async(&mut connection).await.unwrap();
                let lines = entries
                    .iter()
                    .map(|(_, fields)| fields.iter().map(|field| shown(field)).collect::<Vec<_>>().join(" "))
                    .collect();
                text.extend(lines_of(lines));
                continue;
            }
            other => panic!("{key}: a key of type {other} this test does not know"),
        };
        lines.sort();
        text.extend(lines_of(lines));
    }
    assert_golden("redis-layout.txt", &text);
}

/// Indented lines, for the golden text.
fn lines_of(lines: Vec<String>) -> impl Iterator<Item = String> {
    lines.into_iter().map(|line| format!("  {line}\n"))
}
