use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Cred, PASSWORD, assert_problem, s, spawn_app};

#[tokio::test]
async fn register_returns_keys_secret_and_tokens_once() {
    let app = spawn_app().await;
    let t = app.register("owner@acme.com").await;
    assert!(t.id.starts_with("ten_"));
    assert!(t.sk_test.starts_with("sk_test_") && t.sk_live.starts_with("sk_live_"));
    assert!(t.pk_test.starts_with("pk_test_") && t.pk_live.starts_with("pk_live_"));
    assert!(s(&t.body["webhook_secret"]).starts_with("whsec_"));
    assert_eq!(t.body["user"]["role"], "owner");
    assert_eq!(t.body["tenant"]["platform_fee_bps"], 1500);
    assert_eq!(t.body["tenant"]["platform_fee_percentage"], "15.00");
    assert_eq!(t.body["tenant"]["subscription_tier"], "free");
    assert_eq!(t.body["tenant"]["is_active"], true);
    assert_eq!(t.body["tokens"]["token_type"], "Bearer");
}

#[tokio::test]
async fn register_stores_only_hashes_of_keys_and_an_argon2id_password() {
    let app = spawn_app().await;
    let t = app.register("hash@acme.com").await;
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT key_hash FROM api_keys")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(hashes.len(), 4);
    for key in [&t.sk_test, &t.sk_live, &t.pk_test, &t.pk_live] {
        let h = shared::crypto::sha256(key.as_bytes()).to_vec();
        assert!(hashes.contains(&h));
    }
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM api_keys) t")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        !dump.contains(&t.sk_test[8..]),
        "a key is stored in the clear"
    );
    let pw: String = sqlx::query_scalar("SELECT password_hash FROM users")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(pw.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    let secret = s(&t.body["webhook_secret"]);
    let tenant_dump: String =
        sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM tenants) t")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(
        !tenant_dump.contains(&secret[6..]),
        "the webhook secret is stored in the clear"
    );
}

#[tokio::test]
async fn register_gives_each_tenant_a_unique_slug() {
    let app = spawn_app().await;
    let body =
        |email: &str| json!({"company_name": "Acme Inc", "email": email, "password": PASSWORD});
    let a: Value = app
        .post(
            "/api/v1/auth/tenants/register",
            &Cred::None,
            &body("a@acme.com"),
        )
        .await
        .json()
        .await
        .unwrap();
    let b: Value = app
        .post(
            "/api/v1/auth/tenants/register",
            &Cred::None,
            &body("b@acme.com"),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(a["tenant"]["slug"], "acme-inc");
    assert_ne!(a["tenant"]["slug"], b["tenant"]["slug"]);
    assert!(s(&b["tenant"]["slug"]).starts_with("acme-inc-"));
}

#[tokio::test]
async fn register_rejects_a_taken_email_with_409_and_writes_nothing() {
    let app = spawn_app().await;
    app.register("dup@acme.com").await;
    let resp = app
        .post(
            "/api/v1/auth/tenants/register",
            &Cred::None,
            &json!({"company_name": "Other", "email": "DUP@acme.com", "password": PASSWORD}),
        )
        .await;
    let body = assert_problem(resp, StatusCode::CONFLICT, "email_taken").await;
    assert_eq!(body["field"], "email");
    assert_eq!(app.count("tenants").await, 1);
    assert_eq!(app.count("api_keys").await, 4);
}

#[tokio::test]
async fn register_validates_each_field_and_names_it() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"company_name": "A", "email": "not-an-email", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"company_name": "A", "email": "a@b.com", "password": "short"}),
            "password",
        ),
        (
            json!({"company_name": "   ", "email": "a@b.com", "password": PASSWORD}),
            "company_name",
        ),
        (
            json!({"company_name": "A", "email": "a@b.com", "password": PASSWORD, "domain": "no spaces allowed"}),
            "domain",
        ),
        (
            json!({"email": "a@b.com", "password": PASSWORD}),
            "company_name",
        ),
        (
            json!({"company_name": 7, "email": "a@b.com", "password": PASSWORD}),
            "company_name",
        ),
        (
            json!({"company_name": "A", "email": "a@b.com", "password": PASSWORD, "is_admin": true}),
            "is_admin",
        ),
    ];
    for (body, field) in cases {
        let resp = app
            .post("/api/v1/auth/tenants/register", &Cred::None, &body)
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body}");
    }
    assert_eq!(app.count("tenants").await, 0);
    assert_eq!(app.count("users").await, 0);
}

