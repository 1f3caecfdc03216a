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

const SECRET: &str = "whsec_stripe_events_test";

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
