//! Usage-based billing: billable metrics (`/api/v1/billable-metrics`), usage events
//! (`/api/v1/usage-events`) and the usage a subscription's invoices bill.
//!
//! - A metric's code, aggregation, property and filters never change once created (what was
//!   counted stays counted the same way); its names and whether it is active do.
//! - An event names a subscription, or a customer whose one live subscription metering the
//!   metric it counts for. Its `transaction_id` is unique per tenant and mode forever: a repeat
//!   is answered as a duplicate and never counted twice. What it counts for is read off its
//!   properties when it comes in.
//! - Metered items are billed in arrears: each invoice of a subscription's period bills the
//!   usage from where its invoiced usage ended up to the new period's start, and events before
//!   that instant are then refused, naming it (the subscription is share-locked while events
//!   are recorded, so an event is either on the invoice or refused, never neither). Usage
//!   during a trial is free. Timestamps more than 5 minutes past the subscription's time (its
//!   test clock's, or now) are refused.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sqlx::{PgConnection, PgPool};

use super::{ServiceError, ServiceResult, events};
use crate::{
    db::{
        self,
        invoices::LineRow,
        pagination::{Page, PageRequest},
        subscriptions::{ItemRow, SubscriptionRow},
        usage::{MeteredSubscription, MetricRow, NewEvent, Window},
    },
    domain::{
        period::Period,
        pricing::{PriceModel, Usage},
        usage::{Aggregation, Figures, Metric, weighted_quantity},
    },
    ids::{BillableMetricId, CustomerId, InvoiceId, InvoiceLineId, SubscriptionId, UsageEventId},
    tenancy::Scope,
    uow::UnitOfWork,
};

pub use crate::db::usage::MetricRow as BillableMetricRow;

const METRIC: &str = "billable metric";

/// How far ahead of its subscription's time an event may be.
pub const FUTURE_LEEWAY: Duration = Duration::minutes(5);

/// The most events one request records.
pub const MAX_BATCH: usize = 1000;

/// The longest transaction id.
pub const MAX_TRANSACTION_ID_LEN: usize = 255;

// ---- metrics ----

/// The metric as the API shows it (and as its events carry it).
pub fn metric_json(m: &MetricRow) -> serde_json::Value {
    serde_json::json!({
        "id": m.id.to_string(),
        "object": "billable_metric",
        "code": m.code,
        "name": m.name,
        "description": m.description,
        "aggregation": m.aggregation,
        "field_name": m.field_name,
        "filters": m.filters,
        "active": m.active,
        "livemode": m.livemode,
        "created_at": db::api_time(m.created_at),
        "updated_at": db::api_time(m.updated_at),
    })
}

/// How a stored metric counts events.
pub fn metric_of(m: &MetricRow) -> ServiceResult<Metric> {
    let aggregation = Aggregation::parse(&m.aggregation)
        .ok_or_else(|| ServiceError::internal("stored aggregation"))?;
    let filters: BTreeMap<String, Vec<String>> =
        serde_json::from_value(m.filters.clone()).map_err(ServiceError::internal)?;
    Metric::new(aggregation, m.field_name.as_deref(), filters).map_err(ServiceError::internal)
}

/// A metric to create.
#[derive(Debug)]
pub struct MetricSpec<'a> {
    /// Checked by `domain::usage::metric_code`.
    pub code: &'a str,
    pub name: &'a str,
    pub description: &'a str,
    pub metric: &'a Metric,
}

pub async fn create_metric(
    uow: &mut UnitOfWork,
    scope: Scope,
    spec: MetricSpec<'_>,
) -> ServiceResult<MetricRow> {
    // As stored: to the microsecond.
    let now = uow.now().trunc_subsecs(6);
    let row = MetricRow {
        id: BillableMetricId::new(),
        code: spec.code.to_owned(),
        name: spec.name.to_owned(),
        description: spec.description.to_owned(),
        aggregation: spec.metric.aggregation().as_str().to_owned(),
        field_name: spec.metric.field().map(str::to_owned),
        filters: serde_json::to_value(spec.metric.filters()).map_err(ServiceError::internal)?,
        active: true,
        livemode: scope.livemode(),
        created_at: now,
        updated_at: now,
    };
    db::usage::insert_metric(uow.conn(), scope, &row)
        .await
        .map_err(ServiceError::taken(
            "billable_metrics_tenant_id_livemode_code_key",
            "metric_code_taken",
            "code",
            "A billable metric with this code already exists.",
            METRIC,
        ))?;
    events::record(uow, scope, "billable_metric.created", metric_json(&row)).await?;
    Ok(row)
}

