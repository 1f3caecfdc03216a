//! Connected Stripe accounts (one per tenant and mode) and the single-use `state` values of
//! Connect onboarding.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};
use uuid::Uuid;

use super::DbError;
use crate::{
    ids::TenantId,
    tenancy::{Scope, TenantContext},
};

crate::text_enum! {
    /// Where a tenant's Stripe Connect account stands in a mode.
    pub enum ConnectStatus {
        NotConnected = "not_connected",
        /// Created at Stripe; the tenant has not finished onboarding.
        Onboarding = "onboarding",
        Connected = "connected",
        Disconnected = "disconnected",
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct AccountRow {
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub account_id: Option<String>,
    pub status: ConnectStatus,
    pub charges_enabled: bool,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    pub requirements: serde_json::Value,
    pub stripe_seen_at: Option<DateTime<Utc>>,
    pub connected_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

pub(crate) const COLUMNS: &str = "tenant_id, livemode, account_id, status, charges_enabled, payouts_enabled, \
    details_submitted, requirements, stripe_seen_at, connected_at, updated_at";

impl AccountRow {
    /// The tenant and mode the account belongs to.
    pub fn scope(&self) -> Scope {
        Scope {
            tenant_id: self.tenant_id,
            livemode: self.livemode,
        }
    }

    /// An account the platform can act on (onboarding may still be under way).
    pub fn usable_id(&self) -> Option<&str> {
        match self.status {
            ConnectStatus::Onboarding | ConnectStatus::Connected => self.account_id.as_deref(),
            ConnectStatus::NotConnected | ConnectStatus::Disconnected => None,
        }
    }
}

pub async fn get(conn: &mut PgConnection, scope: Scope) -> Result<Option<AccountRow>, DbError> {
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "SELECT {COLUMNS} FROM stripe_accounts WHERE tenant_id = $1 AND livemode = $2"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .fetch_optional(conn)
    .await
    .map_err(Into::into)
}

/// The account rows of some scopes (those connected or on their way).
pub async fn get_many(
    conn: &mut PgConnection,
    scopes: &[Scope],
) -> Result<Vec<AccountRow>, DbError> {
    let (tenants, modes) = super::scope_columns(scopes);
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "SELECT {COLUMNS} FROM stripe_accounts WHERE tenant_id = ANY($1) \
         AND (tenant_id, livemode) IN (SELECT * FROM unnest($1::uuid[], $2::bool[]))"
    ))
    .bind(&tenants)
    .bind(&modes)
    .fetch_all(conn)
    .await
    .map_err(Into::into)
}

/// The account row, locked until the transaction ends.
pub async fn lock(conn: &mut PgConnection, scope: Scope) -> Result<Option<AccountRow>, DbError> {
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "SELECT {COLUMNS} FROM stripe_accounts WHERE tenant_id = $1 AND livemode = $2 \
         FOR NO KEY UPDATE"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .fetch_optional(conn)
    .await
    .map_err(Into::into)
}

/// What Stripe says about an account.
#[derive(Debug, Clone)]
pub struct AccountState {
    pub charges_enabled: bool,
    pub payouts_enabled: bool,
    pub details_submitted: bool,
    pub requirements: serde_json::Value,
    /// When Stripe described it (an event's `created`, or now for a fresh read).
    pub seen_at: DateTime<Utc>,
}

/// Records the account being onboarded (created before the tenant finished onboarding).
pub async fn start_onboarding(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    account_id: &str,
    now: DateTime<Utc>,
) -> Result<AccountRow, DbError> {
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "INSERT INTO stripe_accounts (tenant_id, livemode, account_id, status, updated_at) \
         VALUES ($1, $2, $3, 'onboarding', $4) \
         ON CONFLICT (tenant_id, livemode) DO UPDATE SET account_id = $3, \
         status = CASE WHEN stripe_accounts.account_id = $3 AND stripe_accounts.status = 'connected' \
                  THEN 'connected' ELSE 'onboarding' END, updated_at = $4 \
         RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(account_id)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Applies what Stripe says unless a newer description was applied already (events arrive out
/// of order). `connected` marks the end of onboarding. Returns the row when applied.
pub async fn apply_state(
    conn: &mut PgConnection,
    scope: Scope,
    account_id: &str,
    s: &AccountState,
    connected: bool,
    now: DateTime<Utc>,
) -> Result<Option<AccountRow>, DbError> {
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "UPDATE stripe_accounts SET charges_enabled = $4, payouts_enabled = $5, \
         details_submitted = $6, requirements = $7, stripe_seen_at = $8, \
         status = CASE WHEN $9 THEN 'connected' ELSE status END, \
         connected_at = CASE WHEN $9 AND connected_at IS NULL THEN $10 ELSE connected_at END, \
         updated_at = $10 \
         WHERE tenant_id = $1 AND livemode = $2 AND account_id = $3 \
         AND status IN ('onboarding', 'connected') \
         AND (stripe_seen_at IS NULL OR stripe_seen_at <= $8) RETURNING {COLUMNS}"
    ))
    .bind(scope.tenant_id)
    .bind(scope.livemode)
    .bind(account_id)
    .bind(s.charges_enabled)
    .bind(s.payouts_enabled)
    .bind(s.details_submitted)
    .bind(&s.requirements)
    .bind(s.seen_at)
    .bind(connected)
    .bind(now)
    .fetch_optional(conn)
    .await
    .map_err(Into::into)
}

pub async fn disconnect(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    now: DateTime<Utc>,
) -> Result<AccountRow, DbError> {
    sqlx::query_as::<_, AccountRow>(sqlf!(
        "UPDATE stripe_accounts SET status = 'disconnected', charges_enabled = FALSE, \
         payouts_enabled = FALSE, updated_at = $3 \
         WHERE tenant_id = $1 AND livemode = $2 AND status IN ('onboarding', 'connected') \
         RETURNING {COLUMNS}"
    ))
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

/// Mirrors a connection change into the tenant's seed fields (`stripe_connect_account_id`,
/// `stripe_connect_status`): they show the most recent change, whichever mode it was in.
pub async fn mirror_to_tenant(conn: &mut PgConnection, row: &AccountRow) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE tenants SET stripe_connect_account_id = $2, stripe_connect_status = $3, \
         updated_at = $4 WHERE id = $1",
    )
    .bind(row.tenant_id)
    .bind(if row.status == ConnectStatus::Disconnected {
        None
    } else {
        row.account_id.as_deref()
    })
    .bind(row.status)
    .bind(row.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stores a new onboarding `state` nonce.
pub async fn new_state(
    conn: &mut PgConnection,
    ctx: &TenantContext,
    nonce: Uuid,
    now: DateTime<Utc>,
    expires_at: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO connect_states (nonce, tenant_id, livemode, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(nonce)
    .bind(ctx.tenant_id)
    .bind(ctx.livemode())
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Uses a `state` nonce once: returns its tenant and mode if it was unused and unexpired.
pub async fn use_state(
    conn: &mut PgConnection,
    nonce: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<Scope>, DbError> {
    let row: Option<(TenantId, bool)> = sqlx::query_as(
        "UPDATE connect_states SET used_at = $2 WHERE nonce = $1 AND used_at IS NULL \
         AND expires_at > $2 RETURNING tenant_id, livemode",
    )
    .bind(nonce)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(tenant_id, livemode)| Scope {
        tenant_id,
        livemode,
    }))
}
