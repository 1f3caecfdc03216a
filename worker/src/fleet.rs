//! Queue consumers: one apalis worker per queue this process serves, restarted when its Redis
//! backend fails (apalis-redis ends a worker on any fetch error, a Redis restart included).

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use apalis::prelude::{
    BackendExt, BoxDynError, Data, ParallelizeExt, TaskId, WorkerBuilder, WorkerBuilderExt,
};
use shared::{
    jobs::{self, Finished, JobMessage, Outcome, Queue},
    service::invoices::Attempt,
};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{
    Runtime, WorkerError,
    batch::Batcher,
    jobs::{
        billing::Held,
        deliver_webhook::{self, Done},
    },
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

/// How a job run with others ended, whether its outcome was recorded, and the job it leaves
/// this process to run next (the charge of the invoice a renewal made, with its first attempt
/// when the renewal started it).
type Ran = (RunEnd, Result<bool, Arc<String>>, Option<Held>);

/// Runs billing jobs of one kind many per transaction (each charge with the attempt its
/// renewal started, if any).
type Together = Batcher<Held, Ran>;

/// The billing jobs a consumer runs in batches: renewals (which share a commit and take
/// their invoice numbers together at its end) and charges (whose attempts start, and whose
/// answers are recorded, in one transaction each).
#[derive(Clone)]
struct Billing {
    renewals: Together,
    charges: Together,
    /// Bounds the other jobs of the renewals queue (clock advances, refunds, expiries), each
    /// on its own connections: many in flight would starve the pool.
    others: Arc<tokio::sync::Semaphore>,
}

/// Most of the renewals queue's jobs that do not run in batches running at once.
const OTHER_BILLING_JOBS: usize = 16;

impl Billing {
    fn new(rt: &Arc<Runtime>) -> Self {
        let together = |kind: &'static str| {
            let rt = rt.clone();
            Batcher::spawn_parallel(
                rt.settings.worker.billing_batch,
                rt.settings.worker.billing_parallel,
                move |batch: Vec<Held>| {
                    let rt = rt.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(run_together(&rt, kind, batch).await)
                    }
                },
            )
        };
        Self {
            renewals: together(jobs::Job::RENEW_SUBSCRIPTION),
            charges: together(jobs::Job::PAY_INVOICE),
            others: Arc::new(tokio::sync::Semaphore::new(OTHER_BILLING_JOBS)),
        }
    }

    /// The batcher for jobs of `kind`, when they run in batches.
    fn of(&self, kind: &str) -> Option<&Together> {
        match kind {
            jobs::Job::RENEW_SUBSCRIPTION => Some(&self.renewals),
            jobs::Job::PAY_INVOICE => Some(&self.charges),
            _ => None,
        }
    }
}

