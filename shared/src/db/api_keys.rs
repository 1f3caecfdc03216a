//! API keys, stored as SHA-256 hashes with a display prefix and last four characters.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use subtle::ConstantTimeEq;

use super::{
    DbError,
    events::{self, NewEvent},
};
use crate::{
    domain::{
        api_key::{GeneratedKey, KeyKind},
        mode::Mode,
    },
    ids::{ApiKeyId, TenantId},
    tenancy::{Scope, TenantContext},
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
) -> Result<ApiKeyRow, DbError> {
    let prefix = crate::domain::api_key::prefix(key.kind, key.mode);
    sqlx::query_as::<_, ApiKeyRow>(sqlf!(
        "INSERT INTO api_keys (id, tenant_id, livemode, kind, key_hash, prefix, last4) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(tenant_id)
    .bind(key.mode.livemode())
    .bind(key.kind.as_str())
    .bind(&key.hash[..])
    .bind(prefix)
    .bind(&key.last4)
    .fetch_one(&mut *conn)
    .await
    .map_err(Into::into)
}

/// An active key found by its hash, with whether its tenant is active.
#[derive(Debug, Clone, FromRow)]
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

/// Revokes the active keys of the given modes, each with its `api_key.revoked` event;
/// returns the revoked rows.
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
    record_each(conn, ctx, &rows, "api_key.revoked", now).await?;
    Ok(rows)
}

/// Records one `event_type` event per key, one insert per mode.
async fn record_each(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    rows: &[ApiKeyRow],
    event_type: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    for livemode in [false, true] {
        let batch: Vec<NewEvent> = rows
            .iter()
            .filter(|row| row.livemode == livemode)
            .map(|row| NewEvent::new(event_type, row.to_json()))
            .collect();
        let scope = Scope {
            tenant_id: ctx.tenant_id,
            livemode,
        };
        events::record_many(&mut *conn, scope, &batch, now).await?;
    }
    Ok(())
}

/// Revokes the active keys of the given modes and inserts new ones, in the caller's
/// transaction.
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
        created.push(insert(&mut *conn, ctx.tenant_id, ApiKeyId::new(), key).await?);
    }
    record_each(conn, ctx, &created, "api_key.created", now).await?;
    Ok((revoked, created))
}
