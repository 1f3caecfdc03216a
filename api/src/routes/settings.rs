//! The tenant's billing settings (`/api/v1/settings/...`), per mode: the dunning policy and
//! the invoicing settings.

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{Enum, Object, OpenApi, payload::Json};
use serde::Deserialize;
use shared::{
    domain::dunning::{DunningPolicy, FinalAction, MAX_RETRIES, MAX_WAIT_DAYS},
    service::{dunning as service, invoicing},
    tenancy::Permission,
};

use super::ApiTags;
use crate::{auth::Auth, body::JsonBody, error::ApiError, state::AppState, work::Work};

pub struct SettingsApi;

/// What happens to the subscription when dunning gives up.
#[derive(Debug, Clone, Copy, Enum, Deserialize, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum FinalActionDto {
    /// Canceled at once.
    Cancel,
    /// Marked unpaid (it stays; its next invoices are still made).
    MarkUnpaid,
    /// Left past due.
    LeavePastDue,
}

impl From<FinalActionDto> for FinalAction {
    fn from(a: FinalActionDto) -> Self {
        match a {
            FinalActionDto::Cancel => FinalAction::Cancel,
            FinalActionDto::MarkUnpaid => FinalAction::MarkUnpaid,
            FinalActionDto::LeavePastDue => FinalAction::LeavePastDue,
        }
    }
}

impl From<FinalAction> for FinalActionDto {
    fn from(a: FinalAction) -> Self {
        match a {
            FinalAction::Cancel => FinalActionDto::Cancel,
            FinalAction::MarkUnpaid => FinalActionDto::MarkUnpaid,
            FinalAction::LeavePastDue => FinalActionDto::LeavePastDue,
        }
    }
}

/// The dunning policy to set (all of it).
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct DunningIn {
    /// The days to wait before each retry of a declined charge: `[3, 5, 7]` is 4 attempts over
    /// 15 days. At most 10 waits of 1 to 60 days; empty: no retry.
    pub retry_waits_days: Vec<u16>,
    /// What happens to the subscription when the last attempt fails, at once on a hard
    /// decline (a lost or stolen card...).
    pub final_action: FinalActionDto,
    /// Whether the invoice is then marked uncollectible. Default `false`.
    #[oai(nullable)]
    pub mark_uncollectible: Option<bool>,
}

/// The dunning policy of the caller's mode.
#[derive(Debug, Object)]
pub struct DunningOut {
    /// `dunning_settings`.
    pub object: String,
    pub retry_waits_days: Vec<u16>,
    pub final_action: FinalActionDto,
    pub mark_uncollectible: bool,
    pub livemode: bool,
    /// When it was last set; null while the default applies.
    #[oai(nullable)]
    pub updated_at: Option<DateTime<Utc>>,
}

fn out(stored: service::StoredPolicy, livemode: bool) -> DunningOut {
    DunningOut {
        object: "dunning_settings".into(),
        retry_waits_days: stored.policy.retry_waits_days().to_vec(),
        final_action: stored.policy.final_action.into(),
        mark_uncollectible: stored.policy.mark_uncollectible,
        livemode,
        updated_at: stored.updated_at,
    }
}

/// The invoicing settings to set (all of them).
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct InvoicingIn {
    /// How many hours a renewal invoice that bills usage stays a draft after the period whose
    /// usage it bills ends (0 to 168): usage events for that period are still recorded, and
    /// counted on it, until it is finalized then (or sooner by `POST
    /// /api/v1/invoices/{id}/finalize`, or by a change, cancel or renewal of its
    /// subscription). 0: finalized at once.
    #[oai(validator(minimum(value = "0"), maximum(value = "168")))]
    pub grace_period_hours: u8,
}

/// The invoicing settings of the caller's mode.
#[derive(Debug, Object)]
pub struct InvoicingOut {
    /// `invoice_settings`.
    pub object: String,
    pub grace_period_hours: u8,
    pub livemode: bool,
    /// When they were last set; null while the defaults apply.
    #[oai(nullable)]
    pub updated_at: Option<DateTime<Utc>>,
}

fn invoicing_out(s: invoicing::InvoiceSettings, livemode: bool) -> InvoicingOut {
    InvoicingOut {
        object: "invoice_settings".into(),
        grace_period_hours: s.grace_period_hours,
        livemode,
        updated_at: s.updated_at,
    }
}

#[OpenApi]
impl SettingsApi {
    /// Get the invoicing settings
    ///
    /// The grace period of renewal invoices that bill usage: until it is set, none (they are
    /// finalized when their period ends).
    #[oai(
        path = "/api/v1/settings/invoicing",
        method = "get",
        operation_id = "settings.invoicing.get",
        tag = "ApiTags::Billing"
    )]
    async fn get_invoicing(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<InvoicingOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let settings = invoicing::get_settings(&state.pool, ctx.scope()).await?;
        Ok(Json(invoicing_out(settings, ctx.livemode())))
    }

    /// Set the invoicing settings
    ///
    /// Applies to renewals from now on; a draft already made is finalized when its own grace
    /// period ends.
    #[oai(
        path = "/api/v1/settings/invoicing",
        method = "put",
        operation_id = "settings.invoicing.set",
        tag = "ApiTags::Billing"
    )]
    async fn set_invoicing(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<InvoicingIn>,
    ) -> Result<Json<InvoicingOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let mut work = Work::begin(req).await?;
        let settings =
            invoicing::set_settings(&mut work, ctx.scope(), body.0.grace_period_hours).await?;
        Ok(Json(invoicing_out(settings, ctx.livemode())))
    }

    /// Get the dunning policy
    ///
    /// What follows a declined charge of an invoice collected automatically: retries after
    /// each wait, then the final action. Until one is set: retries after 3, 5 and 7 days, then
    /// cancel.
    #[oai(
        path = "/api/v1/settings/dunning",
        method = "get",
        operation_id = "settings.dunning.get",
        tag = "ApiTags::Billing"
    )]
    async fn get_dunning(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
    ) -> Result<Json<DunningOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let stored = service::get_policy(&state.pool, ctx.scope()).await?;
        Ok(Json(out(stored, ctx.livemode())))
    }

    /// Set the dunning policy
    ///
    /// Applies to declines from now on (retries already scheduled keep their time). Hard
    /// declines never retry; `expired_card`, `incorrect_cvc` and a missing payment method
    /// wait for a new default payment method, which is charged at once, until the schedule
    /// would have ended.
    #[oai(
        path = "/api/v1/settings/dunning",
        method = "put",
        operation_id = "settings.dunning.set",
        tag = "ApiTags::Billing"
    )]
    async fn set_dunning(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<DunningIn>,
    ) -> Result<Json<DunningOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        if b.retry_waits_days.len() > MAX_RETRIES
            || b.retry_waits_days
                .iter()
                .any(|d| *d == 0 || *d > MAX_WAIT_DAYS)
        {
            return Err(ApiError::validation(
                "retry_waits_days",
                format!("must be at most {MAX_RETRIES} waits of 1 to {MAX_WAIT_DAYS} days"),
            ));
        }
        let policy = DunningPolicy::new(
            b.retry_waits_days,
            b.final_action.into(),
            b.mark_uncollectible.unwrap_or(false),
        )
        .map_err(ApiError::invalid("retry_waits_days"))?;
        let mut work = Work::begin(req).await?;
        let stored = service::set_policy(&mut work, ctx.scope(), &policy).await?;
        Ok(Json(out(stored, ctx.livemode())))
    }
}
