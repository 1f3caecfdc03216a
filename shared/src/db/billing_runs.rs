//! Billing runs: one per (scope, tick), which moves the billing jobs due by its time from
//! `scheduled` to `pending`, in batches, recording per tenant and mode what was due and what
//! it queued; completed once every job it queued has ended.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{ids::BillingRunId, jobs, tenancy::Scope};

/// What a run covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunScope {
    /// Every tenant (the fleet's schedule).
    Fleet,
    /// One tenant, both modes (on request).
    Tenant(Uuid),
    /// One test clock of a tenant (its advance).
    TestClock { tenant: Uuid, clock: Uuid },
}

impl RunScope {
    /// The stored key: `fleet` or `tenant:<uuid>`.
    pub fn key(self) -> String {
        match self {
            RunScope::Fleet => "fleet".into(),
            RunScope::Tenant(t) => format!("tenant:{t}"),
            RunScope::TestClock { clock, .. } => format!("test_clock:{clock}"),
        }
    }

    fn tenant(self) -> Option<Uuid> {
        match self {
            RunScope::Fleet => None,
            RunScope::Tenant(t) | RunScope::TestClock { tenant: t, .. } => Some(t),
        }
    }
}

crate::text_enum! {
    /// How a run came about.
    pub enum RunTrigger {
        /// A tick of the fleet's schedule.
        Schedule = "schedule",
        /// An operator asked for it.
        Manual = "manual",
        /// A test clock's advance.
        TestClock = "test_clock",
    }
}

