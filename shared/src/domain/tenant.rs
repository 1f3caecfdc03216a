use super::ValidationError;

/// A company name: 1 to 200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompanyName(String);

impl CompanyName {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let v = raw.trim();
        if v.is_empty() {
            return Err(ValidationError("must not be empty".into()));
        }
        if v.chars().count() > 200 {
            return Err(ValidationError("must be at most 200 characters".into()));
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

    /// The URL-safe base of the tenant's slug: lowercase ASCII letters, digits and dashes.
    pub fn slug_base(&self) -> String {
        let mut slug = String::new();
        for c in self.0.chars() {
            if c.is_ascii_alphanumeric() {
                slug.push(c.to_ascii_lowercase());
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
        }
        let slug = slug.trim_end_matches('-');
        let slug: String = slug.chars().take(48).collect();
        if slug.is_empty() {
            "tenant".into()
        } else {
            slug
        }
    }
}

/// An optional company domain such as `acme.com`.
pub fn parse_domain(raw: &str) -> Result<String, ValidationError> {
    let v = raw.trim().to_lowercase();
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.contains('.')
        && v.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(v)
    } else {
        Err(ValidationError(
            "must be a domain name such as acme.com".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slug_is_url_safe() {
        let n = CompanyName::parse("  Acme, Inc. (EU) ").unwrap();
        assert_eq!(n.slug_base(), "acme-inc-eu");
        assert_eq!(CompanyName::parse("日本").unwrap().slug_base(), "tenant");
    }

    #[test]
    fn blank_names_are_rejected() {
        assert!(CompanyName::parse("   ").is_err());
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(parse_domain("Acme.COM").unwrap(), "acme.com");
        assert!(parse_domain("not a domain").is_err());
        assert!(parse_domain("-bad.com").is_err());
    }
}
