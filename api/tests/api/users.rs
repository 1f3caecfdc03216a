use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use shared::{
    clock::SystemClock,
    domain::{api_key::PresentedKey, role::Role},
    ids::{TenantId, UserId},
    service::{self, ServiceError, users::UserUpdate},
    uow::UnitOfWork,
};

use crate::helpers::{Cred, PASSWORD, TestApp, assert_problem, s, spawn_app};

#[tokio::test]
async fn owners_invite_users_who_can_then_log_in() {
    let app = spawn_app().await;
    let t = app.register("own@acme.com").await;
    let resp = app
        .post("/api/v1/users", &t.jwt(), &json!({"email": "New@acme.com", "password": PASSWORD, "role": "developer", "first_name": "Ada"}))
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let user: Value = resp.json().await.unwrap();
    assert!(s(&user["id"]).starts_with("usr_"));
    assert_eq!(user["email"], "new@acme.com");
    assert_eq!(user["role"], "developer");
    let login: Value = app
        .login("new@acme.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(login["user"]["role"], "developer");
    assert_eq!(login["tenant"]["id"], t.id.as_str());
}

#[tokio::test]
async fn invite_validates_and_refuses_duplicates() {
    let app = spawn_app().await;
    let t = app.register("own2@acme.com").await;
    let bad_role = app
        .post(
            "/api/v1/users",
            &t.jwt(),
            &json!({"email": "x@acme.com", "password": PASSWORD, "role": "god"}),
        )
        .await;
    assert_eq!(
        assert_problem(bad_role, StatusCode::BAD_REQUEST, "validation_failed").await["field"],
        "role"
    );
    let dup = app
        .post(
            "/api/v1/users",
            &t.jwt(),
            &json!({"email": "own2@acme.com", "password": PASSWORD, "role": "admin"}),
        )
        .await;
    assert_problem(dup, StatusCode::CONFLICT, "email_taken").await;
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn users_are_listed_newest_first_with_cursor_pagination() {
    let app = spawn_app().await;
    let t = app.register("page@acme.com").await;
    let mut ids = vec![t.owner_id.clone()];
    for i in 0..4 {
        let (_, id) = app
            .user_with_role(&t, &format!("p{i}@acme.com"), "billing")
            .await;
        ids.push(id);
    }
    ids.reverse(); // newest first
    let page1: Value = app
        .get("/api/v1/users?limit=2", &t.jwt())
        .await
        .json()
        .await
        .unwrap();
    let got: Vec<String> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| s(&u["id"]))
        .collect();
    assert_eq!(got, ids[..2]);
    assert_eq!(page1["has_more"], true);
    let page2: Value = app
        .get(
            &format!("/api/v1/users?limit=2&starting_after={}", got[1]),
            &t.jwt(),
        )
        .await
        .json()
        .await
        .unwrap();
    let got2: Vec<String> = page2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| s(&u["id"]))
        .collect();
    assert_eq!(got2, ids[2..4]);
    let page3: Value = app
        .get(
            &format!("/api/v1/users?limit=2&starting_after={}", got2[1]),
            &t.jwt(),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page3["data"].as_array().unwrap().len(), 1);
    assert_eq!(page3["has_more"], false);
    let back: Value = app
        .get(
            &format!("/api/v1/users?limit=2&ending_before={}", got2[0]),
            &t.jwt(),
        )
        .await
        .json()
        .await
        .unwrap();
    let got_back: Vec<String> = back["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| s(&u["id"]))
        .collect();
    assert_eq!(got_back, ids[..2]);
    // Both cursors: the users between them, newest first.
    let window: Value = app
        .get(
            &format!(
                "/api/v1/users?starting_after={}&ending_before={}",
                ids[0], ids[3]
            ),
            &t.jwt(),
        )
        .await
        .json()
        .await
        .unwrap();
    let between: Vec<String> = window["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| s(&u["id"]))
        .collect();
    assert_eq!(between, ids[1..3]);
    assert_eq!(window["has_more"], false);
    let bad = app.get("/api/v1/users?limit=500", &t.jwt()).await;
    assert_eq!(
        assert_problem(bad, StatusCode::BAD_REQUEST, "validation_failed").await["field"],
        "limit"
    );
    let bad_cursor = app
        .get("/api/v1/users?starting_after=cus_123", &t.jwt())
        .await;
    assert_eq!(
        assert_problem(bad_cursor, StatusCode::BAD_REQUEST, "validation_failed").await["field"],
        "starting_after"
    );
}

#[tokio::test]
async fn roles_can_be_changed_and_take_effect_on_the_next_request() {
    let app = spawn_app().await;
    let t = app.register("role@acme.com").await;
    let (dev_token, dev_id) = app.user_with_role(&t, "dev2@acme.com", "developer").await;
    let dev = Cred::Bearer(dev_token);
    assert_eq!(
        app.get("/api/v1/auth/tenants/api-keys", &dev)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    let resp = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{dev_id}"),
            &t.jwt(),
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        app.get("/api/v1/auth/tenants/api-keys", &dev)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn deactivated_users_cannot_log_in_and_their_tokens_stop_working() {
    let app = spawn_app().await;
    let t = app.register("deact@acme.com").await;
    let (token, id) = app.user_with_role(&t, "gone@acme.com", "developer").await;
    let resp = app
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{id}"),
            &t.jwt(),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["is_active"], false);
    assert_problem(
        app.get("/api/v1/auth/tenants/me", &Cred::Bearer(token))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    )
    .await;
    assert_problem(
        app.login("gone@acme.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    )
    .await;
}

#[tokio::test]
async fn reactivating_a_user_does_not_revive_the_tokens_issued_before() {
    let app = spawn_app().await;
    let t = app.register("revive@acme.com").await;
    let (token, id) = app.user_with_role(&t, "back@acme.com", "developer").await;
    let login: Value = app
        .login("back@acme.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/api/v1/users/{id}");
    let off = app.send(Method::DELETE, &path, &t.jwt(), None).await;
    assert_eq!(off.status(), StatusCode::OK);
    let on = app
        .send(
            Method::PATCH,
            &path,
            &t.jwt(),
            Some(&json!({"is_active": true})),
        )
        .await;
    assert_eq!(on.status(), StatusCode::OK);
    // (The update cleared this replica's credential cache.)
    for old in [token, s(&login["access"])] {
        assert_problem(
            app.get("/api/v1/auth/tenants/me", &Cred::Bearer(old)).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        )
        .await;
    }
    let refreshed = app
        .post(
            "/api/v1/auth/tenants/token/refresh/",
            &Cred::None,
            &json!({"refresh": s(&login["refresh"])}),
        )
        .await;
    assert_problem(refreshed, StatusCode::UNAUTHORIZED, "invalid_token").await;
    // Logging in again works, and the new token does.
    let fresh: Value = app
        .login("back@acme.com", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        app.get(
            "/api/v1/auth/tenants/me",
            &Cred::Bearer(s(&fresh["access"]))
        )
        .await
        .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn admins_cannot_touch_owners_and_nobody_demotes_themselves() {
    let app = spawn_app().await;
    let t = app.register("guard@acme.com").await;
    let (admin, admin_id) = app.user_with_role(&t, "adm@acme.com", "admin").await;
    let admin = Cred::Bearer(admin);
    let owner_path = format!("/api/v1/users/{}", t.owner_id);
    assert_problem(
        app.send(
            Method::PATCH,
            &owner_path,
            &admin,
            Some(&json!({"role": "developer"})),
        )
        .await,
        StatusCode::FORBIDDEN,
        "permission_denied",
    )
    .await;
    assert_problem(
        app.send(Method::DELETE, &owner_path, &admin, None).await,
        StatusCode::FORBIDDEN,
        "permission_denied",
    )
    .await;
    let make_owner = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{admin_id}"),
            &admin,
            Some(&json!({"role": "owner"})),
        )
        .await;
    assert_problem(make_owner, StatusCode::FORBIDDEN, "permission_denied").await;
    let self_demote = app
        .send(
            Method::PATCH,
            &owner_path,
            &t.jwt(),
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_problem(self_demote, StatusCode::CONFLICT, "cannot_modify_self").await;
    let me: Value = app.get(&owner_path, &t.jwt()).await.json().await.unwrap();
    assert_eq!(me["role"], "owner");
}

#[tokio::test]
async fn an_owner_can_demote_another_but_the_remaining_owner_is_out_of_reach() {
    let app = spawn_app().await;
    let t = app.register("last@acme.com").await;
    let (second_owner, second_id) = app.user_with_role(&t, "owner2@acme.com", "owner").await;
    // With two owners, one may demote the other.
    let resp = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{}", t.owner_id),
            &Cred::Bearer(second_owner.clone()),
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Now the second owner is the last one: the (now admin) first user cannot touch them.
    let resp = app
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{second_id}"),
            &t.jwt(),
            None,
        )
        .await;
    assert_problem(resp, StatusCode::FORBIDDEN, "permission_denied").await;
}

#[tokio::test]
async fn developers_billing_and_keys_can_read_users_but_not_manage_them() {
    let app = spawn_app().await;
    let t = app.register("readers@acme.com").await;
    let (dev, _) = app.user_with_role(&t, "d@acme.com", "developer").await;
    let (billing, _) = app.user_with_role(&t, "b@acme.com", "billing").await;
    for cred in [
        Cred::Bearer(dev),
        Cred::Bearer(billing),
        t.sk_test(),
        t.sk_live(),
    ] {
        assert_eq!(
            app.get("/api/v1/users", &cred).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            app.get(&format!("/api/v1/users/{}", t.owner_id), &cred)
                .await
                .status(),
            StatusCode::OK
        );
        let resp = app
            .post(
                "/api/v1/users",
                &cred,
                &json!({"email": "z@acme.com", "password": PASSWORD, "role": "billing"}),
            )
            .await;
        assert_problem(resp, StatusCode::FORBIDDEN, "permission_denied").await;
    }
    assert_problem(
        app.get("/api/v1/users", &Cred::Bearer(t.pk_live.clone()))
            .await,
        StatusCode::FORBIDDEN,
        "secret_key_required",
    )
    .await;
    assert_eq!(app.count("users").await, 3);
}

#[tokio::test]
async fn invite_and_update_reject_control_characters_in_names_and_write_nothing() {
    let app = spawn_app().await;
    let t = app.register("ctl-users@acme.com").await;
    for field in ["first_name", "last_name"] {
        let mut body = json!({"email": "ctl@acme.com", "password": PASSWORD, "role": "developer"});
        body[field] = json!("a\u{0}b");
        let problem = assert_problem(
            app.post("/api/v1/users", &t.jwt(), &body).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], field);
    }
    assert_eq!(app.count("users").await, 1);

    let (_, dev_id) = app.user_with_role(&t, "named@acme.com", "developer").await;
    let path = format!("/api/v1/users/{dev_id}");
    for (field, value) in [("first_name", "a\u{0}b"), ("last_name", "tab\there")] {
        let mut body = json!({"role": "admin"});
        body[field] = json!(value);
        let problem = assert_problem(
            app.send(Method::PATCH, &path, &t.jwt(), Some(&body)).await,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        )
        .await;
        assert_eq!(problem["field"], field);
    }
    // Nothing changed: neither the names nor the role that came with them.
    let user: Value = app.get(&path, &t.jwt()).await.json().await.unwrap();
    assert_eq!(user["first_name"], "");
    assert_eq!(user["last_name"], "");
    assert_eq!(user["role"], "developer");
}

async fn active_owners(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM users WHERE role = 'owner' AND is_active")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_last_active_owner_cannot_be_demoted_or_deactivated() {
    // The HTTP rules already keep owners from changing themselves and admins from touching
    // owners; the service refuses on its own too, whoever asks (here the tenant's secret key).
    let app = spawn_app().await;
    let t = app.register("sole@acme.com").await;
    let presented = PresentedKey::parse(&t.sk_test).unwrap();
    let ctx = shared::db::api_keys::find_active_by_hash(&app.pool, &presented.hash)
        .await
        .unwrap()
        .context();
    let owner = UserId::parse(&t.owner_id).unwrap();
    for changes in [
        UserUpdate {
            role: Some(Role::Admin),
            ..Default::default()
        },
        UserUpdate {
            is_active: Some(false),
            ..Default::default()
        },
    ] {
        // The unit of work is dropped (rolled back) after the refusal.
        let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
        match service::users::update(&mut uow, &ctx, owner, changes).await {
            Err(ServiceError::Conflict { code, .. }) => assert_eq!(code, "last_owner"),
            other => panic!("expected the last_owner refusal, got {other:?}"),
        }
    }
    assert_eq!(active_owners(&app).await, 1);
    // The refusal rolled back the token revocation that comes with deactivation.
    let live_tokens: i64 =
        sqlx::query_scalar("SELECT count(*) FROM refresh_tokens WHERE revoked_at IS NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(live_tokens, 1);
    assert_eq!(
        app.get("/api/v1/auth/tenants/me", &t.jwt()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn two_owners_demoting_each_other_at_once_leave_exactly_one_owner() {
    let app = spawn_app().await;
    let t = app.register("duel@acme.com").await;
    let (second, second_id) = app.user_with_role(&t, "duel2@acme.com", "owner").await;
    // Hold the tenant row so that both requests, already past their permission checks, queue
    // up on it inside their transactions; then let them go together.
    let mut gate = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM tenants WHERE id = $1 FOR UPDATE")
        .bind(TenantId::parse(&t.id).unwrap())
        .execute(&mut *gate)
        .await
        .unwrap();
    let (second_path, owner_path) = (
        format!("/api/v1/users/{second_id}"),
        format!("/api/v1/users/{}", t.owner_id),
    );
    let (owner, second, to_admin) = (t.jwt(), Cred::Bearer(second), json!({"role": "admin"}));
    let demote = app.send(Method::PATCH, &second_path, &owner, Some(&to_admin));
    let deactivate = app.send(Method::DELETE, &owner_path, &second, None);
    let release = async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap();
            if waiting == 2 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the requests never waited for the tenant row"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        gate.commit().await.unwrap();
    };
    let (demoted, deactivated, ()) = tokio::join!(demote, deactivate, release);
    let mut statuses = [demoted.status(), deactivated.status()];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::CONFLICT]);
    let refused = if demoted.status() == StatusCode::CONFLICT {
        demoted
    } else {
        deactivated
    };
    assert_problem(refused, StatusCode::CONFLICT, "last_owner").await;
    assert_eq!(active_owners(&app).await, 1);
}
