//! Stripe sync benchmark (run by `bench/stripe_sync/run` against release builds).
//!
//! N plans (default 5,000) are created through the API by concurrent clients while one
//! `billing-worker` process (the `stripe_sync` queue only) syncs them to a Stripe stand-in on
//! loopback, with the per-account rate limit at Stripe's live 100 requests/s. The last line
//! prints the API's creation rate and latency (it must not wait on Stripe) and how long until
//! every plan was synced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../tests/e2e/stripe_fake.rs"]
#[allow(dead_code)]
mod stripe_fake;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use shared::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = common::env_usize("N", 5_000);
    let clients = common::env_usize("CLIENTS", 32);
    let worker_bin = std::env::var("WORKER_BIN").expect("WORKER_BIN");
    let db = common::BenchDatabase::create("stripe").await?;
    let db_url = db.url.clone();

    let fake = stripe_fake::StripeFake::start().await;
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
    vars.insert("STRIPE_SECRET_KEY_TEST".into(), "sk_test_bench".into());
    vars.insert("STRIPE_API_BASE".into(), fake.url());
    vars.insert("STRIPE_RATE_LIMIT_TEST".into(), "100".into());
    vars.insert("RATE_LIMIT_PER_SECOND".into(), "1000000".into());
    vars.insert("REGISTRATIONS_PER_IP".into(), "1000000".into());
    vars.insert("API_ADDR".into(), "127.0.0.1:0".into());
    vars.insert("RUST_LOG".into(), "warn".into());
    let worker_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    vars.insert("WORKER_ADDR".into(), format!("127.0.0.1:{worker_port}"));
    let settings = Settings::from_lookup(|k| vars.get(k).cloned())?;
    let pool = shared::db::pool(&settings.database)?;
    shared::db::migrate(&pool).await?;
    let app = api::Application::bind(api::build_state(settings.clone()).await?).await?;
    let api_addr = app.addr;
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let url = |p: &str| format!("http://{api_addr}{p}");

    // A tenant with a connected account.
    let reg: Value = http
        .post(url("/api/v1/auth/tenants/register"))
        .json(&json!({"company_name": "Bench", "email": "bench@example.com", "password": "BenchPass1234!"}))
        .send()
        .await?
        .json()
        .await?;
    let key = reg["api_keys"]["test_secret"]["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let owner = reg["tokens"]["access"].as_str().unwrap().to_owned();
    let link: Value = http
        .post(url("/api/v1/auth/tenants/stripe/connect"))
        .bearer_auth(&owner)
        .send()
        .await?
        .json()
        .await?;
    let account = link["account_id"].as_str().unwrap().to_owned();
    fake.complete_onboarding(&account);
    let back = http
        .get(url(&format!(
            "/api/v1/auth/tenants/stripe/callback?state={}",
            link["state"].as_str().unwrap()
        )))
        .send()
        .await?;
    assert!(back.status().is_success());

    let mut worker = Command::new(&worker_bin)
        .envs(&vars)
        .args(["--queues", "stripe_sync"])
        .stdout(Stdio::null())
        .spawn()?;

    // Create the plans.
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (http, key, next) = (http.clone(), key.clone(), next.clone());
        let endpoint = url("/api/v1/plans");
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let resp = http
                    .post(&endpoint)
                    .bearer_auth(&key)
                    .json(
                        &json!({"name": format!("Plan {i}"), "price_cents": 1000 + i,
                                  "billing_interval": "month"}),
                    )
                    .send()
                    .await
                    .expect("create plan");
                assert_eq!(resp.status().as_u16(), 201, "{:?}", resp.text().await);
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(n);
    for t in tasks {
        latencies.extend(t.await?);
    }
    let created_in = started.elapsed();
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];

    loop {
        let synced: i64 =
            sqlx::query_scalar("SELECT count(*) FROM plans WHERE sync_status = 'synced'")
                .fetch_one(&pool)
                .await?;
        if synced as usize >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            anyhow::bail!("only {synced} of {n} synced after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_synced = started.elapsed();
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();

    let mut per_second: HashMap<u128, usize> = HashMap::new();
    for r in fake
        .requests()
        .iter()
        .filter(|r| r.account.as_deref() == Some(account.as_str()))
    {
        *per_second.entry(r.at_ms / 1000).or_default() += 1;
    }
    let busiest = per_second.values().copied().max().unwrap_or(0);
    let products = fake.objects("prod_");
    let prices = fake.objects("price_");
    pool.close().await;
    common::clear_prefix(&vars["REDIS_URL"], &vars["REDIS_KEY_PREFIX"]).await;
    db.remove().await;
    println!(
        "Stripe calls: {} in {} seconds, busiest second {busiest}; objects: {products} products, {prices} prices",
        per_second.values().sum::<usize>(),
        per_second.len()
    );
    println!(
        "stripe_sync: {n} plans created at {:.0} req/s (p99 {:.1} ms, {clients} clients); all synced {:.1} s after the first request ({:.1} plans/s at the 100 req/s per-account limit)",
        n as f64 / created_in.as_secs_f64(),
        p99.as_secs_f64() * 1000.0,
        all_synced.as_secs_f64(),
        n as f64 / all_synced.as_secs_f64()
    );
    Ok(())
}
