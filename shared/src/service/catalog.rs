//! The catalog: products and their prices, and plans (the seed's product with one recurring
//! flat price: a product marked `plan` and its plan price, synced as both).
//!
//! Every object Stripe mirrors takes one path. Created: it starts `pending` when there is a
//! Stripe to tell (its `stripe_sync` job is queued) and `not_synced` otherwise, and
//! `<object>.created` is recorded. Changed: a change that changes nothing writes nothing and
//! records nothing; one that Stripe shows queues the sync again; `<object>.updated` is recorded.

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ServiceError, ServiceResult, events, settle, tentative};
use crate::{
    config::StripeSettings,
    db::{
        self,
        catalog_sync::{self, Synced},
        pagination::{Page, PageRequest},
        plans::{NewPlan, PlanChanges, PlanFilter},
        products::{NewPrice, NewProduct, PriceChanges, ProductChanges},
    },
    domain::{
        catalog::{Code, Description, Features, Metadata, Name},
        interval::{Interval, IntervalUnit},
        money::Currency,
        pricing::PriceModel,
        usage::{Aggregation, UsageLimit},
    },
    ids::{PlanId, PriceId, ProductId},
    tenancy::TenantContext,
    uow::UnitOfWork,
};

/// What the operations of this module return.
pub use crate::db::{
    catalog_sync::SyncStatus,
    plans::PlanRow,
    products::{PriceRow, ProductRow},
};

/// A catalog object Stripe mirrors, as the one create and change path sees it.
pub trait Mirrored: Sized {
    /// The Stripe objects behind the row, each with the version Stripe must show of it (it
    /// goes up with every change Stripe shows). The first one's sync job creates the row in
    /// Stripe: a plan is its product, whose job brings the plan price along, and its price.
    fn mirrors(&self) -> Vec<(Synced, Uuid, i32)>;
    fn status(&self) -> SyncStatus;
    /// Whether a change left everything a change can touch as it was.
    fn same_content(&self, other: &Self) -> bool;
    /// The status after the sync was (re)queued or found to have no target.
    fn set_status(&mut self, status: SyncStatus);
    fn to_json(&self) -> Value;
}

/// `Mirrored` for a row type with `sync_status`, `sync_error` and `to_json`; `mirrors` gives
/// its Stripe objects and `content` what a change can touch.
macro_rules! mirrored {
    ($row:ty, |$m:ident| $mirrors:expr, |$r:ident| $content:expr) => {
        impl Mirrored for $row {
            fn mirrors(&self) -> Vec<(Synced, Uuid, i32)> {
                let $m = self;
                $mirrors
            }

            fn status(&self) -> SyncStatus {
                self.sync_status
            }

            fn same_content(&self, other: &Self) -> bool {
                let content = |$r: &Self| $content;
                content(self) == content(other)
            }

            fn set_status(&mut self, status: SyncStatus) {
                self.sync_status = status;
                if status == SyncStatus::Pending {
                    self.sync_error = None;
                }
            }

            fn to_json(&self) -> Value {
                <$row>::to_json(self)
            }
        }
    };
}

mirrored!(
    ProductRow,
    |p| vec![(Synced::Product, p.id.as_uuid(), p.sync_version)],
    |p| (
        p.name.clone(),
        p.description.clone(),
        p.features.clone(),
        p.metadata.clone(),
        p.active,
    )
);
mirrored!(
    PriceRow,
    |p| vec![(Synced::Price, p.id.as_uuid(), p.sync_version)],
    |p| (p.nickname.clone(), p.active, p.metadata.clone())
);
mirrored!(
    PlanRow,
    |p| vec![
        (Synced::Product, p.id.as_uuid(), p.product_version),
        (Synced::Price, p.price_id.as_uuid(), p.price_version),
    ],
    |p| (
        p.name.clone(),
        p.description.clone(),
        p.features.clone(),
        p.metadata.clone(),
        p.is_active,
        p.is_visible,
        p.trial_days,
        p.usage_limits.clone(),
    )
);

/// After an insert: queue the sync of a pending object and record `event_type`.
async fn created<R: Mirrored>(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    row: R,
    event_type: &str,
) -> ServiceResult<R> {
    let now = uow.now();
    if row.status() == SyncStatus::Pending
        && let Some((what, id, _)) = row.mirrors().first().copied()
    {
        catalog_sync::schedule(uow.conn(), what, ctx.scope(), id, now).await?;
    }
    events::record(uow, ctx.scope(), event_type, row.to_json()).await?;
    Ok(row)
}

