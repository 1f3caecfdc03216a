//! Subscriptions: created for a customer with items of one currency and interval, billed per
//! period from their anchor in the customer's timezone, and changed only through the status
//! machine of [`crate::domain::subscription`]. Every status change records its event.
//!
//! Time is driven by jobs queued in the transaction that makes them due: a subscription's
//! period end queues `subscription.renew` for (subscription, period), its first invoice queues
//! `invoice.pay` for (invoice, attempt 1) and `subscription.expire_incomplete` 23 hours later.
//! Each job re-reads the subscription under its lock and does nothing when what it was queued
//! for no longer holds (a canceled subscription, a period already renewed).

use std::collections::HashMap;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events, invoices};
use crate::{
    db::{
        self,
        pagination::{Page, PageRequest},
        subscriptions::{ItemRow, NewItem, SubscriptionRow},
    },
    domain::{
        catalog::Metadata,
        interval::Interval,
        invoice::InvoiceStatus,
        period::{Anchor, Period},
        subscription::{CollectionMethod, ProrationBehavior, SubscriptionStatus, Transition},
    },
    ids::{
        BundleId, CouponId, CustomerId, InvoiceId, InvoiceItemId, InvoiceLineId, PlanId, PriceId,
        SubscriptionId, SubscriptionItemId,
    },
    jobs::{self, Job},
    tenancy::Scope,
    uow::UnitOfWork,
};

const WHAT: &str = "subscription";

/// How long a first invoice may stay unpaid before the subscription expires.
pub const INCOMPLETE_FOR: Duration = Duration::hours(23);
/// How long before a trial ends `customer.subscription.trial_will_end` is recorded.
pub const TRIAL_NOTICE: Duration = Duration::days(3);
/// The longest trial.
pub const MAX_TRIAL_DAYS: i64 = 730;
/// Items per subscription, as Stripe allows.
pub const MAX_ITEMS: usize = 20;
/// The largest quantity of an item.
pub const MAX_QUANTITY: u32 = 1_000_000;

/// What an item bills: a price, or a plan (its price).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemRef {
    Price(PriceId),
    Plan(PlanId),
}

#[derive(Debug, Clone, Copy)]
pub struct ItemSpec {
    pub what: ItemRef,
    pub quantity: u32,
}

/// The trial a subscription starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    /// The prices' own trial (`trial_days` of a plan), if any.
    FromPrices,
    Days(u32),
    Until(DateTime<Utc>),
}

#[derive(Debug)]
pub struct SubscriptionSpec<'a> {
    pub customer: CustomerId,
    /// Empty with a bundle (its prices are the items).
    pub items: &'a [ItemSpec],
    /// A bundle to subscribe to: its prices and quantities, its discount on every period.
    pub bundle: Option<BundleId>,
    pub trial: Trial,
    pub collection_method: CollectionMethod,
    /// For `send_invoice`: days from finalization until an invoice is due (default 30).
    pub days_until_due: Option<u32>,
    pub proration_behavior: ProrationBehavior,
    pub metadata: &'a Metadata,
    /// A coupon to redeem: it discounts the period invoices while its duration lasts.
    pub coupon: Option<CouponId>,
}

/// A subscription with its items.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub subscription: SubscriptionRow,
    pub items: Vec<ItemRow>,
}

impl SubscriptionView {
    pub fn to_json(&self) -> serde_json::Value {
        self.subscription.to_json(&self.items)
    }
}

/// The billing terms every item of a subscription shares.
struct Terms {
    currency: String,
    interval: Interval,
    trial_days: i32,
}

