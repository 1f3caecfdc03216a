//! Coupons (`/api/v1/coupons`): discounts a tenant's customers redeem.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::{
        coupon::{Discount, Duration},
        customer::CustomerName,
        money::Currency,
    },
    ids::CouponId,
    service::coupons::{self as service, CouponRow, CouponSpec},
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{metadata, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct CouponsApi;

/// A coupon to create: either `percent_off_bps` or `amount_off` with its `currency`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CouponIn {
    /// As invoices show it.
    #[oai(nullable)]
    pub name: Option<String>,
    /// Basis points off: 1 to 10000 (1250 = 12.5 %).
    #[oai(nullable)]
    pub percent_off_bps: Option<u32>,
    /// Minor units of `currency` off.
    #[oai(nullable)]
    pub amount_off: Option<i64>,
    /// ISO 4217 code; required with `amount_off`, refused with `percent_off_bps`.
    #[oai(nullable)]
    pub currency: Option<String>,
    /// `once` (the first invoice), `repeating` (for `duration_in_months`) or `forever`.
    pub duration: String,
    /// 1 to 120; required when `repeating`, refused otherwise.
    #[oai(nullable)]
    pub duration_in_months: Option<u32>,
    /// How many times it may be redeemed in all.
    #[oai(nullable)]
    pub max_redemptions: Option<u32>,
    /// Redeemable until then (in the future).
    #[oai(nullable)]
    pub redeem_by: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// Changes to a coupon: only its name and metadata change.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CouponPatch {
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// A coupon.
#[derive(Debug, Object)]
pub struct CouponOut {
    /// Coupon id (`coupon_…`).
    pub id: String,
    /// Always `coupon`.
    pub object: String,
    pub name: String,
    #[oai(nullable)]
    pub percent_off_bps: Option<i32>,
    #[oai(nullable)]
    pub amount_off: Option<i64>,
    #[oai(nullable)]
    pub currency: Option<String>,
    pub duration: String,
    #[oai(nullable)]
    pub duration_in_months: Option<i32>,
    #[oai(nullable)]
    pub max_redemptions: Option<i32>,
    #[oai(nullable)]
    pub redeem_by: Option<DateTime<Utc>>,
    pub times_redeemed: i32,
    /// Whether it can be redeemed now.
    pub valid: bool,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CouponOut {
    fn new(c: CouponRow, now: DateTime<Utc>) -> Self {
        Self {
            id: c.id.to_string(),
            object: "coupon".into(),
            valid: c.valid(now),
            name: c.name,
            percent_off_bps: c.percent_off_bps,
            amount_off: c.amount_off,
            currency: c.currency,
            duration: c.duration,
            duration_in_months: c.duration_in_months,
            max_redemptions: c.max_redemptions,
            redeem_by: c.redeem_by,
            times_redeemed: c.times_redeemed,
            metadata: c.metadata,
            livemode: c.livemode,
            created_at: c.created_at,
            updated_at: c.updated_at,
        }
    }
}

/// A deleted coupon.
#[derive(Debug, Object)]
pub struct DeletedCoupon {
    pub id: String,
    /// Always `coupon`.
    pub object: String,
    /// Always `true`.
    pub deleted: bool,
}

#[derive(Debug, Object)]
pub struct CouponList {
    pub data: Vec<CouponOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedCoupon {
    /// The coupon was created.
    #[oai(status = 201)]
    Created(Json<CouponOut>),
}

fn coupon_id(raw: &str) -> Result<CouponId, ApiError> {
    CouponId::parse(raw).map_err(|_| ApiError::not_found("coupon"))
}

#[OpenApi]
impl CouponsApi {
    /// Create a coupon
    ///
    /// Its terms never change afterwards.
    #[oai(
        path = "/api/v1/coupons",
        method = "post",
        operation_id = "coupons.create",
        tag = "ApiTags::Catalog"
    )]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<CouponIn>,
    ) -> Result<CreatedCoupon, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let name = CustomerName::parse(b.name.as_deref().unwrap_or(""))
            .map_err(ApiError::invalid("name"))?;
        let currency = b
            .currency
            .as_deref()
            .map(Currency::parse)
            .transpose()
            .map_err(ApiError::invalid("currency"))?;
        let discount = Discount::parse(b.percent_off_bps, b.amount_off, currency)
            .map_err(|(field, e)| ApiError::validation(field, e.0))?;
        let duration = Duration::parse(&b.duration, b.duration_in_months)
            .map_err(|(field, e)| ApiError::validation(field, e.0))?;
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_coupon(
            &mut work,
            ctx,
            CouponSpec {
                name: &name,
                discount,
                duration,
                max_redemptions: b.max_redemptions,
                redeem_by: b.redeem_by,
                metadata: &metadata,
            },
        )
        .await?;
        let out = CouponOut::new(row, state.clock.now());
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedCoupon::Created(Json(out)))
    }

    /// List coupons
    ///
    /// Newest first.
    #[oai(
        path = "/api/v1/coupons",
        method = "get",
        operation_id = "coupons.list",
        tag = "ApiTags::Catalog"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A coupon id: return older coupons (the next page).
        starting_after: Query<Option<String>>,
        /// A coupon id: return newer coupons (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<CouponList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            CouponId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_coupons(&state.pool, ctx, page).await?;
        let now = state.clock.now();
        Ok(Json(CouponList {
            data: page
                .items
                .into_iter()
                .map(|c| CouponOut::new(c, now))
                .collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a coupon
    #[oai(
        path = "/api/v1/coupons/:id",
        method = "get",
        operation_id = "coupons.get",
        tag = "ApiTags::Catalog"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Coupon id (`coupon_…`).
        id: Path<String>,
    ) -> Result<Json<CouponOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = coupon_id(&id.0)?;
        let row = service::get_coupon(&state.pool, ctx, id).await?;
        Ok(Json(CouponOut::new(row, state.clock.now())))
    }

    /// Update a coupon
    ///
    /// Only the name and metadata change.
    #[oai(
        path = "/api/v1/coupons/:id",
        method = "patch",
        operation_id = "coupons.update",
        tag = "ApiTags::Catalog"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Coupon id (`coupon_…`).
        id: Path<String>,
        body: JsonBody<CouponPatch>,
    ) -> Result<Json<CouponOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = coupon_id(&id.0)?;
        let b = body.0;
        let name = b
            .name
            .as_deref()
            .map(CustomerName::parse)
            .transpose()
            .map_err(ApiError::invalid("name"))?;
        let metadata = metadata(b.metadata.as_ref())?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row =
            service::update_coupon(&mut work, ctx, id, name.as_ref(), metadata.as_ref()).await?;
        Ok(Json(CouponOut::new(row, state.clock.now())))
    }

    /// Delete a coupon
    ///
    /// It can no longer be redeemed and answers 404; discounts already given keep it.
    #[oai(
        path = "/api/v1/coupons/:id",
        method = "delete",
        operation_id = "coupons.delete",
        tag = "ApiTags::Catalog"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        /// Coupon id (`coupon_…`).
        id: Path<String>,
    ) -> Result<Json<DeletedCoupon>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = coupon_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::delete_coupon(&mut work, ctx, id).await?;
        Ok(Json(DeletedCoupon {
            id: row.id.to_string(),
            object: "coupon".into(),
            deleted: true,
        }))
    }
}
