//! Job handlers, one file per job kind. A handler gets a claimed job and returns its outcome;
//! it is safe to run twice (a job that was lost, or ran on two workers, changes nothing more).

pub mod deliver_webhook;

use shared::jobs::{Claimed, Finished, Outcome};

/// Runs a job of a queue without a specialised pipeline. No such kinds exist yet: an unknown
/// kind (a newer producer than this worker, say) is dead at once, for an operator to retry
/// once a worker that knows it runs.
pub async fn run_generic(job: &Claimed) -> Finished {
    let outcome = Outcome::Dead {
        error: format!("no handler for job kind `{}` in this worker", job.kind),
    };
    Finished {
        id: job.id,
        token: job.token,
        outcome,
    }
}
