//! Job handlers, one file per job kind. A handler gets a claimed job and returns its outcome;
//! it is safe to run twice (a job that was lost, or ran on two workers, changes nothing more).

pub mod deliver_webhook;
pub mod process_stripe_event;
pub mod stripe_rate;
pub mod sync_catalog;

use shared::{
    db::{catalog_sync::Synced, stripe_events},
    jobs::{Claimed, Finished, Outcome},
};

use crate::Runtime;

/// Runs a job of a queue without a specialised pipeline, by kind. An unknown kind (a newer
/// producer than this worker, say) is dead at once, for an operator to retry once a worker
/// that knows it runs.
pub async fn run_generic(rt: &Runtime, job: &Claimed) -> Finished {
    if let Some(what) = Synced::from_job_kind(&job.kind) {
        return sync_catalog::run(rt, job, what).await;
    }
    if job.kind == stripe_events::PROCESS_KIND {
        return process_stripe_event::run(rt, job).await;
    }
    Finished {
        id: job.id,
        token: job.token,
        outcome: Outcome::Dead {
            error: format!("no handler for job kind `{}` in this worker", job.kind),
        },
    }
}
