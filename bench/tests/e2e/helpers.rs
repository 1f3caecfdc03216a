//! Test harness: a fresh database and Redis prefix per test, the API in-process, workers
//! in-process or as processes, and a webhook receiver on loopback that records what it gets.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use poem::{
    EndpointExt, Request, Response, Route, handler,
    http::StatusCode,
    listener::{Acceptor, Listener, TcpListener},
    web::Data,
};
use serde_json::{Value, json};
use shared::{config::Settings, db::events::NewEvent, domain::api_key::PresentedKey};
use sqlx::{ConnectOptions, Connection, PgPool, postgres::PgConnectOptions};
use tokio::sync::watch;
use uuid::Uuid;

pub const PASSWORD: &str = "SecurePass123!";

/// One test's database, Redis prefix and settings.
pub struct Env {
    pub vars: HashMap<String, String>,
    pub pool: PgPool,
    /// The test's own connection for what it checks ([`Env::scalar`]): an in-process worker
    /// sharing `pool` may hold all of its connections for a while on a loaded machine.
    probe: PgPool,
}

fn url_with_database(url: &str, name: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (url, None),
    };
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

impl Env {
    /// A fresh migrated database and Redis prefix; `overrides` are settings as environment
    /// variables would give them.
    pub async fn new(overrides: &[(&str, &str)]) -> Env {
        api::telemetry::install_crypto_provider();
        if std::env::var("TEST_LOG").is_ok() {
            api::telemetry::init(shared::config::LogFormat::Text);
        }
        let base = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/billing".into());
        let name = format!(
            "billing_test_{}_{}",
            std::process::id(),
            Uuid::new_v4().simple()
        );
        let admin: PgConnectOptions = base.parse().expect("DATABASE_URL parses");
        let mut conn = admin.database("postgres").connect().await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .expect("create database");
        conn.close().await.expect("close");
        let mut vars: HashMap<String, String> = HashMap::new();
        vars.insert("DATABASE_URL".into(), url_with_database(&base, &name));
        vars.insert(
            "REDIS_URL".into(),
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        );
        vars.insert(
            "APP_SECRET".into(),
            "test-secret-0123456789abcdef0123456789".into(),
        );
        vars.insert("API_ADDR".into(), "127.0.0.1:0".into());
        vars.insert("WORKER_ADDR".into(), "127.0.0.1:0".into());
        vars.insert(
            "REDIS_KEY_PREFIX".into(),
            format!("test:{}:{}:", std::process::id(), Uuid::new_v4().simple()),
        );
        vars.insert("RATE_LIMIT_PER_SECOND".into(), "100000".into());
        vars.insert("REGISTRATIONS_PER_IP".into(), "100000".into());
        vars.insert("WEBHOOK_ALLOW_PRIVATE_TARGETS".into(), "true".into());
        vars.insert("RELAY_INTERVAL_MS".into(), "100".into());
        // A billing run every second: what comes due is queued within one.
        vars.insert("BILLING_RUN_SCHEDULE".into(), "* * * * * *".into());
        vars.insert("SHUTDOWN_GRACE_SECONDS".into(), "10".into());
        vars.insert("WORKER_HEARTBEAT_SECONDS".into(), "2".into());
        for (k, v) in overrides {
            vars.insert((*k).into(), (*v).into());
        }
        let settings = settings_of(&vars);
        drop_stale_redis_keys(&settings).await;
        let pool = shared::db::pool(&settings.database).expect("pool");
        shared::db::migrate(&pool).await.expect("migrate");
        let mut one = settings.database.clone();
        one.max_connections = 1;
        one.acquire_timeout = std::time::Duration::from_secs(60);
        let probe = shared::db::pool(&one).expect("probe pool");
        Env { vars, pool, probe }
    }

    pub fn settings(&self) -> Settings {
        settings_of(&self.vars)
    }

    /// The API, in-process.
    pub async fn api(&self) -> Api {
        let state = api::build_state(self.settings()).await.expect("api state");
        let app = api::Application::bind(state).await.expect("bind");
        let addr = app.addr;
        tokio::spawn(app.run_until_stopped());
        Api {
            addr,
            client: reqwest::Client::new(),
        }
    }

    /// A worker in-process; stops when the handle is stopped or dropped.
    pub async fn worker(&self) -> WorkerHandle {
        self.worker_with(&[]).await
    }

