//! The audit log: every mutating request of a tenant, written by the request's unit of work.

use sqlx::PgPool;

use super::ServiceResult;
use crate::{
    db::{self, audit::AuditRow, pagination::Page},
    tenancy::TenantContext,
};

/// The tenant's entries (both modes), newest first: `limit` of them older than `before`.
pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    limit: i64,
    before: Option<i64>,
) -> ServiceResult<Page<AuditRow>> {
    Ok(db::audit::list(pool, ctx, limit, before).await?)
}
