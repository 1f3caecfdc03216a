//! The worker fleet member. This skeleton connects to PostgreSQL and Redis, serves health and
//! metrics, runs housekeeping (expired idempotency keys) and stops cleanly on SIGTERM; the job
//! queues arrive with the worker-fleet issue.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use poem::{
    EndpointExt, IntoResponse, Response, Route, get, handler, http::StatusCode,
    listener::TcpListener, web::Data,
};
use shared::config::Settings;
use sqlx::PgPool;

#[derive(Clone)]
pub struct WorkerState {
    pub pool: PgPool,
    pub redis: redis::aio::ConnectionManager,
    pub purged: Arc<AtomicU64>,
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

#[handler]
async fn readyz(state: Data<&WorkerState>) -> Response {
    let db = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
    let mut redis = state.redis.clone();
    let cache = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
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
fn metrics(state: Data<&WorkerState>) -> String {
    format!(
        "# HELP worker_idempotency_keys_purged_total Expired idempotency keys deleted.\n\
         # TYPE worker_idempotency_keys_purged_total counter\n\
         worker_idempotency_keys_purged_total {}\n",
        state.purged.load(Ordering::Relaxed)
    )
}

/// Deletes expired idempotency keys every `every` until `stop` resolves.
async fn housekeeping(state: WorkerState, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match shared::db::idempotency::purge_expired(&state.pool).await {
            Ok(n) => {
                state.purged.fetch_add(n, Ordering::Relaxed);
                if n > 0 {
                    tracing::info!(purged = n, "expired idempotency keys deleted");
                }
            }
            Err(e) => tracing::warn!(error = %e, "housekeeping failed; will retry"),
        }
    }
}

/// Runs the worker until SIGTERM or Ctrl-C.
pub async fn run(settings: Settings, state: WorkerState) -> std::io::Result<()> {
    let housekeeping = tokio::spawn(housekeeping(state.clone(), Duration::from_secs(3600)));
    let app = Route::new()
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics))
        .data(state);
    tracing::info!(addr = %settings.worker.addr, "billing-worker running");
    let result = poem::Server::new(TcpListener::bind(settings.worker.addr))
        .run_with_graceful_shutdown(app, shutdown_signal(), Some(Duration::from_secs(10)))
        .await;
    housekeeping.abort();
    tracing::info!("billing-worker stopped");
    result
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