/// After an update made since [`tentative`]: undo it when it changed nothing (no event, no
/// new version); otherwise queue the sync when Stripe shows what changed and record
/// `event_type`.
async fn changed<R: Mirrored>(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    before: R,
    mut after: R,
    event_type: &str,
) -> ServiceResult<R> {
    let same = after.same_content(&before);
    settle(uow, !same).await?;
    if same {
        return Ok(before);
    }
    let now = uow.now();
    for ((what, id, version), (_, _, was)) in after.mirrors().into_iter().zip(before.mirrors()) {
        if version != was {
            let status =
                catalog_sync::changed(uow.conn(), stripe, what, ctx.scope(), id, now).await?;
            after.set_status(status);
        }
    }
    events::record(uow, ctx.scope(), event_type, after.to_json()).await?;
    Ok(after)
}

/// The status a new object of the caller's mode starts with.
async fn initial_status(
    uow: &mut UnitOfWork,
    stripe: &StripeSettings,
    ctx: &TenantContext,
) -> ServiceResult<SyncStatus> {
    Ok(catalog_sync::initial_status(uow.conn(), stripe, ctx.scope()).await?)
}

// ---- products ----

const PRODUCT: &str = "product";
const PRICE: &str = "price";
const PLAN: &str = "plan";

fn product_error(e: db::DbError) -> ServiceError {
    match e {
        // A plan's product renamed through the products API.
        db::DbError::UniqueViolation(ref c) if c == PLAN_NAME_KEY => plan_error(e),
        e => ServiceError::taken(
            "products_code_key",
            "product_code_taken",
            "code",
            "A product with this code already exists.",
            PRODUCT,
        )(e),
    }
}

/// A product to create.
#[derive(Debug)]
pub struct ProductSpec<'a> {
    pub name: &'a Name,
    pub code: Option<&'a Code>,
    pub description: &'a Description,
    pub features: &'a Features,
    pub metadata: &'a Metadata,
}

pub async fn create_product(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    spec: ProductSpec<'_>,
) -> ServiceResult<ProductRow> {
    let now = uow.now();
    let sync_status = initial_status(uow, stripe, ctx).await?;
    let row = db::products::create(
        uow.conn(),
        ctx,
        NewProduct {
            id: ProductId::new(),
            name: spec.name.as_str(),
            code: spec.code.map(Code::as_str),
            description: spec.description.as_str(),
            features: &spec.features.to_json(),
            metadata: &spec.metadata.to_json(),
            sync_status,
        },
        now,
    )
    .await
    .map_err(product_error)?;
    created(uow, ctx, row, "product.created").await
}

pub async fn list_products(
    pool: &PgPool,
    ctx: &TenantContext,
    active: Option<bool>,
    page: PageRequest,
) -> ServiceResult<Page<ProductRow>> {
    Ok(db::products::list(pool, ctx, active, page).await?)
}

/// A product with its prices.
pub async fn get_product(
    pool: &PgPool,
    ctx: &TenantContext,
    id: ProductId,
) -> ServiceResult<(ProductRow, Vec<PriceRow>)> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let row = db::products::get(&mut conn, ctx, id)
        .await
        .map_err(ServiceError::not_found(PRODUCT))?;
    let prices = db::products::prices_of(&mut conn, ctx, id).await?;
    Ok((row, prices))
}

/// Changes to a product (`None`: unchanged). `active: Some(false)` archives it.
#[derive(Debug, Default)]
pub struct ProductUpdate<'a> {
    pub name: Option<&'a Name>,
    pub description: Option<&'a Description>,
    pub features: Option<&'a Features>,
    pub metadata: Option<&'a Metadata>,
    pub active: Option<bool>,
}

pub async fn update_product(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: ProductId,
    changes: ProductUpdate<'_>,
) -> ServiceResult<ProductRow> {
    let now = uow.now();
    let before = db::products::get(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(PRODUCT))?;
    let features = changes.features.map(Features::to_json);
    let metadata = changes.metadata.map(Metadata::to_json);
    tentative(uow).await?;
    let after = db::products::update(
        uow.conn(),
        ctx,
        id,
        ProductChanges {
            name: changes.name.map(Name::as_str),
            description: changes.description.map(Description::as_str),
            features: features.as_ref(),
            metadata: metadata.as_ref(),
            active: changes.active,
        },
        now,
    )
    .await
    .map_err(product_error)?;
    changed(uow, ctx, stripe, before, after, "product.updated").await
}

