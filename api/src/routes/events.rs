//! Events (`/api/v1/events`): every state change of the tenant, per mode, kept 30 days.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use shared::{
    ids::{EventId, WebhookEndpointId},
    service::events as service,
    service::events::EventRow,
    tenancy::Permission,
};

use super::{ApiTags, dto::page_request};
use crate::{auth::Auth, error::ApiError, middleware::note, state::AppState, work::Work};

pub struct EventsApi;

/// Something that happened, as webhooks deliver it.
#[derive(Debug, Object)]
pub struct EventOut {
    /// Event id (`evt_…`).
    pub id: String,
    /// Always `event`.
    pub object: String,
    /// e.g. `api_key.revoked`, `webhook_endpoint.updated`.
    #[oai(rename = "type")]
    pub event_type: String,
    /// Unix seconds.
    pub created: i64,
    pub livemode: bool,
    /// `{"object": …}`: the object as it was after the change.
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

impl From<EventRow> for EventOut {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id.to_string(),
            object: "event".into(),
            created: e.created_at.timestamp(),
            event_type: e.event_type,
            livemode: e.livemode,
            data: e.data,
            created_at: e.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct EventList {
    pub data: Vec<EventOut>,
    pub has_more: bool,
}

#[derive(Debug, Object)]
pub struct RedeliveryOut {
    pub event_id: String,
    /// Deliveries queued (`msg_…`), one per endpoint.
    pub deliveries: Vec<String>,
}

#[derive(ApiResponse)]
pub enum RedeliveryQueued {
    /// The deliveries were queued; the worker fleet sends them within moments.
    #[oai(status = 202)]
    Accepted(Json<RedeliveryOut>),
}

fn parse_id(raw: &str) -> Result<EventId, ApiError> {
    EventId::parse(raw).map_err(|_| ApiError::not_found("event"))
}

#[OpenApi]
impl EventsApi {
    /// List events
    ///
    /// The caller's mode only, newest first, optionally of one type.
    #[oai(
        path = "/api/v1/events",
        method = "get",
        operation_id = "events.list",
        tag = "ApiTags::Events"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// An event id: return older events (the next page).
        starting_after: Query<Option<String>>,
        /// An event id: return newer events (the previous page).
        ending_before: Query<Option<String>>,
        /// Only events of this type, e.g. `api_key.revoked`.
        #[oai(name = "type")]
        event_type: Query<Option<String>>,
    ) -> Result<Json<EventList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            EventId::parse(s).map(|id| id.as_uuid())
        })?;
        if event_type
            .0
            .as_deref()
            .is_some_and(|t| t.len() > 100 || t.chars().any(char::is_control))
        {
            return Err(ApiError::validation(
                "type",
                "must be an event type such as `invoice.paid`",
            ));
        }
        let page = service::list(&state.pool, ctx, page, event_type.0.as_deref()).await?;
        Ok(Json(EventList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get an event
    #[oai(
        path = "/api/v1/events/:id",
        method = "get",
        operation_id = "events.get",
        tag = "ApiTags::Events"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Event id (`evt_…`).
        id: Path<String>,
    ) -> Result<Json<EventOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let row = service::get(&state.pool, ctx, parse_id(&id.0)?).await?;
        Ok(Json(row.into()))
    }

    /// Redeliver an event
    ///
    /// Sends the event again to one endpoint (`endpoint_id`) or to every enabled endpoint
    /// that had it or whose event types match. A delivery that exists starts over with the
    /// same `webhook-id`, so receivers can tell it is the same message.
    #[oai(
        path = "/api/v1/events/:id/redeliver",
        method = "post",
        operation_id = "events.redeliver",
        tag = "ApiTags::Events"
    )]
    async fn redeliver(
        &self,
        req: &Request,
        auth: Auth,
        /// Event id (`evt_…`).
        id: Path<String>,
        /// Only to this endpoint (`we_…`).
        endpoint_id: Query<Option<String>>,
    ) -> Result<RedeliveryQueued, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let event_id = parse_id(&id.0)?;
        let endpoint = match endpoint_id.0.as_deref() {
            Some(raw) => Some(
                WebhookEndpointId::parse(raw)
                    .map_err(|_| ApiError::not_found("webhook_endpoint"))?,
            ),
            None => None,
        };
        let mut work = Work::begin(req).await?;
        let deliveries = service::redeliver(&mut work, ctx, event_id, endpoint).await?;
        note(req, |n| n.object_id = Some(event_id.to_string()));
        Ok(RedeliveryQueued::Accepted(Json(RedeliveryOut {
            event_id: event_id.to_string(),
            deliveries: deliveries.iter().map(ToString::to_string).collect(),
        })))
    }
}
