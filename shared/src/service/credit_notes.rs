//! Credit notes: money a finalized invoice no longer asks for, or gives back.
//!
//! - On an open (or uncollectible) invoice a note is `pre_payment`: it lowers what the invoice
//!   still owes, and an invoice left owing nothing is paid.
//! - On a paid invoice it is `post_payment`: its amount is refunded through the gateway,
//!   credited to the customer's balance, or marked as paid back outside the platform (the
//!   three add up to the amount; all credit by default).
//! - Under the invoice's lock, a note never credits a line for more than what is left of it,
//!   and an invoice's notes never add up to more than its total (a constraint backs it).
//!   Notes are numbered per invoice: `ACME-000123-CN1`, `-CN2`…
//! - A note's amount is its lines plus the invoice's tax on what they credit of the invoice's
//!   lines ([`crate::domain::tax::credited`]): notes that credit all of them give back all of its
//!   tax. Custom lines carry no tax.

use std::collections::HashMap;

use sqlx::PgPool;

use super::{
    ServiceError, ServiceResult,
    balance::{self, Why},
    events, invoices, refunds,
    refunds::RefundReason,
};
use crate::{
    db::{
        self,
        credit_notes::{CreditNoteLineRow, CreditNoteRow},
        pagination::{Page, PageRequest},
    },
    domain::{
        catalog::Metadata,
        invoice::{InvoiceStatus, InvoiceTransition},
        subscription::Transition,
    },
    ids::{CreditNoteId, CreditNoteLineId, CustomerId, InvoiceId, InvoiceLineId},
    tenancy::Scope,
    uow::UnitOfWork,
};

const WHAT: &str = "credit note";

crate::text_enum! {
    /// Why a credit note is issued (as Stripe names them).
    pub enum CreditReason {
        Duplicate = "duplicate",
        Fraudulent = "fraudulent",
        OrderChange = "order_change",
        ProductUnsatisfactory = "product_unsatisfactory",
    }
}

/// A line to credit: part or all (the default) of an invoice line, or a custom amount.
#[derive(Debug, Clone)]
pub enum NoteLine<'a> {
    /// All that is left of an invoice line, or `amount` of it; described as the line, or as
    /// `description` when given.
    Invoiced {
        line: InvoiceLineId,
        amount: Option<i64>,
        description: Option<&'a str>,
    },
    Custom {
        description: &'a str,
        amount: i64,
    },
}

/// Where a paid invoice's credit goes; `None` everywhere: all to the customer's balance.
#[derive(Debug, Clone, Copy, Default)]
pub struct Split {
    pub refund_amount: Option<i64>,
    pub credit_amount: Option<i64>,
    pub out_of_band_amount: Option<i64>,
}

#[derive(Debug)]
pub struct NoteSpec<'a> {
    pub invoice: InvoiceId,
    /// At least one line.
    pub lines: Vec<NoteLine<'a>>,
    pub reason: Option<CreditReason>,
    pub memo: Option<&'a str>,
    pub split: Split,
    pub metadata: &'a Metadata,
}

/// A credit note with its lines.
#[derive(Debug, Clone)]
pub struct CreditNoteView {
    pub note: CreditNoteRow,
    pub lines: Vec<CreditNoteLineRow>,
}

fn field(i: usize, name: &str) -> String {
    format!("lines[{i}].{name}")
}

/// An invoice's lines and what is left to credit of each (its amount after discount, less
/// what notes credited of it); `net`, what the invoice taxed (its lines after discounts), and
/// `credited`, what its notes credited of its lines so far.
pub(crate) struct LinesLeft {
    pub lines: Vec<db::invoices::LineRow>,
    pub left: HashMap<InvoiceLineId, i64>,
    pub net: i64,
    pub credited: i64,
}

/// Reads what is left to credit of `invoice` (see [`LinesLeft`]).
pub(crate) async fn lines_left(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: InvoiceId,
) -> ServiceResult<LinesLeft> {
    let too_much = || ServiceError::invalid("lines", "add up to too much");
    let lines = db::invoices::lines(uow.conn(), scope, &[invoice.as_uuid()]).await?;
    let mut left: HashMap<InvoiceLineId, i64> = lines
        .iter()
        .map(|l| (l.id, l.amount - l.discount_amount))
        .collect();
    let net = left
        .values()
        .try_fold(0i64, |sum, l| sum.checked_add(*l))
        .ok_or_else(too_much)?;
    let mut credited: i64 = 0;
    for (line, amount) in db::credit_notes::credited_per_line(uow.conn(), scope, invoice).await? {
        credited = credited.checked_add(amount).ok_or_else(too_much)?;
        if let Some(l) = left.get_mut(&line) {
            *l -= amount;
        }
    }
    Ok(LinesLeft {
        lines,
        left,
        net,
        credited,
    })
}

