//! A bundle's price: its members bought separately, less the bundle's discount, with the one
//! rounding rule of [`super::money`] (half away from zero, on the total, never per member).

use super::money::basis_points;

/// What a bundle costs, in minor units of its currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleTotals {
    /// The members bought separately.
    pub list: i64,
    /// What the discount takes off the list amount.
    pub savings: i64,
    /// `list - savings`: the bundle's price.
    pub amount: i64,
}

/// Why a bundle cannot be priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BundleTotalsError {
    #[error("the total is too large")]
    TotalTooLarge,
    #[error("the discount overflows the total")]
    DiscountOverflows,
}

/// Totals of members costing `members` (each for its quantity), `discount_bps` off (at most
/// 10 000, all of it).
pub fn totals(members: &[i64], discount_bps: u32) -> Result<BundleTotals, BundleTotalsError> {
    let list = members
        .iter()
        .try_fold(0i64, |sum, m| sum.checked_add(*m))
        .ok_or(BundleTotalsError::TotalTooLarge)?;
    let savings = basis_points(list, discount_bps).ok_or(BundleTotalsError::DiscountOverflows)?;
    Ok(BundleTotals {
        list,
        savings,
        amount: list - savings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_discount_applies_to_the_members_total_rounded_once() {
        // 3 × 333 = 999; 10 % of it is 99.9, rounded to 100 (per member it would be 3 × 33).
        assert_eq!(
            totals(&[333, 333, 333], 1000),
            Ok(BundleTotals {
                list: 999,
                savings: 100,
                amount: 899
            })
        );
        // Half a cent rounds away from zero: 5 % of 1 010 is 50.5.
        assert_eq!(totals(&[1000, 10], 500).map(|t| t.savings), Ok(51));
    }

    #[test]
    fn no_discount_and_a_full_discount_are_the_ends() {
        assert_eq!(
            totals(&[2999, 4999], 0),
            Ok(BundleTotals {
                list: 7998,
                savings: 0,
                amount: 7998
            })
        );
        assert_eq!(
            totals(&[2999, 4999], 10_000),
            Ok(BundleTotals {
                list: 7998,
                savings: 7998,
                amount: 0
            })
        );
        assert_eq!(
            totals(&[], 1000),
            Ok(BundleTotals {
                list: 0,
                savings: 0,
                amount: 0
            })
        );
    }

    #[test]
    fn a_total_past_i64_is_refused_not_wrapped() {
        assert_eq!(
            totals(&[i64::MAX, 1], 0),
            Err(BundleTotalsError::TotalTooLarge)
        );
        assert_eq!(totals(&[i64::MAX], 0).map(|t| t.amount), Ok(i64::MAX));
    }

    proptest! {
        #[test]
        fn savings_and_amount_add_up_to_the_list(
            members in proptest::collection::vec(0i64..1_000_000_000, 0..20),
            bps in 0u32..=10_000,
        ) {
            let t = totals(&members, bps).unwrap();
            prop_assert_eq!(t.list, members.iter().sum::<i64>());
            prop_assert_eq!(t.savings + t.amount, t.list);
            prop_assert!(t.savings >= 0 && t.savings <= t.list);
            // Within half a unit of the exact discount.
            let exact = i128::from(t.list) * i128::from(bps);
            prop_assert!((i128::from(t.savings) * 10_000 - exact).abs() <= 5_000);
        }
    }
}
