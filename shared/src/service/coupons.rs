//! Coupons: discounts a tenant's customers redeem (on subscriptions and invoices). Each change
//! records its event (`coupon.created`, `coupon.updated`, `coupon.deleted`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events, settle, tentative};
use crate::{
    db::{
        self, DbError,
        coupons::NewCoupon,
        pagination::{Page, PageRequest},
    },
    domain::{
        catalog::Metadata,
        coupon::{Discount, Duration},
        customer::CustomerName,
    },
    ids::CouponId,
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::coupons::CouponRow;

const WHAT: &str = "coupon";

/// A coupon to create.
#[derive(Debug)]
pub struct CouponSpec<'a> {
    pub name: &'a CustomerName,
    pub discount: Discount,
    pub duration: Duration,
    pub max_redemptions: Option<u32>,
    /// Must be in the future.
    pub redeem_by: Option<DateTime<Utc>>,
    pub metadata: &'a Metadata,
}

pub async fn create_coupon(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    spec: CouponSpec<'_>,
) -> ServiceResult<CouponRow> {
    let now = uow.now();
    if spec.redeem_by.is_some_and(|by| by <= now) {
        return Err(ServiceError::invalid("redeem_by", "must be in the future"));
    }
    let max_redemptions =
        spec.max_redemptions
            .map(|m| {
                i32::try_from(m).ok().filter(|m| *m >= 1).ok_or_else(|| {
                    ServiceError::invalid("max_redemptions", "must be 1 to 2147483647")
                })
            })
            .transpose()?;
    let (percent_off_bps, amount_off, currency) = match spec.discount {
        Discount::Percent(bps) => (Some(i32::try_from(bps).unwrap_or(0)), None, None),
        Discount::Amount { amount, currency } => (None, Some(amount), Some(currency.as_str())),
    };
    let row = db::coupons::create(
        uow.conn(),
        ctx,
        NewCoupon {
            id: CouponId::new(),
            name: spec.name.as_str(),
            percent_off_bps,
            amount_off,
            currency,
            duration: spec.duration.as_str(),
            duration_in_months: spec
                .duration
                .months()
                .map(|m| i32::try_from(m).unwrap_or(0)),
            max_redemptions,
            redeem_by: spec.redeem_by,
            metadata: &spec.metadata.to_json(),
        },
        now,
    )
    .await?;
    events::record(uow, ctx.scope(), "coupon.created", row.to_json(now)).await?;
    Ok(row)
}

pub async fn list_coupons(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> ServiceResult<Page<CouponRow>> {
    Ok(db::coupons::list(pool, ctx, page).await?)
}

pub async fn get_coupon(
    pool: &PgPool,
    ctx: &TenantContext,
    id: CouponId,
) -> ServiceResult<CouponRow> {
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    db::coupons::get(&mut conn, ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

/// Renames a coupon or replaces its metadata; its terms never change.
pub async fn update_coupon(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: CouponId,
    name: Option<&CustomerName>,
    metadata: Option<&Metadata>,
) -> ServiceResult<CouponRow> {
    let now = uow.now();
    let before = db::coupons::get(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let metadata = metadata.map(Metadata::to_json);
    tentative(uow).await?;
    let after = db::coupons::update(
        uow.conn(),
        ctx,
        id,
        name.map(CustomerName::as_str),
        metadata.as_ref(),
        now,
    )
    .await
    .map_err(ServiceError::not_found(WHAT))?;
    let same = (&after.name, &after.metadata) == (&before.name, &before.metadata);
    settle(uow, !same).await?;
    if same {
        return Ok(before);
    }
    events::record(uow, ctx.scope(), "coupon.updated", after.to_json(now)).await?;
    Ok(after)
}

/// Deletes a coupon: it can no longer be redeemed; discounts already given keep it.
pub async fn delete_coupon(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: CouponId,
) -> ServiceResult<CouponRow> {
    let now = uow.now();
    let row = db::coupons::delete(uow.conn(), ctx, id, now)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let mut data = row.to_json(now);
    if let Some(o) = data.as_object_mut() {
        o.insert("deleted".into(), serde_json::Value::Bool(true));
    }
    events::record(uow, ctx.scope(), "coupon.deleted", data).await?;
    Ok(row)
}
