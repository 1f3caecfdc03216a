//! Values of a customer: the tenant's own id for it, its timezone, postal address, tax ids and
//! invoice number prefix, each parsed once with the limits Stripe also applies.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{ValidationError, catalog::text};

fn invalid(msg: impl Into<String>) -> ValidationError {
    ValidationError(msg.into())
}

/// The tenant's own id for a customer (unique per tenant and mode): 1 to 100 printable
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        text(raw, 100, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A customer's name as invoices show it: at most 250 printable characters, may be empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CustomerName(String);

impl CustomerName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        text(raw, 250, false).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An IANA timezone such as `Europe/Paris` (the zone a customer's billing periods follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timezone(chrono_tz::Tz);

impl Timezone {
    pub const UTC: Timezone = Timezone(chrono_tz::Tz::UTC);

    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        chrono_tz::Tz::from_str(raw.trim())
            .map(Self)
            .map_err(|_| invalid("must be an IANA timezone such as Europe/Paris"))
    }

    /// Every name [`Timezone::parse`] accepts.
    pub fn all() -> impl Iterator<Item = &'static str> {
        chrono_tz::TZ_VARIANTS.iter().map(|t| t.name())
    }

    pub fn tz(self) -> chrono_tz::Tz {
        self.0
    }

    pub fn name(self) -> &'static str {
        self.0.name()
    }
}

/// The prefix of a customer's invoice numbers (`ACME` in `ACME-0001`): 3 to 12 of `A-Z` and
/// `0-9`, as Stripe allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoicePrefix(String);

impl InvoicePrefix {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let v = raw.trim();
        let ok = (3..=12).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            return Err(invalid("must be 3 to 12 characters of A-Z and 0-9"));
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Invoice `n` of this prefix: `ACME-000123`, at least six digits.
    pub fn number(&self, n: i64) -> String {
        format!("{}-{n:06}", self.0)
    }

    /// A tenant's default prefix, from its slug: its letters and digits in upper case, at most
    /// 12, padded with `X` to 3 (`acme-corp` → `ACMECORP`, `a-1` → `A1X`).
    pub fn from_slug(slug: &str) -> Self {
        let mut p: String = slug
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_uppercase())
            .take(12)
            .collect();
        while p.len() < 3 {
            p.push('X');
        }
        Self(p)
    }
}

/// A postal address; every line is optional, at most 200 printable characters, and the country
/// is an ISO 3166-1 alpha-2 code (`FR`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Address {
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub city: Option<String>,
    pub state: Option<String>,
    pub postal_code: Option<String>,
    pub country: Option<String>,
}

