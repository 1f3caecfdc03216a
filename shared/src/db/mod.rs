//! PostgreSQL access. One module per concept; tenant data is reached only through functions
//! that take a [`crate::tenancy::TenantContext`] first.

/// `format!` for SQL built only from constant fragments (column lists, pagination
/// conditions); values are always bound, never interpolated.
macro_rules! sqlf {
    ($($t:tt)*) => {
        sqlx::AssertSqlSafe(format!($($t)*))
    };
}

pub mod api_keys;
pub mod audit;
pub mod billing_runs;
pub mod bundles;
pub mod catalog_sync;
pub mod coupons;
pub mod credit_notes;
pub mod customers;
pub mod dunning;
pub mod events;
pub mod idempotency;
pub mod invoice_numbers;
pub mod invoice_settings;
pub mod invoices;
pub mod pagination;
pub mod plans;
pub mod products;
pub mod refresh_tokens;
pub mod stripe_accounts;
pub mod stripe_events;
pub mod subscriptions;
pub mod tax_rates;
pub mod tenants;
pub mod test_clocks;
pub mod unscoped;
pub mod usage;
pub mod usage_limits;
pub mod users;
pub mod webhook_deliveries;
pub mod webhook_endpoints;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseSettings;

/// A `LIKE`/`ILIKE` pattern matching text that contains `s`, with `%`, `_` and `\` taken
/// literally.
pub(crate) fn contains_pattern(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// The tenants and modes of rows of many scopes, as the two arrays a statement joins them on
/// (`unnest($1::uuid[], $2::bool[], ...)`): a statement about many tenants' rows still names
/// each row's tenant and mode.
pub(crate) fn scope_columns<'a>(
    scopes: impl IntoIterator<Item = &'a crate::tenancy::Scope>,
) -> (Vec<uuid::Uuid>, Vec<bool>) {
    scopes
        .into_iter()
        .map(|s| (s.tenant_id().as_uuid(), s.livemode()))
        .unzip()
}

/// Refuses a row another tenant or mode owns (a single-row write given its scope, which then
/// writes through the many-row statement keyed by the row's own tenant and mode).
pub(crate) fn owned_by(
    scope: crate::tenancy::Scope,
    tenant_id: crate::ids::TenantId,
    livemode: bool,
) -> Result<(), DbError> {
    if tenant_id == scope.tenant_id() && livemode == scope.livemode() {
        Ok(())
    } else {
        Err(DbError::NotFound)
    }
}

/// A time as the API renders it in objects (RFC 3339 with `+00:00`), for objects that events
/// carry as the API shows them.
pub(crate) fn api_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339()
}

/// Database errors a caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    #[error("unique constraint `{0}` violated")]
    UniqueViolation(String),
    /// A deadlock or serialization failure: the transaction was rolled back and running it
    /// again is expected to succeed.
    #[error("transaction conflict: {0}")]
    Conflict(sqlx::Error),
    /// The database cannot be reached (connection refused, lost, or no connection in time).
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error(transparent)]
    Other(sqlx::Error),
}

/// SQLSTATEs of failures that running the transaction again resolves.
const RETRYABLE: [&str; 2] = ["40001", "40P01"];

impl From<sqlx::Error> for DbError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::RowNotFound => DbError::NotFound,
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                DbError::UniqueViolation(db.constraint().unwrap_or_default().to_owned())
            }
            sqlx::Error::Database(db) if db.code().is_some_and(|c| RETRYABLE.contains(&&*c)) => {
                DbError::Conflict(err)
            }
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => DbError::Unavailable(err),
            sqlx::Error::Database(db)
                if db
                    .code()
                    .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")) =>
            {
                // Connection exceptions and operator intervention (shutdown, restart).
                DbError::Unavailable(err)
            }
            _ => DbError::Other(err),
        }
    }
}

/// A pool that connects lazily, so a process can start (and report unready) while the
/// database is down.
pub fn pool(settings: &DatabaseSettings) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options))
}

/// A small pool whose commits do not wait for the disk (`synchronous_commit = off`), for
/// statements whose loss in a database crash is harmless: job leases and claims (a lost lease
/// makes a job due again, a lost claim makes its run's outcome stale; every job survives both).
/// Each statement commits on its own, in one round trip.
pub fn relaxed_pool(settings: &DatabaseSettings, max: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = settings.url.expose().parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(settings.acquire_timeout)
        .connect_lazy_with(options.options([("synchronous_commit", "off")])))
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

/// Creates the database named in the settings' URL when it does not exist yet, connecting to
/// the server's `postgres` maintenance database to do so.
pub async fn create_database_if_missing(settings: &DatabaseSettings) -> Result<bool, sqlx::Error> {
    use sqlx::{ConnectOptions, Connection};
    let options: PgConnectOptions = settings.url.expose().parse()?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut conn = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = name.replace('"', "\"\"");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{quoted}\"")))
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    Ok(!exists)
}

/// Drops the database named in the settings' URL (used by benchmarks to clean up).
pub async fn drop_database(settings: &DatabaseSettings) -> Result<(), sqlx::Error> {
    use sqlx::{ConnectOptions, Connection};
    let options: PgConnectOptions = settings.url.expose().parse()?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let mut conn = options.clone().database("postgres").connect().await?;
    let quoted = name.replace('"', "\"\"");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}
