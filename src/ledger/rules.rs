//! The operator's rules: categories, the price book, TTL bounds, trial defaults and retention.
//! Built once from configuration; turns what a caller names (a SKU, a category, a TTL) into
//! checked values.

use std::collections::{BTreeMap, BTreeSet};

use super::Error;
use super::types::{AMOUNT_MAX, Category, Millis, QUANTITY_MAX, Zero, check_amount, echo};

const DAY_MS: Millis = 86_400_000;

/// The defaults of the rules that are numbers (the configuration's table shows them).
pub const RESERVATION_TTL_DEFAULT_MS: Millis = 5 * 60_000;
pub const RESERVATION_TTL_MIN_MS: Millis = 1_000;
pub const RESERVATION_TTL_MAX_MS: Millis = 7 * DAY_MS;
pub const TRIAL_CREDITS_DEFAULT: i64 = 100;
pub const TRIAL_DURATION_DEFAULT_MS: Millis = 14 * DAY_MS;
/// Also the least retention allowed: a retry a day late still gets its first answer.
pub const REQUEST_ID_RETENTION_MS: Millis = DAY_MS;

/// What a caller asks to spend: credits, or units of a priced SKU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CostInput {
    Missing,
    Amount(i64),
    Sku { sku: String, quantity: i64 },
}

/// A cost priced out: the amount in credits, and the per-unit price it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priced {
    pub amount: i64,
    /// Credits per unit: the SKU's price, or the amount itself for a raw amount.
    pub unit: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub categories: BTreeSet<String>,
    /// SKU → credits per unit.
    pub price_book: BTreeMap<String, i64>,
    /// TTL of a hold when the caller gives none.
    pub reservation_ttl_default_ms: Millis,
    pub reservation_ttl_min_ms: Millis,
    pub reservation_ttl_max_ms: Millis,
    pub trial_credits_default: i64,
    pub trial_duration_default_ms: Millis,
    pub trial_duration_max_ms: Millis,
    /// How long request ids and closed reservations are remembered (at least; open reservations
    /// keep theirs as long as they live).
    pub request_id_retention_ms: Millis,
}

impl Default for Rules {
    fn default() -> Self {
        let categories =
            ["email", "mobile", "enrichment", "waterfall", "ai", "dialer", "api", "phone_number", "mailbox"];
        let prices: [(&str, i64); 12] = [
            ("email.verified", 1),
            ("mobile.verified", 10),
            ("enrichment.row", 1),
            ("waterfall.provider.a", 1),
            ("waterfall.provider.b", 2),
            ("waterfall.validator", 1),
            ("ai.research", 5),
            ("dialer.minute.us", 1),
            ("dialer.minute.de", 2),
            ("phone_number.month", 50),
            ("mailbox.month", 20),
            ("api.call", 1),
        ];
        Self {
            categories: categories.iter().map(|c| (*c).to_owned()).collect(),
            price_book: prices.iter().map(|(sku, price)| ((*sku).to_owned(), *price)).collect(),
            reservation_ttl_default_ms: RESERVATION_TTL_DEFAULT_MS,
            reservation_ttl_min_ms: RESERVATION_TTL_MIN_MS,
            reservation_ttl_max_ms: RESERVATION_TTL_MAX_MS,
            trial_credits_default: TRIAL_CREDITS_DEFAULT,
            trial_duration_default_ms: TRIAL_DURATION_DEFAULT_MS,
            trial_duration_max_ms: 365 * DAY_MS,
            request_id_retention_ms: REQUEST_ID_RETENTION_MS,
        }
    }
}

