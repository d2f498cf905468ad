//! Both `/openapi.json` documents are generated from the routers: they are valid OpenAPI
//! 3.1, every operation in them is routed, and every operation says what it is, what it
//! answers and which problems it can give.

use serde_json::Value;

use crate::support::{py, TestEnv};

/// Validates a document with the reference validator (openapi-spec-validator).
fn validate(doc: &Value) {
    let out = py(
        "import json, sys\n\
         from openapi_spec_validator import validate\n\
         validate(json.load(sys.stdin))\n\
         print('valid')",
        &doc.to_string(),
        &[],
    );
    assert_eq!(out, "valid");
}

/// Every operation of a document, as (method, path, operation).
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                all.push((method.clone(), path.clone(), op.clone()));
            }
        }
    }
    all
}

/// What every operation must say.
fn assert_complete(name: &str, doc: &Value) {
    let ops = operations(doc);
    assert!(ops.len() > 30, "{name}: only {} operations", ops.len());
    for (method, path, op) in &ops {
        let at = format!("{name} {method} {path}");
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{at}: no summary"
        );
        assert!(op["tags"][0].is_string(), "{at}: no tag");
        let responses = op["responses"].as_object().expect("responses");
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{at}: no success answer"
        );
        for status in ["500", "503"] {
            assert_eq!(
                responses[status]["$ref"], "#/components/responses/Problem",
                "{at}: {status} is not a problem"
            );
        }
        if op["security"][0]["bearer"].is_array() {
            assert!(responses.contains_key("401"), "{at}: secured without 401");
        }
        for param in op["parameters"].as_array().into_iter().flatten() {
            if param["in"] == "path" {
                assert!(
                    path.contains(&format!("{{{}}}", param["name"].as_str().expect("name"))),
                    "{at}: path parameter {param} not in the path"
                );
            }
        }
        for segment in path.split('/').filter(|s| s.starts_with('{')) {
            let name = segment.trim_matches(|c| c == '{' || c == '}');
            assert!(
                op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == name),
                "{at}: {name} is not documented"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["components"]["schemas"]["Problem"]["type"], "object");
}

#[test]
fn both_documents_are_valid_and_complete() {
    let command = command_api::http::openapi::document();
    let query = query_api::http::openapi::document();
    validate(&command);
    validate(&query);
    assert_complete("command-api", &command);
    assert_complete("query-api", &query);
    // What only command-api adds by rule: Idempotency-Key on the POSTs the idempotency
    // layer serves (a token's routes and sign-up), not on sign-in or provider webhooks.
    let post = |path: &str| command["paths"][path]["post"].clone();
    let keyed = |op: &Value| {
        op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["name"] == "Idempotency-Key")
    };
    assert!(keyed(&post("/v1/chat/threads")));
    assert!(keyed(&post("/v1/tenants/signup")));
    assert!(!keyed(&post("/auth/admin/login")));
    assert!(!keyed(&post("/api/webhooks/stripe")));
}

/// A concrete path for a documented one: every parameter becomes a fresh UUID.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|s| {
            if s.starts_with('{') {
                uuid::Uuid::now_v7().to_string()
            } else {
                s.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Asks every documented operation of `doc` on `base` without credentials or body: the
/// router must know the path and the method (an unrouted path answers 404 "No such route.",
/// an unrouted method 405).
async fn assert_routed(env: &TestEnv, name: &str, base: &str, doc: &Value) {
    for (method, path, _) in operations(doc) {
        if path == "/v1/stream" {
            continue; // An endless SSE stream: asked for, it never ends.
        }
        let url = format!("{base}{}", concrete(&path));
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("m");
        let response = env
            .http
            .request(method.clone(), &url)
            .send()
            .await
            .expect("sent");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_ne!(status, 405, "{name} {method} {path} is not routed");
        assert!(
            !(status == 404 && body.contains("No such route.")),
            "{name} {method} {path} is not routed"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_the_served_document_is_the_generated_one() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    for (name, base, generated) in [
        (
            "command-api",
            api.url(""),
            command_api::http::openapi::document(),
        ),
        (
            "query-api",
            query.url(""),
            query_api::http::openapi::document(),
        ),
    ] {
        let served: Value = env
            .http
            .get(format!("{base}/openapi.json"))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        assert_eq!(served, generated, "{name} serves its generated document");
        assert_routed(&env, name, &base, &served).await;
    }
    query.stop().await;
    api.stop().await;
}
