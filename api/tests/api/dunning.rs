//! Dunning on test clocks: a declined renewal is retried at the policy's times, then the final
//! action; a card fixed before the last attempt pays and stops the retries; a hard decline
//! goes to the final action at once. And the policy's own resource.

use chrono::{DateTime, Duration, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::ids::InvoiceId;

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    subscriptions::{get, invoices_of, json_of, subscribe, time},
    test_clocks::{advance, clock, customer_on, monthly_plan, seat_on_clock},
    webhooks::event_objects,
};

const START: &str = "2026-03-01T00:00:00Z";

fn at(offset: Duration) -> String {
    (DateTime::parse_from_rfc3339(START)
        .unwrap()
        .with_timezone(&Utc)
        + offset)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn set_policy(app: &TestApp, key: &Cred, body: Value) -> Value {
    json_of(
        app.send(Method::PUT, "/api/v1/settings/dunning", key, Some(&body))
            .await,
        StatusCode::OK,
    )
    .await
}

/// A customer on a clock at [`START`] paying a monthly plan with a good card (its first
/// invoice paid), whose card is then replaced by `card`: (clock, customer, subscription).
async fn subscribed_then_card(
    app: &TestApp,
    key: &Cred,
    t: &str,
    card: &str,
) -> (String, String, String) {
    let (clock, customer, sub) = seat_on_clock(app, key, START, "4242424242424242").await;
    let sub = s(&sub["id"]);
    advance(app, key, t, &clock, &at(Duration::minutes(1))).await;
    let view = get(app, key, &format!("/api/v1/subscriptions/{sub}")).await;
    assert_eq!(view["status"], "active", "{view}");
    use_card(app, key, &customer, card).await;
    (clock, customer, sub)
}

/// Advances the clock to an hour past the first renewal, a month after [`START`] (its charge
/// has run); returns the renewal's offset from [`START`].
async fn past_the_renewal(app: &TestApp, key: &Cred, t: &str, clock: &str) -> Duration {
    let renewal = Duration::days(31);
    advance(app, key, t, clock, &at(renewal + Duration::hours(1))).await;
    renewal
}

/// Attaches `card` to the customer and makes it the default; returns the payment method's id.
async fn use_card(app: &TestApp, key: &Cred, customer: &str, card: &str) -> String {
    let pm = json_of(
        app.post(
            &format!("/api/v1/customers/{customer}/payment-methods"),
            key,
            &json!({"token": card, "exp_month": 12, "exp_year": 2040}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = s(&pm["id"]);
    make_default(app, key, customer, &id).await;
    id
}

/// The id of the customer's default payment method.
async fn default_card(app: &TestApp, key: &Cred, customer: &str) -> String {
    let list = get(
        app,
        key,
        &format!("/api/v1/customers/{customer}/payment-methods"),
    )
    .await;
    s(&list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["is_default"] == true)
        .unwrap()["id"])
}

/// Makes the customer's payment method `id` its default.
async fn make_default(app: &TestApp, key: &Cred, customer: &str, id: &str) {
    json_of(
        app.post(
            &format!("/api/v1/customers/{customer}/payment-methods/{id}/default"),
            key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
}

/// The attempts at charging an invoice, oldest first: (attempt, status, when).
async fn attempts(app: &TestApp, key: &Cred, invoice: &str) -> Vec<(i64, String, DateTime<Utc>)> {
    let list = get(
        app,
        key,
        &format!("/api/v1/payments?invoice={invoice}&limit=100"),
    )
    .await;
    let mut out: Vec<(i64, String, DateTime<Utc>)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["attempt"].as_i64().unwrap(),
                s(&p["status"]),
                time(&p["created_at"]),
            )
        })
        .collect();
    out.sort_by_key(|a| a.0);
    out
}

async fn status_of(app: &TestApp, key: &Cred, sub: &str) -> String {
    s(&get(app, key, &format!("/api/v1/subscriptions/{sub}")).await["status"])
}

/// The renewal invoice (the second of the subscription).
async fn renewal_invoice(app: &TestApp, key: &Cred, sub: &str) -> Value {
    let invoices = invoices_of(app, key, sub).await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    invoices[1].clone()
}

fn start_plus(offset: Duration) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(&at(offset))
        .unwrap()
        .with_timezone(&Utc)
}

#[tokio::test]
async fn a_declined_renewal_is_retried_after_3_5_and_7_days_then_the_subscription_is_canceled() {
    let app = spawn_app().await;
    let t = app.register("dunning-default@acme.com").await;
    let key = t.sk_test();
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000341").await;
    // The renewal at 1 April is declined: past due, the next attempt 3 days later.
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    let invoice = renewal_invoice(&app, &key, &sub).await;
    let id = s(&invoice["id"]);
    assert_eq!(invoice["status"], "open");
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
    // Just before each retry nothing more happened; just after, one more attempt.
    for (day, n) in [(3, 2), (8, 3), (15, 4)] {
        let before = renewal + Duration::days(day) - Duration::minutes(1);
        advance(&app, &key, &t.sk_test, &clock, &at(before)).await;
        assert_eq!(attempts(&app, &key, &id).await.len(), n - 1, "day {day}");
        assert_eq!(status_of(&app, &key, &sub).await, "past_due", "day {day}");
        advance(
            &app,
            &key,
            &t.sk_test,
            &clock,
            &at(before + Duration::minutes(2)),
        )
        .await;
        let made = attempts(&app, &key, &id).await;
        assert_eq!(made.len(), n, "day {day}: {made:?}");
        assert_eq!(made[n - 1].1, "failed");
        assert_eq!(made[n - 1].2, start_plus(renewal + Duration::days(day)));
    }
    // The fourth attempt was the last: the default final action cancels the subscription;
    // the invoice stays open (not marked uncollectible by default).
    assert_eq!(status_of(&app, &key, &sub).await, "canceled");
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "open");
    // Nothing after that.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(25)),
    )
    .await;
    assert_eq!(attempts(&app, &key, &id).await.len(), 4);
}

