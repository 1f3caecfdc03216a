//! Subscriptions and their items, per tenant and mode. Rows are read, changed in memory by the
//! services (through the domain's status machine) and saved whole under the row's lock.

use chrono::{DateTime, Utc};
use sqlx::{FromRow, PgConnection, PgPool};
use uuid::Uuid;

use super::{
    DbError,
    pagination::{Page, PageRequest},
};
use crate::{
    domain::subscription::SubscriptionStatus,
    ids::{
        BundleId, CouponId, CustomerId, InvoiceId, PriceId, SubscriptionId, SubscriptionItemId,
        TenantId, TestClockId,
    },
    tenancy::Scope,
};

#[derive(Debug, Clone, FromRow)]
pub struct SubscriptionRow {
    pub id: SubscriptionId,
    pub tenant_id: TenantId,
    pub livemode: bool,
    pub customer_id: CustomerId,
    pub status: SubscriptionStatus,
    pub currency: String,
    pub interval: String,
    pub interval_count: i32,
    pub timezone: String,
    pub billing_cycle_anchor: DateTime<Utc>,
    /// Counted from the anchor; -1 during the trial.
    pub current_period_index: i32,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub trial_start: Option<DateTime<Utc>>,
    pub trial_end: Option<DateTime<Utc>>,
    pub collection_method: String,
    pub days_until_due: Option<i32>,
    pub proration_behavior: String,
    pub cancel_at_period_end: bool,
    pub canceled_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub latest_invoice_id: Option<InvoiceId>,
    pub metadata: serde_json::Value,
    /// The customer's test clock: jobs about the subscription wait for its time.
    pub test_clock_id: Option<TestClockId>,
    /// A coupon redeemed on it, when, and how many period invoices it has been on since.
    pub coupon_id: Option<CouponId>,
    pub coupon_redeemed_at: Option<DateTime<Utc>>,
    pub coupon_invoices: i32,
    /// The bundle it was made from, and the bundle's discount then (basis points).
    pub bundle_id: Option<BundleId>,
    pub bundle_discount_bps: i32,
    /// Usage before this instant is invoiced (set by every period invoice): usage events for
    /// it are refused. `None`: no period invoiced yet.
    pub usage_billed_until: Option<DateTime<Utc>>,
    /// Usage before this instant is on the renewal invoice of the period starting then, still
    /// a draft: it is billed (and `usage_billed_until` moves here) when that is finalized.
    pub usage_draft_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An item with what the subscription needs of its price.
#[derive(Debug, Clone, FromRow)]
pub struct ItemRow {
    pub id: SubscriptionItemId,
    pub subscription_id: SubscriptionId,
    pub price_id: PriceId,
    pub quantity: i64,
    pub created_at: DateTime<Utc>,
    /// The price's terms (`domain::pricing::PriceModel`).
    pub model: serde_json::Value,
    pub product_name: String,
    pub nickname: String,
    /// What a metered price measures (`domain::pricing::Usage`); `None` for a licensed one.
    pub usage: Option<serde_json::Value>,
}

impl ItemRow {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "subscription_item",
            "price": self.price_id.to_string(),
            "quantity": self.quantity,
            "created_at": super::api_time(self.created_at),
        })
    }

    /// How invoice lines name it: the product, and the price's nickname when it says more.
    pub fn description(&self) -> String {
        if self.nickname.is_empty() || self.nickname == self.product_name {
            self.product_name.clone()
        } else {
            format!("{} ({})", self.product_name, self.nickname)
        }
    }
}

