use reqwest::StatusCode;

use crate::helpers::{assert_problem, spawn_app_with};

#[tokio::test]
async fn requests_over_the_per_key_limit_get_429_with_retry_after() {
    let app = spawn_app_with(&[("RATE_LIMIT_PER_SECOND", "3")]).await;
    let t = app.register("rl@acme.com").await;
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..10 {
        let resp = app.get("/api/v1/auth/tenants/verify", &t.sk_test()).await;
        statuses.push(resp.status());
        if resp.status() == StatusCode::TOO_MANY_REQUESTS && limited.is_none() {
            limited = Some(resp);
        }
    }
    // Ten requests span at most two one-second windows: at most six pass.
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!((3..=6).contains(&ok), "{statuses:?}");
    let resp = limited.expect("some requests were limited");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry));
    assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // Other keys have their own budget.
    assert_eq!(
        app.get("/api/v1/auth/tenants/verify", &t.sk_live())
            .await
            .status(),
        StatusCode::OK
    );
}
