//! The Redis layout as a durable contract: a Redis written by layout 1 is refused with a message
//! saying what to do, the upgrade (`rebuild --upgrade-layout`) refuses while the old outbox holds
//! events the ledger lacks, then moves the data over; a layout-1 sidecar would refuse the new
//! layout (its shard marker no longer parses). A layout-2 or layout-3 Redis is refused too and
//! converted in place, its remembered request ids kept. Key names, the layout marker and the shard of an
//! account id are pinned here (what the keys hold, in `golden.rs`): changing them strands every
//! deployed Redis.

use std::sync::Arc;

use credit_sidecar::engine::Error;
use credit_sidecar::engine::redis::{LAYOUT_VERSION, Layout, RedisEngine, request_key};
use credit_sidecar::ledger::command::{Plan, Reserve, SetPlan};
use credit_sidecar::ledger::event::Event;
use credit_sidecar::ledger::{AccountId, Labels, Ledger, ManualClock, Period, RequestId, Rules, UserId, wire};
use credit_sidecar::maintenance::{self, MaintenanceError};
use credit_sidecar::settle::store::Store;

use crate::harness::{anchor, redis_settings, t0};
use crate::servers::RedisServer;

const RETENTION: i64 = 86_400_000;

/// A hash's fields and values, in field order (HGETALL's order is the table's).
fn hash_of(server: &RedisServer, key: &str) -> std::collections::BTreeMap<String, String> {
    let all = server.cli(&["HGETALL", key]);
    let lines: Vec<&str> = all.lines().collect();
    lines.chunks(2).map(|pair| (pair[0].to_owned(), pair.get(1).copied().unwrap_or_default().to_owned())).collect()
}

/// The key q and f keep a request id under (layout 4).
fn key(id: &str) -> String {
    String::from_utf8(request_key(&RequestId::parse(id).unwrap()).to_vec()).unwrap()
}

#[test]
fn key_names_and_shards_are_pinned() {
    let layout = Layout { prefix: String::new(), shards: 16 };
    let acme = AccountId::parse("acme").unwrap();
    assert_eq!(LAYOUT_VERSION, 4);
    assert_eq!(layout.layout_value(), "4 16");
    // The shard of an account id is part of every key name: a change would move every account.
    let shards: Vec<u32> =
        ["acme", "globex", "team-1", "a"].iter().map(|id| layout.shard(&AccountId::parse(id).unwrap())).collect();
    assert_eq!(shards, [13, 13, 15, 2]);
    let keys = layout.account_keys(&acme);
    let expected = ["a", "l", "b", "e", "r", "d", "q", "p", "u", "k"].map(|kind| format!("cs:{{s13}}:{kind}:acme"));
    assert_eq!(keys[..10], expected);
    assert_eq!(keys[10], "cs:{s13}:wake");
    assert_eq!(keys[11], "cs:{s13}:events");
    assert_eq!(keys[12], "cs:{s13}:f:acme");
    assert_eq!(layout.answers_key(&acme, 7), "cs:{s13}:x:acme:7");
}

/// What a layout-1 deployment left in Redis for `acme`: its shard marker, its account hash (JSON
/// lots and plan, as layout 1 kept them) and its outbox entries (a format both layouts share).
fn write_layout_1(server: &RedisServer, events: &[Event]) {
    let layout = Layout { prefix: String::new(), shards: 16 };
    let acme = AccountId::parse("acme").unwrap();
    let keys = layout.account_keys(&acme);
    assert_eq!(server.cli(&["SET", "cs:shards", "16"]), "OK");
    let lots = r#"[{"expires":1772236800000,"from_plan":true,"granted":1000,"granted_ms":1769817600000,"id":1,"kind":"plan","remaining":1000}]"#;
    let plan = r#"{"addon":0,"anchor":1769817600000,"period":1,"plan":1000}"#;
    server.cli(&["HSET", &keys[0], "cs", "1769817600000", "ce", "1772236800000", "lots", lots, "plan", plan]);
    for event in events {
        let (kind, data) = wire::encode(&event.kind);
        let (seq, at) = (event.seq.to_string(), event.at_ms.to_string());
        let request = event.request_id.clone().unwrap_or_default();
        server.cli(&[
            "XADD", &keys[11], "*", "account", "acme", "seq", &seq, "at", &at, "request", &request, "kind", kind,
            "data", &data,
        ]);
    }
}

/// The events of putting `acme` on a 1000-credit monthly plan, from the reference model.
fn plan_events() -> Vec<Event> {
    let mut model = Ledger::new(RETENTION);
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 1000, addon_credits: 0 };
    let request = RequestId::parse("plan-1").unwrap();
    model.set_plan(t0(), &SetPlan { account: AccountId::parse("acme").unwrap(), plan, request }).unwrap();
    model.drain_events()
}

