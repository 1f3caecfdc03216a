//! Price models and the pure function that turns a price and a quantity into an amount.
//!
//! A [`PriceModel`] is parsed once from its wire form, [`PriceModelIn`]; after that its
//! amounts are non-negative and its tiers are well formed, so [`PriceModel::amount_for`] can
//! only fail on arithmetic overflow. All amounts are in the minor unit of the price's
//! currency; the currency itself lives with the price record, not here.
//!
//! Quantity 0 costs nothing in every model: no flat fee, no first-tier fee.

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// The most tiers a graduated or volume price may have.
pub const MAX_TIERS: usize = 50;

/// One row of a tiered price, as submitted and as returned.
///
/// A row on its own is unchecked data: whether it is valid depends on its neighbours, so rows
/// are validated together when a [`PriceModel`] is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tier {
    /// The last unit (inclusive) this tier covers; `null` for "and above", which only the
    /// last tier may have and the last tier must have.
    pub up_to: Option<u64>,
    /// Price of each unit in this tier, in minor units.
    pub unit_amount: i64,
    /// Fee charged once when the tier applies, in minor units; defaults to 0.
    #[serde(default)]
    pub flat_amount: i64,
}

/// The wire form of a price model: a JSON object tagged by `"type"`.
///
/// Unchecked; turn it into a [`PriceModel`] with [`PriceModel::parse`] (or `TryFrom`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum PriceModelIn {
    /// `amount` for any quantity of at least 1; nothing for quantity 0.
    Flat {
        /// The fixed charge, in minor units.
        amount: i64,
    },
    /// `unit_amount` for each unit, such as a seat.
    PerUnit {
        /// Price of one unit, in minor units.
        unit_amount: i64,
    },
    /// Each unit is priced by the tier it falls into; a tier's `flat_amount` is charged once
    /// as soon as any unit falls into that tier.
    Graduated {
        /// Tiers in ascending `up_to` order, the last one unbounded.
        tiers: Vec<Tier>,
    },
    /// Every unit is priced by the one tier the total quantity falls into, plus that tier's
    /// `flat_amount`.
    Volume {
        /// Tiers in ascending `up_to` order, the last one unbounded.
        tiers: Vec<Tier>,
    },
    /// `amount` per started package of `package_size` units (the quantity is rounded up to
    /// whole packages).
    Package {
        /// Price of one package, in minor units.
        amount: i64,
        /// Units per package, at least 1.
        package_size: u64,
    },
}

/// A validated price model: amounts are non-negative, tier lists are non-empty, hold at most
/// [`MAX_TIERS`] rows with strictly ascending `up_to` values of at least 1 and end with an
/// unbounded tier, and package sizes are at least 1.
///
/// Serializes to, and deserializes through, the [`PriceModelIn`] shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PriceModelIn", into = "PriceModelIn")]
pub struct PriceModel(PriceModelIn);

/// Why an amount could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    /// The amount, or an intermediate sum, does not fit in an `i64`.
    #[error("the amount is too large to represent")]
    Overflow,
}

impl TryFrom<PriceModelIn> for PriceModel {
    type Error = ValidationError;

    fn try_from(raw: PriceModelIn) -> Result<Self, Self::Error> {
        match &raw {
            PriceModelIn::Flat { amount } => non_negative("amount", *amount)?,
            PriceModelIn::PerUnit { unit_amount } => non_negative("unit_amount", *unit_amount)?,
            PriceModelIn::Graduated { tiers } | PriceModelIn::Volume { tiers } => {
                check_tiers(tiers)?
            }
            PriceModelIn::Package {
                amount,
                package_size,
            } => {
                non_negative("amount", *amount)?;
                if *package_size == 0 {
                    return Err(ValidationError("package_size must be at least 1".into()));
                }
            }
        }
        Ok(Self(raw))
    }
}

impl From<PriceModel> for PriceModelIn {
    fn from(model: PriceModel) -> Self {
        model.0
    }
}

fn non_negative(field: &str, value: i64) -> Result<(), ValidationError> {
    if value < 0 {
        return Err(ValidationError(format!("{field} must not be negative")));
    }
    Ok(())
}

