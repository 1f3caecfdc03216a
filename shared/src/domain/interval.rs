//! Billing intervals: how often a recurring price charges, such as every month or every
//! 2 weeks. An interval spans at most one year.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ValidationError;

/// The unit a billing interval counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntervalUnit {
    /// One calendar day.
    Day,
    /// Seven days.
    Week,
    /// One calendar month.
    Month,
    /// Three calendar months.
    Quarter,
    /// Twelve calendar months.
    Year,
}

impl IntervalUnit {
    /// Parses a unit name in any case; the adjectives `daily`, `weekly`, `monthly`,
    /// `quarterly`, `yearly` and `annual` are accepted too.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "day" | "daily" => Ok(Self::Day),
            "week" | "weekly" => Ok(Self::Week),
            "month" | "monthly" => Ok(Self::Month),
            "quarter" | "quarterly" => Ok(Self::Quarter),
            "year" | "yearly" | "annual" => Ok(Self::Year),
            _ => Err(ValidationError(
                "interval must be one of day, week, month, quarter, year".into(),
            )),
        }
    }

    /// The canonical singular name, such as `month`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Quarter => "quarter",
            Self::Year => "year",
        }
    }

    /// The largest count of this unit that still fits in one year.
    pub fn max_count(self) -> u32 {
        match self {
            Self::Day => 365,
            Self::Week => 52,
            Self::Month => 12,
            Self::Quarter => 4,
            Self::Year => 1,
        }
    }
}

impl fmt::Display for IntervalUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for IntervalUnit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for IntervalUnit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        IntervalUnit::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// A billing interval: `count` units, at least one and at most one year in total
/// (365 days, 52 weeks, 12 months, 4 quarters or 1 year).
///
/// Serialized as `{"unit": "month", "count": 3}`; deserializing applies the same limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "IntervalIn")]
pub struct Interval {
    unit: IntervalUnit,
    count: u32,
}

/// The unchecked wire form of an [`Interval`].
#[derive(Deserialize)]
struct IntervalIn {
    unit: IntervalUnit,
    count: u32,
}

impl TryFrom<IntervalIn> for Interval {
    type Error = ValidationError;

    fn try_from(raw: IntervalIn) -> Result<Self, Self::Error> {
        Self::new(raw.unit, raw.count)
    }
}

impl Interval {
    /// An interval of `count` units; fails when `count` is zero or the total exceeds a year.
    pub fn new(unit: IntervalUnit, count: u32) -> Result<Self, ValidationError> {
        if count == 0 {
            return Err(ValidationError("interval_count must be at least 1".into()));
        }
        let max = unit.max_count();
        if count > max {
            return Err(ValidationError(format!(
                "interval_count must be at most {max} for {unit} (one year)"
            )));
        }
        Ok(Self { unit, count })
    }

    /// Parses a unit name (see [`IntervalUnit::parse`]) and checks the count.
    pub fn parse(unit: &str, count: u32) -> Result<Self, ValidationError> {
        Self::new(IntervalUnit::parse(unit)?, count)
    }

    /// From a stored `(unit, count)` pair (a database row's columns).
    pub fn from_stored(unit: &str, count: i32) -> Result<Self, ValidationError> {
        let count = u32::try_from(count)
            .map_err(|_| ValidationError("interval_count must be at least 1".into()))?;
        Self::parse(unit, count)
    }

    /// The unit counted.
    pub fn unit(self) -> IntervalUnit {
        self.unit
    }

    /// How many units one interval spans, at least 1.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The `(interval, interval_count)` pair in the form payment processors use, which have
    /// no quarter: a quarter becomes three months.
    pub fn to_stripe(self) -> (&'static str, u32) {
        match self.unit {
            // count ≤ 4, so 3 × count ≤ 12 cannot overflow.
            IntervalUnit::Quarter => ("month", 3 * self.count),
            unit => (unit.as_str(), self.count),
        }
    }

