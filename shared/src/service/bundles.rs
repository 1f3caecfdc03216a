//! Bundles: prices of several products sold together at a discount. The savings are computed
//! from the members' prices with the one rounding rule of `domain::money` (half away from
//! zero).

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use super::{ServiceError, ServiceResult, events, settle, tentative};
use crate::{
    db::{
        self, DbError,
        bundles::{BundleChanges, ItemRow, NewBundle},
        pagination::{Page, PageRequest},
        products::PriceRow,
    },
    domain::{
        bundle::{self, BundleTotalsError},
        catalog::{Description, Metadata, Name},
        interval::Interval,
        money::{Currency, Money},
        pricing::PriceModel,
    },
    ids::{BundleId, PriceId},
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::bundles::BundleRow;

const WHAT: &str = "bundle";

/// Members a bundle lists.
const MEMBERS: std::ops::RangeInclusive<usize> = 2..=20;
/// Units of one member.
const QUANTITY: std::ops::RangeInclusive<u32> = 1..=10_000;

fn bundle_error(e: DbError) -> ServiceError {
    ServiceError::taken(
        "bundles_name_key",
        "bundle_name_taken",
        "name",
        "A bundle with this name already exists.",
        WHAT,
    )(e)
}

/// A member of a bundle, priced for its quantity.
#[derive(Debug, Clone)]
pub struct PricedItem {
    pub price: PriceRow,
    pub quantity: i32,
    /// What the member costs on its own for its quantity, in minor units.
    pub amount: i64,
}

/// A bundle with its members priced and the discount applied.
#[derive(Debug, Clone)]
pub struct PricedBundle {
    pub row: BundleRow,
    pub items: Vec<PricedItem>,
    /// The members bought separately.
    pub list_amount: i64,
    /// The list amount less the discount.
    pub amount: i64,
    /// `list_amount - amount`.
    pub savings: i64,
    /// `$135.00/month`.
    pub price_display: String,
    pub savings_display: String,
}

impl PricedBundle {
    /// The bundle as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> Value {
        let b = &self.row;
        let items: Vec<Value> = self
            .items
            .iter()
            .map(|i| {
                json!({
                    "price_id": i.price.id.to_string(),
                    "product_id": i.price.product_id.to_string(),
                    "nickname": i.price.nickname,
                    "quantity": i.quantity,
                    "amount": i.amount,
                    "price_display": i.price.price_display(),
                })
            })
            .collect();
        json!({
            "id": b.id.to_string(),
            "object": "bundle",
            "name": b.name,
            "description": b.description,
            "currency": b.currency,
            "interval": b.interval,
            "interval_count": b.interval_count,
            "discount_bps": b.discount_bps,
            "list_amount": self.list_amount,
            "amount": self.amount,
            "savings": self.savings,
            "price_display": self.price_display,
            "savings_display": self.savings_display,
            "items": items,
            "active": b.active,
            "featured": b.featured,
            "metadata": b.metadata,
            "livemode": b.livemode,
            "created_at": db::api_time(b.created_at),
            "updated_at": db::api_time(b.updated_at),
        })
    }
}

/// What a member costs for a quantity.
fn member_amount(p: &PriceRow, quantity: i32) -> ServiceResult<i64> {
    let model: PriceModel =
        serde_json::from_value(p.model.clone()).map_err(ServiceError::internal)?;
    model
        .amount_for(u64::try_from(quantity).unwrap_or(1))
        .map_err(|e| ServiceError::invalid("items", format!("cannot be priced: {e}")))
}

