//! The billing jobs: charging an invoice (`invoice.pay`), renewing a subscription's period
//! (`subscription.renew`) and expiring an unpaid first invoice
//! (`subscription.expire_incomplete`). Each is a service call that re-reads what it acts on
//! under a lock and does nothing when the job is stale, so a job that runs twice, late or on
//! two workers changes nothing more.

use shared::{
    ids::{InvoiceId, SubscriptionId},
    jobs::{Claimed, Finished, Outcome, Queue},
    service::{ServiceError, invoices, subscriptions},
    uow::UnitOfWork,
};

use crate::Runtime;

pub async fn pay(rt: &Runtime, job: &Claimed, invoice: InvoiceId, attempt: i32) -> Finished {
    let result = match job.scope() {
        Some(scope) => invoices::run_attempt(
            &rt.pool,
            rt.clock.as_ref(),
            &rt.stripe,
            scope,
            invoice,
            attempt,
        )
        .await
        .map(drop),
        None => Err(ServiceError::internal("a billing job without a tenant")),
    };
    finished(rt, job, result)
}

pub async fn renew(
    rt: &Runtime,
    job: &Claimed,
    subscription: SubscriptionId,
    period_start: chrono::DateTime<chrono::Utc>,
) -> Finished {
    let result = in_uow(rt, job, |mut uow, scope| async move {
        subscriptions::renew(&mut uow, scope, subscription, period_start).await?;
        Ok(uow.commit().await?)
    })
    .await;
    finished(rt, job, result)
}

pub async fn expire(rt: &Runtime, job: &Claimed, subscription: SubscriptionId) -> Finished {
    let result = in_uow(rt, job, |mut uow, scope| async move {
        subscriptions::expire_incomplete(&mut uow, scope, subscription).await?;
        Ok(uow.commit().await?)
    })
    .await;
    finished(rt, job, result)
}

async fn in_uow<F, Fut>(rt: &Runtime, job: &Claimed, f: F) -> Result<(), ServiceError>
where
    F: FnOnce(UnitOfWork, shared::tenancy::Scope) -> Fut,
    Fut: std::future::Future<Output = Result<(), ServiceError>>,
{
    let scope = job
        .scope()
        .ok_or_else(|| ServiceError::internal("a billing job without a tenant"))?;
    let uow = UnitOfWork::begin(&rt.pool, rt.clock.as_ref()).await?;
    f(uow, scope).await
}

/// Success, a retry with the queue's backoff when trying again may help (the database or the
/// gateway was unreachable), or dead when it cannot (a fault an operator must look at).
fn finished(rt: &Runtime, job: &Claimed, result: Result<(), ServiceError>) -> Finished {
    let outcome = match result {
        Ok(()) => Outcome::Succeeded,
        Err(
            e @ (ServiceError::Invalid { .. }
            | ServiceError::Conflict { .. }
            | ServiceError::NotFound(_)
            | ServiceError::Internal(_)),
        ) => Outcome::Dead {
            error: e.to_string(),
        },
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
