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
    domain::webhook::{DeliveryStatus, EndpointChange, EventFilter},
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
    pub status: DeliveryStatus,
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
    let (cond, order) = page.sql_on("d.id", 4);
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
    .bind(page.bounds())
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
    // Jobs first, then deliveries, each in id order: the order the worker locks them in.
    reset.sort_unstable();
    let found = jobs::reset_many(conn, &reset, now).await?;
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $2, updated_at = $2 \
         WHERE id IN (SELECT id FROM webhook_deliveries WHERE id = ANY($1) ORDER BY id FOR UPDATE)",
    )
    .bind(&reset)
    .bind(now)
    .execute(&mut *conn)
    .await
    .map_err(DbError::from)?;
    // A delivery whose job was purged after finishing long ago gets a new one.
    let lost_jobs: Vec<jobs::NewJob> = reset
        .iter()
        .filter(|id| !found.contains(id))
        .map(|id| events::delivery_job(ctx.scope(), *id, now))
        .collect();
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
    pub status: DeliveryStatus,
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
    /// The tenant and mode of the delivery.
    pub fn scope(&self) -> Scope {
        Scope {
            tenant_id: self.tenant_id,
            livemode: self.livemode,
        }
    }
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

/// A claimed job joined with its delivery, endpoint and event (absent when gone).
#[derive(FromRow)]
struct ClaimedSend {
    id: Uuid,
    token: Uuid,
    queue: String,
    kind: String,
    tenant_id: Option<Uuid>,
    livemode: Option<bool>,
    payload: serde_json::Value,
    attempts: i32,
    max_attempts: i32,
    delivery_id: Option<Uuid>,
    d_tenant_id: Option<TenantId>,
    d_livemode: Option<bool>,
    status: Option<DeliveryStatus>,
    delivery_attempts: Option<i32>,
    endpoint_id: Option<Uuid>,
    url: Option<String>,
    enabled: Option<bool>,
    secret_enc: Option<Vec<u8>>,
    previous_secret_enc: Option<Vec<u8>>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
    failing_since: Option<DateTime<Utc>>,
    event_id: Option<EventId>,
    event_type: Option<String>,
    event_data: Option<serde_json::Value>,
    event_created_at: Option<DateTime<Utc>>,
}

impl ClaimedSend {
    fn split(self) -> (jobs::Claimed, Option<SendItem>) {
        let claimed = jobs::Claimed {
            id: self.id,
            token: self.token,
            queue: self.queue,
            kind: self.kind,
            tenant_id: self.tenant_id,
            livemode: self.livemode,
            payload: self.payload,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
        };
        let item = (|| {
            Some(SendItem {
                delivery_id: self.delivery_id?,
                tenant_id: self.d_tenant_id?,
                livemode: self.d_livemode?,
                status: self.status?,
                delivery_attempts: self.delivery_attempts?,
                endpoint_id: self.endpoint_id?,
                url: self.url?,
                enabled: self.enabled?,
                secret_enc: self.secret_enc?,
                previous_secret_enc: self.previous_secret_enc,
                previous_secret_expires_at: self.previous_secret_expires_at,
                failing_since: self.failing_since,
                event_id: self.event_id?,
                event_type: self.event_type?,
                event_data: self.event_data?,
                event_created_at: self.event_created_at?,
            })
        })();
        (claimed, item)
    }
}

/// Claims delivery job messages (as [`jobs::claim`] does) and loads what sending each needs,
/// in one statement: one round trip per batch. A claimed job whose delivery, endpoint or event
/// is gone comes back without an item. `relaxed` commits without waiting for the disk (see
/// [`jobs::claim`]).
pub async fn claim_for_send(
    relaxed: &PgPool,
    msgs: &[jobs::JobMessage],
    now: DateTime<Utc>,
    run_lease: std::time::Duration,
) -> Result<Vec<(jobs::Claimed, Option<SendItem>)>, DbError> {
    let (ids, tokens) = jobs::sorted_messages(msgs);
    let (now, until, renew_before) = jobs::claim_times(now, run_lease);
    let rows = sqlx::query_as::<_, ClaimedSend>(sqlf!(
        "WITH {claim} \
         SELECT c.*, d.id AS delivery_id, d.tenant_id AS d_tenant_id, d.livemode AS d_livemode, \
         d.status, d.attempts AS delivery_attempts, w.id AS endpoint_id, w.url, w.enabled, \
         w.secret_enc, w.previous_secret_enc, w.previous_secret_expires_at, w.failing_since, \
         e.id AS event_id, e.type AS event_type, \
         COALESCE(e.data, e.data_jsonb::json) AS event_data, \
         e.created_at AS event_created_at \
         FROM claimed c LEFT JOIN (webhook_deliveries d \
             JOIN webhook_endpoints w ON w.id = d.endpoint_id \
             JOIN events e ON e.id = d.event_id) ON d.id = c.id",
        claim = jobs::CLAIM_SQL
    ))
    .bind(&ids)
    .bind(&tokens)
    .bind(now)
    .bind(until)
    .bind(renew_before)
    .fetch_all(relaxed)
    .await?;
    Ok(rows.into_iter().map(ClaimedSend::split).collect())
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
    /// The delivery's status afterwards.
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub endpoint: Option<EndpointChange>,
}

