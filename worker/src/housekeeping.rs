//! Housekeeping: vacuum finished jobs out of Redis, refresh queue gauges, and delete what has
//! outlived its retention (idempotency keys, events with their deliveries, finished jobs).
//! Every step is idempotent, so every worker process may run it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use shared::jobs::{self, Queue};
use tokio::sync::watch;

use crate::{Runtime, redis_queue};

/// Most finished tasks removed from Redis per script call.
const VACUUM_WINDOW: usize = 1000;
/// Rows deleted per statement.
const PURGE_BATCH: i64 = 1000;
/// Succeeded jobs are kept this long for operators.
const KEEP_SUCCEEDED_DAYS: i64 = 7;

pub async fn run(rt: Arc<Runtime>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        vacuum(&rt).await;
        if n % 2 == 1 {
            gauges(&rt).await;
        }
        if n % 30 == 1 {
            purge(&rt).await;
        }
    }
}

async fn vacuum(rt: &Runtime) {
    let mut redis = rt.redis.clone();
    for q in &rt.settings.worker.queues {
        let config = redis_queue::config(&rt.settings, *q);
        // Small windows, so Redis is never blocked for long.
        for _ in 0..20 {
            match redis_queue::vacuum(&mut redis, &config, VACUUM_WINDOW).await {
                Ok(removed) => {
                    rt.metrics
                        .redis_vacuumed
                        .fetch_add(u64::try_from(removed).unwrap_or(0), Ordering::Relaxed);
                    if usize::try_from(removed).unwrap_or(0) < VACUUM_WINDOW {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(queue = %q, error = %e, "vacuum failed; will retry");
                    break;
                }
            }
        }
    }
}

async fn gauges(rt: &Runtime) {
    let now = rt.clock.now();
    let mut redis = rt.redis.clone();
    for q in Queue::ALL {
        let m = rt.metrics.q(q);
        if let Ok((due, scheduled, dead)) = jobs::counts(&rt.pool, q, now).await {
            m.due.store(due, Ordering::Relaxed);
            m.scheduled.store(scheduled, Ordering::Relaxed);
            m.dead_now.store(dead, Ordering::Relaxed);
        }
        let config = redis_queue::config(&rt.settings, q);
        if let Ok(depth) = redis_queue::depth(&mut redis, &config).await {
            m.redis_depth.store(depth, Ordering::Relaxed);
        }
    }
}

async fn purge(rt: &Runtime) {
    match shared::db::idempotency::purge_expired(&rt.pool).await {
        Ok(n) => {
            rt.metrics
                .idempotency_keys_purged
                .fetch_add(n, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed; will retry"),
    }
    let now = rt.clock.now();
    let retention = chrono::Duration::from_std(rt.settings.jobs.event_retention)
        .unwrap_or(chrono::Duration::days(30));
    loop {
        match shared::db::events::purge_older_than(&rt.pool, now - retention, PURGE_BATCH).await {
            Ok(n) => {
                rt.metrics.events_purged.fetch_add(n, Ordering::Relaxed);
                if n < PURGE_BATCH as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging old events failed; will retry");
                break;
            }
        }
    }
    let before = now - chrono::Duration::days(KEEP_SUCCEEDED_DAYS);
    loop {
        match jobs::purge_succeeded(&rt.pool, before, PURGE_BATCH).await {
            Ok(n) if n >= PURGE_BATCH as u64 => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(error = %e, "purging finished jobs failed; will retry");
                break;
            }
        }
    }
}
