//! A tenant's dunning policy, per mode.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};

use super::DbError;
use crate::{
    domain::dunning::{DunningPolicy, FinalAction},
    ids::{CustomerId, InvoiceId},
    tenancy::Scope,
};

#[derive(Debug, Clone, FromRow)]
struct DunningRow {
    retry_waits_days: Vec<i32>,
    final_action: String,
    mark_uncollectible: bool,
    updated_at: DateTime<Utc>,
}

/// A stored policy, and when it was last set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPolicy {
    pub policy: DunningPolicy,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The policy of `scope`: the default until one is set.
pub async fn get(conn: &mut PgConnection, scope: Scope) -> Result<StoredPolicy, DbError> {
    let row: Option<DunningRow> = sqlx::query_as(
        "SELECT retry_waits_days, final_action, mark_uncollectible, updated_at \
         FROM dunning_settings WHERE tenant_id = $1 AND livemode = $2",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(StoredPolicy {
            policy: DunningPolicy::default(),
            updated_at: None,
        });
    };
    let broken = |what: String| DbError::Other(sqlx::Error::Decode(what.into()));
    let waits = row
        .retry_waits_days
        .iter()
        .map(|d| u16::try_from(*d))
        .collect::<Result<Vec<u16>, _>>()
        .map_err(|e| broken(e.to_string()))?;
    let action = FinalAction::parse(&row.final_action)
        .ok_or_else(|| broken(format!("final action {}", row.final_action)))?;
    let policy = DunningPolicy::new(waits, action, row.mark_uncollectible)
        .map_err(|e| broken(e.to_string()))?;
    Ok(StoredPolicy {
        policy,
        updated_at: Some(row.updated_at),
    })
}

/// Sets the policy of `scope`.
pub async fn set(
    conn: &mut PgConnection,
    scope: Scope,
    policy: &DunningPolicy,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let waits: Vec<i32> = policy
        .retry_waits_days()
        .iter()
        .map(|d| i32::from(*d))
        .collect();
    sqlx::query(
        "INSERT INTO dunning_settings (tenant_id, livemode, retry_waits_days, final_action, \
         mark_uncollectible, updated_at) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, livemode) DO UPDATE SET \
         retry_waits_days = EXCLUDED.retry_waits_days, final_action = EXCLUDED.final_action, \
         mark_uncollectible = EXCLUDED.mark_uncollectible, updated_at = EXCLUDED.updated_at",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(&waits)
    .bind(policy.final_action.as_str())
    .bind(policy.mark_uncollectible)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that dunning of `invoice` is over after attempt `attempt`; `false` when it was
/// already.
pub async fn end(
    conn: &mut PgConnection,
    scope: Scope,
    invoice: InvoiceId,
    attempt: i32,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "INSERT INTO dunning_ended (tenant_id, livemode, invoice_id, attempt, ended_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(invoice)
    .bind(attempt)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Invoices `i` of customer `$3` (tenant `$1`, mode `$2`) that charges collect: open, collected
/// automatically, still owing, dunning not over.
const CHARGED_AND_OWING: &str = "i.tenant_id = $1 AND i.livemode = $2 AND i.customer_id = $3 \
    AND i.status = 'open' AND i.collection_method = 'charge_automatically' \
    AND i.amount_remaining > 0 \
    AND NOT EXISTS (SELECT 1 FROM dunning_ended d WHERE d.tenant_id = i.tenant_id \
        AND d.livemode = i.livemode AND d.invoice_id = i.id)";

/// A customer's invoices owed that a charge is to collect: open, collected automatically,
/// still owing, dunning not over; each with the attempt to make next (one left pending by a
/// charge that never reached the gateway, or the one after the last).
pub async fn to_charge(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Vec<(InvoiceId, i32)>, DbError> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT i.id, CASE WHEN bool_or(p.status = 'pending') THEN max(p.attempt) \
             ELSE COALESCE(max(p.attempt), 0) + 1 END \
         FROM invoices i \
         LEFT JOIN payments p ON p.tenant_id = i.tenant_id AND p.livemode = i.livemode \
             AND p.invoice_id = i.id \
         WHERE {CHARGED_AND_OWING} GROUP BY i.id ORDER BY i.id"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .fetch_all(conn)
    .await?)
}

/// A customer's invoices in dunning: open, collected automatically, still owing, every
/// attempt so far failed or waiting for the customer to authenticate (none being charged) and
/// dunning not over; each with its last attempt.
pub async fn in_dunning(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Vec<(InvoiceId, i32)>, DbError> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT i.id, max(p.attempt) FROM invoices i \
         JOIN payments p ON p.tenant_id = i.tenant_id AND p.livemode = i.livemode \
             AND p.invoice_id = i.id \
         WHERE {CHARGED_AND_OWING} \
         GROUP BY i.id HAVING bool_and(p.status IN ('failed', 'requires_action')) ORDER BY i.id"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .fetch_all(conn)
    .await?)
}