/// Records runs of delivery jobs: the jobs' outcomes (only runs whose lease still holds), their
/// attempts, the deliveries' status and the endpoints' health; endpoints disabled here get a
/// `webhook_endpoint.disabled` event. Returns the deliveries recorded.
///
/// Jobs, deliveries and attempts are written by one statement, which commits on its own when no
/// endpoint changes (the usual case: one round trip for the whole batch); otherwise the endpoint
/// changes join it in one transaction.
pub async fn record(
    pool: &PgPool,
    completions: &[Completion],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    // Rows are locked in one order everywhere: jobs, then deliveries, then endpoints, each by
    // id (a delivery's job has the delivery's id).
    let mut completions: Vec<&Completion> = completions.iter().collect();
    completions.sort_by_key(|c| c.delivery_id);
    if completions.iter().all(|c| c.endpoint.is_none()) {
        let mut conn = pool.acquire().await?;
        return record_runs(&mut conn, &completions, now).await;
    }
    let mut tx = pool.begin().await?;
    let recorded = record_runs(&mut tx, &completions, now).await?;
    let recorded_set: std::collections::HashSet<Uuid> = recorded.iter().copied().collect();
    let kept: Vec<&Completion> = completions
        .into_iter()
        .filter(|c| recorded_set.contains(&c.delivery_id))
        .collect();
    // Endpoints: disabling wins; otherwise the last change in the batch. One statement locks
    // them in id order (after the jobs and deliveries above, the order used everywhere).
    let mut changes: HashMap<Uuid, EndpointChange> = HashMap::new();
    for c in &kept {
        let Some(change) = c.endpoint else { continue };
        if !matches!(
            changes.get(&c.endpoint_id),
            Some(EndpointChange::Disable(_))
        ) {
            changes.insert(c.endpoint_id, change);
        }
    }
    let mut changes: Vec<(Uuid, EndpointChange)> = changes.into_iter().collect();
    changes.sort_by_key(|(id, _)| *id);
    let mut ids = Vec::with_capacity(changes.len());
    let mut kinds = Vec::with_capacity(changes.len());
    let mut sinces = Vec::with_capacity(changes.len());
    let mut reasons = Vec::with_capacity(changes.len());
    for (id, change) in &changes {
        ids.push(*id);
        let (kind, since, reason) = match change {
            EndpointChange::Healthy => ("healthy", None, None),
            EndpointChange::Failing(since) => ("failing", Some(*since), None),
            EndpointChange::Disable(reason) => ("disable", None, Some(reason.as_str())),
        };
        kinds.push(kind);
        sinces.push(since);
        reasons.push(reason);
    }
    let disabled = sqlx::query_as::<_, EndpointRow>(
        "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::text[]) \
             AS u(id, kind, since, reason)), \
         locked AS (SELECT id, enabled FROM webhook_endpoints WHERE id = ANY($1) ORDER BY id \
             FOR NO KEY UPDATE), \
         changed AS (UPDATE webhook_endpoints w SET \
             failing_since = CASE u.kind WHEN 'healthy' THEN NULL \
                 WHEN 'failing' THEN COALESCE(w.failing_since, u.since) ELSE w.failing_since END, \
             enabled = CASE WHEN u.kind = 'disable' THEN FALSE ELSE w.enabled END, \
             disabled_reason = CASE WHEN u.kind = 'disable' AND locked.enabled THEN u.reason \
                 ELSE w.disabled_reason END, \
             updated_at = CASE WHEN u.kind = 'disable' AND locked.enabled THEN $5 \
                 ELSE w.updated_at END \
             FROM u JOIN locked ON locked.id = u.id WHERE w.id = u.id \
             RETURNING w.*, u.kind = 'disable' AND locked.enabled AS newly_disabled) \
         SELECT id, tenant_id, livemode, url, description, enabled, event_types, secret_last4, \
             previous_secret_expires_at, is_default, failing_since, disabled_reason, created_at, \
             updated_at FROM changed WHERE newly_disabled",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&sinces)
    .bind(&reasons)
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
    tx.commit().await?;
    Ok(recorded)
}