/// Archives a product (in Stripe too); it and its prices stay readable.
pub async fn archive_product(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: ProductId,
) -> ServiceResult<ProductRow> {
    let changes = ProductUpdate {
        active: Some(false),
        ..Default::default()
    };
    update_product(uow, ctx, stripe, id, changes).await
}

// ---- prices ----

/// A price to create; its terms never change afterwards.
#[derive(Debug)]
pub struct PriceSpec<'a> {
    pub nickname: Option<&'a Name>,
    pub currency: Currency,
    /// `None` for a one-time price.
    pub recurring: Option<Interval>,
    pub model: &'a PriceModel,
    /// Present for a metered price (which must recur): the code of its billable metric, and
    /// the aggregation the caller expects (the metric's when absent).
    pub usage: Option<(&'a str, Option<Aggregation>)>,
    pub metadata: &'a Metadata,
}

pub async fn create_price(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    product: ProductId,
    spec: PriceSpec<'_>,
) -> ServiceResult<PriceRow> {
    if spec.usage.is_some() && spec.recurring.is_none() {
        return Err(ServiceError::invalid(
            "usage",
            "a metered price must be recurring: usage is billed per period",
        ));
    }
    let model = serde_json::to_value(spec.model).map_err(ServiceError::internal)?;
    let usage = match spec.usage {
        Some((code, aggregation)) => Some(
            serde_json::to_value(
                super::usage::metered_usage(uow, ctx.scope(), code, aggregation).await?,
            )
            .map_err(ServiceError::internal)?,
        ),
        None => None,
    };
    let now = uow.now();
    // Not found for another tenant's (or a missing) product.
    let owner = db::products::get(uow.conn(), ctx, product)
        .await
        .map_err(ServiceError::not_found(PRODUCT))?;
    if !owner.active {
        return Err(ServiceError::conflict(
            "product_archived",
            "The product is archived; reactivate it before adding prices.",
        ));
    }
    let sync_status = initial_status(uow, stripe, ctx).await?;
    let row = db::products::create_price(
        uow.conn(),
        ctx,
        NewPrice {
            id: PriceId::new(),
            product_id: owner.id,
            nickname: spec.nickname.map(Name::as_str).unwrap_or(""),
            currency: spec.currency.as_str(),
            interval: spec
                .recurring
                .map(|i| (i.unit().as_str(), i32::try_from(i.count()).unwrap_or(1))),
            model: &model,
            usage: usage.as_ref(),
            metadata: &spec.metadata.to_json(),
            sync_status,
        },
        now,
    )
    .await
    .map_err(ServiceError::not_found(PRICE))?;
    created(uow, ctx, row, "price.created").await
}

/// A product's prices (not found when the product is not the caller's).
pub async fn list_prices(
    pool: &PgPool,
    ctx: &TenantContext,
    product: ProductId,
) -> ServiceResult<Vec<PriceRow>> {
    Ok(get_product(pool, ctx, product).await?.1)
}

pub async fn get_price(pool: &PgPool, ctx: &TenantContext, id: PriceId) -> ServiceResult<PriceRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::products::get_price(&mut conn, ctx, id)
        .await
        .map_err(ServiceError::not_found(PRICE))
}

/// What `quantity` units (or, for a metered price, that much usage) cost at a price.
pub async fn amount_for(
    pool: &PgPool,
    ctx: &TenantContext,
    id: PriceId,
    quantity: u64,
) -> ServiceResult<(PriceRow, Currency, i64)> {
    let row = get_price(pool, ctx, id).await?;
    let model: PriceModel =
        serde_json::from_value(row.model.clone()).map_err(ServiceError::internal)?;
    let amount = model
        .amount_for(quantity)
        .map_err(|e| ServiceError::invalid("quantity", format!("is too large to price: {e}")))?;
    let currency = Currency::parse(&row.currency).map_err(ServiceError::internal)?;
    Ok((row, currency, amount))
}

/// Changes to a price: its name, active flag and metadata (its terms never change).
#[derive(Debug, Default)]
pub struct PriceUpdate<'a> {
    pub nickname: Option<&'a Name>,
    /// `false` archives it: no new purchases, existing ones go on.
    pub active: Option<bool>,
    pub metadata: Option<&'a Metadata>,
}

