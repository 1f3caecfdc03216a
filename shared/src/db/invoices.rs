//! Invoices, their lines and their payments, per tenant and mode.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    domain::invoice::InvoiceStatus,
    ids::{
        CouponId, CustomerId, InvoiceId, InvoiceItemId, InvoiceLineId, PaymentId, PaymentMethodId,
        PriceId, SubscriptionId, SubscriptionItemId, TenantId,
    },
    tenancy::Scope,
};

#[derive(Debug, Clone, FromRow)]
pub struct InvoiceRow {
    pub id: InvoiceId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub customer_id: CustomerId,
    pub subscription_id: Option<SubscriptionId>,
    pub status: InvoiceStatus,
    pub number: Option<String>,
    pub currency: String,
    pub billing_reason: String,
    pub collection_method: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub subtotal: i64,
    pub discount: i64,
    pub tax: i64,
    pub total: i64,
    pub balance_applied: i64,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub amount_remaining: i64,
    pub attempt_count: i32,
    pub due_date: Option<DateTime<Utc>>,
    pub finalized_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Shown on the invoice above its lines (one-off invoices).
    pub description: Option<String>,
    /// When it was last sent to the customer.
    pub sent_at: Option<DateTime<Utc>>,
    /// A one-off invoice's: days from finalization until it is due (`send_invoice`).
    pub days_until_due: Option<i32>,
    /// A one-off invoice's coupon, discounting its lines.
    pub coupon_id: Option<CouponId>,
    /// What its credit notes add up to: never more than `total`.
    pub amount_credited: i64,
    /// How many credit notes it has (the next one is numbered after them).
    pub credit_note_count: i32,
    /// What each tax rate took: `[{tax_rate, display_name, percentage, inclusive,
    /// taxable_amount, amount}]`, as the rates were when the invoice was made.
    pub tax_amounts: serde_json::Value,
}

#[derive(Debug, Clone, FromRow)]
pub struct LineRow {
    pub id: InvoiceLineId,
    pub invoice_id: InvoiceId,
    pub position: i32,
    pub description: String,
    pub price_id: Option<PriceId>,
    pub subscription_item_id: Option<SubscriptionItemId>,
    pub quantity: i64,
    pub unit_amount: Option<i64>,
    pub amount: i64,
    pub discount_amount: i64,
    pub proration: bool,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

impl LineRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "line_item",
            "description": self.description,
            "price": self.price_id.map(|p| p.to_string()),
            "subscription_item": self.subscription_item_id.map(|p| p.to_string()),
            "quantity": self.quantity,
            "unit_amount": self.unit_amount,
            "amount": self.amount,
            "discount_amount": self.discount_amount,
            "proration": self.proration,
            "period_start": super::api_time(self.period_start),
            "period_end": super::api_time(self.period_end),
        })
    }
}

