//! Admin users of a tenant and their login history, from the read models the projector
//! builds from admin_user events. A super admin reads every tenant's; a tenant admin their
//! own tenant's; an agent only the list of their colleagues. Another tenant's user answers
//! 404, as if it did not exist.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::Principal;
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The identity context (its routes).
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
        .routes(routes!(logins))
}

/// An admin user as the dashboard lists them.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = AdminUser)]
pub struct AdminUserView {
    id: String,
    tenant_id: String,
    email: String,
    /// `super_admin`, `tenant_admin` or `agent`.
    role: String,
    department: Option<String>,
    active: bool,
    last_login_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    version: i64,
}

/// Filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// A super admin may pick a tenant; others always read their own.
    tenant_id: Option<String>,
    /// 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// `next_after` of the previous page (the last id).
    after: Option<String>,
}

/// One page of admin users, by id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AdminUserPage {
    /// The users.
    items: Vec<AdminUserView>,
    /// Pass as `after` for the next page; null on the last page.
    next_after: Option<String>,
}

/// The tenant a caller reads: a super admin any (or all, `None`), staff their own.
fn tenant_scope(who: &Principal, asked: Option<String>) -> Result<Option<String>, Problem> {
    match who {
        _ if who.is_super_admin() => Ok(asked),
        Principal::Admin {
            tenant_id: Some(home),
            ..
        } => match asked {
            Some(t) if &t != home => Err(Problem::forbidden(
                "You may only read your own tenant's users.",
            )),
            _ => Ok(Some(home.clone())),
        },
        _ => Err(Problem::forbidden("Only staff may list admin users.")),
    }
}

/// Admin users.
///
/// A super admin reads every tenant's (or one, with `tenant_id`); other staff only their own
/// tenant's (403 when asking for another).
#[utoipa::path(
    get,
    path = "/v1/admin-users",
    operation_id = "list_admin_users",
    params(ListParams),
    responses(
        (status = 200, description = "A page.", body = AdminUserPage)
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let tenant = tenant_scope(&who, params.tenant_id)?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_query",
            "limit must be 1 to 200.",
        ));
    }
    if [&tenant, &params.after]
        .iter()
        .any(|v| v.as_deref().is_some_and(|s| s.contains('\0')))
    {
        return Err(Problem::bad_request(
            "invalid_query",
            "parameters must not contain NUL.",
        ));
    }
    let mut items: Vec<AdminUserView> = sqlx::query_as(
        "SELECT id, tenant_id, email, role, department, active, last_login_at, created_at, version
           FROM admin_users
          WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR id > $2)
          ORDER BY id
          LIMIT $3",
    )
    .bind(tenant)
    .bind(params.after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let next_after = crate::http::page::finish(&mut items, limit, |u| u.id.clone());
    Ok(Json(AdminUserPage { items, next_after }).into_response())
}

/// One entry of the login history.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub struct LoginEntry {
    /// The sequence of its event in the user's stream (newer is greater).
    sequence: i64,
    /// `succeeded`, `wrong_password`, `locked`, `inactive`, `tenant_suspended`, `locked_out`,
    /// `logout`, `refresh_reuse` or `session_limit`.
    outcome: String,
    /// The session it opened or ended, if any.
    session_id: Option<String>,
    at: DateTime<Utc>,
}

/// An admin user's login history, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoginHistory {
    /// The user.
    user_id: String,
    /// Their tenant.
    tenant_id: String,
    /// The entries, newest first.
    items: Vec<LoginEntry>,
    /// Pass as `before` for the next, older page; null on the last page.
    next_before: Option<i64>,
}

/// Paging.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LoginParams {
    /// 1–500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    /// `next_before` of the previous page: entries older than it (newest first).
    before: Option<i64>,
}

/// An admin user's login history.
///
/// Every login attempt on the account, every lock and session end, newest first (outcome:
/// succeeded, wrong_password, locked, inactive, tenant_suspended, locked_out, logout,
/// refresh_reuse, session_limit). For admins of the user's tenant and the user; anyone else
/// gets 404. Paged: `next_before` (null on the last page) is passed as `before` for the next,
/// older page.
#[utoipa::path(
    get,
    path = "/v1/admin-users/{id}/logins",
    params(("id" = String, Path), LoginParams),
    responses(
        (status = 200, description = "History.", body = LoginHistory)
    ),
    security(("bearer" = []))
)]
async fn logins(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(id): Path<String>,
    Query(params): Query<LoginParams>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("admin user not found");
    if id.contains('\0') {
        return Err(not_found());
    }
    let limit = params.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_query",
            "limit must be 1 to 500.",
        ));
    }
    let tenant: Option<String> =
        sqlx::query_scalar("SELECT tenant_id FROM admin_users WHERE id = $1")
            .bind(&id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    let tenant = tenant.ok_or_else(not_found)?;
    // Login history is for those who administer the user's tenant, and for the user.
    if !(who.administers(&tenant) || who.user_id() == id) {
        return Err(not_found());
    }
    let mut entries: Vec<LoginEntry> = sqlx::query_as(
        "SELECT sequence, outcome, session_id, at FROM admin_logins
          WHERE user_id = $1 AND ($3::bigint IS NULL OR sequence < $3)
          ORDER BY sequence DESC LIMIT $2",
    )
    .bind(&id)
    .bind(limit + 1)
    .bind(params.before)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let next_before = crate::http::page::finish(&mut entries, limit, |e| e.sequence);
    Ok(Json(LoginHistory {
        user_id: id,
        tenant_id: tenant,
        items: entries,
        next_before,
    })
    .into_response())
}
