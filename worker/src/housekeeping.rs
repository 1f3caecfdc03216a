//! Housekeeping: delete what gone consumers left in Redis, refresh queue gauges, delete
//! what has outlived its retention (idempotency keys, events with their deliveries, finished
//! jobs), and start over the charges whose job died with their attempt in flight. Every step
//! is idempotent, so every worker process may run it.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use shared::jobs::{self, Queue};
use tokio::sync::watch;

use crate::{Runtime, redis_queue};

/// Keys looked at per `SCAN` step when reaping gone consumers.
const REAP_SCAN: usize = 1000;
/// Rows deleted per statement.
const PURGE_BATCH: i64 = 1000;
/// Attempts in flight looked at per pass for a dead charge job.
const RESUME_SCAN: i64 = 1000;
/// Succeeded jobs are kept this long for operators.
const KEEP_SUCCEEDED_DAYS: i64 = 7;

pub async fn run(rt: Arc<Runtime>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    let mut cursors = shared::jobs::QueueMap::<u64>::default();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        reap(&rt, &mut cursors).await;
        if n % 2 == 1 {
            gauges(&rt).await;
        }
        // Counting jobs reads the whole outbox: less often, in one statement for all queues.
        if n % 8 == 1 {
            job_counts(&rt).await;
        }
        if n % 30 == 1 {
            purge(&rt).await;
        }
        if n % 150 == 1 {
            resume_dead_charges(&rt).await;
        }
    }
}

/// Charges whose job died with their attempt in flight start over (every 5 minutes).
async fn resume_dead_charges(rt: &Runtime) {
    match shared::service::invoices::resume_dead_charges(&rt.pool, rt.clock.as_ref(), RESUME_SCAN)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::warn!(resumed = n, "charges whose job died in flight start over"),
        Err(e) => tracing::debug!(error = %e, "resuming dead charges failed; will retry"),
    }
}

async fn reap(rt: &Runtime, cursors: &mut shared::jobs::QueueMap<u64>) {
    let mut redis = rt.redis.clone();
    for q in &rt.settings.worker.queues {
        let cursor = cursors.get_mut(*q);
        match redis_queue::reap_consumers(&mut redis, &rt.settings, *q, *cursor, REAP_SCAN).await {
            Ok((next, reaped)) => {
                *cursor = next;
                rt.metrics
                    .redis_reaped
                    .fetch_add(u64::try_from(reaped).unwrap_or(0), Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(queue = %q, error = %e, "reaping failed; will retry"),
        }
    }
}

/// The outbox's jobs per queue and state (`worker_jobs_due`, `_scheduled`, `_dead`).
async fn job_counts(rt: &Runtime) {
    let Ok(rows) = jobs::counts(&rt.pool, rt.clock.now()).await else {
        return;
    };
    for q in Queue::ALL {
        let (due, scheduled, dead) = rows
            .iter()
            .find(|r| r.0 == q.as_str())
            .map_or((0, 0, 0), |r| (r.1, r.2, r.3));
        let m = rt.metrics.q(q);
        m.due.store(due, Ordering::Relaxed);
        m.scheduled.store(scheduled, Ordering::Relaxed);
        m.dead_now.store(dead, Ordering::Relaxed);
    }
}

async fn gauges(rt: &Runtime) {
    let mut redis = rt.redis.clone();
    for q in Queue::ALL {
        let m = rt.metrics.q(q);
        let config = redis_queue::config(&rt.settings, q);
        if let Ok(depth) = redis_queue::depth(&mut redis, &config).await {
            m.redis_depth.store(depth, Ordering::Relaxed);
        }
        if let Ok(f) = redis_queue::footprint(&mut redis, &config).await {
            m.redis_tasks.store(f.data, Ordering::Relaxed);
            m.redis_largest_inflight
                .store(f.largest_inflight, Ordering::Relaxed);
        }
    }
    if let Ok(bytes) = redis_queue::used_memory(&mut redis).await {
        rt.metrics.redis_memory.store(bytes, Ordering::Relaxed);
    }
}

async fn purge(rt: &Runtime) {
    let now = rt.clock.now();
    loop {
        match shared::db::idempotency::purge_expired(&rt.pool, now, PURGE_BATCH).await {
            Ok(n) => {
                rt.metrics
                    .idempotency_keys_purged
                    .fetch_add(n, Ordering::Relaxed);
                if n < PURGE_BATCH as u64 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging idempotency keys failed; will retry");
                break;
            }
        }
    }
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
