//! query-api's `/openapi.json`, generated from the contexts' routers (see
//! `events::http::openapi` for how).

use axum::{Extension, Router};
use events::http::openapi::{self, About, Document};
use serde_json::Value;
use utoipa_axum::routes;

use crate::AppState;

/// What the document says of the API as a whole.
pub const ABOUT: About = About {
    title: "query-api",
    description: "The read side: read models built by the projector, and the event store for \
audits. Errors are application/problem+json with a stable `code`. A read that names \
`min_version` (or `X-Min-Version`) waits, bounded, until the read model reflects that version \
of the aggregate a command answered with (`X-Read-Version` says which it reflects). Every 200 JSON answer to a GET carries a strong `ETag` of its bytes; a GET whose `If-None-Match` names it is answered 304 without a body.",
    server: "http://localhost:3002",
};

/// Every route, and `/openapi.json` serving their document.
pub(crate) fn routes() -> Router<AppState> {
    let (router, doc) = parts();
    router.layer(Extension(Document::new(&doc)))
}

/// The finished document.
pub fn document() -> Value {
    parts().1
}

fn parts() -> (Router<AppState>, Value) {
    let (router, api) = crate::Contexts::routes()
        .routes(routes!(events::http::live))
        .routes(routes!(crate::ready))
        .routes(routes!(crate::metrics))
        .routes(routes!(events::http::openapi::document))
        .split_for_parts();
    (router, openapi::finish(openapi::to_value(&api), &ABOUT))
}
