//! The append-only audit log (a trigger refuses updates and deletes).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::{DbError, pagination::Page};
use crate::{ids::TenantId, tenancy::TenantContext};

/// One audited request. Never holds a secret.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub actor: String,
    pub action: String,
    pub object_id: Option<String>,
    pub request_id: String,
    pub client_addr: Option<String>,
    pub outcome: i16,
    pub at: DateTime<Utc>,
}

/// Appends an entry; in the transaction of the change it records, when there is one.
pub async fn record(conn: &mut PgConnection, e: &AuditEntry) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, livemode, actor, action, object_id, request_id, \
         client_addr, outcome, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(e.tenant_id)
    .bind(e.livemode)
    .bind(&e.actor)
    .bind(&e.action)
    .bind(&e.object_id)
    .bind(&e.request_id)
    .bind(&e.client_addr)
    .bind(e.outcome)
    .bind(e.at)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub livemode: bool,
    pub actor: String,
    pub action: String,
    pub object_id: Option<String>,
    pub request_id: String,
    pub client_addr: Option<String>,
    pub outcome: i16,
    pub created_at: DateTime<Utc>,
}

/// The tenant's audit entries (both modes), newest first, before an optional entry id.
pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    limit: i64,
    before: Option<i64>,
) -> Result<Page<AuditRow>, DbError> {
    let mut rows = sqlx::query_as::<_, AuditRow>(
        "SELECT id, livemode, actor, action, object_id, request_id, client_addr, outcome, \
         created_at FROM audit_log WHERE tenant_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(ctx.tenant_id)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit + 1)
    .fetch_all(pool)
    .await?;
    let has_more = rows.len() > usize::try_from(limit).unwrap_or(0);
    rows.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(Page {
        items: rows,
        has_more,
    })
}
