//! Coupons of a tenant, per mode. A deleted coupon keeps its row (`deleted_at`) and is
//! invisible to every read here.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    domain::coupon,
    ids::{CouponId, TenantId},
    tenancy::TenantContext,
};

#[derive(Debug, Clone, FromRow)]
pub struct CouponRow {
    pub id: CouponId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub name: String,
    pub percent_off_bps: Option<i32>,
    pub amount_off: Option<i64>,
    pub currency: Option<String>,
    pub duration: String,
    pub duration_in_months: Option<i32>,
    pub max_redemptions: Option<i32>,
    pub redeem_by: Option<DateTime<Utc>>,
    pub times_redeemed: i32,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl CouponRow {
    /// Whether it can be redeemed at `now`.
    pub fn valid(&self, now: DateTime<Utc>) -> bool {
        coupon::redeemable(
            now,
            self.redeem_by,
            self.max_redemptions,
            self.times_redeemed,
        )
        .is_ok()
    }

    /// The coupon as the API shows it at `now` (and as its events carry it).
    pub fn to_json(&self, now: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "coupon",
            "name": self.name,
            "percent_off_bps": self.percent_off_bps,
            "amount_off": self.amount_off,
            "currency": self.currency,
            "duration": self.duration,
            "duration_in_months": self.duration_in_months,
            "max_redemptions": self.max_redemptions,
            "redeem_by": self.redeem_by.map(super::api_time),
            "times_redeemed": self.times_redeemed,
            "valid": self.valid(now),
            "metadata": self.metadata,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, name, percent_off_bps, amount_off, currency, \
    duration, duration_in_months, max_redemptions, redeem_by, times_redeemed, metadata, \
    created_at, updated_at";

/// A coupon to create.
#[derive(Debug)]
pub struct NewCoupon<'a> {
    pub id: CouponId,
    pub name: &'a str,
    pub percent_off_bps: Option<i32>,
    pub amount_off: Option<i64>,
    pub currency: Option<&'a str>,
    pub duration: &'a str,
    pub duration_in_months: Option<i32>,
    pub max_redemptions: Option<i32>,
    pub redeem_by: Option<DateTime<Utc>>,
    pub metadata: &'a serde_json::Value,
}

pub async fn create(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    c: NewCoupon<'_>,
    now: DateTime<Utc>,
) -> Result<CouponRow, DbError> {
    sqlx::query_as::<_, CouponRow>(sqlf!(
        "INSERT INTO coupons (id, tenant_id, livemode, name, percent_off_bps, amount_off, \
         currency, duration, duration_in_months, max_redemptions, redeem_by, metadata, \
         created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
         RETURNING {COLUMNS}"
    ))
    .bind(c.id)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(c.name)
    .bind(c.percent_off_bps)
    .bind(c.amount_off)
    .bind(c.currency)
    .bind(c.duration)
    .bind(c.duration_in_months)
    .bind(c.max_redemptions)
    .bind(c.redeem_by)
    .bind(c.metadata)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Coupons of the caller's mode, newest first.
pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> Result<Page<CouponRow>, DbError> {
    let (cond, order) = page.sql(3);
    let rows = sqlx::query_as::<_, CouponRow>(sqlf!(
        "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND livemode = $2 \
         AND deleted_at IS NULL AND {cond} ORDER BY {order} LIMIT $4"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn get(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: CouponId,
) -> Result<CouponRow, DbError> {
    sqlx::query_as::<_, CouponRow>(sqlf!(
        "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         AND deleted_at IS NULL"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Changes the name and metadata, the only things that change; `None` leaves one as it is.
pub async fn update(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: CouponId,
    name: Option<&str>,
    metadata: Option<&serde_json::Value>,
    now: DateTime<Utc>,
) -> Result<CouponRow, DbError> {
    sqlx::query_as::<_, CouponRow>(sqlf!(
        "UPDATE coupons SET name = COALESCE($4, name), metadata = COALESCE($5, metadata), \
         updated_at = $6 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 AND deleted_at IS NULL \
         RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(name)
    .bind(metadata)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Marks the coupon deleted; returns it as it was.
pub async fn delete(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: CouponId,
    now: DateTime<Utc>,
) -> Result<CouponRow, DbError> {
    sqlx::query_as::<_, CouponRow>(sqlf!(
        "UPDATE coupons SET deleted_at = $4, updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 AND deleted_at IS NULL \
         RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// A coupon, deleted or not (a discount already given keeps its coupon).
pub async fn get_any(
    conn: &mut PgConnection,
    scope: crate::tenancy::Scope,
    id: CouponId,
) -> Result<CouponRow, DbError> {
    sqlx::query_as::<_, CouponRow>(sqlf!(
        "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// A coupon that can still be redeemed, locked until the transaction ends (redemptions take
/// turns, so a limit is never exceeded).
pub async fn lock(
    conn: &mut PgConnection,
    scope: crate::tenancy::Scope,
    id: CouponId,
) -> Result<CouponRow, DbError> {
    sqlx::query_as::<_, CouponRow>(sqlf!(
        "SELECT {COLUMNS} FROM coupons WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         AND deleted_at IS NULL FOR UPDATE"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Counts one redemption of a locked coupon.
pub async fn redeem(
    conn: &mut PgConnection,
    scope: crate::tenancy::Scope,
    id: CouponId,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE coupons SET times_redeemed = times_redeemed + 1, updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives back one redemption (a deleted draft's: it never discounted anything).
pub async fn unredeem(
    conn: &mut PgConnection,
    scope: crate::tenancy::Scope,
    id: CouponId,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE coupons SET times_redeemed = GREATEST(times_redeemed - 1, 0), updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

impl CouponRow {
    /// Its discount and duration, as stored.
    pub fn terms(
        &self,
    ) -> Option<(
        crate::domain::coupon::Discount,
        crate::domain::coupon::Duration,
    )> {
        use crate::domain::{
            coupon::{Discount, Duration},
            money::Currency,
        };
        let discount = match (
            self.percent_off_bps,
            self.amount_off,
            self.currency.as_deref(),
        ) {
            (Some(bps), None, None) => Discount::Percent(u32::try_from(bps).ok()?),
            (None, Some(amount), Some(c)) => Discount::Amount {
                amount,
                currency: Currency::parse(c).ok()?,
            },
            _ => return None,
        };
        let months = self.duration_in_months.and_then(|m| u32::try_from(m).ok());
        let duration = Duration::parse(&self.duration, months).ok()?;
        Some((discount, duration))
    }
}
