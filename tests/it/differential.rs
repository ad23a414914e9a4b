//! The differential test: random operation sequences, time jumps included, applied to the
//! reference model ([`Ledger`]) and to the Redis engine on a private redis-server. After every
//! step the two must give the same answer (results, declines with their figures, and errors),
//! the same account views and reservation views; at the end of each sequence, the same event
//! log, event for event (what the settler will write to SQL).
//!
//! Coverage: every state-changing operation (SetPlan, Grant and StartTrial with and without
//! `create_account`, SetUserLimit, Reserve, Commit with and without business keys and `final`,
//! Extend by amount and/or TTL, Release, Charge), Quote, retries of earlier requests (same id, same parameters) and reuses of their
//! ids with other parameters, time jumps from a second to 40 days (crossing deadlines, lot
//! expiries, cycle boundaries and the 24 h retention), and sweeps. Two accounts, three users,
//! small amounts so declines are common; jumps to exactly a lot expiry, cycle end or deadline
//! (±1 ms) and holds ending exactly when a lot expires. Also: bursts of 50+ lots on one account
//! (so draws and returns cross many lots, with expiries interleaved), labels at their limits
//! (16 labels, longest keys and values), plans anchored on month ends and on a leap day, and
//! listings (any state filter, page size and page token) in the mix. `CASES` sequences of up to
//! `STEPS_MAX` steps (about 10 s); `PROPTEST_CASES=2000` for a deeper run.

use std::sync::Arc;

