//! Tax rates (`/api/v1/tax-rates`) and the tax an invoice's lines owe.
//!
//! A rate's percentage and whether it is inclusive never change once created (invoices keep
//! what each rate took as it was); its names, whether it is a tenant default and whether it is
//! active do. A customer's invoices apply its own rates, or else the tenant's active defaults;
//! a tax-exempt customer pays none.

use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events};
use crate::{
    db::{
        self,
        invoices::LineRow,
        pagination::{Page, PageRequest},
    },
    domain::{
        catalog::Metadata,
        invoice::{LineAmount, Totals},
        tax::{self, Rate, percentage_of_ppm},
    },
    ids::{CustomerId, TaxRateId},
    tenancy::Scope,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::tax_rates::TaxRateRow;

const WHAT: &str = "tax rate";

/// A rate to create.
#[derive(Debug)]
pub struct TaxRateSpec<'a> {
    pub display_name: &'a str,
    pub description: Option<&'a str>,
    pub jurisdiction: Option<&'a str>,
    /// Parts per million (8.875 % = 88,750).
    pub rate_ppm: u32,
    pub inclusive: bool,
    pub is_default: bool,
    pub metadata: &'a Metadata,
}

/// The rate as the API shows it (and as its events carry it).
pub fn rate_json(r: &TaxRateRow) -> serde_json::Value {
    serde_json::json!({
        "id": r.id.to_string(),
        "object": "tax_rate",
        "display_name": r.display_name,
        "description": r.description,
        "jurisdiction": r.jurisdiction,
        "percentage": percentage_of_ppm(u32::try_from(r.rate_ppm).unwrap_or(0)),
        "inclusive": r.inclusive,
        "default": r.is_default,
        "active": r.active,
        "metadata": r.metadata,
        "livemode": r.livemode,
        "created_at": db::api_time(r.created_at),
        "updated_at": db::api_time(r.updated_at),
    })
}

pub async fn create_tax_rate(
    uow: &mut UnitOfWork,
    scope: Scope,
    spec: TaxRateSpec<'_>,
) -> ServiceResult<TaxRateRow> {
    let now = uow.now();
    let row = TaxRateRow {
        id: TaxRateId::new(),
        display_name: spec.display_name.to_owned(),
        description: spec.description.map(str::to_owned),
        jurisdiction: spec.jurisdiction.map(str::to_owned),
        rate_ppm: i32::try_from(spec.rate_ppm).map_err(ServiceError::internal)?,
        inclusive: spec.inclusive,
        is_default: spec.is_default,
        active: true,
        metadata: spec.metadata.to_json(),
        livemode: scope.livemode(),
        created_at: now,
        updated_at: now,
    };
    db::tax_rates::insert(uow.conn(), scope, &row).await?;
    events::record(uow, scope, "tax_rate.created", rate_json(&row)).await?;
    Ok(row)
}

/// Changes to a rate; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct TaxRateUpdate<'a> {
    pub display_name: Option<&'a str>,
    pub description: Option<Option<&'a str>>,
    pub jurisdiction: Option<Option<&'a str>>,
    pub is_default: Option<bool>,
    pub active: Option<bool>,
    pub metadata: Option<&'a Metadata>,
}

pub async fn update_tax_rate(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: TaxRateId,
    changes: TaxRateUpdate<'_>,
) -> ServiceResult<TaxRateRow> {
    let mut row = db::tax_rates::get(uow.conn(), scope, id, true)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if let Some(n) = changes.display_name {
        row.display_name = n.to_owned();
    }
    if let Some(d) = changes.description {
        row.description = d.map(str::to_owned);
    }
    if let Some(j) = changes.jurisdiction {
        row.jurisdiction = j.map(str::to_owned);
    }
    if let Some(d) = changes.is_default {
        row.is_default = d;
    }
    if let Some(a) = changes.active {
        row.active = a;
    }
    if let Some(m) = changes.metadata {
        row.metadata = m.to_json();
    }
    row.updated_at = uow.now();
    db::tax_rates::save(uow.conn(), scope, &row).await?;
    events::record(uow, scope, "tax_rate.updated", rate_json(&row)).await?;
    Ok(row)
}

pub async fn get_tax_rate(pool: &PgPool, scope: Scope, id: TaxRateId) -> ServiceResult<TaxRateRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::tax_rates::get(&mut conn, scope, id, false)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

pub async fn list_tax_rates(
    pool: &PgPool,
    scope: Scope,
    active: Option<bool>,
    page: PageRequest,
) -> ServiceResult<Page<TaxRateRow>> {
    Ok(db::tax_rates::list(pool, scope, active, page).await?)
}