#[tokio::test]
async fn a_card_fixed_before_the_last_attempt_is_charged_at_once_and_stops_the_retries() {
    let app = spawn_app().await;
    let t = app.register("dunning-fixed@acme.com").await;
    let key = t.sk_test();
    let (clock, customer, sub) =
        subscribed_then_card(&app, &key, &t.sk_test, "4000000000009995").await;
    let renewal = Duration::days(31);
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(4)),
    )
    .await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    assert_eq!(attempts(&app, &key, &id).await.len(), 2);
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    // A new default card on day 4: charged at once, not on day 8.
    use_card(&app, &key, &customer, "4242424242424242").await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(4) + Duration::minutes(1)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    assert_eq!(made.len(), 3, "{made:?}");
    assert_eq!(made[2].1, "succeeded");
    assert_eq!(made[2].2, start_plus(renewal + Duration::days(4)));
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "paid");
    assert_eq!(status_of(&app, &key, &sub).await, "active");
    // Day 8 and day 15 pass without another attempt, and the subscription stays.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(20)),
    )
    .await;
    assert_eq!(attempts(&app, &key, &id).await.len(), 3);
    assert_eq!(status_of(&app, &key, &sub).await, "active");
}

#[tokio::test]
async fn a_hard_decline_takes_the_final_action_at_once() {
    let app = spawn_app().await;
    let t = app.register("dunning-hard@acme.com").await;
    let key = t.sk_test();
    let policy = set_policy(
        &app,
        &key,
        json!({"retry_waits_days": [2, 2], "final_action": "mark_unpaid",
               "mark_uncollectible": true}),
    )
    .await;
    assert_eq!(policy["final_action"], "mark_unpaid");
    // 4000 0000 0000 9987: lost_card.
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000009987").await;
    let renewal = Duration::days(31);
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::minutes(1)),
    )
    .await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    let made = attempts(&app, &key, &id).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(status_of(&app, &key, &sub).await, "unpaid");
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "uncollectible");
    // No retry on the policy's days.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(6)),
    )
    .await;
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
}

#[tokio::test]
async fn an_expired_card_is_not_retried_and_the_final_action_comes_when_the_schedule_ends() {
    let app = spawn_app().await;
    let t = app.register("dunning-expired@acme.com").await;
    let key = t.sk_test();
    set_policy(
        &app,
        &key,
        json!({"retry_waits_days": [1, 2], "final_action": "leave_past_due",
               "mark_uncollectible": true}),
    )
    .await;
    // 4000 0000 0000 0069: expired_card.
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000069").await;
    let renewal = Duration::days(31);
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(3) - Duration::minutes(1)),
    )
    .await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "open");
    // Day 3, when the schedule would have ended: the invoice is given up on; the
    // subscription is left past due.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(3) + Duration::minutes(1)),
    )
    .await;
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "uncollectible");
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
}

