//! Refunds: part or all of a succeeded payment given back through the gateway that took it.
//!
//! A refund made without a credit note counts toward its invoice's `amount_credited`, with the
//! credit notes: together they never give back more than the invoice's total.
//!
//! As a charge, a refund is three steps so that a crash anywhere refunds at most once: the
//! refund is recorded `pending` (and counted in the payment's `amount_refunded`, under the
//! invoice's lock, so refunds never exceed the payment) with a job; the job calls the gateway
//! with the refund's id as idempotency key, outside any transaction; the answer is written back.
//! A refused refund no longer counts, and when a credit note promised it, its amount becomes the
//! customer's credit: nothing is lost.

use sqlx::PgPool;

use super::{
    ServiceError, ServiceResult,
    balance::{self, Why},
    events,
    subscriptions::at_clock_time,
};
use crate::{
    clock::Clock,
    db::{
        self,
        credit_notes::RefundStatus,
        invoices::{PaymentRow, PaymentStatus},
        pagination::{Page, PageRequest},
    },
    ids::{CreditNoteId, PaymentId, RefundId},
    jobs::Job,
    payments::{Gateway, RefundOutcome, RefundRequest},
    stripe::Stripe,
    tenancy::Scope,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::credit_notes::RefundRow;

const WHAT: &str = "refund";

crate::text_enum! {
    /// Why a refund is made (as Stripe names them).
    pub enum RefundReason {
        Duplicate = "duplicate",
        Fraudulent = "fraudulent",
        RequestedByCustomer = "requested_by_customer",
    }
}

/// Records a refund of `amount` of `payment` (locked with its invoice by the caller) and queues
/// the gateway call.
pub(crate) async fn start(
    uow: &mut UnitOfWork,
    scope: Scope,
    payment: &PaymentRow,
    amount: i64,
    reason: Option<RefundReason>,
    credit_note: Option<CreditNoteId>,
) -> ServiceResult<RefundRow> {
    let now = uow.now();
    let left = payment.refundable();
    if amount <= 0 || amount > left {
        return Err(ServiceError::invalid(
            "amount",
            format!("must be 1 to what is left to refund of the payment ({left})"),
        ));
    }
    let id = RefundId::new();
    let refund = RefundRow {
        id,
        payment_id: payment.id,
        invoice_id: payment.invoice_id,
        customer_id: payment.customer_id,
        credit_note_id: credit_note,
        amount,
        currency: payment.currency.clone(),
        reason: reason.map(|r| r.as_str().to_owned()),
        status: RefundStatus::Pending,
        gateway: payment.gateway.clone(),
        gateway_id: None,
        idempotency_key: id.to_string(),
        failure_reason: None,
        livemode: scope.livemode(),
        created_at: now,
        updated_at: now,
    };
    db::credit_notes::insert_refund(uow.conn(), scope, &refund).await?;
    db::credit_notes::add_refunded(uow.conn(), scope, payment.id, amount).await?;
    // A refund needs no time to come: it is made now, test clock or not (as at Stripe).
    let job = Job::RefundPayment { refund: id }.to_new(Some(scope), now);
    crate::jobs::enqueue(uow.conn(), &[job], now).await?;
    events::record(uow, scope, "refund.created", refund.to_json()).await?;
    Ok(refund)
}

/// Refunds `amount` of a succeeded payment (default: all that is left of it, as far as its
/// invoice has anything left to give back). A refund without a credit note counts, with the
/// invoice's credit notes, toward its total: together they never give back more.
pub async fn create_refund(
    uow: &mut UnitOfWork,
    scope: Scope,
    payment: PaymentId,
    amount: Option<i64>,
    reason: Option<RefundReason>,
) -> ServiceResult<RefundRow> {
    let unlocked = db::invoices::get_payment(uow.conn(), scope, payment)
        .await
        .map_err(ServiceError::unknown("payment", "payment"))?;
    // The invoice's lock orders every change to its payments' refunds.
    let mut invoice = db::invoices::lock(uow.conn(), scope, unlocked.invoice_id).await?;
    at_clock_time(uow, scope, invoice.customer_id).await?;
    let p = db::invoices::refundable_payments(uow.conn(), scope, unlocked.invoice_id)
        .await?
        .into_iter()
        .find(|p| p.id == payment);
    let Some(p) = p else {
        return Err(ServiceError::conflict(
            "payment_not_refundable",
            if unlocked.status == PaymentStatus::Succeeded {
                "This payment is refunded in full already.".to_owned()
            } else {
                format!(
                    "This payment is {}; only a succeeded payment is refunded.",
                    unlocked.status
                )
            },
        ));
    };
    let left = invoice.total.max(0) - invoice.amount_credited;
    let amount = amount.unwrap_or(p.refundable().min(left));
    if amount == 0 {
        return Err(ServiceError::conflict(
            "payment_not_refundable",
            "Credit notes and refunds gave back the whole invoice already.",
        ));
    }
    if amount > left {
        return Err(ServiceError::invalid(
            "amount",
            format!(
                "is more than is left to give back on the invoice ({left}): its credit notes \
                 and refunds never exceed its total"
            ),
        ));
    }
    let refund = start(uow, scope, &p, amount, reason, None).await?;
    invoice.amount_credited += amount;
    invoice.updated_at = uow.now();
    db::invoices::save(uow.conn(), scope, &invoice).await?;
    Ok(refund)
}

pub async fn get_refund(pool: &PgPool, scope: Scope, id: RefundId) -> ServiceResult<RefundRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::credit_notes::get_refund(&mut conn, scope, id, false)
        .await
        .map_err(ServiceError::not_found(WHAT))
}

