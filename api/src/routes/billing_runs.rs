//! Billing runs (`/api/v1/billing-runs`): the fleet's scheduled runs as a tenant's mode sees
//! them: what each found due for it, queued, and how that went.

use chrono::{DateTime, Utc};
use poem_openapi::{
    Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use shared::{
    ids::BillingRunId,
    service::billing_runs::{self as service, TenantRunRow},
    tenancy::Permission,
};

use super::{ApiTags, dto::page_request};
use crate::{auth::Auth, error::ApiError, state::AppState};

pub struct BillingRunsApi;

/// A billing run, as the caller's tenant and mode see it.
#[derive(Debug, Object)]
pub struct BillingRunOut {
    /// `brun_…`
    pub id: String,
    /// `billing_run`.
    pub object: String,
    /// The tick of the schedule it is for: it queued the billing work due by then (for a test
    /// clock's advance, the time the clock moves to).
    pub scheduled_for: DateTime<Utc>,
    /// `schedule` (a tick of the fleet's schedule), `manual` (an operator's request) or
    /// `test_clock` (a test clock's advance, which runs what comes due on the clock).
    pub trigger: String,
    /// `running` (queuing what is due), `enqueued` (all queued, jobs running) or `completed`
    /// (every job it queued has ended).
    pub status: String,
    /// Billing jobs of this tenant and mode due by its time (renewals, trial notices, dunning
    /// retries and final actions, expiries).
    pub due: i64,
    /// How many of them it queued so far.
    pub enqueued: i64,
    /// How many of those succeeded so far.
    pub succeeded: i64,
    /// How many failed for good (dead jobs, for an operator to look at).
    pub failed: i64,
    pub livemode: bool,
    pub started_at: DateTime<Utc>,
    #[oai(nullable)]
    pub enqueued_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<TenantRunRow> for BillingRunOut {
    fn from(r: TenantRunRow) -> Self {
        Self {
            id: r.id.to_string(),
            object: "billing_run".into(),
            scheduled_for: r.scheduled_for,
            trigger: r.trigger.as_str().into(),
            status: r.status.as_str().into(),
            due: r.due,
            enqueued: r.enqueued,
            succeeded: r.succeeded,
            failed: r.failed,
            livemode: r.livemode,
            started_at: r.started_at,
            enqueued_at: r.enqueued_at,
            completed_at: r.completed_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct BillingRunList {
    pub data: Vec<BillingRunOut>,
    pub has_more: bool,
}

#[OpenApi]
impl BillingRunsApi {
    /// List billing runs
    ///
    /// The runs that found billing work due for the caller's mode, newest first.
    #[oai(
        path = "/api/v1/billing-runs",
        method = "get",
        operation_id = "billing_runs.list",
        tag = "ApiTags::Billing"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A billing run id: return older runs (the next page).
        starting_after: Query<Option<String>>,
        /// A billing run id: return newer runs (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<BillingRunList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            BillingRunId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list(&state.pool, ctx.scope(), page).await?;
        Ok(Json(BillingRunList {
            data: page.items.into_iter().map(BillingRunOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a billing run
    #[oai(
        path = "/api/v1/billing-runs/:id",
        method = "get",
        operation_id = "billing_runs.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Billing run id (`brun_…`).
        id: Path<String>,
    ) -> Result<Json<BillingRunOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = BillingRunId::parse(&id.0).map_err(|_| ApiError::not_found("billing run"))?;
        Ok(Json(
            service::get(&state.pool, ctx.scope(), id).await?.into(),
        ))
    }
}
