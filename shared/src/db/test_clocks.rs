//! Test clocks (test mode only), and the jobs that wait for their time.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    ids::{CustomerId, TenantId, TestClockId},
    tenancy::Scope,
};

crate::text_enum! {
    /// Whether a clock is moving.
    pub enum ClockStatus {
        Ready = "ready",
        /// An advance is under way: what comes due for its customers is being run.
        Advancing = "advancing",
        /// An advance could not go on: the clock stands where it got to, until a new advance
        /// goes on from there.
        InternalFailure = "internal_failure",
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct TestClockRow {
    pub id: TestClockId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub name: String,
    pub frozen_time: DateTime<Utc>,
    pub status: ClockStatus,
    pub advancing_to: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TestClockRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "test_clock",
            "name": self.name,
            "frozen_time": super::api_time(self.frozen_time),
            "status": self.status.as_str(),
            "advancing_to": self.advancing_to.map(super::api_time),
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, name, frozen_time, status, advancing_to, \
    created_at, updated_at";

pub async fn create(
    conn: &mut PgConnection,
    scope: Scope,
    id: TestClockId,
    name: &str,
    frozen_time: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<TestClockRow, DbError> {
    sqlx::query_as::<_, TestClockRow>(sqlf!(
        "INSERT INTO test_clocks (id, tenant_id, livemode, name, frozen_time, status, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'ready', $6, $6) \
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(name)
    .bind(frozen_time)
    .bind(now)
    .fetch_one(conn)
    .await
    .map_err(Into::into)
}

pub async fn list(
    pool: &PgPool,
    scope: Scope,
    page: PageRequest,
) -> Result<Page<TestClockRow>, DbError> {
    let (cond, order) = page.sql(3);
    let rows = sqlx::query_as::<_, TestClockRow>(sqlf!(
        "SELECT {COLUMNS} FROM test_clocks WHERE tenant_id = $1 AND livemode = $2 \
         AND deleted_at IS NULL AND {cond} ORDER BY {order} LIMIT $4"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

async fn one(
    conn: &mut PgConnection,
    scope: Scope,
    id: TestClockId,
    for_update: bool,
) -> Result<TestClockRow, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, TestClockRow>(sqlf!(
        "SELECT {COLUMNS} FROM test_clocks WHERE tenant_id = $1 AND livemode = $2 AND id = $3 \
         AND deleted_at IS NULL {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

pub async fn get(
    conn: &mut PgConnection,
    scope: Scope,
    id: TestClockId,
) -> Result<TestClockRow, DbError> {
    one(conn, scope, id, false).await
}

pub async fn lock(
    conn: &mut PgConnection,
    scope: Scope,
    id: TestClockId,
) -> Result<TestClockRow, DbError> {
    one(conn, scope, id, true).await
}

/// Writes the clock's time and status; the row must be locked ([`lock`]).
pub async fn save(conn: &mut PgConnection, scope: Scope, c: &TestClockRow) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE test_clocks SET frozen_time = $4, status = $5, advancing_to = $6, \
         updated_at = $7 WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(c.id)
    .bind(c.frozen_time)
    .bind(c.status)
    .bind(c.advancing_to)
    .bind(c.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// The clock of a customer, if it has one.
pub async fn of_customer(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Option<TestClockRow>, DbError> {
    Ok(sqlx::query_as::<_, TestClockRow>(sqlf!(
        "SELECT {COLUMNS} FROM test_clocks WHERE tenant_id = $1 AND livemode = $2 \
         AND deleted_at IS NULL \
         AND id = (SELECT test_clock_id FROM customers WHERE tenant_id = $1 AND livemode = $2 \
                   AND id = $3)"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .fetch_optional(conn)
    .await?)
}

/// A job waiting for a clock.
#[derive(Debug, Clone, FromRow)]
pub struct ClockJob {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub run_at: DateTime<Utc>,
}

/// The clock's earliest pending job due by `until`, if any.
pub async fn next_job(
    conn: &mut PgConnection,
    scope: Scope,
    clock: TestClockId,
    until: DateTime<Utc>,
) -> Result<Option<ClockJob>, DbError> {
    Ok(sqlx::query_as::<_, ClockJob>(
        "SELECT id, kind, payload, run_at FROM jobs WHERE test_clock_id = $1 \
         AND state = 'pending' AND run_at <= $2 AND tenant_id = $3 AND livemode = $4 \
         ORDER BY run_at, id LIMIT 1",
    )
    .bind(clock)
    .bind(until)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .fetch_optional(conn)
    .await?)
}

/// Records that a clock's job ran.
pub async fn finish_job(
    conn: &mut PgConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE jobs SET state = 'succeeded', attempts = attempts + 1, finished_at = $2, \
         updated_at = $2, last_error = NULL WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts a clock's job off until `run_at` (clock time), its attempts untouched: it waits for
/// something else to happen first (a payment in flight to be settled).
pub async fn defer_job(
    conn: &mut PgConnection,
    id: Uuid,
    run_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    // Out of the advance's run: the advance that runs it counts it.
    sqlx::query(
        "UPDATE jobs SET run_at = $2, updated_at = $3, billing_run_id = NULL \
         WHERE id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(run_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records that a clock's job failed; returns its failed runs so far. It stays pending (for
/// the next run of the advance) until it has failed
/// [`crate::service::test_clocks::MAX_JOB_ATTEMPTS`] times, or at once when `for_good` (no
/// run again could fix it); then it is dead.
pub async fn fail_job(
    conn: &mut PgConnection,
    id: Uuid,
    error: &str,
    for_good: bool,
    now: DateTime<Utc>,
) -> Result<i32, DbError> {
    let max = if for_good {
        1
    } else {
        crate::service::test_clocks::MAX_JOB_ATTEMPTS
    };
    let attempts: Option<i32> = sqlx::query_scalar(
        "UPDATE jobs SET attempts = attempts + 1, last_error = $2, updated_at = $3, \
         state = CASE WHEN attempts + 1 >= $4 THEN 'dead' ELSE state END, \
         finished_at = CASE WHEN attempts + 1 >= $4 THEN $3 ELSE finished_at END \
         WHERE id = $1 AND state = 'pending' RETURNING attempts",
    )
    .bind(id)
    .bind(error)
    .bind(now)
    .bind(max)
    .fetch_optional(conn)
    .await?;
    Ok(attempts.unwrap_or(i32::MAX))
}

/// Moves the clock to `at` while it advances (never back).
pub async fn reach(
    conn: &mut PgConnection,
    scope: Scope,
    id: TestClockId,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE test_clocks SET frozen_time = GREATEST(frozen_time, $4) \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes a clock with its customers (marked deleted), their subscriptions (canceled) and
/// the jobs that waited for it.
pub async fn delete(
    conn: &mut PgConnection,
    scope: Scope,
    id: TestClockId,
    now: DateTime<Utc>,
) -> Result<TestClockRow, DbError> {
    let row = lock(conn, scope, id).await?;
    // An advance under way ends here: its run too.
    super::billing_runs::complete_clock_runs(conn, id.as_uuid(), None, now).await?;
    sqlx::query(
        "DELETE FROM jobs WHERE tenant_id = $1 AND livemode = $2 AND test_clock_id = $3 \
         AND state = 'pending'",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE subscriptions SET status = 'canceled', canceled_at = COALESCE(canceled_at, $4), \
         ended_at = COALESCE(ended_at, $4), cancel_at_period_end = FALSE, updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND test_clock_id = $3 \
         AND status NOT IN ('canceled', 'incomplete_expired')",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE customers SET deleted_at = $4, updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND test_clock_id = $3 AND deleted_at IS NULL",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE test_clocks SET deleted_at = $4, updated_at = $4 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(row)
}
