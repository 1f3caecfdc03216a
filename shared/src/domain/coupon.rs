//! Coupons: a discount (a percentage in basis points, or an amount in one currency), how long it
//! lasts once redeemed (once, for N months, forever), and when it can no longer be redeemed.
//! The amounts are pure integer arithmetic with the one rounding rule of [`super::money`].

use chrono::{DateTime, Months, Utc};

use super::{ValidationError, money::Currency};

/// What a coupon takes off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discount {
    /// Basis points of the amount: 1 to 10,000 (1250 = 12.5 %).
    Percent(u32),
    /// A fixed amount in minor units of one currency, at least 1.
    Amount { amount: i64, currency: Currency },
}

impl Discount {
    /// Exactly one of a percentage and an amount (with its currency).
    pub fn parse(
        percent_off_bps: Option<u32>,
        amount_off: Option<i64>,
        currency: Option<Currency>,
    ) -> Result<Self, (&'static str, ValidationError)> {
        let err = |field, msg: &str| Err((field, ValidationError(msg.into())));
        match (percent_off_bps, amount_off, currency) {
            (Some(_), Some(_), _) => err(
                "percent_off_bps",
                "give either percent_off_bps or amount_off, not both",
            ),
            (Some(bps), None, None) if (1..=10_000).contains(&bps) => Ok(Discount::Percent(bps)),
            (Some(_), None, None) => err("percent_off_bps", "must be 1 to 10000"),
            (Some(_), None, Some(_)) => err("currency", "goes with amount_off only"),
            (None, Some(amount), Some(currency)) if amount >= 1 => {
                Ok(Discount::Amount { amount, currency })
            }
            (None, Some(_), Some(_)) => err("amount_off", "must be at least 1"),
            (None, Some(_), None) => err("currency", "is required with amount_off"),
            (None, None, _) => err("percent_off_bps", "give percent_off_bps or amount_off"),
        }
    }

    /// What the discount takes off `subtotal` (minor units of `currency`): never more than the
    /// subtotal, nothing off a subtotal of zero or less, and nothing when an amount's currency
    /// is another one. A percentage rounds half away from zero.
    pub fn off(self, subtotal: i64, currency: Currency) -> i64 {
        if subtotal <= 0 {
            return 0;
        }
        match self {
            Discount::Percent(bps) => super::money::basis_points(subtotal, bps)
                .unwrap_or(0)
                .min(subtotal),
            Discount::Amount {
                amount,
                currency: c,
            } if c == currency => amount.min(subtotal),
            Discount::Amount { .. } => 0,
        }
    }
}

/// How long a redeemed coupon keeps discounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duration {
    /// The first invoice only.
    Once,
    /// Invoices for periods starting within this many months (1 to 120) of the redemption.
    Repeating(u32),
    Forever,
}

impl Duration {
    pub fn parse(
        duration: &str,
        months: Option<u32>,
    ) -> Result<Self, (&'static str, ValidationError)> {
        let err = |field, msg: &str| Err((field, ValidationError(msg.into())));
        match (duration, months) {
            ("once", None) => Ok(Duration::Once),
            ("forever", None) => Ok(Duration::Forever),
            ("repeating", Some(m)) if (1..=120).contains(&m) => Ok(Duration::Repeating(m)),
            ("repeating", Some(_)) => err("duration_in_months", "must be 1 to 120"),
            ("repeating", None) => err("duration_in_months", "is required when repeating"),
            ("once" | "forever", Some(_)) => {
                err("duration_in_months", "goes with a repeating duration only")
            }
            _ => err("duration", "must be once, repeating or forever"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Duration::Once => "once",
            Duration::Repeating(_) => "repeating",
            Duration::Forever => "forever",
        }
    }

    pub fn months(self) -> Option<u32> {
        match self {
            Duration::Repeating(m) => Some(m),
            _ => None,
        }
    }

    /// Whether the coupon, redeemed at `redeemed_at`, discounts the `nth` invoice since (0: the
    /// first) for a period starting at `period_start`.
    pub fn applies(
        self,
        redeemed_at: DateTime<Utc>,
        nth: u32,
        period_start: DateTime<Utc>,
    ) -> bool {
        match self {
            Duration::Once => nth == 0,
            Duration::Forever => true,
            Duration::Repeating(m) => redeemed_at
                .checked_add_months(Months::new(m))
                .is_none_or(|end| period_start < end),
        }
    }
}

/// Why a coupon cannot be redeemed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unredeemable {
    #[error("the coupon could be redeemed until {0}")]
    Expired(DateTime<Utc>),
    #[error("the coupon was redeemed the most times it may be ({0})")]
    MaxedOut(i32),
}

