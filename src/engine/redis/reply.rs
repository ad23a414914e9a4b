//! Decoding function replies into ledger answers. Functions answer flat arrays (see lib.lua and
//! each file's header): `{"ok", …}`, `{"no", …}` (a decline), `{"err", code}` or `{"due"}`. This
//! module owns those positional shapes and turns them into the same typed values the reference
//! model returns, so the two engines can be compared with `==`. A remembered answer comes back
//! with its numbers as strings, a fresh one with Redis integers: [`Fields`] reads both.

use std::collections::BTreeMap;

use redis::Value;

use crate::engine::Error;
use crate::ledger::command::Plan;
use crate::ledger::cycle::Cycle;
use crate::ledger::{
    self, AccountId, AccountView, CategoryView, Charged, Committed, Decline, DeclineReason, Extended, Granted, LotView,
    PlanSet, Released, ReservationId, ReservationState, ReservationView, Reserved, Totals, UserView, wire,
};

fn corrupt(what: impl std::fmt::Display) -> Error {
    // A reply we cannot read means the functions and this code disagree: not the caller's fault,
    // and nothing a retry would mend.
    Error::Internal(format!("unexpected reply from Redis function: {what}"))
}

/// What a reply refers to, so error codes become the model's errors.
pub struct Context<'a> {
    pub account: &'a AccountId,
    pub reservation: Option<u64>,
    pub request: Option<&'a str>,
}

/// A reply's fields, read front to back.
pub struct Fields {
    items: std::vec::IntoIter<Value>,
}

impl Fields {
    fn next(&mut self) -> Result<Value, Error> {
        self.items.next().ok_or_else(|| corrupt("reply too short"))
    }

    pub fn text(&mut self) -> Result<String, Error> {
        match self.next()? {
            Value::BulkString(bytes) => String::from_utf8(bytes).map_err(corrupt),
            Value::SimpleString(text) => Ok(text),
            Value::Int(number) => Ok(number.to_string()),
            other => Err(corrupt(format!("expected text, got {other:?}"))),
        }
    }

    fn opt_text(&mut self) -> Result<Option<String>, Error> {
        match self.next()? {
            Value::Nil => Ok(None),
            Value::BulkString(bytes) if bytes.is_empty() => Ok(None),
            Value::BulkString(bytes) => String::from_utf8(bytes).map(Some).map_err(corrupt),
            other => Err(corrupt(format!("expected text, got {other:?}"))),
        }
    }

