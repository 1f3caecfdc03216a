//! Billable metrics and what a usage event counts for.
//!
//! A [`Metric`] says how the usage events reported under its code combine into a period's
//! quantity: by [`Aggregation`], over one integer property (none for `count`), counting only
//! events whose properties match its filters. What an event counts for is read once, when it
//! comes in ([`Metric::read`]); a period's quantity is then combined from those readings, and
//! the metered price's model turns the quantity into an amount.
//!
//! Quantities are whole units. A weighted sum is the time-weighted average of a level over the
//! period ([`weighted_quantity`]), rounded up to a whole unit: 10 seats held for one day of a
//! 30-day month bill as 1 seat, never as 0.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ValidationError, period::Period};

/// The longest metric code.
pub const MAX_CODE_LEN: usize = 100;
/// The longest property name a metric reads or filters on.
pub const MAX_FIELD_LEN: usize = 100;
/// The most properties a metric filters on.
pub const MAX_FILTERS: usize = 20;
/// The most values a filter allows.
pub const MAX_FILTER_VALUES: usize = 100;
/// The longest value a filter allows.
pub const MAX_FILTER_VALUE_LEN: usize = 200;
/// The largest value (or, for a weighted sum, change) one event may report: 10^12.
pub const MAX_VALUE: i64 = 1_000_000_000_000;

/// How a period's events combine into a quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The number of matching events.
    Count,
    /// The total of the property.
    Sum,
    /// The largest value of the property (0 without events).
    Max,
    /// The number of distinct values of the property.
    UniqueCount,
    /// The value of the property in the latest event (by its timestamp; 0 without events).
    #[serde(alias = "last")]
    Latest,
    /// Each event's property changes a level that persists across periods (`+5` seats, `-2`
    /// seats); the quantity is the level's time-weighted average over the period, rounded up.
    WeightedSum,
}

impl Aggregation {
    pub const ALL: [Self; 6] = [
        Self::Count,
        Self::Sum,
        Self::Max,
        Self::UniqueCount,
        Self::Latest,
        Self::WeightedSum,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Count => "count",
            Self::Sum => "sum",
            Self::Max => "max",
            Self::UniqueCount => "unique_count",
            Self::Latest => "latest",
            Self::WeightedSum => "weighted_sum",
        }
    }

    /// The stored form back (`last` is the older name of `latest`).
    pub fn parse(raw: &str) -> Option<Self> {
        if raw == "last" {
            return Some(Self::Latest);
        }
        Self::ALL.into_iter().find(|a| a.as_str() == raw)
    }

    /// Whether the aggregation reads a property.
    pub fn reads_field(self) -> bool {
        self != Self::Count
    }
}

/// Checks a metric code: 1 to [`MAX_CODE_LEN`] characters of `a-z`, `0-9`, `_`, `.` and `-`.
pub fn metric_code(raw: &str) -> Result<String, ValidationError> {
    let valid =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-');
    if raw.is_empty() || raw.len() > MAX_CODE_LEN || !raw.bytes().all(valid) {
        return Err(ValidationError(format!(
            "must be 1 to {MAX_CODE_LEN} characters of a-z, 0-9, _, . or -"
        )));
    }
    Ok(raw.to_owned())
}

/// Checks a property name: 1 to [`MAX_FIELD_LEN`] characters of letters, digits, `_`, `.`
/// and `-`.
fn field_name(raw: &str) -> Result<(), ValidationError> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if raw.is_empty() || raw.len() > MAX_FIELD_LEN || !raw.bytes().all(valid) {
        return Err(ValidationError(format!(
            "a property name must be 1 to {MAX_FIELD_LEN} characters of letters, digits, _, . or -"
        )));
    }
    Ok(())
}

/// How a metric counts events: validated, so [`Metric::read`] only fails on the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    aggregation: Aggregation,
    field: Option<String>,
    filters: BTreeMap<String, Vec<String>>,
}

/// What one event counts for under a metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Whether its properties match the metric's filters; an event that does not counts for
    /// nothing.
    pub matched: bool,
    /// The property's integer value (sum, max, latest, weighted sum).
    pub value: Option<i64>,
    /// The property's value as text (unique count).
    pub unique_key: Option<String>,
}