pub async fn update_price(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: PriceId,
    changes: PriceUpdate<'_>,
) -> ServiceResult<PriceRow> {
    let now = uow.now();
    let before = db::products::get_price(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(PRICE))?;
    let metadata = changes.metadata.map(Metadata::to_json);
    tentative(uow).await?;
    let after = db::products::update_price(
        uow.conn(),
        ctx,
        id,
        PriceChanges {
            nickname: changes.nickname.map(Name::as_str),
            active: changes.active,
            metadata: metadata.as_ref(),
        },
        now,
    )
    .await
    .map_err(ServiceError::not_found(PRICE))?;
    changed(uow, ctx, stripe, before, after, "price.updated").await
}

// ---- plans ----

/// Plan names are unique per tenant and mode, whatever the case.
const PLAN_NAME_KEY: &str = "products_plan_name_key";

fn plan_error(e: db::DbError) -> ServiceError {
    ServiceError::taken(
        PLAN_NAME_KEY,
        "plan_name_taken",
        "name",
        "A plan with this name already exists.",
        PLAN,
    )(e)
}

/// Days of free trial a plan may offer.
const MAX_TRIAL_DAYS: u32 = 730;

fn trial_days(days: u32) -> ServiceResult<i32> {
    if days > MAX_TRIAL_DAYS {
        return Err(ServiceError::invalid(
            "trial_days",
            format!("must be at most {MAX_TRIAL_DAYS}"),
        ));
    }
    Ok(i32::try_from(days).unwrap_or(0))
}

fn plan_amount(field: &str, amount: i64) -> ServiceResult<i64> {
    if amount < 0 {
        return Err(ServiceError::invalid(field, "must not be negative"));
    }
    Ok(amount)
}

/// A plan to create.
#[derive(Debug)]
pub struct PlanSpec<'a> {
    pub name: &'a Name,
    pub description: &'a Description,
    /// In minor units of the currency.
    pub amount: i64,
    pub currency: Currency,
    pub interval: Interval,
    pub trial_days: u32,
    pub features: &'a Features,
    pub metadata: &'a Metadata,
    pub is_visible: bool,
    /// Per-period limits on metrics (see [`super::usage_limits`]).
    pub usage_limits: &'a [UsageLimit],
}

async fn insert_plan(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    plan: NewPlan<'_>,
) -> ServiceResult<PlanRow> {
    let now = uow.now();
    let plan = NewPlan {
        sync_status: initial_status(uow, stripe, ctx).await?,
        ..plan
    };
    let row = db::plans::create(uow.conn(), ctx, plan, now)
        .await
        .map_err(plan_error)?;
    created(uow, ctx, row, "plan.created").await
}

pub async fn create_plan(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    spec: PlanSpec<'_>,
) -> ServiceResult<PlanRow> {
    let amount = plan_amount("price_cents", spec.amount)?;
    let trial_days = trial_days(spec.trial_days)?;
    let usage_limits =
        super::usage_limits::checked(uow, ctx.scope(), "usage_limits", spec.usage_limits).await?;
    insert_plan(
        uow,
        ctx,
        stripe,
        NewPlan {
            id: PlanId::new(),
            price_id: PriceId::new(),
            name: spec.name.as_str(),
            description: spec.description.as_str(),
            amount,
            currency: spec.currency.as_str(),
            interval: spec.interval.unit().as_str(),
            interval_count: i32::try_from(spec.interval.count()).unwrap_or(1),
            trial_days,
            features: &spec.features.to_json(),
            metadata: &spec.metadata.to_json(),
            is_visible: spec.is_visible,
            duplicated_from: None,
            usage_limits: &usage_limits,
            sync_status: SyncStatus::Pending,
        },
    )
    .await
}

