//! Invoice numbers: sequential per tenant, mode and prefix, with no gaps under concurrency.

use std::sync::Arc;

use shared::{
    clock::SystemClock,
    domain::{api_key::PresentedKey, customer::InvoicePrefix},
    service::invoices,
    tenancy::TenantContext,
    uow::UnitOfWork,
};

use crate::helpers::{TestApp, spawn_app};

pub async fn context(app: &TestApp, key: &str) -> TenantContext {
    let presented = PresentedKey::parse(key).unwrap();
    shared::db::api_keys::find_active_by_hash(&app.pool, &presented.hash)
        .await
        .unwrap()
        .context()
}

#[tokio::test]
async fn concurrent_finalizations_take_consecutive_numbers_and_a_rollback_leaves_no_gap() {
    let app = spawn_app().await;
    let t = app.register("numbers@acme.com").await;
    let ctx = Arc::new(context(&app, &t.sk_test).await);
    let acme = Arc::new(InvoicePrefix::parse("ACME").unwrap());
    // 200 finalizations at once; every tenth rolls back after taking its number.
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (pool, ctx, acme) = (app.pool.clone(), ctx.clone(), acme.clone());
            tokio::spawn(async move {
                let mut uow = UnitOfWork::begin(&pool, &SystemClock).await.unwrap();
                let number = invoices::assign_number(&mut uow, &ctx, &acme)
                    .await
                    .unwrap();
                if i % 10 == 0 {
                    uow.rollback().await;
                    None
                } else {
                    uow.commit().await.unwrap();
                    Some(number)
                }
            })
        })
        .collect();
    let mut committed = Vec::new();
    for task in tasks {
        committed.extend(task.await.unwrap());
    }
    committed.sort();
    let expected: Vec<String> = (1..=180).map(|n| format!("ACME-{n:06}")).collect();
    assert_eq!(committed, expected, "180 committed, numbered 1 to 180");

    // Another mode and another prefix count on their own; this one goes on at 181.
    let live = context(&app, &t.sk_live).await;
    let beta = InvoicePrefix::parse("BETA").unwrap();
    let mut uow = UnitOfWork::begin(&app.pool, &SystemClock).await.unwrap();
    assert_eq!(
        invoices::assign_number(&mut uow, &live, &acme)
            .await
            .unwrap(),
        "ACME-000001"
    );
    assert_eq!(
        invoices::assign_number(&mut uow, &ctx, &beta)
            .await
            .unwrap(),
        "BETA-000001"
    );
    assert_eq!(
        invoices::assign_number(&mut uow, &ctx, &acme)
            .await
            .unwrap(),
        "ACME-000181"
    );
    uow.commit().await.unwrap();
}

/// A subscription row of `customer` for tests of the storage's own guarantees.
fn subscription_row(
    customer: shared::ids::CustomerId,
    tenant: shared::ids::TenantId,
    now: chrono::DateTime<chrono::Utc>,
) -> shared::db::subscriptions::SubscriptionRow {
    shared::db::subscriptions::SubscriptionRow {
        id: shared::ids::SubscriptionId::new(),
        tenant_id: tenant,
        livemode: false,
        customer_id: customer,
        status: shared::domain::subscription::SubscriptionStatus::Incomplete,
        currency: "usd".into(),
        interval: "month".into(),
        interval_count: 1,
        timezone: "UTC".into(),
        billing_cycle_anchor: now,
        current_period_index: 0,
        current_period_start: now,
        current_period_end: now + chrono::Duration::days(30),
        trial_start: None,
        trial_end: None,
        collection_method: "charge_automatically".into(),
        days_until_due: None,
        proration_behavior: "create_prorations".into(),
        cancel_at_period_end: false,
        canceled_at: None,
        ended_at: None,
        latest_invoice_id: None,
        metadata: serde_json::json!({}),
        test_clock_id: None,
        coupon_id: None,
        coupon_redeemed_at: None,
        coupon_invoices: 0,
        bundle_id: None,
        bundle_discount_bps: 0,
        usage_billed_until: None,
        usage_draft_until: None,
        created_at: now,
        updated_at: now,
    }
}