/// An invoice's totals with its customer's taxes, and what each rate took (as the invoice keeps
/// it: `tax_amounts`).
#[derive(Debug, Clone)]
pub struct Taxed {
    pub totals: Totals,
    pub tax_amounts: serde_json::Value,
}

/// The totals of `lines` for `customer`: its tax rates applied to what the lines add up to
/// after discounts (exclusive taxes added to the total; `tax` counts inclusive ones too), then
/// up to `balance` of its credit.
pub async fn taxed_totals(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    lines: &[LineRow],
    balance: i64,
) -> ServiceResult<Taxed> {
    let rows = db::tax_rates::for_customer(uow.conn(), scope, customer).await?;
    taxed(&rows, lines, balance)
}

/// The totals of `lines` with the tax `rows` (a customer's, [`db::tax_rates::for_customer`])
/// and up to `balance` of credit applied (see [`taxed_totals`]).
pub(crate) fn taxed(rows: &[TaxRateRow], lines: &[LineRow], balance: i64) -> ServiceResult<Taxed> {
    let too_large = || ServiceError::invalid("items", "make the invoice's amounts too large");
    let rates: Vec<Rate> = rows
        .iter()
        .map(|r| Rate {
            ppm: u32::try_from(r.rate_ppm).unwrap_or(0),
            inclusive: r.inclusive,
        })
        .collect();
    let net = lines
        .iter()
        .try_fold(0i64, |sum, l| {
            l.amount
                .checked_sub(l.discount_amount)
                .and_then(|n| sum.checked_add(n))
        })
        .ok_or_else(too_large)?;
    let taxes = tax::compute(net, &rates).map_err(|_| too_large())?;
    let added = tax::added(&rates, &taxes).map_err(|_| too_large())?;
    let all = tax::total(&taxes).map_err(|_| too_large())?;
    let amounts: Vec<LineAmount> = lines
        .iter()
        .map(|l| LineAmount {
            amount: l.amount,
            discount: l.discount_amount,
        })
        .collect();
    let mut totals = Totals::compute(&amounts, added, balance).map_err(|_| too_large())?;
    totals.tax = all;
    let tax_amounts = rows
        .iter()
        .zip(&taxes)
        .map(|(r, t)| {
            serde_json::json!({
                "tax_rate": r.id.to_string(),
                "display_name": r.display_name,
                "percentage": percentage_of_ppm(u32::try_from(r.rate_ppm).unwrap_or(0)),
                "inclusive": r.inclusive,
                "taxable_amount": t.taxable,
                "amount": t.amount,
            })
        })
        .collect();
    Ok(Taxed {
        totals,
        tax_amounts: serde_json::Value::Array(tax_amounts),
    })
}

/// What a credit of an invoice's lines gives back of the tax the invoice took
/// ([`tax::credited`]): its lines after discounts added up to `net`; its notes credited
/// `before` of them, `after` once this one is issued. The exclusive tax (added to what the
/// note credits), all the tax, and each rate's part in the shape of the invoice's
/// `tax_amounts` (the rates that tax none of what it credits left out: all of them for a
/// note of custom lines only).
pub(crate) fn credited(
    invoice_tax_amounts: &serde_json::Value,
    net: i64,
    before: i64,
    after: i64,
) -> ServiceResult<(i64, i64, serde_json::Value)> {
    let entries = invoice_tax_amounts
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    let rates = entries
        .iter()
        .map(|e| {
            let ppm = e["percentage"].as_f64().and_then(tax::ppm_of_percentage);
            match (ppm, e["inclusive"].as_bool()) {
                (Some(ppm), Some(inclusive)) => Ok(Rate { ppm, inclusive }),
                _ => Err(ServiceError::internal(format!(
                    "an invoice's tax amount without its rate: {e}"
                ))),
            }
        })
        .collect::<ServiceResult<Vec<Rate>>>()?;
    let too_large = |_| ServiceError::invalid("lines", "make the note's tax too large");
    let taxes = tax::credited(net, before, after, &rates).map_err(too_large)?;
    let added = tax::added(&rates, &taxes).map_err(too_large)?;
    let all = tax::total(&taxes).map_err(too_large)?;
    let parts = entries
        .iter()
        .zip(&taxes)
        .filter(|(_, t)| t.taxable != 0 || t.amount != 0)
        .map(|(e, t)| {
            let mut part = e.clone();
            part["taxable_amount"] = t.taxable.into();
            part["amount"] = t.amount.into();
            part
        })
        .collect();
    Ok((added, all, serde_json::Value::Array(parts)))
}
