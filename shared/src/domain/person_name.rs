use super::ValidationError;

/// Longest first or last name, in characters.
pub const MAX_LEN: usize = 100;

/// A user's first or last name: trimmed, at most [`MAX_LEN`] characters, possibly empty, and
/// free of control characters (PostgreSQL refuses NUL in text; the others have no place in a
/// name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let v = raw.trim();
        if v.chars().count() > MAX_LEN {
            return Err(ValidationError(format!(
                "must be at most {MAX_LEN} characters"
            )));
        }
        if v.chars().any(char::is_control) {
            return Err(ValidationError(
                "must not contain control characters".into(),
            ));
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_may_be_empty() {
        assert_eq!(PersonName::parse("  Ada ").unwrap().as_str(), "Ada");
        assert_eq!(PersonName::parse("").unwrap().as_str(), "");
        assert_eq!(
            PersonName::parse("Zoë Ñúñez").unwrap().as_str(),
            "Zoë Ñúñez"
        );
    }

    #[test]
    fn control_characters_are_rejected() {
        for bad in [
            "a\u{0}b",
            "a\nb",
            "a\tb",
            "\u{7f}",
            "a\u{1b}[31mb",
            "a\u{85}b",
        ] {
            assert!(PersonName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn overlong_names_are_rejected() {
        assert!(PersonName::parse(&"é".repeat(MAX_LEN)).is_ok());
        assert!(PersonName::parse(&"é".repeat(MAX_LEN + 1)).is_err());
    }
}
