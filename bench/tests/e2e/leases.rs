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

#[tokio::test]
async fn a_job_queued_held_runs_by_its_caller_and_reaches_the_relay_only_when_its_lease_runs_out() {
    let env = Env::new(&[]).await;
    let relaxed = shared::db::relaxed_pool(&env.settings().database, 1).unwrap();
    let lease = Duration::from_secs(60);
    let now = Utc::now();
    let until = now + chrono::Duration::seconds(60);
    let job = NewJob {
        id: Uuid::new_v4(),
        queue: Queue::Analytics,
        kind: "test",
        tenant: None,
        payload: serde_json::json!({"n": 1}),
        run_at: now,
        max_attempts: 3,
        test_clock: None,
    };
    let mut tx = env.pool.begin().await.unwrap();
    let held = jobs::enqueue_held(&mut tx, std::slice::from_ref(&job), now, until)
        .await
        .unwrap();
    // Queued again (the same key) in the same work: not added, not handed out twice.
    let again = jobs::enqueue_held(&mut tx, std::slice::from_ref(&job), now, until)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(held.len(), 1);
    assert!(again.is_empty());
    assert_eq!(
        (held[0].id, held[0].kind.as_str(), held[0].attempts),
        (job.id, "test", 0)
    );
    assert_eq!(held[0].payload, serde_json::json!({"n": 1}));
    assert_eq!(
        run_at(&env, job.id).await.timestamp_micros(),
        until.timestamp_micros()
    );
    // Not due to the relay while its caller holds it.
    let leased = jobs::lease_due(&relaxed, Queue::Analytics, now, lease, 10)
        .await
        .unwrap();
    assert!(leased.is_empty(), "{leased:?}");
    // The caller died: once the lease is out, the relay hands it to the fleet, and the dead
    // caller's token no longer finishes it.
    let later = until + chrono::Duration::seconds(1);
    let leased = jobs::lease_due(&relaxed, Queue::Analytics, later, lease, 10)
        .await
        .unwrap();
    assert_eq!(
        leased.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![job.id]
    );
    let mut conn = env.pool.acquire().await.unwrap();
    let finished = jobs::Finished {
        id: job.id,
        token: held[0].token,
        outcome: jobs::Outcome::Succeeded,
    };
    assert!(
        jobs::finish(&mut conn, &[finished], later)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = jobs::claim(&relaxed, &leased, later, lease).await.unwrap();
    assert_eq!(claimed.len(), 1);
}

#[tokio::test]
async fn a_job_queued_held_and_finished_by_its_caller_never_reaches_the_relay() {
    let env = Env::new(&[]).await;
    let relaxed = shared::db::relaxed_pool(&env.settings().database, 1).unwrap();
    let now = Utc::now();
    let until = now + chrono::Duration::seconds(60);
    let job = NewJob {
        id: Uuid::new_v4(),
        queue: Queue::Analytics,
        kind: "test",
        tenant: None,
        payload: serde_json::json!({}),
        run_at: now,
        max_attempts: 3,
        test_clock: None,
    };
    let mut tx = env.pool.begin().await.unwrap();
    let held = jobs::enqueue_held(&mut tx, &[job], now, until)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let mut conn = env.pool.acquire().await.unwrap();
    let finished = jobs::Finished {
        id: held[0].id,
        token: held[0].token,
        outcome: jobs::Outcome::Succeeded,
    };
    assert_eq!(
        jobs::finish(&mut conn, &[finished], now).await.unwrap(),
        vec![held[0].id]
    );
    let later = until + chrono::Duration::seconds(1);
    assert!(
        jobs::lease_due(
            &relaxed,
            Queue::Analytics,
            later,
            Duration::from_secs(60),
            10
        )
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test]
async fn a_billing_runs_job_retried_later_leaves_the_run_which_then_completes() {
    use shared::db::billing_runs::{RunScope, RunTrigger};
    let env = Env::new(&[]).await;
    let relaxed = shared::db::relaxed_pool(&env.settings().database, 1).unwrap();
    let clock = shared::clock::SystemClock;
    let now = Utc::now();
    let tenant = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO tenants (id, company_name, slug, email, webhook_secret_enc, \
         webhook_secret_last4) VALUES ($1, 'Runs', 'runs', 'runs@example.com', '\\x00', '0000')",
    )
    .bind(tenant)
    .execute(&env.pool)
    .await
    .unwrap();
    // Two billing jobs due a minute from now: scheduled.
    let ids = [Uuid::new_v4(), Uuid::new_v4()];
    let new: Vec<NewJob> = ids
        .iter()
        .map(|id| NewJob {
            id: *id,
            queue: Queue::Renewals,
            kind: "test",
            tenant: Some((tenant, false)),
            payload: serde_json::json!({}),
            run_at: now + chrono::Duration::minutes(1),
            max_attempts: 3,
            test_clock: None,
        })
        .collect();
    let mut tx = env.pool.begin().await.unwrap();
    jobs::enqueue(&mut tx, &new, now).await.unwrap();
    tx.commit().await.unwrap();
    let state = |id: Uuid| {
        let pool = env.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(state(ids[0]).await, "scheduled");
    // Not the relay's until a run's time reaches them.
    let lease = Duration::from_secs(60);
    let later = now + chrono::Duration::minutes(2);
    assert!(
        jobs::lease_due(&relaxed, Queue::Renewals, later, lease, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let (run, queued) = shared::service::billing_runs::run(
        &env.pool,
        &clock,
        RunScope::Fleet,
        later,
        RunTrigger::Schedule,
        0,
        "test",
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(queued, 2);
    // The same tick again makes no second run.
    assert!(
        shared::service::billing_runs::run(
            &env.pool,
            &clock,
            RunScope::Fleet,
            later,
            RunTrigger::Schedule,
            0,
            "other"
        )
        .await
        .unwrap()
        .is_none()
    );
    let msgs = jobs::lease_due(&relaxed, Queue::Renewals, later, lease, 10)
        .await
        .unwrap();
    assert_eq!(msgs.len(), 2);
    let claimed = jobs::claim(&relaxed, &msgs, later, lease).await.unwrap();
    // One succeeds; the other is to be tried again in an hour.
    let outcomes: Vec<jobs::Finished> = claimed
        .iter()
        .map(|c| jobs::Finished {
            id: c.id,
            token: c.token,
            outcome: if c.id == ids[0] {
                jobs::Outcome::Succeeded
            } else {
                jobs::Outcome::Retry {
                    at: later + chrono::Duration::hours(1),
                    error: "later".into(),
                }
            },
        })
        .collect();
    let mut conn = env.pool.acquire().await.unwrap();
    jobs::finish(&mut conn, &outcomes, later).await.unwrap();
    assert_eq!(
        shared::db::billing_runs::complete_finished(&env.pool, later)
            .await
            .unwrap(),
        1
    );
    let (status, succeeded, failed): (String, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT r.status, b.succeeded, b.failed FROM billing_runs r \
         JOIN billing_run_tenants b ON b.run_id = r.id WHERE r.id = $1",
    )
    .bind(run.id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), succeeded, failed),
        ("completed", Some(1), Some(0))
    );
    // The retried job waits for the relay, outside the run.
    assert_eq!(state(ids[1]).await, "pending");
}
