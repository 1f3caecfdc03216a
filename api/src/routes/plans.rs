//! Plans (`/api/v1/plans`; the seed's `/api/v1/auth/plans/` reaches the same operations): a
//! product with one recurring flat price. Changes return at once; Stripe hears of them through
//! the worker fleet (`sync_status`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::{
        catalog::{Description, Features, Name},
        interval::{Interval, IntervalUnit},
        money::Currency,
        usage::UsageLimit,
    },
    ids::PlanId,
    service::catalog::{self as service, PlanQuery, PlanRow, PlanSpec, PlanUpdate},
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{immutable, metadata, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct PlansApi;

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PlanIn {
    /// Unique among the tenant's plans in this mode (case-insensitive).
    pub name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// The price in minor units of the currency (cents; yen for JPY).
    pub price_cents: i64,
    /// ISO 4217 code; default `usd`.
    #[oai(nullable)]
    pub currency: Option<String>,
    /// `day`, `week`, `month`, `quarter` or `year` (also `monthly`, `yearly`…).
    pub billing_interval: String,
    /// Intervals per billing period; default 1 (at most one year in all).
    #[oai(nullable)]
    pub interval_count: Option<u32>,
    /// Days of free trial; default 0.
    #[oai(nullable)]
    pub trial_days: Option<u32>,
    /// Features shown to customers.
    #[oai(nullable)]
    pub features: Option<Vec<String>>,
    /// Your key-value data (Stripe's limits: 50 keys, 40-character keys, 500-character values).
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
    /// Shown in public listings; default `true`.
    #[oai(nullable)]
    pub is_visible: Option<bool>,
    /// How much of each metric a subscription to the plan may use per billing period; the
    /// first time a period's usage reaches a limit, a
    /// `customer.subscription.usage_limit_reached` event tells of it (usage goes on being
    /// recorded and billed). Default none.
    #[oai(nullable, validator(max_items = 20))]
    pub usage_limits: Option<Vec<UsageLimitIn>>,
}

/// A limit on a metric per billing period.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UsageLimitIn {
    /// The billable metric's code; one limit per metric.
    pub metric: String,
    /// The quantity (as the metric aggregates it) a period may use before the limit is
    /// reached.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000000000")))]
    pub limit: i64,
}

/// A limit on a metric per billing period.
#[derive(Debug, Clone, Object)]
pub struct UsageLimitOut {
    /// The billable metric's code.
    pub metric: String,
    pub limit: i64,
}

fn limits_in(limits: Option<&[UsageLimitIn]>) -> Option<Vec<UsageLimit>> {
    limits.map(|l| {
        l.iter()
            .map(|l| UsageLimit {
                metric: l.metric.clone(),
                limit: l.limit,
            })
            .collect()
    })
}

/// Changes to a plan. The price, currency and interval cannot change: create a new plan (or
/// duplicate this one) instead.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PlanPatch {
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    #[oai(nullable)]
    pub features: Option<Vec<String>>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
    #[oai(nullable)]
    pub is_visible: Option<bool>,
    /// `false` deactivates the plan, like `DELETE`; `true` reactivates it.
    #[oai(nullable)]
    pub is_active: Option<bool>,
    #[oai(nullable)]
    pub trial_days: Option<u32>,
    /// Replaces the plan's usage limits (`[]`: none). The plan's live subscribers are
    /// checked against the new limits within a few minutes.
    #[oai(nullable, validator(max_items = 20))]
    pub usage_limits: Option<Vec<UsageLimitIn>>,
    /// Cannot change (answers `400 immutable_field`).
    #[oai(nullable)]
    pub price_cents: Option<serde_json::Value>,
    /// Cannot change (answers `400 immutable_field`).
    #[oai(nullable)]
    pub currency: Option<serde_json::Value>,
    /// Cannot change (answers `400 immutable_field`).
    #[oai(nullable)]
    pub billing_interval: Option<serde_json::Value>,
    /// Cannot change (answers `400 immutable_field`).
    #[oai(nullable)]
    pub interval_count: Option<serde_json::Value>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PlanDuplicateIn {
    /// The new plan's name.
    pub name: String,
    /// The new plan's price in minor units; default the original's.
    #[oai(nullable)]
    pub price_cents: Option<i64>,
}

