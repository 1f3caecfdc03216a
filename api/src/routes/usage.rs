//! Usage-based billing: billable metrics (`/api/v1/billable-metrics`), usage events
//! (`/api/v1/usage-events`) and a subscription's usage so far.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{LazyLock, Mutex, PoisonError},
};

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
};
use serde::Deserialize;
use shared::{
    domain::{
        catalog::{Description, Name},
        usage::{Metric, metric_code},
    },
    ids::{BillableMetricId, CustomerId, SubscriptionId},
    service::usage::{
        self as service, BillableMetricRow, EventOutcome, EventSpec, ItemUsage, MetricSpec,
        MetricUpdate, UsageSummary,
    },
    service::usage_limits,
    tenancy::{Permission, Scope},
};

use super::{
    ApiTags,
    dto::{immutable, optional_id, page_request},
    products::AggregationIn,
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct BillableMetricsApi;
pub struct UsageEventsApi;

/// A billable metric to create. Only its names and whether it is active change afterwards.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MetricIn {
    /// What usage events and metered prices name it by, unique in the mode: 1 to 100
    /// characters of a-z, 0-9, `_`, `.` and `-`.
    pub code: String,
    pub name: String,
    #[oai(nullable)]
    pub description: Option<String>,
    /// How a period's events combine into a quantity.
    pub aggregation: AggregationIn,
    /// The event property aggregated (an integer; any scalar for `unique_count`): required
    /// for every aggregation but `count`, absent for `count`.
    #[oai(nullable)]
    pub field_name: Option<String>,
    /// Only events whose properties hold one of the listed values for each named property
    /// count (values compared as text: `1` matches `"1"`).
    #[oai(nullable)]
    pub filters: Option<BTreeMap<String, Vec<String>>>,
}

/// Changes to a billable metric; what is absent stays.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MetricPatch {
    #[oai(nullable)]
    pub name: Option<String>,
    #[oai(nullable)]
    pub description: Option<String>,
    /// `false`: archived; no new metered price or usage event may name it.
    #[oai(nullable)]
    pub active: Option<bool>,
    /// Cannot change (`400 immutable_field`): create a new metric.
    #[oai(nullable)]
    pub code: Option<serde_json::Value>,
    /// Cannot change (`400 immutable_field`): create a new metric.
    #[oai(nullable)]
    pub aggregation: Option<serde_json::Value>,
    /// Cannot change (`400 immutable_field`): create a new metric.
    #[oai(nullable)]
    pub field_name: Option<serde_json::Value>,
    /// Cannot change (`400 immutable_field`): create a new metric.
    #[oai(nullable)]
    pub filters: Option<serde_json::Value>,
}