pub async fn list_refunds(
    pool: &PgPool,
    scope: Scope,
    payment: Option<PaymentId>,
    page: PageRequest,
) -> ServiceResult<Page<RefundRow>> {
    Ok(db::credit_notes::list_refunds(pool, scope, payment, page).await?)
}

/// Runs a refund job: the gateway call and its outcome. A gateway failure worth trying again
/// is returned as an error (the job runs again with the same key).
pub async fn run_refund(
    pool: &PgPool,
    clock: &dyn Clock,
    stripe: &Stripe,
    scope: Scope,
    id: RefundId,
) -> ServiceResult<RefundRow> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let refund = db::credit_notes::get_refund(uow.conn(), scope, id, false)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if refund.status != RefundStatus::Pending {
        uow.rollback().await;
        return Ok(refund);
    }
    let payment = db::invoices::get_payment(uow.conn(), scope, refund.payment_id).await?;
    let account = db::stripe_accounts::get(uow.conn(), scope)
        .await?
        .and_then(|a| a.usable_id().map(str::to_owned));
    uow.rollback().await;
    let gateway = Gateway::named(stripe, &refund.gateway)
        .ok_or_else(|| ServiceError::internal(format!("gateway {}", refund.gateway)))?;
    let charge = payment
        .gateway_id
        .as_deref()
        .ok_or_else(|| ServiceError::internal("a succeeded payment without a gateway id"))?;
    let outcome = gateway
        .refund(
            scope.livemode(),
            &RefundRequest {
                charge,
                amount: refund.amount,
                idempotency_key: &refund.idempotency_key,
                account: account.as_deref().filter(|_| refund.gateway == "stripe"),
            },
        )
        .await?;
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let recorded = record(&mut uow, scope, id, &outcome).await?;
    uow.commit().await?;
    Ok(recorded)
}

/// Writes the gateway's answer on a refund: a pending refund takes it; a succeeded one can
/// still fail (Stripe settles refunds later, and says so by an event): it then no longer counts,
/// and a credit note's refund becomes the customer's credit. A failed refund never changes.
pub(crate) async fn record(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: RefundId,
    outcome: &RefundOutcome,
) -> ServiceResult<RefundRow> {
    let unlocked = db::credit_notes::get_refund(uow.conn(), scope, id, false).await?;
    let mut invoice = db::invoices::lock(uow.conn(), scope, unlocked.invoice_id).await?;
    let mut refund = db::credit_notes::get_refund(uow.conn(), scope, id, true).await?;
    let applies = matches!(
        (refund.status, outcome),
        (RefundStatus::Pending, _) | (RefundStatus::Succeeded, RefundOutcome::Failed { .. })
    );
    if !applies {
        return Ok(refund);
    }
    refund.updated_at = uow.now();
    match outcome {
        RefundOutcome::Succeeded { id } => {
            refund.status = RefundStatus::Succeeded;
            refund.gateway_id = Some(id.clone());
            db::credit_notes::save_refund(uow.conn(), scope, &refund).await?;
            events::record(uow, scope, "refund.succeeded", refund.to_json()).await?;
        }
        RefundOutcome::Failed { reason } => {
            refund.status = RefundStatus::Failed;
            refund.failure_reason = Some(reason.clone());
            db::credit_notes::save_refund(uow.conn(), scope, &refund).await?;
            db::credit_notes::add_refunded(uow.conn(), scope, refund.payment_id, -refund.amount)
                .await?;
            if refund.credit_note_id.is_none() {
                // Nothing was given back: it no longer counts toward the invoice's total.
                invoice.amount_credited -= refund.amount;
                invoice.updated_at = refund.updated_at;
                db::invoices::save(uow.conn(), scope, &invoice).await?;
            }
            if let Some(note) = refund.credit_note_id {
                balance::record(
                    uow,
                    scope,
                    refund.customer_id,
                    refund.amount,
                    Why::RefundFailed(refund.invoice_id, note),
                    Some(reason),
                )
                .await?;
            }
            events::record(uow, scope, "refund.failed", refund.to_json()).await?;
        }
    }
    Ok(refund)
}
