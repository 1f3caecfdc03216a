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
    super::owned_by(scope, i.tenant_id, i.livemode)?;
    Ok(insert_many(conn, &[i]).await? == 1)
}

/// Inserts invoices of any tenants (each in its row's tenant and mode) in one statement;
/// returns how many were written: a subscription's period that already has its invoice
/// (`invoices_subscription_period_key`) gets nothing.
pub async fn insert_many(conn: &mut PgConnection, rows: &[&InvoiceRow]) -> Result<u64, DbError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let uuid = |f: fn(&InvoiceRow) -> Option<Uuid>| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let int = |f: fn(&InvoiceRow) -> i64| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let time =
        |f: fn(&InvoiceRow) -> Option<DateTime<Utc>>| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let text = |f: for<'a> fn(&'a InvoiceRow) -> Option<&'a str>| {
        rows.iter().map(|i| f(i)).collect::<Vec<_>>()
    };
    let modes: Vec<bool> = rows.iter().map(|i| i.livemode).collect();
    let attempts: Vec<i32> = rows.iter().map(|i| i.attempt_count).collect();
    let days: Vec<Option<i32>> = rows.iter().map(|i| i.days_until_due).collect();
    let metadata: Vec<&serde_json::Value> = rows.iter().map(|i| &i.metadata).collect();
    let taxes: Vec<&serde_json::Value> = rows.iter().map(|i| &i.tax_amounts).collect();
    let done = sqlx::query(
        "INSERT INTO invoices (id, tenant_id, livemode, customer_id, subscription_id, status, \
         number, currency, billing_reason, collection_method, period_start, period_end, subtotal, \
         discount, tax, total, balance_applied, amount_due, amount_paid, amount_remaining, \
         attempt_count, due_date, finalized_at, paid_at, voided_at, metadata, created_at, \
         updated_at, description, sent_at, days_until_due, coupon_id, tax_amounts) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::uuid[], $5::uuid[], \
         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[], \
         $12::timestamptz[], $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], \
         $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::int[], \
         $22::timestamptz[], $23::timestamptz[], $24::timestamptz[], $25::timestamptz[], \
         $26::jsonb[], $27::timestamptz[], $28::timestamptz[], $29::text[], $30::timestamptz[], \
         $31::int[], $32::uuid[], $33::jsonb[]) \
         ON CONFLICT (subscription_id, period_start) \
         WHERE billing_reason IN ('subscription_create', 'subscription_cycle') DO NOTHING",
    )
    .bind(uuid(|i| Some(i.id.as_uuid())))
    .bind(uuid(|i| Some(i.tenant_id.as_uuid())))
    .bind(&modes)
    .bind(uuid(|i| Some(i.customer_id.as_uuid())))
    .bind(uuid(|i| i.subscription_id.map(|s| s.as_uuid())))
    .bind(text(|i| Some(i.status.as_str())))
    .bind(text(|i| i.number.as_deref()))
    .bind(text(|i| Some(&i.currency)))
    .bind(text(|i| Some(&i.billing_reason)))
    .bind(text(|i| Some(&i.collection_method)))
    .bind(time(|i| Some(i.period_start)))
    .bind(time(|i| Some(i.period_end)))
    .bind(int(|i| i.subtotal))
    .bind(int(|i| i.discount))
    .bind(int(|i| i.tax))
    .bind(int(|i| i.total))
    .bind(int(|i| i.balance_applied))
    .bind(int(|i| i.amount_due))
    .bind(int(|i| i.amount_paid))
    .bind(int(|i| i.amount_remaining))
    .bind(&attempts)
    .bind(time(|i| i.due_date))
    .bind(time(|i| i.finalized_at))
    .bind(time(|i| i.paid_at))
    .bind(time(|i| i.voided_at))
    .bind(&metadata)
    .bind(time(|i| Some(i.created_at)))
    .bind(time(|i| Some(i.updated_at)))
    .bind(text(|i| i.description.as_deref()))
    .bind(time(|i| i.sent_at))
    .bind(&days)
    .bind(uuid(|i| i.coupon_id.map(|c| c.as_uuid())))
    .bind(&taxes)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Writes what changes over an invoice's life (a draft's totals too); the row must be locked
