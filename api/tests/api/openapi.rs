use serde_json::Value;

/// The checked-in document must equal the generated one: run `billing-api openapi` (or
/// `scripts/openapi`) after changing the API.
#[test]
fn the_checked_in_openapi_document_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let checked_in = std::fs::read_to_string(path).expect("openapi/openapi.json exists");
    let generated = api::routes::spec_json();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is stale: run scripts/openapi"
    );
}

#[test]
fn both_security_schemes_are_declared_and_every_operation_is_documented() {
    let spec: Value = serde_json::from_str(&api::routes::spec_json()).unwrap();
    let schemes = &spec["components"]["securitySchemes"];
    assert_eq!(schemes["ApiKeyAuth"]["type"], "apiKey");
    assert_eq!(schemes["ApiKeyAuth"]["name"], "X-API-Key");
    assert_eq!(schemes["BearerAuth"]["type"], "http");
    assert_eq!(schemes["BearerAuth"]["scheme"], "bearer");
    let mut operations = 0;
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let name = format!("{method} {path}");
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{name} has no summary"
            );
            assert!(
                op["tags"].as_array().is_some_and(|t| !t.is_empty()),
                "{name} has no tags"
            );
            let responses = op["responses"].as_object().unwrap();
            for status in ["400", "401", "404", "500"] {
                let r = &responses[status];
                assert!(
                    r["content"]["application/problem+json"].is_object(),
                    "{name} lacks {status}"
                );
            }
            // Reached without a credential: registration and login, Stripe's return from
            // onboarding (its `state` proves the tenant) and Stripe's signed webhooks.
            let public = [
                "tenants.register",
                "tenants.login",
                "tenants.token_refresh",
                "stripe.callback",
                "stripe.webhook",
            ];
            if !public.contains(&op["operationId"].as_str().unwrap_or("")) {
                assert!(
                    op["security"].as_array().is_some_and(|s| s.len() == 2),
                    "{name} lacks security"
                );
            }
        }
    }
    assert!(operations >= 18, "{operations} operations");
}

/// `st` (schemathesis), installed next to the test Python by the test command.
fn schemathesis() -> std::path::PathBuf {
    let python = std::env::var("TEST_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../.local/venv/bin/python").into()
    });
    let st = std::path::Path::new(&python).with_file_name("st");
    assert!(
        st.exists(),
        "schemathesis is not installed at {}: run the test command (scripts/test)",
        st.display()
    );
    st
}

/// Runs schemathesis over the running API's document with one credential; returns whether it
/// found nothing, and its report.
fn property_test(
    st: &std::path::Path,
    base: &str,
    credential: &str,
    only_tags: &[&str],
) -> (bool, String) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis");
    let reports = std::env::temp_dir().join(format!("schemathesis-{}", std::process::id()));
    let mut cmd = std::process::Command::new(st);
    cmd.current_dir(std::env::temp_dir())
        .env("PYTHONPATH", dir)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .arg("--no-color")
        .arg("--config-file")
        .arg(format!("{dir}/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {credential}"))
        // Reproducible: the same cases every run.
        .args(["--seed", "1", "--max-examples", "10", "--workers", "1"])
        .arg("--report-dir")
        .arg(&reports);
    for tag in only_tags {
        cmd.args(["--include-tag", tag]);
    }
    let out = cmd.output().expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// The whole document against the running API, by a property-based tester: no 5xx, every
/// response as its schema says (status, content type, headers, body), `Allow` on 405, and what
/// the schemas call valid is accepted (see `tests/schemathesis/schemathesis.toml` for the
/// checks and the few rules a schema cannot state).
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_response_that_breaks_its_schema() {
    let st = schemathesis();
    let app = crate::helpers::spawn_app().await;
    let t = app.register("schemathesis@acme.com").await;
    let base = format!("http://{}", app.addr);
    // A secret key over every operation (it cannot touch keys, users or its own access).
    let (ok, report) = tokio::task::spawn_blocking({
        let (st, base, key) = (st.clone(), base.clone(), t.sk_test.clone());
        move || property_test(&st, &base, &key, &[])
    })
    .await
    .unwrap();
    assert!(ok, "schemathesis with a secret key:\n{report}");
    // The owner's token over what only users reach.
    let (ok, report) = tokio::task::spawn_blocking(move || {
        property_test(
            &st,
            &base,
            &t.access,
            &["Auth", "ApiKeys", "Users", "AuditLog", "Stripe"],
        )
    })
    .await
    .unwrap();
    assert!(ok, "schemathesis with the owner's token:\n{report}");
}
