//! Idempotency keys: the first response to a POST is stored and replayed for 24 hours.

use sqlx::PgPool;

use super::DbError;

/// How long a key is honoured.
pub const RETENTION_HOURS: i32 = 24;

/// What to do with a request carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: run the request, then [`complete`] or [`release`].
    New,
    /// Seen with the same request: send the stored response again.
    Replay {
        status: u16,
        content_type: Option<String>,
        body: Vec<u8>,
    },
    /// Seen with a different request.
    Mismatch,
    /// The first request with this key is still running.
    InProgress,
}

/// Scope of a key: tenant and mode.
pub use crate::tenancy::Scope;

type Stored = (Vec<u8>, Option<i16>, Option<String>, Option<Vec<u8>>);

pub async fn claim(
    pool: &PgPool,
    scope: Scope,
    key: &str,
    request_hash: &[u8; 32],
) -> Result<Claim, DbError> {
    // Forget an expired key so it can be used afresh.
    sqlx::query(
        "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND livemode = $2 AND key = $3 \
         AND created_at < now() - make_interval(hours => $4)",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(key)
    .bind(RETENTION_HOURS)
    .execute(pool)
    .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, livemode, key, request_hash) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(key)
    .bind(&request_hash[..])
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(Claim::New);
    }
    let stored: Option<Stored> = sqlx::query_as(
        "SELECT request_hash, status, content_type, response_body FROM idempotency_keys \
         WHERE tenant_id = $1 AND livemode = $2 AND key = $3",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(match stored {
        // Released between our insert and select: treat as in progress; the client retries.
        None => Claim::InProgress,
        Some((hash, _, _, _)) if hash.as_slice() != &request_hash[..] => Claim::Mismatch,
        Some((_, Some(status), content_type, body)) => Claim::Replay {
            status: u16::try_from(status).unwrap_or(500),
            content_type,
            body: body.unwrap_or_default(),
        },
        Some((_, None, _, _)) => Claim::InProgress,
    })
}

/// Stores the response of the first request.
pub async fn complete(
    pool: &PgPool,
    scope: Scope,
    key: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $4, content_type = $5, response_body = $6, \
         completed_at = now() WHERE tenant_id = $1 AND livemode = $2 AND key = $3",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(500))
    .bind(content_type)
    .bind(body)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets a key whose request failed on our side, so a retry runs it again.
pub async fn release(pool: &PgPool, scope: Scope, key: &str) -> Result<(), DbError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND livemode = $2 AND key = $3")
        .bind(scope.tenant_id)
        .bind(scope.livemode)
        .bind(key)
        .execute(pool)
        .await?;
    Ok(())
}

/// Deletes keys past retention; returns how many.
pub async fn purge_expired(pool: &PgPool) -> Result<u64, DbError> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(RETENTION_HOURS)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
