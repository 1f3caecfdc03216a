//! The Stripe sync state of the objects Stripe mirrors (products and prices, a plan being both;
//! customers and their payment methods): `pending` while a `stripe_sync` job owes Stripe the
//! latest version, `synced`, `failed` (retrying), or `not_synced` when the tenant has no Stripe
//! for the mode.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::{
    jobs::{self, Job, NewJob},
    tenancy::Scope,
};

crate::text_enum! {
    /// Where Stripe stands with a catalog object's latest version.
    pub enum SyncStatus {
        /// A `stripe_sync` job owes Stripe the latest version.
        Pending = "pending",
        Synced = "synced",
        /// The last attempt failed; the job retries (`sync_error` says why).
        Failed = "failed",
        /// No Stripe to tell in this mode (no account connected, or Stripe not configured).
        NotSynced = "not_synced",
    }
}

/// A kind of object Stripe mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    Product,
    Price,
    Customer,
    PaymentMethod,
}

impl Synced {
    pub const ALL: [Synced; 4] = [
        Synced::Product,
        Synced::Price,
        Synced::Customer,
        Synced::PaymentMethod,
    ];

    fn table(self) -> &'static str {
        match self {
            Synced::Product => "products",
            Synced::Price => "prices",
            Synced::Customer => "customers",
            Synced::PaymentMethod => "payment_methods",
        }
    }

    /// The column of its Stripe id.
    fn stripe_id(self) -> &'static str {
        match self {
            Synced::Product => "stripe_product_id",
            Synced::Price => "stripe_price_id",
            Synced::Customer => "stripe_customer_id",
            Synced::PaymentMethod => "stripe_payment_method_id",
        }
    }
}

/// The sync job of an object: one per object (its id), reset by every change.
pub fn job(what: Synced, scope: Scope, id: Uuid, now: DateTime<Utc>) -> NewJob {
    Job::SyncCatalog { what, id }.to_new(Some(scope), now)
}

/// Owes Stripe the object's latest version: marks it pending and (re)queues its sync job.
pub async fn schedule(
    conn: &mut PgConnection,
    what: Synced,
    scope: Scope,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(sqlf!(
        "UPDATE {} SET sync_status = 'pending', sync_error = NULL WHERE id = $1",
        what.table()
    ))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    jobs::enqueue_or_reset(conn, &[job(what, scope, id, now)], now).await
}

/// Queues the sync of every object of a tenant and mode that Stripe has not got (after the
/// tenant connects an account). Returns how many.
pub async fn schedule_all_unsynced(
    conn: &mut PgConnection,
    scope: Scope,
    now: DateTime<Utc>,
) -> Result<usize, DbError> {
    let mut n = 0;
    for what in Synced::ALL {
        let ids: Vec<(Uuid,)> = sqlx::query_as(sqlf!(
            "UPDATE {} SET sync_status = 'pending', sync_error = NULL \
             WHERE tenant_id = $1 AND livemode = $2 AND synced_version < sync_version \
             RETURNING id",
            what.table()
        ))
        .bind(scope.tenant_id)
        .bind(scope.livemode)
        .fetch_all(&mut *conn)
        .await?;
        let jobs: Vec<NewJob> = ids.iter().map(|(id,)| job(what, scope, *id, now)).collect();
        n += jobs.len();
        jobs::enqueue_or_reset(conn, &jobs, now).await?;
    }
    Ok(n)
}

