//! API keys, stored as SHA-256 hashes with a display prefix and last four characters.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use subtle::ConstantTimeEq;

use super::DbError;
use crate::{
    domain::{
        api_key::{GeneratedKey, KeyKind},
        mode::Mode,
    },
    ids::{ApiKeyId, TenantId},
    tenancy::{Actor, TenantContext},
};

#[derive(Debug, Clone, FromRow)]
pub struct ApiKeyRow {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub kind: String,
    pub prefix: String,
    pub last4: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKeyRow {
    pub fn kind(&self) -> KeyKind {
        KeyKind::parse(&self.kind).unwrap_or(KeyKind::Publishable)
    }

    /// `sk_test_…abcd`
    pub fn display(&self) -> String {
        format!("{}…{}", self.prefix, self.last4)
    }

    /// The key as events carry it (the fields the API lists; never the key).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "api_key",
            "kind": self.kind,
            "mode": if self.livemode { "live" } else { "test" },
            "livemode": self.livemode,
            "prefix": self.prefix,
            "last4": self.last4,
            "display": self.display(),
            "status": if self.revoked_at.is_some() { "revoked" } else { "active" },
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, kind, prefix, last4, created_at, revoked_at";

pub(crate) async fn insert(
    conn: &mut PgConnection,
    tenant_id: TenantId,
    id: ApiKeyId,
    key: &GeneratedKey,
    now: DateTime<Utc>,
) -> Result<ApiKeyRow, DbError> {
    let prefix = crate::domain::api_key::prefix(key.kind, key.mode);
    sqlx::query_as::<_, ApiKeyRow>(sqlf!(
        "INSERT INTO api_keys (id, tenant_id, livemode, kind, key_hash, prefix, last4, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(key.mode.livemode())
    .bind(key.kind.as_str())
    .bind(&key.hash[..])
    .bind(prefix)
    .bind(&key.last4)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(Into::into)
}

/// An active key found by its hash, with whether its tenant is active. Only read from the
/// database (`non_exhaustive`: never built by hand elsewhere), since a context is built from it.
#[derive(Debug, Clone, FromRow)]
#[non_exhaustive]
pub struct ActiveKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub kind: String,
    pub prefix: String,
    pub last4: String,
    pub key_hash: Vec<u8>,
    pub tenant_active: bool,
}

impl ActiveKey {
    /// The context of a request made with this key, once its hash has matched. The kind is the
    /// stored one (the presented prefix agrees with it, as the hash covers the prefix).
    pub fn context(&self) -> TenantContext {
        TenantContext {
            tenant_id: self.tenant_id,
            mode: Mode::from_livemode(self.livemode),
            actor: Actor::ApiKey {
                id: self.id,
                kind: KeyKind::parse(&self.kind).unwrap_or(KeyKind::Publishable),
                display: format!("{}…{}", self.prefix, self.last4),
            },
        }
    }
}

/// Looks an active key up by hash (authentication; precedes any tenant context).
pub async fn find_active_by_hash(pool: &PgPool, hash: &[u8; 32]) -> Result<ActiveKey, DbError> {
    let key = sqlx::query_as::<_, ActiveKey>(
        "SELECT k.id, k.tenant_id, k.livemode, k.kind, k.prefix, k.last4, k.key_hash, \
         t.is_active AS tenant_active \
         FROM api_keys k JOIN tenants t ON t.id = k.tenant_id \
         WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
    )
    .bind(&hash[..])
    .fetch_one(pool)
    .await?;
    // The index found the row; compare again in constant time before trusting it.
    if bool::from(key.key_hash.as_slice().ct_eq(&hash[..])) {
        Ok(key)
    } else {
        Err(DbError::NotFound)
    }
}

/// The tenant's keys, active ones first, newest first.
pub async fn list(pool: &PgPool, ctx: &TenantContext) -> Result<Vec<ApiKeyRow>, DbError> {
    sqlx::query_as::<_, ApiKeyRow>(sqlf!(
        "SELECT {COLUMNS} FROM api_keys WHERE tenant_id = $1 \
         ORDER BY revoked_at IS NOT NULL, revoked_at DESC, livemode DESC, kind DESC, id DESC \
         LIMIT 100"
    ))
    .bind(ctx.tenant_id)
    .fetch_all(pool)
    .await
    .map_err(Into::into)
}

/// Revokes the active keys of the given modes; returns the revoked rows.
pub async fn revoke(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    modes: &[Mode],
    by: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ApiKeyRow>, DbError> {
    let livemodes: Vec<bool> = modes.iter().map(|m| m.livemode()).collect();
    let rows = sqlx::query_as::<_, ApiKeyRow>(sqlf!(
        "UPDATE api_keys SET revoked_at = $4, revoked_by = $3 \
         WHERE tenant_id = $1 AND livemode = ANY($2) AND revoked_at IS NULL \
         RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(&livemodes)
    .bind(by)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows)
}

/// Revokes the active keys of the given modes and inserts new ones.
pub async fn regenerate(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    keys: &[GeneratedKey],
    by: &str,
    now: DateTime<Utc>,
) -> Result<(Vec<ApiKeyRow>, Vec<ApiKeyRow>), DbError> {
    let mut modes: Vec<Mode> = keys.iter().map(|k| k.mode).collect();
    modes.dedup();
    // Serialise concurrent regenerations of one tenant.
    sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(ctx.tenant_id)
        .execute(&mut *conn)
        .await?;
    let revoked = revoke(conn, ctx, &modes, by, now).await?;
    let mut created = Vec::with_capacity(keys.len());
    for key in keys {
        created.push(insert(&mut *conn, ctx.tenant_id, ApiKeyId::new(), key, now).await?);
    }
    Ok((revoked, created))
}
