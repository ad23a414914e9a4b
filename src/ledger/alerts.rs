//! Alert thresholds: conditions on an account's state that fire an alert at most once per
//! billing cycle. Only the rule lives here — when a threshold counts as crossed, judged on an
//! [`AccountView`]; finding, recording and delivering alerts is `crate::alerts`'s.

use super::Error;
use super::answer::AccountView;
use super::types::{AMOUNT_MAX, UserId};

/// Thresholds an account may have.
pub const THRESHOLDS_MAX: usize = 32;

/// The longest threshold id, in bytes.
pub const THRESHOLD_ID_LEN_MAX: usize = 64;

/// A condition, named within its account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Threshold {
    pub id: String,
    pub when: When,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum When {
    /// The live lots' credits used (held or spent) reach this percentage.
    UsedPercent(u32),
    /// Available credit below this amount.
    AvailableBelow(i64),
    /// Available credit at 0 (of an account that was granted any).
    Depleted,
    /// A user's use this cycle at this percentage of their limit.
    UserPercent { user: UserId, percent: u32 },
    /// A category's use this cycle at this percentage of its budget.
    CategoryPercent { category: String, percent: u32 },
}

/// What the threshold compared when it was crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub observed: i64,
    pub base: i64,
}

impl Threshold {
    /// `field`: the request field the threshold came from, for errors (`thresholds[2]`).
    pub fn new(field: &str, id: &str, when: When) -> Result<Self, Error> {
        if id.is_empty() || id.len() > THRESHOLD_ID_LEN_MAX || !id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(
                &format!("{field}.threshold_id"),
                format!("must be 1..={THRESHOLD_ID_LEN_MAX} bytes of printable ASCII without spaces"),
            ));
        }
        let percent = |percent: u32, name: &str| {
            if (1..=100).contains(&percent) {
                Ok(())
            } else {
                Err(Error::invalid(&format!("{field}.{name}"), format!("must be in 1..=100, got {percent}")))
            }
        };
        match &when {
            When::UsedPercent(value) => percent(*value, "used_percent")?,
            When::AvailableBelow(amount) if !(1..=AMOUNT_MAX).contains(amount) => {
                return Err(Error::invalid(
                    &format!("{field}.available_below"),
                    format!("must be in 1..={AMOUNT_MAX}, got {amount}"),
                ));
            }
            When::UserPercent { percent: value, .. } => percent(*value, "user_percent.percent")?,
            When::CategoryPercent { percent: value, .. } => percent(*value, "category_percent.percent")?,
            When::AvailableBelow(_) | When::Depleted => {}
        }
        Ok(Self { id: id.to_owned(), when })
    }

    /// Crossed in `view`, with the figures compared; None while it is not.
    pub fn crossed(&self, view: &AccountView) -> Option<Crossing> {
        let share = |observed: i64, base: i64, percent: u32| {
            (base > 0 && i128::from(observed) * 100 >= i128::from(base) * i128::from(percent))
                .then_some(Crossing { observed, base })
        };
        match &self.when {
            When::UsedPercent(percent) => {
                let base: i64 = view.lots.iter().map(|lot| lot.granted).sum();
                let used: i64 = view.lots.iter().map(|lot| lot.granted - lot.remaining).sum();
                share(used, base, *percent)
            }
            When::AvailableBelow(amount) => {
                (view.totals.available < *amount).then_some(Crossing { observed: view.totals.available, base: *amount })
            }
            When::Depleted => {
                (view.totals.granted > 0 && view.totals.available == 0).then_some(Crossing { observed: 0, base: 0 })
            }
            When::UserPercent { user, percent } => {
                let seen = view.users.iter().find(|seen| seen.user == user.as_str())?;
                share(seen.used, seen.limit?, *percent)
            }
            When::CategoryPercent { category, percent } => {
                let seen = view.categories.iter().find(|seen| &seen.category == category)?;
                share(seen.used, seen.budget?, *percent)
            }
        }
    }

    /// As stored: (kind, scope id, value). The names are the SQL rows' and the API's.
    pub fn parts(&self) -> (&'static str, &str, i64) {
        match &self.when {
            When::UsedPercent(percent) => ("used_percent", "", i64::from(*percent)),
            When::AvailableBelow(amount) => ("available_below", "", *amount),
            When::Depleted => ("depleted", "", 0),
            When::UserPercent { user, percent } => ("user_percent", user.as_str(), i64::from(*percent)),
            When::CategoryPercent { category, percent } => ("category_percent", category, i64::from(*percent)),
        }
    }

    /// Read back from [`Self::parts`].
    pub fn from_parts(id: &str, kind: &str, scope: &str, value: i64) -> Result<Self, Error> {
        let percent = || u32::try_from(value).map_err(|_| Error::invalid("value", format!("{value} is no percentage")));
        let when = match kind {
            "used_percent" => When::UsedPercent(percent()?),
            "available_below" => When::AvailableBelow(value),
            "depleted" => When::Depleted,
            "user_percent" => When::UserPercent { user: UserId::parse(scope)?, percent: percent()? },
            "category_percent" => When::CategoryPercent { category: scope.to_owned(), percent: percent()? },
            other => return Err(Error::invalid("kind", format!("unknown threshold kind {other:?}"))),
        };
        Self::new("threshold", id, when)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::answer::{CategoryView, LotView, Totals, UserView};
    use crate::ledger::cycle::Cycle;
    use crate::ledger::types::{AccountId, LotKind};

    fn view(available: i64, lots: &[(i64, i64)]) -> AccountView {
        AccountView {
            id: AccountId::parse("acct").unwrap(),
            plan: None,
            cycle: Cycle { start_ms: 0, end_ms: 1 },
            totals: Totals { granted: 1_000, available, held: 0, spent: 1_000 - available, expired: 0, owed: 0 },
            lots: lots
                .iter()
                .enumerate()
                .map(|(id, &(granted, remaining))| LotView {
                    id: id as u64,
                    kind: LotKind::Plan,
                    granted,
                    remaining,
                    granted_ms: 0,
                    expires_ms: 1,
                })
                .collect(),
            trial_used: false,
            users: vec![UserView { user: "ann".into(), limit: Some(200), used: 150, remaining: Some(50) }],
            open_reservations: 0,
            categories: vec![CategoryView { category: "ai".into(), budget: None, used: 90, remaining: None }],
        }
    }

    fn threshold(when: When) -> Threshold {
        Threshold::new("thresholds[0]", "t", when).unwrap()
    }

    #[test]
    fn each_kind_is_crossed_at_its_figure_and_not_before() {
        let used = threshold(When::UsedPercent(80));
        assert_eq!(used.crossed(&view(300, &[(800, 200), (200, 100)])), None, "700 of 1000 used");
        assert_eq!(used.crossed(&view(200, &[(800, 100), (200, 100)])), Some(Crossing { observed: 800, base: 1_000 }));
        let below = threshold(When::AvailableBelow(100));
        assert_eq!(below.crossed(&view(100, &[])), None);
        assert_eq!(below.crossed(&view(99, &[])), Some(Crossing { observed: 99, base: 100 }));
        let depleted = threshold(When::Depleted);
        assert_eq!(depleted.crossed(&view(1, &[])), None);
        assert_eq!(depleted.crossed(&view(0, &[])), Some(Crossing { observed: 0, base: 0 }));
        let ann = |percent| threshold(When::UserPercent { user: UserId::parse("ann").unwrap(), percent });
        assert_eq!(ann(75).crossed(&view(0, &[])), Some(Crossing { observed: 150, base: 200 }));
        assert_eq!(ann(76).crossed(&view(0, &[])), None);
        let bob = threshold(When::UserPercent { user: UserId::parse("bob").unwrap(), percent: 1 });
        assert_eq!(bob.crossed(&view(0, &[])), None, "a user the account has not seen");
        let ai = threshold(When::CategoryPercent { category: "ai".into(), percent: 10 });
        assert_eq!(ai.crossed(&view(0, &[])), None, "no budget: never");
    }

    #[test]
    fn bad_thresholds_are_refused_by_field_and_parts_round_trip() {
        let error = Threshold::new("thresholds[3]", "t", When::UsedPercent(0)).unwrap_err().to_string();
        assert!(error.starts_with("thresholds[3].used_percent: must be in 1..=100"), "{error}");
        let error = Threshold::new("thresholds[1]", "a b", When::Depleted).unwrap_err().to_string();
        assert!(error.starts_with("thresholds[1].threshold_id: "), "{error}");
        let error = Threshold::new("thresholds[0]", "t", When::AvailableBelow(0)).unwrap_err().to_string();
        assert!(error.starts_with("thresholds[0].available_below: "), "{error}");
        for when in [
            When::UsedPercent(80),
            When::AvailableBelow(5),
            When::Depleted,
            When::UserPercent { user: UserId::parse("ann").unwrap(), percent: 90 },
            When::CategoryPercent { category: "ai".into(), percent: 50 },
        ] {
            let original = threshold(when);
            let (kind, scope, value) = original.parts();
            assert_eq!(Threshold::from_parts("t", kind, scope, value).unwrap(), original);
        }
    }
}
