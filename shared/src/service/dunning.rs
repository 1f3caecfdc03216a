//! Dunning: after a declined charge of an invoice collected automatically, the retries and
//! the final action of the tenant's policy (`/api/v1/settings/dunning`).
//!
//! A decline queues what comes next, by [`DunningPolicy::after_decline`]: the next attempt
//! after its wait (a `invoice.pay` job, one per (invoice, attempt)), or the end of dunning (an
//! `invoice.end_dunning` job, one per (invoice, attempt)) at once for a hard decline or when
//! the waits are used up, and when the schedule would have ended for a decline that only a new
//! payment method fixes. A new default payment method retries the customer's invoices in
//! dunning at once. An attempt that succeeds pays the invoice: the jobs queued for it then find
//! nothing to do. An attempt left waiting for the customer to authenticate blocks any other
//! (one in flight per invoice): dunning then ends when the schedule would have, unless the
//! customer completes it first, or sets another default payment method (the waiting attempt is
//! canceled at the gateway, then the new one charged). Test clocks run all of it at their own
//! time.

use chrono::Duration;
use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events, invoices, subscriptions};
use crate::{
    db::{
        self,
        invoices::{InvoiceRow, PaymentRow, PaymentStatus},
    },
    domain::{
        dunning::{AfterDecline, DunningPolicy, FinalAction},
        invoice::InvoiceStatus,
        subscription::{SubscriptionStatus, Transition},
    },
    ids::{CustomerId, InvoiceId},
    jobs::Job,
    tenancy::Scope,
    uow::UnitOfWork,
};

/// A tenant's policy, and when it was last set.
pub use crate::db::dunning::StoredPolicy;

/// The dunning policy of a tenant's mode (the default until one is set).
pub async fn get_policy(pool: &PgPool, scope: Scope) -> ServiceResult<StoredPolicy> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    Ok(db::dunning::get(&mut conn, scope).await?)
}

/// Sets the dunning policy of a tenant's mode; it applies to declines from now on.
pub async fn set_policy(
    uow: &mut UnitOfWork,
    scope: Scope,
    policy: &DunningPolicy,
) -> ServiceResult<StoredPolicy> {
    let now = uow.now();
    db::dunning::set(uow.conn(), scope, policy, now).await?;
    Ok(db::dunning::get(uow.conn(), scope).await?)
}

/// What follows a declined attempt (`payment`, failed) of `invoice`: queued by the policy.
/// Nothing for an invoice sent to the customer to pay, nor for the first invoice of a
/// subscription that is still incomplete (it expires instead).
pub(crate) async fn after_decline(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &InvoiceRow,
    payment: &PaymentRow,
) -> ServiceResult<()> {
    if !dunned(uow, scope, invoice).await? {
        return Ok(());
    }
    if retried_with_new_default(uow, scope, invoice, payment).await? {
        return Ok(());
    }
    let policy = db::dunning::get(uow.conn(), scope).await?.policy;
    let code = payment.failure_code.as_deref().unwrap_or("card_declined");
    let end = Job::EndDunning {
        invoice: invoice.id,
        attempt: payment.attempt,
    };
    let (job, wait) = match policy.after_decline(payment.attempt, code, payment.hard_decline) {
        AfterDecline::RetryAfter(wait) => (
            Job::PayInvoice {
                invoice: invoice.id,
                attempt: payment.attempt + 1,
            },
            wait,
        ),
        AfterDecline::AwaitPaymentMethod(wait) => (end, wait),
        AfterDecline::GiveUp => (end, std::time::Duration::ZERO),
    };
    let wait = Duration::from_std(wait).map_err(|e| ServiceError::internal(e.to_string()))?;
    let customer = invoice.customer_id;
    if let Job::PayInvoice { .. } = job {
        // (Its job may have run already and found this attempt still waiting for the customer
        // to authenticate: it runs again.)
        return invoices::queue_charges_after(uow, scope, customer, vec![job], wait).await;
    }
    // An end queued already for later (the attempt waited for authentication first) comes
    // sooner when this one is sooner.
    invoices::queue_for_customer_after(uow, scope, customer, vec![job], wait, true).await
}

