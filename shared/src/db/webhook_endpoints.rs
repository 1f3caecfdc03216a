//! Webhook endpoints of a tenant and mode. Signing secrets are stored encrypted; a rotated
//! secret keeps signing (as a second signature) until its expiry.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    ids::{TenantId, WebhookEndpointId},
    tenancy::TenantContext,
};

#[derive(Debug, Clone, FromRow)]
pub struct EndpointRow {
    pub id: WebhookEndpointId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub url: String,
    pub description: String,
    pub enabled: bool,
    pub event_types: Vec<String>,
    pub secret_last4: String,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub is_default: bool,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    /// The endpoint as events carry it (the same fields the API returns; never the secret).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "webhook_endpoint",
            "url": self.url,
            "description": self.description,
            "enabled": self.enabled,
            "event_types": self.event_types,
            "livemode": self.livemode,
            "secret_last4": self.secret_last4,
            "is_default": self.is_default,
            "disabled_reason": self.disabled_reason,
            "failing_since": self.failing_since,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, url, description, enabled, event_types, \
    secret_last4, previous_secret_expires_at, is_default, failing_since, disabled_reason, \
    created_at, updated_at";

/// A new endpoint.
pub struct NewEndpoint<'a> {
    pub url: &'a str,
    pub description: &'a str,
    pub enabled: bool,
    pub event_types: &'a [String],
    pub secret_enc: Vec<u8>,
    pub secret_last4: &'a str,
    pub is_default: bool,
}

pub async fn create(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    e: NewEndpoint<'_>,
    now: DateTime<Utc>,
) -> Result<EndpointRow, DbError> {
    sqlx::query_as::<_, EndpointRow>(sqlf!(
        "INSERT INTO webhook_endpoints (id, tenant_id, livemode, url, description, enabled, \
         event_types, secret_enc, secret_last4, is_default, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING {COLUMNS}"
    ))
    .bind(WebhookEndpointId::new())
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(e.url)
    .bind(e.description)
    .bind(e.enabled)
    .bind(e.event_types)
    .bind(&e.secret_enc)
    .bind(e.secret_last4)
    .bind(e.is_default)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(Into::into)
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> Result<Page<EndpointRow>, DbError> {
    let (cond, order) = page.sql(3);
    let rows = sqlx::query_as::<_, EndpointRow>(sqlf!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND livemode = $2 \
         AND {cond} ORDER BY {order} LIMIT $4"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn get(
    pool: &PgPool,
    ctx: &TenantContext,
    id: WebhookEndpointId,
) -> Result<EndpointRow, DbError> {
    sqlx::query_as::<_, EndpointRow>(sqlf!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// The endpoint configured through the seed path, if any.
pub async fn get_default(
    db: impl sqlx::PgExecutor<'_>,
    ctx: &TenantContext,
) -> Result<EndpointRow, DbError> {
    sqlx::query_as::<_, EndpointRow>(sqlf!(
        "SELECT {COLUMNS} FROM webhook_endpoints WHERE tenant_id = $1 AND livemode = $2 \
         AND is_default"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .fetch_one(db)
    .await
    .map_err(Into::into)
}

/// Changes to an endpoint; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct EndpointChanges<'a> {
    pub url: Option<&'a str>,
    pub description: Option<&'a str>,
    pub enabled: Option<bool>,
    pub event_types: Option<&'a [String]>,
}

/// Applies changes; re-enabling an endpoint clears its failure record.
pub async fn update(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: WebhookEndpointId,
    c: EndpointChanges<'_>,
    now: DateTime<Utc>,
) -> Result<EndpointRow, DbError> {
    sqlx::query_as::<_, EndpointRow>(sqlf!(
        "UPDATE webhook_endpoints SET url = COALESCE($4, url), \
         description = COALESCE($5, description), enabled = COALESCE($6, enabled), \
         event_types = COALESCE($7, event_types), \
         failing_since = CASE WHEN $6 THEN NULL ELSE failing_since END, \
         disabled_reason = CASE WHEN $6 THEN NULL WHEN $6 = FALSE THEN 'manual' \
                           ELSE disabled_reason END, \
         updated_at = $8 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(c.url)
    .bind(c.description)
    .bind(c.enabled)
    .bind(c.event_types)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(Into::into)
}

/// Replaces the signing secret; the old one keeps signing until `old_expires_at`.
pub async fn rotate_secret(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: WebhookEndpointId,
    secret_enc: &[u8],
    secret_last4: &str,
    old_expires_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<EndpointRow, DbError> {
    sqlx::query_as::<_, EndpointRow>(sqlf!(
        "UPDATE webhook_endpoints SET previous_secret_enc = secret_enc, \
         previous_secret_expires_at = $6, secret_enc = $4, secret_last4 = $5, updated_at = $7 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(secret_enc)
    .bind(secret_last4)
    .bind(old_expires_at)
    .bind(now)
    .fetch_one(&mut *conn)
    .await
    .map_err(Into::into)
}

/// Points the default endpoint at a URL with a new secret (the old one stops signing at once,
/// as the seed contract has it), creating it when missing.
pub async fn set_default(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    url: &str,
    secret_enc: &[u8],
    secret_last4: &str,
    now: DateTime<Utc>,
) -> Result<(EndpointRow, bool), DbError> {
    let updated = sqlx::query_as::<_, EndpointRow>(sqlf!(
        "UPDATE webhook_endpoints SET url = $3, secret_enc = $4, secret_last4 = $5, \
         previous_secret_enc = NULL, previous_secret_expires_at = NULL, enabled = TRUE, \
         failing_since = NULL, disabled_reason = NULL, updated_at = $6 \
         WHERE tenant_id = $1 AND livemode = $2 AND is_default RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(url)
    .bind(secret_enc)
    .bind(secret_last4)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = updated {
        return Ok((row, false));
    }
    let all = vec!["*".to_owned()];
    let row = create(
        conn,
        ctx,
        NewEndpoint {
            url,
            description: "Default endpoint",
            enabled: true,
            event_types: &all,
            secret_enc: secret_enc.to_vec(),
            secret_last4,
            is_default: true,
        },
        now,
    )
    .await?;
    Ok((row, true))
}

/// Deletes an endpoint with its deliveries; returns the row as it was.
pub async fn delete(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: WebhookEndpointId,
) -> Result<EndpointRow, DbError> {
    // Delivery jobs have no foreign key; end them with their deliveries.
    sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM webhook_deliveries \
         WHERE tenant_id = $1 AND livemode = $2 AND endpoint_id = $3)",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as::<_, EndpointRow>(sqlf!(
        "DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(&mut *conn)
    .await
    .map_err(Into::into)
}