/// ([`lock`]).
pub async fn save(conn: &mut PgConnection, scope: Scope, i: &InvoiceRow) -> Result<(), DbError> {
    super::owned_by(scope, i.tenant_id, i.livemode)?;
    save_many(conn, &[i]).await
}

/// Writes what changes over the life of invoices of any tenants (each in its row's tenant and
/// mode), in one statement; the rows must be locked ([`lock_many`]).
pub async fn save_many(conn: &mut PgConnection, rows: &[&InvoiceRow]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let uuid = |f: fn(&InvoiceRow) -> Uuid| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let int = |f: fn(&InvoiceRow) -> i64| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let int32 = |f: fn(&InvoiceRow) -> i32| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let time =
        |f: fn(&InvoiceRow) -> Option<DateTime<Utc>>| rows.iter().map(|i| f(i)).collect::<Vec<_>>();
    let text = |f: for<'a> fn(&'a InvoiceRow) -> Option<&'a str>| {
        rows.iter().map(|i| f(i)).collect::<Vec<_>>()
    };
    let json = |f: for<'a> fn(&'a InvoiceRow) -> &'a serde_json::Value| {
        rows.iter().map(|i| f(i)).collect::<Vec<_>>()
    };
    let modes: Vec<bool> = rows.iter().map(|i| i.livemode).collect();
    let done = sqlx::query(
        "UPDATE invoices i SET status = u.status, number = u.number, \
         amount_paid = u.amount_paid, amount_remaining = u.amount_remaining, \
         attempt_count = u.attempt_count, due_date = u.due_date, finalized_at = u.finalized_at, \
         paid_at = u.paid_at, voided_at = u.voided_at, metadata = u.metadata, \
         updated_at = u.updated_at, subtotal = u.subtotal, discount = u.discount, tax = u.tax, \
         total = u.total, balance_applied = u.balance_applied, amount_due = u.amount_due, \
         description = u.description, sent_at = u.sent_at, period_start = u.period_start, \
         period_end = u.period_end, amount_credited = u.amount_credited, \
         credit_note_count = u.credit_note_count, tax_amounts = u.tax_amounts \
         FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::text[], $5::text[], $6::bigint[], \
         $7::bigint[], $8::int[], $9::timestamptz[], $10::timestamptz[], $11::timestamptz[], \
         $12::timestamptz[], $13::jsonb[], $14::timestamptz[], $15::bigint[], $16::bigint[], \
         $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::text[], \
         $22::timestamptz[], $23::timestamptz[], $24::timestamptz[], $25::bigint[], $26::int[], \
         $27::jsonb[]) \
         AS u(id, tenant_id, livemode, status, number, amount_paid, amount_remaining, \
         attempt_count, due_date, finalized_at, paid_at, voided_at, metadata, updated_at, \
         subtotal, discount, tax, total, balance_applied, amount_due, description, sent_at, \
         period_start, period_end, amount_credited, credit_note_count, tax_amounts) \
         WHERE i.tenant_id = u.tenant_id AND i.livemode = u.livemode AND i.id = u.id",
    )
    .bind(uuid(|i| i.id.as_uuid()))
    .bind(uuid(|i| i.tenant_id.as_uuid()))
    .bind(&modes)
    .bind(text(|i| Some(i.status.as_str())))
    .bind(text(|i| i.number.as_deref()))
    .bind(int(|i| i.amount_paid))
    .bind(int(|i| i.amount_remaining))
    .bind(int32(|i| i.attempt_count))
    .bind(time(|i| i.due_date))
    .bind(time(|i| i.finalized_at))
    .bind(time(|i| i.paid_at))
    .bind(time(|i| i.voided_at))
    .bind(json(|i| &i.metadata))
    .bind(time(|i| Some(i.updated_at)))
    .bind(int(|i| i.subtotal))
    .bind(int(|i| i.discount))
    .bind(int(|i| i.tax))
    .bind(int(|i| i.total))
    .bind(int(|i| i.balance_applied))
    .bind(int(|i| i.amount_due))
    .bind(text(|i| i.description.as_deref()))
    .bind(time(|i| i.sent_at))
    .bind(time(|i| Some(i.period_start)))
    .bind(time(|i| Some(i.period_end)))
    .bind(int(|i| i.amount_credited))
    .bind(int32(|i| i.credit_note_count))
    .bind(json(|i| &i.tax_amounts))
    .execute(conn)
    .await?;
    if done.rows_affected() != rows.len() as u64 {
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

/// Invoices of any tenants (each key its tenant, mode and id), in id order; locked until the
/// transaction ends when `for_update` (in that order, as every statement locking many does).
/// Those not found are left out.
pub async fn get_many(
    conn: &mut PgConnection,
    keys: &[(Scope, InvoiceId)],
    for_update: bool,
) -> Result<Vec<InvoiceRow>, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, InvoiceRow>(sqlf!(
        "SELECT {COLUMNS} FROM invoices WHERE id = ANY($3) \
         AND (tenant_id, livemode, id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) ORDER BY id {lock}"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await?)
}

/// The invoice of a subscription's period, if it was made.
pub async fn of_period(
    conn: &mut PgConnection,
    scope: Scope,
    subscription: SubscriptionId,
    period_start: DateTime<Utc>,
) -> Result<Option<InvoiceRow>, DbError> {
    Ok(of_periods(conn, &[(scope, subscription, period_start)])
        .await?
        .pop())
}

/// The invoices made of periods of subscriptions of any tenants (each key its tenant and mode,
/// the subscription and the period's start); a period not invoiced has none.
pub async fn of_periods(
    conn: &mut PgConnection,
    keys: &[(Scope, SubscriptionId, DateTime<Utc>)],
) -> Result<Vec<InvoiceRow>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let subs: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    let starts: Vec<DateTime<Utc>> = keys.iter().map(|k| k.2).collect();
    Ok(sqlx::query_as::<_, InvoiceRow>(sqlf!(
        "SELECT {COLUMNS} FROM invoices WHERE subscription_id = ANY($3) \
         AND (tenant_id, livemode, subscription_id, period_start) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[], $4::timestamptz[])) \
         AND billing_reason IN ('subscription_create', 'subscription_cycle')"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&subs)
    .bind(&starts)
    .fetch_all(conn)
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
    let scoped: Vec<(Scope, &LineRow)> = lines.iter().map(|l| (scope, l)).collect();
    insert_lines_many(conn, &scoped).await
}

/// Inserts lines of invoices of any tenants (each with its invoice's tenant and mode) in one
/// statement.
pub async fn insert_lines_many(
    conn: &mut PgConnection,
    lines: &[(Scope, &LineRow)],
) -> Result<(), DbError> {
    if lines.is_empty() {
        return Ok(());
    }
    let (tenants, modes) = super::scope_columns(lines.iter().map(|l| &l.0));
    let col = |f: fn(&LineRow) -> Option<Uuid>| lines.iter().map(|l| f(l.1)).collect::<Vec<_>>();
    let int = |f: fn(&LineRow) -> i64| lines.iter().map(|l| f(l.1)).collect::<Vec<_>>();
    let ids = col(|l| Some(l.id.as_uuid()));
    let invoices = col(|l| Some(l.invoice_id.as_uuid()));
    let prices = col(|l| l.price_id.map(|p| p.as_uuid()));
    let items = col(|l| l.subscription_item_id.map(|p| p.as_uuid()));
    let positions: Vec<i32> = lines.iter().map(|l| l.1.position).collect();
    let descriptions: Vec<&str> = lines.iter().map(|l| l.1.description.as_str()).collect();
    let units: Vec<Option<i64>> = lines.iter().map(|l| l.1.unit_amount).collect();
    let prorations: Vec<bool> = lines.iter().map(|l| l.1.proration).collect();
    let starts: Vec<DateTime<Utc>> = lines.iter().map(|l| l.1.period_start).collect();
    let ends: Vec<DateTime<Utc>> = lines.iter().map(|l| l.1.period_end).collect();
    sqlx::query(
        "INSERT INTO invoice_lines (id, tenant_id, livemode, invoice_id, position, description, \
         price_id, subscription_item_id, quantity, unit_amount, amount, discount_amount, \
         proration, period_start, period_end) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::uuid[], $5::int[], \
         $6::text[], $7::uuid[], $8::uuid[], $9::bigint[], $10::bigint[], $11::bigint[], \
         $12::bigint[], $13::bool[], $14::timestamptz[], $15::timestamptz[])",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&modes)
    .bind(&invoices)
    .bind(&positions)
    .bind(&descriptions)
    .bind(&prices)
    .bind(&items)
    .bind(int(|l| l.quantity))
    .bind(&units)
    .bind(int(|l| l.amount))
    .bind(int(|l| l.discount_amount))
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
    let keys: Vec<(Scope, InvoiceId)> = invoices
        .iter()
        .map(|i| (scope, InvoiceId::from_uuid(*i)))
        .collect();
    lines_many(conn, &keys).await
}

/// The lines of invoices of any tenants (each key its tenant, mode and invoice), in order.
pub async fn lines_many<'c, E>(
    conn: E,
    keys: &[(Scope, InvoiceId)],
) -> Result<Vec<LineRow>, DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, LineRow>(
        "SELECT id, invoice_id, position, description, price_id, subscription_item_id, quantity, \
         unit_amount, amount, discount_amount, proration, period_start, period_end \
         FROM invoice_lines WHERE invoice_id = ANY($3) \
         AND (tenant_id, livemode, invoice_id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         ORDER BY invoice_id, position",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
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
    super::owned_by(scope, p.tenant_id, p.livemode)?;
    insert_payments(conn, &[p]).await
}

/// Inserts attempts of any tenants (each in its row's tenant and mode) in one statement.
pub async fn insert_payments(conn: &mut PgConnection, rows: &[&PaymentRow]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let uuid = |f: fn(&PaymentRow) -> Option<Uuid>| rows.iter().map(|p| f(p)).collect::<Vec<_>>();
    let int = |f: fn(&PaymentRow) -> i64| rows.iter().map(|p| f(p)).collect::<Vec<_>>();
    let text = |f: for<'a> fn(&'a PaymentRow) -> Option<&'a str>| {
        rows.iter().map(|p| f(p)).collect::<Vec<_>>()
    };
    let time = |f: fn(&PaymentRow) -> DateTime<Utc>| rows.iter().map(|p| f(p)).collect::<Vec<_>>();
    let modes: Vec<bool> = rows.iter().map(|p| p.livemode).collect();
    let attempts: Vec<i32> = rows.iter().map(|p| p.attempt).collect();
    let hard: Vec<bool> = rows.iter().map(|p| p.hard_decline).collect();
    sqlx::query(
        "INSERT INTO payments (id, tenant_id, livemode, invoice_id, customer_id, attempt, amount, \
         currency, application_fee, status, gateway, gateway_id, idempotency_key, \
         payment_method_id, failure_code, failure_message, hard_decline, created_at, updated_at) \
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::uuid[], $5::uuid[], \
         $6::int[], $7::bigint[], $8::text[], $9::bigint[], $10::text[], $11::text[], \
         $12::text[], $13::text[], $14::uuid[], $15::text[], $16::text[], $17::bool[], \
         $18::timestamptz[], $19::timestamptz[])",
    )
    .bind(uuid(|p| Some(p.id.as_uuid())))
    .bind(uuid(|p| Some(p.tenant_id.as_uuid())))
    .bind(&modes)
    .bind(uuid(|p| Some(p.invoice_id.as_uuid())))
    .bind(uuid(|p| Some(p.customer_id.as_uuid())))
    .bind(&attempts)
    .bind(int(|p| p.amount))
    .bind(text(|p| Some(&p.currency)))
    .bind(int(|p| p.application_fee))
    .bind(text(|p| Some(p.status.as_str())))
    .bind(text(|p| Some(&p.gateway)))
    .bind(text(|p| p.gateway_id.as_deref()))
    .bind(text(|p| Some(&p.idempotency_key)))
    .bind(uuid(|p| p.payment_method_id.map(|m| m.as_uuid())))
    .bind(text(|p| p.failure_code.as_deref()))
    .bind(text(|p| p.failure_message.as_deref()))
    .bind(&hard)
    .bind(time(|p| p.created_at))
    .bind(time(|p| p.updated_at))
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
    super::owned_by(scope, p.tenant_id, p.livemode)?;
    save_payments(conn, &[p]).await
}