#[derive(Debug, Object)]
pub struct MetricOut {
    /// Billable metric id (`bm_…`).
    pub id: String,
    /// Always `billable_metric`.
    pub object: String,
    pub code: String,
    pub name: String,
    pub description: String,
    /// `count`, `sum`, `max`, `unique_count`, `latest` or `weighted_sum`.
    pub aggregation: String,
    #[oai(nullable)]
    pub field_name: Option<String>,
    pub filters: serde_json::Value,
    pub active: bool,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<BillableMetricRow> for MetricOut {
    fn from(m: BillableMetricRow) -> Self {
        Self {
            id: m.id.to_string(),
            object: "billable_metric".into(),
            code: m.code,
            name: m.name,
            description: m.description,
            aggregation: m.aggregation,
            field_name: m.field_name,
            filters: m.filters,
            active: m.active,
            livemode: m.livemode,
            created_at: m.created_at,
            updated_at: m.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct MetricList {
    pub data: Vec<MetricOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedMetric {
    /// The billable metric was created.
    #[oai(status = 201)]
    Created(Json<MetricOut>),
}

/// One usage event.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UsageEventIn {
    /// Unique per tenant and mode, forever: a repeat is answered as a duplicate and never
    /// counted twice. 1 to 255 characters.
    pub transaction_id: String,
    /// The billable metric's code.
    pub code: String,
    /// The subscription it counts for (`sub_…`); or name the customer.
    #[oai(nullable)]
    pub subscription: Option<String>,
    /// The customer (`cus_…`) whose one live subscription metering the metric it counts for.
    #[oai(nullable)]
    pub customer: Option<String>,
    /// When the usage happened; default now (the customer's test clock's time). At most 5
    /// minutes ahead, and not in a period already invoiced.
    #[oai(nullable)]
    pub timestamp: Option<DateTime<Utc>>,
    /// What the metric reads and filters on: an object of at most 50 properties.
    #[oai(nullable)]
    pub properties: Option<serde_json::Value>,
}

/// Up to 1,000 usage events, recorded all or none.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UsageBatchIn {
    #[oai(validator(min_items = 1, max_items = 1000))]
    pub events: Vec<UsageEventIn>,
}

#[derive(Debug, Clone, Copy, Enum, PartialEq, Eq)]
#[oai(rename_all = "snake_case")]
pub enum EventStatus {
    /// Recorded now.
    Recorded,
    /// Its transaction id was recorded before (or earlier in the batch): counted once, as
    /// first reported.
    Duplicate,
}

#[derive(Debug, Object)]
pub struct UsageEventOut {
    /// Always `usage_event`.
    pub object: String,
    pub transaction_id: String,
    pub status: EventStatus,
    /// The subscription it counts for; `null` for a duplicate.
    #[oai(nullable)]
    pub subscription: Option<String>,
    /// When it happened; `null` for a duplicate.
    #[oai(nullable)]
    pub timestamp: Option<DateTime<Utc>>,
}

impl From<EventOutcome> for UsageEventOut {
    fn from(o: EventOutcome) -> Self {
        Self {
            object: "usage_event".into(),
            transaction_id: o.transaction_id,
            status: if o.recorded {
                EventStatus::Recorded
            } else {
                EventStatus::Duplicate
            },
            subscription: o.subscription.map(|s| s.to_string()),
            timestamp: o.timestamp,
        }
    }
}

#[derive(Debug, Object)]
pub struct UsageBatchOut {
    /// One per event, in the order sent.
    pub data: Vec<UsageEventOut>,
    /// How many were recorded now.
    pub recorded: u32,
    /// How many were duplicates.
    pub duplicates: u32,
}

#[derive(ApiResponse)]
pub enum RecordedEvent {
    /// The event was recorded.
    #[oai(status = 201)]
    Created(Json<UsageEventOut>),
    /// Its transaction id was recorded before: nothing changed.
    #[oai(status = 200)]
    Duplicate(Json<UsageEventOut>),
}

#[derive(Debug, Object)]
pub struct ItemUsageOut {
    /// The subscription item (`si_…`).
    pub subscription_item: String,
    /// Its metered price (`price_…`).
    pub price: String,
    /// The billable metric's code.
    pub metric: String,
    pub aggregation: String,
    /// The window's aggregated usage, in whole units.
    pub quantity: u64,
    /// What the price asks for it so far, in minor units (before discounts and tax).
    pub amount: i64,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
}

impl From<ItemUsage> for ItemUsageOut {
    fn from(u: ItemUsage) -> Self {
        Self {
            subscription_item: u.item.id.to_string(),
            price: u.item.price_id.to_string(),
            metric: u.metric,
            aggregation: u.aggregation.as_str().into(),
            quantity: u.quantity,
            amount: u.amount,
            period_start: u.window.start,
            period_end: u.window.end,
        }
    }
}

#[derive(Debug, Object)]
pub struct UsageSummaryOut {
    /// Always `usage_summary`.
    pub object: String,
    pub subscription: String,
    pub currency: String,
    /// One per metered item with usage not yet invoiced (none during a trial).
    pub items: Vec<ItemUsageOut>,
    /// What the usage so far comes to, in minor units (before discounts and tax).
    pub amount: i64,
}

impl From<UsageSummary> for UsageSummaryOut {
    fn from(s: UsageSummary) -> Self {
        let amount = s.amount;
        Self {
            object: "usage_summary".into(),
            subscription: s.subscription.id.to_string(),
            currency: s.subscription.currency.clone(),
            items: s.items.into_iter().map(ItemUsageOut::from).collect(),
            amount,
        }
    }
}

fn metric_id(raw: &str) -> Result<BillableMetricId, ApiError> {
    BillableMetricId::parse(raw).map_err(|_| ApiError::not_found("billable metric"))
}

/// A name: 1 to 250 printable characters.
fn name(field: &str, raw: &str) -> Result<String, ApiError> {
    Name::parse(raw)
        .map(|n| n.as_str().to_owned())
        .map_err(ApiError::invalid(field))
}

/// A description: at most 5,000 characters.
fn description(raw: &str) -> Result<String, ApiError> {
    Description::parse(raw)
        .map(|d| d.as_str().to_owned())
        .map_err(ApiError::invalid("description"))
}

/// The event as the service takes it; `at` names it in a batch.
fn event_spec(e: UsageEventIn, at: Option<usize>) -> Result<EventSpec, ApiError> {
    let field = |f: &str| service::field(at.is_some(), at.unwrap_or(0), f);
    let properties = match e.properties {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(map)) => map,
        Some(_) => {
            return Err(ApiError::validation(
                field("properties"),
                "must be an object",
            ));
        }
    };
    Ok(EventSpec {
        subscription: optional_id(&field("subscription"), e.subscription.as_deref(), |s| {
            SubscriptionId::parse(s)
        })?,
        customer: optional_id(&field("customer"), e.customer.as_deref(), CustomerId::parse)?,
        transaction_id: e.transaction_id,
        code: e.code,
        timestamp: e.timestamp,
        properties,
    })
}

#[OpenApi]
impl BillableMetricsApi {
    /// Create a billable metric
    #[oai(
        path = "/api/v1/billable-metrics",
        method = "post",
        operation_id = "billable_metrics.create",
        tag = "ApiTags::Catalog"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<MetricIn>,
    ) -> Result<CreatedMetric, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let code = metric_code(&b.code).map_err(ApiError::invalid("code"))?;
        let name = name("name", &b.name)?;
        let description = description(b.description.as_deref().unwrap_or(""))?;
        let metric = Metric::new(
            b.aggregation.into(),
            b.field_name.as_deref(),
            b.filters.unwrap_or_default(),
        )
        .map_err(|e| {
            let field = if e.0.starts_with("field_name") {
                "field_name"
            } else {
                "filters"
            };
            ApiError::validation(field, e.0)
        })?;
        let mut work = Work::begin(req).await?;
        let row = service::create_metric(
            &mut work,
            ctx.scope(),
            MetricSpec {
                code: &code,
                name: &name,
                description: &description,
                metric: &metric,
            },
        )
        .await?;
        let out = MetricOut::from(row);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedMetric::Created(Json(out)))
    }

    /// List billable metrics
    ///
    /// Newest first; optionally only active (or archived) ones.
    #[oai(
        path = "/api/v1/billable-metrics",
        method = "get",
        operation_id = "billable_metrics.list",
        tag = "ApiTags::Catalog"
    )]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only active (`true`) or archived (`false`) metrics.
        active: Query<Option<bool>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A billable metric id: return older metrics (the next page).
        starting_after: Query<Option<String>>,
        /// A billable metric id: return newer metrics (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<MetricList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            BillableMetricId::parse(s).map(|id| id.as_uuid())
        })?;
        let page = service::list_metrics(&state.pool, ctx.scope(), active.0, page).await?;
        Ok(Json(MetricList {
            data: page.items.into_iter().map(MetricOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a billable metric
    #[oai(
        path = "/api/v1/billable-metrics/:id",
        method = "get",
        operation_id = "billable_metrics.get",
        tag = "ApiTags::Catalog"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Billable metric id (`bm_…`).
        id: Path<String>,
    ) -> Result<Json<MetricOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = metric_id(&id.0)?;
        Ok(Json(
            service::get_metric(&state.pool, ctx.scope(), id)
                .await?
                .into(),
        ))
    }

    /// Update a billable metric
    ///
    /// Its names and whether it is active; how it counts never changes (create a new metric).
    #[oai(
        path = "/api/v1/billable-metrics/:id",
        method = "patch",
        operation_id = "billable_metrics.update",
        tag = "ApiTags::Catalog"
    )]
    async fn update(
        &self,
        req: &Request,
        auth: Auth,
        /// Billable metric id (`bm_…`).
        id: Path<String>,
        body: JsonBody<MetricPatch>,
    ) -> Result<Json<MetricOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = metric_id(&id.0)?;
        let b = body.0;
        for (field, present) in [
            ("code", b.code.is_some()),
            ("aggregation", b.aggregation.is_some()),
            ("field_name", b.field_name.is_some()),
            ("filters", b.filters.is_some()),
        ] {
            if present {
                return Err(immutable(field, "billable metric"));
            }
        }
        let name = b.name.as_deref().map(|n| name("name", n)).transpose()?;
        let description = b.description.as_deref().map(description).transpose()?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let row = service::update_metric(
            &mut work,
            ctx.scope(),
            id,
            MetricUpdate {
                name: name.as_deref(),
                description: description.as_deref(),
                active: b.active,
            },
        )
        .await?;
        Ok(Json(row.into()))
    }
}

