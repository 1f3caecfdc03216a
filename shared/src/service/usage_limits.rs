//! Usage limits: a plan declares how much of a metric a subscription to it may use per period
//! (`usage_limits` on `/api/v1/plans`), and the first time a period's usage reaches a limit
//! the subscription's tenant is told, once: a `customer.subscription.usage_limit_reached`
//! event. Usage goes on being recorded and billed past a limit; what to do about it (an
//! upgrade, a block in the tenant's own product) is the tenant's call.
//!
//! - A subscription is held to the limits of the products (plans) of its current items; two
//!   of them limiting one metric add up. The period is its current billing period, and its
//!   usage of a metric is measured as the metric bills it (usage during a trial is free).
//! - A request that records usage counting against a limit not reached yet checks it once the
//!   request commits, and queues a check a little later as well (made due again by every such
//!   request), which runs should the first not (the process ended, say). The reached limit is
//!   a row keyed by (subscription, metric, period start), so two checks tell of it once.
//! - A limit added to a plan, or lowered, is checked at the next usage recorded.

use chrono::Duration;
use serde_json::json;
use sqlx::PgPool;

use super::{ServiceError, ServiceResult, events, usage};
use crate::{
    clock::Clock,
    db::{
        self,
        usage_limits::{Crossing, OpenLimit},
    },
    domain::usage::{UsageLimit, check_usage_limits, limit_reached},
    ids::SubscriptionId,
    jobs::{self, Job},
    tenancy::Scope,
    uow::UnitOfWork,
};

/// How long after the last request recording usage the queued check runs.
pub const CHECK_LATER: Duration = Duration::seconds(30);

/// The largest limit (so that limits added up stay far within 64 bits).
pub const MAX_LIMIT: i64 = 1_000_000_000_000_000;

/// The event telling that a period's usage reached a limit.
pub const LIMIT_REACHED: &str = "customer.subscription.usage_limit_reached";

/// Checks a plan's limits (at `field`) and that each names a billable metric of the mode;
/// the limits as stored.
pub(crate) async fn checked(
    uow: &mut UnitOfWork,
    scope: Scope,
    field: &str,
    limits: &[UsageLimit],
) -> ServiceResult<serde_json::Value> {
    check_usage_limits(limits).map_err(|e| ServiceError::invalid(field, e.0))?;
    if let Some(l) = limits.iter().find(|l| l.limit > MAX_LIMIT) {
        return Err(ServiceError::invalid(
            field,
            format!("the limit on {} must be at most {MAX_LIMIT}", l.metric),
        ));
    }
    let codes: Vec<String> = limits.iter().map(|l| l.metric.clone()).collect();
    let known = db::usage::metrics_by_code(uow.conn(), scope, &codes).await?;
    if let Some(l) = limits
        .iter()
        .find(|l| !known.iter().any(|m| m.code == l.metric))
    {
        return Err(ServiceError::invalid(
            field,
            format!("no billable metric has the code {}", l.metric),
        ));
    }
    serde_json::to_value(limits).map_err(ServiceError::internal)
}

/// Queues a check of each subscription's limits [`CHECK_LATER`] from now, or puts off the one
/// queued already until then.
pub(crate) async fn queue_check(
    uow: &mut UnitOfWork,
    scope: Scope,
    subscriptions: &[SubscriptionId],
) -> ServiceResult<()> {
    if subscriptions.is_empty() {
        return Ok(());
    }
    let now = uow.now();
    let jobs: Vec<_> = subscriptions
        .iter()
        .map(|&subscription| {
            Job::CheckUsageLimits { subscription }.to_new(Some(scope), now + CHECK_LATER)
        })
        .collect();
    jobs::enqueue_or_reset(uow.conn(), &jobs, now).await?;
    Ok(())
}

/// Checks a subscription's limits in a unit of work of its own; how many were reached now.
pub async fn check(
    pool: &PgPool,
    clock: &dyn Clock,
    scope: Scope,
    subscription: SubscriptionId,
) -> ServiceResult<usize> {
    let mut uow = UnitOfWork::begin(pool, clock).await?;
    let reached = check_in(&mut uow, scope, subscription).await?;
    uow.commit().await?;
    Ok(reached)
}

/// Checks a subscription's limits not reached yet in its current period against its usage
/// there, recording (and telling of) those reached; how many were reached now.
pub(crate) async fn check_in(
    uow: &mut UnitOfWork,
    scope: Scope,
    subscription: SubscriptionId,
) -> ServiceResult<usize> {
    let sub = match db::subscriptions::get(uow.conn(), scope, subscription).await {
        Ok(sub) => sub,
        Err(db::DbError::NotFound) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if sub.ended_at.is_some() {
        return Ok(0);
    }
    let period_start = sub.current_period_start;
    let limits = db::usage_limits::open(uow.conn(), scope, subscription, period_start).await?;
    if limits.is_empty() {
        return Ok(0);
    }
    // The current period only: usage before it (not invoiced yet while its renewal is on the
    // way) counted for the period before.
    let mut period = sub.clone();
    period.usage_billed_until = Some(
        sub.usage_billed_until
            .unwrap_or(sub.created_at)
            .max(period_start),
    );
    let measured = usage::measure(uow.conn(), &[(scope, &period, sub.current_period_end)])
        .await?
        .pop()
        .unwrap_or_default();
    let mut reached = 0;
    for OpenLimit {
        metric_id,
        metric,
        usage_limit,
    } in limits
    {
        let parts: Vec<&usage::ItemUsage> =
            measured.iter().filter(|u| u.metric == metric).collect();
        let Some(first) = parts.first() else { continue };
        let quantities: Vec<u64> = parts.iter().map(|u| u.quantity).collect();
        let quantity = first.aggregation.combine(&quantities);
        if !limit_reached(usage_limit, quantity) {
            continue;
        }
        let crossing = Crossing {
            subscription,
            metric_id,
            period_start,
            usage_limit,
            quantity,
        };
        let now = uow.now();
        if !db::usage_limits::record(uow.conn(), scope, &crossing, now).await? {
            continue;
        }
        let object = json!({
            "object": "usage_limit",
            "subscription": subscription.to_string(),
            "customer": sub.customer_id.to_string(),
            "metric": metric,
            "limit": usage_limit,
            "quantity": quantity,
            "period_start": db::api_time(period_start),
            "period_end": db::api_time(sub.current_period_end),
            "livemode": scope.livemode(),
        });
        events::record(uow, scope, LIMIT_REACHED, object).await?;
        reached += 1;
    }
    Ok(reached)
}