impl SubscriptionRow {
    /// The subscription as the API shows it (and as its events carry it).
    pub fn to_json(&self, items: &[ItemRow]) -> serde_json::Value {
        let time = |t: Option<DateTime<Utc>>| t.map(super::api_time);
        serde_json::json!({
            "id": self.id.to_string(),
            "object": "subscription",
            "customer": self.customer_id.to_string(),
            "status": self.status.as_str(),
            "currency": self.currency,
            "interval": self.interval,
            "interval_count": self.interval_count,
            "items": items.iter().map(ItemRow::to_json).collect::<Vec<_>>(),
            "billing_cycle_anchor": super::api_time(self.billing_cycle_anchor),
            "current_period_start": super::api_time(self.current_period_start),
            "current_period_end": super::api_time(self.current_period_end),
            "trial_start": time(self.trial_start),
            "trial_end": time(self.trial_end),
            "collection_method": self.collection_method,
            "days_until_due": self.days_until_due,
            "proration_behavior": self.proration_behavior,
            "cancel_at_period_end": self.cancel_at_period_end,
            "canceled_at": time(self.canceled_at),
            "ended_at": time(self.ended_at),
            "latest_invoice": self.latest_invoice_id.map(|i| i.to_string()),
            "metadata": self.metadata,
            "test_clock": self.test_clock_id.map(|c| c.to_string()),
            "coupon": self.coupon_id.map(|c| c.to_string()),
            "bundle": self.bundle_id.map(|b| b.to_string()),
            "livemode": self.livemode,
            "created_at": super::api_time(self.created_at),
            "updated_at": super::api_time(self.updated_at),
        })
    }
}

const COLUMNS: &str = "id, tenant_id, livemode, customer_id, status, currency, interval, \
    interval_count, timezone, billing_cycle_anchor, current_period_index, current_period_start, \
    current_period_end, trial_start, trial_end, collection_method, days_until_due, \
    proration_behavior, cancel_at_period_end, canceled_at, ended_at, latest_invoice_id, \
    metadata, test_clock_id, coupon_id, coupon_redeemed_at, coupon_invoices, created_at, \
    updated_at, bundle_id, bundle_discount_bps, usage_billed_until, usage_draft_until";

