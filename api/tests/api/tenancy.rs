use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Cred, PASSWORD, assert_problem, s, spawn_app};

/// Tenant B's credentials against tenant A's objects answer exactly as a missing id does,
/// and change nothing.
#[tokio::test]
async fn another_tenants_objects_answer_404_exactly_like_missing_ones() {
    let app = spawn_app().await;
    let a = app.register("a@tenant-a.com").await;
    let (_, a_dev_id) = app
        .user_with_role(&a, "dev@tenant-a.com", "developer")
        .await;
    let b = app.register("b@tenant-b.com").await;
    let missing = "usr_01m80000000000000000000000";
    let b_creds = [
        b.sk_live(),
        b.sk_test(),
        Cred::XApiKey(b.sk_test.clone()),
        b.jwt(),
    ];
    for cred in &b_creds {
        for id in [a.owner_id.as_str(), a_dev_id.as_str()] {
            let theirs = app.get(&format!("/api/v1/users/{id}"), cred).await;
            let theirs = assert_problem(theirs, StatusCode::NOT_FOUND, "resource_missing").await;
            let nothing = app.get(&format!("/api/v1/users/{missing}"), cred).await;
            let nothing = assert_problem(nothing, StatusCode::NOT_FOUND, "resource_missing").await;
            assert_eq!(theirs, nothing);
        }
        let list: Value = app.get("/api/v1/users", cred).await.json().await.unwrap();
        assert!(
            list["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["id"] == b.owner_id.as_str())
        );
    }
    // Writes with B's owner JWT (allowed to manage users in B) find nothing in A.
    let patch = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{a_dev_id}"),
            &b.jwt(),
            Some(&json!({"role": "admin"})),
        )
        .await;
    let patch = assert_problem(patch, StatusCode::NOT_FOUND, "resource_missing").await;
    let patch_missing = app
        .send(
            Method::PATCH,
            &format!("/api/v1/users/{missing}"),
            &b.jwt(),
            Some(&json!({"role": "admin"})),
        )
        .await;
    assert_eq!(
        patch,
        assert_problem(patch_missing, StatusCode::NOT_FOUND, "resource_missing").await
    );
    let delete = app
        .send(
            Method::DELETE,
            &format!("/api/v1/users/{a_dev_id}"),
            &b.jwt(),
            None,
        )
        .await;
    assert_problem(delete, StatusCode::NOT_FOUND, "resource_missing").await;
    // A's objects are unchanged.
    let dev: Value = app
        .get(&format!("/api/v1/users/{a_dev_id}"), &a.jwt())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (dev["role"].as_str(), dev["is_active"].as_bool()),
        (Some("developer"), Some(true))
    );
    assert_eq!(
        app.login("dev@tenant-a.com", PASSWORD).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn malformed_ids_answer_404_too() {
    let app = spawn_app().await;
    let t = app.register("ids@acme.com").await;
    for id in ["nope", "ten_01m80000000000000000000000", "usr_!!"] {
        let resp = app.get(&format!("/api/v1/users/{id}"), &t.jwt()).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
    }
}

#[tokio::test]
async fn each_tenant_sees_and_manages_only_its_own_keys_and_audit_log() {
    let app = spawn_app().await;
    let a = app.register("keys-a@acme.com").await;
    let b = app.register("keys-b@acme.com").await;
    let listed: Value = app
        .get("/api/v1/auth/tenants/api-keys", &b.jwt())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 4);
    let resp = app
        .post(
            "/api/v1/auth/tenants/api-keys/revoke",
            &b.jwt(),
            &json!({"mode": "all", "confirm": true}),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    for k in [a.sk_test(), a.sk_live()] {
        assert_eq!(
            app.get("/api/v1/auth/tenants/verify", &k).await.status(),
            StatusCode::OK
        );
    }
    let log: Value = app
        .get("/api/v1/audit-log", &a.jwt())
        .await
        .json()
        .await
        .unwrap();
    assert!(
        log["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["action"] != "api_keys.revoke")
    );
}

/// A test-mode key never sees live-mode data: idempotency keys are scoped by mode, so a
/// response stored under a live key is not replayed to a test key (and vice versa).
#[tokio::test]
async fn test_and_live_keys_see_separate_data() {
    let app = spawn_app().await;
    let t = app.register("modes@acme.com").await;
    let body = json!({"mode": "test"});
    let path = "/api/v1/auth/tenants/api-keys/regenerate";
    let owner_token = t.access.clone();
    let live = app
        .req(Method::POST, path, &Cred::Bearer(owner_token.clone()))
        .header("X-Mode", "live")
        .header("Idempotency-Key", "same-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let live_body: Value = live.json().await.unwrap();
    let test = app
        .req(Method::POST, path, &Cred::Bearer(owner_token))
        .header("Idempotency-Key", "same-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(test.status(), StatusCode::OK);
    assert!(test.headers().get("idempotent-replayed").is_none());
    let test_body: Value = test.json().await.unwrap();
    assert_ne!(live_body["keys"], test_body["keys"]);
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT livemode) FROM idempotency_keys WHERE key = 'same-key'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(rows, 2);
    let new_test_key = test_body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "secret")
        .unwrap();
    let cred = Cred::Bearer(new_test_key["key"].as_str().unwrap().to_owned());
    let details: Value = app
        .get("/api/v1/auth/tenants/details", &cred)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(details["mode"], "test");
}

/// The database refuses a child row that points at another tenant's (or the other mode's)
/// parent, whatever the code does: child → parent keys include the tenant and the mode.
#[tokio::test]
async fn a_reference_to_another_tenants_parent_is_refused_by_the_database() {
    use shared::ids::{BundleId, PriceId, ProductId, TenantId, WebhookEndpointId};

    let app = spawn_app().await;
    let a = app.register("a@fk-a.com").await;
    let b = app.register("b@fk-b.com").await;
    let post = |cred: Cred, path: String, body: Value| {
        let app = &app;
        async move {
            let resp = app.post(&path, &cred, &body).await;
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert_eq!(status, StatusCode::CREATED, "{path}: {text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let price_of = |cred: Cred, amount: i64| {
        let post = &post;
        async move {
            let product = post(
                cred.clone(),
                "/api/v1/products".into(),
                json!({"name": "P"}),
            )
            .await;
            let path = format!("/api/v1/products/{}/prices", s(&product["id"]));
            let price = post(
                cred,
                path,
                json!({"currency": "usd", "recurring": {"interval": "month"},
                       "pricing": {"type": "flat", "amount": amount}}),
            )
            .await;
            (
                ProductId::parse(&s(&product["id"])).unwrap().as_uuid(),
                PriceId::parse(&s(&price["id"])).unwrap().as_uuid(),
            )
        }
    };
    let (_, a_price) = price_of(a.sk_test(), 1000).await;
    let (b_product, b_price) = price_of(b.sk_test(), 2000).await;
    let (_, b_price2) = price_of(b.sk_test(), 3000).await;
    let (_, b_price3) = price_of(b.sk_test(), 4000).await;
    let (_, b_live_price) = price_of(b.sk_live(), 5000).await;
    let bundle = post(
        b.sk_test(),
        "/api/v1/bundles".into(),
        json!({"name": "Suite", "discount_bps": 1000,
               "items": [{"price_id": PriceId::from_uuid(b_price).to_string()},
                         {"price_id": PriceId::from_uuid(b_price2).to_string()}]}),
    )
    .await;
    let bundle = BundleId::parse(&s(&bundle["id"])).unwrap().as_uuid();
    let a_id = TenantId::parse(&a.id).unwrap().as_uuid();
    let b_id = TenantId::parse(&b.id).unwrap().as_uuid();

    let add_item = |tenant: uuid::Uuid, livemode: bool, price: uuid::Uuid| {
        let pool = app.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO bundle_items (tenant_id, livemode, bundle_id, price_id, quantity, \
                 position) VALUES ($1, $2, $3, $4, 1, 9)",
            )
            .bind(tenant)
            .bind(livemode)
            .bind(bundle)
            .bind(price)
            .execute(&pool)
            .await
        }
    };
    let refused = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, what: &str| match r {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("23503"), "{what}: {e}")
        }
        other => panic!("{what}: expected a foreign-key violation, got {other:?}"),
    };
    // Another tenant's price in B's bundle, claimed as B's row or as A's.
    refused(
        add_item(b_id, false, a_price).await,
        "A's price in B's bundle",
    );
    refused(
        add_item(a_id, false, a_price).await,
        "an A row in B's bundle",
    );
    // The other mode's price of the same tenant.
    refused(
        add_item(b_id, true, b_live_price).await,
        "a live price in a test bundle",
    );
    // The same insert with B's own test price goes in: the refusals were about tenancy.
    add_item(b_id, false, b_price3)
        .await
        .expect("B's own price joins B's bundle");

    // A price moved under another tenant's product.
    refused(
        sqlx::query("UPDATE prices SET product_id = $1 WHERE id = $2")
            .bind(b_product)
            .bind(a_price)
            .execute(&app.pool)
            .await,
        "A's price under B's product",
    );

    // A delivery of A's event moved to B's endpoint.
    let endpoint = |t: Cred| {
        let post = &post;
        async move {
            let e = post(
                t,
                "/api/v1/webhook-endpoints".into(),
                json!({"url": "https://hooks.example.com/in"}),
            )
            .await;
            WebhookEndpointId::parse(&s(&e["endpoint"]["id"]))
                .unwrap()
                .as_uuid()
        }
    };
    let _a_endpoint = endpoint(a.sk_test()).await;
    let b_endpoint = endpoint(b.sk_test()).await;
    price_of(a.sk_test(), 6000).await; // events fanned out to A's endpoint
    let a_delivery: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE tenant_id = $1 LIMIT 1")
            .bind(a_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    refused(
        sqlx::query("UPDATE webhook_deliveries SET endpoint_id = $1 WHERE id = $2")
            .bind(b_endpoint)
            .bind(a_delivery)
            .execute(&app.pool)
            .await,
        "A's delivery to B's endpoint",
    );
}
