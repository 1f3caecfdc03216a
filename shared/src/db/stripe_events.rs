//! Events received from Stripe: stored once per Stripe event id, then processed by a job.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::DbError;
use crate::jobs::{self, Job, NewJob};

crate::text_enum! {
    /// Where a received event stands.
    pub enum Status {
        /// Stored; its job has not processed it yet.
        Received = "received",
        /// Its effect was applied.
        Applied = "applied",
        /// A newer description of its object was applied already; nothing changed.
        Stale = "stale",
        /// About something the platform does not act on (yet): kept whole, to be processed
        /// again once it does.
        Ignored = "ignored",
    }
}

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
    pub status: Status,
    pub outcome: Option<String>,
}

const COLUMNS: &str =
    "id, type, account, livemode, created, payload, received_at, processed_at, status, outcome";

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
    // Its job's id comes from the event's id: an event stored again after its row was purged
    // (Stripe retries for days) finds its old job and makes it due again.
    jobs::enqueue_or_reset(conn, &[process_job(e.id, now)], now).await?;
    Ok(true)
}

/// The job that processes an event: one per event.
fn process_job(event_id: &str, now: DateTime<Utc>) -> NewJob {
    Job::ProcessStripeEvent {
        event_id: event_id.to_owned(),
    }
    .to_new(None, now)
}

pub async fn get(pool: &PgPool, id: &str) -> Result<StripeEventRow, DbError> {
    sqlx::query_as::<_, StripeEventRow>(sqlf!("SELECT {COLUMNS} FROM stripe_events WHERE id = $1"))
        .bind(id)
        .fetch_one(pool)
        .await
        .map_err(Into::into)
}

/// The event if it is still to be processed, locked until the transaction ends: a second run
/// of its job waits, then finds it processed.
pub async fn lock_unprocessed(
    conn: &mut PgConnection,
    id: &str,
) -> Result<Option<StripeEventRow>, DbError> {
    sqlx::query_as::<_, StripeEventRow>(sqlf!(
        "SELECT {COLUMNS} FROM stripe_events WHERE id = $1 AND processed_at IS NULL FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await
    .map_err(Into::into)
}

/// Records how an event was processed.
pub async fn mark_processed(
    conn: &mut PgConnection,
    id: &str,
    status: Status,
    outcome: &str,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE stripe_events SET processed_at = $2, status = $3, outcome = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .bind(status)
    .bind(outcome)
    .execute(conn)
    .await?;
    Ok(())
}

/// Claims the one-time reprocessing of a type prefix's ignored events; `false` when another
/// worker did (or does) it.
pub async fn claim_reprocessing(
    conn: &mut PgConnection,
    type_prefix: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let claimed: Option<(String,)> = sqlx::query_as(
        "INSERT INTO stripe_event_reprocessing (type_prefix, requeued, done_at) \
         VALUES ($1, 0, $2) ON CONFLICT (type_prefix) DO NOTHING RETURNING type_prefix",
    )
    .bind(type_prefix)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(claimed.is_some())
}

pub async fn record_reprocessed(
    conn: &mut PgConnection,
    type_prefix: &str,
    requeued: u64,
) -> Result<(), DbError> {
    sqlx::query("UPDATE stripe_event_reprocessing SET requeued = $2 WHERE type_prefix = $1")
        .bind(type_prefix)
        .bind(i64::try_from(requeued).unwrap_or(i64::MAX))
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes the ignored events whose type starts with `type_prefix` unprocessed again, each with
/// a new processing job; returns how many.
pub async fn requeue_ignored(
    conn: &mut PgConnection,
    type_prefix: &str,
    now: DateTime<Utc>,
) -> Result<u64, DbError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "UPDATE stripe_events SET processed_at = NULL, status = 'received', outcome = NULL \
         WHERE status = 'ignored' AND starts_with(type, $1) RETURNING id",
    )
    .bind(type_prefix)
    .fetch_all(&mut *conn)
    .await?;
    let jobs: Vec<NewJob> = ids.iter().map(|id| process_job(id, now)).collect();
    // The event's job ran before (same id): it runs again from scratch.
    jobs::enqueue_or_reset(conn, &jobs, now).await?;
    Ok(ids.len() as u64)
}
