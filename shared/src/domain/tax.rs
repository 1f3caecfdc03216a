//! Tax on an invoice. A rate is parts per million of the taxed amount (8.875 % = 88,750 ppm),
//! exclusive (added on top of the amounts) or inclusive (already inside them).
//!
//! - The taxed amount is what the lines add up to after discounts. Below zero (an invoice that
//!   credits more than it charges) the tax is the opposite of that amount's tax: a credit gives
//!   back the tax its charge took.
//! - Inclusive rates: the amounts hold their tax. The base is `round(amount / (1 + Σ inclusive
//!   rates))`, and the tax they hold (`amount − base`) is split over the inclusive rates in
//!   proportion to their rates, cents to the largest remainders: the split adds up exactly.
//! - Exclusive rates: each takes `round(base × rate)` on its own, where the base is the amount
//!   without the inclusive taxes.
//! - Rounding is half away from zero, in integer arithmetic.

use super::{coupon::split_by_weight, money::mul_ratio_round_half_up};

/// One million: a rate of 100 %.
pub const PPM: i64 = 1_000_000;

/// A tax rate as an invoice applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Parts per million, 0 to 1,000,000.
    pub ppm: u32,
    pub inclusive: bool,
}

/// What one rate took: the amount it taxed (without inclusive taxes) and its tax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaxAmount {
    pub taxable: i64,
    pub amount: i64,
}

/// Why tax cannot be computed: amounts past what an `i64` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the tax on the invoice's amounts is too large")]
pub struct TaxOverflow;

/// The tax of each rate on `amount` (the lines after discounts), in the order of `rates`.
pub fn compute(amount: i64, rates: &[Rate]) -> Result<Vec<TaxAmount>, TaxOverflow> {
    if amount < 0 {
        let opposite = compute(amount.checked_neg().ok_or(TaxOverflow)?, rates)?;
        return Ok(opposite
            .into_iter()
            .map(|t| TaxAmount {
                taxable: -t.taxable,
                amount: -t.amount,
            })
            .collect());
    }
    let taxed = amount;
    let inclusive_ppm: i64 = rates
        .iter()
        .filter(|r| r.inclusive)
        .map(|r| i64::from(r.ppm))
        .sum();
    let base = if inclusive_ppm == 0 {
        taxed
    } else {
        mul_ratio_round_half_up(taxed, PPM, PPM + inclusive_ppm).ok_or(TaxOverflow)?
    };
    let weights: Vec<i64> = rates
        .iter()
        .map(|r| if r.inclusive { i64::from(r.ppm) } else { 0 })
        .collect();
    let held = split_by_weight(taxed - base, &weights);
    rates
        .iter()
        .zip(held)
        .map(|(r, held)| {
            let amount = if r.inclusive {
                held
            } else {
                mul_ratio_round_half_up(base, i64::from(r.ppm), PPM).ok_or(TaxOverflow)?
            };
            Ok(TaxAmount {
                taxable: base,
                amount,
            })
        })
        .collect()
}

/// The tax of each rate a credit note gives back, in the order of `rates` (the invoice's):
/// the invoice's tax on what its notes have credited of its lines once this one is issued
/// (`after`), less that tax before it (`before`), what is credited counted up to the invoice's
/// taxed amount `net` (its lines after discounts). Notes that credit all of `net` give back
/// exactly the invoice's tax, each within a cent of its exact share; an invoice that taxed
/// nothing (`net` ≤ 0) gives nothing back.
pub fn credited(
    net: i64,
    before: i64,
    after: i64,
    rates: &[Rate],
) -> Result<Vec<TaxAmount>, TaxOverflow> {
    let up_to = |credited: i64| compute(credited.clamp(0, net.max(0)), rates);
    let (was, is) = (up_to(before)?, up_to(after)?);
    Ok(is
        .iter()
        .zip(&was)
        .map(|(is, was)| TaxAmount {
            taxable: is.taxable - was.taxable,
            amount: is.amount - was.amount,
        })
        .collect())
}

/// What the taxes add to an invoice's total: the exclusive ones (inclusive ones are inside the
/// amounts already).
pub fn added(rates: &[Rate], taxes: &[TaxAmount]) -> Result<i64, TaxOverflow> {
    rates
        .iter()
        .zip(taxes)
        .filter(|(r, _)| !r.inclusive)
        .try_fold(0i64, |sum, (_, t)| {
            sum.checked_add(t.amount).ok_or(TaxOverflow)
        })
}

