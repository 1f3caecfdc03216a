//! Tax rates through the API: exclusive and inclusive rates on invoices, checked against hand
//! calculations; tenant defaults, a customer's own rates, exempt customers; archived rates.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{Cred, TestApp, assert_problem, s, spawn_app},
    subscriptions::{customer_and_plan, get, json_of, run_due, scope, subscribe},
};

/// Creates a tax rate of `body`; its id.
pub async fn rate(app: &TestApp, key: &Cred, body: Value) -> String {
    let r = json_of(
        app.post("/api/v1/tax-rates", key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(r["object"], "tax_rate");
    assert_eq!(r["percentage"], body["percentage"]);
    s(&r["id"])
}

/// The mode's default tax rate: VAT, 20 %, added to prices.
pub async fn default_vat(app: &TestApp, key: &Cred) -> String {
    rate(
        app,
        key,
        json!({"display_name": "VAT", "percentage": 20.0, "inclusive": false, "default": true}),
    )
    .await
}

async fn customer(app: &TestApp, key: &Cred, extra: Value) -> String {
    let mut body = json!({"name": "Pied Piper", "currency": "usd"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let c = json_of(
        app.post("/api/v1/customers", key, &body).await,
        StatusCode::CREATED,
    )
    .await;
    s(&c["id"])
}

/// A draft of one item of `amount` for `cus`, and the same invoice finalized (sent, not
/// charged).
async fn invoice_of(app: &TestApp, key: &Cred, cus: &str, amount: i64) -> (Value, Value) {
    json_of(
        app.post(
            "/api/v1/invoice-items",
            key,
            &json!({"customer": cus, "amount": amount, "description": "Service"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let draft = json_of(
        app.post(
            "/api/v1/invoices",
            key,
            &json!({"customer": cus, "collection_method": "send_invoice"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let open = json_of(
        app.post(
            &format!("/api/v1/invoices/{}/finalize", s(&draft["id"])),
            key,
            &json!({}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    (draft, open)
}

fn taxes(invoice: &Value) -> Vec<(String, i64, i64)> {
    invoice["total_tax_amounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                s(&t["display_name"]),
                t["taxable_amount"].as_i64().unwrap(),
                t["amount"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn invoices_take_their_customers_tax_by_hand_calculation_and_exempt_customers_pay_none() {
    let app = spawn_app().await;
    let t = app.register("tax@acme.com").await;
    let key = t.sk_test();
    let vat = rate(
        &app,
        &key,
        json!({"display_name": "VAT", "percentage": 20.0, "inclusive": false, "default": true,
               "jurisdiction": "FR"}),
    )
    .await;
    let city = rate(
        &app,
        &key,
        json!({"display_name": "City tax", "percentage": 8.875, "inclusive": false}),
    )
    .await;
    let gst = rate(
        &app,
        &key,
        json!({"display_name": "GST", "percentage": 10.0, "inclusive": true}),
    )
    .await;

    // The tenant's default: 20 % of 1234 = 246.8 → 247, added to the total.
    let plain = customer(&app, &key, json!({})).await;
    let (draft, open) = invoice_of(&app, &key, &plain, 1234).await;
    assert_eq!(draft["tax"], 247);
    assert_eq!(open["tax"], 247);
    assert_eq!(open["total"], 1481);
    assert_eq!(open["amount_due"], 1481);
    assert_eq!(taxes(&open), vec![("VAT".to_owned(), 1234, 247)]);
    assert_eq!(open["total_tax_amounts"][0]["tax_rate"], json!(vat));

    // Exempt: none.
    let exempt = customer(&app, &key, json!({"tax_exempt": true})).await;
    let (_, open) = invoice_of(&app, &key, &exempt, 1234).await;
    assert_eq!(open["tax"], 0);
    assert_eq!(open["total"], 1234);
    assert!(taxes(&open).is_empty());

    // Its own rates instead of the default: 1100 holds 10 % GST (base round(1100 / 1.1) =
    // 1000, GST 100); city tax 8.875 % of the base = 88.75 → 89 on top.
    let own = customer(&app, &key, json!({"tax_rates": [gst, city]})).await;
    let c = get(&app, &key, &format!("/api/v1/customers/{own}")).await;
    assert_eq!(c["tax_rates"], json!([gst, city]));
    let (_, open) = invoice_of(&app, &key, &own, 1100).await;
    assert_eq!(
        taxes(&open),
        vec![
            ("City tax".to_owned(), 1000, 89),
            ("GST".to_owned(), 1000, 100)
        ]
    );
    assert_eq!(open["subtotal"], 1100);
    assert_eq!(open["tax"], 189);
    assert_eq!(open["total"], 1189);
    // A credit of the same 1100 gives all of it back, tax included, as the customer's credit.
    let (_, credit) = invoice_of(&app, &key, &own, -1100).await;
    assert_eq!(
        taxes(&credit),
        vec![
            ("City tax".to_owned(), -1000, -89),
            ("GST".to_owned(), -1000, -100)
        ]
    );
    assert_eq!(credit["tax"], -189);
    assert_eq!(credit["total"], -1189);
    assert_eq!(credit["amount_due"], 0);
    assert_eq!(credit["status"], "paid");
    assert_eq!(
        get(&app, &key, &format!("/api/v1/customers/{own}")).await["balance"],
        1189
    );

    // A subscription's invoices are taxed the same way, and the charge is the taxed total:
    // 2999 + 20 % (599.8 → 600).
    let (sub_cus, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": sub_cus, "items": [{"plan": plan}]}),
    )
    .await;
    let first = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
    )
    .await;
    assert_eq!(first["tax"], 600);
    assert_eq!(first["total"], 3599);
    let preview = get(
        &app,
        &key,
        &format!("/api/v1/subscriptions/{}/upcoming-invoice", s(&sub["id"])),
    )
    .await;
    assert_eq!(preview["total"], 3599);

    // Archived, the default applies to no new invoice; those made keep it.
    let archived = json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/tax-rates/{vat}"),
            &key,
            Some(&json!({"active": false})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(archived["active"], false);
    let (_, open) = invoice_of(&app, &key, &plain, 1234).await;
    assert_eq!(open["tax"], 0);
    assert_eq!(
        get(&app, &key, &format!("/api/v1/invoices/{}", s(&first["id"]))).await["tax"],
        600
    );
    // Archiving a rate a customer names keeps it there (as at Stripe); no one new names it.
    json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/tax-rates/{city}"),
            &key,
            Some(&json!({"active": false})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let (_, open) = invoice_of(&app, &key, &own, 1100).await;
    assert_eq!(open["tax"], 189);
    let resp = app
        .post(
            "/api/v1/customers",
            &key,
            &json!({"name": "Late", "tax_rates": [city]}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "tax_rates");
    // Back to the defaults: `[]`.
    let cleared = json_of(
        app.send(
            Method::PATCH,
            &format!("/api/v1/customers/{own}"),
            &key,
            Some(&json!({"tax_rates": []})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cleared["tax_rates"], json!([]));
}

#[tokio::test]
async fn bad_tax_rates_are_refused_field_by_field_and_other_tenants_see_nothing() {
    let app = spawn_app().await;
    let t = app.register("tax-bad@acme.com").await;
    let other = app.register("tax-other@acme.com").await;
    let key = t.sk_test();
    let cases = [
        (
            json!({"display_name": "VAT", "percentage": 100.5, "inclusive": false}),
            "percentage",
        ),
        (
            json!({"display_name": "VAT", "percentage": -1.0, "inclusive": false}),
            "percentage",
        ),
        (
            json!({"display_name": "VAT", "percentage": 8.12345, "inclusive": false}),
            "percentage",
        ),
        (
            json!({"display_name": " ", "percentage": 5.0, "inclusive": false}),
            "display_name",
        ),
        (
            json!({"display_name": "VAT", "percentage": 5.0}),
            "inclusive",
        ),
        (
            json!({"display_name": "VAT", "percentage": 5.0, "inclusive": true, "rate": 1}),
            "rate",
        ),
    ];
    for (body, field) in cases {
        let resp = app.post("/api/v1/tax-rates", &key, &body).await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field, "{body} → {problem}");
    }
    let mine = rate(
        &app,
        &key,
        json!({"display_name": "VAT", "percentage": 20.0, "inclusive": false}),
    )
    .await;
    let immutable = app
        .send(
            Method::PATCH,
            &format!("/api/v1/tax-rates/{mine}"),
            &key,
            Some(&json!({"percentage": 5.0})),
        )
        .await;
    let problem = assert_problem(immutable, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "percentage");
    // A customer names only rates of its tenant and mode.
    for (cred, field) in [(other.sk_test(), "tax_rates"), (t.sk_live(), "tax_rates")] {
        let resp = app
            .post(
                "/api/v1/customers",
                &cred,
                &json!({"name": "X", "tax_rates": [mine]}),
            )
            .await;
        let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
        assert_eq!(problem["field"], field);
        let resp = app.get(&format!("/api/v1/tax-rates/{mine}"), &cred).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        let resp = app
            .send(
                Method::PATCH,
                &format!("/api/v1/tax-rates/{mine}"),
                &cred,
                Some(&json!({"active": false})),
            )
            .await;
        assert_problem(resp, StatusCode::NOT_FOUND, "resource_missing").await;
        let listed = get(&app, &cred, "/api/v1/tax-rates").await;
        assert!(listed["data"].as_array().unwrap().is_empty());
    }
    let resp = app
        .post(
            "/api/v1/customers",
            &key,
            &json!({"name": "X", "tax_rates": ["txr_nope"]}),
        )
        .await;
    let problem = assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(problem["field"], "tax_rates");
}

async fn credit_note(app: &TestApp, key: &Cred, body: Value) -> Value {
    json_of(
        app.post("/api/v1/credit-notes", key, &body).await,
        StatusCode::CREATED,
    )
    .await
}

/// The field a refused credit note names.
async fn refused_note(app: &TestApp, key: &Cred, body: Value) -> Value {
    let resp = app.post("/api/v1/credit-notes", key, &body).await;
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await["field"].clone()
}

/// A credit note's lines, tax and amount.
fn note_amounts(note: &Value) -> (i64, i64, i64) {
    let n = |k: &str| note[k].as_i64().unwrap();
    (n("subtotal"), n("tax"), n("amount"))
}

#[tokio::test]
async fn credit_notes_give_back_the_tax_on_what_they_credit_and_all_of_it_with_the_whole_invoice() {
    let app = spawn_app().await;
    let t = app.register("tax-credit@acme.com").await;
    let key = t.sk_test();
    default_vat(&app, &key).await;

    // 100.00 + 20 % = 120.00 owed. A third of the line gives back 20 % of 33.33 = 6.67 with it.
    let cus = customer(&app, &key, json!({})).await;
    let (_, open) = invoice_of(&app, &key, &cus, 10_000).await;
    assert_eq!(open["total"], 12_000);
    let id = s(&open["id"]);
    let line = s(&open["lines"][0]["id"]);
    let first = credit_note(
        &app,
        &key,
        json!({"invoice": id, "lines": [{"invoice_line": line, "amount": 3333}]}),
    )
    .await;
    assert_eq!(note_amounts(&first), (3333, 667, 4000));
    assert_eq!(taxes(&first), vec![("VAT".to_owned(), 3333, 667)]);
    let after = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(after["amount_remaining"], 8000);
    assert_eq!(after["amount_credited"], 4000);
    // A custom line carries no tax (and no rate shows).
    let custom = credit_note(&app, &key, json!({"invoice": id, "amount": 1})).await;
    assert_eq!(note_amounts(&custom), (1, 0, 1));
    assert!(taxes(&custom).is_empty());
    // The rest of the line with its tax (66.67 + 13.33) is more than the 79.99 still owed.
    assert_eq!(
        refused_note(
            &app,
            &key,
            json!({"invoice": id, "lines": [{"invoice_line": line}]})
        )
        .await,
        "lines"
    );
    // 66.66 of it: 13.33 of tax, all of the invoice's tax given back, nothing owed: paid.
    let last = credit_note(
        &app,
        &key,
        json!({"invoice": id, "lines": [{"invoice_line": line, "amount": 6666}]}),
    )
    .await;
    assert_eq!(note_amounts(&last), (6666, 1333, 7999));
    let after = get(&app, &key, &format!("/api/v1/invoices/{id}")).await;
    assert_eq!(after["status"], "paid");
    assert_eq!(after["amount_remaining"], 0);
    assert_eq!(after["amount_credited"], 12_000);
    assert_eq!(
        first["tax"].as_i64().unwrap() + last["tax"].as_i64().unwrap(),
        after["tax"].as_i64().unwrap()
    );

    // A paid invoice (29.99 + 6.00 charged): the whole line gives back 35.99, and a refund
    // of the lines alone does not add up to the note.
    let (sub_cus, plan) = customer_and_plan(&app, &key, Some("4242424242424242")).await;
    let sub = subscribe(
        &app,
        &key,
        json!({"customer": sub_cus, "items": [{"plan": plan}]}),
    )
    .await;
    run_due(&app, scope(&app, &t.sk_test).await).await;
    let paid = get(
        &app,
        &key,
        &format!("/api/v1/invoices/{}", s(&sub["latest_invoice"])),
    )
    .await;
    assert_eq!(
        (&paid["status"], &paid["total"]),
        (&json!("paid"), &json!(3599))
    );
    let line = s(&paid["lines"][0]["id"]);
    assert_eq!(
        refused_note(
            &app,
            &key,
            json!({"invoice": paid["id"], "lines": [{"invoice_line": line}],
                    "refund_amount": 2999})
        )
        .await,
        "refund_amount"
    );
    let refunded = credit_note(
        &app,
        &key,
        json!({"invoice": paid["id"], "lines": [{"invoice_line": line}],
               "refund_amount": 3599}),
    )
    .await;
    assert_eq!(note_amounts(&refunded), (2999, 600, 3599));
    assert_eq!(refunded["refund_amount"], 3599);
    let refund = get(
        &app,
        &key,
        &format!("/api/v1/refunds/{}", s(&refunded["refund"])),
    )
    .await;
    assert_eq!(refund["amount"], 3599);
}

#[tokio::test]
async fn a_credit_note_on_an_inclusive_rate_shows_the_tax_its_lines_hold_and_adds_none() {
    let app = spawn_app().await;
    let t = app.register("tax-credit-incl@acme.com").await;
    let key = t.sk_test();
    let gst = rate(
        &app,
        &key,
        json!({"display_name": "GST", "percentage": 10.0, "inclusive": true}),
    )
    .await;
    let cus = customer(&app, &key, json!({"tax_rates": [gst]})).await;
    // 11.00 holds 1.00 of GST; a credit of 5.50 of it holds 0.50.
    let (_, open) = invoice_of(&app, &key, &cus, 1100).await;
    assert_eq!((&open["tax"], &open["total"]), (&json!(100), &json!(1100)));
    let line = s(&open["lines"][0]["id"]);
    let note = credit_note(
        &app,
        &key,
        json!({"invoice": open["id"], "lines": [{"invoice_line": line, "amount": 550}]}),
    )
    .await;
    assert_eq!(note_amounts(&note), (550, 50, 550));
    assert_eq!(taxes(&note), vec![("GST".to_owned(), 500, 50)]);
    assert_eq!(note["total_tax_amounts"][0]["inclusive"], true);
}
