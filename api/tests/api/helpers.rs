use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use api::{Application, build_state_with_clock};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use shared::{clock::OffsetClock, config::Settings};
use sqlx::{ConnectOptions, Connection, PgPool, postgres::PgConnectOptions};
use uuid::Uuid;

pub const PASSWORD: &str = "SecurePass123!";

/// A running API over its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub pool: PgPool,
    pub settings: Settings,
    /// The app's clock: advance it instead of sleeping.
    pub clock: Arc<OffsetClock>,
}

fn base_env() -> HashMap<String, String> {
    let mut env = HashMap::new();
    env.insert(
        "DATABASE_URL".into(),
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/billing".into()),
    );
    env.insert(
        "REDIS_URL".into(),
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
    );
    env.insert(
        "APP_SECRET".into(),
        "test-secret-0123456789abcdef0123456789".into(),
    );
    env.insert("API_ADDR".into(), "127.0.0.1:0".into());
    env.insert(
        "REDIS_KEY_PREFIX".into(),
        format!("test:{}:", Uuid::new_v4().simple()),
    );
    env.insert("RATE_LIMIT_PER_SECOND".into(), "1000".into());
    // Tests register many tenants from one address; `rate_limits.rs` sets its own limit.
    env.insert("REGISTRATIONS_PER_IP".into(), "1000".into());
    env
}

/// Drops databases left behind by earlier test processes that are gone.
async fn drop_stale_databases(admin: &PgConnectOptions) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let Ok(mut conn) = admin.connect().await else {
            return;
        };
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname LIKE 'billing\\_test\\_%'",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
        let me = std::process::id().to_string();
        for name in names {
            let pid = name
                .trim_start_matches("billing_test_")
                .split('_')
                .next()
                .unwrap_or("");
            let alive = pid == me || std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !alive {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await;
            }
        }
        let _ = conn.close().await;
    })
    .await;
}

