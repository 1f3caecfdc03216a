//! Shared state of one API process.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use shared::{
    auth::jwt::JwtKeys,
    clock::Clock,
    config::Settings,
    crypto::Encryptor,
    db::{api_keys::ActiveKey, tenants::TenantRow, users::Credentials},
    ids::{TenantId, UserId},
};
use sqlx::PgPool;

use crate::metrics::Metrics;

/// How long a credential lookup is trusted. Revocation reaches every replica within this.
pub const AUTH_CACHE_TTL: Duration = Duration::from_millis(900);

#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub settings: Settings,
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub jwt: JwtKeys,
    pub encryptor: Encryptor,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    /// PostgreSQL and Redis as last checked (requests fail fast while one is down).
    pub health: Arc<shared::health::Health>,
    /// Stripe, for Connect onboarding (catalog sync happens in the worker fleet).
    pub stripe: shared::stripe::Stripe,
    pub keys: TtlCache<[u8; 32], ActiveKey>,
    pub users: TtlCache<UserId, Credentials>,
    /// Tenant rows for hot read paths (verify); changes show within the TTL.
    pub tenants: TtlCache<TenantId, TenantRow>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    pub fn new(
        settings: Settings,
        pool: PgPool,
        redis: ConnectionManager,
        stripe: shared::stripe::Stripe,
        health: shared::health::Health,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let health = Arc::new(health);
        let secret = settings.auth.app_secret.expose().clone();
        Self(Arc::new(Inner {
            stripe,
            jwt: JwtKeys::new(&secret),
            encryptor: Encryptor::new(&secret),
            keys: TtlCache::new(AUTH_CACHE_TTL, clock.clone()),
            users: TtlCache::new(AUTH_CACHE_TTL, clock.clone()),
            tenants: TtlCache::new(AUTH_CACHE_TTL, clock.clone()),
            clock,
            metrics: Metrics::default(),
            health,
            settings,
            pool,
            redis,
        }))
    }
}

/// A small map whose entries (found or not found) expire after a fixed time.
pub struct TtlCache<K, V> {
    ttl: chrono::Duration,
    clock: Arc<dyn Clock>,
    map: Mutex<HashMap<K, Entry<V>>>,
}

/// When an entry was put, and what was found (`None`: nothing).
type Entry<V> = (DateTime<Utc>, Option<V>);

const MAX_ENTRIES: usize = 100_000;

impl<K: std::hash::Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// Entries expire `ttl` after they were put, by `clock`.
    pub fn new(ttl: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX),
            clock,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(found)` when a fresh entry exists.
    pub fn get(&self, k: &K) -> Option<Option<V>> {
        let now = self.clock.now();
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(k)
            .filter(|(at, _)| now - *at < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn put(&self, k: K, v: Option<V>) {
        let now = self.clock.now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| now - *at < ttl);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(k, (now, v));
    }

    pub fn clear(&self) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}
