//! The worker binary: health checks, SIGTERM, start-up errors, operator subcommands.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::Duration,
};

use crate::helpers::{Env, Receiver, free_port, wait_for};

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn the_worker_reports_ready_serves_metrics_and_stops_cleanly_on_sigterm() {
    let env = Env::new(&[]).await;
    let port = free_port();
    let mut child = env.worker_process(port);
    wait_for("the worker to answer", Duration::from_secs(20), || async {
        tokio::task::spawn_blocking(move || http_get(port, "/readyz"))
            .await
            .unwrap()
            .is_some()
    })
    .await;
    let ready = http_get(port, "/readyz").unwrap();
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("postgres=ok redis=ok"), "{ready}");
    assert!(
        http_get(port, "/healthz")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );
    let metrics = http_get(port, "/metrics").unwrap();
    for series in [
        "worker_jobs_started_total{queue=\"webhooks\"}",
        "worker_jobs_dead_total{queue=\"renewals\"}",
        "worker_queue_depth{queue=\"stripe_sync\"}",
        "worker_job_duration_seconds_bucket{queue=\"webhooks\",le=\"0.1\"}",
        "worker_idempotency_keys_purged_total",
    ] {
        assert!(
            metrics.contains(series),
            "{series} missing from:\n{metrics}"
        );
    }
    sigterm(child.id());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[tokio::test]
async fn sigterm_lets_running_deliveries_finish_and_records_them() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(1500));
    let tenant = api.register("sigterm@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let port = free_port();
    let mut child = env.worker_process(port);
    env.record_events(&tenant, 5, "invoice.paid").await;
    wait_for("deliveries in flight", Duration::from_secs(20), || async {
        receiver.count() >= 5
    })
    .await;
    sigterm(child.id());
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            .await,
        5,
        "the running deliveries finished and were recorded before the exit"
    );
    assert_eq!(receiver.count(), 5);
}

#[test]
fn the_worker_refuses_to_start_without_its_secret() {
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("APP_SECRET")
    );
}

#[test]
fn an_unknown_queue_is_refused_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
        .env("APP_SECRET", "0123456789abcdef0123456789abcdef")
        .args(["--queues", "webhooks,nope"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("unknown queue `nope`")
    );
}

#[tokio::test]
async fn operators_list_dead_jobs_and_retry_them_with_the_worker_binary() {
    let env = Env::new(&[("WEBHOOK_RETRY_SCHEDULE", "none")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let tenant = api.register("operator@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;
    env.record_events(&tenant, 1, "invoice.paid").await;
    wait_for("a dead job", Duration::from_secs(20), || async {
        env.scalar("SELECT count(*) FROM jobs WHERE state = 'dead'")
            .await
            == 1
    })
    .await;
    worker.stop().await;

    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_e2e-worker"))
            .envs(&env.vars)
            .args(args)
            .output()
            .unwrap()
    };
    let listed = run(&["dead-jobs", "--queue", "webhooks"]);
    assert!(listed.status.success());
    let line = String::from_utf8(listed.stdout).unwrap();
    let job: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(job["queue"], "webhooks");
    assert_eq!(job["kind"], "webhook.deliver");
    assert!(job["last_error"].as_str().unwrap().contains("500"));
    let id = job["id"].as_str().unwrap();
    assert!(id.starts_with("job_"));

    let retried = run(&["retry-job", id]);
    assert!(retried.status.success());
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state = 'pending'")
            .await,
        1
    );
    // Retrying it again finds nothing dead.
    assert_eq!(run(&["retry-job", id]).status.code(), Some(1));
}
