//! Plans (the seed's `TenantPlan`): a product marked `plan` with one recurring flat price (its
//! plan price), as Stripe's Plans became Prices. The plan's id is its product's id. Plans are
//! read through the `plans` view and written as their product and price, so one Stripe sync
//! path serves products and plans. Price, currency and interval never change.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::{
    DbError,
    catalog_sync::SyncStatus,
    pagination::{Page, PageRequest},
};
use crate::{
    domain::{
        interval::Interval,
        money::{Currency, Money},
    },
    ids::{PlanId, PriceId, TenantId},
    tenancy::TenantContext,
};

#[derive(Debug, Clone, FromRow)]
pub struct PlanRow {
    pub id: PlanId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub name: String,
    pub description: String,
    pub amount: i64,
    pub currency: String,
    pub interval: String,
    pub interval_count: i32,
    pub trial_days: i32,
    pub features: serde_json::Value,
    pub metadata: serde_json::Value,
    pub is_active: bool,
    pub is_visible: bool,
    pub duplicated_from: Option<PlanId>,
    /// The plan's recurring price.
    pub price_id: PriceId,
    pub stripe_product_id: Option<String>,
    pub stripe_price_id: Option<String>,
    /// The product's and the price's together: failed, else pending, else not synced.
    pub sync_status: SyncStatus,
    pub sync_error: Option<String>,
    /// The versions Stripe must show of the product and of the price.
    pub product_version: i32,
    pub price_version: i32,
    /// When both were last synced.
    pub synced_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Per-period limits on metrics, as `[{"metric": code, "limit": quantity}]`.
    pub usage_limits: serde_json::Value,
}

impl PlanRow {
    /// `$29.99/month`.
    pub fn price_display(&self) -> String {
        let currency = Currency::parse(&self.currency);
        let interval = Interval::from_stored(&self.interval, self.interval_count);
        match (currency, interval) {
            (Ok(c), Ok(i)) => Money::new(self.amount, c).display_per(i),
            _ => format!("{} {}/{}", self.amount, self.currency, self.interval),
        }
    }

    /// The plan as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "plan",
            "name": self.name,
            "description": self.description,
            "price_cents": self.amount,
            "currency": self.currency,
            "billing_interval": self.interval,
            "interval_count": self.interval_count,
            "price_display": self.price_display(),
            "trial_days": self.trial_days,
            "has_trial": self.trial_days > 0,
            "features": self.features,
            "usage_limits": self.usage_limits,
            "metadata": self.metadata,
            "is_active": self.is_active,
            "is_visible": self.is_visible,
            "duplicated_from": self.duplicated_from.map(|d| d.to_string()),
            "price_id": self.price_id.to_string(),
            "livemode": self.livemode,
            "stripe_product_id": self.stripe_product_id,
            "stripe_price_id": self.stripe_price_id,
            "sync_status": self.sync_status,
            "sync_error": self.sync_error,
            "synced_at": self.synced_at.map(super::api_time),
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }

    /// The tenant and mode the row belongs to.
    pub fn scope(&self) -> crate::tenancy::Scope {
        crate::tenancy::Scope {
            tenant_id: self.tenant_id,
            livemode: self.livemode,
        }
    }
}

pub(crate) const COLUMNS: &str = "id, tenant_id, livemode, name, description, amount, currency, \
    interval, interval_count, trial_days, features, metadata, is_active, is_visible, \
    duplicated_from, price_id, stripe_product_id, stripe_price_id, sync_status, sync_error, \
    product_version, price_version, synced_at, created_at, updated_at, usage_limits";

/// A plan to create.
#[derive(Debug)]
pub struct NewPlan<'a> {
    pub id: PlanId,
    pub price_id: PriceId,
    pub name: &'a str,
    pub description: &'a str,
    pub amount: i64,
    pub currency: &'a str,
    pub interval: &'a str,
    pub interval_count: i32,
    pub trial_days: i32,
    pub features: &'a serde_json::Value,
    pub metadata: &'a serde_json::Value,
    pub is_visible: bool,
    pub duplicated_from: Option<PlanId>,
    /// `[{"metric": code, "limit": quantity}]`, checked.
    pub usage_limits: &'a serde_json::Value,
    /// `pending` when Stripe will be told, `not_synced` when there is no Stripe to tell.
    pub sync_status: SyncStatus,
}

