//! Settings, loaded once at start-up from environment variables with local defaults.
//!
//! A missing or malformed setting without a safe default is a [`ConfigError`] whose message
//! names the variable, so start-up stops with one clear line.

use std::{net::SocketAddr, str::FromStr, time::Duration};

pub use crate::jobs::queue::{Queue, QueueMap};
use crate::secret::Secret;

/// Why the settings could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name} is malformed: {reason}")]
    Malformed { name: &'static str, reason: String },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: Secret<String>,
    pub max_connections: u32,
    /// The longest a request waits for a pooled connection.
    pub acquire_timeout: std::time::Duration,
    /// Apply pending migrations when the API starts.
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: Secret<String>,
    /// Prefix for every Redis key this deployment writes (tests use a fresh one each).
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Root secret; JWT signing and at-rest encryption keys are derived from it.
    pub app_secret: Secret<String>,
    pub access_token_ttl_secs: i64,
    pub refresh_token_ttl_secs: i64,
    /// Requests per second allowed per API key or user.
    pub rate_limit_per_second: u32,
    /// Login attempts allowed per email from one client address in one window.
    pub login_attempts_per_email: u32,
    /// Login attempts allowed per client address in one window.
    pub login_attempts_per_ip: u32,
    pub login_window_secs: u64,
    /// Registrations per client address per window.
    pub registrations_per_ip: u32,
    pub registration_window_secs: u64,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub addr: SocketAddr,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Address of the worker's health and metrics listener.
    pub addr: SocketAddr,
    /// The queues this process consumes (and relays); all by default.
    pub queues: Vec<Queue>,
    /// Jobs run at once per queue in this process.
    pub concurrency: QueueMap<usize>,
    /// How long SIGTERM waits for running jobs before handing them back.
    pub shutdown_grace: Duration,
    /// How often a worker tells Redis it is alive; a worker silent for three of these is
    /// presumed dead and its jobs go to another worker.
    pub heartbeat: Duration,
    /// When the fleet makes billing runs: a cron expression with seconds
    /// (`sec min hour day month weekday`), every minute by default.
    pub billing_schedule: String,
    /// Most renewals (and most charges) run in one transaction.
    pub billing_batch: usize,
    /// How many such transactions of a kind run at once in this process.
    pub billing_parallel: usize,
}

/// How the outbox relay feeds the Redis queues.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// How long a job pushed to Redis (or being run) is reserved before it is due again.
    pub lease: Duration,
    /// A queue holding this many jobs in Redis gets no more until it drains.
    pub high_water: usize,
    /// Most jobs moved to Redis in one relay step.
    pub relay_batch: usize,
    /// How often the relay looks for due work when nothing wakes it.
    pub relay_interval: Duration,
    /// Events (and their deliveries) older than this are deleted.
    pub event_retention: Duration,
    /// Overrides every queue's first retry wait (tests use milliseconds).
    pub backoff_base: Option<Duration>,
}

/// Stripe: the platform's keys per mode, and what the sync and incoming webhooks need. A mode
/// without a key has no Stripe: the sandbox gateway stands in and nothing is synced.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub secret_key_test: Option<Secret<String>>,
    pub secret_key_live: Option<Secret<String>>,
    /// The API's base URL (a local Stripe-compatible server in tests).
    pub api_base: String,
    /// Signing secrets of the Stripe webhook endpoints that call `/webhooks/stripe`.
    pub webhook_secrets: Vec<Secret<String>>,
    /// Requests per second per connected account (Stripe allows 25 in test mode, 100 live).
    pub rate_limit_test: u32,
    pub rate_limit_live: u32,
    /// Where browsers reach this API (Connect onboarding returns there).
    pub public_url: String,
    pub timeout: Duration,
}

impl StripeSettings {
    /// The platform key for a mode, if Stripe is configured for it.
    pub fn key(&self, livemode: bool) -> Option<&Secret<String>> {
        if livemode {
            self.secret_key_live.as_ref()
        } else {
            self.secret_key_test.as_ref()
        }
    }

    pub fn rate_limit(&self, livemode: bool) -> u32 {
        if livemode {
            self.rate_limit_live
        } else {
            self.rate_limit_test
        }
    }
}

/// Outgoing webhooks.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Allow `http://` and loopback or private addresses (local development and tests only).
    pub allow_private_targets: bool,
    /// Waits after each failed attempt; when they run out the delivery has failed.
    pub retry_schedule: Vec<Duration>,
    /// An endpoint failing for this long without a success is disabled.
    pub disable_after: Duration,
    /// Connect timeout and whole-request timeout.
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

/// All settings of the platform.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub api: ApiSettings,
    pub worker: WorkerSettings,
    pub jobs: JobSettings,
    pub webhooks: WebhookSettings,
    pub stripe: StripeSettings,
    pub log_format: LogFormat,
}

