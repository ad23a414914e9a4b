//! Fail-open holds: Reserves and Extends admitted while Redis cannot be reached, for the
//! categories an operator lists in `fail_open_categories` (a dialer's call must not be cut
//! because Redis blipped). Every other category fails closed, as without this.
//!
//! **Bounded.** Admissions spend a local *allowance*: at most `fail_open_credits` per account on
//! this sidecar, counted over the credits its holds added and that are not yet charged to Redis;
//! at most `journal_entries_max` holds at a time; Reserves and takeovers only within
//! `fail_open_ms` of this sidecar's first admission attempt of the outage (the next answer from
//! Redis ends the outage), and a hold's own Extends only within `fail_open_ms` of its admission.
//! Beyond any of these, the call fails `UNAVAILABLE` as without fail-open. Each replica has its
//! own allowance.
//!
//! **Durable.** Every admission, extension, commit and release is a row in the outage journal's
//! SQLite file (`synchronous = FULL`), written before it is answered; the holds are rebuilt
//! from the rows at start (a SIGKILL loses nothing answered). Each operation runs in a task of
//! its own, so a caller that goes away (or whose deadline passes) cannot leave a row on disk
//! that the memory lacks.
//!
//! **Two kinds of hold, served here until they close.**
//! - A *new* hold (a Reserve during the outage) gets an id `<account>/<seq>` with a sequence
//!   number of [`OUTAGE_SEQ_MIN`] or more, a range the Redis engine never reaches (an account's
//!   own counter counts from 1).
//! - A Redis hold that an Extend finds unreachable is *taken over*, if this sidecar has seen it
//!   (its category, and what it held, from an answer since): the commits the journal holds for
//!   it move into the hold in the same transaction, the Extend is admitted, and the hold's later
//!   calls are served here too.
//!
//! Commits on either answer `OUTCOME_JOURNALED`; Extend, Release and GetReservation answer as
//! usual, from the figures kept here; a retry gets its first answer.
//!
//! **Settled exactly once, when closed.** Once a hold is closed (its final commit, a release, or
//! its deadline) and Redis answers, each of its commits is charged. On a taken-over hold each is
//! first sent to it exactly as the caller sent it, under the caller's request id (one that
//! reached Redis before is answered from memory), then the hold is released; what it declined
//! (expired, closed, holding too little) — and all of a new hold's commits — are charged as
//! *outage charges* that are never declined: what the account cannot cover becomes an overdraft
//! that its next grants repay (docs/rules.md#overdraft). The release and each outage charge have
//! a request id derived from the hold, a nonce of its first row, and the step. So every step run
//! again after a crash is answered from Redis's memory of it and charges once. A settled hold is
//! kept in memory for [`SETTLED_KEPT`] to answer retries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::{self, Engine};
pub use crate::journal::FailOpenConfig;
use crate::journal::{HoldRow, Journal, JournalError};
use crate::ledger::command::{Charge, Commit, CommitBatch, Extend, Release, Reserve};
use crate::ledger::{
    AccountId, BusinessKey, Category, Committed, Decision, Decline, DeclineReason, Extended, Labels, Released,
    RequestId, ReservationId, ReservationState, ReservationView, Reserved, SEQ_MAX, UserId,
};

/// The first sequence number of a hold admitted during an outage (2^52): Redis numbers an
/// account's holds from 1 and would need 2^52 of them to get here.
pub const OUTAGE_SEQ_MIN: u64 = 1 << 52;

/// The format of a row's entry (the `format` column); a new shape is a new number.
pub const ENTRY_FORMAT: i64 = 1;

/// How many open holds of fail-open categories this sidecar remembers (what they hold), so that
/// an Extend during an outage can take one over. Oldest forgotten first.
pub const HOLDS_REMEMBERED: usize = 100_000;

/// How long a settled hold is kept in memory, to answer retries of its calls.
pub const SETTLED_KEPT: Duration = Duration::from_secs(3600);

/// One row (format 1). `kind` is also the row's `kind` column.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Entry {
    /// A Reserve admitted during the outage; `available`: the allowance it left.
    Open {
        user: String,
        category: String,
        amount: i64,
        available: i64,
        created_ms: i64,
        deadline_ms: i64,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        fingerprint: String,
        nonce: u32,
    },
    /// A Redis hold taken over at `admitted_ms`: what it held as last seen.
    TakeOver {
        user: String,
        category: String,
        held: i64,
        created_ms: i64,
        deadline_ms: i64,
        admitted_ms: i64,
        nonce: u32,
    },
    Extend {
        amount: i64,
        deadline_ms: i64,
        fingerprint: String,
    },
    Commit {
        amount: i64,
        #[serde(rename = "final")]
        final_commit: bool,
        at_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        business_key: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        labels: BTreeMap<String, String>,
        fingerprint: String,
    },
    Release {
        at_ms: i64,
    },
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Self::Open { .. } => "open",
            Self::TakeOver { .. } => "take_over",
            Self::Extend { .. } => "extend",
            Self::Commit { .. } => "commit",
            Self::Release { .. } => "release",
        }
    }

    fn text(&self) -> String {
        serde_json::to_string(self).expect("an entry is plain data")
    }
}

/// A request seen on a hold: its fingerprint and the figure its answer carried (a Reserve's
/// allowance left, an Extend's credits added, a Release's credits returned; 0 for a Commit).
type Seen = (String, i64);