/// Whether a coupon can be redeemed at `now`: before `redeem_by`, and fewer times than
/// `max_redemptions`.
pub fn redeemable(
    now: DateTime<Utc>,
    redeem_by: Option<DateTime<Utc>>,
    max_redemptions: Option<i32>,
    times_redeemed: i32,
) -> Result<(), Unredeemable> {
    if let Some(by) = redeem_by
        && now >= by
    {
        return Err(Unredeemable::Expired(by));
    }
    if let Some(max) = max_redemptions
        && times_redeemed >= max
    {
        return Err(Unredeemable::MaxedOut(max));
    }
    Ok(())
}

/// Splits `total` over `amounts` in proportion to each positive amount (a credit or a zero
/// takes none), the cents left by rounding down going to the largest remainders (the first of
/// equal ones): the parts add up to `total` exactly, or to the positive amounts' sum when
/// `total` is larger, and no part exceeds its amount. A `total` of zero or less gives zeros.
pub fn allocate(total: i64, amounts: &[i64]) -> Vec<i64> {
    let positive: i128 = amounts.iter().map(|a| i128::from((*a).max(0))).sum();
    split(i128::from(total).min(positive), amounts)
}

/// Splits `total` over `weights` in proportion to each positive weight, the cents left by
/// rounding down going to the largest remainders (the first of equal ones): the parts add up
/// to `total` exactly. A `total` of zero or less, or no positive weight, gives zeros.
pub fn split_by_weight(total: i64, weights: &[i64]) -> Vec<i64> {
    split(i128::from(total), weights)
}