impl Settings {
    /// Loads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Loads the settings from any variable lookup (used by tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let app_secret = get("APP_SECRET").ok_or(ConfigError::Missing {
            name: "APP_SECRET",
            hint: "set it to at least 32 random characters (scripts/dev creates one)",
        })?;
        if app_secret.len() < 32 {
            return Err(ConfigError::Malformed {
                name: "APP_SECRET",
                reason: "must be at least 32 characters".into(),
            });
        }
        let log_format = match get("LOG_FORMAT").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Malformed {
                    name: "LOG_FORMAT",
                    reason: format!("expected `text` or `json`, got `{other}`"),
                });
            }
        };
        let database_url = get("DATABASE_URL")
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/billing".into());
        if !database_url.starts_with("postgres://") && !database_url.starts_with("postgresql://") {
            return Err(ConfigError::Malformed {
                name: "DATABASE_URL",
                reason: "expected a postgres:// URL".into(),
            });
        }
        let redis_url = get("REDIS_URL").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
        if !redis_url.starts_with("redis://") && !redis_url.starts_with("rediss://") {
            return Err(ConfigError::Malformed {
                name: "REDIS_URL",
                reason: "expected a redis:// URL".into(),
            });
        }
        Ok(Self {
            database: DatabaseSettings {
                url: Secret::new(database_url),
                max_connections: parse(&get, "DATABASE_MAX_CONNECTIONS", 20)?,
                acquire_timeout: std::time::Duration::from_secs(parse(
                    &get,
                    "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
                    5,
                )?),
                migrate_on_start: parse_bool(&get, "MIGRATE_ON_START", true)?,
            },
            redis: RedisSettings {
                url: Secret::new(redis_url),
                key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "billing:".into()),
            },
            auth: AuthSettings {
                app_secret: Secret::new(app_secret),
                access_token_ttl_secs: parse(&get, "ACCESS_TOKEN_TTL_SECONDS", 900)?,
                refresh_token_ttl_secs: parse(&get, "REFRESH_TOKEN_TTL_SECONDS", 14 * 86_400)?,
                rate_limit_per_second: parse(&get, "RATE_LIMIT_PER_SECOND", 100)?,
                login_attempts_per_email: parse(&get, "LOGIN_ATTEMPTS_PER_EMAIL", 10)?,
                login_attempts_per_ip: parse(&get, "LOGIN_ATTEMPTS_PER_IP", 50)?,
                login_window_secs: parse(&get, "LOGIN_WINDOW_SECONDS", 900)?,
                registrations_per_ip: parse(&get, "REGISTRATIONS_PER_IP", 10)?,
                registration_window_secs: parse(&get, "REGISTRATION_WINDOW_SECONDS", 3600)?,
            },
            api: ApiSettings {
                addr: parse(&get, "API_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
                max_body_bytes: parse(&get, "MAX_BODY_BYTES", 1024 * 1024)?,
            },
            worker: WorkerSettings {
                addr: parse(
                    &get,
                    "WORKER_ADDR",
                    SocketAddr::from(([127, 0, 0, 1], 8081)),
                )?,
                queues: parse_queues(&get, "WORKER_QUEUES")?,
                concurrency: parse_concurrency(&get)?,
                shutdown_grace: Duration::from_secs(parse(&get, "SHUTDOWN_GRACE_SECONDS", 20)?),
                heartbeat: Duration::from_secs(positive(
                    "WORKER_HEARTBEAT_SECONDS",
                    parse(&get, "WORKER_HEARTBEAT_SECONDS", 5)?,
                )?),
                billing_schedule: get("BILLING_RUN_SCHEDULE")
                    .unwrap_or_else(|| "0 * * * * *".to_owned()),
                billing_batch: at_most(
                    "WORKER_BILLING_BATCH",
                    positive(
                        "WORKER_BILLING_BATCH",
                        parse(&get, "WORKER_BILLING_BATCH", 64)?,
                    )?,
                    MAX_BILLING_BATCH,
                )?,
                billing_parallel: positive(
                    "WORKER_BILLING_PARALLEL",
                    parse(&get, "WORKER_BILLING_PARALLEL", 2)?,
                )?,
            },
            jobs: JobSettings {
                lease: Duration::from_secs(positive(
                    "JOB_LEASE_SECONDS",
                    parse(&get, "JOB_LEASE_SECONDS", 60)?,
                )?),
                high_water: positive("QUEUE_HIGH_WATER", parse(&get, "QUEUE_HIGH_WATER", 2000)?)?,
                relay_batch: positive("RELAY_BATCH", parse(&get, "RELAY_BATCH", 500)?)?,
                relay_interval: Duration::from_millis(positive(
                    "RELAY_INTERVAL_MS",
                    parse(&get, "RELAY_INTERVAL_MS", 250)?,
                )?),
                event_retention: Duration::from_secs(
                    86_400
                        * positive(
                            "EVENT_RETENTION_DAYS",
                            parse(&get, "EVENT_RETENTION_DAYS", 30)?,
                        )?,
                ),
                backoff_base: match get("JOB_BACKOFF_BASE_MS") {
                    None => None,
                    Some(_) => Some(Duration::from_millis(positive(
                        "JOB_BACKOFF_BASE_MS",
                        parse(&get, "JOB_BACKOFF_BASE_MS", 1000u64)?,
                    )?)),
                },
            },
            stripe: StripeSettings {
                secret_key_test: stripe_key(&get, "STRIPE_SECRET_KEY_TEST", "_test_")?,
                secret_key_live: stripe_key(&get, "STRIPE_SECRET_KEY_LIVE", "_live_")?,
                api_base: {
                    let base =
                        get("STRIPE_API_BASE").unwrap_or_else(|| "https://api.stripe.com/".into());
                    if !base.starts_with("https://") && !base.starts_with("http://") {
                        return Err(ConfigError::Malformed {
                            name: "STRIPE_API_BASE",
                            reason: "expected an http(s) URL".into(),
                        });
                    }
                    if base.ends_with('/') {
                        base
                    } else {
                        format!("{base}/")
                    }
                },
                webhook_secrets: get("STRIPE_WEBHOOK_SECRETS")
                    .map(|v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(|s| Secret::new(s.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                rate_limit_test: positive(
                    "STRIPE_RATE_LIMIT_TEST",
                    parse(&get, "STRIPE_RATE_LIMIT_TEST", 25)?,
                )?,
                rate_limit_live: positive(
                    "STRIPE_RATE_LIMIT_LIVE",
                    parse(&get, "STRIPE_RATE_LIMIT_LIVE", 100)?,
                )?,
                public_url: get("PUBLIC_URL")
                    .unwrap_or_else(|| "http://127.0.0.1:8080".into())
                    .trim_end_matches('/')
                    .to_owned(),
                timeout: Duration::from_secs(10),
            },
            webhooks: WebhookSettings {
                allow_private_targets: parse_bool(&get, "WEBHOOK_ALLOW_PRIVATE_TARGETS", false)?,
                retry_schedule: match get("WEBHOOK_RETRY_SCHEDULE") {
                    None => DEFAULT_RETRY_SCHEDULE
                        .iter()
                        .map(|s| Duration::from_secs(*s))
                        .collect(),
                    Some(raw) => parse_schedule(&raw).map_err(|e| ConfigError::Malformed {
                        name: "WEBHOOK_RETRY_SCHEDULE",
                        reason: e.to_string(),
                    })?,
                },
                disable_after: Duration::from_secs(parse(
                    &get,
                    "WEBHOOK_DISABLE_AFTER_SECONDS",
                    5 * 86_400,
                )?),
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(15),
            },
            log_format,
        })
    }
}

/// 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_RETRY_SCHEDULE: [u64; 7] = [5, 300, 1800, 7200, 18_000, 36_000, 36_000];

/// Why a retry schedule cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("`{0}` is not a duration")]
    NotADuration(String),
    #[error("`{part}`: unknown unit `{unit}` (use ms, s, m, h or d)")]
    UnknownUnit { part: String, unit: String },
}

