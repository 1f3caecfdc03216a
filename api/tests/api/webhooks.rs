//! Webhook endpoints, the seed's single-webhook paths, and the deliveries events fan out to.
//! No worker runs here: deliveries stay `pending`, so the tests look at the rows.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use shared::ids::{DeliveryId, TenantId, WebhookEndpointId};
use uuid::Uuid;

use crate::helpers::{Cred, Tenant, TestApp, assert_problem, s, spawn_app, spawn_app_with};

pub const ENDPOINTS: &str = "/api/v1/webhook-endpoints";
const CONFIG: &str = "/api/v1/auth/tenants/webhooks/config/";
const TEST: &str = "/api/v1/auth/tenants/webhooks/test/";
const REGENERATE: &str = "/api/v1/auth/tenants/api-keys/regenerate";
/// A well-formed endpoint id that names nothing.
const MISSING: &str = "we_01m80000000000000000000000";

/// The body of a response with this status.
pub async fn body(resp: Response, status: StatusCode) -> Value {
    let got = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Creates an endpoint (201); returns `{endpoint, secret}`.
pub async fn create_endpoint(app: &TestApp, cred: &Cred, input: Value) -> Value {
    body(app.post(ENDPOINTS, cred, &input).await, StatusCode::CREATED).await
}

/// Creates an endpoint; returns its id.
pub async fn endpoint_id(app: &TestApp, cred: &Cred, input: Value) -> String {
    s(&create_endpoint(app, cred, input).await["endpoint"]["id"])
}

pub fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| s(&x["id"]))
        .collect()
}

pub fn tenant_id(t: &Tenant) -> TenantId {
    TenantId::parse(&t.id).unwrap()
}

pub fn delivery_uuid(id: &str) -> Uuid {
    DeliveryId::parse(id).unwrap().as_uuid()
}

/// The objects of a tenant's events of one type and mode, oldest first.
pub async fn event_objects(app: &TestApp, t: &Tenant, livemode: bool, ty: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT data -> 'object' FROM events WHERE tenant_id = $1 AND livemode = $2 AND type = $3 \
         ORDER BY id",
    )
    .bind(tenant_id(t))
    .bind(livemode)
    .bind(ty)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// The types of the events delivered to an endpoint whose type starts with `prefix`, sorted.
async fn delivered_types(app: &TestApp, endpoint: &str, prefix: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT e.type FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
         WHERE d.endpoint_id = $1 AND starts_with(e.type, $2) ORDER BY e.type",
    )
    .bind(WebhookEndpointId::parse(endpoint).unwrap())
    .bind(prefix)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// Rows that must not change when a request is refused.
async fn written(app: &TestApp) -> [i64; 4] {
    [
        app.count("webhook_endpoints").await,
        app.count("events").await,
        app.count("webhook_deliveries").await,
        app.count("jobs").await,
    ]
}

fn path(id: &str) -> String {
    format!("{ENDPOINTS}/{id}")
}

#[tokio::test]
async fn creating_an_endpoint_returns_its_secret_once_and_get_and_list_never_show_it() {
    let app = spawn_app().await;
    let t = app.register("create-we@acme.com").await;
    let created = create_endpoint(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/billing", "description": "Main",
               "event_types": ["invoice.paid", "customer.created"]}),
    )
    .await;
    let secret = s(&created["secret"]);
    assert!(secret.starts_with("whsec_"), "{secret}");
    let ep = &created["endpoint"];
    let id = s(&ep["id"]);
    assert!(id.starts_with("we_"));
    assert_eq!(ep["object"], "webhook_endpoint");
    assert_eq!(ep["url"], "https://hooks.example.com/billing");
    assert_eq!(ep["description"], "Main");
    assert_eq!(ep["enabled"], true);
    assert_eq!(
        ep["event_types"],
        json!(["invoice.paid", "customer.created"])
    );
    assert_eq!(ep["livemode"], false);
    assert_eq!(ep["is_default"], false);
    assert_eq!(ep["secret_last4"], &secret[secret.len() - 4..]);
    assert!(ep.get("secret").is_none());

    let got = app.get(&path(&id), &t.sk_test()).await;
    assert_eq!(got.status(), StatusCode::OK);
    let text = got.text().await.unwrap();
    assert!(!text.contains(&secret), "GET shows the secret");
    let got: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(&got, ep);
    assert!(got.get("secret").is_none());
    let list = app.get(ENDPOINTS, &t.sk_test()).await.text().await.unwrap();
    assert!(!list.contains(&secret), "the list shows the secret");
    assert_eq!(ids(&serde_json::from_str(&list).unwrap()), vec![id.clone()]);

    // Defaults: enabled, every event type, no description.
    let plain = create_endpoint(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/plain"}),
    )
    .await;
    assert_eq!(plain["endpoint"]["enabled"], true);
    assert_eq!(plain["endpoint"]["event_types"], json!(["*"]));
    assert_eq!(plain["endpoint"]["description"], "");
    assert_ne!(plain["secret"], created["secret"]);
}

