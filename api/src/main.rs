//! `billing-api`: serve the REST API (default), `migrate`, or `openapi [PATH]`.

use anyhow::Context;
use shared::config::Settings;

const USAGE: &str =
    "usage: billing-api [serve | migrate | create-database | drop-database | openapi [PATH]]";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    api::telemetry::install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("openapi") => {
            let path = args
                .get(1)
                .map(String::as_str)
                .unwrap_or("openapi/openapi.json");
            std::fs::write(path, api::routes::spec_json())
                .with_context(|| format!("writing {path}"))?;
            println!("wrote {path}");
            return Ok(());
        }
        None | Some("serve" | "migrate" | "create-database" | "drop-database") => {}
        Some("-h" | "--help") => {
            println!("{USAGE}");
            return Ok(());
        }
        Some(other) => {
            eprintln!("unknown command `{other}`\n{USAGE}");
            std::process::exit(2);
        }
    }
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            std::process::exit(2);
        }
    };
    api::telemetry::init(settings.log_format);
    if args.first().map(String::as_str) == Some("create-database") {
        let created = shared::db::create_database_if_missing(&settings.database)
            .await
            .context("DATABASE_URL: creating the database")?;
        println!(
            "{}",
            if created {
                "database created"
            } else {
                "database exists"
            }
        );
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("drop-database") {
        shared::db::drop_database(&settings.database)
            .await
            .context("DATABASE_URL: dropping the database")?;
        println!("database dropped");
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("migrate") {
        let pool = shared::db::pool(&settings.database)?;
        shared::db::migrate(&pool)
            .await
            .context("applying migrations")?;
        println!("migrations applied");
        return Ok(());
    }
    let state = match api::build_state(settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("start-up failed: {e}");
            std::process::exit(1);
        }
    };
    let app = match api::Application::bind(state).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("start-up failed: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(addr = %app.addr, "billing-api listening");
    app.run_until_stopped().await?;
    Ok(())
}
