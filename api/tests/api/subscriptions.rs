//! Subscriptions through the API, with their jobs run as the worker fleet runs them (the same
//! service calls, in due order, on the app's clock): first invoice and charge, renewals,
//! trials, declines, expiry, cancels, and the failures other billing systems shipped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::{
    clock::Clock,
    jobs::Job,
    payments::ChargeOutcome,
    service::{billing_jobs, invoices, test_clocks},
    stripe::Stripe,
    tenancy::Scope,
    uow::UnitOfWork,
};
use uuid::Uuid;

use crate::helpers::{Cred, TestApp, assert_problem, s, spawn_app};
use shared::db::billing_runs::{RunScope, RunTrigger};

const DAY: Duration = Duration::from_secs(86_400);

/// The scope of a tenant's test mode.
pub async fn scope(app: &TestApp, key: &str) -> Scope {
    crate::invoices::context(app, key).await.scope()
}

/// Runs the tenant's due billing jobs as a worker does, earliest first, until none is due on
/// the app's clock (jobs waiting for a test clock are left to its advances); returns the kinds
/// run, in order.
pub async fn run_due(app: &TestApp, scope: Scope) -> Vec<String> {
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let mut ran = Vec::new();
    loop {
        let now = app.clock.now();
        // The billing run a tick of the schedule makes: what is due by now is queued.
        let mut tick = now;
        while shared::service::billing_runs::run(
            &app.pool,
            app.clock.as_ref(),
            RunScope::Tenant(scope.tenant_id().as_uuid()),
            tick,
            RunTrigger::Manual,
            0,
            "tests",
        )
        .await
        .unwrap()
        .is_none()
        {
            tick += chrono::Duration::microseconds(1);
        }
        let next: Option<(Uuid, String, Value)> = sqlx::query_as(
            "SELECT id, kind, payload FROM jobs WHERE state = 'pending' AND queue = 'renewals' \
             AND tenant_id = $1 AND livemode = $2 AND run_at <= $3 AND test_clock_id IS NULL \
             ORDER BY run_at, id LIMIT 1",
        )
        .bind(scope.tenant_id().as_uuid())
        .bind(scope.livemode())
        .bind(now)
        .fetch_optional(&app.pool)
        .await
        .unwrap();
        let Some((id, kind, payload)) = next else {
            return ran;
        };
        match Job::parse(&kind, &payload).unwrap() {
            Job::AdvanceTestClock { clock, to } => {
                test_clocks::advance(&app.pool, app.clock.as_ref(), &stripe, scope, clock, to)
                    .await
                    .unwrap()
            }
            job => billing_jobs::run(&app.pool, app.clock.as_ref(), &stripe, scope, &job)
                .await
                .unwrap(),
        }
        sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&app.pool)
            .await
            .unwrap();
        ran.push(kind);
    }
}

pub async fn json_of(resp: reqwest::Response, status: StatusCode) -> Value {
    let code = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code, status, "{body}");
    body
}

