use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Cred, PASSWORD, TestApp, assert_problem, s, spawn_app, waits_for_lock};

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
    // Both requests are in the audit log.
    assert_eq!(audited(&app, "users.create").await, vec![201, 201]);
}

/// The outcomes recorded in the audit log for an operation, oldest first.
async fn audited(app: &TestApp, action: &str) -> Vec<i16> {
    sqlx::query_scalar("SELECT outcome FROM audit_log WHERE action = $1 ORDER BY id")
        .bind(action)
        .fetch_all(&app.pool)
        .await
        .unwrap()
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
async fn a_request_refused_by_validation_stores_nothing_and_the_corrected_retry_runs() {
    // As Stripe does: only a request that started executing has a result to replay.
    let app = spawn_app().await;
    let t = app.register("idem3@acme.com").await;
    let first = invite(&app, &t.jwt(), "k-3", "bad").await;
    let p = assert_problem(first, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(p["field"], "email");
    assert_eq!(app.count("idempotency_keys").await, 0);
    let fixed = invite(&app, &t.jwt(), "k-3", "fixed@acme.com").await;
    assert_eq!(fixed.status(), StatusCode::CREATED);
    assert!(fixed.headers().get("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_client_error_after_the_work_began_is_replayed_and_leaves_nothing_else() {
    let app = spawn_app().await;
    let t = app.register("idem3b@acme.com").await;
    // The owner's email is taken: the insert fails inside the request's transaction.
    let jwt = t.jwt();
    let send = || invite(&app, &jwt, "k-3b", "idem3b@acme.com");
    assert_problem(send().await, StatusCode::CONFLICT, "email_taken").await;
    let again = send().await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_problem(again, StatusCode::CONFLICT, "email_taken").await;
    assert_eq!(app.count("users").await, 1);
    // The refused request and its replay are in the audit log (the audit row of the refused
    // request was written although its work was rolled back).
    assert_eq!(audited(&app, "users.create").await, vec![409, 409]);
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
    assert_eq!(audited(&app, "users.create").await, vec![400]);
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
    // A day later by the app's clock (the key was stored by it too).
    app.clock.advance(std::time::Duration::from_secs(25 * 3600));
    // The expired key is forgotten: a different body is a new request, not a conflict.
    let resp = invite(&app, &t.jwt(), "old", "second@acme.com").await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("idempotent-replayed").is_none());
}

async fn regenerate(app: &TestApp, cred: &Cred, key: &str) -> reqwest::Response {
    app.req(
        Method::POST,
        "/api/v1/auth/tenants/api-keys/regenerate/",
        cred,
    )
    .header("Idempotency-Key", key)
    .json(&json!({"mode": "test"}))
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_stored_response_is_replayed_only_to_the_credential_that_made_the_request() {
    let app = spawn_app().await;
    let t = app.register("replay-owner@acme.com").await;
    let (billing, _) = app
        .user_with_role(&t, "replay-billing@acme.com", "billing")
        .await;
    let first = regenerate(&app, &t.jwt(), "rotate-1").await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let new_pk = first["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "publishable")
        .map(|k| s(&k["key"]))
        .unwrap();
    // The same request by the owner replays, with the new keys.
    let again = regenerate(&app, &t.jwt(), "rotate-1").await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap(), first);

    // A billing user with the owner's key is refused as a fresh request is: no keys.
    let stolen = regenerate(&app, &Cred::Bearer(billing), "rotate-1").await;
    assert!(stolen.headers().get("idempotent-replayed").is_none());
    let body = assert_problem(stolen, StatusCode::FORBIDDEN, "permission_denied").await;
    assert!(!body.to_string().contains("sk_test_"), "{body}");
    // So is the browser's publishable key.
    let stolen = regenerate(&app, &Cred::Bearer(new_pk), "rotate-1").await;
    let body = assert_problem(stolen, StatusCode::FORBIDDEN, "secret_key_required").await;
    assert!(!body.to_string().contains("sk_test_"), "{body}");
}

#[tokio::test]
async fn a_replay_passes_the_permission_check_again() {
    let app = spawn_app().await;
    let t = app.register("replay-demoted@acme.com").await;
    let (admin, admin_id) = app
        .user_with_role(&t, "replay-admin@acme.com", "admin")
        .await;
    let admin = Cred::Bearer(admin);
    assert_eq!(
        regenerate(&app, &admin, "rotate-2").await.status(),
        StatusCode::OK
    );
    let demoted = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            &t.jwt(),
            Some(&json!({"role": "billing"})),
        )
        .await;
    assert_eq!(demoted.status(), StatusCode::OK);
    let replay = regenerate(&app, &admin, "rotate-2").await;
    assert_problem(replay, StatusCode::FORBIDDEN, "permission_denied").await;
}

#[tokio::test]
async fn another_credential_with_the_same_key_gets_its_own_result() {
    let app = spawn_app().await;
    let t = app.register("replay-secret@acme.com").await;
    let (developer, _) = app
        .user_with_role(&t, "replay-dev@acme.com", "developer")
        .await;
    let create = |cred: Cred| {
        app.req(Method::POST, "/api/v1/webhook-endpoints", &cred)
            .header("Idempotency-Key", "endpoint-1")
            .json(&json!({"url": "https://hooks.acme.com/one"}))
            .send()
    };
    let mine: Value = create(t.sk_test()).await.unwrap().json().await.unwrap();
    let theirs = create(Cred::Bearer(developer)).await.unwrap();
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    let theirs: Value = theirs.json().await.unwrap();
    assert_ne!(theirs["endpoint"]["id"], mine["endpoint"]["id"]);
    assert_ne!(theirs["secret"], mine["secret"]);
    assert_eq!(app.count("webhook_endpoints").await, 2);
}

#[tokio::test]
async fn stored_responses_hold_no_secret_in_the_clear_yet_replay_it() {
    let app = spawn_app().await;
    let t = app.register("replay-clear@acme.com").await;
    let keys: Value = regenerate(&app, &t.jwt(), "secret-keys")
        .await
        .json()
        .await
        .unwrap();
    let endpoint: Value = app
        .req(Method::POST, "/api/v1/webhook-endpoints", &t.jwt())
        .header("Idempotency-Key", "secret-endpoint")
        .json(&json!({"url": "https://hooks.acme.com/two"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens: Value = app
        .req(
            Method::POST,
            "/api/v1/auth/tenants/change-password/",
            &t.jwt(),
        )
        .header("Idempotency-Key", "secret-password")
        .json(&json!({"current_password": PASSWORD, "new_password": "AnotherPass456!"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut secrets: Vec<String> = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| s(&k["key"]))
        .collect();
    secrets.push(s(&endpoint["secret"]));
    secrets.push(s(&tokens["access"]));
    secrets.push(s(&tokens["refresh"]));
    assert_eq!(secrets.len(), 5);
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM idempotency_keys k")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 3);
    let bytes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT response_enc FROM idempotency_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    for secret in &secrets {
        for row in &rows {
            assert!(
                !row.contains(secret.as_str()),
                "a secret in the clear: {row}"
            );
        }
        for b in &bytes {
            let needle = secret.as_bytes();
            assert!(!b.windows(needle.len()).any(|w| w == needle));
        }
    }
    // The owner's replay still shows the secret, decrypted (the new token is the same user).
    let replay: Value = app
        .req(
            Method::POST,
            "/api/v1/webhook-endpoints",
            &Cred::Bearer(s(&tokens["access"])),
        )
        .header("Idempotency-Key", "secret-endpoint")
        .json(&json!({"url": "https://hooks.acme.com/two"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(replay["secret"], endpoint["secret"]);
}

#[tokio::test]
async fn the_query_string_is_part_of_the_request_a_key_names() {
    let app = spawn_app().await;
    let t = app.register("replay-query@acme.com").await;
    let mut endpoints = Vec::new();
    for n in 0..2 {
        let resp = app
            .post(
                "/api/v1/webhook-endpoints",
                &t.sk_test(),
                &json!({"url": format!("https://hooks.acme.com/{n}")}),
            )
            .await;
        let body: Value = resp.json().await.unwrap();
        endpoints.push(s(&body["endpoint"]["id"]));
    }
    // An event for both endpoints.
    let made = app
        .post(
            "/api/v1/webhook-endpoints",
            &t.sk_test(),
            &json!({"url": "https://hooks.acme.com/2"}),
        )
        .await;
    assert_eq!(made.status(), StatusCode::CREATED);
    let event: String = sqlx::query_scalar::<_, uuid::Uuid>(
        "SELECT id FROM events WHERE type = 'webhook_endpoint.created' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .map(|u| shared::ids::EventId::from_uuid(u).to_string())
    .unwrap();
    let redeliver = |endpoint: &str| {
        app.req(
            Method::POST,
            &format!("/api/v1/events/{event}/redeliver?endpoint_id={endpoint}"),
            &t.sk_test(),
        )
        .header("Idempotency-Key", "redeliver-1")
        .send()
    };
    let first = redeliver(&endpoints[0]).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let other = redeliver(&endpoints[1]).await.unwrap();
    assert_problem(other, StatusCode::CONFLICT, "idempotency_key_reused").await;
    let same = redeliver(&endpoints[0]).await.unwrap();
    assert_eq!(same.headers()["idempotent-replayed"], "true");
}

/// `billing-api` as a process over an existing database, on a free port.
struct ApiProcess {
    child: std::process::Child,
    base: String,
}

impl ApiProcess {
    async fn start(app: &TestApp) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = &app.settings;
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_billing-api"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APP_SECRET", s.auth.app_secret.expose())
            .env("DATABASE_URL", s.database.url.expose())
            .env("REDIS_URL", s.redis.url.expose())
            .env("REDIS_KEY_PREFIX", &s.redis.key_prefix)
            .env("API_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if reqwest::get(format!("{base}/healthz")).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Self { child, base }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test]
async fn a_request_killed_after_claiming_its_key_leaves_nothing_and_its_retry_runs() {
    let app = spawn_app().await;
    let t = app.register("crash@acme.com").await;
    let api = ApiProcess::start(&app).await;
    let create = |base: String| {
        reqwest::Client::new()
            .post(format!("{base}/api/v1/products"))
            .bearer_auth(&t.sk_test)
            .header("Idempotency-Key", "crash-1")
            .json(&json!({"name": "Crash test"}))
            .send()
    };
    // Hold the products table so that the request stops after claiming its key, mid-work.
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE products IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let pending = tokio::spawn(create(api.base.clone()));
    assert!(
        waits_for_lock(&app, "INSERT INTO products").await,
        "the request never reached the products table"
    );
    api.kill();
    assert!(pending.await.unwrap().is_err(), "the killed API answered");
    lock.rollback().await.unwrap();

    let api = ApiProcess::start(&app).await;
    let retry = create(api.base.clone()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    let again = create(api.base.clone()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.count("products").await, 1);
}

#[tokio::test]
async fn a_handler_failing_after_the_claim_leaves_no_key_in_progress_and_the_retry_runs() {
    let app = spawn_app().await;
    let t = app.register("fail-after-claim@acme.com").await;
    // A fault inside the work, after the key was claimed: the product insert raises.
    sqlx::raw_sql(
        "CREATE FUNCTION fail_product() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$; \
         CREATE TRIGGER fail_product BEFORE INSERT ON products \
         FOR EACH ROW EXECUTE FUNCTION fail_product();",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let create = || {
        app.client
            .post(app.url("/api/v1/products"))
            .bearer_auth(&t.sk_test)
            .header("Idempotency-Key", "fail-1")
            .json(&json!({"name": "Fails once"}))
            .send()
    };
    let failed = create().await.unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // Nothing of the request stays: no claimed key, no product, no event.
    assert_eq!(app.count("idempotency_keys").await, 0);
    assert_eq!(app.count("products").await, 0);
    sqlx::raw_sql("DROP TRIGGER fail_product ON products")
        .execute(&app.pool)
        .await
        .unwrap();
    // The client's retry with the same key simply runs (not 409 in progress, not a replay).
    let retry = create().await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    let again = create().await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(app.count("products").await, 1);
}