/// A plan.
#[derive(Debug, Object)]
pub struct PlanOut {
    /// Plan id (`plan_…`).
    pub id: String,
    /// Always `plan`.
    pub object: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub billing_interval: String,
    pub interval_count: i32,
    /// e.g. `$29.99/month`.
    pub price_display: String,
    pub trial_days: i32,
    pub has_trial: bool,
    pub features: serde_json::Value,
    /// Per-period limits on metrics.
    pub usage_limits: Vec<UsageLimitOut>,
    pub metadata: serde_json::Value,
    pub is_active: bool,
    pub is_visible: bool,
    /// The plan this one was duplicated from.
    #[oai(nullable)]
    pub duplicated_from: Option<String>,
    /// The plan's recurring price (`price_…`): what a subscription item names. The plan's id
    /// is also its product's (`prod_…` with the same suffix).
    pub price_id: String,
    pub livemode: bool,
    #[oai(nullable)]
    pub stripe_product_id: Option<String>,
    #[oai(nullable)]
    pub stripe_price_id: Option<String>,
    /// `pending` (Stripe has yet to hear of the latest change), `synced`, `failed` (retrying;
    /// see `sync_error`) or `not_synced` (no Stripe account connected in this mode).
    pub sync_status: String,
    #[oai(nullable)]
    pub sync_error: Option<String>,
    #[oai(nullable)]
    pub synced_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<PlanRow> for PlanOut {
    fn from(p: PlanRow) -> Self {
        Self {
            id: p.id.to_string(),
            object: "plan".into(),
            price_display: p.price_display(),
            has_trial: p.trial_days > 0,
            name: p.name,
            description: p.description,
            price_cents: p.amount,
            currency: p.currency,
            billing_interval: p.interval,
            interval_count: p.interval_count,
            trial_days: p.trial_days,
            features: p.features,
            usage_limits: serde_json::from_value::<Vec<UsageLimit>>(p.usage_limits)
                .unwrap_or_default()
                .into_iter()
                .map(|l| UsageLimitOut {
                    metric: l.metric,
                    limit: l.limit,
                })
                .collect(),
            metadata: p.metadata,
            is_active: p.is_active,
            is_visible: p.is_visible,
            duplicated_from: p.duplicated_from.map(|d| d.to_string()),
            price_id: p.price_id.to_string(),
            livemode: p.livemode,
            stripe_product_id: p.stripe_product_id,
            stripe_price_id: p.stripe_price_id,
            sync_status: p.sync_status.to_string(),
            sync_error: p.sync_error,
            synced_at: p.synced_at,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct PlanList {
    pub data: Vec<PlanOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedPlan {
    /// The plan was created; Stripe hears of it through the worker fleet.
    #[oai(status = 201)]
    Created(Json<PlanOut>),
}

fn parse_id(raw: &str) -> Result<PlanId, ApiError> {
    PlanId::parse(raw).map_err(|_| ApiError::not_found("plan"))
}

fn features(f: Option<&[String]>) -> Result<Option<Features>, ApiError> {
    f.map(Features::parse)
        .transpose()
        .map_err(ApiError::invalid("features"))
}

#[OpenApi]
impl PlansApi {
    /// Create a plan
    ///
    /// A recurring flat price with a trial, features and metadata. Answers at once with
    /// `sync_status: pending`; the worker fleet creates the Stripe Product and Price on the
    /// connected account. Also at `POST /api/v1/auth/plans/`.
    #[oai(
        path = "/api/v1/plans",
        method = "post",
        operation_id = "plans.create",
        tag = "ApiTags::Plans"
    )]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<PlanIn>,
    ) -> Result<CreatedPlan, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let name = Name::parse(&b.name).map_err(ApiError::invalid("name"))?;
        let description = Description::parse(b.description.as_deref().unwrap_or(""))
            .map_err(ApiError::invalid("description"))?;
        let currency = Currency::parse(b.currency.as_deref().unwrap_or("usd"))
            .map_err(ApiError::invalid("currency"))?;
        let unit = IntervalUnit::parse(&b.billing_interval)
            .map_err(ApiError::invalid("billing_interval"))?;
        let interval = Interval::new(unit, b.interval_count.unwrap_or(1))
            .map_err(ApiError::invalid("interval_count"))?;
        let features = features(b.features.as_deref())?.unwrap_or_default();
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let usage_limits = limits_in(b.usage_limits.as_deref()).unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_plan(
            &mut work,
            ctx,
            &state.settings.stripe,
            PlanSpec {
                name: &name,
                description: &description,
                amount: b.price_cents,
                currency,
                interval,
                trial_days: b.trial_days.unwrap_or(0),
                features: &features,
                metadata: &metadata,
                is_visible: b.is_visible.unwrap_or(true),
                usage_limits: &usage_limits,
            },
        )
        .await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(CreatedPlan::Created(Json(row.into())))
    }

    /// List plans
    ///
    /// Newest first, filtered by `is_active`, `billing_interval` and a name `search`. Also at
    /// `GET /api/v1/auth/plans/`.
    #[oai(
        path = "/api/v1/plans",
        method = "get",
        operation_id = "plans.list",
        tag = "ApiTags::Plans"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only active (`true`) or inactive (`false`) plans.
        is_active: Query<Option<bool>>,
        /// Only plans billed by this interval (`month`, `year`…).
        billing_interval: Query<Option<String>>,
        /// Only plans whose name contains this text (case-insensitive).
        search: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A plan id: return older plans (the next page).
        starting_after: Query<Option<String>>,
        /// A plan id: return newer plans (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<PlanList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            PlanId::parse(s).map(|id| id.as_uuid())
        })?;
        let interval = billing_interval
            .0
            .as_deref()
            .map(IntervalUnit::parse)
            .transpose()
            .map_err(ApiError::invalid("billing_interval"))?;
        let page = service::list_plans(
            &state.pool,
            ctx,
            PlanQuery {
                is_active: is_active.0,
                interval,
                search: search.0.as_deref(),
            },
            page,
        )
        .await?;
        Ok(Json(PlanList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a plan
    ///
    /// With its Stripe ids and sync state. Also at `GET /api/v1/auth/plans/{id}/`.
    #[oai(
        path = "/api/v1/plans/:id",
        method = "get",
        operation_id = "plans.get",
        tag = "ApiTags::Plans"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Plan id (`plan_…`).
        id: Path<String>,
    ) -> Result<Json<PlanOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let row = service::get_plan(&state.pool, ctx, parse_id(&id.0)?).await?;
        Ok(Json(row.into()))
    }

    /// Update a plan
    ///
    /// Name, description, features, metadata, visibility, trial and active flag. The price,
    /// currency and interval are immutable (`400 immutable_field`): a new price is a new plan.
    /// Also at `PATCH /api/v1/auth/plans/{id}/`.
    #[oai(
        path = "/api/v1/plans/:id",
        method = "patch",
        operation_id = "plans.update",
        tag = "ApiTags::Plans"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Plan id (`plan_…`).
        id: Path<String>,
        body: JsonBody<PlanPatch>,
    ) -> Result<Json<PlanOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = parse_id(&id.0)?;
        let b = body.0;
        for (field, present) in [
            ("price_cents", b.price_cents.is_some()),
            ("currency", b.currency.is_some()),
            ("billing_interval", b.billing_interval.is_some()),
            ("interval_count", b.interval_count.is_some()),
        ] {
            if present {
                return Err(immutable(field, "plan (or duplicate this one)"));
            }
        }
        let name = b
            .name
            .as_deref()
            .map(Name::parse)
            .transpose()
            .map_err(ApiError::invalid("name"))?;
        let description = b
            .description
            .as_deref()
            .map(Description::parse)
            .transpose()
            .map_err(ApiError::invalid("description"))?;
        let features = features(b.features.as_deref())?;
        let metadata = metadata(b.metadata.as_ref())?;
        let usage_limits = limits_in(b.usage_limits.as_deref());
        let mut work = Work::begin(req).await?;
        let row = service::update_plan(
            &mut work,
            ctx,
            &state.settings.stripe,
            id,
            PlanUpdate {
                name: name.as_ref(),
                description: description.as_ref(),
                features: features.as_ref(),
                metadata: metadata.as_ref(),
                is_visible: b.is_visible,
                is_active: b.is_active,
                trial_days: b.trial_days,
                usage_limits: usage_limits.as_deref(),
            },
        )
        .await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(row.into()))
    }

    /// Deactivate a plan
    ///
    /// A soft delete: the plan stays readable with `is_active: false`, its Stripe Product is
    /// archived, existing subscriptions go on and new ones cannot start. Also at
    /// `DELETE /api/v1/auth/plans/{id}/`.
    #[oai(
        path = "/api/v1/plans/:id",
        method = "delete",
        operation_id = "plans.deactivate",
        tag = "ApiTags::Plans"
    )]
    async fn deactivate(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Plan id (`plan_…`).
        id: Path<String>,
    ) -> Result<Json<PlanOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = parse_id(&id.0)?;
        let mut work = Work::begin(req).await?;
        let row = service::deactivate_plan(&mut work, ctx, &state.settings.stripe, id).await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(Json(row.into()))
    }

    /// Duplicate a plan
    ///
    /// A new plan with a new name (and optionally a new price) and the original's currency,
    /// interval, trial, features and metadata; it remembers the original in `duplicated_from`.
    /// Also at `POST /api/v1/auth/plans/{id}/duplicate/`.
    #[oai(
        path = "/api/v1/plans/:id/duplicate",
        method = "post",
        operation_id = "plans.duplicate",
        tag = "ApiTags::Plans"
    )]
    async fn duplicate(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Plan id (`plan_…`) of the original.
        id: Path<String>,
        body: JsonBody<PlanDuplicateIn>,
    ) -> Result<CreatedPlan, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = parse_id(&id.0)?;
        let b = body.0;
        let name = Name::parse(&b.name).map_err(ApiError::invalid("name"))?;
        let mut work = Work::begin(req).await?;
        let row = service::duplicate_plan(
            &mut work,
            ctx,
            &state.settings.stripe,
            id,
            &name,
            b.price_cents,
        )
        .await?;
        note(req, |n| n.object_id = Some(row.id.to_string()));
        Ok(CreatedPlan::Created(Json(row.into())))
    }
}
