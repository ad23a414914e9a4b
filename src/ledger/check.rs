//! The invariants of docs/rules.md#invariants, checked from first principles on one account: recomputed from
//! lots and reservations, never read from the counters they are meant to verify.
//! 1. granted + owed = available + held + spent + expired, and nothing owed below zero;
//! 2. no lot and no user usage below zero; no reservation spends more than it held;
//! 3. closed reservations hold nothing (that they never change is checked by the tests, which
//!    compare snapshots across steps).

use super::account::Account;

pub(super) fn account(account: &Account) -> Result<(), String> {
    let id = &account.id;
    let fail = |what: String| Err(format!("account {id}: {what}"));
    let available: i64 = account.lots.values().map(|lot| lot.remaining).sum();
    let mut held = 0;
    for (seq, reservation) in &account.reservations {
        if reservation.draws.iter().any(|draw| draw.amount <= 0) {
            return fail(format!("reservation {seq} holds a non-positive part"));
        }
        if reservation.committed > reservation.reserved || reservation.committed < 0 {
            return fail(format!("reservation {seq} committed {} of {}", reservation.committed, reservation.reserved));
        }
        let in_hand = reservation.held() + reservation.committed + reservation.returned;
        if in_hand != reservation.reserved {
            return fail(format!(
                "reservation {seq}: held + committed + returned = {in_hand} != {}",
                reservation.reserved
            ));
        }
        if reservation.state.is_open() {
            held += reservation.held();
            if !account.deadlines.contains(&(reservation.deadline_ms, *seq)) {
                return fail(format!("open reservation {seq} missing from the deadline index"));
            }
        } else if reservation.held() != 0 {
            return fail(format!("closed reservation {seq} still holds {}", reservation.held()));
        }
    }
    if held != account.held {
        return fail(format!("held counter {} != {held} held by open reservations", account.held));
    }
    let open = account.reservations.values().filter(|r| r.state.is_open()).count();
    if open != account.deadlines.len() {
        return fail(format!("{} deadlines for {open} open reservations", account.deadlines.len()));
    }
    if let Some((lot, _)) = account.lots.iter().find(|(_, lot)| lot.remaining < 0 || lot.remaining > lot.granted) {
        return fail(format!("lot {lot} remainder out of 0..=granted"));
    }
    if let Some((user, _)) = account.users.iter().find(|(_, user)| user.used < 0) {
        return fail(format!("user {user} usage below zero"));
    }
    if let Some((category, _)) = account.categories.iter().find(|(_, category)| category.used < 0) {
        return fail(format!("category {} usage below zero", category.as_str()));
    }
    if account.owed < 0 {
        return fail(format!("owed {} below zero", account.owed));
    }
    let accounted = available + held + account.spent + account.expired;
    if account.granted + account.owed != accounted {
        return fail(format!(
            "conservation: granted {} + owed {} != available {available} + held {held} + spent {} + expired {}",
            account.granted, account.owed, account.spent, account.expired
        ));
    }
    Ok(())
}
