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
    let now = uow.now();
    let id = db::events::record(uow.conn(), scope, NewEvent::new(event_type, object), now).await?;
    uow.recorded_event(id);
    Ok(id)
}

/// Records events of any tenants and modes (each with its own) in the unit of work, as
/// [`record`] does one, in two statements however many there are.
pub async fn record_all(
    uow: &mut UnitOfWork,
    events: &[(Scope, NewEvent)],
) -> ServiceResult<Vec<EventId>> {
    let now = uow.now();
    let events: Vec<(Scope, &NewEvent)> = events.iter().map(|(s, e)| (*s, e)).collect();
    let ids = db::events::record_scoped(uow.conn(), &events, now).await?;
    for id in &ids {
        uow.recorded_event(*id);
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
