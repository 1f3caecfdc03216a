//! What Stripe says about payments after the platform asked: a payment intent that succeeds
//! after the customer authenticated (or fails, or is canceled), a refund that settles or fails,
//! a dispute. Each event is matched to the platform's payment or refund by the gateway's id (or
//! the payment id the platform put in the intent's metadata) and applied through the same
//! calls as the platform's own answers, which take any order: a payment in flight takes a final
//! answer, a failed one can still succeed, a succeeded one never changes; a refund can still
//! fail after it succeeded. An event of a connected account applies only to that account's
//! tenant.

use super::{ServiceResult, events, invoices, refunds};
use crate::{
    db::{self, stripe_events::Status, stripe_events::StripeEventRow},
    ids::PaymentId,
    payments::{ChargeOutcome, RefundOutcome},
    stripe::PaymentError,
    tenancy::Scope,
    uow::UnitOfWork,
};

/// The event type prefixes handled here.
pub const PREFIXES: [&str; 4] = [
    "payment_intent.",
    "charge.refund.",
    "refund.",
    "charge.dispute.",
];

/// Dispute statuses after which a dispute is over.
const CLOSED_DISPUTE: [&str; 4] = ["won", "lost", "warning_closed", "charge_refunded"];

type Done = (Status, &'static str);

const NOT_OURS: Done = (Status::Ignored, "ignored: no payment of the platform's");

/// Applies an event about payments; what it did.
pub(crate) async fn apply(uow: &mut UnitOfWork, event: &StripeEventRow) -> ServiceResult<Done> {
    let object = &event.payload["data"]["object"];
    let t = event.event_type.as_str();
    if t.starts_with("payment_intent.") {
        payment_intent(uow, event, object).await
    } else if t.starts_with("charge.dispute.") {
        dispute(uow, event, object).await
    } else if matches!(
        t,
        "charge.refund.updated" | "refund.created" | "refund.updated" | "refund.failed"
    ) {
        refund(uow, event, object).await
    } else {
        Ok((
            Status::Ignored,
            "ignored: not an event type the platform acts on",
        ))
    }
}

/// Whether the event may act on `scope`: an event of a connected account acts only on that
/// account's tenant.
async fn same_tenant(
    uow: &mut UnitOfWork,
    event: &StripeEventRow,
    scope: Scope,
) -> ServiceResult<bool> {
    let Some(account) = event.account.as_deref() else {
        return Ok(true);
    };
    Ok(
        db::unscoped::stripe_account(uow.conn(), account, event.livemode)
            .await?
            .is_some_and(|a| a.tenant_id == scope.tenant_id()),
    )
}

async fn payment_intent(
    uow: &mut UnitOfWork,
    event: &StripeEventRow,
    object: &serde_json::Value,
) -> ServiceResult<Done> {
    let Some(intent) = object["id"].as_str() else {
        return Ok((Status::Ignored, "ignored: no payment intent id"));
    };
    let outcome = match event.event_type.as_str() {
        "payment_intent.succeeded" => ChargeOutcome::Succeeded {
            id: intent.to_owned(),
        },
        "payment_intent.payment_failed" => {
            let error = &object["last_payment_error"];
            let field = |name: &str| error[name].as_str().map(str::to_owned);
            let e = PaymentError {
                code: field("code"),
                decline_code: field("decline_code"),
                advice_code: field("advice_code"),
                message: field("message"),
            };
            ChargeOutcome::Declined {
                code: e.code(),
                do_not_retry: e.do_not_retry(),
                message: e.message.unwrap_or_else(|| "The payment failed.".into()),
            }
        }
        "payment_intent.processing" => ChargeOutcome::Processing {
            id: intent.to_owned(),
        },
        "payment_intent.canceled" => ChargeOutcome::Canceled {
            message: "The payment was canceled.".into(),
        },
        _ => return Ok((Status::Stale, "stale: nothing final to record")),
    };
    let named = object["metadata"]["payment"]
        .as_str()
        .and_then(|p| PaymentId::parse(p).ok());
    let Some((scope, id)) =
        db::unscoped::payment_for_event(uow.conn(), event.livemode, intent, named).await?
    else {
        return Ok(NOT_OURS);
    };
    if !same_tenant(uow, event, scope).await? {
        return Ok(NOT_OURS);
    }
    let before = db::invoices::get_payment(uow.conn(), scope, id).await?;
    // The intent must be for what the payment asked.
    let amount_differs = object["amount"]
        .as_i64()
        .is_some_and(|a| a != before.amount);
    let currency_differs = object["currency"]
        .as_str()
        .is_some_and(|c| !c.eq_ignore_ascii_case(&before.currency));
    if amount_differs || currency_differs {
        return Ok((
            Status::Ignored,
            "ignored: the intent is not for the payment's amount",
        ));
    }
    let after = invoices::record_outcome(uow, scope, &before, &outcome).await?;
    Ok(if after.status == before.status {
        (
            Status::Stale,
            "stale: the payment's outcome was recorded already",
        )
    } else {
        (Status::Applied, "applied")
    })
}

async fn refund(
    uow: &mut UnitOfWork,
    event: &StripeEventRow,
    object: &serde_json::Value,
) -> ServiceResult<Done> {
    let (Some(id), Some(status)) = (object["id"].as_str(), object["status"].as_str()) else {
        return Ok((Status::Ignored, "ignored: no refund id or status"));
    };
    let outcome = match status {
        "succeeded" => RefundOutcome::Succeeded { id: id.to_owned() },
        "failed" | "canceled" => RefundOutcome::Failed {
            reason: object["failure_reason"]
                .as_str()
                .map_or_else(|| format!("the refund was {status}"), str::to_owned),
        },
        _ => return Ok((Status::Stale, "stale: nothing final to record")),
    };
    let Some((scope, refund)) =
        db::unscoped::refund_for_event(uow.conn(), event.livemode, id).await?
    else {
        return Ok((Status::Ignored, "ignored: no refund of the platform's"));
    };
    if !same_tenant(uow, event, scope).await? {
        return Ok((Status::Ignored, "ignored: no refund of the platform's"));
    }
    let before = db::credit_notes::get_refund(uow.conn(), scope, refund, false).await?;
    let after = refunds::record(uow, scope, refund, &outcome).await?;
    Ok(if after.status == before.status {
        (
            Status::Stale,
            "stale: the refund's outcome was recorded already",
        )
    } else {
        (Status::Applied, "applied")
    })
}

async fn dispute(
    uow: &mut UnitOfWork,
    event: &StripeEventRow,
    object: &serde_json::Value,
) -> ServiceResult<Done> {
    let (Some(intent), Some(status)) =
        (object["payment_intent"].as_str(), object["status"].as_str())
    else {
        return Ok((Status::Ignored, "ignored: no payment intent or status"));
    };
    let Some((scope, id)) =
        db::unscoped::payment_for_event(uow.conn(), event.livemode, intent, None).await?
    else {
        return Ok(NOT_OURS);
    };
    if !same_tenant(uow, event, scope).await? {
        return Ok(NOT_OURS);
    }
    let unlocked = db::invoices::get_payment(uow.conn(), scope, id).await?;
    // The invoice's lock orders every change to its payments.
    db::invoices::lock(uow.conn(), scope, unlocked.invoice_id).await?;
    let payment = db::invoices::get_payment(uow.conn(), scope, id).await?;
    if payment.dispute_status.as_deref() == Some(status) {
        return Ok((
            Status::Stale,
            "stale: the dispute is in that status already",
        ));
    }
    // Over is over: an older event arriving late does not reopen it.
    if payment
        .dispute_status
        .as_deref()
        .is_some_and(|s| CLOSED_DISPUTE.contains(&s))
        && !CLOSED_DISPUTE.contains(&status)
    {
        return Ok((Status::Stale, "stale: the dispute is over"));
    }
    let amount = object["amount"].as_i64().unwrap_or(payment.amount).max(0);
    db::invoices::set_dispute(uow.conn(), scope, id, status, amount).await?;
    let payment = db::invoices::get_payment(uow.conn(), scope, id).await?;
    let kind = if CLOSED_DISPUTE.contains(&status) {
        "payment.dispute.closed"
    } else if event.event_type == "charge.dispute.created" {
        "payment.dispute.created"
    } else {
        "payment.dispute.updated"
    };
    events::record(uow, scope, kind, payment.to_json()).await?;
    Ok((Status::Applied, "applied"))
}