/// A Reserve of 40 credits for a minute, by ann on acme's email category.
fn hold_40(request: &str) -> Reserve {
    Reserve {
        account: AccountId::parse("acme").unwrap(),
        user: UserId::parse("ann").unwrap(),
        category: Rules::default().category("email").unwrap(),
        amount: 40,
        ttl_ms: 60_000,
        request: RequestId::parse(request).unwrap(),
        labels: Labels::default(),
        partial: None,
    }
}

/// An empty SQLite ledger in a temporary directory (kept while the directory is).
async fn sqlite_ledger() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", dir.path().join("ledger.db").display())).await.unwrap();
    (dir, store)
}

/// A private Redis, and an engine on it whose clock stands at `t0()` until moved.
async fn engine_at_t0() -> (RedisServer, RedisEngine, ManualClock) {
    engine_at(t0()).await
}

/// A private Redis, and an engine on it whose clock stands at `start` until moved.
async fn engine_at(start: i64) -> (RedisServer, RedisEngine, ManualClock) {
    let server = RedisServer::start();
    let settings = redis_settings(vec![server.url()], false);
    let clock = ManualClock::new(start);
    let redis = RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap();
    (server, redis, clock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_1_redis_is_refused_then_upgraded_from_the_ledger() {
    let server = RedisServer::start();
    let (_dir, store) = sqlite_ledger().await;
    let settings = redis_settings(vec![server.url()], false);
    let events = plan_events();
    write_layout_1(&server, &events);

    // This sidecar refuses to read it, and says what to do.
    let Err(Error::Unavailable(message)) = RedisEngine::connect(&settings, RETENTION).await else {
        panic!("a layout-1 Redis was accepted");
    };
    assert!(message.contains("layout 1") && message.contains("rebuild --upgrade-layout"), "{message}");

    // The upgrade refuses while the old outbox holds events the ledger does not have.
    let refused = maintenance::upgrade_layout(&store, &settings, RETENTION).await;
    assert!(matches!(refused, Err(MaintenanceError::Unsettled(count)) if count == events.len()), "{refused:?}");
    assert!(server.cli(&["EXISTS", "cs:shards"]) == "1", "a refused upgrade changes nothing");

    // Once settled, it wipes the old layout and rebuilds every account from the ledger.
    store.write(&events, t0()).await.unwrap();
    let upgraded = maintenance::upgrade_layout(&store, &settings, RETENTION).await.unwrap();
    assert_eq!((upgraded.from_layout, upgraded.accounts_rebuilt), (1, 1));
    assert!(upgraded.keys_deleted >= 3, "{upgraded:?}");
    assert_eq!(server.cli(&["GET", "cs:layout"]), "4 16");
    assert_eq!(server.cli(&["GET", "cs:shards"]), "see cs:layout", "a layout-1 sidecar cannot parse this");

    let clock = ManualClock::new(t0());
    let redis = RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock)).await.unwrap();
    let acme = AccountId::parse("acme").unwrap();
    let mut model = Ledger::restore(RETENTION, t0(), events).unwrap();
    assert_eq!(redis.account(&acme).await.unwrap(), model.account(t0(), &acme).unwrap());
    let reserve = hold_40("r-1");
    assert_eq!(redis.reserve(&reserve).await.unwrap(), model.reserve(t0(), &reserve).unwrap());
    // The events go on from the ledger's last sequence: nothing is handed out twice.
    let outbox = redis.outbox().await.unwrap();
    assert_eq!(outbox, model.drain_events());
}

/// Rewrites an account's remembered request ids as layout 3 kept them: q and f name the ids
/// themselves, not their keys (`ids`: every id the account remembers).
fn downgrade_requests_to_layout_3(server: &RedisServer, keys: &[String], ids: &[String]) {
    let (q, f) = (&keys[6], &keys[12]);
    let by_key: std::collections::HashMap<String, &str> = ids.iter().map(|id| (key(id), id.as_str())).collect();
    let queue = server.cli(&["LRANGE", f, "0", "-1"]);
    let items: Vec<&str> = queue.lines().map(|item| by_key.get(item).copied().unwrap_or(item)).collect();
    assert_eq!(items.len(), ids.len() + 1, "each id once, and one mark: {queue}");
    // One script for every id (a redis-cli process per command would take seconds).
    let rename = "for i = 1, #ARGV, 2 do \
                  local value = redis.call('HGET', KEYS[1], ARGV[i]) \
                  if not value then return ARGV[i + 1] end \
                  redis.call('HDEL', KEYS[1], ARGV[i]) redis.call('HSET', KEYS[1], ARGV[i + 1], value) end \
                  return 'ok'";
    let mut eval = vec!["EVAL", rename, "1", q.as_str()];
    for (key, id) in &by_key {
        eval.extend([key.as_str(), *id]);
    }
    assert_eq!(server.cli(&eval), "ok", "that id is not remembered under its key");
    server.cli(&["DEL", f]);
    let mut push = vec!["RPUSH", f.as_str()];
    push.extend(items);
    server.cli(&push);
    assert_eq!(server.cli(&["SET", "cs:layout", "3 16"]), "OK");
}

