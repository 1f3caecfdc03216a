//! Billable metrics, usage events and the usage aggregated over a subscription's window.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    db::subscriptions::ItemRow,
    domain::subscription::SubscriptionStatus,
    ids::{BillableMetricId, CustomerId, SubscriptionId},
    tenancy::Scope,
};

#[derive(Debug, Clone, FromRow)]
pub struct MetricRow {
    pub id: BillableMetricId,
    pub code: String,
    pub name: String,
    pub description: String,
    pub aggregation: String,
    pub field_name: Option<String>,
    /// Property → allowed values.
    pub filters: serde_json::Value,
    pub active: bool,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const METRIC_COLUMNS: &str = "id, code, name, description, aggregation, field_name, filters, \
    active, livemode, created_at, updated_at";

pub async fn insert_metric(
    conn: &mut PgConnection,
    scope: Scope,
    m: &MetricRow,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO billable_metrics (id, tenant_id, livemode, code, name, description, \
         aggregation, field_name, filters, active, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(m.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(&m.code)
    .bind(&m.name)
    .bind(&m.description)
    .bind(&m.aggregation)
    .bind(&m.field_name)
    .bind(&m.filters)
    .bind(m.active)
    .bind(m.created_at)
    .bind(m.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes what can change: the names and whether it is active.
pub async fn save_metric(
    conn: &mut PgConnection,
    scope: Scope,
    m: &MetricRow,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE billable_metrics SET name = $4, description = $5, active = $6, updated_at = $7 \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(m.id)
    .bind(&m.name)
    .bind(&m.description)
    .bind(m.active)
    .bind(m.updated_at)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn get_metric<'c, E>(
    conn: E,
    scope: Scope,
    id: BillableMetricId,
    for_update: bool,
) -> Result<MetricRow, DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, MetricRow>(sqlf!(
        "SELECT {METRIC_COLUMNS} FROM billable_metrics \
         WHERE tenant_id = $1 AND livemode = $2 AND id = $3 {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// The metrics of the mode with these codes (archived ones too).
pub async fn metrics_by_code(
    conn: &mut PgConnection,
    scope: Scope,
    codes: &[String],
) -> Result<Vec<MetricRow>, DbError> {
    Ok(sqlx::query_as::<_, MetricRow>(sqlf!(
        "SELECT {METRIC_COLUMNS} FROM billable_metrics \
         WHERE tenant_id = $1 AND livemode = $2 AND code = ANY($3)"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(codes)
    .fetch_all(conn)
    .await?)
}

pub async fn list_metrics(
    pool: &PgPool,
    scope: Scope,
    active: Option<bool>,
    page: PageRequest,
) -> Result<Page<MetricRow>, DbError> {
    let (cond, order) = page.sql(4);
    let rows = sqlx::query_as::<_, MetricRow>(sqlf!(
        "SELECT {METRIC_COLUMNS} FROM billable_metrics WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::bool IS NULL OR active = $3) AND {cond} ORDER BY {order} LIMIT $5"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(active)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// A subscription that usage events may name, locked against its usage being invoiced
/// meanwhile (`FOR SHARE`: a renewal waits for the events, or the events for the renewal).
#[derive(Debug, Clone, FromRow)]
pub struct MeteredSubscription {
    pub id: SubscriptionId,
    pub customer_id: CustomerId,
    pub status: SubscriptionStatus,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Set: it ends at `current_period_end`.
    pub cancel_at_period_end: bool,
    pub current_period_end: DateTime<Utc>,
    /// Usage before this is invoiced.
    pub usage_billed_until: Option<DateTime<Utc>>,
    /// Its test clock's time.
    pub clock_time: Option<DateTime<Utc>>,
    /// Its metered items whose usage is not all invoiced (current ones, and those removed
    /// after its invoiced usage ends), as three columns: each one's metric code, when it was
    /// added and when it was removed.
    pub item_metrics: Vec<String>,
    pub item_added: Vec<DateTime<Utc>>,
    pub item_removed: Vec<Option<DateTime<Utc>>>,
    /// The metric codes its current items' products limit and its current period has not
    /// reached yet.
    pub limited: Vec<String>,
}

/// The subscriptions of the mode among `ids`, and those of the customers among `customers`,
/// with the metrics they meter, share-locked in id order.
pub async fn lock_metered(
    conn: &mut PgConnection,
    scope: Scope,
    ids: &[Uuid],
    customers: &[Uuid],
) -> Result<Vec<MeteredSubscription>, DbError> {
    // Locked first, then read: a read that waited for a lock would see the subscription as
    // it is now but its items as they were before the wait.
    let locked: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM subscriptions WHERE tenant_id = $1 AND livemode = $2 \
         AND (id = ANY($3) OR customer_id = ANY($4)) ORDER BY id FOR SHARE",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(ids)
    .bind(customers)
    .fetch_all(&mut *conn)
    .await?;
    let limits = super::usage_limits::limits_sql("s.id");
    Ok(sqlx::query_as::<_, MeteredSubscription>(
        sqlx::AssertSqlSafe(format!(
        "SELECT s.id, s.customer_id, s.status, s.created_at, s.ended_at, s.cancel_at_period_end, \
         s.current_period_end, s.usage_billed_until, \
         (SELECT c.frozen_time FROM test_clocks c WHERE c.id = s.test_clock_id) AS clock_time, \
         COALESCE(m.codes, '{{}}') AS item_metrics, COALESCE(m.added, '{{}}') AS item_added, \
         COALESCE(m.removed, '{{}}') AS item_removed, \
         ARRAY(SELECT l.metric FROM ({limits}) l \
             WHERE NOT EXISTS (SELECT 1 FROM usage_limit_crossings c \
                 JOIN billable_metrics bm ON bm.id = c.metric_id \
                 WHERE c.subscription_id = s.id AND c.period_start = s.current_period_start \
                 AND bm.code = l.metric AND c.usage_limit >= l.usage_limit)) AS limited \
         FROM subscriptions s LEFT JOIN LATERAL ( \
             SELECT array_agg(p.usage->>'metric' ORDER BY i.id) AS codes, \
                    array_agg(i.created_at ORDER BY i.id) AS added, \
                    array_agg(i.deleted_at ORDER BY i.id) AS removed \
             FROM subscription_items i JOIN prices p ON p.id = i.price_id \
             WHERE i.subscription_id = s.id AND p.usage IS NOT NULL \
             AND (i.deleted_at IS NULL \
                  OR i.deleted_at > COALESCE(s.usage_billed_until, s.created_at))) m ON TRUE \
         WHERE s.tenant_id = $1 AND s.livemode = $2 AND s.id = ANY($3) ORDER BY s.id"
    )),
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(&locked)
    .fetch_all(conn)
    .await?)
}

/// The transaction ids among `ids` already recorded in the mode.
pub async fn recorded(
    conn: &mut PgConnection,
    scope: Scope,
    ids: &[String],
) -> Result<Vec<String>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT transaction_id FROM usage_events \
         WHERE tenant_id = $1 AND livemode = $2 AND transaction_id = ANY($3)",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// A usage event to record, read against its metric.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub transaction_id: &'a str,
    pub id: Uuid,
    pub subscription_id: SubscriptionId,
    pub customer_id: CustomerId,
    pub metric_id: BillableMetricId,
    pub occurred_at: DateTime<Utc>,
    pub properties: &'a serde_json::Map<String, serde_json::Value>,
    pub matched: bool,
    pub value: Option<i64>,
    pub unique_key: Option<String>,
}

/// Records events (their transaction ids distinct, in transaction id order so that two
/// requests never wait for each other in a cycle); returns the transaction ids written, which
/// leaves out those recorded before. New events, the common case, are written by a plain
/// insert under a savepoint; only when one was recorded before is the insert made again,
/// skipping those (a conflict check on every row costs a fifth more).
pub async fn insert_events(
    conn: &mut PgConnection,
    scope: Scope,
    events: &[NewEvent<'_>],
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbError> {
    sqlx::query("SAVEPOINT usage_events_insert")
        .execute(&mut *conn)
        .await?;
    match write_events(conn, scope, events, now, "").await {
        Err(DbError::UniqueViolation(_)) => {
            sqlx::query("ROLLBACK TO SAVEPOINT usage_events_insert")
                .execute(&mut *conn)
                .await?;
            let skip = "ON CONFLICT (tenant_id, livemode, transaction_id) DO NOTHING";
            write_events(conn, scope, events, now, skip).await
        }
        // Any other failure leaves the transaction failed: returned as it is (a deadlock or a
        // serialization failure is then retried whole by the caller).
        Err(e) => Err(e),
        Ok(written) => {
            sqlx::query("RELEASE SAVEPOINT usage_events_insert")
                .execute(&mut *conn)
                .await?;
            Ok(written)
        }
    }
}

async fn write_events(
    conn: &mut PgConnection,
    scope: Scope,
    events: &[NewEvent<'_>],
    now: DateTime<Utc>,
    on_conflict: &str,
) -> Result<Vec<String>, DbError> {
    let n = events.len();
    let mut txn = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut subs = Vec::with_capacity(n);
    let mut customers = Vec::with_capacity(n);
    let mut metrics = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut props = Vec::with_capacity(n);
    let mut matched = Vec::with_capacity(n);
    let mut values = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for e in events {
        txn.push(e.transaction_id);
        ids.push(e.id);
        subs.push(e.subscription_id.as_uuid());
        customers.push(e.customer_id.as_uuid());
        metrics.push(e.metric_id.as_uuid());
        at.push(e.occurred_at);
        props.push(sqlx::types::Json(e.properties));
        matched.push(e.matched);
        values.push(e.value);
        keys.push(e.unique_key.as_deref());
    }
    Ok(sqlx::query_scalar(sqlf!(
        "INSERT INTO usage_events (tenant_id, livemode, transaction_id, id, subscription_id, \
         customer_id, metric_id, occurred_at, properties, matched, value, unique_key, \
         received_at) \
         SELECT $1, $2, t, i, s, c, m, o, p, mt, v, k, $13 FROM unnest($3::text[], $4::uuid[], \
         $5::uuid[], $6::uuid[], $7::uuid[], $8::timestamptz[], $9::jsonb[], $10::bool[], \
         $11::int8[], $12::text[]) AS e(t, i, s, c, m, o, p, mt, v, k) \
         {on_conflict} RETURNING transaction_id"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(&txn)
    .bind(&ids)
    .bind(&subs)
    .bind(&customers)
    .bind(&metrics)
    .bind(&at)
    .bind(&props)
    .bind(&matched)
    .bind(&values)
    .bind(&keys)
    .bind(now)
    .fetch_all(conn)
    .await?)
}

/// A window of a subscription's usage of a metric (by code) to aggregate.
#[derive(Debug, Clone)]
pub struct Window {
    pub scope: Scope,
    pub subscription: SubscriptionId,
    pub metric: String,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// Windows as the array columns the statements unnest.
struct Columns<'a> {
    tenants: Vec<Uuid>,
    modes: Vec<bool>,
    subs: Vec<Uuid>,
    codes: Vec<&'a str>,
    since: Vec<DateTime<Utc>>,
    until: Vec<DateTime<Utc>>,
}

fn columns<'a>(windows: impl Iterator<Item = &'a Window> + Clone) -> Columns<'a> {
    let (tenants, modes) = super::scope_columns(windows.clone().map(|w| &w.scope));
    Columns {
        tenants,
        modes,
        subs: windows.clone().map(|w| w.subscription.as_uuid()).collect(),
        codes: windows.clone().map(|w| w.metric.as_str()).collect(),
        since: windows.clone().map(|w| w.since).collect(),
        until: windows.map(|w| w.until).collect(),
    }
}

/// What a window's matching events add up to, each way a metric can combine them; the
/// metric's aggregation picks one. Without events every figure is 0.
#[derive(Debug, Clone, FromRow)]
pub struct Aggregates {
    /// The window's position in the request.
    pub at: i64,
    pub aggregation: Option<String>,
    pub events: i64,
    /// Clamped to the largest `i64` (which no price can bill).
    pub sum: i64,
    pub max: i64,
    pub unique: i64,
    pub latest: i64,
    /// For a weighted sum: the level the window opened at (all earlier changes).
    pub level_before: i64,
}

/// The aggregates of each window, in the order given (a window naming no metric of its
/// tenant and mode has no aggregation).
pub async fn aggregate(
    conn: &mut PgConnection,
    windows: &[Window],
) -> Result<Vec<Aggregates>, DbError> {
    let Columns {
        tenants,
        modes,
        subs,
        codes,
        since,
        until,
    } = columns(windows.iter());
    Ok(sqlx::query_as::<_, Aggregates>(
        "SELECT k.at, m.aggregation, \
         COALESCE(a.events, 0) AS events, COALESCE(a.sum, 0) AS sum, COALESCE(a.max, 0) AS max, \
         COALESCE(a.uniq, 0) AS unique, COALESCE(a.latest, 0) AS latest, \
         COALESCE(b.level, 0) AS level_before \
         FROM unnest($1::uuid[], $2::bool[], $3::uuid[], $4::text[], $5::timestamptz[], \
              $6::timestamptz[]) WITH ORDINALITY AS k(tenant, mode, sub, code, since, until, at) \
         LEFT JOIN billable_metrics m ON m.tenant_id = k.tenant AND m.livemode = k.mode \
              AND m.code = k.code \
         LEFT JOIN LATERAL ( \
             SELECT count(*) AS events, \
                    LEAST(COALESCE(sum(e.value), 0), 9223372036854775807)::int8 AS sum, \
                    max(e.value) AS max, count(DISTINCT e.unique_key) AS uniq, \
                    (array_agg(e.value ORDER BY e.occurred_at DESC, e.id DESC))[1] AS latest \
             FROM usage_events e WHERE e.subscription_id = k.sub AND e.metric_id = m.id \
             AND e.occurred_at >= k.since AND e.occurred_at < k.until AND e.matched \
             AND e.tenant_id = k.tenant AND e.livemode = k.mode) a ON m.id IS NOT NULL \
         LEFT JOIN LATERAL ( \
             SELECT GREATEST(LEAST(COALESCE(sum(e.value), 0), 9223372036854775807), \
                             -9223372036854775808)::int8 AS level \
             FROM usage_events e WHERE m.aggregation = 'weighted_sum' \
             AND e.subscription_id = k.sub AND e.metric_id = m.id \
             AND e.occurred_at < k.since AND e.matched \
             AND e.tenant_id = k.tenant AND e.livemode = k.mode) b ON m.id IS NOT NULL \
         ORDER BY k.at",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&subs)
    .bind(&codes)
    .bind(&since)
    .bind(&until)
    .fetch_all(conn)
    .await?)
}

/// The changes in each window (by position in `windows`, 1-based as [`Aggregates::at`]) of
/// the weighted sums among them, in time order.
pub async fn changes(
    conn: &mut PgConnection,
    windows: &[(i64, &Window)],
) -> Result<Vec<(i64, DateTime<Utc>, i64)>, DbError> {
    let Columns {
        tenants,
        modes,
        subs,
        codes,
        since,
        until,
    } = columns(windows.iter().map(|w| w.1));
    let at: Vec<i64> = windows.iter().map(|w| w.0).collect();

    Ok(sqlx::query_as(
        "SELECT k.at, e.occurred_at, e.value \
         FROM unnest($1::uuid[], $2::bool[], $3::int8[], $4::uuid[], $5::text[], \
              $6::timestamptz[], $7::timestamptz[]) AS k(tenant, mode, at, sub, code, since, until) \
         JOIN billable_metrics m ON m.tenant_id = k.tenant AND m.livemode = k.mode \
              AND m.code = k.code \
         JOIN usage_events e ON e.subscription_id = k.sub AND e.metric_id = m.id \
              AND e.occurred_at >= k.since AND e.occurred_at < k.until AND e.matched \
              AND e.tenant_id = k.tenant AND e.livemode = k.mode \
         ORDER BY k.at, e.occurred_at, e.id",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&at)
    .bind(&subs)
    .bind(&codes)
    .bind(&since)
    .bind(&until)
    .fetch_all(conn)
    .await?)
}

/// A metered item, current or removed.
#[derive(Debug, Clone, FromRow)]
pub struct MeteredItem {
    #[sqlx(flatten)]
    pub item: ItemRow,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The metered items of subscriptions of any tenants (each key its scope, id, and the instant
/// its usage window opens) that were not removed before the window opened, by subscription in
/// the order they were added.
pub async fn metered_items(
    conn: &mut PgConnection,
    keys: &[(Scope, SubscriptionId, DateTime<Utc>)],
) -> Result<Vec<MeteredItem>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    let since: Vec<DateTime<Utc>> = keys.iter().map(|k| k.2).collect();
    Ok(sqlx::query_as::<_, MeteredItem>(
        "SELECT i.id, i.subscription_id, i.price_id, i.quantity, i.created_at, p.model, \
         pr.name AS product_name, p.nickname, p.usage, i.deleted_at \
         FROM unnest($1::uuid[], $2::bool[], $3::uuid[], $4::timestamptz[]) \
              AS k(tenant, mode, sub, since) \
         JOIN subscription_items i ON i.subscription_id = k.sub AND i.tenant_id = k.tenant \
              AND i.livemode = k.mode AND (i.deleted_at IS NULL OR i.deleted_at > k.since) \
         JOIN prices p ON p.id = i.price_id AND p.usage IS NOT NULL \
         JOIN products pr ON pr.id = p.product_id \
         ORDER BY i.subscription_id, i.id",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .bind(&since)
    .fetch_all(conn)
    .await?)
}