/// Issues a credit note against a finalized invoice.
pub async fn create_credit_note(
    uow: &mut UnitOfWork,
    scope: Scope,
    spec: NoteSpec<'_>,
) -> ServiceResult<CreditNoteView> {
    let unlocked = db::invoices::get(uow.conn(), scope, spec.invoice)
        .await
        .map_err(ServiceError::unknown("invoice", "invoice"))?;
    let mut invoice = invoices::lock_with_subscription(uow, scope, spec.invoice).await?;
    // A test clock's customer is credited at the clock's time.
    super::subscriptions::at_clock_time(uow, scope, unlocked.customer_id).await?;
    let now = uow.now();
    let pre_payment = match invoice.status {
        InvoiceStatus::Open | InvoiceStatus::Uncollectible => true,
        InvoiceStatus::Paid => false,
        other => {
            return Err(ServiceError::conflict(
                "invalid_invoice_status",
                format!("cannot credit an invoice that is {other}"),
            ));
        }
    };
    if spec.lines.is_empty() {
        return Err(ServiceError::invalid(
            "lines",
            "must hold at least one line",
        ));
    }
    let too_much = || ServiceError::invalid("lines", "add up to too much");
    let LinesLeft {
        lines: invoice_lines,
        mut left,
        net,
        credited: credited_before,
    } = lines_left(uow, scope, invoice.id).await?;
    let id = CreditNoteId::new();
    let mut lines = Vec::with_capacity(spec.lines.len());
    let mut subtotal: i64 = 0;
    let mut credited_lines: i64 = 0;
    for (i, l) in spec.lines.iter().enumerate() {
        let (invoice_line, description, amount) = match *l {
            NoteLine::Invoiced {
                line,
                amount,
                description,
            } => {
                let Some(source) = invoice_lines.iter().find(|x| x.id == line) else {
                    return Err(ServiceError::invalid(
                        field(i, "invoice_line"),
                        "is not a line of the invoice",
                    ));
                };
                let rest = left.get(&line).copied().unwrap_or(0);
                if rest <= 0 {
                    return Err(ServiceError::invalid(
                        field(i, "invoice_line"),
                        "has nothing left to credit",
                    ));
                }
                let amount = amount.unwrap_or(rest);
                if amount <= 0 || amount > rest {
                    return Err(ServiceError::invalid(
                        field(i, "amount"),
                        format!("must be 1 to what is left to credit of the line ({rest})"),
                    ));
                }
                left.insert(line, rest - amount);
                credited_lines = credited_lines.checked_add(amount).ok_or_else(too_much)?;
                let description =
                    description.map_or_else(|| source.description.clone(), str::to_owned);
                (Some(line), description, amount)
            }
            NoteLine::Custom {
                description,
                amount,
            } => {
                if amount <= 0 {
                    return Err(ServiceError::invalid(
                        field(i, "amount"),
                        "must be positive",
                    ));
                }
                (None, description.to_owned(), amount)
            }
        };
        subtotal = subtotal.checked_add(amount).ok_or_else(too_much)?;
        lines.push(CreditNoteLineRow {
            id: CreditNoteLineId::new(),
            credit_note_id: id,
            position: i32::try_from(i).map_err(ServiceError::internal)?,
            invoice_line_id: invoice_line,
            description,
            amount,
        });
    }
    // The invoice's tax on what the note credits of its lines (custom lines carry none).
    let (added_tax, tax, tax_amounts) = super::tax_rates::credited(
        &invoice.tax_amounts,
        net,
        credited_before,
        credited_before
            .checked_add(credited_lines)
            .ok_or_else(too_much)?,
    )?;
    let total = subtotal.checked_add(added_tax).ok_or_else(too_much)?;
    // Refunds made without a note count here too: together they never exceed the total.
    let creditable = invoice.total.max(0) - invoice.amount_credited;
    if total > creditable {
        return Err(ServiceError::invalid(
            "lines",
            format!(
                "come to {total} with their tax, more than is left to credit on the invoice \
                 ({creditable})"
            ),
        ));
    }
    let split = spec.split;
    let given = [
        split.refund_amount,
        split.credit_amount,
        split.out_of_band_amount,
    ];
    let (refund_amount, credit_amount, out_of_band_amount) = if pre_payment {
        if given.iter().any(Option::is_some) {
            return Err(ServiceError::invalid(
                "refund_amount",
                "applies only to a paid invoice: an open invoice's credit lowers what it owes",
            ));
        }
        if total > invoice.amount_remaining {
            return Err(ServiceError::invalid(
                "lines",
                format!(
                    "come to {total} with their tax, more than the invoice still owes ({})",
                    invoice.amount_remaining
                ),
            ));
        }
        invoices::refuse_while_in_flight(uow, scope, invoice.id).await?;
        (0, 0, 0)
    } else if given.iter().all(Option::is_none) {
        (0, total, 0)
    } else {
        let parts = (
            split.refund_amount.unwrap_or(0),
            split.credit_amount.unwrap_or(0),
            split.out_of_band_amount.unwrap_or(0),
        );
        if parts.0 < 0 || parts.1 < 0 || parts.2 < 0 {
            return Err(ServiceError::invalid(
                "refund_amount",
                "refund_amount, credit_amount and out_of_band_amount must not be negative",
            ));
        }
        if parts
            .0
            .checked_add(parts.1)
            .and_then(|s| s.checked_add(parts.2))
            != Some(total)
        {
            return Err(ServiceError::invalid(
                "refund_amount",
                format!(
                    "refund_amount, credit_amount and out_of_band_amount must add up to the \
                     note's amount ({total})"
                ),
            ));
        }
        parts
    };
    invoice.credit_note_count += 1;
    invoice.amount_credited += total;
    invoice.updated_at = now;
    let number = format!(
        "{}-CN{}",
        invoice.number.as_deref().unwrap_or("DRAFT"),
        invoice.credit_note_count
    );
    let mut note = CreditNoteRow {
        id,
        invoice_id: invoice.id,
        customer_id: invoice.customer_id,
        number,
        currency: invoice.currency.clone(),
        r#type: if pre_payment {
            "pre_payment"
        } else {
            "post_payment"
        }
        .to_owned(),
        amount: total,
        subtotal,
        tax,
        tax_amounts,
        refund_amount,
        credit_amount,
        out_of_band_amount,
        reason: spec.reason.map(|r| r.as_str().to_owned()),
        memo: spec.memo.map(str::to_owned),
        refund_id: None,
        metadata: spec.metadata.to_json(),
        livemode: scope.livemode(),
        created_at: now,
    };
    let mut paid_now = false;
    if pre_payment {
        invoice.amount_remaining -= total;
        if invoice.amount_remaining == 0 {
            invoice.status = invoice
                .status
                .apply(InvoiceTransition::Pay)
                .map_err(|e| ServiceError::conflict("invalid_invoice_status", e.to_string()))?;
            invoice.paid_at = Some(now);
            paid_now = true;
        }
    }
    db::invoices::save(uow.conn(), scope, &invoice).await?;
    if refund_amount > 0 {
        let payment = db::invoices::refundable_payments(uow.conn(), scope, invoice.id)
            .await?
            .into_iter()
            .find(|p| p.refundable() >= refund_amount)
            .ok_or_else(|| {
                ServiceError::invalid(
                    "refund_amount",
                    "is more than is left to refund of the invoice's payment",
                )
            })?;
        // The note exists before its refund names it.
        db::credit_notes::insert_note(uow.conn(), scope, &note, &lines).await?;
        let refund = refunds::start(
            uow,
            scope,
            &payment,
            refund_amount,
            Some(match spec.reason {
                Some(CreditReason::Duplicate) => RefundReason::Duplicate,
                Some(CreditReason::Fraudulent) => RefundReason::Fraudulent,
                _ => RefundReason::RequestedByCustomer,
            }),
            Some(id),
        )
        .await
        .map_err(|e| match e {
            ServiceError::Invalid { message, .. } => {
                ServiceError::invalid("refund_amount", message)
            }
            other => other,
        })?;
        db::credit_notes::set_refund(uow.conn(), scope, id, refund.id).await?;
        note.refund_id = Some(refund.id);
    } else {
        db::credit_notes::insert_note(uow.conn(), scope, &note, &lines).await?;
    }
    balance::record(
        uow,
        scope,
        invoice.customer_id,
        credit_amount,
        Why::CreditNote(invoice.id, id),
        None,
    )
    .await?;
    events::record(uow, scope, "credit_note.created", note.to_json(&lines)).await?;
    if paid_now {
        let invoice_lines = db::invoices::lines(uow.conn(), scope, &[invoice.id.as_uuid()]).await?;
        events::record(uow, scope, "invoice.paid", invoice.to_json(&invoice_lines)).await?;
        if let Some(sub) = invoice.subscription_id {
            invoices::transition_if_allowed(uow, scope, sub, Transition::InvoicePaid).await?;
        }
    }
    Ok(CreditNoteView { note, lines })
}

