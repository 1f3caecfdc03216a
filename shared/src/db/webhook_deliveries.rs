//! Webhook deliveries (one per event and endpoint) and their attempts: listed by the API,
//! loaded and recorded by the worker fleet.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    events::{self, NewEvent},
    pagination::{Page, PageRequest},
    webhook_endpoints::EndpointRow,
};
use crate::{
    domain::webhook::{EndpointChange, EventFilter},
    ids::{DeliveryId, EventId, TenantId, WebhookEndpointId},
    jobs::{self, Finished},
    tenancy::{Scope, TenantContext},
};

#[derive(Debug, Clone, FromRow)]
pub struct DeliveryRow {
    pub id: DeliveryId,
    pub event_id: EventId,
    pub endpoint_id: WebhookEndpointId,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct AttemptRow {
    pub delivery_id: DeliveryId,
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    pub status_code: Option<i16>,
    pub latency_ms: i32,
    pub response_body: String,
    pub error: Option<String>,
}

/// An endpoint's deliveries, newest first, each with its attempts (oldest first).
pub async fn list_for_endpoint(
    pool: &PgPool,
    ctx: &TenantContext,
    endpoint_id: WebhookEndpointId,
    page: PageRequest,
) -> Result<Page<(DeliveryRow, Vec<AttemptRow>)>, DbError> {
    let (cond, order) = page.sql(4);
    let cond = cond.replace("id", "d.id");
    let order = order.replace("id", "d.id");
    let rows = sqlx::query_as::<_, DeliveryRow>(sqlf!(
        "SELECT d.id, d.event_id, d.endpoint_id, e.type AS event_type, d.status, d.attempts, \
         d.next_attempt_at, d.last_attempt_at, d.last_status_code, d.last_error, d.created_at \
         FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.tenant_id = $1 AND d.livemode = $2 AND d.endpoint_id = $3 AND {cond} \
         ORDER BY {order} LIMIT $5"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(endpoint_id)
    .bind(page.cursor_uuid())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    let page = page.finish(rows);
    let ids: Vec<Uuid> = page.items.iter().map(|d| d.id.as_uuid()).collect();
    let attempts = sqlx::query_as::<_, AttemptRow>(
        "SELECT a.delivery_id, a.attempt, a.attempted_at, a.status_code, a.latency_ms, \
         a.response_body, a.error FROM webhook_attempts a \
         JOIN webhook_deliveries d ON d.id = a.delivery_id \
         WHERE d.tenant_id = $1 AND d.livemode = $2 AND a.delivery_id = ANY($3) \
         ORDER BY a.delivery_id, a.attempt",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let mut by_delivery: HashMap<DeliveryId, Vec<AttemptRow>> = HashMap::new();
    for a in attempts {
        by_delivery.entry(a.delivery_id).or_default().push(a);
    }
    Ok(Page {
        has_more: page.has_more,
        items: page
            .items
            .into_iter()
            .map(|d| {
                let a = by_delivery.remove(&d.id).unwrap_or_default();
                (d, a)
            })
            .collect(),
    })
}

/// The delivery of an event to an endpoint.
pub async fn find(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    event_id: EventId,
    endpoint_id: WebhookEndpointId,
) -> Result<DeliveryId, DbError> {
    sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE tenant_id = $1 AND livemode = $2 \
         AND event_id = $3 AND endpoint_id = $4",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(event_id)
    .bind(endpoint_id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Why a redelivery could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RedeliverError {
    #[error("not found")]
    NotFound(&'static str),
    #[error("the endpoint is disabled")]
    EndpointDisabled,
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Sends an event again: to one endpoint, or to every enabled endpoint that already had it or
/// whose filter matches it. Existing deliveries start over (same `webhook-id`); missing ones
/// are created. Returns the deliveries queued.
pub async fn redeliver(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    event_id: EventId,
    endpoint: Option<WebhookEndpointId>,
    now: DateTime<Utc>,
) -> Result<Vec<DeliveryId>, RedeliverError> {
    let event_type: Option<(String,)> = sqlx::query_as(
        "SELECT type FROM events WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(event_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(DbError::from)?;
    let Some((event_type,)) = event_type else {
        return Err(RedeliverError::NotFound("event"));
    };
    let endpoints: Vec<(Uuid, bool, Vec<String>, Option<Uuid>)> = sqlx::query_as(
        "SELECT w.id, w.enabled, w.event_types, d.id FROM webhook_endpoints w \
         LEFT JOIN webhook_deliveries d ON d.endpoint_id = w.id AND d.event_id = $3 \
         WHERE w.tenant_id = $1 AND w.livemode = $2 AND ($4::uuid IS NULL OR w.id = $4)",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(event_id)
    .bind(endpoint)
    .fetch_all(&mut *conn)
    .await
    .map_err(DbError::from)?;
    if endpoint.is_some() {
        match endpoints.first() {
            None => return Err(RedeliverError::NotFound("webhook_endpoint")),
            Some((_, false, _, _)) => return Err(RedeliverError::EndpointDisabled),
            Some(_) => {}
        }
    }
    let mut reset = Vec::new();
    let mut missing = Vec::new();
    for (endpoint_id, enabled, types, delivery) in endpoints {
        if !enabled {
            continue;
        }
        match delivery {
            Some(d) => reset.push(d),
            None if endpoint.is_some() || EventFilter::from_stored(types).matches(&event_type) => {
                missing.push((event_id.as_uuid(), endpoint_id));
            }
            None => {}
        }
    }
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $2, updated_at = $2 \
         WHERE id = ANY($1)",
    )
    .bind(&reset)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(DbError::from)?;
    let mut lost_jobs = Vec::new();
    for id in &reset {
        if !jobs::reset(conn, *id, now).await? {
            // Its job was purged after finishing long ago: queue a new one.
            lost_jobs.push(events::delivery_job(ctx.scope(), *id, now));
        }
    }
    jobs::enqueue(conn, &lost_jobs, now).await?;
    let created = events::fan_out(conn, ctx.scope(), &missing, now).await?;
    Ok(reset
        .into_iter()
        .chain(created)
        .map(DeliveryId::from_uuid)
        .collect())
}

/// Everything needed to send one delivery.
#[derive(Debug, Clone, FromRow)]
pub struct SendItem {
    pub delivery_id: Uuid,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub status: String,
    /// Attempts recorded so far (all runs).
    pub delivery_attempts: i32,
    pub endpoint_id: Uuid,
    pub url: String,
    pub enabled: bool,
    pub secret_enc: Vec<u8>,
    pub previous_secret_enc: Option<Vec<u8>>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub event_id: EventId,
    pub event_type: String,
    pub event_data: serde_json::Value,
    pub event_created_at: DateTime<Utc>,
}

impl SendItem {
    /// The request body: the event as the API shows it.
    pub fn body(&self) -> Vec<u8> {
        let event = events::EventRow {
            id: self.event_id,
            tenant_id: self.tenant_id,
            livemode: self.livemode,
            event_type: self.event_type.clone(),
            data: self.event_data.clone(),
            created_at: self.event_created_at,
        };
        serde_json::to_vec(&event.to_json()).unwrap_or_default()
    }
}

/// Loads deliveries for sending (those whose endpoint or event is gone are left out).
pub async fn load_for_send(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<SendItem>, DbError> {
    sqlx::query_as::<_, SendItem>(
        "SELECT d.id AS delivery_id, d.tenant_id, d.livemode, d.status, \
         d.attempts AS delivery_attempts, w.id AS endpoint_id, w.url, w.enabled, w.secret_enc, \
         w.previous_secret_enc, w.previous_secret_expires_at, w.failing_since, \
         e.id AS event_id, e.type AS event_type, e.data AS event_data, \
         e.created_at AS event_created_at \
         FROM webhook_deliveries d \
         JOIN webhook_endpoints w ON w.id = d.endpoint_id \
         JOIN events e ON e.id = d.event_id \
         WHERE d.id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
    .map_err(Into::into)
}

/// One attempt as sent.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub number: i32,
    pub at: DateTime<Utc>,
    pub status_code: Option<i16>,
    pub latency_ms: i32,
    /// At most 4 KiB.
    pub response_body: String,
    pub error: Option<String>,
}

/// The end of one run of a delivery job.
#[derive(Debug, Clone)]
pub struct Completion {
    pub job: Finished,
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub scope: Scope,
    /// `None` when nothing was sent (endpoint disabled, delivery already done).
    pub attempt: Option<Attempt>,
    /// The delivery's status afterwards: `pending`, `succeeded` or `failed`.
    pub status: &'static str,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub endpoint: Option<EndpointChange>,
}

/// Records runs of delivery jobs in one transaction: the jobs' outcomes (only runs whose lease
/// still holds), their attempts, the deliveries' status and the endpoints' health; endpoints
/// disabled here get a `webhook_endpoint.disabled` event. Returns the deliveries recorded.
pub async fn record(
    pool: &PgPool,
    completions: &[Completion],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    let mut tx = pool.begin().await?;
    let finished: Vec<Finished> = completions.iter().map(|c| c.job.clone()).collect();
    let recorded = jobs::finish(&mut tx, &finished, now).await?;
    let recorded: std::collections::HashSet<Uuid> = recorded.into_iter().collect();
    let kept: Vec<&Completion> = completions
        .iter()
        .filter(|c| recorded.contains(&c.job.id))
        .collect();

    // Attempts.
    let sent: Vec<(&Completion, &Attempt)> = kept
        .iter()
        .filter_map(|c| c.attempt.as_ref().map(|a| (*c, a)))
        .collect();
    if !sent.is_empty() {
        let ids: Vec<Uuid> = sent.iter().map(|(c, _)| c.delivery_id).collect();
        let numbers: Vec<i32> = sent.iter().map(|(_, a)| a.number).collect();
        let ats: Vec<DateTime<Utc>> = sent.iter().map(|(_, a)| a.at).collect();
        let codes: Vec<Option<i16>> = sent.iter().map(|(_, a)| a.status_code).collect();
        let latencies: Vec<i32> = sent.iter().map(|(_, a)| a.latency_ms).collect();
        let bodies: Vec<&str> = sent.iter().map(|(_, a)| a.response_body.as_str()).collect();
        let errors: Vec<Option<&str>> = sent.iter().map(|(_, a)| a.error.as_deref()).collect();
        sqlx::query(
            "INSERT INTO webhook_attempts (delivery_id, attempt, attempted_at, status_code, \
             latency_ms, response_body, error) \
             SELECT * FROM unnest($1::uuid[], $2::int[], $3::timestamptz[], $4::smallint[], \
             $5::int[], $6::text[], $7::text[]) \
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(&ids)
        .bind(&numbers)
        .bind(&ats)
        .bind(&codes)
        .bind(&latencies)
        .bind(&bodies)
        .bind(&errors)
        .execute(&mut *tx)
        .await?;
    }

    // Deliveries.
    if !kept.is_empty() {
        let ids: Vec<Uuid> = kept.iter().map(|c| c.delivery_id).collect();
        let statuses: Vec<&str> = kept.iter().map(|c| c.status).collect();
        let next: Vec<Option<DateTime<Utc>>> = kept.iter().map(|c| c.next_attempt_at).collect();
        let numbers: Vec<Option<i32>> = kept
            .iter()
            .map(|c| c.attempt.as_ref().map(|a| a.number))
            .collect();
        let ats: Vec<Option<DateTime<Utc>>> = kept
            .iter()
            .map(|c| c.attempt.as_ref().map(|a| a.at))
            .collect();
        let codes: Vec<Option<i16>> = kept
            .iter()
            .map(|c| c.attempt.as_ref().and_then(|a| a.status_code))
            .collect();
        let errors: Vec<Option<String>> = kept
            .iter()
            .map(|c| match (&c.attempt, &c.job.outcome) {
                (Some(a), _) => a.error.clone(),
                (None, jobs::Outcome::Dead { error } | jobs::Outcome::Retry { error, .. }) => {
                    Some(error.clone())
                }
                (None, jobs::Outcome::Succeeded | jobs::Outcome::Defer { .. }) => None,
            })
            .collect();
        sqlx::query(
            "UPDATE webhook_deliveries d SET status = u.status, next_attempt_at = u.next, \
             attempts = COALESCE(u.number, d.attempts), \
             last_attempt_at = COALESCE(u.at, d.last_attempt_at), \
             last_status_code = CASE WHEN u.number IS NULL THEN d.last_status_code ELSE u.code END, \
             last_error = u.error, updated_at = $8 \
             FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], \
             $5::timestamptz[], $6::smallint[], $7::text[]) AS u(id, status, next, number, at, code, error) \
             WHERE d.id = u.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&next)
        .bind(&numbers)
        .bind(&ats)
        .bind(&codes)
        .bind(&errors)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }

    // Endpoints: disabling wins; otherwise the last change in the batch.
    let mut changes: HashMap<Uuid, (Scope, EndpointChange)> = HashMap::new();
    for c in &kept {
        let Some(change) = c.endpoint else { continue };
        match changes.get(&c.endpoint_id) {
            Some((_, EndpointChange::Disable(_))) => {}
            _ => {
                changes.insert(c.endpoint_id, (c.scope, change));
            }
        }
    }
    let mut healthy = Vec::new();
    let mut failing = (Vec::new(), Vec::new());
    let mut disable = (Vec::new(), Vec::new());
    // Endpoints in id order: concurrent batches lock them in the same order, never in a cycle.
    let mut changes: Vec<(Uuid, (Scope, EndpointChange))> = changes.into_iter().collect();
    changes.sort_by_key(|(id, _)| *id);
    for (id, (_, change)) in &changes {
        match change {
            EndpointChange::Healthy => healthy.push(*id),
            EndpointChange::Failing(since) => {
                failing.0.push(*id);
                failing.1.push(*since);
            }
            EndpointChange::Disable(reason) => {
                disable.0.push(*id);
                disable.1.push(reason.as_str());
            }
        }
    }
    if !healthy.is_empty() {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL \
             WHERE id = ANY($1) AND failing_since IS NOT NULL",
        )
        .bind(&healthy)
        .execute(&mut *tx)
        .await?;
    }
    if !failing.0.is_empty() {
        sqlx::query(
            "UPDATE webhook_endpoints w SET failing_since = u.since \
             FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, since) \
             WHERE w.id = u.id AND w.failing_since IS NULL",
        )
        .bind(&failing.0)
        .bind(&failing.1)
        .execute(&mut *tx)
        .await?;
    }
    if !disable.0.is_empty() {
        let disabled = sqlx::query_as::<_, EndpointRow>(
            "UPDATE webhook_endpoints w SET enabled = FALSE, disabled_reason = u.reason, \
             updated_at = $3 FROM unnest($1::uuid[], $2::text[]) AS u(id, reason) \
             WHERE w.id = u.id AND w.enabled \
             RETURNING w.id, w.tenant_id, w.livemode, w.url, w.description, w.enabled, \
             w.event_types, w.secret_last4, w.previous_secret_expires_at, w.is_default, \
             w.failing_since, w.disabled_reason, w.created_at, w.updated_at",
        )
        .bind(&disable.0)
        .bind(&disable.1)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for endpoint in disabled {
            let scope = Scope {
                tenant_id: endpoint.tenant_id,
                livemode: endpoint.livemode,
            };
            events::record(
                &mut tx,
                scope,
                NewEvent::new("webhook_endpoint.disabled", endpoint.to_json()),
                now,
            )
            .await?;
        }
    }
    tx.commit().await?;
    Ok(kept.iter().map(|c| c.delivery_id).collect())
}
