//! The vocabulary of the ledger: validated ids, amounts, labels and the small enums. Every
//! constructor that takes caller input checks it and names the API field it came from, so a bad
//! request is refused before any engine sees it.

use std::collections::BTreeMap;
use std::fmt;

use super::Error;

/// The largest amount one request may name (a hold, commit, grant or plan), in credits.
/// Far below 2^53, so every figure stays exact in Redis Lua, whose numbers are doubles.
pub const AMOUNT_MAX: i64 = 1_000_000_000_000;
/// The largest live balance (available + held) an account may reach through grants.
pub const BALANCE_MAX: i64 = 10_000_000_000_000;
/// The largest SKU quantity one request may name.
pub const QUANTITY_MAX: i64 = 1_000_000_000;
pub const ACCOUNT_ID_LEN_MAX: usize = 64;
pub const ID_LEN_MAX: usize = 128;
pub const BUSINESS_KEY_LEN_MAX: usize = 256;
pub const LABELS_MAX: usize = 16;
pub const LABEL_KEY_LEN_MAX: usize = 64;
pub const LABEL_VALUE_LEN_MAX: usize = 256;
/// The largest reservation sequence an id may name: exact in Lua's doubles.
pub const SEQ_MAX: u64 = (1 << 53) - 1;
/// Instants are accepted up to the end of year 9999 (Unix ms).
pub const INSTANT_MAX_MS: i64 = 253_402_300_799_999;

/// Unix milliseconds, UTC.
pub type Millis = i64;

/// The most bytes of a caller's value an error message quotes. A message travels back in the
/// `grpc-message` trailer: quoting a value whole would let a caller's 16 KiB push that trailer
/// past the client's header limit, and the caller would see RESOURCE_EXHAUSTED instead of the
/// INVALID_ARGUMENT that names the field.
pub const ECHO_LEN_MAX: usize = 64;

/// A caller's value as an error message quotes it: in Rust string syntax, cut to its first
/// [`ECHO_LEN_MAX`] bytes (then `…` and the value's length). Every error that names a value the
/// caller sent goes through [`echo`], so no message grows with the input.
pub struct Echo<'a>(&'a str);

/// Quotes `value` for an error message; see [`Echo`].
pub fn echo(value: &str) -> Echo<'_> {
    Echo(value)
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() <= ECHO_LEN_MAX {
            return write!(f, "{:?}", self.0);
        }
        let mut end = ECHO_LEN_MAX;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{:?}… ({} bytes)", &self.0[..end], self.0.len())
    }
}

fn check_id(field: &str, value: &str, len_max: usize, extra_forbidden: &[char]) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > len_max {
        return Err(Error::invalid(field, format!("must be at most {len_max} bytes, got {}", value.len())));
    }
    let bad = value.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '{' | '}') || extra_forbidden.contains(c));
    if let Some(c) = bad {
        return Err(Error::invalid(field, format!("must be visible ASCII without braces, found {c:?}")));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $len_max:expr, $forbidden:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Checks caller input; the error names the API field.
            pub fn parse(value: &str) -> Result<Self, Error> {
                check_id($field, value, $len_max, $forbidden)?;
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Stored (in remembered answers) as its text; read back through [`Self::parse`].
        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A team. It may not contain `/`, which separates it from the sequence in a reservation id.
    AccountId, "account_id", ACCOUNT_ID_LEN_MAX, &['/']
);
id_type!(
    /// A user of a team; per-user limits are keyed on it.
    UserId, "user_id", ID_LEN_MAX, &[]
);
id_type!(
    /// A caller-chosen id that makes a state-changing call idempotent, scoped to the account.
    RequestId, "request_id", ID_LEN_MAX, &[]
);

/// `<account_id>/<sequence>`: the account is part of the id so that every call on a reservation
/// can find the account's state (and, in Redis, its hash slot) from the id alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    pub account: AccountId,
    pub seq: u64,
}

