//! The binary's start-up contract: one clear line for a bad setting, and its subcommands.

use std::process::Command;

fn billing_api() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_billing-api"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

#[test]
fn a_missing_app_secret_stops_start_up_with_one_line_naming_it() {
    let out = billing_api().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("APP_SECRET"), "{stderr}");
}

#[test]
fn a_malformed_setting_stops_start_up_with_one_line_naming_it() {
    for (var, value) in [
        ("API_ADDR", "localhost"),
        ("DATABASE_URL", "mysql://x"),
        ("MIGRATE_ON_START", "maybe"),
    ] {
        let out = billing_api()
            .env("APP_SECRET", "0123456789abcdef0123456789abcdef")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

#[test]
fn an_unreachable_database_is_one_clear_line_too() {
    let out = billing_api()
        .env("APP_SECRET", "0123456789abcdef0123456789abcdef")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/billing")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr
            .lines()
            .last()
            .unwrap_or("")
            .contains("start-up failed"),
        "{stderr}"
    );
}

#[test]
fn the_openapi_subcommand_writes_the_checked_in_document() {
    let dir = std::env::temp_dir().join(format!("openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("openapi.json");
    let out = billing_api().arg("openapi").arg(&path).output().unwrap();
    assert!(out.status.success());
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, api::routes::spec_json());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unknown_subcommand_is_refused_with_usage() {
    let out = billing_api().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("usage"));
}

#[tokio::test]
async fn the_migrate_subcommand_applies_every_migration_to_a_fresh_database() {
    let url = crate::helpers::fresh_database_url().await;
    let migrate = || {
        billing_api()
            .arg("migrate")
            .env("APP_SECRET", "0123456789abcdef0123456789abcdef")
            .env("DATABASE_URL", &url)
            .output()
            .unwrap()
    };
    let out = migrate();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout)
            .unwrap()
            .contains("migrations applied")
    );

    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(usize::try_from(applied).unwrap(), files);
    for table in ["tenants", "users", "api_keys", "refresh_tokens"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(exists, "{table} missing");
    }

    // Running it again is harmless.
    assert!(migrate().status.success());
    let again: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(again, applied);
    pool.close().await;
}

#[tokio::test]
async fn an_unreachable_redis_stops_start_up_with_one_line_naming_redis_url() {
    // Start-up checks Redis after PostgreSQL: give it a reachable database.
    let url = crate::helpers::fresh_database_url().await;
    let out = billing_api()
        .env("APP_SECRET", "0123456789abcdef0123456789abcdef")
        .env("DATABASE_URL", url)
        .env("MIGRATE_ON_START", "false")
        .env("REDIS_URL", "redis://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("start-up failed"), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
}
