//! Leases: a claim keeps the relay's lease while most of it is left, and renews it otherwise.

use std::time::Duration;

use chrono::Utc;
use shared::jobs::{self, JobMessage, NewJob, Queue};
use uuid::Uuid;

use crate::helpers::Env;

async fn run_at(env: &Env, id: Uuid) -> chrono::DateTime<Utc> {
    sqlx::query_scalar("SELECT run_at FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_claim_keeps_a_fresh_lease_and_renews_one_running_out() {
    let env = Env::new(&[]).await;
    let relaxed = shared::db::relaxed_pool(&env.settings().database, 1).unwrap();
    let lease = Duration::from_secs(60);
    let now = Utc::now();
    let ids = [Uuid::new_v4(), Uuid::new_v4()];
    let mut tx = env.pool.begin().await.unwrap();
    let new: Vec<NewJob> = ids
        .iter()
        .map(|id| NewJob {
            id: *id,
            queue: Queue::Analytics,
            kind: "test",
            tenant: None,
            payload: serde_json::json!({}),
            run_at: now,
            max_attempts: 3,
            test_clock: None,
        })
        .collect();
    jobs::enqueue(&mut tx, &new, now).await.unwrap();
    tx.commit().await.unwrap();
    let leased = jobs::lease_due(&relaxed, Queue::Analytics, now, lease, 10)
        .await
        .unwrap();
    assert_eq!(leased.len(), 2);
    let leased_until = run_at(&env, ids[0]).await;
    // The second job's lease has run mostly out (its message sat in Redis for 50 s).
    sqlx::query("UPDATE jobs SET run_at = $2 WHERE id = $1")
        .bind(ids[1])
        .bind(now + chrono::Duration::seconds(10))
        .execute(&env.pool)
        .await
        .unwrap();
    let msgs: Vec<JobMessage> = leased.clone();
    let claimed = jobs::claim(&relaxed, &msgs, now, lease).await.unwrap();
    assert_eq!(claimed.len(), 2);
    // Kept: at least three quarters of the lease were left.
    assert_eq!(run_at(&env, ids[0]).await, leased_until);
    // Renewed: a full lease from the claim.
    let renewed = run_at(&env, ids[1]).await;
    assert_eq!(
        renewed.timestamp_micros(),
        (now + chrono::Duration::seconds(60)).timestamp_micros()
    );
    // The claim replaced the tokens: the relay's messages are stale now.
    assert!(
        jobs::claim(&relaxed, &msgs, now, lease)
            .await
            .unwrap()
            .is_empty()
    );
}
