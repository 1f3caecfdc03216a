//! Idempotency keys: the first response to a POST is stored and replayed for 24 hours, to the
//! credential that made the request.
//!
//! A key is claimed inside the transaction that does the request's work, and its response is
//! stored in that same transaction: they commit together or not at all, so a request that dies
//! half-way leaves no trace and its retry simply runs. A concurrent request with the same key
//! waits on the claim until the first one commits (then replays its response) or rolls back
//! (then runs itself). Stored bodies are encrypted: they may hold secrets shown only once.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::DbError;
use crate::tenancy::Scope;

/// How long a key is honoured.
pub const RETENTION_HOURS: i64 = 24;

/// Who a key belongs to: the tenant and mode, and the credential (an API key's or a user's
/// id) that sent it. Another credential using the same key has its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyScope {
    pub scope: Scope,
    pub actor: String,
    pub key: String,
}

/// A stored response; `body_enc` is encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub status: i16,
    pub content_type: Option<String>,
    pub body_enc: Vec<u8>,
}

/// What to do with a request carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use (or the earlier use expired): run the request, then [`complete`] in the same
    /// transaction.
    New,
    /// Seen with the same request: send the stored response again.
    Replay(Stored),
    /// Seen with a different request.
    Mismatch,
}

fn expired_before(now: DateTime<Utc>) -> DateTime<Utc> {
    now - chrono::Duration::hours(RETENTION_HOURS)
}

/// Claims a key in the caller's transaction (waiting while another transaction holds it).
pub async fn claim(
    conn: &mut PgConnection,
    k: &KeyScope,
    request_hash: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<Claim, DbError> {
    // Twice at most: a key found expired and purged between the two statements is claimed
    // on the second pass.
    for _ in 0..2 {
        let claimed: Option<(bool,)> = sqlx::query_as(
            "INSERT INTO idempotency_keys (tenant_id, livemode, actor, key, request_hash, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (tenant_id, livemode, actor, key) DO UPDATE SET \
             request_hash = EXCLUDED.request_hash, created_at = EXCLUDED.created_at, \
             status = NULL, content_type = NULL, response_enc = NULL, completed_at = NULL \
             WHERE idempotency_keys.created_at < $7 RETURNING true",
        )
        .bind(k.scope.tenant_id)
        .bind(k.scope.livemode)
        .bind(&k.actor)
        .bind(&k.key)
        .bind(&request_hash[..])
        .bind(now)
        .bind(expired_before(now))
        .fetch_optional(&mut *conn)
        .await?;
        if claimed.is_some() {
            return Ok(if used_before_credentials(conn, k, now).await? {
                Claim::Mismatch
            } else {
                Claim::New
            });
        }
        let row: Option<KeyRow> = sqlx::query_as(
            "SELECT request_hash, status, content_type, response_enc FROM idempotency_keys \
             WHERE tenant_id = $1 AND livemode = $2 AND actor = $3 AND key = $4",
        )
        .bind(k.scope.tenant_id)
        .bind(k.scope.livemode)
        .bind(&k.actor)
        .bind(&k.key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { continue };
        return Ok(match (row.status, row.response_enc) {
            _ if row.request_hash.as_slice() != &request_hash[..] => Claim::Mismatch,
            (Some(status), Some(body_enc)) => Claim::Replay(Stored {
                status,
                content_type: row.content_type,
                body_enc,
            }),
            // A committed key always has its response; refuse rather than run twice.
            _ => Claim::Mismatch,
        });
    }
    Ok(Claim::Mismatch)
}

/// Whether the key was used, within its 24 hours, before keys belonged to credentials: such
/// a request may have run, and nobody can replay it, so it must not run again.
async fn used_before_credentials(
    conn: &mut PgConnection,
    k: &KeyScope,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM idempotency_keys WHERE tenant_id = $1 AND livemode = $2 \
         AND actor = '' AND key = $3 AND created_at >= $4)",
    )
    .bind(k.scope.tenant_id)
    .bind(k.scope.livemode)
    .bind(&k.key)
    .bind(expired_before(now))
    .fetch_one(conn)
    .await?)
}

/// A key as stored.
#[derive(FromRow)]
struct KeyRow {
    request_hash: Vec<u8>,
    status: Option<i16>,
    content_type: Option<String>,
    response_enc: Option<Vec<u8>>,
}

/// Stores the response of a claimed key, in the claiming transaction.
pub async fn complete(
    conn: &mut PgConnection,
    k: &KeyScope,
    stored: &Stored,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $5, content_type = $6, response_enc = $7, \
         completed_at = $8 WHERE tenant_id = $1 AND livemode = $2 AND actor = $3 AND key = $4",
    )
    .bind(k.scope.tenant_id)
    .bind(k.scope.livemode)
    .bind(&k.actor)
    .bind(&k.key)
    .bind(stored.status)
    .bind(&stored.content_type)
    .bind(&stored.body_enc)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores the response of a request whose work was rolled back (a client error after the
/// claim), unless another request has claimed the key since.
pub async fn store(
    conn: &mut PgConnection,
    k: &KeyScope,
    request_hash: &[u8; 32],
    stored: &Stored,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, livemode, actor, key, request_hash, status, \
         content_type, response_enc, created_at, completed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT DO NOTHING",
    )
    .bind(k.scope.tenant_id)
    .bind(k.scope.livemode)
    .bind(&k.actor)
    .bind(&k.key)
    .bind(&request_hash[..])
    .bind(stored.status)
    .bind(&stored.content_type)
    .bind(&stored.body_enc)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes keys past retention, at most `limit`; returns how many.
pub async fn purge_expired(pool: &PgPool, now: DateTime<Utc>, limit: i64) -> Result<u64, DbError> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys \
         WHERE created_at < $1 LIMIT $2)",
    )
    .bind(expired_before(now))
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
