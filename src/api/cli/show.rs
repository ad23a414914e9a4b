//! The operator commands' human output: key–value lines and aligned tables, times in RFC 3339
//! (UTC), enums by their short names. Written by hand: aligned columns are a few lines, and a
//! table crate would bring terminal styling that must not reach pipes.

use std::fmt::Write;

use super::pb;

/// Columns padded to their widest cell, two spaces apart; the header in capitals.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        padded.join("  ").trim_end().to_owned()
    };
    let mut out = vec![line(header.iter().map(|title| title.to_uppercase()).collect())];
    out.extend(rows.iter().map(|row| line(row.clone())));
    out.join("\n")
}

/// `key  value` lines, the keys padded alike.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(key, _)| key.len()).max().unwrap_or(0);
    pairs.iter().map(|(key, value)| format!("{key:<width$}  {value}")).collect::<Vec<_>>().join("\n")
}

/// Unix ms as RFC 3339 UTC; 0 as `never`.
fn at(ms: i64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |at| at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `OUTCOME_INSUFFICIENT_CREDIT` → `insufficient_credit`.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_ascii_lowercase()
}

fn outcome(outcome: pb::Outcome) -> String {
    short(outcome.as_str_name(), "OUTCOME_")
}

fn optional(value: Option<i64>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| value.to_string())
}

fn totals(totals: Option<&pb::Totals>) -> String {
    let totals = totals.cloned().unwrap_or_default();
    let owed = if totals.owed == 0 { String::new() } else { format!("  owed {}", totals.owed) };
    format!(
        "granted {}  available {}  held {}  spent {}  expired {}{owed}",
        totals.granted, totals.available, totals.held, totals.spent, totals.expired
    )
}

fn cycle(cycle: Option<&pb::Cycle>) -> String {
    cycle.map_or_else(|| "none".to_owned(), |cycle| format!("{} → {}", at(cycle.start_unix_ms), at(cycle.end_unix_ms)))
}

pub(super) fn account(response: &pb::GetAccountResponse) -> String {
    let plan = response.plan.as_ref().map_or_else(
        || "none".to_owned(),
        |plan| {
            format!(
                "{}, {} plan + {} add-on credits per cycle, anchored {}",
                short(plan.period().as_str_name(), "PERIOD_"),
                plan.plan_credits,
                plan.addon_credits,
                at(plan.anchor_unix_ms)
            )
        },
    );
    let mut out = fields(&[
        ("account", response.account_id.clone()),
        ("plan", plan),
        ("cycle", cycle(response.cycle.as_ref())),
        ("credits", totals(response.totals.as_ref())),
        ("trial", if response.trial_used { "used" } else { "not used" }.to_owned()),
        ("open holds", response.open_reservations.to_string()),
    ]);
    let lots: Vec<Vec<String>> = response
        .lots
        .iter()
        .map(|lot| {
            vec![
                lot.lot_id.to_string(),
                short(lot.kind().as_str_name(), "LOT_KIND_"),
                lot.granted.to_string(),
                lot.remaining.to_string(),
                at(lot.granted_unix_ms),
                at(lot.expires_unix_ms),
            ]
        })
        .collect();
    let _ = write!(out, "\n\n{}", table(&["lot", "kind", "granted", "remaining", "granted at", "expires"], &lots));
    if !response.user_limits.is_empty() {
        let users: Vec<Vec<String>> = response
            .user_limits
            .iter()
            .map(|user| {
                vec![user.user_id.clone(), optional(user.limit), user.used.to_string(), optional(user.remaining)]
            })
            .collect();
        let _ = write!(out, "\n\n{}", table(&["user", "limit", "used", "remaining"], &users));
    }
    if !response.category_budgets.is_empty() {
        let categories: Vec<Vec<String>> = response
            .category_budgets
            .iter()
            .map(|category| {
                vec![
                    category.category.clone(),
                    optional(category.budget),
                    category.used.to_string(),
                    optional(category.remaining),
                ]
            })
            .collect();
        let _ = write!(out, "\n\n{}", table(&["category", "budget", "used", "remaining"], &categories));
    }
    out
}

