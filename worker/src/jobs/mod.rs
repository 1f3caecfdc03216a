//! Job handlers, one file per job kind. A handler gets a claimed job and returns its outcome;
//! it is safe to run twice (a job that was lost, or ran on two workers, changes nothing more).
//! The work itself is a service call in a unit of work, which a test can make without a worker.

pub mod billing;
pub mod deliver_webhook;
pub mod process_stripe_event;
pub mod stripe_rate;
pub mod sync_catalog;

use shared::jobs::{Claimed, Finished, Job, Outcome};

use crate::Runtime;

/// Runs a job of a queue without a specialised pipeline. A kind this worker does not know (a
/// newer producer, say) or a payload it cannot read is dead at once, for an operator to retry
/// once a worker that knows it runs.
pub async fn run_generic(rt: &Runtime, job: &Claimed) -> Finished {
    match Job::parse(&job.kind, &job.payload) {
        Ok(Job::SyncCatalog { what, .. }) => sync_catalog::run(rt, job, what).await,
        Ok(Job::ProcessStripeEvent { event_id }) => {
            process_stripe_event::run(rt, job, &event_id).await
        }
        Ok(
            what @ (Job::PayInvoice { .. }
            | Job::EndDunning { .. }
            | Job::InvoiceOverdue { .. }
            | Job::FinalizeInvoice { .. }
            | Job::RenewSubscription { .. }
            | Job::ExpireIncomplete { .. }
            | Job::TrialWillEnd { .. }
            | Job::RefundPayment { .. }
            | Job::CheckUsageLimits { .. }
            | Job::AdvanceTestClock { .. }),
        ) => billing::run(rt, job, &what).await,
        Ok(Job::DeliverWebhook { .. }) => dead(job, "webhook deliveries run in their own pipeline"),
        Err(e) => dead(job, &e.to_string()),
    }
}

fn dead(job: &Claimed, error: &str) -> Finished {
    Finished {
        id: job.id,
        token: job.token,
        outcome: Outcome::Dead {
            error: error.to_owned(),
        },
    }
}
