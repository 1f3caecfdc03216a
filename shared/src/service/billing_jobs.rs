//! The billing jobs, run the same way by a worker (real time) and by a test clock's advance
//! (the clock's time): each is a service call that re-reads what it acts on under a lock and
//! does nothing when the job is stale.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{
    ServiceError, ServiceResult, dunning, invoices, refunds,
    subscriptions::{self, Renewal},
    usage_limits,
};
use crate::{
    clock::Clock, ids::SubscriptionId, jobs::Job, stripe::Stripe, tenancy::Scope, uow::UnitOfWork,
};

/// Runs one billing job for `scope` at `clock`'s time (a test clock's advance is run by
/// [`super::test_clocks::advance`], which runs the others through here).
pub async fn run(
    pool: &PgPool,
    clock: &dyn Clock,
    stripe: &Stripe,
    scope: Scope,
    job: &Job,
) -> ServiceResult<()> {
    match job {
        Job::PayInvoice { invoice, attempt } => {
            invoices::run_attempt(pool, clock, stripe, scope, *invoice, *attempt).await?;
        }
        Job::RenewSubscription {
            subscription,
            period_start,
        } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            renew_many(&mut uow, &[(scope, *subscription, *period_start)]).await?;
            uow.commit().await?;
        }
        Job::TrialWillEnd {
            subscription,
            trial_end,
        } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            subscriptions::trial_will_end(&mut uow, scope, *subscription, *trial_end).await?;
            uow.commit().await?;
        }
        Job::RefundPayment { refund } => {
            refunds::run_refund(pool, clock, stripe, scope, *refund).await?;
        }
        Job::EndDunning { invoice, attempt } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            dunning::end_dunning(&mut uow, scope, *invoice, *attempt).await?;
            uow.commit().await?;
        }
        Job::InvoiceOverdue { invoice } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            dunning::overdue(&mut uow, scope, *invoice).await?;
            uow.commit().await?;
        }
        Job::FinalizeInvoice { invoice, at } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            super::renewals::finalize_draft(&mut uow, scope, *invoice, Some(*at)).await?;
            uow.commit().await?;
        }
        Job::CheckUsageLimits { subscription, .. } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            usage_limits::check_in(&mut uow, scope, *subscription).await?;
            uow.commit().await?;
        }
        Job::ExpireIncomplete { subscription } => {
            let mut uow = UnitOfWork::begin(pool, clock).await?;
            subscriptions::expire_incomplete(&mut uow, scope, *subscription).await?;
            uow.commit().await?;
        }
        other => {
            return Err(ServiceError::internal(format!(
                "`{}` is not a billing job",
                other.kind()
            )));
        }
    }
    Ok(())
}

/// Renews due periods (`subscription.renew` jobs: the subscription and the end of its current
/// period) in one unit of work ([`super::renewals::renew_many`]), numbering their invoices at
/// its commit: a worker makes a batch of renewals with a few statements and one commit. The
/// first failure is the answer, and the unit of work is then to be rolled back (the caller runs
/// them one by one). Returns what became of each renewal, in the order given.
pub async fn renew_many(
    uow: &mut UnitOfWork,
    renewals: &[(Scope, SubscriptionId, DateTime<Utc>)],
) -> ServiceResult<Vec<Renewal>> {
    super::renewals::renew_many(uow, renewals).await
}