#[tokio::test]
async fn the_dunning_policy_is_per_mode_defaults_to_3_5_7_and_refuses_bad_input() {
    let app = spawn_app().await;
    let t = app.register("dunning-settings@acme.com").await;
    let key = t.sk_test();
    let default = get(&app, &key, "/api/v1/settings/dunning").await;
    assert_eq!(default["retry_waits_days"], json!([3, 5, 7]));
    assert_eq!(default["final_action"], "cancel");
    assert_eq!(default["mark_uncollectible"], false);
    assert_eq!(default["updated_at"], Value::Null);
    assert_eq!(default["livemode"], false);
    let set = set_policy(
        &app,
        &key,
        json!({"retry_waits_days": [7, 7], "final_action": "leave_past_due"}),
    )
    .await;
    assert_eq!(set["retry_waits_days"], json!([7, 7]));
    assert_eq!(set["final_action"], "leave_past_due");
    assert_eq!(set["mark_uncollectible"], false);
    assert!(set["updated_at"].is_string());
    assert_eq!(get(&app, &key, "/api/v1/settings/dunning").await, set);
    // Live mode keeps its own (the default).
    let live = get(&app, &t.sk_live(), "/api/v1/settings/dunning").await;
    assert_eq!(live["retry_waits_days"], json!([3, 5, 7]));
    assert_eq!(live["livemode"], true);
    // An empty list: no retry.
    let none = set_policy(
        &app,
        &key,
        json!({"retry_waits_days": [], "final_action": "cancel"}),
    )
    .await;
    assert_eq!(none["retry_waits_days"], json!([]));
    let cases = [
        (
            json!({"retry_waits_days": [0], "final_action": "cancel"}),
            "retry_waits_days",
        ),
        (
            json!({"retry_waits_days": [61], "final_action": "cancel"}),
            "retry_waits_days",
        ),
        (
            json!({"retry_waits_days": vec![1; 11], "final_action": "cancel"}),
            "retry_waits_days",
        ),
        (
            json!({"retry_waits_days": [-1], "final_action": "cancel"}),
            "retry_waits_days[0]",
        ),
        (
            json!({"retry_waits_days": [1], "final_action": "delete"}),
            "final_action",
        ),
        (json!({"final_action": "cancel"}), "retry_waits_days"),
        (
            json!({"retry_waits_days": [1], "final_action": "cancel", "grace": 7}),
            "grace",
        ),
    ];
    for (body, field) in cases {
        let resp = app
            .send(Method::PUT, "/api/v1/settings/dunning", &key, Some(&body))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }
    // Unchanged by the refused ones.
    assert_eq!(
        get(&app, &key, "/api/v1/settings/dunning").await["retry_waits_days"],
        json!([])
    );
    // A publishable key cannot read it.
    let resp = app
        .get("/api/v1/settings/dunning", &Cred::Bearer(t.pk_test.clone()))
        .await;
    assert!(resp.status() == StatusCode::FORBIDDEN || resp.status() == StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn paying_now_during_dunning_brings_the_next_attempt_forward_and_the_schedule_goes_on() {
    let app = spawn_app().await;
    let t = app.register("dunning-pay-now@acme.com").await;
    let key = t.sk_test();
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000341").await;
    let renewal = Duration::days(31);
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(1)),
    )
    .await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
    // Day 1: the tenant asks for a charge now, not on day 3.
    json_of(
        app.post(&format!("/api/v1/invoices/{id}/pay"), &key, &json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(1) + Duration::minutes(1)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    assert_eq!(made.len(), 2, "{made:?}");
    assert_eq!(made[1].2, start_plus(renewal + Duration::days(1)));
    // Declined again: the next one 5 days after it (the policy's second wait), not on day 3.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(5)),
    )
    .await;
    assert_eq!(attempts(&app, &key, &id).await.len(), 2);
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(6) + Duration::minutes(1)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    assert_eq!(made.len(), 3, "{made:?}");
    assert_eq!(made[2].2, start_plus(renewal + Duration::days(6)));
}

#[tokio::test]
async fn a_subscription_paused_during_dunning_is_not_canceled_when_it_gives_up() {
    let app = spawn_app().await;
    let t = app.register("dunning-paused@acme.com").await;
    let key = t.sk_test();
    set_policy(
        &app,
        &key,
        json!({"retry_waits_days": [1], "final_action": "cancel"}),
    )
    .await;
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000341").await;
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    json_of(
        app.post(
            &format!("/api/v1/subscriptions/{sub}/pause"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    // The retry on day 1 fails and dunning gives up: the paused subscription stays paused.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(2)),
    )
    .await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    assert_eq!(attempts(&app, &key, &id).await.len(), 2);
    assert_eq!(status_of(&app, &key, &sub).await, "paused");
}

#[tokio::test]
async fn dunning_does_not_end_while_the_next_attempt_is_queued_but_not_made() {
    let app = spawn_app().await;
    let t = app.register("dunning-queued@acme.com").await;
    let key = t.sk_test();
    set_policy(
        &app,
        &key,
        json!({"retry_waits_days": [1], "final_action": "cancel"}),
    )
    .await;
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000341").await;
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    // A third attempt queued for later (as one brought forward for a new card waits while
    // the card reaches the connected Stripe account).
    let scope = crate::subscriptions::scope(&app, &t.sk_test).await;
    let third = shared::jobs::Job::PayInvoice {
        invoice: shared::ids::InvoiceId::parse(&id).unwrap(),
        attempt: 3,
    };
    let clock_id = shared::ids::TestClockId::parse(&clock).unwrap().as_uuid();
    let mut tx = app.pool.begin().await.unwrap();
    shared::jobs::enqueue(
        &mut tx,
        &[third
            .to_new(Some(scope), start_plus(renewal + Duration::days(90)))
            .on_clock(Some(clock_id))],
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // Day 1: the retry fails and the waits are used up, but dunning waits for the third.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(1) + Duration::minutes(1)),
    )
    .await;
    assert_eq!(attempts(&app, &key, &id).await.len(), 2);
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    // That attempt gives up for good: dunning ends at its next look.
    sqlx::query("UPDATE jobs SET state = 'dead' WHERE id = $1")
        .bind(third.id())
        .execute(&app.pool)
        .await
        .unwrap();
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(1) + Duration::hours(3)),
    )
    .await;
    assert_eq!(status_of(&app, &key, &sub).await, "canceled");
}

#[tokio::test]
async fn an_invoice_sent_for_payment_and_unpaid_at_its_due_date_is_overdue_then_dunning_ends() {
    let app = spawn_app().await;
    let t = app.register("dunning-overdue@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    let sent = |customer: &str| {
        json!({"customer": customer, "items": [{"plan": plan}],
               "collection_method": "send_invoice", "days_until_due": 7})
    };
    let late = customer_on(&app, &key, &clock, "UTC", None, None).await;
    let late_sub = s(&subscribe(&app, &key, sent(&late)).await["id"]);
    let prompt = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    let prompt_sub = subscribe(&app, &key, sent(&prompt)).await;
    // One whose customer tries to pay before the due date with a card that is declined.
    let declined = customer_on(&app, &key, &clock, "UTC", Some("4000000000009995"), None).await;
    let declined_sub = subscribe(&app, &key, sent(&declined)).await;
    // And one whose customer starts paying with a card that asks to authenticate, and never
    // does.
    let stalled = customer_on(&app, &key, &clock, "UTC", Some("4000002500003155"), None).await;
    let stalled_sub = subscribe(&app, &key, sent(&stalled)).await;
    // A one-off invoice sent for payment, due in 7 days too, goes overdue the same way.
    let solo = customer_on(&app, &key, &clock, "UTC", None, None).await;
    let fee = json!({"customer": solo, "amount": 2500, "currency": "usd", "description": "Setup"});
    json_of(
        app.post("/api/v1/invoice-items", &key, &fee).await,
        StatusCode::CREATED,
    )
    .await;
    let draft = json!({"customer": solo, "currency": "usd",
                       "collection_method": "send_invoice", "days_until_due": 7});
    let draft = json_of(
        app.post("/api/v1/invoices", &key, &draft).await,
        StatusCode::CREATED,
    )
    .await;
    let one_off = s(&draft["id"]);
    let finalize = format!("/api/v1/invoices/{one_off}/finalize");
    let open = json_of(app.post(&finalize, &key, &json!({})).await, StatusCode::OK).await;
    assert_eq!(open["status"], "open");
    // The prompt customer pays on day 2.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(2))).await;
    let invoice = s(&prompt_sub["latest_invoice"]);
    json_of(
        app.post(&format!("/api/v1/invoices/{invoice}/pay"), &key, &json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let refused = s(&declined_sub["latest_invoice"]);
    json_of(
        app.post(&format!("/api/v1/invoices/{refused}/pay"), &key, &json!({}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let declined_sub = s(&declined_sub["id"]);
    let unauthenticated = s(&stalled_sub["latest_invoice"]);
    json_of(
        app.post(
            &format!("/api/v1/invoices/{unauthenticated}/pay"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let stalled_sub = s(&stalled_sub["id"]);
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(3))).await;
    let paid = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(paid["status"], "paid", "{paid}");
    // The declined charge leaves its invoice open and its subscription active until the due
    // date: not late yet.
    let made = attempts(&app, &key, &refused).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].1, "failed");
    assert_eq!(status_of(&app, &key, &declined_sub).await, "active");
    let made = attempts(&app, &key, &unauthenticated).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].1, "requires_action");
    assert_eq!(status_of(&app, &key, &stalled_sub).await, "active");

    // Day 6: nothing is overdue yet.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(6))).await;
    assert!(
        event_objects(&app, &t, false, "invoice.overdue")
            .await
            .is_empty()
    );
    assert_eq!(status_of(&app, &key, &late_sub).await, "active");
    // Day 8: the unpaid ones are overdue and the subscription past due; the paid one is not.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(8))).await;
    let overdue = event_objects(&app, &t, false, "invoice.overdue").await;
    let late_invoice = invoices_of(&app, &key, &late_sub).await[0].clone();
    let mut ids: Vec<String> = overdue.iter().map(|o| s(&o["id"])).collect();
    ids.sort();
    let mut expected = vec![
        s(&late_invoice["id"]),
        one_off.clone(),
        refused.clone(),
        unauthenticated.clone(),
    ];
    expected.sort();
    assert_eq!(ids, expected, "{overdue:?}");
    assert!(attempts(&app, &key, &one_off).await.is_empty());
    assert_eq!(status_of(&app, &key, &late_sub).await, "past_due");
    assert_eq!(status_of(&app, &key, &declined_sub).await, "past_due");
    assert_eq!(status_of(&app, &key, &s(&prompt_sub["id"])).await, "active");
    // No charge is ever attempted for it.
    assert!(
        attempts(&app, &key, &s(&late_invoice["id"]))
            .await
            .is_empty()
    );
    // The default policy's waits (3 + 5 + 7 days) after the due date: still past due on day
    // 21, canceled by day 23.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(21))).await;
    assert_eq!(status_of(&app, &key, &late_sub).await, "past_due");
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(23))).await;
    assert_eq!(status_of(&app, &key, &late_sub).await, "canceled");
    // The declined charge did not stop dunning from ending for its invoice too.
    assert_eq!(status_of(&app, &key, &declined_sub).await, "canceled");
    // Nor did the charge left waiting for the customer to authenticate.
    assert_eq!(status_of(&app, &key, &stalled_sub).await, "canceled");
    assert_eq!(status_of(&app, &key, &s(&prompt_sub["id"])).await, "active");
    // Overdue once only, each; the one-off invoice still open, owed.
    assert_eq!(
        event_objects(&app, &t, false, "invoice.overdue")
            .await
            .len(),
        4
    );
    let one_off = get(&app, &key, &format!("/api/v1/invoices/{one_off}")).await;
    assert_eq!(one_off["status"], "open", "{one_off}");
}

#[tokio::test]
async fn a_charge_whose_job_died_is_made_when_payment_is_asked_for_again() {
    let app = spawn_app().await;
    let t = app.register("dunning-dead-charge@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    let invoice = s(&sub["latest_invoice"]);
    let sub = s(&sub["id"]);
    // Its charge job died before charging (the gateway out of reach on every run, say).
    assert_eq!(kill_waiting_charges(&app).await, 1);
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::minutes(1))).await;
    assert!(attempts(&app, &key, &invoice).await.is_empty());
    // Asked for again, the charge is made: the same attempt, from scratch, not ignored.
    let paying = (&t.sk_test[..], &clock[..]);
    paid_by_its_first_attempt(&app, &key, paying, &invoice, &sub, Duration::minutes(2)).await;

    // Another whose job died after its attempt started and before the gateway answered: the
    // attempt is pending, and asking again resumes it (with its key), not a second one.
    let other = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    let other_sub = subscribe(
        &app,
        &key,
        json!({"customer": other, "items": [{"plan": plan}]}),
    )
    .await;
    let stalled = s(&other_sub["latest_invoice"]);
    assert_eq!(kill_waiting_charges(&app).await, 1);
    started_unanswered(&app, &stalled, "interrupted-attempt-1").await;
    let other_sub = s(&other_sub["id"]);
    paid_by_its_first_attempt(
        &app,
        &key,
        paying,
        &stalled,
        &other_sub,
        Duration::minutes(3),
    )
    .await;
}

