//! Products of a tenant's catalog and their prices (a product's plans or tiers).

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
        pricing::{PriceModel, PriceModelIn},
    },
    ids::{PriceId, ProductId, TenantId},
    tenancy::TenantContext,
};

#[derive(Debug, Clone, FromRow)]
pub struct ProductRow {
    pub id: ProductId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub name: String,
    pub code: Option<String>,
    pub description: String,
    pub features: serde_json::Value,
    pub metadata: serde_json::Value,
    pub active: bool,
    /// A seed plan's product (its plan price is the plan's price).
    pub plan: bool,
    pub stripe_product_id: Option<String>,
    pub sync_status: SyncStatus,
    pub sync_error: Option<String>,
    pub sync_version: i32,
    pub synced_version: i32,
    pub synced_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProductRow {
    /// The product as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "product",
            "name": self.name,
            "code": self.code,
            "description": self.description,
            "features": self.features,
            "metadata": self.metadata,
            "active": self.active,
            "livemode": self.livemode,
            "stripe_product_id": self.stripe_product_id,
            "sync_status": self.sync_status,
            "sync_error": self.sync_error,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
            "prices": null,
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

pub(crate) const PRODUCT_COLUMNS: &str = "id, tenant_id, livemode, name, code, description, features, \
    metadata, active, plan, stripe_product_id, sync_status, sync_error, sync_version, synced_version, \
    synced_at, created_at, updated_at";

pub struct NewProduct<'a> {
    pub id: ProductId,
    pub name: &'a str,
    pub code: Option<&'a str>,
    pub description: &'a str,
    pub features: &'a serde_json::Value,
    pub metadata: &'a serde_json::Value,
    pub sync_status: SyncStatus,
}

pub async fn create(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    p: NewProduct<'_>,
    now: DateTime<Utc>,
) -> Result<ProductRow, DbError> {
    sqlx::query_as::<_, ProductRow>(sqlf!(
        "INSERT INTO products (id, tenant_id, livemode, name, code, description, features, \
         metadata, sync_status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(p.id)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(p.name)
    .bind(p.code)
    .bind(p.description)
    .bind(p.features)
    .bind(p.metadata)
    .bind(p.sync_status)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    active: Option<bool>,
    page: PageRequest,
) -> Result<Page<ProductRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, ProductRow>(sqlf!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::bool IS NULL OR active = $3) AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(active)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn get(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: ProductId,
) -> Result<ProductRow, DbError> {
    sqlx::query_as::<_, ProductRow>(sqlf!(
        "SELECT {PRODUCT_COLUMNS} FROM products WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

#[derive(Debug, Default)]
pub struct ProductChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub features: Option<&'a serde_json::Value>,
    pub metadata: Option<&'a serde_json::Value>,
    pub active: Option<bool>,
}

/// Applies changes, bumping `sync_version` when Stripe shows what changed.
pub async fn update(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: ProductId,
    c: ProductChanges<'_>,
    now: DateTime<Utc>,
) -> Result<ProductRow, DbError> {
    sqlx::query_as::<_, ProductRow>(sqlf!(
        "UPDATE products SET name = COALESCE($4, name), description = COALESCE($5, description), \
         features = COALESCE($6, features), metadata = COALESCE($7, metadata), \
         active = COALESCE($8, active), \
         sync_version = sync_version + CASE WHEN \
             ($4::text IS NOT NULL AND $4 <> name) OR ($5::text IS NOT NULL AND $5 <> description) \
             OR ($7::jsonb IS NOT NULL AND $7 <> metadata) \
             OR ($8::bool IS NOT NULL AND $8 <> active) THEN 1 ELSE 0 END, \
         updated_at = $9 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 RETURNING {PRODUCT_COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(c.name)
    .bind(c.description)
    .bind(c.features)
    .bind(c.metadata)
    .bind(c.active)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

#[derive(Debug, Clone, FromRow)]
pub struct PriceRow {
    pub id: PriceId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub product_id: ProductId,
    pub nickname: String,
    pub currency: String,
    pub interval: Option<String>,
    pub interval_count: Option<i32>,
    pub model: serde_json::Value,
    pub usage: Option<serde_json::Value>,
    pub active: bool,
    pub metadata: serde_json::Value,
    /// A seed plan's price.
    pub plan: bool,
    pub stripe_price_id: Option<String>,
    pub sync_status: SyncStatus,
    pub sync_error: Option<String>,
    pub sync_version: i32,
    pub synced_version: i32,
    pub synced_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl PriceRow {
    /// How often the price recurs; `None` for a one-time price.
    pub fn recurrence(&self) -> Option<Interval> {
        Interval::from_stored(self.interval.as_deref()?, self.interval_count.unwrap_or(1)).ok()
    }

    /// `$29.99/month` (or `$29.99` one-time) for flat and per-unit prices; `None` for tiered or
    /// metered ones.
    pub fn price_display(&self) -> Option<String> {
        if self.usage.is_some() {
            return None;
        }
        let model: PriceModel = serde_json::from_value(self.model.clone()).ok()?;
        let amount = match model.terms() {
            PriceModelIn::Flat { amount } => *amount,
            PriceModelIn::PerUnit { unit_amount } => *unit_amount,
            _ => return None,
        };
        let money = Money::new(amount, Currency::parse(&self.currency).ok()?);
        Some(match self.recurrence() {
            Some(i) => money.display_per(i),
            None => money.display(),
        })
    }

    /// The price as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "price",
            "product_id": self.product_id.to_string(),
            "nickname": self.nickname,
            "currency": self.currency,
            "interval": self.interval,
            "interval_count": self.interval_count,
            "pricing": self.model,
            "usage": self.usage,
            "price_display": self.price_display(),
            "active": self.active,
            "metadata": self.metadata,
            "livemode": self.livemode,
            "stripe_price_id": self.stripe_price_id,
            "sync_status": self.sync_status,
            "sync_error": self.sync_error,
            "created_at": super::api_time(self.created_at),
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

pub(crate) const PRICE_COLUMNS: &str = "id, tenant_id, livemode, product_id, nickname, currency, interval, \
    interval_count, model, usage, active, metadata, plan, stripe_price_id, sync_status, sync_error, \
    sync_version, synced_version, synced_at, created_at, updated_at";

pub struct NewPrice<'a> {
    pub id: PriceId,
    pub product_id: ProductId,
    pub nickname: &'a str,
    pub currency: &'a str,
    pub interval: Option<(&'a str, i32)>,
    pub model: &'a serde_json::Value,
    pub usage: Option<&'a serde_json::Value>,
    pub metadata: &'a serde_json::Value,
    pub sync_status: SyncStatus,
}

pub async fn create_price(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    p: NewPrice<'_>,
    now: DateTime<Utc>,
) -> Result<PriceRow, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "INSERT INTO prices (id, tenant_id, livemode, product_id, nickname, currency, interval, \
         interval_count, model, usage, metadata, sync_status, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
         RETURNING {PRICE_COLUMNS}"
    ))
    .bind(p.id)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(p.product_id)
    .bind(p.nickname)
    .bind(p.currency)
    .bind(p.interval.map(|i| i.0))
    .bind(p.interval.map(|i| i.1))
    .bind(p.model)
    .bind(p.usage)
    .bind(p.metadata)
    .bind(p.sync_status)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// A product's prices (all of them, newest first; a product has a handful).
pub async fn prices_of(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    product_id: ProductId,
) -> Result<Vec<PriceRow>, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "SELECT {PRICE_COLUMNS} FROM prices WHERE tenant_id = $1 AND livemode = $2 \
         AND product_id = $3 ORDER BY id DESC LIMIT 100"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(product_id)
    .fetch_all(conn)
    .await
    .map_err(Into::into)
}

pub async fn get_price(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: PriceId,
) -> Result<PriceRow, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "SELECT {PRICE_COLUMNS} FROM prices WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Several prices by id (those of another tenant or mode are left out).
pub async fn get_prices(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    ids: &[uuid::Uuid],
) -> Result<Vec<PriceRow>, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "SELECT {PRICE_COLUMNS} FROM prices WHERE tenant_id = $1 AND livemode = $2 \
         AND id = ANY($3)"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(ids)
    .fetch_all(conn)
    .await
    .map_err(Into::into)
}

#[derive(Debug, Default)]
pub struct PriceChanges<'a> {
    pub nickname: Option<&'a str>,
    pub active: Option<bool>,
    pub metadata: Option<&'a serde_json::Value>,
}

pub async fn update_price(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    id: PriceId,
    c: PriceChanges<'_>,
    now: DateTime<Utc>,
) -> Result<PriceRow, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "UPDATE prices SET nickname = COALESCE($4, nickname), active = COALESCE($5, active), \
         metadata = COALESCE($6, metadata), \
         sync_version = sync_version + CASE WHEN \
             ($4::text IS NOT NULL AND $4 <> nickname) OR ($5::bool IS NOT NULL AND $5 <> active) \
             OR ($6::jsonb IS NOT NULL AND $6 <> metadata) THEN 1 ELSE 0 END, \
         updated_at = $7 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 RETURNING {PRICE_COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(id)
    .bind(c.nickname)
    .bind(c.active)
    .bind(c.metadata)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}