/// `5s,5m,30m,2h` (a bare number is seconds); `none` means no retries.
pub fn parse_schedule(raw: &str) -> Result<Vec<Duration>, ScheduleError> {
    if raw.trim() == "none" {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|part| {
            let (num, unit) = part.split_at(
                part.find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(part.len()),
            );
            let n: u64 = num
                .parse()
                .map_err(|_| ScheduleError::NotADuration(part.to_owned()))?;
            let secs = match unit {
                "" | "s" => n,
                "ms" => return Ok(Duration::from_millis(n)),
                "m" => n * 60,
                "h" => n * 3600,
                "d" => n * 86_400,
                _ => {
                    return Err(ScheduleError::UnknownUnit {
                        part: part.to_owned(),
                        unit: unit.to_owned(),
                    });
                }
            };
            Ok(Duration::from_secs(secs))
        })
        .collect()
}

/// A Stripe secret (or restricted) key of the mode named by `marker` (`_test_` or `_live_`).
fn stripe_key(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    marker: &str,
) -> Result<Option<Secret<String>>, ConfigError> {
    match get(name) {
        None => Ok(None),
        Some(k) if (k.starts_with("sk") || k.starts_with("rk")) && k[2..].starts_with(marker) => {
            Ok(Some(Secret::new(k)))
        }
        Some(_) => Err(ConfigError::Malformed {
            name,
            reason: format!("expected a Stripe key starting with sk{marker} or rk{marker}"),
        }),
    }
}

