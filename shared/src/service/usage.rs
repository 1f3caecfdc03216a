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
//!   are recorded, so an event is either on the invoice or refused, never neither). A renewal
//!   kept a draft for the tenant's grace period moves that instant only when it is finalized,
//!   measuring its usage again then: events for its period count on it meanwhile. Usage
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
        subscription::SubscriptionStatus,
        usage::{Aggregation, Figures, Metric, weighted_area, weighted_shares},
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

/// The most properties an event holds.
pub const MAX_PROPERTIES: usize = 50;

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
pub fn field(batch: bool, i: usize, name: &str) -> String {
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

/// What recording usage events did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Each event's outcome, in the order reported.
    pub events: Vec<EventOutcome>,
    /// The subscriptions whose new usage counts against a limit of theirs not reached yet in
    /// their period: to check once the work commits ([`super::usage_limits::check`]; a job
    /// queued with the events checks them a little later should that not happen).
    pub check_limits: Vec<SubscriptionId>,
}

/// Records usage events, all or none: any event that cannot be recorded refuses the request
/// (naming it, as `events[i]` when `batch`), and duplicates are answered as such.
pub async fn record_events(
    uow: &mut UnitOfWork,
    scope: Scope,
    specs: &[EventSpec],
    batch: bool,
) -> ServiceResult<Recorded> {
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
    // The first report of each transaction id in the request; later ones are duplicates.
    let mut seen: HashSet<&str> = HashSet::new();
    let firsts: Vec<usize> = (0..specs.len())
        .filter(|&i| seen.insert(specs[i].transaction_id.as_str()))
        .collect();
    let context = read_context(uow, scope, specs, &firsts).await?;
    let now = uow.now();
    let (rows, mut outcomes) = match check(&context, specs, &firsts, batch, now) {
        Ok(checked) => checked,
        Err(refused) => {
            // An event refused may repeat one recorded before (whose period has closed since,
            // say): that is a duplicate, not an error. Only then is the request's ids looked
            // up, so that new events cost no lookup.
            let ids: Vec<String> = firsts
                .iter()
                .map(|&i| specs[i].transaction_id.clone())
                .collect();
            let recorded: HashSet<String> = db::usage::recorded(uow.conn(), scope, &ids)
                .await?
                .into_iter()
                .collect();
            if recorded.is_empty() {
                return Err(refused);
            }
            let fresh: Vec<usize> = firsts
                .into_iter()
                .filter(|&i| !recorded.contains(&specs[i].transaction_id))
                .collect();
            check(&context, specs, &fresh, batch, now)?
        }
    };
    // In transaction id order, so that two requests never wait for each other in a cycle.
    let mut rows = rows;
    rows.sort_unstable_by(|a, b| a.transaction_id.cmp(b.transaction_id));
    // Recorded before, or by another request meanwhile: then it is a duplicate here.
    let written: HashSet<String> = if rows.is_empty() {
        HashSet::new()
    } else {
        db::usage::insert_events(uow.conn(), scope, &rows, now)
            .await?
            .into_iter()
            .collect()
    };
    let check_limits = limited(&context, &rows, &written);
    super::usage_limits::queue_check(uow, scope, &check_limits).await?;
    let events = specs
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
        .collect();
    Ok(Recorded {
        events,
        check_limits,
    })
}

