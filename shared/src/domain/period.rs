//! Billing periods in the customer's timezone, and proration by seconds.
//!
//! # Periods
//!
//! A subscription bills in periods that start at its [`Anchor`]: an instant and the customer's
//! IANA timezone. Boundaries are computed on the anchor's **local** wall clock, always from the
//! anchor itself (the n-th boundary is `anchor + n × interval`, never the previous boundary plus
//! one interval), so a date that had to be clamped does not drift:
//!
//! - months, quarters (3 months) and years keep the anchor's day of the month and its time of
//!   day; a day the month lacks clamps to the month's last day and the anchor's day returns
//!   afterwards (31 Jan → 28 Feb → 31 Mar → 30 Apr), and 29 Feb becomes 28 Feb in other years;
//! - days and weeks add calendar days and keep the time of day, so a daily period is 23 or 25
//!   hours long across a daylight-saving change.
//!
//! The local time is then turned into an instant with [`local_to_utc`]: a time skipped by a
//! daylight-saving change moves forward to the first instant after the gap (local midnight on
//! 2025-09-07 does not exist in America/Santiago, so the period starts at 01:00), and a time that
//! happens twice takes the earlier instant. The first boundary is the anchor instant itself.
//!
//! Periods are half-open, `[start, end)`, and stored as UTC instants; the end of one period is
//! the start of the next, with neither gap nor overlap.
//!
//! # Proration
//!
//! A change at instant `at` during a period credits the unused part of what was billed and
//! charges the new amount for the rest of the period, both by seconds:
//! `amount × remaining / period`, where `remaining = end − at` clamped to the period. The credit
//! and the charge are rounded separately with the rule of [`super::money`] (half away from zero,
//! in integer arithmetic) and never netted before rounding.

use chrono::{
    DateTime, Datelike, Days, LocalResult, Months, NaiveDateTime, SubsecRound, TimeZone, Utc,
};
use chrono_tz::{GapInfo, Tz};

use super::interval::{Interval, IntervalUnit};
use super::money::mul_ratio_round_half_up;

/// The instant a local date and time in `tz` stands for: a time skipped by a daylight-saving
/// change (a gap) becomes the first instant after the gap, and a time that happens twice (a
/// fold) the earlier of its two instants.
///
/// `None` only beyond the range the timezone data covers.
pub fn local_to_utc(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let instant = match tz.from_local_datetime(&local) {
        LocalResult::Single(instant) => instant,
        LocalResult::Ambiguous(earlier, _) => earlier,
        LocalResult::None => GapInfo::new(&local, &tz)?.end?,
    };
    Some(instant.with_timezone(&Utc))
}

/// Where a subscription's billing periods start from: an instant, to the whole second, and the
/// customer's timezone, whose wall clock the periods follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Anchor {
    instant: DateTime<Utc>,
    tz: Tz,
}

/// One billing period, `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    /// The first instant of the period.
    pub start: DateTime<Utc>,
    /// The first instant after the period: the next period's start.
    pub end: DateTime<Utc>,
}

impl Period {
    /// The length of the period in whole seconds; zero or negative only for a period built
    /// with `end` not after `start`.
    pub fn seconds(self) -> i64 {
        (self.end - self.start).num_seconds()
    }

    /// Whether `at` falls in the period: `start ≤ at < end`.
    pub fn contains(self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }
}

impl Anchor {
    /// An anchor at `instant` in `tz`; a fraction of a second is dropped, since periods and
    /// proration work in whole seconds.
    pub fn new(instant: DateTime<Utc>, tz: Tz) -> Self {
        Self {
            instant: instant.trunc_subsecs(0),
            tz,
        }
    }

    /// The anchor instant: the start of the first period.
    pub fn instant(self) -> DateTime<Utc> {
        self.instant
    }

    /// The customer's timezone.
    pub fn tz(self) -> Tz {
        self.tz
    }

    /// The anchor on the customer's wall clock, from which every boundary is counted.
    pub fn local(self) -> NaiveDateTime {
        self.instant.with_timezone(&self.tz).naive_local()
    }

    /// The start of period `n` (period 0 starts at the anchor): the anchor's local date and
    /// time plus `n` intervals, as the [module documentation](crate::domain::period)
    /// describes.
    ///
    /// `None` when the boundary lies beyond what dates and timezone data can represent.
    pub fn boundary(self, interval: Interval, n: u32) -> Option<DateTime<Utc>> {
        if n == 0 {
            return Some(self.instant);
        }
        local_to_utc(self.tz, add_intervals(self.local(), interval, n)?)
    }

    /// Period `n`: from boundary `n` to boundary `n + 1`.
    pub fn period(self, interval: Interval, n: u32) -> Option<Period> {
        Some(Period {
            start: self.boundary(interval, n)?,
            end: self.boundary(interval, n.checked_add(1)?)?,
        })
    }

    /// The period that contains `at`, with its number.
    ///
    /// `None` when `at` is before the anchor, or when the period lies beyond what dates and
    /// timezone data can represent.
    pub fn period_containing(self, interval: Interval, at: DateTime<Utc>) -> Option<(u32, Period)> {
        // With `e` whole intervals between the anchor's local date and `at`'s, `at` is in
        // period `e - 1` or `e`, or in `e + 1` when its wall clock was set back (a fold) and
        // shows an earlier date than the period's start. Periods start at the anchor, so an
        // instant before the anchor is in none of them.
        let (step, per_unit) = calendar_step(interval.unit());
        let from = self.local();
        let to = at.with_timezone(&self.tz).naive_local();
        let elapsed = match step {
            Step::Days => (to.date() - from.date()).num_days(),
            Step::Months => months_between(from, to),
        };
        let estimate = elapsed / (i64::from(interval.count()) * i64::from(per_unit));
        let first = u32::try_from((estimate - 1).max(0)).ok()?;
        (first..first.saturating_add(3)).find_map(|n| {
            let period = self.period(interval, n)?;
            period.contains(at).then_some((n, period))
        })
    }
}