#[tokio::test]
async fn login_returns_tokens_and_updates_last_login() {
    let app = spawn_app().await;
    app.register("login@acme.com").await;
    let resp = app.login("Login@Acme.com", PASSWORD).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert!(body["access"].is_string() && body["refresh"].is_string());
    assert_eq!(body["user"]["email"], "login@acme.com");
    assert!(body["user"]["last_login_at"].is_string());
    let me = app
        .get(
            "/api/v1/auth/tenants/me/",
            &Cred::Bearer(s(&body["access"])),
        )
        .await;
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn login_answers_unknown_email_and_wrong_password_alike() {
    let app = spawn_app().await;
    app.register("same@acme.com").await;
    let wrong = assert_problem(
        app.login("same@acme.com", "WrongPass123!").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    let unknown = assert_problem(
        app.login("nobody@acme.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
    assert_eq!(wrong, unknown);
}

#[tokio::test]
async fn login_attempts_are_limited_per_email() {
    let app = crate::helpers::spawn_app_with(&[("LOGIN_ATTEMPTS_PER_EMAIL", "3")]).await;
    app.register("brute@acme.com").await;
    for _ in 0..3 {
        assert_eq!(
            app.login("brute@acme.com", "WrongPass123!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = app.login("brute@acme.com", PASSWORD).await;
    assert!(resp.headers().get("retry-after").is_some());
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Another email from the same address is still allowed (the per-IP limit is higher).
    app.register("other@acme.com").await;
    assert_eq!(
        app.login("other@acme.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

/// A client whose connections come from another loopback address (another client machine).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

#[tokio::test]
async fn wrong_passwords_from_one_address_do_not_lock_the_owner_out_elsewhere() {
    let app = spawn_app().await;
    app.register("victim@acme.com").await;
    // An attacker tries ten wrong passwords: the eleventh attempt from there is refused.
    for _ in 0..10 {
        assert_eq!(
            app.login("victim@acme.com", "WrongPass123!").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_problem(
        app.login("victim@acme.com", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
    // The owner, at another address, logs in.
    let owner = client_from([127, 0, 0, 2])
        .post(app.url("/api/v1/auth/tenants/login/"))
        .json(&json!({"email": "victim@acme.com", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(owner.status(), StatusCode::OK);
}

#[tokio::test]
async fn registrations_are_limited_per_client_address() {
    let app = crate::helpers::spawn_app_with(&[("REGISTRATIONS_PER_IP", "3")]).await;
    for i in 0..3 {
        app.register(&format!("signup{i}@acme.com")).await;
    }
    let body = json!({"company_name": "Flood", "email": "flood@acme.com", "password": PASSWORD});
    let resp = app
        .post("/api/v1/auth/tenants/register/", &Cred::None, &body)
        .await;
    assert!(resp.headers().get("retry-after").is_some());
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert_eq!(app.count("tenants").await, 3);
    // Someone else, elsewhere, still signs up.
    let other = client_from([127, 0, 0, 3])
        .post(app.url("/api/v1/auth/tenants/register/"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn login_attempts_are_limited_per_client_address() {
    let app = crate::helpers::spawn_app_with(&[("LOGIN_ATTEMPTS_PER_IP", "2")]).await;
    for i in 0..2 {
        app.login(&format!("x{i}@acme.com"), PASSWORD).await;
    }
    assert_problem(
        app.login("y@acme.com", PASSWORD).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    )
    .await;
}

#[tokio::test]
async fn refresh_rotates_and_a_used_refresh_token_is_rejected() {
    let app = spawn_app().await;
    let t = app.register("rot@acme.com").await;
    let first = app
        .post(
            "/api/v1/auth/tenants/token/refresh/",
            &Cred::None,
            &json!({"refresh": t.refresh}),
        )
        .await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    assert_ne!(s(&first["refresh"]), t.refresh);
    let again = app
        .post(
            "/api/v1/auth/tenants/token/refresh",
            &Cred::None,
            &json!({"refresh": t.refresh}),
        )
        .await;
    assert_problem(again, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // Reuse of a stolen token revokes the whole chain, including the newest token.
    let newest = app
        .post(
            "/api/v1/auth/tenants/token/refresh",
            &Cred::None,
            &json!({"refresh": first["refresh"]}),
        )
        .await;
    assert_problem(newest, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn an_access_token_cannot_be_used_to_refresh_nor_a_refresh_token_to_authenticate() {
    let app = spawn_app().await;
    let t = app.register("types@acme.com").await;
    let resp = app
        .post(
            "/api/v1/auth/tenants/token/refresh",
            &Cred::None,
            &json!({"refresh": t.access}),
        )
        .await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
    let resp = app
        .get("/api/v1/auth/tenants/me", &Cred::Bearer(t.refresh.clone()))
        .await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_token").await;
}

#[tokio::test]
async fn me_needs_a_user_token() {
    let app = spawn_app().await;
    let t = app.register("me@acme.com").await;
    let me: Value = app
        .get("/api/v1/auth/tenants/me", &t.jwt())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["email"], "me@acme.com");
    assert_eq!(me["tenant"]["id"], t.id.as_str());
    assert_problem(
        app.get("/api/v1/auth/tenants/me", &t.sk_test()).await,
        StatusCode::FORBIDDEN,
        "user_token_required",
    )
    .await;
    assert_problem(
        app.get("/api/v1/auth/tenants/me", &Cred::None).await,
        StatusCode::UNAUTHORIZED,
        "missing_credentials",
    )
    .await;
}

#[tokio::test]
async fn change_password_needs_the_current_one_and_ends_old_tokens() {
    let app = spawn_app().await;
    let t = app.register("pw@acme.com").await;
    let path = "/api/v1/auth/tenants/change-password/";
    let wrong = app
        .post(
            path,
            &t.jwt(),
            &json!({"current_password": "WrongPass123!", "new_password": "NewSecurePass456!"}),
        )
        .await;
    let p = assert_problem(wrong, StatusCode::BAD_REQUEST, "invalid_current_password").await;
    assert_eq!(p["field"], "current_password");
    let short = app
        .post(
            path,
            &t.jwt(),
            &json!({"current_password": PASSWORD, "new_password": "short"}),
        )
        .await;
    assert_problem(short, StatusCode::BAD_REQUEST, "validation_failed").await;

    let ok = app
        .post(
            path,
            &t.jwt(),
            &json!({"current_password": PASSWORD, "new_password": "NewSecurePass456!"}),
        )
        .await;
    assert_eq!(ok.status(), StatusCode::OK);
    let fresh: Value = ok.json().await.unwrap();

    let old_refresh = app
        .post(
            "/api/v1/auth/tenants/token/refresh",
            &Cred::None,
            &json!({"refresh": t.refresh}),
        )
        .await;
    assert_problem(old_refresh, StatusCode::UNAUTHORIZED, "invalid_token").await;
    assert_problem(
        app.get("/api/v1/auth/tenants/me", &t.jwt()).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_eq!(
        app.get(
            "/api/v1/auth/tenants/me",
            &Cred::Bearer(s(&fresh["access"]))
        )
        .await
        .status(),
        StatusCode::OK
    );
    assert_eq!(
        app.login("pw@acme.com", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login("pw@acme.com", "NewSecurePass456!").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn change_password_refuses_api_keys() {
    let app = spawn_app().await;
    let t = app.register("pwkey@acme.com").await;
    let resp = app
        .post(
            "/api/v1/auth/tenants/change-password",
            &t.sk_test(),
            &json!({"current_password": PASSWORD, "new_password": "NewSecurePass456!"}),
        )
        .await;
    assert_problem(resp, StatusCode::FORBIDDEN, "user_token_required").await;
}

#[tokio::test]
async fn verify_accepts_every_valid_credential_in_both_methods_and_headers() {
    let app = spawn_app().await;
    let t = app.register("verify@acme.com").await;
    let cases = [
        (Cred::Bearer(t.sk_test.clone()), "test", "secret"),
        (Cred::XApiKey(t.sk_live.clone()), "live", "secret"),
        (Cred::XApiKey(t.pk_test.clone()), "test", "publishable"),
        (Cred::Bearer(t.pk_live.clone()), "live", "publishable"),
        (t.jwt(), "test", "user"),
    ];
    for (cred, mode, kind) in cases {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let resp = app
                .send(method.clone(), "/api/v1/auth/tenants/verify/", &cred, None)
                .await;
            assert_eq!(resp.status(), StatusCode::OK, "{cred:?} {method}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(
                (body["mode"].as_str(), body["credential"].as_str()),
                (Some(mode), Some(kind))
            );
            assert_eq!(body["tenant_id"], t.id.as_str());
        }
    }
}

#[tokio::test]
async fn verify_refuses_missing_malformed_and_unknown_credentials() {
    let app = spawn_app().await;
    let path = "/api/v1/auth/tenants/verify";
    assert_problem(
        app.get(path, &Cred::None).await,
        StatusCode::UNAUTHORIZED,
        "missing_credentials",
    )
    .await;
    assert_problem(
        app.get(path, &Cred::Bearer("sk_test_short".into())).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    let unknown = format!("sk_live_{}", "a".repeat(32));
    assert_problem(
        app.get(path, &Cred::XApiKey(unknown)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_api_key",
    )
    .await;
    assert_problem(
        app.get(path, &Cred::Bearer("not.a.jwt".into())).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    let basic = app
        .client
        .get(app.url(path))
        .header("Authorization", "Basic dXNlcjpwdw==")
        .send()
        .await
        .unwrap();
    assert_problem(basic, StatusCode::UNAUTHORIZED, "invalid_authorization").await;
}

#[tokio::test]
async fn details_show_the_tenant_and_the_mode_of_the_key() {
    let app = spawn_app().await;
    let t = app.register("details@acme.com").await;
    let live: Value = app
        .get("/api/v1/auth/tenants/details/", &t.sk_live())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(live["mode"], "live");
    assert_eq!(live["tenant"]["id"], t.id.as_str());
    assert_eq!(live["active_users"], 1);
    assert_eq!(live["active_api_keys"], 4);
    let test: Value = app
        .get("/api/v1/auth/tenants/details", &t.sk_test())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(test["mode"], "test");
    let jwt_live = app
        .req(
            reqwest::Method::GET,
            "/api/v1/auth/tenants/details",
            &t.jwt(),
        )
        .header("X-Mode", "live")
        .send()
        .await
        .unwrap();
    let jwt_live: Value = jwt_live.json().await.unwrap();
    assert_eq!(jwt_live["mode"], "live");
    let bad_mode = app
        .req(
            reqwest::Method::GET,
            "/api/v1/auth/tenants/details",
            &t.jwt(),
        )
        .header("X-Mode", "prod")
        .send()
        .await
        .unwrap();
    assert_problem(bad_mode, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn register_rejects_control_characters_in_names_with_400_and_writes_nothing() {
    let app = spawn_app().await;
    for (field, value) in [
        ("first_name", "a\u{0}b"),
        ("last_name", "a\u{0}b"),
        ("first_name", "line\nbreak"),
        ("last_name", "esc\u{1b}[31m"),
    ] {
        let mut body = json!({"company_name": "Acme", "email": "ctl@acme.com", "password": PASSWORD, "first_name": "Ada", "last_name": "Lovelace"});
        body[field] = json!(value);
        let resp = app
            .post("/api/v1/auth/tenants/register/", &Cred::None, &body)
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body}");
        assert!(
            s(&problem["detail"]).contains("control characters"),
            "{problem}"
        );
    }
    assert_eq!(app.count("tenants").await, 0);
    assert_eq!(app.count("users").await, 0);
    assert_eq!(app.count("api_keys").await, 0);
}

#[tokio::test]
async fn login_also_returns_a_tokens_object_shaped_like_registration() {
    let app = spawn_app().await;
    let t = app.register("shape@acme.com").await;
    let body: Value = app
        .login("shape@acme.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let tokens = &body["tokens"];
    let mut keys: Vec<&String> = tokens.as_object().unwrap().keys().collect();
    keys.sort();
    let mut register_keys: Vec<&String> = t.body["tokens"].as_object().unwrap().keys().collect();
    register_keys.sort();
    assert_eq!(keys, ["access", "expires_in", "refresh", "token_type"]);
    assert_eq!(keys, register_keys);
    assert_eq!(tokens["token_type"], "Bearer");
    assert!(tokens["expires_in"].as_i64().unwrap() > 0);
    // The flat fields stay for earlier clients and carry the same values.
    for field in ["access", "refresh", "token_type", "expires_in"] {
        assert_eq!(body[field], tokens[field], "{field}");
    }
    // The grouped tokens work: the access token authenticates, the refresh token refreshes.
    let me = app
        .get(
            "/api/v1/auth/tenants/me/",
            &Cred::Bearer(s(&tokens["access"])),
        )
        .await;
    assert_eq!(me.status(), StatusCode::OK);
    let refreshed = app
        .post(
            "/api/v1/auth/tenants/token/refresh/",
            &Cred::None,
            &json!({"refresh": s(&tokens["refresh"])}),
        )
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
}
