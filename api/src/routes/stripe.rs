//! Stripe Connect (seed paths under `/api/v1/auth/tenants/stripe/`): onboarding through an
//! Account Link, the return (`callback`) with a signed, expiring, single-use `state`, status
//! and disconnection. One connected account per tenant and mode.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use poem::{Request, http::StatusCode};
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use sha2::Sha256;
use shared::{
    db::{
        self, DbError, catalog_sync,
        events::NewEvent,
        stripe_accounts::{AccountRow, AccountState},
    },
    stripe::Failure,
    tenancy::{Permission, Scope, TenantContext},
};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::ApiTags;
use crate::{auth::Auth, error::ApiError, middleware::note, state::AppState, work::Work};

pub struct StripeApi;

/// How long an onboarding `state` is good for.
const STATE_TTL_MINUTES: i64 = 30;

/// Where onboarding goes on.
#[derive(Debug, Object)]
pub struct ConnectOut {
    /// Send the tenant's browser here to onboard with Stripe.
    pub url: String,
    /// The signed, single-use value the return carries back.
    pub state: String,
    /// When the link stops working (Unix seconds).
    pub expires_at: i64,
    pub account_id: String,
    pub livemode: bool,
}

/// The connected account of the caller's mode.
#[derive(Debug, Object)]
pub struct StripeStatusOut {
    /// Whether Stripe is configured for this mode on the platform at all.
    pub stripe_configured: bool,
    pub connected: bool,
    /// `not_connected`, `onboarding`, `connected` or `disconnected`.
    pub status: String,
    #[oai(nullable)]
    pub account_id: Option<String>,
    pub charges_enabled: bool,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    /// What Stripe still needs from the account, as Stripe last said.
    pub requirements: serde_json::Value,
    pub livemode: bool,
    #[oai(nullable)]
    pub updated_at: Option<DateTime<Utc>>,
}

impl StripeStatusOut {
    fn of(row: Option<AccountRow>, configured: bool, livemode: bool) -> Self {
        match row {
            Some(r) => Self {
                stripe_configured: configured,
                connected: r.status == "connected",
                status: r.status,
                account_id: r.account_id,
                charges_enabled: r.charges_enabled,
                payouts_enabled: r.payouts_enabled,
                details_submitted: r.details_submitted,
                requirements: r.requirements,
                livemode: r.livemode,
                updated_at: Some(r.updated_at),
            },
            None => Self {
                stripe_configured: configured,
                connected: false,
                status: "not_connected".into(),
                account_id: None,
                charges_enabled: false,
                payouts_enabled: false,
                details_submitted: false,
                requirements: serde_json::json!({}),
                livemode,
                updated_at: None,
            },
        }
    }
}

fn state_key(state: &AppState) -> [u8; 32] {
    shared::crypto::derive_key(state.settings.auth.app_secret.expose(), "connect-state")
}

fn state_mac(key: &[u8], nonce: Uuid, expires: i64) -> Vec<u8> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    mac.update(nonce.simple().to_string().as_bytes());
    mac.update(b".");
    mac.update(expires.to_string().as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `nonce.expires.signature`.
fn sign_state(key: &[u8], nonce: Uuid, expires: i64) -> String {
    format!(
        "{}.{expires}.{}",
        nonce.simple(),
        hex::encode(state_mac(key, nonce, expires))
    )
}

fn bad_state() -> ApiError {
    ApiError::validation("state", "is invalid, expired or already used")
}

/// Checks a state's signature and expiry; returns its nonce.
fn check_state(key: &[u8], raw: &str, now: i64) -> Result<Uuid, ApiError> {
    let mut parts = raw.split('.');
    let (Some(nonce), Some(expires), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad_state());
    };
    let nonce = Uuid::parse_str(nonce).map_err(|_| bad_state())?;
    let expires: i64 = expires.parse().map_err(|_| bad_state())?;
    let sig = hex::decode(sig).map_err(|_| bad_state())?;
    if !bool::from(sig.as_slice().ct_eq(&state_mac(key, nonce, expires))) || expires <= now {
        return Err(bad_state());
    }
    Ok(nonce)
}

