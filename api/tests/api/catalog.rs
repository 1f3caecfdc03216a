//! The catalog: products, their prices (every pricing model, what a quantity costs) and bundles
//! of prices sold at a discount. No Stripe is configured here, so products and prices are
//! `not_synced` and no sync job is ever queued.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{Cred, Tenant, TestApp, assert_problem, s, spawn_app},
    usage::metric,
    webhooks::{body, event_objects, ids},
};

const PRODUCTS: &str = "/api/v1/products";
const BUNDLES: &str = "/api/v1/bundles";
const MISSING_PRODUCT: &str = "prod_01m80000000000000000000000";
const MISSING_BUNDLE: &str = "bundle_01m80000000000000000000000";

fn product_path(id: &str) -> String {
    format!("{PRODUCTS}/{id}")
}

fn prices_path(product: &str) -> String {
    format!("{PRODUCTS}/{product}/prices")
}

fn price_path(id: &str) -> String {
    format!("/api/v1/prices/{id}")
}

fn amount_path(id: &str, quantity: u64) -> String {
    format!("/api/v1/prices/{id}/amount?quantity={quantity}")
}

fn bundle_path(id: &str) -> String {
    format!("{BUNDLES}/{id}")
}

/// Rows that must not change when a request is refused.
async fn written(app: &TestApp) -> [i64; 6] {
    [
        app.count("products").await,
        app.count("prices").await,
        app.count("bundles").await,
        app.count("bundle_items").await,
        app.count("events").await,
        app.count("jobs").await,
    ]
}

async fn create_product(app: &TestApp, cred: &Cred, input: Value) -> Value {
    body(app.post(PRODUCTS, cred, &input).await, StatusCode::CREATED).await
}

async fn product_id(app: &TestApp, cred: &Cred, name: &str) -> String {
    s(&create_product(app, cred, json!({"name": name})).await["id"])
}

async fn create_price(app: &TestApp, cred: &Cred, product: &str, input: Value) -> Value {
    let resp = app.post(&prices_path(product), cred, &input).await;
    body(resp, StatusCode::CREATED).await
}

async fn price_id(app: &TestApp, cred: &Cred, product: &str, input: Value) -> String {
    s(&create_price(app, cred, product, input).await["id"])
}

/// A flat price recurring every `count` `interval`s.
fn flat(amount: i64, currency: &str, interval: &str, count: u32) -> Value {
    json!({"currency": currency, "recurring": {"interval": interval, "interval_count": count},
           "pricing": {"type": "flat", "amount": amount}})
}

fn monthly_flat(amount: i64) -> Value {
    flat(amount, "usd", "month", 1)
}

fn tiers() -> Value {
    json!([{"up_to": 10, "unit_amount": 100}, {"up_to": null, "unit_amount": 80}])
}

/// The amount a quantity of a price costs (200).
async fn amount(app: &TestApp, cred: &Cred, price: &str, quantity: u64) -> Value {
    body(
        app.get(&amount_path(price, quantity), cred).await,
        StatusCode::OK,
    )
    .await
}

async fn create_bundle(app: &TestApp, cred: &Cred, input: Value) -> Value {
    body(app.post(BUNDLES, cred, &input).await, StatusCode::CREATED).await
}

// Products.

#[tokio::test]
async fn creating_a_product_returns_201_not_synced_and_records_a_created_event() {
    let app = spawn_app().await;
    let t = app.register("create-product@acme.com").await;
    let p = create_product(
        &app,
        &t.sk_test(),
        json!({"name": "AutoFlow AI", "code": "autoflow", "description": "Workflow automation",
               "features": ["AI automation", "Visual workflows"], "metadata": {"icon": "robot"}}),
    )
    .await;
    let id = s(&p["id"]);
    assert!(id.starts_with("prod_"), "{id}");
    assert_eq!(p["object"], "product");
    assert_eq!(p["name"], "AutoFlow AI");
    assert_eq!(p["code"], "autoflow");
    assert_eq!(p["description"], "Workflow automation");
    assert_eq!(p["features"], json!(["AI automation", "Visual workflows"]));
    assert_eq!(p["metadata"], json!({"icon": "robot"}));
    assert_eq!(p["active"], true);
    assert_eq!(p["livemode"], false);
    assert!(p["stripe_product_id"].is_null());
    assert_eq!(p["sync_status"], "not_synced");
    assert!(p["sync_error"].is_null());

    let plain = create_product(&app, &t.sk_test(), json!({"name": "TeamSpace"})).await;
    assert!(plain["code"].is_null());
    assert_eq!(plain["description"], "");
    assert_eq!(plain["features"], json!([]));
    assert_eq!(plain["metadata"], json!({}));

    let events = event_objects(&app, &t, false, "product.created").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["code"], "autoflow");
    assert_eq!(app.count("jobs").await, 0, "no Stripe, so no sync job");
}

#[tokio::test]
async fn product_codes_are_unique_per_tenant_and_mode() {
    let app = spawn_app().await;
    let a = app.register("codes-a@acme.com").await;
    let b = app.register("codes-b@acme.com").await;
    create_product(
        &app,
        &a.sk_test(),
        json!({"name": "AutoFlow", "code": "autoflow"}),
    )
    .await;
    let before = written(&app).await;
    let resp = app
        .post(
            PRODUCTS,
            &a.sk_test(),
            &json!({"name": "Another AutoFlow", "code": "autoflow"}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::CONFLICT, "product_code_taken").await;
    assert_eq!(problem["field"], "code");
    for bad in ["AutoFlow", "auto flow", ""] {
        let resp = app
            .post(PRODUCTS, &a.sk_test(), &json!({"name": "X", "code": bad}))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], "code", "{bad}");
    }
    let resp = app
        .post(PRODUCTS, &a.sk_test(), &json!({"name": " "}))
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "name");
    assert_eq!(written(&app).await, before);

    // The same code is free in live mode and in another tenant; products without a code repeat.
    let live = create_product(
        &app,
        &a.sk_live(),
        json!({"name": "AutoFlow", "code": "autoflow"}),
    )
    .await;
    assert_eq!(live["livemode"], true);
    create_product(
        &app,
        &b.sk_test(),
        json!({"name": "AutoFlow", "code": "autoflow"}),
    )
    .await;
    create_product(&app, &a.sk_test(), json!({"name": "No code"})).await;
    create_product(&app, &a.sk_test(), json!({"name": "No code"})).await;
    assert_eq!(app.count("products").await, 5);
}