/// Changes to a metric; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct MetricUpdate<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    /// `false`: no new metered price may name it, and no event may be reported under it.
    pub active: Option<bool>,
}

pub async fn update_metric(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: BillableMetricId,
    changes: MetricUpdate<'_>,
) -> ServiceResult<MetricRow> {
    let mut row = db::usage::get_metric(uow.conn(), scope, id, true)
        .await
        .map_err(ServiceError::not_found(METRIC))?;
    if let Some(n) = changes.name {
        row.name = n.to_owned();
    }
    if let Some(d) = changes.description {
        row.description = d.to_owned();
    }
    if let Some(a) = changes.active {
        row.active = a;
    }
    row.updated_at = uow.now().trunc_subsecs(6);
    db::usage::save_metric(uow.conn(), scope, &row).await?;
    events::record(uow, scope, "billable_metric.updated", metric_json(&row)).await?;
    Ok(row)
}

pub async fn get_metric(
    pool: &PgPool,
    scope: Scope,
    id: BillableMetricId,
) -> ServiceResult<MetricRow> {
    db::usage::get_metric(pool, scope, id, false)
        .await
        .map_err(ServiceError::not_found(METRIC))
}

pub async fn list_metrics(
    pool: &PgPool,
    scope: Scope,
    active: Option<bool>,
    page: PageRequest,
) -> ServiceResult<Page<MetricRow>> {
    Ok(db::usage::list_metrics(pool, scope, active, page).await?)
}

/// The active metric a new metered price names, and the usage it stores (the metric's code
/// and aggregation); `aggregation`, when given, must be the metric's.
pub async fn metered_usage(
    uow: &mut UnitOfWork,
    scope: Scope,
    code: &str,
    aggregation: Option<Aggregation>,
) -> ServiceResult<Usage> {
    let found = db::usage::metrics_by_code(uow.conn(), scope, &[code.to_owned()]).await?;
    let m = found
        .first()
        .ok_or_else(|| ServiceError::invalid("usage.metric", "no billable metric has this code"))?;
    if !m.active {
        return Err(ServiceError::invalid(
            "usage.metric",
            "the billable metric is archived",
        ));
    }
    let metric = metric_of(m)?;
    if aggregation.is_some_and(|a| a != metric.aggregation()) {
        return Err(ServiceError::invalid(
            "usage.aggregation",
            format!(
                "must be the metric's own ({}), or absent",
                metric.aggregation().as_str()
            ),
        ));
    }
    Usage::parse(code, metric.aggregation()).map_err(|e| ServiceError::invalid("usage.metric", e.0))
}

// ---- events ----

/// A usage event as reported.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub transaction_id: String,
    pub customer: Option<CustomerId>,
    pub subscription: Option<SubscriptionId>,
    /// The metric's code.
    pub code: String,
    /// Defaults to the subscription's time.
    pub timestamp: Option<DateTime<Utc>>,
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// What became of a reported event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventOutcome {
    pub transaction_id: String,
    /// `false`: its transaction id was recorded before (or earlier in the same request), so
    /// it counts once, as first reported.
    pub recorded: bool,
    /// The subscription it counts for (for a new event).
    pub subscription: Option<SubscriptionId>,
    pub timestamp: Option<DateTime<Utc>>,
}

/// Where a problem with the `i`-th event points.
fn field(batch: bool, i: usize, name: &str) -> String {
    if batch {
        format!("events[{i}].{name}")
    } else {
        name.to_owned()
    }
}

fn check_transaction_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.chars().count() <= MAX_TRANSACTION_ID_LEN
        && !raw.chars().any(char::is_control)
}