/// The subscriptions whose usage limits this process is checking, each with whether a request
/// recorded usage for it meanwhile (the check then runs once more when it ends).
static CHECKING: LazyLock<Mutex<HashMap<SubscriptionId, bool>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Checks the usage limits of `subscriptions` once the request's work commits, in the
/// background (the answer does not wait), one check at a time per subscription. Should that
/// check not happen, the one the events queued does.
fn check_limits_after(
    work: &mut Work,
    state: &AppState,
    scope: Scope,
    subscriptions: Vec<SubscriptionId>,
) {
    if subscriptions.is_empty() {
        return;
    }
    let pool = state.pool.clone();
    let clock = state.clock.clone();
    work.after_commit(move || {
        for sub in subscriptions {
            if !start_checking(sub) {
                continue;
            }
            let (pool, clock) = (pool.clone(), clock.clone());
            tokio::spawn(async move {
                let _unwinding = Checking(sub);
                loop {
                    if let Err(e) = usage_limits::check(&pool, clock.as_ref(), scope, sub).await {
                        tracing::warn!(subscription = %sub, error = %e, "usage limit check failed");
                    }
                    if !check_again(sub) {
                        break;
                    }
                }
            });
        }
    });
}

/// Forgets a check that panicked (its subscription can then be checked again); a check that
/// ends is forgotten by [`check_again`].
struct Checking(SubscriptionId);