/// Nothing to sync with (no account, or Stripe not configured for the mode).
pub async fn mark_not_synced(
    pool: &PgPool,
    what: Synced,
    id: Uuid,
    reason: &str,
) -> Result<(), DbError> {
    sqlx::query(sqlf!(
        "UPDATE {} SET sync_status = 'not_synced', sync_error = $2 WHERE id = $1",
        what.table()
    ))
    .bind(id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// A failed attempt (the job retries): `failed` with the error, until a later success.
pub async fn mark_failed(
    pool: &PgPool,
    what: Synced,
    id: Uuid,
    version: i32,
    error: &str,
) -> Result<(), DbError> {
    sqlx::query(sqlf!(
        "UPDATE {} SET sync_status = 'failed', sync_error = $3 \
         WHERE id = $1 AND sync_version = $2",
        what.table()
    ))
    .bind(id)
    .bind(version)
    .bind(jobs::truncate(error, 1000))
    .execute(pool)
    .await?;
    Ok(())
}

/// Stripe has `version`: records the Stripe id (when given), and `synced` unless a newer
/// version came in meanwhile (its own job then runs).
pub async fn mark_synced(
    pool: &PgPool,
    what: Synced,
    id: Uuid,
    version: i32,
    stripe_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let col = what.stripe_id();
    sqlx::query(sqlf!(
        "UPDATE {} SET {col} = COALESCE($4, {col}), \
         synced_version = GREATEST(synced_version, $2), synced_at = $3, \
         sync_status = CASE WHEN sync_version <= GREATEST(synced_version, $2) THEN 'synced' \
                       ELSE sync_status END, \
         sync_error = CASE WHEN sync_version <= GREATEST(synced_version, $2) THEN NULL \
                      ELSE sync_error END \
         WHERE id = $1",
        what.table()
    ))
    .bind(id)
    .bind(version)
    .bind(now)
    .bind(stripe_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records a Stripe id as soon as it exists (before the rest of the sync finishes), so a crash
/// between creating it and recording the outcome cannot lead to a second object.
pub async fn record_stripe_id(
    pool: &PgPool,
    what: Synced,
    id: Uuid,
    stripe_id: &str,
) -> Result<(), DbError> {
    sqlx::query(sqlf!(
        "UPDATE {} SET {} = $2 WHERE id = $1",
        what.table(),
        what.stripe_id()
    ))
    .bind(id)
    .bind(stripe_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// A new version of an object that Stripe mirrors (a customer changed): bumps its version.
pub async fn bump(conn: &mut PgConnection, what: Synced, id: Uuid) -> Result<(), DbError> {
    sqlx::query(sqlf!(
        "UPDATE {} SET sync_version = sync_version + 1 WHERE id = $1",
        what.table()
    ))
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether catalog changes of a tenant and mode go to Stripe: Stripe is configured for the mode
/// and the tenant has connected an account in it.
pub async fn has_target(
    conn: &mut PgConnection,
    settings: &crate::config::StripeSettings,
    scope: Scope,
) -> Result<bool, DbError> {
    if settings.key(scope.livemode).is_none() {
        return Ok(false);
    }
    let account = super::stripe_accounts::get(conn, scope).await?;
    Ok(account.is_some_and(|a| a.usable_id().is_some()))
}

/// The tenant's account changed (a new one after a disconnection): Stripe ids of the old one
/// mean nothing on the new one, so every object must be created there afresh.
pub async fn forget_stripe_ids(conn: &mut PgConnection, scope: Scope) -> Result<(), DbError> {
    for (table, ids) in [
        ("products", "stripe_product_id = NULL"),
        ("prices", "stripe_price_id = NULL"),
        ("customers", "stripe_customer_id = NULL"),
        ("payment_methods", "stripe_payment_method_id = NULL"),
    ] {
        sqlx::query(sqlf!(
            "UPDATE {table} SET {ids}, synced_version = 0, sync_status = 'not_synced', \
             sync_error = NULL WHERE tenant_id = $1 AND livemode = $2"
        ))
        .bind(scope.tenant_id)
        .bind(scope.livemode)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The status a new object starts with: pending when there is a Stripe to tell.
pub async fn initial_status(
    conn: &mut PgConnection,
    settings: &crate::config::StripeSettings,
    scope: Scope,
) -> Result<SyncStatus, DbError> {
    Ok(if has_target(conn, settings, scope).await? {
        SyncStatus::Pending
    } else {
        SyncStatus::NotSynced
    })
}

/// After a change Stripe must hear of: queue the sync, or mark the object `not_synced` when
/// there is no Stripe to tell. Returns the object's status now (its `sync_error` is cleared
/// when pending).
pub async fn changed(
    conn: &mut PgConnection,
    settings: &crate::config::StripeSettings,
    what: Synced,
    scope: Scope,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<SyncStatus, DbError> {
    if has_target(conn, settings, scope).await? {
        schedule(conn, what, scope, id, now).await?;
        Ok(SyncStatus::Pending)
    } else {
        sqlx::query(sqlf!(
            "UPDATE {} SET sync_status = 'not_synced' WHERE id = $1",
            what.table()
        ))
        .bind(id)
        .execute(&mut *conn)
        .await?;
        Ok(SyncStatus::NotSynced)
    }
}