fn invoice_row(s: &shared::db::subscriptions::SubscriptionRow) -> shared::db::invoices::InvoiceRow {
    shared::db::invoices::InvoiceRow {
        id: shared::ids::InvoiceId::new(),
        tenant_id: s.tenant_id,
        livemode: false,
        customer_id: s.customer_id,
        subscription_id: Some(s.id),
        status: shared::domain::invoice::InvoiceStatus::Open,
        number: None,
        currency: "usd".into(),
        billing_reason: "subscription_create".into(),
        collection_method: "charge_automatically".into(),
        period_start: s.current_period_start,
        period_end: s.current_period_end,
        subtotal: 2999,
        discount: 0,
        tax: 0,
        total: 2999,
        balance_applied: 0,
        amount_due: 2999,
        amount_paid: 0,
        amount_remaining: 2999,
        attempt_count: 0,
        due_date: None,
        finalized_at: None,
        paid_at: None,
        voided_at: None,
        metadata: serde_json::json!({}),
        created_at: s.created_at,
        updated_at: s.created_at,
        description: None,
        sent_at: None,
        days_until_due: None,
        coupon_id: None,
        amount_credited: 0,
        credit_note_count: 0,
        tax_amounts: serde_json::json!([]),
    }
}

fn payment_row(
    i: &shared::db::invoices::InvoiceRow,
    attempt: i32,
) -> shared::db::invoices::PaymentRow {
    shared::db::invoices::PaymentRow {
        id: shared::ids::PaymentId::new(),
        tenant_id: i.tenant_id,
        livemode: false,
        invoice_id: i.id,
        customer_id: i.customer_id,
        attempt,
        amount: i.amount_due,
        currency: i.currency.clone(),
        application_fee: 0,
        status: shared::db::invoices::PaymentStatus::Pending,
        gateway: "sandbox".into(),
        gateway_id: None,
        idempotency_key: format!("{}-attempt-{attempt}", i.id),
        payment_method_id: None,
        failure_code: None,
        failure_message: None,
        hard_decline: false,
        amount_refunded: 0,
        dispute_status: None,
        disputed_amount: 0,
        credited_to_balance: 0,
        created_at: i.created_at,
        updated_at: i.created_at,
    }
}

