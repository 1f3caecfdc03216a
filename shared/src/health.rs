//! What a process knows about its dependencies, so requests fail fast during an outage.
//!
//! A background task checks PostgreSQL and Redis every [`PROBE_EVERY`], each check bounded by
//! [`PROBE_TIMEOUT`]; request paths read the result at once instead of waiting for a pool or a
//! connection that cannot come. PostgreSQL is checked over a connection of its own, so a pool
//! busy with requests never looks like an outage. A dependency is marked down by a failed check
//! (or by a request that saw it fail) and up again by the next check that succeeds.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::aio::ConnectionManager;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseSettings;

/// How often the background task checks.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// The longest one check may take: a dependency slower than this is down.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

/// The last known state of each dependency (up until a check says otherwise).
#[derive(Debug)]
pub struct Health {
    db_down: AtomicBool,
    redis_down: AtomicBool,
    /// One connection, for the checks only.
    probe: PgPool,
}

impl Health {
    pub fn new(settings: &DatabaseSettings) -> Result<Self, sqlx::Error> {
        let options: PgConnectOptions = settings.url.expose().parse()?;
        Ok(Self {
            db_down: AtomicBool::new(false),
            redis_down: AtomicBool::new(false),
            probe: PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(PROBE_TIMEOUT)
                .connect_lazy_with(options),
        })
    }

    pub fn db_up(&self) -> bool {
        !self.db_down.load(Ordering::Relaxed)
    }

    pub fn redis_up(&self) -> bool {
        !self.redis_down.load(Ordering::Relaxed)
    }

    /// Records a state of PostgreSQL; logs the changes.
    pub fn set_db(&self, up: bool) {
        if self.db_down.swap(!up, Ordering::Relaxed) == up {
            if up {
                tracing::info!("PostgreSQL is reachable again");
            } else {
                tracing::error!("PostgreSQL is unreachable; requests needing it fail at once");
            }
        }
    }

    /// Records a state of Redis; logs the changes.
    pub fn set_redis(&self, up: bool) {
        if self.redis_down.swap(!up, Ordering::Relaxed) == up {
            if up {
                tracing::info!("Redis is reachable again");
            } else {
                tracing::error!("Redis is unreachable");
            }
        }
    }

    /// Whether PostgreSQL answers within [`PROBE_TIMEOUT`] (on the probe's own connection).
    pub async fn check_db(&self) -> bool {
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, sqlx::query("SELECT 1").execute(&self.probe)).await,
            Ok(Ok(_))
        )
    }

    /// Checks both dependencies now, at once; returns (PostgreSQL up, Redis up) and records
    /// them.
    pub async fn check(&self, redis: &ConnectionManager) -> (bool, bool) {
        let (db, cache) = tokio::join!(self.check_db(), check_redis(redis));
        self.set_db(db);
        self.set_redis(cache);
        (db, cache)
    }
}

/// Whether Redis answers within [`PROBE_TIMEOUT`].
pub async fn check_redis(redis: &ConnectionManager) -> bool {
    let mut conn = redis.clone();
    matches!(
        tokio::time::timeout(
            PROBE_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Keeps `health` current until the process ends.
pub fn watch(health: Arc<Health>, redis: ConnectionManager) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            health.check(&redis).await;
        }
    });
}
