//! Subscriptions (`/api/v1/subscriptions`): a customer billed each period for prices or plans.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use poem::Request;
use poem_openapi::{ApiResponse, Object, OpenApi, param::Path, param::Query, payload::Json};
use serde::Deserialize;
use shared::{
    domain::subscription::{CollectionMethod, ProrationBehavior, SubscriptionStatus},
    ids::{BundleId, CouponId, CustomerId, PlanId, PriceId, SubscriptionId, SubscriptionItemId},
    service::subscriptions::{
        self as service, ItemChange, ItemRef, ItemSpec, ItemsChange, SubscriptionChanges,
        SubscriptionSpec, SubscriptionView, Trial,
    },
    tenancy::Permission,
};

use super::invoices::InvoiceOut;
use super::{
    ApiTags,
    dto::{metadata, page_request},
};
use crate::{
    auth::Auth, body::JsonBody, error::ApiError, middleware::note, state::AppState, work::Work,
};

pub struct SubscriptionsApi;

/// An item to bill: a `price` or a `plan` (its price), and a quantity.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionItemIn {
    /// A recurring price (`price_…`); or give `plan`.
    #[oai(nullable)]
    pub price: Option<String>,
    /// A plan (`plan_…`): its price; or give `price`.
    #[oai(nullable)]
    pub plan: Option<String>,
    /// 1 to 1000000; default 1.
    #[oai(nullable)]
    pub quantity: Option<u32>,
}

/// A subscription to create. Every item's price recurs at the same interval in the same
/// currency (the customer's, when it has one).
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionIn {
    /// The customer (`cus_…`).
    pub customer: String,
    /// 1 to 20 items, each price at most once; or give `bundle`.
    #[oai(nullable)]
    pub items: Option<Vec<SubscriptionItemIn>>,
    /// A bundle (`bundle_…`): its prices and quantities are the items, and its discount (as
    /// it is now) applies to every period; not with `items`.
    #[oai(nullable)]
    pub bundle: Option<String>,
    /// Days of trial (0: none). Without this and `trial_end`, the prices' own trial applies.
    #[oai(nullable)]
    pub trial_period_days: Option<u32>,
    /// When the trial ends (in the future, at most 730 days ahead); not with
    /// `trial_period_days`.
    #[oai(nullable)]
    pub trial_end: Option<DateTime<Utc>>,
    /// `charge_automatically` (default) or `send_invoice`.
    #[oai(nullable)]
    pub collection_method: Option<String>,
    /// With `send_invoice`: days until an invoice is due, 0 to 365 (default 30).
    #[oai(nullable)]
    pub days_until_due: Option<u32>,
    /// What changes of items bill by default: `create_prorations` (default),
    /// `always_invoice` or `none`.
    #[oai(nullable)]
    pub proration_behavior: Option<String>,
    /// A coupon to redeem (`coupon_…`): it discounts the period invoices while its duration
    /// lasts (an amount off must be in the subscription's currency).
    #[oai(nullable)]
    pub coupon: Option<String>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// A change to one item: `id` with a new `quantity`, `id` with `deleted: true`, or a new
/// `price` or `plan` (with a quantity).
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionItemChangeIn {
    /// The item to change or remove (`si_…`).
    #[oai(nullable)]
    pub id: Option<String>,
    /// A price to add (`price_…`).
    #[oai(nullable)]
    pub price: Option<String>,
    /// A plan to add (`plan_…`).
    #[oai(nullable)]
    pub plan: Option<String>,
    /// 1 to 1000000.
    #[oai(nullable)]
    pub quantity: Option<u32>,
    /// `true`: remove the item `id`.
    #[oai(nullable)]
    pub deleted: Option<bool>,
}

/// Changes to a subscription.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// `true`: cancel when the current period ends; `false`: undo that.
    #[oai(nullable)]
    pub cancel_at_period_end: Option<bool>,
    /// How this change is billed (and, without `items`, the default from now on).
    #[oai(nullable)]
    pub proration_behavior: Option<String>,
    /// Changes to the items; each changed item is prorated by seconds as
    /// `proration_behavior` says.
    #[oai(nullable)]
    pub items: Option<Vec<SubscriptionItemChangeIn>>,
    /// The instant the change counts from for proration: within the current period, not in
    /// the future; default now.
    #[oai(nullable)]
    pub proration_date: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub metadata: Option<HashMap<String, String>>,
}

