//! `Idempotency-Key` on every POST: the same key again, from the same caller on the same
//! route with the same body, gets the first answer back and appends nothing.
//!
//! The key is claimed (inserted with no answer) before the handler runs, so two concurrent
//! requests with one key cannot both execute: the second gets 409 `idempotency_in_progress`.
//! Answers below 500 are stored; after a 5xx the claim is released so a retry can run. A
//! claim left by a process that died mid-request is taken over after a minute.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use events::http::Problem;
use sha2::{Digest, Sha256};

use crate::AppState;

/// The request header.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Set on a replayed answer.
pub static REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Largest body buffered for hashing (the largest route limit: a logo upload).
const MAX_BUFFERED: usize = 3 * 1024 * 1024;
/// Response headers kept with a stored answer.
const KEPT_HEADERS: [HeaderName; 3] = [header::CONTENT_TYPE, header::ETAG, header::LOCATION];

/// The middleware.
pub async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = req.headers().get(&IDEMPOTENCY_KEY).cloned() else {
        return next.run(req).await;
    };
    let key = match key.to_str() {
        Ok(k) if (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()) => {
            k.to_owned()
        }
        _ => {
            return Problem::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 visible ASCII characters.",
            )
            .into_response()
        }
    };
    let caller = bearer_subject(&state, req.headers()).unwrap_or_else(|| "anonymous".to_owned());
    let scope = format!("{caller} {}", req.uri().path());
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, MAX_BUFFERED).await {
        Ok(b) => b,
        Err(_) => {
            return Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is too large.",
            )
            .into_response()
        }
    };
    let mut hasher = Sha256::new();
    hasher.update(parts.method.as_str());
    hasher.update([0]);
    hasher.update(parts.uri.path());
    hasher.update([0]);
    hasher.update(
        parts
            .headers
            .get(header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default(),
    );
    hasher.update([0]);
    hasher.update(&bytes);
    let hash = hasher.finalize().to_vec();

    match claim(&state, &scope, &key, &hash).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Replay(response)) => return response,
        Ok(Claim::Refused(problem)) => return problem.into_response(),
        Err(e) => return Problem::unavailable(&e).into_response(),
    }

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return Problem::internal(&e).into_response(),
    };
    let outcome = if parts.status.is_server_error() {
        sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
            .bind(&scope)
            .bind(&key)
            .execute(&state.pool)
            .await
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = KEPT_HEADERS
            .iter()
            .filter_map(|h| {
                let v = parts.headers.get(h)?.to_str().ok()?;
                Some((h.as_str().to_owned(), serde_json::Value::from(v)))
            })
            .collect();
        sqlx::query("UPDATE idempotency_keys SET status = $3, headers = $4, body = $5 WHERE scope = $1 AND key = $2")
            .bind(&scope)
            .bind(&key)
            .bind(parts.status.as_u16() as i16)
            .bind(serde_json::Value::Object(headers))
            .bind(body.as_ref())
            .execute(&state.pool)
            .await
    };
    if let Err(e) = outcome {
        // The command ran; only its replay record is missing. Answer it anyway.
        tracing::warn!(error = %e, "could not record the idempotent answer");
    }
    Response::from_parts(parts, Body::from(body))
}

/// A stored key: its request's hash, and the answer once there is one.
#[derive(sqlx::FromRow)]
struct Stored {
    request_hash: Vec<u8>,
    status: Option<i16>,
    headers: Option<serde_json::Value>,
    body: Option<Vec<u8>>,
    /// Claimed over a minute ago and still unanswered: its process died.
    abandoned: bool,
}

enum Claim {
    Claimed,
    Replay(Response),
    Refused(Problem),
}

async fn claim(
    state: &AppState,
    scope: &str,
    key: &str,
    hash: &[u8],
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Claimed);
    }
    let row: Option<Stored> = sqlx::query_as(
        "SELECT request_hash, status, headers, body, created_at < now() - interval '1 minute' AS abandoned
           FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    let Some(Stored {
        request_hash: stored_hash,
        status,
        headers,
        body,
        abandoned,
    }) = row
    else {
        // Released between our insert and select (the first request failed): claim again.
        return Box::pin(claim(state, scope, key, hash)).await;
    };
    if stored_hash != hash {
        return Ok(Claim::Refused(Problem::unprocessable(
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request.",
        )));
    }
    let Some(status) = status else {
        if abandoned {
            let taken = sqlx::query(
                "UPDATE idempotency_keys SET created_at = now()
                  WHERE scope = $1 AND key = $2 AND status IS NULL AND created_at < now() - interval '1 minute'",
            )
            .bind(scope)
            .bind(key)
            .execute(&state.pool)
            .await?
            .rows_affected();
            if taken == 1 {
                return Ok(Claim::Claimed);
            }
        }
        return Ok(Claim::Refused(Problem::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "A request with this Idempotency-Key is still being processed.",
        )));
    };
    let mut response = Response::new(Body::from(body.unwrap_or_default()));
    *response.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK);
    let mut map = HeaderMap::new();
    if let Some(serde_json::Value::Object(headers)) = headers {
        for (name, value) in headers {
            if let (Ok(n), Some(Ok(v))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                map.insert(n, v);
            }
        }
    }
    map.insert(REPLAYED.clone(), HeaderValue::from_static("true"));
    response.headers_mut().extend(map);
    Ok(Claim::Replay(response))
}

fn bearer_subject(state: &AppState, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (_, token) = value.split_once(' ')?;
    state
        .tokens
        .verify(token.trim())
        .ok()
        .map(|p| p.user_id().to_owned())
}
