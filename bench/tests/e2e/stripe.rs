//! Stripe Connect onboarding, catalog sync through the worker fleet, and Stripe's incoming
//! webhooks — against the recording stand-in (`stripe_fake`) and, for products, `localstripe`.

use std::{collections::HashMap, time::Duration};

use reqwest::Method;
use serde_json::{Value, json};
use shared::payments::ChargeOutcome;

use crate::{
    helpers::{Api, Env, Tenant, wait_for},
    stripe_fake::StripeFake,
};

const LIMIT: Duration = Duration::from_secs(30);
const WEBHOOK_SECRET: &str = "whsec_stripe_test_secret";

async fn stripe_env(fake: &StripeFake, extra: &[(&str, &str)]) -> Env {
    let url = fake.url();
    let mut vars: Vec<(&str, &str)> = vec![
        ("STRIPE_SECRET_KEY_TEST", "sk_test_platform"),
        ("STRIPE_API_BASE", &url),
        ("STRIPE_WEBHOOK_SECRETS", WEBHOOK_SECRET),
        ("JOB_BACKOFF_BASE_MS", "200"),
        ("PUBLIC_URL", "https://billing.example.com"),
    ];
    vars.extend_from_slice(extra);
    Env::new(&vars).await
}

/// Runs onboarding to the end: connect, the tenant completes it at Stripe, the browser comes
/// back with the state. Returns the account id.
async fn connect(api: &Api, fake: &StripeFake, tenant: &Tenant) -> String {
    let (status, link) = api
        .send(
            Method::POST,
            Some(&tenant.owner),
            "/api/v1/auth/tenants/stripe/connect/",
            None,
        )
        .await;
    assert_eq!(status, 200, "{link}");
    let account = link["account_id"].as_str().unwrap().to_owned();
    assert!(link["url"].as_str().unwrap().contains(&account));
    fake.complete_onboarding(&account);
    let state = link["state"].as_str().unwrap();
    let (status, back) = api
        .send(
            Method::GET,
            None,
            &format!("/api/v1/auth/tenants/stripe/callback/?state={state}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{back}");
    assert_eq!(back["connected"], true);
    assert_eq!(back["account_id"], account.as_str());
    account
}

async fn create_plan(api: &Api, tenant: &Tenant, name: &str) -> Value {
    let (status, plan) = api
        .post(
            &tenant.sk_test,
            "/api/v1/plans",
            &json!({"name": name, "price_cents": 2999, "billing_interval": "month",
                    "features": ["SSO"], "metadata": {"team": "growth"}}),
        )
        .await;
    assert_eq!(status, 201, "{plan}");
    plan
}

async fn plan_when(api: &Api, tenant: &Tenant, id: &str, status: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let plan = api
            .get(&tenant.sk_test, &format!("/api/v1/plans/{id}"))
            .await;
        if plan["sync_status"] == status {
            return plan;
        }
        assert!(
            started.elapsed() < LIMIT,
            "plan {id} is still {} after {LIMIT:?}: {plan}",
            plan["sync_status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_plan_syncs_to_a_product_and_price_on_the_connected_account_with_idempotency_keys() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("sync@example.com").await;
    let account = connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;

    let plan = create_plan(&api, &tenant, "Pro").await;
    // The API answers without waiting on Stripe.
    assert_eq!(plan["sync_status"], "pending");
    let id = plan["id"].as_str().unwrap();
    let synced = plan_when(&api, &tenant, id, "synced").await;

    let products = fake.done("POST", "/v1/products");
    assert_eq!(products.len(), 1);
    let p = &products[0];
    assert_eq!(p.account.as_deref(), Some(account.as_str()));
    assert_eq!(
        p.idempotency_key.as_deref(),
        Some(format!("{id}-product").as_str())
    );
    assert_eq!(p.form["name"], "Pro");
    assert_eq!(p.form["metadata[platform_plan_id]"], id);
    assert_eq!(p.form["metadata[team]"], "growth");
    let prices = fake.done("POST", "/v1/prices");
    assert_eq!(prices.len(), 1);
    let pr = &prices[0];
    assert_eq!(pr.account.as_deref(), Some(account.as_str()));
    assert_eq!(
        pr.idempotency_key.as_deref(),
        Some(format!("{id}-price").as_str())
    );
    assert_eq!(pr.form["currency"], "usd");
    assert_eq!(pr.form["unit_amount"], "2999");
    assert_eq!(pr.form["recurring[interval]"], "month");
    assert_eq!(pr.form["recurring[interval_count]"], "1");
    assert_eq!(
        pr.form["product"],
        synced["stripe_product_id"].as_str().unwrap()
    );
    assert!(
        synced["stripe_price_id"]
            .as_str()
            .unwrap()
            .starts_with("price_fake")
    );
    assert!(synced["sync_error"].is_null());
    worker.stop().await;
}

#[tokio::test]
async fn a_stripe_that_is_down_leaves_the_plan_failed_then_synced_with_no_duplicate_objects() {
    let mut fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("down@example.com").await;
    connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;

    fake.stop().await;
    let plan = create_plan(&api, &tenant, "Team").await;
    let id = plan["id"].as_str().unwrap();
    let failed = plan_when(&api, &tenant, id, "failed").await;
    assert!(
        failed["sync_error"].as_str().unwrap().contains("Stripe"),
        "{failed}"
    );
    fake.restart().await;
    plan_when(&api, &tenant, id, "synced").await;
    assert_eq!(fake.objects("prod_"), 1);
    assert_eq!(fake.objects("price_"), 1);
    worker.stop().await;
}

#[tokio::test]
async fn an_answer_lost_after_stripe_acted_is_retried_with_the_same_key_and_creates_nothing_twice()
{
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("lost@example.com").await;
    connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;

    fake.fail_after(2);
    let plan = create_plan(&api, &tenant, "Scale").await;
    let id = plan["id"].as_str().unwrap();
    plan_when(&api, &tenant, id, "synced").await;
    assert_eq!(fake.objects("prod_"), 1, "one product however often asked");
    assert_eq!(fake.objects("price_"), 1);
    let replays = fake.requests().into_iter().filter(|r| r.replayed).count();
    assert!(replays >= 1, "the retry reused the idempotency key");
    worker.stop().await;
}

#[tokio::test]
async fn stripes_429_is_back_pressure_and_does_not_count_as_a_failed_attempt() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("limited@example.com").await;
    connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;

    fake.rate_limit(3);
    let plan = create_plan(&api, &tenant, "Busy").await;
    let id = plan["id"].as_str().unwrap();
    plan_when(&api, &tenant, id, "synced").await;
    let throttled = fake.requests().iter().filter(|r| r.status == 429).count();
    assert_eq!(throttled, 3);
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM jobs WHERE queue = 'stripe_sync'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "only the successful run counts");
    worker.stop().await;
}

#[tokio::test]
async fn the_per_account_rate_limit_holds_across_many_syncs() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[("STRIPE_RATE_LIMIT_TEST", "4")]).await;
    let api = env.api().await;
    let tenant = api.register("ratelimit@example.com").await;
    let account = connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;

    for i in 0..6 {
        create_plan(&api, &tenant, &format!("Plan {i}")).await;
    }
    wait_for("six synced plans", Duration::from_secs(60), || async {
        env.scalar("SELECT count(*) FROM plans WHERE sync_status = 'synced'")
            .await
            == 6
    })
    .await;
    // Calls per second of the limiter's windows, as far as arrival times tell: a call let
    // through at the very end of a second may arrive just after it, so one arriving in the
    // first 100 ms of a second counts in the previous one when that one has room.
    let mut arrivals: Vec<u128> = fake
        .requests()
        .iter()
        .filter(|r| r.account.as_deref() == Some(account.as_str()))
        .map(|r| r.at_ms)
        .collect();
    arrivals.sort_unstable();
    let mut per_second: HashMap<u128, usize> = HashMap::new();
    for at in arrivals {
        let second = at / 1000;
        let previous = second.saturating_sub(1);
        if at % 1000 < 100 && per_second.get(&previous).copied().unwrap_or(0) < 4 {
            *per_second.entry(previous).or_default() += 1;
        } else {
            *per_second.entry(second).or_default() += 1;
        }
    }
    assert_eq!(per_second.values().sum::<usize>(), 12, "two calls per plan");
    assert!(
        per_second.values().all(|n| *n <= 4),
        "more than 4 calls in one second: {per_second:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn deactivating_a_plan_archives_its_product_and_price_in_stripe() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("archive@example.com").await;
    connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;
    let plan = create_plan(&api, &tenant, "Legacy").await;
    let id = plan["id"].as_str().unwrap();
    let synced = plan_when(&api, &tenant, id, "synced").await;

    let (status, gone) = api
        .send(
            Method::DELETE,
            Some(&tenant.sk_test),
            &format!("/api/v1/auth/plans/{id}/"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{gone}");
    assert_eq!(gone["is_active"], false);
    wait_for("the archival to reach Stripe", LIMIT, || async {
        let product = synced["stripe_product_id"].as_str().unwrap();
        let price = synced["stripe_price_id"].as_str().unwrap();
        let p = fake.done("POST", &format!("/v1/products/{product}"));
        let q = fake.done("POST", &format!("/v1/prices/{price}"));
        p.iter()
            .any(|r| r.form.get("active").map(String::as_str) == Some("false"))
            && q.iter()
                .any(|r| r.form.get("active").map(String::as_str) == Some("false"))
    })
    .await;
    plan_when(&api, &tenant, id, "synced").await;
    worker.stop().await;
}

#[tokio::test]
async fn a_tiered_price_syncs_with_its_tiers_and_a_metered_one_is_left_to_the_platform() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("tiers@example.com").await;
    connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;
    let (status, product) = api
        .post(
            &tenant.sk_test,
            "/api/v1/products",
            &json!({"name": "API", "code": "api"}),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let pid = product["id"].as_str().unwrap();
    let (status, tiered) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/products/{pid}/prices"),
            &json!({"currency": "usd", "recurring": {"interval": "quarter"},
                    "pricing": {"type": "graduated", "tiers": [
                        {"up_to": 10, "unit_amount": 100, "flat_amount": 500},
                        {"unit_amount": 80}]}}),
        )
        .await;
    assert_eq!(status, 201, "{tiered}");
    let (status, metric) = api
        .post(
            &tenant.sk_test,
            "/api/v1/billable-metrics",
            &json!({"code": "api_calls", "name": "API calls", "aggregation": "sum",
                    "field_name": "calls"}),
        )
        .await;
    assert_eq!(status, 201, "{metric}");
    let (status, metered) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/products/{pid}/prices"),
            &json!({"currency": "usd", "recurring": {"interval": "month"},
                    "pricing": {"type": "per_unit", "unit_amount": 2},
                    "usage": {"metric": "api_calls", "aggregation": "sum"}}),
        )
        .await;
    assert_eq!(status, 201, "{metered}");
    let tiered_id = tiered["id"].as_str().unwrap().to_owned();
    let metered_id = metered["id"].as_str().unwrap().to_owned();
    wait_for("both prices settled", LIMIT, || async {
        let t = api
            .get(&tenant.sk_test, &format!("/api/v1/prices/{tiered_id}"))
            .await;
        let m = api
            .get(&tenant.sk_test, &format!("/api/v1/prices/{metered_id}"))
            .await;
        t["sync_status"] == "synced" && m["sync_status"] == "not_synced"
    })
    .await;
    let prices = fake.done("POST", "/v1/prices");
    assert_eq!(prices.len(), 1);
    let f = &prices[0].form;
    assert_eq!(f["billing_scheme"], "tiered");
    assert_eq!(f["tiers_mode"], "graduated");
    assert_eq!(f["tiers[0][up_to]"], "10");
    assert_eq!(f["tiers[0][unit_amount]"], "100");
    assert_eq!(f["tiers[0][flat_amount]"], "500");
    assert_eq!(f["tiers[1][up_to]"], "inf");
    assert_eq!(f["recurring[interval]"], "month");
    assert_eq!(
        f["recurring[interval_count]"], "3",
        "a quarter is three months"
    );
    let m = api
        .get(&tenant.sk_test, &format!("/api/v1/prices/{metered_id}"))
        .await;
    assert!(m["sync_error"].as_str().unwrap().contains("metered"));
    // The product went first, once.
    assert_eq!(fake.done("POST", "/v1/products").len(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn a_catalog_made_before_connecting_syncs_once_the_account_is_connected() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("later@example.com").await;
    let worker = env.worker().await;
    let plan = create_plan(&api, &tenant, "Early").await;
    assert_eq!(plan["sync_status"], "not_synced");
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE queue = 'stripe_sync'")
            .await,
        0
    );

    connect(&api, &fake, &tenant).await;
    plan_when(&api, &tenant, plan["id"].as_str().unwrap(), "synced").await;
    worker.stop().await;
}

#[tokio::test]
async fn onboarding_state_works_once_and_forged_or_reused_states_are_refused() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("state@example.com").await;
    let (status, link) = api
        .send(
            Method::GET,
            Some(&tenant.owner),
            "/api/v1/auth/tenants/stripe/connect",
            None,
        )
        .await;
    assert_eq!(status, 200, "{link}");
    let state = link["state"].as_str().unwrap().to_owned();
    let account = link["account_id"].as_str().unwrap().to_owned();
    assert_eq!(fake.done("POST", "/v1/accounts").len(), 1);
    let link_req = &fake.done("POST", "/v1/account_links")[0];
    assert_eq!(link_req.form["account"], account);
    assert_eq!(link_req.form["type"], "account_onboarding");
    assert!(
        link_req.form["return_url"]
            .starts_with("https://billing.example.com/api/v1/auth/tenants/stripe/callback?state=")
    );

    let callback = |s: String| {
        let api = &api;
        async move {
            api.send(
                Method::GET,
                None,
                &format!("/api/v1/auth/tenants/stripe/callback?state={s}"),
                None,
            )
            .await
        }
    };
    let flipped = if state.ends_with('0') { '1' } else { '0' };
    let tampered = format!("{}{flipped}", &state[..state.len() - 1]);
    let (status, body) = callback(tampered).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "state");
    // Onboarding not finished at Stripe yet: still onboarding.
    let (status, body) = callback(state.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "onboarding");
    assert_eq!(body["connected"], false);
    let (status, _) = callback(state).await;
    assert_eq!(status, 400, "a state works once");

    // Connecting again reuses the account.
    let (_, again) = api
        .send(
            Method::POST,
            Some(&tenant.owner),
            "/api/v1/auth/tenants/stripe/connect",
            None,
        )
        .await;
    assert_eq!(again["account_id"], account.as_str());
    assert_eq!(fake.done("POST", "/v1/accounts").len(), 1);
    let status = api
        .get(&tenant.sk_test, "/api/v1/auth/tenants/stripe/status/")
        .await;
    assert_eq!(status["status"], "onboarding");
    assert_eq!(status["account_id"], account.as_str());
}

