//! Tenant list and detail, from the `tenants` read model.

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::{freshness, page};
use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The tenants context (its routes).
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    async fn build(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Result<Self, crate::StartError> {
        Ok(Self)
    }

    fn routes() -> OpenApiRouter<AppState> {
        router()
    }
}

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(detail))
}

/// A tenant as the dashboard shows it.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Tenant)]
pub struct TenantView {
    id: Uuid,
    name: String,
    slug: String,
    contact_email: String,
    /// `pending`, `active`, `rejected` or `suspended`.
    status: String,
    preferences: serde_json::Value,
    /// The uploaded logo (`object_key`, `content_type`, `size_bytes`, `sha256`); null until
    /// one is uploaded.
    logo: Option<serde_json::Value>,
    /// The departments' names, sorted.
    departments: serde_json::Value,
    rejection_reason: Option<String>,
    suspension_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The aggregate version this row reflects.
    version: i64,
}

const COLUMNS: &str =
    "id, name, slug, contact_email, status, preferences, logo, departments, rejection_reason, \
                       suspension_reason, created_at, updated_at, version";

/// Filters and page of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tenants in this status: `pending`, `active`, `rejected` or `suspended`.
    status: Option<String>,
    /// Case-insensitive substring of the name.
    q: Option<String>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One page of tenants, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = TenantPage)]
pub struct Page {
    /// The tenants.
    items: Vec<TenantView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

const STATUSES: [&str; 4] = ["pending", "active", "rejected", "suspended"];

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

/// List tenants.
///
/// Newest first. A super admin sees every tenant; other staff only their own.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    operation_id = "list_tenants",
    params(ListParams),
    responses(
        (status = 200, description = "A page.", body = Page)
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let only = scope(&who)?;
    let limit = page::limit(params.limit)?;
    if let Some(s) = params.status.as_deref() {
        if !STATUSES.contains(&s) {
            return Err(Problem::bad_request(
                "invalid_query",
                "status must be pending, active, rejected or suspended.",
            ));
        }
    }
    let cursor = page::cursor(params.cursor.as_deref())?;
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
    // Only the filters asked for (see `page::Conditions`).
    let mut w = page::Conditions::after(0);
    w.text("tenant_id = ?", only);
    w.text("status = ?", params.status);
    w.text("name ILIKE ?", pattern);
    w.keyset("created_at, id", cursor);
    let limit_at = w.next_placeholder();
    let sql = format!(
        "SELECT {COLUMNS} FROM tenants{} ORDER BY created_at DESC, id DESC LIMIT {}",
        w.sql(),
        limit_at
    );
    let query = w.bind(sqlx::query_as::<_, TenantView>(&sql));
    let mut items: Vec<TenantView> = query
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_cursor = page::finish(&mut items, limit, |t| {
        page::encode_cursor(t.created_at, t.id)
    });
    Ok(Json(Page { items, next_cursor }).into_response())
}

/// Read-your-writes: `min_version` (or header `X-Min-Version`) waits, bounded, until the
/// read model reflects that version.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DetailParams {
    /// The version a command answered with.
    min_version: Option<i64>,
}

/// A tenant.
///
/// Read-your-writes: with `min_version` (or header `X-Min-Version`) the read waits, at most
/// READ_WAIT_MS (default 2 s), until the row reflects that version; if it gives up it answers
/// what it has with `X-Read-Stale: true`. `X-Read-Version` carries the row's version.
/// Other tenants' staff get 404.
#[utoipa::path(
    get,
    path = "/v1/tenants/{id}",
    operation_id = "tenant",
    params(("id" = Uuid, Path), ("X-Min-Version" = Option<i64>, Header), DetailParams),
    responses(
        (status = 200, description = "The tenant.", body = TenantView, headers(
            ("X-Read-Version" = i64, description = "The version the row reflects."),
            ("X-Read-Stale" = String, description = "`true` when the read gave up waiting for `min_version`.")
        ))
    ),
    security(("bearer" = []))
)]
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
    let min_version = freshness::min_version(&headers, params.min_version)?;
    let sql = format!("SELECT {COLUMNS} FROM tenants WHERE id = $1");
    let (row, stale) = freshness::read_at_least(
        state.read_wait,
        min_version,
        |r: &TenantView| r.version,
        || sqlx::query_as(&sql).bind(id).fetch_optional(&state.pool),
    )
    .await?;
    Ok(answer(row, stale))
}

fn answer(row: Option<TenantView>, stale: bool) -> Response {
    let mut response = match &row {
        Some(view) => Json(view).into_response(),
        None => Problem::not_found("tenant not found").into_response(),
    };
    freshness::version_headers(
        response.headers_mut(),
        row.as_ref().map(|v| v.version),
        stale,
    );
    response
}