fn check_tiers(tiers: &[Tier]) -> Result<(), ValidationError> {
    if tiers.is_empty() {
        return Err(ValidationError("tiers must not be empty".into()));
    }
    if tiers.len() > MAX_TIERS {
        return Err(ValidationError(format!(
            "tiers must have at most {MAX_TIERS} entries, not {}",
            tiers.len()
        )));
    }
    let mut previous: Option<u64> = None;
    for (index, tier) in tiers.iter().enumerate() {
        non_negative(&format!("tiers[{index}].unit_amount"), tier.unit_amount)?;
        non_negative(&format!("tiers[{index}].flat_amount"), tier.flat_amount)?;
        let last = index + 1 == tiers.len();
        match (tier.up_to, last) {
            (None, true) => {}
            (None, false) => {
                return Err(ValidationError(format!(
                    "tiers[{index}].up_to may only be null in the last tier"
                )));
            }
            (Some(_), true) => {
                return Err(ValidationError(
                    "the last tier must have up_to null so every quantity is priced".into(),
                ));
            }
            (Some(up_to), false) => {
                if up_to == 0 {
                    return Err(ValidationError(format!(
                        "tiers[{index}].up_to must be at least 1"
                    )));
                }
                if let Some(before) = previous
                    && up_to <= before
                {
                    return Err(ValidationError(format!(
                        "tiers must ascend: {up_to} after {before}"
                    )));
                }
                previous = Some(up_to);
            }
        }
    }
    Ok(())
}

/// `units × unit_amount + flat_amount`, exactly, in `i128`.
fn charge(units: u64, unit_amount: i64, flat_amount: i64) -> Result<i128, PricingError> {
    i128::from(units)
        .checked_mul(i128::from(unit_amount))
        .and_then(|sum| sum.checked_add(i128::from(flat_amount)))
        .ok_or(PricingError::Overflow)
}

impl PriceModel {
    /// Validates a wire-form model; the error names the first problem found, such as
    /// `tiers must ascend: 100 after 200`.
    pub fn parse(raw: PriceModelIn) -> Result<Self, ValidationError> {
        Self::try_from(raw)
    }

    /// The validated terms, for building responses.
    pub fn terms(&self) -> &PriceModelIn {
        &self.0
    }

    /// The amount, in minor units, for `quantity` units. Never negative; fails only when the
    /// result does not fit in an `i64`.
    pub fn amount_for(&self, quantity: u64) -> Result<i64, PricingError> {
        if quantity == 0 {
            return Ok(0);
        }
        let total = match &self.0 {
            PriceModelIn::Flat { amount } => i128::from(*amount),
            PriceModelIn::PerUnit { unit_amount } => charge(quantity, *unit_amount, 0)?,
            PriceModelIn::Graduated { tiers } => graduated(tiers, quantity)?,
            PriceModelIn::Volume { tiers } => volume(tiers, quantity)?,
            PriceModelIn::Package {
                amount,
                package_size,
            } => charge(quantity.div_ceil(*package_size), *amount, 0)?,
        };
        i64::try_from(total).map_err(|_| PricingError::Overflow)
    }

    /// The single price of one unit, for models that have one (per-unit prices).
    pub fn unit_amount_hint(&self) -> Option<i64> {
        match &self.0 {
            PriceModelIn::PerUnit { unit_amount } => Some(*unit_amount),
            _ => None,
        }
    }

    /// Whether the amount is the same for every quantity of at least 1.
    pub fn is_flat(&self) -> bool {
        matches!(self.0, PriceModelIn::Flat { .. })
    }
}

/// Sums each tier's share of `quantity` (at least 1) plus the flat fee of every tier reached.
fn graduated(tiers: &[Tier], quantity: u64) -> Result<i128, PricingError> {
    let mut total: i128 = 0;
    // Units already priced by earlier tiers.
    let mut covered: u64 = 0;
    for tier in tiers {
        if quantity <= covered {
            break;
        }
        let top = tier.up_to.map_or(quantity, |up_to| up_to.min(quantity));
        // Bounds ascend strictly and quantity > covered, so top > covered.
        let units = top - covered;
        total = total
            .checked_add(charge(units, tier.unit_amount, tier.flat_amount)?)
            .ok_or(PricingError::Overflow)?;
        covered = top;
    }
    Ok(total)
}

