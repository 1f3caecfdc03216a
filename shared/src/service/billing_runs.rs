//! Billing runs: the fleet's schedule makes one per tick (and an operator one on request);
//! a run moves the billing jobs due by its time to the queue in batches, never holding more
//! than a batch in memory, and is then completed once they have all ended. A run whose
//! process died is taken over by another (moving jobs again is harmless: a job moved is no
//! longer scheduled).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

use super::{ServiceError, ServiceResult};
use crate::{
    clock::Clock,
    db::{
        self,
        billing_runs::{BillingRunRow, RunScope, RunTrigger},
        pagination::{Page, PageRequest},
    },
    ids::BillingRunId,
    tenancy::Scope,
};

/// A run as one tenant and mode see it.
pub use crate::db::billing_runs::TenantRunRow;

/// Jobs moved to the queue per statement.
pub const BATCH: i64 = 1_000;
/// How long a run's owner holds it between batches before another process may take it over.
pub const LEASE: Duration = Duration::seconds(30);

/// Makes the run of `scope` at `tick` and carries it out; `None` when that run exists already
/// (another process made it). Returns the run and how many jobs it queued.
pub async fn run(
    pool: &PgPool,
    clock: &dyn Clock,
    scope: RunScope,
    tick: DateTime<Utc>,
    trigger: RunTrigger,
    missed_ticks: i32,
    owner: &str,
) -> ServiceResult<Option<(BillingRunRow, u64)>> {
    let now = clock.now();
    let Some(run) = db::billing_runs::start(
        pool,
        scope,
        tick,
        trigger,
        missed_ticks,
        owner,
        now,
        now + LEASE,
    )
    .await?
    else {
        return Ok(None);
    };
    let queued = carry_out(pool, clock, &run).await?;
    Ok(Some((run, queued)))
}

/// Takes over a run whose process died before it was done, and carries it out.
pub async fn take_over(
    pool: &PgPool,
    clock: &dyn Clock,
    owner: &str,
) -> ServiceResult<Option<(BillingRunRow, u64)>> {
    let now = clock.now();
    let Some(run) = db::billing_runs::take_over(pool, owner, now, now + LEASE).await? else {
        return Ok(None);
    };
    let queued = carry_out(pool, clock, &run).await?;
    Ok(Some((run, queued)))
}

/// Counts what is due by the run's time, then queues it batch after batch.
async fn carry_out(pool: &PgPool, clock: &dyn Clock, run: &BillingRunRow) -> ServiceResult<u64> {
    db::billing_runs::count_due(pool, run).await?;
    let mut queued = 0;
    loop {
        let now = clock.now();
        let n = match db::billing_runs::enqueue_batch(pool, run, BATCH, now, now + LEASE).await {
            Ok(n) => n,
            // Taken over by another process (this one was too slow): it carries the run on.
            Err(db::DbError::NotFound) => return Ok(queued),
            Err(e) => return Err(e.into()),
        };
        queued += n;
        if n < u64::try_from(BATCH).unwrap_or(0) {
            break;
        }
    }
    db::billing_runs::mark_enqueued(pool, run, clock.now()).await?;
    Ok(queued)
}

/// The runs that found something due for a tenant's mode, newest first.
pub async fn list(
    pool: &PgPool,
    scope: Scope,
    page: PageRequest,
) -> ServiceResult<Page<TenantRunRow>> {
    Ok(db::billing_runs::list_for(pool, scope, page).await?)
}

/// One run as a tenant's mode sees it.
pub async fn get(pool: &PgPool, scope: Scope, id: BillingRunId) -> ServiceResult<TenantRunRow> {
    db::billing_runs::get_for(pool, scope, id)
        .await
        .map_err(ServiceError::not_found("billing run"))
}
