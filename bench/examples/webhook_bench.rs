//! Webhook delivery benchmark (run by `bench/webhooks/run` against release builds).
//!
//! One `billing-worker` process delivers N events (default 20,000) for one endpoint to a
//! receiver on loopback that only answers 200. The clock runs from the enqueueing transaction
//! until every delivery is recorded as succeeded in PostgreSQL. The last line prints
//! deliveries per second and the worker's peak resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use poem::{EndpointExt, Response, Route, handler, listener::TcpListener, web::Data};
use serde_json::json;
use shared::{config::Settings, db::events::NewEvent, domain::api_key::PresentedKey};

#[handler]
fn ok(count: Data<&Arc<AtomicU64>>) -> Response {
    count.fetch_add(1, Ordering::Relaxed);
    Response::builder().body("ok")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = common::env_usize("N", 20_000);
    let worker_bin = std::env::var("WORKER_BIN").expect("WORKER_BIN");
    let db = common::BenchDatabase::create("webhooks").await?;
    let db_url = db.url.clone();

    // The receiver: answers 200 and counts.
    let count = Arc::new(AtomicU64::new(0));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let app = Route::new().at("/*p", ok).data(count.clone());
    tokio::spawn(poem::Server::new(TcpListener::bind(format!("127.0.0.1:{port}"))).run(app));

    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DATABASE_URL".into(), db_url);
    vars.insert("REDIS_URL".into(), std::env::var("REDIS_URL")?);
    vars.insert(
        "APP_SECRET".into(),
        "bench-secret-0123456789abcdef0123456789".into(),
    );
    vars.insert(
        "REDIS_KEY_PREFIX".into(),
        format!("bench:{}:", std::process::id()),
    );
    vars.insert("WEBHOOK_ALLOW_PRIVATE_TARGETS".into(), "true".into());
    vars.insert(
        "RUST_LOG".into(),
        std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let worker_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    vars.insert("WORKER_ADDR".into(), format!("127.0.0.1:{worker_port}"));
    let settings = Settings::from_lookup(|k| vars.get(k).cloned())?;
    let pool = shared::db::pool(&settings.database)?;
    shared::db::migrate(&pool).await?;

    // A tenant with one endpoint, through the API code.
    let mut api_settings = settings.clone();
    api_settings.api.addr = "127.0.0.1:0".parse()?;
    let app = api::Application::bind(api::build_state(api_settings).await?).await?;
    let api_addr = app.addr;
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let reg: serde_json::Value = http
        .post(format!("http://{api_addr}/api/v1/auth/tenants/register"))
        .json(&json!({"company_name": "Bench", "email": "bench@example.com", "password": "BenchPass1234!"}))
        .send()
        .await?
        .json()
        .await?;
    let key = reg["api_keys"]["test_secret"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let created = http
        .post(format!("http://{api_addr}/api/v1/webhook-endpoints"))
        .bearer_auth(&key)
        .json(&json!({"url": format!("http://127.0.0.1:{port}/hook"), "event_types": ["invoice.paid"]}))
        .send()
        .await?;
    assert!(created.status().is_success());

    let mut worker = Command::new(&worker_bin)
        .envs(&vars)
        .args(["--queues", "webhooks"])
        .stdout(if std::env::var("WORKER_LOG").is_ok() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()?;
    for _ in 0..100 {
        if reqwest::get(format!("http://127.0.0.1:{worker_port}/healthz"))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let events: Vec<NewEvent> = (0..n)
        .map(|i| NewEvent::new("invoice.paid", json!({"object": "invoice", "n": i})))
        .collect();
    // The tenant's test-mode scope, as authenticating its key gives it.
    let presented = PresentedKey::parse(&key).expect("a secret key");
    let scope = shared::db::api_keys::find_active_by_hash(&pool, &presented.hash)
        .await?
        .context()
        .scope();
    let cpu_before = common::cpu_secs(worker.id()).unwrap_or(0.0);
    let bench_before = common::cpu_secs(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    shared::db::events::record_many(&mut tx, scope, &events, chrono::Utc::now()).await?;
    let recorded = started.elapsed();
    tx.commit().await?;
    let enqueued = started.elapsed();
    // Watch the receiver's counter first (free), and only then PostgreSQL: polling a count of
    // 20,000 rows every few milliseconds would compete with the worker for the database.
    while (count.load(Ordering::Relaxed) as usize) < n {
        if std::env::var("BENCH_TRACE").is_ok() {
            eprintln!(
                "{:>6} ms {} received",
                started.elapsed().as_millis(),
                count.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!(
                "only {} of {n} received after 10 minutes",
                count.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'",
        )
        .fetch_one(&pool)
        .await?;
        if done as usize >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            anyhow::bail!("only {done} of {n} delivered after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    let rss_mib = common::peak_rss_kib(worker.id()).unwrap_or(0) as f64 / 1024.0;
    let worker_cpu = common::cpu_secs(worker.id()).unwrap_or(0.0) - cpu_before;
    let bench_cpu = common::cpu_secs(std::process::id()).unwrap_or(0.0) - bench_before;
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    pool.close().await;
    common::clear_prefix(&vars["REDIS_URL"], &vars["REDIS_KEY_PREFIX"]).await;
    db.remove().await;
    let received = count.load(Ordering::Relaxed);
    println!(
        "enqueued {n} events in {:.2} s (commit {:.2} s); receiver got {received} requests; CPU: worker {worker_cpu:.2} s, receiver and poller {bench_cpu:.2} s",
        enqueued.as_secs_f64(),
        (enqueued - recorded).as_secs_f64()
    );
    println!(
        "webhooks: {n} deliveries in {:.2} s = {:.0} deliveries/s (enqueue to recorded), worker peak RSS {:.1} MiB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        rss_mib
    );
    Ok(())
}
