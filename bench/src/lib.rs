//! Benchmarks (`examples/`, run by `bench/*/run`) and end-to-end tests (`tests/e2e`) of the API
//! and the worker fleet together; the worker itself does not depend on the API.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, types::Uuid};

/// Makes `n` customers of a tenant's test mode, each with a default card (`token(i)`, a
/// sandbox token) and an active subscription to `price` (1 unit) whose 30-day period ended at
/// `ended`: due for renewal. Written in bulk, as their creation is not what is measured.
/// Returns the subscriptions' ids.
pub async fn due_subscriptions(
    pool: &PgPool,
    tenant: Uuid,
    price: Uuid,
    n: usize,
    ended: DateTime<Utc>,
    token: impl Fn(usize) -> &'static str,
) -> anyhow::Result<Vec<Uuid>> {
    let started_at = ended - chrono::Duration::days(30);
    let tokens: Vec<&str> = (0..n).map(token).collect();
    let mut tx = pool.begin().await?;
    let customers: Vec<Uuid> = sqlx::query_scalar(
        "WITH t AS (SELECT gen_random_uuid() AS id, token, ord \
             FROM unnest($3::text[]) WITH ORDINALITY AS u(token, ord)), \
         c AS (INSERT INTO customers (id, tenant_id, livemode, name, currency, created_at, \
             updated_at) SELECT id, $1, FALSE, 'Customer ' || ord, 'usd', $2, $2 FROM t) \
         INSERT INTO payment_methods (id, tenant_id, livemode, customer_id, gateway_token, \
             brand, last4, exp_month, exp_year, is_default, created_at) \
         SELECT gen_random_uuid(), $1, FALSE, t.id, t.token, 'visa', '4242', 12, 2040, TRUE, $2 \
         FROM t RETURNING customer_id",
    )
    .bind(tenant)
    .bind(ended)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await?;
    let subs: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO subscriptions (id, tenant_id, livemode, customer_id, status, currency, \
         interval, interval_count, timezone, billing_cycle_anchor, current_period_index, \
         current_period_start, current_period_end, collection_method, proration_behavior, \
         created_at, updated_at) \
         SELECT gen_random_uuid(), $1, FALSE, id, 'active', 'usd', 'day', 30, 'UTC', $2, 0, $2, \
         $3, 'charge_automatically', 'create_prorations', $2, $2 \
         FROM customers WHERE id = ANY($4) RETURNING id",
    )
    .bind(tenant)
    .bind(started_at)
    .bind(ended)
    .bind(&customers)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO subscription_items (id, tenant_id, livemode, subscription_id, price_id, \
         quantity, created_at) \
         SELECT gen_random_uuid(), $1, FALSE, id, $2, 1, $3 FROM subscriptions \
         WHERE id = ANY($4)",
    )
    .bind(tenant)
    .bind(price)
    .bind(ended)
    .bind(&subs)
    .execute(&mut *tx)
    .await?;
    // A 30-day price, so that the stored interval matches the subscriptions'.
    sqlx::query("UPDATE prices SET interval = 'day', interval_count = 30 WHERE id = $1")
        .bind(price)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(subs)
}

/// The `subscription.renew` jobs of subscriptions (of `scope`) whose period ends at
/// `period_end`, due then.
pub fn renewal_jobs(
    scope: shared::tenancy::Scope,
    subs: &[Uuid],
    period_end: DateTime<Utc>,
) -> Vec<shared::jobs::NewJob> {
    subs.iter()
        .map(|s| {
            shared::jobs::Job::RenewSubscription {
                subscription: shared::ids::SubscriptionId::from_uuid(*s),
                period_start: period_end,
            }
            .to_new(Some(scope), period_end)
        })
        .collect()
}