impl Rules {
    /// Checks the rules themselves; `Err` names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.categories.is_empty() {
            return Err("categories: at least one category is needed".into());
        }
        for (sku, price) in &self.price_book {
            if sku.is_empty() || !sku.chars().all(|c| c.is_ascii_graphic()) {
                return Err(format!("price_book: SKU {sku:?} must be non-empty visible ASCII"));
            }
            if !(1..=AMOUNT_MAX).contains(price) {
                return Err(format!("price_book.{sku}: price must be in 1..={AMOUNT_MAX}"));
            }
        }
        let ttl = (self.reservation_ttl_min_ms, self.reservation_ttl_default_ms, self.reservation_ttl_max_ms);
        if !(ttl.0 >= 1 && ttl.0 <= ttl.1 && ttl.1 <= ttl.2 && ttl.2 <= 365 * DAY_MS) {
            return Err("reservation_ttl_*_ms: need 1 <= min <= default <= max <= 365 days".into());
        }
        if !(1..=AMOUNT_MAX).contains(&self.trial_credits_default) {
            return Err(format!("trial_credits_default: must be in 1..={AMOUNT_MAX}"));
        }
        if !(1..=self.trial_duration_max_ms).contains(&self.trial_duration_default_ms) {
            return Err("trial_duration_default_ms: must be in 1..=trial_duration_max_ms".into());
        }
        if self.request_id_retention_ms < DAY_MS {
            return Err("request_id_retention_ms: must be at least 24 h (86400000)".into());
        }
        Ok(())
    }

    pub fn category(&self, name: &str) -> Result<Category, Error> {
        if self.categories.contains(name) {
            return Ok(Category(name.to_owned()));
        }
        let known: Vec<&str> = self.categories.iter().map(String::as_str).collect();
        Err(Error::invalid("category", format!("unknown category {}; known: {}", echo(name), known.join(", "))))
    }

    /// Prices a cost; `zero`: whether a raw amount of 0 is allowed (commits).
    pub fn price(&self, cost: &CostInput, zero: Zero) -> Result<Priced, Error> {
        match cost {
            CostInput::Missing => Err(Error::invalid("cost", "an amount or a SKU with a quantity is required")),
            CostInput::Amount(amount) => {
                let amount = check_amount("cost.amount", *amount, zero)?;
                Ok(Priced { amount, unit: amount.max(1) })
            }
            CostInput::Sku { sku, quantity } => {
                let unit = *self
                    .price_book
                    .get(sku)
                    .ok_or_else(|| Error::invalid("cost.sku.sku", format!("unknown SKU {}", echo(sku))))?;
                if !(1..=QUANTITY_MAX).contains(quantity) {
                    return Err(Error::invalid(
                        "cost.sku.quantity",
                        format!("must be in 1..={QUANTITY_MAX}, got {quantity}"),
                    ));
                }
                let amount = unit.checked_mul(*quantity).filter(|amount| *amount <= AMOUNT_MAX).ok_or_else(|| {
                    Error::invalid("cost.sku.quantity", format!("prices out above {AMOUNT_MAX} credits"))
                })?;
                Ok(Priced { amount, unit })
            }
        }
    }

    /// A hold's TTL: 0 means the default; otherwise within the configured bounds.
    pub fn ttl(&self, ttl_ms: Millis) -> Result<Millis, Error> {
        if ttl_ms == 0 {
            return Ok(self.reservation_ttl_default_ms);
        }
        let (min, max) = (self.reservation_ttl_min_ms, self.reservation_ttl_max_ms);
        if !(min..=max).contains(&ttl_ms) {
            return Err(Error::invalid("ttl_ms", format!("must be 0 (default) or in {min}..={max}, got {ttl_ms}")));
        }
        Ok(ttl_ms)
    }

    /// An Extend's TTL: 0 keeps the deadline; otherwise within the configured bounds.
    pub fn extend_ttl(&self, ttl_ms: Millis) -> Result<Option<Millis>, Error> {
        if ttl_ms == 0 { Ok(None) } else { self.ttl(ttl_ms).map(Some) }
    }

    pub fn trial(&self, credits: i64, duration_ms: Millis) -> Result<(i64, Millis), Error> {
        let credits = match credits {
            0 => self.trial_credits_default,
            credits => check_amount("credits", credits, Zero::Refused)?,
        };
        let max = self.trial_duration_max_ms;
        let duration = match duration_ms {
            0 => self.trial_duration_default_ms,
            d if (1..=max).contains(&d) => d,
            d => {
                return Err(Error::invalid("duration_ms", format!("must be 0 (default) or in 1..={max}, got {d}")));
            }
        };
        Ok((credits, duration))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_are_valid() {
        Rules::default().validate().unwrap();
    }

    #[test]
    fn invalid_rules_name_the_setting() {
        type Edit = fn(&mut Rules);
        let cases: Vec<(Edit, &str)> = vec![
            (|r| r.categories.clear(), "categories"),
            (
                |r| {
                    r.price_book.insert("x".into(), 0);
                },
                "price_book.x",
            ),
            (|r| r.reservation_ttl_min_ms = r.reservation_ttl_max_ms + 1, "reservation_ttl"),
            (|r| r.trial_credits_default = 0, "trial_credits_default"),
            (|r| r.request_id_retention_ms = 1000, "request_id_retention_ms"),
        ];
        for (mutate, setting) in cases {
            let mut rules = Rules::default();
            mutate(&mut rules);
            let error = rules.validate().unwrap_err();
            assert!(error.starts_with(setting), "{setting}: {error}");
        }
    }

    #[test]
    fn prices_skus_and_amounts() {
        let mut rules = Rules::default();
        rules.price_book.insert("whale".into(), AMOUNT_MAX / 2);
        let sku = |sku: &str, quantity| CostInput::Sku { sku: sku.into(), quantity };
        assert_eq!(rules.price(&sku("dialer.minute.de", 3), Zero::Refused).unwrap(), Priced { amount: 6, unit: 2 });
        assert_eq!(rules.price(&CostInput::Amount(7), Zero::Refused).unwrap(), Priced { amount: 7, unit: 7 });
        assert_eq!(rules.price(&CostInput::Amount(0), Zero::Allowed).unwrap().amount, 0);
        let table: &[(CostInput, Zero, &str)] = &[
            (CostInput::Missing, Zero::Refused, "cost: "),
            (CostInput::Amount(0), Zero::Refused, "cost.amount: "),
            (CostInput::Amount(-5), Zero::Allowed, "cost.amount: "),
            (sku("nope", 1), Zero::Refused, "cost.sku.sku: unknown SKU"),
            (sku("email.verified", 0), Zero::Refused, "cost.sku.quantity: "),
            (sku("whale", 3), Zero::Refused, "cost.sku.quantity: prices out above"),
        ];
        for (cost, zero, expected) in table {
            let error = rules.price(cost, *zero).unwrap_err().to_string();
            assert!(error.starts_with(expected), "{cost:?}: {error}");
        }
    }

    #[test]
    fn ttl_bounds() {
        let rules = Rules::default();
        assert_eq!(rules.ttl(0).unwrap(), rules.reservation_ttl_default_ms);
        assert_eq!(rules.ttl(1_000).unwrap(), 1_000);
        for bad in [-1, 999, rules.reservation_ttl_max_ms + 1] {
            assert!(rules.ttl(bad).unwrap_err().to_string().starts_with("ttl_ms: "));
        }
        assert_eq!(rules.extend_ttl(0).unwrap(), None);
    }

    #[test]
    fn categories_are_closed() {
        let rules = Rules::default();
        assert_eq!(rules.category("email").unwrap().as_str(), "email");
        let error = rules.category("gold").unwrap_err().to_string();
        assert!(error.starts_with("category: unknown category \"gold\""), "{error}");
    }
}
