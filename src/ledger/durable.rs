//! What the embedded engine keeps in SQL besides the events, so that a restart finds exactly the
//! state it acknowledged:
//! - [`RememberedAnswer`]: every answer remembered under a request id (declines included), so a
//!   retry after a restart gets its first answer instead of being executed again;
//! - account snapshots ([`AccountSnapshot`]), so a restart replays only the events after them
//!   and its time does not grow with the ledger's whole history.
//!
//! Both are stored as JSON beside a format number ([`ANSWER_FORMAT`], [`SNAPSHOT_FORMAT`]); the
//! golden tests below pin their exact text. A new format needs a new number and a reader for
//! the old one.
//!
//! Format 2 (both) adds category budgets: a snapshot's `categories`, a decline's `category` and
//! `category_remaining`, the `set_category_budget` answer. Format 1 is format 2 without them,
//! so it is read as it is; a sidecar that knows only format 1 refuses format 2 (a downgrade
//! across it needs the state rebuilt from the ledger).

use super::Answer;
use super::event::Event;
use super::snapshot::AccountSnapshot;
use super::types::{AccountId, Millis, RequestId};

/// The JSON form of [`Answer`] stored in `request_answers.data`.
pub const ANSWER_FORMAT: i64 = 2;
/// The JSON form of [`AccountSnapshot`] stored in `engine_snapshots.data`.
pub const SNAPSHOT_FORMAT: i64 = 2;

/// An answer remembered under a request id, as the embedded engine records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RememberedAnswer {
    pub account: AccountId,
    /// The reservation a Commit, Extend or Release acts on: its requests are remembered as long
    /// as it is. None for account-scoped requests.
    pub reservation: Option<u64>,
    pub request: RequestId,
    /// The request's fingerprint (a retry with other parameters is refused).
    pub fingerprint: String,
    /// Account-scoped requests are forgotten after this instant; 0 for reservation-scoped ones.
    pub keep_until_ms: Millis,
    pub answer: Answer,
}

/// The embedded engine's state as read back from SQL at start.
#[derive(Debug, Default)]
pub struct DurableState {
    pub snapshots: Vec<AccountSnapshot>,
    /// Each account's events after its snapshot (all of them without one), in sequence order.
    pub events: Vec<Event>,
    pub answers: Vec<RememberedAnswer>,
}

pub fn encode_answer(answer: &Answer) -> String {
    serde_json::to_string(answer).expect("answers serialise")
}

pub fn decode_answer(format: i64, data: &str) -> Result<Answer, String> {
    if !(1..=ANSWER_FORMAT).contains(&format) {
        return Err(format!("answer format {format} is not {ANSWER_FORMAT}: written by a newer sidecar?"));
    }
    serde_json::from_str(data).map_err(|error| format!("{error}: {data}"))
}

pub fn encode_snapshot(snapshot: &AccountSnapshot) -> String {
    serde_json::to_string(snapshot).expect("snapshots serialise")
}

