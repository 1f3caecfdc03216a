//! Currencies, amounts in minor units and the one rounding rule for money.
//!
//! # Amounts
//!
//! An amount is an `i64` count of the currency's minor unit (cents for `usd`, yen for `jpy`,
//! fils for `kwd`), exactly what the database stores in a `BIGINT` next to the currency code.
//! Money math never touches floating point.
//!
//! # Rounding
//!
//! Every fee, discount and proration that yields a fraction of a minor unit goes through
//! [`mul_ratio_round_half_up`] (or [`basis_points`], which is that function with a
//! denominator of 10 000). The rule is:
//!
//! 1. compute the exact rational result `amount × numerator / denominator` in `i128`, so the
//!    product of two `i64` values never overflows;
//! 2. round it to the nearest minor unit, with halves rounded **away from zero**
//!    (`0.5 → 1`, `-0.5 → -1`, `2.5 → 3`), so a credit is always the exact negative of the
//!    matching charge;
//! 3. return `None` when the denominator is zero or the result does not fit in an `i64`.
//!
//! Callers round once, at the end of a calculation, never at intermediate steps.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ValidationError;
use super::interval::Interval;

/// Supported ISO 4217 codes (lower case, sorted for binary search) with the number of digits
/// after the decimal point in the minor unit.
///
/// Exponents follow the payment networks rather than ISO where the two differ: `isk`, for
/// example, is charged in hundredths. Withdrawn codes (`hrk`, `mro`, `std`, `sll`, `vef`) are
/// not listed.
const CURRENCIES: &[(&str, u8)] = &[
    ("aed", 2),
    ("afn", 2),
    ("all", 2),
    ("amd", 2),
    ("ang", 2),
    ("aoa", 2),
    ("ars", 2),
    ("aud", 2),
    ("awg", 2),
    ("azn", 2),
    ("bam", 2),
    ("bbd", 2),
    ("bdt", 2),
    ("bgn", 2),
    ("bhd", 3),
    ("bif", 0),
    ("bmd", 2),
    ("bnd", 2),
    ("bob", 2),
    ("brl", 2),
    ("bsd", 2),
    ("bwp", 2),
    ("byn", 2),
    ("bzd", 2),
    ("cad", 2),
    ("cdf", 2),
    ("chf", 2),
    ("clp", 0),
    ("cny", 2),
    ("cop", 2),
    ("crc", 2),
    ("cve", 2),
    ("czk", 2),
    ("djf", 0),
    ("dkk", 2),
    ("dop", 2),
    ("dzd", 2),
    ("egp", 2),
    ("etb", 2),
    ("eur", 2),
    ("fjd", 2),
    ("fkp", 2),
    ("gbp", 2),
    ("gel", 2),
    ("gip", 2),
    ("gmd", 2),
    ("gnf", 0),
    ("gtq", 2),
    ("gyd", 2),
    ("hkd", 2),
    ("hnl", 2),
    ("htg", 2),
    ("huf", 2),
    ("idr", 2),
    ("ils", 2),
    ("inr", 2),
    ("isk", 2),
    ("jmd", 2),
    ("jod", 3),
    ("jpy", 0),
    ("kes", 2),
    ("kgs", 2),
    ("khr", 2),
    ("kmf", 0),
    ("krw", 0),
    ("kwd", 3),
    ("kyd", 2),
    ("kzt", 2),
    ("lak", 2),
    ("lbp", 2),
    ("lkr", 2),
    ("lrd", 2),
    ("lsl", 2),
    ("mad", 2),
    ("mdl", 2),
    ("mga", 0),
    ("mkd", 2),
    ("mmk", 2),
    ("mnt", 2),
    ("mop", 2),
    ("mur", 2),
    ("mvr", 2),
    ("mwk", 2),
    ("mxn", 2),
    ("myr", 2),
    ("mzn", 2),
    ("nad", 2),
    ("ngn", 2),
    ("nio", 2),
    ("nok", 2),
    ("npr", 2),
    ("nzd", 2),
    ("omr", 3),
    ("pab", 2),
    ("pen", 2),
    ("pgk", 2),
    ("php", 2),
    ("pkr", 2),
    ("pln", 2),
    ("pyg", 0),
    ("qar", 2),
    ("ron", 2),
    ("rsd", 2),
    ("rub", 2),
    ("rwf", 0),
    ("sar", 2),
    ("sbd", 2),
    ("scr", 2),
    ("sek", 2),
    ("sgd", 2),
    ("shp", 2),
    ("sle", 2),
    ("sos", 2),
    ("srd", 2),
    ("szl", 2),
    ("thb", 2),
    ("tjs", 2),
    ("tnd", 3),
    ("top", 2),
    ("try", 2),
    ("ttd", 2),
    ("twd", 2),
    ("tzs", 2),
    ("uah", 2),
    ("ugx", 0),
    ("usd", 2),
    ("uyu", 2),
    ("uzs", 2),
    ("vnd", 0),
    ("vuv", 0),
    ("wst", 2),
    ("xaf", 0),
    ("xcd", 2),
    ("xof", 0),
    ("xpf", 0),
    ("yer", 2),
    ("zar", 2),
    ("zmw", 2),
];

