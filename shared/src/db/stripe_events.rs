//! Events received from Stripe: stored once per Stripe event id, then processed by a job.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::jobs::{self, NewJob, Queue};

/// The job kind that processes a stored Stripe event.
pub const PROCESS_KIND: &str = "stripe.process_event";

#[derive(Debug, Clone, FromRow)]
pub struct StripeEventRow {
    pub id: String,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub account: Option<String>,
    pub livemode: bool,
    pub created: DateTime<Utc>,
    pub payload: serde_json::Value,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

/// A verified event as received.
#[derive(Debug, Clone)]
pub struct Received<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub account: Option<&'a str>,
    pub livemode: bool,
    pub created: DateTime<Utc>,
    pub payload: &'a serde_json::Value,
}

/// Stores an event and queues its processing; `false` when it was stored before (Stripe
/// delivers at least once), in which case nothing changes.
pub async fn record(
    conn: &mut PgConnection,
    e: &Received<'_>,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let inserted: Option<(String,)> = sqlx::query_as(
        "INSERT INTO stripe_events (id, type, account, livemode, created, payload, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING id",
    )
    .bind(e.id)
    .bind(e.event_type)
    .bind(e.account)
    .bind(e.livemode)
    .bind(e.created)
    .bind(e.payload)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if inserted.is_none() {
        return Ok(false);
    }
    let job = NewJob {
        id: Uuid::now_v7(),
        queue: Queue::StripeSync,
        kind: PROCESS_KIND,
        tenant: None,
        payload: serde_json::json!({ "event_id": e.id }),
        run_at: now,
        max_attempts: Queue::StripeSync.retry_policy().max_attempts,
    };
    jobs::enqueue(conn, &[job], now).await?;
    Ok(true)
}

pub async fn get(pool: &PgPool, id: &str) -> Result<StripeEventRow, DbError> {
    sqlx::query_as::<_, StripeEventRow>(
        "SELECT id, type, account, livemode, created, payload, received_at, processed_at, outcome \
         FROM stripe_events WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// Marks an event processed with its outcome, unless it already was: `false` then (another
/// run got there first and nothing must be done again). Use inside the transaction applying
/// the event's effect.
pub async fn mark_processed(
    conn: &mut PgConnection,
    id: &str,
    outcome: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE stripe_events SET processed_at = $2, outcome = $3 \
         WHERE id = $1 AND processed_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