/// Rewrites an account's remembered request ids from layout 3's form to layout 2's: the answer
/// without its keep, and one purge-schedule member `q<id>` per id scored by that keep (and no
/// member `q`, no forget queue, no field `qm`).
fn downgrade_requests_to_layout_2(server: &RedisServer, keys: &[String]) {
    let (a, q, p, f) = (&keys[0], &keys[6], &keys[7], &keys[12]);
    let entries = server.cli(&["HGETALL", q]);
    let lines: Vec<&str> = entries.lines().collect();
    assert!(!lines.is_empty(), "no remembered request ids to downgrade");
    for pair in lines.chunks(2) {
        let (id, value) = (pair[0], pair[1]);
        let (keep, answer) = value.split_once('\u{1f}').expect("layout 3 keeps the keep first");
        server.cli(&["HSET", q, id, answer]);
        server.cli(&["ZADD", p, keep, &format!("q{id}")]);
    }
    assert_eq!(server.cli(&["ZREM", p, "q"]), "1", "layout 3 schedules its forget queue in p");
    assert_eq!(server.cli(&["DEL", f]), "1");
    assert_eq!(server.cli(&["HDEL", a, "qm"]), "1");
    assert_eq!(server.cli(&["SET", "cs:layout", "2 16"]), "OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_2_redis_is_refused_then_converted_in_place_keeping_request_ids() {
    converted_in_place(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_3_redis_is_refused_then_converted_in_place_keeping_request_ids() {
    converted_in_place(3, false).await;
}

/// An upgrade interrupted inside an account, one step of its conversion to keys done (from
/// layout 2, after the step that gives the ids layout 3's form), goes on where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_interrupted_inside_an_account_goes_on_where_it_stopped() {
    converted_in_place(2, true).await;
    converted_in_place(3, true).await;
}

/// An account's remembered request ids written by this layout, taken back to layout `from`'s
/// form (or, `inside`, to the state an upgrade from it leaves when interrupted after one step
/// of rekey_requests): refused, then converted in place, byte for byte, and answered as before.
async fn converted_in_place(from: u32, inside: bool) {
    use credit_sidecar::ledger::command::{Extend, SetUserLimit};

    // The upgrade reads Redis's clock: the engine's starts there too, so the hold below is
    // still open when the upgrade runs.
    let start = chrono::Utc::now().timestamp_millis();
    let (server, redis, clock) = engine_at(start).await;
    let settings = redis_settings(vec![server.url()], false);
    let (_dir, store) = sqlite_ledger().await;
    let acme = AccountId::parse("acme").unwrap();
    let layout = Layout { prefix: String::new(), shards: 16 };
    let keys = layout.account_keys(&acme).to_vec();
    let request = |name: &str| RequestId::parse(name).unwrap();
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 1000, addon_credits: 0 };
    let set_plan = SetPlan { account: acme.clone(), plan, request: request("plan-1") };
    redis.set_plan(&set_plan).await.unwrap();
    let reserve = hold_40("r-1");
    let reserved = redis.reserve(&reserve).await.unwrap();
    let held = reserved.clone().done().unwrap();
    let extend = Extend {
        reservation: held.reservation.clone(),
        amount: 0,
        // Longer than a span (retention / FORGET_MARKS): the upgrade must not queue r-1 behind
        // a mark in the future.
        ttl_ms: Some(4 * 3_600_000),
        request: request("e-1"),
        partial: None,
    };
    redis.extend(&extend).await.unwrap().done().unwrap();
    let limit = |name: &str, figure: i64| SetUserLimit {
        account: acme.clone(),
        user: UserId::parse("bob").unwrap(),
        limit: Some(figure),
        request: request(name),
    };
    let limited = redis.set_user_limit(&limit("u-1", 5)).await.unwrap();
    let mut ids: Vec<String> = ["plan-1", "r-1", "u-1"].map(str::to_owned).to_vec();
    if from == 3 || inside {
        // More ids than one conversion step takes (PURGE_MAX), so it runs in several.
        for n in 0..1_100 {
            redis.set_user_limit(&limit(&format!("many-{n}"), 5)).await.unwrap();
            ids.push(format!("many-{n}"));
        }
    }
    let (q_before, p_before, f_before) = (
        hash_of(&server, &keys[6]),
        server.cli(&["ZRANGE", &keys[7], "0", "-1", "WITHSCORES"]),
        server.cli(&["LRANGE", &keys[12], "0", "-1"]),
    );
    let qm_before = server.cli(&["HGET", &keys[0], "qm"]);
    assert_eq!(qm_before, start.to_string());
    assert_eq!(q_before.len(), ids.len(), "every account-scoped id remembered (e-1 is the hold's, in x)");
    assert!(ids.iter().all(|id| q_before.contains_key(&key(id))), "q is keyed by the ids' keys");
    drop(redis);
    downgrade_requests_to_layout_3(&server, &keys, &ids);
    if from == 2 && !inside {
        downgrade_requests_to_layout_2(&server, &keys);
    }
    if inside {
        let function = format!("{}rekey_requests", credit_sidecar::engine::redis::library::LIBRARY.prefix);
        let upgraded = layout.upgraded_key(layout.shard(&acme));
        let mut call = vec!["FCALL", function.as_str(), "14"];
        call.extend(keys.iter().map(String::as_str));
        call.extend([upgraded.as_str(), "acme", "", "86400000"]);
        assert_eq!(server.cli(&call), "0", "one step of many");
        assert_eq!(server.cli(&["HGET", &keys[0], "rk"]), (ids.len() + 1 - 1000).to_string());
        server.cli(&["SET", "cs:layout", &format!("{from} 16")]);
    }

    // This sidecar refuses to read it, and says what to do.
    let Err(Error::Unavailable(message)) = RedisEngine::connect(&settings, RETENTION).await else {
        panic!("a layout-{from} Redis was accepted");
    };
    assert!(message.contains(&format!("layout {from}")) && message.contains("rebuild --upgrade-layout"), "{message}");

    // Over another shard count it converts (and deletes) nothing, and says what to set.
    let other = credit_sidecar::engine::redis::RedisSettings { shards: 8, ..settings.clone() };
    let refused = maintenance::upgrade_layout(&store, &other, RETENTION).await;
    assert!(
        matches!(&refused, Err(MaintenanceError::Engine(Error::Unavailable(message))) if message.contains("16 shards"))
    );
    assert_eq!(server.cli(&["GET", "cs:layout"]), format!("{from} 16"));

    // The upgrade converts it in place: no settlement needed, nothing rebuilt.
    let upgraded = maintenance::upgrade_layout(&store, &settings, RETENTION).await.unwrap();
    assert_eq!(
        upgraded,
        maintenance::Upgraded { from_layout: from, accounts_converted: 1, keys_deleted: 0, accounts_rebuilt: 0 }
    );
    assert_eq!(server.cli(&["GET", "cs:layout"]), "4 16");
    // The answers are filed under their keys again (the Lua's keys are the Rust's), keeps
    // included.
    assert!(hash_of(&server, &keys[6]) == q_before, "q is not as it was");
    assert_eq!(server.cli(&["ZRANGE", &keys[7], "0", "-1", "WITHSCORES"]), p_before);
    assert_eq!(server.cli(&["HGET", &keys[0], "qm"]), qm_before);
    assert_eq!(server.cli(&["HEXISTS", &keys[0], "rk"]), "0", "no conversion left part way");
    let queue = server.cli(&["LRANGE", &keys[12], "0", "-1"]);
    if from == 3 || inside {
        assert!(queue == f_before, "the queue did not keep its order");
    } else {
        // Layout 2 kept no queue: the ids are queued in keep order (as if remembered a retention
        // before it, or now for r-1, carried on past the hold's deadline: no mark is in the
        // future).
        let mark = format!("\u{1f}{start}");
        assert_eq!(queue, [mark, key("plan-1"), key("u-1"), key("r-1")].join("\n"));
    }
    let shard = layout.shard(&acme);
    assert_eq!(server.cli(&["EXISTS", &layout.upgraded_key(shard)]), "0", "the converted set is gone");

    // Interrupted after converting the account, before recording the layout: run again, it
    // converts nothing twice.
    server.cli(&["SADD", &layout.upgraded_key(shard), "acme"]);
    server.cli(&["SET", "cs:layout", &format!("{from} 16")]);
    let rerun = maintenance::upgrade_layout(&store, &settings, RETENTION).await.unwrap();
    assert_eq!(rerun.accounts_converted, 0, "the earlier run converted it");
    assert!(hash_of(&server, &keys[6]) == q_before, "converted twice");
    assert_eq!(server.cli(&["EXISTS", &layout.upgraded_key(shard)]), "0");
    // Run again once it is done, it does nothing (it does not wipe and rebuild).
    let again = maintenance::upgrade_layout(&store, &settings, RETENTION).await.unwrap();
    assert_eq!(
        again,
        maintenance::Upgraded {
            from_layout: LAYOUT_VERSION,
            accounts_converted: 0,
            keys_deleted: 0,
            accounts_rebuilt: 0
        }
    );
    assert!(hash_of(&server, &keys[6]) == q_before, "q changed");

    // Retries of calls made before the upgrade get their first answers; a reuse is refused.
    let redis = RedisEngine::connect_with_test_clock(&settings, RETENTION, Arc::new(clock.clone())).await.unwrap();
    assert_eq!(redis.reserve(&reserve).await.unwrap(), reserved, "no second hold");
    assert_eq!(redis.set_user_limit(&limit("u-1", 5)).await.unwrap(), limited);
    let reused = Reserve { amount: 41, ..reserve.clone() };
    assert!(matches!(
        redis.reserve(&reused).await,
        Err(Error::Ledger(credit_sidecar::ledger::Error::RequestIdReused(_)))
    ));
    // The Extend carried r-1's keep past the new deadline (the Lua found r-1's answer under the
    // key Rust filed it under), and the conversion kept it: a day after the first deadline (but
    // before the extended one's day ends) r-1 is still answered.
    clock.advance(RETENTION + 60_000);
    assert_eq!(redis.reserve(&reserve).await.unwrap(), reserved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_shard_count_is_refused() {
    let server = RedisServer::start();
    let settings = redis_settings(vec![server.url()], false);
    RedisEngine::connect(&settings, RETENTION).await.unwrap();
    let other = credit_sidecar::engine::redis::RedisSettings { shards: 8, ..settings };
    let Err(Error::Unavailable(message)) = RedisEngine::connect(&other, RETENTION).await else {
        panic!("another shard count was accepted");
    };
    assert!(message.contains("\"4 8\"") && message.contains("\"4 16\""), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_registered_without_writes_and_a_lost_library_is_loaded_again() {
    let server = RedisServer::start();
    let settings = redis_settings(vec![server.url()], false);
    let redis = RedisEngine::connect(&settings, RETENTION).await.unwrap();
    // redis-cli prints each function as "name\n<name>\ndescription\n…\nflags\n<flags…>".
    let listing = server.cli(&["FUNCTION", "LIST"]);
    let flags_of = |function: &str| {
        let name = format!("{}{function}", credit_sidecar::engine::redis::library::LIBRARY.prefix);
        let entry = listing.split("\nname\n").find(|entry| entry.lines().next() == Some(name.as_str()));
        entry.unwrap_or_else(|| panic!("{function} not loaded: {listing}")).to_owned()
    };
    for read in ["balance", "account", "reservation", "list", "due"] {
        assert!(flags_of(read).contains("no-writes"), "{read}: {}", flags_of(read));
    }
    for write in ["reserve", "commit", "release", "catch_up", "sweep_account"] {
        assert!(!flags_of(write).contains("no-writes"), "{write}: {}", flags_of(write));
    }
    assert_eq!(server.cli(&["FUNCTION", "FLUSH"]), "OK");
    let acme = AccountId::parse("acme").unwrap();
    let missing = redis.balance(&acme, None).await;
    assert!(
        matches!(missing, Err(Error::Ledger(credit_sidecar::ledger::Error::AccountNotFound(_)))),
        "the call succeeds past the lost library: {missing:?}"
    );
}

/// An account left alone while hundreds of holds and lots expired: no call does more than
/// `CATCHUP_STEPS_MAX` steps of catching up, the call is made again until done, and the answers
/// and events are exactly the model's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_catch_ups_run_in_bounded_calls_and_agree_with_the_model() {
    use credit_sidecar::engine::redis::library::CATCHUP_STEPS_MAX;
    use credit_sidecar::ledger::command::Grant;
    use credit_sidecar::ledger::{Clock, LotKind};

    let (server, redis, clock) = engine_at_t0().await;
    let mut model = Ledger::new(RETENTION);
    let acme = AccountId::parse("acme").unwrap();
    let request = |n: usize| RequestId::parse(&format!("r{n}")).unwrap();
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 100_000, addon_credits: 0 };
    let set_plan = SetPlan { account: acme.clone(), plan, request: request(0) };
    assert_eq!(redis.set_plan(&set_plan).await.unwrap(), model.set_plan(t0(), &set_plan).unwrap());
    let steps = 3 * CATCHUP_STEPS_MAX as usize;
    for n in 1..=steps {
        let now = clock.now_ms();
        if n % 2 == 0 {
            let expires_ms = Some(now + 3_600_000 + n as i64);
            let grant = Grant {
                account: acme.clone(),
                kind: LotKind::Promo,
                amount: 2,
                expires_ms,
                request: request(n),
                create_account: false,
            };
            assert_eq!(redis.grant(&grant).await.unwrap(), model.grant(now, &grant).unwrap());
        } else {
            let reserve = Reserve {
                account: acme.clone(),
                user: UserId::parse("ann").unwrap(),
                category: Rules::default().category("email").unwrap(),
                amount: 3,
                ttl_ms: 1_000 + n as i64,
                request: request(n),
                labels: Labels::default(),
                partial: None,
            };
            assert_eq!(redis.reserve(&reserve).await.unwrap(), model.reserve(now, &reserve).unwrap());
        }
    }
    clock.advance(2 * 3_600_000);
    let now = clock.now_ms();
    assert_eq!(server.cli(&["CONFIG", "RESETSTAT"]), "OK");
    assert_eq!(redis.balance(&acme, None).await.unwrap(), model.balance(now, &acme, None).unwrap());
    let stats = server.cli(&["INFO", "commandstats"]);
    let calls = |command: &str| -> u64 {
        let line = stats.lines().find(|line| line.starts_with(&format!("cmdstat_{command}:"))).unwrap_or_default();
        line.split(['=', ',']).nth(1).and_then(|calls| calls.parse().ok()).unwrap_or(0)
    };
    assert!(calls("fcall") >= 3, "catching up {steps} steps took {} FCALLs: {stats}", calls("fcall"));
    assert_eq!(redis.account(&acme).await.unwrap(), model.account(now, &acme).unwrap());
    assert_eq!(redis.outbox().await.unwrap(), model.drain_events());
}

/// Category budgets came with this layout's `c:<category>` fields: a hold made before them (its
/// category never counted) that closes under a budget gives nothing back below zero, and the
/// account goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_older_than_category_budgets_closes_without_breaking_the_account() {
    use credit_sidecar::ledger::command::{Release, SetCategoryBudget};

    let (server, redis, clock) = engine_at_t0().await;
    let acme = AccountId::parse("acme").unwrap();
    let ai = Rules::default().category("ai").unwrap();
    let request = |name: &str| RequestId::parse(name).unwrap();
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 500, addon_credits: 0 };
    redis.set_plan(&SetPlan { account: acme.clone(), plan, request: request("p") }).await.unwrap();
    let reserve = |amount: i64, name: &str| Reserve {
        account: acme.clone(),
        user: UserId::parse("ann").unwrap(),
        category: ai.clone(),
        amount,
        ttl_ms: 60_000,
        request: request(name),
        labels: Labels::default(),
        partial: None,
    };
    let old = redis.reserve(&reserve(100, "r-old")).await.unwrap().done().unwrap();
    // As a sidecar before category budgets left it: the hold's category never counted.
    let layout = Layout { prefix: String::new(), shards: 16 };
    let account_key = layout.account_keys(&acme)[0].clone();
    assert_eq!(server.cli(&["HDEL", &account_key, "c:ai"]), "1");
    let budget =
        SetCategoryBudget { account: acme.clone(), category: ai.clone(), budget: Some(150), request: request("b") };
    let set = redis.set_category_budget(&budget).await.unwrap().done().unwrap();
    assert_eq!((set.used, set.remaining), (0, Some(150)));
    redis.reserve(&reserve(50, "r-new")).await.unwrap().done().unwrap();
    redis.release(&Release { reservation: old.reservation, request: request("x") }).await.unwrap().done().unwrap();
    let view = redis.account(&acme).await.unwrap();
    let category = view.categories.iter().find(|category| category.category == "ai").unwrap();
    assert_eq!((category.used, category.remaining), (0, Some(150)), "never below zero");
    let over = redis.reserve(&reserve(151, "r-over")).await.unwrap();
    assert!(over.declined().is_some(), "the budget still holds: {over:?}");
    clock.advance(3_600_000);
    redis.balance(&acme, None).await.expect("the account answers after its holds come due");
}

/// Remembered request ids are kept without a purge-schedule entry each: an id is forgotten the
/// instant its keep passes (a call reusing it is a new call, as in the model), and the sweep
/// deletes them from the head of the account's forget queue (F), in the order they were
/// remembered, in bounded steps: it stops at a mark not yet due, steps over an id kept longer once
/// its chunk is all due (queuing it again at the tail), and sets P's one member `q` to when the
/// head next comes due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_forgotten_at_their_keep_and_deleted_in_remembering_order() {
    use credit_sidecar::engine::redis::library::{FORGET_MARKS, PURGE_MAX};
    use credit_sidecar::ledger::Clock;
    use credit_sidecar::ledger::command::SetUserLimit;

    let (server, redis, clock) = engine_at_t0().await;
    let mut model = Ledger::new(RETENTION);
    let acme = AccountId::parse("acme").unwrap();
    let keys = Layout { prefix: String::new(), shards: 16 }.account_keys(&acme).to_vec();
    let (a, q, p, f) = (keys[0].clone(), keys[6].clone(), keys[7].clone(), keys[12].clone());
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 1000, addon_credits: 0 };
    let set_plan = SetPlan { account: acme.clone(), plan, request: RequestId::parse("plan").unwrap() };
    assert_eq!(redis.set_plan(&set_plan).await.unwrap(), model.set_plan(t0(), &set_plan).unwrap());
    let limit = |n: usize, limit: i64| SetUserLimit {
        account: acme.clone(),
        user: UserId::parse("ann").unwrap(),
        limit: Some(limit),
        request: RequestId::parse(&format!("u{n}")).unwrap(),
    };
    let call = async |model: &mut Ledger, n: usize, figure: i64| {
        let now = clock.now_ms();
        let ours = redis.set_user_limit(&limit(n, figure)).await;
        match (&ours, model.set_user_limit(now, &limit(n, figure))) {
            (Ok(ours), Ok(theirs)) => assert_eq!(*ours, theirs, "u{n} at {now}"),
            (Err(Error::Ledger(ours)), Err(theirs)) => assert_eq!(*ours, theirs, "u{n} at {now}"),
            (ours, theirs) => panic!("u{n} at {now}: {ours:?} against the model's {theirs:?}"),
        }
        ours
    };
    let sweep = async |model: &mut Ledger| {
        assert_eq!(redis.sweep().await.unwrap(), model.sweep(clock.now_ms()));
    };
    let score = || server.cli(&["ZSCORE", &p, "q"]);
    let mark = |at: i64| format!("\u{1f}{at}");
    let retention = RETENTION;
    let span = retention / i64::from(FORGET_MARKS);
    // Early ids (more than two sweep steps' worth), five a little later (the same chunk: no new
    // mark), ten at half the retention (behind a new mark).
    let early = 2 * PURGE_MAX as usize + 500;
    for n in 0..early {
        call(&mut model, n, 5).await.unwrap();
    }
    assert_eq!(server.cli(&["ZCARD", &p]), "1", "one schedule entry, not one per id");
    assert_eq!(score(), (t0() + retention).to_string(), "when the first id comes due");
    assert!(retention / 20 < span);
    clock.advance(retention / 20);
    for n in early..early + 5 {
        call(&mut model, n, 5).await.unwrap();
    }
    clock.set(t0() + retention / 2);
    for n in early + 5..early + 15 {
        call(&mut model, n, 5).await.unwrap();
    }
    assert_eq!(server.cli(&["LLEN", &f]), (early + 15 + 3).to_string(), "the ids, the plan's and two marks");
    assert_eq!(server.cli(&["LINDEX", &f, &(early + 7).to_string()]), mark(t0() + retention / 2));
    assert_eq!(score(), (t0() + retention).to_string(), "a later id never delays the head");

    // At the early ids' keep, before any sweep: forgotten. The last early id reused with another
    // figure is a new call (not REQUEST_ID_REUSED); a later id still answers as the first time.
    clock.set(t0() + retention);
    call(&mut model, early - 1, 9).await.unwrap().done().unwrap();
    call(&mut model, early + 14, 5).await.unwrap();
    assert!(call(&mut model, early + 14, 6).await.is_err(), "u{} is still remembered", early + 14);

    // The sweep deletes the early ids from the head, in bounded steps (LRANGEs), up to the
    // reused one: kept longer, in a chunk not yet all due (its mark is not a span old).
    assert_eq!(server.cli(&["CONFIG", "RESETSTAT"]), "OK");
    sweep(&mut model).await;
    let stats = server.cli(&["INFO", "commandstats"]);
    let lranges = stats.lines().find(|line| line.starts_with("cmdstat_lrange:")).unwrap_or_default();
    let lranges: u64 = lranges.split(['=', ',']).nth(1).and_then(|calls| calls.parse().ok()).unwrap_or(0);
    assert!(lranges >= 3, "forgetting {early} ids took {lranges} steps");
    assert_eq!(server.cli(&["HLEN", &q]), "16", "the reused one, 5 + 10 later ids");
    assert_eq!(server.cli(&["LINDEX", &f, "0"]), mark(t0()), "the chunk keeps its mark");
    assert_eq!(server.cli(&["LINDEX", &f, "1"]), key(&format!("u{}", early - 1)));
    assert_eq!(score(), (t0() + retention + span).to_string(), "when that chunk is all due");

    // Then the reused id is queued again at the tail (behind a new mark), the five are deleted,
    // and the sweep stops at the ten's mark.
    clock.set(t0() + retention + span);
    sweep(&mut model).await;
    assert_eq!(server.cli(&["HLEN", &q]), "11");
    let queue = server.cli(&["LRANGE", &f, "0", "-1"]);
    let mut expected = vec![mark(t0() + retention / 2)];
    expected.extend((early + 5..early + 15).map(|n| key(&format!("u{n}"))));
    expected.extend([mark(t0() + retention + span), key(&format!("u{}", early - 1))]);
    assert_eq!(queue, expected.join("\n"));
    assert_eq!(score(), (t0() + retention / 2 + retention).to_string(), "the ten's");
    assert_eq!(server.cli(&["HGET", &a, "qm"]), (t0() + retention + span).to_string());

    // The ten go at their keep; the reused one once its mark is due; then nothing is left.
    clock.set(t0() + 2 * retention);
    sweep(&mut model).await;
    assert_eq!(server.cli(&["HLEN", &q]), "1");
    clock.set(t0() + 2 * retention + span);
    sweep(&mut model).await;
    for key in [&q, &f, &p] {
        assert_eq!(server.cli(&["EXISTS", key]), "0", "{key}");
    }
    assert_eq!(server.cli(&["HEXISTS", &a, "qm"]), "0");
    assert_eq!(redis.account(&acme).await.unwrap(), model.account(clock.now_ms(), &acme).unwrap());
    // Remembering starts a new queue.
    call(&mut model, 0, 5).await.unwrap();
    assert_eq!(server.cli(&["LRANGE", &f, "0", "-1"]), [mark(clock.now_ms()), key("u0")].join("\n"));
    assert_eq!(score(), (clock.now_ms() + retention).to_string());
}