impl ReservationId {
    pub fn parse(value: &str) -> Result<Self, Error> {
        const FIELD: &str = "reservation_id";
        let Some((account, seq)) = value.rsplit_once('/') else {
            return Err(Error::invalid(FIELD, "must look like <account_id>/<number>"));
        };
        let account = AccountId::parse(account).map_err(|_| Error::invalid(FIELD, "has an invalid account part"))?;
        // Canonical only: the digits the server wrote, so one reservation has one id (`acme/7`,
        // never `acme/07` or `acme/+7`) wherever ids are compared, logged or checked.
        let canonical = !seq.is_empty() && seq.bytes().all(|byte| byte.is_ascii_digit()) && !seq.starts_with('0');
        let seq = Some(seq)
            .filter(|_| canonical)
            .and_then(|seq| seq.parse::<u64>().ok())
            .filter(|seq| (1..=SEQ_MAX).contains(seq))
            .ok_or_else(|| {
                Error::invalid(FIELD, format!("must end in a number in 1..={SEQ_MAX}, without sign or leading zeros"))
            })?;
        Ok(Self { account, seq })
    }
}

/// In stored answers a reservation id is its text, `<account>/<seq>`.
impl serde::Serialize for ReservationId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ReservationId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account, self.seq)
    }
}

/// What credits are spent on; one of the configured categories.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Category(pub(super) String);