/// Currencies shown with a symbol before the amount; every other currency is shown with its
/// upper-case code after the amount (`1.500 KWD`, `10.00 CHF`).
const SYMBOLS: &[(&str, &str)] = &[
    ("aud", "A$"),
    ("cad", "CA$"),
    ("cny", "CN¥"),
    ("eur", "€"),
    ("gbp", "£"),
    ("inr", "₹"),
    ("jpy", "¥"),
    ("usd", "$"),
    ("zar", "R"),
];

/// A supported ISO 4217 currency, held as its lower-case code (`usd`), the form the API
/// accepts back and the database stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    exponent: u8,
}

impl Currency {
    /// Parses a three-letter code in any case (`USD`, `usd`, `Usd`), ignoring surrounding
    /// whitespace.
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let code = raw.trim().to_ascii_lowercase();
        CURRENCIES
            .binary_search_by(|(known, _)| (*known).cmp(code.as_str()))
            .ok()
            .and_then(|index| CURRENCIES.get(index))
            .map(|&(code, exponent)| Self { code, exponent })
            .ok_or_else(|| ValidationError("must be an ISO 4217 currency code such as usd".into()))
    }

    /// Every supported currency, in code order.
    pub fn all() -> impl Iterator<Item = Currency> {
        CURRENCIES
            .iter()
            .map(|&(code, exponent)| Self { code, exponent })
    }

    /// The lower-case code, such as `usd`.
    pub fn as_str(self) -> &'static str {
        self.code
    }

    /// Digits after the decimal point in one minor unit: 2 for `usd`, 0 for `jpy`, 3 for `kwd`.
    pub fn exponent(self) -> u32 {
        u32::from(self.exponent)
    }

    /// Whether amounts are whole units with no minor unit (`jpy`, `krw`, …).
    pub fn is_zero_decimal(self) -> bool {
        self.exponent == 0
    }

    /// The symbol shown before amounts, for the few currencies that have a well-known one.
    fn symbol(self) -> Option<&'static str> {
        SYMBOLS
            .iter()
            .find(|(code, _)| *code == self.code)
            .map(|&(_, symbol)| symbol)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Currency::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// An amount of money: a signed count of minor units in one currency. Negative amounts are
/// credits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    amount_minor: i64,
    currency: Currency,
}

