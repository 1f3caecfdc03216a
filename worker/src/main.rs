//! `billing-worker`: a member of the worker fleet.

use std::{sync::Arc, time::Duration};

use shared::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match settings.log_format {
        shared::config::LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init(),
        shared::config::LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let pool = shared::db::pool(&settings.database)?;
    if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
        eprintln!("start-up failed: DATABASE_URL: cannot connect to PostgreSQL: {e}");
        std::process::exit(1);
    }
    let client = redis::Client::open(settings.redis.url.expose().as_str())?;
    let redis = match tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new(client),
    )
    .await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            eprintln!("start-up failed: REDIS_URL: cannot connect to Redis: {e}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("start-up failed: REDIS_URL: cannot connect to Redis: timed out");
            std::process::exit(1);
        }
    };
    let state = worker::WorkerState {
        pool,
        redis,
        purged: Arc::new(Default::default()),
    };
    worker::run(settings, state).await?;
    Ok(())
}
