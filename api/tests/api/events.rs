//! Events: listing and reading them per tenant and mode, redelivering them, and the events that
//! user and key changes emit.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::{
    db::events::NewEvent,
    ids::{EventId, WebhookEndpointId},
};
use uuid::Uuid;

use crate::{
    helpers::{Cred, PASSWORD, Tenant, TestApp, assert_problem, s, spawn_app, waits_for_lock},
    webhooks::{ENDPOINTS, body, delivery_uuid, endpoint_id, event_objects, ids, tenant_id},
};

const EVENTS: &str = "/api/v1/events";
/// A well-formed event id that names nothing.
const MISSING: &str = "evt_01m80000000000000000000000";

fn event_path(id: &str) -> String {
    format!("{EVENTS}/{id}")
}

fn redeliver_path(id: &str) -> String {
    format!("{EVENTS}/{id}/redeliver")
}

/// The ids of a tenant's events in one mode, newest first, from the table.
async fn event_ids(app: &TestApp, t: &Tenant, livemode: bool) -> Vec<String> {
    let rows: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM events WHERE tenant_id = $1 AND livemode = $2 ORDER BY id DESC",
    )
    .bind(tenant_id(t))
    .bind(livemode)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|u| EventId::from_uuid(u).to_string())
        .collect()
}

/// The id of the newest event of this type the credential sees.
async fn newest_event(app: &TestApp, cred: &Cred, ty: &str) -> String {
    let page = body(
        app.get(&format!("{EVENTS}?type={ty}&limit=1"), cred).await,
        StatusCode::OK,
    )
    .await;
    ids(&page)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {ty} event"))
}