/// What a layout-2 sidecar would leave if it ran against layout 4 (the upgrade procedure forbids
/// it): an answer without its keep, and its own purge-schedule member. Neither breaks the
/// account: a call naming that id is a new call, and the sweep forgets the id as layout 2 would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_layout_2_request_id_breaks_neither_calls_nor_the_sweep() {
    use credit_sidecar::ledger::command::SetUserLimit;

    let (server, redis, clock) = engine_at_t0().await;
    let acme = AccountId::parse("acme").unwrap();
    let keys = Layout { prefix: String::new(), shards: 16 }.account_keys(&acme).to_vec();
    let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits: 1000, addon_credits: 0 };
    redis.set_plan(&SetPlan { account: acme.clone(), plan, request: RequestId::parse("plan").unwrap() }).await.unwrap();
    // Kept as layout 2 kept it (the id itself, an answer without its keep), and as a call of
    // this layout would look it up (the same answer under the id's key).
    let answer = "0123456789abcdef\u{1f}ok\u{1f}ann\u{1f}5\u{1f}0\u{1f}5";
    server.cli(&["HSET", &keys[6], "stray", answer, &key("stray"), answer]);
    server.cli(&["ZADD", &keys[7], &(t0() + 1_000).to_string(), "qstray"]);
    server.cli(&["ZADD", &keys[10], &(t0() + 1_000).to_string(), "acme"]);
    let limit = SetUserLimit {
        account: acme.clone(),
        user: UserId::parse("bob").unwrap(),
        limit: Some(7),
        request: RequestId::parse("stray").unwrap(),
    };
    let set = redis.set_user_limit(&limit).await.unwrap().done().unwrap();
    assert_eq!((set.user.as_str(), set.limit), ("bob", Some(7)), "a new call, not the stray answer");
    clock.advance(2_000);
    redis.sweep().await.unwrap();
    assert_eq!(server.cli(&["ZSCORE", &keys[7], "qstray"]), "", "forgotten as layout 2 would");
    assert_eq!(server.cli(&["HEXISTS", &keys[6], "stray"]), "0");
    assert!(server.cli(&["HGET", &keys[6], &key("stray")]).contains("bob"), "the new call's answer stays");
    redis.sweep().await.expect("the next sweep of the account runs too");
}

/// On a Redis with no layout recorded, the upgrade says so (layout 0) and rebuilds from the
/// ledger, here nothing; run again, it finds this layout and does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_on_an_empty_redis_records_this_layout_and_then_does_nothing() {
    let server = RedisServer::start();
    let (_dir, store) = sqlite_ledger().await;
    let settings = redis_settings(vec![server.url()], false);
    let first = maintenance::upgrade_layout(&store, &settings, RETENTION).await.unwrap();
    assert_eq!(
        first,
        maintenance::Upgraded { from_layout: 0, accounts_converted: 0, keys_deleted: 0, accounts_rebuilt: 0 }
    );
    assert_eq!(server.cli(&["GET", "cs:layout"]), "4 16");
    let again = maintenance::upgrade_layout(&store, &settings, RETENTION).await.unwrap();
    assert_eq!(again.from_layout, LAYOUT_VERSION);
}