impl Money {
    /// Every `i64` is a valid amount, so this cannot fail; the currency is already parsed.
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Self {
            amount_minor,
            currency,
        }
    }

    /// The amount in minor units (cents for `usd`).
    pub fn amount_minor(self) -> i64 {
        self.amount_minor
    }

    /// The currency of the amount.
    pub fn currency(self) -> Currency {
        self.currency
    }

    /// A human-readable amount for invoices, emails and the dashboard.
    ///
    /// Currencies in the symbol table get the symbol in front (`$29.99`, `€10.00`, `£5.50`,
    /// `¥500`, `R99.00`, `CA$5.00`); every other currency gets its upper-case code after the
    /// amount, separated by a space (`1.500 KWD`, `10.00 CHF`). The number has exactly
    /// [`Currency::exponent`] decimals, a `.` separator and no grouping. Negative amounts start
    /// with a minus sign (`-$29.99`, `-1.500 KWD`).
    pub fn display(self) -> String {
        self.to_string()
    }

    /// The amount with a billing interval: `$29.99/month` for a single unit,
    /// `$29.99 every 3 months` otherwise.
    pub fn display_per(self, interval: Interval) -> String {
        if interval.count() == 1 {
            format!("{self}/{}", interval.display())
        } else {
            format!("{self} every {}", interval.display())
        }
    }

    /// The absolute amount as `major.minor` digits, with no sign or currency.
    fn number(self) -> String {
        let magnitude = self.amount_minor.unsigned_abs();
        let exponent = self.currency.exponent();
        if exponent == 0 {
            return magnitude.to_string();
        }
        let scale = 10u64.pow(exponent);
        let width = exponent as usize;
        format!("{}.{:0width$}", magnitude / scale, magnitude % scale)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let number = self.number();
        match self.currency.symbol() {
            Some(symbol) => write!(f, "{sign}{symbol}{number}"),
            None => write!(
                f,
                "{sign}{number} {}",
                self.currency.code.to_ascii_uppercase()
            ),
        }
    }
}

/// `amount × numerator / denominator`, rounded to the minor unit with halves away from zero;
/// `None` when `denominator` is zero or the result overflows an `i64`. See the module
/// documentation for the rule.
pub fn mul_ratio_round_half_up(amount: i64, numerator: i64, denominator: i64) -> Option<i64> {
    if denominator == 0 {
        return None;
    }
    // An i64 × i64 product always fits in an i128.
    let product = i128::from(amount) * i128::from(numerator);
    let denominator = i128::from(denominator);
    let quotient = product / denominator;
    let remainder = product % denominator;
    // |remainder| < |denominator| ≤ 2^63, so doubling it cannot overflow.
    let rounded = if 2 * remainder.abs() >= denominator.abs() {
        if (product < 0) == (denominator < 0) {
            quotient + 1
        } else {
            quotient - 1
        }
    } else {
        quotient
    };
    i64::try_from(rounded).ok()
}

