use super::ValidationError;

/// Minimum password length (OWASP ASVS 2.1.1 asks for at least 8; we ask for 10).
pub const MIN_LEN: usize = 10;
/// Maximum password length, bounding hashing cost.
pub const MAX_LEN: usize = 128;

/// A password acceptable for a new account or a change.
pub struct NewPassword(String);

impl NewPassword {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let len = raw.chars().count();
        if len < MIN_LEN {
            return Err(ValidationError(format!(
                "must be at least {MIN_LEN} characters"
            )));
        }
        if len > MAX_LEN {
            return Err(ValidationError(format!(
                "must be at most {MAX_LEN} characters"
            )));
        }
        if raw.trim().is_empty() {
            return Err(ValidationError("must not be blank".into()));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_overlong_passwords_are_rejected() {
        assert!(NewPassword::parse("short").is_err());
        assert!(NewPassword::parse(&"x".repeat(MAX_LEN + 1)).is_err());
        assert!(NewPassword::parse("          ").is_err());
        assert!(NewPassword::parse("SecurePass123!").is_ok());
    }
}