/// Records usage events, all or none: any event that cannot be recorded refuses the request
/// (naming it, as `events[i]` when `batch`), and duplicates are answered as such.
pub async fn record_events(
    uow: &mut UnitOfWork,
    scope: Scope,
    specs: &[EventSpec],
    batch: bool,
) -> ServiceResult<Vec<EventOutcome>> {
    if specs.len() > MAX_BATCH {
        return Err(ServiceError::invalid(
            "events",
            format!("at most {MAX_BATCH} events per request"),
        ));
    }
    for (i, e) in specs.iter().enumerate() {
        if !check_transaction_id(&e.transaction_id) {
            return Err(ServiceError::invalid(
                field(batch, i, "transaction_id"),
                format!("must be 1 to {MAX_TRANSACTION_ID_LEN} characters, none a control"),
            ));
        }
        if e.customer.is_none() && e.subscription.is_none() {
            return Err(ServiceError::invalid(
                field(batch, i, "subscription"),
                "name the subscription, or the customer, the usage is for",
            ));
        }
    }
    let ids: Vec<String> = specs.iter().map(|e| e.transaction_id.clone()).collect();
    let mut seen: HashSet<&str> = db::usage::recorded(uow.conn(), scope, &ids)
        .await?
        .iter()
        .filter_map(|t| specs.iter().find(|e| &e.transaction_id == t))
        .map(|e| e.transaction_id.as_str())
        .collect();
    // The first report of each transaction id not recorded yet.
    let fresh: Vec<(usize, &EventSpec)> = specs
        .iter()
        .enumerate()
        .filter(|(_, e)| seen.insert(e.transaction_id.as_str()))
        .collect();

    let mut codes: Vec<String> = fresh.iter().map(|(_, e)| e.code.clone()).collect();
    codes.sort();
    codes.dedup();
    let mut metrics: HashMap<String, (MetricRow, Metric)> = HashMap::new();
    for m in db::usage::metrics_by_code(uow.conn(), scope, &codes).await? {
        let metric = metric_of(&m)?;
        metrics.insert(m.code.clone(), (m, metric));
    }
    let mut sub_ids: Vec<uuid::Uuid> = fresh
        .iter()
        .filter_map(|(_, e)| e.subscription.map(|s| s.as_uuid()))
        .collect();
    sub_ids.sort();
    sub_ids.dedup();
    let mut customer_ids: Vec<uuid::Uuid> = fresh
        .iter()
        .filter(|(_, e)| e.subscription.is_none())
        .filter_map(|(_, e)| e.customer.map(|c| c.as_uuid()))
        .collect();
    customer_ids.sort();
    customer_ids.dedup();
    let subs = if fresh.is_empty() {
        Vec::new()
    } else {
        db::usage::lock_metered(uow.conn(), scope, &sub_ids, &customer_ids).await?
    };
    let by_id: HashMap<SubscriptionId, &MeteredSubscription> =
        subs.iter().map(|s| (s.id, s)).collect();

    let now = uow.now();
    let mut rows = Vec::with_capacity(fresh.len());
    let mut outcomes: HashMap<usize, EventOutcome> = HashMap::new();
    for &(i, e) in &fresh {
        let (metric_row, metric) = metrics.get(&e.code).ok_or_else(|| {
            ServiceError::invalid(field(batch, i, "code"), "no billable metric has this code")
        })?;
        if !metric_row.active {
            return Err(ServiceError::invalid(
                field(batch, i, "code"),
                "the billable metric is archived",
            ));
        }
        let sub = resolve(e, &by_id, &subs, batch, i)?;
        let at_now = sub.clock_time.unwrap_or(now);
        let at = e.timestamp.unwrap_or(at_now);
        if at > at_now + FUTURE_LEEWAY {
            return Err(ServiceError::invalid(
                field(batch, i, "timestamp"),
                format!(
                    "is more than 5 minutes after the subscription's time ({})",
                    db::api_time(at_now)
                ),
            ));
        }
        if let Some(until) = sub.usage_billed_until.filter(|u| at < *u) {
            return Err(ServiceError::Invalid {
                field: field(batch, i, "timestamp"),
                code: "usage_period_closed",
                message: format!(
                    "falls in a period of subscription {} that is already invoiced: its usage \
                     up to {} is billed, and usage for it can no longer be recorded",
                    sub.id,
                    db::api_time(until)
                ),
            });
        }
        if at < sub.created_at {
            return Err(ServiceError::invalid(
                field(batch, i, "timestamp"),
                format!(
                    "is before subscription {} started ({})",
                    sub.id,
                    db::api_time(sub.created_at)
                ),
            ));
        }
        if let Some(ended) = sub.ended_at.filter(|end| at >= *end) {
            return Err(ServiceError::invalid(
                field(batch, i, "timestamp"),
                format!(
                    "is after subscription {} ended ({})",
                    sub.id,
                    db::api_time(ended)
                ),
            ));
        }
        let reading = metric
            .read(&e.properties)
            .map_err(|m| ServiceError::invalid(field(batch, i, "properties"), m))?;
        rows.push(NewEvent {
            transaction_id: e.transaction_id.clone(),
            id: UsageEventId::new().as_uuid(),
            subscription_id: sub.id,
            customer_id: sub.customer_id,
            metric_id: metric_row.id,
            occurred_at: at,
            properties: serde_json::Value::Object(e.properties.clone()),
            matched: reading.matched,
            value: reading.value,
            unique_key: reading.unique_key,
        });
        outcomes.insert(
            i,
            EventOutcome {
                transaction_id: e.transaction_id.clone(),
                recorded: true,
                subscription: Some(sub.id),
                timestamp: Some(at),
            },
        );
    }
    // Another request may record one of these first: then it is a duplicate here.
    let written: HashSet<String> = if rows.is_empty() {
        HashSet::new()
    } else {
        db::usage::insert_events(uow.conn(), scope, &rows, now)
            .await?
            .into_iter()
            .collect()
    };
    Ok(specs
        .iter()
        .enumerate()
        .map(|(i, e)| match outcomes.remove(&i) {
            Some(o) if written.contains(&o.transaction_id) => o,
            _ => EventOutcome {
                transaction_id: e.transaction_id.clone(),
                recorded: false,
                subscription: None,
                timestamp: None,
            },
        })
        .collect())
}