/// Inserts the product and its plan price in one statement, then reads the plan back.
pub async fn create(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    p: NewPlan<'_>,
    now: DateTime<Utc>,
) -> Result<PlanRow, DbError> {
    let model = serde_json::json!({ "type": "flat", "amount": p.amount });
    sqlx::query(
        "WITH product AS (INSERT INTO products (id, tenant_id, livemode, name, description, \
             features, metadata, plan, visible, duplicated_from, sync_status, created_at, \
             updated_at, usage_limits) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, TRUE, $8, $9, $10, $11, $11, $18) RETURNING id) \
         INSERT INTO prices (id, tenant_id, livemode, product_id, nickname, currency, interval, \
             interval_count, model, plan, trial_days, sync_status, created_at, updated_at) \
         SELECT $12, $2, $3, product.id, $4, $13, $14, $15, $16, TRUE, $17, $10, $11, $11 \
         FROM product",
    )
    .bind(p.id)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(p.name)
    .bind(p.description)
    .bind(p.features)
    .bind(p.metadata)
    .bind(p.is_visible)
    .bind(p.duplicated_from)
    .bind(p.sync_status)
    .bind(now)
    .bind(p.price_id)
    .bind(p.currency)
    .bind(p.interval)
    .bind(p.interval_count)
    .bind(&model)
    .bind(p.trial_days)
    .bind(p.usage_limits)
    .execute(&mut *conn)
    .await?;
    get(conn, ctx, p.id).await
}

/// List filters from the seed: active or not, billing interval, name search.
#[derive(Debug, Default)]
pub struct PlanFilter<'a> {
    pub is_active: Option<bool>,
    pub interval: Option<&'a str>,
    pub search: Option<&'a str>,
}

/// Plans of the caller's mode, newest first.
pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    filter: PlanFilter<'_>,
    page: PageRequest,
) -> Result<Page<PlanRow>, DbError> {
    let (cond, order) = page.sql(6);
    let search = filter.search.map(super::contains_pattern);
    let rows = sqlx::query_as::<_, PlanRow>(sqlf!(
        "SELECT {COLUMNS} FROM plans WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::bool IS NULL OR is_active = $3) AND ($4::text IS NULL OR interval = $4) \
         AND ($5::text IS NULL OR name ILIKE $5) AND {cond} ORDER BY {order} LIMIT $7"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(filter.is_active)
    .bind(filter.interval)
    .bind(search)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn get(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: PlanId,
) -> Result<PlanRow, DbError> {
    sqlx::query_as::<_, PlanRow>(sqlf!(
        "SELECT {COLUMNS} FROM plans WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Changes to a plan; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct PlanChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub features: Option<&'a serde_json::Value>,
    pub metadata: Option<&'a serde_json::Value>,
    pub is_visible: Option<bool>,
    pub is_active: Option<bool>,
    pub trial_days: Option<i32>,
    pub usage_limits: Option<&'a serde_json::Value>,
}

/// Applies changes to the product and the price. A change Stripe shows (the product's name,
/// description, metadata or active flag; the price's active flag) bumps that object's version.
pub async fn update(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: PlanId,
    c: PlanChanges<'_>,
    now: DateTime<Utc>,
) -> Result<PlanRow, DbError> {
    let found = sqlx::query(
        "UPDATE products SET name = COALESCE($4, name), description = COALESCE($5, description), \
         features = COALESCE($6, features), metadata = COALESCE($7, metadata), \
         visible = COALESCE($8, visible), active = COALESCE($9, active), \
         usage_limits = COALESCE($11, usage_limits), \
         sync_version = sync_version + CASE WHEN \
             ($4::text IS NOT NULL AND $4 <> name) OR ($5::text IS NOT NULL AND $5 <> description) \
             OR ($7::jsonb IS NOT NULL AND $7 <> metadata) \
             OR ($9::bool IS NOT NULL AND $9 <> active) THEN 1 ELSE 0 END, \
         updated_at = $10 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 AND plan",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(c.name)
    .bind(c.description)
    .bind(c.features)
    .bind(c.metadata)
    .bind(c.is_visible)
    .bind(c.is_active)
    .bind(now)
    .bind(c.usage_limits)
    .execute(&mut *conn)
    .await?;
    if found.rows_affected() == 0 {
        return Err(sqlx::Error::RowNotFound.into());
    }
    sqlx::query(
        "UPDATE prices SET active = COALESCE($4, active), \
         trial_days = COALESCE($5, trial_days), \
         sync_version = sync_version + CASE WHEN $4::bool IS NOT NULL AND $4 <> active \
             THEN 1 ELSE 0 END, \
         updated_at = $6 \
         WHERE tenant_id = $1 AND livemode = $2 AND product_id = $3 AND plan",
    )
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(c.is_active)
    .bind(c.trial_days)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    get(conn, ctx, id).await
}