/// Prices all of `quantity` by the first tier whose bound holds it.
fn volume(tiers: &[Tier], quantity: u64) -> Result<i128, PricingError> {
    // Parsing guarantees the last tier is unbounded, so a tier is always found.
    match tiers
        .iter()
        .find(|tier| tier.up_to.is_none_or(|up_to| quantity <= up_to))
    {
        Some(tier) => charge(quantity, tier.unit_amount, tier.flat_amount),
        None => Ok(0),
    }
}

pub use super::usage::Aggregation;

/// What a metered price measures: the metric name reported with usage (1 to 100 characters of
/// `a-z`, `0-9`, `_`, `.` and `-`) and how the period's reports are combined.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "UsageIn")]
pub struct Usage {
    metric: String,
    aggregation: Aggregation,
}

/// The unchecked wire form of [`Usage`].
#[derive(Deserialize)]
struct UsageIn {
    metric: String,
    aggregation: Aggregation,
}

impl TryFrom<UsageIn> for Usage {
    type Error = ValidationError;

    fn try_from(raw: UsageIn) -> Result<Self, Self::Error> {
        Self::parse(&raw.metric, raw.aggregation)
    }
}

impl Usage {
    /// Checks the metric code; codes are case-sensitive and must already be lower case.
    pub fn parse(metric: &str, aggregation: Aggregation) -> Result<Self, ValidationError> {
        let metric = super::usage::metric_code(metric)
            .map_err(|e| ValidationError(format!("metric {}", e.0)))?;
        Ok(Self {
            metric,
            aggregation,
        })
    }

    /// The metric name usage is reported under.
    pub fn metric(&self) -> &str {
        &self.metric
    }

    /// How the period's reports are combined.
    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tier(up_to: Option<u64>, unit_amount: i64, flat_amount: i64) -> Tier {
        Tier {
            up_to,
            unit_amount,
            flat_amount,
        }
    }

    fn model(raw: PriceModelIn) -> PriceModel {
        PriceModel::parse(raw).unwrap()
    }

    fn error(raw: PriceModelIn) -> String {
        PriceModel::parse(raw).unwrap_err().0
    }

    fn flat(amount: i64) -> PriceModel {
        model(PriceModelIn::Flat { amount })
    }

    fn per_unit(unit_amount: i64) -> PriceModel {
        model(PriceModelIn::PerUnit { unit_amount })
    }

    fn package(amount: i64, package_size: u64) -> PriceModel {
        model(PriceModelIn::Package {
            amount,
            package_size,
        })
    }

    fn graduated(tiers: Vec<Tier>) -> PriceModel {
        model(PriceModelIn::Graduated { tiers })
    }

    fn volume(tiers: Vec<Tier>) -> PriceModel {
        model(PriceModelIn::Volume { tiers })
    }

    /// 1–5 at 500 each, 6–10 at 400 each, 11+ at 300 each, with a 1 000 fee on the second tier.
    fn seat_tiers() -> Vec<Tier> {
        vec![
            tier(Some(5), 500, 0),
            tier(Some(10), 400, 1000),
            tier(None, 300, 0),
        ]
    }

    #[test]
    fn flat_charges_the_amount_for_any_positive_quantity_and_nothing_for_zero() {
        let m = flat(4900);
        assert_eq!(m.amount_for(0), Ok(0));
        assert_eq!(m.amount_for(1), Ok(4900));
        assert_eq!(m.amount_for(u64::MAX), Ok(4900));
        assert!(m.is_flat());
        assert_eq!(m.unit_amount_hint(), None);
    }

    #[test]
    fn per_unit_multiplies_by_quantity() {
        let m = per_unit(1200);
        assert_eq!(m.amount_for(0), Ok(0));
        assert_eq!(m.amount_for(1), Ok(1200));
        assert_eq!(m.amount_for(7), Ok(8400));
        assert_eq!(m.unit_amount_hint(), Some(1200));
        assert!(!m.is_flat());
    }

