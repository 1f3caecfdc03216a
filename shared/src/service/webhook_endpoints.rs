//! Webhook endpoints: where a tenant's events are delivered, each with its signing secret, and
//! the seed's single configured webhook (the tenant's default endpoint per mode).

use sqlx::PgPool;

use super::{ServiceError, ServiceResult};
use crate::{
    crypto::Encryptor,
    db::{
        self, DbError,
        events::{NewEvent, Routing},
        pagination::{Page, PageRequest},
        webhook_endpoints::{EndpointChanges, NewEndpoint},
    },
    domain::webhook::{
        EventFilter, SigningSecret, UrlError, UrlPolicy, WebhookUrl, check_resolved,
    },
    ids::{DeliveryId, EventId, WebhookEndpointId},
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::{
    webhook_deliveries::{AttemptRow, DeliveryRow},
    webhook_endpoints::EndpointRow,
};

/// How long a rotated-out secret keeps signing.
pub const OLD_SECRET_GRACE_HOURS: i64 = 24;

const WHAT: &str = "webhook_endpoint";

fn url_error(field: &str, e: UrlError) -> ServiceError {
    let code = match e {
        UrlError::ForbiddenAddress(_) | UrlError::ForbiddenHost(_) | UrlError::Unresolvable => {
            "webhook_url_forbidden"
        }
        _ => "validation_failed",
    };
    ServiceError::Invalid {
        field: field.to_owned(),
        code,
        message: e.to_string(),
    }
}

/// Parses a webhook URL for the caller's mode and checks the addresses its name resolves to
/// now (they are checked again at every send). A name that does not resolve yet is accepted.
pub async fn parse_url(
    ctx: &TenantContext,
    allow_private: bool,
    field: &str,
    raw: &str,
) -> ServiceResult<WebhookUrl> {
    let url = WebhookUrl::parse(
        raw,
        UrlPolicy {
            livemode: ctx.livemode(),
            allow_private,
        },
    )
    .map_err(|e| url_error(field, e))?;
    if let Some(domain) = url.domain() {
        let lookup = tokio::net::lookup_host((domain.to_owned(), url.port()));
        if let Ok(Ok(addrs)) = tokio::time::timeout(std::time::Duration::from_secs(2), lookup).await
        {
            let ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
            if !ips.is_empty() {
                check_resolved(&ips, allow_private).map_err(|e| url_error(field, e))?;
            }
        }
    }
    Ok(url)
}

/// An endpoint's optional description: at most 500 characters, no control characters.
pub fn parse_description(v: Option<&str>) -> ServiceResult<Option<&str>> {
    match v.map(str::trim) {
        Some(d) if d.chars().count() > 500 => Err(ServiceError::invalid(
            "description",
            "must be at most 500 characters",
        )),
        Some(d) if d.chars().any(char::is_control) => Err(ServiceError::invalid(
            "description",
            "must not contain control characters",
        )),
        other => Ok(other),
    }
}

/// Records an event about an endpoint (a new endpoint is not told of its own creation).
async fn record(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    event_type: &str,
    row: &EndpointRow,
) -> ServiceResult<EventId> {
    let mut event = NewEvent::new(event_type, row.to_json());
    if event_type == "webhook_endpoint.created" {
        event = event.routed(Routing::Skipping(row.id.as_uuid()));
    }
    let now = uow.now();
    Ok(db::events::record(uow.conn(), ctx.scope(), event, now).await?)
}

/// What a new endpoint is.
pub struct EndpointSpec<'a> {
    pub url: &'a WebhookUrl,
    pub description: &'a str,
    pub enabled: bool,
    pub filter: &'a EventFilter,
}

