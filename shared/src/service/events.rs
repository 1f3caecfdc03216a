//! Events: every state change, as recorded; listed and read by tenants, and sent again on
//! request.

use sqlx::PgPool;

use super::{ServiceError, ServiceResult};
use crate::{
    db::{
        self,
        events::NewEvent,
        pagination::{Page, PageRequest},
        webhook_deliveries::RedeliverError,
    },
    ids::{DeliveryId, EventId, WebhookEndpointId},
    tenancy::{Scope, TenantContext},
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::events::EventRow;

/// Records an event about `object` in `scope`, in the unit of work (fanned out to the
/// endpoints that want it once the work commits).
pub async fn record(
    uow: &mut UnitOfWork,
    scope: Scope,
    event_type: &str,
    object: serde_json::Value,
) -> ServiceResult<EventId> {
    let event = match uow.record_at_commit(scope, NewEvent::new(event_type, object)) {
        Ok(id) => return Ok(id),
        Err(event) => event,
    };
    let now = uow.now();
    Ok(db::events::record(uow.conn(), scope, event, now).await?)
}

/// Records events of any tenants and modes (each with its own) in the unit of work, as
/// [`record`] does one, in two statements however many there are.
pub async fn record_all(
    uow: &mut UnitOfWork,
    events: Vec<(Scope, NewEvent)>,
) -> ServiceResult<Vec<EventId>> {
    let mut ids = Vec::with_capacity(events.len());
    let mut now_ids = Vec::new();
    let mut now_events = Vec::new();
    for (scope, event) in events {
        match uow.record_at_commit(scope, event) {
            Ok(id) => ids.push(id),
            Err(event) => {
                let id = EventId::new();
                ids.push(id);
                now_ids.push(id);
                now_events.push((scope, event));
            }
        }
    }
    if !now_events.is_empty() {
        let now = uow.now();
        let scoped: Vec<(Scope, &NewEvent)> = now_events.iter().map(|(s, e)| (*s, e)).collect();
        db::events::record_with_ids(uow.conn(), &now_ids, &scoped, now).await?;
    }
    Ok(ids)
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
    event_type: Option<&str>,
) -> ServiceResult<Page<EventRow>> {
    Ok(db::events::list(pool, ctx, page, event_type).await?)
}

pub async fn get(pool: &PgPool, ctx: &TenantContext, id: EventId) -> ServiceResult<EventRow> {
    db::events::get(pool, ctx, id)
        .await
        .map_err(ServiceError::not_found("event"))
}

/// Sends an event again: to one endpoint, or to every enabled endpoint that had it or whose
/// filter matches it. Existing deliveries start over with the same id; missing ones are made.
pub async fn redeliver(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    event_id: EventId,
    endpoint: Option<WebhookEndpointId>,
) -> ServiceResult<Vec<DeliveryId>> {
    let now = uow.now();
    db::webhook_deliveries::redeliver(uow.conn(), ctx, event_id, endpoint, now)
        .await
        .map_err(|e| match e {
            RedeliverError::NotFound(what) => ServiceError::NotFound(what),
            RedeliverError::EndpointDisabled => ServiceError::conflict(
                "webhook_endpoint_disabled",
                "The endpoint is disabled; enable it first.",
            ),
            RedeliverError::Db(e) => e.into(),
        })
}