    #[test]
    fn graduated_prices_each_unit_in_its_own_tier() {
        let m = graduated(seat_tiers());
        assert_eq!(m.amount_for(0), Ok(0));
        assert_eq!(m.amount_for(1), Ok(500));
        assert_eq!(m.amount_for(5), Ok(2500));
        // Unit 6 enters the second tier: its unit price plus the tier's flat fee.
        assert_eq!(m.amount_for(6), Ok(2500 + 400 + 1000));
        assert_eq!(m.amount_for(10), Ok(2500 + 2000 + 1000));
        assert_eq!(m.amount_for(12), Ok(2500 + 2000 + 1000 + 600));
        assert_eq!(m.unit_amount_hint(), None);
        assert!(!m.is_flat());
    }

    #[test]
    fn graduated_charges_first_tier_flat_fee_only_once_a_unit_is_used() {
        let m = graduated(vec![tier(Some(1000), 0, 2000), tier(None, 5, 0)]);
        assert_eq!(m.amount_for(0), Ok(0));
        assert_eq!(m.amount_for(1), Ok(2000));
        assert_eq!(m.amount_for(1000), Ok(2000));
        assert_eq!(m.amount_for(1001), Ok(2005));
    }

    #[test]
    fn volume_prices_every_unit_at_the_tier_of_the_total() {
        let m = volume(seat_tiers());
        assert_eq!(m.amount_for(0), Ok(0));
        assert_eq!(m.amount_for(5), Ok(2500));
        assert_eq!(m.amount_for(6), Ok(6 * 400 + 1000));
        assert_eq!(m.amount_for(10), Ok(10 * 400 + 1000));
        assert_eq!(m.amount_for(11), Ok(11 * 300));
    }

    #[test]
    fn package_rounds_up_to_whole_packages() {
        let m = package(1000, 100);
        assert_eq!(m.amount_for(0), Ok(0));
        assert_eq!(m.amount_for(1), Ok(1000));
        assert_eq!(m.amount_for(100), Ok(1000));
        assert_eq!(m.amount_for(101), Ok(2000));
        assert_eq!(package(250, 1).amount_for(3), Ok(750));
        assert_eq!(package(1, 4).amount_for(u64::MAX), Ok(1 << 62));
    }

    #[test]
    fn huge_quantities_overflow_into_an_error() {
        assert_eq!(
            per_unit(2).amount_for(u64::MAX),
            Err(PricingError::Overflow)
        );
        assert_eq!(
            per_unit(1).amount_for(u64::MAX),
            Err(PricingError::Overflow)
        );
        assert_eq!(per_unit(1).amount_for(i64::MAX as u64), Ok(i64::MAX));
        assert_eq!(per_unit(0).amount_for(u64::MAX), Ok(0));
        assert_eq!(
            graduated(vec![tier(Some(1), i64::MAX, i64::MAX), tier(None, 0, 0)]).amount_for(1),
            Err(PricingError::Overflow)
        );
        assert_eq!(
            volume(vec![tier(None, i64::MAX, 0)]).amount_for(2),
            Err(PricingError::Overflow)
        );
        // u64::MAX / 2 rounded up is 2^63, one more package than an i64 can count.
        assert_eq!(
            package(1, 2).amount_for(u64::MAX),
            Err(PricingError::Overflow)
        );
        assert_eq!(
            package(i64::MAX, 1).amount_for(2),
            Err(PricingError::Overflow)
        );
    }

    #[test]
    fn negative_amounts_are_rejected() {
        assert_eq!(
            error(PriceModelIn::Flat { amount: -1 }),
            "amount must not be negative"
        );
        assert_eq!(
            error(PriceModelIn::PerUnit { unit_amount: -1 }),
            "unit_amount must not be negative"
        );
        assert_eq!(
            error(PriceModelIn::Package {
                amount: -5,
                package_size: 10
            }),
            "amount must not be negative"
        );
        assert_eq!(
            error(PriceModelIn::Graduated {
                tiers: vec![tier(Some(5), 1, 0), tier(None, -1, 0)]
            }),
            "tiers[1].unit_amount must not be negative"
        );
        assert_eq!(
            error(PriceModelIn::Volume {
                tiers: vec![tier(None, 1, -1)]
            }),
            "tiers[0].flat_amount must not be negative"
        );
    }

