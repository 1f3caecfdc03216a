//! Customers: `/api/v1/customers`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    webhooks::{body, event_objects, ids},
};

const CUSTOMERS: &str = "/api/v1/customers";
/// A well-formed customer id that names nothing.
const MISSING: &str = "cus_01m80000000000000000000000";

fn path(id: &str) -> String {
    format!("{CUSTOMERS}/{id}")
}

async fn create(app: &TestApp, cred: &Cred, input: Value) -> Value {
    body(app.post(CUSTOMERS, cred, &input).await, StatusCode::CREATED).await
}

async fn list(app: &TestApp, cred: &Cred, query: &str) -> Value {
    body(
        app.get(&format!("{CUSTOMERS}?{query}"), cred).await,
        StatusCode::OK,
    )
    .await
}

async fn patch(app: &TestApp, cred: &Cred, id: &str, change: Value) -> reqwest::Response {
    app.send(Method::PATCH, &path(id), cred, Some(&change))
        .await
}

/// Rows that must not change when a request is refused.
async fn written(app: &TestApp) -> [i64; 2] {
    [app.count("customers").await, app.count("events").await]
}

#[tokio::test]
async fn a_customer_is_created_with_every_field_and_records_customer_created() {
    let app = spawn_app().await;
    let t = app.register("customers-create@acme.com").await;
    let c = create(
        &app,
        &t.sk_test(),
        json!({
            "email": "Jo@Example.com",
            "name": "  Jo Doe ",
            "external_id": "crm-42",
            "currency": "eur",
            "timezone": "America/Santiago",
            "address": {"line1": "1 rue de la Paix", "line2": "", "city": "Paris",
                        "postal_code": "75002", "country": "fr"},
            "tax_ids": [{"type": "eu_vat", "value": "FR123"}],
            "tax_exempt": true,
            "invoice_prefix": "JODOE",
            "metadata": {"plan": "gold"}
        }),
    )
    .await;
    assert!(s(&c["id"]).starts_with("cus_"));
    assert_eq!(c["object"], "customer");
    assert_eq!(c["name"], "Jo Doe");
    assert_eq!(c["external_id"], "crm-42");
    assert_eq!(c["currency"], "eur");
    assert_eq!(c["timezone"], "America/Santiago");
    assert_eq!(
        c["address"],
        json!({"line1": "1 rue de la Paix", "line2": null, "city": "Paris", "state": null,
               "postal_code": "75002", "country": "FR"})
    );
    assert_eq!(c["tax_ids"], json!([{"type": "eu_vat", "value": "FR123"}]));
    assert_eq!(c["tax_exempt"], true);
    assert_eq!(c["invoice_prefix"], "JODOE");
    assert_eq!(c["metadata"], json!({"plan": "gold"}));
    assert_eq!(c["balance"], 0);
    assert_eq!(c["livemode"], false);
    let got = body(
        app.get(&path(&s(&c["id"])), &t.sk_test()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(got, c);
    let events = event_objects(&app, &t, false, "customer.created").await;
    assert_eq!(events, vec![c]);
}

#[tokio::test]
async fn a_bare_customer_gets_the_defaults() {
    let app = spawn_app().await;
    let t = app.register("customers-defaults@acme.com").await;
    let c = create(&app, &t.sk_test(), json!({})).await;
    // Empty strings are no value, as in a change.
    let blank = create(
        &app,
        &t.sk_test(),
        json!({"email": "", "external_id": " ", "invoice_prefix": ""}),
    )
    .await;
    assert!(blank["email"].is_null() && blank["external_id"].is_null());
    assert!(blank["invoice_prefix"].is_null());
    assert_eq!(c["name"], "");
    assert!(c["email"].is_null() && c["external_id"].is_null() && c["currency"].is_null());
    assert_eq!(c["timezone"], "UTC");
    assert!(c["address"].is_null());
    assert_eq!(c["tax_ids"], json!([]));
    assert_eq!(c["tax_exempt"], false);
    assert!(c["invoice_prefix"].is_null());
    assert_eq!(c["metadata"], json!({}));
}

#[tokio::test]
async fn invalid_customers_fail_validation_naming_the_field_and_write_nothing() {
    let app = spawn_app().await;
    let t = app.register("customers-invalid@acme.com").await;
    let before = written(&app).await;
    for (input, field) in [
        (json!({"email": "not an email"}), "email"),
        (json!({"name": "a\u{0007}b"}), "name"),
        (json!({"name": "n".repeat(251)}), "name"),
        (json!({"external_id": "x".repeat(101)}), "external_id"),
        (json!({"currency": "xyz"}), "currency"),
        (json!({"timezone": "Mars/Olympus_Mons"}), "timezone"),
        (json!({"timezone": "utc+1"}), "timezone"),
        (json!({"address": {"country": "FRA"}}), "address.country"),
        (
            json!({"address": {"city": "c".repeat(201)}}),
            "address.city",
        ),
        (
            json!({"tax_ids": [{"type": "EU-VAT", "value": "1"}]}),
            "tax_ids",
        ),
        (
            json!({"tax_ids": (0..6).map(|_| json!({"type": "eu_vat", "value": "1"})).collect::<Vec<_>>()}),
            "tax_ids",
        ),
        (json!({"invoice_prefix": "ab"}), "invoice_prefix"),
        (json!({"invoice_prefix": "ABCDEFGHIJKLM"}), "invoice_prefix"),
        (json!({"metadata": {"k": "v".repeat(501)}}), "metadata"),
    ] {
        let resp = app.post(CUSTOMERS, &t.sk_test(), &input).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{input}");
    }
    let unknown = app
        .post(CUSTOMERS, &t.sk_test(), &json!({"nickname": "x"}))
        .await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    assert_eq!(written(&app).await, before);
}

#[tokio::test]
async fn external_ids_are_unique_per_tenant_and_mode_and_free_again_after_a_delete() {
    let app = spawn_app().await;
    let t = app.register("customers-external@acme.com").await;
    let other = app.register("customers-external-2@acme.com").await;
    let first = create(&app, &t.sk_test(), json!({"external_id": "crm-1"})).await;
    let before = written(&app).await;
    let taken = app
        .post(CUSTOMERS, &t.sk_test(), &json!({"external_id": "crm-1"}))
        .await;
    let problem = assert_problem(taken, StatusCode::CONFLICT, "customer_external_id_taken").await;
    assert_eq!(problem["field"], "external_id");
    assert_eq!(written(&app).await, before);
    // Another mode, another tenant: free.
    create(&app, &t.sk_live(), json!({"external_id": "crm-1"})).await;
    create(&app, &other.sk_test(), json!({"external_id": "crm-1"})).await;
    // A change onto a taken id is refused the same way.
    let second = create(&app, &t.sk_test(), json!({"external_id": "crm-2"})).await;
    let clash = patch(
        &app,
        &t.sk_test(),
        &s(&second["id"]),
        json!({"external_id": "crm-1"}),
    )
    .await;
    assert_problem(clash, StatusCode::CONFLICT, "customer_external_id_taken").await;
    // Deleted, its id is free.
    let gone = app
        .send(Method::DELETE, &path(&s(&first["id"])), &t.sk_test(), None)
        .await;
    assert_eq!(gone.status(), StatusCode::OK);
    create(&app, &t.sk_test(), json!({"external_id": "crm-1"})).await;
}

#[tokio::test]
async fn customers_are_listed_newest_first_searched_and_paged() {
    let app = spawn_app().await;
    let t = app.register("customers-list@acme.com").await;
    let cred = t.sk_test();
    let ada = s(&create(
        &app,
        &cred,
        json!({"name": "Ada Lovelace", "email": "ada@math.org"}),
    )
    .await["id"]);
    let alan = s(&create(
        &app,
        &cred,
        json!({"name": "Alan Turing", "external_id": "ACE-1"}),
    )
    .await["id"]);
    let grace = s(&create(
        &app,
        &cred,
        json!({"name": "Grace Hopper", "email": "grace@navy.mil"}),
    )
    .await["id"]);
    assert_eq!(
        ids(&list(&app, &cred, "").await),
        vec![grace.clone(), alan.clone(), ada.clone()]
    );
    // By name, email or external id, ignoring case; `%` and `_` are plain characters.
    assert_eq!(
        ids(&list(&app, &cred, "search=LOVELACE").await),
        vec![ada.clone()]
    );
    assert_eq!(
        ids(&list(&app, &cred, "search=navy.mil").await),
        vec![grace.clone()]
    );
    assert_eq!(
        ids(&list(&app, &cred, "search=ace-1").await),
        vec![alan.clone()]
    );
    assert_eq!(
        ids(&list(&app, &cred, "search=a").await),
        vec![grace.clone(), alan.clone(), ada.clone()]
    );
    assert!(ids(&list(&app, &cred, "search=%25").await).is_empty());
    // Pages of two, forward and back.
    let first = list(&app, &cred, "limit=2").await;
    assert_eq!(ids(&first), vec![grace.clone(), alan.clone()]);
    assert_eq!(first["has_more"], true);
    let next = list(&app, &cred, &format!("limit=2&starting_after={alan}")).await;
    assert_eq!(ids(&next), vec![ada.clone()]);
    assert_eq!(next["has_more"], false);
    let back = list(&app, &cred, &format!("limit=2&ending_before={ada}")).await;
    assert_eq!(ids(&back), vec![grace.clone(), alan.clone()]);
    // The other mode sees none of them; a deleted one is gone from the list.
    assert!(ids(&list(&app, &t.sk_live(), "").await).is_empty());
    app.send(Method::DELETE, &path(&alan), &cred, None).await;
    assert_eq!(ids(&list(&app, &cred, "").await), vec![grace, ada]);
    let long = app
        .get(&format!("{CUSTOMERS}?search={}", "s".repeat(101)), &cred)
        .await;
    assert_problem(long, StatusCode::BAD_REQUEST, "validation_failed").await;
}

#[tokio::test]
async fn patch_changes_and_clears_fields_and_a_change_that_changes_nothing_records_nothing() {
    let app = spawn_app().await;
    let t = app.register("customers-patch@acme.com").await;
    let cred = t.sk_test();
    let c = create(
        &app,
        &cred,
        json!({"email": "a@b.co", "external_id": "x-1", "invoice_prefix": "ABC",
               "address": {"city": "Paris"}, "metadata": {"k": "v"}}),
    )
    .await;
    let id = s(&c["id"]);
    let changed = body(
        patch(
            &app,
            &cred,
            &id,
            json!({"name": "New Name", "timezone": "Asia/Beirut", "currency": "usd",
                   "tax_exempt": true, "tax_ids": [{"type": "us_ein", "value": "12-345"}],
                   "metadata": {"k": "w"}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(changed["name"], "New Name");
    assert_eq!(changed["timezone"], "Asia/Beirut");
    assert_eq!(changed["currency"], "usd");
    assert_eq!(changed["tax_exempt"], true);
    assert_eq!(
        changed["tax_ids"],
        json!([{"type": "us_ein", "value": "12-345"}])
    );
    assert_eq!(changed["metadata"], json!({"k": "w"}));
    assert_eq!(changed["email"], "a@b.co", "untouched");
    // Empty strings and an empty address clear.
    let cleared = body(
        patch(
            &app,
            &cred,
            &id,
            json!({"email": "", "external_id": "", "invoice_prefix": "", "address": {}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(cleared["email"].is_null());
    assert!(cleared["external_id"].is_null());
    assert!(cleared["invoice_prefix"].is_null());
    assert!(cleared["address"].is_null());
    assert_eq!(
        event_objects(&app, &t, false, "customer.updated")
            .await
            .len(),
        2
    );
    // Nothing new: nothing written, no event.
    let before = written(&app).await;
    let same = body(
        patch(
            &app,
            &cred,
            &id,
            json!({"name": "New Name", "currency": "usd"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(same, cleared);
    assert_eq!(written(&app).await, before);
    let bad = patch(&app, &cred, &id, json!({"timezone": "Nowhere/Land"})).await;
    let problem = assert_problem(bad, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "timezone");
}

#[tokio::test]
async fn a_deleted_customer_answers_404_and_records_customer_deleted() {
    let app = spawn_app().await;
    let t = app.register("customers-delete@acme.com").await;
    let cred = t.sk_test();
    let id = s(&create(&app, &cred, json!({"name": "Gone"})).await["id"]);
    let gone = body(
        app.send(Method::DELETE, &path(&id), &cred, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        gone,
        json!({"id": id, "object": "customer", "deleted": true})
    );
    assert_problem(
        app.get(&path(&id), &cred).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    assert_problem(
        patch(&app, &cred, &id, json!({"name": "Back"})).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    assert_problem(
        app.send(Method::DELETE, &path(&id), &cred, None).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
    let events = event_objects(&app, &t, false, "customer.deleted").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["id"], id.as_str());
    assert_eq!(events[0]["deleted"], true);
}

#[tokio::test]
async fn another_tenants_or_modes_customer_answers_404_like_a_missing_one_and_stays_unchanged() {
    let app = spawn_app().await;
    let t = app.register("customers-owner@acme.com").await;
    let other = app.register("customers-other@acme.com").await;
    let c = create(&app, &t.sk_test(), json!({"name": "Mine"})).await;
    let id = s(&c["id"]);
    for (cred, target) in [
        (other.sk_test(), id.clone()),
        (t.sk_live(), id.clone()),
        (t.sk_test(), MISSING.to_owned()),
        (t.sk_test(), "cus_nope".to_owned()),
    ] {
        assert_problem(
            app.get(&path(&target), &cred).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        assert_problem(
            patch(&app, &cred, &target, json!({"name": "Theirs"})).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        assert_problem(
            app.send(Method::DELETE, &path(&target), &cred, None).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
    let still = body(app.get(&path(&id), &t.sk_test()).await, StatusCode::OK).await;
    assert_eq!(still, c);
}

fn methods(customer: &str) -> String {
    format!("{CUSTOMERS}/{customer}/payment-methods")
}

async fn attach(app: &TestApp, cred: &Cred, customer: &str, input: Value) -> Value {
    body(
        app.post(&methods(customer), cred, &input).await,
        StatusCode::CREATED,
    )
    .await
}

#[tokio::test]
async fn a_test_card_attaches_showing_brand_last4_and_expiry_and_its_number_is_never_stored() {
    let app = spawn_app().await;
    let t = app.register("cards-attach@acme.com").await;
    let cred = t.sk_test();
    let cus = s(&create(&app, &cred, json!({"name": "Card Holder"})).await["id"]);
    let visa = attach(
        &app,
        &cred,
        &cus,
        json!({"token": "4242 4242 4242 4242", "exp_month": 4, "exp_year": 2031}),
    )
    .await;
    assert!(s(&visa["id"]).starts_with("pm_"));
    assert_eq!(visa["object"], "payment_method");
    assert_eq!(visa["customer_id"], cus.as_str());
    assert_eq!(visa["type"], "card");
    assert_eq!(
        visa["card"],
        json!({"brand": "visa", "last4": "4242", "exp_month": 4, "exp_year": 2031})
    );
    assert_eq!(visa["is_default"], true, "the first card is the default");
    // By test payment method, with the default expiry (December, three years ahead).
    let mc = attach(&app, &cred, &cus, json!({"token": "pm_card_mastercard"})).await;
    assert_eq!(mc["card"]["brand"], "mastercard");
    assert_eq!(mc["card"]["last4"], "4444");
    assert_eq!(mc["card"]["exp_month"], 12);
    let year = chrono::Datelike::year(&chrono::Utc::now()) + 3;
    assert_eq!(mc["card"]["exp_year"], year);
    assert_eq!(mc["is_default"], false);
    // Nothing of a card number is in the database.
    let dump: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(p)::text FROM payment_methods p")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(dump.len(), 2);
    for row in dump {
        assert!(!row.contains("424242424242"), "{row}");
        assert!(!row.contains("555555555555"), "{row}");
    }
    let attached = event_objects(&app, &t, false, "payment_method.attached").await;
    assert_eq!(attached, vec![visa, mc]);
}

#[tokio::test]
async fn payment_methods_are_listed_a_default_is_chosen_and_a_detached_one_is_gone() {
    let app = spawn_app().await;
    let t = app.register("cards-default@acme.com").await;
    let cred = t.sk_test();
    let cus = s(&create(&app, &cred, json!({})).await["id"]);
    let first = s(&attach(&app, &cred, &cus, json!({"token": "pm_card_visa"})).await["id"]);
    let second = s(&attach(&app, &cred, &cus, json!({"token": "5555555555554444"})).await["id"]);
    let listed = body(app.get(&methods(&cus), &cred).await, StatusCode::OK).await;
    assert_eq!(ids(&listed), vec![second.clone(), first.clone()]);
    let default = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["is_default"] == true)
            .map(|m| s(&m["id"]))
            .collect()
    };
    assert_eq!(default(&listed), vec![first.clone()]);
    let path_default = format!("{}/{second}/default", methods(&cus));
    let made = body(
        app.send(Method::POST, &path_default, &cred, None).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(made["is_default"], true);
    let listed = body(app.get(&methods(&cus), &cred).await, StatusCode::OK).await;
    assert_eq!(default(&listed), vec![second.clone()]);
    // Again: nothing changes, no second event.
    let before = app.count("events").await;
    app.send(Method::POST, &path_default, &cred, None).await;
    assert_eq!(app.count("events").await, before);
    assert_eq!(
        event_objects(&app, &t, false, "payment_method.updated")
            .await
            .len(),
        1
    );
    // Detaching the default leaves none.
    let detached = body(
        app.send(
            Method::DELETE,
            &format!("{}/{second}", methods(&cus)),
            &cred,
            None,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(detached["id"], second.as_str());
    let listed = body(app.get(&methods(&cus), &cred).await, StatusCode::OK).await;
    assert_eq!(ids(&listed), vec![first.clone()]);
    assert!(default(&listed).is_empty());
    for (method, path) in [
        (Method::POST, path_default.clone()),
        (Method::DELETE, format!("{}/{second}", methods(&cus))),
    ] {
        assert_problem(
            app.send(method, &path, &cred, None).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
    assert_eq!(
        event_objects(&app, &t, false, "payment_method.detached")
            .await
            .len(),
        1
    );
}

#[tokio::test]
async fn only_test_cards_with_a_valid_expiry_attach_and_only_to_the_callers_live_customers() {
    let app = spawn_app().await;
    let t = app.register("cards-invalid@acme.com").await;
    let other = app.register("cards-other@acme.com").await;
    let cred = t.sk_test();
    let cus = s(&create(&app, &cred, json!({})).await["id"]);
    let before = [
        app.count("payment_methods").await,
        app.count("events").await,
    ];
    for (input, field) in [
        (json!({"token": "4111111111111111"}), "token"),
        (json!({"token": "pm_card_unknown"}), "token"),
        (
            json!({"token": "pm_card_visa", "exp_month": 13}),
            "exp_month",
        ),
        (
            json!({"token": "pm_card_visa", "exp_month": 0}),
            "exp_month",
        ),
        (
            json!({"token": "pm_card_visa", "exp_month": 1, "exp_year": 2020}),
            "exp_year",
        ),
    ] {
        let resp = app.post(&methods(&cus), &cred, &input).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{input}");
    }
    let card = json!({"token": "pm_card_visa"});
    for (who, target) in [
        (other.sk_test(), cus.clone()),
        (t.sk_live(), cus.clone()),
        (cred.clone(), MISSING.to_owned()),
    ] {
        assert_problem(
            app.post(&methods(&target), &who, &card).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
        assert_problem(
            app.get(&methods(&target), &who).await,
            StatusCode::NOT_FOUND,
            "resource_missing",
        )
        .await;
    }
    assert_eq!(
        [
            app.count("payment_methods").await,
            app.count("events").await
        ],
        before
    );
    // A deleted customer takes no card.
    app.send(Method::DELETE, &path(&cus), &cred, None).await;
    assert_problem(
        app.post(&methods(&cus), &cred, &card).await,
        StatusCode::NOT_FOUND,
        "resource_missing",
    )
    .await;
}