#[tokio::test]
async fn a_charge_whose_job_died_in_flight_is_resumed_by_the_sweep_and_then_its_invoice_settles() {
    let app = spawn_app().await;
    let t = app.register("dunning-dead-in-flight@acme.com").await;
    let key = t.sk_test();
    let (clock, _, sub) = seat_on_clock(&app, &key, START, "4242424242424242").await;
    let invoice = s(&sub["latest_invoice"]);
    let sweep = || {
        shared::service::invoices::resume_dead_charges(&app.pool, &shared::clock::SystemClock, 1000)
    };
    // Its attempt started and the gateway never answered; while the job lives, the sweep
    // leaves it to the job.
    started_unanswered(&app, &invoice, "stalled-attempt-1").await;
    assert_eq!(sweep().await.unwrap(), 0);
    // The job dies (the gateway out of reach on every run): the invoice can be neither voided
    // nor credited while its attempt is in flight, and nothing else would ever settle it.
    assert_eq!(kill_waiting_charges(&app).await, 1);
    assert_problem(
        app.post(
            &format!("/api/v1/invoices/{invoice}/void"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::CONFLICT,
        "payment_in_progress",
    )
    .await;
    // The sweep starts its job over, once: the attempt resumes with its key and pays it.
    assert_eq!(sweep().await.unwrap(), 1);
    assert_eq!(sweep().await.unwrap(), 0);
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::minutes(1))).await;
    let made = attempts(&app, &key, &invoice).await;
    let states: Vec<(i64, &str)> = made.iter().map(|a| (a.0, a.1.as_str())).collect();
    assert_eq!(states, [(1, "succeeded")], "{made:?}");
    let paid = get(&app, &key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(status_of(&app, &key, &s(&sub["id"])).await, "active");
}

/// Records the first attempt of `invoice` as started and never answered by the gateway (its
/// job stopped between the two), with idempotency key `key`.
async fn started_unanswered(app: &TestApp, invoice: &str, key: &str) {
    let started = sqlx::query(
        "INSERT INTO payments (id, tenant_id, livemode, invoice_id, customer_id, attempt, \
         amount, currency, application_fee, status, gateway, idempotency_key, \
         payment_method_id, hard_decline, created_at, updated_at) \
         SELECT gen_random_uuid(), i.tenant_id, i.livemode, i.id, i.customer_id, 1, \
         i.amount_remaining, i.currency, 0, 'pending', 'sandbox', $2, \
         (SELECT id FROM payment_methods m WHERE m.customer_id = i.customer_id LIMIT 1), \
         FALSE, now(), now() FROM invoices i WHERE i.id = $1",
    )
    .bind(InvoiceId::parse(invoice).unwrap().as_uuid())
    .bind(key)
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(started.rows_affected(), 1);
}

/// Makes the charge jobs waiting to run dead (as if their runs were used up: the gateway out
/// of reach on every one, say); how many.
async fn kill_waiting_charges(app: &TestApp) -> u64 {
    sqlx::query(
        "UPDATE jobs SET state = 'dead', attempts = max_attempts, finished_at = now(), \
         last_error = 'Stripe could not be reached' WHERE kind = 'invoice.pay' AND state = 'pending'",
    )
    .execute(&app.pool)
    .await
    .unwrap()
    .rows_affected()
}

/// Asks for a payment of `invoice`, moves the clock (`paying`: the tenant's secret key and the
/// clock) to `by` after [`START`], and checks the invoice was paid by its first attempt and its
/// subscription `sub` is active.
async fn paid_by_its_first_attempt(
    app: &TestApp,
    key: &Cred,
    (t, clock): (&str, &str),
    invoice: &str,
    sub: &str,
    by: Duration,
) {
    let resp = app
        .post(&format!("/api/v1/invoices/{invoice}/pay"), key, &json!({}))
        .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    advance(app, key, t, clock, &at(by)).await;
    let made = attempts(app, key, invoice).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!((made[0].0, made[0].1.as_str()), (1, "succeeded"));
    let paid = get(app, key, &format!("/api/v1/invoices/{invoice}")).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(status_of(app, key, sub).await, "active");
}

/// A subscription with a card that asks the customer to authenticate every charge, past its
/// renewal on a test clock: the renewal's one attempt waits for the customer, and the
/// subscription is past due. (clock, subscription, renewal time, renewal invoice).
async fn renewal_waiting_for_authentication(
    app: &TestApp,
    t: &crate::helpers::Tenant,
) -> (String, String, Duration, String) {
    let key = t.sk_test();
    let (clock, _, sub) = subscribed_then_card(app, &key, &t.sk_test, "4000002500003155").await;
    let renewal = past_the_renewal(app, &key, &t.sk_test, &clock).await;
    let id = s(&renewal_invoice(app, &key, &sub).await["id"]);
    let made = attempts(app, &key, &id).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].1, "requires_action");
    assert_eq!(status_of(app, &key, &sub).await, "past_due");
    (clock, sub, renewal, id)
}