#[tokio::test]
async fn products_are_listed_newest_first_and_get_includes_their_prices() {
    let app = spawn_app().await;
    let t = app.register("list-products@acme.com").await;
    let sk = t.sk_test();
    let first = product_id(&app, &sk, "First").await;
    let second = product_id(&app, &sk, "Second").await;
    let third = product_id(&app, &sk, "Third").await;

    let all = body(app.get(PRODUCTS, &sk).await, StatusCode::OK).await;
    assert_eq!(
        ids(&all),
        vec![third.clone(), second.clone(), first.clone()]
    );
    assert_eq!(all["has_more"], false);
    let page = body(
        app.get(&format!("{PRODUCTS}?limit=2"), &sk).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&page), vec![third.clone(), second.clone()]);
    assert_eq!(page["has_more"], true);
    let rest = body(
        app.get(&format!("{PRODUCTS}?limit=2&starting_after={second}"), &sk)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&rest), vec![first.clone()]);
    assert_eq!(rest["has_more"], false);

    let monthly = price_id(&app, &sk, &second, monthly_flat(1000)).await;
    let yearly = price_id(&app, &sk, &second, flat(10000, "usd", "year", 1)).await;
    let got = body(app.get(&product_path(&second), &sk).await, StatusCode::OK).await;
    assert_eq!(got["id"], second.as_str());
    assert_eq!(got["name"], "Second");
    let prices: Vec<String> = got["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| s(&p["id"]))
        .collect();
    assert_eq!(prices, vec![yearly.clone(), monthly.clone()]);
    let listed = body(app.get(&prices_path(&second), &sk).await, StatusCode::OK).await;
    assert_eq!(ids(&listed), vec![yearly, monthly]);
    let empty = body(app.get(&product_path(&first), &sk).await, StatusCode::OK).await;
    assert_eq!(empty["prices"], json!([]));

    assert_problem(
        app.get(&product_path(MISSING_PRODUCT), &sk).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
}

#[tokio::test]
async fn patching_a_product_changes_it_and_records_an_updated_event_each_time() {
    let app = spawn_app().await;
    let t = app.register("patch-product@acme.com").await;
    let id = s(&create_product(
        &app,
        &t.sk_test(),
        json!({"name": "BuildEasy", "code": "buildeasy"}),
    )
    .await["id"]);
    let steps = [
        json!({"name": "BuildEasy Pro"}),
        json!({"description": "No-code app builder"}),
        json!({"features": ["Drag-drop builder", "Templates"]}),
        json!({"metadata": {"color": "#10B981"}}),
    ];
    for (i, step) in steps.iter().enumerate() {
        let resp = app
            .send(Method::PATCH, &product_path(&id), &t.sk_test(), Some(step))
            .await;
        body(resp, StatusCode::OK).await;
        let updated = event_objects(&app, &t, false, "product.updated").await;
        assert_eq!(updated.len(), i + 1, "after {step}");
        assert_eq!(updated[i]["id"], id.as_str());
    }
    let p = body(
        app.get(&product_path(&id), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(p["name"], "BuildEasy Pro");
    assert_eq!(p["code"], "buildeasy");
    assert_eq!(p["description"], "No-code app builder");
    assert_eq!(p["features"], json!(["Drag-drop builder", "Templates"]));
    assert_eq!(p["metadata"], json!({"color": "#10B981"}));
    assert_eq!(p["active"], true);
    assert_eq!(p["sync_status"], "not_synced");

    let before = written(&app).await;
    for (change, field) in [
        (json!({"code": "other"}), "code"),
        (json!({"name": ""}), "name"),
    ] {
        let resp = app
            .send(
                Method::PATCH,
                &product_path(&id),
                &t.sk_test(),
                Some(&change),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field);
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(app.count("jobs").await, 0);
}

#[tokio::test]
async fn deleting_a_product_archives_it_and_keeps_it_and_its_prices_readable() {
    let app = spawn_app().await;
    let t = app.register("archive-product@acme.com").await;
    let sk = t.sk_test();
    let id = product_id(&app, &sk, "Retired").await;
    let kept = product_id(&app, &sk, "Kept").await;
    let price = price_id(&app, &sk, &id, monthly_flat(500)).await;
    let archived = body(
        app.send(Method::DELETE, &product_path(&id), &sk, None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(archived["id"], id.as_str());
    assert_eq!(archived["active"], false);
    let got = body(app.get(&product_path(&id), &sk).await, StatusCode::OK).await;
    assert_eq!(got["active"], false);
    assert_eq!(got["prices"][0]["id"], price.as_str());
    body(app.get(&price_path(&price), &sk).await, StatusCode::OK).await;
    let inactive = body(
        app.get(&format!("{PRODUCTS}?active=false"), &sk).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&inactive), vec![id.clone()]);
    let active = body(
        app.get(&format!("{PRODUCTS}?active=true"), &sk).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&active), vec![kept]);
    let updated = event_objects(&app, &t, false, "product.updated").await;
    assert_eq!(updated.len(), 1);
    assert_eq!(updated[0]["id"], id.as_str());
    assert_eq!(updated[0]["active"], false);
    assert_eq!(app.count("products").await, 2);
}

#[tokio::test]
async fn billing_users_and_publishable_keys_cannot_change_the_catalog() {
    let app = spawn_app().await;
    let t = app.register("perm-catalog@acme.com").await;
    let product = product_id(&app, &t.sk_test(), "Guarded").await;
    let price = price_id(&app, &t.sk_test(), &product, monthly_flat(100)).await;
    let other = price_id(&app, &t.sk_test(), &product, monthly_flat(200)).await;
    let bundle = s(&create_bundle(
        &app,
        &t.sk_test(),
        json!({"name": "Pair", "discount_bps": 1000,
               "items": [{"price_id": price}, {"price_id": other}]}),
    )
    .await["id"]);
    let (token, _) = app
        .user_with_role(&t, "billing-catalog@acme.com", "billing")
        .await;
    let billing = Cred::Bearer(token);
    body(app.get(PRODUCTS, &billing).await, StatusCode::OK).await;
    body(
        app.get(&product_path(&product), &billing).await,
        StatusCode::OK,
    )
    .await;
    body(app.get(&price_path(&price), &billing).await, StatusCode::OK).await;
    body(
        app.get(&amount_path(&price, 2), &billing).await,
        StatusCode::OK,
    )
    .await;
    body(
        app.get(&bundle_path(&bundle), &billing).await,
        StatusCode::OK,
    )
    .await;

    let before = written(&app).await;
    let attempts = [
        (
            Method::POST,
            PRODUCTS.to_owned(),
            Some(json!({"name": "X"})),
        ),
        (
            Method::PATCH,
            product_path(&product),
            Some(json!({"name": "X"})),
        ),
        (Method::DELETE, product_path(&product), None),
        (Method::POST, prices_path(&product), Some(monthly_flat(1))),
        (
            Method::PATCH,
            price_path(&price),
            Some(json!({"nickname": "X"})),
        ),
        (
            Method::POST,
            BUNDLES.to_owned(),
            Some(json!({"name": "X", "discount_bps": 0,
                        "items": [{"price_id": price}, {"price_id": other}]})),
        ),
        (
            Method::PATCH,
            bundle_path(&bundle),
            Some(json!({"name": "X"})),
        ),
        (Method::DELETE, bundle_path(&bundle), None),
    ];
    for (method, p, b) in &attempts {
        let resp = app.send(method.clone(), p, &billing, b.as_ref()).await;
        assert_problem(resp, StatusCode::FORBIDDEN, "permission_denied").await;
        let resp = app
            .send(
                method.clone(),
                p,
                &Cred::Bearer(t.pk_test.clone()),
                b.as_ref(),
            )
            .await;
        assert_problem(resp, StatusCode::FORBIDDEN, "secret_key_required").await;
    }
    assert_eq!(written(&app).await, before);
}

// Prices.

#[tokio::test]
async fn prices_of_every_model_can_be_created_recurring_or_one_time_and_read_back() {
    let app = spawn_app().await;
    let t = app.register("price-models@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "Models").await;
    let cases = [
        (
            json!({"nickname": "Starter", "currency": "usd",
                   "recurring": {"interval": "month"},
                   "pricing": {"type": "flat", "amount": 1000}}),
            Some(("month", 1)),
            json!({"type": "flat", "amount": 1000}),
            json!("$10.00/month"),
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "year", "interval_count": 1},
                   "pricing": {"type": "per_unit", "unit_amount": 1500}}),
            Some(("year", 1)),
            json!({"type": "per_unit", "unit_amount": 1500}),
            json!("$15.00/year"),
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "month", "interval_count": 3},
                   "pricing": {"type": "graduated", "tiers": tiers()}}),
            Some(("month", 3)),
            json!({"type": "graduated", "tiers": [
                {"up_to": 10, "unit_amount": 100, "flat_amount": 0},
                {"up_to": null, "unit_amount": 80, "flat_amount": 0}]}),
            Value::Null,
        ),
        (
            json!({"currency": "usd",
                   "pricing": {"type": "volume", "tiers": [
                       {"up_to": 10, "unit_amount": 100, "flat_amount": 50},
                       {"unit_amount": 80}]}}),
            None,
            json!({"type": "volume", "tiers": [
                {"up_to": 10, "unit_amount": 100, "flat_amount": 50},
                {"up_to": null, "unit_amount": 80, "flat_amount": 0}]}),
            Value::Null,
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "week", "interval_count": 2},
                   "pricing": {"type": "package", "amount": 500, "package_size": 10}}),
            Some(("week", 2)),
            json!({"type": "package", "amount": 500, "package_size": 10}),
            Value::Null,
        ),
        (
            json!({"currency": "usd", "pricing": {"type": "flat", "amount": 4900}}),
            None,
            json!({"type": "flat", "amount": 4900}),
            json!("$49.00"),
        ),
        (
            json!({"currency": "EUR", "recurring": {"interval": "quarterly"},
                   "pricing": {"type": "flat", "amount": 9000}}),
            Some(("quarter", 1)),
            json!({"type": "flat", "amount": 9000}),
            json!("€90.00/quarter"),
        ),
    ];
    let mut created = Vec::new();
    for (input, recurring, pricing, display) in cases {
        let p = create_price(&app, &sk, &product, input.clone()).await;
        let id = s(&p["id"]);
        assert!(id.starts_with("price_"), "{id}");
        assert_eq!(p["object"], "price");
        assert_eq!(p["product_id"], product.as_str());
        assert_eq!(
            p["currency"],
            input["currency"].as_str().unwrap().to_lowercase()
        );
        match recurring {
            Some((interval, count)) => {
                assert_eq!(p["interval"], interval, "{input}");
                assert_eq!(p["interval_count"], count, "{input}");
            }
            None => {
                assert!(p["interval"].is_null(), "{input}");
                assert!(p["interval_count"].is_null(), "{input}");
            }
        }
        assert_eq!(p["pricing"], pricing, "{input}");
        assert!(p["usage"].is_null());
        assert_eq!(p["price_display"], display, "{input}");
        assert_eq!(p["active"], true);
        assert_eq!(p["livemode"], false);
        assert!(p["stripe_price_id"].is_null());
        assert_eq!(p["sync_status"], "not_synced");
        let got = body(app.get(&price_path(&id), &sk).await, StatusCode::OK).await;
        assert_eq!(got, p);
        created.push(id);
    }
    let events = event_objects(&app, &t, false, "price.created").await;
    let event_ids: Vec<String> = events.iter().map(|e| s(&e["id"])).collect();
    assert_eq!(event_ids, created);
    assert_eq!(app.count("jobs").await, 0);
}

