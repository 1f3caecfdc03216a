//! A tenant's tax rates, per mode.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    ids::{CustomerId, TaxRateId},
    tenancy::Scope,
};

#[derive(Debug, Clone, FromRow)]
pub struct TaxRateRow {
    pub id: TaxRateId,
    pub display_name: String,
    pub description: Option<String>,
    pub jurisdiction: Option<String>,
    /// Parts per million (8.875 % = 88,750).
    pub rate_ppm: i32,
    pub inclusive: bool,
    /// Applied to customers that name no rates of their own.
    pub is_default: bool,
    pub active: bool,
    pub metadata: serde_json::Value,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, display_name, description, jurisdiction, rate_ppm, inclusive, \
    is_default, active, metadata, livemode, created_at, updated_at";

pub async fn insert(conn: &mut PgConnection, scope: Scope, r: &TaxRateRow) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO tax_rates (id, tenant_id, livemode, display_name, description, \
         jurisdiction, rate_ppm, inclusive, is_default, active, metadata, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(r.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(&r.display_name)
    .bind(&r.description)
    .bind(&r.jurisdiction)
    .bind(r.rate_ppm)
    .bind(r.inclusive)
    .bind(r.is_default)
    .bind(r.active)
    .bind(&r.metadata)
    .bind(r.created_at)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes what can change: names, whether it is a default, whether it is active, metadata.
pub async fn save(conn: &mut PgConnection, scope: Scope, r: &TaxRateRow) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE tax_rates SET display_name = $4, description = $5, jurisdiction = $6, \
         is_default = $7, active = $8, metadata = $9, updated_at = $10 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(r.id)
    .bind(&r.display_name)
    .bind(&r.description)
    .bind(&r.jurisdiction)
    .bind(r.is_default)
    .bind(r.active)
    .bind(&r.metadata)
    .bind(r.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    scope: Scope,
    id: TaxRateId,
    for_update: bool,
) -> Result<TaxRateRow, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, TaxRateRow>(sqlf!(
        "SELECT {COLUMNS} FROM tax_rates WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// Several rates by id (another tenant's or mode's are left out), in the order given.
pub async fn get_many(
    conn: &mut PgConnection,
    scope: Scope,
    ids: &[Uuid],
) -> Result<Vec<TaxRateRow>, DbError> {
    Ok(sqlx::query_as::<_, TaxRateRow>(sqlf!(
        "SELECT {COLUMNS} FROM tax_rates WHERE tenant_id = $1 AND livemode = $2 \
         AND id = ANY($3) ORDER BY array_position($3, id)"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// The rates a customer's invoices apply: none for a tax-exempt customer; else its own rates
/// (archived or not: archiving keeps a rate where it is named, as at Stripe), or the tenant's
/// active default rates when it names none. Oldest first.
pub async fn for_customer(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Vec<TaxRateRow>, DbError> {
    Ok(for_customers(conn, &[(scope, customer)])
        .await?
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// The rates the invoices of customers of any tenants apply (see [`for_customer`]), each with
/// its customer; by customer, oldest first.
pub async fn for_customers(
    conn: &mut PgConnection,
    keys: &[(Scope, CustomerId)],
) -> Result<Vec<(CustomerId, TaxRateRow)>, DbError> {
    #[derive(FromRow)]
    struct Row {
        customer_id: CustomerId,
        #[sqlx(flatten)]
        rate: TaxRateRow,
    }
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT c.id AS customer_id, r.id, r.display_name, r.description, r.jurisdiction, \
         r.rate_ppm, r.inclusive, r.is_default, r.active, r.metadata, r.livemode, r.created_at, \
         r.updated_at \
         FROM customers c JOIN tax_rates r ON r.tenant_id = c.tenant_id \
         AND r.livemode = c.livemode \
         AND CASE WHEN cardinality(c.tax_rate_ids) = 0 THEN r.is_default AND r.active \
         ELSE r.id = ANY(c.tax_rate_ids) END \
         WHERE c.id = ANY($3) \
         AND (c.tenant_id, c.livemode, c.id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         AND NOT c.tax_exempt ORDER BY c.id, r.id",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.customer_id, r.rate)).collect())
}

/// Tax rates of the mode, newest first.
pub async fn list(
    pool: &PgPool,
    scope: Scope,
    active: Option<bool>,
    page: PageRequest,
) -> Result<Page<TaxRateRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, TaxRateRow>(sqlf!(
        "SELECT {COLUMNS} FROM tax_rates WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::bool IS NULL OR active = $3) AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(active)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}