/// The deliveries of an event: (id, endpoint id).
async fn deliveries_of(app: &TestApp, event: &str) -> Vec<(Uuid, Uuid)> {
    sqlx::query_as("SELECT id, endpoint_id FROM webhook_deliveries WHERE event_id = $1 ORDER BY id")
        .bind(EventId::parse(event).unwrap())
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

fn endpoint_uuid(id: &str) -> Uuid {
    WebhookEndpointId::parse(id).unwrap().as_uuid()
}

#[tokio::test]
async fn events_are_listed_newest_first_one_page_at_a_time_and_filtered_by_type() {
    let app = spawn_app().await;
    let t = app.register("list-evt@acme.com").await;
    let mut endpoints = Vec::new();
    for i in 0..3 {
        endpoints.push(
            endpoint_id(
                &app,
                &t.sk_test(),
                json!({"url": format!("https://hooks.example.com/{i}")}),
            )
            .await,
        );
    }
    let resp = app
        .send(
            Method::PATCH,
            &format!("{ENDPOINTS}/{}", endpoints[0]),
            &t.sk_test(),
            Some(&json!({"description": "first"})),
        )
        .await;
    body(resp, StatusCode::OK).await;
    let expected = event_ids(&app, &t, false).await;
    assert!(expected.len() >= 4);

    let all = body(
        app.get(&format!("{EVENTS}?limit=100"), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&all), expected);
    assert_eq!(all["has_more"], false);
    // The newest is the update, carrying the endpoint after it.
    assert_eq!(all["data"][0]["type"], "webhook_endpoint.updated");
    assert_eq!(all["data"][0]["data"]["object"]["description"], "first");

    let page1 = body(
        app.get(&format!("{EVENTS}?limit=2"), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&page1), expected[..2]);
    assert_eq!(page1["has_more"], true);
    let page2 = body(
        app.get(
            &format!("{EVENTS}?limit=2&starting_after={}", expected[1]),
            &t.sk_test(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&page2), expected[2..4.min(expected.len())]);
    assert_eq!(page2["has_more"], expected.len() > 4);

    let created = body(
        app.get(
            &format!("{EVENTS}?type=webhook_endpoint.created"),
            &t.sk_test(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let created_data = created["data"].as_array().unwrap();
    assert_eq!(created_data.len(), 3);
    assert!(
        created_data
            .iter()
            .all(|e| e["type"] == "webhook_endpoint.created")
    );
    let mut newest_first = endpoints.clone();
    newest_first.reverse();
    let objects: Vec<String> = created_data
        .iter()
        .map(|e| s(&e["data"]["object"]["id"]))
        .collect();
    assert_eq!(objects, newest_first);
    let filtered_page = body(
        app.get(
            &format!("{EVENTS}?type=webhook_endpoint.created&limit=1"),
            &t.sk_test(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(filtered_page["has_more"], true);
    assert_eq!(ids(&filtered_page), ids(&created)[..1]);
    let none = body(
        app.get(&format!("{EVENTS}?type=invoice.paid"), &t.sk_test())
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(ids(&none).is_empty());
}

#[tokio::test]
async fn an_event_can_be_fetched_by_id() {
    let app = spawn_app().await;
    let t = app.register("get-evt@acme.com").await;
    let endpoint = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/get"}),
    )
    .await;
    let id = newest_event(&app, &t.sk_test(), "webhook_endpoint.created").await;
    let event = body(
        app.get(&event_path(&id), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(event["id"], id.as_str());
    assert_eq!(event["object"], "event");
    assert_eq!(event["type"], "webhook_endpoint.created");
    assert_eq!(event["livemode"], false);
    assert!(event["created"].is_i64());
    assert!(event["created_at"].is_string());
    assert_eq!(event["data"]["object"]["id"], endpoint.as_str());
    assert_eq!(event["data"]["object"]["object"], "webhook_endpoint");
}

#[tokio::test]
async fn another_tenants_event_answers_404_exactly_like_a_missing_one() {
    let app = spawn_app().await;
    let a = app.register("owner@events-a.com").await;
    let b = app.register("owner@events-b.com").await;
    endpoint_id(
        &app,
        &a.sk_test(),
        json!({"url": "https://hooks.example.com/a"}),
    )
    .await;
    let theirs = newest_event(&app, &a.sk_test(), "webhook_endpoint.created").await;
    for cred in [b.sk_test(), b.sk_live(), b.jwt()] {
        let got = assert_problem(
            app.get(&event_path(&theirs), &cred).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        let missing = assert_problem(
            app.get(&event_path(MISSING), &cred).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        assert_eq!(got, missing);
        let list = body(app.get(EVENTS, &cred).await, StatusCode::OK).await;
        assert!(!ids(&list).contains(&theirs));
    }
    // Nor can B redeliver it, even with an endpoint that takes every event.
    let b_endpoint = endpoint_id(
        &app,
        &b.sk_test(),
        json!({"url": "https://hooks.example.com/b"}),
    )
    .await;
    let before = app.count("webhook_deliveries").await;
    let resp = app
        .send(Method::POST, &redeliver_path(&theirs), &b.sk_test(), None)
        .await;
    let got = assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
    let resp = app
        .send(Method::POST, &redeliver_path(MISSING), &b.sk_test(), None)
        .await;
    assert_eq!(
        got,
        assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await
    );
    assert_eq!(app.count("webhook_deliveries").await, before);
    // Nor can A send its own event to B's endpoint.
    let resp = app
        .send(
            Method::POST,
            &format!("{}?endpoint_id={b_endpoint}", redeliver_path(&theirs)),
            &a.sk_test(),
            None,
        )
        .await;
    assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
    assert_eq!(app.count("webhook_deliveries").await, before);
}

#[tokio::test]
async fn a_test_key_does_not_see_live_events() {
    let app = spawn_app().await;
    let t = app.register("live-evt@acme.com").await;
    let endpoint = endpoint_id(
        &app,
        &t.sk_live(),
        json!({"url": "https://hooks.example.com/live"}),
    )
    .await;
    let live = newest_event(&app, &t.sk_live(), "webhook_endpoint.created").await;
    let event = body(
        app.get(&event_path(&live), &t.sk_live()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(event["livemode"], true);
    assert_eq!(event["data"]["object"]["id"], endpoint.as_str());
    for cred in [t.sk_test(), t.jwt()] {
        assert_problem(
            app.get(&event_path(&live), &cred).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        let list = body(
            app.get(&format!("{EVENTS}?limit=100"), &cred).await,
            StatusCode::OK,
        )
        .await;
        assert!(!ids(&list).contains(&live));
        assert!(
            list["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["livemode"] == false)
        );
    }
}

#[tokio::test]
async fn malformed_event_ids_answer_404() {
    let app = spawn_app().await;
    let t = app.register("bad-evt@acme.com").await;
    for id in [
        "nope",
        "evt_!!",
        "evt_",
        "we_01m80000000000000000000000",
        "evt_zzzzzzzzzzzzzzzzzzzzzzzzzz",
    ] {
        assert_problem(
            app.get(&event_path(id), &t.sk_test()).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        assert_problem(
            app.send(Method::POST, &redeliver_path(id), &t.sk_test(), None)
                .await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
}

/// An endpoint receiving every event, and an event it had a delivery of: (endpoint, event,
/// delivery).
async fn delivered_event(app: &TestApp, t: &Tenant) -> (String, String, Uuid) {
    let endpoint = endpoint_id(
        app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/re"}),
    )
    .await;
    let resp = app
        .send(
            Method::PATCH,
            &format!("{ENDPOINTS}/{endpoint}"),
            &t.sk_test(),
            Some(&json!({"description": "changed"})),
        )
        .await;
    body(resp, StatusCode::OK).await;
    let event = newest_event(app, &t.sk_test(), "webhook_endpoint.updated").await;
    let deliveries = deliveries_of(app, &event).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].1, endpoint_uuid(&endpoint));
    (endpoint, event, deliveries[0].0)
}

/// Marks a delivery failed and its job dead, as the worker would after giving up.
async fn give_up(app: &TestApp, delivery: Uuid) {
    sqlx::query(
        "UPDATE jobs SET state = 'dead', attempts = 7, last_error = 'HTTP 500', \
         finished_at = now() WHERE id = $1",
    )
    .bind(delivery)
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE webhook_deliveries SET status = 'failed', next_attempt_at = NULL WHERE id = $1",
    )
    .bind(delivery)
    .execute(&app.pool)
    .await
    .unwrap();
}

async fn assert_pending_again(app: &TestApp, delivery: Uuid) {
    let (state, attempts, last_error, finished): (String, i32, Option<String>, bool) =
        sqlx::query_as(
            "SELECT state, attempts, last_error, finished_at IS NOT NULL FROM jobs WHERE id = $1",
        )
        .bind(delivery)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        (state.as_str(), attempts, last_error, finished),
        ("pending", 0, None, false)
    );
    let (status, due): (String, bool) = sqlx::query_as(
        "SELECT status, next_attempt_at IS NOT NULL FROM webhook_deliveries WHERE id = $1",
    )
    .bind(delivery)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((status.as_str(), due), ("pending", true));
}

#[tokio::test]
async fn redelivering_an_event_reuses_its_delivery_id_and_resets_the_dead_job() {
    let app = spawn_app().await;
    let t = app.register("redeliver@acme.com").await;
    let (endpoint, event, delivery) = delivered_event(&app, &t).await;
    let jobs_before = app.count("jobs").await;

    give_up(&app, delivery).await;
    let queued = body(
        app.send(Method::POST, &redeliver_path(&event), &t.sk_test(), None)
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(queued["event_id"], event.as_str());
    let sent: Vec<Uuid> = queued["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| delivery_uuid(&s(d)))
        .collect();
    assert_eq!(sent, vec![delivery]);
    assert_pending_again(&app, delivery).await;

    // Naming the endpoint does the same.
    give_up(&app, delivery).await;
    let queued = body(
        app.send(
            Method::POST,
            &format!("{}?endpoint_id={endpoint}", redeliver_path(&event)),
            &t.sk_test(),
            None,
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(
        queued["deliveries"],
        json!([shared::ids::DeliveryId::from_uuid(delivery).to_string()])
    );
    assert_pending_again(&app, delivery).await;

    // Still one delivery for the event and one job for it.
    assert_eq!(
        deliveries_of(&app, &event).await,
        vec![(delivery, endpoint_uuid(&endpoint))]
    );
    assert_eq!(app.count("jobs").await, jobs_before);
}

#[tokio::test]
async fn redelivering_creates_a_delivery_for_an_endpoint_that_never_had_the_event() {
    let app = spawn_app().await;
    let t = app.register("redeliver-new@acme.com").await;
    let (_, event, old) = delivered_event(&app, &t).await;
    // This endpoint did not exist when the event happened.
    let late = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/late", "event_types": ["webhook_endpoint.updated"]}),
    )
    .await;
    let queued = body(
        app.send(
            Method::POST,
            &format!("{}?endpoint_id={late}", redeliver_path(&event)),
            &t.sk_test(),
            None,
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    let sent = queued["deliveries"].as_array().unwrap();
    assert_eq!(sent.len(), 1);
    let new = delivery_uuid(&s(&sent[0]));
    assert_ne!(new, old);
    let deliveries = deliveries_of(&app, &event).await;
    assert!(deliveries.contains(&(new, endpoint_uuid(&late))));
    assert_eq!(deliveries.len(), 2);
    assert_pending_again(&app, new).await;
}

#[tokio::test]
async fn redelivering_to_a_disabled_endpoint_answers_409_and_queues_nothing() {
    let app = spawn_app().await;
    let t = app.register("redeliver-off@acme.com").await;
    let (_, event, _) = delivered_event(&app, &t).await;
    let off = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/off", "enabled": false}),
    )
    .await;
    let before = (
        app.count("webhook_deliveries").await,
        app.count("jobs").await,
    );
    let resp = app
        .send(
            Method::POST,
            &format!("{}?endpoint_id={off}", redeliver_path(&event)),
            &t.sk_test(),
            None,
        )
        .await;
    assert_problem(resp, StatusCode::CONFLICT, "webhook_endpoint_disabled").await;
    assert_eq!(
        (
            app.count("webhook_deliveries").await,
            app.count("jobs").await
        ),
        before
    );
}

#[tokio::test]
async fn redelivering_an_unknown_event_or_to_an_unknown_endpoint_answers_404() {
    let app = spawn_app().await;
    let t = app.register("redeliver-404@acme.com").await;
    let (_, event, _) = delivered_event(&app, &t).await;
    let before = (
        app.count("webhook_deliveries").await,
        app.count("jobs").await,
    );
    assert_problem(
        app.send(Method::POST, &redeliver_path(MISSING), &t.sk_test(), None)
            .await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    for endpoint in ["we_01m80000000000000000000000", "nope"] {
        assert_problem(
            app.send(
                Method::POST,
                &format!("{}?endpoint_id={endpoint}", redeliver_path(&event)),
                &t.sk_test(),
                None,
            )
            .await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
    assert_eq!(
        (
            app.count("webhook_deliveries").await,
            app.count("jobs").await
        ),
        before
    );
}

#[tokio::test]
async fn billing_users_can_read_events_but_not_redeliver_them() {
    let app = spawn_app().await;
    let t = app.register("redeliver-403@acme.com").await;
    let (_, event, delivery) = delivered_event(&app, &t).await;
    give_up(&app, delivery).await;
    let (billing, _) = app.user_with_role(&t, "bill-evt@acme.com", "billing").await;
    let billing = Cred::Bearer(billing);
    body(app.get(&event_path(&event), &billing).await, StatusCode::OK).await;
    body(app.get(EVENTS, &billing).await, StatusCode::OK).await;
    assert_problem(
        app.send(Method::POST, &redeliver_path(&event), &billing, None)
            .await,
        StatusCode::FORBIDDEN,
        "permission_denied",
    )
    .await;
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(delivery)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "dead");
}

#[tokio::test]
async fn inviting_a_user_records_user_created_once_in_each_mode() {
    let app = spawn_app().await;
    let t = app.register("invite-evt@acme.com").await;
    let resp = app
        .post(
            "/api/v1/users",
            &t.jwt(),
            &json!({"email": "new-evt@acme.com", "password": PASSWORD, "role": "developer"}),
        )
        .await;
    let user = body(resp, StatusCode::CREATED).await;
    for (cred, livemode) in [(t.sk_test(), false), (t.sk_live(), true)] {
        let page = body(
            app.get(&format!("{EVENTS}?type=user.created"), &cred).await,
            StatusCode::OK,
        )
        .await;
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 1, "livemode {livemode}: {page}");
        assert_eq!(data[0]["livemode"], livemode);
        assert_eq!(data[0]["data"]["object"]["id"], user["id"]);
        assert_eq!(data[0]["data"]["object"]["email"], "new-evt@acme.com");
        assert!(
            !data[0].to_string().contains("password"),
            "the event carries the password hash: {}",
            data[0]
        );
    }
}

#[tokio::test]
async fn regenerating_keys_records_revoked_and_created_events_in_that_mode_only() {
    let app = spawn_app().await;
    let t = app.register("keys-evt@acme.com").await;
    let resp = app
        .post(
            "/api/v1/auth/tenants/api-keys/regenerate",
            &t.jwt(),
            &json!({"mode": "live"}),
        )
        .await;
    let regenerated = body(resp, StatusCode::OK).await;
    let new_ids: Vec<Value> = regenerated["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].clone())
        .collect();
    let created = event_objects(&app, &t, true, "api_key.created").await;
    let mut created_ids: Vec<Value> = created.iter().map(|o| o["id"].clone()).collect();
    let mut expected = new_ids.clone();
    created_ids.sort_by_key(Value::to_string);
    expected.sort_by_key(Value::to_string);
    assert_eq!(created_ids, expected);
    assert_eq!(
        event_objects(&app, &t, true, "api_key.revoked").await.len(),
        regenerated["revoked"].as_array().unwrap().len()
    );
    for o in &created {
        let text = o.to_string();
        for k in regenerated["keys"].as_array().unwrap() {
            assert!(!text.contains(&s(&k["key"])), "the event carries a key");
        }
    }
    assert!(
        event_objects(&app, &t, false, "api_key.created")
            .await
            .is_empty()
    );
    assert!(
        event_objects(&app, &t, false, "api_key.revoked")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_redelivery_caught_in_a_deadlock_is_run_again_and_succeeds() {
    let app = spawn_app().await;
    let t = app.register("redeliver-deadlock@acme.com").await;
    let (endpoint, event, delivery) = delivered_event(&app, &t).await;
    // Another transaction (the worker, say) holds the delivery and will want its job, which
    // the redelivery locks first: a cycle. Its deadlock check is put off, so the request's
    // transaction is the one PostgreSQL aborts.
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *other)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM webhook_deliveries WHERE id = $1 FOR UPDATE")
        .bind(delivery)
        .execute(&mut *other)
        .await
        .unwrap();
    let path = format!("{}?endpoint_id={endpoint}", redeliver_path(&event));
    let request = {
        let req = app.req(Method::POST, &path, &t.sk_test());
        tokio::spawn(req.send())
    };
    assert!(
        waits_for_lock(&app, "UPDATE webhook_deliveries").await,
        "the redelivery never waited for the delivery"
    );
    // Closes the cycle; returns once PostgreSQL has aborted the request's transaction.
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(delivery)
        .execute(&mut *other)
        .await
        .unwrap();
    other.commit().await.unwrap();
    let resp = request.await.unwrap().unwrap();
    let queued = body(resp, StatusCode::ACCEPTED).await;
    assert_eq!(
        queued["deliveries"],
        json!([shared::ids::DeliveryId::from_uuid(delivery).to_string()])
    );
    assert_pending_again(&app, delivery).await;
    // One request, one audit row.
    let audited: Vec<i16> =
        sqlx::query_scalar("SELECT outcome FROM audit_log WHERE action = 'events.redeliver'")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(audited, vec![202]);
}

#[tokio::test]
async fn a_redelivery_locks_jobs_before_deliveries_as_the_worker_does() {
    let app = spawn_app().await;
    let t = app.register("redeliver-order@acme.com").await;
    let (endpoint, event, delivery) = delivered_event(&app, &t).await;
    // The worker recording an outcome: it holds the job, and will update the delivery next.
    let mut worker = app.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '60s'")
        .execute(&mut *worker)
        .await
        .unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE")
        .bind(delivery)
        .execute(&mut *worker)
        .await
        .unwrap();
    let path = format!("{}?endpoint_id={endpoint}", redeliver_path(&event));
    let request = tokio::spawn(app.req(Method::POST, &path, &t.sk_test()).send());
    // The redelivery waits for the job (it locks jobs first), holding nothing the worker needs.
    assert!(
        waits_for_lock(&app, "UPDATE jobs").await,
        "the redelivery never waited for the job"
    );
    sqlx::query("UPDATE webhook_deliveries SET updated_at = now() WHERE id = $1")
        .bind(delivery)
        .execute(&mut *worker)
        .await
        .unwrap();
    worker.commit().await.unwrap();
    let resp = request.await.unwrap().unwrap();
    body(resp, StatusCode::ACCEPTED).await;
    assert_pending_again(&app, delivery).await;
}

#[tokio::test]
async fn events_recorded_together_show_their_own_objects_and_those_sharing_one_each_show_it_whole()
{
    let app = spawn_app().await;
    let t = app.register("shared-objects@acme.com").await;
    let scope = crate::subscriptions::scope(&app, &t.sk_test).await;
    // One object shown by two events (an invoice created and finalized at once), with others
    // between them and after.
    let thing = std::sync::Arc::new(json!({"object": "thing", "id": "thing_1", "n": 1}));
    let recorded = [
        NewEvent::shared("thing.created", thing.clone()),
        NewEvent::new("other.created", json!({"object": "other", "id": "other_1"})),
        NewEvent::shared("thing.updated", thing.clone()),
        NewEvent::new(
            "thing.updated",
            json!({"object": "thing", "id": "thing_1", "n": 2}),
        ),
    ];
    let scoped: Vec<_> = recorded.iter().map(|e| (scope, e)).collect();
    let mut conn = app.pool.acquire().await.unwrap();
    let ids = shared::db::events::record_scoped(&mut conn, &scoped, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(ids.len(), recorded.len());
    for (id, sent) in ids.iter().zip(&recorded) {
        let resp = app.get(&event_path(&id.to_string()), &t.sk_test()).await;
        let event = body(resp, StatusCode::OK).await;
        assert_eq!(event["type"], sent.event_type.as_str(), "{event}");
        assert_eq!(event["data"], json!({ "object": *sent.object }), "{event}");
    }
}
