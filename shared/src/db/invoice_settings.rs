//! A tenant's invoicing settings, per mode: the grace period of renewal invoices that bill
//! usage.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

use super::DbError;
use crate::tenancy::Scope;

/// The settings of a mode, and when they were last set (`None`: the defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvoiceSettings {
    /// How long a renewal invoice billing usage stays a draft after its period ends.
    pub grace_period_hours: u8,
    pub updated_at: Option<DateTime<Utc>>,
}

/// The longest grace period (a week).
pub const MAX_GRACE_PERIOD_HOURS: u8 = 168;

/// The settings of `scope`: no grace period until they are set.
pub async fn get(conn: &mut PgConnection, scope: Scope) -> Result<InvoiceSettings, DbError> {
    let row: Option<(i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT grace_period_hours, updated_at FROM invoice_settings \
         WHERE tenant_id = $1 AND livemode = $2",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        Some((hours, updated_at)) => InvoiceSettings {
            grace_period_hours: hours_of(hours)?,
            updated_at: Some(updated_at),
        },
        None => InvoiceSettings {
            grace_period_hours: 0,
            updated_at: None,
        },
    })
}

/// The grace periods (hours) of the modes in `scopes` that have one, in one statement.
pub async fn grace_periods(
    conn: &mut PgConnection,
    scopes: &[Scope],
) -> Result<Vec<(Scope, u8)>, DbError> {
    let tenants: Vec<Uuid> = scopes.iter().map(|s| s.tenant_id().as_uuid()).collect();
    let modes: Vec<bool> = scopes.iter().map(|s| s.livemode()).collect();
    let rows: Vec<(i64, i32)> = sqlx::query_as(
        "SELECT k.at, s.grace_period_hours \
         FROM unnest($1::uuid[], $2::bool[]) WITH ORDINALITY AS k(tenant_id, livemode, at) \
         JOIN invoice_settings s ON s.tenant_id = k.tenant_id AND s.livemode = k.livemode \
         WHERE s.grace_period_hours > 0",
    )
    .bind(&tenants)
    .bind(&modes)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(|(at, hours)| {
            let scope = usize::try_from(at - 1)
                .ok()
                .and_then(|i| scopes.get(i))
                .ok_or_else(|| DbError::Other(sqlx::Error::Decode("ordinality".into())))?;
            Ok((*scope, hours_of(hours)?))
        })
        .collect()
}

fn hours_of(hours: i32) -> Result<u8, DbError> {
    u8::try_from(hours)
        .ok()
        .filter(|h| *h <= MAX_GRACE_PERIOD_HOURS)
        .ok_or_else(|| DbError::Other(sqlx::Error::Decode(format!("grace {hours}").into())))
}

/// Sets the settings of `scope`.
pub async fn set(
    conn: &mut PgConnection,
    scope: Scope,
    grace_period_hours: u8,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO invoice_settings (tenant_id, livemode, grace_period_hours, updated_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, livemode) DO UPDATE SET \
         grace_period_hours = EXCLUDED.grace_period_hours, updated_at = EXCLUDED.updated_at",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(i32::from(grace_period_hours))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