/// The subscription an event counts for: the one it names (which must meter its metric and
/// belong to the customer it names, if any), or its customer's one live subscription that
/// meters it.
fn resolve<'a>(
    e: &EventSpec,
    by_id: &HashMap<SubscriptionId, &'a MeteredSubscription>,
    subs: &'a [MeteredSubscription],
    batch: bool,
    i: usize,
) -> ServiceResult<&'a MeteredSubscription> {
    let meters = |s: &MeteredSubscription| s.metrics.iter().any(|m| m == &e.code);
    if let Some(id) = e.subscription {
        let sub = by_id.get(&id).ok_or_else(|| {
            ServiceError::invalid(field(batch, i, "subscription"), "no such subscription")
        })?;
        if e.customer.is_some_and(|c| c != sub.customer_id) {
            return Err(ServiceError::invalid(
                field(batch, i, "customer"),
                "is not the subscription's customer",
            ));
        }
        if !meters(sub) {
            return Err(ServiceError::invalid(
                field(batch, i, "code"),
                format!("subscription {id} has no metered price on this metric"),
            ));
        }
        return Ok(sub);
    }
    let customer = e
        .customer
        .ok_or_else(|| ServiceError::internal("checked above"))?;
    let mut live = subs
        .iter()
        .filter(|s| s.customer_id == customer && s.ended_at.is_none() && meters(s));
    match (live.next(), live.next()) {
        (Some(sub), None) => Ok(sub),
        (None, _) => Err(ServiceError::invalid(
            field(batch, i, "customer"),
            format!(
                "no live subscription of customer {customer} meters {}",
                e.code
            ),
        )),
        (Some(_), Some(_)) => Err(ServiceError::invalid(
            field(batch, i, "subscription"),
            format!(
                "customer {customer} has several live subscriptions metering {}: name one",
                e.code
            ),
        )),
    }
}

// ---- what invoices bill ----

/// The usage of a subscription to bill, up to `until`, on `invoice` from line `position`.
#[derive(Debug)]
pub(crate) struct Billable<'a> {
    pub scope: Scope,
    pub sub: &'a SubscriptionRow,
    pub items: &'a [ItemRow],
    pub until: DateTime<Utc>,
    pub invoice: InvoiceId,
    pub position: usize,
}

