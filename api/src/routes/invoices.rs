//! Invoices (`/api/v1/invoices`) and their payments (`/api/v1/payments`).

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Path, Query},
    payload::{Binary, Html, Json},
};
use std::collections::HashMap;

use serde::Deserialize;
use shared::{
    domain::{
        invoice::{InvoiceStatus, invoice_text},
        money::Currency,
        subscription::CollectionMethod,
    },
    ids::{CouponId, CustomerId, InvoiceId, PaymentId, SubscriptionId},
    service::{
        invoice_documents,
        invoices::{self as service, InvoiceFilter, InvoiceView, PaymentRow},
        invoicing::{self, DraftSpec},
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

pub struct InvoicesApi;

pub struct PaymentsApi;

/// A line of an invoice.
#[derive(Debug, Object)]
pub struct InvoiceLineOut {
    /// Line id (`il_…`).
    pub id: String,
    /// Always `line_item`.
    pub object: String,
    pub description: String,
    /// The price it bills (`price_…`).
    #[oai(nullable)]
    pub price: Option<String>,
    /// The subscription item it bills (`si_…`).
    #[oai(nullable)]
    pub subscription_item: Option<String>,
    pub quantity: i64,
    /// The price of one unit, for prices that have one.
    #[oai(nullable)]
    pub unit_amount: Option<i64>,
    /// Minor units; negative for a credit.
    pub amount: i64,
    pub discount_amount: i64,
    pub proration: bool,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// What one tax rate took of an invoice, as the rate was when the invoice was made.
#[derive(Debug, Object, Deserialize)]
pub struct InvoiceTaxAmountOut {
    /// The rate (`txr_…`).
    pub tax_rate: String,
    pub display_name: String,
    pub percentage: f64,
    /// `true`: held inside the lines' amounts; `false`: added to the total.
    pub inclusive: bool,
    /// What it taxed: the lines after discounts, without inclusive taxes.
    pub taxable_amount: i64,
    pub amount: i64,
}

/// An invoice. Amounts are in minor units of `currency`.
#[derive(Debug, Object)]
pub struct InvoiceOut {
    /// Invoice id (`in_…`).
    pub id: String,
    /// Always `invoice`.
    pub object: String,
    /// The customer (`cus_…`).
    pub customer: String,
    /// The subscription it bills (`sub_…`).
    #[oai(nullable)]
    pub subscription: Option<String>,
    /// `draft`, `open`, `paid`, `void` or `uncollectible`.
    pub status: String,
    /// Assigned at finalization: the prefix and a number, sequential per prefix (`ACME-000123`).
    #[oai(nullable)]
    pub number: Option<String>,
    pub currency: String,
    /// `subscription_create`, `subscription_cycle`, `subscription_update` or `manual`.
    pub billing_reason: String,
    pub collection_method: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub lines: Vec<InvoiceLineOut>,
    /// The sum of the lines.
    pub subtotal: i64,
    pub discount: i64,
    /// All its tax, inclusive and exclusive; negative on an invoice that credits more than
    /// it charges (the tax of what it credits, given back).
    pub tax: i64,
    /// What each tax rate took.
    pub total_tax_amounts: Vec<InvoiceTaxAmountOut>,
    /// `subtotal − discount +` the exclusive taxes (inclusive ones are inside the lines).
    pub total: i64,
    /// The customer's credit used.
    pub balance_applied: i64,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    /// What its credit notes add up to: never more than `total`.
    pub amount_credited: i64,
    /// Charges attempted so far.
    pub attempt_count: i32,
    #[oai(nullable)]
    pub due_date: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub finalized_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub paid_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub voided_at: Option<DateTime<Utc>>,
    /// Shown above the lines (one-off invoices).
    #[oai(nullable)]
    pub description: Option<String>,
    /// When it was last sent to the customer.
    #[oai(nullable)]
    pub sent_at: Option<DateTime<Utc>>,
    /// The coupon discounting a one-off invoice (`coupon_…`).
    #[oai(nullable)]
    pub coupon: Option<String>,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<InvoiceView> for InvoiceOut {
    fn from(v: InvoiceView) -> Self {
        let i = v.invoice;
        Self {
            id: i.id.to_string(),
            object: "invoice".into(),
            customer: i.customer_id.to_string(),
            subscription: i.subscription_id.map(|s| s.to_string()),
            status: i.status.as_str().into(),
            number: i.number,
            currency: i.currency,
            billing_reason: i.billing_reason,
            collection_method: i.collection_method,
            period_start: i.period_start,
            period_end: i.period_end,
            lines: v
                .lines
                .into_iter()
                .map(|l| InvoiceLineOut {
                    id: l.id.to_string(),
                    object: "line_item".into(),
                    description: l.description,
                    price: l.price_id.map(|p| p.to_string()),
                    subscription_item: l.subscription_item_id.map(|s| s.to_string()),
                    quantity: l.quantity,
                    unit_amount: l.unit_amount,
                    amount: l.amount,
                    discount_amount: l.discount_amount,
                    proration: l.proration,
                    period_start: l.period_start,
                    period_end: l.period_end,
                })
                .collect(),
            subtotal: i.subtotal,
            discount: i.discount,
            tax: i.tax,
            total_tax_amounts: serde_json::from_value(i.tax_amounts).unwrap_or_default(),
            total: i.total,
            balance_applied: i.balance_applied,
            amount_due: i.amount_due,
            amount_paid: i.amount_paid,
            amount_remaining: i.amount_remaining,
            amount_credited: i.amount_credited,
            attempt_count: i.attempt_count,
            due_date: i.due_date,
            finalized_at: i.finalized_at,
            paid_at: i.paid_at,
            voided_at: i.voided_at,
            description: i.description,
            sent_at: i.sent_at,
            coupon: i.coupon_id.map(|c| c.to_string()),
            metadata: i.metadata,
            livemode: i.livemode,
            created_at: i.created_at,
            updated_at: i.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct InvoiceList {
    pub data: Vec<InvoiceOut>,
    pub has_more: bool,
}

/// One attempt to charge an invoice.
#[derive(Debug, Object)]
pub struct PaymentOut {
    /// Payment id (`py_…`).
    pub id: String,
    /// Always `payment`.
    pub object: String,
    /// The invoice it pays (`in_…`).
    pub invoice: String,
    /// The customer (`cus_…`).
    pub customer: String,
    /// 1 for the first attempt on the invoice, then 2, 3…
    pub attempt: i32,
    pub amount: i64,
    pub currency: String,
    /// The platform's fee on it, in minor units.
    pub application_fee: i64,
    /// `pending`, `succeeded`, `failed` or `requires_action`.
    pub status: String,
    /// `sandbox` or `stripe`.
    pub gateway: String,
    /// The gateway's id for the charge.
    #[oai(nullable)]
    pub gateway_id: Option<String>,
    /// The card charged (`pm_…`).
    #[oai(nullable)]
    pub payment_method: Option<String>,
    /// Why it failed, such as `card_declined` or `insufficient_funds`.
    #[oai(nullable)]
    pub failure_code: Option<String>,
    #[oai(nullable)]
    pub failure_message: Option<String>,
    /// A decline that trying the same card again cannot fix.
    pub hard_decline: bool,
    /// What its refunds (pending or succeeded) add up to: never more than `amount`.
    pub amount_refunded: i64,
    /// Stripe's status of a dispute of it (`needs_response`, `under_review`, `won`, `lost`…).
    #[oai(nullable)]
    pub dispute_status: Option<String>,
    pub disputed_amount: i64,
    /// What of it no invoice needed (it came after the invoice was paid, voided or lowered),
    /// given to the customer as credit; never refunded as well.
    pub credited_to_balance: i64,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<PaymentRow> for PaymentOut {
    fn from(p: PaymentRow) -> Self {
        Self {
            id: p.id.to_string(),
            object: "payment".into(),
            invoice: p.invoice_id.to_string(),
            customer: p.customer_id.to_string(),
            attempt: p.attempt,
            amount: p.amount,
            currency: p.currency,
            application_fee: p.application_fee,
            status: p.status.as_str().into(),
            gateway: p.gateway,
            gateway_id: p.gateway_id,
            payment_method: p.payment_method_id.map(|m| m.to_string()),
            failure_code: p.failure_code,
            failure_message: p.failure_message,
            hard_decline: p.hard_decline,
            amount_refunded: p.amount_refunded,
            dispute_status: p.dispute_status,
            disputed_amount: p.disputed_amount,
            credited_to_balance: p.credited_to_balance,
            livemode: p.livemode,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct PaymentList {
    pub data: Vec<PaymentOut>,
    pub has_more: bool,
}

/// A one-off invoice to draft for a customer.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct InvoiceIn {
    /// The customer billed (`cus_…`).
    pub customer: String,
    /// Defaults to the customer's; it must be the customer's.
    #[oai(nullable)]
    pub currency: Option<String>,
    /// `charge_automatically` (default: the first charge is queued at finalization) or
    /// `send_invoice`.
    #[oai(nullable)]
    pub collection_method: Option<String>,
    /// With `send_invoice`: days from finalization until it is due, 0 to 365 (default 30).
    #[oai(nullable)]
    pub days_until_due: Option<u32>,
    /// Shown above the lines; at most 500 characters.
    #[oai(nullable)]
    pub description: Option<String>,
    /// A coupon to redeem on it (`coupon_…`): it discounts the invoice's charges.
    #[oai(nullable)]
    pub coupon: Option<String>,
    /// `include` (default): take the customer's pending invoice items in the invoice's
    /// currency; `exclude`: start empty.
    #[oai(nullable)]
    pub pending_invoice_items_behavior: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

#[derive(ApiResponse)]
pub enum CreatedInvoice {
    /// The draft was created.
    #[oai(status = 201)]
    Created(Json<InvoiceOut>),
}

#[derive(Debug, Object)]
pub struct DeletedInvoice {
    pub id: String,
    /// Always `invoice`.
    pub object: String,
    /// Always `true`.
    pub deleted: bool,
}

#[derive(ApiResponse)]
pub enum PaymentRequested {
    /// The charge is queued; the invoice's `attempt_count` and status change when it is made.
    #[oai(status = 202)]
    Accepted(Json<InvoiceOut>),
}

#[derive(ApiResponse)]
pub enum InvoicePdf {
    /// The invoice as a PDF document.
    #[oai(status = 200, content_type = "application/pdf")]
    Pdf(Binary<Vec<u8>>),
}

fn invoice_id(raw: &str) -> Result<InvoiceId, ApiError> {
    InvoiceId::parse(raw).map_err(|_| ApiError::not_found("invoice"))
}

#[OpenApi]
impl InvoicesApi {
    /// Create a one-off invoice
    ///
    /// A draft for the customer, holding its pending invoice items (unless told otherwise);
    /// add more with `POST /api/v1/invoice-items` and `invoice`. It owes nothing until it is
    /// finalized.
    #[oai(
        path = "/api/v1/invoices",
        method = "post",
        operation_id = "invoices.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<InvoiceIn>,
    ) -> Result<CreatedInvoice, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let customer = CustomerId::parse(&b.customer)
            .map_err(|e| ApiError::validation("customer", e.to_string()))?;
        let currency = b
            .currency
            .as_deref()
            .map(Currency::parse)
            .transpose()
            .map_err(ApiError::invalid("currency"))?;
        let collection_method = match b.collection_method.as_deref() {
            None => CollectionMethod::ChargeAutomatically,
            Some(c) => CollectionMethod::parse(c).ok_or_else(|| {
                ApiError::validation(
                    "collection_method",
                    "must be charge_automatically or send_invoice",
                )
            })?,
        };
        if b.days_until_due.is_some_and(|d| d > 365) {
            return Err(ApiError::validation("days_until_due", "must be 0 to 365"));
        }
        let description = b
            .description
            .as_deref()
            .map(|d| invoice_text(d, false))
            .transpose()
            .map_err(ApiError::invalid("description"))?
            .filter(|d| !d.is_empty());
        let coupon = b
            .coupon
            .as_deref()
            .map(CouponId::parse)
            .transpose()
            .map_err(|e| ApiError::validation("coupon", e.to_string()))?;
        let include_pending = match b.pending_invoice_items_behavior.as_deref() {
            None | Some("include") => true,
            Some("exclude") => false,
            Some(_) => {
                return Err(ApiError::validation(
                    "pending_invoice_items_behavior",
                    "must be include or exclude",
                ));
            }
        };
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let view = invoicing::create_invoice(
            &mut work,
            ctx.scope(),
            DraftSpec {
                customer,
                currency,
                collection_method,
                days_until_due: b.days_until_due,
                description: description.as_deref(),
                coupon,
                include_pending,
                metadata: &metadata,
            },
        )
        .await?;
        let out = InvoiceOut::from(view);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedInvoice::Created(Json(out)))
    }

    /// Delete a draft invoice
    ///
    /// Only a draft; its items are pending again. A finalized invoice is voided instead. A
    /// subscription's renewal kept a draft for its grace period cannot be deleted
    /// (`invoice_not_editable`).
    #[oai(
        path = "/api/v1/invoices/:id",
        method = "delete",
        operation_id = "invoices.delete",
        tag = "ApiTags::Billing"
    )]
    async fn delete(
        &self,
        req: &Request,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Json<DeletedInvoice>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = invoice_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = invoicing::delete_draft(&mut work, ctx.scope(), id).await?;
        Ok(Json(DeletedInvoice {
            id: view.invoice.id.to_string(),
            object: "invoice".into(),
            deleted: true,
        }))
    }

    /// Finalize a draft invoice
    ///
    /// It gets its number, the customer's credit is applied, and it is owed (or paid, when
    /// nothing is due). Charged automatically, its first charge is queued.
    #[oai(
        path = "/api/v1/invoices/:id/finalize",
        method = "post",
        operation_id = "invoices.finalize",
        tag = "ApiTags::Billing"
    )]
    async fn finalize(
        &self,
        req: &Request,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = invoice_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = invoicing::finalize_invoice(&mut work, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }

    /// Send an invoice
    ///
    /// Records that the open invoice was sent (`sent_at`) and emits `invoice.sent`, which
    /// webhooks carry to whatever delivers it to the customer.
    #[oai(
        path = "/api/v1/invoices/:id/send",
        method = "post",
        operation_id = "invoices.send",
        tag = "ApiTags::Billing"
    )]
    async fn send(
        &self,
        req: &Request,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = invoice_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = invoicing::send_invoice(&mut work, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }

    /// List invoices
    ///
    /// Newest first; optionally of one customer or subscription, in one status.
    #[oai(
        path = "/api/v1/invoices",
        method = "get",
        operation_id = "invoices.list",
        tag = "ApiTags::Billing"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only this customer's (`cus_…`).
        customer: Query<Option<String>>,
        /// Only this subscription's (`sub_…`).
        subscription: Query<Option<String>>,
        /// Only those in this status.
        status: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// An invoice id: return older invoices (the next page).
        starting_after: Query<Option<String>>,
        /// An invoice id: return newer invoices (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<InvoiceList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let filter = InvoiceFilter {
            customer: optional_id("customer", customer.0.as_deref(), CustomerId::parse)?,
            subscription: optional_id(
                "subscription",
                subscription.0.as_deref(),
                SubscriptionId::parse,
            )?,
            status: status
                .0
                .as_deref()
                .map(|s| {
                    InvoiceStatus::parse(s)
                        .ok_or_else(|| ApiError::validation("status", "is not an invoice status"))
                })
                .transpose()?,
        };
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            InvoiceId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_invoices(&state.pool, ctx.scope(), filter, page).await?;
        Ok(Json(InvoiceList {
            data: page.items.into_iter().map(InvoiceOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get an invoice
    #[oai(
        path = "/api/v1/invoices/:id",
        method = "get",
        operation_id = "invoices.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = invoice_id(&id.0)?;
        Ok(Json(
            service::get_invoice(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }

    /// Get an invoice as a PDF
    ///
    /// The tenant's name, the customer, the number, the dates, the lines and the totals,
    /// rendered by the platform itself.
    #[oai(
        path = "/api/v1/invoices/:id/pdf",
        method = "get",
        operation_id = "invoices.pdf",
        tag = "ApiTags::Billing"
    )]
    async fn pdf(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<InvoicePdf, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = invoice_id(&id.0)?;
        let doc = invoice_documents::document(&state.pool, ctx.scope(), id).await?;
        Ok(InvoicePdf::Pdf(Binary(doc.pdf()?)))
    }

    /// Get an invoice as an HTML page
    ///
    /// The same as the PDF, as a page.
    #[oai(
        path = "/api/v1/invoices/:id/html",
        method = "get",
        operation_id = "invoices.html",
        tag = "ApiTags::Billing"
    )]
    async fn html(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Html<String>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = invoice_id(&id.0)?;
        let doc = invoice_documents::document(&state.pool, ctx.scope(), id).await?;
        Ok(Html(doc.html()?))
    }

    /// Pay an invoice
    ///
    /// Queues a charge of what remains to the customer's default payment method; the worker
    /// fleet makes it (once, however often this is called before it runs).
    #[oai(
        path = "/api/v1/invoices/:id/pay",
        method = "post",
        operation_id = "invoices.pay",
        tag = "ApiTags::Billing"
    )]
    async fn pay(
        &self,
        req: &Request,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<PaymentRequested, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = invoice_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = service::request_payment(&mut work, ctx.scope(), id).await?;
        Ok(PaymentRequested::Accepted(Json(view.into())))
    }

    /// Void an invoice
    ///
    /// Nothing is owed on it any more and it is never charged again; customer credit it used
    /// goes back to the customer. A charge waiting for the customer to authenticate is
    /// canceled first (`payment.canceled`); one otherwise in flight is waited for
    /// (`payment_in_progress`). A subscription `past_due` or `unpaid` whose latest invoice
    /// it is becomes `active` again (`customer.subscription.updated`), as when it is paid.
    #[oai(
        path = "/api/v1/invoices/:id/void",
        method = "post",
        operation_id = "invoices.void",
        tag = "ApiTags::Billing"
    )]
    async fn void(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = invoice_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        // A charge waiting for the customer to authenticate is canceled first.
        service::cancel_waiting_attempt(
            &state.pool,
            state.clock.as_ref(),
            &state.stripe,
            ctx.scope(),
            id,
        )
        .await?;
        let mut work = Work::begin(req).await?;
        let view = service::void_invoice(&mut work, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }

    /// Mark an invoice uncollectible
    ///
    /// Written off; it can still be paid or voided.
    #[oai(
        path = "/api/v1/invoices/:id/mark-uncollectible",
        method = "post",
        operation_id = "invoices.mark_uncollectible",
        tag = "ApiTags::Billing"
    )]
    async fn mark_uncollectible(
        &self,
        req: &Request,
        auth: Auth,
        /// Invoice id (`in_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = invoice_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = service::mark_uncollectible(&mut work, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }
}

#[OpenApi]
impl PaymentsApi {
    /// List payments
    ///
    /// Every attempt to charge an invoice, newest first; optionally of one invoice.
    #[oai(
        path = "/api/v1/payments",
        method = "get",
        operation_id = "payments.list",
        tag = "ApiTags::Billing"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only this invoice's (`in_…`).
        invoice: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A payment id: return older payments (the next page).
        starting_after: Query<Option<String>>,
        /// A payment id: return newer payments (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<PaymentList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let invoice = optional_id("invoice", invoice.0.as_deref(), InvoiceId::parse)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            PaymentId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_payments(&state.pool, ctx.scope(), invoice, page).await?;
        Ok(Json(PaymentList {
            data: page.items.into_iter().map(PaymentOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a payment
    #[oai(
        path = "/api/v1/payments/:id",
        method = "get",
        operation_id = "payments.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Payment id (`py_…`).
        id: Path<String>,
    ) -> Result<Json<PaymentOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = PaymentId::parse(&id.0).map_err(|_| ApiError::not_found("payment"))?;
        Ok(Json(
            service::get_payment(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }
}
