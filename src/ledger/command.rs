//! Validated commands: what every engine executes. Building one from caller input is where bad
//! input is refused (see `types` and `rules`); an engine may assume every field is in bounds.
//!
//! Each state-changing command has a fingerprint: a stable digest of everything it asks for
//! except its request id. A retry is recognised by request id; a request id reused with another
//! fingerprint is refused.

use sha2::{Digest, Sha256};

use super::types::{
    AccountId, BusinessKey, Category, Labels, LotKind, Millis, Period, RequestId, ReservationId, UserId,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub period: Period,
    pub anchor_ms: Millis,
    pub plan_credits: i64,
    pub addon_credits: i64,
}

#[derive(Clone, Debug)]
pub struct Reserve {
    pub account: AccountId,
    pub user: UserId,
    pub category: Category,
    /// The whole hold asked for; with `partial`, the most it may hold.
    pub amount: i64,
    pub ttl_ms: Millis,
    pub request: RequestId,
    pub labels: Labels,
    /// None: all or nothing. Some: as many whole units as fit, at least the minimum.
    pub partial: Option<Partial>,
}

/// A partial hold: as many whole `unit`s (credits each) as the account, the user's limit and the
/// category's budget leave room for, up to the amount asked for and at least `min_units`. `unit` divides the
/// amount; 1 <= min_units <= amount / unit (checked where the command is built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partial {
    pub unit: i64,
    pub min_units: i64,
}

impl Partial {
    /// The amount to hold given the `room` left (the available credit, or the user's remaining
    /// limit when lower): the most whole units that fit, capped at `max_amount`; the minimum when
    /// not even that fits (the checks then decline it, naming the scope that lacks room).
    pub fn amount(self, max_amount: i64, room: i64) -> i64 {
        let units = (room.max(0) / self.unit).min(max_amount / self.unit);
        units.max(self.min_units) * self.unit
    }
}

#[derive(Clone, Debug)]
pub struct Commit {
    pub reservation: ReservationId,
    /// 0..=AMOUNT_MAX.
    pub amount: i64,
    pub final_commit: bool,
    pub request: RequestId,
    pub business_key: Option<BusinessKey>,
    pub labels: Labels,
}

/// The most items one CommitBatch carries. Redis runs a batch as one function call, and no other
/// call on that Redis runs meanwhile: at tens of µs an item, 100 items keep it busy a few ms.
pub const COMMIT_BATCH_MAX: usize = 100;

/// Many commits on one reservation in one atomic step: each item is exactly a non-final Commit
/// whose request id is the item's id (so it is remembered as long as the reservation, and a
/// retried batch, or a Commit with that id, gets each item's first answer).
#[derive(Clone, Debug)]
pub struct CommitBatch {
    pub reservation: ReservationId,
    /// 1..=COMMIT_BATCH_MAX items, with distinct ids.
    pub items: Vec<CommitItem>,
}

#[derive(Clone, Debug)]
pub struct CommitItem {
    pub id: RequestId,
    /// 0..=AMOUNT_MAX.
    pub amount: i64,
    pub business_key: Option<BusinessKey>,
    pub labels: Labels,
}

