//! Credit notes, refunds and the customer balance ledger through the API: what an open invoice
//! still owes, money given back after payment (refund, credit, outside), never more than the
//! invoice's total or the payment, and every balance change as a ledger row.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    one_off_invoices::customer,
    subscriptions::{get, json_of, run_due, scope},
};

/// A finalized one-off invoice of these (description, amount) lines.
pub async fn invoice(
    app: &TestApp,
    key: &Cred,
    cus: &str,
    lines: &[(&str, i64)],
    send: bool,
) -> Value {
    for (description, amount) in lines {
        json_of(
            app.post(
                "/api/v1/invoice-items",
                key,
                &json!({"customer": cus, "amount": amount, "description": description}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    let method = if send {
        "send_invoice"
    } else {
        "charge_automatically"
    };
    let draft = json_of(
        app.post(
            "/api/v1/invoices",
            key,
            &json!({"customer": cus, "collection_method": method}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    json_of(
        app.post(
            &format!("/api/v1/invoices/{}/finalize", s(&draft["id"])),
            key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

async fn credit(app: &TestApp, key: &Cred, body: Value) -> reqwest::Response {
    app.post("/api/v1/credit-notes", key, &body).await
}

async fn refused(resp: reqwest::Response, field: &str) {
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], field, "{problem}");
}

fn balance_types(list: &Value) -> Vec<(String, i64, i64)> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                s(&t["type"]),
                t["amount"].as_i64().unwrap(),
                t["ending_balance"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn credit_notes_lower_what_an_open_invoice_owes_and_one_that_clears_it_pays_it() {
    let app = spawn_app().await;
    let t = app.register("cn-open@acme.com").await;
    let key = t.sk_test();
    let cus = customer(&app, &key, None).await;
    let inv = invoice(&app, &key, &cus, &[("Design", 6000), ("Build", 4000)], true).await;
    let id = s(&inv["id"]);
    assert_eq!(inv["status"], "open");
    let design = s(&inv["lines"][0]["id"]);

    let cn1 = json_of(
        credit(
            &app,
            &key,
            json!({"invoice": id, "lines": [{"invoice_line": design, "amount": 1500}],
                   "reason": "order_change"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(cn1["type"], "pre_payment");
    assert_eq!(cn1["amount"], 1500);
    assert_eq!(cn1["number"], json!(format!("{}-CN1", s(&inv["number"]))));
    assert_eq!(cn1["lines"][0]["description"], "Design");
    let after = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(after["amount_remaining"], 8500);
    assert_eq!(after["amount_credited"], 1500);
    assert_eq!(after["status"], "open");

    // The line has 4500 left to credit; the invoice owes 8500.
    refused(
        credit(
            &app,
            &key,
            json!({"invoice": id, "lines": [{"invoice_line": design, "amount": 4501}]}),
        )
        .await,
        "lines[0].amount",
    )
    .await;
    refused(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 100, "refund_amount": 100}),
        )
        .await,
        "refund_amount",
    )
    .await;
    let cn2 = json_of(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 5000, "memo": "Goodwill"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(cn2["lines"][0]["description"], "Goodwill");
    assert_eq!(cn2["lines"][0]["invoice_line"], Value::Null);
    refused(
        credit(&app, &key, json!({"invoice": id, "amount": 3501})).await,
        "lines",
    )
    .await;

    // Credits racing for the last 3500: exactly what fits is issued, never more.
    let racing = (0..10).map(|_| credit(&app, &key, json!({"invoice": id, "amount": 500})));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(racing)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let issued = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(issued, 7, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::BAD_REQUEST),
        "{statuses:?}"
    );
    let paid = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(paid["status"], "paid");
    assert_eq!(paid["amount_remaining"], 0);
    assert_eq!(paid["amount_credited"], 10000);
    assert_eq!(paid["amount_paid"], 0);
    let notes = get(
        &app,
        &key,
        &format!("/api/v1/credit-notes?invoice={id}&limit=100"),
    )
    .await;
    let mut numbers: Vec<String> = notes["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| s(&n["number"]))
        .collect();
    numbers.sort_by_key(|n| n.rsplit("CN").next().unwrap().parse::<u32>().unwrap());
    let expected: Vec<String> = (1..=9)
        .map(|k| format!("{}-CN{k}", s(&inv["number"])))
        .collect();
    assert_eq!(numbers, expected);
    // Nothing is left to credit, even after payment.
    refused(
        credit(&app, &key, json!({"invoice": id, "amount": 1})).await,
        "lines",
    )
    .await;
    let events = get(&app, &key, "/api/v1/events?type=invoice.paid").await;
    assert_eq!(events["data"][0]["data"]["object"]["id"], json!(id));

    // A draft is not credited.
    let draft = json_of(
        app.post("/api/v1/invoices", &key, &json!({"customer": cus}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let resp = credit(&app, &key, json!({"invoice": draft["id"], "amount": 1})).await;
    assert_problem(resp, StatusCode::CONFLICT, "invalid_invoice_status").await;
}

#[tokio::test]
async fn a_paid_invoice_is_refunded_credited_or_paid_back_outside_never_beyond_what_was_paid() {
    let app = spawn_app().await;
    let t = app.register("cn-paid@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let cus = customer(&app, &key, Some("4242424242424242")).await;
    let inv = invoice(&app, &key, &cus, &[("Annual licence", 10000)], false).await;
    let id = s(&inv["id"]);
    assert_eq!(run_due(&app, scope).await, vec!["invoice.pay"]);
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let payment = s(&payments["data"][0]["id"]);
    assert_eq!(payments["data"][0]["status"], "succeeded");

    // 3000 back: 2000 to the card, 1000 as credit.
    let cn1 = json_of(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 3000, "refund_amount": 2000, "credit_amount": 1000}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(cn1["type"], "post_payment");
    let refund = s(&cn1["refund"]);
    let pending = get(&app, &key, &format!("/api/v1/refunds/{refund}")).await;
    assert_eq!(pending["status"], "pending");
    assert_eq!(pending["amount"], 2000);
    assert_eq!(pending["credit_note"], cn1["id"]);
    let cus_now = get(&app, &key, &format!("/api/v1/customers/{cus}")).await;
    assert_eq!(cus_now["balance"], 1000);
    assert_eq!(run_due(&app, scope).await, vec!["payment.refund"]);
    assert!(run_due(&app, scope).await.is_empty());
    let done = get(&app, &key, &format!("/api/v1/refunds/{refund}")).await;
    assert_eq!(done["status"], "succeeded");
    assert!(s(&done["gateway_id"]).starts_with("re_sandbox_"));
    let p = get(&app, &key, &format!("/api/v1/payments/{payment}")).await;
    assert_eq!(p["amount_refunded"], 2000);
    // The invoice stays paid.
    let still = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(still["status"], "paid");
    assert_eq!(still["amount_credited"], 3000);

    // Refunds of the payment never exceed it (8000 is left of it), and with the credit notes
    // never exceed the invoice (7000 is left to give back of it).
    refused(
        app.post(
            "/api/v1/refunds",
            &key,
            &json!({"payment": payment, "amount": 8001}),
        )
        .await,
        "amount",
    )
    .await;
    refused(
        app.post(
            "/api/v1/refunds",
            &key,
            &json!({"payment": payment, "amount": 7001}),
        )
        .await,
        "amount",
    )
    .await;
    let part = json_of(
        app.post(
            "/api/v1/refunds",
            &key,
            &json!({"payment": payment, "amount": 4000, "reason": "requested_by_customer"}),
        )
        .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(part["credit_note"], Value::Null);
    // A note now has 3000 left to give; refunds stop at what the invoice has left.
    refused(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 3001, "out_of_band_amount": 3001}),
        )
        .await,
        "lines",
    )
    .await;
    let outside = json_of(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 1000, "out_of_band_amount": 1000}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        outside["number"],
        json!(format!("{}-CN2", s(&inv["number"])))
    );
    refused(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 200, "credit_amount": 100}),
        )
        .await,
        "refund_amount",
    )
    .await;
    let rest = json_of(
        app.post("/api/v1/refunds", &key, &json!({"payment": payment}))
            .await,
        StatusCode::ACCEPTED,
    )
    .await;
    assert_eq!(rest["amount"], 2000);
    let again = app
        .post("/api/v1/refunds", &key, &json!({"payment": payment}))
        .await;
    assert_problem(again, StatusCode::CONFLICT, "payment_not_refundable").await;
    refused(
        credit(&app, &key, json!({"invoice": id, "amount": 1})).await,
        "lines",
    )
    .await;
    assert_eq!(
        run_due(&app, scope).await,
        vec!["payment.refund", "payment.refund"]
    );
    let p = get(&app, &key, &format!("/api/v1/payments/{payment}")).await;
    assert_eq!(p["amount_refunded"], 8000);
    let refunds = get(&app, &key, &format!("/api/v1/refunds?payment={payment}")).await;
    assert_eq!(refunds["data"].as_array().unwrap().len(), 3);
    let given_back = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(given_back["amount_credited"], 10000);

    // The credit is a ledger row, and the next invoice uses it.
    let ledger = get(
        &app,
        &key,
        &format!("/api/v1/customers/{cus}/balance-transactions"),
    )
    .await;
    assert_eq!(
        balance_types(&ledger),
        vec![("credit_note".to_owned(), 1000, 1000)]
    );
    assert_eq!(ledger["data"][0]["credit_note"], cn1["id"]);
    let next = invoice(&app, &key, &cus, &[("Support", 2500)], false).await;
    assert_eq!(next["balance_applied"], 1000);
    assert_eq!(next["amount_due"], 1500);
    let ledger = get(
        &app,
        &key,
        &format!("/api/v1/customers/{cus}/balance-transactions"),
    )
    .await;
    assert_eq!(
        balance_types(&ledger),
        vec![
            ("applied_to_invoice".to_owned(), -1000, 0),
            ("credit_note".to_owned(), 1000, 1000),
        ]
    );
    assert_eq!(ledger["data"][0]["invoice"], next["id"]);
}

#[tokio::test]
async fn balance_adjustments_are_a_ledger_that_never_goes_below_zero_and_a_void_gives_credit_back()
{
    let app = spawn_app().await;
    let t = app.register("ledger@acme.com").await;
    let other = app.register("other-ledger@acme.com").await;
    let key = t.sk_test();
    let cus = customer(&app, &key, None).await;
    let path = format!("/api/v1/customers/{cus}/balance-transactions");
    let promo = json_of(
        app.post(
            &path,
            &key,
            &json!({"amount": 5000, "description": "Promo"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(promo["type"], "adjustment");
    assert_eq!(promo["ending_balance"], 5000);
    assert_eq!(promo["description"], "Promo");
    json_of(
        app.post(&path, &key, &json!({"amount": -2000})).await,
        StatusCode::CREATED,
    )
    .await;
    refused(
        app.post(&path, &key, &json!({"amount": -3001})).await,
        "amount",
    )
    .await;
    refused(app.post(&path, &key, &json!({"amount": 0})).await, "amount").await;
    refused(
        app.post(&path, &key, &json!({"amount": 1_000_000_000_000_i64}))
            .await,
        "amount",
    )
    .await;
    let bare = json_of(
        app.post("/api/v1/customers", &key, &json!({"name": "No currency"}))
            .await,
        StatusCode::CREATED,
    )
    .await;
    refused(
        app.post(
            &format!("/api/v1/customers/{}/balance-transactions", s(&bare["id"])),
            &key,
            &json!({"amount": 100}),
        )
        .await,
        "amount",
    )
    .await;
    assert_eq!(
        get(&app, &key, &format!("/api/v1/customers/{cus}")).await["balance"],
        3000
    );

    // 3000 of credit pays part of a 5000 invoice; voiding it gives the 3000 back.
    let inv = invoice(&app, &key, &cus, &[("Hosting", 5000)], true).await;
    assert_eq!(inv["balance_applied"], 3000);
    assert_eq!(inv["amount_due"], 2000);
    let void = json_of(
        app.post(
            &format!("/api/v1/invoices/{}/void", s(&inv["id"])),
            &key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(void["status"], "void");
    let ledger = get(&app, &key, &path).await;
    assert_eq!(
        balance_types(&ledger),
        vec![
            ("unapplied_from_invoice".to_owned(), 3000, 3000),
            ("applied_to_invoice".to_owned(), -3000, 0),
            ("adjustment".to_owned(), -2000, 3000),
            ("adjustment".to_owned(), 5000, 5000),
        ]
    );
    // The voided invoice's one-off item waits for the next invoice again.
    let pending = get(
        &app,
        &key,
        &format!("/api/v1/invoice-items?customer={cus}&pending=true"),
    )
    .await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1);
    // A credit note on a void invoice is refused.
    let resp = credit(&app, &key, json!({"invoice": inv["id"], "amount": 1})).await;
    assert_problem(resp, StatusCode::CONFLICT, "invalid_invoice_status").await;

    // Another tenant and live mode see none of it.
    for cred in [other.sk_test(), t.sk_live()] {
        let resp = app.get(&path, &cred).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        let resp = app.post(&path, &cred, &json!({"amount": 1})).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
    }
}

#[tokio::test]
async fn bad_credit_notes_and_refunds_are_refused_field_by_field_and_other_tenants_see_nothing() {
    let app = spawn_app().await;
    let t = app.register("cn-bad@acme.com").await;
    let other = app.register("cn-other@acme.com").await;
    let key = t.sk_test();
    let scope = scope(&app, &t.sk_test).await;
    let cus = customer(&app, &key, Some("4242424242424242")).await;
    let inv = invoice(&app, &key, &cus, &[("Seats", 3000)], false).await;
    run_due(&app, scope).await;
    let id = s(&inv["id"]);
    let line = s(&inv["lines"][0]["id"]);
    let cases = [
        (json!({"invoice": id}), "lines"),
        (json!({"invoice": id, "lines": []}), "lines"),
        (json!({"invoice": id, "amount": 0}), "amount"),
        (json!({"invoice": id, "amount": -5}), "amount"),
        (
            json!({"invoice": id, "amount": 5, "lines": [{"invoice_line": line}]}),
            "amount",
        ),
        (
            json!({"invoice": id, "lines": [{}]}),
            "lines[0].invoice_line",
        ),
        (
            json!({"invoice": id, "lines": [{"description": "x"}]}),
            "lines[0].amount",
        ),
        (
            json!({"invoice": id, "lines": [{"invoice_line": line, "description": "x"}]}),
            "lines[0].description",
        ),
        (
            json!({"invoice": id, "lines": [{"invoice_line": "il_01m80000000000000000000000"}]}),
            "lines[0].invoice_line",
        ),
        (
            json!({"invoice": id, "lines": [{"invoice_line": "nope"}]}),
            "lines[0].invoice_line",
        ),
        (
            json!({"invoice": id, "amount": 5, "reason": "bored"}),
            "reason",
        ),
        (
            json!({"invoice": id, "amount": 5, "refund_amount": -1}),
            "refund_amount",
        ),
        (
            json!({"invoice": "in_01m80000000000000000000000", "amount": 5}),
            "invoice",
        ),
        (json!({"invoice": "nope", "amount": 5}), "invoice"),
        (json!({"invoice": id, "amount": 5, "extra": true}), "extra"),
    ];
    for (body, field) in cases {
        refused(credit(&app, &key, body.clone()).await, field).await;
    }
    let payments = get(&app, &key, &format!("/api/v1/payments?invoice={id}")).await;
    let payment = s(&payments["data"][0]["id"]);
    let refund_cases = [
        (json!({"payment": payment, "amount": 0}), "amount"),
        (json!({"payment": payment, "reason": "why not"}), "reason"),
        (
            json!({"payment": "py_01m80000000000000000000000"}),
            "payment",
        ),
        (
            json!({"payment": "in_01m80000000000000000000000"}),
            "payment",
        ),
    ];
    for (body, field) in refund_cases {
        refused(app.post("/api/v1/refunds", &key, &body).await, field).await;
    }

    let note = json_of(
        credit(
            &app,
            &key,
            json!({"invoice": id, "amount": 100, "refund_amount": 100}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let note_id = s(&note["id"]);
    let refund_id = s(&note["refund"]);
    for cred in [other.sk_test(), t.sk_live()] {
        for path in [
            format!("/api/v1/credit-notes/{note_id}"),
            format!("/api/v1/refunds/{refund_id}"),
        ] {
            let resp = app.send(Method::GET, &path, &cred, None).await;
            assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        }
        for path in ["/api/v1/credit-notes", "/api/v1/refunds"] {
            let listed = get(&app, &cred, path).await;
            assert!(listed["data"].as_array().unwrap().is_empty());
        }
        refused(
            credit(&app, &cred, json!({"invoice": id, "amount": 1})).await,
            "invoice",
        )
        .await;
        refused(
            app.post("/api/v1/refunds", &cred, &json!({"payment": payment}))
                .await,
            "payment",
        )
        .await;
    }
}