/// Inserts a subscription as the row describes it (its id, times and all).
pub async fn insert(
    conn: &mut PgConnection,
    scope: Scope,
    s: &SubscriptionRow,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO subscriptions (id, tenant_id, livemode, customer_id, status, currency, \
         interval, interval_count, timezone, billing_cycle_anchor, current_period_index, \
         current_period_start, current_period_end, trial_start, trial_end, collection_method, \
         days_until_due, proration_behavior, cancel_at_period_end, canceled_at, ended_at, \
         latest_invoice_id, metadata, created_at, updated_at, test_clock_id, coupon_id, \
         coupon_redeemed_at, coupon_invoices, bundle_id, bundle_discount_bps, \
         usage_billed_until, usage_draft_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
         $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33)",
    )
    .bind(s.id)
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(s.customer_id)
    .bind(s.status)
    .bind(&s.currency)
    .bind(&s.interval)
    .bind(s.interval_count)
    .bind(&s.timezone)
    .bind(s.billing_cycle_anchor)
    .bind(s.current_period_index)
    .bind(s.current_period_start)
    .bind(s.current_period_end)
    .bind(s.trial_start)
    .bind(s.trial_end)
    .bind(&s.collection_method)
    .bind(s.days_until_due)
    .bind(&s.proration_behavior)
    .bind(s.cancel_at_period_end)
    .bind(s.canceled_at)
    .bind(s.ended_at)
    .bind(s.latest_invoice_id)
    .bind(&s.metadata)
    .bind(s.created_at)
    .bind(s.updated_at)
    .bind(s.test_clock_id)
    .bind(s.coupon_id)
    .bind(s.coupon_redeemed_at)
    .bind(s.coupon_invoices)
    .bind(s.bundle_id)
    .bind(s.bundle_discount_bps)
    .bind(s.usage_billed_until)
    .bind(s.usage_draft_until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes what changes over a subscription's life; the row must be locked ([`lock`]).
pub async fn save(
    conn: &mut PgConnection,
    scope: Scope,
    s: &SubscriptionRow,
) -> Result<(), DbError> {
    super::owned_by(scope, s.tenant_id, s.livemode)?;
    save_many(conn, &[s]).await
}

/// Writes what changes over the life of subscriptions of any tenants (each in its row's tenant
/// and mode), in one statement; the rows must be locked ([`lock_many`]).
pub async fn save_many(conn: &mut PgConnection, subs: &[&SubscriptionRow]) -> Result<(), DbError> {
    if subs.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&SubscriptionRow) -> Option<DateTime<Utc>>| {
        subs.iter().map(|s| f(s)).collect::<Vec<_>>()
    };
    let ids: Vec<Uuid> = subs.iter().map(|s| s.id.as_uuid()).collect();
    let tenants: Vec<Uuid> = subs.iter().map(|s| s.tenant_id.as_uuid()).collect();
    let modes: Vec<bool> = subs.iter().map(|s| s.livemode).collect();
    let statuses: Vec<&str> = subs.iter().map(|s| s.status.as_str()).collect();
    let indexes: Vec<i32> = subs.iter().map(|s| s.current_period_index).collect();
    let cancels: Vec<bool> = subs.iter().map(|s| s.cancel_at_period_end).collect();
    let latest: Vec<Option<Uuid>> = subs
        .iter()
        .map(|s| s.latest_invoice_id.map(|i| i.as_uuid()))
        .collect();
    let metadata: Vec<&serde_json::Value> = subs.iter().map(|s| &s.metadata).collect();
    let prorations: Vec<&str> = subs.iter().map(|s| s.proration_behavior.as_str()).collect();
    let coupon_invoices: Vec<i32> = subs.iter().map(|s| s.coupon_invoices).collect();
    let done = sqlx::query(
        "UPDATE subscriptions s SET status = u.status, \
         billing_cycle_anchor = u.anchor, current_period_index = u.idx, \
         current_period_start = u.period_start, current_period_end = u.period_end, \
         trial_end = u.trial_end, cancel_at_period_end = u.cancel, canceled_at = u.canceled_at, \
         ended_at = u.ended_at, latest_invoice_id = u.latest, metadata = u.metadata, \
         proration_behavior = u.proration, updated_at = u.updated_at, \
         coupon_invoices = u.coupon_invoices, usage_billed_until = u.usage_billed_until, \
         usage_draft_until = u.usage_draft_until \
         FROM unnest($1::uuid[], $2::uuid[], $3::bool[], $4::text[], $5::timestamptz[], \
         $6::int[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::bool[], \
         $11::timestamptz[], $12::timestamptz[], $13::uuid[], $14::jsonb[], $15::text[], \
         $16::timestamptz[], $17::int[], $18::timestamptz[], $19::timestamptz[]) \
         AS u(id, tenant_id, livemode, status, anchor, idx, period_start, period_end, trial_end, \
         cancel, canceled_at, ended_at, latest, metadata, proration, updated_at, coupon_invoices, \
         usage_billed_until, usage_draft_until) \
         WHERE s.tenant_id = u.tenant_id AND s.livemode = u.livemode AND s.id = u.id",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&modes)
    .bind(&statuses)
    .bind(col(|s| Some(s.billing_cycle_anchor)))
    .bind(&indexes)
    .bind(col(|s| Some(s.current_period_start)))
    .bind(col(|s| Some(s.current_period_end)))
    .bind(col(|s| s.trial_end))
    .bind(&cancels)
    .bind(col(|s| s.canceled_at))
    .bind(col(|s| s.ended_at))
    .bind(&latest)
    .bind(&metadata)
    .bind(&prorations)
    .bind(col(|s| Some(s.updated_at)))
    .bind(&coupon_invoices)
    .bind(col(|s| s.usage_billed_until))
    .bind(col(|s| s.usage_draft_until))
    .execute(conn)
    .await?;
    if done.rows_affected() != subs.len() as u64 {
        return Err(DbError::NotFound);
    }
    Ok(())
}

pub async fn get(
    conn: &mut PgConnection,
    scope: Scope,
    id: SubscriptionId,
) -> Result<SubscriptionRow, DbError> {
    one(conn, scope, id, false).await
}

