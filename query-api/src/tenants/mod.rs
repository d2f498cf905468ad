//! Tenant list and detail, from the `tenants` read model.

use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use chrono::{DateTime, Utc};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use uuid::Uuid;

use crate::AppState;

/// Set when a read gave up waiting for the requested version.
pub static READ_STALE: HeaderName = HeaderName::from_static("x-read-stale");
/// The version a read reflects.
pub static READ_VERSION: HeaderName = HeaderName::from_static("x-read-version");
/// Request header: wait until the read model reflects at least this version.
pub static MIN_VERSION: HeaderName = HeaderName::from_static("x-min-version");

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants", get(list))
        .route("/v1/tenants/{id}", get(detail))
}

/// A tenant as the dashboard shows it.
#[derive(Debug, Serialize, FromRow)]
pub struct TenantView {
    id: Uuid,
    name: String,
    slug: String,
    contact_email: String,
    status: String,
    preferences: serde_json::Value,
    logo: Option<serde_json::Value>,
    departments: serde_json::Value,
    rejection_reason: Option<String>,
    suspension_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

const COLUMNS: &str =
    "id, name, slug, contact_email, status, preferences, logo, departments, rejection_reason, \
                       suspension_reason, created_at, updated_at, version";

/// Filters and page of the list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tenants in this status.
    status: Option<String>,
    /// Case-insensitive substring of the name.
    q: Option<String>,
    /// Page size, 1–200 (default 50).
    limit: Option<i64>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One page.
#[derive(Debug, Serialize)]
pub struct Page {
    items: Vec<TenantView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    next_cursor: Option<String>,
}

const STATUSES: [&str; 4] = ["pending", "active", "rejected", "suspended"];

fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.to_rfc3339()))
}

fn decode_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        Uuid::parse_str(id).ok()?,
    ))
}

/// Who may see which tenants: a super admin all, other staff only their own.
fn scope(who: &Principal) -> Result<Option<String>, Problem> {
    match who {
        _ if who.is_super_admin() => Ok(None),
        Principal::Admin {
            tenant_id: Some(t), ..
        } => Ok(Some(t.clone())),
        _ => Err(Problem::forbidden("Only staff may list tenants.")),
    }
}

async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let only = scope(&who)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_query",
            "limit must be 1 to 200.",
        ));
    }
    if let Some(s) = params.status.as_deref() {
        if !STATUSES.contains(&s) {
            return Err(Problem::bad_request(
                "invalid_query",
                "status must be pending, active, rejected or suspended.",
            ));
        }
    }
    let cursor = match params.cursor.as_deref() {
        None => None,
        Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
            Problem::bad_request("invalid_cursor", "The cursor is not one this API issued.")
        })?),
    };
    if params
        .q
        .as_deref()
        .is_some_and(|q| q.chars().any(char::is_control))
    {
        return Err(Problem::bad_request(
            "invalid_query",
            "q must not contain control characters.",
        ));
    }
    let pattern = params.q.as_deref().filter(|q| !q.is_empty()).map(|q| {
        let escaped = q
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let (cursor_at, cursor_id) = cursor.unzip();
    let mut items: Vec<TenantView> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM tenants
          WHERE ($1::text IS NULL OR tenant_id = $1)
            AND ($2::text IS NULL OR status = $2)
            AND ($3::text IS NULL OR name ILIKE $3)
            AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
          ORDER BY created_at DESC, id DESC
          LIMIT $6"
    ))
    .bind(only)
    .bind(params.status)
    .bind(pattern)
    .bind(cursor_at)
    .bind(cursor_id)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let next_cursor = if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(|t| encode_cursor(t.created_at, t.id))
    } else {
        None
    };
    Ok(Json(Page { items, next_cursor }).into_response())
}

/// Read-your-writes: `min_version` (or header `X-Min-Version`) waits, bounded, until the
/// read model reflects that version.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

async fn detail(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(params): Query<DetailParams>,
) -> Result<Response, Problem> {
    let id = Uuid::parse_str(&id).map_err(|_| Problem::not_found("tenant not found"))?;
    if !who.is_staff_of(&id.to_string()) {
        // Another tenant's staff learn nothing, not even that the tenant exists.
        return Err(Problem::not_found("tenant not found"));
    }
    let min_version = match headers.get(&MIN_VERSION) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| {
                    Problem::bad_request("invalid_min_version", "X-Min-Version must be an integer.")
                })?,
        ),
        None => params.min_version,
    };
    let deadline = Instant::now() + state.read_wait;
    let mut pause = Duration::from_millis(2);
    loop {
        let row: Option<TenantView> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants WHERE id = $1"))
                .bind(id)
                .fetch_optional(&state.pool)
                .await
                .map_err(|e| Problem::unavailable(&e))?;
        let version = row.as_ref().map_or(0, |r| r.version);
        let fresh = min_version.is_none_or(|min| version >= min);
        if fresh || Instant::now() >= deadline {
            return Ok(answer(row, !fresh));
        }
        tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_millis(25));
    }
}

fn answer(row: Option<TenantView>, stale: bool) -> Response {
    let mut response = match &row {
        Some(view) => Json(view).into_response(),
        None => Problem::not_found("tenant not found").into_response(),
    };
    let headers = response.headers_mut();
    if let Some(view) = &row {
        if let Ok(v) = HeaderValue::from_str(&view.version.to_string()) {
            headers.insert(READ_VERSION.clone(), v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", view.version)) {
            headers.insert(header::ETAG, v);
        }
    }
    if stale {
        headers.insert(READ_STALE.clone(), HeaderValue::from_static("true"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
            .map(|d| d.with_timezone(&Utc))
            .ok();
        let id = Uuid::now_v7();
        let at = at.unwrap_or_default();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
    }
}
