//! Usage-based billing: billable metrics, usage events (deduplicated by transaction id,
//! refused in the future or in an invoiced period), the usage summary, and the renewal invoice
//! billing the period's usage of each aggregation.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use shared::{
    clock::Clock,
    ids::SubscriptionId,
    jobs::Job,
    service::{ServiceError, billing_jobs, usage_limits},
    stripe::Stripe,
    tenancy::Scope,
};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app, wait_until},
    subscriptions::{get, invoices_of, json_of, subscribe},
    test_clocks::{advance, clock, customer_on, monthly_plan},
};

const START: &str = "2026-03-01T00:00:00Z";

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(START)
        .unwrap()
        .with_timezone(&Utc)
}

fn at(offset: Duration) -> String {
    (start() + offset).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Creates a billable metric.
pub async fn metric(
    app: &TestApp,
    key: &Cred,
    code: &str,
    aggregation: &str,
    field: Option<&str>,
) -> Value {
    metric_with(app, key, code, aggregation, field, None).await
}

async fn metric_with(
    app: &TestApp,
    key: &Cred,
    code: &str,
    aggregation: &str,
    field: Option<&str>,
    filters: Option<Value>,
) -> Value {
    let mut body = json!({"code": code, "name": code, "aggregation": aggregation});
    if let Some(f) = field {
        body["field_name"] = json!(f);
    }
    if let Some(f) = filters {
        body["filters"] = f;
    }
    json_of(
        app.post("/api/v1/billable-metrics", key, &body).await,
        StatusCode::CREATED,
    )
    .await
}

/// A monthly metered USD price on `metric` with these pricing terms.
async fn metered_price(app: &TestApp, key: &Cred, metric: &str, pricing: Value) -> String {
    let product = json_of(
        app.post(
            "/api/v1/products",
            key,
            &json!({"name": format!("Usage of {metric}")}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let price = json_of(
        app.post(
            &format!("/api/v1/products/{}/prices", s(&product["id"])),
            key,
            &json!({"currency": "usd", "recurring": {"interval": "month"},
                    "pricing": pricing, "usage": {"metric": metric}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    s(&price["id"])
}

async fn event(app: &TestApp, key: &Cred, body: Value) -> reqwest::Response {
    app.post("/api/v1/usage-events", key, &body).await
}

/// Reports one event, which must be recorded.
async fn record(app: &TestApp, key: &Cred, body: Value) -> Value {
    json_of(event(app, key, body).await, StatusCode::CREATED).await
}

/// Records `calls` API calls on `sub` at `offset` from the start, as `txn`.
async fn record_calls(
    app: &TestApp,
    key: &Cred,
    sub: &str,
    txn: &str,
    offset: Duration,
    calls: i64,
) {
    record(
        app,
        key,
        json!({"transaction_id": txn, "code": "api_calls", "subscription": sub,
               "timestamp": at(offset), "properties": {"calls": calls}}),
    )
    .await;
}

async fn batch(app: &TestApp, key: &Cred, events: Vec<Value>) -> reqwest::Response {
    app.post(
        "/api/v1/usage-events/batch",
        key,
        &json!({ "events": events }),
    )
    .await
}

/// Replaces the subscription's item `item` by one at `price`, now.
async fn swap(app: &TestApp, key: &Cred, sub: &str, item: &str, price: &str) {
    json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{sub}"),
            key,
            Some(&json!({"items": [{"id": item, "deleted": true}, {"price": price}]})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
}

/// The renewal invoice's lines of a price by price id: (quantity, amount).
fn lines_by_price(invoice: &Value) -> HashMap<String, (i64, i64)> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["price"].is_string())
        .map(|l| {
            (
                s(&l["price"]),
                (
                    l["quantity"].as_i64().unwrap(),
                    l["amount"].as_i64().unwrap(),
                ),
            )
        })
        .collect()
}

#[tokio::test]
async fn billable_metrics_are_created_read_renamed_archived_and_validated() {
    let app = spawn_app().await;
    let t = app.register("metrics@acme.com").await;
    let key = t.sk_test();
    let m = metric_with(
        &app,
        &key,
        "storage.gb",
        "max",
        Some("gb"),
        Some(json!({"region": ["eu", "us"]})),
    )
    .await;
    assert_eq!(m["object"], "billable_metric");
    assert!(s(&m["id"]).starts_with("bm_"));
    assert_eq!(m["aggregation"], "max");
    assert_eq!(m["field_name"], "gb");
    assert_eq!(m["filters"], json!({"region": ["eu", "us"]}));
    assert_eq!(m["active"], true);
    let id = s(&m["id"]);
    let count = metric(&app, &key, "calls", "count", None).await;
    assert!(count["field_name"].is_null());

    // The code is unique in the mode; the live mode has its own.
    let resp = app
        .post(
            "/api/v1/billable-metrics",
            &key,
            &json!({"code": "calls", "name": "Again", "aggregation": "count"}),
        )
        .await;
    let p = assert_problem(resp, StatusCode::CONFLICT, "metric_code_taken").await;
    assert_eq!(p["field"], "code");
    metric(&app, &t.sk_live(), "calls", "count", None).await;

    for (body, field) in [
        (
            json!({"code": "Calls", "name": "x", "aggregation": "count"}),
            "code",
        ),
        (
            json!({"code": "c1", "name": "x", "aggregation": "sum"}),
            "field_name",
        ),
        (
            json!({"code": "c2", "name": "x", "aggregation": "count", "field_name": "n"}),
            "field_name",
        ),
        (
            json!({"code": "c3", "name": "x", "aggregation": "count", "filters": {"r": []}}),
            "filters",
        ),
        (
            json!({"code": "c4", "name": "", "aggregation": "count"}),
            "name",
        ),
    ] {
        let resp = app.post("/api/v1/billable-metrics", &key, &body).await;
        let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(p["field"], field, "{body}");
    }
    let resp = app
        .post(
            "/api/v1/billable-metrics",
            &key,
            &json!({"code": "c5", "name": "x", "aggregation": "median"}),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;

    let got = get(&app, &key, &format!("/api/v1/billable-metrics/{id}")).await;
    assert_eq!(got, m);
    let list = get(&app, &key, "/api/v1/billable-metrics").await;
    let codes: Vec<String> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| s(&m["code"]))
        .collect();
    assert_eq!(codes, vec!["calls", "storage.gb"]);
    // Another tenant's metric is not found.
    let other = app.register("metrics-other@acme.com").await;
    let resp = app
        .get(&format!("/api/v1/billable-metrics/{id}"), &other.sk_test())
        .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;

    // Renamed and archived; how it counts cannot change.
    let patched = json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/billable-metrics/{id}"),
            &key,
            Some(&json!({"name": "Peak storage", "active": false})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["name"], "Peak storage");
    assert_eq!(patched["active"], false);
    assert_eq!(patched["aggregation"], "max");
    let resp = app
        .send(
            Method::PATCH,
            &format!("/api/v1/billable-metrics/{id}"),
            &key,
            Some(&json!({"aggregation": "sum"})),
        )
        .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "immutable_field").await;
    assert_eq!(p["field"], "aggregation");
    let archived = get(&app, &key, "/api/v1/billable-metrics?active=false").await;
    assert_eq!(archived["data"].as_array().unwrap().len(), 1);
    // An archived metric takes no new metered price.
    let product = json_of(
        app.post("/api/v1/products", &key, &json!({"name": "Storage"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let resp = app
        .post(
            &format!("/api/v1/products/{}/prices", s(&product["id"])),
            &key,
            &json!({"currency": "usd", "recurring": {"interval": "month"},
                    "pricing": {"type": "per_unit", "unit_amount": 1},
                    "usage": {"metric": "storage.gb"}}),
        )
        .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "usage.metric");
}

/// A customer on a clock at [`START`] with a card, subscribed to a metered price on a `sum`
/// metric `api_calls` (3 cents a call): (clock, customer, subscription, price).
async fn metered_subscription(app: &TestApp, key: &Cred) -> (String, String, String, String) {
    let clock = clock(app, key, START).await;
    let customer = customer_on(app, key, &clock, "UTC", Some("4242424242424242"), None).await;
    metric(app, key, "api_calls", "sum", Some("calls")).await;
    let price = metered_price(
        app,
        key,
        "api_calls",
        json!({"type": "per_unit", "unit_amount": 3}),
    )
    .await;
    let sub = subscribe(
        app,
        key,
        json!({"customer": customer, "items": [{"price": price}]}),
    )
    .await;
    assert_eq!(sub["status"], "active", "{sub}");
    (clock, customer, s(&sub["id"]), price)
}

#[tokio::test]
async fn events_count_once_by_transaction_id_and_are_refused_in_the_future_or_an_invoiced_period() {
    let app = spawn_app().await;
    let t = app.register("usage-events@acme.com").await;
    let key = t.sk_test();
    let (clock, customer, sub, price) = metered_subscription(&app, &key).await;
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(10))).await;

    // Recorded at the clock's time; a repeat is a duplicate, whatever it says.
    let first = record(
        &app,
        &key,
        json!({"transaction_id": "t-1", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 5}}),
    )
    .await;
    assert_eq!(first["status"], "recorded");
    assert_eq!(first["subscription"], json!(sub));
    assert_eq!(
        first["timestamp"],
        json!(at(Duration::days(10)).replace('Z', "+00:00"))
    );
    let again = json_of(
        event(
            &app,
            &key,
            json!({"transaction_id": "t-1", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 500}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["status"], "duplicate");
    // By customer: its one live subscription metering the metric; 4 minutes ahead is fine.
    let by_customer = record(
        &app,
        &key,
        json!({"transaction_id": "t-2", "code": "api_calls", "customer": customer,
                   "timestamp": at(Duration::days(10) + Duration::minutes(4)),
                   "properties": {"calls": "7"}}),
    )
    .await;
    assert_eq!(by_customer["subscription"], json!(sub));
    // A time a little ahead counts as now, so that whatever cuts the usage later covers it.
    assert_eq!(
        by_customer["timestamp"],
        json!(at(Duration::days(10)).replace('Z', "+00:00"))
    );

    let rows_before = app.count("usage_events").await;
    for (body, field) in [
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "subscription": sub,
                   "timestamp": at(Duration::days(10) + Duration::minutes(6)),
                   "properties": {"calls": 1}}),
            "timestamp",
        ),
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "subscription": sub,
                   "timestamp": at(-Duration::days(1)), "properties": {"calls": 1}}),
            "timestamp",
        ),
        (
            json!({"transaction_id": "t-3", "code": "nope", "subscription": sub,
                   "properties": {"calls": 1}}),
            "code",
        ),
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": -1}}),
            "properties",
        ),
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 1.5}}),
            "properties",
        ),
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "properties": {"calls": 1}}),
            "subscription",
        ),
        (
            json!({"transaction_id": "", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 1}}),
            "transaction_id",
        ),
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 1, "note": "a\u{0}b"}}),
            "properties",
        ),
        (
            json!({"transaction_id": "t-3", "code": "api_calls", "subscription": sub,
                   "properties": [1]}),
            "properties",
        ),
    ] {
        let p = assert_problem(
            event(&app, &key, body.clone()).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(p["field"], field, "{body}");
    }
    // A batch: duplicates (recorded before, or earlier in the batch) are answered as such.
    let resp = batch(
        &app,
        &key,
        vec![
            json!({"transaction_id": "t-1", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 100}}),
            json!({"transaction_id": "t-4", "code": "api_calls", "subscription": sub,
                   "timestamp": at(Duration::days(3)), "properties": {"calls": 11}}),
            json!({"transaction_id": "t-4", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 100}}),
        ],
    )
    .await;
    let out = json_of(resp, StatusCode::OK).await;
    let statuses: Vec<String> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["status"]))
        .collect();
    assert_eq!(statuses, ["duplicate", "recorded", "duplicate"]);
    assert_eq!(
        (out["recorded"].as_i64(), out["duplicates"].as_i64()),
        (Some(1), Some(2))
    );
    // One bad event refuses the whole batch, naming it; nothing is recorded.
    let resp = batch(
        &app,
        &key,
        vec![
            json!({"transaction_id": "t-5", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 1}}),
            json!({"transaction_id": "t-6", "code": "api_calls", "subscription": sub,
                   "properties": {}}),
        ],
    )
    .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "events[1].properties");
    assert_eq!(app.count("usage_events").await, rows_before + 1);

    // So far: 5 + 7 + 11 calls at 3 cents.
    let summary = get(&app, &key, &format!("/api/v1/subscriptions/{sub}/usage")).await;
    assert_eq!(summary["items"][0]["quantity"], 23, "{summary}");
    assert_eq!(summary["items"][0]["amount"], 69);
    assert_eq!(summary["amount"], 69);
    assert_eq!(summary["items"][0]["price"], json!(price));

    // The renewal on 1 April bills March's usage, in arrears.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(1)),
    )
    .await;
    let invoices = invoices_of(&app, &key, &sub).await;
    assert_eq!(invoices.len(), 2);
    let renewal = &invoices[1];
    assert_eq!(lines_by_price(renewal)[&price], (23, 69), "{renewal}");
    let line = &renewal["lines"][0];
    assert_eq!(line["period_start"], json!(START.replace('Z', "+00:00")));
    assert_eq!(
        line["period_end"],
        json!(at(Duration::days(31)).replace('Z', "+00:00"))
    );
    assert_eq!(renewal["total"], 69);
    assert_eq!(renewal["status"], "paid");

    // March is closed: a late event for it is refused, naming where invoiced usage ends; a
    // repeat of one already counted is still just a duplicate; April's usage is taken.
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "late", "code": "api_calls", "subscription": sub,
                   "timestamp": at(Duration::days(20)), "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "usage_period_closed",
    )
    .await;
    assert!(s(&p["detail"]).contains("2026-04-01T00:00:00"), "{p}");
    assert_eq!(p["field"], "timestamp");
    let dup = json_of(
        event(
            &app,
            &key,
            json!({"transaction_id": "t-4", "code": "api_calls", "subscription": sub,
                   "timestamp": at(Duration::days(3)), "properties": {"calls": 11}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(dup["status"], "duplicate");
    record(
        &app,
        &key,
        json!({"transaction_id": "april", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 2}}),
    )
    .await;
    let summary = get(&app, &key, &format!("/api/v1/subscriptions/{sub}/usage")).await;
    assert_eq!(summary["items"][0]["quantity"], 2, "{summary}");
    assert_eq!(
        summary["items"][0]["period_start"],
        json!(at(Duration::days(31)).replace('Z', "+00:00"))
    );
}

#[tokio::test]
async fn the_renewal_bills_each_aggregation_through_its_price_model() {
    let app = spawn_app().await;
    let t = app.register("aggregations@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    metric_with(
        &app,
        &key,
        "requests",
        "count",
        None,
        Some(json!({"region": ["eu"]})),
    )
    .await;
    metric(&app, &key, "bytes", "sum", Some("n")).await;
    metric(&app, &key, "peak", "max", Some("n")).await;
    metric(&app, &key, "users", "unique_count", Some("user")).await;
    metric(&app, &key, "level", "latest", Some("n")).await;
    metric(&app, &key, "seats", "weighted_sum", Some("delta")).await;
    let p_requests = metered_price(
        &app,
        &key,
        "requests",
        json!({"type": "per_unit", "unit_amount": 2}),
    )
    .await;
    let p_bytes = metered_price(
        &app,
        &key,
        "bytes",
        json!({"type": "graduated", "tiers": [
            {"up_to": 10, "unit_amount": 5},
            {"up_to": null, "unit_amount": 1, "flat_amount": 100}]}),
    )
    .await;
    let p_peak = metered_price(
        &app,
        &key,
        "peak",
        json!({"type": "volume", "tiers": [
            {"up_to": 5, "unit_amount": 10},
            {"up_to": null, "unit_amount": 8}]}),
    )
    .await;
    let p_users = metered_price(
        &app,
        &key,
        "users",
        json!({"type": "package", "amount": 1000, "package_size": 3}),
    )
    .await;
    let p_level = metered_price(
        &app,
        &key,
        "level",
        json!({"type": "per_unit", "unit_amount": 7}),
    )
    .await;
    let p_seats = metered_price(
        &app,
        &key,
        "seats",
        json!({"type": "per_unit", "unit_amount": 100}),
    )
    .await;
    let plan = monthly_plan(&app, &key, "Base", None).await;
    let items: Vec<Value> = [&p_requests, &p_bytes, &p_peak, &p_users, &p_level, &p_seats]
        .iter()
        .map(|p| json!({"price": p}))
        .chain([json!({"plan": plan})])
        .collect();
    let sub = subscribe(&app, &key, json!({"customer": customer, "items": items})).await;
    let sub = s(&sub["id"]);
    // The first invoice bills the plan only: no usage yet.
    let first = &invoices_of(&app, &key, &sub).await[0];
    assert_eq!(first["lines"].as_array().unwrap().len(), 1, "{first}");
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(30))).await;

    let h = Duration::hours;
    let mut n = 0;
    let mut ev = |code: &str, when: Duration, props: Value| {
        n += 1;
        json!({"transaction_id": format!("e{n}"), "code": code, "subscription": sub,
               "timestamp": at(when), "properties": props})
    };
    let events = vec![
        // 3 requests in the EU count; the US one and the one without a region do not.
        ev("requests", h(1), json!({"region": "eu"})),
        ev("requests", h(2), json!({"region": "eu"})),
        ev("requests", h(3), json!({"region": "us"})),
        ev("requests", h(4), json!({})),
        ev("requests", h(5), json!({"region": "eu"})),
        // 4 + 9 + 12 = 25 bytes: 10 × 5 + 15 × 1 + 100 = 165.
        ev("bytes", h(1), json!({"n": 4})),
        ev("bytes", h(2), json!({"n": 9})),
        ev("bytes", h(3), json!({"n": 12})),
        // Max 7: all 7 at the volume tier's 8 = 56.
        ev("peak", h(1), json!({"n": 3})),
        ev("peak", h(2), json!({"n": 7})),
        ev("peak", h(3), json!({"n": 6})),
        // 4 distinct users: 2 packages of 3 = 2000.
        ev("users", h(1), json!({"user": "a"})),
        ev("users", h(2), json!({"user": "b"})),
        ev("users", h(3), json!({"user": "a"})),
        ev("users", h(4), json!({"user": 7})),
        ev("users", h(5), json!({"user": "c"})),
        // The latest by timestamp (sent out of order) is 4: 28.
        ev("level", h(10), json!({"n": 4})),
        ev("level", h(1), json!({"n": 9})),
        // 10 seats from 01:00 on 1 March, 10 more from 12:00 on 16 March, over 744 hours:
        // (10 × 743 + 10 × 372) / 744 = 14.99 seats, billed as 15: 1500.
        ev("seats", h(1), json!({"delta": 10})),
        ev("seats", Duration::days(15) + h(12), json!({"delta": 10})),
    ];
    json_of(batch(&app, &key, events).await, StatusCode::OK).await;
    let expected: HashMap<String, (i64, i64)> = [
        (p_requests.clone(), (3, 6)),
        (p_bytes.clone(), (25, 165)),
        (p_peak.clone(), (7, 56)),
        (p_users.clone(), (4, 2000)),
        (p_level.clone(), (4, 28)),
        (p_seats.clone(), (15, 1500)),
    ]
    .into();
    let summary = get(&app, &key, &format!("/api/v1/subscriptions/{sub}/usage")).await;
    let so_far: HashMap<String, (i64, i64)> = summary["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                s(&i["price"]),
                (
                    i["quantity"].as_i64().unwrap(),
                    i["amount"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(so_far, expected, "{summary}");
    assert_eq!(summary["amount"], 6 + 165 + 56 + 2000 + 28 + 1500);

    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + h(1)),
    )
    .await;
    let renewal = invoices_of(&app, &key, &sub).await[1].clone();
    let mut billed = lines_by_price(&renewal);
    let plan_line = billed
        .iter()
        .find(|(p, _)| !expected.contains_key(*p))
        .map(|(p, v)| (p.clone(), *v))
        .unwrap();
    billed.remove(&plan_line.0);
    assert_eq!(billed, expected, "{renewal}");
    assert_eq!(plan_line.1, (1, 1500));
    assert_eq!(renewal["total"], 1500 + 6 + 165 + 56 + 2000 + 28 + 1500);

    // April: the seats carry over (20 held all month) and nothing else is used yet.
    let summary = get(&app, &key, &format!("/api/v1/subscriptions/{sub}/usage")).await;
    let seats = summary["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["price"] == json!(p_seats))
        .unwrap()
        .clone();
    assert_eq!(seats["quantity"], 20, "{summary}");
    assert_eq!(summary["amount"], 2000);
}

#[tokio::test]
async fn an_event_for_a_customer_with_two_metering_subscriptions_must_name_one() {
    let app = spawn_app().await;
    let t = app.register("usage-two-subs@acme.com").await;
    let key = t.sk_test();
    let (_, customer, sub, price) = metered_subscription(&app, &key).await;
    let other = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"price": price}]}),
    )
    .await;
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "x", "code": "api_calls", "customer": customer,
                   "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(p["field"], "subscription");
    for target in [sub, s(&other["id"])] {
        record(
            &app,
            &key,
            json!({"transaction_id": format!("x-{target}"), "code": "api_calls",
                       "subscription": target, "customer": customer,
                       "properties": {"calls": 1}}),
        )
        .await;
    }
    // Another tenant cannot report usage on this subscription.
    let them = app.register("usage-intruder@acme.com").await;
    let resp = event(
        &app,
        &them.sk_test(),
        json!({"transaction_id": "y", "code": "api_calls", "subscription": s(&other["id"]),
               "properties": {"calls": 1}}),
    )
    .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
}

