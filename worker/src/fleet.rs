//! Queue consumers: one apalis worker per queue this process serves, restarted when its Redis
//! backend fails (apalis-redis ends a worker on any fetch error, a Redis restart included).

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, ParallelizeExt, TaskId, WorkerBuilder, WorkerBuilderExt,
};
use shared::jobs::{self, Finished, JobMessage, Outcome, Queue};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    Runtime, WorkerError,
    batch::Batcher,
    jobs::deliver_webhook::{self, Done},
    metrics::RunEnd,
    redis_queue,
};

/// Which queue a consumer serves (handed to the handler).
#[derive(Debug, Clone, Copy)]
struct QueueTag(Queue);

/// Acknowledges a consumer's finished tasks in Redis, many per round trip.
type Acker = Batcher<String, ()>;

/// Most task ids acknowledged in one script call.
const ACK_BATCH: usize = 256;

fn acker(rt: &Arc<Runtime>, queue: Queue, worker: &str) -> Acker {
    let rt = rt.clone();
    let worker = worker.to_owned();
    let config = redis_queue::config(&rt.settings, queue);
    Batcher::spawn(ACK_BATCH, move |ids: Vec<String>| {
        let mut redis = rt.redis.clone();
        let (config, worker) = (config.clone(), worker.clone());
        async move {
            let n = ids.len();
            // Not acknowledged: the ids stay in this consumer's inflight set; when it stops
            // they return to the queue and their next run finds the job done (stale).
            redis_queue::ack(&mut redis, &config, &worker, &ids).await?;
            Ok::<_, redis::RedisError>(vec![(); n])
        }
    })
}

/// How often an idle consumer looks for work.
const POLL: Duration = Duration::from_millis(100);

/// Consumes one queue until `stop` turns true, restarting after backend failures.
pub async fn consume(rt: Arc<Runtime>, queue: Queue, mut stop: watch::Receiver<bool>) {
    let mut restarts: u64 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let name = format!("{}-{}-{restarts}", rt.instance, queue.as_str());
        let result = match start(&rt, queue, &name, stop.clone()).await {
            Ok(r) => r,
            Err(e) => Err(apalis::prelude::WorkerError::PanicError(e.to_string())),
        };
        if *stop.borrow() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(queue = %queue, "queue consumer ended; restarting"),
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, "queue consumer failed; restarting")
            }
        }
        restarts += 1;
        rt.metrics.restarts.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Starts an apalis worker for the queue on its own task (built outside any async context,
/// which keeps the compiler's `Send` reasoning about its future simple).
fn start(
    rt: &Arc<Runtime>,
    queue: Queue,
    name: &str,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), apalis::prelude::WorkerError>> {
    let storage =
        redis_queue::storage(rt.redis.clone(), &rt.settings, queue).poll_with_interval(POLL);
    let worker = WorkerBuilder::new(name)
        .backend(storage)
        .data(rt.clone())
        .data(QueueTag(queue))
        .data(acker(rt, queue, name))
        .concurrency(*rt.settings.worker.concurrency.get(queue))
        .parallelize(tokio::spawn)
        .build(handle);
    tokio::spawn(worker.run_until(async move {
        let _ = stop.wait_for(|s| *s).await;
        Ok::<(), std::io::Error>(())
    }))
}

/// The apalis handler. Every outcome is recorded in PostgreSQL, so the handler always
/// succeeds as far as Redis is concerned (Redis's own retries would only duplicate ours), and
/// the task is then acknowledged: removed from Redis.
async fn handle(
    msg: JobMessage,
    task_id: TaskId,
    rt: Data<Arc<Runtime>>,
    tag: Data<QueueTag>,
    acker: Data<Acker>,
) -> Result<(), BoxDynError> {
    let QueueTag(queue) = *tag;
    let span = tracing::info_span!(
        "job",
        queue = %queue,
        job_id = %msg.id,
        tenant_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    process(&rt, queue, msg).instrument(span.clone()).await;
    if let Err(e) = acker.call(task_id.to_string()).await {
        span.in_scope(|| tracing::warn!(error = %e, "task not acknowledged in Redis"));
        rt.metrics.ack_failures.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn end_of(outcome: &Outcome) -> RunEnd {
    match outcome {
        Outcome::Succeeded => RunEnd::Succeeded,
        Outcome::Retry { .. } => RunEnd::Retried,
        Outcome::Dead { .. } => RunEnd::Dead,
        Outcome::Defer { .. } => RunEnd::Deferred,
    }
}

/// Claims and runs one message, then records its outcome.
pub async fn process(rt: &Runtime, queue: Queue, msg: JobMessage) -> RunEnd {
    let started = Instant::now();
    let end = match queue {
        Queue::Webhooks => process_webhook(rt, msg).await,
        _ => process_generic(rt, queue, msg).await,
    };
    rt.metrics.ended(queue, end, started.elapsed());
    end
}

fn note_claim(rt: &Runtime, queue: Queue, job: &jobs::Claimed) {
    rt.metrics.q(queue).started.fetch_add(1, Ordering::Relaxed);
    let span = tracing::Span::current();
    if let Some(t) = job.tenant_id {
        span.record(
            "tenant_id",
            tracing::field::display(shared::ids::TenantId::from_uuid(t)),
        );
    }
    span.record("attempt", job.attempts + 1);
    rt.hold(job.id, job.token);
}

async fn process_webhook(rt: &Runtime, msg: JobMessage) -> RunEnd {
    let (job, item) = match rt.webhook_claims.call(msg).await {
        Ok(Some(claimed)) => claimed,
        Ok(None) => return RunEnd::Stale,
        Err(e) => {
            // The lease runs out and the relay pushes the job again.
            tracing::warn!(error = %e, "could not claim; the job will come back");
            return RunEnd::Stale;
        }
    };
    note_claim(rt, Queue::Webhooks, &job);
    let done = deliver_webhook::run(rt, &job, item.as_ref()).await;
    let (end, recorded) = match done {
        Done::Delivery(c) => {
            let end = end_of(&c.job.outcome);
            (
                end,
                rt.webhook_done.call(*c).await.map_err(WorkerError::from),
            )
        }
        Done::Job(f) => (end_of(&f.outcome), finish_one(rt, f).await),
    };
    rt.unhold(job.id);
    record_result(end, recorded)
}

async fn process_generic(rt: &Runtime, queue: Queue, msg: JobMessage) -> RunEnd {
    let job = match rt.claims.call(msg).await {
        Ok(Some(job)) => job,
        Ok(None) => return RunEnd::Stale,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim; the job will come back");
            return RunEnd::Stale;
        }
    };
    note_claim(rt, queue, &job);
    let finished = crate::jobs::run_generic(rt, &job).await;
    let end = end_of(&finished.outcome);
    let recorded = finish_one(rt, finished).await;
    rt.unhold(job.id);
    record_result(end, recorded)
}

fn record_result(end: RunEnd, recorded: Result<bool, WorkerError>) -> RunEnd {
    match recorded {
        Ok(true) => {
            if end == RunEnd::Dead {
                tracing::warn!("job is dead; an operator can retry it");
            }
            end
        }
        Ok(false) => {
            tracing::info!("another run owns this job now; outcome dropped");
            RunEnd::Stale
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not record the outcome; the job will run again");
            RunEnd::Stale
        }
    }
}

async fn finish_one(rt: &Runtime, f: Finished) -> Result<bool, WorkerError> {
    let mut conn = rt.pool.acquire().await.map_err(shared::db::DbError::from)?;
    let done = jobs::finish(&mut conn, std::slice::from_ref(&f), rt.clock.now()).await?;
    Ok(!done.is_empty())
}