/// Reads and locks a subscription until the transaction ends: changes to one take turns.
pub async fn lock(
    conn: &mut PgConnection,
    scope: Scope,
    id: SubscriptionId,
) -> Result<SubscriptionRow, DbError> {
    one(conn, scope, id, true).await
}

async fn one(
    conn: &mut PgConnection,
    scope: Scope,
    id: SubscriptionId,
    for_update: bool,
) -> Result<SubscriptionRow, DbError> {
    let lock = if for_update { "FOR UPDATE" } else { "" };
    sqlx::query_as::<_, SubscriptionRow>(sqlf!(
        "SELECT {COLUMNS} FROM subscriptions WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3 {lock}"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(DbError::NotFound)
}

/// Reads and locks subscriptions of any tenants (each key its tenant, mode and id) until the
/// transaction ends, in id order (the order every statement locking many takes, so that two
/// never wait for each other in a cycle). Those not found are left out.
pub async fn lock_many(
    conn: &mut PgConnection,
    keys: &[(Scope, SubscriptionId)],
) -> Result<Vec<SubscriptionRow>, DbError> {
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, SubscriptionRow>(sqlf!(
        "SELECT {COLUMNS} FROM subscriptions WHERE id = ANY($3) \
         AND (tenant_id, livemode, id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         ORDER BY id FOR UPDATE"
    ))
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await?)
}

/// Subscriptions of the mode, newest first, optionally of one customer and in one status.
pub async fn list(
    pool: &PgPool,
    scope: Scope,
    customer: Option<CustomerId>,
    status: Option<SubscriptionStatus>,
    page: PageRequest,
) -> Result<Page<SubscriptionRow>, DbError> {
    let (cond, order) = page.sql(5);
    let rows = sqlx::query_as::<_, SubscriptionRow>(sqlf!(
        "SELECT {COLUMNS} FROM subscriptions WHERE tenant_id = $1 AND livemode = $2 \
         AND ($3::uuid IS NULL OR customer_id = $3) AND ($4::text IS NULL OR status = $4) \
         AND {cond} ORDER BY {order} LIMIT $6"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .bind(status)
    .bind(page.bounds())
    .bind(page.limit + 1)
    .fetch_all(pool)
    .await?;
    Ok(page.finish(rows))
}

/// A live subscription of the customer (not canceled, not expired), if any.
pub async fn live_of_customer(
    conn: &mut PgConnection,
    scope: Scope,
    customer: CustomerId,
) -> Result<Option<SubscriptionId>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM subscriptions WHERE tenant_id = $1 AND livemode = $2 \
         AND customer_id = $3 AND status NOT IN ('canceled', 'incomplete_expired') \
         ORDER BY id LIMIT 1",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(customer)
    .fetch_optional(conn)
    .await?)
}

/// An item to add.
#[derive(Debug, Clone, Copy)]
pub struct NewItem {
    pub id: SubscriptionItemId,
    pub price_id: PriceId,
    pub quantity: i64,
}

pub async fn insert_items(
    conn: &mut PgConnection,
    scope: Scope,
    subscription: SubscriptionId,
    items: &[NewItem],
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    let ids: Vec<Uuid> = items.iter().map(|i| i.id.as_uuid()).collect();
    let prices: Vec<Uuid> = items.iter().map(|i| i.price_id.as_uuid()).collect();
    let quantities: Vec<i64> = items.iter().map(|i| i.quantity).collect();
    sqlx::query(
        "INSERT INTO subscription_items (id, tenant_id, livemode, subscription_id, price_id, \
         quantity, created_at) \
         SELECT u.id, $1, $2, $3, u.price_id, u.quantity, $7 \
         FROM unnest($4::uuid[], $5::uuid[], $6::bigint[]) AS u(id, price_id, quantity)",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(subscription)
    .bind(&ids)
    .bind(&prices)
    .bind(&quantities)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The current items of some subscriptions, with their prices, in the order they were added.
pub async fn items<'c, E>(
    conn: E,
    scope: Scope,
    subscriptions: &[Uuid],
) -> Result<Vec<ItemRow>, DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let keys: Vec<(Scope, SubscriptionId)> = subscriptions
        .iter()
        .map(|s| (scope, SubscriptionId::from_uuid(*s)))
        .collect();
    items_many(conn, &keys).await
}

/// The current items of subscriptions of any tenants (each key its tenant, mode and id), with
/// their prices, in the order they were added.
pub async fn items_many<'c, E>(
    conn: E,
    keys: &[(Scope, SubscriptionId)],
) -> Result<Vec<ItemRow>, DbError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let (tenants, modes) = super::scope_columns(keys.iter().map(|k| &k.0));
    let ids: Vec<Uuid> = keys.iter().map(|k| k.1.as_uuid()).collect();
    Ok(sqlx::query_as::<_, ItemRow>(
        "SELECT i.id, i.subscription_id, i.price_id, i.quantity, i.created_at, p.model, \
         pr.name AS product_name, p.nickname, p.usage \
         FROM subscription_items i JOIN prices p ON p.id = i.price_id \
         JOIN products pr ON pr.id = p.product_id \
         WHERE i.subscription_id = ANY($3) \
         AND (i.tenant_id, i.livemode, i.subscription_id) IN \
         (SELECT * FROM unnest($1::uuid[], $2::bool[], $3::uuid[])) \
         AND i.deleted_at IS NULL ORDER BY i.subscription_id, i.id",
    )
    .bind(&tenants)
    .bind(&modes)
    .bind(&ids)
    .fetch_all(conn)
    .await?)
}