#[tokio::test]
async fn storage_keeps_one_invoice_per_subscription_period_and_one_payment_in_flight() {
    use shared::db::{DbError, invoices as inv, subscriptions as subs};
    use shared::ids::{CustomerId, PriceId, SubscriptionItemId};

    let app = spawn_app().await;
    let t = app.register("storage@acme.com").await;
    let other = app.register("storage@other.com").await;
    let cred = t.sk_test();
    let customer = crate::helpers::s(
        &app.post(
            "/api/v1/customers",
            &cred,
            &serde_json::json!({"name": "Ada"}),
        )
        .await
        .json::<serde_json::Value>()
        .await
        .unwrap()["id"],
    );
    let plan: serde_json::Value = app
        .post(
            "/api/v1/plans",
            &cred,
            &serde_json::json!({"name": "Pro", "price_cents": 2999, "billing_interval": "month"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let ctx = context(&app, &t.sk_test).await;
    let scope = ctx.scope();
    let live = context(&app, &t.sk_live).await.scope();
    let elsewhere = context(&app, &other.sk_test).await.scope();
    let now = chrono::Utc::now();
    let sub = subscription_row(CustomerId::parse(&customer).unwrap(), ctx.tenant_id(), now);
    let price = PriceId::parse(plan["price_id"].as_str().unwrap()).unwrap();

    let mut conn = app.pool.acquire().await.unwrap();
    subs::insert(&mut conn, scope, &sub).await.unwrap();
    let item = SubscriptionItemId::new();
    subs::insert_items(
        &mut conn,
        scope,
        sub.id,
        &[subs::NewItem {
            id: item,
            price_id: price,
            quantity: 3,
        }],
        now,
    )
    .await
    .unwrap();
    let items = subs::items(&mut *conn, scope, &[sub.id.as_uuid()])
        .await
        .unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].id, items[0].price_id, items[0].quantity),
        (item, price, 3)
    );
    assert_eq!(items[0].description(), "Pro");

    // Another mode and another tenant do not see it.
    assert!(matches!(
        subs::get(&mut conn, live, sub.id).await,
        Err(DbError::NotFound)
    ));
    assert!(matches!(
        subs::get(&mut conn, elsewhere, sub.id).await,
        Err(DbError::NotFound)
    ));
    let customer_id = sub.customer_id;
    assert_eq!(
        subs::live_of_customer(&mut conn, scope, customer_id)
            .await
            .unwrap(),
        Some(sub.id)
    );

    // One invoice per (subscription, period): a second one for the period writes nothing.
    let first = invoice_row(&sub);
    assert!(inv::insert(&mut conn, scope, &first).await.unwrap());
    let again = invoice_row(&sub);
    assert!(!inv::insert(&mut conn, scope, &again).await.unwrap());
    assert!(matches!(
        inv::get(&mut conn, scope, again.id).await,
        Err(DbError::NotFound)
    ));
    let found = inv::of_period(&mut conn, scope, sub.id, sub.current_period_start)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, first.id);
    // Lines come back in their order.
    let line = |position: i32, amount: i64| inv::LineRow {
        id: shared::ids::InvoiceLineId::new(),
        invoice_id: first.id,
        position,
        description: format!("line {position}"),
        price_id: Some(price),
        subscription_item_id: Some(item),
        quantity: 3,
        unit_amount: None,
        amount,
        discount_amount: 0,
        proration: position == 0,
        period_start: first.period_start,
        period_end: first.period_end,
    };
    inv::insert_lines(&mut conn, scope, &[line(1, 2999), line(0, -100)])
        .await
        .unwrap();
    let lines = inv::lines(&mut *conn, scope, &[first.id.as_uuid()])
        .await
        .unwrap();
    let got: Vec<(i32, i64, bool)> = lines
        .iter()
        .map(|l| (l.position, l.amount, l.proration))
        .collect();
    assert_eq!(got, vec![(0, -100, true), (1, 2999, false)]);
    assert!(
        inv::lines(&mut *conn, live, &[first.id.as_uuid()])
            .await
            .unwrap()
            .is_empty()
    );
    // The next period's invoice is another invoice.
    let mut next = invoice_row(&sub);
    next.period_start = sub.current_period_end;
    next.period_end = sub.current_period_end + chrono::Duration::days(30);
    next.billing_reason = "subscription_cycle".into();
    assert!(inv::insert(&mut conn, scope, &next).await.unwrap());

    // At most one attempt in flight per invoice, and one row per attempt number.
    let p1 = payment_row(&first, 1);
    inv::insert_payment(&mut conn, scope, &p1).await.unwrap();
    let err = inv::insert_payment(&mut conn, scope, &payment_row(&first, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DbError::UniqueViolation(c) if c == "payments_in_flight_key"),
        "{err:?}"
    );
    let mut done = p1.clone();
    done.status = inv::PaymentStatus::Failed;
    done.failure_code = Some("card_declined".into());
    inv::save_payment(&mut conn, scope, &done).await.unwrap();
    assert!(
        inv::in_flight_payment(&mut conn, scope, first.id)
            .await
            .unwrap()
            .is_none()
    );
    let err = inv::insert_payment(&mut conn, scope, &payment_row(&first, 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DbError::UniqueViolation(c) if c == "payments_attempt_key"),
        "{err:?}"
    );
    inv::insert_payment(&mut conn, scope, &payment_row(&first, 2))
        .await
        .unwrap();
    let pending = inv::in_flight_payment(&mut conn, scope, first.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.attempt, 2);
    assert_eq!(
        inv::get_payment(&mut conn, scope, p1.id)
            .await
            .unwrap()
            .failure_code
            .as_deref(),
        Some("card_declined")
    );
    assert!(matches!(
        inv::get_payment(&mut conn, elsewhere, p1.id).await,
        Err(DbError::NotFound)
    ));
    let page = shared::service::PageRequest {
        limit: 10,
        cursor: shared::db::pagination::Cursor::First,
    };
    let listed = inv::list_payments(&app.pool, scope, Some(first.id), page)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 2);
    let invoices = inv::list(&app.pool, scope, inv::InvoiceFilter::default(), page)
        .await
        .unwrap();
    assert_eq!(invoices.items.len(), 2);
    assert!(
        inv::list(&app.pool, live, inv::InvoiceFilter::default(), page)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}
