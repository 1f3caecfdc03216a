//! Customers of a tenant, per mode. A deleted customer keeps its row (`deleted_at`) and is
//! invisible to every read here.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    ids::{CustomerId, PaymentMethodId, TenantId, TestClockId},
    tenancy::Scope,
};

#[derive(Debug, Clone, FromRow)]
pub struct CustomerRow {
    pub id: CustomerId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub email: Option<String>,
    pub name: String,
    pub external_id: Option<String>,
    pub currency: Option<String>,
    pub timezone: String,
    pub address: Option<serde_json::Value>,
    pub tax_ids: serde_json::Value,
    pub tax_exempt: bool,
    pub invoice_prefix: Option<String>,
    pub metadata: serde_json::Value,
    /// Credit in minor units, applied to the customer's next invoices.
    pub balance: i64,
    /// The test clock whose time the customer lives in (test mode only; never changes).
    pub test_clock_id: Option<TestClockId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tax rates its invoices apply (empty: the tenant's default rates).
    pub tax_rate_ids: Vec<uuid::Uuid>,
    /// Its mirror on the tenant's connected Stripe account, and where its sync stands.
    pub stripe_customer_id: Option<String>,
    pub sync_status: crate::db::catalog_sync::SyncStatus,
}

impl CustomerRow {
    /// The customer as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "customer",
            "email": self.email,
            "name": self.name,
            "external_id": self.external_id,
            "currency": self.currency,
            "timezone": self.timezone,
            "address": self.address,
            "tax_ids": self.tax_ids,
            "tax_exempt": self.tax_exempt,
            "stripe_customer_id": self.stripe_customer_id,
            "sync_status": self.sync_status.as_str(),
            "tax_rates": self
                .tax_rate_ids
                .iter()
                .map(|t| crate::ids::TaxRateId::from_uuid(*t).to_string())
                .collect::<Vec<_>>(),
            "invoice_prefix": self.invoice_prefix,
            "metadata": self.metadata,
            "balance": self.balance,
            "test_clock": self.test_clock_id.map(|c| c.to_string()),
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, email, name, external_id, currency, timezone, \
    address, tax_ids, tax_exempt, invoice_prefix, metadata, balance, test_clock_id, created_at, \
    updated_at, tax_rate_ids, stripe_customer_id, sync_status";

/// A customer to create.
#[derive(Debug)]
pub struct NewCustomer<'a> {
    pub id: CustomerId,
    pub email: Option<&'a str>,
    pub name: &'a str,
    pub external_id: Option<&'a str>,
    pub currency: Option<&'a str>,
    pub timezone: &'a str,
    pub address: Option<&'a serde_json::Value>,
    pub tax_ids: &'a serde_json::Value,
    pub tax_exempt: bool,
    pub invoice_prefix: Option<&'a str>,
    pub metadata: &'a serde_json::Value,
    pub test_clock: Option<TestClockId>,
    pub tax_rates: &'a [uuid::Uuid],
}

pub async fn create(
    conn: &mut PgConnection,
    scope: Scope,
    c: NewCustomer<'_>,
    now: DateTime<Utc>,
) -> Result<CustomerRow, DbError> {
    sqlx::query_as::<_, CustomerRow>(sqlf!(
        "INSERT INTO customers (id, tenant_id, livemode, email, name, external_id, currency, \
         timezone, address, tax_ids, tax_exempt, invoice_prefix, metadata, test_clock_id, \
         created_at, updated_at, tax_rate_ids) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15, $14, $14, $16) \
         RETURNING {COLUMNS}"
    ))
    .bind(c.id)
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(c.email)
    .bind(c.name)
    .bind(c.external_id)
    .bind(c.currency)
    .bind(c.timezone)
    .bind(c.address)
    .bind(c.tax_ids)
    .bind(c.tax_exempt)
    .bind(c.invoice_prefix)
    .bind(c.metadata)
    .bind(now)
    .bind(c.test_clock)
    .bind(c.tax_rates)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Customers of the caller's mode, newest first; `search` is a pattern matched (ignoring case)
/// against the email, the name and the external id.
pub async fn list(
    pool: &PgPool,
    scope: Scope,
    search: Option<&str>,
    page: PageRequest,
) -> Result<Page<CustomerRow>, DbError> {
    let (cond, order) = page.sql(4);
    let pattern = search.map(super::contains_pattern);
    let rows = sqlx::query_as::<_, CustomerRow>(sqlf!(
        "SELECT {COLUMNS} FROM customers WHERE tenant_id = $1 AND livemode = $2 \
         AND deleted_at IS NULL \
         AND ($3::text IS NULL OR email ILIKE $3 OR name ILIKE $3 OR external_id ILIKE $3) \
         AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(pattern)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

pub async fn get(
    conn: &mut PgConnection,
    scope: Scope,
    id: CustomerId,
) -> Result<CustomerRow, DbError> {
    sqlx::query_as::<_, CustomerRow>(sqlf!(
        "SELECT {COLUMNS} FROM customers WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         AND deleted_at IS NULL"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// The customer, locked until the transaction ends (changes to its payment methods take turns).
pub async fn lock(
    conn: &mut PgConnection,
    scope: Scope,
    id: CustomerId,
) -> Result<CustomerRow, DbError> {
    sqlx::query_as::<_, CustomerRow>(sqlf!(
        "SELECT {COLUMNS} FROM customers WHERE tenant_id = $1 AND livemode = $2 AND id = $3          AND deleted_at IS NULL FOR UPDATE"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Customers of any tenants (each key its tenant, mode and id), locked until the transaction
/// ends, in id order (see [`lock`]); those not found (or deleted) are left out.
pub async fn lock_many(
    conn: &mut PgConnection,
    keys: &[(Scope, CustomerId)],
) -> Result<Vec<CustomerRow>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<uuid::Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, CustomerRow>(sqlf!(
        "SELECT {COLUMNS} FROM customers WHERE id = ANY($3) \
         AND (tenant_id, livemode, id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         AND deleted_at IS NULL ORDER BY id FOR UPDATE"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await?)
}

/// Changes to a customer; `None` leaves a field as it is. The optional fields are cleared with
/// `Some(None)`.
#[derive(Debug, Default)]
pub struct CustomerChanges<'a> {
    pub email: Option<Option<&'a str>>,
    pub name: Option<&'a str>,
    pub external_id: Option<Option<&'a str>>,
    pub currency: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub address: Option<Option<&'a serde_json::Value>>,
    pub tax_ids: Option<&'a serde_json::Value>,
    pub tax_exempt: Option<bool>,
    pub invoice_prefix: Option<Option<&'a str>>,
    pub metadata: Option<&'a serde_json::Value>,
    pub tax_rates: Option<&'a [uuid::Uuid]>,
}

pub async fn update(
    conn: &mut PgConnection,
    scope: Scope,
    id: CustomerId,
    c: CustomerChanges<'_>,
    now: DateTime<Utc>,
) -> Result<CustomerRow, DbError> {
    // For the clearable fields: `$n::bool` says whether to set, `$m` is the new value.
    sqlx::query_as::<_, CustomerRow>(sqlf!(
        "UPDATE customers SET \
         email = CASE WHEN $4 THEN $5 ELSE email END, \
         name = COALESCE($6, name), \
         external_id = CASE WHEN $7 THEN $8 ELSE external_id END, \
         currency = COALESCE($9, currency), \
         timezone = COALESCE($10, timezone), \
         address = CASE WHEN $11 THEN $12 ELSE address END, \
         tax_ids = COALESCE($13, tax_ids), \
         tax_exempt = COALESCE($14, tax_exempt), \
         invoice_prefix = CASE WHEN $15 THEN $16 ELSE invoice_prefix END, \
         metadata = COALESCE($17, metadata), \
         updated_at = $18, \
         tax_rate_ids = COALESCE($19, tax_rate_ids) \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 AND deleted_at IS NULL \
         RETURNING {COLUMNS}"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .bind(c.email.is_some())
    .bind(c.email.flatten())
    .bind(c.name)
    .bind(c.external_id.is_some())
    .bind(c.external_id.flatten())
    .bind(c.currency)
    .bind(c.timezone)
    .bind(c.address.is_some())
    .bind(c.address.flatten())
    .bind(c.tax_ids)
    .bind(c.tax_exempt)
    .bind(c.invoice_prefix.is_some())
    .bind(c.invoice_prefix.flatten())
    .bind(c.metadata)
    .bind(now)
    .bind(c.tax_rates)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Marks the customer deleted; returns it as it was.
pub async fn delete(
    conn: &mut PgConnection,
    scope: Scope,
    id: CustomerId,
    now: DateTime<Utc>,
) -> Result<CustomerRow, DbError> {
    sqlx::query_as::<_, CustomerRow>(sqlf!(
        "UPDATE customers SET deleted_at = $4, updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 AND deleted_at IS NULL \
         RETURNING {COLUMNS}"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// A customer's payment method as stored: what the gateway charges and what is shown.
#[derive(Debug, Clone, FromRow)]
pub struct PaymentMethodRow {
    pub id: PaymentMethodId,
    pub livemode: bool,
    pub customer_id: CustomerId,
    /// What the gateway charges; never shown.
    pub gateway_token: String,
    pub brand: String,
    pub last4: String,
    pub exp_month: i32,
    pub exp_year: i32,
    pub is_default: bool,
    pub created_at: DateTime<Utc>,
}

impl PaymentMethodRow {
    /// The payment method as the API shows it (and as its events carry it).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "payment_method",
            "customer_id": self.customer_id.to_string(),
            "type": "card",
            "card": {
                "brand": self.brand,
                "last4": self.last4,
                "exp_month": self.exp_month,
                "exp_year": self.exp_year,
            },
            "is_default": self.is_default,
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
        })
    }
}

const PM_COLUMNS: &str = "id, livemode, customer_id, gateway_token, brand, last4, exp_month, \
    exp_year, is_default, created_at";

/// A payment method to attach.
#[derive(Debug)]
pub struct NewPaymentMethod<'a> {
    pub id: PaymentMethodId,
    pub customer_id: CustomerId,
    pub gateway_token: &'a str,
    pub brand: &'a str,
    pub last4: &'a str,
    pub exp_month: i32,
    pub exp_year: i32,
}

/// Attaches a payment method; the customer's first one becomes its default.
pub async fn attach_payment_method(
    conn: &mut PgConnection,
    scope: Scope,
    p: NewPaymentMethod<'_>,
    now: DateTime<Utc>,
) -> Result<PaymentMethodRow, DbError> {
    sqlx::query_as::<_, PaymentMethodRow>(sqlf!(
        "INSERT INTO payment_methods (id, tenant_id, livemode, customer_id, gateway_token, \
         brand, last4, exp_month, exp_year, is_default, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, \
             NOT EXISTS (SELECT 1 FROM payment_methods WHERE customer_id = $4 \
                 AND is_default AND detached_at IS NULL), $10 \
         RETURNING {PM_COLUMNS}"
    ))
    .bind(p.id)
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(p.customer_id)
    .bind(p.gateway_token)
    .bind(p.brand)
    .bind(p.last4)
    .bind(p.exp_month)
    .bind(p.exp_year)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// The customer's attached payment methods, newest first.
pub async fn list_payment_methods(
    pool: &PgPool,
    scope: Scope,
    customer: CustomerId,
    page: PageRequest,
) -> Result<Page<PaymentMethodRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, PaymentMethodRow>(sqlf!(
        "SELECT {PM_COLUMNS} FROM payment_methods WHERE tenant_id = $1 AND livemode = $2 \
         AND customer_id = $3 AND detached_at IS NULL AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(customer)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// The customer's default payment method, if any.
pub async fn default_payment_method(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Option<PaymentMethodId>, DbError> {
    sqlx::query_scalar(
        "SELECT id FROM payment_methods WHERE tenant_id = $1 AND livemode = $2 \
         AND customer_id = $3 AND is_default AND detached_at IS NULL",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(customer)
    .fetch_optional(conn)
    .await
    .map_err(Into::into)
}

/// Makes an attached payment method the customer's default (and no other).
pub async fn set_default_payment_method(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
    id: PaymentMethodId,
) -> Result<PaymentMethodRow, DbError> {
    // The one that stops being the default goes first: the unique index allows one at a time.
    sqlx::query(
        "UPDATE payment_methods SET is_default = FALSE WHERE tenant_id = $1 AND livemode = $2 \
         AND customer_id = $3 AND is_default AND id <> $4 AND detached_at IS NULL \
         AND EXISTS (SELECT 1 FROM payment_methods WHERE tenant_id = $1 AND livemode = $2 \
             AND customer_id = $3 AND id = $4 AND detached_at IS NULL)",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(customer)
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query_as::<_, PaymentMethodRow>(sqlf!(
        "UPDATE payment_methods SET is_default = TRUE WHERE tenant_id = $1 AND livemode = $2 \
         AND customer_id = $3 AND id = $4 AND detached_at IS NULL RETURNING {PM_COLUMNS}"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(customer)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Detaches a payment method (the customer has no default afterwards if it was the default).
pub async fn detach_payment_method(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
    id: PaymentMethodId,
    now: DateTime<Utc>,
) -> Result<PaymentMethodRow, DbError> {
    sqlx::query_as::<_, PaymentMethodRow>(sqlf!(
        "UPDATE payment_methods SET detached_at = $5, is_default = FALSE \
         WHERE tenant_id = $1 AND livemode = $2 AND customer_id = $3 AND id = $4 \
         AND detached_at IS NULL RETURNING {PM_COLUMNS}"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(customer)
    .bind(id)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Adds `delta` to the customer's credit balance (negative: credit used); returns the new
/// balance. The customer row is locked until the transaction ends.
pub async fn adjust_balance(
    conn: &mut PgConnection,
    scope: Scope,
    id: CustomerId,
    delta: i64,
    now: DateTime<Utc>,
) -> Result<i64, DbError> {
    sqlx::query_scalar(
        "UPDATE customers SET balance = balance + $4, updated_at = $5 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 RETURNING balance",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .bind(delta)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// A payment method as a charge uses it: what the gateway charges, and, once synced to the
/// connected Stripe account, its id there and its customer's.
#[derive(Debug, Clone, FromRow)]
pub struct ChargeMethod {
    pub customer_id: CustomerId,
    pub id: PaymentMethodId,
    pub gateway_token: String,
    pub stripe_payment_method_id: Option<String>,
    pub stripe_customer_id: Option<String>,
}

/// The customer's default payment method and what the gateway charges for it, if it has one.
pub async fn default_payment_token(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Option<(PaymentMethodId, String)>, DbError> {
    Ok(default_payment_tokens(conn, &[(scope, customer)])
        .await?
        .pop()
        .map(|m| (m.id, m.gateway_token)))
}

/// The default payment methods of customers of any tenants (each key its tenant, mode and
/// customer); a customer without one is left out.
pub async fn default_payment_tokens(
    conn: &mut PgConnection,
    keys: &[(Scope, CustomerId)],
) -> Result<Vec<ChargeMethod>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<uuid::Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    sqlx::query_as(
        "SELECT m.customer_id, m.id, m.gateway_token, m.stripe_payment_method_id, \
         c.stripe_customer_id \
         FROM payment_methods m JOIN customers c ON c.tenant_id = m.tenant_id \
         AND c.livemode = m.livemode AND c.id = m.customer_id \
         WHERE m.customer_id = ANY($3) AND (m.tenant_id, m.livemode, m.customer_id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         AND m.is_default AND m.detached_at IS NULL",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await
    .map_err(Into::into)
}

/// What the gateway charges for a payment method, attached or not (an attempt that started
/// with it finishes with it).
pub async fn payment_token(
    conn: &mut PgConnection,
    scope: Scope,
    id: PaymentMethodId,
) -> Result<ChargeMethod, DbError> {
    sqlx::query_as(
        "SELECT m.customer_id, m.id, m.gateway_token, m.stripe_payment_method_id, \
         c.stripe_customer_id \
         FROM payment_methods m JOIN customers c ON c.tenant_id = m.tenant_id \
         AND c.livemode = m.livemode AND c.id = m.customer_id \
         WHERE m.tenant_id = $1 AND m.livemode = $2 AND m.id = $3",
    )
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// A customer, deleted or not (what its invoices were billed to).
pub async fn get_any(
    conn: &mut PgConnection,
    scope: Scope,
    id: CustomerId,
) -> Result<CustomerRow, DbError> {
    sqlx::query_as::<_, CustomerRow>(sqlf!(
        "SELECT {COLUMNS} FROM customers WHERE tenant_id = $1 AND livemode = $2 AND id = $3"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(id)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}