#[tokio::test]
async fn a_metered_price_records_its_usage_and_must_be_recurring() {
    let app = spawn_app().await;
    let t = app.register("metered@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "API").await;
    metric(&app, &sk, "api_calls", "sum", Some("calls")).await;
    metric(&app, &sk, "emails.sent", "count", None).await;
    let p = create_price(
        &app,
        &sk,
        &product,
        json!({"currency": "usd", "recurring": {"interval": "month"},
               "pricing": {"type": "graduated", "tiers": tiers()},
               "usage": {"metric": "api_calls", "aggregation": "sum"}}),
    )
    .await;
    assert_eq!(
        p["usage"],
        json!({"metric": "api_calls", "aggregation": "sum"})
    );
    assert!(p["price_display"].is_null());
    // Even a flat metered price has no single display price.
    let metered_flat = create_price(
        &app,
        &sk,
        &product,
        json!({"currency": "usd", "recurring": {"interval": "month"},
               "pricing": {"type": "per_unit", "unit_amount": 2},
               "usage": {"metric": "emails.sent", "aggregation": "count"}}),
    )
    .await;
    assert!(metered_flat["price_display"].is_null());

    let before = written(&app).await;
    for (input, field) in [
        (
            json!({"currency": "usd", "pricing": {"type": "per_unit", "unit_amount": 2},
                   "usage": {"metric": "api_calls", "aggregation": "sum"}}),
            "usage",
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "month"},
                   "pricing": {"type": "per_unit", "unit_amount": 2},
                   "usage": {"metric": "API Calls", "aggregation": "sum"}}),
            "usage.metric",
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "month"},
                   "pricing": {"type": "per_unit", "unit_amount": 2},
                   "usage": {"metric": "no_such_metric"}}),
            "usage.metric",
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "month"},
                   "pricing": {"type": "per_unit", "unit_amount": 2},
                   "usage": {"metric": "api_calls", "aggregation": "max"}}),
            "usage.aggregation",
        ),
    ] {
        let resp = app.post(&prices_path(&product), &sk, &input).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{input}");
    }
    let resp = app
        .post(
            &prices_path(&product),
            &sk,
            &json!({"currency": "usd", "recurring": {"interval": "month"},
                    "pricing": {"type": "per_unit", "unit_amount": 2},
                    "usage": {"metric": "api_calls", "aggregation": "median"}}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert!(
        s(&problem["field"]).starts_with("usage"),
        "{}",
        problem["field"]
    );
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn invalid_pricing_terms_fail_validation_on_pricing_and_write_nothing() {
    let app = spawn_app().await;
    let t = app.register("bad-pricing@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "Strict").await;
    let with_pricing = |pricing: Value| json!({"currency": "usd", "recurring": {"interval": "month"}, "pricing": pricing});
    let bad_terms = [
        // Not ascending.
        json!({"type": "graduated", "tiers": [
            {"up_to": 20, "unit_amount": 100}, {"up_to": 10, "unit_amount": 90},
            {"up_to": null, "unit_amount": 80}]}),
        json!({"type": "volume", "tiers": [
            {"up_to": 10, "unit_amount": 100}, {"up_to": 10, "unit_amount": 90},
            {"up_to": null, "unit_amount": 80}]}),
        // No unbounded last tier.
        json!({"type": "graduated", "tiers": [
            {"up_to": 10, "unit_amount": 100}, {"up_to": 20, "unit_amount": 80}]}),
        // Unbounded before the end.
        json!({"type": "volume", "tiers": [
            {"up_to": null, "unit_amount": 100}, {"up_to": null, "unit_amount": 80}]}),
        json!({"type": "graduated", "tiers": []}),
        json!({"type": "graduated", "tiers": [
            {"up_to": 0, "unit_amount": 100}, {"up_to": null, "unit_amount": 80}]}),
        // Negative amounts.
        json!({"type": "graduated", "tiers": [
            {"up_to": 10, "unit_amount": -1}, {"up_to": null, "unit_amount": 80}]}),
        json!({"type": "volume", "tiers": [
            {"up_to": 10, "unit_amount": 100, "flat_amount": -5},
            {"up_to": null, "unit_amount": 80}]}),
        json!({"type": "flat", "amount": -1}),
        json!({"type": "per_unit", "unit_amount": -1}),
        json!({"type": "package", "amount": -1, "package_size": 10}),
        json!({"type": "package", "amount": 500, "package_size": 0}),
    ];
    let before = written(&app).await;
    for terms in bad_terms {
        let resp = app
            .post(&prices_path(&product), &sk, &with_pricing(terms.clone()))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], "pricing", "{terms}");
    }
    for terms in [
        json!({"type": "tiered_magic", "amount": 1}),
        json!({"amount": 1}),
        json!({"type": "flat", "amount": 1, "unit_amount": 2}),
    ] {
        let resp = app
            .post(&prices_path(&product), &sk, &with_pricing(terms.clone()))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert!(
            s(&problem["field"]).starts_with("pricing"),
            "{terms}: {problem}"
        );
    }
    for (input, field) in [
        (
            json!({"currency": "xyz", "pricing": {"type": "flat", "amount": 1}}),
            "currency",
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "fortnight"},
                   "pricing": {"type": "flat", "amount": 1}}),
            "recurring",
        ),
        (
            json!({"currency": "usd", "recurring": {"interval": "month", "interval_count": 13},
                   "pricing": {"type": "flat", "amount": 1}}),
            "recurring",
        ),
        (
            json!({"currency": "usd", "pricing": {"type": "flat", "amount": 1}, "color": "red"}),
            "color",
        ),
    ] {
        let resp = app.post(&prices_path(&product), &sk, &input).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{input}");
    }
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn patching_a_price_changes_nickname_active_and_metadata_and_its_terms_are_immutable() {
    let app = spawn_app().await;
    let t = app.register("patch-price@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "Priced").await;
    let id = price_id(&app, &sk, &product, monthly_flat(1000)).await;
    let resp = app
        .send(
            Method::PATCH,
            &price_path(&id),
            &sk,
            Some(&json!({"nickname": "Professional", "metadata": {"tier": "pro"}})),
        )
        .await;
    let p = body(resp, StatusCode::OK).await;
    assert_eq!(p["nickname"], "Professional");
    assert_eq!(p["metadata"], json!({"tier": "pro"}));
    assert_eq!(p["active"], true);
    let resp = app
        .send(
            Method::PATCH,
            &price_path(&id),
            &sk,
            Some(&json!({"active": false})),
        )
        .await;
    let p = body(resp, StatusCode::OK).await;
    assert_eq!(p["active"], false);
    assert_eq!(p["nickname"], "Professional");
    assert_eq!(p["pricing"], json!({"type": "flat", "amount": 1000}));
    assert_eq!(p["price_display"], "$10.00/month");
    assert_eq!(p["sync_status"], "not_synced");
    let updated = event_objects(&app, &t, false, "price.updated").await;
    assert_eq!(updated.len(), 2);
    assert_eq!(updated[1]["active"], false);

    let before_row = body(app.get(&price_path(&id), &sk).await, StatusCode::OK).await;
    let before = written(&app).await;
    for (field, value) in [
        ("currency", json!("eur")),
        ("recurring", json!({"interval": "year"})),
        ("pricing", json!({"type": "flat", "amount": 1})),
        (
            "usage",
            json!({"metric": "api_calls", "aggregation": "sum"}),
        ),
    ] {
        let mut change = json!({"nickname": "Changed"});
        change[field] = value;
        let resp = app
            .send(Method::PATCH, &price_path(&id), &sk, Some(&change))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "immutable_field").await;
        assert_eq!(problem["field"], field);
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(
        body(app.get(&price_path(&id), &sk).await, StatusCode::OK).await,
        before_row
    );
}

#[tokio::test]
async fn another_tenants_products_and_prices_answer_404_and_stay_unchanged() {
    let app = spawn_app().await;
    let a = app.register("owner@catalog-a.com").await;
    let b = app.register("owner@catalog-b.com").await;
    let product = product_id(&app, &a.sk_test(), "Ours").await;
    let price = price_id(&app, &a.sk_test(), &product, monthly_flat(1000)).await;
    let product_before = body(
        app.get(&product_path(&product), &a.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    let before = written(&app).await;
    for cred in [b.sk_test(), b.sk_live(), b.jwt(), a.sk_live()] {
        for (method, p, payload) in [
            (Method::GET, product_path(&product), None),
            (
                Method::PATCH,
                product_path(&product),
                Some(json!({"name": "Theirs"})),
            ),
            (Method::DELETE, product_path(&product), None),
            (Method::GET, prices_path(&product), None),
            (Method::POST, prices_path(&product), Some(monthly_flat(1))),
            (Method::GET, price_path(&price), None),
            (Method::GET, amount_path(&price, 3), None),
            (
                Method::PATCH,
                price_path(&price),
                Some(json!({"active": false})),
            ),
        ] {
            let resp = app.send(method.clone(), &p, &cred, payload.as_ref()).await;
            assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        }
        let list = body(app.get(PRODUCTS, &cred).await, StatusCode::OK).await;
        assert!(ids(&list).is_empty());
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(
        body(
            app.get(&product_path(&product), &a.sk_test()).await,
            StatusCode::OK
        )
        .await,
        product_before
    );
}

#[tokio::test]
async fn the_amount_of_a_quantity_is_exactly_what_the_pricing_model_implies() {
    let app = spawn_app().await;
    let t = app.register("amounts@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "Amounts").await;
    let recurring = |pricing: Value| json!({"currency": "usd", "recurring": {"interval": "month"}, "pricing": pricing});
    let flat = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "flat", "amount": 4900})),
    )
    .await;
    let per_unit = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "per_unit", "unit_amount": 1225})),
    )
    .await;
    let graduated = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "graduated", "tiers": tiers()})),
    )
    .await;
    let volume = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "volume", "tiers": tiers()})),
    )
    .await;
    let package = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "package", "amount": 500, "package_size": 10})),
    )
    .await;
    let fees = json!([{"up_to": 10, "unit_amount": 100, "flat_amount": 500},
                      {"up_to": null, "unit_amount": 80, "flat_amount": 1000}]);
    let graduated_fees = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "graduated", "tiers": fees})),
    )
    .await;
    let volume_fees = price_id(
        &app,
        &sk,
        &product,
        recurring(json!({"type": "volume", "tiers": fees})),
    )
    .await;
    let cases = [
        (&flat, 1, 4900, "$49.00"),
        (&flat, 5, 4900, "$49.00"),
        (&flat, 0, 0, "$0.00"),
        (&per_unit, 3, 3675, "$36.75"),
        // 10 × 100 in the first tier, 5 × 80 in the second.
        (&graduated, 15, 1400, "$14.00"),
        (&graduated, 10, 1000, "$10.00"),
        (&graduated, 11, 1080, "$10.80"),
        // All 15 at the tier 15 falls into.
        (&volume, 15, 1200, "$12.00"),
        (&volume, 10, 1000, "$10.00"),
        (&volume, 11, 880, "$8.80"),
        // Whole packages, rounded up.
        (&package, 11, 1000, "$10.00"),
        (&package, 10, 500, "$5.00"),
        (&package, 1, 500, "$5.00"),
        // Each tier reached adds its flat fee once.
        (&graduated_fees, 15, 1000 + 500 + 400 + 1000, "$29.00"),
        (&graduated_fees, 10, 1500, "$15.00"),
        (&volume_fees, 15, 1200 + 1000, "$22.00"),
        (&volume_fees, 3, 800, "$8.00"),
    ];
    for (price, quantity, expected, display) in cases {
        let got = amount(&app, &sk, price, quantity).await;
        assert_eq!(got["price_id"], price.as_str());
        assert_eq!(got["quantity"], quantity);
        assert_eq!(got["amount"], expected, "{price} × {quantity}");
        assert_eq!(got["currency"], "usd");
        assert_eq!(got["amount_display"], display, "{price} × {quantity}");
    }
    // Without a quantity, one unit is priced.
    let one = body(
        app.get(&format!("/api/v1/prices/{per_unit}/amount"), &sk)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(one["quantity"], 1);
    assert_eq!(one["amount"], 1225);

    let yen = price_id(
        &app,
        &sk,
        &product,
        json!({"currency": "jpy", "pricing": {"type": "flat", "amount": 500}}),
    )
    .await;
    let got = amount(&app, &sk, &yen, 1).await;
    assert_eq!(got["amount"], 500);
    assert_eq!(got["currency"], "jpy");
    assert_eq!(got["amount_display"], "¥500");
    let yen_price = body(app.get(&price_path(&yen), &sk).await, StatusCode::OK).await;
    assert_eq!(yen_price["price_display"], "¥500");
}