/// A hold served here, folded from its rows.
#[derive(Clone, Debug)]
struct Hold {
    id: ReservationId,
    user: UserId,
    category: Category,
    labels: Labels,
    taken_over: bool,
    /// Part of the settling request ids (two takeovers of one hold settle apart).
    nonce: u32,
    /// When this sidecar admitted it (a Reserve, or the takeover): its Extends are admitted
    /// within `fail_open_ms` of it.
    admitted_ms: i64,
    /// A new hold's first amount (what its Reserve answered); 0 when taken over.
    opened: i64,
    /// Held at the start (a new hold's amount, or what the taken-over hold held) plus extensions.
    reserved: i64,
    /// Counted against the allowance: what this sidecar added (a new hold's amount, extensions).
    local: i64,
    committed: i64,
    commits: Vec<Commit>,
    created_ms: i64,
    deadline_ms: i64,
    state: ReservationState,
    closed_ms: Option<i64>,
    /// Requests seen, by kind and request id.
    requests: HashMap<(&'static str, String), Seen>,
    /// The request id of the Reserve that opened it (a new hold).
    opened_by: Option<String>,
    /// Charged to Redis (its rows deleted); kept to answer retries until then + SETTLED_KEPT.
    settled: Option<Instant>,
}

impl Hold {
    /// A hold from its first row.
    fn start(id: &ReservationId, entry: &Entry) -> Option<Self> {
        let (user, category, reserved, local, created_ms, deadline_ms, labels, taken_over, admitted_ms, nonce) =
            match entry {
                Entry::Open { user, category, amount, created_ms, deadline_ms, labels, nonce, .. } => (
                    user,
                    category,
                    *amount,
                    *amount,
                    *created_ms,
                    *deadline_ms,
                    labels.clone(),
                    false,
                    *created_ms,
                    *nonce,
                ),
                Entry::TakeOver { user, category, held, created_ms, deadline_ms, admitted_ms, nonce } => {
                    (user, category, *held, 0, *created_ms, *deadline_ms, BTreeMap::new(), true, *admitted_ms, *nonce)
                }
                _ => return None,
            };
        Some(Self {
            id: id.clone(),
            user: UserId::parse(user).ok()?,
            category: Category::recorded(category.clone()),
            labels: Labels::parse(labels).ok()?,
            taken_over,
            nonce,
            admitted_ms,
            opened: if taken_over { 0 } else { reserved },
            reserved,
            local,
            committed: 0,
            commits: Vec::new(),
            created_ms,
            deadline_ms,
            state: ReservationState::Held,
            closed_ms: None,
            requests: HashMap::new(),
            opened_by: None,
            settled: None,
        })
    }

    fn held(&self) -> i64 {
        if self.state.is_open() { self.reserved - self.committed } else { 0 }
    }

    /// Closes it as expired if its deadline passed.
    fn expire(&mut self, now_ms: i64) {
        if self.state.is_open() && now_ms >= self.deadline_ms {
            self.state = ReservationState::Expired;
            self.closed_ms = Some(self.deadline_ms);
        }
    }

    fn view(&self) -> ReservationView {
        ReservationView {
            id: self.id.clone(),
            user: self.user.as_str().to_owned(),
            category: self.category.as_str().to_owned(),
            state: self.state,
            reserved: self.reserved,
            committed: self.committed,
            held: self.held(),
            returned: if self.state.is_open() { 0 } else { self.reserved - self.committed },
            commit_count: self.commits.len() as i64,
            created_ms: self.created_ms,
            deadline_ms: self.deadline_ms,
            closed_ms: self.closed_ms,
            labels: self.labels.to_map(),
        }
    }

    fn decline(&self, reason: DeclineReason, requested: i64) -> Decline {
        Decline {
            reason,
            requested,
            available: 0,
            user_remaining: None,
            held: self.held(),
            reservation_state: Some(self.state),
            account: self.id.account.clone(),
            user: Some(self.user.as_str().to_owned()),
            reservation: Some(Box::new(self.view())),
            category: None,
            category_remaining: None,
        }
    }

    /// The decline of a call on a closed hold.
    fn closed(&self, requested: i64) -> Decline {
        let reason = if self.state == ReservationState::Expired {
            DeclineReason::ReservationExpired
        } else {
            DeclineReason::ReservationClosed
        };
        self.decline(reason, requested)
    }

    /// A retry of a request this hold saw: `Some(figure)` for the same figures, the error for
    /// others, None when it is new.
    fn seen(&self, kind: &'static str, request: &RequestId, fingerprint: &str) -> engine::Result<Option<i64>> {
        match self.requests.get(&(kind, request.as_str().to_owned())) {
            Some((first, figure)) if first == fingerprint => Ok(Some(*figure)),
            Some(_) => Err(crate::ledger::Error::RequestIdReused(request.clone()).into()),
            None => Ok(None),
        }
    }

    /// Applies one row (at start, and after writing it); Err: a row that does not validate.
    fn apply(&mut self, request: &str, entry: &Entry) -> Result<(), String> {
        let figure = match entry {
            Entry::Open { available, .. } => *available,
            Entry::Extend { amount, .. } => *amount,
            Entry::Release { .. } => self.held(),
            _ => 0,
        };
        let fingerprint = match entry {
            Entry::Open { fingerprint, .. } | Entry::Extend { fingerprint, .. } | Entry::Commit { fingerprint, .. } => {
                fingerprint.clone()
            }
            Entry::TakeOver { .. } | Entry::Release { .. } => String::new(),
        };
        self.requests.insert((entry.kind(), request.to_owned()), (fingerprint, figure));
        match entry {
            Entry::Open { .. } => self.opened_by = Some(request.to_owned()),
            Entry::TakeOver { .. } => {}
            Entry::Extend { amount, deadline_ms, .. } => {
                self.reserved += amount;
                self.local += amount;
                self.deadline_ms = self.deadline_ms.max(*deadline_ms);
            }
            Entry::Commit { amount, final_commit, at_ms, business_key, labels, .. } => {
                let invalid = |error: crate::ledger::Error| error.to_string();
                self.commits.push(Commit {
                    reservation: self.id.clone(),
                    amount: *amount,
                    final_commit: *final_commit,
                    request: RequestId::parse(request).map_err(invalid)?,
                    business_key: BusinessKey::parse_optional(business_key.as_deref().unwrap_or(""))
                        .map_err(invalid)?,
                    labels: Labels::parse(labels.clone()).map_err(invalid)?,
                });
                self.committed += amount;
                if *final_commit {
                    self.state = ReservationState::Committed;
                    self.closed_ms = Some(*at_ms);
                }
            }
            Entry::Release { at_ms } => {
                self.state = ReservationState::Released;
                self.closed_ms = Some(*at_ms);
            }
        }
        Ok(())
    }
}

/// What this sidecar last saw of an open hold of a fail-open category.
#[derive(Clone, Debug)]
struct Noted {
    user: String,
    category: String,
    held: i64,
    created_ms: i64,
    deadline_ms: i64,
}

/// The most recently seen open holds, oldest forgotten first.
#[derive(Default)]
struct Remembered {
    holds: HashMap<ReservationId, (u64, Noted)>,
    order: VecDeque<(ReservationId, u64)>,
    stamp: u64,
}

impl Remembered {
    fn note(&mut self, id: &ReservationId, noted: Noted) {
        self.stamp += 1;
        self.holds.insert(id.clone(), (self.stamp, noted));
        self.order.push_back((id.clone(), self.stamp));
        while self.holds.len() > HOLDS_REMEMBERED || self.order.len() > 2 * HOLDS_REMEMBERED {
            let Some((oldest, stamp)) = self.order.pop_front() else { break };
            if self.holds.get(&oldest).is_some_and(|(current, _)| *current == stamp) {
                self.holds.remove(&oldest);
            }
        }
    }
}

/// What one settling pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settled {
    pub holds: usize,
    /// Credits charged beyond what the accounts had (owed).
    pub overdrawn: i64,
    /// Why the pass stopped early (Redis still away).
    pub stopped: Option<String>,
}