    #[test]
    fn zero_amounts_are_allowed() {
        assert_eq!(flat(0).amount_for(3), Ok(0));
        assert_eq!(per_unit(0).amount_for(3), Ok(0));
        assert_eq!(volume(vec![tier(None, 0, 0)]).amount_for(3), Ok(0));
    }

    #[test]
    fn package_size_zero_is_rejected() {
        assert_eq!(
            error(PriceModelIn::Package {
                amount: 100,
                package_size: 0
            }),
            "package_size must be at least 1"
        );
    }

    #[test]
    fn empty_tiers_are_rejected() {
        assert_eq!(
            error(PriceModelIn::Graduated { tiers: vec![] }),
            "tiers must not be empty"
        );
        assert_eq!(
            error(PriceModelIn::Volume { tiers: vec![] }),
            "tiers must not be empty"
        );
    }

    #[test]
    fn more_than_fifty_tiers_are_rejected() {
        let tiers = |n: u64| -> Vec<Tier> {
            (1..n)
                .map(|i| tier(Some(i), 1, 0))
                .chain([tier(None, 1, 0)])
                .collect()
        };
        assert!(PriceModel::parse(PriceModelIn::Graduated { tiers: tiers(50) }).is_ok());
        assert_eq!(
            error(PriceModelIn::Graduated { tiers: tiers(51) }),
            "tiers must have at most 50 entries, not 51"
        );
    }

    #[test]
    fn tiers_must_ascend_strictly() {
        assert_eq!(
            error(PriceModelIn::Graduated {
                tiers: vec![
                    tier(Some(200), 1, 0),
                    tier(Some(100), 1, 0),
                    tier(None, 1, 0)
                ]
            }),
            "tiers must ascend: 100 after 200"
        );
        assert_eq!(
            error(PriceModelIn::Volume {
                tiers: vec![
                    tier(Some(200), 1, 0),
                    tier(Some(200), 1, 0),
                    tier(None, 1, 0)
                ]
            }),
            "tiers must ascend: 200 after 200"
        );
    }

    #[test]
    fn only_the_last_tier_is_unbounded_and_it_must_be() {
        assert_eq!(
            error(PriceModelIn::Graduated {
                tiers: vec![tier(None, 1, 0), tier(None, 1, 0)]
            }),
            "tiers[0].up_to may only be null in the last tier"
        );
        assert_eq!(
            error(PriceModelIn::Graduated {
                tiers: vec![tier(Some(10), 1, 0)]
            }),
            "the last tier must have up_to null so every quantity is priced"
        );
    }

    #[test]
    fn tier_bound_zero_is_rejected() {
        assert_eq!(
            error(PriceModelIn::Graduated {
                tiers: vec![tier(Some(0), 1, 0), tier(None, 1, 0)]
            }),
            "tiers[0].up_to must be at least 1"
        );
    }