/// Writes the jobs' outcomes, the deliveries and their attempts in one statement: jobs first
/// (only those whose lease still holds), then their deliveries, then the attempts (the
/// statements depend on each other in that order, so rows are locked in it). Returns the ids
/// recorded.
async fn record_runs(
    conn: &mut PgConnection,
    completions: &[&Completion],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let n = completions.len();
    let mut ids = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut job_errors = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut nexts = Vec::with_capacity(n);
    let mut numbers = Vec::with_capacity(n);
    let mut ats = Vec::with_capacity(n);
    let mut codes = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut latencies = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut attempt_errors = Vec::with_capacity(n);
    for c in completions {
        let (state, run_at, job_error, counted) = c.job.outcome.parts(now);
        ids.push(c.delivery_id);
        tokens.push(c.job.token);
        states.push(state);
        run_ats.push(run_at);
        job_errors.push(job_error.map(|e| jobs::truncate(e, 2000)));
        counts.push(i32::from(counted));
        statuses.push(c.status.as_str());
        nexts.push(c.next_attempt_at);
        let a = c.attempt.as_ref();
        numbers.push(a.map(|a| a.number));
        ats.push(a.map(|a| a.at));
        codes.push(a.and_then(|a| a.status_code));
        latencies.push(a.map(|a| a.latency_ms));
        bodies.push(a.map(|a| a.response_body.as_str()));
        attempt_errors.push(a.and_then(|a| a.error.as_deref()));
        errors.push(match (a, &c.job.outcome) {
            (Some(a), _) => a.error.clone(),
            (None, jobs::Outcome::Dead { error } | jobs::Outcome::Retry { error, .. }) => {
                Some(error.clone())
            }
            (None, jobs::Outcome::Succeeded | jobs::Outcome::Defer { .. }) => None,
        });
    }
    let recorded: Vec<(Uuid,)> = sqlx::query_as(
        "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], \
             $4::timestamptz[], $5::text[], $6::int[], $7::text[], $8::timestamptz[], $9::int[], \
             $10::timestamptz[], $11::smallint[], $12::text[], $13::int[], $14::text[], $15::text[]) \
             AS u(id, token, state, run_at, job_error, counts, status, next, number, at, code, \
             error, latency, body, attempt_error)), \
         locked AS (SELECT id FROM jobs WHERE id IN (SELECT id FROM u) ORDER BY id \
             FOR NO KEY UPDATE), \
         j AS (UPDATE jobs SET state = u.state, run_at = u.run_at, \
             attempts = jobs.attempts + u.counts, lease_token = NULL, \
             last_error = COALESCE(u.job_error, CASE WHEN u.counts = 0 THEN jobs.last_error END), \
             updated_at = $16, finished_at = CASE WHEN u.state = 'pending' THEN NULL ELSE $16 END \
             FROM u JOIN locked ON locked.id = u.id \
             WHERE jobs.id = u.id AND jobs.lease_token = u.token RETURNING jobs.id), \
         d AS (UPDATE webhook_deliveries d SET status = u.status, next_attempt_at = u.next, \
             attempts = COALESCE(u.number, d.attempts), \
             last_attempt_at = COALESCE(u.at, d.last_attempt_at), \
             last_status_code = CASE WHEN u.number IS NULL THEN d.last_status_code ELSE u.code END, \
             last_error = u.error, updated_at = $16 \
             FROM u JOIN j ON j.id = u.id WHERE d.id = u.id \
             RETURNING d.id, d.tenant_id, d.livemode), \
         a AS (INSERT INTO webhook_attempts (tenant_id, livemode, delivery_id, attempt, \
             attempted_at, status_code, latency_ms, response_body, error) \
             SELECT d.tenant_id, d.livemode, u.id, u.number, u.at, u.code, u.latency, u.body, \
                 u.attempt_error \
             FROM u JOIN d ON d.id = u.id WHERE u.number IS NOT NULL \
             ON CONFLICT (delivery_id, attempt) DO NOTHING) \
         SELECT id FROM j",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(&states)
    .bind(&run_ats)
    .bind(&job_errors)
    .bind(&counts)
    .bind(&statuses)
    .bind(&nexts)
    .bind(&numbers)
    .bind(&ats)
    .bind(&codes)
    .bind(&errors)
    .bind(&latencies)
    .bind(&bodies)
    .bind(&attempt_errors)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    Ok(recorded.into_iter().map(|(id,)| id).collect())
}