fn stripe_err(e: Failure) -> ApiError {
    match e {
        Failure::NotConfigured => not_configured(),
        Failure::RateLimited | Failure::Transient(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "stripe_unavailable",
            format!("Stripe could not be reached; try again shortly ({e})."),
        ),
        Failure::Rejected(m) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "stripe_error",
            format!("Stripe refused the request: {m}"),
        ),
        Failure::Declined { message, .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "stripe_error",
            format!("Stripe refused the request: {message}"),
        ),
    }
}

fn not_configured() -> ApiError {
    ApiError::conflict(
        "stripe_not_configured",
        "Stripe is not configured for this mode on this platform (STRIPE_SECRET_KEY_TEST / \
         STRIPE_SECRET_KEY_LIVE); the sandbox gateway stands in.",
    )
}

fn begin_err(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("database", e)
}

async fn account_event(
    tx: &mut sqlx::PgConnection,
    scope: Scope,
    event_type: &str,
    row: &AccountRow,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let object = serde_json::json!({
        "object": "stripe_account",
        "account_id": row.account_id,
        "status": row.status,
        "charges_enabled": row.charges_enabled,
        "payouts_enabled": row.payouts_enabled,
        "details_submitted": row.details_submitted,
        "livemode": row.livemode,
    });
    db::events::record(tx, scope, NewEvent::new(event_type, object), now)
        .await
        .map(|_| ())
        .map_err(ApiError::db)
}

async fn connect(
    state: &AppState,
    req: &Request,
    ctx: &TenantContext,
) -> Result<Json<ConnectOut>, ApiError> {
    let livemode = ctx.livemode();
    if !state.stripe.configured(livemode) {
        return Err(not_configured());
    }
    let now = state.clock.now();
    // Read before the Stripe calls, outside the request's transaction (which opens after them).
    let current = {
        let mut conn = state.pool.acquire().await.map_err(begin_err)?;
        db::stripe_accounts::get(&mut conn, ctx.scope())
            .await
            .map_err(ApiError::db)?
    };
    let account = match current.as_ref().and_then(|r| r.usable_id()) {
        Some(id) => id.to_owned(),
        None => {
            let tenant = db::tenants::get(&state.pool, ctx)
                .await
                .map_err(ApiError::from_db("tenant"))?;
            // The same key while nothing changed: a retried request finds the same account.
            let generation = current
                .as_ref()
                .map(|r| r.updated_at.timestamp_micros())
                .unwrap_or(0);
            let key = format!("account-{}-{livemode}-{generation}", ctx.tenant_id);
            let metadata = HashMap::from([("tenant_id".to_owned(), ctx.tenant_id.to_string())]);
            state
                .stripe
                .create_account(livemode, &key, &tenant.email, metadata)
                .await
                .map_err(stripe_err)?
        }
    };
    let nonce = Uuid::new_v4();
    let expires = now + chrono::Duration::minutes(STATE_TTL_MINUTES);
    let signed = sign_state(&state_key(state), nonce, expires.timestamp());
    let callback = format!(
        "{}/api/v1/auth/tenants/stripe/callback?state={signed}",
        state.settings.stripe.public_url
    );
    let link = state
        .stripe
        .onboarding_link(livemode, &account, &callback, &callback)
        .await
        .map_err(stripe_err)?;
    let mut work = Work::begin(req).await?;
    let now = work.now();
    let tx = work.conn();
    let previous = current.as_ref().and_then(|r| r.account_id.as_deref());
    if previous.is_some_and(|p| p != account) {
        // A new account: what the old one held must be created there afresh.
        catalog_sync::forget_stripe_ids(&mut *tx, ctx.scope())
            .await
            .map_err(ApiError::db)?;
    }
    let row = db::stripe_accounts::start_onboarding(&mut *tx, ctx, &account, now)
        .await
        .map_err(ApiError::db)?;
    db::stripe_accounts::mirror_to_tenant(&mut *tx, &row)
        .await
        .map_err(ApiError::db)?;
    db::stripe_accounts::new_state(&mut *tx, ctx, nonce, now, expires)
        .await
        .map_err(ApiError::db)?;
    note(req, |n| n.object_id = Some(account.clone()));
    Ok(Json(ConnectOut {
        url: link.url,
        state: signed,
        expires_at: link.expires_at,
        account_id: account,
        livemode,
    }))
}