pub fn decode_snapshot(format: i64, data: &str) -> Result<AccountSnapshot, String> {
    if !(1..=SNAPSHOT_FORMAT).contains(&format) {
        return Err(format!("snapshot format {format} is not {SNAPSHOT_FORMAT}: written by a newer sidecar?"));
    }
    serde_json::from_str(data).map_err(|error| format!("{error}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::ledger::command::{Commit, Reserve};
    use crate::ledger::{Category, Labels, Ledger, ReservationId, UserId};

    fn ledger_with_a_hold() -> (Ledger, ReservationId) {
        let mut ledger = Ledger::new(86_400_000).journal_answers();
        let account = AccountId::parse("acme").unwrap();
        let plan = crate::ledger::command::SetPlan {
            account: account.clone(),
            plan: crate::ledger::command::Plan {
                period: crate::ledger::Period::Monthly,
                anchor_ms: 1_767_225_600_000,
                plan_credits: 500,
                addon_credits: 0,
            },
            request: RequestId::parse("plan-1").unwrap(),
        };
        ledger.set_plan(1_768_435_200_000, &plan).unwrap();
        let reserve = Reserve {
            account,
            user: UserId::parse("u-1").unwrap(),
            category: Category("email".into()),
            amount: 40,
            ttl_ms: 60_000,
            request: RequestId::parse("r-1").unwrap(),
            labels: Labels::parse([("job".to_owned(), "j-9".to_owned())]).unwrap(),
            partial: None,
        };
        let reserved = ledger.reserve(1_768_435_200_000, &reserve).unwrap().done().unwrap();
        (ledger, reserved.reservation)
    }

    /// The stored forms are contracts: these texts must not change without a new format number.
    #[test]
    fn answer_json_is_pinned() {
        let (mut ledger, id) = ledger_with_a_hold();
        let commit = Commit {
            reservation: id,
            amount: 15,
            final_commit: true,
            request: RequestId::parse("c-1").unwrap(),
            business_key: None,
            labels: Labels::default(),
        };
        ledger.commit(1_768_435_201_000, &commit).unwrap();
        let answers: Vec<String> = ledger.drain_answers().iter().map(|memo| encode_answer(&memo.answer)).collect();
        assert_eq!(
            answers,
            [
                r#"{"set_plan":{"done":{"cycle":{"start_ms":1767225600000,"end_ms":1769904000000},"totals":{"granted":500,"available":500,"held":0,"spent":0,"expired":0}}}}"#,
                r#"{"reserve":{"done":{"reservation":"acme/1","amount":40,"deadline_ms":1768435260000,"available":460}}}"#,
                r#"{"commit":{"done":{"charged":15,"already_charged":false,"held":0,"returned":25,"reservation":{"id":"acme/1","user":"u-1","category":"email","state":"committed","reserved":40,"committed":15,"held":0,"returned":25,"commit_count":1,"created_ms":1768435200000,"deadline_ms":1768435260000,"closed_ms":1768435201000,"labels":{"job":"j-9"}}}}}"#,
            ]
        );
        let decline = r#"{"reserve":{"declined":{"reason":"insufficient_credit","requested":900,"available":485,"user_remaining":null,"held":0,"reservation_state":null,"account":"acme","user":"u-1","reservation":null}}}"#;
        // A format-1 decline is a format-2 one without the category fields.
        for format in [1, ANSWER_FORMAT] {
            let decoded = decode_answer(format, decline).unwrap();
            assert_eq!(encode_answer(&decoded), decline);
        }
        let budget = r#"{"reserve":{"declined":{"reason":"category_budget_reached","requested":50,"available":485,"user_remaining":null,"held":0,"reservation_state":null,"account":"acme","user":"u-1","reservation":null,"category":"ai","category_remaining":20}}}"#;
        assert_eq!(encode_answer(&decode_answer(ANSWER_FORMAT, budget).unwrap()), budget);
        let set = r#"{"set_category_budget":{"done":{"category":"ai","budget":100,"used":80,"remaining":20}}}"#;
        assert_eq!(encode_answer(&decode_answer(ANSWER_FORMAT, set).unwrap()), set);
        assert!(decode_answer(ANSWER_FORMAT + 1, decline).unwrap_err().contains("newer sidecar"));
    }

    #[test]
    fn snapshot_json_is_pinned_and_round_trips() {
        let (ledger, id) = ledger_with_a_hold();
        let snapshot = ledger.snapshot(&id.account).unwrap();
        let text = encode_snapshot(&snapshot);
        assert_eq!(
            text,
            r#"{"account":"acme","plan":{"period":1,"anchor":1767225600000,"plan":500,"addon":0},"cs":1767225600000,"ce":1769904000000,"gen":1,"pg":500,"ag":0,"lots":[{"id":1,"kind":"plan","granted":500,"remaining":460,"granted_ms":1767225600000,"expires":1769904000000,"from_plan":true}],"last_lot":1,"last_res":1,"last_event":4,"trial":false,"granted":500,"held":40,"spent":0,"expired":0,"reservations":[{"seq":1,"user":"u-1","category":"email","state":"held","reserved":40,"committed":0,"draws":[[1,40]],"returned":0,"commits":0,"created":1768435200000,"deadline":1768435260000,"labels":{"job":"j-9"},"opened_by":"r-1","ugen":1,"ucnt":40}],"users":{"u-1":{"used":40}},"keys":[],"categories":{"email":{"used":40}}}"#
        );
        let decoded = decode_snapshot(SNAPSHOT_FORMAT, &text).unwrap();
        assert_eq!(decoded, snapshot);
        let account = decoded.into_account().unwrap();
        assert_eq!(AccountSnapshot::of(&account), snapshot);
        // Format 1 (before category budgets) reads as it is: no category state yet.
        let format_1 = text.replace(r#","categories":{"email":{"used":40}}"#, "");
        let old = decode_snapshot(1, &format_1).unwrap();
        assert_eq!(old, AccountSnapshot { categories: BTreeMap::new(), ..snapshot });
        assert!(decode_snapshot(SNAPSHOT_FORMAT + 1, &text).unwrap_err().contains("newer sidecar"));
    }

    /// A hold from before category budgets (a format-1 snapshot counted its user, not its
    /// category) gives back nothing below zero when it closes under a budget.
    #[test]
    fn a_hold_older_than_category_budgets_never_drives_its_category_below_zero() {
        let (ledger, id) = ledger_with_a_hold();
        let text = encode_snapshot(&ledger.snapshot(&id.account).unwrap());
        let format_1 = text.replace(r#","categories":{"email":{"used":40}}"#, "");
        assert_ne!(format_1, text, "the snapshot had category state to take out");
        let snapshots = vec![decode_snapshot(1, &format_1).unwrap()];
        let mut restored =
            Ledger::restore_durable(86_400_000, DurableState { snapshots, ..Default::default() }).unwrap();
        let now = 1_768_435_210_000;
        let email = Category("email".into());
        let budget = crate::ledger::command::SetCategoryBudget {
            account: id.account.clone(),
            category: email.clone(),
            budget: Some(100),
            request: RequestId::parse("b-1").unwrap(),
        };
        let set = restored.set_category_budget(now, &budget).unwrap().done().unwrap();
        assert_eq!((set.used, set.remaining), (0, Some(100)), "the old hold was never counted");
        let reserve = Reserve {
            account: id.account.clone(),
            user: UserId::parse("u-2").unwrap(),
            category: email,
            amount: 10,
            ttl_ms: 60_000,
            request: RequestId::parse("r-2").unwrap(),
            labels: Labels::default(),
            partial: None,
        };
        restored.reserve(now, &reserve).unwrap().done().unwrap();
        let release = crate::ledger::command::Release { reservation: id, request: RequestId::parse("x-1").unwrap() };
        restored.release(now, &release).unwrap().done().unwrap();
        restored.check_invariants().unwrap();
        let account = restored.account(now, &reserve.account).unwrap();
        assert_eq!((account.categories[0].used, account.categories[0].remaining), (0, Some(100)));
    }
}
