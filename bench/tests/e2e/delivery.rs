//! Signed delivery, the retry schedule, disabling, rotation and the SSRF guard at send time.

use std::time::Duration;

use serde_json::json;
use shared::db::events::NewEvent;

use crate::helpers::{Env, Receiver, verify_with_standardwebhooks, wait_for};

const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_delivery_is_signed_so_that_the_standardwebhooks_library_verifies_it() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("signed@example.com").await;
    let (endpoint_id, secret) = api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;

    env.record_events(&tenant, 1, "invoice.paid").await;
    wait_for("the delivery", LIMIT, || async { receiver.count() >= 1 }).await;

    let hit = &receiver.hits()[0];
    verify_with_standardwebhooks(&secret, hit).expect("standardwebhooks verifies the delivery");
    assert!(hit.webhook_id().starts_with("msg_"));
    let body = hit.json();
    assert_eq!(body["type"], "invoice.paid");
    assert_eq!(body["object"], "event");
    assert_eq!(body["livemode"], false);
    assert_eq!(body["data"]["object"]["n"], 0);
    // A wrong secret does not verify: the check is real.
    let other = shared::domain::webhook::SigningSecret::generate();
    assert!(verify_with_standardwebhooks(other.expose(), hit).is_err());

    wait_for("the delivery to be recorded", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            .await
            == 1
    })
    .await;
    let deliveries = api
        .get(
            &tenant.sk_test,
            &format!("/api/v1/webhook-endpoints/{endpoint_id}/deliveries"),
        )
        .await;
    let d = &deliveries["data"][0];
    assert_eq!(d["id"], hit.webhook_id());
    assert_eq!(d["status"], "succeeded");
    assert_eq!(d["attempts"], 1);
    assert_eq!(d["attempt_log"][0]["status_code"], 200);
    assert_eq!(d["attempt_log"][0]["response_body"], "received");
    worker.stop().await;
}

/// Events recorded before their data was kept as written have it only in `data_jsonb`: they
/// read back whole through the API and are delivered whole, and an event with neither is
/// refused.
#[tokio::test]
async fn an_event_whose_data_is_in_the_older_jsonb_column_is_read_and_delivered_whole() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("older-event@example.com").await;
    let (_, secret) = api.endpoint(&tenant.sk_test, &receiver.url).await;
    let scope = env.scope(&tenant).await;
    let id = shared::ids::EventId::new();
    sqlx::query(
        "INSERT INTO events (id, tenant_id, livemode, type, data_jsonb, created_at) \
         VALUES ($1, $2, false, 'invoice.paid', $3, now())",
    )
    .bind(id)
    .bind(scope.tenant_id())
    .bind(json!({"object": {"object": "thing", "n": 7, "nested": {"a": [1, 2]}}}))
    .execute(&env.pool)
    .await
    .unwrap();
    let shown = api
        .get(&tenant.sk_test, &format!("/api/v1/events/{id}"))
        .await;
    assert_eq!(shown["data"]["object"]["n"], 7);
    assert_eq!(shown["data"]["object"]["nested"]["a"], json!([1, 2]));

    let worker = env.worker().await;
    let (status, _) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/events/{id}/redeliver"),
            &json!({}),
        )
        .await;
    assert!(status.is_success(), "{status}");
    wait_for("the delivery", LIMIT, || async { receiver.count() >= 1 }).await;
    let hit = &receiver.hits()[0];
    verify_with_standardwebhooks(&secret, hit).expect("standardwebhooks verifies the delivery");
    let body = hit.json();
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["data"]["object"]["nested"]["a"], json!([1, 2]));
    worker.stop().await;

    let neither = sqlx::query(
        "INSERT INTO events (id, tenant_id, livemode, type, created_at) \
         VALUES ($1, $2, false, 'invoice.paid', now())",
    )
    .bind(shared::ids::EventId::new())
    .bind(scope.tenant_id())
    .execute(&env.pool)
    .await
    .expect_err("an event without data");
    assert!(
        neither.to_string().contains("events_data_check"),
        "{neither}"
    );
}

