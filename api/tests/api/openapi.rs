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
