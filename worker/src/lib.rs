//! A member of the worker fleet: consumes the Redis queues it is given (apalis), relays due
//! work from the PostgreSQL outbox into them, keeps house, and serves health and metrics.
//!
//! Any number of these run side by side; they share nothing but PostgreSQL and Redis.

pub mod batch;
pub mod billing_runs;
pub mod fleet;
pub mod housekeeping;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod redis_queue;
pub mod relay;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use poem::{
    EndpointExt, IntoResponse, Response, Route, get, handler,
    http::StatusCode,
    listener::{Listener, TcpListener},
    web::Data,
};
use redis::aio::ConnectionManager;
use shared::{
    clock::{Clock, SystemClock},
    config::Settings,
    crypto::Encryptor,
    db::{
        DbError,
        webhook_deliveries::{self, Completion, SendItem},
    },
    jobs::{Claimed, JobMessage},
};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use crate::{batch::Batcher, metrics::Metrics};

/// What can go wrong in the worker's own machinery (a job's failure is its outcome instead).
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("the database settings: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("the Redis queue: {0}")]
    Queue(#[from] apalis_redis::Error),
    #[error(transparent)]
    Service(#[from] shared::service::ServiceError),
    #[error("the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(transparent)]
    Stripe(#[from] shared::stripe::SetupError),
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
}

/// Most items in one batched database round trip (claims and delivery outcomes).
const BATCH: usize = 64;

/// Connections of the pool for leases and claims.
const RELAXED_CONNECTIONS: u32 = 4;

/// Everything a worker process shares between its queues, relay and housekeeping.
pub struct Runtime {
    pub settings: Settings,
    pub pool: PgPool,
    /// Commits without waiting for the disk: job leases and claims only.
    pub relaxed: PgPool,
    /// PostgreSQL and Redis as last checked by `/readyz`.
    pub health: shared::health::Health,
    pub redis: ConnectionManager,
    pub clock: Arc<dyn Clock>,
    pub encryptor: Encryptor,
    pub http: reqwest::Client,
    /// Stripe, for the catalog sync.
    pub stripe: shared::stripe::Stripe,
    pub metrics: Metrics,
    /// This process's name in Redis (unique per start).
    pub instance: String,
    /// Claims webhook jobs and loads what sending needs, in batches.
    pub webhook_claims: Batcher<JobMessage, Option<(Claimed, Option<SendItem>)>>,
    /// Records delivery outcomes, in batches.
    pub webhook_done: Batcher<Completion, bool>,
    /// Claims jobs of the other queues, in batches.
    pub claims: Batcher<JobMessage, Option<Claimed>>,
    /// Jobs this process is running: id → token, handed back when it stops.
    pub held: Mutex<HashMap<Uuid, Uuid>>,
    /// The process is stopping: it starts no job it holds but has not begun (they are handed
    /// back with the others).
    pub stopping: std::sync::atomic::AtomicBool,
}

impl Runtime {
    pub fn new(
        settings: Settings,
        pool: PgPool,
        redis: ConnectionManager,
    ) -> Result<Arc<Self>, WorkerError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let lease = settings.jobs.lease;

        let relaxed = shared::db::relaxed_pool(&settings.database, RELAXED_CONNECTIONS)?;
        let health = shared::health::Health::new(&settings.database)?;
        let (p, c) = (relaxed.clone(), clock.clone());
        let webhook_claims = Batcher::spawn(BATCH, move |msgs: Vec<JobMessage>| {
            let (pool, clock) = (p.clone(), c.clone());
            async move {
                let started = std::time::Instant::now();
                let claimed =
                    webhook_deliveries::claim_for_send(&pool, &msgs, clock.now(), lease).await?;
                tracing::debug!(
                    batch = msgs.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "webhook jobs claimed"
                );
                let mut claimed: HashMap<Uuid, (Claimed, Option<SendItem>)> =
                    claimed.into_iter().map(|c| (c.0.id, c)).collect();
                Ok::<_, DbError>(msgs.iter().map(|m| claimed.remove(&m.id)).collect())
            }
        });

        let (p, c) = (pool.clone(), clock.clone());
        let webhook_done = Batcher::spawn_parallel(BATCH, 2, move |done: Vec<Completion>| {
            let (pool, clock) = (p.clone(), c.clone());
            async move {
                let started = std::time::Instant::now();
                let recorded = match webhook_deliveries::record(&pool, &done, clock.now()).await {
                    Ok(r) => r,
                    Err(e) if done.len() > 1 => {
                        // One bad item must not hold back the others: record them one by one.
                        tracing::warn!(error = %e, batch = done.len(), "batch not recorded; recording one by one");
                        let mut recorded = Vec::new();
                        for item in &done {
                            match webhook_deliveries::record(
                                &pool,
                                std::slice::from_ref(item),
                                clock.now(),
                            )
                            .await
                            {
                                Ok(r) => recorded.extend(r),
                                Err(e) => {
                                    tracing::warn!(error = %e, delivery = %item.delivery_id, "delivery outcome not recorded")
                                }
                            }
                        }
                        recorded
                    }
                    Err(e) => return Err(e),
                };
                tracing::debug!(
                    batch = done.len(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "deliveries recorded"
                );
                let recorded: std::collections::HashSet<Uuid> = recorded.into_iter().collect();
                Ok::<_, DbError>(
                    done.iter()
                        .map(|d| recorded.contains(&d.delivery_id))
                        .collect(),
                )
            }
        });

        let (p, c) = (relaxed.clone(), clock.clone());
        let claims = Batcher::spawn(BATCH, move |msgs: Vec<JobMessage>| {
            let (pool, clock) = (p.clone(), c.clone());
            async move {
                let claimed = shared::jobs::claim(&pool, &msgs, clock.now(), lease).await?;
                let mut claimed: HashMap<Uuid, Claimed> =
                    claimed.into_iter().map(|c| (c.id, c)).collect();
                Ok::<_, DbError>(msgs.iter().map(|m| claimed.remove(&m.id)).collect())
            }
        });

        let secret = settings.auth.app_secret.expose().clone();
        Ok(Arc::new(Self {
            http: http::client(&settings.webhooks)?,
            stripe: shared::stripe::Stripe::new(&settings.stripe)?,
            encryptor: Encryptor::new(&secret),
            metrics: Metrics::default(),
            instance: format!(
                "{}-{}-{}",
                hostname(),
                std::process::id(),
                &Uuid::new_v4().simple().to_string()[..8]
            ),
            held: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            webhook_claims,
            webhook_done,
            claims,
            settings,
            pool,
            relaxed,
            health,
            redis,
            clock,
        }))
    }

    pub fn hold(&self, id: Uuid, token: Uuid) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, token);
    }

    pub fn unhold(&self, id: Uuid) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// A queue's retry policy, with the configured first wait when one is set (tests).
pub fn retry_policy(settings: &Settings, queue: shared::jobs::Queue) -> shared::jobs::RetryPolicy {
    let mut policy = queue.retry_policy();
    if let Some(base) = settings.jobs.backoff_base {
        policy.base = base;
    }
    policy
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// Checks both dependencies at once, each for at most `shared::health::PROBE_TIMEOUT`.
#[handler]
async fn readyz(rt: Data<&Arc<Runtime>>) -> Response {
    let (db, cache) = rt.health.check(&rt.redis).await;
    let status = if db && cache {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    format!(
        "postgres={} redis={}",
        if db { "ok" } else { "down" },
        if cache { "ok" } else { "down" }
    )
    .with_status(status)
    .into_response()
}

#[handler]
fn metrics_text(rt: Data<&Arc<Runtime>>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(rt.metrics.render())
}

/// Runs the worker until SIGTERM or Ctrl-C: then it takes no new jobs, lets running ones
/// finish within the grace period, hands back what it still holds, and returns.
pub async fn run(rt: Arc<Runtime>) -> std::io::Result<()> {
    run_until(rt, shutdown_signal()).await
}

/// Queues once, across the fleet, the Stripe events stored as ignored before the platform acted
/// on their types. A failure here is logged; the next start tries again.
async fn reprocess_newly_handled(rt: &Runtime) {
    let result = async {
        let mut uow = shared::uow::UnitOfWork::begin(&rt.pool, rt.clock.as_ref()).await?;
        let n = shared::service::stripe_events::reprocess_newly_handled(&mut uow).await?;
        uow.commit().await?;
        Ok::<u64, shared::service::ServiceError>(n)
    }
    .await;
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(requeued = n, "stripe events stored as ignored queued again"),
        Err(e) => tracing::warn!(error = %e, "could not queue ignored stripe events again"),
    }
}

/// [`run`] until `shutdown` resolves (tests stop workers this way).
pub async fn run_until(
    rt: Arc<Runtime>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let queues = rt.settings.worker.queues.clone();
    // A schedule that does not parse stops the start, before anything runs.
    let billing_schedule = if queues.contains(&shared::jobs::SCHEDULED_QUEUE) {
        Some(
            billing_runs::schedule(&rt.settings.worker.billing_schedule)
                .map_err(std::io::Error::other)?,
        )
    } else {
        None
    };
    reprocess_newly_handled(&rt).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let consumers: Vec<_> = queues
        .iter()
        .map(|q| tokio::spawn(fleet::consume(rt.clone(), *q, stop_rx.clone())))
        .collect();
    let relay = tokio::spawn(relay::run(rt.clone(), queues.clone(), stop_rx.clone()));
    let housekeeping = tokio::spawn(housekeeping::run(rt.clone(), stop_rx.clone()));
    let schedule = billing_schedule
        .map(|schedule| tokio::spawn(billing_runs::run(rt.clone(), schedule, stop_rx.clone())));

    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_text))
        .data(rt.clone());
    let mut server_stop = stop_rx.clone();
    let acceptor = TcpListener::bind(rt.settings.worker.addr)
        .into_acceptor()
        .await?;
    let mut server = tokio::spawn(
        poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            async move {
                let _ = server_stop.wait_for(|s| *s).await;
            },
            Some(Duration::from_secs(2)),
        ),
    );
    tracing::info!(
        addr = %rt.settings.worker.addr,
        queues = ?queues.iter().map(|q| q.as_str()).collect::<Vec<_>>(),
        instance = %rt.instance,
        "billing-worker running"
    );
    tokio::select! {
        () = shutdown => {}
        res = &mut server => tracing::error!(?res, "the health listener stopped"),
    }
    tracing::info!("stopping: taking no new jobs");
    rt.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = stop_tx.send(true);
    let grace = rt.settings.worker.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let finished =
        tokio::time::timeout_at(deadline, futures_util::future::join_all(consumers)).await;
    if finished.is_err() {
        tracing::warn!(?grace, "grace period over with jobs still running");
    }
    // A schedule step under way ends within the same grace, so a run it made is marked and
    // counted as made here (cut short, the run waits for another process to take it over).
    if let Some(mut s) = schedule
        && tokio::time::timeout_at(deadline, &mut s).await.is_err()
    {
        tracing::warn!(?grace, "grace period over with a billing run being made");
        s.abort();
    }
    let held: Vec<(Uuid, Uuid)> = rt
        .held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .collect();
    if !held.is_empty() {
        match shared::jobs::release(&rt.pool, &held, rt.clock.now()).await {
            Ok(n) => tracing::info!(handed_back = n, "unfinished jobs handed back"),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand jobs back; their leases will run out")
            }
        }
    }
    relay.abort();
    housekeeping.abort();
    tracing::info!("billing-worker stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
