//! Stripe's incoming events as stored by the API, processed by the job's handler called
//! directly with a unit of work (no worker), as a renewal or dunning job will be.

use reqwest::StatusCode;
use serde_json::json;
use shared::{
    clock::SystemClock,
    db::stripe_events::Status,
    service::stripe_events::{self, Processed},
    uow::UnitOfWork,
};

use crate::helpers::spawn_app_with;

pub(crate) const SECRET: &str = "whsec_stripe_events_test";

#[tokio::test]
async fn a_stored_event_is_processed_once_by_its_handler_and_an_ignored_one_can_run_again() {
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    let now = chrono::Utc::now().timestamp();
    let body = json!({"id": "evt_direct", "object": "event", "type": "invoice.created",
                      "created": now, "livemode": false, "data": {"object": {"id": "in_1"}}})
    .to_string();
    let resp = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            shared::stripe::webhook::sign(SECRET, now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // The job the API queued for it, one per event.
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'stripe.process_event' \
         AND payload->>'event_id' = 'evt_direct'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(queued, 1);

    let stripe = shared::stripe::Stripe::new(&app.settings.stripe).unwrap();
    let run = || async {
        let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
        let done = stripe_events::process(&mut uow, &stripe, "evt_direct")
            .await
            .unwrap();
        uow.commit().await.unwrap();
        done
    };
    // The platform keeps no invoices from Stripe yet: stored as ignored, payload and all.
    assert!(matches!(run().await, Processed::Now(Status::Ignored, _)));
    // A second run of the same job does nothing.
    assert!(matches!(run().await, Processed::Already));

    // The worker would have finished its job.
    sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now()")
        .execute(&app.pool)
        .await
        .unwrap();
    // Once the platform acts on the type, ignored events are made due again, with their job.
    let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
    let requeued = stripe_events::reprocess_ignored(&mut uow, "invoice.")
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(requeued, 1);
    let jobs: Vec<(String, i32)> =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE kind = 'stripe.process_event'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs,
        [("pending".to_owned(), 0)],
        "the event's one job is due again"
    );
    assert!(matches!(run().await, Processed::Now(Status::Ignored, _)));
}

// ---- events about payments, refunds and disputes ----