/// Records gateways' answers on attempts of any tenants (each in its row's tenant and mode),
/// in one statement.
pub async fn save_payments(conn: &mut PgConnection, rows: &[&PaymentRow]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let text = |f: for<'a> fn(&'a PaymentRow) -> Option<&'a str>| {
        rows.iter().map(|p| f(p)).collect::<Vec<_>>()
    };
    let ids: Vec<Uuid> = rows.iter().map(|p| p.id.as_uuid()).collect();
    let tenants: Vec<Uuid> = rows.iter().map(|p| p.tenant_id.as_uuid()).collect();
    let modes: Vec<bool> = rows.iter().map(|p| p.livemode).collect();
    let hard: Vec<bool> = rows.iter().map(|p| p.hard_decline).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|p| p.updated_at).collect();
    sqlx::query(
        "UPDATE payments p SET status = u.status, gateway_id = u.gateway_id, \
         failure_code = u.failure_code, failure_message = u.failure_message, \
         hard_decline = u.hard_decline, updated_at = u.updated_at \
         FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::text[], $5::text[], $6::text[], \
         $7::text[], $8::bool[], $9::timestamptz[]) \
         AS u(id, tenant_id, livemode, status, gateway_id, failure_code, failure_message, \
         hard_decline, updated_at) \
         WHERE p.tenant_id = u.tenant_id AND p.livemode = u.livemode AND p.id = u.id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&modes)
    .bind(text(|p| Some(p.status.as_str())))
    .bind(text(|p| p.gateway_id.as_deref()))
    .bind(text(|p| p.failure_code.as_deref()))
    .bind(text(|p| p.failure_message.as_deref()))
    .bind(&hard)
    .bind(&times)
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
    Ok(in_flight_payments(conn, &[(scope, invoice)]).await?.pop())
}

