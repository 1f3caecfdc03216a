//! API keys: `sk_live_…`, `sk_test_…` (secret) and `pk_live_…`, `pk_test_…` (publishable).
//!
//! A key is the prefix plus 32 random base62 characters. Only its SHA-256 is stored, with the
//! prefix and last four characters for display.

use rand::Rng;

use super::mode::Mode;
use crate::crypto::sha256;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const RANDOM_LEN: usize = 32;

/// Secret keys act on the API; publishable keys are for browsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    Secret,
    Publishable,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Secret => "secret",
            KeyKind::Publishable => "publishable",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "secret" => Some(KeyKind::Secret),
            "publishable" => Some(KeyKind::Publishable),
            _ => None,
        }
    }
}

/// The display prefix of a key of this kind and mode, e.g. `sk_test_`.
pub fn prefix(kind: KeyKind, mode: Mode) -> &'static str {
    match (kind, mode) {
        (KeyKind::Secret, Mode::Live) => "sk_live_",
        (KeyKind::Secret, Mode::Test) => "sk_test_",
        (KeyKind::Publishable, Mode::Live) => "pk_live_",
        (KeyKind::Publishable, Mode::Test) => "pk_test_",
    }
}

/// A freshly generated key: the full text is shown once and then only its hash is kept.
pub struct GeneratedKey {
    pub kind: KeyKind,
    pub mode: Mode,
    pub full: String,
    pub hash: [u8; 32],
    pub last4: String,
}

impl GeneratedKey {
    pub fn generate(kind: KeyKind, mode: Mode) -> Self {
        let mut rng = rand::rng();
        let body: String = (0..RANDOM_LEN)
            .map(|_| BASE62[rng.random_range(0..62)] as char)
            .collect();
        let full = format!("{}{}", prefix(kind, mode), body);
        let last4 = body[RANDOM_LEN - 4..].to_owned();
        Self {
            kind,
            mode,
            hash: sha256(full.as_bytes()),
            full,
            last4,
        }
    }
}

/// A presented key whose shape is right; whether it exists is for the database to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresentedKey {
    pub kind: KeyKind,
    pub mode: Mode,
    pub hash: [u8; 32],
}

impl PresentedKey {
    /// Recognises the shape of a key; `None` for anything that is not one (a JWT, garbage).
    pub fn parse(raw: &str) -> Option<Self> {
        let (kind, mode, body) = if let Some(b) = raw.strip_prefix("sk_live_") {
            (KeyKind::Secret, Mode::Live, b)
        } else if let Some(b) = raw.strip_prefix("sk_test_") {
            (KeyKind::Secret, Mode::Test, b)
        } else if let Some(b) = raw.strip_prefix("pk_live_") {
            (KeyKind::Publishable, Mode::Live, b)
        } else if let Some(b) = raw.strip_prefix("pk_test_") {
            (KeyKind::Publishable, Mode::Test, b)
        } else {
            return None;
        };
        if body.len() != RANDOM_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        Some(Self {
            kind,
            mode,
            hash: sha256(raw.as_bytes()),
        })
    }

    /// Whether a string looks like it was meant to be a key (has a key prefix).
    pub fn has_key_prefix(raw: &str) -> bool {
        ["sk_live_", "sk_test_", "pk_live_", "pk_test_"]
            .iter()
            .any(|p| raw.starts_with(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_back_with_their_kind_mode_and_hash() {
        for kind in [KeyKind::Secret, KeyKind::Publishable] {
            for mode in [Mode::Test, Mode::Live] {
                let k = GeneratedKey::generate(kind, mode);
                assert!(k.full.starts_with(prefix(kind, mode)));
                assert!(k.full.ends_with(&k.last4));
                let p = PresentedKey::parse(&k.full).unwrap();
                assert_eq!((p.kind, p.mode, p.hash), (kind, mode, k.hash));
            }
        }
    }

    #[test]
    fn malformed_keys_are_not_recognised() {
        assert!(PresentedKey::parse("sk_test_short").is_none());
        assert!(PresentedKey::parse("xk_test_0123456789abcdef0123456789abcdef").is_none());
        assert!(PresentedKey::parse("sk_test_0123456789abcdef0123456789abcde!").is_none());
        assert!(PresentedKey::parse("eyJhbGciOi.x.y").is_none());
    }

    #[test]
    fn two_generated_keys_differ() {
        let a = GeneratedKey::generate(KeyKind::Secret, Mode::Test);
        let b = GeneratedKey::generate(KeyKind::Secret, Mode::Test);
        assert_ne!(a.full, b.full);
    }
}
