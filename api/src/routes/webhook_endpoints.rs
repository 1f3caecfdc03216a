//! Webhook endpoints (`/api/v1/webhook-endpoints`) and the seed's single-endpoint paths
//! (`/api/v1/auth/tenants/webhooks/config/`, `/api/v1/auth/tenants/webhooks/test/`).
//!
//! Changes are recorded with their event in one transaction; deliveries are the worker
//! fleet's job, never the API's.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::webhook::EventFilter,
    ids::{DeliveryId, WebhookEndpointId},
    service::webhook_endpoints::{
        self as service, AttemptRow, DeliveryRow, EndpointRow, EndpointSpec, EndpointUpdate,
    },
    tenancy::Permission,
};

use super::{ApiTags, dto::page_request};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct WebhookEndpointsApi;

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointIn {
    /// Where events are POSTed. Live mode needs `https`; internal addresses are refused.
    pub url: String,
    /// Up to 500 characters.
    #[oai(nullable)]
    pub description: Option<String>,
    /// Default `true`.
    #[oai(nullable)]
    pub enabled: Option<bool>,
    /// Event types to receive (like `invoice.paid`), or `["*"]` (the default) for all.
    #[oai(nullable)]
    pub event_types: Option<Vec<String>>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpointPatch {
    #[oai(nullable)]
    pub url: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    /// `true` re-enables a disabled endpoint (and clears its failure record).
    #[oai(nullable)]
    pub enabled: Option<bool>,
    #[oai(nullable)]
    pub event_types: Option<Vec<String>>,
}

/// A webhook endpoint; its secret is shown only on creation and rotation.
#[derive(Debug, Object)]
pub struct WebhookEndpointOut {
    /// Endpoint id (`we_…`).
    pub id: String,
    /// Always `webhook_endpoint`.
    pub object: String,
    pub url: String,
    pub description: String,
    pub enabled: bool,
    pub event_types: Vec<String>,
    pub livemode: bool,
    /// Last four characters of the current signing secret.
    pub secret_last4: String,
    /// Until when the previous secret also signs (after a rotation).
    #[oai(nullable)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Whether this is the endpoint of `/api/v1/auth/tenants/webhooks/config/`.
    pub is_default: bool,
    /// Why the platform disabled it: `gone` (it answered 410), `failing` (it failed for
    /// days) or `manual`.
    #[oai(nullable)]
    pub disabled_reason: Option<String>,
    /// Start of the current run of failed deliveries.
    #[oai(nullable)]
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<EndpointRow> for WebhookEndpointOut {
    fn from(e: EndpointRow) -> Self {
        Self {
            id: e.id.to_string(),
            object: "webhook_endpoint".into(),
            url: e.url,
            description: e.description,
            enabled: e.enabled,
            event_types: e.event_types,
            livemode: e.livemode,
            secret_last4: e.secret_last4,
            previous_secret_expires_at: e.previous_secret_expires_at,
            is_default: e.is_default,
            disabled_reason: e.disabled_reason,
            failing_since: e.failing_since,
            created_at: e.created_at,
            updated_at: e.updated_at,
        }
    }
}

/// A new endpoint with its signing secret, shown this once.
#[derive(Debug, Object)]
pub struct WebhookEndpointCreatedOut {
    pub endpoint: WebhookEndpointOut,
    /// The `whsec_…` signing secret. Store it now: it is never shown again.
    pub secret: String,
}

#[derive(Debug, Object)]
pub struct WebhookEndpointList {
    pub data: Vec<WebhookEndpointOut>,
    pub has_more: bool,
}

#[derive(Debug, Object)]
pub struct RotatedSecretOut {
    pub endpoint: WebhookEndpointOut,
    /// The new `whsec_…` secret, shown this once.
    pub secret: String,
}

/// One attempt to deliver.
#[derive(Debug, Object)]
pub struct DeliveryAttemptOut {
    /// 1 for the first attempt.
    pub attempt: i32,
    pub attempted_at: DateTime<Utc>,
    /// The receiver's status code; absent when it did not answer.
    #[oai(nullable)]
    pub status_code: Option<i16>,
    pub latency_ms: i32,
    /// The first 4 KiB of the response body.
    pub response_body: String,
    /// Why there was no answer (timeout, refused address…).
    #[oai(nullable)]
    pub error: Option<String>,
}

impl From<AttemptRow> for DeliveryAttemptOut {
    fn from(a: AttemptRow) -> Self {
        Self {
            attempt: a.attempt,
            attempted_at: a.attempted_at,
            status_code: a.status_code,
            latency_ms: a.latency_ms,
            response_body: a.response_body,
            error: a.error,
        }
    }
}

/// One event's delivery to one endpoint.
#[derive(Debug, Object)]
pub struct DeliveryOut {
    /// Delivery id (`msg_…`): the `webhook-id` header of every attempt.
    pub id: String,
    pub event_id: String,
    pub event_type: String,
    pub endpoint_id: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    pub attempts: i32,
    /// When the next attempt is due (while pending).
    #[oai(nullable)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub last_status_code: Option<i16>,
    #[oai(nullable)]
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Every attempt, oldest first.
    pub attempt_log: Vec<DeliveryAttemptOut>,
}

impl From<(DeliveryRow, Vec<AttemptRow>)> for DeliveryOut {
    fn from((d, attempts): (DeliveryRow, Vec<AttemptRow>)) -> Self {
        Self {
            id: d.id.to_string(),
            event_id: d.event_id.to_string(),
            event_type: d.event_type,
            endpoint_id: d.endpoint_id.to_string(),
            status: d.status.to_string(),
            attempts: d.attempts,
            next_attempt_at: d.next_attempt_at,
            last_attempt_at: d.last_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            created_at: d.created_at,
            attempt_log: attempts.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, Object)]
pub struct DeliveryList {
    pub data: Vec<DeliveryOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedEndpoint {
    /// The endpoint was created.
    #[oai(status = 201)]
    Created(Json<WebhookEndpointCreatedOut>),
}

/// The seed's webhook configuration.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfigIn {
    /// Where events are POSTed.
    pub webhook_url: String,
}

#[derive(Debug, Object)]
pub struct WebhookConfigOut {
    /// `null` when no webhook is configured.
    #[oai(nullable)]
    pub webhook_url: Option<String>,
    /// The signing secret masked to its last characters (`whsec_…abcd`).
    #[oai(nullable)]
    pub webhook_secret: Option<String>,
    pub enabled: bool,
    /// The endpoint behind this configuration (`we_…`).
    #[oai(nullable)]
    pub endpoint_id: Option<String>,
    pub livemode: bool,
}

#[derive(Debug, Object)]
pub struct WebhookConfigSetOut {
    pub webhook_url: String,
    /// The new `whsec_…` signing secret, shown this once.
    pub webhook_secret: String,
    pub endpoint_id: String,
    pub livemode: bool,
}

#[derive(Debug, Object)]
pub struct WebhookTestOut {
    /// The `webhook.test` event (`evt_…`).
    pub event_id: String,
    /// Its delivery (`msg_…`); follow it in the endpoint's deliveries.
    pub delivery_id: String,
    pub endpoint_id: String,
    /// `pending`: the worker fleet sends it within moments.
    pub status: String,
}

#[derive(ApiResponse)]
pub enum TestQueued {
    /// The test event was recorded and its delivery queued.
    #[oai(status = 202)]
    Accepted(Json<WebhookTestOut>),
}

#[derive(Debug, Object)]
pub struct WebhookConfigDeletedOut {
    pub deleted: bool,
    pub endpoint_id: String,
}

fn parse_id(raw: &str) -> Result<WebhookEndpointId, ApiError> {
    WebhookEndpointId::parse(raw).map_err(|_| ApiError::not_found("webhook_endpoint"))
}

fn filter(v: Option<&[String]>) -> Result<Option<EventFilter>, ApiError> {
    v.map(EventFilter::parse)
        .transpose()
        .map_err(ApiError::invalid("event_types"))
}

#[OpenApi]
impl WebhookEndpointsApi {
    /// Create a webhook endpoint
    ///
    /// Events of the endpoint's types are POSTed to its URL, signed per the Standard Webhooks
    /// specification with the `whsec_…` secret returned here (and only here).
    #[oai(
        path = "/api/v1/webhook-endpoints",
        method = "post",
        operation_id = "webhook_endpoints.create",
        tag = "ApiTags::Webhooks"
    )]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<WebhookEndpointIn>,
    ) -> Result<CreatedEndpoint, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let b = body.0;
        let allow_private = state.settings.webhooks.allow_private_targets;
        let url = service::parse_url(ctx, allow_private, "url", &b.url).await?;
        let description = service::parse_description(b.description.as_deref())?.unwrap_or_default();
        let filter = filter(b.event_types.as_deref())?.unwrap_or_else(EventFilter::all);
        let mut work = Work::begin(req).await?;
        let (row, secret) = service::create(
            &mut work,
            ctx,
            &state.encryptor,
            EndpointSpec {
                url: &url,
                description,
                enabled: b.enabled.unwrap_or(true),
                filter: &filter,
            },
        )
        .await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(CreatedEndpoint::Created(Json(WebhookEndpointCreatedOut {
            endpoint: row.into(),
            secret: secret.expose().to_owned(),
        })))
    }

    /// List webhook endpoints
    ///
    /// The endpoints of the caller's mode, newest first.
    #[oai(
        path = "/api/v1/webhook-endpoints",
        method = "get",
        operation_id = "webhook_endpoints.list",
        tag = "ApiTags::Webhooks"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// An endpoint id: return endpoints older than it (the next page).
        starting_after: Query<Option<String>>,
        /// An endpoint id: return endpoints newer than it (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<WebhookEndpointList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            WebhookEndpointId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list(&state.pool, ctx, page).await?;
        Ok(Json(WebhookEndpointList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a webhook endpoint
    #[oai(
        path = "/api/v1/webhook-endpoints/:id",
        method = "get",
        operation_id = "webhook_endpoints.get",
        tag = "ApiTags::Webhooks"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Endpoint id (`we_…`).
        id: Path<String>,
    ) -> Result<Json<WebhookEndpointOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let row = service::get(&state.pool, ctx, parse_id(&id.0)?).await?;
        Ok(Json(row.into()))
    }

    /// Update a webhook endpoint
    ///
    /// Changes the URL, description, event types or enabled flag. Re-enabling an endpoint the
    /// platform disabled clears its failure record.
    #[oai(
        path = "/api/v1/webhook-endpoints/:id",
        method = "patch",
        operation_id = "webhook_endpoints.update",
        tag = "ApiTags::Webhooks"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Endpoint id (`we_…`).
        id: Path<String>,
        body: JsonBody<WebhookEndpointPatch>,
    ) -> Result<Json<WebhookEndpointOut>, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let id = parse_id(&id.0)?;
        let b = body.0;
        let allow_private = state.settings.webhooks.allow_private_targets;
        let url = match b.url.as_deref() {
            Some(raw) => Some(service::parse_url(ctx, allow_private, "url", raw).await?),
            None => None,
        };
        let description = service::parse_description(b.description.as_deref())?;
        let filter = filter(b.event_types.as_deref())?;
        let mut work = Work::begin(req).await?;
        let row = service::update(
            &mut work,
            ctx,
            id,
            EndpointUpdate {
                url: url.as_ref(),
                description,
                enabled: b.enabled,
                filter: filter.as_ref(),
            },
        )
        .await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(row.into()))
    }

    /// Delete a webhook endpoint
    ///
    /// The endpoint and its delivery history are removed; pending deliveries are dropped.
    #[oai(
        path = "/api/v1/webhook-endpoints/:id",
        method = "delete",
        operation_id = "webhook_endpoints.delete",
        tag = "ApiTags::Webhooks"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        /// Endpoint id (`we_…`).
        id: Path<String>,
    ) -> Result<Json<WebhookEndpointOut>, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let id = parse_id(&id.0)?;
        let mut work = Work::begin(req).await?;
        let row = service::delete(&mut work, ctx, id).await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(row.into()))
    }

    /// Rotate an endpoint's signing secret
    ///
    /// Returns a new `whsec_…` secret. For 24 hours the old secret keeps signing too: each
    /// delivery then carries two signatures in `webhook-signature`, so receivers can switch
    /// without losing a delivery.
    #[oai(
        path = "/api/v1/webhook-endpoints/:id/rotate-secret",
        method = "post",
        operation_id = "webhook_endpoints.rotate_secret",
        tag = "ApiTags::Webhooks"
    )]
    async fn rotate_secret(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Endpoint id (`we_…`).
        id: Path<String>,
    ) -> Result<Json<RotatedSecretOut>, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let id = parse_id(&id.0)?;
        let mut work = Work::begin(req).await?;
        let (row, secret) = service::rotate_secret(&mut work, ctx, &state.encryptor, id).await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(RotatedSecretOut {
            endpoint: row.into(),
            secret: secret.expose().to_owned(),
        }))
    }

    /// List an endpoint's deliveries
    ///
    /// Newest first, each with every attempt: time, status code, latency and the first 4 KiB
    /// of the response.
    #[oai(
        path = "/api/v1/webhook-endpoints/:id/deliveries",
        method = "get",
        operation_id = "webhook_endpoints.deliveries",
        tag = "ApiTags::Webhooks"
    )]
    async fn deliveries(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Endpoint id (`we_…`).
        id: Path<String>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A delivery id: return older deliveries (the next page).
        starting_after: Query<Option<String>>,
        /// A delivery id: return newer deliveries (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<DeliveryList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = parse_id(&id.0)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            DeliveryId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::deliveries(&state.pool, ctx, id, page).await?;
        Ok(Json(DeliveryList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get the webhook configuration
    ///
    /// The seed's single webhook: its URL and masked secret, for the caller's mode.
    #[oai(
        path = "/api/v1/auth/tenants/webhooks/config",
        method = "get",
        operation_id = "webhooks.config_get",
        tag = "ApiTags::Webhooks"
    )]
    async fn config_get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<WebhookConfigOut>, ApiError> {
        // Reading it is reading a webhook endpoint.
        let ctx = auth.require(Permission::ReadBilling)?;
        Ok(Json(match service::configured(&state.pool, ctx).await? {
            Some(r) => WebhookConfigOut {
                webhook_url: Some(r.url),
                webhook_secret: Some(format!("whsec_…{}", r.secret_last4)),
                enabled: r.enabled,
                endpoint_id: Some(r.id.to_string()),
                livemode: r.livemode,
            },
            None => WebhookConfigOut {
                webhook_url: None,
                webhook_secret: None,
                enabled: false,
                endpoint_id: None,
                livemode: ctx.livemode(),
            },
        }))
    }

    /// Configure the webhook
    ///
    /// Sets the URL of the seed's single webhook and generates a new signing secret (returned
    /// here only; the previous one stops signing at once). The endpoint receives every event
    /// type and appears among `/api/v1/webhook-endpoints` with `is_default: true`.
    #[oai(
        path = "/api/v1/auth/tenants/webhooks/config",
        method = "post",
        operation_id = "webhooks.config_set",
        tag = "ApiTags::Webhooks"
    )]
    async fn config_set(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<WebhookConfigIn>,
    ) -> Result<Json<WebhookConfigSetOut>, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let allow_private = state.settings.webhooks.allow_private_targets;
        let url =
            service::parse_url(ctx, allow_private, "webhook_url", &body.0.webhook_url).await?;
        let mut work = Work::begin(req).await?;
        let (row, secret, _) = service::configure(&mut work, ctx, &state.encryptor, &url).await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(WebhookConfigSetOut {
            webhook_url: row.url,
            webhook_secret: secret.expose().to_owned(),
            endpoint_id: row.id.to_string(),
            livemode: row.livemode,
        }))
    }

    /// Remove the webhook configuration
    ///
    /// Deletes the seed's single webhook endpoint (other endpoints stay).
    #[oai(
        path = "/api/v1/auth/tenants/webhooks/config",
        method = "delete",
        operation_id = "webhooks.config_delete",
        tag = "ApiTags::Webhooks"
    )]
    async fn config_delete(
        &self,
        req: &Request,
        auth: Auth,
    ) -> Result<Json<WebhookConfigDeletedOut>, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let mut work = Work::begin(req).await?;
        let row = service::unconfigure(&mut work, ctx).await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(WebhookConfigDeletedOut {
            deleted: true,
            endpoint_id: row.id.to_string(),
        }))
    }

    /// Send a test webhook
    ///
    /// Records a `webhook.test` event and queues its delivery to the configured webhook
    /// (whatever its event filter). Answers at once; the delivery and its outcome appear in
    /// the endpoint's deliveries.
    #[oai(
        path = "/api/v1/auth/tenants/webhooks/test",
        method = "post",
        operation_id = "webhooks.test",
        tag = "ApiTags::Webhooks"
    )]
    async fn test(&self, req: &Request, auth: Auth) -> Result<TestQueued, ApiError> {
        let ctx = auth.require(Permission::ManageWebhooks)?;
        let mut work = Work::begin(req).await?;
        let sent = service::send_test(&mut work, ctx).await?;
        note(req, |n| n.object_id = Some(sent.event_id.to_string()));
        Ok(TestQueued::Accepted(Json(WebhookTestOut {
            event_id: sent.event_id.to_string(),
            delivery_id: sent.delivery_id.to_string(),
            endpoint_id: sent.endpoint.id.to_string(),
            status: "pending".into(),
        })))
    }
}