pub(super) fn plan_set(response: &pb::SetPlanResponse) -> String {
    fields(&[
        ("outcome", outcome(response.outcome())),
        ("cycle", cycle(response.cycle.as_ref())),
        ("credits", totals(response.totals.as_ref())),
    ])
}

pub(super) fn granted(response: &pb::GrantResponse) -> String {
    fields(&[
        ("outcome", outcome(response.outcome())),
        ("lot", response.lot_id.to_string()),
        ("expires", at(response.expires_unix_ms)),
        ("credits", totals(response.totals.as_ref())),
    ])
}

pub(super) fn trial(response: &pb::StartTrialResponse) -> String {
    let mut pairs = vec![("outcome", outcome(response.outcome()))];
    match &response.decline {
        Some(decline) => pairs.push(("reason", decline.message.clone())),
        None => {
            pairs.push(("lot", response.lot_id.to_string()));
            pairs.push(("expires", at(response.expires_unix_ms)));
        }
    }
    pairs.push(("credits", totals(response.totals.as_ref())));
    fields(&pairs)
}

pub(super) fn user_limit(response: &pb::SetUserLimitResponse) -> String {
    fields(&[
        ("outcome", outcome(response.outcome())),
        ("limit", optional(response.limit)),
        ("used", response.used.to_string()),
        ("remaining", optional(response.remaining)),
    ])
}

pub(super) fn category_budget(response: &pb::SetCategoryBudgetResponse) -> String {
    fields(&[
        ("outcome", outcome(response.outcome())),
        ("budget", optional(response.budget)),
        ("used", response.used.to_string()),
        ("remaining", optional(response.remaining)),
    ])
}

pub(super) fn usage(response: &pb::GetUsageResponse) -> String {
    let rows: Vec<Vec<String>> = response
        .totals
        .iter()
        .map(|total| {
            vec![
                at(total.cycle_start_unix_ms),
                total.user_id.clone(),
                total.category.clone(),
                total.spent.to_string(),
                total.commits.to_string(),
            ]
        })
        .collect();
    let mut out = format!(
        "{}\n\nspent  {}",
        table(&["cycle start", "user", "category", "spent", "commits"], &rows),
        response.spent
    );
    if !response.budget_by_category.is_empty() {
        // The budgets in force beside what each category spent (over every cycle listed).
        let mut budgets: Vec<(&String, &i64)> = response.budget_by_category.iter().collect();
        budgets.sort();
        let rows: Vec<Vec<String>> = budgets
            .into_iter()
            .map(|(category, budget)| {
                let spent = response.spent_by_category.get(category).copied().unwrap_or(0);
                vec![category.clone(), budget.to_string(), spent.to_string()]
            })
            .collect();
        out.push_str(&format!("\n\n{}", table(&["category", "budget per cycle", "spent"], &rows)));
    }
    out
}

fn reservation_row(reservation: &pb::Reservation) -> Vec<String> {
    vec![
        reservation.reservation_id.clone(),
        reservation.user_id.clone(),
        reservation.category.clone(),
        short(reservation.state().as_str_name(), "RESERVATION_STATE_"),
        reservation.reserved.to_string(),
        reservation.held.to_string(),
        reservation.committed.to_string(),
        at(reservation.deadline_unix_ms),
    ]
}

pub(super) fn reservations(reservations: &[pb::Reservation]) -> String {
    let rows: Vec<Vec<String>> = reservations.iter().map(reservation_row).collect();
    table(&["reservation", "user", "category", "state", "reserved", "held", "committed", "deadline"], &rows)
}

pub(super) fn reservation(reservation: &pb::Reservation) -> String {
    let mut labels: Vec<String> = reservation.labels.iter().map(|(key, value)| format!("{key}={value}")).collect();
    labels.sort();
    fields(&[
        ("reservation", reservation.reservation_id.clone()),
        ("account", reservation.account_id.clone()),
        ("user", reservation.user_id.clone()),
        ("category", reservation.category.clone()),
        ("state", short(reservation.state().as_str_name(), "RESERVATION_STATE_")),
        ("reserved", reservation.reserved.to_string()),
        ("held", reservation.held.to_string()),
        ("committed", format!("{} in {} commit(s)", reservation.committed, reservation.commit_count)),
        ("returned", reservation.returned.to_string()),
        ("created", at(reservation.created_unix_ms)),
        ("deadline", at(reservation.deadline_unix_ms)),
        ("closed", if reservation.closed_unix_ms == 0 { "open".to_owned() } else { at(reservation.closed_unix_ms) }),
        ("labels", labels.join(" ")),
    ])
}

