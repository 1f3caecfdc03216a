use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Cred, assert_problem, s, spawn_app, spawn_replica};

const LIST: &str = "/api/v1/auth/tenants/api-keys/";
const REGENERATE: &str = "/api/v1/auth/tenants/api-keys/regenerate/";
const REVOKE: &str = "/api/v1/auth/tenants/api-keys/revoke/";
const VERIFY: &str = "/api/v1/auth/tenants/verify";

#[tokio::test]
async fn list_shows_keys_masked_to_prefix_and_last_four() {
    let app = spawn_app().await;
    let t = app.register("list@acme.com").await;
    let resp = app.get(LIST, &t.jwt()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();
    for key in [&t.sk_test, &t.sk_live, &t.pk_test, &t.pk_live] {
        assert!(!text.contains(key.as_str()), "full key in the listing");
    }
    let body: Value = serde_json::from_str(&text).unwrap();
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    let sk_test = data.iter().find(|k| k["prefix"] == "sk_test_").unwrap();
    assert_eq!(sk_test["last4"], &t.sk_test[t.sk_test.len() - 4..]);
    assert_eq!(sk_test["status"], "active");
    assert_eq!(
        sk_test["display"],
        format!("sk_test_…{}", &t.sk_test[t.sk_test.len() - 4..])
    );
}

#[tokio::test]
async fn regenerate_replaces_keys_of_one_mode_and_the_old_ones_stop_at_once() {
    let app = spawn_app().await;
    let t = app.register("regen@acme.com").await;
    let resp = app
        .post(REGENERATE, &t.jwt(), &json!({"mode": "test"}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(body["revoked"].as_array().unwrap().len(), 2);
    let new_sk = keys
        .iter()
        .find(|k| k["kind"] == "secret")
        .map(|k| s(&k["key"]))
        .unwrap();
    assert!(new_sk.starts_with("sk_test_"));
    assert_problem(
        app.get(VERIFY, &t.sk_test()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    assert_problem(
        app.get(VERIFY, &Cred::Bearer(t.pk_test.clone())).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    assert_eq!(
        app.get(VERIFY, &Cred::Bearer(new_sk)).await.status(),
        StatusCode::OK
    );
    // The live keys are untouched.
    assert_eq!(app.get(VERIFY, &t.sk_live()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn regenerate_all_replaces_both_modes() {
    let app = spawn_app().await;
    let t = app.register("regenall@acme.com").await;
    let body: Value = app
        .post(REGENERATE, &t.jwt(), &json!({"mode": "all"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["keys"].as_array().unwrap().len(), 4);
    for old in [t.sk_test(), t.sk_live()] {
        assert_eq!(
            app.get(VERIFY, &old).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(active, 4);
}

#[tokio::test]
async fn regenerate_rejects_an_unknown_mode() {
    let app = spawn_app().await;
    let t = app.register("regenbad@acme.com").await;
    let p = assert_problem(
        app.post(REGENERATE, &t.jwt(), &json!({"mode": "prod"}))
            .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(p["field"], "mode");
    assert_eq!(app.get(VERIFY, &t.sk_test()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn revoke_needs_confirmation_and_changes_nothing_without_it() {
    let app = spawn_app().await;
    let t = app.register("revoke@acme.com").await;
    let resp = app
        .send(
            Method::DELETE,
            REVOKE,
            &t.jwt(),
            Some(&json!({"mode": "live", "confirm": false})),
        )
        .await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "confirm");
    assert_eq!(app.get(VERIFY, &t.sk_live()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn revoke_stops_the_keys_and_is_recorded_in_the_audit_log() {
    let app = spawn_app().await;
    let t = app.register("revoke2@acme.com").await;
    let resp = app
        .req(Method::DELETE, REVOKE, &t.jwt())
        .header("X-Request-Id", "revoke-req-1")
        .json(&json!({"mode": "live", "confirm": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let revoked: Vec<String> = body["revoked"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| s(&k["id"]))
        .collect();
    assert_eq!(revoked.len(), 2);
    assert_problem(
        app.get(VERIFY, &t.sk_live()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    assert_eq!(app.get(VERIFY, &t.sk_test()).await.status(), StatusCode::OK);

    let (actor, action, object, outcome): (String, String, String, i16) = sqlx::query_as(
        "SELECT actor, action, object_id, outcome FROM audit_log WHERE request_id = 'revoke-req-1'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(actor, t.owner_id);
    assert_eq!(action, "api_keys.revoke");
    assert_eq!(outcome, 200);
    for id in &revoked {
        assert!(object.contains(id.as_str()));
    }
    let log: Value = app
        .get("/api/v1/audit-log", &t.jwt())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["request_id"] == "revoke-req-1")
    );
    // The audit log refuses changes.
    assert!(
        sqlx::query("DELETE FROM audit_log")
            .execute(&app.pool)
            .await
            .is_err()
    );
    assert!(
        sqlx::query("UPDATE audit_log SET actor = 'x'")
            .execute(&app.pool)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn revoke_works_by_post_too() {
    let app = spawn_app().await;
    let t = app.register("revoke3@acme.com").await;
    let resp = app
        .post(REVOKE, &t.jwt(), &json!({"mode": "test", "confirm": true}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        app.get(VERIFY, &t.sk_test()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_another_replica_within_one_second() {
    let app = spawn_app().await;
    let other = spawn_replica(&app).await;
    let t = app.register("replica@acme.com").await;
    // The other replica has seen (and cached) the key.
    assert_eq!(
        other.get(VERIFY, &t.sk_live()).await.status(),
        StatusCode::OK
    );
    let resp = app
        .post(REVOKE, &t.jwt(), &json!({"mode": "live", "confirm": true}))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // One second after the revocation (the documented bound), by the replica's clock.
    other.clock.advance(std::time::Duration::from_millis(1000));
    assert_problem(
        other.get(VERIFY, &t.sk_live()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
}

#[tokio::test]
async fn key_management_is_for_owners_and_admins_only() {
    let app = spawn_app().await;
    let t = app.register("perm@acme.com").await;
    let (dev, _) = app.user_with_role(&t, "dev@acme.com", "developer").await;
    let (billing, _) = app.user_with_role(&t, "bill@acme.com", "billing").await;
    let (admin, _) = app.user_with_role(&t, "admin@acme.com", "admin").await;
    for cred in [Cred::Bearer(dev), Cred::Bearer(billing), t.sk_test()] {
        assert_problem(
            app.get(LIST, &cred).await,
            StatusCode::FORBIDDEN,
            "permission_denied",
        )
        .await;
        assert_problem(
            app.post(REGENERATE, &cred, &json!({"mode": "test"})).await,
            StatusCode::FORBIDDEN,
            "permission_denied",
        )
        .await;
        assert_problem(
            app.post(REVOKE, &cred, &json!({"mode": "test", "confirm": true}))
                .await,
            StatusCode::FORBIDDEN,
            "permission_denied",
        )
        .await;
    }
    assert_problem(
        app.get(LIST, &Cred::Bearer(t.pk_test.clone())).await,
        StatusCode::FORBIDDEN,
        "secret_key_required",
    )
    .await;
    assert_eq!(
        app.get(LIST, &Cred::Bearer(admin)).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.get(VERIFY, &t.sk_test()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn regenerate_accepts_the_seed_body_with_key_type_and_confirm() {
    let app = spawn_app().await;
    let t = app.register("seedregen@acme.com").await;
    let resp = app
        .post(
            REGENERATE,
            &t.jwt(),
            &json!({"key_type": "test", "confirm": true}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys.iter().all(|k| k["mode"] == "test"));
    assert_problem(
        app.get(VERIFY, &t.sk_test()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    assert_eq!(app.get(VERIFY, &t.sk_live()).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn regenerate_needs_exactly_one_of_mode_and_key_type_and_refuses_confirm_false() {
    let app = spawn_app().await;
    let t = app.register("regenargs@acme.com").await;
    for (body, field) in [
        (json!({}), "mode"),
        (json!({"confirm": true}), "mode"),
        (json!({"mode": "test", "key_type": "test"}), "key_type"),
        (json!({"key_type": "prod"}), "key_type"),
        (json!({"key_type": "live", "confirm": false}), "confirm"),
        (json!({"key_type": "live", "confirm": "yes"}), "confirm"),
    ] {
        let p = assert_problem(
            app.post(REGENERATE, &t.jwt(), &body).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(p["field"], field, "{body}");
    }
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(active, 4);
    assert_eq!(app.count("api_keys").await, 4);
}

#[tokio::test]
async fn revoke_accepts_key_type_in_place_of_mode_and_still_needs_confirmation() {
    let app = spawn_app().await;
    let t = app.register("seedrevoke@acme.com").await;
    for body in [
        json!({"key_type": "live"}),
        json!({"key_type": "live", "confirm": false}),
    ] {
        let p = assert_problem(
            app.send(Method::DELETE, REVOKE, &t.jwt(), Some(&body))
                .await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(p["field"], "confirm", "{body}");
    }
    let p = assert_problem(
        app.post(
            REVOKE,
            &t.jwt(),
            &json!({"mode": "live", "key_type": "live", "confirm": true}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "validation_failed",
    )
    .await;
    assert_eq!(p["field"], "key_type");
    assert_eq!(app.get(VERIFY, &t.sk_live()).await.status(), StatusCode::OK);

    let resp = app
        .send(
            Method::DELETE,
            REVOKE,
            &t.jwt(),
            Some(&json!({"key_type": "live", "confirm": true})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["revoked"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.get(VERIFY, &t.sk_live()).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get(VERIFY, &t.sk_test()).await.status(), StatusCode::OK);
}