/// Resolves plans to their prices and checks that every price can be subscribed to together.
async fn resolve_items(
    uow: &mut UnitOfWork,
    scope: Scope,
    specs: &[ItemSpec],
) -> ServiceResult<(Vec<NewItem>, Terms)> {
    if specs.is_empty() || specs.len() > MAX_ITEMS {
        return Err(ServiceError::invalid(
            "items",
            format!("must list 1 to {MAX_ITEMS} items"),
        ));
    }
    let plans: Vec<uuid::Uuid> = specs
        .iter()
        .filter_map(|s| match s.what {
            ItemRef::Plan(p) => Some(p.as_uuid()),
            ItemRef::Price(_) => None,
        })
        .collect();
    let plan_prices: HashMap<uuid::Uuid, PriceId> =
        db::subscriptions::plan_prices(uow.conn(), scope, &plans)
            .await?
            .into_iter()
            .collect();
    let mut prices = Vec::with_capacity(specs.len());
    for (i, s) in specs.iter().enumerate() {
        let price = match s.what {
            ItemRef::Price(p) => p,
            ItemRef::Plan(p) => *plan_prices
                .get(&p.as_uuid())
                .ok_or_else(|| ServiceError::invalid(format!("items[{i}].plan"), "no such plan"))?,
        };
        if prices.contains(&price) {
            return Err(ServiceError::invalid(
                format!("items[{i}]"),
                "bills the same price as another item",
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&s.quantity) {
            return Err(ServiceError::invalid(
                format!("items[{i}].quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        prices.push(price);
    }
    let ids: Vec<uuid::Uuid> = prices.iter().map(|p| p.as_uuid()).collect();
    let terms: HashMap<PriceId, db::subscriptions::PriceTerms> =
        db::subscriptions::price_terms(uow.conn(), scope, &ids)
            .await?
            .into_iter()
            .map(|t| (t.id, t))
            .collect();
    let mut shared: Option<Terms> = None;
    let mut items = Vec::with_capacity(specs.len());
    for (i, (price, spec)) in prices.iter().zip(specs).enumerate() {
        let field = match spec.what {
            ItemRef::Price(_) => format!("items[{i}].price"),
            ItemRef::Plan(_) => format!("items[{i}].plan"),
        };
        let t = terms
            .get(price)
            .ok_or_else(|| ServiceError::invalid(&field, "no such price"))?;
        if !t.active {
            return Err(ServiceError::invalid(&field, "is archived"));
        }
        if t.metered && spec.quantity != 1 {
            return Err(ServiceError::invalid(
                format!("items[{i}].quantity"),
                "must be 1 for a metered price: its usage sets what is billed",
            ));
        }
        let interval = match (t.interval.as_deref(), t.interval_count) {
            (Some(unit), Some(count)) => Interval::from_stored(unit, count)
                .map_err(|e| ServiceError::internal(format!("stored interval: {e}")))?,
            _ => {
                return Err(ServiceError::invalid(
                    &field,
                    "is a one-time price: a subscription needs recurring prices",
                ));
            }
        };
        match &mut shared {
            None => {
                shared = Some(Terms {
                    currency: t.currency.clone(),
                    interval,
                    trial_days: t.trial_days,
                })
            }
            Some(s) if s.currency != t.currency => {
                return Err(ServiceError::invalid(&field, "has another currency"));
            }
            Some(s) if s.interval != interval => {
                return Err(ServiceError::invalid(&field, "recurs differently"));
            }
            Some(s) => s.trial_days = s.trial_days.max(t.trial_days),
        }
        items.push(NewItem {
            id: SubscriptionItemId::new(),
            price_id: *price,
            quantity: i64::from(spec.quantity),
        });
    }
    let terms = shared.ok_or_else(|| ServiceError::invalid("items", "must not be empty"))?;
    Ok((items, terms))
}

fn parse_tz(name: &str) -> ServiceResult<chrono_tz::Tz> {
    name.parse()
        .map_err(|_| ServiceError::internal(format!("stored timezone `{name}`")))
}

fn interval_of(sub: &SubscriptionRow) -> ServiceResult<Interval> {
    Interval::from_stored(&sub.interval, sub.interval_count)
        .map_err(|e| ServiceError::internal(format!("stored interval: {e}")))
}

fn anchor_of(sub: &SubscriptionRow) -> ServiceResult<Anchor> {
    Ok(Anchor::new(
        sub.billing_cycle_anchor,
        parse_tz(&sub.timezone)?,
    ))
}

fn period_of(anchor: Anchor, interval: Interval, n: i32) -> ServiceResult<Period> {
    u32::try_from(n)
        .ok()
        .and_then(|n| anchor.period(interval, n))
        .ok_or_else(|| ServiceError::internal("a period beyond the calendar"))
}

/// Redeems a coupon (locked, so that its limit holds under concurrency): it must be
/// redeemable now, and an amount off must be in the subscription's currency.
pub(crate) async fn redeem_coupon(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: CouponId,
    currency: &str,
    now: DateTime<Utc>,
) -> ServiceResult<()> {
    let coupon = db::coupons::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::unknown("coupon", "coupon"))?;
    crate::domain::coupon::redeemable(
        now,
        coupon.redeem_by,
        coupon.max_redemptions,
        coupon.times_redeemed,
    )
    .map_err(|e| ServiceError::invalid("coupon", e.to_string()))?;
    if coupon.currency.as_deref().is_some_and(|c| c != currency) {
        return Err(ServiceError::invalid(
            "coupon",
            format!("takes an amount off in another currency than {currency}"),
        ));
    }
    db::coupons::redeem(uow.conn(), scope, id, now).await?;
    Ok(())
}

/// The renewal of the period that ends now, due at its end.
pub(crate) fn renewal(scope: Scope, sub: &SubscriptionRow) -> jobs::NewJob {
    let job = Job::RenewSubscription {
        subscription: sub.id,
        period_start: sub.current_period_end,
    }
    .to_new(Some(scope), sub.current_period_end);
    on_clock(job, sub)
}

/// Queues the first charge of a new invoice of `sub`, when there is something to charge
/// automatically.
async fn queue_charge(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    invoice: &db::invoices::InvoiceRow,
) -> ServiceResult<()> {
    let now = uow.now();
    if let Some(job) = first_charge(scope, sub, invoice, now) {
        jobs::enqueue(uow.conn(), &[job], now).await?;
    }
    Ok(())
}

/// What follows a new invoice of `sub` that is owed: its first charge, due at `now`, when it
/// is charged automatically; its overdue check at its due date when it is sent for payment.
pub(crate) fn first_charge(
    scope: Scope,
    sub: &SubscriptionRow,
    invoice: &db::invoices::InvoiceRow,
    now: DateTime<Utc>,
) -> Option<jobs::NewJob> {
    if !invoice.status.is_payable() || invoice.amount_remaining == 0 {
        return None;
    }
    if sub.collection_method != CollectionMethod::ChargeAutomatically.as_str() {
        let due = invoice.due_date?;
        let job = Job::InvoiceOverdue {
            invoice: invoice.id,
        };
        return Some(on_clock(job.to_new(Some(scope), due), sub));
    }
    let job = Job::PayInvoice {
        invoice: invoice.id,
        attempt: 1,
    };
    Some(on_clock(job.to_new(Some(scope), now), sub))
}

/// A job about `sub` waits for its test clock's time, when it has a clock.
pub(crate) fn on_clock(job: jobs::NewJob, sub: &SubscriptionRow) -> jobs::NewJob {
    job.on_clock(sub.test_clock_id.map(|c| c.as_uuid()))
}

/// Moves the unit of work to the time of the customer's test clock, if it has one; returns
/// that time.
pub(crate) async fn at_clock_time(
    uow: &mut UnitOfWork,
    scope: Scope,
    customer: CustomerId,
) -> ServiceResult<Option<DateTime<Utc>>> {
    let Some(clock) = db::test_clocks::of_customer(uow.conn(), scope, customer).await? else {
        return Ok(None);
    };
    // Work done while the clock advances happens at the time the advance has reached.
    uow.travel_to(clock.frozen_time);
    Ok(Some(clock.frozen_time))
}

/// Creates a subscription. Without a trial its first period is invoiced at once: paid when
/// nothing is due; otherwise `incomplete` until the charge succeeds (charge automatically) or
/// `active` with the invoice sent (send invoice). With a trial it is `trialing` until the trial
/// ends, and the first period starts then.
pub async fn create_subscription(
    uow: &mut UnitOfWork,
    scope: Scope,
    spec: SubscriptionSpec<'_>,
) -> ServiceResult<SubscriptionView> {
    let now = uow.now().trunc_subsecs(0);
    let days_until_due = match (spec.collection_method, spec.days_until_due) {
        (CollectionMethod::ChargeAutomatically, Some(_)) => {
            return Err(ServiceError::invalid(
                "days_until_due",
                "applies only to collection_method send_invoice",
            ));
        }
        (CollectionMethod::ChargeAutomatically, None) => None,
        (CollectionMethod::SendInvoice, d) => {
            let d = d.unwrap_or(30);
            if d > 365 {
                return Err(ServiceError::invalid(
                    "days_until_due",
                    "must be between 0 and 365",
                ));
            }
            Some(i32::try_from(d).unwrap_or(30))
        }
    };
    let customer = db::customers::lock(uow.conn(), scope, spec.customer)
        .await
        .map_err(ServiceError::unknown("customer", "customer"))?;
    // A test clock's customer lives in the clock's time.
    let now = match at_clock_time(uow, scope, customer.id).await? {
        Some(t) => t.trunc_subsecs(0),
        None => now,
    };
    // From a bundle: its prices and quantities, and its discount.
    let (bundle, bundle_items) = match spec.bundle {
        None => (None, Vec::new()),
        Some(_) if !spec.items.is_empty() => {
            return Err(ServiceError::invalid(
                "items",
                "cannot be given with bundle: the bundle's prices are the items",
            ));
        }
        Some(id) => {
            let (row, members) = db::bundles::with_items(uow.conn(), scope, id)
                .await
                .map_err(ServiceError::unknown("bundle", "bundle"))?;
            if !row.active {
                return Err(ServiceError::invalid("bundle", "is archived"));
            }
            let specs = members
                .iter()
                .map(|m| ItemSpec {
                    what: ItemRef::Price(m.price_id),
                    quantity: u32::try_from(m.quantity).unwrap_or(1),
                })
                .collect();
            (Some(row), specs)
        }
    };
    let item_specs = if bundle.is_some() {
        &bundle_items[..]
    } else {
        spec.items
    };
    let (items, terms) = resolve_items(uow, scope, item_specs).await?;
    if let Some(c) = customer.currency.as_deref()
        && c != terms.currency
    {
        return Err(ServiceError::invalid(
            "items",
            format!(
                "are priced in {}, and the customer pays in {c}",
                terms.currency
            ),
        ));
    }
    if customer.currency.is_none() {
        // A customer pays in one currency: the first subscription's, from now on.
        db::customers::update(
            uow.conn(),
            scope,
            customer.id,
            db::customers::CustomerChanges {
                currency: Some(&terms.currency),
                ..Default::default()
            },
            now,
        )
        .await?;
    }
    let trial_end = match spec.trial {
        Trial::FromPrices if terms.trial_days > 0 => {
            Some(now + Duration::days(i64::from(terms.trial_days)))
        }
        Trial::FromPrices | Trial::Days(0) => None,
        Trial::Days(d) if i64::from(d) > MAX_TRIAL_DAYS => {
            return Err(ServiceError::invalid(
                "trial_period_days",
                format!("must be at most {MAX_TRIAL_DAYS}"),
            ));
        }
        Trial::Days(d) => Some(now + Duration::days(i64::from(d))),
        Trial::Until(end) if end <= now => {
            return Err(ServiceError::invalid("trial_end", "must be in the future"));
        }
        Trial::Until(end) if end > now + Duration::days(MAX_TRIAL_DAYS) => {
            return Err(ServiceError::invalid(
                "trial_end",
                format!("must be at most {MAX_TRIAL_DAYS} days ahead"),
            ));
        }
        Trial::Until(end) => Some(end.trunc_subsecs(0)),
    };
    if let Some(coupon) = spec.coupon {
        redeem_coupon(uow, scope, coupon, &terms.currency, now).await?;
    }
    let tz = parse_tz(&customer.timezone)?;
    // Periods count from the trial's end when there is one.
    let anchor = Anchor::new(trial_end.unwrap_or(now), tz);
    let first = period_of(anchor, terms.interval, 0)?;
    let (status, index, period) = match trial_end {
        Some(end) => (SubscriptionStatus::Trialing, -1, Period { start: now, end }),
        None => (SubscriptionStatus::Incomplete, 0, first),
    };
    let mut sub = SubscriptionRow {
        id: SubscriptionId::new(),
        tenant_id: scope.tenant_id(),
        livemode: scope.livemode(),
        customer_id: customer.id,
        status,
        currency: terms.currency.clone(),
        interval: terms.interval.unit().as_str().to_owned(),
        interval_count: i32::try_from(terms.interval.count()).unwrap_or(1),
        timezone: customer.timezone.clone(),
        billing_cycle_anchor: anchor.instant(),
        current_period_index: index,
        current_period_start: period.start,
        current_period_end: period.end,
        trial_start: trial_end.map(|_| now),
        trial_end,
        collection_method: spec.collection_method.as_str().to_owned(),
        days_until_due,
        proration_behavior: spec.proration_behavior.as_str().to_owned(),
        cancel_at_period_end: false,
        canceled_at: None,
        ended_at: None,
        latest_invoice_id: None,
        metadata: spec.metadata.to_json(),
        test_clock_id: customer.test_clock_id,
        coupon_id: spec.coupon,
        coupon_redeemed_at: spec.coupon.map(|_| now),
        coupon_invoices: 0,
        bundle_id: bundle.as_ref().map(|b| b.id),
        bundle_discount_bps: bundle.as_ref().map_or(0, |b| b.discount_bps),
        usage_billed_until: None,
        usage_draft_until: None,
        created_at: now,
        updated_at: now,
    };
    db::subscriptions::insert(uow.conn(), scope, &sub).await?;
    db::subscriptions::insert_items(uow.conn(), scope, sub.id, &items, now).await?;
    let items = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
    super::usage::one_item_per_metric(&items)?;
    let mut due = vec![renewal(scope, &sub)];
    if let Some(end) = trial_end {
        // Three days ahead, or now for a shorter trial.
        let job = Job::TrialWillEnd {
            subscription: sub.id,
            trial_end: end,
        };
        due.push(job.to_new(Some(scope), (end - TRIAL_NOTICE).max(now)));
    }
    if trial_end.is_none() {
        let (invoice, _) =
            invoices::invoice_period(uow, scope, &mut sub, &items, first, "subscription_create")
                .await?;
        sub.latest_invoice_id = Some(invoice.id);
        let charge = spec.collection_method == CollectionMethod::ChargeAutomatically;
        if invoice.status == InvoiceStatus::Paid || !charge {
            sub.status = SubscriptionStatus::Active;
            // Sent for payment: its overdue check at its due date.
            due.extend(first_charge(scope, &sub, &invoice, now));
        } else {
            due.push(
                Job::PayInvoice {
                    invoice: invoice.id,
                    attempt: 1,
                }
                .to_new(Some(scope), now),
            );
            due.push(
                Job::ExpireIncomplete {
                    subscription: sub.id,
                }
                .to_new(Some(scope), now + INCOMPLETE_FOR),
            );
        }
        db::subscriptions::save(uow.conn(), scope, &sub).await?;
    }
    let due: Vec<jobs::NewJob> = due.into_iter().map(|j| on_clock(j, &sub)).collect();
    jobs::enqueue(uow.conn(), &due, now).await?;
    let view = SubscriptionView {
        subscription: sub,
        items,
    };
    events::record(uow, scope, "customer.subscription.created", view.to_json()).await?;
    Ok(view)
}

async fn view(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: SubscriptionRow,
) -> ServiceResult<SubscriptionView> {
    let items = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
    Ok(SubscriptionView {
        subscription: sub,
        items,
    })
}

/// Saves a status change and records its event.
pub(crate) async fn move_to(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &mut SubscriptionRow,
    next: SubscriptionStatus,
    transition: Transition,
) -> ServiceResult<()> {
    let now = uow.now();
    let changed = sub.status != next;
    sub.status = next;
    sub.updated_at = now;
    if next == SubscriptionStatus::Canceled || next == SubscriptionStatus::IncompleteExpired {
        sub.canceled_at.get_or_insert(now);
        sub.ended_at = Some(now);
        sub.cancel_at_period_end = false;
    }
    db::subscriptions::save(uow.conn(), scope, sub).await?;
    if changed {
        let v = view(uow, scope, sub.clone()).await?;
        events::record(uow, scope, next.event_type(transition), v.to_json()).await?;
    }
    Ok(())
}

pub async fn get_subscription(
    pool: &PgPool,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<SubscriptionView> {
    let mut conn = pool.acquire().await.map_err(db::DbError::from)?;
    let subscription = db::subscriptions::get(&mut conn, scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    let items = db::subscriptions::items(&mut *conn, scope, &[id.as_uuid()]).await?;
    Ok(SubscriptionView {
        subscription,
        items,
    })
}

pub async fn list_subscriptions(
    pool: &PgPool,
    scope: Scope,
    customer: Option<CustomerId>,
    status: Option<SubscriptionStatus>,
    page: PageRequest,
) -> ServiceResult<Page<SubscriptionView>> {
    let page = db::subscriptions::list(pool, scope, customer, status, page).await?;
    let ids: Vec<uuid::Uuid> = page.items.iter().map(|s| s.id.as_uuid()).collect();
    let mut items: HashMap<SubscriptionId, Vec<ItemRow>> = HashMap::new();
    for i in db::subscriptions::items(pool, scope, &ids).await? {
        items.entry(i.subscription_id).or_default().push(i);
    }
    Ok(Page {
        has_more: page.has_more,
        items: page
            .items
            .into_iter()
            .map(|s| SubscriptionView {
                items: items.remove(&s.id).unwrap_or_default(),
                subscription: s,
            })
            .collect(),
    })
}

fn illegal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::conflict("invalid_subscription_status", e.to_string())
}

/// Locks a subscription for a change on request, made at its test clock's time when it has
/// one.
async fn lock(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<SubscriptionRow> {
    let sub = db::subscriptions::lock(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if sub.test_clock_id.is_some() {
        at_clock_time(uow, scope, sub.customer_id).await?;
    }
    Ok(sub)
}

/// Cancels now: nothing more is invoiced or charged. An incomplete subscription's first
/// invoice is voided with it. With `prorate`, the time of the period left unused is credited
/// by credit notes on the invoices that billed it (see [`credit_unused_time`]).
pub async fn cancel_subscription(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
    prorate: bool,
) -> ServiceResult<SubscriptionView> {
    let mut sub = lock(uow, scope, id).await?;
    let next = sub.status.apply(Transition::Cancel).map_err(illegal)?;
    if sub.status == SubscriptionStatus::Incomplete {
        void_first_invoice(uow, scope, &sub).await?;
    }
    // An incomplete subscription never started: its usage is not billed.
    let ends = (sub.status != SubscriptionStatus::Incomplete).then(|| uow.now());
    final_invoice(uow, scope, &mut sub, ends).await?;
    if prorate
        && matches!(
            sub.status,
            SubscriptionStatus::Active | SubscriptionStatus::PastDue
        )
    {
        credit_unused_time(uow, scope, &sub).await?;
    }
    move_to(uow, scope, &mut sub, next, Transition::Cancel).await?;
    view(uow, scope, sub).await
}

/// What was billed for an item over the period that ends at `period_end` and is unused from
/// `at` on: each billed line (after discount) with its unused part, rounded on its own.
async fn unused_lines(
    uow: &mut UnitOfWork,
    scope: Scope,
    item: SubscriptionItemId,
    period_end: DateTime<Utc>,
    at: DateTime<Utc>,
) -> ServiceResult<Vec<(db::invoices::BilledLine, i64)>> {
    use crate::domain::period::prorated;
    let billed = db::invoices::billed_for_item(uow.conn(), scope, item, period_end).await?;
    Ok(billed
        .into_iter()
        .map(|b| {
            let unused = prorated(
                b.amount,
                (b.period_end - at.max(b.period_start)).num_seconds(),
                (b.period_end - b.period_start).num_seconds(),
            );
            (b, unused)
        })
        .collect())
}

/// What was billed for an item over the period that ends at `period_end` and is unused from
/// `at` on (see [`unused_lines`]).
async fn unused_billed(
    uow: &mut UnitOfWork,
    scope: Scope,
    item: SubscriptionItemId,
    period_end: DateTime<Utc>,
    at: DateTime<Utc>,
) -> ServiceResult<i64> {
    Ok(unused_lines(uow, scope, item, period_end, at)
        .await?
        .iter()
        .map(|(_, unused)| unused)
        .sum())
}

/// An invoice a prorated cancel credits, and the credit note it makes for it.
struct UnusedCredit {
    invoice: db::invoices::InvoiceRow,
    /// What the note may come to, tax included; `None`: the invoice takes no note.
    budget: Option<i64>,
    lines: Vec<db::invoices::LineRow>,
    left: HashMap<InvoiceLineId, i64>,
    net: i64,
    credited: i64,
    on_lines: i64,
    custom: i64,
    /// (description, the invoice line credited or none, amount)
    credits: Vec<(String, Option<InvoiceLineId>, i64)>,
}

impl UnusedCredit {
    async fn of(
        uow: &mut UnitOfWork,
        scope: Scope,
        invoice: db::invoices::InvoiceRow,
    ) -> ServiceResult<Self> {
        use crate::domain::invoice::InvoiceStatus;
        let left = invoice.total.max(0) - invoice.amount_credited;
        let budget = match invoice.status {
            InvoiceStatus::Paid => Some(left),
            InvoiceStatus::Open | InvoiceStatus::Uncollectible => {
                Some(left.min(invoice.amount_remaining))
            }
            _ => None,
        };
        let l = super::credit_notes::lines_left(uow, scope, invoice.id).await?;
        Ok(Self {
            invoice,
            budget,
            lines: l.lines,
            left: l.left,
            net: l.net,
            credited: l.credited,
            on_lines: 0,
            custom: 0,
            credits: Vec::new(),
        })
    }

    /// What the note comes to with `on_lines` of the invoice's lines and `custom` besides: the
    /// invoice's tax on what it credits of its lines is given back with them.
    fn with_tax(&self, on_lines: i64, custom: i64) -> ServiceResult<i64> {
        let (tax, _, _) = super::tax_rates::credited(
            &self.invoice.tax_amounts,
            self.net,
            self.credited,
            self.credited + on_lines,
        )?;
        Ok(on_lines + custom + tax)
    }

    /// Credits the most of `amount` the invoice's `line` has left that fits the note, its tax
    /// included (the total grows with it); returns what it credited.
    fn on_line(
        &mut self,
        line: InvoiceLineId,
        description: &str,
        amount: i64,
    ) -> ServiceResult<i64> {
        let Some(budget) = self.budget else {
            return Ok(0);
        };
        let rest = self.left.get(&line).copied().unwrap_or(0);
        let (mut lo, mut hi) = (0i64, amount.min(rest).max(0));
        while lo < hi {
            let mid = lo + (hi - lo + 1) / 2;
            if self.with_tax(self.on_lines + mid, self.custom)? <= budget {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo > 0 {
            self.on_lines += lo;
            self.left.insert(line, rest - lo);
            self.credits.push((description.to_owned(), Some(line), lo));
        }
        Ok(lo)
    }

    /// Credits the most of `amount` that fits the note as a custom line (no tax).
    fn custom(&mut self, description: String, amount: i64) -> ServiceResult<()> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        let rest = amount.min(budget - self.with_tax(self.on_lines, self.custom)?);
        if rest > 0 {
            self.custom += rest;
            self.credits.push((description, None, rest));
        }
        Ok(())
    }
}

/// Credits what was billed for the rest of the current period, item by item, by the same
/// rule as a change's prorations (each billed line of the period, credited for its unused
/// seconds, rounded on its own): a credit note on each invoice that billed it. On an open
/// invoice a note lowers what is owed; on a paid one it is the customer's credit.
///
/// An item's credit is taken from the lines that billed it, the latest first (the time a
/// change billed anew is what the cancel leaves unused; the change credited the time billed
/// before it), each for at most its own unused part, so that each note gives back its
/// invoice's tax on what it credits. What they cannot hold (past what a change's invoice has
/// left to credit once it netted the change's credit) goes on the period invoice's lines of
/// the subscription's items, with its tax; only what is left then (time waiting for an
/// invoice) is a custom line, without tax. A note, tax included, never credits more than its
/// invoice has left to credit (or, open, still owes): the credit is cut to fit.
async fn credit_unused_time(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
) -> ServiceResult<()> {
    use super::credit_notes::{self, CreditReason, NoteLine, NoteSpec, Split};
    let at = uow.now();
    if at >= sub.current_period_end {
        return Ok(());
    }
    let Some(invoice) =
        db::invoices::of_period(uow.conn(), scope, sub.id, sub.current_period_start).await?
    else {
        return Ok(());
    };
    // The period's invoice first: it takes what no line can.
    let mut notes = vec![UnusedCredit::of(uow, scope, invoice).await?];
    let date = at.format("%Y-%m-%d");
    let items = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
    // (description, what the lines that billed it could not hold) of each item.
    let mut leftovers: Vec<(String, i64)> = Vec::new();
    for item in &items {
        let billed = unused_lines(uow, scope, item.id, sub.current_period_end, at).await?;
        let mut unused: i64 = billed.iter().map(|(_, u)| u).sum();
        if unused <= 0 {
            continue;
        }
        let description = format!("Unused time on {} after {date}", invoices::item_label(item));
        let mut on_lines: Vec<(InvoiceId, InvoiceLineId, DateTime<Utc>, i64)> = billed
            .iter()
            .filter_map(|(b, u)| Some((b.invoice_id?, b.line_id?, b.period_start, *u)))
            .filter(|(.., u)| *u > 0)
            .collect();
        // The latest first; a change's lines start after the period's.
        on_lines.sort_by_key(|(_, _, start, _)| std::cmp::Reverse(*start));
        for (invoice, line, _, part) in on_lines {
            if unused <= 0 {
                break;
            }
            let n = match notes.iter().position(|n| n.invoice.id == invoice) {
                Some(i) => i,
                None => {
                    let row = db::invoices::get(uow.conn(), scope, invoice).await?;
                    notes.push(UnusedCredit::of(uow, scope, row).await?);
                    notes.len() - 1
                }
            };
            unused -= notes[n].on_line(line, &description, unused.min(part))?;
        }
        if unused > 0 {
            leftovers.push((description, unused));
        }
    }
    // What the lines that billed it could not hold, once every item took its own: the
    // period's lines of the subscription's items (a change that billed this time credited
    // theirs on its own invoice, netted there), then a custom line.
    let period_lines: Vec<InvoiceLineId> = notes[0]
        .lines
        .iter()
        .filter(|l| l.subscription_item_id.is_some() && !l.proration)
        .map(|l| l.id)
        .collect();
    for (description, mut unused) in leftovers {
        for line in &period_lines {
            if unused <= 0 {
                break;
            }
            unused -= notes[0].on_line(*line, &description, unused)?;
        }
        if unused > 0 {
            notes[0].custom(description, unused)?;
        }
    }
    for note in notes {
        if note.credits.is_empty() {
            continue;
        }
        let lines = note
            .credits
            .iter()
            .map(|(description, line, amount)| match line {
                Some(line) => NoteLine::Invoiced {
                    line: *line,
                    amount: Some(*amount),
                    description: Some(description),
                },
                None => NoteLine::Custom {
                    description,
                    amount: *amount,
                },
            })
            .collect();
        credit_notes::create_credit_note(
            uow,
            scope,
            NoteSpec {
                invoice: note.invoice.id,
                lines,
                reason: Some(CreditReason::OrderChange),
                memo: Some("Unused time after the subscription was canceled"),
                split: Split::default(),
                metadata: &Metadata::default(),
            },
        )
        .await?;
    }
    Ok(())
}

/// Invoices what a subscription that ends at `ends` still owes: the lines waiting for its next
/// invoice (a change's prorations) and the usage of its metered items up to its end. A last
/// invoice, charged like the others.
async fn final_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &mut SubscriptionRow,
    ends: Option<DateTime<Utc>>,
) -> ServiceResult<()> {
    // A renewal invoice still a draft bills the usage before its period first.
    super::renewals::finalize_held(uow, scope, sub).await?;
    if let Some(invoice) = invoices::invoice_pending(uow, scope, sub, ends).await? {
        sub.latest_invoice_id = Some(invoice.id);
        queue_charge(uow, scope, sub, &invoice).await?;
    }
    // Its usage up to its end is on that invoice: events for it are refused (the caller saves).
    if ends.is_some() {
        sub.usage_billed_until = sub.usage_billed_until.max(ends);
    }
    Ok(())
}

async fn void_first_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
) -> ServiceResult<()> {
    if let Some(invoice) = sub.latest_invoice_id {
        let mut invoice = db::invoices::lock(uow.conn(), scope, invoice).await?;
        if invoice.status.is_payable() {
            invoices::void_locked(uow, scope, &mut invoice).await?;
        }
    }
    Ok(())
}

/// Changes that need no new invoice.
#[derive(Debug, Default)]
pub struct SubscriptionChanges<'a> {
    pub cancel_at_period_end: Option<bool>,
    pub proration_behavior: Option<ProrationBehavior>,
    pub metadata: Option<&'a Metadata>,
}

/// Schedules (or undoes) a cancel at the period's end, and changes the defaults and metadata.
pub async fn update_subscription(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
    changes: SubscriptionChanges<'_>,
) -> ServiceResult<SubscriptionView> {
    let now = uow.now();
    let mut sub = lock(uow, scope, id).await?;
    let before = sub.clone();
    if let Some(at_end) = changes.cancel_at_period_end {
        if !sub.status.is_live() {
            return Err(illegal(format!(
                "cannot schedule the cancel of a subscription that is {}",
                sub.status
            )));
        }
        sub.cancel_at_period_end = at_end;
        sub.canceled_at = at_end.then_some(now);
    }
    if let Some(p) = changes.proration_behavior {
        sub.proration_behavior = p.as_str().to_owned();
    }
    if let Some(m) = changes.metadata {
        sub.metadata = m.to_json();
    }
    let changed = sub.cancel_at_period_end != before.cancel_at_period_end
        || sub.proration_behavior != before.proration_behavior
        || sub.metadata != before.metadata;
    if changed {
        sub.updated_at = now;
        db::subscriptions::save(uow.conn(), scope, &sub).await?;
        let v = view(uow, scope, sub).await?;
        events::record(uow, scope, "customer.subscription.updated", v.to_json()).await?;
        return Ok(v);
    }
    view(uow, scope, sub).await
}

/// Pauses collection: periods go on, and none is invoiced until it resumes.
pub async fn pause_subscription(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<SubscriptionView> {
    let mut sub = lock(uow, scope, id).await?;
    let next = sub.status.apply(Transition::Pause).map_err(illegal)?;
    move_to(uow, scope, &mut sub, next, Transition::Pause).await?;
    view(uow, scope, sub).await
}

/// Resumes collection: the period under way is invoiced now (it was not while paused), and the
/// next ones at their start.
pub async fn resume_subscription(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<SubscriptionView> {
    let mut sub = lock(uow, scope, id).await?;
    let next = sub.status.apply(Transition::Resume).map_err(illegal)?;
    if sub.current_period_index >= 0 {
        // The period under way was not invoiced while paused: it is now (once).
        let items = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
        let period = Period {
            start: sub.current_period_start,
            end: sub.current_period_end,
        };
        let (invoice, made) =
            invoices::invoice_period(uow, scope, &mut sub, &items, period, "subscription_cycle")
                .await?;
        if made {
            sub.latest_invoice_id = Some(invoice.id);
            queue_charge(uow, scope, &sub, &invoice).await?;
        }
    }
    move_to(uow, scope, &mut sub, next, Transition::Resume).await?;
    view(uow, scope, sub).await
}

/// What a renewal did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    /// The job was for a period that is no longer current, or the subscription is over.
    Stale,
    /// Canceled at the period's end, as scheduled.
    Canceled,
    /// The trial ended without a payment method: paused.
    Paused,
    /// The next period started; `invoice` when one was made (a paused subscription has none).
    Renewed {
        invoice: Option<crate::ids::InvoiceId>,
    },
}

/// Closes the period of `sub` that ends at `period_end` (a `subscription.renew` job): cancels
/// at the period's end when scheduled, ends the trial, or starts the next period, invoicing it
/// and queueing its charge. Does nothing when that period is no longer the current one, so a
/// job that runs twice, late or after a cancel changes nothing. A renewal of many at once is
/// [`super::renewals::renew_many`]; this is that of one.
pub async fn renew(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
    period_end: DateTime<Utc>,
) -> ServiceResult<Renewal> {
    super::renewals::renew_many(uow, &[(scope, id, period_end)])
        .await?
        .pop()
        .ok_or_else(|| ServiceError::internal("a renewal without an answer"))
}

/// What closing a period leaves to do.
#[derive(Debug)]
pub(crate) enum Closing {
    /// Nothing more: this is the renewal's answer.
    Done(Renewal),
    /// The next period is current (in the row, not saved yet): it is to be invoiced, the
    /// subscription saved and its next renewal queued
    /// ([`super::renewals::renew_many`] does it for many at once).
    Invoice,
}

/// The first step of a renewal of `sub` (locked) whose period ends at `period_end`: decides
/// whether it is due, and cancels, ends the trial (or pauses) as it must; a period to invoice
/// is left to the caller.
pub(crate) async fn close_period(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &mut SubscriptionRow,
    period_end: DateTime<Utc>,
) -> ServiceResult<Closing> {
    let now = uow.now();
    if !sub.status.is_live() || sub.current_period_end != period_end {
        return Ok(Closing::Done(Renewal::Stale));
    }
    if now < period_end {
        // Run early (another host's clock): not done, so that it runs again when due.
        return Err(not_due(period_end));
    }
    if sub.status == SubscriptionStatus::Incomplete {
        // Its first invoice is unpaid: it expires rather than renews.
        return Ok(Closing::Done(Renewal::Stale));
    }
    if sub.cancel_at_period_end {
        let next = sub.status.apply(Transition::Cancel).map_err(illegal)?;
        final_invoice(uow, scope, sub, Some(period_end)).await?;
        move_to(uow, scope, sub, next, Transition::Cancel).await?;
        sub.ended_at = Some(period_end);
        db::subscriptions::save(uow.conn(), scope, sub).await?;
        return Ok(Closing::Done(Renewal::Canceled));
    }
    let charge = sub.collection_method == CollectionMethod::ChargeAutomatically.as_str();
    if sub.status == SubscriptionStatus::Trialing {
        let has_method = db::customers::default_payment_token(uow.conn(), scope, sub.customer_id)
            .await?
            .is_some();
        let transition = if charge && !has_method {
            Transition::TrialEndedWithoutPaymentMethod
        } else {
            Transition::TrialEnded
        };
        let next = sub.status.apply(transition).map_err(illegal)?;
        move_to(uow, scope, sub, next, transition).await?;
        if next == SubscriptionStatus::Paused {
            // The first period starts anyway; it is invoiced once collection resumes.
            advance(sub, 0)?;
            save_and_queue(uow, scope, sub).await?;
            return Ok(Closing::Done(Renewal::Paused));
        }
    }
    let index = sub.current_period_index + 1;
    advance(sub, index)?;
    if sub.status == SubscriptionStatus::Paused {
        save_and_queue(uow, scope, sub).await?;
        return Ok(Closing::Done(Renewal::Renewed { invoice: None }));
    }
    Ok(Closing::Invoice)
}

/// A job that ran before its time: an error, so that it runs again rather than being done.
pub(crate) fn not_due(at: DateTime<Utc>) -> ServiceError {
    ServiceError::conflict("not_due", format!("not due before {}", at.to_rfc3339()))
}

/// Makes period `index` the current one.
fn advance(sub: &mut SubscriptionRow, index: i32) -> ServiceResult<()> {
    let period = period_of(anchor_of(sub)?, interval_of(sub)?, index)?;
    sub.current_period_index = index;
    sub.current_period_start = period.start;
    sub.current_period_end = period.end;
    Ok(())
}

async fn save_and_queue(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
) -> ServiceResult<()> {
    let now = uow.now();
    let mut sub = sub.clone();
    sub.updated_at = now;
    db::subscriptions::save(uow.conn(), scope, &sub).await?;
    jobs::enqueue(uow.conn(), &[renewal(scope, &sub)], now).await?;
    Ok(())
}

/// Records `customer.subscription.trial_will_end` (a `subscription.trial_will_end` job) when
/// the subscription is still trialing towards `trial_end`; returns whether it did.
pub async fn trial_will_end(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
    trial_end: DateTime<Utc>,
) -> ServiceResult<bool> {
    let sub = match db::subscriptions::lock(uow.conn(), scope, id).await {
        Ok(sub) => sub,
        Err(db::DbError::NotFound) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if sub.status != SubscriptionStatus::Trialing || sub.trial_end != Some(trial_end) {
        return Ok(false);
    }
    let v = view(uow, scope, sub).await?;
    events::record(
        uow,
        scope,
        "customer.subscription.trial_will_end",
        v.to_json(),
    )
    .await?;
    Ok(true)
}

/// Expires a subscription whose first invoice is still unpaid (`subscription.expire_incomplete`,
/// 23 hours after creation): the invoice is voided. A subscription that was paid meanwhile (or
/// canceled) is left as it is; returns whether it expired.
pub async fn expire_incomplete(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<bool> {
    let mut sub = match db::subscriptions::lock(uow.conn(), scope, id).await {
        Ok(sub) => sub,
        Err(db::DbError::NotFound) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if sub.status != SubscriptionStatus::Incomplete {
        return Ok(false);
    }
    if uow.now() < sub.created_at + INCOMPLETE_FOR {
        return Err(not_due(sub.created_at + INCOMPLETE_FOR));
    }
    void_first_invoice(uow, scope, &sub).await?;
    let next = sub
        .status
        .apply(Transition::FirstInvoiceExpired)
        .map_err(illegal)?;
    move_to(uow, scope, &mut sub, next, Transition::FirstInvoiceExpired).await?;
    Ok(true)
}

// ---- changing items, with proration ----

/// One change to a subscription's items.
#[derive(Debug, Clone, Copy)]
pub enum ItemChange {
    /// A new quantity for a current item.
    Quantity {
        id: SubscriptionItemId,
        quantity: u32,
    },
    /// A new item.
    Add(ItemSpec),
    /// An item removed.
    Remove(SubscriptionItemId),
}

/// A change of items and how it is billed.
#[derive(Debug, Clone, Copy)]
pub struct ItemsChange<'a> {
    pub changes: &'a [ItemChange],
    /// The subscription's default when `None`.
    pub proration_behavior: Option<ProrationBehavior>,
    /// When the change counts from for proration (within the current period, not in the
    /// future); now when `None`.
    pub proration_date: Option<DateTime<Utc>>,
}

/// What a change did: the subscription after it, and the invoice made at once
/// (`always_invoice`).
#[derive(Debug, Clone)]
pub struct Changed {
    pub subscription: SubscriptionView,
    pub invoice: Option<crate::ids::InvoiceId>,
}

/// Changes items and quantities. With proration (`create_prorations`: lines wait for the next
/// invoice; `always_invoice`: invoiced and charged now), each changed item gets a credit for the
/// unused part of what was billed for it this period (line by line, each rounded on its own)
/// and a charge for the rest of the period at its new amount, both by seconds
/// ([`crate::domain::period::prorate`]). `none`, a trial and a paused subscription bill
/// nothing now; the new amounts apply from the next period.
pub async fn change_items(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
    change: ItemsChange<'_>,
) -> ServiceResult<Changed> {
    let mut sub = lock(uow, scope, id).await?;
    let now = uow.now();
    if !matches!(
        sub.status,
        SubscriptionStatus::Active
            | SubscriptionStatus::PastDue
            | SubscriptionStatus::Trialing
            | SubscriptionStatus::Paused
    ) {
        return Err(illegal(format!(
            "cannot change the items of a subscription that is {}",
            sub.status
        )));
    }
    if change.changes.is_empty() {
        return Err(ServiceError::invalid(
            "items",
            "must list at least one change",
        ));
    }
    // A renewal invoice still a draft is finalized first: what a change credits is what the
    // period's invoice finally billed.
    super::renewals::finalize_held(uow, scope, &mut sub).await?;
    let at = change.proration_date.map_or(now, |d| d.trunc_subsecs(0));
    if at < sub.current_period_start || at > now.max(sub.current_period_start) {
        return Err(ServiceError::invalid(
            "proration_date",
            "must be within the current period, and not in the future",
        ));
    }
    let behavior = match change.proration_behavior {
        Some(b) => b,
        None => ProrationBehavior::parse(&sub.proration_behavior)
            .ok_or_else(|| ServiceError::internal("stored proration behavior"))?,
    };
    let current = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
    // Validate everything before writing anything.
    let mut touched: Vec<SubscriptionItemId> = Vec::new();
    let mut removed: Vec<SubscriptionItemId> = Vec::new();
    let mut adds: Vec<ItemSpec> = Vec::new();
    for (i, c) in change.changes.iter().enumerate() {
        let (id, quantity) = match *c {
            ItemChange::Add(spec) => {
                adds.push(spec);
                continue;
            }
            ItemChange::Quantity { id, quantity } => (id, Some(quantity)),
            ItemChange::Remove(id) => (id, None),
        };
        let field = format!("items[{i}].id");
        if !current.iter().any(|it| it.id == id) {
            return Err(ServiceError::invalid(
                field,
                "is not an item of this subscription",
            ));
        }
        if touched.contains(&id) || removed.contains(&id) {
            return Err(ServiceError::invalid(field, "is changed twice"));
        }
        let metered = current.iter().any(|it| it.id == id && it.usage.is_some());
        match quantity {
            Some(q) if metered && q != 1 => {
                return Err(ServiceError::invalid(
                    format!("items[{i}].quantity"),
                    "must be 1 for a metered price: its usage sets what is billed",
                ));
            }
            Some(q) if !(1..=MAX_QUANTITY).contains(&q) => {
                return Err(ServiceError::invalid(
                    format!("items[{i}].quantity"),
                    format!("must be between 1 and {MAX_QUANTITY}"),
                ));
            }
            Some(_) => touched.push(id),
            None => removed.push(id),
        }
    }
    let new_items = if adds.is_empty() {
        Vec::new()
    } else {
        let (new_items, terms) = resolve_items(uow, scope, &adds).await?;
        if terms.currency != sub.currency || terms.interval != interval_of(&sub)? {
            return Err(ServiceError::invalid(
                "items",
                "new prices must have the subscription's currency and interval",
            ));
        }
        for n in &new_items {
            if current
                .iter()
                .any(|c| c.price_id == n.price_id && !removed.contains(&c.id))
            {
                return Err(ServiceError::invalid(
                    "items",
                    "a new item bills a price the subscription already has",
                ));
            }
        }
        new_items
    };
    if current.len() + new_items.len() - removed.len() == 0 {
        return Err(ServiceError::invalid(
            "items",
            "cannot remove every item; cancel the subscription instead",
        ));
    }
    if current.len() + new_items.len() - removed.len() > MAX_ITEMS {
        return Err(ServiceError::invalid(
            "items",
            format!("must leave at most {MAX_ITEMS} items"),
        ));
    }

    // The change itself.
    let mut changed: Vec<SubscriptionItemId> = Vec::new();
    for c in change.changes {
        match *c {
            ItemChange::Quantity { id, quantity } => {
                let before = current.iter().find(|it| it.id == id).map(|it| it.quantity);
                if before != Some(i64::from(quantity)) {
                    db::subscriptions::set_quantity(uow.conn(), scope, id, i64::from(quantity))
                        .await?;
                    changed.push(id);
                }
            }
            ItemChange::Remove(id) => {
                db::subscriptions::remove_item(uow.conn(), scope, id, now).await?;
                changed.push(id);
            }
            ItemChange::Add(_) => {}
        }
    }
    db::subscriptions::insert_items(uow.conn(), scope, sub.id, &new_items, now).await?;
    changed.extend(new_items.iter().map(|n| n.id));
    let after = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
    super::usage::one_item_per_metric(&after)?;

    // Only a period that was billed is prorated (not a trial, even a paused one).
    let bills_now = behavior != ProrationBehavior::None
        && sub.current_period_index >= 0
        && matches!(
            sub.status,
            SubscriptionStatus::Active | SubscriptionStatus::PastDue
        );
    let mut invoice = None;
    if bills_now {
        let lines = proration_lines(uow, scope, &sub, &current, &after, &changed, at).await?;
        db::invoices::insert_pending(uow.conn(), scope, &lines).await?;
        if behavior == ProrationBehavior::AlwaysInvoice
            && let Some(inv) = invoices::invoice_pending(uow, scope, &sub, None).await?
        {
            sub.latest_invoice_id = Some(inv.id);
            queue_charge(uow, scope, &sub, &inv).await?;
            invoice = Some(inv.id);
        }
    }
    sub.updated_at = now;
    db::subscriptions::save(uow.conn(), scope, &sub).await?;
    let v = SubscriptionView {
        subscription: sub,
        items: after,
    };
    events::record(uow, scope, "customer.subscription.updated", v.to_json()).await?;
    Ok(Changed {
        subscription: v,
        invoice,
    })
}

/// The proration lines of a change at `at`: per changed item, a credit for what was billed for
/// it this period (each billed line for its unused part, rounded on its own) and a charge for
/// its new amount over the rest of the period.
async fn proration_lines(
    uow: &mut UnitOfWork,
    scope: Scope,
    sub: &SubscriptionRow,
    before: &[ItemRow],
    after: &[ItemRow],
    changed: &[SubscriptionItemId],
    at: DateTime<Utc>,
) -> ServiceResult<Vec<db::invoices::PendingLine>> {
    use crate::domain::period::prorated;
    let now = uow.now();
    let period = Period {
        start: sub.current_period_start,
        end: sub.current_period_end,
    };
    let remaining = (period.end - at).num_seconds();
    let date = at.format("%Y-%m-%d");
    let mut lines = Vec::new();
    for (n, id) in changed.iter().enumerate() {
        // A metered item bills its usage, in arrears: nothing to prorate.
        let old = before.iter().find(|i| i.id == *id && i.usage.is_none());
        let new = after.iter().find(|i| i.id == *id && i.usage.is_none());
        // Created one after the other, so that they come out in this order.
        let created = now + Duration::microseconds(i64::try_from(n * 2).unwrap_or(0));
        if let Some(old) = old {
            let credit = unused_billed(uow, scope, old.id, period.end, at).await?;
            if credit != 0 {
                lines.push(db::invoices::PendingLine {
                    id: InvoiceItemId::new(),
                    currency: sub.currency.clone(),
                    invoice_id: None,
                    metadata: serde_json::json!({}),
                    livemode: scope.livemode(),
                    customer_id: sub.customer_id,
                    subscription_id: Some(sub.id),
                    subscription_item_id: Some(old.id),
                    price_id: Some(old.price_id),
                    description: format!(
                        "Unused time on {} after {date}",
                        invoices::item_label(old)
                    ),
                    quantity: old.quantity,
                    unit_amount: None,
                    amount: -credit,
                    proration: true,
                    period_start: at,
                    period_end: period.end,
                    created_at: created,
                });
            }
        }
        if let Some(new) = new {
            let (full, _) = invoices::item_amount(new)?;
            let charge = prorated(full, remaining, period.seconds());
            if charge != 0 {
                lines.push(db::invoices::PendingLine {
                    id: InvoiceItemId::new(),
                    currency: sub.currency.clone(),
                    invoice_id: None,
                    metadata: serde_json::json!({}),
                    livemode: scope.livemode(),
                    customer_id: sub.customer_id,
                    subscription_id: Some(sub.id),
                    subscription_item_id: Some(new.id),
                    price_id: Some(new.price_id),
                    description: format!(
                        "Remaining time on {} after {date}",
                        invoices::item_label(new)
                    ),
                    quantity: new.quantity,
                    unit_amount: None,
                    amount: charge,
                    proration: true,
                    period_start: at,
                    period_end: period.end,
                    created_at: created + Duration::microseconds(1),
                });
            }
        }
    }
    Ok(lines)
}

/// The invoice the subscription's next renewal would make now (its next period's items and
/// the lines waiting for it, with the customer's credit, less what a renewal still a draft will
/// take of it), as a draft without a number; nothing is written.
pub async fn upcoming_invoice(
    uow: &mut UnitOfWork,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<invoices::InvoiceView> {
    use crate::ids::InvoiceId;
    let sub = db::subscriptions::get(uow.conn(), scope, id)
        .await
        .map_err(ServiceError::not_found(WHAT))?;
    if !sub.status.is_live() || sub.cancel_at_period_end {
        return Err(illegal(format!(
            "a subscription that is {} (or ends with its period) has no upcoming invoice",
            sub.status
        )));
    }
    let items = db::subscriptions::items(uow.conn(), scope, &[sub.id.as_uuid()]).await?;
    let next = if sub.status == SubscriptionStatus::Trialing {
        0
    } else {
        sub.current_period_index + 1
    };
    let period = period_of(anchor_of(&sub)?, interval_of(&sub)?, next)?;
    let invoice_id = InvoiceId::new();
    let mut lines = invoices::period_lines(invoice_id, &items, period)?;
    let usage =
        super::usage::preview(uow, scope, &sub, period.start, invoice_id, lines.len()).await?;
    lines.extend(usage);
    invoices::discount(uow, scope, &sub, &mut lines, period).await?;
    let mut pending = db::invoices::pending_of(uow.conn(), scope, sub.id).await?;
    pending.extend(
        db::invoices::pending_of_customer(uow.conn(), scope, sub.customer_id, &sub.currency)
            .await?,
    );
    invoices::append_pending(&mut lines, &pending, invoice_id)?;
    let customer = db::customers::get(uow.conn(), scope, sub.customer_id).await?;
    // A renewal still a draft takes the customer's credit first, when it is finalized.
    let mut credit = customer.balance;
    if let Some(until) = sub.usage_draft_until.filter(|_| credit > 0)
        && let Some(draft) = db::invoices::of_period(uow.conn(), scope, sub.id, until).await?
        && draft.status == InvoiceStatus::Draft
    {
        credit -= draft.amount_due.clamp(0, credit);
    }
    let taxed = super::tax_rates::taxed_totals(uow, scope, customer.id, &lines, credit).await?;
    let totals = taxed.totals;
    let at = period.start;
    let mut invoice = invoices::blank_of(scope, invoice_id, &sub, "subscription_cycle", period, at);
    invoice.tax_amounts = taxed.tax_amounts;
    invoices::show_totals(&mut invoice, &totals, at);
    invoice.balance_applied = totals.balance_applied;
    Ok(invoices::InvoiceView { invoice, lines })
}

/// What a change would bill, without making it: the invoice it would make at once
/// (`always_invoice`), or else the upcoming invoice with its proration lines. The change runs
/// in a transaction that is rolled back, so the preview is what the change does.
pub async fn preview_change(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    scope: Scope,
    id: SubscriptionId,
    change: ItemsChange<'_>,
) -> ServiceResult<invoices::InvoiceView> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let changed = change_items(&mut uow, scope, id, change).await?;
    let view = match changed.invoice {
        Some(invoice) => {
            let invoice = db::invoices::get(uow.conn(), scope, invoice).await?;
            let lines = db::invoices::lines(uow.conn(), scope, &[invoice.id.as_uuid()]).await?;
            // Not made: no number, not finalized.
            let invoice = db::invoices::InvoiceRow {
                status: crate::domain::invoice::InvoiceStatus::Draft,
                number: None,
                finalized_at: None,
                paid_at: None,
                ..invoice
            };
            invoices::InvoiceView { invoice, lines }
        }
        None => upcoming_invoice(&mut uow, scope, id).await?,
    };
    uow.rollback().await;
    Ok(view)
}

/// [`upcoming_invoice`] in a read-only unit of work.
pub async fn get_upcoming_invoice(
    pool: &PgPool,
    clock: &dyn crate::clock::Clock,
    scope: Scope,
    id: SubscriptionId,
) -> ServiceResult<invoices::InvoiceView> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let view = upcoming_invoice(&mut uow, scope, id).await;
    uow.rollback().await;
    view
}
