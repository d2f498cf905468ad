//! `Idempotency-Key` on every POST: the same key again, from the same caller on the same
//! route with the same body, gets the first answer back and appends nothing.
//!
//! - The key is claimed (inserted with no answer, with the request id) before the handler
//!   runs, so two concurrent requests with one key cannot both execute: the second gets 409
//!   `idempotency_in_progress`.
//! - The handler runs in its own task, so a client that hangs up cannot cancel a command
//!   halfway between its commit and the stored answer.
//! - Answers are stored, except 5xx and 409 `contention`, which are transient: the claim is
//!   then released. A claim left by a process that died is taken over after a minute.
//! - Whoever takes a claim over first looks in the event store for events carrying the
//!   earlier request id: if that request committed, its answer is rebuilt from them and
//!   replayed, and the command does not run again.

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use events::http::{Problem, RequestIds};
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

    let request_id = parts
        .extensions
        .get::<RequestIds>()
        .map(|ids| ids.request_id.clone())
        .unwrap_or_else(events::envelope::new_id);
    match claim(&state, &scope, &key, &hash, &request_id).await {
        Ok(Claim::Claimed) => {}
        Ok(Claim::Replay(response)) => return response,
        Ok(Claim::Refused(problem)) => return problem.into_response(),
        Err(e) => return Problem::unavailable(&e).into_response(),
    }

    // Everything from here runs in its own task: a client that hangs up must not cancel a
    // command between its commit and the record of its answer.
    let request = Request::from_parts(parts, Body::from(bytes));
    match tokio::spawn(run_and_record(state, scope, key, next, request)).await {
        Ok(response) => response,
        Err(e) => Problem::internal(&e).into_response(),
    }
}

/// Runs the handler and records its answer (or releases the claim after a transient one).
async fn run_and_record(
    state: AppState,
    scope: String,
    key: String,
    next: Next,
    request: Request,
) -> Response {
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    let body = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return Problem::internal(&e).into_response(),
    };
    let outcome = if transient(parts.status, &body) {
        sqlx::query("UPDATE idempotency_keys SET released = true WHERE scope = $1 AND key = $2")
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
        store_answer(
            &state,
            &scope,
            &key,
            parts.status,
            serde_json::Value::Object(headers),
            &body,
        )
        .await
    };
    if let Err(e) = outcome {
        // The command ran; only its replay record is missing. Answer it anyway.
        tracing::warn!(error = %e, "could not record the idempotent answer");
    }
    Response::from_parts(parts, Body::from(body))
}

/// A stored key: its request's hash and id, and the answer once there is one.
#[derive(sqlx::FromRow)]
struct Stored {
    request_hash: Vec<u8>,
    status: Option<i16>,
    headers: Option<serde_json::Value>,
    body: Option<Vec<u8>>,
    /// The request that holds (or last held) the claim.
    request_id: Option<String>,
    /// Its attempt ended without a storable answer.
    released: bool,
    /// Claimed over a minute ago and still unanswered: its process died.
    abandoned: bool,
}

enum Claim {
    Claimed,
    Replay(Response),
    Refused(Problem),
}

async fn store_answer(
    state: &AppState,
    scope: &str,
    key: &str,
    status: StatusCode,
    headers: serde_json::Value,
    body: &[u8],
) -> Result<sqlx::postgres::PgQueryResult, sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET status = $3, headers = $4, body = $5, released = false
          WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .bind(status.as_u16() as i16)
    .bind(headers)
    .bind(body)
    .execute(&state.pool)
    .await
}

/// A 5xx, or a 409 `contention`, says nothing lasting about the request: a retry should run.
fn transient(status: StatusCode, body: &[u8]) -> bool {
    status.is_server_error()
        || (status == StatusCode::CONFLICT
            && serde_json::from_slice::<serde_json::Value>(body)
                .is_ok_and(|b| b["code"] == "contention"))
}

async fn claim(
    state: &AppState,
    scope: &str,
    key: &str,
    hash: &[u8],
    request_id: &str,
) -> Result<Claim, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, request_id) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(scope)
    .bind(key)
    .bind(hash)
    .bind(request_id)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Claim::Claimed);
    }
    let row: Option<Stored> = sqlx::query_as(
        "SELECT request_hash, status, headers, body, request_id, released,
                created_at < now() - interval '1 minute' AS abandoned
           FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_optional(&state.pool)
    .await?;
    let Some(stored) = row else {
        // Expired between our insert and select: claim again.
        return Box::pin(claim(state, scope, key, hash, request_id)).await;
    };
    if stored.request_hash != hash {
        return Ok(Claim::Refused(Problem::unprocessable(
            "idempotency_key_reused",
            "This Idempotency-Key was used for a different request.",
        )));
    }
    if let Some(status) = stored.status {
        return Ok(Claim::Replay(replay(status, stored.headers, stored.body)));
    }
    let in_progress = || {
        Claim::Refused(Problem::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "A request with this Idempotency-Key is still being processed.",
        ))
    };
    if !(stored.released || stored.abandoned) {
        return Ok(in_progress());
    }
    // Take the claim over, unless another retry just did.
    let taken = sqlx::query(
        "UPDATE idempotency_keys SET request_id = $3, released = false, created_at = now()
          WHERE scope = $1 AND key = $2 AND status IS NULL
            AND request_id IS NOT DISTINCT FROM $4",
    )
    .bind(scope)
    .bind(key)
    .bind(request_id)
    .bind(&stored.request_id)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if taken != 1 {
        return Ok(in_progress());
    }
    // Did the earlier attempt commit before its answer was lost?
    let Some(earlier) = stored.request_id else {
        return Ok(Claim::Claimed);
    };
    match recovered_answer(state, &earlier).await? {
        Some((status, headers, body)) => {
            store_answer(state, scope, key, status, headers.clone(), &body).await?;
            Ok(Claim::Replay(replay(
                status.as_u16() as i16,
                Some(headers),
                Some(body),
            )))
        }
        None => Ok(Claim::Claimed),
    }
}

/// The answer a request would have given, rebuilt from the events it appended: every command
/// answers `{id, version}`, with 201 when it opened the aggregate.
async fn recovered_answer(
    state: &AppState,
    request_id: &str,
) -> Result<Option<(StatusCode, serde_json::Value, Vec<u8>)>, sqlx::Error> {
    let row: Option<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, min(sequence), max(sequence) FROM events
          WHERE metadata->>'request_id' = $1
          GROUP BY aggregate_type, aggregate_id
          LIMIT 1",
    )
    .bind(request_id)
    .fetch_optional(&state.pool)
    .await?;
    Ok(row.map(|(aggregate_type, id, first, version)| {
        let opened = first == 1;
        let mut headers = serde_json::json!({
            "content-type": "application/json",
            "etag": format!("\"{version}\""),
        });
        if let (true, Some(location)) = (opened, super::location(&aggregate_type, &id)) {
            headers["location"] = location.into();
        }
        let body = serde_json::to_vec(&serde_json::json!({"id": id, "version": version}))
            .unwrap_or_default();
        let status = if opened {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        (status, headers, body)
    }))
}

fn replay(status: i16, headers: Option<serde_json::Value>, body: Option<Vec<u8>>) -> Response {
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
    response
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