#[tokio::test]
async fn a_quantity_whose_amount_overflows_fails_validation_on_quantity() {
    let app = spawn_app().await;
    let t = app.register("overflow@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "Big").await;
    let per_unit = price_id(
        &app,
        &sk,
        &product,
        json!({"currency": "usd", "pricing": {"type": "per_unit", "unit_amount": 10}}),
    )
    .await;
    let resp = app.get(&amount_path(&per_unit, u64::MAX), &sk).await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "quantity");
    // The largest quantity that still fits is priced exactly.
    let fits = (i64::MAX / 10) as u64;
    let got = amount(&app, &sk, &per_unit, fits).await;
    assert_eq!(got["amount"], i64::MAX / 10 * 10);
}

// Bundles.

/// Three monthly usd prices of three products whose list price is $164.75:
/// AutoFlow $79.00 × 1, TeamSpace $12.25 per seat × 3, BuildEasy $49.00 × 1.
async fn professional_members(app: &TestApp, t: &Tenant) -> [String; 3] {
    let sk = t.sk_test();
    let autoflow = product_id(app, &sk, "AutoFlow AI").await;
    let teamspace = product_id(app, &sk, "TeamSpace").await;
    let buildeasy = product_id(app, &sk, "BuildEasy").await;
    let a = price_id(
        app,
        &sk,
        &autoflow,
        json!({"nickname": "AutoFlow Pro", "currency": "usd",
               "recurring": {"interval": "month"}, "pricing": {"type": "flat", "amount": 7900}}),
    )
    .await;
    let b = price_id(
        app,
        &sk,
        &teamspace,
        json!({"nickname": "TeamSpace seat", "currency": "usd",
               "recurring": {"interval": "month"},
               "pricing": {"type": "per_unit", "unit_amount": 1225}}),
    )
    .await;
    let c = price_id(app, &sk, &buildeasy, monthly_flat(4900)).await;
    [a, b, c]
}

