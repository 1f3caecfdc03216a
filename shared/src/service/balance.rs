//! The customer balance: credit in minor units of the customer's currency, applied to its next
//! invoices. Every change is a ledger row with the balance after it, written in the same unit of
//! work as the change ([`record`]); nothing else writes `customers.balance`.

use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events};
use crate::{
    db::{
        self,
        pagination::{Page, PageRequest},
    },
    ids::{BalanceTransactionId, CreditNoteId, CustomerId, InvoiceId},
    tenancy::Scope,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::credit_notes::BalanceTransactionRow;

/// What a ledger row says about why the balance changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Given or taken by the tenant.
    Adjustment,
    /// Credit used to pay an invoice at its finalization.
    AppliedToInvoice(InvoiceId),
    /// Credit that paid a voided invoice, given back.
    UnappliedFromInvoice(InvoiceId),
    /// An invoice whose credits outweighed its charges.
    InvoiceCredit(InvoiceId),
    /// A credit note's `credit_amount`.
    CreditNote(InvoiceId, CreditNoteId),
    /// A payment that landed on an invoice already paid or voided.
    Overpayment(InvoiceId),
    /// A credit note's refund that the gateway refused: the money is the customer's credit.
    RefundFailed(InvoiceId, CreditNoteId),
}

impl Why {
    fn kind(self) -> &'static str {
        match self {
            Why::Adjustment => "adjustment",
            Why::AppliedToInvoice(_) => "applied_to_invoice",
            Why::UnappliedFromInvoice(_) => "unapplied_from_invoice",
            Why::InvoiceCredit(_) => "invoice_credit",
            Why::CreditNote(..) => "credit_note",
            Why::Overpayment(_) => "overpayment",
            Why::RefundFailed(..) => "refund_failed",
        }
    }

    fn invoice(self) -> Option<InvoiceId> {
        match self {
            Why::Adjustment => None,
            Why::AppliedToInvoice(i)
            | Why::UnappliedFromInvoice(i)
            | Why::InvoiceCredit(i)
            | Why::CreditNote(i, _)
            | Why::Overpayment(i)
            | Why::RefundFailed(i, _) => Some(i),
        }
    }

    fn credit_note(self) -> Option<CreditNoteId> {
        match self {
            Why::CreditNote(_, n) | Why::RefundFailed(_, n) => Some(n),
            _ => None,
        }
    }
}

/// Adds `amount` to the customer's balance (negative: credit used) and writes the ledger row,
/// with `customer.balance_transaction.created`. Nothing happens for 0.
pub(crate) async fn record(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    amount: i64,
    why: Why,
    description: Option<&str>,
) -> ServiceResult<Option<BalanceTransactionRow>> {
    if amount == 0 {
        return Ok(None);
    }
    let now = uow.now();
    let ending = db::customers::adjust_balance(uow.conn(), scope, customer, amount, now).await?;
    let row = BalanceTransactionRow {
        id: BalanceTransactionId::new(),
        customer_id: customer,
        r#type: why.kind().to_owned(),
        amount,
        ending_balance: ending,
        invoice_id: why.invoice(),
        credit_note_id: why.credit_note(),
        description: description.map(str::to_owned),
        livemode: scope.livemode(),
        created_at: now,
    };
    db::credit_notes::insert_balance_transaction(uow.conn(), scope, &row).await?;
    events::record(
        uow,
        scope,
        "customer.balance_transaction.created",
        balance_json(&row),
    )
    .await?;
    Ok(Some(row))
}

/// A ledger row as the API shows it (and as its events carry it).
pub fn balance_json(t: &BalanceTransactionRow) -> serde_json::Value {
    serde_json::json!({
        "id": t.id.to_string(),
        "object": "customer_balance_transaction",
        "customer": t.customer_id.to_string(),
        "type": t.r#type,
        "amount": t.amount,
        "ending_balance": t.ending_balance,
        "invoice": t.invoice_id.map(|i| i.to_string()),
        "credit_note": t.credit_note_id.map(|c| c.to_string()),
        "description": t.description,
        "livemode": t.livemode,
        "created_at": db::api_time(t.created_at),
    })
}

/// Gives a customer credit (positive `amount`) or takes some back (negative), in the customer's
/// currency; the balance never goes below zero.
pub async fn adjust(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
    amount: i64,
    description: Option<&str>,
) -> ServiceResult<BalanceTransactionRow> {
    let c = db::customers::lock(uow.conn(), scope, customer)
        .await
        .map_err(ServiceError::not_found("customer"))?;
    if c.currency.is_none() {
        return Err(ServiceError::invalid(
            "amount",
            "needs the customer's currency: set it first",
        ));
    }
    if amount == 0 {
        return Err(ServiceError::invalid("amount", "must not be 0"));
    }
    if c.balance.checked_add(amount).is_none_or(|b| b < 0) {
        return Err(ServiceError::invalid(
            "amount",
            format!("would leave the balance below zero (it is {})", c.balance),
        ));
    }
    record(uow, scope, customer, amount, Why::Adjustment, description)
        .await?
        .ok_or_else(|| ServiceError::internal("a non-zero adjustment recorded nothing"))
}

pub async fn list_transactions(
    pool: &PgPool,
    scope: Scope,
    customer: CustomerId,
    page: PageRequest,
) -> ServiceResult<Page<BalanceTransactionRow>> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::customers::get(&mut conn, scope, customer)
        .await
        .map_err(ServiceError::not_found("customer"))?;
    drop(conn);
    Ok(db::credit_notes::list_balance_transactions(pool, scope, customer, page).await?)
}
