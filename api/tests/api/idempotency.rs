use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Cred, PASSWORD, assert_problem, spawn_app};

async fn invite(
    app: &crate::helpers::TestApp,
    cred: &Cred,
    key: &str,
    email: &str,
) -> reqwest::Response {
    app.req(Method::POST, "/api/v1/users", cred)
        .header("Idempotency-Key", key)
        .json(&json!({"email": email, "password": PASSWORD, "role": "developer"}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_same_key_and_body_replay_the_first_response_without_a_second_write() {
    let app = spawn_app().await;
    let t = app.register("idem@acme.com").await;
    let first = invite(&app, &t.jwt(), "k-1", "once@acme.com").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body: Value = first.json().await.unwrap();
    let second = invite(&app, &t.jwt(), "k-1", "once@acme.com").await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second_body: Value = second.json().await.unwrap();
    assert_eq!(first_body, second_body);
    assert_eq!(app.count("users").await, 2);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_409_problem() {
    let app = spawn_app().await;
    let t = app.register("idem2@acme.com").await;
    assert_eq!(
        invite(&app, &t.jwt(), "k-2", "a@acme.com").await.status(),
        StatusCode::CREATED
    );
    let other = invite(&app, &t.jwt(), "k-2", "b@acme.com").await;
    assert_problem(other, StatusCode::CONFLICT, "idempotency_key_reused").await;
    assert_eq!(app.count("users").await, 2);
}

#[tokio::test]
async fn error_responses_are_replayed_too() {
    let app = spawn_app().await;
    let t = app.register("idem3@acme.com").await;
    let bad = json!({"email": "bad", "password": PASSWORD, "role": "developer"});
    let send = || {
        app.req(Method::POST, "/api/v1/users", &t.jwt())
            .header("Idempotency-Key", "k-3")
            .json(&bad)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::BAD_REQUEST);
    let second = send().await.unwrap();
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_problem(second, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn keys_are_scoped_per_tenant() {
    let app = spawn_app().await;
    let a = app.register("idem-a@acme.com").await;
    let b = app.register("idem-b@acme.com").await;
    assert_eq!(
        invite(&app, &a.jwt(), "shared", "ua@acme.com")
            .await
            .status(),
        StatusCode::CREATED
    );
    let resp = invite(&app, &b.jwt(), "shared", "ub@acme.com").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn malformed_keys_are_rejected() {
    let app = spawn_app().await;
    let t = app.register("idem4@acme.com").await;
    let long = "x".repeat(256);
    let resp = invite(&app, &t.jwt(), &long, "x@acme.com").await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "Idempotency-Key");
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn keys_expire_after_24_hours() {
    let app = spawn_app().await;
    let t = app.register("idem5@acme.com").await;
    assert_eq!(
        invite(&app, &t.jwt(), "old", "first@acme.com")
            .await
            .status(),
        StatusCode::CREATED
    );
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    // The expired key is forgotten: a different body is a new request, not a conflict.
    let resp = invite(&app, &t.jwt(), "old", "second@acme.com").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotent-replayed").is_none());
}