#[tokio::test]
async fn a_renewal_waiting_for_authentication_makes_the_subscription_past_due_then_ends_dunning() {
    let app = spawn_app().await;
    let t = app.register("dunning-3ds@acme.com").await;
    let key = t.sk_test();
    // Late like a declined renewal: past due, told.
    let (clock, sub, renewal, id) = renewal_waiting_for_authentication(&app, &t).await;
    let required = event_objects(&app, &t, false, "invoice.payment_action_required").await;
    assert_eq!(required.len(), 1);
    // The customer never authenticates: after the policy's waits (3 + 5 + 7 days), the final
    // action, instead of an active subscription with an unpaid invoice for good.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(14)),
    )
    .await;
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(16)),
    )
    .await;
    assert_eq!(status_of(&app, &key, &sub).await, "canceled");
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
}

#[tokio::test]
async fn a_new_default_card_while_a_renewal_waits_for_authentication_cancels_it_and_pays_with_the_card()
 {
    let app = spawn_app().await;
    let t = app.register("dunning-3ds-new-card@acme.com").await;
    let key = t.sk_test();
    let (clock, customer, sub) =
        subscribed_then_card(&app, &key, &t.sk_test, "4000002500003155").await;
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    assert_eq!(attempts(&app, &key, &id).await.len(), 1);
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");

    // The customer gives another card instead of authenticating: the waiting charge is
    // canceled (it can never take the money now), and the new card charged at once.
    use_card(&app, &key, &customer, "4242424242424242").await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::hours(2)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    let states: Vec<(i64, &str)> = made.iter().map(|a| (a.0, a.1.as_str())).collect();
    assert_eq!(states, [(1, "failed"), (2, "succeeded")], "{made:?}");
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let first = payments["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["attempt"] == 1)
        .unwrap();
    assert_eq!(first["failure_code"], "canceled", "{first}");
    // Canceled, not declined: told as such, and no payment of the invoice said to have failed.
    let canceled = event_objects(&app, &t, false, "payment.canceled").await;
    let canceled: Vec<&Value> = canceled.iter().map(|p| &p["id"]).collect();
    assert_eq!(canceled, [&first["id"]]);
    let failed = event_objects(&app, &t, false, "payment.failed").await;
    assert!(failed.is_empty(), "{failed:?}");
    let failed = event_objects(&app, &t, false, "invoice.payment_failed").await;
    assert!(failed.iter().all(|i| i["id"] != id.as_str()), "{failed:?}");
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "paid");
    assert_eq!(invoice["amount_paid"], invoice["total"]);
    assert_eq!(status_of(&app, &key, &sub).await, "active");

    // Past the end dunning would have had: still active, nothing more charged or canceled.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(16)),
    )
    .await;
    assert_eq!(status_of(&app, &key, &sub).await, "active");
    assert_eq!(attempts(&app, &key, &id).await.len(), 2);
    let paid = event_objects(&app, &t, false, "invoice.paid").await;
    assert_eq!(
        paid.iter().filter(|i| i["id"] == id.as_str()).count(),
        1,
        "{paid:?}"
    );
}