crate::text_enum! {
    /// Where a run stands.
    pub enum RunStatus {
        /// Moving what is due to the queue.
        Running = "running",
        /// Everything due is queued; the jobs are running.
        Enqueued = "enqueued",
        /// Every job it queued has ended.
        Completed = "completed",
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct BillingRunRow {
    pub id: BillingRunId,
    pub scope: String,
    pub tenant_id: Option<Uuid>,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: RunTrigger,
    pub status: RunStatus,
    pub missed_ticks: i32,
    pub owner: String,
    pub started_at: DateTime<Utc>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, scope, tenant_id, scheduled_for, trigger, status, missed_ticks, \
    owner, started_at, enqueued_at, completed_at";

/// A run as one tenant and mode sees it: its own counts.
#[derive(Debug, Clone, FromRow)]
pub struct TenantRunRow {
    pub id: BillingRunId,
    pub scheduled_for: DateTime<Utc>,
    pub trigger: RunTrigger,
    pub status: RunStatus,
    pub started_at: DateTime<Utc>,
    pub enqueued_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub livemode: bool,
    pub due: i64,
    pub enqueued: i64,
    pub succeeded: i64,
    pub failed: i64,
}

/// Makes the run of `scope` at `tick`, owned by `owner` until `lease_until`; `None` when that
/// run exists already (another process made it: each tick makes one run).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    pool: &PgPool,
    scope: RunScope,
    tick: DateTime<Utc>,
    trigger: RunTrigger,
    missed_ticks: i32,
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<BillingRunRow>, DbError> {
    Ok(sqlx::query_as::<_, BillingRunRow>(sqlf!(
        "INSERT INTO billing_runs (id, scope, tenant_id, scheduled_for, trigger, status, \
         missed_ticks, owner, lease_until, started_at) \
         VALUES ($1, $2, $3, $4, $5, 'running', $6, $7, $8, $9) \
         ON CONFLICT (scope, scheduled_for) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(BillingRunId::new())
    .bind(scope.key())
    .bind(scope.tenant())
    .bind(tick)
    .bind(trigger)
    .bind(missed_ticks)
    .bind(owner)
    .bind(lease_until)
    .bind(now)
    .fetch_optional(pool)
    .await?)
}

/// Takes over a run still running whose owner's lease ran out (it died in the middle).
pub async fn take_over(
    pool: &PgPool,
    owner: &str,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Option<BillingRunRow>, DbError> {
    Ok(sqlx::query_as::<_, BillingRunRow>(sqlf!(
        "UPDATE billing_runs SET owner = $1, lease_until = $3 WHERE id = \
         (SELECT id FROM billing_runs WHERE status = 'running' AND lease_until < $2 \
          AND trigger <> 'test_clock' \
          ORDER BY scheduled_for LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}"
    ))
    .bind(owner)
    .bind(now)
    .bind(lease_until)
    .fetch_optional(pool)
    .await?)
}

/// The latest tick the fleet's schedule made a run for.
pub async fn last_tick(pool: &PgPool) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT max(scheduled_for) FROM billing_runs WHERE scope = 'fleet' \
         AND trigger = 'schedule'",
    )
    .fetch_one(pool)
    .await?)
}

/// Records what is due by the run's time for each tenant and mode (counted again, over what
/// was queued already, when a run is taken over).
pub async fn count_due(pool: &PgPool, run: &BillingRunRow) -> Result<i64, DbError> {
    let rows = sqlx::query(
        "INSERT INTO billing_run_tenants (run_id, tenant_id, livemode, due) \
         SELECT $1, tenant_id, livemode, count(*) FROM jobs \
         WHERE state = 'scheduled' AND run_at <= $2 AND test_clock_id IS NULL \
         AND tenant_id IS NOT NULL AND ($3::uuid IS NULL OR tenant_id = $3) \
         GROUP BY tenant_id, livemode ORDER BY tenant_id, livemode \
         ON CONFLICT (run_id, tenant_id, livemode) \
         DO UPDATE SET due = billing_run_tenants.enqueued + EXCLUDED.due",
    )
    .bind(run.id)
    .bind(run.scheduled_for)
    .bind(run.tenant_id)
    .execute(pool)
    .await?;
    Ok(i64::try_from(rows.rows_affected()).unwrap_or(i64::MAX))
}

/// Moves up to `limit` of the billing jobs due by the run's time to the queue (earliest due
/// first; ones another statement holds are left for the next batch or run), counts them per
/// tenant and mode, renews the run's lease and wakes the relays, in one transaction; returns
/// how many it moved. `NotFound` when the run is no longer this process's (another took it
/// over): nothing is moved then.
pub async fn enqueue_batch(
    pool: &PgPool,
    run: &BillingRunRow,
    limit: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    // Still this process's run (another may have taken it over): else nothing is moved.
    let owned = sqlx::query(
        "UPDATE billing_runs SET lease_until = $2 WHERE id = $1 AND owner = $3 \
         AND status = 'running'",
    )
    .bind(run.id)
    .bind(lease_until)
    .bind(&run.owner)
    .execute(&mut *tx)
    .await?;
    if owned.rows_affected() == 0 {
        return Err(DbError::NotFound);
    }
    let moved: Vec<(Option<Uuid>, Option<bool>, i64)> = sqlx::query_as(
        "WITH moved AS (UPDATE jobs SET state = 'pending', billing_run_id = $1, updated_at = $4 \
             WHERE id IN (SELECT id FROM jobs WHERE state = 'scheduled' AND run_at <= $2 \
                 AND test_clock_id IS NULL AND ($3::uuid IS NULL OR tenant_id = $3) \
                 ORDER BY run_at LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING tenant_id, livemode) \
         SELECT tenant_id, livemode, count(*) FROM moved \
         GROUP BY tenant_id, livemode ORDER BY tenant_id, livemode",
    )
    .bind(run.id)
    .bind(run.scheduled_for)
    .bind(run.tenant_id)
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let n: i64 = moved.iter().map(|m| m.2).sum();
    let counted: Vec<(Uuid, bool, i64)> = moved
        .into_iter()
        .filter_map(|(t, l, c)| Some((t?, l?, c)))
        .collect();
    if n > 0 {
        let (tenants, modes, counts): (Vec<Uuid>, Vec<bool>, Vec<i64>) = counted.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut t, mut l, mut c), (tenant, livemode, count)| {
                t.push(tenant);
                l.push(livemode);
                c.push(count);
                (t, l, c)
            },
        );
        sqlx::query(
            "INSERT INTO billing_run_tenants (run_id, tenant_id, livemode, due, enqueued) \
             SELECT $1, u.t, u.l, u.n, u.n FROM unnest($2::uuid[], $3::bool[], $4::bigint[]) \
                 AS u(t, l, n) \
             ON CONFLICT (run_id, tenant_id, livemode) DO UPDATE SET \
             enqueued = billing_run_tenants.enqueued + EXCLUDED.enqueued, \
             due = GREATEST(billing_run_tenants.due, \
                 billing_run_tenants.enqueued + EXCLUDED.enqueued)",
        )
        .bind(run.id)
        .bind(&tenants)
        .bind(&modes)
        .bind(&counts)
        .execute(&mut *tx)
        .await?;
        jobs::notify(&mut tx, jobs::SCHEDULED_QUEUE).await?;
    }
    tx.commit().await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Everything due by the run's time is queued (by its owner: one that lost the run to another
/// process changes nothing).
pub async fn mark_enqueued(
    pool: &PgPool,
    run: &BillingRunRow,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE billing_runs SET status = 'enqueued', enqueued_at = $2 \
         WHERE id = $1 AND status = 'running' AND owner = $3",
    )
    .bind(run.id)
    .bind(now)
    .bind(&run.owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps, for each tenant's mode of the runs `runs` names (an SQL set of run ids, such as
/// `SELECT unnest($1::uuid[])`), how many of its jobs succeeded and how many failed for good
/// (they can then be purged): the runs' jobs are counted in one pass, grouped by tenant and
/// mode, whatever the number of tenants.
fn settle(runs: &str) -> String {
    format!(
        "counted AS (SELECT j.billing_run_id AS run_id, j.tenant_id, j.livemode, \
             count(*) FILTER (WHERE j.state = 'succeeded') AS succeeded, \
             count(*) FILTER (WHERE j.state = 'dead') AS failed \
             FROM jobs j WHERE j.billing_run_id IN ({runs}) \
             AND j.state IN ('succeeded', 'dead') GROUP BY 1, 2, 3), \
         settled AS (SELECT t.run_id, t.tenant_id, t.livemode, \
             COALESCE(c.succeeded, 0) AS succeeded, COALESCE(c.failed, 0) AS failed \
             FROM billing_run_tenants t LEFT JOIN counted c \
             USING (run_id, tenant_id, livemode) WHERE t.run_id IN ({runs})) \
         UPDATE billing_run_tenants b SET succeeded = s.succeeded, failed = s.failed \
         FROM settled s WHERE b.run_id = s.run_id AND b.tenant_id = s.tenant_id \
         AND b.livemode = s.livemode"
    )
}

/// Completes the runs whose queued jobs have all ended, keeping how many succeeded and how
/// many failed for good per tenant and mode (their jobs can then be purged); returns how many
/// it completed.
pub async fn complete_finished(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    let done: Vec<(BillingRunId,)> = sqlx::query_as(
        "UPDATE billing_runs r SET status = 'completed', completed_at = $1 \
         WHERE r.status = 'enqueued' AND r.trigger <> 'test_clock' \
         AND NOT EXISTS (SELECT 1 FROM jobs j \
             WHERE j.billing_run_id = r.id AND j.state = 'pending') \
         RETURNING r.id",
    )
    .bind(now)
    .fetch_all(&mut *tx)
    .await?;
    if !done.is_empty() {
        let ids: Vec<BillingRunId> = done.iter().map(|d| d.0).collect();
        sqlx::query(sqlf!("WITH {}", settle("SELECT unnest($1::uuid[])")))
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(done.len() as u64)
}

/// Makes the run of a test clock's advance to `to` (scope [`RunScope::TestClock`]), or finds
/// it when the advance runs again (it failed in the middle). The advance carries it out: the
/// fleet neither takes it over nor completes it.
pub async fn start_clock_run(
    pool: &PgPool,
    scope: Scope,
    clock: Uuid,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<BillingRunRow, DbError> {
    let key = RunScope::TestClock {
        tenant: scope.tenant_id().as_uuid(),
        clock,
    }
    .key();
    let run = sqlx::query_as::<_, BillingRunRow>(sqlf!(
        "INSERT INTO billing_runs (id, scope, tenant_id, scheduled_for, trigger, status, \
         missed_ticks, owner, lease_until, started_at) \
         VALUES ($1, $2, $3, $4, 'test_clock', 'running', 0, 'test_clock', $5, $5) \
         ON CONFLICT (scope, scheduled_for) DO UPDATE SET scope = EXCLUDED.scope \
         RETURNING {COLUMNS}"
    ))
    .bind(BillingRunId::new())
    .bind(&key)
    .bind(scope.tenant_id())
    .bind(to)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(run)
}

/// Counts a job of a clock's advance in its run (once: as due and queued) as the advance takes
/// it up.
pub async fn take_up(
    conn: &mut PgConnection,
    run: &BillingRunRow,
    scope: Scope,
    job: Uuid,
) -> Result<(), DbError> {
    let taken = sqlx::query(
        "UPDATE jobs SET billing_run_id = $2 WHERE id = $1 \
         AND billing_run_id IS DISTINCT FROM $2",
    )
    .bind(job)
    .bind(run.id)
    .execute(&mut *conn)
    .await?;
    if taken.rows_affected() == 1 {
        sqlx::query(
            "INSERT INTO billing_run_tenants (run_id, tenant_id, livemode, due, enqueued) \
             VALUES ($1, $2, $3, 1, 1) ON CONFLICT (run_id, tenant_id, livemode) \
             DO UPDATE SET due = billing_run_tenants.due + 1, \
                 enqueued = billing_run_tenants.enqueued + 1",
        )
        .bind(run.id)
        .bind(scope.tenant_id())
        .bind(scope.livemode())
        .execute(conn)
        .await?;
    }
    Ok(())
}

/// Completes the open runs of a clock's advances (the run of the advance to `to` when given:
/// it is over; all of them when the clock is gone), keeping how many of their jobs succeeded and
/// how many failed for good.
pub async fn complete_clock_runs(
    conn: &mut PgConnection,
    clock: Uuid,
    to: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(sqlf!(
        "WITH done AS (UPDATE billing_runs SET status = 'completed', enqueued_at = $2, \
             completed_at = $2 WHERE scope = 'test_clock:' || $1::text \
             AND ($3::timestamptz IS NULL OR scheduled_for = $3) \
             AND status <> 'completed' RETURNING id), {}",
        settle("SELECT id FROM done")
    ))
    .bind(clock)
    .bind(now)
    .bind(to)
    .execute(conn)
    .await?;
    Ok(())
}

/// The columns of a run as a tenant and mode sees it (`b`: its row of billing_run_tenants):
/// until the run is completed, what succeeded and failed so far is counted from its jobs.
const TENANT_VIEW: &str = "r.id, r.scheduled_for, r.trigger, r.status, r.started_at, \
    r.enqueued_at, r.completed_at, b.livemode, b.due, b.enqueued, \
    COALESCE(b.succeeded, (SELECT count(*) FROM jobs j WHERE j.billing_run_id = r.id \
        AND j.tenant_id = b.tenant_id AND j.livemode = b.livemode AND j.state = 'succeeded')) \
        AS succeeded, \
    COALESCE(b.failed, (SELECT count(*) FROM jobs j WHERE j.billing_run_id = r.id \
        AND j.tenant_id = b.tenant_id AND j.livemode = b.livemode AND j.state = 'dead')) \
        AS failed";

/// The runs that found something due for a tenant's mode, newest first.
pub async fn list_for(
    pool: &PgPool,
    scope: Scope,
    page: PageRequest,
) -> Result<Page<TenantRunRow>, DbError> {
    let (cond, order) = page.sql_on("r.id", 3);
    let rows = sqlx::query_as::<_, TenantRunRow>(sqlf!(
        "SELECT {TENANT_VIEW} FROM billing_run_tenants b JOIN billing_runs r ON r.id = b.run_id \
         WHERE b.tenant_id = $1 AND b.livemode = $2 AND {cond} ORDER BY {order} LIMIT $4"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// One run as a tenant's mode sees it (`NotFound` when it found nothing due for it).
pub async fn get_for(
    pool: &PgPool,
    scope: Scope,
    id: BillingRunId,
) -> Result<TenantRunRow, DbError> {
    sqlx::query_as::<_, TenantRunRow>(sqlf!(
        "SELECT {TENANT_VIEW} FROM billing_run_tenants b JOIN billing_runs r ON r.id = b.run_id \
         WHERE b.tenant_id = $1 AND b.livemode = $2 AND r.id = $3"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(pool)
    .await?
    .ok_or(DbError::NotFound)
}

/// Every run, newest first (operators), with its totals over tenants.
pub async fn list_all(
    pool: &PgPool,
    limit: i64,
) -> Result<Vec<(BillingRunRow, i64, i64)>, DbError> {
    #[derive(FromRow)]
    struct Row {
        #[sqlx(flatten)]
        run: BillingRunRow,
        due: i64,
        enqueued: i64,
    }
    let rows = sqlx::query_as::<_, Row>(sqlf!(
        "SELECT {COLUMNS}, \
         COALESCE((SELECT sum(due) FROM billing_run_tenants b WHERE b.run_id = r.id), 0)::bigint \
             AS due, \
         COALESCE((SELECT sum(enqueued) FROM billing_run_tenants b WHERE b.run_id = r.id), 0) \
             ::bigint AS enqueued \
         FROM billing_runs r ORDER BY started_at DESC, id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.run, r.due, r.enqueued))
        .collect())
}
