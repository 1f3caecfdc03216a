//! No lost work: Redis flushed, a worker killed mid-batch, a large backlog.

use std::{
    collections::HashSet,
    process::Command,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use serde_json::json;
use shared::jobs::Queue;

use crate::helpers::{Env, Receiver, free_port, wait_for};

async fn succeeded(env: &Env) -> i64 {
    env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
        .await
}

/// No delivery has two successful attempts recorded.
async fn assert_recorded_once(env: &Env) {
    let twice = env
        .scalar(
            "SELECT count(*) FROM (SELECT delivery_id FROM webhook_attempts \
             WHERE status_code BETWEEN 200 AND 299 GROUP BY delivery_id HAVING count(*) > 1) t",
        )
        .await;
    assert_eq!(twice, 0, "deliveries recorded as succeeded twice");
}

#[tokio::test]
async fn redis_flushed_after_the_api_commits_500_events_loses_none_of_them() {
    let env = Env::new(&[("JOB_LEASE_SECONDS", "2")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("flush@example.com").await;
    let (status, _) = api
        .post(
            &tenant.sk_test,
            "/api/v1/auth/tenants/webhooks/config",
            &json!({ "webhook_url": receiver.url }),
        )
        .await;
    assert_eq!(status, 200);
    for _ in 0..500 {
        let (status, body) = api
            .post(
                &tenant.sk_test,
                "/api/v1/auth/tenants/webhooks/test",
                &json!({}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }
    // The relay moves them to Redis (no consumer is running yet)…
    let rt = worker::Runtime::new(env.settings(), env.pool.clone(), env.redis().await).unwrap();
    let pushed = worker::relay::relay_once(&rt, Queue::Webhooks, "test-relay")
        .await
        .unwrap();
    assert_eq!(pushed, 500);
    // …and Redis loses everything.
    assert!(env.flush_redis().await > 0);

    let worker = env.worker().await;
    wait_for("all 500 deliveries", Duration::from_secs(60), || async {
        succeeded(&env).await == 500
    })
    .await;
    let ids: HashSet<String> = receiver
        .hits()
        .iter()
        .map(|h| h.webhook_id().to_owned())
        .collect();
    assert_eq!(ids.len(), 500);
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state <> 'succeeded'")
            .await,
        0
    );
    assert_recorded_once(&env).await;
    worker.stop().await;
}

#[tokio::test]
async fn a_worker_killed_mid_batch_of_2000_loses_nothing_and_records_nothing_twice() {
    let env = Env::new(&[("JOB_LEASE_SECONDS", "3")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.delay(Duration::from_millis(20));
    let tenant = api.register("kill@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;

    let mut first = env.worker_process(free_port());
    env.record_events(&tenant, 2000, "invoice.paid").await;
    wait_for(
        "the first worker to get going",
        Duration::from_secs(60),
        || async { receiver.count() >= 300 },
    )
    .await;
    let status = Command::new("kill")
        .args(["-KILL", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    first.wait().unwrap();
    let at_kill = succeeded(&env).await;
    assert!(at_kill < 2000, "the kill came too late to test anything");

    let mut second = env.worker_process(free_port());
    wait_for("every delivery", Duration::from_secs(120), || async {
        succeeded(&env).await == 2000
    })
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_deliveries").await,
        2000
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state <> 'succeeded'")
            .await,
        0,
        "nothing left pending"
    );
    let ids: HashSet<String> = receiver
        .hits()
        .iter()
        .map(|h| h.webhook_id().to_owned())
        .collect();
    assert_eq!(ids.len(), 2000, "every event reached the receiver");
    assert_recorded_once(&env).await;
    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    second.wait().unwrap();
}

#[tokio::test]
async fn a_backlog_of_50000_due_deliveries_drains_with_every_worker_alive() {
    const N: i64 = 50_000;
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("backlog@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    // The receiver was down for hours: everything is due at once.
    env.record_events(&tenant, N as usize, "invoice.paid").await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state = 'pending'")
            .await,
        N
    );

    let worker = env.worker().await;
    let settings = env.settings();
    let config = worker::redis_queue::config(&settings, Queue::Webhooks);
    let mut redis = env.redis().await;
    let ceiling = (settings.jobs.high_water + settings.jobs.relay_batch) as i64;
    let started = Instant::now();
    let mut deepest = 0;
    loop {
        // The probe's own connection may time out while both cores drain the backlog: that
        // is the observer's problem, not the worker's; look again.
        let depth = match worker::redis_queue::depth(&mut redis, &config).await {
            Ok(depth) => depth,
            Err(e) if e.is_timeout() => {
                assert!(started.elapsed() < Duration::from_secs(600), "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        deepest = deepest.max(depth);
        assert!(depth <= ceiling, "Redis held {depth} jobs");
        if succeeded(&env).await == N {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the backlog did not drain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(deepest > 0);
    assert_eq!(
        worker.rt.metrics.restarts.load(Ordering::Relaxed),
        0,
        "a queue consumer died"
    );
    assert!(receiver.count() as i64 >= N);
    worker.stop().await;
}