    #[test]
    fn price_model_json_is_tagged_by_type_in_snake_case() {
        let m = graduated(seat_tiers());
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "graduated",
                "tiers": [
                    { "up_to": 5, "unit_amount": 500, "flat_amount": 0 },
                    { "up_to": 10, "unit_amount": 400, "flat_amount": 1000 },
                    { "up_to": null, "unit_amount": 300, "flat_amount": 0 },
                ]
            })
        );
        assert_eq!(serde_json::from_value::<PriceModel>(json).unwrap(), m);
        let per_seat: PriceModel =
            serde_json::from_value(serde_json::json!({ "type": "per_unit", "unit_amount": 900 }))
                .unwrap();
        assert_eq!(per_seat, per_unit(900));
        let missing_flat: PriceModel = serde_json::from_value(serde_json::json!({
            "type": "volume",
            "tiers": [{ "unit_amount": 7 }]
        }))
        .unwrap();
        assert_eq!(missing_flat, volume(vec![tier(None, 7, 0)]));
    }

    #[test]
    fn price_model_json_is_validated_on_the_way_in() {
        for bad in [
            serde_json::json!({ "type": "flat", "amount": -1 }),
            serde_json::json!({ "type": "package", "amount": 1, "package_size": 0 }),
            serde_json::json!({ "type": "graduated", "tiers": [] }),
            serde_json::json!({ "type": "tiered", "tiers": [] }),
            serde_json::json!({ "type": "flat", "amount": 1, "unit_amount": 2 }),
            serde_json::json!({ "amount": 1 }),
        ] {
            assert!(
                serde_json::from_value::<PriceModel>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        let err = serde_json::from_value::<PriceModel>(serde_json::json!({
            "type": "graduated",
            "tiers": [{ "up_to": 200, "unit_amount": 1 }, { "up_to": 100, "unit_amount": 1 },
                      { "unit_amount": 1 }]
        }))
        .unwrap_err();
        assert!(err.to_string().contains("tiers must ascend: 100 after 200"));
    }

    #[test]
    fn terms_return_the_validated_wire_form() {
        let m = package(1000, 100);
        assert_eq!(
            m.terms(),
            &PriceModelIn::Package {
                amount: 1000,
                package_size: 100
            }
        );
        assert_eq!(PriceModelIn::from(m.clone()), m.terms().clone());
    }

    #[test]
    fn usage_metric_names_are_checked() {
        for good in ["api_calls", "storage.gb-hours", "a", &"x".repeat(100)] {
            let usage = Usage::parse(good, Aggregation::Sum).unwrap();
            assert_eq!(usage.metric(), good);
            assert_eq!(usage.aggregation(), Aggregation::Sum);
        }
        for bad in [
            "",
            "API_calls",
            "api calls",
            "api/calls",
            "émission",
            &"x".repeat(101),
        ] {
            let err = Usage::parse(bad, Aggregation::Sum).unwrap_err();
            assert_eq!(
                err.0, "metric must be 1 to 100 characters of a-z, 0-9, _, . or -",
                "{bad}"
            );
        }
    }

    #[test]
    fn usage_json_is_validated_on_the_way_in() {
        let usage: Usage = serde_json::from_value(serde_json::json!({
            "metric": "api_calls", "aggregation": "max"
        }))
        .unwrap();
        assert_eq!(usage, Usage::parse("api_calls", Aggregation::Max).unwrap());
        assert_eq!(
            serde_json::to_value(&usage).unwrap(),
            serde_json::json!({ "metric": "api_calls", "aggregation": "max" })
        );
        assert!(
            serde_json::from_value::<Usage>(serde_json::json!({
                "metric": "API", "aggregation": "sum"
            }))
            .is_err()
        );
        assert!(
            serde_json::from_value::<Usage>(serde_json::json!({
                "metric": "api", "aggregation": "average"
            }))
            .is_err()
        );
    }

    /// Valid tiers: between 1 and 6 rows with strictly ascending bounds, the last unbounded.
    fn tiers_strategy() -> impl Strategy<Value = Vec<Tier>> {
        prop::collection::vec((1u64..50, 0i64..10_000, 0i64..5_000), 1..=6).prop_map(|rows| {
            let mut bound = 0;
            let last = rows.len() - 1;
            rows.into_iter()
                .enumerate()
                .map(|(index, (width, unit_amount, flat_amount))| {
                    bound += width;
                    tier((index < last).then_some(bound), unit_amount, flat_amount)
                })
                .collect()
        })
    }

    /// The first unit of each tier, in order: 1, then one past each bound.
    fn first_units(tiers: &[Tier]) -> Vec<u64> {
        std::iter::once(1)
            .chain(tiers.iter().filter_map(|t| t.up_to).map(|up_to| up_to + 1))
            .collect()
    }

    proptest! {
        #[test]
        fn graduated_is_monotonically_non_decreasing(tiers in tiers_strategy(), quantity in 0u64..400) {
            let m = graduated(tiers);
            prop_assert!(m.amount_for(quantity)? <= m.amount_for(quantity + 1)?);
        }

        #[test]
        fn graduated_amount_at_a_tier_bound_is_the_sum_of_full_tiers(tiers in tiers_strategy()) {
            let m = graduated(tiers.clone());
            let mut expected = 0i64;
            let mut below = 0u64;
            for t in &tiers {
                let Some(up_to) = t.up_to else { break };
                let width = i64::try_from(up_to - below).unwrap();
                expected += width * t.unit_amount + t.flat_amount;
                prop_assert_eq!(m.amount_for(up_to)?, expected);
                below = up_to;
            }
        }

        #[test]
        fn graduated_step_is_the_unit_amount_of_the_next_units_tier(
            tiers in tiers_strategy(),
            quantity in 0u64..400,
        ) {
            let m = graduated(tiers.clone());
            let next = quantity + 1;
            let starts = first_units(&tiers);
            // The tier holding unit `next` is the last one starting at or before it.
            let index = starts.iter().rposition(|&start| start <= next).unwrap();
            let t = tiers[index];
            let expected = t.unit_amount + if starts[index] == next { t.flat_amount } else { 0 };
            prop_assert_eq!(m.amount_for(next)? - m.amount_for(quantity)?, expected);
        }

        #[test]
        fn volume_at_a_bound_uses_that_tier_and_one_more_uses_the_next(tiers in tiers_strategy()) {
            let m = volume(tiers.clone());
            for (index, t) in tiers.iter().enumerate() {
                let Some(up_to) = t.up_to else { break };
                let q = i64::try_from(up_to).unwrap();
                prop_assert_eq!(m.amount_for(up_to)?, q * t.unit_amount + t.flat_amount);
                let after = tiers[index + 1];
                prop_assert_eq!(m.amount_for(up_to + 1)?, (q + 1) * after.unit_amount + after.flat_amount);
            }
        }

        #[test]
        fn package_rounds_up_to_whole_packages_property(
            amount in 0i64..100_000,
            package_size in 1u64..1_000,
            quantity in 1u64..1_000_000,
        ) {
            let charged = package(amount, package_size).amount_for(quantity)?;
            let packages = quantity / package_size + u64::from(quantity % package_size != 0);
            prop_assert_eq!(charged, amount * i64::try_from(packages).unwrap());
            // Just enough packages: they hold the quantity, one fewer would not.
            prop_assert!(packages * package_size >= quantity);
            prop_assert!((packages - 1) * package_size < quantity);
        }

        #[test]
        fn per_unit_is_linear(unit_amount in 0i64..1_000_000, a in 0u64..1_000_000, b in 0u64..1_000_000) {
            let m = per_unit(unit_amount);
            prop_assert_eq!(m.amount_for(a + b)?, m.amount_for(a)? + m.amount_for(b)?);
            prop_assert_eq!(m.amount_for(a)?, unit_amount * i64::try_from(a).unwrap());
        }

        #[test]
        fn huge_inputs_give_overflow_errors_not_panics(
            amount in 0i64..=i64::MAX,
            other in 0i64..=i64::MAX,
            size in 1u64..=u64::MAX,
            bound in 1u64..=u64::MAX - 1,
            quantity in any::<u64>(),
        ) {
            let tiers = vec![tier(Some(bound), amount, other), tier(None, other, amount)];
            let models = [
                flat(amount),
                per_unit(amount),
                package(amount, size),
                graduated(tiers.clone()),
                volume(tiers),
            ];
            for m in models {
                match m.amount_for(quantity) {
                    Ok(value) => prop_assert!(value >= 0),
                    Err(e) => prop_assert_eq!(e, PricingError::Overflow),
                }
            }
            let exact = i128::from(quantity) * i128::from(amount);
            prop_assert_eq!(
                per_unit(amount).amount_for(quantity).ok(),
                i64::try_from(exact).ok()
            );
        }

        #[test]
        fn price_model_json_round_trips(tiers in tiers_strategy(), graduated_model in any::<bool>()) {
            let m = if graduated_model { graduated(tiers) } else { volume(tiers) };
            let json = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<PriceModel>(&json).unwrap(), m);
        }
    }
}