#[tokio::test]
async fn creating_an_endpoint_records_a_created_event_without_the_secret() {
    let app = spawn_app().await;
    let t = app.register("created-evt@acme.com").await;
    let created = create_endpoint(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/a"}),
    )
    .await;
    let events = event_objects(&app, &t, false, "webhook_endpoint.created").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], created["endpoint"]["id"]);
    assert_eq!(events[0]["url"], "https://hooks.example.com/a");
    assert!(!events[0].to_string().contains(&s(&created["secret"])));
    assert!(
        event_objects(&app, &t, true, "webhook_endpoint.created")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_new_endpoint_is_not_sent_its_own_created_event_but_existing_endpoints_are() {
    let app = spawn_app().await;
    let t = app.register("self-evt@acme.com").await;
    let first = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/first"}),
    )
    .await;
    assert!(delivered_types(&app, &first, "").await.is_empty());
    let second = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/second"}),
    )
    .await;
    assert!(delivered_types(&app, &second, "").await.is_empty());
    assert_eq!(
        delivered_types(&app, &first, "").await,
        vec!["webhook_endpoint.created".to_owned()]
    );
}

#[tokio::test]
async fn endpoints_are_listed_newest_first_one_page_at_a_time() {
    let app = spawn_app().await;
    let t = app.register("page-we@acme.com").await;
    let mut created = Vec::new();
    for i in 0..3 {
        created.push(
            endpoint_id(
                &app,
                &t.sk_test(),
                json!({"url": format!("https://hooks.example.com/{i}")}),
            )
            .await,
        );
    }
    created.reverse(); // newest first
    let all = body(app.get(ENDPOINTS, &t.sk_test()).await, StatusCode::OK).await;
    assert_eq!(ids(&all), created);
    assert_eq!(all["has_more"], false);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for (i, expected_more) in [true, true, false].into_iter().enumerate() {
        let url = match &cursor {
            None => format!("{ENDPOINTS}?limit=1"),
            Some(c) => format!("{ENDPOINTS}?limit=1&starting_after={c}"),
        };
        let page = body(app.get(&url, &t.sk_test()).await, StatusCode::OK).await;
        let got = ids(&page);
        assert_eq!(got, vec![created[i].clone()], "page {i}");
        assert_eq!(page["has_more"], expected_more, "page {i}");
        cursor = got.first().cloned();
        seen.extend(got);
    }
    assert_eq!(seen, created);
}

#[tokio::test]
async fn patch_changes_url_description_enabled_and_event_types_recording_an_updated_event_each_time()
 {
    let app = spawn_app().await;
    let t = app.register("patch-we@acme.com").await;
    let id = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/old"}),
    )
    .await;
    let steps = [
        json!({"url": "https://hooks.example.com/new"}),
        json!({"description": "Invoices only"}),
        json!({"event_types": ["invoice.paid", "invoice.payment_failed"]}),
        json!({"enabled": false}),
    ];
    for (i, step) in steps.iter().enumerate() {
        let resp = app
            .send(Method::PATCH, &path(&id), &t.sk_test(), Some(step))
            .await;
        body(resp, StatusCode::OK).await;
        let updated = event_objects(&app, &t, false, "webhook_endpoint.updated").await;
        assert_eq!(updated.len(), i + 1, "after {step}");
        assert_eq!(updated[i]["id"], id.as_str());
    }
    let ep = body(app.get(&path(&id), &t.sk_test()).await, StatusCode::OK).await;
    assert_eq!(ep["url"], "https://hooks.example.com/new");
    assert_eq!(ep["description"], "Invoices only");
    assert_eq!(
        ep["event_types"],
        json!(["invoice.paid", "invoice.payment_failed"])
    );
    assert_eq!(ep["enabled"], false);
    assert_eq!(ep["disabled_reason"], "manual");
    // The last event carries the endpoint as it was after that change.
    let updated = event_objects(&app, &t, false, "webhook_endpoint.updated").await;
    assert_eq!(updated[3]["enabled"], false);

    let resp = app
        .send(
            Method::PATCH,
            &path(&id),
            &t.sk_test(),
            Some(&json!({"enabled": true})),
        )
        .await;
    let ep = body(resp, StatusCode::OK).await;
    assert_eq!(ep["enabled"], true);
    assert!(ep["disabled_reason"].is_null());
    // Fields not sent are kept.
    assert_eq!(ep["url"], "https://hooks.example.com/new");
    assert_eq!(ep["description"], "Invoices only");
    assert_eq!(
        event_objects(&app, &t, false, "webhook_endpoint.updated")
            .await
            .len(),
        5
    );
}