#[tokio::test]
async fn a_bundle_prices_its_members_and_takes_the_discount_rounding_half_away_from_zero() {
    let app = spawn_app().await;
    let t = app.register("bundle@acme.com").await;
    let [a, b, c] = professional_members(&app, &t).await;
    let bundle = create_bundle(
        &app,
        &t.sk_test(),
        json!({"name": "Professional Bundle", "description": "All three",
               "discount_bps": 1800, "featured": true, "metadata": {"tier": "pro"},
               "items": [{"price_id": b, "quantity": 3}, {"price_id": a}, {"price_id": c}]}),
    )
    .await;
    let id = s(&bundle["id"]);
    assert!(id.starts_with("bundle_"), "{id}");
    assert_eq!(bundle["object"], "bundle");
    assert_eq!(bundle["name"], "Professional Bundle");
    assert_eq!(bundle["description"], "All three");
    assert_eq!(bundle["currency"], "usd");
    assert_eq!(bundle["interval"], "month");
    assert_eq!(bundle["interval_count"], 1);
    assert_eq!(bundle["discount_bps"], 1800);
    // 3 × 1225 + 7900 + 4900 = 16475; 18 % of it is 2965.5, which rounds away from zero.
    assert_eq!(bundle["list_amount"], 16475);
    assert_eq!(bundle["savings"], 2966);
    assert_eq!(bundle["amount"], 16475 - 2966);
    assert_eq!(bundle["price_display"], "$135.09/month");
    assert_eq!(bundle["savings_display"], "$29.66/month");
    assert_eq!(bundle["active"], true);
    assert_eq!(bundle["featured"], true);
    assert_eq!(bundle["metadata"], json!({"tier": "pro"}));
    assert_eq!(bundle["livemode"], false);
    let items = bundle["items"].as_array().unwrap();
    let order: Vec<String> = items.iter().map(|i| s(&i["price_id"])).collect();
    assert_eq!(order, vec![b.clone(), a.clone(), c.clone()]);
    assert_eq!(items[0]["quantity"], 3);
    assert_eq!(items[0]["amount"], 3675);
    assert_eq!(items[0]["nickname"], "TeamSpace seat");
    assert_eq!(items[0]["price_display"], "$12.25/month");
    assert_eq!(items[1]["quantity"], 1);
    assert_eq!(items[1]["amount"], 7900);
    assert_eq!(items[2]["amount"], 4900);

    let got = body(
        app.get(&bundle_path(&id), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(got, bundle);
    let events = event_objects(&app, &t, false, "bundle.created").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["amount"], 13509);

    // One-time members make a one-time bundle.
    let sk = t.sk_test();
    let setup = product_id(&app, &sk, "Setup").await;
    let x = price_id(
        &app,
        &sk,
        &setup,
        json!({"currency": "usd", "pricing": {"type": "flat", "amount": 10000}}),
    )
    .await;
    let y = price_id(
        &app,
        &sk,
        &setup,
        json!({"currency": "usd", "pricing": {"type": "package", "amount": 2500, "package_size": 5}}),
    )
    .await;
    let once = create_bundle(
        &app,
        &sk,
        json!({"name": "Onboarding", "discount_bps": 2500,
               "items": [{"price_id": x}, {"price_id": y, "quantity": 6}]}),
    )
    .await;
    assert!(once["interval"].is_null());
    assert_eq!(once["list_amount"], 15000);
    assert_eq!(once["savings"], 3750);
    assert_eq!(once["amount"], 11250);
    assert_eq!(once["price_display"], "$112.50");
    assert_eq!(once["savings_display"], "$37.50");
    assert_eq!(once["featured"], false);
}

#[tokio::test]
async fn bundle_members_must_be_known_distinct_active_unmetered_and_share_currency_and_recurrence()
{
    let app = spawn_app().await;
    let t = app.register("bundle-rules@acme.com").await;
    let other = app.register("bundle-rules-other@acme.com").await;
    let sk = t.sk_test();
    let product = product_id(&app, &sk, "Members").await;
    let usd_month = price_id(&app, &sk, &product, monthly_flat(1000)).await;
    let usd_month_2 = price_id(&app, &sk, &product, monthly_flat(2000)).await;
    let eur_month = price_id(&app, &sk, &product, flat(1000, "eur", "month", 1)).await;
    let usd_year = price_id(&app, &sk, &product, flat(10000, "usd", "year", 1)).await;
    let usd_3_months = price_id(&app, &sk, &product, flat(3000, "usd", "month", 3)).await;
    let one_time = price_id(
        &app,
        &sk,
        &product,
        json!({"currency": "usd", "pricing": {"type": "flat", "amount": 1000}}),
    )
    .await;
    metric(&app, &sk, "api_calls", "sum", Some("calls")).await;
    let metered = price_id(
        &app,
        &sk,
        &product,
        json!({"currency": "usd", "recurring": {"interval": "month"},
               "pricing": {"type": "per_unit", "unit_amount": 1},
               "usage": {"metric": "api_calls", "aggregation": "sum"}}),
    )
    .await;
    let archived = price_id(&app, &sk, &product, monthly_flat(500)).await;
    body(
        app.send(
            Method::PATCH,
            &price_path(&archived),
            &sk,
            Some(&json!({"active": false})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let their_product = product_id(&app, &other.sk_test(), "Theirs").await;
    let theirs = price_id(&app, &other.sk_test(), &their_product, monthly_flat(1000)).await;
    let live_product = product_id(&app, &t.sk_live(), "Live").await;
    let live = price_id(&app, &t.sk_live(), &live_product, monthly_flat(1000)).await;

    let items = |ids: &[&String]| -> Value {
        ids.iter()
            .map(|id| json!({"price_id": id}))
            .collect::<Vec<_>>()
            .into()
    };
    let bundle = |items: Value| json!({"name": "Rules", "discount_bps": 1000, "items": items});
    let cases = [
        (
            items(&[&usd_month, &eur_month]),
            "items[1].price_id",
            "currency",
        ),
        (
            items(&[&usd_month, &usd_year]),
            "items[1].price_id",
            "recurs",
        ),
        (
            items(&[&usd_month, &usd_3_months]),
            "items[1].price_id",
            "recurs",
        ),
        (
            items(&[&usd_month, &one_time]),
            "items[1].price_id",
            "recurs",
        ),
        (
            items(&[&metered, &usd_month]),
            "items[0].price_id",
            "metered",
        ),
        (
            items(&[&usd_month, &usd_month_2, &metered]),
            "items[2].price_id",
            "metered",
        ),
        (
            items(&[&usd_month, &archived]),
            "items[1].price_id",
            "archived",
        ),
        (
            items(&[&usd_month, &theirs]),
            "items[1].price_id",
            "no such price",
        ),
        (
            items(&[&usd_month, &live]),
            "items[1].price_id",
            "no such price",
        ),
        (
            items(&[&usd_month, &usd_month]),
            "items[1].price_id",
            "twice",
        ),
        (items(&[&usd_month]), "items", "2 to 20"),
        (json!([]), "items", "2 to 20"),
        (
            json!([{"price_id": "plan_01m80000000000000000000000"}, {"price_id": usd_month}]),
            "items[0].price_id",
            "",
        ),
        (
            json!([{"price_id": usd_month, "quantity": 0}, {"price_id": usd_month_2}]),
            "items[0].quantity",
            "",
        ),
    ];
    let before = written(&app).await;
    for (items, field, detail) in cases {
        let resp = app.post(BUNDLES, &sk, &bundle(items.clone())).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{items}");
        assert!(s(&problem["detail"]).contains(detail), "{items}: {problem}");
    }
    for (discount, field) in [(json!(10001), "discount_bps"), (json!(-1), "discount_bps")] {
        let resp = app
            .post(
                BUNDLES,
                &sk,
                &json!({"name": "Rules", "discount_bps": discount,
                        "items": items(&[&usd_month, &usd_month_2])}),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{discount}");
    }
    assert_eq!(written(&app).await, before);

    // The whole range of discounts is accepted.
    for (name, bps, amount) in [("Free", 10000, 0), ("Full price", 0, 3000)] {
        let b = create_bundle(
            &app,
            &sk,
            json!({"name": name, "discount_bps": bps,
                   "items": items(&[&usd_month, &usd_month_2])}),
        )
        .await;
        assert_eq!(b["amount"], amount, "{name}");
    }
}

#[tokio::test]
async fn bundle_names_are_unique_per_tenant_and_mode_ignoring_case() {
    let app = spawn_app().await;
    let a = app.register("bundle-names-a@acme.com").await;
    let b = app.register("bundle-names-b@acme.com").await;
    let pair = |sk: Cred| {
        let app = &app;
        async move {
            let product = product_id(app, &sk, "Pair").await;
            let x = price_id(app, &sk, &product, monthly_flat(1000)).await;
            let y = price_id(app, &sk, &product, monthly_flat(2000)).await;
            json!([{"price_id": x}, {"price_id": y}])
        }
    };
    let ours = pair(a.sk_test()).await;
    let starter = create_bundle(
        &app,
        &a.sk_test(),
        json!({"name": "Starter Bundle", "discount_bps": 1000, "items": ours}),
    )
    .await;
    let other = create_bundle(
        &app,
        &a.sk_test(),
        json!({"name": "Other", "discount_bps": 1000, "items": ours}),
    )
    .await;
    let before = written(&app).await;
    for name in ["Starter Bundle", "starter bundle", " STARTER BUNDLE "] {
        let resp = app
            .post(
                BUNDLES,
                &a.sk_test(),
                &json!({"name": name, "discount_bps": 500, "items": ours}),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::CONFLICT, "bundle_name_taken").await;
        assert_eq!(problem["field"], "name", "{name}");
    }
    let resp = app
        .send(
            Method::PATCH,
            &bundle_path(&s(&other["id"])),
            &a.sk_test(),
            Some(&json!({"name": "STARTER bundle"})),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "bundle_name_taken").await;
    assert_eq!(written(&app).await, before);

    // The same name is free in live mode and in another tenant.
    let live = pair(a.sk_live()).await;
    let live_bundle = create_bundle(
        &app,
        &a.sk_live(),
        json!({"name": "Starter Bundle", "discount_bps": 1000, "items": live}),
    )
    .await;
    assert_eq!(live_bundle["livemode"], true);
    let theirs = pair(b.sk_test()).await;
    let their_bundle = create_bundle(
        &app,
        &b.sk_test(),
        json!({"name": "Starter Bundle", "discount_bps": 1000, "items": theirs}),
    )
    .await;
    assert_ne!(their_bundle["id"], starter["id"]);
    assert_eq!(app.count("bundles").await, 4);
}

#[tokio::test]
async fn bundles_are_listed_newest_first_and_a_discount_change_recomputes_the_amounts() {
    let app = spawn_app().await;
    let t = app.register("bundle-patch@acme.com").await;
    let sk = t.sk_test();
    let [a, b, c] = professional_members(&app, &t).await;
    let starter = create_bundle(
        &app,
        &sk,
        json!({"name": "Starter Bundle", "discount_bps": 1000,
               "items": [{"price_id": a}, {"price_id": b, "quantity": 2}]}),
    )
    .await;
    let pro = create_bundle(
        &app,
        &sk,
        json!({"name": "Professional Bundle", "discount_bps": 1800,
               "items": [{"price_id": a}, {"price_id": b, "quantity": 3}, {"price_id": c}]}),
    )
    .await;
    let (starter_id, pro_id) = (s(&starter["id"]), s(&pro["id"]));
    let all = body(app.get(BUNDLES, &sk).await, StatusCode::OK).await;
    assert_eq!(ids(&all), vec![pro_id.clone(), starter_id.clone()]);
    assert_eq!(all["data"][0], pro);
    assert_eq!(all["data"][1], starter);
    let page = body(
        app.get(&format!("{BUNDLES}?limit=1"), &sk).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&page), vec![pro_id.clone()]);
    assert_eq!(page["has_more"], true);
    let rest = body(
        app.get(&format!("{BUNDLES}?limit=1&starting_after={pro_id}"), &sk)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&rest), vec![starter_id.clone()]);
    assert_eq!(rest["has_more"], false);

    // 7900 + 2 × 1225 = 10350 at 10 % off; then 24 % off: 2484 saved.
    assert_eq!(starter["list_amount"], 10350);
    assert_eq!(starter["savings"], 1035);
    assert_eq!(starter["amount"], 9315);
    let resp = app
        .send(
            Method::PATCH,
            &bundle_path(&starter_id),
            &sk,
            Some(&json!({"discount_bps": 2400, "name": "Starter Plus", "featured": true})),
        )
        .await;
    let patched = body(resp, StatusCode::OK).await;
    assert_eq!(patched["name"], "Starter Plus");
    assert_eq!(patched["featured"], true);
    assert_eq!(patched["discount_bps"], 2400);
    assert_eq!(patched["list_amount"], 10350);
    assert_eq!(patched["savings"], 2484);
    assert_eq!(patched["amount"], 7866);
    assert_eq!(patched["price_display"], "$78.66/month");
    assert_eq!(patched["savings_display"], "$24.84/month");
    assert_eq!(patched["items"], starter["items"]);
    assert_eq!(
        body(
            app.get(&bundle_path(&starter_id), &sk).await,
            StatusCode::OK
        )
        .await,
        patched
    );
    let resp = app
        .send(
            Method::PATCH,
            &bundle_path(&starter_id),
            &sk,
            Some(&json!({"discount_bps": 10001})),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "discount_bps");

    let gone = body(
        app.send(Method::DELETE, &bundle_path(&pro_id), &sk, None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(gone["active"], false);
    let got = body(app.get(&bundle_path(&pro_id), &sk).await, StatusCode::OK).await;
    assert_eq!(got["active"], false);
    assert_eq!(got["amount"], pro["amount"]);
    let updated = event_objects(&app, &t, false, "bundle.updated").await;
    assert_eq!(updated.len(), 2);
    assert_eq!(updated[0]["amount"], 7866);
    assert_eq!(updated[1]["id"], pro_id.as_str());
    assert_eq!(updated[1]["active"], false);
    assert_eq!(app.count("bundles").await, 2);
}

#[tokio::test]
async fn another_tenants_bundle_answers_404_exactly_like_a_missing_one_and_stays_unchanged() {
    let app = spawn_app().await;
    let a = app.register("owner@bundles-a.com").await;
    let b = app.register("owner@bundles-b.com").await;
    let [x, y, _] = professional_members(&app, &a).await;
    let bundle = create_bundle(
        &app,
        &a.sk_test(),
        json!({"name": "Ours", "discount_bps": 1000,
               "items": [{"price_id": x}, {"price_id": y}]}),
    )
    .await;
    let id = s(&bundle["id"]);
    let before = written(&app).await;
    let change = json!({"discount_bps": 10000});
    for cred in [b.sk_test(), b.jwt(), a.sk_live()] {
        for (method, payload) in [
            (Method::GET, None),
            (Method::PATCH, Some(&change)),
            (Method::DELETE, None),
        ] {
            let theirs = app
                .send(method.clone(), &bundle_path(&id), &cred, payload)
                .await;
            let theirs = assert_problem(theirs, StatusCode::NOT_FOUND, "resource_missing").await;
            let nothing = app
                .send(method.clone(), &bundle_path(MISSING_BUNDLE), &cred, payload)
                .await;
            let nothing = assert_problem(nothing, StatusCode::NOT_FOUND, "resource_missing").await;
            assert_eq!(theirs, nothing, "{method} with {cred:?}");
        }
        let list = body(app.get(BUNDLES, &cred).await, StatusCode::OK).await;
        assert!(ids(&list).is_empty());
    }
    // Nor can they build a bundle out of A's prices.
    let their_product = product_id(&app, &b.sk_test(), "Theirs").await;
    let their_price = price_id(&app, &b.sk_test(), &their_product, monthly_flat(100)).await;
    let before_attempt = written(&app).await;
    let resp = app
        .post(
            BUNDLES,
            &b.sk_test(),
            &json!({"name": "Borrowed", "discount_bps": 0,
                    "items": [{"price_id": their_price}, {"price_id": x}]}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "items[1].price_id");
    assert!(s(&problem["detail"]).contains("no such price"));
    assert_eq!(written(&app).await, before_attempt);
    assert_eq!(before[2..4], before_attempt[2..4]);
    assert_eq!(
        body(
            app.get(&bundle_path(&id), &a.sk_test()).await,
            StatusCode::OK
        )
        .await,
        bundle
    );
}

#[tokio::test]
async fn an_archived_product_takes_no_new_prices() {
    let app = spawn_app().await;
    let t = app.register("archived-product@acme.com").await;
    let product = product_id(&app, &t.sk_test(), "Old").await;
    body(
        app.send(Method::DELETE, &product_path(&product), &t.sk_test(), None)
            .await,
        StatusCode::OK,
    )
    .await;
    let before = written(&app).await;
    let resp = app
        .post(&prices_path(&product), &t.sk_test(), &monthly_flat(1000))
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "product_archived").await;
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn a_change_that_changes_nothing_records_no_event() {
    let app = spawn_app().await;
    let t = app.register("noop@acme.com").await;
    let product = product_id(&app, &t.sk_test(), "Same").await;
    let price = price_id(&app, &t.sk_test(), &product, monthly_flat(1000)).await;
    for (path, patch) in [
        (product_path(&product), json!({"name": "Same"})),
        (product_path(&product), json!({})),
        (price_path(&price), json!({"active": true})),
    ] {
        let before = written(&app).await;
        body(
            app.send(Method::PATCH, &path, &t.sk_test(), Some(&patch))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(written(&app).await, before, "{path} {patch}");
    }
    // Archiving twice: one event.
    for _ in 0..2 {
        body(
            app.send(Method::DELETE, &product_path(&product), &t.sk_test(), None)
                .await,
            StatusCode::OK,
        )
        .await;
    }
    let archived: Vec<Value> = event_objects(&app, &t, false, "product.updated")
        .await
        .into_iter()
        .filter(|o| o["active"] == false)
        .collect();
    assert_eq!(archived.len(), 1);
}

#[tokio::test]
async fn a_quarterly_price_and_a_three_monthly_price_bundle_together() {
    let app = spawn_app().await;
    let t = app.register("quarters@acme.com").await;
    let a = product_id(&app, &t.sk_test(), "A").await;
    let b = product_id(&app, &t.sk_test(), "B").await;
    let quarterly = price_id(&app, &t.sk_test(), &a, flat(3000, "usd", "quarter", 1)).await;
    let three_monthly = price_id(&app, &t.sk_test(), &b, flat(2000, "usd", "month", 3)).await;
    let bundle = create_bundle(
        &app,
        &t.sk_test(),
        json!({"name": "Both", "discount_bps": 1000,
               "items": [{"price_id": quarterly}, {"price_id": three_monthly}]}),
    )
    .await;
    assert_eq!(bundle["list_amount"], 5000);
    assert_eq!(bundle["amount"], 4500);
}

#[tokio::test]
async fn control_characters_in_metadata_and_filters_are_refused() {
    let app = spawn_app().await;
    let t = app.register("control@acme.com").await;
    let before = written(&app).await;
    let resp = app
        .post(
            PRODUCTS,
            &t.sk_test(),
            &json!({"name": "N", "metadata": {"k": "a\u{0}b"}}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "metadata");
    assert_eq!(written(&app).await, before);
    let resp = app.get("/api/v1/plans?search=%00", &t.sk_test()).await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "search");
    let resp = app.get("/api/v1/events?type=a%00b", &t.sk_test()).await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "type");
}

#[tokio::test]
async fn a_change_that_changes_nothing_writes_nothing_and_records_no_event() {
    let app = spawn_app().await;
    let t = app.register("noop@acme.com").await;
    let sk = t.sk_test();
    let product = create_product(
        &app,
        &sk,
        json!({"name": "Same", "description": "As before", "metadata": {"k": "v"}}),
    )
    .await;
    let id = s(&product["id"]);
    let price = create_price(&app, &sk, &id, monthly_flat(1000)).await;
    let price_id = s(&price["id"]);
    let price = body(
        app.send(
            Method::PATCH,
            &price_path(&price_id),
            &sk,
            Some(&json!({"nickname": "Pro"})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let events_before = app.count("events").await;
    for step in [
        json!({"name": "Same"}),
        json!({"description": "As before", "metadata": {"k": "v"}, "active": true}),
    ] {
        let same = body(
            app.send(Method::PATCH, &product_path(&id), &sk, Some(&step))
                .await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(same["updated_at"], product["updated_at"], "after {step}");
    }
    let same = body(
        app.send(
            Method::PATCH,
            &price_path(&price_id),
            &sk,
            Some(&json!({"nickname": "Pro", "active": true})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(same, price);
    assert_eq!(app.count("events").await, events_before);
    // A real change still counts.
    app.send(
        Method::PATCH,
        &product_path(&id),
        &sk,
        Some(&json!({"name": "Other"})),
    )
    .await;
    assert_eq!(
        event_objects(&app, &t, false, "product.updated")
            .await
            .len(),
        1
    );
}