impl InvoiceRow {
    /// The invoice as the API shows it (and as its events carry it).
    pub fn to_json(&self, lines: &[LineRow]) -> serde_json::Value {
        let time = |t: Option<DateTime<Utc>>| t.map(super::api_time);
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "invoice",
            "customer": self.customer_id.to_string(),
            "subscription": self.subscription_id.map(|s| s.to_string()),
            "status": self.status.as_str(),
            "number": self.number,
            "currency": self.currency,
            "billing_reason": self.billing_reason,
            "collection_method": self.collection_method,
            "period_start": super::api_time(self.period_start),
            "period_end": super::api_time(self.period_end),
            "lines": lines.iter().map(LineRow::to_json).collect::<Vec<_>>(),
            "subtotal": self.subtotal,
            "discount": self.discount,
            "tax": self.tax,
            "total": self.total,
            "balance_applied": self.balance_applied,
            "amount_due": self.amount_due,
            "amount_paid": self.amount_paid,
            "amount_remaining": self.amount_remaining,
            "attempt_count": self.attempt_count,
            "due_date": time(self.due_date),
            "finalized_at": time(self.finalized_at),
            "paid_at": time(self.paid_at),
            "voided_at": time(self.voided_at),
            "description": self.description,
            "sent_at": time(self.sent_at),
            "coupon": self.coupon_id.map(|c| c.to_string()),
            "amount_credited": self.amount_credited,
            "total_tax_amounts": self.tax_amounts,
            "metadata": self.metadata,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, customer_id, subscription_id, status, number, \
    currency, billing_reason, collection_method, period_start, period_end, subtotal, discount, \
    tax, total, balance_applied, amount_due, amount_paid, amount_remaining, attempt_count, \
    due_date, finalized_at, paid_at, voided_at, metadata, created_at, updated_at, description, \
    sent_at, days_until_due, coupon_id, amount_credited, credit_note_count, \
    tax_amounts";

/// Inserts an invoice as the row describes it; `false` when the subscription already has its
/// invoice for that period (`invoices_subscription_period_key`): nothing is written then.
pub async fn insert(
    conn: &mut PgConnection,
    scope: Scope,
    i: &InvoiceRow,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "INSERT INTO invoices (id, tenant_id, livemode, customer_id, subscription_id, status, \
         number, currency, billing_reason, collection_method, period_start, period_end, subtotal, \
         discount, tax, total, balance_applied, amount_due, amount_paid, amount_remaining, \
         attempt_count, due_date, finalized_at, paid_at, voided_at, metadata, created_at, \
         updated_at, description, sent_at, days_until_due, coupon_id, tax_amounts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33) \
         ON CONFLICT (subscription_id, period_start) \
         WHERE billing_reason IN ('subscription_create', 'subscription_cycle') DO NOTHING",
    )
    .bind(i.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(i.customer_id)
    .bind(i.subscription_id)
    .bind(i.status)
    .bind(&i.number)
    .bind(&i.currency)
    .bind(&i.billing_reason)
    .bind(&i.collection_method)
    .bind(i.period_start)
    .bind(i.period_end)
    .bind(i.subtotal)
    .bind(i.discount)
    .bind(i.tax)
    .bind(i.total)
    .bind(i.balance_applied)
    .bind(i.amount_due)
    .bind(i.amount_paid)
    .bind(i.amount_remaining)
    .bind(i.attempt_count)
    .bind(i.due_date)
    .bind(i.finalized_at)
    .bind(i.paid_at)
    .bind(i.voided_at)
    .bind(&i.metadata)
    .bind(i.created_at)
    .bind(i.updated_at)
    .bind(&i.description)
    .bind(i.sent_at)
    .bind(i.days_until_due)
    .bind(i.coupon_id)
    .bind(&i.tax_amounts)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Writes what changes over an invoice's life (a draft's totals too); the row must be locked
/// ([`lock`]).
pub async fn save(conn: &mut PgConnection, scope: Scope, i: &InvoiceRow) -> Result<(), DbError> {
    let done = sqlx::query(
        "UPDATE invoices SET status = $3, number = $4, amount_paid = $5, amount_remaining = $6, \
         attempt_count = $7, due_date = $8, finalized_at = $9, paid_at = $10, voided_at = $11, \
         metadata = $12, updated_at = $13, subtotal = $15, discount = $16, tax = $17, \
         total = $18, balance_applied = $19, amount_due = $20, description = $21, sent_at = $22, \
         period_start = $23, period_end = $24, amount_credited = $25, credit_note_count = $26, \
         tax_amounts = $27 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $14",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(i.status)
    .bind(&i.number)
    .bind(i.amount_paid)
    .bind(i.amount_remaining)
    .bind(i.attempt_count)
    .bind(i.due_date)
    .bind(i.finalized_at)
    .bind(i.paid_at)
    .bind(i.voided_at)
    .bind(&i.metadata)
    .bind(i.updated_at)
    .bind(i.id)
    .bind(i.subtotal)
    .bind(i.discount)
    .bind(i.tax)
    .bind(i.total)
    .bind(i.balance_applied)
    .bind(i.amount_due)
    .bind(&i.description)
    .bind(i.sent_at)
    .bind(i.period_start)
    .bind(i.period_end)
    .bind(i.amount_credited)
    .bind(i.credit_note_count)
    .bind(&i.tax_amounts)
    .execute(conn)
    .await?;
    if done.rows_affected() == 0 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    scope: Scope,
    id: InvoiceId,
) -> Result<InvoiceRow, DbError> {
    one(conn, scope, id, false).await
}

/// Reads and locks an invoice until the transaction ends: changes to one take turns.
pub async fn lock(
    conn: &mut PgConnection,
    scope: Scope,
    id: InvoiceId,
) -> Result<InvoiceRow, DbError> {
    one(conn, scope, id, true).await
}

async fn one(
    conn: &mut PgConnection,
    scope: Scope,
    id: InvoiceId,
    for_update: bool,
) -> Result<InvoiceRow, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, InvoiceRow>(sqlf!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3 {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// The invoice of a subscription's period, if it was made.
pub async fn of_period(
    conn: &mut PgConnection,
    scope: Scope,
    subscription: SubscriptionId,
    period_start: DateTime<Utc>,
) -> Result<Option<InvoiceRow>, DbError> {
    Ok(sqlx::query_as::<_, InvoiceRow>(sqlf!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND livemode = $2 \
         AND subscription_id = $3 AND period_start = $4 \
         AND billing_reason IN ('subscription_create', 'subscription_cycle')"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(subscription)
    .bind(period_start)
    .fetch_optional(conn)
    .await?)
}

/// Filters of the invoice list.
#[derive(Debug, Clone, Copy, Default)]
pub struct InvoiceFilter {
    pub customer: Option<CustomerId>,
    pub subscription: Option<SubscriptionId>,
    pub status: Option<InvoiceStatus>,
}

/// Invoices of the mode, newest first.
pub async fn list(
    pool: &PgPool,
    scope: Scope,
    filter: InvoiceFilter,
    page: PageRequest,
) -> Result<Page<InvoiceRow>, DbError> {
    let (cond, order) = page.sql(6);
    let rows = sqlx::query_as::<_, InvoiceRow>(sqlf!(
        "SELECT {COLUMNS} FROM invoices WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::uuid IS NULL OR customer_id = $3) AND ($4::uuid IS NULL OR subscription_id = $4) \
         AND ($5::text IS NULL OR status = $5) AND {cond} ORDER BY {order} LIMIT $7"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(filter.customer)
    .bind(filter.subscription)
    .bind(filter.status)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn insert_lines(
    conn: &mut PgConnection,
    scope: Scope,
    lines: &[LineRow],
) -> Result<(), DbError> {
    if lines.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&LineRow) -> Option<Uuid>| lines.iter().map(f).collect::<Vec<_>>();
    let ids = col(|l| Some(l.id.as_uuid()));
    let invoices = col(|l| Some(l.invoice_id.as_uuid()));
    let prices = col(|l| l.price_id.map(|p| p.as_uuid()));
    let items = col(|l| l.subscription_item_id.map(|p| p.as_uuid()));
    let positions: Vec<i32> = lines.iter().map(|l| l.position).collect();
    let descriptions: Vec<&str> = lines.iter().map(|l| l.description.as_str()).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
    let units: Vec<Option<i64>> = lines.iter().map(|l| l.unit_amount).collect();
    let amounts: Vec<i64> = lines.iter().map(|l| l.amount).collect();
    let discounts: Vec<i64> = lines.iter().map(|l| l.discount_amount).collect();
    let prorations: Vec<bool> = lines.iter().map(|l| l.proration).collect();
    let starts: Vec<DateTime<Utc>> = lines.iter().map(|l| l.period_start).collect();
    let ends: Vec<DateTime<Utc>> = lines.iter().map(|l| l.period_end).collect();
    sqlx::query(
        "INSERT INTO invoice_lines (id, tenant_id, livemode, invoice_id, position, description, \
         price_id, subscription_item_id, quantity, unit_amount, amount, discount_amount, \
         proration, period_start, period_end) \
         SELECT u.id, $1, $2, u.invoice_id, u.position, u.description, u.price_id, u.item_id, \
         u.quantity, u.unit_amount, u.amount, u.discount, u.proration, u.period_start, \
         u.period_end \
         FROM unnest($3::uuid[], $4::uuid[], $5::int[], $6::text[], $7::uuid[], $8::uuid[], \
         $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[], $13::bool[], \
         $14::timestamptz[], $15::timestamptz[]) \
         AS u(id, invoice_id, position, description, price_id, item_id, quantity, unit_amount, \
         amount, discount, proration, period_start, period_end)",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(&ids)
    .bind(&invoices)
    .bind(&positions)
    .bind(&descriptions)
    .bind(&prices)
    .bind(&items)
    .bind(&quantities)
    .bind(&units)
    .bind(&amounts)
    .bind(&discounts)
    .bind(&prorations)
    .bind(&starts)
    .bind(&ends)
    .execute(conn)
    .await?;
    Ok(())
}

/// The lines of some invoices, in order.
pub async fn lines<'c, E>(conn: E, scope: Scope, invoices: &[Uuid]) -> Result<Vec<LineRow>, DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    Ok(sqlx::query_as::<_, LineRow>(
        "SELECT id, invoice_id, position, description, price_id, subscription_item_id, quantity, \
         unit_amount, amount, discount_amount, proration, period_start, period_end \
         FROM invoice_lines WHERE tenant_id = $1 AND livemode = $2 AND invoice_id = ANY($3) \
         ORDER BY invoice_id, position",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoices)
    .fetch_all(conn)
    .await?)
}

// ---- payments ----

crate::text_enum! {
    /// Where a payment attempt stands.
    pub enum PaymentStatus {
        /// Sent to the gateway, answer not recorded yet (at most one per invoice).
        Pending = "pending",
        Succeeded = "succeeded",
        Failed = "failed",
        /// The customer must act (3-D Secure).
        RequiresAction = "requires_action",
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct PaymentRow {
    pub id: PaymentId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub invoice_id: InvoiceId,
    pub customer_id: CustomerId,
    pub attempt: i32,
    pub amount: i64,
    pub currency: String,
    pub application_fee: i64,
    pub status: PaymentStatus,
    pub gateway: String,
    pub gateway_id: Option<String>,
    pub idempotency_key: String,
    pub payment_method_id: Option<PaymentMethodId>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub hard_decline: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// What its refunds (pending or succeeded) add up to: never more than `amount`.
    pub amount_refunded: i64,
    /// Stripe's status of a dispute of it (`needs_response`, `won`, `lost`…), if disputed.
    pub dispute_status: Option<String>,
    pub disputed_amount: i64,
    /// What of it no invoice needed, given to the customer as credit: never refunded too.
    pub credited_to_balance: i64,
}

impl PaymentRow {
    /// What can still be refunded of it.
    pub fn refundable(&self) -> i64 {
        self.amount - self.amount_refunded - self.credited_to_balance
    }
}

impl PaymentRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "payment",
            "invoice": self.invoice_id.to_string(),
            "customer": self.customer_id.to_string(),
            "attempt": self.attempt,
            "amount": self.amount,
            "currency": self.currency,
            "application_fee": self.application_fee,
            "status": self.status.as_str(),
            "gateway": self.gateway,
            "gateway_id": self.gateway_id,
            "payment_method": self.payment_method_id.map(|p| p.to_string()),
            "failure_code": self.failure_code,
            "failure_message": self.failure_message,
            "hard_decline": self.hard_decline,
            "amount_refunded": self.amount_refunded,
            "dispute_status": self.dispute_status,
            "disputed_amount": self.disputed_amount,
            "credited_to_balance": self.credited_to_balance,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const PAYMENT_COLUMNS: &str = "id, tenant_id, livemode, invoice_id, customer_id, attempt, amount, \
    currency, application_fee, status, gateway, gateway_id, idempotency_key, payment_method_id, \
    failure_code, failure_message, hard_decline, created_at, updated_at, amount_refunded, \
    dispute_status, disputed_amount, credited_to_balance";

pub async fn insert_payment(
    conn: &mut PgConnection,
    scope: Scope,
    p: &PaymentRow,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO payments (id, tenant_id, livemode, invoice_id, customer_id, attempt, amount, \
         currency, application_fee, status, gateway, gateway_id, idempotency_key, \
         payment_method_id, failure_code, failure_message, hard_decline, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19)",
    )
    .bind(p.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(p.invoice_id)
    .bind(p.customer_id)
    .bind(p.attempt)
    .bind(p.amount)
    .bind(&p.currency)
    .bind(p.application_fee)
    .bind(p.status)
    .bind(&p.gateway)
    .bind(&p.gateway_id)
    .bind(&p.idempotency_key)
    .bind(p.payment_method_id)
    .bind(&p.failure_code)
    .bind(&p.failure_message)
    .bind(p.hard_decline)
    .bind(p.created_at)
    .bind(p.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a gateway's answer on a pending attempt.
pub async fn save_payment(
    conn: &mut PgConnection,
    scope: Scope,
    p: &PaymentRow,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE payments SET status = $3, gateway_id = $4, failure_code = $5, \
         failure_message = $6, hard_decline = $7, updated_at = $8 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $9",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(p.status)
    .bind(&p.gateway_id)
    .bind(&p.failure_code)
    .bind(&p.failure_message)
    .bind(p.hard_decline)
    .bind(p.updated_at)
    .bind(p.id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The attempt of an invoice still in flight, if any: sent and unanswered (`pending`, at most
/// one), or else the latest waiting for the customer (`requires_action`).
pub async fn in_flight_payment(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<Option<PaymentRow>, DbError> {
    Ok(sqlx::query_as::<_, PaymentRow>(sqlf!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND livemode = $2 \
         AND invoice_id = $3 AND status IN ('pending', 'requires_action') \
         ORDER BY status = 'pending' DESC, attempt DESC LIMIT 1"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .fetch_optional(conn)
    .await?)
}

pub async fn get_payment(
    conn: &mut PgConnection,
    scope: Scope,
    id: PaymentId,
) -> Result<PaymentRow, DbError> {
    sqlx::query_as::<_, PaymentRow>(sqlf!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// Payments of the mode, newest first, optionally of one invoice.
pub async fn list_payments(
    pool: &PgPool,
    scope: Scope,
    invoice: Option<InvoiceId>,
    page: PageRequest,
) -> Result<Page<PaymentRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, PaymentRow>(sqlf!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::uuid IS NULL OR invoice_id = $3) AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// Records what Stripe says of a dispute of a payment.
pub async fn set_dispute(
    conn: &mut PgConnection,
    scope: Scope,
    payment: PaymentId,
    status: &str,
    amount: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE payments SET dispute_status = $4, disputed_amount = $5 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(payment)
    .bind(status)
    .bind(amount)
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts money of a payment given to the customer as credit.
pub async fn add_credited(
    conn: &mut PgConnection,
    scope: Scope,
    payment: PaymentId,
    amount: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE payments SET credited_to_balance = credited_to_balance + $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(payment)
    .bind(amount)
    .execute(conn)
    .await?;
    Ok(())
}

/// The succeeded payments of an invoice with something left to refund (and no dispute open or
/// lost: the card network holds that money), latest first, locked until the transaction ends.
pub async fn refundable_payments(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<Vec<PaymentRow>, DbError> {
    Ok(sqlx::query_as::<_, PaymentRow>(sqlf!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE tenant_id = $1 AND livemode = $2 \
         AND invoice_id = $3 AND status = 'succeeded' \
         AND amount_refunded + credited_to_balance < amount \
         AND (dispute_status IS NULL OR dispute_status IN ('won', 'warning_closed')) \
         ORDER BY attempt DESC FOR UPDATE"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .fetch_all(conn)
    .await?)
}

/// The highest attempt number of an invoice's payments (0 when none).
pub async fn last_attempt(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<i32, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(max(attempt), 0) FROM payments WHERE tenant_id = $1 AND livemode = $2 \
         AND invoice_id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .fetch_one(conn)
    .await?)
}

// ---- invoice items (lines waiting for an invoice, or on a draft) ----

/// An invoice item: a line for a customer's next invoice (the proration of a subscription
/// change, or a one-off charge or credit). Pending while `invoice_id` is `None`.
#[derive(Debug, Clone, FromRow)]
pub struct PendingLine {
    pub id: InvoiceItemId,
    pub customer_id: CustomerId,
    pub subscription_id: Option<SubscriptionId>,
    pub subscription_item_id: Option<SubscriptionItemId>,
    pub price_id: Option<PriceId>,
    pub description: String,
    pub currency: String,
    pub quantity: i64,
    pub unit_amount: Option<i64>,
    pub amount: i64,
    pub proration: bool,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub invoice_id: Option<InvoiceId>,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
}

impl PendingLine {
    /// The item as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "invoice_item",
            "customer": self.customer_id.to_string(),
            "subscription": self.subscription_id.map(|s| s.to_string()),
            "subscription_item": self.subscription_item_id.map(|s| s.to_string()),
            "price": self.price_id.map(|p| p.to_string()),
            "description": self.description,
            "currency": self.currency,
            "quantity": self.quantity,
            "unit_amount": self.unit_amount,
            "amount": self.amount,
            "proration": self.proration,
            "period_start": super::api_time(self.period_start),
            "period_end": super::api_time(self.period_end),
            "invoice": self.invoice_id.map(|i| i.to_string()),
            "metadata": self.metadata,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
        })
    }
}

const PENDING_COLUMNS: &str = "id, customer_id, subscription_id, subscription_item_id, price_id, \
    description, currency, quantity, unit_amount, amount, proration, period_start, period_end, \
    invoice_id, metadata, livemode, created_at";

pub async fn insert_pending(
    conn: &mut PgConnection,
    scope: Scope,
    lines: &[PendingLine],
) -> Result<(), DbError> {
    for l in lines {
        sqlx::query(
            "INSERT INTO invoice_items (id, tenant_id, livemode, customer_id, subscription_id, \
             subscription_item_id, price_id, description, quantity, unit_amount, amount, \
             proration, period_start, period_end, created_at, currency, invoice_id, metadata) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
             $18)",
        )
        .bind(l.id)
        .bind(scope.tenant_id())
        .bind(scope.livemode())
        .bind(l.customer_id)
        .bind(l.subscription_id)
        .bind(l.subscription_item_id)
        .bind(l.price_id)
        .bind(&l.description)
        .bind(l.quantity)
        .bind(l.unit_amount)
        .bind(l.amount)
        .bind(l.proration)
        .bind(l.period_start)
        .bind(l.period_end)
        .bind(l.created_at)
        .bind(&l.currency)
        .bind(l.invoice_id)
        .bind(&l.metadata)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The lines waiting for the subscription's next invoice, locked, oldest first.
pub async fn pending_of(
    conn: &mut PgConnection,
    scope: Scope,
    subscription: SubscriptionId,
) -> Result<Vec<PendingLine>, DbError> {
    Ok(sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE tenant_id = $1 AND livemode = $2 \
         AND subscription_id = $3 AND invoice_id IS NULL ORDER BY created_at, id FOR UPDATE"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(subscription)
    .fetch_all(conn)
    .await?)
}

/// A customer's pending one-off items in `currency` (not those of a subscription), locked,
/// oldest first.
pub async fn pending_of_customer(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
    currency: &str,
) -> Result<Vec<PendingLine>, DbError> {
    Ok(sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE tenant_id = $1 AND livemode = $2 \
         AND customer_id = $3 AND currency = $4 AND subscription_id IS NULL \
         AND invoice_id IS NULL ORDER BY created_at, id FOR UPDATE"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .bind(currency)
    .fetch_all(conn)
    .await?)
}

/// The items a draft invoice holds, oldest first.
pub async fn items_of(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<Vec<PendingLine>, DbError> {
    Ok(sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE tenant_id = $1 AND livemode = $2 \
         AND invoice_id = $3 ORDER BY created_at, id"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .fetch_all(conn)
    .await?)
}

/// An item, locked until the transaction ends when `for_update`.
pub async fn get_item(
    conn: &mut PgConnection,
    scope: Scope,
    id: InvoiceItemId,
    for_update: bool,
) -> Result<PendingLine, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3 {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// Filters of the invoice item list.
#[derive(Debug, Clone, Copy, Default)]
pub struct ItemFilter {
    pub customer: Option<CustomerId>,
    pub invoice: Option<InvoiceId>,
    /// `Some(true)`: only pending items; `Some(false)`: only invoiced ones.
    pub pending: Option<bool>,
}

/// Invoice items of the mode, newest first.
pub async fn list_items(
    pool: &PgPool,
    scope: Scope,
    filter: ItemFilter,
    page: PageRequest,
) -> Result<Page<PendingLine>, DbError> {
    let (cond, order) = page.sql(6);
    let rows = sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::uuid IS NULL OR customer_id = $3) AND ($4::uuid IS NULL OR invoice_id = $4) \
         AND ($5::bool IS NULL OR (invoice_id IS NULL) = $5) AND {cond} \
         ORDER BY {order} LIMIT $7"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(filter.customer)
    .bind(filter.invoice)
    .bind(filter.pending)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn delete_item(
    conn: &mut PgConnection,
    scope: Scope,
    id: InvoiceItemId,
) -> Result<(), DbError> {
    sqlx::query("DELETE FROM invoice_items WHERE tenant_id = $1 AND livemode = $2 AND id = $3")
        .bind(scope.tenant_id())
        .bind(scope.livemode())
        .bind(id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records that `invoice` bills the pending lines `ids`.
pub async fn mark_invoiced(
    conn: &mut PgConnection,
    scope: Scope,
    ids: &[InvoiceItemId],
    invoice: InvoiceId,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE invoice_items SET invoice_id = $4 WHERE tenant_id = $1 AND livemode = $2 \
         AND id = ANY($3) AND invoice_id IS NULL",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(ids.iter().map(|i| i.as_uuid()).collect::<Vec<_>>())
    .bind(invoice)
    .execute(conn)
    .await?;
    Ok(())
}

/// How an item of `price` is named by default: its product, and its nickname when it says
/// more.
pub async fn price_label(
    conn: &mut PgConnection,
    scope: Scope,
    price: PriceId,
) -> Result<Option<String>, DbError> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT pr.name, p.nickname FROM prices p JOIN products pr ON pr.id = p.product_id \
         WHERE p.tenant_id = $1 AND p.livemode = $2 AND p.id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(price)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(product, nickname)| {
        if nickname.is_empty() || nickname == product {
            product
        } else {
            format!("{product} ({nickname})")
        }
    }))
}

/// Makes the items of a deleted draft pending again (`one_off_only`: only those without a
/// subscription, the items of a voided invoice).
pub async fn release_items(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
    one_off_only: bool,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE invoice_items SET invoice_id = NULL WHERE tenant_id = $1 AND livemode = $2 \
         AND invoice_id = $3 AND (NOT $4 OR subscription_id IS NULL)",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .bind(one_off_only)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes an invoice's lines (a draft's, rewritten whenever its items change).
pub async fn delete_lines(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM invoice_lines WHERE tenant_id = $1 AND livemode = $2 AND invoice_id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a draft invoice (its lines must be gone).
pub async fn delete_draft(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM invoices WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         AND status = 'draft'",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .execute(conn)
    .await?;
    Ok(())
}

/// What was billed for a subscription item over the period that ends at `period_end`: each
/// line (invoiced and not void, or waiting for an invoice) as (amount after discount, start,
/// end).
pub async fn billed_for_item(
    conn: &mut PgConnection,
    scope: Scope,
    item: SubscriptionItemId,
    period_end: DateTime<Utc>,
) -> Result<Vec<(i64, DateTime<Utc>, DateTime<Utc>)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT l.amount - l.discount_amount, l.period_start, l.period_end \
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
         WHERE l.tenant_id = $1 AND l.livemode = $2 AND l.subscription_item_id = $3 \
         AND l.period_end = $4 AND i.status <> 'void' \
         UNION ALL \
         SELECT amount, period_start, period_end FROM invoice_items \
         WHERE tenant_id = $1 AND livemode = $2 AND subscription_item_id = $3 \
         AND period_end = $4 AND invoice_id IS NULL",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(item)
    .bind(period_end)
    .fetch_all(conn)
    .await?)
}

/// Whether a later change credited some line of this invoice: a proration line (waiting, or on
/// an invoice that is not void) for one of its subscription items over the same period end.
pub async fn credited_by_proration(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS ( \
           SELECT 1 FROM invoice_lines l \
           WHERE l.tenant_id = $1 AND l.livemode = $2 AND l.invoice_id = $3 \
           AND NOT l.proration AND l.subscription_item_id IS NOT NULL AND ( \
             EXISTS (SELECT 1 FROM invoice_items p WHERE p.tenant_id = $1 AND p.livemode = $2 \
                     AND p.subscription_item_id = l.subscription_item_id AND p.proration \
                     AND p.amount < 0 AND p.period_end = l.period_end AND p.invoice_id IS NULL) \
             OR EXISTS (SELECT 1 FROM invoice_lines p JOIN invoices i ON i.id = p.invoice_id \
                     WHERE p.tenant_id = $1 AND p.livemode = $2 \
                     AND p.subscription_item_id = l.subscription_item_id AND p.proration \
                     AND p.amount < 0 AND p.period_end = l.period_end AND i.status <> 'void')))",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .fetch_one(conn)
    .await?)
}