pub(super) fn released(response: &pb::ReleaseResponse) -> String {
    let mut pairs = vec![("outcome", outcome(response.outcome())), ("returned", response.returned.to_string())];
    if let Some(decline) = &response.decline {
        pairs.push(("reason", decline.message.clone()));
    }
    let mut out = fields(&pairs);
    if let Some(reservation) = &response.reservation {
        let _ = write!(out, "\n\n{}", self::reservation(reservation));
    }
    out
}

/// One line per change: what happened, in words, with its figures.
pub(super) fn history(response: &pb::GetAccountHistoryResponse) -> String {
    let rows: Vec<Vec<String>> = response
        .entries
        .iter()
        .map(|entry| {
            let (change, details) = entry.change.as_ref().map(change).unwrap_or_default();
            vec![entry.seq.to_string(), at(entry.at_unix_ms), change.to_owned(), details, entry.request_id.clone()]
        })
        .collect();
    let mut out = table(&["seq", "at", "change", "details", "request"], &rows);
    if !response.next_page_token.is_empty() {
        let _ = write!(out, "\n\nolder: --before {}", response.next_page_token);
    }
    out
}

fn lots(lots: &[pb::LotAmount]) -> String {
    lots.iter().map(|lot| format!("lot {}: {}", lot.lot_id, lot.amount)).collect::<Vec<_>>().join(", ")
}

fn change(change: &pb::history_entry::Change) -> (&'static str, String) {
    use pb::history_entry::Change;
    match change {
        Change::PlanSet(set) => {
            let plan = set.plan.unwrap_or_default();
            ("plan set", format!("{} plan + {} add-on credits per cycle", plan.plan_credits, plan.addon_credits))
        }
        Change::CycleStarted(started) => ("cycle started", cycle(Some(started))),
        Change::LotGranted(lot) => (
            "granted",
            format!(
                "{} credits, lot {} ({}), expires {}",
                lot.amount,
                lot.lot_id,
                short(lot.kind().as_str_name(), "LOT_KIND_"),
                at(lot.expires_unix_ms)
            ),
        ),
        Change::LotExpired(lot) => ("lot expired", format!("{} credits left in lot {}", lot.amount, lot.lot_id)),
        Change::UserLimitSet(limit) => ("user limit", format!("{}: {}", limit.user_id, optional(limit.limit))),
        Change::CategoryBudgetSet(budget) => {
            ("category budget", format!("{}: {}", budget.category, optional(budget.budget)))
        }
        Change::Reserved(hold) => (
            "held",
            format!(
                "{} {} for {} in {} ({})",
                hold.reservation_id,
                hold.amount,
                hold.user_id,
                hold.category,
                lots(&hold.lots)
            ),
        ),
        Change::Extended(hold) => {
            ("extended", format!("{} +{} until {}", hold.reservation_id, hold.amount, at(hold.deadline_unix_ms)))
        }
        Change::Committed(commit) => {
            let key =
                if commit.business_key.is_empty() { String::new() } else { format!(" key {}", commit.business_key) };
            let again = if commit.already_charged { " (already charged)" } else { "" };
            ("spent", format!("{} {}{key}{again} ({})", commit.reservation_id, commit.amount, lots(&commit.lots)))
        }
        Change::Closed(closed) => {
            let returned: i64 = closed.returned.iter().map(|lot| lot.amount).sum();
            let state = short(closed.state().as_str_name(), "RESERVATION_STATE_");
            ("closed", format!("{} {state}, {returned} returned, {} expired", closed.reservation_id, closed.expired))
        }
        Change::Overdrawn(overdrawn) => {
            let key = if overdrawn.business_key.is_empty() {
                String::new()
            } else {
                format!(" key {}", overdrawn.business_key)
            };
            let charge = if overdrawn.reservation_id.is_empty() {
                String::new()
            } else {
                format!(" (rest of {})", overdrawn.reservation_id)
            };
            (
                "overdrawn",
                format!("{} owed for {} in {}{key}{charge}", overdrawn.amount, overdrawn.user_id, overdrawn.category),
            )
        }
        Change::Repaid(repaid) => {
            ("repaid", format!("{} of lot {} repaid the overdraft", repaid.amount, repaid.lot_id))
        }
    }
}