/// Sends a signed Stripe event to the API, as Stripe does.
pub(crate) async fn send_event(
    app: &crate::helpers::TestApp,
    id: &str,
    kind: &str,
    account: Option<&str>,
    object: serde_json::Value,
) {
    let now = chrono::Utc::now().timestamp();
    let mut event = json!({"id": id, "object": "event", "type": kind, "created": now,
                           "livemode": false, "data": {"object": object}});
    if let Some(a) = account {
        event["account"] = json!(a);
    }
    let body = event.to_string();
    let resp = app
        .client
        .post(app.url("/webhooks/stripe"))
        .header("content-type", "application/json")
        .header(
            "stripe-signature",
            shared::stripe::webhook::sign(SECRET, now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Runs the processing job of an event as the worker would.
pub(crate) async fn process(app: &crate::helpers::TestApp, id: &str) -> Processed {
    let stripe = shared::stripe::Stripe::new(&app.settings.stripe).unwrap();
    let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
    let done = stripe_events::process(&mut uow, &stripe, id).await.unwrap();
    uow.commit().await.unwrap();
    done
}

async fn connect(app: &crate::helpers::TestApp, tenant: &str, account: &str) {
    sqlx::query(
        "INSERT INTO stripe_accounts (tenant_id, livemode, account_id, status, updated_at) \
         VALUES ($1, false, $2, 'connected', now())",
    )
    .bind(shared::ids::TenantId::parse(tenant).unwrap())
    .bind(account)
    .execute(&app.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_payment_awaiting_authentication_is_settled_by_stripe_events_in_any_order_once() {
    use crate::subscriptions::{customer_and_plan, get, run_due, scope, subscribe};
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    let t = app.register("pi-events@acme.com").await;
    let other = app.register("pi-other@acme.com").await;
    connect(&app, &t.id, "acct_pi_events").await;
    connect(&app, &other.id, "acct_pi_other").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    // A card that needs 3-D Secure: the first charge waits for the customer.
    let (cus, plan) = customer_and_plan(&app, &key, Some("4000002500003155")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": cus, "items": [{"plan": plan}]}),
    )
    .await;
    let invoice = crate::helpers::s(&sub["latest_invoice"]);
    run_due(&app, scope).await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let payment = payments["data"][0].clone();
    assert_eq!(payment["status"], "requires_action");
    let intent = crate::helpers::s(&payment["gateway_id"]);
    let object = json!({"id": intent, "object": "payment_intent",
                        "metadata": {"payment": payment["id"], "invoice": invoice}});

    // Another account's event about it changes nothing.
    send_event(
        &app,
        "evt_pi_foreign",
        "payment_intent.succeeded",
        Some("acct_pi_other"),
        object.clone(),
    )
    .await;
    assert!(matches!(
        process(&app, "evt_pi_foreign").await,
        Processed::Now(Status::Ignored, _)
    ));
    assert_eq!(
        get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await["status"],
        "open"
    );

    // The customer authenticated and the payment is processing: in flight, not paid; the
    // invoice stays open and nothing charges it again meanwhile.
    send_event(
        &app,
        "evt_pi_processing",
        "payment_intent.processing",
        Some("acct_pi_events"),
        object.clone(),
    )
    .await;
    assert!(matches!(
        process(&app, "evt_pi_processing").await,
        Processed::Now(Status::Applied, _)
    ));
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
    assert_eq!(payments["data"][0]["status"], "pending");
    assert_eq!(payments["data"][0]["gateway_id"], json!(intent));
    assert_eq!(
        get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await["status"],
        "open"
    );
    assert_eq!(
        get(
            &app,
            &key,
            &format!("/api/v1/subscriptions/{}", crate::helpers::s(&sub["id"])),
        )
        .await["status"],
        "incomplete"
    );
    let again = app
        .post(&format!("/api/v1/invoices/{invoice}/pay"), &key, &json!({}))
        .await
        .status();
    run_due(&app, scope).await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    assert_eq!(
        payments["data"].as_array().unwrap().len(),
        1,
        "asking to pay resumes the attempt in flight, never a second charge: {again} {payments}"
    );
    assert_eq!(payments["data"][0]["status"], "pending");
    // The gateway's first answer (authentication needed) replayed late changes nothing.
    let pending = shared::db::invoices::get_payment(
        &mut app.pool.acquire().await.unwrap(),
        scope,
        shared::ids::PaymentId::parse(&crate::helpers::s(&payment["id"])).unwrap(),
    )
    .await
    .unwrap();
    let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
    let after = shared::service::invoices::record_outcome(
        &mut uow,
        scope,
        &pending,
        &shared::payments::ChargeOutcome::RequiresAction { id: intent.clone() },
    )
    .await
    .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(after.status, shared::db::invoices::PaymentStatus::Pending);

    // The customer authenticated: paid, active. Stripe repeats the event: stored once.
    for _ in 0..2 {
        send_event(
            &app,
            "evt_pi_ok",
            "payment_intent.succeeded",
            Some("acct_pi_events"),
            object.clone(),
        )
        .await;
    }
    assert!(matches!(
        process(&app, "evt_pi_ok").await,
        Processed::Now(Status::Applied, _)
    ));
    let paid = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["amount_paid"], 2999);
    let sub_now = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", crate::helpers::s(&sub["id"])),
    )
    .await;
    assert_eq!(sub_now["status"], "active");

    // An older failure arriving late changes nothing.
    let mut failed = object.clone();
    failed["last_payment_error"] = json!({"code": "card_declined", "decline_code": "generic_decline",
                                          "message": "Declined"});
    send_event(
        &app,
        "evt_pi_late_fail",
        "payment_intent.payment_failed",
        Some("acct_pi_events"),
        failed,
    )
    .await;
    assert!(matches!(
        process(&app, "evt_pi_late_fail").await,
        Processed::Now(Status::Stale, _)
    ));
    // Paid through the event: never charged again.
    let pay = app
        .post(&format!("/api/v1/invoices/{invoice}/pay"), &key, &json!({}))
        .await;
    assert_eq!(pay.status(), StatusCode::CONFLICT);
    run_due(&app, scope).await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let payments = payments["data"].as_array().unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["status"], "succeeded");
    let events = get(&app, &key, "/api/v1/events?type=invoice.paid").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn refund_and_dispute_events_update_the_platforms_refunds_and_payments() {
    use crate::subscriptions::{customer_and_plan, get, run_due, scope, subscribe};
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    let t = app.register("refund-events@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (cus, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": cus, "items": [{"plan": plan}]}),
    )
    .await;
    let invoice = crate::helpers::s(&sub["latest_invoice"]);
    run_due(&app, scope).await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let payment = payments["data"][0].clone();
    assert_eq!(payment["status"], "succeeded");
    let refund = app
        .post(
            "/api/v1/refunds",
            &key,
            &json!({"payment": payment["id"], "amount": 999}),
        )
        .await;
    assert_eq!(refund.status(), StatusCode::ACCEPTED);
    let refund: serde_json::Value = refund.json().await.unwrap();
    run_due(&app, scope).await;
    let done = get(
        &app,
        &key,
        &format!("/api/v1/refunds/{}", crate::helpers::s(&refund["id"])),
    )
    .await;
    assert_eq!(done["status"], "succeeded");

    // Stripe says later the refund failed: it no longer counts.
    send_event(
        &app,
        "evt_refund_failed",
        "charge.refund.updated",
        None,
        json!({"id": done["gateway_id"], "object": "refund", "status": "failed",
               "failure_reason": "expired_or_canceled_card"}),
    )
    .await;
    assert!(matches!(
        process(&app, "evt_refund_failed").await,
        Processed::Now(Status::Applied, _)
    ));
    let failed = get(
        &app,
        &key,
        &format!("/api/v1/refunds/{}", crate::helpers::s(&refund["id"])),
    )
    .await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["failure_reason"], "expired_or_canceled_card");
    let p = get(
        &app,
        &key,
        &format!("/api/v1/payments/{}", crate::helpers::s(&payment["id"])),
    )
    .await;
    assert_eq!(p["amount_refunded"], 0);
    assert_eq!(
        get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await["amount_credited"],
        0
    );

    // A dispute opens and closes; an older update arriving late does not reopen it.
    let intent = crate::helpers::s(&payment["gateway_id"]);
    for (id, kind, status) in [
        ("evt_dp_1", "charge.dispute.created", "needs_response"),
        ("evt_dp_2", "charge.dispute.closed", "lost"),
        ("evt_dp_3", "charge.dispute.updated", "under_review"),
    ] {
        send_event(
            &app,
            id,
            kind,
            None,
            json!({"id": "dp_1", "object": "dispute", "payment_intent": intent,
                   "amount": 2999, "status": status}),
        )
        .await;
        process(&app, id).await;
    }
    let p = get(
        &app,
        &key,
        &format!("/api/v1/payments/{}", crate::helpers::s(&payment["id"])),
    )
    .await;
    assert_eq!(p["dispute_status"], "lost");
    assert_eq!(p["disputed_amount"], 2999);
    let opened = get(&app, &key, "/api/v1/events?type=payment.dispute.created").await;
    assert_eq!(opened["data"].as_array().unwrap().len(), 1);
    let closed = get(&app, &key, "/api/v1/events?type=payment.dispute.closed").await;
    assert_eq!(closed["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn payment_events_stored_as_ignored_before_are_queued_again_once() {
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    // Stored by an earlier version as ignored.
    sqlx::query(
        "INSERT INTO stripe_events (id, type, livemode, created, payload, received_at, \
         processed_at, status, outcome) VALUES ('evt_old_pi', 'payment_intent.succeeded', false, \
         now(), '{}'::jsonb, now(), now(), 'ignored', 'ignored: not kept yet')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let requeue = || async {
        let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
        let n = stripe_events::reprocess_newly_handled(&mut uow)
            .await
            .unwrap();
        uow.commit().await.unwrap();
        n
    };
    assert_eq!(requeue().await, 1);
    assert_eq!(requeue().await, 0, "once across the fleet");
    let status: String =
        sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = 'evt_old_pi'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(status, "received");
    assert!(matches!(
        process(&app, "evt_old_pi").await,
        Processed::Now(Status::Ignored, _)
    ));
}

#[tokio::test]
async fn a_late_success_after_a_failure_pays_what_is_owed_and_the_rest_is_credit_never_refunded() {
    use crate::subscriptions::{customer_and_plan, get, run_due, scope, subscribe};
    let app = spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    let t = app.register("late-success@acme.com").await;
    connect(&app, &t.id, "acct_late").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (cus, plan) = customer_and_plan(&app, &key, Some("4000002500003155")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": cus, "items": [{"plan": plan}]}),
    )
    .await;
    let invoice = crate::helpers::s(&sub["latest_invoice"]);
    run_due(&app, scope).await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let payment = payments["data"][0].clone();
    let intent = crate::helpers::s(&payment["gateway_id"]);
    let object = json!({"id": intent, "object": "payment_intent", "amount": 2999,
                        "currency": "usd", "metadata": {"payment": payment["id"]}});
    // The customer did not authenticate: failed.
    let mut failed = object.clone();
    failed["last_payment_error"] = json!({"code": "authentication_required"});
    send_event(
        &app,
        "evt_late_1",
        "payment_intent.payment_failed",
        Some("acct_late"),
        failed,
    )
    .await;
    assert!(matches!(
        process(&app, "evt_late_1").await,
        Processed::Now(Status::Applied, _)
    ));
    let p = get(
        &app,
        &key,
        &format!("/api/v1/payments/{}", crate::helpers::s(&payment["id"])),
    )
    .await;
    assert_eq!(p["status"], "failed");
    assert_eq!(p["failure_code"], "authentication_required");
    // The tenant lowers the invoice by 1000.
    let note = app
        .post(
            "/api/v1/credit-notes",
            &key,
            &json!({"invoice": invoice, "amount": 1000}),
        )
        .await;
    assert_eq!(note.status(), StatusCode::CREATED);
    // An intent for another amount is not this payment's.
    let mut other = object.clone();
    other["amount"] = json!(100);
    send_event(
        &app,
        "evt_late_other",
        "payment_intent.succeeded",
        Some("acct_late"),
        other,
    )
    .await;
    assert!(matches!(
        process(&app, "evt_late_other").await,
        Processed::Now(Status::Ignored, _)
    ));
    // Then the customer authenticates after all: 2999 came in for 1999 owed.
    send_event(
        &app,
        "evt_late_2",
        "payment_intent.succeeded",
        Some("acct_late"),
        object,
    )
    .await;
    assert!(matches!(
        process(&app, "evt_late_2").await,
        Processed::Now(Status::Applied, _)
    ));
    let paid = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["amount_paid"], 1999);
    assert_eq!(paid["amount_remaining"], 0);
    let c = get(&app, &key, &format!("/api/v1/customers/{cus}")).await;
    assert_eq!(c["balance"], 1000);
    let p = get(
        &app,
        &key,
        &format!("/api/v1/payments/{}", crate::helpers::s(&payment["id"])),
    )
    .await;
    assert_eq!(p["status"], "succeeded");
    assert_eq!(p["credited_to_balance"], 1000);
    // The 1000 given as credit is never refunded too: 1999 at most.
    let too_much = app
        .post(
            "/api/v1/refunds",
            &key,
            &json!({"payment": payment["id"], "amount": 2000}),
        )
        .await;
    assert_eq!(too_much.status(), StatusCode::BAD_REQUEST);
    let rest = app
        .post("/api/v1/refunds", &key, &json!({"payment": payment["id"]}))
        .await;
    assert_eq!(rest.status(), StatusCode::ACCEPTED);
    let rest: serde_json::Value = rest.json().await.unwrap();
    assert_eq!(rest["amount"], 1999);
}
