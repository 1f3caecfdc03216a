//! Stripe Connect (seed paths under `/api/v1/auth/tenants/stripe/`): onboarding through an
//! Account Link, the return (`callback`) with a signed, expiring, single-use `state`, status
//! and disconnection. One connected account per tenant and mode.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use shared::{
    service::stripe_connect,
    service::stripe_connect::{AccountRow, ConnectStatus},
    tenancy::{Permission, TenantContext},
};

use super::ApiTags;
use crate::{auth::Auth, error::ApiError, middleware::note, state::AppState, work::Work};

pub struct StripeApi;

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
                connected: r.status == ConnectStatus::Connected,
                status: r.status.to_string(),
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

async fn connect(
    state: &AppState,
    req: &Request,
    ctx: &TenantContext,
) -> Result<Json<ConnectOut>, ApiError> {
    let return_url = format!(
        "{}/api/v1/auth/tenants/stripe/callback",
        state.settings.stripe.public_url
    );
    let onboarding = stripe_connect::prepare_onboarding(
        &state.pool,
        &state.stripe,
        ctx,
        &state_key(state),
        &return_url,
        state.clock.now(),
    )
    .await?;
    let mut work = Work::begin(req).await?;
    stripe_connect::record_onboarding(&mut work, ctx, &onboarding).await?;
    note(req, |n| n.object_id = Some(onboarding.account_id.clone()));
    Ok(Json(ConnectOut {
        url: onboarding.url,
        state: onboarding.state,
        expires_at: onboarding.link_expires_at,
        account_id: onboarding.account_id,
        livemode: ctx.livemode(),
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
        let mut work = Work::begin(req).await?;
        let (scope, row) = stripe_connect::complete_onboarding(
            &mut work,
            &state.stripe,
            &state_key(&state),
            &state_param.0,
        )
        .await?;
        note(req, |n| {
            n.tenant = Some((scope.tenant_id(), scope.livemode()));
            n.object_id = row.account_id.clone();
        });
        Ok(Json(StripeStatusOut::of(
            Some(row),
            state.stripe.configured(scope.livemode()),
            scope.livemode(),
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
        let row = stripe_connect::status(&state.pool, ctx).await?;
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
        let row = stripe_connect::disconnect(&mut work, ctx).await?;
        note(req, |n| n.object_id = row.account_id.clone());
        Ok(Json(StripeStatusOut::of(
            Some(row),
            state.stripe.configured(ctx.livemode()),
            ctx.livemode(),
        )))
    }
}
