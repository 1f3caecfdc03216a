//! Events: every state change, recorded in the transaction that makes it, and fanned out to the
//! tenant's matching webhook endpoints as deliveries with their jobs (the outbox).

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    domain::webhook::EventFilter,
    ids::{DeliveryId, EventId, TenantId},
    jobs::{self, Job, NewJob, Queue},
    tenancy::{Scope, TenantContext},
};

/// The job kind that delivers one webhook.

#[derive(Debug, Clone, FromRow)]
pub struct EventRow {
    pub id: EventId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl EventRow {
    /// The event as delivered and as the API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "event",
            "type": self.event_type,
            "created": self.created_at.timestamp(),
            "livemode": self.livemode,
            "data": self.data,
        })
    }
}

/// An event's data is in `data` (JSON as written), or for events recorded before it was, in
/// `data_jsonb`.
const COLUMNS: &str =
    "id, tenant_id, livemode, type, COALESCE(data, data_jsonb::json) AS data, created_at";

/// An event to record: its type and the object it is about.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_type: String,
    /// Events about an object as it stands at once (an invoice created, finalized and paid in
    /// one go) share it ([`NewEvent::shared`]): it is made, and written out, once for them all.
    pub object: Arc<serde_json::Value>,
    pub routing: Routing,
}

/// Which endpoints get an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Every enabled endpoint whose filter matches.
    Matching,
    /// The same, but not this one (a new endpoint is not told of itself).
    Skipping(Uuid),
    /// Only this endpoint, if enabled, whatever its filter (a test event).
    Only(Uuid),
}

impl NewEvent {
    pub fn new(event_type: &str, object: serde_json::Value) -> Self {
        Self::shared(event_type, Arc::new(object))
    }

    /// An event about an object other events show as it stands too.
    pub fn shared(event_type: &str, object: Arc<serde_json::Value>) -> Self {
        Self {
            event_type: event_type.to_owned(),
            object,
            routing: Routing::Matching,
        }
    }