    pub async fn worker_with(&self, overrides: &[(&str, &str)]) -> WorkerHandle {
        let mut vars = self.vars.clone();
        for (k, v) in overrides {
            vars.insert((*k).into(), (*v).into());
        }
        let settings = settings_of(&vars);
        let rt = worker::Runtime::new(settings.clone(), self.pool.clone(), redis(&settings).await)
            .expect("runtime");
        let (stop, mut rx) = watch::channel(false);
        let join = tokio::spawn(worker::run_until(rt.clone(), async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
        WorkerHandle { stop, join, rt }
    }

    /// The worker binary as a process, with this test's settings.
    pub fn worker_process(&self, port: u16) -> Child {
        Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
            .envs(&self.vars)
            .env("WORKER_ADDR", format!("127.0.0.1:{port}"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            // The worker logs to its standard output.
            .stdout(if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(if std::env::var("TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn billing-worker")
    }

    pub async fn redis(&self) -> redis::aio::ConnectionManager {
        redis(&self.settings()).await
    }

    /// Deletes every Redis key of this test (as a Redis flush would, for this deployment).
    pub async fn flush_redis(&self) -> usize {
        let mut conn = self.redis().await;
        let pattern = format!("{}*", self.vars["REDIS_KEY_PREFIX"]);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .expect("keys");
        for k in &keys {
            let _: i64 = redis::cmd("DEL")
                .arg(k)
                .query_async(&mut conn)
                .await
                .expect("del");
        }
        keys.len()
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.probe)
            .await
            .expect("scalar")
    }

    /// Takes the test's database away as a PostgreSQL restart does, without touching the
    /// other tests' databases: no connection is accepted for `down` (`ALLOW_CONNECTIONS
    /// false`), and every open one is cut at once (its backend terminated, which a client
    /// sees as a fast shutdown: `57P01 terminating connection due to administrator
    /// command`) and again until none is left. Returns how many connections were cut.
    pub async fn restart_database(&self, down: Duration) -> i64 {
        let options: PgConnectOptions = self.vars["DATABASE_URL"].parse().expect("url");
        let name = options.get_database().expect("a database name").to_owned();
        let mut admin = options.database("postgres").connect().await.expect("admin");
        let set = |allow: bool| {
            sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{name}\" ALLOW_CONNECTIONS {allow}"
            ))
        };
        sqlx::query(set(false))
            .execute(&mut admin)
            .await
            .expect("refuse connections");
        let started = Instant::now();
        let mut cut = 0;
        while started.elapsed() < down {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
            )
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .expect("terminate");
            cut += n;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        sqlx::query(set(true))
            .execute(&mut admin)
            .await
            .expect("accept connections");
        admin.close().await.expect("close");
        cut
    }

    /// A tenant's test-mode scope, as authenticating its secret key gives it.
    pub async fn scope(&self, tenant: &Tenant) -> shared::tenancy::Scope {
        let presented = PresentedKey::parse(&tenant.sk_test).expect("a secret key");
        shared::db::api_keys::find_active_by_hash(&self.pool, &presented.hash)
            .await
            .expect("the tenant's key")
            .context()
            .scope()
    }

    /// Records `n` events of one type for a tenant (test mode), fanned out to its endpoints.
    pub async fn record_events(&self, tenant: &Tenant, n: usize, event_type: &str) {
        let scope = self.scope(tenant).await;
        let events: Vec<NewEvent> = (0..n)
            .map(|i| NewEvent::new(event_type, json!({ "object": "thing", "n": i })))
            .collect();
        let mut tx = self.pool.begin().await.expect("begin");
        for chunk in events.chunks(5000) {
            shared::db::events::record_many(&mut tx, scope, chunk, chrono::Utc::now())
                .await
                .expect("record events");
        }
        tx.commit().await.expect("commit");
    }
}

/// Deletes the Redis keys of test processes that are gone (`test:<pid>:…`), once per process.
async fn drop_stale_redis_keys(settings: &Settings) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let mut conn = redis(settings).await;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("test:*")
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut conn)
                .await
                .unwrap_or((0, Vec::new()));
            let stale: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    let pid = k.split(':').nth(1).unwrap_or("");
                    pid.parse::<u32>().is_ok_and(|p| {
                        p != std::process::id()
                            && !std::path::Path::new(&format!("/proc/{p}")).exists()
                    })
                })
                .collect();
            if !stale.is_empty() {
                let _: Result<i64, _> = redis::cmd("DEL").arg(&stale).query_async(&mut conn).await;
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    })
    .await;
}

fn settings_of(vars: &HashMap<String, String>) -> Settings {
    Settings::from_lookup(|k| vars.get(k).cloned()).expect("test settings")
}

async fn redis(settings: &Settings) -> redis::aio::ConnectionManager {
    let client = shared::ratelimit::client(settings.redis.url.expose()).expect("redis url");
    // A loaded machine (tests run side by side) may keep an answer longer than the client's
    // default half second.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(10)));
    redis::aio::ConnectionManager::new_with_config(client, config)
        .await
        .expect("redis")
}

pub struct WorkerHandle {
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<std::io::Result<()>>,
    pub rt: Arc<worker::Runtime>,
}

