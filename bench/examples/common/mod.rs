//! What the benchmarks share.

use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};

/// A numeric knob from the environment, or its default.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) a process has used. (Each example compiles this module; not
/// every one measures processes.)
#[allow(dead_code)]
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// A process's peak resident memory, in KiB.
#[allow(dead_code)]
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Where the server runs without autovacuum (CI servers often do), gathers statistics as
/// autovacuum would: a table is analyzed once the rows changed since its last analysis exceed
/// autovacuum's threshold (50 rows plus 10 % of the table, PostgreSQL's defaults), looked at
/// every 5 s (autovacuum looks once a minute). Plans made without statistics scan a tenant's
/// rows where one index probe does; analyzing every table every few seconds instead costs a
/// large share of a small machine. Returns whether it runs (`BENCH_ANALYZE=0`: it does not).
#[allow(dead_code)]
pub async fn analyze_as_autovacuum(pool: &sqlx::PgPool) -> anyhow::Result<bool> {
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(pool)
        .await?;
    if autovacuum != "off" || std::env::var("BENCH_ANALYZE").as_deref() == Ok("0") {
        return Ok(false);
    }
    let pool = pool.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            let due: Result<Vec<String>, _> = sqlx::query_scalar(
                "SELECT format('%I.%I', s.schemaname, s.relname) FROM pg_stat_user_tables s \
                 JOIN pg_class c ON c.oid = s.relid \
                 WHERE s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)",
            )
            .fetch_all(&pool)
            .await;
            let Ok(due) = due else { return };
            for table in due {
                let sql = format!("ANALYZE {table}");
                if sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&pool)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(true)
}

/// A fresh database for one benchmark run, next to `DATABASE_URL`'s.
pub struct BenchDatabase {
    admin: PgConnection,
    name: String,
    pub url: String,
}

impl BenchDatabase {
    pub async fn create(kind: &str) -> anyhow::Result<Self> {
        let base: PgConnectOptions = std::env::var("DATABASE_URL")?.parse()?;
        let name = format!("billing_bench_{kind}_{}", std::process::id());
        let mut admin = base.clone().database("postgres").connect().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await?;
        let url = base.database(&name).to_url_lossy().to_string();
        Ok(Self { admin, name, url })
    }

    /// Drops the database (best effort).
    pub async fn remove(mut self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        )))
        .execute(&mut self.admin)
        .await;
        let _ = self.admin.close().await;
    }
}

/// Deletes the benchmark's Redis keys.
pub async fn clear_prefix(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await
            .unwrap_or((0, Vec::new()));
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
}

/// A tenant registered through the API at `api`, with a monthly plan at 29.99: its test mode's
/// scope and the plan's price.
#[allow(dead_code)]
pub async fn tenant_with_plan(
    http: &reqwest::Client,
    api: std::net::SocketAddr,
    pool: &sqlx::PgPool,
    company: &str,
    email: &str,
) -> anyhow::Result<(shared::tenancy::Scope, shared::ids::PriceId)> {
    let reg: serde_json::Value = http
        .post(format!("http://{api}/api/v1/auth/tenants/register"))
        .json(&serde_json::json!({"company_name": company, "email": email,
                                  "password": "BenchPass1234!"}))
        .send()
        .await?
        .json()
        .await?;
    let key = reg["api_keys"]["test_secret"]["key"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no key: {reg}"))?
        .to_owned();
    let plan: serde_json::Value = http
        .post(format!("http://{api}/api/v1/plans"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"name": "Pro", "price_cents": 2999,
                                  "billing_interval": "month"}))
        .send()
        .await?
        .json()
        .await?;
    let price = shared::ids::PriceId::parse(
        plan["price_id"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no price: {plan}"))?,
    )?;
    let presented = shared::domain::api_key::PresentedKey::parse(&key)
        .ok_or_else(|| anyhow::anyhow!("not a secret key"))?;
    let scope = shared::db::api_keys::find_active_by_hash(pool, &presented.hash)
        .await?
        .context()
        .scope();
    Ok((scope, price))
}
