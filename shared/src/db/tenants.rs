//! Tenants. Registration creates the tenant, its owner and its keys in one transaction.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgExecutor, PgPool};

use super::DbError;
use crate::{
    domain::api_key::GeneratedKey,
    ids::{ApiKeyId, TenantId, UserId},
    tenancy::TenantContext,
};

#[derive(Debug, Clone, FromRow)]
pub struct TenantRow {
    pub id: TenantId,
    pub company_name: String,
    pub slug: String,
    pub email: String,
    pub domain: Option<String>,
    pub platform_fee_bps: i32,
    pub branding: serde_json::Value,
    pub is_active: bool,
    pub subscription_tier: String,
    pub stripe_connect_account_id: Option<String>,
    pub stripe_connect_status: super::stripe_accounts::ConnectStatus,
    pub webhook_secret_last4: String,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, company_name, slug, email, domain, platform_fee_bps, branding, \
    is_active, subscription_tier, stripe_connect_account_id, stripe_connect_status, \
    webhook_secret_last4, created_at";

/// Everything registration writes.
pub struct NewTenant<'a> {
    pub tenant_id: TenantId,
    pub company_name: &'a str,
    pub slug_base: &'a str,
    pub email: &'a str,
    pub domain: Option<&'a str>,
    pub webhook_secret_enc: Vec<u8>,
    pub webhook_secret_last4: &'a str,
    pub owner_id: UserId,
    pub owner_password_hash: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub keys: &'a [GeneratedKey],
    pub now: DateTime<Utc>,
}

/// Creates the tenant with a unique slug, its owner user and its API keys.
/// Returns the tenant and the key rows, in the order of `t.keys`.
pub async fn register(
    tx: &mut sqlx::PgConnection,
    t: NewTenant<'_>,
) -> Result<(TenantRow, Vec<super::api_keys::ApiKeyRow>), DbError> {
    let mut slug = t.slug_base.to_owned();
    let mut inserted = None;
    for attempt in 0..8 {
        if attempt > 0 {
            let suffix = hex::encode(crate::crypto::random_bytes::<3>());
            slug = format!("{}-{suffix}", t.slug_base);
        }
        inserted = sqlx::query_as::<_, TenantRow>(sqlf!(
            "INSERT INTO tenants (id, company_name, slug, email, domain, webhook_secret_enc, \
             webhook_secret_last4, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (slug) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(t.tenant_id)
        .bind(t.company_name)
        .bind(&slug)
        .bind(t.email)
        .bind(t.domain)
        .bind(&t.webhook_secret_enc)
        .bind(t.webhook_secret_last4)
        .bind(t.now)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            break;
        }
    }
    let tenant = inserted.ok_or_else(|| DbError::UniqueViolation("tenants_slug_key".into()))?;
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, password_hash, first_name, last_name, role, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'owner', $7, $7)",
    )
    .bind(t.owner_id)
    .bind(t.tenant_id)
    .bind(t.email)
    .bind(t.owner_password_hash)
    .bind(t.first_name)
    .bind(t.last_name)
    .bind(t.now)
    .execute(&mut *tx)
    .await?;
    let mut rows = Vec::with_capacity(t.keys.len());
    for key in t.keys {
        rows.push(
            super::api_keys::insert(&mut *tx, t.tenant_id, ApiKeyId::new(), key, t.now).await?,
        );
    }
    Ok((tenant, rows))
}

/// The caller's own tenant.
pub async fn get(db: impl PgExecutor<'_>, ctx: &TenantContext) -> Result<TenantRow, DbError> {
    sqlx::query_as::<_, TenantRow>(sqlf!("SELECT {COLUMNS} FROM tenants WHERE id = $1"))
        .bind(ctx.tenant_id)
        .fetch_one(db)
        .await
        .map_err(Into::into)
}

/// Counts shown in tenant details.
pub async fn counts(pool: &PgPool, ctx: &TenantContext) -> Result<(i64, i64), DbError> {
    let row: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM users WHERE tenant_id = $1 AND is_active), \
                (SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NULL)",
    )
    .bind(ctx.tenant_id)
    .fetch_one(pool)
    .await?;
    Ok(row)
}

/// Replaces the tenant's webhook signing secret (the seed's single webhook).
pub async fn set_webhook_secret(
    conn: &mut sqlx::PgConnection,
    ctx: &TenantContext,
    secret_enc: &[u8],
    last4: &str,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE tenants SET webhook_secret_enc = $2, webhook_secret_last4 = $3, updated_at = now() \
         WHERE id = $1",
    )
    .bind(ctx.tenant_id)
    .bind(secret_enc)
    .bind(last4)
    .execute(conn)
    .await?;
    Ok(())
}

/// What billing a tenant's customers needs to know of the tenant.
#[derive(Debug, Clone, FromRow)]
pub struct BillingProfile {
    pub slug: String,
    pub company_name: String,
    pub platform_fee_bps: i32,
}

pub async fn billing_profile(
    conn: &mut sqlx::PgConnection,
    tenant: TenantId,
) -> Result<BillingProfile, DbError> {
    sqlx::query_as::<_, BillingProfile>(
        "SELECT slug, company_name, platform_fee_bps FROM tenants WHERE id = $1",
    )
    .bind(tenant)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// The billing profiles of some tenants, with their ids.
pub async fn billing_profiles(
    conn: &mut sqlx::PgConnection,
    tenants: &[TenantId],
) -> Result<Vec<(TenantId, BillingProfile)>, DbError> {
    #[derive(FromRow)]
    struct Row {
        id: TenantId,
        #[sqlx(flatten)]
        profile: BillingProfile,
    }
    let ids: Vec<uuid::Uuid> = tenants.iter().map(TenantId::as_uuid).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, slug, company_name, platform_fee_bps FROM tenants WHERE id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.profile)).collect())
}