/// A deterministic stream of numbers (xorshift), so that the events are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// What a graduated price of 2 cents for the first 1,000 units and 1 cent after asks,
/// computed here.
fn graduated(quantity: i64) -> i64 {
    quantity.min(1000) * 2 + (quantity - 1000).max(0)
}

#[tokio::test]
async fn a_hundred_thousand_events_with_duplicates_and_late_ones_bill_what_is_computed_here() {
    let app = spawn_app().await;
    let t = app.register("usage-100k@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    metric_with(
        &app,
        &key,
        "req",
        "count",
        None,
        Some(json!({"region": ["eu", "us"]})),
    )
    .await;
    metric(&app, &key, "bytes", "sum", Some("n")).await;
    metric(&app, &key, "users", "unique_count", Some("user")).await;
    metric(&app, &key, "peak", "max", Some("n")).await;
    let p_req = metered_price(
        &app,
        &key,
        "req",
        json!({"type": "graduated", "tiers": [
            {"up_to": 1000, "unit_amount": 2}, {"up_to": null, "unit_amount": 1}]}),
    )
    .await;
    let p_bytes = metered_price(
        &app,
        &key,
        "bytes",
        json!({"type": "per_unit", "unit_amount": 1}),
    )
    .await;
    let p_users = metered_price(
        &app,
        &key,
        "users",
        json!({"type": "per_unit", "unit_amount": 5}),
    )
    .await;
    let p_peak = metered_price(
        &app,
        &key,
        "peak",
        json!({"type": "per_unit", "unit_amount": 3}),
    )
    .await;
    let items: Vec<Value> = [&p_req, &p_bytes, &p_users, &p_peak]
        .iter()
        .map(|p| json!({"price": p}))
        .collect();
    let sub = s(&subscribe(&app, &key, json!({"customer": customer, "items": items})).await["id"]);
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(30))).await;

    // 100,000 events over March, out of time order, 1% of them repeats of an earlier
    // transaction id (with other values, which must not count).
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let codes = ["req", "bytes", "users", "peak"];
    let regions = ["eu", "us", "ap"];
    let mut sent: Vec<Value> = Vec::with_capacity(100_000);
    let mut firsts: Vec<Value> = Vec::new();
    for i in 0..100_000u64 {
        if i % 100 == 99 {
            let earlier = &firsts[rng.next(firsts.len() as u64) as usize];
            let mut repeat: Value = earlier.clone();
            repeat["properties"] = json!({"n": 999_999, "user": "dup", "region": "eu"});
            sent.push(repeat);
            continue;
        }
        let code = codes[rng.next(4) as usize];
        let when = Duration::seconds(rng.next(30 * 86_400) as i64);
        let props = match code {
            "req" => json!({"region": regions[rng.next(3) as usize]}),
            "users" => json!({"user": format!("u{}", rng.next(5000))}),
            _ => json!({"n": rng.next(1000)}),
        };
        let e = json!({"transaction_id": format!("txn-{i}"), "code": code,
                       "subscription": sub, "timestamp": at(when), "properties": props});
        firsts.push(e.clone());
        sent.push(e);
    }
    let mut recorded = 0;
    let mut duplicates = 0;
    for chunk in sent.chunks(1000) {
        let out = json_of(batch(&app, &key, chunk.to_vec()).await, StatusCode::OK).await;
        recorded += out["recorded"].as_i64().unwrap();
        duplicates += out["duplicates"].as_i64().unwrap();
    }
    assert_eq!((recorded, duplicates), (99_000, 1_000));

    // Computed here from the first report of each transaction id.
    let mut requests = 0i64;
    let mut bytes = 0i64;
    let mut users = HashSet::new();
    let mut peak = 0i64;
    for e in &firsts {
        let p = &e["properties"];
        match s(&e["code"]).as_str() {
            "req" if p["region"] != "ap" => requests += 1,
            "bytes" => bytes += p["n"].as_i64().unwrap(),
            "users" => {
                users.insert(s(&p["user"]));
            }
            "peak" => peak = peak.max(p["n"].as_i64().unwrap()),
            _ => {}
        }
    }
    let expected: HashMap<String, (i64, i64)> = [
        (p_req.clone(), (requests, graduated(requests))),
        (p_bytes.clone(), (bytes, bytes)),
        (
            p_users.clone(),
            (users.len() as i64, users.len() as i64 * 5),
        ),
        (p_peak.clone(), (peak, peak * 3)),
    ]
    .into();

    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(1)),
    )
    .await;
    // Late events for March, after it is invoiced: refused, and not billed anywhere.
    for i in 0..10 {
        let resp = event(
            &app,
            &key,
            json!({"transaction_id": format!("late-{i}"), "code": "bytes", "subscription": sub,
                   "timestamp": at(Duration::days(29)), "properties": {"n": 1000}}),
        )
        .await;
        assert_problem(resp, StatusCode::BAD_REQUEST, "usage_period_closed").await;
    }
    let renewal = invoices_of(&app, &key, &sub).await[1].clone();
    assert_eq!(lines_by_price(&renewal), expected);
    let total: i64 = expected.values().map(|v| v.1).sum();
    assert_eq!(renewal["total"], total);
    assert_eq!(app.count("usage_events").await, 99_000);
}