/// A metered item's usage over a window, priced.
#[derive(Debug, Clone)]
pub struct ItemUsage {
    pub item: ItemRow,
    pub metric: String,
    pub aggregation: Aggregation,
    pub window: Period,
    pub quantity: u64,
    pub amount: i64,
    pub unit_amount: Option<i64>,
}

/// The usage of each subscription's metered items since its invoiced usage ended (not before
/// its trial's end) up to its `until`, in one statement for all (two with weighted sums).
async fn measure(
    conn: &mut PgConnection,
    subs: &[(Scope, &SubscriptionRow, &[ItemRow], DateTime<Utc>)],
) -> ServiceResult<Vec<Vec<ItemUsage>>> {
    let metered: Vec<usize> = (0..subs.len())
        .filter(|&i| subs[i].2.iter().any(|it| it.usage.is_some()))
        .collect();
    let mut out: Vec<Vec<ItemUsage>> = vec![Vec::new(); subs.len()];
    if metered.is_empty() {
        return Ok(out);
    }
    let keys: Vec<(Scope, SubscriptionId)> =
        metered.iter().map(|&i| (subs[i].0, subs[i].1.id)).collect();
    let starts: HashMap<SubscriptionId, DateTime<Utc>> = db::usage::billed_until(conn, &keys)
        .await?
        .into_iter()
        .collect();
    let mut windows: Vec<Window> = Vec::new();
    let mut owners: Vec<(usize, &ItemRow, Usage)> = Vec::new();
    for &i in &metered {
        let (scope, sub, items, until) = subs[i];
        let mut since = starts.get(&sub.id).copied().unwrap_or(sub.created_at);
        if let Some(trial_end) = sub.trial_end {
            since = since.max(trial_end);
        }
        if since >= until {
            continue;
        }
        for item in items {
            let Some(raw) = &item.usage else { continue };
            let usage: Usage =
                serde_json::from_value(raw.clone()).map_err(ServiceError::internal)?;
            windows.push(Window {
                scope,
                subscription: sub.id,
                metric: usage.metric().to_owned(),
                since,
                until,
            });
            owners.push((i, item, usage));
        }
    }
    if windows.is_empty() {
        return Ok(out);
    }
    let aggregates = db::usage::aggregate(conn, &windows).await?;
    let weighted: Vec<(i64, &Window)> = aggregates
        .iter()
        .filter(|a| a.aggregation.as_deref() == Some("weighted_sum"))
        .filter_map(|a| {
            windows
                .get(usize::try_from(a.at - 1).ok()?)
                .map(|w| (a.at, w))
        })
        .collect();
    let mut changes: HashMap<i64, Vec<(DateTime<Utc>, i64)>> = HashMap::new();
    if !weighted.is_empty() {
        for (at, when, value) in db::usage::changes(conn, &weighted).await? {
            changes.entry(at).or_default().push((when, value));
        }
    }
    for a in aggregates {
        let k = usize::try_from(a.at - 1).map_err(ServiceError::internal)?;
        let (w, (i, item, usage)) = (&windows[k], &owners[k]);
        // The price stored the metric's aggregation; the metric's own is the same.
        let aggregation = a
            .aggregation
            .as_deref()
            .and_then(Aggregation::parse)
            .unwrap_or(usage.aggregation());
        let window = Period {
            start: w.since,
            end: w.until,
        };
        let whole = |v: i64| u64::try_from(v).unwrap_or(0);
        let figures = Figures {
            count: whole(a.events),
            sum: whole(a.sum),
            max: whole(a.max),
            unique_count: whole(a.unique),
            latest: whole(a.latest),
            weighted_sum: if aggregation == Aggregation::WeightedSum {
                weighted_quantity(
                    i128::from(a.level_before),
                    window,
                    changes.get(&a.at).map_or(&[][..], Vec::as_slice),
                )
                .ok_or_else(|| usage_too_large(item))?
            } else {
                0
            },
        };
        let quantity = figures.quantity(aggregation);
        let model: PriceModel =
            serde_json::from_value(item.model.clone()).map_err(ServiceError::internal)?;
        let amount = model
            .amount_for(quantity)
            .map_err(|_| usage_too_large(item))?;
        out[*i].push(ItemUsage {
            item: (*item).clone(),
            metric: usage.metric().to_owned(),
            aggregation,
            window,
            quantity,
            amount,
            unit_amount: model.unit_amount_hint(),
        });
    }
    Ok(out)
}

