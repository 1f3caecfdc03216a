//! Processes an event received from Stripe (stored once per event id by the API), through
//! [`shared::service::stripe_events::process`] in one unit of work.

use shared::{
    jobs::{Claimed, Finished, Outcome, Queue},
    service::{ServiceError, stripe_events},
    uow::UnitOfWork,
};

use crate::Runtime;

pub async fn run(rt: &Runtime, job: &Claimed, event_id: &str) -> Finished {
    let outcome = match process(rt, event_id).await {
        Ok(()) => Outcome::Succeeded,
        Err(e) => Outcome::after_failure(
            crate::retry_policy(&rt.settings, Queue::StripeSync),
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

async fn process(rt: &Runtime, event_id: &str) -> Result<(), ServiceError> {
    let mut uow = UnitOfWork::begin(&rt.pool, rt.clock.as_ref()).await?;
    stripe_events::process(&mut uow, &rt.stripe, event_id).await?;
    Ok(uow.commit().await?)
}
