//! Test clocks: a frozen time for test-mode customers that a tenant moves forward, so a month of
//! billing takes a request instead of a month.
//!
//! Every job about a clock's customers carries the clock and is never relayed by real time. An
//! advance (a `test_clock.advance` job) runs them one by one, earliest due first, each at its due
//! time on the clock, through the same service calls as real time ([`super::billing_jobs`]); jobs
//! they queue on the way run in turn when due before the target. The clock then stands at the
//! target, `ready`, with an event. The advance is a billing run scoped to the clock (trigger
//! `test_clock`, for the target time), listed with the fleet's: each job it runs is counted in
//! it (due, queued, then succeeded or failed once the advance is over).

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sqlx::PgPool;

use super::{ServiceError, ServiceResult, billing_jobs, events};
use crate::{
    clock::{Clock, FixedClock},
    db::{
        self,
        pagination::{Page, PageRequest},
        test_clocks::ClockStatus,
    },
    ids::{CustomerId, TestClockId},
    jobs::{self, Job},
    stripe::Stripe,
    tenancy::Scope,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::test_clocks::TestClockRow;

const WHAT: &str = "test clock";

/// Runs of one of a clock's jobs before it is dead and the advance goes on without it.
pub const MAX_JOB_ATTEMPTS: i32 = 3;

/// How far one advance may go.
pub const MAX_ADVANCE: Duration = Duration::days(5 * 366);

fn test_mode_only(scope: Scope) -> ServiceResult<()> {
    if scope.livemode() {
        return Err(ServiceError::Forbidden {
            code: "livemode_test_clock",
            message: "Test clocks exist in test mode only; use a test key.".into(),
        });
    }
    Ok(())
}

pub async fn create_test_clock(
    uow: &mut UnitOfWork,
    scope: Scope,
    name: &str,
    frozen_time: DateTime<Utc>,
) -> ServiceResult<TestClockRow> {
    test_mode_only(scope)?;
    let now = uow.now();
    let row = db::test_clocks::create(
        uow.conn(),
        scope,
        TestClockId::new(),
        name,
        frozen_time.trunc_subsecs(0),
        now,
    )
    .await?;
    events::record(uow, scope, "test_helpers.test_clock.created", row.to_json()).await?;
    Ok(row)
}

pub async fn list_test_clocks(
    pool: &PgPool,
    scope: Scope,
    page: PageRequest,
) -> ServiceResult<Page<TestClockRow>> {
    Ok(db::test_clocks::list(pool, scope, page).await?)
}

pub async fn get_test_clock(
    pool: &PgPool,
    scope: Scope,
    id: TestClockId,
) -> ServiceResult<TestClockRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::test_clocks::get(&mut conn, scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

/// Deletes a clock, its customers and their subscriptions (canceled), and what waited for it.
pub async fn delete_test_clock(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: TestClockId,
) -> ServiceResult<TestClockRow> {
    let now = uow.now();
    let row = db::test_clocks::delete(uow.conn(), scope, id, now)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let mut data = row.to_json();
    if let Some(o) = data.as_object_mut() {
        o.insert("deleted".into(), serde_json::Value::Bool(true));
    }
    events::record(uow, scope, "test_helpers.test_clock.deleted", data).await?;
    Ok(row)
}

/// Starts moving a clock forward to `to`: it is `advancing` until the worker fleet has run
/// everything that comes due for its customers on the way. A clock whose last advance failed
/// (`internal_failure`) goes on from where that one stopped.
pub async fn start_advance(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: TestClockId,
    to: DateTime<Utc>,
) -> ServiceResult<TestClockRow> {
    let now = uow.now();
    let to = to.trunc_subsecs(0);
    let mut clock = db::test_clocks::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if clock.status == ClockStatus::Advancing {
        return Err(ServiceError::conflict(
            "test_clock_advancing",
            "The test clock is advancing; wait until it is ready.",
        ));
    }
    if to <= clock.frozen_time {
        return Err(ServiceError::invalid(
            "frozen_time",
            "must be after the clock's current time (clocks never go back)",
        ));
    }
    if to > clock.frozen_time + MAX_ADVANCE {
        return Err(ServiceError::invalid(
            "frozen_time",
            "must be at most 5 years after the clock's current time",
        ));
    }
    if clock.status == ClockStatus::InternalFailure && clock.advancing_to != Some(to) {
        // The failed advance is over: this one goes elsewhere, with a run of its own.
        db::billing_runs::complete_clock_runs(uow.conn(), id.as_uuid(), None, now).await?;
    }
    clock.status = ClockStatus::Advancing;
    clock.advancing_to = Some(to);
    clock.updated_at = now;
    db::test_clocks::save(uow.conn(), scope, &clock).await?;
    // From scratch: an advance to the same time that failed before left its job dead.
    let job = Job::AdvanceTestClock { clock: id, to };
    jobs::enqueue_or_reset(uow.conn(), &[job.to_new(Some(scope), now)], now).await?;
    events::record(
        uow,
        scope,
        "test_helpers.test_clock.advancing",
        clock.to_json(),
    )
    .await?;
    Ok(clock)
}

/// Runs an advance to `to` (the `test_clock.advance` job): the clock's jobs due by `to`, one at
/// a time in due order, each at its time; then the clock stands at `to`, ready. Safe to run
/// again after a crash: what ran is done, and the rest runs.
pub async fn advance(
    pool: &PgPool,
    real: &dyn Clock,
    stripe: &Stripe,
    scope: Scope,
    id: TestClockId,
    to: DateTime<Utc>,
) -> ServiceResult<()> {
    // The advance is a billing run scoped to the clock: what it runs is counted there.
    let mut run = None;
    loop {
        let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
        let clock = match db::test_clocks::get(&mut conn, scope, id).await {
            Ok(c) => Some(c),
            // Deleted meanwhile: nothing left to advance.
            Err(db::DbError::NotFound) => None,
            Err(e) => return Err(e.into()),
        };
        let Some(clock) = clock.filter(|c| c.advancing_to == Some(to)) else {
            // Done already (this is a run again of an advance that ended), or gone: its run
            // is over too.
            db::billing_runs::complete_clock_runs(&mut conn, id.as_uuid(), Some(to), real.now())
                .await?;
            return Ok(());
        };
        if clock.status == ClockStatus::InternalFailure {
            // An operator retries the advance that failed: it goes on.
            let (from, to_status) = (ClockStatus::InternalFailure, ClockStatus::Advancing);
            set_advance_status(pool, real, scope, id, to, from, to_status).await?;
        }
        let run = match &run {
            Some(r) => r,
            None => run.insert(
                db::billing_runs::start_clock_run(pool, scope, id.as_uuid(), to, real.now())
                    .await?,
            ),
        };
        let Some(next) = db::test_clocks::next_job(&mut conn, scope, id, to).await? else {
            drop(conn);
            let mut uow = UnitOfWork::begin(pool, real).await?;
            let mut clock = db::test_clocks::lock(uow.conn(), scope, id).await?;
            if clock.advancing_to == Some(to) {
                clock.frozen_time = to;
                clock.status = ClockStatus::Ready;
                clock.advancing_to = None;
                clock.updated_at = uow.now();
                db::test_clocks::save(uow.conn(), scope, &clock).await?;
                let json = clock.to_json();
                events::record(&mut uow, scope, "test_helpers.test_clock.ready", json).await?;
            }
            let now = uow.now();
            db::billing_runs::complete_clock_runs(uow.conn(), id.as_uuid(), Some(to), now).await?;
            uow.commit().await?;
            return Ok(());
        };
        // The clock reaches the job's time (it never goes back), and the job runs then.
        let at = next.run_at.max(clock.frozen_time);
        db::test_clocks::reach(&mut conn, scope, id, at).await?;
        db::billing_runs::take_up(&mut conn, run, scope, next.id).await?;
        let result = match Job::parse(&next.kind, &next.payload) {
            Err(e) => Err(ServiceError::internal(e)),
            Ok(Job::AdvanceTestClock { .. }) => Err(ServiceError::internal(
                "an advance waiting for a test clock",
            )),
            Ok(ref job) => billing_jobs::run(pool, &FixedClock(at), stripe, scope, job).await,
        };
        match result {
            Ok(()) => db::test_clocks::finish_job(&mut conn, next.id, real.now()).await?,
            // Held back by a payment in flight (the customer must still authenticate, or the
            // gateway is processing it): it waits, attempts untouched, past this advance; the
            // next advance after the payment is settled runs it (as the worker defers it).
            Err(ServiceError::Conflict {
                code: "payment_in_progress",
                ..
            }) => {
                let later = to.max(at) + super::invoices::PAYMENT_IN_PROGRESS_RECHECK;
                db::test_clocks::defer_job(&mut conn, next.id, later, real.now()).await?;
            }
            // Stripe asked for fewer requests: nothing was done; the advance runs again a
            // little later (its job is deferred), and so does this job, its attempts kept.
            Err(
                e @ ServiceError::Upstream {
                    code: super::STRIPE_RATE_LIMITED,
                    ..
                },
            ) => return Err(e),
            Err(e) => {
                // A fault no run again can fix (bad input, a job that cannot be read) is dead
                // at once, as the worker fleet treats it; the advance goes on.
                let for_good =
                    matches!(e, ServiceError::Invalid { .. } | ServiceError::Internal(_));
                let error = e.to_string();
                let attempts =
                    db::test_clocks::fail_job(&mut conn, next.id, &error, for_good, real.now())
                        .await?;
                if attempts < MAX_JOB_ATTEMPTS && !for_good {
                    // The advance runs again (its job retries) and so does this job.
                    return Err(e);
                }
                // Dead, for an operator to look at; the clock goes on without it.
                tracing::warn!(job = %next.id, error = %e, "a test clock's job is dead");
            }
        }
    }
}

/// A customer's now: its test clock's time when it has one, else the unit of work's.
pub(crate) async fn customer_now(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
) -> ServiceResult<DateTime<Utc>> {
    let clock = db::test_clocks::of_customer(uow.conn(), scope, customer).await?;
    Ok(clock.map_or(uow.now(), |c| c.frozen_time))
}

/// An advance that cannot go on (its job is dead): the clock stands where the advance got to,
/// `internal_failure`, keeping where it was going, with an event; its run stays open. A new
/// advance, or an operator retrying the job, goes on from there. Nothing when the clock is no
/// longer advancing to `to`.
pub async fn fail_advance(
    pool: &PgPool,
    real: &dyn Clock,
    scope: Scope,
    id: TestClockId,
    to: DateTime<Utc>,
) -> ServiceResult<()> {
    set_advance_status(
        pool,
        real,
        scope,
        id,
        to,
        ClockStatus::Advancing,
        ClockStatus::InternalFailure,
    )
    .await
}

/// Moves the clock advancing to `to` from status `from` to `status`, with its event; nothing
/// when it is not in `from` with that target (any more).
async fn set_advance_status(
    pool: &PgPool,
    real: &dyn Clock,
    scope: Scope,
    id: TestClockId,
    to: DateTime<Utc>,
    from: ClockStatus,
    status: ClockStatus,
) -> ServiceResult<()> {
    let mut uow = UnitOfWork::begin(pool, real).await?;
    let mut clock = match db::test_clocks::lock(uow.conn(), scope, id).await {
        Ok(c) => c,
        Err(db::DbError::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if clock.status != from || clock.advancing_to != Some(to) {
        return Ok(());
    }
    clock.status = status;
    clock.updated_at = uow.now();
    db::test_clocks::save(uow.conn(), scope, &clock).await?;
    let kind = match status {
        ClockStatus::InternalFailure => "test_helpers.test_clock.internal_failure",
        _ => "test_helpers.test_clock.advancing",
    };
    events::record(&mut uow, scope, kind, clock.to_json()).await?;
    uow.commit().await?;
    Ok(())
}
