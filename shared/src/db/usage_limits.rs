//! Usage limits: what a subscription's plans allow of each metric per period, and the periods
//! whose usage reached a limit (recorded once each).

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection};

use super::DbError;
use crate::{
    ids::{BillableMetricId, PriceId, SubscriptionId},
    tenancy::Scope,
};

/// What the products of a subscription's current items allow of one metric per period (two
/// products limiting one metric add up).
#[derive(Debug, Clone, FromRow)]
pub struct OpenLimit {
    pub metric_id: BillableMetricId,
    pub metric: String,
    pub usage_limit: i64,
}

/// What the plans a subscription (`sub`, an SQL expression) is subscribed to allow of each
/// metric, as rows (`metric` code, `usage_limit`): SQL to embed. A subscription is subscribed
/// to a plan when one of its current items is the plan's price (another price of the plan's
/// product is not the plan); each plan counts once.
pub(crate) fn limits_sql(sub: &str) -> String {
    format!(
        "SELECT l->>'metric' AS metric, sum((l->>'limit')::bigint)::bigint AS usage_limit \
         FROM (SELECT DISTINCT pr.id, pr.usage_limits FROM subscription_items li \
               JOIN prices lp ON lp.id = li.price_id JOIN products pr ON pr.id = lp.product_id \
               WHERE li.subscription_id = {sub} AND li.deleted_at IS NULL AND lp.plan \
               AND pr.usage_limits <> '[]'::jsonb) pr \
         CROSS JOIN LATERAL jsonb_array_elements(pr.usage_limits) l GROUP BY 1"
    )
}

/// The limits of a subscription not reached yet in the period starting at `period_start` (a
/// limit counts as reached when one at least as high was).
pub async fn open(
    conn: &mut PgConnection,
    scope: Scope,
    subscription: SubscriptionId,
    period_start: DateTime<Utc>,
) -> Result<Vec<OpenLimit>, DbError> {
    let limits = limits_sql("$3");
    Ok(sqlx::query_as::<_, OpenLimit>(sqlx::AssertSqlSafe(format!(
        "SELECT m.id AS metric_id, m.code AS metric, l.usage_limit \
         FROM ({limits}) l \
         JOIN billable_metrics m ON m.tenant_id = $1 AND m.livemode = $2 AND m.code = l.metric \
         WHERE EXISTS (SELECT 1 FROM subscriptions s WHERE s.tenant_id = $1 \
                AND s.livemode = $2 AND s.id = $3) \
           AND NOT EXISTS (SELECT 1 FROM usage_limit_crossings c \
                WHERE c.subscription_id = $3 AND c.metric_id = m.id AND c.period_start = $4 \
                AND c.usage_limit >= l.usage_limit) \
         ORDER BY m.code"
    )))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(subscription)
    .bind(period_start)
    .fetch_all(conn)
    .await?)
}

/// The live subscriptions (not ended) with a current item of `price`, in id order.
pub async fn subscribers(
    conn: &mut PgConnection,
    scope: Scope,
    price: PriceId,
) -> Result<Vec<SubscriptionId>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT s.id FROM subscription_items i \
         JOIN subscriptions s ON s.id = i.subscription_id \
         WHERE i.tenant_id = $1 AND i.livemode = $2 AND i.price_id = $3 \
         AND i.deleted_at IS NULL AND s.ended_at IS NULL ORDER BY s.id",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(price)
    .fetch_all(conn)
    .await?)
}

/// A period's usage of a metric that reached its limit.
#[derive(Debug, Clone)]
pub struct Crossing {
    pub subscription: SubscriptionId,
    pub metric_id: BillableMetricId,
    pub period_start: DateTime<Utc>,
    pub usage_limit: i64,
    pub quantity: u64,
}

/// Records that a period's usage reached a limit; `false` when it was recorded before (by
/// another check), which then tells of it.
pub async fn record(
    conn: &mut PgConnection,
    scope: Scope,
    c: &Crossing,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let inserted = sqlx::query(
        "INSERT INTO usage_limit_crossings (tenant_id, livemode, subscription_id, metric_id, \
             period_start, usage_limit, quantity, crossed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::text::numeric, $8) ON CONFLICT DO NOTHING",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(c.subscription)
    .bind(c.metric_id)
    .bind(c.period_start)
    .bind(c.usage_limit)
    .bind(c.quantity.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}
