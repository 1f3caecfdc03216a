//! The billing jobs: charging an invoice (`invoice.pay`), renewing a subscription's period
//! (`subscription.renew`), expiring an unpaid first invoice (`subscription.expire_incomplete`)
//! and advancing a test clock (`test_clock.advance`). Each is a service call that re-reads what
//! it acts on under a lock and does nothing when the job is stale, so a job that runs twice,
//! late or on two workers changes nothing more.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use shared::{
    ids::{InvoiceId, SubscriptionId},
    jobs::{self, Claimed, Finished, Job, Outcome, Queue},
    service::{
        STRIPE_RATE_LIMITED, ServiceError, ServiceResult, billing_jobs, invoices,
        subscriptions::Renewal, test_clocks,
    },
    tenancy::Scope,
    uow::UnitOfWork,
};
use uuid::Uuid;

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
    let mut outcome = outcome_of(rt, job, result.as_ref().map(|_| ()));
    if let (Outcome::Dead { error }, Some(scope), Job::AdvanceTestClock { clock, to }) =
        (&outcome, job.scope(), what)
    {
        // The advance is over for now: its clock must not stay `advancing` for good. Until
        // that is recorded, the job is not dead either.
        let failed =
            test_clocks::fail_advance(&rt.pool, rt.clock.as_ref(), scope, *clock, *to).await;
        if let Err(e) = failed {
            tracing::warn!(job = %job.id, error = %e, "a test clock's failed advance is not recorded yet");
            outcome = Outcome::Retry {
                at: rt.clock.now() + chrono::Duration::minutes(1),
                error: error.clone(),
            };
        }
    }
    Finished {
        id: job.id,
        token: job.token,
        outcome,
    }
}

/// What a billing job's result makes of it.
fn outcome_of(rt: &Runtime, job: &Claimed, result: Result<(), &ServiceError>) -> Outcome {
    let policy = crate::retry_policy(
        &rt.settings,
        Queue::parse(&job.queue).unwrap_or(Queue::Renewals),
    );
    outcome_for(policy, job, rt.clock.now(), result)
}

/// How long a job Stripe asked to slow down for waits, at least (and up to twice as long).
const SLOW_DOWN: chrono::Duration = chrono::Duration::seconds(5);

/// What a billing job's result makes of it at `now`, with its queue's retry policy.
fn outcome_for(
    policy: shared::jobs::RetryPolicy,
    job: &Claimed,
    now: DateTime<Utc>,
    result: Result<(), &ServiceError>,
) -> Outcome {
    match result {
        Ok(()) => Outcome::Succeeded,
        // A payment of the invoice is on its way (waiting for the customer, or a bank debit
        // processing for days): not a failure; looked at again later, without using up the
        // job's attempts, until the payment has an outcome.
        Err(ServiceError::Conflict {
            code: "payment_in_progress",
            ..
        }) => Outcome::Defer {
            at: now + invoices::PAYMENT_IN_PROGRESS_RECHECK,
        },
        // Stripe asked for fewer requests (a billing run charging thousands at once): nothing
        // was done, and waiting is all it takes; the job's attempts are kept for failures.
        Err(ServiceError::Upstream {
            code: STRIPE_RATE_LIMITED,
            ..
        }) => Outcome::Defer {
            at: now + SLOW_DOWN + SLOW_DOWN * i32::from(rand::random::<u8>()) / 255,
        },
        // A fault no retry can fix: dead at once, for an operator.
        Err(e @ (ServiceError::Invalid { .. } | ServiceError::Internal(_))) => Outcome::Dead {
            error: e.to_string(),
        },
        // The database or the gateway could not be reached, a lock conflicted, or the payment
        // method is not attached to its Stripe customer yet (`payment_method_not_synced`:
        // nothing was sent or recorded): again later.
        Err(e) => {
            Outcome::after_failure(policy, job.attempts, job.max_attempts, now, e.to_string())
        }
    }
}

/// The jobs of a batch, each read with `read` (`None` when one is not of the batch's kind).
fn read_all<T>(batch: &[Claimed], read: impl Fn(Scope, Job) -> Option<T>) -> Option<Vec<T>> {
    batch
        .iter()
        .map(|job| read(job.scope()?, Job::parse(&job.kind, &job.payload).ok()?))
        .collect()
}

/// Records the outcomes of a batch's jobs in one statement; each with whether it was
/// recorded (a job another run owns now is not).
async fn finish_all(
    conn: &mut sqlx::PgConnection,
    finished: Vec<Finished>,
    now: chrono::DateTime<chrono::Utc>,
) -> ServiceResult<Vec<(Finished, bool)>> {
    let done = jobs::finish(conn, &finished, now).await?;
    Ok(recorded(finished, &done))
}

/// Each finished run with whether its outcome was recorded (its id among `done`).
fn recorded(finished: Vec<Finished>, done: &[Uuid]) -> Vec<(Finished, bool)> {
    let done: HashSet<&Uuid> = done.iter().collect();
    finished
        .into_iter()
        .map(|f| {
            let recorded = done.contains(&f.id);
            (f, recorded)
        })
        .collect()
}

/// A due period: the subscription and the end of its current period.
type Due = (Scope, SubscriptionId, DateTime<Utc>);

/// A charge a renewal left this process to run, and its first attempt when the renewal
/// started it.
pub type Held = shared::uow::HeldJob;