/// Most renewals or charges in one transaction: a batch that fails runs again job by job, each
/// job on its own connection, all at once.
const MAX_BILLING_BATCH: usize = 1_000;

fn at_most(name: &'static str, v: usize, max: usize) -> Result<usize, ConfigError> {
    if v > max {
        return Err(ConfigError::Malformed {
            name,
            reason: format!("must be at most {max}"),
        });
    }
    Ok(v)
}

fn positive<T: PartialEq + Default>(name: &'static str, v: T) -> Result<T, ConfigError> {
    if v == T::default() {
        return Err(ConfigError::Malformed {
            name,
            reason: "must be greater than zero".into(),
        });
    }
    Ok(v)
}

fn parse_queues(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
) -> Result<Vec<Queue>, ConfigError> {
    let Some(raw) = get(name) else {
        return Ok(Queue::ALL.to_vec());
    };
    let mut queues = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let q = Queue::parse(part).ok_or_else(|| ConfigError::Malformed {
            name,
            reason: format!("unknown queue `{part}` (known: {})", Queue::names()),
        })?;
        if !queues.contains(&q) {
            queues.push(q);
        }
    }
    if queues.is_empty() {
        return Err(ConfigError::Malformed {
            name,
            reason: "names no queue".into(),
        });
    }
    Ok(queues)
}

/// `WORKER_CONCURRENCY` (every queue) then `WORKER_CONCURRENCY_<QUEUE>` (one queue).
fn parse_concurrency(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<QueueMap<usize>, ConfigError> {
    let base: Option<usize> = match get("WORKER_CONCURRENCY") {
        None => None,
        Some(_) => Some(positive(
            "WORKER_CONCURRENCY",
            parse(get, "WORKER_CONCURRENCY", 1)?,
        )?),
    };
    let mut map = QueueMap::default();
    for q in Queue::ALL {
        let name = q.concurrency_var();
        let default = base.unwrap_or(q.default_concurrency());
        map.set(q, positive(name, parse(get, name, default)?)?);
    }
    Ok(map)
}

fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match get(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Malformed {
                name,
                reason: format!("`{raw}`: {e}"),
            }),
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError::Malformed {
            name,
            reason: format!("expected true or false, got `{other}`"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    const SECRET: (&str, &str) = ("APP_SECRET", "0123456789abcdef0123456789abcdef");

    #[test]
    fn defaults_apply_when_only_the_secret_is_set() {
        let s = load(&[SECRET]).unwrap();
        assert_eq!(s.api.addr.to_string(), "127.0.0.1:8080");
        assert!(s.database.migrate_on_start);
        assert_eq!(s.auth.rate_limit_per_second, 100);
    }

    #[test]
    fn billing_batches_default_to_64_two_at_once_and_refuse_zero_or_over_1000() {
        let s = load(&[SECRET]).unwrap();
        assert_eq!((s.worker.billing_batch, s.worker.billing_parallel), (64, 2));
        let s = load(&[
            SECRET,
            ("WORKER_BILLING_BATCH", "128"),
            ("WORKER_BILLING_PARALLEL", "4"),
        ])
        .unwrap();
        assert_eq!(
            (s.worker.billing_batch, s.worker.billing_parallel),
            (128, 4)
        );
        for name in ["WORKER_BILLING_BATCH", "WORKER_BILLING_PARALLEL"] {
            let err = load(&[SECRET, (name, "0")]).unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
        }
        assert!(load(&[SECRET, ("WORKER_BILLING_BATCH", "1000")]).is_ok());
        let err = load(&[SECRET, ("WORKER_BILLING_BATCH", "1001")]).unwrap_err();
        assert!(err.to_string().contains("at most 1000"), "{err}");
    }

    #[test]
    fn a_missing_secret_names_the_variable() {
        let err = load(&[]).unwrap_err();
        assert!(
            err.to_string().starts_with("APP_SECRET is not set"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_address_names_the_variable() {
        let err = load(&[SECRET, ("API_ADDR", "nowhere")]).unwrap_err();
        assert!(
            err.to_string().starts_with("API_ADDR is malformed"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_boolean_names_the_variable() {
        let err = load(&[SECRET, ("MIGRATE_ON_START", "perhaps")]).unwrap_err();
        assert!(
            err.to_string().starts_with("MIGRATE_ON_START is malformed"),
            "{err}"
        );
    }

    #[test]
    fn a_non_postgres_database_url_is_rejected() {
        let err = load(&[SECRET, ("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert!(
            err.to_string().starts_with("DATABASE_URL is malformed"),
            "{err}"
        );
    }
}
