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

#[tokio::test]
async fn a_completed_run_keeps_each_tenant_and_modes_own_tally_of_its_jobs() {
    let app = spawn_app().await;
    let a = scope(&app, &app.register("tally-a@acme.com").await.sk_test).await;
    let b = scope(&app, &app.register("tally-b@acme.com").await.sk_test).await;
    let (ta, tb) = (a.tenant_id().as_uuid(), b.tenant_id().as_uuid());
    let now = chrono::Utc::now();
    let run = uuid::Uuid::new_v4();
    let other = uuid::Uuid::new_v4();
    for (id, scheduled) in [(run, now), (other, now - chrono::Duration::minutes(1))] {
        sqlx::query(
            "INSERT INTO billing_runs (id, scope, scheduled_for, trigger, status, owner, \
             lease_until, started_at, enqueued_at) \
             VALUES ($1, 'fleet', $2, 'schedule', 'enqueued', 'w', $2, $2, $2)",
        )
        .bind(id)
        .bind(scheduled)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    // (tenant, live mode, succeeded, dead) of the run's jobs, and of the other run's.
    let of_run = [(ta, false, 3, 1), (ta, true, 2, 0), (tb, false, 0, 2)];
    let of_other = [(ta, false, 5, 4), (tb, false, 1, 0)];
    for (id, tallies) in [(run, &of_run[..]), (other, &of_other[..])] {
        for &(tenant, live, succeeded, dead) in tallies {
            sqlx::query(
                "INSERT INTO billing_run_tenants (run_id, tenant_id, livemode, due, enqueued) \
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(id)
            .bind(tenant)
            .bind(live)
            .bind((succeeded + dead) as i64)
            .execute(&app.pool)
            .await
            .unwrap();
            for state in
                std::iter::repeat_n("succeeded", succeeded).chain(std::iter::repeat_n("dead", dead))
            {
                sqlx::query(
                    "INSERT INTO jobs (id, queue, kind, tenant_id, livemode, payload, state, \
                     max_attempts, run_at, created_at, updated_at, finished_at, billing_run_id) \
                     VALUES ($1, 'renewals', 'subscription.renew', $2, $3, '{}', $4, 3, \
                     $5, $5, $5, $5, $6)",
                )
                .bind(uuid::Uuid::new_v4())
                .bind(tenant)
                .bind(live)
                .bind(state)
                .bind(now)
                .bind(id)
                .execute(&app.pool)
                .await
                .unwrap();
            }
        }
    }
    // The other run still has a job to run: only this one completes.
    sqlx::query(
        "INSERT INTO jobs (id, queue, kind, tenant_id, livemode, payload, state, max_attempts, \
         run_at, created_at, updated_at, billing_run_id) \
         VALUES ($1, 'renewals', 'subscription.renew', $2, false, '{}', 'pending', 3, $3, $3, \
         $3, $4)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(tb)
    .bind(now)
    .bind(other)
    .execute(&app.pool)
    .await
    .unwrap();
    let completed = shared::db::billing_runs::complete_finished(&app.pool, now)
        .await
        .unwrap();
    assert_eq!(completed, 1);
    let tally = |id: uuid::Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_as::<_, (uuid::Uuid, bool, Option<i64>, Option<i64>)>(
                "SELECT tenant_id, livemode, succeeded, failed FROM billing_run_tenants \
                 WHERE run_id = $1 ORDER BY tenant_id, livemode",
            )
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let mut expected: Vec<(uuid::Uuid, bool, Option<i64>, Option<i64>)> = of_run
        .iter()
        .map(|&(t, l, s, d)| (t, l, Some(s as i64), Some(d as i64)))
        .collect();
    expected.sort();
    assert_eq!(tally(run).await, expected);
    // The other run's tally is still counted from its jobs, none kept yet.
    assert!(
        tally(other)
            .await
            .iter()
            .all(|(.., s, f)| s.is_none() && f.is_none())
    );
}