/// A change to preview.
#[derive(Debug, Object, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPreviewIn {
    pub items: Vec<SubscriptionItemChangeIn>,
    #[oai(nullable)]
    pub proration_behavior: Option<String>,
    #[oai(nullable)]
    pub proration_date: Option<DateTime<Utc>>,
}

/// A price and quantity a subscription bills each period.
#[derive(Debug, Object)]
pub struct SubscriptionItemOut {
    /// Item id (`si_…`).
    pub id: String,
    /// Always `subscription_item`.
    pub object: String,
    /// The price (`price_…`).
    pub price: String,
    pub quantity: i64,
    pub created_at: DateTime<Utc>,
}

/// A subscription.
#[derive(Debug, Object)]
pub struct SubscriptionOut {
    /// Subscription id (`sub_…`).
    pub id: String,
    /// Always `subscription`.
    pub object: String,
    /// The customer (`cus_…`).
    pub customer: String,
    /// `incomplete`, `incomplete_expired`, `trialing`, `active`, `past_due`, `unpaid`,
    /// `paused` or `canceled`.
    pub status: String,
    pub currency: String,
    /// `day`, `week`, `month`, `quarter` or `year`.
    pub interval: String,
    pub interval_count: i32,
    /// The IANA timezone whose wall clock the periods follow (the customer's at creation).
    pub timezone: String,
    pub items: Vec<SubscriptionItemOut>,
    /// Where periods count from: the creation, or the end of the trial.
    pub billing_cycle_anchor: DateTime<Utc>,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    #[oai(nullable)]
    pub trial_start: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub trial_end: Option<DateTime<Utc>>,
    pub collection_method: String,
    #[oai(nullable)]
    pub days_until_due: Option<i32>,
    pub proration_behavior: String,
    pub cancel_at_period_end: bool,
    #[oai(nullable)]
    pub canceled_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub ended_at: Option<DateTime<Utc>>,
    /// The last invoice made for it (`in_…`).
    #[oai(nullable)]
    pub latest_invoice: Option<String>,
    pub metadata: serde_json::Value,
    /// The customer's test clock (`clock_…`), whose time the subscription follows.
    #[oai(nullable)]
    pub test_clock: Option<String>,
    /// The coupon redeemed on it (`coupon_…`).
    #[oai(nullable)]
    pub coupon: Option<String>,
    /// The bundle it was made from (`bundle_…`).
    #[oai(nullable)]
    pub bundle: Option<String>,
    pub livemode: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<SubscriptionView> for SubscriptionOut {
    fn from(v: SubscriptionView) -> Self {
        let s = v.subscription;
        Self {
            id: s.id.to_string(),
            object: "subscription".into(),
            customer: s.customer_id.to_string(),
            status: s.status.as_str().into(),
            currency: s.currency,
            interval: s.interval,
            interval_count: s.interval_count,
            timezone: s.timezone,
            items: v
                .items
                .into_iter()
                .map(|i| SubscriptionItemOut {
                    id: i.id.to_string(),
                    object: "subscription_item".into(),
                    price: i.price_id.to_string(),
                    quantity: i.quantity,
                    created_at: i.created_at,
                })
                .collect(),
            billing_cycle_anchor: s.billing_cycle_anchor,
            current_period_start: s.current_period_start,
            current_period_end: s.current_period_end,
            trial_start: s.trial_start,
            trial_end: s.trial_end,
            collection_method: s.collection_method,
            days_until_due: s.days_until_due,
            proration_behavior: s.proration_behavior,
            cancel_at_period_end: s.cancel_at_period_end,
            canceled_at: s.canceled_at,
            ended_at: s.ended_at,
            latest_invoice: s.latest_invoice_id.map(|i| i.to_string()),
            metadata: s.metadata,
            test_clock: s.test_clock_id.map(|c| c.to_string()),
            coupon: s.coupon_id.map(|c| c.to_string()),
            bundle: s.bundle_id.map(|b| b.to_string()),
            livemode: s.livemode,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

#[derive(Debug, Object)]
pub struct SubscriptionList {
    pub data: Vec<SubscriptionOut>,
    pub has_more: bool,
}

#[derive(ApiResponse)]
pub enum CreatedSubscription {
    /// The subscription was created (with its first invoice unless it is trialing).
    #[oai(status = 201)]
    Created(Json<SubscriptionOut>),
}

fn subscription_id(raw: &str) -> Result<SubscriptionId, ApiError> {
    SubscriptionId::parse(raw).map_err(|_| ApiError::not_found("subscription"))
}

fn proration(raw: Option<&str>) -> Result<Option<ProrationBehavior>, ApiError> {
    raw.map(|p| {
        ProrationBehavior::parse(p).ok_or_else(|| {
            ApiError::validation(
                "proration_behavior",
                "must be create_prorations, always_invoice or none",
            )
        })
    })
    .transpose()
}

fn item_spec(
    i: usize,
    price: Option<&str>,
    plan: Option<&str>,
    quantity: Option<u32>,
) -> Result<ItemSpec, ApiError> {
    let what = match (price, plan) {
        (Some(p), None) => ItemRef::Price(
            PriceId::parse(p)
                .map_err(|e| ApiError::validation(format!("items[{i}].price"), e.to_string()))?,
        ),
        (None, Some(p)) => ItemRef::Plan(
            PlanId::parse(p)
                .map_err(|e| ApiError::validation(format!("items[{i}].plan"), e.to_string()))?,
        ),
        _ => {
            return Err(ApiError::validation(
                format!("items[{i}]"),
                "needs exactly one of price and plan",
            ));
        }
    };
    Ok(ItemSpec {
        what,
        quantity: quantity.unwrap_or(1),
    })
}

fn items(raw: &[SubscriptionItemIn]) -> Result<Vec<ItemSpec>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(i, item)| {
            item_spec(
                i,
                item.price.as_deref(),
                item.plan.as_deref(),
                item.quantity,
            )
        })
        .collect()
}

fn item_changes(raw: &[SubscriptionItemChangeIn]) -> Result<Vec<ItemChange>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(i, c)| {
            let id =
                c.id.as_deref()
                    .map(SubscriptionItemId::parse)
                    .transpose()
                    .map_err(|e| ApiError::validation(format!("items[{i}].id"), e.to_string()))?;
            match (id, c.deleted.unwrap_or(false)) {
                (Some(id), true)
                    if c.quantity.is_none() && c.price.is_none() && c.plan.is_none() =>
                {
                    Ok(ItemChange::Remove(id))
                }
                (Some(_), true) => Err(ApiError::validation(
                    format!("items[{i}]"),
                    "removes an item: give only `id` and `deleted`",
                )),
                (Some(id), false) if c.price.is_none() && c.plan.is_none() => {
                    let quantity = c.quantity.ok_or_else(|| {
                        ApiError::validation(format!("items[{i}].quantity"), "is required")
                    })?;
                    Ok(ItemChange::Quantity { id, quantity })
                }
                (Some(_), false) => Err(ApiError::validation(
                    format!("items[{i}]"),
                    "changes an item's quantity: a new price is a new item",
                )),
                (None, true) => Err(ApiError::validation(
                    format!("items[{i}].id"),
                    "is required to remove an item",
                )),
                (None, false) => Ok(ItemChange::Add(item_spec(
                    i,
                    c.price.as_deref(),
                    c.plan.as_deref(),
                    c.quantity,
                )?)),
            }
        })
        .collect()
}

