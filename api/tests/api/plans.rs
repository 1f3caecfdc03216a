//! Plans: `/api/v1/plans` and the seed's `/api/v1/auth/plans/` (trailing slash and all), which
//! reaches the same operations. No Stripe is configured here, so every plan is `not_synced` and
//! no sync job is ever queued.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    webhooks::{body, event_objects, ids},
};

const PLANS: &str = "/api/v1/plans";
const SEED: &str = "/api/v1/auth/plans/";
/// A well-formed plan id that names nothing.
const MISSING: &str = "plan_01m80000000000000000000000";

fn path(id: &str) -> String {
    format!("{PLANS}/{id}")
}

fn seed_path(id: &str) -> String {
    format!("{SEED}{id}/")
}

fn duplicate_path(id: &str) -> String {
    format!("{PLANS}/{id}/duplicate")
}

/// The smallest valid plan body.
fn plan(name: &str) -> Value {
    json!({"name": name, "price_cents": 2999, "billing_interval": "month"})
}

/// Creates a plan at the canonical path (201); returns it.
async fn create_plan(app: &TestApp, cred: &Cred, input: Value) -> Value {
    body(app.post(PLANS, cred, &input).await, StatusCode::CREATED).await
}

async fn plan_id(app: &TestApp, cred: &Cred, input: Value) -> String {
    s(&create_plan(app, cred, input).await["id"])
}

async fn get_plan(app: &TestApp, cred: &Cred, id: &str) -> Value {
    body(app.get(&path(id), cred).await, StatusCode::OK).await
}

async fn list(app: &TestApp, cred: &Cred, query: &str) -> Vec<String> {
    ids(&body(
        app.get(&format!("{PLANS}?{query}"), cred).await,
        StatusCode::OK,
    )
    .await)
}

/// Rows that must not change when a request is refused.
async fn written(app: &TestApp) -> [i64; 3] {
    [
        app.count("plans").await,
        app.count("events").await,
        app.count("jobs").await,
    ]
}

async fn patch(app: &TestApp, cred: &Cred, id: &str, change: Value) -> reqwest::Response {
    app.send(Method::PATCH, &path(id), cred, Some(&change))
        .await
}

