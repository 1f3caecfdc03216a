//! Events received from Stripe: stored once per Stripe event id with the job that processes
//! them, then processed by that job. Events about objects the platform does not keep yet are
//! stored as ignored, payload and all, so that they can be processed again once it does.

use super::{
    ServiceResult, payment_events,
    stripe_connect::{self, EventOutcome},
};
use crate::{
    db::{self, stripe_events::Status},
    stripe::Stripe,
    uow::UnitOfWork,
};

/// What an incoming event is, once its signature is checked.
pub use crate::db::stripe_events::Received;

/// Types the platform knows and will act on once it keeps their objects.
const KNOWN_PREFIXES: [&str; 4] = [
    "customer.subscription.",
    "invoice.payment_",
    "payment_method.attached",
    "payment_method.detached",
];

/// Stores a verified event and queues its processing; `false` when it was stored before
/// (Stripe delivers at least once), in which case nothing changes.
pub async fn receive(uow: &mut UnitOfWork, event: &Received<'_>) -> ServiceResult<bool> {
    let now = uow.now();
    Ok(db::stripe_events::record(uow.conn(), event, now).await?)
}

/// What processing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// The event was processed before (by another run of its job): nothing was done.
    Already,
    /// Processed now, with the status and outcome the stored event records.
    Now(Status, &'static str),
}

/// Processes a stored event once, in the unit of work: the event row is locked, its effect
/// applied and its outcome recorded together, so a second run (another worker, a retry after
/// a crash) finds it processed and does nothing.
pub async fn process(
    uow: &mut UnitOfWork,
    stripe: &Stripe,
    event_id: &str,
) -> ServiceResult<Processed> {
    let Some(event) = db::stripe_events::lock_unprocessed(uow.conn(), event_id).await? else {
        return Ok(Processed::Already);
    };
    let (status, outcome) = match event.event_type.as_str() {
        "account.updated" => {
            let object = &event.payload["data"]["object"];
            match object["id"].as_str().or(event.account.as_deref()) {
                None => (Status::Ignored, "ignored: no account id"),
                Some(account) => {
                    let done = stripe_connect::account_updated(
                        uow,
                        stripe,
                        account,
                        event.livemode,
                        object,
                        event.created,
                    )
                    .await?;
                    let status = match done {
                        EventOutcome::Applied | EventOutcome::AppliedAfresh => Status::Applied,
                        EventOutcome::Stale => Status::Stale,
                        EventOutcome::Unknown => Status::Ignored,
                    };
                    (status, done.as_str())
                }
            }
        }
        t if payment_events::PREFIXES.iter().any(|p| t.starts_with(p)) => {
            payment_events::apply(uow, &event).await?
        }
        t if KNOWN_PREFIXES.iter().any(|p| t.starts_with(p)) => (
            Status::Ignored,
            "ignored: the platform does not keep this object yet",
        ),
        _ => (
            Status::Ignored,
            "ignored: not an event type the platform acts on",
        ),
    };
    let now = uow.now();
    db::stripe_events::mark_processed(uow.conn(), &event.id, status, outcome, now).await?;
    Ok(Processed::Now(status, outcome))
}

/// Queues the events stored as ignored before the platform acted on their types (payment
/// intents, refunds, disputes) to be processed again, once per type across the fleet however
/// many workers start; returns how many were queued now.
pub async fn reprocess_newly_handled(uow: &mut UnitOfWork) -> ServiceResult<u64> {
    let now = uow.now();
    let mut queued = 0;
    for prefix in payment_events::PREFIXES {
        if db::stripe_events::claim_reprocessing(uow.conn(), prefix, now).await? {
            let n = db::stripe_events::requeue_ignored(uow.conn(), prefix, now).await?;
            db::stripe_events::record_reprocessed(uow.conn(), prefix, n).await?;
            queued += n;
        }
    }
    Ok(queued)
}

/// Queues every ignored event whose type starts with `type_prefix` to be processed again
/// (once the platform keeps their objects); returns how many.
pub async fn reprocess_ignored(uow: &mut UnitOfWork, type_prefix: &str) -> ServiceResult<u64> {
    let now = uow.now();
    Ok(db::stripe_events::requeue_ignored(uow.conn(), type_prefix, now).await?)
}