/// A scalar property as text: strings as they are, numbers and booleans as JSON writes them.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An integer property: a JSON integer, or a string holding one.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

impl Metric {
    /// `field` is required for every aggregation but `count`, and refused for `count`;
    /// filters name at most [`MAX_FILTERS`] properties, each with 1 to [`MAX_FILTER_VALUES`]
    /// allowed values of at most [`MAX_FILTER_VALUE_LEN`] characters.
    pub fn new(
        aggregation: Aggregation,
        field: Option<&str>,
        filters: BTreeMap<String, Vec<String>>,
    ) -> Result<Self, ValidationError> {
        match (aggregation.reads_field(), field) {
            (true, None) => {
                return Err(ValidationError(format!(
                    "field_name is required for {}",
                    aggregation.as_str()
                )));
            }
            (false, Some(_)) => {
                return Err(ValidationError(
                    "field_name must be absent for count".into(),
                ));
            }
            (true, Some(f)) => field_name(f)?,
            (false, None) => {}
        }
        if filters.len() > MAX_FILTERS {
            return Err(ValidationError(format!(
                "filters may name at most {MAX_FILTERS} properties"
            )));
        }
        for (key, values) in &filters {
            field_name(key)?;
            if values.is_empty() || values.len() > MAX_FILTER_VALUES {
                return Err(ValidationError(format!(
                    "filters.{key} must allow 1 to {MAX_FILTER_VALUES} values"
                )));
            }
            if values
                .iter()
                .any(|v| v.chars().count() > MAX_FILTER_VALUE_LEN)
            {
                return Err(ValidationError(format!(
                    "filters.{key}: a value must be at most {MAX_FILTER_VALUE_LEN} characters"
                )));
            }
        }
        Ok(Self {
            aggregation,
            field: field.map(str::to_owned),
            filters,
        })
    }

    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    pub fn filters(&self) -> &BTreeMap<String, Vec<String>> {
        &self.filters
    }

    /// What an event with these properties counts for. An event outside the filters counts
    /// for nothing and needs no value; one inside needs the metric's property: an integer, at
    /// least 0 but for a weighted sum (whose values are changes of a level), or any scalar for
    /// a unique count.
    pub fn read(&self, properties: &serde_json::Map<String, Value>) -> Result<Reading, String> {
        let matched = self.filters.iter().all(|(key, allowed)| {
            properties
                .get(key)
                .and_then(scalar_text)
                .is_some_and(|v| allowed.contains(&v))
        });
        let mut reading = Reading {
            matched,
            value: None,
            unique_key: None,
        };
        let Some(field) = self.field.as_deref().filter(|_| matched) else {
            return Ok(reading);
        };
        let raw = properties
            .get(field)
            .ok_or_else(|| format!("properties.{field} is required by the metric"))?;
        if self.aggregation == Aggregation::UniqueCount {
            reading.unique_key = Some(
                scalar_text(raw)
                    .ok_or_else(|| format!("properties.{field} must be a string or a number"))?,
            );
            return Ok(reading);
        }
        let value = integer(raw).ok_or_else(|| format!("properties.{field} must be an integer"))?;
        if value < 0 && self.aggregation != Aggregation::WeightedSum {
            return Err(format!("properties.{field} must not be negative"));
        }
        if value.unsigned_abs() > MAX_VALUE.unsigned_abs() {
            return Err(format!(
                "properties.{field} must be at most {MAX_VALUE} in size"
            ));
        }
        reading.value = Some(value);
        Ok(reading)
    }
}

/// A window's matching events combined each way a metric can combine them; the metric's
/// aggregation picks its quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub count: u64,
    pub sum: u64,
    pub max: u64,
    pub unique_count: u64,
    pub latest: u64,
    pub weighted_sum: u64,
}

impl Figures {
    /// The quantity `aggregation` bills.
    pub fn quantity(&self, aggregation: Aggregation) -> u64 {
        match aggregation {
            Aggregation::Count => self.count,
            Aggregation::Sum => self.sum,
            Aggregation::Max => self.max,
            Aggregation::UniqueCount => self.unique_count,
            Aggregation::Latest => self.latest,
            Aggregation::WeightedSum => self.weighted_sum,
        }
    }
}