/// A customer (optionally with a card) and a monthly plan at 29.99.
pub async fn customer_and_plan(app: &TestApp, key: &Cred, card: Option<&str>) -> (String, String) {
    let customer = json_of(
        app.post(
            "/api/v1/customers",
            key,
            &json!({"name": "Globex", "email": "billing@globex.com"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let customer = s(&customer["id"]);
    if let Some(card) = card {
        json_of(
            app.post(
                &format!("/api/v1/customers/{customer}/payment-methods"),
                key,
                &json!({"token": card, "exp_month": 12, "exp_year": 2040}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    let plan = json_of(
        app.post(
            "/api/v1/plans",
            key,
            &json!({
                "name": format!("Pro {}", Uuid::new_v4().simple()),
                "price_cents": 2999,
                "billing_interval": "month",
            }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    (customer, s(&plan["id"]))
}

pub async fn subscribe(app: &TestApp, key: &Cred, body: Value) -> Value {
    json_of(
        app.post("/api/v1/subscriptions", key, &body).await,
        StatusCode::CREATED,
    )
    .await
}

pub async fn get(app: &TestApp, key: &Cred, path: &str) -> Value {
    json_of(app.get(path, key).await, StatusCode::OK).await
}

pub async fn invoices_of(app: &TestApp, key: &Cred, sub: &str) -> Vec<Value> {
    let mut list = get(
        app,
        key,
        &format!("/api/v1/invoices?subscription={sub}&limit=100"),
    )
    .await["data"]
        .as_array()
        .unwrap()
        .clone();
    list.reverse(); // oldest first
    list
}

pub fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_subscription_is_invoiced_charged_once_and_renewed_for_consecutive_periods() {
    let app = spawn_app().await;
    let t = app.register("renewals@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    let id = s(&sub["id"]);
    assert_eq!(sub["status"], "incomplete", "{sub}");
    assert_eq!(sub["currency"], "usd");
    assert_eq!(sub["items"][0]["quantity"], 1);
    let first = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
    )
    .await;
    assert_eq!(first["status"], "open");
    assert_eq!(first["billing_reason"], "subscription_create");
    assert_eq!(first["amount_due"], 2999);
    assert_eq!(first["lines"][0]["amount"], 2999);
    assert_eq!(first["period_start"], sub["current_period_start"]);
    assert_eq!(first["period_end"], sub["current_period_end"]);
    // The tenant's prefix comes from its slug.
    let number = s(&first["number"]);
    assert!(number.ends_with("-000001"), "{number}");
    let prefix = number.trim_end_matches("-000001").to_owned();
    // The customer now pays in the subscription's currency.
    let c = get(&app, &key, &format!("/api/v1/customers/{customer}")).await;
    assert_eq!(c["currency"], "usd");

    // The worker charges it; running the same attempt again charges nothing more.
    assert_eq!(run_due(&app, scope).await, vec!["invoice.pay"]);
    let sub = get(&app, &key, &format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["days_until_due"], Value::Null);
    let paid = get(&app, &key, &format!("/api/v1/invoices/{}", s(&first["id"]))).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["amount_paid"], 2999);
    assert_eq!(paid["amount_remaining"], 0);
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let again = invoices::run_attempt(
        &app.pool,
        app.clock.as_ref(),
        &stripe,
        scope,
        shared::ids::InvoiceId::parse(&s(&first["id"])).unwrap(),
        1,
    )
    .await
    .unwrap();
    assert!(again.is_none(), "{again:?}");
    let payments = get(
        &app,
        &key,
        &format!("/api/v1/payments?invoice={}", s(&first["id"])),
    )
    .await;
    assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
    assert_eq!(payments["data"][0]["status"], "succeeded");
    assert_eq!(payments["data"][0]["amount"], 2999);
    assert_eq!(payments["data"][0]["gateway"], "sandbox");

    // A renewal that runs early (another host's clock behind) is not done: it fails, so that
    // its job runs again when due, and changes nothing.
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let early = shared::service::subscriptions::renew(
        &mut uow,
        scope,
        shared::ids::SubscriptionId::parse(&id).unwrap(),
        time(&sub["current_period_end"]),
    )
    .await;
    uow.rollback().await;
    match early {
        Err(shared::service::ServiceError::Conflict { code, .. }) => assert_eq!(code, "not_due"),
        other => panic!("an early renewal must fail: {other:?}"),
    }
    // Three more months: each renewal invoices the next period once, numbered next.
    for month in 2..=4 {
        app.clock.advance(DAY * 31);
        let ran = run_due(&app, scope).await;
        // The first month's expiry check comes due too, and finds the subscription paid.
        let mut expected = vec!["subscription.renew", "invoice.pay"];
        if month == 2 {
            expected.insert(0, "subscription.expire_incomplete");
        }
        assert_eq!(ran, expected, "month {month}");
        assert!(run_due(&app, scope).await.is_empty());
    }
    let all = invoices_of(&app, &key, &id).await;
    assert_eq!(all.len(), 4);
    for (i, inv) in all.iter().enumerate() {
        assert_eq!(inv["status"], "paid", "{inv}");
        assert_eq!(s(&inv["number"]), format!("{prefix}-{:06}", i + 1));
        if i > 0 {
            assert_eq!(inv["billing_reason"], "subscription_cycle");
            assert_eq!(inv["period_start"], all[i - 1]["period_end"], "contiguous");
            let (prev, this) = (
                time(&all[i - 1]["period_start"]),
                time(&inv["period_start"]),
            );
            assert!(
                (28..=31).contains(&(this - prev).num_days()),
                "a month apart: {prev} → {this}"
            );
        }
    }
    let sub = get(&app, &key, &format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(sub["current_period_start"], all[3]["period_start"]);
    assert_eq!(sub["latest_invoice"], all[3]["id"]);
    let events = get(&app, &key, "/api/v1/events?type=invoice.paid&limit=100").await;
    assert_eq!(events["data"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_declined_first_invoice_leaves_the_subscription_incomplete_then_expired_and_void() {
    let app = spawn_app().await;
    let t = app.register("declines@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4000000000009995")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan, "quantity": 3}]}),
    )
    .await;
    let (id, invoice) = (s(&sub["id"]), s(&sub["latest_invoice"]));
    run_due(&app, scope).await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let p = &payments["data"][0];
    assert_eq!(p["status"], "failed");
    assert_eq!(p["failure_code"], "insufficient_funds");
    assert_eq!(p["hard_decline"], false);
    assert_eq!(p["amount"], 3 * 2999);
    let sub = get(&app, &key, &format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(sub["status"], "incomplete");
    let inv = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["attempt_count"], 1);

    // 22 hours on, nothing; 23 hours after creation it expires and its invoice is void.
    app.clock.advance(Duration::from_secs(22 * 3600));
    assert!(run_due(&app, scope).await.is_empty());
    app.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        run_due(&app, scope).await,
        vec!["subscription.expire_incomplete"]
    );
    let sub = get(&app, &key, &format!("/api/v1/subscriptions/{id}")).await;
    assert_eq!(sub["status"], "incomplete_expired");
    assert!(!sub["ended_at"].is_null());
    let inv = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(inv["status"], "void");
    // Its period's renewal, when due, does nothing for an expired subscription.
    app.clock.advance(DAY * 31);
    assert_eq!(run_due(&app, scope).await, vec!["subscription.renew"]);
    assert_eq!(invoices_of(&app, &key, &id).await.len(), 1);
    // And the customer can go now.
    let resp = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/customers/{customer}"),
            &key,
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_trial_bills_nothing_until_it_ends_and_without_a_card_the_subscription_pauses() {
    let app = spawn_app().await;
    let t = app.register("trials@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (with_card, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let (without, _) = customer_and_plan(&app, &key, None).await;
    let trial = |customer: &str| json!({"customer": customer, "items": [{"plan": plan}], "trial_period_days": 14});
    let a = subscribe(&app, &key, trial(&with_card)).await;
    let b = subscribe(&app, &key, trial(&without)).await;
    for sub in [&a, &b] {
        assert_eq!(sub["status"], "trialing");
        assert!(sub["latest_invoice"].is_null());
        assert_eq!(sub["current_period_end"], sub["trial_end"]);
        assert_eq!(sub["billing_cycle_anchor"], sub["trial_end"]);
        let days = (time(&sub["trial_end"]) - time(&sub["trial_start"])).num_days();
        assert_eq!(days, 14);
    }
    // Three days before the end, each trial says it will end; nothing is invoiced.
    app.clock.advance(DAY * 10);
    assert!(run_due(&app, scope).await.is_empty());
    app.clock.advance(DAY + Duration::from_secs(60));
    assert_eq!(
        run_due(&app, scope).await,
        vec!["subscription.trial_will_end", "subscription.trial_will_end"]
    );
    let notices = get(
        &app,
        &key,
        "/api/v1/events?type=customer.subscription.trial_will_end",
    )
    .await;
    assert_eq!(notices["data"].as_array().unwrap().len(), 2);
    app.clock.advance(DAY * 2);
    assert!(run_due(&app, scope).await.is_empty());
    app.clock.advance(DAY * 2);
    run_due(&app, scope).await;

    let a = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&a["id"])),
    )
    .await;
    assert_eq!(a["status"], "active");
    let invoices = invoices_of(&app, &key, &s(&a["id"])).await;
    assert_eq!(invoices.len(), 1);
    assert_eq!(invoices[0]["status"], "paid");
    assert_eq!(invoices[0]["period_start"], a["trial_end"]);
    assert_eq!(invoices[0]["period_end"], a["current_period_end"]);

    let b = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&b["id"])),
    )
    .await;
    assert_eq!(b["status"], "paused");
    assert!(invoices_of(&app, &key, &s(&b["id"])).await.is_empty());
    // Paused periods go on without invoices.
    app.clock.advance(DAY * 31);
    run_due(&app, scope).await;
    assert!(invoices_of(&app, &key, &s(&b["id"])).await.is_empty());
    let resumed = json_of(
        app.post(
            &format!("/api/v1/subscriptions/{}/resume", s(&b["id"])),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resumed["status"], "active");
    // The period under way is invoiced at once (it was not while paused), and charged.
    let invoices = invoices_of(&app, &key, &s(&b["id"])).await;
    assert_eq!(invoices.len(), 1, "{invoices:?}");
    assert_eq!(invoices[0]["period_start"], resumed["current_period_start"]);
    run_due(&app, scope).await;
    // No card: the charge fails and the subscription is past due.
    let b = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&b["id"])),
    )
    .await;
    assert_eq!(b["status"], "past_due");
    let p = get(
        &app,
        &key,
        &format!("/api/v1/payments?invoice={}", s(&invoices[0]["id"])),
    )
    .await;
    assert_eq!(p["data"][0]["failure_code"], "payment_method_missing");
}

#[tokio::test]
async fn a_cancel_while_the_renewal_is_queued_and_a_cancel_at_period_end_invoice_nothing_more() {
    let app = spawn_app().await;
    let t = app.register("cancels@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let body = json!({"customer": customer, "items": [{"plan": plan}]});
    let now_sub = subscribe(&app, &key, body.clone()).await;
    let later_sub = subscribe(&app, &key, body).await;
    run_due(&app, scope).await;

    // The customer has live subscriptions: it cannot be deleted.
    let resp = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/customers/{customer}"),
            &key,
            None,
        )
        .await;
    let problem = assert_problem(resp, StatusCode::CONFLICT, "customer_has_subscription").await;
    assert!(s(&problem["detail"]).contains("sub_"), "{problem}");

    let canceled = json_of(
        app.post(
            &format!("/api/v1/subscriptions/{}/cancel", s(&now_sub["id"])),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(canceled["status"], "canceled");
    let scheduled = json_of(
        app.send(
            reqwest::Method::PATCH,
            &format!("/api/v1/subscriptions/{}", s(&later_sub["id"])),
            &key,
            Some(&json!({"cancel_at_period_end": true})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(scheduled["cancel_at_period_end"], true);
    assert_eq!(scheduled["status"], "active");
    // Canceling twice is a conflict naming the status.
    let again = app
        .post(
            &format!("/api/v1/subscriptions/{}/cancel", s(&now_sub["id"])),
            &key,
            &json!({}),
        )
        .await;
    let problem = assert_problem(again, StatusCode::CONFLICT, "invalid_subscription_status").await;
    assert!(s(&problem["detail"]).contains("canceled"), "{problem}");

    // Both renewals were queued; when due, neither invoices.
    app.clock.advance(DAY * 32);
    assert_eq!(
        run_due(&app, scope).await,
        vec![
            "subscription.expire_incomplete",
            "subscription.expire_incomplete",
            "subscription.renew",
            "subscription.renew"
        ]
    );
    for sub in [&now_sub, &later_sub] {
        assert_eq!(invoices_of(&app, &key, &s(&sub["id"])).await.len(), 1);
    }
    let later = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&later_sub["id"])),
    )
    .await;
    assert_eq!(later["status"], "canceled");
    assert_eq!(later["ended_at"], later_sub["current_period_end"]);
    let deleted = get(
        &app,
        &key,
        "/api/v1/events?type=customer.subscription.deleted",
    )
    .await;
    assert_eq!(deleted["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_charge_interrupted_after_its_attempt_was_recorded_resumes_with_the_same_key_once() {
    let app = spawn_app().await;
    let t = app.register("crashes@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    let invoice = shared::ids::InvoiceId::parse(&s(&sub["latest_invoice"])).unwrap();
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    // Step 1 commits, then the run dies before the gateway answers.
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let started = invoices::start_attempts(&mut uow, &stripe, &[(scope, invoice, 1)])
        .await
        .unwrap()
        .remove(0);
    uow.commit().await.unwrap();
    let invoices::Attempt::Charge { payment, .. } = started else {
        panic!("a charge to make: {started:?}")
    };
    assert_eq!(payment.idempotency_key, format!("{invoice}-attempt-1"));
    // While it is in flight, another attempt resumes it rather than starting a second charge,
    // and nothing may void the invoice, cancel the incomplete subscription or ask for a payment.
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let resumed = invoices::start_attempts(&mut uow, &stripe, &[(scope, invoice, 2)])
        .await
        .unwrap()
        .remove(0);
    uow.rollback().await;
    let invoices::Attempt::Charge { payment: same, .. } = resumed else {
        panic!("the pending attempt: {resumed:?}")
    };
    assert_eq!(same.id, payment.id);
    for path in [
        format!("/api/v1/invoices/{invoice}/void"),
        format!("/api/v1/invoices/{invoice}/pay"),
        format!("/api/v1/subscriptions/{}/cancel", s(&sub["id"])),
    ] {
        let resp = app.post(&path, &key, &json!({})).await;
        assert_problem(resp, StatusCode::CONFLICT, "payment_in_progress").await;
    }

    // The job runs again: the same attempt, with the same key, recorded once.
    assert_eq!(run_due(&app, scope).await, vec!["invoice.pay"]);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let data = payments["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{payments}");
    assert_eq!(data[0]["id"], payment.id.to_string());
    assert_eq!(data[0]["status"], "succeeded");
    let inv = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["amount_paid"], 2999);
}

#[tokio::test]
async fn a_voided_invoice_is_never_charged_and_paying_on_request_queues_the_next_attempt_once() {
    let app = spawn_app().await;
    let t = app.register("voids@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4000000000000002")).await;
    let body = json!({"customer": customer, "items": [{"plan": plan}]});
    let voided = subscribe(&app, &key, body.clone()).await;
    let retried = subscribe(&app, &key, body).await;
    let void = json_of(
        app.post(
            &format!("/api/v1/invoices/{}/void", s(&voided["latest_invoice"])),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(void["status"], "void");
    assert_eq!(void["amount_remaining"], 0);
    run_due(&app, scope).await;
    let none = get(
        &app,
        &key,
        &format!("/api/v1/payments?invoice={}", s(&voided["latest_invoice"])),
    )
    .await;
    assert!(none["data"].as_array().unwrap().is_empty(), "{none}");
    let again = app
        .post(
            &format!("/api/v1/invoices/{}/pay", s(&voided["latest_invoice"])),
            &key,
            &json!({}),
        )
        .await;
    assert_problem(again, StatusCode::CONFLICT, "invalid_invoice_status").await;

    // The other one was declined; pay it again on request, twice before the worker runs.
    let invoice = s(&retried["latest_invoice"]);
    for _ in 0..2 {
        let resp = app
            .post(&format!("/api/v1/invoices/{invoice}/pay"), &key, &json!({}))
            .await;
        json_of(resp, StatusCode::ACCEPTED).await;
    }
    assert_eq!(run_due(&app, scope).await, vec!["invoice.pay"]);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    let attempts: Vec<i64> = payments["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, vec![2, 1], "{payments}");
    let inv = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(inv["attempt_count"], 2);
    let uncollectible = json_of(
        app.post(
            &format!("/api/v1/invoices/{invoice}/mark-uncollectible"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(uncollectible["status"], "uncollectible");
}

#[tokio::test]
async fn bad_subscriptions_are_refused_field_by_field_and_other_tenants_see_nothing() {
    let app = spawn_app().await;
    let t = app.register("bad-subs@acme.com").await;
    let other = app.register("other-subs@acme.com").await;
    let key = t.sk_test();
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let eur = json_of(
        app.post(
            "/api/v1/plans",
            &key,
            &json!({"name": "Euro", "price_cents": 1000, "billing_interval": "month", "currency": "eur"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let yearly = json_of(
        app.post(
            "/api/v1/plans",
            &key,
            &json!({"name": "Yearly", "price_cents": 10000, "billing_interval": "year"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let missing_customer = "cus_01m80000000000000000000000";
    let cases = vec![
        (json!({"customer": customer, "items": []}), "items"),
        (
            json!({"customer": missing_customer, "items": [{"plan": plan}]}),
            "customer",
        ),
        (
            json!({"customer": "nope", "items": [{"plan": plan}]}),
            "customer",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan, "price": eur["price_id"]}]}),
            "items[0]",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}, {"plan": eur["id"]}]}),
            "items[1].plan",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}, {"plan": yearly["id"]}]}),
            "items[1].plan",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}, {"plan": plan}]}),
            "items[1]",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan, "quantity": 0}]}),
            "items[0].quantity",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "trial_period_days": 731}),
            "trial_period_days",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "trial_period_days": 3, "trial_end": "2099-01-01T00:00:00Z"}),
            "trial_end",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "trial_end": "2020-01-01T00:00:00Z"}),
            "trial_end",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "days_until_due": 5}),
            "days_until_due",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "collection_method": "send_invoice", "days_until_due": 366}),
            "days_until_due",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "collection_method": "cash"}),
            "collection_method",
        ),
        (
            json!({"customer": customer, "items": [{"plan": plan}], "proration_behavior": "sometimes"}),
            "proration_behavior",
        ),
        (
            json!({"customer": customer, "items": [{"plan": other_plan_placeholder()}]}),
            "items[0].plan",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post("/api/v1/subscriptions", &key, &body).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }
    assert_eq!(app.count("subscriptions").await, 0, "nothing written");

    // A subscription in usd: the customer now pays in usd, and a euro one is refused.
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}], "collection_method": "send_invoice"}),
    )
    .await;
    assert_eq!(sub["status"], "active", "sent invoices leave it active");
    assert_eq!(sub["days_until_due"], 30);
    let inv = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
    )
    .await;
    let due = (time(&inv["due_date"]) - time(&inv["finalized_at"])).num_days();
    assert_eq!(due, 30);
    let resp = app
        .post(
            "/api/v1/subscriptions",
            &key,
            &json!({"customer": customer, "items": [{"plan": eur["id"]}]}),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;

    // Another tenant, and the live mode, find none of it.
    let id = s(&sub["id"]);
    let invoice = s(&sub["latest_invoice"]);
    for (cred, name) in [
        (other.sk_test(), "other tenant"),
        (t.sk_live(), "live mode"),
    ] {
        for path in [
            format!("/api/v1/subscriptions/{id}"),
            format!("/api/v1/invoices/{invoice}"),
        ] {
            let resp = app.get(&path, &cred).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{name}: {path}");
        }
        for path in [
            format!("/api/v1/subscriptions/{id}/cancel"),
            format!("/api/v1/invoices/{invoice}/void"),
        ] {
            let resp = app.post(&path, &cred, &json!({})).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{name}: {path}");
        }
        let list = get(&app, &cred, "/api/v1/subscriptions").await;
        assert!(list["data"].as_array().unwrap().is_empty(), "{name}");
        let list = get(&app, &cred, "/api/v1/invoices").await;
        assert!(list["data"].as_array().unwrap().is_empty(), "{name}");
    }
}