/// A renewal whose charge waits for the customer to authenticate (a 3-D Secure card, renewed
/// on the 32nd day), then another card made the default and the waiting one made it again
/// before the retry the new card asked for runs (an hour later): that retry finds the charge
/// still waiting, and does nothing. (clock, customer, subscription, renewal invoice).
async fn renewal_waiting_with_its_card_back(
    app: &TestApp,
    t: &crate::helpers::Tenant,
) -> (String, String, String, String) {
    let key = t.sk_test();
    let (clock, customer, sub) =
        subscribed_then_card(app, &key, &t.sk_test, "4000002500003155").await;
    let waiting = default_card(app, &key, &customer).await;
    let renewal = past_the_renewal(app, &key, &t.sk_test, &clock).await;
    let id = s(&renewal_invoice(app, &key, &sub).await["id"]);
    use_card(app, &key, &customer, "4242424242424242").await;
    make_default(app, &key, &customer, &waiting).await;
    advance(
        app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::hours(2)),
    )
    .await;
    let made = attempts(app, &key, &id).await;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].1, "requires_action");
    (clock, customer, sub, id)
}

#[tokio::test]
async fn a_card_given_back_while_a_charge_waits_for_authentication_leaves_it_waiting_and_a_later_card_pays()
 {
    let app = spawn_app().await;
    let t = app.register("dunning-3ds-card-back@acme.com").await;
    let key = t.sk_test();
    let (clock, customer, sub, id) = renewal_waiting_with_its_card_back(&app, &t).await;
    let renewal = Duration::days(31);
    // A later new card is still charged at once (the retry that found nothing to do runs
    // again), the waiting charge canceled first.
    use_card(&app, &key, &customer, "5555555555554444").await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::hours(3)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    let states: Vec<(i64, &str)> = made.iter().map(|a| (a.0, a.1.as_str())).collect();
    assert_eq!(states, [(1, "failed"), (2, "succeeded")], "{made:?}");
    assert_eq!(status_of(&app, &key, &sub).await, "active");
}

