//! Bundles (`/api/v1/bundles`): prices of several products sold together at a discount. The
//! savings are computed from the members' prices with the one rounding rule of
//! `shared::domain::money` (half away from zero).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::catalog::{Description, Name},
    ids::{BundleId, PriceId},
    service::bundles::{self as service, BundleSpec, BundleUpdate, PricedBundle},
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{metadata, page_request},
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

impl From<PricedBundle> for BundleOut {
    fn from(p: PricedBundle) -> Self {
        let b = p.row;
        Self {
            id: b.id.to_string(),
            object: "bundle".into(),
            price_display: p.price_display,
            savings_display: p.savings_display,
            name: b.name,
            description: b.description,
            currency: b.currency,
            interval: b.interval,
            interval_count: b.interval_count,
            discount_bps: b.discount_bps,
            list_amount: p.list_amount,
            amount: p.amount,
            savings: p.savings,
            items: p
                .items
                .into_iter()
                .map(|i| BundleItemOut {
                    price_display: i.price.price_display(),
                    price_id: i.price.id.to_string(),
                    product_id: i.price.product_id.to_string(),
                    nickname: i.price.nickname,
                    quantity: i.quantity,
                    amount: i.amount,
                })
                .collect(),
            active: b.active,
            featured: b.featured,
            metadata: b.metadata,
            livemode: b.livemode,
            created_at: b.created_at,
            updated_at: b.updated_at,
        }
    }
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
        let mut items: Vec<(PriceId, u32)> = Vec::with_capacity(b.items.len());
        for (i, item) in b.items.iter().enumerate() {
            let id = PriceId::parse(&item.price_id)
                .map_err(|e| ApiError::validation(format!("items[{i}].price_id"), e.to_string()))?;
            items.push((id, item.quantity.unwrap_or(1)));
        }
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let out = BundleOut::from(
            service::create(
                &mut work,
                ctx,
                BundleSpec {
                    name: &name,
                    description: &description,
                    discount_bps: b.discount_bps,
                    items: &items,
                    featured: b.featured.unwrap_or(false),
                    metadata: &metadata,
                },
            )
            .await?,
        );
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
        let page = service::list(&state.pool, ctx, page).await?;
        Ok(Json(BundleList {
            data: page.items.into_iter().map(Into::into).collect(),
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
        let bundle = service::get(&state.pool, ctx, bundle_id(&id.0)?).await?;
        Ok(Json(bundle.into()))
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
        let metadata = metadata(b.metadata.as_ref())?;
        let mut work = Work::begin(req).await?;
        let out = BundleOut::from(
            service::update(
                &mut work,
                ctx,
                id,
                BundleUpdate {
                    name: name.as_ref(),
                    description: description.as_ref(),
                    discount_bps: b.discount_bps,
                    active: b.active,
                    featured: b.featured,
                    metadata: metadata.as_ref(),
                },
            )
            .await?,
        );
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
        let id = bundle_id(&id.0)?;
        let mut work = Work::begin(req).await?;
        let out = BundleOut::from(service::deactivate(&mut work, ctx, id).await?);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(Json(out))
    }
}

#[cfg(test)]
mod tests {
    //! Events carry catalog objects as the API shows them: the rendering in `shared` (used by
    //! the services) and the DTOs here must agree field for field.

    use chrono::TimeZone;
    use poem_openapi::types::ToJSON;
    use serde_json::json;
    use shared::{
        ids::{BundleId, PlanId, PriceId, ProductId, TenantId},
        service::{
            bundles::{BundleRow, PricedBundle, PricedItem},
            catalog::{PlanRow, PriceRow, ProductRow, SyncStatus},
        },
    };

    use super::BundleOut;
    use crate::routes::{plans::PlanOut, products::PriceOut, products::ProductOut};

    fn at(h: u32) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc
            .with_ymd_and_hms(2026, 1, 31, h, 0, 0)
            .unwrap()
            .checked_add_signed(chrono::Duration::microseconds(123_456))
            .unwrap()
    }

    fn product() -> ProductRow {
        ProductRow {
            id: ProductId::new(),
            tenant_id: TenantId::new(),
            livemode: false,
            name: "AutoFlow".into(),
            code: Some("autoflow".into()),
            description: "Workflows".into(),
            features: json!(["a", "b"]),
            metadata: json!({"k": "v"}),
            active: true,
            plan: false,
            stripe_product_id: None,
            sync_status: SyncStatus::NotSynced,
            sync_error: Some("no account".into()),
            sync_version: 2,
            synced_version: 1,
            synced_at: None,
            created_at: at(1),
            updated_at: at(2),
        }
    }

    fn price(product: ProductId, usage: Option<serde_json::Value>) -> PriceRow {
        PriceRow {
            id: PriceId::new(),
            tenant_id: TenantId::new(),
            livemode: true,
            product_id: product,
            nickname: "Pro".into(),
            currency: "usd".into(),
            interval: Some("month".into()),
            interval_count: Some(1),
            model: json!({"type": "flat", "amount": 2999}),
            usage,
            active: true,
            metadata: json!({}),
            plan: false,
            stripe_price_id: Some("price_123".into()),
            sync_status: SyncStatus::Synced,
            sync_error: None,
            sync_version: 1,
            synced_version: 1,
            synced_at: Some(at(3)),
            created_at: at(4),
            updated_at: at(5),
        }
    }

    #[test]
    fn products_and_prices_render_in_events_as_the_api_shows_them() {
        let p = product();
        assert_eq!(ProductOut::from(p.clone()).to_json().unwrap(), p.to_json());
        for usage in [None, Some(json!({"metric": "calls", "aggregation": "sum"}))] {
            let pr = price(p.id, usage);
            assert_eq!(PriceOut::from(pr.clone()).to_json().unwrap(), pr.to_json());
        }
    }

    #[test]
    fn plans_render_in_events_as_the_api_shows_them() {
        for (trial_days, duplicated_from, synced_at, usage_limits) in [
            (0, None, None, json!([])),
            (
                14,
                Some(PlanId::new()),
                Some(at(6)),
                json!([{"metric": "calls", "limit": 100}]),
            ),
        ] {
            let plan = PlanRow {
                id: PlanId::new(),
                tenant_id: TenantId::new(),
                livemode: false,
                name: "Pro".into(),
                description: String::new(),
                amount: 2999,
                currency: "usd".into(),
                interval: "month".into(),
                interval_count: 1,
                trial_days,
                features: json!([]),
                metadata: json!({"tier": "2"}),
                is_active: true,
                is_visible: false,
                duplicated_from,
                price_id: PriceId::new(),
                stripe_product_id: Some("prod_1".into()),
                stripe_price_id: None,
                sync_status: SyncStatus::Pending,
                sync_error: None,
                product_version: 1,
                price_version: 1,
                synced_at,
                created_at: at(1),
                updated_at: at(2),
                usage_limits,
            };
            assert_eq!(
                PlanOut::from(plan.clone()).to_json().unwrap(),
                plan.to_json()
            );
        }
    }

    #[test]
    fn bundles_render_in_events_as_the_api_shows_them() {
        let p = product();
        let bundle = PricedBundle {
            row: BundleRow {
                id: BundleId::new(),
                tenant_id: TenantId::new(),
                livemode: false,
                name: "Suite".into(),
                description: "All of it".into(),
                discount_bps: 1000,
                currency: "usd".into(),
                interval: Some("month".into()),
                interval_count: Some(1),
                active: true,
                featured: true,
                metadata: json!({}),
                created_at: at(1),
                updated_at: at(2),
            },
            items: vec![PricedItem {
                price: price(p.id, None),
                quantity: 2,
                amount: 5998,
            }],
            list_amount: 5998,
            amount: 5398,
            savings: 600,
            price_display: "$53.98/month".into(),
            savings_display: "$6.00/month".into(),
        };
        assert_eq!(
            BundleOut::from(bundle.clone()).to_json().unwrap(),
            bundle.to_json()
        );
    }
}