    pub fn opt_int(&mut self) -> Result<Option<i64>, Error> {
        match self.next()? {
            Value::Nil => Ok(None),
            Value::Int(number) => Ok(Some(number)),
            Value::BulkString(bytes) if bytes.is_empty() => Ok(None),
            Value::BulkString(bytes) => std::str::from_utf8(&bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .map(Some)
                .ok_or_else(|| corrupt(format!("expected a number, got {:?}", String::from_utf8_lossy(&bytes)))),
            other => Err(corrupt(format!("expected a number, got {other:?}"))),
        }
    }

    pub fn int(&mut self) -> Result<i64, Error> {
        self.opt_int()?.ok_or_else(|| corrupt("a number is missing"))
    }

    pub fn seq(&mut self) -> Result<u64, Error> {
        u64::try_from(self.int()?).map_err(corrupt)
    }

    fn flag(&mut self) -> Result<bool, Error> {
        Ok(self.int()? != 0)
    }

    fn count(&mut self) -> Result<usize, Error> {
        usize::try_from(self.int()?).map_err(corrupt)
    }

    fn is_empty(&self) -> bool {
        self.items.len() == 0
    }
}

/// What every function answers.
pub enum Reply {
    Ok(Fields),
    Declined(Decline),
    /// The account needs more catching up before this call can run: call again.
    Due,
}

fn error_of(code: &str, context: &Context<'_>) -> Error {
    let refusal = match code {
        // A call on a reservation names the reservation, not the account.
        "account_not_found" => match context.reservation {
            Some(seq) => ledger::Error::ReservationNotFound(ReservationId { account: context.account.clone(), seq }),
            None => ledger::Error::AccountNotFound(context.account.clone()),
        },
        "reservation_not_found" => ledger::Error::ReservationNotFound(ReservationId {
            account: context.account.clone(),
            seq: context.reservation.unwrap_or(0),
        }),
        "request_id_reused" => match context.request.map(ledger::RequestId::parse) {
            Some(Ok(request)) => ledger::Error::RequestIdReused(request),
            _ => return corrupt("request_id_reused without a request"),
        },
        "expires_in_past" => ledger::Error::expiry_in_past(),
        code => match code.strip_prefix("balance:") {
            Some(field) => ledger::Error::balance_exceeded(field),
            None => return corrupt(format!("unknown error code {code:?}")),
        },
    };
    Error::Ledger(refusal)
}

/// Splits a reply into a result, a decline or "due"; an error code becomes the model's error.
pub fn parse(value: Value, context: &Context<'_>) -> Result<Reply, Error> {
    let Value::Array(items) = value else { return Err(corrupt(format!("expected an array, got {value:?}"))) };
    let mut fields = Fields { items: items.into_iter() };
    match fields.text()?.as_str() {
        "ok" => Ok(Reply::Ok(fields)),
        "no" => Ok(Reply::Declined(decline(&mut fields, context.account)?)),
        "err" => Err(error_of(&fields.text()?, context)),
        "due" => Ok(Reply::Due),
        other => Err(corrupt(format!("reply status {other:?}"))),
    }
}

/// A batch's reply: the reservation after it and each item's reply, in order, or None when the
/// account must catch up first (call again). A refusal of the whole call names the item it is
/// about (`requests`: the items' ids).
pub fn parse_batch(
    value: Value,
    id: &ReservationId,
    requests: &[&str],
) -> Result<Option<(ReservationView, Vec<Reply>)>, Error> {
    let Value::Array(items) = value else { return Err(corrupt(format!("expected an array, got {value:?}"))) };
    let mut context = Context { account: &id.account, reservation: Some(id.seq), request: None };
    let mut fields = Fields { items: items.into_iter() };
    match fields.text()?.as_str() {
        "batch" => {
            let Value::Array(view) = fields.next()? else { return Err(corrupt("a batch without its reservation")) };
            let reservation = reservation(&mut Fields { items: view.into_iter() }, &id.account)?;
            let replies = fields.items.map(|item| parse(item, &context)).collect::<Result<Vec<_>, _>>()?;
            if replies.len() != requests.len() {
                return Err(corrupt(format!("{} replies to a batch of {}", replies.len(), requests.len())));
            }
            Ok(Some((reservation, replies)))
        }
        "due" => Ok(None),
        "err" => {
            let code = fields.text()?;
            if !fields.is_empty() {
                let index = fields.count()?;
                context.request = index.checked_sub(1).and_then(|index| requests.get(index)).copied();
            }
            Err(error_of(&code, &context))
        }
        other => Err(corrupt(format!("batch reply status {other:?}"))),
    }
}

/// A decline: reason, requested, available, user remaining, held, state, then (absent from
/// declines remembered before they carried them) the user and, on a call on a reservation, the
/// reservation's view.
fn decline(fields: &mut Fields, account: &AccountId) -> Result<Decline, Error> {
    let reason = match fields.text()?.as_str() {
        "insufficient_credit" => DeclineReason::InsufficientCredit,
        "user_limit_reached" => DeclineReason::UserLimitReached,
        "reservation_expired" => DeclineReason::ReservationExpired,
        "reservation_closed" => DeclineReason::ReservationClosed,
        "exceeds_hold" => DeclineReason::ExceedsHold,
        "trial_already_used" => DeclineReason::TrialAlreadyUsed,
        "category_budget_reached" => DeclineReason::CategoryBudgetReached,
        other => return Err(corrupt(format!("decline reason {other:?}"))),
    };
    let (requested, available, user_remaining, held) = (fields.int()?, fields.int()?, fields.opt_int()?, fields.int()?);
    let reservation_state = match fields.opt_text()? {
        Some(text) => Some(state(&text)?),
        None => None,
    };
    let user = if fields.is_empty() { None } else { fields.opt_text()? };
    let (category, category_remaining) = match reason {
        DeclineReason::CategoryBudgetReached => (fields.opt_text()?, fields.opt_int()?),
        _ => (None, None),
    };
    let reservation = if fields.is_empty() { None } else { Some(Box::new(reservation(fields, account)?)) };
    Ok(Decline {
        reason,
        requested,
        available,
        user_remaining,
        held,
        reservation_state,
        account: account.clone(),
        user,
        reservation,
        category,
        category_remaining,
    })
}

fn state(text: &str) -> Result<ReservationState, Error> {
    wire::state(text).ok_or_else(|| corrupt(format!("reservation state {text:?}")))
}

/// A reservation view: seq, state, reserved, committed, held, returned, commits, deadline,
/// closed, user, category, created, labels (JSON).
pub fn reservation(fields: &mut Fields, account: &AccountId) -> Result<ReservationView, Error> {
    let seq = fields.seq()?;
    let state = state(&fields.text()?)?;
    let (reserved, committed, held, returned, commit_count, deadline_ms) =
        (fields.int()?, fields.int()?, fields.int()?, fields.int()?, fields.int()?, fields.int()?);
    let closed_ms = fields.opt_int()?;
    let (user, category, created_ms) = (fields.text()?, fields.text()?, fields.int()?);
    let labels: BTreeMap<String, String> = serde_json::from_str(&fields.text()?).map_err(corrupt)?;
    Ok(ReservationView {
        id: ReservationId { account: account.clone(), seq },
        user,
        category,
        state,
        reserved,
        committed,
        held,
        returned,
        commit_count,
        created_ms,
        deadline_ms,
        closed_ms,
        labels,
    })
}

fn totals(fields: &mut Fields) -> Result<Totals, Error> {
    Ok(Totals {
        granted: fields.int()?,
        available: fields.int()?,
        held: fields.int()?,
        spent: fields.int()?,
        expired: fields.int()?,
        // Last in every reply that carries totals; absent from the Grant, StartTrial and
        // SetPlan replies remembered before overdrafts existed.
        owed: if fields.is_empty() { 0 } else { fields.int()? },
    })
}

pub fn user(fields: &mut Fields) -> Result<UserView, Error> {
    Ok(UserView { user: fields.text()?, limit: fields.opt_int()?, used: fields.int()?, remaining: fields.opt_int()? })
}

pub fn reserved(fields: &mut Fields, account: &AccountId) -> Result<Reserved, Error> {
    Ok(Reserved {
        reservation: ReservationId { account: account.clone(), seq: fields.seq()? },
        amount: fields.int()?,
        deadline_ms: fields.int()?,
        available: fields.int()?,
    })
}

pub fn committed(fields: &mut Fields, account: &AccountId) -> Result<Committed, Error> {
    Ok(Committed {
        charged: fields.int()?,
        already_charged: fields.flag()?,
        held: fields.int()?,
        returned: fields.int()?,
        reservation: reservation(fields, account)?,
    })
}

pub fn extended(fields: &mut Fields, account: &AccountId) -> Result<Extended, Error> {
    Ok(Extended {
        added: fields.int()?,
        held: fields.int()?,
        deadline_ms: fields.int()?,
        reservation: reservation(fields, account)?,
    })
}

pub fn released(fields: &mut Fields, account: &AccountId) -> Result<Released, Error> {
    Ok(Released { returned: fields.int()?, reservation: reservation(fields, account)? })
}

pub fn charged(fields: &mut Fields, account: &AccountId) -> Result<Charged, Error> {
    Ok(Charged {
        reservation: fields.opt_int()?.map(|seq| ReservationId { account: account.clone(), seq: seq as u64 }),
        charged: fields.int()?,
        already_charged: fields.flag()?,
        available: fields.int()?,
        // Absent from replies remembered before overdrafts existed.
        overdrawn: if fields.is_empty() { 0 } else { fields.int()? },
    })
}

fn cycle(fields: &mut Fields) -> Result<Cycle, Error> {
    Ok(Cycle { start_ms: fields.int()?, end_ms: fields.int()? })
}

pub fn plan_set(fields: &mut Fields, _: &AccountId) -> Result<PlanSet, Error> {
    Ok(PlanSet { cycle: cycle(fields)?, totals: totals(fields)? })
}

pub fn granted(fields: &mut Fields, _: &AccountId) -> Result<Granted, Error> {
    Ok(Granted { lot: fields.seq()?, expires_ms: fields.int()?, totals: totals(fields)? })
}

pub fn user_view(fields: &mut Fields, _: &AccountId) -> Result<UserView, Error> {
    user(fields)
}

/// GetBalance's reply: cycle, totals, and the user's and the category's views when asked for.
pub fn balance(
    fields: &mut Fields,
    with_user: bool,
    with_category: bool,
) -> Result<(Cycle, Totals, Option<UserView>, Option<CategoryView>), Error> {
    let cycle = cycle(fields)?;
    let totals = totals(fields)?;
    let user = if with_user { Some(user(fields)?) } else { None };
    let category = if with_category { Some(category(fields)?) } else { None };
    Ok((cycle, totals, user, category))
}

/// A category's view: the same four fields as a user's (name, budget, used, remaining).
pub fn category(fields: &mut Fields) -> Result<CategoryView, Error> {
    let UserView { user: category, limit: budget, used, remaining } = user(fields)?;
    Ok(CategoryView { category, budget, used, remaining })
}

pub fn category_view(fields: &mut Fields, _: &AccountId) -> Result<CategoryView, Error> {
    category(fields)
}

fn plan(fields: &mut Fields) -> Result<Option<Plan>, Error> {
    let (period, anchor, plan, addon) = (fields.opt_int()?, fields.opt_int()?, fields.opt_int()?, fields.opt_int()?);
    let (Some(period), Some(anchor_ms), Some(plan_credits), Some(addon_credits)) = (period, anchor, plan, addon) else {
        return Ok(None);
    };
    let months = u32::try_from(period).map_err(corrupt)?;
    let period = wire::period(months).ok_or_else(|| corrupt(format!("plan period of {months} months")))?;
    Ok(Some(Plan { period, anchor_ms, plan_credits, addon_credits }))
}

fn lot(fields: &mut Fields) -> Result<LotView, Error> {
    let id = fields.seq()?;
    let kind = fields.text()?;
    Ok(LotView {
        id,
        kind: wire::lot_kind(&kind).ok_or_else(|| corrupt(format!("lot kind {kind:?}")))?,
        granted: fields.int()?,
        remaining: fields.int()?,
        granted_ms: fields.int()?,
        expires_ms: fields.int()?,
    })
}

/// The whole account view (account.lua), lots in burn order and users by id, as the model has them.
pub fn account(fields: &mut Fields, account: &AccountId) -> Result<AccountView, Error> {
    let cycle = cycle(fields)?;
    let trial_used = fields.flag()?;
    let open_reservations = fields.int()?;
    let totals = totals(fields)?;
    let plan = plan(fields)?;
    let mut lots = (0..fields.count()?).map(|_| lot(fields)).collect::<Result<Vec<_>, Error>>()?;
    lots.sort_by_key(|lot| (lot.expires_ms, lot.kind, lot.id));
    // Sorted here, byte-wise like the model, rather than by Lua's locale-dependent comparison.
    let mut users = (0..fields.count()?).map(|_| user(fields)).collect::<Result<Vec<_>, Error>>()?;
    users.sort_by(|a, b| a.user.cmp(&b.user));
    let mut categories = (0..fields.count()?).map(|_| category(fields)).collect::<Result<Vec<_>, Error>>()?;
    categories.sort_by(|a, b| a.category.cmp(&b.category));
    Ok(AccountView { id: account.clone(), plan, cycle, totals, lots, trial_used, users, open_reservations, categories })
}

/// A page of reservations and the token of the next page.
pub fn page(fields: &mut Fields, account: &AccountId) -> Result<(Vec<ReservationView>, Option<u64>), Error> {
    let next = fields.opt_int()?.map(|seq| seq as u64);
    let mut page = Vec::new();
    while !fields.is_empty() {
        page.push(reservation(fields, account)?);
    }
    Ok((page, next))
}
