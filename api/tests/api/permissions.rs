//! The permission matrix of `API.md`, endpoint by endpoint and credential by credential: a
//! credential the table allows gets past the check (whatever the request then says), any other
//! gets 403.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Cred, spawn_app};

/// The credentials, in the order of the table's columns.
const WHO: [&str; 6] = [
    "owner",
    "admin",
    "developer",
    "billing",
    "secret key",
    "publishable key",
];

/// The table's rows: which columns hold a ✓.
fn allowed(group: &str) -> [bool; 6] {
    match group {
        "verify, tenant details" => [true, true, true, true, true, true],
        "own account" => [true, true, true, true, false, false],
        "read users" => [true, true, true, true, true, false],
        "manage users" => [true, true, false, false, false, false],
        "API keys, audit log" => [true, true, false, false, false, false],
        "read billing" => [true, true, true, true, true, false],
        "write billing" => [true, true, true, false, true, false],
        "read webhooks" => [true, true, true, true, true, false],
        "manage webhooks" => [true, true, true, false, true, false],
        "Stripe status" => [true, true, true, true, true, false],
        "connect Stripe" => [true, true, false, false, false, false],
        other => panic!("no such row: {other}"),
    }
}

const MISSING_USER: &str = "usr_01m80000000000000000000000";
const MISSING_PRODUCT: &str = "prod_01m80000000000000000000000";
const MISSING_PRICE: &str = "price_01m80000000000000000000000";
const MISSING_PLAN: &str = "plan_01m80000000000000000000000";
const MISSING_BUNDLE: &str = "bndl_01m80000000000000000000000";
const MISSING_EVENT: &str = "evt_01m80000000000000000000000";
const MISSING_CUSTOMER: &str = "cus_01m80000000000000000000000";
const MISSING_PAYMENT_METHOD: &str = "pm_01m80000000000000000000000";
const MISSING_COUPON: &str = "coupon_01m80000000000000000000000";
const MISSING_ENDPOINT: &str = "we_01m80000000000000000000000";
const MISSING_SUBSCRIPTION: &str = "sub_01m80000000000000000000000";
const MISSING_INVOICE: &str = "in_01m80000000000000000000000";
const MISSING_PAYMENT: &str = "py_01m80000000000000000000000";
const MISSING_CLOCK: &str = "clock_01m80000000000000000000000";
const MISSING_INVOICE_ITEM: &str = "ii_01m80000000000000000000000";
const MISSING_CREDIT_NOTE: &str = "cn_01m80000000000000000000000";
const MISSING_REFUND: &str = "re_01m80000000000000000000000";
const MISSING_TAX_RATE: &str = "txr_01m80000000000000000000000";

