//! Conditional reads (RFC 9110 §13): every `200` JSON answer to a `GET` carries a strong
//! `ETag` computed from its bytes, and a `GET` whose `If-None-Match` names the answer's tag
//! is answered `304 Not Modified` without a body.
//!
//! The tag is computed from the bytes, not taken from a version, because an answer shows more
//! than one aggregate: a thread's messages carry their WhatsApp delivery status and media
//! links that expire, an inbox page shows many threads. A version-based tag would answer 304
//! for an answer that changed; a tag of the bytes cannot. The version an answer reflects is
//! in `X-Read-Version`. FNV-1a (64 bits) with the length: a few microseconds for a page, and
//! two different answers of one URL share a tag with odds of about 2⁻⁶⁴. An answer that
//! carries the time it was made (the inbox's `as_of`) is never the same twice, so it never
//! gets a 304; answers over 8 MiB go untagged.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, ETAG, IF_NONE_MATCH, VARY};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use events::http::Problem;

/// Answers larger than this, or of no known length, are passed through untagged (an audit
/// page of a thousand large events can pass it).
const TAGGED_AT_MOST: u64 = 8 * 1024 * 1024;

/// The middleware.
pub async fn respond(request: Request, next: Next) -> Response {
    if request.method() != Method::GET {
        return next.run(request).await;
    }
    let wanted: Vec<HeaderValue> = request
        .headers()
        .get_all(IF_NONE_MATCH)
        .iter()
        .cloned()
        .collect();
    let response = next.run(request).await;
    let small = response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n <= TAGGED_AT_MOST);
    if response.status() != StatusCode::OK || !is_json(response.headers()) || !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, TAGGED_AT_MOST as usize).await {
        Ok(bytes) => bytes,
        // An answer of known, bounded length that failed while being read.
        Err(e) => return Problem::unavailable(&e).into_response(),
    };
    let tag = entity_tag(&bytes);
    if let Ok(value) = HeaderValue::from_str(&tag) {
        parts.headers.insert(ETAG, value);
    }
    // The answer depends on who asks: a shared cache must not give one caller's to another.
    parts
        .headers
        .append(VARY, HeaderValue::from_static("authorization"));
    if wanted.iter().any(|w| matches_any(w, &tag)) {
        parts.status = StatusCode::NOT_MODIFIED;
        parts.headers.remove(CONTENT_TYPE);
        parts.headers.remove(CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Whether the answer is JSON (streams, files and redirects are passed through untouched).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// The strong tag of `bytes`: `"{length in hex}-{FNV-1a 64 in hex}"`.
pub fn entity_tag(bytes: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{:x}-{hash:016x}\"", bytes.len())
}

/// `If-None-Match` against `tag` with the weak comparison RFC 9110 asks of it: `*`, or any
/// listed tag equal to it once a `W/` prefix is set aside.
fn matches_any(wanted: &HeaderValue, tag: &str) -> bool {
    let Ok(wanted) = wanted.to_str() else {
        return false;
    };
    wanted.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.strip_prefix("W/").unwrap_or(candidate) == tag
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_follows_the_bytes_and_their_length() {
        assert_eq!(entity_tag(b""), "\"0-cbf29ce484222325\"");
        // FNV-1a 64 of "a", as published with the algorithm.
        assert_eq!(entity_tag(b"a"), "\"1-af63dc4c8601ec8c\"");
        assert_ne!(entity_tag(b"{\"a\":1}"), entity_tag(b"{\"a\":2}"));
    }

    #[tokio::test]
    async fn a_large_answer_goes_untagged_and_tags_on_several_lines_are_all_read() {
        use tower::ServiceExt;
        let router = axum::Router::new()
            .route(
                "/big",
                axum::routing::get(|| async {
                    axum::Json(serde_json::json!({ "s": "x".repeat(9 * 1024 * 1024) }))
                }),
            )
            .route(
                "/small",
                axum::routing::get(|| async { axum::Json(serde_json::json!({ "s": "x" })) }),
            )
            .layer(axum::middleware::from_fn(respond));
        let get = |path: &str, tags: &[&str]| {
            let mut request = Request::get(path);
            for tag in tags {
                request = request.header(IF_NONE_MATCH, *tag);
            }
            router
                .clone()
                .oneshot(request.body(Body::empty()).expect("request"))
        };
        let big = get("/big", &["*"]).await.expect("answered");
        assert_eq!(
            big.status(),
            StatusCode::OK,
            "answered in full, never refused"
        );
        assert!(big.headers().get(ETAG).is_none());
        let body = axum::body::to_bytes(big.into_body(), usize::MAX)
            .await
            .expect("body");
        assert!(body.len() > 9 * 1024 * 1024);
        let small = get("/small", &[]).await.expect("answered");
        let tag = small.headers()[ETAG].to_str().expect("ascii").to_owned();
        assert_eq!(small.headers()[VARY], "authorization");
        let again = get("/small", &["\"other\"", &tag]).await.expect("answered");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn if_none_match_takes_lists_weak_tags_and_the_star() {
        let tag = entity_tag(b"x");
        let header = |v: &str| HeaderValue::from_str(v).expect("header");
        assert!(matches_any(&header(&tag), &tag));
        assert!(matches_any(&header(&format!("\"other\", W/{tag}")), &tag));
        assert!(matches_any(&header("*"), &tag));
        assert!(!matches_any(&header("\"other\""), &tag));
        assert!(!matches_any(&header(&tag[1..]), &tag));
    }
}