#[OpenApi]
impl SubscriptionsApi {
    /// Create a subscription
    ///
    /// Without a trial the first period is invoiced at once: the subscription is `incomplete`
    /// until that invoice is paid (charged to the customer's default payment method by the
    /// worker fleet) and `incomplete_expired` after 23 hours unpaid; with `send_invoice` it is
    /// `active` at once. With a trial it is `trialing`, and periods start when the trial ends.
    #[oai(
        path = "/api/v1/subscriptions",
        method = "post",
        operation_id = "subscriptions.create",
        tag = "ApiTags::Billing"
    )]
    async fn create(
        &self,
        req: &Request,
        auth: Auth,
        body: JsonBody<SubscriptionIn>,
    ) -> Result<CreatedSubscription, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let b = body.0;
        let customer = CustomerId::parse(&b.customer)
            .map_err(|e| ApiError::validation("customer", e.to_string()))?;
        let items = items(b.items.as_deref().unwrap_or_default())?;
        let bundle = b
            .bundle
            .as_deref()
            .map(BundleId::parse)
            .transpose()
            .map_err(|e| ApiError::validation("bundle", e.to_string()))?;
        if bundle.is_some() && b.items.is_some() {
            return Err(ApiError::validation(
                "items",
                "cannot be given with bundle: the bundle's prices are the items",
            ));
        }
        let trial = match (b.trial_period_days, b.trial_end) {
            (Some(_), Some(_)) => {
                return Err(ApiError::validation(
                    "trial_end",
                    "cannot be given with trial_period_days",
                ));
            }
            (Some(d), None) => Trial::Days(d),
            (None, Some(end)) => Trial::Until(end),
            (None, None) => Trial::FromPrices,
        };
        let collection_method = match b.collection_method.as_deref() {
            None => CollectionMethod::ChargeAutomatically,
            Some(c) => CollectionMethod::parse(c).ok_or_else(|| {
                ApiError::validation(
                    "collection_method",
                    "must be charge_automatically or send_invoice",
                )
            })?,
        };
        let proration_behavior = proration(b.proration_behavior.as_deref())?
            .unwrap_or(ProrationBehavior::CreateProrations);
        let metadata = metadata(b.metadata.as_ref())?.unwrap_or_default();
        let coupon = b
            .coupon
            .as_deref()
            .map(CouponId::parse)
            .transpose()
            .map_err(|e| ApiError::validation("coupon", e.to_string()))?;
        let mut work = Work::begin(req).await?;
        let view = service::create_subscription(
            &mut work,
            ctx.scope(),
            SubscriptionSpec {
                customer,
                items: &items,
                bundle,
                trial,
                collection_method,
                days_until_due: b.days_until_due,
                proration_behavior,
                metadata: &metadata,
                coupon,
            },
        )
        .await?;
        let out = SubscriptionOut::from(view);
        note(req, |n| n.object_id = Some(out.id.clone()));
        Ok(CreatedSubscription::Created(Json(out)))
    }

    /// List subscriptions
    ///
    /// Newest first; optionally of one customer, in one status.
    #[oai(
        path = "/api/v1/subscriptions",
        method = "get",
        operation_id = "subscriptions.list",
        tag = "ApiTags::Billing"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn list(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Only this customer's (`cus_…`).
        customer: Query<Option<String>>,
        /// Only those in this status.
        status: Query<Option<String>>,
        /// 1 to 100; default 10.
        limit: Query<Option<i64>>,
        /// A subscription id: return older subscriptions (the next page).
        starting_after: Query<Option<String>>,
        /// A subscription id: return newer subscriptions (the previous page).
        ending_before: Query<Option<String>>,
    ) -> Result<Json<SubscriptionList>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let customer = customer
            .0
            .as_deref()
            .map(CustomerId::parse)
            .transpose()
            .map_err(|e| ApiError::validation("customer", e.to_string()))?;
        let status = status
            .0
            .as_deref()
            .map(|s| {
                SubscriptionStatus::parse(s)
                    .ok_or_else(|| ApiError::validation("status", "is not a subscription status"))
            })
            .transpose()?;
        let page = page_request(limit.0, starting_after.0, ending_before.0, |s| {
            SubscriptionId::parse(s).map(|id| id.as_uuid())
        })?;
        let page =
            service::list_subscriptions(&state.pool, ctx.scope(), customer, status, page).await?;
        Ok(Json(SubscriptionList {
            data: page.items.into_iter().map(SubscriptionOut::from).collect(),
            has_more: page.has_more,
        }))
    }

    /// Get a subscription
    #[oai(
        path = "/api/v1/subscriptions/:id",
        method = "get",
        operation_id = "subscriptions.get",
        tag = "ApiTags::Billing"
    )]
    async fn get(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
    ) -> Result<Json<SubscriptionOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = subscription_id(&id.0)?;
        let view = service::get_subscription(&state.pool, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }

    /// Update a subscription
    ///
    /// Schedule (or undo) a cancel at the end of the current period; change the default
    /// `proration_behavior` or the metadata.
    #[oai(
        path = "/api/v1/subscriptions/:id",
        method = "patch",
        operation_id = "subscriptions.update",
        tag = "ApiTags::Billing"
    )]
    async fn update(
        &self,
        req: &Request,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
        body: JsonBody<SubscriptionPatch>,
    ) -> Result<Json<SubscriptionOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = subscription_id(&id.0)?;
        let b = body.0;
        let proration_behavior = proration(b.proration_behavior.as_deref())?;
        let metadata = metadata(b.metadata.as_ref())?;
        let changes = b.items.as_deref().map(item_changes).transpose()?;
        if changes.is_none() && b.proration_date.is_some() {
            return Err(ApiError::validation(
                "proration_date",
                "applies only to a change of items",
            ));
        }
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let mut view = service::update_subscription(
            &mut work,
            ctx.scope(),
            id,
            SubscriptionChanges {
                cancel_at_period_end: b.cancel_at_period_end,
                // With items, it says how this change is billed, not the default.
                proration_behavior: proration_behavior.filter(|_| changes.is_none()),
                metadata: metadata.as_ref(),
            },
        )
        .await?;
        if let Some(changes) = &changes {
            view = service::change_items(
                &mut work,
                ctx.scope(),
                id,
                ItemsChange {
                    changes,
                    proration_behavior,
                    proration_date: b.proration_date,
                },
            )
            .await?
            .subscription;
        }
        Ok(Json(view.into()))
    }

    /// Cancel a subscription now
    ///
    /// Nothing more is invoiced or charged; an `incomplete` subscription's first invoice is
    /// voided. With `prorate=true`, the unused time of the current period is credited by
    /// credit notes on the invoices that billed it, with their tax (lowering what an invoice
    /// owes, or as the customer's credit once paid). To cancel at the end of the period
    /// instead, set `cancel_at_period_end`.
    #[oai(
        path = "/api/v1/subscriptions/:id/cancel",
        method = "post",
        operation_id = "subscriptions.cancel",
        tag = "ApiTags::Billing"
    )]
    async fn cancel(
        &self,
        req: &Request,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
        /// `true`: credit the unused time of the current period. Default `false`.
        prorate: Query<Option<bool>>,
    ) -> Result<Json<SubscriptionOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = subscription_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view =
            service::cancel_subscription(&mut work, ctx.scope(), id, prorate.0.unwrap_or(false))
                .await?;
        Ok(Json(view.into()))
    }

    /// Pause collection
    ///
    /// Periods go on; none is invoiced while paused.
    #[oai(
        path = "/api/v1/subscriptions/:id/pause",
        method = "post",
        operation_id = "subscriptions.pause",
        tag = "ApiTags::Billing"
    )]
    async fn pause(
        &self,
        req: &Request,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
    ) -> Result<Json<SubscriptionOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = subscription_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = service::pause_subscription(&mut work, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }

    /// Resume collection
    ///
    /// The next period is invoiced when it starts.
    #[oai(
        path = "/api/v1/subscriptions/:id/resume",
        method = "post",
        operation_id = "subscriptions.resume",
        tag = "ApiTags::Billing"
    )]
    async fn resume(
        &self,
        req: &Request,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
    ) -> Result<Json<SubscriptionOut>, ApiError> {
        let ctx = auth.require(Permission::WriteBilling)?;
        let id = subscription_id(&id.0)?;
        note(req, |n| n.object_id = Some(id.to_string()));
        let mut work = Work::begin(req).await?;
        let view = service::resume_subscription(&mut work, ctx.scope(), id).await?;
        Ok(Json(view.into()))
    }

    /// Preview a change
    ///
    /// The invoice a change of items would make at once (`always_invoice`), or else the
    /// upcoming invoice with the change's proration lines. Nothing is written; give
    /// `proration_date` to see the change as of that instant.
    #[oai(
        path = "/api/v1/subscriptions/:id/preview",
        method = "post",
        operation_id = "subscriptions.preview",
        tag = "ApiTags::Billing"
    )]
    async fn preview(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
        body: JsonBody<SubscriptionPreviewIn>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = subscription_id(&id.0)?;
        let b = body.0;
        let proration_behavior = proration(b.proration_behavior.as_deref())?;
        let changes = item_changes(&b.items)?;
        let view = service::preview_change(
            &state.pool,
            state.clock.as_ref(),
            ctx.scope(),
            id,
            ItemsChange {
                changes: &changes,
                proration_behavior,
                proration_date: b.proration_date,
            },
        )
        .await?;
        Ok(Json(view.into()))
    }

    /// Get the upcoming invoice
    ///
    /// What the next renewal would bill now: the next period's items and the proration lines
    /// waiting for it, as a draft without a number.
    #[oai(
        path = "/api/v1/subscriptions/:id/upcoming-invoice",
        method = "get",
        operation_id = "subscriptions.upcoming_invoice",
        tag = "ApiTags::Billing"
    )]
    async fn upcoming(
        &self,
        state: poem::web::Data<&AppState>,
        auth: Auth,
        /// Subscription id (`sub_…`).
        id: Path<String>,
    ) -> Result<Json<InvoiceOut>, ApiError> {
        let ctx = auth.require(Permission::ReadBilling)?;
        let id = subscription_id(&id.0)?;
        let view =
            service::get_upcoming_invoice(&state.pool, state.clock.as_ref(), ctx.scope(), id)
                .await?;
        Ok(Json(view.into()))
    }
}