    pub fn routed(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    fn goes_to(&self, endpoint: Uuid, filter: &EventFilter) -> bool {
        match self.routing {
            Routing::Matching => filter.matches(&self.event_type),
            Routing::Skipping(skip) => skip != endpoint && filter.matches(&self.event_type),
            Routing::Only(only) => only == endpoint,
        }
    }
}

/// Records one event and its deliveries; call inside the transaction of the change.
pub async fn record(
    conn: &mut PgConnection,
    scope: Scope,
    event: NewEvent,
    now: DateTime<Utc>,
) -> Result<EventId, DbError> {
    let ids = record_many(conn, scope, &[event], now).await?;
    ids.into_iter().next().ok_or(DbError::NotFound)
}

/// Records an event about a tenant-wide object (a user), once in each mode.
pub async fn record_tenant_wide(
    conn: &mut PgConnection,
    tenant_id: TenantId,
    event: NewEvent,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    for livemode in [false, true] {
        record(
            conn,
            Scope {
                tenant_id,
                livemode,
            },
            event.clone(),
            now,
        )
        .await?;
    }
    Ok(())
}

/// Records events and fans each out to the enabled endpoints of the tenant and mode whose
/// filter matches: one delivery per (event, endpoint), each with its job, due now.
pub async fn record_many(
    conn: &mut PgConnection,
    scope: Scope,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Result<Vec<EventId>, DbError> {
    let scoped: Vec<(Scope, &NewEvent)> = events.iter().map(|e| (scope, e)).collect();
    record_scoped(conn, &scoped, now).await
}

/// Records events of any tenants and modes (each with its own) as [`record_many`] does, in
/// two statements however many tenants they are about; their ids, in order.
pub async fn record_scoped(
    conn: &mut PgConnection,
    events: &[(Scope, &NewEvent)],
    now: DateTime<Utc>,
) -> Result<Vec<EventId>, DbError> {
    let ids: Vec<EventId> = events.iter().map(|_| EventId::new()).collect();
    record_with_ids(conn, &ids, events, now).await?;
    Ok(ids)
}

/// Records events as [`record_scoped`] does, with the ids given (one per event, taken when
/// they happened: ids sort by time).
pub async fn record_with_ids(
    conn: &mut PgConnection,
    ids: &[EventId],
    events: &[(Scope, &NewEvent)],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if ids.len() != events.len() {
        return Err(DbError::Other(sqlx::Error::Protocol(format!(
            "{} ids for {} events",
            ids.len(),
            events.len()
        ))));
    }
    if events.is_empty() {
        return Ok(());
    }
    // Each object written out once, however many events show it.
    let mut written: HashMap<usize, usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::with_capacity(events.len());
    let mut which: Vec<usize> = Vec::with_capacity(events.len());
    for (_, event) in events {
        let i = *written
            .entry(Arc::as_ptr(&event.object).addr())
            .or_insert_with(|| {
                texts.push(format!(r#"{{"object":{}}}"#, event.object));
                texts.len() - 1
            });
        which.push(i);
    }
    let data: Vec<&str> = which.iter().map(|i| texts[*i].as_str()).collect();
    let uuids: Vec<Uuid> = ids.iter().map(EventId::as_uuid).collect();
    let (tenants, modes) = super::scope_columns(events.iter().map(|e| &e.0));
    let types: Vec<&str> = events.iter().map(|e| e.1.event_type.as_str()).collect();
    // The events, and the endpoints they may go to, in one round trip.
    let endpoints: Vec<(Uuid, TenantId, bool, Vec<String>)> = sqlx::query_as(
        "WITH e AS (INSERT INTO events (id, tenant_id, livemode, type, data, created_at) \
             SELECT u.id, u.tenant_id, u.livemode, u.type, u.data::json, $6 \
             FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::text[], $5::text[]) \
             AS u(id, tenant_id, livemode, type, data)) \
         SELECT id, tenant_id, livemode, event_types FROM webhook_endpoints \
         WHERE (tenant_id, livemode) IN (SELECT * FROM unnest($2::uuid[], $3::bool[])) \
         AND enabled",
    )
    .bind(&uuids)
    .bind(&tenants)
    .bind(&modes)
    .bind(&types)
    .bind(&data)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let endpoints: Vec<(Uuid, Scope, EventFilter)> = endpoints
        .into_iter()
        .map(|(id, tenant_id, livemode, types)| {
            let scope = Scope {
                tenant_id,
                livemode,
            };
            (id, scope, EventFilter::from_stored(types))
        })
        .collect();
    let mut pairs: Vec<(Scope, Uuid, Uuid)> = Vec::new();
    for (event_id, (scope, event)) in uuids.iter().zip(events) {
        for (endpoint_id, endpoint_scope, filter) in &endpoints {
            if endpoint_scope == scope && event.goes_to(*endpoint_id, filter) {
                pairs.push((*scope, *event_id, *endpoint_id));
            }
        }
    }
    fan_out_new(conn, &pairs, now).await
}

/// Creates the deliveries of events recorded in this transaction (each pair with its tenant
/// and mode), with their jobs, in one statement: the pairs are new, so nothing can conflict,
/// and the jobs are built from the deliveries in the database rather than sent again.
async fn fan_out_new(
    conn: &mut PgConnection,
    pairs: &[(Scope, Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    if pairs.is_empty() {
        return Ok(());
    }
    let ids: Vec<DeliveryId> = pairs.iter().map(|_| DeliveryId::new()).collect();
    let delivery_ids: Vec<Uuid> = ids.iter().map(DeliveryId::as_uuid).collect();
    let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
    let (tenants, modes) = super::scope_columns(pairs.iter().map(|p| &p.0));
    let event_ids: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
    let endpoint_ids: Vec<Uuid> = pairs.iter().map(|p| p.2).collect();
    sqlx::query(
        "WITH u AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], \
             $5::uuid[], $6::bool[]) AS u(id, name, event_id, endpoint_id, tenant_id, livemode)), \
         d AS (INSERT INTO webhook_deliveries (id, tenant_id, livemode, event_id, endpoint_id, \
             next_attempt_at, created_at, updated_at) \
             SELECT id, tenant_id, livemode, event_id, endpoint_id, $7, $7, $7 FROM u) \
         INSERT INTO jobs (id, queue, kind, tenant_id, livemode, payload, max_attempts, run_at, \
             created_at, updated_at) \
         SELECT id, $8, $9, tenant_id, livemode, jsonb_build_object('delivery_id', name), $10, \
             $7, $7, $7 \
         FROM u",
    )
    .bind(&delivery_ids)
    .bind(&names)
    .bind(&event_ids)
    .bind(&endpoint_ids)
    .bind(&tenants)
    .bind(&modes)
    .bind(now)
    // The rows `Job::DeliverWebhook { .. }.to_new(..)` makes, in bulk.
    .bind(Queue::Webhooks.as_str())
    .bind(Job::DELIVER_WEBHOOK)
    .bind(deliver(Uuid::nil()).max_attempts())
    .execute(&mut *conn)
    .await?;
    jobs::notify(conn, Queue::Webhooks).await
}

/// Creates deliveries (and their jobs) for (event, endpoint) pairs that have none yet.
pub async fn fan_out(
    conn: &mut PgConnection,
    scope: Scope,
    pairs: &[(Uuid, Uuid)],
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbError> {
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    let delivery_ids: Vec<Uuid> = pairs.iter().map(|_| DeliveryId::new().as_uuid()).collect();
    let event_ids: Vec<Uuid> = pairs.iter().map(|p| p.0).collect();
    let endpoint_ids: Vec<Uuid> = pairs.iter().map(|p| p.1).collect();
    let created: Vec<(Uuid,)> = sqlx::query_as(
        "INSERT INTO webhook_deliveries (id, tenant_id, livemode, event_id, endpoint_id, \
         next_attempt_at, created_at, updated_at) \
         SELECT u.id, $4, $5, u.event_id, u.endpoint_id, $6, $6, $6 \
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[]) AS u(id, event_id, endpoint_id) \
         ON CONFLICT (event_id, endpoint_id) DO NOTHING RETURNING id",
    )
    .bind(&delivery_ids)
    .bind(&event_ids)
    .bind(&endpoint_ids)
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let created: Vec<Uuid> = created.into_iter().map(|(id,)| id).collect();
    let jobs: Vec<NewJob> = created
        .iter()
        .map(|id| delivery_job(scope, *id, now))
        .collect();
    jobs::enqueue(conn, &jobs, now).await?;
    Ok(created)
}

/// The job that sends a delivery; it shares the delivery's id, so there is one per delivery.
pub fn delivery_job(scope: Scope, delivery_id: Uuid, now: DateTime<Utc>) -> NewJob {
    deliver(delivery_id).to_new(Some(scope), now)
}

fn deliver(delivery_id: Uuid) -> Job {
    Job::DeliverWebhook {
        delivery: DeliveryId::from_uuid(delivery_id),
    }
}

/// The tenant's events in this mode, newest first, optionally of one type.
pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
    event_type: Option<&str>,
) -> Result<Page<EventRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, EventRow>(sqlf!(
        "SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::text IS NULL OR type = $3) AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(event_type)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn get(pool: &PgPool, ctx: &TenantContext, id: EventId) -> Result<EventRow, DbError> {
    sqlx::query_as::<_, EventRow>(sqlf!(
        "SELECT {COLUMNS} FROM events WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// Deletes events recorded before `before` (their deliveries and attempts go with them), at
/// most `limit` at a time, oldest first. An event's id tells when it was recorded (a version 7
/// id: its first 48 bits are the milliseconds), so the primary key finds them; `created_at` is
/// the time the event shows, a test clock's for the events of its customers.
pub async fn purge_older_than(
    pool: &PgPool,
    before: DateTime<Utc>,
    limit: i64,
) -> Result<u64, DbError> {
    let first_kept = first_id_at(before);
    let mut tx = pool.begin().await?;
    // Their delivery jobs first (a job row has no foreign key to its delivery).
    sqlx::query(
        "DELETE FROM jobs WHERE id IN (SELECT d.id FROM webhook_deliveries d \
         JOIN (SELECT id FROM events WHERE id < $1 ORDER BY id LIMIT $2) e \
         ON e.id = d.event_id)",
    )
    .bind(first_kept)
    .bind(limit)
    .execute(&mut *tx)
    .await?;
    let done = sqlx::query(
        "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE id < $1 \
         ORDER BY id LIMIT $2)",
    )
    .bind(first_kept)
    .bind(limit)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// The smallest version 7 id of the millisecond `at`: an event recorded before it has a
/// smaller id, one recorded from it on no smaller one.
pub fn first_id_at(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_taken_at_a_time_is_at_least_that_times_first_id_and_below_the_next_milliseconds() {
        let before = Utc::now();
        let id = EventId::new().as_uuid();
        let after = Utc::now();
        assert!(first_id_at(before) <= id, "{id} before {before}");
        assert!(id < first_id_at(after + chrono::Duration::milliseconds(1)));
        assert!(
            first_id_at(before) < first_id_at(before + chrono::Duration::milliseconds(1)),
            "one millisecond later is a larger id"
        );
        assert_eq!(first_id_at(before).get_version_num(), 7);
    }
}