/// What a calendar step adds to a local date.
enum Step {
    Days,
    Months,
}

/// How a unit is counted on the calendar: one unit is that many days or months.
fn calendar_step(unit: IntervalUnit) -> (Step, u32) {
    match unit {
        IntervalUnit::Day => (Step::Days, 1),
        IntervalUnit::Week => (Step::Days, 7),
        IntervalUnit::Month => (Step::Months, 1),
        IntervalUnit::Quarter => (Step::Months, 3),
        IntervalUnit::Year => (Step::Months, 12),
    }
}

/// `local` plus `n` intervals on the calendar; month arithmetic clamps to the month's last day.
fn add_intervals(local: NaiveDateTime, interval: Interval, n: u32) -> Option<NaiveDateTime> {
    let (step, per_unit) = calendar_step(interval.unit());
    let steps = n.checked_mul(interval.count())?.checked_mul(per_unit)?;
    match step {
        Step::Days => local.checked_add_days(Days::new(u64::from(steps))),
        Step::Months => local.checked_add_months(Months::new(steps)),
    }
}

/// Calendar months from `from`'s month to `to`'s month.
fn months_between(from: NaiveDateTime, to: NaiveDateTime) -> i64 {
    let years = i64::from(to.year()) - i64::from(from.year());
    years * 12 + i64::from(to.month0()) - i64::from(from.month0())
}

/// The two lines a change during a period produces, in minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proration {
    /// The unused part of what was billed for the period, as a negative amount (zero when
    /// nothing is left).
    pub credit: i64,
    /// The new amount for the rest of the period.
    pub charge: i64,
}

/// The credit for `billed` (what the period was actually billed) and the charge for
/// `new_amount` (the new price of a whole period) when the change takes effect at `at`.
///
/// A change at or before the period's start credits all of `billed` and charges all of
/// `new_amount`; a change at or after its end produces two zero lines, as does a period that
/// is not at least one second long. Credit and charge are rounded separately; a credit for
/// `i64::MIN` saturates at `i64::MAX`.
pub fn prorate(billed: i64, new_amount: i64, period: Period, at: DateTime<Utc>) -> Proration {
    let period_secs = period.seconds();
    let remaining_secs = (period.end - at).num_seconds();
    Proration {
        credit: prorated(billed, remaining_secs, period_secs).saturating_neg(),
        charge: prorated(new_amount, remaining_secs, period_secs),
    }
}