/// What a subscription needs to know of a price it is asked to bill.
#[derive(Debug, Clone, FromRow)]
pub struct PriceTerms {
    pub id: PriceId,
    pub currency: String,
    pub interval: Option<String>,
    pub interval_count: Option<i32>,
    pub model: serde_json::Value,
    pub metered: bool,
    pub active: bool,
    pub trial_days: i32,
}

const PRICE_TERMS: &str = "p.id, p.currency, p.interval, p.interval_count, p.model, \
    (p.usage IS NOT NULL) AS metered, (p.active AND pr.active) AS active, p.trial_days";

/// The prices of the mode among `ids` (another tenant's are not found).
pub async fn price_terms(
    conn: &mut PgConnection,
    scope: Scope,
    ids: &[Uuid],
) -> Result<Vec<PriceTerms>, DbError> {
    Ok(sqlx::query_as::<_, PriceTerms>(sqlf!(
        "SELECT {PRICE_TERMS} FROM prices p JOIN products pr ON pr.id = p.product_id \
         WHERE p.tenant_id = $1 AND p.livemode = $2 AND p.id = ANY($3)"
    ))
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// The plan price of each plan among `plans` (plan ids are their products' ids).
pub async fn plan_prices(
    conn: &mut PgConnection,
    scope: Scope,
    plans: &[Uuid],
) -> Result<Vec<(Uuid, PriceId)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT p.product_id, p.id FROM prices p JOIN products pr ON pr.id = p.product_id \
         WHERE p.tenant_id = $1 AND p.livemode = $2 AND p.product_id = ANY($3) AND p.plan \
         AND pr.plan",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(plans)
    .fetch_all(conn)
    .await?)
}

/// Changes the quantity of a current item.
pub async fn set_quantity(
    conn: &mut PgConnection,
    scope: Scope,
    item: SubscriptionItemId,
    quantity: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE subscription_items SET quantity = $4 WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3 AND deleted_at IS NULL",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(item)
    .bind(quantity)
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes an item from the subscription (its row stays for the lines that billed it).
pub async fn remove_item(
    conn: &mut PgConnection,
    scope: Scope,
    item: SubscriptionItemId,
    now: DateTime<Utc>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE subscription_items SET deleted_at = $4 WHERE tenant_id = $1 AND livemode = $2 \
         AND id = $3 AND deleted_at IS NULL",
    )
    .bind(scope.tenant_id())
    .bind(scope.livemode())
    .bind(item)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}
