//! `GET /v1/audit/{aggregate_type}/{aggregate_id}`: an aggregate's full, ordered event
//! history with metadata, read straight from the event store (always current).

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use events::access::{Principal, Role};
use events::http::{AuthUser, Json, Problem, Query};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The audit context (its routes).
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
    OpenApiRouter::new().routes(routes!(history))
}

/// Paging through long histories.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Only events with a greater sequence (default 0: from the start).
    after: Option<i64>,
    /// Page size, 1–1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

/// One event as stored, its payload as text: decoded here, one by one, so that one that no
/// JSON reader can decode (nested too deep: the relay quarantined it) is shown as such
/// instead of failing the whole history.
#[derive(Debug, FromRow)]
struct StoredEvent {
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: serde_json::Value,
    recorded_at: DateTime<Utc>,
    global_position: i64,
}

/// One event as auditors read it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditEvent {
    /// Position in the aggregate's stream (1-based).
    sequence: i64,
    event_type: String,
    event_version: String,
    /// The event as stored, secret fields reading "[redacted]"; one too deeply nested to
    /// decode reads `{"unreadable": …}`.
    payload: serde_json::Value,
    /// Tenant, actor, correlation, causation, request id.
    metadata: serde_json::Value,
    recorded_at: DateTime<Utc>,
    /// Position in the whole store.
    global_position: i64,
}

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    aggregate_type: String,
    aggregate_id: String,
    /// The tenant of the events shown: the stream's first event's for a super admin, else
    /// the caller's.
    tenant_id: String,
    /// The events, in sequence order.
    events: Vec<AuditEvent>,
    /// Pass as `after` for the next page; null on the last page.
    next_after: Option<i64>,
}

/// An aggregate's event history.
///
/// Every event of the aggregate in sequence order with its metadata (tenant, actor,
/// correlation, causation, request id), read from the event store. Each event is shown to the
/// tenant it belongs to: a super admin reads every event, a tenant admin the events of their
/// own tenant (an aggregate such as a phone number or a WhatsApp session can pass from one
/// tenant to another); anyone else, or a tenant with no event in the stream, gets 404. Secret
/// fields (sealed credentials, digests of verify tokens and codes) read "[redacted]".
#[utoipa::path(
    get,
    path = "/v1/audit/{aggregate_type}/{aggregate_id}",
    params(("aggregate_type" = String, Path), ("aggregate_id" = String, Path), Params),
    responses(
        (status = 200, description = "A page of history.", body = History)
    ),
    security(("bearer" = []))
)]
async fn history(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> Result<Response, Problem> {
    let limit = params.limit.unwrap_or(1000);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::bad_request(
            "invalid_query",
            "limit must be 1 to 1000.",
        ));
    }
    let not_found = || Problem::not_found("no history for this aggregate");
    // PostgreSQL text cannot hold NUL, so such an id names nothing.
    if aggregate_type.contains('\0') || aggregate_id.contains('\0') {
        return Err(not_found());
    }
    let (tenant, only) = readable(&state, &who, &aggregate_type, &aggregate_id).await?;
    let stored: Vec<StoredEvent> = sqlx::query_as(
        "SELECT sequence, event_type, event_version, payload::text AS payload, metadata,
                recorded_at, global_position
           FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
            AND ($5::text IS NULL OR metadata->>'tenant_id' = $5)
          ORDER BY sequence
          LIMIT $4",
    )
    .bind(&aggregate_type)
    .bind(&aggregate_id)
    .bind(params.after.unwrap_or(0))
    .bind(limit + 1)
    .bind(only)
    .fetch_all(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let mut events: Vec<AuditEvent> = stored.into_iter().map(AuditEvent::from).collect();
    for event in &mut events {
        events::sealed::redact(&aggregate_type, &event.event_type, &mut event.payload);
    }
    // Personal fields read in clear, or "[erased]" once their subject was erased.
    state
        .keyring
        .open_values(events.iter_mut().map(|e| &mut e.payload).collect())
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    let next_after = if events.len() as i64 > limit {
        events.truncate(limit as usize);
        events.last().map(|e| e.sequence)
    } else {
        None
    };
    Ok(Json(History {
        aggregate_type,
        aggregate_id,
        tenant_id: tenant,
        events,
        next_after,
    })
    .into_response())
}

/// The stream's tenant (its first event's), and the tenant whose events alone the caller
/// reads (`None`: every event); 404 when there is nothing for the caller.
///
/// Each event is shown to the tenant it belongs to (its own `tenant_id`), not to whoever
/// owns the stream's first event: a number or a session can pass from one tenant to
/// another, and the second tenant's events are not the first's to read. Super admins
/// read every event; a tenant admin reads their tenant's; anyone else reads nothing, and
/// learns nothing, not even that the stream exists.
async fn readable(
    state: &AppState,
    who: &Principal,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<(String, Option<String>), Problem> {
    let not_found = || Problem::not_found("no history for this aggregate");
    let first_tenant: Option<String> = sqlx::query_scalar(
        "SELECT metadata->>'tenant_id' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let first_tenant = first_tenant.ok_or_else(not_found)?;
    Ok(if who.is_super_admin() {
        (first_tenant, None)
    } else {
        let home = match who {
            Principal::Admin {
                role: Role::TenantAdmin,
                tenant_id: Some(home),
                ..
            } => home.clone(),
            _ => return Err(not_found()),
        };
        let has_any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM events
                             WHERE aggregate_type = $1 AND aggregate_id = $2
                               AND metadata->>'tenant_id' = $3)",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(&home)
        .fetch_one(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
        if !has_any {
            return Err(not_found());
        }
        (home.clone(), Some(home))
    })
}

impl From<StoredEvent> for AuditEvent {
    fn from(e: StoredEvent) -> Self {
        AuditEvent {
            payload: serde_json::from_str(&e.payload).unwrap_or_else(
                |_| serde_json::json!({"unreadable": "nested deeper than JSON readers decode"}),
            ),
            sequence: e.sequence,
            event_type: e.event_type,
            event_version: e.event_version,
            metadata: e.metadata,
            recorded_at: e.recorded_at,
            global_position: e.global_position,
        }
    }
}
