//! `billing-worker`: a member of the worker fleet, and the operators' tool for dead jobs.

use std::time::Duration;

use shared::{
    config::Settings,
    ids::JobId,
    jobs::{self, Queue},
};

/// The worker allocates and frees many small objects per job (rows, JSON, futures) on several
/// threads at once, where mimalloc spends much less time than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  billing-worker [serve] [--queues q1,q2] [--concurrency q=n,...]
  billing-worker dead-jobs [--queue q] [--limit n]
  billing-worker retry-job (<job id> | --all [--queue q])
  billing-worker runs [--limit n]
  billing-worker run-now [--tenant <tenant id>]
queues: webhooks, stripe_sync, renewals, dunning, analytics";

fn usage_error(msg: &str) -> ! {
    eprintln!("{msg}\n{USAGE}");
    std::process::exit(2);
}

/// `--flag value` pairs after the subcommand.
fn flags(args: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            let value = match it.peek() {
                Some(v) if !v.starts_with("--") => it.next().cloned(),
                _ => None,
            };
            out.push((name.to_owned(), value));
        } else {
            out.push((String::new(), Some(a.clone())));
        }
    }
    out
}

fn queue_arg(v: Option<&str>) -> Option<Queue> {
    v.map(|q| Queue::parse(q).unwrap_or_else(|| usage_error(&format!("unknown queue `{q}`"))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.first().map(String::as_str) {
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(c @ ("serve" | "dead-jobs" | "retry-job" | "runs" | "run-now")) => {
            (c.to_owned(), &args[1..])
        }
        Some(c) if !c.starts_with("--") => usage_error(&format!("unknown command `{c}`")),
        _ => ("serve".to_owned(), &args[..]),
    };
    let mut settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    };
    let flags = flags(rest);
    if command == "serve" {
        for (name, value) in &flags {
            match (name.as_str(), value.as_deref()) {
                ("queues", Some(v)) => {
                    settings.worker.queues = v
                        .split(',')
                        .map(str::trim)
                        .filter(|q| !q.is_empty())
                        .map(|q| queue_arg(Some(q)).unwrap_or(Queue::Webhooks))
                        .collect();
                    if settings.worker.queues.is_empty() {
                        usage_error("--queues names no queue");
                    }
                }
                ("concurrency", Some(v)) => {
                    for pair in v.split(',').filter(|p| !p.is_empty()) {
                        let (q, n) = pair
                            .split_once('=')
                            .unwrap_or_else(|| usage_error("--concurrency takes queue=n pairs"));
                        let n: usize =
                            n.parse().ok().filter(|n| *n > 0).unwrap_or_else(|| {
                                usage_error("--concurrency needs positive numbers")
                            });
                        let q = queue_arg(Some(q)).unwrap_or(Queue::Webhooks);
                        settings.worker.concurrency.set(q, n);
                    }
                }
                _ => usage_error(&format!("unexpected argument `{name}`")),
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match settings.log_format {
        shared::config::LogFormat::Json => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .flatten_event(true)
            .init(),
        shared::config::LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
    }
    let pool = shared::db::pool(&settings.database)?;
    if let Err(e) = sqlx::query("SELECT 1").execute(&pool).await {
        eprintln!("start-up failed: DATABASE_URL: cannot connect to PostgreSQL: {e}");
        std::process::exit(1);
    }
    match command.as_str() {
        "dead-jobs" => return dead_jobs(&pool, &flags).await,
        "retry-job" => return retry_job(&pool, &flags).await,
        "runs" => return runs(&pool, &flags).await,
        "run-now" => return run_now(&pool, &flags).await,
        _ => {}
    }
    let client = shared::ratelimit::client(settings.redis.url.expose())?;
    // Redis answers within a heartbeat, not within the client's default half second: a
    // consumer whose call times out fails and is restarted, which a loaded Redis (a large
    // fetch, a busy machine) must not cause; a Redis silent for a whole heartbeat is down.
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(settings.worker.heartbeat));
    let redis = match tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new_with_config(client, config),
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
    let rt = match worker::Runtime::new(settings, pool, redis) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("start-up failed: {e}");
            std::process::exit(1);
        }
    };
    worker::run(rt).await?;
    Ok(())
}

async fn dead_jobs(pool: &sqlx::PgPool, flags: &[(String, Option<String>)]) -> anyhow::Result<()> {
    let mut queue = None;
    let mut limit = 100i64;
    for (name, value) in flags {
        match (name.as_str(), value.as_deref()) {
            ("queue", v @ Some(_)) => queue = queue_arg(v),
            ("limit", Some(v)) => {
                limit = v
                    .parse()
                    .unwrap_or_else(|_| usage_error("--limit takes a number"));
            }
            _ => usage_error(&format!("unexpected argument `{name}`")),
        }
    }
    let rows = jobs::list_dead(pool, queue, limit).await?;
    for row in &rows {
        let mut v = serde_json::to_value(row)?;
        v["id"] = serde_json::Value::String(JobId::from_uuid(row.id).to_string());
        println!("{v}");
    }
    eprintln!("{} dead job(s)", rows.len());
    Ok(())
}

/// Lists billing runs, newest first, one JSON object per line.
async fn runs(pool: &sqlx::PgPool, flags: &[(String, Option<String>)]) -> anyhow::Result<()> {
    let mut limit = 50i64;
    for (name, value) in flags {
        match (name.as_str(), value.as_deref()) {
            ("limit", Some(v)) => {
                limit = v
                    .parse()
                    .unwrap_or_else(|_| usage_error("--limit takes a number"));
            }
            _ => usage_error(&format!("unexpected argument `{name}`")),
        }
    }
    let rows = shared::db::billing_runs::list_all(pool, limit).await?;
    for (run, due, enqueued) in &rows {
        println!(
            "{}",
            serde_json::json!({
                "id": run.id.to_string(),
                "scope": run.scope,
                "scheduled_for": run.scheduled_for,
                "trigger": run.trigger.as_str(),
                "status": run.status.as_str(),
                "missed_ticks": run.missed_ticks,
                "owner": run.owner,
                "due": due,
                "enqueued": enqueued,
                "started_at": run.started_at,
                "enqueued_at": run.enqueued_at,
                "completed_at": run.completed_at,
            })
        );
    }
    eprintln!("{} run(s)", rows.len());
    Ok(())
}

/// Makes a billing run now, for every tenant or one, and queues what is due.
async fn run_now(pool: &sqlx::PgPool, flags: &[(String, Option<String>)]) -> anyhow::Result<()> {
    let mut scope = shared::db::billing_runs::RunScope::Fleet;
    for (name, value) in flags {
        match (name.as_str(), value.as_deref()) {
            ("tenant", Some(v)) => {
                let tenant = shared::ids::TenantId::parse(v)
                    .unwrap_or_else(|e| usage_error(&format!("`{v}`: {e}")));
                scope = shared::db::billing_runs::RunScope::Tenant(tenant.as_uuid());
            }
            _ => usage_error(&format!("unexpected argument `{name}`")),
        }
    }
    let clock = shared::clock::SystemClock;
    let now = chrono::SubsecRound::trunc_subsecs(shared::clock::Clock::now(&clock), 3);
    let owner = format!("run-now-{}", std::process::id());
    match shared::service::billing_runs::run(
        pool,
        &clock,
        scope,
        now,
        shared::db::billing_runs::RunTrigger::Manual,
        0,
        &owner,
    )
    .await?
    {
        Some((run, queued)) => println!("{} queued {queued} job(s)", run.id),
        None => {
            eprintln!("a run of this scope at this time exists already");
            std::process::exit(1);
        }
    }
    Ok(())
}

async fn retry_job(pool: &sqlx::PgPool, flags: &[(String, Option<String>)]) -> anyhow::Result<()> {
    let mut id = None;
    let mut all = false;
    let mut queue = None;
    for (name, value) in flags {
        match (name.as_str(), value.as_deref()) {
            ("", Some(v)) => {
                id = Some(
                    JobId::parse(v)
                        .unwrap_or_else(|e| usage_error(&format!("`{v}`: {e}")))
                        .as_uuid(),
                );
            }
            ("all", None) => all = true,
            ("queue", v @ Some(_)) => queue = queue_arg(v),
            _ => usage_error(&format!("unexpected argument `{name}`")),
        }
    }
    if id.is_none() && !all {
        usage_error("name a job id, or --all");
    }
    let n = jobs::retry_dead(pool, id, queue, chrono::Utc::now()).await?;
    println!("{n} job(s) queued again");
    if n == 0 && id.is_some() {
        std::process::exit(1);
    }
    Ok(())
}
