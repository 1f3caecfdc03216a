//! Keys derived from the application secret, hashing of API keys and at-rest encryption.

use base64::{Engine, engine::general_purpose::STANDARD};
use chacha20poly1305::{
    XChaCha20Poly1305, XNonce,
    aead::{Aead, KeyInit},
};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// Derives a 32-byte key for one purpose from the application secret.
pub fn derive_key(app_secret: &str, purpose: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"billing-platform/v1/");
    hasher.update(purpose.as_bytes());
    hasher.update([0u8]);
    hasher.update(app_secret.as_bytes());
    hasher.finalize().into()
}

/// SHA-256 of a value (API keys are stored only as this).
pub fn sha256(value: &[u8]) -> [u8; 32] {
    Sha256::digest(value).into()
}

/// Random bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::rng().fill_bytes(&mut out);
    out
}

/// Why decryption failed.
#[derive(Debug, thiserror::Error)]
#[error("ciphertext could not be decrypted")]
pub struct DecryptError;

/// Authenticated encryption for secrets at rest (webhook signing secrets, Stripe tokens).
#[derive(Clone)]
pub struct Encryptor {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Encryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encryptor")
    }
}

impl Encryptor {
    pub fn new(app_secret: &str) -> Self {
        let key = derive_key(app_secret, "encryption-at-rest");
        Self {
            cipher: XChaCha20Poly1305::new(&key.into()),
        }
    }

    /// Nonce (24 bytes) followed by the ciphertext.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        let nonce_bytes = random_bytes::<24>();
        let nonce = XNonce::from(nonce_bytes);
        let mut out = nonce_bytes.to_vec();
        // Encryption with a fresh nonce and an in-memory buffer has no failure mode.
        if let Ok(ct) = self.cipher.encrypt(&nonce, plaintext) {
            out.extend_from_slice(&ct);
        }
        out
    }

    pub fn decrypt(&self, data: &[u8]) -> Result<Vec<u8>, DecryptError> {
        if data.len() < 24 {
            return Err(DecryptError);
        }
        let (nonce, ct) = data.split_at(24);
        let nonce: [u8; 24] = nonce.try_into().map_err(|_| DecryptError)?;
        self.cipher
            .decrypt(&XNonce::from(nonce), ct)
            .map_err(|_| DecryptError)
    }
}

/// Base64 (standard alphabet) of some bytes.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encryption_round_trips_and_detects_tampering() {
        let e = Encryptor::new("0123456789abcdef0123456789abcdef");
        let mut ct = e.encrypt(b"whsec_abc");
        assert_eq!(e.decrypt(&ct).unwrap(), b"whsec_abc");
        let last = ct.len() - 1;
        ct[last] ^= 1;
        assert!(e.decrypt(&ct).is_err());
    }

    #[test]
    fn derived_keys_differ_by_purpose() {
        assert_ne!(derive_key("s", "a"), derive_key("s", "b"));
    }
}
