//! HS256 JSON Web Tokens for dashboard users: short-lived access tokens and rotating refresh
//! tokens (each refresh token is a database row that can be used once).

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    crypto::derive_key,
    domain::role::Role,
    ids::{TenantId, UserId},
};

const ISSUER: &str = "billing-platform";

/// Which of the two token kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

/// The claims of both token kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tid: String,
    pub role: String,
    pub typ: TokenType,
    /// The user's password version when the token was issued.
    pub pwv: i32,
    pub jti: Uuid,
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
}

/// Claims checked for shape: ids and role parsed.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub role: Role,
    pub typ: TokenType,
    pub password_version: i32,
    pub jti: Uuid,
    pub expires_at: DateTime<Utc>,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("token is invalid or expired")]
    Invalid,
    #[error("token could not be signed: {0}")]
    Sign(String),
}

/// Signs and verifies tokens with a key derived from the application secret.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtKeys")
    }
}

/// The parts of a token to issue.
pub struct Issue {
    pub user_id: UserId,
    pub tenant_id: TenantId,
    pub role: Role,
    pub typ: TokenType,
    pub password_version: i32,
    pub jti: Uuid,
    pub now: DateTime<Utc>,
    pub ttl_secs: i64,
}

impl JwtKeys {
    pub fn new(app_secret: &str) -> Self {
        let key = derive_key(app_secret, "jwt-hs256");
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 0;
        Self {
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            validation,
        }
    }

    /// Signs a token; returns it with its expiry.
    pub fn issue(&self, i: &Issue) -> Result<(String, DateTime<Utc>), JwtError> {
        let exp = i.now + chrono::Duration::seconds(i.ttl_secs);
        let claims = Claims {
            sub: i.user_id.to_string(),
            tid: i.tenant_id.to_string(),
            role: i.role.as_str().to_owned(),
            typ: i.typ,
            pwv: i.password_version,
            jti: i.jti,
            iss: ISSUER.to_owned(),
            iat: i.now.timestamp(),
            exp: exp.timestamp(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| JwtError::Sign(e.to_string()))?;
        Ok((token, exp))
    }

    /// Verifies signature, issuer and expiry and parses the claims.
    pub fn verify(&self, token: &str) -> Result<VerifiedClaims, JwtError> {
        let data = decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|_| JwtError::Invalid)?;
        let c = data.claims;
        Ok(VerifiedClaims {
            user_id: UserId::parse(&c.sub).map_err(|_| JwtError::Invalid)?,
            tenant_id: TenantId::parse(&c.tid).map_err(|_| JwtError::Invalid)?,
            role: Role::parse(&c.role).map_err(|_| JwtError::Invalid)?,
            typ: c.typ,
            password_version: c.pwv,
            jti: c.jti,
            expires_at: DateTime::from_timestamp(c.exp, 0).ok_or(JwtError::Invalid)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue(keys: &JwtKeys, now: DateTime<Utc>, ttl: i64) -> String {
        keys.issue(&Issue {
            user_id: UserId::new(),
            tenant_id: TenantId::new(),
            role: Role::Admin,
            typ: TokenType::Access,
            password_version: 3,
            jti: Uuid::new_v4(),
            now,
            ttl_secs: ttl,
        })
        .unwrap()
        .0
    }

    #[test]
    fn a_token_verifies_with_its_claims() {
        let keys = JwtKeys::new("0123456789abcdef0123456789abcdef");
        let c = keys.verify(&issue(&keys, Utc::now(), 60)).unwrap();
        assert_eq!(
            (c.role, c.typ, c.password_version),
            (Role::Admin, TokenType::Access, 3)
        );
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = JwtKeys::new("0123456789abcdef0123456789abcdef");
        let token = issue(&keys, Utc::now() - chrono::Duration::seconds(120), 60);
        assert!(keys.verify(&token).is_err());
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let a = JwtKeys::new("0123456789abcdef0123456789abcdef");
        let b = JwtKeys::new("fedcba9876543210fedcba9876543210");
        assert!(b.verify(&issue(&a, Utc::now(), 60)).is_err());
    }
}