/// A fresh, empty database (the app migrates it on start); returns its URL.
async fn fresh_database(base_url: &str) -> String {
    let options: PgConnectOptions = base_url.parse().expect("DATABASE_URL parses");
    let admin = options.clone().database("postgres");
    drop_stale_databases(&admin).await;
    let name = format!(
        "billing_test_{}_{}",
        std::process::id(),
        Uuid::new_v4().simple()
    );
    let mut conn = admin
        .connect()
        .await
        .expect("connect to the postgres database");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.expect("close");
    url_with_database(base_url, &name)
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

/// A fresh, empty database next to the configured one (a later test run drops it once this
/// process is gone); returns its URL.
pub async fn fresh_database_url() -> String {
    fresh_database(&base_env()["DATABASE_URL"]).await
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Starts an app with some settings overridden (as environment variables would).
pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    api::telemetry::install_crypto_provider();
    let mut env = base_env();
    let url = fresh_database(&env["DATABASE_URL"]).await;
    env.insert("DATABASE_URL".into(), url);
    for (k, v) in overrides {
        env.insert((*k).into(), (*v).into());
    }
    let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings");
    start(settings).await
}

/// A second API replica over the same database and Redis prefix.
pub async fn spawn_replica(app: &TestApp) -> TestApp {
    start(app.settings.clone()).await
}

async fn start(settings: Settings) -> TestApp {
    if std::env::var("TEST_LOG").is_ok() {
        api::telemetry::init(settings.log_format);
    }
    let clock = Arc::new(OffsetClock::default());
    let state = build_state_with_clock(settings.clone(), clock.clone())
        .await
        .expect("app state");
    let pool = state.pool.clone();
    let app = Application::bind(state).await.expect("bind");
    let addr = app.addr;
    tokio::spawn(app.run_until_stopped());
    TestApp {
        addr,
        client: Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        pool,
        settings,
        clock,
    }
}

/// How a request authenticates.
#[derive(Clone, Debug)]
pub enum Cred {
    None,
    Bearer(String),
    XApiKey(String),
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn req(&self, method: Method, path: &str, cred: &Cred) -> reqwest::RequestBuilder {
        let rb = self.client.request(method, self.url(path));
        match cred {
            Cred::None => rb,
            Cred::Bearer(t) => rb.bearer_auth(t),
            Cred::XApiKey(k) => rb.header("X-API-Key", k),
        }
    }

    pub async fn get(&self, path: &str, cred: &Cred) -> Response {
        self.req(Method::GET, path, cred)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, cred: &Cred, body: &Value) -> Response {
        self.req(Method::POST, path, cred)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn send(
        &self,
        method: Method,
        path: &str,
        cred: &Cred,
        body: Option<&Value>,
    ) -> Response {
        let rb = self.req(method, path, cred);
        let rb = match body {
            Some(b) => rb.json(b),
            None => rb,
        };
        rb.send().await.expect("request")
    }

    /// Registers a tenant whose owner has this email.
    pub async fn register(&self, email: &str) -> Tenant {
        let resp = self
            .post(
                "/api/v1/auth/tenants/register/",
                &Cred::None,
                &json!({"company_name": format!("Company of {email}"), "email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await.expect("json");
        Tenant {
            id: s(&body["tenant"]["id"]),
            owner_id: s(&body["user"]["id"]),
            sk_test: s(&body["api_keys"]["test_secret"]["key"]),
            sk_live: s(&body["api_keys"]["live_secret"]["key"]),
            pk_test: s(&body["api_keys"]["test_publishable"]["key"]),
            pk_live: s(&body["api_keys"]["live_publishable"]["key"]),
            access: s(&body["tokens"]["access"]),
            refresh: s(&body["tokens"]["refresh"]),
            body,
        }
    }

    /// Logs in; returns the whole response body.
    pub async fn login(&self, email: &str, password: &str) -> Response {
        self.post(
            "/api/v1/auth/tenants/login/",
            &Cred::None,
            &json!({"email": email, "password": password}),
        )
        .await
    }

    /// Invites a user with a role (as the tenant's owner) and logs them in; returns their JWT
    /// and user id.
    pub async fn user_with_role(
        &self,
        tenant: &Tenant,
        email: &str,
        role: &str,
    ) -> (String, String) {
        let resp = self
            .post(
                "/api/v1/users",
                &tenant.jwt(),
                &json!({"email": email, "password": PASSWORD, "role": role}),
            )
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap_or_default()
        );
        let user: Value = resp.json().await.expect("json");
        let login: Value = self
            .login(email, PASSWORD)
            .await
            .json()
            .await
            .expect("json");
        (s(&login["access"]), s(&user["id"]))
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

pub fn s(v: &Value) -> String {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {v}"))
        .to_owned()
}

/// A registered tenant with its credentials.
pub struct Tenant {
    pub id: String,
    pub owner_id: String,
    pub sk_test: String,
    pub sk_live: String,
    pub pk_test: String,
    pub pk_live: String,
    pub access: String,
    pub refresh: String,
    pub body: Value,
}

impl Tenant {
    pub fn jwt(&self) -> Cred {
        Cred::Bearer(self.access.clone())
    }
    pub fn sk_test(&self) -> Cred {
        Cred::Bearer(self.sk_test.clone())
    }
    pub fn sk_live(&self) -> Cred {
        Cred::Bearer(self.sk_live.clone())
    }
}

/// Asserts a problem+json response with this status and code; returns the body.
pub async fn assert_problem(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status, "unexpected status");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert_eq!(ct.as_deref(), Some("application/problem+json"));
    let body: Value = resp.json().await.expect("problem body");
    assert_eq!(body["code"], code, "problem: {body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// A TCP relay to a real PostgreSQL or Redis that a test can cut (the port refuses
/// connections and open ones are closed, as when the server stops) and restore (same port).
pub struct Relay {
    pub addr: SocketAddr,
    up: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    /// Relays to `upstream` (`host:port`) from a free loopback port.
    pub async fn start(upstream: &str) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let (up, mut watch) = tokio::sync::watch::channel(true);
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            let mut listener = Some(listener);
            let mut conns = tokio::task::JoinSet::new();
            loop {
                match &listener {
                    Some(l) => tokio::select! {
                        changed = watch.changed() => {
                            if changed.is_err() { return; }
                            if !*watch.borrow() {
                                listener = None;
                                conns.abort_all();
                            }
                        }
                        accepted = l.accept() => {
                            let Ok((mut client, _)) = accepted else { continue };
                            let upstream = upstream.clone();
                            conns.spawn(async move {
                                if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                }
                            });
                        }
                    },
                    None => {
                        if watch.changed().await.is_err() {
                            return;
                        }
                        if *watch.borrow() {
                            listener = tokio::net::TcpListener::bind(addr).await.ok();
                        }
                    }
                }
            }
        });
        Relay { addr, up }
    }

    pub fn cut(&self) {
        let _ = self.up.send(false);
    }

    pub fn restore(&self) {
        let _ = self.up.send(true);
    }

    /// `url` with its host and port replaced by the relay's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}{}{tail}", self.addr)
    }
}

/// The `host:port` of a URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    authority.split('?').next().unwrap_or(authority).to_owned()
}

/// An app whose PostgreSQL is reached through a relay (`DATABASE_ACQUIRE_TIMEOUT_SECONDS` is
/// long, so that a request waiting for the database would hang rather than fail).
pub async fn spawn_app_behind_relay(overrides: &[(&str, &str)]) -> (TestApp, Relay) {
    let direct = fresh_database_url().await;
    let relay = Relay::start(&host_port(&direct)).await;
    let url = relay.url_for(&direct);
    let mut all: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", url.as_str()),
        ("DATABASE_ACQUIRE_TIMEOUT_SECONDS", "120"),
    ];
    all.extend_from_slice(overrides);
    api::telemetry::install_crypto_provider();
    let mut env = base_env();
    for (k, v) in all {
        env.insert(k.into(), v.into());
    }
    let settings = Settings::from_lookup(|k| env.get(k).cloned()).expect("test settings");
    (start(settings).await, relay)
}

/// Polls `check` every 50 ms until it holds, failing the test after a minute.
pub async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) until one statement of the app's database starting with `statement` is
/// waiting for a lock; `false` if none did.
pub async fn waits_for_lock(app: &TestApp, statement: &str) -> bool {
    for _ in 0..400 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND starts_with(query, $1)",
        )
        .bind(statement)
        .fetch_one(&app.pool)
        .await
        .expect("pg_stat_activity");
        if n == 1 {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    false
}