/// A plan's limit on a metric: how much of it a subscription to the plan may use in a period
/// before the usage is said to reach the limit (usage goes on being recorded and billed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimit {
    /// The metric's code.
    pub metric: String,
    /// The quantity (as the metric aggregates it) a period may use; at least 1.
    pub limit: i64,
}

/// At most this many limits per plan.
pub const MAX_USAGE_LIMITS: usize = 20;

/// Checks a plan's limits: at most [`MAX_USAGE_LIMITS`], one per metric code (a valid code),
/// each at least 1.
pub fn check_usage_limits(limits: &[UsageLimit]) -> Result<(), ValidationError> {
    if limits.len() > MAX_USAGE_LIMITS {
        return Err(ValidationError(format!(
            "must hold at most {MAX_USAGE_LIMITS} limits"
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for l in limits {
        metric_code(&l.metric)?;
        if !seen.insert(l.metric.as_str()) {
            return Err(ValidationError(format!(
                "limits {} twice: one limit per metric",
                l.metric
            )));
        }
        if l.limit < 1 {
            return Err(ValidationError(format!(
                "the limit on {} must be at least 1",
                l.metric
            )));
        }
    }
    Ok(())
}

impl Aggregation {
    /// A period's quantity from those of the items that metered the metric in it, each over
    /// its own part of the period (an item swapped mid-period), given as (end of the part,
    /// quantity): counts and sums add up, and so do a level's parts (each its part's share of
    /// the period's average); a latest value is that of the last part with a value (a part
    /// without events reads 0); a maximum is the largest part's. A distinct count is also the
    /// largest part's, which is at most the period's own (a value seen in two parts counts
    /// once).
    pub fn combine(self, parts: &[(DateTime<Utc>, u64)]) -> u64 {
        match self {
            Self::Count | Self::Sum | Self::WeightedSum => {
                parts.iter().fold(0, |a, p| a.saturating_add(p.1))
            }
            Self::Latest => parts
                .iter()
                .filter(|p| p.1 > 0)
                .max_by_key(|p| p.0)
                .map_or(0, |p| p.1),
            Self::Max | Self::UniqueCount => parts.iter().map(|p| p.1).max().unwrap_or(0),
        }
    }
}

/// Whether a period's `quantity` reached `limit`.
pub fn limit_reached(limit: i64, quantity: u64) -> bool {
    u64::try_from(limit).is_ok_and(|l| quantity >= l)
}

/// The time-weighted average over `over` (the period measured) of a level that stood at
/// `level` when `window` (the part of the period an item metered it) opened and changed by each
/// of `changes` (instant, change) at its instant, counted within `window` only: an item on for
/// part of the period bills its share ([`weighted_area`], [`weighted_shares`] of one part).
/// `None` on overflow.
pub fn weighted_quantity(
    level: i128,
    window: Period,
    over: Period,
    changes: &[(DateTime<Utc>, i64)],
) -> Option<u64> {
    weighted_shares(&[weighted_area(level, window, changes)?], over)?.pop()
}

/// What a level that stood at `level` when `window` opened, and changed by each of `changes`
/// (instant, change) at its instant, adds up to over the window, in level-microseconds; 0 when
/// that is not positive or the window is empty. Changes are taken in the order given and should
/// be in time order; those outside the window act at its edges. `None` on overflow.
pub fn weighted_area(
    mut level: i128,
    window: Period,
    changes: &[(DateTime<Utc>, i64)],
) -> Option<i128> {
    if window.end <= window.start {
        return Some(0);
    }
    let micros = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_microseconds();
    let mut area: i128 = 0;
    let mut since = window.start;
    for &(at, change) in changes {
        let at = at.clamp(window.start, window.end);
        area = area.checked_add(level.checked_mul(i128::from(micros(since, at)?))?)?;
        level = level.checked_add(i128::from(change))?;
        since = at;
    }
    area = area.checked_add(level.checked_mul(i128::from(micros(since, window.end)?))?)?;
    Some(area.max(0))
}

/// The quantities of the parts of a level over the period `over`, given their areas
/// ([`weighted_area`]) in time order: together the level's time-weighted average over the
/// period rounded up to a whole unit (10 seats for one day of a 30-day month bill as 1, never
/// as 0), each part the units the running total gains with it (10 seats swapped to another
/// price a third of the way through bill 4 and 6, not 4 and 7). 0s when the period is empty;
/// `None` on overflow.
pub fn weighted_shares(areas: &[i128], over: Period) -> Option<Vec<u64>> {
    let length = i128::from((over.end - over.start).num_microseconds()?);
    if length <= 0 {
        return Some(vec![0; areas.len()]);
    }
    // Both positive: rounding up is adding all but one of a length first.
    let up = |area: i128| {
        if area <= 0 {
            0
        } else {
            (area - 1) / length + 1
        }
    };
    let mut total: i128 = 0;
    let mut units: i128 = 0;
    areas
        .iter()
        .map(|&area| {
            total = total.checked_add(area.max(0))?;
            let before = units;
            units = up(total);
            u64::try_from(units - before).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn props(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn at(day: u32, hour: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, day, hour, 0, 0).unwrap()
    }

    fn november() -> Period {
        Period {
            start: at(1, 0),
            end: Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap(),
        }
    }

    fn filters(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn aggregations_round_trip_and_last_is_latest() {
        for a in Aggregation::ALL {
            assert_eq!(Aggregation::parse(a.as_str()), Some(a));
            let json = serde_json::to_value(a).unwrap();
            assert_eq!(json, json!(a.as_str()));
        }
        assert_eq!(Aggregation::parse("last"), Some(Aggregation::Latest));
        assert_eq!(
            serde_json::from_value::<Aggregation>(json!("last")).unwrap(),
            Aggregation::Latest
        );
        assert_eq!(Aggregation::parse("median"), None);
        assert!(!Aggregation::Count.reads_field());
        assert!(Aggregation::ALL[1..].iter().all(|a| a.reads_field()));
    }

    #[test]
    fn codes_are_checked() {
        assert_eq!(metric_code("api_calls.v2-x").unwrap(), "api_calls.v2-x");
        assert!(metric_code(&"a".repeat(MAX_CODE_LEN)).is_ok());
        for bad in ["", "API", "a b", "é", &"a".repeat(MAX_CODE_LEN + 1)] {
            assert!(metric_code(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_field_is_required_exactly_when_the_aggregation_reads_one() {
        assert!(Metric::new(Aggregation::Count, None, BTreeMap::new()).is_ok());
        assert!(Metric::new(Aggregation::Count, Some("x"), BTreeMap::new()).is_err());
        for a in &Aggregation::ALL[1..] {
            assert!(Metric::new(*a, None, BTreeMap::new()).is_err());
            let m = Metric::new(*a, Some("bytes"), BTreeMap::new()).unwrap();
            assert_eq!(m.field(), Some("bytes"));
            assert_eq!(m.aggregation(), *a);
        }
        for bad in ["", "a b", &"f".repeat(MAX_FIELD_LEN + 1)] {
            assert!(Metric::new(Aggregation::Sum, Some(bad), BTreeMap::new()).is_err());
        }
        assert!(
            Metric::new(
                Aggregation::Sum,
                Some(&"f".repeat(MAX_FIELD_LEN)),
                BTreeMap::new()
            )
            .is_ok()
        );
    }

    #[test]
    fn filters_are_bounded() {
        let ok = filters(&[("region", &["us", "eu"])]);
        let m = Metric::new(Aggregation::Count, None, ok.clone()).unwrap();
        assert_eq!(m.filters(), &ok);
        assert!(Metric::new(Aggregation::Count, None, filters(&[("region", &[])])).is_err());
        assert!(Metric::new(Aggregation::Count, None, filters(&[("bad key", &["x"])])).is_err());
        let long = "v".repeat(MAX_FILTER_VALUE_LEN + 1);
        assert!(
            Metric::new(
                Aggregation::Count,
                None,
                filters(&[("k", &[long.as_str()])])
            )
            .is_err()
        );
        let longest = "v".repeat(MAX_FILTER_VALUE_LEN);
        assert!(
            Metric::new(
                Aggregation::Count,
                None,
                filters(&[("k", &[longest.as_str()])])
            )
            .is_ok()
        );
        let values: Vec<String> = (0..=MAX_FILTER_VALUES).map(|i| i.to_string()).collect();
        let many: BTreeMap<String, Vec<String>> = [("k".to_string(), values.clone())].into();
        assert!(Metric::new(Aggregation::Count, None, many).is_err());
        let most: BTreeMap<String, Vec<String>> =
            [("k".to_string(), values[..MAX_FILTER_VALUES].to_vec())].into();
        assert!(Metric::new(Aggregation::Count, None, most).is_ok());
        let keys = |n: usize| -> BTreeMap<String, Vec<String>> {
            (0..n)
                .map(|i| (format!("k{i}"), vec!["x".to_string()]))
                .collect()
        };
        assert!(Metric::new(Aggregation::Count, None, keys(MAX_FILTERS)).is_ok());
        assert!(Metric::new(Aggregation::Count, None, keys(MAX_FILTERS + 1)).is_err());
    }

    #[test]
    fn events_outside_the_filters_count_for_nothing() {
        let m = Metric::new(
            Aggregation::Sum,
            Some("bytes"),
            filters(&[("region", &["us", "eu"]), ("tier", &["1"])]),
        )
        .unwrap();
        let inside = m
            .read(&props(json!({"region": "eu", "tier": 1, "bytes": 7})))
            .unwrap();
        assert_eq!(
            inside,
            Reading {
                matched: true,
                value: Some(7),
                unique_key: None
            }
        );
        // Outside: no value needed, even a bad one is fine.
        for outside in [
            json!({"region": "ap", "tier": 1, "bytes": "x"}),
            json!({"tier": 1}),
            json!({"region": "us", "tier": 2, "bytes": 7}),
            json!({"region": ["us"], "tier": 1, "bytes": 7}),
        ] {
            assert_eq!(
                m.read(&props(outside)).unwrap(),
                Reading {
                    matched: false,
                    value: None,
                    unique_key: None
                }
            );
        }
        let flag = Metric::new(Aggregation::Count, None, filters(&[("beta", &["true"])])).unwrap();
        assert!(flag.read(&props(json!({"beta": true}))).unwrap().matched);
        assert!(!flag.read(&props(json!({"beta": false}))).unwrap().matched);
    }

    #[test]
    fn values_are_integers_and_only_weighted_sums_take_negatives() {
        let sum = Metric::new(Aggregation::Sum, Some("n"), BTreeMap::new()).unwrap();
        assert_eq!(sum.read(&props(json!({"n": 12}))).unwrap().value, Some(12));
        assert_eq!(
            sum.read(&props(json!({"n": " 12 "}))).unwrap().value,
            Some(12)
        );
        assert_eq!(sum.read(&props(json!({"n": 0}))).unwrap().value, Some(0));
        for bad in [
            json!({"n": 1.5}),
            json!({"n": "x"}),
            json!({}),
            json!({"n": -1}),
            json!({"n": null}),
        ] {
            assert!(sum.read(&props(bad.clone())).is_err(), "{bad}");
        }
        assert_eq!(
            sum.read(&props(json!({ "n": MAX_VALUE }))).unwrap().value,
            Some(MAX_VALUE)
        );
        assert!(sum.read(&props(json!({ "n": MAX_VALUE + 1 }))).is_err());
        let seats = Metric::new(Aggregation::WeightedSum, Some("n"), BTreeMap::new()).unwrap();
        assert_eq!(
            seats.read(&props(json!({"n": -3}))).unwrap().value,
            Some(-3)
        );
        assert_eq!(
            seats
                .read(&props(json!({ "n": -MAX_VALUE })))
                .unwrap()
                .value,
            Some(-MAX_VALUE)
        );
        assert!(seats.read(&props(json!({ "n": -MAX_VALUE - 1 }))).is_err());
        // The most negative integer has no opposite: refused like any too large, never let
        // through by an overflow.
        assert!(seats.read(&props(json!({ "n": i64::MIN }))).is_err());
        assert!(
            seats
                .read(&props(json!({ "n": i64::MIN.to_string() })))
                .is_err()
        );
        let count = Metric::new(Aggregation::Count, None, BTreeMap::new()).unwrap();
        assert_eq!(
            count.read(&props(json!({}))).unwrap(),
            Reading {
                matched: true,
                value: None,
                unique_key: None
            }
        );
    }

    #[test]
    fn unique_counts_read_any_scalar_as_text() {
        let m = Metric::new(Aggregation::UniqueCount, Some("user"), BTreeMap::new()).unwrap();
        let key = |v: Value| m.read(&props(json!({ "user": v }))).map(|r| r.unique_key);
        assert_eq!(key(json!("u1")), Ok(Some("u1".into())));
        assert_eq!(key(json!(42)), Ok(Some("42".into())));
        assert_eq!(key(json!(true)), Ok(Some("true".into())));
        assert!(key(json!({"a": 1})).is_err());
        assert!(key(json!(null)).is_err());
        assert_eq!(m.read(&props(json!({"user": "u"}))).unwrap().value, None);
    }

    #[test]
    fn each_aggregation_bills_its_own_figure() {
        let f = Figures {
            count: 1,
            sum: 2,
            max: 3,
            unique_count: 4,
            latest: 5,
            weighted_sum: 6,
        };
        let got: Vec<u64> = Aggregation::ALL.iter().map(|a| f.quantity(*a)).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn weighted_sum_is_the_average_level_rounded_up() {
        let p = november(); // 30 days
        // No changes: the level carried in.
        assert_eq!(weighted_quantity(4, p, p, &[]), Some(4));
        assert_eq!(weighted_quantity(0, p, p, &[]), Some(0));
        // 10 seats for the first 15 days, 20 for the last 15: 15.
        assert_eq!(weighted_quantity(10, p, p, &[(at(16, 0), 10)]), Some(15));
        // 10 seats for one day: 1/3 of a seat, rounded up.
        assert_eq!(
            weighted_quantity(0, p, p, &[(at(1, 0), 10), (at(2, 0), -10)]),
            Some(1)
        );
        // Exactly 5: no rounding up.
        assert_eq!(weighted_quantity(0, p, p, &[(at(16, 0), 10)]), Some(5));
        // One hour past half: a little over 5 is 6... and a little under is 5.
        assert_eq!(weighted_quantity(0, p, p, &[(at(15, 23), 10)]), Some(6));
        assert_eq!(weighted_quantity(0, p, p, &[(at(16, 1), 10)]), Some(5));
        // A negative average bills nothing.
        assert_eq!(weighted_quantity(-5, p, p, &[(at(10, 0), 2)]), Some(0));
        // Changes outside the window act at its edges.
        assert_eq!(
            weighted_quantity(0, p, p, &[(at(1, 0) - chrono::Duration::days(3), 6)]),
            Some(6)
        );
        // An empty window bills nothing.
        let empty = Period {
            start: p.start,
            end: p.start,
        };
        assert_eq!(weighted_quantity(9, empty, empty, &[]), Some(0));
        assert_eq!(weighted_quantity(9, empty, p, &[]), Some(0));
        assert_eq!(weighted_quantity(9, p, empty, &[]), Some(0));
        // An item on for part of the period bills its share of the period's average: 10 seats
        // swapped to another price on the 16th are 5 on each, not 10 on both; 10 seats added
        // on the 29th are 2/3 of a seat (rounded up), not 10.
        let first = Period {
            start: p.start,
            end: at(16, 0),
        };
        let second = Period {
            start: at(16, 0),
            end: p.end,
        };
        assert_eq!(weighted_quantity(10, first, p, &[]), Some(5));
        assert_eq!(weighted_quantity(10, second, p, &[]), Some(5));
        // Changes before its part set the level it starts at; after it, they do nothing.
        assert_eq!(weighted_quantity(0, second, p, &[(at(3, 0), 10)]), Some(5));
        assert_eq!(weighted_quantity(10, first, p, &[(at(20, 0), 20)]), Some(5));
        // Within it they count from their instant: 10 seats, 30 from the 20th (11 days).
        assert_eq!(
            weighted_quantity(10, second, p, &[(at(20, 0), 20)]),
            Some(13)
        );
        let late = Period {
            start: at(29, 0),
            end: p.end,
        };
        assert_eq!(weighted_quantity(10, late, p, &[]), Some(1));
        // Parts share the period's average rounded once: 10 seats swapped a third of the way
        // through (10 days of 30) are 4 (3 1/3 rounded up) then 6, adding up to 10, not 11.
        let third = Period {
            start: p.start,
            end: at(11, 0),
        };
        let rest = Period {
            start: at(11, 0),
            end: p.end,
        };
        let areas: Vec<i128> = [third, rest]
            .iter()
            .map(|w| weighted_area(10, *w, &[]).unwrap())
            .collect();
        assert_eq!(weighted_shares(&areas, p), Some(vec![4, 6]));
        // A part with nothing (or less than nothing) gets nothing, and takes nothing away.
        assert_eq!(
            weighted_shares(&[0, areas[0], -areas[1], areas[1]], p),
            Some(vec![0, 4, 0, 6])
        );
        assert_eq!(weighted_shares(&areas, empty), Some(vec![0, 0]));
        assert_eq!(weighted_shares(&[i128::MAX, i128::MAX], p), None);
        assert_eq!(weighted_area(-3, third, &[]), Some(0));
        assert_eq!(
            Aggregation::WeightedSum.combine(&[(at(16, 0), 5), (p.end, 5)]),
            10
        );
        // Overflow is reported, not wrapped.
        assert_eq!(weighted_quantity(i128::MAX / 2, p, p, &[]), None);
    }

    fn limit(metric: &str, limit: i64) -> UsageLimit {
        UsageLimit {
            metric: metric.into(),
            limit,
        }
    }

    #[test]
    fn usage_limits_are_one_per_metric_at_least_one_and_at_most_twenty() {
        assert!(check_usage_limits(&[]).is_ok());
        assert!(check_usage_limits(&[limit("api_calls", 1), limit("storage", 5)]).is_ok());
        let twice = check_usage_limits(&[limit("api_calls", 1), limit("api_calls", 2)]);
        assert!(twice.unwrap_err().0.contains("twice"));
        let zero = check_usage_limits(&[limit("api_calls", 0)]);
        assert!(zero.unwrap_err().0.contains("at least 1"));
        assert!(check_usage_limits(&[limit("api_calls", -5)]).is_err());
        assert!(check_usage_limits(&[limit("API calls", 5)]).is_err());
        let twenty: Vec<UsageLimit> = (0..20).map(|i| limit(&format!("m{i}"), 1)).collect();
        assert!(check_usage_limits(&twenty).is_ok());
        let more: Vec<UsageLimit> = (0..21).map(|i| limit(&format!("m{i}"), 1)).collect();
        assert!(
            check_usage_limits(&more)
                .unwrap_err()
                .0
                .contains("at most 20")
        );
    }

    #[test]
    fn a_limit_is_reached_at_its_quantity_not_before() {
        assert!(!limit_reached(10, 9));
        assert!(limit_reached(10, 10));
        assert!(limit_reached(10, 11));
        assert!(limit_reached(1, u64::MAX));
        // Never below 1 once checked; a negative one read back is never reached.
        assert!(!limit_reached(-1, 0));
        assert!(limit_reached(0, 0));
    }

    #[test]
    fn parts_of_a_period_add_up_for_counts_and_sums_the_last_for_latest_else_the_largest() {
        let parts = [(at(10, 0), 3), (at(30, 0), 4), (at(20, 0), 9)];
        assert_eq!(Aggregation::Count.combine(&parts), 16);
        assert_eq!(Aggregation::Sum.combine(&parts), 16);
        assert_eq!(Aggregation::WeightedSum.combine(&parts), 16);
        for a in [Aggregation::Sum, Aggregation::WeightedSum] {
            assert_eq!(a.combine(&[(at(1, 0), u64::MAX), (at(2, 0), 4)]), u64::MAX);
        }
        // The latest value is the one of the part that ended last, not the largest; a part
        // without a value (nothing reported while its item was on) is passed over.
        assert_eq!(Aggregation::Latest.combine(&parts), 4);
        let quiet_last = [(at(10, 0), 3), (at(30, 0), 0), (at(20, 0), 9)];
        assert_eq!(Aggregation::Latest.combine(&quiet_last), 9);
        assert_eq!(Aggregation::Latest.combine(&[(at(1, 0), 0)]), 0);
        for a in [Aggregation::Max, Aggregation::UniqueCount] {
            assert_eq!(a.combine(&parts), 9, "{a:?}");
        }
        for a in Aggregation::ALL {
            assert_eq!(a.combine(&[]), 0, "{a:?}");
        }
    }
}
