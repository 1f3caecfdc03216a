//! Bundles (`/api/v1/bundles`): prices of several products sold together at a discount. The
//! savings are computed from the members' prices with the one rounding rule of
//! `shared::domain::money` (half away from zero).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    db::{
        self, DbError,
        bundles::{BundleChanges, BundleRow, ItemRow, NewBundle},
        products::PriceRow,
    },
    domain::{
        catalog::{Description, Name},
        money::{Currency, Money, basis_points},
        pricing::PriceModel,
    },
    ids::{BundleId, PriceId},
    tenancy::{Permission, TenantContext},
};

use super::{
    ApiTags,
    dto::{metadata, page_request, record_event},
    products::{price_display, stored_interval},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct BundlesApi;

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BundleItemIn {
    /// A price (`price_…`) of one of your products.
    pub price_id: String,
    /// Units of it in the bundle; default 1.
    #[oai(nullable)]
    pub quantity: Option<u32>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BundleIn {
    pub name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// Discount on the members' list price in basis points (1000 = 10 %).
    pub discount_bps: u32,
    /// 2 to 20 prices of the same currency and recurrence, none metered, each once.
    pub items: Vec<BundleItemIn>,
    #[oai(nullable)]
    pub featured: Option<bool>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BundlePatch {
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    #[oai(nullable)]
    pub discount_bps: Option<u32>,
    #[oai(nullable)]
    pub active: Option<bool>,
    #[oai(nullable)]
    pub featured: Option<bool>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// A member of a bundle, priced.
#[derive(Debug, Object)]
pub struct BundleItemOut {
    pub price_id: String,
    pub product_id: String,
    pub nickname: String,
    pub quantity: i32,
    /// What this member costs on its own for its quantity, in minor units.
    pub amount: i64,
    #[oai(nullable)]
    pub price_display: Option<String>,
}

/// A bundle with its computed savings.
#[derive(Debug, Object)]
pub struct BundleOut {
    /// Bundle id (`bundle_…`).
    pub id: String,
    /// Always `bundle`.
    pub object: String,
    pub name: String,
    pub description: String,
    pub currency: String,
    #[oai(nullable)]
    pub interval: Option<String>,
    #[oai(nullable)]
    pub interval_count: Option<i32>,
    pub discount_bps: i32,
    /// The members bought separately, in minor units.
    pub list_amount: i64,
    /// The bundle's price: the list amount less the discount.
    pub amount: i64,
    /// `list_amount - amount`.
    pub savings: i64,
    /// e.g. `$135.00/month`.
    pub price_display: String,
    /// e.g. `$29.00/month`.
    pub savings_display: String,
    pub items: Vec<BundleItemOut>,
    pub active: bool,
    pub featured: bool,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Object)]
pub struct BundleList {
    pub data: Vec<BundleOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedBundle {
    /// The bundle was created.
    #[oai(status = 201)]
    Created(Json<BundleOut>),
}

fn bundle_id(raw: &str) -> Result<BundleId, ApiError> {
    BundleId::parse(raw).map_err(|_| ApiError::not_found("bundle"))
}

fn db_err(e: DbError) -> ApiError {
    match e {
        DbError::UniqueViolation(c) if c == "bundles_name_key" => ApiError {
            field: Some("name".into()),
            ..ApiError::conflict(
                "bundle_name_taken",
                "A bundle with this name already exists.",
            )
        },
        other => ApiError::from_db("bundle")(other),
    }
}

fn begin_err(e: sqlx::Error) -> ApiError {
    ApiError::unavailable("database", e)
}

fn discount(bps: u32) -> Result<i32, ApiError> {
    if bps > 10_000 {
        return Err(ApiError::validation(
            "discount_bps",
            "must be at most 10000 (100 %)",
        ));
    }
    Ok(i32::try_from(bps).unwrap_or(10_000))
}

/// What a member costs for a quantity.
fn member_amount(p: &PriceRow, quantity: i32) -> Result<i64, ApiError> {
    let model: PriceModel = serde_json::from_value(p.model.clone()).map_err(ApiError::internal)?;
    model
        .amount_for(u64::try_from(quantity).unwrap_or(1))
        .map_err(|e| ApiError::validation("items", format!("cannot be priced: {e}")))
}

/// Builds the output: the members priced, the discount applied.
fn render(
    b: BundleRow,
    items: &[ItemRow],
    prices: &HashMap<PriceId, PriceRow>,
) -> Result<BundleOut, ApiError> {
    let mut out_items = Vec::with_capacity(items.len());
    let mut list: i64 = 0;
    for item in items {
        let Some(p) = prices.get(&item.price_id) else {
            continue;
        };
        let amount = member_amount(p, item.quantity)?;
        list = list
            .checked_add(amount)
            .ok_or_else(|| ApiError::validation("items", "the total is too large"))?;
        out_items.push(BundleItemOut {
            price_id: p.id.to_string(),
            product_id: p.product_id.to_string(),
            nickname: p.nickname.clone(),
            quantity: item.quantity,
            amount,
            price_display: price_display(p),
        });
    }
    let off = basis_points(list, u32::try_from(b.discount_bps).unwrap_or(0))
        .ok_or_else(|| ApiError::validation("discount_bps", "overflows the total"))?;
    let amount = list - off;
    let currency = Currency::parse(&b.currency).map_err(ApiError::internal)?;
    let interval = stored_interval(b.interval.as_deref(), b.interval_count);
    let show = |v: i64| match interval {
        Some(i) => Money::new(v, currency).display_per(i),
        None => Money::new(v, currency).display(),
    };
    Ok(BundleOut {
        id: b.id.to_string(),
        object: "bundle".into(),
        price_display: show(amount),
        savings_display: show(off),
        name: b.name,
        description: b.description,
        currency: b.currency,
        interval: b.interval,
        interval_count: b.interval_count,
        discount_bps: b.discount_bps,
        list_amount: list,
        amount,
        savings: off,
        items: out_items,
        active: b.active,
        featured: b.featured,
        metadata: b.metadata,
        livemode: b.livemode,
        created_at: b.created_at,
        updated_at: b.updated_at,
    })
}

/// Loads bundles' members and prices and renders them.
async fn load(
    conn: &mut sqlx::PgConnection,
    ctx: &TenantContext,
    bundles: Vec<BundleRow>,
) -> Result<Vec<BundleOut>, ApiError> {
    let ids: Vec<uuid::Uuid> = bundles.iter().map(|b| b.id.as_uuid()).collect();
    let items = db::bundles::items(conn, ctx, &ids).await.map_err(db_err)?;
    let price_ids: Vec<uuid::Uuid> = items.iter().map(|i| i.price_id.as_uuid()).collect();
    let prices: HashMap<PriceId, PriceRow> = db::products::get_prices(conn, ctx, &price_ids)
        .await
        .map_err(db_err)?
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
            render(b, &mine, &prices)
        })
        .collect()
}

#[OpenApi]
impl BundlesApi {
    /// Create a bundle
    ///
    /// Members must share a currency and recurrence and be priced up front (not metered).
    #[oai(
        path = "/api/v1/bundles",
        method = "post",
        operation_id = "bundles.create",
        tag = "ApiTags::Catalog"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<BundleIn>,
    ) -> Result<CreatedBundle, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let name = Name::parse(&b.name).map_err(ApiError::invalid("name"))?;
        let description = Description::parse(b.description.as_deref().unwrap_or(""))
            .map_err(ApiError::invalid("description"))?;
        let discount_bps = discount(b.discount_bps)?;
        if !(2..=20).contains(&b.items.len()) {
            return Err(ApiError::validation("items", "must list 2 to 20 prices"));
        }
        let mut items: Vec<(PriceId, i32)> = Vec::with_capacity(b.items.len());
        for (i, item) in b.items.iter().enumerate() {
            let field = format!("items[{i}].price_id");
            let id = PriceId::parse(&item.price_id)
                .map_err(|e| ApiError::validation(&field, e.to_string()))?;
            if items.iter().any(|(p, _)| *p == id) {
                return Err(ApiError::validation(&field, "appears twice"));
            }
            let quantity = item.quantity.unwrap_or(1);
            if quantity == 0 || quantity > 10_000 {
                return Err(ApiError::validation(
                    format!("items[{i}].quantity"),
                    "must be between 1 and 10000",
                ));
            }
            items.push((id, i32::try_from(quantity).unwrap_or(1)));
        }
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_else(|| serde_json::json!({}));
        let mut work = Work::begin(req).await?;
        let now = work.now();
        let tx = work.conn();
        let ids: Vec<uuid::Uuid> = items.iter().map(|(p, _)| p.as_uuid()).collect();
        let prices: HashMap<PriceId, PriceRow> = db::products::get_prices(&mut *tx, ctx, &ids)
            .await
            .map_err(db_err)?
            .into_iter()
            .map(|p| (p.id, p))
            .collect();
        let mut first: Option<&PriceRow> = None;
        for (i, (id, _)) in items.iter().enumerate() {
            let field = format!("items[{i}].price_id");
            // Another tenant's price is as unknown as a missing one.
            let p = prices
                .get(id)
                .ok_or_else(|| ApiError::validation(&field, "no such price"))?;
            if !p.active {
                return Err(ApiError::validation(&field, "is archived"));
            }
            if p.usage.is_some() {
                return Err(ApiError::validation(
                    &field,
                    "is metered: a bundle is priced up front",
                ));
            }
            match first {
                None => first = Some(p),
                Some(f) if f.currency != p.currency => {
                    return Err(ApiError::validation(&field, "has another currency"));
                }
                Some(f)
                    if stored_interval(f.interval.as_deref(), f.interval_count)
                        .map(|i| i.to_stripe())
                        != stored_interval(p.interval.as_deref(), p.interval_count)
                            .map(|i| i.to_stripe()) =>
                {
                    return Err(ApiError::validation(&field, "recurs differently"));
                }
                Some(_) => {}
            }
        }
        let Some(first) = first else {
            return Err(ApiError::validation("items", "must list 2 to 20 prices"));
        };
        let row = db::bundles::create(
            &mut *tx,
            ctx,
            NewBundle {
                id: BundleId::new(),
                name: name.as_str(),
                description: description.as_str(),
                discount_bps,
                currency: &first.currency,
                interval: first
                    .interval
                    .as_deref()
                    .map(|i| (i, first.interval_count.unwrap_or(1))),
                featured: b.featured.unwrap_or(false),
                metadata: &metadata,
                items: &items,
            },
            now,
        )
        .await
        .map_err(db_err)?;
        let item_rows: Vec<ItemRow> = items
            .iter()
            .map(|(price_id, quantity)| ItemRow {
                bundle_id: row.id,
                price_id: *price_id,
                quantity: *quantity,
            })
            .collect();
        let out = render(row, &item_rows, &prices)?;
        record_event(&mut *tx, now, ctx, "bundle.created", &out).await?;
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedBundle::Created(Json(out)))
    }

    /// List bundles
    #[oai(
        path = "/api/v1/bundles",
        method = "get",
        operation_id = "bundles.list",
        tag = "ApiTags::Catalog"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A bundle id: return older bundles (the next page).
        starting_after: Query<Option<String>>,
        /// A bundle id: return newer bundles (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<BundleList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            BundleId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = db::bundles::list(&state.pool, ctx, page)
            .await
            .map_err(db_err)?;
        let mut conn = state.pool.acquire().await.map_err(begin_err)?;
        let data = load(&mut conn, ctx, page.items).await?;
        Ok(Json(BundleList {
            data,
            has_more: page.has_more,
        }))
    }

    /// Get a bundle
    #[oai(
        path = "/api/v1/bundles/:id",
        method = "get",
        operation_id = "bundles.get",
        tag = "ApiTags::Catalog"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Bundle id (`bundle_…`).
        id: Path<String>,
    ) -> Result<Json<BundleOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let mut conn = state.pool.acquire().await.map_err(begin_err)?;
        let row = db::bundles::get(&mut conn, ctx, bundle_id(&id.0)?)
            .await
            .map_err(db_err)?;
        let mut out = load(&mut conn, ctx, vec![row]).await?;
        out.pop()
            .map(Json)
            .ok_or_else(|| ApiError::not_found("bundle"))
    }

    /// Update a bundle
    ///
    /// Its members cannot change: create another bundle.
    #[oai(
        path = "/api/v1/bundles/:id",
        method = "patch",
        operation_id = "bundles.update",
        tag = "ApiTags::Catalog"
    )]
    async fn update(
        &self,
        req: &Request,
        auth: Auth,
        /// Bundle id (`bundle_…`).
        id: Path<String>,
        body: JsonBody<BundlePatch>,
    ) -> Result<Json<BundleOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = bundle_id(&id.0)?;
        let b = body.0;
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
        let discount_bps = b.discount_bps.map(discount).transpose()?;
        let metadata = metadata(b.metadata.as_ref())?;
        let out = change(
            req,
            ctx,
            id,
            BundleChanges {
                name: name.as_ref().map(Name::as_str),
                description: description.as_ref().map(Description::as_str),
                discount_bps,
                active: b.active,
                featured: b.featured,
                metadata: metadata.as_ref(),
            },
        )
        .await?;
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }

    /// Deactivate a bundle
    #[oai(
        path = "/api/v1/bundles/:id",
        method = "delete",
        operation_id = "bundles.deactivate",
        tag = "ApiTags::Catalog"
    )]
    async fn deactivate(
        &self,
        req: &Request,
        auth: Auth,
        /// Bundle id (`bundle_…`).
        id: Path<String>,
    ) -> Result<Json<BundleOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let out = change(
            req,
            ctx,
            bundle_id(&id.0)?,
            BundleChanges {
                active: Some(false),
                ..Default::default()
            },
        )
        .await?;
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }
}

