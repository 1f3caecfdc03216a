//! Credit notes and their lines, refunds, and the customer balance ledger, per tenant and mode.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    ids::{
        BalanceTransactionId, CreditNoteId, CreditNoteLineId, CustomerId, InvoiceId, InvoiceLineId,
        PaymentId, RefundId,
    },
    tenancy::Scope,
};

// ---- the customer balance ledger ----

/// One change of a customer's credit balance, with the balance after it.
#[derive(Debug, Clone, FromRow)]
pub struct BalanceTransactionRow {
    pub id: BalanceTransactionId,
    pub customer_id: CustomerId,
    /// `adjustment`, `applied_to_invoice`, `unapplied_from_invoice`, `invoice_credit`,
    /// `credit_note`, `overpayment` or `refund_failed`.
    pub r#type: String,
    /// Positive: credit given; negative: credit used.
    pub amount: i64,
    pub ending_balance: i64,
    pub invoice_id: Option<InvoiceId>,
    pub credit_note_id: Option<CreditNoteId>,
    pub description: Option<String>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

const BALANCE_COLUMNS: &str = "id, customer_id, type, amount, ending_balance, invoice_id, \
    credit_note_id, description, livemode, created_at";

pub async fn insert_balance_transaction(
    conn: &mut PgConnection,
    scope: Scope,
    t: &BalanceTransactionRow,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO customer_balance_transactions (id, tenant_id, livemode, customer_id, type, \
         amount, ending_balance, invoice_id, credit_note_id, description, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(t.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(t.customer_id)
    .bind(&t.r#type)
    .bind(t.amount)
    .bind(t.ending_balance)
    .bind(t.invoice_id)
    .bind(t.credit_note_id)
    .bind(&t.description)
    .bind(t.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A customer's balance transactions, newest first.
pub async fn list_balance_transactions(
    pool: &PgPool,
    scope: Scope,
    customer: CustomerId,
    page: PageRequest,
) -> Result<Page<BalanceTransactionRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, BalanceTransactionRow>(sqlf!(
        "SELECT {BALANCE_COLUMNS} FROM customer_balance_transactions WHERE tenant_id = $1 \
         AND livemode = $2 AND customer_id = $3 AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

// ---- credit notes ----

#[derive(Debug, Clone, FromRow)]
pub struct CreditNoteRow {
    pub id: CreditNoteId,
    pub invoice_id: InvoiceId,
    pub customer_id: CustomerId,
    pub number: String,
    pub currency: String,
    /// `pre_payment` (reduced what the invoice owes) or `post_payment` (gave money back).
    pub r#type: String,
    /// What it credits: `subtotal` plus the exclusive part of `tax`.
    pub amount: i64,
    /// Its lines' amounts.
    pub subtotal: i64,
    /// The invoice's tax it gives back, inclusive and exclusive.
    pub tax: i64,
    /// That tax per rate of the invoice, as an invoice's `tax_amounts`.
    pub tax_amounts: serde_json::Value,
    pub refund_amount: i64,
    pub credit_amount: i64,
    pub out_of_band_amount: i64,
    pub reason: Option<String>,
    pub memo: Option<String>,
    pub refund_id: Option<RefundId>,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct CreditNoteLineRow {
    pub id: CreditNoteLineId,
    pub credit_note_id: CreditNoteId,
    pub position: i32,
    pub invoice_line_id: Option<InvoiceLineId>,
    pub description: String,
    pub amount: i64,
}

impl CreditNoteRow {
    /// The credit note as the API shows it (and as its events carry it).
    pub fn to_json(&self, lines: &[CreditNoteLineRow]) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "credit_note",
            "invoice": self.invoice_id.to_string(),
            "customer": self.customer_id.to_string(),
            "number": self.number,
            "currency": self.currency,
            "type": self.r#type,
            "amount": self.amount,
            "subtotal": self.subtotal,
            "tax": self.tax,
            "total_tax_amounts": self.tax_amounts,
            "refund_amount": self.refund_amount,
            "credit_amount": self.credit_amount,
            "out_of_band_amount": self.out_of_band_amount,
            "reason": self.reason,
            "memo": self.memo,
            "refund": self.refund_id.map(|r| r.to_string()),
            "lines": lines.iter().map(|l| serde_json::json!({
                "id": l.id.to_string(),
                "object": "credit_note_line",
                "invoice_line": l.invoice_line_id.map(|i| i.to_string()),
                "description": l.description,
                "amount": l.amount,
            })).collect::<Vec<_>>(),
            "metadata": self.metadata,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
        })
    }
}

const NOTE_COLUMNS: &str = "id, invoice_id, customer_id, number, currency, type, amount, \
    subtotal, tax, tax_amounts, refund_amount, credit_amount, out_of_band_amount, reason, memo, \
    refund_id, metadata, livemode, created_at";

const NOTE_LINE_COLUMNS: &str =
    "id, credit_note_id, position, invoice_line_id, description, amount";

pub async fn insert_note(
    conn: &mut PgConnection,
    scope: Scope,
    n: &CreditNoteRow,
    lines: &[CreditNoteLineRow],
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO credit_notes (id, tenant_id, livemode, invoice_id, customer_id, number, \
         currency, type, amount, refund_amount, credit_amount, out_of_band_amount, reason, memo, \
         refund_id, metadata, created_at, subtotal, tax, tax_amounts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20)",
    )
    .bind(n.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(n.invoice_id)
    .bind(n.customer_id)
    .bind(&n.number)
    .bind(&n.currency)
    .bind(&n.r#type)
    .bind(n.amount)
    .bind(n.refund_amount)
    .bind(n.credit_amount)
    .bind(n.out_of_band_amount)
    .bind(&n.reason)
    .bind(&n.memo)
    .bind(n.refund_id)
    .bind(&n.metadata)
    .bind(n.created_at)
    .bind(n.subtotal)
    .bind(n.tax)
    .bind(&n.tax_amounts)
    .execute(&mut *conn)
    .await?;
    for l in lines {
        sqlx::query(
            "INSERT INTO credit_note_lines (id, tenant_id, livemode, credit_note_id, position, \
             invoice_line_id, description, amount) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(l.id)
        .bind(scope.tenant_id())
        .bind(scope.livemode())
        .bind(l.credit_note_id)
        .bind(l.position)
        .bind(l.invoice_line_id)
        .bind(&l.description)
        .bind(l.amount)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Records the refund a note's `refund_amount` made.
pub async fn set_refund(
    conn: &mut PgConnection,
    scope: Scope,
    note: CreditNoteId,
    refund: RefundId,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE credit_notes SET refund_id = $4 WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(note)
    .bind(refund)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_note(
    conn: &mut PgConnection,
    scope: Scope,
    id: CreditNoteId,
) -> Result<CreditNoteRow, DbError> {
    sqlx::query_as::<_, CreditNoteRow>(sqlf!(
        "SELECT {NOTE_COLUMNS} FROM credit_notes WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// Credit notes of the mode, newest first, optionally of one invoice or customer.
pub async fn list_notes(
    pool: &PgPool,
    scope: Scope,
    invoice: Option<InvoiceId>,
    customer: Option<CustomerId>,
    page: PageRequest,
) -> Result<Page<CreditNoteRow>, DbError> {
    let (cond, order) = page.sql(5);
    let rows = sqlx::query_as::<_, CreditNoteRow>(sqlf!(
        "SELECT {NOTE_COLUMNS} FROM credit_notes WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::uuid IS NULL OR invoice_id = $3) AND ($4::uuid IS NULL OR customer_id = $4) \
         AND {cond} ORDER BY {order} LIMIT $6"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .bind(customer)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// The lines of some credit notes, in order.
pub async fn note_lines<'c, E>(
    conn: E,
    scope: Scope,
    notes: &[Uuid],
) -> Result<Vec<CreditNoteLineRow>, DbError>
where
    E: sqlx::PgExecutor<'c>,
{
    Ok(sqlx::query_as::<_, CreditNoteLineRow>(sqlf!(
        "SELECT {NOTE_LINE_COLUMNS} FROM credit_note_lines WHERE tenant_id = $1 \
         AND livemode = $2 AND credit_note_id = ANY($3) ORDER BY credit_note_id, position"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(notes)
    .fetch_all(conn)
    .await?)
}

/// What earlier credit notes credited of each line of an invoice.
pub async fn credited_per_line(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<Vec<(InvoiceLineId, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT l.invoice_line_id, sum(l.amount)::bigint FROM credit_note_lines l \
         JOIN credit_notes n ON n.id = l.credit_note_id \
         WHERE l.tenant_id = $1 AND l.livemode = $2 AND n.invoice_id = $3 \
         AND l.invoice_line_id IS NOT NULL GROUP BY l.invoice_line_id",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .fetch_all(conn)
    .await?)
}

// ---- refunds ----

crate::text_enum! {
    /// Where a refund stands.
    pub enum RefundStatus {
        /// Recorded; the gateway has not answered yet.
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct RefundRow {
    pub id: RefundId,
    pub payment_id: PaymentId,
    pub invoice_id: InvoiceId,
    pub customer_id: CustomerId,
    pub credit_note_id: Option<CreditNoteId>,
    pub amount: i64,
    pub currency: String,
    pub reason: Option<String>,
    pub status: RefundStatus,
    pub gateway: String,
    pub gateway_id: Option<String>,
    pub idempotency_key: String,
    pub failure_reason: Option<String>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl RefundRow {
    /// The refund as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "refund",
            "payment": self.payment_id.to_string(),
            "invoice": self.invoice_id.to_string(),
            "customer": self.customer_id.to_string(),
            "credit_note": self.credit_note_id.map(|c| c.to_string()),
            "amount": self.amount,
            "currency": self.currency,
            "reason": self.reason,
            "status": self.status.as_str(),
            "gateway": self.gateway,
            "gateway_id": self.gateway_id,
            "failure_reason": self.failure_reason,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const REFUND_COLUMNS: &str = "id, payment_id, invoice_id, customer_id, credit_note_id, amount, \
    currency, reason, status, gateway, gateway_id, idempotency_key, failure_reason, livemode, \
    created_at, updated_at";

pub async fn insert_refund(
    conn: &mut PgConnection,
    scope: Scope,
    r: &RefundRow,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO refunds (id, tenant_id, livemode, payment_id, invoice_id, customer_id, \
         credit_note_id, amount, currency, reason, status, gateway, gateway_id, idempotency_key, \
         failure_reason, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
    )
    .bind(r.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(r.payment_id)
    .bind(r.invoice_id)
    .bind(r.customer_id)
    .bind(r.credit_note_id)
    .bind(r.amount)
    .bind(&r.currency)
    .bind(&r.reason)
    .bind(r.status)
    .bind(&r.gateway)
    .bind(&r.gateway_id)
    .bind(&r.idempotency_key)
    .bind(&r.failure_reason)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund, locked until the transaction ends when `for_update`.
pub async fn get_refund(
    conn: &mut PgConnection,
    scope: Scope,
    id: RefundId,
    for_update: bool,
) -> Result<RefundRow, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, RefundRow>(sqlf!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3 {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// Records the gateway's answer.
pub async fn save_refund(
    conn: &mut PgConnection,
    scope: Scope,
    r: &RefundRow,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE refunds SET status = $4, gateway_id = $5, failure_reason = $6, updated_at = $7 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(r.id)
    .bind(r.status)
    .bind(&r.gateway_id)
    .bind(&r.failure_reason)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Refunds of the mode, newest first, optionally of one payment.
pub async fn list_refunds(
    pool: &PgPool,
    scope: Scope,
    payment: Option<PaymentId>,
    page: PageRequest,
) -> Result<Page<RefundRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, RefundRow>(sqlf!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::uuid IS NULL OR payment_id = $3) AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(payment)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// Adds `delta` to what a payment's refunds add up to (negative: a refund failed); the
/// database refuses more than the payment's amount.
pub async fn add_refunded(
    conn: &mut PgConnection,
    scope: Scope,
    payment: PaymentId,
    delta: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE payments SET amount_refunded = amount_refunded + $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(payment)
    .bind(delta)
    .execute(conn)
    .await?;
    Ok(())
}
