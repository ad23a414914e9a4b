//! The outage journal: Commits accepted while Redis cannot be reached, kept on this sidecar's
//! disk and applied to Redis, in the order they came, as soon as it answers again.
//!
//! A commit inside a live hold cannot overspend: its credits are already held. So, for the
//! categories an operator lists in `journal_categories` (default: none), a Commit that meets an
//! outage is written here (SQLite, `synchronous = FULL`: on disk before the caller hears
//! `OUTCOME_JOURNALED`) instead of failing. Applying it later is an ordinary Commit under the
//! caller's own request id, so an entry applied twice (a crash between applying it and deleting
//! it, or a commit that reached Redis before the connection broke) charges once: the second
//! application gets Redis's remembered answer.
//!
//! Order: every call on a reservation with journaled commits (Commit, CommitBatch, Extend,
//! Release, GetReservation) first applies those commits, so a Release cannot overtake the commits before it.
//! Only the replica that journaled a commit holds it; callers keep a reservation on one sidecar
//! (the sidecar pattern), or accept that another replica's Release may close the hold first.
//!
//! What a journaled commit can still meet when it is applied is what any late commit meets: the
//! hold expired (its deadline passed before Redis came back) or was closed, or the commit exceeds
//! what is held. It is then declined like any commit (the caller learns it by sending the same
//! Commit again), counted in `credit_sidecar_journal_commits_total{result="declined"}` and logged.
//!
//! The journal is Redis-only: the embedded engine has no outage to ride out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqliteLockingMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::engine::{Engine, Error as EngineError};
use crate::ledger::command::Commit;
use crate::ledger::{BusinessKey, Decision, Labels, RequestId, ReservationId};

/// The format of an entry (the `format` column); a new shape is a new number, and old ones stay
/// readable, because a journal written by one binary is applied by the next.
pub const ENTRY_FORMAT: i64 = 1;

/// How many reservations' categories the journal remembers (oldest forgotten first): a commit
/// on a reservation it does not know is not journaled unless `journal_categories` is `["*"]`.
pub const CATEGORIES_REMEMBERED: usize = 100_000;

/// How often a non-empty journal is tried against Redis in the background (the server's
/// default; see `ServeOptions::journal_retry`).
pub const RETRY_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Which reservations' commits may be journaled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// `["*"]`: every category.
    All,
    /// The categories listed.
    Only(BTreeSet<String>),
}

impl Coverage {
    fn covers(&self, category: &str) -> bool {
        match self {
            Self::All => true,
            Self::Only(categories) => categories.contains(category),
        }
    }
}

/// `fail_open_categories` and the allowance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailOpenConfig {
    pub categories: BTreeSet<String>,
    /// Per account, on this sidecar.
    pub credits: i64,
    /// How long after Redis started failing admissions go on.
    pub window: std::time::Duration,
}

/// Where the journal lives and what it takes.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    pub path: PathBuf,
    pub coverage: Coverage,
    /// Entries it holds at most; beyond, commits fail UNAVAILABLE as without a journal.
    pub entries_max: usize,
    /// Fail-open categories (`src/outage.rs`), whose holds live in the same file.
    pub fail_open: Option<FailOpenConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("outage journal {path}: {source}")]
    Open { path: String, source: sqlx::Error },
    #[error("outage journal: {0}")]
    Database(#[from] sqlx::Error),
    #[error("outage journal entry {seq}: {reason}")]
    Corrupt { seq: i64, reason: String },
    #[error("outage journal: a task failed: {0}")]
    Task(String),
}