/// All the tax of an invoice, inclusive and exclusive.
pub fn total(taxes: &[TaxAmount]) -> Result<i64, TaxOverflow> {
    taxes
        .iter()
        .try_fold(0i64, |sum, t| sum.checked_add(t.amount).ok_or(TaxOverflow))
}

/// A rate from a percentage with at most four decimals (`8.875` → 88,750 ppm); `None` for a
/// percentage outside 0 to 100 or with a fifth decimal (what lies within a ten-thousandth of
/// a basis point of four decimals is the noise of binary floats, and reads as them).
pub fn ppm_of_percentage(percentage: f64) -> Option<u32> {
    if !percentage.is_finite() || !(0.0..=100.0).contains(&percentage) {
        return None;
    }
    let scaled = percentage * 10_000.0;
    let ppm = scaled.round();
    if (scaled - ppm).abs() > 1e-6 {
        return None;
    }
    // 0 ≤ ppm ≤ 1,000,000: exact as an integer.
    Some(ppm as u32)
}

/// The percentage a rate is (88,750 ppm → 8.875).
pub fn percentage_of_ppm(ppm: u32) -> f64 {
    f64::from(ppm) / 10_000.0
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn excl(ppm: u32) -> Rate {
        Rate {
            ppm,
            inclusive: false,
        }
    }

    fn incl(ppm: u32) -> Rate {
        Rate {
            ppm,
            inclusive: true,
        }
    }

    #[test]
    fn an_exclusive_rate_is_added_on_top_rounded_half_away_from_zero() {
        // 20 % of 1234 = 246.8 → 247.
        assert_eq!(
            compute(1234, &[excl(200_000)]).unwrap(),
            vec![TaxAmount {
                taxable: 1234,
                amount: 247
            }]
        );
        // 8.875 % of 1000 = 88.75 → 89; of 200 = 17.75 → 18; 5 % of 10 = 0.5 → 1.
        assert_eq!(compute(1000, &[excl(88_750)]).unwrap()[0].amount, 89);
        assert_eq!(compute(200, &[excl(88_750)]).unwrap()[0].amount, 18);
        assert_eq!(compute(10, &[excl(50_000)]).unwrap()[0].amount, 1);
        assert_eq!(compute(9, &[excl(50_000)]).unwrap()[0].amount, 0);
    }

    #[test]
    fn an_inclusive_rate_is_the_part_of_the_amount_it_holds() {
        // 1200 with 20 % inside: base 1000, tax 200.
        assert_eq!(
            compute(1200, &[incl(200_000)]).unwrap(),
            vec![TaxAmount {
                taxable: 1000,
                amount: 200
            }]
        );
        // 1000 with 19 % inside: base round(840.34) = 840, tax 160.
        assert_eq!(
            compute(1000, &[incl(190_000)]).unwrap(),
            vec![TaxAmount {
                taxable: 840,
                amount: 160
            }]
        );
    }

    #[test]
    fn inclusive_rates_split_what_the_amount_holds_and_exclusive_ones_tax_the_base() {
        // 1150 holding 10 % and 5 %: base 1000, 150 held, split 100 / 50; then 8 % of the base.
        let taxes = compute(1150, &[incl(100_000), incl(50_000), excl(80_000)]).unwrap();
        assert_eq!(
            taxes,
            vec![
                TaxAmount {
                    taxable: 1000,
                    amount: 100
                },
                TaxAmount {
                    taxable: 1000,
                    amount: 50
                },
                TaxAmount {
                    taxable: 1000,
                    amount: 80
                },
            ]
        );
        let rates = [incl(100_000), incl(50_000), excl(80_000)];
        assert_eq!(added(&rates, &taxes), Ok(80));
        assert_eq!(total(&taxes), Ok(230));
    }

    #[test]
    fn a_credit_gives_back_the_tax_of_the_same_charge_and_no_rate_takes_nothing() {
        let rates = [excl(200_000), incl(100_000)];
        // 500 holds 45 of inclusive tax (base 455), which takes 91 of exclusive tax.
        let charge = compute(500, &rates).unwrap();
        assert_eq!(
            charge,
            vec![
                TaxAmount {
                    taxable: 455,
                    amount: 91
                },
                TaxAmount {
                    taxable: 455,
                    amount: 45
                }
            ]
        );
        assert_eq!(
            compute(-500, &rates).unwrap(),
            vec![
                TaxAmount {
                    taxable: -455,
                    amount: -91
                },
                TaxAmount {
                    taxable: -455,
                    amount: -45
                }
            ]
        );
        assert_eq!(added(&rates, &compute(-500, &rates).unwrap()), Ok(-91));
        assert_eq!(total(&compute(-500, &rates).unwrap()), Ok(-136));
        assert_eq!(compute(i64::MIN, &rates), Err(TaxOverflow));
        assert_eq!(
            compute(-1, &[excl(500_000)]).unwrap(),
            vec![TaxAmount {
                taxable: -1,
                amount: -1
            }],
            "half a cent of credit rounds away from zero, as half a cent of charge does"
        );
        assert_eq!(
            compute(1000, &[excl(0)]).unwrap(),
            vec![TaxAmount {
                taxable: 1000,
                amount: 0
            }]
        );
        assert!(compute(1000, &[]).unwrap().is_empty());
    }

    #[test]
    fn credit_notes_give_back_the_tax_of_what_they_credit_and_all_of_it_once_all_is_credited() {
        let rates = [excl(200_000)];
        // 100.00 at 20 %: 20.00 of tax. A third, a third, the rest: 6.67 + 6.66 + 6.67.
        let parts: Vec<i64> = [(0, 3333), (3333, 6666), (6666, 10_000)]
            .iter()
            .map(|(b, a)| credited(10_000, *b, *a, &rates).unwrap()[0].amount)
            .collect();
        assert_eq!(parts, [667, 666, 667]);
        assert_eq!(
            credited(10_000, 3333, 6666, &rates).unwrap(),
            vec![TaxAmount {
                taxable: 3333,
                amount: 666
            }]
        );
        // Past the invoice's taxed amount (lines credited beyond what negative lines left of
        // it): no more tax than the invoice took.
        assert_eq!(
            credited(10_000, 9000, 12_000, &rates).unwrap()[0].amount,
            200
        );
        assert_eq!(
            credited(10_000, 10_000, 12_000, &rates).unwrap(),
            vec![TaxAmount::default()]
        );
        // An invoice that taxed nothing, or credited more than it charged: nothing back.
        assert_eq!(
            credited(0, 0, 500, &rates).unwrap(),
            vec![TaxAmount::default()]
        );
        assert_eq!(
            credited(-1000, 0, 500, &rates).unwrap(),
            vec![TaxAmount::default()]
        );
        // Inclusive: the part of the credited amount it holds (120.00 holding 20 %: 20.00).
        assert_eq!(
            credited(12_000, 0, 12_000, &[incl(200_000)]).unwrap(),
            vec![TaxAmount {
                taxable: 10_000,
                amount: 2000
            }]
        );
        assert!(credited(10_000, 0, 10_000, &[]).unwrap().is_empty());
    }

    #[test]
    fn sums_past_64_bits_are_an_error_not_a_wrap() {
        let rates = [excl(1_000_000), excl(1_000_000)];
        let taxes = compute(i64::MAX, &rates).unwrap();
        assert_eq!(taxes[0].amount, i64::MAX);
        assert_eq!(added(&rates, &taxes), Err(TaxOverflow));
        assert_eq!(total(&taxes), Err(TaxOverflow));
        // An inclusive rate on the largest amount still splits it exactly.
        let held = compute(i64::MAX, &[incl(1)]).unwrap();
        assert_eq!(held[0].taxable + held[0].amount, i64::MAX);
    }

    #[test]
    fn percentages_read_to_four_decimals() {
        assert_eq!(ppm_of_percentage(8.875), Some(88_750));
        assert_eq!(ppm_of_percentage(19.6), Some(196_000));
        assert_eq!(ppm_of_percentage(0.0001), Some(1));
        assert_eq!(ppm_of_percentage(100.0), Some(1_000_000));
        assert_eq!(ppm_of_percentage(0.0), Some(0));
        assert_eq!(ppm_of_percentage(0.00001), None);
        assert_eq!(ppm_of_percentage(100.0001), None);
        assert_eq!(ppm_of_percentage(-1.0), None);
        assert_eq!(ppm_of_percentage(f64::NAN), None);
        assert_eq!(percentage_of_ppm(88_750), 8.875);
    }

    proptest! {
        #[test]
        fn inclusive_taxes_and_the_base_add_up_to_the_amount(
            amount in 0i64..10_000_000_000,
            ppms in proptest::collection::vec(0u32..=300_000, 1..4),
        ) {
            let rates: Vec<Rate> = ppms.iter().map(|p| incl(*p)).collect();
            let taxes = compute(amount, &rates).unwrap();
            let base = taxes[0].taxable;
            prop_assert_eq!(base + total(&taxes).unwrap(), amount);
            prop_assert_eq!(added(&rates, &taxes), Ok(0));
            // Each share is within a cent of its exact part.
            let sum: i64 = ppms.iter().map(|p| i64::from(*p)).sum();
            for (t, p) in taxes.iter().zip(&ppms) {
                let exact = (amount - base) as f64 * f64::from(*p) / sum.max(1) as f64;
                prop_assert!((t.amount as f64 - exact).abs() <= 1.0);
            }
        }

        #[test]
        fn a_credit_s_tax_is_the_opposite_of_the_same_charge_s(
            amount in 1i64..10_000_000_000,
            ppms in proptest::collection::vec(0u32..=300_000, 1..4),
            inclusive in proptest::collection::vec(any::<bool>(), 4),
        ) {
            let rates: Vec<Rate> = ppms
                .iter()
                .zip(&inclusive)
                .map(|(p, i)| Rate { ppm: *p, inclusive: *i })
                .collect();
            let charge = compute(amount, &rates).unwrap();
            let credit = compute(-amount, &rates).unwrap();
            for (c, d) in charge.iter().zip(&credit) {
                prop_assert_eq!(d.amount, -c.amount);
                prop_assert_eq!(d.taxable, -c.taxable);
            }
            prop_assert_eq!(added(&rates, &credit).unwrap(), -added(&rates, &charge).unwrap());
        }

        #[test]
        fn credit_notes_that_credit_everything_give_back_the_invoice_s_tax_exactly(
            net in 1i64..10_000_000_000,
            cuts in proptest::collection::vec(0.0f64..1.0, 0..6),
            ppms in proptest::collection::vec(0u32..=300_000, 1..4),
            inclusive in proptest::collection::vec(any::<bool>(), 4),
        ) {
            let rates: Vec<Rate> = ppms
                .iter()
                .zip(&inclusive)
                .map(|(p, i)| Rate { ppm: *p, inclusive: *i })
                .collect();
            // Notes crediting the net in pieces, the last one all that is left.
            let mut marks: Vec<i64> = cuts.iter().map(|c| (net as f64 * c) as i64).collect();
            marks.push(0);
            marks.push(net);
            marks.sort_unstable();
            let mut given = vec![0i64; rates.len()];
            for w in marks.windows(2) {
                let notes = credited(net, w[0], w[1], &rates).unwrap();
                let exact = compute(w[1], &rates).unwrap();
                for ((g, n), (r, e)) in given.iter_mut().zip(&notes).zip(rates.iter().zip(&exact)) {
                    *g += n.amount;
                    // An exclusive rate's share of a note is within a cent of the rate of the
                    // base it credits (the amount without the inclusive taxes).
                    if !r.inclusive {
                        if rates.iter().all(|r| !r.inclusive) {
                            prop_assert_eq!(n.taxable, w[1] - w[0]);
                        }
                        let share = n.taxable as f64 * f64::from(r.ppm) / 1e6;
                        prop_assert!((n.amount as f64 - share).abs() <= 1.0 + 1e-6);
                    }
                    prop_assert_eq!(*g, e.amount);
                }
            }
            let whole: Vec<i64> = compute(net, &rates).unwrap().iter().map(|t| t.amount).collect();
            prop_assert_eq!(given, whole);
        }

        #[test]
        fn an_exclusive_tax_is_within_half_a_cent_of_the_exact_tax(
            amount in 0i64..10_000_000_000,
            ppm in 0u32..=1_000_000,
        ) {
            let taxes = compute(amount, &[excl(ppm)]).unwrap();
            let exact = amount as f64 * f64::from(ppm) / 1e6;
            prop_assert!((taxes[0].amount as f64 - exact).abs() <= 0.5 + 1e-6);
            prop_assert_eq!(taxes[0].taxable, amount);
        }
    }
}
