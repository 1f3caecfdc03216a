//! Argon2id password hashing with OWASP's recommended parameters
//! (19 MiB memory, 2 iterations, 1 lane), stored as a PHC string.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::{Engine, engine::general_purpose::STANDARD_NO_PAD};
use subtle::ConstantTimeEq;

use crate::crypto::random_bytes;

const M_COST: u32 = 19_456;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;

/// Hashing failed (parameters out of range; not expected with the constants above).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

fn argon(m: u32, t: u32, p: u32, len: usize) -> Result<Argon2<'static>, HashError> {
    let params = Params::new(m, t, p, Some(len)).map_err(|e| HashError(e.to_string()))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes a password into a PHC string. CPU-heavy: call from a blocking thread.
pub fn hash(password: &str) -> Result<String, HashError> {
    let salt = random_bytes::<16>();
    let mut out = [0u8; OUTPUT_LEN];
    argon(M_COST, T_COST, P_COST, OUTPUT_LEN)?
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .map_err(|e| HashError(e.to_string()))?;
    Ok(format!(
        "$argon2id$v=19$m={M_COST},t={T_COST},p={P_COST}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Checks a password against a PHC string in constant time. A malformed hash never matches.
pub fn verify(password: &str, phc: &str) -> bool {
    let Some((m, t, p, salt, expected)) = parse_phc(phc) else {
        return false;
    };
    let Ok(hasher) = argon(m, t, p, expected.len()) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if hasher
        .hash_password_into(password.as_bytes(), &salt, &mut out)
        .is_err()
    {
        return false;
    }
    out.ct_eq(&expected).into()
}

/// A hash of a random password, verified against when an email is unknown so that the
/// response time does not reveal whether the account exists.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| {
        hash(&crate::crypto::b64(&random_bytes::<24>())).unwrap_or_else(|_| {
            "$argon2id$v=19$m=19456,t=2,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                .to_owned()
        })
    })
}

type Parsed = (u32, u32, u32, Vec<u8>, Vec<u8>);

fn parse_phc(phc: &str) -> Option<Parsed> {
    let mut parts = phc.split('$');
    if !parts.next()?.is_empty() || parts.next()? != "argon2id" || parts.next()? != "v=19" {
        return None;
    }
    let (mut m, mut t, mut p) = (None, None, None);
    for kv in parts.next()?.split(',') {
        let (k, v) = kv.split_once('=')?;
        let v: u32 = v.parse().ok()?;
        match k {
            "m" => m = Some(v),
            "t" => t = Some(v),
            "p" => p = Some(v),
            _ => return None,
        }
    }
    let salt = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
    let hash = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
    if parts.next().is_some() || hash.len() < 16 {
        return None;
    }
    Some((m?, t?, p?, salt, hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_own_password() {
        let h = hash("SecurePass123!").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify("SecurePass123!", &h));
        assert!(!verify("SecurePass123?", &h));
    }

    #[test]
    fn two_hashes_of_one_password_differ_by_salt() {
        assert_ne!(
            hash("SecurePass123!").unwrap(),
            hash("SecurePass123!").unwrap()
        );
    }

    #[test]
    fn malformed_hashes_never_verify() {
        assert!(!verify("x", ""));
        assert!(!verify("x", "$argon2i$v=19$m=1,t=1,p=1$AAAA$AAAA"));
        assert!(!verify("x", "plaintext"));
    }
}
