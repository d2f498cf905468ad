//! `GET /v1/telephony/calls` and `GET /v1/telephony/calls/{call_sid}`: the calls of a
//! tenant's numbers (the `calls` read model), newest first, `?missed=true` for the inbound
//! calls nobody answered. Staff of the tenant read them; a super admin reads any tenant's
//! (or all, naming none).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::http::page;
use crate::http::scope::staff_scope;
use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The telephony context (its routes).
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

/// A call of one of the tenant's numbers, as the provider reported it.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
#[schema(as = Call)]
pub struct CallView {
    /// The row's id (the paging key).
    #[serde(skip)]
    id: Uuid,
    /// The provider's CallSid.
    call_sid: String,
    tenant_id: String,
    /// `inbound` or `outbound`; null until a status callback said.
    direction: Option<String>,
    from_number: Option<String>,
    to_number: Option<String>,
    /// The last status; null until a status callback came.
    status: Option<String>,
    /// An inbound call that ended unanswered.
    missed: bool,
    duration_secs: Option<i32>,
    recording_sid: Option<String>,
    /// Where the provider serves the recording.
    recording_url: Option<String>,
    /// When the platform first heard of the call.
    started_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The call stream's version last applied.
    version: i64,
}

const COLUMNS: &str = "id, call_sid, tenant_id, direction, from_number, to_number, status, \
                       missed, duration_secs, recording_sid, recording_url, started_at, \
                       updated_at, version";

/// Filters and page of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// A super admin's choice of tenant.
    tenant_id: Option<Uuid>,
    /// Only missed calls (`true`), or only the others (`false`).
    missed: Option<bool>,
    /// Page size, 1–200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
    /// Opaque cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One page of calls, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CallPage {
    /// The calls.
    items: Vec<CallView>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
}

/// Calls of the tenant's numbers.
///
/// Newest first; keyset cursor. Staff (any admin role) read their tenant's; a super admin names
/// a tenant or reads all; chatbot users 403; naming another tenant 403.
#[utoipa::path(
    get,
    path = "/v1/telephony/calls",
    operation_id = "list_calls",
    params(ListParams),
    responses(
        (status = 200, description = "A page.", body = CallPage)
    ),
    security(("bearer" = []))
)]
async fn list(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Query(params): Query<ListParams>,
) -> Result<Response, Problem> {
    let tenant = staff_scope(&who, params.tenant_id, "calls")?;
    let limit = page::limit(params.limit)?;
    let mut w = page::Conditions::after(0);
    w.text("tenant_id = ?", tenant);
    match params.missed {
        Some(true) => w.and("missed"),
        Some(false) => w.and("NOT missed"),
        None => {}
    }
    w.keyset("started_at, id", page::cursor(params.cursor.as_deref())?);
    let limit_at = w.next_placeholder();
    let sql = format!(
        "SELECT {COLUMNS} FROM calls{} ORDER BY started_at DESC, id DESC LIMIT {limit_at}",
        w.sql()
    );
    let mut items: Vec<CallView> = w
        .bind(sqlx::query_as::<_, CallView>(&sql))
        .bind(limit + 1)
        .fetch_all(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_cursor = page::finish(&mut items, limit, |c| {
        page::encode_cursor(c.started_at, c.id)
    });
    Ok(Json(CallPage { items, next_cursor }).into_response())
}

/// One call.
///
/// The call named by its CallSid; 404 for an unknown call or another tenant's.
#[utoipa::path(
    get,
    path = "/v1/telephony/calls/{call_sid}",
    operation_id = "call",
    params(("call_sid" = String, Path)),
    responses(
        (status = 200, description = "The call.", body = CallView)
    ),
    security(("bearer" = []))
)]
async fn detail(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path(call_sid): Path<String>,
) -> Result<Response, Problem> {
    let not_found = || Problem::not_found("no such call");
    let tenant = staff_scope(&who, None, "calls")?;
    // No call id holds a NUL (which PostgreSQL refuses) or runs this long.
    if call_sid.contains('\0') || call_sid.len() > 256 {
        return Err(not_found());
    }
    let row: Option<CallView> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM calls WHERE call_sid = $1"))
            .bind(&call_sid)
            .fetch_optional(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    match row {
        Some(call) if tenant.as_ref().is_none_or(|t| *t == call.tenant_id) => {
            Ok(Json(call).into_response())
        }
        _ => Err(not_found()),
    }
}
