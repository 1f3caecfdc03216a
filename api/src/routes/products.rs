//! Products (`/api/v1/products`) and their prices (`/api/v1/prices`): the seed's products and
//! product plans (tiers). A price's terms never change; Stripe hears of every change through
//! the worker fleet (`sync_status`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi, Union, param::Path, param::Query, payload::Json,
};
use serde::Deserialize;
use shared::{
    domain::{
        catalog::{Code, Description, Features, Name},
        interval::{Interval, IntervalUnit},
        money::{Currency, Money},
        pricing::{self, Aggregation, PriceModel, PriceModelIn},
        usage::metric_code,
    },
    ids::{PriceId, ProductId},
    service::catalog::{
        self as service, PriceRow, PriceSpec, PriceUpdate, ProductRow, ProductSpec, ProductUpdate,
    },
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{immutable, metadata, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct ProductsApi;

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ProductIn {
    pub name: String,
    /// A short stable handle such as `autoflow` (a-z, 0-9, - and _), unique per mode.
    #[oai(nullable)]
    pub code: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    #[oai(nullable)]
    pub features: Option<Vec<String>>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    #[oai(nullable)]
    pub features: Option<Vec<String>>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
    /// `false` archives the product (in Stripe too); its prices stay readable.
    #[oai(nullable)]
    pub active: Option<bool>,
}

/// A product of the catalog.
#[derive(Debug, Object)]
pub struct ProductOut {
    /// Product id (`prod_…`).
    pub id: String,
    /// Always `product`.
    pub object: String,
    pub name: String,
    #[oai(nullable)]
    pub code: Option<String>,
    pub description: String,
    pub features: serde_json::Value,
    pub metadata: serde_json::Value,
    pub active: bool,
    pub livemode: bool,
    #[oai(nullable)]
    pub stripe_product_id: Option<String>,
    /// `pending`, `synced`, `failed` (retrying; see `sync_error`) or `not_synced`.
    pub sync_status: String,
    #[oai(nullable)]
    pub sync_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The product's prices (on `GET /api/v1/products/{id}` only).
    #[oai(nullable)]
    pub prices: Option<Vec<PriceOut>>,
}

impl From<ProductRow> for ProductOut {
    fn from(p: ProductRow) -> Self {
        Self {
            id: p.id.to_string(),
            object: "product".into(),
            name: p.name,
            code: p.code,
            description: p.description,
            features: p.features,
            metadata: p.metadata,
            active: p.active,
            livemode: p.livemode,
            stripe_product_id: p.stripe_product_id,
            sync_status: p.sync_status.to_string(),
            sync_error: p.sync_error,
            created_at: p.created_at,
            updated_at: p.updated_at,
            prices: None,
        }
    }
}

#[derive(Debug, Object)]
pub struct ProductList {
    pub data: Vec<ProductOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedProduct {
    /// The product was created.
    #[oai(status = 201)]
    Created(Json<ProductOut>),
}

/// One tier of a tiered price.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PriceTierIn {
    /// The last unit this tier covers; absent (or null) on the last tier only.
    #[oai(nullable)]
    pub up_to: Option<u64>,
    /// Per unit in this tier, in minor units.
    pub unit_amount: i64,
    /// Charged once when the tier applies, in minor units; default 0.
    #[oai(nullable)]
    pub flat_amount: Option<i64>,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct FlatTerms {
    /// The fixed charge, in minor units.
    pub amount: i64,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PerUnitTerms {
    /// Per unit (per seat), in minor units.
    pub unit_amount: i64,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct GraduatedTerms {
    /// Ascending; each unit is priced by the tier it falls into.
    pub tiers: Vec<PriceTierIn>,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct VolumeTerms {
    /// Ascending; all units are priced by the tier the total falls into.
    pub tiers: Vec<PriceTierIn>,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PackageTerms {
    /// Per package, in minor units.
    pub amount: i64,
    /// Units per package; quantities round up to whole packages.
    pub package_size: u64,
}

/// How a price charges for a quantity (or, when metered, for the period's usage).
#[derive(Debug, Clone, Union, Deserialize)]
#[oai(discriminator_name = "type")]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PricingIn {
    #[oai(mapping = "flat")]
    Flat(FlatTerms),
    #[oai(mapping = "per_unit")]
    PerUnit(PerUnitTerms),
    #[oai(mapping = "graduated")]
    Graduated(GraduatedTerms),
    #[oai(mapping = "volume")]
    Volume(VolumeTerms),
    #[oai(mapping = "package")]
    Package(PackageTerms),
}

fn tiers(t: &[PriceTierIn]) -> Vec<pricing::Tier> {
    t.iter()
        .map(|t| pricing::Tier {
            up_to: t.up_to,
            unit_amount: t.unit_amount,
            flat_amount: t.flat_amount.unwrap_or(0),
        })
        .collect()
}

impl From<&PricingIn> for PriceModelIn {
    fn from(p: &PricingIn) -> Self {
        match p {
            PricingIn::Flat(t) => PriceModelIn::Flat { amount: t.amount },
            PricingIn::PerUnit(t) => PriceModelIn::PerUnit {
                unit_amount: t.unit_amount,
            },
            PricingIn::Graduated(t) => PriceModelIn::Graduated {
                tiers: tiers(&t.tiers),
            },
            PricingIn::Volume(t) => PriceModelIn::Volume {
                tiers: tiers(&t.tiers),
            },
            PricingIn::Package(t) => PriceModelIn::Package {
                amount: t.amount,
                package_size: t.package_size,
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Enum, Deserialize, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum AggregationIn {
    Count,
    Sum,
    Max,
    UniqueCount,
    Latest,
    /// The older name of `latest`.
    Last,
    WeightedSum,
}

impl From<AggregationIn> for Aggregation {
    fn from(a: AggregationIn) -> Self {
        match a {
            AggregationIn::Count => Aggregation::Count,
            AggregationIn::Sum => Aggregation::Sum,
            AggregationIn::Max => Aggregation::Max,
            AggregationIn::UniqueCount => Aggregation::UniqueCount,
            AggregationIn::Latest | AggregationIn::Last => Aggregation::Latest,
            AggregationIn::WeightedSum => Aggregation::WeightedSum,
        }
    }
}

/// A metered price charges the period's usage of a billable metric.
#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UsageIn {
    /// The code of an active billable metric of the tenant, e.g. `api_calls`.
    pub metric: String,
    /// The metric's aggregation (another is refused); absent: the metric's.
    #[oai(nullable)]
    pub aggregation: Option<AggregationIn>,
}

#[derive(Debug, Clone, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RecurringIn {
    /// `day`, `week`, `month`, `quarter` or `year`.
    pub interval: String,
    /// Default 1; at most one year in all.
    #[oai(nullable)]
    pub interval_count: Option<u32>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PriceIn {
    /// A name for the tier, e.g. `Professional`.
    #[oai(nullable)]
    pub nickname: Option<String>,
    /// ISO 4217 code, e.g. `usd` or `jpy` (amounts are in its minor unit).
    pub currency: String,
    /// Absent for a one-time price.
    #[oai(nullable)]
    pub recurring: Option<RecurringIn>,
    pub pricing: PricingIn,
    /// Present for a metered price.
    #[oai(nullable)]
    pub usage: Option<UsageIn>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PricePatch {
    #[oai(nullable)]
    pub nickname: Option<String>,
    /// `false` archives the price: no new purchases, existing ones go on.
    #[oai(nullable)]
    pub active: Option<bool>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
    /// Cannot change (`400 immutable_field`): create a new price.
    #[oai(nullable)]
    pub currency: Option<serde_json::Value>,
    /// Cannot change (`400 immutable_field`): create a new price.
    #[oai(nullable)]
    pub recurring: Option<serde_json::Value>,
    /// Cannot change (`400 immutable_field`): create a new price.
    #[oai(nullable)]
    pub pricing: Option<serde_json::Value>,
    /// Cannot change (`400 immutable_field`): create a new price.
    #[oai(nullable)]
    pub usage: Option<serde_json::Value>,
}

/// A price of a product.
#[derive(Debug, Object)]
pub struct PriceOut {
    /// Price id (`price_…`).
    pub id: String,
    /// Always `price`.
    pub object: String,
    pub product_id: String,
    pub nickname: String,
    pub currency: String,
    /// `day`, `week`, `month`, `quarter` or `year`; absent for a one-time price.
    #[oai(nullable)]
    pub interval: Option<String>,
    #[oai(nullable)]
    pub interval_count: Option<i32>,
    /// The pricing terms, as given (`type` and its fields).
    pub pricing: serde_json::Value,
    /// `{metric, aggregation}` for a metered price: its billable metric's code and aggregation.
    #[oai(nullable)]
    pub usage: Option<serde_json::Value>,
    /// e.g. `$29.99/month` for a flat price; `null` for tiered or metered ones.
    #[oai(nullable)]
    pub price_display: Option<String>,
    pub active: bool,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    #[oai(nullable)]
    pub stripe_price_id: Option<String>,
    pub sync_status: String,
    #[oai(nullable)]
    pub sync_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl From<PriceRow> for PriceOut {
    fn from(p: PriceRow) -> Self {
        Self {
            id: p.id.to_string(),
            object: "price".into(),
            price_display: p.price_display(),
            product_id: p.product_id.to_string(),
            nickname: p.nickname,
            currency: p.currency,
            interval: p.interval,
            interval_count: p.interval_count,
            pricing: p.model,
            usage: p.usage,
            active: p.active,
            metadata: p.metadata,
            livemode: p.livemode,
            stripe_price_id: p.stripe_price_id,
            sync_status: p.sync_status.to_string(),
            sync_error: p.sync_error,
            created_at: p.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct PriceList {
    pub data: Vec<PriceOut>,
}

#[derive(ApiResponse)]
pub enum CreatedPrice {
    /// The price was created.
    #[oai(status = 201)]
    Created(Json<PriceOut>),
}

/// What a quantity costs.
#[derive(Debug, Object)]
pub struct PriceAmountOut {
    pub price_id: String,
    pub quantity: u64,
    /// In minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    /// e.g. `$129.50`.
    pub amount_display: String,
}

fn product_id(raw: &str) -> Result<ProductId, ApiError> {
    ProductId::parse(raw).map_err(|_| ApiError::not_found("product"))
}

fn price_id(raw: &str) -> Result<PriceId, ApiError> {
    PriceId::parse(raw).map_err(|_| ApiError::not_found("price"))
}

fn features(f: Option<&[String]>) -> Result<Option<Features>, ApiError> {
    f.map(Features::parse)
        .transpose()
        .map_err(ApiError::invalid("features"))
}

#[OpenApi]
impl ProductsApi {
    /// Create a product
    ///
    /// Answers at once; the worker fleet creates the Stripe Product on the connected account.
    #[oai(
        path = "/api/v1/products",
        method = "post",
        operation_id = "products.create",
        tag = "ApiTags::Catalog"
    )]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<ProductIn>,
    ) -> Result<CreatedProduct, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let name = Name::parse(&b.name).map_err(ApiError::invalid("name"))?;
        let code = b
            .code
            .as_deref()
            .map(Code::parse)
            .transpose()
            .map_err(ApiError::invalid("code"))?;
        let description = Description::parse(b.description.as_deref().unwrap_or(""))
            .map_err(ApiError::invalid("description"))?;
        let features = features(b.features.as_deref())?.unwrap_or_default();
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_product(
            &mut work,
            ctx,
            &state.settings.stripe,
            ProductSpec {
                name: &name,
                code: code.as_ref(),
                description: &description,
                features: &features,
                metadata: &metadata,
            },
        )
        .await?;
        let out = ProductOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedProduct::Created(Json(out)))
    }

    /// List products
    #[oai(
        path = "/api/v1/products",
        method = "get",
        operation_id = "products.list",
        tag = "ApiTags::Catalog"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only active (`true`) or archived (`false`) products.
        active: Query<Option<bool>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A product id: return older products (the next page).
        starting_after: Query<Option<String>>,
        /// A product id: return newer products (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<ProductList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            ProductId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_products(&state.pool, ctx, active.0, page).await?;
        Ok(Json(ProductList {
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a product
    ///
    /// With its prices.
    #[oai(
        path = "/api/v1/products/:id",
        method = "get",
        operation_id = "products.get",
        tag = "ApiTags::Catalog"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Product id (`prod_…`).
        id: Path<String>,
    ) -> Result<Json<ProductOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = product_id(&id.0)?;
        let (row, prices) = service::get_product(&state.pool, ctx, id).await?;
        let mut out = ProductOut::from(row);
        out.prices = Some(prices.into_iter().map(Into::into).collect());
        Ok(Json(out))
    }

    /// Update a product
    #[oai(
        path = "/api/v1/products/:id",
        method = "patch",
        operation_id = "products.update",
        tag = "ApiTags::Catalog"
    )]
    async fn update(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Product id (`prod_…`).
        id: Path<String>,
        body: JsonBody<ProductPatch>,
    ) -> Result<Json<ProductOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = product_id(&id.0)?;
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
        let features = features(b.features.as_deref())?;
        let metadata = metadata(b.metadata.as_ref())?;
        let mut work = Work::begin(req).await?;
        let out = ProductOut::from(
            service::update_product(
                &mut work,
                ctx,
                &state.settings.stripe,
                id,
                ProductUpdate {
                    name: name.as_ref(),
                    description: description.as_ref(),
                    features: features.as_ref(),
                    metadata: metadata.as_ref(),
                    active: b.active,
                },
            )
            .await?,
        );
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }

    /// Archive a product
    ///
    /// Sets `active: false` (in Stripe too); the product and its prices stay readable.
    #[oai(
        path = "/api/v1/products/:id",
        method = "delete",
        operation_id = "products.archive",
        tag = "ApiTags::Catalog"
    )]
    async fn archive(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Product id (`prod_…`).
        id: Path<String>,
    ) -> Result<Json<ProductOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = product_id(&id.0)?;
        let mut work = Work::begin(req).await?;
        let out = ProductOut::from(
            service::archive_product(&mut work, ctx, &state.settings.stripe, id).await?,
        );
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }

    /// Create a price for a product
    ///
    /// Flat, per unit (seats), graduated or volume tiers, or packages; recurring (day, week,
    /// month, quarter or year, with a count) or one-time; metered when `usage` names a metric.
    /// A price's terms never change afterwards: a new price replaces it.
    #[oai(
        path = "/api/v1/products/:id/prices",
        method = "post",
        operation_id = "prices.create",
        tag = "ApiTags::Catalog"
    )]
    async fn create_price(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Product id (`prod_…`).
        id: Path<String>,
        body: JsonBody<PriceIn>,
    ) -> Result<CreatedPrice, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let product = product_id(&id.0)?;
        let b = body.0;
        let nickname = b
            .nickname
            .as_deref()
            .map(Name::parse)
            .transpose()
            .map_err(ApiError::invalid("nickname"))?;
        let currency = Currency::parse(&b.currency).map_err(ApiError::invalid("currency"))?;
        let recurring = b
            .recurring
            .as_ref()
            .map(|r| {
                IntervalUnit::parse(&r.interval)
                    .and_then(|u| Interval::new(u, r.interval_count.unwrap_or(1)))
            })
            .transpose()
            .map_err(ApiError::invalid("recurring"))?;
        let model = PriceModel::parse(PriceModelIn::from(&b.pricing))
            .map_err(ApiError::invalid("pricing"))?;
        let usage = b
            .usage
            .as_ref()
            .map(|u| {
                metric_code(&u.metric)
                    .map(|code| (code, u.aggregation.map(Aggregation::from)))
                    .map_err(ApiError::invalid("usage.metric"))
            })
            .transpose()?;
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_price(
            &mut work,
            ctx,
            &state.settings.stripe,
            product,
            PriceSpec {
                nickname: nickname.as_ref(),
                currency,
                recurring,
                model: &model,
                usage: usage.as_ref().map(|(c, a)| (c.as_str(), *a)),
                metadata: &metadata,
            },
        )
        .await?;
        let out = PriceOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedPrice::Created(Json(out)))
    }

    /// List a product's prices
    #[oai(
        path = "/api/v1/products/:id/prices",
        method = "get",
        operation_id = "prices.list",
        tag = "ApiTags::Catalog"
    )]
    async fn list_prices(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Product id (`prod_…`).
        id: Path<String>,
    ) -> Result<Json<PriceList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = product_id(&id.0)?;
        let rows = service::list_prices(&state.pool, ctx, id).await?;
        Ok(Json(PriceList {
            data: rows.into_iter().map(Into::into).collect(),
        }))
    }

    /// Get a price
    #[oai(
        path = "/api/v1/prices/:id",
        method = "get",
        operation_id = "prices.get",
        tag = "ApiTags::Catalog"
    )]
    async fn get_price(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Price id (`price_…`).
        id: Path<String>,
    ) -> Result<Json<PriceOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let row = service::get_price(&state.pool, ctx, price_id(&id.0)?).await?;
        Ok(Json(row.into()))
    }

    /// What a quantity costs
    ///
    /// Runs the price's model on a quantity (for a metered price: an aggregated usage).
    #[oai(
        path = "/api/v1/prices/:id/amount",
        method = "get",
        operation_id = "prices.amount",
        tag = "ApiTags::Catalog"
    )]
    async fn amount(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Price id (`price_…`).
        id: Path<String>,
        /// Units (seats, usage…); default 1.
        quantity: Query<Option<u64>>,
    ) -> Result<Json<PriceAmountOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let quantity = quantity.0.unwrap_or(1);
        let (row, currency, amount) =
            service::amount_for(&state.pool, ctx, price_id(&id.0)?, quantity).await?;
        Ok(Json(PriceAmountOut {
            price_id: row.id.to_string(),
            quantity,
            amount,
            currency: row.currency,
            amount_display: Money::new(amount, currency).display(),
        }))
    }

    /// Update a price
    ///
    /// Nickname, active flag and metadata only: the terms (currency, recurrence, pricing,
    /// usage) are immutable (`400 immutable_field`).
    #[oai(
        path = "/api/v1/prices/:id",
        method = "patch",
        operation_id = "prices.update",
        tag = "ApiTags::Catalog"
    )]
    async fn update_price(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Price id (`price_…`).
        id: Path<String>,
        body: JsonBody<PricePatch>,
    ) -> Result<Json<PriceOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = price_id(&id.0)?;
        let b = body.0;
        for (field, present) in [
            ("currency", b.currency.is_some()),
            ("recurring", b.recurring.is_some()),
            ("pricing", b.pricing.is_some()),
            ("usage", b.usage.is_some()),
        ] {
            if present {
                return Err(immutable(field, "price"));
            }
        }
        let nickname = b
            .nickname
            .as_deref()
            .map(Name::parse)
            .transpose()
            .map_err(ApiError::invalid("nickname"))?;
        let metadata = metadata(b.metadata.as_ref())?;
        let mut work = Work::begin(req).await?;
        let row = service::update_price(
            &mut work,
            ctx,
            &state.settings.stripe,
            id,
            PriceUpdate {
                nickname: nickname.as_ref(),
                active: b.active,
                metadata: metadata.as_ref(),
            },
        )
        .await?;
        let out = PriceOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }
}