/// Why a commit was not journaled.
#[derive(Debug, thiserror::Error)]
pub enum NotJournaled {
    /// Its reservation's category is not journaled (or this sidecar does not know it).
    #[error("its reservation's category is not in journal_categories (or this sidecar has not seen the reservation)")]
    NotCovered,
    /// A fail-open hold took its reservation over: the commit goes there.
    #[error("its reservation is served by a fail-open hold")]
    HandedOver,
    #[error("the outage journal is full ({0} commits wait for Redis)")]
    Full(usize),
    /// The request id waits in the journal with other figures.
    #[error(transparent)]
    RequestIdReused(#[from] crate::ledger::Error),
    #[error(transparent)]
    Disk(#[from] JournalError),
}

/// One entry as stored (format 1): the validated Commit, priced when it was accepted.
#[derive(Debug, Serialize, Deserialize)]
struct EntryV1 {
    reservation_id: String,
    amount: i64,
    #[serde(rename = "final")]
    final_commit: bool,
    request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    business_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    accepted_unix_ms: i64,
}

/// An entry's stored text (format [`ENTRY_FORMAT`]).
pub fn encode(commit: &Commit, accepted_unix_ms: i64) -> String {
    let entry = EntryV1 {
        reservation_id: commit.reservation.to_string(),
        amount: commit.amount,
        final_commit: commit.final_commit,
        request_id: commit.request.as_str().to_owned(),
        business_key: commit.business_key.as_ref().map(|key| key.as_str().to_owned()),
        labels: commit.labels.to_map(),
        accepted_unix_ms,
    };
    serde_json::to_string(&entry).expect("an entry is plain data")
}

/// The Commit an entry holds, read back through the ledger's own parsers.
pub fn decode(format: i64, text: &str) -> Result<Commit, String> {
    if format != ENTRY_FORMAT {
        return Err(format!("format {format} is not one this binary reads (it reads {ENTRY_FORMAT})"));
    }
    let entry: EntryV1 = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let invalid = |error: crate::ledger::Error| error.to_string();
    Ok(Commit {
        reservation: ReservationId::parse(&entry.reservation_id).map_err(invalid)?,
        amount: entry.amount,
        final_commit: entry.final_commit,
        request: RequestId::parse(&entry.request_id).map_err(invalid)?,
        business_key: BusinessKey::parse_optional(entry.business_key.as_deref().unwrap_or("")).map_err(invalid)?,
        labels: Labels::parse(entry.labels).map_err(invalid)?,
    })
}

/// What one pass over the journal did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    pub applied: usize,
    pub declined: usize,
    /// Refused by the rules (e.g. the reservation is unknown) or by a reply this binary cannot
    /// read: dropped, logged at ERROR with the whole entry.
    pub refused: usize,
    /// Why the pass stopped early (Redis still away), with entries left.
    pub stopped: Option<String>,
}

/// The reservations whose category is journaled, as far as this sidecar has seen them: the
/// most recently noted [`CATEGORIES_REMEMBERED`], closed ones forgotten.
#[derive(Default)]
struct Seen {
    /// Reservation → when it was last noted.
    covered: HashMap<ReservationId, u64>,
    /// (reservation, stamp) in noting order; an entry whose stamp is not the current one is stale.
    order: VecDeque<(ReservationId, u64)>,
    stamp: u64,
}

impl Seen {
    fn note(&mut self, reservation: &ReservationId) {
        self.stamp += 1;
        self.covered.insert(reservation.clone(), self.stamp);
        self.order.push_back((reservation.clone(), self.stamp));
        while self.covered.len() > CATEGORIES_REMEMBERED || self.order.len() > 2 * CATEGORIES_REMEMBERED {
            let Some((oldest, stamp)) = self.order.pop_front() else { break };
            if self.covered.get(&oldest) == Some(&stamp) {
                self.covered.remove(&oldest);
            }
        }
    }
}

/// Where an entry stands in one pass.
enum Applied {
    /// Gone from the journal (applied, declined, refused — or already applied by another pass).
    Done(Option<&'static str>),
    /// Left in the journal; later entries of its reservation wait behind it.
    Kept,
    /// Redis is away: the pass stops.
    Stop(String),
}

pub struct Journal {
    pool: SqlitePool,
    path: PathBuf,
    coverage: Coverage,
    entries_max: usize,
    /// Entries per reservation: what is on disk, kept in memory for the hot path's check. Only
    /// the tasks `accept` and `drain` spawn change it (and the rows), so a caller that goes away
    /// mid-way cannot leave the two apart.
    pending: Mutex<HashMap<ReservationId, usize>>,
    len: AtomicUsize,
    seen: Mutex<Seen>,
    /// Entries this process has reported as unreadable (reported once each).
    unreadable: Mutex<BTreeSet<i64>>,
    /// One writer at a time (an accept checks, then inserts).
    writing: tokio::sync::Mutex<()>,
    /// One entry applied at a time, so each is applied once and a reservation's in order; held
    /// per entry, so a call on one reservation does not wait for a whole pass.
    applying: tokio::sync::Mutex<()>,
    /// Told the reservation as each applied commit left it (fail-open keeps what holds hold).
    on_applied: std::sync::OnceLock<AppliedHook>,
    /// Reservations handed over to fail-open holds: their commits are no longer journaled.
    handed_over: Mutex<BTreeSet<ReservationId>>,
}

/// What is told of each applied commit's reservation.
type AppliedHook = Box<dyn Fn(&crate::ledger::ReservationView) + Send + Sync>;

/// A row of the fail-open holds' table (`src/outage.rs`): kind, request id, entry.
pub type HoldRow = (&'static str, String, String);

/// Entries a pass reads at a time.
const PAGE: i64 = 256;

impl Journal {
    /// Opens (creating) the journal file, which no other process may hold, and reads what an
    /// earlier run left in it.
    pub async fn open(config: &JournalConfig) -> Result<Self, JournalError> {
        let open_error = |source| JournalError::Open { path: config.path.display().to_string(), source };
        let options = SqliteConnectOptions::from_str("sqlite://")
            .map_err(open_error)?
            .filename(&config.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // One process per file: a second sidecar (or a ledger URL) on the same path fails.
            .locking_mode(SqliteLockingMode::Exclusive)
            // Every accepted commit is on disk, not only in the OS's cache, before it is answered.
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.map_err(open_error)?;
        for statement in [
            "CREATE TABLE IF NOT EXISTS journal (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                reservation TEXT NOT NULL,
                request_id TEXT NOT NULL,
                format INTEGER NOT NULL,
                entry TEXT NOT NULL,
                UNIQUE (reservation, request_id)
            )",
            "CREATE INDEX IF NOT EXISTS journal_by_reservation ON journal (reservation, seq)",
            // Taking the exclusive lock now, not at the first commit of an outage.
            "BEGIN EXCLUSIVE",
            "COMMIT",
        ] {
            sqlx::query(statement).execute(&pool).await.map_err(open_error)?;
        }
        let journal = Self {
            pool,
            path: config.path.clone(),
            coverage: config.coverage.clone(),
            entries_max: config.entries_max,
            pending: Mutex::default(),
            len: AtomicUsize::new(0),
            seen: Mutex::default(),
            unreadable: Mutex::default(),
            writing: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
            on_applied: std::sync::OnceLock::new(),
            handed_over: Mutex::default(),
        };
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, reservation FROM journal").fetch_all(&journal.pool).await?;
        {
            let mut pending = journal.pending.lock().expect("journal index");
            for (seq, reservation) in &rows {
                let id = ReservationId::parse(reservation)
                    .map_err(|error| JournalError::Corrupt { seq: *seq, reason: error.to_string() })?;
                *pending.entry(id).or_default() += 1;
            }
        }
        journal.len.store(rows.len(), Ordering::Relaxed);
        journal.gauge();
        if !rows.is_empty() {
            tracing::warn!(entries = rows.len(), path = %config.path.display(), "outage journal holds commits to apply");
        }
        Ok(journal)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's connection (one, exclusive), for the outage holds kept beside the commits.
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Its bound on entries (fail-open holds are bounded by it too).
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    /// `hook` is told the reservation as each applied commit left it.
    pub fn on_applied(&self, hook: impl Fn(&crate::ledger::ReservationView) + Send + Sync + 'static) {
        let _ = self.on_applied.set(Box::new(hook));
    }

    /// Was `reservation` handed over to a fail-open hold (and not forgotten since)?
    pub(crate) fn is_handed_over(&self, reservation: &ReservationId) -> bool {
        self.handed_over.lock().expect("handed-over reservations").contains(reservation)
    }

    /// A hold handed over and settled long ago: its commits may be journaled again (they meet
    /// a released hold in Redis, and are declined as any late commit).
    pub(crate) fn forget_handed_over(&self, reservation: &ReservationId) {
        self.handed_over.lock().expect("handed-over reservations").remove(reservation);
    }

    /// Hands the commits journaled for `reservation` over to a fail-open hold taking it over:
    /// in one transaction, the rows `rows` makes of them (in order) go into `outage_holds` and
    /// they leave the journal. Returns them.
    pub(crate) async fn hand_over(
        &self,
        reservation: &ReservationId,
        format: i64,
        rows: impl FnOnce(&[Commit]) -> Vec<HoldRow>,
    ) -> Result<Vec<Commit>, JournalError> {
        // Not under `applying`: a pass may be applying one of these commits right now (its
        // Redis call can take a timeout); it then finds its row gone and counts nothing, and
        // the hold's settlement sends the commit again under its request id, which charges once.
        let _writing = self.writing.lock().await;
        let mut tx = self.pool.begin().await?;
        let pending: Vec<(i64, i64, String)> =
            sqlx::query_as("SELECT seq, format, entry FROM journal WHERE reservation = $1 ORDER BY seq")
                .bind(reservation.to_string())
                .fetch_all(&mut *tx)
                .await?;
        let mut commits = Vec::with_capacity(pending.len());
        for (seq, format, entry) in pending {
            commits.push(decode(format, &entry).map_err(|reason| JournalError::Corrupt { seq, reason })?);
        }
        for (kind, request, entry) in rows(&commits) {
            sqlx::query(
                "INSERT INTO outage_holds (reservation, kind, request_id, format, entry) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(reservation.to_string())
            .bind(kind)
            .bind(request)
            .bind(format)
            .bind(entry)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("DELETE FROM journal WHERE reservation = $1")
            .bind(reservation.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // Still under `writing`: no commit of it is journaled from here on.
        self.handed_over.lock().expect("handed-over reservations").insert(reservation.clone());
        if !commits.is_empty() {
            self.pending.lock().expect("journal index").remove(reservation);
            let _ = self
                .len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| Some(len.saturating_sub(commits.len())));
            self.gauge();
        }
        Ok(commits)
    }

    /// Commits waiting for Redis.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that `reservation` is a hold in `category` (from an answer that named it), so
    /// its commits can be journaled during an outage.
    pub fn note(&self, reservation: &ReservationId, category: &str) {
        if self.coverage == Coverage::All || !self.coverage.covers(category) {
            return;
        }
        self.seen.lock().expect("journal's seen reservations").note(reservation);
    }

    /// Forgets a reservation that closed (a final commit, a release).
    pub fn forget(&self, reservation: &ReservationId) {
        if self.coverage != Coverage::All {
            self.seen.lock().expect("journal's seen reservations").covered.remove(reservation);
        }
    }

    fn covers(&self, reservation: &ReservationId) -> bool {
        self.coverage == Coverage::All
            || self.seen.lock().expect("journal's seen reservations").covered.contains_key(reservation)
            // A reservation with entries already waiting was covered when they were accepted.
            || self.has_pending(reservation)
    }

    /// Does `reservation` have commits waiting? (One atomic load when the journal is empty.)
    pub fn has_pending(&self, reservation: &ReservationId) -> bool {
        !self.is_empty() && self.pending.lock().expect("journal index").contains_key(reservation)
    }

    /// Writes `commit` to disk, to be applied when Redis answers. The same commit accepted
    /// again (same reservation, request id and figures) is not written twice. Runs to its end
    /// even if the caller goes away.
    pub async fn accept(self: &Arc<Self>, commit: &Commit) -> Result<(), NotJournaled> {
        self.accept_all(vec![commit.clone()]).await
    }

    /// Writes `commits` (of one reservation: a CommitBatch's items) to disk in one transaction,
    /// all or none, in order; those accepted before are not written twice.
    pub async fn accept_all(self: &Arc<Self>, commits: Vec<Commit>) -> Result<(), NotJournaled> {
        let journal = self.clone();
        let written = tokio::spawn(async move { journal.write(&commits).await });
        let result = written.await.unwrap_or_else(|error| Err(JournalError::Task(error.to_string()).into()));
        let (label, count) = match &result {
            Ok(0) | Err(NotJournaled::NotCovered | NotJournaled::RequestIdReused(_) | NotJournaled::HandedOver) => {
                return result.map(drop);
            }
            Ok(new) => ("journaled", *new as u64),
            Err(NotJournaled::Full(_)) => ("full", 1),
            Err(NotJournaled::Disk(_)) => ("error", 1),
        };
        metrics::counter!(crate::telemetry::JOURNAL_COMMITS, "result" => label).increment(count);
        result.map(drop)
    }

    /// How many new entries were written.
    async fn write(&self, commits: &[Commit]) -> Result<usize, NotJournaled> {
        let Some(first) = commits.first() else { return Ok(0) };
        if !self.covers(&first.reservation) {
            return Err(NotJournaled::NotCovered);
        }
        let _writing = self.writing.lock().await;
        if self.handed_over.lock().expect("handed-over reservations").contains(&first.reservation) {
            return Err(NotJournaled::HandedOver);
        }
        let mut new = Vec::with_capacity(commits.len());
        for commit in commits {
            let earlier: Option<(i64, i64, String)> =
                sqlx::query_as("SELECT seq, format, entry FROM journal WHERE reservation = $1 AND request_id = $2")
                    .bind(commit.reservation.to_string())
                    .bind(commit.request.as_str())
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(JournalError::from)?;
            match earlier {
                Some((seq, format, text)) => {
                    let first = decode(format, &text).map_err(|reason| JournalError::Corrupt { seq, reason })?;
                    if first.fingerprint() != commit.fingerprint() {
                        return Err(crate::ledger::Error::RequestIdReused(commit.request.clone()).into());
                    }
                }
                None => new.push(commit),
            }
        }
        if new.is_empty() {
            return Ok(0);
        }
        if self.len() + new.len() > self.entries_max {
            return Err(NotJournaled::Full(self.len()));
        }
        let accepted = chrono::Utc::now().timestamp_millis();
        let entries: Vec<String> = new.iter().map(|commit| encode(commit, accepted)).collect();
        let mut tx = self.pool.begin().await.map_err(JournalError::from)?;
        for (commit, entry) in new.iter().zip(&entries) {
            sqlx::query("INSERT INTO journal (reservation, request_id, format, entry) VALUES ($1, $2, $3, $4)")
                .bind(commit.reservation.to_string())
                .bind(commit.request.as_str())
                .bind(ENTRY_FORMAT)
                .bind(entry)
                .execute(&mut *tx)
                .await
                .map_err(JournalError::from)?;
        }
        tx.commit().await.map_err(JournalError::from)?;
        {
            let mut pending = self.pending.lock().expect("journal index");
            for commit in &new {
                *pending.entry(commit.reservation.clone()).or_default() += 1;
            }
        }
        self.len.fetch_add(new.len(), Ordering::Relaxed);
        self.gauge();
        for (commit, entry) in new.iter().zip(&entries) {
            // The whole entry, so that an operator can apply it by hand if the file is ever lost.
            tracing::warn!(reservation = %commit.reservation, entry, "Redis unreachable: commit journaled");
        }
        Ok(new.len())
    }

    /// Applies the journaled commits (of `only` that reservation, or all), oldest first, until
    /// the journal is empty or Redis fails again. Runs to its end even if the caller goes away.
    pub async fn drain(
        self: &Arc<Self>,
        engine: &Engine,
        only: Option<&ReservationId>,
    ) -> Result<Drained, JournalError> {
        if self.is_empty() || only.is_some_and(|reservation| !self.has_pending(reservation)) {
            return Ok(Drained::default());
        }
        let (journal, engine, only) = (self.clone(), engine.clone(), only.map(ToString::to_string));
        let pass = tokio::spawn(async move { journal.pass(&engine, only.as_deref()).await });
        pass.await.unwrap_or_else(|error| Err(JournalError::Task(error.to_string())))
    }

    async fn pass(&self, engine: &Engine, only: Option<&str>) -> Result<Drained, JournalError> {
        let mut drained = Drained::default();
        // A reservation whose earlier entry is kept keeps its later ones waiting.
        let mut blocked = BTreeSet::new();
        let mut after = 0_i64;
        loop {
            let page: Vec<(i64, String)> = sqlx::query_as(
                "SELECT seq, reservation FROM journal WHERE seq > $1 AND ($2 IS NULL OR reservation = $2) \
                 ORDER BY seq LIMIT $3",
            )
            .bind(after)
            .bind(only)
            .bind(PAGE)
            .fetch_all(&self.pool)
            .await?;
            let Some((last, _)) = page.last() else { return Ok(drained) };
            after = *last;
            for (seq, reservation) in page {
                if blocked.contains(&reservation) {
                    continue;
                }
                match self.apply(engine, seq).await? {
                    Applied::Done(Some("applied")) => drained.applied += 1,
                    Applied::Done(Some("declined")) => drained.declined += 1,
                    Applied::Done(Some(_)) => drained.refused += 1,
                    Applied::Done(None) => {}
                    Applied::Kept => {
                        blocked.insert(reservation);
                    }
                    Applied::Stop(cause) => {
                        drained.stopped = Some(cause);
                        return Ok(drained);
                    }
                }
            }
        }
    }

    /// Applies entry `seq`, if it is still there.
    async fn apply(&self, engine: &Engine, seq: i64) -> Result<Applied, JournalError> {
        let _applying = self.applying.lock().await;
        let row: Option<(String, i64, String)> =
            sqlx::query_as("SELECT reservation, format, entry FROM journal WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&self.pool)
                .await?;
        let Some((reservation, format, entry)) = row else { return Ok(Applied::Done(None)) };
        let commit = match decode(format, &entry) {
            Ok(commit) => commit,
            Err(reason) => {
                // Perhaps written by a newer binary: kept for it, never dropped.
                if self.unreadable.lock().expect("journal's unreadable entries").insert(seq) {
                    tracing::error!(seq, entry, reason, "outage journal: an entry this binary cannot read; kept");
                    metrics::counter!(crate::telemetry::JOURNAL_COMMITS, "result" => "unreadable").increment(1);
                }
                return Ok(Applied::Kept);
            }
        };
        let result = match engine.commit(&commit).await {
            Ok(Decision::Done(committed)) => {
                if let Some(hook) = self.on_applied.get() {
                    hook(&committed.reservation);
                }
                "applied"
            }
            Ok(Decision::Declined(decline)) => {
                tracing::warn!(reservation, entry, reason = ?decline.reason, "journaled commit declined when applied");
                "declined"
            }
            Err(EngineError::Unavailable(cause) | EngineError::StateLost(cause)) => return Ok(Applied::Stop(cause)),
            // Refused by the rules, or answered with what cannot be read: retrying cannot mend it.
            Err(error) => {
                tracing::error!(reservation, entry, %error, "journaled commit refused when applied; dropped");
                "refused"
            }
        };
        let deleted = sqlx::query("DELETE FROM journal WHERE seq = $1").bind(seq).execute(&self.pool).await?;
        // Handed over to a fail-open hold meanwhile (which counted it out): it charges once all
        // the same, the hold's settlement sending it under the same request id.
        if deleted.rows_affected() == 0 {
            return Ok(Applied::Done(Some(result)));
        }
        {
            let mut pending = self.pending.lock().expect("journal index");
            if let Some(count) = pending.get_mut(&commit.reservation) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    pending.remove(&commit.reservation);
                }
            }
        }
        let _ = self.len.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| Some(len.saturating_sub(1)));
        self.gauge();
        metrics::counter!(crate::telemetry::JOURNAL_COMMITS, "result" => result).increment(1);
        Ok(Applied::Done(Some(result)))
    }

    /// At shutdown: logs every entry still waiting, whole, at ERROR (the file keeps them for the
    /// next start on the same volume; the log, for an operator when the volume does not last).
    pub async fn report_left(&self) {
        let rows: Result<Vec<(String, String)>, _> =
            sqlx::query_as("SELECT reservation, entry FROM journal ORDER BY seq").fetch_all(&self.pool).await;
        match rows {
            Ok(rows) => {
                for (reservation, entry) in &rows {
                    tracing::error!(reservation, entry, "stopping with a journaled commit not yet applied");
                }
            }
            Err(error) => tracing::error!(%error, "outage journal cannot be read at shutdown"),
        }
    }

    fn gauge(&self) {
        metrics::gauge!(crate::telemetry::JOURNAL_ENTRIES).set(self.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> Commit {
        Commit {
            reservation: ReservationId::parse("acct-1/7").unwrap(),
            amount: 5,
            final_commit: true,
            request: RequestId::parse("call-9-minute-3").unwrap(),
            business_key: BusinessKey::parse_optional("call:9").unwrap(),
            labels: Labels::parse([("provider".to_owned(), "twilio".to_owned())]).unwrap(),
        }
    }

    /// Format 1 is a contract: a journal written by this binary is applied by the next.
    #[test]
    fn an_entry_is_stored_in_format_1_and_read_back() {
        let text = encode(&commit(), 1_767_225_600_000);
        assert_eq!(
            text,
            r#"{"reservation_id":"acct-1/7","amount":5,"final":true,"request_id":"call-9-minute-3","business_key":"call:9","labels":{"provider":"twilio"},"accepted_unix_ms":1767225600000}"#
        );
        let read = decode(1, &text).unwrap();
        assert_eq!(read.fingerprint(), commit().fingerprint());
        assert!(decode(2, &text).unwrap_err().contains("format 2"));
        let bare = r#"{"reservation_id":"a/1","amount":0,"final":false,"request_id":"r","accepted_unix_ms":1}"#;
        let read = decode(1, bare).unwrap();
        assert_eq!((read.amount, read.business_key, read.labels.to_map().len()), (0, None, 0));
    }

    #[test]
    fn an_entry_that_does_not_validate_is_refused() {
        let text = r#"{"reservation_id":"a/01","amount":1,"final":false,"request_id":"r","accepted_unix_ms":1}"#;
        assert!(decode(1, text).unwrap_err().contains("reservation_id"));
    }
}