impl Category {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A category read back from a record this sidecar wrote (checked against the rules when
    /// written): one removed from the configuration since still settles under its name.
    pub fn recorded(name: impl Into<String>) -> Self {
        Self(name.into())
    }
}

/// Charged at most once per account and billing cycle ("contact:123:mobile").
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BusinessKey(String);

impl BusinessKey {
    /// Empty input means "no key".
    pub fn parse_optional(value: &str) -> Result<Option<Self>, Error> {
        const FIELD: &str = "business_key";
        if value.is_empty() {
            return Ok(None);
        }
        if value.len() > BUSINESS_KEY_LEN_MAX {
            return Err(Error::invalid(FIELD, format!("must be at most {BUSINESS_KEY_LEN_MAX} bytes")));
        }
        if !value.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
            return Err(Error::invalid(FIELD, "must be printable ASCII"));
        }
        Ok(Some(Self(value.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free-form tags recorded with holds and commits, bounded in count and size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub fn parse(labels: impl IntoIterator<Item = (String, String)>) -> Result<Self, Error> {
        let map: BTreeMap<String, String> = labels.into_iter().collect();
        if map.len() > LABELS_MAX {
            return Err(Error::invalid("labels", format!("at most {LABELS_MAX} labels, got {}", map.len())));
        }
        for (key, value) in &map {
            if key.is_empty() || key.len() > LABEL_KEY_LEN_MAX {
                return Err(Error::invalid("labels", format!("keys must be 1..={LABEL_KEY_LEN_MAX} bytes")));
            }
            if value.len() > LABEL_VALUE_LEN_MAX {
                return Err(Error::invalid(
                    "labels",
                    format!("value of {} must be at most {LABEL_VALUE_LEN_MAX} bytes", echo(key)),
                ));
            }
        }
        Ok(Self(map))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.0.clone()
    }
}

/// A bucket's kind. The declaration order is the burn order among lots expiring at the same
/// instant: the most restricted credits go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LotKind {
    Trial,
    Promo,
    Plan,
    Addon,
    Adjustment,
}

impl LotKind {
    /// Every kind, in burn order (the declaration order).
    pub const ALL: [LotKind; 5] = [LotKind::Trial, LotKind::Promo, LotKind::Plan, LotKind::Addon, LotKind::Adjustment];
}

/// A billing period, in whole months.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Monthly,
    Quarterly,
    Semiannual,
    Annual,
}

impl Period {
    pub fn months(self) -> u32 {
        match self {
            Self::Monthly => 1,
            Self::Quarterly => 3,
            Self::Semiannual => 6,
            Self::Annual => 12,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationState {
    Held,
    Committed,
    Released,
    Expired,
}

impl ReservationState {
    pub fn is_open(self) -> bool {
        self == Self::Held
    }
}

/// Whether an amount of 0 means something (a commit of nothing) or is a mistake (a hold of nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zero {
    Allowed,
    Refused,
}

/// Checks an amount a caller names: `1..=AMOUNT_MAX`, or `0..=AMOUNT_MAX` where zero is allowed.
pub fn check_amount(field: &str, amount: i64, zero: Zero) -> Result<i64, Error> {
    let min = if zero == Zero::Allowed { 0 } else { 1 };
    if amount < min || amount > AMOUNT_MAX {
        return Err(Error::invalid(field, format!("must be in {min}..={AMOUNT_MAX}, got {amount}")));
    }
    Ok(amount)
}

/// Checks an instant a caller names.
pub fn check_instant(field: &str, instant: Millis) -> Result<Millis, Error> {
    if !(0..=INSTANT_MAX_MS).contains(&instant) {
        return Err(Error::invalid(field, format!("must be a Unix ms instant in 0..={INSTANT_MAX_MS}")));
    }
    Ok(instant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_what_cannot_be_a_key() {
        let cases: &[(&str, bool)] = &[
            ("acme", true),
            ("team-42_x.y:z@w", true),
            ("", false),
            ("has space", false),
            ("brace{", false),
            ("slash/", false),
            ("é", false),
            (&"a".repeat(ACCOUNT_ID_LEN_MAX), true),
            (&"a".repeat(ACCOUNT_ID_LEN_MAX + 1), false),
        ];
        for (input, ok) in cases {
            let result = AccountId::parse(input);
            assert_eq!(result.is_ok(), *ok, "{input:?}: {result:?}");
            if let Err(error) = result {
                assert!(error.to_string().starts_with("account_id: "), "{error}");
            }
        }
        assert!(UserId::parse("bob@example.com/x").is_ok(), "user ids may contain '/'");
    }

    #[test]
    fn reservation_ids_round_trip_and_reject_garbage() {
        let id = ReservationId::parse("acme/17").unwrap();
        assert_eq!(id.account.as_str(), "acme");
        assert_eq!(id.seq, 17);
        assert_eq!(id.to_string(), "acme/17");
        let bad_ids = [
            "acme",
            "acme/",
            "acme/x",
            "acme/0",
            "/3",
            "a b/3",
            "acme/-1",
            "acme/9007199254740992",
            "acme/01",
            "acme/001",
            "acme/+1",
            "acme/00",
            "acme/1 ",
            "acme/١",
        ];
        for bad in bad_ids {
            let error = ReservationId::parse(bad).unwrap_err();
            assert!(error.to_string().starts_with("reservation_id: "), "{bad}: {error}");
        }
    }

    #[test]
    fn echoed_values_are_cut_to_a_prefix() {
        assert_eq!(echo("email").to_string(), "\"email\"");
        let exact = "a".repeat(ECHO_LEN_MAX);
        assert_eq!(echo(&exact).to_string(), format!("{exact:?}"));
        let long = format!("{}{}", "é", "b".repeat(16 * 1024));
        let echoed = echo(&long).to_string();
        assert!(echoed.len() < ECHO_LEN_MAX + 32, "{echoed}");
        assert!(echoed.ends_with(&format!("… ({} bytes)", long.len())), "{echoed}");
    }

    #[test]
    fn amounts_are_bounded_and_name_their_field() {
        assert_eq!(check_amount("cost.amount", 1, Zero::Refused).unwrap(), 1);
        assert_eq!(check_amount("cost.amount", AMOUNT_MAX, Zero::Refused).unwrap(), AMOUNT_MAX);
        assert_eq!(check_amount("cost.amount", 0, Zero::Allowed).unwrap(), 0);
        for bad in [0, -1, AMOUNT_MAX + 1, i64::MIN, i64::MAX] {
            let error = check_amount("cost.amount", bad, Zero::Refused).unwrap_err();
            assert!(error.to_string().starts_with("cost.amount: must be in 1..="), "{error}");
        }
    }

    #[test]
    fn labels_are_bounded() {
        let many = (0..=LABELS_MAX).map(|i| (format!("k{i}"), "v".to_owned()));
        assert!(Labels::parse(many).is_err());
        assert!(Labels::parse([(String::new(), "v".to_owned())]).is_err());
        assert!(Labels::parse([("k".to_owned(), "v".repeat(LABEL_VALUE_LEN_MAX + 1))]).is_err());
        let ok = Labels::parse([("provider".to_owned(), "x".to_owned())]).unwrap();
        assert_eq!(ok.iter().count(), 1);
    }

    #[test]
    fn business_keys_are_optional_and_bounded() {
        assert_eq!(BusinessKey::parse_optional("").unwrap(), None);
        assert!(BusinessKey::parse_optional("contact 123, mobile").unwrap().is_some());
        assert!(BusinessKey::parse_optional(&"k".repeat(BUSINESS_KEY_LEN_MAX + 1)).is_err());
        assert!(BusinessKey::parse_optional("tab\there").is_err());
    }
}