impl CommitBatch {
    /// The items as the Commits they are.
    pub fn commits(&self) -> impl Iterator<Item = Commit> + '_ {
        self.items.iter().map(|item| Commit {
            reservation: self.reservation.clone(),
            amount: item.amount,
            final_commit: false,
            request: item.id.clone(),
            business_key: item.business_key.clone(),
            labels: item.labels.clone(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Extend {
    pub reservation: ReservationId,
    /// Extra credits to hold; 0 for none. With `partial`, the most it may add.
    pub amount: i64,
    /// New deadline = max(deadline, now + ttl).
    pub ttl_ms: Option<Millis>,
    pub request: RequestId,
    /// None: all or nothing. Some (only with an amount): as many whole units as fit.
    pub partial: Option<Partial>,
}

#[derive(Clone, Debug)]
pub struct Release {
    pub reservation: ReservationId,
    pub request: RequestId,
}

#[derive(Clone, Debug)]
pub struct Charge {
    pub account: AccountId,
    pub user: UserId,
    pub category: Category,
    pub amount: i64,
    pub request: RequestId,
    pub business_key: Option<BusinessKey>,
    pub labels: Labels,
    /// An outage charge (the sidecar settling work it admitted while Redis was unreachable, never
    /// a caller's request): it is not declined for credit, the user's limit or the category's
    /// budget — the work was done — and what the lots cannot cover is spent as an overdraft the
    /// account owes, repaid from its next grants (docs/rules.md#overdraft).
    pub overdraft: bool,
}

/// Read-only: would `amount` fit, and how many `unit`s fit?
#[derive(Clone, Debug)]
pub struct Quote {
    pub account: AccountId,
    pub user: Option<UserId>,
    /// When given, its budget is checked too.
    pub category: Option<Category>,
    pub amount: i64,
    pub unit: i64,
}

#[derive(Clone, Debug)]
pub struct SetPlan {
    pub account: AccountId,
    pub plan: Plan,
    pub request: RequestId,
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub account: AccountId,
    /// Addon, Promo or Adjustment.
    pub kind: LotKind,
    pub amount: i64,
    /// None: the end of the current cycle.
    pub expires_ms: Option<Millis>,
    pub request: RequestId,
    /// Create the account if it does not exist; otherwise an unknown account is refused.
    pub create_account: bool,
}

#[derive(Clone, Debug)]
pub struct StartTrial {
    pub account: AccountId,
    pub credits: i64,
    pub duration_ms: Millis,
    pub request: RequestId,
    /// Create the account if it does not exist; otherwise an unknown account is refused.
    pub create_account: bool,
}

/// A cap per category per cycle for the team: what its holds and charges may hold or spend.
#[derive(Clone, Debug)]
pub struct SetCategoryBudget {
    pub account: AccountId,
    pub category: Category,
    /// None lifts the cap.
    pub budget: Option<i64>,
    pub request: RequestId,
}

#[derive(Clone, Debug)]
pub struct SetUserLimit {
    pub account: AccountId,
    pub user: UserId,
    pub limit: Option<i64>,
    pub request: RequestId,
}

/// A stable digest of a command's parameters (hex, 32 characters).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub String);

/// Feeds fields into the digest, each length-prefixed so that no two field lists collide.
struct Digester(Sha256);

impl Digester {
    fn new(operation: &str) -> Self {
        let mut digester = Self(Sha256::new());
        digester.text(operation);
        digester
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value.as_bytes());
        self
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.0.update(value.to_be_bytes());
        self
    }

    fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(value) => self.text("some").int(value),
            None => self.text("none"),
        }
    }

    /// Appended only when set, so the fingerprints of all-or-nothing requests (kept in Redis and
    /// in the ledger from before partial holds existed) stay the same.
    fn partial(&mut self, partial: Option<Partial>) -> &mut Self {
        if let Some(partial) = partial {
            self.text("partial").int(partial.unit).int(partial.min_units);
        }
        self
    }

    /// Appended only when set (an outage charge), so every other Charge's fingerprint stays the
    /// one kept in Redis and in the ledger.
    fn overdraft(&mut self, overdraft: bool) -> &mut Self {
        if overdraft {
            self.text("overdraft");
        }
        self
    }

    fn labels(&mut self, labels: &Labels) -> &mut Self {
        self.int(labels.iter().count() as i64);
        for (key, value) in labels.iter() {
            self.text(key).text(value);
        }
        self
    }

    fn finish(&mut self) -> Fingerprint {
        let digest = std::mem::take(&mut self.0).finalize();
        // Hex by table: a `format!` per byte was half the cost of a fingerprint.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(32);
        for byte in &digest[..16] {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Fingerprint(hex)
    }
}

fn key_text(key: &Option<BusinessKey>) -> &str {
    key.as_ref().map_or("", BusinessKey::as_str)
}

impl Reserve {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("reserve")
            .text(self.account.as_str())
            .text(self.user.as_str())
            .text(self.category.as_str())
            .int(self.amount)
            .int(self.ttl_ms)
            .labels(&self.labels)
            .partial(self.partial)
            .finish()
    }
}

impl Commit {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("commit")
            .text(&self.reservation.to_string())
            .int(self.amount)
            .int(i64::from(self.final_commit))
            .text(key_text(&self.business_key))
            .labels(&self.labels)
            .finish()
    }
}