#[tokio::test]
async fn a_failed_authentication_after_a_retry_found_the_charge_waiting_is_retried_on_schedule() {
    use crate::stripe_events::{SECRET, process, send_event};
    let app = crate::helpers::spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    let t = app.register("dunning-3ds-failed-later@acme.com").await;
    let key = t.sk_test();
    let (clock, _, sub, id) = renewal_waiting_with_its_card_back(&app, &t).await;
    let renewal = Duration::days(31);
    // The customer then fails to authenticate: a decline like any, retried 3 days later (the
    // retry's job runs again), not dropped for the job that found nothing to do before.
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let payment = payments["data"][0].clone();
    let object = json!({"id": payment["gateway_id"], "object": "payment_intent",
                        "metadata": {"payment": payment["id"], "invoice": id},
                        "last_payment_error": {"code": "payment_intent_authentication_failure",
                                               "message": "Authentication failed."}});
    send_event(
        &app,
        "evt_3ds_failed",
        "payment_intent.payment_failed",
        None,
        object,
    )
    .await;
    process(&app, "evt_3ds_failed").await;
    let made = attempts(&app, &key, &id).await;
    assert_eq!(made.len(), 1);
    assert_eq!(made[0].1, "failed");
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(3) + Duration::hours(3)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    let states: Vec<(i64, &str)> = made.iter().map(|a| (a.0, a.1.as_str())).collect();
    // (The card asks the customer to authenticate again.)
    assert_eq!(states, [(1, "failed"), (2, "requires_action")], "{made:?}");
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
}

#[tokio::test]
async fn a_charge_canceled_at_the_gateway_is_told_as_canceled_not_failed_and_retried_on_schedule() {
    use crate::stripe_events::{SECRET, process, send_event};
    let app = crate::helpers::spawn_app_with(&[("STRIPE_WEBHOOK_SECRETS", SECRET)]).await;
    let t = app.register("dunning-canceled-at-stripe@acme.com").await;
    let key = t.sk_test();
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000002500003155").await;
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    let id = s(&renewal_invoice(&app, &key, &sub).await["id"]);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let payment = payments["data"][0].clone();
    assert_eq!(payment["status"], "requires_action");
    let object = json!({"id": payment["gateway_id"], "object": "payment_intent",
                        "status": "canceled",
                        "metadata": {"payment": payment["id"], "invoice": id}});
    send_event(
        &app,
        "evt_pi_canceled",
        "payment_intent.canceled",
        None,
        object,
    )
    .await;
    process(&app, "evt_pi_canceled").await;
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    assert_eq!(payments["data"][0]["status"], "failed");
    assert_eq!(payments["data"][0]["failure_code"], "canceled");
    let canceled = event_objects(&app, &t, false, "payment.canceled").await;
    let canceled: Vec<&Value> = canceled.iter().map(|p| &p["id"]).collect();
    assert_eq!(canceled, [&payment["id"]]);
    assert!(
        event_objects(&app, &t, false, "payment.failed")
            .await
            .is_empty()
    );
    let failed = event_objects(&app, &t, false, "invoice.payment_failed").await;
    assert!(failed.iter().all(|i| i["id"] != id.as_str()), "{failed:?}");
    // Still unpaid: dunning goes on, the next attempt 3 days later (the card asks the customer
    // to authenticate again).
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(3) + Duration::hours(3)),
    )
    .await;
    let made = attempts(&app, &key, &id).await;
    let states: Vec<(i64, &str)> = made.iter().map(|a| (a.0, a.1.as_str())).collect();
    assert_eq!(states, [(1, "failed"), (2, "requires_action")], "{made:?}");
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
}

/// Voids an invoice.
async fn void(app: &TestApp, key: &Cred, invoice: &str) -> reqwest::Response {
    app.post(&format!("/api/v1/invoices/{invoice}/void"), key, &json!({}))
        .await
}

