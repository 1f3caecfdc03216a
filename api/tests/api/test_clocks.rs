//! Test clocks: months of billing in a few requests, through the same renewals and charges as
//! real time, at the clock's time. Anchors on the 29th to the 31st, leap years and timezones
//! without a local midnight on some days: no period skipped, none billed twice.

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use reqwest::{Method, StatusCode};
use serde_json::json;
use shared::{
    clock::Clock, domain::customer::Timezone, ids::TestClockId, service::test_clocks,
    stripe::Stripe,
};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    subscriptions::{get, invoices_of, json_of, run_due, scope, subscribe, time},
};

pub async fn clock(app: &TestApp, key: &Cred, at: &str) -> String {
    let c = json_of(
        app.post(
            "/api/v1/test-clocks",
            key,
            &json!({"frozen_time": at, "name": "Simulation"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(c["status"], "ready");
    assert_eq!(c["frozen_time"], json!(at.replace('Z', "+00:00")));
    s(&c["id"])
}

/// Starts moving the clock to `to`: accepted, advancing.
async fn start_advance(app: &TestApp, key: &Cred, clock: &str, to: &str) {
    let started = json_of(
        app.post(
            &format!("/api/v1/test-clocks/{clock}/advance"),
            key,
            &json!({"frozen_time": to}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(started["status"], "advancing");
}

/// Moves the clock and runs the advance as the worker fleet does; the clock is ready after.
pub async fn advance(app: &TestApp, key: &Cred, t: &str, clock: &str, to: &str) {
    start_advance(app, key, clock, to).await;
    let scope = scope(app, t).await;
    assert!(
        run_due(app, scope)
            .await
            .contains(&"test_clock.advance".to_owned())
    );
    let c = get(app, key, &format!("/api/v1/test-clocks/{clock}")).await;
    assert_eq!(c["status"], "ready", "{c}");
    assert_eq!(time(&c["frozen_time"]), parse(to));
}

fn parse(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)
}

pub async fn customer_on(
    app: &TestApp,
    key: &Cred,
    clock: &str,
    timezone: &str,
    card: Option<&str>,
    prefix: Option<&str>,
) -> String {
    let mut body = json!({"name": "Initech", "test_clock": clock, "timezone": timezone});
    if let Some(p) = prefix {
        body["invoice_prefix"] = json!(p);
    }
    let c = json_of(
        app.post("/api/v1/customers", key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(c["test_clock"], json!(clock));
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

pub async fn monthly_plan(
    app: &TestApp,
    key: &Cred,
    name: &str,
    trial_days: Option<u32>,
) -> String {
    let mut body = json!({"name": name, "price_cents": 1500, "billing_interval": "month"});
    if let Some(d) = trial_days {
        body["trial_days"] = json!(d);
    }
    let plan = json_of(
        app.post("/api/v1/plans", key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    s(&plan["id"])
}

/// A customer on a new clock at `at` (UTC) paying with `card`, subscribed to a monthly "Seat"
/// plan: (clock, customer, the subscription as created).
pub async fn seat_on_clock(
    app: &TestApp,
    key: &Cred,
    at: &str,
    card: &str,
) -> (String, String, serde_json::Value) {
    let clock = clock(app, key, at).await;
    let customer = customer_on(app, key, &clock, "UTC", Some(card), None).await;
    let plan = monthly_plan(app, key, "Seat", None).await;
    let sub = subscribe(
        app,
        key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    (clock, customer, sub)
}

/// The days of a month, computed here from the calendar (not from the code under test).
fn days_in_month(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .unwrap()
        .pred_opt()
        .unwrap()
        .day()
}

/// (year, month) `k` months after (year, month).
fn plus_months(year: i32, month: u32, k: u32) -> (i32, u32) {
    let m0 = month - 1 + k;
    (year + (m0 / 12) as i32, m0 % 12 + 1)
}

#[tokio::test]
async fn a_year_on_a_clock_bills_twelve_consecutive_periods_and_a_trial_starts_charging_at_its_end()
{
    let app = spawn_app().await;
    let t = app.register("clock-year@acme.com").await;
    let key = t.sk_test();
    let clock = clock(&app, &key, "2026-01-31T10:00:00Z").await;
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    let trial_plan = monthly_plan(&app, &key, "Trial seat", Some(14)).await;
    let monthly = customer_on(
        &app,
        &key,
        &clock,
        "UTC",
        Some("4242424242424242"),
        Some("YEAR"),
    )
    .await;
    let trialing = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": monthly, "items": [{"plan": plan}]}),
    )
    .await;
    // Created at the clock's time; its first charge waits for the clock.
    assert_eq!(time(&sub["created_at"]), parse("2026-01-31T10:00:00Z"));
    assert_eq!(sub["status"], "incomplete");
    assert_eq!(sub["test_clock"], json!(clock));
    let trial = subscribe(
        &app,
        &key,
        json!({"customer": trialing, "items": [{"plan": trial_plan}]}),
    )
    .await;
    assert_eq!(trial["status"], "trialing");
    assert_eq!(time(&trial["trial_end"]), parse("2026-02-14T10:00:00Z"));
    // Real time runs nothing of the clock's.
    let scope = scope(&app, &t.sk_test).await;
    assert!(run_due(&app, scope).await.is_empty());

    // Half a year; then the customer moves to another timezone mid-period; then the rest.
    advance(&app, &key, &t.sk_test, &clock, "2026-07-15T00:00:00Z").await;
    let moved = json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/customers/{monthly}"),
            &key,
            Some(&json!({"timezone": "Pacific/Kiritimati"})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(moved["timezone"], "Pacific/Kiritimati");
    advance(&app, &key, &t.sk_test, &clock, "2027-01-15T00:00:00Z").await;

    let all = invoices_of(&app, &key, &s(&sub["id"])).await;
    assert_eq!(all.len(), 12, "{all:?}");
    for (k, inv) in all.iter().enumerate() {
        assert_eq!(inv["status"], "paid", "{inv}");
        assert_eq!(s(&inv["number"]), format!("YEAR-{:06}", k + 1));
        let (y, m) = plus_months(2026, 1, k as u32);
        let expected = NaiveDate::from_ymd_opt(y, m, 31.min(days_in_month(y, m)))
            .unwrap()
            .and_hms_opt(10, 0, 0)
            .unwrap()
            .and_utc();
        assert_eq!(time(&inv["period_start"]), expected, "period {k}");
        assert_eq!(
            time(&inv["paid_at"]),
            expected,
            "charged when the period began"
        );
        if k > 0 {
            assert_eq!(inv["period_start"], all[k - 1]["period_end"]);
        }
    }
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(sub["status"], "active");
    assert_eq!(
        time(&sub["current_period_start"]),
        parse("2026-12-31T10:00:00Z")
    );

    // The trial: no invoice until it ended, then one per month from its end.
    let trial = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&trial["id"])),
    )
    .await;
    assert_eq!(trial["status"], "active");
    let invoices = invoices_of(&app, &key, &s(&trial["id"])).await;
    assert_eq!(invoices.len(), 12, "14 Feb 2026 to 14 Jan 2027");
    assert_eq!(
        time(&invoices[0]["period_start"]),
        parse("2026-02-14T10:00:00Z")
    );
    assert_eq!(time(&invoices[0]["paid_at"]), parse("2026-02-14T10:00:00Z"));
    assert!(invoices.iter().all(|i| i["status"] == "paid"));

    // Each advance was a billing run scoped to the clock, for its target, counting every job
    // it ran: all the clock's jobs that ran, none twice.
    let runs = get(&app, &key, "/api/v1/billing-runs").await;
    let runs: Vec<&serde_json::Value> = runs["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"] == "test_clock")
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(
        time(&runs[0]["scheduled_for"]),
        parse("2027-01-15T00:00:00Z")
    );
    assert_eq!(
        time(&runs[1]["scheduled_for"]),
        parse("2026-07-15T00:00:00Z")
    );
    let clock_id = shared::ids::TestClockId::parse(&clock).unwrap().as_uuid();
    let ran: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE test_clock_id = $1 AND state = 'succeeded'",
    )
    .bind(clock_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // 12 + 12 renewals or first charges at least, each with its charge.
    assert!(ran >= 24, "{ran}");
    let due: i64 = runs.iter().map(|r| r["due"].as_i64().unwrap()).sum();
    assert_eq!(due, ran);
    for r in &runs {
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["enqueued"], r["due"], "{r}");
        assert_eq!(r["succeeded"], r["due"], "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert!(r["due"].as_i64().unwrap() > 0, "{r}");
    }
}

#[tokio::test]
async fn anchors_on_the_29th_30th_and_31st_over_a_leap_year_keep_their_day_and_skip_no_month() {
    let app = spawn_app().await;
    let t = app.register("clock-anchors@acme.com").await;
    let key = t.sk_test();
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    for day in [29u32, 30, 31] {
        let clock = clock(&app, &key, &format!("2027-01-{day}T08:30:00Z")).await;
        let customer = customer_on(&app, &key, &clock, "UTC", Some("4242424242424242"), None).await;
        let sub = subscribe(
            &app,
            &key,
            json!({"customer": customer, "items": [{"plan": plan}]}),
        )
        .await;
        advance(&app, &key, &t.sk_test, &clock, "2029-01-01T00:00:00Z").await;
        let all = invoices_of(&app, &key, &s(&sub["id"])).await;
        assert_eq!(all.len(), 24, "day {day}: {all:?}");
        for (k, inv) in all.iter().enumerate() {
            let (y, m) = plus_months(2027, 1, k as u32);
            let expected = NaiveDate::from_ymd_opt(y, m, day.min(days_in_month(y, m)))
                .unwrap()
                .and_hms_opt(8, 30, 0)
                .unwrap()
                .and_utc();
            assert_eq!(
                time(&inv["period_start"]),
                expected,
                "day {day}, period {k}"
            );
            assert_eq!(inv["status"], "paid");
        }
        // 2028 is a leap year: February's period starts on the 29th for all three.
        let feb = &all[13];
        assert_eq!(time(&feb["period_start"]).day(), 29, "day {day}");
    }
}

#[tokio::test]
async fn timezones_without_a_local_midnight_on_some_days_bill_every_month_once() {
    let app = spawn_app().await;
    let t = app.register("clock-zones@acme.com").await;
    let key = t.sk_test();
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    // (timezone, the anchor: local midnight, as UTC, a day it starts on, a day with no local
    // midnight and where its period starts instead).
    let cases = [
        ("Pacific/Kiritimati", "2025-01-30T10:00:00Z", 31, None),
        ("Pacific/Pago_Pago", "2025-01-31T11:00:00Z", 31, None),
        (
            "America/Santiago",
            "2025-08-07T04:00:00Z",
            7,
            Some(("2025-09-07", 1)),
        ),
        (
            "Asia/Beirut",
            "2025-01-29T22:00:00Z",
            30,
            Some(("2025-03-30", 1)),
        ),
    ];
    for (zone, anchor, day, gap) in cases {
        let tz = Timezone::parse(zone).unwrap().tz();
        let start = parse(anchor);
        let local = start.with_timezone(&tz);
        assert_eq!(
            (local.day(), local.hour()),
            (day, 0),
            "{zone}: local midnight"
        );
        let clock = clock(&app, &key, anchor).await;
        let customer = customer_on(&app, &key, &clock, zone, Some("4242424242424242"), None).await;
        let sub = subscribe(
            &app,
            &key,
            json!({"customer": customer, "items": [{"plan": plan}]}),
        )
        .await;
        assert_eq!(sub["timezone"], zone);
        // Up to the day before the 25th period starts.
        let to = (start + chrono::Duration::days(729)).to_rfc3339();
        advance(&app, &key, &t.sk_test, &clock, &to).await;
        let all = invoices_of(&app, &key, &s(&sub["id"])).await;
        assert_eq!(all.len(), 24, "{zone}: {} invoices", all.len());
        let (y0, m0) = (local.year(), local.month());
        for (k, inv) in all.iter().enumerate() {
            let begins = time(&inv["period_start"]).with_timezone(&tz);
            let (y, m) = plus_months(y0, m0, k as u32);
            let expected_day = day.min(days_in_month(y, m));
            assert_eq!(
                (begins.year(), begins.month(), begins.day()),
                (y, m, expected_day),
                "{zone}, period {k}: {begins}"
            );
            let date = begins.date_naive().to_string();
            let expected_hour = match gap {
                Some((d, hour)) if d == date => hour,
                _ => 0,
            };
            assert_eq!(begins.hour(), expected_hour, "{zone}, period {k}: {begins}");
            assert_eq!(begins.minute(), 0);
            if k > 0 {
                assert_eq!(inv["period_start"], all[k - 1]["period_end"], "{zone}");
            }
        }
        if let Some((d, _)) = gap {
            assert!(
                all.iter().any(|i| time(&i["period_start"])
                    .with_timezone(&tz)
                    .date_naive()
                    .to_string()
                    == d),
                "{zone}: the day without a midnight is billed"
            );
        }
    }
}

#[tokio::test]
async fn clocks_are_test_mode_only_never_go_back_advance_one_at_a_time_and_delete_their_customers()
{
    let app = spawn_app().await;
    let t = app.register("clock-rules@acme.com").await;
    let other = app.register("clock-other@acme.com").await;
    let key = t.sk_test();
    let resp = app
        .post(
            "/api/v1/test-clocks",
            &t.sk_live(),
            &json!({"frozen_time": "2026-01-01T00:00:00Z"}),
        )
        .await;
    assert_problem(resp, StatusCode::FORBIDDEN, "livemode_test_clock").await;
    let c = clock(&app, &key, "2026-03-01T00:00:00Z").await;
    let resp = app
        .post(
            "/api/v1/customers",
            &t.sk_live(),
            &json!({"name": "Live", "test_clock": c}),
        )
        .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "test_clock");
    for to in [
        "2026-03-01T00:00:00Z",
        "2026-02-01T00:00:00Z",
        "2031-06-01T00:00:00Z",
    ] {
        let resp = app
            .post(
                &format!("/api/v1/test-clocks/{c}/advance"),
                &key,
                &json!({"frozen_time": to}),
            )
            .await;
        let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(p["field"], "frozen_time", "{to}");
    }
    // One advance at a time.
    let first = app
        .post(
            &format!("/api/v1/test-clocks/{c}/advance"),
            &key,
            &json!({"frozen_time": "2026-04-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let second = app
        .post(
            &format!("/api/v1/test-clocks/{c}/advance"),
            &key,
            &json!({"frozen_time": "2026-05-01T00:00:00Z"}),
        )
        .await;
    assert_problem(second, StatusCode::CONFLICT, "test_clock_advancing").await;
    run_due(&app, scope(&app, &t.sk_test).await).await;
    let ready = get(&app, &key, &format!("/api/v1/test-clocks/{c}")).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(time(&ready["frozen_time"]), parse("2026-04-01T00:00:00Z"));

    // Another tenant and the live mode see none of it.
    for cred in [other.sk_test(), t.sk_live()] {
        let resp = app.get(&format!("/api/v1/test-clocks/{c}"), &cred).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let list = get(&app, &cred, "/api/v1/test-clocks").await;
        assert!(list["data"].as_array().unwrap().is_empty());
    }

    // Deleting it deletes its customers and cancels their subscriptions.
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    let customer = customer_on(&app, &key, &c, "UTC", Some("4242424242424242"), None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    let deleted = json_of(
        app.send(
            Method::DELETE,
            &format!("/api/v1/test-clocks/{c}"),
            &key,
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deleted["deleted"], true);
    for path in [
        format!("/api/v1/test-clocks/{c}"),
        format!("/api/v1/customers/{customer}"),
    ] {
        let resp = app.get(&path, &key).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(sub["status"], "canceled");
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE test_clock_id IS NOT NULL AND state = 'pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(pending, 0, "nothing waits for a deleted clock");
}

/// The items of a subscription as (id, quantity).
fn item_ids(sub: &serde_json::Value) -> Vec<String> {
    sub["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| s(&i["id"]))
        .collect()
}

fn amounts(invoice: &serde_json::Value) -> Vec<i64> {
    invoice["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn changes_are_prorated_by_seconds_as_each_proration_behavior_says() {
    let app = spawn_app().await;
    let t = app.register("clock-prorations@acme.com").await;
    let key = t.sk_test();
    let c = clock(&app, &key, "2026-04-01T00:00:00Z").await;
    let basic = monthly_plan_at(&app, &key, "Basic", 3000).await;
    let pro = monthly_plan_at(&app, &key, "Pro", 9000).await;
    let mut subs = Vec::new();
    for plan in [&basic, &basic, &basic, &pro] {
        let customer = customer_on(&app, &key, &c, "UTC", Some("4242424242424242"), None).await;
        subs.push(
            subscribe(
                &app,
                &key,
                json!({"customer": customer, "items": [{"plan": plan}]}),
            )
            .await,
        );
    }
    // 10 days and 7 hours into April's 30 days: 1,702,800 of 2,592,000 seconds remain.
    let at = "2026-04-11T07:00:00Z";
    advance(&app, &key, &t.sk_test, &c, at).await;
    // Basic (30.00) for the rest: 3000 × 1702800 / 2592000 = 1970.83 → 1971.
    // Pro (90.00) for the rest: 9000 × 1702800 / 2592000 = 5912.5 → 5913 (half away from zero).
    let patch = |sub: &serde_json::Value, body: serde_json::Value| {
        let path = format!("/api/v1/subscriptions/{}", s(&sub["id"]));
        let app = &app;
        let key = &key;
        async move {
            json_of(
                app.send(Method::PATCH, &path, key, Some(&body)).await,
                StatusCode::OK,
            )
            .await
        }
    };

    // 1. Upgrade with create_prorations, previewed first: nothing billed now, both lines on
    // the next invoice.
    let upgrade = json!({
        "items": [{"id": item_ids(&subs[0])[0], "deleted": true}, {"plan": pro}],
        "proration_behavior": "create_prorations",
    });
    let preview = json_of(
        app.post(
            &format!("/api/v1/subscriptions/{}/preview", s(&subs[0]["id"])),
            &key,
            &upgrade,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(preview["status"], "draft");
    assert_eq!(preview["number"], serde_json::Value::Null);
    assert_eq!(amounts(&preview), vec![9000, -1971, 5913]);
    assert_eq!(preview["total"], 9000 - 1971 + 5913);
    let unchanged = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&subs[0]["id"])),
    )
    .await;
    assert_eq!(
        item_ids(&unchanged),
        item_ids(&subs[0]),
        "a preview changes nothing"
    );
    let changed = patch(&subs[0], upgrade).await;
    assert_eq!(changed["items"].as_array().unwrap().len(), 1);
    assert_eq!(invoices_of(&app, &key, &s(&subs[0]["id"])).await.len(), 1);

    // 2. Quantity 1 → 3 with always_invoice: invoiced now, 3 × 30.00 for the rest less the
    // unused 30.00.
    let more = patch(
        &subs[1],
        json!({
            "items": [{"id": item_ids(&subs[1])[0], "quantity": 3}],
            "proration_behavior": "always_invoice",
        }),
    )
    .await;
    assert_eq!(more["items"][0]["quantity"], 3);
    let now_invoices = invoices_of(&app, &key, &s(&subs[1]["id"])).await;
    assert_eq!(now_invoices.len(), 2);
    let update = &now_invoices[1];
    assert_eq!(update["billing_reason"], "subscription_update");
    assert_eq!(amounts(update), vec![-1971, 5913]);
    assert_eq!(update["amount_due"], 3942);
    assert!(
        update["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["proration"] == true)
    );
    assert_eq!(time(&update["lines"][0]["period_start"]), parse(at));
    assert_eq!(
        time(&update["lines"][0]["period_end"]),
        parse("2026-05-01T00:00:00Z")
    );

    // 3. Quantity 1 → 2 with none: nothing now, the new amount from the next period.
    patch(
        &subs[2],
        json!({
            "items": [{"id": item_ids(&subs[2])[0], "quantity": 2}],
            "proration_behavior": "none",
        }),
    )
    .await;

    // 4. Downgrade with always_invoice: the credit outweighs the charge; the invoice owes
    // nothing and the difference is the customer's credit.
    patch(
        &subs[3],
        json!({
            "items": [{"id": item_ids(&subs[3])[0], "deleted": true}, {"plan": basic}],
            "proration_behavior": "always_invoice",
        }),
    )
    .await;
    let down = invoices_of(&app, &key, &s(&subs[3]["id"])).await;
    assert_eq!(amounts(&down[1]), vec![-5913, 1971]);
    assert_eq!(down[1]["total"], -3942);
    assert_eq!(down[1]["amount_due"], 0);
    assert_eq!(down[1]["status"], "paid");
    let customer = get(
        &app,
        &key,
        &format!("/api/v1/customers/{}", s(&subs[3]["customer"])),
    )
    .await;
    assert_eq!(customer["balance"], 3942);

    // May: each renewal bills the new items, with what waited for it.
    advance(&app, &key, &t.sk_test, &c, "2026-05-01T00:00:01Z").await;
    let may = |i: usize| {
        let id = s(&subs[i]["id"]);
        let app = &app;
        let key = &key;
        async move { invoices_of(app, key, &id).await.last().cloned().unwrap() }
    };
    let m0 = may(0).await;
    assert_eq!(amounts(&m0), vec![9000, -1971, 5913]);
    assert_eq!(m0["amount_paid"], 12942);
    let m1 = may(1).await;
    assert_eq!(amounts(&m1), vec![9000]);
    let m2 = may(2).await;
    assert_eq!(amounts(&m2), vec![6000]);
    let m3 = may(3).await;
    assert_eq!(amounts(&m3), vec![3000]);
    assert_eq!(m3["balance_applied"], 3000);
    assert_eq!(m3["amount_due"], 0);
    let customer = get(
        &app,
        &key,
        &format!("/api/v1/customers/{}", s(&subs[3]["customer"])),
    )
    .await;
    assert_eq!(customer["balance"], 942);
    // The update invoice of (2) was charged too, once.
    let paid = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&update["id"])),
    )
    .await;
    assert_eq!(paid["status"], "paid");
    let payments = get(
        &app,
        &key,
        &format!("/api/v1/payments?invoice={}", s(&update["id"])),
    )
    .await;
    assert_eq!(payments["data"].as_array().unwrap().len(), 1, "{payments}");

    // Bad changes.
    let bad = [
        (
            json!({"items": [{"id": "si_01m80000000000000000000000", "quantity": 2}]}),
            "items[0].id",
        ),
        (
            json!({"items": [{"id": item_ids(&more)[0]}]}),
            "items[0].quantity",
        ),
        (
            json!({"items": [{"id": item_ids(&more)[0], "deleted": true}]}),
            "items",
        ),
        (
            json!({"items": [{"id": item_ids(&more)[0], "quantity": 2}], "proration_date": "2026-04-15T00:00:00Z"}),
            "proration_date",
        ),
        (
            json!({"proration_date": "2026-05-01T00:00:01Z"}),
            "proration_date",
        ),
        (json!({"items": [{"plan": basic}]}), "items"),
    ];
    for (body, field) in bad {
        let resp = app
            .send(
                Method::PATCH,
                &format!("/api/v1/subscriptions/{}", s(&subs[1]["id"])),
                &key,
                Some(&body),
            )
            .await;
        let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(p["field"], field, "{body}");
    }
}

async fn monthly_plan_at(app: &TestApp, key: &Cred, name: &str, cents: i64) -> String {
    let plan = json_of(
        app.post(
            "/api/v1/plans",
            key,
            &json!({"name": name, "price_cents": cents, "billing_interval": "month"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    s(&plan["id"])
}

#[tokio::test]
async fn a_coupon_discounts_the_periods_its_duration_covers_and_its_limit_holds() {
    let app = spawn_app().await;
    let t = app.register("clock-coupons@acme.com").await;
    let key = t.sk_test();
    let c = clock(&app, &key, "2026-01-31T09:00:00Z").await;
    let plan = monthly_plan_at(&app, &key, "Seat", 2999).await;
    // 25 % for two months, once only.
    let coupon = json_of(
        app.post(
            "/api/v1/coupons",
            &key,
            &json!({"percent_off_bps": 2500, "duration": "repeating", "duration_in_months": 2,
                    "max_redemptions": 1}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let euros = json_of(
        app.post(
            "/api/v1/coupons",
            &key,
            &json!({"amount_off": 500, "currency": "eur", "duration": "forever"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let first = customer_on(&app, &key, &c, "UTC", Some("4242424242424242"), None).await;
    let second = customer_on(&app, &key, &c, "UTC", Some("4242424242424242"), None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": first, "items": [{"plan": plan, "quantity": 2}], "coupon": coupon["id"]}),
    )
    .await;
    assert_eq!(sub["coupon"], coupon["id"]);
    for (body_coupon, why) in [
        (&coupon, "its one redemption is used"),
        (&euros, "euros on dollars"),
    ] {
        let resp = app
            .post(
                "/api/v1/subscriptions",
                &key,
                &json!({"customer": second, "items": [{"plan": plan}], "coupon": body_coupon["id"]}),
            )
            .await;
        let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(p["field"], "coupon", "{why}");
    }
    let redeemed = get(&app, &key, &format!("/api/v1/coupons/{}", s(&coupon["id"]))).await;
    assert_eq!(redeemed["times_redeemed"], 1);

    advance(&app, &key, &t.sk_test, &c, "2026-04-15T00:00:00Z").await;
    let all = invoices_of(&app, &key, &s(&sub["id"])).await;
    // 31 Jan, 28 Feb (within two months of 31 Jan), 31 Mar (not: the two months end then).
    // 2 × 29.99 = 59.98; 25 % = 14.995 → 15.00 (half away from zero).
    let totals: Vec<(i64, i64, i64)> = all
        .iter()
        .map(|i| {
            (
                i["subtotal"].as_i64().unwrap(),
                i["discount"].as_i64().unwrap(),
                i["amount_paid"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        totals,
        vec![(5998, 1500, 4498), (5998, 1500, 4498), (5998, 0, 5998)]
    );
    assert_eq!(all[0]["lines"][0]["discount_amount"], 1500);
}

#[tokio::test]
async fn prorations_waiting_when_a_subscription_ends_are_billed_on_a_last_invoice() {
    let app = spawn_app().await;
    let t = app.register("clock-last-invoice@acme.com").await;
    let key = t.sk_test();
    let c = clock(&app, &key, "2026-04-01T00:00:00Z").await;
    let plan = monthly_plan_at(&app, &key, "Seat", 3000).await;
    let customer = customer_on(&app, &key, &c, "UTC", Some("4242424242424242"), None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    advance(&app, &key, &t.sk_test, &c, "2026-04-11T07:00:00Z").await;
    let changed = json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
            &key,
            Some(&json!({
                "items": [{"id": item_ids(&sub)[0], "quantity": 3}],
                "proration_behavior": "create_prorations",
                "cancel_at_period_end": true,
            })),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(changed["cancel_at_period_end"], true);
    advance(&app, &key, &t.sk_test, &c, "2026-05-02T00:00:00Z").await;
    let ended = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(ended["status"], "canceled");
    let all = invoices_of(&app, &key, &s(&sub["id"])).await;
    assert_eq!(all.len(), 2, "{all:?}");
    // The waiting lines (−1971 for the unused single seat, +5913 for three seats) are billed
    // on a last invoice, and charged.
    assert_eq!(all[1]["billing_reason"], "subscription_update");
    assert_eq!(amounts(&all[1]), vec![-1971, 5913]);
    assert_eq!(all[1]["status"], "paid");
}

#[tokio::test]
async fn an_open_invoice_whose_lines_a_change_credited_cannot_be_voided() {
    let app = spawn_app().await;
    let t = app.register("clock-credited@acme.com").await;
    let key = t.sk_test();
    let c = clock(&app, &key, "2026-04-01T00:00:00Z").await;
    let plan = monthly_plan_at(&app, &key, "Seat", 3000).await;
    let mut subs = Vec::new();
    for _ in 0..2 {
        let customer = customer_on(&app, &key, &c, "UTC", None, None).await;
        subs.push(
            subscribe(
                &app,
                &key,
                json!({"customer": customer, "items": [{"plan": plan}],
                       "collection_method": "send_invoice"}),
            )
            .await,
        );
    }
    advance(&app, &key, &t.sk_test, &c, "2026-04-11T00:00:00Z").await;
    // The first one's seat is credited for the rest of April by a change; the open April
    // invoice that billed it can no longer be voided (the credit would be given twice).
    json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/subscriptions/{}", s(&subs[0]["id"])),
            &key,
            Some(&json!({
                "items": [{"id": item_ids(&subs[0])[0], "quantity": 2}],
                "proration_behavior": "create_prorations",
            })),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let resp = app
        .post(
            &format!("/api/v1/invoices/{}/void", s(&subs[0]["latest_invoice"])),
            &key,
            &json!({}),
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "invoice_credited").await;
    // The other one, unchanged, can.
    let void = json_of(
        app.post(
            &format!("/api/v1/invoices/{}/void", s(&subs[1]["latest_invoice"])),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(void["status"], "void");
}

/// Two customers with a card on a clock from 2026-01-01, each subscribed to a monthly "Studio"
/// plan of 1500, and the clock moved ten days on (both first invoices paid): the subscriptions.
async fn studio_subscriptions_ten_days_in(
    app: &TestApp,
    key: &Cred,
    t: &str,
) -> Vec<serde_json::Value> {
    let clk = clock(app, key, "2026-01-01T00:00:00Z").await;
    let plan = monthly_plan(app, key, "Studio", None).await;
    let mut subs = Vec::new();
    for _ in 0..2 {
        let cus = customer_on(app, key, &clk, "UTC", Some("4242424242424242"), None).await;
        subs.push(
            subscribe(
                app,
                key,
                json!({"customer": cus, "items": [{"plan": plan}]}),
            )
            .await,
        );
    }
    advance(app, key, t, &clk, "2026-01-11T00:00:00Z").await;
    subs
}

#[tokio::test]
async fn a_cancel_with_proration_credits_the_unused_days_of_the_paid_period_by_a_credit_note() {
    let app = spawn_app().await;
    let t = app.register("cancel-prorate@acme.com").await;
    let key = t.sk_test();
    let subs = studio_subscriptions_ten_days_in(&app, &key, &t.sk_test).await;
    let cancel = |sub: &serde_json::Value, query: &str| {
        format!("/api/v1/subscriptions/{}/cancel{query}", s(&sub["id"]))
    };
    let prorated = json_of(
        app.post(&cancel(&subs[0], "?prorate=true"), &key, &json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(prorated["status"], "canceled");
    // 21 of January's 31 days unused: round(1500 × 21 / 31) = round(1016.13) = 1016.
    let invoice = s(&subs[0]["latest_invoice"]);
    let notes = get(
        &app,
        &key,
        &format!("/api/v1/credit-notes?invoice={invoice}"),
    )
    .await;
    let notes = notes["data"].as_array().unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["amount"], 1016);
    assert_eq!(notes[0]["type"], "post_payment");
    assert_eq!(notes[0]["credit_amount"], 1016);
    assert_eq!(
        notes[0]["lines"][0]["description"],
        "Unused time on Studio after 2026-01-11"
    );
    let customer = get(
        &app,
        &key,
        &format!("/api/v1/customers/{}", s(&subs[0]["customer"])),
    )
    .await;
    assert_eq!(customer["balance"], 1016);
    // Without proration: nothing credited.
    let plain = json_of(
        app.post(&cancel(&subs[1], ""), &key, &json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(plain["status"], "canceled");
    let none = get(
        &app,
        &key,
        &format!(
            "/api/v1/credit-notes?invoice={}",
            s(&subs[1]["latest_invoice"])
        ),
    )
    .await;
    assert!(none["data"].as_array().unwrap().is_empty());
}

/// A cancel with proration on a taxed plan gives back the tax on the unused time, as a credit
/// note of the period's invoice line: 20 % VAT on the 1016 unused of 1500 is 203.2 → 203.
/// When earlier notes left less to credit, the credit and its tax together fit what is left.
#[tokio::test]
async fn a_cancel_with_proration_on_a_taxed_plan_credits_the_tax_of_the_unused_time_too() {
    let app = spawn_app().await;
    let t = app.register("cancel-prorate-tax@acme.com").await;
    let key = t.sk_test();
    crate::tax_rates::default_vat(&app, &key).await;
    let subs = studio_subscriptions_ten_days_in(&app, &key, &t.sk_test).await;
    let invoices: Vec<serde_json::Value> = {
        let mut v = Vec::new();
        for sub in &subs {
            let i = get(
                &app,
                &key,
                &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
            )
            .await;
            assert_eq!(i["status"], "paid", "{i}");
            assert_eq!(
                (i["tax"].as_i64(), i["total"].as_i64()),
                (Some(300), Some(1800))
            );
            v.push(i);
        }
        v
    };
    let cancel = |sub: &serde_json::Value| {
        format!(
            "/api/v1/subscriptions/{}/cancel?prorate=true",
            s(&sub["id"])
        )
    };
    let notes_of =
        |invoice: &serde_json::Value| format!("/api/v1/credit-notes?invoice={}", s(&invoice["id"]));

    // 21 of 31 days unused: 1016 of the line, and its tax 203.
    json_of(
        app.post(&cancel(&subs[0]), &key, &json!({})).await,
        StatusCode::OK,
    )
    .await;
    let notes = get(&app, &key, &notes_of(&invoices[0])).await;
    let note = &notes["data"][0];
    assert_eq!(notes["data"].as_array().unwrap().len(), 1, "{notes}");
    assert_eq!(
        (
            note["subtotal"].as_i64(),
            note["tax"].as_i64(),
            note["amount"].as_i64()
        ),
        (Some(1016), Some(203), Some(1219)),
        "{note}"
    );
    assert_eq!(note["credit_amount"], 1219);
    assert_eq!(
        note["lines"][0]["invoice_line"],
        invoices[0]["lines"][0]["id"]
    );
    assert_eq!(
        note["lines"][0]["description"],
        "Unused time on Studio after 2026-01-11"
    );
    let customer = get(
        &app,
        &key,
        &format!("/api/v1/customers/{}", s(&subs[0]["customer"])),
    )
    .await;
    assert_eq!(customer["balance"], 1219);

    // A note of 1000 of the line (and 200 of tax) first: 600 is left to credit. The unused
    // time's credit is cut to fit: 500 and its tax 100 (round(0.2 × 1500) − 200).
    json_of(
        app.post(
            "/api/v1/credit-notes",
            &key,
            &json!({"invoice": invoices[1]["id"],
                    "lines": [{"invoice_line": invoices[1]["lines"][0]["id"], "amount": 1000}]}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    json_of(
        app.post(&cancel(&subs[1]), &key, &json!({})).await,
        StatusCode::OK,
    )
    .await;
    let notes = get(&app, &key, &notes_of(&invoices[1])).await;
    let amounts: Vec<(Option<i64>, Option<i64>, Option<i64>)> = notes["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["subtotal"].as_i64(),
                n["tax"].as_i64(),
                n["amount"].as_i64(),
            )
        })
        .collect();
    assert!(
        amounts.contains(&(Some(500), Some(100), Some(600))),
        "{amounts:?}"
    );
    assert!(
        amounts.contains(&(Some(1000), Some(200), Some(1200))),
        "{amounts:?}"
    );
    let invoice = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&invoices[1]["id"])),
    )
    .await;
    assert_eq!(invoice["amount_credited"], 1800);
}

/// A cancel with proration after a change invoiced at once credits the unused time on the
/// invoices that billed it, each with its tax. 20 % VAT; a Studio seat (1500) from January 1st,
/// changed on the 11th to three seats' worth (21 of 31 days left: the change's invoice credits
/// 1016 and charges 3048, 2032 and 406 of tax), canceled on the 16th (16 days left). The time
/// the change billed is 2322 unused: its invoice gives back all it has (2032 and its 406 of
/// tax), the period's invoice the rest (290 and its 58 of tax): 2786 in all, 2322 × 1.2 to the
/// cent, whether the change added seats or swapped the plan.
#[tokio::test]
async fn a_cancel_with_proration_after_an_invoiced_change_credits_each_invoice_that_billed_it() {
    let app = spawn_app().await;
    let t = app.register("cancel-after-change@acme.com").await;
    let key = t.sk_test();
    crate::tax_rates::default_vat(&app, &key).await;
    let subs = studio_subscriptions_ten_days_in(&app, &key, &t.sk_test).await;
    let team = monthly_plan_at(&app, &key, "Studio Team", 4500).await;
    let changes = [
        json!({"items": [{"id": item_ids(&subs[0])[0], "quantity": 3}],
               "proration_behavior": "always_invoice"}),
        json!({"items": [{"id": item_ids(&subs[1])[0], "deleted": true}, {"plan": team}],
               "proration_behavior": "always_invoice"}),
    ];
    for (sub, change) in subs.iter().zip(changes) {
        json_of(
            app.send(
                Method::PATCH,
                &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
                &key,
                Some(&change),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }
    let clk = s(&subs[0]["test_clock"]);
    advance(&app, &key, &t.sk_test, &clk, "2026-01-16T00:00:00Z").await;
    for sub in &subs {
        let invoices = invoices_of(&app, &key, &s(&sub["id"])).await;
        let (period, change) = (&invoices[0], &invoices[1]);
        assert_eq!(amounts(change), vec![-1016, 3048], "{change}");
        assert_eq!(
            (change["tax"].as_i64(), change["total"].as_i64()),
            (Some(406), Some(2438))
        );
        assert_eq!(change["status"], "paid", "{change}");
        json_of(
            app.post(
                &format!(
                    "/api/v1/subscriptions/{}/cancel?prorate=true",
                    s(&sub["id"])
                ),
                &key,
                &json!({}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        // (subtotal, tax, amount, the line credited) of each invoice's one note.
        let note_of = |invoice: &serde_json::Value| {
            let path = format!("/api/v1/credit-notes?invoice={}", s(&invoice["id"]));
            let (app, key) = (&app, &key);
            async move {
                let notes = get(app, key, &path).await;
                let data = notes["data"].as_array().unwrap();
                assert_eq!(data.len(), 1, "{notes}");
                let n = &data[0];
                assert_eq!(n["lines"].as_array().unwrap().len(), 1, "{n}");
                (
                    n["subtotal"].as_i64(),
                    n["tax"].as_i64(),
                    n["amount"].as_i64(),
                    n["lines"][0]["invoice_line"].clone(),
                )
            }
        };
        assert_eq!(
            note_of(change).await,
            (
                Some(2032),
                Some(406),
                Some(2438),
                change["lines"][1]["id"].clone()
            )
        );
        assert_eq!(
            note_of(period).await,
            (
                Some(290),
                Some(58),
                Some(348),
                period["lines"][0]["id"].clone()
            )
        );
        let customer = get(
            &app,
            &key,
            &format!("/api/v1/customers/{}", s(&sub["customer"])),
        )
        .await;
        assert_eq!(customer["balance"], 2786);
    }
}

#[tokio::test]
async fn an_expiry_held_back_by_a_payment_in_flight_waits_past_the_advance_without_failing() {
    let app = spawn_app().await;
    let t = app.register("clock-3ds@acme.com").await;
    let key = t.sk_test();
    // A card that asks the customer to authenticate: the first payment stays in flight.
    let (clock, _, sub) =
        seat_on_clock(&app, &key, "2026-03-01T00:00:00Z", "4000002500003155").await;
    assert_eq!(sub["status"], "incomplete");
    // Past the 23 hours an unpaid first invoice has: the charge waits for the customer, and
    // the expiry, finding it in flight, waits too, past the advance, which completes.
    advance(&app, &key, &t.sk_test, &clock, "2026-03-02T12:00:00Z").await;
    let sub = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}", s(&sub["id"])),
    )
    .await;
    assert_eq!(sub["status"], "incomplete", "{sub}");
    let invoice = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
    )
    .await;
    assert_eq!(invoice["status"], "open");
    let (state, attempts, run_at): (String, i32, DateTime<Utc>) = sqlx::query_as(
        "SELECT state, attempts, run_at FROM jobs WHERE kind = 'subscription.expire_incomplete'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((state.as_str(), attempts), ("pending", 0));
    assert_eq!(run_at, parse("2026-03-02T13:00:00Z"));
}

/// Starts an advance to `to` whose job then dies, as the worker fleet records it when its
/// attempts are used up: the clock is `internal_failure`, keeping where it was going.
async fn fail_advance(
    app: &TestApp,
    key: &Cred,
    scope: shared::tenancy::Scope,
    c: &str,
    to: &str,
) -> serde_json::Value {
    start_advance(app, key, c, to).await;
    // The advance had started its run (its first step) before it died.
    let id = TestClockId::parse(c).unwrap();
    shared::db::billing_runs::start_clock_run(
        &app.pool,
        scope,
        id.as_uuid(),
        parse(to),
        app.clock.now(),
    )
    .await
    .unwrap();
    sqlx::query(
        "UPDATE jobs SET state = 'dead' WHERE kind = 'test_clock.advance' AND state = 'pending'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    test_clocks::fail_advance(&app.pool, app.clock.as_ref(), scope, id, parse(to))
        .await
        .unwrap();
    let failed = get(app, key, &format!("/api/v1/test-clocks/{c}")).await;
    assert_eq!(failed["status"], "internal_failure", "{failed}");
    assert_eq!(time(&failed["advancing_to"]), parse(to));
    failed
}

#[tokio::test]
async fn a_clock_job_that_cannot_run_dies_alone_and_a_failed_advance_goes_on_when_advanced_again() {
    let app = spawn_app().await;
    let t = app.register("clock-failure@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let c = clock(&app, &key, "2026-01-01T00:00:00Z").await;
    let clock_id = TestClockId::parse(&c).unwrap();
    let plan = monthly_plan(&app, &key, "Seat", None).await;
    let customer = customer_on(&app, &key, &c, "UTC", Some("4242424242424242"), None).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": customer, "items": [{"plan": plan}]}),
    )
    .await;
    let sub = s(&sub["id"]);
    let invoices = || async {
        let mut starts: Vec<DateTime<Utc>> = invoices_of(&app, &key, &sub)
            .await
            .iter()
            .map(|i| time(&i["period_start"]))
            .collect();
        starts.sort();
        starts
    };

    // A job of the clock that cannot be read: dead at its first run, and the advance goes on
    // without it (the renewal on the way runs).
    let broken = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO jobs (id, queue, kind, tenant_id, livemode, payload, max_attempts, run_at, \
         created_at, updated_at, test_clock_id) VALUES ($1, 'renewals', 'subscription.renew', \
         $2, FALSE, '{\"unreadable\": true}', 5, '2026-01-10T00:00:00Z', now(), now(), $3)",
    )
    .bind(broken)
    .bind(scope.tenant_id().as_uuid())
    .bind(clock_id.as_uuid())
    .execute(&app.pool)
    .await
    .unwrap();
    advance(&app, &key, &t.sk_test, &c, "2026-02-15T00:00:00Z").await;
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(broken)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("dead", 1));
    assert_eq!(
        invoices().await,
        [parse("2026-01-01T00:00:00Z"), parse("2026-02-01T00:00:00Z")]
    );

    // An advance whose job died: the clock is `internal_failure`, stands where the advance
    // got to, and says so by an event.
    let stripe = Stripe::new(&app.settings.stripe).unwrap();
    let failed = fail_advance(&app, &key, scope, &c, "2026-03-15T00:00:00Z").await;
    assert_eq!(time(&failed["frozen_time"]), parse("2026-02-15T00:00:00Z"));
    let events = get(
        &app,
        &key,
        "/api/v1/events?type=test_helpers.test_clock.internal_failure",
    )
    .await;
    assert_eq!(events["data"].as_array().unwrap().len(), 1, "{events}");
    let running = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM billing_runs WHERE trigger = 'test_clock' AND status <> 'completed'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(running().await, 1, "the failed advance is not over");

    // An operator retrying its job: the advance goes on to where it was going.
    test_clocks::advance(
        &app.pool,
        app.clock.as_ref(),
        &stripe,
        scope,
        clock_id,
        parse("2026-03-15T00:00:00Z"),
    )
    .await
    .unwrap();
    let ready = get(&app, &key, &format!("/api/v1/test-clocks/{c}")).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(time(&ready["frozen_time"]), parse("2026-03-15T00:00:00Z"));
    assert_eq!(invoices().await.len(), 3);
    assert_eq!(running().await, 0);

    // Or the tenant advancing it again to the same time (its job starts over)...
    fail_advance(&app, &key, scope, &c, "2026-04-15T00:00:00Z").await;
    advance(&app, &key, &t.sk_test, &c, "2026-04-15T00:00:00Z").await;
    assert_eq!(invoices().await.len(), 4);
    assert_eq!(running().await, 0);
    // ...or elsewhere: it goes on from where it stopped, and the failed advance's run is over.
    fail_advance(&app, &key, scope, &c, "2026-04-20T00:00:00Z").await;
    advance(&app, &key, &t.sk_test, &c, "2026-05-15T00:00:00Z").await;
    assert_eq!(
        invoices().await,
        [
            parse("2026-01-01T00:00:00Z"),
            parse("2026-02-01T00:00:00Z"),
            parse("2026-03-01T00:00:00Z"),
            parse("2026-04-01T00:00:00Z"),
            parse("2026-05-01T00:00:00Z"),
        ]
    );
    assert_eq!(running().await, 0, "the failed advance's run is over");
}

/// Every number on an invoice is held for it in the storage, whether taken as the invoice is
/// finalized (a one-off invoice) or at the commit of the renewals that number theirs
/// together; a number held is never held again in its tenant and mode.
#[tokio::test]
async fn every_invoice_number_is_held_for_its_invoice_and_cannot_be_held_twice() {
    use shared::db::{DbError, invoice_numbers};
    let app = spawn_app().await;
    let t = app.register("clock-numbers@acme.com").await;
    let key = t.sk_test();
    let (clock, customer, sub) =
        seat_on_clock(&app, &key, "2026-03-01T00:00:00Z", "4242424242424242").await;
    advance(&app, &key, &t.sk_test, &clock, "2026-05-15T00:00:00Z").await;
    let one_off =
        crate::credit_notes::invoice(&app, &key, &customer, &[("Setup", 700)], false).await;
    let renewals = invoices_of(&app, &key, &s(&sub["id"])).await;
    assert_eq!(renewals.len(), 3, "March, April and May");
    let mut numbered: Vec<(String, String)> = renewals
        .iter()
        .chain([&one_off])
        .map(|i| (s(&i["number"]), s(&i["id"])))
        .collect();
    numbered.sort();
    let scope = scope(&app, &t.sk_test).await;
    let held: Vec<(String, uuid::Uuid)> = sqlx::query_as(
        "SELECT number, invoice_id FROM invoice_numbers \
         WHERE tenant_id = $1 AND livemode = false ORDER BY number",
    )
    .bind(scope.tenant_id().as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let held: Vec<(String, String)> = held
        .into_iter()
        .map(|(n, id)| (n, shared::ids::InvoiceId::from_uuid(id).to_string()))
        .collect();
    assert_eq!(held, numbered);

    let taken = s(&one_off["number"]);
    let mut conn = app.pool.acquire().await.unwrap();
    let again =
        invoice_numbers::hold(&mut conn, scope, &taken, shared::ids::InvoiceId::new()).await;
    assert!(
        matches!(&again, Err(DbError::UniqueViolation(c)) if c == "invoice_numbers_pkey"),
        "{again:?}"
    );
    // The other mode numbers on its own.
    let live = crate::invoices::context(&app, &t.sk_live).await.scope();
    invoice_numbers::hold(&mut conn, live, &taken, shared::ids::InvoiceId::new())
        .await
        .unwrap();
}
