//! The durable store (`settle::store::Store`) against a real SQLite file and a private
//! PostgreSQL. `store_tests!` runs each test body once per backend.
//!
//! The events are real: the reference model (`Ledger`) runs a scripted month of one account
//! (and a little of a second one) — a plan, a promo grant, a trial, user limits, a waterfall
//! reservation with three commits (one of 0 credits) carrying business keys and labels, an
//! extended and released hold, holds that expire, charges (one refused as already charged), lots
//! that expire with and without credits held from them, a cycle renewal and a sweep — and the
//! events it emits are what the tests settle. What the store derives is checked against the
//! model's own answers and against figures worked out by hand below.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use credit_sidecar::ledger::command::{
    Charge, Commit, Extend, Grant, Plan, Release, Reserve, SetPlan, SetUserLimit, StartTrial,
};
use credit_sidecar::ledger::event::{Event, EventKind};
use credit_sidecar::ledger::{
    AccountId, BusinessKey, Decision, Error, Labels, Ledger, LotKind, LotView, Millis, Period, RequestId,
    ReservationId, ReservationView, Rules, Totals, UserId, wire,
};
use credit_sidecar::settle::store::{Backend, LineItem, SettledReservation, SettledTotals, Store, UsageRow};
use sqlx::Row;
use tempfile::TempDir;

use crate::harness::{DAY, HOUR, MINUTE, anchor, ms, t0};
use crate::servers::PostgresServer;

const ACME: &str = "acme";
const GLOBEX: &str = "globex";
/// Long enough that the model forgets nothing during the script, so every reservation it settled
/// can be compared with the model's view of it.
const RETENTION_MS: Millis = 365 * DAY;
/// Replicas settling at once, and how many times they race each other on a fresh store: a
/// deadlock needs their statements to meet, so the race is run more than once.
const REPLICAS: usize = 4;
const DISJOINT_ROUNDS: usize = 6;

macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Databases::start(super::Kind::Sqlite)).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(super::Databases::start(super::Kind::Postgres)).await;
                }
            )*
        }
    };
}

store_tests!(writes_count_new_events_and_rewrites_change_nothing, batch_order_does_not_matter, reads_match_the_ledger);

// ---------------------------------------------------------------------------------------------
// Databases

#[derive(Clone, Copy, Debug)]
enum Kind {
    Sqlite,
    Postgres,
}

/// Empty databases of one backend: the first, and more beside it on demand.
struct Databases {
    dir: TempDir,
    postgres: Option<PostgresServer>,
    fresh_made: AtomicUsize,
}

/// A store and its URL (to read the lots table, which the store has no reader for).
struct Db {
    store: Store,
    url: String,
}

impl Databases {
    fn start(kind: Kind) -> Self {
        let postgres = match kind {
            Kind::Sqlite => None,
            Kind::Postgres => Some(PostgresServer::start()),
        };
        Self { dir: tempfile::tempdir().unwrap(), postgres, fresh_made: AtomicUsize::new(0) }
    }

    async fn first(&self) -> Db {
        let url = match &self.postgres {
            Some(server) => server.url(),
            None => sqlite_url(&self.dir, "credits"),
        };
        open(&url).await
    }

    /// Another empty store, as a separate deployment would have (PostgreSQL: a schema of its own).
    async fn fresh(&self) -> Db {
        let url = match &self.postgres {
            Some(server) => server.fresh_url(),
            None => sqlite_url(&self.dir, &format!("fresh-{}", self.fresh_made.fetch_add(1, Ordering::Relaxed))),
        };
        open(&url).await
    }
}

fn sqlite_url(dir: &TempDir, name: &str) -> String {
    format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display())
}

async fn open(url: &str) -> Db {
    let store = Store::connect(url).await.unwrap_or_else(|error| panic!("connect {url}: {error}"));
    let expected = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
    assert_eq!(store.backend(), expected);
    store.ping().await.unwrap();
    Db { store, url: url.to_owned() }
}

// ---------------------------------------------------------------------------------------------
// The scripted ledger

/// The reference model, driven step by step; every step must be done, not declined.
struct Script {
    ledger: Ledger,
    rules: Rules,
    now: Millis,
    requests: u64,
}

/// What the script produced: every event, the model's view of each account at the end, and the
/// ids the checks name.
struct Scripted {
    events: Vec<Event>,
    model: Vec<ModelAccount>,
    /// The waterfall reservation (three commits, the middle one of 0 credits) and the request ids
    /// of its commits.
    waterfall: ReservationId,
    waterfall_commits: Vec<String>,
    /// A hold committed after a lot it drew from had expired: a commit refused as already
    /// charged, then the final commit.
    late: ReservationId,
    late_commits: Vec<String>,
}

/// One account as the model shows it at the end of the script.
struct ModelAccount {
    account: AccountId,
    totals: Totals,
    /// Newest first.
    reservations: Vec<ReservationView>,
    /// Live lots only.
    lots: Vec<LotView>,
}

fn done<T: std::fmt::Debug>(decision: Result<Decision<T>, Error>, what: &str) -> T {
    match decision {
        Ok(Decision::Done(value)) => value,
        other => panic!("{what}: {other:?}"),
    }
}

fn account(name: &str) -> AccountId {
    AccountId::parse(name).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
}

impl Script {
    fn request(&mut self) -> RequestId {
        self.requests += 1;
        RequestId::parse(&format!("req-{}", self.requests)).unwrap()
    }

    /// Moves time to `at` and runs the sweep, as the background task would.
    fn advance_to(&mut self, at: Millis) {
        self.now = at;
        self.ledger.sweep(at);
    }

