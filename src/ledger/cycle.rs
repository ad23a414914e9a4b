//! Billing-cycle arithmetic. Cycle `k` of a plan starts at the anchor plus `k × period` months,
//! always counted from the anchor (never from the previous boundary), on the anchor's day of
//! month and time of day, clamped to the month's last day. An anchor on Jan 31 monthly gives
//! Feb 28 (29 in leap years), Mar 31, Apr 30, ... — no drift.

use chrono::{DateTime, Datelike, Months, Utc};

use super::types::{Millis, Period};

/// A billing cycle, `[start_ms, end_ms)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Cycle {
    pub start_ms: Millis,
    pub end_ms: Millis,
}

impl Cycle {
    pub fn contains(&self, instant: Millis) -> bool {
        (self.start_ms..self.end_ms).contains(&instant)
    }
}

fn to_datetime(instant: Millis) -> DateTime<Utc> {
    // Instants are validated to lie in years 1970..=9999, which chrono represents.
    DateTime::from_timestamp_millis(instant).expect("instant within chrono's range")
}

/// The start of cycle `k` (may be negative) of a schedule anchored at `anchor`.
fn boundary(anchor: DateTime<Utc>, months_per_cycle: u32, k: i64) -> Millis {
    let months = u32::try_from(k.unsigned_abs() * u64::from(months_per_cycle)).expect("cycle index in range");
    let shifted = if k >= 0 {
        anchor.checked_add_months(Months::new(months))
    } else {
        anchor.checked_sub_months(Months::new(months))
    };
    shifted.expect("cycle boundary within chrono's range").timestamp_millis()
}

/// The cycle containing `now` for a schedule with this anchor and period.
pub fn cycle_containing(anchor_ms: Millis, period: Period, now: Millis) -> Cycle {
    let anchor = to_datetime(anchor_ms);
    let at = to_datetime(now);
    let step = period.months();
    let months_apart = i64::from(at.year() - anchor.year()) * 12 + i64::from(at.month()) - i64::from(anchor.month());
    let mut k = months_apart.div_euclid(i64::from(step));
    // The estimate is off by at most one cycle either way (day of month and time of day).
    while boundary(anchor, step, k) > now {
        k -= 1;
    }
    while boundary(anchor, step, k + 1) <= now {
        k += 1;
    }
    Cycle { start_ms: boundary(anchor, step, k), end_ms: boundary(anchor, step, k + 1) }
}

/// The cycle of an account without a plan: the calendar month (UTC) containing `now`.
pub fn calendar_month(now: Millis) -> Cycle {
    cycle_containing(0, Period::Monthly, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn ms(y: i32, mo: u32, d: u32, h: u32) -> Millis {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap().timestamp_millis()
    }

    #[test]
    fn table_of_boundaries() {
        // (anchor, period, now, expected start, expected end)
        let table = [
            // Month-end anchor clamps to February's last day, and comes back to the 31st.
            (ms(2025, 1, 31, 0), Period::Monthly, ms(2025, 2, 15, 0), ms(2025, 1, 31, 0), ms(2025, 2, 28, 0)),
            (ms(2025, 1, 31, 0), Period::Monthly, ms(2025, 3, 1, 0), ms(2025, 2, 28, 0), ms(2025, 3, 31, 0)),
            (ms(2025, 1, 31, 0), Period::Monthly, ms(2025, 4, 30, 0), ms(2025, 4, 30, 0), ms(2025, 5, 31, 0)),
            // Leap year.
            (ms(2024, 1, 31, 0), Period::Monthly, ms(2024, 2, 29, 12), ms(2024, 2, 29, 0), ms(2024, 3, 31, 0)),
            (ms(2024, 2, 29, 0), Period::Annual, ms(2025, 3, 1, 0), ms(2025, 2, 28, 0), ms(2026, 2, 28, 0)),
            (ms(2024, 2, 29, 0), Period::Annual, ms(2028, 2, 29, 0), ms(2028, 2, 29, 0), ms(2029, 2, 28, 0)),
            // Time of day of the anchor is kept; one ms before the boundary is the old cycle.
            (ms(2025, 1, 10, 9), Period::Monthly, ms(2025, 2, 10, 9) - 1, ms(2025, 1, 10, 9), ms(2025, 2, 10, 9)),
            (ms(2025, 1, 10, 9), Period::Monthly, ms(2025, 2, 10, 9), ms(2025, 2, 10, 9), ms(2025, 3, 10, 9)),
            // Quarterly and semi-annual.
            (ms(2025, 1, 1, 0), Period::Quarterly, ms(2025, 11, 5, 0), ms(2025, 10, 1, 0), ms(2026, 1, 1, 0)),
            (ms(2025, 8, 31, 0), Period::Semiannual, ms(2026, 3, 1, 0), ms(2026, 2, 28, 0), ms(2026, 8, 31, 0)),
            // An anchor in the future: cycles extend backwards from it.
            (ms(2026, 6, 15, 0), Period::Monthly, ms(2026, 3, 20, 0), ms(2026, 3, 15, 0), ms(2026, 4, 15, 0)),
        ];
        for (anchor, period, now, start, end) in table {
            let cycle = cycle_containing(anchor, period, now);
            assert_eq!(cycle, Cycle { start_ms: start, end_ms: end }, "anchor {anchor} {period:?} now {now}");
            assert!(cycle.contains(now));
        }
    }

    #[test]
    fn consecutive_cycles_tile_time() {
        let anchor = ms(2023, 3, 31, 7);
        for period in [Period::Monthly, Period::Quarterly, Period::Semiannual, Period::Annual] {
            let mut cycle = cycle_containing(anchor, period, anchor);
            assert_eq!(cycle.start_ms, anchor);
            for _ in 0..40 {
                let next = cycle_containing(anchor, period, cycle.end_ms);
                assert_eq!(next.start_ms, cycle.end_ms, "{period:?}");
                assert!(next.end_ms > next.start_ms);
                cycle = next;
            }
        }
    }

    #[test]
    fn calendar_months() {
        assert_eq!(
            calendar_month(ms(2025, 2, 14, 3)),
            Cycle { start_ms: ms(2025, 2, 1, 0), end_ms: ms(2025, 3, 1, 0) }
        );
    }
}