/// When the customer has another default payment method by now (set while `payment` was in
/// flight), queues the next attempt, with it, at once, whatever `payment` came to; answers
/// whether it did. The customer is locked first: a default set meanwhile either is seen here or, set
/// after, finds this attempt over and asks for the next itself ([`retry_now`]).
async fn retried_with_new_default(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &InvoiceRow,
    payment: &PaymentRow,
) -> ServiceResult<bool> {
    let customer = invoice.customer_id;
    db::customers::lock_many(uow.conn(), &[(scope, customer)]).await?;
    let default = db::customers::default_payment_method(uow.conn(), scope, customer).await?;
    if default.is_none() || default == payment.payment_method_id {
        return Ok(false);
    }
    let next = Job::PayInvoice {
        invoice: invoice.id,
        attempt: payment.attempt + 1,
    };
    invoices::queue_charges_after(uow, scope, customer, vec![next], Duration::zero()).await?;
    Ok(true)
}

/// Whether an attempt of `invoice` that fails, or waits, is dunning's: the invoice is
/// collected automatically and is not the first of a subscription still incomplete (which
/// expires instead).
async fn dunned(uow: &mut UnitOfWork, scope: Scope, invoice: &InvoiceRow) -> ServiceResult<bool> {
    if invoice.collection_method != "charge_automatically" {
        return Ok(false);
    }
    if let Some(sub) = invoice.subscription_id {
        let sub = db::subscriptions::lock(uow.conn(), scope, sub).await?;
        return Ok(sub.status != SubscriptionStatus::Incomplete);
    }
    Ok(true)
}

/// An attempt that waits for the customer to authenticate (3-D Secure, say), when dunning's
/// ([`dunned`]): as for a decline, the subscription is past due; no other attempt can start
/// while it waits, so dunning ends (the policy's final action) once the schedule would have
/// ended, and at least a day later ([`DunningPolicy::authentication_window`]), unless the
/// customer completes it, or the invoice is paid otherwise, first.
pub(crate) async fn after_action_required(
    uow: &mut UnitOfWork,
    scope: Scope,
    invoice: &InvoiceRow,
    payment: &PaymentRow,
) -> ServiceResult<()> {
    if !dunned(uow, scope, invoice).await? {
        return Ok(());
    }
    if let Some(sub) = invoice.subscription_id {
        invoices::transition_if_allowed(uow, scope, sub, Transition::PaymentFailed).await?;
    }
    let policy = db::dunning::get(uow.conn(), scope).await?.policy;
    let wait = Duration::from_std(policy.authentication_window(payment.attempt))
        .map_err(|e| ServiceError::internal(e.to_string()))?;
    let end = Job::EndDunning {
        invoice: invoice.id,
        attempt: payment.attempt,
    };
    // (A decline of it later ends dunning sooner: the same end, brought forward.)
    invoices::queue_for_customer_after(uow, scope, invoice.customer_id, vec![end], wait, false)
        .await?;
    // Another default card by now: the next attempt, with it, cancels this one first (the end
    // stays queued: should that attempt find the old card the default again, this one still
    // waits, and dunning still ends).
    retried_with_new_default(uow, scope, invoice, payment).await?;
    Ok(())
}

/// At the due date of an invoice sent for payment (an `invoice.overdue` job): when it still
/// owes, `invoice.overdue`, its subscription past due, and dunning's end (the policy's final
/// action) after all of the policy's waits, unless it is paid first. Put off (`not_due`) when
/// run before its due date; nothing when paid, void or not owing by then.
pub async fn overdue(uow: &mut UnitOfWork, scope: Scope, id: InvoiceId) -> ServiceResult<()> {
    let invoice = invoices::lock_with_subscription(uow, scope, id).await?;
    if !invoice.status.is_payable() || invoice.amount_remaining == 0 {
        return Ok(());
    }
    let Some(due) = invoice.due_date else {
        return Ok(());
    };
    let now = super::test_clocks::customer_now(uow, scope, invoice.customer_id).await?;
    if now < due {
        return Err(ServiceError::conflict(
            "not_due",
            format!("not overdue before {}", due.to_rfc3339()),
        ));
    }
    let lines = db::invoices::lines(uow.conn(), scope, &[id.as_uuid()]).await?;
    events::record(uow, scope, "invoice.overdue", invoice.to_json(&lines)).await?;
    if let Some(sub) = invoice.subscription_id {
        invoices::transition_if_allowed(uow, scope, sub, Transition::PaymentFailed).await?;
    }
    let policy = db::dunning::get(uow.conn(), scope).await?.policy;
    let days: i64 = policy
        .retry_waits_days()
        .iter()
        .map(|d| i64::from(*d))
        .sum();
    let end = Job::EndDunning {
        invoice: id,
        attempt: 0,
    };
    invoices::queue_for_customer_after(
        uow,
        scope,
        invoice.customer_id,
        vec![end],
        Duration::days(days),
        false,
    )
    .await
}