    fn set_plan(&mut self, name: &str, plan_credits: i64) {
        let plan = Plan { period: Period::Monthly, anchor_ms: anchor(), plan_credits, addon_credits: 0 };
        let command = SetPlan { account: account(name), plan, request: self.request() };
        done(self.ledger.set_plan(self.now, &command), "set_plan");
    }

    fn grant(&mut self, name: &str, kind: LotKind, amount: i64, expires_ms: Option<Millis>) {
        let request = self.request();
        let command = Grant { account: account(name), kind, amount, expires_ms, request, create_account: true };
        done(self.ledger.grant(self.now, &command), "grant");
    }

    fn start_trial(&mut self, name: &str, credits: i64, duration_ms: Millis) {
        let request = self.request();
        let command = StartTrial { account: account(name), credits, duration_ms, request, create_account: true };
        done(self.ledger.start_trial(self.now, &command), "start_trial");
    }

    fn set_user_limit(&mut self, name: &str, user: &str, limit: Option<i64>) {
        let user = UserId::parse(user).unwrap();
        let command = SetUserLimit { account: account(name), user, limit, request: self.request() };
        done(self.ledger.set_user_limit(self.now, &command), "set_user_limit");
    }

    fn reserve(&mut self, name: &str, user: &str, category: &str, amount: i64, ttl_ms: Millis) -> ReservationId {
        self.reserve_labelled(name, (user, category), amount, ttl_ms, &[])
    }

    fn reserve_labelled(
        &mut self,
        name: &str,
        (user, category): (&str, &str),
        amount: i64,
        ttl_ms: Millis,
        tags: &[(&str, &str)],
    ) -> ReservationId {
        let command = Reserve {
            account: account(name),
            user: UserId::parse(user).unwrap(),
            category: self.rules.category(category).unwrap(),
            amount,
            ttl_ms,
            request: self.request(),
            labels: Labels::parse(labels(tags)).unwrap(),
            partial: None,
        };
        done(self.ledger.reserve(self.now, &command), "reserve").reservation
    }

    /// Returns the commit's request id.
    fn commit(
        &mut self,
        id: &ReservationId,
        amount: i64,
        final_commit: bool,
        key: &str,
        tags: &[(&str, &str)],
    ) -> String {
        let request = self.request();
        let command = Commit {
            reservation: id.clone(),
            amount,
            final_commit,
            request: request.clone(),
            business_key: BusinessKey::parse_optional(key).unwrap(),
            labels: Labels::parse(labels(tags)).unwrap(),
        };
        done(self.ledger.commit(self.now, &command), "commit");
        request.as_str().to_owned()
    }

    fn extend(&mut self, id: &ReservationId, amount: i64, ttl_ms: Option<Millis>) {
        let command = Extend { reservation: id.clone(), amount, ttl_ms, request: self.request(), partial: None };
        done(self.ledger.extend(self.now, &command), "extend");
    }

    fn release(&mut self, id: &ReservationId) {
        let command = Release { reservation: id.clone(), request: self.request() };
        done(self.ledger.release(self.now, &command), "release");
    }

    /// Returns whether it charged (false: the business key was already charged this cycle).
    fn charge(&mut self, name: &str, user: &str, category: &str, amount: i64, key: &str) -> bool {
        !self.charge_as(name, (user, category), amount, key, false).already_charged
    }

    /// An outage charge (never declined; what the lots lack is owed): what it overdrew.
    fn overdraw(&mut self, name: &str, user: &str, category: &str, amount: i64) -> i64 {
        self.charge_as(name, (user, category), amount, "", true).overdrawn
    }

    fn charge_as(
        &mut self,
        name: &str,
        (user, category): (&str, &str),
        amount: i64,
        key: &str,
        overdraft: bool,
    ) -> credit_sidecar::ledger::Charged {
        let command = Charge {
            account: account(name),
            user: UserId::parse(user).unwrap(),
            category: self.rules.category(category).unwrap(),
            amount,
            request: self.request(),
            business_key: BusinessKey::parse_optional(key).unwrap(),
            labels: Labels::default(),
            overdraft,
        };
        done(self.ledger.charge(self.now, &command), "charge")
    }
}

/// The cycles of the plan anchored on Jan 31: [Feb 28, Mar 31) and [Mar 31, Apr 30).
fn cycle_1() -> Millis {
    ms(2026, 2, 28, 0)
}

fn cycle_2() -> Millis {
    ms(2026, 3, 31, 0)
}