#[OpenApi]
impl StripeApi {
    /// Start Stripe Connect onboarding
    ///
    /// Creates (once) the tenant's Express account in the caller's mode and returns a Stripe
    /// onboarding link. The link returns the browser to `GET .../stripe/callback/` with a
    /// signed `state` that works once, for 30 minutes. Owners and admins only.
    #[oai(
        path = "/api/v1/auth/tenants/stripe/connect",
        method = "post",
        operation_id = "stripe.connect",
        tag = "ApiTags::Stripe"
    )]
    async fn connect_post(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
    ) -> Result<Json<ConnectOut>, ApiError> {
        let ctx = auth.require(Permission::ManageStripe)?;
        connect(&state, req, ctx).await
    }

    /// Start Stripe Connect onboarding (GET)
    ///
    /// The same as `POST /api/v1/auth/tenants/stripe/connect/`.
    #[oai(
        path = "/api/v1/auth/tenants/stripe/connect",
        method = "get",
        operation_id = "stripe.connect_get",
        tag = "ApiTags::Stripe"
    )]
    async fn connect_get(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
    ) -> Result<Json<ConnectOut>, ApiError> {
        let ctx = auth.require(Permission::ManageStripe)?;
        connect(&state, req, ctx).await
    }

    /// Return from Stripe onboarding
    ///
    /// Stripe sends the browser here. Needs no credential: the `state` proves which tenant and
    /// mode started the onboarding, and works once. Reads the account from Stripe, records it,
    /// and once onboarding is complete queues the sync of the catalog to it.
    #[oai(
        path = "/api/v1/auth/tenants/stripe/callback",
        method = "get",
        operation_id = "stripe.callback",
        tag = "ApiTags::Stripe"
    )]
    async fn callback(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        /// The `state` from the onboarding link.
        #[oai(name = "state")]
        state_param: Query<String>,
    ) -> Result<Json<StripeStatusOut>, ApiError> {
        let raw = state_param.0;
        let now = state.clock.now();
        let nonce = check_state(&state_key(&state), &raw, now.timestamp())?;
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let tx = work.conn();
        let scope = db::stripe_accounts::use_state(&mut *tx, nonce, now)
            .await
            .map_err(ApiError::db)?
            .ok_or_else(bad_state)?;
        note(req, |n| n.tenant = Some((scope.tenant_id, scope.livemode)));
        let current = db::stripe_accounts::get(&mut *tx, scope)
            .await
            .map_err(ApiError::db)?;
        let Some(account_id) = current
            .as_ref()
            .and_then(|r| r.usable_id())
            .map(str::to_owned)
        else {
            return Err(ApiError::conflict(
                "stripe_not_onboarding",
                "No onboarding is under way for this tenant; start again.",
            ));
        };
        let account = state
            .stripe
            .account(scope.livemode, &account_id)
            .await
            .map_err(stripe_err)?;
        let connected = account.details_submitted;
        let row = db::stripe_accounts::apply_state(
            &mut *tx,
            scope,
            &account_id,
            &AccountState {
                charges_enabled: account.charges_enabled,
                payouts_enabled: account.payouts_enabled,
                details_submitted: account.details_submitted,
                requirements: serde_json::json!({}),
                seen_at: now,
            },
            connected,
            now,
        )
        .await
        .map_err(ApiError::db)?;
        let row = match row {
            Some(r) => r,
            None => db::stripe_accounts::get(&mut *tx, scope)
                .await
                .map_err(ApiError::db)?
                .ok_or_else(bad_state)?,
        };
        db::stripe_accounts::mirror_to_tenant(&mut *tx, &row)
            .await
            .map_err(ApiError::db)?;
        if row.status == "connected" {
            catalog_sync::schedule_all_unsynced(&mut *tx, scope, now)
                .await
                .map_err(ApiError::db)?;
            account_event(&mut *tx, scope, "stripe_account.connected", &row, now).await?;
        }
        note(req, |n| n.object_id = Some(account_id.clone()));
        Ok(Json(StripeStatusOut::of(
            Some(row),
            state.stripe.configured(scope.livemode),
            scope.livemode,
        )))
    }

    /// Stripe Connect status
    ///
    /// The connected account of the caller's mode: charges and payouts enabled, what Stripe
    /// still requires. Kept current by Stripe's `account.updated` events.
    #[oai(
        path = "/api/v1/auth/tenants/stripe/status",
        method = "get",
        operation_id = "stripe.status",
        tag = "ApiTags::Stripe"
    )]
    async fn status(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<StripeStatusOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let mut conn = state.pool.acquire().await.map_err(begin_err)?;
        let row = db::stripe_accounts::get(&mut conn, ctx.scope())
            .await
            .map_err(ApiError::db)?;
        Ok(Json(StripeStatusOut::of(
            row,
            state.stripe.configured(ctx.livemode()),
            ctx.livemode(),
        )))
    }

    /// Disconnect Stripe
    ///
    /// Needs `?confirm=true`. The platform stops acting on the account (the account itself
    /// stays with Stripe); catalog changes are no longer synced. Owners and admins only.
    #[oai(
        path = "/api/v1/auth/tenants/stripe/disconnect",
        method = "delete",
        operation_id = "stripe.disconnect",
        tag = "ApiTags::Stripe"
    )]
    async fn disconnect(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Must be `true`.
        confirm: Query<Option<bool>>,
    ) -> Result<Json<StripeStatusOut>, ApiError> {
        let ctx = auth.require(Permission::ManageStripe)?;
        if confirm.0 != Some(true) {
            return Err(ApiError::validation(
                "confirm",
                "must be true to disconnect Stripe",
            ));
        }
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let tx = work.conn();
        let row = db::stripe_accounts::disconnect(&mut *tx, ctx, now)
            .await
            .map_err(|e| match e {
                DbError::NotFound => ApiError::conflict(
                    "stripe_not_connected",
                    "No Stripe account is connected in this mode.",
                ),
                other => ApiError::db(other),
            })?;
        db::stripe_accounts::mirror_to_tenant(&mut *tx, &row)
            .await
            .map_err(ApiError::db)?;
        account_event(
            &mut *tx,
            ctx.scope(),
            "stripe_account.disconnected",
            &row,
            now,
        )
        .await?;
        note(req, |n| n.object_id = row.account_id.clone());
        Ok(Json(StripeStatusOut::of(
            Some(row),
            state.stripe.configured(ctx.livemode()),
            ctx.livemode(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_verify_once_signed_and_fail_when_tampered_or_expired() {
        let key = [7u8; 32];
        let nonce = Uuid::new_v4();
        let s = sign_state(&key, nonce, 2_000);
        assert_eq!(check_state(&key, &s, 1_000).unwrap(), nonce);
        assert!(check_state(&key, &s, 2_000).is_err(), "expired");
        assert!(check_state(&[8u8; 32], &s, 1_000).is_err(), "other key");
        let tampered = s.replace(".2000.", ".3000.");
        assert!(check_state(&key, &tampered, 1_000).is_err());
        assert!(check_state(&key, "garbage", 1_000).is_err());
    }
}