#[tokio::test]
async fn delete_removes_the_endpoint_and_records_a_deleted_event() {
    let app = spawn_app().await;
    let t = app.register("delete-we@acme.com").await;
    let id = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/bye"}),
    )
    .await;
    let deleted = body(
        app.send(Method::DELETE, &path(&id), &t.sk_test(), None)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deleted["id"], id.as_str());
    assert_problem(
        app.get(&path(&id), &t.sk_test()).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    let list = body(app.get(ENDPOINTS, &t.sk_test()).await, StatusCode::OK).await;
    assert!(ids(&list).is_empty());
    assert_eq!(app.count("webhook_endpoints").await, 0);
    let events = event_objects(&app, &t, false, "webhook_endpoint.deleted").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id.as_str());
    assert_problem(
        app.send(Method::DELETE, &path(&id), &t.sk_test(), None)
            .await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    assert_eq!(
        event_objects(&app, &t, false, "webhook_endpoint.deleted")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn endpoint_changes_are_recorded_as_events_in_the_callers_mode() {
    let app = spawn_app().await;
    let t = app.register("mode-evt@acme.com").await;
    let id = endpoint_id(
        &app,
        &t.sk_live(),
        json!({"url": "https://hooks.example.com/live"}),
    )
    .await;
    body(
        app.send(
            Method::PATCH,
            &path(&id),
            &t.sk_live(),
            Some(&json!({"description": "live"})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    body(
        app.send(Method::DELETE, &path(&id), &t.sk_live(), None)
            .await,
        StatusCode::OK,
    )
    .await;
    for ty in [
        "webhook_endpoint.created",
        "webhook_endpoint.updated",
        "webhook_endpoint.deleted",
    ] {
        let live = event_objects(&app, &t, true, ty).await;
        assert_eq!(live.len(), 1, "{ty}");
        assert_eq!(live[0]["id"], id.as_str());
        assert_eq!(live[0]["livemode"], true);
        assert!(event_objects(&app, &t, false, ty).await.is_empty(), "{ty}");
    }
}

#[tokio::test]
async fn malformed_credentialed_non_http_and_live_mode_http_urls_fail_validation_on_url_and_write_nothing()
 {
    let app = spawn_app().await;
    let t = app.register("bad-url@acme.com").await;
    let before = written(&app).await;
    let always_bad = [
        "not a url",
        "hooks.example.com/no-scheme",
        "ftp://hooks.example.com/x",
        "https://user:pass@hooks.example.com/x",
        "https://user@hooks.example.com/x",
    ];
    for (cred, urls) in [
        (t.sk_test(), always_bad.to_vec()),
        (t.sk_live(), {
            let mut v = always_bad.to_vec();
            v.push("http://hooks.example.com/x"); // live mode needs https
            v
        }),
    ] {
        for url in urls {
            let resp = app.post(ENDPOINTS, &cred, &json!({"url": url})).await;
            let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
            assert_eq!(problem["field"], "url", "{url}");
        }
    }
    assert_eq!(written(&app).await, before);

    // A PATCH to such a URL is refused and changes nothing either.
    let id = endpoint_id(
        &app,
        &t.sk_live(),
        json!({"url": "https://hooks.example.com/ok"}),
    )
    .await;
    let before = written(&app).await;
    let resp = app
        .send(
            Method::PATCH,
            &path(&id),
            &t.sk_live(),
            Some(&json!({"url": "http://hooks.example.com/plain"})),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "url");
    assert_eq!(written(&app).await, before);
    let ep = body(app.get(&path(&id), &t.sk_live()).await, StatusCode::OK).await;
    assert_eq!(ep["url"], "https://hooks.example.com/ok");
}

#[tokio::test]
async fn bad_event_types_and_unknown_fields_fail_validation_and_write_nothing() {
    let app = spawn_app().await;
    let t = app.register("bad-types@acme.com").await;
    let before = written(&app).await;
    for types in [json!(["Invoice.Paid"]), json!([]), json!(["invoice"])] {
        let resp = app
            .post(
                ENDPOINTS,
                &t.sk_test(),
                &json!({"url": "https://hooks.example.com/x", "event_types": types}),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], "event_types", "{types}");
    }
    let resp = app
        .post(
            ENDPOINTS,
            &t.sk_test(),
            &json!({"url": "https://hooks.example.com/x", "secret": "whsec_mine"}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "secret");
    assert_eq!(written(&app).await, before);
}

/// Every internal target, as a test-mode (`http`) or live-mode (`https`) URL.
fn internal_urls(scheme: &str) -> Vec<String> {
    [
        "127.0.0.1/x",
        "10.0.0.1/x",
        "169.254.169.254/latest/meta-data/",
        "[::1]/x",
        // A name that resolves to loopback.
        "localhost:1/x",
    ]
    .iter()
    .map(|rest| format!("{scheme}://{rest}"))
    .collect()
}

async fn assert_internal_urls_refused(app: &TestApp, cred: &Cred, scheme: &str) {
    let before = written(app).await;
    for url in internal_urls(scheme) {
        let resp = app.post(ENDPOINTS, cred, &json!({"url": url})).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "webhook_url_forbidden").await;
        assert_eq!(problem["field"], "url", "{url}");
    }
    assert_eq!(written(app).await, before);
}

#[tokio::test]
async fn internal_addresses_are_refused_at_creation_with_a_test_key() {
    let app = spawn_app().await;
    let t = app.register("ssrf-test@acme.com").await;
    assert_internal_urls_refused(&app, &t.sk_test(), "http").await;
}

#[tokio::test]
async fn internal_addresses_are_refused_at_creation_with_a_live_key() {
    let app = spawn_app().await;
    let t = app.register("ssrf-live@acme.com").await;
    assert_internal_urls_refused(&app, &t.sk_live(), "https").await;
}

#[tokio::test]
async fn the_seed_config_path_refuses_internal_addresses_naming_webhook_url() {
    let app = spawn_app().await;
    let t = app.register("ssrf-seed@acme.com").await;
    let before = written(&app).await;
    for url in internal_urls("http") {
        let resp = app
            .post(CONFIG, &t.jwt(), &json!({"webhook_url": url}))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "webhook_url_forbidden").await;
        assert_eq!(problem["field"], "webhook_url", "{url}");
    }
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn allowing_private_targets_accepts_loopback_http_urls_even_in_live_mode() {
    let app = spawn_app_with(&[("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")]).await;
    let t = app.register("private-ok@acme.com").await;
    for cred in [t.sk_test(), t.sk_live()] {
        let created = create_endpoint(&app, &cred, json!({"url": "http://127.0.0.1:9/hook"})).await;
        assert_eq!(created["endpoint"]["url"], "http://127.0.0.1:9/hook");
    }
}

#[tokio::test]
async fn billing_users_can_list_and_get_endpoints_but_not_change_them() {
    let app = spawn_app().await;
    let t = app.register("billing-we@acme.com").await;
    let id = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/b"}),
    )
    .await;
    let (billing, _) = app.user_with_role(&t, "bill@acme.com", "billing").await;
    let billing = Cred::Bearer(billing);
    let list = body(app.get(ENDPOINTS, &billing).await, StatusCode::OK).await;
    assert_eq!(ids(&list), vec![id.clone()]);
    body(app.get(&path(&id), &billing).await, StatusCode::OK).await;
    body(
        app.get(&format!("{}/deliveries", path(&id)), &billing)
            .await,
        StatusCode::OK,
    )
    .await;
    let before = written(&app).await;
    let attempts = [
        (
            Method::POST,
            ENDPOINTS.to_owned(),
            Some(json!({"url": "https://hooks.example.com/c"})),
        ),
        (
            Method::PATCH,
            path(&id),
            Some(json!({"description": "mine"})),
        ),
        (Method::POST, format!("{}/rotate-secret", path(&id)), None),
        (Method::DELETE, path(&id), None),
    ];
    for (method, p, b) in attempts {
        let resp = app.send(method.clone(), &p, &billing, b.as_ref()).await;
        assert_problem(resp, StatusCode::FORBIDDEN, "permission_denied").await;
    }
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn publishable_keys_are_refused_and_developers_can_create_endpoints() {
    let app = spawn_app().await;
    let t = app.register("pk-we@acme.com").await;
    let pk = Cred::Bearer(t.pk_test.clone());
    assert_problem(
        app.get(ENDPOINTS, &pk).await,
        StatusCode::FORBIDDEN,
        "secret_key_required",
    )
    .await;
    assert_problem(
        app.post(
            ENDPOINTS,
            &pk,
            &json!({"url": "https://hooks.example.com/pk"}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "secret_key_required",
    )
    .await;
    assert_eq!(app.count("webhook_endpoints").await, 0);
    let (dev, _) = app.user_with_role(&t, "dev-we@acme.com", "developer").await;
    let created = create_endpoint(
        &app,
        &Cred::Bearer(dev),
        json!({"url": "https://hooks.example.com/dev"}),
    )
    .await;
    assert!(s(&created["secret"]).starts_with("whsec_"));
    assert_eq!(app.count("webhook_endpoints").await, 1);
}

#[tokio::test]
async fn another_tenants_endpoint_answers_404_exactly_like_a_missing_one_and_stays_unchanged() {
    let app = spawn_app().await;
    let a = app.register("owner@tenant-a.com").await;
    let b = app.register("owner@tenant-b.com").await;
    let id = endpoint_id(
        &app,
        &a.sk_test(),
        json!({"url": "https://hooks.example.com/a"}),
    )
    .await;
    let before_row = body(app.get(&path(&id), &a.sk_test()).await, StatusCode::OK).await;
    let before = written(&app).await;
    let patch = json!({"description": "taken over", "enabled": false});
    for cred in [b.sk_test(), b.sk_live(), b.jwt()] {
        for (method, suffix, payload) in [
            (Method::GET, "", None),
            (Method::PATCH, "", Some(&patch)),
            (Method::POST, "/rotate-secret", None),
            (Method::GET, "/deliveries", None),
            (Method::DELETE, "", None),
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
        let list = body(app.get(ENDPOINTS, &cred).await, StatusCode::OK).await;
        assert!(ids(&list).is_empty());
    }
    assert_eq!(written(&app).await, before);
    let after_row = body(app.get(&path(&id), &a.sk_test()).await, StatusCode::OK).await;
    assert_eq!(after_row, before_row);
}

#[tokio::test]
async fn an_endpoint_created_with_a_live_key_is_invisible_to_the_test_key() {
    let app = spawn_app().await;
    let t = app.register("modes-we@acme.com").await;
    let live = endpoint_id(
        &app,
        &t.sk_live(),
        json!({"url": "https://hooks.example.com/live"}),
    )
    .await;
    let test = endpoint_id(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/test"}),
    )
    .await;
    assert_problem(
        app.get(&path(&live), &t.sk_test()).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    let test_list = body(app.get(ENDPOINTS, &t.sk_test()).await, StatusCode::OK).await;
    assert_eq!(ids(&test_list), vec![test.clone()]);
    let live_list = body(app.get(ENDPOINTS, &t.sk_live()).await, StatusCode::OK).await;
    assert_eq!(ids(&live_list), vec![live.clone()]);
    let ep = body(app.get(&path(&live), &t.sk_live()).await, StatusCode::OK).await;
    assert_eq!(ep["livemode"], true);
}

#[tokio::test]
async fn rotating_the_secret_returns_a_new_one_and_keeps_the_old_one_for_24_hours() {
    let app = spawn_app().await;
    let t = app.register("rotate@acme.com").await;
    let created = create_endpoint(
        &app,
        &t.sk_test(),
        json!({"url": "https://hooks.example.com/r"}),
    )
    .await;
    let id = s(&created["endpoint"]["id"]);
    assert!(created["endpoint"]["previous_secret_expires_at"].is_null());
    let old = s(&created["secret"]);
    let resp = app
        .send(
            Method::POST,
            &format!("{}/rotate-secret", path(&id)),
            &t.sk_test(),
            None,
        )
        .await;
    let rotated = body(resp, StatusCode::OK).await;
    let new = s(&rotated["secret"]);
    assert!(new.starts_with("whsec_"));
    assert_ne!(new, old);
    assert_eq!(rotated["endpoint"]["secret_last4"], &new[new.len() - 4..]);
    let expected = chrono::Utc::now() + chrono::Duration::hours(24);
    let ep = body(app.get(&path(&id), &t.sk_test()).await, StatusCode::OK).await;
    assert_eq!(ep["secret_last4"], &new[new.len() - 4..]);
    let expires = chrono::DateTime::parse_from_rfc3339(&s(&ep["previous_secret_expires_at"]))
        .unwrap()
        .with_timezone(&chrono::Utc);
    assert!(
        (expires - expected).num_seconds().abs() < 60,
        "previous_secret_expires_at {expires}, expected about {expected}"
    );
    let previous_kept: bool = sqlx::query_scalar(
        "SELECT previous_secret_enc IS NOT NULL FROM webhook_endpoints WHERE id = $1",
    )
    .bind(WebhookEndpointId::parse(&id).unwrap())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(previous_kept);
    assert_eq!(
        event_objects(&app, &t, false, "webhook_endpoint.updated")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn the_seed_config_reads_null_until_a_webhook_is_configured() {
    let app = spawn_app().await;
    let t = app.register("seed-empty@acme.com").await;
    for p in [CONFIG, CONFIG.trim_end_matches('/')] {
        let config = body(app.get(p, &t.jwt()).await, StatusCode::OK).await;
        assert!(config["webhook_url"].is_null(), "{p}: {config}");
        assert!(config["webhook_secret"].is_null());
        assert!(config["endpoint_id"].is_null());
        assert_eq!(config["enabled"], false);
    }
}

#[tokio::test]
async fn setting_the_seed_config_creates_one_default_endpoint_and_setting_it_again_replaces_url_and_secret()
 {
    let app = spawn_app().await;
    let t = app.register("seed-set@acme.com").await;
    let first = body(
        app.post(
            CONFIG,
            &t.jwt(),
            &json!({"webhook_url": "https://hooks.example.com/one"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let first_secret = s(&first["webhook_secret"]);
    assert!(first_secret.starts_with("whsec_"));
    assert_eq!(first["webhook_url"], "https://hooks.example.com/one");
    let endpoint = s(&first["endpoint_id"]);
    let ep = body(app.get(&path(&endpoint), &t.jwt()).await, StatusCode::OK).await;
    assert_eq!(ep["is_default"], true);
    assert_eq!(ep["event_types"], json!(["*"]));
    assert_eq!(ep["enabled"], true);

    let second = body(
        app.post(
            CONFIG.trim_end_matches('/'),
            &t.jwt(),
            &json!({"webhook_url": "https://hooks.example.com/two"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let second_secret = s(&second["webhook_secret"]);
    assert!(second_secret.starts_with("whsec_"));
    assert_ne!(second_secret, first_secret);
    assert_eq!(second["endpoint_id"], endpoint.as_str());
    let defaults: i64 =
        sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE is_default")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(defaults, 1);
    assert_eq!(app.count("webhook_endpoints").await, 1);

    let config = body(app.get(CONFIG, &t.jwt()).await, StatusCode::OK).await;
    assert_eq!(config["webhook_url"], "https://hooks.example.com/two");
    assert_eq!(config["endpoint_id"], endpoint.as_str());
    assert_eq!(config["enabled"], true);
    let masked = s(&config["webhook_secret"]);
    assert_eq!(
        masked,
        format!("whsec_…{}", &second_secret[second_secret.len() - 4..])
    );
    let text = app.get(CONFIG, &t.jwt()).await.text().await.unwrap();
    assert!(!text.contains(&second_secret) && !text.contains(&first_secret));
}

#[tokio::test]
async fn the_seed_config_validates_webhook_url_and_refuses_unknown_fields() {
    let app = spawn_app().await;
    let t = app.register("seed-valid@acme.com").await;
    let before = written(&app).await;
    for url in [
        "not a url",
        "ftp://hooks.example.com/x",
        "https://u:p@hooks.example.com/",
    ] {
        let resp = app
            .post(CONFIG, &t.jwt(), &json!({"webhook_url": url}))
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], "webhook_url", "{url}");
    }
    // Live mode needs https here too.
    let resp = app
        .post(
            CONFIG,
            &t.sk_live(),
            &json!({"webhook_url": "http://hooks.example.com/x"}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "webhook_url");
    let resp = app
        .post(
            CONFIG,
            &t.jwt(),
            &json!({"webhook_url": "https://hooks.example.com/x", "webhook_secret": "whsec_x"}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "webhook_secret");
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn the_seed_config_is_kept_per_mode() {
    let app = spawn_app().await;
    let t = app.register("seed-modes@acme.com").await;
    let resp = app
        .req(Method::POST, CONFIG, &t.jwt())
        .header("X-Mode", "live")
        .json(&json!({"webhook_url": "https://hooks.example.com/live"}))
        .send()
        .await
        .unwrap();
    let live = body(resp, StatusCode::OK).await;
    assert_eq!(live["livemode"], true);
    let test_config = body(app.get(CONFIG, &t.jwt()).await, StatusCode::OK).await;
    assert!(test_config["webhook_url"].is_null());
    assert_eq!(test_config["livemode"], false);
    let live_config = body(app.get(CONFIG, &t.sk_live()).await, StatusCode::OK).await;
    assert_eq!(live_config["webhook_url"], "https://hooks.example.com/live");
    assert_eq!(live_config["endpoint_id"], live["endpoint_id"]);
    assert_problem(
        app.post(TEST, &t.sk_test(), &json!({})).await,
        StatusCode::CONFLICT,
        "webhook_not_configured",
    )
    .await;
}

#[tokio::test]
async fn the_seed_test_answers_409_when_the_configured_endpoint_is_disabled() {
    let app = spawn_app().await;
    let t = app.register("seed-off@acme.com").await;
    let config = body(
        app.post(
            CONFIG,
            &t.jwt(),
            &json!({"webhook_url": "https://hooks.example.com/off"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let resp = app
        .send(
            Method::PATCH,
            &path(&s(&config["endpoint_id"])),
            &t.jwt(),
            Some(&json!({"enabled": false})),
        )
        .await;
    body(resp, StatusCode::OK).await;
    let before = written(&app).await;
    assert_problem(
        app.post(TEST, &t.jwt(), &json!({})).await,
        StatusCode::CONFLICT,
        "webhook_endpoint_disabled",
    )
    .await;
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn the_seed_test_answers_409_until_a_webhook_is_configured() {
    let app = spawn_app().await;
    let t = app.register("seed-409@acme.com").await;
    let before = written(&app).await;
    for p in [TEST, TEST.trim_end_matches('/')] {
        assert_problem(
            app.post(p, &t.jwt(), &json!({})).await,
            StatusCode::CONFLICT,
            "webhook_not_configured",
        )
        .await;
    }
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn the_seed_test_records_a_webhook_test_event_with_one_pending_delivery_and_job() {
    let app = spawn_app().await;
    let t = app.register("seed-test@acme.com").await;
    // Another endpoint taking every event: the test is for the configured one only.
    let bystander = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/everything"}),
    )
    .await;
    let config = body(
        app.post(
            CONFIG,
            &t.jwt(),
            &json!({"webhook_url": "https://hooks.example.com/test"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let endpoint = s(&config["endpoint_id"]);
    let queued = body(
        app.post(TEST, &t.jwt(), &json!({})).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let event_id = s(&queued["event_id"]);
    let delivery_id = s(&queued["delivery_id"]);
    assert!(event_id.starts_with("evt_"));
    assert!(delivery_id.starts_with("msg_"));
    assert_eq!(queued["endpoint_id"], endpoint.as_str());
    assert_eq!(queued["status"], "pending");

    let tests = event_objects(&app, &t, false, "webhook.test").await;
    assert_eq!(tests.len(), 1);
    assert_eq!(tests[0]["endpoint_id"], endpoint.as_str());
    let event = body(
        app.get(&format!("/api/v1/events/{event_id}"), &t.jwt())
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(event["type"], "webhook.test");

    let event_uuid = shared::ids::EventId::parse(&event_id).unwrap().as_uuid();
    let deliveries: Vec<(Uuid, String, Uuid)> = sqlx::query_as(
        "SELECT id, status, endpoint_id FROM webhook_deliveries WHERE event_id = $1",
    )
    .bind(event_uuid)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let endpoint_uuid = WebhookEndpointId::parse(&endpoint).unwrap().as_uuid();
    assert_eq!(
        deliveries,
        vec![(delivery_uuid(&delivery_id), "pending".into(), endpoint_uuid)]
    );
    assert!(
        delivered_types(&app, &bystander, "webhook.test")
            .await
            .is_empty()
    );
    let jobs: Vec<(String, String, String, i32)> =
        sqlx::query_as("SELECT queue, kind, state, attempts FROM jobs WHERE id = $1")
            .bind(delivery_uuid(&delivery_id))
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        jobs,
        vec![(
            "webhooks".into(),
            "webhook.deliver".into(),
            "pending".into(),
            0
        )]
    );
}

#[tokio::test]
async fn deleting_the_seed_config_removes_its_endpoint_and_a_second_delete_answers_404() {
    let app = spawn_app().await;
    let t = app.register("seed-del@acme.com").await;
    let config = body(
        app.post(
            CONFIG,
            &t.jwt(),
            &json!({"webhook_url": "https://hooks.example.com/del"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let endpoint = s(&config["endpoint_id"]);
    body(
        app.post(TEST, &t.jwt(), &json!({})).await,
        StatusCode::ACCEPTED,
    )
    .await;
    let deleted = body(
        app.send(Method::DELETE, CONFIG, &t.jwt(), None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deleted["deleted"], true);
    assert_eq!(deleted["endpoint_id"], endpoint.as_str());
    assert_eq!(app.count("webhook_endpoints").await, 0);
    // Its pending deliveries and their jobs went with it.
    assert_eq!(app.count("webhook_deliveries").await, 0);
    let webhook_jobs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE queue = 'webhooks'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(webhook_jobs, 0);
    let config = body(app.get(CONFIG, &t.jwt()).await, StatusCode::OK).await;
    assert!(config["webhook_url"].is_null());
    assert_problem(
        app.send(Method::DELETE, CONFIG.trim_end_matches('/'), &t.jwt(), None)
            .await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
}

#[tokio::test]
async fn regenerating_test_keys_fans_its_events_out_to_matching_enabled_test_endpoints_only() {
    let app = spawn_app().await;
    let t = app.register("fanout@acme.com").await;
    let every = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/all"}),
    )
    .await;
    let created_only = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/created", "event_types": ["api_key.created"]}),
    )
    .await;
    let disabled = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/off", "enabled": false}),
    )
    .await;
    let live = endpoint_id(
        &app,
        &t.sk_live(),
        json!({"url": "https://hooks.example.com/live"}),
    )
    .await;

    let resp = app
        .post(REGENERATE, &t.jwt(), &json!({"mode": "test"}))
        .await;
    let regenerated = body(resp, StatusCode::OK).await;
    let (n_created, n_revoked) = (
        regenerated["keys"].as_array().unwrap().len(),
        regenerated["revoked"].as_array().unwrap().len(),
    );
    assert_eq!((n_created, n_revoked), (2, 2));
    assert_eq!(
        event_objects(&app, &t, false, "api_key.created")
            .await
            .len(),
        n_created
    );
    assert_eq!(
        event_objects(&app, &t, false, "api_key.revoked")
            .await
            .len(),
        n_revoked
    );
    assert!(
        event_objects(&app, &t, true, "api_key.created")
            .await
            .is_empty()
    );

    let created = "api_key.created".to_owned();
    let revoked = "api_key.revoked".to_owned();
    assert_eq!(
        delivered_types(&app, &every, "api_key.").await,
        vec![created.clone(), created.clone(), revoked.clone(), revoked]
    );
    assert_eq!(
        delivered_types(&app, &created_only, "api_key.").await,
        vec![created.clone(), created]
    );
    assert!(delivered_types(&app, &disabled, "").await.is_empty());
    assert!(delivered_types(&app, &live, "api_key.").await.is_empty());
    // Every delivery is pending with its job queued under the same id.
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries d LEFT JOIN jobs j ON j.id = d.id \
         WHERE d.status <> 'pending' OR j.id IS NULL OR j.queue <> 'webhooks' \
         OR j.state <> 'pending'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
}

#[tokio::test]
async fn an_endpoints_deliveries_are_listed_pending_with_empty_attempt_logs() {
    let app = spawn_app().await;
    let t = app.register("deliveries@acme.com").await;
    let id = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/d", "event_types": ["api_key.created", "api_key.revoked"]}),
    )
    .await;
    let other = endpoint_id(
        &app,
        &t.jwt(),
        json!({"url": "https://hooks.example.com/other"}),
    )
    .await;
    body(
        app.post(REGENERATE, &t.jwt(), &json!({"mode": "test"}))
            .await,
        StatusCode::OK,
    )
    .await;
    let expected: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM webhook_deliveries WHERE endpoint_id = $1 ORDER BY id DESC",
    )
    .bind(WebhookEndpointId::parse(&id).unwrap())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(expected.len(), 4);

    let list = body(
        app.get(&format!("{}/deliveries", path(&id)), &t.jwt())
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(list["has_more"], false);
    let data = list["data"].as_array().unwrap();
    let got: Vec<Uuid> = data.iter().map(|d| delivery_uuid(&s(&d["id"]))).collect();
    assert_eq!(got, expected);
    for d in data {
        assert_eq!(d["endpoint_id"], id.as_str());
        assert_eq!(d["status"], "pending");
        assert_eq!(d["attempts"], 0);
        assert_eq!(d["attempt_log"], json!([]));
        assert!(d["last_attempt_at"].is_null());
        assert!(d["next_attempt_at"].is_string());
        assert!(s(&d["event_id"]).starts_with("evt_"));
        let ty = s(&d["event_type"]);
        assert!(ty == "api_key.created" || ty == "api_key.revoked", "{ty}");
    }
    let first = body(
        app.get(&format!("{}/deliveries?limit=1", path(&id)), &t.jwt())
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["has_more"], true);
    assert_eq!(ids(&first), vec![s(&data[0]["id"])]);
    let next = body(
        app.get(
            &format!(
                "{}/deliveries?limit=1&starting_after={}",
                path(&id),
                s(&data[0]["id"])
            ),
            &t.jwt(),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ids(&next), vec![s(&data[1]["id"])]);
    assert_eq!(next["has_more"], true);
    // The other endpoint's deliveries are not listed here.
    let other_list = body(
        app.get(&format!("{}/deliveries", path(&other)), &t.jwt())
            .await,
        StatusCode::OK,
    )
    .await;
    let other_ids = ids(&other_list);
    assert!(other_ids.iter().all(|d| !got.contains(&delivery_uuid(d))));
}
