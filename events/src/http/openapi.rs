//! The `/openapi.json` documents, generated from the code. Each handler declares its
//! operation with `#[utoipa::path]` (path, parameters, body, answers, security, and its doc
//! comment as summary and description); the types it takes and gives derive `ToSchema` or
//! `IntoParams`; contexts route their handlers through `utoipa_axum`'s `OpenApiRouter`, so a
//! route and its documentation are one line and cannot drift apart.
//!
//! What every operation shares follows from what it declares, so it is added here by rule
//! rather than repeated on a hundred handlers ([`finish`]): the problem+json answers (429,
//! 500 and 503 everywhere; 401 and 403 where a token is required; 400, 408, 413, 415 and
//! 422 where a body is read; 404 where a path names something; 400 where a query is read;
//! 400 and 409 where `If-Match` is honoured), the `Problem` schema and response, and the
//! bearer scheme.

use axum::extract::Extension;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// What a document says about its API.
#[derive(Debug, Clone, Copy)]
pub struct About {
    /// The API's name.
    pub title: &'static str,
    /// What holds for every operation.
    pub description: &'static str,
    /// Where a local instance listens.
    pub server: &'static str,
}

/// The serialised document, handed to [`document`] as a request extension.
#[derive(Debug, Clone)]
pub struct Document(pub Arc<str>);

impl Document {
    /// The serialised form of a finished document.
    pub fn new(doc: &Value) -> Self {
        Self(Arc::from(doc.to_string()))
    }
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object))
)]
pub async fn document(Extension(Document(doc)): Extension<Document>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.to_string(),
    )
        .into_response()
}

/// An error answer, for the statuses an operation documents beyond those [`finish`] adds by
/// rule: `(status = 429, response = ProblemAnswer)` refers to the shared `Problem` response.
pub struct ProblemAnswer;

impl<'r> utoipa::ToResponse<'r> for ProblemAnswer {
    fn response() -> (
        &'r str,
        utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
    ) {
        (
            "Problem",
            utoipa::openapi::response::Response::new("An error (see `code`).").into(),
        )
    }
}

/// Gives every operation of `router` that names no tag the context's name as its tag, and
/// prefixes every operation id (utoipa's default is the handler's name, which contexts
/// share: `list`, `create`) with the context's name, so ids are unique across the document.
pub fn tagged<S>(context: &str, mut router: OpenApiRouter<S>) -> OpenApiRouter<S>
where
    S: Send + Sync + Clone + 'static,
{
    for item in router.get_openapi_mut().paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.patch,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            if op.tags.as_ref().is_none_or(Vec::is_empty) {
                op.tags = Some(vec![context.to_owned()]);
            }
            if let Some(id) = &op.operation_id {
                op.operation_id = Some(format!("{context}_{id}"));
            }
        }
    }
    router
}

/// The HTTP methods an operation can sit under.
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every operation of a document, with its path and method.
pub fn operations_mut(doc: &mut Value) -> impl Iterator<Item = (String, &str, &mut Value)> {
    doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|paths| paths.iter_mut())
        .flat_map(|(path, item)| {
            let path = path.clone();
            item.as_object_mut()
                .into_iter()
                .flat_map(|methods| methods.iter_mut())
                .filter_map(move |(method, op)| {
                    METHODS
                        .iter()
                        .find(|m| **m == method.as_str())
                        .map(|m| (path.clone(), *m, op))
                })
        })
}

/// Whether an operation requires a bearer token.
pub fn requires_token(op: &Value) -> bool {
    op["security"]
        .as_array()
        .is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()))
}

/// Adds a parameter to an operation unless it already has one of that name.
pub fn add_parameter(op: &mut Value, parameter: Value) {
    let params = op
        .as_object_mut()
        .map(|o| o.entry("parameters").or_insert_with(|| json!([])));
    if let Some(Value::Array(params)) = params {
        if !params.iter().any(|p| p["name"] == parameter["name"]) {
            params.push(parameter);
        }
    }
}

/// Documents `status` as a problem answer unless the operation documents it already.
pub fn add_problem(op: &mut Value, status: u16) {
    if let Some(responses) = op["responses"].as_object_mut() {
        responses
            .entry(status.to_string())
            .or_insert_with(|| json!({"$ref": "#/components/responses/Problem"}));
    }
}

