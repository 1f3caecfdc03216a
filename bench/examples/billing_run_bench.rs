//! Billing-run benchmark (run by `bench/billing_run/run` against release builds).
//!
//! N due subscriptions (default 100,000, 30-day periods) across TENANTS tenants (default 100),
//! each customer with a sandbox card, their renewals waiting as scheduled jobs. WORKERS
//! `billing-worker` processes (default 1) run the fleet's schedule (a tick every second): the
//! first tick's billing run queues every renewal, and the workers renew, invoice and charge
//! them. The clock runs from that tick until every renewal invoice is paid. The last line
//! prints the time, renewals per second and the workers' peak resident memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use chrono::{DateTime, SubsecRound, Utc};
use shared::{config::Settings, jobs::Job};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let n = common::env_usize("N", 100_000);
    let tenants = common::env_usize("TENANTS", 100).max(1);
    let workers = common::env_usize("WORKERS", 1).max(1);
    let worker_bin = std::env::var("WORKER_BIN").expect("WORKER_BIN");
    let db = common::BenchDatabase::create("billing_run").await?;
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
    vars.insert("REGISTRATIONS_PER_IP".into(), "1000000".into());
    vars.insert("RATE_LIMIT_PER_SECOND".into(), "1000000".into());
    vars.insert("BILLING_RUN_SCHEDULE".into(), "* * * * * *".into());
    vars.insert(
        "RUST_LOG".into(),
        std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
    );
    let settings = Settings::from_lookup(|k| vars.get(k).cloned())?;
    let pool = shared::db::pool(&settings.database)?;
    shared::db::migrate(&pool).await?;

    // The tenants and their monthly plans, through the API code.
    let mut api_settings = settings.clone();
    api_settings.api.addr = "127.0.0.1:0".parse()?;
    let app = api::Application::bind(api::build_state(api_settings).await?).await?;
    let api_addr = app.addr;
    tokio::spawn(app.run_until_stopped());
    let http = reqwest::Client::new();
    // Whole seconds, as periods are; due already, waiting for the first run.
    let ended = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(1);
    let mut jobs: Vec<shared::jobs::NewJob> = Vec::with_capacity(n);
    for t in 0..tenants {
        let (scope, price) = common::tenant_with_plan(
            &http,
            api_addr,
            &pool,
            &format!("Bench {t}"),
            &format!("bench{t}@example.com"),
        )
        .await?;
        let share = n / tenants + usize::from(t < n % tenants);
        let subs = bench::due_subscriptions(
            &pool,
            scope.tenant_id().as_uuid(),
            price.as_uuid(),
            share,
            ended,
            |_| "pm_card_visa",
        )
        .await?;
        jobs.extend(bench::renewal_jobs(scope, &subs, ended));
    }
    // The renewals wait as the schedule leaves them: scheduled, for the next billing run.
    let mut tx = pool.begin().await?;
    for chunk in jobs.chunks(5_000) {
        shared::jobs::enqueue(&mut tx, chunk, Utc::now()).await?;
    }
    sqlx::query("UPDATE jobs SET state = 'scheduled' WHERE kind = $1")
        .bind(Job::RENEW_SUBSCRIPTION)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    drop(jobs);
    sqlx::query("ANALYZE").execute(&pool).await?;

    // Without autovacuum, statistics are gathered as autovacuum would.
    let analyzed = common::analyze_as_autovacuum(&pool).await?;
    let autovacuum = if analyzed {
        "emulated"
    } else {
        "as configured"
    };

    let mut procs: Vec<Child> = Vec::new();
    for _ in 0..workers {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(&worker_bin)
            .envs(&vars)
            .env("WORKER_ADDR", format!("127.0.0.1:{port}"))
            .args(["--queues", "renewals"])
            .stdout(if std::env::var("WORKER_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()?;
        procs.push(child);
    }
    let started = Instant::now();
    // The first run that queued renewals, and when every renewal invoice is paid.
    let tick: DateTime<Utc> = loop {
        let tick: Option<DateTime<Utc>> = sqlx::query_scalar(
            "SELECT min(r.scheduled_for) FROM billing_runs r \
             WHERE EXISTS (SELECT 1 FROM billing_run_tenants b WHERE b.run_id = r.id)",
        )
        .fetch_one(&pool)
        .await?;
        if let Some(t) = tick {
            break t;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no billing run within a minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Counting a growing invoices table costs the database about 50 ms: it is counted only once
    // no renewal or charge is left to run (an index probe every 100 ms, free by comparison).
    let paid_at = loop {
        let idle: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM jobs WHERE queue = 'renewals' \
                 AND state = 'pending' AND test_clock_id IS NULL) \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE state = 'scheduled' AND run_at <= $2 \
                 AND kind = $1)",
        )
        .bind(Job::RENEW_SUBSCRIPTION)
        .bind(tick)
        .fetch_one(&pool)
        .await?;
        // With nothing left to run, whatever is paid was paid by now.
        let at = Utc::now();
        let paid: i64 = if idle {
            sqlx::query_scalar(
                "SELECT count(*) FROM invoices WHERE status = 'paid' \
                 AND billing_reason = 'subscription_cycle'",
            )
            .fetch_one(&pool)
            .await?
        } else {
            -1
        };
        if std::env::var("BENCH_TRACE").is_ok() {
            eprintln!(
                "{:>6} ms idle {idle}, {paid} paid",
                started.elapsed().as_millis()
            );
        }
        if paid >= 0 && paid as usize >= n {
            break at;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "only {paid} of {n} invoices paid after 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(if idle { 1000 } else { 100 })).await;
    };
    let took = (paid_at - tick).to_std().unwrap_or_default();
    let rss: Vec<f64> = procs
        .iter()
        .map(|p| common::peak_rss_kib(p.id()).unwrap_or(0) as f64 / 1024.0)
        .collect();
    let (invoices, charges, runs): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle'), \
                (SELECT count(*) FROM payments WHERE status = 'succeeded'), \
                (SELECT count(DISTINCT billing_run_id) FROM jobs \
                 WHERE kind = 'subscription.renew' AND billing_run_id IS NOT NULL)",
    )
    .fetch_one(&pool)
    .await?;
    for p in &mut procs {
        let _ = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    pool.close().await;
    common::clear_prefix(&vars["REDIS_URL"], &vars["REDIS_KEY_PREFIX"]).await;
    db.remove().await;
    anyhow::ensure!(
        invoices as usize == n && charges as usize == n,
        "{invoices} invoices, {charges} charges for {n} renewals"
    );
    println!(
        "{n} renewals of {tenants} tenants: {invoices} invoices, {charges} charges, queued by \
         {runs} billing run(s); autovacuum {autovacuum}"
    );
    let rss_text: Vec<String> = rss.iter().map(|r| format!("{r:.1}")).collect();
    println!(
        "billing run: {n} renewals invoiced and paid {:.2} s after the tick = {:.0} renewals/s \
         with {workers} worker(s); worker peak RSS {} MiB",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        rss_text.join(" / ")
    );
    Ok(())
}