#[tokio::test]
async fn a_subscription_that_ends_bills_its_usage_up_to_its_end_on_a_final_invoice() {
    let app = spawn_app().await;
    let t = app.register("usage-final@acme.com").await;
    let key = t.sk_test();
    // Canceled now, on 10 March at noon: the usage before noon is billed, none after.
    let (clock, customer, now_sub, price) = metered_subscription(&app, &key).await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(9) + Duration::hours(12)),
    )
    .await;
    record(
        &app,
        &key,
        json!({"transaction_id": "before-noon", "code": "api_calls", "subscription": now_sub,
                   "timestamp": at(Duration::days(9) + Duration::hours(11)),
                   "properties": {"calls": 40}}),
    )
    .await;
    let canceled = json_of(
        app.post(
            &format!("/api/v1/subscriptions/{now_sub}/cancel"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(canceled["status"], "canceled");
    let invoices = invoices_of(&app, &key, &now_sub).await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    let last = &invoices[1];
    assert_eq!(lines_by_price(last)[&price], (40, 120), "{last}");
    assert_eq!(
        last["lines"][0]["period_end"],
        json!(at(Duration::days(9) + Duration::hours(12)).replace('Z', "+00:00"))
    );
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "after", "code": "api_calls", "subscription": now_sub,
                   "timestamp": at(Duration::days(9) + Duration::hours(12)),
                   "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(p["field"], "timestamp");

    // Canceled at the period's end: the renewal bills March's usage on a last invoice and
    // starts no new period.
    let later = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"price": price}]}),
    )
    .await;
    let later = s(&later["id"]);
    json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{later}"),
            &key,
            Some(&json!({"cancel_at_period_end": true})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(30) + Duration::hours(1)),
    )
    .await;
    record(
        &app,
        &key,
        json!({"transaction_id": "late-march", "code": "api_calls", "subscription": later,
                   "timestamp": at(Duration::days(30)), "properties": {"calls": 9}}),
    )
    .await;
    // Its period runs from 10 March at noon to 10 April at noon; 5 minutes past its end is
    // after it ends, even though the clock allows 5 minutes ahead.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(40) + Duration::hours(11) + Duration::minutes(58)),
    )
    .await;
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "too-late", "code": "api_calls", "subscription": later,
                   "timestamp": at(Duration::days(40) + Duration::hours(12)),
                   "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert!(s(&p["detail"]).contains("ends"), "{p}");
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(40) + Duration::hours(13)),
    )
    .await;
    let view = get(&app, &key, &format!("/api/v1/subscriptions/{later}")).await;
    assert_eq!(view["status"], "canceled", "{view}");
    let invoices = invoices_of(&app, &key, &later).await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    assert_eq!(lines_by_price(&invoices[1])[&price], (9, 27));
}

