//! Billing through a real worker: the first charge of a subscription, and a test clock's
//! advance that renews it month after month, with the worker's relay, Redis queues and job
//! handlers in the loop.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Env, wait_for};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_worker_charges_a_new_subscription_and_runs_a_test_clocks_renewals_once_each() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let tenant = api.register("billing-e2e@example.com").await;
    let key = tenant.sk_test.as_str();
    let (_, clock) = api
        .post(
            key,
            "/api/v1/test-clocks",
            &json!({"frozen_time": "2026-01-31T12:00:00Z"}),
        )
        .await;
    let clock = clock["id"].as_str().unwrap().to_owned();
    let (_, plan) = api
        .post(
            key,
            "/api/v1/plans",
            &json!({"name": "Team", "price_cents": 4900, "billing_interval": "month"}),
        )
        .await;
    let mut subs = Vec::new();
    for on_clock in [false, true] {
        let body = if on_clock {
            json!({"name": "On a clock", "test_clock": clock})
        } else {
            json!({"name": "Real time"})
        };
        let (_, customer) = api.post(key, "/api/v1/customers", &body).await;
        let customer = customer["id"].as_str().unwrap().to_owned();
        let (status, _) = api
            .post(
                key,
                &format!("/api/v1/customers/{customer}/payment-methods"),
                &json!({"token": "4242424242424242", "exp_month": 12, "exp_year": 2040}),
            )
            .await;
        assert_eq!(status.as_u16(), 201);
        let (status, sub) = api
            .post(
                key,
                "/api/v1/subscriptions",
                &json!({"customer": customer, "items": [{"plan": plan["id"]}]}),
            )
            .await;
        assert_eq!(status.as_u16(), 201, "{sub}");
        subs.push(sub["id"].as_str().unwrap().to_owned());
    }
    let worker = env.worker().await;
    let status = |id: String| {
        let api = &api;
        async move {
            api.get(key, &format!("/api/v1/subscriptions/{id}")).await["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    wait_for("the real-time subscription to be paid", LIMIT, || async {
        status(subs[0].clone()).await == "active"
    })
    .await;
    // The clock's subscription waits for its clock, whatever real time says: its charge was
    // due as early as the other one's, and it was not relayed.
    assert_eq!(status(subs[1].clone()).await, "incomplete");
    let waiting = env
        .scalar(
            "SELECT count(*) FROM jobs WHERE test_clock_id IS NOT NULL AND state = 'pending' \
             AND lease_token IS NULL AND attempts = 0",
        )
        .await;
    assert_eq!(
        waiting, 3,
        "pay, expire and renew wait for the clock, never leased"
    );

    let (code, _) = api
        .post(
            key,
            &format!("/api/v1/test-clocks/{clock}/advance"),
            &json!({"frozen_time": "2026-07-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(code.as_u16(), 202);
    wait_for("the clock to be ready", LIMIT, || async {
        api.get(key, &format!("/api/v1/test-clocks/{clock}")).await["status"] == "ready"
    })
    .await;
    let invoices: Value = api
        .get(
            key,
            &format!("/api/v1/invoices?subscription={}&limit=100", subs[1]),
        )
        .await;
    let invoices = invoices["data"].as_array().unwrap();
    // 31 Jan, 28 Feb, 31 Mar, 30 Apr, 31 May, 30 Jun.
    assert_eq!(invoices.len(), 6, "{invoices:?}");
    assert!(invoices.iter().all(|i| i["status"] == "paid"));
    let charged = env
        .scalar(&format!(
            "SELECT count(*) FROM payments p JOIN invoices i ON i.id = p.invoice_id \
             WHERE p.status = 'succeeded' AND i.subscription_id = '{}'",
            shared::ids::SubscriptionId::parse(&subs[1])
                .unwrap()
                .as_uuid()
        ))
        .await;
    assert_eq!(charged, 6, "one charge per invoice");
    assert_eq!(status(subs[1].clone()).await, "active");
    worker.stop().await;
}
