//! Docker cannot run here, so the compose file is checked for shape and references.

use std::path::Path;

use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

#[test]
fn compose_file_names_only_things_that_exist() {
    let text =
        std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    let mut doc: Value = serde_yaml::from_str(&text).expect("valid YAML");
    doc.apply_merge().expect("merge keys resolve");
    let services = doc["services"].as_mapping().expect("services");
    for name in ["postgres", "redis", "api", "worker"] {
        assert!(services.contains_key(name), "service {name} missing");
    }
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        if let Some(build) = svc.get("build") {
            let context = build.get("context").and_then(Value::as_str).unwrap_or(".");
            let dockerfile = build
                .get("dockerfile")
                .and_then(Value::as_str)
                .unwrap_or("Dockerfile");
            let ctx = root().join(context);
            assert!(ctx.is_dir(), "{name}: build context {context} missing");
            assert!(
                ctx.join(dockerfile).is_file(),
                "{name}: {dockerfile} missing"
            );
        }
        assert!(
            svc.get("healthcheck").is_some(),
            "{name} has no healthcheck"
        );
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for svc in ["api", "worker"] {
        let command: Vec<String> = services[svc]["command"]
            .as_sequence()
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let binary = command.first().expect("a command");
        assert!(
            dockerfile.contains(binary.as_str()),
            "{svc}: {binary} is not built by the Dockerfile"
        );
        let bin_name = binary.rsplit('/').next().unwrap();
        let manifest = if bin_name == "billing-api" {
            "api/Cargo.toml"
        } else {
            "worker/Cargo.toml"
        };
        let cargo = std::fs::read_to_string(root().join(manifest)).unwrap();
        assert!(
            cargo.contains(&format!("name = \"{bin_name}\"")),
            "{bin_name} is not a binary of {manifest}"
        );
    }
    assert!(
        services["worker"]
            .get("deploy")
            .and_then(|d| d.get("replicas"))
            .is_some(),
        "worker not scalable"
    );
    for svc in ["api", "worker"] {
        let env = &services[svc]["environment"];
        for var in ["DATABASE_URL", "REDIS_URL", "APP_SECRET"] {
            assert!(env.get(var).is_some(), "{svc} lacks {var}");
        }
    }
}