impl Drop for Checking {
    fn drop(&mut self) {
        if std::thread::panicking() {
            CHECKING
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&self.0);
        }
    }
}

/// `true`: start checking `sub`; `false`: a check is running, and runs once more.
fn start_checking(sub: SubscriptionId) -> bool {
    let mut checking = CHECKING.lock().unwrap_or_else(PoisonError::into_inner);
    match checking.get_mut(&sub) {
        Some(again) => {
            *again = true;
            false
        }
        None => {
            checking.insert(sub, false);
            true
        }
    }
}

/// Whether the check of `sub` that ended must run once more; if not, it is no longer running.
fn check_again(sub: SubscriptionId) -> bool {
    let mut checking = CHECKING.lock().unwrap_or_else(PoisonError::into_inner);
    match checking.get_mut(&sub) {
        Some(again) if *again => {
            *again = false;
            true
        }
        _ => {
            checking.remove(&sub);
            false
        }
    }
}

#[OpenApi]
impl UsageEventsApi {
    /// Report a usage event
    ///
    /// 201 when recorded; 200 when its transaction id was recorded before (nothing changes).
    #[oai(
        path = "/api/v1/usage-events",
        method = "post",
        operation_id = "usage_events.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<UsageEventIn>,
    ) -> Result<RecordedEvent, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let spec = event_spec(body.0, None)?;
        let mut work = Work::begin(req).await?;
        let recorded =
            service::record_events(&mut work, ctx.scope(), std::slice::from_ref(&spec), false)
                .await?;
        check_limits_after(&mut work, &state, ctx.scope(), recorded.check_limits);
        let mut outcomes = recorded.events;
        let out = UsageEventOut::from(
            outcomes
                .pop()
                .ok_or_else(|| ApiError::internal("an event without an outcome"))?,
        );
        note(req, |n| n.object_id = Some(out.transaction_id.clone()));
        Ok(match out.status {
            EventStatus::Recorded => RecordedEvent::Created(Json(out)),
            EventStatus::Duplicate => RecordedEvent::Duplicate(Json(out)),
        })
    }

    /// Report up to 1,000 usage events
    ///
    /// All or none: an event that cannot be recorded refuses the batch, naming it
    /// (`events[i]`). Duplicates are answered as such and change nothing.
    #[oai(
        path = "/api/v1/usage-events/batch",
        method = "post",
        operation_id = "usage_events.batch",
        tag = "ApiTags::Billing"
    )]
    async fn batch(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        auth: Auth,
        body: JsonBody<UsageBatchIn>,
    ) -> Result<Json<UsageBatchOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let events = body.0.events;
        if events.is_empty() || events.len() > service::MAX_BATCH {
            return Err(ApiError::validation(
                "events",
                format!("must hold 1 to {} events", service::MAX_BATCH),
            ));
        }
        let specs = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| event_spec(e, Some(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut work = Work::begin(req).await?;
        let recorded = service::record_events(&mut work, ctx.scope(), &specs, true).await?;
        check_limits_after(&mut work, &state, ctx.scope(), recorded.check_limits);
        let outcomes = recorded.events;
        let recorded = outcomes.iter().filter(|o| o.recorded).count();
        let duplicates = outcomes.len() - recorded;
        Ok(Json(UsageBatchOut {
            data: outcomes.into_iter().map(UsageEventOut::from).collect(),
            recorded: u32::try_from(recorded).unwrap_or(u32::MAX),
            duplicates: u32::try_from(duplicates).unwrap_or(u32::MAX),
        }))
    }

    /// Get a subscription's usage so far
    ///
    /// The usage of its metered items not yet invoiced (from where its invoiced usage ends to
    /// the end of its current period), and what it comes to at their prices.
    #[oai(
        path = "/api/v1/subscriptions/:id/usage",
        method = "get",
        operation_id = "subscriptions.usage",
        tag = "ApiTags::Billing"
    )]
    async fn summary(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
    ) -> Result<Json<UsageSummaryOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = SubscriptionId::parse(&id.0).map_err(|_| ApiError::not_found("subscription"))?;
        Ok(Json(
            service::summary(&state.pool, ctx.scope(), id).await?.into(),
        ))
    }
}
