//! Gap-free invoice numbers: a counter row per (tenant, mode, prefix).

use sqlx::PgConnection;

use super::DbError;
use crate::tenancy::Scope;

/// Takes the next number of `prefix` in this transaction (the first is 1). The counter row
/// stays locked until the transaction ends: another finalization waits, and a rollback gives
/// the number back.
pub async fn next(conn: &mut PgConnection, scope: Scope, prefix: &str) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "INSERT INTO invoice_number_counters (tenant_id, livemode, prefix, last_number) \
         VALUES ($1, $2, $3, 1) \
         ON CONFLICT (tenant_id, livemode, prefix) \
         DO UPDATE SET last_number = invoice_number_counters.last_number + 1 \
         RETURNING last_number",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(prefix)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}
