//! The only reads with no tenant scope, for work that starts from something other than a
//! tenant's request: a claimed job names an object by id, and an incoming Stripe event names an
//! account. Each row carries its tenant and mode (`scope()`), and everything written afterwards
//! goes through the scoped functions with that scope.

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    products::{self, PriceRow, ProductRow},
    stripe_accounts::{self, AccountRow},
};

/// The product a `stripe_sync` job names.
pub async fn product(pool: &PgPool, id: Uuid) -> Result<ProductRow, DbError> {
    sqlx::query_as::<_, ProductRow>(sqlf!(
        "SELECT {} FROM products WHERE id = $1",
        products::PRODUCT_COLUMNS
    ))
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// The price a `stripe_sync` job names.
pub async fn price(pool: &PgPool, id: Uuid) -> Result<PriceRow, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "SELECT {} FROM prices WHERE id = $1",
        products::PRICE_COLUMNS
    ))
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// The plan price of a plan's product (a `stripe_sync` job of the product brings it along).
pub async fn plan_price(pool: &PgPool, product_id: Uuid) -> Result<Option<PriceRow>, DbError> {
    sqlx::query_as::<_, PriceRow>(sqlf!(
        "SELECT {} FROM prices WHERE product_id = $1 AND plan",
        products::PRICE_COLUMNS
    ))
    .bind(product_id)
    .fetch_optional(pool)
    .await
    .map_err(Into::into)
}

/// The tenant's account a Stripe event names (Stripe's events name only the account).
pub async fn stripe_account(
    conn: &mut PgConnection,
    account_id: &str,
    livemode: bool,
) -> Result<Option<AccountRow>, DbError> {
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "SELECT {} FROM stripe_accounts WHERE account_id = $1 AND livemode = $2",
        stripe_accounts::COLUMNS
    ))
    .bind(account_id)
    .bind(livemode)
    .fetch_optional(conn)
    .await
    .map_err(Into::into)
}

/// The payment a Stripe event is about: the one with this gateway id, or else the one its
/// metadata names (not yet answered when the event was sent); with its scope.
pub async fn payment_for_event(
    conn: &mut PgConnection,
    livemode: bool,
    gateway_id: &str,
    named: Option<crate::ids::PaymentId>,
) -> Result<Option<(crate::tenancy::Scope, crate::ids::PaymentId)>, DbError> {
    // The metadata names a payment only while it waits for its answer (no gateway id yet).
    let row: Option<(crate::ids::TenantId, crate::ids::PaymentId)> = sqlx::query_as(
        "SELECT tenant_id, id FROM payments WHERE livemode = $1 \
         AND (gateway_id = $2 OR (id = $3 AND gateway_id IS NULL AND status = 'pending')) \
         ORDER BY (gateway_id = $2) IS TRUE DESC LIMIT 1",
    )
    .bind(livemode)
    .bind(gateway_id)
    .bind(named)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(tenant_id, id)| {
        (
            crate::tenancy::Scope {
                tenant_id,
                livemode,
            },
            id,
        )
    }))
}

/// The refund with this gateway id, with its scope.
pub async fn refund_for_event(
    conn: &mut PgConnection,
    livemode: bool,
    gateway_id: &str,
) -> Result<Option<(crate::tenancy::Scope, crate::ids::RefundId)>, DbError> {
    let row: Option<(crate::ids::TenantId, crate::ids::RefundId)> =
        sqlx::query_as("SELECT tenant_id, id FROM refunds WHERE livemode = $1 AND gateway_id = $2")
            .bind(livemode)
            .bind(gateway_id)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|(tenant_id, id)| {
        (
            crate::tenancy::Scope {
                tenant_id,
                livemode,
            },
            id,
        )
    }))
}

/// What a `stripe_sync` job of a customer reads of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncedCustomer {
    pub id: crate::ids::CustomerId,
    pub tenant_id: crate::ids::TenantId,
    pub livemode: bool,
    pub name: String,
    pub email: Option<String>,
    pub metadata: serde_json::Value,
    pub stripe_customer_id: Option<String>,
    pub sync_version: i32,
    pub synced_version: i32,
    pub deleted: bool,
}

impl SyncedCustomer {
    pub fn scope(&self) -> crate::tenancy::Scope {
        crate::tenancy::Scope {
            tenant_id: self.tenant_id,
            livemode: self.livemode,
        }
    }
}

/// The customer a `stripe_sync` job names.
pub async fn customer(pool: &PgPool, id: Uuid) -> Result<SyncedCustomer, DbError> {
    sqlx::query_as::<_, SyncedCustomer>(
        "SELECT id, tenant_id, livemode, name, email, metadata, stripe_customer_id, \
         sync_version, synced_version, deleted_at IS NOT NULL AS deleted \
         FROM customers WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// What a `stripe_sync` job of a payment method reads of it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncedPaymentMethod {
    pub id: crate::ids::PaymentMethodId,
    pub tenant_id: crate::ids::TenantId,
    pub livemode: bool,
    pub customer_id: crate::ids::CustomerId,
    pub gateway_token: String,
    pub stripe_payment_method_id: Option<String>,
    pub sync_version: i32,
    pub synced_version: i32,
    pub detached: bool,
}

impl SyncedPaymentMethod {
    pub fn scope(&self) -> crate::tenancy::Scope {
        crate::tenancy::Scope {
            tenant_id: self.tenant_id,
            livemode: self.livemode,
        }
    }
}

/// The payment method a `stripe_sync` job names.
pub async fn payment_method(pool: &PgPool, id: Uuid) -> Result<SyncedPaymentMethod, DbError> {
    sqlx::query_as::<_, SyncedPaymentMethod>(
        "SELECT id, tenant_id, livemode, customer_id, gateway_token, stripe_payment_method_id, \
         sync_version, synced_version, detached_at IS NOT NULL AS detached \
         FROM payment_methods WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(Into::into)
}

/// Attempts of any tenant sent to no gateway yet (`pending` without a gateway id), oldest first,
/// at most `limit`: each one's scope, invoice, attempt number and customer.
pub async fn unsent_attempts(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<
    Vec<(
        crate::tenancy::Scope,
        crate::ids::InvoiceId,
        i32,
        crate::ids::CustomerId,
    )>,
    DbError,
> {
    let rows: Vec<(
        crate::ids::TenantId,
        bool,
        crate::ids::InvoiceId,
        i32,
        crate::ids::CustomerId,
    )> = sqlx::query_as(
        "SELECT tenant_id, livemode, invoice_id, attempt, customer_id FROM payments \
         WHERE status = 'pending' AND gateway_id IS NULL ORDER BY updated_at LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant_id, livemode, invoice, attempt, customer)| {
            (
                crate::tenancy::Scope {
                    tenant_id,
                    livemode,
                },
                invoice,
                attempt,
                customer,
            )
        })
        .collect())
}