/// The subscriptions among `rows` written whose events count against a limit not reached yet.
fn limited(
    context: &Context,
    rows: &[NewEvent<'_>],
    written: &HashSet<String>,
) -> Vec<SubscriptionId> {
    let mut limited: HashSet<(SubscriptionId, BillableMetricId)> = HashSet::new();
    for sub in &context.subs {
        for code in &sub.limited {
            if let Some((metric, _)) = context.metrics.get(code) {
                limited.insert((sub.id, metric.id));
            }
        }
    }
    if limited.is_empty() {
        return Vec::new();
    }
    let mut subs: Vec<SubscriptionId> = rows
        .iter()
        .filter(|r| limited.contains(&(r.subscription_id, r.metric_id)))
        .filter(|r| written.contains(r.transaction_id))
        .map(|r| r.subscription_id)
        .collect();
    subs.sort_unstable_by_key(|s| s.as_uuid());
    subs.dedup();
    subs
}

/// What checking events reads: their metrics by code, and the subscriptions they name (or
/// their customers'), share-locked.
struct Context {
    metrics: HashMap<String, (MetricRow, Metric)>,
    subs: Vec<MeteredSubscription>,
}

async fn read_context(
    uow: &mut UnitOfWork,
    scope: Scope,
    specs: &[EventSpec],
    which: &[usize],
) -> ServiceResult<Context> {
    let mut codes: Vec<String> = which.iter().map(|&i| specs[i].code.clone()).collect();
    codes.sort();
    codes.dedup();
    let mut metrics: HashMap<String, (MetricRow, Metric)> = HashMap::new();
    for m in db::usage::metrics_by_code(uow.conn(), scope, &codes).await? {
        let metric = metric_of(&m)?;
        metrics.insert(m.code.clone(), (m, metric));
    }
    let mut sub_ids: Vec<uuid::Uuid> = which
        .iter()
        .filter_map(|&i| specs[i].subscription.map(|s| s.as_uuid()))
        .collect();
    sub_ids.sort();
    sub_ids.dedup();
    let mut customer_ids: Vec<uuid::Uuid> = which
        .iter()
        .filter(|&&i| specs[i].subscription.is_none())
        .filter_map(|&i| specs[i].customer.map(|c| c.as_uuid()))
        .collect();
    customer_ids.sort();
    customer_ids.dedup();
    let subs = if which.is_empty() {
        Vec::new()
    } else {
        db::usage::lock_metered(uow.conn(), scope, &sub_ids, &customer_ids).await?
    };
    Ok(Context { metrics, subs })
}

/// Checks the events at `which` against what was read, and reads each: the rows to record,
/// and their outcomes by position. The first event that cannot be recorded is the answer.
fn check<'a>(
    context: &Context,
    specs: &'a [EventSpec],
    which: &[usize],
    batch: bool,
    now: DateTime<Utc>,
) -> ServiceResult<(Vec<NewEvent<'a>>, HashMap<usize, EventOutcome>)> {
    let by_id: HashMap<SubscriptionId, &MeteredSubscription> =
        context.subs.iter().map(|s| (s.id, s)).collect();
    let mut rows = Vec::with_capacity(which.len());
    let mut outcomes: HashMap<usize, EventOutcome> = HashMap::with_capacity(which.len());
    for &i in which {
        let e = &specs[i];
        let (metric_row, metric) = context.metrics.get(&e.code).ok_or_else(|| {
            ServiceError::invalid(field(batch, i, "code"), "no billable metric has this code")
        })?;
        if !metric_row.active {
            return Err(ServiceError::invalid(
                field(batch, i, "code"),
                "the billable metric is archived",
            ));
        }
        if e.properties.len() > MAX_PROPERTIES {
            return Err(ServiceError::invalid(
                field(batch, i, "properties"),
                format!("must hold at most {MAX_PROPERTIES} properties"),
            ));
        }
        if has_nul(&e.properties) {
            return Err(ServiceError::invalid(
                field(batch, i, "properties"),
                "must not contain the NUL character",
            ));
        }
        let sub = resolve(e, &by_id, &context.subs, batch, i, now)?;
        let at_now = sub.clock_time.unwrap_or(now);
        let at = time_of(e, sub, now);
        when_allowed(sub, &e.code, at, at_now)
            .map_err(|refused| refused.at(field(batch, i, "timestamp")))?;
        // A time a little ahead counts as now: whatever cuts the usage later (a cancel, an
        // item removed) covers it.
        let at = at.min(at_now);
        let reading = metric
            .read(&e.properties)
            .map_err(|m| ServiceError::invalid(field(batch, i, "properties"), m))?;
        rows.push(NewEvent {
            transaction_id: &e.transaction_id,
            id: UsageEventId::new().as_uuid(),
            subscription_id: sub.id,
            customer_id: sub.customer_id,
            metric_id: metric_row.id,
            occurred_at: at,
            properties: &e.properties,
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
    Ok((rows, outcomes))
}

/// When an event happened: its timestamp, or its subscription's time; to the microsecond, as
/// stored.
fn time_of(e: &EventSpec, sub: &MeteredSubscription, now: DateTime<Utc>) -> DateTime<Utc> {
    e.timestamp
        .unwrap_or(sub.clock_time.unwrap_or(now))
        .trunc_subsecs(6)
}

/// Whether a JSON object holds the NUL character, which PostgreSQL cannot store, in a key or
/// a string at any depth.
fn has_nul(properties: &serde_json::Map<String, serde_json::Value>) -> bool {
    fn value(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(a) => a.iter().any(value),
            serde_json::Value::Object(o) => has_nul(o),
            _ => false,
        }
    }
    properties.iter().any(|(k, v)| k.contains('\0') || value(v))
}

/// Whether an item of `sub` metering `code` was on it at `at` (and bills it).
fn covered(sub: &MeteredSubscription, code: &str, at: DateTime<Utc>) -> bool {
    (0..sub.item_metrics.len()).any(|k| {
        sub.item_metrics[k] == code
            && sub.item_added.get(k).is_some_and(|added| *added <= at)
            && sub
                .item_removed
                .get(k)
                .is_some_and(|removed| removed.is_none_or(|r| at < r))
    })
}

/// Why an event's time is refused: a stable code and the reason.
struct Refused {
    code: &'static str,
    message: String,
}

impl Refused {
    fn new(message: String) -> Self {
        Self {
            code: "validation_failed",
            message,
        }
    }

    fn at(self, field: String) -> ServiceError {
        ServiceError::Invalid {
            field,
            code: self.code,
            message: self.message,
        }
    }
}

/// Whether usage of `code` at `at` may be recorded for `sub`, whose time is `now`: not more
/// than [`FUTURE_LEEWAY`] ahead, not before it started, not in its invoiced usage, not once it
/// ends, and while an item of it metered `code`.
fn when_allowed(
    sub: &MeteredSubscription,
    code: &str,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), Refused> {
    if at > now + FUTURE_LEEWAY {
        return Err(Refused::new(format!(
            "is more than 5 minutes after the subscription's time ({})",
            db::api_time(now)
        )));
    }
    if sub.status == SubscriptionStatus::Incomplete {
        return Err(Refused::new(format!(
            "is for subscription {}, which is incomplete (its first invoice is unpaid)",
            sub.id
        )));
    }
    if at < sub.created_at {
        return Err(Refused::new(format!(
            "is before subscription {} started ({})",
            sub.id,
            db::api_time(sub.created_at)
        )));
    }
    if let Some(until) = sub.usage_billed_until.filter(|u| at < *u) {
        return Err(Refused {
            code: "usage_period_closed",
            message: format!(
                "falls in a period of subscription {} that is already invoiced: its usage up \
                 to {} is billed, and usage for it can no longer be recorded",
                sub.id,
                db::api_time(until)
            ),
        });
    }
    let ends = sub
        .ended_at
        .or(sub.cancel_at_period_end.then_some(sub.current_period_end));
    if let Some(end) = ends.filter(|end| at >= *end) {
        return Err(Refused::new(format!(
            "is not before subscription {} ends ({})",
            sub.id,
            db::api_time(end)
        )));
    }
    if !covered(sub, code, at) {
        return Err(Refused::new(format!(
            "is a time when no item of subscription {} metered {code}",
            sub.id
        )));
    }
    Ok(())
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
    now: DateTime<Utc>,
) -> ServiceResult<&'a MeteredSubscription> {
    let meters = |s: &MeteredSubscription| s.item_metrics.iter().any(|m| m == &e.code);
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
    // Its live subscription with an item metering the metric at the event's time.
    let mut live = subs.iter().filter(|s| {
        s.customer_id == customer
            && s.ended_at.is_none()
            && meters(s)
            && covered(s, &e.code, time_of(e, s, now))
    });
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

/// Where a subscription's usage not yet invoiced starts: where its invoiced usage ends (or
/// its start), and not before its trial's end (usage during a trial is free).
fn window_start(sub: &SubscriptionRow) -> DateTime<Utc> {
    // Usage held by a renewal draft is billed by it.
    let since = sub
        .usage_billed_until
        .max(sub.usage_draft_until)
        .unwrap_or(sub.created_at);
    sub.trial_end.map_or(since, |end| since.max(end))
}

/// The usage of each subscription's metered items from [`window_start`] up to its `until`,
/// each item over the part of that window it was on the subscription (an item removed, or
/// added, in the middle bills its own part): in a few statements for all.
pub(crate) async fn measure(
    conn: &mut PgConnection,
    subs: &[(Scope, &SubscriptionRow, DateTime<Utc>)],
) -> ServiceResult<Vec<Vec<ItemUsage>>> {
    let mut out: Vec<Vec<ItemUsage>> = vec![Vec::new(); subs.len()];
    let open: Vec<usize> = (0..subs.len())
        .filter(|&i| window_start(subs[i].1) < subs[i].2)
        .collect();
    if open.is_empty() {
        return Ok(out);
    }
    let keys: Vec<(Scope, SubscriptionId, DateTime<Utc>)> = open
        .iter()
        .map(|&i| (subs[i].0, subs[i].1.id, window_start(subs[i].1)))
        .collect();
    let at: HashMap<SubscriptionId, usize> = open.iter().map(|&i| (subs[i].1.id, i)).collect();
    let mut windows: Vec<Window> = Vec::new();
    let mut owners: Vec<(usize, ItemRow, Usage)> = Vec::new();
    for m in db::usage::metered_items(conn, &keys).await? {
        let Some(&i) = at.get(&m.item.subscription_id) else {
            continue;
        };
        let (scope, sub, until) = subs[i];
        let since = window_start(sub).max(m.item.created_at);
        let until = m.deleted_at.map_or(until, |d| d.min(until));
        if since >= until {
            continue;
        }
        let raw = m.item.usage.clone().unwrap_or_default();
        let usage: Usage = serde_json::from_value(raw).map_err(ServiceError::internal)?;
        windows.push(Window {
            scope,
            subscription: sub.id,
            metric: usage.metric().to_owned(),
            since,
            until,
        });
        owners.push((i, m.item, usage));
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
    // The price stored the metric's aggregation; the metric's own is the same.
    let aggregation_of = |a: &db::usage::Aggregates, usage: &Usage| {
        a.aggregation
            .as_deref()
            .and_then(Aggregation::parse)
            .unwrap_or(usage.aggregation())
    };
    // A level's parts (one per item that metered it, in time order) share the average over
    // all that is measured of the subscription.
    let mut levels: HashMap<(usize, &str), Vec<LevelPart>> = HashMap::new();
    for a in &aggregates {
        let k = usize::try_from(a.at - 1).map_err(ServiceError::internal)?;
        let (w, (i, item, usage)) = (&windows[k], &owners[k]);
        if aggregation_of(a, usage) != Aggregation::WeightedSum {
            continue;
        }
        let window = Period {
            start: w.since,
            end: w.until,
        };
        let moves = changes.get(&a.at).map_or(&[][..], Vec::as_slice);
        let area = weighted_area(i128::from(a.level_before), window, moves)
            .ok_or_else(|| usage_too_large(item))?;
        levels
            .entry((*i, usage.metric()))
            .or_default()
            .push((w.since, a.at, area));
    }
    let mut weighted_sums: HashMap<i64, u64> = HashMap::new();
    for ((i, _), mut parts) in levels {
        parts.sort_by_key(|p| p.0);
        let over = Period {
            start: window_start(subs[i].1),
            end: subs[i].2,
        };
        let areas: Vec<i128> = parts.iter().map(|p| p.2).collect();
        let shares = weighted_shares(&areas, over).ok_or_else(|| {
            ServiceError::conflict(
                "usage_too_large",
                format!(
                    "The usage of {} makes an amount too large to bill.",
                    subs[i].1.id
                ),
            )
        })?;
        for (part, share) in parts.iter().zip(shares) {
            weighted_sums.insert(part.1, share);
        }
    }
    for a in aggregates {
        let k = usize::try_from(a.at - 1).map_err(ServiceError::internal)?;
        let (w, (i, item, usage)) = (&windows[k], &owners[k]);
        let aggregation = aggregation_of(&a, usage);
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
            weighted_sum: weighted_sums.get(&a.at).copied().unwrap_or(0),
        };
        let quantity = figures.quantity(aggregation);
        let model: PriceModel =
            serde_json::from_value(item.model.clone()).map_err(ServiceError::internal)?;
        let amount = model
            .amount_for(quantity)
            .map_err(|_| usage_too_large(item))?;
        out[*i].push(ItemUsage {
            item: item.clone(),
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

/// A part of a level: when its window opens, the window's position in the request, and its
/// area ([`weighted_area`]).
type LevelPart = (DateTime<Utc>, i64, i128);

/// Usage whose amount cannot be represented: a conflict to settle (by crediting, or voiding
/// events' effect by hand), never an internal error.
fn usage_too_large(item: &ItemRow) -> ServiceError {
    ServiceError::conflict(
        "usage_too_large",
        format!(
            "The usage of {} (item {}) makes an amount too large to bill.",
            item.description(),
            item.id
        ),
    )
}

/// The lines billing each subscription's usage up to its `until` (one per metered item and
/// window, at the price of the window's quantity). The caller records that the
/// subscription's usage is invoiced up to `until` (`usage_billed_until`) and saves it.
pub(crate) async fn bill(
    uow: &mut UnitOfWork,
    subs: &[Billable<'_>],
) -> ServiceResult<Vec<Vec<LineRow>>> {
    let inputs: Vec<(Scope, &SubscriptionRow, DateTime<Utc>)> =
        subs.iter().map(|b| (b.scope, b.sub, b.until)).collect();
    let measured = measure(uow.conn(), &inputs).await?;
    subs.iter()
        .zip(measured)
        .map(|(b, usages)| lines_of(b.invoice, b.position, &usages))
        .collect()
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

/// Refuses a second current item metering a metric another current item meters: each event
/// counts once, on one item.
pub(crate) fn one_item_per_metric(items: &[ItemRow]) -> ServiceResult<()> {
    let mut seen = HashSet::new();
    for item in items {
        let Some(raw) = &item.usage else { continue };
        let usage: Usage = serde_json::from_value(raw.clone()).map_err(ServiceError::internal)?;
        if !seen.insert(usage.metric().to_owned()) {
            return Err(ServiceError::invalid(
                "items",
                format!(
                    "two items would meter {}: a subscription has one item per metric",
                    usage.metric()
                ),
            ));
        }
    }
    Ok(())
}

/// What a subscription's usage not yet invoiced comes to: from where its invoiced usage ends
/// to the end of its current period (or its end).
#[derive(Debug, Clone)]
pub struct UsageSummary {
    pub subscription: SubscriptionRow,
    pub items: Vec<ItemUsage>,
    /// What the items come to together.
    pub amount: i64,
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
    let until = sub.ended_at.unwrap_or(sub.current_period_end);
    let items = measure(&mut conn, &[(scope, &sub, until)])
        .await?
        .pop()
        .unwrap_or_default();
    let amount = items
        .iter()
        .try_fold(0i64, |total, u| total.checked_add(u.amount))
        .ok_or_else(|| {
            ServiceError::conflict(
                "usage_too_large",
                format!("The usage of {} makes an amount too large to bill.", sub.id),
            )
        })?;
    Ok(UsageSummary {
        subscription: sub,
        items,
        amount,
    })
}

/// The usage lines an invoice made now would bill (nothing is written).
pub(crate) async fn preview(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    until: DateTime<Utc>,
    invoice: InvoiceId,
    position: usize,
) -> ServiceResult<Vec<LineRow>> {
    let measured = measure(uow.conn(), &[(scope, sub, until)]).await?;
    lines_of(
        invoice,
        position,
        measured.first().map_or(&[][..], Vec::as_slice),
    )
}