use credit_sidecar::engine::redis::RedisEngine;
use credit_sidecar::engine::{self, Error};
use credit_sidecar::ledger::command::{
    Charge, Commit, CommitBatch, CommitItem, Extend, Grant, Partial, Plan, Quote, Release, Reserve, SetCategoryBudget,
    SetPlan, SetUserLimit, StartTrial,
};
use credit_sidecar::ledger::event::Event;
use credit_sidecar::ledger::{
    AccountId, BusinessKey, Clock, LABEL_KEY_LEN_MAX, LABEL_VALUE_LEN_MAX, LABELS_MAX, Labels, Ledger, LotKind,
    ManualClock, Period, RequestId, ReservationId, ReservationState, Rules, UserId,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use crate::harness::{DAY, HOUR, MINUTE, ms, redis_settings, t0};
use crate::servers::RedisServer;

/// Sequences per run; `PROPTEST_CASES` overrides (e.g. 2000 for a deeper run).
const CASES: u32 = 160;
const STEPS_MAX: usize = 60;
const ACCOUNTS: [&str; 2] = ["acme", "globex"];
const USERS: [&str; 3] = ["ann", "bob", "cy"];
const KEYS: [&str; 2] = ["contact:1:mobile", "contact:2:email"];

/// Where a plan is anchored: days from `t0`, or on a calendar edge (month ends, a leap day).
#[derive(Clone, Copy, Debug)]
enum Anchor {
    Days(i64),
    Edge(usize),
}

const EDGES: [(i32, u32, u32); 5] = [(2026, 1, 31), (2024, 2, 29), (2025, 12, 31), (2026, 3, 31), (2024, 1, 30)];

impl Anchor {
    fn ms(self) -> i64 {
        match self {
            Anchor::Days(days) => t0() + days * DAY,
            Anchor::Edge(index) => {
                let (year, month, day) = EDGES[index % EDGES.len()];
                ms(year, month, day, (index % 3) as u32 * 7)
            }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    SetPlan {
        account: usize,
        period: usize,
        anchor: Anchor,
        plan: i64,
        addon: i64,
    },
    /// Many small lots at once (expiries spread over hours and days).
    GrantMany {
        account: usize,
        lots: usize,
        expires_step: i64,
    },
    List {
        account: usize,
        state: Option<usize>,
        size: usize,
        before: Option<u64>,
    },
    Grant {
        account: usize,
        kind: usize,
        amount: i64,
        expires_in: Option<i64>,
        create: bool,
    },
    Trial {
        account: usize,
        credits: i64,
        duration: i64,
        create: bool,
    },
    Limit {
        account: usize,
        user: usize,
        limit: Option<i64>,
    },
    /// A budget on "enrichment" (Reserve's category) or "api" (Charge's).
    Budget {
        account: usize,
        api: bool,
        budget: Option<i64>,
    },
    Reserve {
        account: usize,
        user: usize,
        amount: i64,
        ttl: i64,
        full_labels: bool,
        /// A partial hold: (credits a unit, least units); `amount` is then the units asked for.
        partial: Option<(i64, i64)>,
    },
    Commit {
        pick: usize,
        amount: i64,
        final_commit: bool,
        key: Option<usize>,
    },
    Extend {
        pick: usize,
        amount: i64,
        ttl: Option<i64>,
        /// As for Reserve.
        partial: Option<(i64, i64)>,
    },
    Release {
        pick: usize,
    },
    /// Items of (amount, business key) on one reservation; `repeat`: the last item takes the
    /// first one's id (the engines must refuse, or replay, the whole batch alike).
    CommitBatch {
        pick: usize,
        items: Vec<(i64, Option<usize>)>,
        repeat: bool,
    },
    Charge {
        account: usize,
        user: usize,
        amount: i64,
        key: Option<usize>,
        /// An outage charge: what the lots lack is owed, and the next grants repay it.
        overdraft: bool,
    },
    Quote {
        account: usize,
        user: Option<usize>,
        amount: i64,
        /// Also check the "enrichment" budget.
        category: bool,
    },
    Retry {
        pick: usize,
    },
    Reuse {
        pick: usize,
    },
    Advance {
        ms: i64,
    },
    /// Jump to exactly an account's earliest lot expiry (0), cycle end (1) or a reservation's
    /// deadline (2), plus `delta` ms.
    AdvanceToBoundary {
        account: usize,
        which: usize,
        pick: usize,
        delta: i64,
    },
    /// A hold whose deadline is exactly the account's earliest lot expiry.
    ReserveToLotExpiry {
        account: usize,
        user: usize,
        amount: i64,
    },
    Sweep,
}

/// Sometimes a partial hold: (credits a unit, least units), with units costly enough that the
/// accounts' credit and the users' limits cut them short.
fn partial() -> impl Strategy<Value = Option<(i64, i64)>> {
    prop::option::weighted(0.3, (1..=25i64, 1..=5i64))
}

/// A partial hold of `units` asked for (its least units capped at them).
fn partial_of(partial: Option<(i64, i64)>, units: i64) -> Option<Partial> {
    partial.map(|(unit, min_units)| Partial { unit, min_units: min_units.min(units) })
}

fn op() -> impl Strategy<Value = Op> {
    let account = 0..ACCOUNTS.len();
    let user = 0..USERS.len();
    prop_oneof![
        2 => (account.clone(), 0..4usize, prop_oneof![(-60..60i64).prop_map(Anchor::Days), (0..15usize).prop_map(Anchor::Edge)], 0..300i64, 0..100i64)
            .prop_map(|(account, period, anchor, plan, addon)| Op::SetPlan { account, period, anchor, plan, addon }),
        1 => (account.clone(), 50..70usize, prop_oneof![Just(0i64), MINUTE..HOUR, HOUR..DAY])
            .prop_map(|(account, lots, expires_step)| Op::GrantMany { account, lots, expires_step }),
        1 => (account.clone(), prop::option::of(0..4usize), 1..6usize, prop::option::of(1..12u64))
            .prop_map(|(account, state, size, before)| Op::List { account, state, size, before }),
        2 => (account.clone(), 0..3usize, 1..200i64, prop::option::of(HOUR..40 * DAY), any::<bool>())
            .prop_map(|(account, kind, amount, expires_in, create)| Op::Grant { account, kind, amount, expires_in, create }),
        1 => (account.clone(), 0..150i64, prop_oneof![Just(0), HOUR..20 * DAY], any::<bool>())
            .prop_map(|(account, credits, duration, create)| Op::Trial { account, credits, duration, create }),
        1 => (account.clone(), user.clone(), prop::option::of(0..150i64))
            .prop_map(|(account, user, limit)| Op::Limit { account, user, limit }),
        1 => (account.clone(), any::<bool>(), prop::option::of(0..200i64))
            .prop_map(|(account, api, budget)| Op::Budget { account, api, budget }),
        6 => (account.clone(), user.clone(), 1..80i64, prop_oneof![Just(0), 1_000..3 * DAY, 3 * DAY..=7 * DAY], prop::bool::weighted(0.1), partial())
            .prop_map(|(account, user, amount, ttl, full_labels, partial)| Op::Reserve { account, user, amount, ttl, full_labels, partial }),
        6 => (any::<usize>(), 0..40i64, any::<bool>(), prop::option::of(0..KEYS.len()))
            .prop_map(|(pick, amount, final_commit, key)| Op::Commit { pick, amount, final_commit, key }),
        2 => (any::<usize>(), 0..30i64, prop::option::of(1_000..3 * DAY), partial())
            .prop_map(|(pick, amount, ttl, partial)| Op::Extend { pick, amount, ttl, partial }),
        2 => any::<usize>().prop_map(|pick| Op::Release { pick }),
        3 => (any::<usize>(), prop::collection::vec((0..25i64, prop::option::of(0..KEYS.len())), 1..8), prop::bool::weighted(0.2))
            .prop_map(|(pick, items, repeat)| Op::CommitBatch { pick, items, repeat }),
        2 => (account.clone(), user.clone(), 1..40i64, prop::option::of(0..KEYS.len()), prop::bool::weighted(0.3))
            .prop_map(|(account, user, amount, key, overdraft)| Op::Charge { account, user, amount, key, overdraft }),
        1 => (account.clone(), prop::option::of(user.clone()), 1..200i64, any::<bool>())
            .prop_map(|(account, user, amount, category)| Op::Quote { account, user, amount, category }),

        2 => any::<usize>().prop_map(|pick| Op::Retry { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Reuse { pick }),
        3 => prop_oneof![1_000..10 * MINUTE, HOUR..2 * DAY, 2 * DAY..40 * DAY].prop_map(|ms| Op::Advance { ms }),
        2 => (account.clone(), 0..3usize, any::<usize>(), -1..=1i64)
            .prop_map(|(account, which, pick, delta)| Op::AdvanceToBoundary { account, which, pick, delta }),
        2 => (account.clone(), user.clone(), 1..80i64)
            .prop_map(|(account, user, amount)| Op::ReserveToLotExpiry { account, user, amount }),
        1 => Just(Op::Sweep),
    ]
}

/// Labels at every limit: the most labels, the longest keys and values, with characters JSON must
/// escape.
fn full_labels_of(seed: i64) -> Labels {
    let labels = (0..LABELS_MAX).map(|i| {
        let key = format!("{i:02}{}", "k".repeat(LABEL_KEY_LEN_MAX - 2));
        let value = format!("\"{seed},\\ é\u{1f}{}", "v".repeat(LABEL_VALUE_LEN_MAX - 12));
        (key, value)
    });
    Labels::parse(labels).unwrap()
}

/// A state-changing command, kept so it can be retried or its id reused.
#[derive(Clone, Debug)]
enum Sent {
    SetPlan(SetPlan),
    Grant(Grant),
    Trial(StartTrial),
    Limit(SetUserLimit),
    Budget(SetCategoryBudget),
    Reserve(Reserve),
    Commit(Commit),
    CommitBatch(CommitBatch),
    Extend(Extend),
    Release(Release),
    Charge(Charge),
}

impl Sent {
    /// The same request id with other parameters.
    fn altered(&self) -> Sent {
        let mut sent = self.clone();
        match &mut sent {
            Sent::SetPlan(c) => c.plan.plan_credits += 1,
            Sent::Grant(c) => c.amount += 1,
            Sent::Trial(c) => c.credits += 1,
            Sent::Limit(c) => c.limit = Some(c.limit.map_or(0, |limit| limit + 1)),
            Sent::Budget(c) => c.budget = Some(c.budget.map_or(0, |budget| budget + 1)),
            Sent::Reserve(c) => c.amount += 1,
            Sent::Commit(c) => c.amount += 1,
            // The last item: the refusal must come before the items ahead of it apply.
            Sent::CommitBatch(c) => c.items.last_mut().expect("a batch has items").amount += 1,
            Sent::Extend(c) => c.amount += 1,
            Sent::Release(c) => c.reservation.seq += 1,
            Sent::Charge(c) => c.amount += 1,
        }
        sent
    }
}

struct Pair<'a> {
    model: Ledger,
    redis: &'a RedisEngine,
    clock: ManualClock,
    sent: Vec<Sent>,
    reservations: Vec<ReservationId>,
    model_events: Vec<Event>,
    requests: u64,
}

fn check<T: PartialEq + std::fmt::Debug>(
    step: &str,
    model: Result<T, credit_sidecar::ledger::Error>,
    redis: engine::Result<T>,
) -> Result<(), TestCaseError> {
    let model = model.map_err(Error::Ledger);
    if let Err(Error::Unavailable(reason)) = &redis {
        return Err(TestCaseError::fail(format!("{step}: Redis failed: {reason}")));
    }
    prop_assert_eq!(model, redis, "{}", step);
    Ok(())
}

impl Pair<'_> {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    fn request(&mut self) -> RequestId {
        self.requests += 1;
        RequestId::parse(&format!("r{}", self.requests)).unwrap()
    }

    fn reservation(&self, pick: usize) -> ReservationId {
        if self.reservations.is_empty() {
            return ReservationId { account: AccountId::parse(ACCOUNTS[0]).unwrap(), seq: 1 };
        }
        self.reservations[pick % self.reservations.len()].clone()
    }

    /// Sends one command to both engines and compares the answers.
    async fn send(&mut self, sent: Sent, step: &str) -> Result<(), TestCaseError> {
        let now = self.now();
        let (model, redis) = (&mut self.model, self.redis);
        match &sent {
            Sent::SetPlan(c) => check(step, model.set_plan(now, c), redis.set_plan(c).await)?,
            Sent::Grant(c) => check(step, model.grant(now, c), redis.grant(c).await)?,
            Sent::Trial(c) => check(step, model.start_trial(now, c), redis.start_trial(c).await)?,
            Sent::Limit(c) => check(step, model.set_user_limit(now, c), redis.set_user_limit(c).await)?,
            Sent::Budget(c) => check(step, model.set_category_budget(now, c), redis.set_category_budget(c).await)?,
            Sent::Reserve(c) => {
                let answer = model.reserve(now, c);
                if let Ok(decision) = &answer
                    && let Some(reserved) = decision.clone().done()
                {
                    self.reservations.push(reserved.reservation);
                }
                check(step, answer, redis.reserve(c).await)?
            }
            Sent::Commit(c) => check(step, model.commit(now, c), redis.commit(c).await)?,
            Sent::CommitBatch(c) => check(step, model.commit_batch(now, c), redis.commit_batch(c).await)?,
            Sent::Extend(c) => check(step, model.extend(now, c), redis.extend(c).await)?,
            Sent::Release(c) => check(step, model.release(now, c), redis.release(c).await)?,
            Sent::Charge(c) => check(step, model.charge(now, c), redis.charge(c).await)?,
        }
        self.sent.push(sent);
        Ok(())
    }

    async fn apply(&mut self, op: &Op, step: &str) -> Result<(), TestCaseError> {
        let rules = Rules::default();
        let account = |index: usize| AccountId::parse(ACCOUNTS[index]).unwrap();
        let user = |index: usize| UserId::parse(USERS[index]).unwrap();
        let key = |index: Option<usize>| index.map(|index| BusinessKey::parse_optional(KEYS[index]).unwrap().unwrap());
        let sent = match op.clone() {
            Op::SetPlan { account: a, period, anchor, plan, addon } => {
                let period = [Period::Monthly, Period::Quarterly, Period::Semiannual, Period::Annual][period];
                let plan = Plan { period, anchor_ms: anchor.ms(), plan_credits: plan, addon_credits: addon };
                Sent::SetPlan(SetPlan { account: account(a), plan, request: self.request() })
            }
            Op::GrantMany { account: a, lots, expires_step } => {
                for lot in 0..lots {
                    let kind = [LotKind::Addon, LotKind::Promo, LotKind::Adjustment][lot % 3];
                    let expires_ms = Some(self.now() + HOUR + expires_step * (lot as i64 / 2));
                    let grant = Grant {
                        account: account(a),
                        kind,
                        amount: 1 + lot as i64 % 4,
                        expires_ms,
                        request: self.request(),
                        create_account: true,
                    };
                    self.send(Sent::Grant(grant), step).await?;
                }
                return Ok(());
            }
            Op::List { account: a, state, size, before } => {
                let states = [
                    ReservationState::Held,
                    ReservationState::Committed,
                    ReservationState::Released,
                    ReservationState::Expired,
                ];
                let state = state.map(|index| states[index]);
                let now = self.now();
                let model = self.model.list_reservations(now, &account(a), state, size, before);
                let redis = self.redis.list_reservations(&account(a), state, size, before).await;
                return check(step, model, redis);
            }
            Op::Grant { account: a, kind, amount, expires_in, create } => Sent::Grant(Grant {
                account: account(a),
                kind: [LotKind::Addon, LotKind::Promo, LotKind::Adjustment][kind],
                amount,
                expires_ms: expires_in.map(|ms| self.now() + ms),
                request: self.request(),
                create_account: create,
            }),
            Op::Trial { account: a, credits, duration, create } => {
                let (credits, duration_ms) = rules.trial(credits, duration).unwrap();
                let request = self.request();
                Sent::Trial(StartTrial { account: account(a), credits, duration_ms, request, create_account: create })
            }
            Op::Budget { account: a, api, budget } => Sent::Budget(SetCategoryBudget {
                account: account(a),
                category: rules.category(if api { "api" } else { "enrichment" }).unwrap(),
                budget,
                request: self.request(),
            }),
            Op::Limit { account: a, user: u, limit } => {
                Sent::Limit(SetUserLimit { account: account(a), user: user(u), limit, request: self.request() })
            }
            Op::Reserve { account: a, user: u, amount, ttl, full_labels, partial: p } => Sent::Reserve(Reserve {
                account: account(a),
                user: user(u),
                category: rules.category("enrichment").unwrap(),
                amount: p.map_or(amount, |(unit, _)| unit * amount),
                partial: partial_of(p, amount),
                ttl_ms: rules.ttl(ttl).unwrap(),
                request: self.request(),
                labels: if full_labels {
                    full_labels_of(amount)
                } else {
                    Labels::parse([("row".to_owned(), amount.to_string())]).unwrap()
                },
            }),
            Op::Commit { pick, amount, final_commit, key: k } => Sent::Commit(Commit {
                reservation: self.reservation(pick),
                amount,
                final_commit,
                request: self.request(),
                business_key: key(k),
                labels: Labels::default(),
            }),
            Op::Extend { pick, amount, ttl, partial: p } => Sent::Extend(Extend {
                reservation: self.reservation(pick),
                amount: p.filter(|_| amount > 0).map_or(amount, |(unit, _)| unit * amount),
                ttl_ms: ttl.or(if amount == 0 { Some(MINUTE) } else { None }),
                request: self.request(),
                partial: partial_of(p.filter(|_| amount > 0), amount),
            }),
            Op::CommitBatch { pick, items, repeat } => {
                let mut items: Vec<CommitItem> = items
                    .into_iter()
                    .map(|(amount, k)| CommitItem {
                        id: self.request(),
                        amount,
                        business_key: key(k),
                        labels: Labels::parse([("row".to_owned(), amount.to_string())]).unwrap(),
                    })
                    .collect();
                if repeat && items.len() > 1 {
                    let first = items[0].id.clone();
                    items.last_mut().expect("two items or more").id = first;
                }
                Sent::CommitBatch(CommitBatch { reservation: self.reservation(pick), items })
            }
            Op::Release { pick } => {
                Sent::Release(Release { reservation: self.reservation(pick), request: self.request() })
            }
            Op::Charge { account: a, user: u, amount, key: k, overdraft } => Sent::Charge(Charge {
                account: account(a),
                user: user(u),
                category: rules.category("api").unwrap(),
                amount,
                request: self.request(),
                business_key: key(k),
                labels: Labels::default(),
                overdraft,
            }),
            Op::Quote { account: a, user: u, amount, category } => {
                let category = category.then(|| rules.category("enrichment").unwrap());
                let quote = Quote { account: account(a), user: u.map(user), category, amount, unit: 7 };
                let now = self.now();
                return check(step, self.model.quote(now, &quote), self.redis.quote(&quote).await);
            }
            Op::Retry { pick } | Op::Reuse { pick } if self.sent.is_empty() => {
                let _ = pick;
                return Ok(());
            }
            Op::Retry { pick } => self.sent[pick % self.sent.len()].clone(),
            Op::Reuse { pick } => self.sent[pick % self.sent.len()].altered(),
            Op::Advance { ms } => {
                self.clock.advance(ms);
                return Ok(());
            }
            Op::AdvanceToBoundary { account: a, which, pick, delta } => {
                // Reading the model here is safe: compare_views already caught both engines up
                // to this same instant.
                let now = self.now();
                let target = match which {
                    0 => self
                        .model
                        .account(now, &account(a))
                        .ok()
                        .and_then(|view| view.lots.first().map(|l| l.expires_ms)),
                    1 => self.model.account(now, &account(a)).ok().map(|view| view.cycle.end_ms),
                    _ => {
                        let id = self.reservation(pick);
                        self.model.reservation(now, &id).ok().map(|view| view.deadline_ms)
                    }
                };
                if let Some(target) = target.map(|t| t + delta).filter(|t| *t > now) {
                    self.clock.set(target);
                }
                return Ok(());
            }
            Op::ReserveToLotExpiry { account: a, user: u, amount } => {
                let now = self.now();
                let expiry =
                    self.model.account(now, &account(a)).ok().and_then(|v| v.lots.first().map(|l| l.expires_ms));
                let Some(ttl) = expiry.map(|e| e - now).and_then(|ttl| rules.ttl(ttl).ok()) else { return Ok(()) };
                Sent::Reserve(Reserve {
                    account: account(a),
                    user: user(u),
                    category: rules.category("enrichment").unwrap(),
                    amount,
                    ttl_ms: ttl,
                    request: self.request(),
                    labels: Labels::default(),
                    partial: None,
                })
            }
            Op::Sweep => {
                let now = self.now();
                let model = self.model.sweep(now);
                let redis = self.redis.sweep().await;
                return check(step, Ok(model), redis);
            }
        };
        self.send(sent, step).await
    }

    /// Both engines' views of every account and of the most recent reservations agree.
    async fn compare_views(&mut self, step: &str) -> Result<(), TestCaseError> {
        let now = self.now();
        for name in ACCOUNTS {
            let account = AccountId::parse(name).unwrap();
            check(step, self.model.account(now, &account), self.redis.account(&account).await)?;
        }
        let recent: Vec<ReservationId> = self.reservations.iter().rev().take(4).cloned().collect();
        for id in recent {
            check(step, self.model.reservation(now, &id), self.redis.reservation(&id).await)?;
        }
        self.model_events.extend(self.model.drain_events());
        Ok(())
    }
}

async fn run_case(redis: &RedisEngine, server: &RedisServer, ops: Vec<Op>) -> Result<(), TestCaseError> {
    assert_eq!(server.cli(&["flushall"]), "OK");
    // The Redis engine reads this same clock (clones share one instant).
    let clock = CLOCK.with(ManualClock::clone);
    clock.set(t0());
    let mut pair = Pair {
        model: Ledger::new(Rules::default().request_id_retention_ms),
        redis,
        clock,
        sent: Vec::new(),
        reservations: Vec::new(),
        model_events: Vec::new(),
        requests: 0,
    };
    for (index, op) in ops.iter().enumerate() {
        let step = format!("step {index}: {op:?}");
        pair.apply(op, &step).await?;
        pair.compare_views(&step).await?;
    }
    let mut model_events = pair.model_events.clone();
    model_events.extend(pair.model.drain_events());
    let redis_events = redis.outbox().await.map_err(|error| TestCaseError::fail(error.to_string()))?;
    for name in ACCOUNTS {
        let of = |events: &[Event]| events.iter().filter(|e| e.account.as_str() == name).cloned().collect::<Vec<_>>();
        prop_assert_eq!(of(&model_events), of(&redis_events), "event logs of {} differ", name);
    }
    Ok(())
}

thread_local! {
    /// The clock of the test's one Redis engine; each case resets it.
    static CLOCK: ManualClock = ManualClock::new(t0());
}

#[test]
fn redis_engine_agrees_with_the_reference_model() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let server = RedisServer::start();
    let clock = CLOCK.with(ManualClock::clone);
    let settings = redis_settings(vec![server.url()], false);
    let retention = Rules::default().request_id_retention_ms;
    let redis = runtime.block_on(RedisEngine::connect_with_test_clock(&settings, retention, Arc::new(clock))).unwrap();
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|cases| cases.parse().ok()).unwrap_or(CASES);
    let mut runner = TestRunner::new(Config { cases, ..Config::default() });
    let strategy = prop::collection::vec(op(), 1..STEPS_MAX);
    let result = runner.run(&strategy, |ops| runtime.block_on(run_case(&redis, &server, ops)));
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