fn split(total: i128, weights: &[i64]) -> Vec<i64> {
    let positive: i128 = weights.iter().map(|a| i128::from((*a).max(0))).sum();
    let total = total.max(0);
    if total == 0 || positive == 0 {
        return vec![0; weights.len()];
    }
    let mut parts: Vec<i128> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::new();
    for (i, a) in weights.iter().enumerate() {
        let a = i128::from((*a).max(0));
        let exact = total * a;
        parts.push(exact / positive);
        remainders.push((exact % positive, i));
    }
    let mut left = total - parts.iter().sum::<i128>();
    // Largest remainder first; the earlier line first among equals. The cents left are fewer
    // than the lines with a remainder, so a line of zero never gets one.
    remainders.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        parts[i] += 1;
        left -= 1;
    }
    parts
        .into_iter()
        .map(|p| i64::try_from(p).unwrap_or(i64::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;

    fn usd() -> Currency {
        Currency::parse("usd").unwrap()
    }

    fn eur() -> Currency {
        Currency::parse("eur").unwrap()
    }

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 12, 0, 0).unwrap()
    }

    #[test]
    fn a_discount_is_a_percentage_or_an_amount_in_a_currency() {
        assert_eq!(
            Discount::parse(Some(1250), None, None),
            Ok(Discount::Percent(1250))
        );
        assert_eq!(
            Discount::parse(Some(1), None, None),
            Ok(Discount::Percent(1))
        );
        assert_eq!(
            Discount::parse(Some(10_000), None, None),
            Ok(Discount::Percent(10_000))
        );
        assert_eq!(
            Discount::parse(None, Some(500), Some(usd())),
            Ok(Discount::Amount {
                amount: 500,
                currency: usd()
            })
        );
        assert_eq!(
            Discount::parse(None, Some(1), Some(usd())).unwrap(),
            Discount::Amount {
                amount: 1,
                currency: usd()
            }
        );
        let field = |r: Result<Discount, (&'static str, ValidationError)>| r.unwrap_err().0;
        assert_eq!(
            field(Discount::parse(Some(0), None, None)),
            "percent_off_bps"
        );
        assert_eq!(
            field(Discount::parse(Some(10_001), None, None)),
            "percent_off_bps"
        );
        assert_eq!(
            field(Discount::parse(Some(10), Some(10), Some(usd()))),
            "percent_off_bps"
        );
        assert_eq!(
            field(Discount::parse(Some(10), None, Some(usd()))),
            "currency"
        );
        assert_eq!(
            field(Discount::parse(None, Some(0), Some(usd()))),
            "amount_off"
        );
        assert_eq!(field(Discount::parse(None, Some(10), None)), "currency");
        assert_eq!(field(Discount::parse(None, None, None)), "percent_off_bps");
        assert_eq!(
            field(Discount::parse(None, None, Some(usd()))),
            "percent_off_bps"
        );
    }

    #[test]
    fn what_a_discount_takes_off_by_hand() {
        // 12.5 % of 2999 = 374.875 → 375; 50 % of 1 = 0.5 → 1 (half away from zero).
        assert_eq!(Discount::Percent(1250).off(2999, usd()), 375);
        assert_eq!(Discount::Percent(5000).off(1, usd()), 1);
        assert_eq!(Discount::Percent(10_000).off(4200, usd()), 4200);
        assert_eq!(Discount::Percent(3333).off(100, usd()), 33);
        let five = Discount::Amount {
            amount: 500,
            currency: usd(),
        };
        assert_eq!(five.off(2999, usd()), 500);
        assert_eq!(five.off(300, usd()), 300, "never more than the subtotal");
        assert_eq!(five.off(2999, eur()), 0, "another currency");
        assert_eq!(five.off(0, usd()), 0);
        assert_eq!(five.off(-100, usd()), 0, "nothing off a credit");
        assert_eq!(Discount::Percent(5000).off(-100, usd()), 0);
    }

    proptest! {
        #[test]
        fn a_discount_is_never_negative_nor_more_than_the_subtotal(
            subtotal in -1_000_000i64..=i64::MAX / 20_000,
            bps in 1u32..=10_000,
            amount in 1i64..=10_000_000,
        ) {
            for d in [Discount::Percent(bps), Discount::Amount { amount, currency: usd() }] {
                let off = d.off(subtotal, usd());
                prop_assert!(off >= 0);
                prop_assert!(off <= subtotal.max(0));
            }
            // Within half a unit of the exact percentage.
            if subtotal > 0 {
                let exact = i128::from(subtotal) * i128::from(bps);
                let off = i128::from(Discount::Percent(bps).off(subtotal, usd()));
                prop_assert!((off * 10_000 - exact).abs() <= 5_000);
            }
        }
    }

    #[test]
    fn a_duration_is_once_forever_or_repeating_for_1_to_120_months() {
        assert_eq!(Duration::parse("once", None), Ok(Duration::Once));
        assert_eq!(Duration::parse("forever", None), Ok(Duration::Forever));
        assert_eq!(
            Duration::parse("repeating", Some(3)),
            Ok(Duration::Repeating(3))
        );
        assert_eq!(
            Duration::parse("repeating", Some(1)),
            Ok(Duration::Repeating(1))
        );
        assert_eq!(
            Duration::parse("repeating", Some(120)),
            Ok(Duration::Repeating(120))
        );
        let field = |r: Result<Duration, (&'static str, ValidationError)>| r.unwrap_err().0;
        assert_eq!(
            field(Duration::parse("repeating", Some(0))),
            "duration_in_months"
        );
        assert_eq!(
            field(Duration::parse("repeating", Some(121))),
            "duration_in_months"
        );
        assert_eq!(
            field(Duration::parse("repeating", None)),
            "duration_in_months"
        );
        assert_eq!(
            field(Duration::parse("once", Some(3))),
            "duration_in_months"
        );
        assert_eq!(
            field(Duration::parse("forever", Some(3))),
            "duration_in_months"
        );
        assert_eq!(field(Duration::parse("weekly", None)), "duration");
        for d in [Duration::Once, Duration::Repeating(7), Duration::Forever] {
            assert_eq!(Duration::parse(d.as_str(), d.months()), Ok(d));
        }
        assert_eq!(Duration::Once.months(), None);
        assert_eq!(Duration::Forever.months(), None);
    }

    #[test]
    fn a_coupon_discounts_the_invoices_its_duration_covers() {
        let redeemed = at(2026, 1, 31);
        assert!(Duration::Once.applies(redeemed, 0, redeemed));
        assert!(!Duration::Once.applies(redeemed, 1, at(2026, 2, 28)));
        assert!(Duration::Forever.applies(redeemed, 40, at(2029, 6, 1)));
        // Three months from 31 Jan end on 30 Apr (the month has no 31st).
        let three = Duration::Repeating(3);
        assert!(three.applies(redeemed, 0, redeemed));
        assert!(three.applies(redeemed, 2, at(2026, 3, 31)));
        assert!(three.applies(
            redeemed,
            3,
            Utc.with_ymd_and_hms(2026, 4, 30, 11, 59, 59).unwrap()
        ));
        assert!(!three.applies(redeemed, 3, at(2026, 4, 30)));
        assert!(!three.applies(redeemed, 4, at(2026, 5, 31)));
    }

    #[test]
    fn a_coupon_is_redeemable_before_its_date_and_below_its_limit() {
        let now = at(2026, 6, 1);
        assert_eq!(redeemable(now, None, None, 1_000), Ok(()));
        assert_eq!(redeemable(now, Some(at(2026, 6, 2)), Some(3), 2), Ok(()));
        assert_eq!(
            redeemable(now, Some(now), None, 0),
            Err(Unredeemable::Expired(now))
        );
        assert_eq!(
            redeemable(now, Some(at(2026, 5, 1)), None, 0),
            Err(Unredeemable::Expired(at(2026, 5, 1)))
        );
        assert_eq!(
            redeemable(now, None, Some(3), 3),
            Err(Unredeemable::MaxedOut(3))
        );
        assert_eq!(
            redeemable(now, None, Some(3), 4),
            Err(Unredeemable::MaxedOut(3))
        );
    }

    #[test]
    fn a_split_by_weight_is_exact_and_without_a_positive_weight_gives_nothing() {
        // Weights need not cap the total: 1000 over rates of 1 and 3 parts.
        assert_eq!(split_by_weight(1000, &[1, 3]), vec![250, 750]);
        assert_eq!(split_by_weight(10, &[1, 1, 1]), vec![4, 3, 3]);
        assert_eq!(split_by_weight(100, &[0, 0]), vec![0, 0]);
        assert_eq!(split_by_weight(100, &[-5, 0]), vec![0, 0]);
        assert_eq!(split_by_weight(0, &[1, 2]), vec![0, 0]);
        assert_eq!(split_by_weight(-7, &[1, 2]), vec![0, 0]);
    }

    #[test]
    fn a_discount_splits_over_lines_in_proportion_and_the_cents_left_go_to_the_largest_remainders()
    {
        // 1000 over 3000 / 1000: 750 and 250 exactly.
        assert_eq!(allocate(1000, &[3000, 1000]), vec![750, 250]);
        // 100 over three equal lines: 33 each, the cent left to the first.
        assert_eq!(allocate(100, &[100, 100, 100]), vec![34, 33, 33]);
        // 10 over 10 / 20: 3.33 and 6.67 → 3 and 7 (the larger remainder takes the cent).
        assert_eq!(allocate(10, &[10, 20]), vec![3, 7]);
        // 3 over 1 / 5: 0.5 and 2.5, equal remainders → the first line takes the cent.
        assert_eq!(allocate(3, &[1, 5]), vec![1, 2]);
        // Credits and zeros take nothing; the total is capped by what can be discounted.
        assert_eq!(allocate(500, &[-200, 0, 300]), vec![0, 0, 300]);
        assert_eq!(allocate(0, &[100, 200]), vec![0, 0]);
        assert_eq!(allocate(-5, &[100]), vec![0]);
        assert_eq!(allocate(7, &[]), Vec::<i64>::new());
        // Amounts near the limit do not overflow.
        assert_eq!(
            allocate(i64::MAX, &[i64::MAX, i64::MAX]),
            vec![i64::MAX / 2 + 1, i64::MAX / 2]
        );
    }

    proptest! {
        #[test]
        fn parts_add_up_and_none_exceeds_its_line(
            total in -100i64..1_000_000,
            amounts in proptest::collection::vec(-1_000i64..100_000, 0..8),
        ) {
            let parts = allocate(total, &amounts);
            prop_assert_eq!(parts.len(), amounts.len());
            let positive: i64 = amounts.iter().map(|a| (*a).max(0)).sum();
            prop_assert_eq!(parts.iter().sum::<i64>(), total.max(0).min(positive));
            for (p, a) in parts.iter().zip(&amounts) {
                prop_assert!(*p >= 0 && *p <= (*a).max(0));
            }
        }
    }
}
