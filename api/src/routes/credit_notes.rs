//! Credit notes (`/api/v1/credit-notes`) and refunds (`/api/v1/refunds`).

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
    domain::invoice::invoice_text,
    ids::{CreditNoteId, CustomerId, InvoiceId, InvoiceLineId, PaymentId, RefundId},
    service::{
        credit_notes::{self as service, CreditNoteView, CreditReason, NoteLine, NoteSpec, Split},
        refunds::{self, RefundReason, RefundRow},
    },
    tenancy::Permission,
};

use super::{
    ApiTags,
    dto::{metadata, optional_id, page_request},
    invoice_items::MAX_ITEM_AMOUNT,
    invoices::InvoiceTaxAmountOut,
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct CreditNotesApi;

pub struct RefundsApi;

/// A line to credit: an `invoice_line` (all that is left of it, or `amount`), or a custom line
/// with a `description` and an `amount`.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteLineIn {
    /// A line of the invoice (`il_…`).
    #[oai(nullable)]
    pub invoice_line: Option<String>,
    /// A custom line's text; not with `invoice_line`.
    #[oai(nullable)]
    pub description: Option<String>,
    /// Minor units, positive: at most what is left to credit of the invoice line.
    #[oai(nullable)]
    pub amount: Option<i64>,
}

/// A credit note to issue against a finalized invoice.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreditNoteIn {
    /// The invoice credited (`in_…`): open, uncollectible or paid.
    pub invoice: String,
    /// 1 to 100 lines; or give `amount`.
    #[oai(nullable)]
    pub lines: Option<Vec<CreditNoteLineIn>>,
    /// A single custom line of this amount (described by `memo`); not with `lines`.
    #[oai(nullable)]
    pub amount: Option<i64>,
    /// `duplicate`, `fraudulent`, `order_change` or `product_unsatisfactory`.
    #[oai(nullable)]
    pub reason: Option<String>,
    /// Shown on the note; at most 500 characters.
    #[oai(nullable)]
    pub memo: Option<String>,
    /// Paid invoices only: how much to refund to the card charged.
    #[oai(nullable)]
    pub refund_amount: Option<i64>,
    /// Paid invoices only: how much to credit to the customer's balance.
    #[oai(nullable)]
    pub credit_amount: Option<i64>,
    /// Paid invoices only: how much was paid back outside the platform. With
    /// `refund_amount` and `credit_amount` it adds up to the note's amount; none of them:
    /// all to the customer's balance.
    #[oai(nullable)]
    pub out_of_band_amount: Option<i64>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

#[derive(Debug, Object)]
pub struct CreditNoteLineOut {
    /// Credit note line id (`cnl_…`).
    pub id: String,
    /// Always `credit_note_line`.
    pub object: String,
    /// The invoice line it credits (`il_…`); `null` for a custom line.
    #[oai(nullable)]
    pub invoice_line: Option<String>,
    pub description: String,
    pub amount: i64,
}

