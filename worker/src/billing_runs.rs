//! The fleet's billing schedule: every process serving the renewals queue wakes at each tick of
//! `BILLING_RUN_SCHEDULE`, and the one whose insert of the tick's run lands carries it out (a
//! run is unique per scope and tick, so a tick makes one run however many replicas run).
//! Ticks missed while the fleet was down are caught up by one run at the latest of them, which
//! covers everything due by then. Runs whose process died are taken over, and runs whose jobs
//! have all ended are completed.

use std::{str::FromStr, sync::Arc, sync::atomic::Ordering, time::Duration};

use chrono::{DateTime, Utc};
use cron::Schedule;
use shared::{
    db::billing_runs::{RunScope, RunTrigger},
    service::billing_runs,
};
use tokio::sync::watch;

use crate::Runtime;

/// Most missed ticks counted when catching up (a long outage on a fine schedule).
const MAX_MISSED: i32 = 100_000;
/// How often runs are looked at between ticks (completing finished ones, taking over dead ones).
const HOUSEKEEPING: Duration = Duration::from_secs(5);

/// Reads a schedule: a cron expression with seconds.
pub fn schedule(expr: &str) -> Result<Schedule, String> {
    Schedule::from_str(expr).map_err(|e| format!("BILLING_RUN_SCHEDULE `{expr}`: {e}"))
}

/// The ticks of `schedule` after `after` up to `now`: the latest, and how many came before it
/// (at most [`MAX_MISSED`]).
pub fn due_tick(
    schedule: &Schedule,
    after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<(DateTime<Utc>, i32)> {
    let mut latest = None;
    let mut before = -1;
    for t in schedule.after(&after).take_while(|t| *t <= now) {
        latest = Some(t);
        before += 1;
        if before >= MAX_MISSED {
            // Counted far enough: the latest tick covers the rest.
            return Some((latest_tick_before(schedule, now).unwrap_or(t), MAX_MISSED));
        }
    }
    latest.map(|t| (t, before))
}

/// The latest tick of `schedule` at or before `now`, looking back at most a day.
fn latest_tick_before(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    schedule
        .after(&(now - chrono::Duration::days(1)))
        .take_while(|t| *t <= now)
        .last()
}

/// Runs the schedule until `stop` turns true.
pub async fn run(rt: Arc<Runtime>, schedule: Schedule, mut stop: watch::Receiver<bool>) {
    // A fleet's first process starts from now: nothing before it is missed.
    let started = rt.clock.now();
    loop {
        if *stop.borrow() {
            return;
        }
        if let Err(e) = step(&rt, &schedule, started).await {
            tracing::warn!(error = %e, "billing schedule step failed; will retry");
        }
        let now = rt.clock.now();
        let wait = schedule
            .after(&now)
            .next()
            .and_then(|next| (next - now).to_std().ok())
            .unwrap_or(HOUSEKEEPING)
            .min(HOUSEKEEPING);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Makes the run of the latest tick not made yet, takes over dead runs, completes finished
/// ones.
async fn step(
    rt: &Runtime,
    schedule: &Schedule,
    started: DateTime<Utc>,
) -> Result<(), shared::service::ServiceError> {
    let pool = &rt.pool;
    let clock = rt.clock.as_ref();
    let owner = rt.instance.as_str();
    let now = clock.now();
    let last = shared::db::billing_runs::last_tick(pool).await?;
    let after = last
        .unwrap_or(started)
        .max(now - chrono::Duration::days(366));
    if let Some((tick, missed)) = due_tick(schedule, after, now) {
        let missed = if last.is_some() { missed } else { 0 };
        if let Some((run, queued)) = billing_runs::run(
            pool,
            clock,
            RunScope::Fleet,
            tick,
            RunTrigger::Schedule,
            missed,
            owner,
        )
        .await?
        {
            note_run(rt, &run, queued);
        }
    }
    while let Some((run, queued)) = billing_runs::take_over(pool, clock, owner).await? {
        tracing::info!(run = %run.id, "took over a billing run whose process stopped");
        note_run(rt, &run, queued);
    }
    let completed = shared::db::billing_runs::complete_finished(pool, clock.now()).await?;
    if completed > 0 {
        tracing::debug!(completed, "billing runs completed");
    }
    Ok(())
}

fn note_run(rt: &Runtime, run: &shared::db::billing_runs::BillingRunRow, queued: u64) {
    let m = &rt.metrics;
    m.billing_runs.fetch_add(1, Ordering::Relaxed);
    m.billing_run_queued.fetch_add(queued, Ordering::Relaxed);
    let lag = (run.started_at - run.scheduled_for)
        .num_milliseconds()
        .max(0);
    m.billing_run_lag_ms.store(lag, Ordering::Relaxed);
    tracing::info!(
        run = %run.id,
        tick = %run.scheduled_for,
        missed_ticks = run.missed_ticks,
        queued,
        lag_ms = lag,
        "billing run enqueued"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_latest_tick_since_the_last_run_is_due_with_the_ones_it_covers() {
        let every_minute = schedule("0 * * * * *").unwrap();
        // Nothing since the last run: no tick due.
        assert_eq!(
            due_tick(
                &every_minute,
                t("2026-12-01T10:00:00Z"),
                t("2026-12-01T10:00:59Z")
            ),
            None
        );
        // The next tick.
        assert_eq!(
            due_tick(
                &every_minute,
                t("2026-12-01T10:00:00Z"),
                t("2026-12-01T10:01:00Z")
            ),
            Some((t("2026-12-01T10:01:00Z"), 0))
        );
        // Down for an hour and a half: one run at the latest tick, covering 89 missed ones.
        assert_eq!(
            due_tick(
                &every_minute,
                t("2026-12-01T10:00:00Z"),
                t("2026-12-01T11:30:30Z")
            ),
            Some((t("2026-12-01T11:30:00Z"), 89))
        );
        let hourly = schedule("0 0 * * * *").unwrap();
        assert_eq!(
            due_tick(
                &hourly,
                t("2026-12-01T10:00:00Z"),
                t("2026-12-01T13:59:59Z")
            ),
            Some((t("2026-12-01T13:00:00Z"), 2))
        );
    }

    #[test]
    fn a_schedule_must_be_a_cron_expression_with_seconds() {
        assert!(schedule("0 * * * * *").is_ok());
        assert!(schedule("*/2 * * * * *").is_ok());
        assert!(schedule("every minute").is_err());
    }
}
