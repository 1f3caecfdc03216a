//! Stripe's webhooks (`POST /webhooks/stripe`; the seed's `/webhooks/stripe/{account,connect,
//! payment,subscription}/` and `/api/subscriptions/webhooks/stripe/` reach it too).
//!
//! The signature is checked before anything else; a verified event is stored once per Stripe
//! event id with its processing job, and the answer comes at once. A repeated delivery of the
//! same event changes nothing.

use chrono::{DateTime, Utc};
use poem::{Request, http::StatusCode};
use poem_openapi::{Object, OpenApi, payload::Json};
use shared::{
    service::stripe_events::{self, Received},
    stripe::webhook,
};

use super::ApiTags;
use crate::{body::RawJsonBody, error::ApiError, state::AppState, work::Work};

pub struct StripeWebhooksApi;

#[derive(Debug, Object)]
pub struct StripeWebhookOut {
    pub received: bool,
    /// `true` when this event id was received before (nothing was done again).
    pub duplicate: bool,
}

fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_stripe_event", detail)
}

#[OpenApi]
impl StripeWebhooksApi {
    /// Receive a Stripe event
    ///
    /// Called by Stripe, signed with `Stripe-Signature` (tolerance 300 s); anything unsigned,
    /// badly signed or stale is `400` and stores nothing. Processing happens in the worker
    /// fleet; events about objects the platform does not keep are recorded and left alone.
    #[oai(
        path = "/webhooks/stripe",
        method = "post",
        operation_id = "stripe.webhook",
        tag = "ApiTags::Stripe"
    )]
    async fn receive(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        body: RawJsonBody,
    ) -> Result<Json<StripeWebhookOut>, ApiError> {
        let secrets: Vec<&str> = state
            .settings
            .stripe
            .webhook_secrets
            .iter()
            .map(|s| s.expose().as_str())
            .collect();
        if secrets.is_empty() {
            // Nothing can be verified: the signature check below answers as it does for any
            // signature it cannot verify, so a caller learns nothing of the configuration.
            // The operator hears of it once.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::error!(
                    "a Stripe event arrived but STRIPE_WEBHOOK_SECRETS is not set: \
                     every Stripe event is refused"
                );
            });
        }
        let header = req
            .headers()
            .get("stripe-signature")
            .and_then(|v| v.to_str().ok());
        let now = state.clock.now();
        webhook::verify(header, &body.0, &secrets, now.timestamp())
            .map_err(|e| bad_signature(&e.to_string()))?;
        let payload: serde_json::Value =
            serde_json::from_slice(&body.0).map_err(|_| invalid("The body is not JSON."))?;
        let id = payload["id"]
            .as_str()
            .filter(|i| i.starts_with("evt_") && i.len() <= 255)
            .ok_or_else(|| invalid("The event has no `evt_` id."))?;
        let event_type = payload["type"]
            .as_str()
            .filter(|t| !t.is_empty() && t.len() <= 100)
            .ok_or_else(|| invalid("The event has no type."))?;
        let created: DateTime<Utc> = payload["created"]
            .as_i64()
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .ok_or_else(|| invalid("The event has no `created` time."))?;
        let received = Received {
            id,
            event_type,
            account: payload["account"].as_str(),
            livemode: payload["livemode"].as_bool().unwrap_or(false),
            created,
            payload: &payload,
        };
        let mut work = Work::begin(req).await?;
        let new = stripe_events::receive(&mut work, &received).await?;
        Ok(Json(StripeWebhookOut {
            received: true,
            duplicate: !new,
        }))
    }
}

fn bad_signature(detail: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", detail)
}