/// Dunning is over for the renewal `invoice`: 20 days past the renewal, it has had no retry,
/// and the subscription no final action (it is active).
async fn dunning_is_over(
    app: &TestApp,
    t: &crate::helpers::Tenant,
    clock: &str,
    renewal: Duration,
    invoice: &str,
    sub: &str,
) {
    let key = t.sk_test();
    advance(
        app,
        &key,
        &t.sk_test,
        clock,
        &at(renewal + Duration::days(20)),
    )
    .await;
    assert_eq!(attempts(app, &key, invoice).await.len(), 1);
    assert_eq!(status_of(app, &key, sub).await, "active");
}

#[tokio::test]
async fn voiding_the_invoice_a_subscription_is_past_due_for_makes_it_active_and_ends_dunning() {
    let app = spawn_app().await;
    let t = app.register("dunning-void@acme.com").await;
    let key = t.sk_test();
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000341").await;
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    let first = s(&invoices_of(&app, &key, &sub).await[0]["id"]);
    let invoice = renewal_invoice(&app, &key, &sub).await;
    let id = s(&invoice["id"]);
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    // Voiding an invoice that is not its latest changes nothing about it (the paid first one
    // cannot be voided anyway).
    assert_problem(
        void(&app, &key, &first).await,
        StatusCode::CONFLICT,
        "invalid_invoice_status",
    )
    .await;
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    let voided = json_of(void(&app, &key, &id).await, StatusCode::OK).await;
    assert_eq!(voided["status"], "void");
    assert_eq!(status_of(&app, &key, &sub).await, "active");
    let told = event_objects(&app, &t, false, "customer.subscription.updated").await;
    assert_eq!(told.last().unwrap()["status"], "active", "{told:?}");
    // Dunning is over for it: no retry, no final action.
    dunning_is_over(&app, &t, &clock, renewal, &id, &sub).await;
}

/// An invoice whose charge waits for the customer to authenticate can be voided: the charge
/// is canceled first (it can never take the money), told as canceled, and dunning takes no
/// step for it: no retry, no final action.
#[tokio::test]
async fn voiding_an_invoice_whose_charge_waits_for_authentication_cancels_the_charge_first() {
    let app = spawn_app().await;
    let t = app.register("dunning-void-3ds@acme.com").await;
    let key = t.sk_test();
    let (clock, sub, renewal, id) = renewal_waiting_for_authentication(&app, &t).await;
    let voided = json_of(void(&app, &key, &id).await, StatusCode::OK).await;
    assert_eq!(voided["status"], "void");
    assert_eq!(voided["amount_remaining"], 0);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let payment = &payments["data"][0];
    assert_eq!(payment["status"], "failed", "{payment}");
    assert_eq!(payment["failure_code"], "canceled");
    let canceled = event_objects(&app, &t, false, "payment.canceled").await;
    assert_eq!(canceled.len(), 1, "{canceled:?}");
    assert_eq!(canceled[0]["id"], payment["id"]);
    assert!(
        event_objects(&app, &t, false, "payment.failed")
            .await
            .is_empty()
    );
    assert_eq!(status_of(&app, &key, &sub).await, "active");
    // Voiding it again is refused as for any void invoice, and changes nothing.
    assert_problem(
        void(&app, &key, &id).await,
        StatusCode::CONFLICT,
        "invalid_invoice_status",
    )
    .await;
    dunning_is_over(&app, &t, &clock, renewal, &id, &sub).await;
}

/// A past-due subscription canceled with proration: the note on its open, taxed renewal
/// invoice lowers what it owes by the unused time and the tax on it (20 of April's 30 days:
/// 1000 of 1500, and 200 of VAT), and the invoice still asks for the rest.
#[tokio::test]
async fn a_past_due_cancel_with_proration_lowers_what_the_taxed_invoice_owes_by_the_unused_time_and_its_tax()
 {
    let app = spawn_app().await;
    let t = app.register("dunning-prorate-tax@acme.com").await;
    let key = t.sk_test();
    crate::tax_rates::default_vat(&app, &key).await;
    let (clock, _, sub) = subscribed_then_card(&app, &key, &t.sk_test, "4000000000000341").await;
    let renewal = past_the_renewal(&app, &key, &t.sk_test, &clock).await;
    assert_eq!(status_of(&app, &key, &sub).await, "past_due");
    let invoice = renewal_invoice(&app, &key, &sub).await;
    let id = s(&invoice["id"]);
    assert_eq!(
        (
            invoice["total"].as_i64(),
            invoice["amount_remaining"].as_i64()
        ),
        (Some(1800), Some(1800))
    );
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(renewal + Duration::days(10)),
    )
    .await;
    let canceled = json_of(
        app.post(
            &format!("/api/v1/subscriptions/{sub}/cancel?prorate=true"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(canceled["status"], "canceled");
    let notes = get(&app, &key, &format!("/api/v1/credit-notes?invoice={id}")).await;
    let note = &notes["data"][0];
    assert_eq!(notes["data"].as_array().unwrap().len(), 1, "{notes}");
    assert_eq!(note["type"], "pre_payment");
    assert_eq!(
        (
            note["subtotal"].as_i64(),
            note["tax"].as_i64(),
            note["amount"].as_i64()
        ),
        (Some(1000), Some(200), Some(1200)),
        "{note}"
    );
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "open");
    assert_eq!(invoice["amount_remaining"], 600);
}