#[tokio::test]
async fn an_item_swapped_mid_period_bills_each_price_for_its_own_part_and_one_item_per_metric() {
    let app = spawn_app().await;
    let t = app.register("usage-swap@acme.com").await;
    let key = t.sk_test();
    let (clock, customer, sub, price) = metered_subscription(&app, &key).await;
    let dearer = metered_price(
        &app,
        &key,
        "api_calls",
        json!({"type": "per_unit", "unit_amount": 10}),
    )
    .await;
    // A second item on the same metric would count every event twice: refused, both when
    // subscribing and when adding it.
    let resp = app
        .post(
            "/api/v1/subscriptions",
            &key,
            &json!({"customer": customer, "items": [{"price": price}, {"price": dearer}]}),
        )
        .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "items");
    let view = get(&app, &key, &format!("/api/v1/subscriptions/{sub}")).await;
    let item = s(&view["items"][0]["id"]);
    let resp = app
        .send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{sub}"),
            &key,
            Some(&json!({"items": [{"price": dearer}]})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    // A metered item's quantity stays 1.
    let resp = app
        .send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{sub}"),
            &key,
            Some(&json!({"items": [{"id": item, "quantity": 3}]})),
        )
        .await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    // A value beyond 10^12 is refused.
    let resp = event(
        &app,
        &key,
        json!({"transaction_id": "huge", "code": "api_calls", "subscription": sub,
               "properties": {"calls": 1_000_000_000_001i64}}),
    )
    .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "properties");

    // 5 calls on the cheap price, then on 11 March the price is swapped, then 7 calls.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(10))).await;
    record_calls(&app, &key, &sub, "cheap", Duration::days(2), 5).await;
    swap(&app, &key, &sub, &item, &dearer).await;
    // A late event from before the swap counts for the item removed (at its price).
    record_calls(&app, &key, &sub, "backdated", Duration::days(5), 1).await;
    record(
        &app,
        &key,
        json!({"transaction_id": "dear", "code": "api_calls", "subscription": sub,
                   "properties": {"calls": 7}}),
    )
    .await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(1)),
    )
    .await;
    let renewal = invoices_of(&app, &key, &sub).await[1].clone();
    let billed = lines_by_price(&renewal);
    assert_eq!(billed[&price], (6, 18), "{renewal}");
    assert_eq!(billed[&dearer], (7, 70), "{renewal}");
    assert_eq!(renewal["total"], 88);
    // An item added later meters from when it was added: usage stamped before is refused.
    let storage = metric(&app, &key, "storage", "max", Some("gb")).await;
    let storage_price = metered_price(
        &app,
        &key,
        &s(&storage["code"]),
        json!({"type": "per_unit", "unit_amount": 1}),
    )
    .await;
    json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{sub}"),
            &key,
            Some(&json!({"items": [{"price": storage_price}]})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "before-item", "code": "storage", "subscription": sub,
                   "timestamp": at(Duration::days(31) + Duration::minutes(30)),
                   "properties": {"gb": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert!(s(&p["detail"]).contains("no item"), "{p}");
}

#[tokio::test]
async fn seats_swapped_to_another_price_mid_period_bill_each_price_its_share_of_the_period() {
    let app = spawn_app().await;
    let t = app.register("usage-seats-swap@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    metric(&app, &key, "seats", "weighted_sum", Some("n")).await;
    let price = metered_price(
        &app,
        &key,
        "seats",
        json!({"type": "per_unit", "unit_amount": 100}),
    )
    .await;
    let dearer = metered_price(
        &app,
        &key,
        "seats",
        json!({"type": "per_unit", "unit_amount": 120}),
    )
    .await;
    let sub = s(&subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"price": price}]}),
    )
    .await["id"]);
    record(
        &app,
        &key,
        json!({"transaction_id": "seats", "code": "seats", "subscription": sub,
               "timestamp": START, "properties": {"n": 10}}),
    )
    .await;
    // 10 seats all March (31 days), on the dearer price from the 11th: 10 seats' worth in
    // all, shared out 4 (3.2 rounded up) and 6, not 10 on both, nor 4 and 7.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(10))).await;
    let view = get(&app, &key, &format!("/api/v1/subscriptions/{sub}")).await;
    let item = s(&view["items"][0]["id"]);
    swap(&app, &key, &sub, &item, &dearer).await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(1)),
    )
    .await;
    let renewal = invoices_of(&app, &key, &sub).await[1].clone();
    let billed = lines_by_price(&renewal);
    assert_eq!(billed[&price], (4, 400), "{renewal}");
    assert_eq!(billed[&dearer], (6, 720), "{renewal}");
    assert_eq!(renewal["total"], 1120);
}