#[tokio::test]
async fn only_owners_and_admins_connect_and_disconnecting_needs_confirmation() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("perm@example.com").await;
    let (status, body) = api
        .send(
            Method::POST,
            Some(&tenant.sk_test),
            "/api/v1/auth/tenants/stripe/connect",
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(fake.requests().len(), 0, "nothing reached Stripe");
    let account = connect(&api, &fake, &tenant).await;
    let (status, body) = api
        .send(
            Method::DELETE,
            Some(&tenant.owner),
            "/api/v1/auth/tenants/stripe/disconnect/",
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "confirm");
    let (status, body) = api
        .send(
            Method::DELETE,
            Some(&tenant.owner),
            "/api/v1/auth/tenants/stripe/disconnect/?confirm=true",
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "disconnected");
    assert_eq!(body["connected"], false);
    let details = api
        .get(&tenant.sk_test, "/api/v1/auth/tenants/details")
        .await;
    assert_eq!(details["tenant"]["stripe_connect_status"], "disconnected");
    // Nothing is synced without an account.
    let plan = create_plan(&api, &tenant, "Offline").await;
    assert_eq!(plan["sync_status"], "not_synced");
    let _ = account;
}

/// A Stripe event, signed as Stripe signs it.
async fn deliver(api: &Api, path: &str, event: &Value, timestamp: i64) -> (u16, Value) {
    let body = event.to_string();
    let signature = shared::stripe::webhook::sign(WEBHOOK_SECRET, timestamp, body.as_bytes());
    let resp = api
        .client
        .post(api.url(path))
        .header("content-type", "application/json")
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn account_updated(id: &str, account: &str, created: i64, charges: bool) -> Value {
    json!({
        "id": id, "object": "event", "type": "account.updated", "created": created,
        "livemode": false, "account": account,
        "data": {"object": {"id": account, "object": "account", "charges_enabled": charges,
                            "payouts_enabled": charges, "details_submitted": true,
                            "requirements": {"currently_due": []}}}
    })
}

#[tokio::test]
async fn stripe_events_are_verified_stored_once_and_applied_in_order_of_creation() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("events@example.com").await;
    let account = connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;
    let now = chrono::Utc::now().timestamp();

    // Charges get disabled (an event after onboarding ended)…
    let newer = account_updated("evt_newer", &account, now + 5, false);
    let (status, body) = deliver(&api, "/webhooks/stripe", &newer, now).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(false)),
        "{body}"
    );
    // …delivered twice: stored once.
    let (status, body) = deliver(&api, "/webhooks/stripe/connect/", &newer, now).await;
    assert_eq!(
        (status, body["duplicate"].clone()),
        (200, json!(true)),
        "{body}"
    );
    wait_for("the event to be processed", LIMIT, || async {
        env.scalar("SELECT count(*) FROM stripe_events WHERE outcome = 'applied'")
            .await
            == 1
    })
    .await;
    let status = api
        .get(&tenant.sk_test, "/api/v1/auth/tenants/stripe/status")
        .await;
    assert_eq!(status["charges_enabled"], false);

    // An older event arriving late does not undo it.
    let older = account_updated("evt_older", &account, now - 60, true);
    let (status, _) = deliver(&api, "/api/subscriptions/webhooks/stripe/", &older, now).await;
    assert_eq!(status, 200);
    wait_for("the late event to be processed", LIMIT, || async {
        env.scalar("SELECT count(*) FROM stripe_events WHERE outcome LIKE 'stale%'")
            .await
            == 1
    })
    .await;
    let status = api
        .get(&tenant.sk_test, "/api/v1/auth/tenants/stripe/status")
        .await;
    assert_eq!(status["charges_enabled"], false);
    assert_eq!(env.scalar("SELECT count(*) FROM stripe_events").await, 2);

    // One in the same second as the last description: which came first is unknowable, so the
    // account is read afresh from Stripe (which says charges are enabled).
    let tie = account_updated("evt_tie", &account, now + 5, false);
    deliver(&api, "/webhooks/stripe", &tie, now).await;
    wait_for("the tied event to be processed", LIMIT, || async {
        env.scalar("SELECT count(*) FROM stripe_events WHERE outcome = 'applied: read afresh'")
            .await
            == 1
    })
    .await;
    let status = api
        .get(&tenant.sk_test, "/api/v1/auth/tenants/stripe/status")
        .await;
    assert_eq!(
        status["charges_enabled"], true,
        "Stripe's own answer, not the event's"
    );

    // Events about objects the platform does not keep are stored and left alone.
    let other = json!({"id": "evt_pi", "object": "event", "type": "payment_intent.succeeded",
                       "created": now, "livemode": false, "data": {"object": {"id": "pi_1"}}});
    deliver(&api, "/webhooks/stripe/payment", &other, now).await;
    wait_for("the ignored event", LIMIT, || async {
        env.scalar("SELECT count(*) FROM stripe_events WHERE outcome LIKE 'ignored%'")
            .await
            == 1
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn unsigned_badly_signed_and_stale_stripe_events_are_refused_and_store_nothing() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let now = chrono::Utc::now().timestamp();
    let event = account_updated("evt_x", "acct_x", now, true);

    let resp = api
        .client
        .post(api.url("/webhooks/stripe"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "invalid_signature");

    let body = event.to_string();
    let forged = shared::stripe::webhook::sign("whsec_someone_else", now, body.as_bytes());
    let resp = api
        .client
        .post(api.url("/webhooks/stripe/account/"))
        .header("stripe-signature", forged)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let (status, body) = deliver(&api, "/webhooks/stripe", &event, now - 301).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_signature");
    assert_eq!(env.scalar("SELECT count(*) FROM stripe_events").await, 0);
    assert_eq!(env.scalar("SELECT count(*) FROM jobs").await, 0);
}

/// localstripe, started for this test (it implements products, not prices or Connect).
struct LocalStripe {
    child: std::process::Child,
    url: String,
}

impl Drop for LocalStripe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A localstripe of the test's own: on a free port, and started again on another when the
/// port was taken meanwhile (its process exits), so that two tests never share one.
async fn localstripe() -> LocalStripe {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    for _ in 0..5 {
        let port = crate::helpers::free_port();
        // From scratch: instances otherwise start from what earlier ones left in a shared file.
        let child = std::process::Command::new(&python)
            .args([
                "-m",
                "localstripe",
                "--from-scratch",
                "--port",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start localstripe with {python}: {e}"));
        let url = format!("http://127.0.0.1:{port}/");
        let mut ls = LocalStripe { child, url };
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if ls.child.try_wait().ok().flatten().is_some() {
                break;
            }
            // Listening, and it is ours: the process is still up once it answers.
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                && ls.child.try_wait().ok().flatten().is_none()
            {
                return ls;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("localstripe did not start on any of five free ports");
}

/// localstripe has no Connect: the tenant's account is recorded as onboarded directly.
async fn connect_localstripe(env: &Env, tenant: &str) {
    sqlx::query(
        "INSERT INTO stripe_accounts (tenant_id, livemode, account_id, status, updated_at) \
         VALUES ($1, false, 'acct_localstripe', 'connected', now())",
    )
    .bind(shared::ids::TenantId::parse(tenant).unwrap())
    .execute(&env.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_product_syncs_to_localstripe_and_an_update_reaches_it() {
    let ls = localstripe().await;
    let env = Env::new(&[
        ("STRIPE_SECRET_KEY_TEST", "sk_test_localstripe"),
        ("STRIPE_API_BASE", &ls.url),
        ("JOB_BACKOFF_BASE_MS", "200"),
    ])
    .await;
    let api = env.api().await;
    let tenant = api.register("localstripe@example.com").await;
    connect_localstripe(&env, &tenant.id).await;
    let worker = env.worker().await;
    let (status, product) = api
        .post(
            &tenant.sk_test,
            "/api/v1/products",
            &json!({"name": "AutoFlow AI", "description": "Workflow automation",
                    "metadata": {"color": "#4F46E5"}}),
        )
        .await;
    assert_eq!(status, 201, "{product}");
    let id = product["id"].as_str().unwrap().to_owned();
    wait_for("the product to sync", LIMIT, || async {
        let p = api
            .get(&tenant.sk_test, &format!("/api/v1/products/{id}"))
            .await;
        p["sync_status"] == "synced"
    })
    .await;
    let synced = api
        .get(&tenant.sk_test, &format!("/api/v1/products/{id}"))
        .await;
    let stripe_id = synced["stripe_product_id"].as_str().unwrap().to_owned();
    let read = |sid: String| {
        let url = format!("{}v1/products/{sid}", ls.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth("sk_test_localstripe")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let at_stripe = read(stripe_id.clone()).await;
    assert_eq!(at_stripe["name"], "AutoFlow AI");
    assert_eq!(at_stripe["description"], "Workflow automation");
    assert_eq!(at_stripe["metadata"]["platform_product_id"], id.as_str());

    let (status, _) = api
        .send(
            Method::PATCH,
            Some(&tenant.sk_test),
            &format!("/api/v1/products/{id}"),
            Some(&json!({"name": "AutoFlow"})),
        )
        .await;
    assert_eq!(status, 200);
    wait_for("the rename to reach localstripe", LIMIT, || async {
        read(stripe_id.clone()).await["name"] == "AutoFlow"
    })
    .await;
    worker.stop().await;
}

#[tokio::test]
async fn a_customer_and_its_card_sync_to_localstripe_and_an_update_reaches_it() {
    let ls = localstripe().await;
    let env = Env::new(&[
        ("STRIPE_SECRET_KEY_TEST", "sk_test_localstripe"),
        ("STRIPE_API_BASE", &ls.url),
        ("JOB_BACKOFF_BASE_MS", "200"),
    ])
    .await;
    let api = env.api().await;
    let tenant = api.register("customers-localstripe@example.com").await;
    connect_localstripe(&env, &tenant.id).await;
    let worker = env.worker().await;
    let (status, customer) = api
        .post(
            &tenant.sk_test,
            "/api/v1/customers",
            &json!({"name": "Globex", "email": "ap@globex.com", "metadata": {"tier": "gold"}}),
        )
        .await;
    assert_eq!(status, 201, "{customer}");
    let id = customer["id"].as_str().unwrap().to_owned();
    let uuid = shared::ids::CustomerId::parse(&id).unwrap().as_uuid();
    let stripe_id = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT stripe_customer_id FROM customers WHERE id = $1 AND sync_status = 'synced'",
        )
        .bind(uuid)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
        .flatten()
    };
    wait_for("the customer to sync", LIMIT, || async {
        stripe_id().await.is_some()
    })
    .await;
    let cus = stripe_id().await.unwrap();
    let read = |path: String| {
        let url = format!("{}v1/{path}", ls.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth("sk_test_localstripe")
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let at_stripe = read(format!("customers/{cus}")).await;
    assert_eq!(at_stripe["name"], "Globex");
    assert_eq!(at_stripe["email"], "ap@globex.com");
    assert_eq!(at_stripe["metadata"]["platform_customer_id"], id.as_str());
    assert_eq!(at_stripe["metadata"]["tier"], "gold");

    let (status, _) = api
        .send(
            Method::PATCH,
            Some(&tenant.sk_test),
            &format!("/api/v1/customers/{id}"),
            Some(&json!({"name": "Globex Corporation"})),
        )
        .await;
    assert_eq!(status, 200);
    wait_for("the rename to reach localstripe", LIMIT, || async {
        read(format!("customers/{cus}")).await["name"] == "Globex Corporation"
    })
    .await;

    // A test card, attached to the Stripe customer by its sync.
    let (status, pm) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/customers/{id}/payment-methods"),
            &json!({"token": "4242424242424242", "exp_month": 12, "exp_year": 2040}),
        )
        .await;
    assert_eq!(status, 201, "{pm}");
    let pm_uuid = shared::ids::PaymentMethodId::parse(pm["id"].as_str().unwrap())
        .unwrap()
        .as_uuid();
    let attached = || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT stripe_payment_method_id FROM payment_methods WHERE id = $1 \
             AND sync_status = 'synced'",
        )
        .bind(pm_uuid)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
        .flatten()
    };
    wait_for("the card to attach", LIMIT, || async {
        attached().await.is_some()
    })
    .await;
    let stripe_pm = attached().await.unwrap();
    let at_stripe = read(format!("payment_methods/{stripe_pm}")).await;
    assert_eq!(at_stripe["customer"], cus.as_str(), "{at_stripe}");
    // One Stripe customer however often the jobs ran.
    let all = read("customers".into()).await;
    let named: Vec<&Value> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["platform_customer_id"] == id.as_str())
        .collect();
    assert_eq!(named.len(), 1, "{all}");
    worker.stop().await;
}

#[tokio::test]
async fn a_charge_on_a_connected_account_carries_the_platform_fee_and_a_decline_is_an_outcome() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let settings = env.settings();
    let stripe = shared::stripe::Stripe::new(&settings.stripe).unwrap();
    let gateway = shared::payments::Gateway::for_mode(&stripe, false);
    let charge = |pm: &'static str, key: &'static str| shared::payments::Charge {
        amount: 2999,
        currency: "usd",
        payment_method: pm,
        customer: Some("cus_1"),
        description: "Pro, November",
        idempotency_key: key,
        application_fee: shared::payments::application_fee(2999, 1500),
        account: Some("acct_tenant"),
        metadata: HashMap::new(),
    };
    let paid = gateway
        .charge(false, &charge("pm_card_visa", "in_1-attempt-1"))
        .await
        .unwrap();
    assert!(
        matches!(paid, shared::payments::ChargeOutcome::Succeeded { .. }),
        "{paid:?}"
    );
    let declined = gateway
        .charge(false, &charge("pm_card_chargeDeclined", "in_2-attempt-1"))
        .await
        .unwrap();
    assert_eq!(
        declined,
        shared::payments::ChargeOutcome::Declined {
            code: "insufficient_funds".into(),
            message: "Your card has insufficient funds.".into(),
            do_not_retry: false,
        }
    );
    // The issuer's advice never to try again makes any decline final.
    let final_decline = gateway
        .charge(false, &charge("pm_card_doNotTryAgain", "in_3-attempt-1"))
        .await
        .unwrap();
    assert_eq!(
        final_decline,
        shared::payments::ChargeOutcome::Declined {
            code: "insufficient_funds".into(),
            message: "Your card was declined.".into(),
            do_not_retry: true,
        }
    );
    let intents: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_intents")
        .collect();
    assert_eq!(intents.len(), 3);
    let r = &intents[0];
    assert_eq!(r.account.as_deref(), Some("acct_tenant"));
    assert_eq!(r.idempotency_key.as_deref(), Some("in_1-attempt-1"));
    assert_eq!(r.form["amount"], "2999");
    assert_eq!(
        r.form["application_fee_amount"], "450",
        "15 % of 29.99, rounded half up"
    );
    assert_eq!(r.form["confirm"], "true");
    assert_eq!(r.form["off_session"], "true");
    assert_eq!(r.form["customer"], "cus_1");
}

#[tokio::test]
async fn a_charge_runs_through_localstripe_and_without_stripe_the_sandbox_stands_in() {
    let ls = localstripe().await;
    let env = Env::new(&[
        ("STRIPE_SECRET_KEY_TEST", "sk_test_localstripe"),
        ("STRIPE_API_BASE", &ls.url),
    ])
    .await;
    let settings = env.settings();
    let stripe = shared::stripe::Stripe::new(&settings.stripe).unwrap();
    // A card payment method at localstripe (the platform's own account: no fee).
    let pm = localstripe_card(&ls, "4242424242424242").await;
    let gateway = shared::payments::Gateway::for_mode(&stripe, false);
    assert!(matches!(gateway, shared::payments::Gateway::Stripe(_)));
    let outcome = charge_at(&gateway, &pm, "in_ls-attempt-1", 1000, 150).await;
    let shared::payments::ChargeOutcome::Succeeded { id } = outcome else {
        panic!("{outcome:?}");
    };
    let pi = intent_at(&ls, &id).await;
    assert_eq!(pi["status"], "succeeded");
    assert_eq!(pi["amount"], 1000);
    // Live mode has no key here: the sandbox.
    assert!(matches!(
        shared::payments::Gateway::for_mode(&stripe, true),
        shared::payments::Gateway::Sandbox
    ));
}

/// Charges `amount` (with the platform's `fee`) to `pm` through the gateway, with `key`, on
/// the platform's own account.
async fn charge_at(
    gateway: &shared::payments::Gateway,
    pm: &str,
    key: &str,
    amount: i64,
    fee: i64,
) -> ChargeOutcome {
    gateway
        .charge(
            false,
            &shared::payments::Charge {
                amount,
                currency: "usd",
                payment_method: pm,
                customer: None,
                description: "",
                idempotency_key: key,
                application_fee: fee,
                account: None,
                metadata: HashMap::new(),
            },
        )
        .await
        .unwrap()
}

/// A payment intent as localstripe has it.
async fn intent_at(ls: &LocalStripe, id: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{}v1/payment_intents/{id}", ls.url))
        .bearer_auth("sk_test_localstripe")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_charge_waiting_for_authentication_is_canceled_at_stripe_unless_it_succeeded_first() {
    let ls = localstripe().await;
    let env = Env::new(&[
        ("STRIPE_SECRET_KEY_TEST", "sk_test_localstripe"),
        ("STRIPE_API_BASE", &ls.url),
    ])
    .await;
    let stripe = shared::stripe::Stripe::new(&env.settings().stripe).unwrap();
    let gateway = shared::payments::Gateway::for_mode(&stripe, false);
    let pm = localstripe_card(&ls, "4000002500003155").await;
    let intent = |outcome: ChargeOutcome| match outcome {
        ChargeOutcome::RequiresAction { id } => id,
        other => panic!("{other:?}"),
    };

    // Never authenticated: canceled there, and told so.
    let waiting = intent(charge_at(&gateway, &pm, "in_ls3ds-attempt-1", 2500, 0).await);
    let canceled = gateway
        .cancel(false, &waiting, None, "in_ls3ds-attempt-1-cancel")
        .await
        .unwrap();
    assert!(
        matches!(&canceled, ChargeOutcome::Canceled { .. }),
        "{canceled:?}"
    );
    assert_eq!(intent_at(&ls, &waiting).await["status"], "canceled");
    // Asked again (a job run again after a crash): the same answer.
    let again = gateway
        .cancel(false, &waiting, None, "in_ls3ds-attempt-1-cancel")
        .await
        .unwrap();
    assert_eq!(again, canceled);

    // Authenticated just before the cancel: the cancel is refused and the charge's real
    // outcome, a success, is the answer (the money came in: it pays the invoice).
    let waiting = intent(charge_at(&gateway, &pm, "in_ls3ds-attempt-2", 2500, 0).await);
    let secret = intent_at(&ls, &waiting).await["client_secret"]
        .as_str()
        .unwrap()
        .to_owned();
    let done = reqwest::Client::new()
        .post(format!(
            "{}v1/payment_intents/{waiting}/_authenticate",
            ls.url
        ))
        .bearer_auth("sk_test_localstripe")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("client_secret={secret}&success=true"))
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success(), "{}", done.text().await.unwrap());
    let outcome = gateway
        .cancel(false, &waiting, None, "in_ls3ds-attempt-2-cancel")
        .await
        .unwrap();
    assert_eq!(
        outcome,
        ChargeOutcome::Succeeded {
            id: waiting.clone()
        }
    );
    assert_eq!(intent_at(&ls, &waiting).await["status"], "succeeded");
}

#[tokio::test]
async fn after_reconnecting_a_new_account_the_catalog_is_created_there_afresh() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("reconnect@example.com").await;
    let first = connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;
    let plan = create_plan(&api, &tenant, "Moves").await;
    let id = plan["id"].as_str().unwrap().to_owned();
    let before = plan_when(&api, &tenant, &id, "synced").await;

    let (status, _) = api
        .send(
            Method::DELETE,
            Some(&tenant.owner),
            "/api/v1/auth/tenants/stripe/disconnect?confirm=true",
            None,
        )
        .await;
    assert_eq!(status, 200);
    // A change while disconnected has no Stripe to go to.
    let (status, renamed) = api
        .send(
            Method::PATCH,
            Some(&tenant.sk_test),
            &format!("/api/v1/plans/{id}"),
            Some(&json!({"name": "Moved"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(renamed["sync_status"], "not_synced");

    let second = connect(&api, &fake, &tenant).await;
    assert_ne!(first, second);
    let after = plan_when(&api, &tenant, &id, "synced").await;
    assert_ne!(after["stripe_product_id"], before["stripe_product_id"]);
    let on_second: Vec<_> = fake
        .done("POST", "/v1/products")
        .into_iter()
        .filter(|r| r.account.as_deref() == Some(second.as_str()))
        .collect();
    assert_eq!(on_second.len(), 1);
    assert_eq!(on_second[0].form["name"], "Moved");
    worker.stop().await;
}

/// Stripe's side of an account, as the platform's events describe it (no ids).
async fn account_events(env: &Env, tenant: &Tenant) -> Vec<(String, Value)> {
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT type, data FROM events WHERE tenant_id = $1 AND type LIKE 'stripe_account.%' \
         ORDER BY created_at, id",
    )
    .bind(shared::ids::TenantId::parse(&tenant.id).unwrap())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, mut data)| {
            data["object"]["account_id"] = json!("acct");
            (t, data)
        })
        .collect()
}

#[tokio::test]
async fn the_onboarding_return_and_an_account_updated_event_give_the_same_state_and_events() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let worker = env.worker().await;
    let start = |tenant: Tenant| {
        let api = &api;
        async move {
            let (status, link) = api
                .send(
                    Method::POST,
                    Some(&tenant.owner),
                    "/api/v1/auth/tenants/stripe/connect/",
                    None,
                )
                .await;
            assert_eq!(status, 200, "{link}");
            (
                tenant,
                link["account_id"].as_str().unwrap().to_owned(),
                link["state"].as_str().unwrap().to_owned(),
            )
        }
    };
    // Both tenants finish onboarding at Stripe; one comes back through the browser…
    let (by_return, account_a, state) = start(api.register("return@example.com").await).await;
    fake.complete_onboarding(&account_a);
    let (status, back) = api
        .send(
            Method::GET,
            None,
            &format!("/api/v1/auth/tenants/stripe/callback/?state={state}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{back}");
    // …the other is told by Stripe's `account.updated`.
    let (by_event, account_b, _) = start(api.register("event@example.com").await).await;
    fake.complete_onboarding(&account_b);
    let now = chrono::Utc::now().timestamp();
    let event = account_updated("evt_onboarded", &account_b, now + 5, true);
    let (status, body) = deliver(&api, "/webhooks/stripe", &event, now).await;
    assert_eq!(status, 200, "{body}");
    wait_for("the event to be applied", LIMIT, || async {
        env.scalar("SELECT count(*) FROM stripe_events WHERE status = 'applied'")
            .await
            == 1
    })
    .await;

    let status_of = |t: &Tenant| {
        let api = &api;
        let key = t.sk_test.clone();
        async move {
            let mut s = api.get(&key, "/api/v1/auth/tenants/stripe/status").await;
            // Everything but the account's id and when it changed.
            s["account_id"] = json!("acct");
            s["updated_at"] = json!("then");
            s
        }
    };
    let a = status_of(&by_return).await;
    assert_eq!(a["status"], "connected", "{a}");
    assert_eq!(a["charges_enabled"], true, "{a}");
    assert_eq!(a, status_of(&by_event).await);
    let events = account_events(&env, &by_return).await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        ["stripe_account.updated", "stripe_account.connected"],
        "{events:?}"
    );
    assert_eq!(events, account_events(&env, &by_event).await);
    worker.stop().await;
}

/// A card payment method made at localstripe (as Stripe.js makes one on the connected account).
async fn localstripe_card(ls: &LocalStripe, number: &str) -> String {
    let pm: Value = reqwest::Client::new()
        .post(format!("{}v1/payment_methods", ls.url))
        .bearer_auth("sk_test_localstripe")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(
            url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs([
                    ("type", "card"),
                    ("card[number]", number),
                    ("card[exp_month]", "7"),
                    ("card[exp_year]", "2031"),
                    ("card[cvc]", "123"),
                ])
                .finish(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    pm["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stripe_payment_method_attaches_with_its_card_read_from_stripe_and_syncs_to_its_customer()
{
    let ls = localstripe().await;
    let env = Env::new(&[
        ("STRIPE_SECRET_KEY_TEST", "sk_test_localstripe"),
        ("STRIPE_API_BASE", &ls.url),
        ("JOB_BACKOFF_BASE_MS", "200"),
    ])
    .await;
    let api = env.api().await;
    let tenant = api.register("pm-localstripe@example.com").await;
    let (status, customer) = api
        .post(
            &tenant.sk_test,
            "/api/v1/customers",
            &json!({"name": "Globex", "email": "ap@globex.com"}),
        )
        .await;
    assert_eq!(status, 201, "{customer}");
    let id = customer["id"].as_str().unwrap().to_owned();
    let pm = localstripe_card(&ls, "4242424242424242").await;
    let path = format!("/api/v1/customers/{id}/payment-methods");
    // Not before the tenant's Stripe account is connected.
    let (status, refused) = api
        .post(&tenant.sk_test, &path, &json!({"token": pm}))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "stripe_account_not_connected");
    connect_localstripe(&env, &tenant.id).await;
    // An id the account does not have is refused, naming the field.
    let (status, refused) = api
        .post(&tenant.sk_test, &path, &json!({"token": "pm_missing"}))
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["field"], "token", "{refused}");

    let worker = env.worker().await;
    let (status, attached) = api
        .post(&tenant.sk_test, &path, &json!({"token": pm}))
        .await;
    assert_eq!(status, 201, "{attached}");
    // What Stripe says of the card, not the defaults of a request that gave no expiry.
    assert_eq!(attached["card"]["brand"], "visa");
    assert_eq!(attached["card"]["last4"], "4242");
    assert_eq!(attached["card"]["exp_month"], 7);
    assert_eq!(attached["card"]["exp_year"], 2031);
    let uuid = shared::ids::CustomerId::parse(&id).unwrap().as_uuid();
    let synced = || async {
        sqlx::query_as::<_, (Option<String>, Option<String>)>(
            "SELECT c.stripe_customer_id, m.stripe_payment_method_id FROM customers c \
             JOIN payment_methods m ON m.customer_id = c.id \
             WHERE c.id = $1 AND m.sync_status = 'synced'",
        )
        .bind(uuid)
        .fetch_optional(&env.pool)
        .await
        .unwrap()
    };
    wait_for("the customer and its card to sync", LIMIT, || async {
        synced().await.is_some()
    })
    .await;
    let (cus, attached_pm) = synced().await.unwrap();
    assert_eq!(attached_pm.as_deref(), Some(pm.as_str()));
    let at_stripe: Value = reqwest::Client::new()
        .get(format!("{}v1/payment_methods/{pm}", ls.url))
        .bearer_auth("sk_test_localstripe")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(at_stripe["customer"], json!(cus), "{at_stripe}");
    worker.stop().await;
}

#[tokio::test]
async fn a_stripe_payment_method_attached_to_another_stripe_customer_is_refused() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("pm-taken@example.com").await;
    connect(&api, &fake, &tenant).await;
    let (status, customer) = api
        .post(
            &tenant.sk_test,
            "/api/v1/customers",
            &json!({"name": "Globex"}),
        )
        .await;
    assert_eq!(status, 201, "{customer}");
    let id = customer["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/customers/{id}/payment-methods");
    let (status, refused) = api
        .post(
            &tenant.sk_test,
            &path,
            &json!({"token": "pm_fake_card_taken_1"}),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["code"], "payment_method_attached_elsewhere");
    // Nothing kept; one that is free attaches.
    assert_eq!(api.get(&tenant.sk_test, &path).await["data"], json!([]));
    let (status, attached) = api
        .post(&tenant.sk_test, &path, &json!({"token": "pm_fake_card_1"}))
        .await;
    assert_eq!(status, 201, "{attached}");
}

/// A customer named `name` with the Stripe stand-in's card `pm_fake_card_1` attached (read
/// from Stripe), and a monthly plan: (customer id, payment method, plan).
async fn customer_with_card_and_plan(
    api: &Api,
    tenant: &Tenant,
    name: &str,
) -> (String, Value, Value) {
    let (status, customer) = api
        .post(&tenant.sk_test, "/api/v1/customers", &json!({"name": name}))
        .await;
    assert_eq!(status, 201, "{customer}");
    let id = customer["id"].as_str().unwrap().to_owned();
    let (status, attached) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/customers/{id}/payment-methods"),
            &json!({"token": "pm_fake_card_1"}),
        )
        .await;
    assert_eq!(status, 201, "{attached}");
    let (status, plan) = api
        .post(
            &tenant.sk_test,
            "/api/v1/plans",
            &json!({"name": "Pro", "price_cents": 2999, "billing_interval": "month"}),
        )
        .await;
    assert_eq!(status, 201, "{plan}");
    (id, attached, plan)
}

/// Subscribes `customer` to `plan`: the id of its first invoice.
async fn subscribe_to_plan(api: &Api, tenant: &Tenant, customer: &str, plan: &Value) -> String {
    let (status, sub) = api
        .post(
            &tenant.sk_test,
            "/api/v1/subscriptions",
            &json!({"customer": customer, "items": [{"plan": plan["id"]}]}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    sub["latest_invoice"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_stripe_payment_method_is_charged_on_the_connected_account_with_its_customer() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("pm-charge@example.com").await;
    let account = connect(&api, &fake, &tenant).await;
    let worker = env.worker().await;
    let (id, attached, plan) = customer_with_card_and_plan(&api, &tenant, "Globex").await;
    assert_eq!(attached["card"]["brand"], "mastercard");
    assert_eq!(attached["card"]["last4"], "4444");
    let invoice = subscribe_to_plan(&api, &tenant, &id, &plan).await;
    let started = std::time::Instant::now();
    while api
        .get(&tenant.sk_test, &format!("/api/v1/invoices/{invoice}"))
        .await["status"]
        != "paid"
    {
        if started.elapsed() > LIMIT {
            let jobs: Vec<(String, String, i32, Option<String>)> = sqlx::query_as(
                "SELECT kind, state, attempts, last_error FROM jobs WHERE kind <> 'webhook.deliver'",
            )
            .fetch_all(&env.pool)
            .await
            .unwrap();
            panic!("the first invoice is not paid: {jobs:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Charged once, with the payment method and the customer it is attached to at Stripe
    // (Stripe charges an attached method only with its customer).
    let stripe_customer: String = sqlx::query_scalar(
        "SELECT stripe_customer_id FROM customers WHERE id = $1 AND stripe_customer_id IS NOT NULL",
    )
    .bind(shared::ids::CustomerId::parse(&id).unwrap().as_uuid())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let attaches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_methods/pm_fake_card_1/attach" && r.status == 200)
        .collect();
    assert_eq!(attaches.len(), 1, "{attaches:?}");
    assert_eq!(attaches[0].form["customer"], stripe_customer);
    assert_eq!(attaches[0].account.as_deref(), Some(account.as_str()));
    // The card was read from the connected account.
    let read: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path == "/v1/payment_methods/pm_fake_card_1")
        .collect();
    assert_eq!(read.len(), 1, "{read:?}");
    assert_eq!(read[0].account.as_deref(), Some(account.as_str()));
    let intents: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_intents" && r.status == 200 && !r.replayed)
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    let r = &intents[0];
    assert_eq!(r.account.as_deref(), Some(account.as_str()));
    assert_eq!(r.form["payment_method"], "pm_fake_card_1");
    assert_eq!(r.form["customer"], stripe_customer);
    // Never before the card is attached to that customer (Stripe would not attach it after).
    assert!(attaches[0].at_ms <= r.at_ms, "{attaches:?} {r:?}");

    // Detached here, it is detached from the Stripe customer too, once.
    let pm = attached["id"].as_str().unwrap();
    let (status, detached) = api
        .send(
            Method::DELETE,
            Some(&tenant.sk_test),
            &format!("/api/v1/customers/{id}/payment-methods/{pm}"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{detached}");
    let detaches = || {
        fake.requests()
            .into_iter()
            .filter(|r| {
                r.path == "/v1/payment_methods/pm_fake_card_1/detach"
                    && r.status == 200
                    && !r.replayed
            })
            .count()
    };
    wait_for("the detach to reach Stripe", LIMIT, || async {
        detaches() >= 1
    })
    .await;
    worker.stop().await;
    assert_eq!(detaches(), 1);
}

#[tokio::test]
async fn a_resumed_charge_sends_the_fee_its_attempt_recorded_whatever_the_rate_is_by_then() {
    let fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("resumed-fee@example.com").await;
    let account = connect(&api, &fake, &tenant).await;
    let scope = env.scope(&tenant).await;
    // No worker: the charge is made here, step by step.
    let (status, customer) = api
        .post(
            &tenant.sk_test,
            "/api/v1/customers",
            &json!({"name": "Globex"}),
        )
        .await;
    assert_eq!(status, 201, "{customer}");
    let id = customer["id"].as_str().unwrap().to_owned();
    let (status, _) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/customers/{id}/payment-methods"),
            &json!({"token": "pm_card_visa"}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, plan) = api
        .post(
            &tenant.sk_test,
            "/api/v1/plans",
            &json!({"name": "Pro", "price_cents": 2999, "billing_interval": "month"}),
        )
        .await;
    assert_eq!(status, 201, "{plan}");
    let (status, sub) = api
        .post(
            &tenant.sk_test,
            "/api/v1/subscriptions",
            &json!({"customer": id, "items": [{"plan": plan["id"]}]}),
        )
        .await;
    assert_eq!(status, 201, "{sub}");
    let invoice = shared::ids::InvoiceId::parse(sub["latest_invoice"].as_str().unwrap()).unwrap();
    let settings = env.settings();
    let stripe = shared::stripe::Stripe::new(&settings.stripe).unwrap();
    let clock = shared::clock::SystemClock;
    // The attempt starts at the tenant's 15 %, and the run dies before asking Stripe.
    let mut uow = shared::uow::UnitOfWork::begin(&env.pool, &clock)
        .await
        .unwrap();
    let started =
        shared::service::invoices::start_attempts(&mut uow, &stripe, &[(scope, invoice, 1)])
            .await
            .unwrap();
    uow.commit().await.unwrap();
    let shared::service::invoices::Attempt::Charge { payment, .. } = &started[0] else {
        panic!("{started:?}");
    };
    assert_eq!(payment.application_fee, 450);
    // The rate changes; the attempt is resumed with its key and the fee it recorded.
    sqlx::query("UPDATE tenants SET platform_fee_bps = 1000 WHERE id = $1")
        .bind(scope.tenant_id())
        .execute(&env.pool)
        .await
        .unwrap();
    let results =
        shared::service::invoices::run_attempts(&env.pool, &clock, &stripe, &[(scope, invoice, 2)])
            .await
            .unwrap();
    let paid = results[0].as_ref().unwrap().as_ref().unwrap();
    assert_eq!(paid.id, payment.id);
    assert_eq!(paid.status.as_str(), "succeeded");
    let intents: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/payment_intents")
        .collect();
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0].account.as_deref(), Some(account.as_str()));
    assert_eq!(
        intents[0].idempotency_key.as_deref(),
        Some(payment.idempotency_key.as_str())
    );
    assert_eq!(intents[0].form["application_fee_amount"], "450");
}

#[tokio::test]
async fn a_charge_that_died_waiting_for_its_cards_sync_runs_again_once_the_card_syncs() {
    let mut fake = StripeFake::start().await;
    let env = stripe_env(&fake, &[]).await;
    let api = env.api().await;
    let tenant = api.register("pm-sync-late@example.com").await;
    connect(&api, &fake, &tenant).await;
    let (id, _, plan) = customer_with_card_and_plan(&api, &tenant, "Initech").await;
    // Stripe is gone before any worker runs: the card's sync fails, and the first invoice's
    // charge waits for it.
    fake.stop().await;
    let invoice = subscribe_to_plan(&api, &tenant, &id, &plan).await;
    let worker = env.worker().await;
    let charge = || async {
        sqlx::query_as::<_, (String, i32, Option<String>)>(
            "SELECT state, attempts, last_error FROM jobs WHERE kind = 'invoice.pay'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    wait_for("the charge to wait for the card's sync", LIMIT, || async {
        let (_, attempts, error) = charge().await;
        attempts >= 1 && error.is_some_and(|e| e.contains("not attached"))
    })
    .await;
    // Its attempts run out (as they do after half an hour or so): it is dead.
    wait_for("the charge to die", LIMIT, || async {
        sqlx::query(
            "UPDATE jobs SET state = 'dead', finished_at = now() \
             WHERE kind = 'invoice.pay' AND lease_token IS NULL AND state <> 'dead'",
        )
        .execute(&env.pool)
        .await
        .unwrap();
        charge().await.0 == "dead"
    })
    .await;
    // Stripe is back, and the syncs' next tries come now: once the card is attached to its
    // customer, the charge runs again, once.
    fake.restart().await;
    sqlx::query(
        "UPDATE jobs SET run_at = now() WHERE kind LIKE 'stripe.sync%' AND state = 'pending'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    wait_for("the first invoice to be paid", LIMIT, || async {
        api.get(&tenant.sk_test, &format!("/api/v1/invoices/{invoice}"))
            .await["status"]
            == "paid"
    })
    .await;
    worker.stop().await;
    assert_eq!(charge().await.0, "succeeded");
    let intents = fake.done("POST", "/v1/payment_intents");
    assert_eq!(intents.len(), 1, "{intents:?}");
    assert_eq!(intents[0].form["payment_method"], "pm_fake_card_1");
}