/// Prices the members and applies the discount.
fn price(
    row: BundleRow,
    items: &[ItemRow],
    prices: &HashMap<PriceId, PriceRow>,
) -> ServiceResult<PricedBundle> {
    let mut priced = Vec::with_capacity(items.len());
    for item in items {
        let Some(p) = prices.get(&item.price_id) else {
            continue;
        };
        priced.push(PricedItem {
            price: p.clone(),
            quantity: item.quantity,
            amount: member_amount(p, item.quantity)?,
        });
    }
    let members: Vec<i64> = priced.iter().map(|i| i.amount).collect();
    let totals = bundle::totals(&members, u32::try_from(row.discount_bps).unwrap_or(0)).map_err(
        |e| match e {
            BundleTotalsError::TotalTooLarge => ServiceError::invalid("items", e.to_string()),
            BundleTotalsError::DiscountOverflows => {
                ServiceError::invalid("discount_bps", e.to_string())
            }
        },
    )?;
    let currency = Currency::parse(&row.currency).map_err(ServiceError::internal)?;
    let interval = row
        .interval
        .as_deref()
        .and_then(|unit| Interval::from_stored(unit, row.interval_count.unwrap_or(1)).ok());
    let show = |v: i64| match interval {
        Some(i) => Money::new(v, currency).display_per(i),
        None => Money::new(v, currency).display(),
    };
    Ok(PricedBundle {
        price_display: show(totals.amount),
        savings_display: show(totals.savings),
        row,
        items: priced,
        list_amount: totals.list,
        amount: totals.amount,
        savings: totals.savings,
    })
}

/// Loads bundles' members and prices, and prices them.
async fn load(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    bundles: Vec<BundleRow>,
) -> ServiceResult<Vec<PricedBundle>> {
    let ids: Vec<uuid::Uuid> = bundles.iter().map(|b| b.id.as_uuid()).collect();
    let items = db::bundles::items(conn, ctx, &ids).await?;
    let price_ids: Vec<uuid::Uuid> = items.iter().map(|i| i.price_id.as_uuid()).collect();
    let prices: HashMap<PriceId, PriceRow> = db::products::get_prices(conn, ctx, &price_ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    bundles
        .into_iter()
        .map(|b| {
            let mine: Vec<ItemRow> = items
                .iter()
                .filter(|i| i.bundle_id == b.id)
                .copied()
                .collect();
            price(b, &mine, &prices)
        })
        .collect()
}

async fn load_one(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    row: BundleRow,
) -> ServiceResult<PricedBundle> {
    load(conn, ctx, vec![row])
        .await?
        .pop()
        .ok_or(ServiceError::NotFound(WHAT))
}

fn discount(bps: u32) -> ServiceResult<i32> {
    if bps > 10_000 {
        return Err(ServiceError::invalid(
            "discount_bps",
            "must be at most 10000 (100 %)",
        ));
    }
    Ok(i32::try_from(bps).unwrap_or(10_000))
}

/// A bundle to create.
#[derive(Debug)]
pub struct BundleSpec<'a> {
    pub name: &'a Name,
    pub description: &'a Description,
    /// Discount on the members' list price in basis points (1000 = 10 %).
    pub discount_bps: u32,
    /// (price, quantity) in display order.
    pub items: &'a [(PriceId, u32)],
    pub featured: bool,
    pub metadata: &'a Metadata,
}