/// Runs a batch of jobs of `kind` together; when that fails (one job's error undoes the
/// transaction), one by one, each with its own outcome (a charge's attempt started by its
/// renewal is then resumed with its key).
async fn run_together(rt: &Runtime, kind: &str, batch: Vec<Held>) -> Vec<Ran> {
    let (batch, attempts): (Vec<jobs::Claimed>, Vec<_>) = batch.into_iter().unzip();
    // One job alone runs as any other, unless its attempt is started already.
    if batch.len() > 1 || attempts.iter().any(Option::is_some) {
        let started = Instant::now();
        let together = match kind {
            jobs::Job::RENEW_SUBSCRIPTION => crate::jobs::billing::renew_together(rt, &batch).await,
            jobs::Job::PAY_INVOICE => crate::jobs::billing::pay_together(rt, &batch, attempts)
                .await
                .map(|done| done.map(|d| d.into_iter().map(|(f, r)| (f, r, None)).collect())),
            _ => None,
        };
        match together {
            Some(Ok(done)) => {
                rt.metrics
                    .batched
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                tracing::debug!(
                    kind,
                    batch = batch.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "billing batch done"
                );
                return done
                    .into_iter()
                    .map(|(f, recorded, next)| (end_of(&f.outcome), Ok(recorded), next))
                    .collect();
            }
            Some(Err(e)) => {
                rt.metrics.batch_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(error = %e, kind, batch = batch.len(), "batch failed; one by one");
            }
            None => {}
        }
    }
    futures_util::future::join_all(batch.iter().map(|job| async move {
        let finished = crate::jobs::run_generic(rt, job).await;
        let end = end_of(&finished.outcome);
        let recorded = finish_one(rt, finished)
            .await
            .map_err(|e| Arc::new(e.to_string()));
        (end, recorded, None)
    }))
    .await
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
        .data(Billing::new(rt))
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
    billing: Data<Billing>,
) -> Result<(), BoxDynError> {
    let QueueTag(queue) = *tag;
    let span = tracing::info_span!(
        "job",
        queue = %queue,
        job_id = %msg.id,
        tenant_id = tracing::field::Empty,
        attempt = tracing::field::Empty,
    );
    process(&rt, queue, msg, &billing)
        .instrument(span.clone())
        .await;
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

/// Claims and runs one message, then records its outcome; then runs the job it leaves this
/// process to run next, if any (the charge of the invoice a renewal made).
async fn process(rt: &Runtime, queue: Queue, msg: JobMessage, billing: &Billing) {
    let started = Instant::now();
    let (end, next) = match queue {
        Queue::Webhooks => (process_webhook(rt, msg).await, None),
        _ => match claim(rt, msg).await {
            Some(job) => run_claimed(rt, queue, job, None, billing).await,
            None => (RunEnd::Stale, None),
        },
    };
    rt.metrics.ended(queue, end, started.elapsed());
    // Stopping: the charge stays held, and is handed back with the others.
    let next = next.filter(|_| !rt.stopping.load(Ordering::SeqCst));
    if let Some((job, attempt)) = next {
        rt.metrics.run_at_once.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let span = tracing::info_span!(
            "job",
            queue = %queue,
            job_id = %job.id,
            tenant_id = tracing::field::Empty,
            attempt = tracing::field::Empty,
        );
        // A charge leaves nothing next.
        let (end, _) = run_claimed(rt, queue, job, attempt, billing)
            .instrument(span)
            .await;
        rt.metrics.ended(queue, end, started.elapsed());
    }
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

/// Claims a message of a queue other than webhooks (`None`: stale, or not claimed now).
async fn claim(rt: &Runtime, msg: JobMessage) -> Option<jobs::Claimed> {
    match rt.claims.call(msg).await {
        Ok(job) => job,
        Err(e) => {
            tracing::warn!(error = %e, "could not claim; the job will come back");
            None
        }
    }
}

/// Runs a claimed job (a charge with the attempt its renewal `started`, if any) and records
/// its outcome; returns how it ended and the job it leaves this process to run next.
async fn run_claimed(
    rt: &Runtime,
    queue: Queue,
    job: jobs::Claimed,
    started: Option<Attempt>,
    billing: &Billing,
) -> (RunEnd, Option<Held>) {
    note_claim(rt, queue, &job);
    let (end, recorded, next) = if let Some(together) = billing.of(&job.kind) {
        let id = job.id;
        let result = match together.call((job, started)).await {
            Ok((end, recorded, next)) => (
                end,
                recorded.map_err(|e| crate::batch::BatchError::Failed(e).into()),
                next,
            ),
            Err(e) => (RunEnd::Stale, Err(e.into()), None),
        };
        rt.unhold(id);
        result
    } else {
        let _permit = if queue == Queue::Renewals {
            billing.others.acquire().await.ok()
        } else {
            None
        };
        let finished = crate::jobs::run_generic(rt, &job).await;
        let end = end_of(&finished.outcome);
        let recorded = finish_one(rt, finished).await;
        rt.unhold(job.id);
        (end, recorded, None)
    };
    (record_result(end, recorded), next)
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