#[tokio::test]
async fn an_incomplete_subscription_takes_no_usage() {
    let app = spawn_app().await;
    let t = app.register("usage-incomplete@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    // No card: the first invoice (the plan's fee) is unpaid and the subscription incomplete.
    let customer = customer_on(&app, &key, &clock, "UTC", None, None).await;
    metric(&app, &key, "api_calls", "sum", Some("calls")).await;
    let price = metered_price(
        &app,
        &key,
        "api_calls",
        json!({"type": "per_unit", "unit_amount": 3}),
    )
    .await;
    let plan = monthly_plan(&app, &key, "Base", None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}, {"price": price}]}),
    )
    .await;
    assert_eq!(sub["status"], "incomplete", "{sub}");
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "early", "code": "api_calls", "subscription": sub["id"],
                   "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert!(s(&p["detail"]).contains("incomplete"), "{p}");
    assert_eq!(app.count("usage_events").await, 0);
}

/// The `customer.subscription.usage_limit_reached` events of the tenant's test mode, oldest
/// first.
async fn limits_reached(app: &TestApp, key: &Cred) -> Vec<Value> {
    let list = get(
        app,
        key,
        "/api/v1/events?type=customer.subscription.usage_limit_reached&limit=100",
    )
    .await;
    let mut data = list["data"].as_array().unwrap().clone();
    data.reverse();
    data.into_iter()
        .map(|e| e["data"]["object"].clone())
        .collect()
}

