//! Refresh tokens: each can be exchanged once. Presenting a used one revokes its whole family
//! (the chain of rotations it belongs to), since it was probably stolen.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::ids::{TenantId, UserId};

pub async fn insert(
    db: impl PgExecutor<'_>,
    jti: Uuid,
    family: Uuid,
    user_id: UserId,
    tenant_id: TenantId,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO refresh_tokens (jti, family, user_id, tenant_id, issued_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(jti)
    .bind(family)
    .bind(user_id)
    .bind(tenant_id)
    .bind(issued_at)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(())
}

/// Marks an unused, unrevoked, unexpired token used, in the caller's transaction; returns its
/// family, or `NotFound` for any token that cannot be used (then see [`revoke_if_reused`]).
pub async fn consume(
    conn: &mut PgConnection,
    jti: Uuid,
    now: DateTime<Utc>,
) -> Result<Uuid, DbError> {
    let family: Option<Uuid> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET used_at = $2 \
         WHERE jti = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > $2 \
         RETURNING family",
    )
    .bind(jti)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    family.ok_or(DbError::NotFound)
}

/// A token that was already used was probably stolen: revokes its whole family (the chain of
/// rotations it belongs to). Commits on its own, since the request presenting it fails.
/// Returns whether it was a used token.
pub async fn revoke_if_reused(
    pool: &PgPool,
    jti: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $2 WHERE revoked_at IS NULL AND family = \
         (SELECT family FROM refresh_tokens WHERE jti = $1 AND used_at IS NOT NULL)",
    )
    .bind(jti)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}