/// Creates a bundle of 2 to 20 of the caller's prices, each once, of one currency and
/// recurrence, none archived or metered.
pub async fn create(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    spec: BundleSpec<'_>,
) -> ServiceResult<PricedBundle> {
    let discount_bps = discount(spec.discount_bps)?;
    if !MEMBERS.contains(&spec.items.len()) {
        return Err(ServiceError::invalid("items", "must list 2 to 20 prices"));
    }
    let mut items: Vec<(PriceId, i32)> = Vec::with_capacity(spec.items.len());
    for (i, (id, quantity)) in spec.items.iter().enumerate() {
        if items.iter().any(|(p, _)| p == id) {
            return Err(ServiceError::invalid(
                format!("items[{i}].price_id"),
                "appears twice",
            ));
        }
        if !QUANTITY.contains(quantity) {
            return Err(ServiceError::invalid(
                format!("items[{i}].quantity"),
                "must be between 1 and 10000",
            ));
        }
        items.push((*id, i32::try_from(*quantity).unwrap_or(1)));
    }
    let now = uow.now();
    let ids: Vec<uuid::Uuid> = items.iter().map(|(p, _)| p.as_uuid()).collect();
    let prices: HashMap<PriceId, PriceRow> = db::products::get_prices(uow.conn(), ctx, &ids)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect();
    let mut first: Option<&PriceRow> = None;
    for (i, (id, _)) in items.iter().enumerate() {
        let field = format!("items[{i}].price_id");
        // Another tenant's price is as unknown as a missing one.
        let p = prices
            .get(id)
            .ok_or_else(|| ServiceError::invalid(&field, "no such price"))?;
        if !p.active {
            return Err(ServiceError::invalid(&field, "is archived"));
        }
        if p.usage.is_some() {
            return Err(ServiceError::invalid(
                &field,
                "is metered: a bundle is priced up front",
            ));
        }
        match first {
            None => first = Some(p),
            Some(f) if f.currency != p.currency => {
                return Err(ServiceError::invalid(&field, "has another currency"));
            }
            Some(f)
                if f.recurrence().map(|i| i.to_stripe())
                    != p.recurrence().map(|i| i.to_stripe()) =>
            {
                return Err(ServiceError::invalid(&field, "recurs differently"));
            }
            Some(_) => {}
        }
    }
    let Some(first) = first else {
        return Err(ServiceError::invalid("items", "must list 2 to 20 prices"));
    };
    let row = db::bundles::create(
        uow.conn(),
        ctx,
        NewBundle {
            id: BundleId::new(),
            name: spec.name.as_str(),
            description: spec.description.as_str(),
            discount_bps,
            currency: &first.currency,
            interval: first
                .interval
                .as_deref()
                .map(|i| (i, first.interval_count.unwrap_or(1))),
            featured: spec.featured,
            metadata: &spec.metadata.to_json(),
            items: &items,
        },
        now,
    )
    .await
    .map_err(bundle_error)?;
    let item_rows: Vec<ItemRow> = items
        .iter()
        .map(|(price_id, quantity)| ItemRow {
            bundle_id: row.id,
            price_id: *price_id,
            quantity: *quantity,
        })
        .collect();
    let bundle = price(row, &item_rows, &prices)?;
    events::record(uow, ctx.scope(), "bundle.created", bundle.to_json()).await?;
    Ok(bundle)
}

pub async fn list(
    pool: &PgPool,
    ctx: &TenantContext,
    page: PageRequest,
) -> ServiceResult<Page<PricedBundle>> {
    let page = db::bundles::list(pool, ctx, page).await?;
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    Ok(Page {
        items: load(&mut conn, ctx, page.items).await?,
        has_more: page.has_more,
    })
}

pub async fn get(pool: &PgPool, ctx: &TenantContext, id: BundleId) -> ServiceResult<PricedBundle> {
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    let row = db::bundles::get(&mut conn, ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    load_one(&mut conn, ctx, row).await
}

/// Changes to a bundle (`None`: unchanged); its members never change.
#[derive(Debug, Default)]
pub struct BundleUpdate<'a> {
    pub name: Option<&'a Name>,
    pub description: Option<&'a Description>,
    pub discount_bps: Option<u32>,
    pub active: Option<bool>,
    pub featured: Option<bool>,
    pub metadata: Option<&'a Metadata>,
}

/// Applies changes; a change that changes nothing writes nothing and records nothing.
pub async fn update(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: BundleId,
    changes: BundleUpdate<'_>,
) -> ServiceResult<PricedBundle> {
    let discount_bps = changes.discount_bps.map(discount).transpose()?;
    let metadata = changes.metadata.map(Metadata::to_json);
    let now = uow.now();
    let before = db::bundles::get(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    tentative(uow).await?;
    let after = db::bundles::update(
        uow.conn(),
        ctx,
        id,
        BundleChanges {
            name: changes.name.map(Name::as_str),
            description: changes.description.map(Description::as_str),
            discount_bps,
            active: changes.active,
            featured: changes.featured,
            metadata: metadata.as_ref(),
        },
        now,
    )
    .await
    .map_err(bundle_error)?;
    let fields = |b: &BundleRow| {
        (
            b.name.clone(),
            b.description.clone(),
            b.discount_bps,
            b.active,
            b.featured,
            b.metadata.clone(),
        )
    };
    let same = fields(&after) == fields(&before);
    settle(uow, !same).await?;
    if same {
        return load_one(uow.conn(), ctx, before).await;
    }
    let bundle = load_one(uow.conn(), ctx, after).await?;
    events::record(uow, ctx.scope(), "bundle.updated", bundle.to_json()).await?;
    Ok(bundle)
}

pub async fn deactivate(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    id: BundleId,
) -> ServiceResult<PricedBundle> {
    let changes = BundleUpdate {
        active: Some(false),
        ..Default::default()
    };
    update(uow, ctx, id, changes).await
}