async fn change(
    req: &Request,
    ctx: &TenantContext,
    id: BundleId,
    changes: BundleChanges<'_>,
) -> Result<BundleOut, ApiError> {
    let mut work = Work::begin(req).await?;
    let now = work.now();
    let tx = work.conn();
    // In a savepoint: a change that changes nothing is undone.
    let mut sp = sqlx::Connection::begin(&mut *tx)
        .await
        .map_err(|e| ApiError::db(e.into()))?;
    let before = db::bundles::get(&mut sp, ctx, id).await.map_err(db_err)?;
    let row = db::bundles::update(&mut sp, ctx, id, changes, now)
        .await
        .map_err(db_err)?;
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
    if fields(&row) == fields(&before) {
        // Nothing changed: no event.
        sp.rollback().await.map_err(|e| ApiError::db(e.into()))?;
        return load(tx, ctx, vec![before])
            .await?
            .pop()
            .ok_or_else(|| ApiError::not_found("bundle"));
    }
    sp.commit().await.map_err(|e| ApiError::db(e.into()))?;
    let out = load(&mut *tx, ctx, vec![row])
        .await?
        .pop()
        .ok_or_else(|| ApiError::not_found("bundle"))?;
    record_event(&mut *tx, now, ctx, "bundle.updated", &out).await?;
    Ok(out)
}
