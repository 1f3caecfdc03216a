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

async fn context(app: &TestApp, key: &str) -> TenantContext {
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
