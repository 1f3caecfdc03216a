//! Invoice items (`/api/v1/invoice-items`): one-off charges and credits for a customer's next
//! invoice, and the prorations subscription changes leave for theirs.

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
    domain::{invoice::invoice_text, money::Currency, period::Period},
    ids::{CustomerId, InvoiceId, InvoiceItemId, PriceId},
    service::invoicing::{
        self as service, InvoiceItemFilter, InvoiceItemRow, ItemAmount, ItemSpec,
    },
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{metadata, optional_id, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct InvoiceItemsApi;

/// An item to add: `amount`, or `unit_amount` with a `quantity`, or a `price` with a
/// `quantity`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct InvoiceItemIn {
    /// The customer billed (`cus_…`).
    pub customer: String,
    /// Minor units; negative for a credit. Not with `unit_amount` or `price`.
    #[oai(nullable)]
    pub amount: Option<i64>,
    /// The amount of one unit, billed `quantity` times.
    #[oai(nullable)]
    pub unit_amount: Option<i64>,
    /// A price (`price_…`) billed for `quantity`; not metered.
    #[oai(nullable)]
    pub price: Option<String>,
    /// With `unit_amount` or `price`: 1 to 1000000 (default 1).
    #[oai(nullable)]
    pub quantity: Option<u32>,
    /// Defaults to the price's, or else the customer's; it must be the customer's.
    #[oai(nullable)]
    pub currency: Option<String>,
    /// How the line reads; defaults to the price's product. Required without a price.
    #[oai(nullable)]
    pub description: Option<String>,
    /// What it covers, with `period_end`; defaults to the moment it is added.
    #[oai(nullable)]
    pub period_start: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub period_end: Option<DateTime<Utc>>,
    /// A draft invoice of the customer (`in_…`) to add it to; otherwise it waits for the
    /// customer's next invoice in its currency.
    #[oai(nullable)]
    pub invoice: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// A line for a customer's next invoice.
#[derive(Debug, Object)]
pub struct InvoiceItemOut {
    /// Invoice item id (`ii_…`).
    pub id: String,
    /// Always `invoice_item`.
    pub object: String,
    pub customer: String,
    /// The subscription whose change left it (a proration).
    #[oai(nullable)]
    pub subscription: Option<String>,
    #[oai(nullable)]
    pub subscription_item: Option<String>,
    #[oai(nullable)]
    pub price: Option<String>,
    pub description: String,
    pub currency: String,
    pub quantity: i64,
    #[oai(nullable)]
    pub unit_amount: Option<i64>,
    /// Minor units; negative for a credit.
    pub amount: i64,
    pub proration: bool,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The invoice that bills it (a draft's until it is finalized); `null` while pending.
    #[oai(nullable)]
    pub invoice: Option<String>,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

impl From<InvoiceItemRow> for InvoiceItemOut {
    fn from(i: InvoiceItemRow) -> Self {
        Self {
            id: i.id.to_string(),
            object: "invoice_item".into(),
            customer: i.customer_id.to_string(),
            subscription: i.subscription_id.map(|s| s.to_string()),
            subscription_item: i.subscription_item_id.map(|s| s.to_string()),
            price: i.price_id.map(|p| p.to_string()),
            description: i.description,
            currency: i.currency,
            quantity: i.quantity,
            unit_amount: i.unit_amount,
            amount: i.amount,
            proration: i.proration,
            period_start: i.period_start,
            period_end: i.period_end,
            invoice: i.invoice_id.map(|i| i.to_string()),
            metadata: i.metadata,
            livemode: i.livemode,
            created_at: i.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct InvoiceItemList {
    pub data: Vec<InvoiceItemOut>,
    pub has_more: bool,
}

#[derive(Debug, Object)]
pub struct DeletedInvoiceItem {
    pub id: String,
    /// Always `invoice_item`.
    pub object: String,
    /// Always `true`.
    pub deleted: bool,
}

#[derive(ApiResponse)]
pub enum CreatedInvoiceItem {
    /// The item was added.
    #[oai(status = 201)]
    Created(Json<InvoiceItemOut>),
}

fn item_id(raw: &str) -> Result<InvoiceItemId, ApiError> {
    InvoiceItemId::parse(raw).map_err(|_| ApiError::not_found("invoice item"))
}

/// The largest amount (and unit amount) of an item, either way: 999,999,999,999 minor units.
pub const MAX_ITEM_AMOUNT: i64 = 999_999_999_999;

/// The amount an item asks for, from the fields that may say it.
fn amount_of(b: &InvoiceItemIn) -> Result<ItemAmount, ApiError> {
    for (field, value) in [("amount", b.amount), ("unit_amount", b.unit_amount)] {
        if value.is_some_and(|v| !(-MAX_ITEM_AMOUNT..=MAX_ITEM_AMOUNT).contains(&v)) {
            return Err(ApiError::validation(
                field,
                format!("must be -{MAX_ITEM_AMOUNT} to {MAX_ITEM_AMOUNT}"),
            ));
        }
    }
    let quantity = match b.quantity {
        None => 1,
        Some(q @ 1..=1_000_000) => i64::from(q),
        Some(_) => return Err(ApiError::validation("quantity", "must be 1 to 1000000")),
    };
    let price = optional_id("price", b.price.as_deref(), PriceId::parse)?;
    match (b.amount, b.unit_amount, price) {
        (Some(amount), None, None) => {
            if b.quantity.is_some() {
                return Err(ApiError::validation(
                    "quantity",
                    "goes with unit_amount or price, not amount",
                ));
            }
            Ok(ItemAmount::Amount(amount))
        }
        (None, Some(unit_amount), None) => Ok(ItemAmount::PerUnit {
            unit_amount,
            quantity,
        }),
        (None, None, Some(price)) => Ok(ItemAmount::Price { price, quantity }),
        (None, None, None) => Err(ApiError::validation(
            "amount",
            "is required (or unit_amount, or price)",
        )),
        _ => Err(ApiError::validation(
            "amount",
            "give one of amount, unit_amount and price",
        )),
    }
}

#[OpenApi]
impl InvoiceItemsApi {
    /// Add an invoice item
    ///
    /// A one-off charge (or credit, with a negative amount) for the customer: it waits for the
    /// customer's next invoice in its currency (a one-off invoice created for the customer, or
    /// a subscription's next invoice), or goes on the draft `invoice` (a one-off invoice's: a
    /// subscription's renewal kept a draft takes none, `invoice_not_editable`).
    #[oai(
        path = "/api/v1/invoice-items",
        method = "post",
        operation_id = "invoice_items.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<InvoiceItemIn>,
    ) -> Result<CreatedInvoiceItem, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let customer = CustomerId::parse(&b.customer)
            .map_err(|e| ApiError::validation("customer", e.to_string()))?;
        let amount = amount_of(&b)?;
        let currency = b
            .currency
            .as_deref()
            .map(Currency::parse)
            .transpose()
            .map_err(ApiError::invalid("currency"))?;
        let description = b
            .description
            .as_deref()
            .map(|d| invoice_text(d, true))
            .transpose()
            .map_err(ApiError::invalid("description"))?;
        let period = match (b.period_start, b.period_end) {
            (None, None) => None,
            (Some(start), Some(end)) if end >= start => Some(Period { start, end }),
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "period_end",
                    "must not be before period_start",
                ));
            }
            (Some(_), None) => {
                return Err(ApiError::validation(
                    "period_end",
                    "is required with period_start",
                ));
            }
            (None, Some(_)) => {
                return Err(ApiError::validation(
                    "period_start",
                    "is required with period_end",
                ));
            }
        };
        let invoice = optional_id("invoice", b.invoice.as_deref(), InvoiceId::parse)?;
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let row = service::create_item(
            &mut work,
            ctx.scope(),
            ItemSpec {
                customer,
                amount,
                currency,
                description: description.as_deref(),
                period,
                invoice,
                metadata: &metadata,
            },
        )
        .await?;
        let out = InvoiceItemOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedInvoiceItem::Created(Json(out)))
    }

    /// List invoice items
    ///
    /// Newest first; optionally of one customer or invoice, pending or not.
    #[oai(
        path = "/api/v1/invoice-items",
        method = "get",
        operation_id = "invoice_items.list",
        tag = "ApiTags::Billing"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only this customer's (`cus_…`).
        customer: Query<Option<String>>,
        /// Only those on this invoice (`in_…`).
        invoice: Query<Option<String>>,
        /// `true`: only those waiting for an invoice; `false`: only those on one.
        pending: Query<Option<bool>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// An item id: return older items (the next page).
        starting_after: Query<Option<String>>,
        /// An item id: return newer items (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<InvoiceItemList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let filter = InvoiceItemFilter {
            customer: optional_id("customer", customer.0.as_deref(), CustomerId::parse)?,
            invoice: optional_id("invoice", invoice.0.as_deref(), InvoiceId::parse)?,
            pending: pending.0,
        };
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            InvoiceItemId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_items(&state.pool, ctx.scope(), filter, page).await?;
        Ok(Json(InvoiceItemList {
            data: page.items.into_iter().map(InvoiceItemOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get an invoice item
    #[oai(
        path = "/api/v1/invoice-items/:id",
        method = "get",
        operation_id = "invoice_items.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Invoice item id (`ii_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceItemOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = item_id(&id.0)?;
        Ok(Json(
            service::get_item(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }

    /// Delete an invoice item
    ///
    /// Only while no finalized invoice bills it: pending, or on a draft (whose totals follow).
    /// A subscription's prorations cannot be deleted, nor an item on a subscription's renewal
    /// kept a draft (`invoice_not_editable`).
    #[oai(
        path = "/api/v1/invoice-items/:id",
        method = "delete",
        operation_id = "invoice_items.delete",
        tag = "ApiTags::Billing"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        /// Invoice item id (`ii_…`).
        id: Path<String>,
    ) -> Result<Json<DeletedInvoiceItem>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = item_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::delete_item(&mut work, ctx.scope(), id).await?;
        Ok(Json(DeletedInvoiceItem {
            id: row.id.to_string(),
            object: "invoice_item".into(),
            deleted: true,
        }))
    }
}
