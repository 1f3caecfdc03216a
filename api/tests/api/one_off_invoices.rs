//! One-off invoicing through the API: invoice items, drafts that collect them, finalizing
//! (number, charge), sending, deleting drafts, and items riding on a subscription's next
//! invoice.

use chrono::Duration;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    subscriptions::{get, invoices_of, json_of, run_due, scope, subscribe, time},
    test_clocks::{advance, clock, customer_on, monthly_plan},
};

/// A customer paying in dollars, optionally with a card.
pub async fn customer(app: &TestApp, key: &Cred, card: Option<&str>) -> String {
    let c = json_of(
        app.post(
            "/api/v1/customers",
            key,
            &json!({"name": "Umbrella", "currency": "usd"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = s(&c["id"]);
    if let Some(card) = card {
        json_of(
            app.post(
                &format!("/api/v1/customers/{id}/payment-methods"),
                key,
                &json!({"token": card, "exp_month": 12, "exp_year": 2040}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    id
}

async fn item(app: &TestApp, key: &Cred, body: Value) -> Value {
    json_of(
        app.post("/api/v1/invoice-items", key, &body).await,
        StatusCode::CREATED,
    )
    .await
}

async fn post_ok(app: &TestApp, key: &Cred, path: &str) -> Value {
    json_of(app.post(path, key, &json!({})).await, StatusCode::OK).await
}

fn amounts(invoice: &Value) -> Vec<i64> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_one_off_invoice_takes_the_pending_items_is_numbered_at_finalization_and_charged_once() {
    let app = spawn_app().await;
    let t = app.register("one-off@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let cus = customer(&app, &key, Some("4242424242424242")).await;
    let setup = item(
        &app,
        &key,
        json!({"customer": cus, "amount": 5000, "description": "Setup fee"}),
    )
    .await;
    assert_eq!(setup["object"], "invoice_item");
    assert_eq!(setup["currency"], "usd");
    assert_eq!(setup["invoice"], Value::Null);
    let hours = item(
        &app,
        &key,
        json!({"customer": cus, "unit_amount": 1250, "quantity": 3, "description": "Consulting hours"}),
    )
    .await;
    assert_eq!(hours["amount"], 3750);
    assert_eq!(hours["unit_amount"], 1250);
    item(
        &app,
        &key,
        json!({"customer": cus, "amount": -1000, "description": "Goodwill credit"}),
    )
    .await;
    let pending = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items?customer={cus}&pending=true"),
    )
    .await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 3, "{pending}");

    let draft = json_of(
        app.post(
            "/api/v1/invoices",
            &key,
            &json!({"customer": cus, "description": "Onboarding"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = s(&draft["id"]);
    assert_eq!(draft["status"], "draft");
    assert_eq!(draft["number"], Value::Null);
    assert_eq!(draft["billing_reason"], "manual");
    assert_eq!(draft["description"], "Onboarding");
    assert_eq!(amounts(&draft), vec![5000, 3750, -1000]);
    assert_eq!(draft["subtotal"], 7750);
    assert_eq!(draft["amount_due"], 7750);
    let none_left = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items?customer={cus}&pending=true"),
    )
    .await;
    assert!(none_left["data"].as_array().unwrap().is_empty());

    // An item added to the draft, then deleted from it: the totals follow.
    let extra = item(
        &app,
        &key,
        json!({"customer": cus, "amount": 250, "description": "Courier", "invoice": id}),
    )
    .await;
    assert_eq!(extra["invoice"], json!(id));
    let with_extra = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(with_extra["subtotal"], 8000);
    let deleted = app
        .send(
            Method::DELETE,
            &format!("/api/v1/invoice-items/{}", s(&extra["id"])),
            &key,
            None,
        )
        .await;
    assert_eq!(json_of(deleted, StatusCode::OK).await["deleted"], true);
    let draft = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(draft["subtotal"], 7750);
    assert_eq!(amounts(&draft), vec![5000, 3750, -1000]);
    // A draft is not payable, and not sent.
    let pay = app
        .post(&format!("/api/v1/invoices/{id}/pay"), &key, &json!({}))
        .await;
    assert_problem(pay, StatusCode::CONFLICT, "invalid_invoice_status").await;

    let open = post_ok(&app, &key, &format!("/api/v1/invoices/{id}/finalize")).await;
    assert_eq!(open["status"], "open");
    let number = s(&open["number"]);
    assert!(number.ends_with("-000001"), "{number}");
    assert_eq!(open["amount_due"], 7750);
    assert!(open["finalized_at"].is_string());
    let again = app
        .post(&format!("/api/v1/invoices/{id}/finalize"), &key, &json!({}))
        .await;
    assert_problem(again, StatusCode::CONFLICT, "invalid_invoice_status").await;
    // Its items are billed: they cannot go any more.
    let setup_gone = app
        .send(
            Method::DELETE,
            &format!("/api/v1/invoice-items/{}", s(&setup["id"])),
            &key,
            None,
        )
        .await;
    assert_problem(setup_gone, StatusCode::CONFLICT, "invoice_item_invoiced").await;

    // Charged automatically: finalizing queued the first charge, made once.
    assert_eq!(run_due(&app, scope).await, vec!["invoice.pay"]);
    assert!(run_due(&app, scope).await.is_empty());
    let paid = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["amount_paid"], 7750);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let payments = payments["data"].as_array().unwrap();
    assert_eq!(payments.len(), 1);
    assert_eq!(payments[0]["amount"], 7750);
    assert_eq!(payments[0]["status"], "succeeded");
    let send = app
        .post(&format!("/api/v1/invoices/{id}/send"), &key, &json!({}))
        .await;
    assert_problem(send, StatusCode::CONFLICT, "invalid_invoice_status").await;
    let gone = app
        .send(
            Method::DELETE,
            &format!("/api/v1/invoices/{id}"),
            &key,
            None,
        )
        .await;
    assert_problem(gone, StatusCode::CONFLICT, "invalid_invoice_status").await;
}

#[tokio::test]
async fn a_sent_invoice_is_due_days_after_finalization_and_a_deleted_draft_gives_its_items_back() {
    let app = spawn_app().await;
    let t = app.register("send-invoice@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let cus = customer(&app, &key, None).await;
    let fee = item(
        &app,
        &key,
        json!({"customer": cus, "amount": 4000, "description": "Audit"}),
    )
    .await;
    let body = json!({
        "customer": cus,
        "collection_method": "send_invoice",
        "days_until_due": 14,
    });
    let first = json_of(
        app.post("/api/v1/invoices", &key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(amounts(&first), vec![4000]);
    let deleted = app
        .send(
            Method::DELETE,
            &format!("/api/v1/invoices/{}", s(&first["id"])),
            &key,
            None,
        )
        .await;
    assert_eq!(json_of(deleted, StatusCode::OK).await["deleted"], true);
    let missing = app
        .get(&format!("/api/v1/invoices/{}", s(&first["id"])), &key)
        .await;
    assert_problem(missing, StatusCode::NOT_FOUND, "resource_missing").await;
    let back = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items/{}", s(&fee["id"])),
    )
    .await;
    assert_eq!(back["invoice"], Value::Null);

    // `exclude` starts empty and leaves the item pending.
    let mut excluded = body.clone();
    excluded["pending_invoice_items_behavior"] = json!("exclude");
    let empty = json_of(
        app.post("/api/v1/invoices", &key, &excluded).await,
        StatusCode::CREATED,
    )
    .await;
    assert!(amounts(&empty).is_empty());
    assert_eq!(empty["total"], 0);
    let still = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items/{}", s(&fee["id"])),
    )
    .await;
    assert_eq!(still["invoice"], Value::Null);
    // An empty invoice owes nothing: finalized, it is paid at once.
    let settled = post_ok(
        &app,
        &key,
        &format!("/api/v1/invoices/{}/finalize", s(&empty["id"])),
    )
    .await;
    assert_eq!(settled["status"], "paid");

    let draft = json_of(
        app.post("/api/v1/invoices", &key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    let id = s(&draft["id"]);
    assert_eq!(draft["due_date"], Value::Null);
    let open = post_ok(&app, &key, &format!("/api/v1/invoices/{id}/finalize")).await;
    assert_eq!(open["status"], "open");
    assert_eq!(
        time(&open["due_date"]) - time(&open["finalized_at"]),
        Duration::days(14)
    );
    // Numbers follow each other: the empty invoice had the first.
    assert!(s(&settled["number"]).ends_with("-000001"));
    assert!(s(&open["number"]).ends_with("-000002"));
    // Sent, not charged.
    assert!(run_due(&app, scope).await.is_empty());
    let sent = post_ok(&app, &key, &format!("/api/v1/invoices/{id}/send")).await;
    assert!(sent["sent_at"].is_string());
    let events = get(&app, &key, "/api/v1/events?type=invoice.sent").await;
    let events = events["data"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["object"]["id"], json!(id));
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    assert!(payments["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_pending_item_rides_on_the_customers_next_subscription_invoice_once() {
    let app = spawn_app().await;
    let t = app.register("ride-along@acme.com").await;
    let key = t.sk_test();
    let clk = clock(&app, &key, "2026-01-10T09:00:00Z").await;
    let cus = customer_on(&app, &key, &clk, "UTC", Some("4242424242424242"), None).await;
    let plan = monthly_plan(&app, &key, "Team", None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": cus, "items": [{"plan": plan}]}),
    )
    .await;
    let extra = item(
        &app,
        &key,
        json!({"customer": cus, "amount": 700, "description": "Extra storage"}),
    )
    .await;
    // Added at the clock's time.
    assert_eq!(
        time(&extra["created_at"]),
        time(&json!("2026-01-10T09:00:00Z"))
    );
    advance(&app, &key, &t.sk_test, &clk, "2026-03-11T00:00:00Z").await;
    let invoices = invoices_of(&app, &key, &s(&sub["id"])).await;
    assert_eq!(invoices.len(), 3, "{invoices:?}");
    assert_eq!(amounts(&invoices[0]), vec![1500]);
    assert_eq!(amounts(&invoices[1]), vec![1500, 700]);
    assert_eq!(invoices[1]["total"], 2200);
    assert_eq!(invoices[1]["status"], "paid");
    assert_eq!(amounts(&invoices[2]), vec![1500]);
    let billed = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items/{}", s(&extra["id"])),
    )
    .await;
    assert_eq!(billed["invoice"], invoices[1]["id"]);
}

#[tokio::test]
async fn bad_invoice_items_and_invoices_are_refused_field_by_field_and_other_tenants_see_nothing() {
    let app = spawn_app().await;
    let t = app.register("bad-items@acme.com").await;
    let other = app.register("other-items@acme.com").await;
    let key = t.sk_test();
    let cus = customer(&app, &key, None).await;
    let bare = json_of(
        app.post("/api/v1/customers", &key, &json!({"name": "No currency"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let bare = s(&bare["id"]);
    let other_cus = customer(&app, &key, None).await;
    let other_draft = json_of(
        app.post("/api/v1/invoices", &key, &json!({"customer": other_cus}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let cases = [
        (json!({"customer": cus, "description": "x"}), "amount"),
        (
            json!({"customer": cus, "amount": 1, "unit_amount": 1, "description": "x"}),
            "amount",
        ),
        (
            json!({"customer": cus, "amount": 1, "quantity": 2, "description": "x"}),
            "quantity",
        ),
        (
            json!({"customer": cus, "unit_amount": 1, "quantity": 0, "description": "x"}),
            "quantity",
        ),
        (json!({"customer": cus, "amount": 100}), "description"),
        (
            json!({"customer": cus, "amount": 100, "description": "  "}),
            "description",
        ),
        (
            json!({"customer": cus, "amount": 100, "description": "x", "currency": "zz"}),
            "currency",
        ),
        (
            json!({"customer": cus, "amount": 100, "description": "x", "currency": "eur"}),
            "currency",
        ),
        (
            json!({"customer": bare, "amount": 100, "description": "x"}),
            "currency",
        ),
        (
            json!({"customer": "cus_01m80000000000000000000000", "amount": 1, "description": "x"}),
            "customer",
        ),
        (
            json!({"customer": "nope", "amount": 1, "description": "x"}),
            "customer",
        ),
        (
            json!({"customer": cus, "amount": 1, "description": "x",
                   "period_start": "2026-02-01T00:00:00Z", "period_end": "2026-01-01T00:00:00Z"}),
            "period_end",
        ),
        (
            json!({"customer": cus, "amount": 1, "description": "x",
                   "period_start": "2026-02-01T00:00:00Z"}),
            "period_end",
        ),
        (
            json!({"customer": cus, "amount": 1, "description": "x",
                   "invoice": other_draft["id"]}),
            "invoice",
        ),
        (
            json!({"customer": cus, "amount": 1, "description": "x",
                   "invoice": "in_01m80000000000000000000000"}),
            "invoice",
        ),
        (
            json!({"customer": cus, "price": "price_01m80000000000000000000000"}),
            "price",
        ),
        (
            json!({"customer": cus, "amount": 1, "description": "x", "surprise": 1}),
            "surprise",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post("/api/v1/invoice-items", &key, &body).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }
    let invoice_cases = [
        (
            json!({"customer": cus, "collection_method": "cash"}),
            "collection_method",
        ),
        (
            json!({"customer": cus, "days_until_due": 5}),
            "days_until_due",
        ),
        (
            json!({"customer": cus, "collection_method": "send_invoice", "days_until_due": 366}),
            "days_until_due",
        ),
        (
            json!({"customer": cus, "pending_invoice_items_behavior": "maybe"}),
            "pending_invoice_items_behavior",
        ),
        (json!({"customer": cus, "currency": "eur"}), "currency"),
        (json!({"customer": bare}), "currency"),
        (
            json!({"customer": cus, "coupon": "coupon_01m80000000000000000000000"}),
            "coupon",
        ),
        (
            json!({"customer": "cus_01m80000000000000000000000"}),
            "customer",
        ),
    ];
    for (body, field) in invoice_cases {
        let resp = app.post("/api/v1/invoices", &key, &body).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }

    // Another tenant, and live mode, see nothing of these.
    let ii = item(
        &app,
        &key,
        json!({"customer": cus, "amount": 100, "description": "Mine"}),
    )
    .await;
    let draft = s(&other_draft["id"]);
    let ii = s(&ii["id"]);
    for cred in [other.sk_test(), t.sk_live()] {
        for (method, path) in [
            (Method::GET, format!("/api/v1/invoice-items/{ii}")),
            (Method::DELETE, format!("/api/v1/invoice-items/{ii}")),
            (Method::GET, format!("/api/v1/invoices/{draft}")),
            (Method::DELETE, format!("/api/v1/invoices/{draft}")),
            (Method::POST, format!("/api/v1/invoices/{draft}/finalize")),
            (Method::POST, format!("/api/v1/invoices/{draft}/send")),
        ] {
            let body = (method == Method::POST).then(|| json!({}));
            let resp = app.send(method, &path, &cred, body.as_ref()).await;
            assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        }
        let listed = get(&app, &cred, "/api/v1/invoice-items").await;
        assert!(listed["data"].as_array().unwrap().is_empty());
        let add = app
            .post(
                "/api/v1/invoice-items",
                &cred,
                &json!({"customer": cus, "amount": 1, "description": "x"}),
            )
            .await;
        let problem = assert_problem(add, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], "customer");
    }
    // An open invoice takes no more items.
    let open = post_ok(&app, &key, &format!("/api/v1/invoices/{draft}/finalize")).await;
    let late = app
        .post(
            "/api/v1/invoice-items",
            &key,
            &json!({"customer": other_cus, "amount": 1, "description": "x", "invoice": open["id"]}),
        )
        .await;
    assert_problem(late, StatusCode::CONFLICT, "invoice_not_draft").await;
}

#[tokio::test]
async fn a_price_item_bills_the_price_and_a_coupon_discounts_a_one_off_invoice() {
    let app = spawn_app().await;
    let t = app.register("price-items@acme.com").await;
    let key = t.sk_test();
    let cus = customer(&app, &key, None).await;
    let product = json_of(
        app.post("/api/v1/products", &key, &json!({"name": "Workshop"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let price = json_of(
        app.post(
            &format!("/api/v1/products/{}/prices", s(&product["id"])),
            &key,
            &json!({"currency": "usd", "pricing": {"type": "flat", "amount": 12000}, "nickname": "Half day"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let workshop = item(
        &app,
        &key,
        json!({"customer": cus, "price": price["id"], "quantity": 2}),
    )
    .await;
    assert_eq!(workshop["amount"], 24000);
    assert_eq!(workshop["description"], "Workshop (Half day)");
    assert_eq!(workshop["price"], price["id"]);
    let coupon = json_of(
        app.post(
            "/api/v1/coupons",
            &key,
            &json!({"name": "Launch", "percent_off_bps": 2500, "duration": "once"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    item(
        &app,
        &key,
        json!({"customer": cus, "amount": -4000, "description": "Deposit paid"}),
    )
    .await;
    let draft = json_of(
        app.post(
            "/api/v1/invoices",
            &key,
            &json!({"customer": cus, "coupon": coupon["id"], "collection_method": "send_invoice"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(draft["coupon"], coupon["id"]);
    // 25 % of the charges (24000), none of the credit: 6000 off.
    assert_eq!(draft["subtotal"], 20000);
    assert_eq!(draft["discount"], 6000);
    assert_eq!(draft["total"], 14000);
    let discounts: Vec<i64> = draft["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["discount_amount"].as_i64().unwrap())
        .collect();
    assert_eq!(discounts, vec![6000, 0]);
    let redeemed = get(&app, &key, &format!("/api/v1/coupons/{}", s(&coupon["id"]))).await;
    assert_eq!(redeemed["times_redeemed"], 1);
}
