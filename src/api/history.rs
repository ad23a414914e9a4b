//! The ledger's events as `GetAccountHistory` entries: one entry per event, its figures as the
//! event recorded them (the durable event JSON is the source; nothing is recomputed).

use std::collections::HashMap;

use super::pb;
use super::pb::history_entry::Change;
use super::respond::{cycle, lot_kind, plan, state};
use crate::ledger::ReservationId;
use crate::ledger::event::{Draw, Event, EventKind};

/// A page of history, newest first; the next page's token when the page is full.
pub fn page(events: Vec<Event>, page_size: usize) -> pb::GetAccountHistoryResponse {
    let next = (events.len() == page_size).then(|| events.last().map(|event| event.seq.to_string())).flatten();
    pb::GetAccountHistoryResponse {
        entries: events.into_iter().map(entry).collect(),
        next_page_token: next.unwrap_or_default(),
    }
}

fn entry(event: Event) -> pb::HistoryEntry {
    let reservation_id = |seq: u64| ReservationId { account: event.account.clone(), seq }.to_string();
    let change = match event.kind {
        EventKind::PlanSet { plan: set, cycle: started } => {
            Change::PlanSet(pb::PlanChanged { plan: Some(plan(set)), cycle: Some(cycle(started)) })
        }
        EventKind::CycleStarted { cycle: started } => Change::CycleStarted(cycle(started)),
        EventKind::LotGranted { lot, kind, amount, expires_ms, from_plan } => Change::LotGranted(pb::LotGranted {
            lot_id: lot,
            kind: lot_kind(kind) as i32,
            amount,
            expires_unix_ms: expires_ms,
            from_plan,
        }),
        EventKind::LotExpired { lot, amount } => Change::LotExpired(pb::LotExpired { lot_id: lot, amount }),
        EventKind::UserLimitSet { user, limit } => Change::UserLimitSet(pb::UserLimitChanged { user_id: user, limit }),
        EventKind::CategoryBudgetSet { category, budget } => {
            Change::CategoryBudgetSet(pb::CategoryBudgetChanged { category, budget })
        }
        EventKind::Reserved { reservation, user, category, amount, draws, deadline_ms, labels } => {
            Change::Reserved(pb::HoldPlaced {
                reservation_id: reservation_id(reservation),
                user_id: user,
                category,
                amount,
                lots: lots(&draws),
                deadline_unix_ms: deadline_ms,
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
            })
        }
        EventKind::Extended { reservation, amount, draws, deadline_ms } => Change::Extended(pb::HoldExtended {
            reservation_id: reservation_id(reservation),
            amount,
            lots: lots(&draws),
            deadline_unix_ms: deadline_ms,
        }),
        EventKind::Committed {
            reservation,
            user,
            category,
            cycle_start_ms,
            amount,
            draws,
            business_key,
            already_charged,
            labels,
        } => Change::Committed(pb::CommitMade {
            reservation_id: reservation_id(reservation),
            user_id: user,
            category,
            cycle_start_unix_ms: cycle_start_ms,
            amount,
            lots: lots(&draws),
            business_key: business_key.unwrap_or_default(),
            already_charged,
            labels: labels.into_iter().collect::<HashMap<_, _>>(),
        }),
        EventKind::Closed { reservation, state: closed, returned, expired } => Change::Closed(pb::HoldClosed {
            reservation_id: reservation_id(reservation),
            state: state(closed) as i32,
            returned: lots(&returned),
            expired,
        }),
        EventKind::Overdrawn { reservation, user, category, cycle_start_ms, amount, business_key, labels } => {
            Change::Overdrawn(pb::Overdrawn {
                reservation_id: if reservation == 0 { String::new() } else { reservation_id(reservation) },
                user_id: user,
                category,
                cycle_start_unix_ms: cycle_start_ms,
                amount,
                business_key: business_key.unwrap_or_default(),
                labels: labels.into_iter().collect::<HashMap<_, _>>(),
            })
        }
        EventKind::Repaid { lot, amount } => Change::Repaid(pb::LotRepaid { lot_id: lot, amount }),
    };
    pb::HistoryEntry {
        seq: event.seq,
        at_unix_ms: event.at_ms,
        request_id: event.request_id.unwrap_or_default(),
        change: Some(change),
    }
}

fn lots(draws: &[Draw]) -> Vec<pb::LotAmount> {
    draws.iter().map(|draw| pb::LotAmount { lot_id: draw.lot, amount: draw.amount }).collect()
}
