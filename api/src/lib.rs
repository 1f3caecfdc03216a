//! The billing platform's REST API, as a library so tests can start it in-process.

pub mod auth;
pub mod body;
pub mod error;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod routes;
pub mod state;
pub mod telemetry;
pub mod work;

use std::{net::SocketAddr, time::Duration};

use poem::{
    Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    middleware::{NormalizePath, TrailingSlash},
    web::Data,
};
use shared::config::Settings;

use crate::state::AppState;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("DATABASE_URL: cannot connect to PostgreSQL: {0}")]
    Database(String),
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error("REDIS_URL: cannot connect to Redis: {0}")]
    Redis(String),
    #[error("API_ADDR: cannot listen on {0}: {1}")]
    Bind(SocketAddr, String),
    #[error("STRIPE_SECRET_KEY_TEST / STRIPE_SECRET_KEY_LIVE: {0}")]
    Stripe(#[from] shared::stripe::SetupError),
}

/// Connects to Redis with a bounded wait.
pub async fn redis_connection(
    settings: &Settings,
) -> Result<redis::aio::ConnectionManager, StartError> {
    let client = shared::ratelimit::client(settings.redis.url.expose())
        .map_err(|e| StartError::Redis(e.to_string()))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2);
    tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| StartError::Redis("timed out".into()))?
    .map_err(|e| StartError::Redis(e.to_string()))
}

/// Builds the state: database pool (migrated when configured) and Redis connection.
pub async fn build_state(settings: Settings) -> Result<AppState, StartError> {
    build_state_with_clock(settings, std::sync::Arc::new(shared::clock::SystemClock)).await
}

/// The state of an API reading time from `clock` (tests move one instead of sleeping).
pub async fn build_state_with_clock(
    settings: Settings,
    clock: std::sync::Arc<dyn shared::clock::Clock>,
) -> Result<AppState, StartError> {
    let pool =
        shared::db::pool(&settings.database).map_err(|e| StartError::Database(e.to_string()))?;
    if settings.database.migrate_on_start {
        shared::db::migrate(&pool)
            .await
            .map_err(|e| StartError::Migrate(e.to_string()))?;
    } else {
        sqlx::query("SELECT 1")
            .execute(&pool)
            .await
            .map_err(|e| StartError::Database(e.to_string()))?;
    }
    let redis = redis_connection(&settings).await?;
    let stripe = shared::stripe::Stripe::new(&settings.stripe).map_err(StartError::Stripe)?;
    let health = shared::health::Health::new(&settings.database)
        .map_err(|e| StartError::Database(e.to_string()))?;
    Ok(AppState::new(settings, pool, redis, stripe, health, clock))
}

#[handler]
fn healthz() -> &'static str {
    "ok"
}

/// Checks both dependencies at once, each for at most `shared::health::PROBE_TIMEOUT`.
#[handler]
async fn readyz(state: Data<&AppState>) -> Response {
    let (db, cache) = state.health.check(&state.redis).await;
    let body = serde_json::json!({
        "status": if db && cache { "ready" } else { "unavailable" },
        "postgres": if db { "ok" } else { "unreachable" },
        "redis": if cache { "ok" } else { "unreachable" },
    });
    let status = if db && cache {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    poem::web::Json(body).with_status(status).into_response()
}

#[handler]
fn metrics_text(state: Data<&AppState>) -> Response {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

#[handler]
fn openapi_json() -> Response {
    static SPEC: std::sync::LazyLock<String> = std::sync::LazyLock::new(routes::spec_json);
    Response::builder()
        .content_type("application/json; charset=utf-8")
        .body(SPEC.as_str())
}

#[handler]
fn docs() -> poem::web::Html<&'static str> {
    static HTML: std::sync::LazyLock<String> = std::sync::LazyLock::new(routes::docs_html);
    poem::web::Html(HTML.as_str())
}

/// The whole HTTP application.
pub fn app(state: AppState) -> impl Endpoint {
    let routes = Route::new()
        .nest("/", routes::service())
        .at("/openapi.json", get(openapi_json))
        .at("/docs", get(docs))
        .at("/healthz", get(healthz))
        .at("/readyz", get(readyz))
        .at("/metrics", get(metrics_text))
        .data(state.clone());
    middleware::wrap(routes, state)
        .with(NormalizePath::new(TrailingSlash::Trim))
        .around(|ep, mut req| async move {
            middleware::seed_aliases(&mut req);
            ep.call(req).await
        })
}

/// A bound, not yet running, API server.
pub struct Application {
    pub addr: SocketAddr,
    acceptor: listener::ProblemAcceptor<poem::listener::TcpAcceptor>,
    state: AppState,
}

impl Application {
    pub async fn bind(state: AppState) -> Result<Self, StartError> {
        let addr = state.settings.api.addr;
        let acceptor = TcpListener::bind(addr)
            .into_acceptor()
            .await
            .map_err(|e| StartError::Bind(addr, e.to_string()))?;
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .unwrap_or(addr);
        Ok(Self {
            addr,
            acceptor: listener::ProblemAcceptor(acceptor),
            state,
        })
    }

    /// Serves until the process receives SIGTERM or Ctrl-C.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        shared::health::watch(self.state.health.clone(), self.state.redis.clone());
        poem::Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(
                app(self.state),
                shutdown_signal(),
                Some(Duration::from_secs(10)),
            )
            .await
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
