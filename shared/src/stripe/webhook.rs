//! Verifying incoming Stripe webhooks: `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of
//! "t.body">` (several `v1` when Stripe rolls a secret), keyed with the endpoint's whole
//! `whsec_…` secret, within a tolerance of the current time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far a signature's timestamp may be from now.
pub const TOLERANCE_SECS: i64 = 300;

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed")]
    Malformed,
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// The header Stripe would send for `body` at `timestamp` (used by tests and tools).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body))
    )
}

/// Checks a signature header against every configured secret.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[&str],
    now: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<i64>().ok(),
            Some(("v1", s)) => {
                if let Ok(bytes) = hex::decode(s) {
                    signatures.push(bytes);
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now.abs_diff(timestamp) > TOLERANCE_SECS.unsigned_abs() {
        return Err(SignatureError::Stale);
    }
    let ok = secrets.iter().any(|secret| {
        let expected = mac(secret, timestamp, body);
        signatures
            .iter()
            .any(|sig| bool::from(sig.as_slice().ct_eq(&expected)))
    });
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";

    #[test]
    fn a_fresh_signature_verifies() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert_eq!(
            verify(Some(&header), body, &[SECRET], 1_700_000_100),
            Ok(())
        );
        assert_eq!(
            verify(Some(&header), body, &["other", SECRET], 1_700_000_100),
            Ok(())
        );
    }

    #[test]
    fn tampering_staleness_and_garbage_are_refused() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, 1_700_000_000, body);
        assert_eq!(
            verify(Some(&header), b"{}", &[SECRET], 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), body, &["whsec_other"], 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(Some(&header), body, &[SECRET], 1_700_000_301),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(None, body, &[SECRET], 0),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify(Some("v1=abc"), body, &[SECRET], 0),
            Err(SignatureError::Malformed)
        );
    }
}
