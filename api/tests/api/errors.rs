use reqwest::{Method, StatusCode};
use serde_json::json;
use sha2::Digest;

use crate::helpers::{Cred, PASSWORD, assert_problem, spawn_app, spawn_app_with};

const REGISTER: &str = "/api/v1/auth/tenants/register";

#[tokio::test]
async fn malformed_json_is_a_400_problem_and_writes_nothing() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url(REGISTER))
        .header("content-type", "application/json")
        .body("{\"company_name\": ")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_json").await;
    let resp = app
        .client
        .post(app.url(REGISTER))
        .header("content-type", "application/json")
        .body("")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_body").await;
    let resp = app
        .client
        .post(app.url(REGISTER))
        .header("content-type", "application/json")
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "validation_failed").await;
    assert_eq!(app.count("tenants").await, 0);
}

#[tokio::test]
async fn a_missing_or_wrong_content_type_is_a_415_problem() {
    let app = spawn_app().await;
    let body = json!({"company_name": "A", "email": "a@b.com", "password": PASSWORD}).to_string();
    let resp = app
        .client
        .post(app.url(REGISTER))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let resp = app
        .client
        .post(app.url(REGISTER))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(app.count("tenants").await, 0);
}

#[tokio::test]
async fn oversize_bodies_are_a_413_problem() {
    let app = spawn_app_with(&[("MAX_BODY_BYTES", "1024")]).await;
    let big = json!({"company_name": "x".repeat(4096), "email": "a@b.com", "password": PASSWORD});
    let resp = app.post(REGISTER, &Cred::None, &big).await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    // Without a Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(big.to_string())];
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = app
        .client
        .post(app.url(REGISTER))
        .header("content-type", "application/json")
        .body(stream)
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
    assert_eq!(app.count("tenants").await, 0);
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let app = spawn_app().await;
    assert_problem(
        app.get("/api/v1/nothing-here", &Cred::None).await,
        StatusCode::NOT_FOUND,
        "route_not_found",
    )
    .await;
    let resp = app
        .send(
            Method::PUT,
            "/api/v1/auth/tenants/register",
            &Cred::None,
            None,
        )
        .await;
    assert_problem(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    let resp = app
        .send(
            Method::GET,
            "/api/v1/auth/tenants/login/",
            &Cred::None,
            None,
        )
        .await;
    assert_eq!(resp.headers()["allow"], "POST");
    assert_problem(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
    // A path with an id names the methods of its template.
    let resp = app
        .send(
            Method::PUT,
            "/api/v1/products/prod_01m80000000000000000000000",
            &Cred::None,
            None,
        )
        .await;
    assert_eq!(resp.headers()["allow"], "DELETE, GET, PATCH, HEAD");
    assert_problem(resp, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed").await;
}

#[tokio::test]
async fn seed_paths_work_with_and_without_a_trailing_slash() {
    let app = spawn_app().await;
    let t = app.register("slash@acme.com").await;
    for path in [
        "/api/v1/auth/tenants/verify",
        "/api/v1/auth/tenants/verify/",
    ] {
        assert_eq!(
            app.get(path, &t.sk_test()).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
}

#[tokio::test]
async fn wrong_query_types_name_the_parameter() {
    let app = spawn_app().await;
    let t = app.register("query@acme.com").await;
    let resp = app.get("/api/v1/users?limit=many", &t.jwt()).await;
    let p = assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_parameter").await;
    assert_eq!(p["field"], "limit");
}

#[tokio::test]
async fn bad_authorization_headers_are_401_problems() {
    let app = spawn_app().await;
    for header in ["Bearer", "Bearer ", "Token abc", "sk_test_x"] {
        let resp = app
            .client
            .get(app.url("/api/v1/users"))
            .header("Authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{header}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    let resp = app
        .client
        .get(app.url("/api/v1/users"))
        .header("X-API-Key", "")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "invalid_api_key").await;
}

#[tokio::test]
async fn no_client_input_produces_a_500() {
    let app = spawn_app().await;
    let t = app.register("fuzz@acme.com").await;
    let bodies = [
        "null",
        "1",
        "\"s\"",
        "{}",
        "{\"email\": null}",
        "{\"email\": []}",
        "{\"password\": {}}",
        "\u{0000}",
        "{\"a\":1e999}",
    ];
    let paths = [
        (Method::POST, REGISTER),
        (Method::POST, "/api/v1/auth/tenants/login"),
        (Method::POST, "/api/v1/auth/tenants/token/refresh"),
        (Method::POST, "/api/v1/auth/tenants/change-password"),
        (Method::POST, "/api/v1/users"),
        (
            Method::PATCH,
            "/api/v1/users/usr_01m80000000000000000000000",
        ),
        (Method::POST, "/api/v1/auth/tenants/api-keys/regenerate"),
        (Method::DELETE, "/api/v1/auth/tenants/api-keys/revoke"),
    ];
    for (method, path) in paths {
        for body in bodies {
            let resp = app
                .req(method.clone(), path, &t.jwt())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert!(
                status.is_client_error(),
                "{method} {path} {body:?} -> {status}"
            );
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
        }
    }
    assert_eq!(app.count("tenants").await, 1);
    assert_eq!(app.count("users").await, 1);
}

#[tokio::test]
async fn a_json_body_with_text_after_it_is_a_400_problem_and_writes_nothing() {
    let app = spawn_app().await;
    let t = app.register("trailing@acme.com").await;
    for body in [
        r#"{"name": "Twice"} xyz"#,
        r#"{"name": "Twice"}{"name": "Again"}"#,
    ] {
        let resp = app
            .req(Method::POST, "/api/v1/products", &t.sk_test())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_json").await;
    }
    assert_eq!(app.count("products").await, 0);
}

#[tokio::test]
async fn without_a_stripe_webhook_secret_stripe_events_are_refused_as_unverifiable() {
    // No STRIPE_WEBHOOK_SECRETS here: a caller cannot tell that from a wrong signature.
    let app = spawn_app().await;
    let body = r#"{"id": "evt_1", "type": "account.updated", "created": 1}"#;
    let now = chrono::Utc::now().timestamp();
    let signed = format!(
        "t={now},v1={}",
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    for header in [None, Some(signed.as_str())] {
        let mut rb = app
            .client
            .post(app.url("/webhooks/stripe"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(h) = header {
            rb = rb.header("stripe-signature", h);
        }
        let resp = rb.send().await.unwrap();
        assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_signature").await;
    }
    assert_eq!(app.count("stripe_events").await, 0);
}

/// Sends raw bytes and reads the whole answer (the server closes after refusing).
async fn raw(app: &crate::helpers::TestApp, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let conn = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = conn.into_split();
    // The server may answer and close before it has read the whole request: write on the side
    // while reading the answer.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        reader.read_to_end(&mut out),
    )
    .await;
    writing.abort();
    assert!(
        read.is_ok(),
        "no end of the answer within 10 s; got so far: {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn requests_the_server_cannot_parse_get_problem_json_too() {
    let app = spawn_app().await;
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(500_000)
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(70_000));
    for (request, status, code) in [
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (big.into_bytes(), 431, "request_headers_too_large"),
        (long.into_bytes(), 414, "uri_too_long"),
    ] {
        let answer = raw(&app, &request).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
        assert!(
            head.to_lowercase()
                .contains("content-type: application/problem+json"),
            "{head}"
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], status);
        assert_eq!(problem["code"], code);
    }
    // The connections of well-formed requests are untouched.
    let answer = raw(
        &app,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}
