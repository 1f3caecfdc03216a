//! Redis holds only what is queued or running: finished jobs are acknowledged and removed,
//! however many have run, so restarting a consumer that ran many jobs is harmless.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    time::Duration,
};

use shared::jobs::Queue;
use worker::redis_queue;

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

async fn metrics(port: u16) -> String {
    tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
        .await
        .unwrap()
        .unwrap_or_default()
}

/// The value of one series in a Prometheus text exposition.
fn series(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn succeeded(env: &Env) -> i64 {
    env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
        .await
}

async fn started(port: u16) {
    wait_for("the worker to answer", Duration::from_secs(20), || async {
        tokio::task::spawn_blocking(move || http_get(port, "/healthz"))
            .await
            .unwrap()
            .is_some()
    })
    .await;
}

/// A worker process, killed if the test ends early.
struct Worker(std::process::Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How many keys of this test's webhooks queue match `suffix` (e.g. `meta:*`).
async fn keys(env: &Env, suffix: &str) -> usize {
    let pattern = format!(
        "{}:{suffix}",
        redis_queue::queue_name(&env.settings(), Queue::Webhooks)
    );
    let mut conn = env.redis().await;
    let mut cursor: u64 = 0;
    let mut n = 0;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        n += found.len();
        cursor = next;
        if cursor == 0 {
            return n;
        }
    }
}

async fn footprint(env: &Env) -> redis_queue::Footprint {
    let config = redis_queue::config(&env.settings(), Queue::Webhooks);
    redis_queue::footprint(&mut env.redis().await, &config)
        .await
        .unwrap()
}

#[tokio::test]
async fn after_10000_jobs_redis_holds_none_of_them_and_a_restarted_fleet_keeps_delivering() {
    // A consumer is presumed dead after three missed heartbeats: 15 s here, not the 6 s of
    // the other tests, so that a machine loaded by the tests running beside this one does
    // not make a live consumer look dead (and restart) when this test checks none did.
    let env = Env::new(&[("WORKER_HEARTBEAT_SECONDS", "5")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("footprint@acme.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let port = free_port();
    let first = Worker(env.worker_process(port));
    started(port).await;

    // 10,000 jobs through one consumer.
    env.record_events(&tenant, 10_000, "invoice.paid").await;
    wait_for("10,000 deliveries", Duration::from_secs(300), || async {
        succeeded(&env).await == 10_000
    })
    .await;
    // Acknowledgements trail the outcomes by a round trip.
    wait_for(
        "Redis to let go of finished jobs",
        Duration::from_secs(20),
        || async { footprint(&env).await.data == 0 },
    )
    .await;
    let after = footprint(&env).await;
    assert_eq!(after.largest_inflight, 0, "{after:?}");
    assert_eq!(keys(&env, "meta:*").await, 0, "task metadata left behind");
    let config = redis_queue::config(&env.settings(), Queue::Webhooks);
    let depth = redis_queue::depth(&mut env.redis().await, &config)
        .await
        .unwrap();
    assert_eq!(depth, 0);

    // The metrics say so too (refreshed every few seconds).
    wait_for(
        "the metrics to show an empty Redis",
        Duration::from_secs(20),
        || async {
            let text = metrics(port).await;
            series(&text, "worker_redis_tasks{queue=\"webhooks\"}") == Some(0.0)
                && series(&text, "worker_redis_inflight_max{queue=\"webhooks\"}") == Some(0.0)
                && series(&text, "worker_redis_memory_bytes").is_some_and(|b| b > 0.0)
        },
    )
    .await;

    // SIGTERM, and another worker takes over the queue.
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(first.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let mut first = first;
        first.0.wait()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(exit.success(), "{exit:?}");
    let port = free_port();
    let _second = Worker(env.worker_process(port));
    started(port).await;
    // The stopped consumer is presumed dead after three missed heartbeats; its leftovers are
    // moved back (nothing) and it leaves the consumer set.
    wait_for(
        "the stopped consumer to be reaped",
        Duration::from_secs(60),
        || async { footprint(&env).await.consumers == 1 },
    )
    .await;
    env.record_events(&tenant, 300, "invoice.paid").await;
    wait_for("300 more deliveries", Duration::from_secs(60), || async {
        succeeded(&env).await == 10_300
    })
    .await;
    wait_for(
        "Redis to let go of them too",
        Duration::from_secs(20),
        || async { footprint(&env).await.data == 0 },
    )
    .await;
    assert_eq!(keys(&env, "meta:*").await, 0, "task metadata left behind");
    // What the stopped consumer left (apalis keeps a metadata hash per consumer) is reaped.
    wait_for(
        "the stopped consumer's leftovers to be reaped",
        Duration::from_secs(30),
        || async { keys(&env, "workers:metadata:*").await == 1 },
    )
    .await;
    let text = metrics(port).await;
    assert!(
        series(&text, "worker_redis_reaped_total").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "worker_restarts_total"),
        Some(0.0),
        "the new worker's consumers never failed:\n{text}"
    );
    assert_eq!(
        series(&text, "worker_redis_ack_failures_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(receiver.count(), 10_300);
}

#[tokio::test]
async fn acknowledging_leaves_a_task_handed_to_another_consumer_alone() {
    let env = Env::new(&[]).await;
    let settings = env.settings();
    let config = redis_queue::config(&settings, Queue::Webhooks);
    let mut conn = env.redis().await;
    let msg = shared::jobs::JobMessage {
        id: uuid::Uuid::new_v4(),
        token: uuid::Uuid::new_v4(),
    };
    redis_queue::push(&mut conn, &config, &[msg]).await.unwrap();
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(config.scheduled_jobs_set())
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let id = ids[0].clone();
    // Consumer "b" holds it now (consumer "a" was presumed dead and its task moved on).
    let _: i64 = redis::cmd("SADD")
        .arg(format!("{}:b", config.inflight_jobs_set()))
        .arg(&id)
        .query_async(&mut conn)
        .await
        .unwrap();
    let removed = redis_queue::ack(&mut conn, &config, "a", std::slice::from_ref(&id))
        .await
        .unwrap();
    assert_eq!(removed, 0);
    assert_eq!(footprint(&env).await.data, 1, "b's task lost its data");
    assert_eq!(keys(&env, "meta:*").await, 1);
    let removed = redis_queue::ack(&mut conn, &config, "b", &[id])
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(footprint(&env).await.data, 0);
    assert_eq!(keys(&env, "meta:*").await, 0);
}
