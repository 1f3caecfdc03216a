//! Billing through a real worker: the first charge of a subscription, and a test clock's
//! advance that renews it month after month, with the worker's relay, Redis queues and job
//! handlers in the loop.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Api, Env, Tenant, wait_for};

const LIMIT: Duration = Duration::from_secs(60);

/// The tests that run several workers take turns, and give each a small pool: together they
/// would hold more connections than a default PostgreSQL allows (100).
static SEVERAL_WORKERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const SMALL_POOL: (&str, &str) = ("DATABASE_MAX_CONNECTIONS", "6");

/// A monthly plan at 49.00.
async fn team_plan(api: &Api, key: &str) -> Value {
    api.post(
        key,
        "/api/v1/plans",
        &json!({"name": "Team", "price_cents": 4900, "billing_interval": "month"}),
    )
    .await
    .1
}

/// A customer (`customer`: its body) with `card`, subscribed to `plan`; the subscription's id.
async fn subscribed(api: &Api, key: &str, customer: &Value, card: &str, plan: &Value) -> String {
    let (_, customer) = api.post(key, "/api/v1/customers", customer).await;
    let customer = customer["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .post(
            key,
            &format!("/api/v1/customers/{customer}/payment-methods"),
            &json!({"token": card, "exp_month": 12, "exp_year": 2040}),
        )
        .await;
    assert_eq!(status.as_u16(), 201);
    let (status, sub) = api
        .post(
            key,
            "/api/v1/subscriptions",
            &json!({"customer": customer, "items": [{"plan": plan["id"]}]}),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{sub}");
    sub["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_worker_charges_a_new_subscription_and_runs_a_test_clocks_renewals_once_each() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let tenant = api.register("billing-e2e@example.com").await;
    let key = tenant.sk_test.as_str();
    let (_, clock) = api
        .post(
            key,
            "/api/v1/test-clocks",
            &json!({"frozen_time": "2026-01-31T12:00:00Z"}),
        )
        .await;
    let clock = clock["id"].as_str().unwrap().to_owned();
    let plan = team_plan(&api, key).await;
    let mut subs = Vec::new();
    for on_clock in [false, true] {
        let body = if on_clock {
            json!({"name": "On a clock", "test_clock": clock})
        } else {
            json!({"name": "Real time"})
        };
        subs.push(subscribed(&api, key, &body, "4242424242424242", &plan).await);
    }
    let worker = env.worker().await;
    let status = |id: String| {
        let api = &api;
        async move {
            api.get(key, &format!("/api/v1/subscriptions/{id}")).await["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    wait_for("the real-time subscription to be paid", LIMIT, || async {
        status(subs[0].clone()).await == "active"
    })
    .await;
    // The clock's subscription waits for its clock, whatever real time says: its charge was
    // due as early as the other one's, and it was not relayed.
    assert_eq!(status(subs[1].clone()).await, "incomplete");
    let waiting = env
        .scalar(
            "SELECT count(*) FROM jobs WHERE test_clock_id IS NOT NULL AND state = 'pending' \
             AND lease_token IS NULL AND attempts = 0",
        )
        .await;
    assert_eq!(
        waiting, 3,
        "pay, expire and renew wait for the clock, never leased"
    );

    let (code, _) = api
        .post(
            key,
            &format!("/api/v1/test-clocks/{clock}/advance"),
            &json!({"frozen_time": "2026-07-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(code.as_u16(), 202);
    wait_for("the clock to be ready", LIMIT, || async {
        api.get(key, &format!("/api/v1/test-clocks/{clock}")).await["status"] == "ready"
    })
    .await;
    let invoices: Value = api
        .get(
            key,
            &format!("/api/v1/invoices?subscription={}&limit=100", subs[1]),
        )
        .await;
    let invoices = invoices["data"].as_array().unwrap();
    // 31 Jan, 28 Feb, 31 Mar, 30 Apr, 31 May, 30 Jun.
    assert_eq!(invoices.len(), 6, "{invoices:?}");
    assert!(invoices.iter().all(|i| i["status"] == "paid"));
    let charged = env
        .scalar(&format!(
            "SELECT count(*) FROM payments p JOIN invoices i ON i.id = p.invoice_id \
             WHERE p.status = 'succeeded' AND i.subscription_id = '{}'",
            shared::ids::SubscriptionId::parse(&subs[1])
                .unwrap()
                .as_uuid()
        ))
        .await;
    assert_eq!(charged, 6, "one charge per invoice");
    assert_eq!(status(subs[1].clone()).await, "active");
    worker.stop().await;
}

#[tokio::test]
async fn the_worker_renews_and_charges_due_subscriptions_in_batches_each_once_in_number_order() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let tenant = api.register("batches-e2e@example.com").await;
    let key = tenant.sk_test.as_str();
    let plan = team_plan(&api, key).await;
    let price = shared::ids::PriceId::parse(plan["price_id"].as_str().unwrap()).unwrap();
    let scope = env.scope(&tenant).await;
    // 120 due renewals; every tenth card is declined.
    let n = 120;
    let ended =
        chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0) - chrono::Duration::seconds(1);
    let subs = bench::due_subscriptions(
        &env.pool,
        scope.tenant_id().as_uuid(),
        price.as_uuid(),
        n,
        ended,
        |i| {
            if i % 10 == 9 {
                "pm_card_chargeDeclined"
            } else {
                "pm_card_visa"
            }
        },
    )
    .await
    .unwrap();
    let mut jobs = bench::renewal_jobs(scope, &subs, ended);
    // Among them, one that runs before its time (another host's clock behind): it fails and
    // comes back, without holding back the renewals batched with it.
    let early = bench::due_subscriptions(
        &env.pool,
        scope.tenant_id().as_uuid(),
        price.as_uuid(),
        1,
        ended + chrono::Duration::days(30),
        |_| "pm_card_visa",
    )
    .await
    .unwrap();
    jobs.insert(
        n / 2,
        shared::jobs::Job::RenewSubscription {
            subscription: shared::ids::SubscriptionId::from_uuid(early[0]),
            period_start: ended + chrono::Duration::days(30),
        }
        .to_new(Some(scope), ended),
    );
    let mut tx = env.pool.begin().await.unwrap();
    shared::jobs::enqueue(&mut tx, &jobs, chrono::Utc::now())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let worker = env.worker().await;
    wait_for("every renewal invoiced and charged", LIMIT, || async {
        env.scalar(
            "SELECT count(*) FROM payments p JOIN invoices i ON i.id = p.invoice_id \
             WHERE i.billing_reason = 'subscription_cycle' AND p.status <> 'pending'",
        )
        .await
            == n as i64
    })
    .await;
    // Most ran in batches that succeeded together; the batch with the early renewal did not.
    let batched = worker
        .rt
        .metrics
        .batched
        .load(std::sync::atomic::Ordering::Relaxed);
    let failed = worker
        .rt
        .metrics
        .batch_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    let at_once = worker
        .rt
        .metrics
        .run_at_once
        .load(std::sync::atomic::Ordering::Relaxed);
    worker.stop().await;
    assert!(batched > 0, "no batch succeeded");
    assert!(failed >= 1, "the batch with the early renewal failed");
    // The renewals batched together had their charges run at once by the worker, the others
    // through the relay; either way each charge job ran once, and succeeded.
    assert!(at_once > 0, "no charge was run at once");
    assert!(
        at_once < n as u64,
        "the failed batch's charges went through the relay"
    );
    let charge_runs: Vec<(String, i32)> = sqlx::query_as(
        "SELECT state, attempts FROM jobs WHERE kind = 'invoice.pay' \
         AND payload->>'attempt' = '1'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(charge_runs.len(), n);
    assert!(
        charge_runs
            .iter()
            .all(|r| r == &("succeeded".to_owned(), 1)),
        "{charge_runs:?}"
    );
    // The declined ones are retried by the default dunning policy, 3 days later.
    let retries: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT state, run_at FROM jobs WHERE kind = 'invoice.pay' \
         AND payload->>'attempt' = '2'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(retries.len(), 12);
    let soon = chrono::Utc::now() + chrono::Duration::days(3);
    for (state, run_at) in &retries {
        // Waiting for the billing run of their time.
        assert_eq!(state, "scheduled");
        assert!(
            (*run_at - soon).num_minutes().abs() < 10,
            "{run_at} is not 3 days after the decline"
        );
    }

    assert_eq!(
        env.scalar("SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle'")
            .await,
        n as i64
    );
    // One charge per invoice: the declined ones failed once, the others were paid.
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM (SELECT invoice_id FROM payments GROUP BY invoice_id \
             HAVING count(*) > 1) x"
        )
        .await,
        0
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM invoices WHERE status = 'paid'")
            .await,
        n as i64 - 12
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM subscriptions WHERE status = 'past_due'")
            .await,
        12
    );
    // Numbers 1..=n, with no gap and none twice, and the events say the same.
    let numbers: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT id, number FROM invoices ORDER BY number")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let in_events: std::collections::HashMap<String, String> = sqlx::query_as(
        "SELECT data->'object'->>'id', data->'object'->>'number' FROM events \
         WHERE type = 'invoice.finalized'",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(numbers.len(), n);
    assert_eq!(in_events.len(), n, "one finalized event per invoice");
    for (i, (id, number)) in numbers.iter().enumerate() {
        assert!(number.ends_with(&format!("-{:06}", i + 1)), "{number}");
        let id = shared::ids::InvoiceId::from_uuid(*id).to_string();
        assert_eq!(Some(number), in_events.get(&id), "{id}");
    }
    // The early renewal made nothing and is waiting to run again.
    let (state, attempts): (String, i32) = sqlx::query_as(
        "SELECT state, attempts FROM jobs WHERE kind = 'subscription.renew' \
         AND payload->>'subscription_id' = $1",
    )
    .bind(shared::ids::SubscriptionId::from_uuid(early[0]).to_string())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(state, "pending");
    assert!(attempts >= 1, "{attempts}");
    assert_eq!(
        env.scalar(&format!(
            "SELECT count(*) FROM invoices WHERE subscription_id = '{}'",
            early[0]
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn an_incomplete_subscription_whose_payment_is_in_flight_is_not_expired_and_its_check_waits()
{
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let tenant = api.register("in-flight-e2e@example.com").await;
    let key = tenant.sk_test.as_str();
    let plan = team_plan(&api, key).await;
    // A card that needs the customer to authenticate: the first charge waits for them.
    let sub = subscribed(
        &api,
        key,
        &json!({"name": "3-D Secure"}),
        "4000002500003155",
        &plan,
    )
    .await;
    let worker = env.worker().await;
    wait_for(
        "the first charge to wait for the customer",
        LIMIT,
        || async {
            env.scalar("SELECT count(*) FROM payments WHERE status = 'requires_action'")
                .await
                == 1
        },
    )
    .await;
    // 23 hours pass with the customer still to act: the expiry check comes due.
    sqlx::query("UPDATE subscriptions SET created_at = created_at - interval '1 day'")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE jobs SET run_at = now() WHERE kind = 'subscription.expire_incomplete' \
         AND state = 'scheduled'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    wait_for("the expiry check to run and wait", LIMIT, || async {
        env.scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'subscription.expire_incomplete' \
             AND state = 'pending' AND run_at > now() + interval '50 minutes'",
        )
        .await
            == 1
    })
    .await;
    worker.stop().await;
    // Not a failure: no attempt used, nothing dead; the subscription and its invoice wait for
    // the payment's outcome.
    assert_eq!(
        env.scalar(
            "SELECT attempts::bigint FROM jobs WHERE kind = 'subscription.expire_incomplete'"
        )
        .await,
        0
    );
    assert_eq!(
        api.get(key, &format!("/api/v1/subscriptions/{sub}")).await["status"],
        "incomplete"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM invoices WHERE status = 'open'")
            .await,
        1
    );
}

#[tokio::test]
async fn three_workers_make_one_billing_run_per_tick_and_renew_each_due_subscription_once() {
    let _turn = SEVERAL_WORKERS.lock().await;
    let env = Env::new(&[SMALL_POOL]).await;
    let api = env.api().await;
    // 90 periods that end 3 seconds from now: their renewals wait, scheduled.
    let n = 90;
    let due_at =
        chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0) + chrono::Duration::seconds(3);
    let tenant = due_renewals(&env, &api, "runs-e2e@example.com", n, due_at).await;
    let key = tenant.sk_test.as_str();
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state = 'scheduled'")
            .await,
        n as i64
    );
    // Three workers, each running the schedule (a tick every second).
    let workers = [env.worker().await, env.worker().await, env.worker().await];
    wait_for("every due renewal invoiced and paid", LIMIT, || async {
        renewals_paid(&env).await == n
    })
    .await;
    let rts: Vec<_> = workers.iter().map(|w| w.rt.clone()).collect();
    for w in workers {
        w.stop().await;
    }
    let made: u64 = rts
        .iter()
        .map(|rt| {
            rt.metrics
                .billing_runs
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    // One renewal and one charge per subscription.
    assert_eq!(
        env.scalar("SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle'")
            .await,
        n as i64
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM payments WHERE status = 'succeeded'")
            .await,
        n as i64
    );
    // One run queued them all: the tick's, made by one of the three.
    assert_eq!(
        env.scalar(
            "SELECT count(DISTINCT billing_run_id) FROM jobs WHERE kind = 'subscription.renew' \
             AND billing_run_id IS NOT NULL"
        )
        .await,
        1
    );
    // Every tick made one run, by one process: the runs the workers made (each counted by the
    // one that made it) are the rows there are, each tick once.
    let runs = env
        .scalar("SELECT count(*) FROM billing_runs WHERE status <> 'running'")
        .await;
    assert!(runs >= 1, "no run in a few seconds of ticks");
    assert_eq!(made as i64, runs, "{made} runs made for {runs} ticks");
    assert_eq!(
        env.scalar("SELECT count(*) FROM (SELECT scheduled_for FROM billing_runs GROUP BY 1 HAVING count(*) > 1) x")
            .await,
        0
    );
    // The tenant sees the run that found its renewals due.
    let list = api.get(key, "/api/v1/billing-runs").await;
    let found: Vec<&Value> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["due"] == json!(n))
        .collect();
    assert_eq!(found.len(), 1, "{list}");
    assert_eq!(found[0]["enqueued"], json!(n));
    assert_eq!(found[0]["trigger"], "schedule");
}

/// Renewals in the chaos test (`CHAOS_RENEWALS`; 10,000 makes the long run).
fn chaos_renewals() -> usize {
    std::env::var("CHAOS_RENEWALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// `n` subscriptions of a new tenant whose periods end at `ended`, their renewals waiting for
/// the billing run of a tick at or after it, as the schedule leaves them. Returns the tenant.
async fn due_renewals(
    env: &Env,
    api: &Api,
    email: &str,
    n: usize,
    ended: chrono::DateTime<chrono::Utc>,
) -> Tenant {
    let tenant = api.register(email).await;
    let key = tenant.sk_test.as_str();
    let plan = team_plan(api, key).await;
    let price = shared::ids::PriceId::parse(plan["price_id"].as_str().unwrap()).unwrap();
    let scope = env.scope(&tenant).await;
    let subs = bench::due_subscriptions(
        &env.pool,
        scope.tenant_id().as_uuid(),
        price.as_uuid(),
        n,
        ended,
        |_| "pm_card_visa",
    )
    .await
    .unwrap();
    let jobs = bench::renewal_jobs(scope, &subs, ended);
    let mut tx = env.pool.begin().await.unwrap();
    for chunk in jobs.chunks(5_000) {
        shared::jobs::enqueue(&mut tx, chunk, chrono::Utc::now())
            .await
            .unwrap();
    }
    // Due already, they wait too (queued when due later, they are scheduled as they are).
    if ended <= chrono::Utc::now() {
        sqlx::query("UPDATE jobs SET state = 'scheduled' WHERE kind = 'subscription.renew'")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    tenant
}

/// A period end that has just passed, in whole seconds as periods are.
fn just_ended() -> chrono::DateTime<chrono::Utc> {
    chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0) - chrono::Duration::seconds(1)
}

async fn renewals_paid(env: &Env) -> usize {
    env.scalar(
        "SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle' \
         AND status = 'paid'",
    )
    .await as usize
}

/// Exactly once: one invoice per subscription and period, one successful charge per invoice
/// with its own idempotency key and no attempt beyond it, numbers 1..=n (none lost to a
/// crash, none taken twice), nothing dead.
async fn assert_billed_once(env: &Env, n: usize) {
    assert_eq!(
        env.scalar("SELECT count(*) FROM invoices WHERE billing_reason = 'subscription_cycle'")
            .await,
        n as i64
    );
    assert_eq!(
        env.scalar(
            "SELECT count(DISTINCT subscription_id) FROM invoices \
             WHERE billing_reason = 'subscription_cycle'"
        )
        .await,
        n as i64
    );
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM payments p JOIN invoices i ON i.id = p.invoice_id \
             WHERE i.billing_reason = 'subscription_cycle'"
        )
        .await,
        n as i64,
        "one attempt per invoice"
    );
    assert_eq!(
        env.scalar(
            "SELECT count(DISTINCT idempotency_key) FROM payments WHERE status = 'succeeded'"
        )
        .await,
        n as i64
    );
    assert_eq!(
        env.scalar("SELECT count(DISTINCT number) FROM invoices")
            .await,
        n as i64
    );
    assert_eq!(
        env.scalar("SELECT max(substring(number from '[0-9]+$')::bigint) FROM invoices")
            .await,
        n as i64
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state = 'dead'")
            .await,
        0
    );
}

#[tokio::test]
async fn due_renewals_are_invoiced_and_charged_exactly_once_while_a_worker_is_killed_every_2_seconds()
 {
    let _turn = SEVERAL_WORKERS.lock().await;
    let env = Env::new(&[("JOB_LEASE_SECONDS", "3"), SMALL_POOL]).await;
    let api = env.api().await;
    let n = chaos_renewals();
    due_renewals(&env, &api, "chaos-e2e@example.com", n, just_ended()).await;
    // Three worker processes; every 2 seconds one of them is killed (SIGKILL) and started
    // again, until every renewal is paid.
    let mut workers: Vec<std::process::Child> = (0..3)
        .map(|_| env.worker_process(crate::helpers::free_port()))
        .collect();
    let started = std::time::Instant::now();
    let mut kills = 0;
    while renewals_paid(&env).await < n {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {} of {n} paid after 10 minutes",
            renewals_paid(&env).await
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let victim = kills % workers.len();
        let pid = workers[victim].id();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        workers[victim].wait().unwrap();
        workers[victim] = env.worker_process(crate::helpers::free_port());
        kills += 1;
    }
    stop(&mut workers);
    assert!(kills >= 1, "no worker was killed while the renewals ran");
    assert_billed_once(&env, n).await;
}

/// `n` due renewals of a new tenant (`email`), and two worker processes renewing them, once
/// 200 are paid.
async fn run_under_way(email: &str, n: usize) -> (Env, Vec<std::process::Child>) {
    let env = Env::new(&[("JOB_LEASE_SECONDS", "3"), SMALL_POOL]).await;
    let api = env.api().await;
    due_renewals(&env, &api, email, n, just_ended()).await;
    let workers: Vec<std::process::Child> = (0..2)
        .map(|_| env.worker_process(crate::helpers::free_port()))
        .collect();
    wait_for("the run to get going", LIMIT, || async {
        renewals_paid(&env).await >= 200
    })
    .await;
    (env, workers)
}

/// Stops worker processes as a deploy does (SIGTERM) and waits for each to exit.
fn stop(workers: &mut [std::process::Child]) {
    for w in workers {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
        w.wait().unwrap();
    }
}

#[tokio::test]
async fn redis_flushed_in_the_middle_of_a_billing_run_leaves_the_same_counts() {
    let _turn = SEVERAL_WORKERS.lock().await;
    let n = 3_000;
    let (env, mut workers) = run_under_way("flush-e2e@example.com", n).await;
    let flushed = env.flush_redis().await;
    let at_flush = renewals_paid(&env).await;
    assert!(at_flush < n, "the flush came too late to test anything");
    assert!(flushed > 0, "Redis held nothing to flush");
    wait_for(
        "every renewal paid after the flush",
        Duration::from_secs(300),
        || async { renewals_paid(&env).await == n },
    )
    .await;
    stop(&mut workers);
    assert_billed_once(&env, n).await;
}

#[tokio::test]
async fn postgresql_restarted_in_the_middle_of_a_billing_run_the_workers_reconnect_and_finish_it() {
    let _turn = SEVERAL_WORKERS.lock().await;
    let n = 3_000;
    let (env, mut workers) = run_under_way("pg-restart-e2e@example.com", n).await;
    // Every connection cut, none accepted for 5 seconds, then PostgreSQL is back.
    let cut = env.restart_database(Duration::from_secs(5)).await;
    let at_restart = renewals_paid(&env).await;
    assert!(cut > 0, "no connection was open to cut");
    assert!(at_restart < n, "the restart came too late to test anything");
    wait_for(
        "every renewal paid after the restart",
        Duration::from_secs(300),
        || async { renewals_paid(&env).await == n },
    )
    .await;
    // The same processes finished it: none exited on the way.
    for w in &mut workers {
        assert!(
            w.try_wait().unwrap().is_none(),
            "a worker exited when PostgreSQL went away"
        );
    }
    stop(&mut workers);
    assert_billed_once(&env, n).await;
}