/// `amount × remaining_secs / period_secs`, rounded half away from zero (so `-amount` gives
/// exactly the negative), with `remaining_secs` clamped to `0..=period_secs`. Zero when
/// `period_secs` is not positive.
pub fn prorated(amount: i64, remaining_secs: i64, period_secs: i64) -> i64 {
    if period_secs < 1 {
        return 0;
    }
    let remaining = remaining_secs.clamp(0, period_secs);
    // The ratio is at most 1, so the result is never larger than `amount` and always fits.
    mul_ratio_round_half_up(amount, remaining, period_secs).unwrap_or(amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, TimeDelta};
    use proptest::prelude::*;

    const UNITS: [IntervalUnit; 5] = [
        IntervalUnit::Day,
        IntervalUnit::Week,
        IntervalUnit::Month,
        IntervalUnit::Quarter,
        IntervalUnit::Year,
    ];

    /// Timezones with gaps at midnight, half-hour and 45-minute offsets, offsets far from UTC,
    /// southern-hemisphere summers and Ramadan daylight-saving breaks.
    const ZONES: [&str; 15] = [
        "UTC",
        "America/New_York",
        "America/Santiago",
        "Asia/Beirut",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
        "Australia/Lord_Howe",
        "Asia/Kolkata",
        "Europe/London",
        "America/Juneau",
        "Asia/Tokyo",
        "America/St_Johns",
        "Pacific/Chatham",
        "Africa/Casablanca",
        "Europe/Berlin",
    ];

    fn tz(name: &str) -> Tz {
        crate::domain::customer::Timezone::parse(name).unwrap().tz()
    }

    fn utc(raw: &str) -> DateTime<Utc> {
        raw.parse().unwrap()
    }

    fn every(unit: IntervalUnit, count: u32) -> Interval {
        Interval::new(unit, count).unwrap()
    }

    fn monthly() -> Interval {
        every(IntervalUnit::Month, 1)
    }

    /// An anchor at a local date and time (`2025-08-07T00:00:00`) in the named timezone.
    fn anchor_at_local(zone: &str, local: &str) -> Anchor {
        let tz = tz(zone);
        Anchor::new(local_to_utc(tz, local.parse().unwrap()).unwrap(), tz)
    }

    /// Boundaries 1..=n in UTC, as RFC 3339 text.
    fn boundaries(anchor: Anchor, interval: Interval, n: u32) -> Vec<String> {
        (1..=n)
            .map(|i| anchor.boundary(interval, i).unwrap().to_rfc3339())
            .collect()
    }

    /// Boundaries 1..=n on the anchor's wall clock, with the offset in effect.
    fn local_boundaries(anchor: Anchor, interval: Interval, n: u32) -> Vec<String> {
        (1..=n)
            .map(|i| on_wall_clock(anchor.boundary(interval, i).unwrap(), anchor.tz()))
            .collect()
    }

    fn on_wall_clock(instant: DateTime<Utc>, tz: Tz) -> String {
        instant
            .with_timezone(&tz)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string()
    }

    fn local(instant: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
        instant.with_timezone(&tz).naive_local()
    }

    fn days_in_month(year: i32, month: u32) -> u32 {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        match month {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        }
    }

    /// Boundary `n` on the wall clock, computed by hand: month arithmetic on a month index with
    /// the day clamped, day arithmetic on day numbers.
    fn expected_local(anchor: NaiveDateTime, interval: Interval, n: u32) -> NaiveDateTime {
        let units = i64::from(n) * i64::from(interval.count());
        let months = match interval.unit() {
            IntervalUnit::Day | IntervalUnit::Week => {
                let days = if interval.unit() == IntervalUnit::Week {
                    units * 7
                } else {
                    units
                };
                let day_number = i64::from(anchor.date().num_days_from_ce()) + days;
                let date = NaiveDate::from_num_days_from_ce_opt(i32::try_from(day_number).unwrap())
                    .unwrap();
                return date.and_time(anchor.time());
            }
            IntervalUnit::Month => units,
            IntervalUnit::Quarter => units * 3,
            IntervalUnit::Year => units * 12,
        };
        let index = i64::from(anchor.year()) * 12 + i64::from(anchor.month0()) + months;
        let year = i32::try_from(index.div_euclid(12)).unwrap();
        let month = u32::try_from(index.rem_euclid(12)).unwrap() + 1;
        let day = anchor.day().min(days_in_month(year, month));
        NaiveDate::from_ymd_opt(year, month, day)
            .unwrap()
            .and_time(anchor.time())
    }

    // --- Timezone names -------------------------------------------------------------------

    #[test]
    fn iana_timezone_names_parse() {
        assert_eq!(tz("America/New_York"), chrono_tz::America::New_York);
        assert_eq!(tz("UTC"), chrono_tz::UTC);
        assert_eq!(tz("Pacific/Kiritimati"), chrono_tz::Pacific::Kiritimati);
        assert_eq!(tz(" Asia/Kolkata "), chrono_tz::Asia::Kolkata);
        for zone in ZONES {
            assert_eq!(tz(zone).name(), zone);
        }
    }

    // --- Local times that do not exist or exist twice ------------------------------------

    #[test]
    fn a_local_time_in_a_gap_moves_to_the_first_instant_after_it() {
        let at = |zone: &str, local: &str| {
            let tz = tz(zone);
            on_wall_clock(local_to_utc(tz, local.parse().unwrap()).unwrap(), tz)
        };
        // New York skips 02:00–03:00 on 2025-03-09: 02:30 becomes 03:00, not 03:30.
        assert_eq!(
            at("America/New_York", "2025-03-09T02:30:00"),
            "2025-03-09 03:00:00 -04:00"
        );
        assert_eq!(
            at("America/New_York", "2025-03-09T01:59:59"),
            "2025-03-09 01:59:59 -05:00"
        );
        // Local midnight does not exist on these days.
        assert_eq!(
            at("America/Santiago", "2025-09-07T00:00:00"),
            "2025-09-07 01:00:00 -03:00"
        );
        assert_eq!(
            at("America/Havana", "2025-03-09T00:00:00"),
            "2025-03-09 01:00:00 -04:00"
        );
        assert_eq!(
            at("Asia/Beirut", "2025-03-30T00:30:00"),
            "2025-03-30 01:00:00 +03:00"
        );
        // Samoa skipped all of 2011-12-30.
        assert_eq!(
            at("Pacific/Apia", "2011-12-30T10:00:00"),
            "2011-12-31 00:00:00 +14:00"
        );
    }

    #[test]
    fn a_local_time_in_a_fold_takes_the_earlier_instant() {
        let tz = tz("America/New_York");
        let instant = local_to_utc(tz, "2025-11-02T01:30:00".parse().unwrap()).unwrap();
        assert_eq!(instant, utc("2025-11-02T05:30:00Z"));
        let instant = local_to_utc(tz, "2025-11-02T02:00:00".parse().unwrap()).unwrap();
        assert_eq!(instant, utc("2025-11-02T07:00:00Z"));
    }

    // --- Anchors --------------------------------------------------------------------------

    #[test]
    fn an_anchor_keeps_whole_seconds_and_shows_its_local_time() {
        let anchor = Anchor::new(utc("2025-01-31T10:00:07.999Z"), tz("Asia/Kolkata"));
        assert_eq!(anchor.instant(), utc("2025-01-31T10:00:07Z"));
        assert_eq!(anchor.tz(), chrono_tz::Asia::Kolkata);
        assert_eq!(
            anchor.local(),
            "2025-01-31T15:30:07".parse::<NaiveDateTime>().unwrap()
        );
        assert_eq!(
            anchor.boundary(monthly(), 0),
            Some(utc("2025-01-31T10:00:07Z"))
        );
    }

    // --- Month ends and leap days ---------------------------------------------------------

    #[test]
    fn an_anchor_on_the_31st_clamps_to_short_months_and_comes_back() {
        let anchor = Anchor::new(utc("2025-01-31T10:00:00Z"), chrono_tz::UTC);
        assert_eq!(
            boundaries(anchor, monthly(), 6),
            [
                "2025-02-28T10:00:00+00:00",
                "2025-03-31T10:00:00+00:00",
                "2025-04-30T10:00:00+00:00",
                "2025-05-31T10:00:00+00:00",
                "2025-06-30T10:00:00+00:00",
                "2025-07-31T10:00:00+00:00",
            ]
        );
    }

    #[test]
    fn an_anchor_on_the_30th_lands_on_the_29th_of_a_leap_february() {
        let anchor = Anchor::new(utc("2024-01-30T00:00:00Z"), chrono_tz::UTC);
        assert_eq!(
            boundaries(anchor, monthly(), 3),
            [
                "2024-02-29T00:00:00+00:00",
                "2024-03-30T00:00:00+00:00",
                "2024-04-30T00:00:00+00:00",
            ]
        );
    }

    #[test]
    fn a_yearly_anchor_on_the_29th_of_february_returns_in_leap_years() {
        let anchor = Anchor::new(utc("2024-02-29T12:00:00Z"), chrono_tz::UTC);
        assert_eq!(
            boundaries(anchor, every(IntervalUnit::Year, 1), 8),
            [
                "2025-02-28T12:00:00+00:00",
                "2026-02-28T12:00:00+00:00",
                "2027-02-28T12:00:00+00:00",
                "2028-02-29T12:00:00+00:00",
                "2029-02-28T12:00:00+00:00",
                "2030-02-28T12:00:00+00:00",
                "2031-02-28T12:00:00+00:00",
                "2032-02-29T12:00:00+00:00",
            ]
        );
    }

    #[test]
    fn anchors_on_the_29th_30th_and_31st_bill_every_month_for_two_years() {
        for day in [29, 30, 31] {
            let anchor = Anchor::new(utc(&format!("2023-01-{day}T23:59:59Z")), chrono_tz::UTC);
            for n in 0..=24 {
                let boundary = anchor.boundary(monthly(), n).unwrap();
                let year = 2023 + i32::try_from(n / 12).unwrap();
                let month = n % 12 + 1;
                let expected =
                    NaiveDate::from_ymd_opt(year, month, day.min(days_in_month(year, month)))
                        .unwrap()
                        .and_hms_opt(23, 59, 59)
                        .unwrap();
                assert_eq!(boundary.naive_utc(), expected, "day {day}, n {n}");
            }
        }
    }

    #[test]
    fn quarters_are_three_months_from_the_anchor() {
        let anchor = Anchor::new(utc("2024-11-30T08:00:00Z"), chrono_tz::UTC);
        assert_eq!(
            boundaries(anchor, every(IntervalUnit::Quarter, 1), 4),
            [
                "2025-02-28T08:00:00+00:00",
                "2025-05-30T08:00:00+00:00",
                "2025-08-30T08:00:00+00:00",
                "2025-11-30T08:00:00+00:00",
            ]
        );
        assert_eq!(
            boundaries(anchor, every(IntervalUnit::Quarter, 2), 2),
            ["2025-05-30T08:00:00+00:00", "2025-11-30T08:00:00+00:00"]
        );
        assert_eq!(
            boundaries(anchor, every(IntervalUnit::Month, 3), 1),
            ["2025-02-28T08:00:00+00:00"]
        );
    }

    #[test]
    fn days_and_weeks_count_calendar_days() {
        let anchor = Anchor::new(utc("2025-01-01T06:00:00Z"), chrono_tz::UTC);
        assert_eq!(
            boundaries(anchor, every(IntervalUnit::Day, 3), 3),
            [
                "2025-01-04T06:00:00+00:00",
                "2025-01-07T06:00:00+00:00",
                "2025-01-10T06:00:00+00:00",
            ]
        );
        assert_eq!(
            anchor.boundary(every(IntervalUnit::Day, 1), 365),
            Some(utc("2026-01-01T06:00:00Z"))
        );
        assert_eq!(
            boundaries(anchor, every(IntervalUnit::Week, 2), 3),
            [
                "2025-01-15T06:00:00+00:00",
                "2025-01-29T06:00:00+00:00",
                "2025-02-12T06:00:00+00:00",
            ]
        );
        assert_eq!(
            anchor.boundary(every(IntervalUnit::Week, 1), 52),
            Some(utc("2025-12-31T06:00:00Z"))
        );
    }

    #[test]
    fn every_unit_counts_its_intervals_from_the_anchor() {
        let anchor = Anchor::new(utc("2020-02-29T00:00:00Z"), chrono_tz::UTC);
        let cases = [
            (IntervalUnit::Day, 2, 5, "2020-03-10T00:00:00Z"),
            (IntervalUnit::Week, 3, 2, "2020-04-11T00:00:00Z"),
            (IntervalUnit::Month, 5, 3, "2021-05-29T00:00:00Z"),
            (IntervalUnit::Quarter, 3, 2, "2021-08-29T00:00:00Z"),
            (IntervalUnit::Year, 1, 4, "2024-02-29T00:00:00Z"),
            (IntervalUnit::Year, 1, 3, "2023-02-28T00:00:00Z"),
        ];
        for (unit, count, n, expected) in cases {
            assert_eq!(
                anchor.boundary(every(unit, count), n),
                Some(utc(expected)),
                "{count} {unit} × {n}"
            );
        }
    }

    // --- Timezones ------------------------------------------------------------------------

    #[test]
    fn santiago_periods_start_at_one_when_midnight_is_skipped() {
        let anchor = anchor_at_local("America/Santiago", "2025-08-07T00:00:00");
        assert_eq!(anchor.instant(), utc("2025-08-07T04:00:00Z"));
        assert_eq!(
            local_boundaries(anchor, monthly(), 3),
            [
                "2025-09-07 01:00:00 -03:00",
                "2025-10-07 00:00:00 -03:00",
                "2025-11-07 00:00:00 -03:00",
            ]
        );
        assert_eq!(
            anchor.boundary(monthly(), 1),
            Some(utc("2025-09-07T04:00:00Z"))
        );
    }

    #[test]
    fn beirut_periods_start_at_one_when_midnight_is_skipped() {
        let anchor = anchor_at_local("Asia/Beirut", "2025-01-30T00:00:00");
        assert_eq!(
            local_boundaries(anchor, monthly(), 3),
            [
                "2025-02-28 00:00:00 +02:00",
                "2025-03-30 01:00:00 +03:00",
                "2025-04-30 00:00:00 +03:00",
            ]
        );
        assert_eq!(
            anchor.boundary(monthly(), 2),
            Some(utc("2025-03-29T22:00:00Z"))
        );
    }

    #[test]
    fn a_skipped_half_hour_moves_the_boundary_to_the_end_of_the_gap() {
        // Lord Howe Island moves from +10:30 to +11:00 at 02:00 on 2025-10-05.
        let anchor = anchor_at_local("Australia/Lord_Howe", "2025-09-05T02:15:00");
        assert_eq!(
            local_boundaries(anchor, monthly(), 2),
            ["2025-10-05 02:30:00 +11:00", "2025-11-05 02:15:00 +11:00"]
        );
        // In New York 02:30 on 2025-03-09 becomes 03:00, and 02:30 comes back in April.
        let anchor = anchor_at_local("America/New_York", "2025-02-09T02:30:00");
        assert_eq!(
            boundaries(anchor, monthly(), 2),
            ["2025-03-09T07:00:00+00:00", "2025-04-09T06:30:00+00:00"]
        );
    }

    #[test]
    fn a_skipped_day_shortens_the_periods_around_it() {
        let anchor = anchor_at_local("Pacific/Apia", "2011-12-29T10:00:00");
        let daily = every(IntervalUnit::Day, 1);
        assert_eq!(
            local_boundaries(anchor, daily, 2),
            ["2011-12-31 00:00:00 +14:00", "2011-12-31 10:00:00 +14:00"]
        );
        assert_eq!(anchor.period(daily, 0).unwrap().seconds(), 14 * 3600);
        assert_eq!(anchor.period(daily, 1).unwrap().seconds(), 10 * 3600);
    }

    #[test]
    fn a_boundary_in_a_fold_takes_the_first_of_the_repeated_hour() {
        let anchor = anchor_at_local("America/New_York", "2025-10-02T01:30:00");
        assert_eq!(
            local_boundaries(anchor, monthly(), 2),
            ["2025-11-02 01:30:00 -04:00", "2025-12-02 01:30:00 -05:00"]
        );
    }

    #[test]
    fn an_anchor_in_the_second_pass_of_a_fold_starts_the_first_period_itself() {
        let tz = tz("America/New_York");
        let anchor = Anchor::new(utc("2025-11-02T06:30:00Z"), tz);
        assert_eq!(
            on_wall_clock(anchor.instant(), tz),
            "2025-11-02 01:30:00 -05:00"
        );
        let daily = every(IntervalUnit::Day, 1);
        assert_eq!(
            anchor.period(daily, 0),
            Some(Period {
                start: utc("2025-11-02T06:30:00Z"),
                end: utc("2025-11-03T06:30:00Z"),
            })
        );
        assert_eq!(
            anchor.period_containing(daily, utc("2025-11-02T06:30:00Z")),
            Some((0, anchor.period(daily, 0).unwrap()))
        );
        assert_eq!(
            anchor.period_containing(daily, utc("2025-11-02T05:30:00Z")),
            None
        );
    }

    #[test]
    fn a_day_that_happens_twice_makes_one_period_two_days_long() {
        // Juneau's clocks went back a whole day when Alaska changed hands in 1867: local times
        // from 1867-10-18 15:33:32 to 1867-10-19 15:33:32 happened twice.
        let anchor = anchor_at_local("America/Juneau", "1867-10-17T10:00:00");
        let daily = every(IntervalUnit::Day, 1);
        assert_eq!(
            boundaries(anchor, daily, 3),
            [
                "1867-10-17T18:57:41+00:00",
                "1867-10-18T18:57:41+00:00",
                "1867-10-20T18:57:41+00:00",
            ]
        );
        assert_eq!(anchor.period(daily, 2).unwrap().seconds(), 2 * 86_400);
        // 20:00 on the second 18 October is in the period that started at 10:00 on the first
        // 19 October: its local date is behind the period's.
        let at = utc("1867-10-19T04:57:41Z");
        assert_eq!(
            local(at, anchor.tz()),
            "1867-10-18T20:00:00".parse::<NaiveDateTime>().unwrap()
        );
        assert_eq!(
            anchor.period_containing(daily, at),
            Some((2, anchor.period(daily, 2).unwrap()))
        );
    }

    #[test]
    fn kiritimati_and_pago_pago_keep_their_own_local_dates_for_the_same_instant() {
        let instant = utc("2025-01-31T10:30:00Z");
        let east = Anchor::new(instant, tz("Pacific/Kiritimati"));
        let west = Anchor::new(instant, tz("Pacific/Pago_Pago"));
        assert_eq!(
            local_boundaries(east, monthly(), 2),
            ["2025-03-01 00:30:00 +14:00", "2025-04-01 00:30:00 +14:00"]
        );
        assert_eq!(
            local_boundaries(west, monthly(), 2),
            ["2025-02-28 23:30:00 -11:00", "2025-03-30 23:30:00 -11:00"]
        );
        assert_eq!(
            boundaries(east, monthly(), 2),
            ["2025-02-28T10:30:00+00:00", "2025-03-31T10:30:00+00:00"]
        );
        assert_eq!(
            boundaries(west, monthly(), 2),
            ["2025-03-01T10:30:00+00:00", "2025-03-31T10:30:00+00:00"]
        );
        // On the same instant one customer is in its second period, the other in its first.
        let at = utc("2025-02-28T12:00:00Z");
        assert_eq!(
            east.period_containing(monthly(), at).map(|(n, _)| n),
            Some(1)
        );
        assert_eq!(
            west.period_containing(monthly(), at).map(|(n, _)| n),
            Some(0)
        );
    }

    #[test]
    fn new_york_keeps_nine_in_the_morning_across_daylight_saving_changes() {
        let anchor = anchor_at_local("America/New_York", "2025-01-15T09:00:00");
        let local = local_boundaries(anchor, monthly(), 12);
        assert!(local.iter().all(|b| b.contains(" 09:00:00 ")), "{local:?}");
        assert_eq!(
            boundaries(anchor, monthly(), 12),
            [
                "2025-02-15T14:00:00+00:00",
                "2025-03-15T13:00:00+00:00",
                "2025-04-15T13:00:00+00:00",
                "2025-05-15T13:00:00+00:00",
                "2025-06-15T13:00:00+00:00",
                "2025-07-15T13:00:00+00:00",
                "2025-08-15T13:00:00+00:00",
                "2025-09-15T13:00:00+00:00",
                "2025-10-15T13:00:00+00:00",
                "2025-11-15T14:00:00+00:00",
                "2025-12-15T14:00:00+00:00",
                "2026-01-15T14:00:00+00:00",
            ]
        );
    }

    #[test]
    fn days_and_weeks_keep_the_wall_clock_so_their_length_changes_with_daylight_saving() {
        let week = every(IntervalUnit::Week, 1);
        let anchor = anchor_at_local("America/New_York", "2025-03-03T09:00:00");
        let period = anchor.period(week, 0).unwrap();
        assert_eq!(period.end, utc("2025-03-10T13:00:00Z"));
        assert_eq!(period.seconds(), 7 * 86_400 - 3_600);

        let day = every(IntervalUnit::Day, 1);
        let anchor = anchor_at_local("Europe/London", "2025-03-29T12:00:00");
        assert_eq!(anchor.period(day, 0).unwrap().seconds(), 23 * 3_600);
        assert_eq!(anchor.period(day, 1).unwrap().seconds(), 24 * 3_600);
        let anchor = anchor_at_local("Europe/London", "2025-10-25T12:00:00");
        assert_eq!(anchor.period(day, 0).unwrap().seconds(), 25 * 3_600);
        assert_eq!(anchor.boundary(day, 1), Some(utc("2025-10-26T12:00:00Z")));
    }

    // --- Periods --------------------------------------------------------------------------

    #[test]
    fn a_period_holds_its_start_but_not_its_end() {
        let period = Period {
            start: utc("2025-03-01T00:00:00Z"),
            end: utc("2025-03-31T00:00:00Z"),
        };
        assert_eq!(period.seconds(), 30 * 86_400);
        assert!(period.contains(period.start));
        assert!(period.contains(utc("2025-03-30T23:59:59Z")));
        assert!(!period.contains(period.end));
        assert!(!period.contains(utc("2025-02-28T23:59:59Z")));
    }

    #[test]
    fn period_containing_switches_exactly_at_each_boundary() {
        let anchor = Anchor::new(utc("2025-01-31T10:00:00Z"), chrono_tz::UTC);
        let second = TimeDelta::seconds(1);
        let containing = |at: &str| anchor.period_containing(monthly(), utc(at));
        assert_eq!(containing("2025-01-31T09:59:59Z"), None);
        assert_eq!(
            containing("2025-01-31T10:00:00Z"),
            Some((
                0,
                Period {
                    start: utc("2025-01-31T10:00:00Z"),
                    end: utc("2025-02-28T10:00:00Z"),
                }
            ))
        );
        assert_eq!(containing("2025-02-28T09:59:59Z").map(|(n, _)| n), Some(0));
        assert_eq!(containing("2025-02-28T10:00:00Z").map(|(n, _)| n), Some(1));
        assert_eq!(
            containing("2025-03-15T00:00:00Z"),
            Some((
                1,
                Period {
                    start: utc("2025-02-28T10:00:00Z"),
                    end: utc("2025-03-31T10:00:00Z"),
                }
            ))
        );
        // The first instant and the last second of the second year's periods.
        for n in 12..24 {
            let period = anchor.period(monthly(), n).unwrap();
            assert_eq!(
                anchor.period_containing(monthly(), period.start),
                Some((n, period))
            );
            assert_eq!(
                anchor.period_containing(monthly(), period.end - second),
                Some((n, period))
            );
        }
    }

    #[test]
    fn period_containing_finds_every_period_of_every_unit() {
        let anchor = anchor_at_local("America/New_York", "2024-01-31T23:30:00");
        let second = TimeDelta::seconds(1);
        for (unit, count, periods) in [
            (IntervalUnit::Day, 1, 800),
            (IntervalUnit::Day, 3, 300),
            (IntervalUnit::Week, 1, 120),
            (IntervalUnit::Week, 2, 60),
            (IntervalUnit::Month, 1, 40),
            (IntervalUnit::Month, 2, 30),
            (IntervalUnit::Quarter, 1, 30),
            (IntervalUnit::Quarter, 2, 20),
            (IntervalUnit::Year, 1, 20),
        ] {
            let interval = every(unit, count);
            for n in 0..periods {
                let period = anchor.period(interval, n).unwrap();
                for at in [period.start, period.end - second] {
                    assert_eq!(
                        anchor.period_containing(interval, at),
                        Some((n, period)),
                        "{interval} period {n} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn boundaries_beyond_the_calendar_are_none_not_a_panic() {
        let anchor = Anchor::new(utc("2025-01-31T10:00:00Z"), chrono_tz::UTC);
        for unit in UNITS {
            let interval = every(unit, unit.max_count());
            assert_eq!(anchor.boundary(interval, u32::MAX), None, "{interval}");
        }
        assert_eq!(anchor.period(monthly(), u32::MAX), None);
        assert!(anchor.period(monthly(), u32::MAX - 1).is_none());
        assert_eq!(
            anchor.period_containing(monthly(), DateTime::<Utc>::MAX_UTC),
            None
        );
    }

    // --- Proration ------------------------------------------------------------------------

    fn thirty_days() -> Period {
        Period {
            start: utc("2025-04-01T00:00:00Z"),
            end: utc("2025-05-01T00:00:00Z"),
        }
    }

    #[test]
    fn a_change_ten_days_into_thirty_prorates_two_thirds() {
        assert_eq!(
            prorate(3000, 4500, thirty_days(), utc("2025-04-11T00:00:00Z")),
            Proration {
                credit: -2000,
                charge: 3000
            }
        );
        // 7 of 30 days left: 1000 × 7 / 30 = 233.33, 2999 × 7 / 30 = 699.77.
        assert_eq!(
            prorate(1000, 2999, thirty_days(), utc("2025-04-24T00:00:00Z")),
            Proration {
                credit: -233,
                charge: 700
            }
        );
    }

    #[test]
    fn a_change_at_the_start_prorates_the_whole_period_and_at_the_end_nothing() {
        let period = thirty_days();
        let whole = Proration {
            credit: -3000,
            charge: 4500,
        };
        let nothing = Proration {
            credit: 0,
            charge: 0,
        };
        assert_eq!(prorate(3000, 4500, period, period.start), whole);
        assert_eq!(
            prorate(3000, 4500, period, utc("2025-03-01T00:00:00Z")),
            whole
        );
        assert_eq!(prorate(3000, 4500, period, period.end), nothing);
        assert_eq!(
            prorate(3000, 4500, period, utc("2025-06-01T00:00:00Z")),
            nothing
        );
        // The last second of the period is still worth something.
        let last_second = period.end - TimeDelta::seconds(1);
        assert_eq!(
            prorate(2_592_000, 2_592_000, period, last_second),
            Proration {
                credit: -1,
                charge: 1
            }
        );
    }

    #[test]
    fn proration_rounds_each_line_half_away_from_zero_on_its_own() {
        let period = Period {
            start: utc("2025-04-01T00:00:00Z"),
            end: utc("2025-04-01T00:00:02Z"),
        };
        let halfway = utc("2025-04-01T00:00:01Z");
        assert_eq!(
            prorate(1, 1, period, halfway),
            Proration {
                credit: -1,
                charge: 1
            }
        );
        // Netted first, 4 − 3 = 1 would give round(0.5) = 1; each line alone gives −2 and 2.
        assert_eq!(
            prorate(3, 4, period, halfway),
            Proration {
                credit: -2,
                charge: 2
            }
        );
        assert_eq!(
            prorate(-1, -3, period, halfway),
            Proration {
                credit: 1,
                charge: -2
            }
        );
    }

    #[test]
    fn prorated_rounds_half_away_from_zero_for_both_signs() {
        assert_eq!(prorated(1, 1, 2), 1);
        assert_eq!(prorated(-1, 1, 2), -1);
        assert_eq!(prorated(3, 1, 2), 2);
        assert_eq!(prorated(-3, 1, 2), -2);
        assert_eq!(prorated(1, 1, 3), 0);
        assert_eq!(prorated(2, 1, 3), 1);
        assert_eq!(prorated(-2, 1, 3), -1);
        assert_eq!(prorated(100, 1, 1), 100);
        assert_eq!(prorated(i64::MAX, 1, 2), 4_611_686_018_427_387_904);
        assert_eq!(prorated(i64::MIN, 1, 2), -4_611_686_018_427_387_904);
    }

    #[test]
    fn prorated_clamps_the_remaining_time_to_the_period() {
        assert_eq!(prorated(100, 20, 10), 100);
        assert_eq!(prorated(100, 10, 10), 100);
        assert_eq!(prorated(100, 0, 10), 0);
        assert_eq!(prorated(100, -5, 10), 0);
        assert_eq!(prorated(i64::MAX, i64::MAX, 1), i64::MAX);
    }

    #[test]
    fn an_empty_or_reversed_period_prorates_to_nothing() {
        assert_eq!(prorated(100, 5, 0), 0);
        assert_eq!(prorated(100, 0, 0), 0);
        assert_eq!(prorated(100, -5, -10), 0);
        assert_eq!(prorated(100, 5, i64::MIN), 0);
        let empty = Period {
            start: utc("2025-04-01T00:00:00Z"),
            end: utc("2025-04-01T00:00:00Z"),
        };
        let reversed = Period {
            start: empty.start,
            end: utc("2025-03-01T00:00:00Z"),
        };
        for period in [empty, reversed] {
            assert_eq!(
                prorate(3000, 4500, period, utc("2025-03-15T00:00:00Z")),
                Proration {
                    credit: 0,
                    charge: 0
                }
            );
        }
    }

    #[test]
    fn a_quarter_is_prorated_over_its_whole_length() {
        // 91 days from 1 April; a change on 20 May leaves 42 of them.
        let anchor = Anchor::new(utc("2025-01-01T00:00:00Z"), chrono_tz::UTC);
        let quarter = every(IntervalUnit::Quarter, 1);
        let (n, period) = anchor
            .period_containing(quarter, utc("2025-05-20T00:00:00Z"))
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(period.seconds(), 91 * 86_400);
        assert_eq!(
            prorate(9100, 18_200, period, utc("2025-05-20T00:00:00Z")),
            Proration {
                credit: -4200,
                charge: 8400
            }
        );
    }

    #[test]
    fn a_credit_for_the_smallest_amount_saturates() {
        let period = thirty_days();
        assert_eq!(
            prorate(i64::MIN, i64::MAX, period, period.start),
            Proration {
                credit: i64::MAX,
                charge: i64::MAX
            }
        );
    }

    // --- Properties -----------------------------------------------------------------------

    fn interval_strategy() -> impl Strategy<Value = Interval> {
        (0..UNITS.len())
            .prop_flat_map(|index| {
                let unit = UNITS[index];
                (Just(unit), 1..=unit.max_count())
            })
            .prop_map(|(unit, count)| Interval::new(unit, count).unwrap())
    }

    /// Anchors on any local date (29th to 31st included) and time from 2000 to 2100 in one of
    /// the tricky timezones.
    fn anchor_strategy() -> impl Strategy<Value = Anchor> {
        (
            2000i32..=2100,
            1u32..=12,
            1u32..=31,
            0u32..24,
            0u32..60,
            0u32..60,
            0..ZONES.len(),
        )
            .prop_map(|(year, month, day, hour, minute, second, zone)| {
                let tz = tz(ZONES[zone]);
                let local =
                    NaiveDate::from_ymd_opt(year, month, day.min(days_in_month(year, month)))
                        .unwrap()
                        .and_hms_opt(hour, minute, second)
                        .unwrap();
                Anchor::new(local_to_utc(tz, local).unwrap(), tz)
            })
    }

    proptest! {
        #[test]
        fn periods_are_contiguous_and_boundaries_strictly_increase(
            anchor in anchor_strategy(),
            interval in interval_strategy(),
            first in 0u32..100,
        ) {
            let mut previous: Option<Period> = None;
            for n in first..first + 30 {
                let period = anchor.period(interval, n).unwrap();
                prop_assert!(period.start < period.end, "period {} {:?}", n, period);
                prop_assert_eq!(Some(period.start), anchor.boundary(interval, n));
                if let Some(previous) = previous {
                    prop_assert_eq!(previous.end, period.start);
                }
                previous = Some(period);
            }
        }

        #[test]
        fn monthly_periods_start_in_consecutive_local_months(anchor in anchor_strategy()) {
            let month_index = |n: u32| {
                let start = local(anchor.boundary(monthly(), n).unwrap(), anchor.tz());
                i64::from(start.year()) * 12 + i64::from(start.month0())
            };
            let first = month_index(0);
            for n in 1..=24 {
                prop_assert_eq!(month_index(n), first + i64::from(n), "period {}", n);
            }
        }

        #[test]
        fn boundaries_fall_on_the_clamped_anchor_date_unless_a_gap_moves_them(
            anchor in anchor_strategy(),
            interval in interval_strategy(),
            n in 0u32..=40,
        ) {
            let tz = anchor.tz();
            let boundary = anchor.boundary(interval, n).unwrap();
            if n == 0 {
                prop_assert_eq!(boundary, anchor.instant());
                return Ok(());
            }
            let expected = expected_local(anchor.local(), interval, n);
            let second = TimeDelta::seconds(1);
            match tz.from_local_datetime(&expected) {
                LocalResult::Single(instant) => {
                    prop_assert_eq!(boundary, instant.with_timezone(&Utc));
                }
                LocalResult::Ambiguous(earlier, _) => {
                    prop_assert_eq!(boundary, earlier.with_timezone(&Utc));
                }
                LocalResult::None => {
                    // The first instant whose wall clock is past the skipped time.
                    prop_assert!(local(boundary, tz) > expected);
                    prop_assert!(local(boundary - second, tz) < expected);
                }
            }
        }

        #[test]
        fn period_containing_holds_the_instant(
            anchor in anchor_strategy(),
            interval in interval_strategy(),
            offset in 0i64..10 * 366 * 86_400,
        ) {
            let at = anchor.instant() + TimeDelta::seconds(offset);
            let (n, period) = anchor.period_containing(interval, at).unwrap();
            prop_assert!(period.contains(at), "{:?} does not hold {}", period, at);
            prop_assert_eq!(Some(period), anchor.period(interval, n));
            let before = anchor.instant() - TimeDelta::seconds(offset + 1);
            prop_assert_eq!(anchor.period_containing(interval, before), None);
        }

        #[test]
        fn proration_stays_within_the_amounts_and_hits_them_at_the_ends(
            anchor in anchor_strategy(),
            interval in interval_strategy(),
            n in 0u32..24,
            billed in 0i64..1_000_000_000_000,
            new_amount in 0i64..1_000_000_000_000,
            permille in -500i64..1500,
        ) {
            let period = anchor.period(interval, n).unwrap();
            let length = period.seconds();
            // Where the change happens, from half a period before to half a period after.
            let at = period.start + TimeDelta::seconds(length * permille / 1000);
            let p = prorate(billed, new_amount, period, at);
            prop_assert!(-billed <= p.credit && p.credit <= 0, "{:?}", p);
            prop_assert!(0 <= p.charge && p.charge <= new_amount, "{:?}", p);
            prop_assert!(-billed <= p.credit + p.charge && p.credit + p.charge <= new_amount);
            // Within half a unit of the exact share of each amount.
            let remaining = i128::from((period.end - at).num_seconds().clamp(0, length));
            let length = i128::from(length);
            let error = |rounded: i64, amount: i64| {
                (i128::from(rounded) * length - i128::from(amount) * remaining).abs()
            };
            prop_assert!(2 * error(p.charge, new_amount) <= length);
            prop_assert!(2 * error(-p.credit, billed) <= length);
            if at <= period.start {
                prop_assert_eq!(p, Proration { credit: -billed, charge: new_amount });
            }
            if at >= period.end {
                prop_assert_eq!(p, Proration { credit: 0, charge: 0 });
            }
            // An unchanged price nets to exactly nothing.
            let same = prorate(billed, billed, period, at);
            prop_assert_eq!(same.credit, -same.charge);
            // A later change never charges more.
            let later = prorate(billed, new_amount, period, at + TimeDelta::seconds(1));
            prop_assert!(later.charge <= p.charge && later.credit >= p.credit);
        }

        #[test]
        fn prorated_is_symmetric_for_negative_amounts(
            amount in -(1i64 << 62)..(1i64 << 62),
            remaining in -100i64..40_000_000,
            period in 1i64..40_000_000,
        ) {
            let share = prorated(amount, remaining, period);
            prop_assert_eq!(prorated(-amount, remaining, period), -share);
            prop_assert!(share.abs() <= amount.abs());
        }
    }
}