/// A copy of a plan under a new name (and optionally a new price) that remembers its original.
pub async fn duplicate_plan(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: PlanId,
    name: &Name,
    amount: Option<i64>,
) -> ServiceResult<PlanRow> {
    let amount = amount.map(|a| plan_amount("price_cents", a)).transpose()?;
    let original = db::plans::get(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(PLAN))?;
    insert_plan(
        uow,
        ctx,
        stripe,
        NewPlan {
            id: PlanId::new(),
            price_id: PriceId::new(),
            name: name.as_str(),
            description: &original.description,
            amount: amount.unwrap_or(original.amount),
            currency: &original.currency,
            interval: &original.interval,
            interval_count: original.interval_count,
            trial_days: original.trial_days,
            features: &original.features,
            metadata: &original.metadata,
            is_visible: original.is_visible,
            duplicated_from: Some(original.id),
            usage_limits: &original.usage_limits,
            sync_status: SyncStatus::Pending,
        },
    )
    .await
}

/// Plan list filters from the seed.
#[derive(Debug, Default)]
pub struct PlanQuery<'a> {
    pub is_active: Option<bool>,
    pub interval: Option<IntervalUnit>,
    /// Text the name contains (case-insensitive).
    pub search: Option<&'a str>,
}

pub async fn list_plans(
    pool: &PgPool,
    ctx: &TenantContext,
    query: PlanQuery<'_>,
    page: PageRequest,
) -> ServiceResult<Page<PlanRow>> {
    let search = super::search_text(query.search)?;
    let filter = PlanFilter {
        is_active: query.is_active,
        interval: query.interval.map(IntervalUnit::as_str),
        search,
    };
    Ok(db::plans::list(pool, ctx, filter, page).await?)
}

pub async fn get_plan(pool: &PgPool, ctx: &TenantContext, id: PlanId) -> ServiceResult<PlanRow> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    db::plans::get(&mut conn, ctx, id)
        .await
        .map_err(ServiceError::not_found(PLAN))
}

/// Changes to a plan (`None`: unchanged); its price, currency and interval never change.
#[derive(Debug, Default)]
pub struct PlanUpdate<'a> {
    pub name: Option<&'a Name>,
    pub description: Option<&'a Description>,
    pub features: Option<&'a Features>,
    pub metadata: Option<&'a Metadata>,
    pub is_visible: Option<bool>,
    /// `false` deactivates the plan; `true` reactivates it.
    pub is_active: Option<bool>,
    pub trial_days: Option<u32>,
    /// Replaces the plan's usage limits (empty: none).
    pub usage_limits: Option<&'a [UsageLimit]>,
}

async fn change_plan(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: PlanId,
    changes: PlanUpdate<'_>,
    event_type: &str,
) -> ServiceResult<PlanRow> {
    let trial_days = changes.trial_days.map(trial_days).transpose()?;
    let features = changes.features.map(Features::to_json);
    let metadata = changes.metadata.map(Metadata::to_json);
    let usage_limits = match changes.usage_limits {
        Some(limits) => {
            Some(super::usage_limits::checked(uow, ctx.scope(), "usage_limits", limits).await?)
        }
        None => None,
    };
    let now = uow.now();
    let before = db::plans::get(uow.conn(), ctx, id)
        .await
        .map_err(ServiceError::not_found(PLAN))?;
    tentative(uow).await?;
    let after = db::plans::update(
        uow.conn(),
        ctx,
        id,
        PlanChanges {
            name: changes.name.map(Name::as_str),
            description: changes.description.map(Description::as_str),
            features: features.as_ref(),
            metadata: metadata.as_ref(),
            is_visible: changes.is_visible,
            is_active: changes.is_active,
            trial_days,
            usage_limits: usage_limits.as_ref(),
        },
        now,
    )
    .await
    .map_err(plan_error)?;
    if after.usage_limits != before.usage_limits {
        // The plan's subscribers are held to the new limits now, not at their next usage.
        super::usage_limits::queue_plan_check(uow, ctx.scope(), after.price_id).await?;
    }
    changed(uow, ctx, stripe, before, after, event_type).await
}

pub async fn update_plan(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: PlanId,
    changes: PlanUpdate<'_>,
) -> ServiceResult<PlanRow> {
    change_plan(uow, ctx, stripe, id, changes, "plan.updated").await
}

/// A soft delete: the plan stays readable, its Stripe Product is archived, existing
/// subscriptions go on and new ones cannot start.
pub async fn deactivate_plan(
    uow: &mut UnitOfWork,
    ctx: &TenantContext,
    stripe: &StripeSettings,
    id: PlanId,
) -> ServiceResult<PlanRow> {
    let changes = PlanUpdate {
        is_active: Some(false),
        ..Default::default()
    };
    change_plan(uow, ctx, stripe, id, changes, "plan.deactivated").await
}