/// acme's month, from t0 = 2026-03-10T12:00Z to Apr 2. Lots: 1 plan 1000 (expires Mar 31), 2 promo 200
/// (Mar 15 12:00), 3 trial 100 (Mar 24 12:00), 4 plan 1000 (cycle 2). Holds draw from the lot
/// expiring soonest. Reservations 1..=9, commits and figures in the comments.
fn scripted() -> Scripted {
    let mut s = Script { ledger: Ledger::new(RETENTION_MS), rules: Rules::default(), now: t0(), requests: 0 };
    s.set_plan(ACME, 1000);
    s.grant(ACME, LotKind::Promo, 200, Some(t0() + 5 * DAY));
    s.start_trial(ACME, 100, 14 * DAY);
    s.set_user_limit(ACME, "ann", Some(500));
    s.set_user_limit(ACME, "bob", Some(300));
    // 1: a waterfall of three providers; the second found nothing. 75 spent, 45 back to lot 2.
    let waterfall = s.reserve_labelled(ACME, ("ann", "waterfall"), 120, 10 * MINUTE, &[("flow", "w1")]);
    let waterfall_commits = vec![
        s.commit(&waterfall, 30, false, "contact:1:email", &[("provider", "a")]),
        s.commit(&waterfall, 0, false, "", &[("provider", "b"), ("result", "miss")]),
        s.commit(&waterfall, 45, true, "contact:1:mobile", &[("provider", "c")]),
    ];
    // 2: 50 held, extended by 30 (deadline t0 + 1 h), 60 spent, 20 released.
    let extended = s.reserve(ACME, "bob", "enrichment", 50, 10 * MINUTE);
    s.extend(&extended, 30, Some(HOUR));
    s.commit(&extended, 60, false, "", &[]);
    s.release(&extended);
    // 3: expires at t0 + 5 min; its 40 go back to lot 2.
    s.reserve(ACME, "ann", "ai", 40, 5 * MINUTE);
    // 4: a charge of 5; the same business key again charges nothing and emits nothing.
    assert!(s.charge(ACME, "bob", "email", 5, "contact:2:email"));
    assert!(!s.charge(ACME, "bob", "email", 5, "contact:2:email"));
    // 5: 100 held for a week: 20 from lot 2 (all it has left), 80 from lot 3.
    let late = s.reserve_labelled(ACME, ("ann", "mobile"), 100, 7 * DAY, &[("list", "l9")]);
    // globex: no plan (calendar-month cycles); an adjustment lot of 500 until Apr 1, 25 spent.
    s.grant(GLOBEX, LotKind::Adjustment, 500, None);
    let other = s.reserve(GLOBEX, "cyd", "api", 25, 10 * MINUTE);
    s.commit(&other, 25, true, "", &[]);
    // Hold 3 expires; lot 2 expires on Mar 15 with 40 left (hold 3's return).
    s.advance_to(t0() + 10 * MINUTE);
    s.advance_to(ms(2026, 3, 16, 12));
    // 5 commits: contact:1:email was charged this cycle (0 credits), then 10 from lot 2's part.
    // Closing returns lot 3's 80; lot 2's other 10 are expired, lot 2 being dead.
    let late_commits =
        vec![s.commit(&late, 7, false, "contact:1:email", &[("provider", "a")]), s.commit(&late, 10, true, "", &[])];
    // Lot 3 expires (Mar 24, 100 left), lot 1 (Mar 31, 1000 untouched), the cycle renews: lot 4.
    s.advance_to(ms(2026, 4, 2, 12));
    // Cycle 2. 6: 70 spent under a key charged last cycle. 7: the charge again, charged anew.
    let renewed = s.reserve(ACME, "ann", "waterfall", 70, 10 * MINUTE);
    s.commit(&renewed, 70, true, "contact:1:email", &[("provider", "a")]);
    assert!(s.charge(ACME, "bob", "email", 5, "contact:2:email"));
    // 8: expires in the sweep; 9: still held at the end.
    s.reserve(ACME, "bob", "enrichment", 20, HOUR);
    s.advance_to(s.now + 2 * HOUR);
    s.reserve(ACME, "ann", "ai", 10, HOUR);
    // globex's lot died on Apr 1: work admitted during an outage spends 30 no lot covers (owed),
    // then a grant of 20 repays 20 of it (its lot starts empty) and one of 50 the other 10.
    assert_eq!(s.overdraw(GLOBEX, "cyd", "dialer", 30), 30);
    s.grant(GLOBEX, LotKind::Adjustment, 20, None);
    s.grant(GLOBEX, LotKind::Promo, 50, None);
    let events = s.ledger.drain_events();
    let model = s.ledger.account_ids().into_iter().map(|id| model_account(&mut s.ledger, s.now, id)).collect();
    assert!(s.ledger.drain_events().is_empty(), "reading the model at the script's end changed it");
    Scripted { events, model, waterfall, waterfall_commits, late, late_commits }
}

fn model_account(ledger: &mut Ledger, now: Millis, account: AccountId) -> ModelAccount {
    let totals = ledger.balance(now, &account, None).unwrap().totals;
    let (reservations, next_page) = ledger.list_reservations(now, &account, None, 1000, None).unwrap();
    assert_eq!(next_page, None);
    let lots = ledger.account(now, &account).unwrap().lots;
    ModelAccount { account, totals, reservations, lots }
}

// ---------------------------------------------------------------------------------------------
// Reading everything back

/// One row of the lots table.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LotRow {
    account: String,
    lot: i64,
    kind: String,
    granted: i64,
    drawn: i64,
    returned: i64,
    expired: i64,
    granted_ms: i64,
    expires_ms: i64,
    expired_ms: Option<i64>,
    repaid: i64,
}

impl LotRow {
    fn remaining(&self) -> i64 {
        self.granted - self.repaid - self.drawn + self.returned - self.expired
    }
}