/// `amount × bps / 10 000` (one basis point is 0.01 %), rounded like
/// [`mul_ratio_round_half_up`]; `None` on overflow.
pub fn basis_points(amount: i64, bps: u32) -> Option<i64> {
    mul_ratio_round_half_up(amount, i64::from(bps), 10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn currency(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn money(amount_minor: i64, code: &str) -> Money {
        Money::new(amount_minor, currency(code))
    }

    #[test]
    fn currency_table_is_sorted_unique_lowercase_and_large() {
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (code, exponent) in CURRENCIES {
            assert_eq!(code.len(), 3);
            assert!(code.bytes().all(|b| b.is_ascii_lowercase()), "{code}");
            assert!(*exponent <= 3);
        }
        assert!(CURRENCIES.len() >= 130, "only {}", CURRENCIES.len());
    }

    #[test]
    fn symbol_table_names_only_supported_currencies() {
        for (code, _) in SYMBOLS {
            assert!(Currency::parse(code).is_ok(), "{code}");
        }
    }

    #[test]
    fn currency_parse_accepts_any_case_and_stores_lowercase() {
        for raw in ["usd", "USD", "Usd", " usd "] {
            assert_eq!(currency(raw).as_str(), "usd");
        }
        assert_eq!(currency("EUR").to_string(), "eur");
    }

    #[test]
    fn currency_parse_rejects_unknown_codes() {
        for bad in ["", "us", "usdd", "xyz", "hrk", "u$d", "ÜSD", "usd\0"] {
            let err = Currency::parse(bad).unwrap_err();
            assert_eq!(
                err.0, "must be an ISO 4217 currency code such as usd",
                "{bad}"
            );
        }
    }

    #[test]
    fn zero_decimal_currencies_have_exponent_zero() {
        let zero = [
            "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd",
            "vuv", "xaf", "xof", "xpf",
        ];
        for code in zero {
            assert_eq!(currency(code).exponent(), 0, "{code}");
            assert!(currency(code).is_zero_decimal(), "{code}");
        }
        let zero_count = Currency::all().filter(|c| c.is_zero_decimal()).count();
        assert_eq!(zero_count, zero.len());
    }

    #[test]
    fn three_decimal_currencies_have_exponent_three() {
        let three = ["bhd", "jod", "kwd", "omr", "tnd"];
        for code in three {
            assert_eq!(currency(code).exponent(), 3, "{code}");
        }
        let three_count = Currency::all().filter(|c| c.exponent() == 3).count();
        assert_eq!(three_count, three.len());
    }

    #[test]
    fn other_currencies_have_exponent_two() {
        for code in ["usd", "eur", "gbp", "chf", "zar", "isk", "huf"] {
            assert_eq!(currency(code).exponent(), 2, "{code}");
            assert!(!currency(code).is_zero_decimal());
        }
    }

    #[test]
    fn currency_serializes_as_lowercase_code_and_deserializes_through_parse() {
        assert_eq!(serde_json::to_string(&currency("usd")).unwrap(), "\"usd\"");
        let parsed: Currency = serde_json::from_str("\"JPY\"").unwrap();
        assert_eq!(parsed, currency("jpy"));
        assert!(serde_json::from_str::<Currency>("\"abc\"").is_err());
        assert!(serde_json::from_str::<Currency>("840").is_err());
    }

    #[test]
    fn money_serializes_as_amount_and_currency() {
        let json = serde_json::to_value(money(2999, "usd")).unwrap();
        assert_eq!(
            json,
            serde_json::json!({ "amount_minor": 2999, "currency": "usd" })
        );
        let back: Money = serde_json::from_value(json).unwrap();
        assert_eq!(back, money(2999, "usd"));
        let bad = serde_json::json!({ "amount_minor": 1, "currency": "zzz" });
        assert!(serde_json::from_value::<Money>(bad).is_err());
    }

    #[test]
    fn money_getters_return_what_was_given() {
        let m = money(-150, "gbp");
        assert_eq!(m.amount_minor(), -150);
        assert_eq!(m.currency(), currency("gbp"));
    }

    #[test]
    fn display_uses_symbol_prefix_for_known_symbols() {
        assert_eq!(money(2999, "usd").display(), "$29.99");
        assert_eq!(money(1000, "eur").display(), "€10.00");
        assert_eq!(money(550, "gbp").display(), "£5.50");
        assert_eq!(money(500, "jpy").display(), "¥500");
        assert_eq!(money(9900, "zar").display(), "R99.00");
        assert_eq!(money(1234, "cny").display(), "CN¥12.34");
        assert_eq!(money(100, "inr").display(), "₹1.00");
        assert_eq!(money(5, "aud").display(), "A$0.05");
        assert_eq!(money(500, "cad").display(), "CA$5.00");
    }

    #[test]
    fn display_uses_uppercase_code_suffix_without_a_symbol() {
        assert_eq!(money(1500, "kwd").display(), "1.500 KWD");
        assert_eq!(money(1000, "chf").display(), "10.00 CHF");
        assert_eq!(money(1000, "krw").display(), "1000 KRW");
        assert_eq!(money(7, "bhd").display(), "0.007 BHD");
    }

    #[test]
    fn display_puts_minus_sign_first_for_negative_amounts() {
        assert_eq!(money(-2999, "usd").display(), "-$29.99");
        assert_eq!(money(-1, "usd").display(), "-$0.01");
        assert_eq!(money(-1500, "kwd").display(), "-1.500 KWD");
        assert_eq!(money(-500, "jpy").display(), "-¥500");
    }

    #[test]
    fn display_handles_zero_and_extreme_amounts() {
        assert_eq!(money(0, "usd").display(), "$0.00");
        assert_eq!(money(0, "jpy").display(), "¥0");
        assert_eq!(money(i64::MAX, "usd").display(), "$92233720368547758.07");
        assert_eq!(money(i64::MIN, "usd").display(), "-$92233720368547758.08");
    }

    #[test]
    fn display_per_uses_slash_for_one_unit_and_every_for_more() {
        let m = money(2999, "usd");
        let interval = |unit, count| Interval::parse(unit, count).unwrap();
        assert_eq!(m.display_per(interval("month", 1)), "$29.99/month");
        assert_eq!(m.display_per(interval("day", 1)), "$29.99/day");
        assert_eq!(m.display_per(interval("week", 1)), "$29.99/week");
        assert_eq!(m.display_per(interval("quarter", 1)), "$29.99/quarter");
        assert_eq!(m.display_per(interval("year", 1)), "$29.99/year");
        assert_eq!(m.display_per(interval("month", 3)), "$29.99 every 3 months");
        assert_eq!(
            money(1000, "usd").display_per(interval("week", 2)),
            "$10.00 every 2 weeks"
        );
    }

    #[test]
    fn mul_ratio_rounds_half_away_from_zero() {
        assert_eq!(mul_ratio_round_half_up(1, 1, 2), Some(1));
        assert_eq!(mul_ratio_round_half_up(-1, 1, 2), Some(-1));
        assert_eq!(mul_ratio_round_half_up(5, 1, 2), Some(3));
        assert_eq!(mul_ratio_round_half_up(-5, 1, 2), Some(-3));
        assert_eq!(mul_ratio_round_half_up(1, 1, 3), Some(0));
        assert_eq!(mul_ratio_round_half_up(2, 1, 3), Some(1));
        assert_eq!(mul_ratio_round_half_up(-2, 1, 3), Some(-1));
        assert_eq!(mul_ratio_round_half_up(2, 1, -3), Some(-1));
        assert_eq!(mul_ratio_round_half_up(-2, 1, -3), Some(1));
        assert_eq!(mul_ratio_round_half_up(1000, 7, 30), Some(233));
    }

    #[test]
    fn mul_ratio_is_none_for_zero_denominator_and_overflow() {
        assert_eq!(mul_ratio_round_half_up(1, 1, 0), None);
        assert_eq!(mul_ratio_round_half_up(i64::MAX, 2, 1), None);
        assert_eq!(mul_ratio_round_half_up(i64::MIN, -1, 1), None);
        assert_eq!(
            mul_ratio_round_half_up(i64::MAX, i64::MAX, i64::MAX),
            Some(i64::MAX)
        );
        assert_eq!(mul_ratio_round_half_up(i64::MIN, 1, 1), Some(i64::MIN));
    }

    #[test]
    fn basis_points_rounds_half_away_from_zero() {
        assert_eq!(basis_points(10_000, 250), Some(250));
        assert_eq!(basis_points(2999, 290), Some(87)); // 86.971
        assert_eq!(basis_points(50, 100), Some(1)); // 0.5
        assert_eq!(basis_points(-50, 100), Some(-1)); // -0.5
        assert_eq!(basis_points(49, 100), Some(0)); // 0.49
        assert_eq!(basis_points(1, 10_000), Some(1));
        assert_eq!(basis_points(i64::MAX, 10_000), Some(i64::MAX));
        assert_eq!(basis_points(i64::MAX, 10_001), None);
        assert_eq!(basis_points(i64::MAX, u32::MAX), None);
    }

    /// Rounds `p / d` half away from zero by a different route: for non-negative values,
    /// `floor((2p + d) / 2d)`; negatives mirror it.
    fn reference_round(p: i128, d: i128) -> i128 {
        let negative = (p < 0) != (d < 0);
        let (p, d) = (p.abs(), d.abs());
        let magnitude = (2 * p + d).div_euclid(2 * d);
        if negative { -magnitude } else { magnitude }
    }

    proptest! {
        #[test]
        fn currency_round_trips_through_parse(index in 0..CURRENCIES.len(), upper in any::<bool>()) {
            let code = CURRENCIES[index].0;
            let raw = if upper { code.to_ascii_uppercase() } else { code.to_owned() };
            let parsed = Currency::parse(&raw).unwrap();
            prop_assert_eq!(parsed.as_str(), code);
            prop_assert_eq!(Currency::parse(parsed.as_str()).unwrap(), parsed);
            let json = serde_json::to_string(&parsed).unwrap();
            prop_assert_eq!(serde_json::from_str::<Currency>(&json).unwrap(), parsed);
        }

        #[test]
        fn currency_parse_never_accepts_codes_outside_the_table(raw in "[a-zA-Z]{0,5}") {
            let known = CURRENCIES.iter().any(|(code, _)| code.eq_ignore_ascii_case(&raw));
            prop_assert_eq!(Currency::parse(&raw).is_ok(), known);
        }

        #[test]
        fn basis_points_matches_exact_i128_reference(amount in any::<i64>(), bps in any::<u32>()) {
            let exact = reference_round(i128::from(amount) * i128::from(bps), 10_000);
            prop_assert_eq!(basis_points(amount, bps), i64::try_from(exact).ok());
        }

        #[test]
        fn basis_points_is_symmetric_for_negatives(amount in -(1i64 << 48)..(1i64 << 48), bps in 0u32..=100_000) {
            prop_assert_eq!(
                basis_points(-amount, bps),
                basis_points(amount, bps).map(|v| -v)
            );
        }

        #[test]
        fn mul_ratio_matches_exact_i128_reference(
            amount in any::<i64>(),
            numerator in any::<i64>(),
            denominator in any::<i64>().prop_filter("non-zero", |d| *d != 0),
        ) {
            let exact = reference_round(
                i128::from(amount) * i128::from(numerator),
                i128::from(denominator),
            );
            prop_assert_eq!(
                mul_ratio_round_half_up(amount, numerator, denominator),
                i64::try_from(exact).ok()
            );
        }

        #[test]
        fn mul_ratio_stays_within_half_a_unit_of_the_exact_value(
            amount in -1_000_000_000i64..1_000_000_000,
            numerator in 0i64..1_000_000,
            denominator in 1i64..1_000_000,
        ) {
            let rounded = i128::from(mul_ratio_round_half_up(amount, numerator, denominator).unwrap());
            let exact_times_d = i128::from(amount) * i128::from(numerator);
            let error = (rounded * i128::from(denominator) - exact_times_d).abs();
            prop_assert!(2 * error <= i128::from(denominator));
        }

        #[test]
        fn display_number_round_trips_to_the_amount(amount in any::<i64>(), index in 0..CURRENCIES.len()) {
            let (code, _) = CURRENCIES[index];
            let m = money(amount, code);
            let shown = m.display();
            let digits: String = shown.chars().filter(char::is_ascii_digit).collect();
            let magnitude = amount.unsigned_abs().to_string();
            prop_assert_eq!(digits.trim_start_matches('0'), magnitude.trim_start_matches('0'));
            prop_assert_eq!(shown.starts_with('-'), amount < 0);
        }
    }
}