/// The attempts in flight of invoices of any tenants (each key its tenant, mode and invoice),
/// at most one per invoice, as [`in_flight_payment`] finds it.
pub async fn in_flight_payments(
    conn: &mut PgConnection,
    keys: &[(Scope, InvoiceId)],
) -> Result<Vec<PaymentRow>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, PaymentRow>(sqlf!(
        "SELECT DISTINCT ON (p.invoice_id) {PAYMENT_COLUMNS} \
         FROM unnest($1::uuid[], $2::bool[], $3::uuid[]) AS u(t, l, inv) \
         JOIN payments p ON p.tenant_id = u.t AND p.livemode = u.l AND p.invoice_id = u.inv \
         WHERE p.status IN ('pending', 'requires_action') \
         ORDER BY p.invoice_id, p.status = 'pending' DESC, p.attempt DESC"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await?)
}

/// Attempts of any tenants (each key its tenant, mode and id); those not found are left out.
pub async fn get_payments(
    conn: &mut PgConnection,
    keys: &[(Scope, PaymentId)],
) -> Result<Vec<PaymentRow>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, PaymentRow>(sqlf!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE id = ANY($3) \
         AND (tenant_id, livemode, id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[]))"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
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
    Ok(last_attempts(conn, &[(scope, invoice)])
        .await?
        .pop()
        .map_or(0, |(_, n)| n))
}