async fn lot_rows(url: &str) -> Vec<LotRow> {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let rows = sqlx::query(
        "SELECT account_id, lot_id, kind, granted, drawn, returned, expired, granted_ms, expires_ms, expired_ms, \
         repaid FROM lots ORDER BY account_id, lot_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.iter()
        .map(|row| LotRow {
            account: row.get(0),
            lot: row.get(1),
            kind: row.get(2),
            granted: row.get(3),
            drawn: row.get(4),
            returned: row.get(5),
            expired: row.get(6),
            granted_ms: row.get(7),
            expires_ms: row.get(8),
            expired_ms: row.get(9),
            repaid: row.get(10),
        })
        .collect()
}

/// One account as settled: everything the store's readers return about it.
#[derive(Debug, PartialEq)]
struct AccountSnapshot {
    account: AccountId,
    totals: Option<SettledTotals>,
    events: Vec<Event>,
    usage: Vec<UsageRow>,
    reservations: Vec<SettledReservation>,
    line_items: Vec<Vec<LineItem>>,
}

/// Everything settled, through every reader of the store (and the lots table).
#[derive(Debug, PartialEq)]
struct Snapshot {
    event_count: i64,
    events: Vec<Event>,
    accounts: Vec<AccountSnapshot>,
    lots: Vec<LotRow>,
}

async fn snapshot(db: &Db) -> Snapshot {
    let store = &db.store;
    let mut accounts = Vec::new();
    for account in store.accounts().await.unwrap() {
        let reservations = store.reservations(&account, None, 1000, None).await.unwrap();
        let mut line_items = Vec::new();
        for reservation in &reservations {
            line_items.push(store.line_items(&account, reservation.seq).await.unwrap());
        }
        accounts.push(AccountSnapshot {
            totals: store.totals(&account).await.unwrap(),
            events: store.events(Some(&account)).await.unwrap(),
            usage: store.usage(&account, None).await.unwrap(),
            reservations,
            line_items,
            account,
        });
    }
    Snapshot {
        event_count: store.event_count().await.unwrap(),
        events: store.events(None).await.unwrap(),
        accounts,
        lots: lot_rows(&db.url).await,
    }
}

// ---------------------------------------------------------------------------------------------
// Batches

/// A small deterministic generator (xorshift64*; the seed must not be 0), so a failing order
/// replays from its seed.
struct Shuffler(u64);

impl Shuffler {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n as u64) as usize
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

/// The events cut into batches of `size` in stream order, the batches then shuffled; with
/// `mix_within`, the events are shuffled before cutting, so a batch is out of order too.
fn shuffled_batches(events: &[Event], size: usize, seed: u64, mix_within: bool) -> Vec<Vec<Event>> {
    let mut shuffler = Shuffler(seed);
    let mut events = events.to_vec();
    if mix_within {
        shuffler.shuffle(&mut events);
    }
    let mut batches: Vec<Vec<Event>> = events.chunks(size).map(<[Event]>::to_vec).collect();
    shuffler.shuffle(&mut batches);
    batches
}

/// Replicas writing at once (tasks on the test's runtime; the database runs their transactions
/// side by side), each its batches in turn. Returns how many events were new in all.
async fn write_concurrently(store: &Store, shares: Vec<Vec<Vec<Event>>>) -> usize {
    let mut replicas = tokio::task::JoinSet::new();
    for batches in shares {
        let store = store.clone();
        replicas.spawn(async move { write_batches(&store, &batches).await });
    }
    let mut new = 0;
    while let Some(written) = replicas.join_next().await {
        new += written.unwrap();
    }
    new
}

/// Writes the batches in turn; returns how many events were new in all.
async fn write_batches(store: &Store, batches: &[Vec<Event>]) -> usize {
    let mut new = 0;
    for batch in batches {
        new += store.write(batch, t0()).await.unwrap();
    }
    new
}

// ---------------------------------------------------------------------------------------------
// The tests

async fn writes_count_new_events_and_rewrites_change_nothing(databases: Databases) {
    let scripted = scripted();
    let events = &scripted.events;
    let db = databases.first().await;
    assert_eq!(db.store.write(&[], t0()).await.unwrap(), 0);
    // A batch that names some events twice (a redelivery within one read) counts each once.
    let mut first = events[..10].to_vec();
    first.extend_from_slice(&events[2..6]);
    assert_eq!(db.store.write(&first, t0()).await.unwrap(), 10);
    assert_eq!(db.store.event_count().await.unwrap(), 10);
    // Overlapping the first batch: only the rest is new.
    assert_eq!(db.store.write(events, t0()).await.unwrap(), events.len() - 10);
    let settled = snapshot(&db).await;
    assert_matches_ledger(&settled, &scripted);
    // The same events again, whole or in any batches: nothing new, nothing changed.
    assert_eq!(db.store.write(events, t0() + DAY).await.unwrap(), 0);
    assert_eq!(write_batches(&db.store, &shuffled_batches(events, 7, 11, true)).await, 0);
    assert_eq!(snapshot(&db).await, settled);
}

async fn batch_order_does_not_matter(databases: Databases) {
    let scripted = scripted();
    let events = &scripted.events;
    let reference = databases.first().await;
    assert_eq!(reference.store.write(events, t0()).await.unwrap(), events.len());
    let expected = snapshot(&reference).await;
    assert_matches_ledger(&expected, &scripted);
    // One replica settling the stream in pieces, out of order: per account, later events arrive
    // before earlier ones (a reservation's close before its opening, a lot's expiry before its
    // grant).
    for (size, seed, mix_within) in [(1, 1, false), (5, 2, false), (13, 3, true)] {
        let db = databases.fresh().await;
        let batches = shuffled_batches(events, size, seed, mix_within);
        assert_eq!(write_batches(&db.store, &batches).await, events.len(), "batches of {size}, seed {seed}");
        assert_eq!(snapshot(&db).await, expected, "batches of {size}, seed {seed}");
    }
    // Replicas settling at once, each its own share of every account's events: they upsert the
    // same rows at the same moment (on PostgreSQL, this deadlocked when rows were written in hash
    // order). Then replicas that each write every event: each is new exactly once between them.
    for round in 0..DISJOINT_ROUNDS {
        let db = databases.fresh().await;
        let shares = (0..REPLICAS).map(|replica| {
            let share: Vec<Event> = events.iter().skip(replica).step_by(REPLICAS).cloned().collect();
            share.chunks(12).map(<[Event]>::to_vec).collect()
        });
        assert_eq!(write_concurrently(&db.store, shares.collect()).await, events.len(), "round {round}");
        assert_eq!(snapshot(&db).await, expected, "round {round}");
    }
    let db = databases.fresh().await;
    let shares = (0..REPLICAS).map(|replica| shuffled_batches(events, 4 + replica, 10 + replica as u64, true));
    assert_eq!(write_concurrently(&db.store, shares.collect()).await, events.len());
    assert_eq!(snapshot(&db).await, expected);
}

async fn reads_match_the_ledger(databases: Databases) {
    let scripted = scripted();
    let db = databases.first().await;
    assert_eq!(db.store.write(&scripted.events, t0()).await.unwrap(), scripted.events.len());
    let settled = snapshot(&db).await;
    assert_matches_ledger(&settled, &scripted);
    assert_usage_by_hand(&db.store).await;
    assert_line_items_by_hand(&db.store, &scripted).await;
    assert_reservation_pages(&db.store).await;
    // An account the store has never seen.
    let unknown = account("initech");
    assert_eq!(db.store.totals(&unknown).await.unwrap(), None);
    assert!(db.store.events(Some(&unknown)).await.unwrap().is_empty());
    assert!(db.store.usage(&unknown, None).await.unwrap().is_empty());
    assert!(db.store.reservations(&unknown, None, 10, None).await.unwrap().is_empty());
    assert!(db.store.line_items(&account(ACME), 99).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Checks

/// The settled record agrees with the model: events, totals, reservations and lots.
fn assert_matches_ledger(settled: &Snapshot, scripted: &Scripted) {
    let mut expected = scripted.events.clone();
    expected.sort_by(|a, b| (&a.account, a.seq).cmp(&(&b.account, b.seq)));
    assert_eq!(settled.events, expected, "events(None) in (account, seq) order");
    assert_eq!(settled.event_count, expected.len() as i64);
    let kinds: BTreeSet<&str> = expected.iter().map(|event| wire::encode(&event.kind).0).collect();
    assert_eq!(kinds.len(), 11, "the script emits every kind of event: {kinds:?}");
    let settled_accounts: Vec<&AccountId> = settled.accounts.iter().map(|a| &a.account).collect();
    let model_accounts: Vec<&AccountId> = scripted.model.iter().map(|a| &a.account).collect();
    assert_eq!(settled_accounts, model_accounts);
    for (snapshot, model) in settled.accounts.iter().zip(&scripted.model) {
        let own: Vec<Event> = expected.iter().filter(|event| event.account == snapshot.account).cloned().collect();
        assert_eq!(snapshot.events, own, "events(Some({}))", snapshot.account);
        assert_totals(snapshot, &model.totals, &own);
        assert_eq!(snapshot.reservations.len(), model.reservations.len(), "{} reservations", snapshot.account);
        for (row, view) in snapshot.reservations.iter().zip(&model.reservations) {
            assert_reservation(row, view);
        }
        let lots: Vec<&LotRow> = settled.lots.iter().filter(|lot| lot.account == snapshot.account.as_str()).collect();
        assert_lots(&lots, &model.lots);
    }
    assert_acme_by_hand(settled);
}

fn assert_totals(snapshot: &AccountSnapshot, model: &Totals, own: &[Event]) {
    let totals = snapshot.totals.unwrap_or_else(|| panic!("no totals for {}", snapshot.account));
    let settled = (totals.granted, totals.available(), totals.held, totals.spent, totals.expired, totals.owed);
    assert_eq!(
        settled,
        (model.granted, model.available, model.held, model.spent, model.expired, model.owed),
        "{}",
        snapshot.account
    );
    assert_eq!(totals.events, own.len() as i64);
    assert_eq!(totals.last_seq, own.iter().map(|event| event.seq as i64).max().unwrap());
}

fn assert_reservation(row: &SettledReservation, view: &ReservationView) {
    let state = wire::state_name(view.state);
    let expected = SettledReservation {
        seq: view.id.seq,
        user: view.user.clone(),
        category: view.category.clone(),
        state: state.to_owned(),
        reserved: view.reserved,
        committed: view.committed,
        returned: view.returned,
        commit_count: view.commit_count,
        created_ms: view.created_ms,
        deadline_ms: view.deadline_ms,
        closed_ms: view.closed_ms,
        labels: view.labels.clone(),
    };
    assert_eq!(row, &expected);
    assert_eq!(view.held, row.reserved - row.committed - row.returned, "held of {}", view.id);
}

/// Live lots have the model's remainder; expired ones have nothing left and record when.
fn assert_lots(rows: &[&LotRow], live: &[LotView]) {
    for row in rows {
        match live.iter().find(|lot| lot.id as i64 == row.lot) {
            Some(lot) => {
                let expected =
                    (wire::lot_kind_name(lot.kind), lot.granted, lot.remaining, lot.granted_ms, lot.expires_ms);
                assert_eq!((row.kind.as_str(), row.granted, row.remaining(), row.granted_ms, row.expires_ms), expected);
                assert_eq!(row.expired_ms, None, "{row:?}");
            }
            None => {
                assert_eq!(row.remaining(), 0, "an expired lot keeps nothing: {row:?}");
                assert_eq!(row.expired_ms, Some(row.expires_ms), "{row:?}");
            }
        }
    }
    for lot in live {
        assert!(rows.iter().any(|row| row.lot == lot.id as i64), "live lot {} not settled", lot.id);
    }
}

/// acme's figures, worked out by hand from the script.
fn assert_acme_by_hand(settled: &Snapshot) {
    let acme = settled.accounts.iter().find(|a| a.account.as_str() == ACME).unwrap();
    let totals = acme.totals.unwrap();
    // Granted 1000 + 200 + 100 + 1000. Spent 75 + 60 + 5 + 10 + 70 + 5. Expired: lot 2's 40,
    // hold 5's 10 from dead lot 2, lot 3's 100, lot 1's 1000. Held: hold 9.
    assert_eq!((totals.granted, totals.spent, totals.expired, totals.held), (2300, 225, 1150, 10));
    assert_eq!(totals.available(), 915, "lot 4: 1000 - 70 - 5 - 10");
    let states: Vec<(u64, &str)> = acme.reservations.iter().map(|r| (r.seq, r.state.as_str())).collect();
    let expected = [
        (9, "held"),
        (8, "expired"),
        (7, "committed"),
        (6, "committed"),
        (5, "committed"),
        (4, "committed"),
        (3, "expired"),
        (2, "released"),
        (1, "committed"),
    ];
    assert_eq!(states, expected);
    let figures = |seq: u64| {
        let r = acme.reservations.iter().find(|r| r.seq == seq).unwrap();
        (r.reserved, r.committed, r.returned, r.commit_count)
    };
    assert_eq!(figures(1), (120, 75, 45, 3));
    assert_eq!(figures(2), (80, 60, 20, 1));
    assert_eq!(figures(3), (40, 0, 40, 0));
    assert_eq!(figures(5), (100, 10, 90, 2));
    let waterfall = acme.reservations.iter().find(|r| r.seq == 1).unwrap();
    assert_eq!(waterfall.labels, labels(&[("flow", "w1")]));
    assert_eq!((waterfall.created_ms, waterfall.closed_ms), (t0(), Some(t0())));
    let extended = acme.reservations.iter().find(|r| r.seq == 2).unwrap();
    assert_eq!(extended.deadline_ms, t0() + HOUR);
    let lots: Vec<(i64, &str, i64)> =
        settled.lots.iter().filter(|l| l.account == ACME).map(|l| (l.lot, l.kind.as_str(), l.remaining())).collect();
    assert_eq!(lots, [(1, "plan", 0), (2, "promo", 0), (3, "trial", 0), (4, "plan", 915)]);
}

/// Usage per cycle, user and category, by hand.
async fn assert_usage_by_hand(store: &Store) {
    let row = |cycle_start_ms: Millis, user: &str, category: &str, spent: i64, commits: i64| UsageRow {
        cycle_start_ms,
        user: user.into(),
        category: category.into(),
        spent,
        commits,
    };
    let acme = vec![
        // Hold 5: a 0-credit commit (already charged) and one of 10.
        row(cycle_1(), "ann", "mobile", 10, 2),
        // Hold 1: 30 + 0 + 45.
        row(cycle_1(), "ann", "waterfall", 75, 3),
        row(cycle_1(), "bob", "email", 5, 1),
        row(cycle_1(), "bob", "enrichment", 60, 1),
        row(cycle_2(), "ann", "waterfall", 70, 1),
        row(cycle_2(), "bob", "email", 5, 1),
    ];
    assert_eq!(store.usage(&account(ACME), None).await.unwrap(), acme);
    assert_eq!(store.usage(&account(ACME), Some(cycle_2())).await.unwrap(), acme[4..]);
    assert_eq!(store.usage(&account(ACME), Some(cycle_1())).await.unwrap(), acme[..4]);
    assert!(store.usage(&account(ACME), Some(cycle_1() + 1)).await.unwrap().is_empty());
    // globex has no plan: its cycle is the calendar month. The overdraft of April counts in its
    // spend, not as a commit.
    let globex = vec![row(ms(2026, 3, 1, 0), "cyd", "api", 25, 1), row(ms(2026, 4, 1, 0), "cyd", "dialer", 30, 0)];
    assert_eq!(store.usage(&account(GLOBEX), None).await.unwrap(), globex);
}

/// The waterfall's commits, each with its labels and business key, and the late hold's.
async fn assert_line_items_by_hand(store: &Store, scripted: &Scripted) {
    let commit_seqs = |id: &ReservationId| -> Vec<u64> {
        let commits = scripted.events.iter().filter(|event| event.account == id.account);
        let commits = commits
            .filter(|event| matches!(&event.kind, EventKind::Committed { reservation, .. } if *reservation == id.seq));
        commits.map(|event| event.seq).collect()
    };
    let item =
        |seq, at_ms, amount, key: Option<&str>, already_charged, tags: &[(&str, &str)], request: &String| LineItem {
            seq,
            at_ms,
            amount,
            business_key: key.map(str::to_owned),
            already_charged,
            labels: labels(tags),
            request_id: Some(request.clone()),
        };
    let (seqs, requests) = (commit_seqs(&scripted.waterfall), &scripted.waterfall_commits);
    let expected = vec![
        item(seqs[0], t0(), 30, Some("contact:1:email"), false, &[("provider", "a")], &requests[0]),
        item(seqs[1], t0(), 0, None, false, &[("provider", "b"), ("result", "miss")], &requests[1]),
        item(seqs[2], t0(), 45, Some("contact:1:mobile"), false, &[("provider", "c")], &requests[2]),
    ];
    assert_eq!(store.line_items(&scripted.waterfall.account, scripted.waterfall.seq).await.unwrap(), expected);
    let (seqs, requests) = (commit_seqs(&scripted.late), &scripted.late_commits);
    let at = ms(2026, 3, 16, 12);
    let expected = vec![
        item(seqs[0], at, 0, Some("contact:1:email"), true, &[("provider", "a")], &requests[0]),
        item(seqs[1], at, 10, None, false, &[], &requests[1]),
    ];
    assert_eq!(store.line_items(&scripted.late.account, scripted.late.seq).await.unwrap(), expected);
    // An expired hold with no commits has no line items.
    assert!(store.line_items(&account(ACME), 3).await.unwrap().is_empty());
}

/// Newest first, filtered by state, paged with `before`.
async fn assert_reservation_pages(store: &Store) {
    let acme = account(ACME);
    let page = |state: Option<&'static str>, limit: usize, before: Option<u64>| {
        let acme = acme.clone();
        async move {
            let rows = store.reservations(&acme, state, limit, before).await.unwrap();
            rows.iter().map(|row| row.seq).collect::<Vec<u64>>()
        }
    };
    assert_eq!(page(None, 100, None).await, [9, 8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(page(None, 4, None).await, [9, 8, 7, 6]);
    assert_eq!(page(None, 4, Some(6)).await, [5, 4, 3, 2]);
    assert_eq!(page(None, 4, Some(2)).await, [1]);
    assert_eq!(page(None, 4, Some(1)).await, Vec::<u64>::new());
    assert_eq!(page(None, 0, None).await, Vec::<u64>::new());
    assert_eq!(page(Some("committed"), 100, None).await, [7, 6, 5, 4, 1]);
    assert_eq!(page(Some("committed"), 2, None).await, [7, 6]);
    assert_eq!(page(Some("committed"), 2, Some(6)).await, [5, 4]);
    assert_eq!(page(Some("committed"), 2, Some(4)).await, [1]);
    assert_eq!(page(Some("expired"), 100, None).await, [8, 3]);
    assert_eq!(page(Some("released"), 100, None).await, [2]);
    assert_eq!(page(Some("held"), 100, None).await, [9]);
    assert_eq!(page(Some("held"), 100, Some(9)).await, Vec::<u64>::new());
}

// ---------------------------------------------------------------------------------------------
// Connecting, restarting, reopening

/// Replicas starting at once on an empty database, and again later: the migrations apply once.
#[tokio::test]
async fn postgres_migrations_apply_once() {
    let server = PostgresServer::start();
    let url = server.url();
    let scripted = scripted();
    let events = &scripted.events;
    let (a, b) = tokio::join!(Store::connect(&url), Store::connect(&url));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.write(events, t0()).await.unwrap(), events.len());
    assert_eq!(b.write(events, t0()).await.unwrap(), 0);
    let again = open(&url).await;
    assert_eq!(again.store.event_count().await.unwrap(), events.len() as i64);
    assert_matches_ledger(&snapshot(&again).await, &scripted);
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let applied: i64 =
        sqlx::query("SELECT COUNT(*) FROM _sqlx_migrations WHERE success").fetch_one(&pool).await.unwrap().get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap().count();
    assert_eq!(applied, files as i64);
    pool.close().await;
}

/// What was committed survives a clean restart and a crash (SIGKILL) of PostgreSQL; a store
/// whose connections died with the server reconnects.
#[tokio::test]
async fn postgres_restart_and_crash_keep_settled_events() {
    let mut server = PostgresServer::start();
    let scripted = scripted();
    let (events, half) = (&scripted.events, scripted.events.len() / 2);
    let db = open(&server.url()).await;
    assert_eq!(db.store.write(&events[..half], t0()).await.unwrap(), half);
    server.stop();
    server.start_again();
    assert_eq!(db.store.write(events, t0()).await.unwrap(), events.len() - half);
    server.kill();
    server.start_again();
    let reopened = open(&server.url()).await;
    assert_eq!(reopened.store.event_count().await.unwrap(), events.len() as i64);
    assert_matches_ledger(&snapshot(&reopened).await, &scripted);
}

/// The embedded default: a SQLite file, created at the first start (even from a URL that names
/// no `mode=rwc`), keeps everything across closing and reopening.
#[tokio::test]
async fn sqlite_file_survives_reopening() {
    let databases = Databases::start(Kind::Sqlite);
    let scripted = scripted();
    let (events, half) = (&scripted.events, scripted.events.len() / 2);
    {
        let db = open(&format!("sqlite://{}/credits.db", databases.dir.path().display())).await;
        assert!(databases.dir.path().join("credits.db").is_file());
        assert_eq!(db.store.write(&events[..half], t0()).await.unwrap(), half);
    }
    let settled = {
        let db = databases.first().await;
        assert_eq!(db.store.event_count().await.unwrap(), half as i64);
        assert_eq!(db.store.write(events, t0()).await.unwrap(), events.len() - half);
        snapshot(&db).await
    };
    assert_matches_ledger(&settled, &scripted);
    let db = databases.first().await;
    assert_eq!(snapshot(&db).await, settled);
    assert_eq!(db.store.write(events, t0()).await.unwrap(), 0);
}

/// The server's background checkpoint (`Store::checkpoint`) copies what the WAL holds into the
/// database file itself: a copy of that file alone, without its WAL, has every event after it
/// and none before (the WAL's limit is far from reached, so no commit did it).
#[tokio::test]
async fn a_checkpoint_moves_the_wal_into_the_database_file() {
    let databases = Databases::start(Kind::Sqlite);
    let events = scripted().events;
    let db = databases.first().await;
    assert_eq!(db.store.write(&events, t0()).await.unwrap(), events.len());
    let file = databases.dir.path().join("credits.db");
    let copy_alone = |name: &str| {
        let copy = databases.dir.path().join(format!("{name}.db"));
        std::fs::copy(&file, &copy).unwrap();
        sqlite_url(&databases.dir, name)
    };
    let before = open(&copy_alone("before")).await;
    assert_eq!(before.store.event_count().await.unwrap(), 0, "the events are still in the WAL only");

    let (frames, copied) = db.store.checkpoint().await.unwrap().expect("SQLite checkpoints");
    assert!(frames > 0, "the writes went to the WAL");
    assert_eq!(copied, frames, "no reader holds an older snapshot, so every frame is copied");
    let after = open(&copy_alone("after")).await;
    assert_eq!(after.store.event_count().await.unwrap(), events.len() as i64);
}

/// The upgrade to migration 0005 (alerts): a ledger written by a binary that knew migrations
/// 0001–0004 is opened by this one, which adds the alert tables and keeps every settled event;
/// alerts then record and read back. A binary that does not know 0005 refuses that ledger (the
/// CHANGELOG's upgrade note says so).
#[tokio::test]
async fn a_ledger_of_migration_0004_upgrades_to_the_alert_tables() {
    use credit_sidecar::ledger::alerts::{Crossing, Threshold, When};
    use credit_sidecar::settle::store::AlertRow;
    let dir = TempDir::new().unwrap();
    let older = dir.path().join("migrations-0004");
    std::fs::create_dir(&older).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0005" {
            std::fs::copy(&path, older.join(&name)).unwrap();
        }
    }
    let url = sqlite_url(&dir, "ledger");
    let migrator = sqlx::migrate::Migrator::new(older.as_path()).await.unwrap();
    assert_eq!(migrator.iter().count(), 4);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    migrator.run(&pool).await.unwrap();
    pool.close().await;

    // Opened by this binary (which applies 0005), the ledger settles and reads back as before.
    let scripted = scripted();
    let upgraded = open(&url).await;
    assert_eq!(upgraded.store.write(&scripted.events, t0()).await.unwrap(), scripted.events.len());
    drop(upgraded);
    let reopened = open(&url).await;
    assert_eq!(reopened.store.event_count().await.unwrap(), scripted.events.len() as i64);
    assert_matches_ledger(&snapshot(&reopened).await, &scripted);
    let account = AccountId::parse("acme").unwrap();
    let threshold = Threshold::new("t", "low", When::AvailableBelow(5)).unwrap();
    reopened.store.set_alert_thresholds(&account, std::slice::from_ref(&threshold)).await.unwrap();
    let alert = AlertRow {
        account: "acme".into(),
        threshold: threshold.clone(),
        cycle_start_ms: anchor(),
        fired_ms: t0(),
        crossing: Crossing { observed: 1, base: 5 },
    };
    assert!(reopened.store.record_alert(&alert, &[]).await.unwrap());
    assert_eq!(reopened.store.alerts(&account, None, 10).await.unwrap(), [alert]);

    // The older binary's migrations meet a ledger that has one they do not know: refused.
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let refused = migrator.run(&pool).await.unwrap_err();
    assert!(refused.to_string().contains('5'), "{refused}");
    pool.close().await;
}

/// The upgrade to migration 0006 (overdrafts): a ledger of migrations 0001–0005, with totals and
/// a lot settled by the binary before this one, is opened by this one: every row reads 0 owed
/// and 0 repaid, and the same account then overdraws and is repaid on top of them. A binary
/// that does not know 0006 refuses the upgraded ledger (the CHANGELOG's upgrade note says so).
#[tokio::test]
async fn a_ledger_of_migration_0005_upgrades_to_overdrafts() {
    let dir = TempDir::new().unwrap();
    let older = dir.path().join("migrations-0005");
    std::fs::create_dir(&older).unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.as_str() < "0006" {
            std::fs::copy(&path, older.join(&name)).unwrap();
        }
    }
    let url = sqlite_url(&dir, "ledger");
    let migrator = sqlx::migrate::Migrator::new(older.as_path()).await.unwrap();
    assert_eq!(migrator.iter().count(), 5);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    migrator.run(&pool).await.unwrap();
    // What the older binary settled for globex's first grant of 30 (the rows as it wrote them).
    let mut script = Script { ledger: Ledger::new(RETENTION_MS), rules: Rules::default(), now: t0(), requests: 0 };
    script.grant(GLOBEX, LotKind::Adjustment, 30, None);
    let first = script.ledger.drain_events();
    let (kind, data) = wire::encode(&first[0].kind);
    sqlx::query(
        "INSERT INTO ledger_events (account_id, seq, at_ms, kind, request_id, reservation_seq, data, settled_ms) \
         VALUES ('globex', 1, $1, $2, $3, NULL, $4, $1)",
    )
    .bind(first[0].at_ms)
    .bind(kind)
    .bind(first[0].request_id.clone())
    .bind(data)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO account_totals (account_id, granted, events, last_seq) VALUES ('globex', 30, 1, 1)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO lots (account_id, lot_id, kind, granted, granted_ms, expires_ms) \
         VALUES ('globex', 1, 'adjustment', 30, $1, $2)",
    )
    .bind(t0())
    .bind(ms(2026, 4, 1, 0))
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    // Opened by this binary (which applies 0006): nothing owed, nothing repaid.
    let upgraded = open(&url).await;
    let totals = upgraded.store.totals(&account(GLOBEX)).await.unwrap().unwrap();
    assert_eq!((totals.granted, totals.owed, totals.available()), (30, 0, 30));
    assert_eq!(
        lot_rows(&url).await.iter().map(|lot| (lot.lot, lot.repaid, lot.remaining())).collect::<Vec<_>>(),
        [(1, 0, 30)]
    );
    // Then 50 spent during an outage (30 from the lot, 20 owed), and a grant of 25 repays 20.
    assert_eq!(script.overdraw(GLOBEX, "cyd", "dialer", 50), 20);
    script.grant(GLOBEX, LotKind::Promo, 25, None);
    let later = script.ledger.drain_events();
    assert_eq!(upgraded.store.write(&later, t0()).await.unwrap(), later.len());
    let totals = upgraded.store.totals(&account(GLOBEX)).await.unwrap().unwrap();
    let expected = script.ledger.balance(script.now, &account(GLOBEX), None).unwrap().totals;
    assert_eq!((expected.owed, expected.available), (0, 5));
    assert_eq!((totals.granted, totals.owed, totals.spent, totals.available()), (55, 0, 50, 5));
    let lots: Vec<(i64, i64, i64)> =
        lot_rows(&url).await.iter().map(|lot| (lot.lot, lot.repaid, lot.remaining())).collect();
    assert_eq!(lots, [(1, 0, 0), (2, 20, 5)]);
    drop(upgraded);

    // The older binary's migrations meet a ledger that has one they do not know: refused.
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let refused = migrator.run(&pool).await.unwrap_err();
    assert!(refused.to_string().contains('6'), "{refused}");
    pool.close().await;
}
