//! The relay: moves due jobs from the PostgreSQL outbox to the Redis queues this process
//! consumes, in bounded batches and only while a queue is below its high-water mark.
//!
//! It wakes on `NOTIFY` (a job committed due now) and on a short tick (retries and leases
//! coming due). Leases that run out — the push was lost with Redis, or the worker running the
//! job died — make the job due again, so this is also the sweeper.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use shared::jobs::{self, Queue};
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::{Runtime, WorkerError, redis_queue};

/// Runs until `stop` turns true.
pub async fn run(rt: Arc<Runtime>, queues: Vec<Queue>, mut stop: watch::Receiver<bool>) {
    let owner = rt.instance.clone();
    let mut listener = connect_listener(&rt).await;
    let mut tick = tokio::time::interval(rt.settings.jobs.relay_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A queue that was full when work was due is looked at again soon: it drains in
        // moments, and waiting a whole tick would leave the workers idle.
        let mut backlogged = false;
        for q in &queues {
            if *stop.borrow() {
                return;
            }
            // Drain what is due, batch after batch, until the queue is full or nothing is due.
            loop {
                match relay_step(&rt, *q, &owner).await {
                    Ok(Step::Pushed(n)) if n >= rt.settings.jobs.relay_batch => continue,
                    Ok(Step::Full) => {
                        backlogged = true;
                        break;
                    }
                    Ok(Step::Pushed(_)) => break,
                    Err(e) => {
                        tracing::warn!(queue = %q, error = %e, "relay step failed; will retry");
                        break;
                    }
                }
            }
        }
        if backlogged {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(BACKLOG_RECHECK) => continue,
            }
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
            res = notified => {
                if let Err(e) = res {
                    tracing::warn!(error = %e, "job notifications lost; reconnecting");
                    listener = connect_listener(&rt).await;
                }
            }
        }
    }
}

async fn connect_listener(rt: &Runtime) -> Option<PgListener> {
    let mut l = match PgListener::connect_with(&rt.pool).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for job notifications; polling only");
            return None;
        }
    };
    match l.listen(jobs::NOTIFY_CHANNEL).await {
        Ok(()) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for job notifications; polling only");
            None
        }
    }
}

/// How soon a full queue is looked at again.
const BACKLOG_RECHECK: Duration = Duration::from_millis(20);

/// What one relay step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Pushed this many (0: nothing due, or another relay holds the queue).
    Pushed(usize),
    /// The queue is at its high-water mark; due work may be waiting.
    Full,
}

/// One step for one queue: returns how many jobs were pushed.
pub async fn relay_once(rt: &Runtime, queue: Queue, owner: &str) -> Result<usize, WorkerError> {
    Ok(match relay_step(rt, queue, owner).await? {
        Step::Pushed(n) => n,
        Step::Full => 0,
    })
}

async fn relay_step(rt: &Runtime, queue: Queue, owner: &str) -> Result<Step, WorkerError> {
    let settings = &rt.settings;
    let config = redis_queue::config(settings, queue);
    let mut redis = rt.redis.clone();
    let lock_ttl = Duration::from_secs(10);
    if !redis_queue::try_lock(&mut redis, settings, queue, owner, lock_ttl).await? {
        return Ok(Step::Pushed(0));
    }
    let result = async {
        let depth = redis_queue::depth(&mut redis, &config).await?;
        rt.metrics
            .q(queue)
            .redis_depth
            .store(depth, Ordering::Relaxed);
        let room = usize::try_from(i64::try_from(settings.jobs.high_water).unwrap_or(0) - depth)
            .unwrap_or(0);
        let limit = room.min(settings.jobs.relay_batch);
        if limit == 0 {
            return Ok(Step::Full);
        }
        let now = rt.clock.now();
        let msgs = jobs::lease_due(&rt.relaxed, queue, now, settings.jobs.lease, limit).await?;
        if msgs.is_empty() {
            return Ok(Step::Pushed(0));
        }
        if let Err(e) = redis_queue::push(&mut redis, &config, &msgs).await {
            // Give them back now rather than when the lease runs out.
            let _ = jobs::unlease(&rt.pool, &msgs, rt.clock.now()).await;
            return Err(e.into());
        }
        rt.metrics
            .q(queue)
            .relayed
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        rt.metrics
            .q(queue)
            .redis_depth
            .store(depth + msgs.len() as i64, Ordering::Relaxed);
        tracing::debug!(queue = %queue, pushed = msgs.len(), depth, "relayed");
        Ok(
            if msgs.len() < limit || limit == settings.jobs.relay_batch {
                Step::Pushed(msgs.len())
            } else {
                // Room ran out before due work did.
                Step::Full
            },
        )
    }
    .await;
    let _ = redis_queue::unlock(&mut redis, settings, queue, owner).await;
    result
}