pub struct Outage {
    journal: Arc<Journal>,
    config: FailOpenConfig,
    /// Holds served here, settled ones included (until SETTLED_KEPT).
    holds: tokio::sync::Mutex<HashMap<ReservationId, Hold>>,
    /// How many `holds` has (one atomic load on the hot path when none).
    served: AtomicUsize,
    /// How many are not settled yet.
    unsettled: AtomicUsize,
    remembered: Mutex<Remembered>,
    /// The Reserves admitted here, by (account, request id): a Reserve retried once Redis is
    /// back finds its hold without the `holds` lock.
    opened: Mutex<HashMap<(AccountId, String), ReservationId>>,
    /// When this sidecar first met the outage under way, by the engine's clock (None: Redis
    /// answers).
    since: Mutex<Option<i64>>,
}

/// Runs one operation in a task of its own: it finishes even if the caller goes away, so the
/// rows and the memory never part.
async fn spawned<T: Send + 'static>(
    operation: impl Future<Output = engine::Result<T>> + Send + 'static,
) -> engine::Result<T> {
    tokio::spawn(operation).await.unwrap_or_else(|error| Err(engine::Error::Internal(format!("outage task: {error}"))))
}

impl Outage {
    /// Reads the holds an earlier run left in the journal's file; from now on it learns what
    /// the journal's applied commits leave held.
    pub async fn open(journal: Arc<Journal>, config: FailOpenConfig) -> Result<Arc<Self>, JournalError> {
        let pool = journal.pool();
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS outage_holds (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                reservation TEXT NOT NULL,
                kind TEXT NOT NULL,
                request_id TEXT NOT NULL,
                format INTEGER NOT NULL,
                entry TEXT NOT NULL,
                UNIQUE (reservation, kind, request_id)
            )",
        )
        .execute(pool)
        .await?;
        let rows: Vec<(i64, String, String, i64, String)> =
            sqlx::query_as("SELECT seq, reservation, request_id, format, entry FROM outage_holds ORDER BY seq")
                .fetch_all(pool)
                .await?;
        let mut holds: HashMap<ReservationId, Hold> = HashMap::new();
        for (seq, reservation, request, format, text) in rows {
            let corrupt = |reason: String| JournalError::Corrupt { seq, reason };
            if format != ENTRY_FORMAT {
                return Err(corrupt(format!("outage hold format {format} is not {ENTRY_FORMAT}: a newer sidecar's?")));
            }
            let id = ReservationId::parse(&reservation).map_err(|error| corrupt(error.to_string()))?;
            let entry: Entry = serde_json::from_str(&text).map_err(|error| corrupt(error.to_string()))?;
            let hold = match holds.get_mut(&id) {
                Some(hold) => hold,
                None => {
                    let hold =
                        Hold::start(&id, &entry).ok_or_else(|| corrupt("its first row does not open it".into()))?;
                    holds.entry(id.clone()).or_insert(hold)
                }
            };
            hold.apply(&request, &entry).map_err(corrupt)?;
        }
        if !holds.is_empty() {
            tracing::warn!(holds = holds.len(), "outage holds from an earlier run to settle when Redis answers");
        }
        let opened = holds
            .values()
            .filter_map(|hold| Some(((hold.id.account.clone(), hold.opened_by.clone()?), hold.id.clone())))
            .collect();
        let outage = Arc::new(Self {
            journal: journal.clone(),
            config,
            served: AtomicUsize::new(holds.len()),
            unsettled: AtomicUsize::new(holds.len()),
            holds: tokio::sync::Mutex::new(holds),
            remembered: Mutex::default(),
            opened: Mutex::new(opened),
            since: Mutex::new(None),
        });
        outage.gauge();
        let noted = Arc::downgrade(&outage);
        journal.on_applied(move |view| {
            if let Some(outage) = noted.upgrade() {
                outage.redis_answered();
                outage.note(view);
            }
        });
        Ok(outage)
    }

    /// Serves no hold, settled ones included (then nothing is left to settle or forget).
    pub fn is_idle(&self) -> bool {
        self.served.load(Ordering::Relaxed) == 0
    }

    /// A Reserve admitted here before, sent again (perhaps once Redis is back): its first
    /// answer, or None. One atomic load when no hold is served here.
    pub async fn reserved_before(&self, cmd: &Reserve) -> engine::Result<Option<Decision<Reserved>>> {
        if self.is_idle() || !self.fails_open(cmd.category.as_str()) {
            return Ok(None);
        }
        let holds = self.holds.lock().await;
        self.first_reserve_answer(&holds, cmd)
    }

    /// The first answer of a Reserve admitted here (found by the `opened` index), sent again.
    fn first_reserve_answer(
        &self,
        holds: &HashMap<ReservationId, Hold>,
        cmd: &Reserve,
    ) -> engine::Result<Option<Decision<Reserved>>> {
        let key = (cmd.account.clone(), cmd.request.as_str().to_owned());
        let Some(id) = self.opened.lock().expect("opened holds").get(&key).cloned() else { return Ok(None) };
        let Some(hold) = holds.get(&id) else { return Ok(None) };
        Ok(hold.seen("open", &cmd.request, &cmd.fingerprint().0)?.map(|available| {
            let (reservation, amount, deadline_ms) = (hold.id.clone(), hold.opened, hold.created_ms + cmd.ttl_ms);
            Decision::Done(Reserved { reservation, amount, deadline_ms, available })
        }))
    }

    /// Holds served here and not yet charged to Redis.
    pub fn len(&self) -> usize {
        self.unsettled.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn counted(&self, holds: &HashMap<ReservationId, Hold>) {
        self.served.store(holds.len(), Ordering::Relaxed);
        self.unsettled.store(holds.values().filter(|hold| hold.settled.is_none()).count(), Ordering::Relaxed);
        self.gauge();
    }

    fn fails_open(&self, category: &str) -> bool {
        self.config.categories.contains(category)
    }

    /// Redis answered a call: the outage (if any) is over.
    pub fn redis_answered(&self) {
        let mut since = self.since.lock().expect("outage start");
        if since.is_some() {
            *since = None;
        }
    }

    /// Remembers an open hold an answer from Redis showed (fail-open categories only), so that
    /// an Extend during an outage can take it over; forgets it once closed.
    pub fn note(&self, view: &ReservationView) {
        if !self.fails_open(&view.category) || self.journal.is_handed_over(&view.id) {
            return;
        }
        let mut remembered = self.remembered.lock().expect("remembered holds");
        if !view.state.is_open() {
            remembered.holds.remove(&view.id);
            return;
        }
        let noted = Noted {
            user: view.user.clone(),
            category: view.category.clone(),
            held: view.held,
            created_ms: view.created_ms,
            deadline_ms: view.deadline_ms,
        };
        remembered.note(&view.id, noted);
    }

    /// Remembers a hold a Reserve opened in Redis.
    pub fn note_reserved(&self, cmd: &Reserve, reserved: &Reserved, now_ms: i64) {
        if !self.fails_open(cmd.category.as_str()) {
            return;
        }
        let noted = Noted {
            user: cmd.user.as_str().to_owned(),
            category: cmd.category.as_str().to_owned(),
            held: reserved.amount,
            created_ms: now_ms,
            deadline_ms: reserved.deadline_ms,
        };
        self.remembered.lock().expect("remembered holds").note(&reserved.reservation, noted);
    }

    /// Is `id` served here (settled ones included)? One atomic load when nothing is.
    pub async fn serves(&self, id: &ReservationId) -> bool {
        self.served.load(Ordering::Relaxed) > 0 && self.holds.lock().await.contains_key(id)
    }

    /// Whether a Reserve or a takeover may be admitted, `cause` the outage's error: within the
    /// window since this sidecar first met the outage, and within the bound on holds.
    fn admissible(&self, cause: &str, now_ms: i64) -> engine::Result<()> {
        if self.len() >= self.journal.entries_max() {
            return Err(engine::Error::Unavailable(format!(
                "{cause}; {} holds are served during the outage already (journal_entries_max)",
                self.len()
            )));
        }
        let mut since = self.since.lock().expect("outage start");
        let started = *since.get_or_insert(now_ms);
        if now_ms - started > self.config.window.as_millis() as i64 {
            return Err(engine::Error::Unavailable(format!(
                "{cause}; the outage has lasted past fail_open_ms ({} ms): failing closed",
                self.config.window.as_millis()
            )));
        }
        Ok(())
    }

    /// The allowance left for `account`.
    fn allowance_left(&self, holds: &HashMap<ReservationId, Hold>, account: &AccountId) -> i64 {
        let used: i64 = holds
            .values()
            .filter(|hold| &hold.id.account == account && hold.settled.is_none())
            .map(|hold| hold.local)
            .sum();
        (self.config.credits - used).max(0)
    }

    fn allowance_spent(&self, cause: &str, account: &AccountId, asked: i64, left: i64) -> engine::Error {
        metrics::counter!(crate::telemetry::FAIL_OPEN_CALLS, "result" => "allowance_spent").increment(1);
        engine::Error::Unavailable(format!(
            "{cause}; the fail-open allowance of account {account} cannot cover {asked} credits ({left} of {} left on \
             this sidecar)",
            self.config.credits
        ))
    }

    /// Writes rows of one hold in one transaction (called inside the operation's own task).
    async fn record(&self, id: &ReservationId, rows: &[(&str, &Entry)]) -> engine::Result<()> {
        let unavailable = |error: sqlx::Error| engine::Error::Unavailable(format!("the outage journal: {error}"));
        let mut tx = self.journal.pool().begin().await.map_err(unavailable)?;
        for (request, entry) in rows {
            sqlx::query(
                "INSERT INTO outage_holds (reservation, kind, request_id, format, entry) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id.to_string())
            .bind(entry.kind())
            .bind(*request)
            .bind(ENTRY_FORMAT)
            .bind(entry.text())
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        for (request, entry) in rows {
            // The whole row, so that an operator can settle it by hand if the file is ever lost.
            tracing::warn!(reservation = %id, request, entry = entry.text(), "Redis unreachable: outage hold changed");
        }
        Ok(())
    }

    fn gauge(&self) {
        metrics::gauge!(crate::telemetry::FAIL_OPEN_HOLDS).set(self.len() as f64);
    }

    /// A Reserve that met an outage (`cause`): admitted from the allowance, or the error.
    pub async fn reserve(
        self: &Arc<Self>,
        cmd: Reserve,
        cause: String,
        now_ms: i64,
    ) -> engine::Result<Decision<Reserved>> {
        let this = self.clone();
        spawned(async move { this.reserve_now(&cmd, cause, now_ms).await }).await
    }

    async fn reserve_now(&self, cmd: &Reserve, cause: String, now_ms: i64) -> engine::Result<Decision<Reserved>> {
        if !self.fails_open(cmd.category.as_str()) {
            return Err(engine::Error::Unavailable(cause));
        }
        let fingerprint = cmd.fingerprint().0;
        let mut holds = self.holds.lock().await;
        // A retry of a Reserve admitted here gets its first answer.
        if let Some(first) = self.first_reserve_answer(&holds, cmd)? {
            return Ok(first);
        }
        self.admissible(&cause, now_ms)?;
        let left = self.allowance_left(&holds, &cmd.account);
        let amount = match cmd.partial {
            Some(partial) => partial.amount(cmd.amount, left),
            None => cmd.amount,
        };
        if amount > left {
            return Err(self.allowance_spent(&cause, &cmd.account, amount, left));
        }
        let id = loop {
            let seq = OUTAGE_SEQ_MIN + random_u64() % (SEQ_MAX - OUTAGE_SEQ_MIN);
            let id = ReservationId { account: cmd.account.clone(), seq };
            if !holds.contains_key(&id) {
                break id;
            }
        };
        let entry = Entry::Open {
            user: cmd.user.as_str().to_owned(),
            category: cmd.category.as_str().to_owned(),
            amount,
            available: left - amount,
            created_ms: now_ms,
            deadline_ms: now_ms + cmd.ttl_ms,
            labels: cmd.labels.to_map(),
            fingerprint,
            nonce: random_u64() as u32,
        };
        self.record(&id, &[(cmd.request.as_str(), &entry)]).await?;
        let mut hold = Hold::start(&id, &entry).expect("an open entry opens a hold");
        hold.apply(cmd.request.as_str(), &entry).map_err(engine::Error::Internal)?;
        let answer =
            Reserved { reservation: id.clone(), amount, deadline_ms: hold.deadline_ms, available: left - amount };
        self.opened
            .lock()
            .expect("opened holds")
            .insert((cmd.account.clone(), cmd.request.as_str().to_owned()), id.clone());
        holds.insert(id, hold);
        self.counted(&holds);
        metrics::counter!(crate::telemetry::FAIL_OPEN_CALLS, "result" => "reserved").increment(1);
        Ok(Decision::Done(answer))
    }

    /// An Extend on a hold served here (`cause` None: Redis was not asked), or on a Redis hold
    /// this sidecar saw, that met an outage (`cause`).
    pub async fn extend(
        self: &Arc<Self>,
        cmd: Extend,
        cause: Option<String>,
        now_ms: i64,
    ) -> engine::Result<Decision<Extended>> {
        let this = self.clone();
        spawned(async move { this.extend_now(&cmd, cause, now_ms).await }).await
    }

    async fn extend_now(&self, cmd: &Extend, cause: Option<String>, now_ms: i64) -> engine::Result<Decision<Extended>> {
        let mut holds = self.holds.lock().await;
        let account = &cmd.reservation.account;
        if !holds.contains_key(&cmd.reservation) {
            let cause = cause.clone().unwrap_or_else(|| "Redis cannot be reached".to_owned());
            // Checked before taking over: a refused Extend leaves the hold to Redis.
            let left = self.allowance_left(&holds, account);
            let least = cmd.partial.map_or(cmd.amount, |partial| partial.unit * partial.min_units);
            if least > left {
                return Err(self.allowance_spent(&cause, account, least, left));
            }
            self.take_over(&mut holds, &cmd.reservation, &cause, now_ms).await?;
        }
        let fingerprint = cmd.fingerprint().0;
        let left = self.allowance_left(&holds, account);
        let hold = holds.get_mut(&cmd.reservation).expect("served here");
        if let Some(added) = hold.seen("extend", &cmd.request, &fingerprint)? {
            let (held, deadline_ms, reservation) = (hold.held(), hold.deadline_ms, hold.view());
            return Ok(Decision::Done(Extended { added, held, deadline_ms, reservation }));
        }
        hold.expire(now_ms);
        if !hold.state.is_open() || hold.settled.is_some() {
            return Ok(Decision::Declined(hold.closed(cmd.amount)));
        }
        // While the outage lasts (as far as this sidecar knows): a hold served here never goes
        // back to Redis, and a call longer than fail_open_ms must not be cut once Redis is back.
        let outage_lasts = self.since.lock().expect("outage start").is_some();
        if outage_lasts && now_ms - hold.admitted_ms > self.config.window.as_millis() as i64 {
            return Err(engine::Error::Unavailable(format!(
                "reservation {} was admitted during an outage more than fail_open_ms ago: failing closed",
                cmd.reservation
            )));
        }
        let amount = match cmd.partial {
            Some(partial) => partial.amount(cmd.amount, left),
            None => cmd.amount,
        };
        if amount > left {
            let cause = cause.unwrap_or_else(|| format!("reservation {} is served during an outage", cmd.reservation));
            return Err(self.allowance_spent(&cause, account, amount, left));
        }
        let deadline_ms = cmd.ttl_ms.map_or(hold.deadline_ms, |ttl| hold.deadline_ms.max(now_ms + ttl));
        let entry = Entry::Extend { amount, deadline_ms, fingerprint };
        self.record(&cmd.reservation, &[(cmd.request.as_str(), &entry)]).await?;
        hold.apply(cmd.request.as_str(), &entry).map_err(engine::Error::Internal)?;
        metrics::counter!(crate::telemetry::FAIL_OPEN_CALLS, "result" => "extended").increment(1);
        Ok(Decision::Done(Extended {
            added: amount,
            held: hold.held(),
            deadline_ms: hold.deadline_ms,
            reservation: hold.view(),
        }))
    }

    /// Starts serving a Redis hold this sidecar saw (or the Extend fails as without fail-open):
    /// its row and the commits the journal holds for it, moved here, in one transaction.
    async fn take_over(
        &self,
        holds: &mut HashMap<ReservationId, Hold>,
        id: &ReservationId,
        cause: &str,
        now_ms: i64,
    ) -> engine::Result<()> {
        let noted = self.remembered.lock().expect("remembered holds").holds.get(id).map(|(_, noted)| noted.clone());
        let Some(noted) = noted.filter(|noted| self.fails_open(&noted.category)) else {
            return Err(engine::Error::Unavailable(cause.to_owned()));
        };
        if now_ms >= noted.deadline_ms {
            return Err(engine::Error::Unavailable(format!("{cause}; reservation {id} was due to expire")));
        }
        self.admissible(cause, now_ms)?;
        let entry = Entry::TakeOver {
            user: noted.user,
            category: noted.category,
            held: noted.held,
            created_ms: noted.created_ms,
            deadline_ms: noted.deadline_ms,
            admitted_ms: now_ms,
            nonce: random_u64() as u32,
        };
        let mut hold = Hold::start(id, &entry)
            .ok_or_else(|| engine::Error::Internal(format!("reservation {id}: a hold seen with an invalid user")))?;
        let mut moved = Vec::new();
        let rows = |commits: &[Commit]| {
            let mut rows: Vec<HoldRow> = vec![("take_over", String::new(), entry.text())];
            for commit in commits {
                let row = commit_entry(commit, commit.fingerprint().0, now_ms);
                rows.push(("commit", commit.request.as_str().to_owned(), row.text()));
                moved.push(row);
            }
            rows
        };
        let commits = self
            .journal
            .hand_over(id, ENTRY_FORMAT, rows)
            .await
            .map_err(|error| engine::Error::Unavailable(format!("{cause}; the outage journal: {error}")))?;
        hold.apply("", &entry).map_err(engine::Error::Internal)?;
        for (commit, row) in commits.iter().zip(&moved) {
            hold.apply(commit.request.as_str(), row).map_err(engine::Error::Internal)?;
        }
        tracing::warn!(reservation = %id, entry = entry.text(), moved = commits.len(), "Redis unreachable: hold taken over");
        // Taken over once: a later outage does not take it over again from this old figure (and
        // `note` ignores handed-over holds from now on).
        self.remembered.lock().expect("remembered holds").holds.remove(id);
        holds.insert(id.clone(), hold);
        self.counted(holds);
        metrics::counter!(crate::telemetry::FAIL_OPEN_CALLS, "result" => "taken_over").increment(1);
        Ok(())
    }

    /// A Commit on a hold served here: recorded (`None`: answered JOURNALED), or declined.
    pub async fn commit(self: &Arc<Self>, cmd: Commit, now_ms: i64) -> engine::Result<Option<Decision<Committed>>> {
        let this = self.clone();
        spawned(async move { this.commit_now(&cmd, now_ms).await }).await
    }

    async fn commit_now(&self, cmd: &Commit, now_ms: i64) -> engine::Result<Option<Decision<Committed>>> {
        let mut holds = self.holds.lock().await;
        let hold = served(&mut holds, &cmd.reservation)?;
        let fingerprint = cmd.fingerprint().0;
        if hold.seen("commit", &cmd.request, &fingerprint)?.is_some() {
            return Ok(None);
        }
        hold.expire(now_ms);
        if !hold.state.is_open() || hold.settled.is_some() {
            return Ok(Some(Decision::Declined(hold.closed(cmd.amount))));
        }
        if cmd.amount > hold.held() {
            return Ok(Some(Decision::Declined(hold.decline(DeclineReason::ExceedsHold, cmd.amount))));
        }
        let entry = commit_entry(cmd, fingerprint, now_ms);
        self.record(&cmd.reservation, &[(cmd.request.as_str(), &entry)]).await?;
        hold.apply(cmd.request.as_str(), &entry).map_err(engine::Error::Internal)?;
        Ok(None)
    }

    /// A CommitBatch on a hold served here: every new item recorded, in one transaction (`None`:
    /// each answered JOURNALED), or — when they do not fit in what it holds, or it is closed —
    /// none, each declined.
    pub async fn commit_batch(
        self: &Arc<Self>,
        cmd: CommitBatch,
        now_ms: i64,
    ) -> engine::Result<Option<Vec<Option<Decline>>>> {
        let this = self.clone();
        spawned(async move { this.commit_batch_now(&cmd, now_ms).await }).await
    }

    async fn commit_batch_now(&self, cmd: &CommitBatch, now_ms: i64) -> engine::Result<Option<Vec<Option<Decline>>>> {
        let mut holds = self.holds.lock().await;
        let hold = served(&mut holds, &cmd.reservation)?;
        let commits: Vec<Commit> = cmd.commits().collect();
        let mut fresh = Vec::new();
        let mut taken = Vec::new();
        for commit in &commits {
            let fingerprint = commit.fingerprint().0;
            let seen = hold.seen("commit", &commit.request, &fingerprint)?.is_some();
            taken.push(seen);
            if !seen {
                fresh.push((commit, commit_entry(commit, fingerprint, now_ms)));
            }
        }
        hold.expire(now_ms);
        let total: i64 = fresh.iter().map(|(commit, _)| commit.amount).sum();
        let closed = !hold.state.is_open() || hold.settled.is_some();
        if !fresh.is_empty() && (closed || total > hold.held()) {
            // Items taken before answer as then (JOURNALED); the new ones are declined.
            let answer = |(commit, taken): (&Commit, &bool)| {
                (!taken).then(|| {
                    if closed {
                        hold.closed(commit.amount)
                    } else {
                        hold.decline(DeclineReason::ExceedsHold, commit.amount)
                    }
                })
            };
            return Ok(Some(commits.iter().zip(&taken).map(answer).collect()));
        }
        let rows: Vec<(&str, &Entry)> = fresh.iter().map(|(commit, entry)| (commit.request.as_str(), entry)).collect();
        if !rows.is_empty() {
            self.record(&cmd.reservation, &rows).await?;
        }
        for (request, entry) in rows {
            hold.apply(request, entry).map_err(engine::Error::Internal)?;
        }
        Ok(None)
    }

    /// A Release of a hold served here.
    pub async fn release(self: &Arc<Self>, cmd: Release, now_ms: i64) -> engine::Result<Decision<Released>> {
        let this = self.clone();
        spawned(async move { this.release_now(&cmd, now_ms).await }).await
    }

    async fn release_now(&self, cmd: &Release, now_ms: i64) -> engine::Result<Decision<Released>> {
        let mut holds = self.holds.lock().await;
        let hold = served(&mut holds, &cmd.reservation)?;
        if let Some(returned) = hold.seen("release", &cmd.request, "")? {
            return Ok(Decision::Done(Released { returned, reservation: hold.view() }));
        }
        hold.expire(now_ms);
        if !hold.state.is_open() || hold.settled.is_some() {
            return Ok(Decision::Declined(hold.closed(0)));
        }
        let returned = hold.held();
        let entry = Entry::Release { at_ms: now_ms };
        self.record(&cmd.reservation, &[(cmd.request.as_str(), &entry)]).await?;
        hold.apply(cmd.request.as_str(), &entry).map_err(engine::Error::Internal)?;
        Ok(Decision::Done(Released { returned, reservation: hold.view() }))
    }

    /// A hold served here, as it stands.
    pub async fn reservation(&self, id: &ReservationId, now_ms: i64) -> Option<ReservationView> {
        let mut holds = self.holds.lock().await;
        let hold = holds.get_mut(id)?;
        hold.expire(now_ms);
        Some(hold.view())
    }

    /// Charges the closed holds to Redis (see the module's doc), until none is left or Redis
    /// fails again; forgets settled holds kept past SETTLED_KEPT.
    pub async fn settle(self: &Arc<Self>, engine: &Engine, now_ms: i64) -> Settled {
        let mut settled = Settled::default();
        let closed: Vec<Hold> = {
            let mut holds = self.holds.lock().await;
            holds.retain(|id, hold| {
                let kept = hold.settled.is_none_or(|at| at.elapsed() < SETTLED_KEPT);
                if !kept && hold.taken_over {
                    self.journal.forget_handed_over(id);
                }
                if !kept && let Some(request) = &hold.opened_by {
                    self.opened.lock().expect("opened holds").remove(&(id.account.clone(), request.clone()));
                }
                kept
            });
            self.counted(&holds);
            holds.values_mut().filter(|hold| hold.settled.is_none()).for_each(|hold| hold.expire(now_ms));
            holds.values().filter(|hold| hold.settled.is_none() && !hold.state.is_open()).cloned().collect()
        };
        for hold in closed {
            // In a task of its own: a shutdown's timeout cannot cut it between deleting the rows
            // and marking the hold settled.
            let (this, engine) = (self.clone(), engine.clone());
            let one = tokio::spawn(async move { this.settle_one(&engine, &hold).await });
            match one.await.unwrap_or_else(|error| Err(format!("settling task: {error}"))) {
                Ok(overdrawn) => {
                    settled.holds += 1;
                    settled.overdrawn += overdrawn;
                }
                Err(cause) => {
                    settled.stopped = Some(cause);
                    break;
                }
            }
        }
        settled
    }

    /// Charges one closed hold, then marks it settled. Err: Redis is away (nothing lost: it
    /// runs again, each step answered from Redis's memory of it).
    async fn settle_one(&self, engine: &Engine, hold: &Hold) -> Result<i64, String> {
        let away = |error: &engine::Error| matches!(error, engine::Error::Unavailable(_) | engine::Error::StateLost(_));
        let mut overdrawn = 0;
        let mut refused = None;
        let mut to_charge = Vec::new();
        // Whether Redis answered a step (a hold with nothing to charge asks it nothing).
        let mut answered = false;
        for (index, commit) in hold.commits.iter().enumerate().filter(|(_, commit)| commit.amount > 0) {
            if !hold.taken_over {
                to_charge.push((index, commit));
                continue;
            }
            // On a taken-over hold, every commit goes to it first, exactly as the caller sent it
            // and under its request id: one that reached Redis before (a timed-out call, a commit
            // applied while being handed over) is answered from memory and charges once; one it
            // declines (expired, closed, holding too little) had no effect there and is charged.
            match engine.commit(commit).await {
                Ok(Decision::Done(_)) => answered = true,
                Ok(Decision::Declined(_)) => {
                    answered = true;
                    to_charge.push((index, commit));
                }
                Err(error) if away(&error) => return Err(error.to_string()),
                // The caller reused the request id with other figures, and Redis has the other:
                // that one was charged, as Redis would have refused this one.
                Err(engine::Error::Ledger(crate::ledger::Error::RequestIdReused(_))) => {
                    tracing::error!(reservation = %hold.id, ?commit, "a request id reused with other figures: not charged again");
                }
                // The hold is gone from Redis (purged past retention): charged.
                Err(_) => to_charge.push((index, commit)),
            }
        }
        // The taken-over hold is released before the charges, so what it held can pay for them.
        if hold.taken_over {
            let release = Release { reservation: hold.id.clone(), request: step_request(hold, "release") };
            match engine.release(&release).await {
                Ok(_) => answered = true,
                Err(error) if away(&error) => return Err(error.to_string()),
                Err(error) => tracing::warn!(reservation = %hold.id, %error, "a taken-over hold could not be released"),
            }
        }
        for (index, commit) in to_charge {
            let charge = Charge {
                account: hold.id.account.clone(),
                user: hold.user.clone(),
                category: hold.category.clone(),
                amount: commit.amount,
                request: step_request(hold, &format!("c{index}")),
                business_key: commit.business_key.clone(),
                labels: commit.labels.clone(),
                overdraft: true,
            };
            match engine.charge(&charge).await {
                Ok(Decision::Done(charged)) => {
                    overdrawn += charged.overdrawn;
                    answered = true;
                }
                Ok(Decision::Declined(decline)) => {
                    refused = Some(format!("an outage charge was declined: {:?}", decline.reason));
                    break;
                }
                Err(error) if away(&error) => return Err(error.to_string()),
                Err(error) => {
                    refused = Some(error.to_string());
                    break;
                }
            }
        }
        let view = hold.view();
        match &refused {
            // Retrying cannot mend it (the account is gone, say): logged whole, dropped.
            Some(error) => tracing::error!(reservation = %hold.id, ?view, commits = ?hold.commits, error,
                "outage hold refused when settled; dropped"),
            None if overdrawn > 0 => {
                tracing::warn!(reservation = %hold.id, overdrawn, ?view, "outage hold settled with an overdraft")
            }
            None => tracing::info!(reservation = %hold.id, ?view, "outage hold settled"),
        }
        let result = if refused.is_some() { "refused" } else { "settled" };
        metrics::counter!(crate::telemetry::FAIL_OPEN_CALLS, "result" => result).increment(1);
        metrics::counter!(crate::telemetry::OVERDRAWN_CREDITS).increment(overdrawn.max(0) as u64);
        sqlx::query("DELETE FROM outage_holds WHERE reservation = $1")
            .bind(hold.id.to_string())
            .execute(self.journal.pool())
            .await
            .map_err(|error| error.to_string())?;
        let mut holds = self.holds.lock().await;
        if let Some(kept) = holds.get_mut(&hold.id) {
            kept.settled = Some(Instant::now());
        }
        self.counted(&holds);
        drop(holds);
        if answered {
            self.redis_answered();
        }
        Ok(overdrawn)
    }

    /// At shutdown: logs every hold still served here and not settled, whole, at ERROR.
    pub async fn report_left(&self) {
        for hold in self.holds.lock().await.values().filter(|hold| hold.settled.is_none()) {
            tracing::error!(reservation = %hold.id, view = ?hold.view(), commits = ?hold.commits,
                "stopping with an outage hold not yet charged to Redis");
        }
    }
}

/// The hold served here, or Internal (the caller checked `serves` first).
fn served<'a>(holds: &'a mut HashMap<ReservationId, Hold>, id: &ReservationId) -> engine::Result<&'a mut Hold> {
    holds.get_mut(id).ok_or_else(|| engine::Error::Internal(format!("reservation {id} is not served here")))
}

