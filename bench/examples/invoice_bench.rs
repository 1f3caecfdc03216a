//! Invoice benchmark (run by `bench/invoices/run` against release builds).
//!
//! N monthly subscriptions (default 20,000) of one tenant are due for renewal, each customer
//! with a sandbox card. One `billing-worker` process consuming the `renewals` queue renews them
//! through the real path: `subscription.renew` invoices the next period (numbered, finalized)
//! and queues `invoice.pay`, which charges it in three steps. The clock runs from the commit
//! that makes the renewals due until every renewal invoice is paid. The last line prints
//! invoices per second and the worker's peak resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chrono::{SubsecRound, Utc};
use shared::config::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = common::env_usize("N", 20_000);
    let worker_bin = std::env::var("WORKER_BIN").expect("WORKER_BIN");
    let db = common::BenchDatabase::create("invoices").await?;
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("DATABASE_URL".into(), db.url.clone());
    vars.insert("REDIS_URL".into(), std::env::var("REDIS_URL")?);
    vars.insert(
        "APP_SECRET".into(),
        "bench-secret-0123456789abcdef0123456789".into(),
    );
    vars.insert(
        "REDIS_KEY_PREFIX".into(),
        format!("bench:{}:", std::process::id()),
    );
    vars.insert(
        "RUST_LOG".into(),
        std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
    );
    if let Ok(c) = std::env::var("CONCURRENCY") {
        vars.insert("WORKER_CONCURRENCY_RENEWALS".into(), c);
    }
    let worker_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    vars.insert("WORKER_ADDR".into(), format!("127.0.0.1:{worker_port}"));
    let settings = Settings::from_lookup(|k| vars.get(k).cloned())?;
    let pool = shared::db::pool(&settings.database)?;
    shared::db::migrate(&pool).await?;

    // A tenant and a monthly plan, through the API code.
    let mut api_settings = settings.clone();
    api_settings.api.addr = "127.0.0.1:0".parse()?;
    let app = api::Application::bind(api::build_state(api_settings).await?).await?;
    let api_addr = app.addr;
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    let (scope, price) =
        common::tenant_with_plan(&http, api_addr, &pool, "Bench", "bench@example.com").await?;
    let tenant = scope.tenant_id().as_uuid();

    // N customers with a card and an active subscription whose period has just ended, in
    // bulk (the subscriptions' own creation is not what is measured). Whole seconds, as
    // periods are.
    let ended = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(1);
    let subs =
        bench::due_subscriptions(&pool, tenant, price.as_uuid(), n, ended, |_| "pm_card_visa")
            .await?;

    let mut worker = Command::new(&worker_bin)
        .envs(&vars)
        .args(["--queues", "renewals"])
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

    let jobs = bench::renewal_jobs(scope, &subs, ended);
    // A PostgreSQL without autovacuum (CI servers often run so) never gathers statistics on
    // the tables the run fills, and plans made without them scan a tenant's rows where one
    // index probe does. Production runs autovacuum: where it is off, the benchmark analyzes
    // the tables as autovacuum would (`BENCH_ANALYZE=0` does not).
    let analyze = common::analyze_as_autovacuum(&pool).await?;
    let cpu_before = common::cpu_secs(worker.id()).unwrap_or(0.0);
    let started = Instant::now();
    let mut tx = pool.begin().await?;
    for chunk in jobs.chunks(5_000) {
        shared::jobs::enqueue(&mut tx, chunk, Utc::now()).await?;
    }
    tx.commit().await?;
    loop {
        let paid: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM invoices WHERE status = 'paid' \
             AND billing_reason = 'subscription_cycle'",
        )
        .fetch_one(&pool)
        .await?;
        if std::env::var("BENCH_TRACE").is_ok() {
            eprintln!("{:>6} ms {paid} paid", started.elapsed().as_millis());
        }
        if paid as usize >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            anyhow::bail!("only {paid} of {n} invoices paid after 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took = started.elapsed();
    let rss_mib = common::peak_rss_kib(worker.id()).unwrap_or(0) as f64 / 1024.0;
    let worker_cpu = common::cpu_secs(worker.id()).unwrap_or(0.0) - cpu_before;
    // Exactly once: one invoice per subscription and period, one successful charge each.
    let (invoices, charges, numbers): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle'), \
                (SELECT count(*) FROM payments WHERE status = 'succeeded'), \
                (SELECT count(DISTINCT number) FROM invoices)",
    )
    .fetch_one(&pool)
    .await?;
    let _ = Command::new("kill")
        .args(["-TERM", &worker.id().to_string()])
        .status();
    let _ = worker.wait();
    pool.close().await;
    common::clear_prefix(&vars["REDIS_URL"], &vars["REDIS_KEY_PREFIX"]).await;
    db.remove().await;
    anyhow::ensure!(
        invoices as usize == n && charges as usize == n && numbers as usize == n,
        "{invoices} invoices, {charges} charges, {numbers} numbers for {n} renewals"
    );
    println!(
        "{n} renewals: {invoices} invoices, {charges} charges, {numbers} distinct numbers; \
         worker CPU {worker_cpu:.1} s; autovacuum {}",
        if analyze { "emulated" } else { "as configured" }
    );
    println!(
        "invoices: {n} renewed, finalized and paid in {:.2} s = {:.0} invoices/s; worker peak RSS {rss_mib:.1} MiB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    Ok(())
}
