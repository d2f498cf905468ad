//! Shared plumbing of the query handlers (no context's rules live here).

use axum::response::IntoResponse;

/// `ETag` of every JSON answer, and `304` for `If-None-Match`.
pub mod conditional;
/// Filter values of list queries.
pub mod filters;
/// Read-your-writes: waiting (bounded) for a version a command answered with.
pub mod freshness;
/// Where the OpenAPI document comes from.
pub mod openapi;
/// Keyset pagination and `WHERE` clauses of the filters asked for.
pub mod page;
/// Whose rows a caller reads.
pub mod scope;

/// An answer whose JSON PostgreSQL built (`json_build_object`, times through `api_time`,
/// migration 0052), passed through as it came: no Rust value is built from the rows and
/// nothing is serialised again. Its shape is the documented type's (only the spacing differs
/// from serde's); a test holds each such answer to its
/// documented schema, field for field, and its instants to chrono's format.
pub fn prepared_json(body: String) -> axum::response::Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
