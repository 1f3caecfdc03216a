//! Billing runs as a tenant sees them: the runs that found its billing work due, with what
//! they queued and how it went; another tenant's or mode's are not found.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    helpers::{assert_problem, s, spawn_app},
    subscriptions::{get, json_of, run_due, scope, subscribe},
};

const DAY: Duration = Duration::from_secs(86_400);

#[tokio::test]
async fn a_run_shows_what_it_found_due_queued_and_how_it_went_to_its_tenant_and_mode_only() {
    let app = spawn_app().await;
    let t = app.register("runs@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let plan = json_of(
        app.post(
            "/api/v1/plans",
            &key,
            &json!({"name": "Seat", "price_cents": 1500, "billing_interval": "month"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let mut subs = Vec::new();
    for i in 0..3 {
        let customer = json_of(
            app.post(
                "/api/v1/customers",
                &key,
                &json!({"name": format!("Customer {i}")}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        let c = s(&customer["id"]);
        json_of(
            app.post(
                &format!("/api/v1/customers/{c}/payment-methods"),
                &key,
                &json!({"token": "4242424242424242", "exp_month": 12, "exp_year": 2040}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
        let sub = subscribe(
            &app,
            &key,
            json!({"customer": c, "items": [{"plan": plan["id"]}]}),
        )
        .await;
        subs.push(s(&sub["id"]));
    }
    run_due(&app, scope).await;
    // The renewals wait, scheduled: nothing is due yet.
    let scheduled: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE kind = 'subscription.renew' AND state = 'scheduled'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(scheduled, 3);
    // A month on, a run queues the three renewals (and the expiry checks, due by then).
    app.clock.advance(DAY * 32);
    let ran = run_due(&app, scope).await;
    assert_eq!(
        ran.iter().filter(|k| *k == "subscription.renew").count(),
        3,
        "{ran:?}"
    );
    let list = get(&app, &key, "/api/v1/billing-runs").await;
    let runs = list["data"].as_array().unwrap();
    let busy: Vec<&serde_json::Value> = runs.iter().filter(|r| r["due"] == 6).collect();
    assert_eq!(busy.len(), 1, "{list}");
    let run = busy[0];
    assert!(s(&run["id"]).starts_with("brun_"));
    assert_eq!(run["object"], "billing_run");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["enqueued"], 6);
    assert_eq!(run["livemode"], false);
    // Its jobs have all run (the test stands in for the workers): completed, with the tally
    // kept once its jobs are gone.
    assert_eq!(run["succeeded"], 6);
    assert_eq!(run["status"], "enqueued");
    let id = s(&run["id"]);
    shared::db::billing_runs::complete_finished(&app.pool, chrono::Utc::now())
        .await
        .unwrap();
    sqlx::query("DELETE FROM jobs WHERE billing_run_id IS NOT NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    let done = get(&app, &key, &format!("/api/v1/billing-runs/{id}")).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["succeeded"], 6);
    assert_eq!(done["failed"], 0);
    assert_eq!(done["due"], 6);
    assert!(done["completed_at"].is_string());
    // Not another tenant's, nor live mode's.
    let other = app.register("runs-other@acme.com").await;
    for (cred, path) in [
        (other.sk_test(), format!("/api/v1/billing-runs/{id}")),
        (t.sk_live(), format!("/api/v1/billing-runs/{id}")),
        (key.clone(), "/api/v1/billing-runs/brun_nope".to_owned()),
    ] {
        assert_problem(
            app.get(&path, &cred).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
    assert_eq!(
        get(&app, &other.sk_test(), "/api/v1/billing-runs").await["data"],
        json!([])
    );
}