pub async fn get_credit_note(
    pool: &PgPool,
    scope: Scope,
    id: CreditNoteId,
) -> ServiceResult<CreditNoteView> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let note = db::credit_notes::get_note(&mut conn, scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let lines = db::credit_notes::note_lines(&mut *conn, scope, &[id.as_uuid()]).await?;
    Ok(CreditNoteView { note, lines })
}

pub async fn list_credit_notes(
    pool: &PgPool,
    scope: Scope,
    invoice: Option<InvoiceId>,
    customer: Option<CustomerId>,
    page: PageRequest,
) -> ServiceResult<Page<CreditNoteView>> {
    let page = db::credit_notes::list_notes(pool, scope, invoice, customer, page).await?;
    let ids: Vec<uuid::Uuid> = page.items.iter().map(|n| n.id.as_uuid()).collect();
    let mut lines: HashMap<CreditNoteId, Vec<CreditNoteLineRow>> = HashMap::new();
    for l in db::credit_notes::note_lines(pool, scope, &ids).await? {
        lines.entry(l.credit_note_id).or_default().push(l);
    }
    Ok(Page {
        has_more: page.has_more,
        items: page
            .items
            .into_iter()
            .map(|note| CreditNoteView {
                lines: lines.remove(&note.id).unwrap_or_default(),
                note,
            })
            .collect(),
    })
}