impl Extend {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("extend")
            .text(&self.reservation.to_string())
            .int(self.amount)
            .opt_int(self.ttl_ms)
            .partial(self.partial)
            .finish()
    }
}

impl Release {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("release").text(&self.reservation.to_string()).finish()
    }
}

impl Charge {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("charge")
            .text(self.account.as_str())
            .text(self.user.as_str())
            .text(self.category.as_str())
            .int(self.amount)
            .text(key_text(&self.business_key))
            .labels(&self.labels)
            .overdraft(self.overdraft)
            .finish()
    }
}

impl SetPlan {
    pub fn fingerprint(&self) -> Fingerprint {
        let plan = &self.plan;
        Digester::new("set_plan")
            .text(self.account.as_str())
            .int(i64::from(plan.period.months()))
            .int(plan.anchor_ms)
            .int(plan.plan_credits)
            .int(plan.addon_credits)
            .finish()
    }
}

// `create_account` is left out of the Grant and StartTrial fingerprints: it decides whether the
// call may run at all, not what it changes, and the account exists after the first success, so a
// retry with either value gets the same answer. Fingerprints kept in Redis and in memory from
// before the flag existed stay valid.
impl Grant {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("grant")
            .text(self.account.as_str())
            .text(fingerprint_name(self.kind))
            .int(self.amount)
            .opt_int(self.expires_ms)
            .finish()
    }
}

/// A lot kind's name in fingerprints: the names the first version hashed (Rust's `Debug` names
/// of the variants, then), written out so that renaming a variant cannot change a fingerprint.
fn fingerprint_name(kind: LotKind) -> &'static str {
    match kind {
        LotKind::Trial => "Trial",
        LotKind::Promo => "Promo",
        LotKind::Plan => "Plan",
        LotKind::Addon => "Addon",
        LotKind::Adjustment => "Adjustment",
    }
}

impl StartTrial {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("start_trial").text(self.account.as_str()).int(self.credits).int(self.duration_ms).finish()
    }
}

impl SetCategoryBudget {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("set_category_budget")
            .text(self.account.as_str())
            .text(self.category.as_str())
            .opt_int(self.budget)
            .finish()
    }
}

impl SetUserLimit {
    pub fn fingerprint(&self) -> Fingerprint {
        Digester::new("set_user_limit")
            .text(self.account.as_str())
            .text(self.user.as_str())
            .opt_int(self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(seq: u64) -> Release {
        Release {
            reservation: ReservationId { account: AccountId::parse("acme").unwrap(), seq },
            request: RequestId::parse("r1").unwrap(),
        }
    }

    #[test]
    fn fingerprints_are_stable_and_ignore_the_request_id() {
        let a = release(1);
        let mut b = release(1);
        b.request = RequestId::parse("other").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), release(2).fingerprint());
        assert_eq!(a.fingerprint().0.len(), 32);
    }

    /// Fingerprints are durable (remembered request ids outlive a deploy): these are pinned.
    #[test]
    fn fingerprints_are_pinned() {
        let account = AccountId::parse("acme").unwrap();
        let request = RequestId::parse("r1").unwrap();
        assert_eq!(release(1).fingerprint().0, "e80227a8e911e5e7b25ab4a5bbcfbbd2");
        for create_account in [false, true] {
            let grant = Grant {
                account: account.clone(),
                kind: LotKind::Addon,
                amount: 500,
                expires_ms: None,
                request: request.clone(),
                create_account,
            };
            assert_eq!(grant.fingerprint().0, "648bfe5e0d8c9de5d45fdfa021dab8a5", "create_account {create_account}");
            let trial = StartTrial {
                account: account.clone(),
                credits: 100,
                duration_ms: 1_209_600_000,
                request: request.clone(),
                create_account,
            };
            assert_eq!(trial.fingerprint().0, "e442552cd2bde535937dc176faa37616", "create_account {create_account}");
        }
    }

    #[test]
    fn fingerprints_distinguish_optional_fields() {
        let limit = |limit| SetUserLimit {
            account: AccountId::parse("acme").unwrap(),
            user: UserId::parse("bob").unwrap(),
            limit,
            request: RequestId::parse("r").unwrap(),
        };
        assert_ne!(limit(None).fingerprint(), limit(Some(0)).fingerprint());
        assert_ne!(limit(Some(0)).fingerprint(), limit(Some(1)).fingerprint());
    }
}