/// A threshold's kind, scope (the user or category; `-` for the account) and figure (`-` for
/// `depleted`), as the webhook payload names them.
fn threshold(threshold: Option<&pb::AlertThreshold>) -> [String; 3] {
    use pb::alert_threshold::When;
    let dash = || "-".to_owned();
    match threshold.and_then(|threshold| threshold.when.as_ref()) {
        Some(When::UsedPercent(percent)) => ["used_percent".to_owned(), dash(), percent.to_string()],
        Some(When::AvailableBelow(amount)) => ["available_below".to_owned(), dash(), amount.to_string()],
        Some(When::Depleted(_)) => ["depleted".to_owned(), dash(), dash()],
        Some(When::UserPercent(scoped)) => ["user_percent".to_owned(), scoped.id.clone(), scoped.percent.to_string()],
        Some(When::CategoryPercent(scoped)) => {
            ["category_percent".to_owned(), scoped.id.clone(), scoped.percent.to_string()]
        }
        None => [dash(), dash(), dash()],
    }
}

/// The account's thresholds, one a row; `thresholds  none` when it has none.
pub(super) fn thresholds(thresholds: &[pb::AlertThreshold]) -> String {
    if thresholds.is_empty() {
        return fields(&[("thresholds", "none".to_owned())]);
    }
    let rows: Vec<Vec<String>> = thresholds
        .iter()
        .map(|one| {
            let [kind, scope, value] = threshold(Some(one));
            vec![one.threshold_id.clone(), kind, scope, value]
        })
        .collect();
    table(&["threshold", "kind", "scope", "value"], &rows)
}

/// The thresholds, the alerts newest first, then their webhook deliveries (when there are any),
/// and where the next page starts.
pub(super) fn alerts(response: &pb::ListAlertsResponse) -> String {
    let mut out = thresholds(&response.thresholds);
    let rows: Vec<Vec<String>> = response
        .alerts
        .iter()
        .map(|alert| {
            let id = alert.threshold.as_ref().map(|threshold| threshold.threshold_id.clone()).unwrap_or_default();
            vec![
                alert.event_id.clone(),
                id,
                at(alert.fired_unix_ms),
                alert.observed.to_string(),
                alert.base.to_string(),
            ]
        })
        .collect();
    let _ = write!(out, "\n\n{}", table(&["event", "threshold", "fired", "observed", "base"], &rows));
    let deliveries: Vec<Vec<String>> = response
        .alerts
        .iter()
        .flat_map(|alert| alert.deliveries.iter().map(move |delivery| (alert, delivery)))
        .map(|(alert, delivery)| {
            let error = if delivery.last_error.is_empty() { "none".to_owned() } else { delivery.last_error.clone() };
            vec![
                alert.event_id.clone(),
                delivery.url.clone(),
                short(delivery.state().as_str_name(), "DELIVERY_STATE_"),
                delivery.attempts.to_string(),
                at(delivery.next_attempt_unix_ms),
                error,
            ]
        })
        .collect();
    if !deliveries.is_empty() {
        let header = ["event", "webhook", "state", "attempts", "next attempt", "last error"];
        let _ = write!(out, "\n\n{}", table(&header, &deliveries));
    }
    if !response.next_page_token.is_empty() {
        let _ = write!(out, "\n\nolder: --page-token {}", response.next_page_token);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns_and_times_read_as_utc() {
        let rows = vec![vec!["1".to_owned(), "addon".to_owned()], vec!["12".to_owned(), "promo".to_owned()]];
        assert_eq!(table(&["lot", "kind"], &rows), "LOT  KIND\n1    addon\n12   promo");
        assert_eq!(at(0), "never");
        assert_eq!(at(1_793_491_200_000), "2026-11-01T00:00:00Z");
        assert_eq!(short("OUTCOME_TRIAL_ALREADY_USED", "OUTCOME_"), "trial_already_used");
    }
}