#[tokio::test]
async fn failures_retry_on_the_schedule_with_the_same_webhook_id_then_fail_and_go_dead() {
    let env = Env::new(&[("WEBHOOK_RETRY_SCHEDULE", "300ms,300ms")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.answer(500);
    let tenant = api.register("retry@example.com").await;
    let (endpoint_id, _) = api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;

    env.record_events(&tenant, 1, "invoice.payment_failed")
        .await;
    wait_for("the delivery to fail", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")
            .await
            == 1
    })
    .await;
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3, "one attempt and two retries");
    assert!(hits.iter().all(|h| h.webhook_id() == hits[0].webhook_id()));
    assert_eq!(env.scalar("SELECT count(*) FROM webhook_attempts").await, 3);
    assert_eq!(
        env.scalar("SELECT count(*) FROM jobs WHERE state = 'dead'")
            .await,
        1
    );
    let deliveries = api
        .get(
            &tenant.sk_test,
            &format!("/api/v1/webhook-endpoints/{endpoint_id}/deliveries"),
        )
        .await;
    let log = deliveries["data"][0]["attempt_log"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(log.len(), 3);
    assert!(log.iter().all(|a| a["status_code"] == 500));

    // An operator retries the dead job; the receiver is back.
    receiver.answer(200);
    let retried = shared::jobs::retry_dead(&env.pool, None, None, chrono::Utc::now())
        .await
        .unwrap();
    assert_eq!(retried, 1);
    wait_for("the retried delivery to succeed", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            .await
            == 1
    })
    .await;
    assert_eq!(receiver.hits()[3].webhook_id(), hits[0].webhook_id());
    assert_eq!(env.scalar("SELECT count(*) FROM webhook_attempts").await, 4);
    worker.stop().await;
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_records_a_disabled_event() {
    let env = Env::new(&[("WEBHOOK_RETRY_SCHEDULE", "100ms,100ms")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.answer(410);
    let tenant = api.register("gone@example.com").await;
    let (endpoint_id, _) = api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;

    env.record_events(&tenant, 1, "customer.created").await;
    wait_for("the endpoint to be disabled", LIMIT, || async {
        env.scalar(
            "SELECT count(*) FROM webhook_endpoints WHERE NOT enabled AND disabled_reason = 'gone'",
        )
        .await
            == 1
    })
    .await;
    let endpoint = api
        .get(
            &tenant.sk_test,
            &format!("/api/v1/webhook-endpoints/{endpoint_id}"),
        )
        .await;
    assert_eq!(endpoint["enabled"], false);
    assert_eq!(endpoint["disabled_reason"], "gone");
    let events = api
        .get(
            &tenant.sk_test,
            "/api/v1/events?type=webhook_endpoint.disabled",
        )
        .await;
    assert_eq!(
        events["data"][0]["data"]["object"]["id"],
        endpoint_id.as_str()
    );
    // No retries after a 410: the delivery failed for good and its job is finished.
    wait_for("the delivery's job to finish", LIMIT, || async {
        env.scalar(
            "SELECT count(*) FROM jobs WHERE kind = 'webhook.deliver' AND state <> 'pending'",
        )
        .await
            == 1
    })
    .await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")
            .await,
        1
    );
    // Later events are not sent to it: they make no delivery for it at all.
    env.record_events(&tenant, 1, "customer.created").await;
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(receiver.count(), 1);
    worker.stop().await;
}

#[tokio::test]
async fn an_endpoint_failing_for_longer_than_allowed_is_disabled() {
    let env = Env::new(&[
        (
            "WEBHOOK_RETRY_SCHEDULE",
            "400ms,400ms,400ms,400ms,400ms,400ms",
        ),
        ("WEBHOOK_DISABLE_AFTER_SECONDS", "1"),
    ])
    .await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.answer(503);
    let tenant = api.register("failing@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;

    env.record_events(&tenant, 1, "customer.updated").await;
    wait_for("the endpoint to be disabled", LIMIT, || async {
        env.scalar(
            "SELECT count(*) FROM webhook_endpoints WHERE NOT enabled AND disabled_reason = 'failing'",
        )
        .await
            == 1
    })
    .await;
    // Disabled on the first failure a second or more after the first one, not before: never
    // on the first, and at the latest on the fourth (retries wait 400 ms at least: the fourth
    // comes 1.2 s or more after the first), however slowly the machine runs.
    let attempts = env.scalar("SELECT count(*) FROM webhook_attempts").await;
    assert!((2..=4).contains(&attempts), "{attempts} attempts");
    // Every attempt before the one that disabled it started within the second.
    let early = env
        .scalar(
            "SELECT count(*) FROM webhook_attempts a, webhook_endpoints w \
             WHERE a.attempted_at < w.failing_since + interval '1 second'",
        )
        .await;
    assert!(
        early >= attempts - 1,
        "{early} of {attempts} within the second"
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM events WHERE type = 'webhook_endpoint.disabled'")
            .await,
        1
    );
    worker.stop().await;
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_and_each_verifies() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("rotate@example.com").await;
    let (endpoint_id, old_secret) = api.endpoint(&tenant.sk_test, &receiver.url).await;
    let (status, rotated) = api
        .post(
            &tenant.sk_test,
            &format!("/api/v1/webhook-endpoints/{endpoint_id}/rotate-secret"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    let worker = env.worker().await;

    env.record_events(&tenant, 1, "invoice.paid").await;
    wait_for("the delivery", LIMIT, || async { receiver.count() >= 1 }).await;
    let hit = &receiver.hits()[0];
    let signatures = hit.headers["webhook-signature"].split(' ').count();
    assert_eq!(signatures, 2, "{}", hit.headers["webhook-signature"]);
    verify_with_standardwebhooks(&new_secret, hit).expect("the new secret verifies");
    verify_with_standardwebhooks(&old_secret, hit).expect("the old secret still verifies");
    worker.stop().await;
}

#[tokio::test]
async fn addresses_are_checked_at_send_time_and_nothing_is_sent_to_internal_ones() {
    // The API stored the endpoints while internal targets were allowed; the worker does not
    // allow them, and must refuse whatever the stored URL says.
    let env = Env::new(&[("WEBHOOK_RETRY_SCHEDULE", "none")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("ssrf@example.com").await;
    // This machine's own name, which resolves to an internal address: only the check of the
    // resolved address (at connect time) can catch it.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    let resolved: Vec<std::net::IpAddr> = tokio::net::lookup_host((host.as_str(), 80))
        .await
        .expect("the host name resolves")
        .map(|a| a.ip())
        .collect();
    assert!(
        resolved
            .iter()
            .all(|ip| !shared::domain::webhook::is_public(*ip)),
        "{host} resolves to {resolved:?}"
    );
    for url in [
        receiver.url.clone(),
        format!("http://{host}:{}/hook", receiver.port),
        format!("http://[::1]:{}/hook", receiver.port),
    ] {
        api.endpoint(&tenant.sk_test, &url).await;
    }
    let worker = env
        .worker_with(&[("WEBHOOK_ALLOW_PRIVATE_TARGETS", "false")])
        .await;

    env.record_events(&tenant, 1, "invoice.paid").await;
    let refused = "SELECT count(*) FROM webhook_deliveries d JOIN events e ON e.id = d.event_id \
                   WHERE e.type = 'invoice.paid' AND d.status = 'failed'";
    wait_for("three refused deliveries", LIMIT, || async {
        env.scalar(refused).await == 3
    })
    .await;
    // (The endpoints also had each other's creation events; every one was refused too.)
    wait_for("every delivery to finish", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'pending'")
            .await
            == 0
    })
    .await;
    assert_eq!(receiver.count(), 0, "nothing reached the receiver");
    let errors: Vec<String> = sqlx::query_scalar("SELECT error FROM webhook_attempts")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(errors.len() >= 3);
    for e in &errors {
        assert!(e.contains("internal"), "{e}");
    }
    let by_resolver: i64 = env
        .scalar("SELECT count(*) FROM webhook_attempts WHERE error LIKE 'could not connect%internal address%'")
        .await;
    assert!(
        by_resolver >= 1,
        "the resolved-address check refused the named host: {errors:?}"
    );
    worker.stop().await;
}

#[tokio::test]
async fn the_seed_test_endpoint_reaches_the_configured_webhook() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("seedtest@example.com").await;
    let (status, config) = api
        .post(
            &tenant.sk_test,
            "/api/v1/auth/tenants/webhooks/config/",
            &json!({ "webhook_url": receiver.url }),
        )
        .await;
    assert_eq!(status, 200, "{config}");
    let secret = config["webhook_secret"].as_str().unwrap().to_owned();
    let worker = env.worker().await;
    let (status, test) = api
        .post(
            &tenant.sk_test,
            "/api/v1/auth/tenants/webhooks/test/",
            &json!({}),
        )
        .await;
    assert_eq!(status, 202, "{test}");
    wait_for("the test webhook", LIMIT, || async {
        receiver
            .hits()
            .iter()
            .any(|h| h.json()["type"] == "webhook.test")
    })
    .await;
    let hit = receiver
        .hits()
        .into_iter()
        .find(|h| h.json()["type"] == "webhook.test")
        .unwrap();
    assert_eq!(hit.webhook_id(), test["delivery_id"].as_str().unwrap());
    verify_with_standardwebhooks(&secret, &hit).expect("verifies with the configured secret");
    worker.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed_and_count_as_failures() {
    let env = Env::new(&[("WEBHOOK_RETRY_SCHEDULE", "none")]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.answer(302);
    let tenant = api.register("redirect@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;
    env.record_events(&tenant, 1, "invoice.paid").await;
    wait_for("the delivery to fail", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'")
            .await
            == 1
    })
    .await;
    assert_eq!(receiver.count(), 1, "the Location was not followed");
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_attempts WHERE status_code = 302")
            .await,
        1
    );
    worker.stop().await;
}

#[tokio::test]
async fn only_the_first_4_kib_of_an_answer_are_kept() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.body_len(200_000);
    let tenant = api.register("bigbody@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;
    env.record_events(&tenant, 1, "invoice.paid").await;
    wait_for("the delivery", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            .await
            == 1
    })
    .await;
    assert_eq!(
        env.scalar("SELECT max(length(response_body))::bigint FROM webhook_attempts")
            .await,
        4096
    );
    worker.stop().await;
}

/// Retention counts from when an event was recorded (its id), not from the time it shows: a
/// test clock's events show the clock's time, which may be long past or years ahead.
#[tokio::test]
async fn events_recorded_before_the_retention_are_deleted_with_their_deliveries() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    let tenant = api.register("retention@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let scope = env.scope(&tenant).await;
    let now = chrono::Utc::now();
    let recorded_at = |at: chrono::DateTime<chrono::Utc>, n: u8| {
        let millis = u64::try_from(at.timestamp_millis()).expect("after 1970");
        shared::ids::EventId::from_uuid(
            uuid::Builder::from_unix_timestamp_millis(millis, &[n; 10]).into_uuid(),
        )
    };
    let event = |n: i64| NewEvent::new("invoice.paid", json!({ "object": "thing", "n": n }));
    let (old, kept) = ([event(0), event(1)], event(2));
    let mut tx = env.pool.begin().await.expect("begin");
    // Two recorded 31 days ago, showing today (a clock moved ahead) ...
    let ids = [
        recorded_at(now - chrono::Duration::days(31), 1),
        recorded_at(now - chrono::Duration::days(31), 2),
    ];
    shared::db::events::record_with_ids(&mut tx, &ids, &[(scope, &old[0]), (scope, &old[1])], now)
        .await
        .expect("record");
    // ... and one recorded today, showing a year ago (a clock frozen in the past).
    shared::db::events::record_with_ids(
        &mut tx,
        &[recorded_at(now, 3)],
        &[(scope, &kept)],
        now - chrono::Duration::days(365),
    )
    .await
    .expect("record");
    tx.commit().await.expect("commit");
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_deliveries").await,
        3
    );
    let cutoff = now - chrono::Duration::days(30);
    let purged = shared::db::events::purge_older_than(&env.pool, cutoff, 1000)
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(
        env.scalar("SELECT count(*) FROM events WHERE type = 'invoice.paid'")
            .await,
        1
    );
    assert_eq!(
        env.scalar(
            "SELECT count(*) FROM events WHERE type = 'invoice.paid' \
             AND data->'object'->>'n' = '2'"
        )
        .await,
        1
    );
    assert_eq!(
        env.scalar("SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(env.scalar("SELECT count(*) FROM jobs").await, 1);
}

#[tokio::test]
async fn an_answer_with_a_nul_byte_is_recorded_and_holds_back_no_other_delivery() {
    let env = Env::new(&[]).await;
    let api = env.api().await;
    let receiver = Receiver::start().await;
    receiver.body("ok\u{0}ok");
    let tenant = api.register("nul@example.com").await;
    api.endpoint(&tenant.sk_test, &receiver.url).await;
    let worker = env.worker().await;
    env.record_events(&tenant, 20, "invoice.paid").await;
    wait_for("every delivery recorded", LIMIT, || async {
        env.scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'succeeded'")
            .await
            == 20
    })
    .await;
    let body: String = sqlx::query_scalar("SELECT response_body FROM webhook_attempts LIMIT 1")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(body, "ok\u{FFFD}ok");
    worker.stop().await;
}