impl WorkerHandle {
    /// Stops the worker as SIGTERM would and waits for it.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.join.await.expect("join").expect("worker ran");
    }
}

/// The API under test.
pub struct Api {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
}

/// A registered tenant.
pub struct Tenant {
    pub id: String,
    pub sk_test: String,
    /// The owner's JWT (test mode).
    pub owner: String,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn register(&self, email: &str) -> Tenant {
        let body: Value = self
            .client
            .post(self.url("/api/v1/auth/tenants/register/"))
            .json(&json!({"company_name": "Acme", "email": email, "password": PASSWORD}))
            .send()
            .await
            .expect("register")
            .json()
            .await
            .expect("json");
        Tenant {
            id: body["tenant"]["id"].as_str().expect("tenant id").to_owned(),
            sk_test: body["api_keys"]["test_secret"]["key"]
                .as_str()
                .expect("key")
                .to_owned(),
            owner: body["tokens"]["access"].as_str().expect("jwt").to_owned(),
        }
    }

    pub async fn post(&self, key: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let resp = self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        key: Option<&str>,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(k) = key {
            rb = rb.bearer_auth(k);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.expect("request");
        let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> Value {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    /// Creates an endpoint; returns (id, secret).
    pub async fn endpoint(&self, key: &str, url: &str) -> (String, String) {
        let (status, body) = self
            .post(key, "/api/v1/webhook-endpoints", &json!({ "url": url }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["endpoint"]["id"].as_str().expect("id").to_owned(),
            body["secret"].as_str().expect("secret").to_owned(),
        )
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Hit {
    pub fn webhook_id(&self) -> &str {
        self.headers
            .get("webhook-id")
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

#[derive(Clone, Default)]
struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
    delay_ms: Arc<AtomicU64>,
    /// Bytes of answer body (0: the word `received`).
    body_len: Arc<AtomicU64>,
    /// An exact answer body, when set.
    body: Arc<Mutex<Option<String>>>,
}

/// A webhook receiver on loopback answering with a settable status (200 at first).
pub struct Receiver {
    pub url: String,
    pub port: u16,
    state: ReceiverState,
}

#[handler]
async fn receive(req: &Request, body: Vec<u8>, state: Data<&ReceiverState>) -> Response {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    state
        .hits
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Hit { headers, body });
    let delay = state.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status =
        StatusCode::from_u16(state.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK);
    let len = usize::try_from(state.body_len.load(Ordering::Relaxed)).unwrap_or(0);
    let exact = state.body.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let body = match exact {
        Some(b) => b,
        None if len == 0 => "received".to_owned(),
        None => "x".repeat(len),
    };
    // A Location on every answer: a redirect status must not be followed.
    Response::builder()
        .status(status)
        .header("location", "http://127.0.0.1:9/elsewhere")
        .body(body)
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = ReceiverState::default();
        state.status.store(200, Ordering::Relaxed);
        let acceptor = TcpListener::bind("127.0.0.1:0")
            .into_acceptor()
            .await
            .expect("bind receiver");
        let addr = acceptor
            .local_addr()
            .first()
            .and_then(|a| a.as_socket_addr().copied())
            .expect("receiver address");
        let app = Route::new().at("/*path", receive).data(state.clone());
        tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
        Receiver {
            url: format!("http://127.0.0.1:{}/hook", addr.port()),
            port: addr.port(),
            state,
        }
    }

    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::Relaxed);
    }

    pub fn body(&self, body: &str) {
        *self.state.body.lock().unwrap_or_else(|p| p.into_inner()) = Some(body.to_owned());
    }

    pub fn body_len(&self, len: usize) {
        self.state.body_len.store(len as u64, Ordering::Relaxed);
    }

    pub fn delay(&self, d: Duration) {
        self.state
            .delay_ms
            .store(u64::try_from(d.as_millis()).unwrap_or(0), Ordering::Relaxed);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn count(&self) -> usize {
        self.state
            .hits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// Polls `check` until it holds, failing the test with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Verifies a received webhook with the `standardwebhooks` Python library.
pub fn verify_with_standardwebhooks(secret: &str, hit: &Hit) -> Result<(), String> {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let input = json!({
        "secret": secret,
        "body": String::from_utf8_lossy(&hit.body),
        "headers": {
            "webhook-id": hit.headers.get("webhook-id"),
            "webhook-timestamp": hit.headers.get("webhook-timestamp"),
            "webhook-signature": hit.headers.get("webhook-signature"),
        },
    });
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(
            "import sys, json\n\
             from standardwebhooks.webhooks import Webhook\n\
             d = json.load(sys.stdin)\n\
             Webhook(d['secret']).verify(d['body'], d['headers'])\n\
             print('verified')",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        stdin
            .write_all(input.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified") {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}
