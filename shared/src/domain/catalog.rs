//! Values of the catalog (plans, products, prices, bundles): names, descriptions, feature
//! lists and metadata, with the limits Stripe also applies, so what the platform accepts
//! Stripe accepts too.

use std::collections::BTreeMap;

use super::ValidationError;

/// Printable text of at most `max` characters, trimmed (`required`: not empty).
pub(crate) fn text(raw: &str, max: usize, required: bool) -> Result<String, ValidationError> {
    let v = raw.trim();
    if required && v.is_empty() {
        return Err(ValidationError("must not be empty".into()));
    }
    if v.chars().count() > max {
        return Err(ValidationError(format!("must be at most {max} characters")));
    }
    if v.chars().any(char::is_control) {
        return Err(ValidationError(
            "must not contain control characters".into(),
        ));
    }
    Ok(v.to_owned())
}

/// A name shown to customers: 1 to 250 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        text(raw, 250, true).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A description: at most 5,000 characters (line breaks allowed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Description(String);

impl Description {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let v = raw.trim();
        if v.chars().count() > 5000 {
            return Err(ValidationError("must be at most 5000 characters".into()));
        }
        if v.chars()
            .any(|c| c.is_control() && c != '\n' && c != '\r' && c != '\t')
        {
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

/// A short handle such as `autoflow`: 1 to 64 of `a-z`, `0-9`, `-` and `_`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code(String);

impl Code {
    pub fn parse(raw: &str) -> Result<Self, ValidationError> {
        let v = raw.trim();
        let ok = !v.is_empty()
            && v.len() <= 64
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !ok {
            return Err(ValidationError(
                "must be 1 to 64 characters of a-z, 0-9, - and _".into(),
            ));
        }
        Ok(Self(v.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Features listed for customers: at most 50, each 1 to 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Features(Vec<String>);

impl Features {
    pub fn parse(raw: &[String]) -> Result<Self, ValidationError> {
        if raw.len() > 50 {
            return Err(ValidationError("must list at most 50 features".into()));
        }
        raw.iter()
            .map(|f| {
                text(f, 200, true).map_err(|e| ValidationError(format!("each feature {}", e.0)))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::from(self.0.clone())
    }
}

/// Key-value metadata: at most 50 keys of up to 40 characters, values up to 500 (Stripe's
/// limits).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    pub fn parse<'a>(
        raw: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self, ValidationError> {
        let mut map = BTreeMap::new();
        for (k, v) in raw {
            if k.is_empty() || k.chars().count() > 40 || k.contains('[') || k.contains(']') {
                return Err(ValidationError(format!(
                    "key `{k}` must be 1 to 40 characters without brackets"
                )));
            }
            if k.chars().any(char::is_control) || v.chars().any(char::is_control) {
                return Err(ValidationError(format!(
                    "`{}` must not contain control characters",
                    k.escape_debug()
                )));
            }
            if v.chars().count() > 500 {
                return Err(ValidationError(format!(
                    "the value of `{k}` must be at most 500 characters"
                )));
            }
            map.insert(k.clone(), v.clone());
        }
        if map.len() > 50 {
            return Err(ValidationError("must have at most 50 keys".into()));
        }
        Ok(Self(map))
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.0).unwrap_or_default()
    }

    /// From a stored JSON object (values that are not strings are skipped).
    pub fn from_json(v: &serde_json::Value) -> std::collections::HashMap<String, String> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(Name::parse("  Pro ").unwrap().as_str(), "Pro");
        assert!(Name::parse("   ").is_err());
        assert!(Name::parse(&"x".repeat(251)).is_err());
        assert!(Name::parse("a\u{0}b").is_err());
    }

    #[test]
    fn metadata_follows_stripes_limits() {
        let ok: Vec<(String, String)> = vec![("tier".into(), "gold".into())];
        assert!(Metadata::parse(ok.iter().map(|(k, v)| (k, v))).is_ok());
        let long_key: Vec<(String, String)> = vec![("k".repeat(41), "v".into())];
        assert!(Metadata::parse(long_key.iter().map(|(k, v)| (k, v))).is_err());
        let nul: Vec<(String, String)> = vec![("k".into(), "a\u{0}b".into())];
        assert!(Metadata::parse(nul.iter().map(|(k, v)| (k, v))).is_err());
        let many: Vec<(String, String)> = (0..51).map(|i| (format!("k{i}"), "v".into())).collect();
        assert!(Metadata::parse(many.iter().map(|(k, v)| (k, v))).is_err());
    }

    #[test]
    fn features_and_codes_are_checked() {
        assert!(Features::parse(&["SSO".into(), "API".into()]).is_ok());
        assert!(Features::parse(&["".into()]).is_err());
        assert!(Code::parse("autoflow-ai").is_ok());
        assert!(Code::parse("AutoFlow").is_err());
    }
}