    /// The interval in words: `month` for one unit, `3 months` for several.
    pub fn display(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.count == 1 {
            f.write_str(self.unit.as_str())
        } else {
            write!(f, "{} {}s", self.count, self.unit.as_str())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNITS: [IntervalUnit; 5] = [
        IntervalUnit::Day,
        IntervalUnit::Week,
        IntervalUnit::Month,
        IntervalUnit::Quarter,
        IntervalUnit::Year,
    ];

    #[test]
    fn unit_names_parse_in_any_case() {
        assert_eq!(IntervalUnit::parse("month").unwrap(), IntervalUnit::Month);
        assert_eq!(IntervalUnit::parse("MONTH").unwrap(), IntervalUnit::Month);
        assert_eq!(IntervalUnit::parse("Week").unwrap(), IntervalUnit::Week);
        for unit in UNITS {
            assert_eq!(IntervalUnit::parse(unit.as_str()).unwrap(), unit);
        }
    }

    #[test]
    fn unit_adjectives_are_aliases() {
        let cases = [
            ("daily", IntervalUnit::Day),
            ("weekly", IntervalUnit::Week),
            ("monthly", IntervalUnit::Month),
            ("Quarterly", IntervalUnit::Quarter),
            ("yearly", IntervalUnit::Year),
            ("ANNUAL", IntervalUnit::Year),
        ];
        for (raw, unit) in cases {
            assert_eq!(IntervalUnit::parse(raw).unwrap(), unit, "{raw}");
        }
    }

    #[test]
    fn unknown_units_are_rejected() {
        for bad in ["", "months", "fortnight", "hour", "annually", "mon"] {
            let err = IntervalUnit::parse(bad).unwrap_err();
            assert_eq!(
                err.0, "interval must be one of day, week, month, quarter, year",
                "{bad}"
            );
        }
    }

    #[test]
    fn count_zero_is_rejected() {
        let err = Interval::parse("month", 0).unwrap_err();
        assert_eq!(err.0, "interval_count must be at least 1");
    }

    #[test]
    fn counts_up_to_one_year_are_accepted_and_beyond_rejected() {
        let limits = [
            ("day", 365),
            ("week", 52),
            ("month", 12),
            ("quarter", 4),
            ("year", 1),
        ];
        for (unit, max) in limits {
            assert_eq!(Interval::parse(unit, max).unwrap().count(), max);
            let err = Interval::parse(unit, max + 1).unwrap_err();
            assert_eq!(
                err.0,
                format!("interval_count must be at most {max} for {unit} (one year)")
            );
        }
    }

    #[test]
    fn to_stripe_turns_quarters_into_months() {
        let stripe = |unit, count| Interval::parse(unit, count).unwrap().to_stripe();
        assert_eq!(stripe("quarter", 1), ("month", 3));
        assert_eq!(stripe("quarter", 4), ("month", 12));
        assert_eq!(stripe("month", 6), ("month", 6));
        assert_eq!(stripe("daily", 7), ("day", 7));
        assert_eq!(stripe("week", 2), ("week", 2));
        assert_eq!(stripe("annual", 1), ("year", 1));
    }

    #[test]
    fn display_is_singular_for_one_and_counted_plural_otherwise() {
        let shown = |unit, count| Interval::parse(unit, count).unwrap().display();
        assert_eq!(shown("month", 1), "month");
        assert_eq!(shown("quarter", 1), "quarter");
        assert_eq!(shown("month", 3), "3 months");
        assert_eq!(shown("week", 2), "2 weeks");
        assert_eq!(shown("day", 30), "30 days");
        assert_eq!(shown("quarter", 2), "2 quarters");
    }

    #[test]
    fn interval_serializes_as_unit_and_count() {
        let interval = Interval::parse("quarter", 2).unwrap();
        let json = serde_json::to_value(interval).unwrap();
        assert_eq!(json, serde_json::json!({ "unit": "quarter", "count": 2 }));
        assert_eq!(serde_json::from_value::<Interval>(json).unwrap(), interval);
    }

    #[test]
    fn interval_deserialization_applies_the_limits() {
        let ok: Interval =
            serde_json::from_value(serde_json::json!({ "unit": "Monthly", "count": 1 })).unwrap();
        assert_eq!(ok, Interval::parse("month", 1).unwrap());
        for bad in [
            serde_json::json!({ "unit": "month", "count": 13 }),
            serde_json::json!({ "unit": "month", "count": 0 }),
            serde_json::json!({ "unit": "hour", "count": 1 }),
            serde_json::json!({ "unit": "month" }),
        ] {
            assert!(
                serde_json::from_value::<Interval>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn interval_limits_hold_for_every_unit_and_count(index in 0..UNITS.len(), count in any::<u32>()) {
            let unit = UNITS[index];
            let result = Interval::new(unit, count);
            prop_assert_eq!(result.is_ok(), (1..=unit.max_count()).contains(&count));
            if let Ok(interval) = result {
                let (name, stripe_count) = interval.to_stripe();
                prop_assert!(["day", "week", "month", "year"].contains(&name));
                // Whatever the unit, the interval never exceeds a year.
                let days_at_most = match name {
                    "day" => stripe_count,
                    "week" => stripe_count * 7,
                    "month" => stripe_count * 31,
                    _ => stripe_count * 366,
                };
                prop_assert!(days_at_most <= 372);
                let json = serde_json::to_string(&interval).unwrap();
                prop_assert_eq!(serde_json::from_str::<Interval>(&json).unwrap(), interval);
            }
        }
    }
}