#[tokio::test]
async fn creating_a_plan_at_the_seed_path_returns_201_with_its_display_price_trial_and_sync_state()
{
    let app = spawn_app().await;
    let t = app.register("seed-create@acme.com").await;
    let resp = app
        .post(
            SEED,
            &t.sk_test(),
            &json!({
                "name": "Professional",
                "description": "For growing teams",
                "price_cents": 2999,
                "currency": "usd",
                "billing_interval": "month",
                "trial_days": 14,
                "features": ["SSO", "Priority support"],
                "metadata": {"tier": "pro", "seats": "10"},
                "is_visible": false
            }),
        )
        .await;
    let p = body(resp, StatusCode::CREATED).await;
    let id = s(&p["id"]);
    assert!(id.starts_with("plan_"), "{id}");
    assert_eq!(p["object"], "plan");
    assert_eq!(p["name"], "Professional");
    assert_eq!(p["description"], "For growing teams");
    assert_eq!(p["price_cents"], 2999);
    assert_eq!(p["currency"], "usd");
    assert_eq!(p["billing_interval"], "month");
    assert_eq!(p["interval_count"], 1);
    assert_eq!(p["price_display"], "$29.99/month");
    assert_eq!(p["trial_days"], 14);
    assert_eq!(p["has_trial"], true);
    assert_eq!(p["features"], json!(["SSO", "Priority support"]));
    assert_eq!(p["metadata"], json!({"tier": "pro", "seats": "10"}));
    assert_eq!(p["is_active"], true);
    assert_eq!(p["is_visible"], false);
    assert!(p["duplicated_from"].is_null());
    assert_eq!(p["livemode"], false);
    assert!(p["stripe_product_id"].is_null() && p["stripe_price_id"].is_null());
    assert_eq!(p["sync_status"], "not_synced");
    assert!(p["sync_error"].is_null() && p["synced_at"].is_null());

    assert_eq!(get_plan(&app, &t.sk_test(), &id).await, p);
    let created = event_objects(&app, &t, false, "plan.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["id"], id.as_str());
    assert_eq!(created[0]["price_display"], "$29.99/month");
    assert_eq!(app.count("jobs").await, 0, "no Stripe, so no sync job");
}

#[tokio::test]
async fn creating_a_plan_at_the_canonical_path_applies_defaults_and_formats_every_kind_of_price() {
    let app = spawn_app().await;
    let t = app.register("canonical-create@acme.com").await;
    let basic = create_plan(&app, &t.sk_test(), plan("Basic")).await;
    assert_eq!(basic["description"], "");
    assert_eq!(basic["currency"], "usd");
    assert_eq!(basic["interval_count"], 1);
    assert_eq!(basic["trial_days"], 0);
    assert_eq!(basic["has_trial"], false);
    assert_eq!(basic["features"], json!([]));
    assert_eq!(basic["metadata"], json!({}));
    assert_eq!(basic["is_active"], true);
    assert_eq!(basic["is_visible"], true);
    assert_eq!(basic["price_display"], "$29.99/month");
    assert_eq!(basic["sync_status"], "not_synced");

    let cases = [
        (
            json!({"name": "Yen", "price_cents": 500, "currency": "JPY", "billing_interval": "month"}),
            "jpy",
            "month",
            1,
            "¥500/month",
        ),
        (
            json!({"name": "Quarterly-ish", "price_cents": 10000, "billing_interval": "month",
                   "interval_count": 3}),
            "usd",
            "month",
            3,
            "$100.00 every 3 months",
        ),
        (
            json!({"name": "Annual", "price_cents": 29000, "billing_interval": "yearly"}),
            "usd",
            "year",
            1,
            "$290.00/year",
        ),
        (
            json!({"name": "Euro weekly", "price_cents": 750, "currency": "eur",
                   "billing_interval": "week", "interval_count": 2}),
            "eur",
            "week",
            2,
            "€7.50 every 2 weeks",
        ),
    ];
    for (input, currency, interval, count, display) in cases {
        let p = create_plan(&app, &t.sk_test(), input.clone()).await;
        assert_eq!(p["currency"], currency, "{input}");
        assert_eq!(p["billing_interval"], interval, "{input}");
        assert_eq!(p["interval_count"], count, "{input}");
        assert_eq!(p["price_display"], display, "{input}");
        assert_eq!(p["sync_status"], "not_synced", "{input}");
    }
    assert_eq!(
        event_objects(&app, &t, false, "plan.created").await.len(),
        5
    );
    assert_eq!(app.count("jobs").await, 0);
}

#[tokio::test]
async fn invalid_plans_fail_validation_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let t = app.register("invalid-plan@acme.com").await;
    let with = |change: Value| {
        let mut p = plan("Valid");
        for (k, v) in change.as_object().unwrap() {
            p[k] = v.clone();
        }
        p
    };
    let many_keys: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    let cases = [
        (with(json!({"price_cents": -1})), "price_cents"),
        (with(json!({"currency": "xyz"})), "currency"),
        (
            with(json!({"billing_interval": "fortnight"})),
            "billing_interval",
        ),
        (with(json!({"interval_count": 13})), "interval_count"),
        (with(json!({"interval_count": 0})), "interval_count"),
        (with(json!({"trial_days": 731})), "trial_days"),
        (with(json!({"name": ""})), "name"),
        (with(json!({"name": "   "})), "name"),
        (with(json!({"color": "red"})), "color"),
        (with(json!({"metadata": many_keys})), "metadata"),
        (with(json!({"metadata": {"k".repeat(41): "v"}})), "metadata"),
        (
            json!({"name": "No interval", "price_cents": 100}),
            "billing_interval",
        ),
    ];
    let before = written(&app).await;
    for (input, field) in cases {
        for at in [PLANS, SEED] {
            let resp = app.post(at, &t.sk_test(), &input).await;
            let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
            assert_eq!(problem["field"], field, "{at} {input}");
        }
    }
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn the_longest_interval_and_trial_and_the_most_metadata_allowed_are_accepted() {
    let app = spawn_app().await;
    let t = app.register("limits-plan@acme.com").await;
    let mut metadata: serde_json::Map<String, Value> =
        (0..49).map(|i| (format!("k{i}"), json!("v"))).collect();
    metadata.insert("k".repeat(40), json!("v".repeat(500)));
    let p = create_plan(
        &app,
        &t.sk_test(),
        json!({"name": "Limits", "price_cents": 0, "billing_interval": "month",
               "interval_count": 12, "trial_days": 730, "metadata": metadata}),
    )
    .await;
    assert_eq!(p["interval_count"], 12);
    assert_eq!(p["trial_days"], 730);
    assert_eq!(p["metadata"].as_object().unwrap().len(), 50);
    assert_eq!(p["price_display"], "$0.00 every 12 months");
}

#[tokio::test]
async fn plan_names_are_unique_per_tenant_and_mode_ignoring_case() {
    let app = spawn_app().await;
    let a = app.register("unique-a@acme.com").await;
    let b = app.register("unique-b@acme.com").await;
    let pro = plan_id(&app, &a.sk_test(), plan("Pro")).await;
    let other = plan_id(&app, &a.sk_test(), plan("Starter")).await;
    let before = written(&app).await;
    for name in ["Pro", "pro", " PRO "] {
        let resp = app.post(PLANS, &a.sk_test(), &plan(name)).await;
        let problem = assert_problem(resp, StatusCode::CONFLICT, "plan_name_taken").await;
        assert_eq!(problem["field"], "name", "{name}");
    }
    let resp = app.post(SEED, &a.jwt(), &plan("pRo")).await;
    assert_problem(resp, StatusCode::CONFLICT, "plan_name_taken").await;
    // Renaming another plan onto the name is refused too.
    let resp = patch(&app, &a.sk_test(), &other, json!({"name": "PRO"})).await;
    let problem = assert_problem(resp, StatusCode::CONFLICT, "plan_name_taken").await;
    assert_eq!(problem["field"], "name");
    assert_eq!(written(&app).await, before);
    assert_eq!(
        get_plan(&app, &a.sk_test(), &other).await["name"],
        "Starter"
    );

    // The same name is free in live mode and in another tenant.
    let live = create_plan(&app, &a.sk_live(), plan("Pro")).await;
    assert_eq!(live["livemode"], true);
    let theirs = create_plan(&app, &b.sk_test(), plan("Pro")).await;
    assert_ne!(theirs["id"], pro.as_str());
    assert_eq!(app.count("plans").await, 4);
}

#[tokio::test]
async fn plans_are_listed_newest_first_and_filtered_by_active_interval_and_search() {
    let app = spawn_app().await;
    let t = app.register("list-plans@acme.com").await;
    let sk = t.sk_test();
    let starter_m = plan_id(&app, &sk, plan("Starter Monthly")).await;
    let starter_y = plan_id(
        &app,
        &sk,
        json!({"name": "Starter Yearly", "price_cents": 29900, "billing_interval": "year"}),
    )
    .await;
    let pro_m = plan_id(&app, &sk, plan("Pro Monthly")).await;
    let percent = plan_id(&app, &sk, plan("100% Off")).await;
    let underscore = plan_id(&app, &sk, plan("Team_Plan")).await;
    let lookalike = plan_id(&app, &sk, plan("TeamXPlan")).await;
    body(
        app.send(Method::DELETE, &path(&pro_m), &sk, None).await,
        StatusCode::OK,
    )
    .await;

    let all = body(app.get(PLANS, &sk).await, StatusCode::OK).await;
    assert_eq!(
        ids(&all),
        vec![
            lookalike.clone(),
            underscore.clone(),
            percent.clone(),
            pro_m.clone(),
            starter_y.clone(),
            starter_m.clone(),
        ]
    );
    assert_eq!(all["has_more"], false);
    assert_eq!(
        list(&app, &sk, "is_active=false").await,
        vec![pro_m.clone()]
    );
    assert_eq!(
        list(&app, &sk, "is_active=true").await,
        vec![
            lookalike.clone(),
            underscore.clone(),
            percent.clone(),
            starter_y.clone(),
            starter_m.clone(),
        ]
    );
    assert_eq!(
        list(&app, &sk, "billing_interval=year").await,
        vec![starter_y.clone()]
    );
    let monthly = vec![
        lookalike.clone(),
        underscore.clone(),
        percent.clone(),
        pro_m.clone(),
        starter_m.clone(),
    ];
    assert_eq!(list(&app, &sk, "billing_interval=month").await, monthly);
    assert_eq!(list(&app, &sk, "billing_interval=monthly").await, monthly);
    for q in ["starter", "STARTER", "sTaRt"] {
        assert_eq!(
            list(&app, &sk, &format!("search={q}")).await,
            vec![starter_y.clone(), starter_m.clone()],
            "{q}"
        );
    }
    // `%` and `_` are literal characters, not wildcards.
    assert_eq!(list(&app, &sk, "search=%25").await, vec![percent.clone()]);
    assert_eq!(list(&app, &sk, "search=_").await, vec![underscore.clone()]);
    assert_eq!(
        list(&app, &sk, "search=m_p").await,
        vec![underscore.clone()]
    );
    assert!(list(&app, &sk, "search=nothing-like-it").await.is_empty());
    assert_eq!(
        list(
            &app,
            &sk,
            "is_active=true&billing_interval=month&search=starter"
        )
        .await,
        vec![starter_m.clone()]
    );

    // The seed path lists the same way.
    let seed = body(
        app.get(&format!("{SEED}?billing_interval=year"), &sk).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&seed), vec![starter_y.clone()]);
    let seed = body(
        app.get(&format!("{SEED}?is_active=false"), &t.jwt()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&seed), vec![pro_m.clone()]);

    let problem = assert_problem(
        app.get(&format!("{PLANS}?billing_interval=fortnight"), &sk)
            .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(problem["field"], "billing_interval");
}

#[tokio::test]
async fn plans_are_listed_one_page_at_a_time_at_both_paths() {
    let app = spawn_app().await;
    let t = app.register("page-plans@acme.com").await;
    let mut created = Vec::new();
    for i in 0..3 {
        created.push(plan_id(&app, &t.sk_test(), plan(&format!("Plan {i}"))).await);
    }
    created.reverse(); // newest first

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for (i, expected_more) in [true, true, false].into_iter().enumerate() {
        let url = match &cursor {
            None => format!("{PLANS}?limit=1"),
            Some(c) => format!("{PLANS}?limit=1&starting_after={c}"),
        };
        let page = body(app.get(&url, &t.sk_test()).await, StatusCode::OK).await;
        let got = ids(&page);
        assert_eq!(got, vec![created[i].clone()], "page {i}");
        assert_eq!(page["has_more"], expected_more, "page {i}");
        cursor = got.first().cloned();
        seen.extend(got);
    }
    assert_eq!(seen, created);

    let first = body(
        app.get(&format!("{SEED}?limit=2"), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&first), created[..2].to_vec());
    assert_eq!(first["has_more"], true);
    let rest = body(
        app.get(
            &format!("{SEED}?limit=2&starting_after={}", created[1]),
            &t.sk_test(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&rest), created[2..].to_vec());
    assert_eq!(rest["has_more"], false);
}

#[tokio::test]
async fn a_plan_reads_the_same_at_its_canonical_and_seed_paths() {
    let app = spawn_app().await;
    let t = app.register("get-plan@acme.com").await;
    let created = create_plan(&app, &t.sk_test(), plan("Readable")).await;
    let id = s(&created["id"]);
    let canonical = get_plan(&app, &t.sk_test(), &id).await;
    let seed = body(app.get(&seed_path(&id), &t.sk_test()).await, StatusCode::OK).await;
    assert_eq!(canonical, created);
    assert_eq!(seed, created);
    let by_jwt = body(app.get(&seed_path(&id), &t.jwt()).await, StatusCode::OK).await;
    assert_eq!(by_jwt, created);
    for missing in [MISSING, "prod_01m80000000000000000000000", "nonsense"] {
        assert_problem(
            app.get(&path(missing), &t.sk_test()).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
}

#[tokio::test]
async fn patch_changes_name_description_features_metadata_visibility_and_trial_recording_updated_events()
 {
    let app = spawn_app().await;
    let t = app.register("patch-plan@acme.com").await;
    let id = plan_id(&app, &t.sk_test(), plan("Old name")).await;
    let steps = [
        json!({"name": "New name"}),
        json!({"description": "Now with more"}),
        json!({"features": ["API", "Webhooks"]}),
        json!({"metadata": {"tier": "gold"}}),
        json!({"is_visible": false}),
        json!({"trial_days": 30}),
    ];
    for (i, step) in steps.iter().enumerate() {
        body(
            patch(&app, &t.sk_test(), &id, step.clone()).await,
            StatusCode::OK,
        )
        .await;
        let updated = event_objects(&app, &t, false, "plan.updated").await;
        assert_eq!(updated.len(), i + 1, "after {step}");
        assert_eq!(updated[i]["id"], id.as_str());
    }
    let p = get_plan(&app, &t.sk_test(), &id).await;
    assert_eq!(p["name"], "New name");
    assert_eq!(p["description"], "Now with more");
    assert_eq!(p["features"], json!(["API", "Webhooks"]));
    assert_eq!(p["metadata"], json!({"tier": "gold"}));
    assert_eq!(p["is_visible"], false);
    assert_eq!(p["trial_days"], 30);
    assert_eq!(p["has_trial"], true);
    // The terms are untouched.
    assert_eq!(p["price_cents"], 2999);
    assert_eq!(p["price_display"], "$29.99/month");
    assert_eq!(p["sync_status"], "not_synced");
    let last = event_objects(&app, &t, false, "plan.updated").await;
    assert_eq!(last[5]["trial_days"], 30);

    // The seed path patches too; dropping the trial clears has_trial.
    let resp = app
        .send(
            Method::PATCH,
            &seed_path(&id),
            &t.jwt(),
            Some(&json!({"trial_days": 0, "is_visible": true})),
        )
        .await;
    let p = body(resp, StatusCode::OK).await;
    assert_eq!(p["trial_days"], 0);
    assert_eq!(p["has_trial"], false);
    assert_eq!(p["is_visible"], true);
    assert_eq!(p["name"], "New name");
    assert_eq!(
        event_objects(&app, &t, false, "plan.updated").await.len(),
        7
    );
    assert_eq!(app.count("jobs").await, 0);
}

#[tokio::test]
async fn price_currency_and_interval_are_immutable_and_a_patch_naming_one_changes_nothing() {
    let app = spawn_app().await;
    let t = app.register("immutable-plan@acme.com").await;
    let id = plan_id(&app, &t.sk_test(), plan("Fixed")).await;
    let before_row = get_plan(&app, &t.sk_test(), &id).await;
    let before = written(&app).await;
    for (field, value) in [
        ("price_cents", json!(4999)),
        ("currency", json!("eur")),
        ("billing_interval", json!("year")),
        ("interval_count", json!(2)),
    ] {
        // Even alongside an allowed change, nothing is applied.
        let mut change = json!({"name": "Renamed", "trial_days": 7});
        change[field] = value;
        for at in [path(&id), seed_path(&id)] {
            let resp = app
                .send(Method::PATCH, &at, &t.sk_test(), Some(&change))
                .await;
            let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "immutable_field").await;
            assert_eq!(problem["field"], field, "{at}");
        }
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(get_plan(&app, &t.sk_test(), &id).await, before_row);
    assert!(
        event_objects(&app, &t, false, "plan.updated")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn invalid_patches_fail_validation_naming_the_field_and_change_nothing() {
    let app = spawn_app().await;
    let t = app.register("invalid-patch@acme.com").await;
    let id = plan_id(&app, &t.sk_test(), plan("Steady")).await;
    let before_row = get_plan(&app, &t.sk_test(), &id).await;
    let before = written(&app).await;
    let many_keys: serde_json::Map<String, Value> =
        (0..51).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (change, field) in [
        (json!({"name": "  "}), "name"),
        (json!({"trial_days": 731}), "trial_days"),
        (json!({"features": [""]}), "features"),
        (json!({"metadata": many_keys}), "metadata"),
        (json!({"metadata": {"k".repeat(41): "v"}}), "metadata"),
        (json!({"is_visible": "yes"}), "is_visible"),
        (json!({"color": "red"}), "color"),
    ] {
        let resp = patch(&app, &t.sk_test(), &id, change.clone()).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{change}");
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(get_plan(&app, &t.sk_test(), &id).await, before_row);
}

#[tokio::test]
async fn deleting_a_plan_deactivates_it_but_keeps_it_readable_and_listed_as_inactive() {
    let app = spawn_app().await;
    let t = app.register("delete-plan@acme.com").await;
    let first = plan_id(&app, &t.sk_test(), plan("First")).await;
    let second = plan_id(&app, &t.sk_test(), plan("Second")).await;
    let kept = plan_id(&app, &t.sk_test(), plan("Kept")).await;

    let gone = body(
        app.send(Method::DELETE, &path(&first), &t.sk_test(), None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(gone["id"], first.as_str());
    assert_eq!(gone["is_active"], false);
    let gone = body(
        app.send(Method::DELETE, &seed_path(&second), &t.jwt(), None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(gone["is_active"], false);

    for id in [&first, &second] {
        let p = get_plan(&app, &t.sk_test(), id).await;
        assert_eq!(p["is_active"], false);
        assert!(p["name"].is_string());
    }
    assert_eq!(get_plan(&app, &t.sk_test(), &kept).await["is_active"], true);
    assert_eq!(
        list(&app, &t.sk_test(), "is_active=false").await,
        vec![second.clone(), first.clone()]
    );
    assert_eq!(
        list(&app, &t.sk_test(), "is_active=true").await,
        vec![kept.clone()]
    );
    let events = event_objects(&app, &t, false, "plan.deactivated").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["id"], first.as_str());
    assert_eq!(events[0]["is_active"], false);
    assert_eq!(events[1]["id"], second.as_str());
    assert_eq!(app.count("plans").await, 3);
}

#[tokio::test]
async fn duplicating_a_plan_copies_its_terms_under_a_new_name_and_price() {
    let app = spawn_app().await;
    let t = app.register("dup-plan@acme.com").await;
    let original = create_plan(
        &app,
        &t.sk_test(),
        json!({"name": "Pro", "description": "The pro plan", "price_cents": 2999,
               "currency": "eur", "billing_interval": "month", "interval_count": 6,
               "trial_days": 30, "features": ["SSO"], "metadata": {"tier": "pro"},
               "is_visible": false}),
    )
    .await;
    let id = s(&original["id"]);
    let resp = app
        .post(
            &duplicate_path(&id),
            &t.sk_test(),
            &json!({"name": "Pro 2026", "price_cents": 3999}),
        )
        .await;
    let copy = body(resp, StatusCode::CREATED).await;
    assert_ne!(copy["id"], original["id"]);
    assert!(s(&copy["id"]).starts_with("plan_"));
    assert_eq!(copy["duplicated_from"], id.as_str());
    assert_eq!(copy["name"], "Pro 2026");
    assert_eq!(copy["price_cents"], 3999);
    assert_eq!(copy["price_display"], "€39.99 every 6 months");
    for field in [
        "description",
        "currency",
        "billing_interval",
        "interval_count",
        "trial_days",
        "has_trial",
        "features",
        "metadata",
        "is_visible",
    ] {
        assert_eq!(copy[field], original[field], "{field}");
    }
    assert_eq!(copy["is_active"], true);
    assert_eq!(copy["sync_status"], "not_synced");
    assert_eq!(get_plan(&app, &t.sk_test(), &s(&copy["id"])).await, copy);

    // Without a price the original's is kept; the seed path duplicates too.
    let resp = app
        .post(
            &format!("{SEED}{id}/duplicate/"),
            &t.jwt(),
            &json!({"name": "Pro copy"}),
        )
        .await;
    let same_price = body(resp, StatusCode::CREATED).await;
    assert_eq!(same_price["price_cents"], 2999);
    assert_eq!(same_price["duplicated_from"], id.as_str());

    let created = event_objects(&app, &t, false, "plan.created").await;
    assert_eq!(created.len(), 3);
    assert_eq!(created[1]["id"], copy["id"]);
    assert_eq!(created[1]["duplicated_from"], id.as_str());

    // A taken name (in any case) is refused and nothing is written.
    let before = written(&app).await;
    for name in ["Pro", "pro 2026"] {
        let resp = app
            .post(&duplicate_path(&id), &t.sk_test(), &json!({"name": name}))
            .await;
        let problem = assert_problem(resp, StatusCode::CONFLICT, "plan_name_taken").await;
        assert_eq!(problem["field"], "name");
    }
    let resp = app
        .post(
            &duplicate_path(&id),
            &t.sk_test(),
            &json!({"name": "Cheaper", "price_cents": -1}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "price_cents");
    let resp = app
        .post(
            &duplicate_path(MISSING),
            &t.sk_test(),
            &json!({"name": "Orphan"}),
        )
        .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn billing_users_can_read_plans_but_not_create_change_deactivate_or_duplicate_them() {
    let app = spawn_app().await;
    let t = app.register("billing-plans@acme.com").await;
    let (token, _) = app.user_with_role(&t, "billing@acme.com", "billing").await;
    let billing = Cred::Bearer(token);
    let id = plan_id(&app, &t.sk_test(), plan("Readable")).await;
    assert_eq!(list(&app, &billing, "").await, vec![id.clone()]);
    let seed = body(app.get(SEED, &billing).await, StatusCode::OK).await;
    assert_eq!(ids(&seed), vec![id.clone()]);
    assert_eq!(get_plan(&app, &billing, &id).await["name"], "Readable");

    let before_row = get_plan(&app, &t.sk_test(), &id).await;
    let before = written(&app).await;
    let attempts = [
        (Method::POST, PLANS.to_owned(), Some(plan("Mine"))),
        (Method::POST, SEED.to_owned(), Some(plan("Mine"))),
        (Method::PATCH, path(&id), Some(json!({"name": "Mine"}))),
        (Method::PATCH, seed_path(&id), Some(json!({"name": "Mine"}))),
        (Method::DELETE, path(&id), None),
        (Method::DELETE, seed_path(&id), None),
        (
            Method::POST,
            duplicate_path(&id),
            Some(json!({"name": "Mine"})),
        ),
    ];
    for (method, p, b) in attempts {
        let resp = app.send(method.clone(), &p, &billing, b.as_ref()).await;
        assert_problem(resp, StatusCode::FORBIDDEN, "permission_denied").await;
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(get_plan(&app, &t.sk_test(), &id).await, before_row);
}

#[tokio::test]
async fn secret_keys_and_developers_can_create_plans_and_publishable_keys_are_refused() {
    let app = spawn_app().await;
    let t = app.register("keys-plans@acme.com").await;
    let by_key = create_plan(&app, &t.sk_test(), plan("By key")).await;
    assert_eq!(by_key["livemode"], false);
    let (dev, _) = app
        .user_with_role(&t, "dev-plans@acme.com", "developer")
        .await;
    create_plan(&app, &Cred::Bearer(dev), plan("By developer")).await;
    create_plan(&app, &Cred::XApiKey(t.sk_test.clone()), plan("By header")).await;
    assert_eq!(app.count("plans").await, 3);

    let id = s(&by_key["id"]);
    let before = written(&app).await;
    for pk in [
        Cred::Bearer(t.pk_test.clone()),
        Cred::XApiKey(t.pk_test.clone()),
    ] {
        for (method, p, b) in [
            (Method::GET, PLANS.to_owned(), None),
            (Method::GET, path(&id), None),
            (Method::POST, PLANS.to_owned(), Some(plan("Public"))),
            (Method::POST, SEED.to_owned(), Some(plan("Public"))),
            (Method::PATCH, path(&id), Some(json!({"name": "Public"}))),
            (Method::DELETE, path(&id), None),
        ] {
            let resp = app.send(method, &p, &pk, b.as_ref()).await;
            assert_problem(resp, StatusCode::FORBIDDEN, "secret_key_required").await;
        }
    }
    assert_eq!(written(&app).await, before);
    assert_problem(
        app.post(PLANS, &Cred::None, &plan("Anonymous")).await,
        StatusCode::UNAUTHORIZED,
        "missing_credentials",
    )
    .await;
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn another_tenants_plan_answers_404_exactly_like_a_missing_one_and_stays_unchanged() {
    let app = spawn_app().await;
    let a = app.register("owner@plans-a.com").await;
    let b = app.register("owner@plans-b.com").await;
    let id = plan_id(&app, &a.sk_test(), plan("Ours")).await;
    let before_row = get_plan(&app, &a.sk_test(), &id).await;
    let before = written(&app).await;
    let change = json!({"name": "Theirs", "trial_days": 3});
    let dup = json!({"name": "Stolen"});
    for cred in [b.sk_test(), b.sk_live(), b.jwt()] {
        for (method, suffix, payload) in [
            (Method::GET, "", None),
            (Method::PATCH, "", Some(&change)),
            (Method::DELETE, "", None),
            (Method::POST, "/duplicate", Some(&dup)),
        ] {
            let theirs = app
                .send(
                    method.clone(),
                    &format!("{}{suffix}", path(&id)),
                    &cred,
                    payload,
                )
                .await;
            let theirs = assert_problem(theirs, StatusCode::NOT_FOUND, "resource_missing").await;
            let nothing = app
                .send(
                    method.clone(),
                    &format!("{}{suffix}", path(MISSING)),
                    &cred,
                    payload,
                )
                .await;
            let nothing = assert_problem(nothing, StatusCode::NOT_FOUND, "resource_missing").await;
            assert_eq!(theirs, nothing, "{method} {suffix} with {cred:?}");
        }
        let seed = app.get(&seed_path(&id), &cred).await;
        assert_problem(seed, StatusCode::NOT_FOUND, "resource_missing").await;
        assert!(list(&app, &cred, "").await.is_empty());
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(get_plan(&app, &a.sk_test(), &id).await, before_row);
}

#[tokio::test]
async fn a_live_mode_plan_is_invisible_to_test_mode_credentials() {
    let app = spawn_app().await;
    let t = app.register("modes-plans@acme.com").await;
    let live = create_plan(&app, &t.sk_live(), plan("Live")).await;
    let id = s(&live["id"]);
    assert_eq!(live["livemode"], true);
    assert_eq!(live["sync_status"], "not_synced");
    let test = plan_id(&app, &t.sk_test(), plan("Test")).await;
    let before = written(&app).await;
    for cred in [t.sk_test(), t.jwt()] {
        for (method, suffix, payload) in [
            (Method::GET, "", None),
            (Method::PATCH, "", Some(json!({"name": "Moved"}))),
            (Method::DELETE, "", None),
            (Method::POST, "/duplicate", Some(json!({"name": "Copied"}))),
        ] {
            let resp = app
                .send(
                    method.clone(),
                    &format!("{}{suffix}", path(&id)),
                    &cred,
                    payload.as_ref(),
                )
                .await;
            assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        }
        assert_eq!(list(&app, &cred, "").await, vec![test.clone()]);
    }
    assert_eq!(written(&app).await, before);
    assert_eq!(list(&app, &t.sk_live(), "").await, vec![id.clone()]);
    // The owner's JWT reaches live mode when it asks for it.
    let resp = app
        .req(Method::GET, &path(&id), &t.jwt())
        .header("X-Mode", "live")
        .send()
        .await
        .unwrap();
    assert_eq!(body(resp, StatusCode::OK).await, live);
    let events = event_objects(&app, &t, true, "plan.created").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["livemode"], true);
}

#[tokio::test]
async fn deactivating_a_plan_twice_records_one_event() {
    let app = spawn_app().await;
    let t = app.register("twice@acme.com").await;
    let id = plan_id(&app, &t.sk_test(), plan("Once")).await;
    for _ in 0..2 {
        let resp = app
            .send(Method::DELETE, &path(&id), &t.sk_test(), None)
            .await;
        assert_eq!(body(resp, StatusCode::OK).await["is_active"], false);
    }
    assert_eq!(
        event_objects(&app, &t, false, "plan.deactivated")
            .await
            .len(),
        1
    );
    let resp = app
        .send(Method::PATCH, &path(&id), &t.sk_test(), Some(&json!({})))
        .await;
    body(resp, StatusCode::OK).await;
    assert_eq!(
        event_objects(&app, &t, false, "plan.updated").await.len(),
        0
    );
}

/// The product id and the price id a plan is stored as.
fn product_and_price(plan: &Value) -> (String, String) {
    let id = shared::ids::PlanId::parse(&s(&plan["id"])).expect("a plan id");
    let product = shared::ids::ProductId::from_uuid(id.as_uuid()).to_string();
    (product, s(&plan["price_id"]))
}

#[tokio::test]
async fn a_plan_is_a_product_with_one_recurring_flat_price_that_carries_its_trial() {
    let app = spawn_app().await;
    let t = app.register("plan-as-product@acme.com").await;
    let cred = t.sk_test();
    let pro = create_plan(
        &app,
        &cred,
        json!({"name": "Pro", "price_cents": 4900, "currency": "eur",
               "billing_interval": "quarter", "trial_days": 14, "metadata": {"tier": "2"}}),
    )
    .await;
    let (product_id, price_id) = product_and_price(&pro);
    let product = body(
        app.get(&format!("/api/v1/products/{product_id}"), &cred)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(product["name"], "Pro");
    assert_eq!(product["metadata"], json!({"tier": "2"}));
    let price = body(
        app.get(&format!("/api/v1/prices/{price_id}"), &cred).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(price["product_id"], product_id.as_str());
    assert_eq!(price["currency"], "eur");
    assert_eq!(price["interval"], "quarter");
    assert_eq!(price["pricing"], json!({"type": "flat", "amount": 4900}));
    let trial: i32 = sqlx::query_scalar("SELECT trial_days FROM prices WHERE plan")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(trial, 14);
    // Renaming the product renames the plan: one object, two ways to reach it.
    let renamed = app
        .send(
            Method::PATCH,
            &format!("/api/v1/products/{product_id}"),
            &cred,
            Some(&json!({"name": "Pro 2"})),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(get_plan(&app, &cred, &s(&pro["id"])).await["name"], "Pro 2");
    // A plan's name stays unique among plans, whichever path renames it.
    create_plan(&app, &cred, plan("Basic")).await;
    let clash = app
        .send(
            Method::PATCH,
            &format!("/api/v1/products/{product_id}"),
            &cred,
            Some(&json!({"name": "basic"})),
        )
        .await;
    assert_problem(clash, StatusCode::CONFLICT, "plan_name_taken").await;
    // Deactivating the plan archives the product and the price.
    let gone = app
        .send(Method::DELETE, &path(&s(&pro["id"])), &cred, None)
        .await;
    assert_eq!(gone.status(), StatusCode::OK);
    let actives: (bool, bool) = sqlx::query_as(
        "SELECT p.active, pr.active FROM products p JOIN prices pr ON pr.product_id = p.id \
         WHERE p.name = 'Pro 2'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(actives, (false, false));
}

/// Plans stored before plans became products keep their ids, terms and Stripe state through the
/// migration and answer at the same paths; a sync still owed to Stripe becomes the product's
/// and the price's.
#[tokio::test]
async fn plans_stored_before_plans_were_products_keep_their_ids_terms_and_owed_syncs() {
    use shared::domain::{
        api_key::{GeneratedKey, KeyKind},
        mode::Mode,
    };
    use uuid::Uuid;

    let url = crate::helpers::fresh_database_url().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // The schema as it stood before.
    let dir = std::env::temp_dir().join(format!("migrations-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for entry in std::fs::read_dir(&src).unwrap() {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "20261130000006" {
            std::fs::copy(&file, dir.join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    let tenant = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tenants (id, company_name, slug, email, webhook_secret_enc, \
         webhook_secret_last4) VALUES ($1, 'Old', 'old', 'old@acme.com', '\\x00', '0000')",
    )
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    let key = GeneratedKey::generate(KeyKind::Secret, Mode::Test);
    sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, livemode, kind, key_hash, prefix, last4) \
         VALUES ($1, $2, FALSE, 'secret', $3, 'sk_test_', $4)",
    )
    .bind(Uuid::now_v7())
    .bind(tenant)
    .bind(&key.hash[..])
    .bind(&key.last4)
    .execute(&pool)
    .await
    .unwrap();
    // Starter owes Stripe a change; Plus, duplicated from it and deactivated, is synced.
    let (starter, plus) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO plans (id, tenant_id, livemode, name, description, amount, currency, \
         interval, interval_count, trial_days, features, metadata, is_active, is_visible, \
         duplicated_from, stripe_product_id, stripe_price_id, sync_status, sync_version, \
         synced_version, synced_at, created_at, updated_at) VALUES \
         ($1, $3, FALSE, 'Starter', 'For starters', 2999, 'usd', 'month', 1, 14, '[\"x\"]', \
          '{\"k\": \"v\"}', TRUE, FALSE, NULL, 'prod_S1', 'price_S1', 'pending', 2, 1, \
          '2026-11-01T00:00:00Z', '2026-10-01T00:00:00Z', '2026-11-02T00:00:00Z'), \
         ($2, $3, FALSE, 'Starter Plus', '', 4999, 'usd', 'year', 1, 0, '[]', '{}', FALSE, \
          TRUE, $1, 'prod_S2', 'price_S2', 'synced', 1, 1, '2026-11-03T00:00:00Z', \
          '2026-10-02T00:00:00Z', '2026-11-03T00:00:00Z')",
    )
    .bind(starter)
    .bind(plus)
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO jobs (id, queue, kind, tenant_id, livemode, payload, max_attempts, run_at, \
         created_at, updated_at) VALUES ($1, 'stripe_sync', 'stripe.sync_plan', $2, FALSE, \
         jsonb_build_object('id', $1), 10, now(), now(), now())",
    )
    .bind(starter)
    .bind(tenant)
    .execute(&pool)
    .await
    .unwrap();

    // The app migrates the rest on start.
    let app = crate::helpers::spawn_app_with(&[("DATABASE_URL", &url)]).await;
    let cred = Cred::Bearer(key.full.clone());
    let starter_id = shared::ids::PlanId::from_uuid(starter).to_string();
    let plus_id = shared::ids::PlanId::from_uuid(plus).to_string();
    let s1 = get_plan(&app, &cred, &starter_id).await;
    assert_eq!(
        (
            s1["name"].clone(),
            s1["description"].clone(),
            s1["price_cents"].clone()
        ),
        (json!("Starter"), json!("For starters"), json!(2999))
    );
    assert_eq!(s1["price_display"], "$29.99/month");
    assert_eq!(
        (s1["trial_days"].clone(), s1["has_trial"].clone()),
        (json!(14), json!(true))
    );
    assert_eq!(s1["features"], json!(["x"]));
    assert_eq!(s1["metadata"], json!({"k": "v"}));
    assert_eq!(
        (s1["is_active"].clone(), s1["is_visible"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(s1["stripe_product_id"], "prod_S1");
    assert_eq!(s1["stripe_price_id"], "price_S1");
    assert_eq!(s1["sync_status"], "pending");
    assert_eq!(s1["created_at"], "2026-10-01T00:00:00+00:00");
    let p2 = body(app.get(&seed_path(&plus_id), &cred).await, StatusCode::OK).await;
    assert_eq!(p2["duplicated_from"], starter_id.as_str());
    assert_eq!(p2["billing_interval"], "year");
    assert_eq!(p2["is_active"], false);
    assert_eq!(p2["sync_status"], "synced");
    assert_eq!(p2["synced_at"], "2026-11-03T00:00:00+00:00");
    assert_eq!(
        list(&app, &cred, "").await,
        vec![plus_id.clone(), starter_id.clone()]
    );
    // The plan is its product and its price.
    let (product_id, price_id) = product_and_price(&s1);
    let product = body(
        app.get(&format!("/api/v1/products/{product_id}"), &cred)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(product["name"], "Starter");
    assert_eq!(product["stripe_product_id"], "prod_S1");
    let price = body(
        app.get(&format!("/api/v1/prices/{price_id}"), &cred).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(price["stripe_price_id"], "price_S1");
    assert_eq!(price["product_id"], product_id.as_str());
    // The sync owed for the plan is its product's job now (it brings the price along).
    let jobs: Vec<(String, Uuid, String)> =
        sqlx::query_as("SELECT kind, (payload->>'id')::uuid, state FROM jobs")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs,
        vec![("stripe.sync_product".into(), starter, "pending".into())]
    );
    // Names stay unique among plans, whatever the case.
    let taken = app.post(PLANS, &cred, &plan("starter PLUS")).await;
    assert_problem(taken, StatusCode::CONFLICT, "plan_name_taken").await;
}
