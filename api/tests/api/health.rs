use reqwest::StatusCode;

use crate::helpers::{Cred, Relay, host_port, spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let resp = app.get("/healthz", &Cred::None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn readyz_reports_postgres_and_redis_reachable() {
    let app = spawn_app().await;
    let resp = app.get("/readyz", &Cred::None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "ok");
}

#[tokio::test]
async fn readyz_answers_503_naming_redis_when_redis_becomes_unreachable() {
    // Start-up refuses an unreachable Redis (see `startup.rs`), so Redis goes away afterwards.
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let relay = Relay::start(&host_port(&redis)).await;
    let app = spawn_app_with(&[("REDIS_URL", &relay.url_for(&redis))]).await;
    assert_eq!(
        app.get("/readyz", &Cred::None).await.status(),
        StatusCode::OK
    );
    relay.cut();
    let resp = app.get("/readyz", &Cred::None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "{ct}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["postgres"], "ok");
    assert_eq!(body["redis"], "unreachable");
    // Liveness does not depend on Redis.
    assert_eq!(
        app.get("/healthz", &Cred::None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let app = spawn_app().await;
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123");
    let resp = app.get("/healthz", &Cred::None).await;
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 32);
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "bad id with spaces");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    let t = app.register("m@example.com").await;
    app.get("/api/v1/auth/tenants/verify", &t.sk_test()).await;
    app.get(
        "/api/v1/auth/tenants/verify",
        &Cred::Bearer("sk_test_nope".into()),
    )
    .await;
    let text = app.get("/metrics", &Cred::None).await.text().await.unwrap();
    assert!(
        text.contains("http_requests_total{route=\"tenants.register\",status=\"201\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("http_requests_total{route=\"tenants.verify\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("http_requests_total{route=\"tenants.verify\",status=\"401\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "http_request_duration_seconds_bucket{route=\"tenants.verify\",le=\"+Inf\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn docs_and_openapi_document_are_served() {
    let app = spawn_app().await;
    let resp = app.get("/openapi.json", &Cred::None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let spec: serde_json::Value = resp.json().await.unwrap();
    assert!(spec["paths"]["/api/v1/auth/tenants/register"].is_object());
    let resp = app.get("/docs", &Cred::None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("swagger")
    );
}