/// Every authenticated operation, with a valid request (bodies are read before the permission
/// check): one that has no effect when allowed where it can (a missing object, a refused
/// confirmation, a wrong password), or a harmless creation.
fn operations() -> Vec<(&'static str, Method, String, Option<Value>)> {
    let none = None;
    vec![
        (
            "verify, tenant details",
            Method::GET,
            "/api/v1/auth/tenants/verify".into(),
            none.clone(),
        ),
        (
            "verify, tenant details",
            Method::POST,
            "/api/v1/auth/tenants/verify".into(),
            Some(json!({})),
        ),
        (
            "verify, tenant details",
            Method::GET,
            "/api/v1/auth/tenants/details".into(),
            none.clone(),
        ),
        (
            "own account",
            Method::GET,
            "/api/v1/auth/tenants/me".into(),
            none.clone(),
        ),
        (
            "own account",
            Method::POST,
            "/api/v1/auth/tenants/change-password".into(),
            Some(
                json!({"current_password": "not the password", "new_password": "AnotherPass456!"}),
            ),
        ),
        (
            "read users",
            Method::GET,
            "/api/v1/users".into(),
            none.clone(),
        ),
        (
            "read users",
            Method::GET,
            format!("/api/v1/users/{MISSING_USER}"),
            none.clone(),
        ),
        (
            "manage users",
            Method::POST,
            "/api/v1/users".into(),
            Some(json!({"email": "x", "password": "x", "role": "x"})),
        ),
        (
            "manage users",
            Method::PATCH,
            format!("/api/v1/users/{MISSING_USER}"),
            Some(json!({"first_name": "X"})),
        ),
        (
            "manage users",
            Method::DELETE,
            format!("/api/v1/users/{MISSING_USER}"),
            none.clone(),
        ),
        (
            "API keys, audit log",
            Method::GET,
            "/api/v1/auth/tenants/api-keys".into(),
            none.clone(),
        ),
        (
            "API keys, audit log",
            Method::POST,
            "/api/v1/auth/tenants/api-keys/regenerate".into(),
            Some(json!({"mode": "test", "confirm": false})),
        ),
        (
            "API keys, audit log",
            Method::POST,
            "/api/v1/auth/tenants/api-keys/revoke".into(),
            Some(json!({"mode": "test", "confirm": false})),
        ),
        (
            "API keys, audit log",
            Method::DELETE,
            "/api/v1/auth/tenants/api-keys/revoke".into(),
            Some(json!({"mode": "test", "confirm": false})),
        ),
        (
            "API keys, audit log",
            Method::GET,
            "/api/v1/audit-log".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/plans".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/plans/{MISSING_PLAN}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/products".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/products/{MISSING_PRODUCT}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/products/{MISSING_PRODUCT}/prices"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/prices/{MISSING_PRICE}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/prices/{MISSING_PRICE}/amount?quantity=1"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/bundles".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/coupons".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/coupons/{MISSING_COUPON}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/customers".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/customers/{MISSING_CUSTOMER}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/customers/{MISSING_CUSTOMER}/payment-methods"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/bundles/{MISSING_BUNDLE}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/plans".into(),
            Some(json!({"name": "M", "price_cents": 100, "billing_interval": "month"})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/plans/{MISSING_PLAN}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/plans/{MISSING_PLAN}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/plans/{MISSING_PLAN}/duplicate"),
            Some(json!({"name": "Copy"})),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/products".into(),
            Some(json!({"name": "M"})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/products/{MISSING_PRODUCT}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/products/{MISSING_PRODUCT}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/products/{MISSING_PRODUCT}/prices"),
            Some(json!({"currency": "usd", "pricing": {"type": "flat", "amount": 100}})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/prices/{MISSING_PRICE}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/bundles".into(),
            Some(json!({"name": "B", "discount_bps": 0, "items": [{"price_id": MISSING_PRICE}]})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/bundles/{MISSING_BUNDLE}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/bundles/{MISSING_BUNDLE}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/coupons".into(),
            Some(json!({"percent_off_bps": 1000, "duration": "once"})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/coupons/{MISSING_COUPON}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/coupons/{MISSING_COUPON}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/customers".into(),
            Some(json!({"name": "Permitted"})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/customers/{MISSING_CUSTOMER}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/customers/{MISSING_CUSTOMER}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/customers/{MISSING_CUSTOMER}/payment-methods"),
            Some(json!({"token": "4242424242424242"})),
        ),
        (
            "write billing",
            Method::POST,
            format!(
                "/api/v1/customers/{MISSING_CUSTOMER}/payment-methods/{MISSING_PAYMENT_METHOD}/default"
            ),
            none.clone(),
        ),
        (
            "write billing",
            Method::DELETE,
            format!(
                "/api/v1/customers/{MISSING_CUSTOMER}/payment-methods/{MISSING_PAYMENT_METHOD}"
            ),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/subscriptions".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/invoices".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/invoices/{MISSING_INVOICE}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/payments".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/payments/{MISSING_PAYMENT}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}/upcoming-invoice"),
            none.clone(),
        ),
        (
            "read billing",
            Method::POST,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}/preview"),
            Some(json!({"items": [{"id": "si_01m80000000000000000000000", "quantity": 2}]})),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/invoices/{MISSING_INVOICE}/pdf"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/invoices/{MISSING_INVOICE}/html"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/test-clocks".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/test-clocks/{MISSING_CLOCK}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/test-clocks".into(),
            Some(json!({"frozen_time": "2026-01-01T00:00:00Z"})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/test-clocks/{MISSING_CLOCK}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/test-clocks/{MISSING_CLOCK}/advance"),
            Some(json!({"frozen_time": "2026-02-01T00:00:00Z"})),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/subscriptions".into(),
            Some(json!({"customer": MISSING_CUSTOMER, "items": [{"price": MISSING_PRICE}]})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}"),
            Some(json!({})),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}/cancel"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}/pause"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/subscriptions/{MISSING_SUBSCRIPTION}/resume"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/invoices/{MISSING_INVOICE}/pay"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/invoices".into(),
            Some(json!({"customer": MISSING_CUSTOMER})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/invoices/{MISSING_INVOICE}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/invoices/{MISSING_INVOICE}/finalize"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/invoices/{MISSING_INVOICE}/send"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/invoice-items".into(),
            Some(json!({"customer": MISSING_CUSTOMER, "amount": 100, "description": "x"})),
        ),
        (
            "write billing",
            Method::DELETE,
            format!("/api/v1/invoice-items/{MISSING_INVOICE_ITEM}"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/invoice-items".into(),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/tax-rates".into(),
            Some(json!({"display_name": "VAT", "percentage": 20.0, "inclusive": false})),
        ),
        (
            "write billing",
            Method::PATCH,
            format!("/api/v1/tax-rates/{MISSING_TAX_RATE}"),
            Some(json!({"active": false})),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/tax-rates".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/tax-rates/{MISSING_TAX_RATE}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/credit-notes".into(),
            Some(json!({"invoice": MISSING_INVOICE, "amount": 100})),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/credit-notes".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/credit-notes/{MISSING_CREDIT_NOTE}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            "/api/v1/refunds".into(),
            Some(json!({"payment": MISSING_PAYMENT})),
        ),
        (
            "read billing",
            Method::GET,
            "/api/v1/refunds".into(),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/refunds/{MISSING_REFUND}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/customers/{MISSING_CUSTOMER}/balance-transactions"),
            Some(json!({"amount": 100})),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/customers/{MISSING_CUSTOMER}/balance-transactions"),
            none.clone(),
        ),
        (
            "read billing",
            Method::GET,
            format!("/api/v1/invoice-items/{MISSING_INVOICE_ITEM}"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/invoices/{MISSING_INVOICE}/void"),
            none.clone(),
        ),
        (
            "write billing",
            Method::POST,
            format!("/api/v1/invoices/{MISSING_INVOICE}/mark-uncollectible"),
            none.clone(),
        ),
        (
            "read webhooks",
            Method::GET,
            "/api/v1/events".into(),
            none.clone(),
        ),
        (
            "read webhooks",
            Method::GET,
            format!("/api/v1/events/{MISSING_EVENT}"),
            none.clone(),
        ),
        (
            "read webhooks",
            Method::GET,
            "/api/v1/webhook-endpoints".into(),
            none.clone(),
        ),
        (
            "read webhooks",
            Method::GET,
            format!("/api/v1/webhook-endpoints/{MISSING_ENDPOINT}"),
            none.clone(),
        ),
        (
            "read webhooks",
            Method::GET,
            format!("/api/v1/webhook-endpoints/{MISSING_ENDPOINT}/deliveries"),
            none.clone(),
        ),
        (
            "read webhooks",
            Method::GET,
            "/api/v1/auth/tenants/webhooks/config".into(),
            none.clone(),
        ),
        (
            "manage webhooks",
            Method::POST,
            format!("/api/v1/events/{MISSING_EVENT}/redeliver"),
            none.clone(),
        ),
        (
            "manage webhooks",
            Method::POST,
            "/api/v1/webhook-endpoints".into(),
            Some(json!({"url": "https://hooks.acme.com/matrix"})),
        ),
        (
            "manage webhooks",
            Method::PATCH,
            format!("/api/v1/webhook-endpoints/{MISSING_ENDPOINT}"),
            Some(json!({})),
        ),
        (
            "manage webhooks",
            Method::DELETE,
            format!("/api/v1/webhook-endpoints/{MISSING_ENDPOINT}"),
            none.clone(),
        ),
        (
            "manage webhooks",
            Method::POST,
            format!("/api/v1/webhook-endpoints/{MISSING_ENDPOINT}/rotate-secret"),
            none.clone(),
        ),
        (
            "manage webhooks",
            Method::POST,
            "/api/v1/auth/tenants/webhooks/config".into(),
            Some(json!({"webhook_url": "https://hooks.acme.com/config"})),
        ),
        (
            "manage webhooks",
            Method::DELETE,
            "/api/v1/auth/tenants/webhooks/config".into(),
            none.clone(),
        ),
        (
            "manage webhooks",
            Method::POST,
            "/api/v1/auth/tenants/webhooks/test".into(),
            none.clone(),
        ),
        (
            "Stripe status",
            Method::GET,
            "/api/v1/auth/tenants/stripe/status".into(),
            none.clone(),
        ),
        (
            "connect Stripe",
            Method::POST,
            "/api/v1/auth/tenants/stripe/connect".into(),
            Some(json!({})),
        ),
        (
            "connect Stripe",
            Method::GET,
            "/api/v1/auth/tenants/stripe/connect".into(),
            none.clone(),
        ),
        (
            "connect Stripe",
            Method::DELETE,
            "/api/v1/auth/tenants/stripe/disconnect".into(),
            none.clone(),
        ),
    ]
}

#[tokio::test]
async fn every_endpoint_allows_exactly_the_credentials_the_permission_table_names() {
    let app = spawn_app().await;
    let t = app.register("matrix@acme.com").await;
    let (admin, _) = app
        .user_with_role(&t, "matrix-admin@acme.com", "admin")
        .await;
    let (developer, _) = app
        .user_with_role(&t, "matrix-dev@acme.com", "developer")
        .await;
    let (billing, _) = app
        .user_with_role(&t, "matrix-billing@acme.com", "billing")
        .await;
    let creds = [
        t.jwt(),
        Cred::Bearer(admin),
        Cred::Bearer(developer),
        Cred::Bearer(billing),
        t.sk_test(),
        Cred::Bearer(t.pk_test.clone()),
    ];
    let mut wrong = Vec::new();
    for (group, method, path, body) in operations() {
        let expected = allowed(group);
        for (i, cred) in creds.iter().enumerate() {
            let resp = app.send(method.clone(), &path, cred, body.as_ref()).await;
            let status = resp.status();
            let ok = if expected[i] {
                status != StatusCode::FORBIDDEN && status != StatusCode::UNAUTHORIZED
            } else {
                status == StatusCode::FORBIDDEN
            };
            if !ok {
                let text = resp.text().await.unwrap_or_default();
                wrong.push(format!("{method} {path} as {}: {status} {text}", WHO[i]));
            }
        }
    }
    assert!(wrong.is_empty(), "against the table:\n{}", wrong.join("\n"));
}