/// A credit note. Amounts are in minor units of `currency`.
#[derive(Debug, Object)]
pub struct CreditNoteOut {
    /// Credit note id (`cn_…`).
    pub id: String,
    /// Always `credit_note`.
    pub object: String,
    pub invoice: String,
    pub customer: String,
    /// The invoice's number and the note's rank on it (`ACME-000123-CN1`).
    pub number: String,
    pub currency: String,
    /// `pre_payment` (lowered what the invoice owes) or `post_payment` (gave money back).
    pub r#type: String,
    /// What the note credits: its lines (`subtotal`) plus the exclusive tax on them.
    pub amount: i64,
    /// The sum of the lines.
    pub subtotal: i64,
    /// The invoice's tax the note gives back, inclusive and exclusive: the tax the invoice took
    /// on what the note credits of its lines (custom lines carry none).
    pub tax: i64,
    /// That tax per rate of the invoice (empty when the note credits none of its lines).
    pub total_tax_amounts: Vec<InvoiceTaxAmountOut>,
    pub refund_amount: i64,
    pub credit_amount: i64,
    pub out_of_band_amount: i64,
    #[oai(nullable)]
    pub reason: Option<String>,
    #[oai(nullable)]
    pub memo: Option<String>,
    /// The refund made for `refund_amount` (`re_…`).
    #[oai(nullable)]
    pub refund: Option<String>,
    pub lines: Vec<CreditNoteLineOut>,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

impl From<CreditNoteView> for CreditNoteOut {
    fn from(v: CreditNoteView) -> Self {
        let n = v.note;
        Self {
            id: n.id.to_string(),
            object: "credit_note".into(),
            invoice: n.invoice_id.to_string(),
            customer: n.customer_id.to_string(),
            number: n.number,
            currency: n.currency,
            r#type: n.r#type,
            amount: n.amount,
            subtotal: n.subtotal,
            tax: n.tax,
            total_tax_amounts: serde_json::from_value(n.tax_amounts).unwrap_or_default(),
            refund_amount: n.refund_amount,
            credit_amount: n.credit_amount,
            out_of_band_amount: n.out_of_band_amount,
            reason: n.reason,
            memo: n.memo,
            refund: n.refund_id.map(|r| r.to_string()),
            lines: v
                .lines
                .into_iter()
                .map(|l| CreditNoteLineOut {
                    id: l.id.to_string(),
                    object: "credit_note_line".into(),
                    invoice_line: l.invoice_line_id.map(|i| i.to_string()),
                    description: l.description,
                    amount: l.amount,
                })
                .collect(),
            metadata: n.metadata,
            livemode: n.livemode,
            created_at: n.created_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct CreditNoteList {
    pub data: Vec<CreditNoteOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedCreditNote {
    /// The credit note was issued.
    #[oai(status = 201)]
    Created(Json<CreditNoteOut>),
}

/// A refund of a succeeded payment.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RefundIn {
    /// The payment refunded (`py_…`).
    pub payment: String,
    /// Minor units; default: all that is left to refund of the payment.
    #[oai(nullable)]
    pub amount: Option<i64>,
    /// `duplicate`, `fraudulent` or `requested_by_customer`.
    #[oai(nullable)]
    pub reason: Option<String>,
}

/// A refund: `pending` until the gateway answers (the worker fleet asks it), then `succeeded`
/// or `failed`.
#[derive(Debug, Object)]
pub struct RefundOut {
    /// Refund id (`re_…`).
    pub id: String,
    /// Always `refund`.
    pub object: String,
    pub payment: String,
    pub invoice: String,
    pub customer: String,
    /// The credit note that asked for it (`cn_…`).
    #[oai(nullable)]
    pub credit_note: Option<String>,
    pub amount: i64,
    pub currency: String,
    #[oai(nullable)]
    pub reason: Option<String>,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// `sandbox` or `stripe`: the gateway that took the payment.
    pub gateway: String,
    #[oai(nullable)]
    pub gateway_id: Option<String>,
    #[oai(nullable)]
    pub failure_reason: Option<String>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<RefundRow> for RefundOut {
    fn from(r: RefundRow) -> Self {
        Self {
            id: r.id.to_string(),
            object: "refund".into(),
            payment: r.payment_id.to_string(),
            invoice: r.invoice_id.to_string(),
            customer: r.customer_id.to_string(),
            credit_note: r.credit_note_id.map(|c| c.to_string()),
            amount: r.amount,
            currency: r.currency,
            reason: r.reason,
            status: r.status.as_str().into(),
            gateway: r.gateway,
            gateway_id: r.gateway_id,
            failure_reason: r.failure_reason,
            livemode: r.livemode,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct RefundList {
    pub data: Vec<RefundOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedRefund {
    /// The refund is recorded and queued; its status changes when the gateway answers.
    #[oai(status = 202)]
    Accepted(Json<RefundOut>),
}

fn amount_in(field: &str, v: Option<i64>) -> Result<Option<i64>, ApiError> {
    match v {
        Some(a) if !(1..=MAX_ITEM_AMOUNT).contains(&a) => Err(ApiError::validation(
            field,
            format!("must be 1 to {MAX_ITEM_AMOUNT}"),
        )),
        v => Ok(v),
    }
}

fn share_in(field: &str, v: Option<i64>) -> Result<Option<i64>, ApiError> {
    match v {
        Some(a) if !(0..=MAX_ITEM_AMOUNT).contains(&a) => Err(ApiError::validation(
            field,
            format!("must be 0 to {MAX_ITEM_AMOUNT}"),
        )),
        v => Ok(v),
    }
}

#[OpenApi]
impl CreditNotesApi {
    /// Issue a credit note
    ///
    /// Against an open or uncollectible invoice it lowers what the invoice owes (an invoice
    /// left owing nothing is paid); against a paid one it refunds, credits the customer's
    /// balance or records money paid back outside. Never more than what is left to credit of
    /// a line, nor of the invoice's total.
    #[oai(
        path = "/api/v1/credit-notes",
        method = "post",
        operation_id = "credit_notes.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<CreditNoteIn>,
    ) -> Result<CreatedCreditNote, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let invoice = InvoiceId::parse(&b.invoice)
            .map_err(|e| ApiError::validation("invoice", e.to_string()))?;
        let memo = b
            .memo
            .as_deref()
            .map(|m| invoice_text(m, false))
            .transpose()
            .map_err(ApiError::invalid("memo"))?
            .filter(|m| !m.is_empty());
        let mut descriptions = Vec::new();
        let lines_in = b.lines.as_deref().unwrap_or_default();
        for (i, l) in lines_in.iter().enumerate() {
            let d = l
                .description
                .as_deref()
                .map(|d| invoice_text(d, true))
                .transpose()
                .map_err(ApiError::invalid(&format!("lines[{i}].description")))?;
            descriptions.push(d);
        }
        let mut lines = Vec::new();
        for (i, l) in lines_in.iter().enumerate() {
            let amount = amount_in(&format!("lines[{i}].amount"), l.amount)?;
            let line = optional_id(
                &format!("lines[{i}].invoice_line"),
                l.invoice_line.as_deref(),
                InvoiceLineId::parse,
            )?;
            lines.push(match (line, descriptions[i].as_deref(), amount) {
                (Some(line), None, amount) => NoteLine::Invoiced {
                    line,
                    amount,
                    description: None,
                },
                (None, Some(description), Some(amount)) => NoteLine::Custom {
                    description,
                    amount,
                },
                (Some(_), Some(_), _) => {
                    return Err(ApiError::validation(
                        format!("lines[{i}].description"),
                        "goes with a custom line, not with invoice_line",
                    ));
                }
                (None, Some(_), None) => {
                    return Err(ApiError::validation(
                        format!("lines[{i}].amount"),
                        "is required for a custom line",
                    ));
                }
                (None, None, _) => {
                    return Err(ApiError::validation(
                        format!("lines[{i}].invoice_line"),
                        "is required (or a description and an amount)",
                    ));
                }
            });
        }
        match (b.lines.is_some(), amount_in("amount", b.amount)?) {
            (true, Some(_)) => {
                return Err(ApiError::validation("amount", "cannot be given with lines"));
            }
            (false, Some(amount)) => lines.push(NoteLine::Custom {
                description: memo.as_deref().unwrap_or("Credit"),
                amount,
            }),
            (false, None) => {
                return Err(ApiError::validation("lines", "are required (or amount)"));
            }
            (true, None) if lines.is_empty() || lines.len() > 100 => {
                return Err(ApiError::validation("lines", "must hold 1 to 100 lines"));
            }
            (true, None) => {}
        }
        let reason = b
            .reason
            .as_deref()
            .map(|r| {
                CreditReason::parse(r).ok_or_else(|| {
                    ApiError::validation(
                        "reason",
                        "must be duplicate, fraudulent, order_change or product_unsatisfactory",
                    )
                })
            })
            .transpose()?;
        let split = Split {
            refund_amount: share_in("refund_amount", b.refund_amount)?,
            credit_amount: share_in("credit_amount", b.credit_amount)?,
            out_of_band_amount: share_in("out_of_band_amount", b.out_of_band_amount)?,
        };
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let mut work = Work::begin(req).await?;
        let view = service::create_credit_note(
            &mut work,
            ctx.scope(),
            NoteSpec {
                invoice,
                lines,
                reason,
                memo: memo.as_deref(),
                split,
                metadata: &metadata,
            },
        )
        .await?;
        let out = CreditNoteOut::from(view);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedCreditNote::Created(Json(out)))
    }

    /// List credit notes
    ///
    /// Newest first; optionally of one invoice or customer.
    #[oai(
        path = "/api/v1/credit-notes",
        method = "get",
        operation_id = "credit_notes.list",
        tag = "ApiTags::Billing"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only this invoice's (`in_…`).
        invoice: Query<Option<String>>,
        /// Only this customer's (`cus_…`).
        customer: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A credit note id: return older notes (the next page).
        starting_after: Query<Option<String>>,
        /// A credit note id: return newer notes (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<CreditNoteList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let invoice = optional_id("invoice", invoice.0.as_deref(), InvoiceId::parse)?;
        let customer = optional_id("customer", customer.0.as_deref(), CustomerId::parse)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            CreditNoteId::parse(s).map(|id| id.as_uuid())
        })?;
        let page =
            service::list_credit_notes(&state.pool, ctx.scope(), invoice, customer, page).await?;
        Ok(Json(CreditNoteList {
            data: page.items.into_iter().map(CreditNoteOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a credit note
    #[oai(
        path = "/api/v1/credit-notes/:id",
        method = "get",
        operation_id = "credit_notes.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Credit note id (`cn_…`).
        id: Path<String>,
    ) -> Result<Json<CreditNoteOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = CreditNoteId::parse(&id.0).map_err(|_| ApiError::not_found("credit note"))?;
        Ok(Json(
            service::get_credit_note(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }
}

#[OpenApi]
impl RefundsApi {
    /// Refund a payment
    ///
    /// Part or all of a succeeded payment, through the gateway that took it; refunds never add
    /// up to more than the payment. The worker fleet makes the gateway call (once, however
    /// often it is retried).
    #[oai(
        path = "/api/v1/refunds",
        method = "post",
        operation_id = "refunds.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<RefundIn>,
    ) -> Result<CreatedRefund, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let payment = PaymentId::parse(&b.payment)
            .map_err(|e| ApiError::validation("payment", e.to_string()))?;
        let amount = amount_in("amount", b.amount)?;
        let reason = b
            .reason
            .as_deref()
            .map(|r| {
                RefundReason::parse(r).ok_or_else(|| {
                    ApiError::validation(
                        "reason",
                        "must be duplicate, fraudulent or requested_by_customer",
                    )
                })
            })
            .transpose()?;
        let mut work = Work::begin(req).await?;
        let row = refunds::create_refund(&mut work, ctx.scope(), payment, amount, reason).await?;
        let out = RefundOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedRefund::Accepted(Json(out)))
    }

    /// List refunds
    ///
    /// Newest first; optionally of one payment.
    #[oai(
        path = "/api/v1/refunds",
        method = "get",
        operation_id = "refunds.list",
        tag = "ApiTags::Billing"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only this payment's (`py_…`).
        payment: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A refund id: return older refunds (the next page).
        starting_after: Query<Option<String>>,
        /// A refund id: return newer refunds (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<RefundList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let payment = optional_id("payment", payment.0.as_deref(), PaymentId::parse)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            RefundId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = refunds::list_refunds(&state.pool, ctx.scope(), payment, page).await?;
        Ok(Json(RefundList {
            data: page.items.into_iter().map(RefundOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a refund
    #[oai(
        path = "/api/v1/refunds/:id",
        method = "get",
        operation_id = "refunds.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Refund id (`re_…`).
        id: Path<String>,
    ) -> Result<Json<RefundOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = RefundId::parse(&id.0).map_err(|_| ApiError::not_found("refund"))?;
        Ok(Json(
            refunds::get_refund(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }
}