/// Creates an endpoint with a fresh signing secret; returns it with the secret (shown once).
pub async fn create(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    encryptor: &Encryptor,
    spec: EndpointSpec<'_>,
) -> ServiceResult<(EndpointRow, SigningSecret)> {
    let secret = SigningSecret::generate();
    let now = uow.now();
    let row = db::webhook_endpoints::create(
        uow.conn(),
        ctx,
        NewEndpoint {
            url: spec.url.as_str(),
            description: spec.description,
            enabled: spec.enabled,
            event_types: spec.filter.as_slice(),
            secret_enc: encryptor.encrypt(secret.expose().as_bytes()),
            secret_last4: secret.last4(),
            is_default: false,
        },
        now,
    )
    .await?;
    record(uow, ctx, "webhook_endpoint.created", &row).await?;
    Ok((row, secret))
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> ServiceResult<Page<EndpointRow>> {
    Ok(db::webhook_endpoints::list(pool, ctx, page).await?)
}

pub async fn get(
    pool: &PgPool,
    ctx: &TenantContext,
    id: WebhookEndpointId,
) -> ServiceResult<EndpointRow> {
    db::webhook_endpoints::get(pool, ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

/// Changes to an endpoint (`None`: unchanged).
pub struct EndpointUpdate<'a> {
    pub url: Option<&'a WebhookUrl>,
    pub description: Option<&'a str>,
    pub enabled: Option<bool>,
    pub filter: Option<&'a EventFilter>,
}

pub async fn update(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: WebhookEndpointId,
    changes: EndpointUpdate<'_>,
) -> ServiceResult<EndpointRow> {
    let now = uow.now();
    let row = db::webhook_endpoints::update(
        uow.conn(),
        ctx,
        id,
        EndpointChanges {
            url: changes.url.map(WebhookUrl::as_str),
            description: changes.description,
            enabled: changes.enabled,
            event_types: changes.filter.map(EventFilter::as_slice),
        },
        now,
    )
    .await
    .map_err(ServiceError::not_found(WHAT))?;
    record(uow, ctx, "webhook_endpoint.updated", &row).await?;
    Ok(row)
}

/// Deletes an endpoint with its delivery history.
pub async fn delete(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: WebhookEndpointId,
) -> ServiceResult<EndpointRow> {
    let row = db::webhook_endpoints::delete(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    record(uow, ctx, "webhook_endpoint.deleted", &row).await?;
    Ok(row)
}

/// Gives an endpoint a new secret; the previous one keeps signing for
/// [`OLD_SECRET_GRACE_HOURS`].
pub async fn rotate_secret(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    encryptor: &Encryptor,
    id: WebhookEndpointId,
) -> ServiceResult<(EndpointRow, SigningSecret)> {
    let secret = SigningSecret::generate();
    let now = uow.now();
    let row = db::webhook_endpoints::rotate_secret(
        uow.conn(),
        ctx,
        id,
        &encryptor.encrypt(secret.expose().as_bytes()),
        secret.last4(),
        now + chrono::Duration::hours(OLD_SECRET_GRACE_HOURS),
        now,
    )
    .await
    .map_err(ServiceError::not_found(WHAT))?;
    record(uow, ctx, "webhook_endpoint.updated", &row).await?;
    Ok((row, secret))
}

/// An endpoint's deliveries, newest first, each with its attempts.
pub async fn deliveries(
    pool: &PgPool,
    ctx: &TenantContext,
    id: WebhookEndpointId,
    page: PageRequest,
) -> ServiceResult<Page<(DeliveryRow, Vec<AttemptRow>)>> {
    db::webhook_endpoints::get(pool, ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    Ok(db::webhook_deliveries::list_for_endpoint(pool, ctx, id, page).await?)
}

/// The seed's configured webhook, if there is one.
pub async fn configured(pool: &PgPool, ctx: &TenantContext) -> ServiceResult<Option<EndpointRow>> {
    match db::webhook_endpoints::get_default(pool, ctx).await {
        Ok(row) => Ok(Some(row)),
        Err(DbError::NotFound) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Sets the seed's configured webhook (creating it, or changing its URL) with a fresh secret,
/// which is also the tenant's webhook secret. Returns it, its secret and whether it is new.
pub async fn configure(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    encryptor: &Encryptor,
    url: &WebhookUrl,
) -> ServiceResult<(EndpointRow, SigningSecret, bool)> {
    let secret = SigningSecret::generate();
    let enc = encryptor.encrypt(secret.expose().as_bytes());
    let now = uow.now();
    let (row, created) = db::webhook_endpoints::set_default(
        uow.conn(),
        ctx,
        url.as_str(),
        &enc,
        secret.last4(),
        now,
    )
    .await?;
    db::tenants::set_webhook_secret(uow.conn(), ctx, &enc, secret.last4()).await?;
    let event = if created {
        "webhook_endpoint.created"
    } else {
        "webhook_endpoint.updated"
    };
    record(uow, ctx, event, &row).await?;
    Ok((row, secret, created))
}

/// Removes the seed's configured webhook.
pub async fn unconfigure(uow: &mut UnitOfWork, ctx: &TenantContext) -> ServiceResult<EndpointRow> {
    let current = db::webhook_endpoints::get_default(&mut *uow.conn(), ctx)
        .await
        .map_err(ServiceError::not_found("webhook configuration"))?;
    delete(uow, ctx, current.id).await
}

/// A queued test delivery.
#[derive(Debug, Clone)]
pub struct TestSent {
    pub event_id: EventId,
    pub delivery_id: DeliveryId,
    pub endpoint: EndpointRow,
}

/// Records a `webhook.test` event for the configured webhook only (whatever its filter) and
/// queues its delivery.
pub async fn send_test(uow: &mut UnitOfWork, ctx: &TenantContext) -> ServiceResult<TestSent> {
    let endpoint = db::webhook_endpoints::get_default(&mut *uow.conn(), ctx)
        .await
        .map_err(|e| match e {
            DbError::NotFound => ServiceError::conflict(
                "webhook_not_configured",
                "Configure a webhook URL first (POST /api/v1/auth/tenants/webhooks/config/).",
            ),
            other => other.into(),
        })?;
    if !endpoint.enabled {
        return Err(ServiceError::conflict(
            "webhook_endpoint_disabled",
            "The configured webhook endpoint is disabled.",
        ));
    }
    let now = uow.now();
    let event_id = db::events::record(
        uow.conn(),
        ctx.scope(),
        NewEvent::new(
            "webhook.test",
            serde_json::json!({
                "object": "webhook_test",
                "message": "This is a test event from the billing platform.",
                "endpoint_id": endpoint.id.to_string(),
            }),
        )
        .routed(Routing::Only(endpoint.id.as_uuid())),
        now,
    )
    .await?;
    let delivery_id = db::webhook_deliveries::find(uow.conn(), ctx, event_id, endpoint.id)
        .await
        .map_err(|e| match e {
            // Disabled or deleted since it was read.
            DbError::NotFound => ServiceError::conflict(
                "webhook_endpoint_disabled",
                "The configured webhook endpoint was disabled or removed meanwhile.",
            ),
            other => other.into(),
        })?;
    Ok(TestSent {
        event_id,
        delivery_id,
        endpoint,
    })
}