/// A plan id no tenant has.
fn other_plan_placeholder() -> &'static str {
    "plan_01m80000000000000000000000"
}

#[tokio::test]
async fn an_invoice_renders_as_a_pdf_whose_text_has_its_number_lines_and_total_and_as_html() {
    let app = spawn_app().await;
    let t = app.register("documents@acme.com").await;
    let key = t.sk_test();
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan, "quantity": 2}]}),
    )
    .await;
    let id = s(&sub["latest_invoice"]);
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    let number = s(&invoice["number"]);
    let resp = app.get(&format!("/api/v1/invoices/{id}/pdf"), &key).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/pdf");
    let pdf = resp.bytes().await.unwrap();
    assert!(pdf.starts_with(b"%PDF-"));
    let path = std::env::temp_dir().join(format!("invoice-{}.pdf", Uuid::new_v4()));
    std::fs::write(&path, &pdf).unwrap();
    let out = std::process::Command::new("pdftotext")
        .args(["-layout", path.to_str().unwrap(), "-"])
        .output()
        .expect("pdftotext (poppler-utils, installed by scripts/test)");
    std::fs::remove_file(&path).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("Invoice {number}")), "{text}");
    assert!(
        text.contains("Company of documents@acme.com"),
        "the tenant's name: {text}"
    );
    assert!(text.contains("Globex"), "the customer: {text}");
    assert!(
        text.contains("$59.98"),
        "the line and the total (2 × $29.99): {text}"
    );
    assert!(text.contains("Amount due"), "{text}");

    let resp = app.get(&format!("/api/v1/invoices/{id}/html"), &key).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = resp.text().await.unwrap();
    assert!(html.contains(&format!("Invoice {number}")));
    assert!(html.contains("$59.98"));
    // Another tenant gets neither.
    let other = app.register("documents-other@acme.com").await;
    for path in [
        format!("/api/v1/invoices/{id}/pdf"),
        format!("/api/v1/invoices/{id}/html"),
    ] {
        let resp = app.get(&path, &other.sk_test()).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn a_subscription_from_a_bundle_bills_its_prices_with_its_discount_then_the_coupons() {
    let app = spawn_app().await;
    let t = app.register("bundle-sub@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, studio) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let suite = json_of(
        app.post(
            "/api/v1/plans",
            &key,
            &json!({"name": "Suite", "price_cents": 2500, "billing_interval": "month"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let studio = get(&app, &key, &format!("/api/v1/plans/{studio}")).await;
    let bundle = json_of(
        app.post(
            "/api/v1/bundles",
            &key,
            &json!({"name": "Studio and Suite", "discount_bps": 1500, "items": [
                {"price_id": studio["price_id"], "quantity": 1},
                {"price_id": suite["price_id"], "quantity": 2},
            ]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let coupon = json_of(
        app.post(
            "/api/v1/coupons",
            &key,
            &json!({"name": "Welcome", "percent_off_bps": 1000, "duration": "once"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let both = app
        .post(
            "/api/v1/subscriptions",
            &key,
            &json!({"customer": customer, "bundle": bundle["id"], "items": [{"price": suite["price_id"]}]}),
        )
        .await;
    let problem = assert_problem(both, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "items");
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "bundle": bundle["id"], "coupon": coupon["id"]}),
    )
    .await;
    assert_eq!(sub["bundle"], bundle["id"]);
    let quantities: Vec<i64> = sub["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["quantity"].as_i64().unwrap())
        .collect();
    assert_eq!(quantities, vec![1, 2]);
    // 2999 + 2 × 2500 = 7999. The bundle's 15 %: 1199.85 → 1200, split 2999 : 5000 →
    // 449.89 / 750.09 → 450 + 750. Then the coupon's 10 % of the 6799 left: 679.9 → 680,
    // split 2549 : 4250 → 254.94 / 425.06 → 255 + 425.
    let first = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
    )
    .await;
    let discounts: Vec<i64> = first["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["discount_amount"].as_i64().unwrap())
        .collect();
    assert_eq!(first["subtotal"], 7999);
    assert_eq!(discounts, vec![450 + 255, 750 + 425]);
    assert_eq!(first["discount"], 1880);
    assert_eq!(first["total"], 6119);
    assert_eq!(run_due(&app, scope).await, vec!["invoice.pay"]);
    // The coupon was once; the bundle's discount stays: 7999 − 1200.
    let upcoming = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}/upcoming-invoice", s(&sub["id"])),
    )
    .await;
    assert_eq!(upcoming["discount"], 1200);
    assert_eq!(upcoming["total"], 6799);
}

/// The renewals due at the app's time, as their jobs name them.
async fn due_renewals(
    app: &TestApp,
    scope: Scope,
) -> Vec<(Scope, shared::ids::SubscriptionId, DateTime<Utc>)> {
    let due: Vec<(String, Value)> = sqlx::query_as(
        "SELECT kind, payload FROM jobs WHERE state IN ('scheduled', 'pending') \
         AND kind = 'subscription.renew' AND tenant_id = $1 AND run_at <= $2 ORDER BY id",
    )
    .bind(scope.tenant_id().as_uuid())
    .bind(app.clock.now())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    due.into_iter()
        .map(
            |(kind, payload)| match Job::parse(&kind, &payload).unwrap() {
                Job::RenewSubscription {
                    subscription,
                    period_start,
                } => (scope, subscription, period_start),
                other => panic!("{other:?}"),
            },
        )
        .collect()
}

#[tokio::test]
async fn renewals_made_together_number_their_invoices_at_the_commit_and_one_failure_undoes_all() {
    let app = spawn_app().await;
    let t = app.register("together@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    // Three customers on the tenant's prefix and one with its own.
    let mut subs = Vec::new();
    for i in 0..4 {
        let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
        if i == 3 {
            json_of(
                app.send(
                    reqwest::Method::PATCH,
                    &format!("/api/v1/customers/{customer}"),
                    &key,
                    Some(&json!({"invoice_prefix": "GLOBEX"})),
                )
                .await,
                StatusCode::OK,
            )
            .await;
        }
        let sub = subscribe(
            &app,
            &key,
            json!({"customer": customer, "items": [{"plan": plan}]}),
        )
        .await;
        subs.push((s(&sub["id"]), plan));
    }
    run_due(&app, scope).await;
    let first: Vec<String> = {
        let mut v = Vec::new();
        for (sub, _) in &subs {
            v.push(s(&invoices_of(&app, &key, sub).await[0]["number"]));
        }
        v
    };
    let prefix = first[0].trim_end_matches("-000001").to_owned();
    assert_eq!(first[1], format!("{prefix}-000002"));
    assert_eq!(first[3], "GLOBEX-000001");

    app.clock.advance(DAY * 31);
    let mut due = due_renewals(&app, scope).await;
    assert_eq!(due.len(), 4, "{due:?}");
    // A subscription started now is not due for a month: its renewal fails, and with it the
    // whole unit of work; nothing is invoiced and no number is taken.
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let late = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    assert_eq!(
        s(&invoices_of(&app, &key, &s(&late["id"])).await[0]["number"]),
        format!("{prefix}-000004")
    );
    let mut with_late = due.clone();
    with_late.insert(
        2,
        (
            scope,
            shared::ids::SubscriptionId::parse(&s(&late["id"])).unwrap(),
            time(&late["current_period_end"]),
        ),
    );
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    match billing_jobs::renew_many(&mut uow, &with_late).await {
        Err(shared::service::ServiceError::Conflict { code, .. }) => assert_eq!(code, "not_due"),
        other => panic!("a batch with an early renewal must fail: {other:?}"),
    }
    uow.rollback().await;
    let cycles: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(cycles, 0);

    // Together, in this order: the tenant's numbers follow on in it, the customer with its
    // own prefix takes that prefix's next.
    due.swap(0, 2);
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    billing_jobs::renew_many(&mut uow, &due).await.unwrap();
    uow.commit().await.unwrap();
    let mut numbers = std::collections::HashMap::new();
    for (sub, _) in &subs {
        let all = invoices_of(&app, &key, sub).await;
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[1]["billing_reason"], "subscription_cycle");
        assert_eq!(all[1]["status"], "open");
        numbers.insert(s(&all[1]["id"]), s(&all[1]["number"]));
    }
    let order: Vec<String> = due.iter().map(|(_, id, _)| id.to_string()).collect();
    let expected = [
        format!("{prefix}-000005"),
        format!("{prefix}-000006"),
        format!("{prefix}-000007"),
    ];
    let mut tenant_numbers = Vec::new();
    for id in &order {
        let inv = &invoices_of(&app, &key, id).await[1];
        let n = s(&inv["number"]);
        if n.starts_with("GLOBEX") {
            assert_eq!(n, "GLOBEX-000002");
        } else {
            tenant_numbers.push(n);
        }
    }
    assert_eq!(tenant_numbers, expected);
    // The events recorded before the numbers were taken carry them.
    for kind in ["invoice.created", "invoice.finalized"] {
        let events = get(&app, &key, &format!("/api/v1/events?type={kind}&limit=100")).await;
        let mut seen = 0;
        for e in events["data"].as_array().unwrap() {
            let object = &e["data"]["object"];
            if let Some(n) = numbers.get(&s(&object["id"])) {
                assert_eq!(&s(&object["number"]), n, "{kind}: {e}");
                seen += 1;
            }
        }
        assert_eq!(seen, 4, "{kind}");
    }
    // Run again (a job delivered twice), they change nothing; then they are charged.
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    billing_jobs::renew_many(&mut uow, &due).await.unwrap();
    uow.commit().await.unwrap();
    let counters: std::collections::HashMap<String, i64> =
        sqlx::query_as("SELECT prefix, last_number FROM invoice_number_counters")
            .fetch_all(&app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let expected: std::collections::HashMap<String, i64> =
        [("GLOBEX".to_owned(), 2), (prefix.clone(), 7)].into();
    assert_eq!(counters, expected);
    sqlx::query(
        "UPDATE jobs SET state = 'succeeded' WHERE kind = 'subscription.renew' AND run_at <= $1",
    )
    .bind(app.clock.now())
    .execute(&app.pool)
    .await
    .unwrap();
    run_due(&app, scope).await;
    for id in &order {
        assert_eq!(invoices_of(&app, &key, id).await[1]["status"], "paid");
    }
}

#[tokio::test]
async fn a_customers_renewals_made_together_take_its_credit_and_waiting_items_one_after_the_other()
{
    let app = spawn_app().await;
    let t = app.register("one-customer@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let body = json!({"customer": customer, "items": [{"plan": plan}]});
    let first = subscribe(&app, &key, body.clone()).await;
    let second = subscribe(&app, &key, body).await;
    run_due(&app, scope).await;
    for sub in [&first, &second] {
        assert_eq!(
            invoices_of(&app, &key, &s(&sub["id"])).await[0]["status"],
            "paid"
        );
    }
    // 4,000 of credit and a 500 one-off item wait for the next invoices.
    json_of(
        app.post(
            &format!("/api/v1/customers/{customer}/balance-transactions"),
            &key,
            &json!({"amount": 4000}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let item = json_of(
        app.post(
            "/api/v1/invoice-items",
            &key,
            &json!({"customer": customer, "amount": 500, "description": "Setup"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;

    app.clock.advance(DAY * 31);
    let mut due = due_renewals(&app, scope).await;
    assert_eq!(due.len(), 2, "{due:?}");
    // The second subscription first: the order given is the order they are made in.
    let second_id = shared::ids::SubscriptionId::parse(&s(&second["id"])).unwrap();
    due.sort_by_key(|(_, id, _)| *id != second_id);
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    billing_jobs::renew_many(&mut uow, &due).await.unwrap();
    uow.commit().await.unwrap();

    // The first made takes the item and 3,499 of the credit; the next takes the 501 left.
    let made = invoices_of(&app, &key, &s(&second["id"])).await[1].clone();
    let next = invoices_of(&app, &key, &s(&first["id"])).await[1].clone();
    assert_eq!(made["total"], 3499, "{made}");
    assert_eq!(made["balance_applied"], 3499);
    assert_eq!(made["amount_due"], 0);
    assert_eq!(made["status"], "paid");
    let lines: Vec<&str> = made["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["description"].as_str().unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{made}");
    assert_eq!(lines[1], "Setup");
    assert_eq!(next["total"], 2999, "{next}");
    assert_eq!(next["balance_applied"], 501);
    assert_eq!(next["amount_due"], 2498);
    assert_eq!(next["status"], "open");
    let item = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items/{}", s(&item["id"])),
    )
    .await;
    assert_eq!(item["invoice"], made["id"]);
    assert_eq!(
        get(&app, &key, &format!("/api/v1/customers/{customer}")).await["balance"],
        0
    );
    // Numbered in that order, and only the one with something due is charged.
    let n = |inv: &Value| s(&inv["number"])[s(&inv["number"]).len() - 6..].to_owned();
    assert_eq!(n(&made), "000003");
    assert_eq!(n(&next), "000004");
    let charges: Vec<String> = sqlx::query_scalar(
        "SELECT payload->>'invoice_id' FROM jobs WHERE kind = 'invoice.pay' \
         AND state = 'pending'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(charges, vec![s(&next["id"])]);
}

#[tokio::test]
async fn attempts_of_one_invoice_given_together_charge_it_once() {
    let app = spawn_app().await;
    let t = app.register("twice@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    let invoice = shared::ids::InvoiceId::parse(&s(&sub["latest_invoice"])).unwrap();
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    // The first job twice, and a second attempt, in one batch.
    let results = invoices::run_attempts(
        &app.pool,
        app.clock.as_ref(),
        &stripe,
        &[
            (scope, invoice, 1),
            (scope, invoice, 1),
            (scope, invoice, 2),
        ],
    )
    .await
    .unwrap();
    let recorded: Vec<Option<String>> = results
        .into_iter()
        .map(|r| r.unwrap().map(|p| p.status.as_str().to_owned()))
        .collect();
    assert_eq!(recorded, vec![Some("succeeded".to_owned()), None, None]);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={invoice}")).await;
    assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");
    let inv = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["amount_paid"], 2999);
    assert_eq!(inv["attempt_count"], 1);
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(sub["status"], "active");
}

#[tokio::test]
async fn a_stale_renewal_given_with_the_due_one_in_a_batch_does_not_hold_it_back() {
    let app = spawn_app().await;
    let t = app.register("stale-twin@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    run_due(&app, scope).await;
    app.clock.advance(DAY * 31);
    let due = due_renewals(&app, scope).await;
    assert_eq!(due.len(), 1, "{due:?}");
    let (_, id, end) = due[0];
    // A job for an older period (delivered again after its lease was lost) comes first.
    let batch = [(scope, id, end - chrono::Duration::days(30)), due[0]];
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let answers = shared::service::renewals::renew_many(&mut uow, &batch)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(answers[0], shared::service::subscriptions::Renewal::Stale);
    assert!(
        matches!(
            answers[1],
            shared::service::subscriptions::Renewal::Renewed { invoice: Some(_) }
        ),
        "{answers:?}"
    );
    let all = invoices_of(&app, &key, &s(&sub["id"])).await;
    assert_eq!(all.len(), 2, "{all:?}");
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(time(&sub["current_period_start"]), end);
}

#[tokio::test]
async fn answers_about_one_subscription_recorded_together_leave_it_where_the_last_one_does() {
    let app = spawn_app().await;
    let t = app.register("last-word@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    run_due(&app, scope).await;
    // Two periods renewed, their charges not made yet: two open invoices.
    let mut open = Vec::new();
    for _ in 0..2 {
        app.clock.advance(DAY * 31);
        let due = due_renewals(&app, scope).await;
        let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
            .await
            .unwrap();
        let answers = shared::service::renewals::renew_many(&mut uow, &due)
            .await
            .unwrap();
        uow.commit().await.unwrap();
        // (The job renewed before is still there: it is stale now.)
        let made = answers.iter().find_map(|a| match a {
            shared::service::subscriptions::Renewal::Renewed { invoice } => *invoice,
            _ => None,
        });
        open.push(made.unwrap_or_else(|| panic!("{answers:?}")));
    }
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let attempts = invoices::start_attempts(
        &mut uow,
        &stripe,
        &[(scope, open[0], 1), (scope, open[1], 1)],
    )
    .await
    .unwrap();
    uow.commit().await.unwrap();
    let payments: Vec<_> = attempts
        .into_iter()
        .map(|a| match a {
            invoices::Attempt::Charge { payment, .. } => payment,
            other => panic!("{other:?}"),
        })
        .collect();
    // The older invoice's charge is declined, then the newer one's succeeds: the subscription
    // is past due, then active again.
    let declined = ChargeOutcome::Declined {
        code: "card_declined".into(),
        message: "Your card was declined.".into(),
        do_not_retry: false,
    };
    let paid = ChargeOutcome::Succeeded { id: "ch_1".into() };
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let recorded = invoices::record_outcomes(
        &mut uow,
        &[
            (scope, &payments[0], &declined),
            (scope, &payments[1], &paid),
        ],
    )
    .await
    .unwrap();
    uow.commit().await.unwrap();
    let statuses: Vec<&str> = recorded.iter().map(|p| p.status.as_str()).collect();
    assert_eq!(statuses, vec!["failed", "succeeded"]);
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(sub["status"], "active");
    let kinds: Vec<String> = get(&app, &key, "/api/v1/events?limit=100").await["data"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| s(&e["type"]))
        .filter(|k| k.starts_with("invoice.pa") || k.starts_with("customer.subscription.updated"))
        .collect();
    let tail = &kinds[kinds.len() - 4..];
    assert_eq!(
        tail,
        [
            "invoice.payment_failed",
            "customer.subscription.updated",
            "invoice.paid",
            "customer.subscription.updated"
        ],
        "{kinds:?}"
    );
}

/// A subscription with a card, its second period renewed as a worker renews it (running the
/// new invoice's charge itself once committed, with a lease of 5 minutes): the tenant's key,
/// the subscription, and the charge held for the worker with the attempt it started.
async fn renewed_by_a_worker(
    app: &TestApp,
    email: &str,
) -> (Cred, Scope, Value, shared::uow::HeldJob) {
    let t = app.register(email).await;
    let key = t.sk_test();
    let scope = scope(app, &t.sk_test).await;
    let (customer, plan) = customer_and_plan(app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    run_due(app, scope).await;
    app.clock.advance(DAY * 31);
    let due = due_renewals(app, scope).await;
    assert_eq!(due.len(), 1, "{due:?}");
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let mut uow = UnitOfWork::begin(&app.pool, app.clock.as_ref())
        .await
        .unwrap();
    let lease = uow.now() + chrono::Duration::minutes(5);
    uow.hold_jobs(lease, &stripe);
    billing_jobs::renew_many(&mut uow, &due).await.unwrap();
    let mut held = uow.take_held();
    uow.commit().await.unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    (key, scope, sub, held.remove(0))
}

/// An invoice's status and attempt count, as shown.
async fn status_and_attempts(app: &TestApp, key: &Cred, invoice: &str) -> (String, i64) {
    let shown = get(app, key, &format!("/api/v1/invoices/{invoice}")).await;
    (
        s(&shown["status"]),
        shown["attempt_count"].as_i64().unwrap(),
    )
}

/// The payments of an invoice, as listed: (id, status).
async fn payments_of(app: &TestApp, key: &Cred, invoice: &str) -> Vec<(String, String)> {
    let listed = get(app, key, &format!("/api/v1/payments?invoice={invoice}")).await;
    listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (s(&p["id"]), s(&p["status"])))
        .collect()
}

#[tokio::test]
async fn a_renewal_a_worker_charges_itself_starts_its_first_attempt_and_a_charge_it_never_made_is_made_once_by_its_job()
 {
    let app = spawn_app().await;
    let (key, scope, sub, (job, attempt)) =
        renewed_by_a_worker(&app, "started-attempt@acme.com").await;
    let invoice = s(&invoices_of(&app, &key, &s(&sub["id"])).await[1]["id"]);
    assert_eq!(
        Job::parse(&job.kind, &job.payload).unwrap(),
        Job::PayInvoice {
            invoice: invoice.parse().unwrap(),
            attempt: 1
        }
    );
    let Some(invoices::Attempt::Charge { payment, token, .. }) = &attempt else {
        panic!("{attempt:?}");
    };
    assert_eq!(payment.invoice_id.to_string(), invoice);
    assert_eq!(payment.attempt, 1);
    assert_eq!(payment.amount, 2999);
    assert_eq!(payment.idempotency_key, format!("{invoice}-attempt-1"));
    assert_eq!(token, "pm_card_visa");
    // Committed with the invoice, which counts it; its events show the invoice before it.
    assert_eq!(
        status_and_attempts(&app, &key, &invoice.to_string()).await,
        ("open".to_owned(), 1)
    );
    let pending = vec![(payment.id.to_string(), "pending".to_owned())];
    assert_eq!(payments_of(&app, &key, &invoice).await, pending);
    let finalized = get(&app, &key, "/api/v1/events?type=invoice.finalized").await;
    let shown = finalized["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["data"]["object"]["id"] == invoice.as_str())
        .unwrap_or_else(|| panic!("{finalized}"));
    assert_eq!(shown["data"]["object"]["attempt_count"], 0, "{shown}");
    // The worker died before charging: once its lease runs out, the job charges that attempt
    // with its key, and makes no other. (The renewal's own job, stale now, runs and does
    // nothing.)
    let charges = |ran: Vec<String>| ran.iter().filter(|k| *k == "invoice.pay").count();
    assert_eq!(
        charges(run_due(&app, scope).await),
        0,
        "the held charge ran early"
    );
    app.clock.advance(Duration::from_secs(6 * 60));
    assert_eq!(charges(run_due(&app, scope).await), 1);
    assert_eq!(
        status_and_attempts(&app, &key, &invoice.to_string()).await,
        ("paid".to_owned(), 1)
    );
    let succeeded = vec![(payment.id.to_string(), "succeeded".to_owned())];
    assert_eq!(payments_of(&app, &key, &invoice).await, succeeded);
}

#[tokio::test]
async fn a_charge_its_renewal_started_is_made_without_starting_another_attempt() {
    let app = spawn_app().await;
    let (key, scope, sub, (job, attempt)) =
        renewed_by_a_worker(&app, "started-charge@acme.com").await;
    let Some(invoices::Attempt::Charge { payment, .. }) = &attempt else {
        panic!("{attempt:?}");
    };
    let payment = payment.clone();
    let invoice = payment.invoice_id;
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let (results, finished, done) = invoices::run_attempts_finishing(
        &app.pool,
        app.clock.as_ref(),
        &stripe,
        &[(scope, invoice, 1)],
        vec![attempt],
        |_| {
            vec![shared::jobs::Finished {
                id: job.id,
                token: job.token,
                outcome: shared::jobs::Outcome::Succeeded,
            }]
        },
    )
    .await
    .unwrap();
    assert_eq!(done, vec![finished[0].id]);
    let paid = results[0].as_ref().unwrap().as_ref().unwrap();
    assert_eq!(paid.id, payment.id);
    assert_eq!(paid.status, shared::db::invoices::PaymentStatus::Succeeded);
    assert_eq!(
        status_and_attempts(&app, &key, &invoice.to_string()).await,
        ("paid".to_owned(), 1)
    );
    let succeeded = vec![(payment.id.to_string(), "succeeded".to_owned())];
    assert_eq!(
        payments_of(&app, &key, &invoice.to_string()).await,
        succeeded
    );
    // The job is done: it does not run again once its lease is over, and the subscription is
    // paid up.
    app.clock.advance(Duration::from_secs(6 * 60));
    let ran = run_due(&app, scope).await;
    assert!(!ran.iter().any(|k| k == "invoice.pay"), "{ran:?}");
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(sub["status"], "active");
}