/// Moves the app's clock past the windows of the usage limit checks queued so far and runs
/// them as a worker does; how many ran.
async fn run_limit_checks(app: &TestApp, scope: Scope) -> usize {
    app.clock.advance(std::time::Duration::from_secs(6 * 60));
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let due: Vec<(uuid::Uuid, String, Value)> = sqlx::query_as(
        "SELECT id, kind, payload FROM jobs WHERE state = 'pending' AND queue = 'analytics' \
         AND kind = 'subscription.check_usage_limits' AND run_at <= $1 ORDER BY run_at, id",
    )
    .bind(app.clock.now())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for (id, kind, payload) in &due {
        let job = Job::parse(kind, payload).unwrap();
        billing_jobs::run(&app.pool, app.clock.as_ref(), &stripe, scope, &job)
            .await
            .unwrap();
        sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
            .bind(id)
            .execute(&app.pool)
            .await
            .unwrap();
    }
    due.len()
}

#[tokio::test]
async fn a_plans_usage_limit_reached_in_a_period_is_told_once_per_period() {
    let app = spawn_app().await;
    let t = app.register("usage-limits@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, START).await;
    let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    metric(&app, &key, "api_calls", "sum", Some("calls")).await;
    metric(&app, &key, "seats", "max", Some("n")).await;
    let plan_body = |limits: Value| {
        json!({"name": "Pro", "price_cents": 1500, "billing_interval": "month",
               "usage_limits": limits})
    };

    // Limits name metrics of the mode, once each, each at least 1.
    for (limits, why) in [
        (
            json!([{"metric": "nope", "limit": 5}]),
            "no billable metric",
        ),
        (
            json!([{"metric": "api_calls", "limit": 5}, {"metric": "api_calls", "limit": 6}]),
            "twice",
        ),
    ] {
        let resp = app.post("/api/v1/plans", &key, &plan_body(limits)).await;
        let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(p["field"], "usage_limits", "{p}");
        assert!(p["detail"].as_str().unwrap().contains(why), "{p}");
    }
    for bad in [0_i64, -1, 1_000_000_000_000_001] {
        let resp = app
            .post(
                "/api/v1/plans",
                &key,
                &plan_body(json!([{"metric": "api_calls", "limit": bad}])),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let plan = json_of(
        app.post(
            "/api/v1/plans",
            &key,
            &plan_body(json!([{"metric": "api_calls", "limit": 100}])),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        plan["usage_limits"],
        json!([{"metric": "api_calls", "limit": 100}])
    );
    // A copy keeps them.
    let copy = json_of(
        app.post(
            &format!("/api/v1/plans/{}/duplicate", s(&plan["id"])),
            &key,
            &json!({"name": "Pro copy"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(copy["usage_limits"], plan["usage_limits"]);

    // The calls are metered by a price of the plan's own product (which does not subscribe
    // to the plan by itself), the seats by a product of their own.
    let plan_product = s(&plan["id"]).replace("plan_", "prod_");
    let calls = s(&json_of(
        app.post(
            &format!("/api/v1/products/{plan_product}/prices"),
            &key,
            &json!({"currency": "usd", "recurring": {"interval": "month"},
                    "pricing": {"type": "per_unit", "unit_amount": 1},
                    "usage": {"metric": "api_calls"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]);
    let seats = metered_price(
        &app,
        &key,
        "seats",
        json!({"type": "per_unit", "unit_amount": 1}),
    )
    .await;
    let sub = s(&subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [
            {"price": s(&plan["price_id"])}, {"price": calls}, {"price": seats}]}),
    )
    .await["id"]);
    // Another subscriber of the same metric, on a plan without limits, is held to nothing.
    let basic = json_of(
        app.post(
            "/api/v1/plans",
            &key,
            &json!({"name": "Basic", "price_cents": 500,
                   "billing_interval": "month"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(basic["usage_limits"], json!([]));
    let other = s(&subscribe(
        &app,
        &key,
        json!({"customer": customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None)
                   .await,
               "items": [{"price": s(&basic["price_id"])}, {"price": calls}]}),
    )
    .await["id"]);
    let calls_event = |id: String, sub: &str, n: i64| {
        json!({"transaction_id": id, "code": "api_calls", "subscription": sub,
               "properties": {"calls": n}})
    };
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(3))).await;
    record(&app, &key, calls_event("c-1".into(), &sub, 60)).await;
    record(&app, &key, calls_event("o-1".into(), &other, 500)).await;
    // 60 + 50 reaches 100: told once, with the period's quantity then.
    let resp = batch(
        &app,
        &key,
        vec![
            calls_event("c-2".into(), &sub, 30),
            calls_event("c-3".into(), &sub, 20),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    wait_until("the limit to be reached", || async {
        !limits_reached(&app, &key).await.is_empty()
    })
    .await;
    let reached = limits_reached(&app, &key).await;
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert_eq!(reached[0]["subscription"], json!(sub));
    assert_eq!(reached[0]["customer"], json!(customer));
    assert_eq!(reached[0]["metric"], "api_calls");
    assert_eq!(reached[0]["limit"], 100);
    assert_eq!(reached[0]["quantity"], 110);
    assert_eq!(
        reached[0]["period_start"],
        json!(START.replace('Z', "+00:00"))
    );
    // More usage, and checks run again, tell nothing new in the period.
    record(&app, &key, calls_event("c-4".into(), &sub, 5)).await;
    let scope = crate::subscriptions::scope(&app, &t.sk_test).await;
    let id = SubscriptionId::parse(&sub).unwrap();
    assert_eq!(
        usage_limits::check(&app.pool, app.clock.as_ref(), scope, id)
            .await
            .unwrap(),
        0
    );
    // The queued check runs too (a few minutes later), and tells nothing new either.
    assert!(run_limit_checks(&app, scope).await >= 1);
    assert_eq!(limits_reached(&app, &key).await.len(), 1);

    // The next period starts afresh: its usage reaches the limit again, told again.
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(33))).await;
    let april = at(Duration::days(31)).replace('Z', "+00:00");
    record(
        &app,
        &key,
        json!({"transaction_id": "s-1", "code": "seats", "subscription": sub,
               "properties": {"n": 7}}),
    )
    .await;
    record(&app, &key, calls_event("c-5".into(), &sub, 100)).await;
    wait_until("the limit to be reached in April", || async {
        limits_reached(&app, &key).await.len() == 2
    })
    .await;
    // A limit added afterwards (on seats, used beyond it already) is seen by the check the
    // last usage queued, which runs a little later: the request's own check ran before it.
    let set_limits = |limits: Value| {
        let app = &app;
        let key = &key;
        let plan = s(&plan["id"]);
        async move {
            json_of(
                app.req(Method::PATCH, &format!("/api/v1/plans/{plan}"), key)
                    .json(&json!({ "usage_limits": limits }))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::OK,
            )
            .await
        }
    };
    let patched =
        set_limits(json!([{"metric": "api_calls", "limit": 100}, {"metric": "seats", "limit": 5}]))
            .await;
    assert_eq!(
        patched["usage_limits"][1],
        json!({"metric": "seats", "limit": 5})
    );
    assert_eq!(limits_reached(&app, &key).await.len(), 2);
    assert!(run_limit_checks(&app, scope).await >= 1);
    let reached = limits_reached(&app, &key).await;
    assert_eq!(reached.len(), 3, "{reached:?}");
    assert_eq!(reached[1]["metric"], "api_calls");
    assert_eq!(reached[1]["period_start"], json!(april));
    assert_eq!(reached[1]["quantity"], 100);
    assert_eq!(reached[2]["metric"], "seats");
    assert_eq!(reached[2]["quantity"], 7);
    assert_eq!(reached[2]["limit"], 5);
    assert_eq!(reached[2]["period_start"], json!(april));
    // The other subscriber never reached anything.
    assert!(reached.iter().all(|r| r["subscription"] == json!(sub)));

    // A limit raised in the period (an upgrade) is open again, and told again when reached;
    // two checks at once tell of it once.
    set_limits(json!([{"metric": "api_calls", "limit": 150}, {"metric": "seats", "limit": 6}]))
        .await;
    let (a, b) = tokio::join!(
        usage_limits::check(&app.pool, app.clock.as_ref(), scope, id),
        usage_limits::check(&app.pool, app.clock.as_ref(), scope, id)
    );
    assert_eq!(a.unwrap() + b.unwrap(), 1, "seats at 7 reach 6, told once");
    record(&app, &key, calls_event("c-6".into(), &sub, 60)).await;
    wait_until("the raised limit to be reached", || async {
        limits_reached(&app, &key).await.len() == 5
    })
    .await;
    let reached = limits_reached(&app, &key).await;
    assert_eq!(reached[3]["metric"], "seats");
    assert_eq!(reached[3]["limit"], 6);
    assert_eq!(reached[4]["metric"], "api_calls");
    assert_eq!(reached[4]["limit"], 150);
    assert_eq!(reached[4]["quantity"], 160);
    assert!(run_limit_checks(&app, scope).await >= 1);
    assert_eq!(limits_reached(&app, &key).await.len(), 5);
    // A change of the plan's limits checks its subscribers without waiting for their usage:
    // seats raised to 7, which their 7 reach (no usage recorded since).
    set_limits(json!([{"metric": "api_calls", "limit": 150}, {"metric": "seats", "limit": 7}]))
        .await;
    assert_eq!(limits_reached(&app, &key).await.len(), 5);
    assert!(run_limit_checks(&app, scope).await >= 1);
    let reached = limits_reached(&app, &key).await;
    assert_eq!(reached.len(), 6, "{reached:?}");
    assert_eq!(reached[5]["metric"], "seats");
    assert_eq!(reached[5]["limit"], 7);
    assert_eq!(reached[5]["subscription"], json!(sub));
    // Removing the limits holds the plan to none.
    let cleared = set_limits(json!([])).await;
    assert_eq!(cleared["usage_limits"], json!([]));
}

/// Sets the grace period of the tenant's renewal invoices that bill usage.
async fn grace_period(app: &TestApp, key: &Cred, hours: u64) -> Value {
    json_of(
        app.send(
            Method::PUT,
            "/api/v1/settings/invoicing",
            key,
            Some(&json!({ "grace_period_hours": hours })),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

/// How many events of `kind` tell of `invoice`.
async fn events_about(app: &TestApp, key: &Cred, kind: &str, invoice: &Value) -> usize {
    get(app, key, &format!("/api/v1/events?type={kind}&limit=100")).await["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["object"]["id"] == invoice["id"])
        .count()
}

#[tokio::test]
async fn a_renewal_stays_a_draft_for_the_grace_period_and_bills_the_usage_recorded_meanwhile() {
    let app = spawn_app().await;
    let t = app.register("usage-grace@acme.com").await;
    let key = t.sk_test();
    let defaults = get(&app, &key, "/api/v1/settings/invoicing").await;
    assert_eq!(defaults["grace_period_hours"], 0, "{defaults}");
    assert_eq!(defaults["updated_at"], Value::Null);
    let p = assert_problem(
        app.send(
            Method::PUT,
            "/api/v1/settings/invoicing",
            &key,
            Some(&json!({ "grace_period_hours": 169 })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(p["field"], "grace_period_hours");
    let set = grace_period(&app, &key, 2).await;
    assert_eq!(set["grace_period_hours"], 2);
    assert_eq!(
        get(&app, &key, "/api/v1/settings/invoicing").await["grace_period_hours"],
        2
    );

    let (clock, customer, sub, price) = metered_subscription(&app, &key).await;
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(11))).await;
    // A one-off item waiting for the customer's next invoice goes on the renewal.
    json_of(
        app.post(
            "/api/v1/invoice-items",
            &key,
            &json!({"customer": customer, "amount": 250, "currency": "usd",
                    "description": "Setup"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    record_calls(&app, &key, &sub, "march-1", Duration::days(10), 5).await;
    // An hour into April: March's invoice is a draft of the usage so far, not charged.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(1)),
    )
    .await;
    let invoices = invoices_of(&app, &key, &sub).await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    let draft = &invoices[1];
    assert_eq!(draft["status"], "draft", "{draft}");
    assert_eq!(draft["number"], Value::Null);
    assert_eq!(lines_by_price(draft)[&price], (5, 15), "{draft}");
    assert_eq!(draft["total"], 15 + 250);
    assert_eq!(events_about(&app, &key, "invoice.created", draft).await, 1);
    assert_eq!(
        events_about(&app, &key, "invoice.finalized", draft).await,
        0
    );
    // March's usage is still taken, and counts on it; April's counts for April.
    let late = record(
        &app,
        &key,
        json!({"transaction_id": "march-late", "code": "api_calls", "subscription": sub,
               "timestamp": at(Duration::days(30) + Duration::hours(23)),
               "properties": {"calls": 7}}),
    )
    .await;
    assert_eq!(late["status"], "recorded");
    record(
        &app,
        &key,
        json!({"transaction_id": "april-1", "code": "api_calls", "subscription": sub,
               "timestamp": at(Duration::days(31) + Duration::minutes(30)),
               "properties": {"calls": 100}}),
    )
    .await;
    let summary = get(&app, &key, &format!("/api/v1/subscriptions/{sub}/usage")).await;
    assert_eq!(summary["items"][0]["quantity"], 100, "{summary}");
    // Its job, run before its time (another host's clock), finalizes nothing.
    let (kind, payload): (String, Value) =
        sqlx::query_as("SELECT kind, payload FROM jobs WHERE kind = 'invoice.finalize'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let job = Job::parse(&kind, &payload).unwrap();
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let early = billing_jobs::run(
        &app.pool,
        app.clock.as_ref(),
        &stripe,
        crate::subscriptions::scope(&app, &t.sk_test).await,
        &job,
    )
    .await;
    assert!(
        matches!(
            &early,
            Err(ServiceError::Conflict {
                code: "not_due",
                ..
            })
        ),
        "{early:?}"
    );
    // Its lines are its subscription's: not deleted, nothing added by hand.
    let id = s(&draft["id"]);
    assert_problem(
        app.send(
            Method::DELETE,
            &format!("/api/v1/invoices/{id}"),
            &key,
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "invoice_not_editable",
    )
    .await;
    assert_problem(
        app.post(
            "/api/v1/invoice-items",
            &key,
            &json!({"customer": draft["customer"], "amount": 100, "currency": "usd",
                    "description": "Setup", "invoice": id}),
        )
        .await,
        StatusCode::CONFLICT,
        "invoice_not_editable",
    )
    .await;
    assert_eq!(
        get(&app, &key, &format!("/api/v1/invoices/{id}")).await["status"],
        "draft"
    );

    // At the end of the grace period it is finalized with all of March's usage, and charged.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(2)),
    )
    .await;
    let invoice = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(invoice["status"], "paid", "{invoice}");
    assert!(invoice["number"].is_string(), "{invoice}");
    assert_eq!(lines_by_price(&invoice)[&price], (12, 36), "{invoice}");
    assert_eq!(invoice["lines"][1]["amount"], 250, "{invoice}");
    assert_eq!(invoice["total"], 36 + 250);
    assert_eq!(invoice["amount_paid"], 36 + 250);
    assert_eq!(
        events_about(&app, &key, "invoice.finalized", &invoice).await,
        1
    );
    let p = assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "march-too-late", "code": "api_calls",
                   "subscription": sub, "timestamp": at(Duration::days(30)),
                   "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "usage_period_closed",
    )
    .await;
    assert_eq!(p["field"], "timestamp");

    // Finalized by hand before its grace period ends: April's usage so far, once; the job at
    // the end of the grace period then finds nothing to do.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(61) + Duration::minutes(30)),
    )
    .await;
    let invoices = invoices_of(&app, &key, &sub).await;
    assert_eq!(invoices.len(), 3, "{invoices:?}");
    let april = s(&invoices[2]["id"]);
    assert_eq!(invoices[2]["status"], "draft");
    let finalized = json_of(
        app.post(
            &format!("/api/v1/invoices/{april}/finalize"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        lines_by_price(&finalized)[&price],
        (100, 300),
        "{finalized}"
    );
    assert_problem(
        event(
            &app,
            &key,
            json!({"transaction_id": "april-late", "code": "api_calls", "subscription": sub,
                   "timestamp": at(Duration::days(60)), "properties": {"calls": 1}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "usage_period_closed",
    )
    .await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(61) + Duration::hours(3)),
    )
    .await;
    let april = get(&app, &key, &format!("/api/v1/invoices/{april}")).await;
    assert_eq!(april["status"], "paid", "{april}");
    assert_eq!(april["total"], 300);
    assert_eq!(
        events_about(&app, &key, "invoice.finalized", &april).await,
        1
    );
}

#[tokio::test]
async fn a_subscription_canceled_while_its_renewal_is_a_draft_bills_each_usage_once() {
    let app = spawn_app().await;
    let t = app.register("usage-grace-cancel@acme.com").await;
    let key = t.sk_test();
    grace_period(&app, &key, 24).await;
    // A plan billed in advance, usage in arrears, 10% off both.
    let clock = clock(&app, &key, START).await;
    let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    metric(&app, &key, "api_calls", "sum", Some("calls")).await;
    let price = metered_price(
        &app,
        &key,
        "api_calls",
        json!({"type": "per_unit", "unit_amount": 3}),
    )
    .await;
    let plan = monthly_plan(&app, &key, "Base", None).await;
    let coupon = json_of(
        app.post(
            "/api/v1/coupons",
            &key,
            &json!({"percent_off_bps": 1000, "duration": "forever"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}, {"price": price}],
               "coupon": coupon["id"]}),
    )
    .await;
    let sub = s(&sub["id"]);
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(4))).await;
    record_calls(&app, &key, &sub, "march", Duration::days(3), 10).await;
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(31) + Duration::hours(5)),
    )
    .await;
    for (txn, when, calls) in [
        ("march-late", Duration::days(30), 1),
        ("april", Duration::days(31) + Duration::hours(4), 20),
    ] {
        record_calls(&app, &key, &sub, txn, when, calls).await;
    }
    let draft = &invoices_of(&app, &key, &sub).await[1];
    assert_eq!(draft["status"], "draft", "{draft}");
    assert_eq!(draft["total"], 1530 - 153, "{draft}");
    // The upcoming invoice (May's plan and April's usage so far, 10% off: 1,404) gets only the
    // credit the draft will leave.
    json_of(
        app.post(
            &format!("/api/v1/customers/{customer}/balance-transactions"),
            &key,
            &json!({"amount": 2000}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let upcoming = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{sub}/upcoming-invoice"),
    )
    .await;
    assert_eq!(upcoming["total"], 1404, "{upcoming}");
    assert_eq!(upcoming["balance_applied"], 2000 - 1377, "{upcoming}");
    assert_eq!(upcoming["amount_due"], 1404 - (2000 - 1377), "{upcoming}");
    json_of(
        app.post(
            &format!("/api/v1/subscriptions/{sub}/cancel"),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    // March's draft is finalized with March's usage (April's plan kept, the discount over
    // both: 10% of 1,500 + 33); the final invoice bills April's usage.
    let invoices = invoices_of(&app, &key, &sub).await;
    assert_eq!(invoices.len(), 3, "{invoices:?}");
    assert_ne!(invoices[1]["status"], "draft", "{}", invoices[1]);
    assert_eq!(
        lines_by_price(&invoices[1])[&price],
        (11, 33),
        "{}",
        invoices[1]
    );
    assert_eq!(invoices[1]["lines"].as_array().unwrap().len(), 2);
    assert_eq!(invoices[1]["subtotal"], 1533, "{}", invoices[1]);
    assert_eq!(invoices[1]["discount"], 153);
    assert_eq!(invoices[1]["total"], 1380);
    assert_eq!(
        lines_by_price(&invoices[2])[&price],
        (20, 60),
        "{}",
        invoices[2]
    );
    // The finalizing job, when its time comes, changes nothing.
    advance(
        &app,
        &key,
        &t.sk_test,
        &clock,
        &at(Duration::days(32) + Duration::hours(6)),
    )
    .await;
    let after = invoices_of(&app, &key, &sub).await;
    assert_eq!(after.len(), 3);
    assert_eq!(after[1]["total"], 1380);
    assert_eq!(after[1]["status"], "paid", "{}", after[1]);
    assert_eq!(
        events_about(&app, &key, "invoice.finalized", &after[1]).await,
        1
    );
}

#[tokio::test]
async fn a_change_of_items_while_the_renewal_is_a_draft_finalizes_it_first() {
    let app = spawn_app().await;
    let t = app.register("usage-grace-change@acme.com").await;
    let key = t.sk_test();
    grace_period(&app, &key, 6).await;
    let (clock, _, sub, price) = metered_subscription(&app, &key).await;
    advance(&app, &key, &t.sk_test, &clock, &at(Duration::days(31))).await;
    record_calls(&app, &key, &sub, "late", Duration::days(30), 4).await;
    let invoices = invoices_of(&app, &key, &sub).await;
    assert_eq!(invoices[1]["status"], "draft", "{}", invoices[1]);
    let plan = monthly_plan(&app, &key, "Base", None).await;
    json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{sub}"),
            &key,
            Some(&json!({"items": [{"plan": plan}], "proration_behavior": "none"})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let invoices = invoices_of(&app, &key, &sub).await;
    assert_eq!(invoices.len(), 2, "{invoices:?}");
    assert_ne!(invoices[1]["status"], "draft", "{}", invoices[1]);
    assert_eq!(
        lines_by_price(&invoices[1])[&price],
        (4, 12),
        "{}",
        invoices[1]
    );
}
