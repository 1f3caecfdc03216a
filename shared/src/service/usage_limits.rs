//! Usage limits: a plan declares how much of a metric a subscription to it may use per period
//! (`usage_limits` on `/api/v1/plans`), and the first time a period's usage reaches a limit
//! the subscription's tenant is told, once: a `customer.subscription.usage_limit_reached`
//! event. Usage goes on being recorded and billed past a limit; what to do about it (an
//! upgrade, a block in the tenant's own product) is the tenant's call.
//!
//! - A subscription is held to the limits of the plans whose price is one of its current items
//!   (another price of a plan's product does not subscribe to the plan); two plans limiting one
//!   metric add up (an item's quantity does not multiply the limit). The period is its
//!   current billing period, and its usage of a metric is measured as the metric bills it
//!   (usage during a trial is free, so nothing is checked then).
//! - A request that records usage counting against a limit not reached yet checks it once the
//!   request commits (one check at a time per subscription in a process: requests meanwhile
//!   make it run once more), and queues a check for a few minutes later, one per subscription
//!   and [`WINDOW`], which runs should the first not (the process ended, say). The reached
//!   limit is a row keyed by (subscription, metric, period start, limit), so two checks tell of
//!   it once, and a limit raised in the period (an upgrade) is told again when reached.
//! - A change of a plan's limits queues a check of each of its live subscribers. Usage
//!   recorded after a period's end but before its renewal runs counts for the next period and
//!   is checked with the next usage after it.

use chrono::{DateTime, Duration, Utc};
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
    ids::{PriceId, SubscriptionId},
    jobs::{self, Job},
    tenancy::Scope,
    uow::UnitOfWork,
};

/// Usage recorded within one window of this length is checked again by one queued job, at
/// the window's end and [`CHECK_LATER`].
pub const WINDOW: Duration = Duration::minutes(5);

/// How long after its window the queued check runs.
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

/// Queues a check of each subscription's limits for the end of the current [`WINDOW`] and
/// [`CHECK_LATER`] (one per subscription and window: queued once, by the first request).
pub(crate) async fn queue_check(
    uow: &mut UnitOfWork,
    scope: Scope,
    subscriptions: &[SubscriptionId],
) -> ServiceResult<()> {
    if subscriptions.is_empty() {
        return Ok(());
    }
    let now = uow.now();
    let window = window_of(now);
    let mut jobs: Vec<_> = subscriptions
        .iter()
        .map(|&subscription| {
            Job::CheckUsageLimits {
                subscription,
                window,
            }
            .to_new(Some(scope), window + WINDOW + CHECK_LATER)
        })
        .collect();
    // In id order, as every statement on jobs locks them.
    jobs.sort_unstable_by_key(|j| j.id);
    jobs::enqueue(uow.conn(), &jobs, now).await?;
    Ok(())
}

/// Queues a check of the limits of every live subscription to the plan whose price is
/// `plan_price` (its limits changed), as [`queue_check`] does, in chunks.
pub(crate) async fn queue_plan_check(
    uow: &mut UnitOfWork,
    scope: Scope,
    plan_price: PriceId,
) -> ServiceResult<()> {
    let subscribers = db::usage_limits::subscribers(uow.conn(), scope, plan_price).await?;
    for chunk in subscribers.chunks(5_000) {
        queue_check(uow, scope, chunk).await?;
    }
    Ok(())
}

/// The start of the [`WINDOW`] `t` falls in.
fn window_of(t: DateTime<Utc>) -> DateTime<Utc> {
    let length = WINDOW.num_seconds();
    let start = t.timestamp().div_euclid(length) * length;
    DateTime::from_timestamp(start, 0).unwrap_or(t)
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
    // Its time: its test clock's, or now; events tell of it at that time.
    if let Some(clock) = db::test_clocks::of_customer(uow.conn(), scope, sub.customer_id).await? {
        uow.travel_to(clock.frozen_time);
    }
    let now = uow.now();
    if sub.trial_end.is_some_and(|end| end > now) {
        return Ok(0);
    }
    let period_start = sub.current_period_start;
    let limits = db::usage_limits::open(uow.conn(), scope, subscription, period_start).await?;
    if limits.is_empty() {
        return Ok(0);
    }
    // The whole current period (invoiced or not, up to the subscription's end if it ended in
    // it): usage before it counted for the period before.
    let mut period = sub.clone();
    period.usage_billed_until = Some(period_start);
    let until = sub.ended_at.map_or(sub.current_period_end, |end| {
        end.min(sub.current_period_end)
    });
    let measured = usage::measure(uow.conn(), &[(scope, &period, until)])
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
        let quantities: Vec<(DateTime<Utc>, u64)> =
            parts.iter().map(|u| (u.window.end, u.quantity)).collect();
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_time_falls_in_the_five_minute_window_starting_at_or_before_it() {
        let t = |h, m, s| Utc.with_ymd_and_hms(2026, 11, 30, h, m, s).unwrap();
        assert_eq!(window_of(t(10, 0, 0)), t(10, 0, 0));
        assert_eq!(window_of(t(10, 4, 59)), t(10, 0, 0));
        assert_eq!(window_of(t(10, 5, 0)), t(10, 5, 0));
        assert_eq!(window_of(t(23, 59, 59)), t(23, 55, 0));
        let early = Utc.with_ymd_and_hms(1969, 12, 31, 23, 58, 0).unwrap();
        assert_eq!(
            window_of(early),
            Utc.with_ymd_and_hms(1969, 12, 31, 23, 55, 0).unwrap()
        );
    }
}
