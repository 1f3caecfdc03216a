//! Bundles: prices sold together at a discount.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    ids::{BundleId, PriceId, TenantId},
    tenancy::TenantContext,
};

#[derive(Debug, Clone, FromRow)]
pub struct BundleRow {
    pub id: BundleId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub name: String,
    pub description: String,
    pub discount_bps: i32,
    pub currency: String,
    pub interval: Option<String>,
    pub interval_count: Option<i32>,
    pub active: bool,
    pub featured: bool,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, tenant_id, livemode, name, description, discount_bps, currency, \
    interval, interval_count, active, featured, metadata, created_at, updated_at";

/// A member of a bundle: a price and how many of it.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct ItemRow {
    pub bundle_id: BundleId,
    pub price_id: PriceId,
    pub quantity: i32,
}

pub struct NewBundle<'a> {
    pub id: BundleId,
    pub name: &'a str,
    pub description: &'a str,
    pub discount_bps: i32,
    pub currency: &'a str,
    pub interval: Option<(&'a str, i32)>,
    pub featured: bool,
    pub metadata: &'a serde_json::Value,
    /// (price, quantity) in display order.
    pub items: &'a [(PriceId, i32)],
}

pub async fn create(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    b: NewBundle<'_>,
    now: DateTime<Utc>,
) -> Result<BundleRow, DbError> {
    let row = sqlx::query_as::<_, BundleRow>(sqlf!(
        "INSERT INTO bundles (id, tenant_id, livemode, name, description, discount_bps, currency, \
         interval, interval_count, featured, metadata, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING {COLUMNS}"
    ))
    .bind(b.id)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(b.name)
    .bind(b.description)
    .bind(b.discount_bps)
    .bind(b.currency)
    .bind(b.interval.map(|i| i.0))
    .bind(b.interval.map(|i| i.1))
    .bind(b.featured)
    .bind(b.metadata)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let prices: Vec<Uuid> = b.items.iter().map(|i| i.0.as_uuid()).collect();
    let quantities: Vec<i32> = b.items.iter().map(|i| i.1).collect();
    let positions: Vec<i32> = (0..b.items.len())
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX))
        .collect();
    sqlx::query(
        "INSERT INTO bundle_items (tenant_id, livemode, bundle_id, price_id, quantity, position) \
         SELECT $5, $6, $1, u.price_id, u.quantity, u.position \
         FROM unnest($2::uuid[], $3::int[], $4::int[]) AS u(price_id, quantity, position)",
    )
    .bind(b.id)
    .bind(&prices)
    .bind(&quantities)
    .bind(&positions)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .execute(&mut *conn)
    .await?;
    Ok(row)
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> Result<Page<BundleRow>, DbError> {
    let (cond, order) = page.sql(3);
    let rows = sqlx::query_as::<_, BundleRow>(sqlf!(
        "SELECT {COLUMNS} FROM bundles WHERE tenant_id = $1 AND livemode = $2 AND {cond} \
         ORDER BY {order} LIMIT $4"
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
    id: BundleId,
) -> Result<BundleRow, DbError> {
    sqlx::query_as::<_, BundleRow>(sqlf!(
        "SELECT {COLUMNS} FROM bundles WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// The members of bundles, in display order.
/// A bundle of the mode with its members, for a subscription made from it.
pub async fn with_items(
    conn: &mut PgConnection,
    scope: crate::tenancy::Scope,
    id: BundleId,
) -> Result<(BundleRow, Vec<ItemRow>), DbError> {
    let bundle = sqlx::query_as::<_, BundleRow>(sqlf!(
        "SELECT {COLUMNS} FROM bundles WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let items = sqlx::query_as::<_, ItemRow>(
        "SELECT bundle_id, price_id, quantity FROM bundle_items WHERE bundle_id = $1 \
         ORDER BY position",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    Ok((bundle, items))
}

pub async fn items(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    bundles: &[Uuid],
) -> Result<Vec<ItemRow>, DbError> {
    sqlx::query_as::<_, ItemRow>(
        "SELECT bundle_id, price_id, quantity FROM bundle_items \
         WHERE tenant_id = $1 AND livemode = $2 AND bundle_id = ANY($3) \
         ORDER BY bundle_id, position",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(bundles)
    .fetch_all(conn)
    .await
    .map_err(Into::into)
}

#[derive(Debug, Default)]
pub struct BundleChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub discount_bps: Option<i32>,
    pub active: Option<bool>,
    pub featured: Option<bool>,
    pub metadata: Option<&'a serde_json::Value>,
}

pub async fn update(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: BundleId,
    c: BundleChanges<'_>,
    now: DateTime<Utc>,
) -> Result<BundleRow, DbError> {
    sqlx::query_as::<_, BundleRow>(sqlf!(
        "UPDATE bundles SET name = COALESCE($4, name), description = COALESCE($5, description), \
         discount_bps = COALESCE($6, discount_bps), active = COALESCE($7, active), \
         featured = COALESCE($8, featured), metadata = COALESCE($9, metadata), updated_at = $10 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(c.name)
    .bind(c.description)
    .bind(c.discount_bps)
    .bind(c.active)
    .bind(c.featured)
    .bind(c.metadata)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}
