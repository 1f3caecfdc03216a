//! The billing jobs: charging an invoice (`invoice.pay`), renewing a subscription's period
//! (`subscription.renew`), expiring an unpaid first invoice (`subscription.expire_incomplete`)
//! and advancing a test clock (`test_clock.advance`). Each is a service call that re-reads what
//! it acts on under a lock and does nothing when the job is stale, so a job that runs twice,
//! late or on two workers changes nothing more.

use shared::{
    jobs::{Claimed, Finished, Job, Outcome, Queue},
    service::{ServiceError, billing_jobs, test_clocks},
};

use crate::Runtime;

pub async fn run(rt: &Runtime, job: &Claimed, what: &Job) -> Finished {
    let result = match job.scope() {
        None => Err(ServiceError::internal("a billing job without a tenant")),
        Some(scope) => match what {
            Job::AdvanceTestClock { clock, to } => {
                test_clocks::advance(&rt.pool, rt.clock.as_ref(), &rt.stripe, scope, *clock, *to)
                    .await
            }
            other => billing_jobs::run(&rt.pool, rt.clock.as_ref(), &rt.stripe, scope, other).await,
        },
    };
    let outcome = match result {
        Ok(()) => Outcome::Succeeded,
        // A fault no retry can fix: dead at once, for an operator.
        Err(e @ (ServiceError::Invalid { .. } | ServiceError::Internal(_))) => Outcome::Dead {
            error: e.to_string(),
        },
        // The database or the gateway could not be reached, or a lock conflicted: again later.
        Err(e) => Outcome::after_failure(
            crate::retry_policy(&rt.settings, Queue::Renewals),
            job.attempts,
            job.max_attempts,
            rt.clock.now(),
            e.to_string(),
        ),
    };
    Finished {
        id: job.id,
        token: job.token,
        outcome,
    }
}