/// The latest attempt number of each invoice of any tenants (each key its tenant, mode and
/// invoice) that has attempts.
pub async fn last_attempts(
    conn: &mut PgConnection,
    keys: &[(Scope, InvoiceId)],
) -> Result<Vec<(InvoiceId, i32)>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as(
        "SELECT p.invoice_id, max(p.attempt) \
         FROM unnest($1::uuid[], $2::bool[], $3::uuid[]) AS u(t, l, inv) \
         JOIN payments p ON p.tenant_id = u.t AND p.livemode = u.l AND p.invoice_id = u.inv \
         GROUP BY p.invoice_id",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
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
    pending_of_many(conn, &[(scope, subscription)]).await
}

/// The lines waiting for the next invoices of subscriptions of any tenants (each key its
/// tenant, mode and subscription), locked, oldest first.
pub async fn pending_of_many(
    conn: &mut PgConnection,
    keys: &[(Scope, SubscriptionId)],
) -> Result<Vec<PendingLine>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let subs: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE subscription_id = ANY($3) \
         AND (tenant_id, livemode, subscription_id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         AND invoice_id IS NULL ORDER BY created_at, id FOR UPDATE"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&subs)
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
    pending_of_customers(conn, &[(scope, customer, currency)]).await
}

/// The pending one-off items of customers of any tenants, each key its tenant, mode,
/// customer and currency (see [`pending_of_customer`]); locked, oldest first.
pub async fn pending_of_customers(
    conn: &mut PgConnection,
    keys: &[(Scope, CustomerId, &str)],
) -> Result<Vec<PendingLine>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let customers: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    let currencies: Vec<&str> = keys.iter().map(|k| k.2).collect();
    Ok(sqlx::query_as::<_, PendingLine>(sqlf!(
        "SELECT {PENDING_COLUMNS} FROM invoice_items WHERE customer_id = ANY($3) \
         AND (tenant_id, livemode, customer_id, currency) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[], $4::text[])) \
         AND subscription_id IS NULL AND invoice_id IS NULL ORDER BY created_at, id FOR UPDATE"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&customers)
    .bind(&currencies)
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
    let taken: Vec<(Scope, InvoiceItemId, InvoiceId)> =
        ids.iter().map(|i| (scope, *i, invoice)).collect();
    mark_invoiced_many(conn, &taken).await
}

/// Records which invoice bills each pending line (of any tenants: each its tenant and mode,
/// the item and the invoice), in one statement.
pub async fn mark_invoiced_many(
    conn: &mut PgConnection,
    taken: &[(Scope, InvoiceItemId, InvoiceId)],
) -> Result<(), DbError> {
    if taken.is_empty() {
        return Ok(());
    }
    let (tenants, modes) = super::scope_columns(taken.iter().map(|t| &t.0));
    let items: Vec<Uuid> = taken.iter().map(|t| t.1.as_uuid()).collect();
    let invoices: Vec<Uuid> = taken.iter().map(|t| t.2.as_uuid()).collect();
    sqlx::query(
        "UPDATE invoice_items i SET invoice_id = u.invoice_id \
         FROM unnest($1::uuid[], $2::bool[], $3::uuid[], $4::uuid[]) \
         AS u(tenant_id, livemode, id, invoice_id) \
         WHERE i.tenant_id = u.tenant_id AND i.livemode = u.livemode AND i.id = u.id \
         AND i.invoice_id IS NULL",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&items)
    .bind(&invoices)
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

/// A line billed for a subscription item: the invoice line it is (none while it waits for an
/// invoice), its amount after discount and the time it covers.
#[derive(Debug, Clone, FromRow)]
pub struct BilledLine {
    pub invoice_id: Option<InvoiceId>,
    pub line_id: Option<InvoiceLineId>,
    pub amount: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

/// What was billed for a subscription item over the period that ends at `period_end`: each
/// line, invoiced (on an invoice that is not void) or waiting for an invoice.
pub async fn billed_for_item(
    conn: &mut PgConnection,
    scope: Scope,
    item: SubscriptionItemId,
    period_end: DateTime<Utc>,
) -> Result<Vec<BilledLine>, DbError> {
    Ok(sqlx::query_as(
        "SELECT l.invoice_id, l.id AS line_id, l.amount - l.discount_amount AS amount, \
         l.period_start, l.period_end \
         FROM invoice_lines l JOIN invoices i ON i.id = l.invoice_id \
         WHERE l.tenant_id = $1 AND l.livemode = $2 AND l.subscription_item_id = $3 \
         AND l.period_end = $4 AND i.status <> 'void' \
         UNION ALL \
         SELECT NULL::uuid, NULL::uuid, amount, period_start, period_end FROM invoice_items \
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