fn commit_entry(cmd: &Commit, fingerprint: String, at_ms: i64) -> Entry {
    Entry::Commit {
        amount: cmd.amount,
        final_commit: cmd.final_commit,
        at_ms,
        business_key: cmd.business_key.as_ref().map(|key| key.as_str().to_owned()),
        labels: cmd.labels.to_map(),
        fingerprint,
    }
}

/// 64 unpredictable bits, for a new hold's sequence number and a hold's nonce (two replicas must
/// not pick the same ones for an account: the settling request ids derive from them). The
/// standard library's `RandomState` is seeded from the OS's randomness; no crate is needed for
/// two numbers per admission.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// The request id of one settling step: fixed by the hold, its nonce and the step, so that a
/// step run again is answered from Redis's memory of the first run.
fn step_request(hold: &Hold, step: &str) -> RequestId {
    RequestId::parse(&format!("outage-{}-{}-{step}", hold.id.seq, hold.nonce)).expect("a valid request id")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Format 1 is a contract: the rows one binary writes, the next reads (and settles).
    #[test]
    fn rows_are_stored_in_format_1_and_fold_into_the_hold() {
        let labels = BTreeMap::from([("region".to_owned(), "eu".to_owned())]);
        let rows = [
            (
                "call-1",
                Entry::Open {
                    user: "agent".into(),
                    category: "dialer".into(),
                    amount: 20,
                    available: 30,
                    created_ms: 1_000,
                    deadline_ms: 601_000,
                    labels: labels.clone(),
                    fingerprint: "f1".into(),
                    nonce: 7,
                },
                r#"{"kind":"open","user":"agent","category":"dialer","amount":20,"available":30,"created_ms":1000,"deadline_ms":601000,"labels":{"region":"eu"},"fingerprint":"f1","nonce":7}"#,
            ),
            (
                "call-1-x",
                Entry::Extend { amount: 5, deadline_ms: 700_000, fingerprint: "f2".into() },
                r#"{"kind":"extend","amount":5,"deadline_ms":700000,"fingerprint":"f2"}"#,
            ),
            (
                "call-1-c",
                Entry::Commit {
                    amount: 12,
                    final_commit: true,
                    at_ms: 2_000,
                    business_key: Some("call:1".into()),
                    labels,
                    fingerprint: "f3".into(),
                },
                r#"{"kind":"commit","amount":12,"final":true,"at_ms":2000,"business_key":"call:1","labels":{"region":"eu"},"fingerprint":"f3"}"#,
            ),
        ];
        assert_eq!(Entry::Release { at_ms: 3_000 }.text(), r#"{"kind":"release","at_ms":3000}"#);
        let id = ReservationId::parse(&format!("acct/{}", OUTAGE_SEQ_MIN + 7)).unwrap();
        let mut hold = None;
        for (request, entry, pinned) in &rows {
            assert_eq!(&entry.text(), pinned);
            let read: Entry = serde_json::from_str(pinned).unwrap();
            let hold = hold.get_or_insert_with(|| Hold::start(&id, &read).unwrap());
            hold.apply(request, &read).unwrap();
        }
        let hold = hold.unwrap();
        assert_eq!((hold.reserved, hold.local, hold.committed, hold.opened, hold.nonce), (25, 25, 12, 20, 7));
        assert_eq!((hold.state, hold.closed_ms, hold.deadline_ms), (ReservationState::Committed, Some(2_000), 700_000));
        assert_eq!(hold.commits[0].business_key.as_ref().map(BusinessKey::as_str), Some("call:1"));
        let view = hold.view();
        assert_eq!((view.held, view.returned, view.commit_count), (0, 13, 1));
        // Retries find their first answers' figures.
        let request = |id: &str| RequestId::parse(id).unwrap();
        assert_eq!(hold.seen("open", &request("call-1"), "f1").unwrap(), Some(30));
        assert_eq!(hold.seen("extend", &request("call-1-x"), "f2").unwrap(), Some(5));
        assert!(hold.seen("extend", &request("call-1-x"), "other").is_err());
        assert_eq!(hold.seen("commit", &request("call-1-z"), "f3").unwrap(), None);

        let taken = r#"{"kind":"take_over","user":"agent","category":"dialer","held":10,"created_ms":5,"deadline_ms":9,"admitted_ms":6,"nonce":3}"#;
        let read: Entry = serde_json::from_str(taken).unwrap();
        assert_eq!(read.text(), taken);
        let hold = Hold::start(&ReservationId::parse("acct/3").unwrap(), &read).unwrap();
        assert_eq!((hold.taken_over, hold.reserved, hold.local, hold.opened, hold.admitted_ms), (true, 10, 0, 0, 6));
        let release = Entry::Release { at_ms: 4 };
        assert!(Hold::start(&ReservationId::parse("acct/3").unwrap(), &release).is_none(), "a release opens nothing");
    }

    fn taken_over(id: &str) -> Hold {
        let entry = Entry::TakeOver {
            user: "agent".into(),
            category: "dialer".into(),
            held: 1,
            created_ms: 0,
            deadline_ms: 9,
            admitted_ms: 1,
            nonce: 42,
        };
        Hold::start(&ReservationId::parse(id).unwrap(), &entry).unwrap()
    }

    #[test]
    fn a_commit_row_that_does_not_validate_is_refused() {
        let mut hold = taken_over("acct/3");
        let commit = Entry::Commit {
            amount: 1,
            final_commit: false,
            at_ms: 1,
            business_key: None,
            labels: BTreeMap::new(),
            fingerprint: String::new(),
        };
        assert!(hold.apply("", &commit).unwrap_err().contains("request_id"));
    }

    #[test]
    fn settling_request_ids_are_fixed_by_the_hold_its_nonce_and_the_step() {
        let hold = taken_over(&format!("acct/{OUTAGE_SEQ_MIN}"));
        assert_eq!(step_request(&hold, "c0").as_str(), "outage-4503599627370496-42-c0");
        assert_eq!(step_request(&hold, "release").as_str(), "outage-4503599627370496-42-release");
    }
}