/// Renews the periods of several `subscription.renew` jobs in one transaction, which also
/// records them as succeeded; returns each job's outcome, whether it was recorded (a job
/// another run owns now is not, its renewal being made once all the same), and the charge of
/// the invoice it made, when there is one to run now: queued leased to this process, which
/// runs it at once instead of waiting for the relay to hand it to the fleet (should it not,
/// the lease runs out and the relay does). `None` when a job is not a renewal. On an error
/// nothing is written, and the caller runs the jobs one by one: the error is then one job's.
pub async fn renew_together(
    rt: &Runtime,
    batch: &[Claimed],
) -> Option<ServiceResult<Vec<(Finished, bool, Option<Held>)>>> {
    // Each job's place in the batch, and the period it renews.
    let mut renewals: Vec<(usize, Due)> = read_all(batch, |scope, job| match job {
        Job::RenewSubscription {
            subscription,
            period_start,
        } => Some((scope, subscription, period_start)),
        _ => None,
    })?
    .into_iter()
    .enumerate()
    .collect();
    // Subscriptions locked in one order by every batch, so that two never wait in a cycle.
    renewals.sort_by_key(|(_, (_, subscription, _))| subscription.as_uuid());
    Some(
        async {
            let mut uow = UnitOfWork::begin(&rt.pool, rt.clock.as_ref()).await?;
            let lease = chrono::Duration::from_std(rt.settings.jobs.lease)
                .map_err(|e| ServiceError::internal(e.to_string()))?;
            uow.hold_jobs(uow.now() + lease, &rt.stripe);
            let keys: Vec<_> = renewals.iter().map(|(_, r)| *r).collect();
            let answers = billing_jobs::renew_many(&mut uow, &keys).await?;
            let mut held: HashMap<InvoiceId, Held> = uow
                .take_held()
                .into_iter()
                .filter_map(|(c, started)| match Job::parse(&c.kind, &c.payload) {
                    Ok(Job::PayInvoice { invoice, .. }) => Some((invoice, (c, started))),
                    _ => None,
                })
                .collect();
            let mut charges: Vec<Option<Held>> = (0..batch.len()).map(|_| None).collect();
            for ((at, _), answer) in renewals.iter().zip(answers) {
                if let Renewal::Renewed {
                    invoice: Some(invoice),
                } = answer
                {
                    charges[*at] = held.remove(&invoice);
                }
            }
            let finished = batch
                .iter()
                .map(|job| Finished {
                    id: job.id,
                    token: job.token,
                    outcome: Outcome::Succeeded,
                })
                .collect();
            let now = uow.now();
            let done = finish_all(uow.conn(), finished, now).await?;
            uow.commit().await?;
            // Held by this process from now on: handed back should it stop before running them.
            for (charge, _) in charges.iter().flatten() {
                rt.hold(charge.id, charge.token);
            }
            Ok(done
                .into_iter()
                .zip(charges)
                .map(|((f, recorded), charge)| (f, recorded, charge))
                .collect())
        }
        .await,
    )
}

/// Charges the invoices of several `invoice.pay` jobs together
/// ([`invoices::run_attempts_finishing`]: two transactions for all, the second recording the
/// answers and the jobs' outcomes; a gateway failure worth trying again is a retry of that job
/// alone), each with the attempt `started` for it when there is one (the first transaction is
/// then left out for it). Returns each job's outcome and whether it was recorded; `None` when
/// a job is not a charge. On an error the caller runs the jobs one by one: an attempt that
/// started is then resumed, with its idempotency key.
pub async fn pay_together(
    rt: &Runtime,
    batch: &[Claimed],
    started: Vec<Option<invoices::Attempt>>,
) -> Option<ServiceResult<Vec<(Finished, bool)>>> {
    let charges = read_all(batch, |scope, job| match job {
        Job::PayInvoice { invoice, attempt } => Some((scope, invoice, attempt)),
        _ => None,
    })?;
    Some(
        async {
            let (_, finished, done) = invoices::run_attempts_finishing(
                &rt.pool,
                rt.clock.as_ref(),
                &rt.stripe,
                &charges,
                started,
                |results| {
                    batch
                        .iter()
                        .zip(results)
                        .map(|(job, result)| Finished {
                            id: job.id,
                            token: job.token,
                            outcome: outcome_of(rt, job, result.as_ref().map(|_| ())),
                        })
                        .collect()
                },
            )
            .await?;
            Ok(recorded(finished, &done))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;
    use shared::{jobs::RetryPolicy, stripe::Failure};

    use super::*;

    fn charge(attempts: i32) -> Claimed {
        Claimed {
            id: Uuid::new_v4(),
            token: Uuid::new_v4(),
            queue: "renewals".into(),
            kind: "invoice.pay".into(),
            tenant_id: Some(Uuid::new_v4()),
            livemode: Some(false),
            payload: serde_json::json!({}),
            attempts,
            max_attempts: 3,
        }
    }

    #[test]
    fn stripe_asking_for_fewer_requests_defers_a_charge_without_using_up_its_attempts() {
        let policy = RetryPolicy {
            max_attempts: 3,
            base: Duration::from_secs(60),
            cap: Duration::from_secs(3600),
        };
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
        let limited = ServiceError::from(Failure::RateLimited);
        // On its last attempt too: never dead for being asked to wait.
        for attempts in [0, 2] {
            match outcome_for(policy, &charge(attempts), now, Err(&limited)) {
                Outcome::Defer { at } => {
                    assert!(at >= now + SLOW_DOWN && at <= now + SLOW_DOWN * 2, "{at}");
                }
                other => panic!("{other:?}"),
            }
        }
        // Stripe out of reach is a failure: retried while attempts last, then dead.
        let down = ServiceError::from(Failure::Transient("timeout".into()));
        assert!(matches!(
            outcome_for(policy, &charge(0), now, Err(&down)),
            Outcome::Retry { .. }
        ));
        assert!(matches!(
            outcome_for(policy, &charge(2), now, Err(&down)),
            Outcome::Dead { .. }
        ));
        assert_eq!(
            outcome_for(policy, &charge(0), now, Ok(())),
            Outcome::Succeeded
        );
    }
}