/// Ends the dunning of `invoice` after attempt `attempt` (an `invoice.end_dunning` job): the
/// policy's final action on its subscription, and the invoice marked uncollectible when the
/// policy says so. Nothing when the invoice no longer owes, when a later attempt was made (its
/// own outcome decides), or when dunning already ended; put off (`payment_in_progress`) while
/// the next attempt is queued but not made. The final action applies only to a
/// subscription still past due (or unpaid, for a cancel): one paused, or active again because
/// a later invoice was paid, stays as it is.
pub async fn end_dunning(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: InvoiceId,
    attempt: i32,
) -> ServiceResult<()> {
    let invoice = invoices::lock_with_subscription(uow, scope, id).await?;
    if !invoice.status.is_payable() || invoice.amount_remaining == 0 {
        return Ok(());
    }
    // An invoice sent for payment ends the overdue path's dunning (attempt 0) whatever the
    // charges its customer asked for meanwhile: none of them schedules an end of its own.
    let overdue = attempt == 0 && invoice.collection_method != "charge_automatically";
    let last = db::invoices::last_attempt(uow.conn(), scope, id).await?;
    if last != attempt && !overdue {
        return Ok(());
    }
    // A charge under way waits for its outcome (a success ends dunning itself); the last
    // attempt still waiting for the customer to authenticate does not: that wait is over.
    let unanswered = db::invoices::in_flight_payment(uow.conn(), scope, id)
        .await?
        .is_some_and(|p| {
            p.status == PaymentStatus::RequiresAction && (p.attempt == attempt || overdue)
        });
    if !unanswered {
        invoices::refuse_while_in_flight(uow, scope, id).await?;
    }
    // The next attempt is queued (brought forward for a new card, and waiting, say, for that
    // card to reach the connected Stripe account): dunning ends only after it, if at all.
    let next = Job::PayInvoice {
        invoice: id,
        attempt: last + 1,
    };
    if crate::jobs::is_waiting(uow.conn(), next.id()).await? {
        return Err(ServiceError::conflict(
            "payment_in_progress",
            "The next attempt of this invoice is queued; dunning ends after it, if at all.",
        ));
    }
    let now = uow.now();
    if !db::dunning::end(uow.conn(), scope, id, attempt, now).await? {
        return Ok(());
    }
    let policy = db::dunning::get(uow.conn(), scope).await?.policy;
    if let Some(sub) = invoice.subscription_id {
        let row = db::subscriptions::lock(uow.conn(), scope, sub).await?;
        let past_due = row.status == SubscriptionStatus::PastDue;
        match policy.final_action {
            FinalAction::Cancel => {
                if past_due || row.status == SubscriptionStatus::Unpaid {
                    subscriptions::cancel_subscription(uow, scope, sub, false).await?;
                }
            }
            FinalAction::MarkUnpaid if past_due => {
                invoices::transition_if_allowed(uow, scope, sub, Transition::RetriesExhausted)
                    .await?;
            }
            FinalAction::MarkUnpaid => {}
            FinalAction::LeavePastDue => {}
        }
    }
    if policy.mark_uncollectible && invoice.status == InvoiceStatus::Open {
        invoices::mark_uncollectible(uow, scope, id).await?;
    }
    Ok(())
}

/// A customer has a new default payment method: its invoices in dunning are charged again at
/// once (the next attempt of each, brought forward if it was scheduled). An attempt still
/// waiting for the customer to authenticate with the old one is canceled by that next attempt
/// first (see [`invoices::start_attempts`]).
pub(crate) async fn retry_now(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
) -> ServiceResult<()> {
    let jobs: Vec<Job> = db::dunning::in_dunning(uow.conn(), scope, customer)
        .await?
        .into_iter()
        .map(|(invoice, last)| Job::PayInvoice {
            invoice,
            attempt: last + 1,
        })
        .collect();
    if jobs.is_empty() {
        return Ok(());
    }
    invoices::queue_charges_after(uow, scope, customer, jobs, Duration::zero()).await
}