impl Address {
    /// Checks and trims each line; an empty line is no line. `field` names the part at fault
    /// (`address.city`).
    pub fn parse(raw: Address) -> Result<Self, (String, ValidationError)> {
        let line = |name: &str, v: Option<String>| -> Result<Option<String>, _> {
            match v {
                None => Ok(None),
                Some(v) => text(&v, 200, false)
                    .map(|t| Some(t).filter(|t| !t.is_empty()))
                    .map_err(|e| (format!("address.{name}"), e)),
            }
        };
        let country = match raw.country.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) => {
                Some(c.to_ascii_uppercase())
            }
            Some(_) => {
                return Err((
                    "address.country".into(),
                    invalid("must be a two-letter ISO 3166-1 country code such as FR"),
                ));
            }
        };
        Ok(Self {
            line1: line("line1", raw.line1)?,
            line2: line("line2", raw.line2)?,
            city: line("city", raw.city)?,
            state: line("state", raw.state)?,
            postal_code: line("postal_code", raw.postal_code)?,
            country,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// One tax id of a customer, as Stripe has them: a type such as `eu_vat` and its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxId {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

/// A customer's tax ids: at most 5; each type 2 to 20 of `a-z` and `_`, each value 1 to 50
/// printable characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaxIds(Vec<TaxId>);

impl TaxIds {
    pub const MAX: usize = 5;

    pub fn parse(raw: Vec<TaxId>) -> Result<Self, ValidationError> {
        if raw.len() > Self::MAX {
            return Err(invalid(format!("must list at most {} tax ids", Self::MAX)));
        }
        raw.into_iter()
            .map(|t| {
                let kind = t.kind.trim();
                let kind_ok = (2..=20).contains(&kind.len())
                    && kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                if !kind_ok {
                    return Err(invalid("each type must be 2 to 20 characters of a-z and _"));
                }
                let value =
                    text(&t.value, 50, true).map_err(|e| invalid(format!("each value {}", e.0)))?;
                Ok(TaxId {
                    kind: kind.to_owned(),
                    value,
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }
}

/// A card's expiry: month 1 to 12, not past (a card works until the end of its month), at most
/// 50 years ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CardExpiry {
    pub month: i32,
    pub year: i32,
}

impl CardExpiry {
    /// Checks `month`/`year` against `today`; the error names the field at fault.
    pub fn parse(
        month: u32,
        year: u32,
        today: chrono::NaiveDate,
    ) -> Result<Self, (&'static str, ValidationError)> {
        use chrono::Datelike;
        if !(1..=12).contains(&month) {
            return Err(("exp_month", invalid("must be 1 to 12")));
        }
        let (month, year) = (month as i32, i32::try_from(year).unwrap_or(i32::MAX));
        if year > today.year() + 50 {
            return Err(("exp_year", invalid("must be at most 50 years ahead")));
        }
        if (year, month) < (today.year(), today.month() as i32) {
            return Err(("exp_year", invalid("the card has expired")));
        }
        Ok(Self { month, year })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_prefix_is_its_slug_in_capitals_cut_to_12_and_padded_to_3() {
        assert_eq!(InvoicePrefix::from_slug("acme-corp").as_str(), "ACMECORP");
        assert_eq!(InvoicePrefix::from_slug("a-1").as_str(), "A1X");
        assert_eq!(
            InvoicePrefix::from_slug("very-long-company-name").as_str(),
            "VERYLONGCOMP"
        );
        assert_eq!(InvoicePrefix::from_slug("--").as_str(), "XXX");
        for slug in ["acme-corp", "a-1", "very-long-company-name", "--", "é-shop"] {
            let p = InvoicePrefix::from_slug(slug);
            assert_eq!(InvoicePrefix::parse(p.as_str()), Ok(p), "{slug}");
        }
    }

    #[test]
    fn a_card_works_until_the_end_of_its_month_and_at_most_50_years_ahead() {
        let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert_eq!(
            CardExpiry::parse(11, 2026, today),
            Ok(CardExpiry {
                month: 11,
                year: 2026
            })
        );
        assert_eq!(
            CardExpiry::parse(10, 2026, today).unwrap_err().0,
            "exp_year"
        );
        assert_eq!(
            CardExpiry::parse(12, 2025, today).unwrap_err().0,
            "exp_year"
        );
        assert!(CardExpiry::parse(1, 2027, today).is_ok());
        assert!(CardExpiry::parse(12, 2076, today).is_ok());
        assert_eq!(CardExpiry::parse(1, 2077, today).unwrap_err().0, "exp_year");
        assert_eq!(
            CardExpiry::parse(0, 2030, today).unwrap_err().0,
            "exp_month"
        );
        assert_eq!(
            CardExpiry::parse(13, 2030, today).unwrap_err().0,
            "exp_month"
        );
        assert!(CardExpiry::parse(12, 2030, today).is_ok());
        assert!(CardExpiry::parse(1, 2030, today).is_ok());
    }

    #[test]
    fn external_ids_are_printable_and_bounded() {
        assert_eq!(ExternalId::parse("  crm-42 ").unwrap().as_str(), "crm-42");
        assert!(ExternalId::parse("   ").is_err());
        assert!(ExternalId::parse(&"x".repeat(101)).is_err());
        assert!(ExternalId::parse(&"x".repeat(100)).is_ok());
        assert!(ExternalId::parse("a\u{7}b").is_err());
    }

    #[test]
    fn customer_names_may_be_empty_but_not_too_long() {
        assert_eq!(CustomerName::parse(" ").unwrap().as_str(), "");
        assert!(CustomerName::parse(&"n".repeat(250)).is_ok());
        assert!(CustomerName::parse(&"n".repeat(251)).is_err());
    }

    #[test]
    fn timezones_are_iana_names() {
        assert_eq!(
            Timezone::parse("America/Santiago").unwrap().name(),
            "America/Santiago"
        );
        assert_eq!(Timezone::parse("UTC").unwrap(), Timezone::UTC);
        assert_eq!(
            Timezone::parse(" Europe/Paris ").unwrap().name(),
            "Europe/Paris"
        );
        // Names are case-sensitive, as in the tz database.
        for bad in [
            "",
            " ",
            "Mars/Olympus_Mons",
            "america/new_york",
            "New York",
            "+02:00",
        ] {
            assert!(Timezone::parse(bad).is_err(), "{bad}");
        }
        assert!(Timezone::all().count() > 400);
        assert!(Timezone::all().all(|name| Timezone::parse(name).is_ok()));
    }

    #[test]
    fn invoice_prefixes_are_3_to_12_uppercase_letters_and_digits() {
        assert_eq!(InvoicePrefix::parse("ACME").unwrap().as_str(), "ACME");
        assert!(InvoicePrefix::parse("AC1").is_ok());
        assert!(InvoicePrefix::parse("ABCDEFGHIJKL").is_ok());
        for bad in ["AB", "ABCDEFGHIJKLM", "acme", "AC-ME", "ÀCME"] {
            assert!(InvoicePrefix::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_address_is_trimmed_its_empty_lines_dropped_and_its_country_a_code() {
        let a = Address::parse(Address {
            line1: Some(" 1 rue de la Paix ".into()),
            line2: Some("  ".into()),
            city: Some("Paris".into()),
            country: Some("fr".into()),
            ..Address::default()
        })
        .unwrap();
        assert_eq!(a.line1.as_deref(), Some("1 rue de la Paix"));
        assert_eq!(a.line2, None);
        assert_eq!(a.country.as_deref(), Some("FR"));
        let bad = Address::parse(Address {
            country: Some("FRA".into()),
            ..Address::default()
        });
        assert_eq!(bad.unwrap_err().0, "address.country");
        let long = Address::parse(Address {
            city: Some("c".repeat(201)),
            ..Address::default()
        });
        assert_eq!(long.unwrap_err().0, "address.city");
    }

    #[test]
    fn tax_ids_are_typed_bounded_and_at_most_five() {
        let one = |kind: &str, value: &str| TaxId {
            kind: kind.into(),
            value: value.into(),
        };
        let ok = TaxIds::parse(vec![one("eu_vat", " FR123 ")]).unwrap();
        assert_eq!(
            ok.to_json(),
            serde_json::json!([{"type": "eu_vat", "value": "FR123"}])
        );
        assert!(TaxIds::parse(vec![one("EU-VAT", "1")]).is_err());
        assert!(TaxIds::parse(vec![one("eu_vat", "")]).is_err());
        assert!(TaxIds::parse(vec![one("eu_vat", &"1".repeat(51))]).is_err());
        assert!(TaxIds::parse(vec![one("eu_vat", "1"); 5]).is_ok());
        assert!(TaxIds::parse(vec![one("eu_vat", "1"); 6]).is_err());
    }
}
