//! Coupons: `/api/v1/coupons`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{assert_problem, s, spawn_app},
    webhooks::{body, event_objects, ids},
};

const COUPONS: &str = "/api/v1/coupons";

fn path(id: &str) -> String {
    format!("{COUPONS}/{id}")
}

#[tokio::test]
async fn coupons_are_created_as_a_percentage_or_an_amount_with_a_duration() {
    let app = spawn_app().await;
    let t = app.register("coupons-create@acme.com").await;
    let cred = t.sk_test();
    let pct = body(
        app.post(
            COUPONS,
            &cred,
            &json!({"name": "Launch", "percent_off_bps": 1250, "duration": "repeating",
                    "duration_in_months": 3, "max_redemptions": 100,
                    "redeem_by": "2099-01-01T00:00:00Z", "metadata": {"campaign": "launch"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert!(s(&pct["id"]).starts_with("coupon_"));
    assert_eq!(pct["percent_off_bps"], 1250);
    assert!(pct["amount_off"].is_null() && pct["currency"].is_null());
    assert_eq!(pct["duration"], "repeating");
    assert_eq!(pct["duration_in_months"], 3);
    assert_eq!(pct["max_redemptions"], 100);
    assert_eq!(pct["redeem_by"], "2099-01-01T00:00:00+00:00");
    assert_eq!(pct["times_redeemed"], 0);
    assert_eq!(pct["valid"], true);
    let amt = body(
        app.post(
            COUPONS,
            &cred,
            &json!({"amount_off": 500, "currency": "eur", "duration": "once"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(amt["amount_off"], 500);
    assert_eq!(amt["currency"], "eur");
    assert!(amt["percent_off_bps"].is_null() && amt["duration_in_months"].is_null());
    assert_eq!(amt["name"], "");
    let got = body(app.get(&path(&s(&pct["id"])), &cred).await, StatusCode::OK).await;
    assert_eq!(got, pct);
    let listed = body(app.get(COUPONS, &cred).await, StatusCode::OK).await;
    assert_eq!(ids(&listed), vec![s(&amt["id"]), s(&pct["id"])]);
    assert!(
        ids(&body(app.get(COUPONS, &t.sk_live()).await, StatusCode::OK).await).is_empty(),
        "the other mode has none"
    );
    let created = event_objects(&app, &t, false, "coupon.created").await;
    assert_eq!(created, vec![pct, amt]);
}

#[tokio::test]
async fn invalid_coupons_fail_validation_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let t = app.register("coupons-invalid@acme.com").await;
    let before = [app.count("coupons").await, app.count("events").await];
    for (input, field) in [
        (json!({"duration": "once"}), "percent_off_bps"),
        (
            json!({"percent_off_bps": 0, "duration": "once"}),
            "percent_off_bps",
        ),
        (
            json!({"percent_off_bps": 10001, "duration": "once"}),
            "percent_off_bps",
        ),
        (
            json!({"percent_off_bps": 10, "amount_off": 10, "currency": "usd", "duration": "once"}),
            "percent_off_bps",
        ),
        (
            json!({"percent_off_bps": 10, "currency": "usd", "duration": "once"}),
            "currency",
        ),
        (json!({"amount_off": 10, "duration": "once"}), "currency"),
        (
            json!({"amount_off": 0, "currency": "usd", "duration": "once"}),
            "amount_off",
        ),
        (
            json!({"amount_off": 10, "currency": "xyz", "duration": "once"}),
            "currency",
        ),
        (
            json!({"percent_off_bps": 10, "duration": "weekly"}),
            "duration",
        ),
        (
            json!({"percent_off_bps": 10, "duration": "repeating"}),
            "duration_in_months",
        ),
        (
            json!({"percent_off_bps": 10, "duration": "repeating", "duration_in_months": 121}),
            "duration_in_months",
        ),
        (
            json!({"percent_off_bps": 10, "duration": "forever", "duration_in_months": 3}),
            "duration_in_months",
        ),
        (
            json!({"percent_off_bps": 10, "duration": "once", "max_redemptions": 0}),
            "max_redemptions",
        ),
        (
            json!({"percent_off_bps": 10, "duration": "once", "redeem_by": "2020-01-01T00:00:00Z"}),
            "redeem_by",
        ),
    ] {
        let resp = app.post(COUPONS, &t.sk_test(), &input).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{input}");
    }
    assert_eq!(
        [app.count("coupons").await, app.count("events").await],
        before
    );
}

#[tokio::test]
async fn only_a_coupons_name_and_metadata_change_and_a_deleted_one_answers_404() {
    let app = spawn_app().await;
    let t = app.register("coupons-change@acme.com").await;
    let other = app.register("coupons-other@acme.com").await;
    let cred = t.sk_test();
    let c = body(
        app.post(
            COUPONS,
            &cred,
            &json!({"percent_off_bps": 500, "duration": "forever"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = s(&c["id"]);
    let patch = |change: Value| {
        let (app, cred, id) = (&app, cred.clone(), id.clone());
        async move {
            app.send(Method::PATCH, &path(&id), &cred, Some(&change))
                .await
        }
    };
    let renamed = body(
        patch(json!({"name": "Five off", "metadata": {"k": "v"}})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(renamed["name"], "Five off");
    assert_eq!(renamed["metadata"], json!({"k": "v"}));
    assert_eq!(renamed["percent_off_bps"], 500);
    // Terms are not fields of a change.
    let terms = patch(json!({"percent_off_bps": 900})).await;
    assert_eq!(terms.status(), StatusCode::BAD_REQUEST);
    // The same again: nothing recorded.
    let events = app.count("events").await;
    let same = body(patch(json!({"name": "Five off"})).await, StatusCode::OK).await;
    assert_eq!(same, renamed);
    assert_eq!(app.count("events").await, events);
    // Another tenant or mode cannot see or touch it.
    for cred in [other.sk_test(), t.sk_live()] {
        assert_problem(
            app.get(&path(&id), &cred).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        assert_problem(
            app.send(Method::DELETE, &path(&id), &cred, None).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
    let gone = body(
        app.send(Method::DELETE, &path(&id), &cred, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(gone, json!({"id": id, "object": "coupon", "deleted": true}));
    assert_problem(
        app.get(&path(&id), &cred).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    assert!(ids(&body(app.get(COUPONS, &cred).await, StatusCode::OK).await).is_empty());
    assert_eq!(
        event_objects(&app, &t, false, "coupon.deleted").await.len(),
        1
    );
}