/// The problem answers an operation can give, from what it declares.
fn problem_statuses(op: &Value) -> Vec<u16> {
    // 429 `too_many_concurrent_requests`: the in-flight limit of a token or an address.
    let mut statuses = vec![429, 500, 503];
    let params: Vec<&Value> = op["parameters"].as_array().into_iter().flatten().collect();
    let has = |place: &str| params.iter().any(|p| p["in"] == place);
    if requires_token(op) {
        statuses.extend([401, 403]);
    }
    if op.get("requestBody").is_some() {
        // 408 `request_timeout`: a body that trickles in past its deadline.
        statuses.extend([400, 408, 413, 415, 422]);
    }
    if has("path") {
        statuses.push(404);
    }
    if has("query") {
        statuses.push(400);
    }
    if params.iter().any(|p| p["name"] == "If-Match") {
        // 400 `invalid_if_match`, 409 `version_conflict`.
        statuses.extend([400, 409]);
    }
    statuses
}

/// Merges `part` (a document of some routes) into `doc`.
pub fn merge(doc: &mut Value, part: Value) {
    let Value::Object(part) = part else { return };
    for (key, value) in part {
        match (doc.get_mut(&key), value) {
            (Some(Value::Object(mine)), Value::Object(theirs)) if key != "info" => {
                merge_maps(mine, theirs)
            }
            (_, value) => doc[&key] = value,
        }
    }
}

fn merge_maps(mine: &mut Map<String, Value>, theirs: Map<String, Value>) {
    for (key, value) in theirs {
        match (mine.get_mut(&key), value) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_maps(a, b),
            (_, value) => {
                mine.insert(key, value);
            }
        }
    }
}

/// A router's document as JSON.
pub fn to_value(api: &OpenApi) -> Value {
    serde_json::to_value(api).unwrap_or_else(|_| json!({}))
}

/// The finished document: `doc` (the merged documents of every router) with its `info`, its
/// server, the shared components and the problem answers every operation can give.
pub fn finish(mut doc: Value, about: &About) -> Value {
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({
        "title": about.title,
        "version": env!("CARGO_PKG_VERSION"),
        "description": about.description,
    });
    doc["servers"] = json!([{"url": about.server}]);
    for (_, _, op) in operations_mut(&mut doc) {
        for status in problem_statuses(op) {
            add_problem(op, status);
        }
    }
    let problem = serde_json::to_value(<super::problem::Body as utoipa::PartialSchema>::schema())
        .unwrap_or_else(|_| json!({}));
    let components = &mut doc["components"];
    components["schemas"]["Problem"] = problem;
    components["responses"]["Problem"] = json!({
        "description": "An error (see `code`).",
        "content": {
            (super::problem::PROBLEM_JSON): {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    });
    components["securitySchemes"]["bearer"] = json!({
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": BEARER,
    });
    doc
}

/// What a bearer token is and how it is checked.
const BEARER: &str = "HS256 JWT signed with NEST_AUTH_SECRET; claims sub, tenant_id, role \
(super_admin | tenant_admin | agent | customer), sid (the session), iat, exp, and iss \
`platform-identity` and aud `platform-api` (both required). Every request checks the token \
against the current state: a token whose session ended (logout, password change or reset, \
refresh-token reuse, deactivation, role change), or whose user is deactivated or has another \
role, answers 401 `token_revoked` (sign in again); a token of a suspended tenant answers 403 \
`tenant_suspended`; a revocation takes effect in every process within a second. 503 \
`unavailable` while revocations cannot be vouched for (PostgreSQL unreachable).";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_gets_the_problem_answers_its_declarations_imply() {
        let doc = json!({"paths": {
            "/v1/things/{id}": {"post": {
                "parameters": [
                    {"name": "id", "in": "path"},
                    {"name": "If-Match", "in": "header"}
                ],
                "requestBody": {},
                "security": [{"bearer": []}],
                "responses": {"200": {"description": "done"}, "422": {"description": "mine"}}
            }},
            "/open": {"get": {"responses": {"200": {"description": "done"}}}}
        }});
        let about = About {
            title: "t",
            description: "d",
            server: "http://localhost",
        };
        let doc = finish(doc, &about);
        let post = &doc["paths"]["/v1/things/{id}"]["post"]["responses"];
        let mut statuses: Vec<&String> = post.as_object().expect("map").keys().collect();
        statuses.sort();
        assert_eq!(
            statuses,
            [
                "200", "400", "401", "403", "404", "408", "409", "413", "415", "422", "429", "500",
                "503"
            ]
        );
        assert_eq!(
            post["422"]["description"], "mine",
            "declared answers are kept"
        );
        let get = &doc["paths"]["/open"]["get"]["responses"];
        let mut statuses: Vec<&String> = get.as_object().expect("map").keys().collect();
        statuses.sort();
        assert_eq!(statuses, ["200", "429", "500", "503"]);
        assert_eq!(doc["components"]["schemas"]["Problem"]["type"], "object");
    }
}
