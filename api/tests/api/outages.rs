//! Outages look like outages: a request that cannot be served because PostgreSQL or Redis is
//! down is a 503 problem with `Retry-After`, answered at once, never a credential error.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Cred, TestApp, assert_problem, spawn_app, spawn_app_behind_relay};

/// Longer than any answer the API gives during an outage, far shorter than a request that
/// waits for the database (the pool would wait 120 s for a connection).
const HANG: Duration = Duration::from_secs(30);

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    cred: &Cred,
    body: Option<Value>,
) -> reqwest::Response {
    let mut rb = app.req(method, path, cred).timeout(HANG);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    rb.send()
        .await
        .unwrap_or_else(|e| panic!("{path}: no answer during the outage: {e}"))
}

async fn ready(app: &TestApp) -> Value {
    app.client
        .get(app.url("/readyz"))
        .timeout(HANG)
        .send()
        .await
        .expect("readiness answers during an outage")
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn with_postgresql_down_every_request_with_a_valid_key_is_a_503_with_retry_after() {
    let (app, relay) = spawn_app_behind_relay(&[]).await;
    let t = app.register("outage@acme.com").await;
    let product: Value = app
        .post("/api/v1/products", &t.sk_test(), &json!({"name": "Kept"}))
        .await
        .json()
        .await
        .unwrap();
    let product_path = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
    relay.cut();
    // Readiness says so at once (each check is bounded), and the API now knows.
    let body = ready(&app).await;
    assert_eq!(body["postgres"], "unreachable", "{body}");
    assert_eq!(body["status"], "unavailable");
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/products".to_owned(),
            Some(json!({"name": "Lost"})),
        ),
        (
            Method::PATCH,
            product_path.clone(),
            Some(json!({"name": "Renamed"})),
        ),
        (Method::DELETE, product_path.clone(), None),
        (Method::GET, product_path.clone(), None),
        (Method::GET, "/api/v1/auth/tenants/verify".to_owned(), None),
    ] {
        for cred in [t.sk_test(), Cred::XApiKey(t.sk_test.clone()), t.jwt()] {
            let resp = send(&app, method.clone(), &path, &cred, body.clone()).await;
            assert!(
                resp.headers().get("retry-after").is_some(),
                "{method} {path}: no Retry-After"
            );
            assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
        }
    }
    // Back up: requests are served again, and nothing was written meanwhile.
    relay.restore();
    crate::helpers::wait_until("PostgreSQL back", || async {
        ready(&app).await["postgres"] == "ok"
    })
    .await;
    let got = app.get(&product_path, &t.sk_test()).await;
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.json::<Value>().await.unwrap()["name"], "Kept");
    assert_eq!(app.count("products").await, 1);
}

#[tokio::test]
async fn an_unknown_key_on_a_write_is_invalid_api_key_as_on_a_read() {
    let app = spawn_app().await;
    let unknown = Cred::Bearer("sk_test_0000000000000000000000000000unknown".into());
    for method in [Method::GET, Method::POST] {
        let resp = app
            .send(
                method,
                "/api/v1/products",
                &unknown,
                Some(&json!({"name": "x"})),
            )
            .await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    }
    let resp = app
        .send(
            Method::PATCH,
            "/api/v1/products/prod_01m80000000000000000000000",
            &unknown,
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
    let resp = app
        .send(
            Method::DELETE,
            "/api/v1/products/prod_01m80000000000000000000000",
            &unknown,
            None,
        )
        .await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
}

#[tokio::test]
async fn with_redis_down_requests_go_on_and_login_is_a_503() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let relay = crate::helpers::Relay::start(&crate::helpers::host_port(&redis)).await;
    let app = crate::helpers::spawn_app_with(&[("REDIS_URL", &relay.url_for(&redis))]).await;
    let t = app.register("redis-outage@acme.com").await;
    relay.cut();
    let body = ready(&app).await;
    assert_eq!(body["redis"], "unreachable", "{body}");
    assert_eq!(body["postgres"], "ok");
    // The per-key rate limit fails open: the request is served.
    let resp = send(
        &app,
        Method::POST,
        "/api/v1/products",
        &t.sk_test(),
        Some(json!({"name": "Served"})),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Login attempts cannot be counted: refused as an outage, not as bad credentials.
    let resp = app
        .client
        .post(app.url("/api/v1/auth/tenants/login/"))
        .timeout(HANG)
        .json(&json!({"email": "redis-outage@acme.com", "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("retry-after").is_some());
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    relay.restore();
    crate::helpers::wait_until("Redis back", || async {
        ready(&app).await["redis"] == "ok"
    })
    .await;
    assert_eq!(
        app.login("redis-outage@acme.com", crate::helpers::PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}