fn usage_too_large(item: &ItemRow) -> ServiceError {
    ServiceError::internal(format!(
        "the usage of {} makes an amount too large to bill",
        item.description()
    ))
}

/// The lines billing each subscription's usage up to its `until` (one per metered item, at
/// the price of the window's quantity), and records that its usage is invoiced up to there.
pub(crate) async fn bill(
    uow: &mut UnitOfWork,
    subs: &[Billable<'_>],
) -> ServiceResult<Vec<Vec<LineRow>>> {
    let inputs: Vec<(Scope, &SubscriptionRow, &[ItemRow], DateTime<Utc>)> = subs
        .iter()
        .map(|b| (b.scope, b.sub, b.items, b.until))
        .collect();
    let measured = measure(uow.conn(), &inputs).await?;
    let mut billed = Vec::new();
    let mut lines = Vec::with_capacity(subs.len());
    for (b, usages) in subs.iter().zip(measured) {
        // Only a window that was measured closes (none before the first period's start, or
        // while a trial lasts).
        if !usages.is_empty() {
            billed.push((b.scope, b.sub.id, b.until));
        }
        lines.push(lines_of(b.invoice, b.position, &usages)?);
    }
    db::usage::set_billed_until(uow.conn(), &billed).await?;
    Ok(lines)
}

/// The lines of measured usage on `invoice`, from line `position`.
pub(crate) fn lines_of(
    invoice: InvoiceId,
    position: usize,
    usages: &[ItemUsage],
) -> ServiceResult<Vec<LineRow>> {
    usages
        .iter()
        .enumerate()
        .map(|(k, u)| {
            Ok(LineRow {
                id: InvoiceLineId::new(),
                invoice_id: invoice,
                position: i32::try_from(position + k).map_err(ServiceError::internal)?,
                description: format!(
                    "{} × {} ({} usage)",
                    u.quantity,
                    u.item.description(),
                    u.metric
                ),
                price_id: Some(u.item.price_id),
                subscription_item_id: Some(u.item.id),
                quantity: i64::try_from(u.quantity).map_err(ServiceError::internal)?,
                unit_amount: u.unit_amount,
                amount: u.amount,
                discount_amount: 0,
                proration: false,
                period_start: u.window.start,
                period_end: u.window.end,
            })
        })
        .collect()
}

/// What a subscription's usage not yet invoiced comes to: from where its invoiced usage ends
/// to the end of its current period.
#[derive(Debug, Clone)]
pub struct UsageSummary {
    pub subscription: SubscriptionRow,
    pub items: Vec<ItemUsage>,
}

impl UsageSummary {
    pub fn total(&self) -> i64 {
        self.items.iter().map(|u| u.amount).sum()
    }
}

pub async fn summary(
    pool: &PgPool,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<UsageSummary> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let sub = db::subscriptions::get(&mut conn, scope, id)
        .await
        .map_err(ServiceError::not_found("subscription"))?;
    let items = db::subscriptions::items(&mut *conn, scope, &[id.as_uuid()]).await?;
    let until = sub.ended_at.unwrap_or(sub.current_period_end);
    let items = measure(&mut conn, &[(scope, &sub, &items, until)])
        .await?
        .pop()
        .unwrap_or_default();
    Ok(UsageSummary {
        subscription: sub,
        items,
    })
}

/// The usage lines an invoice made now would bill (nothing is written).
pub(crate) async fn preview(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    items: &[ItemRow],
    until: DateTime<Utc>,
    invoice: InvoiceId,
    position: usize,
) -> ServiceResult<Vec<LineRow>> {
    let measured = measure(uow.conn(), &[(scope, sub, items, until)]).await?;
    lines_of(
        invoice,
        position,
        measured.first().map_or(&[][..], Vec::as_slice),
    )
}
