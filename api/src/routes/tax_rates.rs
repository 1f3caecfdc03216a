//! Tax rates (`/api/v1/tax-rates`): what a tenant's invoices add (or hold) as tax.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;
use shared::{
    domain::{
        invoice::invoice_text,
        tax::{percentage_of_ppm, ppm_of_percentage},
    },
    ids::TaxRateId,
    service::tax_rates::{self as service, TaxRateRow, TaxRateSpec, TaxRateUpdate},
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{metadata, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct TaxRatesApi;

/// A tax rate to create. Its percentage and whether it is inclusive never change.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TaxRateIn {
    /// How invoices name it, such as `VAT` or `Sales tax`.
    pub display_name: String,
    /// 0 to 100, at most four decimals (`8.875`); a fifth is refused.
    pub percentage: f64,
    /// `true`: prices already hold this tax; `false`: it is added on top.
    pub inclusive: bool,
    /// `true`: applied to every customer that names no tax rates of its own. Default `false`.
    #[oai(nullable)]
    pub default: Option<bool>,
    #[oai(nullable)]
    pub description: Option<String>,
    /// Where it applies, such as `DE` or `NY`.
    #[oai(nullable)]
    pub jurisdiction: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// Changes to a tax rate; what is absent stays.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct TaxRatePatch {
    #[oai(nullable)]
    pub display_name: Option<String>,
    /// Empty: none.
    #[oai(nullable)]
    pub description: Option<String>,
    /// Empty: none.
    #[oai(nullable)]
    pub jurisdiction: Option<String>,
    #[oai(nullable)]
    pub default: Option<bool>,
    /// `false`: no longer applied to new invoices (those made keep it).
    #[oai(nullable)]
    pub active: Option<bool>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

#[derive(Debug, Object)]
pub struct TaxRateOut {
    /// Tax rate id (`txr_…`).
    pub id: String,
    /// Always `tax_rate`.
    pub object: String,
    pub display_name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    #[oai(nullable)]
    pub jurisdiction: Option<String>,
    /// 0 to 100.
    pub percentage: f64,
    pub inclusive: bool,
    /// Applied to every customer that names no tax rates of its own.
    pub default: bool,
    pub active: bool,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<TaxRateRow> for TaxRateOut {
    fn from(r: TaxRateRow) -> Self {
        Self {
            id: r.id.to_string(),
            object: "tax_rate".into(),
            display_name: r.display_name,
            description: r.description,
            jurisdiction: r.jurisdiction,
            percentage: percentage_of_ppm(u32::try_from(r.rate_ppm).unwrap_or(0)),
            inclusive: r.inclusive,
            default: r.is_default,
            active: r.active,
            metadata: r.metadata,
            livemode: r.livemode,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct TaxRateList {
    pub data: Vec<TaxRateOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedTaxRate {
    /// The tax rate was created.
    #[oai(status = 201)]
    Created(Json<TaxRateOut>),
}

fn tax_rate_id(raw: &str) -> Result<TaxRateId, ApiError> {
    TaxRateId::parse(raw).map_err(|_| ApiError::not_found("tax rate"))
}

/// A short name: 1 to 100 printable characters.
fn name(field: &str, raw: &str) -> Result<String, ApiError> {
    let v = invoice_text(raw, true).map_err(ApiError::invalid(field))?;
    if v.chars().count() > 100 {
        return Err(ApiError::validation(
            field,
            "must be at most 100 characters",
        ));
    }
    Ok(v)
}

/// An optional text: absent stays, empty clears.
fn clearable(field: &str, raw: Option<&str>) -> Result<Option<Option<String>>, ApiError> {
    raw.map(|r| {
        invoice_text(r, false)
            .map(|t| Some(t).filter(|t| !t.is_empty()))
            .map_err(ApiError::invalid(field))
    })
    .transpose()
}

#[OpenApi]
impl TaxRatesApi {
    /// Create a tax rate
    #[oai(
        path = "/api/v1/tax-rates",
        method = "post",
        operation_id = "tax_rates.create",
        tag = "ApiTags::Catalog"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<TaxRateIn>,
    ) -> Result<CreatedTaxRate, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let display_name = name("display_name", &b.display_name)?;
        let rate_ppm = ppm_of_percentage(b.percentage).ok_or_else(|| {
            ApiError::validation("percentage", "must be 0 to 100 with at most four decimals")
        })?;
        let description = clearable("description", b.description.as_deref())?.flatten();
        let jurisdiction = clearable("jurisdiction", b.jurisdiction.as_deref())?.flatten();
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_tax_rate(
            &mut work,
            ctx.scope(),
            TaxRateSpec {
                display_name: &display_name,
                description: description.as_deref(),
                jurisdiction: jurisdiction.as_deref(),
                rate_ppm,
                inclusive: b.inclusive,
                is_default: b.default.unwrap_or(false),
                metadata: &metadata,
            },
        )
        .await?;
        let out = TaxRateOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedTaxRate::Created(Json(out)))
    }

    /// List tax rates
    ///
    /// Newest first; optionally only active (or archived) ones.
    #[oai(
        path = "/api/v1/tax-rates",
        method = "get",
        operation_id = "tax_rates.list",
        tag = "ApiTags::Catalog"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only active (`true`) or archived (`false`) rates.
        active: Query<Option<bool>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A tax rate id: return older rates (the next page).
        starting_after: Query<Option<String>>,
        /// A tax rate id: return newer rates (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<TaxRateList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            TaxRateId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_tax_rates(&state.pool, ctx.scope(), active.0, page).await?;
        Ok(Json(TaxRateList {
            data: page.items.into_iter().map(TaxRateOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a tax rate
    #[oai(
        path = "/api/v1/tax-rates/:id",
        method = "get",
        operation_id = "tax_rates.get",
        tag = "ApiTags::Catalog"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Tax rate id (`txr_…`).
        id: Path<String>,
    ) -> Result<Json<TaxRateOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = tax_rate_id(&id.0)?;
        Ok(Json(
            service::get_tax_rate(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }

    /// Update a tax rate
    ///
    /// Its names, whether it is a default, whether it is active; the percentage and whether it
    /// is inclusive never change (create a new rate).
    #[oai(
        path = "/api/v1/tax-rates/:id",
        method = "patch",
        operation_id = "tax_rates.update",
        tag = "ApiTags::Catalog"
    )]
    async fn update(
        &self,
        req: &Request,
        auth: Auth,
        /// Tax rate id (`txr_…`).
        id: Path<String>,
        body: JsonBody<TaxRatePatch>,
    ) -> Result<Json<TaxRateOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = tax_rate_id(&id.0)?;
        let b = body.0;
        let display_name = b
            .display_name
            .as_deref()
            .map(|n| name("display_name", n))
            .transpose()?;
        let description = clearable("description", b.description.as_deref())?;
        let jurisdiction = clearable("jurisdiction", b.jurisdiction.as_deref())?;
        let metadata = metadata(b.metadata.as_ref())?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::update_tax_rate(
            &mut work,
            ctx.scope(),
            id,
            TaxRateUpdate {
                display_name: display_name.as_deref(),
                description: description.as_ref().map(Option::as_deref),
                jurisdiction: jurisdiction.as_ref().map(Option::as_deref),
                is_default: b.default,
                active: b.active,
                metadata: metadata.as_ref(),
            },
        )
        .await?;
        Ok(Json(row.into()))
    }
}
